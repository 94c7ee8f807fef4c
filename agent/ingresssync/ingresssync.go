// Package ingresssync keeps the control plane's routes of the cluster in step
// with the cluster's managed Ingresses.
//
// A Syncer watches Ingresses and Services of every namespace through shared
// informers. Informer event handlers only put keys on a rate-limited work
// queue; one worker goroutine does every call to the control plane, so
// incremental changes and full syncs never race one another and retries back
// off exponentially per key.
//
// Incremental changes: the Syncer remembers, per Ingress, the routes it last
// sent (hostname -> routes). When an Ingress changes it unregisters the
// hostnames that went away and registers every route of a new or changed
// hostname. The control plane keys routes by (hostname, path) and upserts on
// register, so a path that disappears from a hostname that stays cannot be
// removed by Register; that case, and a hostname that another Ingress still
// uses, is settled by a full sync instead. Nothing is sent when nothing
// changed, so informer resyncs cost no calls.
//
// Full syncs send every managed Ingress together with the cluster's detected
// ingress controller and routing mode: once the caches have synced, on
// Resync, every FullSyncInterval, and whenever detection changes.
package ingresssync

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	networkinglisters "k8s.io/client-go/listers/networking/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/pipeops/tunnel/agent/routesapi"
)

// Marks of a managed Ingress: either is enough.
const (
	LabelManaged        = "pipeops.io/managed"    // value "true"
	AnnotationManagedBy = "pipeops.io/managed-by" // value "pipeops"
)

// Routing modes reported to the control plane.
const (
	RoutingTunnel = "tunnel"
	RoutingDirect = "direct"
)

// Defaults of Config.
const (
	DefaultFullSyncInterval = 4 * time.Hour
	DefaultResyncPeriod     = 10 * time.Minute
	DefaultRetryBaseDelay   = time.Second
	DefaultRetryMaxDelay    = 5 * time.Minute
)

// WellKnownIngressControllers are the Services looked for, in this order,
// when Config.IngressController is empty.
var WellKnownIngressControllers = []string{
	"ingress-nginx/ingress-nginx-controller",
	"kube-system/ingress-nginx-controller",
	"traefik/traefik",
	"kube-system/traefik",
}

// Queue keys that are not Ingress keys; a NUL byte cannot occur in a
// "namespace/name" key.
const (
	fullSyncKey = "\x00full-sync"
	detectKey   = "\x00detect"
)

// lastApplied is kubectl's copy of the whole object: large, and of no use to
// the gateway, so it is not sent.
const lastApplied = "kubectl.kubernetes.io/last-applied-configuration"

// RouteAPI is the part of the control plane's routes API the Syncer uses;
// *routesapi.Client implements it.
type RouteAPI interface {
	Register(ctx context.Context, clusterUUID string, r routesapi.Route) error
	Unregister(ctx context.Context, clusterUUID, hostname string) error
	Sync(ctx context.Context, s routesapi.Sync) error
}

// Config configures a Syncer. ClusterUUID, API and Client are required.
type Config struct {
	ClusterUUID string
	API         RouteAPI
	// Leader, when set, says whether this replica of the agent syncs the
	// routes (package leader). While it says no, the Syncer watches and
	// keeps its record of the routes as if it had sent them (the stream
	// targets it allows need them) but sends nothing; call Resync when it
	// turns to yes.
	Leader func() bool
	// Client reads Ingresses and Services; it needs exactly Rules().
	Client kubernetes.Interface
	// IngressController is the "namespace/name" of the ingress controller's
	// Service. Empty means the first of WellKnownIngressControllers found.
	IngressController string
	// FullSyncInterval is how often the whole route set is sent, so routes
	// are refreshed before they expire in the control plane; default 4 h.
	FullSyncInterval time.Duration
	// ResyncPeriod is the informers' resync period; default 10 min. A resync
	// that finds no change sends nothing.
	ResyncPeriod time.Duration
	// RetryBaseDelay and RetryMaxDelay bound the exponential backoff of a
	// failed call; defaults 1 s and 5 min. A refused token is retried only
	// after RetryMaxDelay.
	RetryBaseDelay time.Duration
	RetryMaxDelay  time.Duration
	Logger         *slog.Logger
	// Metrics receives the Syncer's collectors; nil registers none.
	Metrics prometheus.Registerer
}

