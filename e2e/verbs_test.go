package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pipeops/tunnel/shared/stack"
	"github.com/pipeops/tunnel/shared/testenv/kubeletsim"
	"github.com/pipeops/tunnel/shared/testenv/kubetest"
)

// TestKubectlVerbs runs kubectl's streaming and identity verbs through the
// gateway, as the person the user kubeconfig names, and the same verbs
// directly against the API server with its admin kubeconfig, in the same
// run: exec (stdin, exit code, WebSocket and SPDY), attach, logs -f,
// port-forward carrying 100 MiB checksummed, cp both ways, auth whoami and
// can-i, apply --server-side and proxy. Pods run on the kubelet stand-in.
// It logs the table of results and the added latency of `get ns`.
func TestKubectlVerbs(t *testing.T) {
	t.Parallel()
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Fatalf("kubectl is required (make testenv builds it into .testenv/bin): %v", err)
	}
	e := newEnv(t, stack.Options{}, stack.ClusterOptions{Name: "verbs", KubeAccess: "write"})
	k := kubeletsim.Start(t, e.c.Kube.Config)
	pod := k.Pod(t, "default", "box")
	pod.ForwardPort(8080, echoListener(t))
	direct := filepath.Join(t.TempDir(), "admin.kubeconfig")
	if err := kubetest.WriteKubeconfig(direct, e.c.Kube.Config); err != nil {
		t.Fatal(err)
	}
	carol := filepath.Join(t.TempDir(), "carol.kubeconfig")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if kc, err := e.s.CLI(ctx, "kubeconfig", e.c.Name, "--user", "carol"); err != nil {
		t.Fatal(err)
	} else if err := os.WriteFile(carol, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	ways := []struct{ name, kubeconfig, user string }{{"gateway", e.c.Kubeconfig, stack.KubeUser}, {"direct", direct, ""}}
	spdy := []string{"KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false", "KUBECTL_PORT_FORWARD_WEBSOCKETS=false"}

	type verb struct {
		name string
		run  func(ctx context.Context, kc kubectlRunner, user string) error
	}
	verbs := []verb{
		{"exec -i (WebSocket)", func(ctx context.Context, kc kubectlRunner, _ string) error {
			return wantOutput(kc.run(ctx, nil, strings.Repeat("echo me\n", 2000), "exec", "-i", "box", "--", "cat"))(strings.Repeat("echo me\n", 2000))
		}},
		{"exec -i (SPDY)", func(ctx context.Context, kc kubectlRunner, _ string) error {
			return wantOutput(kc.run(ctx, spdy, "over spdy\n", "exec", "-i", "box", "--", "cat"))("over spdy\n")
		}},
		{"exec -it (WebSocket)", func(ctx context.Context, kc kubectlRunner, _ string) error {
			return execTTY(ctx, kc, nil)
		}},
		{"exec -it (SPDY)", func(ctx context.Context, kc kubectlRunner, _ string) error {
			return execTTY(ctx, kc, spdy)
		}},
		{"exec exit code", func(ctx context.Context, kc kubectlRunner, _ string) error {
			out, err := kc.run(ctx, nil, "", "exec", "box", "--", "sh", "-c", "exit 3")
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 3 {
				return fmt.Errorf("exit %v, want 3: %s", err, out)
			}
			return nil
		}},
		{"attach -i", func(ctx context.Context, kc kubectlRunner, _ string) error {
			return wantOutput(kc.run(ctx, nil, "ping\npong\n", "attach", "-i", "box"))("ping\npong\n")
		}},
		{"logs -f", func(ctx context.Context, kc kubectlRunner, _ string) error {
			return followLogs(ctx, kc, pod)
		}},
		{"port-forward 100 MiB", func(ctx context.Context, kc kubectlRunner, _ string) error {
			return portForward(ctx, kc, 100<<20)
		}},
		{"cp", func(ctx context.Context, kc kubectlRunner, _ string) error {
			data := bytes.Repeat([]byte("copied line\n"), 40000)
			local := filepath.Join(t.TempDir(), "up.txt")
			if err := os.WriteFile(local, data, 0o644); err != nil {
				return err
			}
			if out, err := kc.run(ctx, nil, "", "cp", local, "default/box:/tmp/up.txt"); err != nil {
				return fmt.Errorf("cp to the pod: %v: %s", err, out)
			}
			back := filepath.Join(t.TempDir(), "back.txt")
			if out, err := kc.run(ctx, nil, "", "cp", "default/box:/tmp/up.txt", back); err != nil {
				return fmt.Errorf("cp from the pod: %v: %s", err, out)
			}
			if got, err := os.ReadFile(back); err != nil || !bytes.Equal(got, data) {
				return fmt.Errorf("round trip: %d bytes (%v), want %d", len(got), err, len(data))
			}
			return nil
		}},
		{"auth whoami", func(ctx context.Context, kc kubectlRunner, user string) error {
			out, err := kc.run(ctx, nil, "", "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")
			if err != nil || (user != "" && out != user) {
				return fmt.Errorf("%q (%v), want %q", out, err, user)
			}
			return nil
		}},
		{"auth can-i (allowed)", func(ctx context.Context, kc kubectlRunner, _ string) error {
			return wantOutput(kc.run(ctx, nil, "", "auth", "can-i", "create", "pods/exec"))("yes\n")
		}},
		{"auth can-i (denied)", func(ctx context.Context, kc kubectlRunner, user string) error {
			// carol is bound to nothing: through the gateway with her own
			// token, directly as the admin impersonating her.
			args := []string{"auth", "can-i", "list", "pods", "--as", "carol"}
			if user != "" {
				kc.kubeconfig, args = carol, args[:4]
			}
			// "no" exits 1.
			out, err := kc.run(ctx, nil, "", args...)
			var ee *exec.ExitError
			if out != "no\n" || !errors.As(err, &ee) || ee.ExitCode() != 1 {
				return fmt.Errorf("%q (%v), want no", out, err)
			}
			return nil
		}},
		{"apply --server-side", func(ctx context.Context, kc kubectlRunner, user string) error {
			name := "ssa-" + map[bool]string{true: "gw", false: "direct"}[user != ""]
			manifest := "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: " + name + "\n  namespace: default\ndata:\n  k: v\n"
			out, err := kc.run(ctx, nil, manifest, "apply", "--server-side", "-f", "-")
			if err != nil || !strings.Contains(out, "serverside-applied") {
				return fmt.Errorf("%v: %s", err, out)
			}
			return nil
		}},
		{"proxy", func(ctx context.Context, kc kubectlRunner, _ string) error {
			return kubectlProxy(ctx, kc)
		}},
	}

	results := map[string]map[string]error{}
	for _, w := range ways {
		kc := kubectlRunner{bin: kubectl, kubeconfig: w.kubeconfig}
		for _, v := range verbs {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			err := v.run(ctx, kc, w.user)
			cancel()
			if results[v.name] == nil {
				results[v.name] = map[string]error{}
			}
			results[v.name][w.name] = err
			if err != nil {
				t.Errorf("%s %s: %v", w.name, v.name, err)
			}
		}
	}

	// The added latency of a small request: `get ns`, median of 20 each.
	median := map[string]time.Duration{}
	for _, w := range ways {
		kc := kubectlRunner{bin: kubectl, kubeconfig: w.kubeconfig}
		var took []time.Duration
		for range 20 {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			t0 := time.Now()
			out, err := kc.run(ctx, nil, "", "get", "ns", "default", "-o", "name")
			took = append(took, time.Since(t0))
			cancel()
			if err != nil {
				t.Fatalf("%s get ns: %v %s", w.name, err, out)
			}
		}
		slices.Sort(took)
		median[w.name] = took[len(took)/2]
	}
	var table strings.Builder
	fmt.Fprintf(&table, "\n| verb | through the gateway | direct |\n|---|---|---|\n")
	for _, v := range verbs {
		fmt.Fprintf(&table, "| %s | %s | %s |\n", v.name, passFail(results[v.name]["gateway"]), passFail(results[v.name]["direct"]))
	}
	fmt.Fprintf(&table, "\nkubectl get ns, median of 20: gateway %s, direct %s, added %s\n",
		median["gateway"].Round(time.Millisecond), median["direct"].Round(time.Millisecond), (median["gateway"] - median["direct"]).Round(time.Millisecond))
	t.Log(table.String())
}

