#!/usr/bin/env bash
# Open vSwitch for one test: ovsdb-server and ovs-vswitchd in the caller's network namespace,
# everything (database, unix sockets, pid files, logs) under DIR, nothing under
# /run/openvswitch, /var/log or /etc/openvswitch, no TCP remote.
#
#   ovs.sh start DIR   create DIR/conf.db if missing, start both daemons, wait (bounded) until
#                      both serve, create the bridges named in $OVS_BRIDGES (space separated,
#                      default "br-int") with datapath_type=netdev. On failure: the log tails
#                      on stderr, nothing left running, exit 1.
#   ovs.sh stop DIR    stop both by the pids in DIR (TERM, a bounded wait, KILL); exit 0 also
#                      when nothing runs.
#
# The kernel here has no openvswitch module, so bridges use the userspace datapath: their
# internal ports are tap devices (persistent: they outlive ovs-vswitchd and die with the
# namespace they are in). Clients: `ovs-vsctl --db=unix:DIR/db.sock ...`, or l3agent-ovsdb on
# DIR/db.sock. The contract is the one in crates/testkit/src/service.rs.
set -euo pipefail

SCHEMA=${OVS_SCHEMA:-/usr/share/openvswitch/vswitch.ovsschema}
DAEMONS=(ovs-vswitchd ovsdb-server) # stop order: the switch first, then its database

usage() {
    echo "usage: $0 start|stop DIR" >&2
    exit 2
}

