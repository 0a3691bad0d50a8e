//! Differential test of [`compile`] against Neutron 29.0.0's own L3 agent code (the venv of
//! `scripts/testbed/venv.sh`), on the SAME router dicts (issue #13): the radvd and haproxy
//! configurations l3agent compiles for a router's namespace, and the metadata iptables rules,
//! must be what Neutron's agent produces for that router.
//!
//! Each case is a router dict (Neutron's example `tests/data/neutron-router-legacy.json`,
//! extended). l3agent validates and compiles it ([`compile`]); the same dict is fed on stdin
//! to [`NEUTRON_L3_PY`], which drives Neutron's agent code the way `L3NATAgent` does, with
//! nothing executed:
//! - the router object (`LegacyRouter`, or `HaRouter` for `ha: true`) is constructed with a
//!   real `IptablesManager` (wrap name `neutron-l3-agent`, `_apply` mocked: its in-memory rules
//!   are read back), which runs `initialize_address_scope_iptables` and
//!   `initialize_metadata_iptables`;
//! - with the metadata proxy on, the ROUTER AFTER_CREATE callback
//!   (`metadata/driver.py: after_router_added`) runs: `apply_metadata_nat_rules`, and for a
//!   non-HA router `spawn_monitored_metadata_proxy` (`ProcessManager.enable` is mocked to call
//!   the command callback with its pid file, which renders the haproxy config;
//!   `create_config_file` captures it). For an HA router the proxy is spawned as
//!   `ha.py: _update_metadata_proxy` does on `primary`;
//! - radvd: `RouterInfo.enable_radvd(router['_interfaces'])` as `_process_internal_ports`
//!   calls it, with the `DaemonMonitor` that `RouterInfo.initialize` makes (device names from
//!   `get_internal_device_name`, i.e. `('qr-' + port id)[:14]`); `replace_file` captures the
//!   text and spawning is mocked.
//!
//! Without the venv the test fails (it never skips): `neutron_venv()` builds it.
//!
//! Differences that are by design, each asserted where it shows:
//! - radvd: l3agent leaves admin-down ports out of the router (they are not plugged, so they
//!   cannot advertise); Neutron passes `_interfaces` whole, admin-down ports included
//!   (NEUTRON-OPS §2.1). l3agent writes the blocks in device-name order, Neutron in the dict's
//!   `_interfaces` order; each block is byte-identical.
//! - radvd: l3agent refuses a port with an IPv6 subnet and an MTU below 1280 (the kernel turns
//!   IPv6 off on such a device); Neutron writes its block without `AdvLinkMTU`.
//! - haproxy: the `pidfile` line: l3agent's supervisor owns the pid file
//!   (`<state_path>/daemons/<rid>.haproxy.pid`), Neutron's ProcessManager uses
//!   `$external_pids/<rid>.pid.haproxy`.
//! - iptables: the filter `scope` DROP of marked metadata requests is in both at construction;
//!   Neutron loses it at the first `process()` (NEUTRON-OPS §3.5), l3agent keeps it. Only the
//!   construction-time state is compared here.
//! - l3agent always behaves as Neutron does on a host with IPv6 (`netutils.is_ipv6_enabled()`
//!   is mocked to True): IPv6 metadata rules, haproxy bound to `::`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use l3agent_iptables::Family;
use l3agent_router::compile::{compile, daemons_dir, Allocations, HostFacts};
use l3agent_router::config::{ConfigDoc, ConfigError, HostConfig};
use l3agent_router::spec::{names, NsSpec};
use l3agent_supervise::{Key, Service, Supervisor};
use l3agent_types::RouterId;
use serde_json::{json, Value};

/// Drives Neutron's L3 agent code on each case (see the module doc); prints, per case, the
/// iptables manager's rules after construction and AFTER_CREATE as
/// `[ip version, table, kernel chain, rule text]`, the rules each metadata producer added, the
/// haproxy configs written and the radvd configs written.
const NEUTRON_L3_PY: &str = r#"
import json, sys, types
sys.argv[0] = 'neutron-l3-agent'   # iptables_manager's wrap name is the binary's name
from unittest import mock
from oslo_config import cfg
from neutron.agent import l3_agent
from neutron.agent.l3 import ha, ha_router, legacy_router, router_info
from neutron.agent.linux import external_process, interface, iptables_manager, ra
from neutron.agent.metadata import driver, driver_base

l3_agent.register_opts(cfg.CONF)
conf = cfg.CONF
assert iptables_manager.binary_name == 'neutron-l3-agent', iptables_manager.binary_name

def rules(mgr):
    out = []
    for version, tables in ((4, mgr.ipv4), (6, mgr.ipv6)):
        for name, table in sorted(tables.items()):
            for r in table.rules:
                chain = f'{r.wrap_name}-{r.chain}' if r.wrap else r.chain
                text = str(r)
                head = f'-A {chain} '
                assert text.startswith(head), text
                out.append([version, name, chain, text[len(head):]])
    return out

def added(before, after):
    return [r for r in after if r not in before]

