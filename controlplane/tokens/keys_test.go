package tokens_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/controlplane/keyseal"
	"github.com/pipeops/tunnel/controlplane/postgres"
	"github.com/pipeops/tunnel/controlplane/tokens"
	"github.com/pipeops/tunnel/shared/auth"
	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/testenv/pgtest"
)

func newKEK(t testing.TB) *keyseal.KEK {
	t.Helper()
	raw := make([]byte, keyseal.KEKSize)
	if _, err := rand.Read(raw); err != nil {
		t.Fatal(err)
	}
	k, err := keyseal.NewKEK(raw)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newKeyring(t testing.TB) *keyseal.Keyring { return keyseal.NewKeyring(newKEK(t)) }

// newDB returns a migrated database of t's own.
func newDB(t *testing.T) *postgres.DB {
	t.Helper()
	db := postgres.New(pgtest.Pool(t))
	if _, err := postgres.Migrate(context.Background(), db.Pool()); err != nil {
		t.Fatal(err)
	}
	return db
}

func newIssuer(t *testing.T, db *postgres.DB, kek *keyseal.Keyring) *tokens.Issuer {
	t.Helper()
	iss, err := tokens.NewIssuer(context.Background(), db, db, tokens.Options{KEK: kek})
	if err != nil {
		t.Fatalf("NewIssuer: %v", err)
	}
	return iss
}

// adminToken issues an admin token and returns it with the id of the key
// that signed it.
func adminToken(t *testing.T, iss *tokens.Issuer) (string, string) {
	t.Helper()
	tok, _, err := iss.Issue(context.Background(), tokens.Request{Kind: auth.KindAdmin, Subject: "test"})
	if err != nil {
		t.Fatal(err)
	}
	return tok, kidOf(t, tok)
}

func kidOf(t *testing.T, tok string) string {
	t.Helper()
	parsed, _, err := jwt.NewParser().ParseUnverified(tok, &auth.Claims{})
	if err != nil {
		t.Fatal(err)
	}
	kid, _ := parsed.Header["kid"].(string)
	return kid
}

func jwksKids(t *testing.T, iss *tokens.Issuer) []string {
	t.Helper()
	b, err := iss.JWKS(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	set, err := auth.ParseJWKS(b)
	if err != nil {
		t.Fatal(err)
	}
	var kids []string
	for kid := range set {
		kids = append(kids, kid)
	}
	return kids
}

// storedRow is a signing_keys row as the database holds it.
type storedRow struct {
	plaintext []byte
	sealed    []byte
	kekID     string
}

func rowOf(t *testing.T, db *postgres.DB, kid string) storedRow {
	t.Helper()
	var r storedRow
	var kek *string
	err := db.Pool().QueryRow(context.Background(), `SELECT private_pem, sealed_key, kek_id FROM signing_keys WHERE id = $1`, kid).
		Scan(&r.plaintext, &r.sealed, &kek)
	if err != nil {
		t.Fatal(err)
	}
	if kek != nil {
		r.kekID = *kek
	}
	return r
}

func exec(t *testing.T, db *postgres.DB, sql string, args ...any) {
	t.Helper()
	if _, err := db.Pool().Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func TestKeysAreSealedAtRest(t *testing.T) {
	db := newDB(t)
	kek := newKeyring(t)
	iss := newIssuer(t, db, kek)
	_, kid := adminToken(t, iss)

	row := rowOf(t, db, kid)
	if row.plaintext != nil || row.kekID != kek.Current().ID() || !bytes.HasPrefix(row.sealed, []byte("pipeops-sealed-v1:A256GCM:"+kek.Current().ID()+":")) {
		t.Fatalf("stored key: plaintext %v, kek %q, sealed %.40q; want only a sealed form under %s", row.plaintext != nil, row.kekID, row.sealed, kek.Current().ID())
	}
	// What the row holds opens, with the KEK, to the key the JWKS publishes.
	der, _, err := kek.Open(row.sealed, kid)
	if err != nil {
		t.Fatal(err)
	}
	priv, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := iss.PublicKey(context.Background(), kid)
	if err != nil || !priv.(ed25519.PrivateKey).Public().(ed25519.PublicKey).Equal(pub) {
		t.Fatalf("the sealed key is not the signing key (%v)", err)
	}
	if bytes.Contains(row.sealed, der) || bytes.Contains(row.sealed, []byte(base64.RawURLEncoding.EncodeToString(der[16:]))) {
		t.Fatal("the sealed form contains the private key")
	}
	// Plaintext never goes in through the store.
	err = db.AddSigningKey(context.Background(), controlplane.SigningKey{ID: "p", Algorithm: "EdDSA", PrivatePEM: []byte("x"), Sealed: []byte("y"), KEKID: "z"})
	if controlplane.ErrorCode(err) != controlplane.EINVALID {
		t.Fatalf("AddSigningKey with a plaintext key: %v, want EINVALID", err)
	}
}

// legacyKey stores a plaintext key the way versions before sealing did and
// returns it.
func legacyKey(t *testing.T, db *postgres.DB, kid string, created time.Time) (ed25519.PrivateKey, []byte) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	pemKey := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	exec(t, db, `INSERT INTO signing_keys (id, algorithm, private_pem, created_at) VALUES ($1, 'EdDSA', $2, $3)`, kid, pemKey, created)
	return priv, pemKey
}

// tokenSignedBy is a token signed with priv under kid, as a control plane
// before sealing would have issued it.
func tokenSignedBy(t *testing.T, priv ed25519.PrivateKey, kid string) string {
	t.Helper()
	now := time.Now()
	tok, err := auth.Sign(priv, kid, &auth.Claims{
		RegisteredClaims: jwt.RegisteredClaims{ID: "legacy-token", IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour))},
		Kind:             auth.KindAdmin,
	})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestPlaintextKeySealedOnFirstStart(t *testing.T) {
	ctx := context.Background()
	db := newDB(t)
	priv, pemKey := legacyKey(t, db, "legacy1", time.Now().Add(-time.Hour))
	oldToken := tokenSignedBy(t, priv, "legacy1")

	kek := newKeyring(t)
	var logs testenv.LogBuffer
	// Replicas upgraded together start together: exactly one seals, and
	// says so once.
	const replicas = 4
	issuers := make([]*tokens.Issuer, replicas)
	errs := make([]error, replicas)
	var wg sync.WaitGroup
	for i := range replicas {
		wg.Go(func() {
			issuers[i], errs[i] = tokens.NewIssuer(ctx, db, db, tokens.Options{KEK: kek, Logger: logs.Logger()})
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("replica %d: %v", i, err)
		}
	}
	if n := strings.Count(logs.String(), "sealed a signing key that was stored in plaintext"); n != 1 || !strings.Contains(logs.String(), "kid=legacy1") {
		t.Fatalf("sealing logged %d times, want once naming the key:\n%s", n, logs.String())
	}
	b64 := base64.StdEncoding.EncodeToString(priv.Seed())
	if strings.Contains(logs.String(), "PRIVATE KEY") || strings.Contains(logs.String(), b64[:20]) {
		t.Fatalf("the log shows the key:\n%s", logs.String())
	}

	row := rowOf(t, db, "legacy1")
	if row.plaintext != nil || row.kekID != kek.Current().ID() || len(row.sealed) == 0 || bytes.Contains(row.sealed, pemKey) {
		t.Fatalf("after the first start: plaintext %v, kek %q; want sealed under %s only", row.plaintext != nil, row.kekID, kek.Current().ID())
	}
	// The same key: tokens it signed before still verify, and it signs.
	verify := &auth.Verifier{Keys: issuers[0]}
	if _, err := verify.Verify(ctx, oldToken); err != nil {
		t.Fatalf("a token signed before sealing: %v", err)
	}
	if _, kid := adminToken(t, issuers[1]); kid != "legacy1" {
		t.Fatalf("signs with %s, want the sealed legacy key", kid)
	}

	// Later starts find nothing to seal.
	newIssuer(t, db, kek)
	if n := strings.Count(logs.String(), "sealed a signing key"); n != 1 {
		t.Fatalf("sealing logged again on a later start:\n%s", logs.String())
	}
}

func TestStoredKeysRefused(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		// alter changes the database holding keys k1 (older) and k2
		// (newer), sealed under kek, and returns the keyring to start with.
		alter func(t *testing.T, db *postgres.DB, kek *keyseal.Keyring, k1, k2 string) *keyseal.Keyring
		want  error
		says  string
	}{
		{"wrong KEK", func(t *testing.T, db *postgres.DB, kek *keyseal.Keyring, k1, k2 string) *keyseal.Keyring {
			return newKeyring(t)
		}, keyseal.ErrUnknownKEK, "names KEK"},
		{"tampered", func(t *testing.T, db *postgres.DB, kek *keyseal.Keyring, k1, k2 string) *keyseal.Keyring {
			row := rowOf(t, db, k1)
			// One base64url digit of the tag for another.
			if i := len(row.sealed) - 5; row.sealed[i] == 'A' {
				row.sealed[i] = 'B'
			} else {
				row.sealed[i] = 'A'
			}
			exec(t, db, `UPDATE signing_keys SET sealed_key = $2 WHERE id = $1`, k1, row.sealed)
			return kek
		}, keyseal.ErrNotAuthentic, "altered"},
		{"moved to another key's row", func(t *testing.T, db *postgres.DB, kek *keyseal.Keyring, k1, k2 string) *keyseal.Keyring {
			exec(t, db, `UPDATE signing_keys SET sealed_key = (SELECT sealed_key FROM signing_keys WHERE id = $2) WHERE id = $1`, k1, k2)
			return kek
		}, keyseal.ErrNotAuthentic, "moved"},
		{"kek id of the row altered", func(t *testing.T, db *postgres.DB, kek *keyseal.Keyring, k1, k2 string) *keyseal.Keyring {
			exec(t, db, `UPDATE signing_keys SET kek_id = '0123456789abcdef' WHERE id = $1`, k2)
			return kek
		}, nil, "row was altered"},
		{"plaintext key added next to sealed ones", func(t *testing.T, db *postgres.DB, kek *keyseal.Keyring, k1, k2 string) *keyseal.Keyring {
			legacyKey(t, db, "planted", time.Now().Add(time.Hour))
			return kek
		}, nil, "refusing to use it"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db := newDB(t)
			kek := newKeyring(t)
			iss := newIssuer(t, db, kek)
			_, k1 := adminToken(t, iss)
			k2, err := tokens.RotateKey(ctx, db, kek)
			if err != nil {
				t.Fatal(err)
			}
			start := tt.alter(t, db, kek, k1, k2.ID)
			_, err = tokens.NewIssuer(ctx, db, db, tokens.Options{KEK: start})
			if err == nil || (tt.want != nil && !errors.Is(err, tt.want)) || !strings.Contains(err.Error(), tt.says) {
				t.Fatalf("NewIssuer = %v; want an error (%v) saying %q", err, tt.want, tt.says)
			}
			if strings.Contains(err.Error(), "PRIVATE KEY") || strings.Contains(err.Error(), "pipeops-sealed-v1:") {
				t.Fatalf("the error shows key material: %v", err)
			}
			// A running issuer that reads the keys again keeps the ones it
			// has rather than take up the altered set.
			if tt.want != keyseal.ErrUnknownKEK {
				if err := iss.Reload(ctx); err == nil {
					t.Fatal("Reload accepted the altered keys")
				}
				if tok, _ := adminToken(t, iss); tok == "" {
					t.Fatal("the running issuer stopped signing")
				}
			}
		})
	}
}

