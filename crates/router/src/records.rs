//! The router layer's records in the state directory (kept safe, locked and atomic by
//! [`l3agent_state::StateDir`]):
//!
//! ```text
//! <state_path>/
//!   records.json               namespaces l3agent created (recorded BEFORE it creates them)
//!                              and per router the fingerprint of its last successful apply
//!                              ("" = its last apply failed, or was cut short: a router's
//!                              fingerprint is cleared BEFORE its dict's changes are made)
//!   voided.json                routers whose fingerprints are void since records.json was
//!                              written (a change under way: written before it, removed
//!                              with the next records.json)
//!   applied/agent.json         the agent section of the last apply
//!   applied/facts.json         the host facts of the last apply (random_fully)
//!   applied/router-<id>.json   each router's dict as last applied (rewritten when it changed)
//!   fip-linklocal-networks     allocators (see crate::alloc): rfp/fpr /31s,
//!   fip-priorities             FIP rule priorities,
//!   snat-tables                SNAT-redirect tables
//! ```
//!
//! Every file is read and written through [`StateDir`] (no symbolic link followed, atomic
//! replacement, temporaries cleaned by the next apply), allocators included.
//!
//! Recovery: a missing or corrupt `records.json` is rebuilt from `applied/` and the kernel:
//! the namespaces of the routers named there (`qrouter-`/`snat-` of each `router-<id>.json`,
//! `fip-` of each readable record's gateway network) that exist ([`Records::rebuilt`] tells
//! the caller to check that with its kernel). Nothing else on the host is adopted: a lost
//! record must never make l3agent delete namespaces another agent made. Rebuilt records hold
//! no fingerprints (every router is verified again), never "failed" ones. A corrupt
//! `applied/` record makes `status` report nothing for that router until the next apply
//! rewrites it. Neither is ever a permanent error.
//!
//! Records are validated like input when read: a namespace name is kept only if it is
//! l3agent's by exact rule ([`names::parse_ns`]), a router only if its id is valid; anything
//! else is dropped with a warning, so that a crafted `records.json` cannot make `apply` or
//! `destroy` delete a namespace that is not l3agent's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use l3agent_state::{OpenOptions, StateDir, StateError};
use l3agent_types::{NetnsName, NetworkId, RouterId};
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::alloc::{Allocator, LinkLocalPool, Pool, RangePool};
use crate::compile::{Allocations, HostFacts, Needs};
use crate::config::{AgentDoc, ConfigDoc, HostConfig, Router, RouterDoc};
use crate::host::HostError;
use crate::spec::names;

/// `records.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Records {
    /// Namespaces l3agent made (or is about to make); only names that are l3agent's by exact
    /// rule survive a read.
    pub namespaces: BTreeSet<NetnsName>,
    /// Router id → fingerprint of its last successful apply ("": it failed or was cut short).
    pub routers: BTreeMap<String, String>,
    /// Rebuilt rather than read: `namespaces` are candidates that the caller keeps only if
    /// they exist (see [`State::records`]). Never saved.
    #[serde(skip)]
    pub rebuilt: bool,
}

