package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pipeops/tunnel/shared/stack"
	"github.com/pipeops/tunnel/shared/testenv/kubeletsim"
	"github.com/pipeops/tunnel/shared/testenv/kubetest"
)

// Long holds through the gateway, as a person would keep them open: a
// `get -w` held for holdWatchFor that sees every event on time, and a
// `logs -f` held for holdLogsFor that sees every line on time. They run
// while the rest of the suite does (the test is parallel).
const (
	holdWatchFor = 10 * time.Minute
	holdLogsFor  = 5 * time.Minute
	// onTime is how late an event or a line may arrive.
	onTime = 5 * time.Second
)

func TestKubectlLongHolds(t *testing.T) {
	t.Parallel()
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Fatalf("kubectl is required (make testenv builds it into .testenv/bin): %v", err)
	}
	e := newEnv(t, stack.Options{}, stack.ClusterOptions{Name: "holds", KubeAccess: "write"})
	k := kubeletsim.Start(t, e.c.Kube.Config)
	pod := k.Pod(t, "default", "chatty")
	direct := filepath.Join(t.TempDir(), "admin.kubeconfig")
	if err := kubetest.WriteKubeconfig(direct, e.c.Kube.Config); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), holdWatchFor+2*time.Minute)
	defer cancel()

	// The same two holds run through the gateway and directly against the
	// API server, so a late event is seen to be the tunnel's doing or not.
	type hold struct {
		way         string
		watch, logs *lockedBuffer
	}
	var holds []hold
	for _, w := range []struct{ way, kubeconfig string }{{"gateway", e.c.Kubeconfig}, {"direct", direct}} {
		kc := kubectlRunner{bin: kubectl, kubeconfig: w.kubeconfig}
		h := hold{way: w.way, watch: &lockedBuffer{}, logs: &lockedBuffer{}}
		watch := kc.command(ctx, nil, "get", "configmaps", "--watch", "--request-timeout=0", "-o", "name")
		watch.Stdout, watch.Stderr = h.watch, h.watch
		logs := kc.command(ctx, nil, "logs", "-f", "chatty")
		logs.Stdout, logs.Stderr = h.logs, h.logs
		for _, cmd := range []*exec.Cmd{watch, logs} {
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		}
		holds = append(holds, h)
	}

	arrives := func(what string, out *lockedBuffer, want string) {
		t.Helper()
		deadline := time.Now().Add(onTime)
		for !strings.Contains(out.String(), want) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %q did not arrive within %s; output:\n%s", what, want, onTime, out.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	start := time.Now()
	for i := 0; time.Since(start) < holdWatchFor; i++ {
		if time.Since(start) < holdLogsFor {
			line := fmt.Sprintf("line %d after %s", i, time.Since(start).Round(time.Second))
			if err := pod.Log(kubeletsim.DefaultContainer).WriteLine(line); err != nil {
				t.Fatal(err)
			}
			for _, h := range holds {
				arrives("logs -f "+h.way, h.logs, line)
			}
		}
		if i%4 == 0 {
			name := fmt.Sprintf("event-%d", i)
			cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"}}
			if _, err := e.c.Kube.Client.CoreV1().ConfigMaps("default").Create(ctx, cm, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			for _, h := range holds {
				arrives("get -w "+h.way, h.watch, "configmap/"+name)
			}
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(15 * time.Second):
		}
	}
	t.Logf("get -w held %s and logs -f held %s, through the gateway and directly, every event within %s",
		time.Since(start).Round(time.Second), holdLogsFor, onTime)
}