func TestRotateAndRetire(t *testing.T) {
	ctx := context.Background()
	db := newDB(t)
	kek := newKeyring(t)
	a := newIssuer(t, db, kek)
	b := newIssuer(t, db, kek) // another replica, reading keys on its own schedule
	before, oldKid := adminToken(t, a)

	rotated, err := tokens.RotateKey(ctx, db, kek)
	if err != nil {
		t.Fatal(err)
	}
	if rotated.ID == oldKid || rotated.KEKID != kek.Current().ID() {
		t.Fatalf("rotated key %+v", rotated)
	}
	if err := a.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	after, kid := adminToken(t, a)
	if kid != rotated.ID {
		t.Fatalf("after the rotation a signs with %s, want %s", kid, rotated.ID)
	}
	// The overlap: both keys verify and are published.
	for name, tok := range map[string]string{"before": before, "after": after} {
		for replica, iss := range map[string]*tokens.Issuer{"a": a, "b": b} {
			// b has not read the keys since the rotation: the new key id
			// makes it read them.
			if _, err := iss.Verifier().Verify(ctx, tok); err != nil {
				t.Errorf("replica %s, token signed %s the rotation: %v", replica, name, err)
			}
		}
	}
	if kids := jwksKids(t, b); len(kids) != 2 {
		t.Fatalf("JWKS during the overlap: %v, want the old and the new key", kids)
	}

	if err := db.RetireSigningKey(ctx, rotated.ID); controlplane.ErrorCode(err) != controlplane.EINVALID {
		t.Fatalf("retire the newest key: %v, want EINVALID", err)
	}
	if err := db.RetireSigningKey(ctx, "nope"); controlplane.ErrorCode(err) != controlplane.ENOTFOUND {
		t.Fatalf("retire an unknown key: %v, want ENOTFOUND", err)
	}
	if err := db.RetireSigningKey(ctx, oldKid); err != nil {
		t.Fatal(err)
	}
	for _, iss := range []*tokens.Issuer{a, b} {
		if err := iss.Reload(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := iss.Verifier().Verify(ctx, before); !errors.Is(err, auth.ErrInvalidToken) {
			t.Fatalf("a token of the retired key: %v, want ErrInvalidToken", err)
		}
		if _, err := iss.Verifier().Verify(ctx, after); err != nil {
			t.Fatalf("a token of the remaining key: %v", err)
		}
	}
	if kids := jwksKids(t, a); len(kids) != 1 || kids[0] != rotated.ID {
		t.Fatalf("JWKS after retire: %v, want [%s]", kids, rotated.ID)
	}
	if err := db.RetireSigningKey(ctx, rotated.ID); controlplane.ErrorCode(err) != controlplane.EINVALID {
		t.Fatalf("retire the only key: %v, want EINVALID", err)
	}
}

// A replica picks up a rotation by itself, within KeyReload.
func TestIssuerReloadsKeys(t *testing.T) {
	ctx := context.Background()
	db := newDB(t)
	kek := newKeyring(t)
	iss, err := tokens.NewIssuer(ctx, db, db, tokens.Options{KEK: kek, KeyReload: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	rotated, err := tokens.RotateKey(ctx, db, kek)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, kid := adminToken(t, iss); kid == rotated.ID {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the issuer never signed with the rotated key")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if kids := jwksKids(t, iss); len(kids) != 2 {
		t.Fatalf("JWKS %v, want both keys", kids)
	}
}

func TestRewrap(t *testing.T) {
	ctx := context.Background()
	db := newDB(t)
	oldKEK, newKEK := newKEK(t), newKEK(t)
	iss := newIssuer(t, db, keyseal.NewKeyring(oldKEK))
	tok, _ := adminToken(t, iss)
	if _, err := tokens.RotateKey(ctx, db, keyseal.NewKeyring(oldKEK)); err != nil {
		t.Fatal(err)
	}

	// Without the old KEK nothing can be rewrapped, and nothing changes.
	if _, err := tokens.RewrapKeys(ctx, db, keyseal.NewKeyring(newKEK)); !errors.Is(err, keyseal.ErrUnknownKEK) {
		t.Fatalf("rewrap without the previous KEK: %v, want ErrUnknownKEK", err)
	}

	rotation := keyseal.NewKeyring(newKEK, oldKEK)
	// Replicas restarted with the new KEK and the old one as previous
	// still start before the rewrap.
	newIssuer(t, db, rotation)
	ids, err := tokens.RewrapKeys(ctx, db, rotation)
	if err != nil || len(ids) != 2 {
		t.Fatalf("rewrap = %v, %v; want both keys", ids, err)
	}
	keys, err := db.SigningKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if id, _ := keyseal.KEKID(k.Sealed); k.KEKID != newKEK.ID() || id != newKEK.ID() {
			t.Fatalf("key %s under %s/%s after the rewrap, want %s", k.ID, k.KEKID, id, newKEK.ID())
		}
	}
	if ids, err := tokens.RewrapKeys(ctx, db, rotation); err != nil || len(ids) != 0 {
		t.Fatalf("second rewrap = %v, %v; want nothing to do", ids, err)
	}

	// The old KEK is no longer needed, and no longer enough.
	after := newIssuer(t, db, keyseal.NewKeyring(newKEK))
	if _, err := after.Verifier().Verify(ctx, tok); err != nil {
		t.Fatalf("a token signed before the KEK rotation: %v", err)
	}
	if _, err := tokens.NewIssuer(ctx, db, db, tokens.Options{KEK: keyseal.NewKeyring(oldKEK)}); !errors.Is(err, keyseal.ErrUnknownKEK) {
		t.Fatalf("start with the old KEK after the rewrap: %v, want ErrUnknownKEK", err)
	}
}
