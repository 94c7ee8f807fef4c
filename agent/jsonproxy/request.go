package jsonproxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"github.com/pipeops/tunnel/shared/tunnel"
)

// request is one proxy_request in flight. Its goroutine (runRequest) makes
// the HTTP call and sends every answer, in order; Deliver only feeds its
// body queue and cancels it.
type request struct {
	id     string
	ctx    context.Context
	cancel context.CancelCauseFunc
	body   *bodyQueue // nil unless the body arrives in chunks
}

// startRequest handles proxy_request: refuse what is not served, admit the
// rest and start its goroutine.
func (h *Handler) startRequest(msg tunnel.Message) {
	id := msg.RequestID
	if id == "" {
		h.drop("no_request_id", msg, "dropping proxy_request without request_id: there is nothing to answer it with")
		return
	}
	var pr tunnel.ProxyRequest
	if err := msg.DecodePayload(&pr); err != nil {
		h.refuse(id, http.StatusBadRequest, "bad_request", "malformed proxy_request: "+err.Error())
		return
	}
	switch {
	case pr.ServiceName != "":
		h.refuse(id, http.StatusNotImplemented, "refused",
			"service_name is not served over proxy_request by this agent: applications are reached over yamux streams, through routes")
		return
	case pr.BodyBinary:
		h.refuse(id, http.StatusNotImplemented, "refused",
			"body_binary is not supported: send the body in body, or in proxy_request_chunk messages with use_streaming")
		return
	case isUpgrade(pr):
		h.refuse(id, http.StatusBadRequest, "refused",
			"protocol upgrades are not served through proxy_request: open WebSockets with ws_start")
		return
	}
	r := &request{id: id}
	r.ctx, r.cancel = context.WithCancelCause(h.ctx)
	if pr.StreamBody {
		r.body = newBodyQueue(r.ctx, h.cfg.MaxRequestBody)
	}
	switch admit(h, h.requests, id, r) {
	case 0:
	case http.StatusTooManyRequests:
		r.cancel(errClosed)
		h.refuse(id, http.StatusTooManyRequests, "overloaded",
			fmt.Sprintf("too many requests in flight on this cluster (at most %d); retry later", h.cfg.MaxInFlight))
		return
	case http.StatusBadRequest:
		r.cancel(errClosed)
		h.refuse(id, http.StatusBadRequest, "bad_request", fmt.Sprintf("request id %q is already in flight", id))
		return
	default:
		r.cancel(errClosed)
		return
	}
	h.m.inFlight("request", 1)
	go h.runRequest(r, pr)
}

func (h *Handler) requestChunk(msg tunnel.Message) {
	r := h.lookupRequest(msg)
	if r == nil {
		return
	}
	if r.body == nil {
		h.drop("unexpected_chunk", msg, "dropping proxy_request_chunk of a request whose body is not streamed")
		return
	}
	var c tunnel.ProxyRequestChunk
	if err := msg.DecodePayload(&c); err != nil {
		// A lost chunk would corrupt the body: the request fails.
		r.cancel(&failure{status: http.StatusBadRequest, outcome: "bad_request", msg: "malformed proxy_request_chunk: " + err.Error()})
		return
	}
	if err := r.body.push(c.Data); err != nil {
		if errors.Is(err, errBodyEnded) {
			h.drop("unexpected_chunk", msg, "dropping proxy_request_chunk after proxy_request_stream_end")
			return
		}
		r.cancel(err)
	}
}

func (h *Handler) requestEnd(msg tunnel.Message) {
	r := h.lookupRequest(msg)
	if r == nil {
		return
	}
	if r.body == nil {
		h.drop("unexpected_chunk", msg, "dropping proxy_request_stream_end of a request whose body is not streamed")
		return
	}
	r.body.end()
}

// lookupRequest returns the request in flight that msg is for, or nil
// (counted) when there is none.
func (h *Handler) lookupRequest(msg tunnel.Message) *request {
	if msg.RequestID == "" {
		h.drop("no_request_id", msg, "dropping a request message without request_id")
		return nil
	}
	h.mu.Lock()
	r := h.requests[msg.RequestID]
	h.mu.Unlock()
	if r == nil {
		h.drop("unknown_request", msg, "dropping a message for a request that is not in flight")
	}
	return r
}

