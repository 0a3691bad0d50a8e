//! The `openvswitch` interface driver over the recording fake (no root): router ports are OVS
//! internal ports on the integration bridge with Neutron's `external_ids`, their devices moved
//! into the router namespace; every OVS drift is seen and repaired with its own change kind,
//! a failure at any step is repaired by the next apply, removal unplugs the ports, and the
//! bridge is read once per run and written in one transaction per router.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

mod common;

use common::{legacy_router, state_dir, BRIDGES};
use l3agent_ovsdb::PortRecord;
use l3agent_router::change::Change;
use l3agent_router::compile::HostFacts;
use l3agent_router::config::{ConfigDoc, HostConfig};
use l3agent_router::fake::{self, FakeNs, SharedWorld, World};
use l3agent_router::host::{self, ApplyOptions, Health, HostReport, RouterStatus};
use serde_json::{json, Value};

const BR_INT: &str = "br-int";
const DB: &str = "/run/l3agent-test/db.sock";
const R1: &str = "0a5e0001-0000-4000-8000-000000000001";
const R2: &str = "0a5e0002-0000-4000-8000-000000000002";
const R3: &str = "0a5e0003-0000-4000-8000-000000000003";

fn facts() -> HostFacts {
    HostFacts { random_fully: true }
}

fn opts() -> ApplyOptions {
    ApplyOptions::new(facts(), Arc::new(AtomicBool::new(false)))
}

/// Neutron's legacy example router under `id`, with port ids and MACs of its own (the first
/// router `fa:16:3e:0<n>:00:0<i>`; the others renumbered, MACs included).
/// Port `i` of the router is `0a5e<n><i>…` (qr-0a5e<n><i>xxx-xx), the gateway `0a5e<n>9…`.
fn router(id: &str) -> Value {
    let n = &id[7..8];
    let mut r = legacy_router();
    r["id"] = json!(id);
    for (i, p) in r["_interfaces"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .enumerate()
    {
        p["id"] = json!(format!("0a5e{n}{i}00-0000-4000-8000-00000000000{i}"));
        p["mac_address"] = json!(format!("fa:16:3e:0{n}:00:0{i}"));
    }
    r["gw_port"]["id"] = json!(format!("0a5e{n}900-0000-4000-8000-000000000009"));
    r["gw_port"]["mac_address"] = json!(format!("fa:16:3e:0{n}:00:09"));
    if n != "1" {
        // The first router keeps the example's addresses; the others have their own.
        common::renumber(&mut r, 10 + n.parse::<u8>().unwrap());
    }
    if n != "1" {
        r["_floatingips"] = json!([]);
    }
    r
}

/// The device (and OVS port) names of [`router`]`(id)`: qr- per interface, then qg-.
fn ports_of(id: &str) -> [String; 3] {
    let n = &id[7..8];
    [
        format!("qr-0a5e{n}000-00"),
        format!("qr-0a5e{n}100-00"),
        format!("qg-0a5e{n}900-00"),
    ]
}

fn ns_of(id: &str) -> String {
    format!("qrouter-{id}")
}

/// A validated host config with the `openvswitch` driver (`agent_extra` merged into `agent`).
fn ovs_config(state: &PathBuf, mode: &str, routers: &[Value], agent_extra: Value) -> HostConfig {
    let mut agent = json!({"mode": mode, "host": "host-a", "state_path": state,
                           "interface_driver": "openvswitch", "ovsdb": format!("unix:{DB}")});
    for (k, v) in agent_extra.as_object().into_iter().flatten() {
        agent[k] = v.clone();
    }
    let doc: ConfigDoc =
        serde_json::from_value(json!({"agent": agent, "routers": routers})).expect("doc");
    doc.validate().expect("valid")
}

fn config(state: &PathBuf, routers: &[Value]) -> HostConfig {
    ovs_config(state, "legacy", routers, json!({}))
}

fn ovs_world() -> SharedWorld {
    Arc::new(Mutex::new(World::with_ovs(&[BR_INT])))
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

/// Applies `cfg`: exactly what the plan said, and nothing left afterwards.
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

/// The ports of a bridge, without what a re-creation legitimately changes (the ofport).
fn bridge(w: &World, br: &str) -> BTreeMap<String, PortRecord> {
    let mut ports = w.ovs.bridges.get(br).cloned().unwrap_or_default();
    for p in ports.values_mut() {
        p.ofport = None;
    }
    ports
}

/// The world without link indexes (a re-made device gets a new one).
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

fn router_ns<'a>(w: &'a mut World, id: &str) -> &'a mut FakeNs {
    w.namespaces
        .iter_mut()
        .find(|(n, _)| n.as_str() == ns_of(id))
        .map(|(_, ns)| ns)
        .expect("router namespace")
}

