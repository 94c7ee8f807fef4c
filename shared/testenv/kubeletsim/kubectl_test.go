package kubeletsim_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/testenv/kubeletsim"
	"github.com/pipeops/tunnel/shared/testenv/kubetest"
)

// TestMain stops the shared API server and then checks that no goroutine
// outlived the tests: every Kubelet, stream and forwarded connection must
// be gone once its test ended. The HTTP clients' idle connections to the
// API server are not ours to close.
func TestMain(m *testing.M) {
	testenv.MainNoLeaks(m, []goleak.Option{
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("k8s.io/klog/v2.(*flushDaemon).run.func1"),
	}, kubetest.Stop)
}

// transports are the two ways kubectl carries exec and attach (and
// port-forward) streams: WebSocket, the default of recent kubectl, and the
// older SPDY. The API server talks SPDY to the kubelet either way, after
// translating or tunnelling the WebSocket one.
var transports = []struct {
	name string
	env  []string
}{
	{"websocket", []string{"KUBECTL_REMOTE_COMMAND_WEBSOCKETS=true", "KUBECTL_PORT_FORWARD_WEBSOCKETS=true"}},
	{"spdy", []string{"KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false", "KUBECTL_PORT_FORWARD_WEBSOCKETS=false"}},
}

type fixture struct {
	kubectl    string
	kubeconfig string
	namespace  string
	kubelet    *kubeletsim.Kubelet
	pod        *kubeletsim.Pod
}

// setup starts (or shares) the API server, a Kubelet of the test's own and
// a pod "sim" with one container, DefaultContainer.
func setup(t *testing.T) *fixture {
	t.Helper()
	env := kubetest.Start(t)
	kubectl := findKubectl(t)
	k := kubeletsim.Start(t, env.Config)
	ns := env.Namespace(t)
	return &fixture{kubectl: kubectl, kubeconfig: env.Kubeconfig, namespace: ns, kubelet: k, pod: k.Pod(t, ns, "sim")}
}

// findKubectl prefers the kubectl `make testenv` builds, then PATH; a
// missing kubectl fails in CI like a missing API server.
func findKubectl(t *testing.T) string {
	t.Helper()
	if dir := testenv.ToolsDir(); dir != "" {
		if p := filepath.Join(dir, "kubectl"); fileExists(p) {
			return p
		}
	}
	p, err := exec.LookPath("kubectl")
	if err != nil {
		testenv.Require(t, "kubectl", fmt.Errorf("%w: %v", testenv.ErrUnavailable, err))
	}
	return p
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// command is kubectl with the admin kubeconfig and the test's namespace.
func (f *fixture) command(ctx context.Context, env []string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, f.kubectl, append([]string{"--kubeconfig", f.kubeconfig, "-n", f.namespace}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// running is a started command whose end the test waits for; cleanup
// kills it if the test did not.
type running struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

func start(t *testing.T, cmd *exec.Cmd) *running {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %v: %v", cmd.Args, err)
	}
	r := &running{cmd: cmd, done: make(chan struct{})}
	go func() {
		r.err = cmd.Wait()
		close(r.done)
	}()
	t.Cleanup(func() {
		select {
		case <-r.done:
		default:
			_ = cmd.Process.Kill()
			<-r.done
		}
	})
	return r
}

func (r *running) wait(ctx context.Context) error {
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		return fmt.Errorf("%v still running: %w", r.cmd.Args, ctx.Err())
	}
}

// output collects what a command writes and lets a test wait for a piece
// of it.
type output struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{}
}

func newOutput() *output { return &output{changed: make(chan struct{})} }

func (o *output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.buf.Write(p)
	close(o.changed)
	o.changed = make(chan struct{})
	return len(p), nil
}

