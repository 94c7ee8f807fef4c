package kubetest

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Grant is a set of RBAC rules given to a ServiceAccount: in one namespace
// (a Role and RoleBinding) or, when Namespace is empty, cluster-wide (a
// ClusterRole and ClusterRoleBinding).
type Grant struct {
	Namespace string
	Rules     []rbacv1.PolicyRule
}

// Account is a ServiceAccount with a token from the TokenRequest API.
type Account struct {
	Name      string
	Namespace string
	// Config authenticates as the account and has exactly its permissions.
	Config *rest.Config
	// Client is a clientset built from Config.
	Client kubernetes.Interface
	// Kubeconfig is the path of a kubeconfig file for the account.
	Kubeconfig string
}

// ServiceAccount creates ServiceAccount name in namespace, binds it to the
// grants, and returns a client config that uses a token issued for it by the
// TokenRequest API (one hour). So a test can run code with exactly the
// permissions a chart or manifest grants. It returns once the API server
// enforces the grants.
func (e *Env) ServiceAccount(t testing.TB, namespace, name string, grants ...Grant) *Account {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := e.createServiceAccount(ctx, t, namespace, name, grants); err != nil {
		t.Fatalf("kubetest: service account %s/%s: %v", namespace, name, err)
	}

	expiry := int64(3600)
	tr, err := e.Client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &expiry},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("kubetest: token for %s/%s: %v", namespace, name, err)
	}
	cfg := &rest.Config{Host: e.Config.Host, BearerToken: tr.Status.Token, TLSClientConfig: rest.TLSClientConfig{CAData: e.Config.CAData}, QPS: 200, Burst: 400}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("kubetest: client for %s/%s: %v", namespace, name, err)
	}
	path := filepath.Join(t.TempDir(), name+".kubeconfig")
	if err := WriteKubeconfig(path, cfg); err != nil {
		t.Fatalf("kubetest: kubeconfig for %s/%s: %v", namespace, name, err)
	}
	return &Account{Name: name, Namespace: namespace, Config: cfg, Client: client, Kubeconfig: path}
}

func (e *Env) createServiceAccount(ctx context.Context, t testing.TB, namespace, name string, grants []Grant) error {
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace}}
	if _, err := e.Client.CoreV1().ServiceAccounts(namespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
		return err
	}
	subject := rbacv1.Subject{Kind: rbacv1.ServiceAccountKind, Name: name, Namespace: namespace}
	for i, g := range grants {
		// Names are unique per call: the same account name may be used in
		// several namespaces, and cluster-scoped objects are shared.
		roleName := fmt.Sprintf("kubetest-%s-%s-%d-%s", namespace, name, i, randomHex(3))
		if err := e.bind(ctx, t, g, roleName, subject); err != nil {
			return err
		}
	}
	return e.waitEnforced(ctx, "system:serviceaccount:"+namespace+":"+name, grants)
}

func (e *Env) bind(ctx context.Context, t testing.TB, g Grant, roleName string, subject rbacv1.Subject) error {
	rbac := e.Client.RbacV1()
	meta := metav1.ObjectMeta{Name: roleName, Namespace: g.Namespace}
	if g.Namespace == "" {
		if _, err := rbac.ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: meta, Rules: g.Rules}, metav1.CreateOptions{}); err != nil {
			return err
		}
		crb := &rbacv1.ClusterRoleBinding{ObjectMeta: meta, Subjects: []rbacv1.Subject{subject},
			RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: roleName}}
		if _, err := rbac.ClusterRoleBindings().Create(ctx, crb, metav1.CreateOptions{}); err != nil {
			return err
		}
		// Cluster-scoped objects outlive the test's namespace: remove them.
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_ = rbac.ClusterRoleBindings().Delete(ctx, roleName, metav1.DeleteOptions{})
			_ = rbac.ClusterRoles().Delete(ctx, roleName, metav1.DeleteOptions{})
		})
		return nil
	}
	if _, err := rbac.Roles(g.Namespace).Create(ctx, &rbacv1.Role{ObjectMeta: meta, Rules: g.Rules}, metav1.CreateOptions{}); err != nil {
		return err
	}
	rb := &rbacv1.RoleBinding{ObjectMeta: meta, Subjects: []rbacv1.Subject{subject},
		RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: roleName}}
	_, err := rbac.RoleBindings(g.Namespace).Create(ctx, rb, metav1.CreateOptions{})
	return err
}

// waitEnforced waits until the authorizer, which learns of new bindings
// through a watch, allows the first verb on the first resource of every rule.
func (e *Env) waitEnforced(ctx context.Context, user string, grants []Grant) error {
	for _, g := range grants {
		for _, r := range g.Rules {
			attrs := sarFor(g.Namespace, r)
			if attrs == nil {
				continue
			}
			for {
				sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{User: user, ResourceAttributes: attrs.res, NonResourceAttributes: attrs.nonRes}}
				got, err := e.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
				if err != nil {
					return fmt.Errorf("check grant: %w", err)
				}
				if got.Status.Allowed {
					break
				}
				select {
				case <-ctx.Done():
					return fmt.Errorf("grant %+v not enforced for %s: %w", r, user, ctx.Err())
				case <-time.After(20 * time.Millisecond):
				}
			}
		}
	}
	return nil
}

type accessAttrs struct {
	res    *authorizationv1.ResourceAttributes
	nonRes *authorizationv1.NonResourceAttributes
}

func sarFor(namespace string, r rbacv1.PolicyRule) *accessAttrs {
	if len(r.Verbs) == 0 {
		return nil
	}
	if len(r.NonResourceURLs) > 0 {
		return &accessAttrs{nonRes: &authorizationv1.NonResourceAttributes{Path: r.NonResourceURLs[0], Verb: r.Verbs[0]}}
	}
	if len(r.Resources) == 0 || len(r.APIGroups) == 0 {
		return nil
	}
	res := &authorizationv1.ResourceAttributes{Namespace: namespace, Verb: r.Verbs[0], Group: r.APIGroups[0]}
	res.Resource, res.Subresource, _ = strings.Cut(r.Resources[0], "/")
	if len(r.ResourceNames) > 0 {
		res.Name = r.ResourceNames[0]
	}
	return &accessAttrs{res: res}
}
