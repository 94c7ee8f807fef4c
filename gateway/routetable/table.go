// Package routetable is the gateway's in-memory route table: which cluster,
// Service and ingress controller a request for a host and path goes to.
//
// A Table is an immutable snapshot built from the control plane's routes and
// clusters; lookups need no lock and allocate nothing in the common case. A
// Store keeps the current Table, loads it from PostgreSQL, follows the
// control plane's route notifications (LISTEN/NOTIFY) and swaps in a new
// Table after each change, so that the request path never waits for the
// database. When PostgreSQL is unreachable the Store keeps serving its last
// Table and says so in its Status.
//
// Matching follows Kubernetes Ingress semantics:
//
//   - The request host is lowercased, its port and a trailing dot removed.
//   - An exact hostname is tried first, then a wildcard "*.example.com",
//     which covers exactly one more label: a.example.com, not
//     a.b.example.com nor example.com.
//   - Among a host's routes, an Exact path matches only the identical path;
//     a Prefix path matches by path elements ("/api" matches "/api",
//     "/api/" and "/api/v1", not "/apiv1"; "/" matches every path), a
//     trailing slash on the route's path being ignored.
//     ImplementationSpecific is treated as Prefix. An Exact match beats any
//     Prefix match, and the longest Prefix wins.
//   - When the exact hostname has routes but none of their paths matches,
//     the wildcard's routes are tried next. Kubernetes leaves this case to
//     the implementation; falling through means a wildcard can serve the
//     paths a specific host does not claim (say *.example.com serving "/"
//     while api.example.com only claims "/v1"), which is what a user who
//     registered both most likely wants, and never takes a path the
//     specific host does claim.
package routetable

import (
	"bytes"
	"cmp"
	"maps"
	"slices"
	"strings"

	"github.com/pipeops/tunnel/controlplane"
)

// maxHostLen is the longest DNS name. A longer request host names no route,
// exact or wildcard, and need not be lowercased.
const maxHostLen = 253

// Match is a lookup result. It shares the Table's data: the Route's
// Annotations map and the IngressController are read-only for the caller.
type Match struct {
	// Route is the matched route. Its Hostname is the route's, which may be
	// a wildcard such as *.example.com, not the request's host.
	Route controlplane.Route
	// IngressController is the route's cluster's ingress controller as of
	// the cluster's last route sync; nil when the cluster never reported
	// one (or is not in the cluster list the Table was built from).
	IngressController *controlplane.IngressController
	// MaxRequestBody is the route's own request body limit in bytes, read
	// from its annotations when the Table was built (AnnotationMaxBodySize,
	// else AnnotationNginxBodySize). 0 means the route sets none: neither
	// annotation, a value of 0, or a value that does not parse. The
	// gateway's global limit still applies over it.
	MaxRequestBody int64
}

// entry is one route of a host, prepared for matching.
type entry struct {
	match Match
	exact bool
	// prefix is the route's path without trailing slashes, for Prefix
	// matching: "" for "/", "/api" for both "/api" and "/api/".
	prefix string
}

// Table is an immutable snapshot of the routes: safe for any number of
// concurrent lookups without locks. Build one with NewTable; the zero value
// and a nil *Table are empty tables.
type Table struct {
	// hosts holds the routes of exact hostnames, wildcards the routes of
	// "*.<suffix>" keyed by suffix. Each slice is in match order (see
	// compareEntries), so a lookup takes the first entry that matches.
	hosts     map[string][]entry
	wildcards map[string][]entry
	n         int
	// byCluster lists, per cluster UUID, the keys of hosts and wildcards
	// that hold its routes (a key may repeat), so that WithCluster touches
	// only those.
	byCluster map[string][]hostKey
	// bodySizeProblems are the routes whose body size annotation does not
	// parse, for the Store to log.
	bodySizeProblems []bodySizeProblem
}

// NewTable builds a Table from routes and the clusters they belong to (for
// their ingress controllers). Hostnames are lowercased and stripped of a
// trailing dot; an empty path is "/" and an empty path type Prefix, as the
// control plane stores them. Routes without a hostname are left out. When
// two routes have the same hostname and path (the control plane never
// stores such a pair), the first one given wins.
//
// The Table keeps the routes' Annotations maps; neither the caller nor any
// reader may change them afterwards. Ingress controllers are copied. Each
// route's body size annotation is parsed here (see Match.MaxRequestBody).
func NewTable(routes []controlplane.Route, clusters []*controlplane.Cluster) *Table {
	ingress := make(map[string]*controlplane.IngressController, len(clusters))
	for _, c := range clusters {
		if ic := ingressOf(c); ic != nil {
			ingress[c.UUID] = ic
		}
	}
	t := &Table{
		hosts:     make(map[string][]entry),
		wildcards: make(map[string][]entry),
		byCluster: make(map[string][]hostKey),
	}
	for _, r := range routes {
		t.add(r, ingress[r.ClusterUUID])
	}
	for _, m := range []map[string][]entry{t.hosts, t.wildcards} {
		for _, es := range m {
			// Stable, so that of two identical routes the first given wins.
			slices.SortStableFunc(es, compareEntries)
		}
	}
	return t
}

