//! One host's routers: `apply`, `plan`, `status` and `destroy`, all on the same pipeline —
//! compile the config into a [`HostSpec`], observe each namespace, diff, and (apply only)
//! execute the diff.
//!
//! Order of an apply (a `plan` lists the same changes in the same order without making them):
//! 0. with the `openvswitch` interface driver, the integration bridge's ports are read, once
//!    for all routers (observe compares each router's OVS ports with this picture);
//! 1. the namespaces the spec wants are recorded in the state directory, and the routers
//!    whose dict changed lose their "applied" fingerprint, then the namespaces are created
//!    (so after a SIGKILL anywhere, the records name every namespace that may exist and no
//!    half-made change passes for applied; if that write fails, nothing is created);
//! 2. the shared `fip-` namespaces are converged (they create the `fpr-`/`rfp-` links);
//! 3. the routers' own namespaces are converged, router by router on a few worker threads,
//!    one netlink socket per namespace each; one failing router never stops the others, and a
//!    router that fails in namespaces this run created has them removed again;
//! 4. namespaces l3agent made that nobody wants any more are deleted (their devices, and the
//!    host ends of their veths, go with them in one step; with `openvswitch`, the OVS ports of
//!    their devices are unplugged first, in one transaction).
//!
//! Only a namespace that is l3agent's by exact name ([`names::parse_ns`]) is ever deleted,
//! whatever the records say; a leftover at such a name that is not a namespace (a plain file
//! in `/run/netns` from a crash) is replaced when wanted and removed when not.
//!
//! SIGTERM (a flag passed in, see [`ApplyOptions::stop`]) stops the apply between routers:
//! routers in progress finish, the rest are reported as skipped, the records are saved.
//!
//! The state directory (see [`crate::records`]) holds what l3agent created and what it last
//! applied; it is rebuilt from the kernel and the config when missing or corrupt.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use l3agent_ovsdb::OvsdbError;
use l3agent_supervise::Service;
use l3agent_types::{IfName, NetnsName, RouterId};
use serde::Serialize;
use tracing::{debug, info, warn};

use crate::change::Change;
use crate::compile::{self, HostFacts};
use crate::config::{ConfigDoc, HostConfig, IntegrationBridge, InterfaceDriver};
use crate::diff::diff;
use crate::error::RouterError;
use crate::exec::execute;
use crate::kernel::{Firewall, Kernel};
use crate::laps::Laps;
use crate::observe::{keepable, observe, observe_again, BridgePorts, Kept};
use crate::records::{self, Records, State};
use crate::spec::{names, DeviceKind, HaState, HostSpec, NsKind};

/// What happened to one router (or shared `fip-` namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RouterStatus {
    /// Changes were made and it converged.
    Converged,
    /// Nothing needed changing.
    Unchanged,
    /// It was removed.
    Removed,
    /// It failed (see the error); the next apply goes on from what is there.
    Failed,
    /// Not processed: the apply was interrupted first.
    Skipped,
}

/// One router's (or `fip-` namespace's) result.
#[derive(Debug, Clone, Serialize)]
pub struct RouterResult {
    /// Router id, or the `fip-` namespace name.
    pub id: String,
    /// What happened.
    pub status: RouterStatus,
    /// The changes made (apply) or to make (plan), in order.
    pub changes: Vec<Change>,
    /// Why it failed.
    pub error: Option<String>,
    /// An HA router's VRRP state here, as observed by this run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ha_state: Option<HaState>,
    /// The daemons that run for it once this run's changes are made (radvd, haproxy,
    /// keepalived).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub daemons: Vec<Service>,
}

/// What an apply (or a plan, or a destroy) did or would do.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HostReport {
    /// Per router, sorted by id.
    pub routers: Vec<RouterResult>,
    /// Stopped early by SIGTERM/SIGINT.
    pub interrupted: bool,
}

impl HostReport {
    /// Whether any router failed.
    pub fn failed(&self) -> bool {
        self.routers
            .iter()
            .any(|r| r.status == RouterStatus::Failed)
    }
    /// Whether anything changed (or, for a plan, would change).
    pub fn changed(&self) -> bool {
        self.routers.iter().any(|r| !r.changes.is_empty())
    }
    /// Every change, in order.
    pub fn changes(&self) -> impl Iterator<Item = &Change> {
        self.routers.iter().flat_map(|r| &r.changes)
    }
}

/// Errors that stop a whole apply before any router is touched.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The state directory.
    #[error(transparent)]
    State(#[from] l3agent_state::StateError),
    /// The allocators.
    #[error(transparent)]
    Alloc(#[from] crate::alloc::AllocError),
    /// Setting up the kernel side (netlink sockets).
    #[error(transparent)]
    Router(Box<RouterError>),
    /// Interrupted (SIGTERM) before anything was done.
    #[error("interrupted before anything was done")]
    Interrupted,
    /// The host does not fit the config (a bridge is missing or is not a bridge, namespaces
    /// would not outlive the process): found before anything was changed.
    #[error("the host does not fit the config, nothing was changed:\n  {}", .0.join("\n  "))]
    Host(Vec<String>),
}

impl From<RouterError> for HostError {
    fn from(e: RouterError) -> Self {
        HostError::Router(Box::new(e))
    }
}

/// How thoroughly [`apply`] looks at routers whose dict did not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Unchanged {
    /// Diff them against the kernel and repair any drift (default).
    #[default]
    Verify,
    /// The same (`--full`): every router diffed whatever its dict; an unchanged host stays
    /// a no-op.
    Converge,
    /// Leave them alone (`--changed-only`): for event-driven updates, where a periodic
    /// `Verify` apply catches drift.
    Trust,
}

/// The side-effect implementations for one worker thread.
pub type Sides = (Box<dyn Kernel>, Box<dyn Firewall>);

/// Makes one [`Sides`] per worker thread (the real ones, or fakes sharing one fake world).
pub type Factory<'a> = &'a (dyn Fn() -> Result<Sides, RouterError> + Sync);

