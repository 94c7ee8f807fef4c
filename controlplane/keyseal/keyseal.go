// Package keyseal keeps secrets at rest encrypted under a key-encryption key
// (KEK) that lives outside the database: the control plane seals its token
// signing keys with it, so that whoever reads the signing_keys table (a
// dump, a backup, a read replica) cannot mint tokens without the KEK too.
//
// A KEK is 32 random bytes, written as base64 (`openssl rand -base64 32`).
// Its id is derived from it (a truncated SHA-256), so a sealed value names
// the KEK that opens it without revealing it, and an operator can tell which
// KEK a key needs. A Keyring holds the current KEK, which seals, and any
// previous ones, which only open: that is what lets the KEK be rotated
// (configure new + previous, re-seal everything, drop the previous).
//
// The sealed form is text, versioned and self-describing:
//
//	pipeops-sealed-v1:A256GCM:<KEK id, 16 hex digits>:<base64url(nonce || ciphertext || tag)>
//
// AES-256-GCM with a random 96-bit nonce. The associated data is the header
// (everything up to the last colon) followed by a binding string chosen by
// the caller (the signing key's id), so a sealed value cannot be moved to
// another row, nor its header altered, without failing to open.
//
// Errors never contain key material, sealed or not.
package keyseal

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// KEKSize is the length of a KEK in bytes (AES-256).
const KEKSize = 32

// Format constants of a sealed value.
const (
	prefix    = "pipeops-sealed-v1"
	algorithm = "A256GCM"
	idLen     = 16 // hex digits of a KEK id
	nonceSize = 12
	tagSize   = 16
	// MaxSealedSize bounds what Open parses: a sealed signing key is about
	// 200 bytes; anything much larger is not ours.
	MaxSealedSize = 16 << 10
	// maxKEKFileSize bounds what ReadKEKFile reads: base64 of 32 bytes
	// and a newline.
	maxKEKFileSize = 1 << 10
)

// Errors, to tell the cases apart with errors.Is.
var (
	// ErrFormat: the value is not a sealed value this version understands.
	ErrFormat = errors.New("keyseal: not a sealed value")
	// ErrUnknownKEK: the value was sealed under a KEK the keyring does not
	// hold.
	ErrUnknownKEK = errors.New("keyseal: sealed under a key-encryption key that is not configured")
	// ErrNotAuthentic: the value names a KEK the keyring holds but does not
	// open under it with this binding: it was altered, or moved from the
	// row it was sealed for.
	ErrNotAuthentic = errors.New("keyseal: sealed value does not authenticate")
	// ErrBadKEK: a KEK that is not base64 of 32 bytes, or a KEK file that
	// others can read.
	ErrBadKEK = errors.New("keyseal: bad key-encryption key")
)

// KEK is a key-encryption key. Safe for concurrent use.
type KEK struct {
	id   string
	aead cipher.AEAD
}

// NewKEK returns the KEK of key, which must be KEKSize bytes. The KEK keeps
// no reference to key.
func NewKEK(key []byte) (*KEK, error) {
	if len(key) != KEKSize {
		return nil, fmt.Errorf("%w: %d bytes, want %d (make one with: openssl rand -base64 32)", ErrBadKEK, len(key), KEKSize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadKEK, err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadKEK, err)
	}
	// Domain-separated, so the id is no hash anyone else computes of the
	// key; 64 bits tell a handful of KEKs apart.
	sum := sha256.Sum256(append([]byte("pipeops-tunnel kek id\x00"), key...))
	return &KEK{id: hex.EncodeToString(sum[:idLen/2]), aead: aead}, nil
}

// ParseKEK decodes a KEK written as base64 (standard or URL alphabet, padded
// or not; surrounding whitespace ignored). Errors do not quote the input.
func ParseKEK(encoded string) (*KEK, error) {
	s := strings.TrimSpace(encoded)
	if s == "" {
		return nil, fmt.Errorf("%w: empty (make one with: openssl rand -base64 32)", ErrBadKEK)
	}
	var key []byte
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil {
			key = b
			break
		}
	}
	if key == nil {
		return nil, fmt.Errorf("%w: not base64 (make one with: openssl rand -base64 32)", ErrBadKEK)
	}
	return NewKEK(key)
}

