//! The plumbing against the real kernel, in throwaway namespaces, checked against what
//! `ip -j` reports. Every ensure-style operation runs twice (idempotency) and every failure
//! path is checked for its typed error and for leaving nothing behind.

use std::net::IpAddr;

use ipnet::IpNet;
use l3agent_rtnl::netns::NetnsError;
use l3agent_rtnl::prelude::*;
use l3agent_rtnl::route::{Route, MAIN_TABLE};
use l3agent_rtnl::rule::Rule;
use l3agent_rtnl::sysctl::{self, Scope, Sysctl};
use l3agent_rtnl::{netns, Error, Netns, Rtnl};
use l3agent_testkit::{ok, TestNs};
use l3agent_types::{IfName, NetnsName};
use serde_json::Value;

fn name(s: &str) -> IfName {
    IfName::new("test", s).unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn json(ns: &TestNs, args: &[&str]) -> Value {
    let mut argv = vec!["ip", "-j", "-n", &ns.name];
    argv.extend_from_slice(args);
    serde_json::from_str(&ok(&argv)).unwrap()
}

fn open(ns: &TestNs) -> (Netns, Rtnl) {
    let n = Netns::open(&NetnsName::new("ns", &ns.name).unwrap()).unwrap();
    let r = Rtnl::open(&n).unwrap();
    (n, r)
}

/// Deletes a namespace made with `ip netns add`, also on panic.
struct IpNs(NetnsName);
impl Drop for IpNs {
    fn drop(&mut self) {
        let _ = l3agent_testkit::sh(&["ip", "netns", "del", self.0.as_str()]);
    }
}

/// Deletes a namespace made with our own `create`, also on panic.
struct OurNs(NetnsName);
impl Drop for OurNs {
    fn drop(&mut self) {
        let _ = netns::delete(&self.0);
    }
}

#[test]
fn namespaces_are_iproute2_compatible() {
    l3agent_testkit::require_kernel();
    let n = NetnsName::new("ns", &format!("l3t-{}-own", std::process::id())).unwrap();
    let _guard = OurNs(n.clone());
    assert!(netns::create(&n).unwrap());
    assert!(!netns::create(&n).unwrap(), "second create must be a no-op");
    assert!(netns::exists(&n));
    assert!(ok(&["ip", "netns", "list"])
        .lines()
        .any(|l| l.split(' ').next() == Some(n.as_str())));
    // ip sees a fresh namespace: only lo, down.
    let links = ok(&["ip", "-n", n.as_str(), "-j", "link"]);
    let v: Value = serde_json::from_str(&links).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1, "{links}");
    // We see theirs (made by `ip netns add`).
    let ours = NetnsName::new("ns", &format!("l3t-{}-theirs", std::process::id())).unwrap();
    let _theirs = IpNs(ours.clone());
    ok(&["ip", "netns", "add", ours.as_str()]);
    assert!(netns::exists(&ours));
    assert!(netns::list().unwrap().contains(&ours) && netns::list().unwrap().contains(&n));
    assert!(netns::delete(&n).unwrap());
    assert!(!netns::delete(&n).unwrap());
    assert!(!netns::exists(&n));
    assert!(!ok(&["ip", "netns", "list"]).contains(n.as_str()));
    assert!(matches!(Netns::open(&n), Err(NetnsError::NoNamespace(_))));
    // In rtnl's error type, still "no namespace".
    let e: Error = Netns::open(&n).unwrap_err().into();
    assert!(matches!(e, Error::NoNamespace(_)), "{e}");
}

