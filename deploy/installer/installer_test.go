package installer

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/pipeops/tunnel/shared/testenv"
)

const (
	token  = "tok-3f9a1c-secret"
	apiURL = "https://cp.example.com"
)

var (
	debian = "Linux version 6.1.0-18-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14) 12.2.0) #1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1 (2024-02-01)"
	wsl2   = "Linux version 5.15.167.4-microsoft-standard-WSL2 (root@f9c826d3017f) (gcc (GCC) 11.2.0, GNU ld (GNU Binutils) 2.37) #1 SMP Tue Nov 5 00:21:55 UTC 2024"

	linuxHost = machine{kernel: "Linux", arch: "x86_64", procVersion: debian, initEnviron: "HOME=/\x00TERM=linux\x00", initComm: "systemd", virt: "none"}
)

func with(m machine, change func(*machine)) machine {
	change(&m)
	return m
}

// mutating are stub calls that change the machine; a dry run makes none.
var mutating = []string{"curl", "sudo", "brew", "systemctl", "helm upgrade", "helm repo", "helm install",
	"k3d cluster create", "k3d cluster start", "k3d kubeconfig", "kind create", "kind export", "minikube start",
	"minikube update-context", "kubectl apply", "kubectl create", "k3s", "k3s-installer"}

func TestDryRunPlans(t *testing.T) {
	for _, tc := range []struct {
		name    string
		m       machine
		args    []string
		want    []string // lines or parts of lines of the output, in order
		notWant []string
	}{
		{
			name: "linux host: k3s",
			m:    with(linuxHost, func(m *machine) { m.tools = []string{"kubectl"} }),
			want: []string{
				"system:     linux/amd64", "wsl:        no", "container:  none", "docker:     not available", "kubernetes: no reachable cluster",
				"distribution: k3s (install unless present)", "monitoring:   on",
				"helm: install into ", "+ curl -fsSL --retry 3 -o ", "get-helm-3 https://raw.githubusercontent.com/helm/helm/main/scripts/get-helm-3",
				"cluster: install k3s", "https://get.k3s.io", "+ env INSTALL_K3S_EXEC=--write-kubeconfig-mode=600 sh ",
				"+ helm upgrade --install pipeops-agent deploy/helm/pipeops-agent --namespace pipeops-system --create-namespace --values ",
				"metrics-server: skip, k3s ships it",
				"+ helm upgrade --install vpa fairwinds-stable/vpa", "+ helm upgrade --install prometheus prometheus-community/prometheus",
				"+ helm upgrade --install loki grafana/loki", "+ helm upgrade --install alloy grafana/alloy", "+ helm upgrade --install grafana grafana/grafana",
				"ingress-nginx: skip, k3s ships Traefik",
			},
			notWant: []string{"snapshotter", "k3d", "note:"},
		},
		{
			name: "WSL2 with Docker: k3d",
			m: with(linuxHost, func(m *machine) {
				m.procVersion, m.initComm, m.virt, m.docker = wsl2, "init", "wsl", "up"
				m.tools = []string{"kubectl", "helm"}
			}),
			want: []string{"wsl:        wsl2", "docker:     available", "distribution: k3d",
				"k3d: install into ", "https://raw.githubusercontent.com/k3d-io/k3d/main/install.sh",
				"cluster: create k3d cluster pipeops", "+ k3d cluster create pipeops --wait --timeout 300s", "+ helm upgrade --install pipeops-agent"},
			notWant: []string{"get.k3s.io", "helm: install"},
		},
		{
			name: "WSL2 with systemd, no Docker: k3s",
			m: with(linuxHost, func(m *machine) {
				m.procVersion, m.virt = wsl2, "wsl"
				m.tools = []string{"kubectl", "helm"}
			}),
			want: []string{"wsl:        wsl2", "distribution: k3s", "note: WSL2: k3s runs as a systemd service", "https://get.k3s.io"},
		},
		{
			name: "WSL2 recognised by WSL_DISTRO_NAME alone",
			m: with(linuxHost, func(m *machine) {
				m.procVersion, m.docker = debian, "up"
				m.env = []string{"WSL_DISTRO_NAME=Ubuntu-24.04"}
				m.tools = []string{"kubectl", "helm", "k3d"}
			}),
			want: []string{"wsl:        wsl2", "distribution: k3d", "+ k3d cluster create pipeops"},
		},
		{
			name: "LXC container: k3s with LXC settings",
			m: with(linuxHost, func(m *machine) {
				m.initEnviron = "container=lxc\x00HOME=/\x00"
				m.virt = "lxc"
				m.tools = []string{"kubectl", "helm"}
			}),
			want: []string{"container:  lxc", "distribution: k3s", "note: LXC/LXD: k3s needs the container to allow nesting",
				"+ ln -s /dev/console /dev/kmsg", "+ env INSTALL_K3S_EXEC=--write-kubeconfig-mode=600\\ --snapshotter=native sh "},
		},
		{
			name: "LXD found by systemd-detect-virt",
			m: with(linuxHost, func(m *machine) {
				m.initEnviron = "" // PID 1's environment unreadable
				m.virt = "lxc"
				m.tools = []string{"kubectl", "helm"}
			}),
			want: []string{"container:  lxc", "distribution: k3s", "--snapshotter=native"},
		},
		{
			name: "macOS with Docker: minikube",
			m:    machine{kernel: "Darwin", arch: "arm64", docker: "up", tools: []string{"brew", "kubectl", "helm"}},
			want: []string{"system:     darwin/arm64", "docker:     available", "distribution: minikube", "note: minikube uses the docker driver",
				"minikube: install", "+ brew install minikube", "+ minikube start -p pipeops --driver=docker", "+ helm upgrade --install pipeops-agent",
				"+ helm upgrade --install metrics-server metrics-server/metrics-server --namespace kube-system --set args=\\{--kubelet-insecure-tls\\}",
				"+ helm upgrade --install ingress-nginx ingress-nginx/ingress-nginx"},
			notWant: []string{"wsl:", "container:", "k3s"},
		},
		{
			name: "macOS without Docker: minikube with a VM driver",
			m:    machine{kernel: "Darwin", arch: "x86_64", tools: []string{"kubectl", "helm"}},
			want: []string{"system:     darwin/amd64", "distribution: minikube", "picks a VM driver",
				"+ curl -fsSL --retry 3 -o ", "https://github.com/kubernetes/minikube/releases/latest/download/minikube-darwin-amd64",
				"+ minikube start -p pipeops\n"},
		},
		{
			name: "existing reachable cluster: use it, no monitoring by default",
			m: with(linuxHost, func(m *machine) {
				m.cluster, m.context, m.docker = true, "prod-eu", "up"
				m.tools = []string{"kubectl", "helm", "k3d"}
			}),
			want: []string{"kubernetes: reachable (context prod-eu)", "distribution: existing cluster (context prod-eu)", "monitoring:   off",
				"cluster: use the current context \"prod-eu\"", "+ helm upgrade --install pipeops-agent", "monitoring: not installed"},
			notWant: []string{"k3d cluster create", "get.k3s.io", "helm repo add"},
		},
		{
			name: "existing cluster with --with-monitoring: skips what is there",
			m: with(linuxHost, func(m *machine) {
				m.cluster, m.context, m.metricsAPI, m.ingressClass = true, "prod-eu", true, true
				m.tools = []string{"kubectl", "helm"}
			}),
			args: []string{"--with-monitoring"},
			want: []string{"monitoring:   on", "metrics-server: skip, the metrics API is served already", "+ helm upgrade --install vpa",
				"+ helm upgrade --install prometheus", "ingress-nginx: skip, an ingress controller is installed"},
		},
		{
			name: "Linux with Docker, no cluster: k3d",
			m: with(linuxHost, func(m *machine) {
				m.docker = "up"
				m.tools = []string{"kubectl", "helm", "k3d"}
			}),
			want: []string{"docker:     available", "kubernetes: no reachable cluster", "distribution: k3d", "monitoring:   on",
				"kubectl: present", "helm: present", "cluster: create k3d cluster pipeops", "+ k3d cluster create pipeops --wait --timeout 300s",
				"+ helm upgrade --install pipeops-agent", "metrics-server: skip, k3s ships it"},
			notWant: []string{"k3d: install", "get.k3s.io"},
		},
		{
			name: "Docker installed but not running: k3s",
			m: with(linuxHost, func(m *machine) {
				m.docker = "down"
				m.tools = []string{"kubectl", "helm"}
			}),
			want: []string{"docker:     not available", "distribution: k3s"},
		},
		{
			name: "explicit kind, no monitoring, custom chart and namespace",
			m: with(linuxHost, func(m *machine) {
				m.docker = "up"
				m.tools = []string{"kubectl", "helm"}
			}),
			args: []string{"--distribution", "kind", "--without-monitoring", "--chart", "oci://registry.example.com/pipeops-agent", "--chart-version", "1.2.3",
				"--namespace", "tunnel", "--cluster-name", "edge-1"},
			want: []string{"distribution: kind", "cluster name edge-1", "monitoring:   off", "kind: install v0.30.0",
				"https://kind.sigs.k8s.io/dl/v0.30.0/kind-linux-amd64", "+ kind create cluster --name pipeops --wait 300s",
				"+ helm upgrade --install pipeops-agent oci://registry.example.com/pipeops-agent --namespace tunnel --create-namespace --values ",
				"--version 1.2.3", "monitoring: not installed"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newMachine(t, tc.m)
			r := f.run(append([]string{"--dry-run", "--token", token, "--api-url", apiURL}, tc.args...)...)
			if r.code != 0 {
				t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
			}
			rest := r.stdout
			for _, w := range tc.want {
				i := strings.Index(rest, w)
				if i < 0 {
					where := "at all"
					if strings.Contains(r.stdout, w) {
						where = "in this order"
					}
					t.Errorf("the plan lacks %q %s\n%s", w, where, r.stdout)
					break
				}
				rest = rest[i+len(w):]
			}
			for _, nw := range tc.notWant {
				if strings.Contains(r.stdout, nw) {
					t.Errorf("the plan mentions %q\n%s", nw, r.stdout)
				}
			}
			checkDryRunChangedNothing(t, f, r)
		})
	}
}

