package session

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"

	"github.com/pipeops/tunnel/agent/tunnelclient"
	"github.com/pipeops/tunnel/shared/auth"
	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/tunnel"
)

func TestMain(m *testing.M) { testenv.MainNoLeaks(m, nil) }

// env is a gateway registry behind a real HTTP(S) server, an echo target and
// a signer of agent tokens.
type env struct {
	t        testing.TB
	reg      *Registry
	srv      *httptest.Server
	key      ed25519.PrivateKey
	echoAddr string
	tls      *tls.Config // client TLS config when the server is TLS
}

func newEnv(t testing.TB, useTLS bool) *env {
	t.Helper()
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	reg, err := NewRegistry(Config{
		Auth:   JWTAuthenticator{Verifier: &auth.Verifier{Keys: auth.StaticKeys{"k1": pub}}},
		Logger: testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/ws", reg)
	e := &env{t: t, reg: reg, key: priv}
	if useTLS {
		e.srv = httptest.NewTLSServer(mux)
		e.tls = &tls.Config{RootCAs: e.srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs}
	} else {
		e.srv = httptest.NewServer(mux)
	}
	e.echoAddr = startEcho(t)
	t.Cleanup(func() {
		reg.Close()
		e.srv.Close()
	})
	return e
}

func testLogger(testing.TB) *slog.Logger {
	if os.Getenv("TUNNEL_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func (e *env) token(cluster string) string {
	tok, err := auth.Sign(e.key, "k1", &auth.Claims{Kind: auth.KindAgent, ClusterID: cluster, RegisteredClaims: jwt.RegisteredClaims{
		ID: "tok-" + cluster, ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour)),
	}})
	if err != nil {
		e.t.Fatal(err)
	}
	return tok
}

var echoTarget = tunnel.StreamHeader{Protocol: tunnel.ProtocolTCP, Port: 7, Service: "echo", Namespace: "default"}

// dialer connects the echo target and refuses everything else.
func (e *env) dialer() tunnelclient.Dialer {
	return tunnelclient.DialerFunc(func(ctx context.Context, h tunnel.StreamHeader) (net.Conn, error) {
		if h.Service != echoTarget.Service || h.Namespace != echoTarget.Namespace {
			return nil, fmt.Errorf("%s: %w", h, tunnelclient.ErrTargetRefused)
		}
		var d net.Dialer
		return d.DialContext(ctx, "tcp", e.echoAddr)
	})
}

type agent struct {
	c          *tunnelclient.Client
	cancel     context.CancelFunc
	done       chan struct{}
	disconnect atomic.Int64
}

func (e *env) startAgent(cluster string, mod func(*tunnelclient.Config)) *agent {
	e.t.Helper()
	cfg := tunnelclient.Config{
		GatewayURL:     e.srv.URL,
		Token:          e.token(cluster),
		ClusterUUID:    cluster,
		AgentVersion:   "test",
		TLSConfig:      e.tls,
		Dialer:         e.dialer(),
		BackoffInitial: 20 * time.Millisecond,
		BackoffMax:     200 * time.Millisecond,
		Logger:         testLogger(e.t),
	}
	a := &agent{done: make(chan struct{})}
	cfg.OnDisconnect = func() { a.disconnect.Add(1) }
	if mod != nil {
		mod(&cfg)
	}
	c, err := tunnelclient.New(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	a.c = c
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	go func() {
		defer close(a.done)
		_ = c.Run(ctx)
	}()
	e.t.Cleanup(a.stop)
	return a
}

func (a *agent) stop() {
	a.cancel()
	<-a.done
}

// waitSession waits until cluster has a session other than old.
func (e *env) waitSession(cluster string, old *Session) *Session {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if s, ok := e.reg.Session(cluster); ok && s != old {
			return s
		}
		time.Sleep(5 * time.Millisecond)
	}
	e.t.Fatalf("no new session for cluster %s", cluster)
	return nil
}

func startEcho(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = io.Copy(c, c)
				_ = c.(*net.TCPConn).CloseWrite()
				// Hold until the peer closes, so half-close is exercised.
				_, _ = io.Copy(io.Discard, c)
				c.Close()
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
			}()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return l.Addr().String()
}

