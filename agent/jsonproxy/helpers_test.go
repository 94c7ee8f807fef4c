package jsonproxy

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"k8s.io/client-go/rest"

	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/tunnel"
)

// agentToken is the credential the fake transport adds, as client-go's
// does: only when the request has no Authorization of its own.
const agentToken = "agent-own-token"

// fakeAPI is an httptest server standing in for the API server.
type fakeAPI struct {
	srv   *httptest.Server
	url   *url.URL
	tr    *agentTransport
	mu    sync.Mutex
	seen  map[string]http.Header // last request headers by path
	ended chan string            // paths whose long call ended because the client went away
	// events are written to /watch as they come; release ends /slow.
	events  chan string
	release chan struct{}
	// closing ends the long handlers at cleanup: a handler that has not
	// read a request body is not told when its client goes away.
	closing chan struct{}
}

func newFakeAPI(t testing.TB) *fakeAPI {
	t.Helper()
	f := &fakeAPI{seen: map[string]http.Header{}, ended: make(chan string, 256), events: make(chan string, 16),
		release: make(chan struct{}), closing: make(chan struct{})}
	up := websocket.Upgrader{Subprotocols: []string{"v5.channel.k8s.io", "v4.channel.k8s.io", "echo"}}
	mux := http.NewServeMux()
	mux.HandleFunc("/api/v1/namespaces/default/pods", func(w http.ResponseWriter, r *http.Request) {
		f.record(r)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Proxy-Authenticate", "hop-by-hop, must not be relayed")
		fmt.Fprint(w, `{"kind":"PodList","items":[]}`)
	})
	// /echo answers what it received.
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		f.record(r)
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"method": r.Method, "body": string(b), "query": r.URL.RawQuery,
			"authorization": r.Header.Get("Authorization"), "headers": r.Header})
	})
	// /big?n=N answers N bytes of a pattern.
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		_, _ = w.Write(pattern(n))
	})
	mux.HandleFunc("/watch", func(w http.ResponseWriter, r *http.Request) {
		gone := clientGone(r)
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		for {
			select {
			case ev := <-f.events:
				fmt.Fprintln(w, ev)
				w.(http.Flusher).Flush()
			case <-gone:
				f.end("/watch")
				return
			case <-f.closing:
				return
			}
		}
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		gone := clientGone(r)
		select {
		case <-f.release:
			fmt.Fprint(w, "released")
		case <-gone:
			f.end("/slow")
		case <-f.closing:
		}
	})
	mux.HandleFunc("/ws/echo", func(w http.ResponseWriter, r *http.Request) {
		f.record(r)
		if r.Header.Get("Authorization") != "Bearer "+agentToken {
			http.Error(w, "not the agent's credentials", http.StatusUnauthorized)
			return
		}
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		for {
			typ, b, err := c.ReadMessage()
			if err != nil {
				return
			}
			if string(b) == "bye" {
				_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye"), time.Now().Add(time.Second))
				return
			}
			if c.WriteMessage(typ, b) != nil {
				return
			}
		}
	})
	f.srv = httptest.NewServer(mux)
	f.url, _ = url.Parse(f.srv.URL)
	f.tr = &agentTransport{base: f.srv.Client().Transport, deadlines: make(chan bool, 64)}
	t.Cleanup(func() {
		close(f.closing)
		f.srv.CloseClientConnections()
		f.srv.Close()
		f.srv.Client().CloseIdleConnections()
	})
	return f
}

// clientGone returns a channel closed when the client of r has gone away.
// The request context alone does not tell while a request body is unread
// (the server watches the connection only once the body is consumed), so
// the body is drained too, and a failed read counts as gone.
func clientGone(r *http.Request) <-chan struct{} {
	gone := make(chan struct{})
	var once sync.Once
	stop := func() { once.Do(func() { close(gone) }) }
	context.AfterFunc(r.Context(), stop)
	go func() {
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			stop()
		}
	}()
	return gone
}

// end reports a call that ended because its client went away; reports
// nobody waits for are dropped.
func (f *fakeAPI) end(path string) {
	select {
	case f.ended <- path:
	default:
	}
}

func (f *fakeAPI) record(r *http.Request) {
	f.mu.Lock()
	f.seen[r.URL.Path] = r.Header.Clone()
	f.mu.Unlock()
}

func (f *fakeAPI) headers(path string) http.Header {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.seen[path]
}

// dialer dials the fake server's WebSockets, adding the agent's
// credentials as WebSocketDialerFor does.
func (f *fakeAPI) dialer() WebSocketDialer {
	return func(ctx context.Context, rawURL string, header http.Header, protocols []string) (*websocket.Conn, *http.Response, error) {
		h := header.Clone()
		h.Set("Authorization", "Bearer "+agentToken)
		d := websocket.Dialer{Subprotocols: protocols, HandshakeTimeout: 5 * time.Second}
		return d.DialContext(ctx, rawURL, h)
	}
}

// agentTransport adds the agent's token when a request carries none, as
// client-go's bearer wrapper does, and reports whether each request's
// context had a deadline.
type agentTransport struct {
	base      http.RoundTripper
	deadlines chan bool
}

