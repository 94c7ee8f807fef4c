package suite

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/pipeops/tunnel/loadtest/internal/load"
	"github.com/pipeops/tunnel/loadtest/internal/report"
	"github.com/pipeops/tunnel/shared/stack"
)

// scaleHost is the scale scenario's route.
const scaleHost = "scale.load.test"

// scaleGateways is how many gateways the scale scenario runs.
const scaleGateways = 3

// scale measures several gateways sharing one database: small requests
// per second through a load balancer in front of three gateways, against
// the suite's own single gateway in the same run (the baseline, "direct"
// in the report), and what the hop to the gateway that holds the agent's
// tunnel adds to one request (a gateway that does not hold it forwards the
// stream to the one that does). All on one machine: the three gateways,
// the balancer and the forwarding share its cores, so the rate shows what
// the design costs, not what more machines would give.
func (e *Env) scale(ctx context.Context, s *report.Scenario) error {
	p := e.profile
	n, slice := rounds(p.SmallWindow, p.Slice)
	s.Unit, s.HigherIsBetter = "req/s", true
	s.Description = fmt.Sprintf("1 KiB responses, %d keep-alive connections, closed loop: one gateway vs a balancer over %d gateways sharing one database (%s per path in %d interleaved slices); then one request at a time to the gateway holding the tunnel and to one forwarding to it",
		p.SmallConns, scaleGateways, p.SmallWindow, n)
	quiet := map[string]string{"LOG_LEVEL": "warn"}
	ss, err := stack.Start(ctx, stack.Options{Dir: filepath.Join(e.workDir, "scale"), BinDir: e.binDir, Gateways: scaleGateways,
		ControlPlaneEnv: quiet, GatewayEnv: quiet, Progress: progressWriter(func(f string, a ...any) { e.progress("  "+f, a...) })})
	if err != nil {
		return fmt.Errorf("start the scale stack: %w", err)
	}
	defer ss.Close()
	sc, err := ss.AddCluster(ctx, stack.ClusterOptions{Name: "scale", AgentEnv: quiet})
	if err != nil {
		return fmt.Errorf("add the scale cluster: %w", err)
	}
	sc.Ingress.Handle(scaleHost, stack.App("scale"))
	if _, err := sc.CreateIngress(ctx, "scale", "web", scaleHost); err != nil {
		return err
	}
	for _, base := range ss.GatewayHTTPs {
		if err := e.waitServedAt(ctx, base, scaleHost, 30*time.Second); err != nil {
			return err
		}
	}
	holder, forwarder := -1, -1
	for i := range ss.Gateways {
		v, err := ss.GatewayMetricAt(ctx, i, "pipeops_gateway_tunnel_sessions")
		if err != nil {
			return err
		}
		if v > 0 && holder < 0 {
			holder = i
		} else if v == 0 && forwarder < 0 {
			forwarder = i
		}
	}
	if holder < 0 || forwarder < 0 {
		return fmt.Errorf("no gateway holds the agent's tunnel, or every one does (holder %d, forwarder %d)", holder, forwarder)
	}

	// Throughput: one gateway (the suite's) against the balancer.
	one, three := "one_gateway", "gateways"
	results := map[string][]*load.Result{}
	for round := range n {
		for _, path := range []string{one, three} {
			base, host := e.S.GatewayHTTP, tunnelHost
			if path == three {
				base, host = ss.GatewayHTTP, scaleHost
			}
			j := load.Job{Op: load.OpClosed, URL: base + "/bytes?n=1024", Host: host, Want: smallBody, Conns: p.SmallConns, KeepAlive: true,
				Duration: slice, MaxRequests: int64(slice.Seconds() * 200_000), BufSize: smallBuf}
			if round == 0 {
				j.Warmup = p.Warmup
			}
			r, err := e.do(ctx, s, j)
			if err != nil {
				return err
			}
			results[path] = append(results[path], r)
		}
	}
	s.Latency = map[string]*report.Latency{}
	for _, path := range []string{one, three} {
		r := load.Merge(results[path]...)
		reportPath := report.Direct
		if path == three {
			reportPath = report.Tunnel
		}
		s.Set(reportPath, round1(r.Rate()))
		s.Latency[reportPath] = report.Summarize(&r.Hist, r.Errors)
		s.Detail(path+"_rps", round1(r.Rate()))
		e.progress("  %s %-12s %8.0f req/s  p50 %s  p99 %s", s.Name, path, r.Rate(), r.Hist.Percentile(50), r.Hist.Percentile(99))
	}

	// The hop: one request at a time, to the holder and to a forwarder.
	un, uslice := rounds(p.UnloadedWindow, p.Slice)
	hop := map[string][]*load.Result{}
	for round := range un {
		for _, at := range []struct {
			name string
			i    int
		}{{"holder", holder}, {"forwarded", forwarder}} {
			j := load.Job{Op: load.OpClosed, URL: ss.GatewayHTTPs[at.i] + "/bytes?n=1024", Host: scaleHost, Want: smallBody, Conns: 1, KeepAlive: true,
				Duration: uslice, MaxRequests: int64(uslice.Seconds() * 100_000), BufSize: smallBuf}
			if round == 0 {
				j.Warmup = p.Warmup
			}
			r, err := e.do(ctx, s, j)
			if err != nil {
				return err
			}
			hop[at.name] = append(hop[at.name], r)
		}
	}
	if _, err := e.gen.Do(ctx, load.Job{Op: load.OpReset}); err != nil {
		return err
	}
	us := func(d time.Duration) float64 { return round1(float64(d.Nanoseconds()) / 1e3) }
	h, f := load.Merge(hop["holder"]...), load.Merge(hop["forwarded"]...)
	for name, r := range map[string]*load.Result{"holder": h, "forwarded": f} {
		s.Detail(name+"_p50_us", us(r.Hist.Percentile(50)))
		s.Detail(name+"_p99_us", us(r.Hist.Percentile(99)))
	}
	s.Detail("hop_added_p50_us", round1(us(f.Hist.Percentile(50))-us(h.Hist.Percentile(50))))
	s.Detail("hop_added_p99_us", round1(us(f.Hist.Percentile(99))-us(h.Hist.Percentile(99))))
	e.progress("  %s holder p50 %s p99 %s; forwarded p50 %s p99 %s", s.Name, h.Hist.Percentile(50), h.Hist.Percentile(99), f.Hist.Percentile(50), f.Hist.Percentile(99))
	return nil
}

// waitServedAt waits until host answers 200 at base.
func (e *Env) waitServedAt(ctx context.Context, base, host string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/", nil)
		if err != nil {
			return err
		}
		req.Host = host
		resp, err := e.client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s not served at %s within %s (last: %s)", host, strings.TrimPrefix(base, "http://"), timeout, last)
}
