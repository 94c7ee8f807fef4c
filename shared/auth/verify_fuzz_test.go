package auth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/big"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// The fuzz test's keys and clock are fixed, not random: a failing input
// saved under testdata/fuzz holds a token signed with them, and must fail
// the same way when it is replayed.
var (
	fuzzNow     = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	fuzzLeeway  = 30 * time.Second
	fuzzEdKey   = ed25519.NewKeyFromSeed([]byte("fuzz-verify-ed25519-test-key-32b"))
	fuzzECKey   = mustRawECKey("fuzz-verify-es256-test-key---32b")
	fuzzForeign = ed25519.NewKeyFromSeed([]byte("fuzz-verify-not-a-known-key--32b"))
)

func mustRawECKey(seed string) *ecdsa.PrivateKey {
	k, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), []byte(seed))
	if err != nil {
		panic(err)
	}
	return k
}

// fuzzVerifier knows the two test keys and nothing else: no revocation or
// token-record check, so that what it accepts depends on the token alone.
func fuzzVerifier() *Verifier {
	return &Verifier{
		Keys:   StaticKeys{"ed": fuzzEdKey.Public(), "ec": fuzzECKey.Public()},
		Leeway: fuzzLeeway,
		Now:    func() time.Time { return fuzzNow },
	}
}

// verifySeeds are TestVerify's cases, signed with the fuzz keys at the fuzz
// clock.
func verifySeeds(f *testing.F) []string {
	claims := func(mod func(*Claims)) *Claims {
		c := &Claims{Kind: KindAgent, ClusterID: "c1", RegisteredClaims: jwt.RegisteredClaims{
			ID: "t1", ExpiresAt: jwt.NewNumericDate(fuzzNow.Add(time.Hour)), IssuedAt: jwt.NewNumericDate(fuzzNow),
		}}
		if mod != nil {
			mod(c)
		}
		return c
	}
	sign := func(key crypto.Signer, kid string, c *Claims) string {
		s, err := Sign(key, kid, c)
		if err != nil {
			f.Fatal(err)
		}
		return s
	}
	withAud := func(c *Claims) { c.Audience = jwt.ClaimStrings{Audience} }
	none, err := jwt.NewWithClaims(jwt.SigningMethodNone, claims(withAud)).SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		f.Fatal(err)
	}
	hmacTok := jwt.NewWithClaims(jwt.SigningMethodHS256, claims(withAud))
	hmacTok.Header["kid"] = "ed"
	hmac, err := hmacTok.SignedString([]byte(fuzzEdKey.Public().(ed25519.PublicKey)))
	if err != nil {
		f.Fatal(err)
	}
	return []string{
		sign(fuzzEdKey, "ed", claims(nil)),
		sign(fuzzECKey, "ec", claims(nil)),
		sign(fuzzEdKey, "ed", claims(func(c *Claims) { c.Kind, c.ClusterID, c.Clusters = KindUser, "", []string{"c1", "*"} })),
		sign(fuzzEdKey, "ed", claims(func(c *Claims) { c.Kind, c.ClusterID = KindAdmin, "" })),
		sign(fuzzEdKey, "ed", claims(func(c *Claims) {
			c.Kind, c.ClusterID, c.Clusters, c.Subject, c.Groups = KindUser, "", []string{"c1"}, "alice", []string{"dev", "system:masters"}
		})),
		sign(fuzzEdKey, "ed", claims(func(c *Claims) { c.ExpiresAt = jwt.NewNumericDate(fuzzNow.Add(-time.Hour)) })),
		sign(fuzzEdKey, "ed", claims(func(c *Claims) { c.ExpiresAt = jwt.NewNumericDate(fuzzNow.Add(-fuzzLeeway / 2)) })),
		sign(fuzzEdKey, "ed", claims(func(c *Claims) { c.NotBefore = jwt.NewNumericDate(fuzzNow.Add(time.Hour)) })),
		sign(fuzzEdKey, "ed", claims(func(c *Claims) { c.ExpiresAt = nil })),
		sign(fuzzEdKey, "ed", claims(func(c *Claims) { c.Audience = jwt.ClaimStrings{"other"} })),
		sign(fuzzEdKey, "nope", claims(nil)),
		sign(fuzzEdKey, "ec", claims(nil)), // an Ed25519 signature under the ECDSA key's id
		sign(fuzzForeign, "ed", claims(nil)),
		sign(fuzzEdKey, "ed", claims(func(c *Claims) { c.ID = "" })),
		none,
		hmac,
		"not.a.token",
		"",
	}
}

