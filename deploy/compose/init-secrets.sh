#!/bin/sh
# Makes the secret files docker-compose.yml mounts into its services, and
# sets PIPEOPS_SECRETS_GID (and PIPEOPS_SECRETS_DIR when DIR is given) in
# the .env file.
#
#   deploy/compose/init-secrets.sh [DIR]
#
# DIR defaults to ./secrets next to docker-compose.yml. A file that exists
# and is not empty is kept (run it again after an upgrade: it only adds what
# is missing). Each file is mode 0640 and belongs to your group, which the
# services join (PIPEOPS_SECRETS_GID); the directory is mode 0750.
#
# PIPEOPS_ENV_FILE names the .env file (default: .env next to
# docker-compose.yml, made from .env.example when missing).
set -eu

root=$(cd "$(dirname "$0")/../.." && pwd)
dir=${1:-$root/secrets}
env_file=${PIPEOPS_ENV_FILE:-$root/.env}
gid=$(id -g)

umask 027
mkdir -p "$dir"
chmod 750 "$dir"
dir=$(cd "$dir" && pwd) # compose would read a relative one from its own directory

# random_hex N: N random bytes as hex, on one line.
random_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; echo; }
# random_base64 N: N random bytes as base64, on one line.
random_base64() { head -c "$1" /dev/urandom | base64 | tr -d '\n'; echo; }

# secret NAME COMMAND...: the file NAME holds COMMAND's output, unless it
# already holds something.
secret() {
	name=$1
	shift
	f=$dir/$name
	if [ -s "$f" ]; then
		echo "init-secrets: kept $f" >&2
	else
		"$@" >"$f.new"
		mv "$f.new" "$f"
		echo "init-secrets: made $f" >&2
	fi
	chmod 640 "$f"
}

secret postgres_password random_hex 24
secret key_encryption_key random_base64 32
secret grafana_admin_password random_hex 16
# Only deploy/compose/scale.yml mounts it (the gateways' PEER_SECRET_FILE);
# made here too so that adding that file needs no other step.
secret peer_secret random_hex 32
if [ ! -e "$dir/agent_token" ]; then
	: >"$dir/agent_token"
	echo "init-secrets: made $dir/agent_token (empty: put the token of 'pipeops-controlplane cluster create' in it)" >&2
fi
chmod 640 "$dir/agent_token"

# set_var NAME VALUE: NAME=VALUE in the .env file, replacing a line that
# sets NAME or adding one.
set_var() {
	if grep -q "^$1=" "$env_file"; then
		tmp=$env_file.new
		sed "s|^$1=.*|$1=$2|" "$env_file" >"$tmp"
		cat "$tmp" >"$env_file"
		rm -f "$tmp"
	else
		printf '%s=%s\n' "$1" "$2" >>"$env_file"
	fi
}

if [ ! -e "$env_file" ]; then
	(umask 077 && cp "$root/.env.example" "$env_file")
	echo "init-secrets: made $env_file from .env.example" >&2
fi
set_var PIPEOPS_SECRETS_GID "$gid"
if [ $# -gt 0 ]; then
	set_var PIPEOPS_SECRETS_DIR "$dir"
fi
echo "init-secrets: $env_file: PIPEOPS_SECRETS_GID=$gid" >&2
