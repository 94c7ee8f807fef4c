// Package console is the control plane's web console: server-rendered
// pages (html/template, assets embedded, no script from anywhere else) on
// the same stores and functions as the admin API, for people who sign in
// with an admin token. Every page has a JSON twin in the admin API, which
// takes the console's session cookie too (see api.SessionFrom).
//
// A sign-in exchanges the admin token for a session: a new admin token of
// Config.SessionTTL, recorded like any other, kept in an HttpOnly,
// SameSite=Strict cookie (Secure when the console is served over TLS) and
// revoked at sign-out. Every form carries the session's anti-forgery token
// (api.CSRFToken) and is refused without it or from another origin.
package console

import (
	"context"
	"crypto/rand"
	"embed"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/controlplane/api"
	"github.com/pipeops/tunnel/controlplane/tokens"
	"github.com/pipeops/tunnel/shared/auth"
	"github.com/pipeops/tunnel/shared/ratelog"
)

// Defaults.
const (
	// DefaultSessionTTL is how long a sign-in lasts.
	DefaultSessionTTL = 8 * time.Hour
	// DefaultRefresh is how often the live parts of a page reload.
	DefaultRefresh = time.Second
	// Prefix is where the console is served; the API mounts it there.
	Prefix = "/console"
	// signinCookie holds the sign-in form's anti-forgery secret, before
	// there is a session.
	signinCookie = "pipeops_signin"
	// maxFormBytes bounds every form body.
	maxFormBytes = 64 << 10
	// cookieGrace keeps the session cookie a little longer than its
	// token lives (verifiers allow 30 s of clock skew), so that a browser
	// coming back after the end is told its session ended rather than
	// shown a bare sign-in form.
	cookieGrace = time.Minute
	// DefaultTrafficRefresh is how often the traffic charts reload: the
	// gateways add their figures every 10 s, so more often shows nothing
	// new and costs a dozen queries each time.
	DefaultTrafficRefresh = 10 * time.Second
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Config is what the console needs to know about the deployment.
type Config struct {
	// APIURL is the control plane's public URL, for install commands;
	// one starting with https:// also makes the cookies Secure behind a
	// proxy that terminates TLS.
	APIURL string
	// GatewayURL, GatewayCA and K8sAPIDomain are the API's (see
	// api.Config), for kubeconfigs.
	GatewayURL   string
	GatewayCA    []byte
	K8sAPIDomain string
	// GrafanaURL, when set, is linked from every cluster's traffic (the
	// compose monitoring profile's dashboard).
	GrafanaURL string
	// SessionTTL is how long a sign-in lasts (DefaultSessionTTL when 0).
	SessionTTL time.Duration
	// Refresh is how often live parts of pages reload (DefaultRefresh
	// when 0).
	Refresh time.Duration
	// TrafficRefresh is how often the traffic charts reload
	// (DefaultTrafficRefresh when 0).
	TrafficRefresh time.Duration
}

// AuditReader reads the Kubernetes API audit (controlplane/postgres.DB).
type AuditReader interface {
	AuditEntries(ctx context.Context, f controlplane.AuditFilter) ([]controlplane.AuditEntry, error)
}

// Deps are the services the console uses. Clusters, Routes, Tokens and
// Issuer are required; the others turn parts of pages on.
type Deps struct {
	Clusters controlplane.ClusterStore
	Routes   controlplane.RouteStore
	Tokens   controlplane.TokenStore
	Issuer   *tokens.Issuer
	Audit    AuditReader
	// Traffic, when set, draws each cluster's last hour of public
	// traffic from the gateways' figures.
	Traffic controlplane.TrafficStore
	Logger  *slog.Logger
}

// Console serves the pages. Build it with New.
type Console struct {
	cfg      Config
	d        Deps
	verifier *auth.Verifier
	log      *slog.Logger
	// refusals keeps the lines anyone can cause at will (wrong tokens at
	// the sign-in) to one per interval, with a count.
	refusals *ratelog.Limiter
	pages    map[string]*template.Template
	secure   bool
}

// New returns a Console.
func New(cfg Config, d Deps) (*Console, error) {
	if d.Clusters == nil || d.Routes == nil || d.Tokens == nil || d.Issuer == nil {
		return nil, errors.New("console: Clusters, Routes, Tokens and Issuer are required")
	}
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = DefaultSessionTTL
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = DefaultRefresh
	}
	if cfg.TrafficRefresh <= 0 {
		cfg.TrafficRefresh = DefaultTrafficRefresh
	}
	log := d.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	pages, err := parsePages()
	if err != nil {
		return nil, err
	}
	return &Console{cfg: cfg, d: d, verifier: d.Issuer.Verifier(), log: log, pages: pages,
		refusals: ratelog.New(log, ratelog.Config{MaxKeys: 1024}),
		secure:   strings.HasPrefix(cfg.APIURL, "https://")}, nil
}

