// Package apihealth watches whether the agent reaches its own Kubernetes
// API server, so that readiness reflects it and a broken path is reported
// at once, once, with what to check, instead of surfacing as timeouts of
// whatever needed the API next.
package apihealth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/rest"
)

// Defaults of Config.
const (
	DefaultInterval = 10 * time.Second
	DefaultTimeout  = 5 * time.Second
)

// Config configures a Probe. Client is required.
type Config struct {
	// Client asks the API server for /version (a discovery client's
	// RESTClient()): a request every identity may make (the
	// system:public-info-viewer role), so it tests the path and the
	// credentials, not the agent's RBAC.
	Client rest.Interface
	// Host names the API server in messages.
	Host string
	// Interval is the time between checks (default 10 s); Timeout bounds
	// one check (default 5 s).
	Interval, Timeout time.Duration
	// Logger receives the transitions; nil discards.
	Logger *slog.Logger
	// Metrics, when set, gets pipeops_agent_kubernetes_api_up and
	// pipeops_agent_kubernetes_api_check_failures_total.
	Metrics prometheus.Registerer
}

// Probe checks the API server every Interval. Until its first check it
// reports the API as not yet checked (not up). Safe for concurrent use; Run
// once.
type Probe struct {
	cfg      Config
	log      *slog.Logger
	up       prometheus.Gauge
	failures prometheus.Counter

	mu      sync.Mutex
	checked bool
	err     error     // the last check's failure; nil when up
	since   time.Time // when the current state began
}

// New returns a Probe; Run starts it.
func New(cfg Config) (*Probe, error) {
	if cfg.Client == nil {
		return nil, errors.New("apihealth: Config.Client is required")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Probe{cfg: cfg, log: log,
		up: prometheus.NewGauge(prometheus.GaugeOpts{Name: "pipeops_agent_kubernetes_api_up",
			Help: "1 while the agent's last check of its Kubernetes API server succeeded, else 0."}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{Name: "pipeops_agent_kubernetes_api_check_failures_total",
			Help: "Checks of the Kubernetes API server that failed."}),
	}
	if cfg.Metrics != nil {
		if err := errors.Join(cfg.Metrics.Register(p.up), cfg.Metrics.Register(p.failures)); err != nil {
			return nil, fmt.Errorf("apihealth: metrics: %w", err)
		}
	}
	return p, nil
}

// Run checks at once and then every Interval until ctx ends.
func (p *Probe) Run(ctx context.Context) {
	t := time.NewTicker(p.cfg.Interval)
	defer t.Stop()
	for {
		p.check(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Up reports whether the last check succeeded, and when not, why, in words
// for a readiness answer.
func (p *Probe) Up() (bool, string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case !p.checked:
		return false, "Kubernetes API server not checked yet"
	case p.err != nil:
		return false, fmt.Sprintf("Kubernetes API server unreachable since %s: %v", p.since.UTC().Format(time.RFC3339), p.err)
	}
	return true, ""
}

func (p *Probe) check(ctx context.Context) {
	err := p.ask(ctx)
	if ctx.Err() != nil {
		return // stopping: the failure is ours
	}
	p.mu.Lock()
	first, wasUp, was := !p.checked, p.checked && p.err == nil, p.since
	p.checked = true
	changed := first || wasUp != (err == nil)
	p.err = err
	if changed {
		p.since = time.Now()
	}
	p.mu.Unlock()

	if err != nil {
		p.failures.Inc()
		p.up.Set(0)
		if changed {
			p.log.Error("the agent cannot reach its Kubernetes API server; it reports not ready until it can",
				"api_server", p.cfg.Host, "err", err, "check", hint(err))
		}
		return
	}
	p.up.Set(1)
	if changed && !first {
		p.log.Info("the Kubernetes API server is reachable again", "api_server", p.cfg.Host, "down_for", time.Since(was).Round(time.Second))
	}
}

// ask makes one check within Timeout.
func (p *Probe) ask(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
	defer cancel()
	err := p.cfg.Client.Get().AbsPath("/version").Do(ctx).Error()
	if err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("no answer within %s: %w", p.cfg.Timeout, err)
	}
	return err
}

// hint says what to check for a failed check. client-go retries a GET
// after a reset and reports the earlier failure only in its message, so
// the message is read too, not only the error's chain.
func hint(err error) string {
	var netErr *net.OpError
	var dnsErr *net.DNSError
	msg := err.Error()
	has := func(parts ...string) bool {
		for _, p := range parts {
			if strings.Contains(msg, p) {
				return true
			}
		}
		return false
	}
	switch {
	case apierrors.IsUnauthorized(err):
		return "the API server refused the agent's credentials: is the ServiceAccount token mounted " +
			"(automountServiceAccountToken) and the ServiceAccount not deleted?"
	case apierrors.IsForbidden(err):
		return "the API server refused /version to the agent's ServiceAccount: is the system:public-info-viewer binding removed?"
	case errors.As(err, &dnsErr) || has("no such host"):
		return "the API server's name does not resolve: check the cluster DNS and KUBERNETES_SERVICE_HOST"
	case errors.As(err, &netErr) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) ||
		has("connection reset", "connection refused", "EOF", "no route to host"):
		return "no connection to the API server, or one closed before it answered: check NetworkPolicies on the agent's namespace, and that the API server runs"
	case has("no answer within"):
		return "the API server did not answer in time: is it overloaded, or does a firewall drop the agent's packets?"
	}
	return "check that the API server runs and that the agent's pod can reach it"
}
