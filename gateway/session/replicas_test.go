package session

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pipeops/tunnel/agent/tunnelclient"
	"github.com/pipeops/tunnel/shared/tunnel"
)

// TestReplicas connects two replicas of one cluster's agent: both sessions
// are held and share the streams; one replica that stops under a constant
// load costs no request (new streams go to the other at its go-away, its
// idle pooled streams are retired so its drain does not wait on them); a
// replica that reconnects replaces only its own session.
func TestReplicas(t *testing.T) {
	e := newEnv(t, false)
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s", r.URL.Path)
	}))
	defer web.Close()
	const drainTimeout = 30 * time.Second
	replica := func(name string) *agent {
		return e.startAgent("c1", func(c *tunnelclient.Config) {
			c.Instance = name
			c.DrainTimeout = drainTimeout
			// Once replaced, a replica stays out: two live processes of
			// one pod would replace each other in turn.
			c.BackoffInitial, c.BackoffMax, c.RetryFast = time.Hour, time.Hour, time.Hour
			c.Dialer = tunnelclient.DialerFunc(func(ctx context.Context, h tunnel.StreamHeader) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "tcp", strings.TrimPrefix(web.URL, "http://"))
			})
		})
	}
	a, b := replica("pod-a"), replica("pod-b")
	waitUntil(t, "both replicas' sessions", func() bool { return len(e.reg.ClusterSessions("c1")) == 2 })

	tr := e.reg.Transport(64)
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	host, err := TargetHost("c1", tunnel.StreamHeader{Protocol: tunnel.ProtocolTCP, Port: 80, Service: "web", Namespace: "apps"})
	if err != nil {
		t.Fatal(err)
	}
	var ok, failed atomic.Int64
	var firstErr atomic.Pointer[string]
	get := func(path string) {
		req, _ := http.NewRequestWithContext(TracePool(context.Background()), "GET", "http://"+host+path, nil)
		resp, err := client.Do(req)
		if err == nil {
			var body []byte
			body, err = io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil && string(body) != "hello "+path {
				err = fmt.Errorf("answer %q", body)
			}
		}
		if err != nil {
			failed.Add(1)
			msg := err.Error()
			firstErr.CompareAndSwap(nil, &msg)
			return
		}
		ok.Add(1)
	}
	// A constant load: 8 workers, bounded in count and time.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	deadline := time.Now().Add(60 * time.Second)
	for w := range 8 {
		wg.Go(func() {
			for i := 0; i < 100_000 && time.Now().Before(deadline); i++ {
				select {
				case <-stop:
					return
				default:
				}
				get(fmt.Sprintf("/w%d/%d", w, i))
			}
		})
	}
	waitUntil(t, "streams on both replicas", func() bool {
		return a.c.Stats().StreamsTotal > 0 && b.c.Stats().StreamsTotal > 0 && ok.Load() > 200
	})

	// pod-a stops while the load runs.
	started := time.Now()
	a.stop()
	took := time.Since(started)
	waitUntil(t, "pod-a's session gone", func() bool { return len(e.reg.ClusterSessions("c1")) == 1 })
	before := ok.Load()
	waitUntil(t, "requests served by pod-b alone", func() bool { return ok.Load() > before+200 })
	close(stop)
	wg.Wait()
	t.Logf("%d requests, %d failed; pod-a drained in %s", ok.Load(), failed.Load(), took.Round(time.Millisecond))
	if failed.Load() != 0 {
		t.Fatalf("%d requests failed while a replica stopped; first: %s", failed.Load(), *firstErr.Load())
	}
	if took > drainTimeout/2 {
		t.Errorf("pod-a's drain took %s: idle pooled streams held it (drain timeout %s)", took, drainTimeout)
	}
	if got := e.reg.metrics.draining; counterValue(got) != 1 {
		t.Errorf("sessions_draining_total = %v, want 1", counterValue(got))
	}

	// pod-a comes back; then pod-b reconnects (a new process of the same
	// pod, the old one's socket taken for half dead): pod-b's old session
	// is replaced, pod-a's kept.
	a2 := replica("pod-a")
	waitUntil(t, "pod-a back", func() bool { return len(e.reg.ClusterSessions("c1")) == 2 })
	var oldB *Session
	for _, s := range e.reg.ClusterSessions("c1") {
		if s.Info.Instance == "pod-b" {
			oldB = s
		}
	}
	b2 := replica("pod-b")
	waitUntil(t, "pod-b's new session beside pod-a's", func() bool {
		s := e.reg.ClusterSessions("c1")
		return len(s) == 2 && s[0].Info.Instance == "pod-a" && s[1].Info.Instance == "pod-b" && s[1] != oldB
	})
	select {
	case <-oldB.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("pod-b's replaced session still open")
	}
	get("/after")
	if failed.Load() != 0 {
		t.Fatalf("after pod-b reconnected: %s", *firstErr.Load())
	}
	b.stop()
	b2.stop()
	a2.stop()
}
