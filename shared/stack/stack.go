// Package stack runs the whole platform on this machine, every component a
// real process talking over real loopback sockets: PostgreSQL, the control
// plane, the gateway, and per cluster a real kube-apiserver (with etcd), an
// ingress controller stand-in and the agent binary with its documented RBAC.
//
// The demo (`make demo`), the end-to-end suite (e2e/) and the load tests
// start it the same way. Tests use shared/stack/stacktest, which adds the
// skip-or-fail policy and cleanup.
//
// Layout of a running stack:
//
//	control plane  http://127.0.0.1:P        (plain HTTP on loopback)
//	gateway        http://127.0.0.1:P, https://127.0.0.1:P (a private CA: Stack.CAFile)
//	gateway admin  http://127.0.0.1:P/readyz, /metrics
//	agent          dials wss://127.0.0.1:P/ws, verifying the gateway with the CA
//
// A Stack is safe for concurrent use once Start has returned.
package stack

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/testenv/balancer"
	"github.com/pipeops/tunnel/shared/testenv/netbed"
	"github.com/pipeops/tunnel/shared/testenv/pgtest"
)

// Options configure Start. Zero values are sane defaults.
type Options struct {
	// Dir holds logs, certificates and kubeconfigs (required). The caller
	// owns it; Close leaves it, so logs can be read after a failure.
	Dir string
	// BinDir holds pipeops-controlplane, pipeops-gateway and pipeops-agent
	// (required; Build fills one).
	BinDir string
	// DatabaseURL is an existing, empty database to use. Empty: a local
	// PostgreSQL is found or started the way the tests do it (pgtest).
	DatabaseURL string
	// PrivatePostgres asks stacktest for a PostgreSQL of the stack's own
	// (DatabaseURL empty) rather than a database on the server tests
	// share: for tests that stop it (Stack.Postgres).
	PrivatePostgres bool
	// Progress receives one line per step; nil discards them.
	Progress io.Writer
	// ControlPlaneEnv and GatewayEnv add or override component variables
	// (for example ROUTE_TTL, REAPER_INTERVAL, LOG_LEVEL; a
	// KEY_ENCRYPTION_KEY_FILE of the caller's for a database whose keys
	// an earlier KEK sealed).
	ControlPlaneEnv map[string]string
	GatewayEnv      map[string]string
	// Gateways is how many gateways to run (0: one). With more, they share
	// the database and forward streams to each other (PEER_ADDR), and
	// GatewayHTTP and GatewayHTTPS are a TCP load balancer in front of
	// them (shared/testenv/balancer), which the agents dial too. Not with
	// Server.
	Gateways int
	// Server, when set, is the test bed host (shared/testenv/netbed) the
	// control plane and the gateway run on, each through ip netns exec,
	// listening on the host's own address. The Stack's URLs stay loopback
	// URLs of the caller's namespace, forwarded into the host with no link
	// in between; clusters on other hosts (ClusterOptions.Host) reach them
	// over their links at InBed's URLs. PostgreSQL must listen on a Unix
	// socket (as the tests' own does), which every namespace reaches.
	Server *netbed.Host
}

// K8sAPIDomain is the stack's K8S_API_DOMAIN: kubeconfigs reach each
// cluster at the gateway's address under the TLS server name
// {cluster id}.k8s.pipeops.test, for which the gateway's certificate has a
// wildcard name. Nothing resolves it: only the server name carries it.
const K8sAPIDomain = "k8s.pipeops.test"

// Stack is a running platform. Fields are read-only.
type Stack struct {
	DatabaseURL string
	// CAFile is the PEM CA that signed the gateway's certificate.
	CAFile string
	// KEKFile is the control plane's key-encryption key (0600, a fresh
	// random one per stack), which seals its signing keys.
	KEKFile string
	// EnvFile (0600) sets DATABASE_URL and KEY_ENCRYPTION_KEY_FILE for
	// running the control plane CLI by hand: (set -a; . EnvFile; ...). It
	// holds the database password, which is why it is a file and not
	// something printed.
	EnvFile string
	// ControlPlaneURL is the control plane's base URL.
	ControlPlaneURL string
	// GatewayHTTP and GatewayHTTPS are the gateway's public base URLs;
	// GatewayAdmin serves /readyz and /metrics.
	GatewayHTTP, GatewayHTTPS, GatewayAdmin string

	ControlPlane *Component
	Gateway      *Component
	// Gateways are every gateway (Gateway is the first), GatewayAdmins
	// their admin URLs and GatewayHTTPs their own plain HTTP URLs (behind
	// the balancer, when Options.Gateways is more than one).
	Gateways      []*Component
	GatewayAdmins []string
	GatewayHTTPs  []string

	// InBed are the URLs of the control plane and the gateway at
	// Options.Server's address, for agents and visitors on other hosts of
	// the test bed; empty without Options.Server.
	InBed struct{ ControlPlaneURL, GatewayHTTP, GatewayHTTPS string }

	opts     Options
	pg       *pgtest.Server
	mu       sync.Mutex
	clusters []*Cluster
	closers  []func()
}

