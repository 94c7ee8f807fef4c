package session

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/hashicorp/yamux"

	"github.com/pipeops/tunnel/shared/tunnel"
	"github.com/pipeops/tunnel/shared/wsconn"
)

// AgentInfo is what the agent said about itself when it connected.
type AgentInfo struct {
	AgentVersion string
	Remote       string
	TokenID      string    // the jti of the token it connected with
	TokenExpires time.Time // when that token expires (zero: never)
	// K8sHTTP is whether the agent serves plain HTTP on Kubernetes API
	// streams (it sent tunnel.CapabilityK8sHTTP). Without it, the gateway
	// reaches the cluster's API on the JSON proxy path (ProxyHTTP).
	K8sHTTP bool
	// Impersonates is whether the agent runs each Kubernetes API request as
	// the person who makes it (it sent tunnel.CapabilityImpersonation): the
	// gateway then sends the caller's token in tunnel.IdentityHeader.
	Impersonates bool
	// Instance names the agent's replica (tunnel.AgentInstanceParam); empty
	// for agents that do not say. The registry keeps one session per
	// cluster and instance.
	Instance string
}

// Session is one agent's connected tunnel. It owns the WebSocket and the
// yamux server session. An idle session parks one goroutine of its own (run:
// it refuses agent-opened streams and, once yamux ends, closes the session
// and unregisters it); control messages are handled by a goroutine started
// when one arrives, which ends once the queue is empty. A gateway holds
// thousands of mostly idle sessions, and each parked goroutine costs a stack.
// Close stops the session and waits for its control handling.
//
// A session that breaks the protocol pays for it, not the gateway: frames
// for streams that do not exist, streams it opens, and control messages it
// must not send count against budgets per Config.AbuseWindow, are logged
// rate-limited, and once a budget is spent the session is closed with the
// violation as its reason (see CloseReason).
type Session struct {
	Cluster string
	// ID tells the session apart from the cluster's others, here and to
	// the other gateways (random, made by this gateway).
	ID          string
	Info        AgentInfo
	ConnectedAt time.Time

	reg    *Registry
	log    *slog.Logger
	conn   *wsconn.Conn
	muxOut *tunnel.FrameConn // what mux writes to; resets streams (tunnel.Stream)
	mux    *yamux.Session
	// opening counts the Dials past the stream limit check that have not
	// returned yet, so that concurrent Dials cannot overshoot the limit.
	opening atomic.Int64

	ctlMu      sync.Mutex
	ctlQueue   []tunnel.Message // waiting for the control goroutine
	ctlRunning bool             // a control goroutine is draining ctlQueue
	ctlClosed  bool             // no control goroutine may start any more

	abuseMu   sync.Mutex
	frames    budget // frames for unknown streams, agent-opened streams
	control   budget // malformed, forbidden, out-of-order, over-queue control messages
	helloAcks int    // gateway_hello_ack messages seen

	// ready is closed once streams may be opened: at once for our agents,
	// after gateway_hello_ack for PipeOps agents (which start yamux only
	// then, and drop yamux frames that come earlier), or after
	// Config.HelloAckTimeout for an agent that never acknowledges.
	ready      chan struct{}
	readyOnce  sync.Once
	readyTimer *time.Timer

	callsMu sync.Mutex
	calls   map[string]*proxyCall // JSON proxy requests in flight; nil once closed

	closing  atomic.Bool                // closed for a violation; stop counting
	end      atomic.Pointer[sessionEnd] // why the session ended, first cause wins
	protoErr atomic.Pointer[string]     // the first protocol error yamux logged

	// draining is set once the agent has sent yamux go-away: it takes no
	// new streams, and the registry opens them on other sessions.
	draining atomic.Bool
	// retiring is set once this gateway has sent go-away (its shutdown):
	// the session still takes streams, but only when no other session, here
	// or on another gateway, can.
	retiring atomic.Bool
	// streams are the streams open on the session, so that the idle ones
	// can be retired when the agent drains; nil once the session is closed.
	streamsMu sync.Mutex
	streams   map[*countedStream]struct{}

	ctx       context.Context // cancelled when the session ends
	cancel    context.CancelFunc
	closeOnce sync.Once
	wg        sync.WaitGroup // the control goroutine, the retiring of idle streams
}

