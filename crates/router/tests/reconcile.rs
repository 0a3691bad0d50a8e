//! The reconciler over the recording fake (no root): plan == apply, a second plan is empty,
//! every drift class is seen by status and repaired by a plain apply, and a failure at any
//! operation leaves a state the next apply converges.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

mod common;

use common::{config, legacy_router, state_dir, world, BRIDGES};
use l3agent_router::change::Change;
use l3agent_router::compile::HostFacts;
use l3agent_router::config::HostConfig;
use l3agent_router::fake::{self, SharedWorld, World};
use l3agent_router::host::{self, ApplyOptions, Health, HostReport, RouterStatus};
use serde_json::{json, Value};

fn facts() -> HostFacts {
    HostFacts { random_fully: true }
}

fn opts() -> ApplyOptions {
    ApplyOptions::new(facts(), Arc::new(AtomicBool::new(false)))
}

fn plan(w: &SharedWorld, cfg: &HostConfig) -> HostReport {
    host::plan(cfg, &facts(), &fake::sides(w)).expect("plan")
}

fn apply(w: &SharedWorld, cfg: &HostConfig) -> HostReport {
    host::apply(cfg, &opts(), &fake::sides(w)).expect("apply")
}

fn changes(r: &HostReport) -> Vec<String> {
    r.changes().map(ToString::to_string).collect()
}

/// Applies `cfg` and checks that it did exactly what the plan said, and that nothing is left.
fn converge(w: &SharedWorld, cfg: &HostConfig) -> HostReport {
    let planned = plan(w, cfg);
    let applied = apply(w, cfg);
    assert!(!applied.failed(), "{applied:#?}");
    assert_eq!(changes(&planned), changes(&applied), "plan != apply");
    let again = plan(w, cfg);
    assert!(
        !again.changed(),
        "a second plan is not empty: {:#?}",
        changes(&again)
    );
    applied
}

#[test]
fn a_new_router_is_planned_then_applied_exactly_and_then_nothing_is_left() {
    let w = world();
    let state = state_dir();
    let cfg = config(&state, &[legacy_router()]);
    let r = converge(&w, &cfg);
    let text = changes(&r).join("\n");
    for expect in [
        "ip netns add qrouter-87c7c2ae-d0ba-4691-820c-8053abf50b8d",
        "add port qr-081ed401-2a (host end tap081ed401-2a on br-t1)",
        "add port qg-184a6791-c4 (host end tap184a6791-c4 on br-ex)",
        "ip addr add 203.0.113.2/32 dev qg-184a6791-c4",
        "iptables-restore --noflush",
        "announce",
    ] {
        assert!(text.contains(expect), "missing {expect:?} in\n{text}");
    }
    // The floating IP is added after the NAT rules (D-22).
    let pos = |s: &str| text.find(s).unwrap_or(usize::MAX);
    assert!(pos("iptables-restore") < pos("ip addr add 203.0.113.2/32"));
    // Applying again changes nothing.
    let r = apply(&w, &cfg);
    assert!(!r.changed(), "{:#?}", changes(&r));
    assert!(r
        .routers
        .iter()
        .all(|x| x.status == RouterStatus::Unchanged));
}

/// Mutates the fake world and checks status names it, plan lists its repair, apply repairs it.
fn drift(name: &str, mutate: impl FnOnce(&mut World)) {
    let w = world();
    let state = state_dir();
    let cfg = config(&state, &[legacy_router()]);
    converge(&w, &cfg);
    let before = norm(&w.lock().unwrap());
    mutate(&mut w.lock().unwrap());
    let st = host::status(&state, &fake::sides(&w)).expect("status");
    assert!(
        st.iter()
            .any(|r| r.health != Health::Ok && !r.drift.is_empty()),
        "{name}: status saw no drift: {st:#?}"
    );
    let r = converge(&w, &cfg);
    assert!(r.changed(), "{name}: apply repaired nothing");
    let after = norm(&w.lock().unwrap());
    assert_eq!(
        before.namespaces, after.namespaces,
        "{name}: not repaired to the same state"
    );
    assert_eq!(
        before.host, after.host,
        "{name}: host side differs after repair"
    );
    let st = host::status(&state, &fake::sides(&w)).expect("status");
    assert!(st.iter().all(|r| r.health == Health::Ok), "{name}: {st:#?}");
}

