//! Typed, validated inputs (what a router port should look like on the integration bridge) and
//! typed outputs (what a bridge holds, what an apply changed). Nothing here talks to a server.

use std::collections::BTreeMap;
use std::fmt;

use l3agent_types::{is_hidden, IfName, InvalidName, MacAddr, PortId};

use crate::OvsdbError;

/// The VLAN tag Neutron parks a new port in until its L2 agent wires it
/// (`neutron.plugins.ml2.drivers.openvswitch.agent.common.constants.DEAD_VLAN_TAG`).
pub const DEAD_VLAN_TAG: u16 = 4095;

/// The interface type of an OVS internal port (`ovs-vsctl set Interface X type=internal`).
pub const INTERNAL: &str = "internal";

fn invalid(field: &str, value: &str, reason: impl Into<String>) -> InvalidName {
    InvalidName {
        field: field.to_owned(),
        value: value.to_owned(),
        reason: reason.into(),
    }
}

/// A validated `external_ids` map of an Interface row. Keys are 1..=64 characters of
/// `[A-Za-z0-9_.:-]` (Neutron's `iface-id`, OVN's `neutron:port_name`); values are at most 255
/// characters with no control or Unicode format character. Checked before anything is sent,
/// so a value can never smuggle a line break into `ovs-vsctl` output or a log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExternalIds(BTreeMap<String, String>);

impl ExternalIds {
    /// The longest key.
    pub const MAX_KEY: usize = 64;
    /// The longest value.
    pub const MAX_VALUE: usize = 255;

    /// An empty map.
    pub fn new() -> ExternalIds {
        ExternalIds::default()
    }

    /// What Neutron's `OVSInterfaceDriver._ovs_add_port` writes: `iface-id` (the Neutron port
    /// the L2 agent wires), `iface-status=active`, `attached-mac` (lowercase, as Neutron's
    /// server sends it).
    pub fn neutron(port_id: &PortId, mac: MacAddr) -> ExternalIds {
        let mut m = BTreeMap::new();
        m.insert("iface-id".to_owned(), port_id.as_str().to_owned());
        m.insert("iface-status".to_owned(), "active".to_owned());
        m.insert("attached-mac".to_owned(), mac.to_string());
        ExternalIds(m)
    }

    /// Validates and adds (or replaces) a pair; `field` names where it came from in the error
    /// (`ports[3].external_ids`).
    pub fn insert(&mut self, field: &str, key: &str, value: &str) -> Result<(), InvalidName> {
        let key_field = format!("{field} key");
        if key.is_empty() || key.chars().count() > Self::MAX_KEY {
            return Err(invalid(
                &key_field,
                key,
                format!("must be 1 to {} characters", Self::MAX_KEY),
            ));
        }
        if let Some(c) = key
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')))
        {
            return Err(invalid(
                &key_field,
                key,
                format!("character {c:?} is not allowed (only A-Z a-z 0-9 _ . : -)"),
            ));
        }
        let value_field = format!("{field}[{key}]");
        if value.chars().count() > Self::MAX_VALUE {
            return Err(invalid(
                &value_field,
                value,
                format!("must be at most {} characters", Self::MAX_VALUE),
            ));
        }
        if let Some(c) = value.chars().find(|c| is_hidden(*c)) {
            return Err(invalid(
                &value_field,
                value,
                format!("control or format character {c:?} is not allowed"),
            ));
        }
        self.0.insert(key.to_owned(), value.to_owned());
        Ok(())
    }

    /// The pairs, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// A value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// How many pairs.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The keys whose value in `current` is not ours (missing or different).
    pub fn drifted<'a>(&'a self, current: &BTreeMap<String, String>) -> Vec<&'a str> {
        self.0
            .iter()
            .filter(|(k, v)| current.get(*k) != Some(*v))
            .map(|(k, _)| k.as_str())
            .collect()
    }
}

/// A request for an MTU on an internal port (`Interface.mtu_request`): 68 (IPv4's minimum)
/// to 65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MtuRequest(u16);

impl MtuRequest {
    /// Validates; `field` names it in the error.
    pub fn new(field: &str, mtu: u32) -> Result<MtuRequest, InvalidName> {
        match u16::try_from(mtu) {
            Ok(m) if m >= 68 => Ok(MtuRequest(m)),
            _ => Err(invalid(field, &mtu.to_string(), "must be 68 to 65535")),
        }
    }

