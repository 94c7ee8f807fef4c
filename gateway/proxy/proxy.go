// Package proxy is the gateway's public HTTP proxy: it finds the route for a
// request's Host and path and forwards the request either through the
// cluster's tunnel to its ingress controller (tunnel mode) or straight to the
// cluster's public load balancer (direct mode). Requests go through an
// httputil.ReverseProxy, so streaming and Server-Sent Events pass through,
// with no overall timeout. Protocol upgrades (WebSocket) take a path of their
// own (upgrade.go) that relays the upgraded connection without holding the
// request's handler.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/gateway/routetable"
	"github.com/pipeops/tunnel/gateway/session"
	"github.com/pipeops/tunnel/shared/tunnel"
)

// Router finds the route of a request.
type Router interface {
	Lookup(host, path string) (routetable.Match, bool)
}

// Config configures a Proxy. Routes and Tunnels are required.
type Config struct {
	Routes  Router
	Tunnels *session.Registry
	// ResponseHeaderTimeout bounds the wait for an upstream's response
	// headers (504 after it); default 60 s. For a protocol upgrade it bounds
	// writing the request, the wait and the switch together. Bodies and
	// upgraded connections have no time limit.
	ResponseHeaderTimeout time.Duration
	// DialTimeout bounds connecting a direct-mode upstream (default 5 s);
	// after it, the request falls back to the tunnel when the cluster has one.
	DialTimeout time.Duration
	// IdleConnTimeout closes idle upstream connections (default 90 s).
	IdleConnTimeout time.Duration
	// MaxIdlePerTarget is how many idle connections (streams) are kept per
	// upstream; at least the expected concurrency per cluster (default 256).
	MaxIdlePerTarget int
	// MaxRequestBody is the global request body limit in bytes; 0 means
	// none. A route's own limit (routetable.Match.MaxRequestBody) may lower
	// it, never raise it. A declared Content-Length over the limit is
	// answered 413 before anything upstream is dialled; a body of unknown
	// length is cut at the limit, and the visitor gets 413 unless the
	// upstream has answered already.
	MaxRequestBody int64
	Logger         *slog.Logger
	Metrics        prometheus.Registerer
	// Traffic, when set, is told of every routed request once it is done
	// (a *traffic.Recorder); nil tells nothing and counts no bytes.
	Traffic TrafficObserver
}

// TrafficObserver takes the figures of finished public requests. Observe is
// called on the request's goroutine, after the response, so it must be
// cheap. cluster and host are the matched route's (a wildcard route's
// "*.example.com", not the visitor's subdomain); status is the one
// answered (101 for an upgrade, whose relayed bytes are not counted);
// bytesIn and bytesOut are the body bytes read from the visitor and written
// to it; d is from the request's arrival to the end of its response.
type TrafficObserver interface {
	Observe(cluster, host string, status int, bytesIn, bytesOut int64, d time.Duration)
}

// Proxy is the public proxy handler. Safe for concurrent use. It owns the
// relays of the upgraded connections (WebSockets) it has proxied, which
// outlive their requests: Close ends them.
type Proxy struct {
	cfg      Config
	log      *slog.Logger
	rp       *httputil.ReverseProxy
	tunnel   *http.Transport
	direct   *http.Transport
	metrics  *metrics
	upgrades upgrades
}

// target is what the proxy decided for one request, carried in its context
// from ServeHTTP to Rewrite, the dialer and the error handler.
type target struct {
	match routetable.Match
	mode  string // controlplane.RoutingTunnel or RoutingDirect
	start time.Time
	// fellBack is set by the dialer, which may finish after the request
	// (the Transport can hand the request an idle connection meanwhile).
	fellBack atomic.Bool
}

type targetKey struct{}

