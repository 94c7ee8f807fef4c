package controlplane_test

import (
	"math"
	"testing"
	"time"

	"github.com/pipeops/tunnel/controlplane"
)

// hist builds a histogram from bucket index -> count.
func hist(counts map[int]int64) *controlplane.TrafficHistogram {
	var h controlplane.TrafficHistogram
	for i, n := range counts {
		h[i] = n
	}
	return &h
}

func TestTrafficQuantile(t *testing.T) {
	last := controlplane.TrafficBuckets - 1
	cases := []struct {
		name string
		h    *controlplane.TrafficHistogram
		q    float64
		want float64
	}{
		{"empty", hist(nil), 0.5, 0},
		{"empty p99", hist(nil), 0.99, 0},
		// Buckets: [0,1] (1,2] (2,5] (5,10] (10,25] (25,50] (50,100] ...
		{"one bucket, its middle", hist(map[int]int64{3: 10}), 0.5, 7.5},
		{"one bucket, near its top", hist(map[int]int64{3: 100}), 0.99, 9.95},
		{"first bucket starts at 0", hist(map[int]int64{0: 4}), 0.5, 0.5},
		{"median on a bucket's edge", hist(map[int]int64{0: 5, 6: 5}), 0.5, 1},
		{"median past an edge", hist(map[int]int64{0: 5, 6: 6}), 0.5, 50 + 50*0.5/6},
		{"empty buckets between are skipped", hist(map[int]int64{1: 1, 9: 99}), 0.5, 500 + 500*49.0/99},
		{"p99 in the tail bucket", hist(map[int]int64{2: 98, 10: 2}), 0.99, 1000 + 1500*1.0/2},
		{"unbounded bucket gives the last bound", hist(map[int]int64{last: 3}), 0.5, 10000},
		{"p99 in the unbounded bucket", hist(map[int]int64{4: 90, last: 10}), 0.99, 10000},
		{"q 0 is the lowest bucket's start", hist(map[int]int64{5: 2, 7: 2}), 0, 25},
		{"q 1 is the highest bucket's end", hist(map[int]int64{5: 2, 7: 2}), 1, 250},
		{"q above 1 is 1", hist(map[int]int64{5: 2, 7: 2}), 7, 250},
		{"q below 0 is 0", hist(map[int]int64{5: 2, 7: 2}), -1, 25},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.h.Quantile(tc.q); math.Abs(got-tc.want) > 1e-9 {
				t.Errorf("Quantile(%v) = %v, want %v", tc.q, got, tc.want)
			}
		})
	}
}

// Histograms that add up give the quantile of all their requests together:
// what lets a window's p99 be estimated from its minutes' rows.
func TestTrafficHistogramsAddUp(t *testing.T) {
	a := controlplane.TrafficCounts{Requests: 50, Errors: 1, BytesIn: 10, BytesOut: 20, Latency: *hist(map[int]int64{0: 50})}
	b := controlplane.TrafficCounts{Requests: 50, Errors: 2, BytesIn: 1, BytesOut: 2, Latency: *hist(map[int]int64{8: 50})}
	a.Add(&b)
	want := controlplane.TrafficCounts{Requests: 100, Errors: 3, BytesIn: 11, BytesOut: 22, Latency: *hist(map[int]int64{0: 50, 8: 50})}
	if a != want {
		t.Fatalf("sum %+v, want %+v", a, want)
	}
	if p50, p99 := a.Latency.Quantile(0.5), a.Latency.Quantile(0.99); p50 != 1 || math.Abs(p99-(250+250*49.0/50)) > 1e-9 {
		t.Errorf("p50 %v p99 %v", p50, p99)
	}
}

func TestTrafficBucket(t *testing.T) {
	cases := []struct {
		d    time.Duration
		want int
	}{
		{0, 0},
		{time.Millisecond, 0}, // bounds are inclusive
		{time.Millisecond + 1, 1},
		{2 * time.Millisecond, 1},
		{7 * time.Millisecond, 3},
		{100 * time.Millisecond, 6},
		{999 * time.Millisecond, 9},
		{10 * time.Second, controlplane.TrafficBuckets - 2},
		{10*time.Second + 1, controlplane.TrafficBuckets - 1},
		{time.Hour, controlplane.TrafficBuckets - 1},
		{-time.Second, 0}, // a clock step back: the fastest bucket, not a panic
	}
	for _, tc := range cases {
		if got := controlplane.TrafficBucket(tc.d); got != tc.want {
			t.Errorf("TrafficBucket(%s) = %d, want %d", tc.d, got, tc.want)
		}
	}
}
