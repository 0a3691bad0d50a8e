//! Conntrack over ctnetlink against the real kernel: two throwaway namespaces joined by a
//! veth, real entries made with ping and TCP, everything checked against what the `conntrack`
//! program lists in the namespace. Addresses from 192.0.2.0/24 and 2001:db8::/64 only; nothing
//! touches the root network namespace.
//!
//! The "router" namespace (where conntrack is inspected) has `.1` and `.10`; the "peer" has
//! `.2` (plain), `.3` (reached through SNAT to `.10`: `.10` is then only the REPLY destination)
//! and `.4` (tracked in conntrack zone 5 by a raw-table CT rule).

use std::net::IpAddr;

use l3agent_rtnl::conntrack::{self, Entry};
use l3agent_rtnl::netns::NetnsError;
use l3agent_rtnl::Netns;
use l3agent_testkit::{tcp_probe, TestNs};
use l3agent_types::NetnsName;

/// Fails (never skips) when a tool the fixtures need is missing.
fn require_tools() {
    l3agent_testkit::require_kernel();
    let path = std::env::var("PATH").unwrap_or_default();
    for tool in ["conntrack", "ping", "python3"] {
        let found = path
            .split(':')
            .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
            .any(|d| std::path::Path::new(d).join(tool).exists());
        assert!(
            found,
            "{tool} is not installed: run scripts/install-deps.sh as root (it installs conntrack, iputils-ping and python3)"
        );
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The addresses of one family.
struct Plan {
    v6: bool,
    /// The router's address.
    router: IpAddr,
    /// The router's SNAT address (only ever a reply destination).
    snat_to: IpAddr,
    /// Peer address reached without NAT.
    plain: IpAddr,
    /// Peer address reached through SNAT.
    snat_dst: IpAddr,
    /// Peer address tracked in zone 5.
    zoned: IpAddr,
}

impl Plan {
    fn new(v6: bool) -> Plan {
        let a = |n: u8| {
            if v6 {
                ip(&format!("2001:db8::{n}"))
            } else {
                ip(&format!("192.0.2.{n}"))
            }
        };
        Plan {
            v6,
            router: a(1),
            snat_to: a(10),
            plain: a(2),
            snat_dst: a(3),
            zoned: a(4),
        }
    }

    fn family(&self) -> &'static str {
        if self.v6 {
            "ipv6"
        } else {
            "ipv4"
        }
    }
}

/// Two namespaces joined by a veth, with both families configured and conntrack active in the
/// router (conntrack only runs in a namespace once a rule needs it).
struct Topology {
    router: TestNs,
    peer: TestNs,
    netns: Netns,
}

fn topology(tag: &str) -> Topology {
    require_tools();
    let router = TestNs::new(&format!("{tag}r"));
    let peer = TestNs::new(&format!("{tag}p"));
    router.ok(&[
        "ip", "link", "add", "ct0", "type", "veth", "peer", "name", "ct1", "netns", &peer.name,
    ]);
    router.ok(&["ip", "link", "set", "ct0", "up"]);
    peer.ok(&["ip", "link", "set", "ct1", "up"]);
    for v6 in [false, true] {
        let p = Plan::new(v6);
        let (len, host) = if v6 { ("/64", "/128") } else { ("/24", "/32") };
        let add = |ns: &TestNs, dev: &str, a: String| {
            let mut argv = vec!["ip", "addr", "add", &a, "dev", dev];
            if v6 {
                argv.push("nodad");
            }
            ns.ok(&argv);
        };
        add(&router, "ct0", format!("{}{len}", p.router));
        // Deprecated in IPv6 (it still receives) so that unbound clients keep `::1` as source.
        let snat_to = format!("{}{host}", p.snat_to);
        let mut argv = vec!["ip", "addr", "add", &snat_to, "dev", "ct0"];
        if v6 {
            argv.extend(["nodad", "preferred_lft", "0"]);
        }
        router.ok(&argv);
        for a in [p.plain, p.snat_dst, p.zoned] {
            add(&peer, "ct1", format!("{a}{len}"));
        }
        let rules = format!(
            "*raw\n-A OUTPUT -d {zoned}{host} -j CT --zone 5\nCOMMIT\n\
             *nat\n-A POSTROUTING -s {r}{host} -d {snat_dst}{host} -o ct0 -j SNAT --to-source {to}\nCOMMIT\n\
             *filter\n-A OUTPUT -m conntrack --ctstate NEW,ESTABLISHED -j ACCEPT\nCOMMIT\n",
            zoned = p.zoned,
            r = p.router,
            snat_dst = p.snat_dst,
            to = p.snat_to,
        );
        router.restore("nft", v6, &rules);
    }
    let netns = Netns::open(&NetnsName::new("ns", &router.name).unwrap()).unwrap();
    Topology {
        router,
        peer,
        netns,
    }
}

impl Topology {
    fn ping(&self, p: &Plan, dst: IpAddr) {
        let (src, dst) = (p.router.to_string(), dst.to_string());
        let fam = if p.v6 { "-6" } else { "-4" };
        self.router
            .ok(&["ping", fam, "-c", "1", "-W", "2", "-I", &src, &dst]);
    }

    /// What `conntrack -L` prints in the router namespace (entries only).
    fn conntrack_l(&self, p: &Plan, args: &[&str]) -> String {
        let mut argv = vec!["conntrack", "-L", "-f", p.family()];
        argv.extend_from_slice(args);
        self.router.ok(&argv)
    }
}

fn find<'a>(entries: &'a [Entry], what: &str, f: impl Fn(&Entry) -> bool) -> &'a Entry {
    entries
        .iter()
        .find(|e| f(e))
        .unwrap_or_else(|| panic!("no {what} entry in {entries:#?}"))
}