// Rules returns the RBAC rules the Syncer needs, cluster-wide: read and
// watch Ingresses and Services, nothing else.
func Rules() []rbacv1.PolicyRule {
	verbs := []string{"get", "list", "watch"}
	return []rbacv1.PolicyRule{
		{APIGroups: []string{"networking.k8s.io"}, Resources: []string{"ingresses"}, Verbs: verbs},
		{APIGroups: []string{""}, Resources: []string{"services"}, Verbs: verbs},
	}
}

// Syncer watches managed Ingresses and keeps the control plane's routes in
// step. Create it with New and call Run once; the other methods are safe for
// concurrent use at any time.
type Syncer struct {
	cfg        Config
	log        *slog.Logger
	candidates []string // ingress controller Service keys, in order of preference

	factory     informers.SharedInformerFactory
	ingInformer cache.SharedIndexInformer
	svcInformer cache.SharedIndexInformer
	ingLister   networkinglisters.IngressLister
	svcLister   corelisters.ServiceLister

	started atomic.Bool
	// ready is set once the caches have synced and the first full sync is
	// queued; events before that are covered by that sync and dropped.
	ready atomic.Bool
	// synced is closed once ready is set.
	synced chan struct{}

	mu    sync.Mutex
	queue workqueue.TypedRateLimitingInterface[string] // nil outside Run
	sent  map[string]map[string][]routesapi.Route      // Ingress key -> hostname -> routes, by path
	det   detection

	m *metrics
}

// New checks cfg and builds a Syncer. It starts nothing.
func New(cfg Config) (*Syncer, error) {
	switch {
	case cfg.ClusterUUID == "":
		return nil, errors.New("ingresssync: ClusterUUID is required")
	case cfg.API == nil:
		return nil, errors.New("ingresssync: API is required")
	case cfg.Client == nil:
		return nil, errors.New("ingresssync: Client is required")
	}
	candidates := WellKnownIngressControllers
	if cfg.IngressController != "" {
		ns, name, ok := strings.Cut(cfg.IngressController, "/")
		if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
			return nil, fmt.Errorf("ingresssync: IngressController %q is not namespace/name", cfg.IngressController)
		}
		candidates = []string{cfg.IngressController}
	}
	if cfg.FullSyncInterval <= 0 {
		cfg.FullSyncInterval = DefaultFullSyncInterval
	}
	if cfg.ResyncPeriod <= 0 {
		cfg.ResyncPeriod = DefaultResyncPeriod
	}
	if cfg.RetryBaseDelay <= 0 {
		cfg.RetryBaseDelay = DefaultRetryBaseDelay
	}
	if cfg.RetryMaxDelay <= 0 {
		cfg.RetryMaxDelay = DefaultRetryMaxDelay
	}
	if cfg.RetryMaxDelay < cfg.RetryBaseDelay {
		cfg.RetryMaxDelay = cfg.RetryBaseDelay
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Leader != nil {
		cfg.API = followerAPI{api: cfg.API, leader: cfg.Leader}
	}
	s := &Syncer{
		synced:     make(chan struct{}),
		cfg:        cfg,
		log:        log.With("component", "ingresssync"),
		candidates: candidates,
		factory:    informers.NewSharedInformerFactory(cfg.Client, cfg.ResyncPeriod),
		sent:       map[string]map[string][]routesapi.Route{},
		det:        detection{mode: RoutingTunnel},
	}
	ing := s.factory.Networking().V1().Ingresses()
	svc := s.factory.Core().V1().Services()
	s.ingInformer, s.ingLister = ing.Informer(), ing.Lister()
	s.svcInformer, s.svcLister = svc.Informer(), svc.Lister()
	m, err := newMetrics(cfg.Metrics, s.RouteCount)
	if err != nil {
		return nil, err
	}
	s.m = m
	return s, nil
}

