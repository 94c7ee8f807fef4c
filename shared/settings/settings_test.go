package settings

import (
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/pipeops/tunnel/shared/envconfig"
)

// config and load stand for a binary's Config and loader.
type config struct {
	Addr     string
	Interval time.Duration
	Sync     bool
	Name     string
}

func load(getenv func(string) string) (any, error) {
	r := envconfig.New(getenv)
	c := config{
		Addr:     r.String("ADDR", ":8080"),
		Interval: r.Duration("INTERVAL", 5*time.Second),
		Sync:     r.Bool("SYNC", true),
		Name:     r.String("NAME", ""),
	}
	if c.Name == "" {
		r.Failf("NAME is required")
	}
	return c, r.Err()
}

var good = Table{
	{Env: "NAME", Flag: "name", Note: "(required)", Help: "what it is called"},
	{Env: "ADDR", Flag: "listen", Default: ":8080", Help: "where it listens"},
	{Env: "INTERVAL", Kind: Duration, Default: "5s", Help: "how often"},
	{Env: "SYNC", Flag: "sync", Kind: Bool, Default: "true", Help: "whether it syncs"},
}

var base = map[string]string{"NAME": "x"}

func TestCheckReads(t *testing.T) {
	if err := good.CheckReads(base, load); err != nil {
		t.Fatal(err)
	}
	missing := slices.DeleteFunc(slices.Clone(good), func(s Setting) bool { return s.Env == "SYNC" })
	extra := append(slices.Clone(good), Setting{Env: "GONE"})
	for name, tc := range map[string]struct {
		table Table
		want  string
	}{
		"a variable read but not listed": {missing, "reads SYNC, which the settings table does not list"},
		"a variable listed but not read": {extra, "lists GONE, which the configuration does not read"},
	} {
		t.Run(name, func(t *testing.T) {
			if err := tc.table.CheckReads(base, load); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("CheckReads = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestCheckDefaults(t *testing.T) {
	if err := good.CheckDefaults(base, load); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		setting Setting
		want    string
	}{
		{Setting{Env: "ADDR", Default: ":9090"}, "ADDR=:9090, its documented default, changes the configuration"},
		{Setting{Env: "INTERVAL", Default: "1m"}, "INTERVAL=1m"},
		{Setting{Env: "SYNC", Default: "false"}, "SYNC=false"},
		{Setting{Env: "INTERVAL", Default: "soon"}, "INTERVAL=soon, its documented default, is refused"},
	} {
		t.Run(tc.setting.Env+"="+tc.setting.Default, func(t *testing.T) {
			err := Table{tc.setting}.CheckDefaults(base, load)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("CheckDefaults = %v, want %q", err, tc.want)
			}
		})
	}
	if err := good.CheckDefaults(nil, load); err == nil || !strings.Contains(err.Error(), "base environment") {
		t.Fatalf("an invalid base environment: %v", err)
	}
}

const doc = "# Thing\n\n" +
	"| variable | flag | default | meaning |\n" +
	"|---|---|---|---|\n" +
	"| `NAME` | `--name` | (required) | what it is called |\n" +
	"| `ADDR` | `--listen` | `:8080` | where it listens; `a|b` is one cell |\n" +
	"| `INTERVAL` | | `5s` | how often |\n" +
	"| `SYNC` | `--sync` | `true` | whether it syncs |\n" +
	"\nMore text.\n\n| limit | setting | default |\n|---|---|---|\n| x | `OTHER` | 1 |\n"

func TestCheckDoc(t *testing.T) {
	if err := good.CheckDoc(doc); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, doc, want string
	}{
		{"missing row", strings.Replace(doc, "| `SYNC` | `--sync` | `true` | whether it syncs |\n", "", 1), "no row for SYNC"},
		{"extra row", strings.Replace(doc, "| `SYNC`", "| `EXTRA` | | | |\n| `SYNC`", 1), "lists EXTRA"},
		{"wrong default", strings.Replace(doc, "`5s`", "`10s`", 1), "INTERVAL has default \"`10s`\", want \"`5s`\""},
		{"default not as code", strings.Replace(doc, "`:8080`", ":8080", 1), "ADDR has default"},
		{"wrong flag", strings.Replace(doc, "`--listen`", "`--addr`", 1), "ADDR has flag"},
		{"flag on an environment-only setting", strings.Replace(doc, "| `INTERVAL` | |", "| `INTERVAL` | `--interval` |", 1), "INTERVAL has flag"},
		{"two variables in a row", strings.Replace(doc, "| `NAME` |", "| `NAME`, `NAME2` |", 1), "one variable"},
		{"no flag column", "| variable | default | meaning |\n|---|---|---|\n| `NAME` | (required) | x |\n", "no flag column"},
		{"no table", "# Thing\n", "no settings table"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := good.CheckDoc(tc.doc); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("CheckDoc = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestHelp(t *testing.T) {
	h := good.Help()
	for _, want := range []string{
		"NAME, --name (required)\n      what it is called\n",
		"ADDR, --listen (default :8080)\n",
		"INTERVAL (default 5s)\n      how often\n",
		"SYNC, --sync (default true)\n",
	} {
		if !strings.Contains(h, want) {
			t.Errorf("help lacks %q:\n%s", want, h)
		}
	}
	long := Table{{Env: "LONG", Note: "computed", Help: strings.Repeat("word ", 40)}}.Help()
	if !strings.Contains(long, "LONG (default: computed)") {
		t.Errorf("a note is not shown as the default:\n%s", long)
	}
	for _, line := range strings.Split(long, "\n") {
		if len(line) > 80 {
			t.Errorf("line of %d characters: %q", len(line), line)
		}
	}
}

// The flags carry what was given, checked by kind, to the loader's own
// parsing: Args returns only what was set, in the form Go's flag package
// reads.
func TestFlags(t *testing.T) {
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	good.AddFlags(fs)
	if fs.Lookup("interval") != nil {
		t.Fatal("an environment-only setting got a flag")
	}
	if f := fs.Lookup("listen"); f == nil || f.DefValue != ":8080" || !strings.Contains(f.Usage, "(ADDR)") {
		t.Fatalf("--listen: %+v", f)
	}
	if err := fs.Parse([]string{"--name", "n1", "--sync"}); err != nil {
		t.Fatal(err)
	}
	if got, want := good.Args(fs), []string{"--name=n1", "--sync=true"}; !slices.Equal(got, want) {
		t.Fatalf("Args = %q, want %q", got, want)
	}
	for _, bad := range [][]string{{"--sync=maybe"}, {"--listen"}} {
		fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
		fs.SetOutput(io.Discard)
		good.AddFlags(fs)
		if err := fs.Parse(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	d := Table{{Env: "D", Flag: "d", Kind: Duration}}
	fs = pflag.NewFlagSet("x", pflag.ContinueOnError)
	d.AddFlags(fs)
	if err := fs.Parse([]string{"--d=-1s"}); err == nil {
		t.Error("a negative duration accepted")
	}
}
