package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pipeops/tunnel/shared/stack"
	"github.com/pipeops/tunnel/shared/stack/stacktest"
	"github.com/pipeops/tunnel/shared/testenv/netbed"
)

// bedEnv is a stack on a test bed: the control plane and the gateway on
// host "server", the cluster's agent on host "cluster", joined by a link of
// the given profile. Visitors (the test's own requests) reach the gateway
// through a forwarder, with no link in between.
type bedEnv struct {
	*env
	server, cluster *netbed.Host
	link            *netbed.Link
}

func newBedEnv(t *testing.T, p netbed.Profile, opts stack.Options, copts stack.ClusterOptions) *bedEnv {
	t.Helper()
	b := &bedEnv{}
	b.cluster, b.server, b.link = netbed.NewPair(t, "cluster", "server", p)
	opts.Server = b.server
	s := stacktest.Start(t, opts)
	if copts.Name == "" {
		copts.Name = "edge"
	}
	copts.Host = b.cluster
	c := stacktest.AddCluster(t, s, copts)
	b.env = &env{s: s, c: c, host: "app." + copts.Name + ".example.test"}
	c.Ingress.Handle(b.env.host, stack.App(copts.Name))
	return b
}

// agentConnected is what the agent's /status says of its tunnel.
func agentConnected(c *stack.Cluster) (bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.AgentURL+"/status", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	var st struct {
		Connected *bool `json:"tunnel_connected"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return false, err
	}
	if st.Connected == nil {
		return false, fmt.Errorf("the agent's /status has no tunnel_connected")
	}
	return *st.Connected, nil
}

// TestLinkBlackhole cuts the agent's link without a reset (the emulator
// drops every packet both ways) while traffic flows: the gateway and the
// agent must each notice within 15 s, the agent must be back within 2 s of
// the link's return, and the routes must be intact.
func TestLinkBlackhole(t *testing.T) {
	t.Parallel() // half a minute of waiting, mostly
	b := newBedEnv(t, netbed.Region, stack.Options{}, stack.ClusterOptions{})
	// SYN retransmits spaced as on most kernels in the field (1, 2, 4, 8 s),
	// not this one's: the agent must not depend on the newer timing.
	if err := b.cluster.Sysctl("net.ipv4.tcp_syn_linear_timeouts", "0"); err != nil {
		t.Fatal(err)
	}
	b.route(t)
	if up, err := agentConnected(b.c); err != nil || !up {
		t.Fatalf("before the cut the agent says connected=%v (%v)", up, err)
	}

	cut := time.Now()
	b.link.Blackhole(true)
	var gatewayNoticed, agentNoticed time.Duration
	for time.Since(cut) < 20*time.Second && (gatewayNoticed == 0 || agentNoticed == 0) {
		if gatewayNoticed == 0 && agents(t, b.s) == 0 {
			gatewayNoticed = time.Since(cut)
		}
		if up, err := agentConnected(b.c); agentNoticed == 0 && err == nil && !up {
			agentNoticed = time.Since(cut)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("link blackholed: the gateway dropped the session after %v, the agent noticed after %v",
		gatewayNoticed.Round(10*time.Millisecond), agentNoticed.Round(10*time.Millisecond))
	if gatewayNoticed == 0 || gatewayNoticed > 15*time.Second {
		t.Errorf("the gateway noticed the dead link after %v, want within 15 s (0: not in 20 s)", gatewayNoticed)
	}
	if agentNoticed == 0 || agentNoticed > 15*time.Second {
		t.Errorf("the agent noticed the dead link after %v, want within 15 s (0: not in 20 s)", agentNoticed)
	}
	// Stay cut longer, as a real outage would: long enough for a lone
	// connection attempt's SYN retransmits to be seconds apart.
	time.Sleep(9 * time.Second)
	if st := b.link.Stats(b.cluster); st.Blackholed == 0 {
		t.Errorf("the link dropped nothing while blackholed: %+v", st)
	}

	back := time.Now()
	b.link.Blackhole(false)
	reconnected := eventually(t, "the agent reconnected", 20*time.Second, func() (bool, string) {
		n := agents(t, b.s)
		return n == 1, fmt.Sprintf("%d sessions", n)
	})
	servedAgain := served(t, b.s, b.host, "hello from edge", 20*time.Second)
	t.Logf("link back: the agent reconnected after %v, the route served after %v (since the link's return)",
		reconnected.Round(10*time.Millisecond), time.Since(back).Round(10*time.Millisecond))
	if reconnected > 2*time.Second {
		t.Errorf("the agent took %v to reconnect after the link came back, want within 2 s", reconnected)
	}
	_ = servedAgain
}

// activeUser issues a user token for e's cluster and calls the Kubernetes
// API through the gateway with it once, as a kubectl user active before an
// outage would: the gateway then knows the token (one it has never seen is
// refused while it cannot ask the database whether it was revoked:
// gateway/authn.Revocations).
func activeUser(t *testing.T, e *env) string {
	t.Helper()
	user, _, err := e.s.Token(context.Background(), "user", time.Hour, e.c.Name)
	if err != nil {
		t.Fatal(err)
	}
	if code := k8sStatus(t, e.s, e.c.ID, user); code != http.StatusOK {
		t.Fatalf("/k8s before the outage: %d", code)
	}
	return user
}

// faultsFull reports whether the fault suite runs in its full profile
// (FAULTS=full, `make faults`): the outages and the soak at the lengths
// the platform promises, rather than CI's short ones.
func faultsFull() bool { return os.Getenv("FAULTS") == "full" }

// faultLength is short in CI and `make test`, full under FAULTS=full.
func faultLength(short, full time.Duration) time.Duration {
	if faultsFull() {
		return full
	}
	return short
}

// routeListed reports whether the control plane's route list has host.
func routeListed(t *testing.T, s *stack.Stack, host string) bool {
	t.Helper()
	out, err := s.CLI(context.Background(), "route", "list")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Contains(out, host)
}

// TestControlPlaneDown stops the control plane for a long outage (1 minute
// here, 10 under FAULTS=full) with traffic flowing: the tunnel, routing and
// the Kubernetes API path through the gateway keep working, and the agent
// keeps its tunnel.
func TestControlPlaneDown(t *testing.T) {
	t.Parallel() // a minute of waiting, mostly
	e := newEnv(t, stack.Options{}, stack.ClusterOptions{})
	e.route(t)
	user := activeUser(t, e)
	tr := startTraffic(e.s, e.host, "hello from edge", 20*time.Millisecond)
	defer tr.close()

	outage := faultLength(time.Minute, 10*time.Minute)
	e.s.ControlPlane.Kill()
	start := time.Now()
	k8sChecks, sessionsLost := 0, 0
	for time.Since(start) < outage {
		if code := k8sStatus(t, e.s, e.c.ID, user); code != http.StatusOK {
			t.Errorf("%v into the control plane's outage: /k8s answered %d", time.Since(start).Round(time.Second), code)
		}
		k8sChecks++
		if agents(t, e.s) != 1 {
			sessionsLost++
		}
		time.Sleep(5 * time.Second)
	}
	ok, failures := tr.reset()
	t.Logf("control plane down %v: %d requests ok, %d failed; %d /k8s checks; agent session missing at %d checks",
		outage, ok, len(failures), k8sChecks, sessionsLost)
	if len(failures) > 0 {
		t.Errorf("%d requests failed while the control plane was down, first: %s", len(failures), failures[0])
	}
	if sessionsLost > 0 {
		t.Errorf("the agent's tunnel was down at %d checks while only the control plane was", sessionsLost)
	}
	if err := e.s.ControlPlane.Start(); err != nil {
		t.Fatal(err)
	}
	if !routeListed(t, e.s, e.host) {
		t.Errorf("route %s missing from the control plane after its outage", e.host)
	}
	if ok, failures := tr.close(); len(failures) > 0 {
		t.Errorf("after the control plane returned: %d ok, %d failed, first: %s", ok, len(failures), failures[0])
	}
}

// TestKill9 kills each component with SIGKILL under traffic and starts it
// again: no route is lost, and the time until the route is served again
// is measured (the control plane's death must not cost a request).
func TestKill9(t *testing.T) {
	e := newEnv(t, stack.Options{}, stack.ClusterOptions{})
	ctx := context.Background()
	e.route(t)
	tr := startTraffic(e.s, e.host, "hello from edge", 20*time.Millisecond)
	defer tr.close()

	for _, tc := range []struct {
		name       string
		c          *stack.Component
		noFailures bool
	}{
		{"gateway", e.s.Gateway, false},
		{"agent", e.c.Agent, false},
		{"control plane", e.s.ControlPlane, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr.reset()
			tc.c.Kill()
			killed := time.Now()
			if err := tc.c.Start(); err != nil {
				t.Fatal(err)
			}
			up := time.Since(killed)
			took := served(t, e.s, e.host, "hello from edge", 15*time.Second)
			// The route is served by whatever table the gateway holds; it
			// must be in the store too, and stay served.
			time.Sleep(time.Second)
			ok, failures := tr.reset()
			t.Logf("%s killed: ready again after %v, the route served %v after that (%d requests ok, %d failed meanwhile)",
				tc.name, up.Round(time.Millisecond), took.Round(time.Millisecond), ok, len(failures))
			if tc.noFailures && len(failures) > 0 {
				t.Errorf("%d requests failed when the %s died, first: %s", len(failures), tc.name, failures[0])
			}
			if !routeListed(t, e.s, e.host) {
				t.Errorf("route %s lost when the %s died", e.host, tc.name)
			}
			if code, body, err := get(ctx, e.s, e.host, "/"); err != nil || code != 200 {
				t.Errorf("after the %s came back: %d %q %v", tc.name, code, body, err)
			}
		})
	}
}

// rssKiB is a process's resident memory.
func rssKiB(t *testing.T, pid int) int64 { return procStatusKiB(t, pid, "VmRSS") }

// procStatusKiB reads a size in kB from /proc/PID/status.
func procStatusKiB(t *testing.T, pid int, field string) int64 {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb
		}
	}
	t.Fatalf("no %s for pid %d", field, pid)
	return 0
}

// downloadRate downloads n bytes from host through the gateway and returns
// MB/s.
func downloadRate(ctx context.Context, t *testing.T, s *stack.Stack, host string, n int64) float64 {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.GatewayHTTP+"/bytes?n="+strconv.FormatInt(n, 10), nil)
	req.Host = host
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got, err := io.Copy(io.Discard, resp.Body)
	if err != nil || got != n || resp.StatusCode != http.StatusOK {
		t.Fatalf("download: %s, %d of %d bytes, %v", resp.Status, got, n, err)
	}
	return float64(n) / time.Since(start).Seconds() / 1e6
}

// smallP99 sends small requests from 8 connections for d and returns their
// p99.
func smallP99(t *testing.T, s *stack.Stack, host string, d time.Duration) time.Duration {
	t.Helper()
	var mu sync.Mutex
	var lat []time.Duration
	var failed []string
	var wg sync.WaitGroup
	end := time.Now().Add(d)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) {
				start := time.Now()
				code, body, err := get(context.Background(), s, host, "/")
				mu.Lock()
				if err != nil || code != 200 {
					failed = append(failed, fmt.Sprintf("%d %q %v", code, body, err))
				} else {
					lat = append(lat, time.Since(start))
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(failed) > 0 {
		t.Fatalf("%d small requests failed, first: %s", len(failed), failed[0])
	}
	slices.Sort(lat)
	return lat[len(lat)*99/100]
}

// TestSlowVisitor has a visitor read a large download at one byte a second:
// its stream alone waits (yamux's per-stream window), other downloads and
// small requests through the same agent go on as before, and the gateway's
// and the agent's memory stay bounded by the window.
func TestSlowVisitor(t *testing.T) {
	e := newEnv(t, stack.Options{}, stack.ClusterOptions{})
	e.route(t)
	const bulk = 128 << 20
	downloadRate(context.Background(), t, e.s, e.host, bulk) // warm up
	rateBefore := downloadRate(context.Background(), t, e.s, e.host, bulk)
	p99Before := smallP99(t, e.s, e.host, 2*time.Second)
	rss := func() int64 { return rssKiB(t, e.s.Gateway.Pid()) + rssKiB(t, e.c.Agent.Pid()) }
	rssBefore := rss()

	// The slow visitor: a receive buffer of a few KiB, one byte a second.
	conn, err := net.Dial("tcp", strings.TrimPrefix(e.s.GatewayHTTP, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.(*net.TCPConn).SetReadBuffer(4 << 10)
	fmt.Fprintf(conn, "GET /bytes?n=%d HTTP/1.1\r\nHost: %s\r\n\r\n", int64(1)<<33, e.host)
	slow := make(chan int, 1)
	stopSlow := make(chan struct{})
	go func() {
		n := 0
		b := make([]byte, 1)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-stopSlow:
				slow <- n
				return
			case <-tick.C:
			}
			_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := conn.Read(b); err != nil {
				slow <- -n - 1
				return
			}
			n++
		}
	}()
	time.Sleep(3 * time.Second) // every buffer on the slow stream's way fills

	rateBeside := downloadRate(context.Background(), t, e.s, e.host, bulk)
	p99Beside := smallP99(t, e.s, e.host, 2*time.Second)
	rssBeside := rss()
	close(stopSlow)
	readSlow := <-slow
	t.Logf("beside a visitor reading 1 byte/s (%d bytes read): download %.0f MB/s (before %.0f), small p99 %v (before %v), gateway+agent RSS %d MiB (before %d)",
		readSlow, rateBeside, rateBefore, p99Beside.Round(10*time.Microsecond), p99Before.Round(10*time.Microsecond), rssBeside>>10, rssBefore>>10)
	if readSlow < 3 {
		t.Errorf("the slow visitor read %d bytes; its stream should have stayed open, trickling", readSlow)
	}
	// A busy shared machine moves figures by tens of per cent; a stream
	// held up behind the slow one would move them by orders of magnitude.
	if rateBeside < rateBefore/2 {
		t.Errorf("a download beside the slow visitor ran at %.0f MB/s, %.0f before", rateBeside, rateBefore)
	}
	if p99Beside > 2*p99Before+10*time.Millisecond {
		t.Errorf("small requests' p99 beside the slow visitor %v, %v before", p99Beside, p99Before)
	}
	// The slow stream holds at most a window on each side plus socket
	// buffers: a few MiB, not the download.
	if grew := (rssBeside - rssBefore) >> 10; grew > 48 {
		t.Errorf("gateway+agent RSS grew by %d MiB with one slow visitor", grew)
	}
}

// TestPostgresDown stops PostgreSQL for a minute under traffic: requests on
// existing routes all succeed, the agent keeps its tunnel, a route made
// during the outage lands once the database is back, and nothing written
// before it is lost.
func TestPostgresDown(t *testing.T) {
	t.Parallel() // a minute of waiting, mostly
	e := newEnv(t, stack.Options{PrivatePostgres: true}, stack.ClusterOptions{})
	ctx := context.Background()
	e.route(t)
	user := activeUser(t, e)
	tr := startTraffic(e.s, e.host, "hello from edge", 20*time.Millisecond)
	defer tr.close()

	// The operator grants the hostname beforehand (that is a database
	// write); the Ingress comes during the outage.
	later := "later." + e.c.Name + ".example.test"
	if err := e.c.GrantDomain(ctx, later); err != nil {
		t.Fatal(err)
	}
	e.c.Ingress.Handle(later, stack.App("later"))

	pg := e.s.Postgres()
	if pg == nil {
		t.Fatal("the stack has no PostgreSQL of its own")
	}
	outage := time.Minute
	if err := pg.Halt(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	// A route made while the database is down.
	time.Sleep(5 * time.Second)
	if _, err := e.c.Kube.Client.NetworkingV1().Ingresses("shop").Create(ctx, stack.ManagedIngress("shop", "later", later), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	sessionsLost, k8sFailed := 0, 0
	for time.Since(start) < outage {
		if agents(t, e.s) != 1 {
			sessionsLost++
		}
		if code := k8sStatus(t, e.s, e.c.ID, user); code != http.StatusOK {
			k8sFailed++
		}
		time.Sleep(5 * time.Second)
	}
	ok, failures := tr.reset()
	if err := pg.Resume(); err != nil {
		t.Fatal(err)
	}
	landed := served(t, e.s, later, "hello from later", 90*time.Second)
	t.Logf("PostgreSQL down %v: %d requests ok, %d failed; the agent's session missing at %d checks, /k8s failed at %d; the route made during the outage served %v after the database returned",
		outage, ok, len(failures), sessionsLost, k8sFailed, landed.Round(10*time.Millisecond))
	if len(failures) > 0 {
		t.Errorf("%d requests on an existing route failed while PostgreSQL was down, first: %s", len(failures), failures[0])
	}
	if sessionsLost > 0 {
		t.Errorf("the agent's tunnel was down at %d checks while only PostgreSQL was", sessionsLost)
	}
	if k8sFailed > 0 {
		t.Errorf("/k8s failed at %d checks while only PostgreSQL was down", k8sFailed)
	}
	for _, host := range []string{e.host, later} {
		if !routeListed(t, e.s, host) {
			t.Errorf("route %s missing from the store after the outage", host)
		}
	}
	// The user token issued before the outage is still known (not lost
	// with the restart), and the cluster too.
	if code := k8sStatus(t, e.s, e.c.ID, user); code != http.StatusOK {
		t.Errorf("/k8s with a token issued before the outage: %d", code)
	}
	if ok, failures := tr.close(); len(failures) > 0 {
		t.Errorf("after PostgreSQL returned: %d ok, %d failed, first: %s", ok, len(failures), failures[0])
	}
}
