package tunnel

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"time"
)

// MaxMessageSize is the largest encoded control message, in bytes, that
// Encode produces and DecodeMessage accepts. Control messages are small;
// the bound exists so a peer cannot make the other side parse arbitrarily
// large JSON. A WebSocket reader should apply the same limit to TEXT frames
// before buffering them.
const MaxMessageSize = 1 << 20

// Control message types, the "type" field of the envelope.
const (
	// TypeRegister is sent by the agent on the registration socket; payload Register.
	TypeRegister = "register"
	// TypeRegisterSuccess answers a register; payload RegisterSuccess.
	TypeRegisterSuccess = "register_success"
	// TypeError reports a failure to the agent; payload ErrorPayload.
	TypeError = "error"
	// TypeGatewayHello is the gateway's first message on the gateway socket;
	// payload GatewayHello.
	TypeGatewayHello = "gateway_hello"
	// TypeHeartbeat is sent by the agent periodically; payload Heartbeat.
	TypeHeartbeat = "heartbeat"
	// TypeHeartbeatAck may answer a heartbeat; payload HeartbeatAck.
	TypeHeartbeatAck = "heartbeat_ack"
	// TypePing is sent by the agent to measure liveness; payload Ping.
	TypePing = "ping"
	// TypePong answers a ping; payload Pong.
	TypePong = "pong"
	// TypeGatewayHelloAck is the agent's answer to gateway_hello, sent by
	// PipeOps agents (ours need not send it); payload GatewayHelloAck. A
	// PipeOps agent starts yamux only after sending it, so a gateway must
	// not open a stream to such an agent before it arrives.
	TypeGatewayHelloAck = "gateway_hello_ack"
	// TypeRegisterInProgress tells the agent a registration is under way;
	// payload ignored. Agents only log it.
	TypeRegisterInProgress = "register_in_progress"
)

// Errors returned when encoding or decoding control messages. They are
// wrapped with details; test for them with errors.Is.
var (
	// ErrMessageTooLarge means an encoded message exceeds MaxMessageSize.
	ErrMessageTooLarge = errors.New("tunnel: control message too large")
	// ErrMalformedMessage means a message or its payload is not the JSON it
	// should be. The underlying json error is wrapped too.
	ErrMalformedMessage = errors.New("tunnel: malformed control message")
	// ErrMissingType means a message has an empty "type".
	ErrMissingType = errors.New("tunnel: control message has no type")
	// ErrMissingField means a payload lacks a field the protocol requires,
	// such as register_success without cluster_id.
	ErrMissingField = errors.New("tunnel: required field missing")
)

// Message is the JSON envelope of every control message, carried in one
// WebSocket TEXT frame.
type Message struct {
	Type string `json:"type"`
	// RequestID lets a reply name the message it answers; optional.
	RequestID string `json:"request_id,omitempty"`
	// Payload is the type-specific body, decoded with DecodePayload. It is
	// nil when the message has none.
	Payload json.RawMessage `json:"payload,omitempty"`
	// Timestamp is when the sender built the message; zero if it sent none.
	// It is informational only: clocks on the two ends are not in sync.
	Timestamp time.Time `json:"timestamp"`
}

// NewMessage builds a message of type typ whose payload is the JSON encoding
// of payload (nil for none), stamped with the current UTC time.
func NewMessage(typ string, payload any) (Message, error) {
	if typ == "" {
		return Message{}, ErrMissingType
	}
	m := Message{Type: typ, Timestamp: time.Now().UTC()}
	if payload != nil {
		raw, err := json.Marshal(payload)
		if err != nil {
			return Message{}, fmt.Errorf("tunnel: encoding %s payload: %w", typ, err)
		}
		if len(raw) > MaxMessageSize {
			return Message{}, fmt.Errorf("%w: %s payload is %d bytes, limit %d", ErrMessageTooLarge, typ, len(raw), MaxMessageSize)
		}
		m.Payload = raw
	}
	return m, nil
}

// Encode returns the JSON form of m, ready to send as one TEXT frame. It
// refuses what the receiving DecodeMessage would refuse: an empty type, an
// encoding over MaxMessageSize, or a Payload that is not valid JSON.
func (m Message) Encode() ([]byte, error) {
	if m.Type == "" {
		return nil, ErrMissingType
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("%w: encoding %q: %w", ErrMalformedMessage, m.Type, err)
	}
	if len(b) > MaxMessageSize {
		return nil, fmt.Errorf("%w: %q is %d bytes, limit %d", ErrMessageTooLarge, m.Type, len(b), MaxMessageSize)
	}
	return b, nil
}

