package api_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/pipeops/tunnel/controlplane/api"
	"github.com/pipeops/tunnel/controlplane/cptest"
	"github.com/pipeops/tunnel/controlplane/tokens"
	"github.com/pipeops/tunnel/shared/auth"
	"github.com/pipeops/tunnel/shared/tunnel"
)

// TestRegistrationSocketCut: a registration socket whose agent token is
// revoked while it is open is closed with a close frame saying why, within
// the revocation check interval, and its heartbeats are no longer answered;
// one whose token expires is closed at the expiry. Real PostgreSQL, real
// API, the revocation made through the token store.
func TestRegistrationSocketCut(t *testing.T) {
	const interval = 200 * time.Millisecond
	cp := cptest.Start(t, api.Config{GatewayWSURL: gatewayWS, RevocationCheckInterval: interval})
	f := &fixture{t: t, url: cp.URL, db: cp.DB, issuer: cp.Issuer}
	ctx := context.Background()
	cluster, err := cp.DB.CreateCluster(ctx, "edge")
	if err != nil {
		t.Fatal(err)
	}

	// open dials with a fresh agent token of the given lifetime (0: the
	// default), registers and has a heartbeat acknowledged.
	open := func(t *testing.T, ttl time.Duration) (*pipeopsAgent, string, time.Time) {
		t.Helper()
		tok, rec, err := cp.Issuer.Issue(ctx, tokens.Request{Kind: auth.KindAgent, ClusterUUID: cluster.UUID, TTL: ttl})
		if err != nil {
			t.Fatal(err)
		}
		a, _, err := f.dialAgent(tok)
		if err != nil {
			t.Fatal(err)
		}
		a.t = t
		if reply := a.call(tunnel.TypeRegister, tunnel.Register{AgentID: "a-1", Name: "edge"}); reply.Type != tunnel.TypeRegisterSuccess {
			t.Fatalf("register: %s %s", reply.Type, reply.Payload)
		}
		if reply := a.call(tunnel.TypeHeartbeat, tunnel.Heartbeat{ClusterID: cluster.UUID, Status: tunnel.StatusHealthy}); reply.Type != tunnel.TypeHeartbeatAck {
			t.Fatalf("heartbeat: %s", reply.Type)
		}
		return a, rec.ID, rec.ExpiresAt
	}

	// closed waits for the server's close frame and returns it.
	closed := func(t *testing.T, a *pipeopsAgent, within time.Duration) *websocket.CloseError {
		t.Helper()
		_ = a.ws.SetReadDeadline(time.Now().Add(within))
		_, data, err := a.ws.ReadMessage()
		var ce *websocket.CloseError
		if !errors.As(err, &ce) {
			t.Fatalf("socket still open or not closed cleanly within %s: message %q, err %v", within, data, err)
		}
		return ce
	}

	// unanswered checks that a heartbeat on the cut socket gets no ack.
	unanswered := func(t *testing.T, a *pipeopsAgent) {
		t.Helper()
		msg, _ := tunnel.NewMessage(tunnel.TypeHeartbeat, tunnel.Heartbeat{ClusterID: cluster.UUID, Status: tunnel.StatusHealthy})
		b, _ := msg.Encode()
		if err := a.ws.WriteMessage(websocket.TextMessage, b); err != nil {
			return // the socket is closed for writing too
		}
		_ = a.ws.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, data, err := a.ws.ReadMessage(); err == nil {
			t.Fatalf("the cut socket answered a heartbeat: %q", data)
		}
	}

	t.Run("revoked", func(t *testing.T) {
		a, id, _ := open(t, 0)
		revokedAt := time.Now()
		if err := cp.DB.RevokeToken(ctx, id, revokedAt); err != nil {
			t.Fatal(err)
		}
		ce := closed(t, a, 10*time.Second)
		took := time.Since(revokedAt)
		t.Logf("closed %s after the revocation (interval %s)", took.Round(time.Millisecond), interval)
		if ce.Code != websocket.ClosePolicyViolation || ce.Text != "token revoked" {
			t.Fatalf("close frame %d %q, want %d %q", ce.Code, ce.Text, websocket.ClosePolicyViolation, "token revoked")
		}
		// The interval, and slack for a loaded machine running -race.
		if took > interval+3*time.Second {
			t.Fatalf("closed %s after the revocation, want within the interval (%s)", took, interval)
		}
		unanswered(t, a)
	})

	t.Run("expired", func(t *testing.T) {
		a, _, expires := open(t, 2*time.Second)
		ce := closed(t, a, 10*time.Second)
		late := time.Since(expires)
		t.Logf("closed %s after the expiry", late.Round(time.Millisecond))
		if ce.Code != websocket.ClosePolicyViolation || ce.Text != "token expired" {
			t.Fatalf("close frame %d %q, want %d %q", ce.Code, ce.Text, websocket.ClosePolicyViolation, "token expired")
		}
		// At the expiry, not a check interval later; never before it.
		if late < -50*time.Millisecond || late > 3*time.Second {
			t.Fatalf("closed %s after the token's expiry", late)
		}
		unanswered(t, a)
	})

	resp, err := http.Get(cp.AdminURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, m := range []string{
		`pipeops_controlplane_authn_connections_cut_total{kind="registration_socket",reason="revoked"} 1`,
		`pipeops_controlplane_authn_connections_cut_total{kind="registration_socket",reason="expired"} 1`,
		`pipeops_controlplane_authn_live_connections{kind="registration_socket"} 0`,
	} {
		if !strings.Contains(string(b), m) {
			t.Errorf("metrics lack %q", m)
		}
	}
}
