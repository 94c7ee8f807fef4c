// Package pgtest gives each test its own fresh database on a real PostgreSQL
// server that the whole test binary shares.
//
// The server comes from the first of these that works:
//
//  1. TEST_DATABASE_URL (a postgres:// URL of a role allowed to create
//     databases); nothing is started or stopped.
//  2. A container from testcontainers-go, when a Docker engine answers.
//  3. The local PostgreSQL binaries (PG_BIN, or postgres on PATH, or the
//     newest /usr/lib/postgresql/*/bin), run from a temporary directory; as
//     the postgres user when the tests run as root, since initdb refuses root.
//     The server requires a password (scram-sha-256, a random one per run)
//     and listens only on a Unix socket in its private (0700) directory, not
//     on TCP: other users of the machine can neither reach it nor log in.
//     The URLs carry the password and the socket directory
//     (postgres://postgres:PASSWORD@/DB?host=/tmp/pgtest-.../sock); the
//     password is never on a command line or in a log.
//
// When none is available the test is skipped, or fails when CI is set (see
// testenv.Require). The server starts on first use; call Stop (or use
// testenv.Main in TestMain) to shut it down when the tests are done.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/testcontainers/testcontainers-go"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"

	"github.com/pipeops/tunnel/shared/testenv"
)

// ContainerImage is the image used when the server comes from Docker.
const ContainerImage = "postgres:16-alpine"

type server struct {
	adminURL *url.URL // the maintenance database, for CREATE/DROP DATABASE
	source   string   // where the server came from, for messages
	stop     func()
	// halt and resume stop the server process and start it again on the
	// same data; nil where the server is not this package's own process.
	halt, resume func() error
}

var (
	mu     sync.Mutex
	shared *server
	sErr   error
)

// URL creates a fresh, empty database for t and returns its postgres:// URL.
// The database is dropped when t ends.
func URL(t testing.TB) string {
	t.Helper()
	srv, err := get()
	testenv.Require(t, "PostgreSQL", err)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	name := "pgtest_" + randomHex(6)
	if err := exec1(ctx, srv.adminURL.String(), "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()+" TEMPLATE template0"); err != nil {
		t.Fatalf("pgtest: create database on %s: %v", srv.source, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := exec1(ctx, srv.adminURL.String(), "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			t.Errorf("pgtest: drop database %s: %v", name, err)
		}
	})
	u := *srv.adminURL
	u.Path = "/" + name
	return u.String()
}

// Pool creates a fresh database for t and returns a pool connected to it,
// closed (and the database dropped) when t ends.
func Pool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	dbURL := URL(t)
	pool, err := pgxpool.New(context.Background(), dbURL)
	if err != nil {
		t.Fatalf("pgtest: connect: %v", err)
	}
	// Registered after URL's cleanup, so it runs first: close, then drop.
	t.Cleanup(pool.Close)
	return pool
}

// Server is a PostgreSQL server started (or found) outside of any test, for
// programs such as the demo. Tests use URL and Pool instead.
type Server struct{ s *server }

// StartServer finds or starts a server the same way the tests do
// (TEST_DATABASE_URL, a container, the local binaries). The caller must Stop
// it.
func StartServer() (*Server, error) {
	s, err := start()
	if err != nil {
		return nil, err
	}
	return &Server{s: s}, nil
}

// Source says where the server came from.
func (s *Server) Source() string { return s.s.source }

// CreateDatabase creates a fresh database and returns its URL.
func (s *Server) CreateDatabase(ctx context.Context, name string) (string, error) {
	if err := exec1(ctx, s.s.adminURL.String(), "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()+" TEMPLATE template0"); err != nil {
		return "", fmt.Errorf("create database %s on %s: %w", name, s.s.source, err)
	}
	u := *s.s.adminURL
	u.Path = "/" + name
	return u.String(), nil
}

// ErrNotOwned is returned by Halt and Resume for a server that this package
// did not start as a process of its own (TEST_DATABASE_URL, a container).
var ErrNotOwned = errors.New("pgtest: the server is not a local process of this package's")

