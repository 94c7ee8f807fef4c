package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
)

// JWKS limits: a key set is small; anything bigger is not ours.
const (
	MaxJWKSSize = 64 << 10
	MaxJWKSKeys = 32
)

// ErrBadJWKS is returned for a key set that cannot be used.
var ErrBadJWKS = errors.New("auth: bad JWKS")

// JWK is one public key in JSON Web Key form (RFC 7517/8037).
type JWK struct {
	KeyType string `json:"kty"`
	Curve   string `json:"crv"`
	X       string `json:"x"`
	Y       string `json:"y,omitempty"`
	KeyID   string `json:"kid"`
	Alg     string `json:"alg,omitempty"`
	Use     string `json:"use,omitempty"`
}

// JWKS is a JSON Web Key Set.
type JWKS struct {
	Keys []JWK `json:"keys"`
}

var b64 = base64.RawURLEncoding

// MarshalJWKS encodes the public keys (Ed25519 or ECDSA P-256), sorted by key id.
func MarshalJWKS(keys map[string]crypto.PublicKey) ([]byte, error) {
	set := JWKS{Keys: []JWK{}}
	for kid, k := range keys {
		switch k := k.(type) {
		case ed25519.PublicKey:
			set.Keys = append(set.Keys, JWK{KeyType: "OKP", Curve: "Ed25519", X: b64.EncodeToString(k), KeyID: kid, Alg: "EdDSA", Use: "sig"})
		case *ecdsa.PublicKey:
			if k.Curve != elliptic.P256() {
				return nil, fmt.Errorf("key %s: only P-256 ECDSA keys are supported", kid)
			}
			// The uncompressed point: 0x04, then X and Y, 32 bytes each.
			point, err := k.Bytes()
			if err != nil {
				return nil, fmt.Errorf("key %s: %w", kid, err)
			}
			x, y := point[1:33], point[33:65]
			set.Keys = append(set.Keys, JWK{KeyType: "EC", Curve: "P-256", X: b64.EncodeToString(x), Y: b64.EncodeToString(y), KeyID: kid, Alg: "ES256", Use: "sig"})
		default:
			return nil, fmt.Errorf("key %s: unsupported key type %T", kid, k)
		}
	}
	sort.Slice(set.Keys, func(i, j int) bool { return set.Keys[i].KeyID < set.Keys[j].KeyID })
	return json.Marshal(set)
}

// ParseJWKS decodes a key set into StaticKeys. Keys of other types or uses
// are skipped (a set may carry keys for other purposes); malformed keys of
// our types, oversized input, duplicate key ids and a set with no usable key
// are errors.
func ParseJWKS(data []byte) (StaticKeys, error) {
	if len(data) > MaxJWKSSize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrBadJWKS, len(data), MaxJWKSSize)
	}
	var set JWKS
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadJWKS, err)
	}
	if len(set.Keys) > MaxJWKSKeys {
		return nil, fmt.Errorf("%w: %d keys, limit %d", ErrBadJWKS, len(set.Keys), MaxJWKSKeys)
	}
	out := StaticKeys{}
	for _, k := range set.Keys {
		if k.Use != "" && k.Use != "sig" {
			continue
		}
		var pub crypto.PublicKey
		switch {
		case k.KeyType == "OKP" && k.Curve == "Ed25519":
			x, err := b64.DecodeString(k.X)
			if err != nil || len(x) != ed25519.PublicKeySize {
				return nil, fmt.Errorf("%w: key %q: bad Ed25519 x", ErrBadJWKS, k.KeyID)
			}
			pub = ed25519.PublicKey(x)
		case k.KeyType == "EC" && k.Curve == "P-256":
			x, errX := b64.DecodeString(k.X)
			y, errY := b64.DecodeString(k.Y)
			if errX != nil || errY != nil || len(x) != 32 || len(y) != 32 {
				return nil, fmt.Errorf("%w: key %q: bad P-256 coordinates", ErrBadJWKS, k.KeyID)
			}
			// Go through the checked encoder: it refuses points off the curve.
			uncompressed := append(append([]byte{4}, x...), y...)
			ek, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), uncompressed)
			if err != nil {
				return nil, fmt.Errorf("%w: key %q: %v", ErrBadJWKS, k.KeyID, err)
			}
			pub = ek
		default:
			continue
		}
		if k.KeyID == "" {
			return nil, fmt.Errorf("%w: a key has no kid", ErrBadJWKS)
		}
		if _, dup := out[k.KeyID]; dup {
			return nil, fmt.Errorf("%w: duplicate kid %q", ErrBadJWKS, k.KeyID)
		}
		out[k.KeyID] = pub
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: no usable signing key", ErrBadJWKS)
	}
	return out, nil
}
