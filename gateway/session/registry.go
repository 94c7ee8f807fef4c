// Package session is the gateway's side of the tunnel: the WebSocket endpoint
// agents connect to, one yamux server session per connected cluster, and the
// registry that opens streams to a cluster's agent.
//
// An agent connects to the endpoint with its Bearer token; the gateway
// answers with gateway_hello, then runs yamux over the socket's binary
// messages and receives JSON control messages (heartbeats) in its text
// messages. The gateway is the only side that opens streams; each begins with
// a tunnel.StreamHeader naming the target inside the cluster.
package session

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pipeops/tunnel/shared/ratelog"
	"github.com/pipeops/tunnel/shared/tunnel"
	"github.com/pipeops/tunnel/shared/wsconn"
)

// ErrAgentOffline means the cluster has no connected agent.
var ErrAgentOffline = errors.New("agent offline")

// ErrTooManyStreams means the cluster's session has MaxStreamsPerSession
// streams open already.
var ErrTooManyStreams = errors.New("too many streams open to the agent")

// DefaultMaxStreamsPerSession is Config.MaxStreamsPerSession's default: far
// above what one cluster's traffic needs (idle pooled streams are capped per
// target, see Transport), low enough that one cluster cannot make the agent
// hold an unbounded number of connections and buffers.
const DefaultMaxStreamsPerSession = 10000

// DefaultHelloAckTimeout is Config.HelloAckTimeout's default. A PipeOps
// agent acknowledges gateway_hello as soon as it reads it.
const DefaultHelloAckTimeout = 5 * time.Second

// AgentIdentity is what an agent's token says about it.
type AgentIdentity struct {
	Cluster string
	// TokenID names the token (jti), so a session can be closed when its
	// token is revoked.
	TokenID string
	// TokenExpires is when the token expires (zero: never), so a session
	// can be closed then.
	TokenExpires time.Time
}

// Authenticator checks an agent's Bearer token and says which cluster it
// belongs to. An error means 401.
type Authenticator interface {
	AuthenticateAgent(ctx context.Context, token string) (AgentIdentity, error)
}

// ControlHandler receives the control messages (heartbeats, pings) agents
// send. Calls for one session come from one goroutine, in order; a slow
// handler delays only that session's control messages, never its streams.
type ControlHandler interface {
	HandleControl(ctx context.Context, s *Session, msg tunnel.Message)
}

// Config configures a Registry. Auth is required; the rest has defaults.
type Config struct {
	Auth    Authenticator
	Control ControlHandler
	// Yamux is the gateway's own side (zero fields: tunnel defaults). It is
	// announced to agents in gateway_hello, with AgentStreamWindow as the
	// window.
	Yamux tunnel.YamuxConfig
	// AgentStreamWindow is the stream window announced to agents: their
	// receive window, what an upload may have in flight (default
	// tunnel.DefaultAgentStreamWindow).
	AgentStreamWindow uint32
	// PingInterval and PingTimeout drive the WebSocket keepalive that notices
	// a dead agent link (defaults 5 s and 12 s).
	PingInterval, PingTimeout time.Duration
	// ControlQueue bounds the control messages waiting for the handler per
	// session (default 64); more are dropped and counted.
	ControlQueue int
	// MaxStreamsPerSession bounds the streams open at once on one agent's
	// session (default DefaultMaxStreamsPerSession); Dial refuses more with
	// ErrTooManyStreams. A stream counts until both sides have closed it,
	// idle ones pooled by a Transport included.
	MaxStreamsPerSession int
	Logger               *slog.Logger
	// AbuseWindow, FrameBudget and ControlBudget bound the protocol
	// violations one session may commit per window before it is closed
	// (defaults DefaultAbuseWindow, DefaultFrameBudget, DefaultControlBudget):
	// FrameBudget counts frames for streams that do not exist and streams
	// the agent opens; ControlBudget counts control messages that are
	// malformed, of a type only the server side sends, out of order, or
	// over ControlQueue.
	AbuseWindow   time.Duration
	FrameBudget   int
	ControlBudget int
	// MaxProxyBuffer bounds the unread answer of one request on the JSON
	// proxy path, in bytes (default DefaultMaxProxyBuffer); a caller that
	// falls further behind loses its request, and the agent is told to stop.
	MaxProxyBuffer int
	// HelloAckTimeout is how long a session of an agent without
	// tunnel.CapabilityK8sHTTP waits for gateway_hello_ack before streams
	// are opened anyway (default DefaultHelloAckTimeout).
	HelloAckTimeout time.Duration
	// Metrics, when set, is where the registry registers its collectors.
	Metrics prometheus.Registerer
	// OnConnect and OnDisconnect, when set, are told of sessions starting
	// and ending (a replaced session ends too); OnDrain of a session whose
	// agent said it is going away, or that Shutdown retires. They must not
	// block.
	OnConnect, OnDisconnect, OnDrain func(*Session)
	// Forward, when set, reaches the clusters whose agents are connected to
	// other gateways: Dial and Reach turn to it for a cluster with no
	// session here.
	Forward Forwarder
}

