package tunnel

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// The JSON proxy path: the server side asks the agent to make an HTTP
// request (to the cluster's Kubernetes API, with the agent's own
// credentials) and the agent answers in one message or a stream of them.
// Hosted PipeOps reaches clusters this way, and our gateway uses it for
// agents that do not serve HTTP on tunnel streams (PipeOps agents). Every
// message of one request carries the request's id in the envelope's
// request_id. See spec.md §5.
const (
	// TypeProxyRequest asks the agent for an HTTP request; payload
	// ProxyRequest. Server → agent.
	TypeProxyRequest = "proxy_request"
	// TypeProxyRequestChunk carries part of a request body sent in pieces
	// (ProxyRequest.StreamBody); payload ProxyRequestChunk. Server → agent.
	TypeProxyRequestChunk = "proxy_request_chunk"
	// TypeProxyRequestStreamEnd ends a request body sent in pieces; payload
	// ignored. Server → agent.
	TypeProxyRequestStreamEnd = "proxy_request_stream_end"
	// TypeProxyCancel abandons a request; payload ignored, no answer.
	// Server → agent.
	TypeProxyCancel = "proxy_cancel"
	// TypeProxyResponse is a whole answer in one message; payload
	// ProxyResponse. Agent → server.
	TypeProxyResponse = "proxy_response"
	// TypeProxyResponseHeader starts a streamed answer; payload
	// ProxyResponseHeader. Agent → server.
	TypeProxyResponseHeader = "proxy_response_header"
	// TypeProxyResponseChunk is part of a streamed answer's body; payload
	// ProxyResponseChunk. Agent → server.
	TypeProxyResponseChunk = "proxy_response_chunk"
	// TypeProxyResponseEnd ends a streamed answer; payload ignored.
	// Agent → server.
	TypeProxyResponseEnd = "proxy_response_end"
	// TypeProxyResponseAbort ends a streamed answer that failed, with or
	// without a header before it; payload ProxyFailure. Agent → server.
	TypeProxyResponseAbort = "proxy_response_abort"
	// TypeProxyError answers a request that could not be made; payload
	// ProxyFailure. Agent → server.
	TypeProxyError = "proxy_error"
)

// WebSocket relay messages (exec, attach and port-forward over the JSON
// path). Each has an alias; receivers treat both names alike.
const (
	// TypeWSStart opens a WebSocket to the Kubernetes API; payload WSStart.
	// Server → agent.
	TypeWSStart      = "ws_start"
	TypeWSStartAlias = "proxy_websocket_start"
	// TypeWSData carries one WebSocket frame; payload WSData. Both ways.
	TypeWSData      = "ws_data"
	TypeWSDataAlias = "proxy_websocket_data"
	// TypeWSClose ends a relay; payload WSClose. Both ways.
	TypeWSClose      = "ws_close"
	TypeWSCloseAlias = "proxy_websocket_close"
)

// Raw TCP and UDP relays over JSON, an older PipeOps path that yamux
// streams replaced. Our agent refuses tcp_tunnel_start with a
// tcp_tunnel_close and drops udp_tunnel_data; the types exist so that both
// are decoded, answered and counted rather than logged as unknown.
const (
	TypeTCPTunnelStart = "tcp_tunnel_start"
	TypeTCPTunnelData  = "tcp_tunnel_data"
	TypeTCPTunnelClose = "tcp_tunnel_close"
	TypeUDPTunnelData  = "udp_tunnel_data"
)

// Messages PipeOps agents send about the protocol itself.
const (
	// TypeBackpressure says the agent dropped data of a relay; payload
	// Backpressure. Agent → server.
	TypeBackpressure = "backpressure"
	// TypeProtocolFallback says the agent does not know a message type it
	// received; payload ProtocolFallback. Agent → server.
	TypeProtocolFallback = "protocol_fallback"
)

// Body encodings of the proxy messages.
const (
	EncodingBase64 = "base64"
	// EncodingGzip is base64 of a gzip stream (proxy_response only).
	EncodingGzip = "gzip"
	// EncodingJSON marks a body sent as a JSON value rather than a string.
	EncodingJSON = "json"
)

