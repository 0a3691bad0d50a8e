#!/usr/bin/env bash
# A real Neutron control plane on this machine, for trying l3agent against it: a network
# namespace of its own (named from DIR), and inside it RabbitMQ, MariaDB and Neutron 29.0.0
# (neutron-rpc-server + the REST API, noauth), all on that namespace's 127.0.0.1, all data and
# logs under DIR. Nothing listens in the machine's own namespace.
#
#   scripts/testbed/up.sh DIR      (as root; the first run builds the venv: about a minute)
#   scripts/testbed/down.sh DIR    stops everything and deletes the namespace (DIR is kept:
#                                  the next up.sh reuses its database; rm -rf DIR to wipe it)
#
# Layout: DIR/netns (the namespace's name), DIR/rabbitmq, DIR/mariadb, DIR/neutron (each the
# DIR of rabbitmq.sh, mariadb.sh, neutron.sh: see them for their env, e.g. NEUTRON_API_PORT).
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
mkdir -p -- "$1"
dir=$(cd -- "$1" && pwd -P)
case $dir in *[[:space:]]*)
  echo "up.sh: $dir: a path without whitespace, please (mariadb-install-db cannot take one)" >&2
  exit 1 ;;
esac
[ "$(id -u)" -eq 0 ] || { echo "up.sh: run as root (it creates a network namespace)" >&2; exit 1; }

# l3h-<DIR's name, sanitised, at most 16 chars>-<8 hex of DIR's path>: one per DIR.
name=$(basename -- "$dir" | tr -c 'A-Za-z0-9_\n-' '-' | cut -c1-16)
ns="l3h-$name-$(printf '%s' "$dir" | sha256sum | cut -c1-8)"
port=${NEUTRON_API_PORT:-9696}
rabbit_port=${RABBITMQ_PORT:-5672}
rabbit_url=${RABBIT_URL:-rabbit://guest:guest@127.0.0.1:$rabbit_port/}
export RABBIT_URL=$rabbit_url

# The venv first, here: building it needs PyPI, which the namespace cannot reach.
"$here/venv.sh" >/dev/null

if [ -e "/run/netns/$ns" ]; then
  echo "up.sh: $ns exists: already up? ($here/down.sh $dir first)" >&2
  exit 1
fi
ip netns add "$ns"
printf '%s\n' "$ns" >"$dir/netns"
started=()
up=false
undo() {
  local i
  $up && return 0
  echo "up.sh: failed: stopping what started" >&2
  for ((i = ${#started[@]} - 1; i >= 0; i--)); do
    "$here/${started[i]}.sh" stop "$dir/${started[i]}" || true
  done
  ip netns del "$ns" 2>/dev/null || true
  rm -f -- "$dir/netns"
}
trap undo EXIT
trap 'exit 130' INT TERM
ip -n "$ns" link set lo up

# nsenter, not `ip netns exec`: the servers need the namespace's network only (and l3agent
# refuses ip netns exec's private mount namespace).
inside() { nsenter --net="/run/netns/$ns" -- "$@"; }

t0=$(date +%s)
for s in rabbitmq mariadb neutron; do
  t=$(date +%s)
  started+=("$s")
  inside "$here/$s.sh" start "$dir/$s"
  echo "up.sh: $s up in $(($(date +%s) - t)) s" >&2
done
up=true

cat <<EOF
The Neutron test control plane is up in network namespace $ns (in $(($(date +%s) - t0)) s).

  REST API (noauth: say the project, be admin):
    nsenter --net=/run/netns/$ns -- curl -s -H 'X-Project-Id: demo' -H 'X-Roles: admin' \\
      http://127.0.0.1:$port/v2.0/agents
  RPC (an agent's transport_url): $rabbit_url
  Neutron's config: $dir/neutron/neutron.conf, $dir/neutron/ml2_conf.ini
  Logs: $dir/neutron/{rpc-server,api}.log, $dir/mariadb/mariadbd.log, $dir/rabbitmq/log/
  Agents are dead after $(sed -n 's/^agent_down_time = //p' "$dir/neutron/neutron.conf") s without a state report: give l3agent [AGENT] report_interval = 5.

  Run l3agent inside the same namespace (it reaches 127.0.0.1 there only), e.g.:
    nsenter --net=/run/netns/$ns -- l3agent -v agent --config YOUR_CONFIG
  Neutron's own agent would be: neutron-l3-agent --config-file $dir/neutron/neutron.conf \\
      --config-file YOUR_l3_agent.ini

  Stop it all: $here/down.sh $dir
EOF
