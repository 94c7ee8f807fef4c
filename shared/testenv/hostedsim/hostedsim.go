// Package hostedsim is a stand-in for hosted PipeOps in tests: one loopback
// HTTP server that speaks the hosted side of the PipeOps agent protocol as
// the protocol reference describes it, so that an agent can be proven
// against it without the real service.
//
// It serves:
//
//   - the registration socket /api/v1/clusters/agent/ws (Bearer token),
//     answering register with register_success shaped as hosted PipeOps
//     sends it (workspace_id a number, tunnel_url, api_server) and the same
//     request_id, its gateway_ws_url pointing at this server;
//   - the gateway socket /ws: gateway_hello, then a yamux SERVER over the
//     BINARY frames and JSON control over the TEXT frames; heartbeat is
//     answered with heartbeat_ack and ping with pong;
//   - the routes API /api/v1/gateway/routes/{register,sync,unregister}
//     (200, bodies recorded).
//
// Everything the agent sends is recorded. A test drives the JSON proxy
// path with ProxyRequest, Cancel, WSStart, WSData, WSClose and
// TCPTunnelStart, and reads the agent's answers from a Replies per id, in
// the order the agent sent them.
package hostedsim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/hashicorp/yamux"

	"github.com/pipeops/tunnel/shared/tunnel"
	"github.com/pipeops/tunnel/shared/tunnel/pipeopsfixtures"
	"github.com/pipeops/tunnel/shared/wsconn"
)

// DefaultToken is the agent token a Server accepts when Options.Token is
// empty.
const DefaultToken = "hosted-sim-token"

// replyBuffer bounds the answers kept per id that no test has read yet. An
// agent that sends more than that for one id makes the Server record an
// error (see Err) rather than block its read loop.
const replyBuffer = 4096

// Options configures a Server. The zero value is usable.
type Options struct {
	// Token is the agent token accepted as a Bearer (default DefaultToken).
	Token string
	// ClusterID and ClusterUUID are what register_success assigns (default
	// the fixture's).
	ClusterID, ClusterUUID string
	// YamuxConfig is gateway_hello's yamux_config (default the fixture's,
	// hosted PipeOps' 256 KiB window).
	YamuxConfig *tunnel.YamuxConfig
	// Logger receives the server's diagnostics; nil discards them.
	Logger *slog.Logger
}

// Registration is one register message the agent sent.
type Registration struct {
	Message tunnel.Message
	// Fields is the payload as a JSON object, to check which keys were
	// sent and with which JSON types.
	Fields map[string]any
	// Register is the payload decoded.
	Register tunnel.Register
}

// RouteCall is one call of the routes API.
type RouteCall struct {
	// Path is the last segment: register, sync or unregister.
	Path string
	Body []byte
}

// Server is a running simulator. Its methods are safe for concurrent use.
type Server struct {
	// URL is the server's base URL, the agent's PIPEOPS_API_URL.
	URL string
	// Token is the agent token it accepts.
	Token string
	// ClusterID and ClusterUUID are what it assigns at registration.
	ClusterID, ClusterUUID string

	srv       *httptest.Server
	log       *slog.Logger
	hello     json.RawMessage // gateway_hello payload
	ack       json.RawMessage // heartbeat_ack payload
	regOK     map[string]any  // register_success payload template
	closed    chan struct{}
	base      context.Context // ends at Close
	stop      context.CancelFunc
	closeOnce sync.Once
	wg        sync.WaitGroup // socket handlers, which outlive the HTTP server's tracking once hijacked

	mu            sync.Mutex
	changed       chan struct{} // closed and replaced at every recorded event
	registrations []Registration
	gatewayURLs   []*url.URL // the URLs the gateway socket was opened with
	messages      []tunnel.Message
	routes        []RouteCall
	replies       map[string]*Replies
	agent         *agentConn
	err           error
}

// agentConn is one gateway socket.
type agentConn struct {
	conn *wsconn.Conn
	mux  *yamux.Session
	out  chan tunnel.Message // to the writer goroutine
}

