package helm_test

// Tests of the server chart (deploy/helm/pipeops-server): the control plane
// and the gateways. What each value renders, that the rendered environment
// is one the binaries' own configuration code accepts, that secrets reach
// the pods only as files, and, against a real kube-apiserver, that the
// manifests apply and a helm install and upgrade work.

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	cpcli "github.com/pipeops/tunnel/controlplane/cli"
	"github.com/pipeops/tunnel/gateway/server"
	"github.com/pipeops/tunnel/shared/testenv/kubetest"
)

const (
	serverChart   = "pipeops-server"
	serverRelease = "pipeops-server"
	// The objects' names for release pipeops-server, which holds the
	// chart's name and so is the full name.
	controlplaneName = serverRelease + "-controlplane"
	gatewayName      = serverRelease + "-gateway"
)

// serverRequired is what the chart cannot run without: a database with its
// password, and the gateways' public host.
var serverRequired = []string{
	"--set", "database.url=postgres://pipeops@db.example.com:5432/pipeops?sslmode=require",
	"--set", "database.password=test-database-password",
	"--set", "gateway.hosts={gateway.example.com}",
}

// serverTemplate renders the server chart as release pipeops-server in
// pipeops-system with args, and returns its output or helm's error output.
func serverTemplate(t testing.TB, args ...string) (string, error) {
	t.Helper()
	return chartTemplate(t, serverRelease, serverChart, args...)
}

// serverRender renders the chart with its required values and args, and
// parses the objects.
func serverRender(t testing.TB, args ...string) []doc {
	t.Helper()
	out, err := serverTemplate(t, append(slices.Clone(serverRequired), args...)...)
	if err != nil {
		t.Fatal(err)
	}
	return parse(t, out)
}

func serverLint(t testing.TB, args ...string) (string, bool) {
	t.Helper()
	return chartLint(t, serverChart, args...)
}

// named returns the object of kind called name.
func named(t testing.TB, docs []doc, kind, name string) doc {
	t.Helper()
	for _, d := range kinds(docs, kind) {
		if d.Name == name {
			return d
		}
	}
	t.Fatalf("no %s %s among the rendered objects", kind, name)
	return doc{}
}

// component returns the Deployment called name and its only container.
func component(t testing.TB, docs []doc, name string) (*appsv1.Deployment, corev1.Container) {
	t.Helper()
	var d appsv1.Deployment
	named(t, docs, "Deployment", name).into(t, &d)
	if n := len(d.Spec.Template.Spec.Containers); n != 1 {
		t.Fatalf("Deployment %s has %d containers, want 1", name, n)
	}
	return &d, d.Spec.Template.Spec.Containers[0]
}

func envIndex(c corev1.Container, name string) int {
	return slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == name })
}

// secretFile is where a file in a container comes from: a key of a Secret,
// mounted with a mode.
type secretFile struct {
	secret, key string
	mode        int32
}

// secretFileAt finds the Secret volume that puts file into container c of
// pod spec, or fails t.
func secretFileAt(t testing.TB, spec corev1.PodSpec, c corev1.Container, file string) secretFile {
	t.Helper()
	dir, base := path.Split(file)
	for _, m := range c.VolumeMounts {
		if strings.TrimSuffix(dir, "/") != m.MountPath {
			continue
		}
		if !m.ReadOnly {
			t.Errorf("volume %s at %s is mounted writable", m.Name, m.MountPath)
		}
		for _, v := range spec.Volumes {
			if v.Name != m.Name || v.Secret == nil {
				continue
			}
			mode := int32(0o644) // the API server's default
			if v.Secret.DefaultMode != nil {
				mode = *v.Secret.DefaultMode
			}
			for _, it := range v.Secret.Items {
				if it.Path == base {
					if it.Mode != nil {
						mode = *it.Mode
					}
					return secretFile{v.Secret.SecretName, it.Key, mode}
				}
			}
		}
	}
	t.Fatalf("container %s has no Secret volume that holds %s; mounts %s", c.Name, file, mustJSON(c.VolumeMounts))
	return secretFile{}
}

// secretData returns the decoded data of the rendered Secret name.
func secretData(t testing.TB, docs []doc, name string) map[string]string {
	t.Helper()
	var s corev1.Secret
	named(t, docs, "Secret", name).into(t, &s)
	out := map[string]string{}
	for k, v := range s.Data {
		out[k] = string(v)
	}
	for k, v := range s.StringData {
		out[k] = v
	}
	return out
}

// durationEnv parses a duration variable of c.
func durationEnv(t testing.TB, c corev1.Container, name string) time.Duration {
	t.Helper()
	e := env(c, name)
	if e == nil {
		t.Fatalf("%s is not set on %s", name, c.Name)
	}
	d, err := time.ParseDuration(e.Value)
	if err != nil {
		t.Fatalf("%s=%q: %v", name, e.Value, err)
	}
	return d
}

// TestServerLint: with the default values helm lint fails, naming what is
// missing; with the values files in ci/ lint --strict passes without a
// single finding.
func TestServerLint(t *testing.T) {
	out, ok := serverLint(t)
	if ok || !strings.Contains(out, "1 chart(s) failed") || !strings.Contains(out, "/database/url") || !strings.Contains(out, "/gateway/hosts") {
		t.Errorf("helm lint with the default values passed, or did not name the database and the hosts:\n%s", out)
	}
	lintCIValues(t, serverChart)
}

