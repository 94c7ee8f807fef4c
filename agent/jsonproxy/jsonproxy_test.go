package jsonproxy

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/tunnel"
	"github.com/pipeops/tunnel/shared/tunnel/pipeopsfixtures"
)

func TestMain(m *testing.M) { testenv.MainNoLeaks(m, nil) }

func TestNewValidates(t *testing.T) {
	api, _ := url.Parse("https://10.0.0.1:443")
	send := func(tunnel.Message) error { return nil }
	cases := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"ok", Config{Transport: http.DefaultTransport, APIServer: api, Send: send}, true},
		{"no transport", Config{APIServer: api, Send: send}, false},
		{"no API server", Config{Transport: http.DefaultTransport, Send: send}, false},
		{"API server without host", Config{Transport: http.DefaultTransport, APIServer: &url.URL{Scheme: "https"}, Send: send}, false},
		{"API server not http", Config{Transport: http.DefaultTransport, APIServer: &url.URL{Scheme: "ftp", Host: "x"}, Send: send}, false},
		{"no send", Config{Transport: http.DefaultTransport, APIServer: api}, false},
		{"negative limit", Config{Transport: http.DefaultTransport, APIServer: api, Send: send, MaxInFlight: -1}, false},
		{"chunk over a message", Config{Transport: http.DefaultTransport, APIServer: api, Send: send, ChunkSize: tunnel.MaxMessageSize}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h, err := New(c.cfg)
			if (err == nil) != c.ok {
				t.Fatalf("New: err = %v, want ok=%v", err, c.ok)
			}
			if h != nil {
				if h.cfg.MaxInFlight != DefaultMaxInFlight || h.cfg.MaxRequestBody != DefaultMaxRequestBody || h.cfg.ChunkSize != DefaultChunkSize {
					t.Errorf("defaults not applied: %+v", h.cfg)
				}
				h.Close()
			}
		})
	}
}

// TestProxyRequest runs requests through the handler to a fake API server
// and checks the answer each gets, in both answer modes.
func TestProxyRequest(t *testing.T) {
	f := newFakeAPI(t)
	h, s, _ := newHandler(t, f, func(c *Config) { c.ChunkSize = 1000 })
	cases := []struct {
		name       string
		req        tunnel.ProxyRequest
		streaming  bool
		wantStatus int
		wantBody   string // substring
		wantSize   int    // exact body size when not 0
	}{
		{"GET buffered", tunnel.ProxyRequest{Method: "GET", Path: "/api/v1/namespaces/default/pods"}, false, 200, `"kind":"PodList"`, 0},
		{"GET streamed", tunnel.ProxyRequest{Method: "GET", Path: "/api/v1/namespaces/default/pods"}, true, 200, `"kind":"PodList"`, 0},
		{"POST with a body", tunnel.ProxyRequest{Method: "POST", Path: "/echo", Query: "a=1&b=2", Body: []byte(`{"x":1}`)}, false, 200, `"body":"{\"x\":1}"`, 0},
		{"query kept", tunnel.ProxyRequest{Method: "GET", Path: "/echo", Query: "watch=true&limit=5"}, false, 200, `"query":"watch=true\u0026limit=5"`, 0},
		{"large answer streamed in chunks", tunnel.ProxyRequest{Method: "GET", Path: "/big", Query: "n=2000000"}, true, 200, "abc", 2000000},
		{"404 is an answer", tunnel.ProxyRequest{Method: "GET", Path: "/nope"}, false, 404, "404", 0},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			id := "req-" + string(rune('a'+i))
			c.req.ResponseStreaming = c.streaming
			if !h.Deliver(message(t, tunnel.TypeProxyRequest, id, c.req)) {
				t.Fatal("Deliver did not take proxy_request")
			}
			ms := s.waitEnd(t, id, false)
			if c.streaming {
				if ms[0].Type != tunnel.TypeProxyResponseHeader || ms[len(ms)-1].Type != tunnel.TypeProxyResponseEnd {
					t.Fatalf("streamed answer = %s, want header, chunks, end", types(ms))
				}
			} else if len(ms) != 1 || ms[0].Type != tunnel.TypeProxyResponse {
				t.Fatalf("answer = %s, want one proxy_response", types(ms))
			}
			status, _, b := body(t, ms)
			if status != c.wantStatus || !bytes.Contains(b, []byte(c.wantBody)) {
				t.Fatalf("answer %d %q, want %d with %q", status, clip(b), c.wantStatus, c.wantBody)
			}
			if c.wantSize != 0 && !bytes.Equal(b, pattern(c.wantSize)) {
				t.Fatalf("body of %d bytes differs from what the server sent (%d)", len(b), c.wantSize)
			}
		})
	}
	if h.InFlight() != 0 {
		waitInFlight(t, h, 0)
	}
}

