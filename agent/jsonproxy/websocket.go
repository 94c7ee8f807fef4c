package jsonproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"k8s.io/client-go/rest"

	"github.com/pipeops/tunnel/shared/tunnel"
)

// The WebSocket relay (ws_start, ws_data, ws_close and their
// proxy_websocket_* aliases): exec, attach and port-forward over the JSON
// path. The rules:
//
//   - ws_start opens a WebSocket to the API server at the start's path and
//     query, with the agent's own credentials; the start's Authorization
//     header is not used. Subprotocols are the start's protocol and its
//     Sec-WebSocket-Protocol values (the channel.k8s.io ones for exec,
//     attach and port-forward when it names none).
//   - Frames flow both ways, each as one data message whose data is the
//     frame type byte followed by the frame. The agent sends them as
//     proxy_websocket_data and proxy_websocket_close, the names PipeOps
//     agents use (receivers treat them and ws_data/ws_close alike).
//   - The server's frames of one relay are written in order by one
//     goroutine, from a queue that Deliver appends to without blocking.
//     The queue is bounded (Config.WebSocketQueue bytes, 1024 frames): a
//     server that sends faster than the API server takes loses that relay,
//     not others: the agent sends backpressure {reason:"channel_full"}
//     and proxy_websocket_close, and closes the WebSocket. Dropping frames
//     instead, as PipeOps agents do, would corrupt the stream silently.
//   - Either side closing ends the relay and the agent sends
//     proxy_websocket_close (a close from the server is thus echoed). A
//     dial failure answers proxy_error (with the API server's status when
//     it answered) and then proxy_websocket_close. proxy_cancel and Reset
//     end a relay without a word.
//   - A frame from the API server over what one message carries ends the
//     relay: frames are never split, as their boundaries carry meaning.

// WebSocketDialer opens a WebSocket to rawURL (ws or wss) with header,
// offering subprotocols. The response, when there is one, is returned even
// on failure so that its status can be reported.
type WebSocketDialer func(ctx context.Context, rawURL string, header http.Header, subprotocols []string) (*websocket.Conn, *http.Response, error)

// WebSocketDialerFor returns a WebSocketDialer that connects with rc's TLS
// settings and credentials. The credentials are taken from client-go's own
// wrappers on every dial, so a rotated ServiceAccount token is followed as
// the HTTP transport follows it.
func WebSocketDialerFor(rc *rest.Config) (WebSocketDialer, error) {
	tlsCfg, err := rest.TLSConfigFor(rc)
	if err != nil {
		return nil, fmt.Errorf("jsonproxy: TLS for WebSockets: %w", err)
	}
	auth, err := rest.HTTPWrappersForConfig(rc, headerCapture{})
	if err != nil {
		return nil, fmt.Errorf("jsonproxy: credentials for WebSockets: %w", err)
	}
	proxy := rc.Proxy
	if proxy == nil {
		proxy = http.ProxyFromEnvironment
	}
	return func(ctx context.Context, rawURL string, header http.Header, subprotocols []string) (*websocket.Conn, *http.Response, error) {
		u, err := url.Parse(rawURL)
		if err != nil {
			return nil, nil, err
		}
		hu := *u
		switch u.Scheme {
		case "wss":
			hu.Scheme = "https"
		case "ws":
			hu.Scheme = "http"
		default:
			return nil, nil, fmt.Errorf("jsonproxy: %q is not a WebSocket URL", u.Scheme)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, hu.String(), nil)
		if err != nil {
			return nil, nil, err
		}
		req.Header = header.Clone()
		resp, err := auth.RoundTrip(req)
		if err != nil {
			return nil, nil, fmt.Errorf("credentials: %w", err)
		}
		d := websocket.Dialer{
			Proxy:            proxy,
			TLSClientConfig:  tlsCfg,
			Subprotocols:     subprotocols,
			HandshakeTimeout: 30 * time.Second,
			ReadBufferSize:   33 << 10,
			WriteBufferSize:  33 << 10,
		}
		return d.DialContext(ctx, rawURL, resp.Request.Header)
	}, nil
}

// headerCapture is the innermost round tripper under client-go's
// credential wrappers: it answers at once with the request they built, whose
// headers the WebSocket dial then uses.
type headerCapture struct{}

func (headerCapture) RoundTrip(req *http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Body: http.NoBody, Request: req}, nil
}

