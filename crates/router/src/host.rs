//! One host's convergence: every router of the config made real, every router l3agent made
//! earlier and no longer wanted removed, under one lock per state directory. Which routers
//! l3agent made is recorded in `<state_path>/routers.json` *before* it makes them, so after a
//! crash at any point the next run still knows what to converge or remove.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::path::Path;
use std::time::{Duration, Instant};

use l3agent_rtnl::Rtnl;
use l3agent_types::NetnsName;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::alloc::write_atomic;
use crate::config::{AgentMode, HostConfig, Router};
use crate::error::RouterError;
use crate::legacy;

/// What happened to one router.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouterResult {
    /// Router id.
    pub id: String,
    /// `converged`, `unchanged`, `removed` or `failed`.
    pub status: String,
    /// What changed.
    pub changes: Vec<String>,
    /// Why it failed.
    pub error: Option<String>,
}

/// What an apply did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HostReport {
    /// Per router.
    pub routers: Vec<RouterResult>,
}

impl HostReport {
    /// Whether any router failed.
    pub fn failed(&self) -> bool {
        self.routers.iter().any(|r| r.status == "failed")
    }
    /// Whether anything changed.
    pub fn changed(&self) -> bool {
        self.routers.iter().any(|r| r.status != "unchanged")
    }
}

/// Errors that stop a whole apply (before any router is touched).
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The state directory or lock.
    #[error("{what}: {source}")]
    Io {
        /// What.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// The state file is invalid.
    #[error("{0}")]
    State(String),
    /// The host namespace's netlink socket.
    #[error(transparent)]
    Plumbing(#[from] l3agent_rtnl::Error),
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    routers: BTreeSet<String>,
}

fn lock(state_path: &Path) -> Result<Flock<File>, HostError> {
    let io = |what: String| move |source| HostError::Io { what, source };
    std::fs::create_dir_all(state_path)
        .map_err(io(format!("creating {}", state_path.display())))?;
    let path = state_path.join("l3agent.lock");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(format!("opening {}", path.display())))?;
    let start = Instant::now();
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => return Ok(l),
            Err((f, nix::errno::Errno::EWOULDBLOCK))
                if start.elapsed() < Duration::from_secs(120) =>
            {
                file = f;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err((_, e)) => {
                return Err(HostError::Io {
                    what: format!("locking {} (another l3agent is applying)", path.display()),
                    source: e.into(),
                })
            }
        }
    }
}

fn load_state(state_path: &Path) -> Result<State, HostError> {
    let path = state_path.join("routers.json");
    match std::fs::read_to_string(&path) {
        Ok(t) => serde_json::from_str(&t)
            .map_err(|e| HostError::State(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(source) => Err(HostError::Io {
            what: format!("reading {}", path.display()),
            source,
        }),
    }
}

fn save_state(state_path: &Path, s: &State) -> Result<(), HostError> {
    let text = serde_json::to_string_pretty(s).map_err(|e| HostError::State(e.to_string()))?;
    write_atomic(&state_path.join("routers.json"), text.as_bytes())
        .map_err(|e| HostError::State(e.to_string()))
}

fn namespace_of(id: &str) -> Option<NetnsName> {
    NetnsName::new("router", &format!("qrouter-{id}")).ok()
}

fn ensure(host: &mut Rtnl, cfg: &HostConfig, r: &Router) -> Result<Vec<String>, RouterError> {
    if r.distributed || cfg.agent.mode != AgentMode::Legacy {
        return Err(RouterError::Unsupported {
            router: r.id.clone(),
            what: format!("{:?} mode / distributed routers", cfg.agent.mode),
        });
    }
    legacy::ensure_legacy(host, r)
}

/// Converges the host to `cfg`.
pub fn apply(cfg: &HostConfig) -> Result<HostReport, HostError> {
    let _lock = lock(&cfg.agent.state_path)?;
    let mut state = load_state(&cfg.agent.state_path)?;
    let wanted: Vec<&Router> = cfg.routers.iter().filter(|r| r.admin_state_up).collect();
    let stale: Vec<String> = state
        .routers
        .iter()
        .filter(|id| !wanted.iter().any(|r| &r.id == *id))
        .cloned()
        .collect();
    // Record first, create after: a crash in between leaves a known router, never a leak.
    state.routers.extend(wanted.iter().map(|r| r.id.clone()));
    save_state(&cfg.agent.state_path, &state)?;
    let mut host = Rtnl::current()?;
    let mut report = HostReport::default();
    for r in wanted {
        report.routers.push(match ensure(&mut host, cfg, r) {
            Ok(changes) => RouterResult {
                id: r.id.clone(),
                status: if changes.is_empty() {
                    "unchanged"
                } else {
                    "converged"
                }
                .into(),
                changes,
                error: None,
            },
            Err(e) => RouterResult {
                id: r.id.clone(),
                status: "failed".into(),
                changes: Vec::new(),
                error: Some(e.to_string()),
            },
        });
    }
    for id in stale {
        report.routers.push(remove(&mut state, &id));
    }
    save_state(&cfg.agent.state_path, &state)?;
    Ok(report)
}

fn remove(state: &mut State, id: &str) -> RouterResult {
    let Some(ns) = namespace_of(id) else {
        state.routers.remove(id);
        return RouterResult {
            id: id.into(),
            status: "removed".into(),
            changes: Vec::new(),
            error: None,
        };
    };
    match legacy::destroy(&ns) {
        Ok(existed) => {
            state.routers.remove(id);
            let changes = if existed {
                vec![format!("deleted namespace {ns}")]
            } else {
                Vec::new()
            };
            RouterResult {
                id: id.into(),
                status: "removed".into(),
                changes,
                error: None,
            }
        }
        Err(e) => RouterResult {
            id: id.into(),
            status: "failed".into(),
            changes: Vec::new(),
            error: Some(e.to_string()),
        },
    }
}

/// Removes every router l3agent made (from its state file) and, with `cfg`, those of the config:
/// found by exact namespace names, never by suffix.
pub fn destroy(state_path: &Path, cfg: Option<&HostConfig>) -> Result<HostReport, HostError> {
    let _lock = lock(state_path)?;
    let mut state = load_state(state_path)?;
    let mut ids: BTreeSet<String> = state.routers.clone();
    if let Some(c) = cfg {
        ids = c
            .routers
            .iter()
            .map(|r| r.id.clone())
            .filter(|id| {
                state.routers.contains(id)
                    || namespace_of(id).is_some_and(|n| l3agent_rtnl::netns::exists(&n))
            })
            .collect();
    }
    let mut report = HostReport::default();
    for id in ids {
        report.routers.push(remove(&mut state, &id));
    }
    save_state(state_path, &state)?;
    Ok(report)
}
