package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/gateway/audit"
	"github.com/pipeops/tunnel/gateway/session"
	"github.com/pipeops/tunnel/shared/auth"
	"github.com/pipeops/tunnel/shared/revocation"
	"github.com/pipeops/tunnel/shared/tunnel"
)

// K8sPrefix is the path under which each cluster's Kubernetes API is served:
// /k8s/{cluster}/api/v1/namespaces reaches /api/v1/namespaces of that
// cluster's API server.
const K8sPrefix = "/k8s/"

// K8sConnKind is the kind under which /k8s requests are registered with the
// revocation.Tracker (a metric label).
const K8sConnKind = "k8s"

// K8s serves the Kubernetes API of every cluster through its tunnel to
// callers holding a user (or admin) token that allows the cluster. The
// caller's credentials never reach the cluster: the agent sends the request
// with its own. Safe for concurrent use.
type K8s struct {
	verifier *auth.Verifier
	tunnels  *session.Registry
	maxBody  int64
	log      *slog.Logger
	rp       *httputil.ReverseProxy
	tr       *http.Transport
	refused  *prometheus.CounterVec
	conns    *revocation.Tracker
	clusters *clusterCache
	audit    Auditor
}

// Auditor records Kubernetes API requests (an *audit.Recorder).
type Auditor interface {
	Record(controlplane.AuditEntry)
}

type k8sCluster struct{}

// K8sConfig configures the Kubernetes API handler. Verifier and Tunnels are
// required.
type K8sConfig struct {
	Verifier *auth.Verifier
	Tunnels  *session.Registry
	// MaxRequestBody is the request body limit in bytes (0: none), the
	// gateway's global one: a declared Content-Length over it is answered
	// 413 before a stream is opened, a body of unknown length is cut at it.
	// The API server's own limits (about 3 MiB per object) are lower; this
	// one keeps larger bodies off the gateway and the tunnel.
	MaxRequestBody int64
	Logger         *slog.Logger
	// Metrics, when set, is where the handler registers its collectors.
	Metrics prometheus.Registerer
	// Connections, when set, tracks every request from the moment its token
	// is accepted until it ends, so that a watch, `logs -f` or an exec or
	// port-forward stream is cut when its token is revoked or expires (its
	// context is cancelled, which also closes an upgraded connection). Nil:
	// the token is checked only when the request arrives.
	Connections *revocation.Tracker
	// Audit, when set, is told of every request that got past the token
	// check, once it has ended: who, which cluster, verb, path, status,
	// bytes and duration (never bodies or tokens). It must not block.
	Audit Auditor
	// Clusters, when set, lets callers name a cluster by its name as well
	// as by its id, and gives an offline cluster's name and when its agent
	// was last seen. Nil: clusters are named by id only.
	Clusters ClusterDirectory
}

