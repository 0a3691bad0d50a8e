#!/usr/bin/env bash
# A real Neutron control plane on this machine, for trying l3agent against it: a network
# namespace of its own (named from DIR), and inside it RabbitMQ, MariaDB, Neutron 29.0.0
# (neutron-rpc-server + the REST API, noauth) and Open vSwitch (ovsdb-server + ovs-vswitchd,
# userspace datapath, bridge br-int), on that namespace's 127.0.0.1 or unix sockets only, all
# data and logs under DIR. Nothing listens in the machine's own namespace. Writes
# DIR/l3_agent.ini and prints the `l3agent agent --config-file ...` command to run against it.
#
#   scripts/testbed/up.sh DIR      (as root; the first run builds the venv: about a minute)
#   scripts/testbed/down.sh DIR    stops everything and deletes the namespace (DIR is kept:
#                                  the next up.sh reuses its database; rm -rf DIR to wipe it)
#
# Layout: DIR/netns (the namespace's name), DIR/rabbitmq, DIR/mariadb, DIR/neutron, DIR/ovs
# (each the DIR of rabbitmq.sh, mariadb.sh, neutron.sh, ovs.sh: see them for their env, e.g.
# NEUTRON_API_PORT), DIR/l3_agent.ini, DIR/l3agent (the agent's state_path).
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
# Open vSwitch last: the agent's integration bridge (ovs.sh makes the bridges it names).
export OVS_BRIDGES=br-int
for s in rabbitmq mariadb neutron ovs; do
  t=$(date +%s)
  started+=("$s")
  inside "$here/$s.sh" start "$dir/$s"
  echo "up.sh: $s up in $(($(date +%s) - t)) s" >&2
done

# The agent's half of the config, as l3_agent.ini is on a network node. The other half is
# Neutron's own neutron.conf (transport_url, [agent] report_interval = 5), read first: the
# agent is started with both files, as neutron-l3-agent is.
mkdir -p -- "$dir/l3agent"
chmod 0700 "$dir/l3agent"
cat >"$dir/l3_agent.ini" <<EOF
# Written by scripts/testbed/up.sh (overwritten at each start).
[DEFAULT]
interface_driver = openvswitch
agent_mode = legacy
# l3agent keeps its records in <state_path>/l3agent.
state_path = $dir/l3agent
# The testbed runs no metadata agent.
enable_metadata_proxy = false

[OVS]
integration_bridge = br-int
ovsdb_connection = unix:$dir/ovs/db.sock
EOF
up=true

# The l3agent to suggest: this checkout's build if there is one.
l3agent=l3agent
for b in release debug; do
  if [ -x "$here/../../target/$b/l3agent" ]; then
    l3agent=$(cd -- "$here/../../target/$b" && pwd)/l3agent
    break
  fi
done

cat <<EOF
The Neutron test control plane is up in network namespace $ns (in $(($(date +%s) - t0)) s).

  REST API (noauth: say the project, be admin):
    nsenter --net=/run/netns/$ns -- curl -s -H 'X-Project-Id: demo' -H 'X-Roles: admin' \\
      http://127.0.0.1:$port/v2.0/agents
  RPC (an agent's transport_url): $rabbit_url
  Neutron's config: $dir/neutron/neutron.conf, $dir/neutron/ml2_conf.ini
  Open vSwitch (bridge br-int): ovs-vsctl --db=unix:$dir/ovs/db.sock show
  Logs: $dir/neutron/{rpc-server,api}.log, $dir/mariadb/mariadbd.log, $dir/rabbitmq/log/,
        $dir/ovs/ovs-vswitchd.log
  Agents are dead after $(sed -n 's/^agent_down_time = //p' "$dir/neutron/neutron.conf") s without a state report (neutron.conf has [agent] report_interval = 5).

  Run l3agent in the same namespace (only there is that 127.0.0.1), with Neutron's
  neutron.conf and the l3_agent.ini written here, as neutron-l3-agent is started:
    nsenter --net=/run/netns/$ns -- $l3agent -v agent \\
      --config-file $dir/neutron/neutron.conf --config-file $dir/l3_agent.ini \\
      --control-socket $dir/l3agent/control.sock --metrics-listen 127.0.0.1:9797

  Stop it all: stop the agent (its routers stay), then $here/down.sh $dir
EOF
