package ingresssync

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/pipeops/tunnel/agent/routesapi"
	"github.com/pipeops/tunnel/shared/routeproto"
	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/testenv/kubetest"
)

func TestMain(m *testing.M) { testenv.Main(m, kubetest.Stop) }

// The recorder decodes calls into the protocol's own bodies, as the control
// plane does.
type (
	registerReq = routeproto.RegisterRequest
	syncReq     = routeproto.SyncRequest
)

// call is one recorded routes API call that was answered 200.
type call struct {
	kind     string // register, unregister, sync
	host     string // register, unregister
	register registerReq
	sync     syncReq
}

// recorder is the control plane side: it decodes and records every call,
// answering 500 to the first `fail` of them.
type recorder struct {
	mu       sync.Mutex
	calls    []call
	attempts int
	fail     int
}

func (rec *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	rec.attempts++
	if rec.fail > 0 {
		rec.fail--
		w.WriteHeader(http.StatusInternalServerError)
		io.WriteString(w, `{"error":{"code":"internal","message":"try later"}}`)
		return
	}
	var c call
	var err error
	switch r.URL.Path {
	case "/api/v1/gateway/routes/register":
		c.kind = "register"
		err = json.Unmarshal(body, &c.register)
		c.host = c.register.Hostname
	case "/api/v1/gateway/routes/unregister":
		c.kind = "unregister"
		var u struct{ Hostname string }
		err = json.Unmarshal(body, &u)
		c.host = u.Hostname
	case "/api/v1/gateway/routes/sync":
		c.kind = "sync"
		err = json.Unmarshal(body, &c.sync)
	default:
		http.NotFound(w, r)
		return
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	rec.calls = append(rec.calls, c)
	io.WriteString(w, `{"status":"ok"}`)
}

func (rec *recorder) all() []call {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return slices.Clone(rec.calls)
}

// mine returns the calls that concern namespace ns: registers and
// unregisters of its hostnames (which end in ns), and every sync. Objects of
// other tests stay in the shared API server, so syncs may carry them too.
func (rec *recorder) mine(ns string) []call {
	var out []call
	for _, c := range rec.all() {
		if c.kind == "sync" || strings.HasSuffix(c.host, "."+ns+".test") {
			out = append(out, c)
		}
	}
	return out
}

type harness struct {
	env    *kubetest.Env
	ns     string
	admin  kubernetes.Interface
	rec    *recorder
	syncer *Syncer
}

func ignoreTransports() []goleak.Option {
	// Idle keep-alive connections belong to the HTTP transports of the
	// clients, not to the Syncer.
	return []goleak.Option{
		goleak.IgnoreCurrent(),
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("net/http.(*http2ClientConn).readLoop"),
	}
}

// start runs a Syncer as a ServiceAccount granted exactly Rules(), against a
// recording control plane, and stops it (checking for leaked goroutines)
// when the test ends.
func start(t *testing.T, edit func(*Config), before func(h *harness)) *harness {
	t.Helper()
	env := kubetest.Start(t)
	leaks := ignoreTransports()
	h := &harness{env: env, ns: env.Namespace(t), admin: env.Client, rec: &recorder{}}
	acct := env.ServiceAccount(t, h.ns, "agent", kubetest.Grant{Rules: Rules()})
	if before != nil {
		before(h)
	}
	srv := httptest.NewServer(h.rec)
	cfg := Config{
		ClusterUUID:    "cluster-1",
		API:            &routesapi.Client{BaseURL: srv.URL, Token: "agent-token", HTTP: srv.Client()},
		Client:         acct.Client,
		RetryBaseDelay: 10 * time.Millisecond,
		RetryMaxDelay:  200 * time.Millisecond,
		// Keep the detection of other tests' Services out of this one.
		IngressController: h.ns + "/ingress-nginx-controller",
	}
	if edit != nil {
		edit(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.syncer = s
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("Run did not return after cancel")
		}
		srv.Close()
		goleak.VerifyNone(t, leaks...)
	})
	if cfg.Leader != nil && !cfg.Leader() {
		return h // a follower sends no start-up sync
	}
	// The first call is the start-up full sync.
	first := h.waitCalls(t, "start-up sync", func(cs []call) bool { return len(cs) > 0 })[0]
	if first.kind == "sync" {
		want := 0
		for _, ing := range first.sync.Ingresses {
			for _, r := range ing.Rules {
				want += len(r.Paths)
			}
		}
		eventually(t, "start-up sync recorded", func() bool { return s.RouteCount() == want })
	}
	return h
}