func (o *output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

// waitFor waits until the output matches re and returns the match.
func (o *output) waitFor(ctx context.Context, re *regexp.Regexp) ([]string, error) {
	for {
		o.mu.Lock()
		m := re.FindStringSubmatch(o.buf.String())
		changed := o.changed
		o.mu.Unlock()
		if m != nil {
			return m, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for %q in output %q: %w", re, o.String(), ctx.Err())
		}
	}
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestExecStdin: kubectl exec -i ... cat returns stdin on stdout.
func TestExecStdin(t *testing.T) {
	f := setup(t)
	input := "hello\nkubeletsim\n" + strings.Repeat("x", 100<<10) + "\n"
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			ctx := testContext(t)
			cmd := f.command(ctx, tr.env, "exec", "-i", "sim", "--", "cat")
			cmd.Stdin = strings.NewReader(input)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("kubectl exec -i cat: %v\n%s", err, stderr.String())
			}
			if string(out) != input {
				t.Fatalf("kubectl exec -i cat: got %d bytes, want the %d sent", len(out), len(input))
			}
		})
	}
}

// TestExecExitCode: the command's exit code is kubectl's.
func TestExecExitCode(t *testing.T) {
	f := setup(t)
	cases := []struct {
		name string
		argv []string
		code int
		out  string
	}{
		{"sh -c exit 3", []string{"sh", "-c", "exit 3"}, 3, ""},
		{"false", []string{"false"}, 1, ""},
		{"missing command", []string{"no-such-binary"}, 127, ""},
		{"echo", []string{"echo", "hello", "world"}, 0, "hello world\n"},
		{"script", []string{"sh", "-c", "echo one; echo 'two three'; exit 0"}, 0, "one\ntwo three\n"},
	}
	for _, tr := range transports {
		for _, tc := range cases {
			t.Run(tr.name+"/"+tc.name, func(t *testing.T) {
				ctx := testContext(t)
				cmd := f.command(ctx, tr.env, append([]string{"exec", "sim", "--"}, tc.argv...)...)
				var stdout, stderr bytes.Buffer
				cmd.Stdout, cmd.Stderr = &stdout, &stderr
				err := cmd.Run()
				if got := exitCode(err); got != tc.code {
					t.Fatalf("kubectl exec %v: exit code %d (%v), want %d\n%s", tc.argv, got, err, tc.code, stderr.String())
				}
				if stdout.String() != tc.out {
					t.Fatalf("kubectl exec %v: stdout %q, want %q", tc.argv, stdout.String(), tc.out)
				}
			})
		}
	}
}

// openPTY returns a pseudo-terminal's master and its slave.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, sl, err := kubeletsim.OpenPTY()
	if err != nil {
		t.Fatal(err)
	}
	return m, sl
}

func setWinsize(t *testing.T, f *os.File, rows, cols uint16) {
	t.Helper()
	if err := kubeletsim.SetWinsize(f, rows, cols); err != nil {
		t.Fatalf("set terminal size: %v", err)
	}
}

// TestExecTTY runs kubectl exec -it on a real pseudo-terminal: the
// terminal's size reaches the container, a resize (SIGWINCH to kubectl)
// follows, and the exit code still comes back.
func TestExecTTY(t *testing.T) {
	f := setup(t)
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			ctx := testContext(t)
			master, slave := openPTY(t)
			setWinsize(t, master, 40, 132)
			cmd := f.command(ctx, tr.env, "exec", "-it", "sim", "--", "sh")
			cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
			cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
			proc := start(t, cmd)
			slave.Close()

			screen := newOutput()
			copied := make(chan struct{})
			go func() {
				defer close(copied)
				_, _ = io.Copy(screen, master) // ends with EIO once kubectl has exited
			}()
			t.Cleanup(func() { master.Close(); <-copied })

			type_ := func(s string) {
				if _, err := master.WriteString(s); err != nil {
					t.Fatalf("type %q: %v", s, err)
				}
			}
			type_("stty size\r")
			if _, err := screen.waitFor(ctx, regexp.MustCompile(`40 132`)); err != nil {
				t.Fatal(err)
			}
			if err := f.pod.WaitTerminalSize(ctx, kubeletsim.DefaultContainer, kubeletsim.TerminalSize{Width: 132, Height: 40}); err != nil {
				t.Fatal(err)
			}
			setWinsize(t, master, 50, 100)
			if err := f.pod.WaitTerminalSize(ctx, kubeletsim.DefaultContainer, kubeletsim.TerminalSize{Width: 100, Height: 50}); err != nil {
				t.Fatal(err)
			}
			type_("stty size\r")
			if _, err := screen.waitFor(ctx, regexp.MustCompile(`50 100`)); err != nil {
				t.Fatal(err)
			}
			type_("exit 7\r")
			if err := proc.wait(ctx); exitCode(err) != 7 {
				t.Fatalf("kubectl exec -it: %v, want exit code 7; screen:\n%s", err, screen.String())
			}
		})
	}
}