// Start starts a Server on a loopback port; it is closed when t ends.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// New starts a Server on a loopback port; Close it when done.
func New(opts Options) (*Server, error) {
	s := &Server{Token: opts.Token, log: opts.Logger, closed: make(chan struct{}), changed: make(chan struct{}), replies: map[string]*Replies{}}
	if s.Token == "" {
		s.Token = DefaultToken
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	// The server's own messages keep the fixtures' shapes.
	var reg struct {
		Payload map[string]any `json:"payload"`
	}
	if err := json.Unmarshal(pipeopsfixtures.Load("register_success").JSON, &reg); err != nil {
		return nil, fmt.Errorf("hostedsim: register_success fixture: %w", err)
	}
	s.regOK = reg.Payload
	s.ClusterID, _ = reg.Payload["cluster_id"].(string)
	s.ClusterUUID, _ = reg.Payload["cluster_uuid"].(string)
	if opts.ClusterID != "" {
		s.ClusterID = opts.ClusterID
	}
	if opts.ClusterUUID != "" {
		s.ClusterUUID = opts.ClusterUUID
	}
	hello, err := tunnel.DecodeMessage(pipeopsfixtures.Load("gateway_hello").JSON)
	if err != nil {
		return nil, fmt.Errorf("hostedsim: gateway_hello fixture: %w", err)
	}
	s.hello = hello.Payload
	if opts.YamuxConfig != nil {
		s.hello, _ = json.Marshal(tunnel.GatewayHello{UseYamux: true, YamuxConfig: *opts.YamuxConfig})
	}
	ack, err := tunnel.DecodeMessage(pipeopsfixtures.Load("heartbeat_ack").JSON)
	if err != nil {
		return nil, fmt.Errorf("hostedsim: heartbeat_ack fixture: %w", err)
	}
	s.ack = ack.Payload

	s.base, s.stop = context.WithCancel(context.Background())
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+tunnel.RegistrationPath, s.serveRegistration)
	mux.HandleFunc("GET "+tunnel.GatewayPath, s.serveGateway)
	mux.HandleFunc("POST /api/v1/gateway/routes/{op}", s.serveRoutes)
	s.srv = httptest.NewUnstartedServer(mux)
	s.srv.Config.ErrorLog = slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)
	s.srv.Start() // httptest listens on 127.0.0.1 only
	s.URL = s.srv.URL
	return s, nil
}

// Close stops the server, closes the agent's sockets and waits for its
// goroutines.
func (s *Server) Close() {
	s.closeOnce.Do(s.close)
}