func (a *agentTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Header.Get("Authorization") == "" {
		r = r.Clone(r.Context())
		r.Header.Set("Authorization", "Bearer "+agentToken)
	}
	_, has := r.Context().Deadline()
	select {
	case a.deadlines <- has:
	default:
	}
	return a.base.RoundTrip(r)
}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('a' + i%26)
	}
	return b
}

// sink stands in for the tunnel: it records every message the handler
// sends, refusing (like the tunnel) one that does not encode.
type sink struct {
	mu      sync.Mutex
	msgs    []tunnel.Message
	changed chan struct{}
}

func newSink() *sink { return &sink{changed: make(chan struct{})} }

func (s *sink) Send(m tunnel.Message) error {
	if _, err := m.Encode(); err != nil {
		return err
	}
	s.mu.Lock()
	s.msgs = append(s.msgs, m)
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
	return nil
}

// of returns the messages sent for id, in order, and a channel closed at
// the next message.
func (s *sink) of(id string) ([]tunnel.Message, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []tunnel.Message
	for _, m := range s.msgs {
		if m.RequestID == id {
			out = append(out, m)
		}
	}
	return out, s.changed
}

// waitFor waits until ok holds for the messages of id.
func (s *sink) waitFor(t testing.TB, id string, what string, ok func([]tunnel.Message) bool) []tunnel.Message {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		msgs, changed := s.of(id)
		if ok(msgs) {
			return msgs
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("%s: timed out waiting for %s; got %s", id, what, types(msgs))
		}
	}
}

// terminal reports whether m ends what its id names.
func terminal(m tunnel.Message) bool {
	switch m.Type {
	case tunnel.TypeProxyResponse, tunnel.TypeProxyResponseEnd, tunnel.TypeProxyResponseAbort,
		tunnel.TypeWSCloseAlias, tunnel.TypeWSClose, tunnel.TypeTCPTunnelClose:
		return true
	}
	return false
}

// waitEnd waits for the message that ends id: a response, its end or
// abort, a proxy_error of a request, a relay's close.
func (s *sink) waitEnd(t testing.TB, id string, relay bool) []tunnel.Message {
	t.Helper()
	return s.waitFor(t, id, "the last message", func(ms []tunnel.Message) bool {
		for _, m := range ms {
			if terminal(m) || (!relay && m.Type == tunnel.TypeProxyError) {
				return true
			}
		}
		return false
	})
}

func types(ms []tunnel.Message) string {
	var out []string
	for _, m := range ms {
		out = append(out, m.Type)
	}
	return "[" + strings.Join(out, " ") + "]"
}

// newHandler returns a Handler on f whose messages go to a sink.
func newHandler(t testing.TB, f *fakeAPI, mod func(*Config)) (*Handler, *sink, *prometheus.Registry) {
	t.Helper()
	s := newSink()
	reg := prometheus.NewRegistry()
	cfg := Config{Transport: f.tr, APIServer: f.url, Send: s.Send, DialWebSocket: f.dialer(), Metrics: reg}
	if mod != nil {
		mod(&cfg)
	}
	h, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h, s, reg
}

func message(t testing.TB, typ, id string, payload any) tunnel.Message {
	t.Helper()
	m, err := tunnel.NewMessage(typ, payload)
	if err != nil {
		t.Fatal(err)
	}
	m.RequestID = id
	return m
}

func rawMessage(t testing.TB, s string) tunnel.Message {
	t.Helper()
	m, err := tunnel.DecodeMessage([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func failureOf(t testing.TB, m tunnel.Message) tunnel.ProxyFailure {
	t.Helper()
	var f tunnel.ProxyFailure
	if err := m.DecodePayload(&f); err != nil {
		t.Fatal(err)
	}
	return f
}

// body reassembles the answer of a request from its messages.
func body(t testing.TB, ms []tunnel.Message) (int, http.Header, []byte) {
	t.Helper()
	var status int
	var hdr http.Header
	var out []byte
	for _, m := range ms {
		switch m.Type {
		case tunnel.TypeProxyResponse:
			var r tunnel.ProxyResponse
			if err := m.DecodePayload(&r); err != nil {
				t.Fatal(err)
			}
			return r.Status, r.Headers.Header(), r.Body
		case tunnel.TypeProxyResponseHeader:
			var h tunnel.ProxyResponseHeader
			if err := m.DecodePayload(&h); err != nil {
				t.Fatal(err)
			}
			status, hdr = h.Status, h.Headers.Header()
		case tunnel.TypeProxyResponseChunk:
			var c tunnel.ProxyResponseChunk
			if err := m.DecodePayload(&c); err != nil {
				t.Fatal(err)
			}
			out = append(out, c.Data...)
		}
	}
	return status, hdr, out
}

func waitInFlight(t testing.TB, h *Handler, want int) {
	t.Helper()
	testenv.Eventually(t, func() bool { return h.InFlight() == want }, "in flight = %d", want)
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// value reads a counter or gauge.
func value(m prometheus.Metric) float64 {
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		panic(err)
	}
	switch {
	case d.Counter != nil:
		return d.Counter.GetValue()
	case d.Gauge != nil:
		return d.Gauge.GetValue()
	}
	panic("not a counter or gauge")
}

// restConfig is a plain-HTTP rest config with a bearer token.
func restConfig(host, token string) *rest.Config {
	return &rest.Config{Host: host, BearerToken: token}
}
