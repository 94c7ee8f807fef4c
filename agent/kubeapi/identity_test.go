package kubeapi_test

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pipeops/tunnel/agent/kubeapi"
	"github.com/pipeops/tunnel/shared/auth"
	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/testenv/kubetest"
	"github.com/pipeops/tunnel/shared/tunnel"
)

// TestImpersonation runs the agent's Kubernetes API target with
// impersonation on against a real kube-apiserver, the agent holding only
// its impersonation grant, and sends it what a gateway could: the
// person's real token, and every kind of forgery a compromised gateway
// could try. Only the real token, bound to this cluster, acts, and it acts
// as the person, with the person's RBAC.
func TestImpersonation(t *testing.T) {
	env := kubetest.Start(t)
	testenv.LeakCheck(t)
	ns := env.Namespace(t)
	acct := env.ServiceAccount(t, ns, "agent", kubetest.Grant{Rules: kubeapi.Rules()})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// alice (group dev) may list pods in ns, and nothing else.
	bindPerson(ctx, t, env, ns, rbacv1.Subject{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: "dev"},
		rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"list"}})

	// The tunnel harness's gateway serves the JWKS the agent reads; the
	// requests below go straight to the agent, as a gateway sends them.
	h := startTunnel(t, func(context.Context) (net.Conn, error) { return nil, errors.New("not used") }, false)

	reg := prometheus.NewPedanticRegistry()
	id, err := kubeapi.NewIdentity(kubeapi.IdentityConfig{Impersonate: true, JWKSURL: h.jwks, Client: h.gw.Client(), Cluster: "c1", Metrics: reg})
	if err != nil {
		t.Fatal(err)
	}
	if err := id.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	fwd, err := kubeapi.New(acct.Config, id, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fwd.Close() })

	// A key the control plane does not publish, under the same key id.
	_, rogue, _ := ed25519.GenerateKey(rand.Reader)
	forge := func(c *auth.Claims) string {
		c.ExpiresAt, c.ID = jwt.NewNumericDate(time.Now().Add(time.Hour)), "forged"
		tok, err := auth.Sign(rogue, "k", c)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	alice := &auth.Claims{Kind: auth.KindUser, Clusters: []string{"c1"}, Groups: []string{"dev"}}
	alice.Subject = "alice"
	claims := func(c auth.Claims, edit func(*auth.Claims)) *auth.Claims {
		c.Groups = append([]string(nil), c.Groups...)
		edit(&c)
		return &c
	}
	whoami := "/apis/authentication.k8s.io/v1/selfsubjectreviews"
	pods := "/api/v1/namespaces/" + ns + "/pods"
	for _, tc := range []struct {
		name     string
		method   string
		path     string
		token    string // the identity header; "" for none
		extra    http.Header
		want     int
		contains string
	}{
		{"the person", http.MethodPost, whoami, h.sign(claims(*alice, func(*auth.Claims) {})), nil, http.StatusCreated, `"username":"alice"`},
		{"the person's groups", http.MethodPost, whoami, h.sign(claims(*alice, func(*auth.Claims) {})), nil, http.StatusCreated, `"dev"`},
		{"what the person may do", http.MethodGet, pods, h.sign(claims(*alice, func(*auth.Claims) {})), nil, http.StatusOK, `"PodList"`},
		{"what the person may not do: the API server's 403 names them", http.MethodGet, "/api/v1/namespaces/" + ns + "/secrets",
			h.sign(claims(*alice, func(*auth.Claims) {})), nil, http.StatusForbidden, `User \"alice\" cannot list resource \"secrets\"`},
		{"impersonation headers from the gateway are dropped", http.MethodPost, whoami, h.sign(claims(*alice, func(*auth.Claims) {})),
			http.Header{"Impersonate-User": {"admin"}, "Impersonate-Group": {"system:masters"}}, http.StatusCreated, `"username":"alice"`},
		{"no identity", http.MethodGet, pods, "", nil, http.StatusForbidden, "came without a token naming one"},
		{"made-up identity, no valid signature", http.MethodGet, pods, forge(claims(*alice, func(*auth.Claims) {})), nil,
			http.StatusUnauthorized, "could not verify"},
		{"garbage", http.MethodGet, pods, "not-a-jwt", nil, http.StatusUnauthorized, "could not verify"},
		{"expired", http.MethodGet, pods, h.sign(claims(*alice, func(c *auth.Claims) { c.ExpiresAt = jwt.NewNumericDate(time.Now().Add(-time.Hour)) })),
			nil, http.StatusUnauthorized, "could not verify"},
		{"another cluster's token", http.MethodGet, pods, h.sign(claims(*alice, func(c *auth.Claims) { c.Clusters = []string{"c2"} })), nil,
			http.StatusForbidden, "bound to it alone"},
		{"a token for several clusters", http.MethodGet, pods, h.sign(claims(*alice, func(c *auth.Claims) { c.Clusters = []string{"c1", "c2"} })), nil,
			http.StatusForbidden, "bound to it alone"},
		{"a token for every cluster", http.MethodGet, pods, h.sign(claims(*alice, func(c *auth.Claims) { c.Clusters = []string{"*"} })), nil,
			http.StatusForbidden, "bound to it alone"},
		{"an admin token", http.MethodGet, pods, h.sign(claims(*alice, func(c *auth.Claims) { c.Kind = auth.KindAdmin })), nil,
			http.StatusUnauthorized, "could not verify"},
		{"an agent token", http.MethodGet, pods, h.sign(&auth.Claims{Kind: auth.KindAgent, ClusterID: "c1"}), nil,
			http.StatusUnauthorized, "could not verify"},
		{"a token naming nobody", http.MethodGet, pods, h.sign(claims(*alice, func(c *auth.Claims) { c.Subject = "" })), nil,
			http.StatusForbidden, "names no person"},
		{"a token naming a reserved group", http.MethodGet, pods, h.sign(claims(*alice, func(c *auth.Claims) { c.Groups = []string{"system:masters"} })), nil,
			http.StatusForbidden, "names no person"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := rawRequest(ctx, t, fwd, tc.method, tc.path, tc.token, tc.extra)
			if status != tc.want || !strings.Contains(body, tc.contains) {
				t.Fatalf("%s %s: %d %s\nwant %d and %q", tc.method, tc.path, status, body, tc.want, tc.contains)
			}
		})
	}
	if n := refusedCount(t, reg, "invalid_token"); n < 5 {
		t.Errorf("invalid tokens counted %v times, want at least 5", n)
	}
}

