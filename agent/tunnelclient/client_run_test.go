package tunnelclient

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/hashicorp/yamux"

	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/tunnel"
)

func refuseAll(t *testing.T) Dialer {
	return DialerFunc(func(_ context.Context, h tunnel.StreamHeader) (net.Conn, error) {
		t.Errorf("no stream expected, got one for %s", h)
		return nil, ErrTargetRefused
	})
}

// TestHandshake checks what the agent puts on the gateway socket: the
// URL and its capability flags, the Bearer token, and on the socket
// itself nothing before the agent's own messages (our agent sends no
// gateway_hello_ack). The gateway's control messages reach OnControl in
// order; a malformed one is dropped and the tunnel stays up.
func TestHandshake(t *testing.T) {
	cases := []struct {
		name      string
		tls       bool
		path      string // appended to the gateway's URL
		cfg       Config
		wantPath  string
		wantQuery map[string]string // "" means absent
	}{
		{
			name: "plain, defaults", cfg: Config{AgentVersion: "v1.2.3"}, wantPath: "/ws",
			wantQuery: map[string]string{"cluster_uuid": "c-1", "agent_version": "v1.2.3",
				"supports_yamux": "true", "supports_streaming": "true", "supports_binary": "true", "supports_websocket": "true",
				"supports_response_streaming": "true", tunnel.CapabilityK8sHTTP: "true", tunnel.CapabilityImpersonation: ""},
		},
		{
			name: "TLS, own path, Kubernetes API over JSON, impersonation", tls: true, path: "/edge/agent?region=eu",
			cfg: Config{KubeAPIOverJSON: true, Impersonates: true}, wantPath: "/edge/agent",
			wantQuery: map[string]string{"cluster_uuid": "c-1", "region": "eu", "supports_yamux": "true",
				tunnel.CapabilityK8sHTTP: "", tunnel.CapabilityImpersonation: "true"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			testenv.LeakCheck(t)
			g := newGateway(t, gatewayOptions{TLS: tc.tls})
			cfg := tc.cfg
			cfg.GatewayURL, cfg.Token, cfg.ClusterUUID, cfg.TLSConfig, cfg.Dialer = g.URL+tc.path, "tok-1", "c-1", g.TLS, refuseAll(t)

			c := startClient(t, cfg)
			hs := recv(t, g.handshakes, "the handshake")
			if hs.url.Path != tc.wantPath {
				t.Errorf("path = %q, want %q", hs.url.Path, tc.wantPath)
			}
			q := hs.url.Query()
			for k, want := range tc.wantQuery {
				if got := q.Get(k); got != want || (want == "") == q.Has(k) {
					t.Errorf("query %s = %q (present %v), want %q", k, got, q.Has(k), want)
				}
			}
			if got := hs.header.Get("Authorization"); got != "Bearer tok-1" {
				t.Errorf("Authorization = %q, want the Bearer token", got)
			}

			s := recv(t, g.sessions, "the tunnel")
			recv(t, c.connected, "OnConnect")
			if !c.Connected() {
				t.Fatal("Connected() = false after OnConnect")
			}
			for _, id := range []string{"a", "b"} {
				m, err := tunnel.NewMessage(tunnel.TypePing, tunnel.Ping{})
				if err != nil {
					t.Fatal(err)
				}
				m.RequestID = id
				if err := c.Send(m); err != nil {
					t.Fatalf("Send: %v", err)
				}
			}
			for _, id := range []string{"a", "b"} {
				if m := recv(t, s.texts, "the agent's message"); m.Type != tunnel.TypePing || m.RequestID != id {
					t.Fatalf("gateway got %s/%s, want ping/%s (and nothing before the agent's own messages)", m.Type, m.RequestID, id)
				}
			}

			for _, b := range [][]byte{
				encode(t, tunnel.TypeHeartbeatAck, "1", tunnel.Empty{}),
				[]byte(`{"type": "pong", "payload": [`),
				[]byte(`{"payload": {}}`),
				encode(t, tunnel.TypePong, "2", tunnel.Empty{}),
			} {
				if err := s.conn.WriteText(b); err != nil {
					t.Fatal(err)
				}
			}
			for _, want := range []string{"heartbeat_ack/1", "pong/2"} {
				if m := recv(t, c.control, "OnControl"); m.Type+"/"+m.RequestID != want {
					t.Fatalf("OnControl got %s/%s, want %s", m.Type, m.RequestID, want)
				}
			}
			if st := c.Stats(); st.Connects != 1 || !c.Connected() {
				t.Fatalf("after malformed control messages: connects %d, connected %v; want the same tunnel", st.Connects, c.Connected())
			}
			if err := c.stop(t); err != nil {
				t.Fatalf("Run = %v, want nil after cancel", err)
			}
			if err := c.Send(tunnel.Message{Type: tunnel.TypePing}); !errors.Is(err, ErrNotConnected) {
				t.Fatalf("Send after Run = %v, want ErrNotConnected", err)
			}
		})
	}
}

