package suite

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/pipeops/tunnel/loadtest/internal/fleet"
	"github.com/pipeops/tunnel/loadtest/internal/load"
	"github.com/pipeops/tunnel/loadtest/internal/relay"
	"github.com/pipeops/tunnel/loadtest/internal/report"
	"github.com/pipeops/tunnel/shared/routeproto"
	"github.com/pipeops/tunnel/shared/stack"
)

// Hosts the upstream app answers to. The tunnel host is a PipeOps-managed
// Ingress of the cluster (tunnel mode, synced by the agent); the direct host
// is a direct-mode route of a second, agentless cluster whose public
// endpoint is the same upstream.
const (
	tunnelHost = "tunnel.load.test"
	directHost = "direct.load.test"
)

// Env is the running stack the scenarios measure, and what they share.
type Env struct {
	S *stack.Stack
	C *stack.Cluster

	profile  Profile
	progress func(format string, args ...any)
	admin    string // admin token
	// client is for the suite's own calls (admin API, metrics, checks).
	client *http.Client
	// gen is the load generator, a process of its own.
	gen *load.Remote
	// relays are the relay path's two relay processes: the load generator
	// connects to relays[0], which relays to relays[1], which relays to
	// the upstream.
	relays [2]*relay.Process
	// pprofDir, when set, receives profiles of the gateway and the agent.
	pprofDir string
	// binDir and workDir are the stack's binaries and directory; the wan
	// scenario starts a stack of its own from them.
	binDir, workDir string
	// dirty is set once traffic has gone through the gateway and agent
	// since they started: memory scenarios then restart them first.
	dirty bool

	// ids and fleet are the simulated agents, shared by the agents and
	// reconnect scenarios.
	ids   []fleet.Identity
	fleet *fleet.Fleet
}

// setup starts the stack, one cluster with its agent, the app on its
// ingress stand-in, the relay path's relays and both routes, and waits
// until both routes are served.
func setup(ctx context.Context, opts Options, progress func(string, ...any)) (_ *Env, err error) {
	quiet := map[string]string{"LOG_LEVEL": "warn"}
	s, err := stack.Start(ctx, stack.Options{Dir: opts.WorkDir, BinDir: opts.BinDir, Progress: progressWriter(progress),
		ControlPlaneEnv: quiet, GatewayEnv: quiet})
	if err != nil {
		return nil, fmt.Errorf("start the stack: %w", err)
	}
	e := &Env{S: s, profile: opts.Profile, progress: progress, pprofDir: opts.PprofDir, binDir: opts.BinDir, workDir: opts.WorkDir,
		client: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{Proxy: nil}}}
	defer func() {
		if err != nil {
			e.Close()
		}
	}()
	if e.gen, err = load.StartRemote(opts.Worker[0], opts.Worker[1:]...); err != nil {
		return nil, err
	}
	agentEnv := map[string]string{"LOG_LEVEL": "warn"}
	if opts.PprofDir != "" {
		agentEnv["AGENT_PPROF"] = "true"
	}
	e.C, err = s.AddCluster(ctx, stack.ClusterOptions{Name: "load", AgentEnv: agentEnv})
	if err != nil {
		return nil, fmt.Errorf("add the cluster: %w", err)
	}
	app := upstreamApp()
	e.C.Ingress.Handle(tunnelHost, app)
	e.C.Ingress.Handle(directHost, app)
	if err := e.startRelays(opts.Relay); err != nil {
		return nil, err
	}
	if _, err := e.C.CreateIngress(ctx, "load", "web", tunnelHost); err != nil {
		return nil, fmt.Errorf("create the Ingress: %w", err)
	}
	if e.admin, _, err = s.Token(ctx, "admin", 0); err != nil {
		return nil, err
	}
	pub, err := e.createCluster(ctx, "load-public")
	if err != nil {
		return nil, err
	}
	if err := e.registerDirectRoute(ctx, pub); err != nil {
		return nil, err
	}
	t0 := time.Now()
	if err := e.waitServed(ctx, 60*time.Second); err != nil {
		return nil, err
	}
	progress("routes       %s (tunnel mode) and %s (direct mode) served in %s", tunnelHost, directHost, time.Since(t0).Round(time.Millisecond))
	return e, nil
}

