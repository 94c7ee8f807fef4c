package kubeletsim

import (
	"archive/tar"
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
)

// Commands returns the names of what an exec can run in a kubeletsim
// container. There is no real process: each command is a Go function over
// the container's in-memory file system and the exec's streams, enough for
// kubectl's own uses (cp runs test and tar) and for tests of stdin, stdout,
// exit codes and terminals.
//
//	cat [FILE...]        stdin (or the files) to stdout; on a TTY, ^D ends it
//	echo [-n] ARGS...    its arguments
//	true, false          exit 0, exit 1
//	exit [N]             exit N (default 0)
//	sh -c SCRIPT         runs SCRIPT: commands separated by ';' or newlines,
//	                     words split with sh quoting; no pipes or redirects
//	sh                   the same, reading lines from stdin until exit or EOF
//	sleep SECONDS        waits (ends early when the exec is torn down)
//	test -e|-f|-d PATH   file tests
//	stty size            "ROWS COLS" of the exec's terminal, once known
//	tar cf - PATH...     writes an archive of PATHs to stdout
//	tar xf - [-C DIR]    extracts stdin into DIR (also -xmf, xvf, ...)
//
// Any other command fails with exit code 127, as a missing binary would.
func Commands() []string {
	return []string{"cat", "echo", "true", "false", "exit", "sh", "sleep", "test", "stty", "tar"}
}

// proc is one command running in a container: its streams, never nil, and
// what it may touch.
type proc struct {
	ctx    context.Context
	fs     *memFS
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	tty    *terminal // nil without a TTY
}

// exitCode is how a command ended; stop asks a shell to run nothing more
// (the exit builtin).
type exitCode struct {
	code int
	stop bool
}

// run runs argv and returns its exit code.
func (p *proc) run(argv []string) exitCode {
	if len(argv) == 0 {
		return exitCode{}
	}
	args := argv[1:]
	switch argv[0] {
	case "cat":
		return cmdCat(p, args)
	case "echo":
		return cmdEcho(p, args)
	case "true":
		return exitCode{}
	case "false":
		return exitCode{code: 1}
	case "exit":
		return cmdExit(p, args)
	case "sh":
		return cmdSh(p, args)
	case "sleep":
		return cmdSleep(p, args)
	case "test":
		return cmdTest(p, args)
	case "stty":
		return cmdStty(p, args)
	case "tar":
		return cmdTar(p, args)
	}
	fmt.Fprintf(p.stderr, "%s: command not found (kubeletsim runs only: %s)\n", argv[0], strings.Join(Commands(), ", "))
	return exitCode{code: 127}
}

// eot is ^D, which ends input on a terminal: with a TTY the line discipline
// of a real container would turn it into end of file.
const eot = 0x04

func cmdCat(p *proc, args []string) exitCode {
	if len(args) > 0 {
		code := 0
		for _, name := range args {
			data, err := p.fs.readFile(name)
			if err != nil {
				fmt.Fprintf(p.stderr, "cat: %v\n", err)
				code = 1
				continue
			}
			if _, err := p.stdout.Write(data); err != nil {
				return exitCode{code: 1}
			}
		}
		return exitCode{code: code}
	}
	buf := make([]byte, 32<<10)
	for {
		n, err := p.stdin.Read(buf)
		chunk := buf[:n]
		end := false
		if p.tty != nil {
			if i := strings.IndexByte(string(chunk), eot); i >= 0 {
				chunk, end = chunk[:i], true
			}
		}
		if len(chunk) > 0 {
			if _, werr := p.stdout.Write(chunk); werr != nil {
				return exitCode{code: 1}
			}
		}
		if end || errors.Is(err, io.EOF) {
			return exitCode{}
		}
		if err != nil {
			fmt.Fprintf(p.stderr, "cat: read stdin: %v\n", err)
			return exitCode{code: 1}
		}
	}
}

func cmdEcho(p *proc, args []string) exitCode {
	newline := "\n"
	if len(args) > 0 && args[0] == "-n" {
		args, newline = args[1:], ""
	}
	fmt.Fprint(p.stdout, strings.Join(args, " ")+newline)
	return exitCode{}
}

func cmdExit(p *proc, args []string) exitCode {
	if len(args) == 0 {
		return exitCode{stop: true}
	}
	n, err := strconv.Atoi(args[0])
	if err != nil || n < 0 || n > 255 {
		fmt.Fprintf(p.stderr, "exit: %s: numeric argument 0-255 required\n", args[0])
		return exitCode{code: 2, stop: true}
	}
	return exitCode{code: n, stop: true}
}

