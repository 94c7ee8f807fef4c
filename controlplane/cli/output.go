package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"unicode"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/pipeops/tunnel/shared/cmdline"
)

// Output formats of -o. JSON is one line per document (jq reads it as it
// is), YAML the same fields.
const (
	formatTable = "table"
	formatWide  = "wide"
	formatText  = "text"
	formatJSON  = "json"
	formatYAML  = "yaml"
)

// outputFlag is -o/--output, with --json (and --wide where there is a
// wide form), the spellings scripts used before -o, kept.
type outputFlag struct {
	formats []string // the first is the default
	format  string
	json    bool
	wide    bool
}

// addOutput defines -o on cmd with formats, the first the default.
func addOutput(cmd *cobra.Command, formats ...string) *outputFlag {
	o := &outputFlag{formats: formats}
	cmd.Flags().StringVarP(&o.format, "output", "o", "", "output format: "+strings.Join(formats, ", ")+" (default "+formats[0]+")")
	cmd.Flags().BoolVar(&o.json, "json", false, "print JSON (-o json)")
	if slices.Contains(formats, formatWide) {
		cmd.Flags().BoolVar(&o.wide, "wide", false, "print the wide table (-o wide)")
	}
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions(formats, cobra.ShellCompDirectiveNoFileComp))
	return o
}

// get returns the format asked for, or a usage error.
func (o *outputFlag) get() (string, error) {
	given := []string{}
	if o.format != "" {
		given = append(given, o.format)
	}
	if o.json {
		given = append(given, formatJSON)
	}
	if o.wide {
		given = append(given, formatWide)
	}
	switch {
	case len(given) == 0:
		return o.formats[0], nil
	case len(given) > 1:
		return "", cmdline.Usagef("give one output format: -o, --json or --wide")
	case !slices.Contains(o.formats, given[0]):
		return "", cmdline.Usagef("-o %q: want one of %s", given[0], strings.Join(o.formats, ", "))
	}
	return given[0], nil
}

// printData writes v as JSON or YAML (format is one of them).
func printData(w io.Writer, format string, v any) error {
	if format == formatYAML {
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	return json.NewEncoder(w).Encode(v)
}

// table writes rows as aligned columns, two spaces apart, the last one
// unpadded. Cells are made terminalSafe first: what agents and callers
// chose never reaches the terminal as escape sequences.
type table struct {
	rows [][]string
}

func (t *table) row(cells ...string) {
	for i, c := range cells {
		cells[i] = terminalSafe(c)
	}
	t.rows = append(t.rows, cells)
}

func (t *table) write(w io.Writer) {
	var width []int
	for _, r := range t.rows {
		for i, c := range r {
			if i >= len(width) {
				width = append(width, 0)
			}
			width[i] = max(width[i], len(c))
		}
	}
	for _, r := range t.rows {
		var b strings.Builder
		for i, c := range r {
			if i == len(r)-1 {
				b.WriteString(c)
				break
			}
			fmt.Fprintf(&b, "%-*s  ", width[i], c)
		}
		fmt.Fprintln(w, strings.TrimRight(b.String(), " "))
	}
}

// terminalSafe is s with every control character (escape sequences, line
// breaks) replaced by '?'.
func terminalSafe(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return '?'
		}
		return r
	}, s)
}

// orDash is s, or "-" for an empty cell (an empty cell would shift the
// columns of whoever splits the line on spaces).
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
