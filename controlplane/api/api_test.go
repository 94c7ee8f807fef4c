package api_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/pipeops/tunnel/controlplane/api"
	"github.com/pipeops/tunnel/controlplane/cptest"
	"github.com/pipeops/tunnel/controlplane/postgres"
	"github.com/pipeops/tunnel/controlplane/tokens"
	"github.com/pipeops/tunnel/shared/auth"
	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/testenv/pgtest"
	"github.com/pipeops/tunnel/shared/tunnel"
)

func TestMain(m *testing.M) { testenv.Main(m, pgtest.Stop) }

const gatewayWS = "wss://gateway.example.com/ws"

type fixture struct {
	t        *testing.T
	url      string
	adminURL string // /healthz, /readyz, /metrics
	db       *postgres.DB
	issuer   *tokens.Issuer
	admin    string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	cp := cptest.Start(t, api.Config{GatewayWSURL: gatewayWS, GatewayURL: "https://gateway.example.com", APIURL: "https://cp.example.com"})
	admin, _, err := cp.Issuer.Issue(context.Background(), tokens.Request{Kind: auth.KindAdmin, Subject: "test"})
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{t: t, url: cp.URL, adminURL: cp.AdminURL, db: cp.DB, issuer: cp.Issuer, admin: admin}
}

// do sends a request and decodes a JSON answer into out (when not nil).
func (f *fixture) do(method, path, token string, body any, out any) int {
	f.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		data, _ := json.Marshal(b)
		rd = bytes.NewReader(data)
	}
	req, _ := http.NewRequest(method, f.url+path, rd)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			f.t.Fatalf("%s %s: answer %q is not JSON: %v", method, path, data, err)
		}
	}
	return resp.StatusCode
}

func (f *fixture) createCluster(name string) api.CreatedCluster {
	f.t.Helper()
	var out api.CreatedCluster
	if code := f.do("POST", "/api/v1/admin/clusters", f.admin, map[string]string{"name": name}, &out); code != http.StatusCreated {
		f.t.Fatalf("create cluster %s: HTTP %d", name, code)
	}
	return out
}

type apiError struct {
	Error struct{ Code, Message string } `json:"error"`
}

func TestAdminClusters(t *testing.T) {
	f := newFixture(t)
	c := f.createCluster("prod-eu")
	if c.Cluster.UUID == "" || c.AgentToken == "" || strings.Contains(c.InstallCommand, c.AgentToken) ||
		!strings.Contains(c.InstallCommand, "agent.pipeops.existingSecret="+api.AgentTokenSecret) {
		t.Fatalf("created = %+v", c)
	}
	cases := []struct {
		name, body string
		want       int
		code       string
	}{
		{"duplicate", `{"name":"prod-eu"}`, 409, "conflict"},
		{"bad name", `{"name":"Prod EU!"}`, 400, "invalid"},
		{"unknown field", `{"name":"x","color":"red"}`, 400, "invalid"},
		{"malformed", `{"name":`, 400, "invalid"},
		{"empty", ``, 400, "invalid"},
		{"two values", `{"name":"a"}{"name":"b"}`, 400, "invalid"},
		{"oversized", `{"name":"` + strings.Repeat("a", api.MaxBodySize) + `"}`, 413, "too_large"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var e apiError
			if got := f.do("POST", "/api/v1/admin/clusters", f.admin, tc.body, &e); got != tc.want || e.Error.Code != tc.code || e.Error.Message == "" {
				t.Fatalf("HTTP %d %+v, want %d %s", got, e, tc.want, tc.code)
			}
		})
	}
	var list struct {
		Clusters []struct{ UUID, Name, Status string }
	}
	if code := f.do("GET", "/api/v1/admin/clusters", f.admin, nil, &list); code != 200 || len(list.Clusters) != 1 || list.Clusters[0].Status != "pending" {
		t.Fatalf("list: HTTP %d %+v", code, list)
	}
}