/// entries() against the real table and `conntrack -L`, then delete_entries() for an original
/// destination, a reply-only destination and a zoned entry, each deleting exactly its entries.
fn lists_and_deletes(p: &Plan, t: &Topology) {
    let icmp = if p.v6 { 58 } else { 1 };
    t.ping(p, p.plain);
    t.ping(p, p.snat_dst);
    t.ping(p, p.zoned);
    let seen = tcp_probe(&t.peer, &t.router, &p.plain.to_string(), 8080).unwrap();
    assert_eq!(ip(&seen), p.router, "no NAT towards {}", p.plain);

    // entries(): what the kernel has, decoded.
    let listed = conntrack::entries(&t.netns, p.v6).unwrap();
    let text = t.conntrack_l(p, &[]);
    assert_eq!(
        listed.len(),
        text.lines().filter(|l| !l.trim().is_empty()).count(),
        "ours: {listed:#?}\nconntrack -L:\n{text}"
    );
    for e in &listed {
        assert_eq!(e.orig_src.is_ipv6(), p.v6, "family of {e}");
        for (s, d) in [(e.orig_src, e.orig_dst), (e.reply_src, e.reply_dst)] {
            assert!(
                text.contains(&format!("src={s} dst={d}")),
                "{e} not in conntrack -L:\n{text}"
            );
        }
    }
    let ping = find(&listed, "ping", |e| {
        e.protocol == icmp && e.orig_src == p.router && e.orig_dst == p.plain
    });
    assert_eq!((ping.reply_src, ping.reply_dst), (p.plain, p.router));
    assert_eq!((ping.orig_sport, ping.orig_dport), (None, None));
    assert_eq!(ping.zone, 0);
    let tcp = find(&listed, "tcp", |e| {
        e.protocol == 6 && e.orig_dst == p.plain && e.orig_dport == Some(8080)
    });
    assert_eq!(tcp.orig_src, p.router);
    assert_eq!((tcp.reply_src, tcp.reply_dst), (p.plain, p.router));
    assert_eq!(tcp.reply_sport, Some(8080));
    assert!(tcp.orig_sport.is_some() && tcp.reply_dport == tcp.orig_sport);
    let text_tcp = format!("sport={} dport=8080", tcp.orig_sport.unwrap_or_default());
    assert!(text.contains(&text_tcp), "{text_tcp} not in:\n{text}");
    let snat = find(&listed, "SNAT", |e| e.orig_dst == p.snat_dst);
    assert_eq!(
        (snat.protocol, snat.orig_src, snat.reply_src, snat.reply_dst),
        (icmp, p.router, p.snat_dst, p.snat_to),
        "SNAT entry: the SNAT address is only the reply destination"
    );
    let zoned = find(&listed, "zoned", |e| e.orig_dst == p.zoned);
    assert_eq!(zoned.zone, 5);
    let untouched = |gone: &[IpAddr]| -> Vec<Entry> {
        listed
            .iter()
            .filter(|e| !gone.contains(&e.orig_dst) && !gone.contains(&e.reply_dst))
            .cloned()
            .collect()
    };

    // conntrack -D -d PLAIN; conntrack -D -q PLAIN: the ping and every TCP entry, nothing else.
    let expected = listed
        .iter()
        .filter(|e| e.orig_dst == p.plain || e.reply_dst == p.plain)
        .count() as u64;
    assert!(expected >= 2, "{listed:#?}");
    assert_eq!(
        conntrack::delete_entries(&t.netns, p.plain).unwrap(),
        expected
    );
    let plain = p.plain.to_string();
    assert_eq!(t.conntrack_l(p, &["-d", &plain]), "", "-d {plain} left");
    assert_eq!(t.conntrack_l(p, &["-q", &plain]), "", "-q {plain} left");
    assert_eq!(
        conntrack::entries(&t.netns, p.v6).unwrap(),
        untouched(&[p.plain]),
        "only the entries of {plain} are gone"
    );
    assert_eq!(
        conntrack::delete_entries(&t.netns, p.plain).unwrap(),
        0,
        "second call"
    );

    // The SNAT address is only a reply destination (conntrack -D -q).
    let to = p.snat_to.to_string();
    assert_ne!(t.conntrack_l(p, &["-q", &to]), "");
    assert_eq!(conntrack::delete_entries(&t.netns, p.snat_to).unwrap(), 1);
    assert_eq!(t.conntrack_l(p, &["-q", &to]), "", "-q {to} left");
    assert_eq!(conntrack::delete_entries(&t.netns, p.snat_to).unwrap(), 0);

    // An entry in zone 5 is deleted in its zone (CTA_ZONE is sent back).
    assert_eq!(conntrack::delete_entries(&t.netns, p.zoned).unwrap(), 1);
    assert_eq!(
        t.conntrack_l(p, &["-d", &p.zoned.to_string()]),
        "",
        "zoned entry left"
    );
    assert_eq!(conntrack::delete_entries(&t.netns, p.zoned).unwrap(), 0);
    assert_eq!(
        conntrack::entries(&t.netns, p.v6).unwrap(),
        untouched(&[p.plain, p.snat_to, p.zoned])
    );
}