out = []
for case in json.load(sys.stdin):
    router = case['router']
    for key in ('metadata_proxy_socket', 'metadata_proxy_user', 'metadata_proxy_group',
                'metadata_port', 'min_rtr_adv_interval', 'max_rtr_adv_interval'):
        conf.clear_override(key)
    conf.set_override('state_path', '/var/lib/neutron')
    md = case['metadata']
    conf.set_override('enable_metadata_proxy', md is not None)
    if md is not None:
        conf.set_override('metadata_proxy_socket', md['socket'])
        conf.set_override('metadata_proxy_user', md['user'])
        conf.set_override('metadata_proxy_group', md['group'])
        conf.set_override('metadata_port', md['port'])
    if case['ra'] is not None:
        conf.set_override('min_rtr_adv_interval', case['ra'][0])
        conf.set_override('max_rtr_adv_interval', case['ra'][1])
    monitor = mock.Mock()
    agent = types.SimpleNamespace(conf=conf, process_monitor=monitor)
    iface = mock.Mock(DEV_NAME_LEN=interface.LinuxInterfaceDriver.DEV_NAME_LEN)
    cls = ha_router.HaRouter if router.get('ha') else legacy_router.LegacyRouter
    stages = {}
    init_metadata = router_info.RouterInfo.initialize_metadata_iptables
    def traced_init_metadata(self):
        before = rules(self.iptables_manager)
        init_metadata(self)
        stages['initialize_metadata_iptables'] = added(before, rules(self.iptables_manager))
    haproxy, commands, radvd = [], [], []
    def enable(self, *args, **kwargs):
        commands.append(self.default_cmd_callback(self.get_pid_file_name()))
    def create_config_file(self):
        haproxy.append(self.haproxy_cfg)
        self.cfg_path = '/nonexistent/%s.conf' % self.resource_id
    with mock.patch('oslo_utils.netutils.is_ipv6_enabled', return_value=True), \
         mock.patch.object(router_info.RouterInfo, 'initialize_metadata_iptables',
                           traced_init_metadata), \
         mock.patch.object(iptables_manager.IptablesManager, '_apply'), \
         mock.patch.object(external_process.ProcessManager, 'enable', enable), \
         mock.patch.object(driver_base.HaproxyConfiguratorBase, 'create_config_file',
                           create_config_file), \
         mock.patch.object(driver_base.HaproxyConfiguratorBase, 'is_config_file_obsolete',
                           return_value=False), \
         mock.patch.object(driver_base.pwd, 'getpwuid', side_effect=KeyError), \
         mock.patch.object(driver_base.pwd, 'getpwnam',
                           side_effect=lambda n: types.SimpleNamespace(pw_name=n)), \
         mock.patch.object(driver_base.grp, 'getgrgid', side_effect=KeyError), \
         mock.patch.object(driver_base.grp, 'getgrnam',
                           side_effect=lambda n: types.SimpleNamespace(gr_name=n)):
        ri = cls(agent=agent, router_id=router['id'], router=router, agent_conf=conf,
                 interface_driver=iface, use_ipv6=True)
        constructed = rules(ri.iptables_manager)
        if md is not None:
            agent.metadata_driver = driver.MetadataDriver(agent)
            driver.after_router_added('router', 'after_create', agent,
                                      types.SimpleNamespace(latest_state=ri))
            if router.get('ha'):
                ha.AgentMixin._update_metadata_proxy(agent, ri, ri.router_id, 'primary')
        final = rules(ri.iptables_manager)
        stages['apply_metadata_nat_rules'] = added(constructed, final)
        ri.radvd = ra.DaemonMonitor(ri.router_id, ri.ns_name, monitor,
                                    ri.get_internal_device_name, conf)
        with mock.patch.object(ra.utils, 'get_conf_file_name',
                               return_value='/nonexistent/r.radvd.conf'), \
             mock.patch.object(ra.file_utils, 'replace_file',
                               side_effect=lambda path, data, file_mode: radvd.append(data)), \
             mock.patch.object(ra.DaemonMonitor, '_spawn_radvd'), \
             mock.patch.object(ra.DaemonMonitor, 'disable'):
            # RouterInfo's (HaRouter's adds only a keepalived primary check before it)
            router_info.RouterInfo.enable_radvd(ri, router.get('_interfaces', []))
    out.append({'wrap': ri.iptables_manager.wrap_name, 'rules': final, 'stages': stages,
                'haproxy': haproxy, 'haproxy_commands': commands, 'radvd': radvd})
json.dump(out, sys.stdout)
"#;

/// The venv's Python (`scripts/testbed/venv.sh` builds the venv the first time; without
/// it the test fails, it never skips). `L3AGENT_TESTBED_VENV` names another venv.
fn python() -> PathBuf {
    match std::env::var_os("L3AGENT_TESTBED_VENV") {
        Some(v) => PathBuf::from(v).join("bin/python"),
        None => l3agent_testkit::service::neutron_venv().join("bin/python"),
    }
}

/// Runs [`NEUTRON_L3_PY`] on `cases`; one result per case.
fn neutron(cases: &[Value]) -> Vec<Value> {
    let python = python();
    let input = Value::Array(cases.to_vec()).to_string();
    let out = l3agent_process::run(
        &python,
        &["-W", "ignore", "-c", NEUTRON_L3_PY],
        Some(input.as_bytes()),
        None,
        Duration::from_secs(300),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", python.display()));
    assert!(
        out.success(),
        "Neutron's code failed (exit {:?}); is the venv complete? scripts/testbed/venv.sh \
         rebuilds it.\nstderr:\n{}",
        out.code,
        out.stderr
    );
    let list: Vec<Value> = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("Neutron's script printed {:?}: {e}", out.stdout));
    assert_eq!(list.len(), cases.len(), "one result per case");
    for r in &list {
        assert_eq!(r["wrap"], "neutron-l3-agent", "Neutron's wrap name");
    }
    list
}