// wsStream is one relay in flight. Its goroutine dials, writes the
// server's frames and sends the relay's last messages; a reader goroutine
// it owns sends the API server's frames.
type wsStream struct {
	id     string
	ctx    context.Context
	cancel context.CancelCauseFunc
	limit  int
	wake   chan struct{} // one slot: a frame arrived

	mu      sync.Mutex
	frames  []wsFrame
	bytes   int
	closing bool // a close is queued; later frames are dropped

	closedByServer atomic.Bool // the server's close was written
}

type wsFrame struct {
	typ  byte // a tunnel.WSFrame* type
	data []byte
}

var (
	errBackpressure   = errors.New("the server sent frames faster than the API server took them")
	errServerClosed   = errors.New("closed by the server")
	errStreamClosing  = errors.New("relay is closing")
	defaultSubprotos  = []string{"v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"}
	controlWriteLimit = 10 * time.Second
	// closeWait bounds the wait for the API server's answer to a close.
	closeWait = 5 * time.Second
)

// push queues a frame of the server: errStreamClosing after a close,
// errBackpressure over the bounds.
func (s *wsStream) push(f wsFrame) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return errStreamClosing
	}
	if len(s.frames) >= maxQueuedFrames || s.bytes+len(f.data) > s.limit {
		return errBackpressure
	}
	if f.typ == tunnel.WSFrameClose {
		s.closing = true
	}
	s.frames = append(s.frames, f)
	s.bytes += len(f.data)
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return nil
}

// next waits for the next queued frame; false once the relay ended.
func (s *wsStream) next() (wsFrame, bool) {
	for {
		s.mu.Lock()
		if len(s.frames) > 0 {
			f := s.frames[0]
			s.frames[0] = wsFrame{}
			s.frames = s.frames[1:]
			s.bytes -= len(f.data)
			s.mu.Unlock()
			return f, true
		}
		s.mu.Unlock()
		select {
		case <-s.wake:
		case <-s.ctx.Done():
			return wsFrame{}, false
		}
	}
}

