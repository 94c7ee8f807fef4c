package suite

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pipeops/tunnel/loadtest/internal/fleet"
	"github.com/pipeops/tunnel/loadtest/internal/hdr"
	"github.com/pipeops/tunnel/loadtest/internal/procstat"
	"github.com/pipeops/tunnel/loadtest/internal/report"
)

// The agents and reconnect scenarios share one fleet of simulated agents
// (internal/fleet): created and connected by whichever runs first, closed
// once neither is left to run.

// createIdentities creates n clusters through the admin API, 16 at a time.
func (e *Env) createIdentities(ctx context.Context, n int) ([]fleet.Identity, error) {
	ids := make([]fleet.Identity, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				id, err := e.createCluster(ctx, fmt.Sprintf("sim-%05d", i))
				if err != nil {
					errs <- err
					return
				}
				ids[i] = fleet.Identity{ClusterUUID: id.UUID, Token: id.Token}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return nil, err
	}
	return ids, ctx.Err()
}

// identities returns the simulated agents' clusters, creating them the
// first time (before any baseline is read: the control plane's work is not
// the gateway's).
func (e *Env) identities(ctx context.Context, s *report.Scenario) ([]fleet.Identity, error) {
	if e.ids != nil {
		return e.ids, nil
	}
	n := e.profile.Agents
	t0 := time.Now()
	ids, err := e.createIdentities(ctx, n)
	if err != nil {
		return nil, fmt.Errorf("create %d clusters: %w", n, err)
	}
	s.Detail("create_clusters_seconds", round3(time.Since(t0).Seconds()))
	e.progress("  %s %d clusters created through the admin API in %s", s.Name, n, time.Since(t0).Round(time.Millisecond))
	e.ids = ids
	return ids, nil
}

// startFleet connects the simulated agents, unless they are connected
// already, and waits until all are up.
func (e *Env) startFleet(ctx context.Context, s *report.Scenario) (*fleet.Fleet, error) {
	if e.fleet != nil {
		return e.fleet, nil
	}
	ids, err := e.identities(ctx, s)
	if err != nil {
		return nil, err
	}
	tlsCfg, err := e.gatewayTLS()
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	f, err := fleet.Start(context.Background(), fleet.Config{
		GatewayURL: "wss://" + strings.TrimPrefix(e.S.GatewayHTTPS, "https://") + "/ws",
		TLS:        tlsCfg, Agents: ids, Heartbeat: e.profile.Heartbeat,
	})
	if err != nil {
		return nil, err
	}
	e.fleet = f
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	up, err := f.WaitUp(wctx, 1)
	s.Detail("connect_all_seconds", round3(time.Since(t0).Seconds()))
	e.progress("  %s %d of %d simulated agents connected in %s", s.Name, up, len(ids), time.Since(t0).Round(time.Millisecond))
	if err != nil {
		s.Fail("only %d of %d simulated agents connected: %v", up, len(ids), err)
	}
	return f, ctx.Err()
}

