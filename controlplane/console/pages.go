package console

import (
	"bytes"
	"fmt"
	"html/template"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/pipeops/tunnel/controlplane"
	"github.com/pipeops/tunnel/controlplane/api"
	"github.com/pipeops/tunnel/controlplane/tokens"
	"github.com/pipeops/tunnel/shared/auth"
)

// page is what every template gets.
type page struct {
	Title     string
	CSRF      string // the form field's value
	CSRFField string
	SignedIn  bool
	Refresh   int // milliseconds between reloads of live parts
	Prefix    string
	Data      any
}

// render writes a whole page; live parts (named "live" in a template) are
// written by renderLive.
func (c *Console) render(w http.ResponseWriter, r *http.Request, status int, name, title string, data any, csrf string) {
	p := page{Title: title, CSRF: csrf, CSRFField: api.CSRFField, Refresh: int(c.cfg.Refresh / time.Millisecond), Prefix: Prefix, Data: data}
	if s := sessionOf(r); s != nil {
		p.SignedIn, p.CSRF = true, api.CSRFToken(s.raw)
	}
	c.execute(w, status, name, "layout", p)
}

// renderLive writes one live part of page name: the template part.
func (c *Console) renderLive(w http.ResponseWriter, r *http.Request, name, part string, data any) {
	p := page{Prefix: Prefix, Data: data, CSRFField: api.CSRFField}
	if s := sessionOf(r); s != nil {
		p.SignedIn, p.CSRF = true, api.CSRFToken(s.raw)
	}
	c.execute(w, http.StatusOK, name, part, p)
}

