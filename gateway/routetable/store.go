package routetable

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pipeops/tunnel/controlplane"
)

// Source is where a Store gets its routes: full snapshots, and a feed of
// change notifications that says when a snapshot is out of date. The
// control plane's PostgreSQL store (controlplane/postgres.DB) is the real
// one; package routetest has one in memory.
type Source interface {
	// ServedRoutes returns every route that is served now (verified
	// hostname, not expired).
	ServedRoutes(ctx context.Context) ([]controlplane.Route, error)
	// Clusters returns every cluster.
	Clusters(ctx context.Context) ([]*controlplane.Cluster, error)
	// ServedRoutesOf returns the served routes of one cluster and the
	// cluster, nil (and no error) when there is no such cluster.
	ServedRoutesOf(ctx context.Context, clusterUUID string) ([]controlplane.Route, *controlplane.Cluster, error)
	// FollowRoutes delivers changes until ctx ends (returning ctx's error)
	// or the feed breaks (returning why). It calls listening once every
	// change committed from then on will be delivered, and changed for each
	// change, in order, on its own goroutine, waiting for it to return.
	// Changes made while no FollowRoutes runs are never delivered.
	FollowRoutes(ctx context.Context, listening func(), changed func(controlplane.RouteChange)) error
}

// serverAnswered tells a Source error that came back from a server that
// answered (a query error: PostgreSQL errors carry a SQL state) from one
// where no answer came, so that the connection itself is in doubt.
func serverAnswered(err error) bool {
	var answered interface{ SQLState() string }
	return errors.As(err, &answered)
}

// Errors of Store.Run and Store.WaitLoaded.
var (
	// ErrNoSource is Run's answer for a Store made without a Source.
	ErrNoSource = errors.New("routetable: store has no route source")
	// ErrAlreadyStarted is Run's answer when Run was called before on the
	// same Store: a Store follows the database from one goroutine only.
	ErrAlreadyStarted = errors.New("routetable: store already started")
	// ErrStopped is WaitLoaded's answer when Run returned before any load
	// succeeded, so that none ever will.
	ErrStopped = errors.New("routetable: store stopped before its first load")
)

// Defaults of Options.
const (
	DefaultReloadInterval = 5 * time.Minute
	DefaultRetryInterval  = time.Second
	// MaxRetryInterval caps the exponential backoff after failures (unless
	// RetryInterval alone is longer).
	MaxRetryInterval      = 30 * time.Second
	DefaultCoalesceWindow = 50 * time.Millisecond
	DefaultLoadTimeout    = 30 * time.Second
)

// errRestart ends a listener connection that the reloader found the network
// path to be broken for; it never leaves the package.
var errRestart = errors.New("reconnecting after a failed reload")

// Options configure a Store. Zero fields take their defaults.
type Options struct {
	// ReloadInterval is the backstop: the table is reloaded in full when no
	// reload happened for this long, whatever the notifications say. It is
	// also how old the table may get, while not listening, before Status
	// calls it stale. Default 5 minutes.
	ReloadInterval time.Duration
	// RetryInterval is the first delay before reconnecting or reloading
	// again after a database failure; it doubles with each further failure
	// up to MaxRetryInterval. Default 1 second.
	RetryInterval time.Duration
	// CoalesceWindow is how long a reload waits after a change notification
	// for more to arrive, so that a burst of changes costs one reload.
	// Default 50 ms.
	CoalesceWindow time.Duration
	// LoadTimeout bounds one full reload, so that a database that stopped
	// answering without closing the connection cannot hold reloads up
	// forever. Default 30 seconds.
	LoadTimeout time.Duration
	// Logger receives load, reconnect and failure messages; nil discards
	// them.
	Logger *slog.Logger
	// Metrics, when set, is where the Store registers its collectors (it
	// panics if they are registered already: one Store per registry).
	Metrics prometheus.Registerer
	// Now is the clock of Status.LastLoad and of its staleness; tests
	// replace it. Default time.Now. Durations the Store measures itself
	// (delays, the notification lag metric) use the real clock.
	Now func() time.Time
}