/// How [`apply`] runs.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Unchanged routers.
    pub unchanged: Unchanged,
    /// Set by SIGTERM/SIGINT: stop between routers.
    pub stop: Arc<AtomicBool>,
    /// Worker threads.
    pub workers: usize,
    /// Host facts compile takes as inputs.
    pub facts: HostFacts,
    /// Only these routers (`None`: all). The config's other routers are left alone like
    /// [`Unchanged::Trust`] leaves an unchanged one, and are not in the report; a removed
    /// router's namespaces are deleted only if its id is here. Shared `fip-` namespaces are
    /// converged (and deleted when no router needs them) whatever this says. The agent runs
    /// the routers its queue marked dirty this way, with the whole config compiled.
    pub only: Option<BTreeSet<RouterId>>,
    /// Told as routers finish (see [`Progress`]); `None`: nobody is told.
    pub progress: Option<Progress>,
    /// Where the pictures of namespaces found converged are kept for later applies (see
    /// [`Kept`]); `None`: nothing is kept (a one-shot apply).
    pub kept: Option<Arc<Kept>>,
    /// Take the kept pictures instead of reading the namespaces again (the agent's event
    /// applies; never its re-checks and refreshes, which look for drift).
    pub trust_kept: bool,
}

/// A callback told `(routers done, routers in all)` each time a router of an [`apply`]
/// finishes (converged, unchanged, failed, skipped or left alone by [`ApplyOptions::only`]):
/// once per router, with `done` going up by one each call, from one thread at a time. It is
/// for progress displays (`l3agent apply` on a terminal): it should return quickly, since
/// the next router's report waits for it. The shared `fip-` namespaces and the removal of
/// routers no longer configured are not counted.
#[derive(Clone)]
pub struct Progress(Arc<dyn Fn(usize, usize) + Send + Sync>);

impl Progress {
    /// Calls `f(done, total)` as routers finish.
    pub fn new(f: impl Fn(usize, usize) + Send + Sync + 'static) -> Progress {
        Progress(Arc::new(f))
    }

    /// Tells it that `done` of `total` routers are done.
    pub fn call(&self, done: usize, total: usize) {
        (self.0)(done, total)
    }
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress")
    }
}

impl ApplyOptions {
    /// Defaults with the host's facts.
    pub fn new(facts: HostFacts, stop: Arc<AtomicBool>) -> ApplyOptions {
        ApplyOptions {
            unchanged: Unchanged::Verify,
            stop,
            workers: 4,
            facts,
            only: None,
            progress: None,
            kept: None,
            trust_kept: false,
        }
    }
}

/// Observes, diffs and (with `execute`) runs the changes of the namespaces `names`, in order.
/// Returns every change listed, also on failure (with the error).
/// What a router's convergence read besides its changes: its VRRP state (HA routers) and
/// the daemons it runs once converged.
#[derive(Debug, Default)]
struct Readings {
    ha_state: Option<HaState>,
    daemons: Vec<Service>,
}

/// What every unit of one run shares.
struct UnitCx<'a> {
    spec: &'a HostSpec,
    /// Namespaces this run created.
    fresh: &'a BTreeSet<NetnsName>,
    bridge: Option<&'a BridgePorts>,
    execute_it: bool,
    kept: Option<&'a Kept>,
    trust_kept: bool,
}

fn converge_unit(
    sides: &mut Sides,
    cx: &UnitCx<'_>,
    names: &[NetnsName],
    read: &mut Readings,
) -> (Vec<Change>, Option<RouterError>) {
    let (kernel, firewall) = sides;
    let spec = cx.spec;
    let mut all = Vec::new();
    let mut laps = Laps::start();
    for ns in names {
        let ns_spec = spec.namespaces.get(ns);
        let fresh = cx.fresh.contains(ns);
        // Taken out whether trusted or not: put back below only if still true.
        let kept = cx.kept.and_then(|k| k.take(ns));
        let observed = match (kept, ns_spec) {
            (Some(k), Some(s)) if cx.trust_kept && cx.execute_it && !fresh => observe_again(
                kernel.as_mut(),
                firewall.as_mut(),
                ns,
                s,
                k,
                &spec.daemons_dir,
            ),
            _ => observe(
                kernel.as_mut(),
                firewall.as_mut(),
                ns,
                ns_spec,
                fresh,
                cx.bridge,
                &spec.daemons_dir,
            ),
        };
        let observed = match observed {
            Ok(o) => o,
            Err(e) => return (all, Some(e)),
        };
        laps.lap("observe");
        if let Some(ns_spec) = ns_spec {
            read.ha_state = read.ha_state.or(crate::diff::ha_state(ns_spec, &observed));
            read.daemons
                .extend(crate::diff::wanted_daemons(ns_spec, &observed));
        }
        let changes = diff(spec, ns, &observed);
        laps.lap("diff");
        if cx.execute_it {
            if let Err(e) = execute(kernel.as_mut(), firewall.as_mut(), spec, &changes) {
                all.extend(changes);
                return (all, Some(e));
            }
        }
        laps.lap("execute");
        if let (Some(k), Some(s), true) = (cx.kept, ns_spec, cx.execute_it) {
            if keepable(&observed, s, &changes) {
                k.keep(ns.clone(), observed);
            }
        }
        all.extend(changes);
    }
    debug!(%laps, "unit steps");
    (all, None)
}

fn result(id: String, changes: Vec<Change>, error: Option<RouterError>) -> RouterResult {
    let status = match (&error, changes.is_empty()) {
        (Some(_), _) => RouterStatus::Failed,
        (None, true) => RouterStatus::Unchanged,
        (None, false) => RouterStatus::Converged,
    };
    RouterResult {
        id,
        status,
        changes,
        error: error.map(|e| e.to_string()),
        ha_state: None,
        daemons: Vec::new(),
    }
}

/// The namespaces of the spec grouped into units: shared `fip-` ones first (each alone), then
/// each router's own.
struct Units {
    fip: Vec<NetnsName>,
    routers: BTreeMap<RouterId, Vec<NetnsName>>,
}

