package helm_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/pipeops/tunnel/shared/testenv"
)

// The chart's copies of files of the compose stack: a chart can only read
// files inside it (.Files.Get), so it carries copies, kept equal here.
const (
	chartRules       = chartDir + "/files/pipeops-agent.rules.yml"
	composeRules     = "../compose/prometheus/rules/pipeops-agent.rules.yml"
	chartDashboard   = chartDir + "/files/pipeops-tunnel.json"
	composeDashboard = "../compose/grafana/dashboards/pipeops-tunnel.json"
)

// promtool returns the path of promtool: the one in .testenv/bin (`make
// promtool` builds the version the rules are checked with), else one on
// PATH; without either it stops t as testenv.Require says (a skip here, a
// failure in CI).
func promtool(t testing.TB) string {
	t.Helper()
	p, err := testenv.FindTool("promtool", "promtool")
	testenv.Require(t, "promtool", err)
	return p
}

// runPromtool runs promtool with args in dir and fails t unless it exits 0.
func runPromtool(t testing.TB, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command(promtool(t), args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestChartCopiesOfComposeFiles(t *testing.T) {
	for chart, compose := range map[string]string{chartRules: composeRules, chartDashboard: composeDashboard} {
		if readFile(t, chart) != readFile(t, compose) {
			t.Errorf("%s differs from %s, which it copies: cp %s %s", chart, compose, compose, chart)
		}
	}
}

// prometheusRule is the part of a PrometheusRule the tests read.
type prometheusRule struct {
	Metadata metav1.ObjectMeta `json:"metadata"`
	Spec     struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Alert       string            `json:"alert"`
				Expr        string            `json:"expr"`
				Annotations map[string]string `json:"annotations"`
			} `json:"rules"`
		} `json:"groups"`
	} `json:"spec"`
}

// TestPrometheusRule: the rules are off by default, left out where the
// cluster does not serve the PrometheusRule API, and otherwise hold the
// compose stack's agent rules plus a group on this release's Deployment and
// Service. promtool checks them, and runs the Kubernetes group against
// series that name this release and series that name others.
func TestPrometheusRule(t *testing.T) {
	if n := len(kinds(render(t, prometheusRuleAPI...), "PrometheusRule")); n != 0 {
		t.Fatalf("%d PrometheusRules rendered by default", n)
	}
	if n := len(kinds(render(t, "--set", "prometheusRule.enabled=true"), "PrometheusRule")); n != 0 {
		t.Fatalf("%d PrometheusRules rendered for a cluster without the monitoring.coreos.com/v1 API", n)
	}
	args := append([]string{"--set", "prometheusRule.enabled=true", "--set", "prometheusRule.labels.release=prom",
		"--set", "serviceMonitor.enabled=true"}, prometheusRuleAPI...)
	docs := render(t, append(args, serviceMonitorAPI...)...)
	prd := one(t, docs, "PrometheusRule")
	raw, err := yaml.YAMLToJSON(prd.Raw)
	if err != nil {
		t.Fatal(err)
	}
	var pr prometheusRule
	if err := yaml.Unmarshal(raw, &pr); err != nil {
		t.Fatal(err)
	}
	d, _ := deployment(t, docs)
	svc := one(t, docs, "Service")
	if pr.Metadata.Namespace != namespace || pr.Metadata.Labels["release"] != "prom" || pr.Metadata.Labels["app.kubernetes.io/instance"] != release {
		t.Errorf("PrometheusRule metadata = %s", mustJSON(pr.Metadata))
	}

	// The file's groups, unchanged, then the chart's own.
	var file, rendered struct {
		Groups []any `json:"groups"`
	}
	if err := yaml.Unmarshal([]byte(readFile(t, chartRules)), &file); err != nil {
		t.Fatal(err)
	}
	var spec struct {
		Spec json.RawMessage `json:"spec"`
	}
	if err := yaml.Unmarshal(raw, &spec); err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(spec.Spec, &rendered); err != nil {
		t.Fatal(err)
	}
	if len(file.Groups) == 0 || len(rendered.Groups) != len(file.Groups)+1 || !reflect.DeepEqual(rendered.Groups[:len(file.Groups)], file.Groups) {
		t.Fatalf("the PrometheusRule's groups are not those of %s plus one:\n%s", chartRules, prd.Raw)
	}
	k8s := pr.Spec.Groups[len(file.Groups)]
	for _, r := range k8s.Rules {
		// Prometheus, not helm, expands these.
		if !strings.Contains(r.Annotations["description"], "{{ $labels.namespace }}/") {
			t.Errorf("%s: the description lost its Prometheus template: %q", r.Alert, r.Annotations["description"])
		}
	}

	// promtool: the rules are valid, and the Kubernetes group fires for
	// this release's objects only.
	t.Run("promtool", func(t *testing.T) { checkRulesWithPromtool(t, spec.Spec, d.Name, svc.Name) })
}