// Run watches the cluster and sends route changes until ctx ends, then
// returns nil once every goroutine it started has ended. It can be called
// once.
func (s *Syncer) Run(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("ingresssync: Run called twice")
	}
	ctx, cancel := context.WithCancel(ctx)
	q := workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](s.cfg.RetryBaseDelay, s.cfg.RetryMaxDelay),
		workqueue.TypedRateLimitingQueueConfig[string]{})
	s.mu.Lock()
	s.queue = q
	s.mu.Unlock()

	var wg sync.WaitGroup
	defer func() {
		cancel()
		s.mu.Lock()
		s.queue = nil
		s.mu.Unlock()
		q.ShutDown()
		wg.Wait()
		// Waits for the informers, which stop with ctx.
		s.factory.Shutdown()
	}()

	if _, err := s.ingInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.onIngress(nil, obj) },
		UpdateFunc: s.onIngress,
		DeleteFunc: func(obj any) { s.onIngress(obj, nil) },
	}); err != nil {
		return fmt.Errorf("ingresssync: %w", err)
	}
	if _, err := s.svcInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    s.onService,
		UpdateFunc: func(_, obj any) { s.onService(obj) },
		DeleteFunc: s.onService,
	}); err != nil {
		return fmt.Errorf("ingresssync: %w", err)
	}
	s.factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), s.ingInformer.HasSynced, s.svcInformer.HasSynced) {
		return nil // ctx ended first
	}
	s.setDetection(s.detect())
	s.ready.Store(true)
	close(s.synced)
	q.Add(fullSyncKey)
	s.log.Info("watching ingresses", "ingress_controller_candidates", s.candidates, "full_sync_interval", s.cfg.FullSyncInterval)

	wg.Go(func() {
		for s.processNext(ctx, q) {
		}
	})
	wg.Go(func() {
		t := time.NewTicker(s.cfg.FullSyncInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				q.Add(fullSyncKey)
			}
		}
	})
	<-ctx.Done()
	return nil
}

// Synced is closed once Run has read the cluster's Ingresses and Services
// and detected the ingress controller: from then on Detection says which
// controller streams may go to.
func (s *Syncer) Synced() <-chan struct{} { return s.synced }

// Resync queues a full sync; the agent calls it after every tunnel
// reconnect, when the control plane may have lost track of the cluster.
// Before Run has synced its caches it does nothing: Run sends a full sync
// then anyway.
func (s *Syncer) Resync() {
	if s.ready.Load() {
		s.enqueue(fullSyncKey)
	}
}

// RouteCount is the number of routes (hostname and path) last sent, for
// heartbeats.
func (s *Syncer) RouteCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, hosts := range s.sent {
		for _, routes := range hosts {
			n += len(routes)
		}
	}
	return n
}

// Routes returns a copy of the routes last sent, sorted by hostname and
// path, for a status page.
func (s *Syncer) Routes() []routesapi.Route {
	s.mu.Lock()
	var out []routesapi.Route
	for _, hosts := range s.sent {
		for _, routes := range hosts {
			for _, r := range routes {
				r.Annotations = maps.Clone(r.Annotations)
				out = append(out, r)
			}
		}
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b routesapi.Route) int {
		if c := strings.Compare(a.Hostname, b.Hostname); c != 0 {
			return c
		}
		return strings.Compare(a.Path, b.Path)
	})
	return out
}

// Detection returns the routing mode ("tunnel" or "direct"), the public
// endpoint (empty for tunnel) and the ingress controller found (nil when
// none), as last evaluated.
func (s *Syncer) Detection() (mode, endpoint string, ic *routesapi.IngressController) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.det.ic != nil {
		c := *s.det.ic
		ic = &c
	}
	return s.det.mode, s.det.endpoint, ic
}

