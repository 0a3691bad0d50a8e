#!/usr/bin/env bash
# Installs the system packages l3agent and its tests need, if any is missing (Debian/Ubuntu).
set -euo pipefail
need=()
for pair in iptables-nft-restore:iptables iptables-legacy-restore:iptables nft:nftables \
            ip:iproute2 conntrack:conntrack ping:iputils-ping arping:iputils-arping \
            nsenter:util-linux python3:python3; do
  bin=${pair%%:*}; pkg=${pair##*:}
  if ! command -v "$bin" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$bin" ] && [ ! -x "/sbin/$bin" ]; then
    need+=("$pkg")
  fi
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages: ${need[*]} (run as root to install them)" >&2
    exit 1
  fi
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
fi