// MaxGunzipSize bounds the body a gzip-encoded proxy_response may expand
// to. A 1 MiB message could otherwise inflate to gigabytes.
const MaxGunzipSize = 64 << 20

// ErrBadBody means a proxy message's body does not decode as its encoding
// says. It is wrapped with details.
var ErrBadBody = errors.New("tunnel: proxy body does not decode")

// ProxyRequest is the payload of TypeProxyRequest: one HTTP request for the
// agent to make. Path is the request path (absolute, starting with '/'),
// Query the raw query without '?'.
type ProxyRequest struct {
	Method  string
	Path    string
	Query   string
	Headers Headers
	// Body is the request body, sent base64; decoded from a string (base64
	// when body_encoding says so, the bytes of the string otherwise) or
	// from a JSON object or array (its encoding).
	Body []byte
	// StreamBody says the body follows in proxy_request_chunk messages
	// ended by proxy_request_stream_end (wire: use_streaming, or streaming).
	StreamBody bool
	// ResponseStreaming asks for the streamed answer (header, chunks, end)
	// instead of one proxy_response (wire: supports_response_streaming).
	ResponseStreaming bool
	// Timeout and Deadline bound the request; zero for none given.
	Timeout  time.Duration
	Deadline time.Time
	// Service fields name an in-cluster Service instead of the Kubernetes
	// API (hosted PipeOps' application path). Our agent refuses them: it
	// serves applications over yamux streams, to targets a route names.
	Namespace   string
	ServiceName string
	ServicePort int
	Scheme      string
	// WebSocket and Protocol mark an upgrade request (wire: is_websocket or
	// isWebSocket; protocol is a WebSocket subprotocol).
	WebSocket bool
	Protocol  string
	// BodyBinary is the legacy mode in which the body follows in a binary
	// frame; it cannot work beside yamux and is refused.
	BodyBinary bool
}

type proxyRequestWire struct {
	Method                    string          `json:"method"`
	Path                      string          `json:"path"`
	Query                     string          `json:"query,omitempty"`
	Headers                   Headers         `json:"headers,omitempty"`
	Body                      json.RawMessage `json:"body,omitempty"`
	BodyEncoding              string          `json:"body_encoding,omitempty"`
	BodyBinary                LooseBool       `json:"body_binary,omitempty"`
	UseStreaming              LooseBool       `json:"use_streaming,omitempty"`
	Streaming                 LooseBool       `json:"streaming,omitempty"`
	SupportsResponseStreaming LooseBool       `json:"supports_response_streaming,omitempty"`
	Timeout                   LooseDuration   `json:"timeout,omitempty"`
	Deadline                  string          `json:"deadline,omitempty"`
	Namespace                 string          `json:"namespace,omitempty"`
	ServiceName               string          `json:"service_name,omitempty"`
	ServicePort               LooseInt        `json:"service_port,omitempty"`
	Scheme                    string          `json:"scheme,omitempty"`
	IsWebSocket               LooseBool       `json:"is_websocket,omitempty"`
	IsWebSocketCamel          LooseBool       `json:"isWebSocket,omitempty"`
	Protocol                  string          `json:"protocol,omitempty"`
}

// MarshalJSON encodes r with its body in base64.
func (r ProxyRequest) MarshalJSON() ([]byte, error) {
	w := proxyRequestWire{
		Method: r.Method, Path: r.Path, Query: r.Query, Headers: r.Headers,
		BodyBinary: LooseBool(r.BodyBinary), UseStreaming: LooseBool(r.StreamBody),
		SupportsResponseStreaming: LooseBool(r.ResponseStreaming), Timeout: LooseDuration(r.Timeout),
		Namespace: r.Namespace, ServiceName: r.ServiceName, ServicePort: LooseInt(r.ServicePort), Scheme: r.Scheme,
		IsWebSocket: LooseBool(r.WebSocket), Protocol: r.Protocol,
	}
	if !r.Deadline.IsZero() {
		w.Deadline = r.Deadline.UTC().Format(time.RFC3339Nano)
	}
	w.Body, w.BodyEncoding = encodeBody(r.Body)
	return json.Marshal(w)
}