#[test]
fn a_new_router_is_plugged_into_the_integration_bridge_as_neutrons_ovs_driver_does() {
    let w = ovs_world();
    let state = state_dir();
    let cfg = config(&state, &[router(R1)]);
    let r = converge(&w, &cfg);
    let text = changes(&r).join("\n");
    let [qr0, qr1, qg] = ports_of(R1);
    for expect in [
        format!("host: ovs-vsctl --may-exist add-port br-int {qr0} -- set Interface {qr0} type=internal external_ids:iface-id=0a5e1000-0000-4000-8000-000000000000 external_ids:iface-status=active external_ids:attached-mac=fa:16:3e:01:00:00"),
        format!("host: ovs-vsctl --may-exist add-port br-int {qg} -- set Interface {qg} type=internal"),
        format!("{}: ip link set {qr0} netns {} (from the host); ip link set {qr0} address fa:16:3e:01:00:00 mtu 1500 up with 192.0.2.4/24", ns_of(R1), ns_of(R1)),
        format!("{}: ip addr add 203.0.113.2/32 dev {qg}", ns_of(R1)),
    ] {
        assert!(text.contains(&expect), "missing {expect:?} in\n{text}");
    }
    assert!(!text.contains("add port"), "a veth was made:\n{text}");
    // Ports plugged before their devices are attached; the floating IP after the NAT rules.
    let pos = |s: &str| text.find(s).unwrap_or(usize::MAX);
    assert!(pos("add-port") < pos("(from the host)"));
    assert!(pos("iptables-restore") < pos("ip addr add 203.0.113.2/32"));

    let world = w.lock().unwrap();
    // One transaction for the router's three ports.
    assert_eq!(world.ovs.applied.len(), 1, "{:#?}", world.ovs.applied);
    assert_eq!(world.ovs.applied[0].len(), 3);
    let ports = bridge(&world, BR_INT);
    assert_eq!(
        ports.keys().cloned().collect::<Vec<_>>(),
        vec![qg.clone(), qr0.clone(), qr1.clone()]
    );
    let p = &ports[&qr0];
    assert_eq!(p.interface_type, "internal");
    assert_eq!(
        p.tag,
        Some(4095),
        "parked in the dead VLAN for the L2 agent"
    );
    assert_eq!(p.interfaces, 1);
    assert_eq!(
        p.mtu_request, None,
        "the MTU is set on the device, not requested"
    );
    assert_eq!(
        p.external_ids,
        BTreeMap::from([
            ("attached-mac".to_owned(), "fa:16:3e:01:00:00".to_owned()),
            (
                "iface-id".to_owned(),
                "0a5e1000-0000-4000-8000-000000000000".to_owned()
            ),
            ("iface-status".to_owned(), "active".to_owned()),
        ])
    );
    // The devices are in the router namespace, configured; nothing is left in the host.
    let ns = world
        .namespaces
        .iter()
        .find(|(n, _)| n.as_str() == ns_of(R1))
        .map(|(_, n)| n)
        .unwrap();
    let dev = &ns.links[&qr0];
    assert_eq!(dev.kind.as_deref(), Some("tun"));
    assert_eq!(dev.mac, Some([0xfa, 0x16, 0x3e, 0x01, 0x00, 0x00]));
    assert_eq!(dev.mtu, 1500);
    assert!(dev.up);
    assert!(ns
        .addresses
        .contains(&(qg.clone(), "203.0.113.4/24".parse().unwrap())));
    assert!(
        world.host.links.is_empty(),
        "left in the host: {:?}",
        world.host.links.keys()
    );
    drop(world);

    // Applying again changes nothing and writes nothing.
    let r = apply(&w, &cfg);
    assert!(!r.changed(), "{:#?}", changes(&r));
    assert_eq!(w.lock().unwrap().ovs.applied.len(), 1);
}

