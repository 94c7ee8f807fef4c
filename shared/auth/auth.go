// Package auth defines the JWT claims the control plane issues and the
// verification every server applies to them. The control plane signs with an
// asymmetric key (Ed25519 or ECDSA P-256); verifiers hold only public keys,
// looked up by the token's key id.
package auth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Kind says what a token may do.
type Kind string

const (
	// KindAgent tokens belong to one cluster's agent: register, open its
	// tunnel, sync its routes.
	KindAgent Kind = "agent"
	// KindUser tokens reach the Kubernetes API of the clusters they name,
	// on behalf of the person their subject names (see Claims.Identity).
	KindUser Kind = "user"
	// KindAdmin tokens manage the control plane and reach every cluster;
	// their subject and groups are the control plane's configured admin
	// identity.
	KindAdmin Kind = "admin"
)

// Audience is the audience every token of this platform carries; a token
// minted for anything else is refused.
const Audience = "pipeops-tunnel"

// Issuer is the issuer (iss) of the tokens the control plane signs. Tokens
// issued before it was set carry none; their records say so, and a token is
// held to its record (see Record).
const Issuer = "pipeops-controlplane"

// Claims are the claims of every token. ID (jti) names the token for
// revocation; Subject (sub) names the person a user or admin token acts
// for (see Identity).
type Claims struct {
	jwt.RegisteredClaims
	Kind Kind `json:"kind"`
	// ClusterID is the cluster an agent token belongs to.
	ClusterID string `json:"cluster_id,omitempty"`
	// Clusters lists the clusters a user token may reach ("*" for all).
	Clusters []string `json:"clusters,omitempty"`
	// Groups are the groups of the person a user or admin token names:
	// what the agent is to impersonate together with the subject.
	Groups []string `json:"groups,omitempty"`
}

// AllowsCluster reports whether the token may act on cluster.
func (c *Claims) AllowsCluster(cluster string) bool {
	switch c.Kind {
	case KindAdmin:
		return true
	case KindAgent:
		return c.ClusterID == cluster
	case KindUser:
		return slices.Contains(c.Clusters, cluster) || slices.Contains(c.Clusters, "*")
	}
	return false
}

// Errors a verifier returns; all of them mean HTTP 401.
var (
	ErrInvalidToken = errors.New("auth: invalid token")
	ErrRevoked      = errors.New("auth: token revoked")
	ErrWrongKind    = errors.New("auth: token kind not allowed here")
	// ErrNotAsRecorded means a correctly signed token whose claims are not
	// those its record holds: it was signed by someone holding the key but
	// not issued by the control plane. Count it; it is never a mistake.
	ErrNotAsRecorded = errors.New("auth: token claims differ from its record")
)

// Record is what the issuer stored about a token when it issued it. A valid
// token carries exactly these claims.
type Record struct {
	Issuer    string
	Kind      Kind
	ClusterID string
	Clusters  []string
	Subject   string
	Groups    []string
	ExpiresAt time.Time
	Revoked   bool
}

// RecordSource finds a token's record: nil and no error for an unknown id
// (which no valid token has: every issued token is recorded first).
type RecordSource interface {
	TokenRecord(ctx context.Context, tokenID string) (*Record, error)
}

