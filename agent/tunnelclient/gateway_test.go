package tunnelclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/hashicorp/yamux"

	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/tunnel"
	"github.com/pipeops/tunnel/shared/wsconn"
)

// TestMain fails the package if any goroutine outlives its tests; the
// tests of Run also check each test on its own (testenv.LeakCheck).
func TestMain(m *testing.M) { testenv.MainNoLeaks(m, nil) }

// waitFor bounds every wait for an event in these tests. The events come
// within milliseconds, and every test that measures a retry sets backoffs
// far above it, so reaching it means the behaviour is missing.
const waitFor = 10 * time.Second

// within returns a context that ends at waitFor, or earlier if the test's
// own deadline (go test -timeout) comes first. It does not end with the
// test, as t.Context does, so cleanups can wait with it too.
func within(t *testing.T) (context.Context, context.CancelFunc) {
	d := waitFor
	if dl, ok := t.Deadline(); ok {
		d = min(d, time.Until(dl)-time.Second)
	}
	return context.WithTimeout(context.Background(), d)
}

// recv waits for a value on ch.
func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	ctx, cancel := within(t)
	defer cancel()
	select {
	case v := <-ch:
		return v
	case <-ctx.Done():
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// handshake is one upgrade request the fake gateway received.
type handshake struct {
	at     time.Time
	url    *url.URL
	header http.Header
}

// gatewayOptions shape the fake gateway's answers, per attempt (from 1).
type gatewayOptions struct {
	TLS bool
	// Refuse, when it returns a status, answers the upgrade with it.
	Refuse func(n int) int
	// Hello, when set, replaces gateway_hello: the gateway writes the
	// message it returns (nothing when data is nil) and then only waits
	// for the agent to close the socket, which it reports on dropped.
	Hello func(n int) (typ int, data []byte)
	// Silent makes the gateway, after a good gateway_hello, neither read
	// nor write: a dead link, which answers no WebSocket ping.
	Silent func(n int) bool
}

// fakeGateway is the gateway's side of the protocol built from the shared
// packages alone (shared/tunnel, shared/wsconn, yamux), so the agent's
// client is tested without the gateway's code: it upgrades the socket,
// sends gateway_hello and runs the yamux server over the socket.
type fakeGateway struct {
	t    *testing.T
	opts gatewayOptions
	srv  *httptest.Server
	// URL is the gateway's base URL (http or https, no path).
	URL string
	// TLS trusts the gateway's certificate (nil for a plain gateway).
	TLS *tls.Config

	handshakes chan handshake
	sessions   chan *gatewaySession
	dropped    chan error

	n        atomic.Int32
	mu       sync.Mutex
	sockets  []*websocket.Conn
	muxes    []*yamux.Session
	handlers sync.WaitGroup
}

// gatewaySession is one agent connection the fake gateway took to yamux.
type gatewaySession struct {
	ws   *websocket.Conn // for cutting the TCP connection under the socket
	conn *wsconn.Conn
	mux  *yamux.Session
	// texts are the agent's control messages, in order.
	texts chan tunnel.Message
}

// newGateway starts a fake gateway on 127.0.0.1; it is closed when the
// test ends, after the clients the test starts later.
func newGateway(t *testing.T, opts gatewayOptions) *fakeGateway {
	g := &fakeGateway{t: t, opts: opts,
		handshakes: make(chan handshake, 64), sessions: make(chan *gatewaySession, 16), dropped: make(chan error, 16)}
	g.srv = httptest.NewUnstartedServer(g)
	// A client that does not trust the certificate makes the server log
	// the failed handshake; that failure is what such a test expects.
	g.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	if opts.TLS {
		g.srv.StartTLS()
		pool := x509.NewCertPool()
		pool.AddCert(g.srv.Certificate())
		g.TLS = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	} else {
		g.srv.Start()
	}
	g.URL = g.srv.URL
	t.Cleanup(g.close)
	return g
}

var upgrader = websocket.Upgrader{ReadBufferSize: 32 << 10, WriteBufferSize: 32 << 10}

func (g *fakeGateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	g.handlers.Add(1)
	defer g.handlers.Done()
	n := int(g.n.Add(1))
	select {
	case g.handshakes <- handshake{at: time.Now(), url: r.URL, header: r.Header.Clone()}:
	default:
		g.t.Errorf("fake gateway: more than %d handshakes", cap(g.handshakes))
	}
	if g.opts.Refuse != nil {
		if status := g.opts.Refuse(n); status != 0 {
			http.Error(w, http.StatusText(status), status)
			return
		}
	}
	ws, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // Upgrade has answered
	}
	g.mu.Lock()
	g.sockets = append(g.sockets, ws)
	g.mu.Unlock()

	if g.opts.Hello != nil {
		typ, data := g.opts.Hello(n)
		if data != nil {
			if err := ws.WriteMessage(typ, data); err != nil {
				g.t.Errorf("fake gateway: write hello: %v", err)
			}
		}
		var err error
		for err == nil {
			_, _, err = ws.ReadMessage()
		}
		g.dropped <- err
		ws.Close()
		return
	}
	if err := ws.WriteMessage(websocket.TextMessage, helloMessage(g.t, tunnel.GatewayHello{UseYamux: true, YamuxConfig: tunnel.DefaultYamuxConfig()})); err != nil {
		g.t.Errorf("fake gateway: write hello: %v", err)
		ws.Close()
		return
	}
	if g.opts.Silent != nil && g.opts.Silent(n) {
		return // close leaves the socket open until the test ends
	}
	s := &gatewaySession{ws: ws, texts: make(chan tunnel.Message, 64)}
	s.conn = wsconn.New(ws, wsconn.Options{OnText: func(b []byte) {
		m, err := tunnel.DecodeMessage(b)
		if err != nil {
			g.t.Errorf("fake gateway: agent sent a malformed control message: %v", err)
			return
		}
		select {
		case s.texts <- m:
		default:
			g.t.Errorf("fake gateway: more than %d control messages", cap(s.texts))
		}
	}})
	muxCfg, err := tunnel.MuxConfig(tunnel.DefaultYamuxConfig(), nil)
	if err != nil {
		g.t.Errorf("fake gateway: %v", err)
		s.conn.Close()
		return
	}
	if s.mux, err = yamux.Server(tunnel.CoalesceFrames(s.conn), muxCfg); err != nil {
		g.t.Errorf("fake gateway: yamux server: %v", err)
		s.conn.Close()
		return
	}
	g.mu.Lock()
	g.muxes = append(g.muxes, s.mux)
	g.mu.Unlock()
	g.sessions <- s
	<-s.mux.CloseChan()
	s.conn.Close()
}

