// Package server wires the gateway together: the route table following
// PostgreSQL, agent sessions, the public proxy, the Kubernetes API path, the
// admin endpoints, and graceful shutdown.
package server

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/crypto/acme/autocert"

	"github.com/pipeops/tunnel/controlplane/postgres"
	"github.com/pipeops/tunnel/gateway/audit"
	"github.com/pipeops/tunnel/gateway/authn"
	"github.com/pipeops/tunnel/gateway/heartbeat"
	"github.com/pipeops/tunnel/gateway/peers"
	"github.com/pipeops/tunnel/gateway/proxy"
	"github.com/pipeops/tunnel/gateway/routetable"
	"github.com/pipeops/tunnel/gateway/session"
	"github.com/pipeops/tunnel/gateway/traffic"
	"github.com/pipeops/tunnel/shared/auth"
	"github.com/pipeops/tunnel/shared/keyset"
	"github.com/pipeops/tunnel/shared/revocation"
	"github.com/pipeops/tunnel/shared/tunnel"
	"github.com/pipeops/tunnel/shared/wsconn"
)

// Gateway is a running gateway's parts, for tests and for Run.
type Gateway struct {
	cfg      Config
	log      *slog.Logger
	db       *postgres.DB
	routes   *routetable.Store
	sessions *session.Registry
	proxy    *proxy.Proxy
	k8s      *proxy.K8s
	recorder *heartbeat.Recorder
	// peers, when PEER_ADDR is set, forwards streams to the gateways that
	// hold the clusters this one does not, and serves theirs.
	peers    *peers.Peers
	audit    *audit.Recorder
	traffic  *traffic.Recorder
	revs     *authn.Revocations
	registry *prometheus.Registry
	draining atomic.Bool
	gwHosts  map[string]bool
	// acmeRefused counts the names the ACME host policy refused;
	// acmeRefusals keeps their log lines few (see allowCertificate).
	acmeRefused prometheus.Counter
	// plainK8s counts Kubernetes API requests refused on plain HTTP.
	plainK8s     prometheus.Counter
	acmeRefusals *logLimiter
	// certExpiry exports the served certificates' expiry.
	certExpiry *CertExpiry
	// cpTransport carries the JWKS fetches to the control plane.
	cpTransport *http.Transport

	// conns re-checks the tokens of the agent sessions and /k8s requests
	// while they stay open; sessionConns holds each session's unregister
	// function (*session.Session -> func()).
	conns        *revocation.Tracker
	sessionConns sync.Map
}