func newSession(r *Registry, cluster string, ws *websocket.Conn, info AgentInfo) (*Session, error) {
	ctx, cancel := context.WithCancel(context.Background())
	s := &Session{
		Cluster:     cluster,
		ID:          rand.Text()[:16],
		Info:        info,
		ConnectedAt: time.Now(),
		reg:         r,
		log:         r.log.With("cluster", cluster),
		ctx:         ctx,
		cancel:      cancel,
		frames:      budget{limit: r.cfg.FrameBudget},
		control:     budget{limit: r.cfg.ControlBudget},
		ready:       make(chan struct{}),
		calls:       make(map[string]*proxyCall),
		streams:     make(map[*countedStream]struct{}),
	}
	if info.K8sHTTP {
		s.markReady()
	} else {
		s.readyTimer = time.AfterFunc(r.cfg.HelloAckTimeout, s.markReady)
	}
	s.conn = wsconn.New(ws, wsconn.Options{
		OnText:       s.onText,
		PingInterval: r.cfg.PingInterval,
		PingTimeout:  r.cfg.PingTimeout,
		Logger:       s.log,
	})
	hello, err := tunnel.NewMessage(tunnel.TypeGatewayHello, tunnel.GatewayHello{UseYamux: true, YamuxConfig: r.cfg.announced()})
	if err == nil {
		var b []byte
		if b, err = hello.Encode(); err == nil {
			_ = s.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
			err = s.conn.WriteText(b)
			_ = s.conn.SetWriteDeadline(time.Time{})
		}
	}
	if err != nil {
		s.conn.Close()
		cancel()
		return nil, fmt.Errorf("send gateway_hello: %w", err)
	}
	cfg, err := tunnel.MuxConfig(r.cfg.Yamux, s.log)
	if err != nil {
		s.conn.Close()
		cancel()
		return nil, err
	}
	// yamux logs some of the agent's mistakes once per frame; they are
	// counted and logged by the session instead (abuse.go).
	cfg.Logger = tunnel.NewMuxLog(nil, s.onMuxEvent)
	// The WebSocket keepalive already notices a dead agent; yamux's own
	// would only add a parked goroutine per session. The agent keeps its
	// yamux keepalive (announced in gateway_hello), which we answer.
	cfg.EnableKeepAlive = false
	// yamux sizes two things by AcceptBacklog: the queue of streams the
	// peer opened (the gateway refuses those, so it needs no depth) and how
	// many streams this side may have opened and not yet seen acknowledged.
	// The agent acknowledges on accept, at once, so 64 in flight is a rate
	// of 64 per round trip; the 1,024 agents use would cost every idle
	// session 8 KiB of queue.
	cfg.AcceptBacklog = 64
	s.muxOut = tunnel.CoalesceFrames(s.conn)
	s.muxOut.OnPeerGoAway(s.onAgentGoAway)
	s.mux, err = yamux.Server(s.muxOut, cfg)
	if err != nil {
		s.conn.Close()
		cancel()
		return nil, fmt.Errorf("yamux server: %w", err)
	}
	return s, nil
}

// run is the session's goroutine, started once the registry has added it. It
// refuses agent-opened streams until yamux ends, then closes the session and
// unregisters it.
func (s *Session) run() {
	defer s.reg.wg.Done()
	err := s.refuseStreams()
	s.setEnd(s.endOf(err))
	s.close()
	s.reg.remove(s)
}

// onText runs on the yamux receive goroutine (inside wsconn's Read): it must
// not block, so it only decodes, checks and queues, and starts the control
// goroutine if none is running.
func (s *Session) onText(b []byte) {
	if s.closing.Load() {
		return
	}
	msg, err := tunnel.DecodeMessage(b)
	if err != nil {
		s.dropControl(ReasonControlMalformed, "malformed", "dropping malformed control message", err.Error())
		return
	}
	if isProxyReply(msg.Type) {
		// Answers go straight to the request waiting for them, in order,
		// not through the control queue: a streamed answer is many
		// messages, and the queue's bound is for the agent's own chatter.
		s.reg.metrics.controlMessages.WithLabelValues(controlTypeLabel(msg.Type)).Inc()
		s.deliverReply(msg)
		return
	}
	if forbiddenControl[msg.Type] {
		s.dropControl(ReasonControlForbidden, "forbidden", "dropping a control message only the server side sends", msg.String())
		return
	}
	if msg.Type == typeGatewayHelloAck {
		s.abuseMu.Lock()
		s.helloAcks++
		again := s.helloAcks > 1
		s.abuseMu.Unlock()
		if again {
			s.dropControl(ReasonControlOutOfOrder, "out_of_order", "dropping a repeated gateway_hello_ack", msg.String())
			return
		}
		s.markReady()
	}
	s.ctlMu.Lock()
	switch {
	case s.ctlClosed:
		s.ctlMu.Unlock()
		return
	case len(s.ctlQueue) >= s.reg.cfg.ControlQueue:
		s.ctlMu.Unlock()
		s.dropControl(ReasonControlQueueFull, "queue_full", "control queue full; dropping message", msg.String())
		return
	}
	s.ctlQueue = append(s.ctlQueue, msg)
	if !s.ctlRunning {
		s.ctlRunning = true
		s.wg.Add(1)
		go s.handleControl()
	}
	s.ctlMu.Unlock()
}

