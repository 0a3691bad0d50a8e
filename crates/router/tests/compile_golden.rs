//! Golden tests of [`compile`]: Neutron's own router dicts (`tests/data/neutron-router-*.json`,
//! from Neutron's test helpers) and one a real neutron-server sent
//! (`tests/data/neutron-server-router.json`), compiled for legacy, `dvr` and `dvr_snat` agents
//! with fixed allocations and `random_fully` both ways. Every namespace is rendered with
//! `NsSpec::render` and compared with `tests/data/golden/<case>/<random-fully|plain>/<ns>`;
//! `host` there lists what the host had to allocate and the routers that failed.
//!
//! `UPDATE_GOLDEN=1 cargo test -p l3agent-router --test compile_golden` rewrites the files;
//! they are the review artifact: read them against NEUTRON.md §2.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use l3agent_router::alloc::RangePool;
use l3agent_router::compile::{compile, needs, Allocations, HostFacts};
use l3agent_router::config::{ConfigDoc, HostConfig};
use serde_json::{json, Value};

fn data(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// Every network of the data files has a bridge.
fn config(mode: &str, host: &str, routers: Vec<Value>) -> HostConfig {
    config_with(mode, host, routers, json!({}))
}

/// [`config`] with `extra` merged into the agent section.
fn config_with(mode: &str, host: &str, routers: Vec<Value>, extra: Value) -> HostConfig {
    let mut doc = json!({
        "agent": {
            "mode": mode,
            "host": host,
            "state_path": "/var/lib/l3agent",
            "bridges": {
                "90e4912c-0eb8-4be4-a793-e6a3bba6ae8b": "br-t1",
                "c6910e18-fb1f-4988-9af4-211a8c2e2926": "br-t2",
                "65566f91-133a-44ff-87f5-ecffc1193d3d": "br-ex",
                "740cd353-7ee8-49e2-96f6-17ed0dc7b3da": "br-d1",
                "d8282fc8-37e4-43a7-801d-8d2c91dbbb98": "br-d2",
                "11272de9-8a18-4392-8618-d07b6ab565e3": "br-dex",
                "ae44cb2a-83d8-4dea-a232-e43a075fe85c": "br-int1",
                "7cbe46e1-f619-4b33-a669-734078a25172": "br-ext1"
            }
        },
        "routers": routers,
    });
    for (k, v) in extra.as_object().into_iter().flatten() {
        doc["agent"][k] = v.clone();
    }
    let doc: ConfigDoc = serde_json::from_value(doc).unwrap();
    doc.validate().unwrap_or_else(|e| panic!("{e:#?}"))
}

/// What a fresh state directory's allocators give: the lowest free values, in key order.
fn fresh_allocations(cfg: &HostConfig) -> Allocations {
    let n = needs(cfg);
    Allocations {
        link_local: n.link_local.iter().cloned().zip(0..).collect(),
        fip_priorities: n
            .fip_priorities
            .iter()
            .copied()
            .zip(RangePool::FIP_PRIORITIES.start..)
            .collect(),
        snat_tables: n
            .snat_tables
            .iter()
            .cloned()
            .zip(RangePool::SNAT_TABLES.start..)
            .collect(),
    }
}

/// The files of one case: `<variant>/<namespace>` and `host`.
fn render(cfg: &HostConfig) -> Vec<(String, String)> {
    let alloc = fresh_allocations(cfg);
    let mut host = String::new();
    let n = needs(cfg);
    for r in &n.link_local {
        let _ = writeln!(host, "link_local {r} = {}", alloc.link_local[r]);
    }
    for f in &n.fip_priorities {
        let _ = writeln!(host, "fip_priority {f} = {}", alloc.fip_priorities[f]);
    }
    for k in &n.snat_tables {
        let _ = writeln!(
            host,
            "snat_table {}.{} = {}",
            k.0, k.1, alloc.snat_tables[k]
        );
    }
    let mut files = Vec::new();
    for (variant, random_fully) in [("plain", false), ("random-fully", true)] {
        let spec = compile(cfg, &alloc, &HostFacts { random_fully });
        for (id, why) in &spec.failed {
            let _ = writeln!(host, "{variant}: failed {id}: {why}");
        }
        for (name, ns) in &spec.namespaces {
            files.push((format!("{variant}/{name}"), ns.render()));
        }
    }
    files.push(("host".to_owned(), host));
    files
}

fn golden_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/golden")
        .join(case)
}

