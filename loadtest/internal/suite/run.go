// Package suite is the load test suite: it starts the whole platform on
// loopback (shared/stack), runs the scenarios against it, each next to a
// direct baseline measured in the same run, and returns the report.
package suite

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/pipeops/tunnel/loadtest/internal/procstat"
	"github.com/pipeops/tunnel/loadtest/internal/report"
	"github.com/pipeops/tunnel/shared/stack"
)

// Options configure Run.
type Options struct {
	Profile Profile
	// Scenarios to run; empty means all.
	Scenarios []string
	// ModuleRoot is the repository, for building the binaries and naming
	// the commit.
	ModuleRoot string
	// BinDir holds already built binaries; empty means build them into
	// WorkDir/bin.
	BinDir string
	// WorkDir receives the stack's logs and certificates (required).
	WorkDir string
	// Worker is the command (and arguments) that runs a load generator
	// process: load.Serve on its stdin and stdout (required).
	Worker []string
	// Relay is the command (and arguments) that, given one more argument
	// relay.Spec(LISTEN, TARGET), runs a relay process:
	// relay.RunProcess (required: the relay path's two hops).
	Relay []string
	// PprofDir, when set, receives CPU and heap profiles of the gateway
	// and the agent (see pprof.go).
	PprofDir string
	// Progress receives a line per step.
	Progress func(format string, args ...any)
}

// goroutineSlack is how many more goroutines than at the start the load
// generator may have once everything is closed (the runtime's and the
// libraries' own come and go).
const goroutineSlack = 3

// Validate checks the scenario names.
func (o Options) Validate() error {
	for _, n := range o.Scenarios {
		if !slices.Contains(Names, n) {
			return fmt.Errorf("unknown scenario %q (one of %s)", n, strings.Join(Names, ", "))
		}
	}
	if o.WorkDir == "" || len(o.Worker) == 0 || len(o.Relay) == 0 {
		return errors.New("suite: Options.WorkDir, Options.Worker and Options.Relay are required")
	}
	return nil
}

// Run runs the selected scenarios and returns the report. The error is for
// a run that could not be carried out (the stack did not start, the run was
// interrupted); failed checks are in the report.
func Run(ctx context.Context, opts Options) (*report.Report, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	progress := opts.Progress
	if progress == nil {
		progress = func(string, ...any) {}
	}
	started := time.Now()
	baseGoroutines := runtime.NumGoroutine()
	r := &report.Report{Machine: machine(), Commit: commit(ctx, opts.ModuleRoot), Profile: opts.Profile.Name, StartedAt: started.UTC()}
	r.Machine.LoadAverage.Start = loadAverage()
	defer func() {
		r.Machine.LoadAverage.End = loadAverage()
		r.Seconds = round1(time.Since(started).Seconds())
		r.Finish()
	}()

	if opts.PprofDir != "" {
		if err := os.MkdirAll(opts.PprofDir, 0o755); err != nil {
			return nil, err
		}
	}
	if opts.BinDir == "" {
		opts.BinDir = filepath.Join(opts.WorkDir, "bin")
		t0 := time.Now()
		progress("building the binaries into %s", opts.BinDir)
		if err := stack.Build(ctx, opts.ModuleRoot, opts.BinDir); err != nil {
			r.Failures = append(r.Failures, err.Error())
			return r, err
		}
		progress("built in %s", time.Since(t0).Round(time.Millisecond))
	}
	r.Machine.SyscallNs = float64(procstat.SyscallCost(200_000).Nanoseconds())
	env, err := setup(ctx, Options{Profile: opts.Profile, BinDir: opts.BinDir, WorkDir: filepath.Join(opts.WorkDir, "stack"), Worker: opts.Worker, Relay: opts.Relay, PprofDir: opts.PprofDir}, progress)
	if err != nil {
		r.Failures = append(r.Failures, err.Error())
		return r, err
	}

	if rtt, err := env.gen.RoundTrip(ctx, 500); err == nil {
		r.Machine.ProcessRoundTripUs = round1(float64(rtt.Nanoseconds()) / 1e3)
	}
	progress("machine      %d CPUs, a system call costs %.0f ns, a round trip to another process %.0f us",
		r.Machine.CPUs, r.Machine.SyscallNs, r.Machine.ProcessRoundTripUs)

	selected := opts.Scenarios
	if len(selected) == 0 {
		selected = Names
	}
	var todo []string
	for _, n := range runOrder {
		if slices.Contains(selected, n) {
			todo = append(todo, n)
		}
	}
	rules := Rules(opts.Profile)
	var runErr error
	for i, name := range todo {
		s := &report.Scenario{Name: name}
		r.Scenarios = append(r.Scenarios, s)
		progress("scenario %s (%d/%d)", name, i+1, len(todo))
		t0 := time.Now()
		err := env.run(ctx, s)
		s.Seconds = round1(time.Since(t0).Seconds())
		if !slices.ContainsFunc(todo[i+1:], func(n string) bool { return n == Agents || n == Reconnect }) {
			if ferr := env.closeFleet(ctx); ferr != nil {
				s.Fail("%v", ferr)
			}
		}
		if err != nil {
			s.Fail("aborted: %v", err)
		}
		s.Finish(rules)
		progress("scenario %s done in %.1f s: %s", name, s.Seconds, verdict(s))
		if ctx.Err() != nil {
			runErr = fmt.Errorf("interrupted during %s: %w", name, ctx.Err())
			r.Failures = append(r.Failures, runErr.Error())
			break
		}
	}
	env.Close()
	slices.SortFunc(r.Scenarios, func(a, b *report.Scenario) int {
		return slices.Index(Names, a.Name) - slices.Index(Names, b.Name)
	})

	// Every client, agent and server of this process is closed: its
	// goroutines must be gone too.
	if n, ok := waitGoroutines(baseGoroutines+goroutineSlack, 10*time.Second); !ok {
		dump := filepath.Join(opts.WorkDir, "goroutines.txt")
		if f, err := os.Create(dump); err == nil {
			_ = pprof.Lookup("goroutine").WriteTo(f, 1)
			f.Close()
		}
		r.Failures = append(r.Failures, fmt.Sprintf("goroutine leak in the load generator: %d goroutines after closing everything, %d at the start (stacks in %s)", n, baseGoroutines, dump))
	}
	return r, runErr
}

