#!/usr/bin/env python3
"""Drive Neutron's own IptablesManager (the `neutron` package from PyPI) through the same
scenarios as l3agent's benchmark, in one namespace, and print the timings as JSON.

Execution goes through Neutron's normal code path (IptablesManager.apply -> linux utils.execute
-> privsep entrypoint -> `ip netns exec NS iptables-save/-restore`); the only thing bypassed is
privilege escalation: the privsep context runs in-process (we are already root). The iptables
backend is chosen by putting a directory with iptables-save/-restore links first in PATH.

Usage: neutron_driver.py --netns NS --n N
"""
import argparse
import json
import os
import sys
import tempfile
import time

from oslo_config import cfg

from neutron.conf.agent import common as agent_config

agent_config.register_root_helper(cfg.CONF)
agent_config.register_iptables_opts(cfg.CONF)
agent_config.register_agent_state_opts_helper(cfg.CONF)
cfg.CONF([], project="neutron")
lock_dir = tempfile.mkdtemp(prefix="l3agent-bench-neutron-locks-")
cfg.CONF.set_override("lock_path", lock_dir, "oslo_concurrency")

from neutron import privileged  # noqa: E402

privileged.default.set_client_mode(False)

from neutron.agent.linux import iptables_manager  # noqa: E402

SOURCES = (["192.0.2.%d" % i for i in range(256)]
           + ["198.51.100.%d" % i for i in range(256)]
           + ["203.0.113.%d" % i for i in range(256)])


def rule(i, port_shift=0):
    # Keep in sync with crates/bench/src/iptables.rs::workload_rule (canonical form, so that
    # Neutron does not churn).
    return "-s %s/32 -p tcp -m tcp --dport %d -j ACCEPT" % (
        SOURCES[i % len(SOURCES)], 1024 + i // len(SOURCES) + port_shift)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--netns", required=True)
    ap.add_argument("--n", type=int, required=True)
    a = ap.parse_args()
    n = a.n
    chains = n // 100
    out = {}
    mgr = iptables_manager.IptablesManager(namespace=a.netns, use_ipv6=False)
    table = mgr.ipv4["filter"]

    t0 = time.perf_counter()
    for c in range(chains):
        name = "c%d" % c
        table.add_chain(name)
        table.add_rule("FORWARD", "-j $%s" % name)
        for r in range(100):
            table.add_rule(name, rule(c * 100 + r))
    t1 = time.perf_counter()
    mgr.apply()
    t2 = time.perf_counter()
    out["build"] = t1 - t0
    out["cold"] = t2 - t1

    extra = "-s 203.0.113.254/32 -p tcp -m tcp --dport 9 -j DROP"
    t0 = time.perf_counter()
    table.add_rule("c7", extra)
    mgr.apply()
    out["add1"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    table.remove_rule("c7", extra)
    mgr.apply()
    out["remove1"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    mgr.apply()
    out["noop"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    for c in range(chains // 10):
        name = "c%d" % c
        table.empty_chain(name)
        for r in range(100):
            table.add_rule(name, rule(c * 100 + r, port_shift=30000))
    t1 = time.perf_counter()
    mgr.apply()
    out["change10"] = time.perf_counter() - t1
    out["change10_build"] = t1 - t0
    if mgr.apply():
        out["converged"] = False
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