#[test]
fn ipv4_entries_listed_and_deleted() {
    let t = topology("ct4");
    lists_and_deletes(&Plan::new(false), &t);
}

#[test]
fn ipv6_entries_listed_and_deleted_and_ipv4_untouched() {
    let t = topology("ct6");
    let v4 = Plan::new(false);
    t.ping(&v4, v4.plain);
    lists_and_deletes(&Plan::new(true), &t);
    // Nothing of the other family was listed or deleted.
    let left = conntrack::entries(&t.netns, false).unwrap();
    assert!(
        left.iter()
            .any(|e| e.orig_dst == v4.plain && e.protocol == 1),
        "{left:#?}"
    );
    assert!(left.iter().all(|e| e.orig_src.is_ipv4()));
    assert_eq!(conntrack::delete_entries(&t.netns, v4.plain).unwrap(), 1);
}

#[test]
fn empty_table_is_zero_not_an_error() {
    require_tools();
    let ns = TestNs::new("ct0");
    let netns = Netns::open(&NetnsName::new("ns", &ns.name).unwrap()).unwrap();
    for v6 in [false, true] {
        assert_eq!(conntrack::entries(&netns, v6).unwrap(), Vec::new());
    }
    assert_eq!(
        conntrack::delete_entries(&netns, ip("192.0.2.2")).unwrap(),
        0
    );
    assert_eq!(
        conntrack::delete_entries(&netns, ip("2001:db8::2")).unwrap(),
        0
    );
}

#[test]
fn deleted_namespace_is_an_error_not_a_panic() {
    require_tools();
    // Deleted: it cannot be opened, and the error names it.
    let ns = TestNs::new("ctgone");
    let name = NetnsName::new("ns", &ns.name).unwrap();
    let held = Netns::open(&name).unwrap();
    drop(ns);
    let e = Netns::open(&name).unwrap_err();
    assert!(
        matches!(e, NetnsError::NoNamespace(_)) && e.to_string().contains(name.as_str()),
        "{e}"
    );
    // A handle opened before the deletion keeps the namespace alive: it still works.
    assert_eq!(
        conntrack::delete_entries(&held, ip("192.0.2.2")).unwrap(),
        0
    );
    drop(held);

    // Its mount gone but the file left in /run/netns (a half-done `ip netns del`): the handle
    // opens, and every call fails with an error naming the operation, address and namespace.
    let ns = TestNs::new("ctstale");
    let name = NetnsName::new("ns", &ns.name).unwrap();
    let path = std::path::Path::new("/run/netns").join(&ns.name);
    nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH).unwrap();
    let stale = Netns::open(&name).unwrap();
    let e = conntrack::delete_entries(&stale, ip("192.0.2.2")).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("conntrack -D -d 192.0.2.2")
            && msg.contains(name.as_str())
            && msg.contains("network namespace"),
        "{msg}"
    );
    assert!(e.errno().is_some(), "{e:?}");
    let e = conntrack::entries(&stale, true).unwrap_err();
    assert!(
        e.to_string().contains("conntrack -L -f ipv6") && e.to_string().contains(name.as_str()),
        "{e}"
    );
}
