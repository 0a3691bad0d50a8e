#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests, and the real-kernel tests (throwaway
# network namespaces, both iptables backends, IPv4 and IPv6). Installs missing system packages.
# Needs root: the kernel tests fail (they never skip) without it.
set -euo pipefail
cd "$(dirname "$0")"
scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
scripts/fuzz.sh "${L3AGENT_FUZZ_SECONDS:-20}"