// NewK8s returns the Kubernetes API handler.
func NewK8s(cfg K8sConfig) *K8s {
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	k := &K8s{verifier: cfg.Verifier, tunnels: cfg.Tunnels, maxBody: cfg.MaxRequestBody, log: logger, conns: cfg.Connections,
		clusters: newClusterCache(cfg.Clusters), audit: cfg.Audit,
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "pipeops_gateway", Subsystem: "k8s",
			Name: "requests_refused_total", Help: "Kubernetes API requests the gateway refused or cut, by reason (body_too_large)."}, []string{"reason"})}
	k.refused.WithLabelValues(reasonBodyTooLarge)
	if cfg.Metrics != nil {
		cfg.Metrics.MustRegister(k.refused)
	}
	// No response header timeout: watches and `logs -f` answer late and
	// stream for as long as they like.
	k.tr = cfg.Tunnels.Transport(64)
	// A cut request (see K8sConfig.Connections) has its context cancelled,
	// on which the Transport closes the request's stream. A stream's Close
	// is a half-close, though: a read already waiting would go on until the
	// agent closes its side too. Ending reads on Close stops the relay of a
	// cut watch or exec stream at once, whatever the agent still sends.
	dial := k.tr.DialContext
	k.tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return closeEndsReads{c}, nil
	}
	k.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			cluster := pr.In.Context().Value(k8sCluster{}).(string)
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host, _ = session.TargetHost(cluster, tunnel.KubernetesAPI)
			pr.Out.Host = ""
			pr.SetXForwarded()
		},
		Transport:     k8sTransport{streams: k.tr, tunnels: cfg.Tunnels},
		BufferPool:    copyBuffers,
		FlushInterval: -1, // watch events go out as they come
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if cause := context.Cause(r.Context()); errors.Is(cause, revocation.ErrRevoked) || errors.Is(cause, revocation.ErrExpired) {
				// Cut before the answer began (the tracker has logged it).
				w.Header().Set("WWW-Authenticate", `Bearer realm="pipeops"`)
				writeStatus(w, http.StatusUnauthorized, cause.Error())
				return
			}
			if r.Context().Err() != nil {
				return
			}
			if limit, ok := bodyTooLarge(r, err); ok {
				writeStatus(w, http.StatusRequestEntityTooLarge, bodyTooLargeMessage(limit))
				return
			}
			status := http.StatusBadGateway
			if errors.Is(err, session.ErrAgentOffline) || errors.Is(err, session.ErrTooManyStreams) {
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

// ServeHTTP serves K8sPrefix: /k8s/{cluster}/{path}, where the cluster is
// named by its name or its id.
func (k *K8s) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ref, apiPath, ok := splitK8sPath(r.URL.Path)
	if !ok {
		writeStatus(w, http.StatusNotFound, "use "+K8sPrefix+"{cluster}/...")
		return
	}
	k.ServeCluster(w, r, ref, apiPath)
}

