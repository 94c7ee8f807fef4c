package tunnel

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// The Loose types decode what different senders of the protocol write for
// one field (a count as 3 or "3", a flag as true or "true"); they encode the
// one canonical form. A value of the wrong kind altogether is still an error:
// lenient is not the same as accepting anything.

// LooseInt is an integer sent as a JSON number (integral, in range) or a
// string holding one; null is 0.
type LooseInt int

// UnmarshalJSON implements the decoding described on LooseInt.
func (n *LooseInt) UnmarshalJSON(b []byte) error {
	s := string(b)
	if bytes.Equal(b, jsonNull) {
		*n = 0
		return nil
	}
	if len(b) > 0 && b[0] == '"' {
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		s = strings.TrimSpace(s)
	}
	f, ok := parseDecimal(s)
	if !ok || f != math.Trunc(f) || f > math.MaxInt32 || f < math.MinInt32 {
		return fmt.Errorf("tunnel: want an integer, got %q", clip(b))
	}
	*n = LooseInt(f)
	return nil
}

// LooseBool is a flag sent as a JSON bool or the strings "true"/"false"
// (any case); null is false.
type LooseBool bool

// UnmarshalJSON implements the decoding described on LooseBool.
func (v *LooseBool) UnmarshalJSON(b []byte) error {
	switch strings.ToLower(strings.Trim(string(b), `"`)) {
	case "true":
		*v = true
	case "false", "null", "":
		*v = false
	default:
		return fmt.Errorf("tunnel: want a boolean, got %q", clip(b))
	}
	return nil
}

// LooseString is a scalar kept as text: a string as it is, a number or a
// bool in its JSON spelling, null as "". Objects and arrays are errors.
type LooseString string

// UnmarshalJSON implements the decoding described on LooseString.
func (v *LooseString) UnmarshalJSON(b []byte) error {
	switch {
	case bytes.Equal(b, jsonNull):
		*v = ""
	case len(b) > 0 && b[0] == '"':
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*v = LooseString(s)
	case len(b) > 0 && (b[0] == '{' || b[0] == '['):
		return fmt.Errorf("tunnel: want a scalar, got %q", clip(b))
	default:
		*v = LooseString(b)
	}
	return nil
}

// Headers are HTTP headers on the wire: an object whose values are lists
// of strings. Senders also write a single string for a one-value header;
// both decode, and items of a list that are not strings are dropped.
// Names are kept as sent; use Header for canonical ones.
type Headers map[string][]string

// UnmarshalJSON implements the decoding described on Headers.
func (h *Headers) UnmarshalJSON(b []byte) error {
	if bytes.Equal(b, jsonNull) {
		*h = nil
		return nil
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	out := make(Headers, len(raw))
	for name, v := range raw {
		switch {
		case len(v) > 0 && v[0] == '"':
			var s string
			if err := json.Unmarshal(v, &s); err != nil {
				return err
			}
			out[name] = []string{s}
		case len(v) > 0 && v[0] == '[':
			var items []json.RawMessage
			if err := json.Unmarshal(v, &items); err != nil {
				return err
			}
			for _, it := range items {
				var s string
				if json.Unmarshal(it, &s) == nil {
					out[name] = append(out[name], s)
				}
			}
		case bytes.Equal(v, jsonNull):
		default:
			return fmt.Errorf("tunnel: header %q: want a string or a list of strings, got %q", clip([]byte(name)), clip(v))
		}
	}
	*h = out
	return nil
}

// Header returns h as an http.Header with canonical names (values of
// names that differ only in case are joined).
func (h Headers) Header() http.Header {
	out := make(http.Header, len(h))
	for name, vs := range h {
		for _, v := range vs {
			out.Add(name, v)
		}
	}
	return out
}

// LooseDuration is a timeout as senders write it: a number of
// milliseconds, or a Go duration string such as "30s"; null or absent is 0
// (none given). Negative values are errors. It encodes as milliseconds.
type LooseDuration time.Duration

// UnmarshalJSON implements the decoding described on LooseDuration.
func (d *LooseDuration) UnmarshalJSON(b []byte) error {
	if bytes.Equal(b, jsonNull) {
		*d = 0
		return nil
	}
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		if s == "" {
			*d = 0
			return nil
		}
		v, err := time.ParseDuration(s)
		if err != nil || v < 0 {
			return fmt.Errorf("tunnel: want a duration, got %q", clip(b))
		}
		*d = LooseDuration(v)
		return nil
	}
	ms, ok := parseDecimal(string(b))
	if !ok || ms < 0 || ms > float64(math.MaxInt64/int64(time.Millisecond)) {
		return fmt.Errorf("tunnel: want milliseconds, got %q", clip(b))
	}
	*d = LooseDuration(ms * float64(time.Millisecond))
	return nil
}

// MarshalJSON encodes d as whole milliseconds.
func (d LooseDuration) MarshalJSON() ([]byte, error) {
	return strconv.AppendInt(nil, time.Duration(d).Milliseconds(), 10), nil
}

// clip returns a prefix of peer-sent bytes short enough for an error.
func clip(b []byte) []byte {
	const limit = 32
	if len(b) > limit {
		return b[:limit]
	}
	return b
}
