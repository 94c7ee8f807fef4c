package clusterinfo_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/metadata"

	"github.com/pipeops/tunnel/agent/clusterinfo"
	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/testenv/kubetest"
)

func TestMain(m *testing.M) { testenv.Main(m, kubetest.Stop) }

// TestSnapshot checks the heartbeat's cluster figures against what the API
// server holds, read with only the collector's RBAC. No metrics-server runs
// here, so usage must say unavailable.
func TestSnapshot(t *testing.T) {
	env := kubetest.Start(t)
	ns := env.Namespace(t)
	acct := env.ServiceAccount(t, ns, "agent", kubetest.Grant{Rules: clusterinfo.Rules()})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	for i := range 3 {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("p%d", i)}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "x"}}}}
		if _, err := env.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-" + ns}}
	if _, err := env.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = env.Client.CoreV1().Nodes().Delete(context.Background(), node.Name, metav1.DeleteOptions{})
	})

	meta, err := metadata.NewForConfig(acct.Config)
	if err != nil {
		t.Fatal(err)
	}
	c := clusterinfo.New(acct.Client, meta)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(runCtx) }()
	defer func() { stop(); <-done }()

	wantPods, _ := env.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	wantNodes, _ := env.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	var got int
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		md := c.Snapshot(ctx)
		got = md.K8sPods
		if c.Synced() && md.K8sPods == len(wantPods.Items) && md.K8sNodes == len(wantNodes.Items) {
			if md.CPUUsage.Known || md.MemoryUsage.Known {
				t.Fatalf("usage reported without a metrics API: %+v", md)
			}
			v, _ := env.Client.Discovery().ServerVersion()
			if md.K8sVersion != v.GitVersion {
				t.Fatalf("k8s version %q, want %q", md.K8sVersion, v.GitVersion)
			}
			return
		}
	}
	t.Fatalf("snapshot pods=%d, want %d (nodes want %d)", got, len(wantPods.Items), len(wantNodes.Items))
}