func clip(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "..."
	}
	return string(b)
}

// TestCredentialsAndHopByHop: the caller's Authorization and Impersonate-*
// headers never reach the API server (the agent's own token does), and
// hop-by-hop headers are dropped both ways.
func TestCredentialsAndHopByHop(t *testing.T) {
	f := newFakeAPI(t)
	h, s, _ := newHandler(t, f, nil)
	req := tunnel.ProxyRequest{Method: "GET", Path: "/api/v1/namespaces/default/pods", Headers: tunnel.Headers{
		"Authorization":       {"Bearer caller-token"},
		"Impersonate-User":    {"admin"},
		"Impersonate-Group":   {"system:masters"},
		"Connection":          {"X-Private"},
		"X-Private":           {"one hop only"},
		"Keep-Alive":          {"timeout=5"},
		"Proxy-Authorization": {"Basic eA=="},
		"Accept":              {"application/json"},
	}}
	h.Deliver(message(t, tunnel.TypeProxyRequest, "cred", req))
	status, hdr, _ := body(t, s.waitEnd(t, "cred", false))
	if status != 200 {
		t.Fatalf("status %d", status)
	}
	seen := f.headers("/api/v1/namespaces/default/pods")
	if got := seen.Get("Authorization"); got != "Bearer "+agentToken {
		t.Errorf("API server saw Authorization %q, want the agent's own token", got)
	}
	for _, name := range []string{"Impersonate-User", "Impersonate-Group", "X-Private", "Keep-Alive", "Proxy-Authorization"} {
		if v := seen.Get(name); v != "" {
			t.Errorf("API server saw %s: %q", name, v)
		}
	}
	if seen.Get("Accept") != "application/json" {
		t.Errorf("Accept not forwarded: %v", seen)
	}
	if hdr.Get("Proxy-Authenticate") != "" || hdr.Get("Content-Type") != "application/json" {
		t.Errorf("answer headers %v: want Content-Type and no hop-by-hop header", hdr)
	}
}

// TestStreamedRequestBody: a body sent in chunks (both payload keys)
// reaches the API server whole and in order.
func TestStreamedRequestBody(t *testing.T) {
	f := newFakeAPI(t)
	h, s, _ := newHandler(t, f, nil)
	h.Deliver(message(t, tunnel.TypeProxyRequest, "up", tunnel.ProxyRequest{Method: "PUT", Path: "/echo", StreamBody: true, Body: []byte("0:")}))
	var want strings.Builder
	want.WriteString("0:")
	for i := range 50 {
		part := strings.Repeat(string(rune('a'+i%26)), 100+i)
		want.WriteString(part)
		key := "data"
		if i%2 == 1 {
			key = "chunk"
		}
		h.Deliver(rawMessage(t, `{"type":"proxy_request_chunk","request_id":"up","payload":{"`+key+`":"`+b64(part)+`"}}`))
	}
	h.Deliver(rawMessage(t, `{"type":"proxy_request_stream_end","request_id":"up","payload":{}}`))
	_, _, b := body(t, s.waitEnd(t, "up", false))
	var got struct{ Method, Body string }
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatalf("answer %q: %v", clip(b), err)
	}
	if got.Method != "PUT" || got.Body != want.String() {
		t.Fatalf("API server got %s with %d bytes, want PUT with %d bytes in order", got.Method, len(got.Body), want.Len())
	}
}

