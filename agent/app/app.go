// Package app wires the agent together: register with the control plane
// (resuming with the cached cluster id), keep the tunnel to the gateway,
// heartbeat, sync PipeOps-managed Ingresses, serve the streams the gateway
// opens, and report health, metrics and status on the agent port.
package app

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/pipeops/tunnel/agent/apihealth"
	"github.com/pipeops/tunnel/agent/clusterinfo"
	"github.com/pipeops/tunnel/agent/config"
	"github.com/pipeops/tunnel/agent/ingresssync"
	"github.com/pipeops/tunnel/agent/jsonproxy"
	"github.com/pipeops/tunnel/agent/kubeapi"
	"github.com/pipeops/tunnel/agent/leader"
	"github.com/pipeops/tunnel/agent/register"
	"github.com/pipeops/tunnel/agent/routesapi"
	"github.com/pipeops/tunnel/agent/state"
	"github.com/pipeops/tunnel/agent/targets"
	"github.com/pipeops/tunnel/agent/tunnelclient"
	"github.com/pipeops/tunnel/shared/tunnel"
	"github.com/pipeops/tunnel/shared/version"
)

// RestConfig returns the Kubernetes client configuration: KUBECONFIG when
// set, the in-cluster ServiceAccount otherwise.
func RestConfig(cfg config.Config) (*rest.Config, error) {
	if cfg.Kubeconfig != "" {
		rc, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("KUBECONFIG=%s: %w", cfg.Kubeconfig, err)
		}
		return rc, nil
	}
	rc, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("not running in a cluster and KUBECONFIG is not set: %w", err)
	}
	return rc, nil
}

// App is one agent. New builds its Kubernetes clients and binds its
// port; Run registers with the control plane and keeps the tunnel. Call
// Run exactly once: it serves on the listener New opened and closes it.
type App struct {
	cfg       config.Config
	rc        *rest.Config
	log       *slog.Logger
	client    *kubernetes.Clientset
	store     state.Store
	saved     state.State // the registration of a previous run, if any
	tlsCfg    *tls.Config
	collector *clusterinfo.Collector
	info      tunnel.Register
	registry  *prometheus.Registry
	listener  net.Listener
	// api checks the path to the cluster's API server from the start:
	// readiness waits for it, and an outage is logged at once.
	api *apihealth.Probe
	// status and ready answer /status and /ready once the agent runs;
	// until then it answers as a registering agent.
	status atomic.Pointer[func() Status]
	ready  atomic.Pointer[func() (bool, string)]
}

// New builds an agent from cfg and the Kubernetes client configuration
// rc, reads the state a previous run saved, and listens on
// cfg.ListenAddr; Run starts it.
func New(ctx context.Context, cfg config.Config, rc *rest.Config, log *slog.Logger) (*App, error) {
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	meta, err := metadata.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	a := &App{cfg: cfg, rc: rc, log: log, client: client}
	if cfg.StateFile != "" {
		a.store = state.NewFile(cfg.StateFile)
	} else {
		a.store = state.NewKube(client, cfg.Namespace)
	}
	if cfg.InsecureTLS {
		log.Warn("PIPEOPS_INSECURE_SKIP_VERIFY is set: TLS certificates are not checked (development only)")
		a.tlsCfg = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // explicitly asked for
	}

	a.collector = clusterinfo.New(client, meta)
	if a.saved, err = a.store.Load(ctx); err != nil {
		log.Warn("could not read saved state; registering afresh", "err", err)
	}
	hostname, _ := os.Hostname()
	a.info = tunnel.Register{
		AgentID: cfg.AgentID, Name: cfg.ClusterName, K8sVersion: a.collector.KubernetesVersion(), Hostname: hostname,
		AgentVersion: version.Version,
		// PipeOps agents always send labels; hosted PipeOps shows them.
		Labels: map[string]string{"hostname": hostname, "agent.pipeops.io/version": version.Version},
		Features: map[string]any{"yamux": true, "ingress_sync": cfg.EnableIngress, "kubernetes_api": true,
			// The PipeOps feature flags this agent honours (package jsonproxy).
			"supports_gateway": true, "supports_streaming": true, "supports_response_streaming": true, "supports_websocket_proxy": true},
	}
	a.registry = prometheus.NewRegistry()
	a.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if a.api, err = apihealth.New(apihealth.Config{Client: client.Discovery().RESTClient(), Host: rc.Host,
		Logger: log, Metrics: a.registry}); err != nil {
		return nil, err
	}
	if a.listener, err = net.Listen("tcp", cfg.ListenAddr); err != nil {
		return nil, fmt.Errorf("AGENT_LISTEN_ADDR=%s: %w", cfg.ListenAddr, err)
	}
	return a, nil
}