func (s *Syncer) enqueue(key string) {
	s.mu.Lock()
	q := s.queue
	s.mu.Unlock()
	if q != nil {
		q.Add(key)
	}
}

// onIngress is the Ingress event handler: it only queues the key (never any
// I/O), and skips changes that concern no managed Ingress before or after.
func (s *Syncer) onIngress(oldObj, newObj any) {
	if !s.ready.Load() {
		return
	}
	obj := newObj
	if obj == nil {
		obj = oldObj
	}
	if !managedObj(oldObj) && !managedObj(newObj) {
		return
	}
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	if err != nil {
		s.log.Warn("ingress event without a key", "err", err)
		return
	}
	s.enqueue(key)
}

// onService queues a re-detection when a candidate ingress controller
// Service changes.
func (s *Syncer) onService(obj any) {
	if !s.ready.Load() {
		return
	}
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	if err != nil || !slices.Contains(s.candidates, key) {
		return
	}
	s.enqueue(detectKey)
}

func managedObj(obj any) bool {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	ing, ok := obj.(*networkingv1.Ingress)
	return ok && Managed(ing)
}

// followerAPI sends only while leader says so; otherwise every call
// succeeds without being sent, so the Syncer's record follows the
// cluster as the leader's does.
type followerAPI struct {
	api    RouteAPI
	leader func() bool
}

func (f followerAPI) Register(ctx context.Context, clusterUUID string, r routesapi.Route) error {
	if !f.leader() {
		return nil
	}
	return f.api.Register(ctx, clusterUUID, r)
}

func (f followerAPI) Unregister(ctx context.Context, clusterUUID, hostname string) error {
	if !f.leader() {
		return nil
	}
	return f.api.Unregister(ctx, clusterUUID, hostname)
}

func (f followerAPI) Sync(ctx context.Context, req routesapi.Sync) error {
	if !f.leader() {
		return nil
	}
	return f.api.Sync(ctx, req)
}

// Managed reports whether ing is one the Syncer routes: labelled
// pipeops.io/managed=true or annotated pipeops.io/managed-by=pipeops.
func Managed(ing *networkingv1.Ingress) bool {
	return ing.Labels[LabelManaged] == "true" || ing.Annotations[AnnotationManagedBy] == "pipeops"
}

// processNext handles one queue item; false when the queue is shut down.
func (s *Syncer) processNext(ctx context.Context, q workqueue.TypedRateLimitingInterface[string]) bool {
	key, shutdown := q.Get()
	if shutdown {
		return false
	}
	defer q.Done(key)
	var err error
	switch key {
	case fullSyncKey:
		err = s.fullSync(ctx)
	case detectKey:
		if s.setDetection(s.detect()) {
			q.Add(fullSyncKey)
		}
	default:
		err = s.syncIngress(ctx, key, q)
	}
	switch {
	case err == nil:
		q.Forget(key)
	case ctx.Err() != nil:
		// Shutting down: the call failed because ctx ended.
	case errors.Is(err, routesapi.ErrUnauthorized):
		s.log.Error("control plane refuses the agent token; routes are not being updated", "item", itemName(key), "err", err, "retry_in", s.cfg.RetryMaxDelay)
		q.AddAfter(key, s.cfg.RetryMaxDelay)
	default:
		s.log.Warn("route update failed; retrying", "item", itemName(key), "err", err, "attempts", q.NumRequeues(key)+1)
		q.AddRateLimited(key)
	}
	return true
}

func itemName(key string) string {
	switch key {
	case fullSyncKey:
		return "full sync"
	case detectKey:
		return "detection"
	}
	return key
}