[ $# -eq 2 ] || usage
action=$1
if [ "$action" = stop ] && [ ! -d "$2" ]; then
    exit 0 # nothing was started there
fi
mkdir -p "$2"
dir=$(cd "$2" && pwd -P)

# Nothing of OVS's may fall back to the system's directories.
export OVS_RUNDIR=$dir OVS_LOGDIR=$dir OVS_DBDIR=$dir OVS_SYSCONFDIR=$dir

db=unix:$dir/db.sock

# Whether process PID is alive (not a zombie) and is NAME: a pid whose number was reused by
# something else must never be signalled. /proc/PID/comm is cut at 15 characters
# ("ovs-vswitchd" and "ovsdb-server" both fit).
alive() {
    local pid=$1 name=$2 stat
    [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" = "$name" ] || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null || true)
    stat=${stat##*) } # the fields after "(comm) "
    [ -n "$stat" ] && [ "${stat:0:1}" != Z ]
}

# The pid in DIR/NAME.pid if that process is alive and is NAME.
live_pid() {
    local name=$1 pid
    [ -r "$dir/$name.pid" ] || return 1
    pid=$(head -n1 "$dir/$name.pid" 2>/dev/null || true)
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    alive "$pid" "$name" || return 1
    echo "$pid"
}

# Stops NAME by its pid (the daemon removes its pid file while exiting, so the pid is read
# once and the process itself is watched).
stop_one() {
    local name=$1 pid i
    pid=$(live_pid "$name") || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do # 5 s
        alive "$pid" "$name" || return 0
        sleep 0.1
    done
    echo "$name ($pid) ignored TERM for 5 s: KILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 20; i++)); do # 2 s
        alive "$pid" "$name" || return 0
        sleep 0.1
    done
    echo "$name ($pid) is still running after KILL" >&2
    return 1
}

stop_all() {
    local rc=0 d
    for d in "${DAEMONS[@]}"; do
        stop_one "$d" || rc=1
    done
    return $rc
}

fail() {
    local f
    echo "ovs.sh start $dir: $*" >&2
    for f in ovsdb-server.stderr ovsdb-server.log ovs-vswitchd.stderr ovs-vswitchd.log; do
        if [ -s "$dir/$f" ]; then
            echo "--- tail of $dir/$f" >&2
            tail -n 25 "$dir/$f" >&2 || true
        fi
    done
    stop_all || true
    exit 1
}

# Runs "$@" (which must bound itself) until it succeeds, for at most SECS seconds.
retry_for() {
    local secs=$1 end
    shift
    end=$((SECONDS + secs))
    while :; do
        "$@" >/dev/null 2>&1 && return 0
        ((SECONDS < end)) || return 1
        sleep 0.1
    done
}

start() {
    local d bridges br ofport pid
    for d in "${DAEMONS[@]}"; do
        if pid=$(live_pid "$d"); then
            echo "ovs.sh start $dir: $d is already running (pid $pid)" >&2
            exit 1
        fi
    done
    # sun_path holds 107 bytes plus the terminating NUL.
    [ ${#dir} -le 90 ] || { echo "ovs.sh: $dir is too long for a unix socket path" >&2; exit 1; }
    [ -r "$SCHEMA" ] || { echo "ovs.sh: no schema at $SCHEMA (install openvswitch-switch)" >&2; exit 1; }

    if [ ! -e "$dir/conf.db" ]; then
        ovsdb-tool create "$dir/conf.db" "$SCHEMA" || fail "ovsdb-tool create failed"
    fi
    rm -f "$dir/db.sock" "$dir/ovsdb-server.ctl" "$dir/ovs-vswitchd.ctl"

    # --detach returns once the daemon is set up (its socket bound), or with its error.
    ovsdb-server "$dir/conf.db" \
        --remote="punix:$dir/db.sock" \
        --pidfile="$dir/ovsdb-server.pid" \
        --unixctl="$dir/ovsdb-server.ctl" \
        --log-file="$dir/ovsdb-server.log" \
        -vconsole:off -vsyslog:off -vfile:info \
        --detach --no-chdir 2>>"$dir/ovsdb-server.stderr" ||
        fail "ovsdb-server did not start"
    retry_for 5 ovsdb-client --timeout=1 list-dbs "$db" ||
        fail "ovsdb-server does not answer on $dir/db.sock after 5 s"
    ovs-vsctl --db="$db" --timeout=5 --no-wait init || fail "ovs-vsctl init failed"

    ovs-vswitchd "$db" \
        --pidfile="$dir/ovs-vswitchd.pid" \
        --unixctl="$dir/ovs-vswitchd.ctl" \
        --log-file="$dir/ovs-vswitchd.log" \
        --disable-system \
        -vconsole:off -vsyslog:off -vfile:info \
        --detach --no-chdir 2>>"$dir/ovs-vswitchd.stderr" ||
        fail "ovs-vswitchd did not start"
    retry_for 5 ovs-appctl -t "$dir/ovs-vswitchd.ctl" --timeout=1 version ||
        fail "ovs-vswitchd does not answer on $dir/ovs-vswitchd.ctl after 5 s"

    bridges=${OVS_BRIDGES-br-int}
    for br in $bridges; do
        [[ $br =~ ^[A-Za-z0-9_.-]{1,15}$ ]] ||
            fail "bridge name '$br' is not a device name (1-15 of [A-Za-z0-9_.-])"
        # Without --no-wait, ovs-vsctl waits until ovs-vswitchd has applied the change.
        ovs-vsctl --db="$db" --timeout=10 \
            -- --may-exist add-br "$br" \
            -- set Bridge "$br" datapath_type=netdev ||
            fail "creating bridge $br failed"
        # ovs-vsctl only warns when ovs-vswitchd could not make the bridge: its local port
        # (OFPP_LOCAL, 65534) must exist.
        ofport=$(ovs-vsctl --db="$db" --timeout=5 get Interface "$br" ofport) || ofport=
        [ "$ofport" = 65534 ] ||
            fail "ovs-vswitchd did not create bridge $br (ofport '$ofport')"
    done
    # The daemons must still be there (a crash right after the bridges were made would
    # otherwise only show in the first test that uses them).
    for d in "${DAEMONS[@]}"; do
        live_pid "$d" >/dev/null || fail "$d exited during start"
    done
}

case $action in
start) start ;;
stop) stop_all ;;
*) usage ;;
esac
