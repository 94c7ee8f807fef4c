package api_test

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/pipeops/tunnel/controlplane/api"
	"github.com/pipeops/tunnel/controlplane/cptest"
	"github.com/pipeops/tunnel/controlplane/tokens"
	"github.com/pipeops/tunnel/shared/auth"
	"github.com/pipeops/tunnel/shared/tunnel"
)

// TestDeleteCluster: DELETE /api/v1/admin/clusters/{cluster} takes a name
// or an id, needs an admin token, answers what went, and cuts the agent
// off: its open registration socket is closed within the revocation check
// interval, and it can neither register again nor sync routes. Real
// PostgreSQL, the API over HTTP.
func TestDeleteCluster(t *testing.T) {
	const interval = 200 * time.Millisecond
	cp := cptest.Start(t, api.Config{GatewayWSURL: gatewayWS, RevocationCheckInterval: interval})
	admin, _, err := cp.Issuer.Issue(context.Background(), tokens.Request{Kind: auth.KindAdmin, Subject: "test"})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, url: cp.URL, adminURL: cp.AdminURL, db: cp.DB, issuer: cp.Issuer, admin: admin}
	edge := f.createCluster("edge")
	keep := f.createCluster("keep")

	a, _, err := f.dialAgent(edge.AgentToken)
	if err != nil {
		t.Fatal(err)
	}
	if reply := a.call(tunnel.TypeRegister, tunnel.Register{AgentID: "a-1", Name: "edge"}); reply.Type != tunnel.TypeRegisterSuccess {
		t.Fatalf("register: %s %s", reply.Type, reply.Payload)
	}
	sync := map[string]any{"cluster_uuid": edge.Cluster.UUID, "routing_mode": "tunnel", "ingresses": []any{map[string]any{
		"namespace": "shop", "ingress_name": "web",
		"rules": []any{
			map[string]any{"host": "shop.example.com", "paths": []any{
				map[string]any{"path": "/", "path_type": "Prefix", "service_name": "web", "service_port": 80},
				map[string]any{"path": "/api", "path_type": "Prefix", "service_name": "api", "service_port": 80},
			}},
			map[string]any{"host": "admin.example.com", "paths": []any{
				map[string]any{"path": "/", "path_type": "Prefix", "service_name": "admin", "service_port": 80},
			}},
		},
	}}}
	if code := f.do("POST", "/api/v1/gateway/routes/sync", edge.AgentToken, sync, nil); code != 200 {
		t.Fatalf("sync: HTTP %d", code)
	}
	var user struct{ Token string }
	if code := f.do("POST", "/api/v1/admin/tokens", admin, map[string]any{"kind": "user", "clusters": []string{"edge"}, "subject": "alice"}, &user); code != 201 {
		t.Fatalf("user token: HTTP %d", code)
	}

	for name, c := range map[string]struct {
		path, token string
		want        int
		code        string
	}{
		"no token":       {"edge", "", 401, "unauthorized"},
		"agent token":    {"edge", edge.AgentToken, 401, "unauthorized"},
		"user token":     {"edge", user.Token, 401, "unauthorized"},
		"unknown name":   {"nope", admin, 404, "not_found"},
		"unknown id":     {"0b5c5bc4-0000-4000-8000-000000000000", admin, 404, "not_found"},
		"malformed name": {"Not%20A%20Name", admin, 404, "not_found"},
	} {
		t.Run(name, func(t *testing.T) {
			var e apiError
			if got := f.do("DELETE", "/api/v1/admin/clusters/"+c.path, c.token, nil, &e); got != c.want || e.Error.Code != c.code {
				t.Fatalf("HTTP %d %+v, want %d %s", got, e, c.want, c.code)
			}
		})
	}
	var still struct{ UUID string }
	if code := f.do("GET", "/api/v1/admin/clusters/edge", admin, nil, &still); code != 200 || still.UUID != edge.Cluster.UUID {
		t.Fatalf("after refused deletions: HTTP %d %+v, want the cluster still there", code, still)
	}

	var got api.ClusterDeleted
	deleted := time.Now()
	if code := f.do("DELETE", "/api/v1/admin/clusters/edge", admin, nil, &got); code != 200 {
		t.Fatalf("delete: HTTP %d %+v", code, got)
	}
	want := api.ClusterDeleted{Status: "deleted", UUID: edge.Cluster.UUID, Name: "edge", RoutesRemoved: 3,
		HostnamesReleased: []string{"admin.example.com", "shop.example.com"}, GrantsReleased: []string{}, TokensRevoked: 2}
	if got.Status != want.Status || got.UUID != want.UUID || got.Name != want.Name || got.RoutesRemoved != want.RoutesRemoved ||
		!slices.Equal(got.HostnamesReleased, want.HostnamesReleased) || got.GrantsReleased == nil || len(got.GrantsReleased) != 0 ||
		got.TokensRevoked != want.TokensRevoked {
		t.Fatalf("answer %+v, want %+v", got, want)
	}

	// The open registration socket is closed, saying why.
	_ = a.ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, data, err := a.ws.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.ClosePolicyViolation || ce.Text != "token revoked" {
		t.Fatalf("registration socket after the deletion: message %q, err %v; want close %d \"token revoked\"", data, err, websocket.ClosePolicyViolation)
	}
	took := time.Since(deleted)
	t.Logf("registration socket closed %s after the deletion (interval %s)", took.Round(time.Millisecond), interval)
	if took > interval+3*time.Second {
		t.Fatalf("closed %s after the deletion, want within the interval (%s)", took, interval)
	}

	// The agent cannot come back, nor act on routes; the user token is
	// refused too.
	if _, resp, err := f.dialAgent(edge.AgentToken); err == nil || resp == nil || resp.StatusCode != 401 {
		t.Fatalf("registration after the deletion: %v %v, want 401", resp, err)
	}
	if code := f.do("POST", "/api/v1/gateway/routes/sync", edge.AgentToken, sync, nil); code != 401 {
		t.Fatalf("sync after the deletion: HTTP %d, want 401", code)
	}
	var toks struct{ Tokens []struct{ ID, Kind string } }
	if code := f.do("GET", "/api/v1/admin/tokens?cluster="+edge.Cluster.UUID, admin, nil, &toks); code != 200 || len(toks.Tokens) != 1 || toks.Tokens[0].Kind != "user" {
		t.Fatalf("tokens of the deleted cluster: HTTP %d %+v, want only the user token's record (revoked)", code, toks)
	}
	if revoked, err := cp.DB.Revoked(context.Background(), toks.Tokens[0].ID); err != nil || !revoked {
		t.Fatalf("the user token naming only the deleted cluster: revoked %v, %v", revoked, err)
	}
	var e apiError
	if code := f.do("GET", "/api/v1/admin/clusters/"+edge.Cluster.UUID, admin, nil, &e); code != 404 {
		t.Fatalf("get after the deletion: HTTP %d, want 404", code)
	}
	if routes, err := cp.DB.Routes(context.Background(), edge.Cluster.UUID); err != nil || len(routes) != 0 {
		t.Fatalf("routes after the deletion: %+v, %v", routes, err)
	}
	if code := f.do("DELETE", "/api/v1/admin/clusters/edge", admin, nil, &e); code != 404 || e.Error.Code != "not_found" {
		t.Fatalf("deleting twice: HTTP %d %+v, want 404", code, e)
	}

	// By id; the other cluster was untouched until now.
	if code := f.do("DELETE", "/api/v1/admin/clusters/"+keep.Cluster.UUID, admin, nil, &got); code != 200 ||
		got.Name != "keep" || got.RoutesRemoved != 0 || got.TokensRevoked != 1 || len(got.HostnamesReleased) != 0 {
		t.Fatalf("delete by id: HTTP %d %+v", code, got)
	}
	var list struct{ Clusters []struct{ UUID string } }
	if code := f.do("GET", "/api/v1/admin/clusters", admin, nil, &list); code != http.StatusOK || len(list.Clusters) != 0 {
		t.Fatalf("clusters after deleting both: HTTP %d %+v", code, list)
	}
}