// loopbackAddr reserves a free loopback port and returns host:port.
func loopbackAddr() (string, error) {
	p, err := testenv.FreePort()
	if err != nil {
		return "", err
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(p)), nil
}

// Start brings up PostgreSQL (unless Options.DatabaseURL is set), the
// control plane and the gateway. Clusters are added with AddCluster. On
// error everything started so far is stopped.
func Start(ctx context.Context, opts Options) (_ *Stack, err error) {
	if opts.Dir == "" || opts.BinDir == "" {
		return nil, errors.New("stack: Options.Dir and Options.BinDir are required")
	}
	for _, b := range []string{"pipeops-controlplane", "pipeops-gateway", "pipeops-agent"} {
		if _, err := os.Stat(filepath.Join(opts.BinDir, b)); err != nil {
			return nil, fmt.Errorf("stack: %s not built (run `make build`): %w", b, err)
		}
	}
	if err := os.MkdirAll(filepath.Join(opts.Dir, "logs"), 0o755); err != nil {
		return nil, err
	}
	s := &Stack{opts: opts}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()

	t0 := time.Now()
	s.DatabaseURL = opts.DatabaseURL
	if s.DatabaseURL == "" {
		pg, err := pgtest.StartServer()
		if err != nil {
			return nil, fmt.Errorf("postgres: %w", err)
		}
		s.pg = pg
		s.closers = append(s.closers, pg.Stop)
		if s.DatabaseURL, err = pg.CreateDatabase(ctx, "pipeops"); err != nil {
			return nil, err
		}
		s.progress("postgres     up in %s (%s)", since(t0), pg.Source())
	} else {
		s.progress("postgres     using DATABASE_URL")
	}

	if opts.Server != nil && opts.DatabaseURL != "" && !unixSocketURL(opts.DatabaseURL) {
		return nil, errors.New("stack: with Options.Server, PostgreSQL must be reached over a Unix socket (host=/dir), which every namespace shares")
	}
	names := []string{"127.0.0.1", "::1", "localhost", "*." + K8sAPIDomain}
	if opts.Server != nil {
		names = append(names, opts.Server.Addr.String())
	}
	var caFile, certFile, keyFile string
	if caFile, certFile, keyFile, err = writeCertificates(opts.Dir, names); err != nil {
		return nil, fmt.Errorf("certificates: %w", err)
	}
	s.CAFile = caFile
	if s.KEKFile, err = writeKEK(opts.Dir); err != nil {
		return nil, fmt.Errorf("key-encryption key: %w", err)
	}

	// The addresses the components listen on (listen) and where this
	// process reaches them (here): the same on loopback; on a bed host, the
	// host's address, forwarded from a loopback port of the same number.
	var listen, here [4]string
	for i := range listen {
		if opts.Server == nil {
			if here[i], err = loopbackAddr(); err != nil {
				return nil, err
			}
			listen[i] = here[i]
			continue
		}
		if here[i], listen[i], err = s.forwardInto(opts.Server); err != nil {
			return nil, err
		}
	}
	cpAddr, gwHTTP, gwHTTPS, gwAdmin := listen[0], listen[1], listen[2], listen[3]
	s.ControlPlaneURL = "http://" + here[0]
	s.GatewayHTTP, s.GatewayHTTPS, s.GatewayAdmin = "http://"+here[1], "https://"+here[2], "http://"+here[3]
	gatewayHosts := "127.0.0.1,localhost"
	wsURL := "wss://" + here[2] + "/ws"
	if opts.Server != nil {
		s.InBed.ControlPlaneURL, s.InBed.GatewayHTTP, s.InBed.GatewayHTTPS = "http://"+cpAddr, "http://"+gwHTTP, "https://"+gwHTTPS
		gatewayHosts += "," + opts.Server.Addr.String()
		wsURL = "wss://" + gwHTTPS + "/ws"
	}

	cpEnv := map[string]string{
		"DATABASE_URL": s.DatabaseURL,
		"LISTEN_ADDR":  cpAddr,
		// Any free port: stacks run side by side in the tests.
		"ADMIN_ADDR":       "127.0.0.1:0",
		"GATEWAY_WS_URL":   wsURL,
		"GATEWAY_URL":      s.GatewayHTTPS, // kubeconfigs, for kubectl run by this process
		"GATEWAY_CA_FILE":  caFile,
		"K8S_API_DOMAIN":   K8sAPIDomain,
		"API_URL":          s.ControlPlaneURL,
		"SHUTDOWN_TIMEOUT": "5s",
		// A file rather than KEY_ENCRYPTION_KEY: the environment of a
		// process is easier to leak (crash reports, /proc to root).
		"KEY_ENCRYPTION_KEY_FILE": s.KEKFile,
	}
	for k, v := range opts.ControlPlaneEnv {
		cpEnv[k] = v
	}
	s.EnvFile = filepath.Join(opts.Dir, "controlplane.env")
	quote := func(v string) string { return "'" + strings.ReplaceAll(v, "'", `'\''`) + "'" }
	envFile := "DATABASE_URL=" + quote(cpEnv["DATABASE_URL"]) + "\nKEY_ENCRYPTION_KEY_FILE=" + quote(cpEnv["KEY_ENCRYPTION_KEY_FILE"]) + "\n"
	_ = os.Remove(s.EnvFile) // WriteFile keeps the mode of a file left by an earlier run
	if err := os.WriteFile(s.EnvFile, []byte(envFile), 0o600); err != nil {
		return nil, err
	}
	s.ControlPlane = &Component{Name: "controlplane", LogPath: filepath.Join(opts.Dir, "logs", "controlplane.log"),
		bin: filepath.Join(opts.BinDir, "pipeops-controlplane"), args: []string{"serve"}, env: cpEnv, host: opts.Server,
		ready: httpReady(s.ControlPlaneURL + "/readyz")}
	t0 = time.Now()
	if err := s.ControlPlane.Start(); err != nil {
		return nil, err
	}
	s.closers = append(s.closers, func() { s.ControlPlane.Stop(10 * time.Second) })
	s.progress("controlplane up in %s at %s", since(t0), s.ControlPlaneURL)

	gwEnv := map[string]string{
		"DATABASE_URL":     s.DatabaseURL,
		"CONTROLPLANE_URL": "http://" + cpAddr,
		"HTTP_ADDR":        gwHTTP,
		"HTTPS_ADDR":       gwHTTPS,
		"ADMIN_ADDR":       gwAdmin,
		"TLS_CERT_FILE":    certFile,
		"TLS_KEY_FILE":     keyFile,
		"GATEWAY_HOSTS":    gatewayHosts,
		"K8S_API_DOMAIN":   K8sAPIDomain,
		"SHUTDOWN_TIMEOUT": "5s",
	}
	for k, v := range opts.GatewayEnv {
		gwEnv[k] = v
	}
	if opts.Gateways > 1 {
		if opts.Server != nil {
			return nil, errors.New("stack: Options.Gateways and Options.Server do not go together")
		}
		if err := s.startGateways(opts.Gateways, gwEnv); err != nil {
			return nil, err
		}
		return s, nil
	}
	s.Gateway = &Component{Name: "gateway", LogPath: filepath.Join(opts.Dir, "logs", "gateway.log"),
		bin: filepath.Join(opts.BinDir, "pipeops-gateway"), env: gwEnv, host: opts.Server, ready: httpReady(s.GatewayAdmin + "/readyz")}
	t0 = time.Now()
	if err := s.Gateway.Start(); err != nil {
		return nil, err
	}
	s.closers = append(s.closers, func() { s.Gateway.Stop(10 * time.Second) })
	s.Gateways, s.GatewayAdmins, s.GatewayHTTPs = []*Component{s.Gateway}, []string{s.GatewayAdmin}, []string{s.GatewayHTTP}
	s.progress("gateway      up in %s at %s and %s", since(t0), s.GatewayHTTP, s.GatewayHTTPS)
	return s, nil
}

