package tunnel

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

// payloadCases has one value of every payload type, with a constructor for
// an empty value to decode into.
var payloadCases = []struct {
	name    string
	typ     string
	payload any
	newPtr  func() any
}{
	{"register", TypeRegister, Register{
		AgentID: "agent-1", Name: "prod-eu", K8sVersion: "v1.31.2", Hostname: "node-1",
		AgentVersion: "v2.0.0", ServerIP: "10.0.0.4", Region: "eu-west-1", CloudProvider: "aws",
		Labels:          map[string]string{"env": "prod"},
		Metadata:        map[string]any{"nodes": float64(3), "private": true, "nested": map[string]any{"k": "v"}},
		Features:        map[string]any{"yamux": true},
		ClusterID:       "c-1",
		K8sServiceToken: "secret-token",
	}, func() any { return new(Register) }},
	{"register minimal", TypeRegister, Register{AgentID: "agent-1", Name: "dev"}, func() any { return new(Register) }},
	{"register_success", TypeRegisterSuccess, RegisterSuccess{
		ClusterID: "c-1", ClusterUUID: "3f2a9c1e-0000-4000-8000-000000000001", Name: "prod-eu",
		Status: "active", GatewayWSURL: "wss://gw.example.com",
	}, func() any { return new(RegisterSuccess) }},
	{"error", TypeError, ErrorPayload{Error: "cluster not found"}, func() any { return new(ErrorPayload) }},
	{"gateway_hello", TypeGatewayHello, GatewayHello{UseYamux: true, YamuxConfig: YamuxConfig{
		MaxStreamWindowSize: 256 << 10, KeepAliveIntervalSeconds: 30, ConnectionTimeoutSeconds: 10,
	}}, func() any { return new(GatewayHello) }},
	{"heartbeat", TypeHeartbeat, Heartbeat{
		ClusterID: "c-1", AgentID: "agent-1", Status: StatusHealthy, TunnelStatus: StatusReconnecting,
		Metadata: HeartbeatMetadata{
			K8sNodes: 3, K8sPods: 41, CPUUsage: Percent(12.5), MemoryUsage: UsageUnavailable,
			IsPrivate: true, GatewayRoutes: 2, AgentVersion: "v2.0.0", K8sVersion: "v1.31.2",
		},
	}, func() any { return new(Heartbeat) }},
	{"heartbeat_ack", TypeHeartbeatAck, HeartbeatAck{}, func() any { return new(HeartbeatAck) }},
	{"ping", TypePing, Ping{}, func() any { return new(Ping) }},
	{"pong", TypePong, Pong{}, func() any { return new(Pong) }},
}