// UnmarshalJSON decodes the forms described on ProxyRequest.
func (r *ProxyRequest) UnmarshalJSON(b []byte) error {
	var w proxyRequestWire
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	body, err := decodeBody(w.Body, w.BodyEncoding, false)
	if err != nil {
		return err
	}
	*r = ProxyRequest{
		Method: w.Method, Path: w.Path, Query: w.Query, Headers: w.Headers, Body: body,
		StreamBody: bool(w.UseStreaming || w.Streaming), ResponseStreaming: bool(w.SupportsResponseStreaming),
		Timeout: time.Duration(w.Timeout), Namespace: w.Namespace, ServiceName: w.ServiceName,
		ServicePort: int(w.ServicePort), Scheme: w.Scheme, WebSocket: bool(w.IsWebSocket || w.IsWebSocketCamel),
		Protocol: w.Protocol, BodyBinary: bool(w.BodyBinary),
	}
	if r.Method == "" {
		r.Method = "GET"
	}
	if w.Deadline != "" {
		t, err := time.Parse(time.RFC3339Nano, w.Deadline)
		if err != nil {
			return fmt.Errorf("tunnel: proxy_request deadline %q: %w", clip([]byte(w.Deadline)), err)
		}
		r.Deadline = t
	}
	return nil
}

// Validate refuses a request no agent could make: a path that is not
// absolute, or holds a fragment or CR/LF.
func (r ProxyRequest) Validate() error {
	if !strings.HasPrefix(r.Path, "/") || strings.ContainsAny(r.Path, "#\r\n") || strings.ContainsAny(r.Query, "#\r\n") {
		return fmt.Errorf("%w: proxy_request path %q is not an absolute request path", ErrMissingField, clip([]byte(r.Path)))
	}
	if strings.ContainsAny(r.Method, " \t\r\n") {
		return fmt.Errorf("%w: proxy_request method %q", ErrMissingField, clip([]byte(r.Method)))
	}
	return nil
}

// encodeBody is the wire form of a body: base64 and its encoding name, or
// nothing for an empty body.
func encodeBody(b []byte) (json.RawMessage, string) {
	if len(b) == 0 {
		return nil, ""
	}
	raw, _ := json.Marshal(base64.StdEncoding.EncodeToString(b))
	return raw, EncodingBase64
}

// decodeBody decodes a body field: a JSON string in encoding (base64,
// gzip when allowed, or none), or a JSON object or array for the bytes of
// its encoding.
func decodeBody(raw json.RawMessage, encoding string, gzipOK bool) ([]byte, error) {
	if len(raw) == 0 || bytes.Equal(raw, jsonNull) {
		return nil, nil
	}
	switch raw[0] {
	case '{', '[':
		var buf bytes.Buffer
		if err := json.Compact(&buf, raw); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrBadBody, err)
		}
		return buf.Bytes(), nil
	case '"':
	default:
		return nil, fmt.Errorf("%w: body must be a string, object or array, got %q", ErrBadBody, clip(raw))
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, err
	}
	switch enc := strings.ToLower(encoding); {
	case enc == EncodingBase64:
		return decodeBase64(s)
	case enc == EncodingGzip && gzipOK:
		z, err := decodeBase64(s)
		if err != nil {
			return nil, err
		}
		return gunzip(z)
	case enc == "" || enc == EncodingJSON || enc == "text" || enc == "utf-8" || enc == "utf8":
		return []byte(s), nil
	default:
		return nil, fmt.Errorf("%w: unknown encoding %q", ErrBadBody, clip([]byte(encoding)))
	}
}

// decodeBase64 accepts standard base64 with or without padding.
func decodeBase64(s string) ([]byte, error) {
	if b, err := base64.StdEncoding.DecodeString(s); err == nil {
		return b, nil
	}
	b, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(s, "="))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadBody, err)
	}
	return b, nil
}

func gunzip(z []byte) ([]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(z))
	if err != nil {
		return nil, fmt.Errorf("%w: gzip: %w", ErrBadBody, err)
	}
	b, err := io.ReadAll(io.LimitReader(zr, MaxGunzipSize+1))
	if err != nil {
		return nil, fmt.Errorf("%w: gzip: %w", ErrBadBody, err)
	}
	if len(b) > MaxGunzipSize {
		return nil, fmt.Errorf("%w: gzip body expands past %d bytes", ErrBadBody, MaxGunzipSize)
	}
	return b, nil
}