func checkDryRunChangedNothing(t *testing.T, f *fakeMachine, r run) {
	t.Helper()
	for _, c := range r.calls {
		for _, m := range mutating {
			if c == m || strings.HasPrefix(c, m+" ") {
				t.Errorf("the dry run called %q", c)
			}
		}
	}
	for _, dir := range []string{f.binDir, f.tmp, f.home} {
		if entries, _ := os.ReadDir(dir); len(entries) > 0 {
			t.Errorf("the dry run wrote into %s: %v", dir, entries)
		}
	}
	if strings.Contains(r.stdout+r.stderr, token) {
		t.Error("the token was printed")
	}
}

func TestRefusals(t *testing.T) {
	for _, tc := range []struct {
		name string
		m    machine
		args []string
		env  []string
		code int
		want string
	}{
		{"no token", linuxHost, []string{"--api-url", apiURL, "--dry-run"}, nil, 2, "--token is required"},
		{"no API URL", linuxHost, []string{"--token", token, "--dry-run"}, nil, 2, "--api-url is required"},
		{"API URL not http", linuxHost, []string{"--token", token, "--api-url", "cp.example.com", "--dry-run"}, nil, 2, "is not an http(s) URL"},
		{"unknown option", linuxHost, []string{"--token", token, "--api-url", apiURL, "--frobnicate"}, nil, 2, "unknown option: --frobnicate"},
		{"option without value", linuxHost, []string{"--api-url", apiURL, "--token"}, nil, 2, "--token needs a value"},
		{"unknown distribution", linuxHost, []string{"--token", token, "--api-url", apiURL, "--distribution", "microk8s"}, nil, 2, "--distribution must be"},
		{"existing without a cluster", with(linuxHost, func(m *machine) { m.tools = []string{"kubectl"} }),
			[]string{"--token", token, "--api-url", apiURL, "--distribution", "existing", "--dry-run"}, nil, 1, "kubectl reaches no cluster"},
		{"k3s on macOS", machine{kernel: "Darwin", arch: "arm64"},
			[]string{"--token", token, "--api-url", apiURL, "--distribution", "k3s", "--dry-run"}, nil, 1, "k3s runs on Linux only"},
		{"k3d without Docker", linuxHost,
			[]string{"--token", token, "--api-url", apiURL, "--distribution", "k3d", "--dry-run"}, nil, 1, "k3d needs a running Docker engine"},
		{"WSL2 without Docker or systemd", with(linuxHost, func(m *machine) { m.procVersion, m.initComm = wsl2, "init" }),
			[]string{"--token", token, "--api-url", apiURL, "--dry-run"}, nil, 1, "enable systemd"},
		{"WSL1", with(linuxHost, func(m *machine) {
			m.procVersion = "Linux version 4.4.0-19041-Microsoft (Microsoft@Microsoft.com) (gcc version 5.4.0 (GCC) ) #1237-Microsoft"
		}), []string{"--token", token, "--api-url", apiURL, "--dry-run"}, nil, 1, "WSL1 cannot run Kubernetes"},
		{"unsupported architecture", with(linuxHost, func(m *machine) { m.arch = "riscv64" }),
			[]string{"--token", token, "--api-url", apiURL, "--dry-run"}, nil, 1, "unsupported architecture riscv64"},
		{"no terminal and no --yes", with(linuxHost, func(m *machine) { m.tools = []string{"kubectl", "helm"} }),
			[]string{"--token", token, "--api-url", apiURL}, nil, 1, "pass --yes"},
		{"token from the environment", with(linuxHost, func(m *machine) { m.tools = []string{"kubectl", "helm"} }),
			[]string{"--api-url", apiURL, "--dry-run"}, []string{"PIPEOPS_TOKEN=" + token}, 0, "distribution: k3s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newMachine(t, tc.m)
			r := f.runWith(tc.env, tc.args...)
			if r.code != tc.code || !strings.Contains(r.stdout+r.stderr, tc.want) {
				t.Errorf("exit %d, want %d with %q\nstdout:\n%s\nstderr:\n%s", r.code, tc.code, tc.want, r.stdout, r.stderr)
			}
			checkDryRunChangedNothing(t, f, r)
		})
	}
}

