// Package pipeopsagent is a test stand-in for the public PipeOps agent: it
// speaks the agent side of the protocol the way that agent does, quirks
// included, so that tests can prove our control plane and gateway serve
// PipeOps agents users already run. What it does, and where it differs from
// our agent:
//
//   - registers on the control plane's socket with PipeOps' register payload
//     (tunnel_port_config, server_specs, a k8s_service_token), and waits
//     only for a register_success with its request_id, for 30 s: an error
//     answer never reaches the waiting call;
//   - on the gateway socket it announces the PipeOps capability flags but
//     not tunnel.CapabilityK8sHTTP, answers gateway_hello with
//     gateway_hello_ack and starts yamux only after that;
//   - heartbeats carry cpu_usage and memory_usage as "0%" and
//     tunnel_status "connected";
//   - a stream to kubernetes/default:443 is relayed as raw TCP to the API
//     server's TLS port, with no credentials; the API is reached with the
//     agent's credentials only through proxy_request, answered streamed
//     when supports_response_streaming is set and in one proxy_response
//     (gzip-encoded when large and textual) otherwise, with a client
//     timeout (30 s by default, as the public agent has);
//   - a message type it does not know is answered once with
//     protocol_fallback.
//
// It is test code: loopback only, every goroutine owned by Run.
package pipeopsagent

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/hashicorp/yamux"

	"github.com/pipeops/tunnel/shared/tunnel"
	"github.com/pipeops/tunnel/shared/wsconn"
)

// Config configures an Agent.
type Config struct {
	APIURL      string // control plane, http(s)
	Token       string
	ClusterName string
	AgentID     string
	// KubeAPIAddr is the API server's TLS address (host:port): where a
	// stream to kubernetes/default:443 is relayed as raw TCP.
	KubeAPIAddr string
	// KubeURL and KubeTransport are how proxy_request reaches the API with
	// the agent's own credentials.
	KubeURL       *url.URL
	KubeTransport http.RoundTripper
	// K8sTimeout bounds each proxy_request (default 30 s, as the public
	// agent does; it cuts longer watches).
	K8sTimeout time.Duration
	// Services maps "service.namespace:port" to a local address, for
	// application streams.
	Services map[string]string
	// ServiceToken is offered in register as k8s_service_token.
	ServiceToken string
	// TLS is used for wss:// sockets (nil: system roots).
	TLS *tls.Config
}

// Agent is one simulated PipeOps agent.
type Agent struct {
	cfg Config

	mu          sync.Mutex
	received    []tunnel.Message
	sent        []tunnel.Message
	fallbacks   map[string]bool
	cancels     map[string]context.CancelFunc
	uploads     map[string]*io.PipeWriter
	clusterID   string
	clusterUUID string
	gatewayURL  string
	conn        *wsconn.Conn
	recvd       chan struct{} // closed and replaced on every message received
}

// New returns an agent; nothing runs until Register and Connect.
func New(cfg Config) *Agent {
	if cfg.K8sTimeout <= 0 {
		cfg.K8sTimeout = 30 * time.Second
	}
	return &Agent{cfg: cfg, fallbacks: map[string]bool{}, cancels: map[string]context.CancelFunc{},
		uploads: map[string]*io.PipeWriter{}, recvd: make(chan struct{})}
}

