package e2e

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/pipeops/tunnel/shared/stack"
)

// TestKubectlWatchRevoked: a `kubectl get --watch` held open through the
// gateway is cut within the gateway's REVOCATION_CHECK_INTERVAL (15 s by
// default) once its user token is revoked, and the token opens nothing
// new. The built binaries, the real kubectl and kube-apiserver.
func TestKubectlWatchRevoked(t *testing.T) {
	t.Parallel()
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Fatalf("kubectl is required (make testenv builds it into .testenv/bin): %v", err)
	}
	e := newEnv(t, stack.Options{}, stack.ClusterOptions{})
	ctx := context.Background()

	// The handed-out kubeconfig, with a user token of the test's own.
	token, id, err := e.s.Token(ctx, "user", 0, e.c.Name)
	if err != nil {
		t.Fatal(err)
	}
	kc, err := clientcmd.LoadFromFile(e.c.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range kc.AuthInfos {
		u.Token = token
	}
	path := filepath.Join(t.TempDir(), "revoked.kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}

	var out lockedBuffer
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	watch := exec.CommandContext(wctx, kubectl, "--kubeconfig", path, "get", "namespaces", "--watch",
		"--request-timeout=0", "-o", "name")
	watch.Stdout, watch.Stderr = &out, &out
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- watch.Wait() }()
	eventually(t, "the watch's first listing", 15*time.Second, func() (bool, string) {
		return strings.Contains(out.String(), "namespace/default"), out.String()
	})

	if err := e.s.RevokeToken(ctx, id); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	select {
	case err := <-exited:
		t.Logf("kubectl's watch ended %s after the revocation: %v\n%s", time.Since(start).Round(time.Millisecond), err, out.String())
	case <-time.After(30 * time.Second): // the default interval, and slack
		t.Fatalf("kubectl's watch still runs 30 s after the revocation:\n%s", out.String())
	}
	if v := metric(t, e.s, "pipeops_gateway_authn_connections_cut_total", `kind="k8s"`, `reason="revoked"`); v < 1 {
		t.Fatalf("connections_cut_total{kind=k8s,reason=revoked} = %v, want at least 1", v)
	}
	cmd := exec.Command(kubectl, "--kubeconfig", path, "get", "namespaces", "--request-timeout=10s")
	// kubectl's wording of a 401.
	if b, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(b), "You must be logged in to the server") {
		t.Fatalf("kubectl with the revoked token: %v\n%s", err, b)
	}
}
