// Package jsonproxy serves the JSON proxy path of the PipeOps protocol on the
// agent: hosted PipeOps reaches a cluster's Kubernetes API by sending the
// agent proxy_request messages (and ws_start for exec, attach and
// port-forward) over the gateway socket's TEXT frames, and expects the
// answers there too. Our own gateway reaches the API over yamux streams
// instead (package kubeapi); this package is what makes the agent usable
// from hosted PipeOps as well.
//
// Every request goes to the API server with the agent's OWN credentials
// (client-go's transport, which follows ServiceAccount token rotation); the
// caller's Authorization and Impersonate-* headers are dropped. The
// faults of the PipeOps agent's own implementation are avoided on purpose:
// no time limit unless the request asks for one (watches and `logs -f` run
// as long as they last), proxy_cancel really ends the HTTP call, the
// frames of one request are handled in order, and nothing a request does
// can block the socket's read loop.
package jsonproxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pipeops/tunnel/shared/ratelog"
	"github.com/pipeops/tunnel/shared/tunnel"
)

// Defaults for zero Config fields.
const (
	DefaultMaxInFlight    = 64
	DefaultMaxRequestBody = 16 << 20
	DefaultChunkSize      = 32 << 10
	// DefaultWebSocketQueue bounds, in bytes, the frames of one WebSocket
	// relay that the server sent and the API server has not taken yet.
	DefaultWebSocketQueue = 4 << 20
	// maxQueuedFrames bounds the count of queued frames of one relay, so
	// that empty frames cannot pile up under the byte bound.
	maxQueuedFrames = 1024
	// replyQueue bounds the answers Deliver produces itself (refusals,
	// tcp_tunnel_close), which one goroutine sends in order.
	replyQueue = 256
)

// maxPayload is the most body bytes one message can carry: its base64 (4
// bytes per 3) must fit in tunnel.MaxMessageSize with room left for the
// envelope, the status and the headers.
const maxPayload = (tunnel.MaxMessageSize - 64<<10) / 4 * 3

// Config configures a Handler. Transport, APIServer and Send are required.
type Config struct {
	// Transport makes the HTTP requests: client-go's transport from
	// rest.TransportFor, which carries the agent's own credentials. It is
	// used with RoundTrip, so redirects are not followed and nothing but
	// the request itself bounds a call.
	Transport http.RoundTripper
	// APIServer is the API server's base URL (https://host:port, with any
	// path prefix the rest config has).
	APIServer *url.URL
	// DialWebSocket opens WebSockets to the API server for ws_start, with
	// the agent's own credentials (see WebSocketDialerFor). Nil refuses
	// ws_start with proxy_error 501.
	DialWebSocket WebSocketDialer
	// Send sends one control message on the tunnel (a TEXT frame). It is
	// called from the Handler's goroutines, never from Deliver, and may
	// block while the socket is slow; an error means the tunnel is gone and
	// ends the request that sent it.
	Send func(tunnel.Message) error
	// MaxInFlight bounds the requests and WebSocket relays served at once
	// (default 64); one more is answered with proxy_error 429 at once.
	MaxInFlight int
	// MaxRequestBody bounds a request body sent in proxy_request_chunk
	// messages, in bytes (default 16 MiB); a body over it fails that
	// request with proxy_error 413. It is also the bound of what Deliver
	// queues for the request.
	MaxRequestBody int64
	// ChunkSize is the most bytes one proxy_response_chunk carries (default
	// 32 KiB); each read of the response body is sent as soon as it is read.
	ChunkSize int
	// WebSocketQueue bounds, in bytes, the frames queued for one relay
	// while the API server is slow to take them (default 4 MiB); overflow
	// closes that relay (see the package's WebSocket rules).
	WebSocketQueue int
	// Logger receives the handler's logs; nil discards them.
	Logger *slog.Logger
	// Metrics, when not nil, gets the handler's collectors.
	Metrics prometheus.Registerer
}

// Handler serves the JSON proxy messages of one agent. Deliver takes the
// messages from the tunnel's read loop; the Handler owns every goroutine it
// starts (one per request or relay, plus one that sends the answers
// Deliver decides itself) and Close waits for all of them.
type Handler struct {
	cfg   Config
	base  string // APIServer without a trailing slash, query or fragment
	log   *slog.Logger
	drops *ratelog.Limiter
	m     *metrics

	ctx    context.Context // ends at Close, with errClosed
	cancel context.CancelCauseFunc

	// replies carries the answers Deliver decides (refusals, 429s,
	// tcp_tunnel_close) to the goroutine that sends them, in order.
	replies chan tunnel.Message

	mu       sync.Mutex
	closed   bool
	inFlight int // requests and relays whose goroutine has not ended
	requests map[string]*request
	streams  map[string]*wsStream
	wg       sync.WaitGroup
}

