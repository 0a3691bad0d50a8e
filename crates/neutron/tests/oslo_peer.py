"""A real oslo.messaging peer for crates/neutron/tests/oslo.rs.

    python oslo_peer.py server URL   serve q-l3-plugin and q-reports-plugin (server "pyserver")
                                      as neutron-server's endpoints would; print READY, then one
                                      JSON line per cast received; stop on EOF on stdin (or
                                      after 120 s)
    python oslo_peer.py twin URL     consume the agent's own queues (l3_agent, server "node1"),
                                      declared as oslo declares them with URL's options; print
                                      READY, then one JSON line per router_deleted
    python oslo_peer.py client URL   call and cast the agent's methods on l3_agent (server
                                      "node1") and q-agent-notifier-network-update as
                                      neutron-server does; print one JSON object of results

Runs with Neutron's own stack (the venv of scripts/testbed/venv.sh): neutron-lib's admin
context and RequestContextSerializer, oslo.messaging's rabbit driver, control_exchange neutron.
"""

import datetime
import json
import sys
import threading
import warnings

warnings.simplefilter("ignore")

import oslo_messaging  # noqa: E402
from oslo_config import cfg  # noqa: E402

R1 = "87c7c2ae-d0ba-4691-820c-8053abf50b8d"
R2 = "11111111-2222-4333-8444-555555555555"
NET = "22222222-3333-4444-8555-666666666666"


def out(obj):
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def transport(url):
    cfg.CONF([], project="neutron")
    oslo_messaging.set_transport_defaults(control_exchange="neutron")
    return oslo_messaging.get_rpc_transport(cfg.CONF, url=url)


def serializer():
    try:
        from neutron_lib import rpc as n_rpc

        return n_rpc.RequestContextSerializer()
    except ImportError:  # plain oslo.messaging: contexts stay dicts
        return None


def admin_context():
    try:
        from neutron_lib import context as n_context

        return n_context.get_admin_context_without_session()
    except ImportError:
        return {"is_admin": True, "request_id": "req-oslo-peer"}


def ctx_dict(context):
    return context if isinstance(context, dict) else context.to_dict()


class L3Plugin:
    """What the agent calls on q-l3-plugin (neutron.api.rpc.handlers.l3_rpc, version 1.13)."""

    target = oslo_messaging.Target(version="1.13")

    def get_router_ids(self, context, host):
        return [R1, R2]

    def sync_routers(self, context, host, router_ids=None):
        return [{"id": r, "host": host, "admin_state_up": True} for r in router_ids or []]

    def update_floatingip_statuses(self, context, router_id, fip_statuses):
        out({"event": "update_floatingip_statuses", "router_id": router_id,
             "fip_statuses": fip_statuses})
        return None

    def update_ha_routers_states(self, context, host, states):
        out({"event": "update_ha_routers_states", "host": host, "states": states})

    def echo(self, context, **kwargs):
        c = ctx_dict(context)
        return {"args": kwargs, "is_admin": c.get("is_admin"),
                "request_id": c.get("request_id")}

    def fail(self, context):
        raise ValueError("boom from oslo")


class Reports:
    """q-reports-plugin (neutron.db.agents_db.AgentExtRpcCallback, version 1.4)."""

    target = oslo_messaging.Target(version="1.4")

    def report_state(self, context, **kwargs):
        state = kwargs["agent_state"]["agent_state"]
        # neutron.db.agents_db parses it with timeutils.parse_strtime (this format).
        datetime.datetime.strptime(kwargs["time"], "%Y-%m-%dT%H:%M:%S.%f")
        out({"event": "report_state", "binary": state.get("binary"),
             "host": state.get("host"), "start_flag": state.get("start_flag"),
             "agent_type": state.get("agent_type"), "time": kwargs.get("time")})
        return "new"


def server(url):
    t = transport(url)
    ser = serializer()
    servers = [
        oslo_messaging.get_rpc_server(
            t, oslo_messaging.Target(topic=topic, server="pyserver"), [endpoint],
            executor="threading", serializer=ser)
        for topic, endpoint in (("q-l3-plugin", L3Plugin()), ("q-reports-plugin", Reports()))
    ]
    for s in servers:
        s.start()
    out({"event": "READY"})
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    done.wait(120)
    for s in servers:
        s.stop()
    for s in servers:
        s.wait()


class AgentTwin:
    """A second consumer of the agent's own queues (topic l3_agent, server node1)."""

    target = oslo_messaging.Target(version="1.4")

    def router_deleted(self, context, router_id):
        out({"event": "router_deleted", "router_id": router_id})


def twin(url):
    t = transport(url)
    s = oslo_messaging.get_rpc_server(
        t, oslo_messaging.Target(topic="l3_agent", server="node1"), [AgentTwin()],
        executor="threading", serializer=serializer())
    s.start()
    out({"event": "READY"})
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    done.wait(120)
    s.stop()
    s.wait()


def client(url):
    t = transport(url)
    ser = serializer()
    ctx = admin_context()
    agent = oslo_messaging.get_rpc_client(
        t, oslo_messaging.Target(topic="l3_agent", version="1.0"), serializer=ser, timeout=10)
    results = {}
    # neutron.api.rpc.agentnotifiers.l3_rpc_agent_api: a call, retried by the server.
    results["router_added_to_agent"] = agent.prepare(server="node1").call(
        ctx, "router_added_to_agent", payload=[R1])
    agent.prepare(server="node1", version="1.1").cast(ctx, "routers_updated", routers=[R2])
    agent.prepare(fanout=True).cast(ctx, "router_deleted", router_id=R1)
    agent.prepare(fanout=True, version="1.2").cast(
        ctx, "add_arp_entry",
        payload={"router_id": R1, "arp_table": {"ip_address": "10.1.2.3",
                                                "mac_address": "fa:16:3e:01:02:03",
                                                "subnet_id": R2}})
    net = oslo_messaging.get_rpc_client(
        t, oslo_messaging.Target(topic="q-agent-notifier-network-update", version="1.0"),
        serializer=ser, timeout=10)
    net.prepare(fanout=True).cast(ctx, "network_update", network={"id": NET, "mtu": 1450})
    for name, version, method in (("no_such_method", "1.0", "frobnicate"),
                                  ("unsupported_version", "1.5", "routers_updated")):
        try:
            agent.prepare(server="node1", version=version).call(ctx, method, routers=[R1])
            results[name] = None
        except oslo_messaging.RemoteError as e:
            results[name] = {"exc_type": e.exc_type, "value": e.value}
    out(results)
    t.cleanup()


if __name__ == "__main__":
    {"server": server, "client": client, "twin": twin}[sys.argv[1]](sys.argv[2])
