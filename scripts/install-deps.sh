#!/usr/bin/env bash
# Installs the system packages l3agent and its tests need, if any is missing (Debian/Ubuntu).
set -euo pipefail
need=()
for pair in iptables-nft-restore:iptables iptables-legacy-restore:iptables nft:nftables \
            ip:iproute2 conntrack:conntrack ping:iputils-ping arping:iputils-arping \
            nsenter:util-linux python3:python3 \
            ovs-vswitchd:openvswitch-switch ovsdb-tool:openvswitch-common \
            epmd:erlang-base /usr/lib/rabbitmq/bin/rabbitmq-server:rabbitmq-server \
            mariadbd:mariadb-server mariadb-install-db:mariadb-server \
            keepalived:keepalived radvd:radvd haproxy:haproxy conntrackd:conntrackd; do
  bin=${pair%%:*}; pkg=${pair##*:}
  if ! command -v "$bin" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$bin" ] && [ ! -x "/sbin/$bin" ] \
     && [ ! -x "$bin" ]; then
    need+=("$pkg")
  fi
done
# Debian's python3 lacks venv/ensurepip without python3-venv (the Neutron testbed's virtualenv).
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  need+=(python3-venv)
fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages: ${need[*]} (run as root to install them)" >&2
    exit 1
  fi
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # The servers among these (ovsdb, RabbitMQ, MariaDB, keepalived, radvd, haproxy) must not start as system services
  # listening on every address: tests start their own, on loopback, with private data. A
  # policy-rc.d that refuses every start is in place for the install only.
  policy=/usr/sbin/policy-rc.d
  had_policy=false
  [ -e "$policy" ] && had_policy=true
  if ! $had_policy; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
fi
