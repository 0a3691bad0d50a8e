#!/usr/bin/env bash
# A private MariaDB for the test control plane, in the caller's network namespace.
#
#   scripts/testbed/mariadb.sh start|stop DIR
#
# start: creates the data directory under DIR once (mariadb-install-db), runs mariadbd with no
# option files, data, socket, pid file and log under DIR, TCP off (clients use the unix socket
# DIR/mysqld.sock: Neutron's DB_URL is mysql+pymysql://root@/neutron?unix_socket=DIR/mysqld.sock),
# waits (bounded) until it answers and creates the database `neutron`. With MARIADB_PORT set it
# also listens on 127.0.0.1:MARIADB_PORT. Durability is traded for speed (a throwaway test
# database): the schema migration is much faster without fsyncs.
# stop: TERM by pid, a bounded wait, then KILL; exit 0 also when nothing runs.
#
# Env: MARIADB_START_TIMEOUT (seconds, default 60).
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
cmd=$1
mkdir -p -- "$2"
dir=$(realpath -- "$2")
pidfile=$dir/mariadbd.pid
sock=$dir/mysqld.sock
log=$dir/mariadbd.log
data=$dir/data

# The pid in $pidfile if that process is alive and is the mariadbd of this DIR.
ours() {
  local pid
  [ -s "$pidfile" ] || return 1
  pid=$(cat -- "$pidfile")
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' '\n' <"/proc/$pid/cmdline" | grep -qxF -- "--datadir=$data" || return 1
  printf '%s\n' "$pid"
}

stop() {
  local pid i
  if pid=$(ours); then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do
      [ -d "/proc/$pid" ] || break
      sleep 0.1
    done
    if [ -d "/proc/$pid" ]; then
      echo "mariadb.sh: $pid did not stop in 30 s: KILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do
        [ -d "/proc/$pid" ] || break
        sleep 0.1
      done
    fi
  fi
  rm -f -- "$pidfile"
}

fail() {
  echo "mariadb.sh: $*" >&2
  if [ -f "$log" ]; then
    echo "--- tail of $log" >&2
    tail -n 30 -- "$log" >&2
  fi
  stop
  exit 1
}

case $cmd in
stop)
  stop
  exit 0
  ;;
start) ;;
*) usage ;;
esac

if pid=$(ours); then
  echo "mariadb.sh: already running in $dir (pid $pid)" >&2
  exit 1
fi
case $dir in *[[:space:]]*)
  echo "mariadb.sh: $dir: a path without whitespace, please (mariadb-install-db cannot take one)" >&2
  exit 1 ;;
esac
if [ "${#sock}" -ge 108 ]; then
  echo "mariadb.sh: socket path too long for a unix socket (${#sock} >= 108): $sock" >&2
  exit 1
fi
for bin in mariadbd mariadb-install-db mariadb; do
  if ! command -v "$bin" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$bin" ]; then
    echo "mariadb.sh: $bin not found (Debian: apt-get install mariadb-server)" >&2
    exit 1
  fi
done
mariadbd=$(command -v mariadbd || echo /usr/sbin/mariadbd)
timeout_s=${MARIADB_START_TIMEOUT:-60}
t0=$(date +%s%N)

if [ ! -d "$data/mysql" ]; then
  rm -rf -- "$data"
  if ! mariadb-install-db --no-defaults --datadir="$data" --user=root \
      --auth-root-authentication-method=normal --skip-test-db >"$dir/install-db.log" 2>&1; then
    tail -n 30 -- "$dir/install-db.log" >&2
    rm -rf -- "$data"
    echo "mariadb.sh: mariadb-install-db failed (log: $dir/install-db.log)" >&2
    exit 1
  fi
fi

net=(--skip-networking)
if [ -n "${MARIADB_PORT:-}" ]; then
  net=(--bind-address=127.0.0.1 --port="$MARIADB_PORT")
fi
rm -f -- "$sock"
# setsid: its own session, so a terminal's signals to the caller do not reach it; its output
# goes to the log only (a caller reading this script's output must not wait for the server).
setsid "$mariadbd" --no-defaults --datadir="$data" --socket="$sock" --pid-file="$dir/mariadbd.own.pid" \
  --log-error="$log" --user=root "${net[@]}" --tmpdir="$dir" \
  --innodb-flush-log-at-trx-commit=0 --innodb-doublewrite=0 --innodb-flush-method=nosync \
  --innodb-buffer-pool-size=64M --skip-log-bin --character-set-server=utf8mb4 \
  </dev/null >>"$log" 2>&1 &
echo $! >"$pidfile"

deadline=$(($(date +%s) + timeout_s))
until mariadb --no-defaults --socket="$sock" -uroot -e 'CREATE DATABASE IF NOT EXISTS neutron' \
    >/dev/null 2>&1; do
  ours >/dev/null || fail "mariadbd exited"
  [ "$(date +%s)" -lt "$deadline" ] || fail "not serving after ${timeout_s} s"
  sleep 0.2
done
echo "mariadb.sh: serving on $sock in $((($(date +%s%N) - t0) / 1000000)) ms (pid $(cat -- "$pidfile"))" >&2