func (s *Server) close() {
	close(s.closed)
	s.stop()
	s.srv.CloseClientConnections()
	s.srv.Close()
	s.mu.Lock()
	if a := s.agent; a != nil {
		a.mux.Close()
		a.conn.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// Err returns the first protocol error the server saw (a malformed message
// from the agent, an overflowing reply buffer), or nil.
func (s *Server) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

func (s *Server) fail(err error) {
	s.mu.Lock()
	if s.err == nil {
		s.err = err
	}
	s.mu.Unlock()
	s.log.Warn("hostedsim: protocol error", "err", err)
}

// notifyLocked wakes whoever waits for an event. s.mu must be held.
func (s *Server) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// wait waits until ok holds (checked under s.mu) or ctx ends.
func (s *Server) wait(ctx context.Context, what string, ok func() bool) error {
	for {
		s.mu.Lock()
		done, changed := ok(), s.changed
		s.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("hostedsim: waiting for %s: %w", what, ctx.Err())
		}
	}
}

func (s *Server) authorized(r *http.Request) bool {
	return r.Header.Get("Authorization") == "Bearer "+s.Token
}

var upgrader = websocket.Upgrader{ReadBufferSize: 32 << 10, WriteBufferSize: 32 << 10}

// serveRegistration answers register messages until the agent closes the
// socket.
func (s *Server) serveRegistration(w http.ResponseWriter, r *http.Request) {
	if !s.authorized(r) {
		http.Error(w, "invalid token", http.StatusUnauthorized)
		return
	}
	ws, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	s.wg.Add(1)
	defer s.wg.Done()
	defer ws.Close()
	stop := context.AfterFunc(s.base, func() { ws.Close() })
	defer stop()
	ws.SetReadLimit(tunnel.MaxMessageSize)
	for {
		typ, b, err := ws.ReadMessage()
		if err != nil {
			return
		}
		if typ != websocket.TextMessage {
			s.fail(errors.New("binary frame on the registration socket"))
			continue
		}
		msg, err := tunnel.DecodeMessage(b)
		if err != nil {
			s.fail(fmt.Errorf("registration socket: %w", err))
			continue
		}
		if msg.Type != tunnel.TypeRegister {
			continue
		}
		var reg Registration
		reg.Message = msg
		if err := json.Unmarshal(msg.Payload, &reg.Fields); err != nil {
			s.fail(fmt.Errorf("register payload: %w", err))
		}
		if err := msg.DecodePayload(&reg.Register); err != nil {
			s.fail(fmt.Errorf("register payload: %w", err))
		}
		s.mu.Lock()
		s.registrations = append(s.registrations, reg)
		s.notifyLocked()
		s.mu.Unlock()

		payload := map[string]any{}
		for k, v := range s.regOK {
			payload[k] = v
		}
		payload["cluster_id"] = s.ClusterID
		payload["cluster_uuid"] = s.ClusterUUID
		payload["name"] = reg.Register.Name
		payload["gateway_ws_url"] = "ws" + strings.TrimPrefix(s.URL, "http") + tunnel.GatewayPath
		payload["tunnel_url"] = s.URL
		payload["api_server"] = s.URL + "/k8s/" + s.ClusterUUID
		reply, err := tunnel.NewMessage(tunnel.TypeRegisterSuccess, payload)
		if err != nil {
			s.fail(err)
			return
		}
		reply.RequestID = msg.RequestID
		out, _ := reply.Encode()
		if err := ws.WriteMessage(websocket.TextMessage, out); err != nil {
			return
		}
	}
}

// serveGateway runs one gateway socket: gateway_hello, yamux server, JSON
// control messages.
func (s *Server) serveGateway(w http.ResponseWriter, r *http.Request) {
	if !s.authorized(r) {
		http.Error(w, "invalid token", http.StatusUnauthorized)
		return
	}
	if r.URL.Query().Get("cluster_uuid") != s.ClusterUUID {
		http.Error(w, "unknown cluster", http.StatusNotFound)
		return
	}
	ws, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	s.wg.Add(1)
	defer s.wg.Done()
	u := *r.URL
	a := &agentConn{out: make(chan tunnel.Message, 1024)}
	a.conn = wsconn.New(ws, wsconn.Options{OnText: func(b []byte) { s.onText(a, b) }, Logger: s.log})
	defer a.conn.Close()

	hello := tunnel.Message{Type: tunnel.TypeGatewayHello, Payload: s.hello, Timestamp: time.Now().UTC()}
	b, err := hello.Encode()
	if err == nil {
		err = a.conn.WriteText(b)
	}
	if err != nil {
		return
	}
	cfg, err := tunnel.MuxConfig(helloConfig(s.hello), s.log)
	if err != nil {
		s.fail(err)
		return
	}
	a.mux, err = yamux.Server(tunnel.CoalesceFrames(a.conn), cfg)
	if err != nil {
		s.fail(err)
		return
	}
	defer a.mux.Close()

	s.mu.Lock()
	select {
	case <-s.closed:
		s.mu.Unlock()
		return
	default:
	}
	if old := s.agent; old != nil {
		old.mux.Close()
	}
	s.agent = a
	s.gatewayURLs = append(s.gatewayURLs, &u)
	s.notifyLocked()
	s.mu.Unlock()

	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		for {
			select {
			case msg := <-a.out:
				b, err := msg.Encode()
				if err == nil {
					err = a.conn.WriteText(b)
				}
				if err != nil {
					a.mux.Close()
					return
				}
			case <-a.mux.CloseChan():
				return
			}
		}
	}()
	// Only the gateway opens streams: refuse the agent's.
	for {
		st, err := a.mux.AcceptStream()
		if err != nil {
			break
		}
		st.Close()
	}
	a.mux.Close()
	a.conn.Close()
	<-writerDone
	s.mu.Lock()
	if s.agent == a {
		s.agent = nil
		s.notifyLocked()
	}
	s.mu.Unlock()
}

func helloConfig(payload json.RawMessage) tunnel.YamuxConfig {
	var h tunnel.GatewayHello
	_ = json.Unmarshal(payload, &h)
	return h.YamuxConfig
}

