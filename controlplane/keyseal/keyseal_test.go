package keyseal

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func newKEK(t testing.TB) (*KEK, string) {
	t.Helper()
	raw := make([]byte, KEKSize)
	if _, err := rand.Read(raw); err != nil {
		t.Fatal(err)
	}
	enc := base64.StdEncoding.EncodeToString(raw)
	k, err := ParseKEK(enc)
	if err != nil {
		t.Fatal(err)
	}
	return k, enc
}

var secret = []byte("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIBx+not+a+real+key+but+looks+like+one\n-----END PRIVATE KEY-----\n")

func TestSealOpen(t *testing.T) {
	k1, _ := newKEK(t)
	k2, _ := newKEK(t)
	ring := NewKeyring(k1)

	sealed, err := ring.Seal(secret, "kid-a")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(sealed, []byte("pipeops-sealed-v1:A256GCM:"+k1.ID()+":")) {
		t.Fatalf("sealed form %q does not start with the versioned header naming KEK %s", sealed, k1.ID())
	}
	if bytes.Contains(sealed, secret) || bytes.Contains(sealed, []byte("PRIVATE KEY")) {
		t.Fatal("the sealed form contains the plaintext")
	}
	got, id, err := ring.Open(sealed, "kid-a")
	if err != nil || !bytes.Equal(got, secret) || id != k1.ID() {
		t.Fatalf("Open = %q, %s, %v; want the plaintext under %s", got, id, err, k1.ID())
	}
	if id, err := KEKID(sealed); err != nil || id != k1.ID() {
		t.Fatalf("KEKID = %s, %v", id, err)
	}
	again, _ := ring.Seal(secret, "kid-a")
	if bytes.Equal(again, sealed) {
		t.Fatal("two seals of the same plaintext are equal: the nonce is not random")
	}

	// A rotated KEK: the new one seals, the old one still opens.
	rotated := NewKeyring(k2, k1, k2, nil)
	if got := rotated.PreviousIDs(); len(got) != 1 || got[0] != k1.ID() {
		t.Fatalf("previous ids %v, want [%s] (current and duplicates dropped)", got, k1.ID())
	}
	if got, id, err := rotated.Open(sealed, "kid-a"); err != nil || !bytes.Equal(got, secret) || id != k1.ID() {
		t.Fatalf("Open under a previous KEK = %q, %s, %v", got, id, err)
	}
	resealed, err := rotated.Seal(secret, "kid-a")
	if err != nil {
		t.Fatal(err)
	}
	if id, _ := KEKID(resealed); id != k2.ID() {
		t.Fatalf("resealed under %s, want the current KEK %s", id, k2.ID())
	}
}

