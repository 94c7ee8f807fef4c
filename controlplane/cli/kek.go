package cli

import (
	"errors"
	"fmt"
	"strings"

	"github.com/pipeops/tunnel/controlplane/keyseal"
	"github.com/pipeops/tunnel/shared/envconfig"
)

// errNoKEK is what every command that signs or makes keys says when no
// key-encryption key is configured.
var errNoKEK = errors.New(`configuration:
  KEY_ENCRYPTION_KEY_FILE (or KEY_ENCRYPTION_KEY) is required: the key-encryption key that
  seals the token signing keys in the database. Make one and point at it:
    (umask 077 && openssl rand -base64 32 > /etc/pipeops/kek)
    export KEY_ENCRYPTION_KEY_FILE=/etc/pipeops/kek
  or put the output of 'openssl rand -base64 32' in KEY_ENCRYPTION_KEY. Keep it apart from
  database backups, and do not lose it: without it the signing keys cannot be opened
  (see docs/controlplane.md, "Keys and tokens")`)

// loadKEK reads the key-encryption keys: the current one from
// KEY_ENCRYPTION_KEY_FILE or KEY_ENCRYPTION_KEY, the previous ones (which
// only open, during a KEK rotation) from KEY_ENCRYPTION_KEY_PREVIOUS_FILE
// (comma-separated files) and KEY_ENCRYPTION_KEY_PREVIOUS (comma-separated
// keys). Nil when no current key is set; problems are recorded in r, never
// with the key in them.
func loadKEK(r *envconfig.Reader) *keyseal.Keyring {
	file, value := r.String("KEY_ENCRYPTION_KEY_FILE", ""), r.String("KEY_ENCRYPTION_KEY", "")
	var current *keyseal.KEK
	switch {
	case file != "" && value != "":
		r.Failf("KEY_ENCRYPTION_KEY_FILE and KEY_ENCRYPTION_KEY are both set: give the key-encryption key one way")
	case file != "":
		k, err := keyseal.ReadKEKFile(file)
		if err != nil {
			r.Failf("KEY_ENCRYPTION_KEY_FILE: %v", err)
		}
		current = k
	case value != "":
		k, err := keyseal.ParseKEK(value)
		if err != nil {
			r.Failf("KEY_ENCRYPTION_KEY: %v", err)
		}
		current = k
	}
	var previous []*keyseal.KEK
	prevFiles, prevValues := list(r.String("KEY_ENCRYPTION_KEY_PREVIOUS_FILE", "")), list(r.String("KEY_ENCRYPTION_KEY_PREVIOUS", ""))
	for _, f := range prevFiles {
		k, err := keyseal.ReadKEKFile(f)
		if err != nil {
			r.Failf("KEY_ENCRYPTION_KEY_PREVIOUS_FILE: %v", err)
			continue
		}
		previous = append(previous, k)
	}
	for n, v := range prevValues {
		k, err := keyseal.ParseKEK(v)
		if err != nil {
			r.Failf("KEY_ENCRYPTION_KEY_PREVIOUS: key %d of %d: %v", n+1, len(prevValues), err)
			continue
		}
		previous = append(previous, k)
	}
	if file == "" && value == "" && len(prevFiles)+len(prevValues) > 0 {
		r.Failf("KEY_ENCRYPTION_KEY_PREVIOUS(_FILE) is set without KEY_ENCRYPTION_KEY_FILE or KEY_ENCRYPTION_KEY: previous keys only open; the current one seals")
	}
	if current == nil {
		return nil
	}
	return keyseal.NewKeyring(current, previous...)
}

// RequireKEK checks that a key-encryption key is configured, which every
// command that signs tokens or makes keys needs.
func (c Config) RequireKEK() error {
	if c.KEK == nil {
		return errNoKEK
	}
	return nil
}

func list(s string) []string {
	var out []string
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}

// kekHint adds what to do to an error about a signing key the configured
// KEKs cannot open.
func kekHint(err error) error {
	switch {
	case errors.Is(err, keyseal.ErrUnknownKEK):
		return fmt.Errorf("%w\n  the signing keys are sealed under another key-encryption key: set KEY_ENCRYPTION_KEY_FILE to it,\n  or, when rotating the KEK, give it in KEY_ENCRYPTION_KEY_PREVIOUS_FILE and run 'pipeops-controlplane keys rewrap'", err)
	case errors.Is(err, keyseal.ErrNotAuthentic), errors.Is(err, keyseal.ErrFormat):
		return fmt.Errorf("%w\n  the signing_keys table was altered: restore it from a backup, or retire the key", err)
	}
	return err
}