    /// The MTU.
    pub fn get(self) -> u16 {
        self.0
    }
}

/// An OVS internal port for a router interface, as Neutron's `OVSInterfaceDriver.plug_new`
/// makes it (`ovs-vsctl -- --if-exists del-port qr-X -- add-port br-int qr-X -- set Port qr-X
/// tag=4095 -- set Interface qr-X type=internal external_ids:iface-id=...
/// external_ids:iface-status=active external_ids:attached-mac=...`).
///
/// What applying it owns: the Interface's `type` (always `internal`), its `mtu_request`
/// (`None` clears it, which is what Neutron leaves: it sets the MTU with `ip link` after moving
/// the device), the `external_ids` keys given here (other keys, written by other programs, are
/// left alone), and that the Port has exactly this one Interface. The Port's `tag` is written
/// only when the port is created (or moved between bridges): after that it belongs to the L2
/// agent, which moves it from the dead VLAN to the network's local VLAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalPort {
    /// The port's, the interface's and the device's name (`qr-1a2b3c4d-5e`).
    pub name: IfName,
    /// The external_ids keys this port must carry.
    pub external_ids: ExternalIds,
    /// `Interface.mtu_request`.
    pub mtu_request: Option<MtuRequest>,
}

impl InternalPort {
    /// The port Neutron's OVS interface driver plugs for a router interface.
    pub fn neutron(name: IfName, port_id: &PortId, mac: MacAddr) -> InternalPort {
        InternalPort {
            name,
            external_ids: ExternalIds::neutron(port_id, mac),
            mtu_request: None,
        }
    }

    /// With an MTU request.
    pub fn with_mtu_request(mut self, mtu: MtuRequest) -> InternalPort {
        self.mtu_request = Some(mtu);
        self
    }

    /// What of `record` differs from this port (the drift a re-apply repairs): `type`,
    /// `mtu_request`, `external_ids:KEY`. Empty when the record matches.
    pub fn drift(&self, record: &PortRecord) -> Vec<String> {
        let mut out = Vec::new();
        if record.interface_type != INTERNAL {
            out.push("type".to_owned());
        }
        if record.mtu_request != self.mtu_request.map(|m| i64::from(m.get())) {
            out.push("mtu_request".to_owned());
        }
        for k in self.external_ids.drifted(&record.external_ids) {
            out.push(format!("external_ids:{k}"));
        }
        if record.interfaces != 1 {
            out.push("interfaces".to_owned());
        }
        out
    }
}

/// What to do with a port name in a [`ChangeSet`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortChangeRequest {
    /// Add the port, or update it in place to match.
    Plug(InternalPort),
    /// Remove the port from the bridge (no-op if it is not there).
    Unplug(IfName),
}

impl PortChangeRequest {
    /// The port's name.
    pub fn name(&self) -> &IfName {
        match self {
            PortChangeRequest::Plug(p) => &p.name,
            PortChangeRequest::Unplug(n) => n,
        }
    }
}

/// A set of port changes on one bridge, applied in one transaction
/// ([`crate::Ovsdb::apply`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeSet {
    bridge: IfName,
    changes: BTreeMap<IfName, PortChangeRequest>,
    move_from_other_bridges: bool,
    wait_for_vswitchd: bool,
}

impl ChangeSet {
    /// An empty change set for `bridge` (`br-int`). By default a port found on another bridge
    /// is an error ([`OvsdbError::PortOnOtherBridge`]) and applying waits for ovs-vswitchd.
    pub fn new(bridge: IfName) -> ChangeSet {
        ChangeSet {
            bridge,
            changes: BTreeMap::new(),
            move_from_other_bridges: false,
            wait_for_vswitchd: true,
        }
    }

    /// The bridge.
    pub fn bridge(&self) -> &IfName {
        &self.bridge
    }

    /// Adds or updates an internal port. A name may appear once per change set.
    pub fn plug(&mut self, port: InternalPort) -> Result<&mut ChangeSet, OvsdbError> {
        self.add(PortChangeRequest::Plug(port))
    }

    /// Removes a port from the bridge; a port that is not on it is left alone (also when it is
    /// on another bridge). A name may appear once per change set.
    pub fn unplug(&mut self, name: IfName) -> Result<&mut ChangeSet, OvsdbError> {
        self.add(PortChangeRequest::Unplug(name))
    }