// New returns a Proxy.
func New(cfg Config) (*Proxy, error) {
	if cfg.Routes == nil || cfg.Tunnels == nil {
		return nil, errors.New("proxy: Routes and Tunnels are required")
	}
	setDefault(&cfg.ResponseHeaderTimeout, 60*time.Second)
	setDefault(&cfg.DialTimeout, 5*time.Second)
	setDefault(&cfg.IdleConnTimeout, 90*time.Second)
	if cfg.MaxIdlePerTarget <= 0 {
		cfg.MaxIdlePerTarget = 256
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	p := &Proxy{cfg: cfg, log: log, metrics: newMetrics(cfg.Metrics)}
	p.tunnel = cfg.Tunnels.Transport(cfg.MaxIdlePerTarget)
	p.tunnel.ResponseHeaderTimeout = cfg.ResponseHeaderTimeout
	p.tunnel.IdleConnTimeout = cfg.IdleConnTimeout
	p.direct = &http.Transport{
		DialContext:           p.dialDirect,
		MaxIdleConnsPerHost:   cfg.MaxIdlePerTarget,
		IdleConnTimeout:       cfg.IdleConnTimeout,
		ResponseHeaderTimeout: cfg.ResponseHeaderTimeout,
		ExpectContinueTimeout: time.Second,
	}
	p.rp = &httputil.ReverseProxy{
		BufferPool:   copyBuffers,
		Rewrite:      p.rewrite,
		Transport:    roundTripperFunc(p.roundTrip),
		ErrorHandler: p.errorHandler,
		ErrorLog:     slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	return p, nil
}

func setDefault(d *time.Duration, v time.Duration) {
	if *d <= 0 {
		*d = v
	}
}

// copyBuffers recycles the buffers ReverseProxy copies bodies with (32 KiB
// each, otherwise allocated per request).
var copyBuffers = &bufferPool{}

type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte {
	if buf, ok := b.p.Get().(*[]byte); ok {
		return *buf
	}
	return make([]byte, 256<<10)
}

func (b *bufferPool) Put(buf []byte) { b.p.Put(&buf) }

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// Close closes idle upstream connections and every upgraded connection
// (visitor and upstream side), and waits for the goroutines relaying them.
// Upgrades that complete afterwards are closed at once; other requests are
// served as before (the http.Server's Shutdown drains those). Idempotent;
// calling it again closes the upstream connections that became idle since.
func (p *Proxy) Close() {
	p.upgrades.close()
	p.CloseIdleConnections()
}

// CloseUpgrades closes every upgraded connection (WebSockets) and refuses
// new upgrades: a draining gateway's last step for the connections that
// would never end on their own. Their clients reconnect, through the load
// balancer, to another gateway.
func (p *Proxy) CloseUpgrades() { p.upgrades.close() }

// CloseIdleConnections closes idle upstream connections (pooled tunnel
// streams included) and leaves connections in use, upgraded ones too: a
// draining gateway calls it repeatedly so that idle streams do not hold the
// drain open while live WebSockets get the drain's time to finish.
func (p *Proxy) CloseIdleConnections() {
	p.tunnel.CloseIdleConnections()
	p.direct.CloseIdleConnections()
}

// ServeHTTP proxies one request.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	m, ok := p.cfg.Routes.Lookup(r.Host, r.URL.Path)
	if !ok {
		p.metrics.requests.WithLabelValues("none", "404").Inc()
		http.Error(w, fmt.Sprintf("no route for %s%s", hostOnly(r.Host), r.URL.Path), http.StatusNotFound)
		return
	}
	t := &target{match: m, mode: m.Route.RoutingMode, start: time.Now()}
	if t.mode != controlplane.RoutingDirect || m.Route.PublicEndpoint == "" {
		t.mode = controlplane.RoutingTunnel
	}
	rec := &statusRecorder{ResponseWriter: w}
	// TracePool: a stream put back in the pool is retired when its agent
	// drains, instead of carrying the next request to an agent that is
	// about to cut it.
	r = r.WithContext(session.TracePool(context.WithValue(r.Context(), targetKey{}, t)))
	var in *countingBody
	if p.cfg.Traffic != nil && r.Body != nil && r.Body != http.NoBody {
		// Under the body limit's reader, which the error handler looks for.
		in = &countingBody{ReadCloser: r.Body}
		r.Body = in
	}
	limit := bodyLimit(p.cfg.MaxRequestBody, m.MaxRequestBody)
	body, fits := limitBody(r, limit)
	if !fits {
		http.Error(rec, bodyTooLargeMessage(limit), http.StatusRequestEntityTooLarge)
	} else if upType := upgradeType(r.Header); upType != "" && r.ProtoMajor == 1 {
		p.serveUpgrade(rec, r, t, upType)
	} else {
		p.rp.ServeHTTP(rec, r)
	}
	if !fits || body.exceeded() {
		p.metrics.refused.WithLabelValues(reasonBodyTooLarge).Inc()
	}
	mode := t.mode
	if t.fellBack.Load() {
		mode = "direct_fallback"
	}
	elapsed := time.Since(t.start)
	p.metrics.requests.WithLabelValues(mode, strconv.Itoa(rec.statusOr200())).Inc()
	p.metrics.duration.WithLabelValues(mode).Observe(elapsed.Seconds())
	if p.cfg.Traffic != nil {
		var bytesIn int64
		if in != nil {
			bytesIn = in.n.Load()
		}
		p.cfg.Traffic.Observe(m.Route.ClusterUUID, m.Route.Hostname, rec.statusOr200(), bytesIn, rec.written, elapsed)
	}
}

func hostOnly(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		return h
	}
	return host
}

// rewrite points the outgoing request at the upstream. The Host header stays
// the visitor's: ingress controllers route by it.
func (p *Proxy) rewrite(pr *httputil.ProxyRequest) {
	t := pr.In.Context().Value(targetKey{}).(*target)
	pr.SetXForwarded()
	pr.Out.URL.Scheme = "http"
	if t.mode == controlplane.RoutingDirect {
		pr.Out.URL.Host = directAddr(t.match.Route.PublicEndpoint)
	} else {
		// An invalid target host fails the dial, which reports it as a 502.
		pr.Out.URL.Host, _ = session.TargetHost(t.match.Route.ClusterUUID, tunnelHeader(t.match))
	}
	pr.Out.Host = pr.In.Host
}