// New builds a gateway; Run starts it.
func New(ctx context.Context, cfg Config, log *slog.Logger) (*Gateway, error) {
	db, err := postgres.Open(ctx, cfg.DatabaseURL)
	if err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	g := &Gateway{cfg: cfg, log: log, db: db, registry: reg, gwHosts: map[string]bool{},
		acmeRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pipeops_gateway_acme_refused_total",
			Help: "Certificate requests (TLS handshakes, HTTP-01 challenge requests) for names that are neither a gateway host nor routed; none reaches the ACME CA.",
		}),
		acmeRefusals: newLogLimiter(time.Minute, maxRefusalLines, time.Now),
		plainK8s: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pipeops_gateway_k8s_plain_http_refused_total",
			Help: "Kubernetes API requests refused because they came over plain HTTP (K8S_ALLOW_PLAIN_HTTP is off).",
		}),
	}
	reg.MustRegister(g.acmeRefused, g.plainK8s)
	g.certExpiry = NewCertExpiry(reg)
	for _, h := range cfg.GatewayHosts {
		g.gwHosts[h] = true
	}
	authMetrics := authn.NewMetrics(reg)
	// A transport of its own, so shutdown can close its idle connection.
	g.cpTransport = &http.Transport{Proxy: http.ProxyFromEnvironment, IdleConnTimeout: 90 * time.Second}
	jwks := &keyset.JWKS{URL: cfg.ControlPlaneURL + "/.well-known/jwks.json", Logger: log, Metrics: authMetrics,
		Client: &http.Client{Timeout: keyset.DefaultJWKSTimeout, Transport: g.cpTransport}}
	if err := jwks.Refresh(ctx); err != nil {
		// Not fatal: the control plane may start after us; tokens are
		// refused until the keys arrive, and that is logged on each try.
		log.Warn("control plane keys not available yet", "url", jwks.URL, "err", err)
	}
	g.revs = &authn.Revocations{Store: db, Logger: log, Metrics: authMetrics}
	verifier := &auth.Verifier{Keys: jwks, Revoked: g.revs, Records: g.revs, OnRefuse: authMetrics.TokenRefused}
	g.conns, err = revocation.New(revocation.Config{Checker: g.revs, Interval: cfg.RevokeInterval, Logger: log,
		Metrics: reg, MetricsNamespace: "pipeops_gateway", Kinds: []string{agentSessionKind, proxy.K8sConnKind}})
	if err != nil {
		db.Close()
		return nil, err
	}
	g.routes = routetable.NewStore(db, routetable.Options{ReloadInterval: cfg.ReloadInterval, Logger: log, Metrics: reg})
	g.recorder = &heartbeat.Recorder{Store: db, GatewayID: cfg.GatewayID, Logger: log, Metrics: heartbeat.NewMetrics(reg)}
	// The registry and the peers need each other: the peers dial the
	// registry's own sessions, the registry forwards through the peers.
	var forward session.Forwarder
	local := &localSessions{}
	if cfg.PeerAddr != "" {
		g.peers, err = peers.New(peers.Config{Store: db, ID: cfg.GatewayID, URL: cfg.PeerURL, Secret: []byte(cfg.PeerSecret),
			Local: local, Logger: log, Metrics: reg})
		if err != nil {
			db.Close()
			return nil, err
		}
		forward = g.peers
		g.recorder.StillReached = func(cluster string) bool { _, ok := g.peers.Reach(cluster); return ok }
	}
	g.sessions, err = session.NewRegistry(session.Config{
		Auth:                 session.JWTAuthenticator{Verifier: verifier},
		Control:              g.recorder,
		Yamux:                tunnel.YamuxConfig{MaxStreamWindowSize: cfg.StreamWindow},
		AgentStreamWindow:    cfg.AgentWindow,
		MaxStreamsPerSession: cfg.MaxStreams,
		Logger:               log,
		Metrics:              reg,
		// The session hooks, unlike Connected/Disconnected, ignore the end of
		// a session replaced by the same agent's reconnect.
		OnConnect: func(s *session.Session) {
			g.recorder.SessionStarted(s)
			g.trackSession(s)
			if g.peers != nil {
				g.peers.SessionsChanged(s.Cluster)
			}
		},
		OnDisconnect: func(s *session.Session) {
			g.untrackSession(s)
			g.recorder.SessionEnded(s)
			if g.peers != nil {
				g.peers.SessionsChanged(s.Cluster)
			}
		},
		OnDrain: func(s *session.Session) {
			if g.peers != nil {
				g.peers.SessionsChanged(s.Cluster)
			}
		},
		Forward: forward,
	})
	if err != nil {
		db.Close()
		return nil, err
	}
	local.Registry = g.sessions
	g.traffic = traffic.New(traffic.Config{Store: db, Logger: log, Metrics: reg, Retention: cfg.TrafficMaxAge})
	g.proxy, err = proxy.New(proxy.Config{Routes: g.routes, Tunnels: g.sessions, ResponseHeaderTimeout: cfg.HeaderTimeout,
		MaxRequestBody: cfg.MaxRequestBody, Logger: log, Metrics: reg, Traffic: g.traffic})
	if err != nil {
		db.Close()
		return nil, err
	}
	g.audit = audit.New(audit.Config{Store: db, Logger: log, Metrics: reg, Queue: cfg.AuditQueue, Retention: cfg.AuditRetention, MaxRows: cfg.AuditMaxRows})
	g.k8s = proxy.NewK8s(proxy.K8sConfig{Audit: g.audit, Verifier: verifier, Tunnels: g.sessions, MaxRequestBody: cfg.MaxRequestBody, Logger: log, Metrics: reg,
		Connections: g.conns, Clusters: g.db})
	return g, nil
}