func parsePages() (map[string]*template.Template, error) {
	names, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return nil, err
	}
	pages := make(map[string]*template.Template)
	for _, n := range names {
		base := strings.TrimSuffix(strings.TrimPrefix(n, "templates/"), ".html")
		if base == "layout" {
			continue
		}
		t, err := template.New(base).Funcs(funcs).ParseFS(templateFS, "templates/layout.html", n)
		if err != nil {
			return nil, fmt.Errorf("console: template %s: %w", n, err)
		}
		pages[base] = t
	}
	return pages, nil
}

// Handler serves the console; mount it at Prefix.
func (c *Console) Handler() http.Handler {
	r := chi.NewRouter()
	r.Use(securityHeaders)
	static, _ := fs.Sub(staticFS, "static")
	r.Handle("/static/*", http.StripPrefix(Prefix+"/static/", cacheFor(time.Hour, http.FileServerFS(static))))
	r.Get("/", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, Prefix+"/clusters", http.StatusSeeOther)
	})
	r.Get("/signin", c.signinPage)
	r.Post("/signin", c.signin)
	r.Group(func(r chi.Router) {
		r.Use(c.requireSession)
		r.Post("/signout", c.signout)
		r.Get("/clusters", c.clustersPage)
		r.Get("/clusters/live", c.clustersLive)
		r.Post("/clusters", c.createCluster)
		r.Get("/clusters/{cluster}", c.clusterPage)
		r.Get("/clusters/{cluster}/live", c.clusterLive)
		r.Get("/clusters/{cluster}/traffic/live", c.trafficLive)
		r.Get("/clusters/{cluster}/rotate", c.confirmRotate)
		r.Post("/clusters/{cluster}/rotate", c.rotate)
		r.Post("/clusters/{cluster}/kubeconfig", c.kubeconfig)
		r.Get("/clusters/{cluster}/delete", c.confirmDelete)
		r.Post("/clusters/{cluster}/delete", c.deleteCluster)
		r.Get("/tokens/{id}/revoke", c.confirmRevoke)
		r.Post("/tokens/{id}/revoke", c.revoke)
	})
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		c.fail(w, r, controlplane.Errorf(controlplane.ENOTFOUND, "no such page: %s", r.URL.Path))
	})
	return r
}

// securityHeaders keeps the pages from being framed, sniffed or made to
// run anything but the console's own script.
func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "same-origin") // not no-referrer: that makes forms send "Origin: null"
		h.Set("Cache-Control", "no-store")
		next.ServeHTTP(w, r)
	})
}

func cacheFor(d time.Duration, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", fmt.Sprintf("private, max-age=%d", int(d.Seconds())))
		next.ServeHTTP(w, r)
	})
}

// session is a signed-in request's session.
type session struct {
	raw    string // the cookie's value, the session's token
	claims *auth.Claims
}

type sessionKey struct{}