// TestRequestBodyOverLimit: a streamed body over MaxRequestBody fails that
// request only, with 413.
func TestRequestBodyOverLimit(t *testing.T) {
	f := newFakeAPI(t)
	h, s, reg := newHandler(t, f, func(c *Config) { c.MaxRequestBody = 10 })
	h.Deliver(message(t, tunnel.TypeProxyRequest, "big", tunnel.ProxyRequest{Method: "PUT", Path: "/echo", StreamBody: true}))
	h.Deliver(message(t, tunnel.TypeProxyRequest, "other", tunnel.ProxyRequest{Method: "GET", Path: "/api/v1/namespaces/default/pods"}))
	for range 3 {
		h.Deliver(message(t, tunnel.TypeProxyRequestChunk, "big", tunnel.ProxyRequestChunk{Data: []byte("123456")}))
	}
	ms := s.waitEnd(t, "big", false)
	if last := ms[len(ms)-1]; last.Type != tunnel.TypeProxyError || failureOf(t, last).Status != http.StatusRequestEntityTooLarge {
		t.Fatalf("over-limit body answered %s, want proxy_error 413", types(ms))
	}
	if status, _, _ := body(t, s.waitEnd(t, "other", false)); status != 200 {
		t.Fatalf("the other request got %d", status)
	}
	waitInFlight(t, h, 0)
	if n := value(h.m.requests.WithLabelValues("body_too_large")); n != 1 {
		t.Fatalf("body_too_large = %v", n)
	}
	_ = reg
}

// TestRefusals: what the agent does not serve is answered with proxy_error
// and the right status, at once.
func TestRefusals(t *testing.T) {
	f := newFakeAPI(t)
	h, s, _ := newHandler(t, f, nil)
	cases := []struct {
		name   string
		msg    string
		status int
		text   string
	}{
		{"application path", `{"type":"proxy_request","request_id":"r1","payload":{"method":"GET","path":"/","service_name":"web","namespace":"shop","service_port":80}}`, 501, "yamux"},
		{"body_binary", `{"type":"proxy_request","request_id":"r2","payload":{"method":"POST","path":"/echo","body_binary":true}}`, 501, "body_binary"},
		{"WebSocket upgrade", `{"type":"proxy_request","request_id":"r3","payload":{"method":"GET","path":"/api/v1/namespaces/default/pods/x/exec","headers":{"Upgrade":"websocket","Connection":"Upgrade","Sec-WebSocket-Key":"dGhlIHNhbXBsZSBub25jZQ=="}}}`, 400, "ws_start"},
		{"is_websocket flag", `{"type":"proxy_request","request_id":"r4","payload":{"method":"GET","path":"/api/v1/x","is_websocket":true}}`, 400, "ws_start"},
		{"SPDY upgrade", `{"type":"proxy_request","request_id":"r5","payload":{"method":"POST","path":"/api/v1/x","headers":{"Upgrade":["SPDY/3.1"],"Connection":["Upgrade"]}}}`, 400, "ws_start"},
		{"relative path", `{"type":"proxy_request","request_id":"r6","payload":{"method":"GET","path":"api/v1/pods"}}`, 400, "malformed"},
		{"bad base64 body", `{"type":"proxy_request","request_id":"r7","payload":{"method":"POST","path":"/echo","body":"!!!","body_encoding":"base64"}}`, 400, "malformed"},
		{"bad method", `{"type":"proxy_request","request_id":"r8","payload":{"method":"GE(T","path":"/echo"}}`, 400, "method"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := rawMessage(t, c.msg)
			h.Deliver(m)
			ms := s.waitEnd(t, m.RequestID, false)
			fl := failureOf(t, ms[0])
			if len(ms) != 1 || ms[0].Type != tunnel.TypeProxyError || fl.Status != c.status || !strings.Contains(fl.Error, c.text) {
				t.Fatalf("answer %s %+v, want proxy_error %d mentioning %q", types(ms), fl, c.status, c.text)
			}
		})
	}
}

