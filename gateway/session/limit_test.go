package session

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

func TestMaxStreamsPerSession(t *testing.T) {
	const limit = 3
	e := newEnv(t, false)
	// Before any agent connects, so nothing reads it yet.
	e.reg.cfg.MaxStreamsPerSession = limit
	e.startAgent("c1", nil)
	s := e.waitSession("c1", nil)
	ctx := context.Background()

	var open []net.Conn
	closeAll := func() {
		for _, c := range open {
			c.Close()
		}
		open = nil
		// A stream is gone once both sides closed it: the echo target
		// closes its side when it reads our close.
		deadline := time.Now().Add(10 * time.Second)
		for s.NumStreams() > 0 {
			if time.Now().After(deadline) {
				t.Fatalf("%d streams still open after closing them all", s.NumStreams())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	defer closeAll()
	for range limit {
		c, err := e.reg.Dial(ctx, "c1", echoTarget)
		if err != nil {
			t.Fatalf("stream %d of %d: %v", len(open)+1, limit, err)
		}
		open = append(open, c)
	}
	if _, err := e.reg.Dial(ctx, "c1", echoTarget); !errors.Is(err, ErrTooManyStreams) {
		t.Fatalf("stream over the limit: %v, want ErrTooManyStreams", err)
	}
	var m dto.Metric
	if err := e.reg.metrics.refused.WithLabelValues("stream_limit").Write(&m); err != nil || m.GetCounter().GetValue() != 1 {
		t.Fatalf("refusals counted: %v (%v), want 1", m.GetCounter().GetValue(), err)
	}

	// Room again once streams end; the streams work.
	closeAll()
	if err := roundTrip(ctx, e.reg, "c1", []byte("after the limit")); err != nil {
		t.Fatal(err)
	}

	// Concurrent Dials never get past the limit together.
	var (
		mu      sync.Mutex
		wg      sync.WaitGroup
		refused int
	)
	for range 4 * limit {
		wg.Go(func() {
			c, err := e.reg.Dial(ctx, "c1", echoTarget)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case errors.Is(err, ErrTooManyStreams):
				refused++
			case err != nil:
				t.Errorf("dial: %v", err)
			default:
				open = append(open, c)
			}
		})
	}
	wg.Wait()
	if len(open) > limit || len(open) == 0 || len(open)+refused != 4*limit {
		t.Fatalf("%d concurrent dials opened %d streams and %d were refused; limit %d", 4*limit, len(open), refused, limit)
	}
	if n := s.NumStreams(); n > limit {
		t.Fatalf("%d streams open, limit %d", n, limit)
	}
}

func TestMaxStreamsPerSessionDefault(t *testing.T) {
	e := newEnv(t, false)
	if got := e.reg.cfg.MaxStreamsPerSession; got != DefaultMaxStreamsPerSession {
		t.Fatalf("MaxStreamsPerSession = %d, want the default %d", got, DefaultMaxStreamsPerSession)
	}
}
