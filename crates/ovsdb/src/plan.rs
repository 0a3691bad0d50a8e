//! The pure core of an apply: what was read ([`Observed`]) plus what is wanted ([`ChangeSet`])
//! gives the operations of ONE transaction ([`Plan`]), or nothing when the bridge already
//! matches. No I/O, so every case is unit-tested on its JSON.
//!
//! Correctness under concurrent writers (another agent, an operator's `ovs-vsctl`) is
//! optimistic: the transaction starts with `wait` operations (timeout 0) asserting that every
//! row the plan was computed from is still as read; if one is not, the server refuses the whole
//! transaction with "timed out" at that `wait`, and the caller reads again and re-plans. Set
//! columns shared with other writers (`Bridge.ports`, `Interface.external_ids`) are changed
//! with `mutate`, never rewritten whole, so members we do not own are never lost.

use std::collections::BTreeMap;

use l3agent_types::IfName;
use serde_json::json;

use crate::datum::{named_uuid, optional_integer, set, string_map, Uuid};
use crate::model::{
    ChangeSet, InternalPort, PortChange, PortChangeRequest, DEAD_VLAN_TAG, INTERNAL,
};
use crate::op::{row, Condition, Mutation, Op, Row};
use crate::OvsdbError;

/// A Port row as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PortRow {
    pub uuid: Uuid,
    pub interfaces: Vec<Uuid>,
    /// The bridge whose `ports` holds it: (uuid, name).
    pub owner: Option<(Uuid, String)>,
}

/// An Interface row as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IfaceRow {
    pub uuid: Uuid,
    pub kind: String,
    pub external_ids: BTreeMap<String, String>,
    pub mtu_request: Option<i64>,
}

/// The rows named like one port of the change set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ObservedName {
    pub port: Option<PortRow>,
    pub iface: Option<IfaceRow>,
}

/// Everything a plan depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Observed {
    pub bridge: Uuid,
    pub names: BTreeMap<IfName, ObservedName>,
}

/// One transaction's operations and what they change. `ops` is empty when nothing needs
/// writing.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plan {
    pub ops: Vec<Op>,
    pub changes: Vec<PortChange>,
    /// The index of the `select` that reads the new `next_cfg`, if anything is written.
    pub next_cfg_at: Option<usize>,
}

fn by_uuid(uuid: &Uuid) -> Vec<Condition> {
    vec![Condition::eq("_uuid", uuid.to_json())]
}

fn by_name(name: &str) -> Vec<Condition> {
    vec![Condition::eq("name", json!(name))]
}

/// The `wait`s asserting that the rows named `name` are still as observed.
fn guards(name: &IfName, seen: &ObservedName) -> Vec<Op> {
    let n = name.as_str();
    let port_rows = match &seen.port {
        None => vec![],
        Some(p) => vec![row([
            ("_uuid", p.uuid.to_json()),
            ("interfaces", set(p.interfaces.iter().map(Uuid::to_json))),
        ])],
    };
    let iface_rows = match &seen.iface {
        None => vec![],
        Some(i) => vec![row([("_uuid", i.uuid.to_json())])],
    };
    let mut out = vec![
        Op::Wait {
            table: "Port",
            conditions: by_name(n),
            columns: vec!["_uuid", "interfaces"],
            rows: port_rows,
            what: format!("{n} unchanged"),
        },
        Op::Wait {
            table: "Interface",
            conditions: by_name(n),
            columns: vec!["_uuid"],
            rows: iface_rows,
            what: format!("{n} unchanged"),
        },
    ];
    if let Some(p) = &seen.port {
        // Still on the bridge it was on (or still on none).
        let mut conditions = vec![Condition::includes("ports", p.uuid.to_json())];
        let rows = match &p.owner {
            Some((b, _)) => {
                conditions.insert(0, Condition::eq("_uuid", b.to_json()));
                vec![row([("_uuid", b.to_json())])]
            }
            None => vec![],
        };
        out.push(Op::Wait {
            table: "Bridge",
            conditions,
            columns: vec!["_uuid"],
            rows,
            what: format!("holding {n} unchanged"),
        });
    }
    out
}

