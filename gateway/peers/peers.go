// Package peers lets several gateways share the work of one: any gateway
// serves any cluster. Each gateway records in PostgreSQL which clusters'
// agents hold a tunnel to it (and that it is alive); a gateway asked for a
// cluster it holds no tunnel to forwards the stream to one that does, over
// an authenticated peer link (see link.go). Nothing but the database is
// shared: no gossip, no consensus.
package peers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/gateway/session"
	"github.com/pipeops/tunnel/shared/ratelog"
	"github.com/pipeops/tunnel/shared/tunnel"
)

// Store is where gateways record themselves and their tunnels
// (*postgres.DB).
type Store interface {
	GatewayStarted(ctx context.Context, id, peerURL string) error
	GatewaySeen(ctx context.Context, id, peerURL string) error
	GatewayStopped(ctx context.Context, id string) error
	SetGatewayTunnel(ctx context.Context, gateway string, t controlplane.GatewayTunnel) error
	GatewayTunnels(ctx context.Context, liveSince time.Time) ([]controlplane.GatewayTunnel, error)
	FollowTunnels(ctx context.Context, listening, changed func()) error
}

// Local is this gateway's own sessions (*session.Registry).
type Local interface {
	ClusterSessions(cluster string) []*session.Session
	DialLocal(ctx context.Context, cluster string, h tunnel.StreamHeader) (net.Conn, error)
}

// Defaults of Config.
const (
	DefaultSeenInterval = 5 * time.Second
	// DefaultDownFor is how long a peer that could not be reached is
	// passed over, unless it is the only one holding the cluster.
	DefaultDownFor = 5 * time.Second
	// MinSecretLen is the shortest PEER_SECRET accepted.
	MinSecretLen = 32
)

// Config configures Peers. Store, ID, URL, Secret and Local are required.
type Config struct {
	Store Store
	// ID is this gateway's GATEWAY_ID, unique among the gateways sharing
	// the database.
	ID string
	// URL is where the other gateways reach this one's peer listener
	// (http://host:port).
	URL    string
	Secret []byte
	Local  Local
	// SeenInterval is how often this gateway proves it is alive; a gateway
	// not seen for three of them is taken for dead and not forwarded to.
	SeenInterval time.Duration
	DownFor      time.Duration
	// DialTimeout bounds connecting to a peer (default 2 s).
	DialTimeout time.Duration
	Logger      *slog.Logger
	Metrics     prometheus.Registerer
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// holder is a gateway that holds a tunnel to a cluster.
type holder struct {
	id           string
	url          *url.URL
	k8sHTTP      bool
	impersonates bool
	// draining: the gateway is shutting down; its sessions take streams
	// only when no other gateway's can.
	draining bool
	// sessions are the ids of its sessions of the cluster that take new
	// streams.
	sessions []string
}

// Peers is this gateway's part in a group of gateways. It implements
// session.Forwarder, and Handler is its peer listener. Run keeps the
// database's record of this gateway and its tunnels, and follows the
// others'; Stop withdraws this gateway; Close waits for forwarded streams.
type Peers struct {
	cfg     Config
	log     *slog.Logger
	logs    *ratelog.Limiter // lines the peer listener's callers can trigger
	url     *url.URL
	dialer  net.Dialer
	metrics *metrics

	mu      sync.Mutex
	holders map[string][]holder  // cluster -> other gateways holding it
	down    map[string]time.Time // gateway id -> passed over until
	dirty   map[string]bool      // clusters whose tunnel record is to write
	loaded  bool
	stopped bool
	closed  bool

	// links are the open links this gateway dialled, by cluster and peer,
	// so that those to a peer that no longer holds the cluster are retired.
	links map[linkKey]map[*linkConn]struct{}

	wake    chan struct{} // a tunnel record to write
	reload  chan struct{} // the directory to reload
	splices sync.WaitGroup
}

var _ session.Forwarder = (*Peers)(nil)

// New checks cfg and returns Peers ready to Run.
func New(cfg Config) (*Peers, error) {
	if cfg.Store == nil || cfg.Local == nil {
		return nil, errors.New("peers: Config.Store and Config.Local are required")
	}
	if cfg.ID == "" || strings.ContainsAny(cfg.ID, " \t\r\n") {
		return nil, fmt.Errorf("peers: gateway id %q must be a non-empty word", cfg.ID)
	}
	if len(cfg.Secret) < MinSecretLen {
		return nil, fmt.Errorf("peers: the peer secret must be at least %d bytes", MinSecretLen)
	}
	u, err := ParseURL(cfg.URL)
	if err != nil {
		return nil, err
	}
	if cfg.SeenInterval <= 0 {
		cfg.SeenInterval = DefaultSeenInterval
	}
	if cfg.DownFor <= 0 {
		cfg.DownFor = DefaultDownFor
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 2 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	p := &Peers{cfg: cfg, log: log, logs: ratelog.New(log, ratelog.Config{}), url: u, holders: map[string][]holder{}, down: map[string]time.Time{},
		dirty: map[string]bool{}, links: map[linkKey]map[*linkConn]struct{}{}, wake: make(chan struct{}, 1), reload: make(chan struct{}, 1),
		dialer: net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: 30 * time.Second}}
	p.metrics = newMetrics(cfg.Metrics, p)
	return p, nil
}

// ParseURL checks a peer URL: http://host:port, nothing else.
func ParseURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "http" || u.Hostname() == "" || u.Port() == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
		return nil, fmt.Errorf("peer URL %q must be http://host:port, where the other gateways reach this one's peer listener", s)
	}
	return u, nil
}