// TestUntrustedGatewayCertificate: the agent does not talk to a gateway
// whose certificate it cannot verify.
func TestUntrustedGatewayCertificate(t *testing.T) {
	testenv.LeakCheck(t)
	g := newGateway(t, gatewayOptions{TLS: true})
	c, err := New(Config{GatewayURL: g.URL, Token: "t", ClusterUUID: "c", Dialer: refuseAll(t),
		TLSConfig: &tls.Config{MinVersion: tls.VersionTLS12}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := within(t)
	defer cancel()
	err = c.runOnce(ctx)
	var verr *tls.CertificateVerificationError
	if !errors.As(err, &verr) {
		t.Fatalf("runOnce = %v, want a certificate verification error", err)
	}
	if n := len(g.handshakes); n != 0 {
		t.Fatalf("gateway saw %d upgrade requests over an unverified connection", n)
	}
}

// TestGatewayHelloRefused: the agent starts yamux only after a valid
// gateway_hello that offers it, within HandshakeTimeout; otherwise it
// closes the socket and reports why.
func TestGatewayHelloRefused(t *testing.T) {
	text := func(typ string, payload any) func(*testing.T) (int, []byte) {
		return func(t *testing.T) (int, []byte) { return websocket.TextMessage, encode(t, typ, "", payload) }
	}
	cases := []struct {
		name  string
		hello func(*testing.T) (int, []byte)
		want  string
		is    error
		wait  time.Duration // HandshakeTimeout; 0 for the default
	}{
		{"not JSON", func(*testing.T) (int, []byte) { return websocket.TextMessage, []byte("hello?") }, "gateway_hello", tunnel.ErrMalformedMessage, 0},
		{"another message first", text(tunnel.TypeHeartbeatAck, tunnel.Empty{}), `first message is "heartbeat_ack"`, nil, 0},
		{"binary first", func(*testing.T) (int, []byte) { return websocket.BinaryMessage, []byte{0, 0} }, "binary data before gateway_hello", nil, 0},
		{"no yamux", text(tunnel.TypeGatewayHello, tunnel.GatewayHello{UseYamux: false}), "does not offer yamux", nil, 0},
		{"window yamux refuses", text(tunnel.TypeGatewayHello, tunnel.GatewayHello{UseYamux: true, YamuxConfig: tunnel.YamuxConfig{MaxStreamWindowSize: 1024}}), "yamux config", nil, 0},
		{"no hello in time", func(*testing.T) (int, []byte) { return 0, nil }, "wait for gateway_hello", os.ErrDeadlineExceeded, 500 * time.Millisecond},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			testenv.LeakCheck(t)
			g := newGateway(t, gatewayOptions{Hello: func(int) (int, []byte) { return tc.hello(t) }})
			connected := false
			c, err := New(Config{GatewayURL: g.URL, Token: "t", ClusterUUID: "c", Dialer: refuseAll(t),
				HandshakeTimeout: tc.wait, OnConnect: func() { connected = true }})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := within(t)
			defer cancel()
			err = c.runOnce(ctx)
			if err == nil || !strings.Contains(err.Error(), tc.want) || (tc.is != nil && !errors.Is(err, tc.is)) {
				t.Fatalf("runOnce = %v, want an error with %q (is %v)", err, tc.want, tc.is)
			}
			recv(t, g.dropped, "the agent to close the socket")
			if connected || c.Stats().Connects != 0 || c.Connected() {
				t.Fatal("the agent counted a tunnel that never came up")
			}
		})
	}
}