// Match returns nil when c carries exactly the claims of r, else an error
// naming the first claim that differs (and wrapping ErrNotAsRecorded).
func (r *Record) Match(c *Claims) error {
	differs := func(claim string) error {
		return fmt.Errorf("%w: %s of token %s", ErrNotAsRecorded, claim, c.ID)
	}
	switch {
	case c.Issuer != r.Issuer:
		return differs("issuer")
	case len(c.Audience) != 1 || c.Audience[0] != Audience:
		return differs("audience")
	case c.Kind != r.Kind:
		return differs("kind")
	case c.ClusterID != r.ClusterID:
		return differs("cluster_id")
	case !sameSet(c.Clusters, r.Clusters):
		return differs("clusters")
	case c.Subject != r.Subject:
		return differs("subject")
	case !sameSet(c.Groups, r.Groups):
		return differs("groups")
	case c.ExpiresAt == nil || !c.ExpiresAt.Time.Equal(r.ExpiresAt.Truncate(time.Second)):
		return differs("expiry")
	}
	return nil
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// KeySet finds the public key for a key id.
type KeySet interface {
	PublicKey(ctx context.Context, kid string) (crypto.PublicKey, error)
}

// StaticKeys is a KeySet of fixed keys by key id.
type StaticKeys map[string]crypto.PublicKey

// PublicKey implements KeySet.
func (s StaticKeys) PublicKey(_ context.Context, kid string) (crypto.PublicKey, error) {
	k, ok := s[kid]
	if !ok {
		return nil, fmt.Errorf("unknown key id %q", kid)
	}
	return k, nil
}

// RevocationChecker reports whether a token id has been revoked.
type RevocationChecker interface {
	Revoked(ctx context.Context, tokenID string) (bool, error)
}

// Verifier checks tokens: signature by a known key (EdDSA or ES256 only, so
// "none" and HMAC confusion are refused), issuer, audience, expiry, the
// token's record, and revocation. Safe for concurrent use.
type Verifier struct {
	Keys    KeySet
	Revoked RevocationChecker // optional
	// Records, when set, holds every token to its record: an unknown id or
	// a claim that differs (issuer, audience, kind, clusters, subject,
	// groups, expiry) is refused, so even a holder of the signing key
	// cannot widen a token or mint one the control plane did not issue. A
	// record that says revoked is refused too.
	Records RecordSource
	// OnRefuse, when set, is told of every token refused, with the error
	// Verify returns (for counting by cause; see Cause). It must not block.
	OnRefuse func(err error)
	// Leeway tolerates clock skew on exp/nbf/iat (default 30 s).
	Leeway time.Duration
	// Now is the clock (default time.Now); for tests.
	Now func() time.Time
}

// Verify parses and checks raw and returns its claims when it is valid and
// of one of the allowed kinds (any kind when none are given).
func (v *Verifier) Verify(ctx context.Context, raw string, kinds ...Kind) (*Claims, error) {
	c, err := v.verify(ctx, raw, kinds)
	if err != nil && v.OnRefuse != nil {
		v.OnRefuse(err)
	}
	return c, err
}

// Cause names the cause of a Verify error, for metrics: not_as_recorded,
// revoked, wrong_kind, invalid, or error (the key set or record store
// failed).
func Cause(err error) string {
	switch {
	case errors.Is(err, ErrNotAsRecorded):
		return "not_as_recorded"
	case errors.Is(err, ErrRevoked):
		return "revoked"
	case errors.Is(err, ErrWrongKind):
		return "wrong_kind"
	case errors.Is(err, ErrInvalidToken):
		return "invalid"
	default:
		return "error"
	}
}

func (v *Verifier) verify(ctx context.Context, raw string, kinds []Kind) (*Claims, error) {
	leeway := v.Leeway
	if leeway == 0 {
		leeway = 30 * time.Second
	}
	opts := []jwt.ParserOption{
		jwt.WithValidMethods([]string{"EdDSA", "ES256"}),
		jwt.WithAudience(Audience),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(leeway),
	}
	if v.Now != nil {
		opts = append(opts, jwt.WithTimeFunc(v.Now))
	}
	claims := &Claims{}
	_, err := jwt.ParseWithClaims(raw, claims, func(t *jwt.Token) (any, error) {
		kid, _ := t.Header["kid"].(string)
		return v.Keys.PublicKey(ctx, kid)
	}, opts...)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidToken, err)
	}
	if claims.ID == "" {
		return nil, fmt.Errorf("%w: no token id (jti)", ErrInvalidToken)
	}
	if claims.Issuer != "" && claims.Issuer != Issuer {
		return nil, fmt.Errorf("%w: issuer %q is not %q", ErrInvalidToken, claims.Issuer, Issuer)
	}
	if len(kinds) > 0 && !slices.Contains(kinds, claims.Kind) {
		return nil, fmt.Errorf("%w: %q", ErrWrongKind, claims.Kind)
	}
	if v.Records != nil {
		rec, err := v.Records.TokenRecord(ctx, claims.ID)
		switch {
		case err != nil:
			return nil, fmt.Errorf("load the record of token %s: %w", claims.ID, err)
		case rec == nil:
			return nil, fmt.Errorf("%w: %s (no record)", ErrRevoked, claims.ID)
		case rec.Revoked:
			return nil, fmt.Errorf("%w: %s", ErrRevoked, claims.ID)
		}
		if err := rec.Match(claims); err != nil {
			return nil, err
		}
	}
	if v.Revoked != nil {
		revoked, err := v.Revoked.Revoked(ctx, claims.ID)
		if err != nil {
			return nil, fmt.Errorf("check revocation of %s: %w", claims.ID, err)
		}
		if revoked {
			return nil, fmt.Errorf("%w: %s", ErrRevoked, claims.ID)
		}
	}
	return claims, nil
}

// Sign signs claims with key (ed25519.PrivateKey or *ecdsa.PrivateKey on
// P-256) under key id kid. It fills the audience when empty.
func Sign(key crypto.Signer, kid string, claims *Claims) (string, error) {
	var method jwt.SigningMethod
	switch k := key.(type) {
	case ed25519.PrivateKey:
		method = jwt.SigningMethodEdDSA
	case *ecdsa.PrivateKey:
		if k.Curve != elliptic.P256() {
			return "", errors.New("auth: ECDSA keys must be on P-256")
		}
		method = jwt.SigningMethodES256
	default:
		return "", fmt.Errorf("auth: unsupported signing key %T", key)
	}
	if len(claims.Audience) == 0 {
		claims.Audience = jwt.ClaimStrings{Audience}
	}
	t := jwt.NewWithClaims(method, claims)
	t.Header["kid"] = kid
	return t.SignedString(key)
}
