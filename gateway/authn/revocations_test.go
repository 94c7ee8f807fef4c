package authn

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/controlplane/postgres"
	"github.com/pipeops/tunnel/shared/auth"
	"github.com/pipeops/tunnel/shared/keyset"
	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/testenv/pgtest"
)

// countingTokens is the real token store, with its revocation queries
// counted so that tests can tell a cached answer from a query.
type countingTokens struct {
	controlplane.TokenStore
	queries atomic.Int64
}

func (c *countingTokens) Revoked(ctx context.Context, id string) (bool, error) {
	c.queries.Add(1)
	return c.TokenStore.Revoked(ctx, id)
}

// tokenDB is a migrated database of its own with one cluster, for tokens
// to belong to.
type tokenDB struct {
	db      *postgres.DB
	cluster string
}

// newTokenDB starts the leak check too: it must come after the database
// server has started (its goroutines live for the whole test binary) and
// before the pool is opened (whose must not outlive the test).
func newTokenDB(t *testing.T) *tokenDB {
	t.Helper()
	url := pgtest.URL(t)
	testenv.LeakCheck(t)
	ctx := ctxT(t)
	db, err := postgres.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	if _, err := postgres.Migrate(ctx, db.Pool()); err != nil {
		t.Fatal(err)
	}
	c, err := db.CreateCluster(ctx, "alpha")
	if err != nil {
		t.Fatal(err)
	}
	return &tokenDB{db: db, cluster: c.UUID}
}

// record records an agent token with id jti.
func (d *tokenDB) record(t *testing.T, jti string) {
	t.Helper()
	err := d.db.RecordToken(context.Background(), controlplane.Token{
		ID: jti, Kind: string(auth.KindAgent), ClusterUUID: d.cluster, ExpiresAt: time.Now().Add(time.Hour),
	})
	if err != nil {
		t.Fatal(err)
	}
}

func (d *tokenDB) revoke(t *testing.T, jti string) {
	t.Helper()
	if err := d.db.RevokeToken(context.Background(), jti, time.Time{}); err != nil {
		t.Fatal(err)
	}
}

func TestRevocations(t *testing.T) {
	tdb := newTokenDB(t)
	ctx := ctxT(t)
	for _, id := range []string{"tok-a", "tok-b", "tok-c"} {
		tdb.record(t, id)
	}
	store := &countingTokens{TokenStore: tdb.db}
	clk := testenv.NewClock()
	logs := &testenv.LogBuffer{}
	m := NewMetrics(prometheus.NewPedanticRegistry())
	r := &Revocations{Store: store, TTL: 10 * time.Second, Now: clk.Now, Logger: logs.Logger(), Metrics: m}

	steps := []struct {
		name    string
		before  func() // runs first, e.g. to revoke a token or stop the database
		advance time.Duration
		id      string
		fresh   bool
		want    bool
		wantErr bool
		queries int64 // store queries so far
	}{
		{name: "first check asks the store", id: "tok-a", queries: 1},
		{name: "cached within TTL", advance: 5 * time.Second, id: "tok-a", queries: 1},
		{name: "revocation not seen within TTL", before: func() { tdb.revoke(t, "tok-a") }, advance: 4 * time.Second, id: "tok-a", queries: 1},
		{name: "revocation seen after TTL", advance: time.Second, id: "tok-a", want: true, queries: 2},
		{name: "revoked answer kept for good", advance: 24 * time.Hour, id: "tok-a", want: true, queries: 2},
		{name: "fresh check of a revoked token", id: "tok-a", fresh: true, want: true, queries: 2},
		{name: "unknown token counts as revoked", id: "forged", want: true, queries: 3},
		{name: "unknown token cached", id: "forged", want: true, queries: 3},
		{name: "another token", id: "tok-b", queries: 4},
		{name: "fresh check bypasses the cache", id: "tok-b", fresh: true, queries: 5},
		{name: "fresh check sees a revocation at once", before: func() { tdb.revoke(t, "tok-b") }, id: "tok-b", fresh: true, want: true, queries: 6},
		{name: "fresh answer fills the cache", id: "tok-b", want: true, queries: 6},
		{name: "token c", id: "tok-c", queries: 7},

		// The database goes away.
		{name: "outage: cached answer served though expired", before: tdb.db.Close, advance: time.Hour, id: "tok-c", queries: 8},
		{name: "outage: store asked again only after TTL", advance: 9 * time.Second, id: "tok-c", queries: 8},
		{name: "outage: asked again after TTL", advance: time.Second, id: "tok-c", queries: 9},
		{name: "outage: fresh check fails", id: "tok-c", fresh: true, wantErr: true, queries: 10},
		{name: "outage: token never seen fails", id: "tok-new", wantErr: true, queries: 11},
		{name: "outage: revoked answer still served", id: "tok-a", want: true, queries: 11},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			if st.before != nil {
				st.before()
			}
			clk.Add(st.advance)
			check := r.Revoked
			if st.fresh {
				check = r.RevokedFresh
			}
			got, err := check(ctx, st.id)
			if (err != nil) != st.wantErr || got != st.want {
				t.Errorf("revoked %v, error %v; want %v, error %v", got, err, st.want, st.wantErr)
			}
			if n := store.queries.Load(); n != st.queries {
				t.Errorf("%d store queries, want %d", n, st.queries)
			}
		})
	}
	if !strings.Contains(logs.String(), "using the cached not-revoked answer") {
		t.Errorf("outage not logged; log:\n%s", logs)
	}
	for result, want := range map[string]float64{"stale": 2, "error": 2} {
		if got := counterValue(t, m.revocationChecks.WithLabelValues(result)); got != want {
			t.Errorf("%s checks counted %v, want %v", result, got, want)
		}
	}
}

