package pgtest_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

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

// TestPasswordAuth: the local server asks for the password the URLs carry,
// listens on a socket in a private directory and not on TCP, and the
// password shows on no command line and in no log.
func TestPasswordAuth(t *testing.T) {
	ctx := context.Background()
	raw := pgtest.URL(t)
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	password, ok := u.User.Password()
	if !ok || len(password) < 32 {
		t.Fatalf("the URL carries no strong password")
	}
	sockDir := u.Query().Get("host")
	if !strings.HasPrefix(sockDir, "/") {
		t.Skipf("the server is not the local one pgtest starts (%s): nothing of its setup to check", u.Redacted())
	}
	if fi, err := os.Stat(sockDir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("socket directory %s: %v, %v; want mode 0700", sockDir, fi.Mode(), err)
	}

	for name, user := range map[string]*url.Userinfo{"wrong password": url.UserPassword("postgres", "wrong"), "no password": url.User("postgres")} {
		bad := *u
		bad.User = user
		conn, err := pgx.Connect(ctx, bad.String())
		if err == nil {
			conn.Close(ctx)
			t.Fatalf("%s: connected", name)
		}
		if strings.Contains(err.Error(), password) {
			t.Fatalf("%s: the error shows the password: %v", name, err)
		}
	}

	conn, err := pgx.Connect(ctx, raw)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var listen, method string
	if err := conn.QueryRow(ctx, `SHOW listen_addresses`).Scan(&listen); err != nil || listen != "" {
		t.Fatalf("listen_addresses = %q, %v; want none (no TCP)", listen, err)
	}
	if err := conn.QueryRow(ctx, `SELECT auth_method FROM pg_hba_file_rules WHERE type = 'local' LIMIT 1`).Scan(&method); err != nil || method != "scram-sha-256" {
		t.Fatalf("local connections authenticate by %q, %v; want scram-sha-256", method, err)
	}

	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte(password)) {
			t.Fatalf("%s holds the password: %q", p, b)
		}
	}
	logs, _ := filepath.Glob(filepath.Join(sockDir, "*.log"))
	for _, p := range logs {
		if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte(password)) {
			t.Fatalf("%s holds the password", p)
		}
	}
	if _, err := os.Stat(filepath.Join(sockDir, "pwfile")); !os.IsNotExist(err) {
		t.Fatalf("initdb's password file is left behind: %v", err)
	}
}

// TestHaltResume stops a server of the test's own and starts it again:
// clients are refused meanwhile, and what was written is there after.
func TestHaltResume(t *testing.T) {
	srv, err := pgtest.StartServer()
	testenv.Require(t, "PostgreSQL", err)
	defer srv.Stop()
	ctx := context.Background()
	dbURL, err := srv.CreateDatabase(ctx, "halt")
	if err != nil {
		t.Fatal(err)
	}
	exec := func(sql string) error {
		conn, err := pgx.Connect(ctx, dbURL)
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, sql)
		return err
	}
	if err := exec(`CREATE TABLE kept (v int); INSERT INTO kept VALUES (7)`); err != nil {
		t.Fatal(err)
	}
	if err := srv.Halt(); err != nil {
		if errors.Is(err, pgtest.ErrNotOwned) {
			err = fmt.Errorf("%w: %v (%s)", testenv.ErrUnavailable, err, srv.Source())
		}
		testenv.Require(t, "a PostgreSQL process of the test's own", err)
	}
	if err := exec(`SELECT 1`); err == nil {
		t.Fatal("a halted server answered")
	}
	if err := srv.Resume(); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var v int
	if err := conn.QueryRow(ctx, `SELECT v FROM kept`).Scan(&v); err != nil || v != 7 {
		t.Fatalf("after Resume: %d, %v; want the 7 written before Halt", v, err)
	}
}
