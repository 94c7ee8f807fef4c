package keyset

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pipeops/tunnel/shared/auth"
	"github.com/pipeops/tunnel/shared/testenv"
)

// keyServer stands in for the control plane's JWKS endpoint: it serves
// whatever response it is given and counts the requests.
type keyServer struct {
	srv  *httptest.Server
	hits atomic.Int64

	mu      sync.Mutex
	handler http.HandlerFunc
}

func newKeyServer(t *testing.T, body []byte) *keyServer {
	t.Helper()
	ks := &keyServer{}
	ks.serve(body)
	ks.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ks.hits.Add(1)
		ks.mu.Lock()
		h := ks.handler
		ks.mu.Unlock()
		h(w, r)
	}))
	t.Cleanup(ks.srv.Close)
	return ks
}

// serve makes the server answer 200 with body.
func (ks *keyServer) serve(body []byte) {
	ks.serveFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	})
}

func (ks *keyServer) serveFunc(h http.HandlerFunc) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	ks.handler = h
}

func (ks *keyServer) url() string { return ks.srv.URL + "/.well-known/jwks.json" }

// verify checks tok through an auth.Verifier on keys.
func verify(ctx context.Context, keys auth.KeySet, tok string) error {
	_, err := (&auth.Verifier{Keys: keys}).Verify(ctx, tok, auth.KindAgent)
	return err
}

func TestJWKSVerifiesTokens(t *testing.T) {
	testenv.LeakCheck(t)
	ctx := ctxT(t)
	keys := []signingKey{newEd25519(t, "ed"), newP256(t, "ec")}
	ks := newKeyServer(t, jwksOf(t, keys...))
	j := &JWKS{URL: ks.url()}

	tests := []struct {
		name    string
		tok     string
		wantErr error
	}{
		{"Ed25519", keys[0].token(t, "t1"), nil},
		{"P-256", keys[1].token(t, "t2"), nil},
		{"Ed25519 again", keys[0].token(t, "t3"), nil},
		{"signed by a key not in the set", newEd25519(t, "ed").token(t, "t4"), auth.ErrInvalidToken},
		{"unknown kid", newEd25519(t, "other").token(t, "t5"), ErrUnknownKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := verify(ctx, j, tt.tok)
			if tt.wantErr == nil && err != nil || tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("Verify = %v, want %v", err, tt.wantErr)
			}
		})
	}
	// One fetch for all of it: the unknown kid came within MinRefresh of it.
	if n := ks.hits.Load(); n != 1 {
		t.Errorf("%d fetches, want 1", n)
	}
	kids, at := j.KeyIDs()
	if strings.Join(kids, ",") != "ec,ed" || at.IsZero() {
		t.Errorf("KeyIDs = %v, %v", kids, at)
	}
}

func TestJWKSRotation(t *testing.T) {
	testenv.LeakCheck(t)
	ctx := ctxT(t)
	clk := testenv.NewClock()
	k1, k2 := newEd25519(t, "k1"), newEd25519(t, "k2")
	ks := newKeyServer(t, jwksOf(t, k1))
	j := &JWKS{URL: ks.url(), Now: clk.Now, MinRefresh: time.Minute, MaxAge: time.Hour}

	steps := []struct {
		name     string
		advance  time.Duration
		serve    []signingKey // nil: keep serving what is served
		key      signingKey
		wantErr  bool
		wantHits int64
	}{
		{name: "old key", key: k1, wantHits: 1},
		// The control plane starts signing with k2 and publishes both.
		{name: "new key within MinRefresh of the last fetch", serve: []signingKey{k1, k2}, key: k2, wantErr: true, wantHits: 1},
		{name: "new key after MinRefresh", advance: time.Minute, key: k2, wantHits: 2},
		{name: "old key still published", key: k1, wantHits: 2},
		// k1 is withdrawn: it is used until the set is fetched again.
		{name: "withdrawn key until MaxAge", serve: []signingKey{k2}, advance: time.Hour - time.Second, key: k1, wantHits: 2},
		{name: "withdrawn key after MaxAge", advance: time.Second, key: k1, wantErr: true, wantHits: 3},
		{name: "current key", key: k2, wantHits: 3},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			if st.serve != nil {
				ks.serve(jwksOf(t, st.serve...))
			}
			clk.Add(st.advance)
			err := verify(ctx, j, st.key.token(t, "t"))
			if (err != nil) != st.wantErr {
				t.Fatalf("Verify = %v, want error %v", err, st.wantErr)
			}
			if st.wantErr && !errors.Is(err, ErrUnknownKey) {
				t.Errorf("Verify = %v, want ErrUnknownKey", err)
			}
			if n := ks.hits.Load(); n != st.wantHits {
				t.Errorf("%d fetches, want %d", n, st.wantHits)
			}
		})
	}
}