// Causes with which a request or relay ends without anything more being
// sent for it: the server abandoned it, or nobody is there to read.
var (
	errCancelled = errors.New("cancelled by proxy_cancel")
	errReset     = errors.New("tunnel dropped")
	errClosed    = errors.New("handler closed")
	errSendGone  = errors.New("sending on the tunnel failed")
)

// silent reports whether a request or relay that ended with cause must
// send nothing more.
func silent(cause error) bool {
	return errors.Is(cause, errCancelled) || errors.Is(cause, errReset) ||
		errors.Is(cause, errClosed) || errors.Is(cause, errSendGone)
}

// failure is a cause of ending a request that is answered with proxy_error
// (or proxy_response_abort after the header) with status.
type failure struct {
	status  int
	outcome string // metrics label
	msg     string
}

func (f *failure) Error() string { return f.msg }

// New validates cfg and returns a Handler, whose reply goroutine runs until
// Close.
func New(cfg Config) (*Handler, error) {
	switch {
	case cfg.Transport == nil:
		return nil, errors.New("jsonproxy: Transport is required")
	case cfg.APIServer == nil || cfg.APIServer.Host == "":
		return nil, errors.New("jsonproxy: APIServer must be a URL with a host")
	case cfg.APIServer.Scheme != "https" && cfg.APIServer.Scheme != "http":
		return nil, fmt.Errorf("jsonproxy: APIServer scheme %q is not http or https", cfg.APIServer.Scheme)
	case cfg.Send == nil:
		return nil, errors.New("jsonproxy: Send is required")
	case cfg.MaxInFlight < 0, cfg.MaxRequestBody < 0, cfg.ChunkSize < 0, cfg.WebSocketQueue < 0:
		return nil, errors.New("jsonproxy: limits must not be negative")
	case cfg.ChunkSize > maxPayload:
		return nil, fmt.Errorf("jsonproxy: ChunkSize %d is over %d, more than one message carries", cfg.ChunkSize, maxPayload)
	}
	if cfg.MaxInFlight == 0 {
		cfg.MaxInFlight = DefaultMaxInFlight
	}
	if cfg.MaxRequestBody == 0 {
		cfg.MaxRequestBody = DefaultMaxRequestBody
	}
	if cfg.ChunkSize == 0 {
		cfg.ChunkSize = DefaultChunkSize
	}
	if cfg.WebSocketQueue == 0 {
		cfg.WebSocketQueue = DefaultWebSocketQueue
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(cfg.Metrics)
	if err != nil {
		return nil, err
	}
	base := *cfg.APIServer
	base.RawQuery, base.Fragment, base.RawFragment = "", "", ""
	h := &Handler{
		cfg:      cfg,
		base:     strings.TrimSuffix(base.String(), "/"),
		log:      log,
		drops:    ratelog.New(log, ratelog.Config{MaxKeys: 64}),
		m:        m,
		replies:  make(chan tunnel.Message, replyQueue),
		requests: map[string]*request{},
		streams:  map[string]*wsStream{},
	}
	h.ctx, h.cancel = context.WithCancelCause(context.Background())
	h.wg.Add(1)
	go h.sendReplies()
	return h, nil
}

// Deliver handles one control message from the server. It is meant to be
// called on the tunnel's read goroutine, for every control message in the
// order they arrived, and returns whether the message is one of the JSON
// proxy types (then it has been taken care of, even if only by dropping
// it). It never blocks: it decodes, checks, queues and starts goroutines.
func (h *Handler) Deliver(msg tunnel.Message) bool {
	switch msg.Type {
	case tunnel.TypeProxyRequest:
		h.startRequest(msg)
	case tunnel.TypeProxyRequestChunk:
		h.requestChunk(msg)
	case tunnel.TypeProxyRequestStreamEnd:
		h.requestEnd(msg)
	case tunnel.TypeProxyCancel:
		h.cancelByID(msg)
	case tunnel.TypeWSStart, tunnel.TypeWSStartAlias:
		h.startWebSocket(msg)
	case tunnel.TypeWSData, tunnel.TypeWSDataAlias:
		h.webSocketData(msg)
	case tunnel.TypeWSClose, tunnel.TypeWSCloseAlias:
		h.webSocketClose(msg)
	case tunnel.TypeTCPTunnelStart:
		h.refuseTCP(msg)
	case tunnel.TypeTCPTunnelData, tunnel.TypeTCPTunnelClose:
		h.drop("tcp_tunnel", msg, "dropping a raw TCP tunnel message: this agent serves Services over yamux streams only")
	case tunnel.TypeUDPTunnelData:
		h.drop("udp_tunnel", msg, "dropping a UDP tunnel message: this agent does not relay UDP over JSON")
	default:
		return false
	}
	return true
}

// InFlight returns the requests and relays being served.
func (h *Handler) InFlight() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.inFlight
}

// Reset cancels every request and relay in flight without answering them.
// Call it when the tunnel drops: the answers could reach nobody, and the
// server that asked has given them up. The Handler stays usable.
func (h *Handler) Reset() {
	h.mu.Lock()
	h.cancelAllLocked(errReset)
	h.mu.Unlock()
	for {
		select {
		case <-h.replies:
		default:
			return
		}
	}
}