    fn add(&mut self, change: PortChangeRequest) -> Result<&mut ChangeSet, OvsdbError> {
        let name = change.name().clone();
        if self.changes.contains_key(&name) {
            return Err(OvsdbError::DuplicatePort {
                port: name.to_string(),
            });
        }
        self.changes.insert(name, change);
        Ok(self)
    }

    /// Whether a port of a plugged name that is on another bridge is moved here (like Neutron's
    /// `replace_port`, which deletes the name wherever it is) instead of refused. Moving takes
    /// a port from a bridge this change set does not name, so it is opt-in.
    pub fn move_from_other_bridges(&mut self, allow: bool) -> &mut ChangeSet {
        self.move_from_other_bridges = allow;
        self
    }

    /// Whether a move is allowed.
    pub fn moves_allowed(&self) -> bool {
        self.move_from_other_bridges
    }

    /// Whether applying waits (up to the connection's timeout) until ovs-vswitchd has applied
    /// the transaction, so the devices of plugged ports exist when `apply` returns, as
    /// `ovs-vsctl` without `--no-wait` does. On by default.
    pub fn wait_for_vswitchd(&mut self, wait: bool) -> &mut ChangeSet {
        self.wait_for_vswitchd = wait;
        self
    }

    /// Whether applying waits for ovs-vswitchd.
    pub fn waits_for_vswitchd(&self) -> bool {
        self.wait_for_vswitchd
    }

    /// The requested changes, by name.
    pub fn changes(&self) -> impl Iterator<Item = &PortChangeRequest> {
        self.changes.values()
    }

    /// How many names.
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

/// A port on a bridge, as read back ([`crate::Ovsdb::ports`]). For a port with several
/// interfaces (a bond), the interface fields are those of the interface named like the port,
/// else of the first by name; `interfaces` says how many there are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRecord {
    /// The port's name (as the server has it: not necessarily a valid [`IfName`], since other
    /// programs write ports too).
    pub name: String,
    /// `Port.tag`.
    pub tag: Option<i64>,
    /// How many Interface rows the port has (1 for an internal port).
    pub interfaces: usize,
    /// `Interface.type` (`internal`; empty for a system device).
    pub interface_type: String,
    /// `Interface.external_ids`.
    pub external_ids: BTreeMap<String, String>,
    /// `Interface.mtu_request`.
    pub mtu_request: Option<i64>,
    /// `Interface.ofport`, once ovs-vswitchd assigned it (-1: it failed to add the device).
    pub ofport: Option<i64>,
    /// `Interface.error`: why ovs-vswitchd could not add the device.
    pub error: Option<String>,
}

/// What an apply changed, port by port: for the caller's logs and for its follow-up (a created
/// device is moved into a namespace and configured; a deleted one is gone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortChange {
    /// The port was created (in the dead VLAN).
    Created {
        /// The port.
        port: IfName,
    },
    /// The port existed and was repaired; `what` lists the columns rewritten (`type`,
    /// `mtu_request`, `external_ids:iface-id`, `interfaces`).
    Updated {
        /// The port.
        port: IfName,
        /// The columns.
        what: Vec<String>,
    },
    /// The port was moved here from another bridge (and parked in the dead VLAN).
    Moved {
        /// The port.
        port: IfName,
        /// The bridge it was on.
        from: String,
    },
    /// The port was removed from the bridge.
    Deleted {
        /// The port.
        port: IfName,
    },
}

impl fmt::Display for PortChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortChange::Created { port } => write!(f, "created port {port}"),
            PortChange::Updated { port, what } => {
                write!(f, "updated port {port} ({})", what.join(", "))
            }
            PortChange::Moved { port, from } => write!(
                f,
                "moved port {port} from bridge {}",
                l3agent_types::Echo(from)
            ),
            PortChange::Deleted { port } => write!(f, "deleted port {port}"),
        }
    }
}