/// The world without what recreation legitimately changes (link indexes).
fn norm(w: &World) -> World {
    let mut w = w.state();
    for ns in w
        .namespaces
        .values_mut()
        .chain(std::iter::once(&mut w.host))
    {
        for l in ns.links.values_mut() {
            if l.kind.as_deref() != Some("bridge") {
                l.index = 0;
            }
        }
    }
    w
}

fn qrouter(w: &mut World) -> &mut l3agent_router::fake::FakeNs {
    w.namespaces
        .iter_mut()
        .find(|(n, _)| n.as_str().starts_with("qrouter-"))
        .map(|(_, ns)| ns)
        .expect("qrouter namespace")
}

#[test]
fn every_drift_class_is_seen_and_repaired() {
    drift("deleted default route", |w| {
        qrouter(w).routes.retain(|r| r.dst.prefix_len() != 0)
    });
    drift("deleted extra route", |w| {
        qrouter(w)
            .routes
            .retain(|r| r.dst.to_string() != "100.64.8.0/24")
    });
    drift("deleted on-link route", |w| {
        qrouter(w)
            .routes
            .retain(|r| r.dst.to_string() != "100.64.5.0/24")
    });
    drift("deleted qg- device", |w| {
        let _ = w;
        let ns = qrouter(w);
        ns.links.retain(|n, _| !n.starts_with("qg-"));
        ns.addresses.retain(|(d, _)| !d.starts_with("qg-"));
        ns.routes.retain(|r| {
            r.dev
                .as_ref()
                .is_none_or(|d| !d.as_str().starts_with("qg-"))
        });
        w.host.links.remove("tap184a6791-c4");
    });
    drift("host end left behind without its router end", |w| {
        let ns = qrouter(w);
        ns.links.remove("qr-081ed401-2a");
        ns.addresses.retain(|(d, _)| d != "qr-081ed401-2a");
    });
    drift("host end detached from its bridge", |w| {
        w.host.links.get_mut("tap081ed401-2a").unwrap().master = None
    });
    drift("host end down", |w| {
        w.host.links.get_mut("tap081ed401-2a").unwrap().up = false
    });
    drift("changed sysctl", |w| {
        qrouter(w).sysctls.insert("net/ipv4/ip_forward".into(), 0);
    });
    drift("removed address", |w| {
        qrouter(w)
            .addresses
            .retain(|(_, n)| n.to_string() != "192.0.2.4/24");
    });
    drift("extra address", |w| {
        qrouter(w)
            .addresses
            .insert(("qr-081ed401-2a".into(), "192.0.2.99/24".parse().unwrap()));
    });
    drift("flushed iptables", |w| qrouter(w).iptables.clear());
    drift("deleted namespace", |w| {
        let name = w
            .namespaces
            .keys()
            .find(|n| n.as_str().starts_with("qrouter-"))
            .cloned()
            .unwrap();
        w.namespaces.remove(&name);
        w.host.links.retain(|n, _| !n.starts_with("tap"));
    });
    drift("changed MTU", |w| {
        qrouter(w).links.get_mut("qr-081ed401-2a").unwrap().mtu = 1400
    });
    drift("foreign rule in an l3agent namespace", |w| {
        qrouter(w).rules.insert(l3agent_rtnl::rule::Rule {
            ipv6: false,
            from: Some("192.0.2.0/24".parse().unwrap()),
            to: None,
            iif: None,
            table: 77,
            priority: 1234,
        });
    });
}

#[test]
fn a_failure_at_any_operation_is_repaired_by_the_next_apply() {
    // Every operation a clean apply does, failed one at a time.
    let reference = world();
    let state0 = state_dir();
    let cfg0 = config(&state0, &[legacy_router()]);
    converge(&reference, &cfg0);
    let ops: Vec<String> = reference.lock().unwrap().log.clone();
    assert!(ops.len() > 10, "{ops:#?}");
    let target = norm(&reference.lock().unwrap());
    for op in &ops {
        let w = world();
        let state = state_dir();
        let cfg = config(&state, &[legacy_router()]);
        w.lock().unwrap().fail_on = Some(op.clone());
        let r = host::apply(&cfg, &opts(), &fake::sides(&w)).expect("apply runs");
        assert!(r.failed(), "failing {op:?} did not fail the router: {r:#?}");
        let r = converge(&w, &cfg);
        assert!(!r.failed());
        let now = norm(&w.lock().unwrap());
        assert_eq!(now.namespaces, target.namespaces, "after failing {op:?}");
        assert_eq!(now.host, target.host, "after failing {op:?}");
    }
}