// roundTrip writes payload on a stream, half-closes it, and expects the echo.
func roundTrip(ctx context.Context, reg *Registry, cluster string, payload []byte) error {
	c, err := reg.Dial(ctx, cluster, echoTarget)
	if err != nil {
		return err
	}
	defer c.Close()
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.(interface{ CloseWrite() error }).CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(c)
	if werr := <-errc; werr != nil {
		return fmt.Errorf("write: %w", werr)
	}
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if !bytes.Equal(got, payload) {
		return fmt.Errorf("echo of %d bytes came back as %d different bytes", len(payload), len(got))
	}
	return nil
}

func TestStreams(t *testing.T) {
	for _, useTLS := range []bool{false, true} {
		t.Run(fmt.Sprintf("tls=%v", useTLS), func(t *testing.T) {
			e := newEnv(t, useTLS)
			a := e.startAgent("c1", nil)
			e.waitSession("c1", nil)

			sizes := []int{0, 1, 100, 64 << 10, 1 << 20, 6 << 20}
			var wg sync.WaitGroup
			errs := make(chan error, 64)
			for i := range 48 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					payload := make([]byte, sizes[i%len(sizes)])
					_, _ = rand.Read(payload)
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					defer cancel()
					if err := roundTrip(ctx, e.reg, "c1", payload); err != nil {
						errs <- fmt.Errorf("stream %d (%d bytes): %w", i, len(payload), err)
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			if got := a.c.Stats().StreamsTotal; got != 48 {
				t.Errorf("agent served %d streams, want 48", got)
			}
		})
	}
}

func TestRefusedAndMalformedCloseOnlyTheirStream(t *testing.T) {
	e := newEnv(t, false)
	a := e.startAgent("c1", nil)
	s := e.waitSession("c1", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// A long-lived good stream stays up through all of it.
	good, err := e.reg.Dial(ctx, "c1", echoTarget)
	if err != nil {
		t.Fatal(err)
	}
	defer good.Close()

	refused, err := e.reg.Dial(ctx, "c1", tunnel.KubernetesAPI)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := refused.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("refused stream read = %d, %v; want EOF", n, err)
	}
	refused.Close()

	for _, raw := range [][]byte{
		{2, 1, 0, 80, 0, 0, 0, 0, 0, 0},              // version 2
		{1, 9, 0, 80, 0, 0, 0, 0, 0, 0},              // unknown protocol
		{1, 1, 0, 80, 0xff, 0xff, 'x'},               // string longer than allowed
		append([]byte{1, 1, 0, 80, 0, 4}, "echo"...), // cut short, then closed
	} {
		st, err := s.mux.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Write(raw); err != nil {
			t.Fatal(err)
		}
		_ = st.Close() // FIN ends a truncated header
		_ = st.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := st.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
			t.Fatalf("malformed header %x: read = %d, %v; want EOF", raw, n, err)
		}
	}

	if _, err := good.Write([]byte("still here")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 10)
	if _, err := io.ReadFull(good, buf); err != nil || string(buf) != "still here" {
		t.Fatalf("good stream after bad ones: %q, %v", buf, err)
	}
	st := a.c.Stats()
	if st.StreamsRefused != 1 || st.StreamsMalformed != 4 {
		t.Fatalf("stats = %+v, want 1 refused and 4 malformed", st)
	}
	if a.disconnect.Load() != 0 {
		t.Fatal("bad streams brought the tunnel down")
	}
}

func TestBadTokensRefused(t *testing.T) {
	e := newEnv(t, false)
	_, otherKey, _ := ed25519.GenerateKey(rand.Reader)
	forged, _ := auth.Sign(otherKey, "k1", &auth.Claims{Kind: auth.KindAgent, ClusterID: "c1", RegisteredClaims: jwt.RegisteredClaims{
		ID: "x", ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour))}})
	userTok, _ := auth.Sign(e.key, "k1", &auth.Claims{Kind: auth.KindUser, Clusters: []string{"c1"}, RegisteredClaims: jwt.RegisteredClaims{
		ID: "u", ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour))}})
	wsURL := "ws" + strings.TrimPrefix(e.srv.URL, "http") + "/ws?supports_yamux=true&cluster_uuid="

	cases := []struct {
		name, header, cluster string
		want                  int
	}{
		{"no header", "", "c1", http.StatusUnauthorized},
		{"not bearer", "Basic abc", "c1", http.StatusUnauthorized},
		{"garbage", "Bearer abc.def.ghi", "c1", http.StatusUnauthorized},
		{"forged", "Bearer " + forged, "c1", http.StatusUnauthorized},
		{"user token", "Bearer " + userTok, "c1", http.StatusUnauthorized},
		{"other cluster", "Bearer " + e.token("c1"), "c2", http.StatusForbidden},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := http.Header{}
			if c.header != "" {
				h.Set("Authorization", c.header)
			}
			ws, resp, err := websocket.DefaultDialer.Dial(wsURL+c.cluster, h)
			if err == nil {
				ws.Close()
				t.Fatal("connection accepted")
			}
			if resp == nil || resp.StatusCode != c.want {
				t.Fatalf("response = %v, want HTTP %d", resp, c.want)
			}
		})
	}
	if got := e.reg.Clusters(); len(got) != 0 {
		t.Fatalf("sessions registered after refused connections: %v", got)
	}

	// The agent client reports a refused token and keeps retrying.
	a := e.startAgent("c1", func(c *tunnelclient.Config) { c.Token = forged })
	time.Sleep(300 * time.Millisecond)
	if a.c.Connected() || len(e.reg.Clusters()) != 0 {
		t.Fatal("agent with a forged token got a session")
	}
}

