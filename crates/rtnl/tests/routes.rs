//! Routes as a reconciler reads and writes them, against the real kernel in throwaway
//! namespaces: ECMP (IPv4 and IPv6) written and read back as one equal route, protocols,
//! and dumps filtered by the kernel (proved with the socket's counters: the kernel sent only
//! what was asked for), checked against what `ip -j` reports.

use ipnet::IpNet;
use l3agent_rtnl::prelude::*;
use l3agent_rtnl::route::{NextHop, Protocol, Route, LOCAL_TABLE, MAIN_TABLE};
use l3agent_rtnl::socket::Counters;
use l3agent_rtnl::{Netns, Rtnl};
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

fn len(v: &Value) -> usize {
    v.as_array().map_or(0, Vec::len)
}

/// A namespace with the veth pair `ecmp-a`/`ecmp-b`, both up; `ecmp-a` has 198.51.100.1/24
/// and 2001:db8:1::1/64.
fn setup(tag: &str) -> (TestNs, Netns, Rtnl) {
    let ns = TestNs::new(tag);
    let n = Netns::open(&NetnsName::new("ns", &ns.name).unwrap()).unwrap();
    let mut r = Rtnl::open(&n).unwrap();
    let (a, b) = (name("ecmp-a"), name("ecmp-b"));
    r.add_veth(&a, &b, None, None).unwrap();
    r.set_up(&a, true).unwrap();
    r.set_up(&b, true).unwrap();
    r.add_address(&a, net("198.51.100.1/24"), true).unwrap();
    r.add_address(&a, net("2001:db8:1::1/64"), false).unwrap();
    (ns, n, r)
}

fn hop(gw: &str, weight: u8) -> NextHop {
    NextHop {
        gateway: gw.parse().unwrap(),
        dev: Some(name("ecmp-a")),
        weight,
    }
}

fn ecmp(dst: &str, hops: Vec<NextHop>) -> Route {
    Route {
        metric: dst.contains(':').then_some(1024),
        multipath: hops,
        ..Route::to(net(dst))
    }
}

fn single(dst: &str, gw: &str) -> Route {
    Route {
        gateway: Some(gw.parse().unwrap()),
        dev: Some(name("ecmp-a")),
        metric: dst.contains(':').then_some(1024),
        ..Route::to(net(dst))
    }
}

fn to(r: &mut Rtnl, ipv6: bool, dst: &str) -> Vec<Route> {
    r.routes(ipv6, MAIN_TABLE)
        .unwrap()
        .into_iter()
        .filter(|x| x.dst == net(dst))
        .collect()
}

