package cli

import (
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pipeops/tunnel/shared/settings"
	"github.com/pipeops/tunnel/shared/version"
)

// The settings table is LoadConfig's: the variables it reads and their
// defaults; and docs/controlplane.md lists the same.
func TestSettings(t *testing.T) {
	load := settings.Loader(func(getenv func(string) string) (any, error) { return LoadConfig(getenv) })
	base := map[string]string{"DATABASE_URL": "postgres://u:p@db:5432/x"}
	if err := Settings.CheckReads(base, load); err != nil {
		t.Error(err)
	}
	if err := Settings.CheckDefaults(base, load); err != nil {
		t.Error(err)
	}
	doc, err := os.ReadFile("../../docs/controlplane.md")
	if err != nil {
		t.Fatal(err)
	}
	if err := Settings.CheckDoc(string(doc)); err != nil {
		t.Errorf("docs/controlplane.md, section Running it:\n%v", err)
	}
}

// fakeDatabase is a TCP listener standing in for PostgreSQL: it counts the
// connections made to it and closes each at once, so that a command that
// opens the database fails fast, and one that must not is caught.
type fakeDatabase struct {
	l     net.Listener
	conns atomic.Int64
	done  sync.WaitGroup
}

func newFakeDatabase(t *testing.T) *fakeDatabase {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeDatabase{l: l}
	f.done.Add(1)
	go func() {
		defer f.done.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			f.conns.Add(1)
			c.Close()
		}
	}()
	t.Cleanup(func() { l.Close(); f.done.Wait() })
	return f
}

func (f *fakeDatabase) url() string {
	return "postgres://u:p@" + f.l.Addr().String() + "/none?connect_timeout=5"
}

// Help, version, completion and every usage error answer without reading
// the database: DATABASE_URL names a listener that counts connections, and
// it sees none.
func TestNoDatabaseBeforeArguments(t *testing.T) {
	db := newFakeDatabase(t)
	env := map[string]string{"DATABASE_URL": db.url(), "KEY_ENCRYPTION_KEY": testKEK, "GATEWAY_WS_URL": "wss://gw.example.com/ws"}
	tests := []struct {
		args     []string
		code     int
		out, err string
	}{
		{[]string{"--help"}, 0, "Settings (environment variable", ""},
		{[]string{"-h"}, 0, "KEY_ENCRYPTION_KEY_FILE (required, or the next)", ""},
		{[]string{"help"}, 0, "cluster create NAME", ""},
		{[]string{"help", "route", "list"}, 0, "-o, --output string", ""},
		{[]string{"serve", "--help"}, 0, "GATEWAY_WS_URL (required by `serve`)", ""},
		{[]string{"cluster", "show", "--help"}, 0, "show NAME|ID", ""},
		{[]string{"token", "list", "-h"}, 0, "--cluster string", ""},
		{[]string{"--version"}, 0, version.String("pipeops-controlplane") + "\n", ""},
		{[]string{"version"}, 0, version.String("pipeops-controlplane") + "\n", ""},
		{[]string{"completion", "bash"}, 0, "# bash completion V2 for pipeops-controlplane", ""},
		{[]string{"completion", "zsh"}, 0, "#compdef pipeops-controlplane", ""},
		{[]string{"completion", "fish"}, 0, "complete -c pipeops-controlplane", ""},
		{[]string{"__complete", "cluster", ""}, 0, "show", ""},
		{[]string{"__complete", "cluster", "de"}, 0, "delete", ""},
		{[]string{"__complete", "route", "list", "-o", ""}, 0, "yaml", ""},
		{nil, 2, "", "pipeops-controlplane needs a command"},
		{[]string{"frobnicate"}, 2, "", `unknown command "frobnicate" for "pipeops-controlplane"`},
		{[]string{"clsuter", "list"}, 2, "", "did you mean cluster?"},
		{[]string{"token", "frob"}, 2, "", `unknown command "frob" for "pipeops-controlplane token"`},
		{[]string{"route"}, 2, "", "pipeops-controlplane route needs a command: list"},
		{[]string{"serve", "extra"}, 2, "", `unexpected argument "extra"`},
		{[]string{"migrate", "--frob"}, 2, "", "unknown flag: --frob"},
		{[]string{"cluster", "create"}, 2, "", "cluster create takes one argument"},
		{[]string{"cluster", "create", "a", "b"}, 2, "", "cluster create takes one argument"},
		{[]string{"cluster", "show"}, 2, "", "cluster show takes one argument"},
		{[]string{"cluster", "delete"}, 2, "", "cluster delete takes one argument"},
		{[]string{"cluster", "delete", "a", "b", "--yes"}, 2, "", "cluster delete takes one argument"},
		{[]string{"cluster", "delete", "--help"}, 0, "-y, --yes", ""},
		{[]string{"cluster", "list", "-o", "xml"}, 2, "", `-o "xml": want one of table, wide, json, yaml`},
		{[]string{"cluster", "list", "--json", "--wide"}, 2, "", "give one output format"},
		{[]string{"cluster", "create", "x", "-o", "wide"}, 2, "", `-o "wide": want one of text, json, yaml`},
		{[]string{"route", "list", "-o"}, 2, "", "flag needs an argument"},
		{[]string{"token", "list", "extra"}, 2, "", `unexpected argument "extra"`},
		{[]string{"token", "revoke"}, 2, "", "token revoke takes one argument"},
		{[]string{"hostname", "verify", "c", "bad host"}, 2, "", "bad host"},
		{[]string{"domain", "grant", "c"}, 2, "", "domain grant takes two arguments: CLUSTER DOMAIN"},
		{[]string{"keys", "retire"}, 2, "", "keys retire takes one argument"},
		{[]string{"audit", "list", "--since", "yesterday"}, 2, "", `invalid argument "yesterday" for "--since"`},
		{[]string{"healthcheck"}, 2, "", "healthcheck takes one argument: URL"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			start := time.Now()
			code, out, errOut := run(t, env, tt.args...)
			if code != tt.code || !strings.Contains(out, tt.out) || !strings.Contains(errOut, tt.err) {
				t.Errorf("exit %d, want %d\nstdout (want %q): %s\nstderr (want %q): %s", code, tt.code, tt.out, out, tt.err, errOut)
			}
			if tt.code == 0 && errOut != "" && tt.args[0] != "__complete" { // __complete tells the shell its directive there
				t.Errorf("stderr %q", errOut)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("took %s", d)
			}
		})
	}
	// Help with no configuration at all, and a configuration error: exit 2
	// without a connection either.
	if code, out, _ := run(t, nil, "cluster", "--help"); code != 0 || !strings.Contains(out, "Create, list, show and delete clusters") {
		t.Errorf("cluster --help without configuration: exit %d %q", code, out)
	}
	bad := map[string]string{"DATABASE_URL": db.url(), "ROUTE_TTL": "soon"}
	if code, _, errOut := run(t, bad, "cluster", "list"); code != 2 || !strings.Contains(errOut, "ROUTE_TTL") {
		t.Errorf("a configuration error: exit %d %q", code, errOut)
	}
	if n := db.conns.Load(); n != 0 {
		t.Fatalf("%d connections to the database", n)
	}
	// A valid command does connect: the listener would have seen the
	// others.
	if code, _, errOut := run(t, env, "route", "list"); code != 1 || db.conns.Load() == 0 {
		t.Fatalf("route list: exit %d %q after %d connections; want a connection, refused", code, errOut, db.conns.Load())
	}
}
