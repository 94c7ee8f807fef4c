package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pipeops/tunnel/shared/stack"
)

const deployment = `apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
spec:
  replicas: 1
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: web
          image: nginx:1.27
`

// lockedBuffer collects a process's output while it runs.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestKubectl runs the real kubectl with the kubeconfig the control plane
// hands out: through the gateway's /k8s/ path, the tunnel and the agent
// (with the agent's own credentials) to the cluster's kube-apiserver. A
// watch is held open for 90 s and still receives an event.
func TestKubectl(t *testing.T) {
	t.Parallel()
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Fatalf("kubectl is required (make testenv builds it into .testenv/bin): %v", err)
	}
	e := newEnv(t, stack.Options{}, stack.ClusterOptions{KubeAccess: "write"})
	run := func(stdin string, args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, kubectl, append([]string{"--kubeconfig", e.c.Kubeconfig}, args...)...)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}

	if out := run("", "get", "ns"); !strings.Contains(out, "default") || !strings.Contains(out, stack.AgentNamespace) {
		t.Fatalf("kubectl get ns:\n%s", out)
	}
	if out := run("", "auth", "whoami"); !strings.Contains(out, stack.KubeUser) {
		t.Fatalf("kubectl auth whoami: the API should see the person the token names (%s):\n%s", stack.KubeUser, out)
	}
	// The caller's own impersonation is refused with the reason, never
	// silently dropped (which would run the command as the agent).
	asCmd := exec.Command(kubectl, "--kubeconfig", e.c.Kubeconfig, "--as=nobody", "get", "ns")
	if out, err := asCmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "not supported through the gateway") {
		t.Errorf("kubectl --as=nobody get ns: %v\n%s", err, out)
	}
	if out := run(deployment, "apply", "-f", "-"); !strings.Contains(out, "deployment.apps/web created") {
		t.Fatalf("kubectl apply:\n%s", out)
	}
	if _, err := e.c.Kube.Client.AppsV1().Deployments("default").Get(context.Background(), "web", metav1.GetOptions{}); err != nil {
		t.Fatalf("the applied Deployment is not in the cluster: %v", err)
	}

	// The kubeconfig reaches the cluster by TLS server name with no path
	// prefix, so absolute paths work.
	if out := run("", "get", "--raw", "/version"); !strings.Contains(out, "gitVersion") {
		t.Fatalf("kubectl get --raw /version:\n%s", out)
	}
	if out := run("", "get", "--raw", "/openapi/v3"); !strings.Contains(out, "paths") {
		t.Fatalf("kubectl get --raw /openapi/v3:\n%s", out)
	}
	// The path-prefixed form, with the cluster named by its name.
	if out := run("", "--server", e.s.GatewayHTTPS+"/k8s/"+e.c.Name, "--tls-server-name", "localhost", "get", "ns", "default", "-o", "name"); strings.TrimSpace(out) != "namespace/default" {
		t.Fatalf("kubectl get ns through /k8s/%s:\n%s", e.c.Name, out)
	}

	// A watch held open for 90 s, then an event.
	holdWatch(t, kubectl, e, 90*time.Second, "after-90s")

	// Every request above is in the audit log, as the person.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	eventually(t, "audit entries", 15*time.Second, func() (bool, string) {
		out, err := e.s.CLI(ctx, "audit", "list", "--cluster", e.c.Name, "--user", stack.KubeUser, "--limit", "1000")
		return err == nil && strings.Contains(out, "/version") && strings.Contains(out, "watch") &&
			strings.Contains(out, "/apis/apps/v1/namespaces/default/deployments"), fmt.Sprint(out, err)
	})

	// Offline: a Status naming the cluster and when its agent was last seen.
	e.c.Agent.Stop(10 * time.Second)
	eventually(t, "offline answer", 20*time.Second, func() (bool, string) {
		out, _ := exec.Command(kubectl, "--kubeconfig", e.c.Kubeconfig, "get", "--raw", "/version").CombinedOutput()
		return strings.Contains(string(out), "cluster "+e.c.Name+" ("+e.c.ID+") is offline: its agent was last seen"), string(out)
	})
}