func cmdSleep(p *proc, args []string) exitCode {
	if len(args) != 1 {
		fmt.Fprintln(p.stderr, "usage: sleep SECONDS")
		return exitCode{code: 2}
	}
	secs, err := strconv.ParseFloat(args[0], 64)
	if err != nil || secs < 0 {
		fmt.Fprintf(p.stderr, "sleep: invalid time interval %q\n", args[0])
		return exitCode{code: 2}
	}
	t := time.NewTimer(time.Duration(secs * float64(time.Second)))
	defer t.Stop()
	select {
	case <-t.C:
		return exitCode{}
	case <-p.ctx.Done():
		return exitCode{code: 130}
	}
}

func cmdTest(p *proc, args []string) exitCode {
	if len(args) != 2 {
		fmt.Fprintln(p.stderr, "test: kubeletsim supports only test -e|-f|-d PATH")
		return exitCode{code: 2}
	}
	exists, isDir := p.fs.stat(args[1])
	var ok bool
	switch args[0] {
	case "-e":
		ok = exists
	case "-f":
		ok = exists && !isDir
	case "-d":
		ok = isDir
	default:
		fmt.Fprintf(p.stderr, "test: %s: unsupported operator\n", args[0])
		return exitCode{code: 2}
	}
	if !ok {
		return exitCode{code: 1}
	}
	return exitCode{}
}

// sttyWait bounds how long `stty size` waits for the client's first
// terminal size, which travels on a stream of its own and may come after
// the command started.
const sttyWait = 10 * time.Second

func cmdStty(p *proc, args []string) exitCode {
	if len(args) != 1 || args[0] != "size" {
		fmt.Fprintln(p.stderr, "stty: kubeletsim supports only stty size")
		return exitCode{code: 2}
	}
	if p.tty == nil {
		fmt.Fprintln(p.stderr, "stty: 'standard input': Inappropriate ioctl for device")
		return exitCode{code: 1}
	}
	ctx, cancel := context.WithTimeout(p.ctx, sttyWait)
	defer cancel()
	size, err := p.tty.wait(ctx, func(remotecommand.TerminalSize) bool { return true })
	if err != nil {
		fmt.Fprintf(p.stderr, "stty: no terminal size received: %v\n", err)
		return exitCode{code: 1}
	}
	fmt.Fprintf(p.stdout, "%d %d\n", size.Height, size.Width)
	return exitCode{}
}

func cmdSh(p *proc, args []string) exitCode {
	if len(args) >= 2 && args[0] == "-c" {
		return p.script(args[1])
	}
	if len(args) != 0 {
		fmt.Fprintln(p.stderr, "sh: kubeletsim supports only sh and sh -c SCRIPT")
		return exitCode{code: 2}
	}
	// Interactive: one line at a time. A terminal in raw mode sends
	// carriage returns for Enter, so both end a line.
	r := bufio.NewReader(p.stdin)
	var line []byte
	last := exitCode{}
	for {
		b, err := r.ReadByte()
		if err != nil || (p.tty != nil && b == eot) {
			return exitCode{code: last.code}
		}
		if b != '\r' && b != '\n' {
			line = append(line, b)
			continue
		}
		last = p.script(string(line))
		line = line[:0]
		if last.stop {
			return exitCode{code: last.code}
		}
	}
}

// script runs the commands of one sh script, stopping at exit.
func (p *proc) script(s string) exitCode {
	cmds, err := parseScript(s)
	if err != nil {
		fmt.Fprintf(p.stderr, "sh: %v\n", err)
		return exitCode{code: 2}
	}
	last := exitCode{}
	for _, argv := range cmds {
		last = p.run(argv)
		if last.stop {
			return last
		}
	}
	return exitCode{code: last.code}
}

