#!/usr/bin/env bash
# A real Neutron control plane (neutron-rpc-server + the REST API), in the caller's network
# namespace, listening on 127.0.0.1 only, config, state, logs and pid files under DIR.
#
#   scripts/testbed/neutron.sh start|stop DIR
#
# start: needs the venv (scripts/testbed/venv.sh builds it once per machine, about a minute,
# from PyPI: run it first, where the network is, as up.sh and the tests do), writes
# DIR/neutron.conf and DIR/ml2_conf.ini (ML2/OVS, router service plugin, noauth, VXLAN tenant
# networks, flat external networks), migrates the schema the first time for DIR
# (neutron-db-manage upgrade heads), starts neutron-rpc-server and the API
# (neutron.wsgi.api:application, scripts/testbed/neutron_api.py), and waits (bounded) until
# GET /v2.0/networks answers and the RPC server consumes q-plugin, q-l3-plugin and
# q-reports-plugin. RabbitMQ and MariaDB must already run (rabbitmq.sh, mariadb.sh).
# stop: TERM to each process group by the pids in DIR (the RPC server forks workers and can
# outlive its shutdown grace), a bounded wait, then KILL.
#
# Env:
#   RABBIT_URL        transport_url (default rabbit://guest:guest@127.0.0.1:5672/)
#   DB_URL            default mysql+pymysql://root@/neutron?unix_socket=DIR/../mariadb/mysqld.sock
#                     (the layout of up.sh: DIR/../mariadb is mariadb.sh's DIR)
#   NEUTRON_API_PORT  default 9696 (on 127.0.0.1)
#   NEUTRON_AGENT_DOWN_TIME  seconds without a state report before an agent is dead (default
#                     20; Neutron's is 75): agents under test should report every <= 8 s
#   NEUTRON_START_TIMEOUT    seconds to wait for both servers (default 180)
#   NEUTRON_DEBUG     true for debug logs (default false)
#   L3AGENT_TESTBED_VENV, L3AGENT_TESTBED_PYTHON: see venv.sh
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
cmd=$1
here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)

case $cmd in
start) mkdir -p -- "$2" ;;
stop) [ -d "$2" ] || exit 0 ;;
*) usage ;;
esac
dir=$(cd -- "$2" && pwd -P)

# The live members of the process group led by the pid in FILE that belong to this DIR (they
# run in it: start starts them there, and workers inherit it; command lines do not tell, as
# workers rewrite theirs): what start started, never a process that reused a pid.
members() {
  local file=$1 pgid p stat rest pgrp
  [ -s "$file" ] || return 0
  pgid=$(cat -- "$file")
  case $pgid in '' | *[!0-9]*) return 0 ;; esac
  for p in /proc/[0-9]*; do
    { read -r stat <"$p/stat"; } 2>/dev/null || continue
    rest=${stat##*) }                     # after "pid (comm) ": state ppid pgrp ...
    read -r _ _ pgrp _ <<<"$rest"
    [ "$pgrp" = "$pgid" ] || continue
    if [ "$(readlink "$p/cwd" 2>/dev/null)" = "$dir" ]; then
      printf '%s\n' "${p#/proc/}"
    fi
  done
}

# TERM to what members() finds, up to SECS for them to exit, then KILL.
stop_group() {
  local file=$1 secs=$2 pids i
  pids=$(members "$file")
  if [ -n "$pids" ]; then
    # shellcheck disable=SC2086 # one pid a word
    kill -TERM $pids 2>/dev/null || true
    for ((i = 0; i < secs * 10; i++)); do
      [ -n "$(members "$file")" ] || break
      sleep 0.1
    done
    pids=$(members "$file")
    if [ -n "$pids" ]; then
      echo "neutron.sh: still running after ${secs} s, KILL: ${pids//$'\n'/ }" >&2
      # shellcheck disable=SC2086
      kill -KILL $pids 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do
        [ -n "$(members "$file")" ] || break
        sleep 0.1
      done
    fi
  fi
  rm -f -- "$file"
}

stop() {
  stop_group "$dir/api.pid" 10
  stop_group "$dir/rpc-server.pid" 15
}

if [ "$cmd" = stop ]; then
  stop
  exit 0
fi

