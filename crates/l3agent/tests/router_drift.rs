//! Drift on the real kernel: after a clean apply, someone changes a router by hand (`ip`,
//! `iptables`, `sysctl` run in the router's namespaces with `nsenter --net`, or the host end of
//! a port detached from its bridge in the host namespace). For every drift class of a legacy
//! and a `dvr_snat` router:
//! 1. `status` exits 1 and its drift list names the repair (kind and fields);
//! 2. `plan` lists the same repair — exactly the drift `status` lists, router by router, plus
//!    side effects (announcements, conntrack cleanup);
//! 3. a plain `apply` exits 0 and makes exactly the changes `plan` listed;
//! 4. afterwards `status` exits 0 and `plan` lists nothing, and the kernel holds the item again
//!    (checked with `ip`/`iptables-save` directly, and with traffic after the big repairs).
//!
//! One topology per router type serves all its cases: each case starts from the state the
//! previous repair left, which the checks of step 4 prove clean. The iptables cases run with
//! both backends (see [`Topology::force_iptables_backend`]: l3agent's routers use the host's
//! `iptables -V` backend, which the test sets for l3agent alone).
#![allow(clippy::disallowed_methods)] // the test runs the binary under test

mod common;

use std::path::PathBuf;
use std::time::Instant;

use common::*;
use l3agent_testkit::{ok, tcp_probe};
use serde_json::{json, Value};

/// Runs `args` in namespace `ns`, switching only the network namespace (so that what it
/// creates is visible to everyone, unlike under `ip netns exec`).
fn nsx(ns: &str, args: &[&str]) {
    let net = format!("--net=/run/netns/{ns}");
    let mut argv = vec!["nsenter", net.as_str()];
    argv.extend_from_slice(args);
    ok(&argv);
}

/// A change that `status`, `plan` and `apply` must list: its kind, namespace (`None`: the host
/// end of a port, which has none) and fields, each holding all the given texts (a list field:
/// one of its items does).
#[derive(Debug)]
struct Want {
    change: String,
    ns: Option<String>,
    fields: Vec<(String, Vec<String>)>,
}

fn want(change: &str, ns: &str) -> Want {
    Want {
        change: change.to_owned(),
        ns: Some(ns.to_owned()),
        fields: Vec::new(),
    }
}

impl Want {
    fn with(mut self, field: &str, all: &[&str]) -> Want {
        self.fields.push((
            field.to_owned(),
            all.iter().map(|s| (*s).to_owned()).collect(),
        ));
        self
    }

    fn matches(&self, c: &Value) -> bool {
        c["change"] == self.change.as_str()
            && match &self.ns {
                Some(ns) => c["ns"] == ns.as_str(),
                None => c.get("ns").is_none(),
            }
            && self.fields.iter().all(|(f, all)| holds(&c[f], all))
    }
}

fn holds(v: &Value, all: &[String]) -> bool {
    match v {
        Value::Array(items) => items.iter().any(|i| holds(i, all)),
        Value::String(s) => all.iter().all(|a| s.contains(a.as_str())),
        Value::Null => false,
        other => {
            let s = other.to_string();
            all.iter().all(|a| s.contains(a.as_str()))
        }
    }
}

fn is_side_effect(c: &Value) -> bool {
    c["change"] == "announce" || c["change"] == "flush_conntrack"
}

/// A router (or several) under test: its topology and config.
struct Under<'a> {
    t: &'a Topology,
    cfg: PathBuf,
}

