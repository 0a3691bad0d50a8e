//! One host's convergence: every router of the config made real, every router l3agent made
//! earlier and no longer wanted removed, under one lock per state directory.
//!
//! - Which routers l3agent made is recorded in `<state_path>/routers.json` *before* it makes
//!   them, so after a crash at any point the next run still knows what to converge or remove.
//! - A router whose dict did not change since its last successful convergence (fingerprint in
//!   the state) is only checked against the kernel (namespace, devices, addresses: netlink
//!   dumps, no process); it is converged in full only if that check fails, or with `full`.
//!   Re-applying therefore never touches routers that did not change.
//! - Routers are converged on a small pool of threads, one netlink socket each.
//! - SIGTERM (see [`install_sigterm_handler`]) stops the apply between routers: the routers in
//!   progress finish, the state is saved, and the report says it was interrupted.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use l3agent_iptables_exec::Backend;
use l3agent_rtnl::Rtnl;
use l3agent_types::NetnsName;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::alloc::{write_atomic, Allocator, LinkLocalPool, RangePool};
use crate::config::{AgentMode, HostConfig, Router};
use crate::dvr;
use crate::error::RouterError;
use crate::legacy;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigterm(_: nix::libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Makes SIGTERM (and SIGINT) stop an apply cleanly between routers instead of killing it.
pub fn install_sigterm_handler() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_sigterm),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let _ = unsafe { sigaction(sig, &action) };
    }
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// What happened to one router.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouterResult {
    /// Router id.
    pub id: String,
    /// `converged`, `unchanged`, `removed`, `failed` or `skipped` (interrupted).
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
    /// Stopped early by SIGTERM/SIGINT.
    pub interrupted: bool,
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

/// The state kept per router.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterState {
    /// Fingerprint of the router dict last converged successfully (empty: not yet).
    pub fingerprint: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    routers: BTreeMap<String, RouterState>,
    /// FIP namespaces l3agent made (DVR), removed when no router uses them any more.
    #[serde(default)]
    fip_namespaces: std::collections::BTreeSet<String>,
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
    let text = serde_json::to_string(s).map_err(|e| HostError::State(e.to_string()))?;
    write_atomic(&state_path.join("routers.json"), text.as_bytes())
        .map_err(|e| HostError::State(e.to_string()))
}