// onText runs on the socket's read goroutine: record, answer through the
// writer, route answers to their Replies. It never blocks.
func (s *Server) onText(a *agentConn, b []byte) {
	msg, err := tunnel.DecodeMessage(b)
	if err != nil {
		s.fail(fmt.Errorf("gateway socket: %w", err))
		return
	}
	var answer *tunnel.Message
	switch msg.Type {
	case tunnel.TypeHeartbeat:
		answer = &tunnel.Message{Type: tunnel.TypeHeartbeatAck, Payload: s.ack, Timestamp: time.Now().UTC()}
	case tunnel.TypePing:
		m, _ := tunnel.NewMessage(tunnel.TypePong, map[string]string{"timestamp": time.Now().UTC().Format(time.RFC3339Nano)})
		m.RequestID = msg.RequestID
		answer = &m
	}
	if answer != nil {
		select {
		case a.out <- *answer:
		default:
			s.fail(fmt.Errorf("outgoing queue full; %s not answered", msg.Type))
		}
	}
	id := msg.RequestID
	if id == "" {
		// Relay messages name their stream in the payload too.
		var p struct {
			StreamID string `json:"stream_id"`
		}
		_ = json.Unmarshal(msg.Payload, &p)
		id = p.StreamID
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.messages = append(s.messages, msg)
	if r := s.replies[id]; r != nil && id != "" {
		select {
		case r.ch <- msg:
		default:
			if s.err == nil {
				s.err = fmt.Errorf("hostedsim: more than %d unread answers for %q", replyBuffer, id)
			}
		}
	}
	s.notifyLocked()
}

// serveRoutes records a call of the routes API and answers 200.
func (s *Server) serveRoutes(w http.ResponseWriter, r *http.Request) {
	if !s.authorized(r) {
		http.Error(w, `{"error":"invalid token"}`, http.StatusUnauthorized)
		return
	}
	op := r.PathValue("op")
	if op != "register" && op != "sync" && op != "unregister" {
		http.NotFound(w, r)
		return
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, tunnel.MaxMessageSize))
	if err != nil {
		return
	}
	s.mu.Lock()
	s.routes = append(s.routes, RouteCall{Path: op, Body: b})
	s.notifyLocked()
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprint(w, `{"status":"ok"}`)
}

// Registrations returns the register messages received so far.
func (s *Server) Registrations() []Registration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Registration(nil), s.registrations...)
}

// GatewayURLs returns the URLs the gateway socket was opened with.
func (s *Server) GatewayURLs() []*url.URL {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*url.URL(nil), s.gatewayURLs...)
}

// RouteCalls returns the routes API calls received so far.
func (s *Server) RouteCalls() []RouteCall {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]RouteCall(nil), s.routes...)
}

// WaitConnected waits until an agent holds the gateway socket.
func (s *Server) WaitConnected(ctx context.Context) error {
	return s.wait(ctx, "the agent's gateway socket", func() bool { return s.agent != nil })
}

// WaitMessage waits for a message of type typ from the agent that arrived
// after the first skip ones, and returns it with its index.
func (s *Server) WaitMessage(ctx context.Context, typ string, skip int) (tunnel.Message, int, error) {
	var found tunnel.Message
	idx := -1
	err := s.wait(ctx, typ, func() bool {
		for i := skip; i < len(s.messages); i++ {
			if s.messages[i].Type == typ {
				found, idx = s.messages[i], i
				return true
			}
		}
		return false
	})
	return found, idx, err
}

// WaitHeartbeat waits for a heartbeat and returns it.
func (s *Server) WaitHeartbeat(ctx context.Context) (tunnel.Message, error) {
	m, _, err := s.WaitMessage(ctx, tunnel.TypeHeartbeat, 0)
	return m, err
}

// ErrNotConnected is returned by the senders when no agent holds the
// gateway socket.
var ErrNotConnected = errors.New("hostedsim: no agent connected")

