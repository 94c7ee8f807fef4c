package audit

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/controlplane/postgres"
	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/testenv/pgtest"
)

func TestMain(m *testing.M) { testenv.Main(m, pgtest.Stop) }

// store is the real database with hooks: it records batch sizes, can fail
// a number of writes, and can hold writes until released.
type store struct {
	*postgres.DB
	failNext atomic.Int64 // writes to fail before the next success
	failAll  atomic.Bool
	// hold, when set, makes each write wait for a receive on it (or its
	// context), after saying so on entered.
	hold    chan struct{}
	entered chan struct{}

	mu      sync.Mutex
	batches []int
	prunes  int
}

var errDown = errors.New("database unreachable")

func (s *store) InsertAudit(ctx context.Context, entries []controlplane.AuditEntry) error {
	s.mu.Lock()
	s.batches = append(s.batches, len(entries))
	s.mu.Unlock()
	if s.hold != nil {
		select {
		case s.entered <- struct{}{}:
		default:
		}
		select {
		case <-s.hold:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if s.failAll.Load() {
		return errDown
	}
	if s.failNext.Add(-1) >= 0 {
		return errDown
	}
	return s.DB.InsertAudit(ctx, entries)
}

func (s *store) PruneAudit(ctx context.Context, olderThan time.Time, keep int64) (int64, error) {
	s.mu.Lock()
	s.prunes++
	s.mu.Unlock()
	return s.DB.PruneAudit(ctx, olderThan, keep)
}

func (s *store) batchSizes() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]int(nil), s.batches...)
}

// env is a migrated database of the test's own; it starts the leak check
// after the database server (whose goroutines live for the whole binary)
// and before the pool.
type env struct {
	t     *testing.T
	ctx   context.Context
	db    *postgres.DB
	store *store
	reg   *prometheus.Registry
	logs  *testenv.LogBuffer
	clock *testenv.Clock
}

func newEnv(t *testing.T) *env {
	t.Helper()
	url := pgtest.URL(t)
	testenv.LeakCheck(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	db, err := postgres.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	if _, err := postgres.Migrate(ctx, db.Pool()); err != nil {
		t.Fatal(err)
	}
	return &env{t: t, ctx: ctx, db: db, store: &store{DB: db}, reg: prometheus.NewPedanticRegistry(),
		logs: &testenv.LogBuffer{}, clock: testenv.NewClock()}
}

// recorder makes a Recorder on the env's store, registry, log and clock,
// with cfg's other settings.
func (e *env) recorder(cfg Config) *Recorder {
	cfg.Store, cfg.Metrics, cfg.Logger, cfg.Now = e.store, e.reg, e.logs.Logger(), e.clock.Now
	return New(cfg)
}

// run runs r.Run in a goroutine until the test ends (Close or cancel).
func (e *env) run(r *Recorder) (cancel func(), done <-chan error) {
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- r.Run(ctx) }()
	e.t.Cleanup(func() {
		cancel()
		<-r.runDone
	})
	return cancel, errc
}

func entry(i int) controlplane.AuditEntry {
	return controlplane.AuditEntry{
		Time:        time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC).Add(time.Duration(i) * time.Millisecond),
		ClusterUUID: "c1", ClusterName: "prod", User: "alice", Groups: []string{"dev"}, TokenID: "jti-1",
		Verb: "get", Method: "GET", Path: fmt.Sprintf("/api/v1/namespaces/default/pods/p%d", i),
		Status: 200, BytesOut: 100, Duration: time.Millisecond,
	}
}

func (e *env) count() int {
	e.t.Helper()
	var n int
	if err := e.db.Pool().QueryRow(e.ctx, `SELECT count(*) FROM k8s_audit`).Scan(&n); err != nil {
		e.t.Fatal(err)
	}
	return n
}