// TestBadTokens: every kind of bad token gets 401 with the same answer.
func TestBadTokens(t *testing.T) {
	f := newFixture(t)
	c := f.createCluster("c1")
	ctx := context.Background()
	revoked, rec, _ := f.issuer.Issue(ctx, tokens.Request{Kind: auth.KindAdmin})
	if err := f.db.RevokeToken(ctx, rec.ID, time.Now()); err != nil {
		t.Fatal(err)
	}
	f.issuer.SetClock(func() time.Time { return time.Now().Add(-48 * time.Hour) })
	expired, _, _ := f.issuer.Issue(ctx, tokens.Request{Kind: auth.KindAdmin, TTL: time.Hour})
	f.issuer.SetClock(time.Now)
	_, otherKey, _ := ed25519.GenerateKey(rand.Reader)
	forged, _ := auth.Sign(otherKey, "k", &auth.Claims{Kind: auth.KindAdmin, RegisteredClaims: jwt.RegisteredClaims{ID: "x", ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour))}})
	none, _ := jwt.NewWithClaims(jwt.SigningMethodNone, &auth.Claims{Kind: auth.KindAdmin, RegisteredClaims: jwt.RegisteredClaims{ID: rec.ID, Audience: jwt.ClaimStrings{auth.Audience}, ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour))}}).SignedString(jwt.UnsafeAllowNoneSignatureType)

	for name, tok := range map[string]string{
		"none":        "",
		"garbage":     "abc",
		"forged":      forged,
		"alg none":    none,
		"revoked":     revoked,
		"expired":     expired,
		"agent token": c.AgentToken, // wrong kind for the admin API
	} {
		t.Run(name, func(t *testing.T) {
			var e apiError
			if code := f.do("GET", "/api/v1/admin/clusters", tok, nil, &e); code != 401 || e.Error.Code != "unauthorized" {
				t.Fatalf("HTTP %d %+v, want 401", code, e)
			}
		})
	}
	var e apiError
	if code := f.do("POST", "/api/v1/gateway/routes/sync", f.admin, `{}`, &e); code != 401 {
		t.Fatalf("admin token on the agent API: HTTP %d, want 401", code)
	}
}

// pipeopsAgent speaks the PipeOps registration protocol.
type pipeopsAgent struct {
	t  *testing.T
	ws *websocket.Conn
}

func (f *fixture) dialAgent(token string) (*pipeopsAgent, *http.Response, error) {
	h := http.Header{"Authorization": {"Bearer " + token}}
	url := "ws" + strings.TrimPrefix(f.url, "http") + "/api/v1/clusters/agent/ws"
	ws, resp, err := websocket.DefaultDialer.Dial(url, h)
	if err != nil {
		return nil, resp, err
	}
	f.t.Cleanup(func() { ws.Close() })
	return &pipeopsAgent{t: f.t, ws: ws}, resp, nil
}

func (a *pipeopsAgent) call(typ string, payload any) tunnel.Message {
	a.t.Helper()
	msg, err := tunnel.NewMessage(typ, payload)
	if err != nil {
		a.t.Fatal(err)
	}
	msg.RequestID = "req-" + typ
	b, _ := msg.Encode()
	if err := a.ws.WriteMessage(websocket.TextMessage, b); err != nil {
		a.t.Fatal(err)
	}
	_ = a.ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, data, err := a.ws.ReadMessage()
	if err != nil {
		a.t.Fatal(err)
	}
	reply, err := tunnel.DecodeMessage(data)
	if err != nil {
		a.t.Fatal(err)
	}
	if reply.RequestID != msg.RequestID {
		a.t.Fatalf("reply request_id %q, want %q", reply.RequestID, msg.RequestID)
	}
	return reply
}

