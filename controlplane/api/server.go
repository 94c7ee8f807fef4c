// Package api is the control plane's HTTP API: agent registration over
// WebSocket, the PipeOps routes API, the admin API, health, metrics and the
// JWKS the gateway verifies tokens with.
package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/controlplane/hostnames"
	"github.com/pipeops/tunnel/controlplane/tokens"
	"github.com/pipeops/tunnel/shared/auth"
	"github.com/pipeops/tunnel/shared/ratelog"
	"github.com/pipeops/tunnel/shared/revocation"
)

// MaxBodySize bounds every JSON request body. A route sync of a large
// cluster (thousands of Ingresses) fits; anything bigger is refused (413).
const MaxBodySize = 4 << 20

// Pinger reports whether the database answers.
type Pinger interface {
	Ping(ctx context.Context) error
}

// Config is what the API needs to know about the deployment.
type Config struct {
	// GatewayWSURL is handed to agents in register_success (gateway_ws_url).
	GatewayWSURL string
	// GatewayURL is the gateway's public HTTPS base URL; kubeconfigs point at
	// GatewayURL/k8s/{cluster}.
	GatewayURL string
	// GatewayCA is the PEM certificate authority that kubeconfigs trust for
	// GatewayURL; empty means the system roots.
	GatewayCA []byte
	// K8sAPIDomain, when set, is the gateway's K8S_API_DOMAIN: kubeconfigs
	// then reach each cluster by TLS server name (see Kubeconfig).
	K8sAPIDomain string
	// APIURL is this control plane's public URL, for install commands.
	APIURL string
	// RevocationCheckInterval is how often the tokens of open registration
	// sockets are checked for revocation (default
	// revocation.DefaultInterval); see Run.
	RevocationCheckInterval time.Duration
}

// Server serves the API. Build it with New; all fields are required.
type Server struct {
	cfg Config
	// tunnelURL is the gateway's public origin, derived from
	// cfg.GatewayWSURL, that register_success carries as tunnel_url.
	tunnelURL string
	clusters  controlplane.ClusterStore
	routes    controlplane.RouteStore
	tokens    controlplane.TokenStore
	hostnames controlplane.HostnameStore
	dns       *hostnames.DNSVerifier
	issuer    *tokens.Issuer
	verifier  *auth.Verifier
	db        Pinger
	log       *slog.Logger
	// logs takes the lines anyone can trigger at will (bad tokens,
	// malformed agent messages): one per key and interval, with a count.
	logs    *ratelog.Limiter
	metrics *metrics

	closing   chan struct{} // closed by Close: ends agent sockets
	closeOnce sync.Once
	sockets   sync.WaitGroup

	// conns re-checks the tokens of the open registration sockets.
	conns *revocation.Tracker

	audit   AuditReader
	console http.Handler
	traffic controlplane.TrafficStore
}

// Deps are the services the Server uses.
type Deps struct {
	Clusters controlplane.ClusterStore
	Routes   controlplane.RouteStore
	Tokens   controlplane.TokenStore
	// Hostnames keeps hostname ownership; DNS checks custom domains' TXT
	// records when an agent or operator asks for a check now.
	Hostnames controlplane.HostnameStore
	DNS       *hostnames.DNSVerifier
	Issuer    *tokens.Issuer
	DB        Pinger
	Logger    *slog.Logger
	// Registry is where the API registers its metrics and which /metrics
	// serves; nil makes a private one.
	Registry *prometheus.Registry
	// Audit, when set, serves the Kubernetes API audit at
	// /api/v1/admin/audit.
	Audit AuditReader
	// Console, when set, is the web console (controlplane/console), served
	// at /console/; / then leads there.
	Console http.Handler
	// Traffic, when set, serves the public traffic figures the gateways
	// record, at /api/v1/admin/clusters/{cluster}/traffic (503 without it).
	Traffic controlplane.TrafficStore
}

// AuditReader reads the Kubernetes API audit (controlplane/postgres.DB).
type AuditReader interface {
	AuditEntries(ctx context.Context, f controlplane.AuditFilter) ([]controlplane.AuditEntry, error)
}

// New returns a Server.
func New(cfg Config, d Deps) (*Server, error) {
	if d.Clusters == nil || d.Routes == nil || d.Tokens == nil || d.Hostnames == nil || d.DNS == nil || d.Issuer == nil || d.DB == nil {
		return nil, errors.New("api: Clusters, Routes, Tokens, Hostnames, DNS, Issuer and DB are required")
	}
	if cfg.GatewayWSURL == "" {
		return nil, errors.New("api: Config.GatewayWSURL is required (agents are told to connect there)")
	}
	tunnelURL, err := gatewayOrigin(cfg.GatewayWSURL)
	if err != nil {
		return nil, fmt.Errorf("api: Config.GatewayWSURL: %w", err)
	}
	log := d.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	reg := d.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m := newMetrics(reg)
	verifier := d.Issuer.Verifier()
	verifier.OnRefuse = m.tokenRefused
	conns, err := revocation.New(revocation.Config{Checker: revocation.CheckerFunc(d.Tokens.Revoked),
		Interval: cfg.RevocationCheckInterval, Logger: log, Metrics: reg, MetricsNamespace: "pipeops_controlplane",
		Kinds: []string{registrationSocketKind}})
	if err != nil {
		return nil, err
	}
	return &Server{
		cfg: cfg, clusters: d.Clusters, routes: d.Routes, tokens: d.Tokens, hostnames: d.Hostnames, dns: d.DNS, issuer: d.Issuer,
		verifier: verifier, db: d.DB, log: log, logs: ratelog.New(log, ratelog.Config{MaxKeys: 4096}), metrics: m,
		closing: make(chan struct{}), conns: conns, tunnelURL: tunnelURL, audit: d.Audit, console: d.Console,
		traffic: d.Traffic,
	}, nil
}

