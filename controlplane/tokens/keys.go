package tokens

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"time"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/controlplane/keyseal"
	"github.com/pipeops/tunnel/shared/auth"
)

// DefaultKeyReload is how long an Issuer uses the signing keys it read
// before reading them again. It bounds how long a replica keeps signing
// with the previous key after a rotation, and keeps verifying with a
// retired one.
const DefaultKeyReload = 30 * time.Second

// unknownKeyReload is the least time between two reads caused by tokens
// whose key id the issuer does not hold (a key rotated in since the last
// read), so that forged key ids cannot flood the database.
const unknownKeyReload = time.Second

// algorithm is the JWS algorithm of the keys this package makes.
const algorithm = "EdDSA"

// Options configure NewIssuer.
type Options struct {
	// KEK seals the signing keys the issuer creates and opens the stored
	// ones (required).
	KEK *keyseal.Keyring
	// KeyReload is how often the keys are read again (default
	// DefaultKeyReload), so that a rotation reaches every replica without
	// a restart.
	KeyReload time.Duration
	// Logger receives the one-time sealing of plaintext keys and failed
	// reloads; nil discards.
	Logger *slog.Logger
	// AdminUser and AdminGroups are the identity every admin token carries
	// as its sub and groups claims, so that the agent can impersonate an
	// admin with no configuration of its own (ADMIN_IDENTITY_USER and
	// ADMIN_IDENTITY_GROUPS). "" means DefaultAdminUser and nil means
	// DefaultAdminGroup alone; both must pass auth.ValidateIdentity.
	AdminUser   string
	AdminGroups []string
}

// NewIssuer loads the signing keys, creating one when there is none, and
// sealing under the current KEK keys stored in plaintext by versions before
// keys were sealed (logged, once: the first start that finds them).
// Every key must open under the KEK or one of the previous KEKs: a key that
// does not is an error naming it and the KEK it needs.
func NewIssuer(ctx context.Context, keys controlplane.KeyStore, tokens controlplane.TokenStore, opts Options) (*Issuer, error) {
	if opts.KEK == nil {
		return nil, errors.New("tokens: Options.KEK is required: signing keys are stored sealed under a key-encryption key")
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	reload := opts.KeyReload
	if reload <= 0 {
		reload = DefaultKeyReload
	}
	adminUser, adminGroups := opts.AdminUser, slices.Clone(opts.AdminGroups)
	if adminUser == "" {
		adminUser = DefaultAdminUser
	}
	if adminGroups == nil {
		adminGroups = []string{DefaultAdminGroup}
	}
	if err := auth.ValidateIdentity(adminUser, adminGroups); err != nil {
		return nil, fmt.Errorf("tokens: admin identity: %w", err)
	}
	iss := &Issuer{tokens: tokens, now: time.Now, keys: keys, kek: opts.KEK, reloadEvery: reload, log: log,
		adminUser: adminUser, adminGroups: adminGroups, public: auth.StaticKeys{}}

	stored, err := keys.SigningKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("load signing keys: %w", err)
	}
	if len(stored) == 0 {
		k, err := newSigningKey(opts.KEK, time.Now())
		if err != nil {
			return nil, err
		}
		// ECONFLICT: another replica created one at the same moment; the
		// reload below takes the winner's.
		if err := keys.AddSigningKey(ctx, k); err != nil && controlplane.ErrorCode(err) != controlplane.ECONFLICT {
			return nil, fmt.Errorf("store signing key: %w", err)
		}
	} else {
		sealed, err := sealPlaintext(ctx, keys, opts.KEK, stored)
		if err != nil {
			return nil, err
		}
		for _, kid := range sealed {
			log.Warn("sealed a signing key that was stored in plaintext; copies of the plaintext may remain in backups and old row versions, so rotate it (keys rotate, and keys retire once its tokens are re-issued)",
				"kid", kid, "kek", opts.KEK.Current().ID())
		}
	}
	if err := iss.Reload(ctx); err != nil {
		return nil, err
	}
	return iss, nil
}

// newSigningKey makes an Ed25519 key sealed under kek's current KEK.
func newSigningKey(kek *keyseal.Keyring, now time.Time) (controlplane.SigningKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return controlplane.SigningKey{}, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return controlplane.SigningKey{}, err
	}
	sum := sha256.Sum256(pub)
	kid := hex.EncodeToString(sum[:8]) // stable, derived from the key
	sealed, err := kek.Seal(der, kid)
	if err != nil {
		return controlplane.SigningKey{}, fmt.Errorf("seal signing key %s: %w", kid, err)
	}
	return controlplane.SigningKey{ID: kid, Algorithm: algorithm, Sealed: sealed, KEKID: kek.Current().ID(), CreatedAt: now}, nil
}

