// Package tokens issues and verifies the control plane's JWTs. The signing
// key (Ed25519) is created on first start and kept in the database (see
// controlplane.KeyStore), so every replica and every restart signs with the
// same key; verifiers elsewhere fetch the public half from the JWKS endpoint.
// Every issued token is recorded by id, which is what makes revocation work.
package tokens

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/shared/auth"
)

// Default lifetimes. An agent token is configured once into a cluster
// (PIPEOPS_TOKEN), so it lives long and is revoked when needed; user tokens
// are handed to people and expire sooner.
const (
	DefaultAgentTTL = 365 * 24 * time.Hour
	DefaultUserTTL  = 30 * 24 * time.Hour
	DefaultAdminTTL = 90 * 24 * time.Hour
)

// Issuer signs tokens with the newest key and verifies them with any key it
// holds. Safe for concurrent use.
type Issuer struct {
	tokens controlplane.TokenStore
	now    func() time.Time

	mu     sync.RWMutex
	kid    string
	signer ed25519.PrivateKey
	public auth.StaticKeys
}

// NewIssuer loads the signing keys, creating one when there is none.
func NewIssuer(ctx context.Context, keys controlplane.KeyStore, tokens controlplane.TokenStore) (*Issuer, error) {
	stored, err := keys.SigningKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("load signing keys: %w", err)
	}
	if len(stored) == 0 {
		k, err := newSigningKey(time.Now())
		if err != nil {
			return nil, err
		}
		if err := keys.AddSigningKey(ctx, k); err != nil {
			// Another replica may have created one at the same moment.
			if controlplane.ErrorCode(err) != controlplane.ECONFLICT {
				return nil, fmt.Errorf("store signing key: %w", err)
			}
		}
		if stored, err = keys.SigningKeys(ctx); err != nil || len(stored) == 0 {
			return nil, fmt.Errorf("reload signing keys: %v", err)
		}
	}
	iss := &Issuer{tokens: tokens, now: time.Now, public: auth.StaticKeys{}}
	for i, k := range stored {
		priv, err := parseKey(k)
		if err != nil {
			return nil, err
		}
		iss.public[k.ID] = priv.Public()
		if i == 0 {
			iss.kid, iss.signer = k.ID, priv
		}
	}
	return iss, nil
}

func newSigningKey(now time.Time) (controlplane.SigningKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return controlplane.SigningKey{}, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return controlplane.SigningKey{}, err
	}
	sum := sha256.Sum256(pub)
	return controlplane.SigningKey{
		ID:         hex.EncodeToString(sum[:8]), // stable, derived from the key
		Algorithm:  "EdDSA",
		PrivatePEM: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}),
		CreatedAt:  now,
	}, nil
}

func parseKey(k controlplane.SigningKey) (ed25519.PrivateKey, error) {
	block, _ := pem.Decode(k.PrivatePEM)
	if block == nil {
		return nil, fmt.Errorf("signing key %s: not PEM", k.ID)
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("signing key %s: %w", k.ID, err)
	}
	priv, ok := key.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("signing key %s: %T is not Ed25519", k.ID, key)
	}
	return priv, nil
}

// Request describes a token to issue.
type Request struct {
	Kind        auth.Kind
	ClusterUUID string   // agent tokens: the cluster
	Clusters    []string // user tokens: clusters it may reach
	Subject     string   // who it is for, for the record
	TTL         time.Duration
}

// Issue signs a token, records it, and returns it with its record.
func (i *Issuer) Issue(ctx context.Context, r Request) (string, controlplane.Token, error) {
	switch r.Kind {
	case auth.KindAgent:
		if r.ClusterUUID == "" {
			return "", controlplane.Token{}, controlplane.Errorf(controlplane.EINVALID, "an agent token needs a cluster")
		}
		r.TTL = orDefault(r.TTL, DefaultAgentTTL)
	case auth.KindUser:
		if len(r.Clusters) == 0 {
			return "", controlplane.Token{}, controlplane.Errorf(controlplane.EINVALID, "a user token needs at least one cluster")
		}
		r.TTL = orDefault(r.TTL, DefaultUserTTL)
	case auth.KindAdmin:
		r.TTL = orDefault(r.TTL, DefaultAdminTTL)
	default:
		return "", controlplane.Token{}, controlplane.Errorf(controlplane.EINVALID, "unknown token kind %q (agent, user, admin)", r.Kind)
	}
	now := i.now().UTC().Truncate(time.Second)
	idBytes := make([]byte, 16)
	_, _ = rand.Read(idBytes)
	rec := controlplane.Token{
		ID: hex.EncodeToString(idBytes), Kind: string(r.Kind), ClusterUUID: r.ClusterUUID, Clusters: r.Clusters,
		Subject: r.Subject, IssuedAt: now, ExpiresAt: now.Add(r.TTL),
	}
	claims := &auth.Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			ID: rec.ID, Subject: r.Subject, IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(rec.ExpiresAt),
		},
		Kind: r.Kind, ClusterID: r.ClusterUUID, Clusters: r.Clusters,
	}
	i.mu.RLock()
	signed, err := auth.Sign(i.signer, i.kid, claims)
	i.mu.RUnlock()
	if err != nil {
		return "", controlplane.Token{}, fmt.Errorf("sign token: %w", err)
	}
	if err := i.tokens.RecordToken(ctx, rec); err != nil {
		return "", controlplane.Token{}, fmt.Errorf("record token: %w", err)
	}
	return signed, rec, nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// Verifier returns a verifier that accepts this issuer's tokens and checks
// revocation against the token store on every use.
func (i *Issuer) Verifier() *auth.Verifier {
	return &auth.Verifier{Keys: i, Revoked: i.tokens, Now: func() time.Time { return i.now() }}
}

// PublicKey implements auth.KeySet.
func (i *Issuer) PublicKey(_ context.Context, kid string) (crypto.PublicKey, error) {
	i.mu.RLock()
	defer i.mu.RUnlock()
	k, ok := i.public[kid]
	if !ok {
		return nil, fmt.Errorf("unknown key id %q", kid)
	}
	return k, nil
}

// JWKS returns the public keys as a JSON Web Key Set.
func (i *Issuer) JWKS() ([]byte, error) {
	i.mu.RLock()
	defer i.mu.RUnlock()
	keys := make(map[string]crypto.PublicKey, len(i.public))
	for kid, k := range i.public {
		keys[kid] = k
	}
	return auth.MarshalJWKS(keys)
}

// SetClock replaces the clock; for tests.
func (i *Issuer) SetClock(now func() time.Time) { i.now = now }
