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

	"github.com/pipeops/tunnel/agent/clusterinfo"
	"github.com/pipeops/tunnel/agent/config"
	"github.com/pipeops/tunnel/agent/ingresssync"
	"github.com/pipeops/tunnel/agent/jsonproxy"
	"github.com/pipeops/tunnel/agent/kubeapi"
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

// Run runs the agent until ctx ends, then drains the tunnel for
// cfg.DrainTimeout.
func Run(ctx context.Context, cfg config.Config, rc *rest.Config, log *slog.Logger) error {
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	meta, err := metadata.NewForConfig(rc)
	if err != nil {
		return err
	}
	var store state.Store
	if cfg.StateFile != "" {
		store = state.NewFile(cfg.StateFile)
	} else {
		store = state.NewKube(client, cfg.Namespace)
	}
	var tlsCfg *tls.Config
	if cfg.InsecureTLS {
		log.Warn("PIPEOPS_INSECURE_SKIP_VERIFY is set: TLS certificates are not checked (development only)")
		tlsCfg = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // explicitly asked for
	}

	collector := clusterinfo.New(client, meta)
	st, err := store.Load(ctx)
	if err != nil {
		log.Warn("could not read saved state; registering afresh", "err", err)
	}
	hostname, _ := os.Hostname()
	info := tunnel.Register{
		AgentID: cfg.AgentID, Name: cfg.ClusterName, K8sVersion: collector.KubernetesVersion(), Hostname: hostname,
		AgentVersion: version.Version,
		// PipeOps agents always send labels; hosted PipeOps shows them.
		Labels: map[string]string{"hostname": hostname, "agent.pipeops.io/version": version.Version},
		Features: map[string]any{"yamux": true, "ingress_sync": cfg.EnableIngress, "kubernetes_api": true,
			// The PipeOps feature flags this agent honours (package jsonproxy).
			"supports_gateway": true, "supports_streaming": true, "supports_response_streaming": true, "supports_websocket_proxy": true},
	}
	// The health server comes up first: while the agent registers (the
	// control plane may be down, or refuse the token) /health answers, so
	// a liveness probe does not restart it, and /ready and /status say why
	// it is not ready.
	registry := prometheus.NewRegistry()
	registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	var statusP atomic.Pointer[func() Status]
	var readyP atomic.Pointer[func() (bool, string)]
	l, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		return fmt.Errorf("AGENT_LISTEN_ADDR=%s: %w", cfg.ListenAddr, err)
	}
	hs := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: handler(
		func() Status {
			if f := statusP.Load(); f != nil {
				return (*f)()
			}
			return Status{ClusterName: cfg.ClusterName, Mode: "registering", Version: version.String("pipeops-agent"), Routes: []string{}}
		},
		func() (bool, string) {
			if f := readyP.Load(); f != nil {
				return (*f)()
			}
			return false, "registering with the control plane"
		}, registry, cfg.Pprof)}
	httpDone := make(chan struct{})
	go func() { defer close(httpDone); _ = hs.Serve(l) }()
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = hs.Shutdown(sctx)
		<-httpDone
	}()

	reg := &register.Client{APIURL: cfg.APIURL, Token: cfg.Token, TLS: tlsCfg, Logger: log}
	res, err := registerLoop(ctx, reg, info, st, log)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while registering: a clean exit
		}
		return err
	}
	st.ClusterID, st.ClusterUUID, st.GatewayWSURL, st.AgentID = res.ClusterID, res.ClusterUUID, res.GatewayWSURL, cfg.AgentID
	if err := store.Save(ctx, st); err != nil {
		log.Warn("could not save state; a restart will register afresh", "err", err)
	}
	log = log.With("cluster", res.ClusterUUID)

	identity, err := kubeapi.NewIdentity(kubeapi.IdentityConfig{Impersonate: cfg.Impersonate,
		JWKSURL: strings.TrimSuffix(cfg.APIURL, "/") + "/.well-known/jwks.json", Client: httpClient(tlsCfg),
		Cluster: res.ClusterUUID, Logger: log, Metrics: registry})
	if err != nil {
		return err
	}
	if !cfg.Impersonate {
		log.Info("AGENT_IMPERSONATE_USERS=false: Kubernetes API requests through the gateway run as the agent's ServiceAccount")
	} else if err := identity.Refresh(ctx); err != nil {
		log.Error("AGENT_IMPERSONATE_USERS=true, but the control plane's token keys cannot be fetched: Kubernetes API requests "+
			"are refused until they can be (against hosted PipeOps, which forwards no identities, set AGENT_IMPERSONATE_USERS=false)", "err", err)
	}
	fwd, err := kubeapi.New(rc, identity, log)
	if err != nil {
		return err
	}
	defer fwd.Close()

	var syncer *ingresssync.Syncer
	if cfg.EnableIngress {
		syncer, err = ingresssync.New(ingresssync.Config{
			ClusterUUID: res.ClusterUUID, Client: client, IngressController: cfg.IngressService,
			API:              &routesapi.Client{BaseURL: cfg.APIURL, Token: cfg.Token, HTTP: httpClient(tlsCfg), Logger: log},
			FullSyncInterval: cfg.FullSync, Logger: log, Metrics: registry,
		})
		if err != nil {
			return err
		}
	} else {
		log.Info("ENABLE_INGRESS_SYNC=false: no routes are synced, and only the Kubernetes API target is served")
	}

	factory := informers.NewSharedInformerFactory(client, 0)
	svcInf, sliceInf := factory.Core().V1().Services(), factory.Discovery().V1().EndpointSlices()
	svcInf.Informer()
	sliceInf.Informer()
	dialer := &targets.Dialer{KubeAPI: fwd.Dial, Allow: targets.AllowFunc(allowFor(syncer)),
		Services: svcInf.Lister(), Slices: sliceInf.Lister(), Logger: log}

	// The JSON proxy path (proxy_request, ws_start): how hosted PipeOps
	// reaches the Kubernetes API. Its answers go out on the tunnel.
	var tc *tunnelclient.Client
	jp, err := newJSONProxy(rc, identity, func(m tunnel.Message) error { return tc.Send(m) }, log, registry)
	if err != nil {
		return err
	}
	defer jp.Close()

	var lastAck atomic.Int64
	kick := make(chan struct{}, 1)
	tc, err = tunnelclient.New(tunnelclient.Config{
		GatewayURL: res.GatewayWSURL, Token: cfg.Token, ClusterUUID: res.ClusterUUID, AgentVersion: version.Version,
		TLSConfig: tlsCfg, Dialer: dialer, DrainTimeout: cfg.DrainTimeout, Logger: log,
		Deliver: jp.Deliver, KubeAPIOverJSON: cfg.KubeAPIOverJSON, Impersonates: cfg.Impersonate,
		// Answers of requests in flight could reach nobody once the tunnel
		// is down, and the server that asked has given them up.
		OnDisconnect: jp.Reset,
		OnControl: func(m tunnel.Message) {
			if m.Type == tunnel.TypeHeartbeatAck {
				lastAck.Store(time.Now().UnixNano())
			}
		},
		OnConnect: func() {
			if syncer != nil {
				syncer.Resync() // the protocol's rule: a full sync after every reconnect
			}
			select {
			case kick <- struct{}{}:
			default:
			}
		},
	})
	if err != nil {
		return err
	}

	statusFn := func() Status {
		s := Status{ClusterID: res.ClusterUUID, ClusterName: res.Name, Connected: tc.Connected(), Mode: "tunnel", Version: version.String("pipeops-agent"), Routes: []string{}}
		if ns := lastAck.Load(); ns > 0 {
			t := time.Unix(0, ns)
			s.LastHeartbeat = &t
		}
		if syncer != nil {
			s.Mode, s.Endpoint, _ = syncer.Detection()
			for _, r := range syncer.Routes() {
				s.Routes = append(s.Routes, r.Hostname+r.Path+" -> "+r.Namespace+"/"+r.ServiceName+":"+fmt.Sprint(r.ServicePort))
			}
			sort.Strings(s.Routes)
		}
		return s
	}
	readyFn := func() (bool, string) {
		if !tc.Connected() {
			return false, "tunnel not connected"
		}
		if ack := lastAck.Load(); ack == 0 || time.Since(time.Unix(0, ack)) > 3*cfg.HeartbeatMax {
			return false, "no heartbeat acknowledged recently"
		}
		return true, ""
	}

	runCtx, stop := context.WithCancel(context.Background())
	defer stop()
	var wg sync.WaitGroup
	goRun := func(f func(context.Context)) {
		wg.Add(1)
		go func() { defer wg.Done(); f(runCtx) }()
	}
	goRun(func(ctx context.Context) { _ = collector.Run(ctx) })
	factory.Start(runCtx.Done())
	defer factory.Shutdown()
	if syncer != nil {
		goRun(func(ctx context.Context) {
			if err := syncer.Run(ctx); err != nil && ctx.Err() == nil {
				log.Error("route sync stopped", "err", err)
			}
		})
	}
	goRun(func(ctx context.Context) { heartbeatLoop(ctx, cfg, tc, collector, syncer, res, kick, log) })

	statusP.Store(&statusFn)
	readyP.Store(&readyFn)
	log.Info("agent running", "gateway", res.GatewayWSURL, "listen", l.Addr().String(), "ingress_sync", cfg.EnableIngress)

	// The tunnel runs on the caller's ctx: when it ends, the client drains
	// (GoAway, open streams finish) and returns.
	_ = tc.Run(ctx)
	stop()
	wg.Wait()
	return nil
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
	syncer *ingresssync.Syncer, res register.Result, kick <-chan struct{}, log *slog.Logger) {
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
