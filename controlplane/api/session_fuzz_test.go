package api

import (
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

// FuzzCheckSameOrigin: a request that changes something passes only with
// the session's own anti-forgery token and, when it names an Origin, one
// whose host is the request's; any header never panics.
func FuzzCheckSameOrigin(f *testing.F) {
	f.Add("POST", "http://cp.example", "cp.example", true)
	f.Add("POST", "http://evil.example", "cp.example", true)
	f.Add("DELETE", "null", "cp.example", true)
	f.Add("POST", "", "cp.example", false)
	f.Add("GET", "http://evil.example", "cp.example", false)
	f.Add("POST", "http://[::1", "cp.example", true)
	f.Fuzz(func(t *testing.T, method, origin, host string, rightToken bool) {
		if method == "" || strings.ContainsAny(method, " \t\r\n()<>@,;:\\\"/[]?={}") {
			return // not a method net/http would hand a handler
		}
		r := httptest.NewRequest("GET", "http://cp.example/", nil)
		r.Method, r.Host = method, host
		if origin != "" {
			r.Header.Set("Origin", origin)
		}
		const session = "the-session"
		token := "wrong"
		if rightToken {
			token = CSRFToken(session)
		}
		err := CheckSameOrigin(r, session, token)
		switch method {
		case "GET", "HEAD", "OPTIONS":
			if err != nil {
				t.Fatalf("%s refused: %v", method, err)
			}
			return
		}
		if !rightToken && err == nil {
			t.Fatal("a wrong anti-forgery token passed")
		}
		if origin != "" && err == nil {
			if u, perr := url.Parse(origin); perr != nil || !strings.EqualFold(u.Host, host) {
				t.Fatalf("origin %q passed for host %q", origin, host)
			}
		}
	})
}
