package peers

import (
	"context"
	"errors"
	"net"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/gateway/session"
	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/tunnel"
)

// nopStore is a Store with nothing in it.
type nopStore struct{ tunnels []controlplane.GatewayTunnel }

func (nopStore) GatewayStarted(context.Context, string, string) error { return nil }
func (nopStore) GatewaySeen(context.Context, string, string) error    { return nil }
func (nopStore) GatewayStopped(context.Context, string) error         { return nil }
func (nopStore) SetGatewayTunnel(context.Context, string, controlplane.GatewayTunnel) error {
	return nil
}
func (s nopStore) GatewayTunnels(context.Context, time.Time) ([]controlplane.GatewayTunnel, error) {
	return s.tunnels, nil
}
func (nopStore) FollowTunnels(ctx context.Context, listening, _ func()) error {
	listening()
	<-ctx.Done()
	return ctx.Err()
}

// TestDialFailsOver gives a cluster two holders, one of which is gone: the
// stream is opened through the other, the gone one is passed over for
// DownFor and logged once, and this gateway's own record is never a
// candidate.
func TestDialFailsOver(t *testing.T) {
	testenv.LeakCheck(t)
	echo := startEcho(t)
	holderSide, err := New(Config{Store: nopStore{}, ID: "gw-b", URL: "http://127.0.0.1:1", Secret: testSecret, Local: fakeLocal{target: echo}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(holderSide.Handler())
	defer func() { srv.Close(); holderSide.Close() }()
	gone, _ := net.Listen("tcp", "127.0.0.1:0")
	goneURL := "http://" + gone.Addr().String()
	gone.Close() // nothing listens there any more

	now := time.Now()
	store := nopStore{tunnels: []controlplane.GatewayTunnel{
		{ClusterUUID: "c1", GatewayID: "gw-a", PeerURL: "http://127.0.0.1:2", Sessions: 1},
		{ClusterUUID: "c1", GatewayID: "gw-gone", PeerURL: goneURL, Sessions: 1},
		{ClusterUUID: "c1", GatewayID: "gw-b", PeerURL: srv.URL, Sessions: 1, K8sHTTP: true},
	}}
	var logs strings.Builder
	p, err := New(Config{Store: store, ID: "gw-a", URL: "http://127.0.0.1:2", Secret: testSecret, Local: fakeLocal{err: session.ErrAgentOffline},
		Now: func() time.Time { return now }, Logger: testLogger(&logs)})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.reloadNow(context.Background()); err != nil {
		t.Fatal(err)
	}
	if r, ok := p.Reach("c1"); !ok || r.Local != nil {
		t.Fatalf("reach: %+v %v", r, ok)
	}
	if _, ok := p.Reach("c2"); ok {
		t.Fatal("reach of a cluster nobody holds")
	}
	h := tunnel.StreamHeader{Protocol: tunnel.ProtocolTCP, Port: 80, Service: "web", Namespace: "shop"}
	for i := range 6 {
		c, err := p.Dial(context.Background(), "c1", h)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		c.Close()
		if cands := p.candidates("c1"); len(cands) != 2 || (strings.Contains(logs.String(), "gw-gone") && cands[1].id != "gw-gone") {
			t.Fatalf("candidates after dial %d: %+v", i, cands)
		}
	}
	if n := strings.Count(logs.String(), "peer gateway unreachable"); n != 1 {
		t.Errorf("the gone peer was logged %d times, want once:\n%s", n, logs.String())
	}
	now = now.Add(DefaultDownFor + time.Second)
	if err := p.reloadNow(context.Background()); err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	_, down := p.down["gw-gone"]
	p.mu.Unlock()
	if down {
		t.Error("the gone peer is still passed over after DownFor")
	}
	if _, err := p.Dial(context.Background(), "c2", h); !errors.Is(err, session.ErrAgentOffline) {
		t.Errorf("dial of a cluster nobody holds: %v", err)
	}
}