// Status describes how current a Store's table is, for readiness probes and
// diagnostics.
type Status struct {
	// Loaded is true once a load succeeded; until then every lookup misses.
	Loaded bool
	// Routes is the number of routes in the current table.
	Routes int
	// LastLoad is when the last successful load finished (Options.Now).
	LastLoad time.Time
	// Listening is true while the Store is subscribed to route change
	// notifications, so that changes reach the table within moments.
	Listening bool
	// LastError is the most recent failure not yet overcome: a failed load
	// until a load succeeds, a lost notification connection until it is
	// back. Empty when all is well.
	LastError string
	// Stale is true when the table cannot be trusted to be current: it was
	// never loaded, or the Store is not listening and the last load is
	// older than ReloadInterval.
	Stale bool
}

// Store keeps the gateway's current route Table and follows PostgreSQL to
// keep it current. Lookups are served from memory only, never with a
// database round trip; when PostgreSQL is unreachable the Store keeps
// serving its last table and says so in Status.
//
// Make one with NewStore and run Run once, on a goroutine the caller owns;
// every other method is safe for concurrent use at any time, before, during
// and after Run, and Lookup and Table never block.
type Store struct {
	src  Source
	opts Options
	log  *slog.Logger
	m    *metrics

	table   atomic.Pointer[Table] // never nil
	started atomic.Bool
	loaded  chan struct{} // closed by the first successful load
	stopped chan struct{} // closed when Run returns
	// wake tells the reloader that a reload is pending; restart tells the
	// listener to drop its connection. Both hold one signal: more would say
	// nothing new.
	wake    chan struct{}
	restart chan struct{}

	// bodySizeLogged holds the body size annotation problems already
	// logged (bodySizeProblem.key), so that each is logged once, not on
	// every reload. Only the reload loop uses it.
	bodySizeLogged map[string]struct{}

	mu          sync.Mutex // guards the fields below
	pending     reloadRequest
	isLoaded    bool
	lastLoad    time.Time
	listening   bool
	loadErr     string
	loadErrAt   time.Time
	listenErr   string
	listenErrAt time.Time
}

// reloadRequest is what the reloader owes: whether a reload is due, whether
// it may wait for a burst to gather, whether it must be a full one or which
// clusters' changes it must load, and since when a notification waits.
type reloadRequest struct {
	due      bool
	urgent   bool
	full     bool
	clusters map[string]struct{} // with full unset: the clusters to reload
	notified time.Time           // receipt of the oldest unserved notification; zero: none
}

// maxClusterReloads is how many clusters one round reloads one by one; a
// burst naming more costs a full reload instead.
const maxClusterReloads = 64

