package jsonproxy

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/pipeops/tunnel/shared/tunnel"
)

func wsFrames(t testing.TB, ms []tunnel.Message) []tunnel.WSData {
	t.Helper()
	var out []tunnel.WSData
	for _, m := range ms {
		if m.Type == tunnel.TypeWSDataAlias {
			var d tunnel.WSData
			if err := m.DecodePayload(&d); err != nil {
				t.Fatal(err)
			}
			out = append(out, d)
		}
	}
	return out
}

// TestWebSocketRelay: frames go both ways in order, with the agent's own
// credentials on the dial; a close from the server is written after the
// frames before it and echoed.
func TestWebSocketRelay(t *testing.T) {
	f := newFakeAPI(t)
	h, s, _ := newHandler(t, f, nil)
	h.Deliver(rawMessage(t, `{"type":"ws_start","request_id":"ex","payload":{"stream_id":"ex","method":"GET","path":"/ws/echo","query":"a=b",
		"headers":{"Authorization":["Bearer caller-token"],"Sec-WebSocket-Protocol":"echo"}}}`))
	const n = 100
	for i := range n {
		h.Deliver(message(t, tunnel.TypeWSData, "ex", tunnel.WSData{StreamID: "ex", FrameType: tunnel.WSFrameBinary, Payload: []byte{byte(i)}}))
	}
	h.Deliver(rawMessage(t, `{"type":"proxy_websocket_data","request_id":"ex","payload":{"request_id":"ex","data":"aGk=","message_type":1}}`))
	h.Deliver(rawMessage(t, `{"type":"ws_close","request_id":"ex","payload":{"stream_id":"ex"}}`))
	ms := s.waitEnd(t, "ex", true)
	frames := wsFrames(t, ms)
	if len(frames) != n+1 {
		t.Fatalf("echoed %d frames, want %d: %s", len(frames), n+1, types(ms))
	}
	for i, d := range frames[:n] {
		if d.FrameType != tunnel.WSFrameBinary || len(d.Payload) != 1 || d.Payload[0] != byte(i) {
			t.Fatalf("frame %d = %+v: out of order or changed", i, d)
		}
	}
	if last := frames[n]; last.FrameType != tunnel.WSFrameText || string(last.Payload) != "hi" {
		t.Fatalf("text frame = %+v", last)
	}
	var c tunnel.WSClose
	if err := ms[len(ms)-1].DecodePayload(&c); err != nil || c.StreamID != "ex" {
		t.Fatalf("close %+v %v", c, err)
	}
	seen := f.headers("/ws/echo")
	if seen.Get("Authorization") != "Bearer "+agentToken || seen.Get("Sec-WebSocket-Protocol") != "echo" {
		t.Fatalf("dial headers %v", seen)
	}
	waitInFlight(t, h, 0)
}

// TestWebSocketClosedByAPIServer: the API server closing ends the relay with
// proxy_websocket_close.
func TestWebSocketClosedByAPIServer(t *testing.T) {
	f := newFakeAPI(t)
	h, s, _ := newHandler(t, f, nil)
	h.Deliver(message(t, tunnel.TypeWSStart, "ex", tunnel.WSStart{StreamID: "ex", Path: "/ws/echo", Protocol: "echo"}))
	h.Deliver(message(t, tunnel.TypeWSData, "ex", tunnel.WSData{StreamID: "ex", FrameType: tunnel.WSFrameText, Payload: []byte("bye")}))
	ms := s.waitEnd(t, "ex", true)
	if len(ms) != 1 || ms[0].Type != tunnel.TypeWSCloseAlias {
		t.Fatalf("got %s, want proxy_websocket_close", types(ms))
	}
	waitInFlight(t, h, 0)
}

// TestWebSocketDialFailure: a dial the API server refuses is answered with
// proxy_error carrying its status, then proxy_websocket_close.
func TestWebSocketDialFailure(t *testing.T) {
	f := newFakeAPI(t)
	h, s, _ := newHandler(t, f, nil)
	fx := rawMessage(t, `{"type":"ws_start","request_id":"ex-5","payload":{"stream_id":"ex-5","path":"/api/v1/namespaces/default/pods/web-0/exec","query":"command=sh"}}`)
	h.Deliver(fx)
	ms := s.waitEnd(t, "ex-5", true)
	if len(ms) != 2 || ms[0].Type != tunnel.TypeProxyError || ms[1].Type != tunnel.TypeWSCloseAlias {
		t.Fatalf("got %s, want proxy_error then proxy_websocket_close", types(ms))
	}
	if fl := failureOf(t, ms[0]); fl.Status != http.StatusNotFound || !strings.Contains(fl.Error, "status: 404") {
		t.Fatalf("proxy_error %+v", fl)
	}
	// Without a dialer, ws_start is refused the same way.
	h2, s2, _ := newHandler(t, f, func(c *Config) { c.DialWebSocket = nil })
	h2.Deliver(fx)
	ms = s2.waitEnd(t, "ex-5", true)
	if len(ms) != 2 || failureOf(t, ms[0]).Status != http.StatusNotImplemented {
		t.Fatalf("without a dialer: %s", types(ms))
	}
}

