// Package tunneltest runs both ends of a tunnel inside a test: a gateway's
// session.Registry behind a real HTTP or HTTPS listener, and agent
// tunnelclient.Clients connected to it, or to any other gateway.
//
// Everything started here stops when the test ends, in t.Cleanup order: an
// agent started after its gateway stops before it. Tests that must stop an
// agent at a chosen moment (before a stand-in target lets go of its
// streams, say) call Agent.Stop themselves; the cleanup then finds it
// stopped.
//
// The tests of package session cannot use this package: it imports
// session, and those tests are internal to it.
package tunneltest

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/pipeops/tunnel/agent/tunnelclient"
	"github.com/pipeops/tunnel/gateway/session"
	"github.com/pipeops/tunnel/shared/auth"
	"github.com/pipeops/tunnel/shared/tunnel"
)

// KeyID is the key id of the key a Gateway signs tokens with.
const KeyID = "k"

// waitTimeout bounds every wait of this package: far above what a
// connection on loopback takes, even under -race on a busy machine.
const waitTimeout = 10 * time.Second

// Options configure StartGateway. The zero value is a plain-HTTP gateway
// that accepts agent tokens signed by its own key.
type Options struct {
	// Session configures the registry. A nil Session.Auth accepts the agent
	// JWTs that Gateway.Sign makes (the gateway's JWTAuthenticator over
	// Gateway.Verifier).
	Session session.Config
	// TLS serves over HTTPS with httptest's certificate, which
	// Gateway.ClientTLS trusts.
	TLS bool
}

// Gateway is a session registry serving the agent endpoint (/ws) on a real
// listener, and the key its agents' tokens are signed with. Its fields are
// set by StartGateway and not to be changed.
type Gateway struct {
	Registry *session.Registry
	// Mux routes the listener's requests: /ws to Registry. A test adds its
	// own handlers (a Kubernetes API path, a JWKS) to it at any time.
	Mux    *http.ServeMux
	Server *httptest.Server
	// ClientTLS trusts Server's certificate; nil without Options.TLS.
	ClientTLS *tls.Config
	// Key is the key Sign signs with, under KeyID; Verifier trusts its
	// public half and nothing else.
	Key      ed25519.PrivateKey
	Verifier *auth.Verifier

	t   testing.TB
	ids atomic.Int64
}

// StartGateway starts a Gateway that closes when t ends: first the
// registry, with every session, then the listener.
func StartGateway(t testing.TB, opts Options) *Gateway {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	g := &Gateway{
		Key:      priv,
		Verifier: &auth.Verifier{Keys: auth.StaticKeys{KeyID: pub}},
		Mux:      http.NewServeMux(),
		t:        t,
	}
	cfg := opts.Session
	if cfg.Auth == nil {
		cfg.Auth = session.JWTAuthenticator{Verifier: g.Verifier}
	}
	g.Registry, err = session.NewRegistry(cfg)
	if err != nil {
		t.Fatal(err)
	}
	g.Mux.Handle("/ws", g.Registry)
	if opts.TLS {
		g.Server = httptest.NewTLSServer(g.Mux)
		g.ClientTLS = &tls.Config{RootCAs: g.Server.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs}
	} else {
		g.Server = httptest.NewServer(g.Mux)
	}
	t.Cleanup(func() {
		g.Registry.Close()
		g.Server.Close()
	})
	return g
}

// Sign returns c signed with the gateway's key. A token without an id gets
// one no other token of this Gateway has, and one without an expiry
// expires in an hour.
func (g *Gateway) Sign(c *auth.Claims) string {
	g.t.Helper()
	if c.ID == "" {
		c.ID = fmt.Sprintf("%s-%d", c.Kind, g.ids.Add(1))
	}
	if c.ExpiresAt == nil {
		c.ExpiresAt = jwt.NewNumericDate(time.Now().Add(time.Hour))
	}
	tok, err := auth.Sign(g.Key, KeyID, c)
	if err != nil {
		g.t.Fatal(err)
	}
	return tok
}

// AgentConfig is the configuration of an agent of cluster connecting to
// g: its URL and TLS, an agent token for cluster signed by g, a Dialer
// that refuses every target, and reconnects within a fraction of a second.
func (g *Gateway) AgentConfig(cluster string) tunnelclient.Config {
	cfg := tunnelclient.Config{
		GatewayURL:     g.Server.URL,
		Token:          g.Sign(&auth.Claims{Kind: auth.KindAgent, ClusterID: cluster}),
		ClusterUUID:    cluster,
		AgentVersion:   "test",
		Dialer:         RefuseAll,
		BackoffInitial: 20 * time.Millisecond,
		BackoffMax:     200 * time.Millisecond,
	}
	if g.ClientTLS != nil {
		cfg.TLSConfig = g.ClientTLS.Clone()
	}
	return cfg
}

// Connect starts an agent of cluster with AgentConfig, changed by edit
// when it is not nil, and waits until the gateway holds a new session for
// cluster and the agent has read the gateway's hello. It returns the agent
// and its session.
func (g *Gateway) Connect(cluster string, edit func(*tunnelclient.Config)) (*Agent, *session.Session) {
	g.t.Helper()
	old, _ := g.Registry.Session(cluster)
	cfg := g.AgentConfig(cluster)
	if edit != nil {
		edit(&cfg)
	}
	a := StartAgent(g.t, cfg)
	s := g.WaitSession(cluster, old)
	a.WaitConnected()
	return a, s
}

// WaitSession waits until the gateway holds a session for cluster other
// than old (nil for any), and returns it.
func (g *Gateway) WaitSession(cluster string, old *session.Session) *session.Session {
	g.t.Helper()
	var s *session.Session
	waitFor(g.t, "a new session of cluster "+cluster, func() bool {
		cur, ok := g.Registry.Session(cluster)
		s = cur
		return ok && cur != old
	})
	return s
}

// RefuseAll is a Dialer for agents that serve no target.
var RefuseAll tunnelclient.Dialer = tunnelclient.DialerFunc(func(context.Context, tunnel.StreamHeader) (net.Conn, error) {
	return nil, tunnelclient.ErrTargetRefused
})

// Agent is a tunnelclient.Client running until Stop or the end of the
// test that started it.
type Agent struct {
	Client *tunnelclient.Client

	t      testing.TB
	cancel context.CancelFunc
	done   chan struct{}
}

// StartAgent runs a Client with cfg (a nil Dialer refuses every target)
// until t ends. It does not wait for the tunnel: see WaitConnected.
func StartAgent(t testing.TB, cfg tunnelclient.Config) *Agent {
	t.Helper()
	if cfg.Dialer == nil {
		cfg.Dialer = RefuseAll
	}
	c, err := tunnelclient.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &Agent{Client: c, t: t, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(a.done)
		_ = c.Run(ctx)
	}()
	t.Cleanup(a.Stop)
	return a
}

// Stop ends the agent and waits for its Run to return, which waits for
// the agent's open streams up to Config.DrainTimeout. Any number of
// goroutines may call it, any number of times.
func (a *Agent) Stop() {
	a.cancel()
	<-a.done
}

// WaitConnected waits until the agent has a tunnel up.
func (a *Agent) WaitConnected() {
	a.t.Helper()
	waitFor(a.t, "the agent's tunnel", a.Client.Connected)
}

// waitFor polls cond until it holds, and fails t if it does not within
// waitTimeout. Neither side says when a session comes up other than
// through hooks the tests may want for themselves, so this polls.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", waitTimeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
