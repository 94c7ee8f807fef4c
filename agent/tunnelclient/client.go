// Package tunnelclient is the agent's side of the tunnel: it dials the
// gateway's WebSocket, waits for gateway_hello, runs a yamux client session
// over the socket, and serves the streams the gateway opens by connecting
// each to the target its header names. It reconnects forever, with jittered
// exponential backoff, until its context ends.
package tunnelclient

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/hashicorp/yamux"

	"github.com/pipeops/tunnel/shared/tunnel"
	"github.com/pipeops/tunnel/shared/wsconn"
)

// Errors of the client.
var (
	// ErrTargetRefused is what a Dialer returns for a target the agent does
	// not serve; the stream is closed and counted.
	ErrTargetRefused = errors.New("target refused")
	// ErrUnauthorized means the gateway refused the token (HTTP 401/403).
	ErrUnauthorized = errors.New("gateway refused the agent token")
	// ErrNotConnected means there is no tunnel right now.
	ErrNotConnected = errors.New("tunnel not connected")
)

// Dialer connects a stream to its target inside the cluster.
type Dialer interface {
	DialStream(ctx context.Context, h tunnel.StreamHeader) (net.Conn, error)
}

// DialerFunc adapts a function to Dialer.
type DialerFunc func(ctx context.Context, h tunnel.StreamHeader) (net.Conn, error)

// DialStream implements Dialer.
func (f DialerFunc) DialStream(ctx context.Context, h tunnel.StreamHeader) (net.Conn, error) {
	return f(ctx, h)
}

// Config configures a Client. GatewayURL, Token and Dialer are required.
type Config struct {
	// GatewayURL is the gateway's WebSocket URL (gateway_ws_url); path /ws
	// when it has none.
	GatewayURL string
	Token      string
	// ClusterUUID is the cluster's id from registration (required).
	ClusterUUID  string
	AgentVersion string
	TLSConfig    *tls.Config
	Dialer       Dialer
	// OnControl receives the gateway's control messages, in order, from one
	// goroutine per connection.
	OnControl func(tunnel.Message)
	// Deliver, when set, sees every decoded control message first, on the
	// socket's read goroutine, in order; when it returns true the message
	// is its own and is not queued for OnControl. It must not block: the
	// yamux streams of the tunnel are read by the same goroutine. The JSON
	// proxy (package jsonproxy) is what uses it.
	Deliver func(tunnel.Message) bool
	// KubeAPIOverJSON leaves tunnel.CapabilityK8sHTTP out of the gateway
	// URL, so that a gateway reaches this agent's Kubernetes API with
	// proxy_request messages (the path hosted PipeOps uses) rather than
	// over yamux streams. For tests of that path.
	KubeAPIOverJSON bool
	// Impersonates adds tunnel.CapabilityImpersonation to the gateway URL:
	// the gateway is to send each Kubernetes API request with the caller's
	// token, which the agent verifies and impersonates (package kubeapi).
	Impersonates bool
	// Instance names this replica of the cluster's agent (its pod name):
	// sent as tunnel.AgentInstanceParam, so a gateway holds the sessions of
	// several replicas side by side. Empty: one session per cluster.
	Instance string
	// OnConnect and OnDisconnect are told when a tunnel comes up and goes down.
	OnConnect, OnDisconnect func()

	// Backoff between attempts: from BackoffInitial (default 500 ms) doubling
	// to BackoffMax (default 30 s), with jitter; back to the start after a
	// connection that stayed up BackoffReset (default 60 s).
	BackoffInitial, BackoffMax, BackoffReset time.Duration
	// After an established tunnel drops (a gateway restart or redeploy),
	// attempts during the next RetryFastWindow (default 30 s) wait at most
	// RetryFast (default 1 s, with jitter) instead of backing off, so the
	// agent is back about a second after the gateway is. Refused tokens
	// always back off.
	RetryFast, RetryFastWindow time.Duration
	// HandshakeTimeout bounds the WebSocket handshake plus gateway_hello
	// (default 15 s).
	HandshakeTimeout time.Duration
	// HeaderTimeout bounds the wait for a new stream's header (default 10 s).
	HeaderTimeout time.Duration
	// DialTimeout bounds connecting a stream's target (default 10 s).
	DialTimeout time.Duration
	// PingInterval and PingTimeout drive the WebSocket keepalive that notices
	// a dead link (defaults 5 s and 12 s).
	PingInterval, PingTimeout time.Duration
	// DrainTimeout is how long Run waits for open streams when its context
	// ends (default 10 s).
	DrainTimeout time.Duration
	Logger       *slog.Logger
}

