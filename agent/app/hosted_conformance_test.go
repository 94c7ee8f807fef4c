package app

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pipeops/tunnel/agent/config"
	"github.com/pipeops/tunnel/shared/testenv/hostedsim"
	"github.com/pipeops/tunnel/shared/testenv/kubetest"
	"github.com/pipeops/tunnel/shared/tunnel"
)

// hostedAgent is our real agent (Run) registered with a hosted PipeOps
// simulator, on a real API server, with the Kubernetes API reached only
// through the JSON proxy path (AGENT_K8S_API_OVER_JSON).
type hostedAgent struct {
	sim    *hostedsim.Server
	env    *kubetest.Env
	ns     string
	listen string
}

func startHostedAgent(t *testing.T) *hostedAgent {
	t.Helper()
	env := kubetest.Start(t)
	ns := env.Namespace(t)
	// The agent's documented RBAC, plus what the requests of this test do
	// with its credentials (a cluster owner grants that to the agent).
	callers := kubetest.Grant{Namespace: ns, Rules: []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"get", "list", "watch", "create", "update", "delete"}},
		{APIGroups: []string{""}, Resources: []string{"pods", "pods/exec"}, Verbs: []string{"get", "create"}},
	}}
	acct := env.ServiceAccount(t, ns, "pipeops-agent",
		kubetest.Grant{Rules: ClusterRules()}, kubetest.Grant{Namespace: ns, Rules: NamespaceRules(ns)}, callers)

	sim := hostedsim.Start(t, hostedsim.Options{})
	listen := freeAddr(t)
	cfg, err := config.Load(nil, func(k string) string {
		return map[string]string{"PIPEOPS_API_URL": sim.URL, "PIPEOPS_TOKEN": sim.Token, "PIPEOPS_AGENT_ID": "agent-hosted",
			"PIPEOPS_CLUSTER_NAME": "hosted-edge", "POD_NAMESPACE": ns, "AGENT_LISTEN_ADDR": listen,
			"AGENT_K8S_API_OVER_JSON": "true", "AGENT_IMPERSONATE_USERS": "false",
			"HEARTBEAT_MIN_INTERVAL": "200ms", "HEARTBEAT_MAX_INTERVAL": "1s", "SHUTDOWN_DRAIN_TIMEOUT": "1s"}[k]
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a, err := New(ctx, cfg, acct.Config, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent Run: %v", err)
		}
		if err := sim.Err(); err != nil {
			t.Errorf("simulator: %v", err)
		}
	})
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	if err := sim.WaitConnected(wctx); err != nil {
		t.Fatal(err)
	}
	return &hostedAgent{sim: sim, env: env, ns: ns, listen: listen}
}

// gauge reads the JSON proxy's in-flight requests from the agent's
// /metrics.
func (h *hostedAgent) inFlight(t *testing.T) int {
	t.Helper()
	resp, err := http.Get("http://" + h.listen + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), `pipeops_agent_jsonproxy_in_flight{kind="request"} `); ok {
			n, _ := strconv.ParseFloat(v, 64)
			return int(n)
		}
	}
	return -1
}

