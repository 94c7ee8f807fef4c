package suite

import (
	"slices"
	"strings"
	"testing"

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
	// The CI profile's traffic windows (three paths each) must leave room
	// for the stack's start and the memory scenarios within 3 minutes.
	traffic := 3 * (CI.SmallWindow + CI.UnloadedWindow + CI.OpenWindow + 3*CI.Warmup + 2*CI.ConnWindow)
	if traffic.Seconds() > 90 {
		t.Fatalf("CI traffic windows add up to %v", traffic)
	}
}

func TestOptionsValidate(t *testing.T) {
	ok := Options{Profile: CI, WorkDir: "/tmp/x", Worker: []string{"loadtest", "-worker"}}
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
