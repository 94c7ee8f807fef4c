package postgres

import (
	"context"
	"testing"
	"time"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/testenv/pgtest"
)

func TestMain(m *testing.M) { testenv.Main(m, pgtest.Stop) }

// newDB returns a DB on a fresh, migrated database with a test clock.
func newDB(t *testing.T) (*DB, *testenv.Clock) {
	t.Helper()
	pool := pgtest.Pool(t)
	if _, err := Migrate(context.Background(), pool); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	db := New(pool)
	// Most tests here are about routes, not ownership: names like app.test
	// route without a DNS challenge. The ownership tests set their policy.
	db.Ownership.TrustUnverified = true
	c := testenv.NewClock()
	// A fraction of a second in whole microseconds, what timestamptz
	// keeps: times read back must compare equal, and not only at whole
	// seconds.
	c.Add(6 * time.Microsecond)
	db.Now = c.Now
	return db, c
}

func mustCluster(t *testing.T, db *DB, name string) *controlplane.Cluster {
	t.Helper()
	c, err := db.CreateCluster(context.Background(), name)
	if err != nil {
		t.Fatalf("CreateCluster(%q): %v", name, err)
	}
	return c
}

// wantCode fails t unless err carries code ("" for nil).
func wantCode(t *testing.T, err error, code string) {
	t.Helper()
	if got := controlplane.ErrorCode(err); got != code {
		t.Fatalf("error %v: code %q, want %q", err, got, code)
	}
}

// queryStrings runs a query of one text column.
func queryStrings(t *testing.T, db *DB, sql string, args ...any) []string {
	t.Helper()
	rows, err := db.Pool().Query(context.Background(), sql, args...)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return out
}