// TestUnauthorized: a gateway that refuses the token with 401 or 403 gives
// ErrUnauthorized; other refusals do not.
func TestUnauthorized(t *testing.T) {
	cases := []struct {
		status int
		unauth bool
	}{
		{http.StatusUnauthorized, true},
		{http.StatusForbidden, true},
		{http.StatusServiceUnavailable, false},
	}
	for _, tc := range cases {
		t.Run(http.StatusText(tc.status), func(t *testing.T) {
			testenv.LeakCheck(t)
			g := newGateway(t, gatewayOptions{Refuse: func(int) int { return tc.status }})
			c, err := New(Config{GatewayURL: g.URL, Token: "t", ClusterUUID: "c", Dialer: refuseAll(t)})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := within(t)
			defer cancel()
			err = c.runOnce(ctx)
			if errors.Is(err, ErrUnauthorized) != tc.unauth || err == nil || !strings.Contains(err.Error(), http.StatusText(tc.status)) {
				t.Fatalf("runOnce = %v; want ErrUnauthorized %v, with the status", err, tc.unauth)
			}
		})
	}
}

// TestRefusedTokenBacksOff: a token refused right after a tunnel was lost
// is retried with the backoff, not the fast retry meant for a gateway
// restart, and every refusal is logged as an error.
func TestRefusedTokenBacksOff(t *testing.T) {
	testenv.LeakCheck(t)
	const backoff = 600 * time.Millisecond // each wait is within [300ms, 600ms]
	g := newGateway(t, gatewayOptions{Refuse: func(n int) int {
		if n == 1 {
			return 0
		}
		return http.StatusUnauthorized
	}})
	c := startClient(t, Config{GatewayURL: g.URL, Token: "t", ClusterUUID: "c", Dialer: refuseAll(t),
		BackoffInitial: backoff, BackoffMax: backoff, RetryFast: 10 * time.Millisecond})
	recv(t, g.handshakes, "the first handshake")
	recv(t, g.sessions, "the tunnel").cut("connection cut")
	recv(t, c.disconnected, "OnDisconnect")
	second := recv(t, g.handshakes, "the reconnect")
	third := recv(t, g.handshakes, "the retry after 401")
	if gap := third.at.Sub(second.at); gap < backoff/2 {
		t.Fatalf("retried %s after a refused token, want the backoff (at least %s)", gap, backoff/2)
	}
	if logs := c.logs.String(); !strings.Contains(logs, "level=ERROR") || !strings.Contains(logs, ErrUnauthorized.Error()) {
		t.Fatalf("a refused token was not logged as an error:\n%s", logs)
	}
	if n := c.Stats().Connects; n != 1 {
		t.Fatalf("connects = %d, want 1", n)
	}
}

// TestReconnect: when an established tunnel goes (the gateway restarts,
// the link dies) the agent is back at once, not after its backoff, which
// here is far longer than the test waits.
func TestReconnect(t *testing.T) {
	for _, how := range []string{"close frame", "connection cut", "silent gateway"} {
		t.Run(how, func(t *testing.T) {
			testenv.LeakCheck(t)
			g := newGateway(t, gatewayOptions{Silent: func(n int) bool { return how == "silent gateway" && n == 1 }})
			tg := newTarget(t)
			c := startClient(t, Config{GatewayURL: g.URL, Token: "t", ClusterUUID: "c", Dialer: tg.Dialer(),
				BackoffInitial: 4 * waitFor, BackoffMax: 4 * waitFor, RetryFast: 20 * time.Millisecond,
				// The keepalive is what notices the silent gateway.
				PingInterval: 100 * time.Millisecond, PingTimeout: 500 * time.Millisecond})
			header := tunnel.StreamHeader{Protocol: tunnel.ProtocolTCP, Port: 80, Service: "web", Namespace: "shop"}
			recv(t, c.connected, "the first tunnel")
			var idle net.Conn
			if how != "silent gateway" {
				// A stream whose target stays quiet (a watch with no
				// events) must not hold the agent back.
				s := recv(t, g.sessions, "the first tunnel")
				s.open(t, header, []byte("idle"))
				idle = recv(t, tg.conns, "the idle stream's target")
				expectRead(t, idle, "idle")
				s.cut(how)
			}
			recv(t, c.disconnected, "OnDisconnect")
			s := recv(t, g.sessions, "the reconnect")
			recv(t, c.connected, "OnConnect again")
			if n := c.Stats().Connects; n != 2 {
				t.Fatalf("connects = %d, want 2", n)
			}
			if idle != nil {
				if _, err := io.ReadAll(idle); errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatal("the target of a stream of the lost tunnel was left open")
				}
			}
			st := s.open(t, header, []byte("again"))
			conn := recv(t, tg.conns, "the stream's target")
			expectRead(t, conn, "again")
			st.Close()
			conn.Close()
		})
	}
}

