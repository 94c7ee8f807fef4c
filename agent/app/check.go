package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/version"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/pipeops/tunnel/agent/config"
)

// ErrCheckFailed is returned by Check when at least one check did not pass.
var ErrCheckFailed = errors.New("check failed")

// Check verifies, with the credentials in rc, that the agent can do its work
// in this cluster: that the API server answers, that every permission of
// ClusterRules is granted cluster-wide and every permission of
// NamespaceRules in cfg.Namespace (asked with SelfSubjectAccessReview, one
// review per verb, resource and name), and that the lists the agent starts
// with really succeed. It prints one line per check to out, "ok" or "FAIL"
// and what was checked, and returns an error wrapping ErrCheckFailed when any
// check failed. It changes nothing in the cluster.
//
// It is what `pipeops-agent --check` runs, in the agent's pod after an
// install, or with a kubeconfig of the agent's ServiceAccount before one.
func Check(ctx context.Context, cfg config.Config, rc *rest.Config, out io.Writer) error {
	// Some thirty requests: client-go's default of 5 per second would make
	// the check take seconds.
	rc = rest.CopyConfig(rc)
	if rc.QPS == 0 && rc.RateLimiter == nil {
		rc.QPS, rc.Burst = 50, 100
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	c := &checker{out: out}

	var v version.Info
	raw, err := client.Discovery().RESTClient().Get().AbsPath("/version").Do(ctx).Raw()
	if err == nil {
		err = json.Unmarshal(raw, &v)
	}
	if err != nil {
		c.report(false, "reach the Kubernetes API at %s: %v", rc.Host, err)
		return c.result() // nothing else can pass
	}
	c.report(true, "reach the Kubernetes API at %s (Kubernetes %s)", rc.Host, v.GitVersion)
	if who, err := client.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{}); err == nil {
		fmt.Fprintf(out, "info authenticated as %s\n", who.Status.UserInfo.Username)
	}

	rules := ClusterRules()
	if !cfg.Impersonate {
		// Off, the agent impersonates no one and needs no grant for it.
		rules = slices.DeleteFunc(rules, func(r rbacv1.PolicyRule) bool { return slices.Contains(r.Verbs, "impersonate") })
	}
	for _, a := range accesses("", rules) {
		c.review(ctx, client, a)
	}
	for _, a := range accesses(cfg.Namespace, NamespaceRules(cfg.Namespace)) {
		c.review(ctx, client, a)
	}

	// What the agent lists at start (informers, ingress sync): an allowed
	// review is not proof that the API serves the resource.
	one := metav1.ListOptions{Limit: 1}
	for _, l := range []struct {
		what string
		list func() error
	}{
		{"nodes", func() error { _, err := client.CoreV1().Nodes().List(ctx, one); return err }},
		{"pods", func() error { _, err := client.CoreV1().Pods("").List(ctx, one); return err }},
		{"services", func() error { _, err := client.CoreV1().Services("").List(ctx, one); return err }},
		{"endpointslices.discovery.k8s.io", func() error {
			_, err := client.DiscoveryV1().EndpointSlices("").List(ctx, one)
			return err
		}},
		{"ingresses.networking.k8s.io", func() error {
			_, err := client.NetworkingV1().Ingresses("").List(ctx, one)
			return err
		}},
	} {
		if err := l.list(); err != nil {
			c.report(false, "list %s cluster-wide: %v", l.what, err)
		} else {
			c.report(true, "list %s cluster-wide", l.what)
		}
	}
	return c.result()
}

// checker counts and prints the results of Check.
type checker struct {
	out           io.Writer
	total, failed int
}

func (c *checker) report(ok bool, format string, args ...any) {
	c.total++
	mark := "ok  "
	if !ok {
		c.failed++
		mark = "FAIL"
	}
	fmt.Fprintf(c.out, "%s %s\n", mark, fmt.Sprintf(format, args...))
}

func (c *checker) result() error {
	if c.failed > 0 {
		return fmt.Errorf("%w: %d of %d checks failed", ErrCheckFailed, c.failed, c.total)
	}
	return nil
}

func (c *checker) review(ctx context.Context, client kubernetes.Interface, a authorizationv1.ResourceAttributes) {
	ssar := &authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &a}}
	got, err := client.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, ssar, metav1.CreateOptions{})
	switch {
	case err != nil:
		c.report(false, "may %s: %v", describe(a), err)
	case !got.Status.Allowed:
		why := "not allowed; the agent's ClusterRole must grant it"
		if a.Namespace != "" {
			why = "not allowed; the agent's Role in " + a.Namespace + " must grant it"
		}
		if got.Status.Reason != "" {
			why += " (" + got.Status.Reason + ")"
		}
		if got.Status.EvaluationError != "" {
			why += "; " + got.Status.EvaluationError
		}
		c.report(false, "may %s: %s", describe(a), why)
	default:
		c.report(true, "may %s", describe(a))
	}
}

// accesses expands rules into one access per verb, group, resource and
// resource name, in rule order and without repeats (two rules may grant the
// same access).
func accesses(namespace string, rules []rbacv1.PolicyRule) []authorizationv1.ResourceAttributes {
	var out []authorizationv1.ResourceAttributes
	seen := map[authorizationv1.ResourceAttributes]bool{}
	for _, r := range rules {
		names := r.ResourceNames
		if len(names) == 0 {
			names = []string{""}
		}
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				resource, sub, _ := strings.Cut(res, "/")
				for _, n := range names {
					for _, v := range r.Verbs {
						a := authorizationv1.ResourceAttributes{Namespace: namespace, Verb: v, Group: g, Resource: resource, Subresource: sub, Name: n}
						if !seen[a] {
							seen[a] = true
							out = append(out, a)
						}
					}
				}
			}
		}
	}
	return out
}

// describe renders an access the way kubectl names things:
// "watch ingresses.networking.k8s.io cluster-wide",
// "get configmaps/pipeops-agent-state in namespace pipeops-system".
func describe(a authorizationv1.ResourceAttributes) string {
	what := a.Resource
	if a.Group != "" {
		what += "." + a.Group
	}
	if a.Subresource != "" {
		what += "/" + a.Subresource
	}
	if a.Name != "" {
		what += "/" + a.Name
	}
	where := "cluster-wide"
	if a.Namespace != "" {
		where = "in namespace " + a.Namespace
	}
	return a.Verb + " " + what + " " + where
}
