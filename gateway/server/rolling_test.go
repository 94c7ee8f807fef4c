package server

import (
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pipeops/tunnel/agent/tunnelclient"
	"github.com/pipeops/tunnel/shared/testenv/balancer"
	"github.com/pipeops/tunnel/shared/testenv/tunneltest"
)

// TestRollingRestarts runs three gateways behind a load balancer and two
// replicas of one cluster's agent connected through it, under a constant
// load of small requests and a long download, and restarts each gateway in
// turn, then each agent replica: no request fails and the download arrives
// whole.
func TestRollingRestarts(t *testing.T) {
	const replicaDrain = 20 * time.Second
	chunk := strings.Repeat("rolling restarts ", 16<<10) // 272 KiB
	const chunks = 120
	f := newPeerFixture(t, "rolling", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			// About 3.6 s and 32 MiB: long enough to span a restart.
			for range chunks {
				if _, err := io.WriteString(w, chunk); err != nil {
					return
				}
				w.(http.Flusher).Flush()
				time.Sleep(30 * time.Millisecond)
			}
			return
		}
		fmt.Fprintf(w, "app %s", r.URL.Path)
	}))
	cluster := f.cluster
	gws := make([]*runningGateway, 3)
	var backends []string
	for i := range gws {
		gws[i] = startPeer(t, fmt.Sprintf("gw-%d", i), f.base)
		backends = append(backends, gws[i].cfg.HTTPAddr)
	}
	lb, err := balancer.Start("127.0.0.1:0", backends)
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Close()

	startReplica := func(name string) *tunneltest.Agent {
		return f.agent(t, "http://"+lb.Addr, func(c *tunnelclient.Config) {
			c.Instance, c.RetryFast, c.DrainTimeout = name, 100*time.Millisecond, replicaDrain
		})
	}
	replicas := []*tunneltest.Agent{startReplica("pod-0"), startReplica("pod-1")}
	f.route(t)
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}, Timeout: 30 * time.Second}
	defer hc.CloseIdleConnections()
	get := func(path string) (int, []byte, error) {
		req, _ := http.NewRequest("GET", "http://"+lb.Addr+path, nil)
		req.Host = "shop.example.com"
		resp, err := hc.Do(req)
		if err != nil {
			return 0, nil, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, b, err
	}
	for _, g := range gws {
		waitFor(t, g.cfg.GatewayID+" serving the cluster", 10*time.Second, func() bool {
			code, _ := g.get(t, hc, "shop.example.com", "/ready")
			return code == 200
		})
	}

	// The load: 4 workers of small requests, bounded in count and time.
	var ok, failed atomic.Int64
	var failures sync.Map
	stop := make(chan struct{})
	var load sync.WaitGroup
	deadline := time.Now().Add(3 * time.Minute)
	for w := range 4 {
		load.Go(func() {
			for i := 0; i < 1_000_000 && time.Now().Before(deadline); i++ {
				select {
				case <-stop:
					return
				default:
				}
				path := fmt.Sprintf("/w%d/%d", w, i)
				code, body, err := get(path)
				if err != nil || code != 200 || string(body) != "app "+path {
					failed.Add(1)
					failures.Store(fmt.Sprintf("%s: %d %q %v", path, code, body, err), true)
					continue
				}
				ok.Add(1)
			}
		})
	}
	var want [sha256.Size]byte
	{
		h := sha256.New()
		for range chunks {
			io.WriteString(h, chunk)
		}
		copy(want[:], h.Sum(nil))
	}
	download := func() error {
		code, body, err := get("/slow")
		switch {
		case err != nil:
			return err
		case code != 200:
			return fmt.Errorf("status %d", code)
		case sha256.Sum256(body) != want:
			return fmt.Errorf("%d bytes, checksum differs", len(body))
		}
		return nil
	}
	restart := func(what string, do func()) time.Duration {
		t.Helper()
		dl := make(chan error, 1)
		go func() { dl <- download() }()
		time.Sleep(500 * time.Millisecond) // the download is under way
		before := ok.Load()
		start := time.Now()
		do()
		if err := <-dl; err != nil {
			t.Errorf("download across the restart of %s: %v", what, err)
		}
		waitFor(t, "requests served after the restart of "+what, 10*time.Second, func() bool { return ok.Load() > before+50 })
		took := time.Since(start)
		t.Logf("restarted %s in %s; %d requests ok, %d failed so far", what, took.Round(time.Millisecond), ok.Load(), failed.Load())
		return took
	}
	for i, g := range gws {
		restart(g.cfg.GatewayID, func() {
			g.stop()
			gws[i] = runPeer(t, g.env)
		})
	}
	for i, a := range replicas {
		// The download ends after a few seconds; the stop must not wait
		// for the drain's timeout on top (pooled streams and peer links to
		// the replica are retired when it goes away).
		took := restart(fmt.Sprintf("agent replica pod-%d", i), func() {
			a.Stop()
			replicas[i] = startReplica(fmt.Sprintf("pod-%d", i))
			waitFor(t, "the replica back", 10*time.Second, func() bool {
				n := 0
				for _, g := range gws {
					n += len(g.sessions.ClusterSessions(cluster.UUID))
				}
				return n == 2
			})
		})
		if took >= replicaDrain*3/4 {
			t.Errorf("restarting replica pod-%d took %s: its drain waited on idle streams (drain timeout %s)", i, took, replicaDrain)
		}
	}
	close(stop)
	load.Wait()
	t.Logf("%d requests ok, %d failed", ok.Load(), failed.Load())
	if failed.Load() != 0 {
		n := 0
		failures.Range(func(k, _ any) bool {
			if n++; n <= 10 {
				t.Errorf("failed: %s", k)
			}
			return true
		})
		t.Fatalf("%d requests failed during the rolling restarts", failed.Load())
	}
	for _, a := range replicas {
		a.Stop()
	}
}