func sessionOf(r *http.Request) *session {
	s, _ := r.Context().Value(sessionKey{}).(*session)
	return s
}

// requireSession admits requests with a valid session; a page asked for
// without one goes to the sign-in page (and back after it), anything else
// is 401. Forms are checked for their size, anti-forgery token and origin.
func (c *Console) requireSession(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s, err := c.session(r)
		if err != nil {
			c.fail(w, r, err)
			return
		}
		if s == nil {
			if r.Method == http.MethodGet && !strings.HasSuffix(r.URL.Path, "/live") {
				q := url.Values{"next": {r.URL.RequestURI()}}
				if api.SessionFrom(r) != "" {
					q.Set("ended", "1")
				}
				http.Redirect(w, r, Prefix+"/signin?"+q.Encode(), http.StatusSeeOther)
				return
			}
			c.fail(w, r, controlplane.Errorf(controlplane.EUNAUTHORIZED, "not signed in, or the session has ended: sign in again"))
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			if err := parseForm(w, r); err != nil {
				c.fail(w, r, err)
				return
			}
			if err := api.CheckSameOrigin(r, s.raw, r.PostFormValue(api.CSRFField)); err != nil {
				c.fail(w, r, err)
				return
			}
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), sessionKey{}, s)))
	})
}

// session returns the valid session r carries; nil when it carries none,
// or one that has ended. The error is the verifier's own failure.
func (c *Console) session(r *http.Request) (*session, error) {
	raw := api.SessionFrom(r)
	if raw == "" {
		return nil, nil
	}
	claims, err := c.verifier.Verify(r.Context(), raw, auth.KindAdmin)
	switch {
	case err == nil:
		return &session{raw: raw, claims: claims}, nil
	case isRefusal(err):
		return nil, nil
	default:
		return nil, fmt.Errorf("verify session: %w", err)
	}
}

// parseForm reads a form of at most maxFormBytes; a larger one is
// ETOOLARGE (413), an unreadable one EINVALID.
func parseForm(w http.ResponseWriter, r *http.Request) error {
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	err := r.ParseForm()
	var tooLarge *http.MaxBytesError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &tooLarge):
		return controlplane.Errorf(controlplane.ETOOLARGE, "the form is larger than %d KiB", maxFormBytes>>10)
	default:
		return controlplane.Errorf(controlplane.EINVALID, "unreadable form: %v", err)
	}
}

// isRefusal reports whether a verification error is the token's fault
// (401) rather than the verifier's (a failed revocation lookup).
func isRefusal(err error) bool {
	return errors.Is(err, auth.ErrInvalidToken) || errors.Is(err, auth.ErrRevoked) ||
		errors.Is(err, auth.ErrWrongKind) || errors.Is(err, auth.ErrNotAsRecorded)
}

// setCookie sets a console cookie: HttpOnly, SameSite=Strict, Secure over
// TLS. Its path is the whole host, because the admin API takes the session
// too (and a "__Host-" cookie must have Path=/). maxAge < 0 deletes it.
func (c *Console) setCookie(w http.ResponseWriter, r *http.Request, name, value string, maxAge int) {
	http.SetCookie(w, &http.Cookie{Name: name, Value: value, Path: "/", MaxAge: maxAge, HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: c.tls(r)})
}

func (c *Console) tls(r *http.Request) bool { return c.secure || r.TLS != nil }

// sessionCookie is the session cookie's name for r: the "__Host-" one
// over TLS.
func (c *Console) sessionCookie(r *http.Request) string {
	if c.tls(r) {
		return api.SecureSessionCookie
	}
	return api.SessionCookie
}

type signinView struct {
	Next, Message string
	Failed        bool
}