// dropControl counts a control message dropped for a violation.
func (s *Session) dropControl(kind, dropReason, msg, detail string) {
	s.reg.metrics.controlDropped.WithLabelValues(dropReason).Inc()
	s.violation(kind, &s.control, slog.LevelWarn, msg, detail)
}

// handleControl handles queued control messages in order until the queue is
// empty or the session ends.
func (s *Session) handleControl() {
	defer s.wg.Done()
	for {
		s.ctlMu.Lock()
		if len(s.ctlQueue) == 0 || s.ctx.Err() != nil {
			s.ctlQueue = nil
			s.ctlRunning = false
			s.ctlMu.Unlock()
			return
		}
		msg := s.ctlQueue[0]
		s.ctlQueue[0] = tunnel.Message{}
		s.ctlQueue = s.ctlQueue[1:]
		s.ctlMu.Unlock()

		s.reg.metrics.controlMessages.WithLabelValues(controlTypeLabel(msg.Type)).Inc()
		if msg.Type == tunnel.TypePing {
			if err := s.Send(tunnel.TypePong, tunnel.Pong{}, msg.RequestID); err != nil {
				s.reg.logs.Log(s.ctx, slog.LevelDebug, "pong\x00"+s.Cluster, "send pong", "cluster", s.Cluster, "err", err)
			}
		}
		if s.reg.cfg.Control != nil {
			s.reg.cfg.Control.HandleControl(s.ctx, s, msg)
		}
	}
}

// refuseStreams accepts and closes streams the agent opens: only the gateway
// opens streams, and unaccepted ones would fill yamux's backlog. Each counts
// against the frame budget. It returns why yamux ended.
func (s *Session) refuseStreams() error {
	for {
		st, err := s.mux.AcceptStream()
		if err != nil {
			return err
		}
		s.reg.metrics.refused.WithLabelValues("agent_opened_stream").Inc()
		st.Close()
		s.violation(ReasonAgentStreams, &s.frames, slog.LevelInfo, "agent opened a stream; only the gateway opens streams", "")
	}
}

// markReady lets Dial open streams.
func (s *Session) markReady() {
	s.readyOnce.Do(func() { close(s.ready) })
}

// Send sends a control message to the agent. Safe for concurrent use.
func (s *Session) Send(typ string, payload any, requestID string) error {
	msg, err := tunnel.NewMessage(typ, payload)
	if err != nil {
		return err
	}
	msg.RequestID = requestID
	b, err := msg.Encode()
	if err != nil {
		return err
	}
	return s.conn.WriteText(b)
}

// Dial opens a stream to the agent and writes h. It refuses with
// ErrTooManyStreams when the session has MaxStreamsPerSession streams open.
func (s *Session) Dial(ctx context.Context, h tunnel.StreamHeader) (net.Conn, error) {
	// A stream being opened counts from before the check until it is in
	// NumStreams, and for a moment both: the limit is never exceeded.
	select {
	case <-s.ready:
	case <-ctx.Done():
		return nil, fmt.Errorf("open stream to cluster %s: waiting for gateway_hello_ack: %w", s.Cluster, ctx.Err())
	case <-s.ctx.Done():
		return nil, fmt.Errorf("open stream to cluster %s: %w", s.Cluster, ErrAgentOffline)
	}
	opening := s.opening.Add(1)
	defer s.opening.Add(-1)
	if limit := s.reg.cfg.MaxStreamsPerSession; int64(s.mux.NumStreams())+opening > int64(limit) {
		s.reg.metrics.refused.WithLabelValues("stream_limit").Inc()
		return nil, fmt.Errorf("open stream to cluster %s: %w (limit %d)", s.Cluster, ErrTooManyStreams, limit)
	}
	hdr, err := h.MarshalBinary()
	if err != nil {
		return nil, err
	}
	st, err := s.mux.OpenStream()
	if err != nil {
		if errors.Is(err, yamux.ErrSessionShutdown) || errors.Is(err, yamux.ErrRemoteGoAway) {
			err = fmt.Errorf("%w: %w", ErrAgentOffline, err)
		}
		return nil, fmt.Errorf("open stream to cluster %s: %w", s.Cluster, err)
	}
	if d, ok := ctx.Deadline(); ok {
		_ = st.SetWriteDeadline(d)
	}
	if _, err := st.Write(hdr); err != nil {
		st.Close()
		return nil, fmt.Errorf("write stream header to cluster %s: %w", s.Cluster, err)
	}
	_ = st.SetWriteDeadline(time.Time{})
	s.reg.metrics.streamsOpened.Inc()
	cs := &countedStream{Stream: tunnel.NewStream(st, s.muxOut), m: s.reg.metrics, s: s}
	cs.pool = NewPoolState(cs.Close)
	s.streamsMu.Lock()
	if s.streams != nil {
		s.streams[cs] = struct{}{}
	}
	s.streamsMu.Unlock()
	if s.draining.Load() {
		cs.pool.Retire() // the agent went away while it was opened: no reuse
	}
	return cs, nil
}