// TestServerRefusedValues: values the chart must refuse. Where the schema
// can say it (want), helm template and helm lint both fail naming the
// value; the templates refuse again with a message that says what to do
// (wantTemplate), which is all --skip-schema-validation gets, and all
// there is for checks that compare two values (want empty).
func TestServerRefusedValues(t *testing.T) {
	db := []string{"--set", "gateway.hosts={gw.example.com}"}
	withDB := serverRequired
	for _, tc := range []struct {
		name               string
		args               []string
		want, wantTemplate string
	}{
		{"no database", db, "/database/url': minLength", "database.url is required"},
		{"database url with a password", append([]string{"--set", "database.url=postgres://pipeops:pw@db:5432/pipeops"}, db...),
			"/database/url': 'postgres://pipeops:pw@db:5432/pipeops' does not match", "with a user and no password"},
		{"database url without a password", append([]string{"--set", "database.url=postgres://pipeops@db:5432/pipeops"}, db...),
			"/database/password': minLength", "database.url needs a password"},
		{"database url not postgres", append([]string{"--set", "database.url=mysql://pipeops@db/pipeops", "--set", "database.password=p"}, db...),
			"/database/url'", "database.url must be postgres://"},
		{"password and existing secret", append([]string{"--set", "database.existingSecret=db"}, withDB...),
			"/database/existingSecret': value must be ''", "set only one of database.password and database.existingSecret"},
		{"url key without existing secret", append([]string{"--set", "database.existingSecretUrlKey=uri", "--set", "database.url=", "--set", "database.password="}, db...),
			"/database/existingSecret': minLength", "database.existingSecretUrlKey needs database.existingSecret"},
		{"bundled postgresql and a url", append([]string{"--set", "postgresql.enabled=true"}, withDB...),
			"/database/url': value must be ''", "postgresql.enabled runs a bundled PostgreSQL"},
		{"no gateways", append([]string{"--set", "gateway.replicas=0"}, withDB...), "/gateway/replicas': minimum: got 0, want 1", "gateway.replicas must be at least 1"},
		{"no control plane", append([]string{"--set", "controlplane.replicas=0"}, withDB...), "/controlplane/replicas': minimum", "controlplane.replicas must be at least 1"},
		{"no gateway hosts", []string{"--set", "database.url=postgres://u@db/p", "--set", "database.password=p"},
			"/gateway/hosts': minItems", "gateway.hosts is required"},
		{"tls secret without a name", append([]string{"--set", "gateway.tls.mode=secret"}, withDB...),
			"/gateway/tls/secretName': minLength", "gateway.tls.secretName"},
		{"acme on shared gateways without a volume", append([]string{"--set", "gateway.tls.mode=acme"}, withDB...),
			"/gateway/tls/acme/existingClaim': minLength", "needs gateway.tls.acme.existingClaim"},
		{"misspelt value", append([]string{"--set", "gateway.replica=3"}, withDB...), "'replica' not allowed", ""},
		{"replicas as a string", append([]string{"--set-string", "gateway.replicas=3"}, withDB...), "/gateway/replicas': got string, want integer", ""},
		{"extra env the chart sets", append([]string{"--set", "gateway.extraEnv[0].name=PEER_URL", "--set", "gateway.extraEnv[0].value=x"}, withDB...),
			"/gateway/extraEnv/0/name': 'not' failed", ""},
		{"pod label the chart sets", append([]string{"--set", "gateway.podLabels.app\\.kubernetes\\.io/component=x"}, withDB...),
			"/gateway/podLabels/app.kubernetes.io~1component': false schema", "gateway.podLabels may not set app.kubernetes.io/component"},
		{"gateway killed while it drains", append([]string{"--set", "gateway.terminationGracePeriodSeconds=30"}, withDB...),
			"", "gateway.terminationGracePeriodSeconds=30 must be more than gateway.preStopSleepSeconds + gateway.shutdownTimeoutSeconds (35)"},
		{"control plane killed while it drains", append([]string{"--set", "controlplane.shutdownTimeoutSeconds=30"}, withDB...),
			"", "controlplane.terminationGracePeriodSeconds=30 must be more than controlplane.shutdownTimeoutSeconds (30)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if tc.want != "" {
				_, err := serverTemplate(t, tc.args...)
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("helm template %v: err = %v, want one containing %q", tc.args, err, tc.want)
				}
				if out, ok := serverLint(t, tc.args...); ok || !strings.Contains(out, tc.want) {
					t.Errorf("helm lint %v passed, or without %q:\n%s", tc.args, tc.want, out)
				}
			}
			if tc.wantTemplate == "" {
				return
			}
			args := tc.args
			if tc.want != "" {
				args = append(slices.Clone(args), "--skip-schema-validation")
			}
			_, err := serverTemplate(t, args...)
			if err == nil || !strings.Contains(err.Error(), tc.wantTemplate) {
				t.Errorf("helm template %v: err = %v, want one containing %q", args, err, tc.wantTemplate)
			}
		})
	}
}

// TestServerGatewayPeers: what several gateways sharing the database need:
// a unique GATEWAY_ID (the pod's name), a peer listener on a fixed port
// reached at the pod's IP (declared before PEER_URL, or Kubernetes leaves
// $(POD_IP) as it is), and one secret file from a Secret that every
// gateway mounts.
func TestServerGatewayPeers(t *testing.T) {
	docs := serverRender(t)
	d, c := component(t, docs, gatewayName)
	if e := env(c, "GATEWAY_ID"); e == nil || e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "metadata.name" {
		t.Errorf("GATEWAY_ID = %s, want the downward API's metadata.name", mustJSON(e))
	}
	ip, url := envIndex(c, "POD_IP"), envIndex(c, "PEER_URL")
	if ip < 0 || c.Env[ip].ValueFrom == nil || c.Env[ip].ValueFrom.FieldRef == nil || c.Env[ip].ValueFrom.FieldRef.FieldPath != "status.podIP" {
		t.Fatalf("POD_IP is not the downward API's status.podIP: %s", mustJSON(c.Env))
	}
	if url < ip || c.Env[url].Value != "http://$(POD_IP):8444" {
		t.Errorf("PEER_URL (at %d) = %q, want http://$(POD_IP):8444 after POD_IP (at %d)", url, c.Env[url].Value, ip)
	}
	if e := env(c, "PEER_ADDR"); e == nil || e.Value != ":8444" {
		t.Errorf("PEER_ADDR = %s, want :8444", mustJSON(e))
	}
	if !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == "peer" && p.ContainerPort == 8444 }) {
		t.Errorf("ports %v lack peer 8444", c.Ports)
	}
	e := env(c, "PEER_SECRET_FILE")
	if e == nil || e.Value == "" {
		t.Fatal("PEER_SECRET_FILE is not set")
	}
	f := secretFileAt(t, d.Spec.Template.Spec, c, e.Value)
	if f.mode&0o007 != 0 {
		t.Errorf("the peer secret is mounted with mode %04o; the gateway refuses a file every user may read", f.mode)
	}
	if secret := secretData(t, docs, f.secret)[f.key]; len(secret) < 32 {
		t.Errorf("Secret %s key %s holds %d characters, want at least 32", f.secret, f.key, len(secret))
	}
	// Two renders make different secrets: it is random, not a constant of
	// the chart (an install keeps the first, see TestServerHelmInstall).
	if a, b := secretData(t, docs, f.secret)[f.key], secretData(t, serverRender(t), f.secret)[f.key]; a == b {
		t.Error("the peer secret is the same in two renders")
	}

	// A Secret of the user's: the chart makes none and mounts that one.
	docs = serverRender(t, "--set", "gateway.peer.existingSecret=my-peer", "--set", "gateway.peer.existingSecretKey=s")
	d, c = component(t, docs, gatewayName)
	if f := secretFileAt(t, d.Spec.Template.Spec, c, env(c, "PEER_SECRET_FILE").Value); f.secret != "my-peer" || f.key != "s" {
		t.Errorf("PEER_SECRET_FILE comes from %s/%s, want my-peer/s", f.secret, f.key)
	}
	for _, s := range kinds(docs, "Secret") {
		if strings.HasSuffix(s.Name, "-peer") {
			t.Errorf("Secret %s rendered with gateway.peer.existingSecret set", s.Name)
		}
	}
}