// Handler is the public handler: the gateway's own endpoints (/ws for
// agents, /k8s/ for the Kubernetes API) on the gateway hosts, everything
// else routed by Host. Without GATEWAY_HOSTS, the gateway's endpoints answer
// on any host that has no route, so an application's own /ws is never
// shadowed.
func (g *Gateway) Handler() http.Handler {
	own := http.NewServeMux()
	own.Handle("/ws", g.sessions)
	own.Handle(proxy.K8sPrefix, g.k8s)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := strings.ToLower(r.Host)
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		if ref, ok := g.k8sHost(host, r.TLS); ok {
			if r.TLS == nil && !g.cfg.K8sPlainHTTP {
				g.refusePlainK8s(w, r)
				return
			}
			g.k8s.ServeCluster(w, r, ref, r.URL.Path)
			return
		}
		isK8s := strings.HasPrefix(r.URL.Path, proxy.K8sPrefix)
		isOwnPath := r.URL.Path == "/ws" || isK8s
		if isOwnPath {
			ours := len(g.gwHosts) > 0 && g.gwHosts[host]
			if len(g.gwHosts) == 0 {
				_, routed := g.routes.Lookup(r.Host, r.URL.Path)
				ours = !routed
			}
			if ours && isK8s && r.TLS == nil && !g.cfg.K8sPlainHTTP {
				g.refusePlainK8s(w, r)
				return
			}
			if ours {
				own.ServeHTTP(w, r)
				return
			}
		}
		g.proxy.ServeHTTP(w, r)
	})
}

// k8sHost returns the cluster a request names with a host name under
// K8S_API_DOMAIN, {cluster}.{domain}: in its Host, or else in the server
// name of its TLS connection. The latter lets a kubeconfig reach the
// cluster at the gateway's own URL with tls-server-name set, with no DNS
// record per cluster (see the control plane's kubeconfig).
func (g *Gateway) k8sHost(host string, cs *tls.ConnectionState) (cluster string, ok bool) {
	if g.cfg.K8sAPIDomain == "" {
		return "", false
	}
	names := []string{host}
	if cs != nil {
		names = append(names, strings.ToLower(strings.TrimSuffix(cs.ServerName, ".")))
	}
	for _, name := range names {
		cluster, ok = strings.CutSuffix(name, "."+g.cfg.K8sAPIDomain)
		if ok && cluster != "" && !strings.Contains(cluster, ".") {
			return cluster, true
		}
	}
	return "", false
}

// refusePlainK8s answers a Kubernetes API request that came over plain
// HTTP, without reading its token: a Status kubectl prints, telling the
// person to use HTTPS and to revoke a token that crossed in the clear.
func (g *Gateway) refusePlainK8s(w http.ResponseWriter, r *http.Request) {
	g.plainK8s.Inc()
	msg := "the Kubernetes API is served only over HTTPS: use https:// in the kubeconfig's server URL"
	if r.Header.Get("Authorization") != "" {
		msg += "; the token sent with this request crossed the network unencrypted: revoke it (pipeops-controlplane token revoke)"
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusForbidden)
	_ = json.NewEncoder(w).Encode(map[string]any{"kind": "Status", "apiVersion": "v1", "status": "Failure",
		"reason": "Forbidden", "code": http.StatusForbidden, "message": msg})
}