// RegisterPayload is the register payload the agent sends, shaped as the
// public agent's.
func (a *Agent) RegisterPayload(cachedClusterID string) map[string]any {
	p := map[string]any{
		"agent_id": a.cfg.AgentID, "name": a.cfg.ClusterName, "k8s_version": "v1.31.4+k3s1", "hostname": "sim-node-1",
		"agent_version": "v1.12.0", "server_ip": "127.0.0.1", "region": "DE", "cloud_provider": "bare-metal",
		"tunnel_port_config": map[string]any{"kubernetes_api": 6443, "kubelet": 10250, "agent_http": 8080},
		"labels":             map[string]string{"hostname": "sim-node-1", "agent.pipeops.io/version": "v1.12.0"},
		"server_specs":       map[string]any{"cpu_cores": 2, "memory_gb": 4, "disk_gb": 40, "os": "Debian GNU/Linux 12 (bookworm)"},
		"features": map[string]any{"supports_streaming": true, "supports_binary_protocol": true, "supports_compression": true,
			"supports_websocket_proxy": true, "supports_gateway": true, "supports_response_streaming": true},
		"metadata": map[string]any{"agent_mode": "vm-agent", "registration_mode": "fresh"},
	}
	if cachedClusterID != "" {
		p["cluster_id"] = cachedClusterID
	}
	if a.cfg.ServiceToken != "" {
		p["k8s_service_token"] = a.cfg.ServiceToken
	}
	return p
}

// ErrRegistrationTimeout is what the public agent ends with when no
// register_success with its request id comes within 30 s.
var ErrRegistrationTimeout = errors.New("registration timed out")

// Register registers as the public agent does and returns the
// register_success payload. An error answer is recorded but, as in the
// public agent, does not end the wait; timeout is the wait (30 s there).
func (a *Agent) Register(ctx context.Context, cachedClusterID string, timeout time.Duration) (tunnel.RegisterSuccess, error) {
	var out tunnel.RegisterSuccess
	wsURL, err := tunnel.RegistrationURL(a.cfg.APIURL)
	if err != nil {
		return out, err
	}
	ws, resp, err := a.dialer().DialContext(ctx, wsURL, http.Header{"Authorization": {"Bearer " + a.cfg.Token}})
	if err != nil {
		if resp != nil {
			return out, fmt.Errorf("dial %s: HTTP %d: %w", wsURL, resp.StatusCode, err)
		}
		return out, err
	}
	defer ws.Close()
	id := "req_" + strconv.FormatInt(time.Now().UnixNano(), 10) + "_" + a.cfg.AgentID
	if err := ws.WriteJSON(envelope(tunnel.TypeRegister, id, a.RegisterPayload(cachedClusterID))); err != nil {
		return out, err
	}
	_ = ws.SetReadDeadline(time.Now().Add(timeout))
	for {
		_, b, err := ws.ReadMessage()
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				return out, ErrRegistrationTimeout
			}
			return out, err
		}
		m, err := tunnel.DecodeMessage(b)
		if err != nil {
			continue // the public agent logs and drops what it cannot decode
		}
		a.record(m)
		if m.Type != tunnel.TypeRegisterSuccess || m.RequestID != id {
			continue
		}
		if err := m.DecodePayload(&out); err != nil {
			return out, err
		}
		a.mu.Lock()
		a.clusterID, a.clusterUUID, a.gatewayURL = out.ClusterID, out.ClusterUUID, out.GatewayWSURL
		if a.clusterUUID == "" {
			a.clusterUUID = a.clusterID
		}
		a.mu.Unlock()
		return out, nil
	}
}

func (a *Agent) dialer() *websocket.Dialer {
	return &websocket.Dialer{TLSClientConfig: a.cfg.TLS, HandshakeTimeout: 10 * time.Second}
}

// Resume sets the gateway and cluster of a saved registration, so Run can
// connect without Register, as the public agent does when it restarts.
func (a *Agent) Resume(gatewayWSURL, clusterID string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.gatewayURL, a.clusterID, a.clusterUUID = gatewayWSURL, clusterID, clusterID
}

// SendRaw sends a control message as given, for tests of what a gateway
// does with unexpected answers.
func (a *Agent) SendRaw(typ, requestID string, payload any) error {
	return a.send(envelope(typ, requestID, payload))
}

// GatewayQuery is the query the public agent adds to gateway_ws_url.
func GatewayQuery(clusterUUID string) url.Values {
	return url.Values{"cluster_uuid": {clusterUUID}, "agent_version": {"v1.12.0"}, "supports_streaming": {"true"},
		"supports_binary": {"true"}, "supports_websocket": {"true"}, "supports_yamux": {"true"}, "supports_response_streaming": {"true"}}
}

