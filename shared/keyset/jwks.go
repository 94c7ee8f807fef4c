// Package keyset holds the control plane's public token keys as read from
// its JWKS endpoint, cached so that verifying a token normally costs no
// HTTP request, and kept while the control plane is down. The gateway
// verifies callers' tokens with it; the agent verifies, with its own copy,
// the identity the gateway forwards before it impersonates anyone.
//
// Wire it into an auth.Verifier:
//
//	keys := &keyset.JWKS{URL: controlPlane + "/.well-known/jwks.json", Logger: log, Metrics: m}
//	if err := keys.Refresh(ctx); err != nil { ... } // fail fast at start-up
//	v := &auth.Verifier{Keys: keys}
package keyset

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/pipeops/tunnel/shared/auth"
)

// Defaults of JWKS.
const (
	DefaultJWKSTimeout    = 10 * time.Second
	DefaultJWKSMinRefresh = 30 * time.Second
	DefaultJWKSMaxAge     = 10 * time.Minute
)

// ErrUnknownKey means no key of the set has the token's key id, even after
// the set was fetched again (or could not be, see the wrapped error).
var ErrUnknownKey = errors.New("keyset: unknown key id")

// defaultClient is shared by every JWKS without a Client, so that they share
// its idle connections too.
var defaultClient = &http.Client{Timeout: DefaultJWKSTimeout}

// JWKS is an auth.KeySet backed by the control plane's
// /.well-known/jwks.json.
//
// Keys are fetched lazily, on the calls that need them; there is no
// background goroutine to own or stop. A key id the set does not have makes
// the set be fetched again, at most once per MinRefresh, so tokens with
// forged key ids cannot turn into a flood of requests to the control plane.
// A set older than MaxAge is fetched again by the next caller, while the
// callers that come during that fetch keep using the old keys. When a fetch
// fails, the last good keys stay in use, for as long as it takes: the gateway
// keeps authenticating while the control plane is down, and the failure is
// logged (and counted in Metrics). Concurrent callers that need a fetch share
// the one in flight.
//
// The exported fields are configuration: set them before first use and do
// not change them afterwards. The zero values mean the defaults. A JWKS must
// not be copied after first use. Its methods are safe for concurrent use.
type JWKS struct {
	// URL is the key set's address (required).
	URL string
	// Client fetches the key set; default an http.Client with a 10 s
	// timeout. Its timeout bounds how long a caller that triggers a fetch
	// can wait for it.
	Client *http.Client
	// MinRefresh is the least time between two fetches caused by unknown
	// key ids or by stale keys after a failed fetch (default 30 s).
	MinRefresh time.Duration
	// MaxAge is how long a fetched set is used before it is fetched again
	// (default 10 min). It bounds how long a key the control plane has
	// withdrawn is still accepted, while the control plane is reachable.
	MaxAge time.Duration
	// Logger receives fetch failures and key set changes; nil discards.
	Logger *slog.Logger
	// Metrics counts fetches; nil counts nothing.
	Metrics Observer
	// Now is the clock (default time.Now); for tests.
	Now func() time.Time

	mu        sync.Mutex
	keys      auth.StaticKeys // last good set; nil until the first success
	fetched   time.Time       // when keys were fetched
	attempted time.Time       // when the last fetch that counts finished; zero: none yet
	lastErr   error           // that fetch's error; nil when it succeeded
	call      *fetchCall      // the fetch in flight, nil when none
}

// fetchCall is one fetch that several callers wait for.
type fetchCall struct {
	done chan struct{} // closed when the fetch has finished and its result is stored
	err  error
	// abandoned means the fetch failed because the context of the caller
	// that ran it ended: not the control plane's fault, so waiters with a
	// live context try again rather than take that error as the answer.
	abandoned bool
}

var _ auth.KeySet = (*JWKS)(nil)

// PublicKey returns the key with id kid, fetching the set when the key is
// unknown or the set is older than MaxAge, as the type's documentation
// describes. Errors wrap ErrUnknownKey, or are the context's error.
func (j *JWKS) PublicKey(ctx context.Context, kid string) (crypto.PublicKey, error) {
	if kid == "" {
		// Every token the control plane signs names its key; one without
		// is no reason to fetch anything.
		return nil, fmt.Errorf("%w: the token names no key (no kid header)", ErrUnknownKey)
	}
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		j.mu.Lock()
		now := j.now()
		key, known := j.keys[kid]
		fresh := j.keys != nil && now.Sub(j.fetched) < j.maxAge()
		mayFetch := j.attempted.IsZero() || now.Sub(j.attempted) >= j.minRefresh()
		switch {
		case known && (fresh || j.call != nil || !mayFetch):
			// Fresh; or stale, but being fetched by another caller or
			// failed to fetch a moment ago: the last good key serves
			// rather than make this caller wait or hammer the server.
			j.mu.Unlock()
			return key, nil
		case j.call != nil:
			call := j.call
			j.mu.Unlock()
			if err := wait(ctx, call); err != nil {
				return nil, err
			}
			continue // look again at what that fetch left
		case !mayFetch:
			err := j.unknownLocked(kid)
			j.mu.Unlock()
			return nil, err
		}
		call := j.startLocked()
		j.mu.Unlock()
		j.run(ctx, call)
		// The loop looks the key up in what the fetch left; the fetch just
		// finished, so it does not fetch again.
	}
}

// Refresh fetches the key set now, or waits for the fetch in flight, and
// returns its error. Call it at start-up to fail fast, with a clear message,
// when the control plane's key set cannot be read.
func (j *JWKS) Refresh(ctx context.Context) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		j.mu.Lock()
		if call := j.call; call != nil {
			j.mu.Unlock()
			if err := wait(ctx, call); err != nil {
				return err
			}
			if call.abandoned {
				continue
			}
			return call.err
		}
		call := j.startLocked()
		j.mu.Unlock()
		j.run(ctx, call)
		return call.err
	}
}

