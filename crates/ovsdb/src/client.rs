//! The Open_vSwitch database as l3agent uses it: read a bridge's ports, apply a change set of
//! router ports in one transaction, and the [`OvsPorts`] trait the router layer is written
//! against (so it can be tested with a fake).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use l3agent_types::IfName;
use serde_json::{json, Value};
use tracing::{debug, info};

use crate::datum::{
    column, decode_optional_integer, decode_optional_string, decode_string, decode_string_map,
    decode_uuid, decode_uuid_set, Uuid,
};
use crate::model::{Applied, ChangeSet, PortRecord};
use crate::op::{Condition, Op};
use crate::plan::{self, IfaceRow, Observed, ObservedName, PortRow};
use crate::rpc::Connection;
use crate::OvsdbError;

/// The database ovs-vswitchd is configured from.
pub const DB: &str = "Open_vSwitch";

/// How many times an apply reads and plans again after a concurrent writer changed the rows
/// it depended on.
pub const MAX_ATTEMPTS: u32 = 5;

/// The router layer's view of Open vSwitch: one trait, a real implementation ([`Ovsdb`]) and
/// fakes passed in by constructor.
pub trait OvsPorts {
    /// Whether the bridge exists (`ovs-vsctl br-exists BRIDGE`).
    fn bridge_exists(&mut self, bridge: &IfName) -> Result<bool, OvsdbError>;
    /// The bridge's ports, by name (`ovs-vsctl list-ports BRIDGE` plus their Interface rows).
    fn ports(&mut self, bridge: &IfName) -> Result<Vec<PortRecord>, OvsdbError>;
    /// Applies a change set in one transaction.
    fn apply(&mut self, changes: &ChangeSet) -> Result<Applied, OvsdbError>;
}

/// A client of ovsdb-server's Open_vSwitch database over its unix socket. Holds one
/// connection; after an error that broke it (the server restarted), the next call reconnects.
#[derive(Debug)]
pub struct Ovsdb {
    path: PathBuf,
    timeout: Duration,
    conn: Option<Connection>,
}

fn rows(result: &Value) -> Result<&Vec<Value>, OvsdbError> {
    result
        .get("rows")
        .and_then(Value::as_array)
        .ok_or_else(|| OvsdbError::Protocol(format!("a select result without rows: {result}")))
}

fn select(table: &'static str, conditions: Vec<Condition>, columns: &[&'static str]) -> Op {
    Op::Select {
        table,
        conditions,
        columns: Some(columns.to_vec()),
    }
}

fn by_name(name: &str) -> Vec<Condition> {
    vec![Condition::eq("name", json!(name))]
}

fn iface_row(r: &Value) -> Result<IfaceRow, OvsdbError> {
    Ok(IfaceRow {
        uuid: decode_uuid("_uuid", column(r, "_uuid")?)?,
        kind: decode_string("type", column(r, "type")?)?,
        external_ids: decode_string_map("external_ids", column(r, "external_ids")?)?,
        mtu_request: decode_optional_integer("mtu_request", column(r, "mtu_request")?)?,
    })
}

