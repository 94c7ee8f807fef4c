package envconfig

import (
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
)

// MaxSecretFileSize bounds a secret file: secrets are short, and a setting
// that names a large file by mistake is refused rather than read.
const MaxSecretFileSize = 4096

// SecretFile reads the file that the variable name points at: a secret kept
// out of the environment, as a compose secret or a mounted Kubernetes
// Secret is. The file must be a regular file that not every user can read
// (mode 0640 or stricter) and hold one non-empty value; surrounding white
// space, such as the newline an editor adds, is dropped. Empty when the
// variable is unset. Problems name the variable and the file, never the
// content.
func (r *Reader) SecretFile(name string) string {
	path := r.String(name, "")
	if path == "" {
		return ""
	}
	v, err := ReadSecretFile(path)
	if err != nil {
		r.Failf("%s: %v", name, err)
	}
	return v
}

// ReadSecretFile reads a secret from path with SecretFile's rules.
func ReadSecretFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("%s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o006 != 0 {
		return "", fmt.Errorf("%s is readable or writable by every user (mode %04o): run chmod 640 %s (in Kubernetes, mount the Secret with defaultMode 0440)", path, perm, path)
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxSecretFileSize+1))
	if err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	if len(data) > MaxSecretFileSize {
		return "", fmt.Errorf("%s is larger than %d bytes, too large for a secret", path, MaxSecretFileSize)
	}
	v := strings.TrimSpace(string(data))
	if v == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	if strings.ContainsAny(v, "\r\n") {
		return "", fmt.Errorf("%s holds more than one line; a secret file holds one value", path)
	}
	return v, nil
}

// DatabaseURL reads a postgres:// URL from urlVar, with its password from
// the file passwordFileVar names when that is set (so the password can be a
// compose secret that PostgreSQL's own image reads too). The URL and the
// file must not both give a password. Problems never show the password.
func (r *Reader) DatabaseURL(urlVar, passwordFileVar string) string {
	raw := r.String(urlVar, "")
	password := r.SecretFile(passwordFileVar)
	if raw == "" || password == "" {
		return raw
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		// The caller's own check of urlVar says what is wrong with it.
		return raw
	}
	user := ""
	if u.User != nil {
		if _, has := u.User.Password(); has {
			r.Failf("%s carries a password and %s is set: give the password one way", urlVar, passwordFileVar)
			return raw
		}
		user = u.User.Username()
	}
	if user == "" {
		r.Failf("%s names no user, for the password in %s (postgres://USER@host:5432/db)", urlVar, passwordFileVar)
		return raw
	}
	u.User = url.UserPassword(user, password)
	return u.String()
}
