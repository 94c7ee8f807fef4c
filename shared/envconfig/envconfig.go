// Package envconfig reads a binary's settings from environment variables,
// collecting every problem (each naming its variable) so that a user fixes
// them all in one go. Binaries keep one typed Config struct; this package
// only does the parsing.
package envconfig

import (
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"
)

// Reader reads variables through get (os.Getenv in production) and gathers
// errors. Not safe for concurrent use; one Reader per load.
type Reader struct {
	get  func(string) string
	errs []string
}

// New returns a Reader over get.
func New(get func(string) string) *Reader { return &Reader{get: get} }

// String returns the trimmed value of name, or def when it is empty.
func (r *Reader) String(name, def string) string {
	if v := strings.TrimSpace(r.get(name)); v != "" {
		return v
	}
	return def
}

// Duration parses name as a positive Go duration (def when empty).
func (r *Reader) Duration(name string, def time.Duration) time.Duration {
	v := strings.TrimSpace(r.get(name))
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		r.Failf("%s=%q is not a positive duration (like 30s or 24h)", name, v)
		return def
	}
	return d
}

// Bool parses name as a boolean (def when empty).
func (r *Reader) Bool(name string, def bool) bool {
	v := strings.TrimSpace(r.get(name))
	if v == "" {
		return def
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		r.Failf("%s=%q is not true or false", name, v)
		return def
	}
	return b
}

// LogLevel parses name as debug, info, warn or error (def when empty).
func (r *Reader) LogLevel(name string, def slog.Level) slog.Level {
	v := strings.TrimSpace(r.get(name))
	if v == "" {
		return def
	}
	var l slog.Level
	if err := l.UnmarshalText([]byte(v)); err != nil {
		r.Failf("%s=%q is not debug, info, warn or error", name, v)
		return def
	}
	return l
}

// OneOf returns name's value, which must be one of allowed (def when empty).
func (r *Reader) OneOf(name, def string, allowed ...string) string {
	v := r.String(name, def)
	for _, a := range allowed {
		if v == a {
			return v
		}
	}
	r.Failf("%s=%q is not one of %s", name, v, strings.Join(allowed, ", "))
	return def
}

// Failf records a problem.
func (r *Reader) Failf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

// Err returns every recorded problem as one error, or nil.
func (r *Reader) Err() error {
	if len(r.errs) == 0 {
		return nil
	}
	return fmt.Errorf("configuration:\n  %s", strings.Join(r.errs, "\n  "))
}