fn units(spec: &HostSpec) -> Units {
    let mut u = Units {
        fip: Vec::new(),
        routers: BTreeMap::new(),
    };
    for (name, ns) in &spec.namespaces {
        match ns.kind {
            NsKind::Fip => u.fip.push(name.clone()),
            NsKind::Router | NsKind::Snat => {
                for o in &ns.owners {
                    u.routers.entry(o.clone()).or_default().push(name.clone());
                }
            }
        }
    }
    // qrouter- before snat- within a router.
    for list in u.routers.values_mut() {
        list.sort_by_key(|n| !n.as_str().starts_with("qrouter-"));
    }
    u
}

/// Who a namespace l3agent made belongs to, for reports (`fip-` ones stand for themselves).
fn owner_of(ns: &NetnsName) -> String {
    match names::parse_ns(ns.as_str()) {
        Some((NsKind::Router | NsKind::Snat, id)) => id,
        _ => ns.to_string(),
    }
}

/// Whether a namespace may be deleted by l3agent: it is l3agent's by exact rule. Records are
/// validated when read; this is checked again right before every deletion.
fn ours(ns: &NetnsName) -> bool {
    names::parse_ns(ns.as_str()).is_some()
}

/// The records; when they had to be rebuilt, their candidate namespaces narrowed to those
/// that exist (asked of the kernel `make` gives).
fn load_records(state: &State, make: Factory<'_>) -> Result<Records, HostError> {
    let mut r = state.records()?;
    if r.rebuilt && !r.namespaces.is_empty() {
        let (mut kernel, _) = make()?;
        r.namespaces.retain(|n| kernel.namespace_exists(n));
        info!(
            namespaces = r.namespaces.len(),
            "records rebuilt from the applied records and the kernel"
        );
    }
    Ok(r)
}

/// Removes what a crash can leave at a namespace's name that is not a namespace (a plain file
/// in `/run/netns`, between its creation and the mount or between the unmount and its
/// removal); best effort, nothing if there is nothing.
fn remove_leftover(kernel: &mut dyn Kernel, ns: &NetnsName) {
    match kernel.delete_namespace(ns) {
        Ok(true) => info!(%ns, "removed a leftover that was not a namespace"),
        Ok(false) => {}
        Err(e) => warn!(%ns, error = %e, "could not remove a leftover that is not a namespace"),
    }
}

/// The routers a run leaves alone: those outside `only` (an agent's batch), and those trusted
/// unchanged (`--changed-only`).
struct Skip<'a> {
    only: Option<&'a BTreeSet<RouterId>>,
    trusted: BTreeSet<RouterId>,
}

impl Skip<'_> {
    fn none() -> Skip<'static> {
        Skip {
            only: None,
            trusted: BTreeSet::new(),
        }
    }

    fn contains(&self, id: &RouterId) -> bool {
        self.only.is_some_and(|o| !o.contains(id)) || self.trusted.contains(id)
    }
}

