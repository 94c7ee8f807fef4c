// Package heartbeat records what agents report in their heartbeats, and
// whether they are connected, in the control plane's cluster store, in
// batches: the gateway answers every heartbeat at once but writes each
// cluster's state at most once per flush interval.
package heartbeat

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/gateway/session"
	"github.com/pipeops/tunnel/shared/ratelog"
	"github.com/pipeops/tunnel/shared/tunnel"
)

// Defaults and limits.
const (
	// DefaultFlushInterval is how often Run writes, and so how stale the
	// stored state of a cluster can be.
	DefaultFlushInterval = 5 * time.Second
	// finalFlushTimeout bounds the flush Run makes on its way out, when
	// its own context has already ended.
	finalFlushTimeout = 5 * time.Second
	// minFlushTimeout is the least a periodic flush is given before the
	// clusters it has not written yet wait for the next one.
	minFlushTimeout = 10 * time.Second
	// statusFlushDelay is how soon after an agent connects or goes away
	// its cluster's status is written, rather than at the next periodic
	// flush: people watch that change (the console shows it live), and a
	// wave of reconnects within the delay still costs one flush.
	statusFlushDelay = 200 * time.Millisecond
)

// Recorder is a session.ControlHandler: it acknowledges heartbeats at once
// and writes each cluster's latest heartbeat to the ClusterStore in batches,
// every FlushInterval, so a thousand agents heartbeating every 5 s cost a
// bounded number of writes, not one per message: at most one per cluster
// per flush, and none for a cluster that said nothing new.
//
// Build it as a struct literal with at least Store; the other exported
// fields have defaults for their zero values and must not change once it is
// in use, and a Recorder must not be copied after first use. Give it to
// session.Config.Control, and its SessionStarted and SessionEnded to
// session.Config.OnConnect and OnDisconnect; run Run in a goroutine of the
// caller's for as long as the gateway serves agents, and stop it after the
// registry. Its methods are safe for concurrent use, and none of them waits
// for the store but Flush (and Run).
//
// What is stored is what the control plane's registration socket stores for
// a heartbeat, made by the same function (controlplane.HeartbeatRecord):
// status connected (disconnected when the agent says so) and the metadata
// map, with its strings cut to controlplane.MaxAgentText bytes and the
// monitoring endpoints without their passwords. The heartbeat's time is when the gateway received
// it; the agent's clock is not trusted. Between flushes the state lives only
// in memory: a gateway that crashes loses at most one interval of it, which
// the agents' next heartbeats restore.
type Recorder struct {
	// Store is where cluster states are written (required).
	Store controlplane.ClusterStore
	// GatewayID names this gateway in every state it writes (the
	// cluster's Gateway); "" leaves the stored name.
	GatewayID string
	// StillReached, when set, says whether another gateway holds a tunnel
	// to the cluster: the end of the last session here then does not mark
	// it disconnected (its agent moved to that gateway), whether the move
	// is known when the session ends or only by the flush. It must not
	// block.
	StillReached func(cluster string) bool
	// FlushInterval is how often Run flushes (default 5 s).
	FlushInterval time.Duration
	// Logger receives malformed heartbeats and failed writes, rate-limited
	// per kind and cluster (a line, then a count); nil discards.
	Logger *slog.Logger
	// Now is the clock for heartbeat times (default time.Now); for tests.
	Now func() time.Time
	// Metrics counts heartbeats and writes; nil counts nothing.
	Metrics *Metrics

	// logs rate-limits the lines an agent can cause once per message (a
	// malformed heartbeat) and those a flush writes per cluster, keyed by
	// kind and cluster; made on first use.
	logsOnce sync.Once
	logs     *ratelog.Limiter

	// flushMu makes flushes take turns: two flushes at once could write an
	// older snapshot of a cluster after a newer one.
	flushMu sync.Mutex

	mu sync.Mutex
	// pending is what the next flush writes, per cluster.
	pending map[string]update
	// last is the latest heartbeat of each connected cluster, so that a
	// status change without a heartbeat keeps the metadata it had.
	last map[string]snapshot
	// current is each cluster's sessions, as SessionStarted was told.
	current map[string]map[*session.Session]bool
	// statusChanged wakes Run for an early flush when a session starts or
	// ends (capacity 1: changes while one wake-up waits share it).
	statusChanged chan struct{}
}