// ---------------------------------------------------------------------------------------------
// Router dicts and l3agent's side

const STATE_PATH: &str = "/var/lib/l3agent";
const NET_T1: &str = "90e4912c-0eb8-4be4-a793-e6a3bba6ae8b";
const NET_V6A: &str = "a6000000-0000-4000-8000-00000000000a";
const NET_V6B: &str = "a6000000-0000-4000-8000-00000000000b";
const NET_V6C: &str = "a6000000-0000-4000-8000-00000000000c";
const HA_NET: &str = "a6000000-0000-4000-8000-0000000000ff";

/// The metadata proxy settings, the same on both sides (l3agent's `agent.metadata_proxy`;
/// Neutron's `metadata_proxy_socket`, `metadata_proxy_user`, `metadata_proxy_group`,
/// `metadata_port`).
#[derive(Clone, Copy)]
struct Md {
    socket: &'static str,
    user: &'static str,
    group: &'static str,
    port: u16,
}

impl Md {
    fn json(&self) -> Value {
        json!({"socket": self.socket, "user": self.user, "group": self.group, "port": self.port})
    }
}

const MD: Md = Md {
    socket: "/var/lib/neutron/metadata_proxy",
    user: "neutron",
    group: "neutron",
    port: 9697,
};

const MD_OTHER: Md = Md {
    socket: "/run/l3agent/md.sock",
    user: "nova-md",
    group: "nogroup",
    port: 19697,
};

fn example() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/neutron-router-legacy.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The example as an HA router (VRID 7, this host's HA port 169.254.192.5/18).
fn ha_example() -> Value {
    let mut r = example();
    r["ha"] = json!(true);
    r["ha_vr_id"] = json!(7);
    r["_ha_interface"] = json!({
        "id": "1111aaaa-bbbb-4ccc-8ddd-eeeeffff0000", "network_id": HA_NET,
        "mac_address": "fa:16:3e:00:00:07",
        "fixed_ips": [{"ip_address": "169.254.192.5", "prefixlen": 18,
                       "subnet_id": "2222aaaa-bbbb-4ccc-8ddd-eeeeffff0000"}],
        "subnets": [{"id": "2222aaaa-bbbb-4ccc-8ddd-eeeeffff0000", "cidr": "169.254.192.0/18",
                     "gateway_ip": null}]});
    r
}

/// An IPv6 subnet `<prefix>/64` as the server sends it (`ipv6_address_mode` = `ipv6_ra_mode`,
/// which the server requires when both are set), plus the port's fixed IP `<prefix>1` on it.
fn add_v6(port: &mut Value, id: &str, prefix: &str, mode: Option<&str>, dns: &[&str]) {
    port["subnets"].as_array_mut().unwrap().push(json!({
        "id": id,
        "cidr": format!("{prefix}/64"),
        "gateway_ip": format!("{prefix}1"),
        "ipv6_ra_mode": mode,
        "ipv6_address_mode": mode,
        "dns_nameservers": dns,
    }));
    port["fixed_ips"].as_array_mut().unwrap().push(json!({
        "ip_address": format!("{prefix}1"), "prefixlen": 64, "subnet_id": id,
    }));
}

/// A router port without subnets.
fn port(id: &str, network: &str, mac: &str, mtu: u32, admin_state_up: bool) -> Value {
    json!({
        "id": id, "network_id": network, "mac_address": mac, "mtu": mtu,
        "admin_state_up": admin_state_up, "fixed_ips": [], "subnets": [],
    })
}

fn agent(md: Option<Md>, ra: Option<(u32, u32)>) -> Value {
    let mut a = json!({
        "mode": "legacy",
        "host": "host-a",
        "state_path": STATE_PATH,
        "bridges": {
            NET_T1: "br-t1",
            "c6910e18-fb1f-4988-9af4-211a8c2e2926": "br-t2",
            "65566f91-133a-44ff-87f5-ecffc1193d3d": "br-ex",
            NET_V6A: "br-v6a",
            NET_V6B: "br-v6b",
            NET_V6C: "br-v6c",
            HA_NET: "br-ha",
        },
    });
    if let Some(md) = md {
        a["metadata_proxy"] = md.json();
    }
    if let Some((min, max)) = ra {
        a["router_advertisements"] = json!({"min_interval": min, "max_interval": max});
    }
    a
}

fn validate(
    md: Option<Md>,
    ra: Option<(u32, u32)>,
    router: &Value,
) -> Result<HostConfig, Vec<ConfigError>> {
    let doc: ConfigDoc =
        serde_json::from_value(json!({"agent": agent(md, ra), "routers": [router]})).unwrap();
    doc.validate()
}

fn router_id(router: &Value) -> RouterId {
    RouterId::new("id", router["id"].as_str().unwrap()).unwrap()
}

/// l3agent's `qrouter-` namespace for `router`.
fn qrouter(md: Option<Md>, ra: Option<(u32, u32)>, router: &Value) -> NsSpec {
    let cfg = validate(md, ra, router).unwrap_or_else(|e| panic!("{e:#?}"));
    let spec = compile(&cfg, &Allocations::default(), &HostFacts::default());
    assert!(spec.failed.is_empty(), "{:?}", spec.failed);
    spec.namespaces
        .get(&names::router_ns(&router_id(router)))
        .cloned()
        .expect("the router's namespace")
}

fn neutron_case(md: Option<Md>, ra: Option<(u32, u32)>, router: &Value) -> Value {
    json!({"router": router, "metadata": md.map(|m| m.json()), "ra": ra.map(|(a, b)| [a, b])})
}

fn daemon(ns: &NsSpec, service: Service) -> Option<String> {
    ns.daemons
        .get(&service)
        .map(|b| String::from_utf8(b.clone()).unwrap())
}

/// The only file of a kind Neutron wrote for a case (`None`: it wrote none).
fn written(result: &Value, key: &str) -> Option<String> {
    let list = result[key].as_array().unwrap();
    assert!(list.len() <= 1, "{key} written more than once: {list:?}");
    list.first().map(|v| v.as_str().unwrap().to_owned())
}

// ---------------------------------------------------------------------------------------------
// radvd

/// A radvd.conf cut into its per-interface blocks, as (device, block). Both renderers join the
/// blocks with no separator (`};interface …`); a block starts at `interface ` at the start of
/// the text or right after the previous block's `};`.
fn radvd_blocks(text: &str) -> Vec<(String, String)> {
    let mut starts: Vec<usize> = text
        .match_indices("interface ")
        .map(|(i, _)| i)
        .filter(|&i| i == 0 || text[..i].ends_with("};"))
        .collect();
    assert_eq!(
        starts.first(),
        Some(&0),
        "radvd.conf starts with a block: {text:?}"
    );
    starts.push(text.len());
    let blocks: Vec<(String, String)> = starts
        .windows(2)
        .map(|w| {
            let block = &text[w[0]..w[1]];
            let dev = block["interface ".len()..].split('\n').next().unwrap();
            (dev.to_owned(), block.to_owned())
        })
        .collect();
    assert_eq!(
        blocks.iter().map(|(_, b)| b.as_str()).collect::<String>(),
        text,
        "the cut is lossless"
    );
    blocks
}

/// The devices of `router`'s internal ports that have an IPv6 subnet, in `_interfaces` order,
/// with their admin state.
fn v6_ports(router: &Value) -> Vec<(String, bool)> {
    router["_interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            p["subnets"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["cidr"].as_str().unwrap().contains(':'))
        })
        .map(|p| {
            let dev = names::device("qr-", p["id"].as_str().unwrap());
            (
                dev.to_string(),
                p["admin_state_up"].as_bool().unwrap_or(true),
            )
        })
        .collect()
}