// openKey returns the private key of a stored key. Plaintext keys are
// refused: only NewIssuer's one-time sealing reads those.
func openKey(kek *keyseal.Keyring, k controlplane.SigningKey) (ed25519.PrivateKey, error) {
	if len(k.Sealed) == 0 {
		return nil, fmt.Errorf("signing key %s is stored in plaintext: it is sealed on the first start with a key-encryption key, or refused when sealed keys exist", k.ID)
	}
	if k.Algorithm != algorithm {
		return nil, fmt.Errorf("signing key %s: algorithm %q, want %s", k.ID, k.Algorithm, algorithm)
	}
	der, kekID, err := kek.Open(k.Sealed, k.ID)
	if err != nil {
		return nil, fmt.Errorf("signing key %s: %w", k.ID, err)
	}
	if kekID != k.KEKID {
		return nil, fmt.Errorf("signing key %s: sealed under KEK %s, but its row says %s: the row was altered", k.ID, kekID, k.KEKID)
	}
	return parseDER(k.ID, der)
}

func parseDER(kid string, der []byte) (ed25519.PrivateKey, error) {
	key, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("signing key %s: %w", kid, err)
	}
	priv, ok := key.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("signing key %s: %T is not Ed25519", kid, key)
	}
	return priv, nil
}

// sealPlaintext seals the keys stored in plaintext, all in one
// transaction, and returns their ids. It does so only while no key is
// sealed: that is a database upgraded from a version before sealing. A
// plaintext key next to sealed ones was not written by this control plane
// (which writes sealed keys only), and adopting it would let whoever wrote
// it mint tokens: refused. When another process seals them first, nothing
// is returned.
func sealPlaintext(ctx context.Context, keys controlplane.KeyStore, kek *keyseal.Keyring, stored []controlplane.SigningKey) ([]string, error) {
	rs, err := plaintextReseals(kek, stored)
	if err != nil || len(rs) == 0 {
		return nil, err
	}
	if err := keys.ResealSigningKeys(ctx, rs); err != nil {
		if controlplane.ErrorCode(err) == controlplane.ECONFLICT {
			return nil, nil
		}
		return nil, fmt.Errorf("seal plaintext signing keys: %w", err)
	}
	ids := make([]string, len(rs))
	for i, r := range rs {
		ids[i] = r.Was.ID
	}
	return ids, nil
}

func plaintextReseals(kek *keyseal.Keyring, stored []controlplane.SigningKey) ([]controlplane.Reseal, error) {
	var plain []controlplane.SigningKey
	sealedOne := ""
	for _, k := range stored {
		if len(k.Sealed) == 0 {
			plain = append(plain, k)
		} else {
			sealedOne = k.ID
		}
	}
	if len(plain) == 0 {
		return nil, nil
	}
	if sealedOne != "" {
		return nil, fmt.Errorf("signing key %s is stored in plaintext while key %s is sealed: this control plane writes sealed keys only, so refusing to use it; delete its row from signing_keys", plain[0].ID, sealedOne)
	}
	rs := make([]controlplane.Reseal, 0, len(plain))
	for _, k := range plain {
		block, _ := pem.Decode(k.PrivatePEM)
		if block == nil {
			return nil, fmt.Errorf("signing key %s: not PEM", k.ID)
		}
		if _, err := parseDER(k.ID, block.Bytes); err != nil {
			return nil, err
		}
		sealed, err := kek.Seal(block.Bytes, k.ID)
		if err != nil {
			return nil, fmt.Errorf("seal signing key %s: %w", k.ID, err)
		}
		rs = append(rs, controlplane.Reseal{Was: k, Sealed: sealed, KEKID: kek.Current().ID()})
	}
	return rs, nil
}

// RotateKey makes a new signing key sealed under the current KEK and stores
// it as the newest (after checking that the keyring opens every stored key): every issuer signs with it once it reads the keys
// again (within Options.KeyReload), while the older keys keep verifying,
// and stay in the JWKS, until retired.
func RotateKey(ctx context.Context, keys controlplane.KeyStore, kek *keyseal.Keyring) (controlplane.SigningKey, error) {
	stored, err := keys.SigningKeys(ctx)
	if err != nil {
		return controlplane.SigningKey{}, fmt.Errorf("load signing keys: %w", err)
	}
	// A KEK that cannot open the stored keys is not the one the control
	// planes run with: a key sealed under it would be one they cannot open.
	for _, k := range stored {
		if _, err := openKey(kek, k); err != nil {
			return controlplane.SigningKey{}, err
		}
	}
	now := time.Now().UTC()
	// The newest key signs: make sure this one is, even when this host's
	// clock is behind the one that made the last key.
	if len(stored) > 0 && !now.After(stored[0].CreatedAt) {
		now = stored[0].CreatedAt.Add(time.Millisecond)
	}
	k, err := newSigningKey(kek, now)
	if err != nil {
		return controlplane.SigningKey{}, err
	}
	if err := keys.AddSigningKey(ctx, k); err != nil {
		return controlplane.SigningKey{}, fmt.Errorf("store signing key: %w", err)
	}
	return k, nil
}

