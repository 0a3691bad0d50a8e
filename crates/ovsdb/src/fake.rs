//! An in-memory [`OvsPorts`] for tests of the layers above (the router reconciler): the same
//! outcomes as [`crate::Ovsdb`] (created, updated, moved, deleted; refusals; all or nothing),
//! with no server. It records every change set it was given.

use std::collections::BTreeMap;

use l3agent_types::IfName;

use crate::model::{
    Applied, ChangeSet, InternalPort, PortChange, PortChangeRequest, PortRecord, DEAD_VLAN_TAG,
    INTERNAL,
};
use crate::{OvsPorts, OvsdbError};

/// Bridges and their ports, in memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeOvs {
    /// Bridge name → port name → record.
    pub bridges: BTreeMap<String, BTreeMap<String, PortRecord>>,
    /// Every change set passed to `apply`, in order.
    pub applied: Vec<ChangeSet>,
    next_ofport: i64,
}

impl FakeOvs {
    /// With these (empty) bridges.
    pub fn with_bridges(names: &[&str]) -> FakeOvs {
        FakeOvs {
            bridges: names
                .iter()
                .map(|n| ((*n).to_owned(), BTreeMap::new()))
                .collect(),
            applied: Vec::new(),
            next_ofport: 1,
        }
    }

    /// The record of a port on a bridge (to assert on, or to edit to inject drift).
    pub fn port_mut(&mut self, bridge: &str, port: &str) -> Option<&mut PortRecord> {
        self.bridges.get_mut(bridge)?.get_mut(port)
    }

    fn owner(&self, port: &str) -> Option<String> {
        self.bridges
            .iter()
            .find(|(_, ports)| ports.contains_key(port))
            .map(|(b, _)| b.clone())
    }

    fn record(&mut self, spec: &InternalPort) -> PortRecord {
        let ofport = self.next_ofport;
        self.next_ofport += 1;
        PortRecord {
            name: spec.name.to_string(),
            tag: Some(i64::from(DEAD_VLAN_TAG)),
            interfaces: 1,
            interface_type: INTERNAL.to_owned(),
            external_ids: spec
                .external_ids
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            mtu_request: spec.mtu_request.map(|m| i64::from(m.get())),
            ofport: Some(ofport),
            error: None,
        }
    }
}

fn repair(rec: &mut PortRecord, spec: &InternalPort) {
    rec.interface_type = INTERNAL.to_owned();
    rec.mtu_request = spec.mtu_request.map(|m| i64::from(m.get()));
    for (k, v) in spec.external_ids.iter() {
        rec.external_ids.insert(k.to_owned(), v.to_owned());
    }
    rec.interfaces = 1;
}

impl OvsPorts for FakeOvs {
    fn bridge_exists(&mut self, bridge: &IfName) -> Result<bool, OvsdbError> {
        Ok(self.bridges.contains_key(bridge.as_str()))
    }

    fn ports(&mut self, bridge: &IfName) -> Result<Vec<PortRecord>, OvsdbError> {
        self.bridges
            .get(bridge.as_str())
            .map(|p| p.values().cloned().collect())
            .ok_or_else(|| OvsdbError::NoBridge {
                bridge: bridge.to_string(),
            })
    }