fn files_under(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if e.path().is_dir() {
            out.extend(
                files_under(&e.path())
                    .into_iter()
                    .map(|f| format!("{name}/{f}")),
            );
        } else {
            out.insert(name);
        }
    }
    out
}

fn check(case: &str, cfg: &HostConfig) {
    let dir = golden_dir(case);
    let files = render(cfg);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        let _ = std::fs::remove_dir_all(&dir);
        for (name, text) in &files {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
        }
        return;
    }
    let want: BTreeSet<String> = files.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(
        files_under(&dir),
        want,
        "{case}: the golden files differ from what compile gives (UPDATE_GOLDEN=1 rewrites them)"
    );
    for (name, text) in &files {
        let path = dir.join(name);
        let golden = std::fs::read_to_string(&path).unwrap();
        assert!(
            &golden == text,
            "{}: differs (UPDATE_GOLDEN=1 rewrites it)\n--- golden\n{golden}\n--- compiled\n{text}",
            path.display()
        );
    }
}

#[test]
fn legacy_router_on_a_legacy_agent() {
    let cfg = config("legacy", "host-a", vec![data("neutron-router-legacy.json")]);
    check("legacy", &cfg);
}

#[test]
fn legacy_router_on_a_dvr_snat_agent_is_the_same_legacy_router() {
    let legacy = config("legacy", "host-a", vec![data("neutron-router-legacy.json")]);
    let dvr = config(
        "dvr_snat",
        "host-a",
        vec![data("neutron-router-legacy.json")],
    );
    let (a, b) = (render(&legacy), render(&dvr));
    assert_eq!(a, b);
}

/// `agent.traffic_accounting`: the legacy example with its floating IP's accounting chain
/// (`neutron-l3-agent-fip-acct`, on `qg-`); everything else as in `legacy`.
#[test]
fn legacy_router_with_traffic_accounting() {
    let cfg = config_with(
        "legacy",
        "host-a",
        vec![data("neutron-router-legacy.json")],
        json!({"traffic_accounting": true}),
    );
    check("legacy-accounting", &cfg);
}

#[test]
fn dvr_router_on_a_dvr_agent() {
    let cfg = config("dvr", "host-a", vec![data("neutron-router-dvr.json")]);
    check("dvr", &cfg);
}

/// `agent.traffic_accounting` on a `dvr` agent: the accounting chain on `rfp-`; everything
/// else as in `dvr`.
#[test]
fn dvr_router_on_a_dvr_agent_with_traffic_accounting() {
    let cfg = config_with(
        "dvr",
        "host-a",
        vec![data("neutron-router-dvr.json")],
        json!({"traffic_accounting": true}),
    );
    check("dvr-accounting", &cfg);
}

#[test]
fn dvr_router_on_its_dvr_snat_agent() {
    let cfg = config("dvr_snat", "host-a", vec![data("neutron-router-dvr.json")]);
    check("dvr_snat", &cfg);
}

#[test]
fn neutron_server_router_on_a_legacy_agent() {
    let cfg = config("legacy", "net1", vec![data("neutron-server-router.json")]);
    check("server-legacy", &cfg);
}

#[test]
fn neutron_server_router_made_distributed_on_its_dvr_snat_agent() {
    // The same dict with `distributed: true`: no agent gateway port in it, so no FIP link
    // here; the SNAT namespace is on this host (`gw_port_host` is net1).
    let mut r = data("neutron-server-router.json");
    r["distributed"] = true.into();
    let cfg = config("dvr_snat", "net1", vec![r]);
    check("server-dvr_snat", &cfg);
}