// signedByTestKey checks raw's signature with the test keys directly, without
// the JWT library: the reference Verify is held to.
func signedByTestKey(raw string) bool {
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return false
	}
	head, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		return false
	}
	var h struct {
		Alg string `json:"alg"`
	}
	if json.Unmarshal(head, &h) != nil {
		return false
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return false
	}
	signed := []byte(parts[0] + "." + parts[1])
	switch h.Alg {
	case "EdDSA":
		return ed25519.Verify(fuzzEdKey.Public().(ed25519.PublicKey), signed, sig)
	case "ES256":
		if len(sig) != 64 {
			return false
		}
		digest := sha256.Sum256(signed)
		r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
		return ecdsa.Verify(&fuzzECKey.PublicKey, digest[:], r, s)
	}
	return false
}

// FuzzVerify: Verify accepts only tokens signed by a key it holds, with an
// algorithm it allows, and only claims that are valid at its clock: a token
// id, our audience, an expiry not passed, no future not-before, and one of
// the kinds asked for. Every refusal is ErrInvalidToken or ErrWrongKind.
func FuzzVerify(f *testing.F) {
	for _, s := range verifySeeds(f) {
		f.Add(s)
	}
	v := fuzzVerifier()
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, raw string) {
		claims, err := v.Verify(ctx, raw)
		if err != nil {
			if claims != nil {
				t.Fatalf("claims %+v returned with error %v", claims, err)
			}
			if !errors.Is(err, ErrInvalidToken) {
				t.Fatalf("error %v is not ErrInvalidToken", err)
			}
			return
		}
		if !signedByTestKey(raw) {
			t.Fatalf("accepted a token no test key signed: %q", raw)
		}
		switch {
		case claims.ID == "":
			t.Fatalf("accepted a token without an id: %+v", claims)
		case !slices.Contains(claims.Audience, Audience):
			t.Fatalf("accepted audience %v", claims.Audience)
		case claims.ExpiresAt == nil:
			t.Fatalf("accepted a token without expiry: %+v", claims)
		case !fuzzNow.Before(claims.ExpiresAt.Add(fuzzLeeway)):
			t.Fatalf("accepted a token that expired at %v (now %v)", claims.ExpiresAt, fuzzNow)
		case claims.NotBefore != nil && fuzzNow.Add(fuzzLeeway).Before(claims.NotBefore.Time):
			t.Fatalf("accepted a token not valid before %v (now %v)", claims.NotBefore, fuzzNow)
		}
		if user, groups := claims.Identity(); user != "" && ValidateIdentity(user, groups) != nil {
			t.Fatalf("Identity() = %q, %q: names no valid identity, want \"\"", user, groups)
		}
		for _, kind := range []Kind{KindAgent, KindUser, KindAdmin} {
			got, err := v.Verify(ctx, raw, kind)
			switch {
			case claims.Kind == kind && err != nil:
				t.Fatalf("Verify(kind %s) of a %s token: %v", kind, claims.Kind, err)
			case claims.Kind != kind && !errors.Is(err, ErrWrongKind):
				t.Fatalf("Verify(kind %s) of a %q token = %+v, %v; want ErrWrongKind", kind, claims.Kind, got, err)
			}
		}
	})
}