// TestStreams: a stream the gateway opens reaches the Dialer with the
// header it was opened with, and carries data both ways, half-closes
// included, over a plain and a TLS gateway.
func TestStreams(t *testing.T) {
	headers := []tunnel.StreamHeader{
		tunnel.KubernetesAPI,
		{Protocol: tunnel.ProtocolTCP, Port: 8080, Service: "web", Namespace: "shop", TunnelID: "tun-1"},
		{Protocol: tunnel.ProtocolUDP, Port: 53, Service: "dns", Namespace: "kube-system"},
	}
	for _, useTLS := range []bool{false, true} {
		name := "plain"
		if useTLS {
			name = "TLS"
		}
		t.Run(name, func(t *testing.T) {
			testenv.LeakCheck(t)
			g := newGateway(t, gatewayOptions{TLS: useTLS})
			tg := newTarget(t)
			c := startClient(t, Config{GatewayURL: g.URL, Token: "t", ClusterUUID: "c", TLSConfig: g.TLS, Dialer: tg.Dialer()})
			s := recv(t, g.sessions, "the tunnel")
			for _, h := range headers {
				st := s.open(t, h, []byte("hello "))
				if got := recv(t, tg.headers, "the Dialer"); got != h {
					t.Fatalf("Dialer got header %+v, want %+v", got, h)
				}
				conn := recv(t, tg.conns, "the stream's target")
				expectRead(t, conn, "hello ")
				exchange(t, st, conn)
			}
			if err := c.stop(t); err != nil {
				t.Fatal(err)
			}
			if st := c.Stats(); st.StreamsTotal != int64(len(headers)) || st.StreamsActive != 0 {
				t.Fatalf("stats %+v, want %d streams, none active", st, len(headers))
			}
		})
	}
}

// exchange sends 1 MiB each way at once, then half-closes the gateway's
// side and the target's side in turn: each end must read all the other
// sent and then EOF.
func exchange(t *testing.T, st *yamux.Stream, conn net.Conn) {
	t.Helper()
	up, down := randomBytes(t, 1<<20), randomBytes(t, 1<<20)
	var wg sync.WaitGroup
	wg.Go(func() {
		if _, err := st.Write(up); err != nil {
			t.Errorf("gateway write: %v", err)
		}
		st.Close() // yamux: a half-close (FIN); reading goes on
	})
	wg.Go(func() {
		if _, err := conn.Write(down); err != nil {
			t.Errorf("target write: %v", err)
		}
		_ = conn.(*net.TCPConn).CloseWrite()
	})
	var gotDown []byte
	var downErr error
	wg.Go(func() { gotDown, downErr = io.ReadAll(st) })
	gotUp, err := io.ReadAll(conn)
	wg.Wait()
	if err != nil || !bytes.Equal(gotUp, up) {
		t.Fatalf("target read %d bytes (err %v), want the %d the gateway sent", len(gotUp), err, len(up))
	}
	if downErr != nil || !bytes.Equal(gotDown, down) {
		t.Fatalf("gateway read %d bytes (err %v), want the %d the target sent", len(gotDown), downErr, len(down))
	}
	conn.Close()
}

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func expectRead(t *testing.T, r io.Reader, want string) {
	t.Helper()
	b := make([]byte, len(want))
	if _, err := io.ReadFull(r, b); err != nil || string(b) != want {
		t.Fatalf("read %q (err %v), want %q", b, err, want)
	}
}

