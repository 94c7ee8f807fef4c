package main

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/pipeops/tunnel/gateway/server"
	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/version"
)

// runMainEnv makes the test binary run main instead of the tests: the
// exit-code tests run it as a process, as a user would.
const runMainEnv = "PIPEOPS_GATEWAY_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		main()
	}
	testenv.MainNoLeaks(m, nil)
}

func loadConfig(getenv func(string) string) (any, error) { return server.LoadConfig(getenv) }

var baseEnv = map[string]string{"DATABASE_URL": "postgres://u:p@127.0.0.1:1/none", "CONTROLPLANE_URL": "http://127.0.0.1:1"}

// The settings table is LoadConfig's: the variables it reads and their
// defaults; and docs/gateway.md lists the same.
func TestSettings(t *testing.T) {
	if err := gatewaySettings.CheckReads(baseEnv, loadConfig); err != nil {
		t.Error(err)
	}
	if err := gatewaySettings.CheckDefaults(baseEnv, loadConfig); err != nil {
		t.Error(err)
	}
	doc, err := os.ReadFile("../../../docs/gateway.md")
	if err != nil {
		t.Fatal(err)
	}
	if err := gatewaySettings.CheckDoc(string(doc)); err != nil {
		t.Errorf("docs/gateway.md, section Running it:\n%v", err)
	}
}

// listening returns a loopback address that accepts connections, so that
// a gateway that started would bind the others and fail to bind this one.
func listening(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l.Addr().String()
}

func runCommand(t *testing.T, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out, errOut bytes.Buffer
	code := run(ctx, args, func(k string) string { return env[k] }, &out, &errOut)
	if ctx.Err() != nil {
		t.Fatalf("%q ran until the deadline: it started the gateway", args)
	}
	return code, out.String(), errOut.String()
}

func TestCommandLine(t *testing.T) {
	// A valid environment: what used to start the server on --help.
	valid := map[string]string{"HTTP_ADDR": listening(t), "ADMIN_ADDR": listening(t), "LOG_LEVEL": "debug"}
	for k, v := range baseEnv {
		valid[k] = v
	}
	tests := []struct {
		name     string
		env      map[string]string
		args     []string
		code     int
		out, err []string
	}{
		{"help", valid, []string{"--help"}, 0, []string{"Usage:\n  pipeops-gateway [flags]", "DATABASE_URL (required)",
			"HTTP_ADDR (default :8080)", "ACME_RENEW_BEFORE (default: a third of the lifetime, at most `720h`)", "AUDIT_QUEUE (default 10000)"}, nil},
		{"help without configuration", nil, []string{"-h"}, 0, []string{"STREAM_WINDOW (default 4194304)"}, nil},
		{"help of a command", valid, []string{"help", "version"}, 0, []string{"pipeops-gateway version"}, nil},
		{"version", valid, []string{"--version"}, 0, []string{version.String("pipeops-gateway") + "\n"}, nil},
		{"completion", valid, []string{"completion", "fish"}, 0, []string{"complete -c pipeops-gateway"}, nil},
		{"unknown command", valid, []string{"frobnicate"}, 2, nil, []string{`unknown command "frobnicate" for "pipeops-gateway"`}},
		{"no configuration", nil, nil, 2, nil, []string{"DATABASE_URL must be a postgres:// URL", "CONTROLPLANE_URL must be"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := runCommand(t, tt.env, tt.args...)
			if code != tt.code {
				t.Errorf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tt.code, out, errOut)
			}
			for _, s := range tt.out {
				if !strings.Contains(out, s) {
					t.Errorf("stdout lacks %q:\n%s", s, out)
				}
			}
			for _, s := range tt.err {
				if !strings.Contains(errOut, s) {
					t.Errorf("stderr lacks %q:\n%s", s, errOut)
				}
			}
			if tt.code == 0 && errOut != "" {
				t.Errorf("stderr %q: the gateway logged, so it started", errOut)
			}
		})
	}
	// The same environment with no arguments does start it: it logs, and
	// fails on the closed database port.
	if code, _, errOut := runCommand(t, valid); code != 1 || !strings.Contains(errOut, "starting") {
		t.Fatalf("no arguments: exit %d %q, want the gateway to start and fail on the database", code, errOut)
	}
}

// The binary: its exit codes and its version on stdout, nothing else.
func TestBinary(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		out  string
	}{
		{[]string{"--version"}, 0, version.String("pipeops-gateway") + "\n"},
		{[]string{"frobnicate"}, 2, ""},
		{nil, 2, ""}, // no DATABASE_URL
	} {
		cmd := exec.Command(os.Args[0], tc.args...)
		cmd.Env = []string{runMainEnv + "=1"}
		var out bytes.Buffer
		cmd.Stdout = &out
		err := cmd.Run()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != tc.code || out.String() != tc.out {
			t.Errorf("pipeops-gateway %q: exit %d, stdout %q; want %d, %q", tc.args, code, out.String(), tc.code, tc.out)
		}
	}
}