func TestAgentReconnectsAfterGatewayDrop(t *testing.T) {
	e := newEnv(t, false)
	a := e.startAgent("c1", nil)
	first := e.waitSession("c1", nil)
	first.Close()
	second := e.waitSession("c1", first)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := roundTrip(ctx, e.reg, "c1", []byte("after reconnect")); err != nil {
		t.Fatal(err)
	}
	if got := a.c.Stats().Connects; got < 2 {
		t.Fatalf("connects = %d, want >= 2", got)
	}
	if second.NumStreams() < 0 {
		t.Fatal("unreachable")
	}
}

func TestNewSessionReplacesOld(t *testing.T) {
	e := newEnv(t, false)
	a1 := e.startAgent("c1", func(c *tunnelclient.Config) { c.BackoffInitial, c.BackoffMax = 10*time.Second, 10*time.Second })
	first := e.waitSession("c1", nil)
	e.startAgent("c1", func(c *tunnelclient.Config) { c.BackoffInitial, c.BackoffMax = 10*time.Second, 10*time.Second })
	e.waitSession("c1", first)
	select {
	case <-first.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("old session not closed when the cluster connected again")
	}
	deadline := time.Now().Add(5 * time.Second)
	for a1.disconnect.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if a1.disconnect.Load() == 0 {
		t.Fatal("first agent did not see its session end")
	}
	if got := len(e.reg.Clusters()); got != 1 {
		t.Fatalf("%d sessions, want 1", got)
	}
}

func TestOfflineCluster(t *testing.T) {
	e := newEnv(t, false)
	_, err := e.reg.Dial(context.Background(), "nobody", echoTarget)
	if !errors.Is(err, ErrAgentOffline) {
		t.Fatalf("Dial to a cluster without agent: %v, want ErrAgentOffline", err)
	}
}

// TestDeadLinkNoticed freezes the network between agent and gateway (a
// proxy that stops forwarding without closing) and expects both sides to
// notice within the keepalive timeout.
func TestDeadLinkNoticed(t *testing.T) {
	e := newEnv(t, false)
	e.reg.cfg.PingInterval, e.reg.cfg.PingTimeout = 100*time.Millisecond, 400*time.Millisecond
	p := newFreezableProxy(t, strings.TrimPrefix(e.srv.URL, "http://"))
	a := e.startAgent("c1", func(c *tunnelclient.Config) {
		c.GatewayURL = "http://" + p.addr
		c.PingInterval, c.PingTimeout = 100*time.Millisecond, 400*time.Millisecond
		c.BackoffInitial, c.BackoffMax = time.Minute, time.Minute
	})
	s := e.waitSession("c1", nil)
	// The gateway registers the session as soon as it has sent its answer;
	// freeze only once the agent has read it, or the agent is left waiting
	// for its handshake instead of noticing a dead session.
	deadline := time.Now().Add(5 * time.Second)
	for !a.c.Connected() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	p.freeze()
	start := time.Now()
	select {
	case <-s.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("gateway did not notice the dead link")
	}
	deadline = time.Now().Add(5 * time.Second)
	for a.disconnect.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if a.disconnect.Load() == 0 {
		t.Fatal("agent did not notice the dead link")
	}
	t.Logf("dead link noticed after %s (timeout 400ms)", time.Since(start).Round(time.Millisecond))
}

