package authn

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/shared/auth"
)

// Defaults of Revocations.
const (
	DefaultRevocationTTL        = 10 * time.Second
	DefaultRevocationMaxEntries = 100_000
)

// Revocations is an auth.RevocationChecker over the token store with a
// short cache: a revoked answer is cached for good (revocation is
// permanent), a not-revoked answer for TTL, so a revocation takes effect
// within TTL without a database query per request.
//
// When the store fails (the database is down), a token with a cached
// not-revoked answer, however old, is still answered not revoked, and the
// failure is logged: the gateway keeps serving the agents and users it
// already knew through a database outage. That is a deliberate trade: a
// token revoked during the outage stays usable until the database is back
// (the token's own expiry still applies), while refusing every known token
// would turn a database outage into a full outage of the gateway. The store
// is asked again at most once per TTL per such token, so an outage costs the
// database no more queries than normal operation. A token with no cached
// answer gets the error, which the verifier turns into a refusal.
//
// Store is required. The other exported fields are configuration with
// defaults for their zero values; set them before first use and do not
// change them afterwards. A Revocations must not be copied after first use.
// Its methods are safe for concurrent use.
type Revocations struct {
	Store controlplane.TokenStore
	// TTL is how long a not-revoked answer is used without asking the
	// store again (default 10 s): the longest a revocation takes to reach
	// this gateway.
	TTL time.Duration
	// MaxEntries bounds the cached answers (default 100,000). When the cache
	// is full, the not-revoked answers older than TTL are dropped and, when
	// that frees too little, the whole cache; dropped answers cost one
	// query each the next time their token is seen.
	MaxEntries int
	// Now is the clock (default time.Now); for tests.
	Now func() time.Time
	// Logger receives store failures; nil discards.
	Logger *slog.Logger
	// Metrics counts checks; nil counts nothing.
	Metrics *Metrics

	mu      sync.Mutex
	revoked map[string]struct{}  // token ids known revoked
	live    map[string]liveEntry // token ids known not revoked
	records map[string]*auth.Record
}

// liveEntry is a cached not-revoked answer.
type liveEntry struct {
	verified time.Time // when the store last said so
	next     time.Time // ask the store again from then on
}

var (
	_ auth.RevocationChecker = (*Revocations)(nil)
	_ auth.RecordSource      = (*Revocations)(nil)
)

// TokenRecord implements auth.RecordSource. A record never changes once
// issued but for its revocation, which Revoked answers (with its TTL): so a
// record is cached until the cache is full, and the one returned never says
// revoked. A token whose record is not cached while the store is down is
// refused (the error), like one whose revocation was never checked.
func (r *Revocations) TokenRecord(ctx context.Context, id string) (*auth.Record, error) {
	r.mu.Lock()
	rec, ok := r.records[id]
	r.mu.Unlock()
	if ok {
		return rec, nil
	}
	t, err := r.Store.Token(ctx, id)
	if controlplane.ErrorCode(err) == controlplane.ENOTFOUND {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	rec = t.AuthRecord()
	rec.Revoked = false
	r.mu.Lock()
	if r.records == nil || len(r.records) >= r.maxEntries() {
		r.records = make(map[string]*auth.Record)
	}
	r.records[id] = rec
	r.mu.Unlock()
	return rec, nil
}

// Revoked implements auth.RevocationChecker: it answers from the cache when
// it can and asks the store otherwise, as the type's documentation
// describes.
func (r *Revocations) Revoked(ctx context.Context, id string) (bool, error) {
	return r.check(ctx, id, false)
}

// RevokedFresh is Revoked without the not-revoked cache: it asks the store
// unless the token is already known revoked, for the periodic check of live
// sessions, which runs rarely and must see a revocation at once. Unlike
// Revoked it returns the store's error even for a token with a cached
// answer, since the caller asked for the store's word; such a caller should
// treat an error as "unknown" (keep the session, check again next round)
// rather than as a revocation, or a database outage would cut every tunnel.
// The answer refreshes the cache that Revoked uses.
func (r *Revocations) RevokedFresh(ctx context.Context, id string) (bool, error) {
	return r.check(ctx, id, true)
}

func (r *Revocations) check(ctx context.Context, id string, fresh bool) (bool, error) {
	r.mu.Lock()
	if _, ok := r.revoked[id]; ok {
		r.mu.Unlock()
		r.Metrics.revocationCheck("cached")
		return true, nil
	}
	if e, ok := r.live[id]; ok && !fresh && r.now().Before(e.next) {
		r.mu.Unlock()
		r.Metrics.revocationCheck("cached")
		return false, nil
	}
	r.mu.Unlock()

	// The query runs without the lock: a slow database must not hold up
	// the tokens whose answers are cached.
	revoked, err := r.Store.Revoked(ctx, id)

	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	if err != nil {
		if _, ok := r.revoked[id]; ok { // another caller's answer came in meanwhile
			r.Metrics.revocationCheck("cached")
			return true, nil
		}
		e, ok := r.live[id]
		if !ok || fresh || ctx.Err() != nil || errors.Is(err, context.Canceled) {
			// Nothing to fall back on, or the caller asked for the store's
			// word, or the caller is gone and the error says nothing about
			// the database.
			r.Metrics.revocationCheck("error")
			return false, err
		}
		e.next = now.Add(r.ttl())
		r.live[id] = e
		r.Metrics.revocationCheck("stale")
		r.logger().Warn("token store unavailable; using the cached not-revoked answer",
			"token_id", id, "verified_ago", now.Sub(e.verified).Round(time.Second), "err", err)
		return false, nil
	}
	r.Metrics.revocationCheck("queried")
	if revoked {
		delete(r.live, id)
		r.makeRoomLocked(now)
		if r.revoked == nil {
			r.revoked = make(map[string]struct{})
		}
		r.revoked[id] = struct{}{}
		return true, nil
	}
	if _, ok := r.live[id]; !ok {
		r.makeRoomLocked(now)
	}
	if r.live == nil {
		r.live = make(map[string]liveEntry)
	}
	r.live[id] = liveEntry{verified: now, next: now.Add(r.ttl())}
	return false, nil
}

// makeRoomLocked makes room for one more entry when the cache is full: it
// drops the expired not-revoked answers, and everything when that frees less
// than a quarter of the cache. Each full sweep is thus followed by at least
// a quarter of MaxEntries insertions before the next, which keeps the cost
// per insertion constant on average. r.mu is held.
func (r *Revocations) makeRoomLocked(now time.Time) {
	limit := r.maxEntries()
	if len(r.live)+len(r.revoked) < limit {
		return
	}
	for id, e := range r.live {
		if !now.Before(e.next) {
			delete(r.live, id)
		}
	}
	if len(r.live)+len(r.revoked) > limit-max(limit/4, 1) {
		clear(r.live)
		clear(r.revoked)
	}
}

// cached returns the number of cached answers; for tests.
func (r *Revocations) cached() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.live) + len(r.revoked)
}

func (r *Revocations) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

func (r *Revocations) ttl() time.Duration {
	if r.TTL > 0 {
		return r.TTL
	}
	return DefaultRevocationTTL
}

func (r *Revocations) maxEntries() int {
	if r.MaxEntries > 0 {
		return r.MaxEntries
	}
	return DefaultRevocationMaxEntries
}

func (r *Revocations) logger() *slog.Logger {
	if r.Logger != nil {
		return r.Logger
	}
	return slog.New(slog.DiscardHandler)
}
