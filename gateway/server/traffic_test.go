package server

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
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

// The gateway as it runs: public requests through its listener end up in
// the traffic table (written at the latest by the flush on the way out),
// and Kubernetes API requests do not.
func TestGatewayRecordsTraffic(t *testing.T) {
	ctx := context.Background()
	cp := cptest.Store(t) // first: the shared server's goroutines are not this test's
	testenv.LeakCheck(t)
	db, iss := cp.DB, cp.Issuer
	cluster, err := db.CreateCluster(ctx, "edge")
	if err != nil {
		t.Fatal(err)
	}
	agentTok, _, err := iss.Issue(ctx, tokens.Request{Kind: auth.KindAgent, ClusterUUID: cluster.UUID})
	if err != nil {
		t.Fatal(err)
	}
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/fail" {
			w.WriteHeader(http.StatusInternalServerError)
		}
		io.WriteString(w, strings.Repeat("y", int(n)*2))
	}))
	defer app.Close()

	env := map[string]string{
		"DATABASE_URL": cp.DBURL, "CONTROLPLANE_URL": jwksServer(t, iss),
		"HTTP_ADDR": freeAddr(t), "ADMIN_ADDR": freeAddr(t), "GATEWAY_HOSTS": "gw.local,127.0.0.1", "K8S_ALLOW_PLAIN_HTTP": "true",
	}
	cfg, err := LoadConfig(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	g, err := New(ctx, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	runErr := make(chan error, 1)
	go func() { runErr <- g.Run(runCtx) }()
	stopped := false
	stopGateway := func() {
		if !stopped {
			stopped = true
			stop()
			if err := <-runErr; err != nil {
				t.Errorf("Run: %v", err)
			}
		}
	}
	defer stopGateway()

	hc := &http.Client{Transport: &http.Transport{}}
	defer hc.CloseIdleConnections()
	agent := tunneltest.StartAgent(t, tunnelclient.Config{
		GatewayURL: "http://" + cfg.HTTPAddr, Token: agentTok, ClusterUUID: cluster.UUID, AgentVersion: "test",
		DrainTimeout: 100 * time.Millisecond, // the gateway's pooled idle streams need no drain
		Dialer: tunnelclient.DialerFunc(func(ctx context.Context, _ tunnel.StreamHeader) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", strings.TrimPrefix(app.URL, "http://"))
		}),
	})
	defer agent.Stop() // before the gateway stops
	testenv.Eventually(t, func() bool { _, ok := g.sessions.Session(cluster.UUID); return ok }, "the agent's session")
	err = db.SyncRoutes(ctx, controlplane.RouteSync{ClusterUUID: cluster.UUID, RoutingMode: "tunnel",
		IngressController: &controlplane.IngressController{Name: "ingress-nginx-controller", Namespace: "ingress-nginx", Port: 80},
		Routes:            []controlplane.Route{{Hostname: "shop.example.com", Path: "/", PathType: "Prefix", Namespace: "shop", ServiceName: "web", ServicePort: 80}}})
	if err != nil {
		t.Fatal(err)
	}
	send := func(host, path, body string) int {
		t.Helper()
		req, _ := http.NewRequest("POST", "http://"+cfg.HTTPAddr+path, strings.NewReader(body))
		req.Host = host
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode
	}
	testenv.Eventually(t, func() bool { _, ok := g.routes.Lookup("shop.example.com", "/"); return ok }, "the synced route")
	since := time.Now().UTC().Truncate(time.Minute)
	if code := send("shop.example.com", "/cart", "12345"); code != 200 {
		t.Fatalf("through the tunnel: %d", code)
	}
	if code := send("shop.example.com", "/fail", ""); code != 500 {
		t.Fatalf("a failing app: %d", code)
	}
	// The Kubernetes API path is audited, not counted here (no token: 401).
	if code := send("gw.local", "/k8s/"+cluster.UUID+"/api", "x"); code != 401 {
		t.Fatalf("/k8s without a token: %d", code)
	}
	agent.Stop()
	stopGateway() // the final flush
	hosts, err := db.TrafficHosts(ctx, controlplane.TrafficQuery{Cluster: cluster.UUID, Since: since.Add(-time.Minute), Until: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	if len(hosts) != 1 {
		t.Fatalf("hosts %+v, want shop.example.com alone", hosts)
	}
	if h := hosts[0]; h.Hostname != "shop.example.com" || h.Requests != 2 || h.Errors != 1 || h.BytesIn != 5 || h.BytesOut != 10 {
		t.Errorf("recorded %+v, want 2 requests, 1 error, 5 bytes in, 10 out", h)
	}
}