#[test]
fn veth_pair_into_another_namespace() {
    let a = TestNs::new("va");
    let b = TestNs::new("vb");
    let (_na, mut ra) = open(&a);
    let nb = Netns::open(&NetnsName::new("ns", &b.name).unwrap()).unwrap();
    let (qr, tap) = (name("qr-1a2b3c4d-5e"), name("tap-1a2b3c4d"));
    ra.add_veth(&qr, &tap, Some(nb.fd()), Some(1450)).unwrap();
    let e = ra.add_veth(&qr, &tap, Some(nb.fd()), None).unwrap_err();
    assert!(e.is_exists(), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("qr-1a2b3c4d-5e") && msg.contains(&a.name) && msg.contains("File exists"),
        "{msg}"
    );
    let l = &json(&a, &["link", "show", "qr-1a2b3c4d-5e"])[0];
    assert_eq!(l["mtu"], 1450);
    assert!(ok(&["ip", "-n", &a.name, "-d", "link", "show", "qr-1a2b3c4d-5e"]).contains("veth"));
    assert!(
        a.run(&["ip", "link", "show", "tap-1a2b3c4d"]).code != Some(0),
        "peer must not be in the first namespace"
    );
    assert_eq!(json(&b, &["link", "show", "tap-1a2b3c4d"])[0]["mtu"], 1450);
    for _ in 0..2 {
        ra.set_up(&qr, true).unwrap();
        ra.set_mtu(&qr, 1400).unwrap();
        ra.set_mac(&qr, [0xfa, 0x16, 0x3e, 0, 0, 1]).unwrap();
    }
    let l = &json(&a, &["link", "show", "qr-1a2b3c4d-5e"])[0];
    assert_eq!(l["mtu"], 1400);
    assert_eq!(l["address"], "fa:16:3e:00:00:01");
    assert!(l["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    let ours = ra.link(&qr).unwrap().unwrap();
    assert_eq!(
        (ours.kind.as_deref(), ours.mtu, ours.up),
        (Some("veth"), 1400, true)
    );
    // Invalid MTU: a typed kernel error naming the device; nothing changed.
    let e = ra.set_mtu(&qr, 10).unwrap_err();
    assert_eq!(e.errno(), Some(nix::errno::Errno::EINVAL as i32), "{e}");
    assert!(e.to_string().contains("qr-1a2b3c4d-5e mtu 10"), "{e}");
    assert_eq!(
        json(&a, &["link", "show", "qr-1a2b3c4d-5e"])[0]["mtu"],
        1400
    );
    // Missing device.
    let e = ra.set_up(&name("nope0"), true).unwrap_err();
    assert!(
        matches!(e, Error::NoDevice { .. }) && e.to_string().contains("nope0"),
        "{e}"
    );
    // Delete removes both ends.
    assert!(ra.delete_link(&qr).unwrap());
    assert!(!ra.delete_link(&qr).unwrap());
    assert!(b.run(&["ip", "link", "show", "tap-1a2b3c4d"]).code != Some(0));
}

#[test]
fn bridges_and_ports() {
    let a = TestNs::new("br");
    let (_n, mut r) = open(&a);
    let (br, port, peer) = (name("brq-test"), name("tap-a"), name("tap-b"));
    r.add_bridge(&br).unwrap();
    r.add_veth(&port, &peer, None, None).unwrap();
    r.set_master(&port, &br).unwrap();
    r.set_master(&port, &br).unwrap();
    let l = &json(&a, &["link", "show", "tap-a"])[0];
    assert_eq!(l["master"], "brq-test");
    let links = r.links().unwrap();
    let bridge = links.iter().find(|l| l.name == "brq-test").unwrap();
    assert_eq!(bridge.kind.as_deref(), Some("bridge"));
    assert_eq!(
        links.iter().find(|l| l.name == "tap-a").unwrap().master,
        Some(bridge.index)
    );
}

#[test]
fn addresses_converge_and_preserve() {
    let a = TestNs::new("addr");
    let (_n, mut r) = open(&a);
    let (d, p) = (name("qg-test"), name("qg-peer"));
    r.add_veth(&d, &p, None, None).unwrap();
    r.set_up(&d, true).unwrap();
    r.add_address(&d, net("203.0.113.10/24"), true).unwrap();
    let e = r.add_address(&d, net("203.0.113.10/24"), true).unwrap_err();
    assert!(e.is_exists(), "{e}");
    r.add_address(&d, net("2001:db8::10/64"), false).unwrap();
    let info = &json(&a, &["addr", "show", "qg-test"])[0]["addr_info"];
    let v4 = info
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["family"] == "inet")
        .unwrap();
    assert_eq!(
        (
            v4["local"].as_str(),
            v4["prefixlen"].as_u64(),
            v4["broadcast"].as_str()
        ),
        (Some("203.0.113.10"), Some(24), Some("203.0.113.255"))
    );
    assert!(info
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["local"] == "2001:db8::10"));
    // Converge: the FIP /32 is preserved, 203.0.113.10 removed, 203.0.113.11 added; twice.
    r.add_address(&d, net("203.0.113.50/32"), false).unwrap();
    let wanted = [net("203.0.113.11/24"), net("2001:db8::10/64")];
    let c = r
        .converge_addresses(&d, &wanted, &[net("203.0.113.50/32")])
        .unwrap();
    assert_eq!(c.added, vec![net("203.0.113.11/24")]);
    assert_eq!(c.removed, vec![net("203.0.113.10/24")]);
    assert_eq!(
        r.converge_addresses(&d, &wanted, &[net("203.0.113.50/32")])
            .unwrap(),
        Default::default()
    );
    let have: Vec<IpNet> = r
        .addresses(Some(&d))
        .unwrap()
        .into_iter()
        .map(|a| a.net)
        .collect();
    for x in ["203.0.113.11/24", "203.0.113.50/32", "2001:db8::10/64"] {
        assert!(have.contains(&net(x)), "{x} missing from {have:?}");
    }
    assert!(!have.contains(&net("203.0.113.10/24")));
}