// TestServerSecretsOnlyInFiles: every secret value the chart knows is in a
// Secret and nowhere else: not in a ConfigMap, an environment value, the
// args, or any other object. The pods read them as files, mounted with no
// access for other users.
func TestServerSecretsOnlyInFiles(t *testing.T) {
	const password = "unique-database-password-4e1f"
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"external database", []string{"--set", "database.password=" + password}},
		{"bundled postgresql", []string{"--set", "postgresql.enabled=true", "--set", "database.url=", "--set", "database.password=" + password}},
		{"everything", []string{"-f", filepath.Join(serverChart, "ci", "full-values.yaml"), "--set", "database.url=",
			"--set", "database.password=" + password, "--set", "serviceMonitor.enabled=true"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			docs := serverRender(t, tc.args...)
			if cms := kinds(docs, "ConfigMap"); len(cms) != 0 {
				t.Errorf("the chart renders ConfigMaps %v", cms)
			}
			var values []string
			for _, s := range kinds(docs, "Secret") {
				for _, v := range secretData(t, docs, s.Name) {
					values = append(values, v, base64.StdEncoding.EncodeToString([]byte(v)))
				}
			}
			if !slices.Contains(values, password) {
				t.Fatalf("no Secret holds the database password")
			}
			for _, d := range docs {
				if d.Kind == "Secret" {
					continue
				}
				for _, v := range values {
					if bytes.Contains(d.Raw, []byte(v)) {
						t.Errorf("a secret value appears in %s %s", d.Kind, d.Name)
					}
				}
			}
			for _, d := range docs {
				var spec corev1.PodSpec
				switch d.Kind {
				case "Deployment":
					var dep appsv1.Deployment
					d.into(t, &dep)
					spec = dep.Spec.Template.Spec
				case "StatefulSet":
					var sts appsv1.StatefulSet
					d.into(t, &sts)
					spec = sts.Spec.Template.Spec
				default:
					continue
				}
				for _, c := range spec.Containers {
					for _, e := range c.Env {
						if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
							t.Errorf("%s %s: %s is a Secret's value in the environment; secrets are files", d.Kind, d.Name, e.Name)
						}
						if regexp.MustCompile(`(?i)password|secret|key`).MatchString(e.Name) && !strings.HasSuffix(e.Name, "_FILE") {
							t.Errorf("%s %s: variable %s looks like a secret, not a file naming one", d.Kind, d.Name, e.Name)
						}
					}
				}
				for _, v := range spec.Volumes {
					if v.Secret == nil {
						continue
					}
					if m := v.Secret.DefaultMode; m == nil || *m&0o007 != 0 {
						t.Errorf("%s %s: Secret volume %s has mode %s; other users must not read it", d.Kind, d.Name, v.Name, mustJSON(m))
					}
				}
				if sc := spec.SecurityContext; sc == nil || sc.FSGroup == nil {
					t.Errorf("%s %s: no fsGroup, so the process's group may not read its 0440 secret files", d.Kind, d.Name)
				}
			}
		})
	}

	// A Secret holding the whole URL: DATABASE_URL from its key, no file.
	docs := serverRender(t, "--set", "database.url=", "--set", "database.password=",
		"--set", "database.existingSecret=pg-app", "--set", "database.existingSecretUrlKey=uri")
	for _, name := range []string{controlplaneName, gatewayName} {
		_, c := component(t, docs, name)
		e := env(c, "DATABASE_URL")
		if e == nil || e.Value != "" || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil ||
			e.ValueFrom.SecretKeyRef.Name != "pg-app" || e.ValueFrom.SecretKeyRef.Key != "uri" {
			t.Errorf("%s: DATABASE_URL = %s, want a secretKeyRef to pg-app/uri", name, mustJSON(e))
		}
		if env(c, "DATABASE_PASSWORD_FILE") != nil {
			t.Errorf("%s: DATABASE_PASSWORD_FILE is set though the URL holds the password", name)
		}
	}
	for _, s := range kinds(docs, "Secret") {
		if strings.HasSuffix(s.Name, "-database") {
			t.Errorf("Secret %s rendered with database.existingSecret set", s.Name)
		}
	}
}

