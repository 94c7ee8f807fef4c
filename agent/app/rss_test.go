package app

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// BenchmarkAgentRSS measures the agent binary's resident memory idle and
// with 1,000 managed Ingresses synced, against the real control plane,
// gateway and API server. It runs only when asked for:
//
//	make testenv && PATH=$PWD/.testenv/bin:$PATH go test -run '^$' -bench AgentRSS -benchtime 1x ./agent/app/
func BenchmarkAgentRSS(b *testing.B) {
	ctx := context.Background()
	s := newStack(b, nil)
	bin := filepath.Join(b.TempDir(), "pipeops-agent")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/pipeops-agent").CombinedOutput(); err != nil {
		b.Fatalf("build agent: %v\n%s", err, out)
	}
	listen := freeAddr(b)
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(),
		"PIPEOPS_API_URL="+s.cfg.APIURL, "PIPEOPS_TOKEN="+s.token, "PIPEOPS_AGENT_ID=rss", "PIPEOPS_CLUSTER_NAME=edge",
		"POD_NAMESPACE="+s.ns, "AGENT_LISTEN_ADDR="+listen, "KUBECONFIG="+s.kubeconfig,
		"INGRESS_CONTROLLER_SERVICE="+s.cfg.IngressService, "LOG_LEVEL=warn")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = cmd.Process.Signal(os.Interrupt); _ = cmd.Wait() }()
	eventually(b, "the agent's tunnel", 30*time.Second, func() bool { return strings.Contains(s.agents(), "agents=1") })
	time.Sleep(3 * time.Second)
	idle := rssKiB(b, cmd.Process.Pid)

	const n = 1000
	pathType := networkingv1.PathTypePrefix
	for i := range n {
		ing := &networkingv1.Ingress{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("app-%04d", i), Namespace: s.ns, Labels: map[string]string{"pipeops.io/managed": "true"}},
			Spec: networkingv1.IngressSpec{Rules: []networkingv1.IngressRule{{Host: fmt.Sprintf("app-%04d.%s.example.com", i, s.ns), IngressRuleValue: networkingv1.IngressRuleValue{
				HTTP: &networkingv1.HTTPIngressRuleValue{Paths: []networkingv1.HTTPIngressPath{{Path: "/", PathType: &pathType,
					Backend: networkingv1.IngressBackend{Service: &networkingv1.IngressServiceBackend{Name: "web", Port: networkingv1.ServiceBackendPort{Number: 80}}}}}}}}}}}
		if _, err := s.env.Client.NetworkingV1().Ingresses(s.ns).Create(ctx, ing, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	eventually(b, "1,000 routes in the control plane", 120*time.Second, func() bool {
		routes, _ := s.db.Routes(ctx, s.uuid)
		return len(routes) == n
	})
	time.Sleep(3 * time.Second)
	loaded := rssKiB(b, cmd.Process.Pid)
	b.ReportMetric(float64(idle)/1024, "idle_RSS_MiB")
	b.ReportMetric(float64(loaded)/1024, "1k_ingress_RSS_MiB")
}

func rssKiB(b *testing.B, pid int) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kib, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			return kib
		}
	}
	b.Fatal("no VmRSS")
	return 0
}
