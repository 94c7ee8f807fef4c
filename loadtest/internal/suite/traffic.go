package suite

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strconv"
	"time"

	"github.com/pipeops/tunnel/loadtest/internal/load"
	"github.com/pipeops/tunnel/loadtest/internal/procstat"
	"github.com/pipeops/tunnel/loadtest/internal/report"
)

// The traffic scenarios measure the four paths with the same client code
// in the same run, interleaved: round after round, each path gets a slice
// of the scenario's time in turn. A burst of noise on the machine (another
// process's build, the garbage collector of a neighbour) then falls on all
// paths alike instead of on one, which keeps the ratios steady on a shared
// machine.
//
// The relay path is a reference, not a product: no check applies to it,
// and its failed requests are counted apart (relay_errors, a note) instead
// of failing the scenario.

const (
	smallBody = 1024      // bytes of a small response
	bulkBuf   = 256 << 10 // client read buffer for downloads
	smallBuf  = 4 << 10
)

// cpuUse is the CPU time the gateway, the agent, the load generator, the
// upstream (this process, which serves it) and the two relays together
// spent on one path, over the requests they carried.
type cpuUse struct {
	gateway, agent, client, upstream, relays time.Duration
	requests                                 int64
}

// cpuSample reads the CPU time of the processes of e.pids now.
func (e *Env) cpuSample() ([]time.Duration, bool) {
	pids := e.pids()
	out := make([]time.Duration, len(pids))
	for i, pid := range pids {
		v, err := procstat.CPU(pid)
		if err != nil {
			return out, false
		}
		out[i] = v
	}
	return out, true
}

// interleave runs, for rounds rounds, one job per path (report.Paths
// order) and returns each path's results in round order, and the CPU spent
// per path.
func (e *Env) interleave(ctx context.Context, s *report.Scenario, rounds int, job func(path string, round int) load.Job) (map[string][]*load.Result, map[string]*cpuUse, error) {
	results := map[string][]*load.Result{}
	cpu := map[string]*cpuUse{}
	for round := range rounds {
		for _, path := range report.Paths {
			c0, ok0 := e.cpuSample()
			r, err := e.doPath(ctx, s, path, job(path, round))
			if err != nil {
				return nil, nil, err
			}
			c1, ok1 := e.cpuSample()
			results[path] = append(results[path], r)
			if cpu[path] == nil {
				cpu[path] = &cpuUse{}
			}
			if ok0 && ok1 {
				u := cpu[path]
				u.gateway += c1[pidGateway] - c0[pidGateway]
				u.agent += c1[pidAgent] - c0[pidAgent]
				u.client += c1[pidClient] - c0[pidClient]
				u.upstream += c1[pidUpstream] - c0[pidUpstream]
				for i := pidRelays; i < len(c1); i++ {
					u.relays += c1[i] - c0[i]
				}
				u.requests += r.Requests
			}
		}
	}
	if _, err := e.gen.Do(ctx, load.Job{Op: load.OpReset}); err != nil {
		return nil, nil, err
	}
	return results, cpu, nil
}

// doPath is do for a job on path: the relay path's errors are recorded
// apart, as relay_errors and a note with a sample, so that the reference
// never fails a scenario.
func (e *Env) doPath(ctx context.Context, s *report.Scenario, path string, job load.Job) (*load.Result, error) {
	if path != report.Relay {
		return e.do(ctx, s, job)
	}
	rep, err := e.gen.Do(ctx, job)
	if err != nil {
		return nil, err
	}
	if rep.Result == nil {
		return &load.Result{}, nil
	}
	if n := rep.Result.Errors; n > 0 {
		s.Detail("relay_errors", s.Details["relay_errors"]+float64(n))
		s.Note("%d failed requests on the relay path (not counted as errors): %q", n, rep.Result.ErrorSamples)
	}
	return rep.Result, nil
}

// recordCPU adds the CPU per request of each path to s: the load
// generator's and the upstream's on every path, the gateway's and the
// agent's where they carry it, the two relays' (together) on the relay
// path. On a machine whose cores are all busy, the sum is what sets the
// rate.
func recordCPU(s *report.Scenario, cpu map[string]*cpuUse) {
	for path, u := range cpu {
		if u.requests == 0 {
			continue
		}
		per := func(d time.Duration) float64 { return round1(float64(d.Microseconds()) / float64(u.requests)) }
		recordProcessCPU(s, path, u, "_cpu_us_per_req_", per)
	}
}

