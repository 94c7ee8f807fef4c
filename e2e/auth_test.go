package e2e

import (
	"context"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/pipeops/tunnel/shared/stack"
)

// TestTokenAuth: an agent with a bad, expired, revoked or wrong-kind token
// never gets a session; a token revoked while connected loses its session
// within 30 s; the Kubernetes path refuses tokens without access to the
// cluster.
func TestTokenAuth(t *testing.T) {
	t.Parallel() // mostly waiting: out the leeway, and for the revocation check
	e := newEnv(t, stack.Options{}, stack.ClusterOptions{NoAgent: true})
	ctx := context.Background()
	s, c := e.s, e.c

	good, _, err := s.Token(ctx, "agent", 0, c.Name)
	if err != nil {
		t.Fatal(err)
	}
	expired, _, err := s.Token(ctx, "agent", time.Second, c.Name)
	if err != nil {
		t.Fatal(err)
	}
	revoked, revokedID, err := s.Token(ctx, "agent", 0, c.Name)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.RevokeToken(ctx, revokedID); err != nil {
		t.Fatal(err)
	}
	user, _, err := s.Token(ctx, "user", 0, c.Name)
	if err != nil {
		t.Fatal(err)
	}
	forged := good[:len(good)-8] + "AAAAAAAA" // the signature no longer matches

	// Tokens are checked with 30 s of leeway for clock skew: the expired
	// token is tried last, once that has passed.
	expiredAt := time.Now().Add(time.Second)
	refused := func(name, token string) {
		t.Run(name, func(t *testing.T) {
			c.Agent.SetEnv("PIPEOPS_TOKEN", token)
			if err := c.Agent.Spawn(); err != nil {
				t.Fatal(err)
			}
			defer c.Agent.Stop(5 * time.Second)
			before := metric(t, s, "pipeops_gateway_tunnel_sessions_total")
			time.Sleep(3 * time.Second)
			if n := metric(t, s, "pipeops_gateway_tunnel_sessions_total"); n != before {
				t.Fatalf("the gateway accepted %v sessions for a %s token", n-before, name)
			}
			if resp, err := http.Get(c.AgentURL + "/ready"); err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					t.Fatalf("the agent with a %s token reports ready", name)
				}
			}
			if log, _ := os.ReadFile(c.Agent.LogPath); !strings.Contains(string(log), "refused PIPEOPS_TOKEN") {
				t.Fatalf("the agent log does not say the token was refused:\n%s", c.Agent.LogTail(20))
			}
			// The gateway refuses the token too, should an agent skip
			// registration and dial it directly.
			d := websocket.Dialer{TLSClientConfig: tlsConfig(t, s), HandshakeTimeout: 5 * time.Second}
			wsURL := strings.Replace(s.GatewayHTTPS, "https://", "wss://", 1) + "/ws?supports_yamux=true&cluster_uuid=" + c.ID
			conn, resp, err := d.Dial(wsURL, http.Header{"Authorization": {"Bearer " + token}})
			if err == nil {
				conn.Close()
				t.Fatalf("the gateway accepted a WebSocket with a %s token", name)
			}
			if resp == nil || resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("gateway /ws with a %s token: %v (%v), want 401", name, err, resp)
			}
		})
	}
	refused("garbage", "not-a-token")
	refused("forged signature", forged)
	refused("revoked", revoked)
	refused("user token", user)

	// A good token connects; the Kubernetes path takes only tokens for this
	// cluster.
	liveTok, liveID, err := s.Token(ctx, "agent", 0, c.Name)
	if err != nil {
		t.Fatal(err)
	}
	c.Agent.SetEnv("PIPEOPS_TOKEN", liveTok)
	if err := c.Agent.Start(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the agent's session", 10*time.Second, func() (bool, string) { return agents(t, s) == 1, "" })

	if _, err := s.CreateCluster(ctx, "other"); err != nil {
		t.Fatal(err)
	}
	otherUser, _, err := s.Token(ctx, "user", 0, "other")
	if err != nil {
		t.Fatal(err)
	}
	k8s := func(token string) int { return k8sStatus(t, s, c.ID, token) }
	if code := k8s(user); code != 200 {
		t.Fatalf("/k8s with this cluster's user token: %d, want 200", code)
	}
	for name, tok := range map[string]string{"another cluster's user token": otherUser, "an agent token": liveTok, "garbage": "x"} {
		if code := k8s(tok); code != 401 && code != 403 {
			t.Fatalf("/k8s with %s: %d, want 401 or 403", name, code)
		}
	}

	// Revoked while connected: the session is closed within 30 s and the
	// agent does not get back in.
	if err := s.RevokeToken(ctx, liveID); err != nil {
		t.Fatal(err)
	}
	took := eventually(t, "the revoked agent's session closed", 30*time.Second, func() (bool, string) { return agents(t, s) == 0, "" })
	t.Logf("session closed %s after revocation", took.Round(time.Millisecond))
	before := metric(t, s, "pipeops_gateway_tunnel_sessions_total")
	time.Sleep(3 * time.Second)
	if n := metric(t, s, "pipeops_gateway_tunnel_sessions_total"); n != before || agents(t, s) != 0 {
		t.Fatalf("the revoked agent got back in: %v new sessions", n-before)
	}

	c.Agent.Stop(5 * time.Second)
	time.Sleep(time.Until(expiredAt.Add(31 * time.Second)))
	refused("expired", expired)
}
