package controlplane

import (
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Bounds of what an AuditEntry stores (see AuditEntry.Normalized).
const (
	// MaxAuditPathBytes is the longest path stored; the table refuses
	// longer ones.
	MaxAuditPathBytes = 2048
	// MaxAuditFieldBytes bounds each other text field (cluster, user,
	// group, token id, verb, method).
	MaxAuditFieldBytes = 256
	// MaxAuditGroups bounds the groups stored per entry.
	MaxAuditGroups = 64
	// AuditTruncatedMarker ends a path that was cut to MaxAuditPathBytes.
	AuditTruncatedMarker = "...[truncated]"
)

// Defaults and limits of AuditFilter.Limit.
const (
	DefaultAuditLimit = 100
	MaxAuditLimit     = 10000
)

// AuditEntry is one Kubernetes API request a gateway proxied: who made it
// (the token's subject, groups and id), to which cluster, what it did and
// how it ended. It never holds a body, a query string or a credential.
type AuditEntry struct {
	ID          int64     // assigned by the store; zero before
	Time        time.Time // when the request arrived
	ClusterUUID string
	// ClusterName is kept beside the uuid because the entry outlives the
	// cluster.
	ClusterName string
	User        string // the token's subject
	Groups      []string
	TokenID     string // the token's id (jti), never the token
	// Verb is the Kubernetes verb the API server would authorise the
	// request under (see gateway/audit.Verb), or the lower-cased method of
	// a non-resource path.
	Verb     string
	Method   string
	Path     string // the API server's path, without the query
	Status   int    // the HTTP status answered (101 for an upgrade)
	BytesIn  int64  // request body bytes read from the caller
	BytesOut int64  // response body bytes written to the caller
	// Duration is from arrival to the end of the response: for a watch or
	// an exec stream, the whole session.
	Duration time.Duration
}

// Normalized returns e made storable: every text field valid UTF-8 without
// NUL bytes (PostgreSQL's text refuses both, and one bad field would fail
// the whole batch it is written in), the path cut to MaxAuditPathBytes with
// AuditTruncatedMarker, the other fields to MaxAuditFieldBytes, and at most
// MaxAuditGroups groups (the last one saying how many more there were).
// Cut strings are copies, so a huge request path is not kept alive by the
// entry. Normalized is idempotent.
func (e AuditEntry) Normalized() AuditEntry {
	e.Path = clipText(e.Path, MaxAuditPathBytes, AuditTruncatedMarker)
	for _, s := range []*string{&e.ClusterUUID, &e.ClusterName, &e.User, &e.TokenID, &e.Verb, &e.Method} {
		*s = clipText(*s, MaxAuditFieldBytes, "")
	}
	if len(e.Groups) > 0 {
		n := min(len(e.Groups), MaxAuditGroups)
		gs := make([]string, n)
		for i := range n {
			gs[i] = clipText(e.Groups[i], MaxAuditFieldBytes, "")
		}
		if len(e.Groups) > MaxAuditGroups {
			gs[n-1] = "..." + strconv.Itoa(len(e.Groups)-n+1) + " more"
		}
		e.Groups = gs
	}
	return e
}

// clipText returns s as valid UTF-8 without NUL, at most maxBytes long;
// when it had to be cut, it ends with marker. A cut result is a copy.
func clipText(s string, maxBytes int, marker string) string {
	if !utf8.ValidString(s) || strings.IndexByte(s, 0) >= 0 {
		s = strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
	}
	if len(s) <= maxBytes {
		return s
	}
	cut := maxBytes - len(marker)
	// Back up to the start of a rune so the result stays valid UTF-8.
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strings.Clone(s[:cut]) + marker
}

// AuditFilter selects audit entries. Zero fields select everything.
type AuditFilter struct {
	// Cluster matches a cluster's uuid or its name (entries of a deleted
	// cluster, and of every cluster that had the name).
	Cluster string
	User    string
	Since   time.Time // entries at or after it
	// Limit bounds the entries returned, newest first: DefaultAuditLimit
	// when zero or less, at most MaxAuditLimit.
	Limit int
}