// TestPipeOpsAgentFlow walks an agent through the protocol: register (a
// stale cached id is answered with the token's cluster, as is a fresh
// register), heartbeat, full route sync, re-sync, single register and
// unregister.
func TestPipeOpsAgentFlow(t *testing.T) {
	f := newFixture(t)
	c := f.createCluster("edge-1")
	other := f.createCluster("edge-2")

	if _, resp, err := f.dialAgent("not-a-token"); err == nil || resp == nil || resp.StatusCode != 401 {
		t.Fatalf("registration with a bad token: %v %v, want 401", resp, err)
	}
	a, _, err := f.dialAgent(c.AgentToken)
	if err != nil {
		t.Fatal(err)
	}
	reg := tunnel.Register{AgentID: "agent-1", Name: "edge-1", K8sVersion: "v1.37.2", AgentVersion: "1.0.0", ClusterID: "0b5c5bc4-0000-0000-0000-000000000000"}
	for _, stale := range []string{reg.ClusterID, other.Cluster.UUID} {
		// The token's cluster is the answer; the agent adopts it.
		reg.ClusterID = stale
		reply := a.call(tunnel.TypeRegister, reg)
		var ok tunnel.RegisterSuccess
		if reply.Type != tunnel.TypeRegisterSuccess || reply.DecodePayload(&ok) != nil || ok.ClusterID != c.Cluster.UUID {
			t.Fatalf("register with a stale cluster_id: %s %s, want register_success for %s", reply.Type, reply.Payload, c.Cluster.UUID)
		}
	}
	reg.ClusterID = ""
	reply := a.call(tunnel.TypeRegister, reg)
	var ok tunnel.RegisterSuccess
	if reply.Type != tunnel.TypeRegisterSuccess || reply.DecodePayload(&ok) != nil {
		t.Fatalf("register: %s %s", reply.Type, reply.Payload)
	}
	if ok.ClusterID != c.Cluster.UUID || ok.ClusterUUID != c.Cluster.UUID || ok.GatewayWSURL != gatewayWS || ok.Name != "edge-1" ||
		ok.TunnelURL != "https://gateway.example.com" || ok.APIServer != "https://gateway.example.com/k8s/"+c.Cluster.UUID {
		t.Fatalf("register_success = %+v", ok)
	}
	reg.ClusterID = ok.ClusterID // resuming with the id it got
	if reply = a.call(tunnel.TypeRegister, reg); reply.Type != tunnel.TypeRegisterSuccess {
		t.Fatalf("resume: %s %s", reply.Type, reply.Payload)
	}

	hb := tunnel.Heartbeat{ClusterID: ok.ClusterID, AgentID: "agent-1", Status: tunnel.StatusHealthy, TunnelStatus: "connected",
		Metadata: tunnel.HeartbeatMetadata{K8sNodes: 3, K8sPods: 42, CPUUsage: tunnel.Percent(12.5), MemoryUsage: tunnel.UsageUnavailable, IsPrivate: true}}
	if reply = a.call(tunnel.TypeHeartbeat, hb); reply.Type != tunnel.TypeHeartbeatAck {
		t.Fatalf("heartbeat: %s", reply.Type)
	}
	if reply = a.call(tunnel.TypePing, tunnel.Ping{}); reply.Type != tunnel.TypePong {
		t.Fatalf("ping: %s", reply.Type)
	}
	var got struct {
		Status        string
		AgentVersion  string `json:"agent_version"`
		Metadata      map[string]any
		LastHeartbeat *time.Time `json:"last_heartbeat"`
	}
	f.do("GET", "/api/v1/admin/clusters/edge-1", f.admin, nil, &got)
	if got.Status != "connected" || got.AgentVersion != "1.0.0" || got.LastHeartbeat == nil || got.Metadata["k8s_pods"] != float64(42) || got.Metadata["memory_usage"] != "unavailable" {
		t.Fatalf("cluster after heartbeat = %+v", got)
	}

	sync := map[string]any{
		"cluster_uuid": ok.ClusterUUID, "public_endpoint": "", "routing_mode": "tunnel",
		"ingress_controller": map[string]any{"name": "ingress-nginx-controller", "namespace": "ingress-nginx", "port": 80, "type": "nginx"},
		"ingresses": []any{map[string]any{
			"namespace": "shop", "ingress_name": "web", "annotations": map[string]string{"pipeops.io/managed-by": "pipeops"},
			"rules": []any{
				map[string]any{"host": "shop.example.com", "tls": true, "paths": []any{
					map[string]any{"path": "/", "path_type": "Prefix", "service_name": "web", "service_port": 8080},
					map[string]any{"path": "/api", "path_type": "Prefix", "service_name": "api", "service_port": 9090},
				}},
				map[string]any{"host": "admin.example.com", "paths": []any{
					map[string]any{"path": "/", "path_type": "Exact", "service_name": "admin", "service_port": 80},
				}},
			},
		}},
	}
	var res map[string]any
	if code := f.do("POST", "/api/v1/gateway/routes/sync", c.AgentToken, sync, &res); code != 200 || res["routes"] != float64(3) {
		t.Fatalf("sync: HTTP %d %v", code, res)
	}
	routes := f.routes("edge-1")
	if len(routes) != 3 || routes[0].Hostname != "admin.example.com" || !routes[1].TLS {
		t.Fatalf("routes after sync = %+v", routes)
	}

	// Re-sync without admin.example.com: it is gone.
	ing := sync["ingresses"].([]any)[0].(map[string]any)
	ing["rules"] = ing["rules"].([]any)[:1]
	if code := f.do("POST", "/api/v1/gateway/routes/sync", c.AgentToken, sync, nil); code != 200 {
		t.Fatalf("re-sync: HTTP %d", code)
	}
	if routes = f.routes("edge-1"); len(routes) != 2 {
		t.Fatalf("routes after re-sync = %+v", routes)
	}

	// Another cluster cannot take shop.example.com, and nothing of its
	// request is applied.
	var e apiError
	conflict := map[string]any{"cluster_uuid": other.Cluster.UUID, "ingresses": []any{map[string]any{"namespace": "a", "ingress_name": "b",
		"rules": []any{
			map[string]any{"host": "mine.example.com", "paths": []any{map[string]any{"path": "/", "path_type": "Prefix", "service_name": "s", "service_port": 80}}},
			map[string]any{"host": "shop.example.com", "paths": []any{map[string]any{"path": "/", "path_type": "Prefix", "service_name": "s", "service_port": 80}}},
		}}}}
	if code := f.do("POST", "/api/v1/gateway/routes/sync", other.AgentToken, conflict, &e); code != 409 || !strings.Contains(e.Error.Message, "shop.example.com") {
		t.Fatalf("conflicting sync: HTTP %d %+v, want 409 naming the hostname", code, e)
	}
	if r := f.routes("edge-2"); len(r) != 0 {
		t.Fatalf("refused sync left routes: %+v", r)
	}
	// An agent acts only on its own cluster.
	if code := f.do("POST", "/api/v1/gateway/routes/sync", other.AgentToken, sync, &e); code != 403 {
		t.Fatalf("sync naming another cluster: HTTP %d, want 403", code)
	}

	one := map[string]any{"hostname": "blog.example.com", "cluster_uuid": ok.ClusterUUID, "namespace": "blog", "service_name": "blog",
		"service_port": 80, "ingress_name": "blog", "path": "/", "path_type": "Prefix", "tls": false, "routing_mode": "tunnel",
		"deployment_id": "d-1", "deployment_name": "blog"}
	if code := f.do("POST", "/api/v1/gateway/routes/register", c.AgentToken, one, nil); code != 200 {
		t.Fatalf("register route: HTTP %d", code)
	}
	if code := f.do("POST", "/api/v1/gateway/routes/register", other.AgentToken, map[string]any{"hostname": "blog.example.com", "service_name": "x", "service_port": 80}, &e); code != 409 {
		t.Fatalf("register another cluster's hostname: HTTP %d, want 409", code)
	}
	if code := f.do("POST", "/api/v1/gateway/routes/register", c.AgentToken, map[string]any{"hostname": "x.example.com", "routing_mode": "sideways"}, &e); code != 400 {
		t.Fatalf("bad routing mode: HTTP %d, want 400", code)
	}
	if code := f.do("POST", "/api/v1/gateway/routes/register", c.AgentToken, map[string]any{"hostname": "x.example.com", "routing_mode": "direct"}, &e); code != 400 || !strings.Contains(e.Error.Message, "public_endpoint") {
		t.Fatalf("direct without a public endpoint: HTTP %d %+v, want 400 naming public_endpoint", code, e)
	}
	if code := f.do("POST", "/api/v1/gateway/routes/sync", c.AgentToken, map[string]any{"routing_mode": "direct", "ingresses": []any{}}, &e); code != 400 || !strings.Contains(e.Error.Message, "public_endpoint") {
		t.Fatalf("sync direct without a public endpoint: HTTP %d %+v, want 400 naming public_endpoint", code, e)
	}
	if code := f.do("POST", "/api/v1/gateway/routes/unregister", other.AgentToken, map[string]any{"hostname": "blog.example.com"}, &e); code != 404 {
		t.Fatalf("unregister another cluster's hostname: HTTP %d, want 404", code)
	}
	if code := f.do("POST", "/api/v1/gateway/routes/unregister", c.AgentToken, map[string]any{"hostname": "blog.example.com"}, nil); code != 200 {
		t.Fatalf("unregister: HTTP %d", code)
	}
	if routes = f.routes("edge-1"); len(routes) != 2 {
		t.Fatalf("routes after unregister = %+v", routes)
	}

	// Revoking the agent's token locks it out.
	var toks struct{ Tokens []struct{ ID, Kind string } }
	f.do("GET", "/api/v1/admin/tokens?cluster="+c.Cluster.UUID, f.admin, nil, &toks)
	if len(toks.Tokens) != 1 || toks.Tokens[0].Kind != "agent" {
		t.Fatalf("tokens = %+v", toks)
	}
	if code := f.do("POST", "/api/v1/admin/tokens/"+toks.Tokens[0].ID+"/revoke", f.admin, nil, nil); code != 200 {
		t.Fatalf("revoke: HTTP %d", code)
	}
	if code := f.do("POST", "/api/v1/gateway/routes/sync", c.AgentToken, sync, nil); code != 401 {
		t.Fatalf("sync with a revoked token: HTTP %d, want 401", code)
	}
}

