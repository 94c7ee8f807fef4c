package settings

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
)

// Loader loads a binary's configuration from getenv the way the binary
// does, returning its Config.
type Loader func(getenv func(string) string) (any, error)

// Reads returns the environment variables load reads, sorted, when env is
// the environment.
func Reads(env map[string]string, load Loader) []string {
	seen := map[string]bool{}
	_, _ = load(func(k string) string {
		seen[k] = true
		return env[k]
	})
	out := make([]string, 0, len(seen))
	for k := range seen {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// CheckReads reports every variable load reads that the table lacks, and
// every one in the table that load does not read.
func (t Table) CheckReads(env map[string]string, load Loader) error {
	read := Reads(env, load)
	var errs []error
	for _, k := range read {
		if !slices.Contains(t.Envs(), k) {
			errs = append(errs, fmt.Errorf("the configuration reads %s, which the settings table does not list", k))
		}
	}
	for _, k := range t.Envs() {
		if !slices.Contains(read, k) {
			errs = append(errs, fmt.Errorf("the settings table lists %s, which the configuration does not read", k))
		}
	}
	return errors.Join(errs...)
}

// CheckDefaults reports every setting whose literal Default is not what
// load does without it: for each, it loads env, then env with the variable
// set to the default, and the two configurations must be equal. env must
// be a valid environment; its own variables are not checked.
func (t Table) CheckDefaults(env map[string]string, load Loader) error {
	base, err := load(mapEnv(env))
	if err != nil {
		return fmt.Errorf("the base environment does not load: %w", err)
	}
	var errs []error
	for _, s := range t {
		if s.Default == "" {
			continue
		}
		if _, ok := env[s.Env]; ok {
			continue
		}
		with := map[string]string{s.Env: s.Default}
		for k, v := range env {
			with[k] = v
		}
		got, err := load(mapEnv(with))
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s=%s, its documented default, is refused: %w", s.Env, s.Default, err))
		case !reflect.DeepEqual(got, base):
			errs = append(errs, fmt.Errorf("%s=%s, its documented default, changes the configuration: the real default differs", s.Env, s.Default))
		}
	}
	return errors.Join(errs...)
}

func mapEnv(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// docRow is one row of a settings table in Markdown.
type docRow struct{ flag, def string }

// CheckDoc reports every difference between the table and the settings
// table of a Markdown document: the first table whose header's first cell
// is "variable", with one variable per row (`NAME`), its flag (`--name`)
// in a "flag" column if the binary has flags, and its default in a
// "default" column: `value` for a literal default, else the Note.
func (t Table) CheckDoc(markdown string) error {
	rows, hasFlags, err := parseDoc(markdown)
	if err != nil {
		return err
	}
	var errs []error
	for _, s := range t {
		r, ok := rows[s.Env]
		if !ok {
			errs = append(errs, fmt.Errorf("the docs' settings table has no row for %s", s.Env))
			continue
		}
		wantFlag := ""
		if s.Flag != "" {
			wantFlag = "`--" + s.Flag + "`"
		}
		if !hasFlags && wantFlag != "" {
			errs = append(errs, fmt.Errorf("%s has the flag --%s, and the docs' settings table has no flag column", s.Env, s.Flag))
		} else if r.flag != wantFlag {
			errs = append(errs, fmt.Errorf("docs: %s has flag %q, want %q", s.Env, r.flag, wantFlag))
		}
		wantDef := s.Note
		if s.Default != "" {
			wantDef = "`" + s.Default + "`"
		}
		if r.def != wantDef {
			errs = append(errs, fmt.Errorf("docs: %s has default %q, want %q", s.Env, r.def, wantDef))
		}
	}
	for env := range rows {
		if !slices.Contains(t.Envs(), env) {
			errs = append(errs, fmt.Errorf("the docs' settings table lists %s, which the settings table does not", env))
		}
	}
	return errors.Join(errs...)
}

func parseDoc(markdown string) (rows map[string]docRow, hasFlags bool, err error) {
	lines := strings.Split(markdown, "\n")
	start := -1
	for i, l := range lines {
		if c := cells(l); len(c) > 0 && strings.EqualFold(c[0], "variable") {
			start = i
			break
		}
	}
	if start < 0 {
		return nil, false, errors.New("the docs have no settings table (a table whose first column is \"variable\")")
	}
	flagCol, defCol := -1, -1
	for i, c := range cells(lines[start]) {
		switch strings.ToLower(c) {
		case "flag":
			flagCol = i
		case "default":
			defCol = i
		}
	}
	if defCol < 0 {
		return nil, false, errors.New("the docs' settings table has no \"default\" column")
	}
	rows = map[string]docRow{}
	for n, l := range lines[start+1:] {
		c := cells(l)
		if c == nil {
			break
		}
		if n == 0 { // the |---|---| line under the header
			continue
		}
		if len(c) <= defCol || len(c) <= flagCol {
			return nil, false, fmt.Errorf("docs: settings row %q has too few cells", l)
		}
		name := c[0]
		if len(name) < 3 || name[0] != '`' || name[len(name)-1] != '`' || strings.ContainsAny(name[1:len(name)-1], "` ,") {
			return nil, false, fmt.Errorf("docs: settings row %q: the first cell must be one variable, as `NAME`", l)
		}
		name = name[1 : len(name)-1]
		if _, dup := rows[name]; dup {
			return nil, false, fmt.Errorf("docs: %s has two rows", name)
		}
		r := docRow{def: c[defCol]}
		if flagCol >= 0 {
			r.flag = c[flagCol]
		}
		rows[name] = r
	}
	return rows, flagCol >= 0, nil
}

// cells splits a Markdown table line into its trimmed cells; nil when the
// line is not part of a table. A `|` inside backticks does not split.
func cells(line string) []string {
	line = strings.TrimSpace(line)
	if !strings.HasPrefix(line, "|") {
		return nil
	}
	line = strings.TrimSuffix(strings.TrimPrefix(line, "|"), "|")
	var (
		out  []string
		cell strings.Builder
		code bool
	)
	for _, r := range line {
		switch {
		case r == '`':
			code = !code
			cell.WriteRune(r)
		case r == '|' && !code:
			out = append(out, strings.TrimSpace(cell.String()))
			cell.Reset()
		default:
			cell.WriteRune(r)
		}
	}
	return append(out, strings.TrimSpace(cell.String()))
}