// isUpgrade reports whether pr asks for a protocol upgrade (WebSocket or
// SPDY), which the HTTP path cannot carry.
func isUpgrade(pr tunnel.ProxyRequest) bool {
	if pr.WebSocket || pr.Protocol != "" {
		return true
	}
	hdr := pr.Headers.Header()
	if hdr.Get("Upgrade") != "" || hdr.Get("Sec-WebSocket-Key") != "" || hdr.Get("Sec-WebSocket-Version") != "" ||
		hdr.Get("Sec-WebSocket-Protocol") != "" {
		return true
	}
	for _, v := range hdr.Values("Connection") {
		for _, tok := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(tok), "upgrade") {
				return true
			}
		}
	}
	return false
}

// runRequest is a request's goroutine: it makes the call and sends every
// answer of the request, so they go out in order.
func (h *Handler) runRequest(r *request, pr tunnel.ProxyRequest) {
	defer h.wg.Done()
	defer func() {
		r.cancel(errClosed) // releases the context; the cause of an earlier cancel stays
		// The gauge first: once InFlight says a request is gone, its
		// metric says so too.
		h.m.inFlight("request", -1)
		release(h, h.requests, r.id, r)
	}()
	h.m.request(h.serve(r, pr))
}

// serve makes the HTTP call of r and answers it; it returns the outcome.
func (h *Handler) serve(r *request, pr tunnel.ProxyRequest) string {
	// No time limit of our own: only the request's timeout or deadline.
	ctx := r.ctx
	if !pr.Deadline.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, pr.Deadline)
		defer cancel()
	}
	if pr.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, pr.Timeout)
		defer cancel()
	}
	req, err := h.newHTTPRequest(ctx, r, pr)
	if err != nil {
		return h.fail(r, &failure{status: http.StatusBadRequest, outcome: "bad_request", msg: err.Error()}, false)
	}
	resp, err := h.cfg.Transport.RoundTrip(req)
	if err != nil {
		return h.fail(r, h.causeOf(r, ctx, err, "the agent could not reach the Kubernetes API server"), false)
	}
	defer resp.Body.Close()
	header := responseHeaders(resp.Header)
	if pr.ResponseStreaming {
		return h.stream(r, ctx, resp, header)
	}
	return h.buffer(r, ctx, resp, header)
}

// causeOf maps the error of a call to what ends the request: the cause it
// was cancelled with, a passed deadline (504), or a failure of the API
// server's connection (502).
func (h *Handler) causeOf(r *request, ctx context.Context, err error, what string) error {
	if cause := context.Cause(r.ctx); cause != nil {
		return cause
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return &failure{status: http.StatusGatewayTimeout, outcome: "deadline", msg: "the request's timeout or deadline passed: " + err.Error()}
	}
	return &failure{status: http.StatusBadGateway, outcome: "upstream_error", msg: what + ": " + err.Error()}
}

// fail answers a request that ended with cause: nothing for a silent cause,
// proxy_error before any answer went out, proxy_response_abort after a
// streamed header.
func (h *Handler) fail(r *request, cause error, afterHeader bool) string {
	if silent(cause) {
		return "cancelled"
	}
	var f *failure
	if !errors.As(cause, &f) {
		f = &failure{status: http.StatusBadGateway, outcome: "upstream_error", msg: cause.Error()}
	}
	if afterHeader {
		h.send(r, tunnel.TypeProxyResponseAbort, tunnel.ProxyFailure{Error: f.msg, RequestID: r.id, Status: f.status})
	} else {
		h.send(r, tunnel.TypeProxyError, tunnel.ProxyFailure{Error: f.msg, RequestID: r.id, Status: f.status})
	}
	return f.outcome
}

// send sends one answer of r; see sendFor.
func (h *Handler) send(r *request, typ string, payload any) bool {
	return h.sendFor(r.ctx, r.cancel, r.id, typ, payload)
}