    fn apply(&mut self, changes: &ChangeSet) -> Result<Applied, OvsdbError> {
        self.applied.push(changes.clone());
        let bridge = changes.bridge().as_str();
        if !self.bridges.contains_key(bridge) {
            return Err(OvsdbError::NoBridge {
                bridge: bridge.to_owned(),
            });
        }
        // All or nothing: work on a copy.
        let mut next = self.clone();
        let mut out = Vec::new();
        for change in changes.changes() {
            match change {
                PortChangeRequest::Plug(spec) => {
                    let n = spec.name.as_str();
                    match next.owner(n) {
                        None => {
                            let rec = next.record(spec);
                            next.bridges
                                .entry(bridge.to_owned())
                                .or_default()
                                .insert(n.to_owned(), rec);
                            out.push(PortChange::Created {
                                port: spec.name.clone(),
                            });
                        }
                        Some(b) if b == bridge => {
                            let rec = next.port_mut(bridge, n).ok_or_else(|| {
                                OvsdbError::Protocol("fake: port vanished".into())
                            })?;
                            let what = spec.drift(rec);
                            repair(rec, spec);
                            if !what.is_empty() {
                                out.push(PortChange::Updated {
                                    port: spec.name.clone(),
                                    what,
                                });
                            }
                        }
                        Some(other) => {
                            if !changes.moves_allowed() {
                                return Err(OvsdbError::PortOnOtherBridge {
                                    port: n.to_owned(),
                                    bridge: bridge.to_owned(),
                                    other,
                                });
                            }
                            let mut rec = next
                                .bridges
                                .get_mut(&other)
                                .and_then(|p| p.remove(n))
                                .ok_or_else(|| {
                                    OvsdbError::Protocol("fake: port vanished".into())
                                })?;
                            repair(&mut rec, spec);
                            rec.tag = Some(i64::from(DEAD_VLAN_TAG));
                            next.bridges
                                .entry(bridge.to_owned())
                                .or_default()
                                .insert(n.to_owned(), rec);
                            out.push(PortChange::Moved {
                                port: spec.name.clone(),
                                from: other,
                            });
                        }
                    }
                }
                PortChangeRequest::Unplug(name) => {
                    let removed = next
                        .bridges
                        .get_mut(bridge)
                        .and_then(|p| p.remove(name.as_str()));
                    if removed.is_some() {
                        out.push(PortChange::Deleted { port: name.clone() });
                    }
                }
            }
        }
        let wrote = !out.is_empty();
        self.bridges = next.bridges;
        self.next_ofport = next.next_ofport;
        Ok(Applied {
            changes: out,
            next_cfg: wrote.then_some(self.applied.len() as i64),
            attempts: 1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use l3agent_types::{MacAddr, PortId};

    fn name(s: &str) -> IfName {
        IfName::new("name", s).unwrap()
    }

    fn spec(n: &str) -> InternalPort {
        InternalPort::neutron(
            name(n),
            &PortId::new("id", "p1").unwrap(),
            MacAddr::parse("mac", "fa:16:3e:00:00:01").unwrap(),
        )
    }

    #[test]
    fn the_fake_plugs_repairs_refuses_and_unplugs_like_the_real_one() {
        let mut ovs = FakeOvs::with_bridges(&["br-int", "br-ex"]);
        let mut cs = ChangeSet::new(name("br-int"));
        cs.plug(spec("qr-1")).unwrap();
        let a = ovs.apply(&cs).unwrap();
        assert_eq!(a.changes, vec![PortChange::Created { port: name("qr-1") }]);
        assert!(ovs.apply(&cs).unwrap().changes.is_empty());

        ovs.port_mut("br-int", "qr-1").unwrap().interface_type = "system".into();
        assert_eq!(
            ovs.apply(&cs).unwrap().changes,
            vec![PortChange::Updated {
                port: name("qr-1"),
                what: vec!["type".into()]
            }]
        );

        let mut ex = ChangeSet::new(name("br-ex"));
        ex.plug(spec("qr-1")).unwrap().plug(spec("qg-1")).unwrap();
        assert!(matches!(
            ovs.apply(&ex),
            Err(OvsdbError::PortOnOtherBridge { .. })
        ));
        // All or nothing: qg-1 was not created either.
        assert!(ovs.ports(&name("br-ex")).unwrap().is_empty());
        ex.move_from_other_bridges(true);
        assert_eq!(ovs.apply(&ex).unwrap().changes.len(), 2);
        assert!(ovs.ports(&name("br-int")).unwrap().is_empty());

        let mut un = ChangeSet::new(name("br-ex"));
        un.unplug(name("qr-1"))
            .unwrap()
            .unplug(name("nothing"))
            .unwrap();
        assert_eq!(
            ovs.apply(&un).unwrap().changes,
            vec![PortChange::Deleted { port: name("qr-1") }]
        );
        assert!(matches!(
            ovs.ports(&name("br-nope")),
            Err(OvsdbError::NoBridge { .. })
        ));
        assert_eq!(ovs.applied.len(), 6);
    }
}
