// Package report holds the load test's results: the JSON report, the checks
// (the CI floors and the targets) evaluated against it, the human table and
// the SVG chart of latency distributions.
package report

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/pipeops/tunnel/loadtest/internal/hdr"
)

// Path names: where a measurement's requests went.
const (
	// Direct is the baseline: client to upstream, no gateway.
	Direct = "direct"
	// GatewayDirect is the gateway in direct mode: client to gateway to
	// upstream.
	GatewayDirect = "gateway_direct"
	// Tunnel is the gateway in tunnel mode: client to gateway, a yamux
	// stream over the agent's WebSocket, agent to upstream.
	Tunnel = "tunnel"
	// Relay is the reference for any two-process tunnel: client to a plain
	// TCP relay process, to a second one, to upstream. It carries bytes
	// and nothing else, so it is the floor under what a tunnel with two
	// processes on the path can cost on the machine.
	Relay = "relay"
)

// Paths lists the path names in the order they are measured and shown.
var Paths = []string{Direct, GatewayDirect, Tunnel, Relay}

// Report is the whole run.
type Report struct {
	Machine   Machine     `json:"machine"`
	Commit    string      `json:"commit"`
	Profile   string      `json:"profile"`
	StartedAt time.Time   `json:"started_at"`
	Seconds   float64     `json:"seconds"`
	Scenarios []*Scenario `json:"scenarios"`
	// Failures are run-wide failures (a leak, a setup error), besides those
	// of each scenario.
	Failures []string `json:"failures,omitempty"`
	Passed   bool     `json:"passed"`
}

// Machine describes where the run happened: figures are only comparable
// within one machine.
type Machine struct {
	Hostname  string `json:"hostname"`
	OS        string `json:"os"`
	Arch      string `json:"arch"`
	CPUs      int    `json:"cpus"`
	CPUModel  string `json:"cpu_model,omitempty"`
	MemoryMiB int64  `json:"memory_mib,omitempty"`
	Kernel    string `json:"kernel,omitempty"`
	Go        string `json:"go"`
	// OpenFiles is the load generator's RLIMIT_NOFILE during the run.
	OpenFiles uint64 `json:"open_files"`
	// SyscallNs is the cost of one trivial system call, and
	// ProcessRoundTripUs the median time for a message to another process
	// and back over pipes (two wake-ups): the machine's floors under every
	// read, write and hop between processes. Virtual machines can be ten
	// times slower than bare metal on both, which the tunnel, with two more
	// processes on the path than the baseline, feels more than the baseline.
	SyscallNs          float64 `json:"syscall_ns"`
	ProcessRoundTripUs float64 `json:"process_round_trip_us"`
	// LoadAverage is the 1, 5 and 15 minute load average at the start and
	// the end of the run: the machine may be shared, and a busy one makes
	// every figure noisier.
	LoadAverage struct {
		Start [3]float64 `json:"start"`
		End   [3]float64 `json:"end"`
	} `json:"load_average"`
}

// Scenario is one measured scenario. Direct, GatewayDirect, Ratio, Relay
// and RelayRatio are null where they do not apply (there is no direct
// baseline for memory per stream, and no relay path outside the traffic
// scenarios).
type Scenario struct {
	Name           string `json:"name"`
	Description    string `json:"description"`
	Unit           string `json:"unit"`
	HigherIsBetter bool   `json:"higher_is_better"`
	// Tunnel is the headline figure through the tunnel; Direct the baseline
	// (no gateway), GatewayDirect the gateway in direct mode.
	Direct        *float64 `json:"direct"`
	Tunnel        float64  `json:"tunnel"`
	GatewayDirect *float64 `json:"gateway_direct"`
	// Ratio is tunnel/direct when higher is better, direct/tunnel when
	// lower is better: 1 means the tunnel costs nothing, below 1 is its cost.
	Ratio *float64 `json:"ratio"`
	// Relay is the figure through two plain relay processes, and
	// RelayRatio its ratio to Direct (the same way round as Ratio): the
	// best Ratio a tunnel with two processes on its path could reach on
	// this machine. No check applies to them.
	Relay      *float64 `json:"relay"`
	RelayRatio *float64 `json:"relay_ratio"`
	// Details are further figures, by name (units in the name).
	Details map[string]float64 `json:"details,omitempty"`
	// Latency is the distribution per path, where one was measured.
	Latency map[string]*Latency `json:"latency,omitempty"`
	// Errors counts failed requests or operations; any fails the scenario.
	Errors int64 `json:"errors"`
	// ErrorSamples are a few of the errors, for the reader.
	ErrorSamples []string `json:"error_samples,omitempty"`
	// Notes are observations that are not errors (why reconnect
	// attempts failed while the gateway restarted, for example).
	Notes  []string `json:"notes,omitempty"`
	Checks []Check  `json:"checks,omitempty"`
	// Failures are what failed: floors missed, errors, leaks, aborts.
	Failures []string `json:"failures,omitempty"`
	Passed   bool     `json:"passed"`
	Seconds  float64  `json:"seconds"`
}