// SessionsChanged tells Peers that the cluster's sessions on this gateway
// changed, so its record is written. It never blocks.
func (p *Peers) SessionsChanged(cluster string) {
	p.mu.Lock()
	p.dirty[cluster] = true
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// Reach implements session.Forwarder.
func (p *Peers) Reach(cluster string) (session.Reach, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	hs := p.holders[cluster]
	if len(hs) == 0 {
		return session.Reach{}, false
	}
	h := hs[0]
	for _, x := range hs {
		if !x.draining {
			h = x
			break
		}
	}
	return session.Reach{Gateway: h.id, K8sHTTP: h.k8sHTTP, Impersonates: h.impersonates}, true
}

// Dial implements session.Forwarder: it asks the gateways holding cluster,
// in random order, those shutting down and then those that failed lately
// last, until one opens the stream.
func (p *Peers) Dial(ctx context.Context, cluster string, h tunnel.StreamHeader) (net.Conn, error) {
	cands := p.candidates(cluster)
	if len(cands) == 0 {
		return nil, fmt.Errorf("dial %s in cluster %s: %w", h, cluster, session.ErrAgentOffline)
	}
	var errs []error
	for _, c := range cands {
		start := p.cfg.Now()
		conn, err := dialPeer(ctx, p.dialer.DialContext, c.url, p.cfg.ID, p.cfg.Secret, cluster, h, start)
		if err == nil {
			p.metrics.dialed.WithLabelValues("ok").Inc()
			p.metrics.dialSeconds.Observe(p.cfg.Now().Sub(start).Seconds())
			p.track(conn.(*linkConn), linkKey{cluster: cluster, gateway: c.id})
			return conn, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("dial %s in cluster %s through gateway %s: %w", h, cluster, c.id, err)
		}
		errs = append(errs, fmt.Errorf("gateway %s: %w", c.id, err))
		switch {
		case errors.Is(err, session.ErrTooManyStreams):
			p.metrics.dialed.WithLabelValues("limit").Inc()
		case errors.Is(err, session.ErrAgentOffline):
			p.metrics.dialed.WithLabelValues("offline").Inc()
		default:
			p.metrics.dialed.WithLabelValues("error").Inc()
			p.markDown(c.id, err)
		}
	}
	err := errors.Join(errs...)
	if !errors.Is(err, session.ErrTooManyStreams) && !errors.Is(err, session.ErrAgentOffline) {
		// No holder answered at all: to the visitor, the agent is offline.
		err = fmt.Errorf("%w: %w", session.ErrAgentOffline, err)
	}
	return nil, fmt.Errorf("dial %s in cluster %s through other gateways: %w", h, cluster, err)
}

// linkKey names the links to one cluster through one peer.
type linkKey struct{ cluster, gateway string }

// track records an open link until it is closed; a link to a peer that no
// longer holds the cluster by now is retired at once.
func (p *Peers) track(lc *linkConn, k linkKey) {
	lc.key = k
	lc.onClose = p.untrack
	p.mu.Lock()
	set := p.links[k]
	if set == nil {
		set = make(map[*linkConn]struct{})
		p.links[k] = set
	}
	set[lc] = struct{}{}
	held := p.holdsLocked(k, lc.session)
	p.mu.Unlock()
	if !held {
		lc.pool.Retire()
	}
}

func (p *Peers) untrack(lc *linkConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if set := p.links[lc.key]; set != nil {
		delete(set, lc)
		if len(set) == 0 {
			delete(p.links, lc.key)
		}
	}
}

// holdsLocked reports whether k's gateway holds k's cluster, is not
// shutting down, and still has the session the link is on (unless the
// peer did not say which).
func (p *Peers) holdsLocked(k linkKey, session string) bool {
	return slices.ContainsFunc(p.holders[k.cluster], func(h holder) bool {
		return h.id == k.gateway && !h.draining && (session == "" || slices.Contains(h.sessions, session))
	})
}

// retireGoneLocked lists the links to peers that no longer hold their
// cluster, to retire once p.mu is released.
func (p *Peers) retireGoneLocked() []*linkConn {
	var out []*linkConn
	for k, set := range p.links {
		for lc := range set {
			if !p.holdsLocked(k, lc.session) {
				out = append(out, lc)
			}
		}
	}
	return out
}

// candidates lists cluster's holders in the order to try them.
func (p *Peers) candidates(cluster string) []holder {
	p.mu.Lock()
	defer p.mu.Unlock()
	hs := p.holders[cluster]
	out := make([]holder, 0, len(hs))
	var draining, late []holder
	now := p.cfg.Now()
	for _, i := range rand.Perm(len(hs)) {
		switch until, down := p.down[hs[i].id]; {
		case down && now.Before(until):
			late = append(late, hs[i])
		case hs[i].draining:
			draining = append(draining, hs[i])
		default:
			out = append(out, hs[i])
		}
	}
	return append(append(out, draining...), late...)
}

func (p *Peers) markDown(id string, err error) {
	p.mu.Lock()
	_, already := p.down[id]
	p.down[id] = p.cfg.Now().Add(p.cfg.DownFor)
	p.mu.Unlock()
	if !already {
		p.log.Warn("peer gateway unreachable; passing it over", "peer", id, "for", p.cfg.DownFor, "err", err)
	}
}

// Handler is the peer listener's handler: it serves stream requests of
// the other gateways over this gateway's own sessions.
func (p *Peers) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req, status, err := parseStreamRequest(r, p.cfg.Secret, p.cfg.Now())
		if err != nil {
			p.metrics.served.WithLabelValues(strconvStatus(status)).Inc()
			if status == http.StatusUnauthorized {
				// Anyone who reaches PEER_ADDR can send these, as fast as
				// they like: a line per interval, with a count.
				p.logs.Log(r.Context(), slog.LevelWarn, "refused", "peer link refused", "remote", r.RemoteAddr, "err", err)
			}
			http.Error(w, err.Error(), status)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		st, err := p.cfg.Local.DialLocal(ctx, req.cluster, req.header)
		cancel()
		if err != nil {
			code := ""
			switch {
			case errors.Is(err, session.ErrAgentOffline):
				code = errOffline
			case errors.Is(err, session.ErrTooManyStreams):
				code = errLimit
			}
			p.metrics.served.WithLabelValues("503").Inc()
			w.Header().Set(headerError, code)
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			st.Close()
			return
		}
		_ = conn.SetDeadline(time.Time{})
		var sessionHeader string
		if s, ok := st.(interface{ SessionID() string }); ok {
			sessionHeader = headerSession + ": " + s.SessionID() + "\r\n"
		}
		if _, err := io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "+upgradeToken+"\r\n"+sessionHeader+"\r\n"); err != nil {
			conn.Close()
			st.Close()
			return
		}
		p.metrics.served.WithLabelValues("101").Inc()
		var in io.Reader = conn
		if n := brw.Reader.Buffered(); n > 0 {
			buffered, _ := brw.Reader.Peek(n)
			in = io.MultiReader(strings.NewReader(string(buffered)), conn)
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			conn.Close()
			st.Close()
			return
		}
		p.splices.Add(1)
		p.mu.Unlock()
		go func() {
			defer p.splices.Done()
			splice(conn, in, st)
		}()
	})
}

// splice copies between a peer link and a tunnel stream until both
// directions end; a half-close passes through, an error closes both.
func splice(link net.Conn, linkIn io.Reader, st net.Conn) {
	done := make(chan error, 2)
	go func() {
		_, err := io.Copy(st, linkIn)
		if err == nil {
			err = closeWrite(st)
		}
		done <- err
	}()
	go func() {
		_, err := io.Copy(link, st)
		if err == nil {
			err = closeWrite(link)
		}
		done <- err
	}()
	err := <-done
	if err != nil {
		link.Close()
		st.Close()
	}
	<-done
	link.Close()
	st.Close()
}

func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// Close waits for the forwarded streams this gateway serves; they end when
// their sessions close. Streams asked for after Close are refused.
func (p *Peers) Close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.splices.Wait()
	p.logs.Flush()
}

func strconvStatus(code int) string {
	switch code {
	case http.StatusBadRequest:
		return "400"
	case http.StatusUnauthorized:
		return "401"
	case http.StatusNotFound:
		return "404"
	}
	return "other"
}