// Halt stops the server process (a fast shutdown: clients are cut off)
// and keeps its data, as an outage would; Resume starts it again. For
// fault tests: a stack's own server (stack.Options.PrivatePostgres), never
// the one tests share.
func (s *Server) Halt() error {
	if s.s.halt == nil {
		return ErrNotOwned
	}
	return s.s.halt()
}

// Resume starts a halted server again on the same data and waits until it
// answers.
func (s *Server) Resume() error {
	if s.s.resume == nil {
		return ErrNotOwned
	}
	return s.s.resume()
}

// Stop shuts the server down if it was started here; safe to call twice.
func (s *Server) Stop() {
	if s.s.stop != nil {
		s.s.stop()
		s.s.stop = nil
	}
}

// Stop shuts down the server if this package started one. Safe to call when
// none was started, and more than once.
func Stop() {
	mu.Lock()
	defer mu.Unlock()
	if shared != nil && shared.stop != nil {
		shared.stop()
	}
	shared, sErr = nil, nil
}

func get() (*server, error) {
	mu.Lock()
	defer mu.Unlock()
	if shared == nil && sErr == nil {
		shared, sErr = start()
	}
	return shared, sErr
}

func start() (*server, error) {
	if raw := os.Getenv("TEST_DATABASE_URL"); raw != "" {
		return fromURL(raw)
	}
	var reasons []string
	srv, err := fromContainer()
	if err == nil {
		return srv, nil
	}
	if !errors.Is(err, testenv.ErrUnavailable) {
		return nil, err
	}
	reasons = append(reasons, err.Error())
	srv, err = fromLocalBinaries()
	if err == nil {
		return srv, nil
	}
	if !errors.Is(err, testenv.ErrUnavailable) {
		return nil, err
	}
	reasons = append(reasons, err.Error())
	return nil, fmt.Errorf("%w: no PostgreSQL server: set TEST_DATABASE_URL, start a Docker engine, or install PostgreSQL (apt-get install postgresql): %s",
		testenv.ErrUnavailable, strings.Join(reasons, "; "))
}

func fromURL(raw string) (*server, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		// Not quoted: it may hold a password.
		return nil, errors.New("TEST_DATABASE_URL must be a postgres:// URL")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := exec1(ctx, u.String(), "SELECT 1"); err != nil {
		return nil, fmt.Errorf("TEST_DATABASE_URL: %w", err)
	}
	return &server{adminURL: u, source: "TEST_DATABASE_URL"}, nil
}

func fromContainer() (*server, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	provider, err := testcontainers.NewDockerProvider()
	if err != nil {
		return nil, fmt.Errorf("%w: docker: %v", testenv.ErrUnavailable, err)
	}
	healthErr := provider.Health(ctx)
	provider.Close()
	if healthErr != nil {
		return nil, fmt.Errorf("%w: no Docker engine answers: %v", testenv.ErrUnavailable, healthErr)
	}

	ctx, cancel = context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ctr, err := tcpostgres.Run(ctx, ContainerImage,
		tcpostgres.WithDatabase("postgres"),
		tcpostgres.WithUsername("postgres"),
		tcpostgres.WithPassword(randomHex(24)), // the published port may be reachable by others
		tcpostgres.BasicWaitStrategies(),
	)
	if err != nil {
		return nil, fmt.Errorf("start %s container: %w", ContainerImage, err)
	}
	raw, err := ctr.ConnectionString(ctx, "sslmode=disable")
	if err != nil {
		_ = testcontainers.TerminateContainer(ctr)
		return nil, fmt.Errorf("container connection string: %w", err)
	}
	u, err := url.Parse(raw)
	if err != nil {
		_ = testcontainers.TerminateContainer(ctr)
		return nil, fmt.Errorf("container connection string: %w", err)
	}
	return &server{adminURL: u, source: "container " + ContainerImage, stop: func() {
		_ = testcontainers.TerminateContainer(ctr)
	}}, nil
}

