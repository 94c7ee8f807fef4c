package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/rest"

	"github.com/pipeops/tunnel/shared/stack"
	"github.com/pipeops/tunnel/shared/stack/stacktest"
	"github.com/pipeops/tunnel/shared/testenv/pipeopsagent"
	"github.com/pipeops/tunnel/shared/tunnel"
)

// TestPipeOpsAgent points an agent that behaves as the public PipeOps agent
// does at our control plane and gateway, as a user who already runs one
// would: it registers (with a stale cached cluster id first), connects,
// heartbeats with percent strings, and serves kubectl through the gateway
// on the JSON proxy path (its Kubernetes API stream is raw TCP with no
// credentials) and public HTTP through yamux streams.
func TestPipeOpsAgent(t *testing.T) {
	t.Parallel()
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Fatalf("kubectl is required (make testenv builds it into .testenv/bin): %v", err)
	}
	s := stacktest.Start(t, stack.Options{})
	c := stacktest.AddCluster(t, s, stack.ClusterOptions{Name: "legacy", KubeAccess: "write", NoAgent: true})
	host := "app.legacy.example.test"
	c.Ingress.Handle(host, stack.App("legacy"))
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	ca, err := os.ReadFile(s.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca)
	kubeTransport, err := rest.TransportFor(c.Kube.Config)
	if err != nil {
		t.Fatal(err)
	}
	kubeURL, err := url.Parse(c.Kube.Config.Host)
	if err != nil {
		t.Fatal(err)
	}
	const serviceToken, promPassword = "sim-service-token-value", "sim-prom-password"
	ingress := stack.IngressService + "." + stack.IngressNamespace + ":80"
	a := pipeopsagent.New(pipeopsagent.Config{
		APIURL: s.ControlPlaneURL, Token: c.AgentToken, ClusterName: c.Name, AgentID: "agent-legacy",
		KubeAPIAddr: kubeURL.Host, KubeURL: kubeURL, KubeTransport: kubeTransport, ServiceToken: serviceToken,
		TLS: &tls.Config{RootCAs: roots}, Services: map[string]string{ingress: c.Ingress.Addr, "web.default:80": c.Ingress.Addr},
	})

	// A cached id the control plane does not know is answered with the
	// token's cluster at once: the PipeOps agent never sees an error
	// answer, and would otherwise wait 30 s and exit.
	start := time.Now()
	res, err := a.Register(ctx, "00000000-0000-4000-8000-00000000dead", 30*time.Second)
	if err != nil {
		t.Fatalf("register with a stale cluster id: %v", err)
	}
	if res.ClusterID != c.ID || res.GatewayWSURL == "" || !strings.HasSuffix(res.APIServer, "/k8s/"+c.ID) || res.TunnelURL == "" {
		t.Fatalf("register_success = %+v, want cluster %s with tunnel_url and api_server", res, c.ID)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("register with a stale id took %s", d)
	}

	ready := make(chan struct{})
	runDone := make(chan error, 1)
	runCtx, stopRun := context.WithCancel(ctx)
	go func() { runDone <- a.Run(runCtx, ready) }()
	t.Cleanup(func() {
		stopRun()
		<-runDone
	})
	select {
	case <-ready:
	case err := <-runDone:
		t.Fatalf("gateway connection: %v", err)
	case <-ctx.Done():
		t.Fatal("gateway connection timed out")
	}

	// Heartbeats are acknowledged and recorded with their percent strings.
	connected := time.Now()
	if err := a.Heartbeat(7); err != nil {
		t.Fatal(err)
	}
	if _, err := a.WaitFor(ctx, func(m tunnel.Message) bool { return m.Type == tunnel.TypeHeartbeatAck }); err != nil {
		t.Fatalf("no heartbeat_ack: %v", err)
	}
	var view struct {
		Status        string         `json:"status"`
		LastHeartbeat time.Time      `json:"last_heartbeat"`
		Metadata      map[string]any `json:"metadata"`
		AgentInfo     map[string]any `json:"agent_info"`
	}
	var raw []byte
	eventually(t, "heartbeat recorded", 30*time.Second, func() (bool, string) {
		raw = adminGet(t, ctx, s, "/api/v1/admin/clusters/"+c.ID)
		view.Metadata = nil
		if err := json.Unmarshal(raw, &view); err != nil {
			return false, err.Error()
		}
		return view.LastHeartbeat.After(connected.Add(-time.Second)) && view.Metadata["k8s_pods"] == float64(7), string(raw)
	})
	if view.Status != "connected" || view.Metadata["cpu_usage"] != "0%" || view.Metadata["tunnel_status"] != "connected" {
		t.Errorf("stored heartbeat: %s", raw)
	}
	if mon, _ := view.Metadata["monitoring"].(map[string]any); mon["prometheus_url"] == nil || mon["prometheus_password_set"] != true {
		t.Errorf("stored monitoring: %s", raw)
	}
	if view.AgentInfo["cloud_provider"] != "bare-metal" || view.AgentInfo["server_specs"] == nil || view.AgentInfo["tunnel_port_config"] == nil {
		t.Errorf("stored agent info: %s", raw)
	}
	for _, secret := range []string{serviceToken, promPassword} {
		if bytes.Contains(raw, []byte(secret)) {
			t.Errorf("the cluster record holds %q: %s", secret, raw)
		}
	}

	// kubectl through the gateway: the agent's API stream is raw TCP, so
	// the gateway must use the JSON proxy path.
	kc := func(stdin string, args ...string) (string, error) {
		cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		cmd := exec.CommandContext(cctx, kubectl, append([]string{"--kubeconfig", c.Kubeconfig}, args...)...)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := kc("", "get", "ns"); err != nil || !strings.Contains(out, "default") {
		t.Fatalf("kubectl get ns: %v\n%s", err, out)
	}
	var manifest strings.Builder
	for i := range 30 {
		fmt.Fprintf(&manifest, "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: legacy-%d, namespace: default}\ndata: {blob: %q}\n", i, strings.Repeat("x", 20<<10))
	}
	if out, err := kc(manifest.String(), "apply", "-f", "-"); err != nil || !strings.Contains(out, "legacy-29 created") {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	// A list of 600 KiB comes back in many chunks.
	if out, err := kc("", "get", "configmaps", "-o", "name"); err != nil || strings.Count(out, "configmap/legacy-") != 30 {
		t.Fatalf("kubectl get configmaps: %v\n%s", err, out)
	}
	// Upgrades (exec, attach, port-forward) cannot travel as JSON: refused
	// with a reason, not a hang.
	userTok, _, err := s.Token(ctx, "user", time.Hour, c.ID)
	if err != nil {
		t.Fatal(err)
	}
	up, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.GatewayHTTPS+"/k8s/"+c.ID+"/api/v1/namespaces/default/pods/web-0/exec?command=true&stdout=true", nil)
	up.Header.Set("Authorization", "Bearer "+userTok)
	up.Header.Set("Connection", "Upgrade")
	up.Header.Set("Upgrade", "websocket")
	up.Header.Set("Sec-WebSocket-Version", "13")
	up.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	up.Header.Set("Sec-WebSocket-Protocol", "v5.channel.k8s.io")
	httpsClient := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	if resp, err := httpsClient.Do(up); err != nil {
		t.Errorf("exec upgrade: %v", err)
	} else {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotImplemented || !bytes.Contains(b, []byte("JSON proxy")) {
			t.Errorf("exec upgrade over the JSON path: %s %s", resp.Status, b)
		}
	}
	if a.Sent() == nil {
		t.Fatal("the agent sent nothing on the gateway socket")
	}
	var answers int
	for _, m := range a.Sent() {
		if m.Type == tunnel.TypeProxyResponseChunk {
			answers++
		}
	}
	if answers == 0 {
		t.Error("no proxy_response_chunk went through the gateway")
	}

	// Public traffic still goes through yamux streams.
	if err := c.GrantDomain(ctx, host); err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(map[string]any{"hostname": host, "cluster_uuid": c.ID, "namespace": "default", "service_name": "web",
		"service_port": 80, "ingress_name": "web", "path": "/", "path_type": "Prefix", "routing_mode": "tunnel"})
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.ControlPlaneURL+"/api/v1/gateway/routes/register", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+c.AgentToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("route register: %s %s", resp.Status, b)
	}
	eventually(t, "routed request", 30*time.Second, func() (bool, string) {
		code, out, err := get(ctx, s, host, "/")
		return err == nil && code == http.StatusOK && strings.Contains(out, "hello from legacy"), fmt.Sprint(code, out, err)
	})
}

// adminGet fetches a control plane admin API path with a fresh admin token.
func adminGet(t *testing.T, ctx context.Context, s *stack.Stack, path string) []byte {
	t.Helper()
	tok, _, err := s.Token(ctx, "admin", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.ControlPlaneURL+path, nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %s", path, resp.Status, b)
	}
	return b
}
