package session

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/pipeops/tunnel/shared/ratelog"
	"github.com/pipeops/tunnel/shared/tunnel"
)

// counterValue reads a counter without going through a registry.
func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}

// logBuffer collects what a slog handler writes, from any goroutine.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// lines returns the lines that contain all of the given texts.
func (l *logBuffer) lines(with ...string) []string {
	var out []string
next:
	for _, line := range strings.Split(l.String(), "\n") {
		if line == "" {
			continue
		}
		for _, w := range with {
			if !strings.Contains(line, w) {
				continue next
			}
		}
		out = append(out, line)
	}
	return out
}

// ended records the sessions the registry has finished with.
type ended struct {
	mu   sync.Mutex
	seen map[*Session]bool
}

func (d *ended) add(s *Session) {
	d.mu.Lock()
	d.seen[s] = true
	d.mu.Unlock()
}

func (d *ended) has(s *Session) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.seen[s]
}

// captureLog makes the registry log to a buffer, at debug level, so the
// tests see every line an agent could make the gateway write, and record
// the sessions it has finished with. Call it before any agent connects.
func captureLog(e *env) (*logBuffer, *ended) {
	buf := &logBuffer{}
	log := slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	e.reg.log = log
	e.reg.logs = ratelog.New(log, ratelog.Config{MaxKeys: 4096})
	done := &ended{seen: make(map[*Session]bool)}
	e.reg.cfg.OnDisconnect = done.add
	return buf, done
}

// rawAgent is an agent that speaks the wire protocol by hand, to send what
// a real agent never would.
type rawAgent struct {
	ws   *websocket.Conn
	done chan struct{} // the reader has ended
}

// dialRaw connects as cluster's agent and reads gateway_hello. A reader
// drains whatever the gateway sends (and answers its pings) until the
// socket ends.
func (e *env) dialRaw(cluster string) *rawAgent {
	e.t.Helper()
	h := http.Header{"Authorization": {"Bearer " + e.token(cluster)}}
	url := "ws" + strings.TrimPrefix(e.srv.URL, "http") + "/ws?supports_yamux=true&cluster_uuid=" + cluster
	ws, _, err := websocket.DefaultDialer.Dial(url, h)
	if err != nil {
		e.t.Fatal(err)
	}
	typ, b, err := ws.ReadMessage()
	if err != nil || typ != websocket.TextMessage || !strings.Contains(string(b), tunnel.TypeGatewayHello) {
		e.t.Fatalf("first message: %d %q %v, want gateway_hello", typ, b, err)
	}
	a := &rawAgent{ws: ws, done: make(chan struct{})}
	go func() {
		defer close(a.done)
		for {
			if _, _, err := ws.NextReader(); err != nil {
				return
			}
		}
	}()
	e.t.Cleanup(a.close)
	return a
}

func (a *rawAgent) close() {
	a.ws.Close()
	<-a.done
}

// unknownStreamFrames returns n yamux data frames with a 4-byte payload,
// each for a stream id nobody opened (odd: the agent's side, never SYN'd).
func unknownStreamFrames(first, n int) []byte {
	out := make([]byte, 0, n*16)
	for i := range n {
		var f [16]byte // version 0, type data, no flags
		binary.BigEndian.PutUint32(f[4:8], uint32(1_000_001+2*(first+i)))
		binary.BigEndian.PutUint32(f[8:12], 4)
		copy(f[12:], "junk")
		out = append(out, f[:]...)
	}
	return out
}

// goodTraffic keeps opening echo streams to cluster until stop is closed
// and counts how they went.
type goodTraffic struct {
	ok, failed atomic.Int64
	firstErr   atomic.Pointer[error]
	done       chan struct{}
}