// startGateways starts n gateways on ports of their own, with env, and
// puts load balancers on the stack's public addresses in front of them.
func (s *Stack) startGateways(n int, env map[string]string) error {
	secret, err := writeRandom(s.opts.Dir, "peer-secret", hex.EncodeToString)
	if err != nil {
		return fmt.Errorf("peer secret: %w", err)
	}
	publicHTTP, publicHTTPS := strings.TrimPrefix(s.GatewayHTTP, "http://"), strings.TrimPrefix(s.GatewayHTTPS, "https://")
	var httpAddrs, httpsAddrs []string
	for i := range n {
		var addrs [4]string
		for j := range addrs {
			if addrs[j], err = loopbackAddr(); err != nil {
				return err
			}
		}
		e := maps.Clone(env)
		id := fmt.Sprintf("gw-%d", i)
		e["GATEWAY_ID"], e["HTTP_ADDR"], e["HTTPS_ADDR"], e["ADMIN_ADDR"] = id, addrs[0], addrs[1], addrs[2]
		e["PEER_ADDR"], e["PEER_URL"], e["PEER_SECRET_FILE"] = addrs[3], "http://"+addrs[3], secret
		admin := "http://" + addrs[2]
		c := &Component{Name: "gateway-" + id, LogPath: filepath.Join(s.opts.Dir, "logs", "gateway-"+id+".log"),
			bin: filepath.Join(s.opts.BinDir, "pipeops-gateway"), env: e, ready: httpReady(admin + "/readyz")}
		t0 := time.Now()
		if err := c.Start(); err != nil {
			return err
		}
		s.closers = append(s.closers, func() { c.Stop(10 * time.Second) })
		s.Gateways, s.GatewayAdmins = append(s.Gateways, c), append(s.GatewayAdmins, admin)
		s.GatewayHTTPs = append(s.GatewayHTTPs, "http://"+addrs[0])
		httpAddrs, httpsAddrs = append(httpAddrs, addrs[0]), append(httpsAddrs, addrs[1])
		s.progress("gateway %s up in %s at %s and %s", id, since(t0), addrs[0], addrs[1])
	}
	s.Gateway, s.GatewayAdmin = s.Gateways[0], s.GatewayAdmins[0]
	for _, lb := range []struct {
		addr     string
		backends []string
	}{{publicHTTP, httpAddrs}, {publicHTTPS, httpsAddrs}} {
		b, err := balancer.Start(lb.addr, lb.backends)
		if err != nil {
			return fmt.Errorf("load balancer: %w", err)
		}
		s.closers = append(s.closers, b.Close)
	}
	s.progress("balancer     at %s and %s, round robin over %d gateways", s.GatewayHTTP, s.GatewayHTTPS, n)
	return nil
}

