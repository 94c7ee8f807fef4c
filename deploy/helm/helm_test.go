// Package helm_test tests the agent's Helm chart (deploy/helm/pipeops-agent)
// and the plain manifests rendered from it (deploy/manifests): what each
// value renders, that the RBAC equals what the agent's code asks for, that
// the manifests are up to date, and, against a real kube-apiserver, that they
// apply and that the agent's own --check passes with the chart's
// ServiceAccount.
//
// helm is found on PATH, then in .testenv/bin (`make helm`); without it the
// tests skip, or fail when CI is set.
package helm_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/pipeops/tunnel/agent/app"
	agentconfig "github.com/pipeops/tunnel/agent/config"
	"github.com/pipeops/tunnel/shared/testenv"
	"github.com/pipeops/tunnel/shared/testenv/kubetest"
)

func TestMain(m *testing.M) { testenv.Main(m, kubetest.Stop, removeAgent) }

const (
	chartDir  = "pipeops-agent"
	release   = "pipeops-agent"
	namespace = "pipeops-system"
	manifests = "../manifests/pipeops-agent.yaml"
)

// helm returns the path of the helm binary, or stops t as testenv.Require
// says.
func helm(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("helm"); err == nil {
		return p
	}
	if d := testenv.ToolsDir(); d != "" {
		p := filepath.Join(d, "helm")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	testenv.Require(t, "helm", fmt.Errorf("%w: helm is neither on PATH nor in %s; run `make helm`", testenv.ErrUnavailable, testenv.ToolsDir()))
	return ""
}

func kubectl(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("kubectl")
	if err != nil {
		testenv.Require(t, "kubectl", fmt.Errorf("%w: %v; run `make testenv`", testenv.ErrUnavailable, err))
	}
	return p
}

// doc is one object of a rendered chart.
type doc struct {
	Kind, Name, Namespace string
	Raw                   []byte
}

// into decodes d into v (a typed Kubernetes object or a map).
func (d doc) into(t testing.TB, v any) {
	t.Helper()
	if err := yaml.UnmarshalStrict(d.Raw, v); err != nil {
		t.Fatalf("decode %s %s: %v\n%s", d.Kind, d.Name, err, d.Raw)
	}
}

// helmTemplate renders the chart as release pipeops-agent in pipeops-system
// with args (--set ...) and returns its output, or helm's error output.
func helmTemplate(t testing.TB, args ...string) (string, error) {
	t.Helper()
	return chartTemplate(t, release, chartDir, args...)
}

// chartTemplate runs helm template of chart as release rel with args.
func chartTemplate(t testing.TB, rel, chart string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(helm(t), append([]string{"template", rel, chart, "--namespace", namespace}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("helm template: %v: %s", err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// render renders the chart with a token and args, and parses the objects.
func render(t testing.TB, args ...string) []doc {
	t.Helper()
	out, err := helmTemplate(t, append([]string{"--set", "agent.pipeops.token=test-token"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	return parse(t, out)
}

func parse(t testing.TB, out string) []doc {
	t.Helper()
	var docs []doc
	r := k8syaml.NewYAMLReader(bufio.NewReader(strings.NewReader(out)))
	for {
		raw, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs
		}
		if err != nil {
			t.Fatalf("split rendered YAML: %v", err)
		}
		var meta struct {
			Kind     string            `json:"kind"`
			Metadata metav1.ObjectMeta `json:"metadata"`
		}
		if err := yaml.Unmarshal(raw, &meta); err != nil {
			t.Fatalf("parse rendered YAML: %v\n%s", err, raw)
		}
		if meta.Kind == "" {
			continue // only comments
		}
		docs = append(docs, doc{Kind: meta.Kind, Name: meta.Metadata.Name, Namespace: meta.Metadata.Namespace, Raw: raw})
	}
}

func kinds(docs []doc, kind string) []doc {
	var out []doc
	for _, d := range docs {
		if d.Kind == kind {
			out = append(out, d)
		}
	}
	return out
}

// one returns the only object of kind.
func one(t testing.TB, docs []doc, kind string) doc {
	t.Helper()
	found := kinds(docs, kind)
	if len(found) != 1 {
		t.Fatalf("rendered %d objects of kind %s, want 1", len(found), kind)
	}
	return found[0]
}

func deployment(t testing.TB, docs []doc) (*appsv1.Deployment, corev1.Container) {
	t.Helper()
	var d appsv1.Deployment
	one(t, docs, "Deployment").into(t, &d)
	if n := len(d.Spec.Template.Spec.Containers); n != 1 {
		t.Fatalf("the Deployment has %d containers, want 1", n)
	}
	return &d, d.Spec.Template.Spec.Containers[0]
}

func env(c corev1.Container, name string) *corev1.EnvVar {
	for i := range c.Env {
		if c.Env[i].Name == name {
			return &c.Env[i]
		}
	}
	return nil
}

// helmLint runs `helm lint` on the chart with args and returns its output
// and whether it passed.
func helmLint(t testing.TB, args ...string) (string, bool) {
	t.Helper()
	return chartLint(t, chartDir, args...)
}

// chartLint runs helm lint of chart with args: its output, and whether it
// passed.
func chartLint(t testing.TB, chart string, args ...string) (string, bool) {
	t.Helper()
	out, err := exec.Command(helm(t), append([]string{"lint", chart}, args...)...).CombinedOutput()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("helm lint: %v", err)
	}
	return string(out), err == nil
}

// TestLint: with the default values (no token) helm lint fails, saying
// why; it must not pass with an "[INFO] Fail" as it does for a template's
// fail. With the values files in ci/ (the required ones, and everything
// switched on) lint --strict passes without a single finding.
func TestLint(t *testing.T) {
	out, ok := helmLint(t)
	if ok || !strings.Contains(out, "1 chart(s) failed") || !strings.Contains(out, "/agent/pipeops/token") {
		t.Errorf("helm lint with the default values passed, or did not name the token:\n%s", out)
	}
	lintCIValues(t, chartDir)
}

// lintCIValues: with each values file in chart's ci/ (at least two), lint
// --strict passes without a single finding.
func lintCIValues(t *testing.T, chart string) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(chart, "ci", "*-values.yaml"))
	if err != nil || len(files) < 2 {
		t.Fatalf("values files in %s/ci: %v %v", chart, files, err)
	}
	for _, f := range files {
		out, ok := chartLint(t, chart, "--strict", "-f", f)
		if !ok || strings.Contains(out, "[INFO]") || strings.Contains(out, "[WARNING]") || strings.Contains(out, "[ERROR]") {
			t.Errorf("helm lint --strict -f %s: passed %v, want a pass without findings:\n%s", f, ok, out)
		}
	}
}

// TestRefusedValues: values the chart must refuse. values.schema.json
// refuses each (want: its message names the value), so that helm lint
// fails too; where the schema can be skipped (--skip-schema-validation),
// the templates refuse them again with a message that says what to do
// (wantTemplate).
func TestRefusedValues(t *testing.T) {
	token := []string{"--set", "agent.pipeops.token=t"}
	for _, tc := range []struct {
		name               string
		args               []string
		want, wantTemplate string
	}{
		{"no token", nil, "/agent/pipeops/token': minLength", "agent.pipeops.token is required"},
		{"token and existing secret", []string{"--set", "agent.pipeops.token=t", "--set", "agent.pipeops.existingSecret=s"},
			"/agent/pipeops/existingSecret': value must be ''", "set only one of agent.pipeops.token and agent.pipeops.existingSecret"},
		{"api url not http", append([]string{"--set", "agent.pipeops.apiUrl=cp.example.com"}, token...),
			"/agent/pipeops/apiUrl", "must be an http(s) URL"},
		{"api url with a fragment", append([]string{"--set", "agent.pipeops.apiUrl=https://cp.example.com#x"}, token...),
			"/agent/pipeops/apiUrl", "must be an http(s) URL"},
		{"api url with trailing text", append([]string{"--set", "agent.pipeops.apiUrl=https://cp.example.com/ x"}, token...),
			"/agent/pipeops/apiUrl", "must be an http(s) URL"},
		{"ingress sync as a string", append([]string{"--set-string", "agent.enableIngressSync=false"}, token...),
			"/agent/enableIngressSync': got string, want boolean", ""},
		{"misspelt value", append([]string{"--set", "agent.enableIngresSync=false"}, token...), "'enableIngresSync' not allowed", ""},
		{"eleven replicas", append([]string{"--set", "replicaCount=11"}, token...), "/replicaCount", ""},
		{"network policy without api server", append([]string{"--set", "networkPolicy.enabled=true"}, token...),
			"/networkPolicy/apiServer/cidrs': minItems", "networkPolicy.apiServer.cidrs is required"},
		{"no service account name", append([]string{"--set", "serviceAccount.create=false"}, token...),
			"/serviceAccount/name': minLength", "serviceAccount.name is required"},
		{"extra env the chart sets", append([]string{"--set", "extraEnv[0].name=PIPEOPS_TOKEN", "--set", "extraEnv[0].value=x"}, token...),
			"/extraEnv/0/name': 'not' failed", ""},
		{"pod label the chart sets", append([]string{"--set", "podLabels.app\\.kubernetes\\.io/name=x"}, token...),
			"/podLabels/app.kubernetes.io~1name': false schema", "podLabels may not set app.kubernetes.io/name"},
		{"volume mount without a path", append([]string{"--set", "extraVolumeMounts[0].name=v"}, token...),
			"/extraVolumeMounts/0': missing property 'mountPath'", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := helmTemplate(t, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("helm template %v: err = %v, want one containing %q", tc.args, err, tc.want)
			}
			if out, ok := helmLint(t, tc.args...); ok || !strings.Contains(out, tc.want) {
				t.Errorf("helm lint %v passed, or without %q:\n%s", tc.args, tc.want, out)
			}
			if tc.wantTemplate == "" {
				return
			}
			_, err = helmTemplate(t, append(tc.args, "--skip-schema-validation")...)
			if err == nil || !strings.Contains(err.Error(), tc.wantTemplate) {
				t.Errorf("helm template --skip-schema-validation %v: err = %v, want one containing %q", tc.args, err, tc.wantTemplate)
			}
		})
	}
}

// TestIngressSync: false must render "false" (a Helm `default` would turn
// it into true), whether it comes from --set or a values file.
func TestIngressSync(t *testing.T) {
	valuesFile := filepath.Join(t.TempDir(), "values.yaml")
	if err := os.WriteFile(valuesFile, []byte("agent:\n  enableIngressSync: false\n  autoInstallComponents: true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name              string
		args              []string
		wantSync, wantAIC string
	}{
		{"default", nil, "true", "false"},
		{"set false", []string{"--set", "agent.enableIngressSync=false"}, "false", "false"},
		{"set true", []string{"--set", "agent.enableIngressSync=true"}, "true", "false"},
		{"values file", []string{"-f", valuesFile}, "false", "true"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, c := deployment(t, render(t, tc.args...))
			if e := env(c, "ENABLE_INGRESS_SYNC"); e == nil || e.Value != tc.wantSync {
				t.Errorf("ENABLE_INGRESS_SYNC = %+v, want %q", e, tc.wantSync)
			}
			if e := env(c, "PIPEOPS_AUTO_INSTALL_COMPONENTS"); e == nil || e.Value != tc.wantAIC {
				t.Errorf("PIPEOPS_AUTO_INSTALL_COMPONENTS = %+v, want %q", e, tc.wantAIC)
			}
		})
	}
}

// TestAgentValues: each agent.* value reaches its environment variable.
func TestAgentValues(t *testing.T) {
	_, c := deployment(t, render(t,
		"--set", "agent.pipeops.apiUrl=https://cp.example.com:8443",
		"--set", "agent.clusterName=edge-1",
		"--set", "agent.ingressController=ingress-nginx/ingress-nginx-controller",
		"--set", "agent.logLevel=debug", "--set", "agent.logFormat=json"))
	for name, want := range map[string]string{
		"PIPEOPS_API_URL":            "https://cp.example.com:8443",
		"PIPEOPS_CLUSTER_NAME":       "edge-1",
		"INGRESS_CONTROLLER_SERVICE": "ingress-nginx/ingress-nginx-controller",
		"LOG_LEVEL":                  "debug",
		"LOG_FORMAT":                 "json",
		"AGENT_LISTEN_ADDR":          ":8080",
	} {
		if e := env(c, name); e == nil || e.Value != want {
			t.Errorf("%s = %+v, want %q", name, e, want)
		}
	}
	// A path is allowed: a control plane behind a path prefix.
	_, c = deployment(t, render(t, "--set", "agent.pipeops.apiUrl=http://cp.example.com/pipeops/"))
	if e := env(c, "PIPEOPS_API_URL"); e == nil || e.Value != "http://cp.example.com/pipeops/" {
		t.Errorf("PIPEOPS_API_URL = %+v, want the URL with its path", e)
	}
	// Unset optional values render no variable, so the agent's own
	// defaults apply.
	_, c = deployment(t, render(t))
	for _, name := range []string{"PIPEOPS_CLUSTER_NAME", "INGRESS_CONTROLLER_SERVICE"} {
		if e := env(c, name); e != nil {
			t.Errorf("%s rendered without its value: %+v", name, e)
		}
	}
}

// TestTokenInSecretOnly: the token is in the chart's Secret and nowhere else
// (never in a ConfigMap, never a variable's value); the agent reads it from
// the Secret mounted as a file, 0440 to the pod's fsGroup, and the agent's
// own configuration code accepts that file as the kubelet writes it.
func TestTokenInSecretOnly(t *testing.T) {
	const token = "eyJhbGciOiJFZERTQSJ9.unique-test-token"
	docs := render(t, "--set", "agent.pipeops.token="+token)
	var secret corev1.Secret
	sd := one(t, docs, "Secret")
	sd.into(t, &secret)
	if secret.StringData["token"] != token {
		t.Fatalf("Secret %s holds %q under token, want the token", secret.Name, secret.StringData["token"])
	}
	for _, d := range docs {
		if d.Kind != "Secret" && bytes.Contains(d.Raw, []byte(token)) {
			t.Errorf("the token appears in %s %s", d.Kind, d.Name)
		}
	}
	if cms := kinds(docs, "ConfigMap"); len(cms) != 0 {
		t.Errorf("the chart renders ConfigMaps %v; the agent's state ConfigMap is its own to create", cms)
	}
	d, c := deployment(t, docs)
	if e := env(c, "PIPEOPS_TOKEN"); e != nil {
		t.Errorf("PIPEOPS_TOKEN = %+v: the token must come as a file", e)
	}
	e := env(c, "PIPEOPS_TOKEN_FILE")
	if e == nil {
		t.Fatal("no PIPEOPS_TOKEN_FILE")
	}
	spec := d.Spec.Template.Spec
	f := secretFileAt(t, spec, c, e.Value)
	if f.secret != secret.Name || f.key != "token" || f.mode != 0o440 || spec.SecurityContext == nil || spec.SecurityContext.FSGroup == nil {
		t.Errorf("token file from %+v, fsGroup %v; want %s/token, mode 0440, an fsGroup", f, spec.SecurityContext, secret.Name)
	}
	getenv := containerEnv(t, spec, c, map[string]map[string]string{secret.Name: secret.StringData}, t.TempDir())
	cfg, err := agentconfig.Load(nil, func(k string) string {
		if k == "PIPEOPS_API_URL" {
			return "https://cp.example.com"
		}
		return getenv(k)
	})
	if err != nil || cfg.Token != token {
		t.Errorf("the agent's config.Load with the rendered environment: token read %v, err %v", cfg.Token == token, err)
	}
	if _, err := helmTemplate(t, "--set", "agent.pipeops.token=t", "--set", "podSecurityContext.fsGroup=null"); err == nil || !strings.Contains(err.Error(), "podSecurityContext.fsGroup is required") {
		t.Errorf("no fsGroup: %v, want a refusal naming it", err)
	}
}

func TestExistingSecret(t *testing.T) {
	out, err := helmTemplate(t, "--set", "agent.pipeops.existingSecret=my-agent-token", "--set", "agent.pipeops.existingSecretKey=jwt")
	if err != nil {
		t.Fatal(err)
	}
	docs := parse(t, out)
	if s := kinds(docs, "Secret"); len(s) != 0 {
		t.Fatalf("rendered Secrets %v with existingSecret set", s)
	}
	d, c := deployment(t, docs)
	e := env(c, "PIPEOPS_TOKEN_FILE")
	if e == nil {
		t.Fatal("no PIPEOPS_TOKEN_FILE")
	}
	if f := secretFileAt(t, d.Spec.Template.Spec, c, e.Value); f.secret != "my-agent-token" || f.key != "jwt" {
		t.Fatalf("the token file comes from %+v, want my-agent-token/jwt", f)
	}
	if _, ok := d.Spec.Template.Annotations["checksum/token"]; ok {
		t.Error("a token checksum is rendered though the chart does not know the token")
	}
}

// TestReplicas renders several agent replicas: each names its tunnel with
// its pod name, a PodDisruptionBudget keeps all but one up through a node
// drain, and the replicas prefer different nodes unless affinity is set.
func TestReplicas(t *testing.T) {
	docs := render(t, "--set", "replicaCount=3")
	d, c := deployment(t, docs)
	if *d.Spec.Replicas != 3 {
		t.Errorf("replicas %d, want 3", *d.Spec.Replicas)
	}
	if e := env(c, "POD_NAME"); e == nil || e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "metadata.name" {
		t.Errorf("POD_NAME = %+v, want the pod's name from the downward API", e)
	}
	var pdb policyv1.PodDisruptionBudget
	one(t, docs, "PodDisruptionBudget").into(t, &pdb)
	if pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.IntValue() != 1 || pdb.Spec.Selector == nil ||
		!maps.Equal(pdb.Spec.Selector.MatchLabels, d.Spec.Selector.MatchLabels) {
		t.Errorf("PodDisruptionBudget %+v, want maxUnavailable 1 over the Deployment's pods", pdb.Spec)
	}
	aff := d.Spec.Template.Spec.Affinity
	if aff == nil || aff.PodAntiAffinity == nil || len(aff.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution) != 1 {
		t.Fatalf("affinity %+v, want a preferred anti-affinity", aff)
	}
	term := aff.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution[0].PodAffinityTerm
	if term.TopologyKey != "kubernetes.io/hostname" || !maps.Equal(term.LabelSelector.MatchLabels, d.Spec.Selector.MatchLabels) {
		t.Errorf("anti-affinity term %+v, want by host name over the Deployment's pods", term)
	}
	// The user's affinity wins; the budget can be turned off.
	docs = render(t, "--set", "replicaCount=2", "--set", "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].key=pool",
		"--set", "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator=Exists",
		"--set", "podDisruptionBudget.enabled=false")
	d, _ = deployment(t, docs)
	if aff := d.Spec.Template.Spec.Affinity; aff == nil || aff.NodeAffinity == nil || aff.PodAntiAffinity != nil {
		t.Errorf("with the user's affinity: %+v", aff)
	}
	if n := len(kinds(docs, "PodDisruptionBudget")); n != 0 {
		t.Errorf("podDisruptionBudget.enabled=false rendered %d", n)
	}
}

// TestDeployment checks the defaults of the pod: one replica that rolls (a
// new one up before the old one stops), resources, the restricted security
// context, probes, ports and the downward API.
func TestDeployment(t *testing.T) {
	docs := render(t, "--set", "podAnnotations.example\\.com/team=edge", "--set", "nodeSelector.kubernetes\\.io/os=linux",
		"--set", "imagePullSecrets[0].name=regcred")
	d, c := deployment(t, docs)
	spec := d.Spec.Template.Spec

	if ru := d.Spec.Strategy.RollingUpdate; d.Spec.Replicas == nil || *d.Spec.Replicas != 1 || d.Spec.Strategy.Type != appsv1.RollingUpdateDeploymentStrategyType ||
		ru == nil || ru.MaxUnavailable == nil || ru.MaxUnavailable.IntValue() != 0 || ru.MaxSurge == nil || ru.MaxSurge.IntValue() != 1 {
		t.Errorf("replicas %v strategy %+v, want 1, rolling with a surge of 1 and none unavailable", d.Spec.Replicas, d.Spec.Strategy)
	}
	if spec.Affinity != nil || len(kinds(docs, "PodDisruptionBudget")) != 0 {
		t.Errorf("one replica: affinity %v and a PodDisruptionBudget, want neither", spec.Affinity)
	}
	chart, err := os.ReadFile(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var meta struct {
		AppVersion string `json:"appVersion"`
	}
	if err := yaml.Unmarshal(chart, &meta); err != nil {
		t.Fatal(err)
	}
	if want := "ghcr.io/pipeops/pipeops-agent:" + meta.AppVersion; c.Image != want || c.ImagePullPolicy != corev1.PullIfNotPresent {
		t.Errorf("image %q (%s), want %q (IfNotPresent)", c.Image, c.ImagePullPolicy, want)
	}
	if len(spec.ImagePullSecrets) != 1 || spec.ImagePullSecrets[0].Name != "regcred" {
		t.Errorf("imagePullSecrets = %v", spec.ImagePullSecrets)
	}
	if spec.NodeSelector["kubernetes.io/os"] != "linux" || d.Spec.Template.Annotations["example.com/team"] != "edge" ||
		d.Spec.Template.Annotations["checksum/token"] == "" {
		t.Errorf("nodeSelector %v, pod annotations %v", spec.NodeSelector, d.Spec.Template.Annotations)
	}

	var sa corev1.ServiceAccount
	one(t, docs, "ServiceAccount").into(t, &sa)
	if spec.ServiceAccountName != sa.Name || spec.AutomountServiceAccountToken == nil || !*spec.AutomountServiceAccountToken {
		t.Errorf("pod runs as %q (automount %v), want ServiceAccount %q with its token mounted", spec.ServiceAccountName, spec.AutomountServiceAccountToken, sa.Name)
	}

	// Resources: requests 100m/128Mi, memory limited, CPU not.
	res := c.Resources
	for name, q := range map[string]struct {
		got  resource.Quantity
		want string
	}{
		"requests.cpu":    {res.Requests[corev1.ResourceCPU], "100m"},
		"requests.memory": {res.Requests[corev1.ResourceMemory], "128Mi"},
		"limits.memory":   {res.Limits[corev1.ResourceMemory], "256Mi"},
	} {
		if q.got.Cmp(resource.MustParse(q.want)) != 0 {
			t.Errorf("resources.%s = %s, want %s", name, q.got.String(), q.want)
		}
	}
	if _, ok := res.Limits[corev1.ResourceCPU]; ok {
		t.Error("a CPU limit is set by default; the agent's bursts would be throttled")
	}

	// Security: non-root 65532, read-only root, no privilege escalation, no
	// capabilities, RuntimeDefault seccomp.
	sc := c.SecurityContext
	if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser != 65532 ||
		sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" || len(sc.Capabilities.Add) != 0 ||
		sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("container securityContext = %s", mustJSON(sc))
	}
	psc := spec.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser != 65532 ||
		psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod securityContext = %s", mustJSON(psc))
	}

	// Port and probes.
	if len(c.Ports) != 1 || c.Ports[0].Name != "http-metrics" || c.Ports[0].ContainerPort != 8080 {
		t.Errorf("ports = %v, want http-metrics 8080", c.Ports)
	}
	for name, p := range map[string]struct {
		probe *corev1.Probe
		path  string
	}{"liveness": {c.LivenessProbe, "/health"}, "readiness": {c.ReadinessProbe, "/ready"}, "startup": {c.StartupProbe, "/health"}} {
		if p.probe == nil || p.probe.HTTPGet == nil || p.probe.HTTPGet.Path != p.path || p.probe.HTTPGet.Port != intstr.FromString("http-metrics") {
			t.Errorf("%s probe = %s, want GET %s on http-metrics (8080)", name, mustJSON(p.probe), p.path)
		}
	}

	e := env(c, "POD_NAMESPACE")
	if e == nil || e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "metadata.namespace" {
		t.Errorf("POD_NAMESPACE = %+v, want the downward API's metadata.namespace", e)
	}
}

// TestPodValues: the values that add to the pod (proxy settings among
// them) reach it, after and beside the chart's own, which they leave alone.
func TestPodValues(t *testing.T) {
	valuesFile := filepath.Join(t.TempDir(), "values.yaml")
	values := `
extraEnv:
  - {name: HTTPS_PROXY, value: "http://proxy.example.com:3128"}
  - {name: NO_PROXY, value: "10.96.0.0/12,.svc"}
  - name: PROXY_PASSWORD
    valueFrom: {secretKeyRef: {name: proxy, key: password}}
envFrom:
  - secretRef: {name: agent-proxy}
podLabels: {example.com/team: edge}
podAnnotations: {example.com/owner: platform}
priorityClassName: pipeops-critical
extraVolumes:
  - name: proxy-ca
    configMap: {name: proxy-ca}
extraVolumeMounts:
  - {name: proxy-ca, mountPath: /etc/pipeops/proxy-ca, readOnly: true}
`
	if err := os.WriteFile(valuesFile, []byte(values), 0o600); err != nil {
		t.Fatal(err)
	}
	d, c := deployment(t, render(t, "-f", valuesFile))
	spec := d.Spec.Template.Spec

	var names []string
	for _, e := range c.Env {
		names = append(names, e.Name)
	}
	if n := len(names); n < 3 || strings.Join(names[n-3:], ",") != "HTTPS_PROXY,NO_PROXY,PROXY_PASSWORD" {
		t.Errorf("env = %v, want the chart's variables followed by extraEnv's", names)
	}
	if e := env(c, "HTTPS_PROXY"); e == nil || e.Value != "http://proxy.example.com:3128" {
		t.Errorf("HTTPS_PROXY = %+v", e)
	}
	if e := env(c, "PROXY_PASSWORD"); e == nil || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil || e.ValueFrom.SecretKeyRef.Key != "password" {
		t.Errorf("PROXY_PASSWORD = %+v, want its secretKeyRef", e)
	}
	if e := env(c, "PIPEOPS_TOKEN_FILE"); e == nil || e.Value == "" {
		t.Errorf("PIPEOPS_TOKEN_FILE = %+v, lost among the extra variables", e)
	}
	if len(c.EnvFrom) != 1 || c.EnvFrom[0].SecretRef == nil || c.EnvFrom[0].SecretRef.Name != "agent-proxy" {
		t.Errorf("envFrom = %s", mustJSON(c.EnvFrom))
	}

	labels := d.Spec.Template.Labels
	if labels["example.com/team"] != "edge" {
		t.Errorf("pod labels %v lack podLabels", labels)
	}
	for k, v := range d.Spec.Selector.MatchLabels {
		if labels[k] != v {
			t.Errorf("the selector's %s=%s is not on the pod any more: %v", k, v, labels)
		}
	}
	if _, ok := d.Labels["example.com/team"]; ok {
		t.Error("podLabels reach the Deployment's own labels")
	}
	if a := d.Spec.Template.Annotations; a["example.com/owner"] != "platform" || a["checksum/token"] == "" {
		t.Errorf("pod annotations %v, want podAnnotations and checksum/token", a)
	}
	if spec.PriorityClassName != "pipeops-critical" {
		t.Errorf("priorityClassName = %q", spec.PriorityClassName)
	}
	// The token's volume first, then extraVolumes.
	if len(spec.Volumes) != 2 || spec.Volumes[0].Name != "token" || spec.Volumes[1].Name != "proxy-ca" || spec.Volumes[1].ConfigMap == nil || spec.Volumes[1].ConfigMap.Name != "proxy-ca" {
		t.Errorf("volumes = %s", mustJSON(spec.Volumes))
	}
	if len(c.VolumeMounts) != 2 || c.VolumeMounts[1].MountPath != "/etc/pipeops/proxy-ca" || !c.VolumeMounts[1].ReadOnly {
		t.Errorf("volumeMounts = %s", mustJSON(c.VolumeMounts))
	}
	if sc := c.SecurityContext; sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("extra volumes turned the read-only root filesystem off")
	}

	// Unset, none of them renders anything (the token's volume is the
	// chart's own).
	d, c = deployment(t, render(t))
	if len(c.EnvFrom)+len(c.VolumeMounts)+len(d.Spec.Template.Spec.Volumes) != 2 || d.Spec.Template.Spec.PriorityClassName != "" {
		t.Errorf("defaults render envFrom %v, mounts %v, volumes %v, priority class %q",
			c.EnvFrom, c.VolumeMounts, d.Spec.Template.Spec.Volumes, d.Spec.Template.Spec.PriorityClassName)
	}
}

// TestChartIcon: Chart.yaml's icon is a URL (helm wants one) of the SVG
// kept next to it, in the repository the chart's home names.
func TestChartIcon(t *testing.T) {
	var meta struct {
		Home, Icon string
	}
	if err := yaml.Unmarshal([]byte(readFile(t, filepath.Join(chartDir, "Chart.yaml"))), &meta); err != nil {
		t.Fatal(err)
	}
	repo, ok := strings.CutPrefix(meta.Home, "https://github.com/")
	if !ok {
		t.Fatalf("home %q is not a GitHub repository", meta.Home)
	}
	path, ok := strings.CutPrefix(meta.Icon, "https://raw.githubusercontent.com/"+repo+"/main/")
	if !ok {
		t.Fatalf("icon %q is not a file of %s's main branch", meta.Icon, meta.Home)
	}
	root, err := testenv.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	svg := readFile(t, filepath.Join(root, filepath.FromSlash(path)))
	if !strings.HasPrefix(svg, "<svg xmlns=\"http://www.w3.org/2000/svg\"") || !strings.HasSuffix(svg, "</svg>\n") {
		t.Errorf("%s is not an SVG image", path)
	}
}

func mustJSON(v any) string {
	b, err := yaml.Marshal(v)
	if err != nil {
		return err.Error()
	}
	return string(b)
}

func TestNetworkPolicy(t *testing.T) {
	if n := len(kinds(render(t), "NetworkPolicy")); n != 0 {
		t.Fatalf("%d NetworkPolicies rendered by default", n)
	}
	docs := render(t, "--set", "networkPolicy.enabled=true",
		"--set", "networkPolicy.apiServer.cidrs={192.0.2.10/32,192.0.2.11/32}", "--set", "networkPolicy.apiServer.ports={6443}",
		"--set", "networkPolicy.controlPlane.cidrs={198.51.100.0/28}",
		"--set", "networkPolicy.gateway.cidrs={203.0.113.7/32}", "--set", "networkPolicy.gateway.ports={443,8443}",
		"--set", "networkPolicy.extraEgress[0].to[0].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=ingress-nginx")
	var np networkingv1.NetworkPolicy
	one(t, docs, "NetworkPolicy").into(t, &np)
	d, _ := deployment(t, docs)
	for k, v := range np.Spec.PodSelector.MatchLabels {
		if d.Spec.Template.Labels[k] != v {
			t.Errorf("the policy selects %s=%s, which the agent's pod lacks", k, v)
		}
	}
	if len(np.Spec.PolicyTypes) != 2 {
		t.Errorf("policyTypes = %v, want Ingress and Egress", np.Spec.PolicyTypes)
	}
	if len(np.Spec.Ingress) != 1 || len(np.Spec.Ingress[0].From) != 0 || len(np.Spec.Ingress[0].Ports) != 1 ||
		np.Spec.Ingress[0].Ports[0].Port.String() != "http-metrics" {
		t.Errorf("ingress = %s, want only the http-metrics port", mustJSON(np.Spec.Ingress))
	}

	// Flatten egress to "peer port/proto" lines.
	var got []string
	for _, r := range np.Spec.Egress {
		for _, to := range r.To {
			peer := ""
			switch {
			case to.IPBlock != nil:
				peer = to.IPBlock.CIDR
			case to.NamespaceSelector != nil:
				peer = "ns:" + to.NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"]
				if to.PodSelector != nil {
					peer += ",pods:" + to.PodSelector.MatchLabels["k8s-app"]
				}
			}
			if len(r.Ports) == 0 {
				got = append(got, peer+" any")
			}
			for _, p := range r.Ports {
				got = append(got, fmt.Sprintf("%s %s/%s", peer, p.Port.String(), *p.Protocol))
			}
		}
	}
	sort.Strings(got)
	want := []string{
		"192.0.2.10/32 6443/TCP", "192.0.2.11/32 6443/TCP",
		"198.51.100.0/28 443/TCP",
		"203.0.113.7/32 443/TCP", "203.0.113.7/32 8443/TCP",
		"ns:ingress-nginx any",
		"ns:kube-system,pods:kube-dns 53/TCP", "ns:kube-system,pods:kube-dns 53/UDP",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("egress allows\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

// The APIs of the Prometheus Operator, which helm template does not assume
// a cluster has.
var (
	serviceMonitorAPI = []string{"--api-versions", "monitoring.coreos.com/v1/ServiceMonitor"}
	prometheusRuleAPI = []string{"--api-versions", "monitoring.coreos.com/v1/PrometheusRule"}
)

func TestServiceMonitor(t *testing.T) {
	if docs := render(t, serviceMonitorAPI...); len(kinds(docs, "ServiceMonitor"))+len(kinds(docs, "Service")) != 0 {
		t.Fatal("a Service or ServiceMonitor is rendered by default")
	}
	// Enabled on a cluster without the Prometheus Operator: the Service,
	// but no ServiceMonitor, which the API server would refuse.
	docs := render(t, "--set", "serviceMonitor.enabled=true")
	if len(kinds(docs, "ServiceMonitor")) != 0 || len(kinds(docs, "Service")) != 1 {
		t.Error("serviceMonitor.enabled without the monitoring.coreos.com/v1 API must render the Service only")
	}
	docs = render(t, append([]string{"--set", "serviceMonitor.enabled=true", "--set", "serviceMonitor.labels.release=prom"}, serviceMonitorAPI...)...)
	var svc corev1.Service
	one(t, docs, "Service").into(t, &svc)
	if !svc.Spec.PublishNotReadyAddresses {
		t.Error("the Service leaves out a pod that is not Ready: its metrics would vanish while its tunnel is down")
	}
	var sm struct {
		Metadata metav1.ObjectMeta `json:"metadata"`
		Spec     struct {
			Selector          metav1.LabelSelector `json:"selector"`
			NamespaceSelector struct {
				MatchNames []string `json:"matchNames"`
			} `json:"namespaceSelector"`
			Endpoints []struct {
				Port, Path, Interval, ScrapeTimeout string
			} `json:"endpoints"`
		} `json:"spec"`
	}
	smd := one(t, docs, "ServiceMonitor")
	if err := yaml.Unmarshal(smd.Raw, &sm); err != nil {
		t.Fatal(err)
	}
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Name != "http-metrics" || svc.Spec.Ports[0].Port != 8080 ||
		svc.Spec.Ports[0].TargetPort != intstr.FromString("http-metrics") {
		t.Errorf("Service ports = %v, want http-metrics 8080", svc.Spec.Ports)
	}
	d, _ := deployment(t, docs)
	for k, v := range svc.Spec.Selector {
		if d.Spec.Template.Labels[k] != v {
			t.Errorf("the Service selects %s=%s, which the agent's pod lacks", k, v)
		}
	}
	for k, v := range sm.Spec.Selector.MatchLabels {
		if svc.Labels[k] != v {
			t.Errorf("the ServiceMonitor selects %s=%s, which the Service lacks", k, v)
		}
	}
	if sm.Metadata.Labels["release"] != "prom" || len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != "http-metrics" ||
		sm.Spec.Endpoints[0].Path != "/metrics" || len(sm.Spec.NamespaceSelector.MatchNames) != 1 ||
		sm.Spec.NamespaceSelector.MatchNames[0] != namespace {
		t.Errorf("ServiceMonitor = %s", smd.Raw)
	}
	// service.enabled alone: the Service without the ServiceMonitor.
	docs = render(t, "--set", "service.enabled=true")
	if len(kinds(docs, "Service")) != 1 || len(kinds(docs, "ServiceMonitor")) != 0 {
		t.Error("service.enabled must render the Service only")
	}
}

// TestRBACMatchesCode keeps the chart's ClusterRole and Role exactly what
// the agent's code asks for, and its bindings pointing at them.
func TestRBACMatchesCode(t *testing.T) {
	docs := render(t)
	var cr rbacv1.ClusterRole
	var role rbacv1.Role
	var crb rbacv1.ClusterRoleBinding
	var rb rbacv1.RoleBinding
	var sa corev1.ServiceAccount
	one(t, docs, "ClusterRole").into(t, &cr)
	one(t, docs, "Role").into(t, &role)
	one(t, docs, "ClusterRoleBinding").into(t, &crb)
	one(t, docs, "RoleBinding").into(t, &rb)
	one(t, docs, "ServiceAccount").into(t, &sa)

	for name, c := range map[string]struct{ chart, code []rbacv1.PolicyRule }{
		"ClusterRole": {cr.Rules, app.ClusterRules()},
		"Role":        {role.Rules, app.NamespaceRules(namespace)},
	} {
		got, want := app.Grants(c.chart), app.Grants(c.code)
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("the chart's %s grants\n  %s\nbut the agent's code needs\n  %s", name, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
		}
	}
	subject := rbacv1.Subject{Kind: "ServiceAccount", Name: sa.Name, Namespace: namespace}
	if crb.RoleRef.Kind != "ClusterRole" || crb.RoleRef.Name != cr.Name || len(crb.Subjects) != 1 || crb.Subjects[0] != subject {
		t.Errorf("ClusterRoleBinding = %s, want %s bound to %v", mustJSON(crb), cr.Name, subject)
	}
	if rb.RoleRef.Kind != "Role" || rb.RoleRef.Name != role.Name || len(rb.Subjects) != 1 || rb.Subjects[0] != subject ||
		role.Namespace != namespace || rb.Namespace != namespace {
		t.Errorf("RoleBinding = %s, want %s bound to %v in %s", mustJSON(rb), role.Name, subject, namespace)
	}

	// Cluster-scoped names follow the release, so two releases never share.
	other := parseRelease(t, "other-agent")
	if one(t, other, "ClusterRole").Name == cr.Name || one(t, other, "ClusterRoleBinding").Name == crb.Name {
		t.Error("two releases render the same cluster-scoped names")
	}

	// rbac.apiAccessClusterRole binds the ServiceAccount to a role for
	// what callers reach through the agent; rbac.create=false renders none.
	docs = render(t, "--set", "rbac.apiAccessClusterRole=view")
	var found bool
	for _, d := range kinds(docs, "ClusterRoleBinding") {
		var b rbacv1.ClusterRoleBinding
		d.into(t, &b)
		found = found || (b.RoleRef.Name == "view" && len(b.Subjects) == 1 && b.Subjects[0] == subject)
	}
	if !found {
		t.Error("rbac.apiAccessClusterRole=view binds no ClusterRoleBinding to view")
	}
	docs = render(t, "--set", "rbac.create=false", "--set", "serviceAccount.create=false", "--set", "serviceAccount.name=existing")
	for _, k := range []string{"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ServiceAccount"} {
		if n := len(kinds(docs, k)); n != 0 {
			t.Errorf("rbac.create=false and serviceAccount.create=false still render %d %s", n, k)
		}
	}
	if d, _ := deployment(t, docs); d.Spec.Template.Spec.ServiceAccountName != "existing" {
		t.Errorf("serviceAccountName = %q, want existing", d.Spec.Template.Spec.ServiceAccountName)
	}
}

func parseRelease(t testing.TB, name string) []doc {
	t.Helper()
	out, err := exec.Command(helm(t), "template", name, chartDir, "--namespace", namespace, "--set", "agent.pipeops.token=t").Output()
	if err != nil {
		t.Fatalf("helm template %s: %v", name, err)
	}
	return parse(t, string(out))
}

// renderManifests runs render.sh (what `make manifests` runs) into a
// temporary file and returns its path.
func renderManifests(t testing.TB, releaseName, ns string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "pipeops-agent.yaml")
	cmd := exec.Command("bash", "render.sh", out)
	cmd.Env = append(os.Environ(), "HELM="+helm(t), "RELEASE="+releaseName, "NAMESPACE="+ns)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("render.sh: %v\n%s", err, b)
	}
	return out
}

// TestManifestsUpToDate fails when deploy/manifests is not what the chart
// renders with its defaults.
func TestManifestsUpToDate(t *testing.T) {
	want, err := os.ReadFile(renderManifests(t, release, namespace))
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(manifests)
	if err != nil {
		t.Fatalf("%v; run `make manifests`", err)
	}
	if bytes.Equal(got, want) {
		return
	}
	gl, wl := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
	i := 0
	for i < len(gl) && i < len(wl) && gl[i] == wl[i] {
		i++
	}
	line := func(l []string) string {
		if i < len(l) {
			return l[i]
		}
		return "(end of file)"
	}
	t.Fatalf("deploy/manifests/pipeops-agent.yaml is not what the chart renders; run `make manifests`.\n"+
		"first difference at line %d:\n  file:  %s\n  chart: %s", i+1, line(gl), line(wl))
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

var (
	agentOnce sync.Once
	agentBin  string
	agentErr  error
)

// buildAgent builds pipeops-agent once per test binary.
func buildAgent() (string, error) {
	agentOnce.Do(func() {
		root, err := testenv.ModuleRoot()
		if err != nil {
			agentErr = err
			return
		}
		dir, err := os.MkdirTemp("", "helm-test-agent-")
		if err != nil {
			agentErr = err
			return
		}
		agentBin = filepath.Join(dir, "pipeops-agent")
		cmd := exec.Command("go", "build", "-o", agentBin, "./agent/cmd/pipeops-agent")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			agentErr = fmt.Errorf("go build ./agent/cmd/pipeops-agent: %v\n%s", err, out)
		}
	})
	return agentBin, agentErr
}

// removeAgent removes what buildAgent built.
func removeAgent() {
	if agentBin != "" {
		os.RemoveAll(filepath.Dir(agentBin))
	}
}

// runCheck runs `pipeops-agent --check` with kubeconfig, in a clean
// environment (no PIPEOPS_* variables: check mode must not need them).
func runCheck(t testing.TB, kubeconfig, ns string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	bin, err := buildAgent()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, bin, "--check", "--kubeconfig="+kubeconfig, "--namespace="+ns)
	cmd.Env = []string{"HOME=" + t.TempDir(), "PATH=" + os.Getenv("PATH")}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// tokenKubeconfig writes a kubeconfig authenticating as ServiceAccount
// ns/name with a token from the TokenRequest API.
func tokenKubeconfig(t testing.TB, env *kubetest.Env, ns, name string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	expiry := int64(600)
	tr, err := env.Client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &expiry}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token for %s/%s: %v", ns, name, err)
	}
	path := filepath.Join(t.TempDir(), name+".kubeconfig")
	cfg := &rest.Config{Host: env.Config.Host, BearerToken: tr.Status.Token, TLSClientConfig: rest.TLSClientConfig{CAData: env.Config.CAData}}
	if err := kubetest.WriteKubeconfig(path, cfg); err != nil {
		t.Fatal(err)
	}
	return path
}