// Stats are counters of a Client since it was made.
type Stats struct {
	Connects, StreamsTotal, StreamsActive, StreamsRefused, StreamsMalformed, StreamsFailed int64
}

// Client keeps one tunnel to the gateway. Run owns all its goroutines.
type Client struct {
	cfg Config
	log *slog.Logger
	url string

	mu   sync.Mutex
	conn *wsconn.Conn // current connection, nil when down

	// retiring waits for the sessions of gateways that went away, which
	// serve their open streams while Run connects again.
	retiring sync.WaitGroup

	connects, streamsTotal, streamsActive, refused, malformed, failed atomic.Int64
	refusals                                                          repeatCounter
}

// repeatCounter counts repeats of an event by key and says which to log:
// those whose count is a power of two, so a repeated event is in the log a
// few times with its count rather than once per occurrence. It keeps at
// most repeatKeys keys (the keys come from the gateway) and starts afresh
// beyond that. The zero value is ready; safe for concurrent use.
type repeatCounter struct {
	mu     sync.Mutex
	counts map[string]int64
}

const repeatKeys = 1024

// hit counts one occurrence of key and returns its count and whether to log
// it.
func (r *repeatCounter) hit(key string) (int64, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.counts == nil || (len(r.counts) >= repeatKeys && r.counts[key] == 0) {
		r.counts = make(map[string]int64)
	}
	r.counts[key]++
	n := r.counts[key]
	return n, n&(n-1) == 0
}

// New validates cfg and returns a Client.
func New(cfg Config) (*Client, error) {
	if cfg.Token == "" {
		return nil, errors.New("tunnelclient: Token is required")
	}
	if cfg.Dialer == nil {
		return nil, errors.New("tunnelclient: Dialer is required")
	}
	u, err := tunnel.GatewayURL(cfg.GatewayURL, cfg.ClusterUUID, cfg.AgentVersion)
	if err != nil {
		return nil, fmt.Errorf("tunnelclient: gateway URL: %w", err)
	}
	if len(cfg.Instance) > tunnel.MaxAgentInstanceLen {
		return nil, fmt.Errorf("tunnelclient: instance name longer than %d bytes", tunnel.MaxAgentInstanceLen)
	}
	if cfg.KubeAPIOverJSON || cfg.Impersonates || cfg.Instance != "" {
		pu, err := url.Parse(u)
		if err != nil {
			return nil, fmt.Errorf("tunnelclient: gateway URL: %w", err)
		}
		q := pu.Query()
		if cfg.KubeAPIOverJSON {
			q.Del(tunnel.CapabilityK8sHTTP)
		}
		if cfg.Impersonates {
			q.Set(tunnel.CapabilityImpersonation, "true")
		}
		if cfg.Instance != "" {
			q.Set(tunnel.AgentInstanceParam, cfg.Instance)
		}
		pu.RawQuery = q.Encode()
		u = pu.String()
	}
	setDefault(&cfg.BackoffInitial, 500*time.Millisecond)
	setDefault(&cfg.BackoffMax, 30*time.Second)
	setDefault(&cfg.BackoffReset, 60*time.Second)
	setDefault(&cfg.RetryFast, time.Second)
	setDefault(&cfg.RetryFastWindow, 30*time.Second)
	setDefault(&cfg.HandshakeTimeout, 15*time.Second)
	setDefault(&cfg.HeaderTimeout, 10*time.Second)
	setDefault(&cfg.DialTimeout, 10*time.Second)
	setDefault(&cfg.PingInterval, 5*time.Second)
	setDefault(&cfg.PingTimeout, 12*time.Second)
	setDefault(&cfg.DrainTimeout, 10*time.Second)
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Client{cfg: cfg, log: log, url: u}, nil
}

func setDefault(d *time.Duration, v time.Duration) {
	if *d <= 0 {
		*d = v
	}
}

