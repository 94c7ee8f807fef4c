package routetable

import (
	"strings"
	"testing"

	"github.com/pipeops/tunnel/controlplane"
)

// FuzzLookup holds Table.Lookup to a plain reading of the package's
// matching rules (refLookup, a scan of every route): a host matches only
// the routes whose hostname it names, after lowercasing and removing a port
// and a trailing dot, and among those the rules pick the same route.
// Lookup's two ways through (a clean host, and one it lowercases in a stack
// buffer) must agree.
func FuzzLookup(f *testing.F) {
	for _, tt := range lookupTableCases {
		f.Add(tt.host, tt.path)
	}
	for _, s := range []struct{ host, path string }{
		{"[example.com]", "/"}, {"[example.com]:80", "/"}, {"[x.example.com", "/"}, {"example.com..", "/"},
		{"example.com:80:80", "/"}, {"a:b.example.com", "/"}, {"EXAMPLE.COM", "/files/report"},
		{strings.Repeat("A", maxHostLen+1) + ".example.com", "/"}, {"a.example.com.:", "/"},
	} {
		f.Add(s.host, s.path)
	}
	routes := tableRoutes()
	table := NewTable(routes, tableClusters())
	f.Fuzz(func(t *testing.T, host, path string) {
		m, ok := table.Lookup(host, path)
		want, wantOK := refLookup(routes, host, path)
		switch {
		case ok != wantOK:
			t.Fatalf("Lookup(%q, %q) found=%v (%s %s), reference found=%v (%s)", host, path, ok, m.Route.Hostname, m.Route.ServiceName, wantOK, want.ServiceName)
		case ok && m.Route.ServiceName != want.ServiceName:
			t.Fatalf("Lookup(%q, %q) = %s %s (%s), reference %s %s (%s)", host, path,
				m.Route.Hostname, m.Route.Path, m.Route.ServiceName, want.Hostname, want.Path, want.ServiceName)
		}
		if ok {
			if name := refHostName(host); !hostCovers(normalRouteHost(m.Route.Hostname), name) {
				t.Fatalf("Lookup(%q) returned route %s, which does not cover %q", host, m.Route.Hostname, name)
			}
		}
		lower := asciiLower(host)
		if m2, ok2 := table.Lookup(lower, path); ok2 != ok || m2.Route.ServiceName != m.Route.ServiceName {
			t.Fatalf("Lookup(%q) = %v %s but Lookup(%q) = %v %s", host, ok, m.Route.ServiceName, lower, ok2, m2.Route.ServiceName)
		}
	})
}

// lookupTableCases are TestTableLookup's inputs.
var lookupTableCases = []struct{ host, path string }{
	{"example.com", "/"}, {"example.com", ""}, {"example.com", "/index.html"}, {"example.com", "/api"},
	{"example.com", "/api/"}, {"example.com", "/api/users"}, {"example.com", "/api/v1/users"}, {"example.com", "/api/v1"},
	{"example.com", "/apiv1"}, {"example.com", "/api/v10"}, {"example.com", "/files"}, {"example.com", "/files/report"},
	{"example.com", "/files/report/2024"}, {"exact.test", "/only"}, {"exact.test", "/only/"}, {"exact.test", "/only/x"},
	{"example.com:8443", "/api"}, {"Example.COM", "/api"}, {"Example.COM:8443", "/api"}, {"example.com.", "/api"},
	{"EXAMPLE.com.:443", "/api"}, {"upper.example.net", "/x"}, {"example.com", "/API"}, {"a.example.com", "/"},
	{"A.Example.Com:80", "/x"}, {"a.b.example.com", "/"}, {"wild.test", "/a"}, {".example.com", "/"},
	{"api.example.com", "/v1/items"}, {"api.example.com", "/other"}, {"x.wild.test", "/a/b"}, {"x.wild.test", "/b"},
	{"impl.test", "/static/app.js"}, {"impl.test", "/staticx"}, {"unknown.org", "/"}, {"", "/"}, {"[::1]:8080", "/"},
}

// refLookup is the package documentation's matching, written as a scan.
func refLookup(routes []controlplane.Route, host, path string) (controlplane.Route, bool) {
	if path == "" {
		path = "/"
	}
	name := refHostName(host)
	if len(name) > maxHostLen {
		return controlplane.Route{}, false // longer than any DNS name
	}
	if r, ok := refBestPath(routes, path, func(h string) bool { return !strings.HasPrefix(h, "*.") && h == name }); ok {
		return r, true
	}
	return refBestPath(routes, path, func(h string) bool { return strings.HasPrefix(h, "*.") && hostCovers(h, name) })
}

// refBestPath returns, of the routes whose normalised hostname passes
// hostOK, the one whose path wins for path: an identical Exact path first,
// then the longest Prefix (by path elements, a trailing slash ignored; of
// two equal prefixes the one written with the slash); the first given
// breaks a tie.
func refBestPath(routes []controlplane.Route, path string, hostOK func(string) bool) (controlplane.Route, bool) {
	var best controlplane.Route
	found, bestExact := false, false
	for _, r := range routes {
		if r.Hostname == "" || !hostOK(normalRouteHost(r.Hostname)) {
			continue
		}
		rp := r.Path
		if rp == "" {
			rp = "/"
		}
		exact := r.PathType == controlplane.PathTypeExact
		if exact {
			if path != rp {
				continue
			}
		} else if p := strings.TrimRight(rp, "/"); p != "" && path != p && !strings.HasPrefix(path, p+"/") {
			continue
		}
		if !found || refBeats(exact, rp, bestExact, best.Path) {
			best, found, bestExact = r, true, exact
			best.Path = rp
		}
	}
	return best, found
}

// refBeats reports whether a matching route (exact or prefix, path p) wins
// over the best one so far; on a tie the one given first stays.
func refBeats(exact bool, p string, bestExact bool, bestPath string) bool {
	switch {
	case exact != bestExact:
		return exact
	case exact:
		return false // both are the request's path itself
	}
	tp, tb := strings.TrimRight(p, "/"), strings.TrimRight(bestPath, "/")
	switch {
	case len(tp) != len(tb):
		return len(tp) > len(tb)
	case len(p) != len(bestPath):
		return len(p) > len(bestPath)
	}
	return p < bestPath
}

// refHostName is the name a request host asks for: lowercased, without its
// port and one trailing dot. A bracketed host is an IP literal: no name.
func refHostName(host string) string {
	if strings.HasPrefix(host, "[") {
		return ""
	}
	if i := strings.LastIndexByte(host, ':'); i >= 0 {
		host = host[:i]
	}
	return strings.TrimSuffix(asciiLower(host), ".")
}

func normalRouteHost(h string) string { return strings.TrimSuffix(strings.ToLower(h), ".") }

// hostCovers reports whether a route hostname covers a request's name: the
// same name, or for "*.suffix" a name of exactly one more, non-empty label.
func hostCovers(routeHost, name string) bool {
	if suffix, ok := strings.CutPrefix(routeHost, "*."); ok {
		label, ok := strings.CutSuffix(name, "."+suffix)
		return ok && label != "" && !strings.Contains(label, ".")
	}
	return name != "" && routeHost == name
}

func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}
