package clusterinfo

import (
	"encoding/json"
	"math"
	"testing"

	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/pipeops/tunnel/shared/tunnel"
)

// FuzzNodeUsage: whatever the metrics API answers, the heartbeat gets either
// "unavailable" (an error here) or a usage that is a real percentage: finite,
// not negative, the same after the heartbeat's JSON round trip, and in
// proportion to the capacity it is measured against.
func FuzzNodeUsage(f *testing.F) {
	for _, s := range []string{
		// What metrics-server answers.
		`{"kind":"NodeMetricsList","apiVersion":"metrics.k8s.io/v1beta1","metadata":{},"items":[` +
			`{"metadata":{"name":"node-a"},"timestamp":"2030-01-02T03:04:05Z","window":"20s","usage":{"cpu":"250m","memory":"1Gi"}},` +
			`{"metadata":{"name":"node-b"},"timestamp":"2030-01-02T03:04:05Z","window":"20s","usage":{"cpu":"1500000000n","memory":"3145728Ki"}}]}`,
		`{"items":[]}`,
		`{"items":[{"usage":{}}]}`,
		`{"items":[{"usage":{"cpu":"-1","memory":"-1Gi"}}]}`,
		`{"items":[{"usage":{"cpu":"9223372036854775807","memory":"9223372036854775807Ei"}}]}`,
		`{"items":[{"usage":{"cpu":"1e300","memory":"1e-300"}}]}`,
		`{"items":[{"usage":{"cpu":"x","memory":"1Gi"}}]}`,
		`{"items":null}`,
		`not json`,
		``,
	} {
		f.Add([]byte(s))
	}
	capCPU, capMem := resource.MustParse("4"), resource.MustParse("16Gi")
	f.Fuzz(func(t *testing.T, raw []byte) {
		cpu, mem, err := nodeUsage(raw, capCPU, capMem)
		if err != nil {
			if cpu != tunnel.UsageUnavailable || mem != tunnel.UsageUnavailable {
				t.Fatalf("usage %v, %v returned with error %v", cpu, mem, err)
			}
			return
		}
		for _, u := range []tunnel.Usage{cpu, mem} {
			if !u.Known || u.Percent < 0 || math.IsNaN(u.Percent) || math.IsInf(u.Percent, 0) {
				t.Fatalf("usage %#v from %q", u, raw)
			}
			b, err := json.Marshal(u)
			if err != nil {
				t.Fatalf("encoding %v: %v", u, err)
			}
			var back tunnel.Usage
			if err := json.Unmarshal(b, &back); err != nil || back != u {
				t.Fatalf("usage %#v went out as %s and came back as %#v, %v", u, b, back, err)
			}
		}
		// Twice the capacity, half the percentage.
		var twiceCPU, twiceMem resource.Quantity
		twiceCPU.Add(capCPU)
		twiceCPU.Add(capCPU)
		twiceMem.Add(capMem)
		twiceMem.Add(capMem)
		cpu2, mem2, err := nodeUsage(raw, twiceCPU, twiceMem)
		if err != nil {
			t.Fatalf("usage against twice the capacity: %v (against the capacity: %v, %v)", err, cpu, mem)
		}
		for _, p := range [][2]float64{{cpu.Percent, cpu2.Percent}, {mem.Percent, mem2.Percent}} {
			if math.Abs(p[0]/2-p[1]) > 1e-9*math.Max(1, p[0]) {
				t.Fatalf("%v%% of a capacity but %v%% of twice that", p[0], p[1])
			}
		}
	})
}
