package postgres

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pipeops/tunnel/controlplane"
)

var _ controlplane.TrafficStore = (*DB)(nil)

// addTrafficSQL adds a batch of deltas into their rows. The deltas come as
// one array per column, the histograms as one flat array sliced per row,
// so a batch of any size is one statement.
//
// Deltas of clusters that no longer exist (deleted while a gateway held
// their figures) are left out by the join rather than failing the batch on
// the foreign key; a cluster deleted between the join and the insert still
// fails it, and the writer's next flush, joining again, leaves it out. The
// rows are inserted in key order: gateways flushing overlapping batches at
// once then lock the rows they share in the same order, and cannot
// deadlock.
var addTrafficSQL = `INSERT INTO traffic AS t (minute, cluster_uuid, hostname, requests, errors, bytes_in, bytes_out, latency)
	SELECT d.minute, c.uuid, d.hostname, d.requests, d.errors, d.bytes_in, d.bytes_out,
		($8::bigint[])[(d.n - 1) * ` + strconv.Itoa(controlplane.TrafficBuckets) + ` + 1 : d.n * ` + strconv.Itoa(controlplane.TrafficBuckets) + `]
	FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[])
		WITH ORDINALITY AS d(minute, cluster_uuid, hostname, requests, errors, bytes_in, bytes_out, n)
	JOIN clusters c ON c.uuid::text = d.cluster_uuid
	ORDER BY d.minute, c.uuid, d.hostname
	ON CONFLICT (minute, cluster_uuid, hostname) DO UPDATE SET
		requests = t.requests + EXCLUDED.requests,
		errors = t.errors + EXCLUDED.errors,
		bytes_in = t.bytes_in + EXCLUDED.bytes_in,
		bytes_out = t.bytes_out + EXCLUDED.bytes_out,
		latency = ARRAY(SELECT coalesce(a, 0) + coalesce(b, 0)
			FROM unnest(t.latency, EXCLUDED.latency) WITH ORDINALITY AS x(a, b, i) ORDER BY i)`

// AddTraffic adds deltas into the traffic figures, in one statement: all of
// them or, on error, none. Deltas of one key (minute, cluster, hostname)
// are summed first; minutes are truncated to the minute. Deltas of a
// cluster that does not exist are dropped. Several gateways may add into
// the same rows at once; the sums are exact.
func (db *DB) AddTraffic(ctx context.Context, deltas []controlplane.TrafficDelta) error {
	if len(deltas) == 0 {
		return nil
	}
	merged := mergeTraffic(deltas)
	n := len(merged)
	var (
		minutes             = make([]time.Time, n)
		clusters, hosts     = make([]string, n), make([]string, n)
		reqs, errs, in, out = make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n)
		latency             = make([]int64, 0, n*controlplane.TrafficBuckets)
	)
	for i := range merged {
		d := &merged[i]
		minutes[i], clusters[i], hosts[i] = d.Minute, d.ClusterUUID, d.Hostname
		reqs[i], errs[i], in[i], out[i] = d.Requests, d.Errors, d.BytesIn, d.BytesOut
		latency = append(latency, d.Latency[:]...)
	}
	if _, err := db.pool.Exec(ctx, addTrafficSQL, minutes, clusters, hosts, reqs, errs, in, out, latency); err != nil {
		return fmt.Errorf("add %d traffic figures: %w", n, err)
	}
	return nil
}

// mergeTraffic returns deltas in key order, one per key, with their minutes
// truncated (in UTC) and their cluster uuids lower-cased as PostgreSQL
// prints them.
func mergeTraffic(deltas []controlplane.TrafficDelta) []controlplane.TrafficDelta {
	out := make([]controlplane.TrafficDelta, len(deltas))
	for i, d := range deltas {
		d.Minute = d.Minute.UTC().Truncate(time.Minute)
		d.ClusterUUID = strings.ToLower(d.ClusterUUID)
		out[i] = d
	}
	compare := func(a, b *controlplane.TrafficDelta) int {
		return cmp.Or(a.Minute.Compare(b.Minute), strings.Compare(a.ClusterUUID, b.ClusterUUID), strings.Compare(a.Hostname, b.Hostname))
	}
	slices.SortFunc(out, func(a, b controlplane.TrafficDelta) int { return compare(&a, &b) })
	j := 0
	for i := 1; i < len(out); i++ {
		if compare(&out[j], &out[i]) == 0 {
			out[j].Add(&out[i].TrafficCounts)
			continue
		}
		j++
		out[j] = out[i]
	}
	return out[:j+1]
}

// PruneTraffic deletes at most limit rows of minutes before olderThan and
// says how many it deleted; the caller calls it again while that is limit,
// so that a large backlog goes in short statements rather than one that
// holds its locks and its WAL for minutes. Rows another gateway is pruning
// at the same time are skipped, not waited for.
func (db *DB) PruneTraffic(ctx context.Context, olderThan time.Time, limit int) (int64, error) {
	if limit <= 0 {
		return 0, nil
	}
	tag, err := db.pool.Exec(ctx, `DELETE FROM traffic WHERE ctid = ANY(ARRAY(
		SELECT ctid FROM traffic WHERE minute < $1 LIMIT $2 FOR UPDATE SKIP LOCKED))`, olderThan, limit)
	if err != nil {
		return 0, fmt.Errorf("prune traffic figures: %w", err)
	}
	return tag.RowsAffected(), nil
}