#[test]
fn routes_in_tables() {
    let a = TestNs::new("rt");
    let (_n, mut r) = open(&a);
    let (d, p) = (name("rfp-test"), name("fpr-test"));
    r.add_veth(&d, &p, None, None).unwrap();
    r.set_up(&d, true).unwrap();
    r.add_address(&d, net("169.254.106.114/31"), false).unwrap();
    r.add_address(&d, net("2001:db8:1::1/64"), false).unwrap();
    let default16 = Route {
        gateway: Some("169.254.106.115".parse().unwrap()),
        dev: Some(d.clone()),
        table: 16,
        ..Route::to(net("0.0.0.0/0"))
    };
    let onlink = Route {
        dev: Some(d.clone()),
        scope_link: true,
        ..Route::to(net("198.51.100.0/24"))
    };
    let v6 = Route {
        gateway: Some("2001:db8:1::2".parse().unwrap()),
        dev: Some(d.clone()),
        ..Route::to(net("2001:db8:2::/64"))
    };
    for _ in 0..2 {
        r.replace_route(&default16).unwrap();
        r.replace_route(&onlink).unwrap();
        r.replace_route(&v6).unwrap();
    }
    let t16 = json(&a, &["route", "show", "table", "16"]);
    assert_eq!(t16.as_array().unwrap().len(), 1, "{t16}");
    assert_eq!(
        (
            t16[0]["dst"].as_str(),
            t16[0]["gateway"].as_str(),
            t16[0]["dev"].as_str()
        ),
        (Some("default"), Some("169.254.106.115"), Some("rfp-test"))
    );
    let main = json(&a, &["route", "show", "198.51.100.0/24"]);
    assert_eq!(main[0]["scope"], "link");
    assert_eq!(
        json(&a, &["-6", "route", "show", "2001:db8:2::/64"])[0]["gateway"],
        "2001:db8:1::2"
    );
    assert_eq!(r.routes(false, 16).unwrap(), vec![default16.clone()]);
    assert!(r.routes(false, MAIN_TABLE).unwrap().contains(&onlink));
    // A gateway of the wrong family is refused before the kernel sees it.
    let bad = Route {
        gateway: Some("2001:db8::1".parse().unwrap()),
        ..Route::to(net("0.0.0.0/0"))
    };
    assert!(matches!(r.replace_route(&bad), Err(Error::Value(_))));
    assert_eq!(r.flush_table(false, 16).unwrap(), 1);
    assert!(json(&a, &["route", "show", "table", "16"])
        .as_array()
        .unwrap()
        .is_empty());
    assert!(r.delete_route(&onlink).unwrap());
    assert!(!r.delete_route(&onlink).unwrap());
}

#[test]
fn policy_rules_match_exactly() {
    let a = TestNs::new("rule");
    let (_n, mut r) = open(&a);
    let fip = Rule {
        ipv6: false,
        from: Some(net("192.0.2.10/32")),
        to: None,
        iif: None,
        table: 16,
        priority: 32768,
    };
    let iif = Rule {
        ipv6: false,
        from: None,
        to: None,
        iif: Some(name("fpr-1a2b3c4d")),
        table: 2_852_022_899,
        priority: 2_852_022_899,
    };
    let v6 = Rule {
        ipv6: true,
        from: Some(net("2001:db8::/64")),
        to: Some(net("2001:db8:1::/64")),
        iif: None,
        table: 1000,
        priority: 1000,
    };
    assert!(r.add_rule(&fip).unwrap());
    assert!(
        !r.add_rule(&fip).unwrap(),
        "repeated add must not duplicate"
    );
    assert!(r.add_rule(&iif).unwrap());
    assert!(r.add_rule(&v6).unwrap());
    let rules = json(&a, &["rule", "show"]);
    let f = rules
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["priority"] == 32768)
        .unwrap();
    assert_eq!(
        (f["src"].as_str(), f["table"].as_str()),
        (Some("192.0.2.10"), Some("16"))
    );
    let i = rules
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["priority"] == 2_852_022_899u64)
        .unwrap();
    assert_eq!(i["iif"], "fpr-1a2b3c4d");
    assert_eq!(
        rules.as_array().unwrap().len(),
        5,
        "3 defaults + 2 ours: {rules}"
    );
    assert!(r.rules(true).unwrap().contains(&v6));
    assert!(r.delete_rule(&fip).unwrap());
    assert!(!r.delete_rule(&fip).unwrap());
    let bad = Rule {
        from: Some(net("2001:db8::/64")),
        ..fip
    };
    assert!(matches!(r.add_rule(&bad), Err(Error::Value(_))));
}

