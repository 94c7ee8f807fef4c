package server

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pipeops/tunnel/agent/tunnelclient"
	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/controlplane/cptest"
	"github.com/pipeops/tunnel/controlplane/tokens"
	"github.com/pipeops/tunnel/shared/auth"
	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/testenv/tunneltest"
	"github.com/pipeops/tunnel/shared/tunnel"
)

// runningGateway is a gateway of a group started by startPeer.
type runningGateway struct {
	*Gateway
	cfg  Config
	env  map[string]string
	stop func() // drains and waits for Run; idempotent
}

// peerEnv is the environment of a gateway of a group, named id, with ports
// of its own; runPeer starts it (again, on the same ports, for a restart).
func peerEnv(t *testing.T, id string, base map[string]string) map[string]string {
	peer := freeAddr(t)
	env := map[string]string{"HTTP_ADDR": freeAddr(t), "ADMIN_ADDR": freeAddr(t), "GATEWAY_HOSTS": "gw.local,127.0.0.1",
		"GATEWAY_ID": id, "PEER_ADDR": peer, "PEER_URL": "http://" + peer, "SHUTDOWN_TIMEOUT": "10s"}
	for k, v := range base {
		env[k] = v
	}
	return env
}

// startPeer starts a gateway with a peer listener, named id, on the shared
// database; it stops when the test ends.
func startPeer(t *testing.T, id string, base map[string]string) *runningGateway {
	t.Helper()
	return runPeer(t, peerEnv(t, id, base))
}

func runPeer(t *testing.T, env map[string]string) *runningGateway {
	t.Helper()
	cfg, err := LoadConfig(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	id := cfg.GatewayID
	g, err := New(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)).With("gateway", id))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	var stopped bool
	rg := &runningGateway{Gateway: g, cfg: cfg, env: env, stop: func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("gateway %s: Run: %v", id, err)
		}
	}}
	t.Cleanup(rg.stop)
	waitFor(t, "gateway "+id+" recorded", 10*time.Second, func() bool { return g.peers.Loaded() })
	return rg
}

// peerFixture is a group of gateways' shared parts: the database with one
// cluster and its agent token, the settings every gateway of the group
// gets, and the app the cluster's agent connects every stream to.
type peerFixture struct {
	cp      *cptest.ControlPlane
	cluster *controlplane.Cluster
	token   string
	base    map[string]string
	app     *httptest.Server
}

// newPeerFixture makes the database, the cluster, a shared peer secret and
// app's server (closed when the test ends), and checks for leaks after.
func newPeerFixture(t *testing.T, cluster string, app http.Handler) *peerFixture {
	t.Helper()
	ctx := context.Background()
	f := &peerFixture{cp: cptest.Store(t)}
	testenv.LeakCheck(t)
	var err error
	if f.cluster, err = f.cp.DB.CreateCluster(ctx, cluster); err != nil {
		t.Fatal(err)
	}
	if f.token, _, err = f.cp.Issuer.Issue(ctx, tokens.Request{Kind: auth.KindAgent, ClusterUUID: f.cluster.UUID}); err != nil {
		t.Fatal(err)
	}
	f.app = httptest.NewServer(app)
	t.Cleanup(f.app.Close)
	secret := filepath.Join(t.TempDir(), "peer-secret")
	if err := os.WriteFile(secret, []byte(strings.Repeat("s3cr3t", 8)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f.base = map[string]string{"DATABASE_URL": f.cp.DBURL, "CONTROLPLANE_URL": jwksServer(t, f.cp.Issuer), "PEER_SECRET_FILE": secret}
	return f
}

// route routes shop.example.com to the cluster.
func (f *peerFixture) route(t *testing.T) {
	t.Helper()
	err := f.cp.DB.SyncRoutes(context.Background(), controlplane.RouteSync{ClusterUUID: f.cluster.UUID, RoutingMode: "tunnel",
		IngressController: &controlplane.IngressController{Name: "ingress-nginx-controller", Namespace: "ingress-nginx", Port: 80},
		Routes:            []controlplane.Route{{Hostname: "shop.example.com", Path: "/", PathType: "Prefix", Namespace: "shop", ServiceName: "web", ServicePort: 80}}})
	if err != nil {
		t.Fatal(err)
	}
}

// agent starts an agent of the cluster at gatewayURL whose streams all go
// to the app; edit adjusts its settings.
func (f *peerFixture) agent(t *testing.T, gatewayURL string, edit func(*tunnelclient.Config)) *tunneltest.Agent {
	cfg := tunnelclient.Config{
		GatewayURL: gatewayURL, Token: f.token, ClusterUUID: f.cluster.UUID, AgentVersion: "test",
		Dialer: tunnelclient.DialerFunc(func(ctx context.Context, h tunnel.StreamHeader) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", strings.TrimPrefix(f.app.URL, "http://"))
		}),
	}
	if edit != nil {
		edit(&cfg)
	}
	return tunneltest.StartAgent(t, cfg)
}

func (g *runningGateway) get(t *testing.T, hc *http.Client, host, path string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+g.cfg.HTTPAddr+path, nil)
	req.Host = host
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("GET %s%s at %s: %v", host, path, g.cfg.GatewayID, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s%s at %s: reading the body: %v", host, path, g.cfg.GatewayID, err)
	}
	return resp.StatusCode, b
}

