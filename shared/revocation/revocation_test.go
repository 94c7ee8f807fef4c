package revocation

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/pipeops/tunnel/shared/testenv"
)

func TestMain(m *testing.M) { testenv.MainNoLeaks(m, nil) }

// fakeClock is a clock whose time moves only by Advance. Every timer Run
// creates is reported on created: Run makes one per wake, after it has
// handled the previous one, so receiving from created is how a test knows
// Run has finished its work and waits again.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	timers  []*fakeTimer
	created chan time.Duration
}

type fakeTimer struct {
	at      time.Time
	c       chan time.Time
	stopped bool
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC), created: make(chan time.Duration, 100)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTimer(d time.Duration) (<-chan time.Time, func() bool) {
	c.mu.Lock()
	tm := &fakeTimer{at: c.now.Add(d), c: make(chan time.Time, 1)}
	if d <= 0 {
		tm.c <- c.now
	} else {
		c.timers = append(c.timers, tm)
	}
	c.mu.Unlock()
	c.created <- d
	return tm.c, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		was := !tm.stopped
		tm.stopped = true
		return was
	}
}

// Advance moves the time forward, fires the timers that are due, and
// reports whether it fired any.
func (c *fakeClock) Advance(d time.Duration) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	fired := false
	kept := c.timers[:0]
	for _, tm := range c.timers {
		switch {
		case tm.stopped:
		case !c.now.Before(tm.at):
			tm.c <- c.now
			fired = true
		default:
			kept = append(kept, tm)
		}
	}
	c.timers = kept
	return fired
}

// waitIdle waits until Run has made its next timer, that is, has handled
// everything up to now, and returns the timer's duration.
func (c *fakeClock) waitIdle(t *testing.T) time.Duration {
	t.Helper()
	select {
	case d := <-c.created:
		return d
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not come back to wait")
		return 0
	}
}

// fakeChecker answers from a set of revoked ids, or fails with err.
type fakeChecker struct {
	mu      sync.Mutex
	revoked map[string]bool
	err     error
	asked   []string
}

func (f *fakeChecker) RevokedFresh(_ context.Context, id string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asked = append(f.asked, id)
	if f.err != nil {
		return false, f.err
	}
	return f.revoked[id], nil
}

func (f *fakeChecker) set(revoked map[string]bool, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.revoked, f.err = revoked, err
}

func (f *fakeChecker) takeAsked() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	a := f.asked
	f.asked = nil
	return a
}

// cutLog records the cuts, by connection name.
type cutLog struct {
	mu   sync.Mutex
	cuts map[string]error
}

func (l *cutLog) conn(name, kind, token string, expires time.Time) Conn {
	return Conn{Kind: kind, TokenID: token, Expires: expires, Cluster: "c-" + name, Cut: func(cause error) {
		l.mu.Lock()
		defer l.mu.Unlock()
		if _, dup := l.cuts[name]; dup {
			panic("cut twice: " + name)
		}
		l.cuts[name] = cause
	}}
}

func (l *cutLog) get() map[string]error {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]error, len(l.cuts))
	for k, v := range l.cuts {
		out[k] = v
	}
	return out
}

// value is the value of a counter or gauge.
func value(t *testing.T, m prometheus.Metric) float64 {
	t.Helper()
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		t.Fatal(err)
	}
	if d.Counter != nil {
		return d.GetCounter().GetValue()
	}
	return d.GetGauge().GetValue()
}

type harness struct {
	t       *testing.T
	tr      *Tracker
	clock   *fakeClock
	checker *fakeChecker
	cuts    *cutLog
	reg     *prometheus.Registry
	logs    *testenv.LogBuffer
}

const interval = 15 * time.Second

// start makes a Tracker on a fake clock and runs it until the test ends.
func start(t *testing.T) *harness {
	t.Helper()
	h := &harness{t: t, clock: newFakeClock(), checker: &fakeChecker{}, cuts: &cutLog{cuts: map[string]error{}},
		reg: prometheus.NewRegistry(), logs: &testenv.LogBuffer{}}
	tr, err := New(Config{Checker: h.checker, Interval: interval, Metrics: h.reg, MetricsNamespace: "test",
		Kinds: []string{"ws"}, Logger: slog.New(slog.NewTextHandler(h.logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	tr.clock = h.clock
	h.tr = tr
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); tr.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after its context ended")
		}
	})
	if d := h.clock.waitIdle(t); d != interval {
		t.Fatalf("first wait %s, want the interval", d)
	}
	return h
}

// tick moves the clock by d and, when that wakes Run, waits for Run to
// handle it.
func (h *harness) tick(d time.Duration) {
	h.t.Helper()
	if h.clock.Advance(d) {
		h.clock.waitIdle(h.t)
	}
}