func (e *env) keepStreaming(cluster string, stop <-chan struct{}) *goodTraffic {
	g := &goodTraffic{done: make(chan struct{})}
	go func() {
		defer close(g.done)
		for i := 0; i < 100_000; i++ { // bounded; stop ends it long before
			select {
			case <-stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := roundTrip(ctx, e.reg, cluster, []byte(fmt.Sprintf("request %d", i)))
			cancel()
			if err != nil {
				g.failed.Add(1)
				g.firstErr.CompareAndSwap(nil, &err)
				continue
			}
			g.ok.Add(1)
		}
	}()
	return g
}

func (g *goodTraffic) check(t *testing.T) {
	t.Helper()
	<-g.done
	if n := g.failed.Load(); n > 0 {
		t.Errorf("%d of %d streams to the well-behaved agent failed, first: %v", n, n+g.ok.Load(), *g.firstErr.Load())
	}
	if g.ok.Load() == 0 {
		t.Error("no stream to the well-behaved agent completed during the abuse")
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
	}
}

// wait waits until the registry has finished with s: its end is counted
// and logged by then.
func (d *ended) wait(t *testing.T, s *Session) {
	t.Helper()
	waitFor(t, "the session of "+s.Cluster+" to end", 10*time.Second, func() bool { return d.has(s) })
}

const maxAbuseLog = 4 << 10 // "a few KiB"

// One agent sends 100,000 yamux data frames for streams that do not exist
// while another keeps being sent streams. With the default budget each of
// the abuser's sessions is closed with the reason, and it reconnects to go
// on, as an abuser with a valid token would; with a budget too large to
// spend, every frame is handled and the session lives. Either way the log
// holds a few lines, not one per frame (nor per reconnect), and every
// stream to the other agent succeeds.
func TestUnknownStreamFlood(t *testing.T) {
	const frames, perMessage = 100_000, 100
	cases := []struct {
		name   string
		budget int // 0: the default
		closed bool
	}{
		{"default budget closes the session", 0, true},
		{"budget not spent, log still bounded", 1 << 30, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, false)
			logs, ended := captureLog(e)
			if c.budget > 0 {
				e.reg.cfg.FrameBudget = c.budget
			}
			e.startAgent("good", nil)
			e.waitSession("good", nil)
			stop := make(chan struct{})
			stopGood := sync.OnceFunc(func() { close(stop) })
			good := e.keepStreaming("good", stop)
			defer func() { stopGood(); <-good.done }()

			counted := func() float64 {
				return counterValue(e.reg.metrics.violations.WithLabelValues(ReasonUnknownStreams))
			}
			start := time.Now()
			sent := 0
			var closed []*Session // sessions the gateway closed under the abuser
			var s *Session
			for attempt := 0; sent < frames; attempt++ {
				if attempt == 100 {
					t.Fatalf("100 sessions and only %d frames sent", sent)
				}
				bad := e.dialRaw("bad")
				s = e.waitSession("bad", s)
				inSession := 0
				var werr error
				for sent < frames && werr == nil {
					werr = bad.ws.WriteMessage(websocket.BinaryMessage, unknownStreamFrames(sent, perMessage))
					if werr == nil {
						sent += perMessage
						inSession += perMessage
					}
				}
				if c.closed && (werr != nil || inSession > DefaultFrameBudget) {
					// The gateway closed it, or will once it has read what
					// was sent: that is over the budget.
					closed = append(closed, s)
				}
				if !c.closed {
					break
				}
			}

			if c.closed {
				for _, s := range closed {
					ended.wait(t, s)
					if got := s.CloseReason(); got != ReasonUnknownStreams {
						t.Fatalf("abusive session closed for %q, want %q", got, ReasonUnknownStreams)
					}
				}
				if got := counterValue(e.reg.metrics.sessionsClosed.WithLabelValues(ReasonUnknownStreams)); got != float64(len(closed)) {
					t.Errorf("sessions_closed_total{reason=%q} = %v, want %d", ReasonUnknownStreams, got, len(closed))
				}
				if got, want := counted(), float64(len(closed)*(DefaultFrameBudget+1)); got < want {
					t.Errorf("%v violations counted, want at least the budget plus one per closed session (%v)", got, want)
				}
				if w := logs.lines("level=WARN", "cluster=bad", "reason="+ReasonUnknownStreams); len(w) != 1 {
					t.Errorf("%d WARN lines with the reason, want 1 (then a count):\n%s", len(w), logs)
				}
			} else {
				waitFor(t, "every frame to be handled", 60*time.Second, func() bool { return counted() == frames })
				if s.CloseReason() != "" {
					t.Fatalf("session closed (%s) with the budget not spent", s.CloseReason())
				}
			}
			t.Logf("sent %d frames in %s, %d sessions closed under the abuser; gateway handled %v",
				sent, time.Since(start).Round(time.Millisecond), len(closed), counted())

			stopGood()
			good.check(t)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := roundTrip(ctx, e.reg, "good", []byte("after the flood")); err != nil {
				t.Fatal(err)
			}
			if _, ok := e.reg.Session("good"); !ok {
				t.Fatal("the well-behaved agent lost its session")
			}

			e.reg.logs.Flush() // the pending counts too
			out := logs.String()
			t.Logf("log (%d bytes, %d streams to the good agent):\n%s", len(out), good.ok.Load(), out)
			if len(out) > maxAbuseLog {
				t.Fatalf("log grew to %d bytes, want under %d", len(out), maxAbuseLog)
			}
			if got := logs.lines("cluster=bad", "stream that does not exist"); len(got) == 0 || !strings.Contains(strings.Join(got, "\n"), "repeated=") {
				t.Errorf("want the first unknown-stream frame logged and then a count, got:\n%s", strings.Join(got, "\n"))
			}
		})
	}
}