// ServeCluster serves one request to the Kubernetes API of the cluster ref
// names (its name or its id), for apiPath on that API server: the whole
// path when the cluster has a host name of its own (see
// Config.K8sAPIDomain), what follows K8sPrefix{cluster} otherwise.
func (k *K8s) ServeCluster(w http.ResponseWriter, r *http.Request, ref, apiPath string) {
	scheme, raw, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		w.Header().Set("WWW-Authenticate", `Bearer realm="pipeops"`)
		writeStatus(w, http.StatusUnauthorized, "a Bearer token is required")
		return
	}
	raw = strings.TrimSpace(raw)
	claims, err := k.verifier.Verify(r.Context(), raw, auth.KindUser, auth.KindAdmin)
	if err != nil {
		k.log.Info("kubernetes API: token refused", "cluster", ref, "err", err)
		w.Header().Set("WWW-Authenticate", `Bearer realm="pipeops"`)
		writeStatus(w, http.StatusUnauthorized, "invalid token")
		return
	}
	if k.audit != nil {
		aw := &auditWriter{ResponseWriter: w}
		w = aw
		in := &countingBody{ReadCloser: r.Body}
		if r.Body != nil && r.Body != http.NoBody {
			r.Body = in
		}
		entry := controlplane.AuditEntry{Time: time.Now(), ClusterUUID: ref, TokenID: claims.ID, Method: r.Method, Path: apiPath,
			Verb: audit.Verb(r.Method, apiPath, r.URL.Query())}
		entry.User, entry.Groups = claims.Identity()
		defer func() {
			entry.Status, entry.BytesIn, entry.BytesOut = aw.status(), in.n.Load(), aw.n
			if entry.Status == 0 && r.Header.Get("Upgrade") != "" {
				entry.Status = http.StatusSwitchingProtocols // answered on the hijacked connection
			}
			entry.Duration = time.Since(entry.Time)
			if c := aw.cluster; c != nil {
				entry.ClusterUUID, entry.ClusterName = c.UUID, c.Name
			}
			k.audit.Record(entry)
		}()
	}
	c, err := k.clusters.find(r.Context(), ref)
	if aw, ok := w.(*auditWriter); ok && err == nil {
		aw.cluster = c
	}
	switch {
	case errors.Is(err, errNoCluster):
		// Whether a cluster exists is told only to whoever may see all.
		if claims.Kind == auth.KindAdmin {
			writeStatus(w, http.StatusNotFound, fmt.Sprintf("there is no cluster named %q or with that id", ref))
		} else {
			writeStatus(w, http.StatusForbidden, "this token does not allow cluster "+ref)
		}
		return
	case err != nil:
		if _, online := k.tunnels.Reach(ref); online {
			// The store is down, but ref is a connected cluster's id:
			// serve it, nameless.
			c = &clusterRef{UUID: ref}
			break
		}
		k.log.Warn("kubernetes API: cluster lookup failed", "cluster", ref, "err", err)
		writeStatus(w, http.StatusServiceUnavailable, "the gateway cannot look up cluster "+ref+" right now; try again")
		return
	}
	if !claims.AllowsCluster(c.UUID) {
		writeStatus(w, http.StatusForbidden, "this token does not allow cluster "+ref)
		return
	}
	// A caller's own impersonation (kubectl --as, --as-group) is not
	// honoured: the agent decides as whom a request runs (the person the
	// token names, or itself). Passing the headers on would let a caller
	// borrow any identity the agent may impersonate, and dropping them
	// silently would run the request as someone else than asked, so it is
	// refused, saying why.
	if h := impersonationHeader(r.Header); h != "" {
		writeStatus(w, http.StatusForbidden, "impersonation ("+h+", kubectl --as/--as-group) is not supported through the gateway: "+
			"each request runs as the person your token names (or as the cluster's agent, on clusters that do not impersonate); run the command without --as")
		return
	}
	reach, online := k.tunnels.Reach(c.UUID)
	if !online {
		writeStatus(w, http.StatusServiceUnavailable, offlineMessage(c, time.Now()))
		return
	}
	impersonates := reach.Impersonates
	if impersonates && !boundTo(claims, c.UUID) {
		writeStatus(w, http.StatusForbidden, fmt.Sprintf("cluster %s runs each request as the person who makes it, and accepts only a user token bound to it alone: "+
			"get one with `pipeops-controlplane kubeconfig %s --user NAME` (admin tokens and tokens for several clusters are never sent to a cluster)", c.display(), c.display()))
		return
	}
	// A watch or an exec session outlives the token check above: the
	// request is cut if the token is revoked or expires while it runs.
	ctx, cut := context.WithCancelCause(r.Context())
	defer cut(nil)
	conn := revocation.Conn{Kind: K8sConnKind, TokenID: claims.ID, Cluster: c.UUID, Cut: cut}
	if claims.ExpiresAt != nil {
		conn.Expires = claims.ExpiresAt.Time
	}
	defer k.conns.Register(conn)()
	out := r.Clone(ctx)
	// The caller's credentials stop here: the agent acts with its own
	// ServiceAccount. Only an agent that impersonates gets the token, to
	// verify it for itself; an identity header from outside never passes.
	out.Header.Del("Authorization")
	out.Header.Del(tunnel.IdentityHeader)
	if impersonates {
		out.Header.Set(tunnel.IdentityHeader, raw)
	}
	out.URL.Path = apiPath
	out.URL.RawPath = ""
	body, fits := limitBody(out, k.maxBody)
	if fits {
		k.rp.ServeHTTP(w, out.WithContext(session.TracePool(context.WithValue(out.Context(), k8sCluster{}, c.UUID))))
	} else {
		writeStatus(w, http.StatusRequestEntityTooLarge, bodyTooLargeMessage(k.maxBody))
	}
	if !fits || body.exceeded() {
		k.refused.WithLabelValues(reasonBodyTooLarge).Inc()
	}
}

// auditWriter counts what is written to the caller, for the audit entry.
// http.ResponseController reaches Flush and Hijack through Unwrap.
type auditWriter struct {
	http.ResponseWriter
	code    int
	n       int64
	cluster *clusterRef
}

