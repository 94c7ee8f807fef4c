package cli

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/golang-jwt/jwt/v5"

	"github.com/pipeops/tunnel/controlplane/keyseal"
	"github.com/pipeops/tunnel/controlplane/postgres"
	"github.com/pipeops/tunnel/controlplane/tokens"
	"github.com/pipeops/tunnel/shared/auth"
	"github.com/pipeops/tunnel/shared/testenv/pgtest"
)

// kekValue is a fresh KEK in the form `openssl rand -base64 32` prints.
func kekValue(t *testing.T) string {
	t.Helper()
	raw := make([]byte, keyseal.KEKSize)
	if _, err := rand.Read(raw); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(raw)
}

// kekFile writes a fresh KEK to a 0600 file and returns its path.
func kekFile(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "kek")
	if err := os.WriteFile(p, []byte(kekValue(t)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func kekOf(t *testing.T, path string) *keyseal.KEK {
	t.Helper()
	k, err := keyseal.ReadKEKFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// mustRun runs a command that must succeed and returns its output.
func mustRun(t *testing.T, env map[string]string, args ...string) string {
	t.Helper()
	code, out, errOut := run(t, env, args...)
	if code != 0 {
		t.Fatalf("%s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

func adminToken(t *testing.T, env map[string]string) (token, kid string) {
	t.Helper()
	var res struct{ Token string }
	if err := json.Unmarshal([]byte(mustRun(t, env, "token", "create", "--kind", "admin", "--json")), &res); err != nil {
		t.Fatal(err)
	}
	parsed, _, err := jwt.NewParser().ParseUnverified(res.Token, &auth.Claims{})
	if err != nil {
		t.Fatal(err)
	}
	kid, _ = parsed.Header["kid"].(string)
	return res.Token, kid
}

// listed is `keys list` as rows: kid -> KEK column and SIGNS column.
func listed(t *testing.T, env map[string]string) (map[string][2]string, string) {
	t.Helper()
	out := mustRun(t, env, "keys", "list")
	rows := map[string][2]string{}
	for _, line := range strings.Split(out, "\n")[1:] {
		f := strings.Fields(line)
		if len(f) == 5 {
			rows[f[0]] = [2]string{f[3], f[4]}
		}
	}
	return rows, out
}

// TestKeysCommands walks the rotations of docs/controlplane.md through the
// CLI against a real database: signing key rotation with its overlap, then
// retirement, then a KEK rotation.
func TestKeysCommands(t *testing.T) {
	ctx := context.Background()
	dbURL := pgtest.URL(t)
	fileA, fileB := kekFile(t), kekFile(t)
	kekA, kekB := kekOf(t, fileA), kekOf(t, fileB)
	env := map[string]string{"DATABASE_URL": dbURL, "LOG_LEVEL": "warn", "KEY_ENCRYPTION_KEY_FILE": fileA}
	noKEK := map[string]string{"DATABASE_URL": dbURL, "LOG_LEVEL": "warn"}

	// What a command of a running control plane would check tokens with.
	db, err := postgres.Open(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	verify := func(ring *keyseal.Keyring, tok string) error {
		t.Helper()
		iss, err := tokens.NewIssuer(ctx, db, db, tokens.Options{KEK: ring})
		if err != nil {
			t.Fatal(err)
		}
		_, err = iss.Verifier().Verify(ctx, tok)
		return err
	}

	if code, _, errOut := run(t, noKEK, "cluster", "create", "c1"); code != 1 || !strings.Contains(errOut, "KEY_ENCRYPTION_KEY_FILE") {
		t.Fatalf("cluster create without a KEK: %d %q", code, errOut)
	}
	if code, _, errOut := run(t, noKEK, "keys", "rotate"); code != 1 || !strings.Contains(errOut, "openssl rand -base64 32") {
		t.Fatalf("keys rotate without a KEK: %d %q", code, errOut)
	}
	if code, _, errOut := run(t, env, "keys"); code != 2 || !strings.Contains(errOut, "keys needs a command: list, retire, rewrap, rotate") {
		t.Fatalf("keys alone: %d %q", code, errOut)
	}

	first, k1 := adminToken(t, env)
	rows, out := listed(t, noKEK) // list needs no KEK
	if len(rows) != 1 || rows[k1] != [2]string{kekA.ID(), "yes"} {
		t.Fatalf("keys list after the first token:\n%s", out)
	}

	// Signing key rotation: the new key signs, the old one still verifies.
	out = mustRun(t, env, "keys", "rotate")
	rows, list := listed(t, env)
	var k2 string
	for kid, r := range rows {
		if r[1] == "yes" {
			k2 = kid
		}
	}
	if len(rows) != 2 || k2 == k1 || k2 == "" || rows[k1][1] != "no" || !strings.Contains(out, k2) {
		t.Fatalf("after keys rotate (%q):\n%s", out, list)
	}
	second, kid := adminToken(t, env)
	if kid != k2 {
		t.Fatalf("a token after the rotation is signed by %s, want %s", kid, k2)
	}
	ringA := keyseal.NewKeyring(kekA)
	for name, tok := range map[string]string{"before": first, "after": second} {
		if err := verify(ringA, tok); err != nil {
			t.Fatalf("token signed %s the rotation: %v", name, err)
		}
	}

	if code, _, errOut := run(t, env, "keys", "retire", k2); code != 1 || !strings.Contains(errOut, "newest") {
		t.Fatalf("retire the signing key: %d %q", code, errOut)
	}
	if code, _, errOut := run(t, env, "keys", "retire", "nope"); code != 1 || !strings.Contains(errOut, "not_found") {
		t.Fatalf("retire an unknown key: %d %q", code, errOut)
	}
	mustRun(t, noKEK, "keys", "retire", k1)
	if err := verify(ringA, first); !errors.Is(err, auth.ErrInvalidToken) {
		t.Fatalf("a token of the retired key: %v, want ErrInvalidToken", err)
	}
	if err := verify(ringA, second); err != nil {
		t.Fatalf("a token of the remaining key: %v", err)
	}

	// KEK rotation. The new KEK alone cannot open the keys, and says what
	// to do.
	envB := map[string]string{"DATABASE_URL": dbURL, "LOG_LEVEL": "warn", "KEY_ENCRYPTION_KEY_FILE": fileB}
	code, _, errOut := run(t, envB, "token", "create", "--kind", "admin")
	if code != 1 || !strings.Contains(errOut, kekA.ID()) || !strings.Contains(errOut, "KEY_ENCRYPTION_KEY_PREVIOUS_FILE") || !strings.Contains(errOut, "keys rewrap") {
		t.Fatalf("a command with only the new KEK: %d %q; want an error naming KEK %s and the rewrap", code, errOut, kekA.ID())
	}
	if _, out := listed(t, envB); !strings.Contains(out, "not sealed under the current KEK "+kekB.ID()) {
		t.Fatalf("keys list with the new KEK does not point at rewrap:\n%s", out)
	}
	rotation := map[string]string{"DATABASE_URL": dbURL, "LOG_LEVEL": "warn", "KEY_ENCRYPTION_KEY_FILE": fileB, "KEY_ENCRYPTION_KEY_PREVIOUS_FILE": fileA}
	out = mustRun(t, rotation, "keys", "rewrap")
	if !strings.Contains(out, "sealed 1 signing key(s) under KEK "+kekB.ID()) || !strings.Contains(out, kekA.ID()) {
		t.Fatalf("keys rewrap: %q", out)
	}
	if out := mustRun(t, rotation, "keys", "rewrap"); !strings.Contains(out, "already") {
		t.Fatalf("second keys rewrap: %q", out)
	}
	if rows, out := listed(t, envB); rows[k2] != [2]string{kekB.ID(), "yes"} {
		t.Fatalf("keys list after the rewrap:\n%s", out)
	}
	if _, kid := adminToken(t, envB); kid != k2 {
		t.Fatalf("signs with %s after the KEK rotation, want %s", kid, k2)
	}
	if err := verify(keyseal.NewKeyring(kekB), second); err != nil {
		t.Fatalf("a token signed before the KEK rotation: %v", err)
	}
	if code, _, errOut := run(t, env, "keys", "rotate"); code != 1 || !strings.Contains(errOut, "KEY_ENCRYPTION_KEY_FILE to it") {
		t.Fatalf("the old KEK after the rewrap: %d %q", code, errOut)
	}

	// The KEKs never show.
	for _, f := range []string{fileA, fileB} {
		b, _ := os.ReadFile(f)
		k := strings.TrimSpace(string(b))
		for _, args := range [][]string{{"keys", "list"}, {"keys", "rewrap"}, {"token", "create", "--kind", "admin"}} {
			_, out, errOut := run(t, rotation, args...)
			if strings.Contains(out+errOut, k) || strings.Contains(out+errOut, k[:12]) {
				t.Fatalf("%v prints a KEK", args)
			}
		}
	}
}

func TestPlaintextKeySealedByCLI(t *testing.T) {
	ctx := context.Background()
	dbURL := pgtest.URL(t)
	env := map[string]string{"DATABASE_URL": dbURL, "LOG_LEVEL": "info", "KEY_ENCRYPTION_KEY": kekValue(t)}
	mustRun(t, env, "migrate")
	db, err := postgres.Open(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(priv)
	pemKey := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	if _, err := db.Pool().Exec(ctx, `INSERT INTO signing_keys (id, algorithm, private_pem) VALUES ('legacy', 'EdDSA', $1)`, pemKey); err != nil {
		t.Fatal(err)
	}
	if rows, out := listed(t, env); rows["legacy"][0] != "plaintext" {
		t.Fatalf("keys list before the first start:\n%s", out)
	}
	_, _, logs := run(t, env, "cluster", "list")
	if strings.Count(logs, "sealed a signing key that was stored in plaintext") != 1 || !strings.Contains(logs, "kid=legacy") ||
		strings.Contains(logs, "PRIVATE KEY") || strings.Contains(logs, base64.StdEncoding.EncodeToString(der)[:24]) {
		t.Fatalf("the first start's log:\n%s", logs)
	}
	if rows, out := listed(t, env); rows["legacy"][0] == "plaintext" || rows["legacy"][1] != "yes" {
		t.Fatalf("keys list after the first start:\n%s", out)
	}
	if _, _, logs := run(t, env, "cluster", "list"); strings.Contains(logs, "sealed") {
		t.Fatalf("a later start logs sealing again:\n%s", logs)
	}
}
