// Package traffic keeps per-minute figures of the gateway's public traffic
// (requests, errors, bytes, a latency histogram), per cluster and hostname,
// in the control plane's database, where a console charts the last hour
// without a Prometheus server.
//
// The request path only adds to counters in memory; a Recorder adds what
// it has counted into the database's rows every flush interval, one
// statement for all of it. The rows are sums: every gateway adds its own
// counts into the same rows, so they hold the traffic of all of them.
package traffic

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/shared/ratelog"
)

// Defaults for a zero Config.
const (
	DefaultFlushInterval = 10 * time.Second
	DefaultMaxKeys       = 10000
	DefaultRetention     = 24 * time.Hour
	DefaultPruneInterval = 10 * time.Minute
	DefaultPruneBatch    = 5000

	// finalFlushTimeout bounds the flush Run makes on its way out, when
	// its own context has already ended.
	finalFlushTimeout = 5 * time.Second
	// minFlushTimeout is the least a periodic flush is given; what it has
	// not written by then waits for the next one.
	minFlushTimeout = 10 * time.Second
	// pruneBudget bounds one prune's batches, so that a large backlog
	// (after an outage) holds the flushes up for no longer than that; the
	// next prune goes on with it.
	pruneBudget = 10 * time.Second
)

// Store is where the figures go; *postgres.DB implements it.
type Store interface {
	// AddTraffic adds deltas into the stored figures, all or none. It must
	// not keep deltas after it returns.
	AddTraffic(ctx context.Context, deltas []controlplane.TrafficDelta) error
	// PruneTraffic deletes at most limit rows of minutes before olderThan,
	// returning how many it deleted.
	PruneTraffic(ctx context.Context, olderThan time.Time, limit int) (int64, error)
}

// Config configures a Recorder. Store is required; zero values of the
// others take the defaults above.
type Config struct {
	Store Store
	// Logger receives failed flushes and prunes, and requests not counted
	// because of MaxKeys (a line, then a count, per interval); nil
	// discards.
	Logger *slog.Logger
	// Metrics, when set, is where the Recorder registers its collectors
	// (pipeops_gateway_traffic_*). New panics if they are registered there
	// already: that is a wiring mistake.
	Metrics prometheus.Registerer
	// FlushInterval is how often Run adds the counts into the store
	// (default 10 s), and so how far behind the charts are.
	FlushInterval time.Duration
	// MaxKeys bounds the (cluster, hostname, minute) figures held between
	// flushes (default 10,000), and so the memory they take (about 200
	// bytes each) when the store is down: a request of a further key is
	// not counted, and counted as such (overflow_total). The same bound
	// holds the figures a failed flush keeps for the next one.
	MaxKeys int
	// Retention is how long rows are kept (TRAFFIC_RETENTION, default 24h);
	// Run deletes older ones every PruneInterval (default 10m) and when it
	// starts, PruneBatch rows per statement (default 5,000).
	Retention     time.Duration
	PruneInterval time.Duration
	PruneBatch    int
	// Now is the clock that places requests in their minute and sets the
	// retention cutoff (default time.Now); for tests.
	Now func() time.Time
}

// key is what a figure is kept by: the minute (since the Unix epoch) and
// the route's cluster and hostname.
type key struct {
	minute  int64
	cluster string
	host    string
}

// Recorder counts public requests and adds the counts into a Store.
//
// Make it with New; call Observe from the request path; run Run in a
// goroutine of the caller's for as long as requests are served, and end it
// after the last request (Run flushes once more on its way out). Observe
// after Run has ended is counted and never written.
//
// All methods are safe for concurrent use. A nil *Recorder counts nothing.
type Recorder struct {
	cfg  Config
	log  *slog.Logger
	logs *ratelog.Limiter
	m    *metrics

	// flushMu makes flushes take turns: a failed flush puts its figures
	// back, and another flush must not run meanwhile and miss them.
	flushMu sync.Mutex

	mu sync.Mutex
	// pending is what the next flush adds. spare is the map a flush took
	// before, emptied: handing it back to pending keeps a steady load from
	// allocating map buckets anew every flush.
	pending map[key]controlplane.TrafficCounts
	spare   map[key]controlplane.TrafficCounts
}

