package authn

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/pipeops/tunnel/shared/auth"
	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/testenv/pgtest"
)

func TestMain(m *testing.M) { testenv.Main(m, pgtest.Stop) }

// leakCheck fails t if goroutines started during t outlive it. Call it
// before anything registers a cleanup, so that it runs after all of them;
// goroutines already running (a PostgreSQL server started by an earlier
// test, and its helpers) are not counted.
func leakCheck(t *testing.T) {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}

// clock is a settable time source, safe for concurrent use.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// logBuffer collects log output; safe for the concurrent writes of loggers
// used from several goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *logBuffer) Logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// signingKey is a control plane signing key and its id.
type signingKey struct {
	kid  string
	priv crypto.Signer
}

func newEd25519(t *testing.T, kid string) signingKey {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return signingKey{kid, priv}
}

func newP256(t *testing.T, kid string) signingKey {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return signingKey{kid, priv}
}

// token signs an agent token with id jti for cluster "c1".
func (k signingKey) token(t *testing.T, jti string) string {
	t.Helper()
	tok, err := auth.Sign(k.priv, k.kid, &auth.Claims{Kind: auth.KindAgent, ClusterID: "c1", RegisteredClaims: jwt.RegisteredClaims{
		ID: jti, ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour)),
	}})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// jwksOf is the JWKS document of the keys' public halves.
func jwksOf(t *testing.T, keys ...signingKey) []byte {
	t.Helper()
	pub := map[string]crypto.PublicKey{}
	for _, k := range keys {
		pub[k.kid] = k.priv.Public()
	}
	b, err := auth.MarshalJWKS(pub)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// counterValue reads a counter.
func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
