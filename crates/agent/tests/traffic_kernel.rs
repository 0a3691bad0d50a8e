//! The agent's traffic reader ([`KernelTraffic`]) against the real kernel, with a distributed
//! router's layout (the legacy one is covered end to end by `crates/l3agent/tests/traffic.rs`):
//! its `rfp-` end in `qrouter-<id>` and its gateway `qg-` in `snat-<id>`, both veths to an
//! "external" namespace, and a floating IP's DNAT rule in `qrouter-`. Known pings and
//! connections go through; what is read must have moved by at least that.

use std::net::{Ipv4Addr, UdpSocket};

use l3agent_agent::metrics::{Direction, TrafficReading};
use l3agent_agent::traffic::{interpret, KernelTraffic, Readings, Target, TrafficSource};
use l3agent_iptables_exec::Backend;
use l3agent_router::spec::names;
use l3agent_rtnl::netns::{self, Netns, NetnsError};
use l3agent_testkit::TestNs;
use l3agent_types::{IfName, NetnsName, RouterId};

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

fn read(t: &Target) -> Option<Readings> {
    let seen = KernelTraffic::new(Backend::Nft).read(t).unwrap()?;
    let mut out = Readings::default();
    interpret(t, &seen, &mut out);
    Some(out)
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
    let id = format!(
        "7aff1c00-{:04x}-4000-8000-{:012x}",
        std::process::id() & 0xffff,
        l3agent_testkit::unique()
    );
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
    // The rules as iptables-nft writes them (a fixture process, started inside).
    Netns::open(&qrouter.0)
        .unwrap()
        .run::<_, NetnsError>(|| {
            use std::io::Write;
            #[allow(clippy::disallowed_methods)] // a fixture sets the scene
            let mut c = std::process::Command::new("iptables-nft-restore")
                .arg("--noflush")
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            c.stdin.take().unwrap().write_all(rules.as_bytes()).unwrap();
            assert!(c.wait().unwrap().success());
        })
        .unwrap();
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