// DecodeMessage parses one control message. Input over MaxMessageSize is
// refused before it is parsed. Unknown fields are ignored so that either end
// can add fields without breaking the other; a missing timestamp decodes as
// the zero time and a null payload as no payload. The payload is copied, so
// b may be reused.
func DecodeMessage(b []byte) (Message, error) {
	if len(b) > MaxMessageSize {
		return Message{}, fmt.Errorf("%w: %d bytes, limit %d", ErrMessageTooLarge, len(b), MaxMessageSize)
	}
	var m Message
	if err := json.Unmarshal(b, &m); err != nil {
		return Message{}, fmt.Errorf("%w: %w", ErrMalformedMessage, err)
	}
	if m.Type == "" {
		return Message{}, ErrMissingType
	}
	if bytes.Equal(m.Payload, jsonNull) {
		m.Payload = nil
	}
	return m, nil
}

var jsonNull = []byte("null")

// DecodePayload decodes m's payload into v, which must be a non-nil pointer.
// *v is reset to its zero value first, so an absent or null payload leaves
// the zero value and fields the sender omitted never keep stale data. If *v
// has a Validate method (RegisterSuccess does), it is called and its error
// returned. Decoding errors match ErrMalformedMessage.
func (m Message) DecodePayload(v any) error {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return fmt.Errorf("tunnel: DecodePayload needs a non-nil pointer, got %T", v)
	}
	rv.Elem().SetZero()
	if len(m.Payload) > 0 {
		if err := json.Unmarshal(m.Payload, v); err != nil {
			return fmt.Errorf("%w: %q payload: %w", ErrMalformedMessage, m.Type, err)
		}
	}
	if val, ok := v.(interface{ Validate() error }); ok {
		if err := val.Validate(); err != nil {
			return fmt.Errorf("%w: %q payload: %w", ErrMalformedMessage, m.Type, err)
		}
	}
	return nil
}

// String describes m for logs: type, request id, payload size and
// timestamp. It never includes the payload, which can carry credentials
// (register holds the cluster's service account token).
func (m Message) String() string {
	var sb strings.Builder
	sb.WriteString("type=")
	sb.WriteString(strconv.Quote(m.Type))
	if m.RequestID != "" {
		sb.WriteString(" request_id=")
		sb.WriteString(strconv.Quote(m.RequestID))
	}
	sb.WriteString(" payload=")
	sb.WriteString(strconv.Itoa(len(m.Payload)))
	sb.WriteString("B")
	if !m.Timestamp.IsZero() {
		sb.WriteString(" timestamp=")
		sb.WriteString(m.Timestamp.Format(time.RFC3339Nano))
	}
	return sb.String()
}

// Register is the payload of TypeRegister: who the agent is and what it
// runs on.
type Register struct {
	AgentID       string            `json:"agent_id"`
	Name          string            `json:"name"`
	K8sVersion    string            `json:"k8s_version"`
	Hostname      string            `json:"hostname"`
	AgentVersion  string            `json:"agent_version"`
	ServerIP      string            `json:"server_ip"`
	Region        string            `json:"region"`
	CloudProvider string            `json:"cloud_provider"`
	Labels        map[string]string `json:"labels,omitempty"`
	Metadata      map[string]any    `json:"metadata,omitempty"`
	Features      map[string]any    `json:"features,omitempty"`
	// TunnelPortConfig and ServerSpecs are what PipeOps agents report of
	// their host; free-form, kept as sent (bounded by MaxMessageSize).
	TunnelPortConfig map[string]any `json:"tunnel_port_config,omitempty"`
	ServerSpecs      map[string]any `json:"server_specs,omitempty"`
	// ClusterID is set when the agent already has an identity and wants to
	// resume it rather than be registered as a new cluster.
	ClusterID string `json:"cluster_id,omitempty"`
	// K8sServiceToken is a bearer token for the cluster's Kubernetes API
	// that PipeOps agents offer. Our servers never store or use it (the
	// agent reaches the API with its own credentials); never log it.
	K8sServiceToken string `json:"k8s_service_token,omitempty"`
}

// RegisterSuccess is the payload of TypeRegisterSuccess.
type RegisterSuccess struct {
	// ClusterID is the identity the agent must cache and send back as
	// Register.ClusterID when it reconnects. Required.
	ClusterID   string `json:"cluster_id"`
	ClusterUUID string `json:"cluster_uuid,omitempty"`
	Name        string `json:"name,omitempty"`
	Status      string `json:"status,omitempty"`
	// GatewayWSURL is where the agent opens its gateway socket.
	GatewayWSURL string `json:"gateway_ws_url,omitempty"`
	// TunnelURL is the public base URL of the gateway that serves the
	// cluster, and APIServer the URL of the cluster's Kubernetes API
	// through it. PipeOps agents read both; neither changes what they do.
	TunnelURL string `json:"tunnel_url,omitempty"`
	APIServer string `json:"api_server,omitempty"`
	// WorkspaceID is hosted PipeOps' workspace of the cluster, a number
	// there; any scalar is accepted and kept as text.
	WorkspaceID LooseString `json:"workspace_id,omitempty"`
}

