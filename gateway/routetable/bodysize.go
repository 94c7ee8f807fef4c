package routetable

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Ingress annotations that set a route's request body limit. A user coming
// from ingress-nginx keeps the annotation they already have; the PipeOps
// one, when present, is the one read.
const (
	AnnotationMaxBodySize    = "pipeops.io/max-body-size"
	AnnotationNginxBodySize  = "nginx.ingress.kubernetes.io/proxy-body-size"
	maxBodySizeAnnotationLen = 64 // longer values are refused before parsing
)

// errBodySize is the cause of every ParseBodySize failure.
var errBodySize = errors.New("want a byte count with an optional k, m or g (Ki, Mi, Gi) suffix, or 0")

// ParseBodySize parses a request body size: a decimal byte count, optionally
// followed by a unit, case-insensitive: k or Ki (1024), m or Mi (1024²),
// g or Gi (1024³). "8m", "8Mi" and "8388608" are the same size; as in
// ingress-nginx, k, m and g are binary units. "0" is a valid size, which
// callers take to mean no limit. Signs, fractions, spaces inside the value
// and sizes beyond int64 are errors; surrounding spaces are ignored.
func ParseBodySize(s string) (int64, error) {
	v := strings.TrimSpace(s)
	digits := 0
	for digits < len(v) && '0' <= v[digits] && v[digits] <= '9' {
		digits++
	}
	if digits == 0 {
		return 0, fmt.Errorf("body size %q: %w", s, errBodySize)
	}
	var shift uint
	switch lowerUnit(v[digits:]) {
	case "":
	case "k", "ki":
		shift = 10
	case "m", "mi":
		shift = 20
	case "g", "gi":
		shift = 30
	default:
		return 0, fmt.Errorf("body size %q: %w", s, errBodySize)
	}
	n, err := strconv.ParseInt(v[:digits], 10, 64)
	if err != nil || n > math.MaxInt64>>shift {
		return 0, fmt.Errorf("body size %q: too large", s)
	}
	return n << shift, nil
}

// lowerUnit lowercases a unit of up to two ASCII letters. Unlike
// strings.ToLower it maps no other character to an ASCII one (the Kelvin
// sign is not k): a unit with anything but ASCII letters, or a longer one,
// comes back as something no unit matches.
func lowerUnit(unit string) string {
	if unit == "" || len(unit) > 2 {
		return unit
	}
	var b [2]byte
	for i := range len(unit) {
		c := unit[i]
		switch {
		case 'A' <= c && c <= 'Z':
			c += 'a' - 'A'
		case 'a' <= c && c <= 'z':
		default:
			return "?"
		}
		b[i] = c
	}
	return string(b[:len(unit)])
}

// bodySizeProblem is a route's body size annotation that does not parse;
// the route then has no limit of its own.
type bodySizeProblem struct {
	host, path, cluster string
	annotation, value   string
	err                 error
}

// key identifies the problem across tables: the same route with the same
// bad value is the same problem.
func (p bodySizeProblem) key() string {
	return p.host + "\x00" + p.path + "\x00" + p.annotation + "\x00" + p.value
}

// routeBodyLimit reads a route's request body limit from its annotations:
// AnnotationMaxBodySize when it is set, else AnnotationNginxBodySize. The
// limit is 0 (none of the route's own) when neither is set, when the value
// is 0, and when the value does not parse; the last also returns the
// annotation, its value (shortened when long, for logging) and the error.
// NewTable calls it once per route, so requests never parse annotations.
func routeBodyLimit(annotations map[string]string) (limit int64, annotation, value string, err error) {
	annotation = AnnotationMaxBodySize
	value = strings.TrimSpace(annotations[annotation])
	if value == "" {
		annotation = AnnotationNginxBodySize
		value = strings.TrimSpace(annotations[annotation])
	}
	if value == "" {
		return 0, "", "", nil
	}
	if len(value) > maxBodySizeAnnotationLen {
		err = fmt.Errorf("body size of %d characters: %w", len(value), errBodySize)
		return 0, annotation, value[:maxBodySizeAnnotationLen] + "...", err
	}
	if limit, err = ParseBodySize(value); err != nil {
		return 0, annotation, value, err
	}
	return limit, annotation, value, nil
}
