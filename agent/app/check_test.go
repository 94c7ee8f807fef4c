package app

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/client-go/rest"

	"github.com/pipeops/tunnel/agent/config"
	"github.com/pipeops/tunnel/shared/testenv/kubetest"
)

// without returns rules less those for which drop is true.
func without(rules []rbacv1.PolicyRule, drop func(rbacv1.PolicyRule) bool) []rbacv1.PolicyRule {
	return slices.DeleteFunc(slices.Clone(rules), drop)
}

func inGroup(g string) func(rbacv1.PolicyRule) bool {
	return func(r rbacv1.PolicyRule) bool { return slices.Contains(r.APIGroups, g) }
}

func onResource(res string) func(rbacv1.PolicyRule) bool {
	return func(r rbacv1.PolicyRule) bool { return slices.Contains(r.Resources, res) }
}

// unnamed matches rules not limited by resourceNames, as create rules are.
func unnamed(r rbacv1.PolicyRule) bool { return len(r.ResourceNames) == 0 }

// TestCheck runs the agent's check against the real API server with
// ServiceAccounts that have the documented rules, and ones that lack a rule.
func TestCheck(t *testing.T) {
	env := kubetest.Start(t)
	ns := env.Namespace(t)
	for _, tc := range []struct {
		name           string
		cluster, local []rbacv1.PolicyRule
		// wantFail are the lines that must fail (substrings); none means
		// every check passes.
		wantFail []string
	}{
		{name: "documented rules", cluster: ClusterRules(), local: NamespaceRules(ns)},
		{name: "no ingresses", cluster: without(ClusterRules(), inGroup("networking.k8s.io")), local: NamespaceRules(ns),
			wantFail: []string{
				"may get ingresses.networking.k8s.io cluster-wide",
				"may list ingresses.networking.k8s.io cluster-wide",
				"may watch ingresses.networking.k8s.io cluster-wide",
				"list ingresses.networking.k8s.io cluster-wide",
			}},
		{name: "no node metrics", cluster: without(ClusterRules(), inGroup("metrics.k8s.io")), local: NamespaceRules(ns),
			wantFail: []string{"may get nodes.metrics.k8s.io cluster-wide", "may list nodes.metrics.k8s.io cluster-wide"}},
		{name: "no state configmap", cluster: ClusterRules(), local: without(NamespaceRules(ns), onResource("configmaps")),
			wantFail: []string{
				"may get configmaps/pipeops-agent-state in namespace " + ns,
				"may update configmaps/pipeops-agent-state in namespace " + ns,
				"may create configmaps in namespace " + ns,
			}},
		{name: "no state configmap create", cluster: ClusterRules(), local: without(NamespaceRules(ns), func(r rbacv1.PolicyRule) bool { return unnamed(r) && onResource("configmaps")(r) }),
			wantFail: []string{"may create configmaps in namespace " + ns}},
		{name: "no route sync lease", cluster: ClusterRules(), local: without(NamespaceRules(ns), onResource("leases")),
			wantFail: []string{
				"may get leases.coordination.k8s.io/pipeops-agent-route-sync in namespace " + ns,
				"may update leases.coordination.k8s.io/pipeops-agent-route-sync in namespace " + ns,
				"may create leases.coordination.k8s.io in namespace " + ns,
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			grants := []kubetest.Grant{{Rules: tc.cluster}}
			if len(tc.local) > 0 {
				grants = append(grants, kubetest.Grant{Namespace: ns, Rules: tc.local})
			}
			name := "agent-" + strings.ReplaceAll(tc.name, " ", "-")
			acct := env.ServiceAccount(t, ns, name, grants...)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()

			var out bytes.Buffer
			err := Check(ctx, config.Config{Namespace: ns}, acct.Config, &out)
			t.Logf("check output:\n%s", out.String())
			var failed []string
			for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
				if rest, ok := strings.CutPrefix(line, "FAIL "); ok {
					failed = append(failed, rest)
				} else if !strings.HasPrefix(line, "ok   ") && !strings.HasPrefix(line, "info ") {
					t.Errorf("line %q is neither ok, FAIL nor info", line)
				}
			}
			if !strings.Contains(out.String(), "info authenticated as system:serviceaccount:"+ns+":"+name) {
				t.Errorf("output does not say who the check ran as")
			}
			if len(tc.wantFail) == 0 {
				if err != nil || len(failed) > 0 {
					t.Fatalf("Check = %v with failures %q, want all to pass", err, failed)
				}
				return
			}
			if !errors.Is(err, ErrCheckFailed) {
				t.Fatalf("Check = %v, want ErrCheckFailed", err)
			}
			for _, want := range tc.wantFail {
				if !slices.ContainsFunc(failed, func(l string) bool { return strings.HasPrefix(l, want+":") }) {
					t.Errorf("no FAIL line for %q", want)
				}
			}
			if len(failed) != len(tc.wantFail) {
				t.Errorf("%d checks failed, want exactly %d: %q", len(failed), len(tc.wantFail), failed)
			}
		})
	}
}

// TestCheckUnreachable: an API server that does not answer is one failed
// check, not a list of them.
func TestCheckUnreachable(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out bytes.Buffer
	err := Check(ctx, config.Config{Namespace: "pipeops-system"}, &rest.Config{Host: "https://127.0.0.1:1", Timeout: 2 * time.Second}, &out)
	if !errors.Is(err, ErrCheckFailed) {
		t.Fatalf("Check = %v, want ErrCheckFailed", err)
	}
	if got := strings.TrimSpace(out.String()); strings.Count(got, "\n") != 0 || !strings.HasPrefix(got, "FAIL reach the Kubernetes API at https://127.0.0.1:1") {
		t.Fatalf("output = %q, want one FAIL line about reaching the API", got)
	}
}

// TestCheckConfig: check mode needs no control plane URL or token, and
// still refuses a malformed URL.
func TestCheckConfig(t *testing.T) {
	none := func(string) string { return "" }
	c, err := config.Load([]string{"--check", "--namespace", "ns1"}, none)
	if err != nil || !c.Check || c.Namespace != "ns1" {
		t.Fatalf("Load(--check) = %+v, %v; want check mode without PIPEOPS_API_URL and PIPEOPS_TOKEN", c, err)
	}
	if _, err := config.Load(nil, none); err == nil || !strings.Contains(err.Error(), "PIPEOPS_TOKEN") {
		t.Fatalf("Load without --check = %v, want PIPEOPS_TOKEN required", err)
	}
	_, err = config.Load([]string{"--check"}, func(k string) string { return map[string]string{"PIPEOPS_API_URL": "cp:8080"}[k] })
	if err == nil || !strings.Contains(err.Error(), "PIPEOPS_API_URL=") {
		t.Fatalf("Load(--check) with a bad URL = %v, want it refused", err)
	}
}
