//! The router layer's records in the state directory (kept safe, locked and atomic by
//! [`l3agent_state::StateDir`]):
//!
//! ```text
//! <state_path>/
//!   records.json               namespaces l3agent created (recorded BEFORE it creates them)
//!                              and per router the fingerprint of its last successful apply
//!                              ("" = its last apply failed)
//!   applied/agent.json         the agent section of the last apply
//!   applied/facts.json         the host facts of the last apply (random_fully)
//!   applied/router-<id>.json   each router's dict as last applied (rewritten when it changed)
//!   fip-linklocal-networks     allocators (see crate::alloc): rfp/fpr /31s,
//!   fip-priorities             FIP rule priorities,
//!   snat-tables                SNAT-redirect tables
//! ```
//!
//! Recovery: a missing or corrupt `records.json` is rebuilt from the kernel (the namespaces in
//! `/run/netns` that are l3agent's by exact name) and from `applied/`; a corrupt `applied/`
//! record makes `status` report nothing for that router until the next apply rewrites it.
//! Neither is ever a permanent error.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use l3agent_state::{OpenOptions, StateDir, StateError};
use l3agent_types::NetnsName;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::alloc::{Allocator, LinkLocalPool, RangePool};
use crate::compile::{Allocations, HostFacts, Needs};
use crate::config::{AgentDoc, ConfigDoc, HostConfig, Router, RouterDoc};
use crate::host::HostError;
use crate::spec::names;

/// `records.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Records {
    /// Namespaces l3agent made (or is about to make).
    pub namespaces: BTreeSet<NetnsName>,
    /// Router id → fingerprint of its last successful apply ("": it failed).
    pub routers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Facts {
    random_fully: bool,
}

const RECORDS: &str = "records.json";