// syncIngress brings the control plane in step with one Ingress: see the
// package documentation. The record of what was sent is updated after each
// successful call, so a retry repeats only what is still to do.
func (s *Syncer) syncIngress(ctx context.Context, key string, q workqueue.TypedRateLimitingInterface[string]) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		s.log.Warn("bad queue key", "key", key, "err", err)
		return nil
	}
	s.mu.Lock()
	det := s.det
	old := maps.Clone(s.sent[key])
	s.mu.Unlock()

	desired := map[string][]routesapi.Route{}
	ing, err := s.ingLister.Ingresses(ns).Get(name)
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return err
	case Managed(ing):
		desired = s.desiredRoutes(ing, det)
	}

	needFull := false
	for _, host := range slices.Sorted(maps.Keys(old)) {
		if _, ok := desired[host]; ok {
			continue
		}
		if s.sentByOther(key, host) {
			// Unregister would take the other Ingress's routes too.
			needFull = true
			continue
		}
		err := s.cfg.API.Unregister(ctx, s.cfg.ClusterUUID, host)
		s.m.call("unregister", err)
		if err != nil && !routesapi.IsNotFound(err) {
			return fmt.Errorf("unregister %s: %w", host, err)
		}
		s.log.Info("route unregistered", "ingress", key, "hostname", host)
		s.record(key, host, nil)
	}
	for _, host := range slices.Sorted(maps.Keys(desired)) {
		routes, prev := desired[host], old[host]
		if slices.EqualFunc(routes, prev, routeEqual) {
			continue
		}
		if dropsPath(prev, routes) {
			needFull = true
			continue
		}
		for _, r := range routes {
			if i := slices.IndexFunc(prev, func(p routesapi.Route) bool { return p.Path == r.Path }); i >= 0 && routeEqual(prev[i], r) {
				continue
			}
			err := s.cfg.API.Register(ctx, s.cfg.ClusterUUID, r)
			s.m.call("register", err)
			if err != nil {
				return fmt.Errorf("register %s%s: %w", r.Hostname, r.Path, err)
			}
			s.log.Info("route registered", "ingress", key, "hostname", r.Hostname, "path", r.Path)
		}
		s.record(key, host, routes)
	}
	if needFull {
		q.Add(fullSyncKey)
	}
	return nil
}

// record notes that host of Ingress key was sent as routes (nil: removed).
func (s *Syncer) record(key, host string, routes []routesapi.Route) {
	s.mu.Lock()
	defer s.mu.Unlock()
	hosts := s.sent[key]
	if routes == nil {
		delete(hosts, host)
		if len(hosts) == 0 {
			delete(s.sent, key)
		}
		return
	}
	if hosts == nil {
		hosts = map[string][]routesapi.Route{}
		s.sent[key] = hosts
	}
	hosts[host] = routes
}

func (s *Syncer) sentByOther(key, host string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, hosts := range s.sent {
		if _, ok := hosts[host]; ok && k != key {
			return true
		}
	}
	return false
}

// dropsPath reports whether a path of prev is missing from cur: Register
// cannot remove it.
func dropsPath(prev, cur []routesapi.Route) bool {
	for _, p := range prev {
		if !slices.ContainsFunc(cur, func(c routesapi.Route) bool { return c.Path == p.Path }) {
			return true
		}
	}
	return false
}

func routeEqual(a, b routesapi.Route) bool {
	return a.Hostname == b.Hostname && a.Namespace == b.Namespace && a.ServiceName == b.ServiceName &&
		a.ServicePort == b.ServicePort && a.IngressName == b.IngressName && a.Path == b.Path &&
		a.PathType == b.PathType && a.TLS == b.TLS && a.PublicEndpoint == b.PublicEndpoint &&
		a.RoutingMode == b.RoutingMode && maps.Equal(a.Annotations, b.Annotations)
}