// New returns a Recorder; it starts no goroutine (see Run). It panics when
// cfg.Store is nil.
func New(cfg Config) *Recorder {
	if cfg.Store == nil {
		panic("traffic: Config.Store is nil")
	}
	if cfg.FlushInterval <= 0 {
		cfg.FlushInterval = DefaultFlushInterval
	}
	if cfg.MaxKeys <= 0 {
		cfg.MaxKeys = DefaultMaxKeys
	}
	if cfg.Retention <= 0 {
		cfg.Retention = DefaultRetention
	}
	if cfg.PruneInterval <= 0 {
		cfg.PruneInterval = DefaultPruneInterval
	}
	if cfg.PruneBatch <= 0 {
		cfg.PruneBatch = DefaultPruneBatch
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Recorder{
		cfg:     cfg,
		log:     log,
		logs:    ratelog.New(log, ratelog.Config{}),
		m:       newMetrics(cfg.Metrics),
		pending: make(map[key]controlplane.TrafficCounts),
	}
	return r
}

// Observe counts one finished public request of cluster's route for host
// (the route's hostname, so that visitors cannot make up keys): its status
// (500 and above is an error), the body bytes read from the visitor and
// written to it, and how long it took. It takes a lock for a map update and
// allocates only for a key the current minute has not seen.
func (r *Recorder) Observe(cluster, host string, status int, bytesIn, bytesOut int64, d time.Duration) {
	if r == nil {
		return
	}
	k := key{minute: r.cfg.Now().Unix() / 60, cluster: cluster, host: host}
	bucket := controlplane.TrafficBucket(d)
	r.mu.Lock()
	c, ok := r.pending[k]
	if !ok && len(r.pending) >= r.cfg.MaxKeys {
		r.mu.Unlock()
		r.overflow(1, "overflow:observe", "traffic figures at their limit: requests of further clusters, hosts and minutes are not counted until the next flush")
		return
	}
	c.Requests++
	if status >= 500 {
		c.Errors++
	}
	c.BytesIn += max(bytesIn, 0)
	c.BytesOut += max(bytesOut, 0)
	c.Latency[bucket]++
	r.pending[k] = c
	r.mu.Unlock()
}

// overflow counts n requests not recorded because of MaxKeys, with a log
// line per interval and logKey (then a count of the repeats).
func (r *Recorder) overflow(n int64, logKey, msg string) {
	r.m.overflow.Add(float64(n))
	r.logs.Log(context.Background(), slog.LevelWarn, logKey, msg, "max_keys", r.cfg.MaxKeys, "requests", n)
}

// Run flushes every FlushInterval, and prunes rows beyond the retention at
// start and every PruneInterval, until ctx ends; then it flushes once more
// (with a fresh context of a few seconds, since ctx has ended) and returns.
// End ctx only once no more requests are served (after the HTTP servers
// have drained), so that the last flush has them all. Failures are logged;
// what a flush failed to write is tried again by the next one.
func (r *Recorder) Run(ctx context.Context) {
	flush := time.NewTicker(r.cfg.FlushInterval)
	defer flush.Stop()
	prune := time.NewTicker(r.cfg.PruneInterval)
	defer prune.Stop()
	r.prune(ctx)
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finalFlushTimeout)
			defer cancel()
			if err := r.Flush(fctx); err != nil {
				r.log.Error("final traffic flush", "err", err)
			}
			r.logs.Flush() // the counts not logged yet
			return
		case <-flush.C:
			// A flush that hangs on the database must not hold up the ones
			// after it forever; what it could not write is kept.
			fctx, cancel := context.WithTimeout(ctx, max(4*r.cfg.FlushInterval, minFlushTimeout))
			err := r.Flush(fctx)
			cancel()
			if err != nil && ctx.Err() == nil {
				r.logs.Log(ctx, slog.LevelWarn, "flush", "traffic flush failed; its figures are kept for the next one", "err", err)
			}
		case <-prune.C:
			r.prune(ctx)
		}
	}
}

// Flush adds every figure counted since the last flush into the store, in
// one statement. When that fails the figures are kept and added to those
// counted meanwhile, for the next flush (as many as MaxKeys allows; the
// requests of the others are counted in overflow_total), and the error is
// returned. Flushes take turns.
func (r *Recorder) Flush(ctx context.Context) error {
	if r == nil {
		return nil
	}
	r.flushMu.Lock()
	defer r.flushMu.Unlock()

	r.mu.Lock()
	batch := r.pending
	r.pending = r.spare
	if r.pending == nil {
		r.pending = make(map[key]controlplane.TrafficCounts, len(batch))
	}
	r.spare = nil
	r.mu.Unlock()
	r.m.keys.Set(float64(len(batch)))
	if len(batch) == 0 {
		r.recycle(batch)
		return nil
	}

	start := time.Now()
	err := r.cfg.Store.AddTraffic(ctx, deltas(batch))
	r.m.flushSeconds.Observe(time.Since(start).Seconds())
	if err == nil {
		r.m.flushes.WithLabelValues("ok").Inc()
		r.recycle(batch)
		return nil
	}
	r.m.flushes.WithLabelValues("error").Inc()
	r.keep(batch)
	return fmt.Errorf("traffic: add %d figures: %w", len(batch), err)
}