func TestJWKSUnknownKidRateLimited(t *testing.T) {
	testenv.LeakCheck(t)
	ctx := ctxT(t)
	clk := testenv.NewClock()
	k1 := newEd25519(t, "k1")
	ks := newKeyServer(t, jwksOf(t, k1))
	j := &JWKS{URL: ks.url(), Now: clk.Now, MinRefresh: 30 * time.Second, MaxAge: time.Hour}
	if err := j.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	// forged tries n tokens with made-up key ids, concurrently.
	forged := func(n int) {
		t.Helper()
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				tok := newEd25519(t, "forged-"+strconv.Itoa(i)).token(t, "t")
				if err := verify(ctx, j, tok); !errors.Is(err, ErrUnknownKey) {
					t.Errorf("Verify = %v, want ErrUnknownKey", err)
				}
			})
		}
		wg.Wait()
	}
	steps := []struct {
		advance  time.Duration
		wantHits int64
	}{
		{0, 1},
		{29 * time.Second, 1},
		{time.Second, 2}, // MinRefresh since the start-up fetch: one refetch for all of them
		{10 * time.Second, 2},
		{20 * time.Second, 3},
	}
	for _, st := range steps {
		clk.Add(st.advance)
		forged(20)
		if n := ks.hits.Load(); n != st.wantHits {
			t.Fatalf("after %v more: %d fetches, want %d", st.advance, n, st.wantHits)
		}
	}
	// The real key never waited for any of that.
	if err := verify(ctx, j, k1.token(t, "t")); err != nil {
		t.Fatal(err)
	}
}

func TestJWKSKeepsKeysWhenControlPlaneFails(t *testing.T) {
	k1 := newEd25519(t, "k1")
	tests := []struct {
		name  string
		fail  func(*keyServer)
		count bool // the failing server still counts requests
	}{
		{"server gone", func(ks *keyServer) { ks.srv.Close() }, false},
		{"HTTP 503", func(ks *keyServer) {
			ks.serveFunc(func(w http.ResponseWriter, _ *http.Request) {
				http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
			})
		}, true},
		{"garbage", func(ks *keyServer) { ks.serve([]byte("<html>login</html>")) }, true},
		{"empty key set", func(ks *keyServer) { ks.serve([]byte(`{"keys":[]}`)) }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			testenv.LeakCheck(t)
			ctx := ctxT(t)
			clk := testenv.NewClock()
			logs := &testenv.LogBuffer{}
			m := &fetchCounter{}
			ks := newKeyServer(t, jwksOf(t, k1))
			j := &JWKS{URL: ks.url(), Now: clk.Now, MinRefresh: 30 * time.Second, MaxAge: 10 * time.Minute, Logger: logs.Logger(), Metrics: m}
			if err := j.Refresh(ctx); err != nil {
				t.Fatal(err)
			}
			tt.fail(ks)

			clk.Add(time.Hour) // long past MaxAge
			for i := range 5 {
				if err := verify(ctx, j, k1.token(t, "t")); err != nil {
					t.Fatalf("Verify %d with the control plane failing: %v", i, err)
				}
			}
			if !strings.Contains(logs.String(), "still verifying with the last good keys") {
				t.Errorf("failure not logged; log:\n%s", logs)
			}
			if tt.count {
				// One attempt, not one per verification.
				if n := ks.hits.Load(); n != 2 {
					t.Errorf("%d fetches, want 2", n)
				}
			}
			if got := m.failed.Load(); got != 1 {
				t.Errorf("error fetches counted %v, want 1", got)
			}
			if err := j.Refresh(ctx); err == nil {
				t.Error("Refresh succeeded against a failing control plane")
			}
			clk.Add(30 * time.Second)
			if err := verify(ctx, j, k1.token(t, "t")); err != nil {
				t.Fatalf("Verify after retry interval: %v", err)
			}
			if got := m.ok.Load(); got != 1 {
				t.Errorf("good fetches counted %v, want 1", got)
			}
		})
	}
}

