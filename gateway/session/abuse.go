package session

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/gorilla/websocket"
	"github.com/hashicorp/yamux"

	"github.com/pipeops/tunnel/shared/tunnel"
	"github.com/pipeops/tunnel/shared/wsconn"
)

// Why a session ended: the reason label of
// pipeops_gateway_tunnel_sessions_closed_total and Session.CloseReason.
// The set is fixed, so the label's cardinality is too.
const (
	ReasonAgentClosed      = "agent_closed"      // the agent closed the socket
	ReasonReplaced         = "replaced"          // the cluster connected again
	ReasonShutdown         = "shutdown"          // the gateway is shutting down
	ReasonClosed           = "closed"            // Session.Close was called (a revoked token)
	ReasonKeepaliveTimeout = "keepalive_timeout" // nothing heard from the agent for PingTimeout
	ReasonConnectionError  = "connection_error"  // the socket failed
	ReasonMessageTooLarge  = "message_too_large" // a WebSocket message over wsconn's limits
	ReasonYamuxProtocol    = "yamux_protocol_error"

	// Protocol violations with a budget: each is also the kind label of
	// pipeops_gateway_tunnel_protocol_violations_total.
	ReasonUnknownStreams    = "unknown_stream_frames" // frames for streams that do not exist
	ReasonAgentStreams      = "agent_opened_streams"  // the agent opened streams; only the gateway may
	ReasonControlMalformed  = "control_malformed"     // text frames that are not a control message
	ReasonControlForbidden  = "control_forbidden"     // a control message only the server side sends
	ReasonControlOutOfOrder = "control_out_of_order"  // e.g. a second gateway_hello_ack
	ReasonControlQueueFull  = "control_queue_full"    // control messages faster than they are handled
)

// Default abuse budgets. Frames for unknown streams are normal in small
// numbers: when the gateway resets a stream, whatever the agent already had
// in flight for it arrives after, a few frames per stream; a burst of a few
// hundred cancelled requests stays within the budget. An agent has no
// legitimate reason to send a malformed, forbidden or out-of-order control
// message at all.
const (
	DefaultAbuseWindow   = 10 * time.Second
	DefaultFrameBudget   = 512
	DefaultControlBudget = 64
)

// forbiddenControl are the control messages only a gateway or control plane
// sends. PipeOps agents send gateway_hello_ack, heartbeat, ping, pong and
// the proxy_response*, ws_* and tcp_tunnel_* families; those, and types
// this gateway does not know, are not violations.
var forbiddenControl = map[string]bool{
	tunnel.TypeGatewayHello:    true,
	tunnel.TypeRegisterSuccess: true,
	tunnel.TypeHeartbeatAck:    true,
	"proxy_request":            true,
	"proxy_cancel":             true,
}

// typeGatewayHelloAck is what PipeOps agents answer gateway_hello with,
// once per connection.
const typeGatewayHelloAck = "gateway_hello_ack"

// budget counts violations in fixed windows. Guarded by Session.abuseMu.
type budget struct {
	limit int
	start time.Time
	used  int
}

// spend counts one violation at now and reports how many the current
// window holds and whether that is over the limit.
func (b *budget) spend(now time.Time, window time.Duration) (int, bool) {
	if b.start.IsZero() || now.Sub(b.start) >= window {
		b.start, b.used = now, 0
	}
	b.used++
	return b.used, b.used > b.limit
}

// sessionEnd is why a session ended.
type sessionEnd struct {
	reason string
	detail string
}

// violation counts one protocol violation of the given kind against b,
// logs it rate-limited (the first per cluster and kind per interval, then a
// count), and closes the session once b is spent. It may run on yamux's
// receive loop, so it never waits for the session to end.
func (s *Session) violation(kind string, b *budget, level slog.Level, msg, detail string) {
	if s.closing.Load() {
		return // its end is decided; what is still buffered does not count
	}
	s.reg.metrics.violations.WithLabelValues(kind).Inc()
	window := s.reg.cfg.AbuseWindow
	s.abuseMu.Lock()
	n, over := b.spend(time.Now(), window)
	s.abuseMu.Unlock()
	s.reg.logs.Log(context.Background(), level, kind+"\x00"+s.Cluster, msg,
		"cluster", s.Cluster, "kind", kind, "detail", detail)
	if over {
		s.closeForAbuse(kind, fmt.Sprintf("%d in %s, budget %d", n, window, b.limit))
	}
}

