package session

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/pipeops/tunnel/agent/tunnelclient"
	"github.com/pipeops/tunnel/shared/tunnel"
)

// TestStreamWindowsPerDirection checks that each direction of a stream runs
// with its own window: toward the agent the one announced in gateway_hello
// (AgentStreamWindow), toward the gateway the gateway's own (Yamux). The
// agent's target is one end of a net.Pipe that nobody reads or writes until
// the test does, so what a writer gets in before it blocks is the window
// plus what the copy in between holds.
func TestStreamWindowsPerDirection(t *testing.T) {
	const (
		gatewayWindow = 256 << 10
		agentWindow   = 2 << 20
		// The agent's copy between stream and target holds up to 256 KiB
		// (tunnel.CopyAdaptive); a writer's last chunk may be in flight.
		slack = 256<<10 + 2*chunk
		chunk = 32 << 10
		// The stream header goes first, inside the same window.
		header = 1 << 10
	)
	e := newEnv(t, false)
	// Before any agent connects, so every session uses them.
	e.reg.cfg.Yamux.MaxStreamWindowSize = gatewayWindow
	e.reg.cfg.AgentStreamWindow = agentWindow
	targets := make(chan net.Conn, 1)
	e.startAgent("c1", func(c *tunnelclient.Config) {
		c.Dialer = tunnelclient.DialerFunc(func(context.Context, tunnel.StreamHeader) (net.Conn, error) {
			ours, theirs := net.Pipe()
			targets <- theirs
			return ours, nil
		})
	})
	s := e.waitSession("c1", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := s.Dial(ctx, echoTarget)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	var target net.Conn
	select {
	case target = <-targets:
	case <-ctx.Done():
		t.Fatal("the agent did not dial its target")
	}
	defer target.Close()

	// fill writes to c until a write makes no progress for a second, and
	// returns how much went in.
	fill := func(c net.Conn) int {
		buf := make([]byte, chunk)
		total := 0
		for total < 8*agentWindow { // bound: far past either window
			_ = c.SetWriteDeadline(time.Now().Add(time.Second))
			n, err := c.Write(buf)
			total += n
			if ne := net.Error(nil); errors.As(err, &ne) && ne.Timeout() {
				return total
			}
			if err != nil {
				t.Fatalf("write: %v", err)
			}
		}
		t.Fatalf("%d bytes written and no write blocked", total)
		return 0
	}

	toAgent := fill(stream)
	t.Logf("gateway to agent: %d KiB in before the writer blocked (agent window %d KiB)", toAgent>>10, agentWindow>>10)
	if toAgent < agentWindow-header || toAgent > agentWindow+slack {
		t.Errorf("gateway to agent: %d bytes in before the writer blocked, want the agent window %d (+ up to %d)", toAgent, agentWindow, slack)
	}
	toGateway := fill(target)
	t.Logf("agent to gateway: %d KiB in before the writer blocked (gateway window %d KiB)", toGateway>>10, gatewayWindow>>10)
	if toGateway < gatewayWindow-header || toGateway > gatewayWindow+slack {
		t.Errorf("agent to gateway: %d bytes in before the writer blocked, want the gateway window %d (+ up to %d)", toGateway, gatewayWindow, slack)
	}
}