func (h *harness) waitCalls(t *testing.T, what string, ok func([]call) bool) []call {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		cs := h.rec.mine(h.ns)
		if ok(cs) {
			return cs
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; calls: %+v", what, cs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitNew waits for n more calls of this namespace than before and returns
// the new ones.
func (h *harness) waitNew(t *testing.T, before, n int, what string) []call {
	t.Helper()
	return h.waitCalls(t, what, func(cs []call) bool { return len(cs) >= before+n })[before:]
}

// eventually polls ok for up to 20 s: the Syncer updates its record after
// the recorder has seen the call.
func eventually(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// routeCount counts the Syncer's routes of the test's namespace; other
// tests' Ingresses stay in the shared API server and count in RouteCount.
func (h *harness) routeCount() int {
	n := 0
	for _, r := range h.syncer.Routes() {
		if r.Namespace == h.ns {
			n++
		}
	}
	return n
}

func (h *harness) host(name string) string { return name + "." + h.ns + ".test" }

type ingOpt func(*networkingv1.Ingress)

func managedLabel(i *networkingv1.Ingress) { i.Labels = map[string]string{LabelManaged: "true"} }

func (h *harness) ingress(name string, opts ...ingOpt) *networkingv1.Ingress {
	pt := networkingv1.PathTypePrefix
	ing := &networkingv1.Ingress{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: h.ns},
		Spec: networkingv1.IngressSpec{Rules: []networkingv1.IngressRule{{
			Host: h.host(name),
			IngressRuleValue: networkingv1.IngressRuleValue{HTTP: &networkingv1.HTTPIngressRuleValue{Paths: []networkingv1.HTTPIngressPath{{
				Path: "/", PathType: &pt,
				Backend: networkingv1.IngressBackend{Service: &networkingv1.IngressServiceBackend{Name: name, Port: networkingv1.ServiceBackendPort{Number: 8080}}},
			}}}},
		}}},
	}
	for _, o := range opts {
		o(ing)
	}
	return ing
}

func (h *harness) create(t *testing.T, ing *networkingv1.Ingress) *networkingv1.Ingress {
	t.Helper()
	got, err := h.admin.NetworkingV1().Ingresses(h.ns).Create(context.Background(), ing, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func (h *harness) update(t *testing.T, name string, edit func(*networkingv1.Ingress)) {
	t.Helper()
	ctx := context.Background()
	ing, err := h.admin.NetworkingV1().Ingresses(h.ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	edit(ing)
	if _, err := h.admin.NetworkingV1().Ingresses(h.ns).Update(ctx, ing, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func summary(cs []call) []string {
	var out []string
	for _, c := range cs {
		s := c.kind
		if c.kind == "register" {
			s += " " + c.host + c.register.Path
		} else if c.host != "" {
			s += " " + c.host
		}
		out = append(out, s)
	}
	return out
}

func TestManagedFiltering(t *testing.T) {
	h := start(t, nil, nil)
	cases := []struct {
		name    string
		opt     ingOpt
		managed bool
	}{
		{"label", managedLabel, true},
		{"annotation", func(i *networkingv1.Ingress) { i.Annotations = map[string]string{AnnotationManagedBy: "pipeops"} }, true},
		{"neither", func(*networkingv1.Ingress) {}, false},
		{"label false", func(i *networkingv1.Ingress) { i.Labels = map[string]string{LabelManaged: "false"} }, false},
		{"other manager", func(i *networkingv1.Ingress) { i.Annotations = map[string]string{AnnotationManagedBy: "argo"} }, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			name := strings.ReplaceAll(tc.name, " ", "-")
			before := len(h.rec.mine(h.ns))
			h.create(t, h.ingress(name, tc.opt))
			// A managed marker created afterwards: once it is registered,
			// the Ingress before it has been dealt with (one worker, FIFO).
			h.create(t, h.ingress("marker-"+name, managedLabel))
			h.waitCalls(t, "marker", func(cs []call) bool {
				return slices.ContainsFunc(cs[before:], func(c call) bool { return c.host == h.host("marker-"+name) })
			})
			registered := slices.ContainsFunc(h.rec.mine(h.ns)[before:], func(c call) bool { return c.host == h.host(name) })
			if registered != tc.managed {
				t.Errorf("registered = %v, want %v", registered, tc.managed)
			}
		})
	}
}

func TestIngressLifecycle(t *testing.T) {
	h := start(t, nil, nil)
	n := len(h.rec.mine(h.ns))

	// Two hosts, one of them with TLS.
	ing := h.ingress("web", managedLabel)
	ing.Spec.Rules = append(ing.Spec.Rules, *ing.Spec.Rules[0].DeepCopy())
	ing.Spec.Rules[1].Host = h.host("plain")
	ing.Spec.TLS = []networkingv1.IngressTLS{{Hosts: []string{h.host("web")}, SecretName: "web-tls"}}
	h.create(t, ing)
	got := h.waitNew(t, n, 2, "registers on create")
	if s := summary(got); !slices.Equal(s, []string{"register " + h.host("plain") + "/", "register " + h.host("web") + "/"}) {
		t.Fatalf("create sent %v", s)
	}
	tls := map[string]bool{got[0].host: got[0].register.TLS, got[1].host: got[1].register.TLS}
	if tls[h.host("web")] != true || tls[h.host("plain")] != false {
		t.Errorf("TLS per host = %v", tls)
	}
	r := got[1].register
	if r.ClusterUUID != "cluster-1" || r.Namespace != h.ns || r.IngressName != "web" || r.ServiceName != "web" ||
		r.ServicePort != 8080 || r.PathType != "Prefix" || r.RoutingMode != RoutingTunnel || r.PublicEndpoint != "" {
		t.Errorf("register payload %+v", r)
	}
	eventually(t, "two routes recorded", func() bool { return h.routeCount() == 2 })
	n += 2

	steps := []struct {
		name string
		edit func(*networkingv1.Ingress)
		want []string
	}{
		{"host changed", func(i *networkingv1.Ingress) { i.Spec.Rules[1].Host = h.host("other") },
			[]string{"unregister " + h.host("plain"), "register " + h.host("other") + "/"}},
		{"path added", func(i *networkingv1.Ingress) {
			p := *i.Spec.Rules[0].HTTP.Paths[0].DeepCopy()
			p.Path = "/v2"
			i.Spec.Rules[0].HTTP.Paths = append(i.Spec.Rules[0].HTTP.Paths, p)
		}, []string{"register " + h.host("web") + "/v2"}},
		{"backend port changed", func(i *networkingv1.Ingress) { i.Spec.Rules[0].HTTP.Paths[0].Backend.Service.Port.Number = 9090 },
			[]string{"register " + h.host("web") + "/"}},
		{"path removed", func(i *networkingv1.Ingress) { i.Spec.Rules[0].HTTP.Paths = i.Spec.Rules[0].HTTP.Paths[1:] },
			[]string{"sync"}},
		{"label removed", func(i *networkingv1.Ingress) { delete(i.Labels, LabelManaged) },
			[]string{"unregister " + h.host("other"), "unregister " + h.host("web")}},
		{"managed again", managedLabel,
			[]string{"register " + h.host("other") + "/", "register " + h.host("web") + "/v2"}},
	}
	for _, st := range steps {
		h.update(t, "web", st.edit)
		got := h.waitNew(t, n, len(st.want), st.name)
		if s := summary(got); !slices.Equal(s, st.want) {
			t.Fatalf("%s: sent %v, want %v", st.name, s, st.want)
		}
		n += len(st.want)
		if st.name == "backend port changed" && got[0].register.ServicePort != 9090 {
			t.Errorf("re-registered with port %d", got[0].register.ServicePort)
		}
		if st.name == "path removed" {
			paths := syncedPaths(got[0].sync, h.ns)
			if !slices.Equal(paths, []string{h.host("other") + "/", h.host("web") + "/v2"}) {
				t.Errorf("sync after path removal has %v", paths)
			}
		}
	}

	if err := h.admin.NetworkingV1().Ingresses(h.ns).Delete(context.Background(), "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	got = h.waitNew(t, n, 2, "unregisters on delete")
	if s := summary(got); !slices.Equal(s, []string{"unregister " + h.host("other"), "unregister " + h.host("web")}) {
		t.Fatalf("delete sent %v", s)
	}
	eventually(t, "no routes recorded after delete", func() bool { return h.routeCount() == 0 })
}

// syncedPaths lists host+path of the namespace's Ingresses in a sync.
func syncedPaths(s syncReq, ns string) []string {
	var out []string
	for _, ing := range s.Ingresses {
		if ing.Namespace != ns {
			continue
		}
		for _, r := range ing.Rules {
			for _, p := range r.Paths {
				out = append(out, r.Host+p.Path)
			}
		}
	}
	slices.Sort(out)
	return out
}

func TestInformerResyncSendsNothing(t *testing.T) {
	// One second is the shortest resync period client-go allows.
	h := start(t, func(c *Config) { c.ResyncPeriod = time.Second }, nil)
	h.create(t, h.ingress("web", managedLabel))
	h.waitCalls(t, "register", func(cs []call) bool { return len(cs) == 2 })
	before := len(h.rec.all())
	time.Sleep(3500 * time.Millisecond) // three resyncs
	if after := h.rec.all(); len(after) != before {
		t.Fatalf("resyncs sent %v", summary(after[before:]))
	}
}

func TestFullSyncAtStartAndResync(t *testing.T) {
	h := start(t, nil, func(h *harness) {
		web := h.ingress("web", managedLabel)
		web.Spec.TLS = []networkingv1.IngressTLS{{Hosts: []string{h.host("web")}}}
		web.Annotations = map[string]string{"nginx.ingress.kubernetes.io/proxy-body-size": "8m", lastApplied: "{}"}
		h.create(t, web)
		h.create(t, h.ingress("api", func(i *networkingv1.Ingress) { i.Annotations = map[string]string{AnnotationManagedBy: "pipeops"} }))
		h.create(t, h.ingress("private"))
	})
	first := h.rec.mine(h.ns)[0]
	if first.kind != "sync" {
		t.Fatalf("first call %v, want sync", summary([]call{first}))
	}
	if p := syncedPaths(first.sync, h.ns); !slices.Equal(p, []string{h.host("api") + "/", h.host("web") + "/"}) {
		t.Errorf("start-up sync has %v", p)
	}
	s := first.sync
	if s.ClusterUUID != "cluster-1" || s.RoutingMode != RoutingTunnel || s.IngressController != nil {
		t.Errorf("sync header %+v", s)
	}
	for _, ing := range s.Ingresses {
		if ing.Namespace != h.ns || ing.IngressName != "web" {
			continue
		}
		if !ing.Rules[0].TLS {
			t.Errorf("web not TLS")
		}
		if ing.Annotations["nginx.ingress.kubernetes.io/proxy-body-size"] != "8m" || ing.Annotations[lastApplied] != "" {
			t.Errorf("annotations %v", ing.Annotations)
		}
		if p := ing.Rules[0].Paths[0]; p.ServiceName != "web" || p.ServicePort != 8080 || p.PathType != "Prefix" {
			t.Errorf("path %+v", p)
		}
	}
	routes := h.syncer.Routes()
	var hosts []string
	for _, r := range routes {
		if r.Namespace == h.ns {
			hosts = append(hosts, r.Hostname)
		}
	}
	if !slices.Equal(hosts, []string{h.host("api"), h.host("web")}) {
		t.Errorf("Routes() hosts %v", hosts)
	}

	n := len(h.rec.mine(h.ns))
	h.syncer.Resync()
	got := h.waitNew(t, n, 1, "sync after Resync")
	if got[0].kind != "sync" || len(syncedPaths(got[0].sync, h.ns)) != 2 {
		t.Errorf("Resync sent %v", summary(got))
	}
}

func TestDetection(t *testing.T) {
	h := start(t, nil, nil)
	ctx := context.Background()
	if mode, ep, ic := h.syncer.Detection(); mode != RoutingTunnel || ep != "" || ic != nil {
		t.Fatalf("Detection() before the Service = %q %q %+v", mode, ep, ic)
	}
	n := len(h.rec.mine(h.ns))
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "ingress-nginx-controller", Namespace: h.ns},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Ports: []corev1.ServicePort{
			{Name: "https", Port: 443, TargetPort: intstr.FromInt32(443)},
			{Name: "http", Port: 80, TargetPort: intstr.FromInt32(80)},
		}},
	}
	svc, err := h.admin.CoreV1().Services(h.ns).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	wantIC := routesapi.IngressController{Name: "ingress-nginx-controller", Namespace: h.ns, Port: 80, Type: "nginx"}
	check := func(what, mode, endpoint string) {
		t.Helper()
		got := h.waitNew(t, n, 1, what)[0]
		n++
		if got.kind != "sync" || got.sync.RoutingMode != mode || got.sync.PublicEndpoint != endpoint ||
			got.sync.IngressController == nil || *got.sync.IngressController != wantIC {
			t.Fatalf("%s: sent %s %+v", what, got.kind, got.sync)
		}
		// Detection is stored before the sync is sent.
		m, ep, ic := h.syncer.Detection()
		if m != mode || ep != endpoint || ic == nil || *ic != wantIC {
			t.Errorf("%s: Detection() = %q %q %+v", what, m, ep, ic)
		}
	}
	check("Service created", RoutingTunnel, "")

	svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "203.0.113.7"}}
	if svc, err = h.admin.CoreV1().Services(h.ns).UpdateStatus(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	check("address assigned", RoutingDirect, "203.0.113.7")

	// Routes registered now carry the detection.
	h.create(t, h.ingress("web", managedLabel))
	got := h.waitNew(t, n, 1, "register")[0]
	n++
	if got.register.RoutingMode != RoutingDirect || got.register.PublicEndpoint != "203.0.113.7" {
		t.Errorf("register under direct mode: %+v", got.register)
	}

	svc.Status.LoadBalancer.Ingress = nil
	if _, err = h.admin.CoreV1().Services(h.ns).UpdateStatus(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	check("address cleared", RoutingTunnel, "")
	eventually(t, "routes recorded in tunnel mode", func() bool {
		r := h.syncer.Routes()
		return len(r) > 0 && !slices.ContainsFunc(r, func(r routesapi.Route) bool { return r.RoutingMode != RoutingTunnel })
	})
}

func TestRetriesUntilAccepted(t *testing.T) {
	h := start(t, nil, func(h *harness) {
		h.rec.fail = 3 // the start-up sync fails three times
	})
	h.rec.mu.Lock()
	attempts := h.rec.attempts
	h.rec.fail = 2
	h.rec.mu.Unlock()
	if attempts != 4 {
		t.Errorf("start-up sync took %d attempts, want 4", attempts)
	}
	n := len(h.rec.mine(h.ns))
	h.create(t, h.ingress("web", managedLabel))
	got := h.waitNew(t, n, 1, "register after failures")
	if s := summary(got); !slices.Equal(s, []string{"register " + h.host("web") + "/"}) {
		t.Errorf("sent %v", s)
	}
	h.rec.mu.Lock()
	defer h.rec.mu.Unlock()
	if h.rec.attempts != attempts+3 {
		t.Errorf("register took %d attempts, want 3", h.rec.attempts-attempts)
	}
}

func TestNew(t *testing.T) {
	api := &routesapi.Client{}
	client := kubernetes.New(nil)
	cases := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"ok", Config{ClusterUUID: "c", API: api, Client: client}, true},
		{"configured controller", Config{ClusterUUID: "c", API: api, Client: client, IngressController: "ns/svc"}, true},
		{"no cluster", Config{API: api, Client: client}, false},
		{"no api", Config{ClusterUUID: "c", Client: client}, false},
		{"no client", Config{ClusterUUID: "c", API: api}, false},
		{"controller without namespace", Config{ClusterUUID: "c", API: api, Client: client, IngressController: "svc"}, false},
		{"controller with empty name", Config{ClusterUUID: "c", API: api, Client: client, IngressController: "ns/"}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			if (err == nil) != tc.ok {
				t.Errorf("New: %v", err)
			}
		})
	}
}

func TestDetect(t *testing.T) {
	svc := func(ns, name string, typ corev1.ServiceType, ports []int32, names []string, lb ...corev1.LoadBalancerIngress) *corev1.Service {
		s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: corev1.ServiceSpec{Type: typ}}
		for i, p := range ports {
			s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Port: p, Name: names[i]})
		}
		s.Status.LoadBalancer.Ingress = lb
		return s
	}
	cases := []struct {
		name     string
		services []*corev1.Service
		want     detection
	}{
		{"none", nil, detection{mode: RoutingTunnel}},
		{"nginx cluster IP", []*corev1.Service{svc("ingress-nginx", "ingress-nginx-controller", corev1.ServiceTypeClusterIP, []int32{443, 80}, []string{"https", "web"})},
			detection{mode: RoutingTunnel, ic: &routesapi.IngressController{Name: "ingress-nginx-controller", Namespace: "ingress-nginx", Port: 80, Type: "nginx"}}},
		{"port named http wins over 80", []*corev1.Service{svc("traefik", "traefik", corev1.ServiceTypeNodePort, []int32{80, 8000}, []string{"web", "http"})},
			detection{mode: RoutingTunnel, ic: &routesapi.IngressController{Name: "traefik", Namespace: "traefik", Port: 8000, Type: "traefik"}}},
		{"first port otherwise", []*corev1.Service{svc("kube-system", "traefik", corev1.ServiceTypeClusterIP, []int32{8443, 8080}, []string{"a", "b"})},
			detection{mode: RoutingTunnel, ic: &routesapi.IngressController{Name: "traefik", Namespace: "kube-system", Port: 8443, Type: "traefik"}}},
		{"load balancer ip", []*corev1.Service{svc("ingress-nginx", "ingress-nginx-controller", corev1.ServiceTypeLoadBalancer, []int32{80}, []string{""}, corev1.LoadBalancerIngress{IP: "198.51.100.1"})},
			detection{mode: RoutingDirect, endpoint: "198.51.100.1", ic: &routesapi.IngressController{Name: "ingress-nginx-controller", Namespace: "ingress-nginx", Port: 80, Type: "nginx"}}},
		{"load balancer on another port", []*corev1.Service{svc("ingress-nginx", "ingress-nginx-controller", corev1.ServiceTypeLoadBalancer, []int32{8080}, []string{"http"}, corev1.LoadBalancerIngress{IP: "198.51.100.1"})},
			detection{mode: RoutingDirect, endpoint: "198.51.100.1:8080", ic: &routesapi.IngressController{Name: "ingress-nginx-controller", Namespace: "ingress-nginx", Port: 8080, Type: "nginx"}}},
		{"load balancer hostname", []*corev1.Service{svc("kube-system", "ingress-nginx-controller", corev1.ServiceTypeLoadBalancer, []int32{80}, []string{"http"}, corev1.LoadBalancerIngress{Hostname: "lb.example.com"})},
			detection{mode: RoutingDirect, endpoint: "lb.example.com", ic: &routesapi.IngressController{Name: "ingress-nginx-controller", Namespace: "kube-system", Port: 80, Type: "nginx"}}},
		{"load balancer pending", []*corev1.Service{svc("traefik", "traefik", corev1.ServiceTypeLoadBalancer, []int32{80}, []string{"http"})},
			detection{mode: RoutingTunnel, ic: &routesapi.IngressController{Name: "traefik", Namespace: "traefik", Port: 80, Type: "traefik"}}},
		{"order of preference", []*corev1.Service{
			svc("kube-system", "traefik", corev1.ServiceTypeLoadBalancer, []int32{80}, []string{"http"}, corev1.LoadBalancerIngress{IP: "198.51.100.9"}),
			svc("ingress-nginx", "ingress-nginx-controller", corev1.ServiceTypeClusterIP, []int32{80}, []string{"http"}),
		}, detection{mode: RoutingTunnel, ic: &routesapi.IngressController{Name: "ingress-nginx-controller", Namespace: "ingress-nginx", Port: 80, Type: "nginx"}}},
		{"unknown service elsewhere", []*corev1.Service{svc("default", "ingress-nginx-controller", corev1.ServiceTypeLoadBalancer, []int32{80}, []string{"http"}, corev1.LoadBalancerIngress{IP: "198.51.100.1"})},
			detection{mode: RoutingTunnel}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := detect(WellKnownIngressControllers, func(ns, name string) *corev1.Service {
				for _, s := range tc.services {
					if s.Namespace == ns && s.Name == name {
						return s
					}
				}
				return nil
			})
			if !got.equal(tc.want) {
				t.Errorf("detect = %+v (ic %+v), want %+v (ic %+v)", got, got.ic, tc.want, tc.want.ic)
			}
		})
	}
}

func TestRouteCountAndMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	h := start(t, func(c *Config) { c.Metrics = reg }, nil)
	before := h.syncer.RouteCount()
	n := len(h.rec.mine(h.ns))
	h.create(t, h.ingress("web", managedLabel))
	h.waitNew(t, n, 1, "register")
	// The record is updated once the answer is read.
	eventually(t, "RouteCount one up", func() bool { return h.syncer.RouteCount() == before+1 })
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	values := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			v := m.GetGauge().GetValue() + m.GetCounter().GetValue()
			for _, l := range m.GetLabel() {
				if l.GetName() == "call" && l.GetValue() != "register" || l.GetName() == "result" && l.GetValue() != "ok" {
					v = 0
				}
			}
			values[mf.GetName()] += v
		}
	}
	if got := values["pipeops_agent_routes"]; int(got) != before+1 {
		t.Errorf("routes gauge = %v, want %d", got, before+1)
	}
	if got := values["pipeops_agent_route_api_calls_total"]; got != 1 {
		t.Errorf("ok register calls = %v, want 1", got)
	}
	if values["pipeops_agent_route_last_full_sync_timestamp_seconds"] == 0 {
		t.Errorf("last full sync time not set")
	}
}

// TestFollowerSendsNothing runs a Syncer of a replica that does not lead
// the route sync: it keeps its record of the routes (Routes, which the
// stream targets come from) through creates and deletes, and sends
// nothing; elected, one Resync sends everything.
func TestFollowerSendsNothing(t *testing.T) {
	var leading atomic.Bool
	h := start(t, func(c *Config) { c.Leader = leading.Load }, func(h *harness) {
		h.create(t, h.ingress("web", managedLabel))
	})
	mine := func() []string {
		var hosts []string
		for _, r := range h.syncer.Routes() {
			if r.Namespace == h.ns {
				hosts = append(hosts, r.Hostname)
			}
		}
		return hosts
	}
	waitHosts := func(want ...string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !slices.Equal(mine(), want) {
			if time.Now().After(deadline) {
				t.Fatalf("Routes() hosts %v, want %v", mine(), want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitHosts(h.host("web"))
	h.create(t, h.ingress("api", managedLabel))
	waitHosts(h.host("api"), h.host("web"))
	if err := h.admin.NetworkingV1().Ingresses(h.ns).Delete(context.Background(), "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitHosts(h.host("api"))
	if calls := h.rec.mine(h.ns); len(calls) != 0 {
		t.Fatalf("a follower sent %v", summary(calls))
	}
	leading.Store(true)
	h.syncer.Resync()
	got := h.waitNew(t, 0, 1, "the new leader's full sync")
	if got[0].kind != "sync" || !slices.Equal(syncedPaths(got[0].sync, h.ns), []string{h.host("api") + "/"}) {
		t.Errorf("elected, the replica sent %v", summary(got))
	}
}