// Forwarder reaches clusters through other gateways (see Config.Forward).
type Forwarder interface {
	// Reach says whether another gateway holds a tunnel to cluster, and
	// what its agent supports.
	Reach(cluster string) (Reach, bool)
	// Dial opens a stream to the target h names in cluster, through another
	// gateway; ErrAgentOffline when none holds the cluster.
	Dial(ctx context.Context, cluster string, h tunnel.StreamHeader) (net.Conn, error)
}

// Reach is how a cluster is reached: through a session of this gateway
// (Local) or through another gateway (Local nil), and what the cluster's
// agent supports.
type Reach struct {
	Local *Session
	// Gateway names the gateway that holds the tunnel when it is not this
	// one.
	Gateway      string
	K8sHTTP      bool
	Impersonates bool
}

// Registry accepts agent connections (it is the http.Handler of the agent
// endpoint) and keeps one session per cluster and agent instance: the
// replicas of a cluster's agent are held side by side, and new streams go
// to the one with the fewest open that is not draining. Safe for concurrent
// use.
type Registry struct {
	cfg      Config
	log      *slog.Logger
	logs     *ratelog.Limiter // lines agents can trigger at will, keyed by kind and cluster
	metrics  *metrics
	upgrader websocket.Upgrader

	mu       sync.Mutex
	sessions map[string][]*Session // by cluster, oldest first
	closed   bool
	wg       sync.WaitGroup // one per live session
}

