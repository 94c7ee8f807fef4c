package session

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/pipeops/tunnel/shared/tunnel"
)

// The JSON proxy path: for an agent that does not serve HTTP on Kubernetes
// API streams (a PipeOps agent, which relays those streams as raw TCP to the
// API server's TLS port and has its credentials only on this path), the
// gateway sends each request as a proxy_request control message and reads
// the answer from proxy_response, or from proxy_response_header, chunks and
// proxy_response_end. See tunnel/spec.md §5.
//
// Flow control: there is none in the protocol, so each request's unread
// answer is bounded (Config.MaxProxyBuffer); a caller that reads slower than
// the agent sends loses its request (the agent is told proxy_cancel), never
// the gateway's memory.

// Limits of the JSON proxy path.
const (
	// inlineBodyMax is the largest request body sent inside proxy_request;
	// a larger one follows in proxy_request_chunk messages. Base64 makes it
	// a third larger, well under tunnel.MaxMessageSize.
	inlineBodyMax = 256 << 10
	// requestChunkSize is the body carried by one proxy_request_chunk.
	requestChunkSize = 256 << 10
	// DefaultMaxProxyBuffer is Config.MaxProxyBuffer's default.
	DefaultMaxProxyBuffer = 8 << 20
)

// Errors of the JSON proxy path.
var (
	// ErrProxyProtocol means the agent answered a proxy_request with
	// messages out of order or malformed.
	ErrProxyProtocol = errors.New("agent broke the proxy protocol")
	// ErrProxySlowReader means the caller read the answer slower than the
	// agent sent it, past the buffer bound.
	ErrProxySlowReader = errors.New("answer buffer full: the caller reads too slowly")
)

// isProxyReply reports whether typ is an answer to a proxy_request, routed
// to the request waiting for it.
func isProxyReply(typ string) bool {
	switch typ {
	case tunnel.TypeProxyResponse, tunnel.TypeProxyResponseHeader, tunnel.TypeProxyResponseChunk,
		tunnel.TypeProxyResponseEnd, tunnel.TypeProxyResponseAbort, tunnel.TypeProxyError:
		return true
	}
	return false
}

// proxyCall is one request in flight on the JSON path. The session's read
// goroutine appends its answers (push, which never blocks); the caller's
// goroutine takes them in order (next).
type proxyCall struct {
	id     string
	notify chan struct{} // capacity 1: something was pushed

	mu       sync.Mutex
	frames   []tunnel.Message
	buffered int  // payload bytes in frames
	overflow bool // buffered passed the bound; the call is lost
}

