package pgtest_test

import (
	"context"
	"testing"

	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/testenv/pgtest"
)

func TestMain(m *testing.M) { testenv.Main(m, pgtest.Stop) }

// TestRoundTrip proves the database is a real PostgreSQL: DDL, a write and a
// read back through pgx, with server-side behaviour a fake would not have.
func TestRoundTrip(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.Pool(t)

	if _, err := pool.Exec(ctx, `CREATE TABLE routes (hostname text PRIMARY KEY, port int NOT NULL CHECK (port > 0))`); err != nil {
		t.Fatalf("create table: %v", err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO routes VALUES ($1, $2)`, "app.example.com", 8080); err != nil {
		t.Fatalf("insert: %v", err)
	}
	var port int
	if err := pool.QueryRow(ctx, `SELECT port FROM routes WHERE hostname = $1`, "app.example.com").Scan(&port); err != nil {
		t.Fatalf("select: %v", err)
	}
	if port != 8080 {
		t.Fatalf("port = %d, want 8080", port)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO routes VALUES ($1, $2)`, "bad.example.com", 0); err == nil {
		t.Fatal("insert violating CHECK succeeded; want a constraint error from the server")
	}
	var version string
	if err := pool.QueryRow(ctx, `SHOW server_version`).Scan(&version); err != nil || version == "" {
		t.Fatalf("server_version = %q, %v", version, err)
	}
	t.Logf("PostgreSQL %s", version)
}

// TestIsolation checks that every call gets its own empty database.
func TestIsolation(t *testing.T) {
	ctx := context.Background()
	a, b := pgtest.Pool(t), pgtest.Pool(t)
	if _, err := a.Exec(ctx, `CREATE TABLE only_in_a (id int)`); err != nil {
		t.Fatalf("create table: %v", err)
	}
	var n int
	if err := b.QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'`).Scan(&n); err != nil {
		t.Fatalf("query b: %v", err)
	}
	if n != 0 {
		t.Fatalf("database b sees a's table: databases are not isolated")
	}
	var dbA, dbB string
	_ = a.QueryRow(ctx, `SELECT current_database()`).Scan(&dbA)
	_ = b.QueryRow(ctx, `SELECT current_database()`).Scan(&dbB)
	if dbA == dbB || dbA == "" {
		t.Fatalf("current_database a=%q b=%q, want two distinct databases", dbA, dbB)
	}
}