// startRelays starts the relay path's processes, the one next to the
// upstream first.
func (e *Env) startRelays(command []string) error {
	target := e.C.Ingress.Addr
	for i := len(e.relays) - 1; i >= 0; i-- {
		p, err := relay.Start(command, target)
		if err != nil {
			return fmt.Errorf("start relay %d of the relay path: %w", i+1, err)
		}
		e.relays[i] = p
		target = p.Addr()
	}
	e.progress("relays       %s -> %s -> %s (the relay path)", e.relays[0].Addr(), e.relays[1].Addr(), e.C.Ingress.Addr)
	return nil
}

// Positions in pids (and cpuSample).
const (
	pidGateway = iota
	pidAgent
	pidClient   // the load generator
	pidUpstream // this process
	pidRelays   // the relays, from here to the end
)

// pids are the processes the suite drives: gateway, agent, load
// generator, itself, and the relays.
func (e *Env) pids() []int {
	pids := []int{e.S.Gateway.Pid(), e.C.Agent.Pid(), e.gen.Pid(), os.Getpid()}
	for _, r := range e.relays {
		pids = append(pids, r.Pid())
	}
	return pids
}

// Close stops the load generator, the relays, the simulated agents and the
// stack.
func (e *Env) Close() {
	if e.gen != nil {
		if err := e.gen.Close(); err != nil {
			e.progress("load generator: %v", err)
		}
	}
	for i, r := range e.relays {
		if r == nil {
			continue
		}
		if err := r.Close(); err != nil {
			e.progress("relay %d: %v", i+1, err)
		}
		e.relays[i] = nil
	}
	if e.fleet != nil {
		e.fleet.Close()
		e.fleet = nil
	}
	e.client.CloseIdleConnections()
	e.S.Close()
}

// upstreamApp is stack.App with one more endpoint: /conn answers a few
// bytes and closes the connection, so that every request through the
// gateway needs a new upstream connection (in tunnel mode a new stream and a
// new connection from the agent).
func upstreamApp() http.Handler {
	app := stack.App("load")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/conn" {
			w.Header().Set("Connection", "close")
			w.Header().Set("Content-Length", "16")
			io.WriteString(w, "new connection\r\n")
			return
		}
		app.ServeHTTP(w, r)
	})
}

// target is where a path's requests go: URL base and Host header.
func (e *Env) target(path string) (base, host string) {
	switch path {
	case report.Direct:
		return "http://" + e.C.Ingress.Addr, tunnelHost
	case report.GatewayDirect:
		return e.S.GatewayHTTP, directHost
	case report.Relay:
		// The upstream sees the same Host as on the direct path.
		return "http://" + e.relays[0].Addr(), tunnelHost
	default:
		return e.S.GatewayHTTP, tunnelHost
	}
}

// identity is a cluster created through the admin API.
type identity struct {
	UUID, Token string
}

// createCluster creates a cluster through the control plane's admin API.
func (e *Env) createCluster(ctx context.Context, name string) (identity, error) {
	var out struct {
		Cluster struct {
			UUID string `json:"uuid"`
		} `json:"cluster"`
		AgentToken string `json:"agent_token"`
	}
	err := e.postJSON(ctx, e.S.ControlPlaneURL+"/api/v1/admin/clusters", e.admin, map[string]string{"name": name}, http.StatusCreated, &out)
	if err != nil {
		return identity{}, fmt.Errorf("create cluster %s: %w", name, err)
	}
	if out.Cluster.UUID == "" || out.AgentToken == "" {
		return identity{}, fmt.Errorf("create cluster %s: no uuid or agent token in the answer", name)
	}
	return identity{UUID: out.Cluster.UUID, Token: out.AgentToken}, nil
}

// registerDirectRoute registers the direct host, with the agent token of
// cluster id, as the agent of a public cluster would: direct mode, public
// endpoint the upstream's address.
func (e *Env) registerDirectRoute(ctx context.Context, id identity) error {
	req := routeproto.RegisterRequest{Hostname: directHost, ClusterUUID: id.UUID, Namespace: "load", ServiceName: "web", ServicePort: 80,
		IngressName: "web", Path: "/", PathType: "Prefix", Annotations: map[string]string{},
		PublicEndpoint: e.C.Ingress.Addr, RoutingMode: "direct"}
	// The load host has no DNS for a challenge: the operator vouches for it.
	if _, err := e.S.CLI(ctx, "domain", "grant", id.UUID, directHost); err != nil {
		return fmt.Errorf("grant the direct-mode host: %w", err)
	}
	if err := e.postJSON(ctx, e.S.ControlPlaneURL+routeproto.RegisterURLPath, id.Token, req, http.StatusOK, nil); err != nil {
		return fmt.Errorf("register the direct-mode route: %w", err)
	}
	return nil
}