fn namespace_of(id: &str) -> Option<NetnsName> {
    NetnsName::new("router", &format!("qrouter-{id}")).ok()
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

/// What the sequential pre-phase prepared for the parallel per-router work.
#[derive(Default)]
struct Prepared {
    alloc: BTreeMap<String, dvr::DvrAllocation>,
    fip: BTreeMap<String, Result<dvr::FipGateway, String>>,
}

fn ensure(
    host: &mut Rtnl,
    cfg: &HostConfig,
    r: &Router,
    backend: Backend,
    prep: &Prepared,
) -> Result<Vec<String>, RouterError> {
    if !r.distributed {
        return legacy::ensure_legacy(host, r, backend);
    }
    if cfg.agent.mode == AgentMode::Legacy {
        return Err(RouterError::Unsupported {
            router: r.id.clone(),
            what: "a distributed router on a legacy agent".into(),
        });
    }
    let net = r.gw_port.as_ref().map(|g| g.network_id.clone());
    let fip = match net.as_ref().and_then(|n| prep.fip.get(n)) {
        Some(Ok(f)) => Some(f),
        Some(Err(e)) => {
            return Err(RouterError::Unsupported {
                router: r.id.clone(),
                what: format!("its FIP namespace failed ({e}); this router"),
            })
        }
        None => None,
    };
    let snat_here = cfg.agent.mode == AgentMode::DvrSnat
        && r.gw_port_host.as_deref() == Some(cfg.agent.host.as_str());
    let alloc = prep.alloc.get(&r.id).cloned().unwrap_or_default();
    dvr::ensure_dvr(
        host,
        r,
        &cfg.agent.host,
        fip,
        snat_here,
        &alloc,
        backend,
        legacy::random_fully_enabled(),
    )
}

type Allocators = (
    Allocator<LinkLocalPool>,
    Allocator<RangePool>,
    Allocator<RangePool>,
);

fn allocators(state_path: &Path) -> Result<Allocators, crate::alloc::AllocError> {
    Ok((
        Allocator::load(&state_path.join("fip-linklocal-networks"), LinkLocalPool)?,
        Allocator::load(
            &state_path.join("fip-priorities"),
            RangePool::FIP_PRIORITIES,
        )?,
        Allocator::load(
            &state_path.join("snat-tables"),
            RangePool {
                start: dvr::SNAT_TABLES.start,
                end: dvr::SNAT_TABLES.end,
            },
        )?,
    ))
}

fn is_dvr(cfg: &HostConfig, r: &Router) -> bool {
    r.distributed && cfg.agent.mode != AgentMode::Legacy
}

/// Allocations and FIP namespaces for the distributed routers, done one at a time before the
/// routers are converged in parallel.
fn prepare(
    host: &mut Rtnl,
    cfg: &HostConfig,
    wanted: &[&Router],
    backend: Backend,
    state: &mut State,
) -> Result<Prepared, HostError> {
    let mut prep = Prepared::default();
    let alloc_err = |e: crate::alloc::AllocError| HostError::State(e.to_string());
    let (mut ll, mut prio, mut tables) = allocators(&cfg.agent.state_path).map_err(alloc_err)?;
    for r in wanted.iter().copied().filter(|r| is_dvr(cfg, r)) {
        let mut a = dvr::DvrAllocation::default();
        if let Some(fg) = dvr::agent_gateway(r) {
            a.link_local = Some(ll.allocate(&r.id).map_err(alloc_err)?);
            let net = fg.network_id.clone();
            if let std::collections::btree_map::Entry::Vacant(v) = prep.fip.entry(net.clone()) {
                let result = match dvr::fip_namespace(&net) {
                    Some(namespace) => {
                        let gw = dvr::FipGateway {
                            namespace,
                            port: fg.clone(),
                        };
                        // Recorded before it is made, like routers.
                        state.fip_namespaces.insert(gw.namespace.to_string());
                        save_state(&cfg.agent.state_path, state)?;
                        let mut changes = Vec::new();
                        dvr::ensure_fip_namespace(host, &gw, backend, &mut changes)
                            .map(|()| gw)
                            .map_err(|e| e.to_string())
                    }
                    None => Err(format!("invalid external network id {net:?}")),
                };
                v.insert(result);
            }
            for f in r
                .fips
                .iter()
                .filter(|f| f.host.as_deref().is_none_or(|h| h == cfg.agent.host))
            {
                let p = prio.allocate(&f.floating.to_string()).map_err(alloc_err)?;
                a.fip_priorities
                    .insert(f.floating, RangePool::FIP_PRIORITIES.start + p);
            }
        }
        if !r.snat_interfaces.is_empty() {
            for p in &r.interfaces {
                let t = tables
                    .allocate(&format!("{}.{}", r.id, p.id))
                    .map_err(alloc_err)?;
                a.snat_tables
                    .insert(p.id.clone(), dvr::SNAT_TABLES.start + t);
            }
        }
        prep.alloc.insert(r.id.clone(), a);
    }
    Ok(prep)
}

/// Returns allocations of gone routers and FIPs to their pools, and removes FIP namespaces no
/// router uses any more.
fn collect_garbage(cfg: &HostConfig, wanted: &[&Router], state: &mut State) -> Vec<RouterResult> {
    let mut out = Vec::new();
    let dvr_routers: Vec<&Router> = wanted.iter().copied().filter(|r| is_dvr(cfg, r)).collect();
    if let Ok((mut ll, mut prio, mut tables)) = allocators(&cfg.agent.state_path) {
        let _ = ll.retain(&|k| {
            dvr_routers
                .iter()
                .any(|r| r.id == k && dvr::agent_gateway(r).is_some())
        });
        let _ = prio.retain(&|k| {
            dvr_routers
                .iter()
                .any(|r| r.fips.iter().any(|f| f.floating.to_string() == k))
        });
        let _ = tables.retain(&|k| {
            dvr_routers.iter().any(|r| {
                !r.snat_interfaces.is_empty()
                    && r.interfaces
                        .iter()
                        .any(|p| format!("{}.{}", r.id, p.id) == k)
            })
        });
    }
    let used: std::collections::BTreeSet<String> = dvr_routers
        .iter()
        .filter_map(|r| dvr::agent_gateway(r))
        .filter_map(|p| dvr::fip_namespace(&p.network_id))
        .map(|n| n.to_string())
        .collect();
    for name in state.fip_namespaces.clone() {
        if used.contains(&name) {
            continue;
        }
        let Ok(ns) = NetnsName::new("fip", &name) else {
            continue;
        };
        match legacy::destroy(&ns) {
            Ok(_) => {
                state.fip_namespaces.remove(&name);
                out.push(RouterResult {
                    id: name,
                    status: "removed".into(),
                    changes: vec!["FIP namespace no router uses any more".into()],
                    error: None,
                });
            }
            Err(e) => out.push(RouterResult {
                id: name,
                status: "failed".into(),
                changes: Vec::new(),
                error: Some(e.to_string()),
            }),
        }
    }
    out
}

/// The namespaces a router owns on its own (not the shared `fip-`).
fn router_namespaces(r: &Router) -> Vec<NetnsName> {
    [Some(r.namespace()), dvr::snat_namespace(&r.id)]
        .into_iter()
        .flatten()
        .collect()
}

/// After a failed convergence: removes the namespaces this run created for the router (a
/// router that existed before keeps its working parts), and returns the error, with any
/// teardown failure appended.
fn undo_created(r: &Router, existed: &[bool], e: RouterError) -> RouterError {
    let mut undo_errors = Vec::new();
    for (ns, was) in router_namespaces(r).iter().zip(existed) {
        if !was {
            if let Err(t) = legacy::destroy(ns) {
                undo_errors.push(t.to_string());
            }
        }
    }
    if undo_errors.is_empty() {
        e
    } else {
        RouterError::Unsupported {
            router: r.id.clone(),
            what: format!(
                "{e}; undoing it also failed ({}): this",
                undo_errors.join("; ")
            ),
        }
    }
}

/// How many routers are converged at once.
const WORKERS: usize = 4;

/// How thoroughly [`apply`] looks at routers whose dict did not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Unchanged {
    /// Check them against the kernel (netlink only) and converge those that drifted (default).
    #[default]
    Verify,
    /// Converge them completely, iptables included (`--full`).
    Converge,
    /// Leave them alone (`--changed-only`): for event-driven updates, where a periodic
    /// `Verify` apply catches drift.
    Trust,
}