// NewStore returns a Store that loads from src once Run runs; until the
// first load its table is empty. The caller keeps ownership of src, which
// must stay usable until Run has returned.
func NewStore(src Source, opts Options) *Store {
	if opts.ReloadInterval <= 0 {
		opts.ReloadInterval = DefaultReloadInterval
	}
	if opts.RetryInterval <= 0 {
		opts.RetryInterval = DefaultRetryInterval
	}
	if opts.CoalesceWindow <= 0 {
		opts.CoalesceWindow = DefaultCoalesceWindow
	}
	if opts.LoadTimeout <= 0 {
		opts.LoadTimeout = DefaultLoadTimeout
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Store{
		src:     src,
		opts:    opts,
		log:     log,
		m:       newMetrics(opts.Metrics),
		loaded:  make(chan struct{}),
		stopped: make(chan struct{}),
		wake:    make(chan struct{}, 1),
		restart: make(chan struct{}, 1),
	}
	s.table.Store(NewTable(nil, nil))
	return s
}

// Lookup finds the route for host and path in the current table; see
// Table.Lookup. It never touches the database.
func (s *Store) Lookup(host, path string) (Match, bool) {
	return s.table.Load().Lookup(host, path)
}

// Table returns the current table (empty before the first load, never
// nil). It stays valid and unchanged however the Store moves on, so a
// caller doing several lookups that must agree can hold on to it.
func (s *Store) Table() *Table {
	return s.table.Load()
}

// WaitLoaded blocks until the first load succeeded (nil), ctx ends (its
// error) or Run returned without ever loading (ErrStopped).
func (s *Store) WaitLoaded(ctx context.Context) error {
	select {
	case <-s.loaded:
		return nil
	default:
	}
	select {
	case <-s.loaded:
		return nil
	case <-s.stopped:
		select {
		case <-s.loaded: // the load won the race with the stop
			return nil
		default:
			return ErrStopped
		}
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Status reports how current the table is.
func (s *Store) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Status{
		Loaded:    s.isLoaded,
		Routes:    s.table.Load().Len(),
		LastLoad:  s.lastLoad,
		Listening: s.listening,
		LastError: s.loadErr,
	}
	if s.listenErr != "" && (st.LastError == "" || s.listenErrAt.After(s.loadErrAt)) {
		st.LastError = s.listenErr
	}
	st.Stale = !st.Loaded || (!st.Listening && s.opts.Now().Sub(st.LastLoad) > s.opts.ReloadInterval)
	return st
}

// Run follows the database until ctx ends, then returns nil. It holds one
// connection that listens for route notifications and, each time that
// connection is established (the first time and after every reconnect),
// reloads the full table: changes made while not listening are never
// announced again. Each notification leads to a full reload, one per burst
// (see Options.CoalesceWindow), and a full reload also runs every
// ReloadInterval without one. Failures are logged and shown in Status,
// and retried with exponential backoff while the last table keeps serving.
//
// Run may be called once per Store (ErrAlreadyStarted after that); it
// returns ErrNoSource for a Store without a Source. Every goroutine it
// starts has ended when it returns.
func (s *Store) Run(ctx context.Context) error {
	if s.src == nil {
		return ErrNoSource
	}
	if !s.started.CompareAndSwap(false, true) {
		return ErrAlreadyStarted
	}
	defer close(s.stopped)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var wg sync.WaitGroup
	wg.Go(func() { s.reloadLoop(ctx) })
	s.listenLoop(ctx)
	cancel()
	wg.Wait()
	return nil
}

// listenLoop keeps a notification listener running until ctx ends,
// reconnecting with backoff.
func (s *Store) listenLoop(ctx context.Context) {
	delay := s.opts.RetryInterval
	for {
		// A restart asked for an earlier connection does not concern the
		// next one.
		select {
		case <-s.restart:
		default:
		}
		listened := false
		err := s.listenOnce(ctx, func() {
			listened = true
			s.onListening()
		})
		s.setNotListening()
		if ctx.Err() != nil {
			return
		}
		if listened {
			// The connection worked: this is a new outage, not more of
			// the last one.
			delay = s.opts.RetryInterval
		}
		if errors.Is(err, errRestart) {
			s.log.Info("route store: reconnecting the notification listener after a failed reload")
		} else {
			s.mu.Lock()
			s.listenErr, s.listenErrAt = err.Error(), s.opts.Now()
			loaded := s.isLoaded
			s.mu.Unlock()
			s.log.Warn("route store: not listening for route changes",
				"err", err, "retry_in", delay, "serving_routes", s.table.Load().Len())
			if !loaded {
				// Whatever keeps LISTEN from working need not keep
				// queries from working: do not leave the table empty
				// until the backstop reload.
				s.requestReload(reloadRequest{urgent: true, full: true})
			}
		}
		if !sleep(ctx, delay) {
			return
		}
		delay = s.nextDelay(delay)
	}
}

// listenOnce follows the source until its feed breaks, ctx ends, or the
// reloader asks for a new connection, and returns why it stopped.
func (s *Store) listenOnce(ctx context.Context, listening func()) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.src.FollowRoutes(ctx, listening, s.onChange) }()
	select {
	case err := <-done:
		return err
	case <-s.restart:
		cancel()
		<-done
		return errRestart
	}
}

// onListening runs on the listener's goroutine once LISTEN is in effect.
func (s *Store) onListening() {
	s.mu.Lock()
	s.listening = true
	recovered := s.listenErr != ""
	s.listenErr = ""
	s.mu.Unlock()
	s.m.up.Set(1)
	if recovered {
		s.log.Info("route store: listening for route changes again")
	} else {
		s.log.Debug("route store: listening for route changes")
	}
	// Whatever changed before this moment was not announced to us: load it
	// all, at once.
	s.requestReload(reloadRequest{urgent: true, full: true})
}