// BinDir returns the directory of the local PostgreSQL server binaries.
func BinDir() (string, error) {
	if dir := os.Getenv("PG_BIN"); dir != "" {
		if _, err := os.Stat(filepath.Join(dir, "postgres")); err != nil {
			return "", fmt.Errorf("PG_BIN=%s: %w", dir, err)
		}
		return dir, nil
	}
	if p, err := exec.LookPath("postgres"); err == nil {
		return filepath.Dir(p), nil
	}
	// Debian and Ubuntu keep the server outside PATH, one directory per
	// major version; take the newest.
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	sort.Slice(matches, func(i, j int) bool { return majorOf(matches[i]) > majorOf(matches[j]) })
	if len(matches) > 0 {
		return filepath.Dir(matches[0]), nil
	}
	return "", fmt.Errorf("%w: no local PostgreSQL server binaries (PG_BIN, PATH, /usr/lib/postgresql/*/bin)", testenv.ErrUnavailable)
}

func majorOf(path string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(path))))
	return n
}

func fromLocalBinaries() (*server, error) {
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("%w: running as root, and initdb refuses root, but there is no postgres user to run it as: %v", testenv.ErrUnavailable, err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}

	// MkdirTemp makes the directory 0700: it holds the data, the password
	// file and the socket, and only the server's user may enter it.
	dir, err := os.MkdirTemp("", "pgtest-")
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*server, error) {
		os.RemoveAll(dir)
		return nil, err
	}
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return fail(err)
		}
	}
	password := randomHex(24)
	// initdb reads the superuser's password from a file, so that it is on
	// no command line; the file goes as soon as initdb is done.
	pwfile := filepath.Join(dir, "pwfile")
	if err := os.WriteFile(pwfile, []byte(password+"\n"), 0o600); err != nil {
		return fail(err)
	}
	if cred != nil {
		if err := os.Chown(pwfile, int(cred.Uid), int(cred.Gid)); err != nil {
			return fail(err)
		}
	}
	data := filepath.Join(dir, "data")
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres",
		"--auth=scram-sha-256", "--pwfile="+pwfile, "--no-sync", "-E", "UTF8", "--no-locale")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	out, err := initdb.CombinedOutput()
	os.Remove(pwfile)
	if err != nil {
		return fail(fmt.Errorf("initdb in %s: %w\n%s", dir, err, out))
	}

	// No TCP at all (listen_addresses empty): clients come through the
	// socket in dir. The port only names the socket file, so any will do
	// and none can be taken by another process.
	const port = "5432"
	args := []string{
		"-D", data, "-k", dir, "-p", port,
		"-c", "listen_addresses=",
		"-c", "unix_socket_permissions=0700",
		"-c", "max_connections=300",
		// Test data is disposable: trade durability for speed.
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
	}
	u := &url.URL{Scheme: "postgres", User: url.UserPassword("postgres", password), Path: "/postgres",
		RawQuery: url.Values{"host": {dir}, "port": {port}, "sslmode": {"disable"}}.Encode()}
	var (
		pmu  sync.Mutex
		proc *testenv.Process // nil while halted
	)
	run := func() error {
		p, err := testenv.StartProcess("postgres", filepath.Join(bin, "postgres"), args, filepath.Join(dir, "postgres.log"), cred)
		if err != nil {
			return err
		}
		if err := p.WaitReady(30*time.Second, func(ctx context.Context) error { return exec1(ctx, u.String(), "SELECT 1") }); err != nil {
			p.Stop(syscall.SIGINT, 5*time.Second)
			return fmt.Errorf("start local PostgreSQL from %s: %w", bin, err)
		}
		proc = p
		return nil
	}
	if err := run(); err != nil {
		return fail(err)
	}
	halt := func() error {
		pmu.Lock()
		defer pmu.Unlock()
		if proc != nil {
			proc.Stop(syscall.SIGINT, 10*time.Second) // SIGINT: fast shutdown
			proc = nil
		}
		return nil
	}
	resume := func() error {
		pmu.Lock()
		defer pmu.Unlock()
		if proc != nil {
			return nil
		}
		return run()
	}
	return &server{adminURL: u, source: "local PostgreSQL in " + dir, halt: halt, resume: resume, stop: func() {
		_ = halt()
		os.RemoveAll(dir)
	}}, nil
}

// exec1 runs one statement on a short-lived connection.
func exec1(ctx context.Context, connURL, sql string) error {
	conn, err := pgx.Connect(ctx, connURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql)
	return err
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
