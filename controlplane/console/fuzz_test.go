package console

import (
	"net/url"
	"strings"
	"testing"
)

// FuzzSafeNext: whatever a sign-in's or a revocation's "next"/"back" says,
// the redirect stays inside the console: a path under Prefix that a
// browser cannot read as another host.
func FuzzSafeNext(f *testing.F) {
	for _, s := range []string{"", "/console/clusters", "/console/clusters/x?revoked=1", "//evil.example/",
		"/console//evil.example", "https://evil.example/console/", "/console/\\evil", "/console/\r\nLocation: x",
		"/consolex", "/console/../api", "javascript:alert(1)"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, next string) {
		got := safeNext(next)
		if got != next && got != Prefix+"/clusters" {
			t.Fatalf("safeNext(%q) = %q: neither the input nor the default", next, got)
		}
		if !strings.HasPrefix(got, Prefix+"/") || strings.ContainsAny(got, "\\\r\n") {
			t.Fatalf("safeNext(%q) = %q leaves the console", next, got)
		}
		u, err := url.Parse(got)
		if err == nil && (u.Host != "" || u.Scheme != "") {
			t.Fatalf("safeNext(%q) = %q names a host", next, got)
		}
	})
}
