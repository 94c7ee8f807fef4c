package settings

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// AddFlags defines on fs a flag for every setting that has one. The flags
// only carry text: Args hands what was given to the binary's own loader,
// which stays the one place values are parsed and validated (bools and
// durations are checked here too, so that a mistyped one is a usage error).
func (t Table) AddFlags(fs *pflag.FlagSet) {
	for _, s := range t {
		if s.Flag == "" {
			continue
		}
		usage := strings.ReplaceAll(s.Help, "`", "") // pflag reads `x` as the value's name
		usage += " (" + s.Env + ")"
		if s.Default == "" && s.Note != "" {
			usage += " " + parenthesize(s.Note)
		}
		f := fs.VarPF(&flagValue{kind: s.Kind, value: s.Default}, s.Flag, "", usage)
		if s.Kind == Bool {
			f.NoOptDefVal = "true"
		}
	}
}

// Args returns the table's flags that were given on fs as arguments of the
// form --name=value, in the table's order, for the binary's loader.
func (t Table) Args(fs *pflag.FlagSet) []string {
	var out []string
	for _, s := range t {
		if s.Flag == "" {
			continue
		}
		if f := fs.Lookup(s.Flag); f != nil && f.Changed {
			out = append(out, "--"+s.Flag+"="+f.Value.String())
		}
	}
	return out
}

// flagValue is a setting's flag: text, checked by kind.
type flagValue struct {
	kind  Kind
	value string
}

func (v *flagValue) String() string { return v.value }

func (v *flagValue) Type() string {
	if v.kind == "" {
		return string(String)
	}
	return string(v.kind)
}

func (v *flagValue) Set(s string) error {
	switch v.kind {
	case Bool:
		if _, err := strconv.ParseBool(s); err != nil {
			return fmt.Errorf("%q is not true or false", s)
		}
	case Duration:
		if d, err := time.ParseDuration(s); err != nil || d <= 0 {
			return fmt.Errorf("%q is not a positive duration (like 30s or 24h)", s)
		}
	}
	v.value = s
	return nil
}