// TestServerPods: probes on the admin listeners, which therefore listen on
// every address of the pod; the restricted security context; drain times
// that fit the grace period; PDBs and anti-affinity; images.
func TestServerPods(t *testing.T) {
	docs := serverRender(t)
	var meta struct {
		AppVersion string `json:"appVersion"`
	}
	if err := yaml.Unmarshal([]byte(readFile(t, filepath.Join(serverChart, "Chart.yaml"))), &meta); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, image, admin string
		port               int32
		replicas           int32
	}{
		{controlplaneName, "ghcr.io/pipeops/pipeops-controlplane", ":9091", 9091, 1},
		{gatewayName, "ghcr.io/pipeops/pipeops-gateway", ":9090", 9090, 2},
	} {
		d, c := component(t, docs, tc.name)
		spec := d.Spec.Template.Spec
		if d.Spec.Replicas == nil || *d.Spec.Replicas != tc.replicas {
			t.Errorf("%s: replicas %v, want %d", tc.name, d.Spec.Replicas, tc.replicas)
		}
		if want := tc.image + ":" + meta.AppVersion; c.Image != want {
			t.Errorf("%s: image %q, want %q", tc.name, c.Image, want)
		}
		if e := env(c, "ADMIN_ADDR"); e == nil || e.Value != tc.admin {
			t.Errorf("%s: ADMIN_ADDR = %s, want %s (loopback would hide it from the kubelet's probes)", tc.name, mustJSON(e), tc.admin)
		}
		if !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == "admin" && p.ContainerPort == tc.port }) {
			t.Errorf("%s: ports %v lack admin %d", tc.name, c.Ports, tc.port)
		}
		for kind, p := range map[string]struct {
			probe *corev1.Probe
			path  string
		}{"liveness": {c.LivenessProbe, "/healthz"}, "readiness": {c.ReadinessProbe, "/readyz"}, "startup": {c.StartupProbe, "/healthz"}} {
			if p.probe == nil || p.probe.HTTPGet == nil || p.probe.HTTPGet.Path != p.path || p.probe.HTTPGet.Port != intstr.FromString("admin") {
				t.Errorf("%s: %s probe = %s, want GET %s on admin", tc.name, kind, mustJSON(p.probe), p.path)
			}
		}
		sc := c.SecurityContext
		if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
			sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
			sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 ||
			sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("%s: container securityContext = %s", tc.name, mustJSON(sc))
		}
		if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
			t.Errorf("%s: the ServiceAccount token is mounted; nothing here calls the Kubernetes API", tc.name)
		}
		grace := time.Duration(*spec.TerminationGracePeriodSeconds) * time.Second
		drain := durationEnv(t, c, "SHUTDOWN_TIMEOUT")
		if c.Lifecycle != nil && c.Lifecycle.PreStop != nil && c.Lifecycle.PreStop.Sleep != nil {
			drain += time.Duration(c.Lifecycle.PreStop.Sleep.Seconds) * time.Second
		}
		if grace <= drain {
			t.Errorf("%s: terminationGracePeriodSeconds %s is not more than SHUTDOWN_TIMEOUT and the preStop pause, %s", tc.name, grace, drain)
		}
	}

	d, c := component(t, docs, gatewayName)
	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Sleep == nil || c.Lifecycle.PreStop.Sleep.Seconds <= 0 {
		t.Errorf("gateway lifecycle = %s, want a preStop sleep so load balancers stop first", mustJSON(c.Lifecycle))
	}
	if s := d.Spec.Strategy.RollingUpdate; s == nil || s.MaxUnavailable == nil || s.MaxUnavailable.IntValue() != 0 {
		t.Errorf("gateway rollout %s, want maxUnavailable 0", mustJSON(d.Spec.Strategy))
	}
	aff := d.Spec.Template.Spec.Affinity
	if aff == nil || aff.PodAntiAffinity == nil || len(aff.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution) != 1 ||
		len(aff.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution) != 0 {
		t.Fatalf("gateway affinity = %s, want one preferred anti-affinity term", mustJSON(aff))
	}
	term := aff.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution[0].PodAffinityTerm
	if term.TopologyKey != "kubernetes.io/hostname" || !selects(term.LabelSelector.MatchLabels, d.Spec.Template.Labels) {
		t.Errorf("anti-affinity term %s, want the gateways' pods by hostname", mustJSON(term))
	}
	var pdb policyv1.PodDisruptionBudget
	named(t, docs, "PodDisruptionBudget", gatewayName).into(t, &pdb)
	if pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.IntValue() != 1 || pdb.Spec.MinAvailable != nil ||
		!selects(pdb.Spec.Selector.MatchLabels, d.Spec.Template.Labels) {
		t.Errorf("gateway PodDisruptionBudget = %s, want maxUnavailable 1 over the gateways", mustJSON(pdb.Spec))
	}
	if n := len(kinds(docs, "PodDisruptionBudget")); n != 1 {
		t.Errorf("%d PodDisruptionBudgets with one control plane, want only the gateways'", n)
	}

	// The user's affinity replaces the default; two control planes get
	// a PDB.
	docs = serverRender(t, "--set", "gateway.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].key=edge",
		"--set", "gateway.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator=Exists",
		"--set", "controlplane.replicas=2", "--set", "gateway.replicas=5", "--set", "gateway.preStopSleepSeconds=0")
	d, c = component(t, docs, gatewayName)
	if aff := d.Spec.Template.Spec.Affinity; aff == nil || aff.PodAntiAffinity != nil || aff.NodeAffinity == nil {
		t.Errorf("gateway.affinity did not replace the default: %s", mustJSON(aff))
	}
	if *d.Spec.Replicas != 5 || c.Lifecycle != nil {
		t.Errorf("replicas %d, lifecycle %s; want 5 and no preStop", *d.Spec.Replicas, mustJSON(c.Lifecycle))
	}
	cp, _ := component(t, docs, controlplaneName)
	named(t, docs, "PodDisruptionBudget", controlplaneName).into(t, &pdb)
	if pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.IntValue() != 1 || !selects(pdb.Spec.Selector.MatchLabels, cp.Spec.Template.Labels) {
		t.Errorf("control plane PodDisruptionBudget = %s", mustJSON(pdb.Spec))
	}
}

// selects reports whether selector matches labels, and selects something.
func selects(selector, labels map[string]string) bool {
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return len(selector) > 0
}