impl Under<'_> {
    fn cfg(&self) -> &str {
        self.cfg.to_str().unwrap()
    }

    fn status(&self) -> (Option<i32>, Value, String) {
        l3agent(
            self.t,
            &["status", "--state-path", self.t.state.to_str().unwrap()],
        )
    }

    /// `status` exits 0 with every router ok, and `plan` lists nothing.
    fn assert_clean(&self, what: &str) {
        let (code, status, err) = self.status();
        assert_eq!(code, Some(0), "{what}: status: {err} {status}");
        let entries = status.as_array().unwrap();
        assert!(!entries.is_empty(), "{what}: status lists no router");
        assert!(
            entries.iter().all(|r| r["health"] == "ok"),
            "{what}: {status}"
        );
        let (code, plan, err) = l3agent(self.t, &["plan", self.cfg()]);
        assert_eq!(code, Some(0), "{what}: plan: {err}");
        assert!(
            plan["routers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["changes"].as_array().unwrap().is_empty()),
            "{what}: plan after the repair is not empty: {plan}"
        );
    }

    fn first_apply(&self) {
        let (code, report, err) = l3agent(self.t, &["apply", self.cfg()]);
        assert_eq!(code, Some(0), "first apply: {err} {report}");
        self.assert_clean("after the first apply");
    }

    /// Steps 1-4 of the module docs for drift just made by hand; `check` then looks at the
    /// kernel. Returns the `status` seen before the repair.
    fn repaired(&self, what: &str, wants: &[Want], check: impl FnOnce()) -> Value {
        let start = Instant::now();
        let (code, status, err) = self.status();
        assert_eq!(code, Some(1), "{what}: status must exit 1: {err} {status}");
        let entries = status.as_array().unwrap();
        for w in wants {
            let entry = entries
                .iter()
                .find(|e| e["drift"].as_array().unwrap().iter().any(|c| w.matches(c)));
            let entry = entry.unwrap_or_else(|| panic!("{what}: status misses {w:?}: {status}"));
            assert_ne!(entry["health"], "ok", "{what}: {entry}");
        }
        let (code, plan, err) = l3agent(self.t, &["plan", self.cfg()]);
        assert_eq!(code, Some(0), "{what}: plan: {err} {plan}");
        let planned: Vec<&Value> = plan["routers"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["changes"].as_array().unwrap())
            .collect();
        for w in wants {
            assert!(
                planned.iter().any(|c| w.matches(c)),
                "{what}: plan misses {w:?}: {plan}"
            );
        }
        // Router by router, plan lists exactly the drift status names (and side effects).
        for e in entries {
            let p = plan["routers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["id"] == e["id"])
                .unwrap_or_else(|| panic!("{what}: plan has no {}: {plan}", e["id"]));
            let repairs: Vec<&Value> = p["changes"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| !is_side_effect(c))
                .collect();
            let drift: Vec<&Value> = e["drift"].as_array().unwrap().iter().collect();
            assert_eq!(
                repairs, drift,
                "{what}: plan and status differ for {}",
                e["id"]
            );
        }
        let (code, report, err) = l3agent(self.t, &["apply", self.cfg()]);
        assert_eq!(code, Some(0), "{what}: apply: {err} {report}");
        let changes = |v: &Value| -> Vec<(Value, Value)> {
            v["routers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| (r["id"].clone(), r["changes"].clone()))
                .collect()
        };
        assert_eq!(
            changes(&plan),
            changes(&report),
            "{what}: apply did not make exactly the planned changes"
        );
        self.assert_clean(&format!("{what}, after the repair"));
        check();
        eprintln!("{what}: {:.2?}", start.elapsed());
        status
    }
}

/// The bridge the host end `dev` is attached to ("" for none).
fn master_of(t: &Topology, dev: &str) -> String {
    let v: Value = serde_json::from_str(&t.host.ok(&["ip", "-j", "link", "show", dev])).unwrap();
    v[0]["master"].as_str().unwrap_or_default().to_owned()
}

fn mac_of(ns: &str, dev: &str) -> String {
    let v: Value = serde_json::from_str(&in_ns(ns, &["ip", "-j", "link", "show", dev])).unwrap();
    v[0]["address"].as_str().unwrap().to_owned()
}

/// `iptables-BACKEND-save -t TABLE` (or ip6tables) in `ns`.
fn save(ns: &str, backend: &str, v6: bool, table: &str) -> String {
    let prog = format!(
        "{}-{backend}-save",
        if v6 { "ip6tables" } else { "iptables" }
    );
    in_ns(ns, &[&prog, "-t", table])
}

/// The arguments of a rule as `iptables-save` prints it (double quotes group words).
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let (mut quoted, mut any) = (false, false);
    for ch in line.chars() {
        match ch {
            '"' => (quoted, any) = (!quoted, true),
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut word));
                }
                any = false;
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(word);
    }
    out
}

/// Deletes the first rule of `table` that `pick` chooses, as `iptables-save` prints it.
fn delete_rule(ns: &str, backend: &str, table: &str, pick: impl Fn(&str) -> bool) {
    let saved = save(ns, backend, false, table);
    let line = saved
        .lines()
        .find(|l| l.starts_with("-A ") && pick(l))
        .unwrap_or_else(|| panic!("no such rule in {ns} {table}: {saved}"));
    let args = words(&line["-A ".len()..]);
    let tool = format!("iptables-{backend}");
    let mut argv = vec![tool.as_str(), "-t", table, "-D"];
    argv.extend(args.iter().map(String::as_str));
    nsx(ns, &argv);
    assert!(
        !save(ns, backend, false, table).contains(line),
        "{line} was not deleted"
    );
}