fn interface_row(spec: &InternalPort) -> Row {
    row([
        ("name", json!(spec.name.as_str())),
        ("type", json!(INTERNAL)),
        ("external_ids", string_map(spec.external_ids.iter())),
        (
            "mtu_request",
            optional_integer(spec.mtu_request.map(|m| i64::from(m.get()))),
        ),
    ])
}

/// The writes that make an existing Interface row match `spec`, and the columns they touch.
fn repair_interface(spec: &InternalPort, i: &IfaceRow) -> (Vec<Op>, Vec<String>) {
    let n = spec.name.as_str();
    let mut ops = Vec::new();
    let mut what = Vec::new();
    let mut columns = Row::new();
    if i.kind != INTERNAL {
        columns.insert("type".into(), json!(INTERNAL));
        what.push("type".to_owned());
    }
    let want_mtu = spec.mtu_request.map(|m| i64::from(m.get()));
    if i.mtu_request != want_mtu {
        columns.insert("mtu_request".into(), optional_integer(want_mtu));
        what.push("mtu_request".to_owned());
    }
    if !columns.is_empty() {
        ops.push(Op::Update {
            table: "Interface",
            conditions: by_uuid(&i.uuid),
            row: columns,
            what: n.to_owned(),
        });
    }
    let drifted = spec.external_ids.drifted(&i.external_ids);
    if !drifted.is_empty() {
        // "delete" by key then "insert": a map "insert" never overwrites an existing key.
        // Keys other programs wrote stay.
        let pairs: Vec<(&str, &str)> = spec
            .external_ids
            .iter()
            .filter(|(k, _)| drifted.contains(k))
            .collect();
        ops.push(Op::Mutate {
            table: "Interface",
            conditions: by_uuid(&i.uuid),
            mutations: vec![
                Mutation::delete("external_ids", set(drifted.iter().map(|k| json!(k)))),
                Mutation::insert("external_ids", string_map(pairs)),
            ],
            what: n.to_owned(),
        });
        what.extend(drifted.iter().map(|k| format!("external_ids:{k}")));
    }
    (ops, what)
}