// Run connects to the gateway Register returned and serves it until ctx
// ends or the socket drops. ready is closed once the yamux session runs.
func (a *Agent) Run(ctx context.Context, ready chan<- struct{}) error {
	a.mu.Lock()
	raw, uuid := a.gatewayURL, a.clusterUUID
	a.mu.Unlock()
	u, err := url.Parse(raw)
	if err != nil {
		return err
	}
	switch u.Scheme {
	case "https":
		u.Scheme = "wss"
	case "http":
		u.Scheme = "ws"
	}
	if u.Path == "" {
		u.Path = "/ws"
	}
	q := u.Query()
	for k, v := range GatewayQuery(uuid) {
		q[k] = v
	}
	u.RawQuery = q.Encode()
	ws, resp, err := a.dialer().DialContext(ctx, u.String(), http.Header{"Authorization": {"Bearer " + a.cfg.Token}})
	if err != nil {
		if resp != nil {
			return fmt.Errorf("dial gateway: HTTP %d: %w", resp.StatusCode, err)
		}
		return fmt.Errorf("dial gateway: %w", err)
	}
	// gateway_hello comes first; the ack is written before yamux starts.
	_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, b, err := ws.ReadMessage()
	if err != nil {
		ws.Close()
		return fmt.Errorf("read gateway_hello: %w", err)
	}
	_ = ws.SetReadDeadline(time.Time{})
	hello, err := tunnel.DecodeMessage(b)
	if err != nil || hello.Type != tunnel.TypeGatewayHello {
		ws.Close()
		return fmt.Errorf("first message %q is not gateway_hello (%v)", b, err)
	}
	a.record(hello)
	if err := ws.WriteJSON(envelope(tunnel.TypeGatewayHelloAck, "", map[string]any{"use_yamux": true})); err != nil {
		ws.Close()
		return err
	}
	var wg sync.WaitGroup
	runCtx, cancel := context.WithCancel(ctx)
	defer func() {
		cancel()
		wg.Wait()
	}()
	conn := wsconn.New(ws, wsconn.Options{OnText: func(b []byte) { a.onText(runCtx, &wg, b) }})
	a.mu.Lock()
	a.conn = conn
	a.mu.Unlock()
	mcfg := yamux.DefaultConfig()
	mcfg.LogOutput = io.Discard
	mux, err := yamux.Client(tunnel.CoalesceFrames(conn), mcfg)
	if err != nil {
		conn.Close()
		return err
	}
	stop := context.AfterFunc(ctx, func() { mux.Close(); conn.Close() })
	defer stop()
	if ready != nil {
		close(ready)
	}
	for {
		st, err := mux.AcceptStream()
		if err != nil {
			conn.Close()
			a.mu.Lock()
			a.conn = nil
			for _, c := range a.cancels {
				c()
			}
			a.mu.Unlock()
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.serveStream(st)
		}()
	}
}

// serveStream relays a stream as the public agent does: raw TCP, no
// credentials, to the API server for kubernetes/default:443.
func (a *Agent) serveStream(st net.Conn) {
	defer st.Close()
	h, err := tunnel.ReadStreamHeader(st)
	if err != nil {
		return
	}
	addr := a.cfg.Services[h.Service+"."+h.Namespace+":"+strconv.Itoa(int(h.Port))]
	if h.Service == "kubernetes" && h.Namespace == "default" && h.Port == 443 {
		addr = a.cfg.KubeAPIAddr
	}
	if addr == "" {
		return
	}
	target, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return
	}
	tunnel.Join(st, target)
}