func passFail(err error) string {
	if err != nil {
		return "FAIL"
	}
	return "pass"
}

// kubectlRunner runs kubectl with one kubeconfig, in namespace default.
type kubectlRunner struct{ bin, kubeconfig string }

// run runs kubectl with extra environment and stdin, and returns its
// standard output (and standard error, on failure).
func (k kubectlRunner) run(ctx context.Context, env []string, stdin string, args ...string) (string, error) {
	cmd := k.command(ctx, env, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out) + stderr.String(), err
	}
	return string(out), nil
}

// stream runs kubectl with its standard output and error to w until it
// ends or ctx does.
func (k kubectlRunner) stream(ctx context.Context, w io.Writer, args ...string) error {
	cmd := k.command(ctx, nil, args...)
	cmd.Stdout, cmd.Stderr = w, w
	return cmd.Run()
}

func (k kubectlRunner) command(ctx context.Context, env []string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, k.bin, append([]string{"--kubeconfig", k.kubeconfig, "-n", "default"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

func wantOutput(out string, err error) func(want string) error {
	return func(want string) error {
		if err != nil || out != want {
			return fmt.Errorf("output %d bytes %.200q (%v), want %d bytes", len(out), out, err, len(want))
		}
		return nil
	}
}

// execTTY runs `exec -it box -- sh` on a real pseudo-terminal: the
// terminal's size reaches the container's shell, and `exit 7` comes back
// as kubectl's exit code.
func execTTY(ctx context.Context, kc kubectlRunner, env []string) error {
	master, slave, err := kubeletsim.OpenPTY()
	if err != nil {
		return err
	}
	defer master.Close()
	if err := kubeletsim.SetWinsize(master, 40, 132); err != nil {
		slave.Close()
		return err
	}
	cmd := kc.command(ctx, env, "exec", "-it", "box", "--", "sh")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	err = cmd.Start()
	slave.Close()
	if err != nil {
		return err
	}
	screen := &lockedBuffer{}
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		_, _ = io.Copy(screen, master) // ends with EIO once kubectl has exited
	}()
	defer func() { master.Close(); <-copied }()
	if _, err := master.WriteString("stty size\r"); err != nil {
		return err
	}
	for !strings.Contains(screen.String(), "40 132") {
		select {
		case <-ctx.Done():
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			return fmt.Errorf("the terminal size did not reach the shell; screen %q", screen.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	if _, err := master.WriteString("exit 7\r"); err != nil {
		return err
	}
	var ee *exec.ExitError
	if err := cmd.Wait(); !errors.As(err, &ee) || ee.ExitCode() != 7 {
		return fmt.Errorf("exit %v, want 7; screen %q", err, screen.String())
	}
	return nil
}

// followLogs starts `logs -f`, writes lines while it runs and checks each
// arrives; the log stays open (the next follower sees it all again).
func followLogs(ctx context.Context, kc kubectlRunner, pod *kubeletsim.Pod) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	lines := make(chan string, 64)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	r, w := io.Pipe()
	wg.Go(func() {
		defer close(lines)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			lines <- sc.Text()
		}
	})
	wg.Go(func() {
		_ = kc.stream(ctx, w, "logs", "-f", "box")
		w.Close()
	})
	for i := range 5 {
		want := fmt.Sprintf("line %d at %s", i, time.Now().Format(time.RFC3339Nano))
		if err := pod.Log(kubeletsim.DefaultContainer).WriteLine(want); err != nil {
			return err
		}
		for got := ""; got != want; {
			select {
			case l, ok := <-lines:
				if !ok {
					return fmt.Errorf("logs -f ended before %q", want)
				}
				got = l
			case <-ctx.Done():
				return fmt.Errorf("%q did not arrive: %w", want, ctx.Err())
			}
		}
	}
	return nil
}

// portForward runs `port-forward` to the pod's port 8080 (an echo
// listener) and sends n random bytes through it, checking the echo.
func portForward(ctx context.Context, kc kubectlRunner, n int) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r, w := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = kc.stream(ctx, w, "port-forward", "--address", "127.0.0.1", "pod/box", ":8080")
		w.Close()
	}()
	defer func() { cancel(); <-done }()
	sc := bufio.NewScanner(r)
	forwarding := regexp.MustCompile(`Forwarding from 127\.0\.0\.1:(\d+) -> 8080`)
	var port string
	for port == "" && sc.Scan() {
		if m := forwarding.FindStringSubmatch(sc.Text()); m != nil {
			port = m[1]
		}
	}
	go func() { _, _ = io.Copy(io.Discard, r) }()
	if port == "" {
		return errors.New("port-forward did not start")
	}
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", "127.0.0.1:"+port)
	if err != nil {
		return err
	}
	defer c.Close()
	sent, got := sha256.New(), sha256.New()
	recv := make(chan error, 1)
	go func() {
		_, err := io.CopyN(got, c, int64(n))
		recv <- err
	}()
	if _, err := io.CopyN(io.MultiWriter(c, sent), rand.Reader, int64(n)); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	select {
	case err := <-recv:
		if err != nil {
			return fmt.Errorf("receive: %w", err)
		}
	case <-ctx.Done():
		return ctx.Err()
	}
	if !bytes.Equal(sent.Sum(nil), got.Sum(nil)) {
		return errors.New("the echo differs from what was sent")
	}
	return nil
}

// kubectlProxy runs `kubectl proxy` on a free loopback port and fetches a
// namespace through it.
func kubectlProxy(ctx context.Context, kc kubectlRunner) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r, w := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = kc.stream(ctx, w, "proxy", "--address", "127.0.0.1", "--port", "0")
		w.Close()
	}()
	defer func() { cancel(); <-done }()
	sc := bufio.NewScanner(r)
	serving := regexp.MustCompile(`Starting to serve on 127\.0\.0\.1:(\d+)`)
	var port string
	for port == "" && sc.Scan() {
		if m := serving.FindStringSubmatch(sc.Text()); m != nil {
			port = m[1]
		}
	}
	go func() { _, _ = io.Copy(io.Discard, r) }()
	if port == "" {
		return errors.New("kubectl proxy did not start")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:"+port+"/api/v1/namespaces/default", nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.Contains(string(b), `"name":"default"`) {
		return fmt.Errorf("through kubectl proxy: %s %s", resp.Status, b)
	}
	return nil
}

// echoListener accepts connections on 127.0.0.1 and echoes what it reads,
// until the test ends.
func echoListener(t *testing.T) string {
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
