package keyset

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/pipeops/tunnel/shared/auth"
	"github.com/pipeops/tunnel/shared/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

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

// fetchCounter is an Observer that counts.
type fetchCounter struct{ ok, failed atomic.Int64 }

func (c *fetchCounter) JWKSFetched(time.Time) { c.ok.Add(1) }
func (c *fetchCounter) JWKSFetchFailed()      { c.failed.Add(1) }
