package auth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

type revokedSet map[string]bool

func (r revokedSet) Revoked(_ context.Context, id string) (bool, error) { return r[id], nil }

func TestVerify(t *testing.T) {
	ctx := context.Background()
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, otherPriv, _ := ed25519.GenerateKey(rand.Reader)
	v := &Verifier{Keys: StaticKeys{"k1": pub, "k2": &ecKey.PublicKey}, Revoked: revokedSet{"gone": true}}

	now := time.Now()
	claims := func(mod func(*Claims)) *Claims {
		c := &Claims{Kind: KindAgent, ClusterID: "c1", RegisteredClaims: jwt.RegisteredClaims{
			ID: "t1", ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour)), IssuedAt: jwt.NewNumericDate(now),
		}}
		if mod != nil {
			mod(c)
		}
		return c
	}
	mustSign := func(key crypto.Signer, kid string, c *Claims) string {
		t.Helper()
		s, err := Sign(key, kid, c)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	noneToken, _ := jwt.NewWithClaims(jwt.SigningMethodNone, claims(func(c *Claims) { c.Audience = jwt.ClaimStrings{Audience} })).SignedString(jwt.UnsafeAllowNoneSignatureType)
	hmacToken, _ := func() (string, error) {
		tk := jwt.NewWithClaims(jwt.SigningMethodHS256, claims(func(c *Claims) { c.Audience = jwt.ClaimStrings{Audience} }))
		tk.Header["kid"] = "k1"
		return tk.SignedString([]byte(pub))
	}()

	cases := []struct {
		name  string
		token string
		kinds []Kind
		want  error
	}{
		{"ed25519 ok", mustSign(priv, "k1", claims(nil)), nil, nil},
		{"es256 ok", mustSign(ecKey, "k2", claims(nil)), []Kind{KindAgent}, nil},
		{"expired", mustSign(priv, "k1", claims(func(c *Claims) { c.ExpiresAt = jwt.NewNumericDate(now.Add(-time.Hour)) })), nil, ErrInvalidToken},
		{"no expiry", mustSign(priv, "k1", claims(func(c *Claims) { c.ExpiresAt = nil })), nil, ErrInvalidToken},
		{"wrong audience", mustSign(priv, "k1", claims(func(c *Claims) { c.Audience = jwt.ClaimStrings{"other"} })), nil, ErrInvalidToken},
		{"unknown kid", mustSign(priv, "nope", claims(nil)), nil, ErrInvalidToken},
		{"wrong key", mustSign(otherPriv, "k1", claims(nil)), nil, ErrInvalidToken},
		{"alg none", noneToken, nil, ErrInvalidToken},
		{"hmac with public key", hmacToken, nil, ErrInvalidToken},
		{"garbage", "not.a.token", nil, ErrInvalidToken},
		{"no jti", mustSign(priv, "k1", claims(func(c *Claims) { c.ID = "" })), nil, ErrInvalidToken},
		{"revoked", mustSign(priv, "k1", claims(func(c *Claims) { c.ID = "gone" })), nil, ErrRevoked},
		{"wrong kind", mustSign(priv, "k1", claims(nil)), []Kind{KindUser}, ErrWrongKind},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := v.Verify(ctx, c.token, c.kinds...)
			if c.want == nil {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				if got.ClusterID != "c1" || got.Kind != KindAgent {
					t.Fatalf("claims = %+v", got)
				}
				return
			}
			if !errors.Is(err, c.want) {
				t.Fatalf("Verify err = %v, want %v", err, c.want)
			}
		})
	}
}

func TestAllowsCluster(t *testing.T) {
	cases := []struct {
		c    Claims
		want map[string]bool
	}{
		{Claims{Kind: KindAgent, ClusterID: "a"}, map[string]bool{"a": true, "b": false}},
		{Claims{Kind: KindUser, Clusters: []string{"a", "c"}}, map[string]bool{"a": true, "b": false, "c": true}},
		{Claims{Kind: KindUser, Clusters: []string{"*"}}, map[string]bool{"a": true, "b": true}},
		{Claims{Kind: KindAdmin}, map[string]bool{"a": true}},
		{Claims{Kind: "other", ClusterID: "a"}, map[string]bool{"a": false}},
	}
	for _, c := range cases {
		for cluster, want := range c.want {
			if got := c.c.AllowsCluster(cluster); got != want {
				t.Errorf("%+v AllowsCluster(%q) = %v, want %v", c.c, cluster, got, want)
			}
		}
	}
}