// waitCount waits until the table holds n rows.
func (e *env) waitCount(n int) {
	e.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for got := e.count(); got != n; got = e.count() {
		if time.Now().After(deadline) {
			e.t.Fatalf("%d rows, want %d", got, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// metric returns the value of the counter or gauge name (with the label
// values given as name=value pairs) from the env's registry.
func (e *env) metric(name string, labels ...string) float64 {
	e.t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	e.t.Fatalf("no metric %s%v", name, labels)
	return 0
}

// Entries are written in batches of at most BatchSize as soon as a batch
// is full, and the rest at the flush interval.
func TestRecorderWrites(t *testing.T) {
	e := newEnv(t)
	rec := e.recorder(Config{BatchSize: 100, FlushInterval: 20 * time.Millisecond})
	e.run(rec)
	const n = 1234
	for i := range n {
		rec.Record(entry(i))
	}
	e.waitCount(n)
	for _, size := range e.store.batchSizes() {
		if size < 1 || size > 100 {
			t.Errorf("batch of %d entries, want 1 to 100", size)
		}
	}
	got, err := e.db.AuditEntries(e.ctx, controlplane.AuditFilter{Limit: 1})
	if err != nil {
		t.Fatal(err)
	}
	want := entry(n - 1)
	if len(got) != 1 || got[0].Path != want.Path || got[0].User != "alice" || !got[0].Time.Equal(want.Time) {
		t.Errorf("newest entry %+v, want %+v", got, want)
	}
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}
	if w := e.metric("pipeops_gateway_audit_written_total"); w != n {
		t.Errorf("written_total %v, want %d", w, n)
	}
	if d := e.metric("pipeops_gateway_audit_dropped_total", "reason", DropQueueFull); d != 0 {
		t.Errorf("dropped %v", d)
	}
}

// A full batch is written at once; a partial one waits for the interval
// (here an hour: for Close).
func TestRecorderBatchSize(t *testing.T) {
	e := newEnv(t)
	rec := e.recorder(Config{BatchSize: 50, FlushInterval: time.Hour})
	e.run(rec)
	for i := range 120 {
		rec.Record(entry(i))
	}
	e.waitCount(100)
	if got := e.store.batchSizes(); len(got) != 2 || got[0] != 50 || got[1] != 50 {
		t.Errorf("batches %v, want [50 50]", got)
	}
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}
	if n := e.count(); n != 120 {
		t.Errorf("%d rows after Close, want 120", n)
	}
}

// With the writer stuck on the database, Record never waits: the queue
// fills, the rest is dropped and counted, and logged without a line per
// entry. Once the database answers, the queue drains.
func TestRecorderQueueFull(t *testing.T) {
	e := newEnv(t)
	e.store.hold = make(chan struct{})
	e.store.entered = make(chan struct{}, 1)
	rec := e.recorder(Config{Queue: 10, BatchSize: 5, FlushInterval: time.Hour})
	e.run(rec)
	for i := range 5 {
		rec.Record(entry(i))
	}
	select {
	case <-e.store.entered:
	case <-time.After(20 * time.Second):
		t.Fatal("the first batch was not written")
	}
	// The writer holds 5 and waits on the store; 10 fit the queue.
	start := time.Now()
	for i := 5; i < 5+10+500; i++ {
		rec.Record(entry(i))
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Record took %v with the store stuck", took)
	}
	if d := e.metric("pipeops_gateway_audit_dropped_total", "reason", DropQueueFull); d != 500 {
		t.Errorf("dropped %v, want 500", d)
	}
	if q := e.metric("pipeops_gateway_audit_queue_length"); q != 10 {
		t.Errorf("queue length %v, want 10", q)
	}
	if lines := strings.Count(e.logs.String(), "audit entries dropped"); lines != 1 {
		t.Errorf("%d log lines for 500 drops, want 1:\n%s", lines, e.logs.String())
	}
	close(e.store.hold)
	e.waitCount(15)
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}
	// The summary of the repeats comes out at Close.
	if logs := e.logs.String(); !strings.Contains(logs, "repeated=499") || !strings.Contains(logs, "dropped_total=500") {
		t.Errorf("no summary of the drops:\n%s", logs)
	}
	if q := e.metric("pipeops_gateway_audit_queue_length"); q != 0 {
		t.Errorf("queue length %v after Close", q)
	}
}

func TestRecorderClose(t *testing.T) {
	t.Run("flushes", func(t *testing.T) {
		e := newEnv(t)
		rec := e.recorder(Config{FlushInterval: time.Hour})
		_, done := e.run(rec)
		for i := range 50 {
			rec.Record(entry(i))
		}
		if n := e.count(); n != 0 {
			t.Fatalf("%d rows before the interval or a full batch", n)
		}
		if err := rec.Close(); err != nil {
			t.Fatal(err)
		}
		if n := e.count(); n != 50 {
			t.Errorf("%d rows after Close, want 50", n)
		}
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("Run did not return after Close")
		}
		rec.Record(entry(99))
		if d := e.metric("pipeops_gateway_audit_dropped_total", "reason", DropClosed); d != 1 {
			t.Errorf("dropped after Close %v, want 1", d)
		}
		if err := rec.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
	})
	t.Run("cancelled Run flushes", func(t *testing.T) {
		e := newEnv(t)
		rec := e.recorder(Config{FlushInterval: time.Hour})
		cancel, done := e.run(rec)
		for i := range 30 {
			rec.Record(entry(i))
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if n := e.count(); n != 30 {
			t.Errorf("%d rows after Run ended, want 30", n)
		}
		rec.Record(entry(99))
		if d := e.metric("pipeops_gateway_audit_dropped_total", "reason", DropClosed); d != 1 {
			t.Errorf("dropped after Run ended %v, want 1", d)
		}
		if err := rec.Close(); err != nil {
			t.Error(err)
		}
	})
	t.Run("without Run", func(t *testing.T) {
		e := newEnv(t)
		rec := e.recorder(Config{})
		for i := range 7 {
			rec.Record(entry(i))
		}
		if err := rec.Close(); err != nil {
			t.Fatal(err)
		}
		if n := e.count(); n != 7 {
			t.Errorf("%d rows, want 7", n)
		}
		if err := rec.Run(context.Background()); err != nil {
			t.Errorf("Run after Close: %v", err)
		}
	})
	t.Run("bounded by the timeout", func(t *testing.T) {
		e := newEnv(t)
		e.store.hold = make(chan struct{}) // never released: every write hangs
		e.store.entered = make(chan struct{}, 1)
		rec := e.recorder(Config{FlushInterval: time.Hour, CloseTimeout: 200 * time.Millisecond})
		e.run(rec)
		for i := range 40 {
			rec.Record(entry(i))
		}
		start := time.Now()
		err := rec.Close()
		if err == nil || !strings.Contains(err.Error(), "40 entries not written") {
			t.Errorf("Close: %v, want 40 entries not written", err)
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("Close took %v with a 200ms timeout", took)
		}
		if d := e.metric("pipeops_gateway_audit_dropped_total", "reason", DropShutdown); d != 40 {
			t.Errorf("dropped at shutdown %v, want 40", d)
		}
	})
	t.Run("concurrent", func(t *testing.T) {
		e := newEnv(t)
		rec := e.recorder(Config{FlushInterval: time.Hour})
		e.run(rec)
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Go(func() {
				for i := range 250 {
					rec.Record(entry(w*1000 + i))
				}
			})
		}
		wg.Go(func() { _ = rec.Close() })
		wg.Go(func() { _ = rec.Close() })
		wg.Wait()
		// Every entry is either written or counted as dropped.
		written := e.metric("pipeops_gateway_audit_written_total")
		closed := e.metric("pipeops_gateway_audit_dropped_total", "reason", DropClosed)
		if written+closed != 1000 || e.count() != int(written) {
			t.Errorf("written %v + dropped %v != 1000 (rows %d)", written, closed, e.count())
		}
	})
}