/// Runs the pipeline over the whole host. `execute_it == false` is a plan.
fn run(
    spec: &HostSpec,
    recorded: &BTreeSet<NetnsName>,
    make: Factory<'_>,
    opts: &ApplyOptions,
    skip: &Skip<'_>,
    execute_it: bool,
) -> Result<HostReport, HostError> {
    let stop = &opts.stop;
    let mut laps = Laps::start();
    let mut sides = make()?;
    laps.lap("sides");
    // The integration bridge's ports, read once for every router of this run.
    let bridge = match &spec.ovs {
        Some(ovs) => Some(read_bridge(sides.0.as_mut(), ovs)?),
        None => None,
    };
    laps.lap("bridge");
    let bridge = bridge.as_ref();
    let mut report = HostReport::default();
    let mut pre: BTreeMap<String, Vec<Change>> = BTreeMap::new();
    let mut fresh = BTreeSet::new();
    // 1. Namespaces (in a plan, each unit lists its own creation).
    if execute_it {
        for ns in spec.namespaces.keys() {
            if sides.0.namespace_exists(ns) {
                continue;
            }
            let owner = owner_of(ns);
            if spec.namespaces[ns].owners.iter().all(|o| skip.contains(o))
                && spec.namespaces[ns].kind != NsKind::Fip
            {
                continue;
            }
            match sides.0.create_namespace(ns) {
                Ok(_) => {
                    fresh.insert(ns.clone());
                    pre.entry(owner)
                        .or_default()
                        .push(Change::CreateNamespace { ns: ns.clone() });
                }
                Err(source) => report.routers.push(result(
                    owner,
                    vec![Change::CreateNamespace { ns: ns.clone() }],
                    Some(RouterError::Plumbing {
                        router: ns.to_string(),
                        source,
                    }),
                )),
            }
        }
    }
    laps.lap("namespaces");
    let cx = UnitCx {
        spec,
        fresh: &fresh,
        bridge,
        execute_it,
        kept: opts.kept.as_deref(),
        trust_kept: opts.trust_kept,
    };
    let units = units(spec);
    // 2. Shared fip- namespaces.
    for ns in &units.fip {
        let (changes, error) = converge_unit(
            &mut sides,
            &cx,
            std::slice::from_ref(ns),
            &mut Readings::default(),
        );
        let mut all = pre.remove(ns.as_str()).unwrap_or_default();
        all.extend(changes);
        report.routers.push(result(ns.to_string(), all, error));
    }
    // 3. Routers, on worker threads.
    let queue: Mutex<Vec<(&RouterId, &Vec<NetnsName>)>> =
        Mutex::new(units.routers.iter().rev().collect());
    let results: Mutex<Vec<RouterResult>> = Mutex::new(Vec::new());
    let undo: Mutex<Vec<NetnsName>> = Mutex::new(Vec::new());
    let pre = Mutex::new(pre);
    let workers = opts.workers.clamp(1, 16).min(units.routers.len().max(1));
    let setup_error: Mutex<Option<RouterError>> = Mutex::new(None);
    // Routers finished so far; the progress callback is called under this lock, so that its
    // counts arrive in order.
    let total = units.routers.len();
    let finished: Mutex<usize> = Mutex::new(0);
    let tell = || {
        if let Some(p) = &opts.progress {
            let mut n = finished.lock().expect("lock");
            *n += 1;
            p.call(*n, total);
        }
    };
    // The routers' work, on `sides` of its own: one router (an agent's event) runs on this
    // thread with the run's sides, more on worker threads each with sides of their own.
    let work = |sides: &mut Sides| loop {
        let next = queue.lock().expect("lock").pop();
        let Some((id, names)) = next else { break };
        let mut changes = pre
            .lock()
            .expect("lock")
            .remove(id.as_str())
            .unwrap_or_default();
        if stop.load(Ordering::SeqCst) || skip.contains(id) {
            let status = if skip.contains(id) {
                RouterStatus::Unchanged
            } else {
                RouterStatus::Skipped
            };
            results.lock().expect("lock").push(RouterResult {
                id: id.to_string(),
                status,
                changes,
                error: None,
                ha_state: None,
                daemons: Vec::new(),
            });
            tell();
            continue;
        }
        let mut read = Readings::default();
        let (more, error) = converge_unit(sides, &cx, names, &mut read);
        changes.extend(more);
        if error.is_some() && execute_it {
            undo.lock()
                .expect("lock")
                .extend(names.iter().filter(|n| fresh.contains(*n)).cloned());
        }
        results.lock().expect("lock").push(RouterResult {
            ha_state: read.ha_state,
            daemons: read.daemons,
            ..result(id.to_string(), changes, error)
        });
        tell();
    };
    if workers == 1 {
        work(&mut sides);
    } else {
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| match make() {
                    Ok(mut own) => work(&mut own),
                    Err(e) => *setup_error.lock().expect("lock") = Some(e),
                });
            }
        });
    }
    laps.lap("routers");
    if let Some(e) = setup_error.into_inner().expect("lock") {
        return Err(e.into());
    }
    report.routers.extend(results.into_inner().expect("lock"));
    // A router that failed in namespaces this run created has them removed again (with the
    // OVS ports it may have plugged for them).
    for ns in undo.into_inner().expect("lock") {
        let plugged: Vec<IfName> = spec
            .namespaces
            .get(&ns)
            .into_iter()
            .flat_map(|s| &s.devices)
            .filter(|(_, d)| matches!(d.kind, DeviceKind::OvsPort { .. }))
            .map(|(n, _)| n.clone())
            .collect();
        let ovs = spec.ovs.as_ref().map(|o| (o, None));
        let changes = removal(sides.0.as_mut(), ovs, &ns, &plugged, &spec.daemons_dir);
        if let Err(e) = execute(sides.0.as_mut(), sides.1.as_mut(), spec, &changes) {
            warn!(%ns, error = %e, "could not remove the namespace of a failed router");
        }
        sides.1.forget(&ns);
    }
    // 4. Namespaces l3agent made that are no longer wanted (fip- ones only once no router
    //    needs them: a fip- namespace whose convergence failed is kept).
    if !stop.load(Ordering::SeqCst) {
        let mut removed: BTreeMap<String, Vec<Change>> = BTreeMap::new();
        let mut errors: BTreeMap<String, RouterError> = BTreeMap::new();
        // With `only`, the namespaces of those routers (and the shared fip- ones) alone: at
        // 1,000 routers the others are thousands of names to look at for nothing.
        let only_ns: Option<BTreeSet<NetnsName>> = opts.only.as_ref().map(|only| {
            only.iter()
                .flat_map(|id| [names::router_ns(id), names::snat_ns(id)])
                .collect()
        });
        let looked_at = |n: &NetnsName| {
            only_ns
                .as_ref()
                .is_none_or(|o| o.contains(n) || n.as_str().starts_with("fip-"))
        };
        for ns in recorded
            .iter()
            .filter(|n| looked_at(n) && !spec.namespaces.contains_key(*n) && ours(n))
        {
            // Not wanted: its picture goes (a namespace made again later is read anew).
            if let Some(k) = &opts.kept {
                k.take(ns);
            }
            let owner = owner_of(ns);
            // A router that could not be compiled keeps what it has.
            if spec.failed.keys().any(|id| id.as_str() == owner) {
                continue;
            }
            // With `only`, another router's leftovers wait for their own turn.
            if let (Some(only), Some((NsKind::Router | NsKind::Snat, _))) =
                (&opts.only, names::parse_ns(ns.as_str()))
            {
                if !only.iter().any(|id| id.as_str() == owner) {
                    continue;
                }
            }
            if !sides.0.namespace_exists(ns) {
                let stops = daemon_stops(sides.0.as_mut(), &spec.daemons_dir, ns);
                if execute_it {
                    remove_leftover(sides.0.as_mut(), ns);
                    if let Err(e) = execute(sides.0.as_mut(), sides.1.as_mut(), spec, &stops) {
                        errors.insert(owner.clone(), e);
                    }
                }
                removed.entry(owner).or_default().extend(stops);
                continue;
            }
            let ovs = spec.ovs.as_ref().map(|o| (o, bridge));
            let changes = removal(sides.0.as_mut(), ovs, ns, &[], &spec.daemons_dir);
            if execute_it {
                if let Err(e) = execute(sides.0.as_mut(), sides.1.as_mut(), spec, &changes) {
                    errors.insert(owner.clone(), e);
                }
            }
            removed.entry(owner).or_default().extend(changes);
        }
        // Daemons of routers neither wanted nor recorded (never with `only`: another
        // router's are not this run's business).
        if opts.only.is_none() {
            let wanted = |id: &RouterId| {
                spec.namespaces.contains_key(&names::router_ns(id))
                    || recorded.contains(&names::router_ns(id))
                    || spec.failed.contains_key(id)
                    || skip.contains(id)
            };
            for (owner, stops) in stray_daemons(sides.0.as_mut(), &spec.daemons_dir, wanted) {
                if execute_it {
                    if let Err(e) = execute(sides.0.as_mut(), sides.1.as_mut(), spec, &stops) {
                        errors.insert(owner.clone(), e);
                    }
                }
                removed.entry(owner).or_default().extend(stops);
            }
        }
        for (owner, changes) in removed {
            let error = errors.remove(&owner);
            let status = if error.is_some() {
                RouterStatus::Failed
            } else {
                RouterStatus::Removed
            };
            report.routers.push(RouterResult {
                id: owner,
                status,
                changes,
                error: error.map(|e| e.to_string()),
                ha_state: None,
                daemons: Vec::new(),
            });
        }
    }
    laps.lap("removals");
    if execute_it {
        sides.0.settle(std::time::Duration::from_secs(10));
    }
    laps.lap("settle");
    debug!(%laps, "run steps");
    report.interrupted = stop.load(Ordering::SeqCst);
    report.routers.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(report)
}