impl Records {
    /// Drops what is not l3agent's: namespace names outside [`names::parse_ns`], router ids
    /// that are not ids.
    fn sanitize(&mut self, path: &Path) {
        let foreign: Vec<NetnsName> = self
            .namespaces
            .iter()
            .filter(|n| names::parse_ns(n.as_str()).is_none())
            .cloned()
            .collect();
        for n in &foreign {
            warn!(path = %path.display(), namespace = %n, "recorded namespace is not l3agent's by name: ignored (never deleted)");
            self.namespaces.remove(n);
        }
        let before = self.routers.len();
        self.routers.retain(|id, _| RouterId::new("id", id).is_ok());
        if self.routers.len() != before {
            warn!(path = %path.display(), dropped = before - self.routers.len(), "recorded routers with invalid ids ignored");
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Facts {
    random_fully: bool,
}

const RECORDS: &str = "records.json";
const VOIDED: &str = "voided.json";

/// The records this process last wrote, with the bytes of the file that holds them: the agent
/// reads `records.json` before every apply, and parsing and checking it again (at 1,000
/// routers, milliseconds an event waits for) gives what it gave the last time whenever the
/// file holds the same bytes (what was read is always read again; a record written by
/// another program reads as new bytes).
///
/// The records are handed over, not copied (a copy of 1,000 routers' records was most of an
/// event's reading): the apply that takes them writes them back with
/// [`State::save_records`], which puts them back here; an apply that fails before that
/// leaves nothing here, and the next one parses the file.
#[derive(Default)]
struct LastRecords(Option<(std::path::PathBuf, Vec<u8>, Records)>);

impl LastRecords {
    fn take(&mut self, path: &Path, bytes: &[u8]) -> Option<Records> {
        match &self.0 {
            Some((p, b, _)) if p == path && b.as_slice() == bytes => {
                self.0.take().map(|(_, _, r)| r)
            }
            _ => None,
        }
    }

    /// `r` must be what `bytes` reads as (sanitized, not rebuilt).
    fn set(&mut self, path: &Path, bytes: Vec<u8>, mut r: Records) {
        r.rebuilt = false;
        self.0 = Some((path.to_owned(), bytes, r));
    }
}

fn lock_last() -> std::sync::MutexGuard<'static, LastRecords> {
    static LAST: std::sync::Mutex<LastRecords> = std::sync::Mutex::new(LastRecords(None));
    LAST.lock().unwrap_or_else(|e| e.into_inner())
}

/// The state directory of one host, opened for the router layer.
#[derive(Debug)]
pub struct State {
    /// `None`: the directory does not exist yet (a plan before the first apply).
    dir: Option<StateDir>,
    path: std::path::PathBuf,
    /// Opened for changes (holds the lock): its reads take the records [`LastRecords`]
    /// keeps, which its [`State::save_records`] puts back; a read-only view parses the file.
    locked: bool,
}

impl State {
    /// Opens it for changes (locked; waits at most 120 s for another l3agent, or until `stop`).
    pub fn open(path: &Path, stop: &Arc<AtomicBool>) -> Result<State, HostError> {
        let opts = OpenOptions {
            wait: Duration::from_secs(120),
            stop: Some(stop.clone()),
        };
        let dir = StateDir::open(path, &opts)?;
        Ok(State {
            path: dir.path().to_owned(),
            dir: Some(dir),
            locked: true,
        })
    }

    /// Opens it read-only (plan, status), without the lock; a missing directory reads as
    /// empty.
    pub fn inspect(path: &Path) -> Result<State, HostError> {
        match StateDir::inspect(path) {
            Ok(dir) => Ok(State {
                path: dir.path().to_owned(),
                dir: Some(dir),
                locked: false,
            }),
            Err(e) if e.is_not_found() => Ok(State {
                dir: None,
                path: path.to_owned(),
                locked: false,
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether nothing was ever recorded here (the directory does not exist).
    pub fn is_empty(&self) -> bool {
        self.dir.is_none()
    }

    fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        rel: &str,
    ) -> Result<Option<T>, StateError> {
        match &self.dir {
            Some(d) => d.read_json(rel),
            None => Ok(None),
        }
    }

    /// Writes `value` unless the record already holds exactly it (most applies change no
    /// agent section): no write, no fsync.
    fn write_if_changed<T: serde::Serialize>(&self, rel: &str, value: &T) -> Result<(), HostError> {
        let same = self
            .read_json::<serde_json::Value>(rel)
            .ok()
            .flatten()
            .is_some_and(|old| serde_json::to_value(value).ok() == Some(old));
        if !same {
            self.dir()?.write_json(rel, value)?;
        }
        Ok(())
    }

    fn list(&self, sub: &str) -> Result<Vec<String>, StateError> {
        match &self.dir {
            Some(d) => d.list(sub),
            None => Ok(Vec::new()),
        }
    }

    fn dir(&self) -> Result<&StateDir, StateError> {
        self.dir.as_ref().ok_or_else(|| StateError::NotLocked {
            what: "writing",
            path: self.path.clone(),
        })
    }

    /// `records.json`, validated (see the module docs); when it is missing or corrupt, the
    /// candidates of a rebuild with [`Records::rebuilt`] set: the caller keeps those of its
    /// namespaces that exist (`host` asks its kernel).
    pub fn records(&self) -> Result<Records, HostError> {
        let path = self.path.join(RECORDS);
        let Some(dir) = &self.dir else {
            return self.rebuild();
        };
        let parsed = dir.read(RECORDS).and_then(|bytes| match bytes {
            None => Ok(None),
            Some(bytes) => {
                if self.locked {
                    if let Some(r) = lock_last().take(&path, &bytes) {
                        return Ok(Some(r));
                    }
                }
                let mut r: Records = dir.parse_json(RECORDS, &bytes)?;
                r.sanitize(&path);
                Ok(Some(r))
            }
        });
        match parsed {
            Ok(Some(mut r)) => {
                self.apply_voided(&mut r);
                Ok(r)
            }
            Ok(None) => self.rebuild(),
            Err(StateError::Corrupt { path, reason }) => {
                warn!(path = %path.display(), %reason, "records corrupt: rebuilding them from the applied records and the kernel");
                self.rebuild()
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Clears the fingerprints `voided.json` lists (all of them if it is unreadable: every
    /// router is verified again).
    fn apply_voided(&self, r: &mut Records) {
        match self.read_json::<Vec<String>>(VOIDED) {
            Ok(None) => {}
            Ok(Some(ids)) => {
                for id in ids {
                    if let Some(fp) = r.routers.get_mut(&id) {
                        fp.clear();
                    }
                }
            }
            Err(e) => {
                warn!(error = %e, "voided fingerprints unreadable: every router is verified again");
                r.routers.values_mut().for_each(String::clear);
            }
        }
    }

    /// Voids the fingerprints of `ids` before their routers' changes are made, in a record of
    /// its own beside `records.json` (read with it, removed by the next
    /// [`State::save_records`]): a change cut short is never taken for the router's old,
    /// converged state, and an event does not rewrite every router's record first. Not
    /// fsynced, like the records.
    pub fn void_fingerprints(&self, ids: &[&str]) -> Result<(), HostError> {
        Ok(self.dir()?.write_json_volatile(VOIDED, &ids)?)
    }

    /// Candidates for the namespaces l3agent made: those of the routers in `applied/`.
    fn rebuild(&self) -> Result<Records, HostError> {
        let mut r = Records {
            rebuilt: true,
            ..Records::default()
        };
        for f in self.list("applied")? {
            let Some(id) = f
                .strip_prefix("router-")
                .and_then(|x| x.strip_suffix(".json"))
                .and_then(|x| RouterId::new("id", x).ok())
            else {
                continue;
            };
            r.namespaces.insert(names::router_ns(&id));
            r.namespaces.insert(names::snat_ns(&id));
            let doc = self
                .read_json::<RouterDoc>(&format!("applied/{f}"))
                .ok()
                .flatten();
            if let Some(net) = doc
                .and_then(|d| d.gw_port.clone())
                .and_then(|p| NetworkId::new("network_id", &p.network_id).ok())
            {
                r.namespaces.insert(names::fip_ns(&net));
            }
        }
        Ok(r)
    }

    /// Saves `records.json`.
    ///
    /// Not fsynced ([`l3agent_state::StateDir::write_volatile`]): the records describe
    /// namespaces, which a power loss erases with the records' worth, and a record garbled by
    /// one is rebuilt conservatively ([`State::records`]: no router trusted). Every apply
    /// writes them before its first kernel change: an fsync there is milliseconds added to
    /// every event of the agent.
    ///
    /// Takes the records: the next [`State::records`] of this file hands them back without
    /// parsing it again (a caller that goes on using them saves a copy).
    pub fn save_records(&self, r: Records) -> Result<(), HostError> {
        let dir = self.dir()?;
        let bytes = dir.encode(RECORDS, &r)?;
        dir.write_volatile(RECORDS, &bytes)?;
        lock_last().set(&self.path.join(RECORDS), bytes, r);
        dir.remove(VOIDED)?;
        Ok(())
    }

    /// Saves what was applied: the agent section, the facts, and every router whose record
    /// is missing or whose dict changed; removes the records of routers no longer there.
    /// With `only`, the routers outside it were not applied: their records are not looked at
    /// (not even listed: at 1,000 routers that was most of an agent event's writing); those
    /// of the routers in it are written, or removed if they are no longer configured.
    pub fn save_applied(
        &self,
        cfg: &HostConfig,
        facts: &HostFacts,
        only: Option<&BTreeSet<RouterId>>,
    ) -> Result<(), HostError> {
        self.write_if_changed("applied/agent.json", &cfg.doc.agent)?;
        self.write_if_changed(
            "applied/facts.json",
            &Facts {
                random_fully: facts.random_fully,
            },
        )?;
        let record = |id: &str| format!("applied/router-{id}.json");
        if let Some(only) = only {
            let docs: BTreeMap<&str, &RouterDoc> = cfg
                .doc
                .routers
                .iter()
                .filter(|r| only.iter().any(|id| id.as_str() == r.id))
                .map(|r| (r.id.as_str(), r))
                .collect();
            for id in only {
                match docs.get(id.as_str()) {
                    Some(r) => self.write_router(&record(&r.id), r)?,
                    None => {
                        self.dir()?.remove(&record(id.as_str()))?;
                    }
                }
            }
            return Ok(());
        }
        let present: BTreeSet<String> = self.list("applied")?.into_iter().collect();
        let mut keep = BTreeSet::new();
        for r in &cfg.doc.routers {
            self.write_router(&record(&r.id), r)?;
            keep.insert(format!("router-{}.json", r.id));
        }
        for f in present
            .iter()
            .filter(|f| f.starts_with("router-") && !keep.contains(*f))
        {
            self.dir()?.remove(&format!("applied/{f}"))?;
        }
        Ok(())
    }

    /// Writes a router's applied record unless it already holds `r`.
    fn write_router(&self, name: &str, r: &RouterDoc) -> Result<(), HostError> {
        let same = self
            .read_json::<RouterDoc>(name)
            .ok()
            .flatten()
            .is_some_and(|old| serde_json::to_value(&old).ok() == serde_json::to_value(r).ok());
        if !same {
            self.dir()?.write_json(name, r)?;
        }
        Ok(())
    }

    /// Forgets the applied records of `cfg`'s routers (destroy of a config).
    pub fn forget_applied(&self, cfg: &HostConfig) -> Result<(), HostError> {
        for r in &cfg.routers {
            self.dir()?
                .remove(&format!("applied/router-{}.json", r.id))?;
        }
        Ok(())
    }

    /// The config and facts of the last apply (`None`: nothing applied yet). Corrupt router
    /// records are skipped with a warning.
    pub fn last_applied(&self) -> Result<Option<(HostConfig, HostFacts)>, HostError> {
        let agent: AgentDoc = match self.read_json("applied/agent.json") {
            Ok(Some(a)) => a,
            Ok(None) => return Ok(None),
            Err(StateError::Corrupt { path, reason }) => {
                warn!(path = %path.display(), %reason, "applied agent record corrupt");
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        let facts = match self.read_json::<Facts>("applied/facts.json") {
            Ok(Some(f)) => HostFacts {
                random_fully: f.random_fully,
            },
            _ => HostFacts {
                random_fully: l3agent_iptables_exec::runner::random_fully_supported(),
            },
        };
        let mut routers = Vec::new();
        for f in self.list("applied")? {
            if !f.starts_with("router-") {
                continue;
            }
            match self.read_json::<RouterDoc>(&format!("applied/{f}")) {
                Ok(Some(r)) => routers.push(r),
                Ok(None) => {}
                Err(e) => {
                    warn!(record = %f, error = %e, "applied router record unreadable; skipped")
                }
            }
        }
        let doc = ConfigDoc { agent, routers };
        match doc.validate() {
            Ok(cfg) => Ok(Some((cfg, facts))),
            Err(errors) => {
                warn!(
                    errors = errors.len(),
                    "the last applied config no longer validates; status shows nothing"
                );
                Ok(None)
            }
        }
    }

    /// Removes every record (destroy --all).
    pub fn clear(&self) -> Result<(), HostError> {
        Ok(self.dir()?.clear()?)
    }
}

/// The three persisted allocators: rfp/fpr /31s, FIP rule priorities, SNAT-redirect tables.
struct Allocators {
    link_local: Allocator<LinkLocalPool>,
    priorities: Allocator<RangePool>,
    tables: Allocator<RangePool>,
}

const LINK_LOCAL: &str = "fip-linklocal-networks";
const PRIORITIES: &str = "fip-priorities";
const TABLES: &str = "snat-tables";

impl State {
    /// One allocator's record (empty when missing).
    fn allocator<P: Pool>(&self, name: &str, pool: P) -> Result<Allocator<P>, HostError> {
        let shown = self.path.join(name).display().to_string();
        let bytes = match &self.dir {
            Some(d) => d.read(name)?,
            None => None,
        };
        Ok(match bytes {
            Some(b) => Allocator::parse(&shown, &b, pool)?,
            None => Allocator::empty(&shown, pool),
        })
    }

    fn allocators(&self) -> Result<Allocators, HostError> {
        Ok(Allocators {
            link_local: self.allocator(LINK_LOCAL, LinkLocalPool)?,
            priorities: self.allocator(PRIORITIES, RangePool::FIP_PRIORITIES)?,
            tables: self.allocator(TABLES, RangePool::SNAT_TABLES)?,
        })
    }

    /// Saves an allocator's record if it changed.
    fn save_allocator<P: Pool>(&self, name: &str, a: &mut Allocator<P>) -> Result<(), HostError> {
        if a.is_dirty() {
            self.dir()?.write(name, a.render().as_bytes())?;
            a.mark_saved();
        }
        Ok(())
    }

    fn save_allocators(&self, a: &mut Allocators) -> Result<(), HostError> {
        self.save_allocator(LINK_LOCAL, &mut a.link_local)?;
        self.save_allocator(PRIORITIES, &mut a.priorities)?;
        self.save_allocator(TABLES, &mut a.tables)
    }
}

fn snat_key(r: &l3agent_types::RouterId, p: &l3agent_types::PortId) -> String {
    format!("{r}.{p}")
}

/// The allocations `needs` asks for: existing ones kept, new ones the lowest free value;
/// saved when `persist` (plan computes them in memory only). Nothing is freed here.
pub fn allocate(state: &State, needs: &Needs, persist: bool) -> Result<Allocations, HostError> {
    let mut a = state.allocators()?;
    let mut out = Allocations::default();
    for r in &needs.link_local {
        out.link_local
            .insert(r.clone(), a.link_local.allocate(r.as_str())?);
    }
    for f in &needs.fip_priorities {
        let v = a.priorities.allocate(&f.to_string())?;
        out.fip_priorities
            .insert(*f, RangePool::FIP_PRIORITIES.start + v);
    }
    for (r, p) in &needs.snat_tables {
        let v = a.tables.allocate(&snat_key(r, p))?;
        out.snat_tables
            .insert((r.clone(), p.clone()), RangePool::SNAT_TABLES.start + v);
    }
    if persist {
        state.save_allocators(&mut a)?;
    }
    Ok(out)
}

/// Frees every allocation `needs` no longer asks for (after a complete apply).
pub fn collect_garbage(state: &State, needs: &Needs) -> Result<(), HostError> {
    let mut a = state.allocators()?;
    a.link_local
        .retain(&|k| needs.link_local.iter().any(|r| r.as_str() == k));
    a.priorities
        .retain(&|k| needs.fip_priorities.iter().any(|f| f.to_string() == k));
    a.tables
        .retain(&|k| needs.snat_tables.iter().any(|(r, p)| snat_key(r, p) == k));
    state.save_allocators(&mut a)
}

/// FNV-1a over the validated router's `Hash`: cheap, and stable across runs of the same
/// l3agent binary (a new binary may converge every router once more, which is harmless).
pub fn fingerprint(r: &Router) -> String {
    struct Fnv(u64);
    impl std::hash::Hasher for Fnv {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 ^= u64::from(*b);
                self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    std::hash::Hash::hash(r, &mut h);
    format!("{:016x}", std::hash::Hasher::finish(&h))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    const ID: &str = "87c7c2ae-d0ba-4691-820c-8053abf50b8d";

    fn dir(tag: &str) -> PathBuf {
        static N: AtomicU32 = AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "l3agent-records-{}-{tag}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn open(p: &Path) -> State {
        State::open(p, &Arc::new(AtomicBool::new(false))).expect("open")
    }

    fn names(r: &Records) -> Vec<&str> {
        r.namespaces.iter().map(NetnsName::as_str).collect()
    }

    #[test]
    fn recorded_names_that_are_not_ours_by_exact_rule_are_dropped_on_read() {
        let p = dir("names");
        let s = open(&p);
        let crafted = serde_json::json!({
            "namespaces": ["victim", "qrouter-l3t_x", format!("qrouter-{ID}"), "snat-", "qrouter--x"],
            "routers": {ID: "ab", "bad id": "cd"},
        });
        s.dir()
            .unwrap()
            .write(RECORDS, crafted.to_string().as_bytes())
            .unwrap();
        let r = s.records().unwrap();
        assert!(!r.rebuilt);
        assert_eq!(names(&r), [format!("qrouter-{ID}")]);
        assert_eq!(r.routers.keys().collect::<Vec<_>>(), [ID]);
        let _ = std::fs::remove_dir_all(p);
    }

    #[test]
    fn a_corrupt_record_is_rebuilt_from_the_applied_routers_only() {
        let p = dir("rebuild");
        let s = open(&p);
        let d = s.dir().unwrap();
        // A path is not a namespace name: the whole file is corrupt.
        d.write(RECORDS, br#"{"namespaces": ["../x"], "routers": {}}"#)
            .unwrap();
        d.write(
            &format!("applied/router-{ID}.json"),
            include_bytes!("../tests/data/neutron-router-legacy.json"),
        )
        .unwrap();
        d.write("applied/router-not_an_id.json", b"{}").unwrap();
        d.write("applied/router-0badc0de.json", b"\xff garbage")
            .unwrap();
        let r = s.records().unwrap();
        assert!(r.rebuilt);
        assert!(r.routers.is_empty(), "a rebuilt router is never 'failed'");
        assert_eq!(
            names(&r),
            [
                "fip-65566f91-133a-44ff-87f5-ecffc1193d3d".to_owned(),
                "qrouter-0badc0de".to_owned(),
                format!("qrouter-{ID}"),
                "snat-0badc0de".to_owned(),
                format!("snat-{ID}"),
            ]
        );
        // Missing: the same.
        d.remove(RECORDS).unwrap();
        assert_eq!(s.records().unwrap(), r);
        let _ = std::fs::remove_dir_all(p);
    }

    #[test]
    fn records_read_again_are_what_the_file_holds_now() {
        let p = dir("again");
        let s = open(&p);
        let mut r = Records::default();
        r.namespaces
            .insert(NetnsName::new("ns", &format!("qrouter-{ID}")).unwrap());
        r.routers.insert(ID.to_owned(), "00ff".to_owned());
        s.save_records(r.clone()).unwrap();
        assert_eq!(s.records().unwrap(), r);
        assert_eq!(s.records().unwrap(), r);
        // Another writer: its bytes are read, checked and parsed.
        let other = serde_json::json!({"namespaces": ["victim"], "routers": {ID: ""}});
        s.dir()
            .unwrap()
            .write(RECORDS, other.to_string().as_bytes())
            .unwrap();
        let again = s.records().unwrap();
        assert!(again.namespaces.is_empty());
        assert_eq!(again.routers[ID], "");
        // The same records in another state directory are that directory's.
        let q = dir("again-other");
        let t = open(&q);
        t.save_records(r.clone()).unwrap();
        assert_eq!(s.records().unwrap(), again);
        assert_eq!(t.records().unwrap(), r);
        let _ = std::fs::remove_dir_all(p);
        let _ = std::fs::remove_dir_all(q);
    }

    #[test]
    fn voided_fingerprints_read_as_cleared_until_the_records_are_saved_again() {
        let p = dir("voided");
        let s = open(&p);
        let other = "0badc0de-0000-4000-8000-000000000000";
        let mut r = Records::default();
        r.routers.insert(ID.to_owned(), "00ff".to_owned());
        r.routers.insert(other.to_owned(), "11ee".to_owned());
        s.save_records(r.clone()).unwrap();
        s.void_fingerprints(&[ID]).unwrap();
        let read = s.records().unwrap();
        assert_eq!(read.routers[ID], "");
        assert_eq!(read.routers[other], "11ee");
        // Read-only views see it too.
        assert_eq!(State::inspect(&p).unwrap().records().unwrap(), read);
        s.save_records(r.clone()).unwrap();
        assert!(!p.join(VOIDED).exists());
        assert_eq!(s.records().unwrap(), r);
        // An unreadable list voids every fingerprint.
        s.dir().unwrap().write(VOIDED, b"{not json").unwrap();
        assert!(s.records().unwrap().routers.values().all(String::is_empty));
        let _ = std::fs::remove_dir_all(p);
    }

    #[test]
    fn a_fresh_state_directory_adopts_nothing() {
        let p = dir("fresh");
        let r = State::inspect(&p).unwrap().records().unwrap();
        assert!(r.namespaces.is_empty() && r.routers.is_empty());
        let r = open(&p).records().unwrap();
        assert!(r.namespaces.is_empty() && r.routers.is_empty());
        let _ = std::fs::remove_dir_all(p);
    }

    #[test]
    fn allocations_are_private_records_and_a_planted_link_is_refused() {
        let p = dir("alloc");
        let s = open(&p);
        let id = RouterId::new("id", ID).unwrap();
        let mut needs = Needs::default();
        needs.link_local.insert(id.clone());
        needs.fip_priorities.insert("203.0.113.2".parse().unwrap());
        // A plan computes without saving.
        let a = allocate(&s, &needs, false).unwrap();
        assert_eq!(a.link_local[&id], 0);
        assert!(!p.join(LINK_LOCAL).exists());
        allocate(&s, &needs, true).unwrap();
        let file = p.join(LINK_LOCAL);
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            format!("{ID},169.254.64.0/31\n")
        );
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::read_to_string(p.join(PRIORITIES)).unwrap(),
            "203.0.113.2,32768\n"
        );
        collect_garbage(&s, &Needs::default()).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "");

        let victim = p.with_extension("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        std::fs::remove_file(p.join(PRIORITIES)).unwrap();
        std::os::unix::fs::symlink(&victim, p.join(PRIORITIES)).unwrap();
        let e = allocate(&s, &needs, true).unwrap_err().to_string();
        assert!(
            e.contains("symbolic link") && !e.contains("precious"),
            "{e}"
        );
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        let _ = std::fs::remove_file(victim);
        let _ = std::fs::remove_dir_all(p);
    }
}
