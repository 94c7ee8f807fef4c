package postgres

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/pipeops/tunnel/controlplane"
)

// auditAt is an entry at base+i seconds by user, on cluster.
func auditAt(base time.Time, i int, cluster, user string) controlplane.AuditEntry {
	return controlplane.AuditEntry{
		Time: base.Add(time.Duration(i) * time.Second), ClusterUUID: cluster, ClusterName: "name-" + cluster,
		User: user, Groups: []string{"dev"}, TokenID: "tok-" + user, Verb: "get", Method: "GET",
		Path: fmt.Sprintf("/api/v1/namespaces/default/pods/p%d", i), Status: 200,
		BytesIn: int64(i), BytesOut: 1000 + int64(i), Duration: time.Duration(i) * time.Millisecond,
	}
}

func auditCount(t *testing.T, db *DB) int64 {
	t.Helper()
	var n int64
	if err := db.Pool().QueryRow(context.Background(), `SELECT count(*) FROM k8s_audit`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestAuditRoundTrip(t *testing.T) {
	ctx := context.Background()
	db, clk := newDB(t)
	base := clk.Now()
	in := controlplane.AuditEntry{
		Time: base, ClusterUUID: "6f1c0000-0000-4000-8000-000000000001", ClusterName: "prod-eu",
		User: "alice", Groups: []string{"dev", "ops"}, TokenID: "jti-1", Verb: "watch", Method: "GET",
		Path: "/api/v1/namespaces/default/pods", Status: 200, BytesIn: 0, BytesOut: 123456,
		Duration: 90*time.Second + 250*time.Millisecond + 999*time.Microsecond,
	}
	noGroups := auditAt(base, 1, "c2", "bob")
	noGroups.Groups = nil
	if err := db.InsertAudit(ctx, []controlplane.AuditEntry{in, noGroups}); err != nil {
		t.Fatal(err)
	}
	if err := db.InsertAudit(ctx, nil); err != nil {
		t.Fatalf("an empty batch: %v", err)
	}
	got, err := db.AuditEntries(ctx, controlplane.AuditFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("%d entries, want 2", len(got))
	}
	if got[0].User != "bob" || len(got[0].Groups) != 0 {
		t.Errorf("newest first, groups read back empty: %+v", got[0])
	}
	out := got[1]
	if out.ID == 0 {
		t.Error("no id assigned")
	}
	want := in
	want.ID = out.ID
	want.Duration = 90*time.Second + 250*time.Millisecond // stored in milliseconds
	if !out.Time.Equal(want.Time) {
		t.Errorf("time %v, want %v", out.Time, want.Time)
	}
	out.Time = want.Time
	if !reflect.DeepEqual(out, want) {
		t.Errorf("read back\n%+v\nwant\n%+v", out, want)
	}
}

// A value the table would refuse (a NUL, invalid UTF-8, an overlong path)
// is made storable, so it cannot fail the batch it comes in.
func TestAuditInsertNormalizes(t *testing.T) {
	ctx := context.Background()
	db, clk := newDB(t)
	long := "/api/v1/namespaces/" + strings.Repeat("é", 3000)
	bad := auditAt(clk.Now(), 0, "c1", "mallory\x00\xff")
	bad.Path = long
	bad.Method = strings.Repeat("X", 5000)
	bad.Groups = make([]string, 100)
	for i := range bad.Groups {
		bad.Groups[i] = fmt.Sprintf("g%d", i)
	}
	if err := db.InsertAudit(ctx, []controlplane.AuditEntry{auditAt(clk.Now(), 1, "c1", "alice"), bad}); err != nil {
		t.Fatal(err)
	}
	got, err := db.AuditEntries(ctx, controlplane.AuditFilter{Cluster: "c1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("%d entries, want 2", len(got))
	}
	e := got[1]
	if len(e.Path) > controlplane.MaxAuditPathBytes || !strings.HasSuffix(e.Path, controlplane.AuditTruncatedMarker) ||
		!strings.HasPrefix(long, strings.TrimSuffix(e.Path, controlplane.AuditTruncatedMarker)) || !utf8.ValidString(e.Path) {
		t.Errorf("path of %d bytes not cut to %d with the marker at a rune boundary: ...%q", len(e.Path), controlplane.MaxAuditPathBytes, e.Path[len(e.Path)-30:])
	}
	if e.User != "mallory\uFFFD\uFFFD" {
		t.Errorf("user %q", e.User)
	}
	if len(e.Method) != controlplane.MaxAuditFieldBytes {
		t.Errorf("method of %d bytes", len(e.Method))
	}
	if len(e.Groups) != controlplane.MaxAuditGroups || e.Groups[62] != "g62" || e.Groups[63] != "...37 more" {
		t.Errorf("groups %d, last %q", len(e.Groups), e.Groups[len(e.Groups)-1])
	}
}

func TestAuditFilter(t *testing.T) {
	ctx := context.Background()
	db, clk := newDB(t)
	base := clk.Now()
	var batch []controlplane.AuditEntry
	for i := range 30 {
		cluster := []string{"c1", "c2", "c3"}[i%3]
		user := []string{"alice", "bob"}[i%2]
		batch = append(batch, auditAt(base, i, cluster, user))
	}
	// A deleted cluster's entries, and a re-created one's under the same
	// name: the name finds both.
	old := auditAt(base, 40, "old-uuid", "carol")
	old.ClusterName = "prod"
	renewed := auditAt(base, 41, "new-uuid", "carol")
	renewed.ClusterName = "prod"
	batch = append(batch, old, renewed)
	if err := db.InsertAudit(ctx, batch); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		f     controlplane.AuditFilter
		times []int // seconds after base, newest first
	}{
		{"all, default limit", controlplane.AuditFilter{}, seq(41, 40, 29, 0)},
		{"limit", controlplane.AuditFilter{Limit: 3}, []int{41, 40, 29}},
		{"cluster uuid", controlplane.AuditFilter{Cluster: "c2", Limit: 4}, []int{28, 25, 22, 19}},
		{"cluster name", controlplane.AuditFilter{Cluster: "name-c2", Limit: 2}, []int{28, 25}},
		{"name of a deleted and re-created cluster", controlplane.AuditFilter{Cluster: "prod"}, []int{41, 40}},
		{"uuid of the deleted one", controlplane.AuditFilter{Cluster: "old-uuid"}, []int{40}},
		{"user", controlplane.AuditFilter{User: "bob", Limit: 3}, []int{29, 27, 25}},
		{"user and cluster", controlplane.AuditFilter{User: "alice", Cluster: "c1"}, []int{24, 18, 12, 6, 0}},
		{"since", controlplane.AuditFilter{Since: base.Add(27 * time.Second)}, []int{41, 40, 29, 28, 27}},
		{"nothing", controlplane.AuditFilter{User: "nobody"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := db.AuditEntries(ctx, tt.f)
			if err != nil {
				t.Fatal(err)
			}
			var times []int
			for _, e := range got {
				times = append(times, int(e.Time.Sub(base)/time.Second))
			}
			if !reflect.DeepEqual(times, tt.times) {
				t.Errorf("entries at %v, want %v", times, tt.times)
			}
		})
	}
}

// seq is a, b, then c down to d.
func seq(a, b, c, d int) []int {
	out := []int{a, b}
	for i := c; i >= d; i-- {
		out = append(out, i)
	}
	return out
}

func TestPruneAudit(t *testing.T) {
	ctx := context.Background()
	base := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	fill := func(t *testing.T, db *DB, n int) {
		t.Helper()
		batch := make([]controlplane.AuditEntry, n)
		for i := range batch {
			batch[i] = auditAt(base, i, "c1", "alice")
		}
		if err := db.InsertAudit(ctx, batch); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name       string
		rows       int
		olderThan  time.Time
		keep       int64
		deleted    int64
		oldestLeft int // seconds after base
	}{
		{"by age", 100, base.Add(30 * time.Second), 0, 30, 30},
		{"by count", 100, time.Time{}, 25, 75, 75},
		{"age cuts more than count", 100, base.Add(90 * time.Second), 50, 90, 90},
		{"count cuts more than age", 100, base.Add(10 * time.Second), 20, 80, 80},
		{"nothing to cut", 100, base, 100, 0, 0},
		{"more than a chunk", pruneChunk + 500, time.Time{}, 100, pruneChunk + 400, pruneChunk + 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db, _ := newDB(t)
			fill(t, db, tt.rows)
			n, err := db.PruneAudit(ctx, tt.olderThan, tt.keep)
			if err != nil {
				t.Fatal(err)
			}
			if n != tt.deleted {
				t.Errorf("deleted %d, want %d", n, tt.deleted)
			}
			if left := auditCount(t, db); left != int64(tt.rows)-tt.deleted {
				t.Errorf("%d rows left, want %d", left, int64(tt.rows)-tt.deleted)
			}
			var oldest time.Time
			if err := db.Pool().QueryRow(ctx, `SELECT min(at) FROM k8s_audit`).Scan(&oldest); err != nil {
				t.Fatal(err)
			}
			if want := base.Add(time.Duration(tt.oldestLeft) * time.Second); !oldest.Equal(want) {
				t.Errorf("oldest left %v, want %v", oldest, want)
			}
			// Again: nothing more to do.
			if n, err := db.PruneAudit(ctx, tt.olderThan, tt.keep); err != nil || n != 0 {
				t.Errorf("second prune: %d, %v", n, err)
			}
		})
	}

	// Entries of one instant on the cap's edge go together: at most
	// keepAtMost remain.
	t.Run("ties", func(t *testing.T) {
		db, _ := newDB(t)
		batch := make([]controlplane.AuditEntry, 10)
		for i := range batch {
			batch[i] = auditAt(base, i/4, "c1", "alice") // 4 at 0s, 4 at 1s, 2 at 2s
		}
		if err := db.InsertAudit(ctx, batch); err != nil {
			t.Fatal(err)
		}
		if n, err := db.PruneAudit(ctx, time.Time{}, 4); err != nil || n != 8 {
			t.Fatalf("deleted %d, %v; want 8 (the 1s instant straddles the cap)", n, err)
		}
	})
	t.Run("empty table", func(t *testing.T) {
		db, _ := newDB(t)
		if n, err := db.PruneAudit(ctx, base, 10); err != nil || n != 0 {
			t.Fatalf("%d, %v", n, err)
		}
	})
}
