#!/usr/bin/env bash
# Installs the pipeops agent into a Kubernetes cluster, creating a local
# cluster first when none is reachable. Run with --help for the options;
# deploy/installer/README.md explains the decisions.
#
#   bash install.sh --token TOKEN --api-url https://cp.example.com
#
# It looks at the machine (OS, architecture, WSL2, LXC/LXD, Docker, a
# reachable cluster), prints its plan, asks before changing anything (unless
# --yes) and then carries the plan out. Every step is skipped when its result
# is already there, so running it again is safe. --dry-run prints the plan and
# the commands without running any of them.
#
# For tests, every program is found through PATH, and reads of /proc and /etc
# go through INSTALL_ROOT (default: the real root). It runs on bash 3.2
# (macOS): no associative arrays, no ${x,,}, guarded empty arrays.
set -euo pipefail

readonly PROGRAM="install.sh"
readonly AGENT_RELEASE="pipeops-agent"
readonly DEFAULT_CHART_REF="oci://ghcr.io/pipeops/charts/pipeops-agent"
readonly LOCAL_CLUSTER="pipeops"
readonly KIND_VERSION="${KIND_VERSION:-v0.30.0}"

INSTALL_ROOT="${INSTALL_ROOT:-}"
BIN_DIR="${PIPEOPS_BIN_DIR:-/usr/local/bin}"
# Tools installed into BIN_DIR must be found by the steps after.
case ":$PATH:" in
*":$BIN_DIR:"*) ;;
*) PATH="$PATH:$BIN_DIR" ;;
esac

# Options (flags override the environment).
TOKEN="${PIPEOPS_TOKEN:-}"
API_URL="${PIPEOPS_API_URL:-}"
CLUSTER_NAME="${PIPEOPS_CLUSTER_NAME:-}"
NAMESPACE="${PIPEOPS_NAMESPACE:-pipeops-system}"
CHART="${PIPEOPS_CHART:-}"
CHART_VERSION="${PIPEOPS_CHART_VERSION:-}"
DISTRIBUTION="auto"
MONITORING="auto"
DRY_RUN=0
ASSUME_YES=0