func (e *Env) postJSON(ctx context.Context, url, token string, body any, want int, out any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := e.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != want {
		return fmt.Errorf("POST %s: %s: %s", req.URL.Path, resp.Status, strings.TrimSpace(string(data)))
	}
	if out != nil {
		return json.Unmarshal(data, out)
	}
	return nil
}

// waitServed waits until both hosts answer through the gateway: after the
// stack starts, and after the gateway or the agent restarts.
func (e *Env) waitServed(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		last = nil
		for _, h := range []string{tunnelHost, directHost} {
			if err := e.get(ctx, e.S.GatewayHTTP+"/", h, "hello from load"); err != nil {
				last = err
				break
			}
		}
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("routes not served through the gateway: %w", last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (e *Env) get(ctx context.Context, url, host, want string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Host = host
	resp, err := e.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), want) {
		return fmt.Errorf("GET %s (Host %s): %s %q", req.URL.Path, host, resp.Status, strings.TrimSpace(string(b)))
	}
	return nil
}

// freshen restarts the gateway (and the agent, when agentToo) if traffic
// has gone through them, so that a memory measurement starts from a
// process that has not grown its heap under earlier load: Go keeps freed
// memory resident for a while and would hand it to the new streams, hiding
// their cost.
func (e *Env) freshen(ctx context.Context, agentToo bool) error {
	if !e.dirty {
		return nil
	}
	t0 := time.Now()
	if err := e.S.Gateway.Restart(10 * time.Second); err != nil {
		return fmt.Errorf("restart the gateway: %w", err)
	}
	if agentToo {
		if err := e.C.Agent.Restart(10 * time.Second); err != nil {
			return fmt.Errorf("restart the agent: %w", err)
		}
	}
	if err := e.waitServed(ctx, 60*time.Second); err != nil {
		return err
	}
	what := "gateway"
	if agentToo {
		what = "gateway and agent"
	}
	e.progress("restarted the %s for a clean memory baseline in %s", what, time.Since(t0).Round(time.Millisecond))
	e.dirty = false
	return nil
}

// metrics scrapes a Prometheus text endpoint into series -> value (series
// with labels keep them: `name{a="b"}`).
func (e *Env) metrics(ctx context.Context, url string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := e.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return parseMetrics(resp.Body)
}

func parseMetrics(r io.Reader) (map[string]float64, error) {
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}

// gatewayMetric reads one series of the gateway's /metrics.
func (e *Env) gatewayMetric(ctx context.Context, series string) (float64, error) {
	m, err := e.metrics(ctx, e.S.GatewayAdmin+"/metrics")
	if err != nil {
		return 0, err
	}
	v, ok := m[series]
	if !ok {
		return 0, fmt.Errorf("gateway /metrics has no %s", series)
	}
	return v, nil
}

// goStats is what a process's /metrics says of its Go runtime: heap and
// stack in use (the cross-check of an RSS delta, which ignores memory the
// runtime holds free) and goroutines.
type goStats struct {
	heapStack  int64
	goroutines int64
}

func (e *Env) goStats(ctx context.Context, metricsURL string) goStats {
	m, err := e.metrics(ctx, metricsURL)
	if err != nil {
		return goStats{}
	}
	return goStats{heapStack: int64(m["go_memstats_heap_inuse_bytes"] + m["go_memstats_stack_inuse_bytes"]), goroutines: int64(m["go_goroutines"])}
}

// agentsOnGateway reads the number of connected agents from /readyz.
func (e *Env) agentsOnGateway(ctx context.Context) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.S.GatewayAdmin+"/readyz", nil)
	if err != nil {
		return 0, err
	}
	resp, err := e.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, f := range strings.Fields(string(b)) {
		if v, ok := strings.CutPrefix(f, "agents="); ok {
			return strconv.Atoi(v)
		}
	}
	return 0, fmt.Errorf("readyz %q has no agents=", strings.TrimSpace(string(b)))
}

// gatewayTLS trusts the stack's CA, as the agent does.
func (e *Env) gatewayTLS() (*tls.Config, error) {
	pem, err := os.ReadFile(e.S.CAFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no certificate", e.S.CAFile)
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// progressWriter turns the stack's progress lines into progress calls.
type progressWriter func(string, ...any)

func (p progressWriter) Write(b []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		p("%s", line)
	}
	return len(b), nil
}