// close stops the server and everything it still holds open, and waits
// for its handlers.
func (g *fakeGateway) close() {
	g.srv.Close()
	g.mu.Lock()
	for _, m := range g.muxes {
		m.Close()
	}
	for _, ws := range g.sockets {
		ws.Close()
	}
	g.mu.Unlock()
	g.handlers.Wait()
}

func helloMessage(t *testing.T, h tunnel.GatewayHello) []byte {
	return encode(t, tunnel.TypeGatewayHello, "", h)
}

func encode(t *testing.T, typ, requestID string, payload any) []byte {
	t.Helper()
	m, err := tunnel.NewMessage(typ, payload)
	if err != nil {
		t.Fatal(err)
	}
	m.RequestID = requestID
	b, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// open opens a stream as the gateway does: the header, then first, in one
// write, so the agent must stop reading exactly at the header's end. Reads
// and writes on the stream fail after waitFor rather than hang.
func (s *gatewaySession) open(t *testing.T, h tunnel.StreamHeader, first []byte) *yamux.Stream {
	t.Helper()
	b, err := h.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return s.openRaw(t, append(b, first...))
}

func (s *gatewaySession) openRaw(t *testing.T, first []byte) *yamux.Stream {
	t.Helper()
	st, err := s.mux.OpenStream()
	if err != nil {
		t.Fatalf("open stream: %v", err)
	}
	_ = st.SetDeadline(time.Now().Add(waitFor))
	if len(first) > 0 {
		if _, err := st.Write(first); err != nil {
			t.Fatalf("write stream: %v", err)
		}
	}
	return st
}

// cut ends the session the way the test names.
func (s *gatewaySession) cut(how string) {
	switch how {
	case "close frame":
		_ = s.conn.CloseWithCode(websocket.CloseGoingAway, "restart")
		s.mux.Close()
	case "connection cut":
		// No close frame: the agent sees its reads fail.
		_ = s.ws.NetConn().Close()
		s.mux.Close()
	default:
		panic("unknown cut " + how)
	}
}

// target stands for the services inside the cluster: its Dialer connects
// streams to a real TCP listener, and refuses or fails them for the
// service names "refused" and "unreachable".
type target struct {
	l       net.Listener
	conns   chan net.Conn
	headers chan tunnel.StreamHeader
	closed  string // an address nothing listens on
	wg      sync.WaitGroup
	mu      sync.Mutex
	open    []net.Conn
}

func newTarget(t *testing.T) *target {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gone, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tg := &target{l: l, conns: make(chan net.Conn, 16), headers: make(chan tunnel.StreamHeader, 64), closed: gone.Addr().String()}
	gone.Close()
	tg.wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_ = c.SetDeadline(time.Now().Add(waitFor))
			tg.mu.Lock()
			tg.open = append(tg.open, c)
			tg.mu.Unlock()
			tg.conns <- c
		}
	})
	t.Cleanup(func() {
		l.Close()
		tg.wg.Wait()
		tg.mu.Lock()
		for _, c := range tg.open {
			c.Close()
		}
		tg.mu.Unlock()
	})
	return tg
}