/// Reads the integration bridge's ports (once per run). Unreachable, or no such bridge: the
/// host does not fit the config (nothing has been changed yet).
fn read_bridge(kernel: &mut dyn Kernel, ovs: &IntegrationBridge) -> Result<BridgePorts, HostError> {
    kernel
        .ovs_ports(&ovs.db, &ovs.bridge)
        .map(BridgePorts::new)
        .map_err(|e| HostError::Host(vec![ovs_problem(ovs, &e)]))
}

/// An OVSDB error as a problem of the config's field: `agent.integration_bridge` for a
/// missing bridge, `agent.ovsdb` (the message names the socket) for everything else.
fn ovs_problem(ovs: &IntegrationBridge, e: &OvsdbError) -> String {
    match e {
        OvsdbError::NoBridge { .. } => format!(
            "agent.integration_bridge: bridge {} does not exist in the OVSDB at {}",
            ovs.bridge,
            ovs.db.display()
        ),
        other => format!("agent.ovsdb: {other}"),
    }
}

/// The changes that remove namespace `ns`: with `openvswitch`, first the OVS ports of its
/// devices, in one transaction (their devices go with them; were the namespace deleted first,
/// its devices would die with it and nothing would name their ports any more), then the
/// namespace. The ports are its OVS devices that are on the bridge (`bridge` read this run;
/// `None`: all of its OVS devices, unplugging one that is not there being a no-op) and `also`.
fn removal(
    kernel: &mut dyn Kernel,
    ovs: Option<(&IntegrationBridge, Option<&BridgePorts>)>,
    ns: &NetnsName,
    also: &[IfName],
    daemons_dir: &Path,
) -> Vec<Change> {
    let mut out = daemon_stops(kernel, daemons_dir, ns);
    if let Some((ovs, bridge)) = ovs {
        let mut ports: BTreeSet<IfName> = also.iter().cloned().collect();
        if kernel.namespace_exists(ns) {
            if let Ok(links) = kernel.netlink(Some(ns)).and_then(|n| n.links()) {
                for l in links {
                    let on_bridge = bridge.is_none_or(|b| b.ports.contains_key(&l.name));
                    if names::owned_device(&l.name)
                        && crate::observe::ovs_device_kind(l.kind.as_deref())
                        && on_bridge
                    {
                        if let Ok(n) = IfName::new("device", &l.name) {
                            ports.insert(n);
                        }
                    }
                }
            }
        }
        out.extend(ports.into_iter().map(|port| Change::UnplugOvsPort {
            bridge: ovs.bridge.clone(),
            port,
        }));
    }
    out.push(Change::DeleteNamespace { ns: ns.clone() });
    out
}

/// The daemons of the router whose own namespace `ns` is (`qrouter-`), stopped: before the
/// namespace goes (radvd still sends its last advertisement), and even when the namespace is
/// already gone (a daemon keeps a deleted namespace alive).
fn daemon_stops(kernel: &mut dyn Kernel, dir: &Path, ns: &NetnsName) -> Vec<Change> {
    let Some((NsKind::Router, id)) = names::parse_ns(ns.as_str()) else {
        return Vec::new();
    };
    let Ok(router) = RouterId::new("id", &id) else {
        return Vec::new();
    };
    match kernel.daemons(dir, &router, ns) {
        Ok(found) => found
            .into_keys()
            .map(|service| Change::StopDaemon {
                ns: ns.clone(),
                router: router.clone(),
                service,
            })
            .collect(),
        Err(e) => {
            warn!(%router, error = %e, "could not read the router's daemons");
            Vec::new()
        }
    }
}

/// Daemons in the supervisor's directory of routers that have no namespace wanted or
/// recorded (their router was removed while its records were lost, or l3agent crashed
/// between starting one and recording its namespace): stopped, with their files.
fn stray_daemons(
    kernel: &mut dyn Kernel,
    dir: &Path,
    keep: impl Fn(&RouterId) -> bool,
) -> BTreeMap<String, Vec<Change>> {
    let mut out: BTreeMap<String, Vec<Change>> = BTreeMap::new();
    let keys = match kernel.daemon_keys(dir) {
        Ok(k) => k,
        Err(e) => {
            warn!(error = %e, "could not list the daemons' directory");
            return out;
        }
    };
    for key in keys.into_iter().filter(|k| !keep(&k.router)) {
        out.entry(key.router.to_string())
            .or_default()
            .push(Change::StopDaemon {
                ns: names::router_ns(&key.router),
                router: key.router.clone(),
                service: key.service,
            });
    }
    out
}

/// The routers compile could not build, as failed results.
fn not_compiled(spec: &HostSpec) -> impl Iterator<Item = RouterResult> + '_ {
    spec.failed.iter().map(|(id, why)| RouterResult {
        id: id.to_string(),
        status: RouterStatus::Failed,
        changes: Vec::new(),
        error: Some(why.clone()),
        ha_state: None,
        daemons: Vec::new(),
    })
}

