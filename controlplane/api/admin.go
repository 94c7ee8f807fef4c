package api

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/controlplane/tokens"
	"github.com/pipeops/tunnel/shared/auth"
)

// clusterView is a cluster as the admin API shows it.
type clusterView struct {
	UUID              string                          `json:"uuid"`
	Name              string                          `json:"name"`
	Status            string                          `json:"status"`
	StatusSince       time.Time                       `json:"status_since"`
	Gateway           string                          `json:"gateway,omitempty"`
	AgentVersion      string                          `json:"agent_version,omitempty"`
	K8sVersion        string                          `json:"k8s_version,omitempty"`
	LastHeartbeat     *time.Time                      `json:"last_heartbeat,omitempty"`
	Metadata          map[string]any                  `json:"metadata,omitempty"`   // the last heartbeat's, with "monitoring" (controlplane.HeartbeatRecord)
	AgentInfo         map[string]any                  `json:"agent_info,omitempty"` // the last register's: hostname, region, ... (controlplane.AgentReportOf)
	PublicEndpoint    string                          `json:"public_endpoint,omitempty"`
	RoutingMode       string                          `json:"routing_mode,omitempty"`
	IngressController *controlplane.IngressController `json:"ingress_controller,omitempty"`
	CreatedAt         time.Time                       `json:"created_at"`
}

func viewOf(c *controlplane.Cluster) clusterView {
	v := clusterView{UUID: c.UUID, Name: c.Name, Status: c.Status, StatusSince: c.StatusSince, Gateway: c.Gateway, AgentVersion: c.AgentVersion, K8sVersion: c.K8sVersion,
		Metadata: c.Metadata, AgentInfo: c.AgentInfo, PublicEndpoint: c.PublicEndpoint, RoutingMode: c.RoutingMode,
		IngressController: c.IngressController, CreatedAt: c.CreatedAt}
	if !c.LastHeartbeat.IsZero() {
		t := c.LastHeartbeat
		v.LastHeartbeat = &t
	}
	return v
}

// CreatedCluster is the answer to creating a cluster: the agent token is
// shown once and never again.
type CreatedCluster struct {
	Cluster        clusterView `json:"cluster"`
	AgentToken     string      `json:"agent_token"`
	InstallCommand string      `json:"install_command"`
}

func (s *Server) createCluster(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Name string `json:"name"`
	}
	if err := decode(w, r, &req); err != nil {
		writeError(w, r, err, s.log)
		return
	}
	out, err := CreateCluster(r.Context(), s.clusters, s.issuer, s.cfg.APIURL, req.Name)
	if err != nil {
		writeError(w, r, err, s.log)
		return
	}
	s.logAction(r, "cluster created", "cluster", out.Cluster.UUID, "name", out.Cluster.Name)
	writeJSON(w, http.StatusCreated, out)
}

// CreateCluster creates a cluster and its agent token. The CLI calls it too.
func CreateCluster(ctx context.Context, clusters controlplane.ClusterStore, issuer *tokens.Issuer, apiURL, name string) (*CreatedCluster, error) {
	c, err := clusters.CreateCluster(ctx, name)
	if err != nil {
		return nil, err
	}
	tok, _, err := issuer.Issue(ctx, tokens.Request{Kind: auth.KindAgent, ClusterUUID: c.UUID, Subject: "agent:" + c.Name})
	if err != nil {
		return nil, err
	}
	return &CreatedCluster{Cluster: viewOf(c), AgentToken: tok, InstallCommand: InstallCommand(apiURL)}, nil
}

// Where InstallCommand's steps put the agent: its namespace, and the
// Secret holding its token, read by the chart's
// agent.pipeops.existingSecret (key "token", the chart's default).
const (
	AgentNamespace   = "pipeops-system"
	AgentTokenSecret = "pipeops-agent-token"
)

// InstallCommand is how to install the agent with its token kept off every
// command line (where ps and the shell history would keep it): read into a
// shell variable without echo, piped into a Secret, which the chart then
// reads. The token itself is not in it.
func InstallCommand(apiURL string) string {
	if apiURL == "" {
		apiURL = "https://CONTROL-PLANE-URL"
	}
	return strings.Join([]string{
		`read -rs PIPEOPS_TOKEN   # paste the agent token, then Enter (nothing is shown)`,
		`kubectl create namespace ` + AgentNamespace + ` --dry-run=client -o yaml | kubectl apply -f -`,
		`printf %s "$PIPEOPS_TOKEN" | kubectl -n ` + AgentNamespace + ` create secret generic ` + AgentTokenSecret + ` --from-file=token=/dev/stdin`,
		`unset PIPEOPS_TOKEN`,
		`helm upgrade --install pipeops-agent deploy/helm/pipeops-agent --namespace ` + AgentNamespace +
			` --set agent.pipeops.apiUrl=` + apiURL + ` --set agent.pipeops.existingSecret=` + AgentTokenSecret,
	}, "\n")
}

