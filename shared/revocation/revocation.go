// Package revocation cuts long-lived authenticated connections whose token
// stops being valid. A token is checked when a connection opens; a
// WebSocket, a Kubernetes watch or an exec stream can then stay open for
// days, long after its token was revoked or expired. Every component that
// holds such connections (the gateway's agent sessions and /k8s requests,
// the control plane's registration sockets, a console's sessions) registers
// each one with a Tracker, which re-checks the tokens of all of them in one
// place, on one schedule, and cuts those whose token was revoked (within the
// check interval) or has expired (at its expiry).
//
// A failing token store never cuts anything: the connections are kept and
// checked again on the next round, since cutting every tunnel because the
// database is briefly down would turn an outage of the database into an
// outage of everything.
package revocation

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// DefaultInterval is how often a Tracker asks the token store, when
// Config.Interval is zero.
const DefaultInterval = 15 * time.Second

// failureLogEvery bounds the warnings about a failing token store: one per
// this period however many rounds fail, so an outage does not flood the log.
const failureLogEvery = time.Minute

// The causes a Tracker hands to Conn.Cut. Their texts are short enough for
// a WebSocket close frame's reason.
var (
	ErrRevoked = errors.New("token revoked")
	ErrExpired = errors.New("token expired")
)

// Checker asks the token store whether a token has been revoked. It must
// ask the store itself, not a cache of not-revoked answers (a cached
// revoked answer is fine: revocation is permanent), and it must return an
// error, not "not revoked", when the store cannot answer.
type Checker interface {
	RevokedFresh(ctx context.Context, tokenID string) (bool, error)
}

// CheckerFunc adapts a function, such as a token store's own Revoked, to
// Checker.
type CheckerFunc func(ctx context.Context, tokenID string) (bool, error)

// RevokedFresh implements Checker.
func (f CheckerFunc) RevokedFresh(ctx context.Context, tokenID string) (bool, error) {
	return f(ctx, tokenID)
}

// Conn is one live connection authenticated by a token, as registered.
type Conn struct {
	// Kind names the sort of connection (such as "agent_session" or
	// "k8s"): a metric label, so a small fixed set per component.
	Kind string
	// TokenID is the token's id (jti); never the token itself.
	TokenID string
	// Expires is when the token expires; zero means it does not.
	Expires time.Time
	// Cluster is the cluster the connection is for, when there is one; it
	// is only logged.
	Cluster string
	// Cut ends the connection, with ErrRevoked or ErrExpired as the cause.
	// The Tracker calls it at most once, from the goroutine of Run, and
	// only after it has unregistered the connection; it must therefore
	// return quickly (hand slow work such as a close handshake to the
	// connection's own goroutine) and may call the unregister function.
	Cut func(cause error)
}

// Config configures a Tracker. Checker is required.
type Config struct {
	Checker Checker
	// Interval is how often the tokens of the live connections are checked
	// against the store (default DefaultInterval): the longest a revoked
	// token's connection stays open while the store answers.
	Interval time.Duration
	// Logger receives one warning per cut connection and the rate-limited
	// warnings of a failing store; nil discards.
	Logger *slog.Logger
	// Metrics, when set, is where the collectors are registered, under
	// MetricsNamespace (such as "pipeops_gateway").
	Metrics          prometheus.Registerer
	MetricsNamespace string
	// Kinds, when given, are the connection kinds whose metric series are
	// created up front, so dashboards see zeros rather than gaps. Other
	// kinds still work.
	Kinds []string
}

// Tracker is the registry of live authenticated connections. Register adds
// one; Run checks them until its context ends. Its methods are safe for
// concurrent use, and Register and the functions it returns never block on
// the token store. A nil *Tracker tracks nothing: Register returns a no-op.
type Tracker struct {
	checker  Checker
	interval time.Duration
	log      *slog.Logger
	metrics  *metrics
	clock    clock

	// wake tells Run that a connection with an earlier expiry than the one
	// Run waits for was registered. Buffered: Register never blocks.
	wake chan struct{}

	mu     sync.Mutex
	tokens map[string]map[*entry]struct{} // token id -> its connections
	// wakeAt is when Run is due to wake next; Register compares expiries
	// with it.
	wakeAt time.Time
}

type entry struct {
	conn  Conn
	since time.Time
}