// WithCluster returns a Table in which cluster's routes are routes (routes
// naming another cluster are taken as cluster's) and its ingress controller
// is c's, c being nil for a cluster that is gone; the other clusters'
// routes are t's. t is not changed, and shares with the new Table every
// host that cluster has no route on, so that a change costs a copy of two
// maps of slice headers and the work on the cluster's own hosts, not a
// rebuild of every route.
func (t *Table) WithCluster(cluster string, routes []controlplane.Route, c *controlplane.Cluster) *Table {
	if t == nil {
		t = &Table{}
	}
	nt := &Table{
		hosts:     cloneMap(t.hosts),
		wildcards: cloneMap(t.wildcards),
		byCluster: cloneMap(t.byCluster),
		n:         t.n,
	}
	for _, p := range t.bodySizeProblems {
		if p.cluster != cluster {
			nt.bodySizeProblems = append(nt.bodySizeProblems, p)
		}
	}
	// fresh holds the keys whose slices nt owns (made here), so that
	// appending to them cannot write into a slice t still uses.
	fresh := make(map[hostKey]bool)
	for _, k := range t.byCluster[cluster] {
		if fresh[k] {
			continue
		}
		fresh[k] = true
		m := nt.entries(k)
		var kept []entry
		for _, e := range m[k.name] {
			if e.match.Route.ClusterUUID == cluster {
				nt.n--
			} else {
				kept = append(kept, e)
			}
		}
		if len(kept) == 0 {
			delete(m, k.name)
		} else {
			m[k.name] = kept
		}
	}
	delete(nt.byCluster, cluster)
	ic := ingressOf(c)
	for _, r := range routes {
		r.ClusterUUID = cluster
		if k, _, ok := keyOf(r); ok && !fresh[k] {
			m := nt.entries(k)
			m[k.name] = slices.Clone(m[k.name])
			fresh[k] = true
		}
		nt.add(r, ic)
	}
	for k := range fresh {
		if es := nt.entries(k)[k.name]; len(es) > 1 {
			slices.SortStableFunc(es, compareEntries)
		}
	}
	return nt
}

// hostKey names one slice of a Table: of hosts, or of wildcards when
// wildcard is set (name is then the suffix after "*.").
type hostKey struct {
	wildcard bool
	name     string
}

func (t *Table) entries(k hostKey) map[string][]entry {
	if k.wildcard {
		return t.wildcards
	}
	return t.hosts
}

// keyOf returns the key r goes under and its hostname as tables keep it
// (lower case, no trailing dot); not ok for a route without a hostname,
// which no table holds.
func keyOf(r controlplane.Route) (hostKey, string, bool) {
	host := strings.TrimSuffix(strings.ToLower(r.Hostname), ".")
	if host == "" {
		return hostKey{}, "", false
	}
	if suffix, ok := strings.CutPrefix(host, "*."); ok {
		return hostKey{wildcard: true, name: suffix}, host, true
	}
	return hostKey{name: host}, host, true
}

// add prepares r for matching and appends it to its host's slice, unsorted:
// the caller sorts the slices it touched.
func (t *Table) add(r controlplane.Route, ic *controlplane.IngressController) {
	k, host, ok := keyOf(r)
	if !ok {
		return
	}
	r.Hostname = host
	if r.Path == "" {
		r.Path = "/"
	}
	if r.PathType == "" {
		r.PathType = controlplane.PathTypePrefix
	}
	e := entry{match: Match{Route: r, IngressController: ic}}
	limit, annotation, value, err := routeBodyLimit(r.Annotations)
	if err != nil {
		t.bodySizeProblems = append(t.bodySizeProblems, bodySizeProblem{host: host, path: r.Path,
			cluster: r.ClusterUUID, annotation: annotation, value: value, err: err})
	}
	e.match.MaxRequestBody = limit
	if r.PathType == controlplane.PathTypeExact {
		e.exact = true
	} else {
		// Prefix, ImplementationSpecific, and anything newer this
		// gateway does not know: a prefix is the broader reading.
		e.prefix = strings.TrimRight(r.Path, "/")
	}
	m := t.entries(k)
	m[k.name] = append(m[k.name], e)
	t.byCluster[r.ClusterUUID] = append(t.byCluster[r.ClusterUUID], k)
	t.n++
}

