package tunnel

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pipeops/tunnel/shared/tunnel/pipeopsfixtures"
)

// payloadFor returns an empty value of the payload type of a message type,
// for every type of the PipeOps protocol.
func payloadFor(typ string) any {
	switch typ {
	case TypeRegister:
		return new(Register)
	case TypeRegisterSuccess:
		return new(RegisterSuccess)
	case TypeError:
		return new(ErrorPayload)
	case TypeGatewayHello:
		return new(GatewayHello)
	case TypeGatewayHelloAck:
		return new(GatewayHelloAck)
	case TypeHeartbeat:
		return new(Heartbeat)
	case TypeHeartbeatAck:
		return new(HeartbeatAck)
	case TypePing:
		return new(Ping)
	case TypePong:
		return new(Pong)
	case TypeProxyRequest:
		return new(ProxyRequest)
	case TypeProxyRequestChunk:
		return new(ProxyRequestChunk)
	case TypeProxyResponse:
		return new(ProxyResponse)
	case TypeProxyResponseHeader:
		return new(ProxyResponseHeader)
	case TypeProxyResponseChunk:
		return new(ProxyResponseChunk)
	case TypeProxyError, TypeProxyResponseAbort:
		return new(ProxyFailure)
	case TypeProxyResponseEnd, TypeProxyCancel, TypeProxyRequestStreamEnd, TypeRegisterInProgress:
		return new(Empty)
	case TypeWSStart, TypeWSStartAlias:
		return new(WSStart)
	case TypeWSData, TypeWSDataAlias:
		return new(WSData)
	case TypeWSClose, TypeWSCloseAlias:
		return new(WSClose)
	case TypeTCPTunnelStart:
		return new(TCPTunnelStart)
	case TypeTCPTunnelData:
		return new(TCPTunnelData)
	case TypeTCPTunnelClose:
		return new(TCPTunnelClose)
	case TypeUDPTunnelData:
		return new(UDPTunnelData)
	case TypeBackpressure:
		return new(Backpressure)
	case TypeProtocolFallback:
		return new(ProtocolFallback)
	}
	return nil
}

// Every message type of the protocol has a fixture, and every fixture
// decodes, envelope and payload, with this package's decoders.
func TestPipeOpsFixturesDecode(t *testing.T) {
	seen := map[string]bool{}
	for _, f := range pipeopsfixtures.All() {
		t.Run(f.Name, func(t *testing.T) {
			seen[f.Type] = true
			m, err := DecodeMessage(f.JSON)
			if err != nil {
				t.Fatalf("DecodeMessage: %v", err)
			}
			if m.Timestamp.IsZero() {
				t.Errorf("timestamp not decoded")
			}
			v := payloadFor(m.Type)
			if v == nil {
				t.Fatalf("no payload type for %q", m.Type)
			}
			if err := m.DecodePayload(v); err != nil {
				t.Fatalf("DecodePayload(%T): %v", v, err)
			}
		})
	}
	for _, typ := range pipeopsfixtures.Types() {
		if !seen[typ] {
			t.Errorf("message type %q has no fixture", typ)
		}
		if payloadFor(typ) == nil {
			t.Errorf("message type %q has no payload type", typ)
		}
	}
}

func decodeFixture[T any](t *testing.T, name string) (Message, T) {
	t.Helper()
	var v T
	m, err := DecodeMessage(pipeopsfixtures.Load(name).JSON)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.DecodePayload(&v); err != nil {
		t.Fatal(err)
	}
	return m, v
}