// TestServerServices: the gateways behind one public Service on 80 and
// 443, the control plane's API on a ClusterIP Service, each selecting its
// own pods only.
func TestServerServices(t *testing.T) {
	docs := serverRender(t)
	gw, _ := component(t, docs, gatewayName)
	cp, _ := component(t, docs, controlplaneName)
	var svc corev1.Service
	named(t, docs, "Service", gatewayName).into(t, &svc)
	ports := map[string]string{}
	for _, p := range svc.Spec.Ports {
		ports[p.Name] = fmt.Sprintf("%d->%s", p.Port, p.TargetPort.String())
	}
	if svc.Spec.Type != corev1.ServiceTypeLoadBalancer || len(ports) != 2 || ports["http"] != "80->http" || ports["https"] != "443->https" {
		t.Errorf("gateway Service %s %v, want LoadBalancer with http 80 and https 443", svc.Spec.Type, ports)
	}
	if !selects(svc.Spec.Selector, gw.Spec.Template.Labels) || selects(svc.Spec.Selector, cp.Spec.Template.Labels) {
		t.Errorf("gateway Service selects %v", svc.Spec.Selector)
	}
	named(t, docs, "Service", controlplaneName).into(t, &svc)
	if svc.Spec.Type != corev1.ServiceTypeClusterIP || len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != 8080 ||
		!selects(svc.Spec.Selector, cp.Spec.Template.Labels) || selects(svc.Spec.Selector, gw.Spec.Template.Labels) {
		t.Errorf("control plane Service = %s", mustJSON(svc.Spec))
	}

	// No HTTPS listener: only port 80, and no HTTPS_ADDR.
	docs = serverRender(t, "--set", "gateway.tls.mode=none", "--set", "gateway.service.type=NodePort")
	named(t, docs, "Service", gatewayName).into(t, &svc)
	_, c := component(t, docs, gatewayName)
	if svc.Spec.Type != corev1.ServiceTypeNodePort || len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Name != "http" || env(c, "HTTPS_ADDR") != nil {
		t.Errorf("tls.mode none: Service %s, HTTPS_ADDR %s", mustJSON(svc.Spec), mustJSON(env(c, "HTTPS_ADDR")))
	}
	_, c = component(t, docs, controlplaneName)
	if e := env(c, "GATEWAY_WS_URL"); e == nil || e.Value != "ws://gateway.example.com/ws" {
		t.Errorf("GATEWAY_WS_URL = %s, want ws:// without TLS", mustJSON(e))
	}
}

// fakePod is what the downward API gives the rendered pods in
// TestServerConfigLoads.
var fakePod = map[string]string{"metadata.name": "pipeops-server-gateway-7d9f-x2x", "status.podIP": "10.1.2.3", "metadata.namespace": namespace}

// containerEnv resolves the environment of container c as the kubelet
// would: downward API values from fakePod, secretKeyRefs from secrets,
// $(VAR) of earlier variables expanded. Secret files are written below dir
// as their volumes mount them, and a value naming one (or a comma-separated
// list of them) is turned into the written file's path.
func containerEnv(t testing.TB, spec corev1.PodSpec, c corev1.Container, secrets map[string]map[string]string, dir string) func(string) string {
	t.Helper()
	files := map[string]string{}
	for _, m := range c.VolumeMounts {
		for _, v := range spec.Volumes {
			if v.Name != m.Name || v.Secret == nil {
				continue
			}
			data, ok := secrets[v.Secret.SecretName]
			if !ok {
				t.Fatalf("volume %s: no Secret %s", v.Name, v.Secret.SecretName)
			}
			for _, it := range v.Secret.Items {
				local := filepath.Join(dir, c.Name, v.Name, it.Path)
				if err := os.MkdirAll(filepath.Dir(local), 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(local, []byte(data[it.Key]), os.FileMode(*v.Secret.DefaultMode)); err != nil {
					t.Fatal(err)
				}
				files[path.Join(m.MountPath, it.Path)] = local
			}
		}
	}
	vars := map[string]string{}
	ref := regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)
	for _, e := range c.Env {
		v := ref.ReplaceAllStringFunc(e.Value, func(s string) string {
			if x, ok := vars[s[2:len(s)-1]]; ok {
				return x
			}
			return s
		})
		if f := e.ValueFrom; f != nil {
			switch {
			case f.FieldRef != nil:
				v = fakePod[f.FieldRef.FieldPath]
			case f.SecretKeyRef != nil:
				v = secrets[f.SecretKeyRef.Name][f.SecretKeyRef.Key]
			}
		}
		parts := strings.Split(v, ",")
		for i, p := range parts {
			if local, ok := files[p]; ok {
				parts[i] = local
			}
		}
		vars[e.Name] = strings.Join(parts, ",")
	}
	return func(k string) string { return vars[k] }
}

