package app

import (
	"bytes"
	"os"
	"strings"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"
)

// TestRBACManifestMatchesCode keeps deploy/rbac/agent.yaml exactly what the
// agent's code asks for: no less (the agent would fail) and no more.
func TestRBACManifestMatchesCode(t *testing.T) {
	data, err := os.ReadFile("../../deploy/rbac/agent.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cluster, ns []rbacv1.PolicyRule
	for _, doc := range bytes.Split(data, []byte("\n---\n")) {
		var obj struct {
			Kind  string              `json:"kind"`
			Rules []rbacv1.PolicyRule `json:"rules"`
		}
		if err := yaml.Unmarshal(doc, &obj); err != nil {
			t.Fatalf("parse manifest: %v", err)
		}
		switch obj.Kind {
		case "ClusterRole":
			cluster = obj.Rules
		case "Role":
			ns = obj.Rules
		}
	}
	for name, c := range map[string]struct{ manifest, code []rbacv1.PolicyRule }{
		"ClusterRole": {cluster, ClusterRules()},
		"Role":        {ns, NamespaceRules("pipeops-system")},
	} {
		got, want := Grants(c.manifest), Grants(c.code)
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("%s in deploy/rbac/agent.yaml grants\n  %s\nbut the code needs\n  %s", name, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
		}
	}
}