// TestAnyGatewayServes runs three gateways on one database with the
// cluster's agent connected to one of them: every gateway serves the
// cluster's routes (small answers, a large download, an upload, a protocol
// upgrade), an agent that leaves is noticed by all, one that comes back on
// another gateway is found there, and a gateway that stops is no longer
// forwarded to. A peer request with a wrong signature is refused.
func TestAnyGatewayServes(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<19) // 8 MiB
	f := newPeerFixture(t, "scaled", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/big":
			w.Write(big)
		case "/echo":
			h := sha256.New()
			n, _ := io.Copy(h, r.Body)
			fmt.Fprintf(w, "%d %x", n, h.Sum(nil))
		case "/upgrade":
			w.Header().Set("Connection", "Upgrade")
			w.Header().Set("Upgrade", "echo")
			w.WriteHeader(http.StatusSwitchingProtocols)
			conn, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			defer conn.Close()
			io.Copy(conn, brw) // echo until the client half-closes
		default:
			fmt.Fprintf(w, "app %s", r.URL.Path)
		}
	}))
	cluster := f.cluster
	gws := map[string]*runningGateway{}
	for _, id := range []string{"gw-a", "gw-b", "gw-c"} {
		gws[id] = startPeer(t, id, f.base)
	}
	a, b, c := gws["gw-a"], gws["gw-b"], gws["gw-c"]

	startAgent := func(on *runningGateway) *tunneltest.Agent { return f.agent(t, "http://"+on.cfg.HTTPAddr, nil) }
	agent := startAgent(b)
	f.route(t)
	hc := &http.Client{Transport: &http.Transport{}, Timeout: 20 * time.Second}
	defer hc.CloseIdleConnections()
	for _, g := range []*runningGateway{a, b, c} {
		waitFor(t, g.cfg.GatewayID+" serving the cluster", 10*time.Second, func() bool {
			code, _ := g.get(t, hc, "shop.example.com", "/ready")
			return code == 200
		})
	}
	if r, ok := a.sessions.Reach(cluster.UUID); !ok || r.Local != nil || r.Gateway != "gw-b" {
		t.Fatalf("gw-a's reach of the cluster: %+v %v, want through gw-b", r, ok)
	}

	for _, g := range []*runningGateway{a, c} {
		if code, body := g.get(t, hc, "shop.example.com", "/cart"); code != 200 || string(body) != "app /cart" {
			t.Errorf("small request at %s: %d %q", g.cfg.GatewayID, code, body)
		}
		if code, body := g.get(t, hc, "shop.example.com", "/big"); code != 200 || !bytes.Equal(body, big) {
			t.Errorf("download at %s: %d, %d bytes, equal %v", g.cfg.GatewayID, code, len(body), bytes.Equal(body, big))
		}
		req, _ := http.NewRequest("POST", "http://"+g.cfg.HTTPAddr+"/echo", bytes.NewReader(big))
		req.Host = "shop.example.com"
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := fmt.Sprintf("%d %x", len(big), sha256.Sum256(big)); string(got) != want {
			t.Errorf("upload at %s: %q, want %q", g.cfg.GatewayID, got, want)
		}
	}
	upgradeThrough(t, a, "shop.example.com")

	metrics := func(g *runningGateway) string {
		resp, err := hc.Get("http://" + g.cfg.AdminAddr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return string(body)
	}
	if m := metrics(a); !strings.Contains(m, `pipeops_gateway_peer_streams_forwarded_total{result="ok"}`) ||
		strings.Contains(m, `pipeops_gateway_peer_streams_forwarded_total{result="ok"} 0`) {
		t.Errorf("gw-a counted no forwarded stream")
	}
	if m := metrics(b); strings.Contains(m, `pipeops_gateway_peer_streams_served_total{status="101"} 0`) {
		t.Errorf("gw-b counted no served stream")
	}

	// A request signed with another secret is refused, and says why.
	bad, _ := http.NewRequest("GET", "http://"+b.cfg.PeerAddr+"/peer/v1/stream", nil)
	for k, v := range map[string]string{"Connection": "Upgrade", "Upgrade": "pipeops-peer/1", "Pipeops-Peer-From": "intruder",
		"Pipeops-Peer-Cluster": cluster.UUID, "Pipeops-Peer-Target": "AQEAUAAD", "Pipeops-Peer-Time": fmt.Sprint(time.Now().Unix()),
		"Pipeops-Peer-Auth": strings.Repeat("0", 64)} {
		bad.Header.Set(k, v)
	}
	resp, err := hc.Do(bad)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("peer request with a bad signature: %s, want 401", resp.Status)
	}

	// The agent leaves: every gateway says so at once.
	agent.Stop()
	for _, g := range []*runningGateway{a, b, c} {
		waitFor(t, g.cfg.GatewayID+" noticing the agent left", 2*time.Second, func() bool {
			code, _ := g.get(t, hc, "shop.example.com", "/gone")
			return code == http.StatusServiceUnavailable
		})
	}
	// It comes back on gw-c: gw-a and gw-b forward there.
	startAgent(c)
	for _, g := range []*runningGateway{a, b} {
		waitFor(t, g.cfg.GatewayID+" finding the agent on gw-c", 5*time.Second, func() bool {
			code, _ := g.get(t, hc, "shop.example.com", "/back")
			return code == 200
		})
	}
	// gw-c drains: the others stop forwarding to it before it has gone.
	hc.CloseIdleConnections()
	c.stop()
	if r, ok := a.sessions.Reach(cluster.UUID); ok {
		t.Errorf("after gw-c stopped, gw-a still reaches the cluster: %+v", r)
	}
	if code, _ := a.get(t, hc, "shop.example.com", "/after"); code != http.StatusServiceUnavailable {
		t.Errorf("after gw-c stopped: %d, want 503", code)
	}
}

// upgradeThrough opens a protocol upgrade at gateway g and checks that
// bytes go both ways and a half-close passes.
func upgradeThrough(t *testing.T, g *runningGateway, host string) {
	t.Helper()
	conn, err := net.Dial("tcp", g.cfg.HTTPAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "GET /upgrade HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n", host)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade at %s: %s", g.cfg.GatewayID, resp.Status)
	}
	msg := strings.Repeat("ping through the peer link ", 1000)
	if _, err := io.WriteString(conn, msg); err != nil {
		t.Fatal(err)
	}
	conn.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(br)
	if err != nil || string(got) != msg {
		t.Fatalf("upgraded echo at %s: %d bytes, err %v; want %d bytes back", g.cfg.GatewayID, len(got), err, len(msg))
	}
}