// recordProcessCPU records, for one path, the CPU of each process on it
// (the load generator, the upstream, and the gateway, agent or relays where
// the path has them) in the unit per gives, under "<process><unit><path>".
func recordProcessCPU(s *report.Scenario, path string, u *cpuUse, unit string, per func(time.Duration) float64) {
	s.Detail("client"+unit+path, per(u.client))
	s.Detail("upstream"+unit+path, per(u.upstream))
	if path == report.GatewayDirect || path == report.Tunnel {
		s.Detail("gateway"+unit+path, per(u.gateway))
	}
	if path == report.Tunnel {
		s.Detail("agent"+unit+path, per(u.agent))
	}
	if path == report.Relay {
		s.Detail("relay"+unit+path, per(u.relays))
	}
}

// do runs a job in the load generator and counts its errors in s.
func (e *Env) do(ctx context.Context, s *report.Scenario, job load.Job) (*load.Result, error) {
	rep, err := e.gen.Do(ctx, job)
	if err != nil {
		return nil, err
	}
	if rep.Result == nil {
		return &load.Result{}, nil
	}
	s.AddErrors(rep.Result.Errors, rep.Result.ErrorSamples...)
	return rep.Result, nil
}

// roundSpread records the lowest and highest per-round ratio to direct of
// a figure, of the tunnel (ratio_round_min/max) and of the relay
// (ratio_round_min/max_relay), so a reader sees how steady the ratios were.
func roundSpread(s *report.Scenario, results map[string][]*load.Result, figure func(*load.Result) float64) {
	pathSpread(s, results, figure, report.Tunnel, "")
	pathSpread(s, results, figure, report.Relay, "_"+report.Relay)
}