/// The next hops `ip -j route show DST` reports: (gateway, dev, weight).
fn ip_nexthops(ns: &TestNs, ipv6: bool, dst: &str) -> Vec<(String, String, u64)> {
    let fam = if ipv6 { "-6" } else { "-4" };
    let v = json(ns, &[fam, "route", "show", dst]);
    assert_eq!(len(&v), 1, "one route expected: {v}");
    v[0]["nexthops"]
        .as_array()
        .map(|hops| {
            hops.iter()
                .map(|h| {
                    (
                        h["gateway"].as_str().unwrap_or_default().to_owned(),
                        h["dev"].as_str().unwrap_or_default().to_owned(),
                        h["weight"].as_u64().unwrap_or(1),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn delta(before: Counters, after: Counters) -> (u64, u64) {
    (after.dumps - before.dumps, after.dumped - before.dumped)
}

fn ecmp_round_trip(ipv6: bool) {
    let (ns, _n, mut r) = setup(if ipv6 { "ecmp6" } else { "ecmp4" });
    let (dst, a, b, c) = if ipv6 {
        (
            "2001:db8:2::/64",
            "2001:db8:1::2",
            "2001:db8:1::3",
            "2001:db8:1::4",
        )
    } else {
        (
            "192.0.2.0/24",
            "198.51.100.2",
            "198.51.100.3",
            "198.51.100.4",
        )
    };
    // Sorted by (gateway, dev), weight 3 on the second.
    let two = ecmp(dst, vec![hop(a, 0), hop(b, 2)]);
    for _ in 0..2 {
        r.replace_route(&two).unwrap();
    }
    assert_eq!(to(&mut r, ipv6, dst), vec![two.clone()]);
    assert_eq!(
        ip_nexthops(&ns, ipv6, dst),
        vec![
            (a.to_owned(), "ecmp-a".to_owned(), 1),
            (b.to_owned(), "ecmp-a".to_owned(), 3)
        ]
    );
    let fam = if ipv6 { "-6" } else { "-4" };
    assert_eq!(
        json(&ns, &[fam, "route", "show", dst])[0]["protocol"],
        "static"
    );
    // ECMP -> single -> ECMP, each replacing the other.
    let one = single(dst, c);
    r.replace_route(&one).unwrap();
    assert_eq!(to(&mut r, ipv6, dst), vec![one.clone()]);
    assert!(ip_nexthops(&ns, ipv6, dst).is_empty());
    let three = ecmp(dst, vec![hop(a, 0), hop(b, 0), hop(c, 0)]);
    r.replace_route(&three).unwrap();
    assert_eq!(to(&mut r, ipv6, dst), vec![three.clone()]);
    assert_eq!(ip_nexthops(&ns, ipv6, dst).len(), 3);
    // Written unsorted: read back sorted, and deleted by what was read.
    let unsorted = ecmp(dst, vec![hop(c, 0), hop(a, 0)]);
    r.replace_route(&unsorted).unwrap();
    let read = to(&mut r, ipv6, dst);
    assert_eq!(read, vec![ecmp(dst, vec![hop(a, 0), hop(c, 0)])]);
    assert!(r.delete_route(&read[0]).unwrap());
    assert!(to(&mut r, ipv6, dst).is_empty());
    assert_eq!(len(&json(&ns, &[fam, "route", "show", dst])), 0);
    // Delete as written.
    r.replace_route(&two).unwrap();
    assert!(r.delete_route(&two).unwrap());
    assert!(!r.delete_route(&two).unwrap());
    assert!(to(&mut r, ipv6, dst).is_empty());
    // Flushing a table deletes ECMP routes too.
    let in16 = Route { table: 16, ..two };
    r.replace_route(&in16).unwrap();
    assert_eq!(r.routes(ipv6, 16).unwrap(), vec![in16]);
    assert_eq!(r.flush_table(ipv6, 16).unwrap(), 1);
    assert!(r.routes(ipv6, 16).unwrap().is_empty());
}

#[test]
fn ipv4_ecmp_reads_back_as_written() {
    ecmp_round_trip(false);
}

#[test]
fn ipv6_ecmp_reads_back_as_written() {
    ecmp_round_trip(true);
}

/// Kernel 6.x dumps an IPv6 ECMP route as ONE message carrying RTA_MULTIPATH (not one
/// message per sibling): the number of messages received equals the number of routes.
#[test]
fn kernel_dumps_ipv6_ecmp_as_one_message() {
    let (ns, _n, mut r) = setup("ecmp6msg");
    let route = ecmp(
        "2001:db8:2::/64",
        vec![hop("2001:db8:1::2", 0), hop("2001:db8:1::3", 0)],
    );
    r.replace_route(&route).unwrap();
    let shown = || len(&json(&ns, &["-6", "route", "show", "table", "main"]));
    // The kernel adds fe80::/64 routes on its own once the links are up (addrconf, async):
    // compare with iproute2 only over a dump during which the table did not change.
    for attempt in 1..=50 {
        let links = r.links().unwrap().len() as u64;
        let shown_before = shown();
        let before = r.counters();
        let routes = r.routes(true, MAIN_TABLE).unwrap();
        let (dumps, dumped) = delta(before, r.counters());
        assert_eq!(dumps, 2, "one route dump, one link dump");
        assert_eq!(
            dumped - links,
            routes.len() as u64,
            "one message per route: {routes:?}"
        );
        assert!(routes.contains(&route), "{routes:?}");
        if shown() == shown_before {
            assert_eq!(routes.len(), shown_before, "{routes:?}");
            return;
        }
        assert!(attempt < 50, "the main table kept changing for 50 dumps");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn protocol_is_read_back() {
    let (ns, _n, mut r) = setup("proto");
    let connected = Route {
        dev: Some(name("ecmp-a")),
        scope_link: true,
        protocol: Protocol::Kernel,
        ..Route::to(net("198.51.100.0/24"))
    };
    let ours = single("192.0.2.0/24", "198.51.100.2");
    let boot = Route {
        protocol: Protocol::Boot,
        ..single("203.0.113.0/24", "198.51.100.2")
    };
    let other = Route {
        protocol: Protocol::Other(77), // unnamed in iproute2's rt_protos
        ..single("192.0.2.128/25", "198.51.100.2")
    };
    for x in [&ours, &boot, &other] {
        r.replace_route(x).unwrap();
    }
    let main = r.routes(false, MAIN_TABLE).unwrap();
    // What the kernel made for the address, and ours as written.
    for x in [&connected, &ours, &boot, &other] {
        assert!(main.contains(x), "{x:?} not in {main:?}");
    }
    assert_eq!(main.len(), 4, "{main:?}");
    let v6 = r.routes(true, MAIN_TABLE).unwrap();
    let prefix = v6.iter().find(|x| x.dst == net("2001:db8:1::/64")).unwrap();
    assert_eq!(prefix.protocol, Protocol::Kernel);
    // `ip -j` leaves out `boot`, its default, unless asked for details.
    let shown = json(&ns, &["-d", "route", "show", "203.0.113.0/24"]);
    assert_eq!(shown[0]["protocol"], "boot");
    let shown = json(&ns, &["route", "show", "192.0.2.128/25"]);
    assert_eq!(shown[0]["protocol"], "77");
    // Deleting takes the protocol into account: only the route as it is goes.
    let wrong = Route {
        protocol: Protocol::Static,
        ..boot.clone()
    };
    assert!(!r.delete_route(&wrong).unwrap());
    assert!(r.delete_route(&boot).unwrap());
    assert!(r.delete_route(&connected).unwrap());
}

/// Routes in main, 16 and 100000 (and a unicast route in local): every read is one route
/// dump the kernel filtered, plus one link dump when a route has a device.
#[test]
fn route_dumps_are_filtered_by_table_in_the_kernel() {
    let (ns, _n, mut r) = setup("tables");
    let t16 = vec![
        Route {
            table: 16,
            ..single("0.0.0.0/0", "198.51.100.254")
        },
        Route {
            table: 16,
            ..ecmp(
                "192.0.2.0/24",
                vec![hop("198.51.100.2", 0), hop("198.51.100.3", 0)],
            )
        },
    ];
    let big = vec![Route {
        table: 100_000,
        metric: Some(5),
        ..single("203.0.113.0/24", "198.51.100.9")
    }];
    let main = single("192.0.2.0/24", "198.51.100.4");
    let local = Route {
        table: LOCAL_TABLE,
        ..single("203.0.113.64/26", "198.51.100.5")
    };
    for x in t16.iter().chain(&big).chain([&main, &local]) {
        r.replace_route(x).unwrap();
    }
    let v6 = Route {
        table: 16,
        ..single("2001:db8:2::/64", "2001:db8:1::2")
    };
    r.replace_route(&v6).unwrap();
    assert_eq!(len(&json(&ns, &["route", "show", "table", "16"])), 2);
    assert_eq!(
        len(&json(
            &ns,
            &["route", "show", "table", "local", "type", "unicast"]
        )),
        1
    );
    let links = r.links().unwrap().len() as u64;

    let before = r.counters();
    let mut got = r.routes(false, 16).unwrap();
    got.sort();
    let mut want = t16.clone();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(
        delta(before, r.counters()),
        (2, 2 + links),
        "the kernel must send table 16's two routes only"
    );

    let before = r.counters();
    assert_eq!(r.routes(false, 100_000).unwrap(), big);
    assert_eq!(delta(before, r.counters()), (2, 1 + links));
    assert_eq!(r.routes(true, 16).unwrap(), vec![v6.clone()]);

    // A table that does not exist is empty; with no device to name, no link dump.
    let before = r.counters();
    assert!(r.routes(false, 17).unwrap().is_empty());
    assert!(r.routes(true, 100_001).unwrap().is_empty());
    assert_eq!(delta(before, r.counters()), (2, 0));

    // Main holds the connected route and ours, nothing from the other tables.
    let got = r.routes(false, MAIN_TABLE).unwrap();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.contains(&main));
    assert_eq!(r.routes(false, LOCAL_TABLE).unwrap(), vec![local]);
}

#[test]
fn all_routes_spans_every_table_but_local() {
    let (_ns, _n, mut r) = setup("all");
    let routes = [
        Route {
            table: 16,
            ..single("0.0.0.0/0", "198.51.100.254")
        },
        Route {
            table: 100_000,
            ..ecmp(
                "192.0.2.0/24",
                vec![hop("198.51.100.2", 0), hop("198.51.100.3", 1)],
            )
        },
        single("203.0.113.0/24", "198.51.100.4"),
        Route {
            table: LOCAL_TABLE,
            ..single("203.0.113.64/26", "198.51.100.5")
        },
        Route {
            table: 100_000,
            ..single("2001:db8:2::/64", "2001:db8:1::2")
        },
    ];
    for x in &routes {
        r.replace_route(x).unwrap();
    }
    let before = r.counters();
    let mut all = r.all_routes(false).unwrap();
    assert_eq!(
        delta(before, r.counters()).0,
        2,
        "one route dump, one link dump"
    );
    all.sort();
    let mut want: Vec<Route> = [MAIN_TABLE, 16, 100_000]
        .into_iter()
        .flat_map(|t| r.routes(false, t).unwrap())
        .collect();
    want.sort();
    assert_eq!(all, want);
    for x in &routes[..3] {
        assert!(all.contains(x), "{x:?} not in {all:?}");
    }
    assert!(all.iter().all(|x| x.table != LOCAL_TABLE), "{all:?}");
    assert!(all.iter().any(|x| x.protocol == Protocol::Kernel));
    let all6 = r.all_routes(true).unwrap();
    assert!(all6.contains(&routes[4]), "{all6:?}");
    assert!(all6
        .iter()
        .all(|x| x.table != LOCAL_TABLE && x.dst.addr().is_ipv6()));
}

#[test]
fn address_dumps_are_filtered_by_device_in_the_kernel() {
    let (ns, _n, mut r) = setup("addrs");
    let (c, d) = (name("other-c"), name("other-d"));
    r.add_veth(&c, &d, None, None).unwrap();
    r.set_up(&c, true).unwrap();
    r.add_address(&c, net("203.0.113.1/24"), true).unwrap();
    r.add_address(&c, net("2001:db8:9::1/64"), false).unwrap();
    let a = name("ecmp-a");
    let index = r.link(&a).unwrap().unwrap().index;
    let before = r.counters();
    let got = r.addresses(Some(&a)).unwrap();
    let (dumps, dumped) = delta(before, r.counters());
    assert_eq!(dumps, 1);
    assert_eq!(
        dumped,
        got.len() as u64,
        "the kernel sent other devices' addresses"
    );
    assert!(got.iter().all(|x| x.index == index), "{got:?}");
    let nets: Vec<IpNet> = got.iter().map(|x| x.net).collect();
    assert!(nets.contains(&net("198.51.100.1/24")) && nets.contains(&net("2001:db8:1::1/64")));
    assert!(!nets.contains(&net("203.0.113.1/24")));
    let shown = json(&ns, &["addr", "show", "dev", "ecmp-a"]);
    assert_eq!(got.len(), len(&shown[0]["addr_info"]), "{shown}");
    let all = r.addresses(None).unwrap();
    assert!(all.len() > got.len());
    assert!(all.iter().any(|x| x.net == net("203.0.113.1/24")));
}

#[test]
fn neighbour_dumps_are_filtered_by_device_in_the_kernel() {
    let (_ns, _n, mut r) = setup("neighs");
    let (a, b) = (name("ecmp-a"), name("ecmp-b"));
    let mac = [0xfa, 0x16, 0x3e, 0, 0, 1];
    for i in 10..13u8 {
        r.replace_neighbour(&a, format!("198.51.100.{i}").parse().unwrap(), mac)
            .unwrap();
        r.replace_neighbour(&b, format!("192.0.2.{i}").parse().unwrap(), mac)
            .unwrap();
    }
    let before = r.counters();
    let got = r.neighbours(&a).unwrap();
    let (dumps, dumped) = delta(before, r.counters());
    assert_eq!(dumps, 1);
    assert_eq!(
        dumped,
        got.len() as u64,
        "the kernel sent other devices' entries"
    );
    let ips: Vec<String> = got.iter().map(|n| n.ip.to_string()).collect();
    for i in 10..13 {
        assert!(ips.contains(&format!("198.51.100.{i}")), "{ips:?}");
    }
    assert!(ips.iter().all(|ip| !ip.starts_with("192.0.2.")), "{ips:?}");
}