// A failed write is retried with backoff; after Retries more failures the
// batch is dropped and counted, and the writer carries on.
func TestRecorderRetries(t *testing.T) {
	e := newEnv(t)
	rec := e.recorder(Config{BatchSize: 10, FlushInterval: time.Hour, Retries: 2, RetryBackoff: time.Millisecond})
	e.run(rec)
	e.store.failNext.Store(2)
	for i := range 10 {
		rec.Record(entry(i))
	}
	e.waitCount(10)
	if f := e.metric("pipeops_gateway_audit_write_failures_total"); f != 2 {
		t.Errorf("write failures %v, want 2", f)
	}

	e.store.failAll.Store(true)
	for i := 10; i < 20; i++ {
		rec.Record(entry(i))
	}
	deadline := time.Now().Add(20 * time.Second)
	for e.metric("pipeops_gateway_audit_dropped_total", "reason", DropWriteFailed) != 10 {
		if time.Now().After(deadline) {
			t.Fatal("the failing batch was not dropped")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if f := e.metric("pipeops_gateway_audit_write_failures_total"); f != 5 {
		t.Errorf("write failures %v, want 2 + 3 attempts", f)
	}
	if !strings.Contains(e.logs.String(), "database unreachable") {
		t.Errorf("the store's error is not logged:\n%s", e.logs.String())
	}

	e.store.failAll.Store(false)
	for i := 20; i < 30; i++ {
		rec.Record(entry(i))
	}
	e.waitCount(20)
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}
}

// Run prunes when it starts: entries past the retention, and the oldest
// beyond the row limit.
func TestRecorderPrunes(t *testing.T) {
	e := newEnv(t)
	now := e.clock.Now()
	var old []controlplane.AuditEntry
	for i := range 20 {
		en := entry(i)
		en.Time = now.Add(-time.Duration(i) * time.Hour) // 0h to 19h old
		old = append(old, en)
	}
	if err := e.db.InsertAudit(e.ctx, old); err != nil {
		t.Fatal(err)
	}
	rec := e.recorder(Config{Retention: 10*time.Hour + time.Minute, MaxRows: 8, PruneInterval: time.Hour})
	e.run(rec)
	e.waitCount(8)
	deadline := time.Now().Add(20 * time.Second)
	for e.metric("pipeops_gateway_audit_pruned_total") != 12 {
		if time.Now().After(deadline) {
			t.Fatalf("pruned_total %v, want 12", e.metric("pipeops_gateway_audit_pruned_total"))
		}
		time.Sleep(5 * time.Millisecond)
	}
	got, err := e.db.AuditEntries(e.ctx, controlplane.AuditFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if oldest := got[len(got)-1].Time; !oldest.Equal(now.Add(-7 * time.Hour)) {
		t.Errorf("oldest left %v, want %v", oldest, now.Add(-7*time.Hour))
	}
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(e.logs.String(), "audit entries pruned") {
		t.Errorf("the prune is not logged:\n%s", e.logs.String())
	}
}

func TestRecorderMisuse(t *testing.T) {
	var nilRec *Recorder
	nilRec.Record(entry(0)) // a nil Recorder records nothing
	if err := nilRec.Close(); err != nil {
		t.Fatal(err)
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Error("New without a Store did not panic")
			}
		}()
		New(Config{})
	}()

	e := newEnv(t)
	rec := e.recorder(Config{})
	e.run(rec)
	// Run returns at once the second time; the first goes on.
	deadline := time.Now().Add(20 * time.Second)
	for {
		rec.mu.RLock()
		started := rec.started
		rec.mu.RUnlock()
		if started {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Run did not start")
		}
		time.Sleep(time.Millisecond)
	}
	if err := rec.Run(context.Background()); err == nil {
		t.Error("a second Run did not fail")
	}
	// The metrics are registered once: a second Recorder on the same
	// registry is a wiring mistake.
	func() {
		defer func() {
			if recover() == nil {
				t.Error("registering the metrics twice did not panic")
			}
		}()
		e.recorder(Config{})
	}()
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}
}