// The values that matter in each fixture decode to what they say.
func TestPipeOpsFixtureValues(t *testing.T) {
	t.Run("register", func(t *testing.T) {
		_, r := decodeFixture[Register](t, "register")
		if r.Name != "staging-fra" || r.ServerIP != "198.51.100.23" || r.CloudProvider != "hetzner" || r.Labels["team"] != "payments" ||
			r.TunnelPortConfig["kubelet"] != float64(10250) || r.ServerSpecs["cpu_cores"] != float64(8) ||
			r.Features["supports_gateway"] != true || r.K8sServiceToken == "" || r.ClusterID != "" {
			t.Errorf("register = %+v", r)
		}
	})
	t.Run("register_success", func(t *testing.T) {
		m, r := decodeFixture[RegisterSuccess](t, "register_success")
		if m.RequestID == "" || r.ClusterID == "" || r.WorkspaceID != "1187" || r.APIServer == "" || r.TunnelURL != "https://gw.example.test" {
			t.Errorf("register_success = %+v", r)
		}
	})
	t.Run("heartbeat", func(t *testing.T) {
		_, hb := decodeFixture[Heartbeat](t, "heartbeat")
		if hb.Metadata.CPUUsage != Percent(0) || hb.Metadata.MemoryUsage != Percent(0) || hb.Metadata.K8sPods != 57 ||
			NormalTunnelStatus(hb.TunnelStatus) != TunnelConnected || !hb.Metadata.IsPrivate {
			t.Errorf("heartbeat = %+v", hb)
		}
	})
	t.Run("heartbeat monitoring is stored without secrets", func(t *testing.T) {
		_, hb := decodeFixture[Heartbeat](t, "heartbeat_monitoring")
		pub := hb.Public()
		if pub["prometheus_url"] == nil || pub["grafana_password_set"] != true || pub["worker_join_offered"] != true {
			t.Errorf("Public() = %v", pub)
		}
		b, _ := json.Marshal(pub)
		for _, secret := range []string{"fixture-prom-password", "fixture-grafana-password", "fixture-loki-password", "fixture-k3s-join-token"} {
			if bytes.Contains(b, []byte(secret)) {
				t.Errorf("Public() holds %q: %s", secret, b)
			}
		}
		if NormalTunnelStatus(hb.TunnelStatus) != TunnelDisconnected {
			t.Errorf("tunnel_status %q", hb.TunnelStatus)
		}
	})
	t.Run("proxy_request", func(t *testing.T) {
		m, r := decodeFixture[ProxyRequest](t, "proxy_request")
		if m.RequestID != "pr-41d2" || r.Method != "GET" || r.Query != "limit=50" || !r.ResponseStreaming || r.Timeout != 30*time.Second ||
			len(r.Body) != 0 || r.Headers.Header().Get("User-Agent") != "kubectl/v1.31.0" {
			t.Errorf("proxy_request = %+v", r)
		}
	})
	t.Run("proxy_request body", func(t *testing.T) {
		_, r := decodeFixture[ProxyRequest](t, "proxy_request_body")
		if !strings.HasPrefix(string(r.Body), `{"apiVersion":"v1","kind":"ConfigMap"`) || r.Timeout != 45*time.Second || r.ResponseStreaming {
			t.Errorf("proxy_request = %+v body %q", r, r.Body)
		}
	})
	t.Run("proxy_request streamed", func(t *testing.T) {
		_, r := decodeFixture[ProxyRequest](t, "proxy_request_streamed")
		if !r.StreamBody || r.Deadline.IsZero() {
			t.Errorf("proxy_request = %+v", r)
		}
		_, c1 := decodeFixture[ProxyRequestChunk](t, "proxy_request_chunk")
		_, c2 := decodeFixture[ProxyRequestChunk](t, "proxy_request_chunk_alt")
		if got := string(c1.Data) + string(c2.Data); got != `{"apiVersion":"v1","kind":"ConfigMap"}` {
			t.Errorf("chunks = %q", got)
		}
	})
	t.Run("proxy_response gzip", func(t *testing.T) {
		_, r := decodeFixture[ProxyResponse](t, "proxy_response_gzip")
		if r.Status != 200 || !bytes.Contains(r.Body, []byte(`"cm-39"`)) {
			t.Errorf("proxy_response = %d %q", r.Status, r.Body)
		}
		_, e := decodeFixture[ProxyResponse](t, "proxy_response_empty")
		if e.Status != 200 || e.Body != nil {
			t.Errorf("empty proxy_response = %+v", e)
		}
	})
	t.Run("proxy_response_chunk", func(t *testing.T) {
		_, c := decodeFixture[ProxyResponseChunk](t, "proxy_response_chunk")
		if string(c.Data) != `{"kind":"ConfigMapList"}` {
			t.Errorf("chunk = %q", c.Data)
		}
	})
	t.Run("ws_data", func(t *testing.T) {
		_, d := decodeFixture[WSData](t, "ws_data")
		if d.StreamID != "ex-5" || d.FrameType != WSFrameBinary || string(d.Payload) != "\x00ls\n" {
			t.Errorf("ws_data = %+v", d)
		}
		_, d2 := decodeFixture[WSData](t, "proxy_websocket_data")
		if d2.FrameType != WSFrameBinary || string(d2.Payload) != "\x01file1\n" {
			t.Errorf("proxy_websocket_data = %+v", d2)
		}
	})
	t.Run("ws_start", func(t *testing.T) {
		_, s := decodeFixture[WSStart](t, "proxy_websocket_start")
		if s.StreamID != "ex-6" || s.Headers.Header().Get("Sec-WebSocket-Protocol") != "v4.channel.k8s.io" {
			t.Errorf("ws_start = %+v", s)
		}
	})
	t.Run("protocol_fallback", func(t *testing.T) {
		_, p := decodeFixture[ProtocolFallback](t, "protocol_fallback")
		if p.UnknownType != "config_update" || !slices.Contains(p.SupportedTypes, "proxy_request") {
			t.Errorf("protocol_fallback = %+v", p)
		}
	})
}