// Set stores a path's headline figure.
func (s *Scenario) Set(path string, v float64) {
	switch path {
	case Direct:
		s.Direct = &v
	case GatewayDirect:
		s.GatewayDirect = &v
	case Tunnel:
		s.Tunnel = v
	case Relay:
		s.Relay = &v
	default:
		panic("report: unknown path " + path)
	}
}

// Detail sets a detail figure.
func (s *Scenario) Detail(name string, v float64) {
	if s.Details == nil {
		s.Details = map[string]float64{}
	}
	s.Details[name] = v
}

// Note records an observation.
func (s *Scenario) Note(format string, args ...any) {
	s.Notes = append(s.Notes, fmt.Sprintf(format, args...))
}

// Fail records a failure of the scenario.
func (s *Scenario) Fail(format string, args ...any) {
	s.Failures = append(s.Failures, fmt.Sprintf(format, args...))
}

// AddErrors counts n errors, keeping up to a few samples.
func (s *Scenario) AddErrors(n int64, samples ...string) {
	s.Errors += n
	for _, e := range samples {
		if len(s.ErrorSamples) < 5 && !slices.Contains(s.ErrorSamples, e) {
			s.ErrorSamples = append(s.ErrorSamples, e)
		}
	}
}

// ComputeRatio sets Ratio from Direct and Tunnel, and RelayRatio from
// Direct and Relay (each nil when a figure is missing or zero).
func (s *Scenario) ComputeRatio() {
	s.Ratio = s.ratioTo(&s.Tunnel)
	s.RelayRatio = s.ratioTo(s.Relay)
}

// ratioTo is v against Direct, so that 1 means no cost and below 1 is the
// cost, whichever way the unit goes.
func (s *Scenario) ratioTo(v *float64) *float64 {
	if s.Direct == nil || *s.Direct == 0 || v == nil || *v == 0 {
		return nil
	}
	r := *v / *s.Direct
	if !s.HigherIsBetter {
		r = *s.Direct / *v
	}
	r = round(r, 4)
	return &r
}

// Value returns a named figure of the scenario: "ratio", "relay_ratio",
// "tunnel", "direct", "gateway_direct", "relay", or a detail.
func (s *Scenario) Value(metric string) (float64, bool) {
	switch metric {
	case "ratio":
		return deref(s.Ratio)
	case "relay_ratio":
		return deref(s.RelayRatio)
	case Relay:
		return deref(s.Relay)
	case Tunnel:
		return s.Tunnel, true
	case Direct:
		return deref(s.Direct)
	case GatewayDirect:
		return deref(s.GatewayDirect)
	}
	v, ok := s.Details[metric]
	return v, ok
}

func deref(p *float64) (float64, bool) {
	if p == nil {
		return 0, false
	}
	return *p, true
}

// Latency summarises one path's latency distribution in milliseconds.
type Latency struct {
	Count  int64   `json:"count"`
	Errors int64   `json:"errors"`
	Mean   float64 `json:"mean_ms"`
	P50    float64 `json:"p50_ms"`
	P90    float64 `json:"p90_ms"`
	P99    float64 `json:"p99_ms"`
	P999   float64 `json:"p99_9_ms"`
	P9999  float64 `json:"p99_99_ms"`
	Max    float64 `json:"max_ms"`
	// Curve is the distribution for the chart: latency at percentiles
	// spaced evenly on a log scale of 1/(1-p), from 50 to 99.99.
	Curve []Point `json:"curve"`
}

// Point is the latency in milliseconds at a percentile.
type Point struct {
	Percentile float64 `json:"p"`
	Ms         float64 `json:"ms"`
}

func ms(d time.Duration) float64 { return round(float64(d)/1e6, 4) }

// round keeps d decimals, so the JSON stays readable.
func round(v float64, d int) float64 {
	p := math.Pow(10, float64(d))
	return math.Round(v*p) / p
}