func (c *proxyCall) push(msg tunnel.Message, limit int) {
	c.mu.Lock()
	if !c.overflow {
		c.frames = append(c.frames, msg)
		c.buffered += len(msg.Payload)
		if c.buffered > limit {
			c.overflow, c.frames = true, nil
		}
	}
	c.mu.Unlock()
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

// take returns the next answer, or ok false when there is none yet.
func (c *proxyCall) take() (msg tunnel.Message, ok bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.overflow {
		return msg, false, ErrProxySlowReader
	}
	if len(c.frames) == 0 {
		return msg, false, nil
	}
	msg = c.frames[0]
	c.frames[0] = tunnel.Message{}
	c.frames = c.frames[1:]
	c.buffered -= len(msg.Payload)
	return msg, true, nil
}

// next waits for the call's next answer until ctx or the session ends.
func (s *Session) next(ctx context.Context, c *proxyCall) (tunnel.Message, error) {
	for {
		msg, ok, err := c.take()
		if err != nil || ok {
			return msg, err
		}
		select {
		case <-c.notify:
		case <-ctx.Done():
			return msg, context.Cause(ctx)
		case <-s.ctx.Done():
			return msg, fmt.Errorf("cluster %s: %w", s.Cluster, ErrAgentOffline)
		}
	}
}

// deliverReply hands an answer to the call it names. It runs on the read
// goroutine and never blocks. Answers to calls that have ended (a cancelled
// watch keeps sending until the agent hears of it) are dropped and counted,
// not held against the agent.
func (s *Session) deliverReply(msg tunnel.Message) {
	s.callsMu.Lock()
	c := s.calls[msg.RequestID]
	s.callsMu.Unlock()
	if c == nil {
		s.reg.metrics.controlDropped.WithLabelValues("unknown_request").Inc()
		return
	}
	c.push(msg, s.reg.cfg.MaxProxyBuffer)
}

func (s *Session) addCall() (*proxyCall, error) {
	var b [8]byte
	_, _ = rand.Read(b[:])
	c := &proxyCall{id: "gw-" + hex.EncodeToString(b[:]), notify: make(chan struct{}, 1)}
	s.callsMu.Lock()
	defer s.callsMu.Unlock()
	if s.calls == nil {
		return nil, fmt.Errorf("cluster %s: %w", s.Cluster, ErrAgentOffline)
	}
	s.calls[c.id] = c
	return c, nil
}

// endCall forgets c; when the agent may still be working on it, it is told
// to stop.
func (s *Session) endCall(c *proxyCall, cancel bool) {
	s.callsMu.Lock()
	_, live := s.calls[c.id]
	delete(s.calls, c.id)
	s.callsMu.Unlock()
	if live && cancel {
		if err := s.Send(tunnel.TypeProxyCancel, tunnel.Empty{}, c.id); err != nil {
			s.log.Debug("send proxy_cancel", "err", err)
		}
	}
}

// hopHeaders are not passed on by a proxy (RFC 9110 §7.6.1).
var hopHeaders = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

func withoutHop(h http.Header) http.Header {
	h = h.Clone()
	for _, f := range h.Values("Connection") {
		for _, name := range strings.Split(f, ",") {
			h.Del(strings.TrimSpace(name))
		}
	}
	for _, name := range hopHeaders {
		h.Del(name)
	}
	return h
}

// ProxyHTTP sends req to the agent on the JSON proxy path and returns the
// answer; it is an http.RoundTripper's work for one session. The agent makes
// the request to its cluster's Kubernetes API with its own credentials, so
// req must carry none (the caller strips them). The answer body streams as
// chunks arrive, with no time limit: the request ends when req's context
// does, its body is closed, or the session ends, and the agent is told
// proxy_cancel if it was still answering. Upgrades are not carried.
func (s *Session) ProxyHTTP(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	c, err := s.addCall()
	if err != nil {
		return nil, err
	}
	done := false
	defer func() {
		if !done {
			s.endCall(c, true)
		}
	}()
	pr := tunnel.ProxyRequest{
		Method: req.Method, Path: req.URL.EscapedPath(), Query: req.URL.RawQuery,
		Headers: tunnel.Headers(withoutHop(req.Header)), ResponseStreaming: true,
	}
	if pr.Path == "" {
		pr.Path = "/"
	}
	var rest io.Reader
	if req.Body != nil && req.Body != http.NoBody {
		head, err := io.ReadAll(io.LimitReader(req.Body, inlineBodyMax+1))
		if err != nil {
			return nil, fmt.Errorf("read request body: %w", err)
		}
		if len(head) <= inlineBodyMax {
			pr.Body = head
		} else {
			pr.StreamBody = true
			rest = io.MultiReader(bytes.NewReader(head), req.Body)
		}
	}
	if err := s.Send(tunnel.TypeProxyRequest, pr, c.id); err != nil {
		return nil, fmt.Errorf("send proxy_request to cluster %s: %w", s.Cluster, err)
	}
	if rest != nil {
		if err := s.sendBody(c.id, rest); err != nil {
			return nil, err
		}
	}
	msg, err := s.next(ctx, c)
	if err != nil {
		return nil, fmt.Errorf("cluster %s: waiting for the answer: %w", s.Cluster, err)
	}
	switch msg.Type {
	case tunnel.TypeProxyResponse:
		var p tunnel.ProxyResponse
		if err := msg.DecodePayload(&p); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrProxyProtocol, err)
		}
		s.endCall(c, false)
		done = true
		h := withoutHop(p.Headers.Header())
		h.Set("Content-Length", strconv.Itoa(len(p.Body)))
		return &http.Response{StatusCode: p.Status, Status: statusText(p.Status), Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header: h, Body: io.NopCloser(bytes.NewReader(p.Body)), ContentLength: int64(len(p.Body)), Request: req}, nil
	case tunnel.TypeProxyResponseHeader:
		var p tunnel.ProxyResponseHeader
		if err := msg.DecodePayload(&p); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrProxyProtocol, err)
		}
		done = true // the body owns the call from here
		h := withoutHop(p.Headers.Header())
		h.Del("Content-Length") // the body is re-chunked; an abort must not look complete
		return &http.Response{StatusCode: p.Status, Status: statusText(p.Status), Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header: h, Body: &proxyBody{s: s, c: c, ctx: ctx}, ContentLength: -1, Request: req}, nil
	case tunnel.TypeProxyError, tunnel.TypeProxyResponseAbort:
		var p tunnel.ProxyFailure
		_ = msg.DecodePayload(&p)
		s.endCall(c, false)
		done = true
		return failureResponse(req, p), nil
	default:
		return nil, fmt.Errorf("%w: %s before any header", ErrProxyProtocol, msg.Type)
	}
}