/// Mutates the fake world and checks that status names the drift, plan lists its repair,
/// apply makes exactly the changes of `kinds` (at least these) and restores the same world
/// (namespaces, host, bridge), after which status is ok.
fn drift(name: &str, want: &[&str], mutate: impl FnOnce(&mut World)) {
    let w = ovs_world();
    let state = state_dir();
    let cfg = config(&state, &[router(R1)]);
    converge(&w, &cfg);
    let before = norm(&w.lock().unwrap());
    let br_before = bridge(&w.lock().unwrap(), BR_INT);
    mutate(&mut w.lock().unwrap());
    let st = host::status(&state, &fake::sides(&w)).expect("status");
    assert!(
        st.iter()
            .any(|r| r.health != Health::Ok && !r.drift.is_empty()),
        "{name}: status saw no drift: {st:#?}"
    );
    let r = converge(&w, &cfg);
    let text = changes(&r).join("\n");
    for expect in want {
        assert!(text.contains(expect), "{name}: {expect:?} not in\n{text}");
    }
    let after = norm(&w.lock().unwrap());
    assert_eq!(before.namespaces, after.namespaces, "{name}: not repaired");
    assert_eq!(before.host, after.host, "{name}: host side differs");
    assert_eq!(
        br_before,
        bridge(&w.lock().unwrap(), BR_INT),
        "{name}: bridge differs"
    );
    let st = host::status(&state, &fake::sides(&w)).expect("status");
    assert!(st.iter().all(|r| r.health == Health::Ok), "{name}: {st:#?}");
    std::fs::remove_dir_all(&state).ok();
}

