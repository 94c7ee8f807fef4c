package proxy

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/gateway/routetable"
	"github.com/pipeops/tunnel/gateway/session"
	"github.com/pipeops/tunnel/shared/auth"
)

// bodySink is an upstream that reads each request's body whole and answers
// with its length and SHA-256. It counts connections, and records by the
// request's sinkIDHeader which requests reached it and how much of each
// body it read, whole or cut (by the proxy).
type bodySink struct {
	srv      *httptest.Server
	requests atomic.Int64
	conns    atomic.Int64
	closed   atomic.Int64
	lastID   atomic.Int64
	reached  sync.Map // id -> struct{}
	cut      sync.Map // id -> bytes read of a body that ended early
	whole    sync.Map // id -> bytes of a body read whole
}

// sinkIDHeader tells the requests a test sends apart at the sink: a request
// the proxy cut may reach it after its test has moved on.
const sinkIDHeader = "X-Sink-Request"

func newBodySink(t *testing.T) *bodySink {
	s := &bodySink{}
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.requests.Add(1)
		id := r.Header.Get(sinkIDHeader)
		s.reached.Store(id, struct{}{})
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			s.cut.Store(id, n)
			http.Error(w, "body ended early", http.StatusBadRequest)
			return
		}
		s.whole.Store(id, n)
		fmt.Fprintf(w, "n=%d sha256=%x", n, h.Sum(nil))
	}))
	s.srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		switch st {
		case http.StateNew:
			s.conns.Add(1)
		case http.StateClosed, http.StateHijacked:
			s.closed.Add(1)
		}
	}
	s.srv.Start()
	t.Cleanup(s.srv.Close)
	return s
}

// sinkMark names a request for the sink and keeps what the tunnel to it
// had before it.
type sinkMark struct {
	id      string // the request's sinkIDHeader
	streams int    // the cluster's tunnel streams at the gateway
}

func (s *bodySink) mark(f *fixture, cluster string) sinkMark {
	return sinkMark{strconv.FormatInt(s.lastID.Add(1), 10), clusterStreams(f, cluster)}
}

// header is h with the request's sinkIDHeader.
func (m sinkMark) header(h http.Header) http.Header {
	h = h.Clone()
	if h == nil {
		h = http.Header{}
	}
	h.Set(sinkIDHeader, m.id)
	return h
}

func clusterStreams(f *fixture, cluster string) int {
	if ss, ok := f.reg.Session(cluster); ok {
		return ss.NumStreams()
	}
	return 0
}

func (s *bodySink) has(m *sync.Map, id string) (int64, bool) {
	v, ok := m.Load(id)
	if !ok {
		return 0, false
	}
	return v.(int64), true
}

// sawCut waits until the request m names, whose body the proxy cut after
// limit bytes, has ended at the upstream: its handler read the body cut
// short, at most limit bytes of it; or, through a tunnel, the agent is done
// with the stream (the gateway's is gone: the agent answered its reset)
// and the request has not reached the handler. The reset may have overtaken
// it, or it may still reach it with what the agent had passed on before:
// checkCuts, at the end, looks again.
func (s *bodySink) sawCut(t *testing.T, f *fixture, cluster string, m sinkMark, limit int64, tunnel bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if n, ok := s.has(&s.cut, m.id); ok {
			if n > limit {
				t.Fatalf("upstream received %d bytes of the body, limit %d", n, limit)
			}
			return
		}
		if n, ok := s.has(&s.whole, m.id); ok {
			t.Fatalf("upstream received the whole body (%d bytes), limit %d", n, limit)
		}
		if _, reached := s.reached.Load(m.id); tunnel && !reached && clusterStreams(f, cluster) <= m.streams {
			return
		}
		if time.Now().After(deadline) {
			_, reached := s.reached.Load(m.id)
			t.Fatalf("the upstream never saw the end of the cut body (reached %v, streams %d, %d before)", reached, clusterStreams(f, cluster), m.streams)
		}
		time.Sleep(5 * time.Millisecond) // polling the upstream's records, not synchronising
	}
}