// AdminHandler serves /healthz, /readyz, /metrics and /debug/pprof/ (the
// admin listener is for operators: loopback by default).
func (g *Gateway) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		st := g.routes.Status()
		switch {
		case g.draining.Load():
			http.Error(w, "draining", http.StatusServiceUnavailable)
		case !st.Loaded:
			http.Error(w, "route table not loaded yet: "+st.LastError, http.StatusServiceUnavailable)
		default:
			// A stale table still serves: ready, but say so.
			fmt.Fprintf(w, "ok routes=%d listening=%v stale=%v last_error=%q agents=%d\n",
				st.Routes, st.Listening, st.Stale, st.LastError, len(g.sessions.Clusters()))
		}
	})
	mux.Handle("/metrics", promhttp.HandlerFor(g.registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// Run serves until ctx ends, then shuts down in phases: fail readiness, stop
// accepting, GoAway to agents and drain in-flight requests up to
// SHUTDOWN_TIMEOUT, close. Every goroutine it starts has ended when it
// returns.
func (g *Gateway) Run(ctx context.Context) error {
	defer g.db.Close()
	stopBackground := g.startBackground()
	ls := &listeners{}
	err := g.listen(ls)
	if err == nil {
		select {
		case <-ctx.Done():
		case err = <-ls.errc:
			err = fmt.Errorf("serve: %w", err)
		}
	}
	g.drain(ls)
	// After the drain: what the audit recorder has queued by then is
	// written before Run returns.
	stopBackground()
	g.cpTransport.CloseIdleConnections()
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// startBackground starts the gateway's background loops (route table,
// heartbeat flushes, revocation checks, audit writes, traffic flushes) and
// returns the function that stops them and waits for them.
func (g *Gateway) startBackground() (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = g.routes.Run(ctx) })
	wg.Go(func() { g.recorder.Run(ctx) })
	wg.Go(func() { g.conns.Run(ctx) })
	wg.Go(func() { _ = g.audit.Run(ctx) })
	wg.Go(func() { g.traffic.Run(ctx) })
	if g.peers != nil {
		wg.Go(func() { g.peers.Run(ctx) })
	}
	return func() {
		cancel()
		wg.Wait()
	}
}

// listeners are the gateway's running HTTP servers: the first error of any
// of them arrives on errc, and wg waits for their Serve calls to return.
type listeners struct {
	servers []*http.Server
	errc    chan error
	wg      sync.WaitGroup
	// acme, when set, answers HTTP-01 challenges and TLS-ALPN handshakes;
	// it is closed only after the servers, as one may still be in flight.
	acme *ACME
	// peer is the peer listener's server, apart from servers: it serves the
	// other gateways until this one's sessions are closed.
	peer *http.Server
}

// listen starts the HTTPS (when configured), HTTP and admin servers into
// ls. On an error the servers already started stay in ls, for drain.
func (g *Gateway) listen(ls *listeners) error {
	ls.errc = make(chan error, 4)
	var acmeMgr *autocert.Manager
	if g.cfg.ACME {
		a, err := NewACME(g.cfg, g.allowCertificate)
		if err != nil {
			return err
		}
		ls.acme, acmeMgr = a, a.Manager
	}
	public := g.Handler()
	if g.cfg.HTTPSAddr != "" {
		tlsCfg, err := LoadTLS(g.cfg, acmeMgr, g.certExpiry)
		if err != nil {
			return err
		}
		if err := g.serve(ls, "https", g.cfg.HTTPSAddr, public, tlsCfg); err != nil {
			return err
		}
	}
	plain := public
	if g.cfg.RedirectHTTPS {
		plain = redirectHTTPS(g.cfg.HTTPSAddr)
	}
	if acmeMgr != nil {
		plain = acmeMgr.HTTPHandler(plain) // HTTP-01 challenges first
	}
	if err := g.serve(ls, "http", g.cfg.HTTPAddr, plain, nil); err != nil {
		return err
	}
	if g.peers != nil {
		if err := g.serve(ls, "peer", g.cfg.PeerAddr, g.peers.Handler(), nil); err != nil {
			return err
		}
		ls.peer = ls.servers[len(ls.servers)-1]
		ls.servers = ls.servers[:len(ls.servers)-1]
	}
	return g.serve(ls, "admin", g.cfg.AdminAddr, g.AdminHandler(), nil)
}

// serve starts one server on addr, with TLS when tlsCfg is set.
func (g *Gateway) serve(ls *listeners, name, addr string, h http.Handler, tlsCfg *tls.Config) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("%s listener on %s: %w", name, addr, err)
	}
	hs := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: g.cfg.IdleTimeout, TLSConfig: tlsCfg,
		MaxHeaderBytes: g.cfg.MaxHeaderBytes,
		ErrorLog:       slog.NewLogLogger(g.log.Handler(), slog.LevelDebug)}
	ls.servers = append(ls.servers, hs)
	g.log.Info("listening", "listener", name, "addr", l.Addr().String())
	ls.wg.Go(func() {
		var err error
		if tlsCfg != nil {
			// Buffered reads and batched writes under TLS: one system call per
			// burst or message instead of one per 16 KiB record (agent tunnels).
			err = hs.ServeTLS(wsconn.BufferedListener(l), "", "")
		} else {
			err = hs.Serve(l)
		}
		select {
		case ls.errc <- err:
		default: // an earlier error is already there; Run reads one
		}
	})
	return nil
}