// closeFleet disconnects the simulated agents, if any, and checks that the
// gateway let go of their sessions.
func (e *Env) closeFleet(ctx context.Context) error {
	if e.fleet == nil {
		return nil
	}
	t0 := time.Now()
	e.fleet.Close()
	e.fleet = nil
	deadline := time.Now().Add(30 * time.Second)
	for {
		n, err := e.agentsOnGateway(ctx)
		if err == nil && n <= 1 {
			e.progress("simulated agents disconnected; the gateway is back to %d agent in %s", n, time.Since(t0).Round(time.Millisecond))
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("session leak: the gateway still reports %d agents 30 s after the simulated ones left (%v)", n, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// agents: many simulated agents, connected and heartbeating, on one
// gateway: its RSS growth and CPU per agent.
func (e *Env) agents(ctx context.Context, s *report.Scenario) error {
	p := e.profile
	s.Description = fmt.Sprintf("%d simulated agents (the real tunnel client, heartbeat every %s) on one gateway; gateway RSS growth per agent", p.Agents, p.Heartbeat)
	s.Unit, s.HigherIsBetter = "KiB/agent", false
	if err := e.freshen(ctx, false); err != nil {
		return err
	}
	gwPid := e.S.Gateway.Pid()
	if _, err := e.identities(ctx, s); err != nil {
		return err
	}
	gw0, err := procstat.SettledRSS(ctx, gwPid, rssSettle, rssSamples, rssInterval)
	if err != nil {
		return err
	}
	gwGo0 := e.goStats(ctx, e.S.GatewayAdmin+"/metrics")
	idle, err := cpuOver(ctx, gwPid, p.CPUWindow)
	if err != nil {
		return err
	}

	wait := e.profileGateway(ctx, s, "connect")
	f, err := e.startFleet(ctx, s)
	wait()
	if err != nil {
		return err
	}
	s.Detail("connected", float64(f.Up()))
	s.Detail("connected_fraction", round3(float64(f.Up())/float64(p.Agents)))
	if on, err := e.agentsOnGateway(ctx); err == nil {
		s.Detail("gateway_agents", float64(on))
	}
	// One heartbeat round, so every session has handled control traffic.
	if err := sleepCtx(ctx, p.Heartbeat); err != nil {
		return err
	}
	st := f.Stats()
	if st.Acks < int64(p.Agents) {
		s.Fail("%d heartbeat acks for %d agents after one interval", st.Acks, p.Agents)
	}
	gw1, err := procstat.SettledRSS(ctx, gwPid, rssSettle, rssSamples, rssInterval)
	if err != nil {
		return err
	}
	gwGo1 := e.goStats(ctx, e.S.GatewayAdmin+"/metrics")
	s.Detail("gateway_goroutines_per_agent", round3(float64(gwGo1.goroutines-gwGo0.goroutines)/float64(p.Agents)))
	s.Detail("go_heap_stack_kib_per_agent", round3(kib(gwGo1.heapStack-gwGo0.heapStack)/float64(p.Agents)))
	busy, err := cpuOver(ctx, gwPid, p.CPUWindow)
	if err != nil {
		return err
	}
	e.profileHeap(ctx, s, false)
	st2 := f.Stats()
	s.AddErrors(st2.SendErrors)
	s.Set(report.Tunnel, round3(kib(gw1-gw0)/float64(p.Agents)))
	s.Detail("gateway_rss_mib_before", round1(kib(gw0)/1024))
	s.Detail("gateway_rss_mib_with_agents", round1(kib(gw1)/1024))
	s.Detail("gateway_cpu_percent_idle", round1(idle*100))
	s.Detail("gateway_cpu_percent", round1(busy*100))
	s.Detail("gateway_cpu_us_per_agent_per_s", round3((busy-idle)*1e6/float64(p.Agents)))
	s.Detail("heartbeats_per_s", round1(float64(st2.Heartbeats-st.Heartbeats)/p.CPUWindow.Seconds()))
	e.progress("  %s gateway %s -> %s with %d agents: %.1f KiB per agent; CPU %.1f%% of a core (%.1f%% without them)",
		s.Name, mib(gw0), mib(gw1), f.Up(), s.Tunnel, busy*100, idle*100)
	return nil
}

// cpuOver returns the CPU a process uses over d, as a fraction of one core.
func cpuOver(ctx context.Context, pid int, d time.Duration) (float64, error) {
	c0, err := procstat.CPU(pid)
	if err != nil {
		return 0, err
	}
	t0 := time.Now()
	if err := sleepCtx(ctx, d); err != nil {
		return 0, err
	}
	c1, err := procstat.CPU(pid)
	if err != nil {
		return 0, err
	}
	return (c1 - c0).Seconds() / time.Since(t0).Seconds(), nil
}

// reconnect: the gateway restarts (gracefully, as in a rolling deploy);
// how long until every simulated agent is back, counted from when the new
// gateway is ready.
func (e *Env) reconnect(ctx context.Context, s *report.Scenario) error {
	p := e.profile
	s.Description = fmt.Sprintf("gateway restarted with %d simulated agents connected; time from the new gateway ready to each agent back, p99", p.Agents)
	s.Unit, s.HigherIsBetter = "s", false
	f, err := e.startFleet(ctx, s)
	if err != nil {
		return err
	}
	if _, err := f.WaitUp(ctx, 1); err != nil {
		s.Fail("fleet not all up before the restart: %v", err)
		return nil
	}
	f.Failures() // only the restart's from here on
	t0 := time.Now()
	if err := e.S.Gateway.Restart(10 * time.Second); err != nil {
		return fmt.Errorf("restart the gateway: %w", err)
	}
	ready := time.Now()
	e.dirty = false
	defer e.profileGateway(ctx, s, "reconnect")()
	s.Detail("restart_seconds", round3(ready.Sub(t0).Seconds()))
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	up, werr := f.WaitBack(wctx, t0)
	cancel()
	allBack := time.Since(ready)
	s.Detail("back", float64(up))
	s.Detail("back_fraction", round3(float64(up)/float64(p.Agents)))
	if werr != nil {
		s.Fail("only %d of %d agents back within 60 s of the restart", up, p.Agents)
	}
	failed := 0
	for msg, k := range f.Failures() {
		if !strings.HasPrefix(msg, "tunnel closed") {
			failed += k
		}
		s.Note("%d x %s", k, msg)
	}
	sort.Strings(s.Notes)
	s.Detail("failed_attempts", float64(failed))
	var fromReady, outage hdr.Histogram
	for _, m := range f.Marks() {
		if !m.Up.After(t0) {
			continue
		}
		fromReady.Record(max(m.Up.Sub(ready), 0))
		if !m.Down.IsZero() {
			outage.Record(m.Up.Sub(m.Down))
		}
	}
	sec := func(d time.Duration) float64 { return round3(d.Seconds()) }
	s.Set(report.Tunnel, sec(fromReady.Percentile(99)))
	s.Detail("p50_seconds", sec(fromReady.Percentile(50)))
	s.Detail("max_seconds", sec(fromReady.Max()))
	s.Detail("outage_p50_seconds", sec(outage.Percentile(50)))
	s.Detail("outage_p99_seconds", sec(outage.Percentile(99)))
	s.Detail("all_back_seconds", sec(allBack))
	e.progress("  %s gateway restarted in %s; %d/%d agents back: p50 %s p99 %s max %s after it was ready (outage p99 %s)",
		s.Name, ready.Sub(t0).Round(time.Millisecond), up, p.Agents, fromReady.Percentile(50).Round(time.Millisecond),
		fromReady.Percentile(99).Round(time.Millisecond), fromReady.Max().Round(time.Millisecond), outage.Percentile(99).Round(time.Millisecond))
	// The real agent reconnects too; the next scenario needs it.
	return e.waitServed(ctx, 60*time.Second)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