/// Converges the host to `cfg`; `unchanged` says what to do with routers whose dict did not
/// change since their last successful convergence.
pub fn apply(cfg: &HostConfig, unchanged: Unchanged) -> Result<HostReport, HostError> {
    let _lock = lock(&cfg.agent.state_path)?;
    let mut state = load_state(&cfg.agent.state_path)?;
    let wanted: Vec<&Router> = cfg.routers.iter().filter(|r| r.admin_state_up).collect();
    let wanted_ids: std::collections::HashSet<&str> =
        wanted.iter().map(|r| r.id.as_str()).collect();
    let stale: Vec<String> = state
        .routers
        .keys()
        .filter(|id| !wanted_ids.contains(id.as_str()))
        .cloned()
        .collect();
    // Record first, create after: a crash in between leaves a known router, never a leak.
    let known = state.routers.len();
    for r in &wanted {
        state.routers.entry(r.id.clone()).or_default();
    }
    if state.routers.len() != known {
        save_state(&cfg.agent.state_path, &state)?;
    }
    let backend_cell = std::sync::OnceLock::new();
    let backend = || {
        *backend_cell
            .get_or_init(|| l3agent_iptables_exec::runner::system_backend().unwrap_or(Backend::Nft))
    };
    let prep = {
        let mut host = Rtnl::current()?;
        let backend = backend();
        prepare(&mut host, cfg, &wanted, backend, &mut state)?
    };
    let queue: Mutex<Vec<&Router>> = Mutex::new(wanted.iter().rev().copied().collect());
    let results: Mutex<Vec<(RouterResult, Option<String>)>> = Mutex::new(Vec::new());
    let fingerprints: BTreeMap<String, String> = state
        .routers
        .iter()
        .map(|(k, v)| (k.clone(), v.fingerprint.clone()))
        .collect();
    let workers = WORKERS.min(wanted.len()).max(1);
    let host_error: Mutex<Option<HostError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                let mut host = match Rtnl::current() {
                    Ok(h) => h,
                    Err(e) => {
                        *host_error.lock().expect("lock") = Some(e.into());
                        return;
                    }
                };
                loop {
                    let next = queue.lock().expect("lock").pop();
                    let Some(r) = next else { break };
                    if interrupted() {
                        let skipped = RouterResult {
                            id: r.id.clone(),
                            status: "skipped".into(),
                            changes: Vec::new(),
                            error: None,
                        };
                        results.lock().expect("lock").push((skipped, None));
                        continue;
                    }
                    let fp = fingerprint(r);
                    let same = fingerprints.get(&r.id) == Some(&fp);
                    let skip = match unchanged {
                        Unchanged::Converge => false,
                        Unchanged::Trust => same,
                        Unchanged::Verify => same && legacy::looks_converged(r),
                    };
                    let out = if skip {
                        (
                            RouterResult {
                                id: r.id.clone(),
                                status: "unchanged".into(),
                                changes: Vec::new(),
                                error: None,
                            },
                            Some(fp),
                        )
                    } else {
                        let existed = router_namespaces(r)
                            .iter()
                            .map(l3agent_rtnl::netns::exists)
                            .collect::<Vec<_>>();
                        match ensure(&mut host, cfg, r, backend(), &prep)
                            .map_err(|e| undo_created(r, &existed, e))
                        {
                            Ok(changes) => {
                                let status = if changes.is_empty() {
                                    "unchanged"
                                } else {
                                    "converged"
                                };
                                (
                                    RouterResult {
                                        id: r.id.clone(),
                                        status: status.into(),
                                        changes,
                                        error: None,
                                    },
                                    Some(fp),
                                )
                            }
                            Err(e) => (
                                RouterResult {
                                    id: r.id.clone(),
                                    status: "failed".into(),
                                    changes: Vec::new(),
                                    error: Some(e.to_string()),
                                },
                                None,
                            ),
                        }
                    };
                    results.lock().expect("lock").push(out);
                }
            });
        }
    });
    if let Some(e) = host_error.into_inner().expect("lock") {
        return Err(e);
    }
    let mut report = HostReport {
        interrupted: interrupted(),
        ..HostReport::default()
    };
    let mut results = results.into_inner().expect("lock");
    results.sort_by(|a, b| a.0.id.cmp(&b.0.id));
    for (res, fp) in results {
        // A failed router keeps an empty fingerprint: the next apply converges it in full.
        if let Some(st) = state.routers.get_mut(&res.id) {
            st.fingerprint = fp.unwrap_or_default();
        }
        report.routers.push(res);
    }
    for id in stale {
        if interrupted() {
            break;
        }
        report.routers.push(remove(&mut state, &id));
    }
    if !interrupted() {
        report
            .routers
            .extend(collect_garbage(cfg, &wanted, &mut state));
    }
    save_state(&cfg.agent.state_path, &state)?;
    let touched: std::collections::BTreeSet<String> = report
        .routers
        .iter()
        .filter(|r| r.status != "unchanged")
        .map(|r| r.id.clone())
        .collect();
    save_applied(cfg, &|id| touched.contains(id))?;
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
    let mut errors: Vec<String> = Vec::new();
    let mut changes = Vec::new();
    for fip in &state.fip_namespaces {
        if let Ok(f) = NetnsName::new("fip", fip) {
            errors.extend(
                dvr::remove_from_fip_namespace(&f, id, None)
                    .into_iter()
                    .map(|e| e.to_string()),
            );
        }
    }
    for name in [Some(ns), dvr::snat_namespace(id)].into_iter().flatten() {
        match legacy::destroy(&name) {
            Ok(true) => changes.push(format!("deleted namespace {name}")),
            Ok(false) => {}
            Err(e) => errors.push(e.to_string()),
        }
    }
    if errors.is_empty() {
        state.routers.remove(id);
        RouterResult {
            id: id.into(),
            status: "removed".into(),
            changes,
            error: None,
        }
    } else {
        RouterResult {
            id: id.into(),
            status: "failed".into(),
            changes,
            error: Some(errors.join("; ")),
        }
    }
}