func within(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// answer reassembles a proxy_request's answer from the agent's messages.
func answer(t *testing.T, ms []tunnel.Message) (status int, body []byte) {
	t.Helper()
	for _, m := range ms {
		switch m.Type {
		case tunnel.TypeProxyResponse:
			var r tunnel.ProxyResponse
			if err := m.DecodePayload(&r); err != nil {
				t.Fatal(err)
			}
			return r.Status, r.Body
		case tunnel.TypeProxyResponseHeader:
			var h tunnel.ProxyResponseHeader
			if err := m.DecodePayload(&h); err != nil {
				t.Fatal(err)
			}
			status = h.Status
		case tunnel.TypeProxyResponseChunk:
			var c tunnel.ProxyResponseChunk
			if err := m.DecodePayload(&c); err != nil {
				t.Fatal(err)
			}
			body = append(body, c.Data...)
		case tunnel.TypeProxyError, tunnel.TypeProxyResponseAbort:
			var f tunnel.ProxyFailure
			_ = m.DecodePayload(&f)
			t.Fatalf("%s: %+v", m.Type, f)
		}
	}
	return status, body
}

func msgTypes(ms []tunnel.Message) string {
	var out []string
	for _, m := range ms {
		out = append(out, m.Type)
	}
	return strings.Join(out, " ")
}

// TestHostedConformance runs our agent against the hosted PipeOps
// simulator and a real API server, and checks every part of the protocol
// hosted PipeOps relies on: registration, the gateway socket, heartbeats,
// and the Kubernetes API through proxy_request, ws_start and
// tcp_tunnel_start.
func TestHostedConformance(t *testing.T) {
	h := startHostedAgent(t)
	sim, env, ns := h.sim, h.env, h.ns
	ctx := context.Background()

	t.Run("register payload", func(t *testing.T) {
		regs := sim.Registrations()
		if len(regs) == 0 {
			t.Fatal("no register message")
		}
		f := regs[0].Fields
		for _, k := range []string{"agent_id", "name", "k8s_version", "hostname", "agent_version", "server_ip", "region", "cloud_provider"} {
			if _, ok := f[k].(string); !ok {
				t.Errorf("register %s = %#v, want a string", k, f[k])
			}
		}
		for _, k := range []string{"labels", "features"} {
			if _, ok := f[k].(map[string]any); !ok {
				t.Errorf("register %s = %#v, want an object", k, f[k])
			}
		}
		// k8s_version is the API server's own (a source build says v0.0.0-master).
		r := regs[0].Register
		if r.AgentID != "agent-hosted" || r.Name != "hosted-edge" || !strings.HasPrefix(r.K8sVersion, "v") || r.K8sServiceToken != "" {
			t.Errorf("register %+v", r)
		}
		if regs[0].Message.RequestID == "" {
			t.Error("register without request_id: register_success could not be matched to it")
		}
	})

	t.Run("gateway socket", func(t *testing.T) {
		q := sim.GatewayURLs()[0].Query()
		if q.Get("cluster_uuid") != sim.ClusterUUID || q.Get("supports_yamux") != "true" || q.Get("supports_response_streaming") != "true" || q.Get("agent_version") == "" {
			t.Errorf("gateway query %v", q)
		}
		if q.Has(tunnel.CapabilityK8sHTTP) {
			t.Errorf("AGENT_K8S_API_OVER_JSON=true, but the query offers %s", tunnel.CapabilityK8sHTTP)
		}
	})

	t.Run("heartbeat", func(t *testing.T) {
		hb, err := sim.WaitHeartbeat(within(t, 15*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		var p struct {
			Metadata map[string]any `json:"metadata"`
		}
		if err := json.Unmarshal(hb.Payload, &p); err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"cpu_usage", "memory_usage"} {
			if _, ok := p.Metadata[k].(string); !ok {
				t.Errorf("heartbeat metadata %s = %#v, want a string", k, p.Metadata[k])
			}
		}
		var d tunnel.Heartbeat
		if err := hb.DecodePayload(&d); err != nil || d.ClusterID != sim.ClusterUUID || d.Status != tunnel.StatusHealthy || d.TunnelStatus != "connected" {
			t.Errorf("heartbeat %+v %v", d, err)
		}
	})

	cm, err := env.Client.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "existing"}, Data: map[string]string{"k": "v"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	getPath := "/api/v1/namespaces/" + ns + "/configmaps/existing"

	for _, streaming := range []bool{false, true} {
		t.Run(fmt.Sprintf("GET streaming=%v", streaming), func(t *testing.T) {
			id := fmt.Sprintf("get-%v", streaming)
			r, err := sim.ProxyRequest(id, tunnel.ProxyRequest{Method: "GET", Path: getPath, ResponseStreaming: streaming,
				Headers: tunnel.Headers{"Accept": {"application/json"}, "Authorization": {"Bearer caller-token-not-forwarded"}}})
			if err != nil {
				t.Fatal(err)
			}
			ms, err := r.Until(within(t, 15*time.Second), hostedsim.ProxyDone)
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case !streaming && (len(ms) != 1 || ms[0].Type != tunnel.TypeProxyResponse):
				t.Fatalf("answer %s, want one proxy_response", msgTypes(ms))
			case streaming && (len(ms) < 3 || ms[0].Type != tunnel.TypeProxyResponseHeader || ms[len(ms)-1].Type != tunnel.TypeProxyResponseEnd):
				t.Fatalf("answer %s, want header, chunks, end", msgTypes(ms))
			}
			status, body := answer(t, ms)
			var got corev1.ConfigMap
			if err := json.Unmarshal(body, &got); err != nil || status != 200 {
				t.Fatalf("answer %d %q: %v", status, body, err)
			}
			if got.UID != cm.UID || got.Data["k"] != "v" {
				t.Fatalf("answer is not the API server's object: %+v", got)
			}
		})
	}

	t.Run("POST with a base64 body creates an object", func(t *testing.T) {
		obj := `{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"from-json"},"data":{"made":"by proxy_request"}}`
		r, err := sim.ProxyRequest("post", tunnel.ProxyRequest{Method: "POST", Path: "/api/v1/namespaces/" + ns + "/configmaps",
			Headers: tunnel.Headers{"Content-Type": {"application/json"}, "Authorization": {"Bearer caller-token-not-forwarded"}},
			Body:    []byte(obj)})
		if err != nil {
			t.Fatal(err)
		}
		ms, err := r.Until(within(t, 15*time.Second), hostedsim.ProxyDone)
		if err != nil {
			t.Fatal(err)
		}
		if status, body := answer(t, ms); status != http.StatusCreated {
			t.Fatalf("POST answered %d %s", status, body)
		}
		got, err := env.Client.CoreV1().ConfigMaps(ns).Get(ctx, "from-json", metav1.GetOptions{})
		if err != nil || got.Data["made"] != "by proxy_request" {
			t.Fatalf("created object: %+v %v", got, err)
		}
	})

	t.Run("streamed request body", func(t *testing.T) {
		id := "upload"
		r, err := sim.ProxyRequest(id, tunnel.ProxyRequest{Method: "POST", Path: "/api/v1/namespaces/" + ns + "/configmaps",
			Headers: tunnel.Headers{"Content-Type": {"application/json"}}, StreamBody: true, ResponseStreaming: true})
		if err != nil {
			t.Fatal(err)
		}
		obj := `{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"streamed"},"data":{"big":"` + strings.Repeat("x", 100<<10) + `"}}`
		for i, key := 0, "data"; len(obj) > 0; i++ {
			n := min(len(obj), 7000)
			if err := sim.RequestChunk(id, key, []byte(obj[:n])); err != nil {
				t.Fatal(err)
			}
			obj = obj[n:]
			key = map[string]string{"data": "chunk", "chunk": "data"}[key]
		}
		if err := sim.RequestStreamEnd(id); err != nil {
			t.Fatal(err)
		}
		ms, err := r.Until(within(t, 15*time.Second), hostedsim.ProxyDone)
		if err != nil {
			t.Fatal(err)
		}
		if status, body := answer(t, ms); status != http.StatusCreated {
			t.Fatalf("answered %d %.200s", status, body)
		}
		got, err := env.Client.CoreV1().ConfigMaps(ns).Get(ctx, "streamed", metav1.GetOptions{})
		if err != nil || len(got.Data["big"]) != 100<<10 {
			t.Fatalf("created object: %v (data %d bytes)", err, len(got.Data["big"]))
		}
	})

	t.Run("watch streams a later event, a slow request does not block another, cancel ends it", func(t *testing.T) {
		list, err := env.Client.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		id := "watch"
		r, err := sim.ProxyRequest(id, tunnel.ProxyRequest{Method: "GET", Path: "/api/v1/namespaces/" + ns + "/configmaps",
			Query: "watch=true&resourceVersion=" + list.ResourceVersion, ResponseStreaming: true})
		if err != nil {
			t.Fatal(err)
		}
		wctx := within(t, 20*time.Second)
		if m, err := r.Next(wctx); err != nil || m.Type != tunnel.TypeProxyResponseHeader {
			t.Fatalf("watch header: %v %v", m, err)
		}
		// The watch is in flight; another request is answered meanwhile.
		r2, _ := sim.ProxyRequest("meanwhile", tunnel.ProxyRequest{Method: "GET", Path: getPath})
		if ms, err := r2.Until(wctx, hostedsim.ProxyDone); err != nil || len(ms) != 1 || ms[0].Type != tunnel.TypeProxyResponse {
			t.Fatalf("request during a watch: %v %v", msgTypes(ms), err)
		}
		if _, err := env.Client.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "late"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		var seen []byte
		for !bytes.Contains(seen, []byte(`"name":"late"`)) {
			m, err := r.Next(wctx)
			if err != nil {
				t.Fatalf("the event of an object created after the watch started: %v (got %q)", err, seen)
			}
			if m.Type != tunnel.TypeProxyResponseChunk {
				t.Fatalf("watch sent %s", m.Type)
			}
			var c tunnel.ProxyResponseChunk
			_ = m.DecodePayload(&c)
			seen = append(seen, c.Data...)
		}
		if !bytes.Contains(seen, []byte(`"type":"ADDED"`)) {
			t.Fatalf("event %q", seen)
		}
		if n := h.inFlight(t); n != 1 {
			t.Fatalf("in-flight gauge %d during the watch", n)
		}

		if err := sim.Cancel(id); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the in-flight gauge back to 0 after proxy_cancel", 10*time.Second, func() bool { return h.inFlight(t) == 0 })
		// An event the watch would have streamed, then a request whose answer
		// comes after anything the watch could still have sent.
		if _, err := env.Client.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "after-cancel"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		r3, _ := sim.ProxyRequest("marker", tunnel.ProxyRequest{Method: "GET", Path: getPath})
		if _, err := r3.Until(wctx, hostedsim.ProxyDone); err != nil {
			t.Fatal(err)
		}
		select {
		case m := <-r.C():
			t.Fatalf("after proxy_cancel the agent sent %s for the watch", m.Type)
		default:
		}
	})

	t.Run("65th concurrent request is refused with 429", func(t *testing.T) {
		list, err := env.Client.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for i := range 64 {
			id := fmt.Sprintf("hold-%d", i)
			ids = append(ids, id)
			if _, err := sim.ProxyRequest(id, tunnel.ProxyRequest{Method: "GET", Path: "/api/v1/namespaces/" + ns + "/configmaps",
				Query: "watch=true&resourceVersion=" + list.ResourceVersion, ResponseStreaming: true}); err != nil {
				t.Fatal(err)
			}
		}
		r, _ := sim.ProxyRequest("one-too-many", tunnel.ProxyRequest{Method: "GET", Path: getPath})
		ms, err := r.Until(within(t, 15*time.Second), hostedsim.ProxyDone)
		if err != nil {
			t.Fatal(err)
		}
		var f tunnel.ProxyFailure
		if len(ms) != 1 || ms[0].Type != tunnel.TypeProxyError || ms[0].DecodePayload(&f) != nil || f.Status != http.StatusTooManyRequests {
			t.Fatalf("65th request: %s %+v, want proxy_error 429", msgTypes(ms), f)
		}
		eventually(t, "64 requests in flight", 10*time.Second, func() bool { return h.inFlight(t) == 64 })
		for _, id := range ids {
			if err := sim.Cancel(id); err != nil {
				t.Fatal(err)
			}
		}
		eventually(t, "the in-flight gauge back to 0", 15*time.Second, func() bool { return h.inFlight(t) == 0 })
	})

	t.Run("ws_start that cannot upgrade", func(t *testing.T) {
		r, err := sim.WSStart(tunnel.WSStart{StreamID: "exec-1", Method: "GET", Path: "/api/v1/namespaces/" + ns + "/pods/nope/exec",
			Query: "command=sh&stdin=true&stdout=true", Headers: tunnel.Headers{"Authorization": {"Bearer caller-token-not-forwarded"}}})
		if err != nil {
			t.Fatal(err)
		}
		ms, err := r.Until(within(t, 15*time.Second), hostedsim.RelayDone)
		if err != nil {
			t.Fatal(err)
		}
		var f tunnel.ProxyFailure
		if len(ms) != 2 || ms[0].Type != tunnel.TypeProxyError || ms[0].DecodePayload(&f) != nil || !strings.Contains(f.Error, "status: 404") {
			t.Fatalf("answer %s %+v, want proxy_error (404: no such pod) then a close", msgTypes(ms), f)
		}
	})

	t.Run("tcp_tunnel_start is answered with tcp_tunnel_close", func(t *testing.T) {
		r, err := sim.TCPTunnelStart("tcp-1", tunnel.TCPTunnelStart{TunnelID: "tun", ServiceName: "postgres", ServiceNamespace: ns, ServicePort: 5432, GatewayPort: 5432})
		if err != nil {
			t.Fatal(err)
		}
		ms, err := r.Until(within(t, 15*time.Second), hostedsim.RelayDone)
		if err != nil {
			t.Fatal(err)
		}
		var c tunnel.TCPTunnelClose
		if len(ms) != 1 || ms[0].DecodePayload(&c) != nil || c.Reason != "connection_failed" || c.Error == "" {
			t.Fatalf("answer %s %+v", msgTypes(ms), c)
		}
	})
}