// TestKubectlJSONPath runs the real kubectl through the gateway against a
// cluster whose agent speaks only the JSON proxy path (it does not announce
// supports_k8s_http, as PipeOps agents do not): get, apply (client- and
// server-side), a watch held for two minutes that still receives an event,
// and the refusals that path must make clear (exec cannot be carried, a
// missing pod's logs answer the API's NotFound).
func TestKubectlJSONPath(t *testing.T) {
	t.Parallel()
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Fatalf("kubectl is required (make testenv builds it into .testenv/bin): %v", err)
	}
	e := newEnv(t, stack.Options{}, stack.ClusterOptions{Name: "jsononly", KubeAccess: "write",
		AgentEnv: map[string]string{"AGENT_K8S_API_OVER_JSON": "true"}})
	kc := func(stdin string, args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, kubectl, append([]string{"--kubeconfig", e.c.Kubeconfig}, args...)...)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := kc("", "get", "ns"); err != nil || !strings.Contains(out, "default") {
		t.Fatalf("kubectl get ns: %v\n%s", err, out)
	}
	if out, err := kc(deployment, "apply", "-f", "-"); err != nil || !strings.Contains(out, "deployment.apps/web created") {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	cm := "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ssa, namespace: default}\ndata: {k: v}\n"
	if out, err := kc(cm, "apply", "--server-side", "-f", "-"); err != nil || !strings.Contains(out, "serverside-applied") {
		t.Fatalf("kubectl apply --server-side: %v\n%s", err, out)
	}
	if out, err := kc("", "logs", "-f", "no-such-pod"); err == nil || !strings.Contains(out, "not found") {
		t.Errorf("kubectl logs -f of a missing pod: %v\n%s", err, out)
	}
	if out, err := kc("", "explain", "deployment.spec.replicas"); err != nil || !strings.Contains(out, "replicas") {
		t.Errorf("kubectl explain (OpenAPI over the JSON path): %v\n%s", err, out)
	}

	// Proof that the JSON path carried it: the agent counted its requests.
	metrics := func() string {
		resp, err := http.Get(e.c.AgentURL + "/metrics")
		if err != nil {
			return err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	if m := metrics(); !strings.Contains(m, `pipeops_agent_jsonproxy_requests_total{outcome="ok"}`) {
		t.Fatalf("the agent served no JSON proxy request:\n%s", m)
	}

	// A watch held open for two minutes, then an event.
	holdWatch(t, kubectl, e, 2*time.Minute, "after-2m")
}

// holdWatch runs kubectl get deployments --watch through the gateway, holds
// it open for hold, then labels the Deployment web with tier and waits for
// the watch to print that event: a long watch must neither end nor go
// deaf.
func holdWatch(t *testing.T, kubectl string, e *env, hold time.Duration, tier string) {
	t.Helper()
	var out lockedBuffer
	ctx, cancel := context.WithCancel(context.Background())
	watch := exec.CommandContext(ctx, kubectl, "--kubeconfig", e.c.Kubeconfig, "get", "deployments", "-n", "default",
		"--watch", "--request-timeout=0", "-o", "custom-columns=NAME:.metadata.name,TIER:.metadata.labels.tier", "--no-headers")
	watch.Stdout, watch.Stderr = &out, &out
	if err := watch.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- watch.Wait() }()
	defer func() {
		cancel()
		<-exited
	}()
	eventually(t, "the watch's first listing", 10*time.Second, func() (bool, string) { return strings.Contains(out.String(), "web"), out.String() })
	select {
	case err := <-exited:
		exited <- err // for the deferred wait
		t.Fatalf("the watch ended after less than %s: %v\n%s", hold, err, out.String())
	case <-time.After(hold):
	}
	d, err := e.c.Kube.Client.AppsV1().Deployments("default").Get(context.Background(), "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d.Labels = map[string]string{"tier": tier}
	if _, err := e.c.Kube.Client.AppsV1().Deployments("default").Update(context.Background(), d, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the event after "+hold.String(), 10*time.Second, func() (bool, string) {
		return strings.Contains(out.String(), tier), out.String()
	})
}