/// Removes every router l3agent made (from its state file) and, with `cfg`, those of the config:
/// found by exact namespace names, never by suffix.
pub fn destroy(state_path: &Path, cfg: Option<&HostConfig>) -> Result<HostReport, HostError> {
    let _lock = lock(state_path)?;
    let mut state = load_state(state_path)?;
    let ids: Vec<String> = match cfg {
        None => state.routers.keys().cloned().collect(),
        Some(c) => c
            .routers
            .iter()
            .map(|r| r.id.clone())
            .filter(|id| {
                state.routers.contains_key(id)
                    || namespace_of(id).is_some_and(|n| l3agent_rtnl::netns::exists(&n))
            })
            .collect(),
    };
    let mut report = HostReport::default();
    for id in ids {
        report.routers.push(remove(&mut state, &id));
    }
    if state.routers.is_empty() {
        for name in std::mem::take(&mut state.fip_namespaces) {
            let Ok(ns) = NetnsName::new("fip", &name) else {
                continue;
            };
            let result = match legacy::destroy(&ns) {
                Ok(_) => RouterResult {
                    id: name,
                    status: "removed".into(),
                    changes: vec!["FIP namespace".into()],
                    error: None,
                },
                Err(e) => {
                    state.fip_namespaces.insert(name.clone());
                    RouterResult {
                        id: name,
                        status: "failed".into(),
                        changes: Vec::new(),
                        error: Some(e.to_string()),
                    }
                }
            };
            report.routers.push(result);
        }
    }
    save_state(state_path, &state)?;
    Ok(report)
}

