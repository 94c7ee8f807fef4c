package tunneltest_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pipeops/tunnel/agent/tunnelclient"
	"github.com/pipeops/tunnel/shared/auth"
	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/testenv/tunneltest"
	"github.com/pipeops/tunnel/shared/tunnel"
)

func TestMain(m *testing.M) { testenv.MainNoLeaks(m, nil) }

var echoTarget = tunnel.StreamHeader{Protocol: tunnel.ProtocolTCP, Port: 7, Service: "echo", Namespace: "default"}

// echoDialer serves echoTarget in memory and refuses everything else.
var echoDialer = tunnelclient.DialerFunc(func(_ context.Context, h tunnel.StreamHeader) (net.Conn, error) {
	if h != echoTarget {
		return nil, tunnelclient.ErrTargetRefused
	}
	agentSide, target := net.Pipe()
	go func() {
		defer target.Close()
		_, _ = io.Copy(target, target)
	}()
	return agentSide, nil
})

// TestConnect: over HTTP and HTTPS, Connect returns once the session is
// usable, streams reach the agent's Dialer, and Stop, called from several
// goroutines at once, ends the session.
func TestConnect(t *testing.T) {
	for _, useTLS := range []bool{false, true} {
		t.Run(fmt.Sprintf("tls=%v", useTLS), func(t *testing.T) {
			testenv.LeakCheck(t)
			g := tunneltest.StartGateway(t, tunneltest.Options{TLS: useTLS})
			if got := strings.HasPrefix(g.Server.URL, "https://"); got != useTLS || (g.ClientTLS != nil) != useTLS {
				t.Fatalf("listener %s, client TLS %v: want TLS %v", g.Server.URL, g.ClientTLS != nil, useTLS)
			}
			a, s := g.Connect("c1", func(c *tunnelclient.Config) { c.Dialer = echoDialer })
			if !a.Client.Connected() {
				t.Fatal("Connect returned before the agent's tunnel was up")
			}
			if cur, ok := g.Registry.Session("c1"); !ok || cur != s {
				t.Fatal("Connect returned a session the registry does not hold")
			}

			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			conn, err := g.Registry.Dial(ctx, "c1", echoTarget)
			if err != nil {
				t.Fatal(err)
			}
			_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
			got := make([]byte, 5)
			if _, err := conn.Write([]byte("hello")); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(conn, got); err != nil || string(got) != "hello" {
				t.Fatalf("echo through the tunnel: %q %v", got, err)
			}
			conn.Close()
			// A target the Dialer refuses gets its stream closed.
			refused, err := g.Registry.Dial(ctx, "c1", tunnel.KubernetesAPI)
			if err != nil {
				t.Fatal(err)
			}
			_ = refused.SetDeadline(time.Now().Add(10 * time.Second))
			if n, err := refused.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
				t.Fatalf("refused target: read %d, %v; want EOF", n, err)
			}
			refused.Close()

			var wg sync.WaitGroup
			for range 3 {
				wg.Go(a.Stop)
			}
			wg.Wait()
			select {
			case <-s.Done():
			case <-time.After(10 * time.Second):
				t.Fatal("the session outlived its agent")
			}
			if a.Client.Connected() {
				t.Fatal("the agent is connected after Stop")
			}
		})
	}
}

// TestReconnectReplaces: a second agent of a cluster gets a new session,
// and WaitSession tells it from the first.
func TestReconnectReplaces(t *testing.T) {
	testenv.LeakCheck(t)
	g := tunneltest.StartGateway(t, tunneltest.Options{})
	_, first := g.Connect("c1", func(c *tunnelclient.Config) { c.BackoffInitial, c.BackoffMax = time.Hour, time.Hour })
	_, second := g.Connect("c1", nil)
	if second == first {
		t.Fatal("Connect returned the replaced session")
	}
	select {
	case <-first.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the replaced session is still open")
	}
}

// TestSign: Sign's tokens pass the Gateway's own Verifier only, each with
// an id of its own and an expiry.
func TestSign(t *testing.T) {
	g := tunneltest.StartGateway(t, tunneltest.Options{})
	other := tunneltest.StartGateway(t, tunneltest.Options{})
	ctx := context.Background()
	ids := map[string]bool{}
	for range 3 {
		tok := g.Sign(&auth.Claims{Kind: auth.KindUser, Clusters: []string{"c1"}})
		c, err := g.Verifier.Verify(ctx, tok, auth.KindUser)
		if err != nil {
			t.Fatal(err)
		}
		if ids[c.ID] || c.ID == "" {
			t.Fatalf("token id %q repeated or empty", c.ID)
		}
		ids[c.ID] = true
		if c.ExpiresAt == nil || time.Until(c.ExpiresAt.Time) < 50*time.Minute {
			t.Fatalf("expiry %v, want about an hour away", c.ExpiresAt)
		}
		if _, err := other.Verifier.Verify(ctx, tok, auth.KindUser); err == nil {
			t.Fatal("another gateway's Verifier accepted the token")
		}
	}
}