func (s *Server) findCluster(ctx context.Context, ref string) (*controlplane.Cluster, error) {
	c, err := s.clusters.ClusterByName(ctx, ref)
	if controlplane.ErrorCode(err) == controlplane.ENOTFOUND {
		c, err = s.clusters.Cluster(ctx, ref)
	}
	if controlplane.ErrorCode(err) == controlplane.ENOTFOUND {
		return nil, controlplane.Errorf(controlplane.ENOTFOUND, "no cluster named or with id %q", ref)
	}
	return c, err
}

func (s *Server) listClusters(w http.ResponseWriter, r *http.Request) {
	cs, err := s.clusters.Clusters(r.Context())
	if err != nil {
		writeError(w, r, err, s.log)
		return
	}
	out := make([]clusterView, 0, len(cs))
	for _, c := range cs {
		out = append(out, viewOf(c))
	}
	writeJSON(w, http.StatusOK, map[string]any{"clusters": out})
}

func (s *Server) getCluster(w http.ResponseWriter, r *http.Request) {
	c, err := s.findCluster(r.Context(), chi.URLParam(r, "cluster"))
	if err != nil {
		writeError(w, r, err, s.log)
		return
	}
	writeJSON(w, http.StatusOK, viewOf(c))
}

// ClusterDeleted is the answer to deleting a cluster: what went with it.
type ClusterDeleted struct {
	Status            string   `json:"status"` // "deleted"
	UUID              string   `json:"uuid"`
	Name              string   `json:"name"`
	RoutesRemoved     int      `json:"routes_removed"`
	HostnamesReleased []string `json:"hostnames_released"`
	GrantsReleased    []string `json:"domain_grants_released"`
	TokensRevoked     int      `json:"tokens_revoked"`
}

// ClusterDeletedOf is the answer for d. The CLI prints it too.
func ClusterDeletedOf(d controlplane.ClusterDeletion) ClusterDeleted {
	return ClusterDeleted{Status: "deleted", UUID: d.UUID, Name: d.Name, RoutesRemoved: d.Routes,
		HostnamesReleased: nonNilStrings(d.Hostnames), GrantsReleased: nonNilStrings(d.Grants), TokensRevoked: d.TokensRevoked}
}

func nonNilStrings(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// deleteCluster deletes a cluster by name or id (see
// controlplane.ClusterStore.DeleteCluster). Its agent's sockets here and at
// the gateways are cut by the revocation checks, within
// RevocationCheckInterval, not by this request.
func (s *Server) deleteCluster(w http.ResponseWriter, r *http.Request) {
	c, err := s.findCluster(r.Context(), chi.URLParam(r, "cluster"))
	if err != nil {
		writeError(w, r, err, s.log)
		return
	}
	d, err := s.clusters.DeleteCluster(r.Context(), c.UUID)
	if err != nil {
		writeError(w, r, err, s.log)
		return
	}
	s.logAction(r, "cluster deleted", "cluster", d.UUID, "name", d.Name, "routes", d.Routes,
		"hostnames", len(d.Hostnames), "grants", len(d.Grants), "tokens_revoked", d.TokensRevoked)
	writeJSON(w, http.StatusOK, ClusterDeletedOf(d))
}

// clusterQuery resolves the optional ?cluster= (name or id) of a listing
// to a UUID; "" when absent.
func (s *Server) clusterQuery(r *http.Request) (string, error) {
	ref := r.URL.Query().Get("cluster")
	if ref == "" {
		return "", nil
	}
	c, err := s.findCluster(r.Context(), ref)
	if err != nil {
		return "", err
	}
	return c.UUID, nil
}

func (s *Server) listRoutes(w http.ResponseWriter, r *http.Request) {
	cluster, err := s.clusterQuery(r)
	if err != nil {
		writeError(w, r, err, s.log)
		return
	}
	routes, err := s.routes.Routes(r.Context(), cluster)
	if err != nil {
		writeError(w, r, err, s.log)
		return
	}
	if routes == nil {
		routes = []controlplane.Route{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"routes": routes})
}

type tokenView struct {
	ID          string     `json:"id"`
	Kind        string     `json:"kind"`
	ClusterUUID string     `json:"cluster_uuid,omitempty"`
	Clusters    []string   `json:"clusters,omitempty"`
	Subject     string     `json:"subject,omitempty"`
	Groups      []string   `json:"groups,omitempty"`
	IssuedAt    time.Time  `json:"issued_at"`
	ExpiresAt   time.Time  `json:"expires_at"`
	RevokedAt   *time.Time `json:"revoked_at,omitempty"`
}

func tokenViewOf(t controlplane.Token) tokenView {
	v := tokenView{ID: t.ID, Kind: t.Kind, ClusterUUID: t.ClusterUUID, Clusters: t.Clusters, Subject: t.Subject, Groups: t.Groups, IssuedAt: t.IssuedAt, ExpiresAt: t.ExpiresAt}
	if !t.RevokedAt.IsZero() {
		at := t.RevokedAt
		v.RevokedAt = &at
	}
	return v
}

func (s *Server) createToken(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Kind     string   `json:"kind"`
		Cluster  string   `json:"cluster"`
		Clusters []string `json:"clusters"`
		Subject  string   `json:"subject"`
		Groups   []string `json:"groups"`
		TTL      string   `json:"ttl"`
	}
	if err := decode(w, r, &req); err != nil {
		writeError(w, r, err, s.log)
		return
	}
	issue := tokens.Request{Kind: auth.Kind(req.Kind), Subject: req.Subject, Groups: req.Groups}
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil || d <= 0 {
			writeError(w, r, controlplane.Errorf(controlplane.EINVALID, "ttl %q is not a positive duration (like 720h)", req.TTL), nil)
			return
		}
		issue.TTL = d
	}
	if req.Cluster != "" {
		c, err := s.findCluster(r.Context(), req.Cluster)
		if err != nil {
			writeError(w, r, err, s.log)
			return
		}
		issue.ClusterUUID = c.UUID
	}
	for _, ref := range req.Clusters {
		if ref == "*" {
			issue.Clusters = append(issue.Clusters, ref)
			continue
		}
		c, err := s.findCluster(r.Context(), ref)
		if err != nil {
			writeError(w, r, err, s.log)
			return
		}
		issue.Clusters = append(issue.Clusters, c.UUID)
	}
	tok, rec, err := s.issuer.Issue(r.Context(), issue)
	if err != nil {
		writeError(w, r, err, s.log)
		return
	}
	s.logAction(r, "token issued", "token", rec.ID, "kind", rec.Kind, "subject", rec.Subject)
	writeJSON(w, http.StatusCreated, map[string]any{"token": tok, "record": tokenViewOf(rec)})
}

