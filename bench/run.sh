#!/usr/bin/env bash
# The benchmark command of the README: l3agent (a long-lived manager, and `l3agent iptables
# apply` as a fresh process per step) vs Neutron's IptablesManager vs raw iptables, in one run
# (several minutes). Installs system packages if missing, makes a virtualenv with
# Neutron from PyPI under target/neutron-venv (once), builds in release mode, runs, and writes
# BENCHMARKS.md and target/bench/{iptables,plumbing}.json. Then it runs the kernel-plumbing
# comparison (l3agent in-process vs `ip` per operation vs `ip -batch`) and appends it, then the router,
# agent and Neutron (issue 12) benchmarks. Needs root. Extra arguments go to the iptables harness,
# e.g. bench/run.sh --sizes 1000,10000 --runs 5, or --skip-neutron.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
venv=target/neutron-venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import neutron' 2>/dev/null; then
  if ! python3 -m venv --help >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  fi
  mkdir -p target
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'neutron==29.0.0'
fi
# The harness, and the l3agent binary its cli contender runs as a fresh process per step.
cargo build --release -q -p l3agent-bench -p l3agent
target/release/l3agent-bench iptables --python "$venv/bin/python" "$@"
# The kernel-plumbing comparison (issue 4) and the router benchmark (issues 5 and 9: 1,000 legacy
# routers x 10 floating IPs, the no-op apply beside its floor, 3 runs; a few minutes, most of it the
# gratuitous ARP rounds it lets finish between steps) are appended.
{ echo; target/release/l3agent-bench plumbing; } | tee -a BENCHMARKS.md
{ echo; target/release/l3agent-bench routers --count 1000 --fips 10 --workers 4 --runs 3; } | tee -a BENCHMARKS.md
# The long-running agent (issue 11): 1,000 routers x 10 floating IPs, 50 floating IP events through
# the config file beside their floor, the idle cost, a restart (several minutes).
{ echo; target/release/l3agent-bench agent --count 1000 --fips 10 --events 50; } | tee -a BENCHMARKS.md
# Against a real neutron-server 29.0.0 (issue 12): RabbitMQ, MariaDB, Neutron (scripts/testbed/, its
# venv built once) and OVS in one test namespace; floating IP association to DNAT beside its floor
# (a null agent: the server's part plus the least kernel work), and a full sync of 1,000 routers
# with l3agent plus 50 with both l3agent and Neutron's own neutron-l3-agent (~30-40 min on 2 cores,
# most of it neutron-server creating the routers through its REST API).
{ echo; target/release/l3agent-bench neutron --routers 1000 --side-routers 50 --fip-events 30; } | tee -a BENCHMARKS.md