// Heartbeat sends a heartbeat as the public agent writes it.
func (a *Agent) Heartbeat(pods int) error {
	a.mu.Lock()
	id := a.clusterID
	a.mu.Unlock()
	return a.send(envelope(tunnel.TypeHeartbeat, "", map[string]any{
		"cluster_id": id, "agent_id": a.cfg.AgentID, "status": "healthy", "tunnel_status": "connected",
		"metadata": map[string]any{"agent_version": "v1.12.0", "k8s_version": "v1.31.4+k3s1", "k8s_nodes": 1, "k8s_pods": pods,
			"cpu_usage": "0%", "memory_usage": "0%", "is_private": true, "gateway_routes": 0},
		"prometheus_url": "http://prometheus.pipeops-monitoring.svc:9090", "prometheus_username": "admin",
		"prometheus_password": "sim-prom-password", "prometheus_ssl": false,
	}))
}

func (a *Agent) send(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	a.mu.Lock()
	conn := a.conn
	a.mu.Unlock()
	if conn == nil {
		return errors.New("not connected")
	}
	if m, err := tunnel.DecodeMessage(b); err == nil {
		a.mu.Lock()
		a.sent = append(a.sent, m)
		a.mu.Unlock()
	}
	return conn.WriteText(b)
}

func envelope(typ, id string, payload any) map[string]any {
	m := map[string]any{"type": typ, "payload": payload, "timestamp": time.Now().UTC().Format(time.RFC3339Nano)}
	if id != "" {
		m["request_id"] = id
	}
	return m
}

func (a *Agent) record(m tunnel.Message) {
	a.mu.Lock()
	a.received = append(a.received, m)
	close(a.recvd)
	a.recvd = make(chan struct{})
	a.mu.Unlock()
}

// Received returns the messages received so far.
func (a *Agent) Received() []tunnel.Message {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]tunnel.Message(nil), a.received...)
}

// Sent returns the control messages sent on the gateway socket so far.
func (a *Agent) Sent() []tunnel.Message {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]tunnel.Message(nil), a.sent...)
}

// WaitFor waits until a received message satisfies ok, or ctx ends.
func (a *Agent) WaitFor(ctx context.Context, ok func(tunnel.Message) bool) (tunnel.Message, error) {
	for {
		a.mu.Lock()
		for _, m := range a.received {
			if ok(m) {
				a.mu.Unlock()
				return m, nil
			}
		}
		ch := a.recvd
		a.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return tunnel.Message{}, ctx.Err()
		}
	}
}

// onText runs on the read goroutine, as the public agent's handler does.
func (a *Agent) onText(ctx context.Context, wg *sync.WaitGroup, b []byte) {
	m, err := tunnel.DecodeMessage(b)
	if err != nil {
		return
	}
	a.record(m)
	switch m.Type {
	case tunnel.TypePing:
		_ = a.send(envelope(tunnel.TypePong, m.RequestID, map[string]any{"timestamp": time.Now().UTC().Format(time.RFC3339Nano)}))
	case tunnel.TypeHeartbeatAck, tunnel.TypePong, tunnel.TypeGatewayHello, tunnel.TypeError, tunnel.TypeRegisterInProgress:
	case tunnel.TypeProxyRequest:
		var pr tunnel.ProxyRequest
		if m.RequestID == "" || m.DecodePayload(&pr) != nil {
			return
		}
		rctx, cancel := context.WithTimeout(ctx, a.cfg.K8sTimeout)
		var body io.Reader = bytes.NewReader(pr.Body)
		a.mu.Lock()
		a.cancels[m.RequestID] = cancel
		if pr.StreamBody {
			r, w := io.Pipe()
			a.uploads[m.RequestID] = w
			body = r
		}
		a.mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer cancel()
			a.proxy(rctx, m.RequestID, pr, body)
			a.mu.Lock()
			delete(a.cancels, m.RequestID)
			a.mu.Unlock()
		}()
	case tunnel.TypeProxyRequestChunk:
		var c tunnel.ProxyRequestChunk
		a.mu.Lock()
		w := a.uploads[m.RequestID]
		a.mu.Unlock()
		if w != nil && m.DecodePayload(&c) == nil {
			// The public agent writes into an unbuffered pipe inside its
			// read loop; a goroutine per chunk would reorder, so this
			// waits too, bounded by the request's context.
			_, _ = w.Write(c.Data)
		}
	case tunnel.TypeProxyRequestStreamEnd:
		a.mu.Lock()
		w := a.uploads[m.RequestID]
		delete(a.uploads, m.RequestID)
		a.mu.Unlock()
		if w != nil {
			_ = w.Close()
		}
	case tunnel.TypeProxyCancel:
		a.mu.Lock()
		if c := a.cancels[m.RequestID]; c != nil {
			c()
		}
		if w := a.uploads[m.RequestID]; w != nil {
			_ = w.CloseWithError(errors.New("request cancelled"))
			delete(a.uploads, m.RequestID)
		}
		a.mu.Unlock()
	default:
		a.mu.Lock()
		seen := a.fallbacks[m.Type]
		a.fallbacks[m.Type] = true
		a.mu.Unlock()
		if !seen {
			_ = a.send(envelope(tunnel.TypeProtocolFallback, "", map[string]any{"agent_version": "pipeops-k8-agent",
				"unknown_type": m.Type, "fallback_mode": "legacy_proxy", "protocol_version": "1.0",
				"timestamp": time.Now().UTC().Format(time.RFC3339), "original_request_id": m.RequestID}))
		}
	}
}