// onChange runs on the listener's goroutine for each notification. It only
// records that the cluster it names is due a reload, so the listener keeps
// reading.
func (s *Store) onChange(c controlplane.RouteChange) {
	s.log.Debug("route store: route change", "cluster", c.ClusterUUID, "hostnames", c.Hostnames)
	s.requestReload(reloadRequest{clusters: map[string]struct{}{c.ClusterUUID: {}}, notified: time.Now()})
}

func (s *Store) setNotListening() {
	s.mu.Lock()
	s.listening = false
	s.mu.Unlock()
	s.m.up.Set(0)
}

// requestReload records that r is due and wakes the reloader.
func (s *Store) requestReload(r reloadRequest) {
	s.markDue(r)
	select {
	case s.wake <- struct{}{}:
	default: // already woken; it will see this request too
	}
}

// markDue adds r to what the reloader owes: urgent skips the coalescing
// window, full asks for a full reload, clusters for those clusters', and
// notified, when not zero, is when the notification asking for it arrived.
func (s *Store) markDue(r reloadRequest) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := &s.pending
	p.due = true
	p.urgent = p.urgent || r.urgent
	p.full = p.full || r.full
	if !p.full {
		if p.clusters == nil {
			p.clusters = make(map[string]struct{}, len(r.clusters))
		}
		maps.Copy(p.clusters, r.clusters)
		p.full = len(p.clusters) > maxClusterReloads
	}
	if p.full {
		p.clusters = nil
	}
	if !r.notified.IsZero() && (p.notified.IsZero() || r.notified.Before(p.notified)) {
		p.notified = r.notified
	}
}

func (s *Store) isUrgent() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pending.urgent
}

// takeDue returns the pending request and clears it: whatever is requested
// from now on needs a reload that starts after this moment.
func (s *Store) takeDue() reloadRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	req := s.pending
	s.pending = reloadRequest{}
	return req
}

// reloadLoop performs the reloads the listener, the backstop timer and the
// retry timer ask for, one at a time, until ctx ends.
func (s *Store) reloadLoop(ctx context.Context) {
	backstop := time.NewTimer(s.opts.ReloadInterval)
	defer backstop.Stop()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	var retryC <-chan time.Time // nil while no retry is scheduled
	delay := s.opts.RetryInterval

	for {
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		case <-backstop.C:
			s.markDue(reloadRequest{urgent: true, full: true})
		case <-retryC:
			retryC = nil
			s.markDue(reloadRequest{urgent: true, full: true})
		}
		if !s.isUrgent() {
			// Let the rest of a burst of changes arrive: one reload then
			// serves them all.
			if !sleep(ctx, s.opts.CoalesceWindow) {
				return
			}
		}
		req := s.takeDue()
		if !req.due {
			continue // served by the reload before
		}
		full := req.full || !s.Status().Loaded
		var err error
		if full {
			err = s.reload(ctx)
		} else {
			err = s.reloadClusters(ctx, req.clusters)
		}
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			// Still owed, including to the notifications it was for; the
			// retry is a full reload, which cannot miss what a failed
			// round of cluster reloads left half done.
			s.markDue(reloadRequest{full: true, notified: req.notified})
			retry.Reset(delay)
			retryC = retry.C
			s.log.Warn("route store: reload failed", "err", err, "retry_in", delay, "serving_routes", s.table.Load().Len())
			delay = s.nextDelay(delay)
			if !serverAnswered(err) {
				// No answer from the server: the listener's connection
				// goes the same way and may be just as dead without
				// knowing it yet (a silently dropped TCP connection shows
				// only when written to). Reconnecting it finds out.
				select {
				case s.restart <- struct{}{}:
				default:
				}
			}
			continue
		}
		delay = s.opts.RetryInterval
		retry.Stop()
		retryC = nil
		if full {
			// Cluster reloads follow notifications; only a full reload
			// also covers one that was lost.
			backstop.Reset(s.opts.ReloadInterval)
		}
		if !req.notified.IsZero() {
			s.m.notifyLag.Observe(time.Since(req.notified).Seconds())
		}
	}
}

