//! A legacy router end to end, with real traffic, in a topology made only of throwaway
//! namespaces: a "host" namespace where l3agent runs (entered with `nsenter --net`) holding the
//! bridges, an "external" namespace on the external bridge with the gateway address, and VM
//! namespaces on tenant bridges. SNAT, DNAT, floating IP removal (with its conntrack entries)
//! and move, inter-subnet routing, idempotency, and a destroy that leaves the host as before.
#![allow(clippy::disallowed_methods)] // the test runs the binary under test

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use l3agent_testkit::{ok, tcp_probe};
use serde_json::{json, Value};

fn host_dump(t: &Topology) -> Vec<String> {
    let links: Value = serde_json::from_str(&t.host.ok(&["ip", "-j", "link", "show"])).unwrap();
    let mut names: Vec<String> = links
        .as_array()
        .unwrap()
        .iter()
        .map(|l| format!("{} {}", l["ifname"], l["master"]))
        .collect();
    names.sort();
    names.push(t.host.ok(&["ip", "rule", "show"]));
    // IPv6 link-local addresses and the multicast routes of a link appear asynchronously
    // after it comes up: not ours.
    let routes: String = t
        .host
        .ok(&["ip", "route", "show", "table", "all"])
        .lines()
        .filter(|l| !l.contains("fe80::") && !l.starts_with("multicast ff00::/8"))
        .collect();
    names.push(routes);
    names.push(t.host.save("nft", false));
    names.push(t.host.save("legacy", false));
    names
}

fn router_exec(args: &[&str]) -> String {
    in_ns(ROUTER_NS, args)
}

