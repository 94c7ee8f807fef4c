package report

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pipeops/tunnel/loadtest/internal/hdr"
)

func f(v float64) *float64 { return &v }

func TestRatio(t *testing.T) {
	cases := []struct {
		name      string
		higher    bool
		direct    *float64
		tunnel    float64
		relay     *float64
		want      *float64
		wantRelay *float64
	}{
		{"throughput: tunnel over direct", true, f(2000), 1000, f(1600), f(0.5), f(0.8)},
		{"latency: direct over tunnel", false, f(1), 4, f(2), f(0.25), f(0.5)},
		{"no baseline", true, nil, 10, f(10), nil, nil},
		{"zero baseline", true, f(0), 10, f(10), nil, nil},
		{"nothing through the tunnel", true, f(10), 0, f(5), nil, f(0.5)},
		{"no relay path", true, f(10), 5, nil, f(0.5), nil},
		{"nothing through the relays", false, f(10), 20, f(0), f(0.5), nil},
	}
	check := func(t *testing.T, what string, got, want *float64) {
		t.Helper()
		switch {
		case want == nil && got != nil:
			t.Fatalf("%s %v, want none", what, *got)
		case want != nil && (got == nil || *got != *want):
			t.Fatalf("%s %v, want %v", what, got, *want)
		}
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := &Scenario{HigherIsBetter: tc.higher, Direct: tc.direct, Tunnel: tc.tunnel, Relay: tc.relay}
			s.ComputeRatio()
			check(t, "ratio", s.Ratio, tc.want)
			check(t, "relay ratio", s.RelayRatio, tc.wantRelay)
			if v, ok := s.Value("relay_ratio"); ok != (tc.wantRelay != nil) || ok && v != *tc.wantRelay {
				t.Fatalf("Value(relay_ratio) = %v, %v", v, ok)
			}
		})
	}
}

func TestRulesAndFinish(t *testing.T) {
	rules := []Rule{
		{Scenario: "bulk-single", Kind: KindFloor, Metric: "ratio", Op: ">=", Limit: 0.35},
		{Scenario: "bulk-single", Kind: KindTarget, Metric: "ratio", Op: ">=", Limit: 0.5},
		{Scenario: "bulk-single", Kind: KindTarget, Metric: "absent", Op: "<=", Limit: 1},
		{Scenario: "other", Kind: KindFloor, Metric: "ratio", Op: ">=", Limit: 100},
	}
	cases := []struct {
		name       string
		tunnel     float64
		errors     int64
		wantPassed bool
		wantChecks []bool
	}{
		{"meets floor and target", 600, 0, true, []bool{true, true, false}},
		{"meets floor, misses target", 400, 0, true, []bool{true, false, false}},
		{"misses floor", 300, 0, false, []bool{false, false, false}},
		{"errors fail a scenario whose figures are fine", 600, 2, false, []bool{true, true, false}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := &Scenario{Name: "bulk-single", HigherIsBetter: true, Direct: f(1000), Tunnel: tc.tunnel, Errors: tc.errors}
			s.Finish(rules)
			if s.Passed != tc.wantPassed {
				t.Fatalf("passed = %v, want %v (failures %q)", s.Passed, tc.wantPassed, s.Failures)
			}
			if len(s.Checks) != len(tc.wantChecks) {
				t.Fatalf("%d checks, want %d", len(s.Checks), len(tc.wantChecks))
			}
			for i, want := range tc.wantChecks {
				if s.Checks[i].Pass != want {
					t.Errorf("check %d (%s %s %v) pass = %v, want %v", i, s.Checks[i].Metric, s.Checks[i].Op, s.Checks[i].Limit, s.Checks[i].Pass, want)
				}
			}
			if s.Checks[2].Measured {
				t.Error("a check of an absent figure must say it was not measured")
			}
			r := &Report{Scenarios: []*Scenario{s}}
			r.Finish()
			if r.Passed != tc.wantPassed {
				t.Fatalf("report passed = %v, want %v", r.Passed, tc.wantPassed)
			}
		})
	}
	t.Run("a floor on an absent figure fails", func(t *testing.T) {
		s := &Scenario{Name: "x"}
		s.Finish([]Rule{{Scenario: "x", Kind: KindFloor, Metric: "held", Op: ">=", Limit: 1}})
		if s.Passed || !strings.Contains(strings.Join(s.Failures, ";"), "not measured") {
			t.Fatalf("passed %v, failures %q", s.Passed, s.Failures)
		}
	})
	t.Run("run-wide failure fails the report", func(t *testing.T) {
		r := &Report{Scenarios: []*Scenario{{Passed: true}}, Failures: []string{"goroutine leak"}}
		r.Finish()
		if r.Passed {
			t.Fatal("report passed despite a run-wide failure")
		}
	})
}