// hostedSamples are messages as a hosted server writes them: its own field
// order, fields this package does not know, fractional or zoned timestamps.
var hostedSamples = []struct {
	name  string
	json  string
	check func(t *testing.T, m Message)
}{
	{
		name: "register_success",
		json: `{"type":"register_success","request_id":"req-9","payload":{"cluster_id":"c-1","cluster_uuid":"3f2a9c1e-0000-4000-8000-000000000001","name":"prod","status":"active","gateway_ws_url":"wss://gw.example.com","plan":"pro","limits":{"tunnels":10}},"timestamp":"2026-01-02T03:04:05Z","server":"eu-1"}`,
		check: func(t *testing.T, m Message) {
			wantTime := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
			if m.Type != TypeRegisterSuccess || m.RequestID != "req-9" || !m.Timestamp.Equal(wantTime) {
				t.Errorf("envelope = %v", m)
			}
			var p RegisterSuccess
			if err := m.DecodePayload(&p); err != nil {
				t.Fatal(err)
			}
			want := RegisterSuccess{ClusterID: "c-1", ClusterUUID: "3f2a9c1e-0000-4000-8000-000000000001", Name: "prod", Status: "active", GatewayWSURL: "wss://gw.example.com"}
			if p != want {
				t.Errorf("payload = %+v, want %+v", p, want)
			}
		},
	},
	{
		name: "register_success without optional fields",
		json: `{"type":"register_success","payload":{"cluster_id":"c-2"}}`,
		check: func(t *testing.T, m Message) {
			var p RegisterSuccess
			if err := m.DecodePayload(&p); err != nil {
				t.Fatal(err)
			}
			if p != (RegisterSuccess{ClusterID: "c-2"}) {
				t.Errorf("payload = %+v", p)
			}
			if !m.Timestamp.IsZero() {
				t.Errorf("missing timestamp decoded as %v, want zero", m.Timestamp)
			}
		},
	},
	{
		name: "error",
		json: `{"type":"error","payload":{"error":"Cluster not registered","code":404},"timestamp":"2026-01-02T03:04:05.123456789+01:00"}`,
		check: func(t *testing.T, m Message) {
			var p ErrorPayload
			if err := m.DecodePayload(&p); err != nil {
				t.Fatal(err)
			}
			if !p.IsClusterNotFound() {
				t.Errorf("IsClusterNotFound(%q) = false", p.Error)
			}
			want := time.Date(2026, 1, 2, 2, 4, 5, 123456789, time.UTC)
			if !m.Timestamp.Equal(want) {
				t.Errorf("timestamp = %v, want %v", m.Timestamp, want)
			}
		},
	},
	{
		name: "gateway_hello",
		json: `{"type":"gateway_hello","payload":{"use_yamux":true,"yamux_config":{"max_stream_window_size":262144,"keep_alive_interval_seconds":30,"connection_timeout_seconds":10,"accept_backlog":256}},"timestamp":"2026-01-02T03:04:05Z"}`,
		check: func(t *testing.T, m Message) {
			var p GatewayHello
			if err := m.DecodePayload(&p); err != nil {
				t.Fatal(err)
			}
			want := GatewayHello{UseYamux: true, YamuxConfig: YamuxConfig{MaxStreamWindowSize: 262144, KeepAliveIntervalSeconds: 30, ConnectionTimeoutSeconds: 10}}
			if p != want {
				t.Errorf("payload = %+v, want %+v", p, want)
			}
			if p.YamuxConfig.KeepAliveInterval() != 30*time.Second || p.YamuxConfig.ConnectionTimeout() != 10*time.Second {
				t.Errorf("durations = %v, %v", p.YamuxConfig.KeepAliveInterval(), p.YamuxConfig.ConnectionTimeout())
			}
		},
	},
	{
		name: "heartbeat with string and null usage",
		json: `{"type":"heartbeat","payload":{"cluster_id":"c-1","agent_id":"a-1","status":"healthy","tunnel_status":"healthy","metadata":{"k8s_nodes":2,"k8s_pods":17,"cpu_usage":"12.5","memory_usage":null,"is_private":false,"gateway_routes":0,"agent_version":"v1","k8s_version":"v1.30.0","disk_usage":3}},"timestamp":"2026-01-02T03:04:05Z"}`,
		check: func(t *testing.T, m Message) {
			var p Heartbeat
			if err := m.DecodePayload(&p); err != nil {
				t.Fatal(err)
			}
			if p.Metadata.CPUUsage != Percent(12.5) || p.Metadata.MemoryUsage != UsageUnavailable || p.Metadata.K8sPods != 17 {
				t.Errorf("metadata = %+v", p.Metadata)
			}
		},
	},
	{
		name: "heartbeat_ack with a body",
		json: `{"type":"heartbeat_ack","payload":{"received_at":"2026-01-02T03:04:05Z","extra":[1,2,3]},"timestamp":"2026-01-02T03:04:05Z"}`,
		check: func(t *testing.T, m Message) {
			if err := m.DecodePayload(new(HeartbeatAck)); err != nil {
				t.Error(err)
			}
		},
	},
	{
		name: "heartbeat_ack with a string payload",
		json: `{"type":"heartbeat_ack","payload":"ok"}`,
		check: func(t *testing.T, m Message) {
			if err := m.DecodePayload(new(HeartbeatAck)); err != nil {
				t.Error(err)
			}
		},
	},
	{
		name: "pong without payload",
		json: `{"type":"pong","timestamp":null}`,
		check: func(t *testing.T, m Message) {
			if m.Payload != nil || !m.Timestamp.IsZero() {
				t.Errorf("message = %#v", m)
			}
			if err := m.DecodePayload(new(Pong)); err != nil {
				t.Error(err)
			}
		},
	},
	{
		name: "null payload",
		json: ` { "type" : "ping" , "payload" : null } `,
		check: func(t *testing.T, m Message) {
			if m.Payload != nil {
				t.Errorf("payload = %q, want nil", m.Payload)
			}
		},
	},
	{
		name: "unknown type is not an error",
		json: `{"type":"tunnel_sync","payload":{"tunnels":[]}}`,
		check: func(t *testing.T, m Message) {
			if m.Type != "tunnel_sync" || string(m.Payload) != `{"tunnels":[]}` {
				t.Errorf("message = %v %s", m, m.Payload)
			}
		},
	},
}

