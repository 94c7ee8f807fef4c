#!/usr/bin/env bash
# Installs the system packages the tests run against: etcd (for the test
# kube-apiserver), the PostgreSQL server, shellcheck (the installer's lint
# test), chromium (the console's browser tests), iproute2 (the network
# test bed) and haproxy (the compose balancer's configuration check). Does
# nothing when they are there,
# so it needs root (or sudo) only on a machine that lacks them.
set -euo pipefail

missing=()
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
if [[ -z "${TEST_DATABASE_URL:-}" ]] && ! command -v postgres >/dev/null 2>&1 \
	&& ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; then
	missing+=(postgresql)
fi
command -v git >/dev/null 2>&1 || missing+=(git)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
# The console's browser tests (shared/testenv/browsertest), with a font for
# their screenshots (--no-install-recommends leaves chromium without one).
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]] || missing+=(fonts-dejavu-core)
# The network test bed (shared/testenv/netbed): namespaces and TUN devices.
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
# `haproxy -c` on the compose balancer's configuration (deploy/compose);
# Debian puts it in /usr/sbin, which a user's PATH may lack.
command -v haproxy >/dev/null 2>&1 || [[ -x /usr/sbin/haproxy ]] || missing+=(haproxy)

if ((${#missing[@]} == 0)); then
	echo "deps: etcd, PostgreSQL, shellcheck, chromium, iproute2 and haproxy are installed"
	exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
	echo "deps: missing ${missing[*]}, and there is no apt-get here; install them by hand (see docs/testing.md)" >&2
	exit 1
fi
sudo=()
if ((EUID != 0)); then
	if ! command -v sudo >/dev/null 2>&1; then
		echo "deps: missing ${missing[*]}; run as root or install sudo" >&2
		exit 1
	fi
	sudo=(sudo)
fi

echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
# --no-install-recommends keeps the PostgreSQL package from pulling in extras;
# policy-rc.d keeps Debian from starting system-wide etcd/postgres/haproxy
# services: the tests start their own, on free ports, in temporary
# directories, or only check a configuration.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e $policy ]]; then
	printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
	"${sudo[@]}" chmod +x "$policy"
	created_policy=1
fi
status=0
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" || status=$?
if ((created_policy)); then
	"${sudo[@]}" rm -f "$policy"
fi
exit "$status"