const DNS4: [&str; 4] = ["2001:db8::1", "2001:db8::2", "2001:db8::3", "2001:db8::4"];

/// The example with IPv6 on both of its ports, which are in device-name order in the dict:
/// `qr-081ed401-2a` slaac with 4 DNS servers (3 advertised), `qr-fa4bdea8-84` a stateful
/// subnet with a DNS server (not advertised) and a stateless one.
fn two_v6_ports() -> Value {
    let mut r = example();
    let ports = r["_interfaces"].as_array_mut().unwrap();
    add_v6(
        &mut ports[0],
        "60000000-0000-4000-8000-000000000001",
        "2001:db8:1::",
        Some("slaac"),
        &DNS4,
    );
    add_v6(
        &mut ports[1],
        "60000000-0000-4000-8000-000000000002",
        "2001:db8:2::",
        Some("dhcpv6-stateful"),
        &["2001:db8::53"],
    );
    add_v6(
        &mut ports[1],
        "60000000-0000-4000-8000-000000000003",
        "fd00:1:2:3::",
        Some("dhcpv6-stateless"),
        &[],
    );
    r
}

/// Every ra mode, in a dict whose `_interfaces` order is not the device-name order
/// (`qr-081…`, `qr-fa4…`, `qr-3c5…`, `qr-b7e…`, `qr-5a9…`), with an admin-down port:
/// - `qr-081ed401-2a` (IPv4 + slaac, 4 DNS servers);
/// - `qr-fa4bdea8-84` (IPv4 + every mode mixed on one port, None included, DNS servers on
///   two slaac subnets (2 + 2: the first 3 are advertised) and on stateful/None ones (not));
/// - `qr-3c5d0a11-7e` (IPv6 only, dhcpv6-stateless with DNS servers, MTU 9000);
/// - `qr-b7e1c2d3-4f` (IPv6 only, None mode, MTU exactly 1280);
/// - `qr-5a9b8c7d-6e` (admin-down, slaac).
fn every_mode() -> Value {
    let mut r = example();
    let ports = r["_interfaces"].as_array_mut().unwrap();
    add_v6(
        &mut ports[0],
        "61000000-0000-4000-8000-000000000001",
        "2001:db8:1::",
        Some("slaac"),
        &DNS4,
    );
    ports[1]["mtu"] = json!(1450);
    for (i, (prefix, mode, dns)) in [
        (
            "2001:db8:5::",
            Some("dhcpv6-stateful"),
            &["2001:db8::55"][..],
        ),
        ("2001:db8:6::", Some("slaac"), &DNS4[..2]),
        ("2001:db8:7::", None, &["2001:db8::77"][..]),
        ("2001:db8:8::", Some("dhcpv6-stateless"), &[][..]),
        ("2001:db8:9::", Some("slaac"), &DNS4[2..]),
        ("fd00:a::", Some("dhcpv6-stateful"), &[][..]),
    ]
    .into_iter()
    .enumerate()
    {
        add_v6(
            &mut ports[1],
            &format!("62000000-0000-4000-8000-00000000000{i}"),
            prefix,
            mode,
            dns,
        );
    }
    let mut stateless = port(
        "3c5d0a11-7e2f-4b8a-9c1d-2e3f4a5b6c7d",
        NET_V6A,
        "fa:16:3e:00:00:0a",
        9000,
        true,
    );
    add_v6(
        &mut stateless,
        "63000000-0000-4000-8000-000000000001",
        "2001:db8:a::",
        Some("dhcpv6-stateless"),
        &DNS4[..1],
    );
    let mut none = port(
        "b7e1c2d3-4f5a-4b6c-8d7e-9f0a1b2c3d4e",
        NET_V6B,
        "fa:16:3e:00:00:0b",
        1280,
        true,
    );
    add_v6(
        &mut none,
        "64000000-0000-4000-8000-000000000001",
        "2001:db8:b::",
        None,
        &[],
    );
    let mut down = port(
        "5a9b8c7d-6e5f-4a3b-9c2d-1e0f9a8b7c6d",
        NET_V6C,
        "fa:16:3e:00:00:0c",
        1500,
        false,
    );
    add_v6(
        &mut down,
        "65000000-0000-4000-8000-000000000001",
        "2001:db8:c::",
        Some("slaac"),
        &DNS4[..1],
    );
    ports.extend([stateless, none, down]);
    r
}

