package fleet

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/pipeops/tunnel/gateway/session"
	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/tunnel"
)

func TestMain(m *testing.M) { testenv.MainNoLeaks(m, nil) }

// tokenIsCluster accepts any token "agent-token-<cluster>".
type tokenIsCluster struct{}

func (tokenIsCluster) AuthenticateAgent(_ context.Context, token string) (session.AgentIdentity, error) {
	c, ok := strings.CutPrefix(token, "agent-token-")
	if !ok {
		return session.AgentIdentity{}, fmt.Errorf("bad token")
	}
	return session.AgentIdentity{Cluster: c}, nil
}

// acker answers every heartbeat, as the gateway's recorder does.
type acker struct{}

func (acker) HandleControl(_ context.Context, s *session.Session, m tunnel.Message) {
	if m.Type == tunnel.TypeHeartbeat {
		_ = s.Send(tunnel.TypeHeartbeatAck, tunnel.HeartbeatAck{}, m.RequestID)
	}
}

func TestFleetConnectsHeartbeatsAndReconnects(t *testing.T) {
	reg, err := session.NewRegistry(session.Config{Auth: tokenIsCluster{}, Control: acker{}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewTLSServer(reg)
	defer srv.Close()
	defer reg.Close()

	const n = 20
	ids := make([]Identity, n)
	for i := range ids {
		c := fmt.Sprintf("c%02d", i)
		ids[i] = Identity{ClusterUUID: c, Token: "agent-token-" + c}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	f, err := Start(ctx, Config{
		GatewayURL: "wss://" + srv.Listener.Addr().String() + "/ws",
		TLS:        &tls.Config{RootCAs: srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs},
		Agents:     ids, Heartbeat: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if up, err := f.WaitUp(ctx, 1); err != nil {
		t.Fatalf("%d up: %v", up, err)
	}
	if got := len(reg.Clusters()); got != n {
		t.Fatalf("gateway sees %d agents, want %d", got, n)
	}
	deadline := time.Now().Add(10 * time.Second)
	for f.Stats().Acks < 2*n && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if st := f.Stats(); st.Acks < 2*n || st.SendErrors != 0 {
		t.Fatalf("stats %+v: want at least two acknowledged heartbeats per agent and no send errors", st)
	}

	// Every session cut, as a gateway restart does: every agent comes back.
	before := time.Now()
	for _, s := range reg.Sessions() {
		s.Close()
	}
	if up, err := f.WaitBack(ctx, before); err != nil {
		t.Fatalf("%d back: %v", up, err)
	}
	failures := f.Failures()
	total := 0
	for _, n := range failures {
		total += n
	}
	if total < n {
		t.Fatalf("failures %v: want at least one per agent (its tunnel closing)", failures)
	}
	for i, m := range f.Marks() {
		if m.Connects < 2 || m.Down.Before(before) || !m.Up.After(m.Down) {
			t.Fatalf("agent %d: %+v, want a disconnect after %v and a later reconnect", i, m, before)
		}
	}
	f.Close()
	if f.Up() != 0 {
		t.Fatalf("%d agents still up after Close", f.Up())
	}
}

func TestStartRejectsBadConfig(t *testing.T) {
	_, err := Start(context.Background(), Config{GatewayURL: "wss://127.0.0.1:1/ws", Agents: []Identity{{ClusterUUID: "c"}}})
	if err == nil {
		t.Fatal("an agent without a token should be refused")
	}
}