#[test]
fn permanent_neighbours() {
    let a = TestNs::new("neigh");
    let (_n, mut r) = open(&a);
    let (d, p) = (name("qr-neigh"), name("qr-npeer"));
    r.add_veth(&d, &p, None, None).unwrap();
    let ip: IpAddr = "192.0.2.20".parse().unwrap();
    let mac = [0xfa, 0x16, 0x3e, 0xaa, 0xbb, 0xcc];
    for _ in 0..2 {
        r.replace_neighbour(&d, ip, mac).unwrap();
    }
    let n = json(&a, &["neigh", "show", "dev", "qr-neigh"]);
    assert_eq!(n.as_array().unwrap().len(), 1, "{n}");
    assert_eq!(
        (n[0]["dst"].as_str(), n[0]["lladdr"].as_str()),
        (Some("192.0.2.20"), Some("fa:16:3e:aa:bb:cc"))
    );
    assert!(n[0]["state"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s == "PERMANENT"));
    let ours = r.neighbours(&d).unwrap();
    assert_eq!(
        (ours[0].ip, ours[0].mac, ours[0].permanent),
        (ip, Some(mac), true)
    );
    assert!(r.delete_neighbour(&d, ip).unwrap());
    assert!(!r.delete_neighbour(&d, ip).unwrap());
}

#[test]
fn sysctls_are_written_inside_the_namespace_only() {
    let a = TestNs::new("sys");
    let (n, mut r) = open(&a);
    let (d, p) = (name("fg-sys"), name("fg-speer"));
    r.add_veth(&d, &p, None, None).unwrap();
    let root_proxy = std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/proxy_arp").unwrap();
    let root_fwd = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let values = [
        (Sysctl::IpForward, 1),
        (Sysctl::Ipv6Forwarding(Scope::All), 1),
        (Sysctl::ProxyArp(Scope::Dev(d.clone())), 1),
        (Sysctl::ProxyDelay(d.clone()), 1),
        (Sysctl::IpNonlocalBind, 1),
        (Sysctl::SendRedirects(Scope::All), 0),
        (Sysctl::AcceptRa(Scope::Dev(d.clone())), 2),
        (Sysctl::PromoteSecondaries(Scope::All), 1),
        (Sysctl::ArpIgnore(Scope::All), 1),
        (Sysctl::ArpAnnounce(Scope::All), 2),
    ];
    for _ in 0..2 {
        sysctl::write(&n, &values).unwrap();
    }
    for (k, v) in &values {
        let seen = a.ok(&["sysctl", "-n", &k.name()]).trim().to_owned();
        assert_eq!(sysctl::read(&n, k).unwrap(), seen, "{}", k.name());
        // proxy_delay is stored in jiffies: 1 (1/100 s, Neutron's value) reads back rounded.
        if !matches!(k, Sysctl::ProxyDelay(_)) {
            assert_eq!(seen, v.to_string(), "{}", k.name());
        }
    }
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/proxy_arp").unwrap(),
        root_proxy
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        root_fwd
    );
    let e = sysctl::write(&n, &[(Sysctl::ProxyArp(Scope::Dev(name("nope0"))), 1)]).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("net.ipv4.conf.nope0.proxy_arp=1") && msg.contains(&a.name),
        "{msg}"
    );
}