/// Compiles `cfg` with allocations from the state directory; `persist` saves new ones. The
/// allocations (and the needs returned, which garbage collection keeps) are always those of
/// the whole config; with `only`, only those routers are compiled.
fn compile_host(
    state: &State,
    cfg: &HostConfig,
    facts: &HostFacts,
    persist: bool,
    only: Option<&BTreeSet<RouterId>>,
    hints: &compile::HintSource<'_>,
) -> Result<(HostSpec, compile::Needs), HostError> {
    let mut laps = Laps::start();
    let needs = compile::needs(cfg);
    laps.lap("needs");
    let alloc = records::allocate(state, &needs, persist)?;
    laps.lap("allocate");
    let spec = match only {
        None => compile::compile_hinted(cfg, &alloc, facts, hints),
        Some(only) => {
            let narrowed = HostConfig {
                agent: cfg.agent.clone(),
                routers: cfg
                    .routers
                    .iter()
                    .filter(|r| only.contains(&r.id))
                    .cloned()
                    .collect(),
                doc: ConfigDoc {
                    agent: cfg.doc.agent.clone(),
                    routers: Vec::new(),
                },
            };
            compile::compile_hinted(&narrowed, &alloc, facts, hints)
        }
    };
    laps.lap("compile");
    debug!(%laps, "compile steps");
    Ok((spec, needs))
}

/// The routers an apply with `only` may compile alone: none when a namespace is shared
/// between routers (a DVR host's `fip-` namespaces hold every distributed router's floating
/// IPs of their network, and an apply removes the `fip-` namespaces its spec lacks), so the
/// whole host is compiled there; on a host of legacy and HA routers, each router's
/// namespaces are its own and compiling one router is enough to converge it.
fn narrowable<'a>(
    cfg: &HostConfig,
    records: &Records,
    only: Option<&'a BTreeSet<RouterId>>,
) -> Option<&'a BTreeSet<RouterId>> {
    let shared = cfg.routers.iter().any(|r| r.distributed)
        || records.namespaces.iter().any(|n| {
            n.as_str().starts_with("fip-")
                && matches!(names::parse_ns(n.as_str()), Some((NsKind::Fip, _)))
        });
    only.filter(|_| !shared)
}

