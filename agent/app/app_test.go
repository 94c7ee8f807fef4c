package app

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pipeops/tunnel/agent/config"
	"github.com/pipeops/tunnel/agent/state"
	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/controlplane/api"
	"github.com/pipeops/tunnel/controlplane/cptest"
	"github.com/pipeops/tunnel/controlplane/postgres"
	gwserver "github.com/pipeops/tunnel/gateway/server"
	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/testenv/kubetest"
	"github.com/pipeops/tunnel/shared/testenv/pgtest"
)

func TestMain(m *testing.M) { testenv.Main(m, pgtest.Stop, kubetest.Stop) }

func freeAddr(t testing.TB) string {
	p, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", p)
}

func eventually(t testing.TB, what string, d time.Duration, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !ok(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
	}
}

// stack is the control plane, the gateway and a cluster with the agent's
// ServiceAccount (exactly the documented RBAC), ready to start agents.
type stack struct {
	db      *postgres.DB
	uuid    string
	token   string
	gwAdmin string
	env     *kubetest.Env
	ns      string
	cfg     config.Config
	listen  string
	// kubeconfig authenticates as the agent's ServiceAccount.
	kubeconfig string
	start      func() (stop func())
}

func newStack(t testing.TB, extraEnv map[string]string) *stack {
	t.Helper()
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))

	// Control plane.
	gwAddr := freeAddr(t)
	cp := cptest.Start(t, api.Config{GatewayWSURL: "http://" + gwAddr + "/ws"})
	db, dbURL := cp.DB, cp.DBURL
	created, err := api.CreateCluster(ctx, db, cp.Issuer, cp.URL, "edge")
	if err != nil {
		t.Fatal(err)
	}

	// Gateway.
	gcfg, err := gwserver.LoadConfig(func(k string) string {
		return map[string]string{"DATABASE_URL": dbURL, "CONTROLPLANE_URL": cp.URL, "HTTP_ADDR": gwAddr,
			"ADMIN_ADDR": freeAddr(t), "GATEWAY_HOSTS": "127.0.0.1", "SHUTDOWN_TIMEOUT": "3s"}[k]
	})
	if err != nil {
		t.Fatal(err)
	}
	gw, err := gwserver.New(ctx, gcfg, log)
	if err != nil {
		t.Fatal(err)
	}
	gwCtx, stopGW := context.WithCancel(ctx)
	gwDone := make(chan error, 1)
	go func() { gwDone <- gw.Run(gwCtx) }()
	t.Cleanup(func() { stopGW(); <-gwDone })

	// The cluster.
	env := kubetest.Start(t)
	ns := env.Namespace(t)
	acct := env.ServiceAccount(t, ns, "pipeops-agent",
		kubetest.Grant{Rules: ClusterRules()}, kubetest.Grant{Namespace: ns, Rules: NamespaceRules(ns)})
	ic := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "ingress-nginx-controller", Namespace: ns},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}}
	if _, err := env.Client.CoreV1().Services(ns).Create(ctx, ic, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	listen := freeAddr(t)
	cfg, err := config.Load(nil, func(k string) string {
		m := map[string]string{"PIPEOPS_API_URL": cp.URL, "PIPEOPS_TOKEN": created.AgentToken, "PIPEOPS_AGENT_ID": "agent-1",
			"PIPEOPS_CLUSTER_NAME": "edge", "POD_NAMESPACE": ns, "AGENT_LISTEN_ADDR": listen,
			"INGRESS_CONTROLLER_SERVICE": ns + "/ingress-nginx-controller",
			"HEARTBEAT_MIN_INTERVAL":     "200ms", "HEARTBEAT_MAX_INTERVAL": "1s", "SHUTDOWN_DRAIN_TIMEOUT": "1s"}
		if v, ok := extraEnv[k]; ok {
			return v
		}
		return m[k]
	})
	if err != nil {
		t.Fatal(err)
	}
	start := func() (stop func()) {
		actx, cancel := context.WithCancel(ctx)
		a, err := New(actx, cfg, acct.Config, log)
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- a.Run(actx) }()
		return func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("agent Run: %v", err)
			}
		}
	}
	return &stack{db: db, uuid: created.Cluster.UUID, token: created.AgentToken, gwAdmin: gcfg.AdminAddr, env: env, ns: ns, cfg: cfg, listen: listen, kubeconfig: acct.Kubeconfig, start: start}
}

