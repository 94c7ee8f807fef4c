package apihealth

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/rest"

	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/testenv/kubetest"
)

func TestMain(m *testing.M) { testenv.MainNoLeaks(m, nil, kubetest.Stop) }

// gate forwards TCP connections to target while open; while shut it
// accepts and closes them at once, as a network policy that resets would.
type gate struct {
	ln     net.Listener
	target string
	shut   atomic.Bool
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  []net.Conn // closed at cleanup: the client keeps idle ones
}

func startGate(t *testing.T, target string) *gate {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &gate{ln: ln, target: target}
	g.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if g.shut.Load() {
				c.Close()
				continue
			}
			g.mu.Lock()
			g.conns = append(g.conns, c)
			g.mu.Unlock()
			g.wg.Go(func() {
				defer c.Close()
				up, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer up.Close()
				done := make(chan struct{}, 2)
				go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
				go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
				<-done
				c.Close()
				up.Close()
				<-done
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		g.mu.Lock()
		for _, c := range g.conns {
			c.Close()
		}
		g.mu.Unlock()
		g.wg.Wait()
	})
	return g
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func run(t *testing.T, cfg Config) *Probe {
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); p.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return p
}

// TestProbe runs a probe against the real API server through a gate:
// unreachable, it is not up, says why and what to check once however many
// checks fail; reachable again, it is up and says so.
func TestProbe(t *testing.T) {
	env := kubetest.Start(t)
	host := strings.TrimPrefix(env.Config.Host, "https://")
	g := startGate(t, host)
	g.shut.Store(true)
	cfg := rest.CopyConfig(env.Config)
	cfg.Host = "https://" + g.ln.Addr().String()
	client, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var logs testenv.LogBuffer
	reg := prometheus.NewRegistry()
	p := run(t, Config{Client: client.RESTClient(), Host: cfg.Host, Interval: 20 * time.Millisecond, Timeout: 2 * time.Second,
		Logger: logs.Logger(), Metrics: reg})

	failures := func() float64 {
		return testutil.ToFloat64(p.failures)
	}
	waitFor(t, "five failed checks", func() bool { return failures() >= 5 })
	if up, why := p.Up(); up || !strings.Contains(why, "unreachable") {
		t.Fatalf("Up() = %v, %q while the path is shut", up, why)
	}
	if n := strings.Count(logs.String(), "cannot reach its Kubernetes API server"); n != 1 {
		t.Fatalf("the outage was logged %d times over %v checks, want once:\n%s", n, failures(), logs.String())
	}
	if !strings.Contains(logs.String(), "NetworkPolicies") {
		t.Fatalf("the log does not say what to check:\n%s", logs.String())
	}
	if v := testutil.ToFloat64(p.up); v != 0 {
		t.Fatalf("up gauge = %v while unreachable", v)
	}

	g.shut.Store(false)
	waitFor(t, "the probe to see the API server", func() bool { up, _ := p.Up(); return up })
	if v := testutil.ToFloat64(p.up); v != 1 {
		t.Fatalf("up gauge = %v while reachable", v)
	}
	waitFor(t, "the recovery line", func() bool { return strings.Contains(logs.String(), "reachable again") })
}

// TestProbeRefusedCredentials: a token the API server does not accept is
// reported as such.
func TestProbeRefusedCredentials(t *testing.T) {
	env := kubetest.Start(t)
	cfg := rest.AnonymousClientConfig(env.Config)
	cfg.BearerToken = "not-a-token"
	client, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var logs testenv.LogBuffer
	p := run(t, Config{Client: client.RESTClient(), Host: cfg.Host, Interval: 20 * time.Millisecond, Logger: logs.Logger()})
	waitFor(t, "a failed check", func() bool { _, why := p.Up(); return strings.Contains(why, "unreachable") })
	waitFor(t, "the log line", func() bool { return strings.Contains(logs.String(), "refused the agent's credentials") })
}

func TestNewNeedsClient(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Fatal("New without a client succeeded")
	}
}

func TestHint(t *testing.T) {
	for msg, want := range map[string]string{
		`Get "https://10.0.0.1/version": dial tcp 10.0.0.1:443: connect: connection refused`:                             "NetworkPolicies",
		"no answer within 5s: context deadline exceeded - error from a previous attempt: read: connection reset by peer": "NetworkPolicies",
		"no answer within 5s: context deadline exceeded":                                                                 "did not answer in time",
		`Get "https://kubernetes.default.svc/version": dial tcp: lookup kubernetes.default.svc: no such host`:            "does not resolve",
		"something else": "check that the API server runs",
	} {
		if got := hint(errors.New(msg)); !strings.Contains(got, want) {
			t.Errorf("hint(%q) = %q, want one mentioning %q", msg, got, want)
		}
	}
}