// fullSync sends every managed Ingress and the detection, and on success
// makes that the record of what was sent.
func (s *Syncer) fullSync(ctx context.Context) error {
	det := s.detect()
	s.setDetection(det)
	ings, err := s.ingLister.List(labels.Everything())
	if err != nil {
		return err
	}
	slices.SortFunc(ings, func(a, b *networkingv1.Ingress) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	snapshot := map[string]map[string][]routesapi.Route{}
	req := routesapi.Sync{ClusterUUID: s.cfg.ClusterUUID, PublicEndpoint: det.endpoint, RoutingMode: det.mode, IngressController: det.ic}
	routeCount := 0
	for _, ing := range ings {
		if !Managed(ing) {
			continue
		}
		hosts := s.desiredRoutes(ing, det)
		if len(hosts) == 0 {
			continue
		}
		snapshot[ing.Namespace+"/"+ing.Name] = hosts
		entry := routesapi.Ingress{Namespace: ing.Namespace, IngressName: ing.Name, Annotations: annotations(ing)}
		for _, host := range slices.Sorted(maps.Keys(hosts)) {
			rule := routesapi.Rule{Host: host, TLS: hosts[host][0].TLS}
			for _, r := range hosts[host] {
				rule.Paths = append(rule.Paths, routesapi.Path{Path: r.Path, PathType: r.PathType, ServiceName: r.ServiceName, ServicePort: r.ServicePort})
				routeCount++
			}
			entry.Rules = append(entry.Rules, rule)
		}
		req.Ingresses = append(req.Ingresses, entry)
	}
	if s.cfg.Leader != nil && !s.cfg.Leader() {
		// Another replica sends them; this one keeps the record.
		s.mu.Lock()
		s.sent = snapshot
		s.mu.Unlock()
		s.log.Debug("routes recorded; the leading replica syncs them", "ingresses", len(req.Ingresses), "routes", routeCount)
		return nil
	}
	err = s.cfg.API.Sync(ctx, req)
	s.m.call("sync", err)
	if err != nil {
		return fmt.Errorf("full sync: %w", err)
	}
	s.mu.Lock()
	s.sent = snapshot
	s.mu.Unlock()
	s.m.fullSynced()
	s.log.Info("routes synced", "ingresses", len(req.Ingresses), "routes", routeCount, "routing_mode", det.mode, "public_endpoint", det.endpoint)
	return nil
}

// desiredRoutes returns the routes of ing by lower-cased hostname, each
// hostname's sorted by path. Rules without a host or HTTP paths, backends
// that are not Services, and named ports that cannot be resolved are
// skipped: the gateway routes by hostname to a numbered port.
func (s *Syncer) desiredRoutes(ing *networkingv1.Ingress, det detection) map[string][]routesapi.Route {
	tls := map[string]bool{}
	for _, t := range ing.Spec.TLS {
		for _, h := range t.Hosts {
			tls[strings.ToLower(h)] = true
		}
	}
	ann := annotations(ing)
	out := map[string][]routesapi.Route{}
	for _, rule := range ing.Spec.Rules {
		host := strings.ToLower(rule.Host)
		if host == "" || rule.HTTP == nil {
			continue
		}
		for _, p := range rule.HTTP.Paths {
			be := p.Backend.Service
			if be == nil {
				continue
			}
			port := int(be.Port.Number)
			if port == 0 && be.Port.Name != "" {
				port = s.namedPort(ing.Namespace, be.Name, be.Port.Name)
			}
			if port == 0 {
				s.log.Debug("skipping path: service port not resolved", "ingress", ing.Namespace+"/"+ing.Name, "host", host, "service", be.Name, "port", be.Port.Name)
				continue
			}
			path := p.Path
			if path == "" {
				path = "/"
			}
			pathType := string(networkingv1.PathTypeImplementationSpecific)
			if p.PathType != nil {
				pathType = string(*p.PathType)
			}
			if slices.ContainsFunc(out[host], func(r routesapi.Route) bool { return r.Path == path }) {
				continue // the first rule for a path wins
			}
			out[host] = append(out[host], routesapi.Route{
				Hostname: host, Namespace: ing.Namespace, ServiceName: be.Name, ServicePort: port,
				IngressName: ing.Name, Path: path, PathType: pathType, TLS: tls[host],
				Annotations: ann, PublicEndpoint: det.endpoint, RoutingMode: det.mode,
			})
		}
	}
	for _, routes := range out {
		slices.SortFunc(routes, func(a, b routesapi.Route) int { return strings.Compare(a.Path, b.Path) })
	}
	return out
}

func (s *Syncer) namedPort(ns, svc, name string) int {
	sv, err := s.svcLister.Services(ns).Get(svc)
	if err != nil {
		return 0
	}
	for _, p := range sv.Spec.Ports {
		if p.Name == name {
			return int(p.Port)
		}
	}
	return 0
}

func annotations(ing *networkingv1.Ingress) map[string]string {
	out := make(map[string]string, len(ing.Annotations))
	for k, v := range ing.Annotations {
		if k != lastApplied {
			out[k] = v
		}
	}
	return out
}

// detection is how the gateway reaches the cluster.
type detection struct {
	mode, endpoint string
	ic             *routesapi.IngressController
}

func (d detection) equal(o detection) bool {
	if d.mode != o.mode || d.endpoint != o.endpoint || (d.ic == nil) != (o.ic == nil) {
		return false
	}
	return d.ic == nil || *d.ic == *o.ic
}

func (s *Syncer) detect() detection {
	return detect(s.candidates, func(ns, name string) *corev1.Service {
		svc, err := s.svcLister.Services(ns).Get(name)
		if err != nil {
			return nil
		}
		return svc
	})
}

// setDetection stores d and reports whether it differs from before.
func (s *Syncer) setDetection(d detection) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.det.equal(d) {
		return false
	}
	s.log.Info("ingress controller detection changed", "routing_mode", d.mode, "public_endpoint", d.endpoint, "ingress_controller", d.ic)
	s.det = d
	return true
}