// ProxyRequestChunk is the payload of TypeProxyRequestChunk: part of a
// request body, base64 in "data" (or "chunk", which senders also use).
type ProxyRequestChunk struct {
	Data []byte
}

// MarshalJSON encodes the chunk as {"data": base64}.
func (c ProxyRequestChunk) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Data string `json:"data"`
	}{base64.StdEncoding.EncodeToString(c.Data)})
}

// UnmarshalJSON accepts "data" or "chunk".
func (c *ProxyRequestChunk) UnmarshalJSON(b []byte) error {
	var w struct {
		Data  *string `json:"data"`
		Chunk *string `json:"chunk"`
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	s := w.Data
	if s == nil {
		s = w.Chunk
	}
	if s == nil {
		return fmt.Errorf("%w: proxy_request_chunk has no data", ErrMissingField)
	}
	d, err := decodeBase64(*s)
	if err != nil {
		return err
	}
	c.Data = d
	return nil
}

// ProxyResponse is the payload of TypeProxyResponse: a whole answer.
type ProxyResponse struct {
	Status  int
	Headers Headers
	Body    []byte
}

type proxyResponseWire struct {
	Status   LooseInt        `json:"status"`
	Headers  Headers         `json:"headers"`
	Body     json.RawMessage `json:"body,omitempty"`
	Encoding string          `json:"encoding,omitempty"`
}

// MarshalJSON encodes the body in base64 (none when empty).
func (r ProxyResponse) MarshalJSON() ([]byte, error) {
	w := proxyResponseWire{Status: LooseInt(r.Status), Headers: r.Headers}
	w.Body, w.Encoding = encodeBody(r.Body)
	return json.Marshal(w)
}

// UnmarshalJSON decodes a body in base64, gzip (bounded by MaxGunzipSize)
// or none; a status of 0 means 200, as senders use it.
func (r *ProxyResponse) UnmarshalJSON(b []byte) error {
	var w proxyResponseWire
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	body, err := decodeBody(w.Body, w.Encoding, true)
	if err != nil {
		return err
	}
	*r = ProxyResponse{Status: statusOrOK(int(w.Status)), Headers: w.Headers, Body: body}
	return nil
}

// Validate refuses a status that is not a three-digit HTTP status, which
// includes a proxy_response with no payload at all.
func (r ProxyResponse) Validate() error { return validStatus(r.Status) }

// ProxyResponseHeader is the payload of TypeProxyResponseHeader.
type ProxyResponseHeader struct {
	Status  int     `json:"status"`
	Headers Headers `json:"headers"`
}

// UnmarshalJSON decodes the header; a status of 0 means 200.
func (h *ProxyResponseHeader) UnmarshalJSON(b []byte) error {
	var w struct {
		Status  LooseInt `json:"status"`
		Headers Headers  `json:"headers"`
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	*h = ProxyResponseHeader{Status: statusOrOK(int(w.Status)), Headers: w.Headers}
	return nil
}

// Validate refuses a status that is not a three-digit HTTP status.
func (h ProxyResponseHeader) Validate() error { return validStatus(h.Status) }

func statusOrOK(s int) int {
	if s == 0 {
		return 200
	}
	return s
}

func validStatus(s int) error {
	if s < 100 || s > 999 {
		return fmt.Errorf("%w: HTTP status %d", ErrMissingField, s)
	}
	return nil
}

// ProxyResponseChunk is the payload of TypeProxyResponseChunk: part of a
// streamed body, base64 in "data", its decoded length in "size".
type ProxyResponseChunk struct {
	Data []byte
}

// MarshalJSON encodes the chunk with its encoding and size.
func (c ProxyResponseChunk) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Data     string `json:"data"`
		Encoding string `json:"encoding"`
		Size     int    `json:"size"`
	}{base64.StdEncoding.EncodeToString(c.Data), EncodingBase64, len(c.Data)})
}