// NewRegistry returns a Registry ready to serve agents.
func NewRegistry(cfg Config) (*Registry, error) {
	if cfg.Auth == nil {
		return nil, errors.New("session: Config.Auth is required")
	}
	if cfg.PingInterval <= 0 {
		cfg.PingInterval = 5 * time.Second
	}
	if cfg.PingTimeout <= 0 {
		cfg.PingTimeout = 12 * time.Second
	}
	if cfg.ControlQueue <= 0 {
		cfg.ControlQueue = 64
	}
	if cfg.MaxProxyBuffer <= 0 {
		cfg.MaxProxyBuffer = DefaultMaxProxyBuffer
	}
	if cfg.HelloAckTimeout <= 0 {
		cfg.HelloAckTimeout = DefaultHelloAckTimeout
	}
	if cfg.AbuseWindow <= 0 {
		cfg.AbuseWindow = DefaultAbuseWindow
	}
	if cfg.FrameBudget <= 0 {
		cfg.FrameBudget = DefaultFrameBudget
	}
	if cfg.ControlBudget <= 0 {
		cfg.ControlBudget = DefaultControlBudget
	}
	if cfg.MaxStreamsPerSession <= 0 {
		cfg.MaxStreamsPerSession = DefaultMaxStreamsPerSession
	}
	def := tunnel.DefaultYamuxConfig()
	if cfg.Yamux.MaxStreamWindowSize == 0 {
		cfg.Yamux.MaxStreamWindowSize = def.MaxStreamWindowSize
	}
	if cfg.AgentStreamWindow == 0 {
		cfg.AgentStreamWindow = tunnel.DefaultAgentStreamWindow
	}
	if cfg.Yamux.KeepAliveIntervalSeconds == 0 {
		cfg.Yamux.KeepAliveIntervalSeconds = def.KeepAliveIntervalSeconds
	}
	if cfg.Yamux.ConnectionTimeoutSeconds == 0 {
		cfg.Yamux.ConnectionTimeoutSeconds = def.ConnectionTimeoutSeconds
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if _, err := tunnel.MuxConfig(cfg.Yamux, log); err != nil {
		return nil, err
	}
	if _, err := tunnel.MuxConfig(cfg.announced(), log); err != nil {
		return nil, fmt.Errorf("agent stream window: %w", err)
	}
	r := &Registry{
		cfg: cfg,
		log: log,
		// Keys are an event kind and a cluster, so an agent that reconnects
		// to repeat itself shares its previous sessions' count; the cap
		// bounds the memory a crowd of clusters can make it hold.
		logs:     ratelog.New(log, ratelog.Config{MaxKeys: 4096}),
		sessions: make(map[string][]*Session),
		upgrader: websocket.Upgrader{
			HandshakeTimeout: 10 * time.Second,
			// 0: reuse the 4 KiB reader net/http already has for the
			// connection. Bulk data is read past it (bufio hands large
			// reads straight to the TLS connection, which Buffered batches),
			// so a larger one only costs idle sessions memory.
			ReadBufferSize:  0,
			WriteBufferSize: 256 << 10,
			WriteBufferPool: wsconn.WriteBufferPool,
		},
	}
	r.metrics = newMetrics(cfg.Metrics, r)
	return r, nil
}

// ServeHTTP is the agent endpoint (conventionally /ws). It returns once the
// agent's session is set up; the session runs on (see Session).
func (r *Registry) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	token, ok := bearer(req)
	if !ok {
		r.metrics.refused.WithLabelValues("no_token").Inc()
		http.Error(w, "missing Bearer token", http.StatusUnauthorized)
		return
	}
	id, err := r.cfg.Auth.AuthenticateAgent(req.Context(), token)
	cluster := id.Cluster
	if err != nil {
		r.metrics.refused.WithLabelValues("bad_token").Inc()
		// Anyone can send bad tokens, as fast as they like: one line per
		// interval, with a count.
		r.logs.Log(req.Context(), slog.LevelInfo, "bad_token", "agent refused: bad token", "remote", req.RemoteAddr, "err", err)
		http.Error(w, "invalid token", http.StatusUnauthorized)
		return
	}
	q := req.URL.Query()
	if uuid := q.Get("cluster_uuid"); uuid != "" && uuid != cluster {
		r.metrics.refused.WithLabelValues("wrong_cluster").Inc()
		http.Error(w, fmt.Sprintf("token is for another cluster than %q", uuid), http.StatusForbidden)
		return
	}
	instance := q.Get(tunnel.AgentInstanceParam)
	if len(instance) > tunnel.MaxAgentInstanceLen {
		r.metrics.refused.WithLabelValues("bad_instance").Inc()
		http.Error(w, fmt.Sprintf("%s is longer than %d bytes", tunnel.AgentInstanceParam, tunnel.MaxAgentInstanceLen), http.StatusBadRequest)
		return
	}
	if q.Get("supports_yamux") != "true" {
		r.metrics.refused.WithLabelValues("no_yamux").Inc()
		http.Error(w, "this gateway requires supports_yamux=true", http.StatusBadRequest)
		return
	}
	ws, err := r.upgrader.Upgrade(w, req, nil)
	if err != nil {
		return // the upgrader has answered the client
	}
	_ = wsconn.SetNotSentLowat(ws.NetConn(), tunnel.SocketNotSentLowat)
	s, err := newSession(r, cluster, ws, AgentInfo{AgentVersion: q.Get("agent_version"), Remote: req.RemoteAddr, TokenID: id.TokenID,
		TokenExpires: id.TokenExpires, K8sHTTP: q.Get(tunnel.CapabilityK8sHTTP) == "true",
		Impersonates: q.Get(tunnel.CapabilityImpersonation) == "true", Instance: instance})
	if err != nil {
		r.logs.Log(req.Context(), slog.LevelWarn, "setup_failed\x00"+cluster, "agent session setup failed", "cluster", cluster, "err", err)
		return
	}
	if !r.add(s) {
		s.Close()
		return
	}
	// The handler returns now; the session's own goroutine takes over, so
	// the handler's stack is not held for the session's life.
	go s.run()
}

func bearer(req *http.Request) (string, bool) {
	h := req.Header.Get("Authorization")
	scheme, token, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(token) == "" {
		return "", false
	}
	return strings.TrimSpace(token), true
}