// TestWebSocketBackpressure: frames beyond the relay's queue close that
// relay (backpressure, then proxy_websocket_close); another relay is
// unaffected.
func TestWebSocketBackpressure(t *testing.T) {
	f := newFakeAPI(t)
	gate := make(chan struct{})
	h, s, _ := newHandler(t, f, func(c *Config) {
		c.WebSocketQueue = 10
		dial := f.dialer()
		c.DialWebSocket = func(ctx context.Context, u string, hdr http.Header, p []string) (*websocket.Conn, *http.Response, error) {
			if strings.Contains(u, "slow=1") {
				select {
				case <-gate:
				case <-ctx.Done():
					return nil, nil, ctx.Err()
				}
			}
			return dial(ctx, u, hdr, p)
		}
	})
	h.Deliver(message(t, tunnel.TypeWSStart, "slow", tunnel.WSStart{StreamID: "slow", Path: "/ws/echo", Query: "slow=1", Protocol: "echo"}))
	h.Deliver(message(t, tunnel.TypeWSStart, "ok", tunnel.WSStart{StreamID: "ok", Path: "/ws/echo", Protocol: "echo"}))
	for range 3 {
		h.Deliver(message(t, tunnel.TypeWSData, "slow", tunnel.WSData{StreamID: "slow", FrameType: tunnel.WSFrameBinary, Payload: []byte("12345678")}))
	}
	h.Deliver(message(t, tunnel.TypeWSData, "ok", tunnel.WSData{StreamID: "ok", FrameType: tunnel.WSFrameText, Payload: []byte("still here")}))
	ms := s.waitEnd(t, "slow", true)
	if len(ms) != 2 || ms[0].Type != tunnel.TypeBackpressure || ms[1].Type != tunnel.TypeWSCloseAlias {
		t.Fatalf("overflowing relay: %s, want backpressure then proxy_websocket_close", types(ms))
	}
	var bp tunnel.Backpressure
	if err := ms[0].DecodePayload(&bp); err != nil || bp.Reason != "channel_full" || bp.RequestID != "slow" {
		t.Fatalf("backpressure %+v %v", bp, err)
	}
	got := s.waitFor(t, "ok", "the echo", func(ms []tunnel.Message) bool { return len(wsFrames(t, ms)) == 1 })
	if string(wsFrames(t, got)[0].Payload) != "still here" {
		t.Fatalf("other relay: %s", types(got))
	}
	close(gate)
	h.Deliver(message(t, tunnel.TypeProxyCancel, "ok", tunnel.Empty{}))
	waitInFlight(t, h, 0)
	if ms, _ := s.of("ok"); len(ms) != 1 {
		t.Fatalf("cancelled relay sent %s", types(ms))
	}
}

// TestSubprotocols: what the dial offers.
func TestSubprotocols(t *testing.T) {
	cases := []struct {
		name string
		st   tunnel.WSStart
		want string
	}{
		{"protocol and header", tunnel.WSStart{Path: "/x", Protocol: "a", Headers: tunnel.Headers{"Sec-WebSocket-Protocol": {"b, a", "c"}}}, "a b c"},
		{"exec defaults", tunnel.WSStart{Path: "/api/v1/namespaces/d/pods/p/exec"}, strings.Join(defaultSubprotos, " ")},
		{"portforward defaults", tunnel.WSStart{Path: "/api/v1/namespaces/d/pods/p/portforward"}, strings.Join(defaultSubprotos, " ")},
		{"other path: none", tunnel.WSStart{Path: "/api/v1/namespaces/d/pods/execs"}, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := strings.Join(subprotocols(c.st), " "); got != c.want {
				t.Fatalf("subprotocols = %q, want %q", got, c.want)
			}
		})
	}
}

// TestWebSocketDialerFor: the dialer built from a rest config carries the
// config's token, not the caller's.
func TestWebSocketDialerFor(t *testing.T) {
	f := newFakeAPI(t)
	rc := restConfig(f.srv.URL, agentToken)
	dial, err := WebSocketDialerFor(rc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	u := "ws" + strings.TrimPrefix(f.srv.URL, "http") + "/ws/echo"
	conn, resp, err := dial(ctx, u, http.Header{"X-Extra": {"1"}}, []string{"echo"})
	if err != nil {
		t.Fatalf("dial: %v (%v)", err, resp)
	}
	defer conn.Close()
	if err := conn.WriteMessage(websocket.TextMessage, []byte("ping")); err != nil {
		t.Fatal(err)
	}
	if _, b, err := conn.ReadMessage(); err != nil || string(b) != "ping" {
		t.Fatalf("echo %q %v", b, err)
	}
	if seen := f.headers("/ws/echo"); seen.Get("X-Extra") != "1" {
		t.Fatalf("headers %v", seen)
	}
	if _, _, err := dial(ctx, "http://x/", nil, nil); err == nil {
		t.Fatal("a non-WebSocket URL was dialled")
	}
}