// Run re-checks, until ctx ends, the tokens of the open agent registration
// sockets: a socket whose token is revoked is closed within
// Config.RevocationCheckInterval, one whose token expires is closed then.
// Without Run, a socket's token is checked only when it opens. The caller
// starts Run beside serving the Handler and waits for it.
func (s *Server) Run(ctx context.Context) { s.conns.Run(ctx) }

// Close ends the agent registration sockets (which http.Server.Shutdown
// does not track, being hijacked) and waits for their handlers.
func (s *Server) Close() {
	s.closeOnce.Do(func() { close(s.closing) })
	s.sockets.Wait()
	s.logs.Flush() // the counts of the last interval
}

// AdminHandler serves /healthz, /readyz and /metrics, for a listener of its
// own that is not public: the metrics name clusters and routes.
func (s *Server) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.registry, promhttp.HandlerOpts{}))
	return mux
}

// Handler returns the API's routes.
func (s *Server) Handler() http.Handler {
	r := chi.NewRouter()
	r.Use(middleware.Recoverer)
	r.Use(s.metrics.instrument)

	r.Get("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	r.Get("/readyz", s.readyz)
	r.Get("/.well-known/jwks.json", s.jwks)
	if s.console != nil {
		r.Mount("/console", s.console)
		r.Get("/", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/console/", http.StatusSeeOther) })
	}

	r.Route("/api/v1", func(r chi.Router) {
		r.With(s.requireToken(auth.KindAgent)).Get("/clusters/agent/ws", s.agentWS)
		r.Route("/gateway/routes", func(r chi.Router) {
			r.Use(s.requireToken(auth.KindAgent))
			r.Post("/register", s.registerRoute)
			r.Post("/sync", s.syncRoutes)
			r.Post("/unregister", s.unregisterRoute)
			r.Post("/verify", s.verifyHostname)
		})
		r.Route("/admin", func(r chi.Router) {
			r.Use(s.requireToken(auth.KindAdmin))
			r.Post("/clusters", s.createCluster)
			r.Get("/clusters", s.listClusters)
			r.Get("/clusters/{cluster}", s.getCluster)
			r.Delete("/clusters/{cluster}", s.deleteCluster)
			// It mints a token on a GET: Bearer only, never the console's
			// cookie, which another page of the same site could make a
			// browser send.
			r.With(bearerOnly).Get("/clusters/{cluster}/kubeconfig", s.kubeconfig)
			r.Get("/clusters/{cluster}/traffic", s.clusterTraffic)
			r.Get("/routes", s.listRoutes)
			r.Post("/tokens", s.createToken)
			r.Get("/tokens", s.listTokens)
			r.Post("/tokens/{id}/revoke", s.revokeToken)
			r.Get("/hostnames", s.listHostnames)
			r.Post("/hostnames/verify", s.verifyHostname)
			r.Get("/domains", s.listGrants)
			r.Post("/domains", s.grantDomain)
			r.Delete("/domains/{domain}", s.revokeGrant)
			r.Get("/audit", s.listAudit)
		})
	})
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, r, controlplane.Errorf(controlplane.ENOTFOUND, "no such endpoint: %s %s", r.Method, r.URL.Path), nil)
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, r, &controlplane.Error{Code: "method_not_allowed", Message: r.Method + " is not allowed on " + r.URL.Path}, nil)
	})
	return r
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := s.db.Ping(ctx); err != nil {
		s.log.Warn("readyz: database unreachable", "err", err)
		writeError(w, r, controlplane.Errorf(controlplane.EUNAVAILABLE, "database unreachable"), nil)
		return
	}
	w.Write([]byte("ok\n"))
}

func (s *Server) jwks(w http.ResponseWriter, r *http.Request) {
	b, err := s.issuer.JWKS(r.Context())
	if err != nil {
		writeError(w, r, err, s.log)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "public, max-age=300")
	w.Write(b)
}

// claimsKey is the context key of the verified token's claims.
type claimsKey struct{}

func claimsFrom(ctx context.Context) *auth.Claims {
	c, _ := ctx.Value(claimsKey{}).(*auth.Claims)
	return c
}