type route struct {
	Hostname string
	TLS      bool
}

func (f *fixture) routes(cluster string) []route {
	f.t.Helper()
	var out struct{ Routes []route }
	if code := f.do("GET", "/api/v1/admin/routes?cluster="+cluster, f.admin, nil, &out); code != 200 {
		f.t.Fatalf("list routes: HTTP %d", code)
	}
	return out.Routes
}

func TestJWKSAndKubeconfig(t *testing.T) {
	f := newFixture(t)
	c := f.createCluster("dev")
	resp, err := http.Get(f.url + "/.well-known/jwks.json")
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	keys, err := auth.ParseJWKS(data)
	if err != nil {
		t.Fatalf("JWKS: %v", err)
	}
	// A gateway holding only the JWKS verifies the control plane's tokens.
	v := &auth.Verifier{Keys: keys}
	claims, err := v.Verify(context.Background(), c.AgentToken, auth.KindAgent)
	if err != nil || claims.ClusterID != c.Cluster.UUID {
		t.Fatalf("agent token against the JWKS: %+v, %v", claims, err)
	}

	req, _ := http.NewRequest("GET", f.url+"/api/v1/admin/clusters/dev/kubeconfig", nil)
	req.Header.Set("Authorization", "Bearer "+f.admin)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	data, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	kc, err := clientcmd.Load(data)
	if err != nil {
		t.Fatalf("kubeconfig: %v\n%s", err, data)
	}
	cluster := kc.Clusters[kc.Contexts[kc.CurrentContext].Cluster]
	if cluster.Server != "https://gateway.example.com/k8s/"+c.Cluster.UUID {
		t.Fatalf("kubeconfig server = %s", cluster.Server)
	}
	user := kc.AuthInfos[kc.Contexts[kc.CurrentContext].AuthInfo]
	uc, err := v.Verify(context.Background(), user.Token, auth.KindUser)
	if err != nil || !uc.AllowsCluster(c.Cluster.UUID) || uc.AllowsCluster("another") {
		t.Fatalf("kubeconfig token: %+v, %v", uc, err)
	}
}

