package relay

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pipeops/tunnel/loadtest/internal/child"
)

// A relay process is the loadtest binary run with `-relay LISTEN,TARGET`:
// it listens on LISTEN, writes the address it listens on as the first line
// of its stdout, relays to TARGET, and exits when its stdin ends (the
// parent closed it, or died) or on SIGTERM or SIGINT. Start is the
// parent's side.

// Spec is the argument of a relay process: "LISTEN,TARGET".
func Spec(listen, target string) string { return listen + "," + target }

// ParseSpec splits a Spec and checks that both are loopback addresses.
func ParseSpec(spec string) (listen, target string, err error) {
	listen, target, ok := strings.Cut(spec, ",")
	if !ok {
		return "", "", fmt.Errorf("relay: %q is not LISTEN,TARGET", spec)
	}
	for _, a := range []string{listen, target} {
		if err := CheckLoopback(a); err != nil {
			return "", "", err
		}
	}
	return listen, target, nil
}

// Stdin returns the process's standard input as a file whose reads can be
// stopped (SetReadDeadline), so that a relay process waits for its stdin
// watcher on every way out. The parent's pipe is blocking, which the
// runtime's poller cannot interrupt: it is switched to non-blocking mode,
// and os.Stdin must not be read from afterwards.
func Stdin() (*os.File, error) {
	if err := syscall.SetNonblock(syscall.Stdin, true); err != nil {
		return nil, fmt.Errorf("relay: stdin: %w", err)
	}
	return os.NewFile(uintptr(syscall.Stdin), "stdin"), nil
}

// Input is what a relay process reads its stdin through: it must be able
// to stop a read in progress (an *os.File from Stdin or os.Pipe can).
type Input interface {
	io.Reader
	SetReadDeadline(time.Time) error
}

// RunProcess is a relay process's body: it listens as spec says, writes the
// address to out, and relays until ctx ends or in reaches its end. It
// returns once every goroutine it started has ended.
func RunProcess(ctx context.Context, spec string, in Input, out io.Writer, log *slog.Logger) error {
	listen, target, err := ParseSpec(spec)
	if err != nil {
		return err
	}
	if err := in.SetReadDeadline(time.Time{}); err != nil {
		return fmt.Errorf("relay: stdin cannot be interrupted (want a pipe): %w", err)
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("relay: %w", err)
	}
	r, err := New(ln, target, log)
	if err != nil {
		ln.Close()
		return err
	}
	if _, err := fmt.Fprintln(out, r.Addr()); err != nil {
		ln.Close()
		return fmt.Errorf("relay: write the address: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() {
		defer cancel()
		// The parent writes nothing; its end closing is the signal.
		_, _ = io.Copy(io.Discard, in)
	})
	err = r.Serve(ctx)
	cancel()
	_ = in.SetReadDeadline(time.Now())
	wg.Wait()
	return err
}

// startTimeout bounds a relay process's start, up to its address line.
const startTimeout = 10 * time.Second

// Process is a relay process started by Start. Close stops it.
type Process struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	addr string
	done chan struct{}
	err  error // of Wait, once done is closed
}

// Start runs command (the loadtest binary and its relay flag) with the
// Spec of a relay from an ephemeral loopback port to target, and waits for
// its address. Its stderr goes to ours; it is killed if this process dies.
func Start(command []string, target string) (*Process, error) {
	if len(command) == 0 {
		return nil, errors.New("relay: no command")
	}
	if err := CheckLoopback(target); err != nil {
		return nil, err
	}
	args := append(append([]string(nil), command[1:]...), Spec("127.0.0.1:0", target))
	cmd, in, out, err := child.Start(command[0], args...)
	if err != nil {
		return nil, fmt.Errorf("start a relay: %w", err)
	}
	p := &Process{cmd: cmd, in: in, done: make(chan struct{})}
	type line struct {
		s   string
		err error
	}
	first := make(chan line, 1)
	// The reader ends with the line, or with the pipe when the process
	// exits (Wait below closes it).
	go func() {
		s, err := bufio.NewReader(out).ReadString('\n')
		first <- line{strings.TrimSpace(s), err}
	}()
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	timer := time.NewTimer(startTimeout)
	defer timer.Stop()
	select {
	case l := <-first:
		if l.err != nil {
			p.kill()
			return nil, fmt.Errorf("relay to %s: no address: %w (exit: %v)", target, l.err, p.err)
		}
		if err := CheckLoopback(l.s); err != nil {
			p.kill()
			return nil, err
		}
		p.addr = l.s
		return p, nil
	case <-timer.C:
		p.kill()
		<-first
		return nil, fmt.Errorf("relay to %s: no address within %s", target, startTimeout)
	}
}

// kill ends the process and waits for it.
func (p *Process) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// Addr is the relay's listen address, IP:port.
func (p *Process) Addr() string { return p.addr }

// Pid is the relay's process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Close stops the relay: it exits when its stdin closes, and is killed if
// it has not within 10 s. It returns the exit error, if any.
func (p *Process) Close() error {
	p.in.Close()
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.kill()
		return errors.New("relay: killed, it did not exit within 10 s of its stdin closing")
	}
	return p.err
}
