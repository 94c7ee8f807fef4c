package app

import (
	rbacv1 "k8s.io/api/rbac/v1"

	"github.com/pipeops/tunnel/agent/clusterinfo"
	"github.com/pipeops/tunnel/agent/ingresssync"
	"github.com/pipeops/tunnel/agent/state"
	"github.com/pipeops/tunnel/agent/targets"
)

// ClusterRules is every cluster-wide permission the agent's own work needs
// (deploy/rbac/agent.yaml grants exactly these; a test keeps them equal).
// What callers may do through the Kubernetes API target is a separate grant:
// the agent forwards their requests with its own ServiceAccount.
func ClusterRules() []rbacv1.PolicyRule {
	var rules []rbacv1.PolicyRule
	rules = append(rules, clusterinfo.Rules()...)
	rules = append(rules, targets.Rules()...)
	rules = append(rules, ingresssync.Rules()...)
	return rules
}

// NamespaceRules is what the agent needs in its own namespace: its state.
func NamespaceRules(namespace string) []rbacv1.PolicyRule {
	return state.Rules(namespace)
}
