// Package cmdline holds the command-line conventions the three binaries
// share, on top of cobra: --help, --version, `version`, `healthcheck URL`
// and `completion SHELL` on every binary, none of which reads the
// configuration or starts anything; arguments checked before any work;
// and one mapping of errors to exit codes:
//
//	0  success (help and version included)
//	1  the command failed
//	2  a usage error (unknown command or flag, wrong arguments) or a
//	   configuration error, found before anything was started or connected
package cmdline

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/pipeops/tunnel/shared/healthcheck"
	"github.com/pipeops/tunnel/shared/settings"
	"github.com/pipeops/tunnel/shared/version"
)

// Exit codes.
const (
	ExitOK      = 0
	ExitFailure = 1
	ExitUsage   = 2
)

// usageError is a mistake on the command line: exit code 2, and a pointer
// to the command's help (or the usage itself, when full is set).
type usageError struct {
	err  error
	full bool
}

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// Usagef returns a usage error: Execute prints it with a pointer to the
// command's --help and exits 2.
func Usagef(format string, args ...any) error {
	return usageError{err: fmt.Errorf(format, args...)}
}

// UsageError makes err a usage error (see Usagef).
func UsageError(err error) error { return usageError{err: err} }

// exitError ends the program with code; err, when not nil, is printed.
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func (e exitError) Unwrap() error { return e.err }

// Exit returns an error that makes Execute return code, printing err
// unless it is nil (the command already said why, in its log).
func Exit(code int, err error) error { return exitError{code: code, err: err} }

// ConfigError is a configuration that does not load: exit code 2, before
// anything was started.
func ConfigError(err error) error { return Exit(ExitUsage, err) }

// NewRoot returns the root command of binary: --version (and `version`)
// print version.String(binary), `healthcheck URL` checks a health
// endpoint for container healthchecks, `completion SHELL` prints a shell
// completion script. Add the binary's own behaviour to it: a RunE for a
// server, or subcommands (then make it a Group).
func NewRoot(binary, short, long string) *cobra.Command {
	root := &cobra.Command{
		Use:           binary,
		Short:         short,
		Long:          long,
		Version:       version.String(binary),
		SilenceErrors: true,
		SilenceUsage:  true,
		Args:          NoArgs,
	}
	root.SetVersionTemplate("{{.Version}}\n")
	root.Flags().BoolP("version", "v", false, "print the version and exit")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return UsageError(err) })
	root.AddCommand(&cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintln(cmd.OutOrStdout(), version.String(binary))
			return err
		},
	}, &cobra.Command{
		Use:   healthcheck.Command + " URL",
		Short: "Exit 0 if GET URL answers 2xx (container healthchecks)",
		Long: "Exit 0 if GET URL answers 2xx within " + healthcheck.Timeout.String() + ", 1 if not. It reads no configuration:\n" +
			"a container healthcheck runs it in the server's own environment.",
		Args: ExactArgs(1, "URL"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if code := healthcheck.Run(args, cmd.ErrOrStderr()); code != 0 {
				return Exit(code, nil)
			}
			return nil
		},
	})
	return root
}

// Group makes cmd a command that only holds its subcommands: without one,
// or with an unknown one, it is a usage error (and no configuration is
// read).
func Group(cmd *cobra.Command, subs ...*cobra.Command) *cobra.Command {
	cmd.AddCommand(subs...)
	cmd.Args = cobra.ArbitraryArgs
	cmd.RunE = func(c *cobra.Command, args []string) error {
		if len(args) == 0 {
			return usageError{err: fmt.Errorf("%s needs a command: %s", c.CommandPath(), strings.Join(commandNames(c), ", ")), full: true}
		}
		return unknownCommand(c, args[0])
	}
	return cmd
}

func commandNames(c *cobra.Command) []string {
	var names []string
	for _, sub := range c.Commands() {
		if sub.IsAvailableCommand() {
			names = append(names, sub.Name())
		}
	}
	return names
}

func unknownCommand(c *cobra.Command, name string) error {
	msg := fmt.Sprintf("unknown command %q for %q", name, c.CommandPath())
	if c.SuggestionsMinimumDistance <= 0 {
		c.SuggestionsMinimumDistance = 2 // cobra's own default, which it sets only on its own path
	}
	if s := c.SuggestionsFor(name); len(s) > 0 {
		msg += fmt.Sprintf("; did you mean %s?", strings.Join(s, " or "))
	} else if names := commandNames(c); len(names) > 0 {
		msg += "; its commands: " + strings.Join(names, ", ")
	}
	return usageError{err: errors.New(msg)}
}

// NoArgs refuses every positional argument: on a command with
// subcommands as an unknown command, else as an unexpected argument.
func NoArgs(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	if cmd.HasAvailableSubCommands() {
		return unknownCommand(cmd, args[0])
	}
	return Usagef("unexpected argument %q", args[0])
}

// ExactArgs wants n positional arguments, named by what in the error
// ("CLUSTER HOSTNAME").
func ExactArgs(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) == n {
			return nil
		}
		count := map[int]string{1: "one argument", 2: "two arguments", 3: "three arguments"}[n]
		if count == "" {
			count = fmt.Sprintf("%d arguments", n)
		}
		return Usagef("%s takes %s: %s (got %d)", cmd.CommandPath(), count, what, len(args))
	}
}

// ShowSettings adds the settings table to cmd's --help (not to that of its
// subcommands).
func ShowSettings(cmd *cobra.Command, t settings.Table) {
	help := cmd.HelpFunc()
	cmd.SetHelpFunc(func(c *cobra.Command, args []string) {
		help(c, args)
		if c == cmd {
			fmt.Fprint(c.OutOrStdout(), "\n"+t.Help())
		}
	})
}

// Execute runs root with args and returns the exit code (see the package
// comment). Errors go to stderr; help, version and completion scripts to
// stdout.
func Execute(ctx context.Context, root *cobra.Command, args []string, stdout, stderr io.Writer) int {
	if args == nil {
		args = []string{} // nil would make cobra read os.Args
	}
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return ExitOK
	}
	if cmd == nil {
		cmd = root
	}
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(stderr, "Error: %v\n", ue.err)
		if ue.full {
			fmt.Fprint(stderr, "\n"+cmd.UsageString())
		} else {
			fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
		}
		return ExitUsage
	}
	var ee exitError
	if errors.As(err, &ee) {
		if ee.err != nil {
			fmt.Fprintf(stderr, "Error: %v\n", ee.err)
		}
		return ee.code
	}
	fmt.Fprintf(stderr, "Error: %v\n", err)
	return ExitFailure
}
