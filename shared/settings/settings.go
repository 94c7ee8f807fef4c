// Package settings describes a binary's configuration settings (environment
// variable, flag, default, meaning) in one table, from which its --help is
// written and against which its config loader and its documentation are
// checked, so that the three cannot drift apart.
//
// The table describes; it does not load. Each binary's typed Config and its
// loader stay the one place that reads and validates the settings; the
// Check functions here hold a table to that loader and to the docs.
package settings

import (
	"fmt"
	"strings"
)

// Kind is the type of a setting's value, as its flag shows it.
type Kind string

// The kinds of values. A bool flag may be given without a value.
const (
	String   Kind = "string"
	Bool     Kind = "bool"
	Duration Kind = "duration"
)

// Setting is one configuration setting of a binary.
type Setting struct {
	Env  string // the environment variable
	Flag string // the long flag without dashes; "" when the setting is environment-only
	Kind Kind   // "" is String
	// Default is the literal default value: setting Env to it changes
	// nothing (CheckDefaults holds the loader to that). Empty when the
	// default is not a value; Note then says what happens instead.
	Default string
	// Note describes a default that is not a literal value: "(required)",
	// "the pod's hostname". Used only when Default is empty.
	Note string
	// Help is a one-line description for --help; the docs say more.
	Help string
}

// Table is a binary's settings, in the order --help lists them.
type Table []Setting

// Envs returns the environment variables of the table, in its order.
func (t Table) Envs() []string {
	out := make([]string, 0, len(t))
	for _, s := range t {
		out = append(out, s.Env)
	}
	return out
}

// Help renders the table for a terminal: a line per setting naming the
// variable, its flag and default, then its description indented below.
func (t Table) Help() string {
	var b strings.Builder
	b.WriteString("Settings (environment variable, flag, default; a flag beats the variable):\n")
	for _, s := range t {
		b.WriteString("  " + s.Env)
		if s.Flag != "" {
			b.WriteString(", --" + s.Flag)
		}
		switch {
		case s.Default != "":
			fmt.Fprintf(&b, " (default %s)", s.Default)
		case s.Note != "":
			fmt.Fprintf(&b, " %s", parenthesize(s.Note))
		}
		b.WriteString("\n")
		for _, line := range wrap(s.Help, 72) {
			b.WriteString("      " + line + "\n")
		}
	}
	return b.String()
}

// parenthesize puts a note in parentheses unless it already is.
func parenthesize(note string) string {
	if strings.HasPrefix(note, "(") && strings.HasSuffix(note, ")") {
		return note
	}
	return "(default: " + note + ")"
}

// wrap breaks text into lines of at most width characters at spaces (a
// longer word stands on a line of its own).
func wrap(text string, width int) []string {
	var lines []string
	line := ""
	for _, w := range strings.Fields(text) {
		if line != "" && len(line)+1+len(w) > width {
			lines = append(lines, line)
			line = ""
		}
		if line != "" {
			line += " "
		}
		line += w
	}
	if line != "" {
		lines = append(lines, line)
	}
	return lines
}
