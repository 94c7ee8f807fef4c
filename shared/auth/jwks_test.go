package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
)

func TestJWKSRoundTrip(t *testing.T) {
	edPub, _, _ := ed25519.GenerateKey(rand.Reader)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	data, err := MarshalJWKS(map[string]crypto.PublicKey{"ed": edPub, "ec": &ecKey.PublicKey})
	if err != nil {
		t.Fatal(err)
	}
	keys, err := ParseJWKS(data)
	if err != nil {
		t.Fatal(err)
	}
	if !edPub.Equal(keys["ed"]) || !ecKey.PublicKey.Equal(keys["ec"]) {
		t.Fatalf("keys changed in the round trip: %v", keys)
	}
}

func TestParseJWKSRefuses(t *testing.T) {
	edPub, _, _ := ed25519.GenerateKey(rand.Reader)
	good, _ := MarshalJWKS(map[string]crypto.PublicKey{"ed": edPub})
	cases := map[string]string{
		"not json":      `{`,
		"empty":         `{"keys":[]}`,
		"only rsa":      `{"keys":[{"kty":"RSA","kid":"r","n":"AQAB","e":"AQAB"}]}`,
		"short ed25519": `{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AAAA","kid":"k"}]}`,
		"no kid":        strings.Replace(string(good), `"kid":"ed"`, `"kid":""`, 1),
		"duplicate kid": `{"keys":[` + strings.TrimSuffix(strings.TrimPrefix(string(good), `{"keys":[`), `]}`) + `,` + strings.TrimSuffix(strings.TrimPrefix(string(good), `{"keys":[`), `]}`) + `]}`,
		"off-curve ec":  `{"keys":[{"kty":"EC","crv":"P-256","x":"AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","y":"AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","kid":"e"}]}`,
		"oversized":     `{"keys":[],"pad":"` + strings.Repeat("x", MaxJWKSSize) + `"}`,
	}
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := ParseJWKS([]byte(in)); !errors.Is(err, ErrBadJWKS) {
				t.Fatalf("ParseJWKS = %v, want ErrBadJWKS", err)
			}
		})
	}
}

func FuzzParseJWKS(f *testing.F) {
	edPub, _, _ := ed25519.GenerateKey(rand.Reader)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	good, _ := MarshalJWKS(map[string]crypto.PublicKey{"ed": edPub, "ec": &ecKey.PublicKey})
	f.Add(good)
	f.Add([]byte(`{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AAAA","kid":"k"}]}`))
	f.Add([]byte(`{"keys":[{"kty":"EC","crv":"P-256","x":"","y":"","kid":"e"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		keys, err := ParseJWKS(data)
		if err != nil {
			return
		}
		again, err := MarshalJWKS(map[string]crypto.PublicKey(keys))
		if err != nil {
			t.Fatalf("parsed keys do not re-encode: %v", err)
		}
		if _, err := ParseJWKS(again); err != nil {
			t.Fatalf("re-encoded keys do not parse: %v", err)
		}
	})
}