// snapshot is one heartbeat as stored.
type snapshot struct {
	meta map[string]any // never changed once made: the store may read it while new heartbeats come
	at   time.Time
}

// update is a cluster's state waiting to be written.
type update struct {
	status string
	// hb is the heartbeat to store with status; nil when this gateway has
	// none for the cluster, in which case the flush keeps what the store
	// has.
	hb *snapshot
}

// initLocked makes the maps of a Recorder built as a struct literal.
// r.mu is held.
func (r *Recorder) initLocked() {
	if r.pending == nil {
		r.pending = make(map[string]update)
		r.last = make(map[string]snapshot)
		r.current = make(map[string]map[*session.Session]bool)
		r.statusChanged = make(chan struct{}, 1)
	}
}

func (r *Recorder) interval() time.Duration {
	if r.FlushInterval > 0 {
		return r.FlushInterval
	}
	return DefaultFlushInterval
}

var discard = slog.New(slog.DiscardHandler)

func (r *Recorder) log() *slog.Logger {
	if r.Logger != nil {
		return r.Logger
	}
	return discard
}

// limited returns the rate limiter of the lines below.
func (r *Recorder) limited() *ratelog.Limiter {
	r.logsOnce.Do(func() { r.logs = ratelog.New(r.log(), ratelog.Config{}) })
	return r.logs
}

// logLimited logs msg for cluster, once per interval per kind and cluster,
// then a count.
func (r *Recorder) logLimited(level slog.Level, kind, cluster, msg string, args ...any) {
	r.limited().Log(context.Background(), level, kind+"\x00"+cluster, msg, append([]any{"cluster", cluster}, args...)...)
}

func (r *Recorder) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

var _ session.ControlHandler = (*Recorder)(nil)

// HandleControl implements session.ControlHandler. A heartbeat is decoded
// (a malformed one is logged and dropped, the session carries on), kept as
// its cluster's latest, and answered with heartbeat_ack carrying its
// request_id. Other messages are not the Recorder's and are ignored. The
// cluster is the session's, which its token proved; the payload's
// cluster_id is not trusted.
func (r *Recorder) HandleControl(_ context.Context, s *session.Session, msg tunnel.Message) {
	if msg.Type != tunnel.TypeHeartbeat {
		return
	}
	if !r.heartbeat(s.Cluster, msg) {
		return
	}
	if err := s.Send(tunnel.TypeHeartbeatAck, tunnel.HeartbeatAck{}, msg.RequestID); err != nil {
		// The session is ending; its end is handled elsewhere.
		r.logLimited(slog.LevelDebug, "ack", s.Cluster, "send heartbeat_ack", "err", err)
	}
}

// heartbeat decodes msg and keeps it as cluster's latest heartbeat. It
// reports whether msg was a valid heartbeat.
func (r *Recorder) heartbeat(cluster string, msg tunnel.Message) bool {
	var hb tunnel.Heartbeat
	if err := msg.DecodePayload(&hb); err != nil {
		r.Metrics.heartbeat("malformed")
		r.logLimited(slog.LevelWarn, "malformed", cluster, "dropping malformed heartbeat", "msg", msg.String(), "err", err)
		return false
	}
	r.Metrics.heartbeat("ok")
	status, meta := controlplane.HeartbeatRecord(hb)
	snap := snapshot{meta: meta, at: r.now()}
	r.mu.Lock()
	r.initLocked()
	r.pending[cluster] = update{status: status, hb: &snap}
	r.last[cluster] = snap
	r.Metrics.setPending(len(r.pending))
	r.mu.Unlock()
	return true
}

