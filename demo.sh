#!/usr/bin/env bash
# The main job: build l3agent, then apply examples/rules.yaml in a throwaway network namespace
# (created here, always deleted on exit), show the result, and apply again to show that a
# second apply changes nothing. Installs iptables/nftables/iproute2 if they are missing.
# Needs root (network namespaces, iptables). Touches nothing outside the throwaway namespace.
set -euo pipefail
cd "$(dirname "$0")"
scripts/install-deps.sh
cargo build --release --quiet
bin=target/release/l3agent
ns="l3agent-demo-$$"
ip netns add "$ns"
trap 'ip netns del "$ns" 2>/dev/null || true' EXIT
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