// New returns a Tracker.
func New(cfg Config) (*Tracker, error) {
	if cfg.Checker == nil {
		return nil, errors.New("revocation: Config.Checker is required")
	}
	if cfg.Interval < 0 {
		return nil, errors.New("revocation: Config.Interval must not be negative")
	}
	if cfg.Metrics != nil && cfg.MetricsNamespace == "" {
		return nil, errors.New("revocation: Config.MetricsNamespace is required with Metrics")
	}
	if cfg.Interval == 0 {
		cfg.Interval = DefaultInterval
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Tracker{
		checker:  cfg.Checker,
		interval: cfg.Interval,
		log:      log,
		metrics:  newMetrics(cfg.Metrics, cfg.MetricsNamespace, cfg.Kinds),
		clock:    realClock{},
		wake:     make(chan struct{}, 1),
		tokens:   make(map[string]map[*entry]struct{}),
	}, nil
}

// Register adds a live connection and returns the function that removes
// it, which the connection's owner must call when the connection ends
// (whether or not it was cut); it may be called more than once. A
// connection whose token has already expired is cut on Run's next wake,
// promptly, not from within Register.
func (t *Tracker) Register(c Conn) (unregister func()) {
	if t == nil {
		return func() {}
	}
	e := &entry{conn: c, since: t.clock.Now()}
	t.mu.Lock()
	set := t.tokens[c.TokenID]
	if set == nil {
		set = make(map[*entry]struct{})
		t.tokens[c.TokenID] = set
	}
	set[e] = struct{}{}
	earlier := !c.Expires.IsZero() && c.Expires.Before(t.wakeAt)
	t.mu.Unlock()
	t.metrics.tracked(c.Kind, 1)
	if earlier {
		select {
		case t.wake <- struct{}{}:
		default: // a wake is already pending
		}
	}
	return func() {
		if t.remove(e) {
			t.metrics.tracked(c.Kind, -1)
		}
	}
}

// remove unregisters e and reports whether it was still registered.
func (t *Tracker) remove(e *entry) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	set := t.tokens[e.conn.TokenID]
	if _, ok := set[e]; !ok {
		return false
	}
	delete(set, e)
	if len(set) == 0 {
		delete(t.tokens, e.conn.TokenID)
	}
	return true
}

// Len returns the number of connections registered.
func (t *Tracker) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, set := range t.tokens {
		n += len(set)
	}
	return n
}

// Tracked returns the number of connections registered under tokenID.
func (t *Tracker) Tracked(tokenID string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.tokens[tokenID])
}

// Run checks the registered connections until ctx ends: every Interval it
// asks the Checker once per distinct token id and cuts the connections of
// the revoked ones, and it cuts each connection when its token expires.
// Cuts are made on Run's goroutine. Run returns when ctx ends; connections
// stay registered (their owners unregister them as they end).
func (t *Tracker) Run(ctx context.Context) {
	nextCheck := t.clock.Now().Add(t.interval)
	var failLog failureLog
	for {
		t.mu.Lock()
		wakeAt := nextCheck
		if e, ok := t.earliestExpiryLocked(); ok && e.Before(wakeAt) {
			wakeAt = e
		}
		t.wakeAt = wakeAt
		t.mu.Unlock()
		fired, stop := t.clock.NewTimer(wakeAt.Sub(t.clock.Now()))
		select {
		case <-ctx.Done():
			stop()
			return
		case <-t.wake:
			stop()
		case <-fired:
		}
		now := t.clock.Now()
		t.cutExpired(now)
		if !now.Before(nextCheck) {
			t.checkRevoked(ctx, &failLog)
			nextCheck = t.clock.Now().Add(t.interval)
		}
	}
}

// earliestExpiryLocked returns the earliest expiry of the registered
// connections. It scans them all: Run calls it once per wake (once per
// interval and once per expiry), which costs less than keeping a heap up to
// date on every Register of a short request. t.mu is held.
func (t *Tracker) earliestExpiryLocked() (time.Time, bool) {
	var earliest time.Time
	for _, set := range t.tokens {
		for e := range set {
			if x := e.conn.Expires; !x.IsZero() && (earliest.IsZero() || x.Before(earliest)) {
				earliest = x
			}
		}
	}
	return earliest, !earliest.IsZero()
}

// cutExpired cuts the connections whose token expired at or before now.
func (t *Tracker) cutExpired(now time.Time) {
	var expired []*entry
	t.mu.Lock()
	for id, set := range t.tokens {
		for e := range set {
			if x := e.conn.Expires; !x.IsZero() && !now.Before(x) {
				expired = append(expired, e)
				delete(set, e)
			}
		}
		if len(set) == 0 {
			delete(t.tokens, id)
		}
	}
	t.mu.Unlock()
	for _, e := range expired {
		t.cut(e, ErrExpired, now)
	}
}