// Draining reports whether the agent has said it is going away (yamux
// go-away): it serves the streams open but takes no new ones.
func (s *Session) Draining() bool { return s.draining.Load() }

// Retiring reports whether this gateway is shutting the session down (it
// sent go-away): new streams go to it only when nothing else can take them.
func (s *Session) Retiring() bool { return s.retiring.Load() }

// onAgentGoAway runs on the yamux receive goroutine when the agent sends
// go-away: the session takes no new streams, and its idle pooled streams
// are retired, so the Transports open the next requests elsewhere rather
// than on a stream the agent will cut when it has drained.
func (s *Session) onAgentGoAway() {
	if s.draining.Swap(true) || s.ctx.Err() != nil {
		return
	}
	s.reg.agentDraining(s)
	s.streamsMu.Lock()
	if s.streams == nil { // closed meanwhile: nothing to retire, and wg is done with
		s.streamsMu.Unlock()
		return
	}
	open := make([]*countedStream, 0, len(s.streams))
	for cs := range s.streams {
		open = append(open, cs)
	}
	s.wg.Add(1)
	s.streamsMu.Unlock()
	// Closing writes frames: not on the receive goroutine.
	go func() {
		defer s.wg.Done()
		for _, cs := range open {
			cs.pool.Retire()
		}
	}()
}

// NumStreams is the number of open streams.
func (s *Session) NumStreams() int { return s.mux.NumStreams() }

// Done is closed when the session has ended.
func (s *Session) Done() <-chan struct{} { return s.mux.CloseChan() }

func (s *Session) goAway() { _ = s.mux.GoAway() }

// Close ends the session and waits for its control handling. Idempotent.
// Unless the session had already ended, its reason is ReasonClosed.
func (s *Session) Close() error {
	s.closeWith(ReasonClosed)
	return nil
}

// closeWith ends the session for reason (unless another was recorded
// first) and waits for its control handling.
func (s *Session) closeWith(reason string) {
	s.setEnd(reason, "")
	s.close()
}

func (s *Session) close() {
	s.closeOnce.Do(func() {
		s.cancel()
		if s.readyTimer != nil {
			s.readyTimer.Stop()
		}
		s.callsMu.Lock()
		s.calls = nil // calls waiting see s.ctx end
		s.callsMu.Unlock()
		s.ctlMu.Lock()
		s.ctlClosed = true
		s.ctlMu.Unlock()
		s.streamsMu.Lock()
		s.streams = nil
		s.streamsMu.Unlock()
		_ = s.mux.Close()
		_ = s.conn.Close()
		s.wg.Wait()
	})
}

// countedStream counts the bytes of a stream. CloseWrite half-closes it
// (the agent's target reads EOF); Close also resets it unless the agent has
// ended its side (tunnel.Stream), so an abandoned response stops at once.
type countedStream struct {
	*tunnel.Stream
	m    *metrics
	s    *Session
	pool *PoolState
}

// SessionID is the ID of the session the stream is on.
func (c *countedStream) SessionID() string { return c.s.ID }

// PoolState is the stream's state in a Transport's pool.
func (c *countedStream) PoolState() *PoolState { return c.pool }

// Close closes the stream (see tunnel.Stream.Close) and forgets it.
func (c *countedStream) Close() error {
	c.s.streamsMu.Lock()
	if c.s.streams != nil {
		delete(c.s.streams, c)
	}
	c.s.streamsMu.Unlock()
	return c.Stream.Close()
}

func (c *countedStream) Read(p []byte) (int, error) {
	n, err := c.Stream.Read(p)
	if n > 0 {
		c.m.bytesIn.Add(float64(n))
	}
	return n, err
}

func (c *countedStream) Write(p []byte) (int, error) {
	n, err := c.Stream.Write(p)
	if n > 0 {
		c.m.bytesOut.Add(float64(n))
	}
	return n, err
}
