package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/pipeops/tunnel/agent/tunnelclient"
	"github.com/pipeops/tunnel/controlplane/api"
	"github.com/pipeops/tunnel/controlplane/cptest"
	"github.com/pipeops/tunnel/controlplane/tokens"
	"github.com/pipeops/tunnel/shared/auth"
	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/testenv/tunneltest"
	"github.com/pipeops/tunnel/shared/tunnel"
)

// TestClusterDeleted: deleting a cluster through the control plane's admin
// API, with its agent connected to a running gateway, takes its hosts out
// of the gateway's route table at once (announced by NOTIFY: the table's
// backstop reload is minutes away), while another cluster's host is still
// served; the agent's session is closed within REVOCATION_CHECK_INTERVAL,
// and when the agent reconnects the gateway refuses its token. The real
// control plane API, database and gateway, and a real agent tunnel.
func TestClusterDeleted(t *testing.T) {
	const interval = 200 * time.Millisecond
	ctx := context.Background()
	gwAddr := freeAddr(t)
	// First: the shared server's goroutines, and the control plane's own,
	// are not this test's.
	cp := cptest.Start(t, api.Config{GatewayWSURL: "ws://" + gwAddr + "/ws"})
	testenv.LeakCheck(t)
	admin, _, err := cp.Issuer.Issue(ctx, tokens.Request{Kind: auth.KindAdmin, Subject: "test"})
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{}}
	defer hc.CloseIdleConnections()
	// call sends a JSON request to the control plane's API and decodes the
	// answer into out.
	call := func(method, path, token string, body, out any) int {
		t.Helper()
		var rd io.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		}
		req, _ := http.NewRequest(method, cp.URL+path, rd)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if out != nil {
			if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
				t.Fatalf("%s %s: HTTP %d, answer not JSON: %v", method, path, resp.StatusCode, err)
			}
		}
		return resp.StatusCode
	}
	type created struct {
		Cluster    struct{ UUID string }
		AgentToken string `json:"agent_token"`
	}
	var edge, keep created
	for name, c := range map[string]*created{"edge": &edge, "keep": &keep} {
		if code := call("POST", "/api/v1/admin/clusters", admin, map[string]string{"name": name}, c); code != 201 {
			t.Fatalf("create %s: HTTP %d", name, code)
		}
	}

	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "app saw host=%s", r.Host)
	}))
	defer app.Close()
	// Built once: LoadConfig reads every variable, and a map made per read
	// would start servers and pick ports on every read.
	env := map[string]string{
		"DATABASE_URL": cp.DBURL, "CONTROLPLANE_URL": cp.URL,
		"HTTP_ADDR": gwAddr, "ADMIN_ADDR": freeAddr(t), "GATEWAY_HOSTS": "gw.local,127.0.0.1",
		"REVOCATION_CHECK_INTERVAL": interval.String(), "SHUTDOWN_TIMEOUT": "5s",
	}
	cfg, err := LoadConfig(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	g, err := New(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	runErr := make(chan error, 1)
	go func() { runErr <- g.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-runErr; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	toApp := tunnelclient.DialerFunc(func(ctx context.Context, h tunnel.StreamHeader) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", strings.TrimPrefix(app.URL, "http://"))
	})
	agentLog := &testenv.LogBuffer{}
	agent := tunneltest.StartAgent(t, tunnelclient.Config{
		GatewayURL: "http://" + gwAddr, Token: edge.AgentToken, ClusterUUID: edge.Cluster.UUID, AgentVersion: "test",
		Dialer: toApp, Logger: agentLog.Logger(),
		// Back at once after losing its tunnel, as an agent is (about a
		// second by default).
		RetryFast: 100 * time.Millisecond,
	})
	defer agent.Stop() // before the gateway stops
	other := tunneltest.StartAgent(t, tunnelclient.Config{
		GatewayURL: "http://" + gwAddr, Token: keep.AgentToken, ClusterUUID: keep.Cluster.UUID, AgentVersion: "test", Dialer: toApp,
		DrainTimeout: 100 * time.Millisecond,
	})
	defer other.Stop()
	waitFor(t, "both agents' sessions", 10*time.Second, func() bool {
		_, a := g.sessions.Session(edge.Cluster.UUID)
		_, b := g.sessions.Session(keep.Cluster.UUID)
		return a && b
	})

	syncOne := func(c created, host string) {
		t.Helper()
		body := map[string]any{"cluster_uuid": c.Cluster.UUID, "routing_mode": "tunnel",
			"ingress_controller": map[string]any{"name": "ingress-nginx-controller", "namespace": "ingress-nginx", "port": 80},
			"ingresses": []any{map[string]any{"namespace": "web", "ingress_name": "web", "rules": []any{
				map[string]any{"host": host, "paths": []any{map[string]any{"path": "/", "path_type": "Prefix", "service_name": "web", "service_port": 80}}},
				map[string]any{"host": "*." + host, "paths": []any{map[string]any{"path": "/", "path_type": "Prefix", "service_name": "web", "service_port": 80}}},
			}}}}
		if code := call("POST", "/api/v1/gateway/routes/sync", c.AgentToken, body, nil); code != 200 {
			t.Fatalf("sync %s: HTTP %d", host, code)
		}
	}
	syncOne(edge, "shop.example.com")
	syncOne(keep, "keep.example.com")
	get := func(host string) int {
		req, _ := http.NewRequest("GET", "http://"+gwAddr+"/", nil)
		req.Host = host
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, host := range []string{"shop.example.com", "www.shop.example.com", "keep.example.com"} {
		waitFor(t, host+" served", 5*time.Second, func() bool { return get(host) == 200 })
	}

	var deleted api.ClusterDeleted
	if code := call("DELETE", "/api/v1/admin/clusters/edge", admin, nil, &deleted); code != 200 || deleted.RoutesRemoved != 2 || deleted.TokensRevoked != 1 {
		t.Fatalf("delete: HTTP %d %+v", code, deleted)
	}
	start := time.Now()
	// 404, no route: not 503, a route whose agent is gone.
	waitFor(t, "the deleted cluster's hosts to leave the route table", 2*time.Second, func() bool {
		return get("shop.example.com") == 404 && get("www.shop.example.com") == 404
	})
	t.Logf("hosts gone %s after the deletion", time.Since(start).Round(time.Millisecond))
	if _, ok := g.routes.Lookup("shop.example.com", "/"); ok {
		t.Fatal("the route table still holds shop.example.com")
	}
	if code := get("keep.example.com"); code != 200 {
		t.Fatalf("the other cluster's host: %d, want 200", code)
	}

	waitFor(t, "the deleted cluster's session to close", interval+3*time.Second, func() bool {
		_, ok := g.sessions.Session(edge.Cluster.UUID)
		return !ok
	})
	t.Logf("session closed %s after the deletion (interval %s)", time.Since(start).Round(time.Millisecond), interval)
	// The agent comes back, and is refused.
	waitFor(t, "the agent's reconnection to be refused", 10*time.Second, func() bool {
		return strings.Contains(agentLog.String(), tunnelclient.ErrUnauthorized.Error())
	})
	if _, ok := g.sessions.Session(edge.Cluster.UUID); ok || agent.Client.Stats().Connects != 1 {
		t.Fatalf("the deleted cluster's agent is connected again (%d connects)", agent.Client.Stats().Connects)
	}
	if _, ok := g.sessions.Session(keep.Cluster.UUID); !ok {
		t.Fatal("the other cluster's session closed too")
	}
}