func (s *Server) listTokens(w http.ResponseWriter, r *http.Request) {
	cluster, err := s.clusterQuery(r)
	gone := controlplane.ErrorCode(err) == controlplane.ENOTFOUND
	if gone {
		// The records of a deleted cluster's tokens outlive it, for
		// audit: its id still lists them. A name or id that never held
		// a token is unknown.
		cluster = r.URL.Query().Get("cluster")
	} else if err != nil {
		writeError(w, r, err, s.log)
		return
	}
	ts, err := s.tokens.Tokens(r.Context(), cluster)
	if err == nil && gone && len(ts) == 0 {
		err = controlplane.Errorf(controlplane.ENOTFOUND, "no cluster named or with id %q, and no token records of one", cluster)
	}
	if err != nil {
		writeError(w, r, err, s.log)
		return
	}
	out := make([]tokenView, 0, len(ts))
	for _, t := range ts {
		out = append(out, tokenViewOf(t))
	}
	writeJSON(w, http.StatusOK, map[string]any{"tokens": out})
}

func (s *Server) revokeToken(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "id")
	if err := s.tokens.RevokeToken(r.Context(), id, time.Now()); err != nil {
		writeError(w, r, err, s.log)
		return
	}
	s.logAction(r, "token revoked", "token", id)
	writeJSON(w, http.StatusOK, map[string]any{"status": "revoked", "id": id})
}

// kubeconfig mints a user token for the cluster and returns a kubeconfig
// that reaches its Kubernetes API through the gateway.
func (s *Server) kubeconfig(w http.ResponseWriter, r *http.Request) {
	c, err := s.findCluster(r.Context(), chi.URLParam(r, "cluster"))
	if err != nil {
		writeError(w, r, err, s.log)
		return
	}
	if s.cfg.GatewayURL == "" {
		writeError(w, r, controlplane.Errorf(controlplane.EUNAVAILABLE, "the control plane has no public gateway URL configured (GATEWAY_URL)"), nil)
		return
	}
	tok, rec, err := s.issuer.Issue(r.Context(), tokens.Request{Kind: auth.KindUser, Clusters: []string{c.UUID}, Subject: "kubeconfig:" + c.Name})
	if err != nil {
		writeError(w, r, err, s.log)
		return
	}
	s.logAction(r, "kubeconfig issued", "cluster", c.UUID, "token", rec.ID)
	b, err := Kubeconfig(s.cfg.GatewayURL, s.cfg.K8sAPIDomain, s.cfg.GatewayCA, c, tok)
	if err != nil {
		writeError(w, r, err, s.log)
		return
	}
	w.Header().Set("Content-Type", "application/yaml")
	w.Write(b)
}