func TestOpenRefuses(t *testing.T) {
	k1, _ := newKEK(t)
	k2, _ := newKEK(t)
	ring := NewKeyring(k1)
	sealed, err := ring.Seal(secret, "kid-a")
	if err != nil {
		t.Fatal(err)
	}
	payloadAt := bytes.LastIndexByte(sealed, ':') + 1
	flip := func(i int) []byte {
		b := bytes.Clone(sealed)
		// Change a base64url digit into another valid one.
		if b[i] == 'A' {
			b[i] = 'B'
		} else {
			b[i] = 'A'
		}
		return b
	}
	otherHeader := bytes.Replace(sealed, []byte(k1.ID()), []byte(k2.ID()), 1)

	tests := []struct {
		name    string
		ring    *Keyring
		sealed  []byte
		binding string
		want    error
	}{
		{"wrong KEK", NewKeyring(k2), sealed, "kid-a", ErrUnknownKEK},
		{"moved to another row", ring, sealed, "kid-b", ErrNotAuthentic},
		{"nonce altered", ring, flip(payloadAt + 2), "kid-a", ErrNotAuthentic},
		{"ciphertext altered", ring, flip(payloadAt + 30), "kid-a", ErrNotAuthentic},
		{"tag altered", ring, flip(len(sealed) - 3), "kid-a", ErrNotAuthentic},
		{"header names another KEK", NewKeyring(k2, k1), otherHeader, "kid-a", ErrNotAuthentic},
		{"truncated", ring, sealed[:payloadAt+20], "kid-a", ErrFormat},
		{"empty", ring, nil, "kid-a", ErrFormat},
		{"plaintext PEM", ring, secret, "kid-a", ErrFormat},
		{"other version", ring, bytes.Replace(sealed, []byte("-v1:"), []byte("-v2:"), 1), "kid-a", ErrFormat},
		{"other algorithm", ring, bytes.Replace(sealed, []byte("A256GCM"), []byte("XC20P"), 1), "kid-a", ErrFormat},
		{"upper-case id", ring, bytes.Replace(sealed, []byte(k1.ID()), []byte(strings.ToUpper(k1.ID())), 1), "kid-a", ErrFormat},
		{"line break", ring, append(bytes.Clone(sealed[:payloadAt+4]), append([]byte("\n"), sealed[payloadAt+4:]...)...), "kid-a", ErrFormat},
		{"padded payload", ring, append(bytes.Clone(sealed), '='), "kid-a", ErrFormat},
		{"too large", ring, append(bytes.Clone(sealed), bytes.Repeat([]byte("A"), MaxSealedSize)...), "kid-a", ErrFormat},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, _, err := tt.ring.Open(tt.sealed, tt.binding)
			if !errors.Is(err, tt.want) || got != nil {
				t.Fatalf("Open = %q, %v; want %v", got, err, tt.want)
			}
			if strings.Contains(err.Error(), "PRIVATE") || strings.Contains(err.Error(), string(sealed[payloadAt:payloadAt+16])) {
				t.Fatalf("the error quotes key material: %v", err)
			}
		})
	}
}

func TestParseKEK(t *testing.T) {
	raw := bytes.Repeat([]byte{0xfb}, KEKSize) // encodes with + and / in std, - and _ in url
	want, err := NewKEK(raw)
	if err != nil {
		t.Fatal(err)
	}
	for _, enc := range []string{
		base64.StdEncoding.EncodeToString(raw),
		base64.StdEncoding.EncodeToString(raw) + "\n",
		"  " + base64.RawStdEncoding.EncodeToString(raw),
		base64.URLEncoding.EncodeToString(raw),
		base64.RawURLEncoding.EncodeToString(raw),
	} {
		k, err := ParseKEK(enc)
		if err != nil || k.ID() != want.ID() {
			t.Errorf("ParseKEK(%q) = %v, %v; want id %s", enc, k, err, want.ID())
		}
	}
	other, _ := NewKEK(bytes.Repeat([]byte{1}, KEKSize))
	if other.ID() == want.ID() || len(want.ID()) != 16 {
		t.Fatalf("ids %s and %s: want distinct 16-digit ids", want.ID(), other.ID())
	}

	for name, enc := range map[string]string{
		"empty":    "",
		"16 bytes": base64.StdEncoding.EncodeToString(raw[:16]),
		"33 bytes": base64.StdEncoding.EncodeToString(append(bytes.Clone(raw), 0)),
		"not b64":  "this is not base64 at all!!",
		"hex":      strings.Repeat("ab", KEKSize),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ParseKEK(enc)
			if !errors.Is(err, ErrBadKEK) || !strings.Contains(err.Error(), "openssl rand -base64 32") {
				t.Fatalf("ParseKEK = %v, want ErrBadKEK saying how to make one", err)
			}
			if enc != "" && strings.Contains(err.Error(), enc) {
				t.Fatalf("the error quotes the input: %v", err)
			}
		})
	}
}