// sendBody sends a request body in proxy_request_chunk messages, then
// proxy_request_stream_end.
func (s *Session) sendBody(id string, body io.Reader) error {
	buf := make([]byte, requestChunkSize)
	for {
		n, err := io.ReadFull(body, buf)
		if n > 0 {
			if serr := s.Send(tunnel.TypeProxyRequestChunk, tunnel.ProxyRequestChunk{Data: buf[:n]}, id); serr != nil {
				return fmt.Errorf("send request body to cluster %s: %w", s.Cluster, serr)
			}
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("read request body: %w", err)
		}
	}
	if err := s.Send(tunnel.TypeProxyRequestStreamEnd, tunnel.Empty{}, id); err != nil {
		return fmt.Errorf("send request body to cluster %s: %w", s.Cluster, err)
	}
	return nil
}

// failureResponse is the answer to a request the agent could not make: a
// Kubernetes Status, so kubectl shows the agent's reason.
func failureResponse(req *http.Request, p tunnel.ProxyFailure) *http.Response {
	code := p.Status
	if code < 400 || code > 599 {
		code = http.StatusBadGateway
	}
	msg := p.Error
	if msg == "" {
		msg = "the agent could not make the request"
	}
	if len(msg) > 512 {
		msg = msg[:512]
	}
	body, _ := json.Marshal(map[string]any{
		"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
		"reason": strings.ReplaceAll(http.StatusText(code), " ", ""), "message": "agent: " + msg,
	})
	return &http.Response{StatusCode: code, Status: statusText(code), Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{"Content-Type": {"application/json"}, "Content-Length": {strconv.Itoa(len(body))}},
		Body:   io.NopCloser(bytes.NewReader(body)), ContentLength: int64(len(body)), Request: req}
}

func statusText(code int) string { return strconv.Itoa(code) + " " + http.StatusText(code) }

// proxyBody is a streamed answer's body, read from the call's chunks.
type proxyBody struct {
	s    *Session
	c    *proxyCall
	ctx  context.Context
	buf  []byte
	err  error // sticky: io.EOF at the end
	once sync.Once
}

func (b *proxyBody) Read(p []byte) (int, error) {
	for len(b.buf) == 0 {
		if b.err != nil {
			return 0, b.err
		}
		msg, err := b.s.next(b.ctx, b.c)
		if err != nil {
			b.fail(err)
			continue
		}
		switch msg.Type {
		case tunnel.TypeProxyResponseChunk:
			var ch tunnel.ProxyResponseChunk
			if err := msg.DecodePayload(&ch); err != nil {
				b.fail(fmt.Errorf("%w: %w", ErrProxyProtocol, err))
				continue
			}
			b.buf = ch.Data
		case tunnel.TypeProxyResponseEnd:
			b.err = io.EOF
			b.once.Do(func() { b.s.endCall(b.c, false) })
		case tunnel.TypeProxyResponseAbort, tunnel.TypeProxyError:
			var f tunnel.ProxyFailure
			_ = msg.DecodePayload(&f)
			b.err = fmt.Errorf("cluster %s: the agent aborted the answer: %s", b.s.Cluster, clipText(f.Error))
			b.once.Do(func() { b.s.endCall(b.c, false) })
		default:
			b.fail(fmt.Errorf("%w: %s inside a streamed answer", ErrProxyProtocol, msg.Type))
		}
	}
	n := copy(p, b.buf)
	b.buf = b.buf[n:]
	return n, nil
}

// fail ends the body with err and tells the agent to stop.
func (b *proxyBody) fail(err error) {
	b.err = err
	if errors.Is(err, ErrProxySlowReader) {
		b.s.reg.logs.Log(b.s.ctx, slog.LevelInfo, "slow_reader\x00"+b.s.Cluster, "JSON proxy answer cut: the caller reads too slowly",
			"cluster", b.s.Cluster, "limit_bytes", b.s.reg.cfg.MaxProxyBuffer)
	}
	b.once.Do(func() { b.s.endCall(b.c, true) })
}

// Close ends the call; the agent is told to stop if it was still sending.
func (b *proxyBody) Close() error {
	b.once.Do(func() { b.s.endCall(b.c, true) })
	if b.err == nil {
		b.err = errors.New("body closed")
	}
	return nil
}

func clipText(s string) string {
	if len(s) > 512 {
		return s[:512]
	}
	return s
}
