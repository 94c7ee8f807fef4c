package tunnel

import (
	"bytes"
	"encoding/binary"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

// muxMessageCases are lines yamux v0.1.2 logs, with their class.
var muxMessageCases = []struct {
	line  string
	kind  MuxEventKind
	level slog.Level
	msg   string
}{
	{"[WARN] yamux: Discarding data for stream: 7", MuxUnknownStream, slog.LevelInfo, "Discarding data for stream: 7"},
	{"[WARN] yamux: frame for missing stream: Vsn:0 Type:1 Flags:0 StreamID:9 Length:4", MuxUnknownStream, slog.LevelInfo, "frame for missing stream: Vsn:0 Type:1 Flags:0 StreamID:9 Length:4"},
	{"[WARN] yamux: backlog exceeded, forcing connection reset", MuxStreamRefused, slog.LevelInfo, "backlog exceeded, forcing connection reset"},
	{"[ERR] yamux: Invalid protocol version: 2", MuxProtocolError, slog.LevelWarn, "Invalid protocol version: 2"},
	{"[ERR] yamux: duplicate stream declared", MuxProtocolError, slog.LevelWarn, "duplicate stream declared"},
	{"[ERR] yamux: receive window exceeded (stream: 3, remain: 0, recv: 9)", MuxProtocolError, slog.LevelWarn, "receive window exceeded (stream: 3, remain: 0, recv: 9)"},
	{"[ERR] yamux: unexpected FIN flag in state 4", MuxProtocolError, slog.LevelWarn, "unexpected FIN flag in state 4"},
	{"[ERR] yamux: Failed to read header: read: connection reset", MuxConnError, slog.LevelWarn, "Failed to read header: read: connection reset"},
	{"[ERR] yamux: Failed to write body: broken pipe", MuxConnError, slog.LevelWarn, "Failed to write body: broken pipe"},
	{"[WARN] yamux: failed to send go away: session shutdown", MuxConnError, slog.LevelInfo, "failed to send go away: session shutdown"},
	{"[ERR] yamux: received protocol error go away", MuxConnError, slog.LevelWarn, "received protocol error go away"},
	{"[ERR] yamux: keepalive failed: i/o deadline reached", MuxConnError, slog.LevelWarn, "keepalive failed: i/o deadline reached"},
	{"[ERR] yamux: SYN tracking out of sync", MuxOther, slog.LevelWarn, "SYN tracking out of sync"},
	{"something else\n", MuxOther, slog.LevelDebug, "something else"},
}

func TestClassifyMuxMessage(t *testing.T) {
	for _, c := range muxMessageCases {
		t.Run(c.msg, func(t *testing.T) {
			got := ClassifyMuxMessage(c.line)
			if got.Kind != c.kind || got.Level != c.level || got.Msg != c.msg {
				t.Fatalf("ClassifyMuxMessage(%q) = %+v, want {%v %v %q}", c.line, got, c.kind, c.level, c.msg)
			}
		})
	}
}

// FuzzClassifyMuxMessage: any line classifies without panicking, into a
// known class, and the message kept is part of the line.
func FuzzClassifyMuxMessage(f *testing.F) {
	for _, c := range muxMessageCases {
		f.Add(c.line)
	}
	f.Fuzz(func(t *testing.T, line string) {
		ev := ClassifyMuxMessage(line)
		if ev.Kind.String() == "" || strings.HasPrefix(ev.Kind.String(), "MuxEventKind(") {
			t.Fatalf("unknown class %d", ev.Kind)
		}
		if !strings.Contains(line, ev.Msg) {
			t.Fatalf("message %q is not from the line %q", ev.Msg, line)
		}
	})
}

// lockedBuffer is a log destination for several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// unknownStreamFrames returns n yamux data frames, each with a 4-byte
// payload, for stream ids no session has opened.
func unknownStreamFrames(n int) []byte {
	out := make([]byte, 0, n*16)
	for i := range n {
		var f [16]byte
		f[0], f[1] = 0, 0 // version 0, type data, no flags
		binary.BigEndian.PutUint32(f[4:8], uint32(1001+2*i))
		binary.BigEndian.PutUint32(f[8:12], 4)
		copy(f[12:], "junk")
		out = append(out, f[:]...)
	}
	return out
}

// A peer sending thousands of frames for streams that do not exist gets a
// line and a count, not a line per frame; with a handler, the handler sees
// every one and nothing is logged.
func TestMuxLogUnknownStreamFlood(t *testing.T) {
	const frames = 20000
	for _, withHandler := range []bool{false, true} {
		t.Run(map[bool]string{false: "logged", true: "handler"}[withHandler], func(t *testing.T) {
			buf := &lockedBuffer{}
			log := slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
			cfg, err := MuxConfig(DefaultYamuxConfig(), log)
			if err != nil {
				t.Fatal(err)
			}
			var seen atomic.Int64
			done := make(chan struct{})
			if withHandler {
				cfg.Logger = NewMuxLog(log, func(ev MuxEvent) {
					if ev.Kind == MuxUnknownStream && seen.Add(1) == frames {
						close(done)
					}
				})
			}
			a, b := net.Pipe()
			sess, err := yamux.Server(a, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := b.Write(unknownStreamFrames(frames)); err != nil {
				t.Fatal(err)
			}
			// A ping round trip proves every frame before it was handled.
			ping := make([]byte, 12)
			ping[1], ping[3] = 2, 1 // type ping, flag SYN
			binary.BigEndian.PutUint32(ping[8:], 77)
			if _, err := b.Write(ping); err != nil {
				t.Fatal(err)
			}
			reply := make([]byte, 12)
			_ = b.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := b.Read(reply); err != nil {
				t.Fatalf("no ping reply: %v", err)
			}
			if withHandler {
				<-done
			}
			if sess.IsClosed() {
				t.Fatal("yamux closed the session over unknown-stream frames")
			}
			sess.Close()
			b.Close()
			cfg.Logger.(*MuxLog).Flush()
			out := buf.String()
			lines := strings.Count(out, "\n")
			switch {
			case withHandler && lines != 0:
				t.Fatalf("handler set, yet %d lines logged:\n%s", lines, out)
			case !withHandler && (lines > 4 || !strings.Contains(out, "repeated=19999")):
				t.Fatalf("%d frames for unknown streams logged %d lines (%d bytes), want the first and a count:\n%s", frames, lines, len(out), out)
			}
		})
	}
}
