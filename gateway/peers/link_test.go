package peers

import (
	"context"
	"encoding/base64"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pipeops/tunnel/gateway/session"
	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/tunnel"
)

func TestMain(m *testing.M) { testenv.Main(m) }

var testSecret = []byte(strings.Repeat("k", MinSecretLen))

// signedRequest is a stream request as dialPeer writes it.
func signedRequest(secret []byte, from, cluster string, h tunnel.StreamHeader, at time.Time) *http.Request {
	raw, _ := h.MarshalBinary()
	target := base64.RawURLEncoding.EncodeToString(raw)
	ts := strconv.FormatInt(at.Unix(), 10)
	r := httptest.NewRequest("GET", streamPath, nil)
	r.Header.Set("Upgrade", upgradeToken)
	r.Header.Set(headerFrom, from)
	r.Header.Set(headerCluster, cluster)
	r.Header.Set(headerTarget, target)
	r.Header.Set(headerTime, ts)
	r.Header.Set(headerAuth, sign(secret, from, cluster, target, ts))
	return r
}

func TestParseStreamRequest(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	h := tunnel.StreamHeader{Protocol: tunnel.ProtocolTCP, Port: 80, Service: "web", Namespace: "shop"}
	good := func() *http.Request { return signedRequest(testSecret, "gw-a", "c1", h, now) }
	req, status, err := parseStreamRequest(good(), testSecret, now)
	if err != nil || req.from != "gw-a" || req.cluster != "c1" || req.header != h {
		t.Fatalf("good request: %+v %d %v", req, status, err)
	}
	for _, tc := range []struct {
		name   string
		req    *http.Request
		status int
	}{
		{"other secret", signedRequest([]byte(strings.Repeat("x", MinSecretLen)), "gw-a", "c1", h, now), 401},
		{"too old", signedRequest(testSecret, "gw-a", "c1", h, now.Add(-2*time.Minute)), 401},
		{"from the future", signedRequest(testSecret, "gw-a", "c1", h, now.Add(2*time.Minute)), 401},
		{"cluster changed after signing", func() *http.Request { r := good(); r.Header.Set(headerCluster, "c2"); return r }(), 401},
		{"target changed after signing", func() *http.Request {
			r := signedRequest(testSecret, "gw-a", "c1", h, now)
			raw, _ := tunnel.StreamHeader{Protocol: tunnel.ProtocolTCP, Port: 443, Service: "kubernetes", Namespace: "default"}.MarshalBinary()
			r.Header.Set(headerTarget, base64.RawURLEncoding.EncodeToString(raw))
			return r
		}(), 401},
		{"no signature", func() *http.Request { r := good(); r.Header.Del(headerAuth); return r }(), 400},
		{"no upgrade", func() *http.Request { r := good(); r.Header.Del("Upgrade"); return r }(), 400},
		{"other path", func() *http.Request { r := good(); r.URL.Path = "/"; return r }(), 404},
		{"time not a number", func() *http.Request { r := good(); r.Header.Set(headerTime, "soon"); return r }(), 400},
	} {
		if _, status, err := parseStreamRequest(tc.req, testSecret, now); err == nil || status != tc.status {
			t.Errorf("%s: status %d err %v, want %d", tc.name, status, err, tc.status)
		}
	}
	// A well signed target that does not decode is refused as malformed.
	ts := strconv.FormatInt(now.Unix(), 10)
	r := good()
	r.Header.Set(headerTarget, "AA")
	r.Header.Set(headerAuth, sign(testSecret, "gw-a", "c1", "AA", ts))
	if _, status, err := parseStreamRequest(r, testSecret, now); status != 400 || err == nil {
		t.Errorf("malformed target: %d %v, want 400", status, err)
	}
}

// FuzzParseStreamRequest feeds the peer endpoint's decoder arbitrary
// header values, signed (so decoding is reached) or not: it must never
// panic, and what it accepts must be a valid stream header.
func FuzzParseStreamRequest(f *testing.F) {
	f.Add("gw-a", "c1", "AQEAUAADd2ViAARzaG9wAAA", "1800000000", true)
	f.Add("", "", "", "", false)
	f.Add("gw", "c", "////", "-1", true)
	now := time.Unix(1_800_000_000, 0)
	f.Fuzz(func(t *testing.T, from, cluster, target, ts string, signed bool) {
		r := httptest.NewRequest("GET", streamPath, nil)
		r.Header.Set("Upgrade", upgradeToken)
		for k, v := range map[string]string{headerFrom: from, headerCluster: cluster, headerTarget: target, headerTime: ts} {
			r.Header[k] = []string{v}
		}
		mac := "00"
		if signed {
			mac = sign(testSecret, from, cluster, target, ts)
		}
		r.Header.Set(headerAuth, mac)
		req, status, err := parseStreamRequest(r, testSecret, now)
		if err != nil {
			if status < 400 {
				t.Fatalf("refused with status %d", status)
			}
			return
		}
		if !signed {
			t.Fatal("accepted an unsigned request")
		}
		if err := req.header.Validate(); err != nil {
			t.Fatalf("accepted an invalid header: %v", err)
		}
	})
}

