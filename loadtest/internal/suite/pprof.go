package suite

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/pipeops/tunnel/loadtest/internal/load"
	"github.com/pipeops/tunnel/loadtest/internal/report"
)

// With Options.PprofDir, the suite keeps profiles of the gateway and the
// agent for `go tool pprof`: a CPU profile of each traffic scenario's
// tunnel path (an extra run after the measured ones, so profiling does not
// disturb the figures), and heap profiles with the streams or agents held.
// The gateway serves pprof on its admin listener, the agent on its status
// listener when AGENT_PPROF is set; a binary without it gets a note.

// profileSeconds is how long a CPU profile runs.
const profileSeconds = 5

// pprofTargets are the components profiled, by name.
func (e *Env) pprofTargets() map[string]string {
	return map[string]string{"gateway": e.S.GatewayAdmin, "agent": e.C.AgentURL}
}

// fetchProfile saves url's answer to path.
func (e *Env) fetchProfile(ctx context.Context, url, path string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	// Not e.client: its timeout is shorter than a CPU profile.
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// profileCPU runs job through the tunnel while the gateway and the agent
// record CPU profiles.
func (e *Env) profileCPU(ctx context.Context, s *report.Scenario, job load.Job) error {
	if e.pprofDir == "" {
		return nil
	}
	job.Warmup = 0
	if job.Op != load.OpParallel {
		job.Duration = profileSeconds * time.Second
		job.MaxRequests = 1 << 40
	}
	run := func() error {
		// Downloads are repeated to fill the profile's time.
		for start := time.Now(); ; {
			if _, err := e.do(ctx, s, job); err != nil || job.Op != load.OpParallel || time.Since(start) > profileSeconds*time.Second-time.Second {
				return err
			}
		}
	}
	var wg sync.WaitGroup
	errs := map[string]error{}
	var mu sync.Mutex
	for name, base := range e.pprofTargets() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			path := filepath.Join(e.pprofDir, fmt.Sprintf("%s.%s.cpu.pprof", s.Name, name))
			err := e.fetchProfile(ctx, fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", base, profileSeconds), path, 2*profileSeconds*time.Second)
			mu.Lock()
			errs[name] = err
			mu.Unlock()
		}()
	}
	time.Sleep(100 * time.Millisecond) // both profiles running before the load starts
	err := run()
	wg.Wait()
	e.noteProfiles(s, "CPU", errs)
	return err
}

// profileGateway starts a CPU profile of the gateway for profileSeconds
// (for what happens meanwhile: agents connecting); wait for it with the
// returned function.
func (e *Env) profileGateway(ctx context.Context, s *report.Scenario, what string) (wait func()) {
	if e.pprofDir == "" {
		return func() {}
	}
	done := make(chan error, 1)
	go func() {
		path := filepath.Join(e.pprofDir, fmt.Sprintf("%s.gateway.%s.cpu.pprof", s.Name, what))
		done <- e.fetchProfile(ctx, fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", e.S.GatewayAdmin, profileSeconds), path, 2*profileSeconds*time.Second)
	}()
	return func() { e.noteProfiles(s, what+" CPU", map[string]error{"gateway": <-done}) }
}

// profileHeap saves heap profiles of the gateway, and of the agent when
// agentToo.
func (e *Env) profileHeap(ctx context.Context, s *report.Scenario, agentToo bool) {
	if e.pprofDir == "" {
		return
	}
	errs := map[string]error{}
	for name, base := range e.pprofTargets() {
		if name == "agent" && !agentToo {
			continue
		}
		path := filepath.Join(e.pprofDir, fmt.Sprintf("%s.%s.heap.pprof", s.Name, name))
		errs[name] = e.fetchProfile(ctx, base+"/debug/pprof/heap", path, 30*time.Second)
	}
	e.noteProfiles(s, "heap", errs)
}

func (e *Env) noteProfiles(s *report.Scenario, kind string, errs map[string]error) {
	for name, err := range errs {
		if err != nil {
			s.Note("no %s profile of the %s: %v", kind, name, err)
		} else {
			e.progress("  %s %s profile of the %s saved in %s", s.Name, kind, name, e.pprofDir)
		}
	}
}