#[test]
fn one_failing_router_does_not_stop_the_others_and_a_new_one_is_undone() {
    let w = world();
    let state = state_dir();
    let good = legacy_router();
    let mut bad = legacy_router();
    bad["id"] = json!("5d2ab1e0-0000-4000-8000-000000000001");
    for (i, p) in bad["_interfaces"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .enumerate()
    {
        p["id"] = json!(format!("7a7a7a7{i}-0000-4000-8000-000000000000"));
    }
    bad["gw_port"]["id"] = json!("7b7b7b7b-0000-4000-8000-000000000000");
    bad["_floatingips"] = json!([]);
    common::renumber(&mut bad, 5);
    let cfg = config(&state, &[good, bad]);
    w.lock().unwrap().fail_on = Some("add port qr-7a7a7a70".into());
    let r = apply(&w, &cfg);
    let status = |id: &str| r.routers.iter().find(|x| x.id == id).map(|x| x.status);
    assert_eq!(
        status("87c7c2ae-d0ba-4691-820c-8053abf50b8d"),
        Some(RouterStatus::Converged)
    );
    assert_eq!(
        status("5d2ab1e0-0000-4000-8000-000000000001"),
        Some(RouterStatus::Failed)
    );
    assert!(
        !w.lock()
            .unwrap()
            .namespaces
            .keys()
            .any(|n| n.as_str().contains("5d2ab1e0")),
        "the failed new router's namespace was not removed"
    );
    converge(&w, &cfg);
}

#[test]
fn removing_a_floating_ip_flushes_its_connections_and_moving_the_gateway_too() {
    let w = world();
    let state = state_dir();
    let mut r = legacy_router();
    converge(&w, &config(&state, std::slice::from_ref(&r)));
    r["_floatingips"] = json!([]);
    let report = converge(&w, &config(&state, std::slice::from_ref(&r)));
    let c: Vec<&Change> = report.changes().collect();
    assert!(
        c.iter().any(
            |c| matches!(c, Change::FlushConntrack { ip, .. } if ip.to_string() == "203.0.113.2")
        ),
        "{c:#?}"
    );
    r["gw_port"]["fixed_ips"][0]["ip_address"] = json!("203.0.113.5");
    let report = converge(&w, &config(&state, std::slice::from_ref(&r)));
    let c: Vec<&Change> = report.changes().collect();
    assert!(
        c.iter().any(
            |c| matches!(c, Change::FlushConntrack { ip, .. } if ip.to_string() == "203.0.113.4")
        ),
        "{c:#?}"
    );
    assert!(
        c.iter().any(|c| matches!(c, Change::Announce { addresses, .. } if addresses.iter().any(|a| a.to_string() == "203.0.113.5"))),
        "{c:#?}"
    );
}

/// A small deterministic generator (no dependency): xorshift.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A random variation of the legacy router: with or without each port, floating IPs, extra
/// routes (incl. ECMP), SNAT.
fn random_router(rng: &mut Rng) -> Value {
    let mut r = legacy_router();
    if rng.pick(3) == 0 {
        r["_interfaces"].as_array_mut().unwrap().pop();
    }
    let fips: Vec<Value> = (0..rng.pick(4))
        .map(|i| {
            json!({"id": format!("f{i}"), "floating_ip_address": format!("203.0.113.{}", 20 + i),
                   "fixed_ip_address": format!("192.0.2.{}", 30 + i)})
        })
        .collect();
    r["_floatingips"] = json!(fips);
    let mut routes = Vec::new();
    for i in 0..rng.pick(3) {
        routes.push(
            json!({"destination": format!("100.64.{}.0/24", 10 + i), "nexthop": "192.0.2.50"}),
        );
    }
    if rng.pick(2) == 0 {
        routes.push(json!({"destination": "100.64.99.0/24", "nexthop": "192.0.2.51"}));
        routes.push(json!({"destination": "100.64.99.0/24", "nexthop": "192.0.2.52"}));
    }
    r["routes"] = json!(routes);
    r["enable_snat"] = json!(rng.pick(2) == 0);
    if rng.pick(4) == 0 {
        r["gw_port"]["mtu"] = json!(1400);
    }
    r
}

#[test]
fn for_random_config_sequences_plan_equals_apply_and_converges() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..12 {
        let w = world();
        let state = state_dir();
        for _ in 0..4 {
            let routers = if rng.pick(5) == 0 {
                Vec::new()
            } else {
                vec![random_router(&mut rng)]
            };
            converge(&w, &config(&state, &routers));
        }
    }
}