#[test]
fn every_ovs_drift_is_seen_and_repaired_with_a_change_kind_of_its_own() {
    let [qr0, ..] = ports_of(R1);
    let ns = ns_of(R1);
    let add = format!("add-port br-int {qr0} ");
    let del = format!("del-port br-int {qr0}");
    let attach = format!("ip link set {qr0} netns {ns} (from the host)");

    // Someone deletes the port (its device goes with it, as ovs-vswitchd does).
    drift("port deleted from the bridge", &[&add, &attach], |w| {
        w.ovs.bridges.get_mut(BR_INT).unwrap().remove(&qr0);
        let n = router_ns(w, R1);
        n.links.remove(&qr0);
        n.addresses.retain(|(d, _)| *d != qr0);
        n.routes
            .retain(|r| r.dev.as_ref().is_none_or(|d| d.as_str() != qr0));
    });
    // The port is deleted but its device survived: the device is made anew.
    drift(
        "port deleted, device left",
        &[&format!("ip link del {qr0}"), &add, &attach],
        |w| {
            w.ovs.bridges.get_mut(BR_INT).unwrap().remove(&qr0);
        },
    );
    // Wrong external_ids / type / interfaces: repaired in place (the device stays).
    for (what, edit) in [
        (
            "wrong iface-id",
            Box::new(|p: &mut PortRecord| {
                p.external_ids
                    .insert("iface-id".into(), "somebody-else".into());
            }) as Box<dyn FnOnce(&mut PortRecord)>,
        ),
        (
            "attached-mac removed",
            Box::new(|p: &mut PortRecord| {
                p.external_ids.remove("attached-mac");
            }),
        ),
        (
            "not internal",
            Box::new(|p: &mut PortRecord| p.interface_type = "system".into()),
        ),
        (
            "a second interface",
            Box::new(|p: &mut PortRecord| p.interfaces = 2),
        ),
    ] {
        drift(what, &[&add], |w| {
            edit(w.ovs.port_mut(BR_INT, &qr0).unwrap());
        });
    }
    // The router namespace deleted by hand: the devices died with it, the ports stayed;
    // they are made anew (unplugged, then plugged, so that OVS makes new devices).
    drift(
        "namespace deleted",
        &[&format!("ip netns add {ns}"), &del, &add, &attach],
        |w| {
            let name = w
                .namespaces
                .keys()
                .find(|n| n.as_str() == ns)
                .cloned()
                .unwrap();
            w.namespaces.remove(&name);
        },
    );
    drift("device deleted", &[&del, &add, &attach], |w| {
        let n = router_ns(w, R1);
        n.links.remove(&qr0);
        n.addresses.retain(|(d, _)| *d != qr0);
        n.routes
            .retain(|r| r.dev.as_ref().is_none_or(|d| d.as_str() != qr0));
    });
    // The device is back in the host namespace (an attach cut short): attached again.
    drift("device in the host namespace", &[&attach], |w| {
        let n = router_ns(w, R1);
        let l = n.links.remove(&qr0).unwrap();
        n.addresses.retain(|(d, _)| *d != qr0);
        n.routes
            .retain(|r| r.dev.as_ref().is_none_or(|d| d.as_str() != qr0));
        w.host.links.insert(qr0.clone(), l);
    });
    // A device of the name that is not an OVS port (a veth left by the linuxbridge driver).
    drift(
        "a veth in the port's place",
        &[&format!("ip link del {qr0}"), &del, &add, &attach],
        |w| {
            router_ns(w, R1).links.get_mut(&qr0).unwrap().kind = Some("veth".into());
        },
    );
    drift(
        "device MAC changed",
        &[&format!("ip link set {qr0} address fa:16:3e:01:00:00")],
        |w| {
            router_ns(w, R1).links.get_mut(&qr0).unwrap().mac = Some([2, 0, 0, 0, 0, 7]);
        },
    );
    drift(
        "device MTU changed",
        &[&format!("ip link set {qr0} mtu 1500")],
        |w| {
            router_ns(w, R1).links.get_mut(&qr0).unwrap().mtu = 9000;
        },
    );
}

#[test]
fn ovs_repairs_are_counted_as_ovs_port_changes() {
    let w = ovs_world();
    let state = state_dir();
    let cfg = config(&state, &[router(R1)]);
    converge(&w, &cfg);
    let [qr0, ..] = ports_of(R1);
    w.lock()
        .unwrap()
        .ovs
        .port_mut(BR_INT, &qr0)
        .unwrap()
        .external_ids
        .insert("iface-id".into(), "wrong".into());
    let r = converge(&w, &cfg);
    let kinds: Vec<&str> = r.changes().map(Change::kind).collect();
    assert_eq!(kinds, ["ovs-port"], "{:#?}", changes(&r));
    let json = serde_json::to_value(r.changes().next().unwrap()).unwrap();
    assert_eq!(
        json,
        json!({"change": "plug_ovs_port", "bridge": "br-int", "port": qr0,
               "port_id": "0a5e1000-0000-4000-8000-000000000000", "mac": "fa:16:3e:01:00:00"})
    );
}

#[test]
fn a_failure_at_any_operation_is_repaired_by_the_next_apply() {
    // Every operation of a clean apply (OVSDB transactions, moves, device settings, ...),
    // failed one at a time.
    let reference = ovs_world();
    let reference_state = state_dir();
    converge(&reference, &config(&reference_state, &[router(R1)]));
    let ops: Vec<String> = reference.lock().unwrap().log.clone();
    assert!(
        ops.iter().any(|o| o.starts_with("ovsdb br-int: transact")),
        "{ops:#?}"
    );
    let target = norm(&reference.lock().unwrap());
    let target_bridge = bridge(&reference.lock().unwrap(), BR_INT);
    for op in &ops {
        let w = ovs_world();
        let state = state_dir();
        let cfg = config(&state, &[router(R1)]);
        w.lock().unwrap().fail_on = Some(op.clone());
        let r = host::apply(&cfg, &opts(), &fake::sides(&w)).expect("apply runs");
        assert!(r.failed(), "failing {op:?} did not fail the router: {r:#?}");
        converge(&w, &cfg);
        let now = norm(&w.lock().unwrap());
        assert_eq!(now.namespaces, target.namespaces, "after failing {op:?}");
        assert_eq!(now.host, target.host, "after failing {op:?}");
        assert_eq!(bridge(&now, BR_INT), target_bridge, "after failing {op:?}");
        std::fs::remove_dir_all(&state).ok();
    }
}

