package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"strings"

	"github.com/pipeops/tunnel/gateway/session"
	"github.com/pipeops/tunnel/shared/auth"
	"github.com/pipeops/tunnel/shared/tunnel"
)

// K8sPrefix is the path under which each cluster's Kubernetes API is served:
// /k8s/{cluster}/api/v1/namespaces reaches /api/v1/namespaces of that
// cluster's API server.
const K8sPrefix = "/k8s/"

// K8s serves the Kubernetes API of every cluster through its tunnel to
// callers holding a user (or admin) token that allows the cluster. The
// caller's credentials never reach the cluster: the agent sends the request
// with its own. Safe for concurrent use.
type K8s struct {
	verifier *auth.Verifier
	tunnels  *session.Registry
	log      *slog.Logger
	rp       *httputil.ReverseProxy
	tr       *http.Transport
}

type k8sCluster struct{}

// NewK8s returns the Kubernetes API handler.
func NewK8s(verifier *auth.Verifier, tunnels *session.Registry, logger *slog.Logger) *K8s {
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	k := &K8s{verifier: verifier, tunnels: tunnels, log: logger}
	// No response header timeout: watches and `logs -f` answer late and
	// stream for as long as they like.
	k.tr = tunnels.Transport(64)
	k.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			cluster := pr.In.Context().Value(k8sCluster{}).(string)
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host, _ = session.TargetHost(cluster, tunnel.KubernetesAPI)
			pr.Out.Host = ""
			pr.SetXForwarded()
		},
		Transport:     k.tr,
		BufferPool:    copyBuffers,
		FlushInterval: -1, // watch events go out as they come
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if r.Context().Err() != nil {
				return
			}
			status := http.StatusBadGateway
			if errors.Is(err, session.ErrAgentOffline) {
				status = http.StatusServiceUnavailable
			}
			k.log.Info("kubernetes API proxy error", "path", r.URL.Path, "status", status, "err", err)
			writeStatus(w, status, "the cluster's Kubernetes API could not be reached through its agent")
		},
		ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
	}
	return k
}

// Close closes idle streams.
func (k *K8s) Close() { k.tr.CloseIdleConnections() }

// ServeHTTP serves K8sPrefix.
func (k *K8s) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rest, ok := strings.CutPrefix(r.URL.Path, K8sPrefix)
	cluster, apiPath, _ := strings.Cut(rest, "/")
	if !ok || cluster == "" {
		writeStatus(w, http.StatusNotFound, "use "+K8sPrefix+"{cluster}/...")
		return
	}
	scheme, raw, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		w.Header().Set("WWW-Authenticate", `Bearer realm="pipeops"`)
		writeStatus(w, http.StatusUnauthorized, "a Bearer token is required")
		return
	}
	claims, err := k.verifier.Verify(r.Context(), strings.TrimSpace(raw), auth.KindUser, auth.KindAdmin)
	if err != nil {
		k.log.Info("kubernetes API: token refused", "cluster", cluster, "err", err)
		w.Header().Set("WWW-Authenticate", `Bearer realm="pipeops"`)
		writeStatus(w, http.StatusUnauthorized, "invalid token")
		return
	}
	if !claims.AllowsCluster(cluster) {
		writeStatus(w, http.StatusForbidden, "this token does not allow cluster "+cluster)
		return
	}
	out := r.Clone(r.Context())
	// The caller's identity stops here: the agent acts with its own
	// ServiceAccount, and impersonation headers would let a caller borrow
	// any identity that account may impersonate.
	out.Header.Del("Authorization")
	for h := range out.Header {
		if strings.HasPrefix(strings.ToLower(h), "impersonate-") {
			out.Header.Del(h)
		}
	}
	out.URL.Path = "/" + apiPath
	out.URL.RawPath = ""
	k.rp.ServeHTTP(w, out.WithContext(context.WithValue(out.Context(), k8sCluster{}, cluster)))
}

func writeStatus(w http.ResponseWriter, code int, message string) {
	// The shape of a Kubernetes Status, so kubectl shows the message.
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]any{
		"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
		"reason": strings.ReplaceAll(http.StatusText(code), " ", ""), "code": code,
	})
}
