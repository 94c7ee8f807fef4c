package tunnelclient

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pipeops/tunnel/shared/testenv/hostedsim"
	"github.com/pipeops/tunnel/shared/tunnel"
)

// TestDeliverAndKubeAPIOverJSON runs the client against the hosted PipeOps
// simulator: Deliver sees control messages first, on the read goroutine,
// and those it takes never reach OnControl; the others do, in order.
// KubeAPIOverJSON leaves the Kubernetes HTTP capability out of the URL,
// and OnDisconnect is told when the socket goes.
func TestDeliverAndKubeAPIOverJSON(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	sim := hostedsim.Start(t, hostedsim.Options{})

	var mu sync.Mutex
	var delivered, controlled []string
	controlCh := make(chan struct{}, 16)
	disconnected := make(chan struct{}, 4)
	c, err := New(Config{
		GatewayURL: strings.Replace(sim.URL, "http://", "ws://", 1), Token: sim.Token, ClusterUUID: sim.ClusterUUID,
		Dialer: DialerFunc(func(context.Context, tunnel.StreamHeader) (net.Conn, error) { return nil, ErrTargetRefused }),
		Deliver: func(m tunnel.Message) bool {
			mu.Lock()
			defer mu.Unlock()
			delivered = append(delivered, m.Type+"/"+m.RequestID)
			return strings.HasPrefix(m.Type, "proxy_")
		},
		OnControl: func(m tunnel.Message) {
			mu.Lock()
			controlled = append(controlled, m.Type+"/"+m.RequestID)
			mu.Unlock()
			controlCh <- struct{}{}
		},
		OnDisconnect:    func() { disconnected <- struct{}{} },
		KubeAPIOverJSON: true,
		BackoffInitial:  10 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() {
		cancel()
		<-done
		sim.Close()
		goleak.VerifyNone(t, ignore)
	}()
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := sim.WaitConnected(wctx); err != nil {
		t.Fatal(err)
	}
	q := sim.GatewayURLs()[0].Query()
	if q.Has(tunnel.CapabilityK8sHTTP) || q.Get("supports_yamux") != "true" {
		t.Fatalf("gateway query %v", q)
	}

	for _, m := range []struct{ typ, id string }{
		{tunnel.TypeProxyRequest, "a"}, {tunnel.TypeHeartbeatAck, "b"}, {tunnel.TypeProxyCancel, "a"}, {tunnel.TypeRegisterInProgress, "c"},
	} {
		if err := sim.SendPayload(m.typ, m.id, tunnel.Empty{}); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		select {
		case <-controlCh:
		case <-wctx.Done():
			t.Fatal("OnControl not called")
		}
	}
	mu.Lock()
	gotD, gotC := strings.Join(delivered, " "), strings.Join(controlled, " ")
	mu.Unlock()
	if gotD != "proxy_request/a heartbeat_ack/b proxy_cancel/a register_in_progress/c" {
		t.Errorf("Deliver saw %q", gotD)
	}
	if gotC != "heartbeat_ack/b register_in_progress/c" {
		t.Errorf("OnControl saw %q", gotC)
	}

	sim.Close()
	select {
	case <-disconnected:
	case <-wctx.Done():
		t.Fatal("OnDisconnect not called when the gateway went away")
	}
}