// Validate reports an error matching ErrMissingField when ClusterID is
// empty: without it the agent cannot resume its identity later.
func (r RegisterSuccess) Validate() error {
	if r.ClusterID == "" {
		return fmt.Errorf("%w: register_success has no cluster_id", ErrMissingField)
	}
	return nil
}

// ErrorPayload is the payload of TypeError. (It is not a Go error: the
// field name is fixed by the wire format.)
type ErrorPayload struct {
	Error string `json:"error"`
}

// IsClusterNotFound reports whether the error says the server does not know
// the cluster, in which case the agent should forget its cached cluster id
// and register afresh. The server only sends text, so this matches it,
// case-insensitively: "not registered" anywhere, or "not found" together
// with "cluster". Other things that are "not found" ("agent not found",
// "token not found") are not about the cluster id and return false.
func (e ErrorPayload) IsClusterNotFound() bool {
	s := strings.ToLower(e.Error)
	if strings.Contains(s, "not registered") {
		return true
	}
	return strings.Contains(s, "not found") && strings.Contains(s, "cluster")
}

// GatewayHello is the payload of TypeGatewayHello, the gateway's first
// message on the gateway socket.
type GatewayHello struct {
	// UseYamux says BINARY frames that follow carry a yamux session.
	UseYamux    bool        `json:"use_yamux"`
	YamuxConfig YamuxConfig `json:"yamux_config"`
}

// YamuxConfig carries the gateway's yamux settings, which the agent should
// mirror so that both ends agree on windows and keepalives. Zero means the
// gateway expressed no preference.
type YamuxConfig struct {
	MaxStreamWindowSize      uint32 `json:"max_stream_window_size"`
	KeepAliveIntervalSeconds int    `json:"keep_alive_interval_seconds"`
	ConnectionTimeoutSeconds int    `json:"connection_timeout_seconds"`
}

// KeepAliveInterval returns KeepAliveIntervalSeconds as a duration, or 0 if
// it is not positive (use the local default).
func (c YamuxConfig) KeepAliveInterval() time.Duration {
	return durationFromSeconds(c.KeepAliveIntervalSeconds)
}

// ConnectionTimeout returns ConnectionTimeoutSeconds as a duration, or 0 if
// it is not positive (use the local default).
func (c YamuxConfig) ConnectionTimeout() time.Duration {
	return durationFromSeconds(c.ConnectionTimeoutSeconds)
}

func durationFromSeconds(n int) time.Duration {
	if n <= 0 {
		return 0
	}
	if int64(n) > math.MaxInt64/int64(time.Second) {
		return math.MaxInt64
	}
	return time.Duration(n) * time.Second
}

// Heartbeat status values.
const (
	StatusHealthy      = "healthy"
	StatusReconnecting = "reconnecting"
	StatusDisconnected = "disconnected"
)

// Heartbeat is the payload of TypeHeartbeat.
type Heartbeat struct {
	ClusterID string `json:"cluster_id"`
	AgentID   string `json:"agent_id"`
	// Status is one of the Status constants.
	Status string `json:"status"`
	// TunnelStatus describes the gateway socket, also a Status constant.
	TunnelStatus string            `json:"tunnel_status"`
	Metadata     HeartbeatMetadata `json:"metadata"`
	// Monitoring is where the cluster's monitoring stack answers, as
	// PipeOps agents report it beside the metadata; empty when not sent.
	Monitoring
}

