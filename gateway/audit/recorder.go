// Package audit records the Kubernetes API requests the gateway proxies, one
// controlplane.AuditEntry per finished request, in the control plane's
// database, and keeps that table bounded.
//
// Recording must never slow a request down or fail it: a Recorder queues
// entries in memory and writes them in batches from a goroutine of its own;
// when the database is slow or down the queue fills and further entries are
// dropped and counted, never waited for. An audit with gaps that says how
// large they are is the trade for a gateway that keeps serving.
package audit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/shared/ratelog"
)

// Defaults for a zero Config.
const (
	DefaultQueue         = 10000
	DefaultRetention     = 720 * time.Hour
	DefaultMaxRows       = 1_000_000
	DefaultPruneInterval = time.Hour
	DefaultBatchSize     = 500
	DefaultFlushInterval = time.Second
	DefaultRetries       = 3
	DefaultRetryBackoff  = 500 * time.Millisecond
	DefaultCloseTimeout  = 10 * time.Second

	// maxRetryBackoff caps the doubling of RetryBackoff.
	maxRetryBackoff = 10 * time.Second
	// writeTimeout bounds one attempt to write a batch: a database that
	// hangs must cost a retry, not the writer.
	writeTimeout = 10 * time.Second
)

// Reasons for dropping entries, the reason label of
// pipeops_gateway_audit_dropped_total.
const (
	DropQueueFull   = "queue_full"   // Record found the queue full
	DropWriteFailed = "write_failed" // the store failed every attempt at the batch
	DropClosed      = "closed"       // Record after Close (or after Run ended)
	DropShutdown    = "shutdown"     // still queued when the close timeout ran out
)

// Store is where entries go; *postgres.DB implements it.
type Store interface {
	// InsertAudit writes entries, all or none. It must not keep entries
	// after it returns: the Recorder reuses the slice.
	InsertAudit(ctx context.Context, entries []controlplane.AuditEntry) error
	// PruneAudit deletes entries older than olderThan and all but the
	// keepAtMost newest, returning how many it deleted.
	PruneAudit(ctx context.Context, olderThan time.Time, keepAtMost int64) (int64, error)
}

// Config configures a Recorder. Store is required; zero values of the
// others take the defaults above.
type Config struct {
	Store Store
	// Logger receives dropped entries (a line, then a count, per reason
	// and interval), failed writes and prunes; nil discards.
	Logger *slog.Logger
	// Metrics, when set, is where the Recorder registers its collectors
	// (pipeops_gateway_audit_*). New panics if they are registered there
	// already: that is a wiring mistake.
	Metrics prometheus.Registerer
	// Queue is how many entries wait for the writer at most (AUDIT_QUEUE,
	// default 10,000); Record drops entries beyond it.
	Queue int
	// Retention is how long entries are kept (AUDIT_RETENTION, default
	// 720h); MaxRows how many at most (AUDIT_MAX_ROWS, default 1,000,000),
	// across all gateways: the oldest beyond it are pruned.
	Retention time.Duration
	MaxRows   int64
	// PruneInterval is how often Run prunes (default 1h); it also prunes
	// once when it starts, so that gateways restarted more often than
	// that still prune.
	PruneInterval time.Duration
	// BatchSize is the most entries written at once (default 500);
	// FlushInterval how long a queued entry waits at most before it is
	// written (default 1s).
	BatchSize     int
	FlushInterval time.Duration
	// Retries is how many times a failed batch is tried again before it is
	// dropped (default 3; negative: never), after RetryBackoff, doubled
	// each time up to 10 s (default 500ms).
	Retries      int
	RetryBackoff time.Duration
	// CloseTimeout bounds the final flush of what is queued when Close is
	// called or Run's context ends (default 10s); what is left then is
	// dropped and counted.
	CloseTimeout time.Duration
	// Now is the clock for entries recorded without a time and for the
	// retention cutoff (default time.Now); for tests.
	Now func() time.Time
}

