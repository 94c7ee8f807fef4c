package postgres

import (
	"context"
	"io/fs"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/fstest"

	"github.com/pipeops/tunnel/migrations"
	"github.com/pipeops/tunnel/shared/testenv/pgtest"
)

func allMigrations(t *testing.T) []string {
	t.Helper()
	names, err := fs.Glob(migrations.FS, "*.sql")
	if err != nil || len(names) == 0 {
		t.Fatalf("embedded migrations: %v %v", names, err)
	}
	return names
}

func TestMigrateIsIdempotent(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.Pool(t)
	want := allMigrations(t)

	applied, err := Migrate(ctx, pool)
	if err != nil {
		t.Fatalf("first Migrate: %v", err)
	}
	if !slices.Equal(applied, want) {
		t.Fatalf("first Migrate applied %v, want %v", applied, want)
	}
	applied, err = Migrate(ctx, pool)
	if err != nil {
		t.Fatalf("second Migrate: %v", err)
	}
	if len(applied) != 0 {
		t.Fatalf("second Migrate applied %v, want nothing", applied)
	}

	db := New(pool)
	got := queryStrings(t, db, `SELECT name FROM schema_migrations ORDER BY name`)
	if !slices.Equal(got, want) {
		t.Errorf("schema_migrations = %v, want %v", got, want)
	}
	tables := queryStrings(t, db, `SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename`)
	for _, table := range []string{"clusters", "gateway_tunnels", "gateways", "hostnames", "routes", "schema_migrations", "signing_keys", "tokens"} {
		if !slices.Contains(tables, table) {
			t.Errorf("table %s missing; have %v", table, tables)
		}
	}
}

// Replicas of the control plane start together and each migrates.
func TestMigrateConcurrently(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.Pool(t)
	want := allMigrations(t)

	const n = 4
	var (
		wg      sync.WaitGroup
		applied [n][]string
		errs    [n]error
	)
	for i := range n {
		wg.Go(func() { applied[i], errs[i] = Migrate(ctx, pool) })
	}
	wg.Wait()
	var all []string
	for i := range n {
		if errs[i] != nil {
			t.Errorf("Migrate %d: %v", i, errs[i])
		}
		all = append(all, applied[i]...)
	}
	slices.Sort(all)
	if !slices.Equal(all, want) {
		t.Errorf("together the calls applied %v, want each of %v exactly once", all, want)
	}
}

// A failing file leaves nothing of itself behind, is not recorded, and is
// applied by the next run once fixed.
func TestMigrateFailureRollsBackTheFile(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.Pool(t)
	db := New(pool)
	bad := fstest.MapFS{
		"0001_a.sql": {Data: []byte(`CREATE TABLE a (id int);`)},
		"0002_b.sql": {Data: []byte("CREATE TABLE b (id int);\nSELECT no_such_function();")},
	}
	applied, err := migrate(ctx, pool, bad)
	if err == nil || !strings.Contains(err.Error(), "0002_b.sql") {
		t.Fatalf("migrate error %v, want one naming 0002_b.sql", err)
	}
	if !slices.Equal(applied, []string{"0001_a.sql"}) {
		t.Errorf("applied %v before the failure, want [0001_a.sql]", applied)
	}
	if got := queryStrings(t, db, `SELECT name FROM schema_migrations ORDER BY name`); !slices.Equal(got, []string{"0001_a.sql"}) {
		t.Errorf("schema_migrations = %v, want [0001_a.sql]", got)
	}
	if got := queryStrings(t, db, `SELECT tablename FROM pg_tables WHERE tablename = 'b'`); len(got) != 0 {
		t.Errorf("table b exists: the failed file was applied in part")
	}

	bad["0002_b.sql"] = &fstest.MapFile{Data: []byte(`CREATE TABLE b (id int);`)}
	applied, err = migrate(ctx, pool, bad)
	if err != nil {
		t.Fatalf("migrate after the fix: %v", err)
	}
	if !slices.Equal(applied, []string{"0002_b.sql"}) {
		t.Errorf("applied %v after the fix, want [0002_b.sql]", applied)
	}
}