// checkCuts is the end of a test's cut requests (by id, with their limits)
// once nothing is in flight any more: no idle connection to the upstream,
// no stream to the cluster, every upstream connection closed (so every
// handler has returned). None got its whole body through; those that
// reached the upstream got at most their limit. It waits up to 10 s for
// the quiet, and checks what there is then.
func (s *bodySink) checkCuts(t *testing.T, f *fixture, cluster string, closeIdle func(), cuts map[string]int64) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		closeIdle()
		if clusterStreams(f, cluster) == 0 && s.conns.Load() == s.closed.Load() {
			break
		}
		time.Sleep(10 * time.Millisecond) // polling for the quiet, not synchronising
	}
	for id, limit := range cuts {
		if n, ok := s.has(&s.whole, id); ok {
			t.Errorf("request %s: upstream received the whole body (%d bytes), limit %d", id, n, limit)
		}
		if _, reached := s.reached.Load(id); !reached {
			continue
		}
		if n, ok := s.has(&s.cut, id); !ok || n > limit {
			t.Errorf("request %s: upstream read %d bytes of a cut body (recorded: %v), limit %d", id, n, ok, limit)
		}
	}
}

// neverSaw checks that a request the proxy refused before forwarding it
// reached neither the upstream nor, through a tunnel, the agent. before is
// seen from before it. A connection the upstream counts late (one of an
// earlier tunnel request the proxy cut) is told apart by the agent's own
// count, so through a tunnel the upstream's connections are not compared.
func (s *bodySink) neverSaw(t *testing.T, f *fixture, cluster string, m sinkMark, before [2]int64, tunnel bool) {
	t.Helper()
	after := s.seen(f, cluster)
	if _, reached := s.reached.Load(m.id); reached || after[1] != before[1] || (!tunnel && after[0] != before[0]) {
		t.Fatalf("upstream saw the refused request: reached %v; connections, agent streams %v -> %v", reached, before, after)
	}
}

// seen is what the upstream has been asked so far: its connections, and
// the streams cluster's agent opened to it.
func (s *bodySink) seen(f *fixture, cluster string) [2]int64 {
	return [2]int64{s.conns.Load(), f.streams[cluster].Load()}
}

// limitEnv is a proxy with a global body limit in front of a bodySink,
// reached through an agent (tunnel mode) and straight (direct mode).
type limitEnv struct {
	f      *fixture
	sink   *bodySink
	proxy  *Proxy
	front  *httptest.Server
	client *http.Client
}

const (
	testGlobalLimit = 128 << 10
	testRouteLimit  = 64 << 10
)

func newLimitEnv(t *testing.T) *limitEnv {
	f := newFixture(t, 0)
	e := &limitEnv{f: f, sink: newBodySink(t)}
	f.startAgent("c", addr(e.sink.srv), "")
	var routes []controlplane.Route
	for _, mode := range []string{"tunnel", "direct"} {
		for name, annotations := range map[string]map[string]string{
			"route":  {routetable.AnnotationMaxBodySize: "64k"},
			"nginx":  {routetable.AnnotationNginxBodySize: "64k"},
			"big":    {routetable.AnnotationMaxBodySize: "1g"},
			"bad":    {routetable.AnnotationMaxBodySize: "lots", routetable.AnnotationNginxBodySize: "1k"},
			"zero":   {routetable.AnnotationNginxBodySize: "0"},
			"plain":  nil,
			"silent": {"nginx.ingress.kubernetes.io/proxy-read-timeout": "60"},
		} {
			endpoint := ""
			if mode == "direct" {
				endpoint = addr(e.sink.srv)
			}
			r := route(name+"."+mode+".test", "c", mode, endpoint)
			r.Annotations = annotations
			routes = append(routes, r)
		}
	}
	f.setRoutes(routes, []*controlplane.Cluster{{UUID: "c", IngressController: ingressNginx}})
	var err error
	e.proxy, err = New(Config{Routes: f.routes, Tunnels: f.reg, DialTimeout: time.Second, MaxRequestBody: testGlobalLimit})
	if err != nil {
		t.Fatal(err)
	}
	e.front = httptest.NewServer(e.proxy)
	tr := &http.Transport{}
	e.client = &http.Client{Transport: tr}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		e.front.Close()
		e.proxy.Close()
	})
	return e
}

