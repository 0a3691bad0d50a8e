#!/usr/bin/env bash
# The main job: build l3agent, then
#  1. apply examples/rules.yaml in a throwaway network namespace, show the result, and apply
#     again to show that a second apply changes nothing;
#  2. run l3agent as a router host inside a throwaway "host" namespace (with the bridges the
#     config names) and converge examples/host-legacy.json: a Neutron legacy router with two
#     tenant ports, a gateway and a floating IP; show its namespace, plan and status; destroy.
# Installs iptables/nftables/iproute2 if they are missing. Needs root. Everything happens in
# namespaces made here and deleted on exit; the machine's own namespace is not touched.
set -euo pipefail
cd "$(dirname "$0")"
scripts/install-deps.sh
cargo build --release --quiet
bin=target/release/l3agent
ns="l3agent-demo-$$"
host="l3agent-demo-host-$$"
state=$(mktemp -d)
router_ns=qrouter-87c7c2ae-d0ba-4691-820c-8053abf50b8d
cleanup() {
  nsenter --net="/run/netns/$host" "$bin" destroy --all --state-path "$state" >/dev/null 2>&1 || true
  ip netns del "$ns" 2>/dev/null || true
  ip netns del "$host" 2>/dev/null || true
  rm -rf "$state"
}
trap cleanup EXIT
ip netns add "$ns"
echo "== throwaway namespace $ns; applying examples/rules.yaml (dry run first)"
"$bin" iptables apply --rules examples/rules.yaml --netns "$ns" --dry-run | head -20
echo "..."
echo "== apply"
"$bin" iptables apply --rules examples/rules.yaml --netns "$ns" --check
echo "== what the kernel has (ours only)"
"$bin" iptables show --netns "$ns" --rules examples/rules.yaml
echo "== apply again: nothing to do"
"$bin" iptables apply --rules examples/rules.yaml --netns "$ns"
echo "== iptables-save of the namespace, IPv4 filter"
ip netns exec "$ns" iptables-save -t filter | grep -v '^#'

echo
echo "== a router host: throwaway namespace $host with bridges br-t1, br-t2, br-ex"
ip netns add "$host"
for br in br-t1 br-t2 br-ex; do
  ip -n "$host" link add "$br" type bridge
  ip -n "$host" link set "$br" up
done
sed "s#/var/lib/l3agent#$state#" examples/host-legacy.json > "$state/host.json"
run() { nsenter --net="/run/netns/$host" "$bin" "$@"; }
echo "== l3agent plan"
run plan "$state/host.json"
echo "== l3agent apply"
run apply "$state/host.json"
echo "== the router namespace $router_ns"
ip netns exec "$router_ns" ip -br addr
ip netns exec "$router_ns" ip route
ip netns exec "$router_ns" iptables-save -t nat | grep -E 'SNAT|DNAT'
echo "== apply again: nothing to do"
run apply "$state/host.json"
echo "== l3agent status"
run status --state-path "$state"
echo "== l3agent destroy"
run destroy "$state/host.json"