// SessionStarted is for session.Config.OnConnect: it records that the
// session's cluster is connected, and remembers the session among the
// cluster's current ones for SessionEnded.
func (r *Recorder) SessionStarted(s *session.Session) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.initLocked()
	if r.current[s.Cluster] == nil {
		r.current[s.Cluster] = make(map[*session.Session]bool)
	}
	r.current[s.Cluster][s] = true
	r.setStatusLocked(s.Cluster, controlplane.ClusterConnected)
}

// SessionEnded is for session.Config.OnDisconnect: it records that the
// session's cluster is disconnected, unless the cluster has other sessions
// here: a newer one of the same agent (the registry ends the old session of
// an agent that reconnects, and that does not mean the agent is gone), or
// another replica's. With StillReached set, also unless another gateway
// holds the cluster.
//
// The registry tells of the new session and of the end of the old one from
// two goroutines, in either order. When the end comes first, the cluster is
// briefly disconnected and connected again; a flush that falls in between
// writes "disconnected", and the next one sets it right.
func (r *Recorder) SessionEnded(s *session.Session) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.initLocked()
	cur := r.current[s.Cluster]
	delete(cur, s)
	if len(cur) > 0 {
		return
	}
	delete(r.current, s.Cluster)
	if r.StillReached != nil && r.StillReached(s.Cluster) {
		return
	}
	r.disconnectedLocked(s.Cluster)
}

// Connected records, in the next flush, that cluster's agent has a session
// on this gateway. SessionStarted calls it; call it directly only when not
// using SessionStarted and SessionEnded.
func (r *Recorder) Connected(cluster string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.initLocked()
	r.setStatusLocked(cluster, controlplane.ClusterConnected)
}

// Disconnected records, in the next flush, that cluster's agent has no
// session on this gateway any more; the stored metadata and heartbeat time
// stay those of its last heartbeat. SessionEnded calls it, when the session
// that ended was the cluster's current one. Call it directly only after a
// session has ended (after Session.Close returned, so that no heartbeat of
// that session can come after it), and only when the cluster has no newer
// session.
func (r *Recorder) Disconnected(cluster string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.initLocked()
	r.disconnectedLocked(cluster)
}

func (r *Recorder) disconnectedLocked(cluster string) {
	r.setStatusLocked(cluster, controlplane.ClusterDisconnected)
	// Keep last bounded by the clusters connected here; the pending update
	// already holds what it needs.
	delete(r.last, cluster)
}

// setStatusLocked makes status the cluster's pending status, with the
// pending heartbeat or else the latest one seen here. r.mu is held.
func (r *Recorder) setStatusLocked(cluster, status string) {
	u, ok := r.pending[cluster]
	if !ok {
		if snap, ok := r.last[cluster]; ok {
			u.hb = &snap
		}
	}
	u.status = status
	r.pending[cluster] = u
	r.Metrics.setPending(len(r.pending))
	select {
	case r.statusChanged <- struct{}{}:
	default: // a wake-up is already waiting
	}
}

// Run flushes every FlushInterval, and within a fraction of a second of a
// session starting or ending, until ctx ends, then flushes once more
// (with a fresh context of a few seconds, since ctx has ended) and returns.
// Cancel ctx only once no more heartbeats can come (after the session
// registry has shut down), so that the last flush has them all. Flush
// failures are logged; what failed is retried in the next flush.
func (r *Recorder) Run(ctx context.Context) {
	t := time.NewTicker(r.interval())
	defer t.Stop()
	r.mu.Lock()
	r.initLocked()
	statusChanged := r.statusChanged
	r.mu.Unlock()
	flush := func() {
		// A flush that hangs on the database must not hold up the
		// ones after it forever; what it could not write is retried.
		fctx, cancel := context.WithTimeout(ctx, max(4*r.interval(), minFlushTimeout))
		err := r.Flush(fctx)
		cancel()
		if err != nil && ctx.Err() == nil {
			r.log().Warn("heartbeat flush", "err", err)
		}
	}
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finalFlushTimeout)
			defer cancel()
			if err := r.Flush(fctx); err != nil {
				r.log().Error("final heartbeat flush", "err", err)
			}
			r.limited().Flush() // the counts not written yet
			return
		case <-t.C:
			flush()
		case <-statusChanged:
			delay := time.NewTimer(statusFlushDelay)
			select {
			case <-ctx.Done():
				delay.Stop()
				continue // the final flush writes it
			case <-delay.C:
			}
			flush()
		}
	}
}