// requireToken admits requests with a valid Bearer token of one of kinds.
// Every failure is 401 with the same message: which check failed is logged,
// not told.
func (s *Server) requireToken(kinds ...auth.Kind) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			scheme, raw, ok := strings.Cut(r.Header.Get("Authorization"), " ")
			if r.Header.Get("Authorization") == "" && slices.Contains(kinds, auth.KindAdmin) {
				// A console session: only for the admin API, and only
				// with proof that the console itself sent the request.
				if session := SessionFrom(r); session != "" {
					if err := CheckSameOrigin(r, session, r.Header.Get(CSRFHeader)); err != nil {
						writeError(w, r, err, nil)
						return
					}
					scheme, raw, ok = "Bearer", session, true
				}
			}
			if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(raw) == "" {
				writeError(w, r, controlplane.Errorf(controlplane.EUNAUTHORIZED, "missing Bearer token"), nil)
				return
			}
			claims, err := s.verifier.Verify(r.Context(), strings.TrimSpace(raw), kinds...)
			if err != nil {
				if !errors.Is(err, auth.ErrInvalidToken) && !errors.Is(err, auth.ErrRevoked) && !errors.Is(err, auth.ErrWrongKind) && !errors.Is(err, auth.ErrNotAsRecorded) {
					// The revocation check itself failed: not the caller's fault.
					writeError(w, r, fmt.Errorf("verify token: %w", err), s.log)
					return
				}
				s.logs.Log(r.Context(), slog.LevelInfo, "token_refused", "token refused", "path", r.URL.Path, "remote", r.RemoteAddr, "err", err)
				writeError(w, r, controlplane.Errorf(controlplane.EUNAUTHORIZED, "invalid token"), nil)
				return
			}
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), claimsKey{}, claims)))
		})
	}
}

// StatusOf maps error codes to HTTP statuses: the one place that does.
func StatusOf(code string) int {
	switch code {
	case controlplane.EINVALID:
		return http.StatusBadRequest
	case controlplane.EUNAUTHORIZED:
		return http.StatusUnauthorized
	case controlplane.EFORBIDDEN:
		return http.StatusForbidden
	case controlplane.ENOTFOUND:
		return http.StatusNotFound
	case controlplane.ECONFLICT:
		return http.StatusConflict
	case controlplane.ETOOLARGE:
		return http.StatusRequestEntityTooLarge
	case controlplane.EUNAVAILABLE:
		return http.StatusServiceUnavailable
	case "method_not_allowed":
		return http.StatusMethodNotAllowed
	default:
		return http.StatusInternalServerError
	}
}

type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// writeError answers with the one error shape. Internal errors are logged
// (when log is given) and their details withheld from the caller.
func writeError(w http.ResponseWriter, r *http.Request, err error, log *slog.Logger) {
	code := controlplane.ErrorCode(err)
	if code == controlplane.EINTERNAL && log != nil {
		log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	var body errorBody
	body.Error.Code = code
	body.Error.Message = controlplane.ErrorMessage(err)
	if code == controlplane.EUNAUTHORIZED {
		w.Header().Set("WWW-Authenticate", `Bearer realm="pipeops"`)
	}
	writeJSON(w, StatusOf(code), body)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// decode reads a JSON body into v: bounded, unknown fields refused, one
// value only.
func decode(w http.ResponseWriter, r *http.Request, v any) error {
	return decodeLimit(w, r, v, MaxBodySize)
}

// decodeLimit is decode with the bound as a parameter, so that the fuzz
// test can cross it with small inputs.
func decodeLimit(w http.ResponseWriter, r *http.Request, v any, limit int64) error {
	body := http.MaxBytesReader(w, r.Body, limit)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		var syntax *json.SyntaxError
		var typeErr *json.UnmarshalTypeError
		switch {
		case errors.As(err, &tooBig):
			return controlplane.Errorf(controlplane.ETOOLARGE, "request body over %d bytes", limit)
		case errors.Is(err, io.EOF):
			return controlplane.Errorf(controlplane.EINVALID, "request body is empty; expected JSON")
		case errors.As(err, &syntax):
			return controlplane.Errorf(controlplane.EINVALID, "malformed JSON at byte %d", syntax.Offset)
		case errors.As(err, &typeErr):
			return controlplane.Errorf(controlplane.EINVALID, "field %q: expected %s", typeErr.Field, typeErr.Type)
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			return controlplane.Errorf(controlplane.EINVALID, "unknown field %s", strings.TrimPrefix(err.Error(), "json: unknown field "))
		default:
			return controlplane.Errorf(controlplane.EINVALID, "bad JSON: %v", err)
		}
	}
	// Only white space may follow the value, up to the end of the body.
	// (dec.More would take a stray ']' or '}' for the end.)
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return controlplane.Errorf(controlplane.ETOOLARGE, "request body over %d bytes", limit)
		}
		return controlplane.Errorf(controlplane.EINVALID, "request body holds more than one JSON value")
	}
	return nil
}
