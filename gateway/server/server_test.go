package server

import (
	"context"
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

	dto "github.com/prometheus/client_model/go"

	"github.com/pipeops/tunnel/agent/tunnelclient"
	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/controlplane/cptest"
	"github.com/pipeops/tunnel/controlplane/tokens"
	"github.com/pipeops/tunnel/shared/auth"
	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/testenv/pgtest"
	"github.com/pipeops/tunnel/shared/testenv/tunneltest"
	"github.com/pipeops/tunnel/shared/tunnel"
)

func TestMain(m *testing.M) { testenv.Main(m, pgtest.Stop) }

func freeAddr(t *testing.T) string {
	p, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", p)
}

// jwksServer serves the issuer's JWKS, as the control plane does.
func jwksServer(t *testing.T, iss *tokens.Issuer) string {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := iss.JWKS(r.Context())
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		w.Write(b)
	}))
	t.Cleanup(s.Close)
	return s.URL
}

func waitFor(t *testing.T, what string, d time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestGatewayEndToEnd runs the gateway as it runs in production (its own
// listeners, the real database, keys from a JWKS endpoint) with a real agent
// tunnel: routes synced into the database go live through NOTIFY, traffic
// flows, heartbeats land in the database, a revoked agent token's session
// is closed, and shutdown drains.
func TestGatewayEndToEnd(t *testing.T) {
	ctx := context.Background()
	cp := cptest.Store(t) // first: the shared server's goroutines are not this test's
	testenv.LeakCheck(t)
	db, dbURL, iss := cp.DB, cp.DBURL, cp.Issuer
	cluster, err := db.CreateCluster(ctx, "edge")
	if err != nil {
		t.Fatal(err)
	}
	agentTok, agentRec, err := iss.Issue(ctx, tokens.Request{Kind: auth.KindAgent, ClusterUUID: cluster.UUID})
	if err != nil {
		t.Fatal(err)
	}

	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "app saw host=%s path=%s", r.Host, r.URL.Path)
	}))
	defer app.Close()

	// Built once: LoadConfig reads every variable, and a map made per read
	// would start a JWKS server and pick fresh ports each time.
	env := map[string]string{
		"DATABASE_URL": dbURL, "CONTROLPLANE_URL": jwksServer(t, iss),
		"HTTP_ADDR": freeAddr(t), "ADMIN_ADDR": freeAddr(t), "GATEWAY_HOSTS": "gw.local,127.0.0.1",
		"REVOCATION_CHECK_INTERVAL": "200ms", "SHUTDOWN_TIMEOUT": "5s",
	}
	cfg, err := LoadConfig(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	g, err := New(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	g.recorder.FlushInterval = 100 * time.Millisecond
	runCtx, stop := context.WithCancel(ctx)
	runErr := make(chan error, 1)
	go func() { runErr <- g.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-runErr; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	hc := &http.Client{Transport: &http.Transport{}}
	defer hc.CloseIdleConnections()
	admin := "http://" + cfg.AdminAddr
	waitFor(t, "readiness", 10*time.Second, func() bool {
		resp, err := hc.Get(admin + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})

	// A bad agent token is refused on /ws.
	req, _ := http.NewRequest("GET", "http://"+cfg.HTTPAddr+"/ws?supports_yamux=true", nil)
	req.Host = "gw.local"
	req.Header.Set("Authorization", "Bearer nope")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Fatalf("bad agent token on /ws: %s, want 401", resp.Status)
	}

	agent := tunneltest.StartAgent(t, tunnelclient.Config{
		GatewayURL: "http://" + cfg.HTTPAddr, Token: agentTok, ClusterUUID: cluster.UUID, AgentVersion: "test",
		Dialer: tunnelclient.DialerFunc(func(ctx context.Context, h tunnel.StreamHeader) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", strings.TrimPrefix(app.URL, "http://"))
		}),
		BackoffInitial: time.Hour, BackoffMax: time.Hour, // one connection: the revocation must keep it out
	})
	defer agent.Stop() // before the gateway stops
	client := agent.Client
	waitFor(t, "the agent's session", 10*time.Second, func() bool { _, ok := g.sessions.Session(cluster.UUID); return ok })

	get := func(host, path string) (int, string) {
		req, _ := http.NewRequest("GET", "http://"+cfg.HTTPAddr+path, nil)
		req.Host = host
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("shop.example.com", "/"); code != 404 {
		t.Fatalf("before the route exists: %d, want 404", code)
	}
	start := time.Now()
	err = db.SyncRoutes(ctx, controlplane.RouteSync{ClusterUUID: cluster.UUID, RoutingMode: "tunnel",
		IngressController: &controlplane.IngressController{Name: "ingress-nginx-controller", Namespace: "ingress-nginx", Port: 80},
		Routes:            []controlplane.Route{{Hostname: "shop.example.com", Path: "/", PathType: "Prefix", Namespace: "shop", ServiceName: "web", ServicePort: 80}}})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the synced route", time.Second, func() bool { code, _ := get("shop.example.com", "/cart"); return code == 200 })
	t.Logf("route live %s after the sync", time.Since(start).Round(time.Millisecond))
	if code, body := get("shop.example.com", "/cart"); code != 200 || body != "app saw host=shop.example.com path=/cart" {
		t.Fatalf("through the tunnel: %d %q", code, body)
	}

	// The agent's heartbeat reaches the database through the gateway.
	hb, _ := tunnel.NewMessage(tunnel.TypeHeartbeat, tunnel.Heartbeat{ClusterID: cluster.UUID, Status: tunnel.StatusHealthy,
		Metadata: tunnel.HeartbeatMetadata{K8sNodes: 2, K8sPods: 9, CPUUsage: tunnel.UsageUnavailable, MemoryUsage: tunnel.Percent(40)}})
	if err := client.Send(hb); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the heartbeat in the database", 5*time.Second, func() bool {
		c, err := db.Cluster(ctx, cluster.UUID)
		return err == nil && c.Status == controlplane.ClusterConnected && c.Metadata["k8s_pods"] == float64(9)
	})

	// The Kubernetes path: a revoked or expired user token gets 401.
	userTok, userRec, _ := iss.Issue(ctx, tokens.Request{Kind: auth.KindUser, Clusters: []string{cluster.UUID}})
	if err := db.RevokeToken(ctx, userRec.ID, time.Now()); err != nil {
		t.Fatal(err)
	}
	iss.SetClock(func() time.Time { return time.Now().Add(-2 * time.Hour) })
	expiredTok, _, _ := iss.Issue(ctx, tokens.Request{Kind: auth.KindUser, Clusters: []string{cluster.UUID}, TTL: time.Hour})
	iss.SetClock(time.Now)
	// This gateway has no TLS listener, so the requests are handed to its
	// handler as if they had come over TLS.
	for name, tok := range map[string]string{"revoked": userTok, "expired": expiredTok} {
		req := httptest.NewRequest("GET", "https://gw.local/k8s/"+cluster.UUID+"/api", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		rec := httptest.NewRecorder()
		g.Handler().ServeHTTP(rec, req)
		if rec.Code != 401 {
			t.Errorf("%s user token on /k8s: %d, want 401", name, rec.Code)
		}
	}

	// Over plain HTTP the Kubernetes API is refused before the token is
	// read (a valid one, so only the transport can be the reason).
	goodTok, _, _ := iss.Issue(ctx, tokens.Request{Kind: auth.KindUser, Clusters: []string{cluster.UUID}})
	plain, _ := http.NewRequest("GET", "http://"+cfg.HTTPAddr+"/k8s/"+cluster.UUID+"/api", nil)
	plain.Host = "gw.local"
	plain.Header.Set("Authorization", "Bearer "+goodTok)
	presp, err := hc.Do(plain)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(presp.Body)
	presp.Body.Close()
	if presp.StatusCode != 403 || !strings.Contains(string(body), "only over HTTPS") || !strings.Contains(string(body), "revoke it") {
		t.Errorf("plain HTTP /k8s: %d %s, want 403 telling to use HTTPS and revoke the token", presp.StatusCode, body)
	}
	var m dto.Metric
	_ = g.plainK8s.Write(&m)
	if got := m.GetCounter().GetValue(); got != 1 {
		t.Errorf("plain HTTP refusals counted %v, want 1", got)
	}

	// Revoking the agent's token closes its live session.
	if err := db.RevokeToken(ctx, agentRec.ID, time.Now()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the revoked session to close", 5*time.Second, func() bool { _, ok := g.sessions.Session(cluster.UUID); return !ok })
	if code, _ := get("shop.example.com", "/"); code != 503 {
		t.Fatalf("route of a cluster without agent: %d, want 503", code)
	}
	// The revoked token, and an expired one, cannot open a new session.
	iss.SetClock(func() time.Time { return time.Now().Add(-2 * time.Hour) })
	expiredAgent, _, _ := iss.Issue(ctx, tokens.Request{Kind: auth.KindAgent, ClusterUUID: cluster.UUID, TTL: time.Hour})
	iss.SetClock(time.Now)
	for name, tok := range map[string]string{"revoked": agentTok, "expired": expiredAgent} {
		req, _ := http.NewRequest("GET", "http://"+cfg.HTTPAddr+"/ws?supports_yamux=true", nil)
		req.Host = "gw.local"
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 {
			t.Errorf("%s agent token on /ws: %d, want 401", name, resp.StatusCode)
		}
	}
	resp, err = hc.Get(admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, m := range []string{"pipeops_gateway_tunnel_sessions_total 1", "pipeops_gateway_routes 1", `pipeops_gateway_proxy_requests_total{mode="tunnel",status="200"}`} {
		if !strings.Contains(string(b), m) {
			t.Errorf("metrics lack %q", m)
		}
	}
}

func TestLoadConfig(t *testing.T) {
	base := map[string]string{"DATABASE_URL": "postgres://x/y", "CONTROLPLANE_URL": "http://cp:8080"}
	c, err := LoadConfig(func(k string) string { return base[k] })
	if err != nil {
		t.Fatal(err)
	}
	if c.HTTPAddr != ":8080" || c.AdminAddr != "127.0.0.1:9090" || c.StreamWindow != 4<<20 || c.AgentWindow != 16<<20 || c.HeaderTimeout != time.Minute {
		t.Fatalf("defaults: %+v", c)
	}
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk.pem")
	os.WriteFile(junk, []byte("not a certificate"), 0o600)
	writePair(t, dir, "ca", []string{"ca.example.com"}) // a self-signed certificate serves as a root
	caFile := filepath.Join(dir, "ca.crt")
	peerSecret, shortSecret := filepath.Join(dir, "peer"), filepath.Join(dir, "short")
	os.WriteFile(peerSecret, []byte(strings.Repeat("p", 64)), 0o600)
	os.WriteFile(shortSecret, []byte("short"), 0o600)
	acme := map[string]string{"ACME": "true", "HTTPS_ADDR": ":8443"}
	with := func(maps ...map[string]string) map[string]string {
		env := map[string]string{}
		for _, m := range append([]map[string]string{base}, maps...) {
			for k, v := range m {
				env[k] = v
			}
		}
		return env
	}
	for _, tc := range []struct {
		want string // the variable the error must name
		env  map[string]string
	}{
		{"DATABASE_URL", with(map[string]string{"DATABASE_URL": ""})},
		{"CONTROLPLANE_URL", with(map[string]string{"CONTROLPLANE_URL": "cp:8080"})},
		{"HTTPS_ADDR", with(map[string]string{"HTTPS_ADDR": ":8443"})},
		{"TLS_SELF_SIGNED", with(map[string]string{"TLS_SELF_SIGNED": "maybe"})},
		{"STREAM_WINDOW", with(map[string]string{"STREAM_WINDOW": "1024"})},
		{"SHUTDOWN_TIMEOUT", with(map[string]string{"SHUTDOWN_TIMEOUT": "0s"})},
		{"HTTP_REDIRECT_HTTPS", with(map[string]string{"HTTP_REDIRECT_HTTPS": "true"})},
		{"ACME_DIRECTORY_URL", with(acme, map[string]string{"ACME_DIRECTORY_URL": "http://ca.example.com/dir"})},
		{"ACME_CA_FILE", with(acme, map[string]string{"ACME_CA_FILE": filepath.Join(dir, "missing.pem")})},
		{"ACME_CA_FILE", with(acme, map[string]string{"ACME_CA_FILE": junk})},
		{"ACME_CA_FILE", with(map[string]string{"ACME_CA_FILE": caFile})},
		{"ACME_RENEW_BEFORE", with(acme, map[string]string{"ACME_RENEW_BEFORE": "soon"})},
		{"ACME_RENEW_BEFORE", with(acme, map[string]string{"ACME_RENEW_BEFORE": "721h"})},
		{"ACME_RENEW_BEFORE", with(map[string]string{"ACME_RENEW_BEFORE": "24h"})},
		{"PEER_SECRET_FILE", with(map[string]string{"PEER_ADDR": ":8444"})},
		{"PEER_SECRET_FILE", with(map[string]string{"PEER_ADDR": ":8444", "PEER_SECRET_FILE": shortSecret})},
		{"PEER_ADDR", with(map[string]string{"PEER_ADDR": ":0", "PEER_SECRET_FILE": peerSecret})},
		{"PEER_ADDR", with(map[string]string{"PEER_ADDR": "gw", "PEER_SECRET_FILE": peerSecret})},
		{"PEER_URL", with(map[string]string{"PEER_ADDR": ":8444", "PEER_SECRET_FILE": peerSecret, "PEER_URL": "https://gw:8444"})},
		{"PEER_URL", with(map[string]string{"PEER_ADDR": ":8444", "PEER_SECRET_FILE": peerSecret, "PEER_URL": "http://gw"})},
		{"PEER_ADDR", with(map[string]string{"PEER_SECRET_FILE": peerSecret})},
		{"GATEWAY_ID", with(map[string]string{"GATEWAY_ID": "two words"})},
	} {
		if _, err := LoadConfig(func(k string) string { return tc.env[k] }); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err = %v, want one naming %s", tc.env, err, tc.want)
		}
	}
	c, err = LoadConfig(func(k string) string {
		return with(acme, map[string]string{"ACME_DIRECTORY_URL": "https://ca.example.com/dir", "ACME_CA_FILE": caFile, "ACME_RENEW_BEFORE": "240h"})[k]
	})
	if err != nil {
		t.Fatal(err)
	}
	if c.ACMECAFile != caFile || c.ACMERenewBefore != 240*time.Hour || c.ACMEDirectory != "https://ca.example.com/dir" {
		t.Fatalf("ACME settings: %+v", c)
	}
	c, err = LoadConfig(func(k string) string {
		return with(map[string]string{"GATEWAY_ID": "gw-7", "PEER_ADDR": ":8444", "PEER_SECRET_FILE": peerSecret})[k]
	})
	if err != nil {
		t.Fatal(err)
	}
	if c.PeerURL != "http://gw-7:8444" || c.PeerSecret != strings.Repeat("p", 64) {
		t.Fatalf("peer settings: url %q, secret of %d bytes", c.PeerURL, len(c.PeerSecret))
	}
}