func verdict(s *report.Scenario) string {
	if s.Passed {
		return "ok"
	}
	return "FAILED: " + strings.Join(s.Failures, "; ")
}

// run runs one scenario.
func (e *Env) run(ctx context.Context, s *report.Scenario) error {
	fn := map[string]func(context.Context, *report.Scenario) error{
		BulkSingle: e.bulkSingle, BulkParallel: e.bulkParallel, SmallClosed: e.smallClosed, Unloaded: e.unloaded,
		SmallOpen: e.smallOpen, Streams: e.streams, OpenRate: e.openRate, Agents: e.agents, Reconnect: e.reconnect,
		WAN: e.wan, Scale: e.scale,
	}[s.Name]
	before, okBefore := e.machineSample()
	err := fn(ctx, s)
	e.dirty = true
	if after, ok := e.machineSample(); ok && okBefore && slices.Equal(after.pids, before.pids) {
		ours := after.ours - before.ours
		other := after.busy - before.busy - ours
		wall := after.at.Sub(before.at) * time.Duration(runtime.NumCPU())
		s.Detail("other_cpu_percent", max(round1(100*other.Seconds()/wall.Seconds()), 0)) // tick rounding can dip below 0
		s.Detail("stack_cpu_percent", round1(100*ours.Seconds()/wall.Seconds()))
	}
	return err
}

// sample is the machine's busy CPU time and that of the processes the
// suite drives (gateway, agent, load generator, itself, the relays).
type sample struct {
	at         time.Time
	busy, ours time.Duration
	pids       []int
}

// machineSample reads a sample; the difference of two tells how much of
// the machine something else used meanwhile (a shared machine's neighbours,
// and the stack's database and API server), a measure of how disturbed the
// figures are.
func (e *Env) machineSample() (sample, bool) {
	smp := sample{at: time.Now(), pids: e.pids()}
	var err error
	if smp.busy, err = procstat.SystemBusy(); err != nil {
		return smp, false
	}
	for _, pid := range smp.pids {
		v, err := procstat.CPU(pid)
		if err != nil {
			return smp, false
		}
		smp.ours += v
	}
	return smp, true
}

func waitGoroutines(limit int, timeout time.Duration) (int, bool) {
	deadline := time.Now().Add(timeout)
	for {
		n := runtime.NumGoroutine()
		if n <= limit {
			return n, true
		}
		if time.Now().After(deadline) {
			return n, false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// machine describes this machine.
func machine() report.Machine {
	m := report.Machine{OS: runtime.GOOS, Arch: runtime.GOARCH, CPUs: runtime.NumCPU(), Go: runtime.Version()}
	m.Hostname, _ = os.Hostname()
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		if _, err := fmt.Sscanf(string(b), "MemTotal: %d kB", &kb); err == nil {
			m.MemoryMiB = kb >> 10
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	var lim syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) == nil {
		m.OpenFiles = lim.Cur
	}
	return m
}

// loadAverage reads /proc/loadavg (zeros when it cannot).
func loadAverage() [3]float64 {
	var l [3]float64
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		_, _ = fmt.Sscanf(string(b), "%f %f %f", &l[0], &l[1], &l[2])
	}
	return l
}

// commit names the checked-out commit, with "-dirty" when tracked files
// have changed.
func commit(ctx context.Context, root string) string {
	out, err := exec.CommandContext(ctx, "git", "-C", root, "rev-parse", "--short=12", "HEAD").Output()
	if err != nil {
		return "unknown"
	}
	c := strings.TrimSpace(string(out))
	if st, err := exec.CommandContext(ctx, "git", "-C", root, "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(strings.TrimSpace(string(st))) > 0 {
		c += "-dirty"
	}
	return c
}