// TestDroppedMessages: what cannot be answered is dropped and counted,
// never answered to a wrong id.
func TestDroppedMessages(t *testing.T) {
	f := newFakeAPI(t)
	h, s, _ := newHandler(t, f, nil)
	cases := []struct {
		name, msg, reason string
	}{
		{"proxy_request without id", `{"type":"proxy_request","payload":{"method":"GET","path":"/echo"}}`, "no_request_id"},
		{"chunk of nothing", `{"type":"proxy_request_chunk","request_id":"ghost","payload":{"data":"aGk="}}`, "unknown_request"},
		{"stream end of nothing", `{"type":"proxy_request_stream_end","request_id":"ghost","payload":{}}`, "unknown_request"},
		{"cancel of nothing", `{"type":"proxy_cancel","request_id":"ghost"}`, "unknown_request"},
		{"ws_data of nothing", `{"type":"ws_data","request_id":"ghost","payload":{"stream_id":"ghost","data":"AWhp"}}`, "unknown_request"},
		{"ws_close of nothing", `{"type":"ws_close","payload":{"stream_id":"ghost"}}`, "unknown_request"},
		{"ws_data not a frame", `{"type":"ws_data","request_id":"ghost","payload":{"data":"!!"}}`, "bad_payload"},
		{"tcp data", `{"type":"tcp_tunnel_data","request_id":"t","payload":{"data":"aGk="}}`, "tcp_tunnel"},
		{"tcp close", `{"type":"tcp_tunnel_close","request_id":"t","payload":{"reason":"x"}}`, "tcp_tunnel"},
		{"udp", `{"type":"udp_tunnel_data","payload":{"tunnel_id":"u","data":"aGk="}}`, "udp_tunnel"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := value(h.m.drops.WithLabelValues(c.reason))
			if !h.Deliver(rawMessage(t, c.msg)) {
				t.Fatal("Deliver did not take it")
			}
			if after := value(h.m.drops.WithLabelValues(c.reason)); after != before+1 {
				t.Fatalf("dropped{reason=%s} went %v -> %v", c.reason, before, after)
			}
		})
	}
	// A chunk for a request whose body is not streamed is dropped too.
	h.Deliver(message(t, tunnel.TypeProxyRequest, "plain", tunnel.ProxyRequest{Method: "GET", Path: "/slow"}))
	h.Deliver(message(t, tunnel.TypeProxyRequestChunk, "plain", tunnel.ProxyRequestChunk{Data: []byte("x")}))
	if n := value(h.m.drops.WithLabelValues("unexpected_chunk")); n != 1 {
		t.Fatalf("unexpected_chunk = %v", n)
	}
	close(f.release)
	s.waitEnd(t, "plain", false)
	if ms, _ := s.of(""); len(ms) != 0 {
		t.Fatalf("sent %s without a request id", types(ms))
	}
}

// TestNoTimeLimitUnlessAsked: the call's context has no deadline unless the
// request gives a timeout or a deadline.
func TestNoTimeLimitUnlessAsked(t *testing.T) {
	f := newFakeAPI(t)
	h, s, _ := newHandler(t, f, nil)
	cases := []struct {
		name string
		req  tunnel.ProxyRequest
		want bool
	}{
		{"none given", tunnel.ProxyRequest{Method: "GET", Path: "/echo"}, false},
		{"timeout", tunnel.ProxyRequest{Method: "GET", Path: "/echo", Timeout: time.Minute}, true},
		{"deadline", tunnel.ProxyRequest{Method: "GET", Path: "/echo", Deadline: time.Now().Add(time.Hour)}, true},
		{"streamed, none given", tunnel.ProxyRequest{Method: "GET", Path: "/echo", ResponseStreaming: true}, false},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			id := "dl-" + string(rune('0'+i))
			h.Deliver(message(t, tunnel.TypeProxyRequest, id, c.req))
			select {
			case has := <-f.tr.deadlines:
				if has != c.want {
					t.Fatalf("context has deadline = %v, want %v", has, c.want)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("no request reached the transport")
			}
			s.waitEnd(t, id, false)
		})
	}
}