// waitAllowed waits until the authorizer, which learns of new bindings
// through a watch, allows user every access of rules in ns ("" for
// cluster-wide).
func waitAllowed(t testing.TB, env *kubetest.Env, user, ns string, rules []rbacv1.PolicyRule) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, r := range rules {
		attrs := &authorizationv1.ResourceAttributes{Namespace: ns, Verb: r.Verbs[0], Group: r.APIGroups[0], Resource: r.Resources[0]}
		if len(r.ResourceNames) > 0 {
			attrs.Name = r.ResourceNames[0]
		}
		for {
			sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{User: user, ResourceAttributes: attrs}}
			got, err := env.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
			if err != nil {
				t.Fatalf("subject access review: %v", err)
			}
			if got.Status.Allowed {
				break
			}
			select {
			case <-ctx.Done():
				t.Fatalf("%s is still not allowed to %s %s after 30s", user, attrs.Verb, attrs.Resource)
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
}

// TestManifestsInCluster applies the plain manifests (rendered for a
// release and namespace of the test's own) to a real kube-apiserver, checks
// the pod passes the namespace's "restricted" Pod Security admission, and
// runs the agent's --check with a token of the manifests' ServiceAccount:
// the chart's RBAC is enough for the agent.
func TestManifestsInCluster(t *testing.T) {
	kc := kubectl(t)
	// The agent builds while the API server starts.
	built := make(chan struct{})
	go func() { defer close(built); _, _ = buildAgent() }()
	t.Cleanup(func() { <-built })
	env := kubetest.Start(t)
	ns := env.Namespace(t) // exists before the apply, so the dry run can resolve it
	rel := "pipeops-agent-" + randomHex(3)
	file := renderManifests(t, rel, ns)
	docs := parse(t, readFile(t, file))
	t.Cleanup(func() {
		// Cluster-scoped objects outlive the namespace.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, d := range docs {
			switch d.Kind {
			case "ClusterRole":
				_ = env.Client.RbacV1().ClusterRoles().Delete(ctx, d.Name, metav1.DeleteOptions{})
			case "ClusterRoleBinding":
				_ = env.Client.RbacV1().ClusterRoleBindings().Delete(ctx, d.Name, metav1.DeleteOptions{})
			}
		}
	})

	apply := func(extra ...string) string {
		t.Helper()
		args := append([]string{"--kubeconfig", env.Kubeconfig, "apply", "--server-side", "--field-manager=helm-test", "-f", file}, extra...)
		out, err := exec.Command(kc, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("kubectl %s: %v\n%s", strings.Join(args[2:], " "), err, out)
		}
		return string(out)
	}
	out := apply("--dry-run=server")
	if strings.Contains(out, "Warning") {
		t.Errorf("the server warned on a dry run:\n%s", out)
	}
	out = apply()
	if strings.Contains(out, "Warning") {
		t.Errorf("the server warned on the apply:\n%s", out)
	}
	for _, d := range docs {
		if !strings.Contains(out, "/"+d.Name+" serverside-applied") {
			t.Errorf("kubectl apply did not apply %s %s:\n%s", d.Kind, d.Name, out)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := env.Client.AppsV1().Deployments(ns).Get(ctx, rel, metav1.GetOptions{}); err != nil {
		t.Fatalf("the Deployment is not there after the apply: %v", err)
	}

	// Pod Security "restricted" is enforced on pods, which no controller
	// creates here: dry-run create one from the Deployment's template. A
	// pod with no security context at all is refused first, so enforcement
	// is known to be on.
	d, _ := deployment(t, docs)
	pod := func(name string, sc *corev1.SecurityContext) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: *d.Spec.Template.Spec.DeepCopy()}
		if sc != nil {
			p.Spec.SecurityContext = nil
			p.Spec.Containers[0].SecurityContext = sc
		}
		return p
	}
	dry := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
	for {
		_, err := env.Client.CoreV1().Pods(ns).Create(ctx, pod("unconfined", &corev1.SecurityContext{}), dry)
		if err != nil && strings.Contains(err.Error(), "violates PodSecurity") {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("a pod without a security context is still admitted in %s (err %v): the namespace's restricted label has no effect", ns, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	if _, err := env.Client.CoreV1().Pods(ns).Create(ctx, pod("agent", nil), dry); err != nil {
		t.Fatalf("the agent's pod is refused: %v", err)
	}

	// The agent's check, as the manifests' ServiceAccount.
	sa := one(t, docs, "ServiceAccount").Name
	user := "system:serviceaccount:" + ns + ":" + sa
	waitAllowed(t, env, user, "", app.ClusterRules())
	waitAllowed(t, env, user, ns, app.NamespaceRules(ns))
	out, err := runCheck(t, tokenKubeconfig(t, env, ns, sa), ns)
	if err != nil || strings.Contains(out, "FAIL") {
		t.Fatalf("pipeops-agent --check with the chart's ServiceAccount: %v\n%s", err, out)
	}
	if !strings.Contains(out, "info authenticated as "+user) {
		t.Errorf("the check did not run as %s:\n%s", user, out)
	}

	// And the check does fail, with exit status 1, for an account without
	// the grants.
	if _, err := env.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "nobody"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	out, err = runCheck(t, tokenKubeconfig(t, env, ns, "nobody"), ns)
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(out, "FAIL may list nodes cluster-wide") {
		t.Fatalf("check without the grants: %v, want exit status 1 and failures\n%s", err, out)
	}
}

// helmIn returns a function that runs helm h against env's API server in
// namespace ns, with caches of its own, and fails t when helm does.
func helmIn(t *testing.T, h string, env *kubetest.Env, ns string) func(args ...string) string {
	return func(args ...string) string {
		t.Helper()
		cmd := exec.Command(h, append(args, "--kubeconfig", env.Kubeconfig, "--namespace", ns)...)
		cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+t.TempDir(), "HELM_CONFIG_HOME="+t.TempDir(), "HELM_DATA_HOME="+t.TempDir())
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
}

// TestHelmInstall installs the chart with helm itself into the real API
// server and uninstalls it: the release installs with every optional part
// switched on (ci/full-values.yaml; the API server validates the pod's
// extra variables and volumes), its notes point at the right objects, the
// ServiceMonitor and PrometheusRule are left out on a cluster without the
// Prometheus Operator (with a note saying so), and uninstalling removes the
// cluster-scoped objects.
func TestHelmInstall(t *testing.T) {
	h := helm(t)
	env := kubetest.Start(t)
	ns := env.Namespace(t)
	rel := "pipeops-agent-" + randomHex(3)
	helmRun := helmIn(t, h, env, ns)
	out := helmRun("install", rel, chartDir, "-f", filepath.Join(chartDir, "ci", "full-values.yaml"),
		"--set", "agent.pipeops.token=test-token", "--set", "agent.enableIngressSync=false")
	for _, want := range []string{
		"STATUS: deployed",
		"kubectl -n " + ns + " exec deploy/" + rel + " -- pipeops-agent --check",
		"Ingress sync is OFF",
		"no ServiceMonitor was installed",
		"no alerting rules were installed",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("helm install output lacks %q:\n%s", want, out)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := env.Client.RbacV1().ClusterRoles().Get(ctx, rel, metav1.GetOptions{}); err != nil {
		t.Fatalf("ClusterRole %s after install: %v", rel, err)
	}
	d, err := env.Client.AppsV1().Deployments(ns).Get(ctx, rel, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("Deployment %s after install: %v", rel, err)
	}
	if c := d.Spec.Template.Spec.Containers[0]; !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "HTTPS_PROXY" }) ||
		len(c.VolumeMounts) != 2 || len(c.EnvFrom) != 1 {
		t.Errorf("the installed agent lacks the extra variables or volume mount: %s", mustJSON(c))
	}
	cm, err := env.Client.CoreV1().ConfigMaps(ns).Get(ctx, rel+"-dashboard", metav1.GetOptions{})
	if err != nil || cm.Labels["grafana_dashboard"] != "1" {
		t.Errorf("the dashboard ConfigMap after install: %v %v", err, cm.GetLabels())
	}
	helmRun("uninstall", rel)
	if _, err := env.Client.RbacV1().ClusterRoles().Get(ctx, rel, metav1.GetOptions{}); err == nil {
		t.Fatalf("ClusterRole %s is left after uninstall", rel)
	}
}

func readFile(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestREADMEDocumentsEveryValue keeps the table of values in
// deploy/README.md complete: every value of values.yaml has a row, or its
// parent object has one (podSecurityContext, ...), and every row names a
// value that exists.
func TestREADMEDocumentsEveryValue(t *testing.T) {
	checkValuesTable(t, chartDir, "../README.md")
}

// checkValuesTable: every value of chart's values.yaml has a row in the
// table of readme ("| `name` |"), or its parent object has one, and every
// row names a value that exists.
func checkValuesTable(t *testing.T, chart, readme string) {
	t.Helper()
	keys := chartValueKeys(t, filepath.Join(chart, "values.yaml"))
	rows := map[string]bool{}
	for _, line := range strings.Split(readFile(t, readme), "\n") {
		if name, ok := strings.CutPrefix(line, "| `"); ok {
			name, _, _ = strings.Cut(name, "`")
			rows[name] = true
		}
	}
	documented := func(key string) bool {
		for k := key; ; {
			if rows[k] {
				return true
			}
			i := strings.LastIndex(k, ".")
			if i < 0 {
				return false
			}
			k = k[:i]
		}
	}
	for _, k := range keys {
		if !documented(k) {
			t.Errorf("value %s has no row in the table of %s", k, readme)
		}
	}
	for r := range rows {
		if !slices.ContainsFunc(keys, func(k string) bool { return k == r || strings.HasPrefix(k, r+".") }) {
			t.Errorf("%s documents %s, which values.yaml does not have", readme, r)
		}
	}
}
