package tunnel

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/pipeops/tunnel/shared/ratelog"
)

// MuxEventKind classifies a message yamux logs. yamux reports some of what
// its peer does wrong only by logging it, once per frame, so the class is
// what lets the owner of a session count the peer's misbehaviour.
type MuxEventKind int

const (
	// MuxOther is any message not classified below.
	MuxOther MuxEventKind = iota
	// MuxUnknownStream is a data or window-update frame for a stream that
	// does not exist. A few are normal (frames in flight when a stream was
	// reset); yamux drops them and carries on.
	MuxUnknownStream
	// MuxStreamRefused is a stream the peer opened while the accept backlog
	// was full; yamux resets it and carries on.
	MuxStreamRefused
	// MuxProtocolError is a malformed frame (bad version, a duplicate
	// stream, a frame past the receive window, a FIN out of place). yamux
	// ends the session right after logging it.
	MuxProtocolError
	// MuxConnError is the connection failing under yamux, or the peer
	// ending the session with an error go-away.
	MuxConnError
)

var muxEventNames = [...]string{
	MuxOther:         "other",
	MuxUnknownStream: "unknown_stream",
	MuxStreamRefused: "stream_refused",
	MuxProtocolError: "protocol_error",
	MuxConnError:     "conn_error",
}

func (k MuxEventKind) String() string {
	if k >= 0 && int(k) < len(muxEventNames) {
		return muxEventNames[k]
	}
	return fmt.Sprintf("MuxEventKind(%d)", int(k))
}

// MuxEvent is one message yamux logged, classified.
type MuxEvent struct {
	Kind MuxEventKind
	// Level is what yamux's prefix says: [ERR] is Warn, [WARN] is Info,
	// none is Debug.
	Level slog.Level
	// Msg is yamux's text without its level and "yamux:" prefixes, such as
	// "Discarding data for stream: 7".
	Msg string
}

// muxMessages maps the start of each message yamux (v0.1.2, session.go and
// stream.go) logs about its peer or its connection to its class.
var muxMessages = []struct {
	prefix string
	kind   MuxEventKind
}{
	{"Discarding data for stream", MuxUnknownStream},
	{"frame for missing stream", MuxUnknownStream},
	{"backlog exceeded", MuxStreamRefused},
	{"Invalid protocol version", MuxProtocolError},
	{"duplicate stream declared", MuxProtocolError},
	{"receive window exceeded", MuxProtocolError},
	{"unexpected FIN flag", MuxProtocolError},
	{"Failed to read header", MuxConnError},
	{"Failed to write header", MuxConnError},
	{"Failed to copy body", MuxConnError},
	{"Failed to write body", MuxConnError},
	{"Failed to discard data", MuxConnError},
	{"Failed to read stream data", MuxConnError},
	{"failed to send go away", MuxConnError},
	{"failed to send ping reply", MuxConnError},
	{"keepalive failed", MuxConnError},
	{"received protocol error go away", MuxConnError},
	{"received internal error go away", MuxConnError},
	{"received unexpected go away", MuxConnError},
}

// ClassifyMuxMessage classifies one line yamux logged.
func ClassifyMuxMessage(line string) MuxEvent {
	msg := strings.TrimSpace(line)
	level := slog.LevelDebug
	if rest, ok := strings.CutPrefix(msg, "[ERR]"); ok {
		level, msg = slog.LevelWarn, rest
	} else if rest, ok := strings.CutPrefix(msg, "[WARN]"); ok {
		level, msg = slog.LevelInfo, rest
	}
	msg = strings.TrimSpace(msg)
	msg = strings.TrimSpace(strings.TrimPrefix(msg, "yamux:"))
	ev := MuxEvent{Kind: MuxOther, Level: level, Msg: msg}
	for _, m := range muxMessages {
		if strings.HasPrefix(msg, m.prefix) {
			ev.Kind = m.kind
			break
		}
	}
	return ev
}

// MuxLog is a yamux.Logger that routes yamux's printf logging into slog
// without letting the peer decide how much is written: yamux logs some
// events once per frame (a frame for a stream that does not exist), so a
// peer could otherwise write a log line per 12 bytes it sends.
//
// Without an event handler, each message is logged through a
// ratelog.Limiter keyed by its class (by its text for MuxOther): the first
// of each kind per interval in full, then a count. With a handler, every
// classified message goes to the handler instead, which then decides what
// to count, log and close.
//
// A MuxLog belongs to one yamux session; it is safe for concurrent use, as
// yamux logs from several goroutines. Flush it when the session ends so the
// last counts are written.
type MuxLog struct {
	limit   *ratelog.Limiter // nil with onEvent
	onEvent func(MuxEvent)
}

// NewMuxLog returns a MuxLog writing to l (nil discards). onEvent, when set,
// receives every message instead of l; it is called on yamux's goroutines
// (its receive loop among them) and must not block nor close the session
// synchronously (yamux's Close waits for the receive loop).
func NewMuxLog(l *slog.Logger, onEvent func(MuxEvent)) *MuxLog {
	m := &MuxLog{onEvent: onEvent}
	if onEvent == nil {
		// A gateway holds thousands of sessions, each with a MuxLog; only
		// the ones that log here pay for a limiter.
		m.limit = ratelog.New(l, ratelog.Config{MaxKeys: 64})
	}
	return m
}

// Print implements yamux.Logger.
func (m *MuxLog) Print(v ...any) { m.handle(fmt.Sprint(v...)) }

// Println implements yamux.Logger.
func (m *MuxLog) Println(v ...any) { m.handle(fmt.Sprintln(v...)) }

// Printf implements yamux.Logger.
func (m *MuxLog) Printf(format string, v ...any) { m.handle(fmt.Sprintf(format, v...)) }

// Flush writes the counts of repeated messages not yet reported.
func (m *MuxLog) Flush() {
	if m.limit != nil {
		m.limit.Flush()
	}
}

func (m *MuxLog) handle(line string) {
	ev := ClassifyMuxMessage(line)
	if m.onEvent != nil {
		m.onEvent(ev)
		return
	}
	key := ev.Kind.String()
	if ev.Kind == MuxOther {
		// yamux's messages are fixed texts with details after a colon;
		// the text before it names the kind.
		text, _, _ := strings.Cut(ev.Msg, ":")
		key += ":" + text
	}
	m.limit.Log(context.Background(), ev.Level, key, ev.Msg, "component", "yamux")
}