// TestTimeoutAnswers504: a request that outlives its own timeout is ended
// and answered 504 (proxy_response_abort once streaming began).
func TestTimeoutAnswers504(t *testing.T) {
	f := newFakeAPI(t)
	h, s, _ := newHandler(t, f, nil)
	h.Deliver(message(t, tunnel.TypeProxyRequest, "t1", tunnel.ProxyRequest{Method: "GET", Path: "/slow", Timeout: 100 * time.Millisecond}))
	ms := s.waitEnd(t, "t1", false)
	if fl := failureOf(t, ms[0]); ms[0].Type != tunnel.TypeProxyError || fl.Status != http.StatusGatewayTimeout {
		t.Fatalf("answer %s %+v, want proxy_error 504", types(ms), fl)
	}
	h.Deliver(message(t, tunnel.TypeProxyRequest, "t2", tunnel.ProxyRequest{Method: "GET", Path: "/watch", Timeout: 200 * time.Millisecond, ResponseStreaming: true}))
	ms = s.waitEnd(t, "t2", false)
	if ms[0].Type != tunnel.TypeProxyResponseHeader || ms[len(ms)-1].Type != tunnel.TypeProxyResponseAbort {
		t.Fatalf("streamed answer %s, want header then abort", types(ms))
	}
}

