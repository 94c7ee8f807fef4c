package tunnel

import (
	"encoding/json"
	"slices"
	"sort"
	"testing"

	"github.com/pipeops/tunnel/shared/tunnel/pipeopsfixtures"
)

// What we write must be what PipeOps peers read: for every message type our
// agent or our servers send, the fixture (the peer's own shape) is decoded
// into our type and encoded again, and the payload keys must be the
// fixture's, but for the differences listed (keys a peer never reads that
// the fixture carries, or optional keys we add).
func TestEncodersWritePipeOpsShapes(t *testing.T) {
	cases := []struct {
		fixture string
		missing []string // in the fixture, not written by us
		extra   []string // written by us, not in the fixture
	}{
		// Our agent's messages, as hosted PipeOps reads them.
		{fixture: "register"},
		{fixture: "heartbeat"},
		{fixture: "heartbeat_monitoring", missing: []string{"opencost_username", "opencost_password", "loki_ssl", "grafana_ssl", "prometheus_ssl"}},
		{fixture: "proxy_response"},
		{fixture: "proxy_response_header"},
		{fixture: "proxy_response_chunk"},
		{fixture: "proxy_response_end"},
		{fixture: "proxy_response_abort"},
		{fixture: "proxy_error"},
		{fixture: "proxy_websocket_data"},
		{fixture: "proxy_websocket_close"},
		{fixture: "tcp_tunnel_close"},
		{fixture: "gateway_hello_ack"},
		// Our servers' messages, as PipeOps agents read them.
		{fixture: "register_success"},
		{fixture: "error"},
		{fixture: "gateway_hello"},
		{fixture: "proxy_request", missing: []string{"body", "body_encoding"}}, // an empty body is not sent
		{fixture: "proxy_request_body"},
		{fixture: "proxy_request_streamed"},
		{fixture: "proxy_request_chunk"},
		{fixture: "proxy_request_stream_end"},
		{fixture: "proxy_cancel", missing: []string{"reason"}},
		{fixture: "heartbeat_ack", missing: []string{"status"}},
	}
	covered := map[string]bool{}
	for _, tt := range cases {
		t.Run(tt.fixture, func(t *testing.T) {
			f := pipeopsfixtures.Load(tt.fixture)
			covered[f.Type] = true
			m, err := DecodeMessage(f.JSON)
			if err != nil {
				t.Fatal(err)
			}
			v := payloadFor(m.Type)
			if err := m.DecodePayload(v); err != nil {
				t.Fatal(err)
			}
			ours, err := NewMessage(m.Type, v)
			if err != nil {
				t.Fatal(err)
			}
			got, want := payloadKeys(t, ours.Payload), payloadKeys(t, m.Payload)
			for _, k := range tt.missing {
				want = slices.DeleteFunc(want, func(s string) bool { return s == k })
			}
			want = append(want, tt.extra...)
			sort.Strings(want)
			if !slices.Equal(got, want) {
				t.Errorf("we write keys %v, the peer's shape has %v\nours: %s\ntheirs: %s", got, want, ours.Payload, m.Payload)
			}
		})
	}
}

func payloadKeys(t *testing.T, raw json.RawMessage) []string {
	t.Helper()
	var m map[string]json.RawMessage
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatalf("payload %s: %v", raw, err)
		}
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
