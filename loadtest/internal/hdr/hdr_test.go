package hdr

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestBucketsCoverEveryValue(t *testing.T) {
	// Every bucket's bounds map back to it, and consecutive buckets tile the
	// number line with no gap or overlap.
	var next int64
	for i := 0; i < numBuckets; i++ {
		lo, hi := bounds(i)
		if lo != next {
			t.Fatalf("bucket %d starts at %d, want %d", i, lo, next)
		}
		if bucketOf(lo) != i || bucketOf(hi) != i {
			t.Fatalf("bucket %d [%d,%d] maps back to %d,%d", i, lo, hi, bucketOf(lo), bucketOf(hi))
		}
		if lo >= subBuckets {
			if width := float64(hi-lo+1) / float64(lo); width > 1.0/subBuckets+1e-12 {
				t.Fatalf("bucket %d [%d,%d] is %.4f of its value, more than 1/%d", i, lo, hi, width, subBuckets)
			}
		}
		if hi == math.MaxInt64 {
			if i != numBuckets-1 {
				t.Fatalf("bucket %d reaches MaxInt64 but is not the last", i)
			}
			return
		}
		next = hi + 1
	}
	t.Fatalf("buckets end at %d, before MaxInt64", next-1)
}

func TestQuantilesAgainstExact(t *testing.T) {
	cases := []struct {
		name string
		gen  func(r *rand.Rand) time.Duration
	}{
		{"uniform 0-10ms", func(r *rand.Rand) time.Duration { return time.Duration(r.Int64N(int64(10 * time.Millisecond))) }},
		{"exponential mean 300us", func(r *rand.Rand) time.Duration { return time.Duration(r.ExpFloat64() * 300e3) }},
		{"bimodal with a 1s tail", func(r *rand.Rand) time.Duration {
			if r.IntN(1000) == 0 {
				return time.Second + time.Duration(r.Int64N(int64(time.Second)))
			}
			return 200*time.Microsecond + time.Duration(r.Int64N(50e3))
		}},
		{"small exact values", func(r *rand.Rand) time.Duration { return time.Duration(r.IntN(100)) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(1, 2))
			var h Histogram
			vals := make([]time.Duration, 100_000)
			for i := range vals {
				vals[i] = tc.gen(r)
				h.Record(vals[i])
			}
			slices.Sort(vals)
			if h.Count() != int64(len(vals)) || h.Min() != vals[0] || h.Max() != vals[len(vals)-1] {
				t.Fatalf("count/min/max = %d/%v/%v, want %d/%v/%v", h.Count(), h.Min(), h.Max(), len(vals), vals[0], vals[len(vals)-1])
			}
			for _, q := range []float64{0.5, 0.9, 0.99, 0.999, 0.9999} {
				exact := vals[int(math.Ceil(q*float64(len(vals))))-1]
				got := h.Quantile(q)
				if got < exact {
					t.Errorf("q%.4f = %v, below the exact %v", q, got, exact)
				}
				if limit := exact + exact/subBuckets + 1; got > limit {
					t.Errorf("q%.4f = %v, more than one bucket above the exact %v", q, got, exact)
				}
			}
		})
	}
}

func TestMergeEqualsRecordingEverything(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	var all, a, b Histogram
	for i := 0; i < 10_000; i++ {
		d := time.Duration(r.Int64N(int64(time.Second)))
		all.Record(d)
		if i%3 == 0 {
			a.Record(d)
		} else {
			b.Record(d)
		}
	}
	var m Histogram
	m.Merge(&a)
	m.Merge(&b)
	m.Merge(&Histogram{})
	if m.Count() != all.Count() || m.Min() != all.Min() || m.Max() != all.Max() || m.Mean() != all.Mean() {
		t.Fatalf("merged count/min/max/mean %d/%v/%v/%v, want %d/%v/%v/%v",
			m.Count(), m.Min(), m.Max(), m.Mean(), all.Count(), all.Min(), all.Max(), all.Mean())
	}
	for _, p := range []float64{50, 99, 99.9} {
		if m.Percentile(p) != all.Percentile(p) {
			t.Errorf("p%v: merged %v, direct %v", p, m.Percentile(p), all.Percentile(p))
		}
	}
}

func TestEdges(t *testing.T) {
	var h Histogram
	if h.Quantile(0.5) != 0 || h.Mean() != 0 || h.Max() != 0 {
		t.Fatal("empty histogram should report zeros")
	}
	h.Record(-5)
	h.Record(time.Duration(math.MaxInt64))
	if h.Min() != 0 || h.Max() != time.Duration(math.MaxInt64) {
		t.Fatalf("min/max = %v/%v", h.Min(), h.Max())
	}
	if h.Quantile(0) != 0 || h.Quantile(1) != time.Duration(math.MaxInt64) || h.Quantile(math.NaN()) != 0 {
		t.Fatal("extreme quantiles should be the extremes")
	}
	h.Reset()
	h.Record(3 * time.Millisecond)
	if h.Quantile(0.5) != 3*time.Millisecond {
		t.Fatalf("one value: median %v, want it clamped to 3ms", h.Quantile(0.5))
	}
}

func TestRecordDoesNotAllocate(t *testing.T) {
	var h Histogram
	if n := testing.AllocsPerRun(1000, func() { h.Record(1234567) }); n != 0 {
		t.Fatalf("Record allocates %v times", n)
	}
}

func BenchmarkRecord(b *testing.B) {
	var h Histogram
	for i := 0; b.Loop(); i++ {
		h.Record(time.Duration(i * 977))
	}
}

func TestJSONRoundTrip(t *testing.T) {
	var h Histogram
	for i := 1; i <= 5000; i++ {
		h.Record(time.Duration(i*i) * time.Nanosecond)
	}
	b, err := json.Marshal(&h)
	if err != nil {
		t.Fatal(err)
	}
	var back Histogram
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back != h {
		t.Fatal("round trip changed the histogram")
	}
	for _, bad := range []string{
		`{"count":1,"buckets":[[99999,1]]}`,
		`{"count":2,"buckets":[[3,1]]}`,
		`{"count":1,"buckets":[[3,-1]]}`,
	} {
		if err := json.Unmarshal([]byte(bad), &back); err == nil {
			t.Errorf("%s: accepted", bad)
		}
	}
	var empty Histogram
	b, _ = json.Marshal(&empty)
	if err := json.Unmarshal(b, &back); err != nil || back.Count() != 0 {
		t.Fatalf("empty round trip: %v", err)
	}
}
