package cmdline

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/pipeops/tunnel/shared/settings"
	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/version"
)

func TestMain(m *testing.M) { testenv.MainNoLeaks(m, nil) }

var demoSettings = settings.Table{{Env: "DEMO_ADDR", Default: ":8080", Help: "where the demo listens"}}

// demo is a binary of both kinds: its root runs (a server), and it has
// a group of subcommands.
type demo struct {
	ran    []string // the commands whose RunE ran
	result error    // what "fail" returns
}

func (d *demo) command() *cobra.Command {
	root := NewRoot("demo", "a demo", "A demo binary.")
	ShowSettings(root, demoSettings)
	root.RunE = func(*cobra.Command, []string) error {
		d.ran = append(d.ran, "root")
		return nil
	}
	show := &cobra.Command{Use: "show NAME", Args: ExactArgs(1, "NAME"), RunE: func(*cobra.Command, []string) error {
		d.ran = append(d.ran, "show")
		return nil
	}}
	fail := &cobra.Command{Use: "fail", Args: NoArgs, RunE: func(*cobra.Command, []string) error {
		d.ran = append(d.ran, "fail")
		return d.result
	}}
	root.AddCommand(Group(&cobra.Command{Use: "thing", Short: "things"}, show, fail))
	return root
}

func (d *demo) run(args ...string) (code int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	code = Execute(context.Background(), d.command(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestExitCodes(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		result     error
		code       int
		ran        string
		out, err   string // substrings
		errIsEmpty bool
	}{
		{name: "no arguments runs the root", args: nil, code: 0, ran: "root", errIsEmpty: true},
		{name: "help", args: []string{"--help"}, code: 0, out: "Usage:\n  demo [flags]"},
		{name: "help shows the settings", args: []string{"-h"}, code: 0, out: "DEMO_ADDR (default :8080)\n      where the demo listens"},
		{name: "help command", args: []string{"help", "thing", "show"}, code: 0, out: "demo thing show NAME"},
		{name: "subcommand help", args: []string{"thing", "show", "--help"}, code: 0, out: "demo thing show NAME"},
		{name: "unknown command", args: []string{"frobnicate"}, code: 2, err: `unknown command "frobnicate" for "demo"`},
		{name: "unknown command, suggestion", args: []string{"thing", "shwo"}, code: 2, err: "did you mean show?"},
		{name: "group without a command", args: []string{"thing"}, code: 2, err: "demo thing needs a command: fail, show\n\nUsage:"},
		{name: "unknown flag", args: []string{"--frob"}, code: 2, err: "unknown flag: --frob\nRun 'demo --help' for usage."},
		{name: "unknown flag of a subcommand", args: []string{"thing", "show", "x", "--frob"}, code: 2, err: "Run 'demo thing show --help' for usage."},
		{name: "missing argument", args: []string{"thing", "show"}, code: 2, err: "demo thing show takes one argument: NAME (got 0)"},
		{name: "unexpected argument", args: []string{"thing", "fail", "x"}, code: 2, err: `unexpected argument "x"`},
		{name: "leaf runs", args: []string{"thing", "show", "x"}, code: 0, ran: "show"},
		{name: "failure", args: []string{"thing", "fail"}, result: errors.New("boom"), code: 1, ran: "fail", err: "Error: boom\n"},
		{name: "configuration error", args: []string{"thing", "fail"}, result: ConfigError(errors.New("configuration:\n  X is required")), code: 2, ran: "fail", err: "X is required"},
		{name: "usage error from the command", args: []string{"thing", "fail"}, result: Usagef("--x wants y"), code: 2, ran: "fail", err: "Run 'demo thing fail --help'"},
		{name: "exit code, already reported", args: []string{"thing", "fail"}, result: Exit(3, nil), code: 3, ran: "fail", errIsEmpty: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &demo{result: tt.result}
			code, out, errOut := d.run(tt.args...)
			if code != tt.code {
				t.Errorf("exit %d, want %d\nstdout %q\nstderr %q", code, tt.code, out, errOut)
			}
			if got := strings.Join(d.ran, ","); got != tt.ran {
				t.Errorf("ran %q, want %q", got, tt.ran)
			}
			if !strings.Contains(out, tt.out) {
				t.Errorf("stdout lacks %q:\n%s", tt.out, out)
			}
			if !strings.Contains(errOut, tt.err) {
				t.Errorf("stderr lacks %q:\n%s", tt.err, errOut)
			}
			if tt.errIsEmpty && errOut != "" {
				t.Errorf("stderr %q, want nothing", errOut)
			}
		})
	}
}

// Help, version and completion never run the binary's own commands.
func TestNothingRuns(t *testing.T) {
	want := version.String("demo") + "\n"
	for _, args := range [][]string{{"--version"}, {"-v"}, {"version"}} {
		d := &demo{}
		if code, out, errOut := d.run(args...); code != 0 || out != want || errOut != "" || d.ran != nil {
			t.Errorf("%q: exit %d, stdout %q, stderr %q, ran %q; want %q alone", args, code, out, errOut, d.ran, want)
		}
	}
	for _, shell := range []string{"bash", "zsh", "fish", "powershell"} {
		d := &demo{}
		code, out, _ := d.run("completion", shell)
		if code != 0 || !strings.Contains(out, "demo") || len(out) < 500 || d.ran != nil {
			t.Errorf("completion %s: exit %d, %d bytes, ran %q", shell, code, len(out), d.ran)
		}
	}
	d := &demo{}
	if code, out, _ := d.run("thing", "--help"); code != 0 || strings.Contains(out, "DEMO_ADDR") || d.ran != nil {
		t.Errorf("thing --help: exit %d, ran %q, settings shown: %v", code, d.ran, strings.Contains(out, "DEMO_ADDR"))
	}
	// Shell completion asks the binary itself, through __complete.
	if code, out, _ := d.run("__complete", "thing", ""); code != 0 || !strings.Contains(out, "show") || !strings.Contains(out, "fail") || d.ran != nil {
		t.Errorf("__complete thing: exit %d, %q, ran %q", code, out, d.ran)
	}
}

func TestHealthcheck(t *testing.T) {
	status := http.StatusOK
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(status) }))
	defer srv.Close()
	d := &demo{}
	if code, _, errOut := d.run("healthcheck", srv.URL); code != 0 || errOut != "" {
		t.Fatalf("healthy: exit %d %q", code, errOut)
	}
	status = http.StatusServiceUnavailable
	if code, _, errOut := d.run("healthcheck", srv.URL); code != 1 || !strings.Contains(errOut, "503") {
		t.Fatalf("unhealthy: exit %d %q", code, errOut)
	}
	if code, _, _ := d.run("healthcheck"); code != 2 {
		t.Fatalf("no URL: exit %d, want 2", code)
	}
	if d.ran != nil {
		t.Fatalf("ran %q", d.ran)
	}
}