/// A host that does not fit the config is found before the first change: a bridge that is
/// missing or is not a bridge, or namespaces that would vanish with the process. The working
/// router keeps its port, no operation is logged, and the state directory is untouched.
#[test]
fn a_host_that_does_not_fit_is_refused_before_anything_changes() {
    let state = state_dir();
    let w = world();
    let cfg = config(&state, &[legacy_router()]);
    converge(&w, &cfg);
    let records = std::fs::read(state.join("records.json")).expect("records");
    let before = w.lock().unwrap().log.len();
    type Edit = fn(&mut World);
    let cases: [(&str, Edit); 3] = [
        ("missing", |w| {
            w.host.links.remove("br-ex");
        }),
        ("not a bridge", |w| {
            w.host.links.get_mut("br-ex").unwrap().kind = Some("veth".into());
        }),
        ("private mounts", |w| w.private_mounts = true),
    ];
    for (class, edit) in cases {
        let w2: SharedWorld = Arc::new(Mutex::new(World::with_bridges(&BRIDGES)));
        edit(&mut w2.lock().unwrap());
        let mut changed = legacy_router();
        changed["_floatingips"] = json!([]);
        let cfg2 = config(&state, &[changed]);
        for result in [
            host::apply(&cfg2, &opts(), &fake::sides(&w2)),
            host::plan(&cfg2, &facts(), &fake::sides(&w2)),
        ] {
            let e = result.expect_err(class).to_string();
            assert!(
                e.starts_with("the host does not fit the config"),
                "{class}: {e}"
            );
            if class != "private mounts" {
                assert!(
                    e.contains("agent.bridges.65566f91-133a-44ff-87f5-ecffc1193d3d: "),
                    "{e}"
                );
            }
        }
        assert!(
            w2.lock().unwrap().log.is_empty(),
            "{class}: {:?}",
            w2.lock().unwrap().log
        );
    }
    assert_eq!(w.lock().unwrap().log.len(), before);
    assert_eq!(
        std::fs::read(state.join("records.json")).expect("records"),
        records
    );
    std::fs::remove_dir_all(&state).ok();
}

/// No one-way doors: from any accepted config, any other accepted config converges (plan ==
/// apply, then nothing left to do), over every ordered pair of a set of configs that differ
/// in gateway, floating IPs, extra routes (ECMP included), ports, MTU and admin state.
#[test]
fn every_accepted_config_can_follow_every_other() {
    let base = legacy_router();
    let mut variants: Vec<(&str, Vec<Value>)> = vec![("base", vec![base.clone()])];
    let mut v = base.clone();
    v["gw_port"] = Value::Null;
    v["_floatingips"] = json!([]);
    v["routes"] = json!([{"destination": "100.64.8.0/24", "nexthop": "192.0.2.20"}]);
    variants.push(("no gateway", vec![v]));
    let mut v = base.clone();
    v["routes"] = json!([
        {"destination": "100.64.8.0/24", "nexthop": "203.0.113.1"},
        {"destination": "100.64.8.0/24", "nexthop": "198.51.100.9"},
        {"destination": "100.64.9.0/24", "nexthop": "192.0.2.20"}]);
    variants.push(("ecmp", vec![v]));
    let mut v = base.clone();
    v["_interfaces"][1]["mtu"] = 1400.into();
    v["_floatingips"][0]["fixed_ip_address"] = "192.0.2.11".into();
    variants.push(("mtu and fip moved", vec![v]));
    let mut v = base.clone();
    v["_interfaces"][1]["admin_state_up"] = false.into();
    v["routes"] = json!([]);
    variants.push(("port down", vec![v]));
    variants.push(("no routers", vec![]));
    for (from, a) in &variants {
        for (to, b) in &variants {
            if from == to {
                continue;
            }
            let state = state_dir();
            let w = world();
            converge(&w, &config(&state, a));
            let report = host::apply(&config(&state, b), &opts(), &fake::sides(&w))
                .unwrap_or_else(|e| panic!("{from} -> {to}: {e}"));
            assert!(!report.failed(), "{from} -> {to}: {report:#?}");
            let again = plan(&w, &config(&state, b));
            assert!(!again.changed(), "{from} -> {to}: {:#?}", changes(&again));
            std::fs::remove_dir_all(&state).ok();
        }
    }
}