// TestInstallIsIdempotent installs for real on a fake machine, twice: the
// first run creates the cluster and installs everything; the second finds the
// cluster, leaves it alone, and upgrades only the agent. A third run with
// --with-monitoring finds every monitoring release installed already.
func TestInstallIsIdempotent(t *testing.T) {
	for _, tc := range []struct {
		name, create string
		m            machine
		args         []string
		again        string // what the second run says about the cluster
	}{
		{name: "k3d", create: "k3d cluster create pipeops", again: "distribution: existing cluster",
			m: with(linuxHost, func(m *machine) { m.docker = "up"; m.tools = []string{"kubectl", "helm", "k3d"} })},
		{name: "k3s", create: "k3s-installer", again: "distribution: existing cluster",
			m: with(linuxHost, func(m *machine) { m.tools = []string{"kubectl", "helm"} })},
		{name: "minikube", create: "minikube start", again: "distribution: existing cluster",
			m: machine{kernel: "Darwin", arch: "arm64", docker: "up", tools: []string{"kubectl", "helm", "minikube"}}},
		// A distribution named on the command line is used again, and its
		// cluster is found and kept.
		{name: "kind", create: "kind create cluster", args: []string{"--distribution", "kind"}, again: "cluster: kind cluster pipeops exists already; not recreating",
			m: with(linuxHost, func(m *machine) { m.docker = "up"; m.tools = []string{"kubectl", "helm", "kind"} })},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newMachine(t, tc.m)
			args := append([]string{"--yes", "--token", token, "--api-url", apiURL, "--cluster-name", "edge-1"}, tc.args...)

			first := f.run(args...)
			if first.code != 0 {
				t.Fatalf("first run: exit %d\n%s\n%s", first.code, first.stdout, first.stderr)
			}
			if !first.called(tc.create) {
				t.Errorf("first run did not create the cluster (%s); calls:\n%s", tc.create, strings.Join(first.calls, "\n"))
			}
			agentInstall := "helm upgrade --install pipeops-agent " + filepath.Join("deploy", "helm", "pipeops-agent") + " --namespace pipeops-system --create-namespace --values "
			if !first.called(agentInstall) {
				t.Errorf("first run did not call %q; calls:\n%s", agentInstall, strings.Join(first.calls, "\n"))
			}
			values := f.readState("values-pipeops-agent.yaml")
			for _, want := range []string{`token: "` + token + `"`, `apiUrl: "` + apiURL + `"`, `clusterName: "edge-1"`} {
				if !strings.Contains(values, want) {
					t.Errorf("agent values lack %s:\n%s", want, values)
				}
			}
			for _, rel := range []string{"vpa", "prometheus", "loki", "alloy", "grafana"} {
				if !slices.Contains(f.installed(), "release-"+rel) {
					t.Errorf("a new cluster gets monitoring by default; %s was not installed", rel)
				}
			}
			if strings.Contains(first.stdout+first.stderr, token) {
				t.Error("the token was printed")
			}
			if entries, _ := os.ReadDir(f.tmp); len(entries) > 0 {
				t.Errorf("the work directory was left behind: %v", entries)
			}
			if tc.name == "k3s" && !first.called("k3s-installer INSTALL_K3S_EXEC=--write-kubeconfig-mode=600") {
				t.Errorf("k3s installed with other flags: %v", first.calls)
			}

			second := f.run(args...)
			if second.code != 0 {
				t.Fatalf("second run: exit %d\n%s\n%s", second.code, second.stdout, second.stderr)
			}
			if !strings.Contains(second.stdout, tc.again) {
				t.Errorf("second run did not find the cluster the first one made:\n%s", second.stdout)
			}
			for _, c := range second.calls {
				for _, again := range []string{tc.create, "curl", "helm upgrade --install vpa", "helm upgrade --install prometheus", "helm repo add"} {
					if strings.HasPrefix(c, again) {
						t.Errorf("second run called %q again", c)
					}
				}
			}
			if !second.called(agentInstall) {
				t.Error("second run did not upgrade the agent")
			}

			third := f.run(append(args, "--with-monitoring")...)
			if third.code != 0 {
				t.Fatalf("third run: exit %d\n%s\n%s", third.code, third.stdout, third.stderr)
			}
			for _, rel := range []string{"prometheus", "loki", "alloy", "grafana"} {
				if third.called("helm upgrade --install "+rel+" ") || !strings.Contains(third.stdout, rel+": skip, release monitoring/"+rel+" exists") {
					t.Errorf("third run did not skip the installed %s\n%s", rel, third.stdout)
				}
			}
		})
	}
}

