package kubeapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	rbacv1 "k8s.io/api/rbac/v1"

	"github.com/pipeops/tunnel/shared/auth"
	"github.com/pipeops/tunnel/shared/keyset"
	"github.com/pipeops/tunnel/shared/ratelog"
	"github.com/pipeops/tunnel/shared/tunnel"
)

// Identity decides as whom each Kubernetes API request runs. Switched off,
// every request runs as the agent's ServiceAccount. Switched on, a request
// runs as the person whose token the gateway forwarded in
// tunnel.IdentityHeader, and only once the agent has verified that token
// itself: signed by the control plane (Keys, read from its JWKS), not
// expired, a user token bound to this cluster alone, naming a person. The
// agent then sets Impersonate-User and Impersonate-Group on the request it
// sends with its own credentials. So a gateway cannot make the agent act
// as anyone whose token it does not hold, and a token that reaches the
// agent is good for no other cluster than this one.
//
// Whatever the mode, the identity header and any Impersonate-* header that
// came with a request are removed before the request goes on.
//
// Create it with NewIdentity. Safe for concurrent use.
type Identity struct {
	enabled bool
	cluster string
	keys    *keyset.JWKS
	v       *auth.Verifier
	logs    *ratelog.Limiter
	refused *prometheus.CounterVec
	allowed prometheus.Counter
	fetches *prometheus.CounterVec
}

// IdentityConfig configures an Identity.
type IdentityConfig struct {
	// Impersonate switches impersonation on. JWKSURL and Cluster are then
	// required.
	Impersonate bool
	// JWKSURL is where the control plane publishes its public token keys
	// (its /.well-known/jwks.json).
	JWKSURL string
	// Client fetches the keys (default: keyset.JWKS's).
	Client *http.Client
	// Cluster is this cluster's id, the one its user tokens name.
	Cluster string
	Logger  *slog.Logger
	// Metrics, when set, is where the collectors are registered.
	Metrics prometheus.Registerer
}

// Refusal reasons, the label values of the refused-requests counter.
const (
	refusedNoIdentity   = "no_identity"
	refusedInvalid      = "invalid_token"
	refusedOtherCluster = "other_cluster"
	refusedNoPerson     = "no_person"
)

// NewIdentity returns the identity policy cfg describes.
func NewIdentity(cfg IdentityConfig) (*Identity, error) {
	if cfg.Impersonate && (cfg.JWKSURL == "" || cfg.Cluster == "") {
		return nil, errors.New("kubeapi: impersonation needs the control plane's JWKS URL and the cluster id")
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	id := &Identity{
		enabled: cfg.Impersonate,
		cluster: cfg.Cluster,
		logs:    ratelog.New(logger, ratelog.Config{}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "pipeops_agent", Subsystem: "impersonation",
			Name: "refused_total", Help: "Kubernetes API requests refused because the identity they came with could not be verified, by reason " +
				"(no_identity, invalid_token, other_cluster, no_person)."}, []string{"reason"}),
		allowed: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "pipeops_agent", Subsystem: "impersonation",
			Name: "requests_total", Help: "Kubernetes API requests sent on as the person who made them."}),
		fetches: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "pipeops_agent", Subsystem: "impersonation",
			Name: "jwks_fetches_total", Help: "Fetches of the control plane's token keys, by result (ok, error)."}, []string{"result"}),
	}
	id.keys = &keyset.JWKS{URL: cfg.JWKSURL, Client: cfg.Client, Logger: logger, Metrics: id}
	id.v = &auth.Verifier{Keys: id.keys}
	for _, r := range []string{refusedNoIdentity, refusedInvalid, refusedOtherCluster, refusedNoPerson} {
		id.refused.WithLabelValues(r)
	}
	if cfg.Metrics != nil {
		cfg.Metrics.MustRegister(id.refused, id.allowed, id.fetches)
	}
	return id, nil
}

// Refresh fetches the control plane's keys now, so that a control plane
// that publishes none (hosted PipeOps, say) is noticed at start-up rather
// than at the first request. Keys are fetched again as they are needed.
func (id *Identity) Refresh(ctx context.Context) error {
	if !id.Enabled() {
		return nil
	}
	return id.keys.Refresh(ctx)
}

// JWKSFetched counts a good fetch of the keys (keyset.Observer).
func (id *Identity) JWKSFetched(time.Time) { id.fetches.WithLabelValues("ok").Inc() }