// What we encode decodes back to the same value, and the wire field names
// are the protocol's.
func TestProxyRoundTrip(t *testing.T) {
	deadline := time.Date(2026, 12, 5, 9, 5, 10, 0, time.UTC)
	cases := []struct {
		typ  string
		v    any
		keys []string
	}{
		{TypeProxyRequest, &ProxyRequest{Method: "PATCH", Path: "/apis/apps/v1/namespaces/x/deployments/y", Query: "fieldManager=k",
			Headers: Headers{"Content-Type": {"application/merge-patch+json"}}, Body: []byte{0, 1, 2, 0xff}, StreamBody: true,
			ResponseStreaming: true, Timeout: 1500 * time.Millisecond, Deadline: deadline},
			[]string{`"body_encoding":"base64"`, `"use_streaming":true`, `"supports_response_streaming":true`, `"timeout":1500`}},
		{TypeProxyResponse, &ProxyResponse{Status: 404, Headers: Headers{"A": {"1", "2"}}, Body: []byte("nope")}, []string{`"encoding":"base64"`}},
		{TypeProxyResponseHeader, &ProxyResponseHeader{Status: 200, Headers: Headers{"Content-Type": {"application/json"}}}, []string{`"status":200`}},
		{TypeProxyResponseChunk, &ProxyResponseChunk{Data: []byte("abc")}, []string{`"size":3`, `"encoding":"base64"`}},
		{TypeProxyRequestChunk, &ProxyRequestChunk{Data: []byte("abc")}, []string{`"data":"YWJj"`}},
		{TypeWSData, &WSData{StreamID: "s", FrameType: WSFrameText, Payload: []byte("hi")}, []string{`"message_type":1`, `"stream_id":"s"`}},
		{TypeProxyError, &ProxyFailure{Error: "boom", Status: 502}, []string{`"error":"boom"`}},
	}
	for _, tt := range cases {
		t.Run(tt.typ, func(t *testing.T) {
			m, err := NewMessage(tt.typ, reflect.ValueOf(tt.v).Elem().Interface())
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range tt.keys {
				if !bytes.Contains(m.Payload, []byte(k)) {
					t.Errorf("payload %s lacks %s", m.Payload, k)
				}
			}
			got := reflect.New(reflect.TypeOf(tt.v).Elem()).Interface()
			if err := m.DecodePayload(got); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.v) {
				t.Errorf("round trip = %+v, want %+v", got, tt.v)
			}
		})
	}
}