func TestHelp(t *testing.T) {
	f := newMachine(t, linuxHost)
	r := f.run("--help")
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("--help: exit %d, stderr %q", r.code, r.stderr)
	}
	if len(r.calls) != 0 {
		t.Errorf("--help ran %v", r.calls)
	}
	script, err := os.ReadFile(filepath.Join(testenv.Root(t), "deploy", "install.sh"))
	if err != nil {
		t.Fatal(err)
	}
	// Every option parse_args accepts is explained, and nothing else is.
	parsed := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\s+(?:-[a-z] \| )?(--[a-z-]+)\)`).FindAllStringSubmatch(string(script), -1) {
		parsed[m[1]] = true
	}
	if len(parsed) < 10 {
		t.Fatalf("found only %d options in parse_args: %v", len(parsed), parsed)
	}
	helped := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^  (?:-[a-z], )?(--[a-z-]+)`).FindAllStringSubmatch(r.stdout, -1) {
		helped[m[1]] = true
	}
	for o := range parsed {
		if !helped[o] {
			t.Errorf("--help does not explain %s", o)
		}
	}
	for o := range helped {
		if !parsed[o] {
			t.Errorf("--help explains %s, which the script does not accept", o)
		}
	}
	for _, w := range []string{"k3s", "k3d", "minikube", "PIPEOPS_TOKEN", "--dry-run"} {
		if !strings.Contains(r.stdout, w) {
			t.Errorf("--help does not mention %s", w)
		}
	}
}

func TestShellcheck(t *testing.T) {
	sc, err := exec.LookPath("shellcheck")
	if err != nil {
		testenv.Require(t, "shellcheck", fmt.Errorf("%w: shellcheck is not installed (apt-get install shellcheck)", testenv.ErrUnavailable))
	}
	cmd := exec.Command(sc, "--shell=bash", "--severity=style", "deploy/install.sh")
	cmd.Dir = testenv.Root(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("shellcheck deploy/install.sh: %v\n%s", err, out)
	}
}