// TestStreamFailures: a stream whose target is refused or unreachable, or
// whose header is bad or late, is closed (the gateway reads a clean EOF
// and nothing else), counted, and the tunnel and its other streams stay
// up (spec §7: close that stream only).
func TestStreamFailures(t *testing.T) {
	testenv.LeakCheck(t)
	g := newGateway(t, gatewayOptions{})
	tg := newTarget(t)
	c := startClient(t, Config{GatewayURL: g.URL, Token: "t", ClusterUUID: "c", Dialer: tg.Dialer(), HeaderTimeout: 500 * time.Millisecond})
	s := recv(t, g.sessions, "the tunnel")
	header := func(service string) []byte {
		b, err := tunnel.StreamHeader{Protocol: tunnel.ProtocolTCP, Port: 80, Service: service, Namespace: "ns"}.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	badVersion := header("web")
	badVersion[0] = 2
	cases := []struct {
		name   string
		first  []byte
		fin    bool // the gateway closes its side right after first
		dialed bool
		count  func(Stats) int64
	}{
		{"refused target", header("refused"), false, true, func(s Stats) int64 { return s.StreamsRefused }},
		{"unreachable target", header("unreachable"), false, true, func(s Stats) int64 { return s.StreamsFailed }},
		{"bad version", badVersion, false, false, func(s Stats) int64 { return s.StreamsMalformed }},
		{"ends inside the header", header("web")[:5], true, false, func(s Stats) int64 { return s.StreamsMalformed }},
		{"no header in time", nil, false, false, func(s Stats) int64 { return s.StreamsMalformed }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := tc.count(c.Stats())
			st := s.openRaw(t, tc.first)
			if tc.fin {
				st.Close()
			}
			if b, err := io.ReadAll(st); err != nil || len(b) != 0 {
				t.Fatalf("gateway read %q, %v; want a clean EOF", b, err)
			}
			if tc.dialed {
				recv(t, tg.headers, "the Dialer")
			}
			if got := tc.count(c.Stats()); got != before+1 {
				t.Fatalf("counter went from %d to %d, want +1", before, got)
			}
			st.Close()

			ok := s.open(t, tunnel.StreamHeader{Protocol: tunnel.ProtocolTCP, Port: 80, Service: "web", Namespace: "ns"}, []byte("still up"))
			recv(t, tg.headers, "the Dialer")
			conn := recv(t, tg.conns, "the next stream's target")
			expectRead(t, conn, "still up")
			ok.Close()
			conn.Close()
			if n := c.Stats().Connects; n != 1 {
				t.Fatalf("connects = %d, want the same tunnel", n)
			}
		})
	}
	if n := len(tg.headers); n != 0 {
		t.Fatalf("the Dialer saw %d streams with bad headers", n)
	}
}