// Recorder queues audit entries and writes them to a Store in batches.
//
// Make it with New; call Record from request handlers (it never blocks);
// run Run in a goroutine of the caller's for as long as requests may be
// recorded; and call Close once no more requests are served (after the
// HTTP server has drained). Close makes Run write what is queued, bounded
// by CloseTimeout, and waits for it to return. Cancelling Run's context
// does the same, without waiting; Close is still safe after it. A Recorder
// whose Run was never called is flushed by Close itself. Entries recorded
// after Close, or after Run has ended, are dropped and counted.
//
// All methods are safe for concurrent use. A nil *Recorder records nothing.
type Recorder struct {
	cfg  Config
	log  *slog.Logger
	logs *ratelog.Limiter
	m    *metrics

	queue    chan controlplane.AuditEntry
	stop     chan struct{} // closed by Close
	stopOnce sync.Once
	runDone  chan struct{} // closed when Run returns
	flushed  chan struct{} // closed after the final flush (see finish)

	// mu guards the state below; Record holds it shared while it queues,
	// so that once closed is set under the exclusive lock nothing more
	// enters the queue and the final flush sees every entry.
	mu       sync.RWMutex
	closed   bool
	started  bool  // Run was called
	closeErr error // what the final flush failed to write

	dropped atomic.Int64 // all reasons, for the log lines
}

// New returns a Recorder; it starts no goroutine (see Run). It panics when
// cfg.Store is nil.
func New(cfg Config) *Recorder {
	if cfg.Store == nil {
		panic("audit: Config.Store is nil")
	}
	if cfg.Queue <= 0 {
		cfg.Queue = DefaultQueue
	}
	if cfg.Retention <= 0 {
		cfg.Retention = DefaultRetention
	}
	if cfg.MaxRows <= 0 {
		cfg.MaxRows = DefaultMaxRows
	}
	if cfg.PruneInterval <= 0 {
		cfg.PruneInterval = DefaultPruneInterval
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = DefaultBatchSize
	}
	if cfg.FlushInterval <= 0 {
		cfg.FlushInterval = DefaultFlushInterval
	}
	switch {
	case cfg.Retries == 0:
		cfg.Retries = DefaultRetries
	case cfg.Retries < 0:
		cfg.Retries = 0
	}
	if cfg.RetryBackoff <= 0 {
		cfg.RetryBackoff = DefaultRetryBackoff
	}
	if cfg.CloseTimeout <= 0 {
		cfg.CloseTimeout = DefaultCloseTimeout
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
		queue:   make(chan controlplane.AuditEntry, cfg.Queue),
		stop:    make(chan struct{}),
		runDone: make(chan struct{}),
		flushed: make(chan struct{}),
	}
	r.m = newMetrics(cfg.Metrics, func() float64 { return float64(len(r.queue)) })
	return r
}

// Record queues e to be written. It never blocks: when the queue is full,
// or the Recorder is closed, e is dropped and counted. A zero e.Time is
// taken as now. e is Normalized here, so that a huge path does not sit in
// the queue; the caller may reuse e's slices once Record returns.
func (r *Recorder) Record(e controlplane.AuditEntry) {
	if r == nil {
		return
	}
	if e.Time.IsZero() {
		e.Time = r.cfg.Now()
	}
	e = e.Normalized()
	r.mu.RLock()
	if r.closed {
		r.mu.RUnlock()
		r.drop(DropClosed, 1, nil)
		return
	}
	select {
	case r.queue <- e:
		r.mu.RUnlock()
		return
	default:
	}
	r.mu.RUnlock()
	r.drop(DropQueueFull, 1, nil)
}

// drop counts n dropped entries and logs it, at most one line per reason
// per interval (then a count of the repeats).
func (r *Recorder) drop(reason string, n int, err error) {
	r.m.dropped.WithLabelValues(reason).Add(float64(n))
	total := r.dropped.Add(int64(n))
	args := []any{"reason", reason, "entries", n, "dropped_total", total}
	if err != nil {
		args = append(args, "err", err)
	}
	r.logs.Log(context.Background(), slog.LevelWarn, "drop:"+reason, "audit entries dropped", args...)
}