// tunnelHeader names the stream's target: the cluster's ingress controller,
// or, when the agent has not reported one, the route's Service itself.
func tunnelHeader(m routetable.Match) tunnel.StreamHeader {
	if ic := m.IngressController; ic != nil && ic.Name != "" && ic.Port > 0 {
		return tunnel.StreamHeader{Protocol: tunnel.ProtocolTCP, Port: uint16(ic.Port), Service: ic.Name, Namespace: ic.Namespace}
	}
	return tunnel.StreamHeader{Protocol: tunnel.ProtocolTCP, Port: uint16(m.Route.ServicePort), Service: m.Route.ServiceName, Namespace: m.Route.Namespace}
}

// directAddr turns a public endpoint ("203.0.113.7", "lb.example.com",
// "lb.example.com:8080", "http://lb.example.com") into host:port. An
// endpoint that gives no host:port, or one without a host (":8080", "[]"),
// gives "", which nothing dials: an empty host would dial this machine.
func directAddr(endpoint string) string {
	if u, err := url.Parse(endpoint); err == nil && u.Host != "" {
		endpoint = u.Host
	}
	host, _, err := net.SplitHostPort(endpoint)
	if err != nil {
		endpoint = net.JoinHostPort(strings.Trim(endpoint, "[]"), "80")
		host, _, err = net.SplitHostPort(endpoint)
	}
	if err != nil || host == "" {
		return ""
	}
	return endpoint
}

func (p *Proxy) roundTrip(r *http.Request) (*http.Response, error) {
	t := r.Context().Value(targetKey{}).(*target)
	if t.mode == controlplane.RoutingDirect {
		return p.direct.RoundTrip(r)
	}
	return p.tunnel.RoundTrip(r)
}

// dialDirect connects a direct-mode upstream. When the load balancer cannot
// be reached and the cluster has a live tunnel, it opens a tunnel stream to
// the ingress controller instead: the request, Host header and all, is the
// same either way, so the visitor never sees the outage.
func (p *Proxy) dialDirect(ctx context.Context, network, addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: p.cfg.DialTimeout, KeepAlive: 30 * time.Second}
	c, err := d.DialContext(ctx, network, addr)
	if err == nil {
		return c, nil
	}
	t, _ := ctx.Value(targetKey{}).(*target)
	if t == nil || ctx.Err() != nil {
		return nil, err
	}
	if _, live := p.cfg.Tunnels.Reach(t.match.Route.ClusterUUID); !live {
		return nil, err
	}
	st, terr := p.cfg.Tunnels.Dial(ctx, t.match.Route.ClusterUUID, tunnelHeader(t.match))
	if terr != nil {
		return nil, fmt.Errorf("direct %s: %w; tunnel fallback: %w", addr, err, terr)
	}
	t.fellBack.Store(true)
	p.metrics.fallbacks.Inc()
	p.log.Info("direct upstream unreachable; used the tunnel", "cluster", t.match.Route.ClusterUUID, "endpoint", addr, "err", err)
	return st, nil
}

// errorHandler maps upstream failures to statuses: the visitor's body over
// its limit 413, no agent 503, the agent's session at its stream limit 503,
// timeout waiting for headers 504, anything else 502. A visitor that went
// away gets nothing (there is nobody to answer).
func (p *Proxy) errorHandler(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		return
	}
	if limit, ok := bodyTooLarge(r, err); ok {
		// The visitor's doing, counted in ServeHTTP; not worth a log line.
		http.Error(w, bodyTooLargeMessage(limit), http.StatusRequestEntityTooLarge)
		return
	}
	status := http.StatusBadGateway
	msg := "upstream failed"
	var ne net.Error
	switch {
	case errors.Is(err, session.ErrAgentOffline):
		status, msg = http.StatusServiceUnavailable, "the cluster's agent is not connected"
	case errors.Is(err, session.ErrTooManyStreams):
		status, msg = http.StatusServiceUnavailable, "the cluster's tunnel is at its limit of concurrent streams"
	case errors.As(err, &ne) && ne.Timeout(), strings.Contains(err.Error(), "timeout awaiting response headers"):
		status, msg = http.StatusGatewayTimeout, "upstream did not answer in time"
	}
	t, _ := r.Context().Value(targetKey{}).(*target)
	if t != nil {
		p.log.Info("proxy error", "host", r.Host, "path", r.URL.Path, "cluster", t.match.Route.ClusterUUID, "mode", t.mode, "status", status, "err", err)
	}
	http.Error(w, msg, status)
}

// statusRecorder remembers the final status, and counts the body bytes
// written, for metrics. It forwards Flush and the other optional interfaces
// (Hijack) through Unwrap (http.ResponseController).
type statusRecorder struct {
	http.ResponseWriter
	status  int
	written int64
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 && code >= 200 { // 1xx are informational, not the answer
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	n, err := s.ResponseWriter.Write(b)
	s.written += int64(n)
	return n, err
}

func (s *statusRecorder) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

func (s *statusRecorder) statusOr200() int {
	if s.status == 0 {
		return http.StatusOK
	}
	return s.status
}
