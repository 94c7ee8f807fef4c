package testenv_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/pipeops/tunnel/shared/testenv"
)

// childEnv makes TestRequirePolicy play the child: call Require and report.
const childEnv = "TESTENV_REQUIRE_CHILD"

// leakEnv makes TestMainNoLeaks play the child: a test that passes and
// leaves a goroutine behind, which MainNoLeaks must turn into a failure.
const leakEnv = "TESTENV_LEAK_CHILD"

func TestMain(m *testing.M) { testenv.MainNoLeaks(m, nil) }

// TestRequirePolicy checks the promise CI depends on: a missing environment
// skips only outside CI, and a broken one always fails. Require ends the test
// it is given, so each case runs in a child test process.
func TestRequirePolicy(t *testing.T) {
	if kind := os.Getenv(childEnv); kind != "" {
		var err error
		switch kind {
		case "unavailable":
			err = fmt.Errorf("%w: no binaries", testenv.ErrUnavailable)
		case "broken":
			err = errors.New("initdb failed")
		}
		testenv.Require(t, "thing", err)
		t.Log("REQUIRE-RETURNED")
		return
	}

	cases := []struct {
		kind, ci string
		want     string
	}{
		{"unavailable", "", "--- SKIP"},
		{"unavailable", "false", "--- SKIP"},
		{"unavailable", "true", "--- FAIL"},
		{"unavailable", "1", "--- FAIL"},
		{"broken", "", "--- FAIL"},
		{"broken", "true", "--- FAIL"},
		{"ok", "true", "REQUIRE-RETURNED"},
	}
	for _, c := range cases {
		t.Run(c.kind+"/CI="+c.ci, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestRequirePolicy$", "-test.v")
			cmd.Env = append(os.Environ(), childEnv+"="+c.kind, "CI="+c.ci)
			out, _ := cmd.CombinedOutput()
			if !strings.Contains(string(out), c.want) {
				t.Fatalf("want %q in the child's output:\n%s", c.want, out)
			}
		})
	}
}

func TestInCI(t *testing.T) {
	for v, want := range map[string]bool{"": false, "0": false, "false": false, "FALSE": false, "true": true, "1": true, "yes": true} {
		t.Setenv("CI", v)
		if got := testenv.InCI(); got != want {
			t.Errorf("CI=%q: InCI() = %v, want %v", v, got, want)
		}
	}
}

// TestMainNoLeaks: a goroutine left behind by passing tests fails the run.
func TestMainNoLeaks(t *testing.T) {
	if os.Getenv(leakEnv) != "" {
		block := make(chan struct{})
		go func() { <-block }() // never ends: the leak
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestMainNoLeaks$")
	cmd.Env = append(os.Environ(), leakEnv+"=1")
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(string(out), "goroutines outlived the tests") {
		t.Fatalf("a passing run that leaked a goroutine: %v\n%s", err, out)
	}
	// This process runs under MainNoLeaks too: it passing is the other half.
}
