package stack

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/testenv/netbed"
)

// Component is one of the platform's binaries run as its own process. Its
// addresses stay the same across Stop and Start, so a restart looks to its
// peers like the same server coming back. Safe for concurrent use.
type Component struct {
	Name    string
	LogPath string

	bin   string
	args  []string
	env   map[string]string
	host  *netbed.Host // nil: this process's namespace
	ready func(ctx context.Context) error

	mu   sync.Mutex
	proc *testenv.Process
}

// Start starts the process and waits until it is ready.
func (c *Component) Start() error { return c.start(true) }

// Spawn starts the process without waiting for it to be ready (to watch a
// component that is expected never to become ready).
func (c *Component) Spawn() error { return c.start(false) }

func (c *Component) start(wait bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc != nil {
		select {
		case <-c.proc.Exited():
		default:
			return fmt.Errorf("%s is already running", c.Name)
		}
	}
	cmd := exec.Command(c.bin, c.args...)
	if c.host != nil {
		// ip netns exec executes the binary in place: the process is
		// still the component's own, as a kill -9 needs.
		cmd = c.host.Command(context.Background(), c.bin, c.args...)
	}
	cmd.Env = c.environ()
	p, err := testenv.StartCommand(c.Name, cmd, c.LogPath)
	if err != nil {
		return err
	}
	c.proc = p
	if c.ready == nil || !wait {
		return nil
	}
	if err := p.WaitReady(60*time.Second, c.ready); err != nil {
		p.Stop(syscall.SIGKILL, time.Second)
		return err
	}
	return nil
}

// environ is a minimal environment: PATH and HOME from ours, then the
// component's own variables. Nothing else leaks in (a developer's KUBECONFIG
// or PIPEOPS_TOKEN must not change what the stack does).
func (c *Component) environ() []string {
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	keys := make([]string, 0, len(c.env))
	for k := range c.env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		env = append(env, k+"="+c.env[k])
	}
	return env
}

// SetEnv changes a variable for the next Start.
func (c *Component) SetEnv(key, value string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.env[key] = value
}

// Stop stops the process gracefully (SIGTERM, then SIGKILL after grace).
func (c *Component) Stop(grace time.Duration) {
	c.mu.Lock()
	p := c.proc
	c.mu.Unlock()
	if p != nil {
		p.Stop(syscall.SIGTERM, grace)
	}
}

// Kill stops the process at once, as a crash would.
func (c *Component) Kill() { c.Stop(0) }

// Restart stops the process gracefully and starts it again.
func (c *Component) Restart(grace time.Duration) error {
	c.Stop(grace)
	return c.Start()
}

// Pid is the running process's id, or 0.
func (c *Component) Pid() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc == nil {
		return 0
	}
	return c.proc.Pid()
}

// LogTail returns the last n lines of the component's log.
func (c *Component) LogTail(n int) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc == nil {
		return "(not started)"
	}
	return c.proc.LogTail(n)
}

// httpReady is a readiness probe: GET url answers 200.
func httpReady(url string) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s", url, resp.Status)
		}
		return nil
	}
}

// Build compiles the three binaries into dir with `go build`, from the
// module at root, with the flags `make build` uses (so each shares the
// other's build cache): seconds when the cache is warm.
func Build(ctx context.Context, root, dir string) error {
	for _, b := range []struct{ name, pkg string }{
		{"pipeops-controlplane", "./controlplane/cmd/pipeops-controlplane"},
		{"pipeops-gateway", "./gateway/cmd/pipeops-gateway"},
		{"pipeops-agent", "./agent/cmd/pipeops-agent"},
	} {
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", filepath.Join(dir, b.name), b.pkg)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %w\n%s", b.pkg, err, out)
		}
	}
	return nil
}