/// The example (IPv4 only) plus an admin-down port, the only one with IPv6.
fn only_a_down_port_has_v6() -> Value {
    let mut r = example();
    let mut down = port(
        "5a9b8c7d-6e5f-4a3b-9c2d-1e0f9a8b7c6d",
        NET_V6C,
        "fa:16:3e:00:00:0c",
        1500,
        false,
    );
    add_v6(
        &mut down,
        "65000000-0000-4000-8000-000000000001",
        "2001:db8:c::",
        Some("slaac"),
        &[],
    );
    r["_interfaces"].as_array_mut().unwrap().push(down);
    r
}

struct RaCase {
    name: &'static str,
    router: Value,
    /// `agent.router_advertisements` intervals (`None`: the defaults on both sides).
    ra: Option<(u32, u32)>,
    /// The dict lists its IPv6 ports in device-name order and none is admin-down: the texts
    /// are byte-identical without any normalisation.
    raw_equal: bool,
}

#[test]
fn radvd_conf_is_neutrons_for_the_same_router_dicts() {
    let cases = [
        RaCase {
            name: "two IPv6 ports in device-name order",
            router: two_v6_ports(),
            ra: None,
            raw_equal: true,
        },
        RaCase {
            name: "two IPv6 ports, radvd's smallest intervals",
            router: two_v6_ports(),
            ra: Some((3, 4)),
            raw_equal: true,
        },
        RaCase {
            name: "every ra mode, dict order is not device order, an admin-down port",
            router: every_mode(),
            ra: None,
            raw_equal: false,
        },
        RaCase {
            name: "only an admin-down port has IPv6",
            router: only_a_down_port_has_v6(),
            ra: None,
            raw_equal: false,
        },
        RaCase {
            name: "IPv4 only: no radvd",
            router: example(),
            ra: None,
            raw_equal: true,
        },
    ];
    let theirs = neutron(
        &cases
            .iter()
            .map(|c| neutron_case(None, c.ra, &c.router))
            .collect::<Vec<_>>(),
    );
    for (case, theirs) in cases.iter().zip(&theirs) {
        let name = case.name;
        let ours = daemon(&qrouter(None, case.ra, &case.router), Service::Radvd);
        let theirs = written(theirs, "radvd");
        let ports = v6_ports(&case.router);
        // Neutron: a block per port with an IPv6 subnet, in the dict's `_interfaces` order,
        // admin-down ports included (it passes `router['_interfaces']` whole).
        let blocks = theirs.as_deref().map(radvd_blocks).unwrap_or_default();
        assert_eq!(
            blocks.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>(),
            ports.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>(),
            "{name}: Neutron's blocks follow `_interfaces`"
        );
        // l3agent: the admin-up ones only (an admin-down port is not plugged), by device
        // name; every block byte-identical to Neutron's.
        let mut kept: Vec<(String, String)> = blocks
            .iter()
            .zip(&ports)
            .filter(|(_, (_, up))| *up)
            .map(|(b, _)| b.clone())
            .collect();
        kept.sort();
        let normalised: String = kept.into_iter().map(|(_, b)| b).collect();
        assert_eq!(
            ours.as_deref(),
            (!normalised.is_empty()).then_some(normalised.as_str()),
            "{name}: l3agent's radvd.conf is Neutron's without admin-down ports, by device name"
        );
        for (dev, _) in ports.iter().filter(|(_, up)| !up) {
            assert!(
                theirs
                    .as_deref()
                    .unwrap()
                    .contains(&format!("interface {dev}\n")),
                "{name}: Neutron advertises on admin-down {dev}"
            );
            assert!(
                !ours.as_deref().unwrap_or("").contains(dev.as_str()),
                "{name}: l3agent does not advertise on admin-down {dev}"
            );
        }
        if case.raw_equal {
            assert_eq!(ours, theirs, "{name}: byte-identical");
        } else {
            assert_ne!(ours, theirs, "{name}: the case exercises the normalisation");
        }
    }
}