// send posts body to host, with a Content-Length or chunked, and returns
// the status and answer.
func (e *limitEnv) send(t *testing.T, host string, body []byte, chunked bool, header http.Header) (int, string) {
	t.Helper()
	var rd io.Reader = bytes.NewReader(body)
	if chunked {
		rd = struct{ io.Reader }{rd} // hides the length: sent chunked
	}
	req, err := http.NewRequest("POST", e.front.URL+"/upload", rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", host, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (e *limitEnv) refused(t *testing.T) float64 {
	return counterValue(t, e.proxy.metrics.refused.WithLabelValues(reasonBodyTooLarge))
}

func randomBody(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRequestBodyLimits(t *testing.T) {
	e := newLimitEnv(t)
	tests := []struct {
		name    string
		host    string // before the mode
		size    int
		chunked bool
		// want 200 with the body delivered byte-exact, or 413; for a 413,
		// cutAt > 0 says the body is sent chunked past the limit and
		// reaches the upstream cut at most at cutAt bytes, else the
		// upstream must never see the request.
		want  int
		cutAt int64
	}{
		{"route limit: declared length at the limit", "route", testRouteLimit, false, 200, 0},
		{"route limit: chunked at the limit", "route", testRouteLimit, true, 200, 0},
		{"route limit: small body", "route", 10, true, 200, 0},
		{"route limit: empty body", "route", 0, false, 200, 0},
		{"route limit: declared length one over", "route", testRouteLimit + 1, false, 413, 0},
		{"route limit: chunked over", "route", 200 << 10, true, 413, testRouteLimit},
		{"nginx annotation: declared over", "nginx", testRouteLimit + 1, false, 413, 0},
		{"nginx annotation: chunked over", "nginx", 200 << 10, true, 413, testRouteLimit},
		{"global caps a larger annotation: at the global", "big", testGlobalLimit, false, 200, 0},
		{"global caps a larger annotation: declared over", "big", testGlobalLimit + 1, false, 413, 0},
		{"global caps a larger annotation: chunked over", "big", 200 << 10, true, 413, testGlobalLimit},
		{"malformed annotation: the global applies, not nginx's", "bad", 100 << 10, true, 200, 0},
		{"malformed annotation: over the global", "bad", testGlobalLimit + 1, false, 413, 0},
		{"annotation 0: the global applies", "zero", testGlobalLimit, true, 200, 0},
		{"annotation 0: over the global", "zero", testGlobalLimit + 1, false, 413, 0},
		{"no annotation: at the global", "plain", testGlobalLimit, true, 200, 0},
		{"no annotation: chunked over the global", "plain", 200 << 10, true, 413, testGlobalLimit},
		{"unrelated annotation: declared over the global", "silent", testGlobalLimit + 1, false, 413, 0},
	}
	cuts := map[string]int64{}
	for _, mode := range []string{"tunnel", "direct"} {
		for _, tc := range tests {
			t.Run(mode+"/"+tc.name, func(t *testing.T) {
				body := randomBody(t, tc.size)
				before, refusedBefore, mark := e.sink.seen(e.f, "c"), e.refused(t), e.sink.mark(e.f, "c")
				code, answer := e.send(t, tc.host+"."+mode+".test", body, tc.chunked, mark.header(nil))
				if code != tc.want {
					t.Fatalf("status %d (%q), want %d", code, answer, tc.want)
				}
				if tc.want == 200 {
					if want := fmt.Sprintf("n=%d sha256=%x", len(body), sha256.Sum256(body)); answer != want {
						t.Fatalf("upstream got %q, want %q", answer, want)
					}
					if e.refused(t) != refusedBefore {
						t.Fatal("a request within the limit was counted as refused")
					}
					return
				}
				if !strings.Contains(answer, "request body too large") {
					t.Errorf("413 answer %q does not say why", answer)
				}
				if got := e.refused(t) - refusedBefore; got != 1 {
					t.Errorf("refusal counted %v times, want 1", got)
				}
				if tc.cutAt == 0 {
					e.sink.neverSaw(t, e.f, "c", mark, before, mode == "tunnel")
					return
				}
				cuts[mark.id] = tc.cutAt
				e.sink.sawCut(t, e.f, "c", mark, tc.cutAt, mode == "tunnel")
			})
		}
	}
	e.sink.checkCuts(t, e.f, "c", e.proxy.CloseIdleConnections, cuts)
}

// TestUpgradeRequestBodyLimit checks that a body on a request asking for a
// protocol switch, which takes the proxy's own upgrade path, is bounded too.
func TestUpgradeRequestBodyLimit(t *testing.T) {
	e := newLimitEnv(t)
	upgrade := http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}}
	cuts := map[string]int64{}
	defer func() { e.sink.checkCuts(t, e.f, "c", e.proxy.CloseIdleConnections, cuts) }()
	for _, mode := range []string{"tunnel", "direct"} {
		host := "route." + mode + ".test"
		t.Run(mode+"/declared over", func(t *testing.T) {
			before, mark := e.sink.seen(e.f, "c"), e.sink.mark(e.f, "c")
			if code, answer := e.send(t, host, randomBody(t, testRouteLimit+1), false, mark.header(upgrade)); code != 413 {
				t.Fatalf("status %d (%q), want 413", code, answer)
			}
			e.sink.neverSaw(t, e.f, "c", mark, before, mode == "tunnel")
		})
		t.Run(mode+"/chunked over", func(t *testing.T) {
			mark := e.sink.mark(e.f, "c")
			if code, answer := e.send(t, host, randomBody(t, 200<<10), true, mark.header(upgrade)); code != 413 {
				t.Fatalf("status %d (%q), want 413", code, answer)
			}
			cuts[mark.id] = testRouteLimit
			e.sink.sawCut(t, e.f, "c", mark, testRouteLimit, mode == "tunnel")
		})
		t.Run(mode+"/within the limit", func(t *testing.T) {
			// The sink does not switch protocols: its 200 comes back as is.
			body := randomBody(t, 1000)
			code, answer := e.send(t, host, body, true, upgrade)
			if want := fmt.Sprintf("n=%d sha256=%x", len(body), sha256.Sum256(body)); code != 200 || answer != want {
				t.Fatalf("%d %q, want 200 %q", code, answer, want)
			}
		})
	}
}