/// The state directory of one host, opened for the router layer.
#[derive(Debug)]
pub struct State {
    /// `None`: the directory does not exist yet (a plan before the first apply).
    dir: Option<StateDir>,
    path: std::path::PathBuf,
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
        })
    }

    /// Opens it read-only (plan, status), without the lock; a missing directory reads as
    /// empty.
    pub fn inspect(path: &Path) -> Result<State, HostError> {
        match StateDir::inspect(path) {
            Ok(dir) => Ok(State {
                path: dir.path().to_owned(),
                dir: Some(dir),
            }),
            Err(e) if e.is_not_found() => Ok(State {
                dir: None,
                path: path.to_owned(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether nothing was ever recorded here (the directory does not exist).
    pub fn is_empty(&self) -> bool {
        self.dir.is_none()
    }

    fn path(&self) -> &Path {
        &self.path
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

    /// `records.json`, or rebuilt when it is missing or corrupt.
    pub fn records(&self, _cfg: &HostConfig) -> Result<Records, HostError> {
        self.records_or_rebuild()
    }

    /// `records.json`, or rebuilt from the kernel and `applied/` when missing or corrupt.
    pub fn records_or_rebuild(&self) -> Result<Records, HostError> {
        match self.read_json::<Records>(RECORDS) {
            Ok(Some(r)) => Ok(r),
            Ok(None) => self.rebuild(false),
            Err(StateError::Corrupt { path, reason }) => {
                warn!(path = %path.display(), %reason, "records corrupt: rebuilding them from the kernel");
                self.rebuild(true)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn rebuild(&self, corrupt: bool) -> Result<Records, HostError> {
        let mut r = Records::default();
        // Namespaces that are l3agent's by exact name. Without any record at all, only when
        // something was applied from here before (else a fresh state directory would adopt
        // namespaces another agent made).
        let applied = !self.list("applied")?.is_empty();
        if corrupt || applied {
            if let Ok(list) = l3agent_rtnl::netns::list() {
                r.namespaces.extend(
                    list.into_iter()
                        .filter(|n| names::parse_ns(n.as_str()).is_some()),
                );
            }
        }
        for f in self.list("applied")? {
            if let Some(id) = f
                .strip_prefix("router-")
                .and_then(|x| x.strip_suffix(".json"))
            {
                r.routers.insert(id.to_owned(), String::new());
            }
        }
        Ok(r)
    }

    /// Saves `records.json`.
    pub fn save_records(&self, r: &Records) -> Result<(), HostError> {
        Ok(self.dir()?.write_json(RECORDS, r)?)
    }

    /// Saves what was applied: the agent section, the facts, and every router whose record
    /// is missing or whose dict changed; removes the records of routers no longer there.
    pub fn save_applied(&self, cfg: &HostConfig, facts: &HostFacts) -> Result<(), HostError> {
        self.dir()?
            .write_json("applied/agent.json", &cfg.doc.agent)?;
        self.dir()?.write_json(
            "applied/facts.json",
            &Facts {
                random_fully: facts.random_fully,
            },
        )?;
        let present: BTreeSet<String> = self.list("applied")?.into_iter().collect();
        let mut keep = BTreeSet::new();
        for r in &cfg.doc.routers {
            let file = format!("router-{}.json", r.id);
            let name = format!("applied/{file}");
            let same = self
                .read_json::<RouterDoc>(&name)
                .ok()
                .flatten()
                .is_some_and(|old| serde_json::to_value(&old).ok() == serde_json::to_value(r).ok());
            if !same {
                self.dir()?.write_json(&name, r)?;
            }
            keep.insert(file);
        }
        for f in present
            .iter()
            .filter(|f| f.starts_with("router-") && !keep.contains(*f))
        {
            self.dir()?.remove(&format!("applied/{f}"))?;
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

fn allocators(dir: &Path) -> Result<Allocators, crate::alloc::AllocError> {
    Ok(Allocators {
        link_local: Allocator::load(&dir.join("fip-linklocal-networks"), LinkLocalPool)?,
        priorities: Allocator::load(&dir.join("fip-priorities"), RangePool::FIP_PRIORITIES)?,
        tables: Allocator::load(&dir.join("snat-tables"), RangePool::SNAT_TABLES)?,
    })
}

fn snat_key(r: &l3agent_types::RouterId, p: &l3agent_types::PortId) -> String {
    format!("{r}.{p}")
}

/// The allocations `needs` asks for: existing ones kept, new ones the lowest free value;
/// saved when `persist` (plan computes them in memory only). Nothing is freed here.
pub fn allocate(state: &State, needs: &Needs, persist: bool) -> Result<Allocations, HostError> {
    let Allocators {
        link_local: mut ll,
        priorities: mut prio,
        mut tables,
    } = allocators(state.path())?;
    let mut out = Allocations::default();
    for r in &needs.link_local {
        out.link_local.insert(r.clone(), ll.allocate(r.as_str())?);
    }
    for f in &needs.fip_priorities {
        let v = prio.allocate(&f.to_string())?;
        out.fip_priorities
            .insert(*f, RangePool::FIP_PRIORITIES.start + v);
    }
    for (r, p) in &needs.snat_tables {
        let v = tables.allocate(&snat_key(r, p))?;
        out.snat_tables
            .insert((r.clone(), p.clone()), RangePool::SNAT_TABLES.start + v);
    }
    if persist {
        ll.save()?;
        prio.save()?;
        tables.save()?;
    }
    Ok(out)
}

/// Frees every allocation `needs` no longer asks for (after a complete apply).
pub fn collect_garbage(state: &State, needs: &Needs) -> Result<(), HostError> {
    let Allocators {
        link_local: mut ll,
        priorities: mut prio,
        mut tables,
    } = allocators(state.path())?;
    ll.retain(&|k| needs.link_local.iter().any(|r| r.as_str() == k))?;
    prio.retain(&|k| needs.fip_priorities.iter().any(|f| f.to_string() == k))?;
    tables.retain(&|k| needs.snat_tables.iter().any(|(r, p)| snat_key(r, p) == k))?;
    Ok(())
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