// recycle empties a flushed map and keeps it for the flush after next.
func (r *Recorder) recycle(m map[key]controlplane.TrafficCounts) {
	clear(m)
	r.mu.Lock()
	if r.spare == nil {
		r.spare = m
	}
	r.mu.Unlock()
}

// keep puts the figures of a failed flush back, adding to them what was
// counted since; figures beyond MaxKeys are dropped, oldest minutes first,
// and their requests counted as overflow.
func (r *Recorder) keep(failed map[key]controlplane.TrafficCounts) {
	r.mu.Lock()
	newer := r.pending
	for k, c := range newer {
		old, ok := failed[k]
		if ok {
			old.Add(&c)
			failed[k] = old
		} else {
			failed[k] = c
		}
	}
	var dropped int64
	if excess := len(failed) - r.cfg.MaxKeys; excess > 0 {
		keys := slices.SortedFunc(maps.Keys(failed), func(a, b key) int { return cmp.Compare(a.minute, b.minute) })
		for _, k := range keys[:excess] {
			dropped += failed[k].Requests
			delete(failed, k)
		}
	}
	r.pending = failed
	clear(newer)
	if r.spare == nil {
		r.spare = newer
	}
	r.mu.Unlock()
	if dropped > 0 {
		r.overflow(dropped, "overflow:kept", "traffic figures kept after a failed flush are over the limit: the oldest minutes' are dropped")
	}
}

// deltas lists a batch in key order (the store sorts it too; this keeps
// the statement's parameters, and so any error it logs, the same from one
// flush to the next).
func deltas(batch map[key]controlplane.TrafficCounts) []controlplane.TrafficDelta {
	out := make([]controlplane.TrafficDelta, 0, len(batch))
	for k, c := range batch {
		out = append(out, controlplane.TrafficDelta{Minute: time.Unix(k.minute*60, 0).UTC(), ClusterUUID: k.cluster, Hostname: k.host, TrafficCounts: c})
	}
	slices.SortFunc(out, func(a, b controlplane.TrafficDelta) int {
		return cmp.Or(a.Minute.Compare(b.Minute), strings.Compare(a.ClusterUUID, b.ClusterUUID), strings.Compare(a.Hostname, b.Hostname))
	})
	return out
}

// prune deletes rows older than the retention, PruneBatch at a time, for at
// most pruneBudget. Several gateways prune the same table; each row goes
// once.
func (r *Recorder) prune(ctx context.Context) {
	pctx, cancel := context.WithTimeout(ctx, pruneBudget)
	defer cancel()
	cutoff := r.cfg.Now().Add(-r.cfg.Retention)
	var total int64
	var err error
	for pctx.Err() == nil {
		var n int64
		n, err = r.cfg.Store.PruneTraffic(pctx, cutoff, r.cfg.PruneBatch)
		total += n
		if err != nil || n < int64(r.cfg.PruneBatch) {
			break
		}
	}
	r.m.pruned.Add(float64(total))
	switch {
	case err != nil && ctx.Err() == nil && !errors.Is(err, context.DeadlineExceeded):
		r.log.Warn("traffic prune", "deleted", total, "err", err)
	case total > 0:
		r.log.Info("traffic figures pruned", "deleted", total, "retention", r.cfg.Retention)
	}
}

// metrics are the Recorder's collectors.
type metrics struct {
	overflow     prometheus.Counter
	flushes      *prometheus.CounterVec
	flushSeconds prometheus.Histogram
	keys         prometheus.Gauge
	pruned       prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	const ns, sub = "pipeops_gateway", "traffic"
	m := &metrics{
		overflow: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "overflow_total", Help: "Public requests left out of the traffic figures because as many (cluster, host, minute) figures as allowed were held already."}),
		flushes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "flushes_total", Help: "Writes of the traffic figures to the database, by result (ok, error); a failed one is tried again with the next."}, []string{"result"}),
		flushSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub,
			Name: "flush_duration_seconds", Help: "Time to write one flush of traffic figures.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 8)}),
		keys: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "flush_keys", Help: "(cluster, host, minute) figures in the latest flush."}),
		pruned: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "pruned_total", Help: "Traffic rows this gateway deleted for retention."}),
	}
	// Zeros, not gaps, on dashboards.
	for _, l := range []string{"ok", "error"} {
		m.flushes.WithLabelValues(l)
	}
	if reg != nil {
		reg.MustRegister(m.overflow, m.flushes, m.flushSeconds, m.keys, m.pruned)
	}
	return m
}