/// A port with an IPv6 subnet and an MTU below 1280: Neutron advertises on it without
/// `AdvLinkMTU` (`network_mtu >= IPV6_MIN_MTU` in its template); l3agent refuses the router
/// (the kernel disables IPv6 on a device below 1280, so radvd could not run there anyway).
#[test]
fn an_ipv6_port_below_1280_is_refused_where_neutron_drops_adv_link_mtu() {
    let mut r = two_v6_ports();
    r["_interfaces"][1]["mtu"] = json!(1279);
    let theirs = written(&neutron(&[neutron_case(None, None, &r)])[0], "radvd").unwrap();
    let blocks = radvd_blocks(&theirs);
    assert_eq!(blocks.len(), 2);
    assert_eq!(blocks[1].0, "qr-fa4bdea8-84");
    assert!(
        !blocks[1].1.contains("AdvLinkMTU"),
        "Neutron: no AdvLinkMTU below 1280: {theirs}"
    );
    assert!(blocks[0].1.contains("AdvLinkMTU 1500;"), "{theirs}");
    let errors = validate(None, None, &r).expect_err("l3agent refuses the port");
    assert_eq!(
        errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
        vec![
            "routers[0]._interfaces[1].mtu: 1279 is below 1280, the IPv6 minimum, on a port \
             with an IPv6 subnet"
                .to_owned()
        ]
    );
}

/// A port dict without `mtu` (neutron-server always sends one, 0 when the network's is
/// unknown, which l3agent refuses: 68..65535): Neutron's template reads `p.get('mtu', 0)` and
/// leaves `AdvLinkMTU` out, and `plug` leaves the device's MTU alone; l3agent takes 1500 for
/// the device and advertises it, exactly as Neutron does for `mtu: 1500`.
#[test]
fn a_port_without_mtu_advertises_1500_where_neutron_advertises_none() {
    let mut without = two_v6_ports();
    without["_interfaces"][0]
        .as_object_mut()
        .unwrap()
        .remove("mtu");
    let with_1500 = two_v6_ports();
    assert_eq!(with_1500["_interfaces"][0]["mtu"], 1500);
    let theirs = neutron(&[
        neutron_case(None, None, &without),
        neutron_case(None, None, &with_1500),
    ]);
    let (theirs_without, theirs_1500) = (
        written(&theirs[0], "radvd").unwrap(),
        written(&theirs[1], "radvd").unwrap(),
    );
    let blocks = radvd_blocks(&theirs_without);
    assert_eq!(blocks[0].0, "qr-081ed401-2a");
    assert!(!blocks[0].1.contains("AdvLinkMTU"), "{theirs_without}");
    let ours = daemon(&qrouter(None, None, &without), Service::Radvd).unwrap();
    assert_eq!(ours, theirs_1500, "l3agent: a missing mtu is 1500");
    assert_ne!(ours, theirs_without);
}

// ---------------------------------------------------------------------------------------------
// haproxy

/// The text with its `pidfile` line replaced by a placeholder, and that line's path.
fn without_pidfile(text: &str) -> (String, String) {
    const PIDFILE: &str = "    pidfile     ";
    let mut pid = None;
    let lines: Vec<String> = text
        .split('\n')
        .map(|l| match l.strip_prefix(PIDFILE) {
            Some(p) => {
                assert!(pid.is_none(), "one pidfile line: {text}");
                pid = Some(p.to_owned());
                format!("{PIDFILE}<pidfile>")
            }
            None => l.to_owned(),
        })
        .collect();
    (lines.join("\n"), pid.expect("a pidfile line"))
}

#[test]
fn haproxy_cfg_is_neutrons_but_for_the_pidfile() {
    let cases: Vec<(&str, Md, Value)> = vec![
        ("legacy router, Neutron's defaults", MD, example()),
        (
            "legacy router, other socket, user, group, port",
            MD_OTHER,
            example(),
        ),
        ("HA router (spawned on primary)", MD, ha_example()),
    ];
    let theirs = neutron(
        &cases
            .iter()
            .map(|(_, md, r)| neutron_case(Some(*md), None, r))
            .collect::<Vec<_>>(),
    );
    for ((name, md, router), theirs) in cases.iter().zip(&theirs) {
        let id = router_id(router);
        let ours = daemon(&qrouter(Some(*md), None, router), Service::Haproxy)
            .unwrap_or_else(|| panic!("{name}: l3agent runs the proxy"));
        let theirs = written(theirs, "haproxy").unwrap_or_else(|| panic!("{name}: Neutron's"));
        let (ours, our_pid) = without_pidfile(&ours);
        let (theirs, their_pid) = without_pidfile(&theirs);
        assert_eq!(ours, theirs, "{name}: all but the pidfile line");
        let key = Key {
            router: id.clone(),
            service: Service::Haproxy,
        };
        let supervisor = Supervisor::paths(&daemons_dir(Path::new(STATE_PATH)), &key).pid;
        assert_eq!(
            our_pid,
            supervisor.display().to_string(),
            "{name}: the supervisor's pid file"
        );
        assert_eq!(
            their_pid,
            format!("/var/lib/neutron/external/pids/{id}.pid.haproxy"),
            "{name}: Neutron's ProcessManager's pid file"
        );
        assert!(ours.contains("    bind :::"), "{name}: bound to ::");
    }
}

// ---------------------------------------------------------------------------------------------
// metadata iptables rules

