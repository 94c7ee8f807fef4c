package suite

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"time"

	"github.com/pipeops/tunnel/loadtest/internal/load"
	"github.com/pipeops/tunnel/loadtest/internal/procstat"
	"github.com/pipeops/tunnel/loadtest/internal/report"
)

// RSS sampling: wait for the processes to settle, then the median of
// several samples.
const (
	rssSettle   = 2 * time.Second
	rssSamples  = 7
	rssInterval = 250 * time.Millisecond
	// streamsConcurrency is how many WebSocket handshakes are in flight
	// while the streams open.
	streamsConcurrency = 64
	streamsSeries      = "pipeops_gateway_tunnel_streams"
)

func kib(b int64) float64 { return float64(b) / 1024 }

// streams: many idle WebSockets through the gateway to the upstream's echo
// endpoint, each one a visitor connection, a yamux stream and a connection
// from the agent; memory per stream is the RSS growth of the gateway and
// the agent over the number of streams.
func (e *Env) streams(ctx context.Context, s *report.Scenario) error {
	n := e.profile.Streams
	s.Description = fmt.Sprintf("%d idle WebSockets held through one agent; RSS growth of gateway + agent per stream", n)
	s.Unit, s.HigherIsBetter = "KiB/stream", false
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && lim.Cur < uint64(n+4096) {
		// The load generator holds the visitors' ends, this process the
		// upstream's.
		s.Fail("open-file limit %d is too low for %d streams (need about %d)", lim.Cur, n, n+4096)
		return nil
	}
	if err := e.freshen(ctx, true); err != nil {
		return err
	}
	socketsOpen := false
	sockets := func(path string) (*load.Reply, error) {
		base, host := e.target(path)
		rep, err := e.gen.Do(ctx, load.Job{Op: load.OpSocketsOpen, URL: "ws" + strings.TrimPrefix(base, "http") + "/ws", Host: host,
			Sockets: n, Conns: streamsConcurrency})
		if err != nil {
			return nil, err
		}
		socketsOpen = true
		s.AddErrors(rep.Result.Errors, rep.Result.ErrorSamples...)
		return rep, nil
	}
	closeSockets := func() error {
		socketsOpen = false
		_, err := e.gen.Do(ctx, load.Job{Op: load.OpSocketsClose})
		return err
	}
	defer func() {
		if socketsOpen {
			_ = closeSockets()
		}
	}()

	// Direct baseline: the same sockets straight to the upstream.
	rep, err := sockets(report.Direct)
	if err != nil {
		return err
	}
	s.Detail("open_seconds_direct", round3(rep.Result.Elapsed.Seconds()))
	e.progress("  %s direct: %d sockets opened in %s", s.Name, rep.Held, rep.Result.Elapsed.Round(time.Millisecond))
	if err := closeSockets(); err != nil {
		return err
	}

	gwPid, agPid := e.S.Gateway.Pid(), e.C.Agent.Pid()
	gw0, err := procstat.SettledRSS(ctx, gwPid, rssSettle, rssSamples, rssInterval)
	if err != nil {
		return err
	}
	ag0, err := procstat.SettledRSS(ctx, agPid, 0, rssSamples, rssInterval)
	if err != nil {
		return err
	}
	gwGo0 := e.goStats(ctx, e.S.GatewayAdmin+"/metrics")
	agGo0 := e.goStats(ctx, e.C.AgentURL+"/metrics")
	streams0, err := e.gatewayMetric(ctx, streamsSeries)
	if err != nil {
		return err
	}

	e.dirty = true
	rep, err = sockets(report.Tunnel)
	if err != nil {
		return err
	}
	r, held := rep.Result, rep.Held
	s.Detail("open_seconds_tunnel", round3(r.Elapsed.Seconds()))
	s.Detail("open_per_s_tunnel", round1(float64(held)/r.Elapsed.Seconds()))
	e.progress("  %s tunnel: %d sockets opened in %s (handshake p50 %s, p99 %s)", s.Name, held, r.Elapsed.Round(time.Millisecond),
		r.Hist.Percentile(50), r.Hist.Percentile(99))
	open, err := e.gatewayMetric(ctx, streamsSeries)
	if err != nil {
		return err
	}
	s.Detail("gateway_streams_open", open-streams0)

	gw1, err := procstat.SettledRSS(ctx, gwPid, rssSettle, rssSamples, rssInterval)
	if err != nil {
		return err
	}
	ag1, err := procstat.SettledRSS(ctx, agPid, 0, rssSamples, rssInterval)
	if err != nil {
		return err
	}
	gwGo1 := e.goStats(ctx, e.S.GatewayAdmin+"/metrics")
	agGo1 := e.goStats(ctx, e.C.AgentURL+"/metrics")
	e.profileHeap(ctx, s, true)

	// Proof that every stream held is alive end to end.
	echo, err := e.gen.Do(ctx, load.Job{Op: load.OpSocketsEcho, Conns: streamsConcurrency, Timeout: 30 * time.Second})
	if err != nil {
		return err
	}
	s.AddErrors(echo.Result.Errors, echo.Result.ErrorSamples...)
	s.Detail("held", float64(echo.Result.Requests))
	s.Detail("held_fraction", round3(float64(echo.Result.Requests)/float64(n)))

	if held > 0 {
		per := float64(held)
		s.Detail("gateway_kib_per_stream", round3(kib(gw1-gw0)/per))
		s.Detail("agent_kib_per_stream", round3(kib(ag1-ag0)/per))
		s.Detail("go_heap_stack_kib_per_stream", round3(kib(gwGo1.heapStack-gwGo0.heapStack+agGo1.heapStack-agGo0.heapStack)/per))
		s.Detail("gateway_goroutines_per_stream", round3(float64(gwGo1.goroutines-gwGo0.goroutines)/per))
		s.Detail("agent_goroutines_per_stream", round3(float64(agGo1.goroutines-agGo0.goroutines)/per))
		s.Set(report.Tunnel, round3(kib(gw1-gw0+ag1-ag0)/per))
	}
	s.Detail("gateway_rss_mib_before", round1(kib(gw0)/1024))
	s.Detail("gateway_rss_mib_held", round1(kib(gw1)/1024))
	s.Detail("agent_rss_mib_before", round1(kib(ag0)/1024))
	s.Detail("agent_rss_mib_held", round1(kib(ag1)/1024))
	e.progress("  %s gateway %s -> %s, agent %s -> %s with %d streams: %.2f KiB per stream (Go heap+stack %.2f)", s.Name,
		mib(gw0), mib(gw1), mib(ag0), mib(ag1), held, s.Tunnel, s.Details["go_heap_stack_kib_per_stream"])

	// Closing the visitors' sockets must close every stream.
	if err := closeSockets(); err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		v, err := e.gatewayMetric(ctx, streamsSeries)
		if err == nil && v <= streams0 {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			s.Fail("stream leak: %v streams still open in the gateway 30 s after the visitors left (%v before)", v, streams0)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	return ctx.Err()
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
