package traffic

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/controlplane/postgres"
	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/testenv/pgtest"
)

func TestMain(m *testing.M) { testenv.Main(m, pgtest.Stop) }

// store is the real database with hooks: it can fail writes, hold a write
// until released, and records the prunes' limits and results.
type store struct {
	*postgres.DB
	fail atomic.Bool
	// hold, when set, makes the next write say so on entered and wait for
	// a receive on it.
	hold    chan struct{}
	entered chan struct{}

	mu     sync.Mutex
	writes int
	prunes []int64
}

var errDown = errors.New("database unreachable")

func (s *store) AddTraffic(ctx context.Context, deltas []controlplane.TrafficDelta) error {
	s.mu.Lock()
	s.writes++
	hold := s.hold
	s.hold = nil
	s.mu.Unlock()
	if hold != nil {
		s.entered <- struct{}{}
		<-hold
	}
	if s.fail.Load() {
		return errDown
	}
	return s.DB.AddTraffic(ctx, deltas)
}

func (s *store) PruneTraffic(ctx context.Context, olderThan time.Time, limit int) (int64, error) {
	n, err := s.DB.PruneTraffic(ctx, olderThan, limit)
	s.mu.Lock()
	s.prunes = append(s.prunes, n)
	s.mu.Unlock()
	return n, err
}