/// Plans `changes` against what was read.
pub(crate) fn plan(changes: &ChangeSet, seen: &Observed) -> Result<Plan, OvsdbError> {
    let bridge = changes.bridge().as_str();
    let mut guard_ops = Vec::new();
    let mut writes = Vec::new();
    let mut out = Vec::new();
    let mut add_to_bridge = Vec::new();
    let mut remove_from_bridge = Vec::new();
    // Moves: owner bridge -> ports to remove from it.
    let mut take_from: BTreeMap<Uuid, (String, Vec<Uuid>)> = BTreeMap::new();
    let nothing = ObservedName::default();

    for (i, change) in changes.changes().enumerate() {
        let name = change.name();
        let n = name.as_str();
        let s = seen.names.get(name).unwrap_or(&nothing);
        let before = writes.len();
        let mut touched = false;
        match change {
            PortChangeRequest::Plug(spec) => {
                let iface_name = format!("iface{i}");
                match &s.port {
                    None => {
                        if s.iface.is_some() {
                            return Err(OvsdbError::InterfaceInUse { port: n.to_owned() });
                        }
                        writes.push(Op::Insert {
                            table: "Interface",
                            row: interface_row(spec),
                            uuid_name: Some(iface_name.clone()),
                            what: n.to_owned(),
                        });
                        let port_name = format!("port{i}");
                        writes.push(Op::Insert {
                            table: "Port",
                            row: row([
                                ("name", json!(n)),
                                ("interfaces", named_uuid(&iface_name)),
                                ("tag", json!(DEAD_VLAN_TAG)),
                            ]),
                            uuid_name: Some(port_name.clone()),
                            what: n.to_owned(),
                        });
                        add_to_bridge.push(named_uuid(&port_name));
                        out.push(PortChange::Created { port: name.clone() });
                        touched = true;
                    }
                    Some(p) => {
                        let mut moved_from = None;
                        match &p.owner {
                            Some((b, _)) if *b == seen.bridge => {}
                            other => {
                                let from = other
                                    .as_ref()
                                    .map(|(_, on)| on.clone())
                                    .unwrap_or_else(|| "(none)".to_owned());
                                if !changes.moves_allowed() {
                                    return Err(OvsdbError::PortOnOtherBridge {
                                        port: n.to_owned(),
                                        bridge: bridge.to_owned(),
                                        other: from,
                                    });
                                }
                                if let Some((b, on)) = other {
                                    take_from
                                        .entry(b.clone())
                                        .or_insert_with(|| (on.clone(), Vec::new()))
                                        .1
                                        .push(p.uuid.clone());
                                }
                                add_to_bridge.push(p.uuid.to_json());
                                moved_from = Some(from);
                            }
                        }
                        let mut port_columns = Row::new();
                        if moved_from.is_some() {
                            port_columns.insert("tag".into(), json!(DEAD_VLAN_TAG));
                        }
                        let mut what = Vec::new();
                        match &s.iface {
                            Some(iface) if p.interfaces.contains(&iface.uuid) => {
                                let (ops, w) = repair_interface(spec, iface);
                                writes.extend(ops);
                                what.extend(w);
                                if p.interfaces.len() != 1 {
                                    port_columns.insert("interfaces".into(), iface.uuid.to_json());
                                    what.push("interfaces".to_owned());
                                }
                            }
                            Some(_) => {
                                return Err(OvsdbError::InterfaceInUse { port: n.to_owned() })
                            }
                            None => {
                                writes.push(Op::Insert {
                                    table: "Interface",
                                    row: interface_row(spec),
                                    uuid_name: Some(iface_name.clone()),
                                    what: n.to_owned(),
                                });
                                port_columns.insert("interfaces".into(), named_uuid(&iface_name));
                                what.push("interfaces".to_owned());
                            }
                        }
                        if !port_columns.is_empty() {
                            writes.push(Op::Update {
                                table: "Port",
                                conditions: by_uuid(&p.uuid),
                                row: port_columns,
                                what: n.to_owned(),
                            });
                        }
                        if let Some(from) = moved_from {
                            out.push(PortChange::Moved {
                                port: name.clone(),
                                from,
                            });
                            touched = true;
                        } else if !what.is_empty() {
                            out.push(PortChange::Updated {
                                port: name.clone(),
                                what,
                            });
                        }
                    }
                }
            }
            PortChangeRequest::Unplug(_) => {
                if let Some(p) = &s.port {
                    if p.owner.as_ref().is_some_and(|(b, _)| *b == seen.bridge) {
                        remove_from_bridge.push(p.uuid.to_json());
                        out.push(PortChange::Deleted { port: name.clone() });
                        touched = true;
                    }
                }
            }
        }
        if touched || writes.len() > before {
            guard_ops.extend(guards(name, s));
        }
    }

    if writes.is_empty() && add_to_bridge.is_empty() && remove_from_bridge.is_empty() {
        return Ok(Plan {
            ops: Vec::new(),
            changes: out,
            next_cfg_at: None,
        });
    }

    let mut ops = vec![Op::Wait {
        table: "Bridge",
        conditions: by_name(bridge),
        columns: vec!["_uuid"],
        rows: vec![row([("_uuid", seen.bridge.to_json())])],
        what: format!("{bridge} unchanged"),
    }];
    ops.extend(guard_ops);
    ops.extend(writes);
    // Ports leave their old bridge before they join this one (one transaction: the row is
    // referenced throughout, so it is not garbage-collected in between).
    for (b, (on, ports)) in &take_from {
        ops.push(Op::Mutate {
            table: "Bridge",
            conditions: by_uuid(b),
            mutations: vec![Mutation::delete(
                "ports",
                set(ports.iter().map(Uuid::to_json)),
            )],
            what: on.clone(),
        });
    }
    let mut mutations = Vec::new();
    if !remove_from_bridge.is_empty() {
        // The Port rows (and their Interfaces) are garbage-collected once unreferenced.
        mutations.push(Mutation::delete("ports", set(remove_from_bridge)));
    }
    if !add_to_bridge.is_empty() {
        mutations.push(Mutation::insert("ports", set(add_to_bridge)));
    }
    if !mutations.is_empty() {
        ops.push(Op::Mutate {
            table: "Bridge",
            conditions: by_uuid(&seen.bridge),
            mutations,
            what: bridge.to_owned(),
        });
    }
    ops.push(Op::Comment(comment(bridge, &out)));
    // As ovs-vsctl does: bump next_cfg, and read it back to know what to wait for.
    ops.push(Op::Mutate {
        table: "Open_vSwitch",
        conditions: vec![],
        mutations: vec![Mutation::add("next_cfg", 1)],
        what: "next_cfg".to_owned(),
    });
    ops.push(Op::Select {
        table: "Open_vSwitch",
        conditions: vec![],
        columns: Some(vec!["next_cfg"]),
    });
    let next_cfg_at = Some(ops.len() - 1);
    Ok(Plan {
        ops,
        changes: out,
        next_cfg_at,
    })
}

