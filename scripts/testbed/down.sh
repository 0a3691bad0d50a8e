#!/usr/bin/env bash
# Stops what scripts/testbed/up.sh DIR started (Open vSwitch, Neutron, MariaDB, RabbitMQ: the
# reverse of up.sh's order, each by its pids) and deletes its network namespace. DIR (database,
# logs, l3_agent.ini) is kept: rm -rf DIR to wipe it. An agent run against the testbed is
# yours to stop, first; the qrouter- namespaces it made outlive down.sh (as they outlive the
# agent): delete them with `ip netns delete`.
#
#   scripts/testbed/down.sh DIR
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
[ -d "$1" ] || { echo "down.sh: no such directory: $1" >&2; exit 1; }
dir=$(cd -- "$1" && pwd -P)

rc=0
for s in ovs neutron mariadb rabbitmq; do
  if [ -d "$dir/$s" ]; then
    "$here/$s.sh" stop "$dir/$s" || rc=1
  fi
done

# The namespace up.sh recorded; only one of ours (l3h-...).
if [ -s "$dir/netns" ]; then
  ns=$(cat -- "$dir/netns")
  case $ns in
  l3h-*)
    if [ -e "/run/netns/$ns" ]; then
      ip netns del "$ns" || rc=1
    fi
    ;;
  *) echo "down.sh: $dir/netns names $ns, not a testbed namespace: left alone" >&2; rc=1 ;;
  esac
  [ $rc -ne 0 ] || rm -f -- "$dir/netns"
fi
[ $rc -ne 0 ] || echo "down.sh: stopped; data kept in $dir" >&2
exit $rc
