package app

import (
	"sort"

	rbacv1 "k8s.io/api/rbac/v1"

	"github.com/pipeops/tunnel/agent/clusterinfo"
	"github.com/pipeops/tunnel/agent/ingresssync"
	"github.com/pipeops/tunnel/agent/kubeapi"
	"github.com/pipeops/tunnel/agent/leader"
	"github.com/pipeops/tunnel/agent/state"
	"github.com/pipeops/tunnel/agent/targets"
)

// ClusterRules is every cluster-wide permission the agent's own work needs
// (deploy/rbac/agent.yaml grants exactly these; a test keeps them equal),
// with impersonation on (the default; kubeapi.Rules is what it adds).
// What callers may do through the Kubernetes API target is a separate grant,
// to the people themselves (or, with impersonation off, to the agent's
// ServiceAccount).
func ClusterRules() []rbacv1.PolicyRule {
	var rules []rbacv1.PolicyRule
	rules = append(rules, kubeapi.Rules()...)
	rules = append(rules, clusterinfo.Rules()...)
	rules = append(rules, targets.Rules()...)
	rules = append(rules, ingresssync.Rules()...)
	return rules
}

// NamespaceRules is what the agent needs in its own namespace: its state,
// and the Lease its replicas elect the route syncer with.
func NamespaceRules(namespace string) []rbacv1.PolicyRule {
	return append(state.Rules(namespace), leader.Rules()...)
}

// Grants flattens rules into sorted "group/resource/name:verb" strings, one
// per permission, so that two rule lists (the code's, a manifest's, a
// chart's) compare equal however their rules are grouped.
func Grants(rules []rbacv1.PolicyRule) []string {
	set := map[string]bool{}
	for _, r := range rules {
		names := r.ResourceNames
		if len(names) == 0 {
			names = []string{""}
		}
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, n := range names {
					for _, v := range r.Verbs {
						set[g+"/"+res+"/"+n+":"+v] = true
					}
				}
			}
		}
	}
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
