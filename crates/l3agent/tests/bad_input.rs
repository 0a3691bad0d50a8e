//! Bad input, one row per class: a working router is applied once, then every row runs the
//! CLI on a bad config or rules file and must exit 2, name the field (in the message and in
//! the `--json` error object), and leave the kernel (links, addresses, routes, rules,
//! iptables of both backends, in the host and the router namespaces) AND the state directory
//! byte for byte as they were. Needs root (throwaway namespaces only).
#![allow(clippy::disallowed_methods)] // the test runs the binary under test and `ip`

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::{json, Value};

/// Everything a bad input must not change.
fn snapshot(t: &Topology) -> Vec<String> {
    let mut out = Vec::new();
    for (ns, label) in [(t.host.name.as_str(), "host"), (ROUTER_NS, "router")] {
        for args in [
            &["ip", "-o", "link", "show"][..],
            &["ip", "addr", "show"],
            &["ip", "route", "show", "table", "all"],
            &["ip", "-6", "route", "show", "table", "all"],
            &["ip", "rule", "show"],
            &["iptables-nft-save"],
            &["ip6tables-nft-save"],
            &["iptables-legacy-save"],
        ] {
            let text: String = in_ns(ns, args)
                .lines()
                // Counters and the asynchronous IPv6 link-local/multicast entries move on
                // their own.
                .filter(|l| !l.starts_with('#') && !l.contains("fe80::") && !l.contains("ff00::/8"))
                .map(|l| {
                    l.split_once(" [")
                        .map_or(l.to_owned(), |(a, _)| a.to_owned())
                        + "\n"
                })
                .collect();
            out.push(format!("{label} {args:?}\n{text}"));
        }
    }
    let mut files: Vec<String> = Vec::new();
    walk(&t.state, &mut files);
    files.sort();
    out.extend(files);
    out
}

fn walk(dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        out.push(format!("{}: absent", dir.display()));
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            let body = std::fs::read(&p).unwrap_or_default();
            out.push(format!(
                "{}: {}",
                p.display(),
                String::from_utf8_lossy(&body)
            ));
        }
    }
}

/// A config as `config()` writes it, as a JSON value to edit.
fn good_config(t: &Topology) -> Value {
    json!({
        "agent": {"mode": "legacy", "host": "host-a", "state_path": t.state,
                  "bridges": {NET_T1: "br-t1", NET_T2: "br-t2", NET_EX: "br-ex"}},
        "routers": [example()],
    })
}