// add registers s, replacing (and closing) the previous session of the
// same cluster and agent instance: the newest connection of an agent wins,
// as after a reconnect the old one may be a half-dead socket.
func (r *Registry) add(s *Session) bool {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return false
	}
	var old *Session
	list := r.sessions[s.Cluster]
	if i := slices.IndexFunc(list, func(x *Session) bool { return x.Info.Instance == s.Info.Instance }); i >= 0 {
		old = list[i]
		list = slices.Delete(list, i, i+1)
	}
	r.sessions[s.Cluster] = append(list, s)
	r.wg.Add(1)
	r.mu.Unlock()
	r.metrics.sessions.Inc()
	r.metrics.sessionsTotal.Inc()
	if old != nil {
		r.metrics.replaced.Inc()
		r.logs.Log(context.Background(), slog.LevelInfo, "replaced\x00"+s.Cluster, "agent reconnected; closing its previous session", "cluster", s.Cluster)
		old.closeWith(ReasonReplaced)
	}
	// An agent reconnecting in a loop gets a line per interval, not one
	// per connection.
	r.logs.Log(context.Background(), slog.LevelInfo, "connected\x00"+s.Cluster, "agent connected", "cluster", s.Cluster, "agent_version", s.Info.AgentVersion, "remote", s.Info.Remote)
	if r.cfg.OnConnect != nil {
		r.cfg.OnConnect(s)
	}
	return true
}

func (r *Registry) remove(s *Session) {
	r.logEnd(s)
	r.mu.Lock()
	list := r.sessions[s.Cluster]
	if i := slices.Index(list, s); i >= 0 {
		list = slices.Delete(list, i, i+1)
	}
	if len(list) == 0 {
		delete(r.sessions, s.Cluster)
	} else {
		r.sessions[s.Cluster] = list
	}
	r.mu.Unlock()
	r.metrics.sessions.Dec()
	if r.cfg.OnDisconnect != nil {
		r.cfg.OnDisconnect(s)
	}
}

// logEnd counts and logs why s ended, before anyone is told it has.
func (r *Registry) logEnd(s *Session) {
	end := s.end.Load() // set before run closes the session
	if end == nil {
		end = &sessionEnd{reason: ReasonClosed}
	}
	r.metrics.sessionsClosed.WithLabelValues(end.reason).Inc()
	level, msg := slog.LevelInfo, "agent disconnected"
	if abusive(end.reason) {
		// Logged once per session (and rate-limited per cluster, for an
		// agent that reconnects to do it again).
		level, msg = slog.LevelWarn, "agent session closed: protocol violation"
	}
	args := []any{"cluster", s.Cluster, "reason", end.reason, "connected_for", time.Since(s.ConnectedAt).Round(time.Millisecond)}
	if end.detail != "" {
		args = append(args, "detail", end.detail)
	}
	r.logs.Log(context.Background(), level, "end\x00"+end.reason+"\x00"+s.Cluster, msg, args...)
}

// agentDraining is told by s that its agent sent go-away.
func (r *Registry) agentDraining(s *Session) {
	r.metrics.draining.Inc()
	r.logs.Log(context.Background(), slog.LevelInfo, "draining\x00"+s.Cluster, "agent draining: no new streams on its session",
		"cluster", s.Cluster, "instance", s.Info.Instance, "open_streams", s.NumStreams())
	if r.cfg.OnDrain != nil {
		r.cfg.OnDrain(s)
	}
}

// Session returns the cluster's session the next stream would go to: of
// the sessions whose agent is not draining, the one with the fewest open
// streams (the newest on a tie). False when the cluster has no session here
// that takes new streams.
func (r *Registry) Session(cluster string) (*Session, bool) {
	s := r.pick(cluster, false)
	return s, s != nil
}

// pick returns, of the cluster's sessions whose agent is not draining and
// which are retiring or not as asked, the one with the fewest open streams
// (the newest on a tie); nil when there is none.
func (r *Registry) pick(cluster string, retiring bool) *Session {
	r.mu.Lock()
	defer r.mu.Unlock()
	var best *Session
	bestLoad := 0
	for _, s := range r.sessions[cluster] {
		if s.Draining() || s.Retiring() != retiring {
			continue
		}
		if load := s.NumStreams() + int(s.opening.Load()); best == nil || load <= bestLoad {
			best, bestLoad = s, load
		}
	}
	return best
}

// ClusterSessions returns the cluster's sessions here, draining ones too,
// oldest first.
func (r *Registry) ClusterSessions(cluster string) []*Session {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*Session(nil), r.sessions[cluster]...)
}

// Sessions returns the live sessions.
func (r *Registry) Sessions() []*Session {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*Session, 0, len(r.sessions))
	for _, list := range r.sessions {
		out = append(out, list...)
	}
	return out
}