type freezableProxy struct {
	addr   string
	frozen atomic.Bool
}

func newFreezableProxy(t testing.TB, target string) *freezableProxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &freezableProxy{addr: l.Addr().String()}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, up)
			mu.Unlock()
			for _, pair := range [][2]net.Conn{{c, up}, {up, c}} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					buf := make([]byte, 32<<10)
					for {
						n, err := pair[0].Read(buf)
						if err != nil {
							return
						}
						if p.frozen.Load() {
							continue // swallow: the link is dead but nobody says so
						}
						if _, err := pair[1].Write(buf[:n]); err != nil {
							return
						}
					}
				}()
			}
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return p
}

func (p *freezableProxy) freeze() { p.frozen.Store(true) }

// TestTransportReusesStreams checks pooling: sequential requests from a
// fixed number of workers reuse streams instead of opening one each.
func TestTransportReusesStreams(t *testing.T) {
	e := newEnv(t, false)
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s", r.URL.Path)
	}))
	defer web.Close()
	a := e.startAgent("c1", func(c *tunnelclient.Config) {
		c.Dialer = tunnelclient.DialerFunc(func(ctx context.Context, h tunnel.StreamHeader) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", strings.TrimPrefix(web.URL, "http://"))
		})
	})
	e.waitSession("c1", nil)
	tr := e.reg.Transport(64)
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	host, err := TargetHost("c1", tunnel.StreamHeader{Protocol: tunnel.ProtocolTCP, Port: 80, Service: "web", Namespace: "apps"})
	if err != nil {
		t.Fatal(err)
	}
	const workers, perWorker = 16, 25
	var wg sync.WaitGroup
	var failures atomic.Int64
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWorker {
				resp, err := client.Get(fmt.Sprintf("http://%s/w%d/%d", host, w, i))
				if err != nil {
					failures.Add(1)
					continue
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if string(body) != fmt.Sprintf("hello /w%d/%d", w, i) {
					failures.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if failures.Load() != 0 {
		t.Fatalf("%d of %d requests failed", failures.Load(), workers*perWorker)
	}
	// One stream per worker is the ideal; http.Transport may dial a spare
	// when a request starts just before the previous one's stream is back
	// in the pool, so allow that, but not a stream per request.
	opened := a.c.Stats().StreamsTotal
	t.Logf("%d requests from %d workers opened %d streams", workers*perWorker, workers, opened)
	if opened > 2*workers {
		t.Fatalf("%d requests opened %d streams; want at most %d: streams are not reused", workers*perWorker, opened, 2*workers)
	}
}

func TestTargetHost(t *testing.T) {
	h := tunnel.StreamHeader{Protocol: tunnel.ProtocolTCP, Port: 8443, Service: "ingress-nginx-controller", Namespace: "ingress-nginx"}
	host, err := TargetHost("0f3c2a", h)
	if err != nil {
		t.Fatal(err)
	}
	cluster, got, err := parseTargetHost(host)
	if err != nil || cluster != "0f3c2a" || got != h {
		t.Fatalf("parse(%q) = %q, %+v, %v", host, cluster, got, err)
	}
	for _, bad := range []string{"a.b", "", "x:y"} {
		if _, err := TargetHost(bad, h); err == nil {
			t.Errorf("TargetHost(%q) accepted", bad)
		}
	}
	for _, bad := range []string{"example.com:80", "a.b.tunnel:80", "a.b.c.d.tunnel:80", "a.b.c.tunnel:99999"} {
		if _, _, err := parseTargetHost(bad); err == nil {
			t.Errorf("parseTargetHost(%q) accepted", bad)
		}
	}
}

// TestTargetResetEndsOnlyItsStream: a target that resets its connection
// mid-stream ends that stream with an error or EOF at the gateway, and the
// tunnel carries on.
func TestTargetResetEndsOnlyItsStream(t *testing.T) {
	e := newEnv(t, false)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		buf := make([]byte, 5)
		_, _ = io.ReadFull(c, buf)
		_, _ = c.Write([]byte("partial"))
		_ = c.(*net.TCPConn).SetLinger(0) // close with RST
		c.Close()
	}()
	a := e.startAgent("c1", func(c *tunnelclient.Config) {
		echo := e.dialer()
		c.Dialer = tunnelclient.DialerFunc(func(ctx context.Context, h tunnel.StreamHeader) (net.Conn, error) {
			if h.Service == "reset" {
				var d net.Dialer
				return d.DialContext(ctx, "tcp", l.Addr().String())
			}
			return echo.DialStream(ctx, h)
		})
	})
	e.waitSession("c1", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := e.reg.Dial(ctx, "c1", tunnel.StreamHeader{Protocol: tunnel.ProtocolTCP, Port: 9, Service: "reset", Namespace: "default"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	_ = st.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(st)
	if err != nil && !errors.Is(err, io.EOF) && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("read after target reset: %v", err)
	}
	if !strings.HasPrefix("partial", string(got)) {
		t.Fatalf("read %q before the reset, want a prefix of %q", got, "partial")
	}
	if err := roundTrip(ctx, e.reg, "c1", []byte("tunnel still up")); err != nil {
		t.Fatal(err)
	}
	if a.disconnect.Load() != 0 {
		t.Fatal("a target reset brought the tunnel down")
	}
}

type recordingControl struct {
	mu   sync.Mutex
	seen []string
}

func (r *recordingControl) HandleControl(_ context.Context, _ *Session, msg tunnel.Message) {
	r.mu.Lock()
	r.seen = append(r.seen, msg.RequestID)
	r.mu.Unlock()
}

func (r *recordingControl) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.seen)
}

// Control messages reach the handler in the order sent, pings are answered,
// and an idle session parks few goroutines: no control goroutine once the
// queue is empty, no keepalive goroutines, not the HTTP handler.
func TestControlInOrderAndIdleGoroutines(t *testing.T) {
	e := newEnv(t, true)
	rec := &recordingControl{}
	e.reg.cfg.Control = rec
	pongs := make(chan tunnel.Message, 1)
	a := e.startAgent("c1", func(c *tunnelclient.Config) {
		c.OnControl = func(m tunnel.Message) {
			if m.Type == tunnel.TypePong {
				pongs <- m
			}
		}
	})
	e.waitSession("c1", nil)
	// The gateway registers the session before the agent has read
	// gateway_hello; the agent sends only once it has.
	testenv.Eventually(t, a.c.Connected, "the agent's side of the tunnel up")

	const n = 50 // under the default ControlQueue, so none may be dropped
	for i := range n {
		msg, err := tunnel.NewMessage(tunnel.TypeHeartbeat, tunnel.Heartbeat{ClusterID: "c1"})
		if err != nil {
			t.Fatal(err)
		}
		msg.RequestID = strconv.Itoa(i)
		if err := a.c.Send(msg); err != nil {
			t.Fatal(err)
		}
	}
	ping, _ := tunnel.NewMessage(tunnel.TypePing, tunnel.Ping{})
	ping.RequestID = "ping-1"
	if err := a.c.Send(ping); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-pongs:
		if m.RequestID != "ping-1" {
			t.Errorf("pong answers %q, want ping-1", m.RequestID)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no pong")
	}
	for deadline := time.Now().Add(10 * time.Second); rec.count() < n+1; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("handler saw %d of %d messages", rec.count(), n+1)
		}
	}
	rec.mu.Lock()
	for i, id := range rec.seen[:n] {
		if id != strconv.Itoa(i) {
			t.Fatalf("message %d handled as %q: out of order (%v)", i, id, rec.seen)
		}
	}
	rec.mu.Unlock()

	// Idle sessions: the gateway's own goroutines per session are yamux's
	// receive and send loops and the session's run. The agents live in this
	// process too, so count by what the stacks run.
	const more = 20
	for i := range more {
		e.startAgent(fmt.Sprintf("idle-%d", i), nil)
	}
	for i := range more {
		e.waitSession(fmt.Sprintf("idle-%d", i), nil)
	}
	time.Sleep(200 * time.Millisecond) // let setup goroutines end
	buf := make([]byte, 4<<20)
	stacks := strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n")
	perSession, keepalives := 0, 0
	for _, g := range stacks {
		if strings.Contains(g, "gateway/session.(*Session)") || strings.Contains(g, "gateway/session.(*Registry)") {
			perSession++
		}
		if strings.Contains(g, "yamux.(*Session).keepalive") {
			keepalives++
		}
	}
	if keepalives > more+1 {
		t.Errorf("%d yamux keepalive goroutines for %d agents: the gateway side runs its own", keepalives, more+1)
	}
	if perSession > more+1 {
		t.Errorf("%d goroutines in gateway/session code for %d idle sessions, want one each (run)", perSession, more+1)
	}
}