// parseScript splits a script into commands (at ';' and newlines) and
// their words, with sh quoting: '...' literally, "..." with \" \\ \$ \`
// escapes, and backslash outside quotes. Pipes, redirects, background jobs
// and substitutions are refused rather than misread.
func parseScript(s string) ([][]string, error) {
	var (
		cmds    [][]string
		words   []string
		word    strings.Builder
		inWord  bool
		endWord = func() {
			if inWord {
				words = append(words, word.String())
				word.Reset()
				inWord = false
			}
		}
		endCmd = func() {
			endWord()
			if len(words) > 0 {
				cmds = append(cmds, words)
				words = nil
			}
		}
	)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ' || c == '\t':
			endWord()
		case c == ';' || c == '\n':
			endCmd()
		case c == '\'':
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return nil, errors.New("unterminated '")
			}
			word.WriteString(s[i+1 : i+1+j])
			inWord = true
			i += j + 1
		case c == '"':
			inWord = true
			closed := false
			for i++; i < len(s); i++ {
				if s[i] == '"' {
					closed = true
					break
				}
				if s[i] == '$' || s[i] == '`' {
					return nil, fmt.Errorf("%q: substitutions are not supported by kubeletsim", s[i])
				}
				if s[i] == '\\' && i+1 < len(s) && strings.IndexByte("\"\\$`", s[i+1]) >= 0 {
					i++
				}
				word.WriteByte(s[i])
			}
			if !closed {
				return nil, errors.New(`unterminated "`)
			}
		case c == '\\':
			if i+1 < len(s) {
				i++
				word.WriteByte(s[i])
				inWord = true
			}
		case strings.IndexByte("|&<>()$`", c) >= 0:
			return nil, fmt.Errorf("%q: pipes, redirects, jobs and substitutions are not supported by kubeletsim", c)
		default:
			word.WriteByte(c)
			inWord = true
		}
	}
	endCmd()
	return cmds, nil
}

// cmdTar handles the two forms kubectl cp runs, `tar cf - PATH` and
// `tar -xmf - -C DIR`, in the traditional bundled form or with a dash.
func cmdTar(p *proc, args []string) exitCode {
	fail := func(format string, a ...any) exitCode {
		fmt.Fprintf(p.stderr, "tar: "+format+"\n", a...)
		return exitCode{code: 2}
	}
	if len(args) == 0 {
		return fail("kubeletsim supports only tar cf - PATH... and tar xf - [-C DIR]")
	}
	var mode byte
	archive, dir := "", "/"
	var operands []string
	rest := args[1:]
	next := func() (string, bool) {
		if len(rest) == 0 {
			return "", false
		}
		v := rest[0]
		rest = rest[1:]
		return v, true
	}
	for _, flag := range strings.TrimPrefix(args[0], "-") {
		switch flag {
		case 'c', 'x':
			mode = byte(flag)
		case 'f':
			v, ok := next()
			if !ok {
				return fail("option f requires an argument")
			}
			archive = v
		case 'm', 'v', 'o', 'p':
		default:
			return fail("option %q not supported by kubeletsim", flag)
		}
	}
	for {
		a, ok := next()
		if !ok {
			break
		}
		switch {
		case a == "-C":
			v, ok := next()
			if !ok {
				return fail("option -C requires an argument")
			}
			dir = v
		case a == "--no-same-permissions" || a == "--no-same-owner":
		case strings.HasPrefix(a, "-"):
			return fail("option %s not supported by kubeletsim", a)
		default:
			operands = append(operands, a)
		}
	}
	if archive != "-" {
		return fail("kubeletsim archives only to and from stdio (f -)")
	}
	switch mode {
	case 'c':
		if len(operands) == 0 {
			return fail("Cowardly refusing to create an empty archive")
		}
		tw := tar.NewWriter(p.stdout)
		code := 0
		for _, op := range operands {
			if !path.IsAbs(op) {
				op = path.Join(dir, op)
			}
			if err := p.fs.writeTar(tw, op); err != nil {
				fmt.Fprintf(p.stderr, "tar: %v\n", err)
				code = 2
			}
		}
		if err := tw.Close(); err != nil {
			return fail("%v", err)
		}
		return exitCode{code: code}
	case 'x':
		if err := p.fs.extractTar(p.stdin, dir, p.stderr); err != nil {
			return fail("%v", err)
		}
		return exitCode{}
	default:
		return fail("You must specify one of the '-c' or '-x' options")
	}
}

// terminal is the size of a terminal as the client last reported it, with
// a way to wait for a size. Safe for concurrent use.
type terminal struct {
	mu      sync.Mutex
	size    remotecommand.TerminalSize
	known   bool
	changed chan struct{} // closed and replaced on every set
}

func newTerminal() *terminal { return &terminal{changed: make(chan struct{})} }

func (t *terminal) set(size remotecommand.TerminalSize) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.size, t.known = size, true
	close(t.changed)
	t.changed = make(chan struct{})
}

// wait returns the first size (the current one included) that ok accepts.
func (t *terminal) wait(ctx context.Context, ok func(remotecommand.TerminalSize) bool) (remotecommand.TerminalSize, error) {
	for {
		t.mu.Lock()
		size, known, changed := t.size, t.known, t.changed
		t.mu.Unlock()
		if known && ok(size) {
			return size, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return size, ctx.Err()
		}
	}
}