/// The outcome of [`crate::Ovsdb::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// What changed, in name order; empty when the bridge already matched (then nothing was
    /// written).
    pub changes: Vec<PortChange>,
    /// The `next_cfg` the transaction produced (none when nothing was written): ovs-vswitchd
    /// has applied it once `Open_vSwitch.cur_cfg` reaches it.
    pub next_cfg: Option<i64>,
    /// How many read-plan-transact rounds it took (more than 1 when a concurrent writer
    /// changed the same rows in between).
    pub attempts: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> IfName {
        IfName::new("name", s).unwrap()
    }

    #[test]
    fn neutron_external_ids_are_the_three_keys_the_driver_writes() {
        let id = PortId::new("id", "87c7c2ae-d0ba-4691-820c-8053abf50b8d").unwrap();
        let mac = MacAddr::parse("mac", "FA:16:3E:0A:0B:0C").unwrap();
        let e = ExternalIds::neutron(&id, mac);
        assert_eq!(
            e.iter().collect::<Vec<_>>(),
            vec![
                ("attached-mac", "fa:16:3e:0a:0b:0c"),
                ("iface-id", "87c7c2ae-d0ba-4691-820c-8053abf50b8d"),
                ("iface-status", "active"),
            ]
        );
    }

    #[test]
    fn bad_external_ids_are_refused_naming_the_field_and_echoing_the_value() {
        let mut e = ExternalIds::new();
        e.insert("ports[0].external_ids", "neutron:port_name", "my port")
            .unwrap();
        let cases: [(&str, &str, &str); 6] = [
            ("", "v", "ports[0].external_ids key: invalid value \"\""),
            ("a b", "v", "character ' ' is not allowed"),
            ("k=v", "v", "character '=' is not allowed"),
            (
                "k",
                "line\nbreak",
                "ports[0].external_ids[k]: invalid value \"line\\nbreak\"",
            ),
            ("k", "rtl\u{202e}", "format character"),
            ("k", &"v".repeat(256), "(256 characters)"),
        ];
        for (k, v, want) in cases {
            let err = e
                .insert("ports[0].external_ids", k, v)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{k:?}={v:?}: {err}");
        }
        assert!(e.insert("f", &"k".repeat(65), "v").is_err());
        assert!(e.insert("f", &"k".repeat(64), &"v".repeat(255)).is_ok());
        assert_eq!(e.len(), 2);
    }

    #[test]
    fn mtu_requests_are_bounded() {
        assert_eq!(MtuRequest::new("mtu", 1450).unwrap().get(), 1450);
        assert!(MtuRequest::new("mtu", 68).is_ok());
        for bad in [0, 67, 65536, u32::MAX] {
            let e = MtuRequest::new("ports[1].mtu", bad)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("ports[1].mtu: invalid value"), "{e}");
        }
    }

    #[test]
    fn a_name_may_appear_once_per_change_set() {
        let mut c = ChangeSet::new(name("br-int"));
        let p = InternalPort {
            name: name("qr-1"),
            external_ids: ExternalIds::new(),
            mtu_request: None,
        };
        c.plug(p.clone()).unwrap().unplug(name("qr-2")).unwrap();
        let e = c.unplug(name("qr-1")).unwrap_err().to_string();
        assert_eq!(e, "port qr-1 appears twice in one change set");
        assert!(c.plug(p).is_err());
        assert_eq!(c.len(), 2);
        assert!(!c.moves_allowed() && c.waits_for_vswitchd());
    }

    #[test]
    fn drift_lists_what_a_reapply_would_rewrite() {
        let id = PortId::new("id", "p1").unwrap();
        let mac = MacAddr::parse("mac", "fa:16:3e:00:00:01").unwrap();
        let port = InternalPort::neutron(name("qr-1"), &id, mac);
        let mut rec = PortRecord {
            name: "qr-1".into(),
            tag: Some(4095),
            interfaces: 1,
            interface_type: "internal".into(),
            external_ids: port
                .external_ids
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            mtu_request: None,
            ofport: Some(1),
            error: None,
        };
        // A foreign key is not drift.
        rec.external_ids
            .insert("ovn-installed".into(), "true".into());
        assert!(port.drift(&rec).is_empty());
        rec.external_ids.insert("iface-id".into(), "other".into());
        rec.interface_type = String::new();
        rec.mtu_request = Some(9000);
        assert_eq!(
            port.drift(&rec),
            vec!["type", "mtu_request", "external_ids:iface-id"]
        );
    }

    #[test]
    fn changes_display_for_people() {
        assert_eq!(
            PortChange::Updated {
                port: name("qr-1"),
                what: vec!["type".into(), "external_ids:iface-id".into()]
            }
            .to_string(),
            "updated port qr-1 (type, external_ids:iface-id)"
        );
        assert_eq!(
            PortChange::Moved {
                port: name("qr-1"),
                from: "br-ex".into()
            }
            .to_string(),
            "moved port qr-1 from bridge \"br-ex\""
        );
    }
}
