//! The agent's traffic reader ([`KernelTraffic`]) against the real kernel:
//!
//! - with a distributed router's layout (the legacy one is covered end to end by
//!   `crates/l3agent/tests/traffic.rs`): its `rfp-` end in `qrouter-<id>` and its gateway `qg-`
//!   in `snat-<id>`, both veths to an "external" namespace, and a floating IP's DNAT rule in
//!   `qrouter-`. Known pings and connections go through; what is read must have moved by at
//!   least that;
//! - with `agent.traffic_accounting`, on both backends: a legacy router's `qrouter-` holding
//!   the iptables rules compile writes for Neutron's legacy example (an "external" namespace
//!   on its `qg-`, a "VM" with the floating IP's fixed address on its `qr-`), and pings of one
//!   connection each way through the floating IP: with accounting its counters follow every
//!   packet, without it (the NAT rules) they count the two connections.

use std::net::{Ipv4Addr, UdpSocket};

use l3agent_agent::metrics::{Direction, TrafficReading};
use l3agent_agent::traffic::{interpret, targets, KernelTraffic, Readings, Target, TrafficSource};
use l3agent_iptables::Family;
use l3agent_iptables_exec::Backend;
use l3agent_router::compile::{compile, restore_text, Allocations, HostFacts};
use l3agent_router::config::{ConfigDoc, HostConfig};
use l3agent_router::spec::names;
use l3agent_rtnl::netns::{self, Netns, NetnsError};
use l3agent_testkit::{TestNs, BACKENDS};
use l3agent_types::{IfName, NetnsName, RouterId};
use serde_json::json;

/// A named namespace of our own (`qrouter-<id>`, `snat-<id>`), deleted on drop.
struct Named(NetnsName);

impl Named {
    fn new(name: String) -> Named {
        let n = NetnsName::new("test", &name).unwrap();
        netns::create(&n).unwrap();
        let ns = Named(n);
        ns.ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }
    fn ok(&self, argv: &[&str]) {
        let mut full = vec!["ip", "netns", "exec", self.0.as_str()];
        full.extend_from_slice(argv);
        l3agent_testkit::ok(&full);
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        let _ = netns::delete(&self.0);
    }
}

/// A veth `dev` in `ns` with `addr`, its peer `peer` in `ext` with `ext_addr`.
fn wire(ns: &Named, dev: &str, addr: &str, ext: &TestNs, peer: &str, ext_addr: &str) {
    ns.ok(&[
        "ip", "link", "add", dev, "type", "veth", "peer", "name", peer, "netns", &ext.name,
    ]);
    ns.ok(&["ip", "addr", "add", addr, "dev", dev]);
    ns.ok(&["ip", "link", "set", dev, "up"]);
    ext.ok(&["ip", "addr", "add", ext_addr, "dev", peer]);
    ext.ok(&["ip", "link", "set", peer, "up"]);
}

/// `rules` restored (`--noflush`) into `ns` with `iptables-<backend>-restore`, as the agent
/// would write them (a fixture process, started inside).
fn restore(ns: &NetnsName, backend: &str, rules: &str) {
    Netns::open(ns)
        .unwrap()
        .run::<_, NetnsError>(|| {
            use std::io::Write;
            #[allow(clippy::disallowed_methods)] // a fixture sets the scene
            let mut c = std::process::Command::new(format!("iptables-{backend}-restore"))
                .arg("--noflush")
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            c.stdin.take().unwrap().write_all(rules.as_bytes()).unwrap();
            assert!(
                c.wait().unwrap().success(),
                "{backend}: restore of\n{rules}"
            );
        })
        .unwrap();
}

fn read_with(backend: Backend, t: &Target) -> Option<Readings> {
    let seen = KernelTraffic::new(backend).read(t).unwrap()?;
    let mut out = Readings::default();
    interpret(t, &seen, &mut out);
    Some(out)
}

fn read(t: &Target) -> Option<Readings> {
    read_with(Backend::Nft, t)
}

/// A router id unique to this test process and call.
fn unique_id(prefix: &str) -> String {
    format!(
        "{prefix}-{:04x}-4000-8000-{:012x}",
        std::process::id() & 0xffff,
        l3agent_testkit::unique()
    )
}

fn get(r: &Readings, id: &str, dir: Direction) -> TrafficReading {
    r.routers
        .get(&(id.to_owned(), dir))
        .copied()
        .unwrap_or_else(|| panic!("no {dir:?} reading of {id}: {r:#?}"))
}

