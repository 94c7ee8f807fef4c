// Package tokens issues and verifies the control plane's JWTs. The signing
// key (Ed25519) is created on first start and kept in the database (see
// controlplane.KeyStore), sealed under a key-encryption key the database
// never sees (package keyseal), so every replica and every restart signs
// with the same key; verifiers elsewhere fetch the public half from the JWKS
// endpoint. Keys are rotated by adding a newer one (RotateKey) and retired
// by deleting an old one; issuers read the keys again every KeyReload, so a
// rotation needs no restart. Every issued token is recorded by id, which is
// what makes revocation work.
package tokens

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/controlplane/keyseal"
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

// The identity admin tokens carry when none is configured (Options.AdminUser
// and AdminGroups): names of our own, outside Kubernetes' reserved
// "system:" names, that a cluster binds to the rights its admins get.
const (
	DefaultAdminUser  = "pipeops:admin"
	DefaultAdminGroup = "pipeops:admins"
)

// Issuer signs tokens with the newest key and verifies them with any key it
// holds. It reads the keys again every KeyReload (and, at most once a
// second, when a token names a key id it does not hold), so a key rotated
// or retired by the CLI or another replica is seen without a restart. Safe
// for concurrent use.
type Issuer struct {
	tokens controlplane.TokenStore
	now    func() time.Time

	keys        controlplane.KeyStore
	kek         *keyseal.Keyring
	reloadEvery time.Duration
	log         *slog.Logger
	adminUser   string     // sub of every admin token
	adminGroups []string   // groups of every admin token; never modified
	reloading   sync.Mutex // held by the one caller reading the keys
	lastUnknown time.Time  // the last read for an unknown key id; under reloading

	mu     sync.RWMutex
	kid    string
	signer ed25519.PrivateKey
	public auth.StaticKeys
	loaded time.Time // when the keys were last read, or a read failed
}

// Request describes a token to issue.
type Request struct {
	Kind        auth.Kind
	ClusterUUID string   // agent tokens: the cluster
	Clusters    []string // user tokens: clusters it may reach
	// Subject is the person a user token acts for (see
	// auth.Claims.Identity), checked by auth.ValidateIdentity; "" issues a
	// user token that names nobody, which the agent will not impersonate.
	// On an agent token it is a label for the record. An admin token's
	// subject is always the issuer's admin identity, whatever is given.
	Subject string
	// Groups are the groups of a user token's Subject (user tokens only;
	// they need a Subject).
	Groups []string
	TTL    time.Duration
}

// Issue signs a token, records it, and returns it with its record.
func (i *Issuer) Issue(ctx context.Context, r Request) (string, controlplane.Token, error) {
	if len(r.Groups) > 0 && r.Kind != auth.KindUser {
		return "", controlplane.Token{}, controlplane.Errorf(controlplane.EINVALID,
			"groups are for user tokens only: an admin token carries the configured admin identity, an agent token names no person")
	}
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
		if r.Subject == "" && len(r.Groups) > 0 {
			return "", controlplane.Token{}, controlplane.Errorf(controlplane.EINVALID, "a user token with groups needs a subject: the user they belong to")
		}
		if r.Subject != "" {
			if err := auth.ValidateIdentity(r.Subject, r.Groups); err != nil {
				return "", controlplane.Token{}, controlplane.Errorf(controlplane.EINVALID, "user token: %v", err)
			}
		}
		r.TTL = orDefault(r.TTL, DefaultUserTTL)
	case auth.KindAdmin:
		r.Subject, r.Groups = i.adminUser, slices.Clone(i.adminGroups)
		r.TTL = orDefault(r.TTL, DefaultAdminTTL)
	default:
		return "", controlplane.Token{}, controlplane.Errorf(controlplane.EINVALID, "unknown token kind %q (agent, user, admin)", r.Kind)
	}
	now := i.now().UTC().Truncate(time.Second)
	idBytes := make([]byte, 16)
	_, _ = rand.Read(idBytes)
	rec := controlplane.Token{
		ID: hex.EncodeToString(idBytes), Issuer: auth.Issuer, Kind: string(r.Kind), ClusterUUID: r.ClusterUUID, Clusters: r.Clusters,
		Subject: r.Subject, Groups: r.Groups, IssuedAt: now, ExpiresAt: now.Add(r.TTL),
	}
	claims := &auth.Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			ID: rec.ID, Issuer: auth.Issuer, Subject: r.Subject, IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(rec.ExpiresAt),
		},
		Kind: r.Kind, ClusterID: r.ClusterUUID, Clusters: r.Clusters, Groups: r.Groups,
	}
	kid, signer := i.signingKey(ctx)
	signed, err := auth.Sign(signer, kid, claims)
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

// Verifier returns a verifier that accepts this issuer's tokens and holds
// each to its record in the token store (revocation included) on every use.
func (i *Issuer) Verifier() *auth.Verifier {
	return &auth.Verifier{Keys: i, Records: controlplane.TokenRecords{Store: i.tokens}, Now: func() time.Time { return i.now() }}
}

// PublicKey implements auth.KeySet. A key id it does not hold makes it read
// the keys again (at most once a second) before refusing: the key may have
// been rotated in since the last read.
func (i *Issuer) PublicKey(ctx context.Context, kid string) (crypto.PublicKey, error) {
	i.refresh(ctx)
	if k, ok := i.publicKey(kid); ok {
		return k, nil
	}
	i.refreshUnknown(ctx)
	if k, ok := i.publicKey(kid); ok {
		return k, nil
	}
	return nil, fmt.Errorf("unknown key id %q", kid)
}

func (i *Issuer) publicKey(kid string) (crypto.PublicKey, bool) {
	i.mu.RLock()
	defer i.mu.RUnlock()
	k, ok := i.public[kid]
	return k, ok
}

// JWKS returns the public keys as a JSON Web Key Set: every key until it is
// retired, so tokens signed before a rotation keep verifying.
func (i *Issuer) JWKS(ctx context.Context) ([]byte, error) {
	i.refresh(ctx)
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
