//! Rule counters read in-process ([`rule_counters::read`]) against the real kernel, for both
//! backends, in throwaway namespaces: a "router" namespace holding a floating IP's NAT rules
//! (as l3agent writes them) and an "external" one on a veth. Known traffic is sent through
//! the rules from in-process sockets, and what is read must be exactly what the kernel
//! counted — the same numbers `iptables-save -c` prints.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};

use l3agent_iptables_exec::rule_counters::{self, RuleCounter};
use l3agent_iptables_exec::Backend;
use l3agent_testkit::{TestNs, BACKENDS};

const PREROUTING: &str = "neutron-l3-agent-PREROUTING";
const FLOAT_SNAT: &str = "neutron-l3-agent-float-snat";
const FIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const FIXED: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
/// UDP payload of every test datagram: each is 20 + 8 + 100 = 128 bytes of IP packet.
const PAYLOAD: usize = 100;
const PACKET: u64 = 128;

const RULES: &str = "*nat
:neutron-l3-agent-PREROUTING - [0:0]
:neutron-l3-agent-float-snat - [0:0]
-I PREROUTING 1 -j neutron-l3-agent-PREROUTING
-A POSTROUTING -j neutron-l3-agent-float-snat
-A neutron-l3-agent-PREROUTING -d 203.0.113.2/32 -j DNAT --to-destination 192.0.2.10
-A neutron-l3-agent-PREROUTING -d 203.0.113.3/32 -i rfp-1234 -j DNAT --to-destination 192.0.2.11
-A neutron-l3-agent-PREROUTING -d 203.0.113.0/24 -j ACCEPT
-A neutron-l3-agent-float-snat -s 192.0.2.10/32 -j SNAT --to-source 203.0.113.2
COMMIT
";

/// A router namespace with [`RULES`] on `backend`, the floating IP on its `qg0`, the fixed
/// address on its `lo`, and an external namespace at 203.0.113.1 on the other end.
fn scene(backend: &str) -> (TestNs, TestNs) {
    let r = TestNs::new(&format!("rc-r-{backend}"));
    let x = TestNs::new(&format!("rc-x-{backend}"));
    r.ok(&[
        "ip", "link", "add", "qg0", "type", "veth", "peer", "name", "eth0", "netns", &x.name,
    ]);
    r.ok(&["ip", "addr", "add", "203.0.113.4/24", "dev", "qg0"]);
    r.ok(&["ip", "addr", "add", "203.0.113.2/32", "dev", "qg0"]);
    r.ok(&["ip", "addr", "add", "192.0.2.10/32", "dev", "lo"]);
    r.ok(&["ip", "link", "set", "qg0", "up"]);
    x.ok(&["ip", "addr", "add", "203.0.113.1/24", "dev", "eth0"]);
    x.ok(&["ip", "link", "set", "eth0", "up"]);
    r.restore(backend, false, RULES);
    (r, x)
}

fn backend(name: &str) -> Backend {
    match name {
        "nft" => Backend::Nft,
        _ => Backend::Legacy,
    }
}

fn read(ns: &TestNs, backend: Backend) -> Vec<RuleCounter> {
    ns.inside(move || rule_counters::read(backend, "nat", &[PREROUTING, FLOAT_SNAT]))
        .unwrap()
}

/// `n` datagrams from `from`, each from a socket of its own (a new source port: a new
/// connection, which the nat table sees).
fn connections(ns: &TestNs, from: Ipv4Addr, to: SocketAddr, n: usize) {
    ns.inside(move || {
        for _ in 0..n {
            let s = UdpSocket::bind((from, 0)).unwrap();
            s.send_to(&[0x5a; PAYLOAD], to).unwrap();
        }
    });
}

fn find<'a>(
    rules: &'a [RuleCounter],
    chain: &str,
    f: impl Fn(&RuleCounter) -> bool,
) -> &'a RuleCounter {
    rules
        .iter()
        .find(|r| r.chain == chain && f(r))
        .unwrap_or_else(|| panic!("no such rule in {chain}: {rules:#?}"))
}