usage() {
	cat <<'EOF'
Install the pipeops agent into a Kubernetes cluster.

Usage:
  install.sh --token TOKEN --api-url URL [options]

When kubectl reaches a cluster (the current context), the agent goes there.
Otherwise a local cluster is created first: k3s on a Linux host, VM or LXC
container; k3d on Linux or WSL2 with Docker; minikube on macOS.

Options:
  --token TOKEN          the agent token, from `pipeops-controlplane cluster create`
                         (or PIPEOPS_TOKEN). Never printed; handed to Helm in a
                         values file readable only by you, not on a command line.
  --api-url URL          the control plane's http(s) URL (or PIPEOPS_API_URL)
  --cluster-name NAME    the name the cluster registers with (or
                         PIPEOPS_CLUSTER_NAME); empty lets the control plane choose
  --distribution NAME    auto (default), existing, k3s, k3d, kind or minikube.
                         existing: the current kube context, which must be reachable
  --with-monitoring      also install metrics-server, the Vertical Pod Autoscaler,
                         Prometheus, Loki (with Alloy collecting pod logs), Grafana
                         and ingress-nginx, each unless already present.
                         Default on when this script creates the cluster
  --without-monitoring   install no monitoring, even on a new cluster
  --namespace NS         the agent's namespace (default pipeops-system)
  --chart CHART          the agent's Helm chart: a directory or a chart reference
                         (default: helm/pipeops-agent next to this script when it
                         exists, else oci://ghcr.io/pipeops/charts/pipeops-agent)
  --chart-version V      the chart version, for a chart reference
  --dry-run              print what was detected, the plan and the commands;
                         change nothing
  -y, --yes              do not ask before changing the machine
  -h, --help             this help

Environment:
  PIPEOPS_BIN_DIR        where downloaded tools go (default /usr/local/bin)
  KIND_VERSION           the kind release for --distribution kind (default v0.30.0)

Examples:
  install.sh --token "$TOKEN" --api-url https://cp.example.com
  install.sh --token "$TOKEN" --api-url https://cp.example.com --dry-run
  install.sh --token "$TOKEN" --api-url https://cp.example.com --distribution kind --without-monitoring
EOF
}

say() { printf '%s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
	printf 'error: %s\n' "$*" >&2
	exit 1
}
usage_error() {
	printf 'error: %s\n(see %s --help)\n' "$*" "$PROGRAM" >&2
	exit 2
}
have() { command -v "$1" >/dev/null 2>&1; }
lower() { printf '%s' "$1" | tr '[:upper:]' '[:lower:]'; }

# --- options -----------------------------------------------------------------

parse_args() {
	while (($# > 0)); do
		case "$1" in
		--token) need_value "$@" && TOKEN="$2" && shift ;;
		--token=*) TOKEN="${1#*=}" ;;
		--api-url) need_value "$@" && API_URL="$2" && shift ;;
		--api-url=*) API_URL="${1#*=}" ;;
		--cluster-name) need_value "$@" && CLUSTER_NAME="$2" && shift ;;
		--cluster-name=*) CLUSTER_NAME="${1#*=}" ;;
		--distribution) need_value "$@" && DISTRIBUTION="$2" && shift ;;
		--distribution=*) DISTRIBUTION="${1#*=}" ;;
		--namespace) need_value "$@" && NAMESPACE="$2" && shift ;;
		--namespace=*) NAMESPACE="${1#*=}" ;;
		--chart) need_value "$@" && CHART="$2" && shift ;;
		--chart=*) CHART="${1#*=}" ;;
		--chart-version) need_value "$@" && CHART_VERSION="$2" && shift ;;
		--chart-version=*) CHART_VERSION="${1#*=}" ;;
		--with-monitoring) MONITORING="on" ;;
		--without-monitoring) MONITORING="off" ;;
		--dry-run) DRY_RUN=1 ;;
		-y | --yes) ASSUME_YES=1 ;;
		-h | --help)
			usage
			exit 0
			;;
		*) usage_error "unknown option: $1" ;;
		esac
		shift
	done

	[[ -n "$TOKEN" ]] || usage_error "--token is required (the agent token from \`pipeops-controlplane cluster create\`)"
	[[ -n "$API_URL" ]] || usage_error "--api-url is required (the control plane's URL)"
	case "$API_URL" in
	http://?* | https://?*) ;;
	*) usage_error "--api-url $API_URL is not an http(s) URL" ;;
	esac
	case "$DISTRIBUTION" in
	auto | existing | k3s | k3d | kind | minikube) ;;
	*) usage_error "--distribution must be auto, existing, k3s, k3d, kind or minikube, not $DISTRIBUTION" ;;
	esac
	if [[ -z "$CHART" ]]; then
		CHART="$DEFAULT_CHART_REF"
		local here="${BASH_SOURCE[0]:-}"
		if [[ "$here" == */* && -f "${here%/*}/helm/pipeops-agent/Chart.yaml" ]]; then
			CHART="${here%/*}/helm/pipeops-agent"
		fi
	fi
}

need_value() {
	if (($# < 2)) || [[ -z "$2" || "$2" == --* ]]; then
		usage_error "$1 needs a value"
	fi
}

# --- detection -----------------------------------------------------------------

OS="" ARCH="" WSL="no" CONTAINER="" DOCKER="no" SYSTEMD="no" CLUSTER_REACHABLE="no" KUBE_CONTEXT=""
K3S_PRESENT="no"

detect() {
	local kernel machine
	kernel="$(uname -s)"
	machine="$(uname -m)"
	case "$kernel" in
	Linux) OS="linux" ;;
	Darwin) OS="darwin" ;;
	*) die "unsupported operating system $kernel: this installer knows Linux (also WSL2) and macOS" ;;
	esac
	case "$machine" in
	x86_64 | amd64) ARCH="amd64" ;;
	aarch64 | arm64) ARCH="arm64" ;;
	*) die "unsupported architecture $machine: the agent is built for amd64 and arm64" ;;
	esac

	if [[ "$OS" == "linux" ]]; then
		local version=""
		if [[ -r "$INSTALL_ROOT/proc/version" ]]; then
			version="$(<"$INSTALL_ROOT/proc/version")"
		fi
		if [[ "$version" == *WSL2* || "$(lower "$version")" == *microsoft-standard* ]]; then
			WSL="wsl2"
		elif [[ "$(lower "$version")" == *microsoft* ]]; then
			WSL="wsl1"
		elif [[ -n "${WSL_DISTRO_NAME:-}" ]]; then
			WSL="wsl2"
		fi

		# LXC and LXD set container=lxc in PID 1's environment;
		# systemd-detect-virt knows the rest.
		local init_env=""
		if [[ -r "$INSTALL_ROOT/proc/1/environ" ]]; then
			init_env="$({ tr '\0' '\n' <"$INSTALL_ROOT/proc/1/environ"; } 2>/dev/null || true)"
		fi
		if [[ $'\n'"$init_env" == *$'\n'container=lxc* ]]; then
			CONTAINER="lxc"
		elif have systemd-detect-virt; then
			local virt
			virt="$(systemd-detect-virt --container 2>/dev/null || true)"
			case "$virt" in
			"" | none) ;;
			*) CONTAINER="$virt" ;;
			esac
		fi
		if [[ -r "$INSTALL_ROOT/proc/1/comm" && "$(<"$INSTALL_ROOT/proc/1/comm")" == "systemd" ]]; then
			SYSTEMD="yes"
		fi
		if have k3s || [[ -e "$INSTALL_ROOT/etc/rancher/k3s/k3s.yaml" ]]; then
			K3S_PRESENT="yes"
		fi
	fi

	if have docker && docker info >/dev/null 2>&1; then
		DOCKER="yes"
	fi

	# A k3s installed by an earlier run is found even without ~/.kube/config.
	if [[ -z "${KUBECONFIG:-}" && ! -e "${HOME:-}/.kube/config" ]]; then
		local f
		for f in "${HOME:-}/.kube/pipeops-k3s.yaml" "$INSTALL_ROOT/etc/rancher/k3s/k3s.yaml"; do
			if [[ -r "$f" ]]; then
				export KUBECONFIG="$f"
				break
			fi
		done
	fi
	if cluster_reachable; then
		CLUSTER_REACHABLE="yes"
		KUBE_CONTEXT="$(kubectl config current-context 2>/dev/null || true)"
	fi
}

cluster_reachable() {
	have kubectl && kubectl cluster-info --request-timeout=5s >/dev/null 2>&1
}

# --- decisions -----------------------------------------------------------------

# choose_distribution sets DISTRIBUTION (never auto afterwards), INSTALLS_CLUSTER
# and NOTES.
INSTALLS_CLUSTER="no"
NOTES=()
note() { NOTES+=("$*"); }

choose_distribution() {
	if [[ "$DISTRIBUTION" == "auto" ]]; then
		if [[ "$CLUSTER_REACHABLE" == "yes" ]]; then
			DISTRIBUTION="existing"
		elif [[ "$OS" == "darwin" ]]; then
			DISTRIBUTION="minikube"
		elif [[ "$DOCKER" == "yes" ]]; then
			DISTRIBUTION="k3d"
		elif [[ "$WSL" == "wsl2" && "$SYSTEMD" != "yes" ]]; then
			die "WSL2 without Docker and without systemd: k3s needs systemd. Either turn on Docker Desktop's WSL integration (then k3d is used), or enable systemd ([boot] systemd=true in /etc/wsl.conf, then wsl --shutdown) and run this again"
		else
			DISTRIBUTION="k3s"
		fi
	fi

	if [[ "$WSL" == "wsl1" && "$DISTRIBUTION" != "existing" ]]; then
		die "WSL1 cannot run Kubernetes: convert the distribution with \`wsl --set-version <distro> 2\`, or point kubectl at a cluster and use --distribution existing"
	fi
	case "$DISTRIBUTION" in
	existing)
		[[ "$CLUSTER_REACHABLE" == "yes" ]] || die "--distribution existing: kubectl reaches no cluster (kubectl cluster-info fails); fix the kube context or choose a distribution to install"
		;;
	k3s)
		[[ "$OS" == "linux" ]] || die "k3s runs on Linux only; on macOS use --distribution minikube (or k3d/kind with Docker)"
		INSTALLS_CLUSTER="yes"
		if [[ "$CONTAINER" == "lxc" ]]; then
			note "LXC/LXD: k3s needs the container to allow nesting and to be privileged (lxc config set <name> security.nesting=true security.privileged=true), the host to load the overlay and br_netfilter modules, and /dev/kmsg (linked to /dev/console here when missing). k3s runs with --snapshotter=native, since overlayfs is often not available inside LXC."
		elif [[ -n "$CONTAINER" ]]; then
			note "running inside a $CONTAINER container: k3s may not start without privileges; consider k3d or kind on a Docker host instead."
		fi
		if [[ "$WSL" == "wsl2" ]]; then
			note "WSL2: k3s runs as a systemd service of this WSL distribution; it stops with \`wsl --shutdown\`."
		fi
		;;
	k3d | kind)
		[[ "$DOCKER" == "yes" ]] || die "$DISTRIBUTION needs a running Docker engine (docker info fails)"
		INSTALLS_CLUSTER="yes"
		;;
	minikube)
		INSTALLS_CLUSTER="yes"
		if [[ "$DOCKER" == "yes" ]]; then
			note "minikube uses the docker driver."
		elif [[ "$OS" == "linux" ]]; then
			die "minikube on Linux needs Docker here; use --distribution k3s instead"
		else
			note "no Docker found: minikube picks a VM driver (vfkit or qemu on Apple silicon); install Docker Desktop to use the docker driver."
		fi
		;;
	esac

	if [[ "$MONITORING" == "auto" ]]; then
		MONITORING="off"
		if [[ "$INSTALLS_CLUSTER" == "yes" ]]; then
			MONITORING="on"
		fi
	fi
}

# --- running commands ----------------------------------------------------------

WORK_DIR=""

# run prints a command and, unless this is a dry run, runs it.
run() {
	printf '  +'
	printf ' %q' "$@"
	printf '\n'
	if ((DRY_RUN)); then
		return 0
	fi
	"$@"
}

# run_root is run for commands that change the system: through sudo when not
# root.
run_root() {
	if ((EUID == 0)); then
		run "$@"
	elif have sudo || ((DRY_RUN)); then
		run sudo "$@"
	else
		die "$1 needs root: run this as root or install sudo"
	fi
}

# write_file writes stdin to a file in the work directory (mode 600) and
# prints its name; a dry run only says so. $2 describes the content, for the
# printout: files may hold the token.
write_file() {
	local name="$1" what="$2"
	say "  + write $WORK_DIR/$name ($what)"
	if ((DRY_RUN)); then
		cat >/dev/null
		return 0
	fi
	(
		umask 077
		cat >"$WORK_DIR/$name"
	)
}

# fetch downloads url to a file in the work directory.
fetch() {
	run curl -fsSL --retry 3 -o "$WORK_DIR/$2" "$1"
}

# install_bin puts a downloaded file into BIN_DIR.
install_bin() {
	local file="$WORK_DIR/$1" name="$2"
	if [[ -w "$BIN_DIR" ]]; then
		run install -m 0755 "$file" "$BIN_DIR/$name"
	else
		run_root install -m 0755 "$file" "$BIN_DIR/$name"
	fi
}

wait_for_cluster() {
	say "  + wait until the Kubernetes API answers (up to 5 minutes)"
	if ((DRY_RUN)); then
		return 0
	fi
	local i
	for ((i = 0; i < 150; i++)); do
		if kubectl get --raw=/readyz >/dev/null 2>&1; then
			return 0
		fi
		sleep 2
	done
	die "the cluster's API did not become ready within 5 minutes"
}

# --- steps ---------------------------------------------------------------------

step_kubectl() {
	if have kubectl; then
		say "kubectl: present"
		return 0
	fi
	if [[ "$DISTRIBUTION" == "k3s" ]]; then
		say "kubectl: comes with k3s"
		return 0
	fi
	say "kubectl: install into $BIN_DIR"
	if [[ "$OS" == "darwin" ]] && have brew; then
		run brew install kubectl
		return 0
	fi
	fetch https://dl.k8s.io/release/stable.txt kubectl-version
	local version="<stable>"
	((DRY_RUN)) || version="$(<"$WORK_DIR/kubectl-version")"
	fetch "https://dl.k8s.io/release/$version/bin/$OS/$ARCH/kubectl" kubectl
	install_bin kubectl kubectl
}

step_helm() {
	if have helm; then
		say "helm: present"
		return 0
	fi
	say "helm: install into $BIN_DIR"
	if [[ "$OS" == "darwin" ]] && have brew; then
		run brew install helm
		return 0
	fi
	fetch https://raw.githubusercontent.com/helm/helm/main/scripts/get-helm-3 get-helm-3
	run env HELM_INSTALL_DIR="$BIN_DIR" bash "$WORK_DIR/get-helm-3"
}

step_cluster() {
	case "$DISTRIBUTION" in
	existing)
		say "cluster: use the current context${KUBE_CONTEXT:+ \"$KUBE_CONTEXT\"}"
		;;
	k3s) cluster_k3s ;;
	k3d) cluster_k3d ;;
	kind) cluster_kind ;;
	minikube) cluster_minikube ;;
	esac
}

cluster_k3s() {
	if [[ "$K3S_PRESENT" == "yes" ]]; then
		say "cluster: k3s is installed already; not reinstalling"
		if ! cluster_reachable; then
			run_root systemctl start k3s
		fi
	else
		local exec_flags="--write-kubeconfig-mode=600"
		if [[ "$CONTAINER" == "lxc" ]]; then
			exec_flags="$exec_flags --snapshotter=native"
		fi
		say "cluster: install k3s (INSTALL_K3S_EXEC=\"$exec_flags\")"
		if [[ "$CONTAINER" == "lxc" && ! -e "$INSTALL_ROOT/dev/kmsg" ]]; then
			run_root ln -s /dev/console /dev/kmsg
		fi
		fetch https://get.k3s.io k3s-install.sh
		run_root env INSTALL_K3S_EXEC="$exec_flags" sh "$WORK_DIR/k3s-install.sh"
	fi
	# helm and kubectl run as this user: give it a kubeconfig of its own.
	local kubeconfig="$INSTALL_ROOT/etc/rancher/k3s/k3s.yaml"
	if ((EUID != 0)); then
		kubeconfig="$HOME/.kube/pipeops-k3s.yaml"
		if [[ ! -e "$kubeconfig" ]]; then
			run mkdir -p "$HOME/.kube"
			say "  + sudo k3s kubectl config view --raw > $kubeconfig (mode 600)"
			if ((DRY_RUN == 0)); then
				(
					umask 077
					# The file is meant to belong to this user, not root.
					# shellcheck disable=SC2024
					sudo k3s kubectl config view --raw >"$kubeconfig"
				)
			fi
		fi
	fi
	export KUBECONFIG="$kubeconfig"
	say "  KUBECONFIG=$kubeconfig"
	wait_for_cluster
}

cluster_k3d() {
	if ! have k3d; then
		say "k3d: install into $BIN_DIR"
		fetch https://raw.githubusercontent.com/k3d-io/k3d/main/install.sh k3d-install.sh
		run env K3D_INSTALL_DIR="$BIN_DIR" USE_SUDO="$([[ -w "$BIN_DIR" ]] && echo false || echo true)" bash "$WORK_DIR/k3d-install.sh"
	fi
	if have k3d && k3d cluster get "$LOCAL_CLUSTER" >/dev/null 2>&1; then
		say "cluster: k3d cluster $LOCAL_CLUSTER exists already; not recreating"
		cluster_reachable || run k3d cluster start "$LOCAL_CLUSTER"
		run k3d kubeconfig merge "$LOCAL_CLUSTER" --kubeconfig-merge-default --kubeconfig-switch-context
	else
		say "cluster: create k3d cluster $LOCAL_CLUSTER"
		run k3d cluster create "$LOCAL_CLUSTER" --wait --timeout 300s
	fi
	wait_for_cluster
}

cluster_kind() {
	if ! have kind; then
		say "kind: install $KIND_VERSION into $BIN_DIR"
		fetch "https://kind.sigs.k8s.io/dl/$KIND_VERSION/kind-$OS-$ARCH" kind
		install_bin kind kind
	fi
	local clusters=""
	if have kind; then
		clusters="$(kind get clusters 2>/dev/null || true)"
	fi
	if [[ $'\n'"$clusters"$'\n' == *$'\n'"$LOCAL_CLUSTER"$'\n'* ]]; then
		say "cluster: kind cluster $LOCAL_CLUSTER exists already; not recreating"
		run kind export kubeconfig --name "$LOCAL_CLUSTER"
	else
		say "cluster: create kind cluster $LOCAL_CLUSTER"
		run kind create cluster --name "$LOCAL_CLUSTER" --wait 300s
	fi
	wait_for_cluster
}

cluster_minikube() {
	if ! have minikube; then
		say "minikube: install"
		if [[ "$OS" == "darwin" ]] && have brew; then
			run brew install minikube
		else
			fetch "https://github.com/kubernetes/minikube/releases/latest/download/minikube-$OS-$ARCH" minikube
			install_bin minikube minikube
		fi
	fi
	if have minikube && minikube status -p "$LOCAL_CLUSTER" >/dev/null 2>&1; then
		say "cluster: minikube profile $LOCAL_CLUSTER is running already; not recreating"
		run minikube update-context -p "$LOCAL_CLUSTER"
	else
		local args=(start -p "$LOCAL_CLUSTER")
		if [[ "$DOCKER" == "yes" ]]; then
			args+=(--driver=docker)
		fi
		say "cluster: start minikube profile $LOCAL_CLUSTER"
		run minikube "${args[@]}"
	fi
	wait_for_cluster
}

step_agent() {
	say "agent: helm upgrade --install $AGENT_RELEASE from $CHART into namespace $NAMESPACE"
	write_file agent-values.yaml "the control plane URL, the token and the cluster name" <<EOF
agent:
  pipeops:
    apiUrl: $(yaml_quote "$API_URL")
    token: $(yaml_quote "$TOKEN")
  clusterName: $(yaml_quote "$CLUSTER_NAME")
EOF
	local args=(upgrade --install "$AGENT_RELEASE" "$CHART" --namespace "$NAMESPACE" --create-namespace --values "$WORK_DIR/agent-values.yaml")
	if [[ -n "$CHART_VERSION" ]]; then
		args+=(--version "$CHART_VERSION")
	fi
	run helm "${args[@]}"
	say "  + wait for the agent to become ready (up to 2 minutes)"
	if ((DRY_RUN == 0)) && ! kubectl --namespace "$NAMESPACE" rollout status "deployment/$AGENT_RELEASE" --timeout=120s; then
		warn "the agent is not ready yet; see: kubectl --namespace $NAMESPACE logs deployment/$AGENT_RELEASE"
	fi
}

# yaml_quote prints s as a double-quoted YAML string.
yaml_quote() {
	local s="$1"
	s="${s//\\/\\\\}"
	s="${s//\"/\\\"}"
	printf '"%s"' "$s"
}

# The monitoring components: release, namespace, repository name and URL,
# chart. Each is skipped when already present.
step_monitoring() {
	if [[ "$MONITORING" != "on" ]]; then
		say "monitoring: not installed (--with-monitoring adds it)"
		return 0
	fi
	say "monitoring: metrics-server, vpa, prometheus, loki, alloy, grafana, ingress-nginx (each unless present)"
	local repos_added=""
	add_repo() { # name url
		case " $repos_added " in *" $1 "*) return 0 ;; esac
		run helm repo add "$1" "$2" --force-update
		repos_added="$repos_added $1"
	}

	if [[ "$DISTRIBUTION" == "k3s" || "$DISTRIBUTION" == "k3d" ]]; then
		say "  metrics-server: skip, k3s ships it"
	elif probe kubectl get apiservice v1beta1.metrics.k8s.io; then
		say "  metrics-server: skip, the metrics API is served already"
	else
		add_repo metrics-server https://kubernetes-sigs.github.io/metrics-server/
		local ms_args=(upgrade --install metrics-server metrics-server/metrics-server --namespace kube-system)
		# kind and minikube kubelets serve self-signed certificates.
		case "$DISTRIBUTION" in kind | minikube) ms_args+=(--set "args={--kubelet-insecure-tls}") ;; esac
		run helm "${ms_args[@]}"
	fi

	if probe kubectl get crd verticalpodautoscalers.autoscaling.k8s.io; then
		say "  vpa: skip, the VerticalPodAutoscaler CRD exists"
	else
		add_repo fairwinds-stable https://charts.fairwinds.com/stable
		run helm upgrade --install vpa fairwinds-stable/vpa --namespace vpa --create-namespace
	fi

	if release_exists prometheus monitoring; then
		say "  prometheus: skip, release monitoring/prometheus exists"
	else
		add_repo prometheus-community https://prometheus-community.github.io/helm-charts
		run helm upgrade --install prometheus prometheus-community/prometheus --namespace monitoring --create-namespace \
			--set alertmanager.enabled=false --set prometheus-pushgateway.enabled=false
	fi

	if release_exists loki monitoring; then
		say "  loki: skip, release monitoring/loki exists"
	else
		add_repo grafana https://grafana.github.io/helm-charts
		write_file loki-values.yaml "single-binary Loki on a filesystem volume" <<'EOF'
deploymentMode: SingleBinary
loki:
  auth_enabled: false
  commonConfig:
    replication_factor: 1
  storage:
    type: filesystem
  schemaConfig:
    configs:
      - from: "2024-04-01"
        store: tsdb
        object_store: filesystem
        schema: v13
        index:
          prefix: loki_index_
          period: 24h
singleBinary:
  replicas: 1
read:
  replicas: 0
write:
  replicas: 0
backend:
  replicas: 0
chunksCache:
  enabled: false
resultsCache:
  enabled: false
lokiCanary:
  enabled: false
test:
  enabled: false
EOF
		run helm upgrade --install loki grafana/loki --namespace monitoring --create-namespace --values "$WORK_DIR/loki-values.yaml"
	fi

	if release_exists alloy monitoring; then
		say "  alloy: skip, release monitoring/alloy exists"
	else
		add_repo grafana https://grafana.github.io/helm-charts
		write_file alloy-values.yaml "pod logs to Loki" <<'EOF'
alloy:
  configMap:
    content: |
      discovery.kubernetes "pods" {
        role = "pod"
      }
      discovery.relabel "pods" {
        targets = discovery.kubernetes.pods.targets
        rule {
          source_labels = ["__meta_kubernetes_namespace"]
          target_label  = "namespace"
        }
        rule {
          source_labels = ["__meta_kubernetes_pod_name"]
          target_label  = "pod"
        }
        rule {
          source_labels = ["__meta_kubernetes_pod_container_name"]
          target_label  = "container"
        }
      }
      loki.source.kubernetes "pods" {
        targets    = discovery.relabel.pods.output
        forward_to = [loki.write.default.receiver]
      }
      loki.write "default" {
        endpoint {
          url = "http://loki-gateway.monitoring.svc.cluster.local/loki/api/v1/push"
        }
      }
EOF
		run helm upgrade --install alloy grafana/alloy --namespace monitoring --create-namespace --values "$WORK_DIR/alloy-values.yaml"
	fi

	if release_exists grafana monitoring; then
		say "  grafana: skip, release monitoring/grafana exists"
	else
		add_repo grafana https://grafana.github.io/helm-charts
		write_file grafana-values.yaml "Prometheus and Loki datasources" <<'EOF'
datasources:
  datasources.yaml:
    apiVersion: 1
    datasources:
      - name: Prometheus
        uid: prometheus
        type: prometheus
        access: proxy
        url: http://prometheus-server.monitoring.svc.cluster.local
        isDefault: true
      - name: Loki
        uid: loki
        type: loki
        access: proxy
        url: http://loki-gateway.monitoring.svc.cluster.local
EOF
		run helm upgrade --install grafana grafana/grafana --namespace monitoring --create-namespace --values "$WORK_DIR/grafana-values.yaml"
	fi

	if [[ "$DISTRIBUTION" == "k3s" || "$DISTRIBUTION" == "k3d" ]]; then
		say "  ingress-nginx: skip, k3s ships Traefik as its ingress controller"
	elif [[ -n "$(probe_out kubectl get ingressclass -o name)" ]]; then
		say "  ingress-nginx: skip, an ingress controller is installed (kubectl get ingressclass)"
	else
		add_repo ingress-nginx https://kubernetes.github.io/ingress-nginx
		run helm upgrade --install ingress-nginx ingress-nginx/ingress-nginx --namespace ingress-nginx --create-namespace
	fi
}

# probe runs a read-only check. Before the cluster exists (a dry run that
# would create it) every check fails, so the plan shows the installs.
probe() {
	[[ "$CLUSTER_REACHABLE" == "yes" || "$DRY_RUN" == 0 ]] || return 1
	"$@" >/dev/null 2>&1
}
probe_out() {
	[[ "$CLUSTER_REACHABLE" == "yes" || "$DRY_RUN" == 0 ]] || return 0
	"$@" 2>/dev/null || true
}
release_exists() { have helm && probe helm status "$1" --namespace "$2"; }

# --- main ----------------------------------------------------------------------

print_detected() {
	say "Detected:"
	say "  system:     $OS/$ARCH"
	if [[ "$OS" == "linux" ]]; then
		say "  wsl:        $WSL"
		say "  container:  ${CONTAINER:-none}"
	fi
	say "  docker:     $([[ "$DOCKER" == "yes" ]] && echo available || echo "not available")"
	if [[ "$CLUSTER_REACHABLE" == "yes" ]]; then
		say "  kubernetes: reachable (context ${KUBE_CONTEXT:-unknown})"
	else
		say "  kubernetes: no reachable cluster"
	fi
}

print_plan() {
	say "Plan:"
	if [[ "$INSTALLS_CLUSTER" == "yes" ]]; then
		say "  distribution: $DISTRIBUTION (install unless present)"
	else
		say "  distribution: existing cluster${KUBE_CONTEXT:+ (context $KUBE_CONTEXT)}"
	fi
	say "  agent:        $AGENT_RELEASE from $CHART, namespace $NAMESPACE, control plane $API_URL${CLUSTER_NAME:+, cluster name $CLUSTER_NAME}"
	say "  monitoring:   $MONITORING"
	local n
	for n in ${NOTES[@]+"${NOTES[@]}"}; do
		say "  note: $n"
	done
}

confirm() {
	if ((ASSUME_YES || DRY_RUN)); then
		return 0
	fi
	local answer=""
	if [[ -t 0 ]]; then
		read -r -p "Go ahead? [y/N] " answer
	elif (: </dev/tty) 2>/dev/null; then
		# curl ... | bash: standard input is the script; ask the terminal.
		read -r -p "Go ahead? [y/N] " answer </dev/tty
	else
		die "no terminal to ask on: pass --yes to go ahead, or --dry-run to see the plan"
	fi
	case "$answer" in
	y | Y | yes | YES) ;;
	*) die "stopped; nothing was changed" ;;
	esac
}

main() {
	parse_args "$@"
	detect
	choose_distribution

	say "pipeops agent installer"
	print_detected
	print_plan
	confirm

	if ((DRY_RUN)); then
		WORK_DIR="${TMPDIR:-/tmp}/pipeops-install.XXXXXX"
		say "Dry run: nothing is changed. The steps and the commands they would run:"
	else
		WORK_DIR="$(mktemp -d "${TMPDIR:-/tmp}/pipeops-install.XXXXXX")"
		trap 'rm -rf "$WORK_DIR"' EXIT
		say "Steps:"
	fi

	step_kubectl
	step_helm
	step_cluster
	step_agent
	step_monitoring

	if ((DRY_RUN)); then
		say "Dry run finished; run again without --dry-run to carry out the plan."
		return 0
	fi
	say "Done. The agent: kubectl --namespace $NAMESPACE get pods; logs: kubectl --namespace $NAMESPACE logs deployment/$AGENT_RELEASE"
	if [[ "$MONITORING" == "on" ]]; then
		say "Grafana: kubectl --namespace monitoring port-forward service/grafana 3000:80, user admin, password: kubectl --namespace monitoring get secret grafana -o jsonpath='{.data.admin-password}' | base64 -d"
	fi
}

main "$@"