// errInterrupted means a write was given up because the Recorder is
// stopping; its batch goes to the final flush.
var errInterrupted = errors.New("audit: write interrupted")

// Run writes queued entries in batches (BatchSize, or whatever is queued
// every FlushInterval) and prunes the store (at start, then every
// PruneInterval) until ctx ends or Close is called; then it writes what is
// still queued, for at most CloseTimeout, and returns. Call it once.
func (r *Recorder) Run(ctx context.Context) error {
	r.mu.Lock()
	if r.started {
		r.mu.Unlock()
		return errors.New("audit: Recorder.Run called twice")
	}
	r.started = true
	closed := r.closed
	r.mu.Unlock()
	defer close(r.runDone)
	if closed {
		// Close came first and flushed by itself.
		return nil
	}

	pruneCtx, stopPrune := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		r.pruneLoop(pruneCtx)
	}()
	leftover := r.writeLoop(ctx)
	stopPrune()
	wg.Wait()

	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.CloseTimeout)
	defer cancel()
	err := r.flushAll(fctx, leftover)
	r.finish(err)
	return err
}

// Close stops recording, makes Run write what is queued (for at most
// CloseTimeout) and waits for Run to return; it returns what the final
// flush could not write. Without a Run it flushes by itself. Calling it
// again waits the same way and returns the same.
func (r *Recorder) Close() error {
	if r == nil {
		return nil
	}
	r.mu.Lock()
	already, started := r.closed, r.started
	r.closed = true
	r.mu.Unlock()
	r.stopOnce.Do(func() { close(r.stop) })
	if !started && !already {
		ctx, cancel := context.WithTimeout(context.Background(), r.cfg.CloseTimeout)
		r.finish(r.flushAll(ctx, nil))
		cancel()
	}
	if started {
		<-r.runDone
	}
	<-r.flushed
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.closeErr
}

// finish records the final flush's result; it is called once, by Run or
// by a Close without Run.
func (r *Recorder) finish(err error) {
	r.mu.Lock()
	r.closeErr = err
	r.mu.Unlock()
	close(r.flushed)
}

// writeLoop writes batches until ctx ends or Close is called, and returns
// the batch it was holding then (not yet written).
func (r *Recorder) writeLoop(ctx context.Context) []controlplane.AuditEntry {
	tick := time.NewTicker(r.cfg.FlushInterval)
	defer tick.Stop()
	batch := make([]controlplane.AuditEntry, 0, r.cfg.BatchSize)
	write := func() bool {
		if err := r.write(ctx, r.stop, batch); errors.Is(err, errInterrupted) {
			return false
		}
		clear(batch)
		batch = batch[:0]
		return true
	}
	for {
		select {
		case <-ctx.Done():
			return batch
		case <-r.stop:
			return batch
		case e := <-r.queue:
			batch = r.fill(append(batch, e))
			if len(batch) >= r.cfg.BatchSize && !write() {
				return batch
			}
		case <-tick.C:
			if len(batch) > 0 && !write() {
				return batch
			}
		}
	}
}

// fill adds queued entries to batch, without waiting, up to BatchSize.
func (r *Recorder) fill(batch []controlplane.AuditEntry) []controlplane.AuditEntry {
	for len(batch) < r.cfg.BatchSize {
		select {
		case e := <-r.queue:
			batch = append(batch, e)
		default:
			return batch
		}
	}
	return batch
}

// flushAll writes batch and everything queued, until ctx ends; what it
// cannot write by then is dropped (DropShutdown). Nothing may be queued
// meanwhile (r.closed is set).
func (r *Recorder) flushAll(ctx context.Context, batch []controlplane.AuditEntry) error {
	defer r.logs.Flush() // the counts not logged yet
	var firstErr error
	for {
		batch = r.fill(batch)
		if len(batch) == 0 {
			return firstErr
		}
		err := r.write(ctx, nil, batch)
		if errors.Is(err, errInterrupted) {
			n := len(batch) + len(r.queue)
			for len(r.queue) > 0 {
				<-r.queue
			}
			r.drop(DropShutdown, n, ctx.Err())
			return fmt.Errorf("audit: %d entries not written within the close timeout %s: %w", n, r.cfg.CloseTimeout, ctx.Err())
		}
		if err != nil && firstErr == nil {
			firstErr = err
		}
		clear(batch)
		batch = batch[:0]
	}
}