// latencySums is the select list of a histogram summed bucket by bucket.
var latencySums = func() string {
	sums := make([]string, controlplane.TrafficBuckets)
	for i := range sums {
		sums[i] = "sum(latency[" + strconv.Itoa(i+1) + "])::bigint"
	}
	return "ARRAY[" + strings.Join(sums, ", ") + "]"
}()

// trafficWindow checks q and returns its first and last minute.
func (db *DB) trafficWindow(q controlplane.TrafficQuery) (since, until time.Time, err error) {
	until = q.Until
	if until.IsZero() {
		until = db.Now()
	}
	since, until = q.Since.UTC().Truncate(time.Minute), until.UTC().Truncate(time.Minute)
	switch n := until.Sub(since) / time.Minute; {
	case n < 0:
		return since, until, controlplane.Errorf(controlplane.EINVALID, "the traffic window ends (%s) before it starts (%s)",
			until.Format(time.RFC3339), since.Format(time.RFC3339))
	case n >= controlplane.MaxTrafficMinutes:
		return since, until, controlplane.Errorf(controlplane.EINVALID, "the traffic window is %d minutes long; at most %d are served",
			n+1, controlplane.MaxTrafficMinutes)
	}
	return since, until, nil
}

// Traffic implements controlplane.TrafficStore: the cluster's traffic in
// q's window, summed over its hostnames (or q.Host's alone), one point per
// minute. A cluster that is not a uuid has no traffic.
func (db *DB) Traffic(ctx context.Context, q controlplane.TrafficQuery) ([]controlplane.TrafficPoint, error) {
	since, until, err := db.trafficWindow(q)
	if err != nil {
		return nil, err
	}
	sql := `SELECT minute, sum(requests)::bigint, sum(errors)::bigint, sum(bytes_in)::bigint, sum(bytes_out)::bigint, ` + latencySums + `
		FROM traffic WHERE cluster_uuid = $1 AND minute BETWEEN $2 AND $3`
	args := []any{q.Cluster, since, until}
	if q.Host != "" {
		sql += ` AND hostname = $4`
		args = append(args, q.Host)
	}
	sql += ` GROUP BY minute ORDER BY minute`
	// Query's error, if any, comes out of CollectRows.
	rows, _ := db.pool.Query(ctx, sql, args...)
	stored, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (controlplane.TrafficPoint, error) {
		var (
			p controlplane.TrafficPoint
			h []int64
		)
		if err := row.Scan(&p.Minute, &p.Requests, &p.Errors, &p.BytesIn, &p.BytesOut, &h); err != nil {
			return p, err
		}
		hist := histogramOf(h)
		p.P50Ms, p.P99Ms = hist.Quantile(0.5), hist.Quantile(0.99)
		return p, nil
	})
	if err != nil {
		if err = listErr(err, "traffic of cluster "+q.Cluster); err != nil {
			return nil, err
		}
	}
	// Every minute of the window, the stored ones where there are some.
	points := make([]controlplane.TrafficPoint, 0, until.Sub(since)/time.Minute+1)
	for m := since; !m.After(until); m = m.Add(time.Minute) {
		p := controlplane.TrafficPoint{Minute: m}
		for len(stored) > 0 && stored[0].Minute.Before(m) {
			stored = stored[1:] // not on a minute: written by hand
		}
		if len(stored) > 0 && stored[0].Minute.Equal(m) {
			p = stored[0]
			p.Minute = m // in UTC, like the zeros around it
			stored = stored[1:]
		}
		points = append(points, p)
	}
	return points, nil
}

// TrafficHosts implements controlplane.TrafficStore.
func (db *DB) TrafficHosts(ctx context.Context, q controlplane.TrafficQuery) ([]controlplane.TrafficHost, error) {
	since, until, err := db.trafficWindow(q)
	if err != nil {
		return nil, err
	}
	// Query's error, if any, comes out of CollectRows.
	rows, _ := db.pool.Query(ctx, `SELECT hostname, sum(requests)::bigint, sum(errors)::bigint, sum(bytes_in)::bigint, sum(bytes_out)::bigint, `+latencySums+`
		FROM traffic WHERE cluster_uuid = $1 AND minute BETWEEN $2 AND $3
		GROUP BY hostname ORDER BY sum(requests) DESC, hostname`, q.Cluster, since, until)
	hosts, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (controlplane.TrafficHost, error) {
		var (
			t controlplane.TrafficHost
			h []int64
		)
		if err := row.Scan(&t.Hostname, &t.Requests, &t.Errors, &t.BytesIn, &t.BytesOut, &h); err != nil {
			return t, err
		}
		hist := histogramOf(h)
		t.P50Ms, t.P99Ms = hist.Quantile(0.5), hist.Quantile(0.99)
		return t, nil
	})
	if err != nil {
		if err = listErr(err, "traffic hosts of cluster "+q.Cluster); err != nil {
			return nil, err
		}
	}
	if hosts == nil {
		hosts = []controlplane.TrafficHost{}
	}
	return hosts, nil
}

// histogramOf copies a stored histogram; the table's check keeps its length.
func histogramOf(h []int64) *controlplane.TrafficHistogram {
	var out controlplane.TrafficHistogram
	copy(out[:], h)
	return &out
}