func (h *Handler) startWebSocket(msg tunnel.Message) {
	var st tunnel.WSStart
	if len(msg.Payload) > 0 {
		if err := msg.DecodePayload(&st); err != nil && !errors.Is(err, tunnel.ErrMissingField) {
			st = tunnel.WSStart{}
			if msg.RequestID != "" {
				h.refuseWebSocket(msg.RequestID, http.StatusBadRequest, "bad_request", "malformed ws_start: "+err.Error())
				return
			}
		}
	}
	if st.StreamID == "" {
		st.StreamID = msg.RequestID
	}
	if st.StreamID == "" {
		h.drop("no_request_id", msg, "dropping ws_start without stream_id or request_id")
		return
	}
	id := st.StreamID
	if err := st.Validate(); err != nil {
		h.refuseWebSocket(id, http.StatusBadRequest, "bad_request", "invalid ws_start: "+err.Error())
		return
	}
	target, err := h.webSocketURL(st)
	if err != nil {
		h.refuseWebSocket(id, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	if h.cfg.DialWebSocket == nil {
		h.refuseWebSocket(id, http.StatusNotImplemented, "refused", "this agent does not relay WebSockets over JSON")
		return
	}
	s := &wsStream{id: id, limit: h.cfg.WebSocketQueue, wake: make(chan struct{}, 1)}
	s.ctx, s.cancel = context.WithCancelCause(h.ctx)
	switch admit(h, h.streams, id, s) {
	case 0:
	case http.StatusTooManyRequests:
		s.cancel(errClosed)
		h.refuseWebSocket(id, http.StatusTooManyRequests, "overloaded",
			fmt.Sprintf("too many requests in flight on this cluster (at most %d); retry later", h.cfg.MaxInFlight))
		return
	case http.StatusBadRequest:
		// The relay of that id stays; closing it would be wrong too.
		s.cancel(errClosed)
		h.m.webSocket("bad_request")
		h.reply(tunnel.TypeProxyError, id, tunnel.ProxyFailure{Error: fmt.Sprintf("stream id %q is already in flight", id), RequestID: id, Status: http.StatusBadRequest})
		return
	default:
		s.cancel(errClosed)
		return
	}
	h.m.inFlight("websocket", 1)
	go h.runWebSocket(s, target, st)
}

// refuseWebSocket answers a ws_start that is not served: proxy_error, then
// proxy_websocket_close, as for a failed dial.
func (h *Handler) refuseWebSocket(id string, status int, outcome, text string) {
	h.m.webSocket(outcome)
	h.reply(tunnel.TypeProxyError, id, tunnel.ProxyFailure{Error: text, RequestID: id, Status: status})
	h.reply(tunnel.TypeWSCloseAlias, id, tunnel.WSClose{StreamID: id, Reason: "refused"})
}

func (h *Handler) webSocketData(msg tunnel.Message) {
	var d tunnel.WSData
	if err := msg.DecodePayload(&d); err != nil {
		h.drop("bad_payload", msg, "dropping a malformed ws_data")
		return
	}
	if d.StreamID == "" {
		d.StreamID = msg.RequestID
	}
	s := h.lookupStream(d.StreamID, msg)
	if s == nil {
		return
	}
	if err := s.push(wsFrame{typ: d.FrameType, data: d.Payload}); err != nil {
		if errors.Is(err, errBackpressure) {
			s.cancel(errBackpressure)
			return
		}
		h.drop("after_close", msg, "dropping ws_data after the relay's close")
	}
}

func (h *Handler) webSocketClose(msg tunnel.Message) {
	var c tunnel.WSClose
	_ = msg.DecodePayload(&c) // only the id matters, and the envelope has one too
	id := c.ID()
	if id == "" {
		id = msg.RequestID
	}
	s := h.lookupStream(id, msg)
	if s == nil {
		return
	}
	// Queued behind the frames before it, so that they are written first.
	if err := s.push(wsFrame{typ: tunnel.WSFrameClose}); errors.Is(err, errBackpressure) {
		s.cancel(errServerClosed)
	}
}

func (h *Handler) lookupStream(id string, msg tunnel.Message) *wsStream {
	if id == "" {
		h.drop("no_request_id", msg, "dropping a WebSocket message without stream_id or request_id")
		return nil
	}
	h.mu.Lock()
	s := h.streams[id]
	h.mu.Unlock()
	if s == nil {
		h.drop("unknown_request", msg, "dropping a message for a WebSocket that is not open")
	}
	return s
}

// webSocketURL is the API server's WebSocket URL for st.
func (h *Handler) webSocketURL(st tunnel.WSStart) (string, error) {
	target := h.base + st.Path
	if st.Query != "" {
		target += "?" + st.Query
	}
	u, err := url.Parse(target)
	if err != nil {
		return "", fmt.Errorf("ws_start path: %w", err)
	}
	if u.Host != h.cfg.APIServer.Host {
		return "", fmt.Errorf("ws_start path %q leaves the API server", st.Path)
	}
	if u.Scheme == "https" {
		u.Scheme = "wss"
	} else {
		u.Scheme = "ws"
	}
	return u.String(), nil
}

// runWebSocket is a relay's goroutine.
func (h *Handler) runWebSocket(s *wsStream, target string, st tunnel.WSStart) {
	defer h.wg.Done()
	defer func() {
		s.cancel(errClosed)
		h.m.inFlight("websocket", -1) // before release, as for requests
		release(h, h.streams, s.id, s)
	}()
	h.m.webSocket(h.relay(s, target, st))
}

func (h *Handler) relay(s *wsStream, target string, st tunnel.WSStart) string {
	conn, resp, err := h.cfg.DialWebSocket(s.ctx, target, webSocketHeaders(st.Headers), subprotocols(st))
	if resp != nil && resp.Body != nil {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
	}
	if err != nil {
		if cause := context.Cause(s.ctx); cause != nil {
			return h.endRelay(s, cause)
		}
		status, text := http.StatusBadGateway, "failed to open the WebSocket to the Kubernetes API: "+err.Error()
		if resp != nil {
			text += fmt.Sprintf(" (status: %d)", resp.StatusCode)
			if resp.StatusCode >= 400 {
				status = resp.StatusCode
			}
		}
		h.sendFor(s.ctx, s.cancel, s.id, tunnel.TypeProxyError, tunnel.ProxyFailure{Error: text, RequestID: s.id, Status: status})
		h.sendFor(s.ctx, s.cancel, s.id, tunnel.TypeWSCloseAlias, tunnel.WSClose{StreamID: s.id, Reason: "dial_failed"})
		return "dial_failed"
	}
	// Ending the relay for any reason closes the WebSocket, which ends a
	// read or write in progress.
	stop := context.AfterFunc(s.ctx, func() { conn.Close() })
	defer stop()
	conn.SetReadLimit(maxPayload - 1)
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		h.readWebSocket(s, conn)
	}()
	h.writeWebSocket(s, conn, readerDone)
	conn.Close()
	<-readerDone
	return h.endRelay(s, context.Cause(s.ctx))
}

// endRelay sends the last messages of a relay that ended with cause.
func (h *Handler) endRelay(s *wsStream, cause error) string {
	switch {
	case silent(cause):
		return "cancelled"
	case errors.Is(cause, errBackpressure):
		h.sendFor(s.ctx, s.cancel, s.id, tunnel.TypeBackpressure, tunnel.Backpressure{RequestID: s.id, Reason: "channel_full"})
		h.sendFor(s.ctx, s.cancel, s.id, tunnel.TypeWSCloseAlias, tunnel.WSClose{StreamID: s.id, Reason: "backpressure"})
		return "backpressure"
	case errors.Is(cause, errServerClosed):
		h.sendFor(s.ctx, s.cancel, s.id, tunnel.TypeWSCloseAlias, tunnel.WSClose{StreamID: s.id, Reason: "closed_by_server"})
		return "ok"
	default:
		h.sendFor(s.ctx, s.cancel, s.id, tunnel.TypeWSCloseAlias, tunnel.WSClose{StreamID: s.id, Reason: cause.Error()})
		return "ok"
	}
}

// readWebSocket sends the API server's frames until it closes or the
// relay ends.
func (h *Handler) readWebSocket(s *wsStream, conn *websocket.Conn) {
	for {
		typ, data, err := conn.ReadMessage()
		if err != nil {
			if s.closedByServer.Load() {
				s.cancel(errServerClosed)
			}
			s.cancel(fmt.Errorf("closed by the API server: %w", err))
			return
		}
		if !h.sendFor(s.ctx, s.cancel, s.id, tunnel.TypeWSDataAlias, tunnel.WSData{StreamID: s.id, FrameType: byte(typ), Payload: data}) {
			return
		}
	}
}

// writeWebSocket writes the server's queued frames in order until the
// relay ends or a close is written. After a close it waits, up to
// closeWait, for the API server's close (the reader ending), so that the
// frames the API server sent before it still reach the server.
func (h *Handler) writeWebSocket(s *wsStream, conn *websocket.Conn, readerDone <-chan struct{}) {
	for {
		f, ok := s.next()
		if !ok {
			return
		}
		var err error
		switch f.typ {
		case tunnel.WSFrameText, tunnel.WSFrameBinary:
			err = conn.WriteMessage(int(f.typ), f.data)
		case tunnel.WSFramePing, tunnel.WSFramePong:
			err = conn.WriteControl(int(f.typ), f.data, time.Now().Add(controlWriteLimit))
		case tunnel.WSFrameClose:
			data := f.data
			if len(data) < 2 || len(data) > 125 {
				data = websocket.FormatCloseMessage(websocket.CloseNormalClosure, "")
			}
			s.closedByServer.Store(true) // the reader's end is then the close handshake
			if conn.WriteControl(websocket.CloseMessage, data, time.Now().Add(controlWriteLimit)) == nil {
				t := time.NewTimer(closeWait)
				select {
				case <-readerDone:
				case <-t.C:
				case <-s.ctx.Done():
				}
				t.Stop()
			}
			s.cancel(errServerClosed)
			return
		}
		if err != nil {
			s.cancel(fmt.Errorf("writing to the API server: %w", err))
			return
		}
	}
}

// webSocketHeaders are the start's headers as sent on the dial: without
// the caller's credentials and impersonation, and without what the dialer
// sets itself.
func webSocketHeaders(in tunnel.Headers) http.Header {
	h := requestHeaders(in)
	for _, name := range []string{"Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions", "Sec-WebSocket-Protocol"} {
		h.Del(name)
	}
	return h
}

// subprotocols are what the dial offers: the start's protocol and
// Sec-WebSocket-Protocol values, or the channel protocols for exec, attach
// and port-forward when it names none.
func subprotocols(st tunnel.WSStart) []string {
	var out []string
	add := func(p string) {
		p = strings.TrimSpace(p)
		if p == "" {
			return
		}
		for _, q := range out {
			if q == p {
				return
			}
		}
		out = append(out, p)
	}
	add(st.Protocol)
	for _, v := range st.Headers.Header().Values("Sec-WebSocket-Protocol") {
		for _, p := range strings.Split(v, ",") {
			add(p)
		}
	}
	if len(out) == 0 {
		for _, seg := range strings.Split(st.Path, "/") {
			if seg == "exec" || seg == "attach" || seg == "portforward" {
				return append([]string(nil), defaultSubprotos...)
			}
		}
	}
	return out
}
