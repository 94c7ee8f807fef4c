package jsonproxy

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/pipeops/tunnel/shared/tunnel"
	"github.com/pipeops/tunnel/shared/tunnel/pipeopsfixtures"
)

// FuzzDeliver feeds sequences of control messages (one JSON message per
// line) to a Handler on a fake API server. Whatever arrives, Deliver must
// not panic, every answer must encode and name an id the input used, and
// Close must leave nothing running.
func FuzzDeliver(f *testing.F) {
	for _, fx := range pipeopsfixtures.All() {
		f.Add(fx.JSON)
	}
	seq := func(names ...string) []byte {
		var parts [][]byte
		for _, n := range names {
			parts = append(parts, pipeopsfixtures.Load(n).JSON)
		}
		return bytes.Join(parts, []byte("\n"))
	}
	f.Add(seq("proxy_request_streamed", "proxy_request_chunk", "proxy_request_chunk_alt", "proxy_request_stream_end"))
	f.Add(seq("proxy_request", "proxy_cancel"))
	f.Add(seq("proxy_request", "proxy_request"))
	f.Add(seq("ws_start", "ws_data", "proxy_websocket_data", "ws_close"))
	f.Add(seq("proxy_websocket_start", "proxy_websocket_close", "proxy_websocket_start"))
	f.Add(seq("tcp_tunnel_start", "tcp_tunnel_data", "tcp_tunnel_close", "udp_tunnel_data"))
	f.Add([]byte(`{"type":"proxy_request","request_id":"w","payload":{"path":"/watch","supports_response_streaming":true}}` + "\n" +
		`{"type":"proxy_request","request_id":"s","payload":{"path":"/slow","use_streaming":true}}` + "\n" +
		`{"type":"proxy_request_chunk","request_id":"s","payload":{"chunk":"aGVsbG8="}}` + "\n" +
		`{"type":"proxy_cancel","request_id":"w"}`))
	f.Add([]byte(`{"type":"ws_start","request_id":"e","payload":{"path":"/ws/echo","protocol":"echo"}}` + "\n" +
		`{"type":"ws_data","request_id":"e","payload":{"data":"AWhp"}}` + "\n" +
		`{"type":"ws_data","request_id":"e","payload":{"data":"CA=="}}`))

	api := newFakeAPI(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		s := newSink()
		h, err := New(Config{Transport: api.tr, APIServer: api.url, Send: s.Send, DialWebSocket: api.dialer(),
			MaxInFlight: 4, MaxRequestBody: 1 << 16, WebSocketQueue: 1 << 12, ChunkSize: 512})
		if err != nil {
			t.Fatal(err)
		}
		ids := map[string]bool{}
		for _, line := range bytes.Split(in, []byte("\n")) {
			m, err := tunnel.DecodeMessage(line)
			if err != nil {
				continue
			}
			ids[m.RequestID] = true
			var p struct {
				StreamID  any `json:"stream_id"`
				RequestID any `json:"request_id"`
			}
			if json.Unmarshal(m.Payload, &p) == nil {
				for _, v := range []any{p.StreamID, p.RequestID} {
					if id, ok := v.(string); ok {
						ids[id] = true
					}
				}
			}
			h.Deliver(m)
		}
		h.Close()
		if n := h.InFlight(); n != 0 {
			t.Fatalf("%d in flight after Close", n)
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, m := range s.msgs {
			if m.RequestID == "" || !ids[m.RequestID] {
				t.Fatalf("sent %s for an id the input did not use", m.String())
			}
			if _, err := m.Encode(); err != nil {
				t.Fatalf("sent a message that does not encode: %v", err)
			}
		}
	})
}
