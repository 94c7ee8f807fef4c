package e2e

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/pipeops/tunnel/shared/stack"
)

// slowDownload fetches n bytes of /bytes through the stack, reading at
// about rate bytes a second so that it spans a restart, and checks them
// against what the app sends.
func slowDownload(ctx context.Context, s *stack.Stack, host string, n, rate int64) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/bytes?n=%d", s.GatewayHTTP, n), nil)
	if err != nil {
		return err
	}
	req.Host = host
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("status %s", resp.Status)
	}
	got, want := sha256.New(), sha256.New()
	buf := make([]byte, 256<<10)
	var read int64
	start := time.Now()
	for {
		k, err := resp.Body.Read(buf)
		got.Write(buf[:k])
		read += int64(k)
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("after %d bytes: %w", read, err)
		}
		if ahead := time.Duration(float64(read)/float64(rate)*float64(time.Second)) - time.Since(start); ahead > 0 {
			time.Sleep(ahead)
		}
	}
	chunk := make([]byte, 32<<10)
	for i := range chunk {
		chunk[i] = byte('a' + i%26)
	}
	for left := n; left > 0; left -= int64(len(chunk)) {
		want.Write(chunk[:min(left, int64(len(chunk)))])
	}
	if read != n || string(got.Sum(nil)) != string(want.Sum(nil)) {
		return fmt.Errorf("%d bytes of %d, checksum matches: %v", read, n, string(got.Sum(nil)) == string(want.Sum(nil)))
	}
	return nil
}

// echoSocket keeps a WebSocket to the app's echo open through the stack,
// exchanging a message every 100 ms, and opens it again when it closes,
// counting how often.
type echoSocket struct {
	reopened, exchanged atomic.Int64
	lastErr             atomic.Pointer[string]
	stop                chan struct{}
	done                sync.WaitGroup
}

func startEchoSocket(s *stack.Stack, host string) *echoSocket {
	es := &echoSocket{stop: make(chan struct{})}
	url := strings.Replace(s.GatewayHTTP, "http://", "ws://", 1) + "/ws"
	es.done.Go(func() {
		for first := true; ; first = false {
			select {
			case <-es.stop:
				return
			default:
			}
			if !first {
				es.reopened.Add(1)
			}
			d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
			c, _, err := d.Dial(url, http.Header{"Host": {host}})
			if err != nil {
				msg := err.Error()
				es.lastErr.Store(&msg)
				time.Sleep(100 * time.Millisecond)
				continue
			}
			for i := 0; ; i++ {
				select {
				case <-es.stop:
					c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
					c.Close()
					return
				case <-time.After(100 * time.Millisecond):
				}
				msg := fmt.Sprintf("ping %d", i)
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				if err := c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
					break
				}
				if _, got, err := c.ReadMessage(); err != nil || string(got) != msg {
					break
				}
				es.exchanged.Add(1)
			}
			c.Close()
		}
	})
	return es
}

func (es *echoSocket) close() {
	close(es.stop)
	es.done.Wait()
}

// TestScaleOut runs three gateways behind a load balancer and two agent
// replicas of one cluster, every one its own process, under a constant
// load, a long download and a WebSocket: each gateway restarted in turn,
// then each agent replica, costs no request and the download arrives
// whole; a kill -9 of a gateway or of an agent replica fails only what was
// in flight on it, and everything is served again within two seconds.
func TestScaleOut(t *testing.T) {
	// SHUTDOWN_TIMEOUT as long as the download takes: a request is never
	// cut by a restart that has time to wait for it.
	e := newEnv(t, stack.Options{Gateways: 3, GatewayEnv: map[string]string{"SHUTDOWN_TIMEOUT": "30s"}}, stack.ClusterOptions{Replicas: 2})
	e.route(t)
	ctx := context.Background()
	want := "hello from " + e.c.Name
	tr := startTraffic(e.s, e.host, want, 10*time.Millisecond)
	defer tr.close()
	es := startEchoSocket(e.s, e.host)
	defer es.close()

	t.Run("rolling restarts", func(t *testing.T) {
		tr.reset()
		dl := make(chan error, 1)
		// 96 MiB at 8 MiB/s: twelve seconds, across several restarts.
		go func() { dl <- slowDownload(ctx, e.s, e.host, 96<<20, 8<<20) }()
		restart := func(c *stack.Component) {
			start := time.Now()
			if err := c.Restart(40 * time.Second); err != nil {
				t.Fatalf("restart %s: %v", c.Name, err)
			}
			t.Logf("%s restarted in %s", c.Name, time.Since(start).Round(time.Millisecond))
		}
		for _, g := range e.s.Gateways {
			restart(g)
		}
		for _, a := range e.c.Agents {
			restart(a)
		}
		if err := <-dl; err != nil {
			t.Errorf("the download across the restarts: %v", err)
		}
		time.Sleep(time.Second) // requests after the last restart count too
		ok, failures := tr.reset()
		t.Logf("rolling restarts: %d requests ok, %d failed; the WebSocket exchanged %d messages and was opened again %d times",
			ok, len(failures), es.exchanged.Load(), es.reopened.Load())
		for i, f := range failures {
			if i < 10 {
				t.Errorf("failed: %s", f)
			}
		}
		if len(failures) > 0 {
			t.Fatalf("%d of %d requests failed during the rolling restarts", len(failures), ok+len(failures))
		}
	})

	// Four more loads for the kills, so that requests are in flight when a
	// process dies.
	loads := []*traffic{tr}
	for range 4 {
		more := startTraffic(e.s, e.host, want, 2*time.Millisecond)
		defer more.close()
		loads = append(loads, more)
	}
	resetAll := func() (ok int, failures []string) {
		for _, l := range loads {
			n, f := l.reset()
			ok, failures = ok+n, append(failures, f...)
		}
		return ok, failures
	}
	for _, tc := range []struct {
		name string
		c    *stack.Component
	}{
		{"kill -9 of a gateway", e.s.Gateways[1]},
		{"kill -9 of an agent replica", e.c.Agents[0]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resetAll()
			time.Sleep(500 * time.Millisecond)
			tc.c.Kill()
			killed := time.Now()
			time.Sleep(3 * time.Second)
			ok, failures := resetAll()
			var last time.Time
			for _, f := range failures {
				at, err := time.ParseInLocation("15:04:05.000", f[:12], time.Local)
				if err != nil {
					t.Fatalf("failure without a time: %s", f)
				}
				at = time.Date(killed.Year(), killed.Month(), killed.Day(), at.Hour(), at.Minute(), at.Second(), at.Nanosecond(), time.Local)
				if at.After(last) {
					last = at
				}
			}
			recovered := time.Duration(0)
			if !last.IsZero() {
				recovered = last.Sub(killed)
			}
			t.Logf("%s: %d requests ok and %d failed in the 3 s after; the last failure %s after the kill",
				tc.name, ok, len(failures), recovered.Round(time.Millisecond))
			for i, f := range failures {
				if i < 5 {
					t.Logf("failed: %s", f)
				}
			}
			if recovered > 2*time.Second {
				t.Errorf("requests still failed %s after the kill, want all served again within 2 s", recovered.Round(time.Millisecond))
			}
			if err := tc.c.Start(); err != nil {
				t.Fatal(err)
			}
		})
	}
	if n := es.exchanged.Load(); n == 0 {
		t.Errorf("the WebSocket never exchanged a message (last error: %v)", es.lastErr.Load())
	}
}