#[test]
fn a_failure_at_any_step_of_a_removal_is_repaired_by_the_next_apply() {
    let reference = ovs_world();
    let state = state_dir();
    converge(&reference, &config(&state, &[router(R1)]));
    reference.lock().unwrap().log.clear();
    converge(&reference, &config(&state, &[]));
    let ops: Vec<String> = reference.lock().unwrap().log.clone();
    assert_eq!(
        ops,
        vec![
            format!(
                "ovsdb br-int: transact unplug {}, unplug {}, unplug {}",
                ports_of(R1)[2],
                ports_of(R1)[0],
                ports_of(R1)[1]
            ),
            format!("ip netns del {}", ns_of(R1)),
        ]
    );
    for op in &ops {
        let w = ovs_world();
        let state = state_dir();
        converge(&w, &config(&state, &[router(R1)]));
        w.lock().unwrap().fail_on = Some(op.clone());
        let r = host::apply(&config(&state, &[]), &opts(), &fake::sides(&w)).expect("apply");
        assert!(r.failed(), "failing {op:?}: {r:#?}");
        converge(&w, &config(&state, &[]));
        let now = w.lock().unwrap();
        assert!(now.namespaces.is_empty(), "after failing {op:?}");
        assert!(bridge(&now, BR_INT).is_empty(), "after failing {op:?}");
        assert!(now.host.links.is_empty(), "after failing {op:?}");
    }
}

#[test]
fn removing_a_router_unplugs_its_ports_in_one_transaction_before_its_namespace_goes() {
    let w = ovs_world();
    let state = state_dir();
    converge(&w, &config(&state, &[router(R1), router(R2)]));
    let before = w.lock().unwrap().ovs.applied.len();
    let r = converge(&w, &config(&state, &[router(R2)]));
    let removed = r.routers.iter().find(|x| x.id == R1).unwrap();
    assert_eq!(removed.status, RouterStatus::Removed);
    let kinds: Vec<&str> = removed.changes.iter().map(Change::kind).collect();
    assert_eq!(
        kinds,
        ["ovs-port", "ovs-port", "ovs-port", "namespace"],
        "{removed:#?}"
    );
    let world = w.lock().unwrap();
    assert_eq!(world.ovs.applied.len(), before + 1, "one transaction");
    let left: Vec<String> = bridge(&world, BR_INT).into_keys().collect();
    let mut want = ports_of(R2).to_vec();
    want.sort();
    assert_eq!(left, want);
    assert!(!world.namespaces.keys().any(|n| n.as_str() == ns_of(R1)));
}

#[test]
fn removing_an_interface_unplugs_its_port_and_its_device() {
    let w = ovs_world();
    let state = state_dir();
    converge(&w, &config(&state, &[router(R1)]));
    let mut r = router(R1);
    r["_interfaces"].as_array_mut().unwrap().pop();
    r["routes"] = json!([]);
    let report = converge(&w, &config(&state, &[r]));
    let [_, qr1, _] = ports_of(R1);
    let text = changes(&report);
    assert_eq!(
        text[..2],
        [
            format!("host: ovs-vsctl --if-exists del-port br-int {qr1}"),
            format!("{}: ip link del {qr1}", ns_of(R1)),
        ],
        "{text:#?}"
    );
    let world = w.lock().unwrap();
    assert!(!bridge(&world, BR_INT).contains_key(&qr1));
    let ns = world
        .namespaces
        .iter()
        .find(|(n, _)| n.as_str() == ns_of(R1))
        .unwrap()
        .1;
    assert!(!ns.links.contains_key(&qr1));
}