impl Ovsdb {
    /// Connects to ovsdb-server's socket (`/run/openvswitch/db.sock`); `timeout` bounds every
    /// request, and an apply's wait for ovs-vswitchd.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Ovsdb, OvsdbError> {
        let conn = Connection::connect(path, timeout)?;
        Ok(Ovsdb {
            path: path.to_path_buf(),
            timeout,
            conn: Some(conn),
        })
    }

    /// A client that connects on first use (and reconnects after an error broke the
    /// connection): for an agent that starts before ovsdb-server does.
    pub fn new(path: &Path, timeout: Duration) -> Ovsdb {
        Ovsdb {
            path: path.to_path_buf(),
            timeout,
            conn: None,
        }
    }

    /// The connection, (re)connected if there is none or an earlier error broke it.
    pub fn connection(&mut self) -> Result<&mut Connection, OvsdbError> {
        if self.conn.as_ref().is_none_or(Connection::is_broken) {
            self.conn = None;
            self.conn = Some(Connection::connect(&self.path, self.timeout)?);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| OvsdbError::Protocol("no connection".into()))
    }

    /// `transact` on the Open_vSwitch database.
    pub fn transact(&mut self, ops: &[Op]) -> Result<Vec<Value>, OvsdbError> {
        self.connection()?.transact(DB, ops)
    }

    /// Whether `bridge` exists (`ovs-vsctl br-exists`).
    pub fn bridge_exists(&mut self, bridge: &IfName) -> Result<bool, OvsdbError> {
        let r = self.transact(&[select("Bridge", by_name(bridge.as_str()), &["_uuid"])])?;
        Ok(!rows(&r[0])?.is_empty())
    }

    /// The ports of `bridge` with their interfaces, sorted by name, read in one transaction
    /// (so the picture is consistent). [`OvsdbError::NoBridge`] if it does not exist.
    pub fn ports(&mut self, bridge: &IfName) -> Result<Vec<PortRecord>, OvsdbError> {
        let r = self.transact(&[
            select("Bridge", by_name(bridge.as_str()), &["ports"]),
            select("Port", vec![], &["_uuid", "name", "interfaces", "tag"]),
            select(
                "Interface",
                vec![],
                &[
                    "_uuid",
                    "name",
                    "type",
                    "external_ids",
                    "mtu_request",
                    "ofport",
                    "error",
                ],
            ),
        ])?;
        let Some(b) = rows(&r[0])?.first() else {
            return Err(OvsdbError::NoBridge {
                bridge: bridge.to_string(),
            });
        };
        let members = decode_uuid_set("ports", column(b, "ports")?)?;
        let mut ports = BTreeMap::new();
        for p in rows(&r[1])? {
            ports.insert(decode_uuid("_uuid", column(p, "_uuid")?)?, p);
        }
        let mut ifaces = BTreeMap::new();
        for i in rows(&r[2])? {
            ifaces.insert(decode_uuid("_uuid", column(i, "_uuid")?)?, i);
        }
        let mut out = Vec::new();
        for uuid in members {
            let Some(p) = ports.get(&uuid) else {
                return Err(OvsdbError::Protocol(format!(
                    "bridge {bridge} references port {uuid}, which the same transaction did not return"
                )));
            };
            let name = decode_string("name", column(p, "name")?)?;
            let iface_ids = decode_uuid_set("interfaces", column(p, "interfaces")?)?;
            let mut found: Vec<&Value> = iface_ids
                .iter()
                .filter_map(|u| ifaces.get(u).copied())
                .collect();
            found.sort_by_key(|i| {
                let n = i.get("name").and_then(Value::as_str).unwrap_or("");
                (n != name, n.to_owned())
            });
            let mut rec = PortRecord {
                name,
                tag: decode_optional_integer("tag", column(p, "tag")?)?,
                interfaces: iface_ids.len(),
                interface_type: String::new(),
                external_ids: BTreeMap::new(),
                mtu_request: None,
                ofport: None,
                error: None,
            };
            if let Some(i) = found.first() {
                rec.interface_type = decode_string("type", column(i, "type")?)?;
                rec.external_ids = decode_string_map("external_ids", column(i, "external_ids")?)?;
                rec.mtu_request =
                    decode_optional_integer("mtu_request", column(i, "mtu_request")?)?;
                rec.ofport = decode_optional_integer("ofport", column(i, "ofport")?)?;
                rec.error = decode_optional_string("error", column(i, "error")?)?;
            }
            out.push(rec);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Reads the rows a change set depends on in one request: the bridge with its ports, and
    /// the Port and Interface rows of each name. Only a port found on none of the bridge's
    /// ports (on another bridge: rare) costs a second request, to learn where it is.
    fn observe(&mut self, changes: &ChangeSet) -> Result<Observed, OvsdbError> {
        let names = plan::names(changes);
        let mut ops = vec![select(
            "Bridge",
            by_name(changes.bridge().as_str()),
            &["_uuid", "name", "ports"],
        )];
        for n in &names {
            ops.push(select(
                "Port",
                by_name(n.as_str()),
                &["_uuid", "interfaces"],
            ));
            ops.push(select(
                "Interface",
                by_name(n.as_str()),
                &["_uuid", "type", "external_ids", "mtu_request"],
            ));
        }
        let r = self.transact(&ops)?;
        let Some(b) = rows(&r[0])?.first() else {
            return Err(OvsdbError::NoBridge {
                bridge: changes.bridge().to_string(),
            });
        };
        let bridge = decode_uuid("_uuid", column(b, "_uuid")?)?;
        let bridge_name = decode_string("name", column(b, "name")?)?;
        let members: BTreeSet<Uuid> = decode_uuid_set("ports", column(b, "ports")?)?
            .into_iter()
            .collect();
        let mut seen = BTreeMap::new();
        let mut elsewhere: Vec<(IfName, Uuid)> = Vec::new();
        for (k, n) in names.iter().enumerate() {
            let mut o = ObservedName::default();
            if let Some(p) = rows(&r[1 + 2 * k])?.first() {
                let uuid = decode_uuid("_uuid", column(p, "_uuid")?)?;
                let owner = if members.contains(&uuid) {
                    Some((bridge.clone(), bridge_name.clone()))
                } else {
                    elsewhere.push((n.clone(), uuid.clone()));
                    None
                };
                o.port = Some(PortRow {
                    uuid,
                    interfaces: decode_uuid_set("interfaces", column(p, "interfaces")?)?,
                    owner,
                });
            }
            if let Some(i) = rows(&r[2 + 2 * k])?.first() {
                o.iface = Some(iface_row(i)?);
            }
            seen.insert(n.clone(), o);
        }
        if !elsewhere.is_empty() {
            let ops: Vec<Op> = elsewhere
                .iter()
                .map(|(_, u)| {
                    select(
                        "Bridge",
                        vec![Condition::includes("ports", u.to_json())],
                        &["_uuid", "name"],
                    )
                })
                .collect();
            let r = self.transact(&ops)?;
            for ((n, _), res) in elsewhere.iter().zip(&r) {
                if let Some(b) = rows(res)?.first() {
                    let owner = (
                        decode_uuid("_uuid", column(b, "_uuid")?)?,
                        decode_string("name", column(b, "name")?)?,
                    );
                    if let Some(ObservedName { port: Some(p), .. }) = seen.get_mut(n) {
                        p.owner = Some(owner);
                    }
                }
            }
        }
        Ok(Observed {
            bridge,
            names: seen,
        })
    }

    /// Applies a change set in ONE transaction: reads what it depends on, plans, and commits
    /// guarded by `wait`s; if a concurrent writer changed those rows in between, reads and
    /// plans again (at most [`MAX_ATTEMPTS`] times). Nothing is written when the bridge already
    /// matches. Then, unless the change set says not to, waits (bounded by the connection's
    /// timeout) until ovs-vswitchd has applied it, so plugged devices exist.
    pub fn apply(&mut self, changes: &ChangeSet) -> Result<Applied, OvsdbError> {
        for attempt in 1..=MAX_ATTEMPTS {
            let seen = self.observe(changes)?;
            let plan = plan::plan(changes, &seen)?;
            if plan.ops.is_empty() {
                debug!(bridge = %changes.bridge(), "ports already match");
                return Ok(Applied {
                    changes: plan.changes,
                    next_cfg: None,
                    attempts: attempt,
                });
            }
            let results = match self.transact(&plan.ops) {
                Ok(r) => r,
                Err(OvsdbError::Operation { index, error, .. })
                    if plan.ops.get(index).is_some_and(Op::is_guard) && error == "timed out" =>
                {
                    info!(bridge = %changes.bridge(), attempt, op = %plan.ops[index].describe(),
                          "rows changed under us; reading again");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let next_cfg = match plan.next_cfg_at {
                Some(at) => {
                    let r = results.get(at).ok_or_else(|| {
                        OvsdbError::Protocol("no result for the next_cfg select".into())
                    })?;
                    let row = rows(r)?
                        .first()
                        .ok_or_else(|| OvsdbError::Protocol("no Open_vSwitch row".into()))?;
                    decode_optional_integer("next_cfg", column(row, "next_cfg")?)?
                }
                None => None,
            };
            for c in &plan.changes {
                info!(bridge = %changes.bridge(), "{c}");
            }
            if changes.waits_for_vswitchd() {
                if let Some(cfg) = next_cfg {
                    self.wait_for_vswitchd(cfg)?;
                }
            }
            return Ok(Applied {
                changes: plan.changes,
                next_cfg,
                attempts: attempt,
            });
        }
        Err(OvsdbError::Conflict {
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Waits (bounded by the timeout) until ovs-vswitchd reports `cur_cfg >= next_cfg`, i.e.
    /// it has reconfigured from the transaction that produced `next_cfg`, as `ovs-vsctl`
    /// without `--no-wait` does.
    pub fn wait_for_vswitchd(&mut self, next_cfg: i64) -> Result<(), OvsdbError> {
        let start = Instant::now();
        let deadline = start + self.timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            let r = self.transact(&[select("Open_vSwitch", vec![], &["cur_cfg"])])?;
            let cur = match rows(&r[0])?.first() {
                Some(row) => {
                    decode_optional_integer("cur_cfg", column(row, "cur_cfg")?)?.unwrap_or(0)
                }
                None => 0,
            };
            if cur >= next_cfg {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(OvsdbError::Vswitchd {
                    next_cfg,
                    cur_cfg: cur,
                    after: now - start,
                });
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }
}

impl OvsPorts for Ovsdb {
    fn bridge_exists(&mut self, bridge: &IfName) -> Result<bool, OvsdbError> {
        Ovsdb::bridge_exists(self, bridge)
    }

    fn ports(&mut self, bridge: &IfName) -> Result<Vec<PortRecord>, OvsdbError> {
        Ovsdb::ports(self, bridge)
    }

    fn apply(&mut self, changes: &ChangeSet) -> Result<Applied, OvsdbError> {
        Ovsdb::apply(self, changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::Framer;
    use crate::model::{InternalPort, PortChange};
    use l3agent_types::{MacAddr, PortId};
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    const BR: &str = "0da5359d-d7ff-4408-a048-5369a60dab15";

    /// A scripted ovsdb-server answering `transact` requests: selects of Bridge find br-int,
    /// selects of Port and Interface find nothing, and a transaction that writes fails at its
    /// second operation (the first port guard) with "timed out" while `conflicts` lasts.
    fn scripted(conflicts: usize) -> (Ovsdb, Arc<AtomicUsize>) {
        let (client, server) = UnixStream::pair().unwrap();
        let writes = Arc::new(AtomicUsize::new(0));
        let seen = writes.clone();
        std::thread::spawn(move || {
            let mut server = server;
            let mut framer = Framer::default();
            let mut buf = [0u8; 65536];
            loop {
                while let Some(m) = framer.next_message().unwrap() {
                    let req: Value = serde_json::from_slice(&m).unwrap();
                    let ops = req["params"].as_array().unwrap()[1..].to_vec();
                    let writing = ops.iter().any(|o| o["op"] == "wait");
                    let result: Value = if writing
                        && seen.fetch_add(1, Ordering::SeqCst) < conflicts
                    {
                        json!([{}, {"details": "\"where\" clause test failed", "error": "timed out"}])
                    } else {
                        ops.iter()
                            .map(|o| match (o["op"].as_str(), o["table"].as_str()) {
                                (Some("select"), Some("Bridge")) => {
                                    json!({"rows": [{"_uuid": ["uuid", BR], "name": "br-int", "ports": ["set", []]}]})
                                }
                                (Some("select"), Some("Open_vSwitch")) => {
                                    json!({"rows": [{"next_cfg": 7, "cur_cfg": 7}]})
                                }
                                (Some("select"), _) => json!({"rows": []}),
                                _ => json!({}),
                            })
                            .collect()
                    };
                    let answer = json!({"id": req["id"], "result": result, "error": null});
                    if server
                        .write_all(&serde_json::to_vec(&answer).unwrap())
                        .is_err()
                    {
                        return;
                    }
                }
                match server.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => framer.push(&buf[..n]),
                }
            }
        });
        let path = PathBuf::from("/fake/db.sock");
        let timeout = Duration::from_secs(2);
        let db = Ovsdb {
            conn: Some(Connection::from_stream(client, &path, timeout)),
            path,
            timeout,
        };
        (db, writes)
    }

    fn change_set() -> ChangeSet {
        let mut cs = ChangeSet::new(IfName::new("b", "br-int").unwrap());
        cs.plug(InternalPort::neutron(
            IfName::new("n", "qr-1").unwrap(),
            &PortId::new("id", "p1").unwrap(),
            MacAddr::parse("mac", "fa:16:3e:00:00:01").unwrap(),
        ))
        .unwrap();
        cs
    }

    #[test]
    fn a_concurrent_writer_makes_the_apply_read_and_plan_again() {
        let (mut db, writes) = scripted(2);
        let a = db.apply(&change_set()).unwrap();
        assert_eq!(a.attempts, 3);
        assert_eq!(writes.load(Ordering::SeqCst), 3);
        assert_eq!(
            a.changes,
            vec![PortChange::Created {
                port: IfName::new("n", "qr-1").unwrap()
            }]
        );
        assert_eq!(a.next_cfg, Some(7));
    }

    #[test]
    fn writers_that_never_stop_are_a_conflict_error_after_the_bound() {
        let (mut db, writes) = scripted(usize::MAX);
        let e = db.apply(&change_set()).unwrap_err();
        assert!(
            matches!(
                e,
                OvsdbError::Conflict {
                    attempts: MAX_ATTEMPTS
                }
            ),
            "{e}"
        );
        assert_eq!(writes.load(Ordering::SeqCst), MAX_ATTEMPTS as usize);
    }
}