// TestAttach: kubectl attach -i gets its stdin echoed by the container.
func TestAttach(t *testing.T) {
	f := setup(t)
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			ctx := testContext(t)
			cmd := f.command(ctx, tr.env, "attach", "-i", "sim")
			cmd.Stdin = strings.NewReader("ping\npong\n")
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("kubectl attach -i: %v\n%s", err, stderr.String())
			}
			if string(out) != "ping\npong\n" {
				t.Fatalf("kubectl attach -i: stdout %q, want the input echoed", out)
			}
		})
	}
}

// TestLogs: kubectl logs -f receives lines as the test writes them and
// ends when the log closes; plain logs and --tail serve what was written.
func TestLogs(t *testing.T) {
	f := setup(t)
	ctx := testContext(t)
	log := f.pod.Log(kubeletsim.DefaultContainer)
	if err := log.WriteLine("first"); err != nil {
		t.Fatal(err)
	}
	screen := newOutput()
	cmd := f.command(ctx, nil, "logs", "-f", "sim")
	cmd.Stdout = screen
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	follower := start(t, cmd)
	if _, err := screen.waitFor(ctx, regexp.MustCompile(`^first\n`)); err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{"second", "third"} {
		if err := log.WriteLine(line); err != nil {
			t.Fatal(err)
		}
		if _, err := screen.waitFor(ctx, regexp.MustCompile(`\n`+line+`\n`)); err != nil {
			t.Fatal(err)
		}
	}
	if err := log.Close(); err != nil {
		t.Fatal(err)
	}
	if err := follower.wait(ctx); err != nil {
		t.Fatalf("kubectl logs -f after the log closed: %v\n%s", err, stderr.String())
	}
	if got, want := screen.String(), "first\nsecond\nthird\n"; got != want {
		t.Fatalf("kubectl logs -f: %q, want %q", got, want)
	}

	cases := []struct {
		args []string
		want string
	}{
		{[]string{"logs", "sim"}, "first\nsecond\nthird\n"},
		{[]string{"logs", "sim", "--tail=2"}, "second\nthird\n"},
		{[]string{"logs", "sim", "-c", kubeletsim.DefaultContainer, "--limit-bytes=8"}, "first\nse"},
	}
	for _, tc := range cases {
		out, err := f.command(ctx, nil, tc.args...).CombinedOutput()
		if err != nil || string(out) != tc.want {
			t.Errorf("kubectl %v: %q (%v), want %q", tc.args, out, err, tc.want)
		}
	}
}

// echoServer accepts connections on 127.0.0.1 and sends back what it
// reads; it stops when the test ends.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			})
		}
	})
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

// TestPortForward carries a few MiB through kubectl port-forward to a
// listener of the test's, over two connections, and checks them.
func TestPortForward(t *testing.T) {
	f := setup(t)
	f.pod.ForwardPort(8080, echoServer(t))
	forwarding := regexp.MustCompile(`Forwarding from 127\.0\.0\.1:(\d+) -> 8080`)
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			ctx := testContext(t)
			screen := newOutput()
			cmd := f.command(ctx, tr.env, "port-forward", "--address", "127.0.0.1", "pod/sim", ":8080")
			cmd.Stdout, cmd.Stderr = screen, screen
			pf := start(t, cmd)
			m, err := screen.waitFor(ctx, forwarding)
			if err != nil {
				t.Fatal(err)
			}
			for i := range 2 {
				roundTrip(t, ctx, "127.0.0.1:"+m[1], 3<<20+i)
			}
			_ = cmd.Process.Signal(os.Interrupt)
			if err := pf.wait(ctx); err != nil {
				t.Logf("kubectl port-forward after interrupt: %v", err)
			}
		})
	}
}

