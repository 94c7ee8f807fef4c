// Package leader elects, among the replicas of a cluster's agent, the one
// that syncs routes to the control plane: a Kubernetes Lease in the agent's
// namespace (client-go's leader election), so that replicas whose views of
// the cluster's Ingresses differ for a moment do not undo each other's
// syncs. Every replica watches the Ingresses and serves streams; only the
// leader sends.
package leader

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// LeaseName is the Lease the replicas compete for, in the agent's
// namespace.
const LeaseName = "pipeops-agent-route-sync"

// The Lease's timing: a leader that stops renewing (a kill -9) is replaced
// within LeaseDuration; one that stops cleanly releases it at once.
const (
	LeaseDuration = 15 * time.Second
	RenewDeadline = 10 * time.Second
	RetryPeriod   = 2 * time.Second
)

// Rules is what the election needs in the agent's namespace: its Lease
// (create cannot be limited to a name by Kubernetes RBAC).
func Rules() []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, ResourceNames: []string{LeaseName}, Verbs: []string{"get", "update"}},
		{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"create"}},
	}
}

// Config configures an Elector. Client, Namespace and Identity are
// required.
type Config struct {
	Client    kubernetes.Interface
	Namespace string
	// Identity names this replica in the Lease (its pod name).
	Identity string
	// OnElected is called each time this replica becomes the leader, on
	// the election's goroutine (the agent queues a full route sync).
	OnElected func()
	Logger    *slog.Logger
	// LeaseDuration, RenewDeadline and RetryPeriod override the defaults
	// (tests shorten them).
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
}

// Elector runs the election and says whether this replica leads. Safe for
// concurrent use.
type Elector struct {
	cfg    Config
	log    *slog.Logger
	leader atomic.Bool
}

// New returns an Elector; Run takes part in the election.
func New(cfg Config) *Elector {
	if cfg.LeaseDuration <= 0 {
		cfg.LeaseDuration = LeaseDuration
	}
	if cfg.RenewDeadline <= 0 {
		cfg.RenewDeadline = RenewDeadline
	}
	if cfg.RetryPeriod <= 0 {
		cfg.RetryPeriod = RetryPeriod
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Elector{cfg: cfg, log: log.With("component", "leader", "lease", cfg.Namespace+"/"+LeaseName)}
}

// IsLeader reports whether this replica holds the Lease.
func (e *Elector) IsLeader() bool { return e.leader.Load() }

// Run campaigns until ctx ends, again after each lost term, and releases
// the Lease when ctx ends while it leads.
func (e *Elector) Run(ctx context.Context) {
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Name: LeaseName, Namespace: e.cfg.Namespace},
		Client:     e.cfg.Client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: e.cfg.Identity},
	}
	for ctx.Err() == nil {
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock:            lock,
			LeaseDuration:   e.cfg.LeaseDuration,
			RenewDeadline:   e.cfg.RenewDeadline,
			RetryPeriod:     e.cfg.RetryPeriod,
			ReleaseOnCancel: true,
			Name:            LeaseName,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(ctx context.Context) {
					e.leader.Store(true)
					e.log.Info("leading: this replica syncs the routes", "identity", e.cfg.Identity)
					if e.cfg.OnElected != nil {
						e.cfg.OnElected()
					}
					<-ctx.Done()
				},
				OnStoppedLeading: func() {
					if e.leader.Swap(false) {
						e.log.Info("no longer leading: another replica syncs the routes", "identity", e.cfg.Identity)
					}
				},
				OnNewLeader: func(id string) {
					if id != e.cfg.Identity {
						e.log.Info("route sync leader", "leader", id)
					}
				},
			},
		})
		if err != nil {
			e.log.Error("leader election cannot run; this replica syncs no routes", "err", err)
			return
		}
		le.Run(ctx)
	}
}