#[test]
fn legacy_router_end_to_end() {
    let t = topology(vec![ROUTER_NS.to_owned()]);
    let before = host_dump(&t);
    let router = example();
    let cfg = config(&t, &router);
    let cfg_s = cfg.to_str().unwrap();

    let (code, plan, err) = l3agent(&t, &["plan", cfg_s]);
    assert_eq!(code, Some(0), "{err}");
    assert!(has_change(&plan, "create_namespace", ROUTER_NS), "{plan}");
    let (code, report, err) = l3agent(&t, &["apply", cfg_s]);
    assert_eq!(code, Some(0), "apply failed: {err} {report}");
    let state = t.state.to_str().unwrap().to_owned();
    let (code, status, err) = l3agent(&t, &["status", "--state-path", &state]);
    assert_eq!(code, Some(0), "{err} {status}");
    assert!(
        status
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["health"] == "ok"),
        "{status}"
    );
    // Drift: someone removes an address; status and plan see it, apply repairs it.
    router_exec(&["ip", "addr", "del", "192.0.2.4/24", "dev", "qr-081ed401-2a"]);
    let (code, status, _) = l3agent(&t, &["status", "--state-path", &state]);
    let drifted = status
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["health"] == "drift")
        .cloned()
        .unwrap_or_default();
    assert_eq!(code, Some(1), "{status}");
    assert!(
        drifted["drift"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["change"] == "add_address" && c["net"] == "192.0.2.4/24"),
        "{status}"
    );
    let (_, plan, _) = l3agent(&t, &["plan", cfg_s]);
    assert!(has_change(&plan, "add_address", "192.0.2.4/24"), "{plan}");
    let (code, report, err) = l3agent(&t, &["apply", cfg_s]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(report["routers"][0]["status"], "converged", "{report}");
    let (code, report, err) = l3agent(&t, &["apply", cfg_s]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        report["routers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "unchanged"),
        "second apply changed things: {report}"
    );

    // Structure, as Neutron builds it.
    let links = router_exec(&["ip", "-br", "addr"]);
    assert!(
        links.contains("qr-081ed401-2a") && links.contains("192.0.2.4/24"),
        "{links}"
    );
    assert!(
        links.contains("qg-184a6791-c4")
            && links.contains("203.0.113.4/24")
            && links.contains("203.0.113.2/32"),
        "{links}"
    );
    let routes = router_exec(&["ip", "route"]);
    assert!(
        routes.contains("default via 203.0.113.1 dev qg-184a6791-c4"),
        "{routes}"
    );
    assert!(
        routes
            .lines()
            .any(|l| l.starts_with("100.64.5.0/24 dev qg-184a6791-c4")
                && l.trim_end().ends_with("scope link")),
        "{routes}"
    );
    assert!(routes.contains("100.64.8.0/24 via 203.0.113.1"), "{routes}");
    let nat = router_exec(&["iptables-save", "-t", "nat"]);
    assert!(
        nat.contains("-A neutron-l3-agent-snat -o qg-184a6791-c4 -j SNAT --to-source 203.0.113.4"),
        "{nat}"
    );
    assert!(
        nat.contains(
            "-A neutron-l3-agent-PREROUTING -d 203.0.113.2/32 -j DNAT --to-destination 192.0.2.10"
        ),
        "{nat}"
    );

    let write = |r: &Value| config(&t, r);
    let removed = |cfg: &PathBuf| {
        let (_, plan, _) = l3agent(&t, &["plan", cfg.to_str().unwrap()]);
        assert!(
            has_change(&plan, "delete_address", "203.0.113.2/32"),
            "{plan}"
        );
        assert!(
            has_change(&plan, "flush_conntrack", "203.0.113.2"),
            "{plan}"
        );
        assert!(!has_change(&plan, "create_port", ""), "{plan}");
    };
    let last = prove_traffic(&t, &router, &write, ROUTER_NS, 8080, &removed);

    // Destroy leaves the host exactly as before.
    let (code, _, err) = l3agent(&t, &["destroy", last.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!ok(&["ip", "netns", "list"]).contains(ROUTER_NS));
    assert_eq!(host_dump(&t), before);
    let _ = std::fs::remove_file(cfg);
    let _ = std::fs::remove_file(last);
}

/// The traffic every router type must carry, and floating IP removal and move, checked with
/// TCP servers that print the source they see. `write` turns a router dict into a config file,
/// `qrouter` is where the floating IP's DNAT happens (conntrack is checked there), `port` the
/// first of six TCP ports, `before_removal_apply` runs once the removal config is written.
/// Returns the last config.
fn prove_traffic(
    t: &Topology,
    router: &Value,
    write: &dyn Fn(&Value) -> PathBuf,
    qrouter: &str,
    port: u16,
    before_removal_apply: &dyn Fn(&PathBuf),
) -> PathBuf {
    assert_eq!(
        tcp_probe(&t.ext, &t.vm2, "203.0.113.1", port).unwrap(),
        "203.0.113.4",
        "SNAT: a VM without a floating IP leaves as the gateway address"
    );
    assert_eq!(
        tcp_probe(&t.vm1, &t.ext, "203.0.113.2", port + 1).unwrap(),
        "203.0.113.1",
        "DNAT: the VM sees the real source"
    );
    t.ext.ok(&["ping", "-c", "1", "-W", "2", "203.0.113.2"]);
    assert_eq!(
        tcp_probe(&t.ext, &t.vm1, "203.0.113.1", port + 2).unwrap(),
        "203.0.113.2",
        "the VM's own traffic leaves with its floating IP"
    );
    assert_eq!(
        tcp_probe(&t.vm2, &t.vm1, "198.51.100.10", port + 3).unwrap(),
        "192.0.2.10",
        "two subnets reach each other, unNATed"
    );

    // Remove the floating IP: no conntrack entry is left for it, and traffic stops.
    let mut no_fip = router.clone();
    no_fip["_floatingips"] = json!([]);
    let removal = write(&no_fip);
    before_removal_apply(&removal);
    let (code, report, err) = l3agent(t, &["apply", removal.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err} {report}");
    let ct = in_ns(qrouter, &["conntrack", "-L", "-d", "203.0.113.2"]);
    assert!(!ct.contains("203.0.113.2"), "conntrack entries left: {ct}");
    assert!(
        !in_ns(qrouter, &["ip", "rule"]).contains("lookup 16"),
        "FIP rule left"
    );
    assert!(
        tcp_probe(&t.vm1, &t.ext, "203.0.113.2", port + 4).is_err(),
        "removed floating IP still answers"
    );
    let _ = std::fs::remove_file(removal);

    // Move it to VM2: the traffic follows.
    let mut moved = router.clone();
    moved["_floatingips"][0]["fixed_ip_address"] = json!("198.51.100.10");
    let last = write(&moved);
    let (code, _, err) = l3agent(t, &["apply", last.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        tcp_probe(&t.vm2, &t.ext, "203.0.113.2", port + 5).unwrap(),
        "203.0.113.1"
    );
    last
}

/// SIGTERM (a clean stop between routers) and SIGKILL at arbitrary points of an apply: the next
/// apply converges and a destroy leaves nothing behind (no namespace, no host-side device).
#[test]
fn killed_apply_is_repaired_by_the_next() {
    let t = topology(
        (0..6u32)
            .map(|i| format!("qrouter-{i:08x}-aaaa-4000-8000-000000000000"))
            .collect(),
    );
    let before = host_dump(&t);
    let mut routers = Vec::new();
    for i in 0..6u32 {
        let mut r = example();
        r["id"] = json!(format!("{i:08x}-aaaa-4000-8000-000000000000"));
        for (k, port) in r["_interfaces"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .enumerate()
        {
            port["id"] = json!(format!("{}{i:07x}-0000-4000-8000-000000000000", k + 1));
        }
        r["gw_port"]["id"] = json!(format!("9{i:07x}-0000-4000-8000-000000000000"));
        // Floating IPs and port addresses are unique across a host's routers.
        r["_floatingips"][0]["floating_ip_address"] = json!(format!("203.0.113.{}", 100 + i));
        l3agent_testkit::renumber_router(&mut r, u8::try_from(10 + i).unwrap());
        routers.push(r);
    }
    let cfg = json!({
        "agent": {"mode": "legacy", "host": "host-a", "state_path": t.state,
                  "bridges": {NET_T1: "br-t1", NET_T2: "br-t2", NET_EX: "br-ex"}},
        "routers": routers,
    });
    let path = std::env::temp_dir().join(format!("l3agent-kill-{}.json", std::process::id()));
    std::fs::write(&path, cfg.to_string()).unwrap();
    let netns = format!("--net=/run/netns/{}", t.host.name);
    for (signal, delay_ms) in [("-TERM", 60u64), ("-KILL", 30), ("-KILL", 120)] {
        // nsenter execs l3agent: the child's pid is l3agent's.
        let child = Command::new("nsenter")
            .args([
                netns.as_str(),
                env!("CARGO_BIN_EXE_l3agent"),
                "apply",
                path.to_str().unwrap(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status();
        let out = child.wait_with_output().unwrap();
        if signal == "-TERM" {
            // Either it finished before the signal, or it stopped cleanly between routers.
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.code() == Some(0) || stderr.contains("interrupted by a signal"),
                "{:?} {stderr}",
                out.status
            );
        }
    }
    let (code, report, err) = l3agent(&t, &["apply", path.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err} {report}");
    let (code, report, _) = l3agent(&t, &["apply", path.to_str().unwrap(), "--full"]);
    assert_eq!(code, Some(0));
    assert!(
        report["routers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "unchanged"),
        "{report}"
    );
    let (code, _, err) = l3agent(
        &t,
        &[
            "destroy",
            "--all",
            "--state-path",
            t.state.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(!ok(&["ip", "netns", "list"]).contains("-aaaa-4000-8000-"));
    assert_eq!(host_dump(&t), before);
    let _ = std::fs::remove_file(path);
}

/// A distributed router with its SNAT on the same host (`dvr_snat`): the router's traffic takes
/// the DVR paths (floating IPs through the fip- namespace, the rest redirected to snat-).
#[test]
fn dvr_snat_router_end_to_end() {
    let qrouter = format!("qrouter-{DVR_ID}");
    let snat = format!("snat-{DVR_ID}");
    let fip = format!("fip-{DVR_EX}");
    let t = topology(vec![qrouter.clone(), snat.clone(), fip.clone()]);
    let before = host_dump(&t);
    let router: Value = serde_json::from_str(include_str!(
        "../../router/tests/data/neutron-router-dvr.json"
    ))
    .unwrap();
    let cfg = dvr_config(&t, &router, "dvr_snat");
    let cfg_s = cfg.to_str().unwrap();
    let (code, report, err) = l3agent(&t, &["apply", cfg_s]);
    assert_eq!(code, Some(0), "apply failed: {err} {report}");
    let (code, report, err) = l3agent(&t, &["apply", cfg_s, "--full"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        report["routers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "unchanged"),
        "second (full) apply changed things: {report}"
    );

    // Structure (Neutron's functional-test view).
    let q = in_ns(&qrouter, &["ip", "-br", "addr"]);
    assert!(
        q.contains("qr-55989303-d9")
            && q.contains("192.0.2.4/24")
            && q.contains("rfp-fb221852-b")
            && q.contains("169.254.64.0/31"),
        "{q}"
    );
    assert!(
        !q.contains("qg-"),
        "the gateway must not be in qrouter: {q}"
    );
    let rules = in_ns(&qrouter, &["ip", "rule"]);
    assert!(
        rules.contains("32768:\tfrom 192.0.2.10 lookup 16"),
        "{rules}"
    );
    assert!(
        rules.contains("from 192.0.2.0/24 lookup 100000")
            || rules.contains("from 192.0.2.0/24 lookup 100001"),
        "{rules}"
    );
    assert!(in_ns(&qrouter, &["ip", "route", "show", "table", "16"])
        .contains("default via 169.254.64.1 dev rfp-fb221852-b"));
    let f = in_ns(&fip, &["ip", "-br", "addr"]);
    assert!(
        f.contains("fg-68db4b10-1b")
            && f.contains("203.0.113.9/24")
            && f.contains("fpr-fb221852-b")
            && f.contains("169.254.64.1/31"),
        "{f}"
    );
    assert_eq!(
        in_ns(
            &fip,
            &["sysctl", "-n", "net.ipv4.conf.fg-68db4b10-1b.proxy_arp"]
        )
        .trim(),
        "1"
    );
    let frules = in_ns(&fip, &["ip", "rule"]);
    assert!(
        frules.contains("iif fpr-fb221852-b lookup 2852012033"),
        "{frules}"
    );
    assert!(
        in_ns(&fip, &["ip", "route"]).contains("203.0.113.2 via 169.254.64.0 dev fpr-fb221852-b")
    );
    assert!(in_ns(&fip, &["iptables-save", "-t", "raw"]).contains("-j CT --notrack"));
    let s = in_ns(&snat, &["ip", "-br", "addr"]);
    assert!(
        s.contains("sg-2581be54-9c")
            && s.contains("192.0.2.9/24")
            && s.contains("qg-16663def-59")
            && s.contains("203.0.113.4/24"),
        "{s}"
    );
    assert!(in_ns(&snat, &["iptables-save", "-t", "nat"])
        .contains("-A neutron-l3-agent-snat -o qg-16663def-59 -j SNAT --to-source 203.0.113.4"));

    let write = |r: &Value| dvr_config(&t, r, "dvr_snat");
    let last = prove_traffic(&t, &router, &write, &qrouter, 9080, &|_| {});

    let (code, destroyed, err) = l3agent(&t, &["destroy", last.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    let left = ok(&["ip", "netns", "list"]);
    assert!(
        !left.contains(&qrouter) && !left.contains(&snat) && !left.contains(&fip),
        "{left} {destroyed}"
    );
    assert_eq!(host_dump(&t), before);
    let _ = std::fs::remove_file(cfg);
    let _ = std::fs::remove_file(last);
}

/// A `dvr` (compute) host: qrouter and fip- are built, the SNAT namespace is not (it lives on
/// the network node), and the redirect still points at the SNAT ports.
#[test]
fn dvr_compute_node_structure() {
    // Namespace names are global: this test uses its own router and external network ids.
    let (rid, ext) = (
        "0c0c0c0c-b23c-407e-ba26-a68b25803e49",
        "22222222-8a18-4392-8618-d07b6ab565e3",
    );
    let qrouter = format!("qrouter-{rid}");
    let fip = format!("fip-{ext}");
    let t = topology(vec![qrouter.clone(), fip.clone(), format!("snat-{rid}")]);
    let text = include_str!("../../router/tests/data/neutron-router-dvr.json")
        .replace(DVR_ID, rid)
        .replace(DVR_EX, ext);
    let mut router: Value = serde_json::from_str(&text).unwrap();
    router["gw_port_host"] = json!("network-node");
    let cfg = t
        .state
        .with_extension(format!("{}.json", l3agent_testkit::unique()));
    let doc = json!({
        "agent": {"mode": "dvr", "host": "host-a", "state_path": t.state,
                  "bridges": {DVR_T1: "br-t1", DVR_T2: "br-t2", ext: "br-ex"}},
        "routers": [router],
    });
    std::fs::write(&cfg, doc.to_string()).unwrap();
    let (code, report, err) = l3agent(&t, &["apply", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err} {report}");
    assert!(!ok(&["ip", "netns", "list"]).contains(&format!("snat-{rid}")));
    // Neutron's functional-test view of a compute node: namespaces, devices, rules, routes,
    // iptables.
    let rules = in_ns(&qrouter, &["ip", "rule"]);
    assert!(
        rules.contains("32768:\tfrom 192.0.2.10 lookup 16"),
        "{rules}"
    );
    assert!(
        rules.contains("from 192.0.2.0/24 lookup 1000")
            && rules.contains("from 198.51.100.0/24 lookup 1000"),
        "SNAT redirect rules: {rules}"
    );
    assert_eq!(
        rules.lines().count(),
        3 + 1 + 2,
        "3 defaults + 1 FIP + 2 SNAT redirect: {rules}"
    );
    assert!(in_ns(&qrouter, &["ip", "route", "show", "table", "16"])
        .contains("default via 169.254.64.1 dev rfp-0c0c0c0c-b"));
    let redirect_tables: Vec<String> = rules
        .lines()
        .filter(|l| l.contains("lookup 1000"))
        .filter_map(|l| l.rsplit(' ').next().map(str::to_owned))
        .collect();
    for t in &redirect_tables {
        let routes = in_ns(&qrouter, &["ip", "route", "show", "table", t]);
        assert!(
            routes.contains("default via 192.0.2.9") || routes.contains("default via 198.51.100.9"),
            "table {t}: {routes}"
        );
    }
    let nat = in_ns(&qrouter, &["iptables-save", "-t", "nat"]);
    assert!(nat.contains("-A neutron-l3-agent-PREROUTING -d 203.0.113.2/32 -i rfp-0c0c0c0c-b -j DNAT --to-destination 192.0.2.10"), "{nat}");
    assert!(nat.contains("-A neutron-l3-agent-POSTROUTING ! -o rfp-0c0c0c0c-b -m conntrack ! --ctstate DNAT -j ACCEPT"), "{nat}");
    let links = in_ns(&fip, &["ip", "-br", "link"]);
    assert!(
        links.contains("fg-68db4b10-1b") && links.contains("fpr-0c0c0c0c-b"),
        "{links}"
    );
    assert!(in_ns(&fip, &["ip", "rule"]).contains("iif fpr-0c0c0c0c-b lookup 2852012033"));
    assert!(in_ns(&fip, &["ip", "route", "show", "table", "2852012033"])
        .contains("default via 203.0.113.1 dev fg-68db4b10-1b"));
    assert!(
        in_ns(&fip, &["ip", "route"]).contains("203.0.113.2 via 169.254.64.0 dev fpr-0c0c0c0c-b")
    );
    assert!(in_ns(&fip, &["iptables-save", "-t", "raw"])
        .contains("-A neutron-l3-agent-PREROUTING -j CT --notrack"));
    assert!(
        in_ns(&fip, &["ip", "neigh", "show", "dev", "fpr-0c0c0c0c-b"]).contains("169.254.64.0")
    );
    let (code, _, err) = l3agent(&t, &["destroy", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    let left = ok(&["ip", "netns", "list"]);
    assert!(!left.contains(&qrouter) && !left.contains(&fip), "{left}");
    let _ = std::fs::remove_file(cfg);
}

/// A router that fails on its first convergence (its bridge does not exist) is reported with
/// the cause, what the run created for it is removed, and the other router converges anyway.
#[test]
fn a_failing_router_is_undone_and_others_converge() {
    let bad_id = "badbadba-d0ba-4691-820c-8053abf50b8d";
    let good_id = "600d600d-d0ba-4691-820c-8053abf50b8d";
    let t = topology(vec![
        format!("qrouter-{bad_id}"),
        format!("qrouter-{good_id}"),
    ]);
    let mut good = example();
    good["id"] = json!(good_id);
    let mut bad = example();
    bad["id"] = json!(bad_id);
    for (k, port) in bad["_interfaces"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .enumerate()
    {
        port["id"] = json!(format!("b{k}adbadb-0000-4000-8000-000000000000"));
    }
    bad["gw_port"]["id"] = json!("b9adbadb-0000-4000-8000-000000000000");
    bad["_floatingips"] = json!([]);
    l3agent_testkit::renumber_router(&mut bad, 5);
    // What validation and the preflight cannot know: the bad router's namespace name is
    // taken by a directory (not a namespace, not a file l3agent may replace).
    let blocker = std::path::PathBuf::from(format!("/run/netns/qrouter-{bad_id}"));
    std::fs::create_dir(&blocker).unwrap();
    let cfg = json!({
        "agent": {"mode": "legacy", "host": "host-a", "state_path": t.state,
                  "bridges": {NET_T1: "br-t1", NET_T2: "br-t2", NET_EX: "br-ex"}},
        "routers": [good, bad],
    });
    let path = t
        .state
        .with_extension(format!("{}.json", l3agent_testkit::unique()));
    std::fs::write(&path, cfg.to_string()).unwrap();
    let (code, report, _) = l3agent(&t, &["apply", path.to_str().unwrap()]);
    std::fs::remove_dir(&blocker).unwrap();
    assert_eq!(code, Some(1), "{report}");
    let routers = report["routers"].as_array().unwrap();
    let b = routers.iter().find(|r| r["id"] == bad_id).unwrap();
    assert_eq!(b["status"], "failed");
    assert!(b["error"].as_str().unwrap().contains(bad_id), "{b}");
    assert_eq!(
        routers.iter().find(|r| r["id"] == good_id).unwrap()["status"],
        "converged"
    );
    let list = ok(&["ip", "netns", "list"]);
    assert!(list.contains(good_id));
    // The bad router's host ends were not left behind; the next apply converges both.
    let links = t.host.ok(&["ip", "-o", "link", "show"]);
    assert!(!links.contains("tapb0adbadb"), "{links}");
    let (code, report, err) = l3agent(&t, &["apply", path.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err} {report}");
    let (code, _, err) = l3agent(&t, &["destroy", path.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    let _ = std::fs::remove_file(path);
}
