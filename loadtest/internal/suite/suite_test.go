package suite

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pipeops/tunnel/loadtest/internal/load"
	"github.com/pipeops/tunnel/loadtest/internal/report"
)

func TestEveryScenarioHasAFloorAndRuns(t *testing.T) {
	for _, name := range Names {
		if !slices.ContainsFunc(Floors, func(r report.Rule) bool { return r.Scenario == name }) {
			t.Errorf("scenario %s has no floor: CI would only catch its errors", name)
		}
		if !slices.Contains(runOrder, name) {
			t.Errorf("scenario %s is never run", name)
		}
	}
	if len(runOrder) != len(Names) {
		t.Errorf("run order has %d scenarios, the report %d", len(runOrder), len(Names))
	}
	for _, r := range append(Floors, Targets(Full)...) {
		if !slices.Contains(Names, r.Scenario) {
			t.Errorf("rule %s names unknown scenario %q", r, r.Scenario)
		}
		if r.Op != ">=" && r.Op != "<=" {
			t.Errorf("rule %s: operator %q", r, r.Op)
		}
	}
	// The memory scenarios run first, on processes that have carried no
	// load.
	if runOrder[0] != Streams || runOrder[1] != Agents {
		t.Errorf("run order %v: streams and agents must come first", runOrder)
	}
}

// TestFloorsBelowTargets: a floor is a looser bound than the target on the
// same figure; the other way round, CI would demand more than the goal.
func TestFloorsBelowTargets(t *testing.T) {
	for _, f := range Floors {
		for _, tg := range Targets(Full) {
			if f.Scenario != tg.Scenario || f.Metric != tg.Metric || f.Op != tg.Op {
				continue
			}
			if (f.Op == ">=" && f.Limit > tg.Limit) || (f.Op == "<=" && f.Limit < tg.Limit) {
				t.Errorf("%s: floor %s is stricter than target %s", f.Scenario, f, tg)
			}
		}
	}
}

func TestScaleTargetsOnlyAtFullScale(t *testing.T) {
	has := func(rules []report.Rule, scenario, metric string) bool {
		return slices.ContainsFunc(rules, func(r report.Rule) bool { return r.Scenario == scenario && r.Metric == metric })
	}
	if !has(Targets(Full), Streams, "held") || !has(Targets(Full), Agents, "connected") {
		t.Error("the full profile must check the 10,000 streams and 1,000 agents targets")
	}
	if has(Targets(CI), Streams, "held") || has(Targets(CI), Agents, "connected") {
		t.Error("the CI profile runs fewer streams and agents: their scale targets do not apply")
	}
}

func TestProfiles(t *testing.T) {
	for _, name := range []string{"full", "ci"} {
		p, err := ProfileByName(name)
		if err != nil || p.Name != name {
			t.Fatalf("%s: %+v, %v", name, p, err)
		}
	}
	if _, err := ProfileByName("huge"); err == nil {
		t.Fatal("unknown profile accepted")
	}
	if Full.Streams != 10_000 || Full.Agents != 1000 || Full.BulkBytes != 1<<30 || CI.BulkBytes != 256<<20 {
		t.Fatal("the profiles must keep the scales the issue asks for")
	}
	// The CI profile's traffic windows (one per path) must leave room for
	// the stack's start and the memory scenarios within 3 minutes.
	traffic := time.Duration(len(report.Paths)) * (CI.SmallWindow + CI.UnloadedWindow + CI.OpenWindow + 3*CI.Warmup + 2*CI.ConnWindow)
	if traffic.Seconds() > 90 {
		t.Fatalf("CI traffic windows add up to %v", traffic)
	}
}

func TestOptionsValidate(t *testing.T) {
	ok := Options{Profile: CI, WorkDir: "/tmp/x", Worker: []string{"loadtest", "-worker"}, Relay: []string{"loadtest", "-relay"}}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	bad := ok
	bad.Scenarios = []string{"bulk-single", "warp-speed"}
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "warp-speed") {
		t.Fatalf("unknown scenario: %v", err)
	}
	bad = ok
	bad.Worker = nil
	if err := bad.Validate(); err == nil {
		t.Fatal("no worker command accepted")
	}
	bad = ok
	bad.Relay = nil
	if err := bad.Validate(); err == nil {
		t.Fatal("no relay command accepted")
	}
}