func TestJWKSRefusesBadKeySets(t *testing.T) {
	valid := jwksOf(t, newEd25519(t, "k1"))
	// A valid key set, padded past the size limit.
	padded := strings.TrimSuffix(string(valid), "}") + `,"pad":"` + strings.Repeat("x", auth.MaxJWKSSize) + `"}`
	tests := []struct {
		name    string
		handler http.HandlerFunc
		want    error // nil: any error
		wantMsg string
	}{
		{name: "oversized", handler: func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Length", strconv.Itoa(len(padded)))
			_, _ = w.Write([]byte(padded))
		}, want: auth.ErrBadJWKS, wantMsg: "announces"},
		{name: "oversized without length", handler: func(w http.ResponseWriter, _ *http.Request) {
			// Flushing first makes the response chunked, with no length.
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			for chunk := range chunks(padded, 4096) {
				_, _ = w.Write([]byte(chunk))
			}
		}, want: auth.ErrBadJWKS, wantMsg: "more than"},
		{name: "garbage", handler: func(w http.ResponseWriter, _ *http.Request) {
			_, _ = w.Write([]byte("not json"))
		}, want: auth.ErrBadJWKS},
		{name: "no usable key", handler: func(w http.ResponseWriter, _ *http.Request) {
			_, _ = w.Write([]byte(`{"keys":[{"kty":"RSA","kid":"r","n":"AQAB","e":"AQAB"}]}`))
		}, want: auth.ErrBadJWKS},
		{name: "not found", handler: func(w http.ResponseWriter, _ *http.Request) {
			http.NotFound(w, nil)
		}, wantMsg: "404"},
		{name: "redirect loop", handler: func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, r.URL.Path, http.StatusFound)
		}, wantMsg: "redirects"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			testenv.LeakCheck(t)
			ctx := ctxT(t)
			ks := newKeyServer(t, nil)
			ks.serveFunc(tt.handler)
			logs := &testenv.LogBuffer{}
			j := &JWKS{URL: ks.url(), Logger: logs.Logger()}
			err := j.Refresh(ctx)
			if err == nil || tt.want != nil && !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("Refresh = %v, want %v containing %q", err, tt.want, tt.wantMsg)
			}
			// With no key set at all, lookups fail and say why, without
			// another fetch within MinRefresh.
			hits := ks.hits.Load()
			_, err = j.PublicKey(ctx, "k1")
			if !errors.Is(err, ErrUnknownKey) || !strings.Contains(err.Error(), "no key set yet") {
				t.Errorf("PublicKey = %v, want ErrUnknownKey with the reason", err)
			}
			if n := ks.hits.Load(); n != hits {
				t.Errorf("PublicKey fetched again within MinRefresh")
			}
			if !strings.Contains(logs.String(), "level=ERROR") {
				t.Errorf("failure without keys not logged as an error; log:\n%s", logs)
			}
		})
	}
}

// chunks splits s into pieces of n bytes.
func chunks(s string, n int) func(func(string) bool) {
	return func(yield func(string) bool) {
		for len(s) > 0 {
			k := min(n, len(s))
			if !yield(s[:k]) {
				return
			}
			s = s[k:]
		}
	}
}

func TestJWKSSharesOneFetch(t *testing.T) {
	testenv.LeakCheck(t)
	ctx := ctxT(t)
	k1 := newEd25519(t, "k1")
	body := jwksOf(t, k1)
	ks := newKeyServer(t, nil)
	entered := make(chan struct{}, 100)
	release := make(chan struct{})
	ks.serveFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		_, _ = w.Write(body)
	})
	j := &JWKS{URL: ks.url()}

	const callers = 20
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for range callers {
		wg.Go(func() {
			_, err := j.PublicKey(ctx, "k1")
			errs <- err
		})
	}
	<-entered
	// Give the other callers time to join the fetch in flight; any that
	// come later find its keys, so the count below holds either way.
	time.Sleep(50 * time.Millisecond)
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if n := ks.hits.Load(); n != 1 {
		t.Errorf("%d fetches for %d concurrent callers, want 1", n, callers)
	}
}

func TestJWKSCallerGivesUp(t *testing.T) {
	testenv.LeakCheck(t)
	ctx := ctxT(t)
	k1 := newEd25519(t, "k1")
	body := jwksOf(t, k1)
	var first atomic.Bool
	first.Store(true)
	entered := make(chan struct{})
	ks := newKeyServer(t, nil)
	ks.serveFunc(func(w http.ResponseWriter, r *http.Request) {
		if first.CompareAndSwap(true, false) {
			close(entered)
			<-r.Context().Done() // hang until the caller gives up
			return
		}
		_, _ = w.Write(body)
	})
	j := &JWKS{URL: ks.url(), MinRefresh: time.Hour}

	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	leader := make(chan error, 1)
	go func() {
		_, err := j.PublicKey(short, "k1")
		leader <- err
	}()
	<-entered
	// Refresh joins the hanging fetch (or comes after it); when its caller
	// gives up, that says nothing about the control plane, so Refresh
	// fetches again at once rather than return the caller's error or wait
	// out MinRefresh.
	refreshed := make(chan error, 1)
	go func() { refreshed <- j.Refresh(ctx) }()
	if err := <-leader; !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("PublicKey with a short deadline = %v, want DeadlineExceeded", err)
	}
	if err := <-refreshed; err != nil {
		t.Fatalf("Refresh after an abandoned fetch: %v", err)
	}
	if _, err := j.PublicKey(ctx, "k1"); err != nil {
		t.Fatalf("PublicKey after Refresh: %v", err)
	}
	if _, err := j.PublicKey(ctx, ""); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("PublicKey(\"\") = %v, want ErrUnknownKey", err)
	}
	if n := ks.hits.Load(); n != 2 {
		t.Errorf("%d fetches, want 2", n)
	}
}

func TestJWKSFetchTimeout(t *testing.T) {
	testenv.LeakCheck(t)
	ctx := ctxT(t)
	ks := newKeyServer(t, nil)
	ks.serveFunc(func(_ http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	j := &JWKS{URL: ks.url(), Client: &http.Client{Timeout: 50 * time.Millisecond}}
	start := time.Now()
	err := j.Refresh(ctx)
	if err == nil || time.Since(start) > 5*time.Second {
		t.Fatalf("Refresh against a hanging server = %v after %v", err, time.Since(start))
	}
}
