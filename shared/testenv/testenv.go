// Package testenv holds what the real test environments (pgtest for
// PostgreSQL, kubetest for etcd + kube-apiserver) have in common: the rule for
// a missing environment, child processes that die with the test binary, and
// the paths of the locally built test binaries.
//
// The rule for a missing environment: a test that needs a real server it
// cannot get is skipped with a message saying how to get one, unless the CI
// environment variable is set, in which case it fails. CI must never go green
// by skipping the tests that prove the system works.
package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// ErrUnavailable marks an environment that cannot be had on this machine
// (binaries not installed, no Docker engine), as opposed to one that was found
// but failed to start. Only the former may be skipped, and only outside CI.
var ErrUnavailable = errors.New("test environment unavailable")

// InCI reports whether the tests run in CI, where a missing environment is a
// failure rather than a skip.
func InCI() bool {
	v := strings.ToLower(strings.TrimSpace(os.Getenv("CI")))
	return v != "" && v != "0" && v != "false"
}

// Require stops the test when err is not nil: a skip when err wraps
// ErrUnavailable and CI is not set, a failure otherwise.
func Require(t testing.TB, what string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if errors.Is(err, ErrUnavailable) && !InCI() {
		t.Skipf("skipping: %s: %v (CI would fail here; see docs/testing.md)", what, err)
	}
	t.Fatalf("%s: %v", what, err)
}

// Main runs the tests of a package and then the given stop functions, which
// shut down the environments the tests started. Use it from TestMain:
//
//	func TestMain(m *testing.M) { testenv.Main(m, pgtest.Stop, kubetest.Stop) }
func Main(m *testing.M, stops ...func()) {
	os.Exit(run(m, stops))
}

// MainNoLeaks is Main that also fails a passing run when goroutines are
// left once the environments have stopped, except those ignore matches
// (goroutines of libraries the tests do not own). Stopping first matters:
// a shared server's goroutines are not leaks, and they end with it.
//
//	func TestMain(m *testing.M) { testenv.MainNoLeaks(m, nil, pgtest.Stop) }
func MainNoLeaks(m *testing.M, ignore []goleak.Option, stops ...func()) {
	code := run(m, stops)
	if code == 0 {
		if err := goleak.Find(ignore...); err != nil {
			fmt.Fprintln(os.Stderr, "goroutines outlived the tests:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func run(m *testing.M, stops []func()) int {
	code := m.Run()
	for _, stop := range stops {
		stop()
	}
	return code
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago. Servers
// that cannot be handed a listener need it; the small race with other
// processes is covered by the callers retrying their start.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// ModuleRoot returns the directory of the main module's go.mod, found by
// walking up from the working directory (go test runs each package in its own
// directory).
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.HasPrefix(string(data), "module github.com/pipeops/tunnel\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod of github.com/pipeops/tunnel not found above the working directory")
		}
		dir = parent
	}
}

// ToolsDir is where `make testenv` puts the binaries it builds (see the
// Makefile); it is gitignored.
func ToolsDir() string {
	root, err := ModuleRoot()
	if err != nil {
		return ""
	}
	return filepath.Join(root, ".testenv", "bin")
}

// FindTool returns the path of a test tool the Makefile builds: the one in
// ToolsDir (the version the Makefile pins), else one on PATH. Without
// either, the error wraps ErrUnavailable and names the make target that
// builds it, for Require.
func FindTool(name, makeTarget string) (string, error) {
	if d := ToolsDir(); d != "" {
		p := filepath.Join(d, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("%w: %s is neither in %s nor on PATH; run `make %s`", ErrUnavailable, name, ToolsDir(), makeTarget)
}

// Process is a server started for tests. It is killed when the test binary
// dies (parent-death signal), so a crashed test run leaves no server behind.
type Process struct {
	Name    string
	LogPath string
	cmd     *exec.Cmd
	done    chan struct{}
	err     error
}

// StartProcess starts path with args, its output going to logPath. cred, when
// not nil, runs it as another user (PostgreSQL refuses to run as root).
func StartProcess(name, path string, args []string, logPath string, cred *syscall.Credential) (*Process, error) {
	cmd := exec.Command(path, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if cred != nil {
		// The server writes its log through the file descriptor we hand it,
		// but tools reading it later run as us; ownership only matters for
		// cleanup, which runs as us too.
		if f, err := os.Create(logPath); err == nil {
			_ = f.Chown(int(cred.Uid), int(cred.Gid))
			f.Close()
		}
	}
	return StartCommand(name, cmd, logPath)
}

// StartCommand starts cmd (its path, args, env and credential already set),
// appending its output to logPath, in a process group of its own that dies
// with this process.
func StartCommand(name string, cmd *exec.Cmd, logPath string) (*Process, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	cmd.SysProcAttr.Setpgid = true
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Process{Name: name, LogPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	return p, nil
}

// Pid is the process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Exited returns a channel closed when the process has exited.
func (p *Process) Exited() <-chan struct{} { return p.done }

// WaitReady calls ready until it returns nil, the process exits, or timeout
// passes. Errors carry the tail of the process log, which is what one needs
// to see when a server does not come up.
func (p *Process) WaitReady(timeout time.Duration, ready func(context.Context) error) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		last = ready(ctx)
		cancel()
		if last == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited before it was ready (%v)\n%s", p.Name, p.err, p.LogTail(30))
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s not ready after %s: %v\n%s", p.Name, timeout, last, p.LogTail(30))
}

// Stop asks the process to stop with sig and kills it if it has not exited
// within grace.
func (p *Process) Stop(sig syscall.Signal, grace time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(grace):
		// Kill the whole process group: servers such as postgres fork.
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}

// LogTail returns the last n lines of the process log.
func (p *Process) LogTail(n int) string {
	data, err := os.ReadFile(p.LogPath)
	if err != nil {
		return fmt.Sprintf("(log %s unreadable: %v)", p.LogPath, err)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "--- " + p.LogPath + " (tail) ---\n" + strings.Join(lines, "\n")
}