func sampleReport() *Report {
	var h hdr.Histogram
	for i := 1; i <= 10_000; i++ {
		h.Record(time.Duration(i) * time.Microsecond)
	}
	s := &Scenario{Name: "small-closed", Description: "1 KiB responses", Unit: "req/s", HigherIsBetter: true}
	s.Set(Direct, 20000)
	s.Set(GatewayDirect, 12000)
	s.Set(Tunnel, 9000)
	s.Set(Relay, 16000)
	s.Detail("p99_ratio", 0.4)
	s.Latency = map[string]*Latency{Direct: Summarize(&h, 0), GatewayDirect: Summarize(&h, 0), Tunnel: Summarize(&h, 1), Relay: Summarize(&h, 0)}
	s.AddErrors(1, "GET /bytes: connection reset", "GET /bytes: connection reset")
	s.Finish([]Rule{{Scenario: "small-closed", Kind: KindFloor, Metric: "ratio", Op: ">=", Limit: 0.25}})
	mem := &Scenario{Name: "streams", Unit: "KiB/stream", Tunnel: 14.2}
	mem.Finish(nil)
	r := &Report{Machine: Machine{Hostname: "h", CPUs: 2, Go: "go1.26"}, Commit: "abc", Profile: "ci",
		StartedAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Scenarios: []*Scenario{s, mem}}
	r.Finish()
	return r
}

func TestJSONForm(t *testing.T) {
	r := sampleReport()
	path := filepath.Join(t.TempDir(), "out", "report.json")
	svg, err := r.WriteFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(svg) != "report.svg" {
		t.Fatalf("chart written to %s, want report.svg next to the JSON", svg)
	}
	back, err := Read(path)
	if err != nil {
		t.Fatal(err)
	}
	if back.Scenarios[0].Ratio == nil || *back.Scenarios[0].Ratio != 0.45 || back.Scenarios[0].Latency[Tunnel].Errors != 1 {
		t.Fatalf("round trip lost figures: %+v", back.Scenarios[0])
	}

	// The documented field names, and nulls where a figure does not apply.
	var raw struct {
		Machine   map[string]any   `json:"machine"`
		Commit    string           `json:"commit"`
		Scenarios []map[string]any `json:"scenarios"`
	}
	b, _ := json.Marshal(r)
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	if raw.Commit != "abc" || raw.Machine["cpus"] != float64(2) {
		t.Fatalf("machine/commit: %v %q", raw.Machine, raw.Commit)
	}
	sc := raw.Scenarios[0]
	for key, want := range map[string]any{"name": "small-closed", "unit": "req/s", "higher_is_better": true,
		"direct": 20000.0, "tunnel": 9000.0, "gateway_direct": 12000.0, "ratio": 0.45, "relay": 16000.0, "relay_ratio": 0.8} {
		if sc[key] != want {
			t.Errorf("scenarios[0].%s = %v, want %v", key, sc[key], want)
		}
	}
	mem := raw.Scenarios[1]
	for _, key := range []string{"direct", "gateway_direct", "ratio", "relay", "relay_ratio"} {
		if v, ok := mem[key]; !ok || v != nil {
			t.Errorf("streams.%s = %v (present %v), want null", key, v, ok)
		}
	}
	if got := len(r.Scenarios[0].ErrorSamples); got != 1 {
		t.Errorf("%d error samples, want duplicates dropped to 1", got)
	}
}

