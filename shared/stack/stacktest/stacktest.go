// Package stacktest starts the whole platform (shared/stack) for a test:
// the binaries are built once per test binary, each stack gets a fresh
// database on the shared test PostgreSQL, everything is stopped when the test
// ends, and a failed test prints the tail of every component's log.
//
// A missing PostgreSQL or kube-apiserver skips the test locally and fails it
// when CI is set (testenv.Require).
package stacktest

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pipeops/tunnel/shared/stack"
	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/testenv/pgtest"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// Binaries builds the three binaries once per test binary and returns their
// directory. Stop (or testenv.Main) removes it.
func Binaries(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		root, err := testenv.ModuleRoot()
		if err != nil {
			buildErr = err
			return
		}
		if binDir, err = os.MkdirTemp("", "stacktest-bin-"); err != nil {
			buildErr = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		buildErr = stack.Build(ctx, root, binDir)
	})
	if buildErr != nil {
		t.Fatalf("build the binaries: %v", buildErr)
	}
	return binDir
}

// Stop removes the built binaries and stops the shared PostgreSQL. Use it
// from TestMain: testenv.Main(m, stacktest.Stop).
func Stop() {
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	pgtest.Stop()
}

type logWriter struct{ t testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// Start starts the control plane and the gateway for t. Zero Options fields
// get: Dir t.TempDir(), BinDir from Binaries, DatabaseURL a fresh database
// (unless PrivatePostgres), Progress the test log.
func Start(t testing.TB, opts stack.Options) *stack.Stack {
	t.Helper()
	if opts.BinDir == "" {
		opts.BinDir = Binaries(t)
	}
	if opts.DatabaseURL == "" && !opts.PrivatePostgres {
		opts.DatabaseURL = pgtest.URL(t)
	}
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	if opts.Progress == nil {
		opts.Progress = logWriter{t}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := stack.Start(ctx, opts)
	if err != nil {
		t.Fatalf("start the stack: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			dumpLogs(t, opts.Dir)
		}
		s.Close()
	})
	return s
}

// AddCluster adds a cluster (its own kube-apiserver, ingress stand-in and
// agent) to s.
func AddCluster(t testing.TB, s *stack.Stack, opts stack.ClusterOptions) *stack.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := s.AddCluster(ctx, opts)
	testenv.Require(t, "cluster "+opts.Name, err)
	return c
}

// dumpLogs logs the tail of every component log under dir/logs.
func dumpLogs(t testing.TB, dir string) {
	files, _ := filepath.Glob(filepath.Join(dir, "logs", "*.log"))
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(lines) > 40 {
			lines = lines[len(lines)-40:]
		}
		t.Logf("--- %s (last %d lines) ---\n%s", filepath.Base(f), len(lines), strings.Join(lines, "\n"))
	}
}