/// What `cfg` takes for granted about the host, checked before the first change (of the
/// kernel and of the state directory): namespaces created now outlive this process, and every
/// bridge a router port plugs into exists and is a bridge (plugging into anything else would
/// fail half-way, after the router's old port was gone); with `openvswitch`, the OVSDB
/// answers and holds the integration bridge.
///
/// With `only` (an apply of some routers) on a host without distributed routers, only the
/// bridges of those routers are checked: the others are not touched (a DVR host's shared
/// `fip-` namespaces are converged whatever `only` says, so there every bridge is checked).
pub fn preflight(
    cfg: &HostConfig,
    only: Option<&BTreeSet<RouterId>>,
    make: Factory<'_>,
) -> Result<(), HostError> {
    let only = only.filter(|_| !cfg.routers.iter().any(|r| r.distributed));
    let (mut kernel, _) = make()?;
    let mut problems = Vec::new();
    if let Err(why) = kernel.namespaces_outlive_us() {
        problems.push(why);
    }
    // `openvswitch`: every port goes on the integration bridge, which must be in the OVSDB
    // (and the OVSDB reachable).
    if let Some(ovs) = &cfg.agent.ovs {
        match kernel.ovs_bridge_exists(&ovs.db, &ovs.bridge) {
            Ok(true) => {}
            Ok(false) => problems.push(ovs_problem(
                ovs,
                &OvsdbError::NoBridge {
                    bridge: ovs.bridge.to_string(),
                },
            )),
            Err(e) => problems.push(ovs_problem(ovs, &e)),
        }
    }
    let used: BTreeSet<(&l3agent_types::NetworkId, &l3agent_types::IfName)> = cfg
        .routers
        .iter()
        .filter(|r| only.is_none_or(|o| o.contains(&r.id)))
        .flat_map(|r| {
            r.interfaces
                .iter()
                .chain(&r.snat_interfaces)
                .chain(&r.fip_agent_interfaces)
                .chain(r.gw_port.as_ref())
        })
        .filter(|p| p.driver == InterfaceDriver::Linuxbridge)
        .map(|p| (&p.network_id, &p.bridge))
        .collect();
    let host = kernel
        .netlink(None)
        .map_err(|e| HostError::Host(vec![format!("the host namespace: {e}")]))?;
    let mut seen = BTreeSet::new();
    for (net, bridge) in used {
        if !seen.insert(bridge) {
            continue;
        }
        match host.link(bridge) {
            Ok(Some(l)) if l.kind.as_deref() == Some("bridge") => {}
            Ok(Some(l)) => problems.push(format!(
                "agent.bridges.{net}: {bridge} is a {} device, not a bridge",
                l.kind.as_deref().unwrap_or("plain")
            )),
            Ok(None) => problems.push(format!(
                "agent.bridges.{net}: bridge {bridge} does not exist on this host"
            )),
            Err(e) => problems.push(format!("agent.bridges.{net}: looking up {bridge}: {e}")),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(HostError::Host(problems))
    }
}

/// Converges the host to `cfg`.
pub fn apply(
    cfg: &HostConfig,
    opts: &ApplyOptions,
    make: Factory<'_>,
) -> Result<HostReport, HostError> {
    let mut laps = Laps::start();
    preflight(cfg, opts.only.as_ref(), make)?;
    laps.lap("preflight");
    let state = State::open(&cfg.agent.state_path, &opts.stop)?;
    let mut records = load_records(&state, make)?;
    laps.lap("records");
    let narrow = narrowable(cfg, &records, opts.only.as_ref());
    // The rules each namespace's iptables manager last resolved: an agent's managers live
    // from apply to apply, and a router's rules are mostly the ones it had.
    let firewall = make()?.1;
    let hints = |ns: &NetnsName| firewall.hints(ns);
    let (spec, needs) = compile_host(&state, cfg, &opts.facts, true, narrow, &hints)?;
    drop(firewall);
    laps.lap("compile");
    // Routers outside `only`: skipped like trusted ones, and left out of the report.
    let only = opts.only.as_ref();
    let trusted: BTreeSet<RouterId> = match opts.unchanged {
        Unchanged::Trust => cfg
            .routers
            .iter()
            .filter(|r| only.is_none_or(|o| o.contains(&r.id)))
            .filter(|r| records.routers.get(r.id.as_str()) == Some(&records::fingerprint(r)))
            .map(|r| r.id.clone())
            .collect(),
        _ => BTreeSet::new(),
    };
    let skip = Skip { only, trusted };
    // Record first, change after, so that a crash (SIGKILL) at any point leaves records the
    // next apply can trust:
    // - the namespaces about to be created: a crash leaves a known namespace, never a leak;
    // - a router whose dict changed loses its fingerprint ("" = not applied): a change cut
    //   short is never taken for its old, converged state (`--changed-only` would trust it).
    let wanted: BTreeSet<NetnsName> = spec.namespaces.keys().cloned().collect();
    //   With no namespace to add, only the voided fingerprints are written (a small record
    //   of their own), not every router's.
    let new_namespaces = !wanted.is_subset(&records.namespaces);
    records.namespaces.extend(wanted.iter().cloned());
    let mut voided = Vec::new();
    for r in cfg.routers.iter().filter(|r| !skip.contains(&r.id)) {
        if let Some(fp) = records.routers.get_mut(r.id.as_str()) {
            if !fp.is_empty() && *fp != records::fingerprint(r) {
                fp.clear();
                voided.push(r.id.as_str());
            }
        }
    }
    if new_namespaces {
        state.save_records(records.clone())?;
    } else if !voided.is_empty() {
        state.void_fingerprints(&voided)?;
    }
    laps.lap("record");
    let mut report = run(&spec, &records.namespaces, make, opts, &skip, true)?;
    laps.lap("run");
    report.routers.extend(not_compiled(&spec));
    let configured: BTreeSet<&str> = cfg.routers.iter().map(|r| r.id.as_str()).collect();
    report.routers.retain(|r| {
        only.is_none_or(|o| o.iter().any(|id| id.as_str() == r.id))
            || !configured.contains(r.id.as_str())
    });
    // Records: what exists now, and per router what was last applied successfully.
    let failed: BTreeSet<&str> = report
        .routers
        .iter()
        .filter(|r| r.status == RouterStatus::Failed)
        .map(|r| r.id.as_str())
        .collect();
    let removed: BTreeSet<&str> = report
        .routers
        .iter()
        .filter(|r| r.status == RouterStatus::Removed)
        .map(|r| r.id.as_str())
        .collect();
    if !removed.is_empty() {
        records
            .namespaces
            .retain(|n| wanted.contains(n) || !removed.contains(owner_of(n).as_str()));
    }
    let processed: BTreeSet<&str> = report
        .routers
        .iter()
        .filter(|x| matches!(x.status, RouterStatus::Converged | RouterStatus::Unchanged))
        .map(|x| x.id.as_str())
        .collect();
    for r in &cfg.routers {
        let id = r.id.as_str();
        let processed = processed.contains(id);
        if failed.contains(id) {
            records.routers.insert(id.to_owned(), String::new());
        } else if processed {
            records
                .routers
                .insert(id.to_owned(), records::fingerprint(r));
        }
    }
    records
        .routers
        .retain(|id, _| configured.contains(id.as_str()) && !removed.contains(id.as_str()));
    state.save_records(records)?;
    laps.lap("records_saved");
    state.save_applied(cfg, &opts.facts, opts.only.as_ref())?;
    laps.lap("applied_saved");
    if !report.interrupted {
        records::collect_garbage(&state, &needs)?;
    }
    laps.lap("gc");
    info!(
        routers = report.routers.len(),
        failed = report.failed(),
        "apply finished"
    );
    debug!(%laps, "apply steps");
    Ok(report)
}

/// Exactly the changes [`apply`] would make now, router by router; touches nothing (new
/// allocations are computed in memory and not saved).
pub fn plan(
    cfg: &HostConfig,
    facts: &HostFacts,
    make: Factory<'_>,
) -> Result<HostReport, HostError> {
    preflight(cfg, None, make)?;
    let state = State::inspect(&cfg.agent.state_path)?;
    let records = load_records(&state, make)?;
    let (spec, _) = compile_host(&state, cfg, facts, false, None, &|_| None)?;
    let opts = ApplyOptions::new(facts.clone(), Arc::new(AtomicBool::new(false)));
    let mut report = run(
        &spec,
        &records.namespaces,
        make,
        &opts,
        &Skip::none(),
        false,
    )?;
    report.routers.extend(not_compiled(&spec));
    Ok(report)
}

/// Health of a router in `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// The kernel holds exactly what was last applied.
    Ok,
    /// Something differs (see the drift list); `apply` repairs it.
    Drift,
    /// Its namespace is gone.
    Missing,
    /// Its last apply failed.
    Failed,
}

/// One router (or `fip-` namespace) in `status`.
#[derive(Debug, Clone, Serialize)]
pub struct RouterHealth {
    /// Router id or `fip-` namespace.
    pub id: String,
    /// Health.
    pub health: Health,
    /// What differs from the last applied state (the changes `apply` would make to repair it).
    pub drift: Vec<Change>,
}

/// The routers of the last apply and how the kernel compares: the diff of the last applied
/// spec against the kernel. A missing state directory is an empty status.
pub fn status(state_path: &Path, make: Factory<'_>) -> Result<Vec<RouterHealth>, HostError> {
    let state = State::inspect(state_path)?;
    let Some((cfg, facts)) = state.last_applied()? else {
        return Ok(Vec::new());
    };
    let records = load_records(&state, make)?;
    let (spec, _) = compile_host(&state, &cfg, &facts, false, None, &|_| None)?;
    let opts = ApplyOptions::new(facts, Arc::new(AtomicBool::new(false)));
    let report = run(&spec, &BTreeSet::new(), make, &opts, &Skip::none(), false)?;
    let mut out = Vec::new();
    for r in report.routers {
        let drift: Vec<Change> = r
            .changes
            .into_iter()
            .filter(|c| !c.is_side_effect())
            .collect();
        let last_failed = records.routers.get(&r.id).is_some_and(String::is_empty);
        let missing = drift
            .iter()
            .any(|c| matches!(c, Change::CreateNamespace { .. }));
        let health = if r.status == RouterStatus::Failed || last_failed {
            Health::Failed
        } else if missing {
            Health::Missing
        } else if drift.is_empty() {
            Health::Ok
        } else {
            Health::Drift
        };
        out.push(RouterHealth {
            id: r.id,
            health,
            drift,
        });
    }
    Ok(out)
}

