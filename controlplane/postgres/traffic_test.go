package postgres

import (
	"context"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/pipeops/tunnel/controlplane"
)

// delta is n requests of cluster's host in minute, errs of them failed, all
// of them taking d.
func delta(minute time.Time, cluster, host string, n, errs int64, d time.Duration) controlplane.TrafficDelta {
	c := controlplane.TrafficCounts{Requests: n, Errors: errs, BytesIn: 10 * n, BytesOut: 100 * n}
	c.Latency[controlplane.TrafficBucket(d)] = n
	return controlplane.TrafficDelta{Minute: minute, ClusterUUID: cluster, Hostname: host, TrafficCounts: c}
}

// storedLatency reads one row's histogram as stored.
func storedLatency(t *testing.T, db *DB, minute time.Time, cluster, host string) []int64 {
	t.Helper()
	var h []int64
	err := db.Pool().QueryRow(context.Background(), `SELECT latency FROM traffic WHERE minute = $1 AND cluster_uuid = $2 AND hostname = $3`,
		minute, cluster, host).Scan(&h)
	if err != nil {
		t.Fatalf("row %s %s %s: %v", minute, cluster, host, err)
	}
	return h
}

func trafficRows(t *testing.T, db *DB) int64 {
	t.Helper()
	var n int64
	if err := db.Pool().QueryRow(context.Background(), `SELECT count(*) FROM traffic`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func TestTrafficAddAndQuery(t *testing.T) {
	ctx := context.Background()
	db, clk := newDB(t)
	c1, c2 := mustCluster(t, db, "c1"), mustCluster(t, db, "c2")
	m0 := clk.Now().Truncate(time.Minute)
	m2 := m0.Add(2 * time.Minute)

	first := []controlplane.TrafficDelta{
		// Not on the minute: stored in its minute.
		delta(m0.Add(17*time.Second), c1.UUID, "a.example.com", 10, 2, 7*time.Millisecond),
		delta(m0, c1.UUID, "b.example.com", 4, 0, 700*time.Millisecond),
		// The same key twice in a batch: summed, not a conflict error.
		delta(m0, c1.UUID, "a.example.com", 10, 0, 70*time.Millisecond),
		delta(m2, c1.UUID, "a.example.com", 1, 1, time.Minute),
		delta(m0, c2.UUID, "a.example.com", 1000, 0, time.Millisecond),
		// Clusters that do not exist are left out, not a failed batch.
		delta(m0, "6f1c0000-0000-4000-8000-00000000dead", "gone.example.com", 5, 0, time.Millisecond),
		delta(m0, "not-a-uuid", "x.example.com", 5, 0, time.Millisecond),
	}
	if err := db.AddTraffic(ctx, first); err != nil {
		t.Fatal(err)
	}
	if err := db.AddTraffic(ctx, nil); err != nil {
		t.Fatalf("an empty batch: %v", err)
	}
	// A second gateway's figures add into the same rows.
	if err := db.AddTraffic(ctx, []controlplane.TrafficDelta{delta(m0, c1.UUID, "a.example.com", 20, 20, 7*time.Millisecond)}); err != nil {
		t.Fatal(err)
	}
	if n := trafficRows(t, db); n != 4 {
		t.Errorf("%d rows, want 4 (c1 a and b at m0, c1 a at m2, c2 a at m0)", n)
	}
	want := make([]int64, controlplane.TrafficBuckets)
	want[controlplane.TrafficBucket(7*time.Millisecond)] = 30
	want[controlplane.TrafficBucket(70*time.Millisecond)] = 10
	if got := storedLatency(t, db, m0, c1.UUID, "a.example.com"); !equalInts(got, want) {
		t.Errorf("histogram %v, want %v", got, want)
	}

	q := controlplane.TrafficQuery{Cluster: c1.UUID, Since: m0.Add(-time.Minute), Until: m2.Add(time.Minute)}
	points, err := db.Traffic(ctx, q)
	if err != nil {
		t.Fatal(err)
	}
	if len(points) != 5 {
		t.Fatalf("%d points, want 5 (every minute of the window): %+v", len(points), points)
	}
	for i, p := range points {
		if m := q.Since.Add(time.Duration(i) * time.Minute); !p.Minute.Equal(m) || p.Minute.Location() != time.UTC {
			t.Errorf("point %d at %s, want %s in UTC", i, p.Minute, m)
		}
	}
	for _, i := range []int{0, 2, 4} {
		if p := points[i]; p.Requests != 0 || p.Errors != 0 || p.BytesIn != 0 || p.BytesOut != 0 || p.P50Ms != 0 || p.P99Ms != 0 {
			t.Errorf("minute %d without traffic: %+v, want zeros", i, p)
		}
	}
	// m0, both hosts: 30 requests at 7 ms (bucket 5-10 ms), 10 at 70 ms
	// (50-100 ms), 4 at 700 ms (500-1000 ms).
	p := points[1]
	if p.Requests != 44 || p.Errors != 22 || p.BytesIn != 440 || p.BytesOut != 4400 {
		t.Errorf("m0: %+v", p)
	}
	if want := 5 + 5*22.0/30; !near(p.P50Ms, want) {
		t.Errorf("m0 p50 %v, want %v", p.P50Ms, want)
	}
	if want := 500 + 500*(0.99*44-40)/4; !near(p.P99Ms, want) {
		t.Errorf("m0 p99 %v, want %v", p.P99Ms, want)
	}
	if p := points[3]; p.Requests != 1 || p.Errors != 1 || p.P50Ms != 10000 || p.P99Ms != 10000 {
		t.Errorf("m2 (one request over every bound): %+v", p)
	}

	// One host.
	q.Host = "b.example.com"
	points, err = db.Traffic(ctx, q)
	if err != nil {
		t.Fatal(err)
	}
	if len(points) != 5 || points[1].Requests != 4 || points[1].Errors != 0 || points[3].Requests != 0 ||
		!near(points[1].P50Ms, 500+500*2.0/4) {
		t.Errorf("host b: %+v", points)
	}

	// Per host over the window, busiest first; Host does not filter it.
	hosts, err := db.TrafficHosts(ctx, q)
	if err != nil {
		t.Fatal(err)
	}
	if len(hosts) != 2 || hosts[0].Hostname != "a.example.com" || hosts[1].Hostname != "b.example.com" {
		t.Fatalf("hosts %+v", hosts)
	}
	if a := hosts[0]; a.Requests != 41 || a.Errors != 23 || a.BytesIn != 410 || a.BytesOut != 4100 ||
		!near(a.P50Ms, 5+5*20.5/30) || a.P99Ms != 10000 {
		t.Errorf("host a over the window: %+v", a)
	}

	// A window that leaves m0 out.
	points, err = db.Traffic(ctx, controlplane.TrafficQuery{Cluster: c1.UUID, Since: m0.Add(time.Minute), Until: m2})
	if err != nil {
		t.Fatal(err)
	}
	if len(points) != 2 || points[0].Requests != 0 || points[1].Requests != 1 {
		t.Errorf("window m1..m2: %+v", points)
	}
	hosts, err = db.TrafficHosts(ctx, controlplane.TrafficQuery{Cluster: c1.UUID, Since: m0.Add(time.Minute), Until: m2})
	if err != nil || len(hosts) != 1 || hosts[0].Requests != 1 {
		t.Errorf("hosts of m1..m2: %+v %v", hosts, err)
	}

	// Without Until the window ends at the store's now.
	points, err = db.Traffic(ctx, controlplane.TrafficQuery{Cluster: c1.UUID, Since: m0})
	if err != nil || len(points) != 1 || points[0].Requests != 44 {
		t.Errorf("since m0 until now: %+v %v", points, err)
	}
}

func equalInts(a, b []int64) bool {
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

func TestTrafficQueryBounds(t *testing.T) {
	ctx := context.Background()
	db, clk := newDB(t)
	c := mustCluster(t, db, "c1")
	now := clk.Now().Truncate(time.Minute)
	day := time.Duration(controlplane.MaxTrafficMinutes) * time.Minute

	points, err := db.Traffic(ctx, controlplane.TrafficQuery{Cluster: c.UUID, Since: now.Add(-day + time.Minute), Until: now})
	if err != nil || len(points) != controlplane.MaxTrafficMinutes {
		t.Errorf("the longest window: %d points, %v", len(points), err)
	}
	_, err = db.Traffic(ctx, controlplane.TrafficQuery{Cluster: c.UUID, Since: now.Add(-day), Until: now})
	wantCode(t, err, controlplane.EINVALID)
	_, err = db.TrafficHosts(ctx, controlplane.TrafficQuery{Cluster: c.UUID, Since: now.Add(-day), Until: now})
	wantCode(t, err, controlplane.EINVALID)
	_, err = db.Traffic(ctx, controlplane.TrafficQuery{Cluster: c.UUID, Since: now, Until: now.Add(-time.Minute)})
	wantCode(t, err, controlplane.EINVALID)

	// Clusters without traffic, or that cannot exist: zeros, no error.
	for _, cluster := range []string{c.UUID, "6f1c0000-0000-4000-8000-00000000dead", "not-a-uuid"} {
		points, err := db.Traffic(ctx, controlplane.TrafficQuery{Cluster: cluster, Since: now.Add(-2 * time.Minute), Until: now})
		if err != nil || len(points) != 3 || points[2].Requests != 0 {
			t.Errorf("cluster %q: %+v %v", cluster, points, err)
		}
		hosts, err := db.TrafficHosts(ctx, controlplane.TrafficQuery{Cluster: cluster, Since: now.Add(-2 * time.Minute), Until: now})
		if err != nil || hosts == nil || len(hosts) != 0 {
			t.Errorf("hosts of cluster %q: %#v %v", cluster, hosts, err)
		}
	}
}

// Gateways flushing the same rows at the same time: every count is added
// once, and their overlapping upserts do not deadlock.
func TestTrafficConcurrentWriters(t *testing.T) {
	ctx := context.Background()
	db, clk := newDB(t)
	c := mustCluster(t, db, "c1")
	m := clk.Now().Truncate(time.Minute)
	hosts := []string{"a.example.com", "b.example.com", "c.example.com", "d.example.com"}
	const writers, rounds = 4, 25
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			for range rounds {
				batch := make([]controlplane.TrafficDelta, 0, len(hosts))
				// Each writer lists the hosts in its own order: the store
				// orders them.
				for i := range hosts {
					batch = append(batch, delta(m, c.UUID, hosts[(i+w)%len(hosts)], 1, 0, time.Millisecond))
				}
				if err := db.AddTraffic(ctx, batch); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	got, err := db.TrafficHosts(ctx, controlplane.TrafficQuery{Cluster: c.UUID, Since: m, Until: m})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(hosts) {
		t.Fatalf("hosts %+v", got)
	}
	for _, h := range got {
		if h.Requests != writers*rounds || h.BytesOut != 100*writers*rounds {
			t.Errorf("%s: %+v, want %d requests", h.Hostname, h, writers*rounds)
		}
	}
	if l := storedLatency(t, db, m, c.UUID, "a.example.com"); l[0] != writers*rounds {
		t.Errorf("histogram %v", l)
	}
}

func TestTrafficPrune(t *testing.T) {
	ctx := context.Background()
	db, clk := newDB(t)
	c := mustCluster(t, db, "c1")
	now := clk.Now().Truncate(time.Minute)
	var batch []controlplane.TrafficDelta
	for i := range 5 { // 5 rows older than a day
		batch = append(batch, delta(now.Add(-25*time.Hour-time.Duration(i)*time.Minute), c.UUID, "a.example.com", 1, 0, 0))
	}
	batch = append(batch, delta(now.Add(-23*time.Hour), c.UUID, "a.example.com", 1, 0, 0), delta(now, c.UUID, "a.example.com", 1, 0, 0))
	if err := db.AddTraffic(ctx, batch); err != nil {
		t.Fatal(err)
	}
	cutoff := now.Add(-24 * time.Hour)
	var got []int64
	for {
		n, err := db.PruneTraffic(ctx, cutoff, 2)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, n)
		if n < 2 {
			break
		}
	}
	if !equalInts(got, []int64{2, 2, 1}) {
		t.Errorf("deleted per call %v, want [2 2 1]", got)
	}
	if n := trafficRows(t, db); n != 2 {
		t.Errorf("%d rows left, want the 2 within the day", n)
	}
	if n, err := db.PruneTraffic(ctx, cutoff, 0); n != 0 || err != nil {
		t.Errorf("limit 0: %d %v", n, err)
	}
}

// A deleted cluster's figures go with it.
func TestTrafficClusterDeleted(t *testing.T) {
	ctx := context.Background()
	db, clk := newDB(t)
	c1, c2 := mustCluster(t, db, "c1"), mustCluster(t, db, "c2")
	m := clk.Now().Truncate(time.Minute)
	if err := db.AddTraffic(ctx, []controlplane.TrafficDelta{delta(m, c1.UUID, "a", 1, 0, 0), delta(m, c2.UUID, "b", 1, 0, 0)}); err != nil {
		t.Fatal(err)
	}
	if _, err := db.DeleteCluster(ctx, c1.UUID); err != nil {
		t.Fatal(err)
	}
	if hosts := queryStrings(t, db, `SELECT hostname FROM traffic`); len(hosts) != 1 || hosts[0] != "b" {
		t.Errorf("rows left: %v", hosts)
	}
}