/// `l3agent: br-int: 2 created, 1 updated, 0 moved, 3 deleted`: recorded in the database log.
fn comment(bridge: &str, changes: &[PortChange]) -> String {
    let count = |f: fn(&PortChange) -> bool| changes.iter().filter(|c| f(c)).count();
    format!(
        "l3agent: {bridge}: {} created, {} updated, {} moved, {} deleted",
        count(|c| matches!(c, PortChange::Created { .. })),
        count(|c| matches!(c, PortChange::Updated { .. })),
        count(|c| matches!(c, PortChange::Moved { .. })),
        count(|c| matches!(c, PortChange::Deleted { .. })),
    )
}

/// The names whose rows the read phase must fetch, in change set order.
pub(crate) fn names(changes: &ChangeSet) -> Vec<IfName> {
    changes.changes().map(|c| c.name().clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ExternalIds, MtuRequest};
    use l3agent_types::{MacAddr, PortId};
    use serde_json::Value;

    const BR: &str = "0da5359d-d7ff-4408-a048-5369a60dab15";
    const BR2: &str = "1da5359d-d7ff-4408-a048-5369a60dab15";
    const P1: &str = "2da5359d-d7ff-4408-a048-5369a60dab15";
    const I1: &str = "3da5359d-d7ff-4408-a048-5369a60dab15";
    const I2: &str = "4da5359d-d7ff-4408-a048-5369a60dab15";

    fn u(s: &str) -> Uuid {
        Uuid::parse(s).unwrap()
    }

    fn name(s: &str) -> IfName {
        IfName::new("name", s).unwrap()
    }

    fn spec(n: &str) -> InternalPort {
        InternalPort::neutron(
            name(n),
            &PortId::new("id", "87c7c2ae-d0ba-4691-820c-8053abf50b8d").unwrap(),
            MacAddr::parse("mac", "fa:16:3e:00:00:01").unwrap(),
        )
    }

    fn set_of(cs: &mut ChangeSet, p: InternalPort) -> ChangeSet {
        cs.plug(p).unwrap();
        cs.clone()
    }

    fn observed(n: &str, o: ObservedName) -> Observed {
        Observed {
            bridge: u(BR),
            names: [(name(n), o)].into_iter().collect(),
        }
    }

    fn matching_iface(p: &InternalPort) -> IfaceRow {
        IfaceRow {
            uuid: u(I1),
            kind: "internal".into(),
            external_ids: p
                .external_ids
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            mtu_request: None,
        }
    }

    fn on_bridge(b: &str, bn: &str) -> PortRow {
        PortRow {
            uuid: u(P1),
            interfaces: vec![u(I1)],
            owner: Some((u(b), bn.into())),
        }
    }

    fn json_ops(p: &Plan) -> Vec<Value> {
        p.ops.iter().map(Op::to_json).collect()
    }

    #[test]
    fn a_new_port_is_one_transaction_like_neutrons_replace_port() {
        let cs = set_of(&mut ChangeSet::new(name("br-int")), spec("qr-1"));
        let p = plan(&cs, &observed("qr-1", ObservedName::default())).unwrap();
        assert_eq!(p.changes, vec![PortChange::Created { port: name("qr-1") }]);
        let ops = json_ops(&p);
        assert_eq!(
            ops,
            vec![
                json!({"op": "wait", "table": "Bridge", "where": [["name", "==", "br-int"]],
                       "columns": ["_uuid"], "until": "==", "rows": [{"_uuid": ["uuid", BR]}], "timeout": 0}),
                json!({"op": "wait", "table": "Port", "where": [["name", "==", "qr-1"]],
                       "columns": ["_uuid", "interfaces"], "until": "==", "rows": [], "timeout": 0}),
                json!({"op": "wait", "table": "Interface", "where": [["name", "==", "qr-1"]],
                       "columns": ["_uuid"], "until": "==", "rows": [], "timeout": 0}),
                json!({"op": "insert", "table": "Interface", "uuid-name": "iface0",
                       "row": {"name": "qr-1", "type": "internal",
                               "external_ids": ["map", [["attached-mac", "fa:16:3e:00:00:01"],
                                                        ["iface-id", "87c7c2ae-d0ba-4691-820c-8053abf50b8d"],
                                                        ["iface-status", "active"]]],
                               "mtu_request": ["set", []]}}),
                json!({"op": "insert", "table": "Port", "uuid-name": "port0",
                       "row": {"name": "qr-1", "interfaces": ["named-uuid", "iface0"], "tag": 4095}}),
                json!({"op": "mutate", "table": "Bridge", "where": [["_uuid", "==", ["uuid", BR]]],
                       "mutations": [["ports", "insert", ["set", [["named-uuid", "port0"]]]]]}),
                json!({"op": "comment", "comment": "l3agent: br-int: 1 created, 0 updated, 0 moved, 0 deleted"}),
                json!({"op": "mutate", "table": "Open_vSwitch", "where": [],
                       "mutations": [["next_cfg", "+=", 1]]}),
                json!({"op": "select", "table": "Open_vSwitch", "where": [], "columns": ["next_cfg"]}),
            ]
        );
        assert_eq!(p.next_cfg_at, Some(8));
    }

    #[test]
    fn a_matching_port_plans_nothing_at_all() {
        let sp = spec("qr-1");
        let cs = set_of(&mut ChangeSet::new(name("br-int")), sp.clone());
        let seen = observed(
            "qr-1",
            ObservedName {
                port: Some(on_bridge(BR, "br-int")),
                iface: Some(matching_iface(&sp)),
            },
        );
        let p = plan(&cs, &seen).unwrap();
        assert!(p.ops.is_empty() && p.changes.is_empty() && p.next_cfg_at.is_none());
    }

    #[test]
    fn drift_is_repaired_in_place_keeping_foreign_keys_and_the_tag() {
        let sp = spec("qr-1").with_mtu_request(MtuRequest::new("m", 1450).unwrap());
        let cs = set_of(&mut ChangeSet::new(name("br-int")), sp.clone());
        let mut iface = matching_iface(&sp);
        iface.kind = String::new();
        iface
            .external_ids
            .insert("iface-id".into(), "someone-else".into());
        iface.external_ids.remove("iface-status");
        iface
            .external_ids
            .insert("ovn-installed".into(), "true".into());
        let seen = observed(
            "qr-1",
            ObservedName {
                port: Some(on_bridge(BR, "br-int")),
                iface: Some(iface),
            },
        );
        let p = plan(&cs, &seen).unwrap();
        assert_eq!(
            p.changes,
            vec![PortChange::Updated {
                port: name("qr-1"),
                what: vec![
                    "type".into(),
                    "mtu_request".into(),
                    "external_ids:iface-id".into(),
                    "external_ids:iface-status".into()
                ]
            }]
        );
        let ops = json_ops(&p);
        let writes: Vec<&Value> = ops
            .iter()
            .filter(|o| o["op"] == "update" || o["op"] == "mutate" || o["op"] == "insert")
            .collect();
        assert_eq!(
            writes[..2],
            [
                &json!({"op": "update", "table": "Interface", "where": [["_uuid", "==", ["uuid", I1]]],
                        "row": {"type": "internal", "mtu_request": 1450}}),
                &json!({"op": "mutate", "table": "Interface", "where": [["_uuid", "==", ["uuid", I1]]],
                        "mutations": [["external_ids", "delete", ["set", ["iface-id", "iface-status"]]],
                                      ["external_ids", "insert", ["map", [["iface-id", "87c7c2ae-d0ba-4691-820c-8053abf50b8d"],
                                                                          ["iface-status", "active"]]]]]}),
            ]
        );
        // No Port update: the tag the L2 agent set stays; no Bridge.ports mutation.
        assert!(!ops
            .iter()
            .any(|o| o["table"] == "Port" && o["op"] != "wait"));
        assert!(!ops
            .iter()
            .any(|o| o["table"] == "Bridge" && o["op"] == "mutate"));
        // Guards: the bridge, the port, the interface, and the port still on this bridge.
        assert_eq!(
            ops[3],
            json!({"op": "wait", "table": "Bridge",
                   "where": [["_uuid", "==", ["uuid", BR]], ["ports", "includes", ["uuid", P1]]],
                   "columns": ["_uuid"], "until": "==", "rows": [{"_uuid": ["uuid", BR]}], "timeout": 0})
        );
        assert_eq!(
            ops[1]["rows"],
            json!([{"_uuid": ["uuid", P1], "interfaces": ["set", [["uuid", I1]]]}])
        );
    }

    #[test]
    fn a_port_with_extra_interfaces_is_reduced_to_its_own() {
        let sp = spec("qr-1");
        let cs = set_of(&mut ChangeSet::new(name("br-int")), sp.clone());
        let mut port = on_bridge(BR, "br-int");
        port.interfaces.push(u(I2));
        let seen = observed(
            "qr-1",
            ObservedName {
                port: Some(port),
                iface: Some(matching_iface(&sp)),
            },
        );
        let p = plan(&cs, &seen).unwrap();
        assert!(
            json_ops(&p).contains(&json!({"op": "update", "table": "Port",
            "where": [["_uuid", "==", ["uuid", P1]]], "row": {"interfaces": ["uuid", I1]}}))
        );
    }

    #[test]
    fn a_port_on_another_bridge_is_refused_unless_moving_is_allowed() {
        let sp = spec("qr-1");
        let mut cs = set_of(&mut ChangeSet::new(name("br-int")), sp.clone());
        let seen = observed(
            "qr-1",
            ObservedName {
                port: Some(on_bridge(BR2, "br-ex")),
                iface: Some(matching_iface(&sp)),
            },
        );
        let e = plan(&cs, &seen).unwrap_err();
        assert_eq!(
            e.to_string(),
            "port qr-1 is on bridge br-ex, not on br-int (allow moving, or unplug it there first)"
        );
        cs.move_from_other_bridges(true);
        let p = plan(&cs, &seen).unwrap();
        assert_eq!(
            p.changes,
            vec![PortChange::Moved {
                port: name("qr-1"),
                from: "br-ex".into()
            }]
        );
        let ops = json_ops(&p);
        let i_from = ops
            .iter()
            .position(|o| {
                o == &json!({"op": "mutate", "table": "Bridge", "where": [["_uuid", "==", ["uuid", BR2]]],
                "mutations": [["ports", "delete", ["set", [["uuid", P1]]]]]})
            })
            .unwrap();
        let i_to = ops
            .iter()
            .position(|o| {
                o == &json!({"op": "mutate", "table": "Bridge", "where": [["_uuid", "==", ["uuid", BR]]],
                "mutations": [["ports", "insert", ["set", [["uuid", P1]]]]]})
            })
            .unwrap();
        assert!(i_from < i_to);
        // Parked in the dead VLAN like a new port.
        assert!(ops.contains(&json!({"op": "update", "table": "Port",
            "where": [["_uuid", "==", ["uuid", P1]]], "row": {"tag": 4095}})));
    }

    #[test]
    fn an_interface_name_taken_by_another_port_is_refused() {
        let sp = spec("qr-1");
        let cs = set_of(&mut ChangeSet::new(name("br-int")), sp.clone());
        let seen = observed(
            "qr-1",
            ObservedName {
                port: None,
                iface: Some(matching_iface(&sp)),
            },
        );
        assert!(matches!(
            plan(&cs, &seen),
            Err(OvsdbError::InterfaceInUse { .. })
        ));
        let mut port = on_bridge(BR, "br-int");
        port.interfaces = vec![u(I2)];
        let seen = observed(
            "qr-1",
            ObservedName {
                port: Some(port),
                iface: Some(matching_iface(&sp)),
            },
        );
        assert!(matches!(
            plan(&cs, &seen),
            Err(OvsdbError::InterfaceInUse { .. })
        ));
    }

    #[test]
    fn unplug_removes_from_this_bridge_only_and_absent_is_a_no_op() {
        let mut cs = ChangeSet::new(name("br-int"));
        cs.unplug(name("qr-1")).unwrap();
        for seen in [
            observed("qr-1", ObservedName::default()),
            observed(
                "qr-1",
                ObservedName {
                    port: Some(on_bridge(BR2, "br-ex")),
                    iface: None,
                },
            ),
        ] {
            let p = plan(&cs, &seen).unwrap();
            assert!(p.ops.is_empty() && p.changes.is_empty());
        }
        let seen = observed(
            "qr-1",
            ObservedName {
                port: Some(on_bridge(BR, "br-int")),
                iface: None,
            },
        );
        let p = plan(&cs, &seen).unwrap();
        assert_eq!(p.changes, vec![PortChange::Deleted { port: name("qr-1") }]);
        assert!(
            json_ops(&p).contains(&json!({"op": "mutate", "table": "Bridge",
            "where": [["_uuid", "==", ["uuid", BR]]],
            "mutations": [["ports", "delete", ["set", [["uuid", P1]]]]]}))
        );
    }

    #[test]
    fn many_ports_share_one_bridge_mutation() {
        let mut cs = ChangeSet::new(name("br-int"));
        let mut names = BTreeMap::new();
        for i in 0..200 {
            let n = format!("qr-{i:03}");
            cs.plug(spec(&n)).unwrap();
            names.insert(name(&n), ObservedName::default());
        }
        let p = plan(
            &cs,
            &Observed {
                bridge: u(BR),
                names,
            },
        )
        .unwrap();
        assert_eq!(p.changes.len(), 200);
        let bridge_mutates = p
            .ops
            .iter()
            .filter(|o| {
                matches!(
                    o,
                    Op::Mutate {
                        table: "Bridge",
                        ..
                    }
                )
            })
            .count();
        assert_eq!(bridge_mutates, 1);
        // 1 bridge guard + 2 guards and 2 inserts per port + mutate, comment, next_cfg, select.
        assert_eq!(p.ops.len(), 1 + 200 * 4 + 4);
    }

    #[test]
    fn the_empty_external_ids_case_encodes_an_empty_map() {
        let mut sp = spec("qr-1");
        sp.external_ids = ExternalIds::new();
        let cs = set_of(&mut ChangeSet::new(name("br-int")), sp);
        let p = plan(&cs, &observed("qr-1", ObservedName::default())).unwrap();
        assert_eq!(
            p.ops[3].to_json()["row"]["external_ids"],
            json!(["map", []])
        );
    }
}
