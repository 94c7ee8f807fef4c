package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pipeops/tunnel/shared/stack"
)

// TestRestarts restarts each component under steady traffic: the gateway
// (the agent is back within 2 s of the gateway being up, routes intact), the
// agent (it resumes as the same cluster), and the control plane (traffic
// does not notice).
func TestRestarts(t *testing.T) {
	e := newEnv(t, stack.Options{}, stack.ClusterOptions{})
	ctx := context.Background()
	e.route(t)
	tr := startTraffic(e.s, e.host, "hello from edge", 20*time.Millisecond)
	defer tr.close()

	t.Run("gateway", func(t *testing.T) {
		tr.reset()
		start := time.Now()
		// The gateway drains for up to SHUTDOWN_TIMEOUT (5 s here); with
		// only idle pooled streams left it must not wait that long.
		e.s.Gateway.Stop(10 * time.Second)
		if stopped := time.Since(start); stopped > 3*time.Second {
			t.Errorf("the gateway took %s to stop with no request in flight", stopped)
		}
		if err := e.s.Gateway.Start(); err != nil {
			t.Fatal(err)
		}
		took := served(t, e.s, e.host, "hello from edge", 2*time.Second)
		ok, failures := tr.reset()
		t.Logf("gateway restarted in %s; serving through the agent again %s after it was up (%d requests ok, %d failed while it was down)",
			time.Since(start).Round(time.Millisecond), took.Round(time.Millisecond), ok, len(failures))
	})

	t.Run("agent", func(t *testing.T) {
		stateID := func() string {
			cm, err := e.c.Kube.Client.CoreV1().ConfigMaps(stack.AgentNamespace).Get(ctx, "pipeops-agent-state", metav1.GetOptions{})
			if err != nil {
				t.Fatalf("agent state: %v", err)
			}
			for _, v := range cm.Data {
				if strings.Contains(v, e.c.ID) {
					return e.c.ID
				}
			}
			t.Fatalf("the agent state does not hold cluster id %s: %v", e.c.ID, cm.Data)
			return ""
		}
		stateID()
		if err := e.c.Agent.Restart(5 * time.Second); err != nil {
			t.Fatal(err)
		}
		took := served(t, e.s, e.host, "hello from edge", 5*time.Second)
		stateID()
		out, err := e.s.CLI(ctx, "cluster", "list")
		if err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(out, "\n") - 1; n != 1 || !strings.Contains(out, e.c.ID) {
			t.Fatalf("after the agent restart the control plane lists %d clusters, want the same one:\n%s", n, out)
		}
		ok, failures := tr.reset()
		t.Logf("agent back and serving %s after it was ready (%d ok, %d failed during the restart)", took.Round(time.Millisecond), ok, len(failures))
	})

	t.Run("control plane", func(t *testing.T) {
		tr.reset()
		if err := e.s.ControlPlane.Restart(5 * time.Second); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second) // the agent notices its registration socket dropped and re-registers
		ok, failures := tr.reset()
		if len(failures) > 0 || ok < 50 {
			t.Fatalf("traffic during the control plane restart: %d ok, failures %v", ok, failures)
		}
		t.Logf("control plane restarted: %d requests, none failed", ok)
	})
}
