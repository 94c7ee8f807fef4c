package session

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
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
	TokenID      string // the jti of the token it connected with
}

// Session is one agent's connected tunnel. It owns the WebSocket and the
// yamux server session. An idle session parks one goroutine of its own (run:
// it refuses agent-opened streams and, once yamux ends, closes the session
// and unregisters it); control messages are handled by a goroutine started
// when one arrives, which ends once the queue is empty. A gateway holds
// thousands of mostly idle sessions, and each parked goroutine costs a stack.
// Close stops the session and waits for its control handling.
type Session struct {
	Cluster     string
	Info        AgentInfo
	ConnectedAt time.Time

	reg  *Registry
	log  *slog.Logger
	conn *wsconn.Conn
	mux  *yamux.Session

	ctlMu      sync.Mutex
	ctlQueue   []tunnel.Message // waiting for the control goroutine
	ctlRunning bool             // a control goroutine is draining ctlQueue
	ctlClosed  bool             // no control goroutine may start any more

	ctx       context.Context // cancelled when the session ends
	cancel    context.CancelFunc
	closeOnce sync.Once
	wg        sync.WaitGroup // the control goroutine
}

func newSession(r *Registry, cluster string, ws *websocket.Conn, info AgentInfo) (*Session, error) {
	ctx, cancel := context.WithCancel(context.Background())
	s := &Session{
		Cluster:     cluster,
		Info:        info,
		ConnectedAt: time.Now(),
		reg:         r,
		log:         r.log.With("cluster", cluster),
		ctx:         ctx,
		cancel:      cancel,
	}
	s.conn = wsconn.New(ws, wsconn.Options{
		OnText:       s.onText,
		PingInterval: r.cfg.PingInterval,
		PingTimeout:  r.cfg.PingTimeout,
		Logger:       s.log,
	})
	hello, err := tunnel.NewMessage(tunnel.TypeGatewayHello, tunnel.GatewayHello{UseYamux: true, YamuxConfig: r.cfg.Yamux})
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
	s.mux, err = yamux.Server(tunnel.CoalesceFrames(s.conn), cfg)
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
	s.refuseStreams()
	s.Close()
	s.reg.remove(s)
}

// onText runs on the yamux receive goroutine (inside wsconn's Read): it must
// not block, so it only decodes and queues, and starts the control goroutine
// if none is running.
func (s *Session) onText(b []byte) {
	msg, err := tunnel.DecodeMessage(b)
	if err != nil {
		s.reg.metrics.controlDropped.WithLabelValues("malformed").Inc()
		s.log.Warn("dropping malformed control message", "err", err)
		return
	}
	s.ctlMu.Lock()
	defer s.ctlMu.Unlock()
	switch {
	case s.ctlClosed:
		return
	case len(s.ctlQueue) >= s.reg.cfg.ControlQueue:
		s.reg.metrics.controlDropped.WithLabelValues("queue_full").Inc()
		s.log.Warn("control queue full; dropping message", "type", msg.Type)
		return
	}
	s.ctlQueue = append(s.ctlQueue, msg)
	if !s.ctlRunning {
		s.ctlRunning = true
		s.wg.Add(1)
		go s.handleControl()
	}
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

		s.reg.metrics.controlMessages.WithLabelValues(msg.Type).Inc()
		if msg.Type == tunnel.TypePing {
			if err := s.Send(tunnel.TypePong, tunnel.Pong{}, msg.RequestID); err != nil {
				s.log.Debug("send pong", "err", err)
			}
		}
		if s.reg.cfg.Control != nil {
			s.reg.cfg.Control.HandleControl(s.ctx, s, msg)
		}
	}
}

// refuseStreams accepts and closes streams the agent opens: only the gateway
// opens streams, and unaccepted ones would fill yamux's backlog.
func (s *Session) refuseStreams() {
	for {
		st, err := s.mux.AcceptStream()
		if err != nil {
			return
		}
		s.reg.metrics.refused.WithLabelValues("agent_opened_stream").Inc()
		st.Close()
	}
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

// Dial opens a stream to the agent and writes h.
func (s *Session) Dial(ctx context.Context, h tunnel.StreamHeader) (net.Conn, error) {
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
	return &countedStream{Stream: st, m: s.reg.metrics}, nil
}

// NumStreams is the number of open streams.
func (s *Session) NumStreams() int { return s.mux.NumStreams() }

// Done is closed when the session has ended.
func (s *Session) Done() <-chan struct{} { return s.mux.CloseChan() }

func (s *Session) goAway() { _ = s.mux.GoAway() }

// Close ends the session and waits for its control handling. Idempotent.
func (s *Session) Close() error {
	s.closeOnce.Do(func() {
		s.cancel()
		s.ctlMu.Lock()
		s.ctlClosed = true
		s.ctlMu.Unlock()
		_ = s.mux.Close()
		_ = s.conn.Close()
		s.wg.Wait()
	})
	return nil
}

// countedStream counts the bytes of a stream. Close and CloseWrite both send
// FIN (yamux has no full close); a peer that does not close in turn is reset
// after tunnel.StreamCloseTimeout.
type countedStream struct {
	*yamux.Stream
	m *metrics
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

// CloseWrite half-closes the stream: the agent's target reads EOF.
func (c *countedStream) CloseWrite() error { return c.Stream.Close() }