// checkRulesWithPromtool has promtool check the PrometheusRule's spec (a
// rules file) and run its Kubernetes group against series that name the
// release's Deployment and Service (the ServiceMonitor's job), and series
// that name other objects.
func checkRulesWithPromtool(t *testing.T, rules []byte, deployment, service string) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "rules.yml"), rules, 0o600); err != nil {
		t.Fatal(err)
	}
	if out := runPromtool(t, dir, "check", "rules", "rules.yml"); !strings.Contains(out, "SUCCESS") {
		t.Errorf("promtool check rules:\n%s", out)
	}
	unitTest := fmt.Sprintf(`rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      # Ready for 5 minutes, then not.
      - series: 'kube_deployment_status_replicas_unavailable{namespace="%[1]s", deployment="%[2]s"}'
        values: '0x5 1x30'
      - series: 'kube_deployment_status_replicas_unavailable{namespace="other", deployment="%[2]s"}'
        values: '1x35'
      - series: 'kube_deployment_status_replicas_unavailable{namespace="%[1]s", deployment="other"}'
        values: '1x35'
      - series: 'up{namespace="%[1]s", job="%[3]s", pod="%[2]s-abc"}'
        values: '0x35'
      - series: 'up{namespace="%[1]s", job="other", pod="other-abc"}'
        values: '0x35'
    alert_rule_test:
      - eval_time: 12m
        alertname: PipeOpsAgentNotReady
        exp_alerts: []
      - eval_time: 20m
        alertname: PipeOpsAgentNotReady
        exp_alerts:
          - exp_labels: {severity: critical, namespace: "%[1]s", deployment: "%[2]s"}
            exp_annotations:
              summary: >-
                The agent is not Ready; its tunnel is down or its heartbeats are not acknowledged.
              description: >-
                The agent %[1]s/%[2]s has not been Ready for 10 minutes: it is not connected to
                the gateway, or no heartbeat was acknowledged in the last 90 seconds, or it cannot
                start. `+"`kubectl -n %[1]s logs deploy/%[2]s`"+` and its /status page say why.
      - eval_time: 20m
        alertname: PipeOpsAgentMetricsDown
        exp_alerts:
          - exp_labels: {severity: warning, namespace: "%[1]s", job: "%[3]s", pod: "%[2]s-abc"}
            exp_annotations:
              summary: Prometheus cannot scrape the agent.
              description: The agent %[1]s/%[2]s-abc has not answered on its port 8080 for 5 minutes.
`, namespace, deployment, service)
	if err := os.WriteFile(filepath.Join(dir, "rules_test.yml"), []byte(unitTest), 0o600); err != nil {
		t.Fatal(err)
	}
	runPromtool(t, dir, "test", "rules", "rules_test.yml")
}

// TestGrafanaDashboard: the dashboard ConfigMap is off by default; enabled,
// it carries the Grafana sidecar's label and the compose stack's dashboard,
// byte for byte, in the release namespace or the one named.
func TestGrafanaDashboard(t *testing.T) {
	if n := len(kinds(render(t), "ConfigMap")); n != 0 {
		t.Fatalf("%d ConfigMaps rendered by default", n)
	}
	want := readFile(t, composeDashboard)
	for _, tc := range []struct {
		name, namespace string
		args            []string
		annotations     map[string]string
	}{
		{"defaults", namespace, nil, nil},
		{"namespace and folder", "monitoring",
			[]string{"--set", "grafanaDashboard.namespace=monitoring", "--set", "grafanaDashboard.annotations.grafana_folder=PipeOps"},
			map[string]string{"grafana_folder": "PipeOps"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			docs := render(t, append([]string{"--set", "grafanaDashboard.enabled=true"}, tc.args...)...)
			var cm corev1.ConfigMap
			one(t, docs, "ConfigMap").into(t, &cm)
			if cm.Namespace != tc.namespace || cm.Labels["grafana_dashboard"] != "1" || cm.Labels["app.kubernetes.io/instance"] != release {
				t.Errorf("ConfigMap %s/%s labels %v, want namespace %s and grafana_dashboard=1", cm.Namespace, cm.Name, cm.Labels, tc.namespace)
			}
			if !reflect.DeepEqual(cm.Annotations, tc.annotations) && len(cm.Annotations)+len(tc.annotations) != 0 {
				t.Errorf("annotations %v, want %v", cm.Annotations, tc.annotations)
			}
			if len(cm.Data) != 1 || cm.Data["pipeops-tunnel.json"] != want {
				t.Errorf("the ConfigMap's data is not %s: keys %v, equal %v", composeDashboard, len(cm.Data), cm.Data["pipeops-tunnel.json"] == want)
			}
			if !bytes.Contains([]byte(cm.Data["pipeops-tunnel.json"]), []byte(`"name": "cluster"`)) {
				t.Error("the dashboard has no cluster variable")
			}
		})
	}
}
