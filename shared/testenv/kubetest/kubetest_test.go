package kubetest_test

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"

	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/testenv/kubetest"
)

func TestMain(m *testing.M) { testenv.Main(m, kubetest.Stop) }

func ingress(name, host string) *networkingv1.Ingress {
	pathType := networkingv1.PathTypePrefix
	return &networkingv1.Ingress{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"pipeops.io/managed": "true"}},
		Spec: networkingv1.IngressSpec{Rules: []networkingv1.IngressRule{{
			Host: host,
			IngressRuleValue: networkingv1.IngressRuleValue{HTTP: &networkingv1.HTTPIngressRuleValue{
				Paths: []networkingv1.HTTPIngressPath{{Path: "/", PathType: &pathType, Backend: networkingv1.IngressBackend{
					Service: &networkingv1.IngressServiceBackend{Name: "web", Port: networkingv1.ServiceBackendPort{Number: 80}},
				}}},
			}},
		}}},
	}
}

// TestIngressReachesInformer proves a real API server with real watches: an
// Ingress created after an informer has synced arrives through the watch.
func TestIngressReachesInformer(t *testing.T) {
	env := kubetest.Start(t)
	ns := env.Namespace(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	factory := informers.NewSharedInformerFactoryWithOptions(env.Client, 0, informers.WithNamespace(ns))
	inf := factory.Networking().V1().Ingresses().Informer()
	seen := make(chan *networkingv1.Ingress, 1)
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: func(obj any) {
		seen <- obj.(*networkingv1.Ingress)
	}}); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	factory.Start(stop)
	defer func() { close(stop); factory.Shutdown() }()
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		t.Fatal("informer did not sync")
	}

	if _, err := env.Client.NetworkingV1().Ingresses(ns).Create(ctx, ingress("web", "app.example.com"), metav1.CreateOptions{}); err != nil {
		t.Fatalf("create ingress: %v", err)
	}
	select {
	case got := <-seen:
		if got.Namespace != ns || got.Spec.Rules[0].Host != "app.example.com" {
			t.Fatalf("informer saw %s/%s host %q", got.Namespace, got.Name, got.Spec.Rules[0].Host)
		}
	case <-ctx.Done():
		t.Fatal("ingress never arrived through the informer")
	}
}

// TestServiceAccountRBAC proves RBAC is enforced for ServiceAccount tokens: an
// account allowed to read Ingresses in one namespace gets 403 in another.
func TestServiceAccountRBAC(t *testing.T) {
	env := kubetest.Start(t)
	allowed, other := env.Namespace(t), env.Namespace(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, ns := range []string{allowed, other} {
		if _, err := env.Client.NetworkingV1().Ingresses(ns).Create(ctx, ingress("web", ns+".example.com"), metav1.CreateOptions{}); err != nil {
			t.Fatalf("create ingress in %s: %v", ns, err)
		}
	}

	acct := env.ServiceAccount(t, allowed, "reader", kubetest.Grant{Namespace: allowed, Rules: []rbacv1.PolicyRule{{
		APIGroups: []string{"networking.k8s.io"}, Resources: []string{"ingresses"}, Verbs: []string{"get", "list", "watch"},
	}}})

	list, err := acct.Client.NetworkingV1().Ingresses(allowed).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("list ingresses in the granted namespace: %v", err)
	}
	if len(list.Items) != 1 || list.Items[0].Name != "web" {
		t.Fatalf("granted namespace: got %d ingresses, want the one created", len(list.Items))
	}
	_, err = acct.Client.NetworkingV1().Ingresses(other).List(ctx, metav1.ListOptions{})
	if !apierrors.IsForbidden(err) {
		t.Fatalf("list ingresses in another namespace: err = %v, want 403 Forbidden", err)
	}
	_, err = acct.Client.NetworkingV1().Ingresses(allowed).Create(ctx, ingress("new", "x.example.com"), metav1.CreateOptions{})
	if !apierrors.IsForbidden(err) {
		t.Fatalf("create ingress without the create verb: err = %v, want 403 Forbidden", err)
	}
}

// TestClusterGrantAndKubeconfig checks a cluster-wide grant and that the
// account's kubeconfig works with the real kubectl, as tests of the tunnel
// will use it.
func TestClusterGrantAndKubeconfig(t *testing.T) {
	env := kubetest.Start(t)
	ns := env.Namespace(t)
	acct := env.ServiceAccount(t, ns, "ns-lister", kubetest.Grant{Rules: []rbacv1.PolicyRule{{
		APIGroups: []string{""}, Resources: []string{"namespaces"}, Verbs: []string{"list"},
	}}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nss, err := acct.Client.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("list namespaces with a cluster grant: %v", err)
	}
	found := false
	for _, n := range nss.Items {
		found = found || n.Name == ns
	}
	if !found {
		t.Fatalf("namespace %s not in the list", ns)
	}

	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		testenv.Require(t, "kubectl", fmt.Errorf("%w: %v", testenv.ErrUnavailable, err))
	}
	out, err := exec.CommandContext(ctx, kubectl, "--kubeconfig", acct.Kubeconfig, "get", "namespaces", "-o", "name").CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl get namespaces: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "namespace/"+ns) {
		t.Fatalf("kubectl output lacks namespace/%s:\n%s", ns, out)
	}
	out, err = exec.CommandContext(ctx, kubectl, "--kubeconfig", acct.Kubeconfig, "get", "pods", "-n", ns).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "Forbidden") {
		t.Fatalf("kubectl get pods without the grant: err=%v, want Forbidden:\n%s", err, out)
	}
}