// Run runs the agent until ctx ends, then drains the tunnel for
// cfg.DrainTimeout.
func (a *App) Run(ctx context.Context) error {
	// The health server comes up first: while the agent registers (the
	// control plane may be down, or refuse the token) /health answers, so
	// a liveness probe does not restart it, and /ready and /status say why
	// it is not ready.
	stopHealth := a.serveHealth()
	defer stopHealth()
	probeCtx, stopProbe := context.WithCancel(context.Background())
	var probe sync.WaitGroup
	probe.Go(func() { a.api.Run(probeCtx) })
	defer func() {
		stopProbe()
		probe.Wait()
	}()

	res, err := a.register(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while registering: a clean exit
		}
		return err
	}
	r, err := a.newRegistered(ctx, res)
	if err != nil {
		return err
	}
	defer r.close()
	a.serve(ctx, r)
	return nil
}

// serveHealth serves health, readiness, status and metrics on the
// listener until the returned function shuts it down.
func (a *App) serveHealth() (stop func()) {
	hs := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: handler(
		func() Status {
			if f := a.status.Load(); f != nil {
				return (*f)()
			}
			return Status{ClusterName: a.cfg.ClusterName, Mode: "registering", Version: version.String("pipeops-agent"), Routes: []string{}}
		},
		func() (bool, string) {
			if f := a.ready.Load(); f != nil {
				return (*f)()
			}
			return false, "registering with the control plane"
		}, a.registry, a.cfg.Pprof)}
	done := make(chan struct{})
	go func() { defer close(done); _ = hs.Serve(a.listener) }()
	return func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = hs.Shutdown(sctx)
		<-done
	}
}

// register registers until it succeeds or ctx ends, and saves the
// registration for the next run.
func (a *App) register(ctx context.Context) (register.Result, error) {
	reg := &register.Client{APIURL: a.cfg.APIURL, Token: a.cfg.Token, TLS: a.tlsCfg, Logger: a.log}
	res, err := registerLoop(ctx, reg, a.info, a.saved, a.log)
	if err != nil {
		return res, err
	}
	st := a.saved
	st.ClusterID, st.ClusterUUID, st.GatewayWSURL, st.AgentID = res.ClusterID, res.ClusterUUID, res.GatewayWSURL, a.cfg.AgentID
	if err := a.store.Save(ctx, st); err != nil {
		a.log.Warn("could not save state; a restart will register afresh", "err", err)
	}
	return res, nil
}

// registered is the agent once the control plane has named its cluster:
// the parts that serve that cluster through the tunnel.
type registered struct {
	res     register.Result
	log     *slog.Logger
	fwd     *kubeapi.Server
	syncer  *ingresssync.Syncer // nil with ingress sync off
	elector *leader.Elector     // nil without leader election
	factory informers.SharedInformerFactory
	jp      *jsonproxy.Handler
	tc      *tunnelclient.Client
	lastAck atomic.Int64 // unix nanoseconds of the last heartbeat_ack
	kick    chan struct{}
	beats   *heartbeatMetrics
}