// drain shuts the servers down in phases: readiness fails, the listeners
// stop accepting, agents get GoAway and requests in flight finish, all
// within SHUTDOWN_TIMEOUT; then what is left is closed.
func (g *Gateway) drain(ls *listeners) {
	g.log.Info("shutting down: draining", "timeout", g.cfg.ShutdownTimeout)
	g.draining.Store(true)
	sctx, cancel := context.WithTimeout(context.Background(), g.cfg.ShutdownTimeout)
	defer cancel()
	// WebSockets cannot move to another gateway and seldom end on their
	// own: they get UPGRADE_DRAIN_TIMEOUT, then their clients reconnect.
	closeUpgrades := time.AfterFunc(g.cfg.UpgradeDrain, g.proxy.CloseUpgrades)
	defer closeUpgrades.Stop()
	var wg sync.WaitGroup
	for _, hs := range ls.servers {
		wg.Go(func() {
			if err := hs.Shutdown(sctx); err != nil {
				hs.Close()
			}
		})
	}
	// Pooled idle streams to agents would hold the drain open until the
	// timeout: keep closing them while requests in flight (and upgraded
	// connections) finish.
	drained := make(chan struct{})
	wg.Go(func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			g.proxy.CloseIdleConnections()
			g.k8s.Close()
			select {
			case <-drained:
				return
			case <-tick.C:
			}
		}
	})
	// The sessions retire (the other gateways forward to them only while
	// the agents have no other tunnel), the agents get go-away and move to
	// the other gateways, and the streams open finish.
	derr := g.sessions.Shutdown(sctx)
	close(drained)
	if derr != nil {
		g.log.Warn("agent sessions cut before their streams finished", "err", derr)
	}
	if g.peers != nil {
		if err := g.peers.Stop(sctx); err != nil {
			g.log.Warn("peer gateways: could not withdraw this gateway; they stop forwarding to it once its record is stale", "err", err)
		}
		if ls.peer != nil {
			if err := ls.peer.Shutdown(sctx); err != nil {
				ls.peer.Close()
			}
		}
		g.peers.Close()
	}
	wg.Wait()
	ls.wg.Wait()
	g.proxy.Close()
	g.k8s.Close()
	if ls.acme != nil {
		ls.acme.Close()
	}
}

// maxRefusalLines bounds the ACME refusal lines logged per minute, whatever
// the number of distinct names refused.
const maxRefusalLines = 20

// allowCertificate is the ACME host policy, the only one: it says whether
// the CA may be asked for host (lower case, no port), which must be one of
// the gateway's own hosts or a host with a route. The route table only
// holds verified routes, so a visitor's made-up SNI or Host never reaches
// the CA. Refusals are counted, and logged at most once per host per minute
// and maxRefusalLines times per minute in all: scanners send made-up names
// by the thousand.
func (g *Gateway) allowCertificate(host string) bool {
	if g.gwHosts[host] {
		return true
	}
	if _, ok := g.routes.Lookup(host, "/"); ok {
		return true
	}
	g.acmeRefused.Inc()
	if len(host) > 253 {
		host = host[:253] + "..." // longer than any DNS name; keep the log line short
	}
	if ok, held := g.acmeRefusals.allow(host); ok {
		g.log.Info("acme: no certificate requested for a host without a route", "host", host, "refusals_not_logged", held)
	}
	return false
}

// agentSessionKind is the kind under which agent sessions are registered
// with the revocation tracker (a metric label).
const agentSessionKind = "agent_session"

// trackSession registers a new agent session with the revocation tracker,
// which closes it within REVOCATION_CHECK_INTERVAL of its token's revocation
// and when its token expires. Called from the registry's OnConnect hook;
// untrackSession, from OnDisconnect, undoes it for every session.
func (g *Gateway) trackSession(s *session.Session) {
	unregister := g.conns.Register(revocation.Conn{Kind: agentSessionKind, TokenID: s.Info.TokenID,
		Expires: s.Info.TokenExpires, Cluster: s.Cluster, Cut: func(error) { s.Close() }})
	g.sessionConns.Store(s, unregister)
}

func (g *Gateway) untrackSession(s *session.Session) {
	if unregister, ok := g.sessionConns.LoadAndDelete(s); ok {
		unregister.(func())()
	}
}

// localSessions is the registry's own sessions, for the peers (set once
// the registry exists, before anything runs).
type localSessions struct{ *session.Registry }

func redirectHTTPS(httpsAddr string) http.Handler {
	_, port, _ := net.SplitHostPort(httpsAddr)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		if port != "" && port != "443" {
			host = net.JoinHostPort(host, port)
		}
		http.Redirect(w, r, "https://"+host+r.URL.RequestURI(), http.StatusPermanentRedirect)
	})
}
