#!/usr/bin/env bash
# Stops what scripts/testbed/up.sh DIR started (Neutron, MariaDB, RabbitMQ, by their pids) and
# deletes its network namespace. DIR (database, logs) is kept: rm -rf DIR to wipe it.
#
#   scripts/testbed/down.sh DIR
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
[ -d "$1" ] || { echo "down.sh: no such directory: $1" >&2; exit 1; }
dir=$(cd -- "$1" && pwd -P)

rc=0
for s in neutron mariadb rabbitmq; do
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