// Close cancels everything in flight and waits for every goroutine of the
// Handler. Deliver drops all messages afterwards.
func (h *Handler) Close() {
	h.mu.Lock()
	h.closed = true
	h.cancelAllLocked(errClosed)
	h.mu.Unlock()
	h.cancel(errClosed)
	h.wg.Wait()
}

func (h *Handler) cancelAllLocked(cause error) {
	for id, r := range h.requests {
		r.cancel(cause)
		delete(h.requests, id)
	}
	for id, s := range h.streams {
		s.cancel(cause)
		delete(h.streams, id)
	}
}

// admit reserves a slot for a new request or relay, registered under id in
// set, and adds its goroutine to the wait group. It returns the status of a
// refusal instead: 0 when admitted, 503 when closed (nothing is sent then),
// 400 for an id already in flight, 429 over MaxInFlight.
func admit[T any](h *Handler, set map[string]T, id string, v T) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch _, dup := set[id]; {
	case h.closed:
		return http.StatusServiceUnavailable
	case dup:
		return http.StatusBadRequest
	case h.inFlight >= h.cfg.MaxInFlight:
		return http.StatusTooManyRequests
	}
	set[id] = v
	h.inFlight++
	h.wg.Add(1)
	return 0
}

// release frees the slot of the request or relay registered under id, and
// unregisters it if it still is (Reset may have done so already).
func release[T comparable](h *Handler, set map[string]T, id string, v T) {
	h.mu.Lock()
	if cur, ok := set[id]; ok && cur == v {
		delete(set, id)
	}
	h.inFlight--
	h.mu.Unlock()
}

// reply queues an answer that Deliver decided; when the queue is full the
// answer is dropped and counted (the server floods us with refusable
// messages faster than the tunnel takes the answers).
func (h *Handler) reply(typ, requestID string, payload any) {
	msg, err := tunnel.NewMessage(typ, payload)
	if err != nil {
		h.log.Error("jsonproxy: building an answer", "type", typ, "err", err)
		return
	}
	msg.RequestID = requestID
	select {
	case h.replies <- msg:
	default:
		h.drop("reply_queue_full", msg, "dropping an answer: too many queued")
	}
}

// refuse answers a request that will not be served with proxy_error.
func (h *Handler) refuse(id string, status int, outcome, text string) {
	h.m.request(outcome)
	h.reply(tunnel.TypeProxyError, id, tunnel.ProxyFailure{Error: text, RequestID: id, Status: status})
}

// sendReplies sends the answers Deliver queued, in order, until Close.
func (h *Handler) sendReplies() {
	defer h.wg.Done()
	for {
		select {
		case <-h.ctx.Done():
			return
		case msg := <-h.replies:
			if err := h.cfg.Send(msg); err != nil {
				h.drops.Log(h.ctx, slog.LevelDebug, "reply_send", "jsonproxy: answer not sent", "type", msg.Type, "err", err)
			}
		}
	}
}

// drop counts and logs (rate-limited, per reason) a message that is not
// acted on.
func (h *Handler) drop(reason string, msg tunnel.Message, text string) {
	h.m.dropped(reason)
	h.drops.Log(h.ctx, slog.LevelWarn, reason, "jsonproxy: "+text, "reason", reason, "message", msg.String())
}

// cancelByID handles proxy_cancel: the request (or relay) of that id ends
// at once, its HTTP call or WebSocket with it, and nothing more is sent for
// it. It does not wait behind the request's queued body chunks: it
// discards them anyway.
func (h *Handler) cancelByID(msg tunnel.Message) {
	if msg.RequestID == "" {
		h.drop("no_request_id", msg, "dropping proxy_cancel without request_id")
		return
	}
	h.mu.Lock()
	r, okR := h.requests[msg.RequestID]
	s, okS := h.streams[msg.RequestID]
	h.mu.Unlock()
	switch {
	case okR:
		r.cancel(errCancelled)
	case okS:
		s.cancel(errCancelled)
	default:
		// Usual: the request ended while the cancel was on its way.
		h.m.dropped("unknown_request")
	}
}

// refuseTCP answers tcp_tunnel_start: raw TCP over JSON messages is not
// served; the gateway reaches Services over yamux streams.
func (h *Handler) refuseTCP(msg tunnel.Message) {
	if msg.RequestID == "" {
		h.drop("no_request_id", msg, "dropping tcp_tunnel_start without request_id")
		return
	}
	h.drop("tcp_tunnel", msg, "refusing tcp_tunnel_start: raw TCP over JSON is not supported")
	h.reply(tunnel.TypeTCPTunnelClose, msg.RequestID, tunnel.TCPTunnelClose{
		Reason: "connection_failed",
		Error:  "raw TCP over JSON is not supported by this agent; the gateway reaches Services over yamux streams",
	})
}