// Bad input is refused with an error, never taken for something else.
func TestProxyDecodeErrors(t *testing.T) {
	cases := []struct {
		typ, payload string
	}{
		{TypeProxyRequest, `{"method":"GET","path":"api/v1"}`},
		{TypeProxyRequest, `{"method":"GET","path":"/x\r\nHost: evil"}`},
		{TypeProxyRequest, `{"path":"/x","body":"!!!","body_encoding":"base64"}`},
		{TypeProxyRequest, `{"path":"/x","body":12}`},
		{TypeProxyRequest, `{"path":"/x","timeout":-5}`},
		{TypeProxyRequest, `{"path":"/x","headers":{"A":{"b":1}}}`},
		{TypeProxyRequest, `{"path":"/x","deadline":"tomorrow"}`},
		{TypeProxyResponse, `{"status":99}`},
		{TypeProxyResponse, `{"status":200,"body":"H4sI","encoding":"gzip"}`},
		{TypeProxyResponse, `{"status":200,"body":"x","encoding":"rot13"}`},
		{TypeProxyResponseChunk, `{"data":"YWJj","size":4}`},
		{TypeProxyResponseChunk, `{"encoding":"base64"}`},
		{TypeProxyRequestChunk, `{}`},
		{TypeWSData, `{"stream_id":"s","data":"AA=="}`},
		{TypeWSStart, `{"path":"/api"}`},
		{TypeHeartbeat, `{"metadata":{"k8s_pods":"many"}}`},
		{TypeHeartbeat, `{"metadata":{"k8s_pods":1.5}}`},
		{TypeHeartbeat, `{"metadata":{"is_private":"maybe"}}`},
	}
	for _, tt := range cases {
		t.Run(tt.typ+" "+tt.payload, func(t *testing.T) {
			m := Message{Type: tt.typ, Payload: json.RawMessage(tt.payload)}
			if err := m.DecodePayload(payloadFor(tt.typ)); err == nil {
				t.Errorf("DecodePayload(%s) succeeded", tt.payload)
			}
		})
	}
}

// A gzip body that expands past MaxGunzipSize is refused, not inflated.
func TestGzipBombRefused(t *testing.T) {
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	zero := make([]byte, 1<<20)
	for range MaxGunzipSize/len(zero) + 1 {
		_, _ = zw.Write(zero)
	}
	_ = zw.Close()
	body, _ := json.Marshal(z.Bytes()) // []byte marshals as base64
	m := Message{Type: TypeProxyResponse, Payload: json.RawMessage(`{"status":200,"encoding":"gzip","body":` + string(body) + `}`)}
	if err := m.DecodePayload(new(ProxyResponse)); err == nil {
		t.Fatal("a gzip bomb decoded")
	}
}

// Loose scalars take the spellings senders use and nothing else.
func TestLooseScalars(t *testing.T) {
	var n LooseInt
	for in, want := range map[string]int{`3`: 3, `"42"`: 42, `null`: 0, `3.0`: 3} {
		if err := json.Unmarshal([]byte(in), &n); err != nil || int(n) != want {
			t.Errorf("LooseInt %s = %d, %v", in, n, err)
		}
	}
	for _, in := range []string{`"x"`, `1.5`, `true`, `{}`, `1e12`} {
		if err := json.Unmarshal([]byte(in), &n); err == nil {
			t.Errorf("LooseInt %s decoded", in)
		}
	}
	var s LooseString
	for in, want := range map[string]string{`1187`: "1187", `"w-1"`: "w-1", `null`: "", `true`: "true"} {
		if err := json.Unmarshal([]byte(in), &s); err != nil || string(s) != want {
			t.Errorf("LooseString %s = %q, %v", in, s, err)
		}
	}
	if err := json.Unmarshal([]byte(`{"a":1}`), &s); err == nil {
		t.Error("LooseString took an object")
	}
	var d LooseDuration
	for in, want := range map[string]time.Duration{`30000`: 30 * time.Second, `"2m"`: 2 * time.Minute, `""`: 0, `null`: 0} {
		if err := json.Unmarshal([]byte(in), &d); err != nil || time.Duration(d) != want {
			t.Errorf("LooseDuration %s = %v, %v", in, time.Duration(d), err)
		}
	}
}