func pathSpread(s *report.Scenario, results map[string][]*load.Result, figure func(*load.Result) float64, path, suffix string) {
	var ratios []float64
	for i, d := range results[report.Direct] {
		if i >= len(results[path]) {
			break
		}
		dv, tv := figure(d), figure(results[path][i])
		if dv <= 0 || tv <= 0 {
			continue
		}
		if s.HigherIsBetter {
			ratios = append(ratios, tv/dv)
		} else {
			ratios = append(ratios, dv/tv)
		}
	}
	if len(ratios) > 0 {
		s.Detail("ratio_round_min"+suffix, round3(slices.Min(ratios)))
		s.Detail("ratio_round_max"+suffix, round3(slices.Max(ratios)))
	}
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	v = slices.Clone(v)
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

func round1(v float64) float64 { return math.Round(v*10) / 10 }
func round3(v float64) float64 { return math.Round(v*1000) / 1000 }

// download measures downloads of size bytes, conns at once, per path,
// round after round; the figure is each path's median.
func (e *Env) download(ctx context.Context, s *report.Scenario, conns int, size int64) error {
	s.Unit, s.HigherIsBetter = "MB/s", true
	job := func(path string, _ int) load.Job {
		base, host := e.target(path)
		return load.Job{Op: load.OpParallel, URL: base + "/bytes?n=" + strconv.FormatInt(size, 10), Host: host,
			Want: size, Conns: conns, KeepAlive: true, BufSize: bulkBuf}
	}
	results, cpu, err := e.interleave(ctx, s, e.profile.BulkRounds, job)
	if err != nil {
		return err
	}
	defer e.profileCPU(ctx, s, job(report.Tunnel, 1))
	for _, path := range report.Paths {
		var mbps []float64
		for _, r := range results[path] {
			mbps = append(mbps, r.MBps())
		}
		s.Set(path, round1(median(mbps)))
		e.progress("  %s %-14s %s MB/s (rounds: %s)", s.Name, path, report.Num(median(mbps)), nums(mbps))
	}
	roundSpread(s, results, (*load.Result).MBps)
	// CPU per megabyte moved, the useful unit for bulk.
	for path, u := range cpu {
		if u.requests == 0 {
			continue
		}
		mb := float64(u.requests*size) / 1e6
		per := func(d time.Duration) float64 { return round3(float64(d.Microseconds()) / 1e3 / mb) }
		recordProcessCPU(s, path, u, "_cpu_ms_per_mb_", per)
	}
	return nil
}

func nums(v []float64) string {
	out := ""
	for i, x := range v {
		if i > 0 {
			out += " "
		}
		out += report.Num(x)
	}
	return out
}

// bulkSingle: one large download.
func (e *Env) bulkSingle(ctx context.Context, s *report.Scenario) error {
	p := e.profile
	s.Description = fmt.Sprintf("one %s HTTP download; median of %d interleaved rounds", size(p.BulkBytes), p.BulkRounds)
	s.Detail("bytes", float64(p.BulkBytes))
	return e.download(ctx, s, 1, p.BulkBytes)
}

// bulkParallel: concurrent downloads, aggregate throughput.
func (e *Env) bulkParallel(ctx context.Context, s *report.Scenario) error {
	p := e.profile
	s.Description = fmt.Sprintf("%d concurrent downloads of %s, aggregate; median of %d interleaved rounds", p.ParallelDownloads, size(p.ParallelBytes), p.BulkRounds)
	s.Detail("bytes_each", float64(p.ParallelBytes))
	return e.download(ctx, s, p.ParallelDownloads, p.ParallelBytes)
}

// slices splits a window into rounds of about slice each.
func rounds(window, slice time.Duration) (int, time.Duration) {
	n := max(int((window+slice/2)/slice), 1)
	return n, window / time.Duration(n)
}

// smallClosed: 1 KiB responses from keep-alive connections, closed loop.
func (e *Env) smallClosed(ctx context.Context, s *report.Scenario) error {
	p := e.profile
	n, slice := rounds(p.SmallWindow, p.Slice)
	s.Description = fmt.Sprintf("1 KiB responses, %d keep-alive connections, closed loop, %s per path in %d interleaved slices", p.SmallConns, p.SmallWindow, n)
	s.Unit, s.HigherIsBetter = "req/s", true
	job := func(path string, round int) load.Job {
		base, host := e.target(path)
		j := load.Job{Op: load.OpClosed, URL: base + "/bytes?n=1024", Host: host, Want: smallBody, Conns: p.SmallConns, KeepAlive: true,
			Duration: slice, MaxRequests: int64(slice.Seconds() * 200_000), BufSize: smallBuf}
		if round == 0 {
			j.Warmup = p.Warmup
		}
		return j
	}
	results, cpu, err := e.interleave(ctx, s, n, job)
	if err != nil {
		return err
	}
	defer e.profileCPU(ctx, s, job(report.Tunnel, 1))
	recordCPU(s, cpu)
	s.Latency = map[string]*report.Latency{}
	for _, path := range report.Paths {
		r := load.Merge(results[path]...)
		s.Set(path, round1(r.Rate()))
		s.Latency[path] = report.Summarize(&r.Hist, r.Errors)
		e.progress("  %s %-14s %8.0f req/s  p50 %s  p99 %s  p99.9 %s", s.Name, path, r.Rate(),
			r.Hist.Percentile(50), r.Hist.Percentile(99), r.Hist.Percentile(99.9))
	}
	roundSpread(s, results, (*load.Result).Rate)
	if d, t := s.Latency[report.Direct], s.Latency[report.Tunnel]; d.P99 > 0 && t.P99 > 0 {
		s.Detail("p99_ratio", round3(d.P99/t.P99))
	}
	if d, rl := s.Latency[report.Direct], s.Latency[report.Relay]; d.P99 > 0 && rl.P99 > 0 {
		s.Detail("p99_ratio_relay", round3(d.P99/rl.P99))
	}
	return nil
}

// unloaded: one connection, one request at a time: what the tunnel adds to
// a request when nothing else is going on.
func (e *Env) unloaded(ctx context.Context, s *report.Scenario) error {
	p := e.profile
	n, slice := rounds(p.UnloadedWindow, p.Slice)
	s.Description = fmt.Sprintf("1 KiB responses on one keep-alive connection, one at a time, %s per path; p50", p.UnloadedWindow)
	s.Unit, s.HigherIsBetter = "us", false
	results, _, err := e.interleave(ctx, s, n, func(path string, round int) load.Job {
		base, host := e.target(path)
		j := load.Job{Op: load.OpClosed, URL: base + "/bytes?n=1024", Host: host, Want: smallBody, Conns: 1, KeepAlive: true,
			Duration: slice, MaxRequests: int64(slice.Seconds() * 100_000), BufSize: smallBuf}
		if round == 0 {
			j.Warmup = p.Warmup
		}
		return j
	})
	if err != nil {
		return err
	}
	s.Latency = map[string]*report.Latency{}
	p50 := map[string]float64{}
	for _, path := range report.Paths {
		r := load.Merge(results[path]...)
		p50[path] = float64(r.Hist.Percentile(50).Nanoseconds()) / 1e3
		s.Set(path, round1(p50[path]))
		s.Latency[path] = report.Summarize(&r.Hist, r.Errors)
		e.progress("  %s %-14s p50 %s  p99 %s  (%d requests)", s.Name, path, r.Hist.Percentile(50), r.Hist.Percentile(99), r.Requests)
	}
	s.Detail("added_p50_us", round1(p50[report.Tunnel]-p50[report.Direct]))
	s.Detail("added_p50_us_gateway_direct", round1(p50[report.GatewayDirect]-p50[report.Direct]))
	s.Detail("added_p50_us_relay", round1(p50[report.Relay]-p50[report.Direct]))
	return nil
}

// smallOpen: a fixed arrival rate; latency from each request's scheduled
// start.
func (e *Env) smallOpen(ctx context.Context, s *report.Scenario) error {
	p := e.profile
	n, slice := rounds(p.OpenWindow, p.OpenSlice)
	s.Description = fmt.Sprintf("1 KiB responses at a fixed %.0f req/s, %s per path (open loop, latency from the scheduled start); p99", p.OpenRate, p.OpenWindow)
	s.Unit, s.HigherIsBetter = "ms", false
	const inFlight = 256
	job := func(path string, round int) load.Job {
		base, host := e.target(path)
		j := load.Job{Op: load.OpOpen, URL: base + "/bytes?n=1024", Host: host, Want: smallBody, Conns: inFlight, KeepAlive: true,
			Duration: slice, Rate: p.OpenRate, Drain: 10 * time.Second, BufSize: smallBuf}
		if round == 0 {
			j.Warmup = p.Warmup
		}
		return j
	}
	results, _, err := e.interleave(ctx, s, n, job)
	if err != nil {
		return err
	}
	defer e.profileCPU(ctx, s, job(report.Tunnel, 1))
	s.Latency = map[string]*report.Latency{}
	scheduled := int64(p.OpenRate*slice.Seconds()) * int64(n)
	sent := scheduled
	for _, path := range report.Paths {
		r := load.Merge(results[path]...)
		if path == report.Relay {
			s.Detail("sent_fraction_relay", round3(float64(r.Requests)/float64(scheduled)))
		} else {
			sent = min(sent, r.Requests)
		}
		l := report.Summarize(&r.Hist, r.Errors)
		s.Latency[path] = l
		s.Set(path, l.P99)
		e.progress("  %s %-14s %d/%d answered  p50 %s  p99 %s  p99.9 %s  max %s", s.Name, path, r.Requests, scheduled,
			r.Hist.Percentile(50), r.Hist.Percentile(99), r.Hist.Percentile(99.9), r.Hist.Max())
	}
	s.Detail("rate_per_s", p.OpenRate)
	s.Detail("sent_fraction", round3(float64(sent)/float64(scheduled)))
	return nil
}

// openRate: every request on a new connection, and the upstream closes its
// side after each answer, so through the tunnel every request is a new
// visitor connection, a new stream and a new connection from the agent.
// New visitor connections over reused streams are a detail.
func (e *Env) openRate(ctx context.Context, s *report.Scenario) error {
	p := e.profile
	n, slice := rounds(p.ConnWindow, p.Slice)
	s.Description = fmt.Sprintf("new connections per second, %d workers, each request on a new connection end to end, %s per path", p.ConnWorkers, p.ConnWindow)
	s.Unit, s.HigherIsBetter = "conn/s", true
	job := func(path, urlPath string) load.Job {
		base, host := e.target(path)
		return load.Job{Op: load.OpClosed, URL: base + urlPath, Host: host, Want: 16, Conns: p.ConnWorkers, KeepAlive: false,
			Duration: slice, MaxRequests: int64(slice.Seconds() * 50_000), BufSize: smallBuf}
	}
	results, cpu, err := e.interleave(ctx, s, n, func(path string, _ int) load.Job { return job(path, "/conn") })
	if err != nil {
		return err
	}
	defer e.profileCPU(ctx, s, job(report.Tunnel, "/conn"))
	recordCPU(s, cpu)
	for _, path := range report.Paths {
		r := load.Merge(results[path]...)
		s.Set(path, round1(r.Rate()))
		e.progress("  %s %-14s %8.0f conn/s  p50 %s  p99 %s", s.Name, path, r.Rate(), r.Hist.Percentile(50), r.Hist.Percentile(99))
	}
	roundSpread(s, results, (*load.Result).Rate)
	r, err := e.do(ctx, s, job(report.Tunnel, "/bytes?n=16"))
	if err != nil {
		return err
	}
	s.Detail("tunnel_visitor_only_conn_per_s", round1(r.Rate()))
	e.progress("  %s %-14s %8.0f conn/s  (new visitor connections, streams reused)", s.Name, "tunnel", r.Rate())
	return nil
}

func size(b int64) string {
	switch {
	case b >= 1<<30 && b%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", b>>30)
	case b >= 1<<20:
		return fmt.Sprintf("%d MiB", b>>20)
	default:
		return fmt.Sprintf("%d KiB", b>>10)
	}
}