// TestServerConfigLoads hands the rendered environment, secret files and
// all, to the binaries' own configuration code: what the chart renders is
// what the control plane and the gateway accept, and means what it should.
func TestServerConfigLoads(t *testing.T) {
	for _, tc := range []struct {
		name     string
		args     []string
		database string // the URL the components must end up with
	}{
		{"defaults", nil, "postgres://pipeops:test-database-password@db.example.com:5432/pipeops?sslmode=require"},
		{"everything", []string{"-f", filepath.Join(serverChart, "ci", "full-values.yaml"), "--set", "database.url=", "--set", "database.password=pw-bundled"},
			"postgres://pipeops:pw-bundled@pipeops-server-postgresql:5432/pipeops?sslmode=disable"},
		{"tls and url from secrets", []string{"--set", "gateway.tls.mode=secret", "--set", "gateway.tls.secretName=gw-tls",
			"--set", "database.url=", "--set", "database.password=", "--set", "database.existingSecret=pg-app", "--set", "database.existingSecretUrlKey=uri",
			"--set", "controlplane.keyEncryptionKey.existingSecret=kek", "--set", "controlplane.keyEncryptionKey.previousKeys={old}"},
			"postgres://app:from-secret@pg:5432/app"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			docs := serverRender(t, tc.args...)
			secrets := map[string]map[string]string{
				// The user's own Secrets, which the chart names.
				"pg-app": {"uri": "postgres://app:from-secret@pg:5432/app"},
				"gw-tls": {"tls.crt": "-", "tls.key": "-"},
				"kek":    {"key-encryption-key": base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 32)), "old": base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{2}, 32))},
			}
			for _, s := range kinds(docs, "Secret") {
				secrets[s.Name] = secretData(t, docs, s.Name)
			}
			dir := t.TempDir()

			d, c := component(t, docs, controlplaneName)
			if !slices.Equal(c.Args, []string{"serve"}) {
				t.Errorf("control plane args %q, want [serve]", c.Args)
			}
			cp, err := cpcli.LoadConfig(containerEnv(t, d.Spec.Template.Spec, c, secrets, dir))
			if err != nil {
				t.Fatalf("control plane: LoadConfig with the rendered environment: %v", err)
			}
			if err := cp.ValidateServe(); err != nil {
				t.Errorf("control plane serve: %v", err)
			}
			if cp.DatabaseURL != tc.database || cp.KEK == nil || cp.AdminAddr != ":9091" {
				t.Errorf("control plane: database %q, KEK %v, admin %q; want %q, a KEK and :9091", cp.DatabaseURL, cp.KEK != nil, cp.AdminAddr, tc.database)
			}

			d, c = component(t, docs, gatewayName)
			gw, err := server.LoadConfig(containerEnv(t, d.Spec.Template.Spec, c, secrets, dir))
			if err != nil {
				t.Fatalf("gateway: LoadConfig with the rendered environment: %v", err)
			}
			if gw.DatabaseURL != tc.database || gw.GatewayID != fakePod["metadata.name"] || gw.PeerAddr != ":8444" ||
				gw.PeerURL != "http://10.1.2.3:8444" || len(gw.PeerSecret) < 32 || gw.AdminAddr != ":9090" ||
				gw.ControlPlaneURL != "http://"+controlplaneName+"."+namespace+".svc:8080" {
				t.Errorf("gateway: database %q, id %q, peer %q %q (secret of %d), admin %q, control plane %q",
					gw.DatabaseURL, gw.GatewayID, gw.PeerAddr, gw.PeerURL, len(gw.PeerSecret), gw.AdminAddr, gw.ControlPlaneURL)
			}
			if gw.ShutdownTimeout >= time.Duration(*d.Spec.Template.Spec.TerminationGracePeriodSeconds)*time.Second {
				t.Errorf("gateway: SHUTDOWN_TIMEOUT %s, grace period %ds", gw.ShutdownTimeout, *d.Spec.Template.Spec.TerminationGracePeriodSeconds)
			}
		})
	}
}

// TestServerBundledPostgreSQL: one PostgreSQL pod with a volume, a random
// password that both components read from the same Secret.
func TestServerBundledPostgreSQL(t *testing.T) {
	if n := len(kinds(serverRender(t), "StatefulSet")); n != 0 {
		t.Fatalf("%d StatefulSets rendered by default", n)
	}
	docs := serverRender(t, "--set", "postgresql.enabled=true", "--set", "database.url=", "--set", "database.password=")
	var sts appsv1.StatefulSet
	named(t, docs, "StatefulSet", serverRelease+"-postgresql").into(t, &sts)
	if sts.Spec.Replicas == nil || *sts.Spec.Replicas != 1 || len(sts.Spec.VolumeClaimTemplates) != 1 {
		t.Errorf("StatefulSet replicas %v, %d volume claims; want 1 and 1", sts.Spec.Replicas, len(sts.Spec.VolumeClaimTemplates))
	}
	var svc corev1.Service
	named(t, docs, "Service", serverRelease+"-postgresql").into(t, &svc)
	if !selects(svc.Spec.Selector, sts.Spec.Template.Labels) || len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != 5432 {
		t.Errorf("PostgreSQL Service = %s", mustJSON(svc.Spec))
	}
	pg := sts.Spec.Template.Spec.Containers[0]
	want := secretFileAt(t, sts.Spec.Template.Spec, pg, env(pg, "POSTGRES_PASSWORD_FILE").Value)
	if pw := secretData(t, docs, want.secret)[want.key]; len(pw) < 32 {
		t.Errorf("the generated database password has %d characters, want 32 or more", len(pw))
	}
	if sc := pg.SecurityContext; sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
		t.Errorf("PostgreSQL securityContext = %s", mustJSON(sc))
	}
	for _, name := range []string{controlplaneName, gatewayName} {
		d, c := component(t, docs, name)
		if e := env(c, "DATABASE_URL"); e == nil || !strings.Contains(e.Value, "@"+svc.Name+":5432/") {
			t.Errorf("%s: DATABASE_URL = %s, want the bundled PostgreSQL's Service", name, mustJSON(e))
		}
		if got := secretFileAt(t, d.Spec.Template.Spec, c, env(c, "DATABASE_PASSWORD_FILE").Value); got.secret != want.secret || got.key != want.key {
			t.Errorf("%s reads the password from %+v, PostgreSQL from %+v", name, got, want)
		}
	}
}

// TestServerNetworkPolicy: only gateways reach the gateways' peer port, and
// only the components the bundled PostgreSQL.
func TestServerNetworkPolicy(t *testing.T) {
	if n := len(kinds(serverRender(t), "NetworkPolicy")); n != 0 {
		t.Fatalf("%d NetworkPolicies rendered by default", n)
	}
	docs := serverRender(t, "--set", "networkPolicy.enabled=true", "--set", "postgresql.enabled=true", "--set", "database.url=", "--set", "database.password=")
	gw, gwc := component(t, docs, gatewayName)
	cp, _ := component(t, docs, controlplaneName)
	var np networkingv1.NetworkPolicy
	named(t, docs, "NetworkPolicy", gatewayName).into(t, &np)
	if !selects(np.Spec.PodSelector.MatchLabels, gw.Spec.Template.Labels) {
		t.Fatalf("the gateways' policy selects %v", np.Spec.PodSelector.MatchLabels)
	}
	portNumber := map[string]int32{}
	for _, p := range gwc.Ports {
		portNumber[p.Name] = p.ContainerPort
	}
	peerRules := 0
	for _, r := range np.Spec.Ingress {
		if len(r.Ports) == 0 {
			t.Errorf("rule %s allows every port", mustJSON(r))
		}
		for _, p := range r.Ports {
			if p.Port.String() != "peer" && p.Port.IntValue() != 8444 {
				continue
			}
			peerRules++
			if portNumber[p.Port.String()] != 8444 {
				t.Errorf("the peer rule names port %s, which is not the container's 8444", p.Port.String())
			}
			if len(r.From) != 1 || r.From[0].PodSelector == nil || r.From[0].NamespaceSelector != nil || r.From[0].IPBlock != nil ||
				!selects(r.From[0].PodSelector.MatchLabels, gw.Spec.Template.Labels) || selects(r.From[0].PodSelector.MatchLabels, cp.Spec.Template.Labels) {
				t.Errorf("the peer port is open to %s, want the gateways only", mustJSON(r.From))
			}
		}
	}
	if peerRules != 1 {
		t.Errorf("%d rules name the peer port, want 1", peerRules)
	}
	named(t, docs, "NetworkPolicy", serverRelease+"-postgresql").into(t, &np)
	var from []string
	for _, r := range np.Spec.Ingress {
		for _, f := range r.From {
			from = append(from, f.PodSelector.MatchLabels["app.kubernetes.io/component"])
		}
	}
	sort.Strings(from)
	if strings.Join(from, ",") != "controlplane,gateway" {
		t.Errorf("PostgreSQL is open to %v, want the control plane and the gateways", from)
	}
}

