#!/usr/bin/env bash
# Creates (once) or reuses a virtualenv with Neutron from PyPI and pymysql, for the test
# control plane (neutron.sh). Prints the venv's path as its last line on stdout.
#
#   scripts/testbed/venv.sh            build it unless it is there and usable
#   scripts/testbed/venv.sh --check    only say (exit 1: not there or not usable)
#
# Building needs PyPI: run it in a namespace with the network (not in a test namespace).
#
# Env: L3AGENT_TESTBED_VENV (default /var/tmp/l3agent-testbed/venv-neutron-29.0.0),
#      L3AGENT_TESTBED_PYTHON (default python3: any Python >= 3.10 with the venv module).
#
# Safe when several runs race: one builds under a lock, the others wait and reuse it.
# Atomic: a venv is built in a private directory next to the path and published by renaming
# a symlink onto the path, so a half-built venv is never used. (A venv cannot be moved after
# it is built: its scripts name their interpreter by absolute path; so the build directory
# stays where it was built and the path is a symlink to it.)
set -euo pipefail

check_only=false
case ${1:-} in
--check) check_only=true ;;
'') ;;
*) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

neutron_version=29.0.0
venv=${L3AGENT_TESTBED_VENV:-/var/tmp/l3agent-testbed/venv-neutron-$neutron_version}
python=${L3AGENT_TESTBED_PYTHON:-python3}
venv=$(realpath -m -s -- "$venv")
parent=$(dirname -- "$venv")
base=$(basename -- "$venv")

# A usable venv: its python runs, and it has this Neutron and pymysql. Says why not when $2 is
# "loud".
usable() {
  local out
  [ -x "$1/bin/python" ] && [ -x "$1/bin/neutron-db-manage" ] \
    && [ -x "$1/bin/neutron-rpc-server" ] || return 1
  # neutron.wsgi.api (what neutron.sh serves) parses the config when imported: only find it.
  if out=$(NEUTRON_VERSION=$neutron_version "$1/bin/python" -W ignore -c '
import os, sys
from importlib.metadata import version
from importlib.util import find_spec
import pymysql
sys.exit(0 if version("neutron") == os.environ["NEUTRON_VERSION"]
         and find_spec("neutron.wsgi.api") else 1)' 2>&1); then
    return 0
  fi
  [ "${2:-}" = loud ] && printf '%s\n' "$out" >&2
  return 1
}

if usable "$venv"; then
  printf '%s\n' "$venv"
  exit 0
fi
if $check_only; then
  echo "venv.sh: no usable venv at $venv (scripts/testbed/venv.sh builds it)" >&2
  exit 1
fi

mkdir -p -- "$parent"
exec 9>"$parent/.$base.lock"
if ! flock -w 1800 9; then
  echo "venv.sh: waited 30 min for $parent/.$base.lock" >&2
  exit 1
fi
# Another run may have built it while this one waited.
if usable "$venv"; then
  printf '%s\n' "$venv"
  exit 0
fi

if ! "$python" -m venv --help >/dev/null 2>&1; then
  echo "venv.sh: $python has no venv module (Debian: apt-get install python3-venv)" >&2
  exit 1
fi

# Leftovers of interrupted builds (we hold the lock: nobody is building them).
current=$(readlink -- "$venv" 2>/dev/null || true)
for old in "$parent/.$base.build."*; do
  [ -e "$old" ] || continue
  [ "$old" = "$current" ] && continue
  rm -rf -- "$old"
done

start=$(date +%s)
build=$(mktemp -d "$parent/.$base.build.XXXXXX")
chmod 0755 "$build"
cleanup() { rm -rf -- "$build"; }
trap cleanup EXIT
echo "venv.sh: building $venv with neutron==$neutron_version from PyPI (a few minutes)" >&2
"$python" -m venv -- "$build"
"$build/bin/python" -m pip install -q "neutron==$neutron_version" pymysql >&2
if ! usable "$build" loud; then
  echo "venv.sh: the new venv does not import neutron $neutron_version and pymysql" >&2
  exit 1
fi

# Publish: a symlink renamed onto the path (atomic). A broken venv there is replaced.
if [ -e "$venv" ] && [ ! -L "$venv" ]; then
  rm -rf -- "$venv"
fi
ln -s -- "$build" "$venv.new.$$"
mv -T -- "$venv.new.$$" "$venv"
if [ -n "$current" ] && [ "${current#"$parent/.$base.build."}" != "$current" ]; then
  rm -rf -- "$current"
fi
trap - EXIT
echo "venv.sh: built $venv in $(($(date +%s) - start)) s" >&2
printf '%s\n' "$venv"