/// (IP version, table, kernel chain, rule text).
type Rule = (u8, String, String, String);

fn neutron_rules(v: &Value) -> Vec<Rule> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                u8::try_from(r[0].as_u64().unwrap()).unwrap(),
                r[1].as_str().unwrap().to_owned(),
                r[2].as_str().unwrap().to_owned(),
                r[3].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Every rule of l3agent's model for the namespace, each chain in its order.
fn our_rules(ns: &NsSpec) -> Vec<Rule> {
    let m = &ns.iptables;
    let mut out = Vec::new();
    for family in Family::ALL {
        let version = match family {
            Family::V4 => 4,
            Family::V6 => 6,
        };
        for table in m.tables_of(family) {
            for (chain, c) in &m.table(family, table).unwrap().chains {
                for r in c.rules() {
                    out.push((
                        version,
                        table.as_str().to_owned(),
                        chain.clone(),
                        r.spec.clone(),
                    ));
                }
            }
        }
    }
    out
}

/// A metadata rule: it names the metadata address (169.254.169.254 / fe80::a9fe:a9fe), the
/// metadata mark `0x1/0xffff`, or the proxy port.
fn is_metadata(rule: &str, port: u16) -> bool {
    let words: Vec<&str> = rule.split_whitespace().collect();
    rule.contains("169.254.169.254")
        || rule.contains("fe80::a9fe:a9fe")
        || words.contains(&"0x1/0xffff")
        || words
            .windows(2)
            .any(|w| w[0] == "--dport" && w[1] == port.to_string())
}

/// The metadata rules by chain, each chain's in rule order.
fn metadata_by_chain(rules: &[Rule], port: u16) -> BTreeMap<(u8, String, String), Vec<String>> {
    let mut out: BTreeMap<(u8, String, String), Vec<String>> = BTreeMap::new();
    for (v, t, c, r) in rules.iter().filter(|r| is_metadata(&r.3, port)) {
        out.entry((*v, t.clone(), c.clone()))
            .or_default()
            .push(r.clone());
    }
    out
}

fn rule(v: u8, table: &str, chain: &str, text: &str) -> Rule {
    (v, table.to_owned(), chain.to_owned(), text.to_owned())
}

