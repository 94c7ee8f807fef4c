package leader_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/pipeops/tunnel/agent/leader"
	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/testenv/kubetest"
)

func TestMain(m *testing.M) { testenv.Main(m, kubetest.Stop) }

// replica is one agent replica taking part in the election.
type replica struct {
	e       *leader.Elector
	elected atomic.Int32
	cancel  context.CancelFunc
	done    sync.WaitGroup
}

// TestElection runs three replicas against a real API server, each with a
// ServiceAccount that has exactly Rules: one leads (and is told, once),
// the others do not; when the leader stops it releases the Lease and
// another replica leads within a retry period or two, not a whole Lease.
func TestElection(t *testing.T) {
	env := kubetest.Start(t) // first: the shared server's goroutines are not this test's
	testenv.LeakCheck(t)
	ns := env.Namespace(t)
	acct := env.ServiceAccount(t, ns, "agent", kubetest.Grant{Namespace: ns, Rules: leader.Rules()})
	const retry = 200 * time.Millisecond
	start := func(id string) *replica {
		// A client of its own per replica, as separate pods have, whose
		// connections the test closes.
		hc, err := rest.HTTPClientFor(acct.Config)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(hc.CloseIdleConnections)
		client, err := kubernetes.NewForConfigAndClient(acct.Config, hc)
		if err != nil {
			t.Fatal(err)
		}
		r := &replica{}
		r.e = leader.New(leader.Config{Client: client, Namespace: ns, Identity: id, OnElected: func() { r.elected.Add(1) },
			LeaseDuration: 10 * time.Second, RenewDeadline: 5 * time.Second, RetryPeriod: retry})
		ctx, cancel := context.WithCancel(context.Background())
		r.cancel = cancel
		r.done.Go(func() { r.e.Run(ctx) })
		return r
	}
	stop := func(r *replica) { r.cancel(); r.done.Wait() }
	replicas := map[string]*replica{"pod-a": start("pod-a"), "pod-b": start("pod-b"), "pod-c": start("pod-c")}
	defer func() {
		for _, r := range replicas {
			stop(r)
		}
	}()
	leaders := func() []string {
		var out []string
		for id, r := range replicas {
			if r.e.IsLeader() {
				out = append(out, id)
			}
		}
		return out
	}
	waitLeader := func(what string) string {
		t.Helper()
		deadline := time.Now().Add(8 * time.Second)
		for time.Now().Before(deadline) {
			if l := leaders(); len(l) == 1 {
				return l[0]
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("%s: leaders %v, want exactly one", what, leaders())
		return ""
	}
	first := waitLeader("at start")
	time.Sleep(3 * retry) // renewals: still one leader, told once
	if l := leaders(); len(l) != 1 || l[0] != first || replicas[first].elected.Load() != 1 {
		t.Fatalf("after renewals: leaders %v (first %s, told %d times)", l, first, replicas[first].elected.Load())
	}
	lease, err := env.Client.CoordinationV1().Leases(ns).Get(context.Background(), leader.LeaseName, metav1.GetOptions{})
	if err != nil || lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity != first {
		t.Fatalf("lease %v, err %v; want held by %s", lease, err, first)
	}

	stopped := time.Now()
	stop(replicas[first])
	delete(replicas, first)
	second := waitLeader("after the leader stopped")
	took := time.Since(stopped)
	t.Logf("%s led; after it stopped, %s led %s later", first, second, took.Round(time.Millisecond))
	if second == first || replicas[second].elected.Load() != 1 {
		t.Errorf("second leader %s, told %d times", second, replicas[second].elected.Load())
	}
	if took > 5*time.Second {
		t.Errorf("the next leader took %s: the Lease was not released", took)
	}
}