// sendFor sends one message of the request or relay id, whose context and
// cancel are ctx and cancel, unless it was ended silently meanwhile. A send
// that fails ends it: the tunnel is gone.
func (h *Handler) sendFor(ctx context.Context, cancel context.CancelCauseFunc, id, typ string, payload any) bool {
	if silent(context.Cause(ctx)) {
		return false
	}
	msg, err := tunnel.NewMessage(typ, payload)
	if err != nil {
		h.log.Error("jsonproxy: building an answer", "type", typ, "request_id", id, "err", err)
		return false
	}
	msg.RequestID = id
	if err := h.cfg.Send(msg); err != nil {
		cancel(errSendGone)
		h.drops.Log(ctx, slog.LevelDebug, "send_failed", "jsonproxy: message not sent; request ended", "type", typ, "err", err)
		return false
	}
	return true
}

// stream answers with proxy_response_header, a proxy_response_chunk per
// read of the body (sent at once, so each watch event reaches the server
// as it happens) and proxy_response_end.
func (h *Handler) stream(r *request, ctx context.Context, resp *http.Response, header tunnel.Headers) string {
	if !h.send(r, tunnel.TypeProxyResponseHeader, tunnel.ProxyResponseHeader{Status: resp.StatusCode, Headers: header}) {
		return "cancelled"
	}
	buf := make([]byte, h.cfg.ChunkSize)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 && !h.send(r, tunnel.TypeProxyResponseChunk, tunnel.ProxyResponseChunk{Data: buf[:n]}) {
			return "cancelled"
		}
		switch {
		case err == io.EOF:
			if !h.send(r, tunnel.TypeProxyResponseEnd, tunnel.Empty{}) {
				return "cancelled"
			}
			return "ok"
		case err != nil:
			return h.fail(r, h.causeOf(r, ctx, err, "reading the API server's answer"), true)
		}
	}
}

// buffer answers with one proxy_response, or with proxy_error when the body
// would not fit in one message.
func (h *Handler) buffer(r *request, ctx context.Context, resp *http.Response, header tunnel.Headers) string {
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxPayload+1))
	if err != nil {
		return h.fail(r, h.causeOf(r, ctx, err, "reading the API server's answer"), false)
	}
	tooLarge := &failure{status: http.StatusBadGateway, outcome: "response_too_large", msg: fmt.Sprintf(
		"the answer is larger than one proxy_response can carry (%d bytes); send the request with supports_response_streaming", maxPayload)}
	if len(body) > maxPayload {
		return h.fail(r, tooLarge, false)
	}
	msg, err := tunnel.NewMessage(tunnel.TypeProxyResponse, tunnel.ProxyResponse{Status: resp.StatusCode, Headers: header, Body: body})
	if err == nil {
		msg.RequestID = r.id
		_, err = msg.Encode()
	}
	if errors.Is(err, tunnel.ErrMessageTooLarge) {
		return h.fail(r, tooLarge, false) // the headers are what made it too large
	}
	if err != nil {
		return h.fail(r, &failure{status: http.StatusBadGateway, outcome: "upstream_error", msg: "encoding the answer: " + err.Error()}, false)
	}
	if silent(context.Cause(r.ctx)) {
		return "cancelled"
	}
	if err := h.cfg.Send(msg); err != nil {
		r.cancel(errSendGone)
		return "cancelled"
	}
	return "ok"
}

// newHTTPRequest builds the call to the API server: its path and query
// under APIServer, the caller's headers without credentials, impersonation
// and hop-by-hop headers, and the body (inline, chunked, or both).
func (h *Handler) newHTTPRequest(ctx context.Context, r *request, pr tunnel.ProxyRequest) (*http.Request, error) {
	target := h.base + pr.Path
	if pr.Query != "" {
		target += "?" + pr.Query
	}
	u, err := url.Parse(target)
	if err != nil {
		return nil, fmt.Errorf("proxy_request path: %w", err)
	}
	if u.Host != h.cfg.APIServer.Host {
		return nil, fmt.Errorf("proxy_request path %q leaves the API server", pr.Path)
	}
	var body io.Reader
	switch {
	case r.body != nil:
		body = readCloser{io.MultiReader(bytes.NewReader(pr.Body), r.body), r.body}
	case len(pr.Body) > 0:
		body = bytes.NewReader(pr.Body)
	}
	req, err := http.NewRequestWithContext(ctx, pr.Method, u.String(), body)
	if err != nil {
		return nil, fmt.Errorf("proxy_request: %w", err)
	}
	req.Header = requestHeaders(pr.Headers)
	return req, nil
}