#[test]
fn switching_from_linux_bridges_to_open_vswitch_replaces_the_veths_with_ovs_ports() {
    let mut world = World::with_bridges(&BRIDGES);
    world.ovs = World::with_ovs(&[BR_INT]).ovs;
    let w: SharedWorld = Arc::new(Mutex::new(world));
    let state = state_dir();
    let lb = common::config(&state, &[router(R1)]);
    converge(&w, &lb);
    assert!(w
        .lock()
        .unwrap()
        .host
        .links
        .keys()
        .any(|l| l.starts_with("tap")));
    let r = converge(&w, &config(&state, &[router(R1)]));
    let text = changes(&r).join("\n");
    for p in ports_of(R1) {
        assert!(text.contains(&format!("ip link del {p}")), "{text}");
        assert!(text.contains(&format!("add-port br-int {p} ")), "{text}");
    }
    let world = w.lock().unwrap();
    assert!(
        !world.host.links.keys().any(|l| l.starts_with("tap")),
        "host ends left: {:?}",
        world.host.links.keys()
    );
    assert_eq!(bridge(&world, BR_INT).len(), 3);
}

/// A host without the integration bridge, or whose ovsdb-server does not answer, is refused
/// before the first change: nothing logged, no state directory, the message names the field
/// (and the socket).
#[test]
fn a_missing_integration_bridge_or_an_unreachable_ovsdb_is_refused_before_anything_changes() {
    type Edit = fn(&mut World);
    let cases: [(&str, Edit, String); 2] = [
        (
            "no bridge",
            |w| {
                w.ovs.bridges.clear();
            },
            format!("agent.integration_bridge: bridge br-int does not exist in the OVSDB at {DB}"),
        ),
        (
            "ovsdb down",
            |w| w.ovsdb_down = true,
            format!("agent.ovsdb: connecting to ovsdb-server at {DB}: "),
        ),
    ];
    for (class, edit, expect) in cases {
        let w = ovs_world();
        edit(&mut w.lock().unwrap());
        let state = state_dir();
        let cfg = config(&state, &[router(R1)]);
        for result in [
            host::apply(&cfg, &opts(), &fake::sides(&w)),
            host::plan(&cfg, &facts(), &fake::sides(&w)),
        ] {
            let e = result.expect_err(class);
            assert!(matches!(e, host::HostError::Host(_)), "{class}: {e:?}");
            let e = e.to_string();
            assert!(e.starts_with("the host does not fit the config"), "{e}");
            assert!(e.contains(&expect), "{class}: {expect:?} not in {e}");
        }
        assert!(w.lock().unwrap().log.is_empty(), "{class}");
        assert!(!state.exists(), "{class}: the state directory was made");
    }
}

#[test]
fn the_bridge_is_read_once_per_run_and_written_once_per_router() {
    let w = ovs_world();
    let state = state_dir();
    let cfg = config(&state, &[router(R1), router(R2), router(R3)]);
    let reads = |w: &SharedWorld| w.lock().unwrap().ovs_reads;
    let r0 = reads(&w);
    plan(&w, &cfg);
    assert_eq!(reads(&w) - r0, 1, "plan");
    let r0 = reads(&w);
    apply(&w, &cfg);
    assert_eq!(reads(&w) - r0, 1, "apply");
    assert_eq!(
        w.lock().unwrap().ovs.applied.len(),
        3,
        "one transaction per router"
    );
    let r0 = reads(&w);
    host::status(&state, &fake::sides(&w)).unwrap();
    assert_eq!(reads(&w) - r0, 1, "status");
    // The steady state: one read, no write.
    let r0 = reads(&w);
    assert!(!apply(&w, &cfg).changed());
    assert_eq!(reads(&w) - r0, 1);
    assert_eq!(w.lock().unwrap().ovs.applied.len(), 3);
}

