package e2e

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pipeops/tunnel/shared/stack"
	"github.com/pipeops/tunnel/shared/stack/stacktest"
)

// TestTwoClusters: two clusters on one gateway each get their own traffic,
// neither can claim the other's hostname, and neither's users reach the
// other's Kubernetes API.
func TestTwoClusters(t *testing.T) {
	s := stacktest.Start(t, stack.Options{})
	ctx := context.Background()
	alpha := stacktest.AddCluster(t, s, stack.ClusterOptions{Name: "alpha"})
	beta := stacktest.AddCluster(t, s, stack.ClusterOptions{Name: "beta"})
	hostA, hostB := "app.alpha.example.test", "app.beta.example.test"
	for _, c := range []*stack.Cluster{alpha, beta} {
		// Each stand-in answers every host, so a request that reached the
		// wrong cluster would be answered (and caught) rather than 404.
		c.Ingress.Handle(hostA, stack.App(c.Name))
		c.Ingress.Handle(hostB, stack.App(c.Name))
	}
	if _, err := alpha.CreateIngress(ctx, "shop", "web", hostA); err != nil {
		t.Fatal(err)
	}
	if _, err := beta.CreateIngress(ctx, "shop", "web", hostB); err != nil {
		t.Fatal(err)
	}
	served(t, s, hostA, "hello from alpha", 10*time.Second)
	served(t, s, hostB, "hello from beta", 10*time.Second)

	// alpha claims beta's hostname: the control plane refuses the sync and
	// the gateway keeps sending beta's host to beta.
	if _, err := alpha.CreateIngress(ctx, "stolen", "web", hostB); err != nil {
		t.Fatal(err)
	}
	eventually(t, "alpha's agent told of the conflict", 10*time.Second, func() (bool, string) {
		log, _ := os.ReadFile(alpha.Agent.LogPath)
		return strings.Contains(string(log), hostB) && strings.Contains(strings.ToLower(string(log)), "conflict"), alpha.Agent.LogTail(5)
	})
	for i := 0; i < 20; i++ {
		code, body, err := get(ctx, s, hostB, "/")
		if err != nil || code != 200 || !strings.Contains(body, "hello from beta") {
			t.Fatalf("beta's host after alpha's claim: %d %q %v", code, body, err)
		}
	}
	if code, body, err := get(ctx, s, hostA, "/"); err != nil || code != 200 || !strings.Contains(body, "hello from alpha") {
		t.Fatalf("alpha's own host after its refused claim: %d %q %v", code, body, err)
	}

	// Kubernetes API: each cluster's users reach only their cluster.
	userA, _, err := s.Token(ctx, "user", 0, "alpha")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		cluster string
		want    int
	}{{alpha.ID, 200}, {beta.ID, 403}} {
		if code := k8sStatus(t, s, tc.cluster, userA); code != tc.want && !(tc.want == 403 && code == 401) {
			t.Fatalf("alpha's user token on /k8s/%s: %d, want %d", tc.cluster, code, tc.want)
		}
	}
}