/// Keeps the last applied state as one file per router in `<state_path>/applied/` (plus the
/// agent section), rewriting only the routers this apply touched, so that an apply that
/// changes one router writes one small file, however many routers the host has.
fn save_applied(cfg: &HostConfig, touched: &dyn Fn(&str) -> bool) -> Result<(), HostError> {
    let dir = cfg.agent.state_path.join("applied");
    let err = |e: String| HostError::State(e);
    let write = |name: &str, value: &dyn erased::Json| -> Result<(), HostError> {
        write_atomic(&dir.join(name), value.json().map_err(err)?.as_bytes())
            .map_err(|e| err(e.to_string()))
    };
    write("agent.json", &cfg.doc.agent)?;
    let present: std::collections::HashSet<String> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let mut keep = std::collections::BTreeSet::new();
    for r in &cfg.doc.routers {
        let file = format!("router-{}.json", r.id);
        if touched(&r.id) || !present.contains(&file) {
            write(&file, r)?;
        }
        keep.insert(file);
    }
    for name in present
        .iter()
        .filter(|n| n.starts_with("router-") && !keep.contains(*n))
    {
        let _ = std::fs::remove_file(dir.join(name));
    }
    Ok(())
}

mod erased {
    /// Serialises a config part to JSON (object-safe helper for `save_applied`).
    pub trait Json {
        fn json(&self) -> Result<String, String>;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> Result<String, String> {
            serde_json::to_string(self).map_err(|e| e.to_string())
        }
    }
}

/// One router in a plan or a status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouterView {
    /// Router id.
    pub id: String,
    /// Plan: `create`, `update`, `repair`, `unchanged` or `remove`. Status: `ok`, `drift`,
    /// `missing` (no namespace) or `failed` (its last convergence failed).
    pub state: String,
    /// Its namespace.
    pub namespace: String,
    /// Floating IPs (floating → fixed).
    pub floating_ips: Vec<String>,
    /// Plan: what would change, item by item.
    pub changes: Vec<String>,
}