func TestKubernetesAPIBodyLimit(t *testing.T) {
	f := newFixture(t, 0)
	sink := newBodySink(t)
	f.startAgent("c1", "", addr(sink.srv))
	k8s := NewK8s(K8sConfig{Verifier: &auth.Verifier{Keys: auth.StaticKeys{"k": f.key.Public()}}, Tunnels: f.reg, MaxRequestBody: testRouteLimit})
	defer k8s.Close()
	srv := httptest.NewServer(k8s)
	defer srv.Close()
	user := f.token(&auth.Claims{Kind: auth.KindUser, Clusters: []string{"c1"}})
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	var id string // the sinkIDHeader of the next call
	call := func(body []byte, chunked bool) (int, string) {
		t.Helper()
		var rd io.Reader = bytes.NewReader(body)
		if chunked {
			rd = struct{ io.Reader }{rd}
		}
		req, _ := http.NewRequest("POST", srv.URL+"/k8s/c1/api/v1/namespaces/default/configmaps", rd)
		req.Header.Set("Authorization", "Bearer "+user)
		req.Header.Set(sinkIDHeader, id)
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	refused := func() float64 { return counterValue(t, k8s.refused.WithLabelValues(reasonBodyTooLarge)) }

	body := randomBody(t, testRouteLimit)
	if code, answer := call(body, true); code != 200 || answer != fmt.Sprintf("n=%d sha256=%x", len(body), sha256.Sum256(body)) {
		t.Fatalf("body at the limit: %d %q", code, answer)
	}
	before, mark := sink.seen(f, "c1"), sink.mark(f, "c1")
	id = mark.id
	if code, answer := call(randomBody(t, testRouteLimit+1), false); code != 413 || !strings.Contains(answer, `"kind":"Status"`) {
		t.Fatalf("declared length over the limit: %d %q, want 413 with a Status", code, answer)
	}
	sink.neverSaw(t, f, "c1", mark, before, true)
	mark = sink.mark(f, "c1")
	id = mark.id
	if code, answer := call(randomBody(t, 200<<10), true); code != 413 || !strings.Contains(answer, `"kind":"Status"`) {
		t.Fatalf("chunked body over the limit: %d %q, want 413 with a Status", code, answer)
	}
	sink.sawCut(t, f, "c1", mark, testRouteLimit, true)
	sink.checkCuts(t, f, "c1", k8s.Close, map[string]int64{mark.id: testRouteLimit})
	if got := refused(); got != 2 {
		t.Fatalf("refusals counted: %v, want 2", got)
	}
}

func TestBodyLimitRule(t *testing.T) {
	for _, c := range []struct{ global, route, want int64 }{
		{0, 0, 0},
		{100, 0, 100},
		{0, 50, 50},
		{100, 50, 50},
		{100, 100, 100},
		{100, 500, 100}, // a route cannot raise the global limit
	} {
		if got := bodyLimit(c.global, c.route); got != c.want {
			t.Errorf("bodyLimit(%d, %d) = %d, want %d", c.global, c.route, got, c.want)
		}
	}
}

func TestLimitedBody(t *testing.T) {
	for _, c := range []struct {
		name      string
		size      int
		limit     int64
		oneByte   bool
		wantBytes int
		wantCut   bool
	}{
		{"empty", 0, 10, false, 0, false},
		{"under", 9, 10, false, 9, false},
		{"at the limit", 10, 10, false, 10, false},
		{"at the limit, byte by byte", 10, 10, true, 10, false},
		{"one over", 11, 10, false, 10, true},
		{"one over, byte by byte", 11, 10, true, 10, true},
		{"far over", 1 << 20, 10, false, 10, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			var rd io.Reader = bytes.NewReader(make([]byte, c.size))
			if c.oneByte {
				rd = iotest.OneByteReader(rd)
			}
			req := httptest.NewRequest("POST", "/", io.NopCloser(rd))
			req.ContentLength = -1
			b, fits := limitBody(req, c.limit)
			if !fits || b == nil || req.Body != io.ReadCloser(b) {
				t.Fatalf("limitBody(-1 length) = %v, %v: want the body replaced", b, fits)
			}
			got, err := io.ReadAll(req.Body)
			var mbe *http.MaxBytesError
			if len(got) != c.wantBytes || errors.As(err, &mbe) != c.wantCut || b.exceeded() != c.wantCut || (err != nil && !c.wantCut) {
				t.Fatalf("read %d bytes, err %v, exceeded %v; want %d bytes, cut %v", len(got), err, b.exceeded(), c.wantBytes, c.wantCut)
			}
			if c.wantCut {
				if mbe.Limit != c.limit {
					t.Fatalf("MaxBytesError.Limit = %d, want %d", mbe.Limit, c.limit)
				}
				if n, err := req.Body.Read(make([]byte, 8)); n != 0 || err == nil {
					t.Fatalf("read after the cut: %d, %v", n, err)
				}
			}
		})
	}
	// A declared length is checked, not wrapped: the server never reads
	// past it.
	req := httptest.NewRequest("POST", "/", strings.NewReader("12345"))
	if b, fits := limitBody(req, 5); b != nil || !fits {
		t.Fatalf("declared length at the limit: %v, %v", b, fits)
	}
	if _, fits := limitBody(req, 4); fits {
		t.Fatal("declared length over the limit fits")
	}
	if b, fits := limitBody(req, 0); b != nil || !fits {
		t.Fatal("limit 0 is no limit")
	}
}

func TestStreamLimitIsServiceUnavailable(t *testing.T) {
	p, err := New(Config{Routes: &staticRoutes{}, Tunnels: newFixture(t, 0).reg})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	w := httptest.NewRecorder()
	p.errorHandler(w, httptest.NewRequest("GET", "/", nil), fmt.Errorf("dial: %w", session.ErrTooManyStreams))
	if w.Code != http.StatusServiceUnavailable {
		t.Fatalf("stream limit mapped to %d, want 503", w.Code)
	}
}