// ReadKEKFile reads a KEK from a file holding its base64 form. A file that
// users other than its owner and group may read or write is refused:
// anyone who can read it, and the database, can mint tokens.
func ReadKEKFile(path string) (*KEK, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s is not a regular file", ErrBadKEK, path)
	}
	if perm := fi.Mode().Perm(); perm&0o006 != 0 {
		return nil, fmt.Errorf("%w: %s is readable or writable by every user (mode %04o): run chmod 600 %s (in Kubernetes, mount the Secret with defaultMode 0400)",
			ErrBadKEK, path, perm, path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKEKFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(data) > maxKEKFileSize {
		return nil, fmt.Errorf("%w: %s is larger than %d bytes; a KEK file holds base64 of %d bytes", ErrBadKEK, path, maxKEKFileSize, KEKSize)
	}
	k, err := ParseKEK(string(data))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// ID identifies the KEK: 16 hex digits derived from it, safe to show and log.
func (k *KEK) ID() string { return k.id }

// Keyring is the current KEK, which seals, and previous ones, which only
// open. Safe for concurrent use; immutable once made.
type Keyring struct {
	current  *KEK
	previous []*KEK
}

// NewKeyring returns a keyring sealing with current and opening with
// current and previous. Previous KEKs equal to current or to each other are
// dropped.
func NewKeyring(current *KEK, previous ...*KEK) *Keyring {
	r := &Keyring{current: current}
	seen := map[string]bool{current.id: true}
	for _, k := range previous {
		if k != nil && !seen[k.id] {
			seen[k.id] = true
			r.previous = append(r.previous, k)
		}
	}
	return r
}

// Current returns the KEK that seals.
func (r *Keyring) Current() *KEK { return r.current }

// PreviousIDs returns the ids of the KEKs that only open.
func (r *Keyring) PreviousIDs() []string {
	ids := make([]string, len(r.previous))
	for i, k := range r.previous {
		ids[i] = k.id
	}
	return ids
}

func (r *Keyring) find(id string) *KEK {
	if r.current.id == id {
		return r.current
	}
	for _, k := range r.previous {
		if k.id == id {
			return k
		}
	}
	return nil
}

// Seal encrypts plaintext under the current KEK, bound to binding (for
// example the id of the row it is stored in): Open must be given the same
// binding.
func (r *Keyring) Seal(plaintext []byte, binding string) ([]byte, error) {
	header := prefix + ":" + algorithm + ":" + r.current.id + ":"
	nonce := make([]byte, nonceSize, nonceSize+len(plaintext)+tagSize)
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("keyseal: nonce: %w", err)
	}
	sealed := r.current.aead.Seal(nonce, nonce, plaintext, []byte(header+binding))
	out := make([]byte, 0, len(header)+base64.RawURLEncoding.EncodedLen(len(sealed)))
	out = append(out, header...)
	return base64.RawURLEncoding.AppendEncode(out, sealed), nil
}

// Open decrypts a value made by Seal with the same binding, under whichever
// KEK of the keyring it names, and returns the plaintext and that KEK's id.
func (r *Keyring) Open(sealed []byte, binding string) (plaintext []byte, kekID string, err error) {
	kekID, payload, headerLen, err := parse(sealed)
	if err != nil {
		return nil, "", err
	}
	k := r.find(kekID)
	if k == nil {
		known := r.current.id + " (current)"
		if prev := r.PreviousIDs(); len(prev) > 0 {
			known += ", " + strings.Join(prev, ", ") + " (previous)"
		}
		return nil, kekID, fmt.Errorf("%w: it names KEK %s; the configured KEKs are %s", ErrUnknownKEK, kekID, known)
	}
	ad := make([]byte, 0, headerLen+len(binding))
	ad = append(append(ad, sealed[:headerLen]...), binding...)
	plaintext, err = k.aead.Open(nil, payload[:nonceSize], payload[nonceSize:], ad)
	if err != nil {
		return nil, kekID, fmt.Errorf("%w under KEK %s: it was altered, or moved from the row it was sealed for", ErrNotAuthentic, kekID)
	}
	return plaintext, kekID, nil
}

// KEKID returns the id of the KEK a sealed value names, without opening it.
func KEKID(sealed []byte) (string, error) {
	id, _, _, err := parse(sealed)
	return id, err
}

// parse checks the sealed value's form and returns its KEK id, the decoded
// nonce || ciphertext || tag, and the length of the header (which ends with
// the last colon).
func parse(sealed []byte) (kekID string, payload []byte, headerLen int, err error) {
	if len(sealed) > MaxSealedSize {
		return "", nil, 0, fmt.Errorf("%w: %d bytes, limit %d", ErrFormat, len(sealed), MaxSealedSize)
	}
	parts := bytes.SplitN(sealed, []byte(":"), 4)
	if len(parts) != 4 || string(parts[0]) != prefix {
		return "", nil, 0, fmt.Errorf("%w: want the %q prefix", ErrFormat, prefix+":")
	}
	if string(parts[1]) != algorithm {
		return "", nil, 0, fmt.Errorf("%w: algorithm %.16q, want %s", ErrFormat, parts[1], algorithm)
	}
	if len(parts[2]) != idLen || !isLowerHex(parts[2]) {
		return "", nil, 0, fmt.Errorf("%w: the KEK id is not %d hex digits", ErrFormat, idLen)
	}
	// The decoder skips line breaks; refuse them, so that a value has one
	// written form.
	if bytes.ContainsAny(parts[3], "\r\n") {
		return "", nil, 0, fmt.Errorf("%w: line break in the payload", ErrFormat)
	}
	payload, err = base64.RawURLEncoding.Strict().DecodeString(string(parts[3]))
	if err != nil {
		return "", nil, 0, fmt.Errorf("%w: the payload is not unpadded base64url", ErrFormat)
	}
	if len(payload) < nonceSize+tagSize {
		return "", nil, 0, fmt.Errorf("%w: the payload is %d bytes, shorter than a nonce and a tag", ErrFormat, len(payload))
	}
	return string(parts[2]), payload, len(sealed) - len(parts[3]), nil
}

func isLowerHex(b []byte) bool {
	for _, c := range b {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