// Send sends one control message to the agent.
func (s *Server) Send(msg tunnel.Message) error {
	if msg.Timestamp.IsZero() {
		msg.Timestamp = time.Now().UTC()
	}
	s.mu.Lock()
	a := s.agent
	s.mu.Unlock()
	if a == nil {
		return ErrNotConnected
	}
	select {
	case a.out <- msg:
		return nil
	case <-a.mux.CloseChan():
		return ErrNotConnected
	}
}

// SendPayload sends a message of type typ for request id with payload
// (JSON-encoded; a json.RawMessage is sent as it is).
func (s *Server) SendPayload(typ, id string, payload any) error {
	msg, err := tunnel.NewMessage(typ, payload)
	if err != nil {
		return err
	}
	msg.RequestID = id
	return s.Send(msg)
}

// Replies are the agent's answers for one request or stream id, in the
// order it sent them.
type Replies struct {
	ID string
	ch chan tunnel.Message
}

// C returns the channel the answers arrive on.
func (r *Replies) C() <-chan tunnel.Message { return r.ch }

// Next returns the next answer.
func (r *Replies) Next(ctx context.Context) (tunnel.Message, error) {
	select {
	case m := <-r.ch:
		return m, nil
	case <-ctx.Done():
		return tunnel.Message{}, fmt.Errorf("hostedsim: waiting for an answer for %q: %w", r.ID, ctx.Err())
	}
}

// Until collects answers up to and including the first for which last is
// true.
func (r *Replies) Until(ctx context.Context, last func(tunnel.Message) bool) ([]tunnel.Message, error) {
	var out []tunnel.Message
	for {
		m, err := r.Next(ctx)
		if err != nil {
			return out, err
		}
		out = append(out, m)
		if last(m) {
			return out, nil
		}
	}
}

// ProxyDone reports whether m ends a proxy_request's answer: a whole
// response, the end or abort of a streamed one, or proxy_error.
func ProxyDone(m tunnel.Message) bool {
	switch m.Type {
	case tunnel.TypeProxyResponse, tunnel.TypeProxyResponseEnd, tunnel.TypeProxyResponseAbort, tunnel.TypeProxyError:
		return true
	}
	return false
}

// RelayDone reports whether m ends a WebSocket relay or TCP tunnel.
func RelayDone(m tunnel.Message) bool {
	switch m.Type {
	case tunnel.TypeWSClose, tunnel.TypeWSCloseAlias, tunnel.TypeTCPTunnelClose:
		return true
	}
	return false
}

// Expect returns the Replies of id, creating it: answers for id that
// arrive from now on are kept there.
func (s *Server) Expect(id string) *Replies {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.replies[id]
	if r == nil {
		r = &Replies{ID: id, ch: make(chan tunnel.Message, replyBuffer)}
		s.replies[id] = r
	}
	return r
}

// ProxyRequest sends proxy_request id and returns where its answers
// arrive.
func (s *Server) ProxyRequest(id string, req tunnel.ProxyRequest) (*Replies, error) {
	r := s.Expect(id)
	return r, s.SendPayload(tunnel.TypeProxyRequest, id, req)
}

// RequestChunk sends part of a streamed request body under key ("data" or
// "chunk"), base64.
func (s *Server) RequestChunk(id, key string, data []byte) error {
	return s.SendPayload(tunnel.TypeProxyRequestChunk, id, map[string][]byte{key: data})
}

// RequestStreamEnd ends a streamed request body.
func (s *Server) RequestStreamEnd(id string) error {
	return s.SendPayload(tunnel.TypeProxyRequestStreamEnd, id, tunnel.Empty{})
}

// Cancel sends proxy_cancel for id.
func (s *Server) Cancel(id string) error {
	return s.SendPayload(tunnel.TypeProxyCancel, id, tunnel.Empty{})
}

// WSStart sends ws_start for st.StreamID and returns where the relay's
// messages arrive.
func (s *Server) WSStart(st tunnel.WSStart) (*Replies, error) {
	r := s.Expect(st.StreamID)
	return r, s.SendPayload(tunnel.TypeWSStart, st.StreamID, st)
}

// TCPTunnelStart sends tcp_tunnel_start for connection id.
func (s *Server) TCPTunnelStart(id string, st tunnel.TCPTunnelStart) (*Replies, error) {
	r := s.Expect(id)
	return r, s.SendPayload(tunnel.TypeTCPTunnelStart, id, st)
}