/// `[packets:bytes]` of the first save line containing all of `parts`.
fn saved(ns: &TestNs, backend: &str, parts: &[&str]) -> (u64, u64) {
    let prog = format!("iptables-{backend}-save");
    let text = ns.ok(&[&prog, "-c", "-t", "nat"]);
    let line = text
        .lines()
        .find(|l| parts.iter().all(|p| l.contains(p)))
        .unwrap_or_else(|| panic!("no {parts:?} in\n{text}"));
    let c = line.trim_start_matches('[').split(']').next().unwrap();
    let (p, b) = c.split_once(':').unwrap();
    (p.parse().unwrap(), b.parse().unwrap())
}

#[test]
fn known_connections_through_a_floating_ips_nat_rules_are_read_exactly_on_both_backends() {
    l3agent_testkit::require_kernel();
    for name in BACKENDS {
        let b = backend(name);
        let (r, x) = scene(name);
        let before = read(&r, b);
        // The rules as written, nothing counted yet; jumps name their chain, ranges are not
        // taken for addresses.
        let dnat = find(&before, PREROUTING, |r| r.destination == Some(FIP));
        assert_eq!(
            (dnat.target.as_deref(), dnat.packets, dnat.bytes),
            (Some("DNAT"), 0, 0),
            "{name}"
        );
        let other = find(&before, PREROUTING, |r| {
            r.target.as_deref() == Some("ACCEPT")
        });
        assert_eq!(other.destination, None, "{name}: a /24 is not an address");
        assert_eq!(
            before.iter().filter(|r| r.chain == PREROUTING).count(),
            3,
            "{name}: {before:#?}"
        );
        let snat = find(&before, FLOAT_SNAT, |r| r.source == Some(FIXED));
        assert_eq!((snat.target.as_deref(), snat.packets), (Some("SNAT"), 0));

        // In: 7 connections to the floating IP. Out: 5 from the fixed address.
        connections(&x, "203.0.113.1".parse().unwrap(), (FIP, 9).into(), 7);
        connections(&r, FIXED, "203.0.113.1:9".parse().unwrap(), 5);
        let after = read(&r, b);
        let dnat = find(&after, PREROUTING, |r| r.destination == Some(FIP));
        assert_eq!((dnat.packets, dnat.bytes), (7, 7 * PACKET), "{name}");
        let snat = find(&after, FLOAT_SNAT, |r| r.source == Some(FIXED));
        assert_eq!((snat.packets, snat.bytes), (5, 5 * PACKET), "{name}");
        // What iptables-save -c says.
        assert_eq!(
            saved(&r, name, &["-d 203.0.113.2/32", "DNAT"]),
            (dnat.packets, dnat.bytes),
            "{name}"
        );
        assert_eq!(
            saved(&r, name, &["-s 192.0.2.10/32", "SNAT"]),
            (snat.packets, snat.bytes),
            "{name}"
        );

        // One connection of many packets is counted once: the nat table sees the first
        // packet of a connection only.
        x.inside(|| {
            let s = UdpSocket::bind(("203.0.113.1", 0)).unwrap();
            for _ in 0..10 {
                s.send_to(&[0x5a; PAYLOAD], (FIP, 9)).unwrap();
            }
        });
        let later = read(&r, b);
        let dnat = find(&later, PREROUTING, |r| r.destination == Some(FIP));
        assert_eq!(dnat.packets, 8, "{name}: one flow, one count");
    }
}

#[test]
fn a_namespace_without_the_table_or_the_chains_has_no_rule_counters() {
    l3agent_testkit::require_kernel();
    let empty = TestNs::new("rc-empty");
    // nf_tables: no table at all, then a table without our chains.
    assert!(read(&empty, Backend::Nft).is_empty());
    empty.restore("nft", false, "*nat\n:other - [0:0]\nCOMMIT\n");
    assert!(read(&empty, Backend::Nft).is_empty());
    let legacy = TestNs::new("rc-empty-legacy");
    legacy.restore("legacy", false, "*nat\n:other - [0:0]\nCOMMIT\n");
    assert!(read(&legacy, Backend::Legacy).is_empty());
}