fn view(r: &Router, state: &str) -> RouterView {
    RouterView {
        id: r.id.clone(),
        state: state.into(),
        namespace: r.namespace().to_string(),
        floating_ips: r
            .fips
            .iter()
            .map(|f| format!("{} -> {}", f.floating, f.fixed))
            .collect(),
        changes: Vec::new(),
    }
}

/// What differs between the router as last applied and as wanted, item by item.
pub fn router_diff(old: Option<&Router>, new: &Router) -> Vec<String> {
    use std::collections::BTreeSet;
    let ports = |r: Option<&Router>| -> BTreeSet<String> {
        r.map(|r| {
            r.interfaces
                .iter()
                .chain(&r.gw_port)
                .chain(&r.snat_interfaces)
                .map(|p| {
                    format!(
                        "port {} ({})",
                        p.dev,
                        p.ips
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
    };
    let fips = |r: Option<&Router>| -> BTreeSet<String> {
        r.map(|r| {
            r.fips
                .iter()
                .map(|f| format!("floating IP {} -> {}", f.floating, f.fixed))
                .collect()
        })
        .unwrap_or_default()
    };
    let routes = |r: Option<&Router>| -> BTreeSet<String> {
        r.map(|r| {
            r.routes
                .iter()
                .map(|(d, n)| format!("route {d} via {n}"))
                .collect()
        })
        .unwrap_or_default()
    };
    let mut out = Vec::new();
    for (before, after) in [
        (ports(old), ports(Some(new))),
        (fips(old), fips(Some(new))),
        (routes(old), routes(Some(new))),
    ] {
        out.extend(after.difference(&before).map(|x| format!("add {x}")));
        out.extend(before.difference(&after).map(|x| format!("remove {x}")));
    }
    if let Some(o) = old {
        if o.enable_snat != new.enable_snat {
            out.push(format!(
                "SNAT {}",
                if new.enable_snat { "on" } else { "off" }
            ));
        }
        let shape = |r: &Router| {
            r.interfaces
                .iter()
                .chain(&r.gw_port)
                .map(|p| (p.dev.clone(), p.mtu, p.mac))
                .collect::<Vec<_>>()
        };
        if shape(o) != shape(new) {
            out.push("port MTU or MAC".into());
        }
    }
    out
}

fn last_applied(state_path: &Path) -> Result<Vec<Router>, HostError> {
    let dir = state_path.join("applied");
    let read = |path: &Path| -> Result<Option<String>, HostError> {
        match std::fs::read_to_string(path) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(HostError::Io {
                what: format!("reading {}", path.display()),
                source,
            }),
        }
    };
    let bad = |path: &Path, e: String| HostError::State(format!("{}: {e}", path.display()));
    let agent_path = dir.join("agent.json");
    let Some(agent) = read(&agent_path)? else {
        return Ok(Vec::new());
    };
    let agent: crate::config::AgentDoc =
        serde_json::from_str(&agent).map_err(|e| bad(&agent_path, e.to_string()))?;
    let mut routers = Vec::new();
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .map_err(|source| HostError::Io {
            what: format!("listing {}", dir.display()),
            source,
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("router-"))
        })
        .collect();
    files.sort();
    for path in files {
        if let Some(t) = read(&path)? {
            routers.push(serde_json::from_str(&t).map_err(|e| bad(&path, e.to_string()))?);
        }
    }
    let doc = crate::config::ConfigDoc { agent, routers };
    Ok(doc
        .validate()
        .map_err(|e| bad(&dir, format!("{e:?}")))?
        .routers)
}

/// What [`apply`] would do with `cfg`, router by router and item by item; touches nothing.
pub fn plan(cfg: &HostConfig) -> Result<Vec<RouterView>, HostError> {
    let state = load_state(&cfg.agent.state_path)?;
    let applied = last_applied(&cfg.agent.state_path)?;
    let mut out = Vec::new();
    for r in cfg.routers.iter().filter(|r| r.admin_state_up) {
        let exists = l3agent_rtnl::netns::exists(&r.namespace());
        let old = applied.iter().find(|a| a.id == r.id).filter(|_| exists);
        let same = state
            .routers
            .get(&r.id)
            .is_some_and(|s| s.fingerprint == fingerprint(r));
        let mut changes = router_diff(old, r);
        let what = if !exists {
            changes.insert(0, format!("create namespace {}", r.namespace()));
            "create"
        } else if !same {
            "update"
        } else if legacy::looks_converged(r) {
            "unchanged"
        } else {
            changes.push("the kernel drifted from the applied state: converge it again".into());
            "repair"
        };
        out.push(RouterView {
            changes,
            ..view(r, what)
        });
    }
    for id in state
        .routers
        .keys()
        .filter(|id| !cfg.routers.iter().any(|r| r.admin_state_up && &r.id == *id))
    {
        let namespace = namespace_of(id).map(|n| n.to_string()).unwrap_or_default();
        out.push(RouterView {
            id: id.clone(),
            state: "remove".into(),
            changes: vec![format!("delete namespace {namespace}")],
            namespace,
            floating_ips: Vec::new(),
        });
    }
    Ok(out)
}

/// The routers of the last successful apply and how the kernel compares (netlink only).
pub fn status(state_path: &Path) -> Result<Vec<RouterView>, HostError> {
    let state = load_state(state_path)?;
    let applied = last_applied(state_path)?;
    let mut out = Vec::new();
    for (id, st) in &state.routers {
        let Some(r) = applied.iter().find(|r| &r.id == id) else {
            out.push(RouterView {
                id: id.clone(),
                state: "failed".into(),
                namespace: namespace_of(id).map(|n| n.to_string()).unwrap_or_default(),
                floating_ips: Vec::new(),
                changes: Vec::new(),
            });
            continue;
        };
        let what = if !l3agent_rtnl::netns::exists(&r.namespace()) {
            "missing"
        } else if st.fingerprint.is_empty() {
            "failed"
        } else if legacy::looks_converged(r) {
            "ok"
        } else {
            "drift"
        };
        out.push(view(r, what));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Router {
        let text = format!(
            r#"{{"agent": {{"mode": "legacy", "host": "h", "state_path": "/tmp/x", "bridges": {{"90e4912c-0eb8-4be4-a793-e6a3bba6ae8b": "b1", "c6910e18-fb1f-4988-9af4-211a8c2e2926": "b2", "65566f91-133a-44ff-87f5-ecffc1193d3d": "b3"}}}}, "routers": [{}]}}"#,
            include_str!("../tests/data/neutron-router-legacy.json")
        );
        let doc: crate::config::ConfigDoc = serde_json::from_str(&text).unwrap();
        doc.validate().unwrap().routers.remove(0)
    }

    #[test]
    fn diff_names_each_item() {
        let old = example();
        let mut new = old.clone();
        assert!(router_diff(Some(&old), &new).is_empty());
        new.fips[0].fixed = "198.51.100.10".parse().unwrap();
        new.routes.clear();
        new.enable_snat = false;
        let d = router_diff(Some(&old), &new);
        assert_eq!(
            d,
            [
                "add floating IP 203.0.113.2 -> 198.51.100.10",
                "remove floating IP 203.0.113.2 -> 192.0.2.10",
                "remove route 100.64.8.0/24 via 203.0.113.4",
                "SNAT off",
            ]
        );
        assert!(router_diff(None, &old)
            .iter()
            .any(|c| c == "add port qg-184a6791-c4 (203.0.113.4/24)"));
        assert_ne!(fingerprint(&old), fingerprint(&new));
        assert_eq!(fingerprint(&old), fingerprint(&old.clone()));
    }

    #[test]
    fn ipv6_gateway_sysctls() {
        let mut r = example();
        let gw = r.gw_port.as_mut().unwrap();
        assert!(legacy::gateway_ipv6_sysctls(gw).is_empty());
        gw.subnets.push(crate::config::Subnet {
            id: "v6".into(),
            cidr: "2001:db8::/64".parse().unwrap(),
            gateway: None,
        });
        let s = legacy::gateway_ipv6_sysctls(gw);
        assert_eq!(s[1].1, 2, "no IPv6 gateway: accept router advertisements");
        gw.subnets[1].gateway = Some("2001:db8::1".parse().unwrap());
        assert_eq!(legacy::gateway_ipv6_sysctls(gw)[1].1, 0);
    }
}
