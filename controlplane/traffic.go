package controlplane

import (
	"context"
	"time"
)

// TrafficBucketBounds are the upper bounds, in milliseconds, of the latency
// histogram's buckets; a last bucket counts what is slower than the last
// bound. They are part of the stored format (migrations/0007_traffic.sql):
// histograms of different minutes and gateways add up only because every
// writer uses the same bounds, so changing them needs a migration.
var TrafficBucketBounds = [...]int64{1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000}

// TrafficBuckets is the number of buckets of a TrafficHistogram: one per
// bound and the one beyond the last.
const TrafficBuckets = len(TrafficBucketBounds) + 1

// MaxTrafficMinutes bounds the window of a TrafficQuery: a day of minutes,
// the default retention.
const MaxTrafficMinutes = 24 * 60

// TrafficHistogram counts requests by how long they took: bucket i holds
// those that took more than bound i-1 and at most bound i (of
// TrafficBucketBounds), the last bucket those slower than every bound. The
// counts are per bucket, not cumulative, so histograms add up bucket by
// bucket.
type TrafficHistogram [TrafficBuckets]int64

// TrafficBucket returns the bucket of a request that took d.
func TrafficBucket(d time.Duration) int {
	for i, ms := range TrafficBucketBounds {
		if d <= time.Duration(ms)*time.Millisecond {
			return i
		}
	}
	return TrafficBuckets - 1
}

// Quantile estimates the q-quantile (0 < q < 1; 0.5 for the median) of the
// latencies h counts, in milliseconds, by linear interpolation within the
// bucket it falls in, the lowest bucket starting at 0. A quantile in the
// last, unbounded bucket is given as the last bound, which it is at least.
// An empty histogram gives 0. q outside [0, 1] is taken as the nearer end.
func (h *TrafficHistogram) Quantile(q float64) float64 {
	var total int64
	for _, n := range h {
		total += n
	}
	if total == 0 {
		return 0
	}
	q = min(max(q, 0), 1)
	rank := q * float64(total)
	var below int64 // requests in the buckets before i
	for i, n := range h {
		if n == 0 || float64(below+n) < rank {
			below += n
			continue
		}
		if i == len(TrafficBucketBounds) {
			break
		}
		lower := 0.0
		if i > 0 {
			lower = float64(TrafficBucketBounds[i-1])
		}
		upper := float64(TrafficBucketBounds[i])
		return lower + (upper-lower)*(rank-float64(below))/float64(n)
	}
	return float64(TrafficBucketBounds[len(TrafficBucketBounds)-1])
}

// TrafficCounts are the figures of some public requests: how many, how many
// failed (status 500 and above, the gateway's own 502, 503 and 504
// included), the body bytes received from visitors and sent to them, and
// how long they took.
type TrafficCounts struct {
	Requests int64
	Errors   int64
	BytesIn  int64
	BytesOut int64
	Latency  TrafficHistogram
}

// Add adds o to c.
func (c *TrafficCounts) Add(o *TrafficCounts) {
	c.Requests += o.Requests
	c.Errors += o.Errors
	c.BytesIn += o.BytesIn
	c.BytesOut += o.BytesOut
	for i := range c.Latency {
		c.Latency[i] += o.Latency[i]
	}
}

// TrafficDelta is what one gateway adds to a cluster's hostname's figures
// of one minute.
type TrafficDelta struct {
	Minute      time.Time // truncated to the minute
	ClusterUUID string
	Hostname    string // the matched route's hostname
	TrafficCounts
}

// TrafficQuery selects a cluster's public traffic, minute by minute.
type TrafficQuery struct {
	Cluster string // the cluster's uuid (required)
	// Host, when set, selects one hostname's traffic; empty sums every
	// hostname of the cluster.
	Host string
	// Since and Until are the first and the last minute of the window
	// (truncated to the minute; a zero Until is the current minute). The
	// window is at most MaxTrafficMinutes long.
	Since time.Time
	Until time.Time
}

// TrafficPoint is one minute of a cluster's (or a hostname's) traffic.
// P50Ms and P99Ms are estimated from the minute's histogram (see
// TrafficHistogram.Quantile); both are 0 for a minute without requests.
type TrafficPoint struct {
	Minute   time.Time
	Requests int64
	Errors   int64
	BytesIn  int64
	BytesOut int64
	P50Ms    float64
	P99Ms    float64
}

// TrafficHost is one hostname's traffic over a whole window, its quantiles
// estimated from the histograms of every minute of it added up.
type TrafficHost struct {
	Hostname string
	Requests int64
	Errors   int64
	BytesIn  int64
	BytesOut int64
	P50Ms    float64
	P99Ms    float64
}

// TrafficStore keeps the public traffic figures the gateways write.
type TrafficStore interface {
	// Traffic returns one point per minute of q's window, oldest first,
	// every minute present (zeros when nothing was served), so that a
	// chart has a steady x axis. A window longer than MaxTrafficMinutes,
	// or one that ends before it starts, is EINVALID.
	Traffic(ctx context.Context, q TrafficQuery) ([]TrafficPoint, error)
	// TrafficHosts returns each hostname of q.Cluster that served requests
	// in q's window, with its figures over the window, busiest first.
	// q.Host is ignored: the list is for choosing one.
	TrafficHosts(ctx context.Context, q TrafficQuery) ([]TrafficHost, error)
}