func (c *Console) signinPage(w http.ResponseWriter, r *http.Request) {
	v := signinView{Next: safeNext(r.URL.Query().Get("next"))}
	if r.URL.Query().Get("ended") != "" {
		v.Message = "Your session has ended. Sign in again."
	}
	if r.URL.Query().Get("signedout") != "" {
		v.Message = "Signed out."
	}
	c.renderSignin(w, r, http.StatusOK, v)
}

// renderSignin shows the sign-in form with a fresh anti-forgery secret:
// there is no session to bind its token to yet, so a cookie of its own
// stands in for one.
func (c *Console) renderSignin(w http.ResponseWriter, r *http.Request, status int, v signinView) {
	secret := randomToken()
	c.setCookie(w, r, signinCookie, secret, 1800)
	c.render(w, r, status, "signin", "Sign in", v, api.CSRFToken(secret))
}

func (c *Console) signin(w http.ResponseWriter, r *http.Request) {
	if err := parseForm(w, r); err != nil {
		c.fail(w, r, err)
		return
	}
	next := safeNext(r.PostFormValue("next"))
	ck, err := r.Cookie(signinCookie)
	if err != nil || ck.Value == "" {
		c.renderSignin(w, r, http.StatusForbidden, signinView{Next: next, Failed: true,
			Message: "The sign-in form had expired or came from another page. Try again."})
		return
	}
	if err := api.CheckSameOrigin(r, ck.Value, r.PostFormValue(api.CSRFField)); err != nil {
		c.fail(w, r, err)
		return
	}
	raw := strings.TrimSpace(r.PostFormValue("token"))
	claims, err := c.verifier.Verify(r.Context(), raw, auth.KindAdmin)
	if err != nil {
		if !isRefusal(err) {
			c.fail(w, r, fmt.Errorf("verify admin token: %w", err))
			return
		}
		c.refusals.Log(r.Context(), slog.LevelInfo, "signin_refused", "console sign-in refused", "remote", r.RemoteAddr, "err", err)
		c.renderSignin(w, r, http.StatusUnauthorized, signinView{Next: next, Failed: true,
			Message: "That is not a valid admin token. Use one from `pipeops-controlplane token create --admin`."})
		return
	}
	tok, rec, err := c.d.Issuer.Issue(r.Context(), tokens.Request{Kind: auth.KindAdmin, TTL: c.cfg.SessionTTL})
	if err != nil {
		c.fail(w, r, fmt.Errorf("issue session: %w", err))
		return
	}
	// Signing in again over a session ends that one: a browser holds one
	// session, and one left behind would stay valid for hours unseen.
	if prev, err := c.session(r); err == nil && prev != nil {
		if err := c.d.Tokens.RevokeToken(r.Context(), prev.claims.ID, time.Now()); err != nil {
			c.fail(w, r, fmt.Errorf("end the previous session: %w", err))
			return
		}
		c.log.Info("console session replaced", "session", prev.claims.ID)
	}
	c.log.Info("console sign-in", "remote", r.RemoteAddr, "with_token", claims.ID, "session", rec.ID)
	c.setCookie(w, r, signinCookie, "", -1)
	c.setCookie(w, r, c.sessionCookie(r), tok, int((c.cfg.SessionTTL + cookieGrace).Seconds()))
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (c *Console) signout(w http.ResponseWriter, r *http.Request) {
	s := sessionOf(r)
	if err := c.d.Tokens.RevokeToken(r.Context(), s.claims.ID, time.Now()); err != nil {
		c.fail(w, r, fmt.Errorf("end session: %w", err))
		return
	}
	c.setCookie(w, r, c.sessionCookie(r), "", -1)
	http.Redirect(w, r, Prefix+"/signin?signedout=1", http.StatusSeeOther)
}

// safeNext keeps a post-sign-in redirect inside the console.
func safeNext(next string) string {
	if !strings.HasPrefix(next, Prefix+"/") || strings.HasPrefix(next, "//") || strings.ContainsAny(next, "\\\r\n") {
		return Prefix + "/clusters"
	}
	return next
}

func randomToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b)
}