#[test]
fn compound_port_undoes_itself_on_failure() {
    let host = TestNs::new("host");
    let router = TestNs::new("qrouter");
    let (_nh, mut rh) = open(&host);
    let (nr, mut rr) = open(&router);
    rh.add_bridge(&name("brq-ext")).unwrap();
    let mut port = l3agent_rtnl::port::VethPort {
        name: name("qg-1a2b3c4d-5e"),
        peer: name("tap1a2b3c4d-5e"),
        mtu: 10, // invalid: the kernel refuses it after the pair exists
        mac: Some([0xfa, 0x16, 0x3e, 1, 2, 3]),
        addresses: vec![net("203.0.113.10/24")],
        bridge: Some(name("brq-ext")),
    };
    let e = l3agent_rtnl::port::create_veth_port(&mut rh, &mut rr, &nr, &port).unwrap_err();
    assert!(e.to_string().contains("qg-1a2b3c4d-5e mtu 10"), "{e}");
    assert!(
        rh.link(&port.peer).unwrap().is_none(),
        "host end left behind"
    );
    assert!(
        rr.link(&port.name).unwrap().is_none(),
        "router end left behind"
    );
    port.mtu = 1450;
    l3agent_rtnl::port::create_veth_port(&mut rh, &mut rr, &nr, &port).unwrap();
    let l = &json(&router, &["addr", "show", "qg-1a2b3c4d-5e"])[0];
    assert_eq!(
        (l["mtu"].as_u64(), l["address"].as_str()),
        (Some(1450), Some("fa:16:3e:01:02:03"))
    );
    assert_eq!(l["addr_info"][0]["local"], "203.0.113.10");
    assert_eq!(
        json(&host, &["link", "show", "tap1a2b3c4d-5e"])[0]["master"],
        "brq-ext"
    );
}

#[test]
fn gratuitous_arp_reaches_the_peer() {
    let a = TestNs::new("garp-a");
    let b = TestNs::new("garp-b");
    let (na, mut ra) = open(&a);
    let (nb, mut rb) = open(&b);
    let (qg, ext) = (name("qg-garp"), name("ext-garp"));
    ra.add_veth(&qg, &ext, Some(nb.fd()), None).unwrap();
    ra.set_up(&qg, true).unwrap();
    rb.set_up(&ext, true).unwrap();
    ra.add_address(&qg, net("203.0.113.10/24"), true).unwrap();
    rb.add_address(&ext, net("203.0.113.1/24"), true).unwrap();
    // Let the peer learn from gratuitous ARP (Linux ignores unsolicited ARP by default).
    sysctl::write(&nb, &[(Sysctl::ArpAccept(Scope::Dev(ext.clone())), 1)]).unwrap();
    l3agent_rtnl::garp::send(&na, &mut ra, &qg, &["203.0.113.10".parse().unwrap()], 1).unwrap();
    let mac = l3agent_rtnl::link::format_mac(&ra.link(&qg).unwrap().unwrap().mac.unwrap());
    let mut seen = Value::Null;
    for _ in 0..50 {
        seen = json(&b, &["neigh", "show", "dev", "ext-garp"]);
        if seen.as_array().is_some_and(|n| {
            n.iter()
                .any(|e| e["dst"] == "203.0.113.10" && e["lladdr"] == mac.as_str())
        }) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("peer did not learn 203.0.113.10 -> {mac}: {seen}");
}

#[test]
fn conntrack_entries_of_an_address_are_deleted() {
    let a = TestNs::new("ct");
    let (n, mut r) = open(&a);
    let d = name("lo");
    r.add_address(&d, net("192.0.2.77/32"), false).unwrap();
    // Conntrack only tracks a namespace once a rule there needs it.
    a.ok(&[
        "iptables",
        "-A",
        "OUTPUT",
        "-m",
        "conntrack",
        "--ctstate",
        "NEW",
        "-j",
        "ACCEPT",
    ]);
    a.ok(&["ping", "-c", "1", "-W", "2", "192.0.2.77"]);
    assert!(a
        .ok(&["conntrack", "-L", "-d", "192.0.2.77"])
        .contains("192.0.2.77"));
    let deleted =
        l3agent_rtnl::conntrack::delete_entries(&n, "192.0.2.77".parse().unwrap()).unwrap();
    assert!(deleted >= 1, "{deleted}");
    assert!(!a
        .ok(&["conntrack", "-L", "-d", "192.0.2.77"])
        .contains("192.0.2.77"));
    assert_eq!(
        l3agent_rtnl::conntrack::delete_entries(&n, "192.0.2.77".parse().unwrap()).unwrap(),
        0
    );
}