// KeyIDs returns the key ids of the last good set, sorted, and when it was
// fetched (zero when never). For status pages and logs.
func (j *JWKS) KeyIDs() ([]string, time.Time) {
	j.mu.Lock()
	defer j.mu.Unlock()
	return slices.Sorted(maps.Keys(j.keys)), j.fetched
}

// wait waits for call to finish or ctx to end.
func wait(ctx context.Context, call *fetchCall) error {
	select {
	case <-call.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// startLocked registers a new fetch as the one in flight. j.mu is held.
func (j *JWKS) startLocked() *fetchCall {
	call := &fetchCall{done: make(chan struct{})}
	j.call = call
	return call
}

// run performs call's fetch, stores its result and wakes its waiters.
func (j *JWKS) run(ctx context.Context, call *fetchCall) {
	keys, err := j.fetch(ctx)

	j.mu.Lock()
	now := j.now()
	old := j.keys
	oldFetched := j.fetched
	switch {
	case err == nil:
		j.keys, j.fetched, j.attempted, j.lastErr = keys, now, now, nil
	case ctx.Err() != nil:
		call.abandoned = true
	default:
		j.attempted, j.lastErr = now, err
	}
	call.err = err
	j.call = nil
	j.mu.Unlock()
	close(call.done)

	log := j.logger()
	switch {
	case err == nil:
		j.observe(now, true)
		oldIDs, newIDs := slices.Sorted(maps.Keys(old)), slices.Sorted(maps.Keys(keys))
		if slices.Equal(oldIDs, newIDs) {
			log.Debug("JWKS refreshed", "url", j.URL, "kids", newIDs)
		} else {
			log.Info("JWKS changed", "url", j.URL, "kids", newIDs, "previous_kids", oldIDs)
		}
	case call.abandoned:
		log.Debug("JWKS fetch abandoned by its caller", "url", j.URL, "err", err)
	case old == nil:
		j.observe(now, false)
		log.Error("cannot fetch the JWKS; no token can be verified until it succeeds",
			"url", j.URL, "err", err, "retry_after", j.minRefresh())
	default:
		j.observe(now, false)
		log.Warn("cannot refresh the JWKS; still verifying with the last good keys",
			"url", j.URL, "err", err, "keys_age", now.Sub(oldFetched).Round(time.Second), "retry_after", j.minRefresh())
	}
}

// fetch reads and parses the key set.
func (j *JWKS) fetch(ctx context.Context) (auth.StaticKeys, error) {
	if j.URL == "" {
		return nil, errors.New("keyset: JWKS.URL is empty")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, j.URL, nil)
	if err != nil {
		return nil, fmt.Errorf("fetch JWKS: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	client := j.Client
	if client == nil {
		client = defaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch JWKS: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		// Read a little so that the connection can be reused; an error
		// page is of no interest.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
		return nil, fmt.Errorf("fetch JWKS from %s: HTTP %s", j.URL, resp.Status)
	}
	if resp.ContentLength > auth.MaxJWKSSize {
		return nil, fmt.Errorf("%w: %s announces %d bytes, limit %d", auth.ErrBadJWKS, j.URL, resp.ContentLength, auth.MaxJWKSSize)
	}
	// One byte over the limit is enough to know the body is too big,
	// without reading the rest of it.
	body, err := io.ReadAll(io.LimitReader(resp.Body, auth.MaxJWKSSize+1))
	if err != nil {
		return nil, fmt.Errorf("read JWKS from %s: %w", j.URL, err)
	}
	if len(body) > auth.MaxJWKSSize {
		return nil, fmt.Errorf("%w: %s sent more than %d bytes", auth.ErrBadJWKS, j.URL, auth.MaxJWKSSize)
	}
	keys, err := auth.ParseJWKS(body)
	if err != nil {
		return nil, fmt.Errorf("JWKS from %s: %w", j.URL, err)
	}
	return keys, nil
}

// unknownLocked is the error for a key id the set does not have. j.mu is
// held.
func (j *JWKS) unknownLocked(kid string) error {
	switch {
	case j.keys == nil && j.lastErr != nil:
		return fmt.Errorf("%w %q: no key set yet: %w", ErrUnknownKey, kid, j.lastErr)
	case j.lastErr != nil:
		return fmt.Errorf("%w %q (the last refresh failed: %w)", ErrUnknownKey, kid, j.lastErr)
	default:
		return fmt.Errorf("%w %q", ErrUnknownKey, kid)
	}
}

func (j *JWKS) now() time.Time {
	if j.Now != nil {
		return j.Now()
	}
	return time.Now()
}

func (j *JWKS) minRefresh() time.Duration {
	if j.MinRefresh > 0 {
		return j.MinRefresh
	}
	return DefaultJWKSMinRefresh
}

func (j *JWKS) maxAge() time.Duration {
	if j.MaxAge > 0 {
		return j.MaxAge
	}
	return DefaultJWKSMaxAge
}

func (j *JWKS) logger() *slog.Logger {
	if j.Logger != nil {
		return j.Logger
	}
	return slog.New(slog.DiscardHandler)
}

// Observer is told how each fetch of the key set ended, for metrics: the
// gateway and the agent count fetches under their own names.
type Observer interface {
	JWKSFetched(at time.Time)
	JWKSFetchFailed()
}

func (j *JWKS) observe(at time.Time, ok bool) {
	switch {
	case j.Metrics == nil:
	case ok:
		j.Metrics.JWKSFetched(at)
	default:
		j.Metrics.JWKSFetchFailed()
	}
}