// TestServerServiceMonitor: off by default; on, a metrics Service per
// component on its admin port, and a ServiceMonitor for each where the
// cluster serves the API.
func TestServerServiceMonitor(t *testing.T) {
	if n := len(kinds(serverRender(t, serviceMonitorAPI...), "ServiceMonitor")); n != 0 {
		t.Fatalf("%d ServiceMonitors rendered by default", n)
	}
	if docs := serverRender(t, "--set", "serviceMonitor.enabled=true"); len(kinds(docs, "ServiceMonitor")) != 0 {
		t.Error("ServiceMonitors rendered on a cluster without the monitoring.coreos.com/v1 API")
	}
	docs := serverRender(t, append([]string{"--set", "serviceMonitor.enabled=true", "--set", "serviceMonitor.labels.release=prom"}, serviceMonitorAPI...)...)
	for _, tc := range []struct {
		name string
		port int32
	}{{controlplaneName, 9091}, {gatewayName, 9090}} {
		d, _ := component(t, docs, tc.name)
		var svc corev1.Service
		named(t, docs, "Service", tc.name+"-metrics").into(t, &svc)
		if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != tc.port || svc.Spec.Ports[0].TargetPort != intstr.FromString("admin") ||
			!selects(svc.Spec.Selector, d.Spec.Template.Labels) {
			t.Errorf("%s-metrics = %s, want admin %d of its pods", tc.name, mustJSON(svc.Spec), tc.port)
		}
		var sm struct {
			Metadata metav1.ObjectMeta `json:"metadata"`
			Spec     struct {
				Selector  metav1.LabelSelector          `json:"selector"`
				Endpoints []struct{ Port, Path string } `json:"endpoints"`
			} `json:"spec"`
		}
		if err := yaml.Unmarshal(named(t, docs, "ServiceMonitor", tc.name).Raw, &sm); err != nil {
			t.Fatal(err)
		}
		if !selects(sm.Spec.Selector.MatchLabels, svc.Labels) || len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != "admin" ||
			sm.Spec.Endpoints[0].Path != "/metrics" || sm.Metadata.Labels["release"] != "prom" {
			t.Errorf("ServiceMonitor %s = %s", tc.name, mustJSON(sm))
		}
		// Only the metrics Service: the public ones have no admin port.
		for _, s := range kinds(docs, "Service") {
			var other corev1.Service
			s.into(t, &other)
			if s.Name != svc.Name && selects(sm.Spec.Selector.MatchLabels, other.Labels) {
				t.Errorf("ServiceMonitor %s also selects Service %s", tc.name, s.Name)
			}
		}
	}
}

// serverManifests renders the chart for a release and namespace of a test's
// own into a file, for kubectl.
func serverManifests(t testing.TB, rel, ns string, args ...string) string {
	t.Helper()
	cmd := exec.Command(helm(t), append([]string{"template", rel, serverChart, "--namespace", ns}, append(slices.Clone(serverRequired), args...)...)...)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helm template: %v", err)
	}
	file := filepath.Join(t.TempDir(), "server.yaml")
	if err := os.WriteFile(file, out, 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// TestServerManifestsInCluster: the real API server accepts every rendered
// object in a server-side dry run (with everything switched on), and both
// pods pass the namespace's "restricted" Pod Security admission.
func TestServerManifestsInCluster(t *testing.T) {
	kc := kubectl(t)
	env := kubetest.Start(t)
	ns := env.Namespace(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	nsObj, err := env.Client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nsObj.Labels["pod-security.kubernetes.io/enforce"] = "restricted"
	if _, err := env.Client.CoreV1().Namespaces().Update(ctx, nsObj, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	rel := "pipeops-server-" + randomHex(3)
	for _, args := range [][]string{nil, {"-f", filepath.Join(serverChart, "ci", "full-values.yaml"), "--set", "database.url=", "--set", "database.password="}} {
		file := serverManifests(t, rel, ns, args...)
		kargs := []string{"--kubeconfig", env.Kubeconfig, "apply", "--server-side", "--field-manager=helm-test", "--dry-run=server", "-f", file}
		out, err := exec.Command(kc, kargs...).CombinedOutput()
		if err != nil || strings.Contains(string(out), "Warning") {
			t.Fatalf("kubectl %s (values %v): %v\n%s", strings.Join(kargs[2:], " "), args, err, out)
		}
		for _, d := range parse(t, readFile(t, file)) {
			if !strings.Contains(string(out), "/"+d.Name+" serverside-applied (server dry run)") {
				t.Errorf("the dry run did not apply %s %s:\n%s", d.Kind, d.Name, out)
			}
		}
	}

	// Pods are only checked against Pod Security when created, and no
	// controller creates them here: dry-run create one from each template,
	// once enforcement is seen refusing an unconfined pod.
	docs := parse(t, readFile(t, serverManifests(t, rel, ns)))
	dry := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
	for {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "unconfined", Namespace: ns},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "x"}}}}
		_, err := env.Client.CoreV1().Pods(ns).Create(ctx, p, dry)
		if err != nil && strings.Contains(err.Error(), "violates PodSecurity") {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("an unconfined pod is still admitted in %s (err %v)", ns, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	for _, name := range []string{rel + "-controlplane", rel + "-gateway"} {
		d, _ := component(t, docs, name)
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: d.Spec.Template.Spec}
		if _, err := env.Client.CoreV1().Pods(ns).Create(ctx, p, dry); err != nil {
			t.Errorf("the %s pod is refused: %v", name, err)
		}
	}
}