// env is a migrated database of the test's own with two clusters; the leak
// check starts after the database server (whose goroutines live for the
// whole binary) and before the pool.
type env struct {
	t      *testing.T
	ctx    context.Context
	db     *postgres.DB
	store  *store
	clock  *testenv.Clock
	c1, c2 string
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
	e := &env{t: t, ctx: ctx, db: db, store: &store{DB: db}, clock: testenv.NewClock()}
	for name, p := range map[string]*string{"c1": &e.c1, "c2": &e.c2} {
		c, err := db.CreateCluster(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		*p = c.UUID
	}
	return e
}

func (e *env) recorder(cfg Config) *Recorder {
	cfg.Store, cfg.Now = e.store, e.clock.Now
	return New(cfg)
}

// minute is the env clock's current minute.
func (e *env) minute() time.Time { return e.clock.Now().Truncate(time.Minute) }

// points reads cluster's traffic of the minutes from since to until.
func (e *env) points(cluster, host string, since, until time.Time) []controlplane.TrafficPoint {
	e.t.Helper()
	p, err := e.db.Traffic(e.ctx, controlplane.TrafficQuery{Cluster: cluster, Host: host, Since: since, Until: until})
	if err != nil {
		e.t.Fatal(err)
	}
	return p
}

// latency reads a row's stored histogram.
func (e *env) latency(minute time.Time, cluster, host string) []int64 {
	e.t.Helper()
	var h []int64
	if err := e.db.Pool().QueryRow(e.ctx, `SELECT latency FROM traffic WHERE minute = $1 AND cluster_uuid = $2 AND hostname = $3`,
		minute, cluster, host).Scan(&h); err != nil {
		e.t.Fatalf("row %s %s %s: %v", minute, cluster, host, err)
	}
	return h
}

func (e *env) rows() int64 {
	e.t.Helper()
	var n int64
	if err := e.db.Pool().QueryRow(e.ctx, `SELECT count(*) FROM traffic`).Scan(&n); err != nil {
		e.t.Fatal(err)
	}
	return n
}

// Two Recorders stand for two gateways: the rows hold what both counted,
// and a second flush adds to what the first wrote.
func TestRecordersAddUp(t *testing.T) {
	e := newEnv(t)
	gw1, gw2 := e.recorder(Config{}), e.recorder(Config{})
	m0 := e.minute()

	gw1.Observe(e.c1, "a.example.com", 200, 100, 1000, 3*time.Millisecond)
	gw1.Observe(e.c1, "a.example.com", 502, 0, 20, 40*time.Millisecond) // the gateway's own 502
	gw1.Observe(e.c1, "a.example.com", 404, 5, 9, 3*time.Millisecond)   // the visitor's mistake, not an error
	gw1.Observe(e.c1, "b.example.com", 200, 0, 1, 3*time.Millisecond)
	gw2.Observe(e.c1, "a.example.com", 503, 0, 30, 2*time.Second)
	gw2.Observe(e.c2, "a.example.com", 200, 1, 1, time.Millisecond)
	if err := gw1.Flush(e.ctx); err != nil {
		t.Fatal(err)
	}
	if err := gw2.Flush(e.ctx); err != nil {
		t.Fatal(err)
	}
	gw1.Observe(e.c1, "a.example.com", 200, 1, 1, 3*time.Millisecond)
	if err := gw1.Flush(e.ctx); err != nil {
		t.Fatal(err)
	}
	if err := gw1.Flush(e.ctx); err != nil { // nothing new: no write
		t.Fatal(err)
	}
	e.clock.Add(time.Minute)
	gw2.Observe(e.c1, "a.example.com", 200, 7, 7, 3*time.Millisecond)
	if err := gw2.Flush(e.ctx); err != nil {
		t.Fatal(err)
	}

	a := e.points(e.c1, "a.example.com", m0, m0.Add(time.Minute))
	if len(a) != 2 {
		t.Fatalf("points %+v", a)
	}
	if p := a[0]; p.Requests != 5 || p.Errors != 2 || p.BytesIn != 106 || p.BytesOut != 1060 {
		t.Errorf("a.example.com, first minute: %+v", p)
	}
	if p := a[1]; p.Requests != 1 || p.BytesIn != 7 {
		t.Errorf("a.example.com, second minute: %+v", p)
	}
	want := make([]int64, controlplane.TrafficBuckets)
	want[controlplane.TrafficBucket(3*time.Millisecond)] = 3
	want[controlplane.TrafficBucket(40*time.Millisecond)] = 1
	want[controlplane.TrafficBucket(2*time.Second)] = 1
	if got := e.latency(m0, e.c1, "a.example.com"); !equal(got, want) {
		t.Errorf("histogram %v, want %v", got, want)
	}
	if all := e.points(e.c1, "", m0, m0); all[0].Requests != 6 {
		t.Errorf("cluster 1, every host: %+v", all)
	}
	if other := e.points(e.c2, "", m0, m0); other[0].Requests != 1 {
		t.Errorf("cluster 2: %+v", other)
	}
	if e.store.writes != 4 {
		t.Errorf("%d writes, want 4: a flush with nothing to add writes nothing", e.store.writes)
	}
}

func equal(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Past MaxKeys figures, requests of new keys are counted as overflow (with
// one log line and then a count) while the keys held keep counting; a flush
// makes room again.
func TestKeyCap(t *testing.T) {
	e := newEnv(t)
	logs := &testenv.LogBuffer{}
	reg := prometheus.NewPedanticRegistry()
	r := e.recorder(Config{MaxKeys: 2, Logger: logs.Logger(), Metrics: reg})
	m0 := e.minute()
	r.Observe(e.c1, "a", 200, 0, 0, 0)
	r.Observe(e.c1, "b", 200, 0, 0, 0)
	for range 3 {
		r.Observe(e.c1, "c", 200, 0, 0, 0)
	}
	r.Observe(e.c2, "a", 200, 0, 0, 0)
	r.Observe(e.c1, "a", 200, 0, 0, 0) // held: still counted
	if got := testutil.ToFloat64(r.m.overflow); got != 4 {
		t.Errorf("overflow_total %v, want 4", got)
	}
	if n := strings.Count(logs.String(), "traffic figures at their limit"); n != 1 {
		t.Errorf("%d overflow lines, want 1 (then a count):\n%s", n, logs.String())
	}
	if err := r.Flush(e.ctx); err != nil {
		t.Fatal(err)
	}
	r.Observe(e.c1, "c", 200, 0, 0, 0)
	if err := r.Flush(e.ctx); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(r.m.overflow); got != 4 {
		t.Errorf("after a flush: overflow_total %v, want still 4", got)
	}
	hosts, err := e.db.TrafficHosts(e.ctx, controlplane.TrafficQuery{Cluster: e.c1, Since: m0, Until: m0})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	for _, h := range hosts {
		got[h.Hostname] = h.Requests
	}
	if len(got) != 3 || got["a"] != 2 || got["b"] != 1 || got["c"] != 1 {
		t.Errorf("hosts %v, want a:2 b:1 c:1", got)
	}
	// The repeats' count comes out when the limiter is flushed (Run does
	// on its way out).
	r.logs.Flush()
	if !strings.Contains(logs.String(), "repeated=3") {
		t.Errorf("no count of the repeats:\n%s", logs.String())
	}
}

// A failed flush keeps its figures; what is counted meanwhile adds to them,
// and the next flush writes it all.
func TestFailedFlushRetried(t *testing.T) {
	e := newEnv(t)
	reg := prometheus.NewPedanticRegistry()
	r := e.recorder(Config{Metrics: reg})
	m0 := e.minute()
	r.Observe(e.c1, "a", 500, 1, 2, time.Millisecond)
	e.store.fail.Store(true)
	if err := r.Flush(e.ctx); !errors.Is(err, errDown) {
		t.Fatalf("flush against a failing store: %v", err)
	}
	r.Observe(e.c1, "a", 200, 1, 2, time.Millisecond)
	e.clock.Add(time.Minute)
	r.Observe(e.c1, "b", 200, 1, 2, time.Millisecond)
	if err := r.Flush(e.ctx); !errors.Is(err, errDown) {
		t.Fatalf("second flush: %v", err)
	}
	if n := e.rows(); n != 0 {
		t.Fatalf("%d rows written by failed flushes", n)
	}
	e.store.fail.Store(false)
	if err := r.Flush(e.ctx); err != nil {
		t.Fatal(err)
	}
	a := e.points(e.c1, "a", m0, m0.Add(time.Minute))
	b := e.points(e.c1, "b", m0, m0.Add(time.Minute))
	if a[0].Requests != 2 || a[0].Errors != 1 || a[0].BytesOut != 4 || a[1].Requests != 0 || b[1].Requests != 1 {
		t.Errorf("a %+v b %+v", a, b)
	}
	if err := r.Flush(e.ctx); err != nil || e.rows() != 2 {
		t.Errorf("a further flush: %v, %d rows", err, e.rows())
	}
	if ok, failed := testutil.ToFloat64(r.m.flushes.WithLabelValues("ok")), testutil.ToFloat64(r.m.flushes.WithLabelValues("error")); ok != 1 || failed != 2 {
		t.Errorf("flushes ok=%v error=%v, want 1 and 2", ok, failed)
	}
}

// What a failed flush keeps is bounded by MaxKeys together with what came
// meanwhile: the oldest minutes go, counted as overflow.
func TestFailedFlushBounded(t *testing.T) {
	e := newEnv(t)
	r := e.recorder(Config{MaxKeys: 2})
	r.Observe(e.c1, "old-a", 200, 0, 0, 0)
	r.Observe(e.c1, "old-b", 200, 0, 0, 0)
	r.Observe(e.c1, "old-b", 200, 0, 0, 0)
	hold := make(chan struct{})
	e.store.mu.Lock()
	e.store.hold, e.store.entered = hold, make(chan struct{})
	e.store.mu.Unlock()
	e.store.fail.Store(true)
	done := make(chan error, 1)
	go func() { done <- r.Flush(e.ctx) }()
	<-e.store.entered // the flush has taken its figures
	e.clock.Add(time.Minute)
	r.Observe(e.c1, "new-a", 200, 0, 0, 0)
	r.Observe(e.c1, "new-b", 200, 0, 0, 0)
	close(hold)
	if err := <-done; !errors.Is(err, errDown) {
		t.Fatalf("flush: %v", err)
	}
	if got := testutil.ToFloat64(r.m.overflow); got != 3 {
		t.Errorf("overflow_total %v, want 3 (the old minute's requests)", got)
	}
	e.store.fail.Store(false)
	if err := r.Flush(e.ctx); err != nil {
		t.Fatal(err)
	}
	hosts, err := e.db.TrafficHosts(e.ctx, controlplane.TrafficQuery{Cluster: e.c1, Since: e.minute().Add(-time.Minute), Until: e.minute()})
	if err != nil {
		t.Fatal(err)
	}
	if len(hosts) != 2 || !strings.HasPrefix(hosts[0].Hostname, "new-") || !strings.HasPrefix(hosts[1].Hostname, "new-") {
		t.Errorf("hosts %+v, want the two new ones", hosts)
	}
}

// Rows older than the retention are deleted in batches of PruneBatch;
// newer ones stay.
func TestRetention(t *testing.T) {
	e := newEnv(t)
	r := e.recorder(Config{Retention: 24 * time.Hour, PruneBatch: 2})
	for range 5 {
		r.Observe(e.c1, "a", 200, 0, 0, 0)
		e.clock.Add(time.Minute)
	}
	e.clock.Add(22 * time.Hour)
	r.Observe(e.c1, "a", 200, 0, 0, 0) // within the day
	if err := r.Flush(e.ctx); err != nil {
		t.Fatal(err)
	}
	e.clock.Add(2 * time.Hour) // the first five are more than a day old now
	r.prune(e.ctx)
	if n := e.rows(); n != 1 {
		t.Errorf("%d rows left, want 1", n)
	}
	if got := e.store.prunes; !equal(got, []int64{2, 2, 1}) {
		t.Errorf("deleted per statement %v, want [2 2 1]", got)
	}
}

// Run flushes every FlushInterval and once more on its way out, and prunes
// when it starts.
func TestRun(t *testing.T) {
	e := newEnv(t)
	old := e.minute().Add(-48 * time.Hour)
	if err := e.db.AddTraffic(e.ctx, []controlplane.TrafficDelta{{Minute: old, ClusterUUID: e.c1, Hostname: "old",
		TrafficCounts: controlplane.TrafficCounts{Requests: 1}}}); err != nil {
		t.Fatal(err)
	}
	r := e.recorder(Config{FlushInterval: 10 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); r.Run(ctx) }()
	m0 := e.minute()
	r.Observe(e.c1, "a", 200, 0, 0, 0)
	testenv.Eventually(t, func() bool { return e.points(e.c1, "a", m0, m0)[0].Requests == 1 }, "a periodic flush")
	testenv.Eventually(t, func() bool { return e.points(e.c1, "old", old, old)[0].Requests == 0 }, "the prune at start")

	// The final flush: with a long interval, only Run's way out writes.
	r2 := e.recorder(Config{FlushInterval: time.Hour})
	ctx2, cancel2 := context.WithCancel(context.Background())
	done2 := make(chan struct{})
	go func() { defer close(done2); r2.Run(ctx2) }()
	r2.Observe(e.c2, "b", 200, 0, 0, 0)
	cancel2()
	<-done2
	if p := e.points(e.c2, "b", m0, m0); p[0].Requests != 1 {
		t.Errorf("after Run returned: %+v", p)
	}
	cancel()
	<-done
}

func TestNilRecorder(t *testing.T) {
	var r *Recorder
	r.Observe("c", "h", 200, 1, 1, time.Second)
	if err := r.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// nopStore stands in for the database where only Observe runs.
type nopStore struct{}

func (nopStore) AddTraffic(context.Context, []controlplane.TrafficDelta) error { return nil }
func (nopStore) PruneTraffic(context.Context, time.Time, int) (int64, error)   { return 0, nil }

// Observe on a key the minute has seen allocates nothing.
func TestObserveAllocs(t *testing.T) {
	r := New(Config{Store: nopStore{}})
	cluster, host := "6f1c0000-0000-4000-8000-000000000001", "app.example.com"
	r.Observe(cluster, host, 200, 1, 1, time.Millisecond)
	if n := testing.AllocsPerRun(1000, func() { r.Observe(cluster, host, 200, 100, 1000, 3*time.Millisecond) }); n != 0 {
		t.Errorf("%v allocations per Observe, want 0", n)
	}
}

func BenchmarkObserve(b *testing.B) {
	r := New(Config{Store: nopStore{}})
	hosts := []string{"a.example.com", "b.example.com", "c.example.com", "d.example.com"}
	const cluster = "6f1c0000-0000-4000-8000-000000000001"
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			r.Observe(cluster, hosts[i%len(hosts)], 200, 512, 4096, time.Duration(i%100)*time.Millisecond)
			i++
		}
	})
}