/// The legacy dict with the parity items of NEUTRON-OPS: ECMP extra routes (§7), an IPv6
/// gateway subnet (§2.3: `accept_ra=0` and an IPv6 default route), two IPv4 gateway subnets
/// (one default route, via the last), and address scopes with a floating IP crossing them (§4).
#[test]
fn legacy_router_with_the_parity_items() {
    let mut r = data("neutron-router-legacy.json");
    r["routes"] = json!([
        {"destination": "100.64.8.0/24", "nexthop": "203.0.113.7"},
        {"destination": "100.64.8.0/24", "nexthop": "198.51.100.5"},
        {"destination": "100.64.9.0/24", "nexthop": "192.0.2.20"},
        {"destination": "2001:db8:9::/64", "nexthop": "2001:db8::7"},
        {"destination": "2001:db8:9::/64", "nexthop": "2001:db8::5"},
    ]);
    r["gw_port"]["subnets"] = json!([
        {"id": "e77d4b33-0d8a-4da1-97dd-e957d6627bf2", "cidr": "203.0.113.0/24", "gateway_ip": "203.0.113.1"},
        {"id": "a0000000-0000-4000-8000-000000000004", "cidr": "100.64.0.0/24", "gateway_ip": "100.64.0.1"},
        {"id": "a0000000-0000-4000-8000-000000000006", "cidr": "2001:db8::/64", "gateway_ip": "2001:db8::1"},
    ]);
    r["gw_port"]["fixed_ips"] = json!([
        {"ip_address": "203.0.113.4", "prefixlen": 24, "subnet_id": "e77d4b33-0d8a-4da1-97dd-e957d6627bf2"},
        {"ip_address": "100.64.0.4", "prefixlen": 24, "subnet_id": "a0000000-0000-4000-8000-000000000004"},
        {"ip_address": "2001:db8::4", "prefixlen": 64, "subnet_id": "a0000000-0000-4000-8000-000000000006"},
    ]);
    r["gw_port"]["address_scopes"] = json!({"4": "scope-ext", "6": "scope-ext6"});
    r["_interfaces"][0]["address_scopes"] = json!({"4": "scope-tenant", "6": null});
    r["_interfaces"][1]["address_scopes"] = json!({"4": "scope-ext", "6": null});
    r["_floatingips"][0]["fixed_ip_address_scope"] = "scope-tenant".into();
    let cfg = config("legacy", "host-a", vec![r]);
    check("legacy-parity", &cfg);
}

/// The DVR dict with a second router on the same external network (one fip- namespace, two
/// links), an address-scope fast path port (D-23), extra routes inside and outside (D-24), on
/// its `dvr_snat` host.
#[test]
fn dvr_routers_with_the_parity_items() {
    let mut a = data("neutron-router-dvr.json");
    a["gw_port"]["address_scopes"] = json!({"4": "scope-ext", "6": null});
    a["_interfaces"][1]["address_scopes"] = json!({"4": "scope-ext", "6": null});
    a["routes"] = json!([
        {"destination": "100.64.8.0/24", "nexthop": "192.0.2.20"},
        {"destination": "100.64.8.0/24", "nexthop": "192.0.2.21"},
        {"destination": "100.64.9.0/24", "nexthop": "203.0.113.7"},
    ]);
    let mut b = data("neutron-router-dvr.json");
    b["id"] = "0b221852-b000-4000-8000-000000000000".into();
    b["_interfaces"] = json!([]);
    b["_snat_router_interfaces"] = json!([]);
    b["_floatingips"] = json!([]);
    b["gw_port"]["id"] = "90000000-0000-4000-8000-000000000000".into();
    b["gw_port"]["fixed_ips"][0]["ip_address"] = "203.0.113.5".into();
    b["gw_port"]["mac_address"] = "fa:16:3e:00:00:05".into();
    b["gw_port_host"] = "host-b".into();
    let cfg = config("dvr_snat", "host-a", vec![a, b]);
    check("dvr-parity", &cfg);
}