// RewrapKeys seals every key that is not sealed under the current KEK again
// under it, opening each with whichever KEK of the keyring sealed it, all in
// one transaction; keys stored in plaintext are sealed on the same terms as
// NewIssuer's. It returns the ids of the keys it sealed again.
func RewrapKeys(ctx context.Context, keys controlplane.KeyStore, kek *keyseal.Keyring) ([]string, error) {
	stored, err := keys.SigningKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("load signing keys: %w", err)
	}
	rs, err := plaintextReseals(kek, stored)
	if err != nil {
		return nil, err
	}
	current := kek.Current().ID()
	for _, k := range stored {
		if len(k.Sealed) == 0 {
			continue
		}
		// Open every key, also those already under the current KEK: a key
		// that no longer opens should be found now, not at the next start.
		priv, err := openKey(kek, k)
		if err != nil {
			return nil, err
		}
		if k.KEKID == current {
			continue
		}
		der, err := x509.MarshalPKCS8PrivateKey(priv)
		if err != nil {
			return nil, fmt.Errorf("signing key %s: %w", k.ID, err)
		}
		sealed, err := kek.Seal(der, k.ID)
		if err != nil {
			return nil, fmt.Errorf("seal signing key %s: %w", k.ID, err)
		}
		rs = append(rs, controlplane.Reseal{Was: k, Sealed: sealed, KEKID: current})
	}
	if len(rs) == 0 {
		return nil, nil
	}
	if err := keys.ResealSigningKeys(ctx, rs); err != nil {
		return nil, fmt.Errorf("store the resealed keys: %w", err)
	}
	ids := make([]string, len(rs))
	for i, r := range rs {
		ids[i] = r.Was.ID
	}
	return ids, nil
}

// Reload reads the signing keys now: the newest signs, all verify. On
// error the keys read before stay in use.
func (i *Issuer) Reload(ctx context.Context) error {
	i.reloading.Lock()
	defer i.reloading.Unlock()
	return i.reloadLocked(ctx)
}

// reloadLocked is Reload with i.reloading held.
func (i *Issuer) reloadLocked(ctx context.Context) error {
	stored, err := i.keys.SigningKeys(ctx)
	if err != nil {
		return fmt.Errorf("load signing keys: %w", err)
	}
	if len(stored) == 0 {
		return errors.New("load signing keys: the database holds none")
	}
	public := make(auth.StaticKeys, len(stored))
	var signer ed25519.PrivateKey
	for n, k := range stored {
		priv, err := openKey(i.kek, k)
		if err != nil {
			return err
		}
		public[k.ID] = priv.Public()
		if n == 0 {
			signer = priv
		}
	}
	i.mu.Lock()
	i.kid, i.signer, i.public, i.loaded = stored[0].ID, signer, public, time.Now()
	i.mu.Unlock()
	return nil
}

// refresh reads the keys again when the last read is at least
// i.reloadEvery old. One caller reads; the others go on at once with the
// keys they have (a hot path must not queue behind the database). A failed
// read is logged and not retried before the interval has passed again.
func (i *Issuer) refresh(ctx context.Context) {
	if i.age() < i.reloadEvery || !i.reloading.TryLock() {
		return
	}
	defer i.reloading.Unlock()
	if i.age() < i.reloadEvery {
		return // read meanwhile
	}
	i.reloadLogged(ctx)
}

// refreshUnknown reads the keys again for a key id the issuer does not
// hold, unless such a read happened less than unknownKeyReload ago.
// Callers wait for a read in flight: it may bring the key they need.
func (i *Issuer) refreshUnknown(ctx context.Context) {
	i.reloading.Lock()
	defer i.reloading.Unlock()
	if time.Since(i.lastUnknown) < unknownKeyReload {
		return
	}
	i.lastUnknown = time.Now()
	i.reloadLogged(ctx)
}

// reloadLogged is reloadLocked for the reads callers do not wait on the
// result of: a failure is logged, and counts as a read for the interval.
func (i *Issuer) reloadLogged(ctx context.Context) {
	if err := i.reloadLocked(ctx); err != nil {
		i.mu.Lock()
		i.loaded = time.Now()
		i.mu.Unlock()
		i.log.Error("cannot read the token signing keys again; still using the ones read before", "err", err)
	}
}

func (i *Issuer) age() time.Duration {
	i.mu.RLock()
	defer i.mu.RUnlock()
	return time.Since(i.loaded)
}

// signingKey returns the key new tokens are signed with, reading the keys
// again when they are due.
func (i *Issuer) signingKey(ctx context.Context) (string, ed25519.PrivateKey) {
	i.refresh(ctx)
	i.mu.RLock()
	defer i.mu.RUnlock()
	return i.kid, i.signer
}