// reload loads all routes and clusters and swaps in a new table. Lookups go
// on with the old table until the swap.
func (s *Store) reload(ctx context.Context) error {
	start := time.Now()
	lctx, cancel := context.WithTimeout(ctx, s.opts.LoadTimeout)
	defer cancel()
	routes, err := s.src.ServedRoutes(lctx)
	var clusters []*controlplane.Cluster
	if err == nil {
		clusters, err = s.src.Clusters(lctx)
	}
	if err != nil {
		if ctx.Err() == nil {
			s.m.reloads.WithLabelValues(resultError).Inc()
			s.mu.Lock()
			s.loadErr, s.loadErrAt = err.Error(), s.opts.Now()
			s.mu.Unlock()
		}
		return err
	}
	t := NewTable(routes, clusters)
	s.table.Store(t)
	s.logBodySizeProblems(t)
	s.m.routes.Set(float64(t.Len()))
	s.m.reloads.WithLabelValues(resultOK).Inc()

	s.mu.Lock()
	first := !s.isLoaded
	recovered := s.loadErr != ""
	s.isLoaded = true
	s.lastLoad = s.opts.Now()
	s.loadErr = ""
	s.mu.Unlock()

	took := time.Since(start)
	switch {
	case first:
		close(s.loaded) // only this goroutine sets isLoaded, so only once
		s.log.Info("route store: route table loaded", "routes", t.Len(), "took", took)
	case recovered:
		s.log.Info("route store: route table reloaded after failures", "routes", t.Len(), "took", took)
	default:
		s.log.Debug("route store: route table reloaded", "routes", t.Len(), "took", took)
	}
	return nil
}

// reloadClusters reloads the routes of the clusters named and swaps in a
// table that has them (Table.WithCluster), every other cluster's routes
// unchanged: a change costs its cluster's routes, not the whole table's.
// On an error no table is swapped in.
func (s *Store) reloadClusters(ctx context.Context, clusters map[string]struct{}) error {
	start := time.Now()
	lctx, cancel := context.WithTimeout(ctx, s.opts.LoadTimeout)
	defer cancel()
	t := s.table.Load()
	for uuid := range clusters {
		routes, c, err := s.src.ServedRoutesOf(lctx, uuid)
		if err != nil {
			if ctx.Err() == nil {
				s.m.clusterReloads.WithLabelValues(resultError).Inc()
				s.mu.Lock()
				s.loadErr, s.loadErrAt = err.Error(), s.opts.Now()
				s.mu.Unlock()
			}
			return fmt.Errorf("reload the routes of cluster %s: %w", uuid, err)
		}
		t = t.WithCluster(uuid, routes, c)
	}
	s.table.Store(t)
	s.logBodySizeProblems(t)
	s.m.routes.Set(float64(t.Len()))
	s.m.clusterReloads.WithLabelValues(resultOK).Add(float64(len(clusters)))

	s.mu.Lock()
	recovered := s.loadErr != ""
	s.lastLoad = s.opts.Now()
	s.loadErr = ""
	s.mu.Unlock()
	if recovered {
		s.log.Info("route store: routes reloaded after failures", "clusters", len(clusters), "routes", t.Len(), "took", time.Since(start))
	} else {
		s.log.Debug("route store: routes of changed clusters reloaded", "clusters", len(clusters), "routes", t.Len(), "took", time.Since(start))
	}
	return nil
}

// logBodySizeProblems logs, once per route and value, the body size
// annotations of t that do not parse (those routes get the gateway's global
// limit). It forgets problems that are gone, so the memory is bounded by the
// current table, and a value that comes back is logged again.
func (s *Store) logBodySizeProblems(t *Table) {
	if len(t.bodySizeProblems) == 0 && len(s.bodySizeLogged) == 0 {
		return
	}
	logged := make(map[string]struct{}, len(t.bodySizeProblems))
	for _, p := range t.bodySizeProblems {
		k := p.key()
		if _, seen := s.bodySizeLogged[k]; !seen {
			s.log.Warn("route store: ignoring a body size annotation that does not parse; the global limit applies",
				"host", p.host, "path", p.path, "cluster", p.cluster, "annotation", p.annotation, "value", p.value, "err", p.err)
		}
		logged[k] = struct{}{}
	}
	s.bodySizeLogged = logged
}

// nextDelay doubles a retry delay up to the cap.
func (s *Store) nextDelay(d time.Duration) time.Duration {
	return min(2*d, max(MaxRetryInterval, s.opts.RetryInterval))
}

// sleep waits for d, or until ctx ends (false).
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