// Kubeconfig renders a kubeconfig for cluster c through the gateway at
// gatewayURL, authenticated with token; caPEM, when not empty, is the
// certificate authority it trusts for the gateway.
//
// With a Kubernetes API domain (K8S_API_DOMAIN), the cluster is reached at
// the gateway's URL with no path prefix, under the TLS server name
// {cluster id}.{domain}, by which the gateway routes it: every absolute
// path kubectl sends then works (get --raw /version), and no DNS record is
// needed per cluster. Without one, at {gatewayURL}/k8s/{cluster id}.
func Kubeconfig(gatewayURL, k8sDomain string, caPEM []byte, c *controlplane.Cluster, token string) ([]byte, error) {
	kc := clientcmdapi.NewConfig()
	cl := &clientcmdapi.Cluster{Server: strings.TrimSuffix(gatewayURL, "/") + "/k8s/" + c.UUID, CertificateAuthorityData: caPEM}
	if k8sDomain != "" {
		cl.Server = strings.TrimSuffix(gatewayURL, "/")
		cl.TLSServerName = c.UUID + "." + k8sDomain
	}
	kc.Clusters[c.Name] = cl
	kc.AuthInfos[c.Name] = &clientcmdapi.AuthInfo{Token: token}
	kc.Contexts[c.Name] = &clientcmdapi.Context{Cluster: c.Name, AuthInfo: c.Name}
	kc.CurrentContext = c.Name
	return clientcmd.Write(*kc)
}

// auditView is an audit entry as the admin API shows it.
type auditView struct {
	Time        time.Time `json:"time"`
	ClusterUUID string    `json:"cluster_uuid"`
	ClusterName string    `json:"cluster_name"`
	User        string    `json:"user"`
	Groups      []string  `json:"groups,omitempty"`
	TokenID     string    `json:"token_id,omitempty"`
	Verb        string    `json:"verb"`
	Method      string    `json:"method"`
	Path        string    `json:"path"`
	Status      int       `json:"status"`
	BytesIn     int64     `json:"bytes_in"`
	BytesOut    int64     `json:"bytes_out"`
	DurationMS  float64   `json:"duration_ms"`
}

// listAudit serves the Kubernetes API audit: ?cluster= (name or id, and
// entries of deleted clusters by their id), ?user=, ?since= (RFC 3339 or a
// duration back from now, like 1h), ?limit=.
func (s *Server) listAudit(w http.ResponseWriter, r *http.Request) {
	if s.audit == nil {
		writeError(w, r, controlplane.Errorf(controlplane.EUNAVAILABLE, "this control plane serves no audit"), nil)
		return
	}
	q := r.URL.Query()
	f := controlplane.AuditFilter{Cluster: q.Get("cluster"), User: q.Get("user")}
	if v := q.Get("since"); v != "" {
		if d, err := time.ParseDuration(v); err == nil && d > 0 {
			f.Since = time.Now().Add(-d)
		} else if t, err := time.Parse(time.RFC3339, v); err == nil {
			f.Since = t
		} else {
			writeError(w, r, controlplane.Errorf(controlplane.EINVALID, "since %q is neither an RFC 3339 time nor a duration like 1h", v), nil)
			return
		}
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			writeError(w, r, controlplane.Errorf(controlplane.EINVALID, "limit %q is not a positive number", v), nil)
			return
		}
		f.Limit = n
	}
	entries, err := s.audit.AuditEntries(r.Context(), f)
	if err != nil {
		writeError(w, r, err, s.log)
		return
	}
	out := make([]auditView, 0, len(entries))
	for _, e := range entries {
		out = append(out, auditView{Time: e.Time, ClusterUUID: e.ClusterUUID, ClusterName: e.ClusterName, User: e.User, Groups: e.Groups,
			TokenID: e.TokenID, Verb: e.Verb, Method: e.Method, Path: e.Path, Status: e.Status, BytesIn: e.BytesIn, BytesOut: e.BytesOut,
			DurationMS: float64(e.Duration) / float64(time.Millisecond)})
	}
	writeJSON(w, http.StatusOK, map[string]any{"entries": out})
}

// logAction logs an administrator's change with who made it: the id of
// the token (or console session) that authenticated the request and its
// subject. Never the token itself.
func (s *Server) logAction(r *http.Request, msg string, args ...any) {
	if c := claimsFrom(r.Context()); c != nil {
		args = append(args, "by_token", c.ID)
		if c.Subject != "" {
			args = append(args, "by", c.Subject)
		}
	}
	s.log.Info(msg, args...)
}