// detect picks the first candidate Service that exists. A LoadBalancer with
// an address makes the cluster reachable directly; anything else means
// traffic comes through the tunnel.
func detect(candidates []string, get func(ns, name string) *corev1.Service) detection {
	for _, key := range candidates {
		ns, name, _ := strings.Cut(key, "/")
		svc := get(ns, name)
		if svc == nil {
			continue
		}
		d := detection{mode: RoutingTunnel, ic: &routesapi.IngressController{
			Name: svc.Name, Namespace: svc.Namespace, Port: servicePort(svc), Type: controllerType(svc),
		}}
		if svc.Spec.Type == corev1.ServiceTypeLoadBalancer && len(svc.Status.LoadBalancer.Ingress) > 0 {
			lb := svc.Status.LoadBalancer.Ingress[0]
			if ep := cmpOr(lb.IP, lb.Hostname); ep != "" {
				// The load balancer listens on the Service's port; the
				// gateway assumes 80 when the endpoint names none.
				if p := servicePort(svc); p != 0 && p != 80 {
					ep = net.JoinHostPort(ep, strconv.Itoa(p))
				}
				d.mode, d.endpoint = RoutingDirect, ep
			}
		}
		return d
	}
	return detection{mode: RoutingTunnel}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// servicePort is the port named http, else port 80, else the first.
func servicePort(svc *corev1.Service) int {
	for _, p := range svc.Spec.Ports {
		if p.Name == "http" {
			return int(p.Port)
		}
	}
	for _, p := range svc.Spec.Ports {
		if p.Port == 80 {
			return int(p.Port)
		}
	}
	if len(svc.Spec.Ports) > 0 {
		return int(svc.Spec.Ports[0].Port)
	}
	return 0
}

// controllerType guesses the controller from the Service's name and its
// app.kubernetes.io/name label.
func controllerType(svc *corev1.Service) string {
	s := strings.ToLower(svc.Name + " " + svc.Labels["app.kubernetes.io/name"])
	switch {
	case strings.Contains(s, "nginx"):
		return "nginx"
	case strings.Contains(s, "traefik"):
		return "traefik"
	}
	return ""
}