func TestSummarizeCurve(t *testing.T) {
	ps := CurvePercentiles()
	if ps[0] != 50 || ps[len(ps)-1] != 99.99 {
		t.Fatalf("curve from p%v to p%v, want 50 to 99.99", ps[0], ps[len(ps)-1])
	}
	var h hdr.Histogram
	for i := 1; i <= 1000; i++ {
		h.Record(time.Duration(i) * time.Millisecond)
	}
	l := Summarize(&h, 3)
	if l.Count != 1000 || l.Errors != 3 || l.Max != 1000 {
		t.Fatalf("summary %+v", l)
	}
	if l.P50 < 500 || l.P50 > 504 || l.P99 < 990 || l.P99 > 998 {
		t.Fatalf("p50 %v p99 %v", l.P50, l.P99)
	}
	for i := 1; i < len(l.Curve); i++ {
		if l.Curve[i].Ms < l.Curve[i-1].Ms {
			t.Fatalf("curve not monotonic at %v", l.Curve[i])
		}
	}
	if empty := Summarize(&hdr.Histogram{}, 0); len(empty.Curve) != 0 {
		t.Fatal("an empty histogram should have no curve")
	}
}

func TestSVGIsWellFormedWithOneLinePerPath(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteSVG(&buf, sampleReport()); err != nil {
		t.Fatal(err)
	}
	dec := xml.NewDecoder(&buf)
	polylines, texts := 0, []string{}
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("not well-formed XML: %v", err)
		}
		switch el := tok.(type) {
		case xml.StartElement:
			if el.Name.Local == "polyline" {
				polylines++
			}
		case xml.CharData:
			texts = append(texts, string(el))
		}
	}
	if polylines != 4 {
		t.Fatalf("%d lines, want 4 (direct, gateway_direct, tunnel, relay)", polylines)
	}
	all := strings.Join(texts, "|")
	for _, want := range []string{"small-closed", "p99.99", "tunnel", "relay", "latency, ms (log scale)"} {
		if !strings.Contains(all, want) {
			t.Errorf("chart has no %q", want)
		}
	}

	buf.Reset()
	if err := WriteSVG(&buf, &Report{}); err != nil {
		t.Fatal(err)
	}
	if err := xml.Unmarshal(buf.Bytes(), new(struct{})); err != nil || !strings.Contains(buf.String(), "no latency scenario") {
		t.Fatalf("empty chart: %v\n%s", err, buf.String())
	}
}

func TestTable(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteTable(&buf, sampleReport()); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{"small-closed", "20,000", "0.45", "FAIL", "streams", "KiB/stream", "ratio >= 0.25", "FAILED: profile ci"} {
		if !strings.Contains(out, want) {
			t.Errorf("table has no %q:\n%s", want, out)
		}
	}
	// The relay columns: the figure and its ratio, "-" where there is no
	// relay path; and the relay's latency row.
	lines := strings.Split(out, "\n")
	if h := strings.Fields(lines[0]); !slices.Equal(h, []string{"scenario", "unit", "direct", "gw-direct", "tunnel", "ratio", "relay", "relay-ratio", "result"}) {
		t.Errorf("header %q", h)
	}
	if row := strings.Fields(lines[1]); len(row) != 9 || row[6] != "16,000" || row[7] != "0.800" {
		t.Errorf("small-closed row %q", row)
	}
	if row := strings.Fields(lines[2]); len(row) != 9 || row[6] != "-" || row[7] != "-" {
		t.Errorf("streams row %q", row)
	}
	if !slices.ContainsFunc(lines, func(l string) bool {
		return strings.HasPrefix(strings.Join(strings.Fields(l), " "), "small-closed relay 10000 ")
	}) {
		t.Errorf("no relay latency row:\n%s", out)
	}
}

func TestNum(t *testing.T) {
	for v, want := range map[float64]string{0: "0", 1234567: "1,234,567", -2500: "-2,500", 512.34: "512.3", 3.14159: "3.14", 0.01234: "0.012"} {
		if got := Num(v); got != want {
			t.Errorf("Num(%v) = %q, want %q", v, got, want)
		}
	}
}