// newRegistered builds the parts that serve the cluster res names; none
// of them runs yet.
func (a *App) newRegistered(ctx context.Context, res register.Result) (*registered, error) {
	cfg := a.cfg
	log := a.log.With("cluster", res.ClusterUUID)
	r := &registered{res: res, log: log, kick: make(chan struct{}, 1), beats: newHeartbeatMetrics(a.registry)}

	identity, err := kubeapi.NewIdentity(kubeapi.IdentityConfig{Impersonate: cfg.Impersonate,
		JWKSURL: strings.TrimSuffix(cfg.APIURL, "/") + "/.well-known/jwks.json", Client: httpClient(a.tlsCfg),
		Cluster: res.ClusterUUID, Logger: log, Metrics: a.registry})
	if err != nil {
		return nil, err
	}
	if !cfg.Impersonate {
		log.Info("AGENT_IMPERSONATE_USERS=false: Kubernetes API requests through the gateway run as the agent's ServiceAccount")
	} else if err := identity.Refresh(ctx); err != nil {
		log.Error("AGENT_IMPERSONATE_USERS=true, but the control plane's token keys cannot be fetched: Kubernetes API requests "+
			"are refused until they can be (against hosted PipeOps, which forwards no identities, set AGENT_IMPERSONATE_USERS=false)", "err", err)
	}
	if r.fwd, err = kubeapi.New(a.rc, identity, log); err != nil {
		return nil, err
	}

	if cfg.EnableIngress {
		var isLeader func() bool
		if cfg.LeaderElection {
			// Replicas whose views of the Ingresses differ for a moment
			// would undo each other's syncs: one sends, elected.
			r.elector = leader.New(leader.Config{Client: a.client, Namespace: cfg.Namespace, Identity: cfg.Instance, Logger: log,
				OnElected: func() { r.syncer.Resync() }})
			isLeader = r.elector.IsLeader
		}
		r.syncer, err = ingresssync.New(ingresssync.Config{
			ClusterUUID: res.ClusterUUID, Client: a.client, IngressController: cfg.IngressService,
			API:              &routesapi.Client{BaseURL: cfg.APIURL, Token: cfg.Token, HTTP: httpClient(a.tlsCfg), Logger: log},
			FullSyncInterval: cfg.FullSync, Logger: log, Metrics: a.registry, Leader: isLeader,
		})
		if err != nil {
			r.close()
			return nil, err
		}
	} else {
		log.Info("ENABLE_INGRESS_SYNC=false: no routes are synced, and only the Kubernetes API target is served")
	}

	r.factory = informers.NewSharedInformerFactory(a.client, 0)
	svcInf, sliceInf := r.factory.Core().V1().Services(), r.factory.Discovery().V1().EndpointSlices()
	svcInf.Informer()
	sliceInf.Informer()
	dialer := &targets.Dialer{KubeAPI: r.fwd.Dial, Allow: targets.AllowFunc(allowFor(r.syncer)),
		Services: svcInf.Lister(), Slices: sliceInf.Lister(), Logger: log}

	// The JSON proxy path (proxy_request, ws_start): how hosted PipeOps
	// reaches the Kubernetes API. Its answers go out on the tunnel.
	if r.jp, err = newJSONProxy(a.rc, identity, func(m tunnel.Message) error { return r.tc.Send(m) }, log, a.registry); err != nil {
		r.close()
		return nil, err
	}

	r.tc, err = tunnelclient.New(tunnelclient.Config{
		GatewayURL: res.GatewayWSURL, Token: cfg.Token, ClusterUUID: res.ClusterUUID, AgentVersion: version.Version,
		// Replicas of one cluster's agent hold their sessions side by
		// side, and a restarted replica replaces only its own.
		Instance:  cfg.Instance,
		TLSConfig: a.tlsCfg, Dialer: newCountingDialer(dialer, a.registry), DrainTimeout: cfg.DrainTimeout, Logger: log,
		Deliver: r.jp.Deliver, KubeAPIOverJSON: cfg.KubeAPIOverJSON, Impersonates: cfg.Impersonate,
		// Answers of requests in flight could reach nobody once the tunnel
		// is down, and the server that asked has given them up.
		OnDisconnect: r.jp.Reset,
		OnControl: func(m tunnel.Message) {
			if m.Type == tunnel.TypeHeartbeatAck {
				r.lastAck.Store(time.Now().UnixNano())
				r.beats.acked.Inc()
			}
		},
		OnConnect: func() {
			if r.syncer != nil {
				r.syncer.Resync() // the protocol's rule: a full sync after every reconnect
			}
			select {
			case r.kick <- struct{}{}:
			default:
			}
		},
	})
	if err != nil {
		r.close()
		return nil, err
	}
	a.registry.MustRegister(newTunnelCollector(r.tc))
	return r, nil
}

// close releases what newRegistered built, in the reverse order.
func (r *registered) close() {
	if r.jp != nil {
		r.jp.Close()
	}
	if r.fwd != nil {
		r.fwd.Close()
	}
}