func (w *auditWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *auditWriter) Write(p []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

func (w *auditWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// status is the status answered, 0 if none was written through w (an
// upgrade answers on the hijacked connection).
func (w *auditWriter) status() int { return w.code }

// countingBody counts the request body bytes read. The Transport reads it
// on a goroutine of its own, hence the atomic.
type countingBody struct {
	io.ReadCloser
	n atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// boundTo reports whether claims are those of a user token for cluster
// alone: the only tokens the gateway hands to a cluster's agent, since
// whoever runs that cluster could replay any token it is given.
func boundTo(claims *auth.Claims, cluster string) bool {
	return claims.Kind == auth.KindUser && len(claims.Clusters) == 1 && claims.Clusters[0] == cluster
}

// offlineMessage says that c's agent is not connected, and since when.
func offlineMessage(c *clusterRef, now time.Time) string {
	if c.LastSeen.IsZero() {
		return fmt.Sprintf("cluster %s is offline: its agent has never connected to this gateway's control plane", c.display())
	}
	return fmt.Sprintf("cluster %s is offline: its agent was last seen %s (%s ago)", c.display(),
		c.LastSeen.UTC().Format(time.RFC3339), now.Sub(c.LastSeen).Round(time.Second))
}

// k8sTransport sends a request to a cluster's Kubernetes API over a tunnel
// stream when the cluster's agent serves HTTP there (ours do), and on the
// JSON proxy path otherwise (PipeOps agents relay that stream as raw TCP to
// the API server's TLS port and reach the API with their credentials only
// through proxy_request). Upgrades (exec, attach, port-forward) need a
// stream: on the JSON path they are answered 501.
type k8sTransport struct {
	streams *http.Transport
	tunnels *session.Registry
}

func (t k8sTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	cluster, _ := req.Context().Value(k8sCluster{}).(string)
	reach, ok := t.tunnels.Reach(cluster)
	if !ok || reach.K8sHTTP {
		return t.streams.RoundTrip(req)
	}
	if reach.Local == nil {
		body := []byte(`{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"ServiceUnavailable","code":503,` +
			`"message":"this cluster's agent reaches the Kubernetes API only through JSON proxy messages, and is connected to another gateway than the one that took this request; JSON proxy requests are not forwarded between gateways: try again (the load balancer may pick the right gateway), or run an agent that serves the API over tunnel streams"}`)
		return &http.Response{StatusCode: http.StatusServiceUnavailable, Status: "503 Service Unavailable", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header: http.Header{"Content-Type": {"application/json"}}, Body: io.NopCloser(bytes.NewReader(body)),
			ContentLength: int64(len(body)), Request: req}, nil
	}
	s := reach.Local
	if req.Header.Get("Upgrade") != "" {
		body := []byte(`{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotImplemented","code":501,` +
			`"message":"this cluster's agent reaches the Kubernetes API only through JSON proxy messages, which carry no protocol upgrades: exec, attach and port-forward need an agent that serves the API over tunnel streams"}`)
		return &http.Response{StatusCode: http.StatusNotImplemented, Status: "501 Not Implemented", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header: http.Header{"Content-Type": {"application/json"}}, Body: io.NopCloser(bytes.NewReader(body)),
			ContentLength: int64(len(body)), Request: req}, nil
	}
	return s.ProxyHTTP(req)
}

// impersonationHeader returns the name of the first Impersonate-* header of
// h, or "".
func impersonationHeader(h http.Header) string {
	for name := range h {
		if strings.HasPrefix(strings.ToLower(name), "impersonate-") {
			return name
		}
	}
	return ""
}

// closeEndsReads is a tunnel stream whose Close also ends its reads, the
// one waiting and any to come.
type closeEndsReads struct{ net.Conn }

func (c closeEndsReads) Close() error {
	err := c.Conn.Close()
	_ = c.Conn.SetReadDeadline(time.Unix(1, 0))
	return err
}

// splitK8sPath splits a request path under K8sPrefix into the cluster it
// names and the path to request from that cluster's API server (at least
// "/"). The cluster is the first path element, never empty and never
// holding a '/': it is the cluster the caller's token is checked against,
// and the only one the request can reach.
func splitK8sPath(path string) (cluster, apiPath string, ok bool) {
	rest, ok := strings.CutPrefix(path, K8sPrefix)
	cluster, apiPath, _ = strings.Cut(rest, "/")
	if !ok || cluster == "" {
		return "", "", false
	}
	return cluster, "/" + apiPath, true
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