func (c *Console) execute(w http.ResponseWriter, status int, name, tmpl string, p page) {
	t, ok := c.pages[name]
	if !ok {
		http.Error(w, "no template "+name, http.StatusInternalServerError)
		return
	}
	// Rendered into a buffer first, so that a template error is a clean
	// 500 and not half a page.
	var buf bytes.Buffer
	if err := t.ExecuteTemplate(&buf, tmpl, p); err != nil {
		c.log.Error("console: render", "page", name, "err", err)
		http.Error(w, "the page could not be rendered", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// errorView is the error page's.
type errorView struct {
	Status  int
	Message string
}

// fail shows err as a page, with the status the API would answer; the
// details of internal errors are logged, not shown.
func (c *Console) fail(w http.ResponseWriter, r *http.Request, err error) {
	code := controlplane.ErrorCode(err)
	status := api.StatusOf(code)
	msg := controlplane.ErrorMessage(err)
	if code == controlplane.EINTERNAL {
		c.log.Error("console request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	if strings.HasSuffix(r.URL.Path, "/live") {
		http.Error(w, msg, status)
		return
	}
	c.render(w, r, status, "error", http.StatusText(status), errorView{Status: status, Message: msg}, "")
}

// clusterRow is a cluster as the list shows it.
type clusterRow struct {
	*controlplane.Cluster
	Routes int
}

// Metadata fields of the last heartbeat (controlplane.HeartbeatRecord).
func (c clusterRow) meta(key string) any {
	if c.Metadata == nil {
		return nil
	}
	return c.Metadata[key]
}

func (c clusterRow) Nodes() string  { return number(c.meta("k8s_nodes")) }
func (c clusterRow) Pods() string   { return number(c.meta("k8s_pods")) }
func (c clusterRow) CPU() string    { return text(c.meta("cpu_usage")) }
func (c clusterRow) Memory() string { return text(c.meta("memory_usage")) }

// Exposure is how the cluster's routes are served.
func (c clusterRow) Exposure() string {
	switch {
	case c.RoutingMode == "direct":
		return "public (direct)"
	case c.meta("is_private") == false && c.PublicEndpoint != "":
		return "public"
	case c.LastHeartbeat.IsZero():
		return ""
	default:
		return "private (tunnel)"
	}
}

func number(v any) string {
	switch n := v.(type) {
	case float64:
		return fmt.Sprintf("%d", int64(n))
	case int:
		return fmt.Sprintf("%d", n)
	}
	return ""
}

func text(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	return ""
}

type clustersView struct {
	Clusters    []clusterRow
	Flash       string
	Error       string
	NewName     string
	NamePattern string
}

// clusterName matches a cluster's name, for what a query string claims.
var clusterName = regexp.MustCompile("^" + controlplane.ClusterNamePattern + "$")

func (c *Console) clusterRows(r *http.Request) ([]clusterRow, error) {
	cs, err := c.d.Clusters.Clusters(r.Context())
	if err != nil {
		return nil, err
	}
	routes, err := c.d.Routes.Routes(r.Context(), "")
	if err != nil {
		return nil, err
	}
	counts := make(map[string]int)
	for _, rt := range routes {
		counts[rt.ClusterUUID]++
	}
	rows := make([]clusterRow, 0, len(cs))
	for _, cl := range cs {
		rows = append(rows, clusterRow{Cluster: cl, Routes: counts[cl.UUID]})
	}
	return rows, nil
}

func (c *Console) clustersPage(w http.ResponseWriter, r *http.Request) {
	rows, err := c.clusterRows(r)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	v := clustersView{Clusters: rows, NamePattern: controlplane.ClusterNamePattern}
	// Anyone can link here with any text: only a cluster's name is shown.
	if d := r.URL.Query().Get("deleted"); clusterName.MatchString(d) {
		v.Flash = "Cluster " + d + " was deleted."
	}
	c.render(w, r, http.StatusOK, "clusters", "Clusters", v, "")
}

func (c *Console) clustersLive(w http.ResponseWriter, r *http.Request) {
	rows, err := c.clusterRows(r)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	c.renderLive(w, r, "clusters", "live", clustersView{Clusters: rows})
}

// createdView shows a new agent token, once.
type createdView struct {
	Cluster  *controlplane.Cluster
	Token    string
	Rotated  bool
	Install  string
	Script   string
	Manifest string
}

func (c *Console) installSteps(v *createdView) {
	v.Install = api.InstallCommand(c.cfg.APIURL)
	apiURL := c.cfg.APIURL
	if apiURL == "" {
		apiURL = "https://CONTROL-PLANE-URL"
	}
	const readToken = "read -rs PIPEOPS_TOKEN   # paste the agent token, then Enter (nothing is shown)\n"
	v.Script = readToken + "export PIPEOPS_TOKEN   # the installer reads it from the environment, never from its arguments\n" +
		"bash deploy/install.sh --api-url " + apiURL + "\nunset PIPEOPS_TOKEN"
	ns := " -n " + api.AgentNamespace
	v.Manifest = readToken + "kubectl apply -f deploy/manifests/pipeops-agent.yaml\n" +
		"printf %s \"$PIPEOPS_TOKEN\" | kubectl" + ns + " create secret generic " + api.AgentTokenSecret +
		" --from-file=token=/dev/stdin --dry-run=client -o yaml | kubectl apply -f -\n" +
		"unset PIPEOPS_TOKEN\n" +
		"kubectl" + ns + " set env deploy/pipeops-agent PIPEOPS_API_URL=" + apiURL + "\n" +
		"kubectl" + ns + " rollout restart deploy/pipeops-agent"
}

func (c *Console) createCluster(w http.ResponseWriter, r *http.Request) {
	name := strings.TrimSpace(r.PostFormValue("name"))
	out, err := api.CreateCluster(r.Context(), c.d.Clusters, c.d.Issuer, c.cfg.APIURL, name)
	if err != nil {
		if code := controlplane.ErrorCode(err); code == controlplane.EINVALID || code == controlplane.ECONFLICT {
			rows, lerr := c.clusterRows(r)
			if lerr != nil {
				c.fail(w, r, lerr)
				return
			}
			c.render(w, r, api.StatusOf(code), "clusters", "Clusters",
				clustersView{Clusters: rows, Error: controlplane.ErrorMessage(err), NewName: name, NamePattern: controlplane.ClusterNamePattern}, "")
			return
		}
		c.fail(w, r, err)
		return
	}
	cl, err := c.d.Clusters.Cluster(r.Context(), out.Cluster.UUID)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	c.log.Info("console: cluster created", "cluster", cl.UUID, "name", cl.Name, "by_session", sessionOf(r).claims.ID)
	v := createdView{Cluster: cl, Token: out.AgentToken}
	c.installSteps(&v)
	c.render(w, r, http.StatusCreated, "created", "Cluster "+cl.Name+" created", v, "")
}

// findCluster resolves the {cluster} of a path: a name or an id.
func (c *Console) findCluster(r *http.Request) (*controlplane.Cluster, error) {
	ref := chi.URLParam(r, "cluster")
	cl, err := c.d.Clusters.ClusterByName(r.Context(), ref)
	if controlplane.ErrorCode(err) == controlplane.ENOTFOUND {
		cl, err = c.d.Clusters.Cluster(r.Context(), ref)
	}
	if controlplane.ErrorCode(err) == controlplane.ENOTFOUND {
		return nil, controlplane.Errorf(controlplane.ENOTFOUND, "no cluster named or with id %q", ref)
	}
	return cl, err
}

// clusterView is the cluster page's.
type clusterView struct {
	Cluster    clusterRow
	Routes     []controlplane.Route
	Tokens     []tokenRow
	Audit      []controlplane.AuditEntry
	HasAudit   bool
	Traffic    *trafficView // nil without a traffic store, and in the live part
	HasTraffic bool
	// TrafficRefresh is how often the traffic part reloads, in
	// milliseconds.
	TrafficRefresh int
	Flash          string
	GrafanaURL     string
}

type tokenRow struct {
	controlplane.Token
	Active bool
}

// clusterData gathers the cluster page's data; the traffic figures only
// withTraffic, for they cost a dozen queries and change every 10 s.
func (c *Console) clusterData(r *http.Request, withTraffic bool) (*clusterView, error) {
	cl, err := c.findCluster(r)
	if err != nil {
		return nil, err
	}
	ctx := r.Context()
	routes, err := c.d.Routes.Routes(ctx, cl.UUID)
	if err != nil {
		return nil, err
	}
	toks, err := c.d.Tokens.Tokens(ctx, cl.UUID)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	v := &clusterView{Cluster: clusterRow{Cluster: cl, Routes: len(routes)}, Routes: routes, GrafanaURL: c.cfg.GrafanaURL,
		HasTraffic: c.d.Traffic != nil, TrafficRefresh: int(c.cfg.TrafficRefresh / time.Millisecond)}
	for _, t := range slices.Backward(toks) { // newest first
		v.Tokens = append(v.Tokens, tokenRow{Token: t, Active: t.RevokedAt.IsZero() && t.ExpiresAt.After(now)})
	}
	if v.HasTraffic && withTraffic {
		if v.Traffic, err = c.traffic(ctx, cl.UUID); err != nil {
			return nil, err
		}
	}
	if c.d.Audit != nil {
		v.HasAudit = true
		if v.Audit, err = c.d.Audit.AuditEntries(ctx, controlplane.AuditFilter{Cluster: cl.UUID, Limit: 20}); err != nil {
			return nil, err
		}
	}
	return v, nil
}

func (c *Console) clusterPage(w http.ResponseWriter, r *http.Request) {
	v, err := c.clusterData(r, true)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	// Anyone can link here with any text: the banner is shown only for a
	// token of this cluster that is revoked.
	if id := r.URL.Query().Get("revoked"); id != "" {
		for _, t := range v.Tokens {
			if t.ID == id && !t.RevokedAt.IsZero() {
				v.Flash = "Token " + id + " was revoked; sessions that used it are being closed."
			}
		}
	}
	c.render(w, r, http.StatusOK, "cluster", "Cluster "+v.Cluster.Name, v, "")
}

func (c *Console) clusterLive(w http.ResponseWriter, r *http.Request) {
	v, err := c.clusterData(r, false)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	c.renderLive(w, r, "cluster", "live", v)
}

// trafficLive is the cluster page's traffic part, which reloads apart
// (every Config.TrafficRefresh).
func (c *Console) trafficLive(w http.ResponseWriter, r *http.Request) {
	if c.d.Traffic == nil {
		c.fail(w, r, controlplane.Errorf(controlplane.ENOTFOUND, "this control plane keeps no traffic figures"))
		return
	}
	cl, err := c.findCluster(r)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	t, err := c.traffic(r.Context(), cl.UUID)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	c.renderLive(w, r, "cluster", "traffic", &clusterView{Cluster: clusterRow{Cluster: cl}, Traffic: t, HasTraffic: true, GrafanaURL: c.cfg.GrafanaURL})
}

// confirmView asks before something that cannot be undone. With TypeName
// set, the name must be typed to go on.
type confirmView struct {
	Heading, Message, Action, Button, Cancel string
	TypeName                                 string
	Error                                    string
}

func deleteConfirm(cl *controlplane.Cluster) confirmView {
	return confirmView{
		Heading: "Delete cluster " + cl.Name + "?",
		Message: "Its routes stop being served at once, its hostnames are released, and every token that reaches only this " +
			"cluster (its agent's among them) is revoked, which closes their connections. The Kubernetes API audit is kept. " +
			"This cannot be undone.",
		Action: Prefix + "/clusters/" + cl.UUID + "/delete", Button: "Delete cluster", Cancel: Prefix + "/clusters/" + cl.UUID,
		TypeName: cl.Name,
	}
}

func (c *Console) confirmDelete(w http.ResponseWriter, r *http.Request) {
	cl, err := c.findCluster(r)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	c.render(w, r, http.StatusOK, "confirm", "Delete cluster "+cl.Name, deleteConfirm(cl), "")
}

func (c *Console) deleteCluster(w http.ResponseWriter, r *http.Request) {
	cl, err := c.findCluster(r)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	if strings.TrimSpace(r.PostFormValue("confirm_name")) != cl.Name {
		v := deleteConfirm(cl)
		v.Error = "Type the cluster's name, " + cl.Name + ", to delete it."
		c.render(w, r, http.StatusBadRequest, "confirm", "Delete cluster "+cl.Name, v, "")
		return
	}
	d, err := c.d.Clusters.DeleteCluster(r.Context(), cl.UUID)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	c.log.Info("console: cluster deleted", "cluster", d.UUID, "name", d.Name, "routes", d.Routes, "tokens_revoked", d.TokensRevoked,
		"by_session", sessionOf(r).claims.ID)
	http.Redirect(w, r, Prefix+"/clusters?deleted="+template.URLQueryEscaper(d.Name), http.StatusSeeOther)
}

func (c *Console) confirmRotate(w http.ResponseWriter, r *http.Request) {
	cl, err := c.findCluster(r)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	c.render(w, r, http.StatusOK, "confirm", "Rotate the agent token of "+cl.Name, confirmView{
		Heading: "Rotate the agent token of " + cl.Name + "?",
		Message: "A new agent token is made and shown once; every other agent token of this cluster is revoked, " +
			"so its agent disconnects until it is given the new one (update the Secret " + api.AgentTokenSecret + ").",
		Action: Prefix + "/clusters/" + cl.UUID + "/rotate", Button: "Rotate token", Cancel: Prefix + "/clusters/" + cl.UUID,
	}, "")
}

func (c *Console) rotate(w http.ResponseWriter, r *http.Request) {
	cl, err := c.findCluster(r)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	old, err := c.d.Tokens.Tokens(r.Context(), cl.UUID)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	tok, rec, err := c.d.Issuer.Issue(r.Context(), tokens.Request{Kind: auth.KindAgent, ClusterUUID: cl.UUID, Subject: "agent:" + cl.Name})
	if err != nil {
		c.fail(w, r, err)
		return
	}
	now := time.Now()
	for _, t := range old {
		if t.Kind == string(auth.KindAgent) && t.ClusterUUID == cl.UUID && t.ID != rec.ID && t.RevokedAt.IsZero() {
			if err := c.d.Tokens.RevokeToken(r.Context(), t.ID, now); err != nil {
				c.fail(w, r, fmt.Errorf("revoke the old agent token %s (the new one, %s, is issued): %w", t.ID, rec.ID, err))
				return
			}
		}
	}
	c.log.Info("console: agent token rotated", "cluster", cl.UUID, "name", cl.Name, "token", rec.ID, "by_session", sessionOf(r).claims.ID)
	v := createdView{Cluster: cl, Token: tok, Rotated: true}
	c.installSteps(&v)
	c.render(w, r, http.StatusOK, "created", "New agent token for "+cl.Name, v, "")
}

func (c *Console) confirmRevoke(w http.ResponseWriter, r *http.Request) {
	t, err := c.d.Tokens.Token(r.Context(), chi.URLParam(r, "id"))
	if err != nil {
		c.fail(w, r, err)
		return
	}
	back := Prefix + "/clusters"
	switch {
	case r.URL.Query().Get("back") != "":
		back = safeNext(r.URL.Query().Get("back"))
	case t.ClusterUUID != "":
		back = Prefix + "/clusters/" + t.ClusterUUID
	}
	who := t.Kind + " token"
	if t.Subject != "" {
		who += " of " + t.Subject
	}
	c.render(w, r, http.StatusOK, "confirm", "Revoke token "+t.ID, confirmView{
		Heading: "Revoke " + who + "?",
		Message: "Token " + t.ID + " stops working at once, and every connection that uses it is closed. This cannot be undone.",
		Action:  Prefix + "/tokens/" + t.ID + "/revoke?back=" + templateQuery(back), Button: "Revoke token", Cancel: back,
	}, "")
}

func templateQuery(s string) string { return template.URLQueryEscaper(s) }

func (c *Console) revoke(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "id")
	if err := c.d.Tokens.RevokeToken(r.Context(), id, time.Now()); err != nil {
		c.fail(w, r, err)
		return
	}
	c.log.Info("console: token revoked", "token", id, "by_session", sessionOf(r).claims.ID)
	back := safeNext(r.URL.Query().Get("back"))
	sep := "?"
	if strings.Contains(back, "?") {
		sep = "&"
	}
	http.Redirect(w, r, back+sep+"revoked="+template.URLQueryEscaper(id), http.StatusSeeOther)
}

// kubeconfig downloads a kubeconfig for one person: a user token bound to
// the cluster, naming them and their groups, which the agent impersonates.
func (c *Console) kubeconfig(w http.ResponseWriter, r *http.Request) {
	cl, err := c.findCluster(r)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	user := strings.TrimSpace(r.PostFormValue("user"))
	if user == "" {
		c.fail(w, r, controlplane.Errorf(controlplane.EINVALID, "a kubeconfig is for a person: give their user name"))
		return
	}
	var groups []string
	for g := range strings.SplitSeq(r.PostFormValue("groups"), ",") {
		if g = strings.TrimSpace(g); g != "" {
			groups = append(groups, g)
		}
	}
	if c.cfg.GatewayURL == "" {
		c.fail(w, r, controlplane.Errorf(controlplane.EUNAVAILABLE, "the control plane has no public gateway URL configured (GATEWAY_URL)"))
		return
	}
	tok, rec, err := c.d.Issuer.Issue(r.Context(), tokens.Request{Kind: auth.KindUser, Clusters: []string{cl.UUID}, Subject: user, Groups: groups})
	if err != nil {
		c.fail(w, r, err)
		return
	}
	c.log.Info("console: kubeconfig issued", "cluster", cl.UUID, "user", user, "groups", groups, "token", rec.ID, "by_session", sessionOf(r).claims.ID)
	b, err := api.Kubeconfig(c.cfg.GatewayURL, c.cfg.K8sAPIDomain, c.cfg.GatewayCA, cl, tok)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/yaml")
	w.Header().Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", cl.Name+"-"+safeFileName(user)+".kubeconfig"))
	_, _ = w.Write(b)
}

func safeFileName(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.' {
			return r
		}
		return '_'
	}, s)
}