// serve runs the cluster's parts until ctx ends: the tunnel on ctx, so
// that it drains (GoAway, open streams finish) before it returns, and the
// rest until then.
func (a *App) serve(ctx context.Context, r *registered) {
	runCtx, stop := context.WithCancel(context.Background())
	defer stop()
	var wg sync.WaitGroup
	goRun := func(f func(context.Context)) {
		wg.Go(func() { f(runCtx) })
	}
	goRun(func(ctx context.Context) { _ = a.collector.Run(ctx) })
	r.factory.Start(runCtx.Done())
	defer r.factory.Shutdown()
	if r.syncer != nil {
		goRun(func(ctx context.Context) {
			if err := r.syncer.Run(ctx); err != nil && ctx.Err() == nil {
				r.log.Error("route sync stopped", "err", err)
			}
		})
	}
	if r.elector != nil {
		// On runCtx: the leader keeps syncing while the tunnel drains, and
		// releases the Lease as it stops, so another replica takes over at
		// once rather than when the Lease expires.
		goRun(r.elector.Run)
	}
	goRun(func(ctx context.Context) {
		heartbeatLoop(ctx, a.cfg, r.tc, a.collector, r.syncer, r.res, r.kick, r.beats, r.log)
	})

	statusFn := r.status
	readyFn := func() (bool, string) {
		if ok, why := a.api.Up(); !ok {
			return false, why
		}
		return r.ready(a.cfg.HeartbeatMax)
	}
	a.status.Store(&statusFn)
	a.ready.Store(&readyFn)
	r.log.Info("agent running", "gateway", r.res.GatewayWSURL, "listen", a.listener.Addr().String(), "ingress_sync", a.cfg.EnableIngress)

	if r.syncer != nil {
		// Streams to the ingress controller are refused until it is
		// detected: a replica that restarts under load would refuse the
		// requests a gateway sends it in its first moments. Not forever:
		// the Kubernetes API streams need no detection.
		select {
		case <-r.syncer.Synced():
		case <-time.After(syncWait):
			r.log.Warn("ingress controller not detected yet; connecting the tunnel anyway (streams to it are refused until it is)", "waited", syncWait)
		case <-ctx.Done():
		}
	}
	_ = r.tc.Run(ctx)
	stop()
	wg.Wait()
}

// syncWait bounds how long the tunnel waits for the ingress controller's
// detection before it connects.
const syncWait = 10 * time.Second

// status is what /status reports of the running agent.
func (r *registered) status() Status {
	s := Status{ClusterID: r.res.ClusterUUID, ClusterName: r.res.Name, Connected: r.tc.Connected(), Mode: "tunnel", Version: version.String("pipeops-agent"), Routes: []string{}}
	if ns := r.lastAck.Load(); ns > 0 {
		t := time.Unix(0, ns)
		s.LastHeartbeat = &t
	}
	if r.syncer != nil {
		s.Mode, s.Endpoint, _ = r.syncer.Detection()
		for _, rt := range r.syncer.Routes() {
			s.Routes = append(s.Routes, rt.Hostname+rt.Path+" -> "+rt.Namespace+"/"+rt.ServiceName+":"+fmt.Sprint(rt.ServicePort))
		}
		sort.Strings(s.Routes)
	}
	return s
}

// ready is the running agent's readiness: a tunnel, and a heartbeat
// acknowledged within three times the longest heartbeat interval.
func (r *registered) ready(heartbeatMax time.Duration) (bool, string) {
	if !r.tc.Connected() {
		return false, "tunnel not connected"
	}
	if ack := r.lastAck.Load(); ack == 0 || time.Since(time.Unix(0, ack)) > 3*heartbeatMax {
		return false, "no heartbeat acknowledged recently"
	}
	return true, ""
}

// newJSONProxy builds the handler of the JSON proxy path on the agent's
// own credentials: client-go's transport (which follows token rotation)
// for HTTP, and the same credentials for WebSockets, as the person id
// says.
func newJSONProxy(rc *rest.Config, id *kubeapi.Identity, send func(tunnel.Message) error, log *slog.Logger, reg prometheus.Registerer) (*jsonproxy.Handler, error) {
	api, _, err := rest.DefaultServerUrlFor(rc)
	if err != nil {
		return nil, fmt.Errorf("json proxy: API server address: %w", err)
	}
	tr, err := rest.TransportFor(rc)
	if err != nil {
		return nil, fmt.Errorf("json proxy: transport: %w", err)
	}
	ws, err := jsonproxy.WebSocketDialerFor(rc)
	if err != nil {
		return nil, err
	}
	dial := func(ctx context.Context, rawURL string, header http.Header, subprotocols []string) (*websocket.Conn, *http.Response, error) {
		header = header.Clone()
		if err := id.Apply(ctx, header); err != nil {
			return nil, nil, err
		}
		return ws(ctx, rawURL, header, subprotocols)
	}
	return jsonproxy.New(jsonproxy.Config{Transport: id.RoundTripper(tr), APIServer: api, DialWebSocket: dial, Send: send, Logger: log, Metrics: reg})
}