// TestImpersonationThroughGateway runs the real kubectl through the
// gateway to an agent that impersonates: the gateway forwards the caller's
// cluster-bound token, and the API server sees the person; an admin token
// is never forwarded and is refused at the gateway, saying why.
func TestImpersonationThroughGateway(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		testenv.Require(t, "kubectl", fmt.Errorf("%w: %v", testenv.ErrUnavailable, err))
	}
	env := kubetest.Start(t)
	testenv.LeakCheck(t)
	ns := env.Namespace(t)
	acct := env.ServiceAccount(t, ns, "agent", kubetest.Grant{Rules: kubeapi.Rules()})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	bindPerson(ctx, t, env, ns, rbacv1.Subject{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: "bob"},
		rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"list", "get"}})

	// The identity needs the gateway's JWKS URL, and the gateway needs the
	// forwarder: the forwarder's identity is filled in once both exist.
	var fwdP atomic.Pointer[kubeapi.Server]
	h := startTunnel(t, func(ctx context.Context) (net.Conn, error) { return fwdP.Load().Dial(ctx) }, true)
	id, err := kubeapi.NewIdentity(kubeapi.IdentityConfig{Impersonate: true, JWKSURL: h.jwks, Client: h.gw.Client(), Cluster: "c1"})
	if err != nil {
		t.Fatal(err)
	}
	fwd, err := kubeapi.New(acct.Config, id, nil)
	if err != nil {
		t.Fatal(err)
	}
	fwdP.Store(fwd)
	t.Cleanup(func() { fwd.Close() })

	bob := &auth.Claims{Kind: auth.KindUser, Clusters: []string{"c1"}}
	bob.Subject = "bob"
	kc := func(token string, args ...string) (string, error) {
		base := []string{"--server", h.gw.URL + "/k8s/c1", "--certificate-authority", h.caFile, "--token", token}
		cmd := exec.CommandContext(ctx, kubectl, append(base, args...)...)
		cmd.Env = []string{"HOME=" + t.TempDir(), "KUBECONFIG=/dev/null"}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	tok := h.sign(bob)
	if out, err := kc(tok, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"); err != nil || out != "bob" {
		t.Fatalf("kubectl auth whoami: %v %q, want bob", err, out)
	}
	if out, err := kc(tok, "auth", "can-i", "list", "configmaps", "-n", ns); err != nil || strings.TrimSpace(out) != "yes" {
		t.Fatalf("kubectl auth can-i list configmaps: %v %q, want yes", err, out)
	}
	if out, _ := kc(tok, "auth", "can-i", "list", "secrets", "-n", ns); strings.TrimSpace(out) != "no" {
		t.Fatalf("kubectl auth can-i list secrets: %q, want no", out)
	}
	if out, err := kc(tok, "get", "secrets", "-n", ns); err == nil || !strings.Contains(out, `User "bob" cannot list resource "secrets"`) {
		t.Fatalf("kubectl get secrets: %v %s\nwant the API server's 403 naming bob", err, out)
	}
	admin := &auth.Claims{Kind: auth.KindAdmin}
	admin.Subject = "pipeops:admin"
	// --raw (whose path is absolute: it repeats the server URL's path),
	// since kubectl's discovery shows a refusal only as "unknown".
	if out, err := kc(h.sign(admin), "get", "--raw", "/k8s/c1/api/v1/namespaces/"+ns+"/configmaps"); err == nil || !strings.Contains(out, "accepts only a user token bound to it alone") {
		t.Fatalf("kubectl with an admin token: %v %s\nwant the gateway's refusal", err, out)
	}
	// The caller cannot send an identity of its own: the gateway replaces
	// the header with the token it verified.
	status, body := gatewayRequest(ctx, t, h, "/k8s/c1/apis/authentication.k8s.io/v1/selfsubjectreviews", tok,
		http.Header{tunnel.IdentityHeader: {h.sign(&auth.Claims{Kind: auth.KindUser, Clusters: []string{"c1"}, RegisteredClaims: jwt.RegisteredClaims{Subject: "mallory"}})}})
	if status != http.StatusCreated || !strings.Contains(body, `"username":"bob"`) {
		t.Fatalf("whoami with a smuggled identity header: %d %s, want bob", status, body)
	}
}