// writeRandom writes 32 fresh random bytes, encoded, into dir/name,
// readable by its owner only.
func writeRandom(dir, name string, encode func([]byte) string) (string, error) {
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", err
	}
	path := filepath.Join(dir, name)
	// A file left by an earlier run in the same directory goes: the
	// database is a fresh one, and O_EXCL makes sure the new file is ours,
	// with our mode.
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return "", err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", err
	}
	_, err = f.WriteString(encode(raw) + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return path, err
}

// Postgres is the PostgreSQL server the stack started, or nil when it was
// given DatabaseURL. Its Halt and Resume make a database outage.
func (s *Stack) Postgres() *pgtest.Server { return s.pg }

// unixSocketURL reports whether a postgres:// URL names a Unix socket
// directory as its host.
func unixSocketURL(raw string) bool {
	u, err := url.Parse(raw)
	return err == nil && u.Hostname() == "" && strings.HasPrefix(u.Query().Get("host"), "/")
}

// forwardInto reserves a loopback port here and forwards it to the same
// port at h's address: it returns the address to reach (here) and the one
// to listen on in h. A fresh namespace has every port free, so the number
// that was free here is free there.
func (s *Stack) forwardInto(h *netbed.Host) (here, there string, err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", "", err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	there = net.JoinHostPort(h.Addr.String(), strconv.Itoa(port))
	f := netbed.Forward(ln, func(ctx context.Context) (net.Conn, error) { return h.DialContext(ctx, "tcp", there) })
	s.closers = append(s.closers, func() { _ = f.Close() })
	return ln.Addr().String(), there, nil
}