func TestReadKEKFile(t *testing.T) {
	dir := t.TempDir()
	want, enc := newKEK(t)
	write := func(name string, mode os.FileMode, data string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // umask
			t.Fatal(err)
		}
		return p
	}
	for _, mode := range []os.FileMode{0o600, 0o400, 0o640, 0o440} {
		k, err := ReadKEKFile(write("kek", mode, enc+"\n"))
		if err != nil || k.ID() != want.ID() {
			t.Fatalf("mode %04o: %v, %v", mode, k, err)
		}
	}

	tests := []struct {
		name, path, want string
	}{
		{"world-readable", write("open", 0o644, enc), "chmod 600"},
		{"world-writable", write("writable", 0o602, enc), "chmod 600"},
		{"not base64", write("bad", 0o600, "not a key\n"), "openssl rand -base64 32"},
		{"too large", write("large", 0o600, strings.Repeat("A", 4096)), "larger than"},
		{"directory", dir, "not a regular file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ReadKEKFile(tt.path)
			if !errors.Is(err, ErrBadKEK) || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), tt.path) {
				t.Fatalf("ReadKEKFile = %v; want ErrBadKEK naming the file and saying %q", err, tt.want)
			}
			if strings.Contains(err.Error(), enc) {
				t.Fatalf("the error quotes the key: %v", err)
			}
		})
	}
	if _, err := ReadKEKFile(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}

// FuzzOpen: Open and KEKID never panic, and nothing but a value sealed with
// the binding opens.
func FuzzOpen(f *testing.F) {
	k, err := NewKEK(bytes.Repeat([]byte{7}, KEKSize))
	if err != nil {
		f.Fatal(err)
	}
	ring := NewKeyring(k)
	sealed, err := ring.Seal(secret, "kid-a")
	if err != nil {
		f.Fatal(err)
	}
	for _, seed := range [][]byte{sealed, secret, nil, []byte("pipeops-sealed-v1:A256GCM:" + k.ID() + ":"),
		[]byte("pipeops-sealed-v1:A256GCM:0123456789abcdef:AAAA"), sealed[:len(sealed)-1]} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = KEKID(b)
		got, _, err := ring.Open(b, "kid-a")
		if err == nil && !bytes.Equal(got, secret) {
			t.Fatalf("opened %q to %q", b, got)
		}
	})
}

// FuzzParseKEK: any input either decodes to a KEK whose standard base64
// form parses to the same KEK, or is refused with ErrBadKEK and an error
// that does not quote the input (it may be a secret with a typo).
func FuzzParseKEK(f *testing.F) {
	key := bytes.Repeat([]byte{7}, KEKSize)
	for _, s := range []string{
		base64.StdEncoding.EncodeToString(key), base64.RawURLEncoding.EncodeToString(key),
		" " + base64.StdEncoding.EncodeToString(key) + "\n", "", "not base64!", base64.StdEncoding.EncodeToString(key[:16]),
	} {
		f.Add(s)
	}
	// The texts of the refusals of inputs that share nothing with s: an
	// input that is a piece of one of them is not quoted, merely common.
	var fixed []string
	for _, junk := range []string{"", "%%%%", base64.StdEncoding.EncodeToString(key[:16])} {
		if _, err := ParseKEK(junk); err != nil {
			fixed = append(fixed, err.Error())
		}
	}
	inFixed := func(s string) bool {
		for _, m := range fixed {
			if strings.Contains(m, s) {
				return true
			}
		}
		return false
	}
	f.Fuzz(func(t *testing.T, s string) {
		k, err := ParseKEK(s)
		if err != nil {
			if !errors.Is(err, ErrBadKEK) {
				t.Fatalf("ParseKEK(%q) error %v does not wrap ErrBadKEK", s, err)
			}
			if trimmed := strings.TrimSpace(s); len(trimmed) >= 8 && strings.Contains(err.Error(), trimmed) && !inFixed(trimmed) {
				t.Fatalf("ParseKEK error %q quotes the input", err)
			}
			return
		}
		if len(k.ID()) != 16 {
			t.Fatalf("KEK id %q", k.ID())
		}
		var raw []byte
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
			if b, err := enc.DecodeString(strings.TrimSpace(s)); err == nil {
				raw = b
				break
			}
		}
		again, err := ParseKEK(base64.StdEncoding.EncodeToString(raw))
		if err != nil || again.ID() != k.ID() {
			t.Fatalf("re-encoded KEK: %v, id %q vs %q", err, again.ID(), k.ID())
		}
	})
}