// Stats returns the client's counters.
func (c *Client) Stats() Stats {
	return Stats{
		Connects: c.connects.Load(), StreamsTotal: c.streamsTotal.Load(), StreamsActive: c.streamsActive.Load(),
		StreamsRefused: c.refused.Load(), StreamsMalformed: c.malformed.Load(), StreamsFailed: c.failed.Load(),
	}
}

// Connected reports whether a tunnel is up.
func (c *Client) Connected() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conn != nil
}

// Send sends a control message over the tunnel.
func (c *Client) Send(msg tunnel.Message) error {
	b, err := msg.Encode()
	if err != nil {
		return err
	}
	c.mu.Lock()
	conn := c.conn
	c.mu.Unlock()
	if conn == nil {
		return ErrNotConnected
	}
	return conn.WriteText(b)
}

// Run keeps the tunnel up until ctx ends, then drains open streams for up to
// DrainTimeout and returns. Failures are logged and retried; a refused token
// is logged as an error. A failure that repeats is logged once, then every
// five minutes with its count (see failureLog).
func (c *Client) Run(ctx context.Context) error {
	defer c.retiring.Wait()
	attempt := 0
	var lostAt time.Time // when an established tunnel last went down
	var failures failureLog
	for {
		start := time.Now()
		before := c.connects.Load()
		err := c.runOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if c.connects.Load() != before {
			lostAt = time.Now()
			failures = failureLog{}
		}
		if time.Since(start) >= c.cfg.BackoffReset {
			attempt = 0
		}
		if errors.Is(err, errGatewayGoAway) && time.Since(start) >= time.Second {
			// Not a failure: the gateway drains, and asked us to move now.
			// (One that sends go-away at once, every time, gets the backoff.)
			attempt = 0
			continue
		}
		delay := c.retryDelay(attempt, err, lostAt)
		attempt++
		c.logFailure(ctx, &failures, err, delay, attempt)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// failureLog keeps a failure that repeats from filling the log: the first
// occurrence is logged, the repeats are counted and summed up every
// failureRepeatLog, and a different failure (or a tunnel that came up)
// starts afresh.
type failureLog struct {
	last    string
	repeats int
	logged  time.Time
}

// failureRepeatLog is how often a failure that keeps repeating is logged
// again, with the count of its repeats.
const failureRepeatLog = 5 * time.Minute

// logFailure logs why the tunnel is down: a refused token as an error, the
// rest as warnings; the same failure again only as a count.
func (c *Client) logFailure(ctx context.Context, f *failureLog, err error, delay time.Duration, attempt int) {
	level := slog.LevelWarn
	if errors.Is(err, ErrUnauthorized) {
		level = slog.LevelError
	}
	msg := err.Error()
	if msg == f.last && time.Since(f.logged) < failureRepeatLog {
		f.repeats++
		return
	}
	args := []any{"err", err, "retry_in", delay.Round(time.Millisecond), "attempt", attempt}
	if msg == f.last {
		args = append(args, "repeats_not_logged", f.repeats)
	}
	c.log.Log(ctx, level, "tunnel down; reconnecting", args...)
	f.last, f.repeats, f.logged = msg, 0, time.Now()
}

// handshakeHint says what an HTTP answer to the agent's WebSocket handshake
// most likely means, and what to check.
func handshakeHint(status int) string {
	switch {
	case status == http.StatusNotFound:
		return ": nothing serves the agent WebSocket at this URL; check that it names a pipeops gateway " +
			"(it serves /ws) and not the control plane or another web server: the URL comes from the " +
			"control plane's register answer (its GATEWAY_WS_URL setting)"
	case status == http.StatusBadGateway || status == http.StatusServiceUnavailable || status == http.StatusGatewayTimeout:
		return ": a proxy or load balancer in front of the gateway could not reach it; check that the gateway runs"
	case status >= 200 && status < 400:
		return ": the server answered without upgrading to a WebSocket; a proxy in between may not pass " +
			"WebSocket upgrades (Upgrade and Connection headers), or the URL names a plain web page"
	}
	return ""
}

// retryDelay is the wait before the next attempt: the backoff, shortened to
// RetryFast while an established tunnel was lost less than RetryFastWindow
// ago (unless the token was refused).
func (c *Client) retryDelay(attempt int, err error, lostAt time.Time) time.Duration {
	delay := c.backoff(attempt)
	if !errors.Is(err, ErrUnauthorized) && !lostAt.IsZero() && time.Since(lostAt) < c.cfg.RetryFastWindow {
		delay = min(delay, c.cfg.RetryFast/2+rand.N(c.cfg.RetryFast/2+1))
	}
	return delay
}

// backoff is full-jitter exponential: uniform in [d/2, d] where d doubles
// from BackoffInitial up to BackoffMax, so a gateway restart does not bring
// every agent back in the same instant.
func (c *Client) backoff(attempt int) time.Duration {
	d := c.cfg.BackoffInitial
	for i := 0; i < attempt && d < c.cfg.BackoffMax; i++ {
		d *= 2
	}
	d = min(d, c.cfg.BackoffMax)
	return d/2 + rand.N(d/2+1)
}

// session is one established tunnel: the socket, the yamux session over
// it, and the goroutines runOnce starts for it.
type session struct {
	conn   *wsconn.Conn
	frames *tunnel.FrameConn // what mux writes to; resets streams (tunnel.Stream)
	mux    *yamux.Session
	window uint32 // the stream window announced in gateway_hello
	// control queues the gateway's control messages for OnControl, so a
	// slow OnControl never stalls the socket's read goroutine.
	control chan tunnel.Message
	cancel  context.CancelFunc // ends the context of the streams and helpers
	streams sync.WaitGroup     // serveStream goroutines
	helpers sync.WaitGroup     // control delivery and drain-on-cancel
	// ended is done once the yamux session is closed, to abort the streams'
	// targets: a closed yamux stream reads as a clean EOF, so a Join whose
	// target stays quiet (a watch without events) would otherwise never
	// end, and teardown, the reconnect and Run's return would wait on it.
	ended context.Context
	end   context.CancelFunc
	// goAway is closed when the gateway sends yamux go-away: it drains and
	// opens no more streams on this session.
	goAway     chan struct{}
	goAwayOnce sync.Once
}

// errGatewayGoAway ends runOnce early: the gateway drains (it sent yamux
// go-away), so Run connects again at once, most likely to another gateway
// behind the same address, while the old session serves its open streams.
var errGatewayGoAway = errors.New("gateway going away")

// runOnce keeps one tunnel from the dial until it drops or ctx ends, and
// returns why it ended. When the gateway goes away first, it returns
// errGatewayGoAway and leaves the session to finish its open streams on
// its own (Client.retiring).
func (c *Client) runOnce(ctx context.Context) error {
	s, err := c.dial(ctx)
	if err != nil {
		return err
	}
	c.attach(s)
	done := make(chan error, 1)
	go func() { done <- c.serve(ctx, s) }()
	select {
	case err = <-done:
	case <-s.goAway:
		c.log.Info("gateway going away; connecting again while the streams open on it finish", "open_streams", s.mux.NumStreams())
		c.retiring.Go(func() {
			<-done
			c.teardown(s)
		})
		return errGatewayGoAway
	}
	c.teardown(s)
	return fmt.Errorf("tunnel closed: %w", err)
}

// dial connects to the gateway, waits for gateway_hello and starts the
// yamux client it announces. Nothing is left open when it fails.
func (c *Client) dial(ctx context.Context) (*session, error) {
	ws, hello, err := c.connect(ctx)
	if err != nil {
		return nil, err
	}
	s := &session{control: make(chan tunnel.Message, 64), goAway: make(chan struct{})}
	s.ended, s.end = context.WithCancel(context.Background())
	s.conn = wsconn.New(ws, wsconn.Options{
		OnText:       c.onText(s.control),
		PingInterval: c.cfg.PingInterval,
		PingTimeout:  c.cfg.PingTimeout,
		Logger:       c.log,
	})
	muxCfg, err := tunnel.MuxConfig(hello.YamuxConfig, c.log)
	if err != nil {
		s.conn.Close()
		s.end()
		return nil, err
	}
	s.window = muxCfg.MaxStreamWindowSize
	s.frames = tunnel.CoalesceFrames(s.conn)
	s.frames.OnPeerGoAway(func() { s.goAwayOnce.Do(func() { close(s.goAway) }) })
	s.mux, err = yamux.Client(s.frames, muxCfg)
	if err != nil {
		s.conn.Close()
		s.end()
		return nil, fmt.Errorf("yamux client: %w", err)
	}
	return s, nil
}

// onText decodes the gateway's control messages on the socket's read
// goroutine: Deliver sees each first, the rest are queued for OnControl.
func (c *Client) onText(control chan<- tunnel.Message) func([]byte) {
	return func(b []byte) {
		msg, err := tunnel.DecodeMessage(b)
		if err != nil {
			c.log.Warn("dropping malformed control message from gateway", "err", err)
			return
		}
		if c.cfg.Deliver != nil && c.cfg.Deliver(msg) {
			return
		}
		select {
		case control <- msg:
		default:
			c.log.Warn("control queue full; dropping message", "type", msg.Type)
		}
	}
}

// attach makes s the current tunnel, for Send and Connected.
func (c *Client) attach(s *session) {
	c.mu.Lock()
	c.conn = s.conn
	c.mu.Unlock()
	c.connects.Add(1)
	c.log.Info("tunnel connected", "gateway", c.cfg.GatewayURL, "stream_window", s.window)
	if c.cfg.OnConnect != nil {
		c.cfg.OnConnect()
	}
}

// serve delivers control messages, drains the session when ctx ends, and
// serves the streams the gateway opens until the session ends; it returns
// the error that ended it.
func (c *Client) serve(ctx context.Context, s *session) error {
	sessCtx, cancel := context.WithCancel(ctx)
	s.cancel = cancel
	s.helpers.Go(func() {
		for {
			select {
			case <-sessCtx.Done():
				return
			case msg := <-s.control:
				if c.cfg.OnControl != nil {
					c.cfg.OnControl(msg)
				}
			}
		}
	})
	s.helpers.Go(func() { c.drainOnCancel(ctx, s.mux, s.frames) })
	for {
		st, err := s.mux.AcceptStream()
		if err != nil {
			return err
		}
		c.streamsTotal.Add(1)
		c.streamsActive.Add(1)
		s.streams.Go(func() {
			defer c.streamsActive.Add(-1)
			c.serveStream(s.ended, s.frames, st)
		})
	}
}

// drainOnCancel waits for ctx to end, then tells the gateway to open no
// more streams (go-away) and gives the open ones DrainTimeout to finish
// before closing mux. The go-away is sent past yamux, which would otherwise
// reset the streams the gateway opened before it read the go-away.
func (c *Client) drainOnCancel(ctx context.Context, mux *yamux.Session, frames *tunnel.FrameConn) {
	select {
	case <-mux.CloseChan():
		return
	case <-ctx.Done():
	}
	frames.SendGoAway()
	deadline := time.Now().Add(c.cfg.DrainTimeout)
	for mux.NumStreams() > 0 && time.Now().Before(deadline) {
		select {
		case <-mux.CloseChan():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
	mux.Close()
}

// teardown detaches s, closes it, waits for every goroutine of it and then,
// unless a newer session has replaced it as the current one, tells
// OnDisconnect.
func (c *Client) teardown(s *session) {
	c.mu.Lock()
	current := c.conn == s.conn
	if current {
		c.conn = nil
	}
	c.mu.Unlock()
	s.mux.Close()
	s.conn.Close()
	s.end()
	s.streams.Wait()
	s.cancel()
	s.helpers.Wait()
	if current && c.cfg.OnDisconnect != nil {
		c.cfg.OnDisconnect()
	}
}

// connect dials the gateway and reads gateway_hello.
func (c *Client) connect(ctx context.Context) (*websocket.Conn, tunnel.GatewayHello, error) {
	var hello tunnel.GatewayHello
	ctx, cancel := context.WithTimeout(ctx, c.cfg.HandshakeTimeout)
	defer cancel()
	var nd net.Dialer
	d := websocket.Dialer{
		// Buffered reads and batched writes under TLS: one system call per
		// burst or message instead of one per 16 KiB record.
		NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := staggeredDial(ctx, nd.DialContext, network, addr, dialStagger, dialParallel)
			if err != nil {
				return nil, err
			}
			// Through a proxy this bounds the hop to the proxy only.
			_ = wsconn.SetNotSentLowat(c, tunnel.SocketNotSentLowat)
			return wsconn.Buffered(c), nil
		},
		Proxy:            http.ProxyFromEnvironment,
		TLSClientConfig:  c.cfg.TLSConfig,
		HandshakeTimeout: c.cfg.HandshakeTimeout,
		ReadBufferSize:   32 << 10,
		WriteBufferSize:  256 << 10,
		WriteBufferPool:  wsconn.WriteBufferPool,
	}
	h := http.Header{"Authorization": {"Bearer " + c.cfg.Token}}
	ws, resp, err := d.DialContext(ctx, c.url, h)
	if err != nil {
		if resp != nil && (resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden) {
			return nil, hello, fmt.Errorf("%w: %s", ErrUnauthorized, resp.Status)
		}
		if resp != nil {
			return nil, hello, fmt.Errorf("dial gateway: %w (HTTP %s)%s", err, resp.Status, handshakeHint(resp.StatusCode))
		}
		return nil, hello, fmt.Errorf("dial gateway: %w", err)
	}
	deadline, _ := ctx.Deadline()
	_ = ws.SetReadDeadline(deadline)
	// The read does not watch ctx, and Run's stop must not wait out the
	// handshake timeout.
	stop := context.AfterFunc(ctx, func() { _ = ws.NetConn().SetReadDeadline(time.Unix(1, 0)) })
	typ, b, err := ws.ReadMessage()
	if !stop() && err == nil {
		err = ctx.Err()
	}
	if err != nil {
		ws.Close()
		return nil, hello, fmt.Errorf("wait for gateway_hello: %w", err)
	}
	_ = ws.SetReadDeadline(time.Time{})
	if typ != websocket.TextMessage {
		ws.Close()
		return nil, hello, errors.New("gateway sent binary data before gateway_hello")
	}
	msg, err := tunnel.DecodeMessage(b)
	if err == nil && msg.Type != tunnel.TypeGatewayHello {
		err = fmt.Errorf("first message is %q, want %q", msg.Type, tunnel.TypeGatewayHello)
	}
	if err == nil {
		err = msg.DecodePayload(&hello)
	}
	if err == nil && !hello.UseYamux {
		err = errors.New("gateway does not offer yamux")
	}
	if err != nil {
		ws.Close()
		return nil, hello, fmt.Errorf("gateway_hello: %w", err)
	}
	return ws, hello, nil
}

// serveStream reads the stream's header, connects the target, and joins
// them until both directions end or the session has ended. A target that
// fails or stops reading ends the stream with a reset (tunnel.Stream), so
// the gateway stops sending what nobody will read. A drain does not stop
// it: the gateway may have opened the stream before it read the go-away,
// and its request is served like the others in flight.
func (c *Client) serveStream(ended context.Context, frames *tunnel.FrameConn, raw *yamux.Stream) {
	st := tunnel.NewStream(raw, frames)
	_ = st.SetReadDeadline(time.Now().Add(c.cfg.HeaderTimeout))
	h, err := tunnel.ReadStreamHeader(st)
	if err != nil {
		c.malformed.Add(1)
		c.log.Warn("closing stream with a bad header", "stream", st.StreamID(), "err", err)
		st.Finish() // a clean EOF: that stream only
		return
	}
	_ = st.SetReadDeadline(time.Time{})
	dctx, cancel := context.WithTimeout(ended, c.cfg.DialTimeout)
	target, err := c.cfg.Dialer.DialStream(dctx, h)
	cancel()
	if err != nil {
		if errors.Is(err, ErrTargetRefused) {
			c.refused.Add(1)
			// A gateway that keeps asking for a refused target is logged
			// at the 1st, 2nd, 4th, 8th... refusal, with the count.
			if n, log := c.refusals.hit(h.String()); log {
				c.log.Warn("refused stream target", "target", h.String(), "err", err, "refusals", n)
			}
		} else {
			c.failed.Add(1)
			c.log.Info("stream target unreachable", "target", h.String(), "err", err)
		}
		st.Finish() // a clean EOF: that stream only
		return
	}
	// Ending the target is how Join is stopped from outside: a read of
	// the stream of a closed session ends cleanly and aborts nothing.
	stop := context.AfterFunc(ended, func() {
		_ = target.SetDeadline(time.Unix(1, 0))
		_ = target.Close()
	})
	tunnel.Join(st, target)
	stop()
}