// writeKEK writes a fresh key-encryption key into dir, as an operator
// would (`openssl rand -base64 32`), readable by its owner only.
func writeKEK(dir string) (string, error) {
	return writeRandom(dir, "controlplane.kek", base64.StdEncoding.EncodeToString)
}

// Close stops every cluster and component, newest first. Safe to call more
// than once.
func (s *Stack) Close() {
	s.mu.Lock()
	clusters := s.clusters
	s.clusters = nil
	s.mu.Unlock()
	for i := len(clusters) - 1; i >= 0; i-- {
		clusters[i].close()
	}
	for i := len(s.closers) - 1; i >= 0; i-- {
		s.closers[i]()
	}
	s.closers = nil
}

func (s *Stack) progress(format string, args ...any) {
	if s.opts.Progress != nil {
		fmt.Fprintf(s.opts.Progress, format+"\n", args...)
	}
}

func since(t time.Time) time.Duration { return time.Since(t).Round(10 * time.Millisecond) }

// CLI runs `pipeops-controlplane ARGS...` against the stack's database, as an
// operator would, and returns its standard output.
func (s *Stack) CLI(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(s.opts.BinDir, "pipeops-controlplane"), args...)
	cmd.Env = s.ControlPlane.environ()
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("pipeops-controlplane %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errOut.String()))
	}
	return out.String(), nil
}

// CreatedCluster is what `cluster create --json` prints.
type CreatedCluster struct {
	ID         string `json:"id"`
	Name       string `json:"name"`
	AgentToken string `json:"agent_token"`
}

// CreateCluster registers a cluster through the CLI and returns its id and
// agent token.
func (s *Stack) CreateCluster(ctx context.Context, name string) (CreatedCluster, error) {
	out, err := s.CLI(ctx, "cluster", "create", name, "--json")
	if err != nil {
		return CreatedCluster{}, err
	}
	var c CreatedCluster
	if err := json.Unmarshal([]byte(out), &c); err != nil {
		return CreatedCluster{}, fmt.Errorf("cluster create output %q: %w", out, err)
	}
	return c, nil
}

// Token mints a token through the CLI: kind is agent, user or admin;
// clusters are names or ids. A user token names KubeUser.
func (s *Stack) Token(ctx context.Context, kind string, ttl time.Duration, clusters ...string) (token, id string, err error) {
	args := []string{"token", "create", "--kind", kind, "--json"}
	if kind == "user" {
		args = append(args, "--user", KubeUser)
	}
	if ttl > 0 {
		args = append(args, "--ttl", ttl.String())
	}
	for _, c := range clusters {
		args = append(args, "--cluster", c)
	}
	out, err := s.CLI(ctx, args...)
	if err != nil {
		return "", "", err
	}
	var res struct{ Token, ID string }
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		return "", "", fmt.Errorf("token create output %q: %w", out, err)
	}
	return res.Token, res.ID, nil
}

// RevokeToken revokes a token by id through the CLI.
func (s *Stack) RevokeToken(ctx context.Context, id string) error {
	_, err := s.CLI(ctx, "token", "revoke", id)
	return err
}

// GatewayMetric sums the samples of the gateway's metric name (from its
// admin /metrics) whose labels contain every one of labels, written as in
// the exposition format (`mode="direct"`). With several gateways, it is
// the first one's.
func (s *Stack) GatewayMetric(ctx context.Context, name string, labels ...string) (float64, error) {
	return s.GatewayMetricAt(ctx, 0, name, labels...)
}

// GatewayMetricAt is GatewayMetric of gateway i (of Gateways).
func (s *Stack) GatewayMetricAt(ctx context.Context, i int, name string, labels ...string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.GatewayAdmins[i]+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("gateway metrics: %w", err)
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
lines:
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		for _, l := range labels {
			if !strings.Contains(line, l) {
				continue lines
			}
		}
		if v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64); err == nil {
			sum += v
		}
	}
	return sum, sc.Err()
}