// TestWatchStreamsAndCancel: a streamed watch delivers an event written
// after it started at once; proxy_cancel ends the HTTP call for real, and
// nothing more is sent for it.
func TestWatchStreamsAndCancel(t *testing.T) {
	f := newFakeAPI(t)
	h, s, _ := newHandler(t, f, nil)
	h.Deliver(message(t, tunnel.TypeProxyRequest, "w", tunnel.ProxyRequest{Method: "GET", Path: "/watch", Query: "watch=true", ResponseStreaming: true}))
	s.waitFor(t, "w", "the header", func(ms []tunnel.Message) bool { return len(ms) == 1 })
	f.events <- `{"type":"ADDED","object":{"metadata":{"name":"late"}}}`
	ms := s.waitFor(t, "w", "the event", func(ms []tunnel.Message) bool { return len(ms) == 2 })
	if _, _, b := body(t, ms); !bytes.Contains(b, []byte(`"name":"late"`)) {
		t.Fatalf("chunk %q", b)
	}
	if n := value(h.m.inflight.WithLabelValues("request")); n != 1 {
		t.Fatalf("in-flight gauge %v during the watch", n)
	}
	h.Deliver(rawMessage(t, `{"type":"proxy_cancel","request_id":"w","payload":{}}`))
	select {
	case p := <-f.ended:
		if p != "/watch" {
			t.Fatalf("ended %s", p)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("proxy_cancel did not end the API server call")
	}
	waitInFlight(t, h, 0)
	if n := value(h.m.inflight.WithLabelValues("request")); n != 0 {
		t.Fatalf("in-flight gauge %v after cancel", n)
	}
	if ms, _ := s.of("w"); len(ms) != 2 {
		t.Fatalf("after cancel the agent sent %s", types(ms))
	}
}

// TestMaxInFlight: one request over the limit is answered 429 at once,
// while the others go on; a slow request does not hold up a fast one.
func TestMaxInFlight(t *testing.T) {
	f := newFakeAPI(t)
	h, s, _ := newHandler(t, f, func(c *Config) { c.MaxInFlight = 3 })
	for _, id := range []string{"s1", "s2"} {
		h.Deliver(message(t, tunnel.TypeProxyRequest, id, tunnel.ProxyRequest{Method: "GET", Path: "/slow"}))
	}
	// The third slot still serves a fast request while two are slow.
	h.Deliver(message(t, tunnel.TypeProxyRequest, "fast", tunnel.ProxyRequest{Method: "GET", Path: "/api/v1/namespaces/default/pods"}))
	if status, _, _ := body(t, s.waitEnd(t, "fast", false)); status != 200 {
		t.Fatalf("fast request: %d", status)
	}
	waitInFlight(t, h, 2)
	h.Deliver(message(t, tunnel.TypeProxyRequest, "s3", tunnel.ProxyRequest{Method: "GET", Path: "/slow"}))
	h.Deliver(message(t, tunnel.TypeProxyRequest, "over", tunnel.ProxyRequest{Method: "GET", Path: "/slow"}))
	ms := s.waitEnd(t, "over", false)
	if fl := failureOf(t, ms[0]); ms[0].Type != tunnel.TypeProxyError || fl.Status != http.StatusTooManyRequests {
		t.Fatalf("over the limit: %s %+v, want proxy_error 429", types(ms), fl)
	}
	// A duplicate id in flight is refused; the original goes on.
	h.Deliver(message(t, tunnel.TypeProxyRequest, "s1", tunnel.ProxyRequest{Method: "GET", Path: "/echo"}))
	ms = s.waitEnd(t, "s1", false)
	if fl := failureOf(t, ms[0]); fl.Status != http.StatusBadRequest || !strings.Contains(fl.Error, "already in flight") {
		t.Fatalf("duplicate id: %+v", fl)
	}
	close(f.release)
	for _, id := range []string{"s1", "s2", "s3"} {
		s.waitFor(t, id, "the answer", func(ms []tunnel.Message) bool {
			return len(ms) > 0 && ms[len(ms)-1].Type == tunnel.TypeProxyResponse
		})
	}
	waitInFlight(t, h, 0)
}

// TestUnreachable: an API server that cannot be reached is answered 502.
func TestUnreachable(t *testing.T) {
	f := newFakeAPI(t)
	dead, _ := url.Parse("http://127.0.0.1:1")
	h, s, _ := newHandler(t, f, func(c *Config) { c.APIServer = dead })
	for _, streaming := range []bool{false, true} {
		id := "u-" + map[bool]string{false: "buffered", true: "streamed"}[streaming]
		h.Deliver(message(t, tunnel.TypeProxyRequest, id, tunnel.ProxyRequest{Method: "GET", Path: "/version", ResponseStreaming: streaming}))
		ms := s.waitEnd(t, id, false)
		if fl := failureOf(t, ms[0]); len(ms) != 1 || ms[0].Type != tunnel.TypeProxyError || fl.Status != http.StatusBadGateway {
			t.Fatalf("%s: %s %+v, want one proxy_error 502", id, types(ms), fl)
		}
	}
}

// TestResponseTooLargeForOneMessage: a buffered answer that would not fit
// in one message is refused with a hint to stream.
func TestResponseTooLargeForOneMessage(t *testing.T) {
	f := newFakeAPI(t)
	h, s, _ := newHandler(t, f, nil)
	h.Deliver(message(t, tunnel.TypeProxyRequest, "huge", tunnel.ProxyRequest{Method: "GET", Path: "/big", Query: "n=900000"}))
	ms := s.waitEnd(t, "huge", false)
	if fl := failureOf(t, ms[0]); ms[0].Type != tunnel.TypeProxyError || !strings.Contains(fl.Error, "supports_response_streaming") {
		t.Fatalf("answer %s %+v", types(ms), fl)
	}
	// Just under the bound fits.
	h.Deliver(message(t, tunnel.TypeProxyRequest, "fits", tunnel.ProxyRequest{Method: "GET", Path: "/big", Query: "n=700000"}))
	if _, _, b := body(t, s.waitEnd(t, "fits", false)); len(b) != 700000 {
		t.Fatalf("body %d bytes", len(b))
	}
}

// TestResetAndClose: Reset ends everything in flight without a word; the
// handler keeps serving. Close waits for every goroutine (goleak checks).
func TestResetAndClose(t *testing.T) {
	f := newFakeAPI(t)
	h, s, _ := newHandler(t, f, nil)
	h.Deliver(message(t, tunnel.TypeProxyRequest, "w", tunnel.ProxyRequest{Method: "GET", Path: "/watch", ResponseStreaming: true}))
	h.Deliver(message(t, tunnel.TypeProxyRequest, "up", tunnel.ProxyRequest{Method: "PUT", Path: "/echo", StreamBody: true}))
	s.waitFor(t, "w", "the header", func(ms []tunnel.Message) bool { return len(ms) == 1 })
	h.Reset()
	waitInFlight(t, h, 0)
	if ms, _ := s.of("w"); len(ms) != 1 {
		t.Fatalf("after Reset the agent sent %s", types(ms))
	}
	if ms, _ := s.of("up"); len(ms) != 0 {
		t.Fatalf("after Reset the agent sent %s", types(ms))
	}
	// The same id works again after a reset.
	h.Deliver(message(t, tunnel.TypeProxyRequest, "w", tunnel.ProxyRequest{Method: "GET", Path: "/api/v1/namespaces/default/pods"}))
	s.waitFor(t, "w", "a new answer", func(ms []tunnel.Message) bool { return len(ms) == 2 && ms[1].Type == tunnel.TypeProxyResponse })

	h.Deliver(message(t, tunnel.TypeProxyRequest, "w2", tunnel.ProxyRequest{Method: "GET", Path: "/watch", ResponseStreaming: true}))
	s.waitFor(t, "w2", "the header", func(ms []tunnel.Message) bool { return len(ms) == 1 })
	h.Close()
	if h.InFlight() != 0 {
		t.Fatalf("in flight %d after Close", h.InFlight())
	}
	if !h.Deliver(message(t, tunnel.TypeProxyRequest, "late", tunnel.ProxyRequest{Method: "GET", Path: "/echo"})) {
		t.Fatal("Deliver after Close must still take its types")
	}
	if h.InFlight() != 0 {
		t.Fatal("a request started after Close")
	}
}

// TestTCPTunnelStartRefused: tcp_tunnel_start is answered with
// tcp_tunnel_close of the same id.
func TestTCPTunnelStartRefused(t *testing.T) {
	f := newFakeAPI(t)
	h, s, _ := newHandler(t, f, nil)
	fx := pipeopsfixtures.Load("tcp_tunnel_start")
	m := rawMessage(t, string(fx.JSON))
	if !h.Deliver(m) {
		t.Fatal("Deliver did not take tcp_tunnel_start")
	}
	ms := s.waitEnd(t, m.RequestID, true)
	var c tunnel.TCPTunnelClose
	if err := ms[0].DecodePayload(&c); err != nil || ms[0].Type != tunnel.TypeTCPTunnelClose || c.Reason != "connection_failed" || !strings.Contains(c.Error, "yamux") {
		t.Fatalf("answer %s %+v %v", types(ms), c, err)
	}
}

// TestFixturesDelivered: every fixture of the protocol goes through
// Deliver without a panic; the JSON proxy types are taken, the others are
// left to the caller.
func TestFixturesDelivered(t *testing.T) {
	f := newFakeAPI(t)
	h, _, _ := newHandler(t, f, nil)
	ours := map[string]bool{}
	for _, typ := range []string{
		tunnel.TypeProxyRequest, tunnel.TypeProxyRequestChunk, tunnel.TypeProxyRequestStreamEnd, tunnel.TypeProxyCancel,
		tunnel.TypeWSStart, tunnel.TypeWSStartAlias, tunnel.TypeWSData, tunnel.TypeWSDataAlias, tunnel.TypeWSClose, tunnel.TypeWSCloseAlias,
		tunnel.TypeTCPTunnelStart, tunnel.TypeTCPTunnelData, tunnel.TypeTCPTunnelClose, tunnel.TypeUDPTunnelData,
	} {
		ours[typ] = true
	}
	n := 0
	for _, fx := range pipeopsfixtures.All() {
		t.Run(fx.Name, func(t *testing.T) {
			m := rawMessage(t, string(fx.JSON))
			got := h.Deliver(m)
			if got != ours[fx.Type] {
				t.Fatalf("Deliver(%s) = %v, want %v", fx.Type, got, ours[fx.Type])
			}
			if fx.Direction == pipeopsfixtures.ServerToAgent && ours[fx.Type] {
				n++
			}
		})
	}
	if n < 10 {
		t.Fatalf("only %d server→agent proxy fixtures", n)
	}
	h.Reset()
	waitInFlight(t, h, 0)
}