// TestNoRuleOnTheRelayPath: the relay path is a reference to read the
// tunnel's figures against, not something CI guards.
func TestNoRuleOnTheRelayPath(t *testing.T) {
	for _, r := range Rules(Full) {
		if strings.Contains(r.Metric, report.Relay) {
			t.Errorf("rule %s (%s) is on the relay path", r, r.Scenario)
		}
	}
}

func TestRoundSpread(t *testing.T) {
	res := func(rates ...float64) []*load.Result {
		var out []*load.Result
		for _, r := range rates {
			out = append(out, &load.Result{Requests: int64(r), Elapsed: time.Second})
		}
		return out
	}
	results := map[string][]*load.Result{
		report.Direct: res(1000, 2000, 1000),
		report.Tunnel: res(250, 400, 300),
		report.Relay:  res(500, 1000, 0), // a round with nothing through is left out
	}
	s := &report.Scenario{HigherIsBetter: true}
	roundSpread(s, results, (*load.Result).Rate)
	want := map[string]float64{"ratio_round_min": 0.2, "ratio_round_max": 0.3, "ratio_round_min_relay": 0.5, "ratio_round_max_relay": 0.5}
	for k, v := range want {
		if s.Details[k] != v {
			t.Errorf("%s = %v, want %v", k, s.Details[k], v)
		}
	}
	s = &report.Scenario{HigherIsBetter: false}
	roundSpread(s, results, (*load.Result).Rate)
	if s.Details["ratio_round_max"] != 5 || s.Details["ratio_round_min_relay"] != 2 {
		t.Errorf("lower is better: %v", s.Details)
	}
}

func TestRecordCPUPerPath(t *testing.T) {
	cpu := map[string]*cpuUse{}
	for _, p := range report.Paths {
		cpu[p] = &cpuUse{gateway: time.Millisecond, agent: time.Millisecond, client: time.Millisecond,
			upstream: time.Millisecond, relays: 2 * time.Millisecond, requests: 100}
	}
	s := &report.Scenario{}
	recordCPU(s, cpu)
	for _, k := range []string{"client_cpu_us_per_req_relay", "upstream_cpu_us_per_req_relay", "relay_cpu_us_per_req_relay",
		"gateway_cpu_us_per_req_tunnel", "agent_cpu_us_per_req_tunnel", "gateway_cpu_us_per_req_gateway_direct"} {
		if _, ok := s.Details[k]; !ok {
			t.Errorf("no %s in %v", k, s.Details)
		}
	}
	if s.Details["relay_cpu_us_per_req_relay"] != 20 {
		t.Errorf("relay CPU per request %v us, want 20", s.Details["relay_cpu_us_per_req_relay"])
	}
	for _, k := range []string{"gateway_cpu_us_per_req_relay", "agent_cpu_us_per_req_relay", "gateway_cpu_us_per_req_direct", "relay_cpu_us_per_req_tunnel"} {
		if _, ok := s.Details[k]; ok {
			t.Errorf("%s: that process is not on that path", k)
		}
	}
}

func TestParseMetrics(t *testing.T) {
	m, err := parseMetrics(strings.NewReader(`# HELP x
# TYPE pipeops_gateway_tunnel_streams gauge
pipeops_gateway_tunnel_streams 42
go_memstats_heap_inuse_bytes 1.5e+06
pipeops_gateway_tunnel_refused_total{reason="bad_token"} 3
garbage line
`))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{"pipeops_gateway_tunnel_streams": 42, "go_memstats_heap_inuse_bytes": 1.5e6,
		`pipeops_gateway_tunnel_refused_total{reason="bad_token"}`: 3}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s = %v, want %v", k, m[k], v)
		}
	}
	if len(m) != len(want) {
		t.Errorf("parsed %v", m)
	}
}