// JWKSFetchFailed counts a failed fetch of the keys (keyset.Observer).
func (id *Identity) JWKSFetchFailed() { id.fetches.WithLabelValues("error").Inc() }

// Enabled reports whether requests run as the person who makes them.
func (id *Identity) Enabled() bool { return id != nil && id.enabled }

// RefusedError is a request the agent will not send: Code and Message are
// what the caller is answered, as a Kubernetes Status.
type RefusedError struct {
	Code    int
	Message string
}

func (e *RefusedError) Error() string { return e.Message }

// Apply prepares the headers of one request: it removes the identity and
// impersonation headers that came with it and, when impersonation is on,
// verifies the forwarded token and sets the impersonation headers of the
// person it names. A *RefusedError means the request must not be sent.
// A nil Identity acts as the agent.
func (id *Identity) Apply(ctx context.Context, h http.Header) error {
	raw := h.Get(tunnel.IdentityHeader)
	h.Del(tunnel.IdentityHeader)
	for name := range h {
		if strings.HasPrefix(strings.ToLower(name), "impersonate-") {
			delete(h, name)
		}
	}
	if !id.Enabled() {
		return nil
	}
	if raw == "" {
		return id.refuse(ctx, refusedNoIdentity, http.StatusForbidden, "this cluster runs each Kubernetes API request as the person who makes it, "+
			"and this request came without a token naming one: reach it with a user token bound to this cluster alone "+
			"(pipeops-controlplane kubeconfig CLUSTER --user NAME); admin tokens and tokens for several clusters are not accepted here", nil)
	}
	claims, err := id.v.Verify(ctx, raw, auth.KindUser)
	if err != nil {
		return id.refuse(ctx, refusedInvalid, http.StatusUnauthorized, "the agent could not verify the token this request came with", err)
	}
	if len(claims.Clusters) != 1 || claims.Clusters[0] != id.cluster {
		return id.refuse(ctx, refusedOtherCluster, http.StatusForbidden,
			"this cluster accepts only user tokens bound to it alone (pipeops-controlplane kubeconfig CLUSTER --user NAME)",
			fmt.Errorf("token %s is for clusters %q", claims.ID, claims.Clusters))
	}
	user, groups := claims.Identity()
	if user == "" {
		return id.refuse(ctx, refusedNoPerson, http.StatusForbidden, "the token names no person to act for",
			fmt.Errorf("token %s has no valid subject", claims.ID))
	}
	h.Set("Impersonate-User", user)
	for _, g := range groups {
		h.Add("Impersonate-Group", g)
	}
	id.allowed.Inc()
	return nil
}

func (id *Identity) refuse(ctx context.Context, reason string, code int, msg string, cause error) error {
	id.refused.WithLabelValues(reason).Inc()
	args := []any{"reason", reason}
	if cause != nil {
		args = append(args, "err", cause)
	}
	id.logs.Log(ctx, slog.LevelWarn, "identity_refused\x00"+reason, "Kubernetes API request refused: its identity could not be verified", args...)
	return &RefusedError{Code: code, Message: msg}
}

// RoundTripper returns tr with Apply run on every request first; a refused
// request is answered with its Status, not sent.
func (id *Identity) RoundTripper(tr http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(r *http.Request) (*http.Response, error) {
		r = r.Clone(r.Context())
		if err := id.Apply(r.Context(), r.Header); err != nil {
			var refused *RefusedError
			if errors.As(err, &refused) {
				if r.Body != nil {
					_ = r.Body.Close()
				}
				return refused.Response(r), nil
			}
			return nil, err
		}
		return tr.RoundTrip(r)
	})
}

// Response is the refusal as an HTTP response to r: a Kubernetes Status,
// so that kubectl prints the message.
func (e *RefusedError) Response(r *http.Request) *http.Response {
	body, _ := json.Marshal(map[string]any{
		"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": e.Message,
		"reason": strings.ReplaceAll(http.StatusText(e.Code), " ", ""), "code": e.Code,
	})
	return &http.Response{StatusCode: e.Code, Status: fmt.Sprintf("%d %s", e.Code, http.StatusText(e.Code)),
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{"Content-Type": {"application/json"}}, Body: io.NopCloser(bytes.NewReader(body)),
		ContentLength: int64(len(body)), Request: r}
}

// Rules is the RBAC impersonation needs: to act as the users and groups
// that verified tokens name. The agent impersonates no one else (names
// under "system:" are never in a token), and without impersonation it
// needs no such grant.
func Rules() []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"users", "groups"}, Verbs: []string{"impersonate"}},
	}
}
