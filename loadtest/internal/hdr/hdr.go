// Package hdr is a latency histogram with bounded relative error over the
// whole range of durations, in the manner of an HDR histogram: values below
// 2^SubBucketBits nanoseconds are counted exactly, larger ones in buckets
// whose width is at most 1/2^SubBucketBits of their value (0.8 %). Recording
// is a few instructions and never allocates, so a load generator can record
// every request.
//
// A Histogram is not safe for concurrent use: give each goroutine its own and
// Merge them when the run is over.
package hdr

import (
	"encoding/json"
	"fmt"
	"math"
	"math/bits"
	"time"
)

// SubBucketBits sets the precision: each power of two is split into
// 2^SubBucketBits buckets.
const SubBucketBits = 7

const (
	subBuckets = 1 << SubBucketBits
	// numBuckets covers every non-negative int64: the exact range, then one
	// row of subBuckets per power of two from 2^SubBucketBits to 2^62.
	numBuckets = (64 - SubBucketBits) * subBuckets
)

// Histogram counts durations. The zero value is empty and ready to use.
type Histogram struct {
	counts   [numBuckets]int64
	count    int64
	sum      float64 // nanoseconds, for the mean
	min, max int64
}

// bucketOf returns the bucket index of v >= 0.
func bucketOf(v int64) int {
	if v < subBuckets {
		return int(v)
	}
	msb := bits.Len64(uint64(v)) - 1 // >= SubBucketBits
	shift := msb - SubBucketBits
	sub := int(v>>shift) - subBuckets
	return (shift+1)*subBuckets + sub
}

// bounds returns the smallest and largest value that fall in bucket i.
func bounds(i int) (lo, hi int64) {
	if i < subBuckets {
		return int64(i), int64(i)
	}
	shift := i/subBuckets - 1
	sub := int64(i % subBuckets)
	lo = (subBuckets + sub) << shift
	return lo, lo + (int64(1) << shift) - 1
}

// Record counts one duration. Negative durations count as zero.
func (h *Histogram) Record(d time.Duration) {
	v := max(int64(d), 0)
	h.counts[bucketOf(v)]++
	if h.count == 0 || v < h.min {
		h.min = v
	}
	if v > h.max {
		h.max = v
	}
	h.count++
	h.sum += float64(v)
}

// Merge adds o's counts to h.
func (h *Histogram) Merge(o *Histogram) {
	if o.count == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.count == 0 || o.min < h.min {
		h.min = o.min
	}
	h.max = max(h.max, o.max)
	h.count += o.count
	h.sum += o.sum
}

// Reset empties h.
func (h *Histogram) Reset() { *h = Histogram{} }

// Count is the number of recorded values.
func (h *Histogram) Count() int64 { return h.count }

// Min and Max are the exact extremes (0 when empty).
func (h *Histogram) Min() time.Duration { return time.Duration(h.min) }

// Max is the largest recorded value.
func (h *Histogram) Max() time.Duration { return time.Duration(h.max) }

// Mean is the exact mean (0 when empty).
func (h *Histogram) Mean() time.Duration {
	if h.count == 0 {
		return 0
	}
	return time.Duration(h.sum / float64(h.count))
}

// Quantile returns the value at quantile q (0 <= q <= 1): the smallest
// value that at least q of the recorded values do not exceed, reported as
// the top of its bucket (clamped to the recorded extremes), so it may
// overstate by at most one bucket width and never understates. An empty
// histogram returns 0.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.count == 0 {
		return 0
	}
	if math.IsNaN(q) || q <= 0 {
		return time.Duration(h.min)
	}
	if q >= 1 {
		return time.Duration(h.max)
	}
	rank := int64(math.Ceil(q * float64(h.count)))
	rank = min(max(rank, 1), h.count)
	var seen int64
	for i, c := range h.counts {
		if c == 0 {
			continue
		}
		seen += c
		if seen >= rank {
			_, hi := bounds(i)
			return time.Duration(min(max(hi, h.min), h.max))
		}
	}
	return time.Duration(h.max)
}

// Percentile is Quantile(p/100).
func (h *Histogram) Percentile(p float64) time.Duration { return h.Quantile(p / 100) }

// wire is the JSON form of a Histogram: the non-empty buckets only, so a
// histogram crosses a process boundary in a few hundred bytes.
type wire struct {
	Count   int64      `json:"count"`
	Sum     float64    `json:"sum_ns"`
	Min     int64      `json:"min_ns"`
	Max     int64      `json:"max_ns"`
	Buckets [][2]int64 `json:"buckets"` // [index, count]
}

// MarshalJSON encodes h sparsely.
func (h *Histogram) MarshalJSON() ([]byte, error) {
	w := wire{Count: h.count, Sum: h.sum, Min: h.min, Max: h.max, Buckets: [][2]int64{}}
	for i, c := range h.counts {
		if c != 0 {
			w.Buckets = append(w.Buckets, [2]int64{int64(i), c})
		}
	}
	return json.Marshal(w)
}

// UnmarshalJSON decodes what MarshalJSON encoded, refusing bucket indexes
// out of range and counts that do not add up.
func (h *Histogram) UnmarshalJSON(b []byte) error {
	var w wire
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	*h = Histogram{count: w.Count, sum: w.Sum, min: w.Min, max: w.Max}
	var total int64
	for _, bc := range w.Buckets {
		if bc[0] < 0 || bc[0] >= numBuckets || bc[1] < 0 {
			return fmt.Errorf("hdr: bucket %d count %d out of range", bc[0], bc[1])
		}
		h.counts[bc[0]] += bc[1]
		total += bc[1]
	}
	if total != w.Count {
		return fmt.Errorf("hdr: buckets hold %d values, count says %d", total, w.Count)
	}
	return nil
}