// write stores batch, trying again after a failure up to Retries times
// with a growing backoff. It returns nil once written; the store's last
// error once it gave up (the batch is dropped and counted); errInterrupted
// when ctx ended or quit was closed first, leaving the batch to the caller.
func (r *Recorder) write(ctx context.Context, quit <-chan struct{}, batch []controlplane.AuditEntry) error {
	backoff := r.cfg.RetryBackoff
	for attempt := 0; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, writeTimeout)
		err := r.cfg.Store.InsertAudit(actx, batch)
		cancel()
		if err == nil {
			r.m.written.Add(float64(len(batch)))
			return nil
		}
		if ctx.Err() != nil {
			return errInterrupted
		}
		r.m.writeFailures.Inc()
		if attempt >= r.cfg.Retries {
			r.drop(DropWriteFailed, len(batch), err)
			return fmt.Errorf("audit: %d entries dropped after %d attempts: %w", len(batch), attempt+1, err)
		}
		r.logs.Log(ctx, slog.LevelWarn, "retry", "audit write failed; retrying", "entries", len(batch), "in", backoff, "err", err)
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-quit:
			t.Stop()
			return errInterrupted
		case <-ctx.Done():
			t.Stop()
			return errInterrupted
		}
		backoff = min(2*backoff, maxRetryBackoff)
	}
}

// pruneLoop prunes now and then every PruneInterval until ctx ends.
func (r *Recorder) pruneLoop(ctx context.Context) {
	t := time.NewTicker(r.cfg.PruneInterval)
	defer t.Stop()
	for {
		r.prune(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// prune deletes entries beyond Retention and MaxRows. Several gateways
// prune the same table; that is harmless, each row goes once.
func (r *Recorder) prune(ctx context.Context) {
	// A prune may take long on a large backlog, but not past the next one.
	pctx, cancel := context.WithTimeout(ctx, r.cfg.PruneInterval)
	defer cancel()
	start := time.Now()
	n, err := r.cfg.Store.PruneAudit(pctx, r.cfg.Now().Add(-r.cfg.Retention), r.cfg.MaxRows)
	r.m.pruned.Add(float64(n))
	switch {
	case err != nil && ctx.Err() == nil:
		r.log.Warn("audit prune", "deleted", n, "err", err)
	case n > 0:
		r.log.Info("audit entries pruned", "deleted", n, "retention", r.cfg.Retention, "max_rows", r.cfg.MaxRows, "took", time.Since(start).Round(time.Millisecond))
	}
}

// metrics are the Recorder's collectors.
type metrics struct {
	written       prometheus.Counter
	dropped       *prometheus.CounterVec
	writeFailures prometheus.Counter
	pruned        prometheus.Counter
	queued        prometheus.GaugeFunc
}

func newMetrics(reg prometheus.Registerer, queueLen func() float64) *metrics {
	const ns, sub = "pipeops_gateway", "audit"
	m := &metrics{
		written: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "written_total", Help: "Kubernetes API audit entries written to the database."}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "dropped_total", Help: "Kubernetes API audit entries dropped, by reason (queue_full, write_failed, closed, shutdown)."}, []string{"reason"}),
		writeFailures: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "write_failures_total", Help: "Failed attempts to write a batch of audit entries (each retried, up to a limit)."}),
		pruned: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "pruned_total", Help: "Audit entries this gateway deleted for retention or the row limit."}),
		queued: prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "queue_length", Help: "Audit entries waiting to be written."}, queueLen),
	}
	// Zeros, not gaps, on dashboards.
	for _, reason := range []string{DropQueueFull, DropWriteFailed, DropClosed, DropShutdown} {
		m.dropped.WithLabelValues(reason)
	}
	if reg != nil {
		reg.MustRegister(m.written, m.dropped, m.writeFailures, m.pruned, m.queued)
	}
	return m
}