type readCloser struct {
	io.Reader
	io.Closer
}

// hopByHop are the headers of one connection, never forwarded.
var hopByHop = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// stripHopByHop removes hop-by-hop headers, including those Connection
// names.
func stripHopByHop(h http.Header) {
	for _, v := range h.Values("Connection") {
		for _, name := range strings.Split(v, ",") {
			if name = strings.TrimSpace(name); name != "" {
				h.Del(name)
			}
		}
	}
	for _, name := range hopByHop {
		h.Del(name)
	}
}

// requestHeaders are the headers sent to the API server: the caller's,
// without its credentials (the agent's own are added by the transport),
// impersonation, Host, Content-Length (set from the body) and hop-by-hop
// headers.
func requestHeaders(in tunnel.Headers) http.Header {
	h := in.Header()
	stripHopByHop(h)
	for name := range h {
		if strings.HasPrefix(strings.ToLower(name), "impersonate-") {
			delete(h, name)
		}
	}
	h.Del("Authorization")
	h.Del("Host")
	h.Del("Content-Length")
	return h
}

// responseHeaders are the API server's headers as answered, without
// hop-by-hop ones.
func responseHeaders(in http.Header) tunnel.Headers {
	h := in.Clone()
	stripHopByHop(h)
	return tunnel.Headers(h)
}

// bodyQueue is the ordered queue of a request body sent in chunks: Deliver
// appends without blocking, the HTTP call reads. Its bound is the body
// limit: the bytes received in all, not only those waiting.
type bodyQueue struct {
	ctx   context.Context // the request's; Read gives up when it ends
	limit int64
	wake  chan struct{} // one slot: data or the end arrived

	mu       sync.Mutex
	chunks   [][]byte
	received int64
	ended    bool
	closed   bool // the reader is done; later chunks are dropped
}

// errBodyEnded is push's error for a chunk after the end or after the
// reader closed.
var errBodyEnded = errors.New("request body already ended")

func newBodyQueue(ctx context.Context, limit int64) *bodyQueue {
	return &bodyQueue{ctx: ctx, limit: limit, wake: make(chan struct{}, 1)}
}

// push appends a chunk. Over the limit it returns the failure that ends
// the request.
func (q *bodyQueue) push(b []byte) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.ended || q.closed {
		return errBodyEnded
	}
	q.received += int64(len(b))
	if q.received > q.limit {
		q.chunks = nil
		return &failure{status: http.StatusRequestEntityTooLarge, outcome: "body_too_large",
			msg: fmt.Sprintf("the request body is over the agent's limit of %d bytes", q.limit)}
	}
	if len(b) > 0 {
		q.chunks = append(q.chunks, b)
		q.signal()
	}
	return nil
}

// end marks the end of the body: Read returns io.EOF once the queue is
// empty.
func (q *bodyQueue) end() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.ended = true
	q.signal()
}

func (q *bodyQueue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// Read returns queued bytes in order, waiting for them; io.EOF after the
// end, the request's cause once it is cancelled.
func (q *bodyQueue) Read(p []byte) (int, error) {
	for {
		q.mu.Lock()
		if len(q.chunks) > 0 {
			n := copy(p, q.chunks[0])
			if n == len(q.chunks[0]) {
				q.chunks[0] = nil
				q.chunks = q.chunks[1:]
			} else {
				q.chunks[0] = q.chunks[0][n:]
			}
			q.mu.Unlock()
			return n, nil
		}
		ended := q.ended
		q.mu.Unlock()
		if ended {
			return 0, io.EOF
		}
		select {
		case <-q.wake:
		case <-q.ctx.Done():
			return 0, context.Cause(q.ctx)
		}
	}
}

// Close drops what is queued; later chunks are dropped as they come.
func (q *bodyQueue) Close() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	q.chunks = nil
	return nil
}