// yamuxFrame is a 12-byte yamux header.
func yamuxFrame(version, typ byte, flags uint16, stream, length uint32) []byte {
	f := make([]byte, 12)
	f[0], f[1] = version, typ
	binary.BigEndian.PutUint16(f[2:4], flags)
	binary.BigEndian.PutUint32(f[4:8], stream)
	binary.BigEndian.PutUint32(f[8:12], length)
	return f
}

// Malformed yamux ends the session in yamux itself; the gateway logs why
// once, at WARN, with the cluster, and the other agent carries on.
func TestMalformedYamuxClosesOnlyThatSession(t *testing.T) {
	cases := []struct {
		name   string
		frame  []byte
		detail string
	}{
		{"bad version", yamuxFrame(2, 0, 0, 1, 0), "Invalid protocol version: 2"},
		{"bad message type", yamuxFrame(0, 9, 0, 1, 0), "invalid msg type"},
		{"duplicate stream", append(yamuxFrame(0, 1, 1, 1, 0), yamuxFrame(0, 1, 1, 1, 0)...), "duplicate stream"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, false)
			logs, ended := captureLog(e)
			e.startAgent("good", nil)
			e.waitSession("good", nil)
			bad := e.dialRaw("bad")
			s := e.waitSession("bad", nil)
			if err := bad.ws.WriteMessage(websocket.BinaryMessage, c.frame); err != nil {
				t.Fatal(err)
			}
			ended.wait(t, s)
			if got := s.CloseReason(); got != ReasonYamuxProtocol {
				t.Fatalf("closed for %q, want %q", got, ReasonYamuxProtocol)
			}
			if got := counterValue(e.reg.metrics.sessionsClosed.WithLabelValues(ReasonYamuxProtocol)); got != 1 {
				t.Errorf("sessions_closed_total{reason=%q} = %v, want 1", ReasonYamuxProtocol, got)
			}
			e.reg.logs.Flush()
			warn := logs.lines("level=WARN")
			if len(warn) != 1 || !strings.Contains(warn[0], "cluster=bad") || !strings.Contains(warn[0], c.detail) {
				t.Fatalf("WARN lines = %q, want one naming cluster bad and %q; log:\n%s", warn, c.detail, logs)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := roundTrip(ctx, e.reg, "good", []byte("unaffected")); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// stallControl holds the control messages of cluster "bad" until its
// session ends, so that its queue fills.
type stallControl struct{}

func (stallControl) HandleControl(ctx context.Context, s *Session, _ tunnel.Message) {
	if s.Cluster == "bad" {
		<-ctx.Done()
	}
}

func controlText(t *testing.T, typ string) []byte {
	t.Helper()
	m, err := tunnel.NewMessage(typ, map[string]any{"n": 1})
	if err != nil {
		t.Fatal(err)
	}
	b, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Floods of text frames a PipeOps agent never sends close the session with
// the reason, after a line and a count in the log; the messages a PipeOps
// agent does send are not violations, however many.
func TestControlMessageFloods(t *testing.T) {
	const n = 10_000
	cases := []struct {
		name    string
		msgs    func(i int) []byte
		stall   bool   // the handler holds the messages: the queue fills
		reason  string // "": the session must live
		dropped string // control_dropped_total reason
	}{
		{"malformed", func(int) []byte { return []byte(`{"type": "heartbeat", "payload": `) }, false, ReasonControlMalformed, "malformed"},
		{"not JSON", func(int) []byte { return []byte("\x00\xff binary in a text frame?") }, false, ReasonControlMalformed, "malformed"},
		{"no type", func(int) []byte { return []byte(`{"payload": {}}`) }, false, ReasonControlMalformed, "malformed"},
		{"gateway_hello", func(int) []byte { return controlText(t, tunnel.TypeGatewayHello) }, false, ReasonControlForbidden, "forbidden"},
		{"register_success", func(int) []byte { return controlText(t, tunnel.TypeRegisterSuccess) }, false, ReasonControlForbidden, "forbidden"},
		{"gateway_hello_ack again and again", func(int) []byte { return controlText(t, typeGatewayHelloAck) }, false, ReasonControlOutOfOrder, "out_of_order"},
		{"over the queue", func(int) []byte { return controlText(t, tunnel.TypeHeartbeat) }, true, ReasonControlQueueFull, "queue_full"},
		{"what PipeOps agents send", func(i int) []byte {
			types := []string{tunnel.TypeHeartbeat, tunnel.TypePing, tunnel.TypePong, "proxy_response", "proxy_response_chunk", "ws_data", "tcp_tunnel_data", "some_future_type"}
			if i == 0 {
				return controlText(t, typeGatewayHelloAck)
			}
			return controlText(t, types[i%len(types)])
		}, false, "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, false)
			logs, ended := captureLog(e)
			if c.stall {
				e.reg.cfg.Control = stallControl{}
			}
			e.startAgent("good", nil)
			e.waitSession("good", nil)
			bad := e.dialRaw("bad")
			s := e.waitSession("bad", nil)

			if c.reason == "" {
				// Many more than any budget, at the pace an agent's
				// handler keeps up with: in batches of half the queue.
				const count, batch = 2000, 32
				for i := 0; i < count; i += batch {
					for j := i; j < i+batch; j++ {
						if err := bad.ws.WriteMessage(websocket.TextMessage, c.msgs(j)); err != nil {
							t.Fatal(err)
						}
					}
					waitFor(t, "the batch to be handled", 10*time.Second, func() bool { return handledControl(e) >= float64(i+batch) })
				}
				if got := s.CloseReason(); got != "" {
					t.Fatalf("session closed for %q; log:\n%s", got, logs)
				}
				for _, k := range []string{ReasonControlMalformed, ReasonControlForbidden, ReasonControlOutOfOrder, ReasonControlQueueFull} {
					if v := counterValue(e.reg.metrics.violations.WithLabelValues(k)); v != 0 {
						t.Errorf("%v violations of kind %s", v, k)
					}
				}
				if got := counterValue(e.reg.metrics.controlMessages.WithLabelValues("other")); got == 0 {
					t.Error("unknown types not counted under type=\"other\"")
				}
			} else {
				for i := range n {
					if err := bad.ws.WriteMessage(websocket.TextMessage, c.msgs(i)); err != nil {
						break // closed under us, as it should be
					}
				}
				ended.wait(t, s)
				if got := s.CloseReason(); got != c.reason {
					t.Fatalf("closed for %q, want %q", got, c.reason)
				}
				if got := counterValue(e.reg.metrics.sessionsClosed.WithLabelValues(c.reason)); got != 1 {
					t.Errorf("sessions_closed_total{reason=%q} = %v, want 1", c.reason, got)
				}
				if got := counterValue(e.reg.metrics.controlDropped.WithLabelValues(c.dropped)); got < DefaultControlBudget {
					t.Errorf("control_dropped_total{reason=%q} = %v, want at least %d", c.dropped, got, DefaultControlBudget)
				}
				if w := logs.lines("level=WARN", "cluster=bad", "reason="+c.reason); len(w) != 1 {
					t.Errorf("%d WARN lines ending the session, want 1:\n%s", len(w), logs)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := roundTrip(ctx, e.reg, "good", []byte("unaffected")); err != nil {
				t.Fatal(err)
			}
			e.reg.logs.Flush()
			if out := logs.String(); len(out) > maxAbuseLog {
				t.Fatalf("log grew to %d bytes, want under %d:\n%s", len(out), maxAbuseLog, out)
			}
		})
	}
}

// handledControl is how many control messages the registry has handed on.
func handledControl(e *env) float64 {
	total := 0.0
	for _, typ := range []string{tunnel.TypeHeartbeat, tunnel.TypePing, tunnel.TypePong, typeGatewayHelloAck, "proxy_response", "proxy_response_chunk", "other"} {
		total += counterValue(e.reg.metrics.controlMessages.WithLabelValues(typ))
	}
	return total
}

// A flood of bad tokens costs a line per interval, with a count.
func TestBadTokenFloodLogsOnce(t *testing.T) {
	e := newEnv(t, false)
	logs, _ := captureLog(e)
	url := "ws" + strings.TrimPrefix(e.srv.URL, "http") + "/ws?supports_yamux=true"
	const n = 200
	for range n {
		ws, resp, err := websocket.DefaultDialer.Dial(url, http.Header{"Authorization": {"Bearer not.a.token"}})
		if err == nil {
			ws.Close()
			t.Fatal("bad token accepted")
		}
		if resp == nil || resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("response %v, want 401", resp)
		}
		resp.Body.Close()
	}
	e.reg.logs.Flush()
	got := logs.lines("bad token")
	if len(got) != 2 || !strings.Contains(got[1], fmt.Sprintf("repeated=%d", n-1)) {
		t.Fatalf("bad-token lines = %q, want the first and one with repeated=%d", got, n-1)
	}
}