// closeForAbuse ends the session for a protocol violation. It closes only
// the socket, with 1008 (policy violation): it may run on yamux's receive
// loop, which Close would wait for. The socket's end stops that loop, and
// run does the rest (and logs the reason once).
func (s *Session) closeForAbuse(reason, detail string) {
	if !s.closing.CompareAndSwap(false, true) {
		return
	}
	s.setEnd(reason, detail)
	_ = s.conn.CloseWithCode(websocket.ClosePolicyViolation, "protocol violation: "+reason)
}

// setEnd records why the session ends; the first cause recorded wins.
func (s *Session) setEnd(reason, detail string) {
	s.end.CompareAndSwap(nil, &sessionEnd{reason: reason, detail: detail})
}

// CloseReason is why the session ended (one of the Reason constants), or
// "" while it is live.
func (s *Session) CloseReason() string {
	if e := s.end.Load(); e != nil {
		return e.reason
	}
	return ""
}

// onMuxEvent receives what yamux logs about this session (see
// tunnel.MuxLog). It runs on yamux's goroutines and must not block.
func (s *Session) onMuxEvent(ev tunnel.MuxEvent) {
	switch ev.Kind {
	case tunnel.MuxUnknownStream:
		s.violation(ReasonUnknownStreams, &s.frames, slog.LevelInfo, "agent sent a frame for a stream that does not exist", ev.Msg)
	case tunnel.MuxStreamRefused:
		s.violation(ReasonAgentStreams, &s.frames, slog.LevelInfo, "agent opened more streams than the backlog holds", ev.Msg)
	case tunnel.MuxProtocolError:
		// yamux ends the session right after; run logs the end once,
		// with this as its detail.
		msg := ev.Msg
		s.protoErr.CompareAndSwap(nil, &msg)
	case tunnel.MuxConnError:
		// The session's end says what happened; this is only detail.
		s.reg.logs.Log(context.Background(), slog.LevelDebug, "yamux_conn\x00"+s.Cluster, "yamux: "+ev.Msg, "cluster", s.Cluster)
	default:
		s.reg.logs.Log(context.Background(), ev.Level, "yamux_other\x00"+s.Cluster, "yamux: "+ev.Msg, "cluster", s.Cluster)
	}
}

// yamuxProtocolErrors are the errors yamux ends a session with when the
// peer sent something malformed.
var yamuxProtocolErrors = []error{
	yamux.ErrInvalidVersion, yamux.ErrInvalidMsgType, yamux.ErrDuplicateStream,
	yamux.ErrRecvWindowExceeded, yamux.ErrUnexpectedFlag,
}

// endOf says why yamux ended with err, when nothing recorded a reason
// before.
func (s *Session) endOf(err error) (reason, detail string) {
	if p := s.protoErr.Load(); p != nil {
		return ReasonYamuxProtocol, *p
	}
	for _, pe := range yamuxProtocolErrors {
		if errors.Is(err, pe) {
			return ReasonYamuxProtocol, err.Error()
		}
	}
	switch {
	case errors.Is(err, io.EOF):
		return ReasonAgentClosed, ""
	case errors.Is(err, wsconn.ErrKeepaliveTimeout):
		return ReasonKeepaliveTimeout, ""
	case errors.Is(err, wsconn.ErrTextTooLarge), errors.Is(err, wsconn.ErrBinaryTooLarge):
		return ReasonMessageTooLarge, err.Error()
	case errors.Is(err, yamux.ErrSessionShutdown), errors.Is(err, wsconn.ErrClosed):
		return ReasonClosed, ""
	case err == nil:
		return ReasonConnectionError, ""
	default:
		return ReasonConnectionError, err.Error()
	}
}

// abusive reports whether a session that ended for reason did something
// wrong: its end is logged at WARN.
func abusive(reason string) bool {
	switch reason {
	case ReasonYamuxProtocol, ReasonMessageTooLarge,
		ReasonUnknownStreams, ReasonAgentStreams, ReasonControlMalformed,
		ReasonControlForbidden, ReasonControlOutOfOrder, ReasonControlQueueFull:
		return true
	}
	return false
}

// controlTypeLabel bounds the type label of control_messages_total: an
// agent chooses the type string, so unknown ones share one label.
func controlTypeLabel(typ string) string {
	switch typ {
	case tunnel.TypeHeartbeat, tunnel.TypePing, tunnel.TypePong, typeGatewayHelloAck,
		tunnel.TypeRegister, tunnel.TypeError,
		"proxy_response", "proxy_response_header", "proxy_response_chunk",
		"proxy_response_end", "proxy_response_abort", "proxy_error":
		return typ
	}
	return "other"
}
