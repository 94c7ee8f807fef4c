// Package e2e proves the platform as users run it: every component is the
// built binary in its own process (shared/stack), talking over real loopback
// sockets to a real PostgreSQL and real kube-apiservers; requests come from
// real HTTP, WebSocket and kubectl clients through the gateway.
package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pipeops/tunnel/shared/stack"
	"github.com/pipeops/tunnel/shared/stack/stacktest"
	"github.com/pipeops/tunnel/shared/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m, stacktest.Stop) }

// env is one stack with one cluster whose ingress stand-in serves
// stack.App under host.
type env struct {
	s    *stack.Stack
	c    *stack.Cluster
	host string
}

func newEnv(t *testing.T, opts stack.Options, copts stack.ClusterOptions) *env {
	t.Helper()
	s := stacktest.Start(t, opts)
	if copts.Name == "" {
		copts.Name = "edge"
	}
	c := stacktest.AddCluster(t, s, copts)
	e := &env{s: s, c: c, host: "app." + copts.Name + ".example.test"}
	c.Ingress.Handle(e.host, stack.App(copts.Name))
	return e
}

// route creates the Ingress that routes e.host to the cluster's app and
// waits until the gateway serves it.
func (e *env) route(t *testing.T) {
	t.Helper()
	if _, err := e.c.CreateIngress(context.Background(), "shop", "web", e.host); err != nil {
		t.Fatal(err)
	}
	served(t, e.s, e.host, "hello from "+e.c.Name, 10*time.Second)
}

// client is a plain HTTP client with no pooling surprises between tests.
var client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}

// get does GET path on host through the gateway's plain HTTP listener.
func get(ctx context.Context, s *stack.Stack, host, path string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.GatewayHTTP+path, nil)
	if err != nil {
		return 0, "", err
	}
	req.Host = host
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// eventually polls cond every 50 ms until it holds or timeout passes, and
// returns how long that took.
func eventually(t *testing.T, what string, timeout time.Duration, cond func() (bool, string)) time.Duration {
	t.Helper()
	start := time.Now()
	last := ""
	for time.Since(start) < timeout {
		ok, detail := cond()
		if ok {
			return time.Since(start)
		}
		last = detail
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: not within %s (last: %s)", what, timeout, last)
	return 0
}

// served waits until host answers 200 with want in the body.
func served(t *testing.T, s *stack.Stack, host, want string, timeout time.Duration) time.Duration {
	t.Helper()
	return eventually(t, host+" served through the gateway", timeout, func() (bool, string) {
		code, body, err := get(context.Background(), s, host, "/")
		return err == nil && code == 200 && strings.Contains(body, want), fmt.Sprintf("%d %q %v", code, body, err)
	})
}

// unrouted waits until the gateway has no route for host.
func unrouted(t *testing.T, s *stack.Stack, host string, timeout time.Duration) time.Duration {
	t.Helper()
	return eventually(t, host+" no longer routed", timeout, func() (bool, string) {
		code, body, err := get(context.Background(), s, host, "/")
		return err == nil && code == 404 && strings.Contains(body, "no route for"), fmt.Sprintf("%d %q %v", code, body, err)
	})
}

// metric sums the samples of a gateway metric whose labels contain every
// one of labels (e.g. `mode="direct"`).
func metric(t *testing.T, s *stack.Stack, name string, labels ...string) float64 {
	t.Helper()
	v, err := s.GatewayMetric(context.Background(), name, labels...)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// agents is the number of agent sessions the gateway holds.
func agents(t *testing.T, s *stack.Stack) int {
	return int(metric(t, s, "pipeops_gateway_tunnel_sessions"))
}

// tlsConfig trusts the stack's CA.
func tlsConfig(t *testing.T, s *stack.Stack) *tls.Config {
	t.Helper()
	pem, err := os.ReadFile(s.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return &tls.Config{RootCAs: pool}
}

// k8sStatus is the status of GET /k8s/{cluster}/api through the gateway's
// HTTPS listener with token.
func k8sStatus(t *testing.T, s *stack.Stack, cluster, token string) int {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsConfig(t, s)}}
	defer hc.CloseIdleConnections()
	req, _ := http.NewRequest(http.MethodGet, s.GatewayHTTPS+"/k8s/"+cluster+"/api", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// traffic sends GET / to host every interval until stopped, and records
// every failure.
type traffic struct {
	mu       sync.Mutex
	ok       int
	failures []string
	stop     chan struct{}
	done     chan struct{}
	once     sync.Once
}

func startTraffic(s *stack.Stack, host, want string, interval time.Duration) *traffic {
	tr := &traffic{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(tr.done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-tr.stop:
				return
			case <-tick.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			code, body, err := get(ctx, s, host, "/")
			cancel()
			tr.mu.Lock()
			if err != nil || code != 200 || !strings.Contains(body, want) {
				tr.failures = append(tr.failures, fmt.Sprintf("%s: %d %q %v", time.Now().Format("15:04:05.000"), code, strings.TrimSpace(body), err))
			} else {
				tr.ok++
			}
			tr.mu.Unlock()
		}
	}()
	return tr
}

// reset clears the counts and returns the failures so far.
func (tr *traffic) reset() (ok int, failures []string) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	ok, failures = tr.ok, tr.failures
	tr.ok, tr.failures = 0, nil
	return ok, failures
}

// close stops the traffic (once) and returns what was not yet reset.
func (tr *traffic) close() (ok int, failures []string) {
	tr.once.Do(func() { close(tr.stop) })
	<-tr.done
	return tr.reset()
}
