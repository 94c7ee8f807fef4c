package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/version"
)

// runMainEnv makes the test binary run main instead of the tests: the
// exit-code tests run it as a process, as a user would.
const runMainEnv = "PIPEOPS_AGENT_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		main()
	}
	testenv.MainNoLeaks(m, nil)
}

// agentEnv is an environment the agent would start with: the control
// plane it names is a closed port, so an agent that started would fail.
var agentEnv = map[string]string{"PIPEOPS_API_URL": "http://127.0.0.1:1", "PIPEOPS_TOKEN": "t", "KUBECONFIG": "/nonexistent/kubeconfig"}

func runCommand(t *testing.T, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out, errOut bytes.Buffer
	code := run(ctx, args, func(k string) string { return env[k] }, &out, &errOut)
	if ctx.Err() != nil {
		t.Fatalf("%q ran until the deadline: it started the agent", args)
	}
	return code, out.String(), errOut.String()
}

func TestCommandLine(t *testing.T) {
	tests := []struct {
		name     string
		env      map[string]string
		args     []string
		code     int
		out, err []string
	}{
		// Help lists every setting, the environment-only ones too, with
		// its default, and the flags; with a valid environment it still
		// starts nothing.
		{"help", agentEnv, []string{"--help"}, 0,
			[]string{"Usage:\n  pipeops-agent [flags]", "--api-url string", "--check", "PIPEOPS_TOKEN, --token (required)",
				"HEARTBEAT_MIN_INTERVAL (default 5s)", "AGENT_IMPERSONATE_USERS (default true)", "PIPEOPS_AUTO_INSTALL_COMPONENTS (default false)"}, nil},
		{"help without configuration", nil, []string{"-h"}, 0, []string{"ROUTE_FULL_SYNC_INTERVAL (default 4h)"}, nil},
		{"help of a command", nil, []string{"healthcheck", "--help"}, 0, []string{"pipeops-agent healthcheck URL"}, nil},
		{"completion", agentEnv, []string{"completion", "bash"}, 0, []string{"# bash completion V2 for pipeops-agent", "__pipeops-agent_get_completion_results"}, nil},
		{"unknown command", agentEnv, []string{"frobnicate"}, 2, nil, []string{`unknown command "frobnicate" for "pipeops-agent"`, "Run 'pipeops-agent --help' for usage."}},
		{"unknown flag", agentEnv, []string{"--frobnicate"}, 2, nil, []string{"unknown flag: --frobnicate"}},
		{"bad bool flag", agentEnv, []string{"--enable-ingress-sync=maybe"}, 2, nil, []string{`invalid argument "maybe" for "--enable-ingress-sync"`}},
		{"no configuration", nil, nil, 2, nil, []string{"PIPEOPS_API_URL (--api-url) is required", "PIPEOPS_TOKEN (--token, or a file in PIPEOPS_TOKEN_FILE) is required"}},
		// A flag reaches the configuration, and beats the variable.
		{"flag beats the environment", agentEnv, []string{"--api-url", "ftp://cp"}, 2, nil, []string{`PIPEOPS_API_URL="ftp://cp" is not an http(s) URL`}},
		// --check needs no control plane: it gets as far as the
		// Kubernetes configuration, which is missing here.
		{"check", map[string]string{"KUBECONFIG": "/nonexistent/kubeconfig"}, []string{"--check"}, 1, nil, []string{"kubernetes configuration", "/nonexistent/kubeconfig"}},
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
		})
	}
}

// The binary: its exit codes and its version on stdout, nothing else.
func TestBinary(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		out  string
	}{
		{[]string{"--version"}, 0, version.String("pipeops-agent") + "\n"},
		{[]string{"version"}, 0, version.String("pipeops-agent") + "\n"},
		{[]string{"frobnicate"}, 2, ""},
		{nil, 2, ""}, // no PIPEOPS_API_URL
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
			t.Errorf("pipeops-agent %q: exit %d, stdout %q; want %d, %q", tc.args, code, out.String(), tc.code, tc.out)
		}
	}
}
