package api

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"net/http"
	"net/url"
	"strings"

	"github.com/pipeops/tunnel/controlplane"
)

// The console's session, which the API takes as well as a Bearer token so
// that every console page's JSON twin opens in the same browser.
const (
	// SessionCookie holds a signed-in browser's session: an admin token
	// the console issued at sign-in (short-lived, revoked at sign-out),
	// verified like any Bearer token. It is HttpOnly, so no script reads
	// it. Over TLS it is SecureSessionCookie instead.
	SessionCookie = "pipeops_session"
	// SecureSessionCookie is SessionCookie's name over TLS: browsers
	// accept a "__Host-" cookie only when it is Secure, for the whole
	// host and set by it, so a page of a sibling subdomain or one served
	// over plain HTTP cannot plant a session of its own choosing.
	SecureSessionCookie = "__Host-" + SessionCookie
	// CSRFHeader carries CSRFToken(session) on every request that changes
	// something and is authenticated by the cookie; the console's forms
	// carry it as the field CSRFField.
	CSRFHeader = "X-CSRF-Token"
	CSRFField  = "csrf_token"
)

// SessionFrom returns the console session a request carries, "" when
// none: the secure cookie's when both are sent.
func SessionFrom(r *http.Request) string {
	for _, name := range []string{SecureSessionCookie, SessionCookie} {
		if c, err := r.Cookie(name); err == nil && c.Value != "" {
			return c.Value
		}
	}
	return ""
}

// CSRFToken is the anti-forgery token of a session: a hash of the session
// cookie's value. Only a page of the console itself can know it (the
// cookie is HttpOnly and another site cannot read the console's pages), it
// needs no server-side state, so any control plane replica checks it, and
// it changes with every sign-in.
func CSRFToken(session string) string {
	sum := sha256.Sum256([]byte("pipeops console csrf\x00" + session))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// CheckSameOrigin refuses a request that changes something (any method
// but GET, HEAD and OPTIONS) when it was sent by a page of another origin,
// or carries no proof of coming from the console: its Origin header, when
// present, must be the request's own origin, and got must be the session's
// CSRF token. Cookies go with cross-site requests whenever the browser
// counts the sites as one (another port of the same host is the same
// site), so SameSite alone is not enough.
func CheckSameOrigin(r *http.Request, session, got string) error {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return nil
	}
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		if err != nil || !strings.EqualFold(u.Host, r.Host) {
			return controlplane.Errorf(controlplane.EFORBIDDEN, "cross-site request refused: it came from %q, not from this console", o)
		}
	}
	want := CSRFToken(session)
	if got == "" || subtle.ConstantTimeCompare([]byte(got), []byte(want)) != 1 {
		return controlplane.Errorf(controlplane.EFORBIDDEN, "request refused: its anti-forgery token is missing or wrong (reload the page and try again)")
	}
	return nil
}

// bearerOnly refuses a request that was authenticated by the console's
// session cookie rather than an Authorization header: for GETs that create
// something, which the cookie's anti-forgery check does not cover.
func bearerOnly(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") == "" {
			writeError(w, r, controlplane.Errorf(controlplane.EFORBIDDEN,
				"this endpoint takes a Bearer token only (in the console, use the kubeconfig form of the cluster's page)"), nil)
			return
		}
		next.ServeHTTP(w, r)
	})
}