// bindPerson grants subject rule in namespace ns.
func bindPerson(ctx context.Context, t *testing.T, env *kubetest.Env, ns string, subject rbacv1.Subject, rule rbacv1.PolicyRule) {
	t.Helper()
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "person", Namespace: ns}, Rules: []rbacv1.PolicyRule{rule}}
	if _, err := env.Client.RbacV1().Roles(ns).Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "person", Namespace: ns},
		RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "person"}, Subjects: []rbacv1.Subject{subject}}
	if _, err := env.Client.RbacV1().RoleBindings(ns).Create(ctx, rb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// rawRequest sends one request over a stream to fwd, as the gateway does,
// with token in the identity header, and returns the answer. POSTs send a
// SelfSubjectReview.
func rawRequest(ctx context.Context, t *testing.T, fwd *kubeapi.Server, method, path, token string, extra http.Header) (int, string) {
	t.Helper()
	conn, err := fwd.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	var body io.Reader
	if method == http.MethodPost {
		body = strings.NewReader(`{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}`)
	}
	req, _ := http.NewRequest(method, "http://kubernetes"+path, body)
	req.Header.Set("Content-Type", "application/json")
	for k, v := range extra {
		req.Header[k] = v
	}
	if token != "" {
		req.Header.Set(tunnel.IdentityHeader, token)
	}
	if err := req.Write(conn); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(b)
}

// gatewayRequest POSTs a SelfSubjectReview through the gateway with token
// and extra headers.
func gatewayRequest(ctx context.Context, t *testing.T, h *harness, path, token string, extra http.Header) (int, string) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, h.gw.URL+path,
		strings.NewReader(`{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	for k, v := range extra {
		req.Header[k] = v
	}
	resp, err := h.gw.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(b)
}

// refusedCount reads the agent's refused-requests counter for reason.
func refusedCount(t *testing.T, reg *prometheus.Registry, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "pipeops_agent_impersonation_refused_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no refused counter for %s", reason)
	return 0
}