func httpClient(tlsCfg *tls.Config) *http.Client {
	if tlsCfg == nil {
		return nil // routesapi's default
	}
	return &http.Client{Timeout: routesapi.DefaultTimeout, Transport: &http.Transport{TLSClientConfig: tlsCfg, Proxy: http.ProxyFromEnvironment}}
}

// allowFor admits the ingress controller and every Service a synced route
// names; with no syncer, no Service at all.
func allowFor(s *ingresssync.Syncer) func(targets.ServiceKey) bool {
	return func(k targets.ServiceKey) bool {
		if s == nil {
			return false
		}
		if _, _, ic := s.Detection(); ic != nil && ic.Namespace == k.Namespace && ic.Name == k.Name && ic.Port == k.Port {
			return true
		}
		for _, r := range s.Routes() {
			if r.Namespace == k.Namespace && r.ServiceName == k.Name && r.ServicePort == k.Port {
				return true
			}
		}
		return false
	}
}

// registerLoop registers until it succeeds or ctx ends. A refused token is
// logged as an error on every attempt (never a silent dead agent); when the
// control plane is unreachable and a previous registration is cached, the
// agent goes on with it, so an outage of the control plane does not take
// the tunnel down.
func registerLoop(ctx context.Context, reg *register.Client, info tunnel.Register, st state.State, log *slog.Logger) (register.Result, error) {
	delay := 500 * time.Millisecond
	for attempt := 1; ; attempt++ {
		res, err := reg.Register(ctx, info, st.ClusterID)
		if err == nil {
			log.Info("registered", "cluster", res.ClusterUUID, "name", res.Name, "resumed", res.Resumed, "gateway", res.GatewayWSURL)
			return res, nil
		}
		if ctx.Err() != nil {
			return register.Result{}, ctx.Err()
		}
		if errors.Is(err, register.ErrUnauthorized) {
			log.Error("the control plane refused PIPEOPS_TOKEN; check the token (retrying)", "err", err, "attempt", attempt)
		} else if st.ClusterUUID != "" && st.GatewayWSURL != "" {
			log.Warn("control plane unreachable; continuing with the saved registration", "err", err)
			return register.Result{ClusterID: st.ClusterID, ClusterUUID: st.ClusterUUID, GatewayWSURL: st.GatewayWSURL, Resumed: true}, nil
		} else {
			log.Warn("registration failed; retrying", "err", err, "attempt", attempt)
		}
		wait := delay/2 + rand.N(delay/2+1)
		select {
		case <-ctx.Done():
			return register.Result{}, ctx.Err()
		case <-time.After(wait):
		}
		delay = min(delay*2, 30*time.Second)
	}
}

// heartbeatLoop sends a heartbeat at HeartbeatMin after a (re)connect or a
// change in what it reports, stretching to HeartbeatMax while nothing
// changes.
func heartbeatLoop(ctx context.Context, cfg config.Config, tc *tunnelclient.Client, collector *clusterinfo.Collector,
	syncer *ingresssync.Syncer, res register.Result, kick <-chan struct{}, beats *heartbeatMetrics, log *slog.Logger) {
	interval := cfg.HeartbeatMin
	var last tunnel.HeartbeatMetadata
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-kick:
			interval = cfg.HeartbeatMin
		case <-timer.C:
		}
		md := collector.Snapshot(ctx)
		md.AgentVersion = version.Version
		md.IsPrivate = true
		if syncer != nil {
			md.GatewayRoutes = syncer.RouteCount()
			if mode, _, _ := syncer.Detection(); mode == "direct" {
				md.IsPrivate = false
			}
		}
		msg, err := tunnel.NewMessage(tunnel.TypeHeartbeat, tunnel.Heartbeat{
			ClusterID: res.ClusterUUID, AgentID: cfg.AgentID, Status: tunnel.StatusHealthy, TunnelStatus: "connected", Metadata: md,
		})
		if err == nil {
			err = tc.Send(msg)
		}
		if err != nil {
			beats.failed.Inc()
		} else {
			beats.sent.Inc()
		}
		switch {
		case err != nil:
			interval = cfg.HeartbeatMin
			log.Debug("heartbeat not sent", "err", err)
		case md == last:
			interval = min(interval*2, cfg.HeartbeatMax)
		default:
			interval = cfg.HeartbeatMin
		}
		last = md
		timer.Reset(interval)
	}
}