// Clusters returns the clusters with a connected agent.
func (r *Registry) Clusters() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, 0, len(r.sessions))
	for c := range r.sessions {
		out = append(out, c)
	}
	return out
}

func (r *Registry) numStreams() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, list := range r.sessions {
		for _, s := range list {
			n += s.NumStreams()
		}
	}
	return n
}

// Reach says how the cluster is reached: through this gateway's session,
// else through another gateway (Config.Forward), else through a session of
// this gateway's own shutdown; false when there is none of those.
func (r *Registry) Reach(cluster string) (Reach, bool) {
	local := func(s *Session) Reach {
		return Reach{Local: s, K8sHTTP: s.Info.K8sHTTP, Impersonates: s.Info.Impersonates}
	}
	if s, ok := r.Session(cluster); ok {
		return local(s), true
	}
	if r.cfg.Forward != nil {
		if reach, ok := r.cfg.Forward.Reach(cluster); ok {
			return reach, true
		}
	}
	if s := r.pick(cluster, true); s != nil {
		return local(s), true
	}
	return Reach{}, false
}

// Dial opens a stream to the cluster's agent and writes h, so the agent
// connects it to the target h names: over this gateway's session when it has
// one, else through another gateway (Config.Forward), else over a session
// this gateway is shutting down. The returned conn is the stream: closing it
// closes only that stream (a half-close toward the agent).
func (r *Registry) Dial(ctx context.Context, cluster string, h tunnel.StreamHeader) (net.Conn, error) {
	if s, ok := r.Session(cluster); ok {
		return s.Dial(ctx, h)
	}
	var ferr error
	if r.cfg.Forward != nil {
		if _, ok := r.cfg.Forward.Reach(cluster); ok {
			conn, err := r.cfg.Forward.Dial(ctx, cluster, h)
			if err == nil || ctx.Err() != nil {
				return conn, err
			}
			ferr = err
		}
	}
	if s := r.pick(cluster, true); s != nil {
		return s.Dial(ctx, h)
	}
	if ferr != nil {
		return nil, ferr
	}
	return nil, fmt.Errorf("dial %s in cluster %s: %w", h, cluster, ErrAgentOffline)
}

// DialLocal is Dial over this gateway's own sessions only: what a peer
// gateway's forwarded stream is given, so that a stream is never forwarded
// twice.
func (r *Registry) DialLocal(ctx context.Context, cluster string, h tunnel.StreamHeader) (net.Conn, error) {
	s, ok := r.Session(cluster)
	if !ok {
		s = r.pick(cluster, true)
	}
	if s == nil {
		return nil, fmt.Errorf("dial %s in cluster %s: %w", h, cluster, ErrAgentOffline)
	}
	return s.Dial(ctx, h)
}

// Shutdown drains: it stops accepting agents, marks every session retiring
// (new streams go elsewhere when there is anywhere else; OnDrain is told),
// sends each a yamux GoAway (so agents connect again, to another gateway
// behind the same address), waits for open streams to finish until ctx is
// done, then closes every session and waits for their goroutines.
func (r *Registry) Shutdown(ctx context.Context) error {
	r.mu.Lock()
	r.closed = true
	sessions := make([]*Session, 0, len(r.sessions))
	for _, list := range r.sessions {
		sessions = append(sessions, list...)
	}
	r.mu.Unlock()
	for _, s := range sessions {
		s.setEnd(ReasonShutdown, "")
		s.retiring.Store(true)
		if r.cfg.OnDrain != nil {
			r.cfg.OnDrain(s)
		}
		s.goAway()
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var err error
wait:
	for {
		busy := 0
		for _, s := range sessions {
			busy += s.NumStreams()
		}
		if busy == 0 {
			break
		}
		select {
		case <-ctx.Done():
			err = fmt.Errorf("shutdown: %d streams still open: %w", busy, ctx.Err())
			break wait
		case <-tick.C:
		}
	}
	for _, s := range sessions {
		s.closeWith(ReasonShutdown)
	}
	r.wg.Wait()
	r.logs.Flush()
	return err
}

// Close closes every session at once and waits for them.
func (r *Registry) Close() error {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = r.Shutdown(ctx)
	return nil
}

// announced is the yamux_config sent to agents in gateway_hello.
func (c Config) announced() tunnel.YamuxConfig {
	y := c.Yamux
	y.MaxStreamWindowSize = c.AgentStreamWindow
	return y
}
