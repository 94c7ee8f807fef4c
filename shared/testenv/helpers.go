package testenv

import (
	"bytes"
	"log/slog"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// LeakCheck fails t if goroutines started during t outlive it. Call it
// before anything registers a cleanup, so that it runs after all of them;
// goroutines already running (a server started by an earlier test, and its
// helpers) are not counted.
func LeakCheck(t *testing.T) {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}

// LeakCheckWithin is LeakCheck for code that leaves goroutines behind which
// end on their own, at most settle after the test's cleanups: a library's
// retry sleep that no context reaches (autocert's renewals). Anything still
// running after settle is a leak.
func LeakCheckWithin(t *testing.T, settle time.Duration) {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() {
		for deadline := time.Now().Add(settle); time.Now().Before(deadline); {
			if goleak.Find(ignore) == nil {
				return
			}
			time.Sleep(50 * time.Millisecond) // polling goroutine stacks, not synchronising
		}
		goleak.VerifyNone(t, ignore)
	})
}

// Clock is a settable time source for tests, safe for concurrent use.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock returns a Clock at a fixed instant.
func NewClock() *Clock { return &Clock{now: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Add moves the clock forward by d.
func (c *Clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// LogBuffer collects log output; safe for the concurrent writes of loggers
// used from several goroutines.
type LogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *LogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything logged so far.
func (b *LogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Logger returns a debug-level text logger writing to b.
func (b *LogBuffer) Logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// Root is ModuleRoot for a test: the module's root directory, or a fatal
// error.
func Root(t testing.TB) string {
	t.Helper()
	root, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// Eventually waits for cond to hold, checking it every few milliseconds,
// and fails t (with what, formatted like fmt.Sprintf) when it has not by
// the test's own deadline: the -timeout of the run, less a margin for the
// cleanups, or two minutes when the run has none. It is how a test waits
// for something another goroutine or process does: on a loaded machine
// that takes longer, and a deadline sized for an idle one would fail.
func Eventually(t testing.TB, cond func() bool, what string, args ...any) {
	t.Helper()
	deadline := WaitDeadline(t)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited until the test's deadline for "+what, args...)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// WaitDeadline is when a test should stop waiting for something that
// should happen: a margin before the run's -timeout (so the test fails
// with a message and its cleanups run, rather than the binary panicking),
// or two minutes from now when the run has no timeout.
func WaitDeadline(t testing.TB) time.Time {
	const margin = 30 * time.Second
	if d, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
		if dl, ok := d.Deadline(); ok {
			return dl.Add(-margin)
		}
	}
	return time.Now().Add(2 * time.Minute)
}