// TestServerHelmInstall installs the chart with helm into the real API
// server, with every optional part on: the Deployments, Services, PDBs and
// the StatefulSet are there (their pods never start: no kubelet runs). An
// upgrade keeps the generated secrets, and uninstalling leaves the
// key-encryption key behind.
func TestServerHelmInstall(t *testing.T) {
	h := helm(t)
	env := kubetest.Start(t)
	ns := env.Namespace(t)
	rel := "pipeops-server-" + randomHex(3)
	helmRun := helmIn(t, h, env, ns)
	full := filepath.Join(serverChart, "ci", "full-values.yaml")
	out := helmRun("install", rel, serverChart, "-f", full)
	for _, want := range []string{
		"STATUS: deployed",
		"kubectl -n " + ns + " exec deploy/" + rel + "-controlplane -- pipeops-controlplane token create --kind admin",
		"Agents open their tunnel at wss://gateway.example.com/ws",
		"no ServiceMonitor was installed",
		"the bundled PostgreSQL",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("helm install output lacks %q:\n%s", want, out)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	apps, core, policy := env.Client.AppsV1(), env.Client.CoreV1(), env.Client.PolicyV1()
	for _, name := range []string{rel + "-controlplane", rel + "-gateway"} {
		if _, err := apps.Deployments(ns).Get(ctx, name, metav1.GetOptions{}); err != nil {
			t.Errorf("Deployment %s after install: %v", name, err)
		}
		if _, err := core.Services(ns).Get(ctx, name, metav1.GetOptions{}); err != nil {
			t.Errorf("Service %s after install: %v", name, err)
		}
		if _, err := policy.PodDisruptionBudgets(ns).Get(ctx, name, metav1.GetOptions{}); err != nil {
			t.Errorf("PodDisruptionBudget %s after install: %v", name, err)
		}
	}
	if svc, err := core.Services(ns).Get(ctx, rel+"-gateway", metav1.GetOptions{}); err != nil || svc.Spec.Type != corev1.ServiceTypeLoadBalancer {
		t.Errorf("gateway Service after install: %v %v", err, svc.Spec.Type)
	}
	if _, err := apps.StatefulSets(ns).Get(ctx, rel+"-postgresql", metav1.GetOptions{}); err != nil {
		t.Errorf("StatefulSet %s after install: %v", rel+"-postgresql", err)
	}

	secrets := func() map[string]string {
		t.Helper()
		got := map[string]string{}
		for _, s := range []string{"-database", "-kek", "-peer"} {
			sec, err := core.Secrets(ns).Get(ctx, rel+s, metav1.GetOptions{})
			if err != nil {
				t.Fatalf("Secret %s%s: %v", rel, s, err)
			}
			for k, v := range sec.Data {
				got[s+"/"+k] = string(v)
			}
		}
		return got
	}
	before := secrets()
	if len(before) != 3 {
		t.Fatalf("generated secrets %v, want a database password, a KEK and a peer secret", slices.Sorted(maps.Keys(before)))
	}
	if kek, err := base64.StdEncoding.DecodeString(before["-kek/key-encryption-key"]); err != nil || len(kek) != 32 {
		t.Errorf("the generated KEK is not base64 of 32 bytes (%d bytes, %v)", len(kek), err)
	}
	helmRun("upgrade", rel, serverChart, "-f", full, "--set", "gateway.replicas=4")
	after := secrets()
	for k, v := range before {
		if after[k] != v {
			t.Errorf("helm upgrade changed the generated %s", k)
		}
	}
	if d, err := apps.Deployments(ns).Get(ctx, rel+"-gateway", metav1.GetOptions{}); err != nil || *d.Spec.Replicas != 4 {
		t.Errorf("the upgrade did not reach the gateways: %v", err)
	}

	helmRun("uninstall", rel)
	if _, err := core.Secrets(ns).Get(ctx, rel+"-kek", metav1.GetOptions{}); err != nil {
		t.Errorf("the key-encryption key went with the release: %v", err)
	}
	if _, err := apps.Deployments(ns).Get(ctx, rel+"-gateway", metav1.GetOptions{}); err == nil {
		t.Error("the gateways' Deployment is left after uninstall")
	}
}

// chartValueKeys lists the leaves of a chart's values.yaml as dotted paths
// (an empty map or list is a leaf).
func chartValueKeys(t testing.TB, file string) []string {
	t.Helper()
	var values map[string]any
	if err := yaml.Unmarshal([]byte(readFile(t, file)), &values); err != nil {
		t.Fatal(err)
	}
	var keys []string
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		m, ok := v.(map[string]any)
		if !ok || len(m) == 0 {
			keys = append(keys, prefix)
			return
		}
		for k, sub := range m {
			if prefix != "" {
				k = prefix + "." + k
			}
			walk(k, sub)
		}
	}
	walk("", values)
	sort.Strings(keys)
	return keys
}

// TestServerREADMEDocumentsEveryValue keeps the table of values in the
// chart's README complete: every value of values.yaml has a row, or its
// parent object has one (podSecurityContext, ...), and every row names a
// value that exists.
func TestServerREADMEDocumentsEveryValue(t *testing.T) {
	checkValuesTable(t, serverChart, filepath.Join(serverChart, "README.md"))
}

// TestServerChartIcon: the icon URL names the SVG kept beside Chart.yaml.
func TestServerChartIcon(t *testing.T) {
	var meta struct{ Icon string }
	if err := yaml.Unmarshal([]byte(readFile(t, filepath.Join(serverChart, "Chart.yaml"))), &meta); err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(meta.Icon, "/main/deploy/helm/"+serverChart+"/icon.svg") {
		t.Errorf("icon %q is not this chart's icon.svg", meta.Icon)
	}
	if svg := readFile(t, filepath.Join(serverChart, "icon.svg")); !strings.HasPrefix(svg, "<svg xmlns=\"http://www.w3.org/2000/svg\"") {
		t.Error("icon.svg is not an SVG image")
	}
}