// ingressOf returns a copy of c's ingress controller, nil when c or it is
// nil.
func ingressOf(c *controlplane.Cluster) *controlplane.IngressController {
	if c == nil || c.IngressController == nil {
		return nil
	}
	ic := *c.IngressController
	return &ic
}

// cloneMap copies m's entries (not what they point to) into a new map,
// never nil.
func cloneMap[V any](m map[string]V) map[string]V {
	out := make(map[string]V, len(m))
	maps.Copy(out, m)
	return out
}

// compareEntries orders a host's routes so that the first one matching a
// path is the one that should win: Exact paths before Prefix paths, then
// longer prefixes first. Of "/api" and "/api/", equal as prefixes, the one
// written with the slash goes first, being the more specific. The last
// comparison only makes the order deterministic.
func compareEntries(a, b entry) int {
	if a.exact != b.exact {
		if a.exact {
			return -1
		}
		return 1
	}
	if !a.exact {
		if c := cmp.Compare(len(b.prefix), len(a.prefix)); c != 0 {
			return c
		}
		if c := cmp.Compare(len(b.match.Route.Path), len(a.match.Route.Path)); c != 0 {
			return c
		}
	}
	return strings.Compare(a.match.Route.Path, b.match.Route.Path)
}

// Len returns the number of routes in the table.
func (t *Table) Len() int {
	if t == nil {
		return 0
	}
	return t.n
}

// Lookup finds the route for a request's host (the Host header or the
// URL's host, port allowed) and path (the URL's path; empty means "/"),
// following the rules in the package documentation. It allocates nothing.
func (t *Table) Lookup(host, path string) (Match, bool) {
	if t == nil || t.n == 0 {
		return Match{}, false
	}
	if path == "" {
		path = "/"
	}
	host = trimHost(host)
	if len(host) > maxHostLen {
		// Longer than any DNS name: it names no route, whatever its case
		// (a wildcard's suffix is shorter, so the length must be checked
		// here, not only where the case is folded).
		return Match{}, false
	}
	if !hasUpper(host) {
		if e := matchPath(t.hosts[host], path); e != nil {
			return e.match, true
		}
		if i := strings.IndexByte(host, '.'); i > 0 {
			if e := matchPath(t.wildcards[host[i+1:]], path); e != nil {
				return e.match, true
			}
		}
		return Match{}, false
	}
	// Same as above on a lowercased copy in a stack buffer: a map index by
	// string(bytes) does not allocate, so mixed-case hosts cost nothing
	// extra either.
	var buf [maxHostLen]byte
	b := buf[:len(host)]
	for i := 0; i < len(host); i++ {
		c := host[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		b[i] = c
	}
	if e := matchPath(t.hosts[string(b)], path); e != nil {
		return e.match, true
	}
	if i := bytes.IndexByte(b, '.'); i > 0 {
		if e := matchPath(t.wildcards[string(b[i+1:])], path); e != nil {
			return e.match, true
		}
	}
	return Match{}, false
}

// matchPath returns the first of es (in match order) that matches path.
func matchPath(es []entry, path string) *entry {
	for i := range es {
		e := &es[i]
		if e.exact {
			if path == e.match.Route.Path {
				return e
			}
			continue
		}
		if prefixMatches(e.prefix, path) {
			return e
		}
	}
	return nil
}

// prefixMatches reports whether path is prefix or lies below it, element by
// element. prefix has no trailing slash; "" is the root, matching all.
func prefixMatches(prefix, path string) bool {
	if !strings.HasPrefix(path, prefix) {
		return false
	}
	return len(path) == len(prefix) || path[len(prefix)] == '/' || prefix == ""
}

// trimHost removes a port and a trailing dot from a request host without
// allocating. A bracketed host (an IPv6 literal) becomes "": routes are DNS
// names, so it must match none, not even when what is in the brackets
// looks like one ("[app.example.com]").
func trimHost(h string) string {
	if strings.HasPrefix(h, "[") {
		return ""
	}
	if i := strings.LastIndexByte(h, ':'); i >= 0 {
		h = h[:i]
	}
	return strings.TrimSuffix(h, ".")
}

// hasUpper reports whether s has an ASCII uppercase letter. Non-ASCII bytes
// are left alone: no stored hostname has them, so no lowercasing could make
// such a host match.
func hasUpper(s string) bool {
	for i := 0; i < len(s); i++ {
		if 'A' <= s[i] && s[i] <= 'Z' {
			return true
		}
	}
	return false
}