// checkRevoked asks the Checker about every distinct token id once and
// cuts the connections of the revoked ones. The whole round is bounded by
// the interval, so a store that hangs delays the expiry cuts by at most one
// interval; ids not reached count as failures and are asked next round (in
// another order: map iteration is random, so a slow store cannot starve the
// same ids every round).
func (t *Tracker) checkRevoked(ctx context.Context, failLog *failureLog) {
	t.mu.Lock()
	ids := make([]string, 0, len(t.tokens))
	for id := range t.tokens {
		ids = append(ids, id)
	}
	t.mu.Unlock()
	if len(ids) == 0 {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, t.interval)
	defer cancel()
	failed := 0
	var lastErr error
	for i, id := range ids {
		if err := rctx.Err(); err != nil {
			failed += len(ids) - i
			lastErr = err
			break
		}
		revoked, err := t.checker.RevokedFresh(rctx, id)
		if err != nil {
			failed++
			lastErr = err
			continue
		}
		if revoked {
			t.cutToken(id)
		}
	}
	if ctx.Err() != nil {
		return // shutting down: the failures say nothing about the store
	}
	if failed > 0 {
		t.metrics.checkFailures.Add(float64(failed))
		if failLog.due(t.clock.Now()) {
			t.log.Warn("token revocation check failed; keeping the connections until the token store answers",
				"failed", failed, "tokens", len(ids), "rounds_failed_unlogged", failLog.suppressed, "err", lastErr)
			failLog.suppressed = 0
		}
	}
}

// cutToken cuts every connection of the revoked token id.
func (t *Tracker) cutToken(id string) {
	t.mu.Lock()
	set := t.tokens[id]
	delete(t.tokens, id)
	t.mu.Unlock()
	now := t.clock.Now()
	for e := range set {
		t.cut(e, ErrRevoked, now)
	}
}

// cut ends one connection that has already been unregistered.
func (t *Tracker) cut(e *entry, cause error, now time.Time) {
	c := e.conn
	reason := "revoked"
	if errors.Is(cause, ErrExpired) {
		reason = "expired"
	}
	t.metrics.tracked(c.Kind, -1)
	t.metrics.cut.WithLabelValues(c.Kind, reason).Inc()
	t.log.Warn("cutting connection: "+cause.Error(), "kind", c.Kind, "cluster", c.Cluster, "token_id", c.TokenID,
		"open_for", now.Sub(e.since).Round(time.Second))
	if c.Cut != nil {
		c.Cut(cause)
	}
}

// failureLog rate-limits the warnings about a failing store; Run's own.
type failureLog struct {
	last       time.Time
	suppressed int // rounds failed since the last warning, not logged
}

func (f *failureLog) due(now time.Time) bool {
	if !f.last.IsZero() && now.Sub(f.last) < failureLogEvery {
		f.suppressed++
		return false
	}
	f.last = now
	return true
}

// clock is the time source of a Tracker; tests use a fake one.
type clock interface {
	Now() time.Time
	// NewTimer returns a channel that receives once d has passed, and a
	// function that stops the timer.
	NewTimer(d time.Duration) (<-chan time.Time, func() bool)
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) NewTimer(d time.Duration) (<-chan time.Time, func() bool) {
	tm := time.NewTimer(d)
	return tm.C, tm.Stop
}

type metrics struct {
	live          *prometheus.GaugeVec
	cut           *prometheus.CounterVec
	checkFailures prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, ns string, kinds []string) *metrics {
	const sub = "authn"
	m := &metrics{
		live: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "live_connections", Help: "Live token-authenticated connections whose token is re-checked, by kind."}, []string{"kind"}),
		cut: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "connections_cut_total", Help: "Live connections cut because their token was revoked or expired, by kind and reason."}, []string{"kind", "reason"}),
		checkFailures: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "live_check_failures_total", Help: "Token revocation checks of live connections that the token store did not answer (the connections were kept)."}),
	}
	for _, k := range kinds {
		m.live.WithLabelValues(k)
		for _, r := range []string{"revoked", "expired"} {
			m.cut.WithLabelValues(k, r)
		}
	}
	if reg != nil {
		reg.MustRegister(m.live, m.cut, m.checkFailures)
	}
	return m
}

func (m *metrics) tracked(kind string, delta float64) { m.live.WithLabelValues(kind).Add(delta) }