// TestRevocationsWithVerifier runs the whole check the gateway makes: keys
// from the JWKS endpoint, revocation from the database.
func TestRevocationsWithVerifier(t *testing.T) {
	tdb := newTokenDB(t)
	ctx := ctxT(t)
	key := newEd25519(t, "k1")
	keys := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(jwksOf(t, key))
	}))
	t.Cleanup(keys.Close)
	clk := testenv.NewClock()
	v := &auth.Verifier{
		Keys:    &keyset.JWKS{URL: keys.URL},
		Revoked: &Revocations{Store: tdb.db, TTL: 10 * time.Second, Now: clk.Now},
	}
	tdb.record(t, "tok-1")
	tok := key.token(t, "tok-1")

	if _, err := v.Verify(ctx, tok, auth.KindAgent); err != nil {
		t.Fatal(err)
	}
	tdb.revoke(t, "tok-1")
	if _, err := v.Verify(ctx, tok, auth.KindAgent); err != nil {
		t.Fatalf("revocation took effect before TTL (cache not used): %v", err)
	}
	clk.Add(10 * time.Second)
	if _, err := v.Verify(ctx, tok, auth.KindAgent); !errors.Is(err, auth.ErrRevoked) {
		t.Fatalf("Verify after TTL = %v, want ErrRevoked", err)
	}
	// A token the control plane never recorded does not pass.
	if _, err := v.Verify(ctx, key.token(t, "never-recorded"), auth.KindAgent); !errors.Is(err, auth.ErrRevoked) {
		t.Fatalf("Verify of an unrecorded token = %v, want ErrRevoked", err)
	}
}

func TestRevocationsBounded(t *testing.T) {
	tdb := newTokenDB(t)
	ctx := ctxT(t)
	const live = 8
	for i := range live {
		tdb.record(t, "live-"+strconv.Itoa(i))
	}
	tests := []struct {
		name string
		max  int
	}{
		{"one entry", 1},
		{"a few", 4},
		{"room for all", 100},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := testenv.NewClock()
			r := &Revocations{Store: tdb.db, MaxEntries: tt.max, Now: clk.Now}
			for i := range 3 * tt.max {
				// Alternate revoked (unrecorded) and not-revoked tokens,
				// some of them expired by the time the cache fills.
				id := "forged-" + strconv.Itoa(i)
				want := true
				if i%2 == 0 {
					id, want = "live-"+strconv.Itoa(i/2%live), false
				}
				got, err := r.Revoked(ctx, id)
				if err != nil || got != want {
					t.Fatalf("Revoked(%s) = %v, %v; want %v", id, got, err, want)
				}
				if n := r.cached(); n > tt.max {
					t.Fatalf("%d answers cached, limit %d", n, tt.max)
				}
				clk.Add(3 * time.Second)
			}
		})
	}
}
