#!/usr/bin/env bash
# RabbitMQ for tests, in the caller's network namespace, on 127.0.0.1 only, all state under DIR.
#
#   scripts/testbed/rabbitmq.sh start DIR   start epmd + RabbitMQ, wait (bounded) until port
#                                          5672 answers the AMQP protocol header
#   scripts/testbed/rabbitmq.sh stop DIR    stop both by the pids recorded in DIR
#
# The contract is crates/testkit/src/service.rs. What this script avoids (NEUTRON-RPC.md,
# "Pitfalls"): the /usr/sbin wrapper (it switches to the rabbitmq user), the system's config,
# cookie and data (everything is under DIR, HOME=DIR), an epmd that Erlang would start on
# 0.0.0.0:4369 (ours is started first, on 127.0.0.1, as a child we stop), and rabbitmqctl
# (it would start an epmd of its own). Run it inside a throwaway network namespace: it gets
# its own loopback, so ports never clash with anything else.
#
# Environment (optional): RABBITMQ_PORT (5672), ERL_EPMD_PORT (4369), RABBITMQ_START_TIMEOUT
# (seconds, 60), RABBITMQ_BIN (/usr/lib/rabbitmq/bin/rabbitmq-server).
set -euo pipefail

usage() {
  echo "usage: $0 start|stop DIR" >&2
  exit 2
}

[ $# -eq 2 ] || usage
cmd=$1
dir=$2
port=${RABBITMQ_PORT:-5672}
epmd_port=${ERL_EPMD_PORT:-4369}
timeout_s=${RABBITMQ_START_TIMEOUT:-60}
server=${RABBITMQ_BIN:-/usr/lib/rabbitmq/bin/rabbitmq-server}

# Sends TERM to the process group led by the pid in FILE, waits up to SECS, then KILLs the
# group. Every process this script starts leads its own group (setsid), so the group holds
# exactly what we started (the wrapper, beam.smp, erl_child_setup, inet_gethost...).
stop_group() {
  local file=$1 secs=$2 pid i
  [ -s "$file" ] || return 0
  pid=$(cat "$file")
  case $pid in '' | *[!0-9]*) rm -f "$file"; return 0 ;; esac
  if kill -0 -- "-$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || true
    for ((i = 0; i < secs * 10; i++)); do
      kill -0 -- "-$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 -- "-$pid" 2>/dev/null; then
      kill -KILL -- "-$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do
        kill -0 -- "-$pid" 2>/dev/null || break
        sleep 0.1
      done
    fi
  fi
  rm -f "$file"
}

stop() {
  stop_group "$dir/rabbitmq.group" 20
  stop_group "$dir/epmd.group" 1
}

# True when 127.0.0.1:$port answers the AMQP 0-9-1 protocol header with a frame of type 1
# (the broker's connection.start): the listener is up and the node has booted.
amqp_ready() {
  local first
  first=$(timeout 3 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf "AMQP\x00\x00\x09\x01" >&3
    head -c 1 <&3 | od -An -tx1
  ' _ "$port" 2>/dev/null | tr -d ' \n') || return 1
  [ "$first" = "01" ]
}

fail() {
  echo "rabbitmq.sh: $*" >&2
  for f in "$dir/log/server.out" "$dir/log/rabbit.log" "$dir/log/epmd.out"; do
    if [ -s "$f" ]; then
      echo "--- tail of $f" >&2
      tail -n 30 "$f" >&2
    fi
  done
  stop
  exit 1
}

start() {
  [ -x "$server" ] || { echo "rabbitmq.sh: $server not found (apt-get install rabbitmq-server)" >&2; exit 1; }
  command -v epmd >/dev/null || { echo "rabbitmq.sh: epmd not found (apt-get install erlang-base)" >&2; exit 1; }
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  # A previous run in the same directory is stopped first (its pids are ours).
  stop
  mkdir -p "$dir/mnesia" "$dir/log" "$dir/home"
  : >"$dir/rabbitmq-env.conf"
  echo '[].' >"$dir/enabled_plugins"
  cat >"$dir/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$port
loopback_users.guest = true
log.file.level = info
EOF

  export HOME="$dir/home"
  export ERL_EPMD_ADDRESS=127.0.0.1
  export ERL_EPMD_PORT="$epmd_port"

  # Our own epmd, on loopback, first: Erlang then uses it instead of starting one on 0.0.0.0.
  setsid epmd -address 127.0.0.1 -port "$epmd_port" >"$dir/log/epmd.out" 2>&1 </dev/null &
  echo $! >"$dir/epmd.group"
  local i
  for ((i = 0; i < 50; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$epmd_port") 2>/dev/null && break
    kill -0 "$(cat "$dir/epmd.group")" 2>/dev/null || fail "epmd exited"
    sleep 0.1
  done
  ((i < 50)) || fail "epmd did not listen on 127.0.0.1:$epmd_port within 5 s"

  RABBITMQ_NODENAME="l3t@localhost" \
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT="$port" \
    RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf" \
    RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
    RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
    RABBITMQ_MNESIA_BASE="$dir/mnesia" \
    RABBITMQ_LOG_BASE="$dir/log" \
    RABBITMQ_LOGS="$dir/log/rabbit.log" \
    RABBITMQ_PID_FILE="$dir/rabbitmq.pid" \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
    setsid "$server" >"$dir/log/server.out" 2>&1 </dev/null &
  echo $! >"$dir/rabbitmq.group"

  local deadline=$((SECONDS + timeout_s))
  while ((SECONDS < deadline)); do
    if amqp_ready; then
      return 0
    fi
    kill -0 "$(cat "$dir/rabbitmq.group")" 2>/dev/null || fail "rabbitmq-server exited"
    sleep 0.25
  done
  fail "127.0.0.1:$port did not answer AMQP within $timeout_s s"
}

case $cmd in
  start) start ;;
  stop)
    [ -d "$dir" ] || exit 0
    stop
    ;;
  *) usage ;;
esac