func TestPayloadRoundTrip(t *testing.T) {
	for _, tt := range payloadCases {
		t.Run(tt.name, func(t *testing.T) {
			m, err := NewMessage(tt.typ, tt.payload)
			if err != nil {
				t.Fatal(err)
			}
			m.RequestID = "req-1"
			enc, err := m.Encode()
			if err != nil {
				t.Fatal(err)
			}
			got, err := DecodeMessage(enc)
			if err != nil {
				t.Fatalf("DecodeMessage(%s): %v", enc, err)
			}
			if got.Type != tt.typ || got.RequestID != "req-1" || !got.Timestamp.Equal(m.Timestamp) {
				t.Errorf("envelope = %v, want %v", got, m)
			}
			v := tt.newPtr()
			if err := got.DecodePayload(v); err != nil {
				t.Fatalf("DecodePayload: %v", err)
			}
			if e := reflect.ValueOf(v).Elem().Interface(); !reflect.DeepEqual(e, tt.payload) {
				t.Errorf("payload = %#v, want %#v", e, tt.payload)
			}
		})
	}
}

func TestHostedSamples(t *testing.T) {
	for _, tt := range hostedSamples {
		t.Run(tt.name, func(t *testing.T) {
			m, err := DecodeMessage([]byte(tt.json))
			if err != nil {
				t.Fatalf("DecodeMessage: %v", err)
			}
			tt.check(t, m)
		})
	}
}