// Flush writes every cluster's pending state now, one RecordHeartbeat per
// cluster. Writes for clusters the store does not know (deleted since their
// agent connected) are dropped quietly; other failed writes are kept for the
// next flush, unless a newer state has come meanwhile, and reported in the
// error. Flushes take turns.
func (r *Recorder) Flush(ctx context.Context) error {
	r.flushMu.Lock()
	defer r.flushMu.Unlock()

	if r.Store == nil {
		return errors.New("heartbeat: Recorder.Store is not set")
	}
	r.mu.Lock()
	r.initLocked()
	batch := r.pending
	r.pending = make(map[string]update, len(batch))
	r.Metrics.setPending(0)
	r.mu.Unlock()
	if len(batch) == 0 {
		return nil
	}

	start := time.Now()
	defer func() { r.Metrics.flushed(time.Since(start)) }()
	var (
		failed   int
		firstErr error
	)
	clusters := slices.Sorted(maps.Keys(batch)) // a stable order makes logs comparable
	for i, cluster := range clusters {
		if err := ctx.Err(); err != nil {
			for _, c := range clusters[i:] {
				r.requeue(c, batch[c])
			}
			failed += len(clusters) - i
			firstErr = cmp.Or(firstErr, err)
			break
		}
		if u := batch[cluster]; u.status == controlplane.ClusterDisconnected && r.StillReached != nil && r.StillReached(cluster) {
			// The agent has moved to another gateway since its session
			// here ended: that gateway writes its state.
			continue
		}
		err := r.write(ctx, cluster, batch[cluster])
		switch code := controlplane.ErrorCode(err); {
		case err == nil:
			r.Metrics.write("ok")
		case code == controlplane.ENOTFOUND:
			// The cluster was deleted while its agent was connected;
			// nothing to record.
			r.Metrics.write("not_found")
			r.logLimited(slog.LevelDebug, "not_found", cluster, "heartbeat of an unknown cluster dropped")
		case code == controlplane.EINVALID:
			// Retrying cannot help; this is a bug, not an outage.
			r.Metrics.write("error")
			r.logLimited(slog.LevelError, "refused", cluster, "heartbeat refused by the store", "err", err)
		default:
			r.Metrics.write("error")
			r.requeue(cluster, batch[cluster])
			failed++
			firstErr = cmp.Or(firstErr, err)
		}
	}
	if failed > 0 {
		return fmt.Errorf("heartbeat flush: %d of %d clusters not written, kept for the next flush: %w", failed, len(clusters), firstErr)
	}
	return nil
}

// write stores one cluster's state.
func (r *Recorder) write(ctx context.Context, cluster string, u update) error {
	hb := u.hb
	if hb == nil {
		// A status change with no heartbeat seen here (the agent
		// connected and has not heartbeated yet, or this gateway
		// restarted): keep the stored metadata and heartbeat time (the
		// store takes a zero time, a cluster that never heartbeated, as
		// now).
		c, err := r.Store.Cluster(ctx, cluster)
		if err != nil {
			return err
		}
		hb = &snapshot{meta: c.Metadata, at: c.LastHeartbeat}
	}
	return r.Store.RecordHeartbeat(ctx, cluster, u.status, r.GatewayID, hb.meta, hb.at)
}

// requeue puts back an update a flush could not write, unless a newer one
// has come meanwhile.
func (r *Recorder) requeue(cluster string, u update) {
	r.mu.Lock()
	defer r.mu.Unlock()
	newer, ok := r.pending[cluster]
	switch {
	case !ok:
		r.pending[cluster] = u
	case newer.hb == nil:
		// A status change came; the heartbeat not written goes with it.
		newer.hb = u.hb
		r.pending[cluster] = newer
	}
	r.Metrics.setPending(len(r.pending))
}

// numPending is the number of clusters waiting for a flush.
func (r *Recorder) numPending() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.pending)
}