// CurvePercentiles are the percentiles of Latency.Curve: 20 steps per
// decade of 1/(1-p), from 50 % (1/(1-p) = 2) to 99.99 % (10,000).
func CurvePercentiles() []float64 {
	var ps []float64
	for x := math.Log10(2); x <= 4+1e-9; x += 0.05 {
		ps = append(ps, round(100*(1-math.Pow(10, -x)), 4))
	}
	if last := ps[len(ps)-1]; last != 99.99 {
		ps = append(ps, 99.99)
	}
	return ps
}

// Summarize turns a histogram and an error count into a Latency.
func Summarize(h *hdr.Histogram, errors int64) *Latency {
	l := &Latency{
		Count: h.Count(), Errors: errors, Mean: ms(h.Mean()),
		P50: ms(h.Percentile(50)), P90: ms(h.Percentile(90)), P99: ms(h.Percentile(99)),
		P999: ms(h.Percentile(99.9)), P9999: ms(h.Percentile(99.99)), Max: ms(h.Max()),
	}
	if h.Count() > 0 {
		for _, p := range CurvePercentiles() {
			l.Curve = append(l.Curve, Point{Percentile: p, Ms: ms(h.Percentile(p))})
		}
	}
	return l
}

// Check is a condition on one figure of a scenario. A floor is what CI
// enforces: chosen to hold on a noisy 2-core machine, it fails the run when
// missed. A target is the goal set for the platform: it is reported, and a
// miss is a finding, not a failure.
type Check struct {
	Kind   string  `json:"kind"` // KindFloor or KindTarget
	Metric string  `json:"metric"`
	Op     string  `json:"op"` // ">=" or "<="
	Limit  float64 `json:"limit"`
	Value  float64 `json:"value"`
	// Measured is false when the figure was not there to check (a floor
	// then fails).
	Measured bool   `json:"measured"`
	Pass     bool   `json:"pass"`
	Note     string `json:"note,omitempty"`
}

// Kinds of check.
const (
	KindFloor  = "floor"
	KindTarget = "target"
)

// Rule is a check before it is evaluated.
type Rule struct {
	Scenario string
	Kind     string
	Metric   string
	Op       string
	Limit    float64
	Note     string
}

// String is the rule as a reader would write it: "ratio >= 0.35".
func (r Rule) String() string { return fmt.Sprintf("%s %s %s", r.Metric, r.Op, trimFloat(r.Limit)) }

// Evaluate checks s against the rule.
func (r Rule) Evaluate(s *Scenario) Check {
	c := Check{Kind: r.Kind, Metric: r.Metric, Op: r.Op, Limit: r.Limit, Note: r.Note}
	v, ok := s.Value(r.Metric)
	c.Value, c.Measured = v, ok
	if !ok {
		return c
	}
	switch r.Op {
	case ">=":
		c.Pass = v >= r.Limit
	case "<=":
		c.Pass = v <= r.Limit
	default:
		panic("report: unknown operator " + r.Op)
	}
	return c
}

// Finish evaluates the rules that apply to s, and decides whether s passed:
// every floor held, no errors, no failure recorded.
func (s *Scenario) Finish(rules []Rule) {
	s.ComputeRatio()
	s.Checks = s.Checks[:0]
	for _, r := range rules {
		if r.Scenario != s.Name {
			continue
		}
		c := r.Evaluate(s)
		s.Checks = append(s.Checks, c)
		if r.Kind == KindFloor && !c.Pass {
			if c.Measured {
				s.Fail("floor missed: %s is %s", r, Num(c.Value))
			} else {
				s.Fail("floor not measured: %s", r)
			}
		}
	}
	if s.Errors > 0 {
		s.Fail("%d errors", s.Errors)
	}
	s.Passed = len(s.Failures) == 0
}

// Finish decides whether the run passed.
func (r *Report) Finish() {
	r.Passed = len(r.Failures) == 0
	for _, s := range r.Scenarios {
		r.Passed = r.Passed && s.Passed
	}
}

// WriteFile writes the report as indented JSON to path (creating its
// directory) and the chart next to it, with the extension .svg.
func (r *Report) WriteFile(path string) (svgPath string, err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return "", err
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return "", err
	}
	svgPath = path[:len(path)-len(filepath.Ext(path))] + ".svg"
	f, err := os.Create(svgPath)
	if err != nil {
		return "", err
	}
	if err := WriteSVG(f, r); err != nil {
		f.Close()
		return "", err
	}
	return svgPath, f.Close()
}

// Read loads a report written by WriteFile.
func Read(path string) (*Report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &r, nil
}
