package e2e

import (
	"context"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pipeops/tunnel/shared/stack"
)

// TestRouteLifecycle: the gateway follows an Ingress being created,
// re-hosted, unlabelled and deleted within 2 s; full re-syncs keep routes
// alive past their expiry, and the routes of a vanished agent expire. The
// 4-hour re-sync and the 24-hour expiry run here at 1 s and 4 s.
func TestRouteLifecycle(t *testing.T) {
	t.Parallel()
	const ttl = 4 * time.Second
	e := newEnv(t,
		stack.Options{ControlPlaneEnv: map[string]string{"ROUTE_TTL": ttl.String(), "REAPER_INTERVAL": "500ms"}},
		stack.ClusterOptions{AgentEnv: map[string]string{"ROUTE_FULL_SYNC_INTERVAL": "1s"}})
	ctx := context.Background()
	ings := e.c.Kube.Client.NetworkingV1().Ingresses("shop")
	second := "second.edge.example.test"
	e.c.Ingress.Handle(second, stack.App("edge"))
	// Test hosts have no DNS for a challenge: the operator vouches for them.
	if err := e.c.GrantDomain(ctx, second); err != nil {
		t.Fatal(err)
	}

	if _, err := e.c.CreateIngress(ctx, "shop", "web", e.host); err != nil {
		t.Fatal(err)
	}
	t.Logf("created: served after %s", served(t, e.s, e.host, "hello from edge", 2*time.Second))

	ing, err := ings.Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ing.Spec.Rules[0].Host = second
	if ing, err = ings.Update(ctx, ing, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Logf("host changed: new host served after %s", served(t, e.s, second, "hello from edge", 2*time.Second))
	t.Logf("host changed: old host gone after %s", unrouted(t, e.s, e.host, 2*time.Second))

	delete(ing.Labels, "pipeops.io/managed")
	if ing, err = ings.Update(ctx, ing, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Logf("label removed: gone after %s", unrouted(t, e.s, second, 2*time.Second))

	ing.Labels = map[string]string{"pipeops.io/managed": "true"}
	if _, err = ings.Update(ctx, ing, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	served(t, e.s, second, "hello from edge", 2*time.Second)
	if err := ings.Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Logf("deleted: gone after %s", unrouted(t, e.s, second, 2*time.Second))

	// Re-syncs refresh the expiry: the route outlives three TTLs.
	if _, err := e.c.CreateIngress(ctx, "shop", "web", e.host); err != nil {
		t.Fatal(err)
	}
	served(t, e.s, e.host, "hello from edge", 2*time.Second)
	tr := startTraffic(e.s, e.host, "hello from edge", 100*time.Millisecond)
	time.Sleep(3 * ttl)
	if ok, failures := tr.close(); len(failures) > 0 || ok < 50 {
		t.Fatalf("route not kept alive by re-syncs: %d ok, failures %v", ok, failures)
	}

	// A vanished agent's routes expire.
	e.c.Agent.Kill()
	t.Logf("agent killed: route expired after %s", unrouted(t, e.s, e.host, ttl+5*time.Second))
}