// TestGatewayGoAway is the gateway's drain: it sends GoAway, lets the open
// stream finish, and closes the tunnel. The agent connects again at once
// (behind one address, most likely to another gateway) while the open
// stream keeps working on the old tunnel; the old tunnel's close is then no
// disconnect, as a newer one is up.
func TestGatewayGoAway(t *testing.T) {
	testenv.LeakCheck(t)
	g := newGateway(t, gatewayOptions{})
	tg := newTarget(t)
	c := startClient(t, Config{GatewayURL: g.URL, Token: "t", ClusterUUID: "c", Dialer: tg.Dialer(),
		BackoffInitial: 4 * waitFor, BackoffMax: 4 * waitFor, RetryFast: 20 * time.Millisecond})
	s := recv(t, g.sessions, "the tunnel")
	recv(t, c.connected, "OnConnect")
	st := s.open(t, tunnel.StreamHeader{Protocol: tunnel.ProtocolTCP, Port: 80, Service: "web", Namespace: "ns"}, []byte("a"))
	conn := recv(t, tg.conns, "the stream's target")
	expectRead(t, conn, "a")
	// Kept open for a second, so that the go-away is not taken for a
	// gateway that refuses every tunnel at once.
	time.Sleep(time.Second)
	if err := s.mux.GoAway(); err != nil {
		t.Fatal(err)
	}
	s2 := recv(t, g.sessions, "the new tunnel, while the old one drains")
	recv(t, c.connected, "OnConnect of the new tunnel")
	// The old tunnel's stream carries on both ways.
	if _, err := st.Write([]byte("b")); err != nil {
		t.Fatal(err)
	}
	expectRead(t, conn, "b")
	if _, err := conn.Write([]byte("c")); err != nil {
		t.Fatal(err)
	}
	expectRead(t, st, "c")
	st.Close()
	conn.Close()
	s.mux.Close()
	// The new tunnel carries streams; the old one's end was no disconnect.
	st2 := s2.open(t, tunnel.StreamHeader{Protocol: tunnel.ProtocolTCP, Port: 80, Service: "web", Namespace: "ns"}, []byte("d"))
	conn2 := recv(t, tg.conns, "the new tunnel's stream")
	expectRead(t, conn2, "d")
	st2.Close()
	conn2.Close()
	select {
	case <-c.disconnected:
		t.Fatal("OnDisconnect for the old tunnel while the new one is up")
	case <-time.After(100 * time.Millisecond):
	}
	if !c.Connected() {
		t.Fatal("not connected after the old tunnel closed")
	}
}

// TestStop: when its context ends, Run refuses new streams (GoAway), lets
// the open ones finish for up to DrainTimeout, and returns nil with every
// goroutine gone, also when it is between attempts or in a handshake.
func TestStop(t *testing.T) {
	header := tunnel.StreamHeader{Protocol: tunnel.ProtocolTCP, Port: 80, Service: "web", Namespace: "ns"}

	t.Run("waits for the open stream", func(t *testing.T) {
		testenv.LeakCheck(t)
		g := newGateway(t, gatewayOptions{})
		tg := newTarget(t)
		c := startClient(t, Config{GatewayURL: g.URL, Token: "t", ClusterUUID: "c", Dialer: tg.Dialer(), DrainTimeout: 4 * waitFor})
		s := recv(t, g.sessions, "the tunnel")
		st := s.open(t, header, []byte("a"))
		conn := recv(t, tg.conns, "the stream's target")
		expectRead(t, conn, "a")

		c.cancel()
		// The gateway learns of the GoAway when it next opens a stream;
		// streams it opens before that are the agent's to close.
		ctx, cancel := within(t)
		defer cancel()
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			extra, err := s.mux.OpenStream()
			if errors.Is(err, yamux.ErrRemoteGoAway) {
				break
			}
			if err != nil {
				t.Fatalf("open after the agent's stop: %v, want ErrRemoteGoAway", err)
			}
			extra.Close()
			select {
			case <-tick.C:
			case <-ctx.Done():
				t.Fatal("the agent sent no GoAway when its context ended")
			}
		}

		if _, err := st.Write([]byte("b")); err != nil {
			t.Fatal(err)
		}
		expectRead(t, conn, "b")
		if _, err := conn.Write([]byte("c")); err != nil {
			t.Fatal(err)
		}
		expectRead(t, st, "c")
		select {
		case <-c.done:
			t.Fatalf("Run returned (%v) with a stream open and DrainTimeout not reached", c.err)
		default:
		}
		st.Close()
		if b, err := io.ReadAll(conn); err != nil || len(b) != 0 {
			t.Fatalf("target read %q, %v after the gateway's close; want EOF", b, err)
		}
		conn.Close()
		recv(t, c.done, "Run to return once the stream ended")
		if c.err != nil {
			t.Fatalf("Run = %v, want nil", c.err)
		}
		recv(t, s.mux.CloseChan(), "the tunnel to close")
	})

	t.Run("DrainTimeout bounds the wait", func(t *testing.T) {
		testenv.LeakCheck(t)
		const drain = 300 * time.Millisecond
		g := newGateway(t, gatewayOptions{})
		tg := newTarget(t)
		c := startClient(t, Config{GatewayURL: g.URL, Token: "t", ClusterUUID: "c", Dialer: tg.Dialer(), DrainTimeout: drain})
		s := recv(t, g.sessions, "the tunnel")
		st := s.open(t, header, []byte("a"))
		conn := recv(t, tg.conns, "the stream's target")
		expectRead(t, conn, "a")
		start := time.Now()
		if err := c.stop(t); err != nil {
			t.Fatalf("Run = %v, want nil", err)
		}
		if d := time.Since(start); d < drain {
			t.Fatalf("Run returned after %s with a stream open, want it to wait DrainTimeout (%s)", d, drain)
		}
		// Both ends of the stream end with the tunnel, not at their
		// read deadlines.
		recv(t, s.mux.CloseChan(), "the tunnel to close")
		if _, err := io.ReadAll(st); errors.Is(err, yamux.ErrTimeout) {
			t.Fatal("the gateway's stream outlived the tunnel")
		}
		if _, err := io.ReadAll(conn); errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal("the target's connection outlived the tunnel")
		}
	})

	t.Run("between attempts", func(t *testing.T) {
		testenv.LeakCheck(t)
		g := newGateway(t, gatewayOptions{Refuse: func(int) int { return http.StatusServiceUnavailable }})
		c := startClient(t, Config{GatewayURL: g.URL, Token: "t", ClusterUUID: "c", Dialer: refuseAll(t),
			BackoffInitial: 4 * waitFor, BackoffMax: 4 * waitFor})
		recv(t, g.handshakes, "the first attempt")
		if err := c.stop(t); err != nil {
			t.Fatalf("Run = %v, want nil", err)
		}
	})

	t.Run("in the handshake", func(t *testing.T) {
		testenv.LeakCheck(t)
		g := newGateway(t, gatewayOptions{Hello: func(int) (int, []byte) { return 0, nil }})
		c := startClient(t, Config{GatewayURL: g.URL, Token: "t", ClusterUUID: "c", Dialer: refuseAll(t), HandshakeTimeout: 4 * waitFor})
		recv(t, g.handshakes, "the handshake")
		if err := c.stop(t); err != nil {
			t.Fatalf("Run = %v, want nil", err)
		}
		recv(t, g.dropped, "the agent to close the socket")
	})
}