rabbit_url=${RABBIT_URL:-rabbit://guest:guest@127.0.0.1:5672/}
db_url=${DB_URL:-mysql+pymysql://root@/neutron?unix_socket=$(dirname -- "$dir")/mariadb/mysqld.sock}
port=${NEUTRON_API_PORT:-9696}
agent_down_time=${NEUTRON_AGENT_DOWN_TIME:-20}
timeout_s=${NEUTRON_START_TIMEOUT:-180}
debug=${NEUTRON_DEBUG:-false}
api_url=http://127.0.0.1:$port

# The logs that tell why it failed: the migration's, then the servers'.
logs=("$dir/db-manage.log")
fail() {
  echo "neutron.sh: $*" >&2
  local f
  for f in "${logs[@]}"; do
    if [ -s "$f" ]; then
      echo "--- tail of $f" >&2
      tail -n 30 -- "$f" >&2
    fi
  done
  stop
  exit 1
}

ms() { echo $((($(date +%s%N) - $1) / 1000000)); }

if [ -n "$(members "$dir/rpc-server.pid")$(members "$dir/api.pid")" ]; then
  echo "neutron.sh: already running in $dir (neutron.sh stop $dir first)" >&2
  exit 1
fi
rm -f -- "$dir/rpc-server.pid" "$dir/api.pid"

t0=$(date +%s%N)
# Only checked here: this runs inside a namespace that has no way to PyPI.
if ! venv=$("$here/venv.sh" --check | tail -n 1); then
  echo "neutron.sh: run $here/venv.sh first (outside the namespace: it needs PyPI)" >&2
  exit 1
fi
py=$venv/bin/python

mkdir -p -- "$dir/state" "$dir/lock"
# Report interval and agent_down_time: Neutron's defaults are 30 s and 75 s; these are short so
# that tests see an agent die (or come back) in seconds. The server warns when
# agent_down_time < 2 x [agent] report_interval: 20 > 2 x 5.
cat >"$dir/neutron.conf" <<EOF
# Written by scripts/testbed/neutron.sh (overwritten at each start).
[DEFAULT]
debug = $debug
core_plugin = ml2
service_plugins = router
auth_strategy = noauth
transport_url = $rabbit_url
api_paste_config = $venv/etc/neutron/api-paste.ini
bind_host = 127.0.0.1
bind_port = $port
state_path = $dir/state
# No DHCP agent and no Nova here: nothing waits for them, nothing is sent to them.
dhcp_agent_notification = false
notify_nova_on_port_status_changes = false
notify_nova_on_port_data_changes = false
# One process each, and a quick shutdown.
api_workers = 1
rpc_workers = 1
rpc_state_report_workers = 1
graceful_shutdown_timeout = 5
agent_down_time = $agent_down_time
# Legacy routers by default (tests ask for what they need).
router_distributed = false
l3_ha = false

[agent]
report_interval = 5

[database]
connection = $db_url

[oslo_concurrency]
lock_path = $dir/lock
EOF
cat >"$dir/ml2_conf.ini" <<EOF
# Written by scripts/testbed/neutron.sh (overwritten at each start).
[ml2]
type_drivers = flat,vlan,vxlan
project_network_types = vxlan
mechanism_drivers = openvswitch

[ml2_type_flat]
flat_networks = *

[ml2_type_vxlan]
vni_ranges = 1:1000
EOF
conf=(--config-file "$dir/neutron.conf" --config-file "$dir/ml2_conf.ini")

# The schema, the first time for this DIR (a marker), or when the database lost it.
if [ ! -f "$dir/db-migrated" ] || ! "$py" "$here/neutron_api.py" db-ready "$db_url"; then
  t=$(date +%s%N)
  if ! timeout 600 "$venv/bin/neutron-db-manage" "${conf[@]}" upgrade heads \
      >"$dir/db-manage.log" 2>&1; then
    fail "neutron-db-manage upgrade heads failed (log: $dir/db-manage.log)"
  fi
  : >"$dir/db-migrated"
  echo "neutron.sh: schema migrated in $(ms "$t") ms" >&2
fi

logs=("$dir/rpc-server.log" "$dir/rpc-server.out" "$dir/api.log" "$dir/api.out")
t=$(date +%s%N)
cd -- "$dir"
# Each server leads its own process group (setsid): stop finds its workers by it. Their
# output goes to files only: the caller of this script must not wait for them.
setsid "$venv/bin/neutron-rpc-server" "${conf[@]}" --log-file "$dir/rpc-server.log" \
  </dev/null >"$dir/rpc-server.out" 2>&1 &
echo $! >"$dir/rpc-server.pid"
setsid "$py" "$here/neutron_api.py" serve 127.0.0.1 "$port" "$dir/api.log" \
  "$dir/neutron.conf" "$dir/ml2_conf.ini" </dev/null >"$dir/api.out" 2>&1 &
echo $! >"$dir/api.pid"

deadline=$(($(date +%s) + timeout_s))
api_up=false rpc_up=false
until $api_up && $rpc_up; do
  [ -n "$(members "$dir/rpc-server.pid")" ] || fail "neutron-rpc-server exited"
  [ -n "$(members "$dir/api.pid")" ] || fail "the API server exited"
  [ "$(date +%s)" -lt "$deadline" ] \
    || fail "not serving after ${timeout_s} s (API: $api_up, RPC: $rpc_up)"
  if ! $api_up && "$py" "$here/neutron_api.py" probe-api "$api_url"; then
    api_up=true
    echo "neutron.sh: API answers on $api_url after $(ms "$t") ms" >&2
  fi
  if ! $rpc_up && "$py" "$here/neutron_api.py" probe-rpc "$rabbit_url"; then
    rpc_up=true
    echo "neutron.sh: RPC server consumes its queues after $(ms "$t") ms" >&2
  fi
  if ! $api_up || ! $rpc_up; then
    sleep 0.5
  fi
done
echo "neutron.sh: serving on $api_url (started in $(ms "$t0") ms)" >&2