#[test]
fn a_distributed_routers_rfp_and_snat_gateway_are_summed_and_its_floating_ip_read_in_qrouter() {
    l3agent_testkit::require_kernel();
    let id = unique_id("7aff1c00");
    let router = RouterId::new("id", &id).unwrap();
    let rfp = names::device("rfp-", &id);
    let qg = IfName::new("dev", "qg-7aff1c00-00").unwrap();
    let ext = TestNs::new("tk-ext");
    let qrouter = Named::new(format!("qrouter-{id}"));
    let target = Target {
        router: router.clone(),
        router_ns: names::router_ns(&router),
        devices: vec![
            (names::router_ns(&router), rfp.clone()),
            (names::snat_ns(&router), qg.clone()),
        ],
        fips: vec![(Ipv4Addr::new(198, 51, 100, 9), Ipv4Addr::new(192, 0, 2, 10))],
        accounting: false,
    };
    wire(
        &qrouter,
        rfp.as_str(),
        "198.51.100.2/24",
        &ext,
        "fpr0",
        "198.51.100.1/24",
    );
    qrouter.ok(&["ip", "addr", "add", "192.0.2.10/32", "dev", "lo"]);
    let rules = format!(
        "*nat\n:neutron-l3-agent-PREROUTING - [0:0]\n:neutron-l3-agent-float-snat - [0:0]\n\
         -A PREROUTING -j neutron-l3-agent-PREROUTING\n\
         -A neutron-l3-agent-PREROUTING -d 198.51.100.9/32 -i {rfp} -j DNAT --to-destination 192.0.2.10\n\
         COMMIT\n"
    );
    restore(&qrouter.0, "nft", &rules);
    ext.ok(&[
        "ip",
        "route",
        "add",
        "198.51.100.9/32",
        "via",
        "198.51.100.2",
    ]);

    // No snat- namespace on this host (a dvr compute node): the rfp- end alone.
    let before = read(&target).expect("qrouter- exists");
    let ping = |to: &str, n: &str| {
        let out = ext.run(&[
            "ping", "-n", "-q", "-c", n, "-i", "0.05", "-s", "200", "-W", "2", to,
        ]);
        assert!(
            out.stdout.contains(&format!("{n} received")),
            "{}{}",
            out.stdout,
            out.stderr
        );
    };
    ping("198.51.100.2", "10");
    // 3 connections to the floating IP, in through rfp-.
    ext.inside(|| {
        for _ in 0..3 {
            let s = UdpSocket::bind(("198.51.100.1", 0)).unwrap();
            s.send_to(&[0; 100], ("198.51.100.9", 9)).unwrap();
        }
    });
    let after = read(&target).unwrap();
    let rx = |r: &Readings| get(r, &id, Direction::Ingress);
    let tx = |r: &Readings| get(r, &id, Direction::Egress);
    assert!(rx(&after).bytes - rx(&before).bytes >= 10 * 228 + 3 * 128);
    assert!(rx(&after).packets - rx(&before).packets >= 13);
    assert!(tx(&after).bytes - tx(&before).bytes >= 10 * 228);
    let fip_in = after
        .floating_ips
        .get(&("198.51.100.9".parse().unwrap(), Direction::Ingress))
        .copied()
        .unwrap_or_else(|| panic!("no floating IP reading: {after:#?}"));
    assert_eq!((fip_in.packets, fip_in.bytes), (3, 3 * 128));
    // No SNAT rule for it here: no egress series.
    assert!(!after
        .floating_ips
        .contains_key(&("198.51.100.9".parse().unwrap(), Direction::Egress)));

    // The dvr_snat host: the snat- gateway adds its own traffic.
    let snat = Named::new(format!("snat-{id}"));
    wire(
        &snat,
        qg.as_str(),
        "203.0.113.4/24",
        &ext,
        "qg-peer",
        "203.0.113.1/24",
    );
    let before = read(&target).unwrap();
    ping("203.0.113.4", "5");
    ping("198.51.100.2", "5");
    let after = read(&target).unwrap();
    assert!(rx(&after).bytes - rx(&before).bytes >= 10 * 228);
    assert!(tx(&after).packets - tx(&before).packets >= 10);

    // The router's namespace gone: nothing to read, not an error.
    drop(snat);
    drop(qrouter);
    assert_eq!(read(&target), None);
}