// TestRepeatedFailureLoggedOnce: an agent pointed at a server that does
// not serve the agent WebSocket says so, with what to check, once, however
// often it retries.
func TestRepeatedFailureLoggedOnce(t *testing.T) {
	testenv.LeakCheck(t)
	g := newGateway(t, gatewayOptions{Refuse: func(int) int { return http.StatusNotFound }})
	c := startClient(t, Config{GatewayURL: g.URL, Token: "t", ClusterUUID: "c", Dialer: refuseAll(t),
		BackoffInitial: 10 * time.Millisecond, BackoffMax: 20 * time.Millisecond})
	for i := range 6 {
		recv(t, g.handshakes, fmt.Sprintf("handshake %d", i+1))
	}
	logs := c.logs.String()
	if n := strings.Count(logs, "tunnel down; reconnecting"); n != 1 {
		t.Fatalf("the same failure was logged %d times in 6 attempts, want once:\n%s", n, logs)
	}
	if !strings.Contains(logs, "404") || !strings.Contains(logs, "pipeops gateway (it serves /ws)") {
		t.Fatalf("the failure does not say what to check:\n%s", logs)
	}
}

func TestHandshakeHint(t *testing.T) {
	for status, want := range map[int]string{
		http.StatusNotFound:           "pipeops gateway",
		http.StatusBadGateway:         "proxy or load balancer",
		http.StatusServiceUnavailable: "proxy or load balancer",
		http.StatusOK:                 "WebSocket upgrades",
		http.StatusFound:              "WebSocket upgrades",
		http.StatusTeapot:             "",
	} {
		if got := handshakeHint(status); (want == "" && got != "") || !strings.Contains(got, want) {
			t.Errorf("handshakeHint(%d) = %q, want one mentioning %q", status, got, want)
		}
	}
}