// proxy makes one proxy_request against the API with the agent's own
// credentials and answers it.
func (a *Agent) proxy(ctx context.Context, id string, pr tunnel.ProxyRequest, body io.Reader) {
	u := *a.cfg.KubeURL
	u.Path, u.RawQuery = pr.Path, pr.Query
	req, err := http.NewRequestWithContext(ctx, pr.Method, u.String(), body)
	if err != nil {
		_ = a.send(envelope(tunnel.TypeProxyError, id, map[string]any{"error": err.Error()}))
		return
	}
	req.Header = pr.Headers.Header()
	req.Header.Del("Authorization")
	if len(pr.Body) > 0 {
		req.ContentLength = int64(len(pr.Body))
	}
	resp, err := a.cfg.KubeTransport.RoundTrip(req)
	if err != nil {
		typ := tunnel.TypeProxyError
		if pr.ResponseStreaming {
			typ = tunnel.TypeProxyResponseAbort
		}
		_ = a.send(envelope(typ, id, map[string]any{"error": err.Error()}))
		return
	}
	defer resp.Body.Close()
	for _, h := range []string{"Connection", "Transfer-Encoding", "Keep-Alive", "Upgrade", "Trailer", "Te"} {
		resp.Header.Del(h)
	}
	if !pr.ResponseStreaming {
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			_ = a.send(envelope(tunnel.TypeProxyError, id, map[string]any{"error": err.Error()}))
			return
		}
		p := map[string]any{"status": resp.StatusCode, "headers": resp.Header}
		if len(b) >= 1024 && strings.Contains(resp.Header.Get("Content-Type"), "json") {
			var z bytes.Buffer
			zw := gzip.NewWriter(&z)
			_, _ = zw.Write(b)
			_ = zw.Close()
			p["body"], p["encoding"] = base64.StdEncoding.EncodeToString(z.Bytes()), "gzip"
		} else if len(b) > 0 {
			p["body"], p["encoding"] = base64.StdEncoding.EncodeToString(b), "base64"
		}
		_ = a.send(envelope(tunnel.TypeProxyResponse, id, p))
		return
	}
	if err := a.send(envelope(tunnel.TypeProxyResponseHeader, id, map[string]any{"status": resp.StatusCode, "headers": resp.Header})); err != nil {
		return
	}
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if a.send(envelope(tunnel.TypeProxyResponseChunk, id, map[string]any{
				"data": base64.StdEncoding.EncodeToString(buf[:n]), "encoding": "base64", "size": n})) != nil {
				return
			}
		}
		if errors.Is(err, io.EOF) {
			_ = a.send(envelope(tunnel.TypeProxyResponseEnd, id, map[string]any{}))
			return
		}
		if err != nil {
			_ = a.send(envelope(tunnel.TypeProxyResponseAbort, id, map[string]any{"error": err.Error()}))
			return
		}
	}
}