func TestHealthAndMetrics(t *testing.T) {
	f := newFixture(t)
	// The metrics are on the admin listener only: they name clusters and
	// routes, which the public API port must not show anyone.
	for _, c := range []struct{ base, path, want string }{
		{f.url, "/healthz", "ok"}, {f.url, "/readyz", "ok"},
		{f.adminURL, "/healthz", "ok"}, {f.adminURL, "/readyz", "ok"},
		{f.adminURL, "/metrics", "pipeops_controlplane_http_requests_total"},
	} {
		f.do("GET", "/healthz", "", nil, nil) // make sure a request was counted
		resp, err := http.Get(c.base + c.path)
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(data), c.want) {
			t.Fatalf("%s%s: HTTP %d %q", c.base, c.path, resp.StatusCode, data)
		}
	}
	if code := f.do("GET", "/metrics", "", nil, nil); code != http.StatusNotFound {
		t.Fatalf("/metrics on the public API port: HTTP %d, want 404", code)
	}
	var e apiError
	if code := f.do("GET", "/nope", "", nil, &e); code != 404 || e.Error.Code != "not_found" {
		t.Fatalf("unknown path: HTTP %d %+v", code, e)
	}
	if code := f.do("DELETE", "/healthz", "", nil, &e); code != 405 {
		t.Fatalf("wrong method: HTTP %d", code)
	}
}