// Monitoring is the monitoring endpoints a heartbeat may carry, at its top
// level. The passwords are credentials: never log them. Our servers keep
// the URLs, user names and TLS flags and drop the passwords (see
// Monitoring.Public).
type Monitoring struct {
	PrometheusURL      string `json:"prometheus_url,omitempty"`
	PrometheusUsername string `json:"prometheus_username,omitempty"`
	PrometheusPassword string `json:"prometheus_password,omitempty"`
	PrometheusSSL      bool   `json:"prometheus_ssl,omitempty"`
	LokiURL            string `json:"loki_url,omitempty"`
	LokiUsername       string `json:"loki_username,omitempty"`
	LokiPassword       string `json:"loki_password,omitempty"`
	LokiSSL            bool   `json:"loki_ssl,omitempty"`
	GrafanaURL         string `json:"grafana_url,omitempty"`
	GrafanaUsername    string `json:"grafana_username,omitempty"`
	GrafanaPassword    string `json:"grafana_password,omitempty"`
	GrafanaSSL         bool   `json:"grafana_ssl,omitempty"`
	OpenCostBaseURL    string `json:"opencost_base_url,omitempty"`
	OpenCostUsername   string `json:"opencost_username,omitempty"`
	OpenCostPassword   string `json:"opencost_password,omitempty"`
	// WorkerJoin is how to join a worker node to the cluster (k3s), which
	// holds the cluster's join token: it is never stored or logged.
	WorkerJoin json.RawMessage `json:"worker_join,omitempty"`
}

// Public returns the monitoring fields safe to store and show: every URL,
// user name and TLS flag that was sent, and for each password only that
// one was sent ("prometheus_password_set": true). WorkerJoin is left out.
func (m Monitoring) Public() map[string]any {
	out := map[string]any{}
	for _, svc := range []struct {
		name, url, user, password string
		ssl                       bool
	}{
		{"prometheus", m.PrometheusURL, m.PrometheusUsername, m.PrometheusPassword, m.PrometheusSSL},
		{"loki", m.LokiURL, m.LokiUsername, m.LokiPassword, m.LokiSSL},
		{"grafana", m.GrafanaURL, m.GrafanaUsername, m.GrafanaPassword, m.GrafanaSSL},
		{"opencost", m.OpenCostBaseURL, m.OpenCostUsername, m.OpenCostPassword, false},
	} {
		if svc.url == "" {
			continue
		}
		key := svc.name + "_url"
		if svc.name == "opencost" {
			key = "opencost_base_url"
		}
		out[key] = svc.url
		if svc.user != "" {
			out[svc.name+"_username"] = svc.user
		}
		if svc.password != "" {
			out[svc.name+"_password_set"] = true
		}
		if svc.ssl {
			out[svc.name+"_ssl"] = true
		}
	}
	if len(m.WorkerJoin) > 0 && !bytes.Equal(m.WorkerJoin, jsonNull) {
		out["worker_join_offered"] = true
	}
	return out
}

// Tunnel status values as agents report them. PipeOps agents send
// "connected" or "disconnected"; older agents of ours sent the Status
// constants.
const (
	TunnelConnected    = "connected"
	TunnelDisconnected = "disconnected"
	TunnelReconnecting = "reconnecting"
	TunnelUnknown      = "unknown"
)

// NormalTunnelStatus maps what an agent sent as tunnel_status to one of the
// Tunnel constants, so that a store never keeps free text an agent chose:
// "connected" and "healthy" are TunnelConnected, "disconnected" and
// "reconnecting" (any case) themselves, anything else TunnelUnknown.
func NormalTunnelStatus(s string) string {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case TunnelConnected, StatusHealthy:
		return TunnelConnected
	case TunnelDisconnected:
		return TunnelDisconnected
	case TunnelReconnecting:
		return TunnelReconnecting
	}
	return TunnelUnknown
}

// HeartbeatMetadata is the cluster snapshot a heartbeat carries. Decoding is
// lenient the way senders differ: counts may be numbers or numeric strings,
// usages numbers or strings such as "12.5%" (see Usage), is_private a bool
// or "true"/"false".
type HeartbeatMetadata struct {
	K8sNodes      int    `json:"k8s_nodes"`
	K8sPods       int    `json:"k8s_pods"`
	CPUUsage      Usage  `json:"cpu_usage"`
	MemoryUsage   Usage  `json:"memory_usage"`
	IsPrivate     bool   `json:"is_private"`
	GatewayRoutes int    `json:"gateway_routes"`
	AgentVersion  string `json:"agent_version"`
	K8sVersion    string `json:"k8s_version"`
}