/// Neutron's legacy example router as `id` on a legacy agent, with
/// `agent.traffic_accounting` set to `accounting`.
fn legacy_config(id: &str, accounting: bool) -> HostConfig {
    let mut r: serde_json::Value = serde_json::from_str(include_str!(
        "../../router/tests/data/neutron-router-legacy.json"
    ))
    .unwrap();
    r["id"] = id.into();
    let doc: ConfigDoc = serde_json::from_value(json!({
        "agent": {"mode": "legacy", "host": "host-a", "state_path": "/nonexistent",
            "bridges": {
                "90e4912c-0eb8-4be4-a793-e6a3bba6ae8b": "br-t1",
                "c6910e18-fb1f-4988-9af4-211a8c2e2926": "br-t2",
                "65566f91-133a-44ff-87f5-ecffc1193d3d": "br-ex"},
            "traffic_accounting": accounting},
        "routers": [r],
    }))
    .unwrap();
    doc.validate().map_err(|e| format!("{e:?}")).unwrap()
}

/// The example's floating IP (its fixed address is 192.0.2.10).
const FIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
/// Pings each way: one connection each, many packets.
const PINGS: u64 = 20;
/// ICMP payload of the pings: 20 + 8 + 200 = 228 bytes of IP packet each.
const PING_BYTES: u64 = 228;

/// `PINGS` pings of `to` from `from` (one ICMP connection), all answered.
fn pings(from: &TestNs, to: &str) {
    let n = PINGS.to_string();
    let out = from.run(&[
        "ping", "-n", "-q", "-c", &n, "-i", "0.01", "-s", "200", "-W", "2", to,
    ]);
    assert!(
        out.stdout.contains(&format!("{n} received")),
        "{}{}",
        out.stdout,
        out.stderr
    );
}

/// One backend, one mode: the legacy example's `qrouter-` with the rules compile writes, an
/// external namespace on `qg-`, a VM with the fixed address on `qr-`, pings from outside to
/// the floating IP and from the VM out; the floating IP's counters before and after.
fn one_floating_ip(backend: &str, accounting: bool) {
    let id = unique_id("7aff1c01");
    let cfg = legacy_config(&id, accounting);
    let target = targets(&cfg).remove(0);
    assert_eq!(target.accounting, accounting);
    let spec = compile(&cfg, &Allocations::default(), &HostFacts::default());
    let rules = restore_text(&spec.namespaces[&target.router_ns].iptables, Family::V4);
    assert_eq!(
        rules.contains("-A neutron-l3-agent-fip-acct"),
        accounting,
        "{rules}"
    );

    let ext = TestNs::new("tk-ext");
    let vm = TestNs::new("tk-vm");
    let qrouter = Named::new(format!("qrouter-{id}"));
    qrouter.ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    wire(
        &qrouter,
        "qg-184a6791-c4",
        "203.0.113.4/24",
        &ext,
        "eth0",
        "203.0.113.1/24",
    );
    qrouter.ok(&[
        "ip",
        "addr",
        "add",
        "203.0.113.2/32",
        "dev",
        "qg-184a6791-c4",
    ]);
    wire(
        &qrouter,
        "qr-081ed401-2a",
        "192.0.2.4/24",
        &vm,
        "eth0",
        "192.0.2.10/24",
    );
    vm.ok(&["ip", "route", "add", "default", "via", "192.0.2.4"]);
    restore(&qrouter.0, backend, &rules);

    let b = match backend {
        "nft" => Backend::Nft,
        _ => Backend::Legacy,
    };
    let reading = |r: &Readings, dir: Direction| {
        r.floating_ips
            .get(&(FIP.into(), dir))
            .copied()
            .unwrap_or_else(|| panic!("{backend}: no {dir:?} reading of {FIP}: {r:#?}"))
    };
    let before = read_with(b, &target).expect("qrouter- exists");
    // In to the floating IP (DNAT) and its replies out; out from the VM (SNAT) and the
    // replies in: two connections, PINGS packets each way of each.
    pings(&ext, &FIP.to_string());
    pings(&vm, "203.0.113.1");
    let after = read_with(b, &target).unwrap();
    for dir in [Direction::Ingress, Direction::Egress] {
        let (a, b) = (reading(&after, dir), reading(&before, dir));
        let moved = (a.packets - b.packets, a.bytes - b.bytes);
        if accounting {
            // Every packet of both connections (nothing else crosses the router).
            assert_eq!(
                moved,
                (2 * PINGS, 2 * PINGS * PING_BYTES),
                "{backend}: {dir:?} with accounting"
            );
        } else {
            // The NAT rule sees the first packet of its one connection.
            assert_eq!(
                moved,
                (1, PING_BYTES),
                "{backend}: {dir:?} without accounting"
            );
        }
    }
}

#[test]
fn with_accounting_a_floating_ip_counts_every_packet_and_without_it_connections_on_both_backends() {
    l3agent_testkit::require_kernel();
    for backend in BACKENDS {
        for accounting in [true, false] {
            one_floating_ip(backend, accounting);
        }
    }
}