/// `ip netns del NS`, then waits (bounded) until the kernel has torn the namespace down, which
/// it does in the background: until each `(namespace, device)` in `peers` (the other ends of
/// its veths) is gone. Before that, l3agent would see a half-deleted state.
fn delete_namespace(ns: &str, peers: &[(&str, &str)]) {
    ok(&["ip", "netns", "del", ns]);
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    for (peer_ns, dev) in peers {
        while l3agent_testkit::sh(&["ip", "-n", peer_ns, "link", "show", dev]).code == Some(0) {
            assert!(
                Instant::now() < deadline,
                "{dev} in {peer_ns} still there 20 s after {ns} was deleted"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// The policy-rule table of the rule in `ns` whose `ip rule` line contains `what`.
fn rule_table(ns: &str, what: &str) -> String {
    let rules = in_ns(ns, &["ip", "rule"]);
    let line = rules
        .lines()
        .find(|l| l.contains(what))
        .unwrap_or_else(|| panic!("no rule with {what} in {ns}: {rules}"));
    line.rsplit(' ').next().unwrap().trim().to_owned()
}

/// Asserts that `ns`'s l3agent rules are in `backend`'s tables and not in the other's.
fn assert_backend(ns: &str, backend: &str, chain: &str) {
    let other = if backend == "nft" { "legacy" } else { "nft" };
    let mine = save(ns, backend, false, "nat") + &save(ns, backend, false, "raw");
    assert!(
        mine.contains(chain),
        "{ns}: no {chain} in {backend}: {mine}"
    );
    let theirs = save(ns, other, false, "nat") + &save(ns, other, false, "raw");
    assert!(
        !theirs.contains("neutron-l3-agent"),
        "{ns}: rules in {other} too: {theirs}"
    );
}

// --- legacy router ----------------------------------------------------------------------------

const QR1: &str = "qr-081ed401-2a";
const QR2: &str = "qr-fa4bdea8-84";
const QG: &str = "qg-184a6791-c4";

/// An id for test `n` of this process: namespace names (`qrouter-ID`, `fip-EXT`) are global
/// to the machine, and other test processes may run at the same time. Its first 10
/// characters (which `rfp-`/`fpr-` names take) are unique too.
fn unique_id(n: u32, rest: &str) -> String {
    format!("{:06x}{n:02x}-{rest}", std::process::id())
}

/// The legacy example router under another id (namespace names are global: one per test).
fn legacy_router(id: &str) -> Value {
    let mut r = example();
    r["id"] = json!(id);
    r
}

/// Flushed chain, deleted jump rule, deleted chain and a flushed IPv6 chain in a legacy
/// router's namespace, made with `backend`'s tools.
fn legacy_iptables_cases(u: &Under, q: &str, backend: &str) {
    let ipt = format!("iptables-{backend}");
    let snat = "-A neutron-l3-agent-snat -o qg-184a6791-c4 -j SNAT --to-source 203.0.113.4";
    nsx(q, &[&ipt, "-t", "nat", "-F", "neutron-l3-agent-snat"]);
    u.repaired(
        &format!("{backend}: flushed neutron-l3-agent-snat"),
        &[want("iptables", q)
            .with("family", &["ipv4"])
            .with("lines", &[snat])],
        || assert!(save(q, backend, false, "nat").contains(snat)),
    );

    delete_rule(q, backend, "nat", |l| {
        l.starts_with("-A PREROUTING ") && l.ends_with("-j neutron-l3-agent-PREROUTING")
    });
    u.repaired(
        &format!("{backend}: deleted nat PREROUTING jump"),
        &[want("iptables", q).with("lines", &["*nat"]).with(
            "lines",
            &["-I PREROUTING ", "-j neutron-l3-agent-PREROUTING"],
        )],
        || {
            assert!(save(q, backend, false, "nat").lines().any(|l| {
                l.starts_with("-A PREROUTING ") && l.ends_with("-j neutron-l3-agent-PREROUTING")
            }))
        },
    );

    // A chain deleted (its one reference flushed away first).
    let float = "-A neutron-l3-agent-float-snat -s 192.0.2.10/32 -j SNAT --to-source 203.0.113.2";
    nsx(q, &[&ipt, "-t", "nat", "-F", "neutron-l3-agent-snat"]);
    nsx(q, &[&ipt, "-t", "nat", "-F", "neutron-l3-agent-float-snat"]);
    nsx(q, &[&ipt, "-t", "nat", "-X", "neutron-l3-agent-float-snat"]);
    u.repaired(
        &format!("{backend}: deleted chain neutron-l3-agent-float-snat"),
        &[want("iptables", q)
            .with("lines", &[":neutron-l3-agent-float-snat"])
            .with("lines", &[float])],
        || {
            let nat = save(q, backend, false, "nat");
            assert!(nat.contains(float), "{nat}");
            assert!(
                nat.contains("-A neutron-l3-agent-snat -j neutron-l3-agent-float-snat"),
                "{nat}"
            );
        },
    );

    let ip6t = format!("ip6tables-{backend}");
    let scope = "-A neutron-l3-agent-PREROUTING -j neutron-l3-agent-scope";
    nsx(
        q,
        &[&ip6t, "-t", "mangle", "-F", "neutron-l3-agent-PREROUTING"],
    );
    u.repaired(
        &format!("{backend}: flushed IPv6 mangle neutron-l3-agent-PREROUTING"),
        &[want("iptables", q)
            .with("family", &["ipv6"])
            .with("lines", &[scope])],
        || assert!(save(q, backend, true, "mangle").contains(scope)),
    );
}

/// SNAT, DNAT to the floating IP, and routing between the two subnets work (ports from
/// `port` on).
fn prove_traffic(t: &Topology, port: u16) {
    assert_eq!(
        tcp_probe(&t.ext, &t.vm2, "203.0.113.1", port).unwrap(),
        "203.0.113.4",
        "SNAT"
    );
    assert_eq!(
        tcp_probe(&t.vm1, &t.ext, "203.0.113.2", port + 1).unwrap(),
        "203.0.113.1",
        "DNAT to the floating IP"
    );
    assert_eq!(
        tcp_probe(&t.vm2, &t.vm1, "198.51.100.10", port + 2).unwrap(),
        "192.0.2.10",
        "between the subnets"
    );
}

/// Every drift class of a legacy router (iptables ones with the nft backend).
#[test]
fn legacy_router_drift_is_seen_and_repaired() {
    let id = unique_id(1, "d0ba-4691-820c-8053abf50b8d");
    let q = format!("qrouter-{id}");
    let q = q.as_str();
    let mut t = topology(vec![q.to_owned()]);
    t.force_iptables_backend("nft");
    let u = Under {
        cfg: config(&t, &legacy_router(&id)),
        t: &t,
    };
    let started = Instant::now();
    u.first_apply();
    assert_backend(q, "nft", "neutron-l3-agent-snat");
    let routes = || in_ns(q, &["ip", "route"]);

    nsx(q, &["ip", "route", "del", "default"]);
    u.repaired(
        "deleted default route",
        &[want("replace_route", q).with("route", &["default via 203.0.113.1 dev qg-184a6791-c4"])],
        || assert!(routes().contains("default via 203.0.113.1 dev qg-184a6791-c4")),
    );

    nsx(q, &["ip", "route", "del", "100.64.5.0/24"]);
    u.repaired(
        "deleted on-link route",
        &[
            want("replace_route", q)
                .with("route", &["100.64.5.0/24 dev qg-184a6791-c4 scope link"]),
        ],
        || {
            assert!(routes().lines().any(|l| {
                l.starts_with("100.64.5.0/24 dev qg-184a6791-c4") && l.contains("scope link")
            }))
        },
    );

    nsx(q, &["ip", "route", "del", "100.64.8.0/24"]);
    u.repaired(
        "deleted extra route",
        &[want("replace_route", q).with("route", &["100.64.8.0/24 via 203.0.113.1"])],
        || assert!(routes().contains("100.64.8.0/24 via 203.0.113.1 dev qg-184a6791-c4")),
    );

    nsx(q, &["ip", "link", "del", QR1]);
    u.repaired(
        "deleted qr- device",
        &[want("create_port", q)
            .with("dev", &[QR1])
            .with("host_end", &["tap081ed401-2a"])
            .with("bridge", &["br-t1"])
            .with("addresses", &["192.0.2.4/24"])],
        || {
            assert!(in_ns(q, &["ip", "-br", "addr", "show", QR1]).contains("192.0.2.4/24"));
            assert_eq!(master_of(&t, "tap081ed401-2a"), "br-t1");
        },
    );

    nsx(q, &["ip", "link", "del", QG]);
    u.repaired(
        "deleted qg- device",
        &[
            want("create_port", q)
                .with("dev", &[QG])
                .with("bridge", &["br-ex"])
                .with("addresses", &["203.0.113.4/24"]),
            want("replace_route", q).with("route", &["default via 203.0.113.1"]),
            want("add_address", q)
                .with("dev", &[QG])
                .with("net", &["203.0.113.2/32"])
                .with("floating", &["true"]),
        ],
        || {
            let a = in_ns(q, &["ip", "-br", "addr", "show", QG]);
            assert!(
                a.contains("203.0.113.4/24") && a.contains("203.0.113.2/32"),
                "{a}"
            );
            assert!(routes().contains("default via 203.0.113.1 dev qg-184a6791-c4"));
            assert_eq!(master_of(&t, "tap184a6791-c4"), "br-ex");
        },
    );

    nsx(
        &t.host.name,
        &["ip", "link", "set", "tap081ed401-2a", "nomaster"],
    );
    let mut detached = want("set_host_end", q)
        .with("dev", &["tap081ed401-2a"])
        .with("bridge", &["br-t1"]);
    detached.ns = None;
    u.repaired("host end detached from its bridge", &[detached], || {
        assert_eq!(master_of(&t, "tap081ed401-2a"), "br-t1")
    });

    nsx(q, &["sysctl", "-w", "net.ipv4.ip_forward=0"]);
    u.repaired(
        "changed sysctl",
        &[want("set_sysctl", q)
            .with("key", &["net.ipv4.ip_forward"])
            .with("value", &["1"])],
        || {
            assert_eq!(
                in_ns(q, &["sysctl", "-n", "net.ipv4.ip_forward"]).trim(),
                "1"
            )
        },
    );

    nsx(q, &["ip", "addr", "del", "198.51.100.4/24", "dev", QR2]);
    u.repaired(
        "removed address",
        &[want("add_address", q)
            .with("dev", &[QR2])
            .with("net", &["198.51.100.4/24"])],
        || assert!(in_ns(q, &["ip", "-br", "addr", "show", QR2]).contains("198.51.100.4/24")),
    );

    legacy_iptables_cases(&u, q, "nft");

    delete_namespace(q, &[(&t.host.name, "tap184a6791-c4")]);
    let status = u.repaired(
        "deleted qrouter namespace",
        &[
            want("create_namespace", q),
            want("create_port", q).with("dev", &[QG]),
            want("iptables", q).with("lines", &["neutron-l3-agent-snat"]),
        ],
        || assert!(ok(&["ip", "netns", "list"]).contains(q)),
    );
    assert_eq!(status[0]["health"], "missing", "{status}");
    prove_traffic(&t, 7080);

    let (code, _, err) = l3agent(&t, &["destroy", u.cfg()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!ok(&["ip", "netns", "list"]).contains(q));
    let _ = std::fs::remove_file(&u.cfg);
    eprintln!("legacy router, all cases: {:.2?}", started.elapsed());
}

/// The iptables drift of a legacy router with the legacy backend.
#[test]
fn legacy_router_iptables_drift_with_the_legacy_backend() {
    let id = unique_id(2, "d0ba-4691-820c-8053abf50b8d");
    let q = format!("qrouter-{id}");
    let mut t = topology(vec![q.clone()]);
    t.force_iptables_backend("legacy");
    let u = Under {
        cfg: config(&t, &legacy_router(&id)),
        t: &t,
    };
    u.first_apply();
    assert_backend(&q, "legacy", "neutron-l3-agent-snat");
    legacy_iptables_cases(&u, &q, "legacy");
    prove_traffic(&t, 7180);
    let (code, _, err) = l3agent(&t, &["destroy", u.cfg()]);
    assert_eq!(code, Some(0), "{err}");
    let _ = std::fs::remove_file(&u.cfg);
}

// --- dvr_snat router --------------------------------------------------------------------------

/// The names of a `dvr_snat` router under test.
struct Dvr {
    q: String,
    snat: String,
    fip: String,
    rfp: String,
    fpr: String,
}

const DQR1: &str = "qr-55989303-d9";
const SG1: &str = "sg-2581be54-9c";
const SQG: &str = "qg-16663def-59";
const FG: &str = "fg-68db4b10-1b";

/// Neutron's DVR example under router id `id` and external network `ext` (namespace names are
/// global: one pair per test), with its `dvr_snat` config.
fn dvr_setup(id: &str, ext: &str, backend: &'static str) -> (Topology, Dvr, PathBuf) {
    let d = Dvr {
        q: format!("qrouter-{id}"),
        snat: format!("snat-{id}"),
        fip: format!("fip-{ext}"),
        rfp: format!("rfp-{}", &id[..10]),
        fpr: format!("fpr-{}", &id[..10]),
    };
    let mut t = topology(vec![d.q.clone(), d.snat.clone(), d.fip.clone()]);
    t.force_iptables_backend(backend);
    let text = dvr_example()
        .to_string()
        .replace(DVR_ID, id)
        .replace(DVR_EX, ext);
    let router: Value = serde_json::from_str(&text).unwrap();
    let cfg = json!({
        "agent": {"mode": "dvr_snat", "host": "host-a", "state_path": t.state,
                  "bridges": {DVR_T1: "br-t1", DVR_T2: "br-t2", ext: "br-ex"}},
        "routers": [router],
    });
    let path = t
        .state
        .with_extension(format!("{}.json", l3agent_testkit::unique()));
    std::fs::write(&path, cfg.to_string()).unwrap();
    (t, d, path)
}

/// Flushed chains and a deleted jump rule in each namespace type of a DVR router (qrouter-,
/// snat-, fip-), made with `backend`'s tools.
fn dvr_iptables_cases(u: &Under, d: &Dvr, backend: &str) {
    let ipt = format!("iptables-{backend}");
    let dnat = format!(
        "-A neutron-l3-agent-PREROUTING -d 203.0.113.2/32 -i {} -j DNAT --to-destination {}",
        d.rfp, "192.0.2.10"
    );
    nsx(
        &d.q,
        &[&ipt, "-t", "nat", "-F", "neutron-l3-agent-PREROUTING"],
    );
    u.repaired(
        &format!("{backend}: flushed qrouter- nat neutron-l3-agent-PREROUTING"),
        &[want("iptables", &d.q).with("lines", &[&dnat])],
        || assert!(save(&d.q, backend, false, "nat").contains(&dnat)),
    );

    let snat = "-A neutron-l3-agent-snat -o qg-16663def-59 -j SNAT --to-source 203.0.113.4";
    nsx(&d.snat, &[&ipt, "-t", "nat", "-F", "neutron-l3-agent-snat"]);
    u.repaired(
        &format!("{backend}: flushed snat- neutron-l3-agent-snat"),
        &[want("iptables", &d.snat).with("lines", &[snat])],
        || assert!(save(&d.snat, backend, false, "nat").contains(snat)),
    );

    let notrack = "-A neutron-l3-agent-PREROUTING -j CT --notrack";
    nsx(
        &d.fip,
        &[&ipt, "-t", "raw", "-F", "neutron-l3-agent-PREROUTING"],
    );
    u.repaired(
        &format!("{backend}: flushed fip- raw neutron-l3-agent-PREROUTING"),
        &[want("iptables", &d.fip).with("lines", &[notrack])],
        || assert!(save(&d.fip, backend, false, "raw").contains(notrack)),
    );

    let jump =
        |l: &str| l.starts_with("-A PREROUTING ") && l.ends_with("-j neutron-l3-agent-PREROUTING");
    delete_rule(&d.fip, backend, "raw", jump);
    u.repaired(
        &format!("{backend}: deleted fip- raw PREROUTING jump"),
        &[want("iptables", &d.fip).with("lines", &["*raw"]).with(
            "lines",
            &["-I PREROUTING ", "-j neutron-l3-agent-PREROUTING"],
        )],
        || assert!(save(&d.fip, backend, false, "raw").lines().any(jump)),
    );
}

/// Every drift class of a `dvr_snat` router (iptables ones with the nft backend).
#[test]
fn dvr_snat_router_drift_is_seen_and_repaired() {
    let (t, d, cfg) = dvr_setup(
        &unique_id(3, "b23c-407e-ba26-a68b25803e49"),
        &unique_id(3, "8a18-4392-8618-d07b6ab565e3"),
        "nft",
    );
    let u = Under { t: &t, cfg };
    let started = Instant::now();
    u.first_apply();
    assert_backend(&d.snat, "nft", "neutron-l3-agent-snat");
    let (q, fip, snat) = (d.q.as_str(), d.fip.as_str(), d.snat.as_str());
    let (rfp, fpr) = (d.rfp.as_str(), d.fpr.as_str());
    let table16 = || in_ns(q, &["ip", "route", "show", "table", "16"]);
    let fip_route = format!("203.0.113.2 via 169.254.64.0 dev {fpr}");
    let fip_route_spec = format!("203.0.113.2/32 via 169.254.64.0 dev {fpr}");

    nsx(q, &["ip", "route", "flush", "table", "16"]);
    u.repaired(
        "flushed table 16",
        &[want("replace_route", q).with("route", &["default via 169.254.64.1", "table 16"])],
        || assert!(table16().contains(&format!("default via 169.254.64.1 dev {rfp}"))),
    );

    nsx(
        q,
        &["ip", "rule", "del", "from", "192.0.2.10", "lookup", "16"],
    );
    u.repaired(
        "deleted FIP policy rule",
        &[want("add_rule", q).with("rule", &["from 192.0.2.10/32 lookup 16"])],
        || assert!(in_ns(q, &["ip", "rule"]).contains("from 192.0.2.10 lookup 16")),
    );

    let fpr_table = rule_table(fip, &format!("iif {fpr}"));
    nsx(
        fip,
        &["ip", "rule", "del", "iif", fpr, "lookup", &fpr_table],
    );
    let iif = format!("iif {fpr} lookup {fpr_table}");
    u.repaired(
        "deleted iif fpr- rule",
        &[want("add_rule", fip).with("rule", &[&iif])],
        || assert!(in_ns(fip, &["ip", "rule"]).contains(&iif)),
    );

    let redirect = rule_table(q, "from 192.0.2.0/24");
    nsx(
        q,
        &[
            "ip",
            "rule",
            "del",
            "from",
            "192.0.2.0/24",
            "lookup",
            &redirect,
        ],
    );
    let rule = format!("from 192.0.2.0/24 lookup {redirect}");
    u.repaired(
        "deleted SNAT-redirect rule",
        &[want("add_rule", q).with("rule", &[&rule])],
        || assert!(in_ns(q, &["ip", "rule"]).contains(&rule)),
    );

    let (rfp_mac, fpr_mac) = (mac_of(q, rfp), mac_of(fip, fpr));
    nsx(q, &["ip", "link", "del", rfp]);
    u.repaired(
        "deleted rfp- device",
        &[
            want("create_link", fip)
                .with("dev", &[fpr])
                .with("peer", &[rfp])
                .with("peer_ns", &[q]),
            want("add_address", q)
                .with("dev", &[rfp])
                .with("net", &["169.254.64.0/31"]),
            want("replace_route", q).with("route", &["table 16"]),
            want("set_neighbour", q)
                .with("dev", &[rfp])
                .with("ip", &["169.254.64.1"])
                .with("mac", &[&fpr_mac]),
        ],
        || {
            assert!(in_ns(q, &["ip", "-br", "addr", "show", rfp]).contains("169.254.64.0/31"));
            assert!(table16().contains(&format!("default via 169.254.64.1 dev {rfp}")));
            assert!(in_ns(fip, &["ip", "route"]).contains(&fip_route));
            assert_eq!(
                (mac_of(q, rfp), mac_of(fip, fpr)),
                (rfp_mac.clone(), fpr_mac.clone())
            );
        },
    );

    nsx(fip, &["ip", "link", "del", FG]);
    u.repaired(
        "deleted fg- device",
        &[
            want("create_port", fip)
                .with("dev", &[FG])
                .with("bridge", &["br-ex"])
                .with("addresses", &["203.0.113.9/24"]),
            want("set_sysctl", fip).with("key", &["net.ipv4.conf.fg-68db4b10-1b.proxy_arp"]),
        ],
        || {
            assert!(in_ns(fip, &["ip", "-br", "addr", "show", FG]).contains("203.0.113.9/24"));
            assert_eq!(master_of(&t, "tap68db4b10-1b"), "br-ex");
            let proxy = in_ns(
                fip,
                &["sysctl", "-n", "net.ipv4.conf.fg-68db4b10-1b.proxy_arp"],
            );
            assert_eq!(proxy.trim(), "1");
        },
    );

    nsx(snat, &["ip", "link", "del", SG1]);
    u.repaired(
        "deleted sg- device",
        &[want("create_port", snat)
            .with("dev", &[SG1])
            .with("bridge", &["br-t1"])
            .with("addresses", &["192.0.2.9/24"])],
        || {
            assert!(in_ns(snat, &["ip", "-br", "addr", "show", SG1]).contains("192.0.2.9/24"));
            assert_eq!(master_of(&t, "tap2581be54-9c"), "br-t1");
        },
    );

    let permanent = |ns: &str, ip: &str, dev: &str, mac: &str| {
        let n = in_ns(ns, &["ip", "neigh", "show", ip, "dev", dev]);
        assert!(n.contains(mac) && n.contains("PERMANENT"), "{ns}: {n}");
    };
    nsx(q, &["ip", "neigh", "del", "169.254.64.1", "dev", rfp]);
    u.repaired(
        "missing permanent neighbour on rfp-",
        &[want("set_neighbour", q)
            .with("dev", &[rfp])
            .with("ip", &["169.254.64.1"])
            .with("mac", &[&fpr_mac])],
        || permanent(q, "169.254.64.1", rfp, &fpr_mac),
    );
    nsx(fip, &["ip", "neigh", "del", "169.254.64.0", "dev", fpr]);
    u.repaired(
        "missing permanent neighbour on fpr-",
        &[want("set_neighbour", fip)
            .with("dev", &[fpr])
            .with("ip", &["169.254.64.0"])
            .with("mac", &[&rfp_mac])],
        || permanent(fip, "169.254.64.0", fpr, &rfp_mac),
    );
    nsx(q, &["ip", "neigh", "del", "192.0.2.9", "dev", DQR1]);
    u.repaired(
        "missing permanent neighbour of the SNAT port on qr-",
        &[want("set_neighbour", q)
            .with("dev", &[DQR1])
            .with("ip", &["192.0.2.9"])
            .with("mac", &["fa:16:3e:80:8d:89"])],
        || permanent(q, "192.0.2.9", DQR1, "fa:16:3e:80:8d:89"),
    );

    dvr_iptables_cases(&u, &d, "nft");

    delete_namespace(snat, &[(&t.host.name, "tap16663def-59")]);
    u.repaired(
        "deleted snat- namespace",
        &[
            want("create_namespace", snat),
            want("create_port", snat).with("dev", &[SQG]),
            want("create_port", snat).with("dev", &[SG1]),
            want("iptables", snat).with("lines", &["neutron-l3-agent-snat"]),
        ],
        || {
            assert!(in_ns(snat, &["ip", "-br", "addr", "show", SQG]).contains("203.0.113.4/24"));
            assert_eq!(
                tcp_probe(&t.ext, &t.vm2, "203.0.113.1", 7280).unwrap(),
                "203.0.113.4",
                "SNAT through the rebuilt snat- namespace"
            );
        },
    );

    delete_namespace(fip, &[(&t.host.name, "tap68db4b10-1b"), (q, rfp)]);
    let status = u.repaired(
        "deleted fip- namespace",
        &[
            want("create_namespace", fip),
            want("create_port", fip).with("dev", &[FG]),
            want("create_link", fip).with("dev", &[fpr]),
            want("replace_route", fip).with("route", &[&fip_route_spec]),
            want("add_rule", fip).with("rule", &[&iif]),
            want("add_address", q).with("dev", &[rfp]),
            want("replace_route", q).with("route", &["table 16"]),
        ],
        || {
            assert!(in_ns(fip, &["ip", "route"]).contains(&fip_route));
            assert_eq!(
                tcp_probe(&t.vm1, &t.ext, "203.0.113.2", 7281).unwrap(),
                "203.0.113.1",
                "DNAT to the floating IP through the rebuilt fip- namespace"
            );
        },
    );
    let fip_health = status
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == fip)
        .unwrap()["health"]
        .clone();
    assert_eq!(fip_health, "missing", "{status}");

    let (code, _, err) = l3agent(&t, &["destroy", u.cfg()]);
    assert_eq!(code, Some(0), "{err}");
    let left = ok(&["ip", "netns", "list"]);
    assert!(
        !left.contains(q) && !left.contains(snat) && !left.contains(fip),
        "{left}"
    );
    let _ = std::fs::remove_file(&u.cfg);
    eprintln!("dvr_snat router, all cases: {:.2?}", started.elapsed());
}

/// The iptables drift of a `dvr_snat` router (qrouter-, snat-, fip-) with the legacy backend.
#[test]
fn dvr_snat_iptables_drift_with_the_legacy_backend() {
    let (t, d, cfg) = dvr_setup(
        &unique_id(4, "b23c-407e-ba26-a68b25803e49"),
        &unique_id(4, "8a18-4392-8618-d07b6ab565e3"),
        "legacy",
    );
    let u = Under { t: &t, cfg };
    u.first_apply();
    for (ns, chain) in [
        (&d.q, "neutron-l3-agent-PREROUTING"),
        (&d.snat, "neutron-l3-agent-snat"),
        (&d.fip, "neutron-l3-agent-PREROUTING"),
    ] {
        assert_backend(ns, "legacy", chain);
    }
    dvr_iptables_cases(&u, &d, "legacy");
    let (code, _, err) = l3agent(&t, &["destroy", u.cfg()]);
    assert_eq!(code, Some(0), "{err}");
    let _ = std::fs::remove_file(&u.cfg);
}