// The golden encodings pin the field names and shapes on the wire, which a
// round trip through this package alone cannot.
func TestEncodeGolden(t *testing.T) {
	ts := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		name    string
		typ     string
		payload any
		want    string
	}{
		{
			name: "heartbeat",
			typ:  TypeHeartbeat,
			payload: Heartbeat{ClusterID: "c-1", AgentID: "a-1", Status: StatusHealthy, TunnelStatus: StatusDisconnected, Metadata: HeartbeatMetadata{
				K8sNodes: 3, K8sPods: 42, CPUUsage: Percent(12.5), MemoryUsage: UsageUnavailable,
				IsPrivate: true, GatewayRoutes: 2, AgentVersion: "v1.2.3", K8sVersion: "v1.31.0",
			}},
			want: `{"type":"heartbeat","request_id":"r-1","payload":{"cluster_id":"c-1","agent_id":"a-1","status":"healthy","tunnel_status":"disconnected","metadata":{"k8s_nodes":3,"k8s_pods":42,"cpu_usage":"12.5%","memory_usage":"unavailable","is_private":true,"gateway_routes":2,"agent_version":"v1.2.3","k8s_version":"v1.31.0"}},"timestamp":"2026-01-02T03:04:05Z"}`,
		},
		{
			name:    "register without optional fields",
			typ:     TypeRegister,
			payload: Register{AgentID: "a-1", Name: "prod", K8sVersion: "v1.31.0", Hostname: "node-1", AgentVersion: "v1.2.3"},
			want:    `{"type":"register","request_id":"r-1","payload":{"agent_id":"a-1","name":"prod","k8s_version":"v1.31.0","hostname":"node-1","agent_version":"v1.2.3","server_ip":"","region":"","cloud_provider":""},"timestamp":"2026-01-02T03:04:05Z"}`,
		},
		{
			name:    "register resuming",
			typ:     TypeRegister,
			payload: Register{AgentID: "a-1", Labels: map[string]string{"a": "b"}, ClusterID: "c-1", K8sServiceToken: "tok"},
			want:    `{"type":"register","request_id":"r-1","payload":{"agent_id":"a-1","name":"","k8s_version":"","hostname":"","agent_version":"","server_ip":"","region":"","cloud_provider":"","labels":{"a":"b"},"cluster_id":"c-1","k8s_service_token":"tok"},"timestamp":"2026-01-02T03:04:05Z"}`,
		},
		{
			name:    "gateway_hello",
			typ:     TypeGatewayHello,
			payload: GatewayHello{UseYamux: true, YamuxConfig: YamuxConfig{MaxStreamWindowSize: 262144, KeepAliveIntervalSeconds: 30, ConnectionTimeoutSeconds: 10}},
			want:    `{"type":"gateway_hello","request_id":"r-1","payload":{"use_yamux":true,"yamux_config":{"max_stream_window_size":262144,"keep_alive_interval_seconds":30,"connection_timeout_seconds":10}},"timestamp":"2026-01-02T03:04:05Z"}`,
		},
		{
			name:    "ping",
			typ:     TypePing,
			payload: Ping{},
			want:    `{"type":"ping","request_id":"r-1","payload":{},"timestamp":"2026-01-02T03:04:05Z"}`,
		},
		{
			name: "no payload",
			typ:  TypePong,
			want: `{"type":"pong","request_id":"r-1","timestamp":"2026-01-02T03:04:05Z"}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := NewMessage(tt.typ, tt.payload)
			if err != nil {
				t.Fatal(err)
			}
			m.RequestID, m.Timestamp = "r-1", ts
			got, err := m.Encode()
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("Encode =\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}

func TestNewMessage(t *testing.T) {
	before := time.Now()
	m, err := NewMessage(TypePing, nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.Timestamp.Location() != time.UTC {
		t.Errorf("timestamp location = %v, want UTC", m.Timestamp.Location())
	}
	if m.Timestamp.Before(before.Add(-time.Second)) || m.Timestamp.After(time.Now().Add(time.Second)) {
		t.Errorf("timestamp = %v, want about now", m.Timestamp)
	}
	if m.Payload != nil {
		t.Errorf("payload = %q, want none", m.Payload)
	}

	if _, err := NewMessage("", Ping{}); !errors.Is(err, ErrMissingType) {
		t.Errorf("NewMessage with empty type: error = %v, want ErrMissingType", err)
	}
	if _, err := NewMessage(TypePing, make(chan int)); err == nil {
		t.Error("NewMessage with an unencodable payload succeeded")
	}
	huge := ErrorPayload{Error: strings.Repeat("x", MaxMessageSize)}
	if _, err := NewMessage(TypeError, huge); !errors.Is(err, ErrMessageTooLarge) {
		t.Errorf("NewMessage with a huge payload: error = %v, want ErrMessageTooLarge", err)
	}
}

func TestEncodeErrors(t *testing.T) {
	tests := []struct {
		name string
		m    Message
		want error
	}{
		{"missing type", Message{Payload: json.RawMessage(`{}`)}, ErrMissingType},
		{"payload not JSON", Message{Type: TypePing, Payload: json.RawMessage(`{`)}, ErrMalformedMessage},
		{"too large", Message{Type: TypeError, Payload: json.RawMessage(`"` + strings.Repeat("x", MaxMessageSize) + `"`)}, ErrMessageTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := tt.m.Encode(); !errors.Is(err, tt.want) {
				t.Errorf("Encode error = %v, want %v", err, tt.want)
			}
		})
	}
}

// badMessages are refused by DecodeMessage.
var badMessages = []struct {
	name string
	in   string
	want error
}{
	{"empty input", ``, ErrMalformedMessage},
	{"truncated", `{"type":"ping"`, ErrMalformedMessage},
	{"array", `[]`, ErrMalformedMessage},
	{"string", `"ping"`, ErrMalformedMessage},
	{"type not a string", `{"type":5}`, ErrMalformedMessage},
	{"bad timestamp", `{"type":"ping","timestamp":"yesterday"}`, ErrMalformedMessage},
	{"numeric timestamp", `{"type":"ping","timestamp":1767323045}`, ErrMalformedMessage},
	{"trailing garbage", `{"type":"ping"} {}`, ErrMalformedMessage},
	{"missing type", `{"payload":{"cluster_id":"c-1"}}`, ErrMissingType},
	{"empty type", `{"type":"","payload":{}}`, ErrMissingType},
	{"null", `null`, ErrMissingType},
}

func TestDecodeMessageErrors(t *testing.T) {
	for _, tt := range badMessages {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := DecodeMessage([]byte(tt.in)); !errors.Is(err, tt.want) {
				t.Errorf("DecodeMessage(%q) error = %v, want %v", tt.in, err, tt.want)
			}
		})
	}

	t.Run("json error is wrapped", func(t *testing.T) {
		_, err := DecodeMessage([]byte(`{"type":`))
		var syn *json.SyntaxError
		if !errors.As(err, &syn) {
			t.Errorf("error = %v, want it to wrap a *json.SyntaxError", err)
		}
	})
}

func TestDecodeMessageSizeLimit(t *testing.T) {
	base := `{"type":"ping"}`
	atLimit := base + strings.Repeat(" ", MaxMessageSize-len(base))
	if _, err := DecodeMessage([]byte(atLimit)); err != nil {
		t.Errorf("DecodeMessage of exactly MaxMessageSize bytes: %v", err)
	}
	if _, err := DecodeMessage([]byte(atLimit + " ")); !errors.Is(err, ErrMessageTooLarge) {
		t.Errorf("DecodeMessage of MaxMessageSize+1 bytes: error = %v, want ErrMessageTooLarge", err)
	}
	// Refused on size alone, before anyone looks at the JSON.
	garbage := bytes.Repeat([]byte{'{'}, MaxMessageSize+1)
	if _, err := DecodeMessage(garbage); !errors.Is(err, ErrMessageTooLarge) || errors.Is(err, ErrMalformedMessage) {
		t.Errorf("DecodeMessage of oversized garbage: error = %v, want only ErrMessageTooLarge", err)
	}
}

func TestDecodeMessageCopiesPayload(t *testing.T) {
	in := []byte(`{"type":"error","payload":{"error":"x"}}`)
	m, err := DecodeMessage(in)
	if err != nil {
		t.Fatal(err)
	}
	for i := range in {
		in[i] = 'z'
	}
	if string(m.Payload) != `{"error":"x"}` {
		t.Errorf("payload changed with the input buffer: %q", m.Payload)
	}
}

func TestDecodePayload(t *testing.T) {
	t.Run("absent payload gives the zero value", func(t *testing.T) {
		for _, in := range []string{`{"type":"register_success"}`, `{"type":"heartbeat","payload":null}`} {
			m, err := DecodeMessage([]byte(in))
			if err != nil {
				t.Fatal(err)
			}
			hb := Heartbeat{ClusterID: "stale", Metadata: HeartbeatMetadata{CPUUsage: Percent(3)}}
			if err := m.DecodePayload(&hb); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(hb, Heartbeat{}) {
				t.Errorf("%s: DecodePayload left %+v, want the zero value", in, hb)
			}
		}
	})
	t.Run("omitted fields do not keep stale values", func(t *testing.T) {
		m := Message{Type: TypeRegisterSuccess, Payload: json.RawMessage(`{"cluster_id":"new"}`)}
		rs := RegisterSuccess{ClusterID: "old", GatewayWSURL: "wss://old"}
		if err := m.DecodePayload(&rs); err != nil {
			t.Fatal(err)
		}
		if rs != (RegisterSuccess{ClusterID: "new"}) {
			t.Errorf("DecodePayload = %+v", rs)
		}
	})

	tests := []struct {
		name    string
		typ     string
		payload string
		v       any
		want    []error
	}{
		{"register_success without cluster_id", TypeRegisterSuccess, `{"cluster_uuid":"u"}`, new(RegisterSuccess), []error{ErrMalformedMessage, ErrMissingField}},
		{"register_success null", TypeRegisterSuccess, `null`, new(RegisterSuccess), []error{ErrMissingField}},
		{"wrong field type", TypeRegisterSuccess, `{"cluster_id":5}`, new(RegisterSuccess), []error{ErrMalformedMessage}},
		{"payload not an object", TypeHeartbeat, `[1,2]`, new(Heartbeat), []error{ErrMalformedMessage}},
		{"bad usage", TypeHeartbeat, `{"metadata":{"cpu_usage":"lots"}}`, new(Heartbeat), []error{ErrMalformedMessage}},
		{"window too big for a uint32", TypeGatewayHello, `{"yamux_config":{"max_stream_window_size":4294967296}}`, new(GatewayHello), []error{ErrMalformedMessage}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := Message{Type: tt.typ, Payload: json.RawMessage(tt.payload)}
			err := m.DecodePayload(tt.v)
			for _, want := range tt.want {
				if !errors.Is(err, want) {
					t.Errorf("DecodePayload error = %v, want %v", err, want)
				}
			}
		})
	}

	t.Run("needs a pointer", func(t *testing.T) {
		m := Message{Type: TypePing, Payload: json.RawMessage(`{}`)}
		var nilPing *Ping
		for _, v := range []any{Ping{}, nilPing, nil} {
			if err := m.DecodePayload(v); err == nil {
				t.Errorf("DecodePayload(%#v) succeeded", v)
			}
		}
	})
}

func TestUsageJSON(t *testing.T) {
	decode := []struct {
		in      string
		want    Usage
		wantErr bool
	}{
		{in: `12.5`, want: Percent(12.5)},
		{in: `0`, want: Percent(0)},
		{in: `100`, want: Percent(100)},
		{in: `1e2`, want: Percent(100)},
		{in: `-1`, want: Percent(-1)},
		{in: `"unavailable"`, want: UsageUnavailable},
		{in: `"Unavailable"`, want: UsageUnavailable},
		{in: `null`, want: UsageUnavailable},
		{in: `"12.5"`, want: Percent(12.5)},
		{in: `" 7 "`, want: Percent(7)},
		{in: `"0"`, want: Percent(0)},
		{in: `"garbage"`, wantErr: true},
		{in: `""`, wantErr: true},
		{in: `"12.5%"`, want: Percent(12.5)},
		{in: `"0%"`, want: Percent(0)},
		{in: `" 3 % "`, want: Percent(3)},
		{in: `"%"`, wantErr: true},
		{in: `"12.5%%"`, wantErr: true},
		{in: `"%12"`, wantErr: true},
		{in: `"NaN"`, wantErr: true},
		{in: `"Inf"`, wantErr: true},
		{in: `"0x10"`, wantErr: true},
		{in: `"1e400"`, wantErr: true},
		{in: `1e400`, wantErr: true},
		{in: `true`, wantErr: true},
		{in: `{}`, wantErr: true},
		{in: `[12.5]`, wantErr: true},
	}
	for _, tt := range decode {
		t.Run("decode "+tt.in, func(t *testing.T) {
			got := Percent(99) // must be overwritten
			err := json.Unmarshal([]byte(tt.in), &got)
			if tt.wantErr {
				if err == nil {
					t.Errorf("Unmarshal(%s) = %+v, want an error", tt.in, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("Unmarshal(%s): %v", tt.in, err)
			}
			if got != tt.want {
				t.Errorf("Unmarshal(%s) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}

	encode := []struct {
		u    Usage
		want string
		str  string
	}{
		{Percent(12.5), `"12.5%"`, "12.5%"},
		{Percent(0), `"0%"`, "0%"},
		{UsageUnavailable, `"unavailable"`, "unavailable"},
		{Usage{Percent: 40}, `"unavailable"`, "unavailable"}, // a number that is not Known is not sent
		{Percent(nanFloat()), `"unavailable"`, "unavailable"},
	}
	for _, tt := range encode {
		t.Run("encode "+tt.want, func(t *testing.T) {
			got, err := json.Marshal(tt.u)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("Marshal(%+v) = %s, want %s", tt.u, got, tt.want)
			}
			if s := tt.u.String(); s != tt.str {
				t.Errorf("String = %q, want %q", s, tt.str)
			}
		})
	}
}

func nanFloat() float64 {
	zero := 0.0
	return zero / zero
}

func TestIsClusterNotFound(t *testing.T) {
	tests := []struct {
		msg  string
		want bool
	}{
		{"cluster not found", true},
		{"Cluster not registered", true},
		{"CLUSTER NOT FOUND", true},
		{"cluster c-123 was not found", true},
		{"failed to resume: cluster_id not found", true},
		{"agent not registered", true}, // "not registered" alone is enough
		{"agent not found", false},     // about the agent, not the cluster id
		{"token not found", false},
		{"cluster limit reached", false},
		{"invalid token", false},
		{"", false},
	}
	for _, tt := range tests {
		t.Run(tt.msg, func(t *testing.T) {
			if got := (ErrorPayload{Error: tt.msg}).IsClusterNotFound(); got != tt.want {
				t.Errorf("IsClusterNotFound(%q) = %v, want %v", tt.msg, got, tt.want)
			}
		})
	}
}

func TestMessageStringHidesPayload(t *testing.T) {
	m, err := NewMessage(TypeRegister, Register{AgentID: "a-1", K8sServiceToken: "secret-token"})
	if err != nil {
		t.Fatal(err)
	}
	m.RequestID = "r-1"
	m.Timestamp = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	s := m.String()
	if strings.Contains(s, "secret") || strings.Contains(s, "a-1") {
		t.Errorf("String = %q, leaks the payload", s)
	}
	want := `type="register" request_id="r-1" payload=` + strconv.Itoa(len(m.Payload)) + `B timestamp=2026-01-02T03:04:05Z`
	if s != want {
		t.Errorf("String = %q, want %q", s, want)
	}
	if s := (Message{Type: "x\ny"}).String(); strings.Contains(s, "\n") {
		t.Errorf("String = %q, a newline from the wire reached the log line", s)
	}
}

func TestYamuxConfigDurations(t *testing.T) {
	tests := []struct {
		secs int
		want time.Duration
	}{
		{0, 0},
		{-5, 0},
		{30, 30 * time.Second},
		{1 << 62, time.Duration(1<<63 - 1)},
	}
	for _, tt := range tests {
		c := YamuxConfig{KeepAliveIntervalSeconds: tt.secs, ConnectionTimeoutSeconds: tt.secs}
		if got := c.KeepAliveInterval(); got != tt.want {
			t.Errorf("KeepAliveInterval(%d s) = %v, want %v", tt.secs, got, tt.want)
		}
		if got := c.ConnectionTimeout(); got != tt.want {
			t.Errorf("ConnectionTimeout(%d s) = %v, want %v", tt.secs, got, tt.want)
		}
	}
}