func (h *harness) wantCuts(want map[string]error) {
	h.t.Helper()
	got := h.cuts.get()
	if len(got) != len(want) {
		h.t.Fatalf("cut %v, want %v", got, want)
	}
	for name, cause := range want {
		if !errors.Is(got[name], cause) {
			h.t.Fatalf("cut %v, want %v", got, want)
		}
	}
}

func TestRevokedConnectionsCutOnTheNextRound(t *testing.T) {
	h := start(t)
	h.tr.Register(h.cuts.conn("a1", "ws", "tok-a", time.Time{}))
	h.tr.Register(h.cuts.conn("a2", "k8s", "tok-a", time.Time{})) // one token, two connections
	h.tr.Register(h.cuts.conn("b", "ws", "tok-b", time.Time{}))
	h.checker.set(map[string]bool{"tok-a": true}, nil)

	h.tick(interval - time.Second)
	h.wantCuts(nil) // not yet a round
	if asked := h.checker.takeAsked(); len(asked) != 0 {
		t.Fatalf("asked %v before the interval", asked)
	}
	h.tick(time.Second)
	h.wantCuts(map[string]error{"a1": ErrRevoked, "a2": ErrRevoked})
	asked := h.checker.takeAsked()
	if len(asked) != 2 {
		t.Fatalf("asked %v, want each token once", asked)
	}
	if n := h.tr.Len(); n != 1 {
		t.Fatalf("%d connections left, want 1", n)
	}
	if got := value(t, h.tr.metrics.cut.WithLabelValues("ws", "revoked")); got != 1 {
		t.Fatalf("cut{ws,revoked} = %v", got)
	}
	if got := value(t, h.tr.metrics.live.WithLabelValues("ws")); got != 1 {
		t.Fatalf("live{ws} = %v", got)
	}
	if logs := h.logs.String(); !strings.Contains(logs, "level=WARN") || !strings.Contains(logs, "token_id=tok-a") ||
		!strings.Contains(logs, "cluster=c-a1") || strings.Count(logs, "cutting connection: token revoked") != 2 {
		t.Fatalf("logs:\n%s", logs)
	}
	// The next round asks only about what is left.
	h.tick(interval)
	if asked := h.checker.takeAsked(); len(asked) != 1 || asked[0] != "tok-b" {
		t.Fatalf("second round asked %v", asked)
	}
}

func TestExpiredConnectionsCutAtExpiry(t *testing.T) {
	h := start(t)
	now := h.clock.Now()
	h.tr.Register(h.cuts.conn("soon", "ws", "tok-soon", now.Add(3*time.Second)))
	// Earlier than the wake Run waits for: Run wakes and waits for the expiry.
	if d := h.clock.waitIdle(t); d != 3*time.Second {
		t.Fatalf("Run waits %s after the registration, want 3s (the expiry)", d)
	}
	h.tr.Register(h.cuts.conn("later", "ws", "tok-later", now.Add(time.Hour))) // no earlier: no wake
	h.tr.Register(h.cuts.conn("never", "ws", "tok-never", time.Time{}))

	h.tick(2 * time.Second)
	h.wantCuts(nil)
	h.tick(time.Second)
	h.wantCuts(map[string]error{"soon": ErrExpired})
	if asked := h.checker.takeAsked(); len(asked) != 0 {
		t.Fatalf("an expiry asked the store about %v", asked)
	}
	if got := value(t, h.tr.metrics.cut.WithLabelValues("ws", "expired")); got != 1 {
		t.Fatalf("cut{ws,expired} = %v", got)
	}

	// A connection whose token expired before it registered is cut at once.
	h.tr.Register(h.cuts.conn("stale", "ws", "tok-stale", h.clock.Now().Add(-time.Second)))
	h.clock.waitIdle(t)
	h.wantCuts(map[string]error{"soon": ErrExpired, "stale": ErrExpired})
	if n := h.tr.Len(); n != 2 {
		t.Fatalf("%d connections left, want 2", n)
	}
}