func (tg *target) Dialer() Dialer {
	return DialerFunc(func(ctx context.Context, h tunnel.StreamHeader) (net.Conn, error) {
		tg.headers <- h
		var d net.Dialer
		switch h.Service {
		case "refused":
			return nil, ErrTargetRefused
		case "unreachable":
			return d.DialContext(ctx, "tcp", tg.closed)
		}
		return d.DialContext(ctx, "tcp", tg.l.Addr().String())
	})
}

// runningClient is a Client inside Run, with its callbacks as channels.
type runningClient struct {
	*Client
	logs                    *testenv.LogBuffer
	connected, disconnected chan struct{}
	control                 chan tunnel.Message
	cancel                  context.CancelFunc
	// done is closed when Run has returned err.
	done chan struct{}
	err  error
}

// startClient runs a client with cfg (its callbacks replaced) until stop
// or the end of the test.
func startClient(t *testing.T, cfg Config) *runningClient {
	t.Helper()
	rc := &runningClient{logs: &testenv.LogBuffer{}, connected: make(chan struct{}, 16), disconnected: make(chan struct{}, 16),
		control: make(chan tunnel.Message, 64), done: make(chan struct{})}
	signal := func(ch chan struct{}) func() {
		return func() {
			select {
			case ch <- struct{}{}:
			default:
				t.Errorf("more than %d connects or disconnects", cap(ch))
			}
		}
	}
	cfg.OnConnect, cfg.OnDisconnect = signal(rc.connected), signal(rc.disconnected)
	cfg.OnControl = func(m tunnel.Message) { rc.control <- m }
	cfg.Logger = rc.logs.Logger()
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rc.Client = c
	ctx, cancel := context.WithCancel(t.Context())
	rc.cancel = cancel
	go func() {
		defer close(rc.done)
		rc.err = c.Run(ctx)
	}()
	t.Cleanup(func() {
		rc.stop(t)
		if t.Failed() {
			t.Logf("client log:\n%s", rc.logs.String())
		}
	})
	return rc
}

// stop cancels Run's context and returns what Run returned.
func (rc *runningClient) stop(t *testing.T) error {
	t.Helper()
	rc.cancel()
	recv(t, rc.done, "Run to return")
	return rc.err
}