// roundTrip sends n random bytes to addr and checks the echo.
func roundTrip(t *testing.T, ctx context.Context, addr string, n int) {
	t.Helper()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if deadline, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(deadline)
	}
	payload := make([]byte, n)
	_, _ = rand.Read(payload)
	written := make(chan error, 1)
	go func() {
		_, err := conn.Write(payload)
		written <- err
	}()
	got := make([]byte, n)
	if _, err := io.ReadFull(conn, got); err != nil {
		t.Fatalf("read the echo of %d bytes: %v", n, err)
	}
	if err := <-written; err != nil {
		t.Fatalf("write %d bytes: %v", n, err)
	}
	if sha256.Sum256(got) != sha256.Sum256(payload) {
		t.Fatalf("the %d bytes came back changed", n)
	}
}

// TestCopy runs kubectl cp both ways, for a file and a directory.
func TestCopy(t *testing.T) {
	f := setup(t)
	ctx := testContext(t)
	dir := t.TempDir()
	remote := func(p string) string { return f.namespace + "/sim:" + p }
	cp := func(src, dst string) {
		t.Helper()
		if out, err := f.command(ctx, nil, "cp", src, dst).CombinedOutput(); err != nil {
			t.Fatalf("kubectl cp %s %s: %v\n%s", src, dst, err, out)
		}
	}

	report := bytes.Repeat([]byte("report line\n"), 50000)
	if err := f.pod.WriteFile(kubeletsim.DefaultContainer, "/data/report.txt", report); err != nil {
		t.Fatal(err)
	}
	if err := f.pod.WriteFile(kubeletsim.DefaultContainer, "/data/sub/nested.txt", []byte("nested\n")); err != nil {
		t.Fatal(err)
	}
	cp(remote("/data/report.txt"), filepath.Join(dir, "report.txt"))
	if got, err := os.ReadFile(filepath.Join(dir, "report.txt")); err != nil || !bytes.Equal(got, report) {
		t.Fatalf("file copied from the pod: %d bytes (%v), want %d", len(got), err, len(report))
	}
	cp(remote("/data"), filepath.Join(dir, "data"))
	if got, err := os.ReadFile(filepath.Join(dir, "data", "sub", "nested.txt")); err != nil || string(got) != "nested\n" {
		t.Fatalf("directory copied from the pod: nested.txt %q (%v)", got, err)
	}

	upload := bytes.Repeat([]byte{0, 1, 2, 3, 254, 255}, 100000)
	local := filepath.Join(dir, "upload.bin")
	if err := os.WriteFile(local, upload, 0o644); err != nil {
		t.Fatal(err)
	}
	cp(local, remote("/tmp/upload.bin"))
	if got, err := f.pod.ReadFile(kubeletsim.DefaultContainer, "/tmp/upload.bin"); err != nil || !bytes.Equal(got, upload) {
		t.Fatalf("file copied to the pod: %d bytes (%v), want %d", len(got), err, len(upload))
	}
	tree := filepath.Join(dir, "tree")
	if err := os.MkdirAll(filepath.Join(tree, "a"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "a", "b.txt"), []byte("b\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cp(tree, remote("/tmp/tree"))
	if got, err := f.pod.ReadFile(kubeletsim.DefaultContainer, "/tmp/tree/a/b.txt"); err != nil || string(got) != "b\n" {
		t.Fatalf("directory copied to the pod: a/b.txt %q (%v)", got, err)
	}
}