// UnmarshalJSON decodes data (base64 unless encoding names none) and
// refuses a chunk whose size disagrees with it: a lost or cut chunk must
// not pass as a whole one.
func (c *ProxyResponseChunk) UnmarshalJSON(b []byte) error {
	var w struct {
		Data     *string   `json:"data"`
		Encoding string    `json:"encoding"`
		Size     *LooseInt `json:"size"`
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	if w.Data == nil {
		return fmt.Errorf("%w: proxy_response_chunk has no data", ErrMissingField)
	}
	raw, _ := json.Marshal(*w.Data)
	enc := w.Encoding
	if enc == "" {
		enc = EncodingBase64
	}
	d, err := decodeBody(raw, enc, false)
	if err != nil {
		return err
	}
	if w.Size != nil && int(*w.Size) != len(d) {
		return fmt.Errorf("%w: proxy_response_chunk size %d, data holds %d bytes", ErrBadBody, int(*w.Size), len(d))
	}
	c.Data = d
	return nil
}

// ProxyFailure is the payload of TypeProxyError and TypeProxyResponseAbort.
type ProxyFailure struct {
	Error string `json:"error"`
	// RequestID repeats the envelope's, as some senders write it here too.
	RequestID string `json:"request_id,omitempty"`
	// Status is the HTTP status the failure maps to, when the sender knows
	// it (ours do); absent from PipeOps agents' failures.
	Status int `json:"status,omitempty"`
}

// Empty is a payload that carries nothing: any JSON value decodes to it.
// proxy_response_end, proxy_cancel, proxy_request_stream_end and
// register_in_progress have one.
type Empty struct{}

// UnmarshalJSON accepts any JSON value.
func (*Empty) UnmarshalJSON([]byte) error { return nil }

// MarshalJSON encodes {}.
func (Empty) MarshalJSON() ([]byte, error) { return []byte("{}"), nil }

// WebSocket frame types as the relay messages carry them (the first byte of
// WSData's decoded data); the values are RFC 6455 opcodes.
const (
	WSFrameText   = 1
	WSFrameBinary = 2
	WSFrameClose  = 8
	WSFramePing   = 9
	WSFramePong   = 10
)

func validFrameType(b byte) bool {
	switch b {
	case WSFrameText, WSFrameBinary, WSFrameClose, WSFramePing, WSFramePong:
		return true
	}
	return false
}

// WSStart is the payload of TypeWSStart: open a WebSocket to the
// Kubernetes API at Path?Query, relayed as WSData messages under StreamID.
type WSStart struct {
	StreamID string  `json:"stream_id"`
	Method   string  `json:"method,omitempty"`
	Path     string  `json:"path"`
	Query    string  `json:"query,omitempty"`
	Protocol string  `json:"protocol,omitempty"`
	Headers  Headers `json:"headers,omitempty"`
}

// Validate refuses a start without a stream id or with a path that is not
// absolute.
func (s WSStart) Validate() error {
	if s.StreamID == "" {
		return fmt.Errorf("%w: ws_start has no stream_id", ErrMissingField)
	}
	return ProxyRequest{Method: "GET", Path: s.Path, Query: s.Query}.Validate()
}

// WSData is the payload of TypeWSData: one WebSocket frame of a relay. On
// the wire, data is base64 of the frame type byte followed by the frame's
// payload; message_type may repeat the type.
type WSData struct {
	StreamID  string
	FrameType byte
	Payload   []byte
}

// MarshalJSON encodes the frame as PipeOps agents do, stream id in both
// stream_id and request_id.
func (d WSData) MarshalJSON() ([]byte, error) {
	buf := make([]byte, 0, 1+len(d.Payload))
	buf = append(buf, d.FrameType)
	buf = append(buf, d.Payload...)
	return json.Marshal(struct {
		StreamID    string `json:"stream_id"`
		RequestID   string `json:"request_id"`
		Data        string `json:"data"`
		MessageType int    `json:"message_type"`
	}{d.StreamID, d.StreamID, base64.StdEncoding.EncodeToString(buf), int(d.FrameType)})
}

// UnmarshalJSON decodes a frame. The stream id is stream_id, else
// request_id (the envelope's is the last resort, which the caller applies).
// When the first data byte is not a frame type but message_type is, the
// data is the payload alone.
func (d *WSData) UnmarshalJSON(b []byte) error {
	var w struct {
		StreamID    string    `json:"stream_id"`
		RequestID   string    `json:"request_id"`
		Data        string    `json:"data"`
		MessageType *LooseInt `json:"message_type"`
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	raw, err := decodeBase64(w.Data)
	if err != nil {
		return err
	}
	*d = WSData{StreamID: w.StreamID}
	if d.StreamID == "" {
		d.StreamID = w.RequestID
	}
	switch {
	case len(raw) > 0 && validFrameType(raw[0]):
		d.FrameType, d.Payload = raw[0], raw[1:]
	case w.MessageType != nil && *w.MessageType >= 0 && *w.MessageType < 256 && validFrameType(byte(*w.MessageType)):
		d.FrameType, d.Payload = byte(*w.MessageType), raw
	default:
		return fmt.Errorf("%w: ws_data has no frame type", ErrBadBody)
	}
	return nil
}

// Validate refuses a frame without a valid frame type, which includes a
// ws_data with no payload at all.
func (d WSData) Validate() error {
	if !validFrameType(d.FrameType) {
		return fmt.Errorf("%w: ws_data frame type %d", ErrBadBody, d.FrameType)
	}
	return nil
}

// WSClose is the payload of TypeWSClose.
type WSClose struct {
	StreamID  string `json:"stream_id"`
	RequestID string `json:"request_id,omitempty"`
	Reason    string `json:"reason,omitempty"`
}

// ID is the relay the close names: stream_id, else request_id.
func (c WSClose) ID() string {
	if c.StreamID != "" {
		return c.StreamID
	}
	return c.RequestID
}

// TCPTunnelStart is the payload of TypeTCPTunnelStart; the envelope's
// request_id names the connection.
type TCPTunnelStart struct {
	TunnelID         string   `json:"tunnel_id"`
	GatewayName      string   `json:"gateway_name,omitempty"`
	GatewayNamespace string   `json:"gateway_namespace,omitempty"`
	GatewayPort      LooseInt `json:"gateway_port,omitempty"`
	ServiceName      string   `json:"service_name,omitempty"`
	ServiceNamespace string   `json:"service_namespace,omitempty"`
	ServicePort      LooseInt `json:"service_port,omitempty"`
	ClientAddr       string   `json:"client_addr,omitempty"`
}

// TCPTunnelData is the payload of TypeTCPTunnelData.
type TCPTunnelData struct {
	Data      []byte `json:"data"` // base64 on the wire
	Direction string `json:"direction,omitempty"`
}

// TCPTunnelClose is the payload of TypeTCPTunnelClose.
type TCPTunnelClose struct {
	Reason        string `json:"reason"`
	Error         string `json:"error,omitempty"`
	BytesSent     int64  `json:"bytes_sent,omitempty"`
	BytesReceived int64  `json:"bytes_received,omitempty"`
	DurationMS    int64  `json:"duration_ms,omitempty"`
}

// UDPTunnelData is the payload of TypeUDPTunnelData.
type UDPTunnelData struct {
	TunnelID         string   `json:"tunnel_id"`
	Data             []byte   `json:"data"` // base64 on the wire
	ClientAddr       string   `json:"client_addr,omitempty"`
	ClientPort       LooseInt `json:"client_port,omitempty"`
	GatewayName      string   `json:"gateway_name,omitempty"`
	GatewayNamespace string   `json:"gateway_namespace,omitempty"`
	GatewayPort      LooseInt `json:"gateway_port,omitempty"`
	ServiceName      string   `json:"service_name,omitempty"`
	ServiceNamespace string   `json:"service_namespace,omitempty"`
	ServicePort      LooseInt `json:"service_port,omitempty"`
	Direction        string   `json:"direction,omitempty"`
}

// Backpressure is the payload of TypeBackpressure.
type Backpressure struct {
	RequestID string `json:"request_id"`
	Reason    string `json:"reason"`
}

// ProtocolFallback is the payload of TypeProtocolFallback.
type ProtocolFallback struct {
	AgentVersion      string   `json:"agent_version,omitempty"`
	UnknownType       string   `json:"unknown_type"`
	SupportedTypes    []string `json:"supported_types,omitempty"`
	FallbackMode      string   `json:"fallback_mode,omitempty"`
	ProtocolVersion   string   `json:"protocol_version,omitempty"`
	Timestamp         string   `json:"timestamp,omitempty"`
	OriginalRequestID string   `json:"original_request_id,omitempty"`
}