enum Input {
    /// A config, as text, and its extension.
    Text(&'static str, String),
}

/// Runs one row: exit 2, `expect` in stderr and in the JSON error's problems, nothing changed.
fn row(t: &Topology, class: &str, input: Input, extra: &[&str], expect: &str) {
    let Input::Text(ext, text) = input;
    let path = t
        .state
        .with_extension(format!("{}.{ext}", l3agent_testkit::unique()));
    std::fs::write(&path, text).unwrap();
    let before = snapshot(t);
    let mut args = vec!["apply", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (code, json, stderr) = l3agent(t, &args);
    let after = snapshot(t);
    std::fs::remove_file(&path).ok();
    assert_eq!(code, Some(2), "{class}: exit {code:?}, stderr {stderr}");
    assert!(
        stderr.contains(expect),
        "{class}: {expect:?} not in {stderr}"
    );
    assert!(
        stderr.len() < 4000,
        "{class}: {} bytes of error",
        stderr.len()
    );
    assert_eq!(json["error"]["exit_code"], 2, "{class}: {json}");
    let problems = json["error"]["problems"].to_string();
    let field = expect.split(':').next().unwrap();
    assert!(
        problems.contains(field) || json["error"]["message"].to_string().contains(field),
        "{class}: {field:?} not in {json}"
    );
    for (b, a) in before.iter().zip(&after) {
        if b != a {
            let gone: Vec<&str> = b.lines().filter(|l| !a.contains(l)).collect();
            let new: Vec<&str> = a.lines().filter(|l| !b.contains(l)).collect();
            panic!("{class}: changed; gone {gone:#?}, new {new:#?}");
        }
    }
    assert_eq!(before.len(), after.len(), "{class}: state files changed");
}

fn edit(t: &Topology, f: impl FnOnce(&mut Value)) -> Input {
    let mut v = good_config(t);
    f(&mut v);
    Input::Text("json", v.to_string())
}

#[test]
fn every_class_of_bad_input_exits_2_names_the_field_and_changes_nothing() {
    let t = topology(vec![ROUTER_NS.to_owned()]);
    let cfg = config(&t, &example());
    let (code, _, stderr) = l3agent(&t, &["apply", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stderr}");
    let yaml = |s: &str| Input::Text("yaml", s.to_owned());
    let agent_yaml = format!(
        "agent:\n  mode: legacy\n  host: host-a\n  state_path: {}\n",
        t.state.display()
    );
    let mut cases = 0;
    let mut run = |class: &str, input: Input, extra: &[&str], expect: &str| {
        row(&t, class, input, extra, expect);
        cases += 1;
    };
    // Never destructive by accident.
    run("empty file", yaml(""), &[], "the document is empty");
    run(
        "comment-only YAML",
        yaml("# routers go here\n"),
        &[],
        "the document is empty",
    );
    run("null", yaml("null\n"), &[], "the document is empty");
    run(
        "JSON array",
        Input::Text("json", "[]".into()),
        &[],
        ".: the document must be a mapping",
    );
    run(
        "routers: with no value",
        yaml(&format!("{agent_yaml}routers:\n")),
        &[],
        "routers: no value",
    );
    run(
        "no routers key",
        yaml(&agent_yaml),
        &[],
        "missing field `routers`",
    );
    // Errors by path, values cut, size and nesting bounded.
    run(
        "JSON type error",
        edit(&t, |v| v["routers"][0]["admin_state_up"] = "yes".into()),
        &[],
        "routers[0].admin_state_up: invalid type: string \"yes\", expected a boolean",
    );
    run(
        "huge value",
        edit(&t, |v| v["routers"][0]["id"] = "a".repeat(1 << 20).into()),
        &[],
        "routers[0].id: invalid value \"aaaa",
    );
    run(
        "over the size cap",
        edit(&t, |_| {}),
        &["--max-input-bytes", "100"],
        "larger than the limit of 100 bytes",
    );
    run(
        "deep nesting",
        yaml(&"[".repeat(100_000)),
        &[],
        "nested deeper than 32 levels",
    );
    // One-way doors and half-applied failures.
    run(
        "route replacing the connected gateway route",
        edit(
            &t,
            |v| {
                v["routers"][0]["routes"] =
                    json!([{"destination": "203.0.113.0/24", "nexthop": "203.0.113.1"}])
            },
        ),
        &[],
        "routers[0].routes[0].destination: 203.0.113.0/24 is the connected subnet",
    );
    run(
        "bridge mapping to a non-bridge",
        edit(&t, |v| v["agent"]["bridges"][NET_EX] = "p-ext".into()),
        &[],
        "agent.bridges.65566f91-133a-44ff-87f5-ecffc1193d3d: p-ext is a veth device, not a bridge",
    );
    run(
        "missing bridge",
        edit(&t, |v| v["agent"]["bridges"][NET_EX] = "br-nope".into()),
        &[],
        "agent.bridges.65566f91-133a-44ff-87f5-ecffc1193d3d: bridge br-nope does not exist",
    );
    run(
        "duplicated port id",
        edit(&t, |v| {
            v["routers"][0]["_interfaces"][1]["id"] =
                v["routers"][0]["_interfaces"][0]["id"].clone()
        }),
        &[],
        "routers[0]._interfaces[1].id: port 081ed401-2ab1-4bd0-968b-e05235398bb2 is also",
    );
    run(
        "IPv6 port with MTU below 1280",
        edit(&t, |v| {
            let p = &mut v["routers"][0]["_interfaces"][1];
            p["subnets"][0]["cidr"] = "2001:db8:1::/64".into();
            p["subnets"][0]["gateway_ip"] = "2001:db8:1::1".into();
            p["fixed_ips"] =
                json!([{"ip_address": "2001:db8:1::1", "subnet_id": p["subnets"][0]["id"]}]);
            p["mtu"] = 1000.into();
        }),
        &[],
        "routers[0]._interfaces[1].mtu: 1000 is below 1280",
    );
    run(
        "floating IPs without a gateway",
        edit(&t, |v| v["routers"][0]["gw_port"] = Value::Null),
        &[],
        "routers[0]._floatingips[0].floating_ip_address: 203.0.113.2: a floating IP needs a router with a gateway",
    );
    run(
        "floating IP outside the gateway's subnets",
        edit(&t, |v| {
            v["routers"][0]["_floatingips"][0]["floating_ip_address"] = "198.18.0.1".into()
        }),
        &[],
        "routers[0]._floatingips[0].floating_ip_address: 198.18.0.1 is in no subnet",
    );
    run(
        "distributed router on a legacy agent",
        edit(&t, |v| v["routers"][0]["distributed"] = true.into()),
        &[],
        "routers[0].distributed: a distributed router needs a dvr or dvr_snat agent",
    );
    run(
        "state_path with ..",
        edit(&t, |v| {
            v["agent"]["state_path"] = format!("{}/../x", t.state.display()).into()
        }),
        &[],
        "agent.state_path:",
    );
    run(
        "id with a leading dash",
        edit(&t, |v| v["routers"][0]["id"] = "-rf".into()),
        &[],
        "routers[0].id: invalid value \"-rf\"",
    );
    run(
        "id with a bidi override",
        edit(&t, |v| v["routers"][0]["id"] = "87c7c2ae\u{202e}".into()),
        &[],
        "routers[0].id: invalid value \"87c7c2ae\\u{202e}\"",
    );
    run(
        "agent.host with a newline",
        edit(&t, |v| v["agent"]["host"] = "host-a\nfake log line".into()),
        &[],
        "agent.host: \"host-a\\nfake log line\"",
    );
    run(
        "unknown interface driver",
        edit(&t, |v| v["agent"]["interface_driver"] = "ovs".into()),
        &[],
        "agent.interface_driver: unknown variant `ovs`, expected `linuxbridge` or `openvswitch`",
    );
    run(
        "Linux bridges with openvswitch",
        edit(&t, |v| {
            v["agent"]["interface_driver"] = "openvswitch".into()
        }),
        &[],
        "agent.bridges: is only used with interface_driver: linuxbridge",
    );
    run(
        "integration_bridge with linuxbridge",
        edit(&t, |v| v["agent"]["integration_bridge"] = "br-int".into()),
        &[],
        "agent.integration_bridge: is only used with interface_driver: openvswitch",
    );
    let ovs = |v: &mut Value, db: &str| {
        v["agent"]["interface_driver"] = "openvswitch".into();
        v["agent"].as_object_mut().unwrap().remove("bridges");
        v["agent"]["ovsdb"] = db.into();
    };
    run(
        "OVSDB over TCP",
        edit(&t, |v| ovs(v, "tcp:127.0.0.1:6640")),
        &[],
        "agent.ovsdb: \"tcp:127.0.0.1:6640\": only unix:PATH is supported",
    );
    run(
        "unreachable OVSDB",
        edit(&t, |v| ovs(v, "unix:/nonexistent/l3agent/db.sock")),
        &[],
        "agent.ovsdb: connecting to ovsdb-server at /nonexistent/l3agent/db.sock",
    );
    // Semantic checks as neutron-server would refuse (unit-tested in crates/router's
    // `what_neutron_server_would_refuse_is_refused_by_path`), here end to end.
    let fip = |v: &mut Value, a: &str| {
        v["routers"][0]["_floatingips"][0]["floating_ip_address"] = a.into()
    };
    run(
        "floating IP = the gateway subnet's network address",
        edit(&t, |v| fip(v, "203.0.113.0")),
        &[],
        "routers[0]._floatingips[0].floating_ip_address: 203.0.113.0 is the network address",
    );
    run(
        "floating IP = the gateway subnet's broadcast address",
        edit(&t, |v| fip(v, "203.0.113.255")),
        &[],
        "routers[0]._floatingips[0].floating_ip_address: 203.0.113.255 is the broadcast address",
    );
    run(
        "floating IP = the gateway subnet's gateway_ip",
        edit(&t, |v| fip(v, "203.0.113.1")),
        &[],
        "routers[0]._floatingips[0].floating_ip_address: 203.0.113.1 is the gateway_ip of subnet",
    );
    run(
        "fixed IP outside its subnet",
        edit(&t, |v| {
            v["routers"][0]["_interfaces"][0]["fixed_ips"][0]["ip_address"] = "198.18.0.4".into()
        }),
        &[],
        "routers[0]._interfaces[0].fixed_ips[0].ip_address: 198.18.0.4 is outside its subnet",
    );
    run(
        "gateway_ip outside its subnet",
        edit(&t, |v| {
            v["routers"][0]["_interfaces"][0]["subnets"][0]["gateway_ip"] = "198.51.100.1".into()
        }),
        &[],
        "routers[0]._interfaces[0].subnets[0].gateway_ip: 198.51.100.1 is outside its subnet",
    );
    run(
        "extra route next hop not on-link",
        edit(&t, |v| {
            v["routers"][0]["routes"][0]["nexthop"] = "198.18.0.1".into()
        }),
        &[],
        "routers[0].routes[0].nexthop: 198.18.0.1 is not on-link",
    );
    run(
        "multicast MAC",
        edit(&t, |v| {
            v["routers"][0]["_interfaces"][0]["mac_address"] = "01:00:5e:00:00:01".into()
        }),
        &[],
        "routers[0]._interfaces[0].mac_address: invalid value \"01:00:5e:00:00:01\": is a multicast address",
    );
    run(
        "port id with a bidi override",
        edit(&t, |v| {
            v["routers"][0]["_interfaces"][0]["id"] = "081ed401\u{202e}".into()
        }),
        &[],
        "routers[0]._interfaces[0].id: invalid value \"081ed401\\u{202e}\"",
    );
    run(
        "network id with a zero-width space",
        edit(&t, |v| {
            v["routers"][0]["_interfaces"][0]["network_id"] = "90e4912c\u{200b}".into()
        }),
        &[],
        "routers[0]._interfaces[0].network_id: invalid value \"90e4912c\\u{200b}\"",
    );
    run(
        "floating IP id with a bidi override",
        edit(&t, |v| {
            v["routers"][0]["_floatingips"][0]["id"] = "9cb45fce\u{202e}".into()
        }),
        &[],
        "routers[0]._floatingips[0].id: invalid value \"9cb45fce\\u{202e}\"",
    );
    run(
        "bridge mapping key with a leading dash",
        edit(&t, |v| v["agent"]["bridges"]["-rf"] = "br-t1".into()),
        &[],
        "agent.bridges: invalid value \"-rf\"",
    );
    // A "billion laughs": 10 * 8^20 scalars if expanded. The anchors sit in a field Neutron's
    // dicts may carry and l3agent ignores (ignoring does not follow aliases); the alias is
    // used where a router belongs, and refused by type at its first level.
    let mut bomb = String::from("[&a [x,x,x,x,x,x,x,x,x,x]");
    for i in 0..20 {
        let p = if i == 0 {
            "a".to_owned()
        } else {
            format!("b{}", i - 1)
        };
        bomb.push_str(&format!(
            ", &b{i} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]"
        ));
    }
    bomb.push(']');
    run(
        "YAML alias bomb",
        yaml(&format!(
            "{agent_yaml}routers:\n  - id: {LEGACY_ID}\n    x: {bomb}\n  - *b19\n"
        )),
        &[],
        "routers[1]: invalid type: sequence",
    );
    assert_eq!(cases, 39);
}

/// Under `ip netns exec` (a private mount namespace) the namespaces l3agent creates would
/// vanish at exit: refused with exit 2 and what to do instead; nothing is created.
#[test]
fn apply_under_ip_netns_exec_is_refused() {
    // Its own router id: the tests of this file run in parallel.
    const ID: &str = "1e7d1a5e-0000-4000-8000-000000000001";
    let ns = format!("qrouter-{ID}");
    let t = topology(vec![ns.clone()]);
    let mut router = example();
    router["id"] = ID.into();
    let cfg = config(&t, &router);
    let o = Command::new("timeout")
        .args(["60", "ip", "netns", "exec", &t.host.name])
        .arg(env!("CARGO_BIN_EXE_l3agent"))
        .args(["apply", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("private mount namespace"), "{stderr}");
    assert!(stderr.contains("nsenter --net="), "{stderr}");
    assert!(!Path::new(&format!("/run/netns/{ns}")).exists());
    assert!(!t.state.exists(), "the state directory was created");
}

/// `validate` runs the same checks as apply offline: no root needed, no kernel touched.
#[test]
fn validate_checks_offline_with_the_exit_codes_of_apply() {
    let t = topology(vec![]);
    let cfg = config(&t, &example());
    let bin = env!("CARGO_BIN_EXE_l3agent");
    // As nobody: no privilege is needed.
    let o = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", bin])
        .args(["validate", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("valid: 1 router(s), 1 floating IP(s)"));
    let bad = t.state.with_extension("bad.json");
    let mut v = good_config(&t);
    v["routers"][0]["routes"] = json!([{"destination": "100.64.8.0/24", "nexthop": "203.0.113.4"}]);
    std::fs::write(&bad, v.to_string()).unwrap();
    let o = Command::new(bin)
        .args(["validate", bad.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        j["error"]["problems"][0]["path"], "routers[0].routes[0].nexthop",
        "{j}"
    );
    std::fs::remove_file(&bad).ok();
    assert!(!t.state.exists());
}

/// Bad rules files, one row per class, on both iptables backends: exit 2, the field named
/// (message and `--json`), and the namespace's rules of both backends and the iptables
/// applied-state directory (a private one here, `/run/l3agent/iptables` in production)
/// unchanged.
#[test]
fn bad_rules_files_exit_2_on_both_backends_and_apply_nothing() {
    let bin = env!("CARGO_BIN_EXE_l3agent");
    let dir = std::env::temp_dir().join(format!("l3agent-bad-rules-{}", l3agent_testkit::unique()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = "wrap_name: l3agent\nipv4:\n  filter:\n    chains: [fw]\n    rules:\n      - {chain: INPUT, rule: \"-j $fw\"}\n      - {chain: fw, rule: \"-p tcp --dport 22 -j ACCEPT\", comment: ssh}\n";
    let rule = |r: &str| {
        format!("wrap_name: l3agent\nipv4:\n  filter:\n    rules:\n      - {{chain: INPUT, rule: {r:?}}}\n")
    };
    let rows: Vec<(&str, String, &str)> = vec![
        ("empty file", String::new(), "the document is empty"),
        ("no rules and no wrap name", "options: {nat: true}\n".into(), "wrap_name: "),
        ("--modprobe abbreviated with =", rule("--modp=/bin/sh -j ACCEPT"), "ipv4.filter.rules[0].rule"),
        ("-M glued", rule("-M/bin/sh -j ACCEPT"), "ipv4.filter.rules[0].rule"),
        ("--set-counters abbreviated", rule("--set-c 1 2 -j ACCEPT"), "ipv4.filter.rules[0].rule"),
        ("host name as source", rule("-s host.example -j ACCEPT"), "ipv4.filter.rules[0].rule"),
        ("address list glued", rule("-s192.0.2.1,192.0.2.2 -j ACCEPT"), "ipv4.filter.rules[0].rule"),
        ("DNAT to a host name", rule("-j DNAT --to-d=host.example"), "ipv4.filter.rules[0].rule"),
        ("a module naming a file", rule("-m bpf --object-pinned /sys/fs/bpf/x -j ACCEPT"), "ipv4.filter.rules[0].rule"),
        ("table switch in a rule", rule("--table=nat -j ACCEPT"), "ipv4.filter.rules[0].rule"),
        (
            "bidi override in a comment",
            "wrap_name: l3agent\nipv4:\n  filter:\n    rules:\n      - {chain: INPUT, rule: \"-j ACCEPT\", comment: \"ok\u{202e}x\"}\n".into(),
            "ipv4.filter.rules[0].comment",
        ),
        (
            "a comment impersonating the ownership marker",
            "wrap_name: l3agent\nipv4:\n  filter:\n    rules:\n      - {chain: INPUT, rule: \"-j ACCEPT\", comment: \"l3agent:other:0123456789abcdef\"}\n".into(),
            "ipv4.filter.rules[0].comment",
        ),
        (
            "wrap: false into an undeclared chain",
            "wrap_name: l3agent\nipv4:\n  filter:\n    rules:\n      - {chain: not-declared, rule: \"-j ACCEPT\", wrap: false}\n".into(),
            "ipv4.filter.rules[0].chain",
        ),
        (
            "filter_top_chain: INPUT (used to panic)",
            "wrap_name: l3agent\noptions: {filter_top_chain: INPUT}\n".into(),
            "options.filter_top_chain",
        ),
        (
            "rules: with no value",
            "wrap_name: l3agent\nipv4:\n  filter:\n    rules:\n".into(),
            "ipv4.filter.rules: no value",
        ),
        (
            "JSON type error",
            r#"{"wrap_name": "l3agent", "ipv4": {"filter": {"rules": [{"chain": "INPUT", "rule": "-j ACCEPT", "top": "yes"}]}}}"#.into(),
            "ipv4.filter.rules[0].top: invalid type: string",
        ),
        (
            "1 MB comment",
            format!(
                "wrap_name: l3agent\nipv4:\n  filter:\n    rules:\n      - {{chain: INPUT, rule: \"-j ACCEPT\", comment: {}}}\n",
                "a".repeat(1 << 20)
            ),
            "ipv4.filter.rules[0].comment",
        ),
        (
            "deep nesting",
            format!("wrap_name: l3agent\nipv4: {}\n", "[".repeat(100_000)),
            "nested deeper than 32 levels",
        ),
    ];
    let state = dir.join("state");
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir(&state).unwrap();
    let state_files = || {
        let mut files = Vec::new();
        walk(&state, &mut files);
        files.sort();
        files
    };
    for backend in ["nft", "legacy"] {
        // A namespace per backend: one namespace never holds rules of both.
        let ns = l3agent_testkit::TestNs::new(backend);
        let path = dir.join(format!("good-{backend}.yaml"));
        std::fs::write(&path, good).unwrap();
        let args = [
            "--netns",
            &ns.name,
            "--backend",
            backend,
            "--state-dir",
            state.to_str().unwrap(),
        ];
        let o = Command::new(bin)
            .args(["iptables", "apply", "--rules", path.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let before = (ns.save("nft", false), ns.save("legacy", false));
        for (class, text, field) in &rows {
            let files_before = state_files();
            let ext = if text.starts_with('{') {
                "json"
            } else {
                "yaml"
            };
            let path = dir.join(format!("bad-{backend}.{ext}"));
            std::fs::write(&path, text).unwrap();
            let o = Command::new(bin)
                .args([
                    "iptables",
                    "apply",
                    "--rules",
                    path.to_str().unwrap(),
                    "--json",
                ])
                .args(args)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(2), "{backend} {class}: {stderr}");
            assert!(
                stderr.contains(field),
                "{backend} {class}: {field:?} not in {stderr}"
            );
            assert!(
                stderr.len() < 4000,
                "{backend} {class}: {} bytes of error",
                stderr.len()
            );
            assert_eq!(
                state_files(),
                files_before,
                "{backend} {class}: the applied-state directory changed"
            );
            let j: Value = serde_json::from_slice(&o.stdout)
                .unwrap_or_else(|e| panic!("{backend} {class}: stdout is not JSON: {e}"));
            assert_eq!(j["error"]["exit_code"], 2, "{j}");
            assert!(j.to_string().contains(field), "{backend} {class}: {j}");
            let after = (ns.save("nft", false), ns.save("legacy", false));
            assert_eq!(
                l3agent_testkit::content(&before.0),
                l3agent_testkit::content(&after.0),
                "{backend} {class}: nft rules changed"
            );
            assert_eq!(
                l3agent_testkit::content(&before.1),
                l3agent_testkit::content(&after.1),
                "{backend} {class}: legacy rules changed"
            );
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}