func TestStoreErrorKeepsConnections(t *testing.T) {
	h := start(t)
	h.tr.Register(h.cuts.conn("a", "ws", "tok-a", time.Time{}))
	h.tr.Register(h.cuts.conn("b", "ws", "tok-b", time.Time{}))
	h.checker.set(map[string]bool{"tok-a": true}, errors.New("connection refused"))
	for range 5 { // five failed rounds inside a minute
		h.tick(interval)
	}
	h.wantCuts(nil)
	if n := h.tr.Len(); n != 2 {
		t.Fatalf("%d connections left, want 2", n)
	}
	if a, none := h.tr.Tracked("tok-a"), h.tr.Tracked("tok-none"); a != 1 || none != 0 {
		t.Fatalf("Tracked: tok-a %d, tok-none %d; want 1 and 0", a, none)
	}
	if got := value(t, h.tr.metrics.checkFailures); got != 10 {
		t.Fatalf("check failures = %v, want 10", got)
	}
	if n := strings.Count(h.logs.String(), "token revocation check failed"); n != 2 {
		t.Fatalf("%d warnings about the store in 75 s, want 2 (one per minute):\n%s", n, h.logs.String())
	}
	// The store is back: the revoked token's connection goes.
	h.checker.set(map[string]bool{"tok-a": true}, nil)
	h.tick(interval)
	h.wantCuts(map[string]error{"a": ErrRevoked})
}

func TestUnregister(t *testing.T) {
	h := start(t)
	unregister := h.tr.Register(h.cuts.conn("a", "ws", "tok-a", h.clock.Now().Add(5*time.Second)))
	h.clock.waitIdle(t) // the earlier expiry woke Run
	other := h.tr.Register(h.cuts.conn("b", "ws", "tok-a", time.Time{}))
	if got := value(t, h.tr.metrics.live.WithLabelValues("ws")); got != 2 {
		t.Fatalf("live{ws} = %v", got)
	}
	unregister()
	unregister() // twice is harmless
	if got := value(t, h.tr.metrics.live.WithLabelValues("ws")); got != 1 {
		t.Fatalf("live{ws} after unregister = %v", got)
	}
	other()
	if n := h.tr.Len(); n != 0 {
		t.Fatalf("%d connections left, want none", n)
	}
	h.checker.set(map[string]bool{"tok-a": true}, nil)
	h.tick(time.Hour) // past the expiry and the interval
	h.wantCuts(nil)
	if asked := h.checker.takeAsked(); len(asked) != 0 {
		t.Fatalf("asked %v about no connections", asked)
	}
	if len(h.tr.tokens) != 0 {
		t.Fatalf("tokens left in the map: %v", h.tr.tokens)
	}
}

// TestCutMayUnregister: a Cut that ends its connection at once, whose end
// unregisters it from within Cut, does not deadlock or count twice.
func TestCutMayUnregister(t *testing.T) {
	h := start(t)
	var unregister func()
	cut := make(chan error, 1)
	unregister = h.tr.Register(Conn{Kind: "ws", TokenID: "tok", Cut: func(cause error) { unregister(); cut <- cause }})
	h.checker.set(map[string]bool{"tok": true}, nil)
	h.tick(interval)
	if err := <-cut; !errors.Is(err, ErrRevoked) {
		t.Fatalf("cause %v", err)
	}
	if got := value(t, h.tr.metrics.live.WithLabelValues("ws")); got != 0 {
		t.Fatalf("live{ws} = %v", got)
	}
}

// TestRunRealClock: with the real clock, a revoked token's connection is
// cut within the interval and Run returns when its context ends (goleak in
// TestMain checks nothing is left running).
func TestRunRealClock(t *testing.T) {
	checker := &fakeChecker{}
	tr, err := New(Config{Checker: checker, Interval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); tr.Run(ctx) }()
	cut := make(chan error, 2)
	defer tr.Register(Conn{Kind: "ws", TokenID: "tok", Cut: func(err error) { cut <- err }})()
	tr.Register(Conn{Kind: "ws", TokenID: "short", Expires: time.Now().Add(30 * time.Millisecond), Cut: func(err error) { cut <- err }})
	checker.set(map[string]bool{"tok": true}, nil)
	for _, want := range []error{ErrExpired, ErrRevoked} {
		select {
		case err := <-cut:
			if !errors.Is(err, ErrExpired) && !errors.Is(err, ErrRevoked) {
				t.Fatalf("cut with %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no cut (%v) within 10 s", want)
		}
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}

func TestNilTrackerAndConfig(t *testing.T) {
	var tr *Tracker
	tr.Register(Conn{TokenID: "x"})() // a no-op, not a panic
	for name, cfg := range map[string]Config{
		"no checker":       {},
		"negative":         {Checker: &fakeChecker{}, Interval: -time.Second},
		"metrics, no name": {Checker: &fakeChecker{}, Metrics: prometheus.NewRegistry()},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: New accepted %+v", name, cfg)
		}
	}
	tr, err := New(Config{Checker: CheckerFunc(func(context.Context, string) (bool, error) { return false, nil })})
	if err != nil || tr.interval != DefaultInterval {
		t.Fatalf("defaults: %v, interval %v", err, tr.interval)
	}
}