#[test]
fn metadata_iptables_rules_are_neutrons() {
    let cases: Vec<(&str, Option<Md>, Value)> = vec![
        ("legacy router, proxy on port 9697", Some(MD), example()),
        (
            "legacy router, proxy on port 19697",
            Some(MD_OTHER),
            example(),
        ),
        ("legacy router, no proxy", None, example()),
        ("HA router, proxy on", Some(MD), ha_example()),
        ("legacy router with IPv6 ports", Some(MD), every_mode()),
    ];
    let theirs = neutron(
        &cases
            .iter()
            .map(|(_, md, r)| neutron_case(*md, None, r))
            .collect::<Vec<_>>(),
    );
    for ((name, md, router), theirs) in cases.iter().zip(&theirs) {
        let port = md.map_or(9697, |m| m.port);
        let all_theirs = neutron_rules(&theirs["rules"]);
        let init = neutron_rules(&theirs["stages"]["initialize_metadata_iptables"]);
        let nat = neutron_rules(&theirs["stages"]["apply_metadata_nat_rules"]);
        let theirs_set: BTreeSet<Rule> = all_theirs
            .iter()
            .filter(|r| is_metadata(&r.3, port))
            .cloned()
            .collect();
        // The markers select exactly what Neutron's metadata producers installed:
        // `RouterInfo.initialize_metadata_iptables` (constructor) and, with the proxy on,
        // `metadata/driver.py: apply_metadata_nat_rules` (ROUTER AFTER_CREATE).
        assert_eq!(
            theirs_set,
            init.iter().chain(&nat).cloned().collect::<BTreeSet<_>>(),
            "{name}: the metadata markers select Neutron's metadata producers' rules"
        );
        let w = "neutron-l3-agent";
        // The filter `scope` DROP of marked requests is in Neutron's initial set (it is lost
        // only at the first `process()`, NEUTRON-OPS §3.5; l3agent keeps it).
        for v in [4, 6] {
            assert!(
                init.contains(&rule(
                    v,
                    "filter",
                    &format!("{w}-scope"),
                    "-m mark --mark 0x1/0xffff -j DROP"
                )),
                "{name}: IPv{v} scope DROP at construction: {init:?}"
            );
        }
        if md.is_none() {
            assert!(nat.is_empty(), "{name}: no proxy, no NAT rules: {nat:?}");
        } else {
            assert!(
                nat.contains(&rule(
                    6,
                    "nat",
                    &format!("{w}-PREROUTING"),
                    &format!(
                        "-d fe80::a9fe:a9fe/128 -i qr-+ -p tcp -m tcp --dport 80 -j REDIRECT \
                         --to-ports {port}"
                    )
                )),
                "{name}: {nat:?}"
            );
        }
        let ns = qrouter(*md, None, router);
        let ours = our_rules(&ns);
        let ours_set: BTreeSet<Rule> = ours
            .iter()
            .filter(|r| is_metadata(&r.3, port))
            .cloned()
            .collect();
        assert_eq!(
            ours_set, theirs_set,
            "{name}: the same (family, table, chain, rule) set"
        );
        // Beyond the set: within each chain the metadata rules come in the same order (the
        // INPUT ACCEPT of marked requests before the DROP of the proxy port).
        assert_eq!(
            metadata_by_chain(&ours, port),
            metadata_by_chain(&all_theirs, port),
            "{name}: the same order within each chain"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// conntrackd (`agent.ha.conntrackd_enabled`)

/// `ConntrackdManager.build_config` with the inputs `HaRouter` gives it, taken from the
/// router dict: the HA port's first fixed IP, `ha_vr_id`, and the `ha-` device
/// (`get_ha_device_name`: `('ha-' + port id)[:14]`); `ensure_tree` is mocked.
const CONNTRACKD_FROM_DICT_PY: &str = r#"
import json, sys
from unittest import mock
from oslo_config import cfg
from neutron.agent.l3 import ha_router
from neutron.agent.linux import conntrackd, interface
from neutron.conf.agent.l3 import ha as ha_conf

out = []
for case in json.load(sys.stdin):
    conf = cfg.ConfigOpts()
    ha_conf.register_l3_agent_ha_opts(conf)
    conf.set_override('ha_confs_path', case['ha_confs_path'])
    for key, value in case['options'].items():
        conf.set_override(key, value)
    r = case['router']
    port = r['_ha_interface']
    dev = (ha_router.HA_DEV_PREFIX + port['id'])[:interface.LinuxInterfaceDriver.DEV_NAME_LEN]
    with mock.patch.object(conntrackd, 'ensure_tree'):
        manager = conntrackd.ConntrackdManager(
            r['id'], None, conf, port['fixed_ips'][0]['ip_address'], r['ha_vr_id'], dev)
        out.append(manager.build_config())
json.dump(out, sys.stdout)
"#;

/// The conntrackd.conf l3agent compiles for an HA router is Neutron's for the same dict
/// and options, but for the `LockFile` and `UNIX { Path }` lines: l3agent's supervisor keeps
/// them in `<state_path>/daemons/<rid>.conntrackd.{lock,ctl}`, Neutron in
/// `$ha_confs/<rid>/conntrackd.{lock,ctl}`.
#[test]
fn conntrackd_conf_is_neutrons_for_the_same_ha_router_dicts_but_for_its_two_paths() {
    let ha_confs = "/var/lib/neutron/ha_confs";
    let mut other = ha_example();
    other["ha_vr_id"] = json!(254);
    other["_ha_interface"]["fixed_ips"][0]["ip_address"] = json!("169.254.255.254");
    let knobs = json!({"conntrackd_hashsize": 1, "conntrackd_hashlimit": 2,
        "conntrackd_unix_backlog": 3, "conntrackd_socketbuffersize": 4,
        "conntrackd_socketbuffersize_max_grown": 5,
        "conntrackd_ipv4_mcast_addr": "239.1.2.3", "conntrackd_group": 0,
        "conntrackd_sndsocketbuffer": 6, "conntrackd_rcvsocketbuffer": 7});
    let cases = [(ha_example(), json!({})), (other, knobs)];
    let mut ours = Vec::new();
    let mut theirs_in = Vec::new();
    for (router, knobs) in &cases {
        let mut a = agent(None, None);
        let mut ha = json!({"conntrackd_enabled": true});
        let mut options = json!({});
        for (k, v) in knobs.as_object().unwrap() {
            ha[k] = v.clone();
            options[format!("ha_{k}")] = v.clone();
        }
        a["ha"] = ha;
        let doc: ConfigDoc =
            serde_json::from_value(json!({"agent": a, "routers": [router]})).unwrap();
        let cfg = doc.validate().unwrap_or_else(|e| panic!("{e:#?}"));
        let spec = compile(&cfg, &Allocations::default(), &HostFacts::default());
        assert!(spec.failed.is_empty(), "{:?}", spec.failed);
        let ns = &spec.namespaces[&names::router_ns(&router_id(router))];
        ours.push(daemon(ns, Service::Conntrackd).expect("conntrackd's config"));
        theirs_in.push(json!({"router": router, "ha_confs_path": ha_confs, "options": options}));
    }
    let python = python();
    let input = Value::Array(theirs_in).to_string();
    let out = l3agent_process::run(
        &python,
        &["-W", "ignore", "-c", CONNTRACKD_FROM_DICT_PY],
        Some(input.as_bytes()),
        None,
        Duration::from_secs(120),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", python.display()));
    assert!(out.success(), "{}", out.stderr);
    let theirs: Vec<String> = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(theirs.len(), cases.len());
    for (((router, _), ours), theirs) in cases.iter().zip(&ours).zip(&theirs) {
        let id = router_id(router);
        let mine = Supervisor::paths(
            &daemons_dir(Path::new(STATE_PATH)),
            &Key::new(id.clone(), Service::Conntrackd),
        );
        let swap = [
            (
                format!("LockFile {}", mine.lock.unwrap().display()),
                format!("LockFile {ha_confs}/{id}/conntrackd.lock"),
            ),
            (
                format!("Path {}", mine.socket.unwrap().display()),
                format!("Path {ha_confs}/{id}/conntrackd.ctl"),
            ),
        ];
        let mut as_neutron = ours.clone();
        for (a, b) in &swap {
            assert!(ours.contains(a.as_str()), "{a:?} in\n{ours}");
            as_neutron = as_neutron.replace(a.as_str(), b);
        }
        assert_eq!(
            &as_neutron, theirs,
            "router {id}, vrid {}",
            router["ha_vr_id"]
        );
    }
}