// fakeLocal is a gateway's own sessions for the peer handler: it dials
// one TCP target, or fails as told.
type fakeLocal struct {
	target string
	err    error
}

func (l fakeLocal) ClusterSessions(string) []*session.Session { return nil }

func (l fakeLocal) DialLocal(ctx context.Context, _ string, _ tunnel.StreamHeader) (net.Conn, error) {
	if l.err != nil {
		return nil, l.err
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", l.target)
}

// TestLinkCarriesStream runs the peer handler on a real listener and
// dials it as a gateway does: bytes pass both ways and a half-close passes
// through; an offline cluster and a full session come back as the session
// errors they were, a wrong secret as ErrUnauthorized.
func TestLinkCarriesStream(t *testing.T) {
	testenv.LeakCheck(t)
	echo := startEcho(t)
	serve := func(local Local) (*Peers, *url.URL) {
		p, err := New(Config{Store: nopStore{}, ID: "gw-b", URL: "http://127.0.0.1:1", Secret: testSecret, Local: local})
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(p.Handler())
		t.Cleanup(func() { srv.Close(); p.Close() })
		u, _ := url.Parse(srv.URL)
		return p, u
	}
	h := tunnel.StreamHeader{Protocol: tunnel.ProtocolTCP, Port: 80, Service: "web", Namespace: "shop"}
	_, u := serve(fakeLocal{target: echo})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var d net.Dialer
	conn, err := dialPeer(ctx, d.DialContext, u, "gw-a", testSecret, "c1", h, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	msg := strings.Repeat("through the link ", 10000)
	go func() {
		io.WriteString(conn, msg)
		conn.(interface{ CloseWrite() error }).CloseWrite()
	}()
	got, err := io.ReadAll(conn)
	conn.Close()
	if err != nil || string(got) != msg {
		t.Fatalf("echo through the link: %d bytes, %v; want %d", len(got), err, len(msg))
	}

	if _, err := dialPeer(ctx, d.DialContext, u, "gw-a", []byte(strings.Repeat("x", MinSecretLen)), "c1", h, time.Now()); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("wrong secret: %v, want ErrUnauthorized", err)
	}
	for _, want := range []error{session.ErrAgentOffline, session.ErrTooManyStreams} {
		_, u := serve(fakeLocal{err: want})
		if _, err := dialPeer(ctx, d.DialContext, u, "gw-a", testSecret, "c1", h, time.Now()); !errors.Is(err, want) {
			t.Errorf("holder failing with %v: dial got %v", want, err)
		}
	}
}

func testLogger(w io.Writer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }

// startEcho starts a TCP echo server on loopback that stops with the test,
// and returns its address.
func startEcho(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				io.Copy(c, c)
			})
		}
	})
	t.Cleanup(func() { l.Close(); wg.Wait() })
	return l.Addr().String()
}

// TestRefusedLinksLoggedOnce: anyone who reaches the peer listener can
// send badly signed requests in bulk; each is refused, and the log gets one
// line for the lot (and a count when the listener closes), not one each.
func TestRefusedLinksLoggedOnce(t *testing.T) {
	testenv.LeakCheck(t)
	var logs lockedBuffer
	p, err := New(Config{Store: nopStore{}, ID: "gw-b", URL: "http://127.0.0.1:1", Secret: testSecret, Local: fakeLocal{err: session.ErrAgentOffline},
		Logger: testLogger(&logs)})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(p.Handler())
	u, _ := url.Parse(srv.URL)
	h := tunnel.StreamHeader{Protocol: tunnel.ProtocolTCP, Port: 80, Service: "web", Namespace: "shop"}
	var d net.Dialer
	for range 20 {
		if _, err := dialPeer(context.Background(), d.DialContext, u, "intruder", []byte(strings.Repeat("x", MinSecretLen)), "c1", h, time.Now()); !errors.Is(err, ErrUnauthorized) {
			t.Fatalf("bad signature: %v, want ErrUnauthorized", err)
		}
	}
	if n := strings.Count(logs.String(), "peer link refused"); n != 1 {
		t.Errorf("20 refusals logged %d times, want once:\n%s", n, logs.String())
	}
	srv.Close()
	p.Close()
	if !strings.Contains(logs.String(), "19") {
		t.Errorf("the count of the refusals not logged is not in the log:\n%s", logs.String())
	}
}

// lockedBuffer is a log sink written by the server's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