// UnmarshalJSON implements the lenient decoding described on the type.
func (m *HeartbeatMetadata) UnmarshalJSON(b []byte) error {
	var w struct {
		K8sNodes      LooseInt  `json:"k8s_nodes"`
		K8sPods       LooseInt  `json:"k8s_pods"`
		CPUUsage      Usage     `json:"cpu_usage"`
		MemoryUsage   Usage     `json:"memory_usage"`
		IsPrivate     LooseBool `json:"is_private"`
		GatewayRoutes LooseInt  `json:"gateway_routes"`
		AgentVersion  string    `json:"agent_version"`
		K8sVersion    string    `json:"k8s_version"`
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	*m = HeartbeatMetadata{
		K8sNodes: int(w.K8sNodes), K8sPods: int(w.K8sPods), CPUUsage: w.CPUUsage, MemoryUsage: w.MemoryUsage,
		IsPrivate: bool(w.IsPrivate), GatewayRoutes: int(w.GatewayRoutes), AgentVersion: w.AgentVersion, K8sVersion: w.K8sVersion,
	}
	return nil
}

// GatewayHelloAck is the payload of TypeGatewayHelloAck.
type GatewayHelloAck struct {
	UseYamux bool `json:"use_yamux"`
}

// HeartbeatAck is the payload of TypeHeartbeatAck. It carries nothing the
// agent needs, so any JSON value is accepted.
type HeartbeatAck struct{}

// UnmarshalJSON accepts any JSON value, so that whatever a server puts in
// an ack never makes it malformed.
func (*HeartbeatAck) UnmarshalJSON([]byte) error { return nil }

// Ping is the payload of TypePing. It is empty; any JSON value is accepted.
type Ping struct{}

// UnmarshalJSON accepts any JSON value.
func (*Ping) UnmarshalJSON([]byte) error { return nil }

// Pong is the payload of TypePong. It is empty; any JSON value is accepted.
type Pong struct{}

// UnmarshalJSON accepts any JSON value.
func (*Pong) UnmarshalJSON([]byte) error { return nil }

// Usage is a resource usage percentage that may be unknown, for example when
// metrics-server is not installed. It exists so that "unknown" is never sent
// as a misleading 0: on the wire it is a percent string such as "12.5%"
// when Known (the form PipeOps agents send and hosted PipeOps reads) and the
// string "unavailable" otherwise.
type Usage struct {
	Percent float64
	Known   bool
}

// UsageUnavailable is the Usage of a metric that could not be read.
var UsageUnavailable = Usage{}

// usageUnavailable is the wire form of an unknown Usage.
const usageUnavailable = "unavailable"

// Percent returns a known Usage of p percent.
func Percent(p float64) Usage { return Usage{Percent: p, Known: true} }

// valid reports whether u has a number that JSON can carry; NaN and the
// infinities are treated as unknown rather than failing a whole heartbeat.
func (u Usage) valid() bool {
	return u.Known && !math.IsNaN(u.Percent) && !math.IsInf(u.Percent, 0)
}

// String returns e.g. "12.5%" or "unavailable".
func (u Usage) String() string {
	if !u.valid() {
		return usageUnavailable
	}
	return strconv.FormatFloat(u.Percent, 'f', -1, 64) + "%"
}

// MarshalJSON encodes a known usage as a percent string ("12.5%") and an
// unknown one (or a NaN or infinite one) as "unavailable".
func (u Usage) MarshalJSON() ([]byte, error) {
	return json.Marshal(u.String())
}

// UnmarshalJSON accepts a number, "unavailable" (any case), null, or a
// string holding a decimal number with or without a trailing "%", such as
// "12.5" or "0%", since senders differ in how they write it. Anything else
// is an error.
func (u *Usage) UnmarshalJSON(b []byte) error {
	switch {
	case len(b) == 0:
		return errBadUsage(b)
	case bytes.Equal(b, jsonNull):
		*u = UsageUnavailable
		return nil
	case b[0] == '"':
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return errBadUsage(b)
		}
		s = strings.TrimSpace(s)
		if strings.EqualFold(s, usageUnavailable) {
			*u = UsageUnavailable
			return nil
		}
		if t, ok := strings.CutSuffix(s, "%"); ok {
			s = strings.TrimSpace(t)
		}
		p, ok := parseDecimal(s)
		if !ok {
			return errBadUsage(b)
		}
		*u = Percent(p)
		return nil
	default:
		p, ok := parseDecimal(string(b))
		if !ok {
			return errBadUsage(b)
		}
		*u = Percent(p)
		return nil
	}
}

// parseDecimal parses a plain decimal number. strconv.ParseFloat alone would
// also take "NaN", "Inf" and hex floats, none of which is a percentage.
func parseDecimal(s string) (float64, bool) {
	if s == "" || strings.ContainsFunc(s, func(r rune) bool { return !strings.ContainsRune("0123456789+-.eE", r) }) {
		return 0, false
	}
	p, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsInf(p, 0) {
		return 0, false
	}
	return p, true
}

func errBadUsage(b []byte) error {
	// Quote only a prefix: the value came from the peer and may be huge.
	const limit = 32
	if len(b) > limit {
		b = b[:limit]
	}
	return fmt.Errorf("tunnel: usage must be a number, %q or null, got %q", usageUnavailable, b)
}
