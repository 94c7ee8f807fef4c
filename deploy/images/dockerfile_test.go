package images

import (
	"bufio"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"unicode"
)

// The Dockerfile is read with a small parser that knows the instructions
// deploy/images/Dockerfile uses. It follows the Dockerfile rules that matter
// for them: a trailing backslash continues the line, comment lines inside a
// continued instruction are dropped, and flags (--platform, --mount, --from,
// --chown) come before the arguments.

// instruction is one Dockerfile instruction.
type instruction struct {
	Line  int      // where it starts (1-based)
	Cmd   string   // upper case: FROM, RUN, COPY, ...
	Flags []string // leading --name=value words
	Args  string   // the rest, continuations joined with a space
}

// stage is one FROM and the instructions after it.
type stage struct {
	Base, Name, Platform string
	Instructions         []instruction
}

type dockerfile struct {
	GlobalArgs map[string]string // ARGs before the first FROM, with their defaults
	Stages     []*stage
}

func parseDockerfile(path string) (*dockerfile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()

	var (
		insts   []instruction
		cur     strings.Builder
		start   int
		lineNum int
	)
	flush := func() error {
		text := strings.TrimSpace(cur.String())
		cur.Reset()
		if text == "" {
			return nil
		}
		cmd, rest, _ := strings.Cut(text, " ")
		in := instruction{Line: start, Cmd: strings.ToUpper(cmd)}
		rest = strings.TrimSpace(rest)
		for strings.HasPrefix(rest, "--") {
			var flag string
			flag, rest, _ = strings.Cut(rest, " ")
			in.Flags = append(in.Flags, flag)
			rest = strings.TrimSpace(rest)
		}
		in.Args = rest
		insts = append(insts, in)
		return nil
	}
	sc := bufio.NewScanner(f)
	continued := false
	for sc.Scan() {
		lineNum++
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && !continued) {
			continue // comments, and blank lines between instructions
		}
		if !continued {
			start = lineNum
		}
		if strings.HasSuffix(trimmed, `\`) {
			cur.WriteString(strings.TrimSuffix(trimmed, `\`))
			cur.WriteString(" ")
			continued = true
			continue
		}
		cur.WriteString(trimmed)
		continued = false
		if err := flush(); err != nil {
			return nil, err
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if continued {
		return nil, fmt.Errorf("%s: the last instruction ends with a line continuation", path)
	}

	df := &dockerfile{GlobalArgs: map[string]string{}}
	for _, in := range insts {
		if in.Cmd == "FROM" {
			words := strings.Fields(in.Args)
			s := &stage{Base: words[0]}
			if len(words) == 3 && strings.EqualFold(words[1], "AS") {
				s.Name = words[2]
			} else if len(words) != 1 {
				return nil, fmt.Errorf("line %d: FROM %q: want IMAGE [AS NAME]", in.Line, in.Args)
			}
			for _, fl := range in.Flags {
				if v, ok := strings.CutPrefix(fl, "--platform="); ok {
					s.Platform = v
				}
			}
			df.Stages = append(df.Stages, s)
			continue
		}
		if len(df.Stages) == 0 {
			if in.Cmd != "ARG" {
				return nil, fmt.Errorf("line %d: %s before the first FROM", in.Line, in.Cmd)
			}
			name, def, _ := strings.Cut(in.Args, "=")
			df.GlobalArgs[name] = def
			continue
		}
		s := df.Stages[len(df.Stages)-1]
		s.Instructions = append(s.Instructions, in)
	}
	return df, nil
}

// stage returns the stage named name, or nil.
func (d *dockerfile) stage(name string) *stage {
	for _, s := range d.Stages {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// baseImage follows a stage's FROM through earlier stages to the image it
// finally starts from.
func (d *dockerfile) baseImage(s *stage) string {
	for seen := 0; seen < len(d.Stages); seen++ {
		parent := d.stage(s.Base)
		if parent == nil {
			return s.Base
		}
		s = parent
	}
	return s.Base
}

// all returns the stage's instructions named cmd.
func (s *stage) all(cmd string) []instruction {
	var out []instruction
	for _, in := range s.Instructions {
		if in.Cmd == cmd {
			out = append(out, in)
		}
	}
	return out
}

// last returns the stage's last instruction named cmd, following FROM into
// earlier stages as Docker does for inherited image settings (USER,
// ENTRYPOINT, EXPOSE, ...).
func (d *dockerfile) last(s *stage, cmd string) (instruction, bool) {
	for seen := 0; seen <= len(d.Stages) && s != nil; seen++ {
		if ins := s.all(cmd); len(ins) > 0 {
			return ins[len(ins)-1], true
		}
		s = d.stage(s.Base)
	}
	return instruction{}, false
}

// shellWords splits a RUN command the way sh would for the simple commands
// the Dockerfile is allowed to use, expanding $NAME and ${NAME} (outside
// single quotes) through lookup. Anything beyond a simple command (operators,
// command substitution, globs) is an error, so that the test never runs
// something other than what Docker would.
func shellWords(cmd string, lookup func(string) (string, bool)) ([]string, error) {
	var (
		words   []string
		cur     strings.Builder
		inWord  bool
		r       = []rune(cmd)
		expand  func(i int) (int, error)
		inDQ    bool
		inSQ    bool
		escaped bool
	)
	expand = func(i int) (int, error) { // r[i] == '$'
		j := i + 1
		var name string
		switch {
		case j < len(r) && r[j] == '{':
			end := strings.IndexRune(string(r[j:]), '}')
			if end < 0 {
				return 0, fmt.Errorf("unterminated ${ in %q", cmd)
			}
			name = string(r[j+1 : j+end])
			j += end + 1
		default:
			for j < len(r) && (r[j] == '_' || unicode.IsLetter(r[j]) || unicode.IsDigit(r[j])) {
				j++
			}
			name = string(r[i+1 : j])
		}
		if name == "" || strings.ContainsAny(name, ":-=?+#%/") {
			return 0, fmt.Errorf("unsupported expansion at %q", string(r[i:]))
		}
		v, ok := lookup(name)
		if !ok {
			return 0, fmt.Errorf("$%s is not an ARG or ENV of the stage", name)
		}
		cur.WriteString(v)
		inWord = true
		return j, nil
	}
	for i := 0; i < len(r); {
		c := r[i]
		switch {
		case escaped:
			cur.WriteRune(c)
			escaped, inWord = false, true
			i++
		case inSQ:
			if c == '\'' {
				inSQ = false
			} else {
				cur.WriteRune(c)
			}
			i++
		case c == '\\':
			escaped = true
			i++
		case c == '\'' && !inDQ:
			inSQ, inWord = true, true
			i++
		case c == '"':
			inDQ, inWord = !inDQ, true
			i++
		case c == '$':
			j, err := expand(i)
			if err != nil {
				return nil, err
			}
			i = j
		case c == '`' || (!inDQ && strings.ContainsRune("|&;<>()*?[]{}~", c)):
			return nil, fmt.Errorf("%q: only a simple command is supported, found %q", cmd, c)
		case !inDQ && unicode.IsSpace(c):
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
			i++
		default:
			cur.WriteRune(c)
			inWord = true
			i++
		}
	}
	if inSQ || inDQ || escaped {
		return nil, fmt.Errorf("unterminated quote in %q", cmd)
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

func TestShellWords(t *testing.T) {
	vars := map[string]string{"A": "x y", "B": "b"}
	lookup := func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
	for _, tc := range []struct {
		in   string
		want []string
		err  bool
	}{
		{in: `GOOS=$B go build -ldflags "-s -X m.V=${A}" -o /out/ ./a`, want: []string{"GOOS=b", "go", "build", "-ldflags", "-s -X m.V=x y", "-o", "/out/", "./a"}},
		{in: `echo '$A' "$B"c \"`, want: []string{"echo", "$A", "bc", `"`}},
		{in: `go build && rm -rf /`, err: true},
		{in: `go build; true`, err: true},
		{in: `go build -ldflags "$(date)"`, err: true},
		{in: "go build `date`", err: true},
		{in: `go build $UNDECLARED`, err: true},
		{in: `go build ${A:-x}`, err: true},
		{in: `go build "unterminated`, err: true},
	} {
		got, err := shellWords(tc.in, lookup)
		if tc.err {
			if err == nil {
				t.Errorf("%s: accepted as %q, want an error", tc.in, got)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("%s: got %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}