#[test]
fn a_failing_new_router_has_its_ports_unplugged_with_its_namespace() {
    let w = ovs_world();
    let state = state_dir();
    let cfg = config(&state, &[router(R1), router(R2)]);
    let [qr0, ..] = ports_of(R2);
    // R2's ports are plugged, its first device's MTU cannot be set.
    w.lock().unwrap().fail_on = Some(format!("ip link set {qr0} mtu"));
    let r = apply(&w, &cfg);
    let status = |id: &str| r.routers.iter().find(|x| x.id == id).map(|x| x.status);
    assert_eq!(status(R1), Some(RouterStatus::Converged));
    assert_eq!(status(R2), Some(RouterStatus::Failed));
    {
        let world = w.lock().unwrap();
        assert!(!world.namespaces.keys().any(|n| n.as_str() == ns_of(R2)));
        let ports: Vec<String> = bridge(&world, BR_INT).into_keys().collect();
        assert!(
            !ports.iter().any(|p| p.contains("0a5e2")),
            "R2's ports left on the bridge: {ports:?}"
        );
        assert!(world.host.links.is_empty(), "{:?}", world.host.links.keys());
    }
    converge(&w, &cfg);
}

#[test]
fn destroy_unplugs_every_port_and_removes_every_namespace() {
    let w = ovs_world();
    let state = state_dir();
    converge(&w, &config(&state, &[router(R1), router(R2)]));
    let stop = Arc::new(AtomicBool::new(false));
    let r = host::destroy(&state, None, &stop, &fake::sides(&w)).expect("destroy");
    assert!(!r.failed(), "{r:#?}");
    let world = w.lock().unwrap();
    assert!(world.namespaces.is_empty());
    assert!(
        bridge(&world, BR_INT).is_empty(),
        "{:?}",
        bridge(&world, BR_INT)
    );
    assert!(world.host.links.is_empty());
}

#[test]
fn dvr_ports_are_ovs_ports_and_the_links_between_namespaces_stay_veths() {
    let w = ovs_world();
    let state = state_dir();
    let mut r: Value =
        serde_json::from_str(include_str!("data/neutron-router-dvr.json")).expect("json");
    r["id"] = json!("0a5e0004-0000-4000-8000-000000000004");
    let cfg = ovs_config(
        &state,
        "dvr_snat",
        &[r],
        json!({"integration_bridge": BR_INT}),
    );
    // (A DVR plan lists a router's namespace creations with each namespace, the apply makes
    // them all first: the same changes in another order.)
    let mut planned = changes(&plan(&w, &cfg));
    let applied = apply(&w, &cfg);
    assert!(!applied.failed(), "{applied:#?}");
    let mut made = changes(&applied);
    planned.sort();
    made.sort();
    assert_eq!(planned, made);
    assert!(!plan(&w, &cfg).changed());
    let world = w.lock().unwrap();
    let ports: Vec<String> = bridge(&world, BR_INT).into_keys().collect();
    for prefix in ["qr-", "qg-", "sg-", "fg-"] {
        assert!(
            ports.iter().any(|p| p.starts_with(prefix)),
            "no {prefix} port in {ports:?}"
        );
    }
    assert!(!ports
        .iter()
        .any(|p| p.starts_with("rfp-") || p.starts_with("fpr-")));
    let kinds: BTreeMap<String, Option<String>> = world
        .namespaces
        .values()
        .flat_map(|n| n.links.iter().map(|(k, l)| (k.clone(), l.kind.clone())))
        .collect();
    for (name, kind) in &kinds {
        let want = match name.get(..3).unwrap_or_default() {
            "qr-" | "qg-" | "sg-" | "fg-" => Some("tun"),
            "rfp" | "fpr" => Some("veth"),
            _ => continue,
        };
        assert_eq!(kind.as_deref(), want, "{name}");
    }
    assert!(world.host.links.is_empty(), "{:?}", world.host.links.keys());
}