/// Removes every namespace l3agent recorded (`cfg == None`: everything, and the state
/// directory's records too) or those of `cfg`'s routers, by exact name. Deleting a namespace
/// removes its devices and their veth peers in one step.
pub fn destroy(
    state_path: &Path,
    cfg: Option<&HostConfig>,
    stop: &Arc<AtomicBool>,
    make: Factory<'_>,
) -> Result<HostReport, HostError> {
    let state = State::open(state_path, stop)?;
    let mut records = load_records(&state, make)?;
    let mut targets: BTreeSet<NetnsName> = match cfg {
        None => records.namespaces.clone(),
        Some(c) => c
            .routers
            .iter()
            .flat_map(|r| [names::router_ns(&r.id), names::snat_ns(&r.id)])
            .collect(),
    };
    let mut sides = make()?;
    // The shared fip- namespaces go with the last router.
    let routers_left = records.namespaces.iter().any(|n| {
        !targets.contains(n) && matches!(names::parse_ns(n.as_str()), Some((NsKind::Router, _)))
    });
    if !routers_left {
        targets.extend(records.namespaces.iter().cloned());
    }
    targets.retain(ours);
    let mut by_owner: BTreeMap<String, (Vec<Change>, Vec<String>)> = BTreeMap::new();
    // With `openvswitch` (of the config given, else of the last apply), the ports of the
    // namespaces' devices are unplugged first. The bridge's ports cannot be read: every OVS
    // device's port is unplugged, which fails the same way, and the namespace is kept.
    let ovs = match cfg {
        Some(c) => c.agent.ovs.clone(),
        None => state
            .last_applied()
            .ok()
            .flatten()
            .and_then(|(c, _)| c.agent.ovs),
    };
    let bridge = ovs
        .as_ref()
        .and_then(|o| read_bridge(sides.0.as_mut(), o).ok());
    let empty = HostSpec {
        ovs: ovs.clone(),
        daemons_dir: crate::compile::daemons_dir(state_path),
        ..HostSpec::default()
    };
    // Every daemon in the directory goes with `destroy` of everything; with a config, those
    // of its routers (whether or not their namespaces were recorded).
    let strays = stray_daemons(sides.0.as_mut(), &empty.daemons_dir, |id| {
        cfg.is_some_and(|c| !c.routers.iter().any(|r| &r.id == id))
    });
    for (owner, stops) in strays {
        let entry = by_owner.entry(owner).or_default();
        match execute(sides.0.as_mut(), sides.1.as_mut(), &empty, &stops) {
            Ok(_) => entry.0.extend(stops),
            Err(e) => entry.1.push(e.to_string()),
        }
    }
    for ns in &targets {
        let entry = by_owner.entry(owner_of(ns)).or_default();
        if !sides.0.namespace_exists(ns) {
            remove_leftover(sides.0.as_mut(), ns);
            records.namespaces.remove(ns);
            continue;
        }
        let changes = removal(
            sides.0.as_mut(),
            ovs.as_ref().map(|o| (o, bridge.as_ref())),
            ns,
            &[],
            &empty.daemons_dir,
        );
        match execute(sides.0.as_mut(), sides.1.as_mut(), &empty, &changes) {
            Ok(_) => {
                records.namespaces.remove(ns);
                entry.0.extend(changes);
            }
            Err(e) => entry.1.push(e.to_string()),
        }
    }
    sides.0.settle(std::time::Duration::from_secs(10));
    let mut report = HostReport::default();
    for (id, (changes, errors)) in by_owner {
        records.routers.remove(&id);
        report.routers.push(RouterResult {
            id,
            status: if errors.is_empty() {
                RouterStatus::Removed
            } else {
                RouterStatus::Failed
            },
            changes,
            error: (!errors.is_empty()).then(|| errors.join("; ")),
            ha_state: None,
            daemons: Vec::new(),
        });
    }
    match cfg {
        None if !report.failed() => state.clear()?,
        _ => {
            state.save_records(records)?;
            if let Some(c) = cfg {
                state.forget_applied(c)?;
            }
        }
    }
    Ok(report)
}

/// The real side effects, one set per worker: netlink sockets per namespace, long-lived
/// iptables managers with `backend` (for this apply), announcements through `announcer`.
pub fn real_sides(
    backend: l3agent_iptables_exec::Backend,
    announcer: &l3agent_rtnl::announce::Announcer,
) -> impl Fn() -> Result<Sides, RouterError> + Sync + '_ {
    move || {
        let opened = crate::kernel::Opened::new();
        let sides = real_sides_with(&crate::kernel::Managers::new(backend), &opened, announcer)();
        sides
    }
}

/// The real side effects with the iptables managers of `managers` and what is open in each
/// namespace from `opened`, both kept by the caller across applies (the agent): what they
/// know of each namespace outlives this apply.
pub fn real_sides_with<'a>(
    managers: &'a crate::kernel::Managers,
    opened: &'a crate::kernel::Opened,
    announcer: &'a l3agent_rtnl::announce::Announcer,
) -> impl Fn() -> Result<Sides, RouterError> + Sync + 'a {
    move || {
        let kernel = crate::kernel::RealKernel::keeping(announcer.clone(), opened.clone())
            .map_err(|source| RouterError::Plumbing {
                router: "host".into(),
                source,
            })?;
        Ok((
            Box::new(kernel) as Box<dyn Kernel>,
            Box::new(managers.clone()) as Box<dyn Firewall>,
        ))
    }
}