// agents returns the number of connected agents the gateway reports.
func (s *stack) agents() string {
	resp, err := http.Get("http://" + s.gwAdmin + "/readyz")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestAgentEndToEnd runs the agent as in a cluster — its own ServiceAccount
// with exactly the documented RBAC, state in its namespace — against the
// real control plane and gateway: it registers, connects the tunnel,
// heartbeats, syncs a managed Ingress (and not an unmanaged one), reports
// ready, and after a restart resumes as the same cluster.
func TestAgentEndToEnd(t *testing.T) {
	ctx := context.Background()
	s := newStack(t, nil)
	db, env, ns, listen, start := s.db, s.env, s.ns, s.listen, s.start
	stopAgent := start()
	uuid := s.uuid
	eventually(t, "the agent's tunnel", 20*time.Second, func() bool { return strings.Contains(s.agents(), "agents=1") })

	// Heartbeats reach the database with the API server's pod count.
	pods, _ := env.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	eventually(t, "a heartbeat in the database", 15*time.Second, func() bool {
		c, err := db.Cluster(ctx, uuid)
		return err == nil && c.Status == controlplane.ClusterConnected && c.Metadata["k8s_pods"] == float64(len(pods.Items))
	})
	eventually(t, "the agent to be ready", 10*time.Second, func() bool {
		resp, err := http.Get("http://" + listen + "/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})

	// The agent's own state, for Prometheus: tunnel up, the API server
	// reachable, heartbeats sent and acknowledged.
	eventually(t, "the agent's metrics", 15*time.Second, func() bool {
		resp, err := http.Get("http://" + listen + "/metrics")
		if err != nil {
			return false
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		m := string(b)
		return strings.Contains(m, "\npipeops_agent_tunnel_up 1\n") && strings.Contains(m, "\npipeops_agent_kubernetes_api_up 1\n") &&
			strings.Contains(m, "\npipeops_agent_tunnel_connects_total 1\n") &&
			!strings.Contains(m, "\npipeops_agent_heartbeats_sent_total 0\n") && !strings.Contains(m, "\npipeops_agent_heartbeat_acks_total 0\n") &&
			strings.Contains(m, `pipeops_agent_tunnel_stream_failures_total{reason="refused"}`)
	})

	// State saved in the agent's namespace, no token in it.
	cm, err := env.Client.CoreV1().ConfigMaps(ns).Get(ctx, state.ConfigMapName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("state ConfigMap: %v", err)
	}
	for k, v := range cm.Data {
		if strings.Contains(v, s.token) {
			t.Fatalf("the agent token is in ConfigMap key %s", k)
		}
	}

	// A managed Ingress is synced; an unmanaged one is not.
	pathType := networkingv1.PathTypePrefix
	ing := func(name, host string, managed bool) *networkingv1.Ingress {
		i := &networkingv1.Ingress{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Spec: networkingv1.IngressSpec{Rules: []networkingv1.IngressRule{{Host: host, IngressRuleValue: networkingv1.IngressRuleValue{
				HTTP: &networkingv1.HTTPIngressRuleValue{Paths: []networkingv1.HTTPIngressPath{{Path: "/", PathType: &pathType,
					Backend: networkingv1.IngressBackend{Service: &networkingv1.IngressServiceBackend{Name: "web", Port: networkingv1.ServiceBackendPort{Number: 8080}}}}}}}}}}}
		if managed {
			i.Labels = map[string]string{"pipeops.io/managed": "true"}
		}
		return i
	}
	for _, i := range []*networkingv1.Ingress{ing("shop", "shop."+ns+".example.com", true), ing("other", "other."+ns+".example.com", false)} {
		if _, err := env.Client.NetworkingV1().Ingresses(ns).Create(ctx, i, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "the managed Ingress's route in the control plane", 15*time.Second, func() bool {
		routes, _ := db.Routes(ctx, uuid)
		return len(routes) == 1 && routes[0].Hostname == "shop."+ns+".example.com"
	})
	time.Sleep(500 * time.Millisecond)
	if routes, _ := db.Routes(ctx, uuid); len(routes) != 1 {
		t.Fatalf("routes = %+v, want only the managed Ingress's", routes)
	}
	c, _ := db.Cluster(ctx, uuid)
	if c.IngressController == nil || c.IngressController.Name != "ingress-nginx-controller" || c.RoutingMode != "tunnel" {
		t.Fatalf("cluster detection in the control plane: %+v mode=%s", c.IngressController, c.RoutingMode)
	}
	resp, err := http.Get("http://" + listen + "/status")
	if err != nil {
		t.Fatal(err)
	}
	var st Status
	_ = json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if !st.Connected || st.ClusterID != uuid || len(st.Routes) != 1 {
		t.Fatalf("/status = %+v", st)
	}

	// Restart: the agent resumes as the same cluster.
	stopAgent()
	eventually(t, "the session to end", 10*time.Second, func() bool { return strings.Contains(s.agents(), "agents=0") })
	stopAgent = start()
	defer stopAgent()
	eventually(t, "the agent's tunnel after a restart", 20*time.Second, func() bool { return strings.Contains(s.agents(), "agents=1") })
	clusters, _ := db.Clusters(ctx)
	if len(clusters) != 1 || clusters[0].UUID != uuid || clusters[0].AgentID != "agent-1" {
		t.Fatalf("after a restart: clusters %+v", clusters)
	}
}

// TestAgentIngressSyncDisabled: with ENABLE_INGRESS_SYNC=false the agent
// connects and heartbeats but sends no route, even for managed Ingresses.
func TestAgentIngressSyncDisabled(t *testing.T) {
	ctx := context.Background()
	s := newStack(t, map[string]string{"ENABLE_INGRESS_SYNC": "false"})
	if s.cfg.EnableIngress {
		t.Fatal("ENABLE_INGRESS_SYNC=false was not read")
	}
	pathType := networkingv1.PathTypePrefix
	ing := &networkingv1.Ingress{ObjectMeta: metav1.ObjectMeta{Name: "shop", Namespace: s.ns, Labels: map[string]string{"pipeops.io/managed": "true"}},
		Spec: networkingv1.IngressSpec{Rules: []networkingv1.IngressRule{{Host: "off." + s.ns + ".example.com", IngressRuleValue: networkingv1.IngressRuleValue{
			HTTP: &networkingv1.HTTPIngressRuleValue{Paths: []networkingv1.HTTPIngressPath{{Path: "/", PathType: &pathType,
				Backend: networkingv1.IngressBackend{Service: &networkingv1.IngressServiceBackend{Name: "web", Port: networkingv1.ServiceBackendPort{Number: 80}}}}}}}}}}}
	if _, err := s.env.Client.NetworkingV1().Ingresses(s.ns).Create(ctx, ing, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	stop := s.start()
	defer stop()
	eventually(t, "the agent's tunnel", 20*time.Second, func() bool { return strings.Contains(s.agents(), "agents=1") })
	eventually(t, "a heartbeat", 15*time.Second, func() bool {
		c, err := s.db.Cluster(ctx, s.uuid)
		return err == nil && c.Status == controlplane.ClusterConnected
	})
	time.Sleep(time.Second) // time enough for a sync, had one been started
	if routes, _ := s.db.Routes(ctx, s.uuid); len(routes) != 0 {
		t.Fatalf("routes sent with ENABLE_INGRESS_SYNC=false: %+v", routes)
	}
}

// TestHealthWhileRegistering: an agent whose token the control plane refuses
// keeps answering /health (so a liveness probe does not restart it in a
// loop), and /ready and /status say it is still registering.
func TestHealthWhileRegistering(t *testing.T) {
	s := newStack(t, map[string]string{"PIPEOPS_TOKEN": "not-a-token"})
	stop := s.start()
	defer stop()
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + s.listen + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	eventually(t, "/health while registering", 10*time.Second, func() bool { code, _ := get("/health"); return code == 200 })
	if code, body := get("/ready"); code != http.StatusServiceUnavailable || !strings.Contains(body, "registering") {
		t.Fatalf("/ready while registering: %d %q", code, body)
	}
	if code, body := get("/status"); code != 200 || !strings.Contains(body, `"registering"`) {
		t.Fatalf("/status while registering: %d %q", code, body)
	}
}
