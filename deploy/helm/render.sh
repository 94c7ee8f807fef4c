#!/usr/bin/env bash
# Renders the plain manifests (deploy/manifests/pipeops-agent.yaml) from the
# chart with its default values: `make manifests` runs it, and
# deploy/helm/helm_test.go runs it to catch manifests that drifted from the
# chart.
#
#   render.sh [OUT]        OUT defaults to deploy/manifests/pipeops-agent.yaml
#
# RELEASE and NAMESPACE (defaults pipeops-agent, pipeops-system) change the
# release name and namespace, for tests; HELM names the helm binary.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
out=${1:-$root/deploy/manifests/pipeops-agent.yaml}
release=${RELEASE:-pipeops-agent}
namespace=${NAMESPACE:-pipeops-system}
helm=${HELM:-helm}

body=$("$helm" template "$release" "$root/deploy/helm/pipeops-agent" \
	--namespace "$namespace" \
	--set agent.pipeops.token=REPLACE_WITH_YOUR_TOKEN)

mkdir -p "$(dirname "$out")"
tmp=$(mktemp "$out.XXXXXX")
trap 'rm -f "$tmp"' EXIT
{
	cat <<HEADER
# GENERATED FILE: do not edit. \`make manifests\` renders it from the Helm
# chart deploy/helm/pipeops-agent with the default values (see
# deploy/README.md); change the chart instead.
#
# The pipeops agent in namespace $namespace, for clusters without Helm:
#
#   1. Put your agent token (\`pipeops-controlplane cluster create\`) in place
#      of REPLACE_WITH_YOUR_TOKEN below, and your control plane's URL in
#      PIPEOPS_API_URL if it is not hosted PipeOps.
#   2. kubectl apply -f pipeops-agent.yaml
#   3. kubectl -n $namespace exec deploy/$release -- pipeops-agent --check
#
# The pod meets the "restricted" Pod Security Standard, which the namespace
# enforces.
---
apiVersion: v1
kind: Namespace
metadata:
  name: $namespace
  labels:
    app.kubernetes.io/part-of: pipeops
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/warn: restricted
HEADER
	printf '%s\n' "$body"
} >"$tmp"
chmod 0644 "$tmp"
mv "$tmp" "$out"
trap - EXIT
