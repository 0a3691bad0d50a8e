//! The agent itself (`l3agent agent --config FILE`): the file front end, the work queue and
//! one worker running the router reconciler, wired to the metrics, the HTTP and control
//! sockets and sd_notify.
//!
//! ```text
//!  FileWatcher / SIGHUP ──► main loop: reload + validate; diff fingerprints by router id
//!  resync timer ─────────►             │ mark_dirty(Router(id)) / mark_dirty(Full)
//!                                      ▼
//!                         WorkQueue<Key> (coalescing, backoff with jitter per router)
//!                                      │ the worker drains it in batches
//!                                      ▼
//!        host::apply(config, only = the batch) ──► kernel; done(key, result) per router
//! ```
//!
//! - **Start-up**: the config given was loaded and validated by the caller (invalid: the
//!   agent does not start). The first batch is a full `Verify` apply ([`Key::Full`]): it
//!   adopts what is there, changes only what differs and removes this host's routers that
//!   are no longer configured. `/readyz` and `READY=1` follow it.
//! - **Reload** (the file changed, or SIGHUP): an invalid file is logged with its problems
//!   and counted; the config in force stays (a broken file never empties a host). A valid
//!   one replaces it, and the routers whose dict fingerprint changed, that were added or
//!   removed are marked dirty; a changed `agent` section marks everything.
//! - **Batches**: the worker takes every ready key and runs one apply with
//!   [`ApplyOptions::only`] set to them (a batch with [`Key::Full`] diffs every router).
//!   Each router's result goes back to the queue: a failed router backs off with jitter,
//!   and never holds back the others (they are in the same apply, or in the next batch).
//! - **Drift**: every `resync_interval` a full `Verify` apply runs; the changes it makes to
//!   routers no event asked for are drift, logged and counted per kind
//!   (`l3agent_drift_repairs_total`).
//! - **HA routers**: the routers whose last apply read an HA state are watched by
//!   [`HaWatch`] (address events of their namespace: keepalived's VRRP transitions). An
//!   event is a front-end event for its router (its time is recorded at once, so a batch
//!   that takes the router meanwhile does not count what it changes as drift), acted on
//!   after [`DaemonOptions::ha_settle`]: the events of a burst make one reconcile. Each
//!   router's last read state is in the control socket's `status`, the `l3agent_ha_*`
//!   metrics and [`RouterOutcome::ha_state`].
//! - **Traffic counters** ([`SidesFactory::traffic`]): read from the kernel when `/metrics`
//!   is scraped and the last reading is older than [`DaemonOptions::traffic_max_age`], for
//!   the routers of the config in force (see [`crate::traffic`]); never between scrapes.
//! - **Stop** (SIGTERM/SIGINT, the `term` flag): no new work is taken, the apply in
//!   progress finishes the routers it has started (its own stop flag), `STOPPING=1` is sent
//!   and [`run`] returns within [`DaemonOptions::stop_timeout`]. Routers stay as they are.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use l3agent_router::compile::HostFacts;
use l3agent_router::config::{HostConfig, Router};
use l3agent_router::error::RouterError;
use l3agent_router::host::{self, ApplyOptions, RouterStatus, Sides, Unchanged};
use l3agent_router::observe::Kept;
use l3agent_router::spec::{names, HaState};
use l3agent_types::RouterId;
use serde_json::{json, Value};
use tracing::{debug, error, info, info_span, warn};

use crate::control::{ControlConfig, ControlServer, Request};
use crate::ha::{HaEvent, HaRouters, HaWatch, KernelMonitors, Monitors, Settle};
use crate::http::{HttpConfig, HttpServer, HttpState};
use crate::metrics::{ha_state_label, FloatingIpState, Metrics, RouterState};
use crate::notify::Notifier;
use crate::queue::{Next, QueueConfig, WorkQueue};
use crate::traffic::{TrafficMeter, TrafficSource};
use crate::watch::{FileWatcher, SighupListener, WatchConfig, WatchEvent};
use crate::AgentError;
use l3agent_supervise::Service;

/// A front end other than the config file (the Neutron RPC front end): it owns the desired
/// state and hands it over whole; the agent reconciles what changed and tells it each
/// router's outcome. With a feed, the config file is not watched and SIGHUP asks for a
/// full drift check.
pub struct Feed {
    /// Desired states and requests, in order.
    pub events: mpsc::Receiver<FeedEvent>,
    /// Called after each batch for every router of the batch that is still configured.
    pub on_result: OnResult,
}

/// A [`Feed`]'s result callback.
pub type OnResult = Arc<dyn Fn(&RouterId, &RouterOutcome) + Send + Sync>;

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Feed")
    }
}

/// What a front end tells the agent.
#[derive(Debug)]
pub enum FeedEvent {
    /// The whole desired state, validated: the routers whose dicts changed, were added or
    /// removed are reconciled (removed ones are torn down).
    Config(Box<HostConfig>),
    /// Reconcile these routers now even if their dicts did not change.
    Routers(Vec<RouterId>),
    /// A full `Verify` apply: drift check of every router, removal of unknown ones.
    Full,
}

/// One router's result after a batch, for a [`Feed`].
#[derive(Debug, Clone)]
pub struct RouterOutcome {
    /// Converged (the kernel holds its dict).
    pub ok: bool,
    /// Why not.
    pub error: Option<String>,
    /// An HA router's VRRP state on this host as this apply read it (for Neutron's
    /// `update_ha_routers_states`: [`HaState::neutron`]); `None` for a router that is not HA,
    /// or whose apply failed before reading it.
    pub ha_state: Option<HaState>,
}

/// After a batch changes a router, it is checked again this long after (as Calico Felix
/// re-checks its writes): a program that undoes a change right after it was made (a
/// configuration manager, a stale agent) is seen within seconds, not at the next refresh.
/// Each re-check reads the kernel over netlink and asks the nf_tables generation: no process.
pub const RECHECKS: [Duration; 2] = [Duration::from_secs(2), Duration::from_secs(10)];

/// What the queue holds: one router, or the whole host (a full `Verify` apply).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    /// Every router diffed against the kernel, unknown ones removed.
    Full,
    /// One router, by id (also one that was removed from the config).
    Router(RouterId),
}

/// Reads and validates the config file: the agent's only way to read it (the binary passes
/// its document reader in). It is given the config in force, whose unchanged routers it may
/// take as they are instead of validating them again
/// ([`ConfigDoc::validate_since`](l3agent_router::config::ConfigDoc::validate_since)). The
/// error is shown as is: every problem with its path.
pub type Loader = dyn Fn(&Path, &HostConfig) -> Result<HostConfig, String> + Send + Sync;

/// Makes the side effects of one apply worker thread (see [`host::real_sides`]); owned, so
/// that a stuck worker can be left behind at shutdown. Sides that outlive an apply (the
/// agent's long-lived iptables managers) also say how to forget what they know of the
/// kernel: done before every full `Verify` apply, so that drift is read, not assumed away.
#[derive(Clone)]
pub struct SidesFactory {
    make: Arc<dyn Fn() -> Result<Sides, RouterError> + Send + Sync>,
    forget: Arc<dyn Fn() + Send + Sync>,
    owned: Arc<dyn Fn() -> Option<(u64, u64)> + Send + Sync>,
    ha_monitors: Arc<dyn Monitors>,
    traffic: Option<Arc<dyn TrafficSource>>,
    prestart: Arc<dyn Fn(&RouterId) + Send + Sync>,
    release: Arc<dyn Fn(Instant) + Send + Sync>,
}

impl std::fmt::Debug for SidesFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SidesFactory")
    }
}

impl SidesFactory {
    /// Sides made by `make`, which know nothing of the kernel when made. HA routers'
    /// namespaces are watched with the kernel's [`KernelMonitors`].
    pub fn new(make: impl Fn() -> Result<Sides, RouterError> + Send + Sync + 'static) -> Self {
        SidesFactory {
            make: Arc::new(make),
            forget: Arc::new(|| {}),
            owned: Arc::new(|| None),
            ha_monitors: Arc::new(KernelMonitors),
            traffic: None,
            prestart: Arc::new(|_| {}),
            release: Arc::new(|_| {}),
        }
    }

    /// `start` starts ahead what the apply of a router an event changed will start anyway
    /// (its namespace's `iptables-restore`, whose program start then overlaps the apply's
    /// reading and compiling): called by the worker as it begins a batch, for the batch's
    /// routers when they are at most [`PRESTART_MAX`] (an event's few; not a full apply's,
    /// not re-checks'); it should return at once (the `l3agent agent` command hands each
    /// start to a thread of its own: starting a program blocks its caller until the program
    /// runs). `release` is called after each batch with the time it ended: it ends what was
    /// started before then and not used (a change without rules, or a start that came after
    /// the apply's own).
    pub fn prestarting(
        mut self,
        start: impl Fn(&RouterId) + Send + Sync + 'static,
        release: impl Fn(Instant) + Send + Sync + 'static,
    ) -> Self {
        self.prestart = Arc::new(start);
        self.release = Arc::new(release);
        self
    }

    /// Reads the routers' and floating IPs' traffic counters with `source` when `/metrics`
    /// is scraped (at most every [`DaemonOptions::traffic_max_age`]; see
    /// [`crate::traffic`]). Without it the traffic families have no series.
    pub fn traffic(mut self, source: impl TrafficSource + 'static) -> Self {
        self.traffic = Some(Arc::new(source));
        self
    }

    /// Watches HA routers' namespaces with `monitors` instead of the kernel's (a test's fake).
    pub fn ha_monitors(mut self, monitors: impl Monitors + 'static) -> Self {
        self.ha_monitors = Arc::new(monitors);
        self
    }

    /// `owned` tells the iptables chains and rules the sides hold (the
    /// `l3agent_iptables_chains`/`_rules` gauges), read after each batch.
    pub fn owning(mut self, owned: impl Fn() -> (u64, u64) + Send + Sync + 'static) -> Self {
        self.owned = Arc::new(move || Some(owned()));
        self
    }

    /// Runs `forget` before each full apply.
    pub fn forgetting(mut self, forget: impl Fn() + Send + Sync + 'static) -> Self {
        self.forget = Arc::new(forget);
        self
    }
}

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// The config file (watched through its directory).
    pub config_path: PathBuf,
    /// A full `Verify` apply (drift repair) this often.
    pub resync_interval: Duration,
    /// `/metrics`, `/healthz`, `/readyz` here (`None`: no HTTP server).
    pub metrics_listen: Option<SocketAddr>,
    /// The control socket (`None`: none). Its directory is created 0700 if missing.
    pub control_socket: Option<PathBuf>,
    /// Threads of one apply (routers converged in parallel).
    pub apply_workers: usize,
    /// Most routers in one batch; also the queue's in-flight bound.
    pub batch: usize,
    /// Backoff of failed routers.
    pub backoff_base: Duration,
    /// Backoff ceiling.
    pub backoff_cap: Duration,
    /// Debounce of file events.
    pub watch: WatchConfig,
    /// Whether SIGHUP reloads (tests of the library leave process signals alone).
    pub sighup: bool,
    /// [`run`] returns at most this long after the stop was asked for, even if the apply in
    /// progress has not finished (the process exits; the next start converges).
    pub stop_timeout: Duration,
    /// Host facts for compile.
    pub facts: HostFacts,
    /// An HA router's address events are acted on this long after the first of a burst
    /// (see [`Settle`]).
    pub ha_settle: Duration,
    /// A scrape of `/metrics` reads the traffic counters again if the last reading is older
    /// than this (see [`crate::traffic`]).
    pub traffic_max_age: Duration,
}

impl DaemonOptions {
    /// Defaults for `config_path`: 60 s resync, metrics on [`crate::http::DEFAULT_LISTEN`],
    /// the control socket at [`crate::control::DEFAULT_SOCKET`], 4 apply threads, batches of
    /// up to 256 routers, backoff 1 s .. 5 min, 30 s to stop, HA events settle 1 s, traffic
    /// counters read at most every 5 s.
    pub fn new(config_path: impl Into<PathBuf>, facts: HostFacts) -> DaemonOptions {
        DaemonOptions {
            config_path: config_path.into(),
            resync_interval: Duration::from_secs(60),
            metrics_listen: crate::http::DEFAULT_LISTEN.parse().ok(),
            control_socket: Some(PathBuf::from(crate::control::DEFAULT_SOCKET)),
            apply_workers: 4,
            batch: 256,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(300),
            watch: WatchConfig::default(),
            sighup: true,
            stop_timeout: Duration::from_secs(30),
            facts,
            ha_settle: Duration::from_secs(1),
            traffic_max_age: crate::traffic::DEFAULT_MAX_AGE,
        }
    }
}

/// One router as the agent sees it (the control socket's `status`).
#[derive(Debug, Clone)]
struct View {
    state: RouterState,
    last_error: Option<String>,
    /// The last apply that changed something for it.
    last_change: Option<SystemTime>,
    /// The last apply that looked at it.
    last_run: Option<SystemTime>,
    failures: u32,
    /// An HA router's VRRP state as last read (`None`: not HA, or not read yet).
    ha_state: Option<HaState>,
    /// The daemons it runs, as of its last successful apply.
    daemons: Vec<Service>,
}

impl View {
    fn pending() -> View {
        View {
            state: RouterState::Pending,
            last_error: None,
            last_change: None,
            last_run: None,
            failures: 0,
            ha_state: None,
            daemons: Vec::new(),
        }
    }

    /// Takes in a reading of the HA state (see [`ha_reading`]): the state before, if this
    /// is a transition (master to backup or back; not the first reading, nor a router
    /// becoming or ceasing to be HA).
    fn read_ha(&mut self, reading: Option<HaState>) -> Option<HaState> {
        let before = std::mem::replace(&mut self.ha_state, reading);
        match (before, reading) {
            (Some(b), Some(a)) if a != b => Some(b),
            _ => None,
        }
    }

    /// The router as the control socket's `status` shows it (`ha_state` only for HA
    /// routers).
    fn json(&self, id: &str) -> Value {
        let mut v = json!({
            "id": id,
            "state": self.state.as_str(),
            "last_error": self.last_error,
            "last_change": unix(self.last_change),
            "last_run": unix(self.last_run),
            "failures": self.failures,
        });
        if let Some(s) = self.ha_state {
            v["ha_state"] = json!(ha_state_label(s));
        }
        if !self.daemons.is_empty() {
            v["daemons"] = json!(self.daemons.iter().map(|d| d.name()).collect::<Vec<_>>());
        }
        v
    }
}

/// What an apply's result tells of its router's HA state: `Some(Some(_))` it read one,
/// `Some(None)` it converged without one (not an HA router, or no longer), `None` it says
/// nothing (it failed or was skipped before reading, or removed the router).
fn ha_reading(r: &host::RouterResult) -> Option<Option<HaState>> {
    match (r.ha_state, r.status) {
        (Some(s), _) => Some(Some(s)),
        (None, RouterStatus::Converged | RouterStatus::Unchanged) => Some(None),
        (None, _) => None,
    }
}

/// The result of the last config (re)load.
#[derive(Debug, Clone)]
struct LoadStatus {
    ok: bool,
    at: SystemTime,
    error: Option<String>,
    invalid_loads: u64,
}

/// What the main loop, the worker and the control socket share.
struct State {
    config: Arc<HostConfig>,
    views: BTreeMap<String, View>,
    /// When a front-end event first asked for a key since its last run started: reconcile
    /// durations are measured from here, and changes made for such a key are not drift.
    events: BTreeMap<Key, Instant>,
    load: LoadStatus,
    drift_repairs: u64,
}

struct Shared {
    state: Mutex<State>,
    queue: WorkQueue<Key>,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    notifier: Notifier,
    metrics_addr: Mutex<Option<SocketAddr>>,
    /// When the batch in progress started (`None`: idle), for the watchdog.
    busy_since: Mutex<Option<Instant>>,
    /// Routers to look at again, and when.
    rechecks: Mutex<Vec<(Instant, RouterId)>>,
    /// Routers queued for a recheck (what their batch changes is drift).
    rechecking: Mutex<BTreeSet<RouterId>>,
    /// The pictures of namespaces found converged, which an event's apply takes instead of
    /// reading them again (re-checks and refreshes read them, and keep what they find).
    kept: Arc<Kept>,
    /// The feed's result callback (none: the file front end).
    on_result: Mutex<Option<OnResult>>,
    /// The HA routers [`HaWatch`] watches, with their namespace.
    ha_watched: HaRouters,
    /// HA events held back until their burst is over.
    ha_settle: Mutex<Settle>,
    /// [`SidesFactory::prestarting`]'s `start`.
    prestart: Arc<dyn Fn(&RouterId) + Send + Sync>,
}

/// At most this many routers of one batch get what their apply will start started ahead
/// (see [`SidesFactory::prestarting`]): an event's few, not a new config's thousand.
pub const PRESTART_MAX: usize = 2;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a new config marks dirty: with the same agent section, the routers added, removed,
/// or whose validated form changed (compared whole, by id: a router is its dict validated
/// under the agent section, so this is "whose dict changed", without hashing or
/// re-serialising anything); with another agent section, everything and [`Key::Full`].
fn changed_routers(old: &HostConfig, new: &HostConfig) -> Vec<Key> {
    if new.agent != old.agent {
        info!("the agent section changed: every router is reconciled");
        let mut all: Vec<Key> = vec![Key::Full];
        all.extend(
            new.routers
                .iter()
                .chain(&old.routers)
                .map(|r| &r.id)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .map(|id| Key::Router(id.clone())),
        );
        return all;
    }
    // The usual edit keeps every router in its place: compared pairwise (shared routers
    // compare by address), without indexing 1,000 ids.
    if old.routers.len() == new.routers.len()
        && old
            .routers
            .iter()
            .zip(&new.routers)
            .all(|(a, b)| a.id == b.id)
    {
        return old
            .routers
            .iter()
            .zip(&new.routers)
            .filter(|(a, b)| a != b)
            .map(|(_, b)| Key::Router(b.id.clone()))
            .collect::<BTreeSet<Key>>()
            .into_iter()
            .collect();
    }
    let before: HashMap<&RouterId, &Router> = old.routers.iter().map(|r| (&r.id, r)).collect();
    let mut dirty: BTreeSet<&RouterId> = new
        .routers
        .iter()
        .filter(|r| before.get(&r.id).is_none_or(|b| *b != *r))
        .map(|r| &r.id)
        .collect();
    let now: HashSet<&RouterId> = new.routers.iter().map(|r| &r.id).collect();
    dirty.extend(
        old.routers
            .iter()
            .map(|r| &r.id)
            .filter(|id| !now.contains(id)),
    );
    dirty
        .into_iter()
        .map(|id| Key::Router(id.clone()))
        .collect()
}

/// The routers of a batch (`dirty`) whose apply gets what it starts started ahead: those
/// still in `config`, when they are at most [`PRESTART_MAX`] and not a full apply's.
fn to_prestart<'a>(dirty: &'a [Key], config: &HostConfig) -> Vec<&'a RouterId> {
    if dirty.len() > PRESTART_MAX || dirty.contains(&Key::Full) {
        return Vec::new();
    }
    dirty
        .iter()
        .filter_map(|k| match k {
            Key::Router(id) if config.routers.iter().any(|r| &r.id == id) => Some(id),
            _ => None,
        })
        .collect()
}

fn unix(t: Option<SystemTime>) -> Value {
    t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(Value::Null, |d| json!(d.as_secs()))
}

impl Shared {
    /// Marks `keys` dirty on behalf of a front-end event at `now`.
    fn mark(&self, keys: Vec<Key>, now: Instant) {
        {
            let mut s = lock(&self.state);
            for k in &keys {
                s.events.entry(k.clone()).or_insert(now);
                if let Key::Router(id) = k {
                    let removing = !s.config.routers.iter().any(|r| &r.id == id);
                    let v = s.views.entry(id.to_string()).or_insert_with(View::pending);
                    if removing {
                        v.state = RouterState::Removing;
                    } else if v.state != RouterState::Failed {
                        v.state = RouterState::Pending;
                    }
                }
            }
        }
        for k in keys {
            self.queue.mark_dirty(k);
        }
    }

    /// Re-reads the config file: a valid one replaces the config in force and marks what
    /// changed; an invalid one is logged and counted and changes nothing.
    fn reload(&self, load: &Loader, path: &Path, why: &str) {
        let in_force = Arc::clone(&lock(&self.state).config);
        let loaded = load(path, &in_force);
        drop(in_force);
        let now = Instant::now();
        let new = match loaded {
            Err(problems) => {
                let mut s = lock(&self.state);
                s.load.ok = false;
                s.load.at = SystemTime::now();
                s.load.error = Some(problems.clone());
                s.load.invalid_loads += 1;
                self.metrics.config_loaded(false);
                error!(
                    config = %path.display(),
                    trigger = why,
                    %problems,
                    "the config is invalid; the one in force stays (nothing changed)"
                );
                return;
            }
            Ok(c) => {
                self.metrics.config_loaded(true);
                c
            }
        };
        self.install(new, now, &path.display().to_string(), why);
    }

    /// Puts `new` (valid) in force and marks the routers whose dicts changed, were added or
    /// removed; a changed `agent` section marks everything.
    fn install(&self, new: HostConfig, now: Instant, source: &str, why: &str) {
        let (dirty, old) = {
            let mut s = lock(&self.state);
            let dirty = changed_routers(&s.config, &new);
            let old = std::mem::replace(&mut s.config, Arc::new(new));
            s.load = LoadStatus {
                ok: true,
                at: SystemTime::now(),
                error: None,
                invalid_loads: s.load.invalid_loads,
            };
            (dirty, old)
        };
        info!(
            config = source,
            trigger = why,
            dirty = dirty.len(),
            "config reloaded"
        );
        self.mark(dirty, now);
        // The config replaced is freed once the worker has its work (at 1,000 routers that
        // is milliseconds of free(), no longer under the state lock the worker needs).
        drop(old);
    }

    /// One event of a [`Feed`].
    fn fed(&self, ev: FeedEvent) {
        let now = Instant::now();
        match ev {
            FeedEvent::Config(cfg) => self.install(*cfg, now, "feed", "front end"),
            FeedEvent::Routers(ids) => self.mark(ids.into_iter().map(Key::Router).collect(), now),
            FeedEvent::Full => self.mark(vec![Key::Full], now),
        }
    }

    /// An event of [`HaWatch`] at `now`: the router is an event's (from now: what a batch
    /// changes for it is not drift), and is marked dirty once the burst settled (the main
    /// loop, [`Shared::ha_due`]). Routers no longer configured are left alone.
    fn ha_event(&self, id: &RouterId, why: HaEvent, now: Instant) {
        {
            let mut s = lock(&self.state);
            if !s.config.routers.iter().any(|r| &r.id == id) {
                return;
            }
            s.events.entry(Key::Router(id.clone())).or_insert(now);
        }
        if lock(&self.ha_settle).note(id, now) {
            debug!(router = %id, ?why, "HA: address event; the router is reconciled once it settles");
        }
    }

    /// Marks the HA routers whose events settled at `now`.
    fn ha_due(&self, now: Instant) {
        let due = lock(&self.ha_settle).due(now);
        if due.is_empty() {
            return;
        }
        let keys: Vec<Key> = {
            let s = lock(&self.state);
            due.into_iter()
                .filter(|(id, _)| s.config.routers.iter().any(|r| &r.id == id))
                .map(|(id, _)| Key::Router(id))
                .collect()
        };
        // `mark` keeps the time of the first event recorded by `ha_event` (the latency is
        // measured from it), or records now if a batch took the router meanwhile.
        self.mark(keys, now);
    }

    /// The `l3agent_routers`, `l3agent_floating_ips`, `l3agent_ha_routers` and
    /// `l3agent_queue_depth` gauges: counted when scraped (a walk over every router's view,
    /// under the lock the worker takes: not on an event's way to the kernel).
    fn refresh_gauges(&self) {
        let s = lock(&self.state);
        let mut routers: BTreeMap<RouterState, u64> = BTreeMap::new();
        let mut fips: BTreeMap<FloatingIpState, u64> = BTreeMap::new();
        let mut ha: BTreeMap<HaState, u64> = BTreeMap::new();
        let mut daemons: BTreeMap<Service, u64> = BTreeMap::new();
        for v in s.views.values() {
            *routers.entry(v.state).or_default() += 1;
            for d in &v.daemons {
                *daemons.entry(*d).or_default() += 1;
            }
            if let Some(h) = v.ha_state {
                *ha.entry(h).or_default() += 1;
            }
        }
        for r in &s.config.routers {
            let state = match s.views.get(r.id.as_str()).map(|v| v.state) {
                Some(RouterState::Converged) => FloatingIpState::Active,
                Some(RouterState::Failed) => FloatingIpState::Error,
                _ => FloatingIpState::Down,
            };
            *fips.entry(state).or_default() += r.fips.len() as u64;
        }
        drop(s);
        self.metrics.set_routers(routers);
        self.metrics.set_floating_ips(fips);
        self.metrics.set_ha_routers(ha);
        self.metrics.set_daemons(daemons);
        self.metrics.set_queue_depth(self.queue.depth());
    }

    /// The control socket's answer.
    fn status(&self, router: Option<&str>) -> Value {
        let s = lock(&self.state);
        let routers: Vec<Value> = s
            .views
            .iter()
            .filter(|(id, _)| router.is_none_or(|r| r == id.as_str()))
            .map(|(id, v)| v.json(id))
            .collect();
        json!({
            "routers": routers,
            "ready": self.ready.load(Ordering::SeqCst),
            "queue_depth": self.queue.depth(),
            "in_flight": self.queue.in_flight(),
            "drift_repairs": s.drift_repairs,
            "config": {
                "ok": s.load.ok,
                "loaded_at": unix(Some(s.load.at)),
                "error": s.load.error,
                "invalid_loads": s.load.invalid_loads,
                "routers": s.config.routers.len(),
            },
            "metrics_listen": lock(&self.metrics_addr).map(|a| a.to_string()),
            "pid": std::process::id(),
        })
    }
}

/// The one worker: drains the queue in batches until it is shut down.
fn worker(
    shared: &Shared,
    make: &SidesFactory,
    opts: &DaemonOptions,
    apply_stop: &Arc<AtomicBool>,
) {
    let mut first = true;
    loop {
        let key = match shared
            .queue
            .next(Instant::now() + Duration::from_millis(500))
        {
            Next::Shutdown => return,
            Next::Idle => continue,
            Next::Work(k) => k,
        };
        let mut batch = vec![key];
        while let Next::Work(k) = shared.queue.next(Instant::now()) {
            batch.push(k);
        }
        // A full apply answers for every router: take them all into the batch, so each one's
        // result feeds its own backoff.
        if batch.contains(&Key::Full) {
            let ids: Vec<RouterId> = lock(&shared.state)
                .config
                .routers
                .iter()
                .map(|r| r.id.clone())
                .collect();
            for id in ids {
                shared.queue.mark_dirty(Key::Router(id));
            }
            while let Next::Work(k) = shared.queue.next(Instant::now()) {
                batch.push(k);
            }
        }
        let began = Instant::now();
        *lock(&shared.busy_since) = Some(began);
        // Re-checks due at the time of an event wait for it: the event's apply trusts what
        // it kept and has the cores to itself; theirs reads every namespace after.
        let (batch, rechecks, asked) = rechecks_apart(shared, batch);
        // An event's routers (not a retry's or a rerun's, which may change nothing): started
        // now, from its own thread, while this one goes on reading and compiling:
        // on a core of its own (started before the worker runs, the process took the core
        // the worker was then woken on, with the other one idle).
        let config = Arc::clone(&lock(&shared.state).config);
        for id in to_prestart(&asked, &config) {
            (shared.prestart)(id);
        }
        drop(config);
        let mut applied = true;
        for part in [&batch, &rechecks] {
            if !part.is_empty() {
                applied &= run_batch(shared, make, opts, apply_stop, part, first);
            }
        }
        *lock(&shared.busy_since) = None;
        (make.release)(Instant::now());
        if applied && batch.contains(&Key::Full) && first {
            first = false;
            shared.ready.store(true, Ordering::SeqCst);
            if let Err(e) = shared.notifier.ready() {
                warn!(error = %e, "sd_notify READY=1");
            }
            info!("initial convergence done: ready");
        }
        let _ = shared.notifier.status(&summary(shared));
    }
}

/// `batch` split into what an event asked for (or a full apply, or a retry or rerun) and
/// the re-checks no event asked for, either may be empty; and the keys an event asked for.
fn rechecks_apart(shared: &Shared, batch: Vec<Key>) -> (Vec<Key>, Vec<Key>, Vec<Key>) {
    let asked: BTreeSet<Key> = {
        let s = lock(&shared.state);
        batch
            .iter()
            .filter(|k| s.events.contains_key(*k))
            .cloned()
            .collect()
    };
    let (now, rechecks) = if batch.contains(&Key::Full) {
        (batch, Vec::new())
    } else {
        split_rechecks(batch, &asked, &lock(&shared.rechecking))
    };
    (now, rechecks, asked.into_iter().collect())
}

/// [`rechecks_apart`] given the keys an event asked for and the routers being re-checked.
fn split_rechecks(
    batch: Vec<Key>,
    asked: &BTreeSet<Key>,
    rechecking: &BTreeSet<RouterId>,
) -> (Vec<Key>, Vec<Key>) {
    let (rechecks, others): (Vec<Key>, Vec<Key>) = batch.into_iter().partition(|k| match k {
        Key::Router(id) => !asked.contains(k) && rechecking.contains(id),
        Key::Full => false,
    });
    (others, rechecks)
}

/// One line for `systemctl status`.
fn summary(shared: &Shared) -> String {
    let s = lock(&shared.state);
    let count = |st: RouterState| s.views.values().filter(|v| v.state == st).count();
    format!(
        "{} routers: {} converged, {} pending, {} failed; queue {}",
        s.config.routers.len(),
        count(RouterState::Converged),
        count(RouterState::Pending),
        count(RouterState::Failed),
        shared.queue.depth()
    )
}

/// Runs one apply for `batch` and reports each key's result to the queue. Returns whether
/// the apply ran (router failures included); `false`: it failed before touching any router
/// (every key backs off).
fn run_batch(
    shared: &Shared,
    make: &SidesFactory,
    opts: &DaemonOptions,
    apply_stop: &Arc<AtomicBool>,
    batch: &[Key],
    first: bool,
) -> bool {
    let full = batch.contains(&Key::Full);
    let (cfg, events) = {
        let mut s = lock(&shared.state);
        let events: BTreeMap<Key, Instant> = batch
            .iter()
            .filter_map(|k| s.events.remove(k).map(|t| (k.clone(), t)))
            .collect();
        (Arc::clone(&s.config), events)
    };
    let only: BTreeSet<RouterId> = batch
        .iter()
        .filter_map(|k| match k {
            Key::Router(id) => Some(id.clone()),
            Key::Full => None,
        })
        .collect();
    let mut apply_opts = ApplyOptions::new(opts.facts.clone(), Arc::clone(apply_stop));
    apply_opts.unchanged = Unchanged::Verify;
    apply_opts.workers = opts.apply_workers;
    // An event's apply trusts the kept pictures; one that looks for drift (a refresh, or a
    // re-check in the batch) reads every namespace.
    let rechecks = {
        let r = lock(&shared.rechecking);
        only.iter().any(|id| r.contains(id))
    };
    apply_opts.kept = Some(Arc::clone(&shared.kept));
    apply_opts.trust_kept = !full && !rechecks;
    apply_opts.only = if full { None } else { Some(only) };
    let started = Instant::now();
    if full {
        (make.forget)();
    }
    let result = host::apply(&cfg, &apply_opts, &*make.make);
    let now = SystemTime::now();
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            error!(error = %e, routers = batch.len(), "the apply failed before any router was touched; retried with backoff");
            let err: Result<(), String> = Err(e.to_string());
            let mut s = lock(&shared.state);
            for k in batch {
                if let Some(c) = shared.queue.done(k, &err) {
                    if let Key::Router(id) = k {
                        let v = s.views.entry(id.to_string()).or_insert_with(View::pending);
                        v.state = RouterState::Failed;
                        v.last_error = Some(e.to_string());
                        v.last_run = Some(now);
                        v.failures = c.failures;
                    }
                }
            }
            return false;
        }
    };
    let by_id: BTreeMap<&str, &host::RouterResult> =
        report.routers.iter().map(|r| (r.id.as_str(), r)).collect();
    // Drift: what a full apply or a recheck changed for routers no event asked for.
    let rechecked: BTreeSet<String> = {
        let mut r = lock(&shared.rechecking);
        batch
            .iter()
            .filter_map(|k| match k {
                Key::Router(id) if r.remove(id) => Some(id.to_string()),
                _ => None,
            })
            .collect()
    };
    if (full && !first) || !rechecked.is_empty() {
        for r in &report.routers {
            let asked = RouterId::new("id", &r.id)
                .map(|id| events.contains_key(&Key::Router(id)))
                .unwrap_or(false);
            let looked_for = (full && !first) || rechecked.contains(&r.id);
            if asked || !looked_for || r.status == RouterStatus::Removed {
                continue;
            }
            let _span = info_span!("router", id = %r.id).entered();
            for c in r.changes.iter().filter(|c| !c.is_side_effect()) {
                warn!(kind = c.kind(), change = %c, "drift repaired");
                shared.metrics.drift_repaired(c.kind());
                lock(&shared.state).drift_repairs += 1;
            }
        }
    }
    let mut s = lock(&shared.state);
    // Routers to watch (true) or no longer (false) for HA events.
    let mut watch: Vec<(RouterId, bool)> = Vec::new();
    for k in batch {
        let Key::Router(id) = k else {
            let ok: Result<(), ()> = Ok(());
            shared.queue.done(k, &ok);
            continue;
        };
        let _span = info_span!("router", id = %id).entered();
        let r = by_id.get(id.as_str());
        let outcome: Result<(), String> = match r {
            Some(r) if r.status == RouterStatus::Failed => {
                Err(r.error.clone().unwrap_or_else(|| "failed".into()))
            }
            Some(r) if r.status == RouterStatus::Skipped => Err("interrupted".into()),
            _ => Ok(()),
        };
        let completion = shared.queue.done(k, &outcome);
        if let Some(t) = events.get(k) {
            shared.metrics.observe_reconcile(t.elapsed());
        }
        let configured = cfg.routers.iter().any(|c| &c.id == id);
        match (&outcome, configured) {
            (Ok(()), false) => {
                if r.is_some() {
                    info!("router removed");
                }
                s.views.remove(id.as_str());
            }
            (Ok(()), true) => {
                let v = s.views.entry(id.to_string()).or_insert_with(View::pending);
                if let Some(r) = r {
                    v.daemons = r.daemons.clone();
                }
                v.state = RouterState::Converged;
                v.last_error = None;
                v.last_run = Some(now);
                v.failures = 0;
                if r.is_some_and(|r| !r.changes.is_empty()) {
                    v.last_change = Some(now);
                    info!(
                        changes = r.map_or(0, |r| r.changes.len()),
                        "router converged"
                    );
                }
            }
            (Err(why), _) => {
                let v = s.views.entry(id.to_string()).or_insert_with(View::pending);
                v.state = RouterState::Failed;
                v.last_error = Some(why.clone());
                v.last_run = Some(now);
                v.failures = completion.map_or(v.failures + 1, |c| c.failures);
                if r.is_some_and(|r| !r.changes.is_empty()) {
                    v.last_change = Some(now);
                }
                match completion {
                    Some(c) => error!(error = %why, next = %c.next_run, "router failed"),
                    None => error!(error = %why, "router failed"),
                }
            }
        }
        let reading = r.and_then(|r| ha_reading(r));
        match (s.views.get_mut(id.as_str()), reading) {
            (Some(v), Some(reading)) => {
                if let (Some(before), Some(after)) = (v.read_ha(reading), reading) {
                    info!(
                        from = ha_state_label(before),
                        to = ha_state_label(after),
                        "HA state changed"
                    );
                    shared.metrics.ha_transition(after);
                }
                watch.push((id.clone(), configured && reading.is_some()));
            }
            (None, _) => watch.push((id.clone(), false)),
            (Some(_), None) => {}
        }
    }
    drop(s);
    {
        let mut watched = lock(&shared.ha_watched);
        for (id, on) in watch {
            if on {
                let ns = names::router_ns(&id);
                watched.insert(id, ns);
            } else {
                watched.remove(&id);
            }
        }
        let configured: BTreeSet<&RouterId> = cfg.routers.iter().map(|r| &r.id).collect();
        watched.retain(|id, _| configured.contains(id));
    }
    // Felix's re-checks: a router this batch changed is looked at again RECHECKS later
    // (without an event: what those find is drift, another program undoing our write).
    {
        let mut due = lock(&shared.rechecks);
        let now = Instant::now();
        for r in report.routers.iter().filter(|r| {
            r.status == RouterStatus::Converged && r.changes.iter().any(|c| !c.is_side_effect())
        }) {
            if let Ok(id) = RouterId::new("id", &r.id) {
                for after in RECHECKS {
                    due.push((now + after, id.clone()));
                }
            }
        }
    }
    // The front end hears of every configured router this apply looked at (a full apply
    // included), outside the state lock.
    let on_result = lock(&shared.on_result).clone();
    if let Some(callback) = on_result {
        for r in &report.routers {
            let Ok(id) = RouterId::new("id", &r.id) else {
                continue;
            };
            if r.status == RouterStatus::Removed || !cfg.routers.iter().any(|c| c.id == id) {
                continue;
            }
            let outcome = RouterOutcome {
                ok: matches!(r.status, RouterStatus::Converged | RouterStatus::Unchanged),
                error: r.error.clone(),
                ha_state: r.ha_state,
            };
            callback(&id, &outcome);
        }
    }
    info!(
        routers = batch.len(),
        full,
        took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "batch done"
    );
    true
}

/// Tells the main loop when the worker thread ends (however it ends).
struct Exited(mpsc::Sender<()>);

impl Drop for Exited {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

/// Runs the agent until `term` is set: see the module docs. `initial` is the config as
/// loaded and validated at start; `load` re-reads it. Errors are start-up failures (a
/// socket that cannot be bound, a watch that cannot be set up) or the worker dying.
pub fn run(
    opts: DaemonOptions,
    initial: HostConfig,
    load: Arc<Loader>,
    make: SidesFactory,
    notifier: Notifier,
    term: Arc<AtomicBool>,
) -> Result<(), AgentError> {
    run_fed(opts, initial, load, make, notifier, term, None)
}

/// [`run`] with the desired state coming from `feed` instead of the config file (when
/// given): `initial` is the state at start (it may have no routers yet), `load` is unused.
pub fn run_fed(
    opts: DaemonOptions,
    initial: HostConfig,
    load: Arc<Loader>,
    make: SidesFactory,
    notifier: Notifier,
    term: Arc<AtomicBool>,
    feed: Option<Feed>,
) -> Result<(), AgentError> {
    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let views = initial
        .routers
        .iter()
        .map(|r| (r.id.to_string(), View::pending()))
        .collect();
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            config: Arc::new(initial),
            views,
            events: BTreeMap::new(),
            load: LoadStatus {
                ok: true,
                at: SystemTime::now(),
                error: None,
                invalid_loads: 0,
            },
            drift_repairs: 0,
        }),
        queue: WorkQueue::new(QueueConfig {
            workers: opts.batch.max(1),
            backoff_base: opts.backoff_base,
            backoff_cap: opts.backoff_cap,
        }),
        metrics: Arc::clone(&metrics),
        ready: Arc::clone(&ready),
        notifier,
        metrics_addr: Mutex::new(None),
        busy_since: Mutex::new(None),
        on_result: Mutex::new(None),
        rechecks: Mutex::new(Vec::new()),
        rechecking: Mutex::new(BTreeSet::new()),
        kept: Arc::new(Kept::new()),
        ha_watched: Arc::default(),
        ha_settle: Mutex::new(Settle::new(opts.ha_settle)),
        prestart: Arc::clone(&make.prestart),
    });

    // Counted when scraped, not after every batch (a walk over every namespace's rules): the
    // iptables rules and chains owned, and the traffic counters of the config in force. The
    // hook holds the shared state weakly: the metrics it lives in are the shared state's.
    {
        let meter = make
            .traffic
            .as_ref()
            .map(|source| TrafficMeter::new(Arc::clone(source), opts.traffic_max_age));
        let owned = Arc::clone(&make.owned);
        let weak = Arc::downgrade(&shared);
        metrics.on_scrape(move |m| {
            if let Some((chains, rules)) = owned() {
                m.set_iptables_owned(chains, rules);
            }
            let Some(shared) = weak.upgrade() else {
                return;
            };
            shared.refresh_gauges();
            if let Some(meter) = &meter {
                let cfg = Arc::clone(&lock(&shared.state).config);
                meter.refresh(&cfg, m);
            }
        });
    }

    let (tx, rx) = mpsc::channel();
    let (fed_tx, fed_rx) = mpsc::channel::<FeedEvent>();
    let (watcher, on_result) = match feed {
        None => (
            Some(FileWatcher::start(
                &opts.config_path,
                opts.watch,
                tx.clone(),
            )?),
            None,
        ),
        Some(Feed { events, on_result }) => {
            // Forwards the front end's events and wakes the main loop for each.
            let wake = tx.clone();
            std::thread::Builder::new()
                .name("feed".into())
                .spawn(move || {
                    for ev in events {
                        if fed_tx.send(ev).is_err() || wake.send(WatchEvent::Fed).is_err() {
                            return;
                        }
                    }
                })
                .map_err(|source| AgentError::Thread {
                    what: "feed",
                    source,
                })?;
            (None, Some(on_result))
        }
    };
    let fed_mode = watcher.is_none();
    lock(&shared.on_result).clone_from(&on_result);
    let sighup = if opts.sighup {
        Some(SighupListener::start(tx.clone())?)
    } else {
        None
    };
    drop(tx);
    let http = match opts.metrics_listen {
        Some(addr) => {
            let server = HttpServer::start(
                addr,
                HttpConfig::default(),
                HttpState {
                    metrics: Arc::clone(&metrics),
                    ready: Arc::clone(&ready),
                },
            )?;
            info!(addr = %server.local_addr(), "serving /metrics, /healthz, /readyz");
            *lock(&shared.metrics_addr) = Some(server.local_addr());
            Some(server)
        }
        None => None,
    };
    let control = match &opts.control_socket {
        Some(path) => {
            ensure_private_dir(path)?;
            let handler_shared = Arc::clone(&shared);
            let handler = Arc::new(move |req: &Request| match req {
                Request::Status { router } => handler_shared.status(router.as_deref()),
            });
            let server = ControlServer::start(
                ControlConfig {
                    allowed_uid: nix::unistd::geteuid().as_raw(),
                    ..ControlConfig::new(path)
                },
                handler,
            )?;
            info!(path = %path.display(), "control socket listening");
            Some(server)
        }
        None => None,
    };

    let ha_watch = {
        let events = Arc::clone(&shared);
        HaWatch::start(
            Arc::clone(&shared.ha_watched),
            Arc::clone(&make.ha_monitors),
            move |id, why| events.ha_event(id, why, Instant::now()),
        )?
    };

    let apply_stop = Arc::new(AtomicBool::new(false));
    shared.mark(vec![Key::Full], Instant::now());
    let (exit_tx, exit_rx) = mpsc::channel();
    let worker_thread = {
        let (shared, make, opts, apply_stop) = (
            Arc::clone(&shared),
            make.clone(),
            opts.clone(),
            Arc::clone(&apply_stop),
        );
        std::thread::Builder::new()
            .name("reconcile".into())
            .spawn(move || {
                let _exited = Exited(exit_tx);
                worker(&shared, &make, &opts, &apply_stop);
            })
            .map_err(|source| AgentError::Thread {
                what: "reconcile worker",
                source,
            })?
    };

    let watchdog = crate::notify::watchdog_interval();
    let mut next_ping = Instant::now();
    let mut next_extend = Instant::now();
    let mut next_resync = Instant::now() + opts.resync_interval;
    let mut worker_died = false;
    info!(config = %opts.config_path.display(), "agent started");
    while !term.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= next_resync {
            shared.queue.mark_dirty(Key::Full);
            next_resync = now + opts.resync_interval;
        }
        let due: Vec<RouterId> = {
            let mut all = lock(&shared.rechecks);
            let (due, later): (Vec<_>, Vec<_>) = all.drain(..).partition(|(t, _)| *t <= now);
            *all = later;
            due.into_iter().map(|(_, id)| id).collect()
        };
        shared.ha_due(now);
        for id in due {
            // No event recorded: not a reconcile to time, and what it repairs is drift.
            if lock(&shared.state)
                .config
                .routers
                .iter()
                .any(|r| r.id == id)
            {
                lock(&shared.rechecking).insert(id.clone());
                shared.queue.mark_dirty(Key::Router(id));
            }
        }
        if let Some(w) = watchdog {
            if now >= next_ping {
                // A batch stuck far beyond any reasonable time stops the pings, so systemd
                // restarts the agent.
                let stuck = lock(&shared.busy_since)
                    .is_some_and(|t| t.elapsed() > (w * 10).max(Duration::from_secs(600)));
                if stuck {
                    error!("the reconcile worker is stuck; no more watchdog pings");
                } else {
                    let _ = shared.notifier.watchdog();
                }
                next_ping = now + w / 2;
            }
        }
        if !ready.load(Ordering::SeqCst) && now >= next_extend {
            let _ = shared.notifier.extend_timeout(Duration::from_secs(60));
            next_extend = now + Duration::from_secs(20);
        }
        match exit_rx.try_recv() {
            Ok(()) | Err(mpsc::TryRecvError::Disconnected) => {
                error!("the reconcile worker ended unexpectedly");
                worker_died = true;
                break;
            }
            Err(mpsc::TryRecvError::Empty) => {}
        }
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(WatchEvent::Changed) => shared.reload(&*load, &opts.config_path, "file changed"),
            Ok(WatchEvent::Fed) => {
                while let Ok(ev) = fed_rx.try_recv() {
                    shared.fed(ev);
                }
            }
            Ok(WatchEvent::Reload) if fed_mode => {
                info!("SIGHUP: a full drift check");
                shared.mark(vec![Key::Full], Instant::now());
            }
            Ok(WatchEvent::Reload) => {
                let was_ready = ready.load(Ordering::SeqCst);
                if was_ready {
                    let _ = shared.notifier.reloading();
                }
                shared.reload(&*load, &opts.config_path, "SIGHUP");
                if was_ready {
                    let _ = shared.notifier.ready();
                }
            }
            Ok(WatchEvent::WatchLost) => error!(
                config = %opts.config_path.display(),
                "the config directory went away: file changes are no longer seen; SIGHUP still reloads"
            ),
            Err(RecvTimeoutError::Timeout) => {}
            // Both triggers are gone (the watch was lost, no SIGHUP listener): keep the
            // loop's pace for the timers and the stop flag.
            Err(RecvTimeoutError::Disconnected) => std::thread::sleep(Duration::from_millis(100)),
        }
        shared.metrics.set_queue_depth(shared.queue.depth());
    }

    info!("stopping: no new work; the routers in progress finish");
    let _ = shared.notifier.stopping();
    ha_watch.stop(Duration::from_secs(1));
    apply_stop.store(true, Ordering::SeqCst);
    let dropped = shared.queue.shutdown();
    if dropped > 0 {
        info!(
            dropped,
            "queued work dropped (the next start converges every router)"
        );
    }
    if !worker_died {
        match exit_rx.recv_timeout(opts.stop_timeout) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                let _ = worker_thread.join();
            }
            Err(RecvTimeoutError::Timeout) => warn!(
                timeout_s = opts.stop_timeout.as_secs(),
                "the apply in progress did not finish in time; exiting anyway"
            ),
        }
    }
    if let Some(w) = watcher {
        w.stop();
    }
    if let Some(s) = sighup {
        s.stop();
    }
    if let Some(h) = http {
        h.stop();
    }
    if let Some(c) = control {
        c.stop();
    }
    if worker_died {
        return Err(AgentError::Thread {
            what: "reconcile worker",
            source: std::io::Error::other("it ended unexpectedly"),
        });
    }
    info!("stopped; routers stay as they are");
    Ok(())
}

/// Creates the control socket's directory 0700 if it is missing (an existing one is checked
/// by the control server, never changed).
fn ensure_private_dir(socket: &Path) -> Result<(), AgentError> {
    use std::os::unix::fs::DirBuilderExt;
    let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    if dir.exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| AgentError::Control {
            path: dir.to_path_buf(),
            what: "creating the directory",
            source,
        })
}

#[cfg(test)]
mod tests {
    //! The daemon over the router crate's recording fake (no root): what a reload marks,
    //! what an invalid file does, a failing router's backoff, removal, drift, and stopping.
    use super::*;
    use crate::control::client;
    use l3agent_router::config::{ConfigDoc, ConfigError};
    use l3agent_router::fake::{self, SharedWorld, World};

    const A: &str = "87c7c2ae-d0ba-4691-820c-8053abf50b8d";
    const B: &str = "5d2ab1e0-0000-4000-8000-00000000000b";

    fn router(id: &str) -> Value {
        let text = include_str!("../../router/tests/data/neutron-router-legacy.json");
        let mut r: Value = serde_json::from_str(text).unwrap();
        if id != A {
            r["id"] = json!(id);
            for (i, p) in r["_interfaces"]
                .as_array_mut()
                .unwrap()
                .iter_mut()
                .enumerate()
            {
                p["id"] = json!(format!("7a7a7a7{i}-0000-4000-8000-000000000000"));
            }
            r["gw_port"]["id"] = json!("7b7b7b7b-0000-4000-8000-000000000000");
            r["_floatingips"] = json!([]);
            l3agent_testkit::renumber_router(&mut r, 5);
        }
        r
    }

    use crate::scratch::Scratch;

    /// A scratch directory with `etc/` for the config.
    fn scratch() -> Scratch {
        let s = Scratch::new("daemon");
        std::fs::create_dir_all(s.0.join("etc")).unwrap();
        s
    }

    impl Scratch {
        fn config(&self) -> PathBuf {
            self.0.join("etc").join("host.json")
        }
        fn socket(&self) -> PathBuf {
            self.0.join("run").join("control.sock")
        }
        /// Replaces the config file atomically.
        fn write(&self, text: &str) {
            let tmp = self.0.join("etc").join(".host.json.tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, self.config()).unwrap();
        }
        fn write_routers(&self, routers: &[Value]) {
            self.write(
                &json!({
                    "agent": {"mode": "legacy", "host": "host-a", "state_path": self.0.join("state"),
                        "bridges": {
                            "90e4912c-0eb8-4be4-a793-e6a3bba6ae8b": "br-t1",
                            "c6910e18-fb1f-4988-9af4-211a8c2e2926": "br-t2",
                            "65566f91-133a-44ff-87f5-ecffc1193d3d": "br-ex"}},
                    "routers": routers,
                })
                .to_string(),
            );
        }
    }

    fn load(path: &Path) -> Result<HostConfig, String> {
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        let doc: ConfigDoc = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        doc.validate().map_err(problems)
    }

    /// The daemon's [`Loader`]: only the routers changed since `in_force` are validated.
    fn reload(path: &Path, in_force: &HostConfig) -> Result<HostConfig, String> {
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        let doc: ConfigDoc = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        doc.validate_since(in_force).map_err(problems)
    }

    fn problems(errors: Vec<ConfigError>) -> String {
        errors
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect::<Vec<_>>()
            .join("\n")
    }

    struct Running {
        term: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<Result<(), AgentError>>>,
        socket: PathBuf,
    }

    impl Running {
        fn status(&self) -> Value {
            client::query(
                &self.socket,
                &Request::Status { router: None },
                Duration::from_secs(5),
            )
            .unwrap_or(Value::Null)
        }
        fn state_of(&self, id: &str) -> Option<String> {
            self.field_of(id, "state")
        }
        fn field_of(&self, id: &str, field: &str) -> Option<String> {
            self.status()["routers"]
                .as_array()?
                .iter()
                .find(|r| r["id"] == id)
                .and_then(|r| r[field].as_str())
                .map(str::to_owned)
        }
        /// `/metrics`, as Prometheus text.
        fn scrape(&self) -> String {
            let addr = self.status()["metrics_listen"].as_str().unwrap().to_owned();
            let mut conn = std::net::TcpStream::connect(addr).unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            std::io::Write::write_all(
                &mut conn,
                b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            .unwrap();
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut conn, &mut text);
            text
        }
        /// The value of one series (`name{labels}`), if exported.
        fn sample(&self, series: &str) -> Option<f64> {
            self.scrape()
                .lines()
                .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        }
        fn stop(mut self) -> Result<(), AgentError> {
            self.term.store(true, Ordering::SeqCst);
            let t = self.thread.take().unwrap();
            let start = Instant::now();
            while !t.is_finished() {
                assert!(start.elapsed() < Duration::from_secs(10), "did not stop");
                std::thread::sleep(Duration::from_millis(20));
            }
            t.join().unwrap()
        }
    }

    impl Drop for Running {
        fn drop(&mut self) {
            self.term.store(true, Ordering::SeqCst);
        }
    }

    fn start(s: &Scratch, w: &SharedWorld, resync: Duration) -> Running {
        start_with(s, w, resync, |_, make| make)
    }

    /// [`start`], with `adjust` changing the options and the sides.
    fn start_with(
        s: &Scratch,
        w: &SharedWorld,
        resync: Duration,
        adjust: impl FnOnce(&mut DaemonOptions, SidesFactory) -> SidesFactory,
    ) -> Running {
        let initial = load(&s.config()).unwrap();
        let mut opts = DaemonOptions::new(s.config(), HostFacts { random_fully: true });
        opts.metrics_listen = "127.0.0.1:0".parse().ok();
        opts.control_socket = Some(s.socket());
        opts.resync_interval = resync;
        opts.sighup = false;
        opts.backoff_base = Duration::from_millis(50);
        opts.backoff_cap = Duration::from_millis(200);
        opts.watch = WatchConfig {
            debounce: Duration::from_millis(50),
            max_delay: Duration::from_millis(500),
            settle: Duration::from_millis(5),
        };
        opts.stop_timeout = Duration::from_secs(5);
        let w2 = Arc::clone(w);
        #[allow(clippy::result_large_err)] // the router crate's `host::Factory` error type
        let make = SidesFactory::new(move || fake::sides(&w2)());
        let make = adjust(&mut opts, make);
        let term = Arc::new(AtomicBool::new(false));
        let t = Arc::clone(&term);
        let thread = std::thread::spawn(move || {
            run(
                opts,
                initial,
                Arc::new(reload),
                make,
                Notifier::disabled(),
                t,
            )
        });
        Running {
            term,
            thread: Some(thread),
            socket: s.socket(),
        }
    }

    fn wait(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(Instant::now() < deadline, "{what}: not within 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn world() -> SharedWorld {
        Arc::new(Mutex::new(World::with_bridges(&[
            "br-t1", "br-t2", "br-ex",
        ])))
    }

    /// Drift: `addr` deleted from router `id`'s namespace behind the agent's back.
    fn drop_address(w: &SharedWorld, id: &str, addr: &str) {
        let mut w = lock(w);
        let ns = w
            .namespaces
            .iter_mut()
            .find(|(n, _)| n.as_str() == format!("qrouter-{id}"))
            .map(|(_, ns)| ns)
            .unwrap();
        ns.addresses.retain(|(_, a)| a.to_string() != addr);
    }

    fn has_address(w: &SharedWorld, addr: &str) -> bool {
        lock(w)
            .namespaces
            .values()
            .any(|ns| ns.addresses.iter().any(|(_, a)| a.to_string() == addr))
    }

    fn ops(w: &SharedWorld) -> Vec<String> {
        std::mem::take(&mut lock(w).log)
    }

    fn has_route(w: &SharedWorld, id: &str, dst: &str) -> bool {
        lock(w)
            .namespaces
            .iter()
            .find(|(n, _)| n.as_str() == format!("qrouter-{id}"))
            .is_some_and(|(_, ns)| ns.routes.iter().any(|r| r.dst.to_string() == dst))
    }

    fn with_route(id: &str, dst: &str) -> Value {
        let mut r = router(id);
        r["routes"] = json!([{"destination": dst, "nexthop": "192.0.2.50"}]);
        r
    }

    /// What an event's routers get started ahead: only routers still configured, none for
    /// more than `PRESTART_MAX` routers or a full apply.
    #[test]
    fn only_an_events_few_configured_routers_get_their_restore_started_ahead() {
        let s = scratch();
        s.write_routers(&[router(A)]);
        let cfg = load(&s.config()).unwrap();
        let key = |id: &str| Key::Router(RouterId::new("id", id).unwrap());
        let ids = |v: Vec<&RouterId>| v.iter().map(|id| id.to_string()).collect::<Vec<_>>();
        assert_eq!(ids(to_prestart(&[key(A)], &cfg)), [A]);
        assert!(
            to_prestart(&[key(B)], &cfg).is_empty(),
            "B is not configured"
        );
        assert_eq!(ids(to_prestart(&[key(A), key(B)], &cfg)), [A]);
        let c = "5d2ab1e0-0000-4000-8000-00000000000c";
        assert_eq!(PRESTART_MAX, 2);
        assert!(to_prestart(&[key(A), key(B), key(c)], &cfg).is_empty());
        assert!(to_prestart(&[Key::Full, key(A)], &cfg).is_empty());
    }

    /// A changed router gets its restore started ahead as its batch begins, and the batch
    /// releases, after it, what was started before it ended; the start-up apply starts
    /// nothing ahead.
    #[test]
    fn a_changed_router_is_started_ahead_as_its_batch_begins_and_released_after_it() {
        let s = scratch();
        let w = world();
        s.write_routers(&[router(A), router(B)]);
        type Calls = Arc<Mutex<Vec<(String, Instant)>>>;
        let calls: Calls = Arc::default();
        let (starts, releases) = (Arc::clone(&calls), Arc::clone(&calls));
        let d = start_with(&s, &w, Duration::from_secs(3600), move |_, make| {
            make.prestarting(
                move |id| lock(&starts).push((format!("start {id}"), Instant::now())),
                move |ended| lock(&releases).push(("release".into(), ended)),
            )
        });
        wait("ready", || d.status()["ready"] == true);
        wait("the start-up batch's release", || !lock(&calls).is_empty());
        assert!(
            lock(&calls).iter().all(|(c, _)| c == "release"),
            "{:?}",
            lock(&calls)
        );
        lock(&calls).clear();
        ops(&w);

        s.write_routers(&[router(A), with_route(B, "100.64.1.0/24")]);
        wait("B's new route", || has_route(&w, B, "100.64.1.0/24"));
        let started = || {
            lock(&calls)
                .iter()
                .find(|(c, _)| c.starts_with("start"))
                .cloned()
        };
        let (what, at) = started().expect("B started ahead");
        assert_eq!(what, format!("start {B}"));
        wait("a release by the batch, after the start", || {
            lock(&calls)
                .iter()
                .any(|(c, ended)| c == "release" && *ended > at)
        });
        assert_eq!(
            lock(&calls)
                .iter()
                .filter(|(c, _)| c.starts_with("start"))
                .count(),
            1,
            "{:?}",
            lock(&calls)
        );
        // B's re-check (a batch with no event) starts nothing ahead.
        lock(&calls).clear();
        std::thread::sleep(RECHECKS[0] + Duration::from_secs(1));
        assert!(
            lock(&calls).iter().any(|(c, _)| c == "release"),
            "no batch ran: {:?}",
            lock(&calls)
        );
        assert!(
            lock(&calls).iter().all(|(c, _)| c == "release"),
            "{:?}",
            lock(&calls)
        );
        d.stop().unwrap();
    }

    #[test]
    fn a_reload_touches_only_the_changed_router_and_a_failing_router_backs_off_alone() {
        let s = scratch();
        let w = world();
        s.write_routers(&[router(A), router(B)]);
        let d = start(&s, &w, Duration::from_secs(3600));
        wait("ready", || d.status()["ready"] == true);
        assert_eq!(d.state_of(A).as_deref(), Some("converged"));
        assert_eq!(d.state_of(B).as_deref(), Some("converged"));
        ops(&w);

        // B changed: only B's namespace sees operations.
        s.write_routers(&[router(A), with_route(B, "100.64.1.0/24")]);
        wait("B's new route", || has_route(&w, B, "100.64.1.0/24"));
        let log = ops(&w);
        assert!(!log.is_empty());
        assert!(
            !log.iter().any(|l| l.contains(A)),
            "A was touched: {log:#?}"
        );

        // An invalid file changes nothing and is reported.
        s.write(r#"{"agent": {}, "routers": [{"id": "no such thing!"}]}"#);
        wait("the invalid load", || d.status()["config"]["ok"] == false);
        let st = d.status();
        assert_eq!(st["config"]["invalid_loads"], 1, "{st:#}");
        assert_eq!(st["config"]["routers"], 2, "{st:#}");
        assert!(ops(&w).is_empty());

        // B fails once (injected), backs off, and is retried to success; A is unaffected.
        lock(&w).fail_on = Some(format!("qrouter-{B}"));
        s.write_routers(&[router(A), with_route(B, "100.64.2.0/24")]);
        wait("B retried to success", || {
            has_route(&w, B, "100.64.2.0/24") && d.state_of(B).as_deref() == Some("converged")
        });
        let log = ops(&w);
        assert!(lock(&w).fail_on.is_none(), "the failure was never injected");
        assert!(
            !log.iter().any(|l| l.contains(A)),
            "A was touched: {log:#?}"
        );
        assert_eq!(d.state_of(A).as_deref(), Some("converged"));

        // B removed from the config: its namespace goes, and so does it from the status.
        s.write_routers(&[router(A)]);
        wait("B removed", || {
            !lock(&w).namespaces.keys().any(|n| n.as_str().contains(B)) && d.state_of(B).is_none()
        });
        assert_eq!(d.state_of(A).as_deref(), Some("converged"));
        let socket = d.socket.clone();
        d.stop().unwrap();
        assert!(!socket.exists(), "the control socket outlived the agent");
        // Routers stay when the agent stops.
        assert!(lock(&w)
            .namespaces
            .keys()
            .any(|n| n.as_str() == format!("qrouter-{A}")));
    }

    #[test]
    fn drift_is_repaired_by_the_periodic_refresh_and_counted_by_kind() {
        let s = scratch();
        let w = world();
        s.write_routers(&[router(A)]);
        let d = start(&s, &w, Duration::from_millis(300));
        wait("ready", || d.status()["ready"] == true);
        // Two refreshes of a converged host repair nothing.
        std::thread::sleep(Duration::from_millis(700));
        assert_eq!(d.status()["drift_repairs"], 0);
        drop_address(&w, A, "192.0.2.4/24");
        wait("the repair", || {
            d.status()["drift_repairs"].as_u64() >= Some(1)
        });
        assert!(has_address(&w, "192.0.2.4/24"));
        let text = d.scrape();
        assert!(
            text.contains("l3agent_drift_repairs_total{kind=\"address\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("l3agent_routers{state=\"converged\"} 1"),
            "{text}"
        );
        d.stop().unwrap();
    }

    #[test]
    fn traffic_counters_are_read_when_scraped_for_configured_routers_only() {
        use crate::traffic::{fake::FakeTraffic, Observed};
        use l3agent_rtnl::link_stats::LinkCounters;
        struct Shared(Arc<FakeTraffic>);
        impl crate::traffic::TrafficSource for Shared {
            fn read(&self, t: &crate::traffic::Target) -> Result<Option<Observed>, AgentError> {
                self.0.read(t)
            }
        }
        let s = scratch();
        let w = world();
        s.write_routers(&[router(A), router(B)]);
        let fake = Arc::new(FakeTraffic::default());
        let counters = |rx| {
            Ok(Observed {
                links: vec![(
                    "qg-184a6791-c4".to_owned(),
                    LinkCounters {
                        rx_bytes: rx,
                        rx_packets: 1,
                        tx_bytes: 7,
                        tx_packets: 1,
                    },
                )],
                rules: Vec::new(),
            })
        };
        fake.set(&format!("qrouter-{A}"), counters(1500));
        fake.set(&format!("qrouter-{B}"), counters(900));
        let source = Shared(Arc::clone(&fake));
        let d = start_with(&s, &w, Duration::from_secs(3600), move |opts, make| {
            opts.traffic_max_age = Duration::from_millis(200);
            make.traffic(source)
        });
        wait("ready", || d.status()["ready"] == true);
        // Nothing is read until a scrape asks.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(fake.reads(), 0);
        let series = |id: &str| {
            format!("l3agent_router_traffic_bytes_total{{router=\"{id}\",direction=\"ingress\"}}")
        };
        assert_eq!(d.sample(&series(A)), Some(1500.0));
        assert_eq!(d.sample(&series(B)), Some(900.0));
        assert_eq!(fake.reads(), 2, "one read per router");
        // B removed from the config: its series go at the next reading.
        s.write_routers(&[router(A)]);
        wait("B removed", || d.state_of(B).is_none());
        std::thread::sleep(Duration::from_millis(250));
        let text = d.scrape();
        assert!(text.contains(&series(A)), "{text}");
        assert!(!text.contains(B), "{text}");
        d.stop().unwrap();
    }

    #[test]
    fn rechecks_due_with_an_event_wait_for_its_apply() {
        const C: &str = "5d2ab1e0-0000-4000-8000-00000000000c";
        const D: &str = "5d2ab1e0-0000-4000-8000-00000000000d";
        let key = |id: &str| Key::Router(RouterId::new("id", id).unwrap());
        let rid = |id: &str| RouterId::new("id", id).unwrap();
        let asked: BTreeSet<Key> = [key(A)].into();
        let rechecking: BTreeSet<RouterId> = [rid(B), rid(C)].into();
        // B only re-checked: after A's apply. C also asked for by an event: with A.
        let asked_c: BTreeSet<Key> = [key(A), key(C)].into();
        assert_eq!(
            split_rechecks(vec![key(B), key(A), key(C)], &asked_c, &rechecking),
            (vec![key(A), key(C)], vec![key(B)])
        );
        assert_eq!(
            split_rechecks(vec![key(B), key(A), key(C)], &asked, &rechecking),
            (vec![key(A)], vec![key(B), key(C)])
        );
        assert_eq!(
            split_rechecks(vec![key(B), key(C)], &asked, &rechecking),
            (vec![], vec![key(B), key(C)])
        );
        assert_eq!(
            split_rechecks(vec![key(A)], &asked, &rechecking),
            (vec![key(A)], vec![])
        );
        // A router without an event nor a re-check (a retry after backoff) goes first.
        assert_eq!(
            split_rechecks(vec![key(B), key(D)], &asked, &rechecking),
            (vec![key(D)], vec![key(B)])
        );
    }

    #[test]
    fn a_later_recheck_reads_the_namespace_again_even_when_a_picture_of_it_is_kept() {
        let s = scratch();
        let w = world();
        s.write_routers(&[router(A)]);
        let d = start(&s, &w, Duration::from_secs(3600));
        wait("ready", || d.status()["ready"] == true);
        // The first re-check (RECHECKS[0] after the start-up's writes) finds A converged and
        // keeps its picture; the drift comes after it, and only the second re-check (which
        // must read, not take the picture) can see it.
        std::thread::sleep(RECHECKS[0] + Duration::from_secs(2));
        assert_eq!(d.status()["drift_repairs"], 0);
        drop_address(&w, A, "192.0.2.4/24");
        wait("the repair by the second recheck", || {
            d.status()["drift_repairs"].as_u64() >= Some(1)
        });
        assert!(has_address(&w, "192.0.2.4/24"));
        d.stop().unwrap();
    }

    #[test]
    fn a_change_undone_right_after_it_was_made_is_seen_by_a_recheck_not_the_refresh() {
        let s = scratch();
        let w = world();
        s.write_routers(&[router(A)]);
        // No refresh during the test: only the re-checks after the start-up's writes.
        let d = start(&s, &w, Duration::from_secs(3600));
        wait("ready", || d.status()["ready"] == true);
        drop_address(&w, A, "192.0.2.4/24");
        wait("the repair by a recheck", || {
            d.status()["drift_repairs"].as_u64() >= Some(1)
        });
        assert!(has_address(&w, "192.0.2.4/24"));
        d.stop().unwrap();
    }

    #[test]
    fn a_feed_drives_the_agent_and_hears_each_routers_outcome() {
        let s = scratch();
        let w = world();
        s.write_routers(&[]);
        let initial = load(&s.config()).unwrap();
        let mut opts = DaemonOptions::new(s.config(), HostFacts { random_fully: true });
        opts.metrics_listen = None;
        opts.control_socket = Some(s.socket());
        opts.sighup = false;
        opts.stop_timeout = Duration::from_secs(5);
        let w2 = Arc::clone(&w);
        #[allow(clippy::result_large_err)] // the router crate's `host::Factory` error type
        let make = SidesFactory::new(move || fake::sides(&w2)());
        let (tx, rx) = mpsc::channel();
        let heard: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
        let h = Arc::clone(&heard);
        let feed = Feed {
            events: rx,
            on_result: Arc::new(move |id, outcome| {
                lock(&h).push((id.to_string(), outcome.ok));
            }),
        };
        let term = Arc::new(AtomicBool::new(false));
        let t = Arc::clone(&term);
        let thread = std::thread::spawn(move || {
            run_fed(
                opts,
                initial,
                Arc::new(reload),
                make,
                Notifier::disabled(),
                t,
                Some(feed),
            )
        });
        let d = Running {
            term,
            thread: Some(thread),
            socket: s.socket(),
        };
        wait("ready", || d.status()["ready"] == true);
        // The config file is not the source: writing it changes nothing.
        s.write_routers(&[router(A)]);
        std::thread::sleep(Duration::from_millis(300));
        assert!(!lock(&w).namespaces.keys().any(|n| n.as_str().ends_with(A)));
        // The feed is.
        s.write_routers(&[router(A)]);
        tx.send(FeedEvent::Config(Box::new(load(&s.config()).unwrap())))
            .unwrap();
        wait("the router from the feed", || {
            lock(&heard).contains(&(A.to_owned(), true))
        });
        assert!(lock(&w)
            .namespaces
            .keys()
            .any(|n| n.as_str() == format!("qrouter-{A}")));
        s.write_routers(&[]);
        tx.send(FeedEvent::Config(Box::new(load(&s.config()).unwrap())))
            .unwrap();
        wait("the router removed", || {
            !lock(&w).namespaces.keys().any(|n| n.as_str().ends_with(A))
        });
        d.stop().unwrap();
    }
    const HA_NET: &str = "5b0c2e4a-8d1f-4e3b-9a6c-7d2e1f0a3b4c";

    /// Router A as an HA router (VRID 7), this host's HA port 169.254.192.5/18.
    fn ha_router() -> Value {
        let mut r = router(A);
        r["ha"] = json!(true);
        r["ha_vr_id"] = json!(7);
        r["_ha_interface"] = json!({
            "id": "1111aaaa-bbbb-4ccc-8ddd-eeeeffff0000", "network_id": HA_NET,
            "mac_address": "fa:16:3e:00:00:07",
            "fixed_ips": [{"ip_address": "169.254.192.5", "prefixlen": 18,
                           "subnet_id": "2222aaaa-bbbb-4ccc-8ddd-eeeeffff0000"}],
            "subnets": [{"id": "2222aaaa-bbbb-4ccc-8ddd-eeeeffff0000",
                         "cidr": "169.254.192.0/18", "gateway_ip": null}]});
        r
    }

    impl Scratch {
        /// A host with the HA network's bridge and the metadata proxy (a master-only daemon).
        fn write_ha_routers(&self, routers: &[Value]) {
            self.write(
                &json!({
                    "agent": {"mode": "legacy", "host": "host-a", "state_path": self.0.join("state"),
                        "metadata_proxy": {"socket": self.0.join("md.sock")},
                        "bridges": {
                            "90e4912c-0eb8-4be4-a793-e6a3bba6ae8b": "br-t1",
                            "c6910e18-fb1f-4988-9af4-211a8c2e2926": "br-t2",
                            "65566f91-133a-44ff-87f5-ecffc1193d3d": "br-ex",
                            HA_NET: "br-ha"}},
                    "routers": routers,
                })
                .to_string(),
            );
        }
    }

    /// keepalived makes this host the master of router A: its primary VIP and the router's
    /// addresses appear.
    fn become_master(w: &SharedWorld) {
        let mut w = lock(w);
        let n = w
            .namespaces
            .iter_mut()
            .find(|(n, _)| n.as_str() == format!("qrouter-{A}"))
            .map(|(_, ns)| ns)
            .unwrap();
        for (dev, net) in [
            ("ha-1111aaaa-bb", "169.254.0.7/24"),
            ("qr-081ed401-2a", "192.0.2.4/24"),
            ("qg-184a6791-c4", "203.0.113.4/24"),
        ] {
            n.addresses.insert((dev.to_owned(), net.parse().unwrap()));
        }
    }

    #[test]
    fn an_ha_transition_is_reconciled_once_per_burst_as_an_event_and_shown_in_status_and_metrics() {
        use crate::ha::fake::FakeMonitors;
        let settle = Duration::from_millis(400);
        let s = scratch();
        let w: SharedWorld = Arc::new(Mutex::new(World::with_bridges(&[
            "br-t1", "br-t2", "br-ex", "br-ha",
        ])));
        s.write_ha_routers(&[ha_router(), router(B)]);
        let monitors = FakeMonitors::default();
        let ns_a = names::router_ns(&RouterId::new("id", A).unwrap());
        let ns_b = names::router_ns(&RouterId::new("id", B).unwrap());
        monitors.create(&ns_a);
        monitors.create(&ns_b);
        let m = monitors.clone();
        let d = start_with(&s, &w, Duration::from_secs(3600), move |opts, make| {
            opts.ha_settle = settle;
            make.ha_monitors(m)
        });
        wait("ready", || d.status()["ready"] == true);
        // The start-up's batch ended before this.
        let ready = Instant::now();
        assert_eq!(d.field_of(A, "ha_state").as_deref(), Some("backup"));
        // Only HA routers are watched, and only they have an `ha_state`.
        wait("A watched", || monitors.is_open(&ns_a));
        assert!(!monitors.is_open(&ns_b));
        assert_eq!(d.state_of(B).as_deref(), Some("converged"));
        assert_eq!(d.field_of(B, "ha_state"), None);
        // The subscription is reported: A is looked at once more (an event: timed).
        let reconciles = "l3agent_reconcile_duration_seconds_count";
        wait("the reconcile after the subscription", || {
            d.sample(reconciles) == Some(1.0)
        });
        assert_eq!(d.sample("l3agent_ha_routers{state=\"backup\"}"), Some(1.0));
        assert_eq!(d.sample("l3agent_ha_routers{state=\"master\"}"), Some(0.0));
        // Past the re-check of the start-up's writes (2 s after them), so that only the
        // HA events make A reconciled below.
        std::thread::sleep(RECHECKS[0].saturating_sub(ready.elapsed()) + settle);
        ops(&w);

        // keepalived makes this host the master; its address events come in a burst.
        become_master(&w);
        let first = Instant::now();
        for _ in 0..4 {
            assert!(monitors.poke(&ns_a));
            std::thread::sleep(Duration::from_millis(20));
        }
        wait("A read as master", || {
            d.field_of(A, "ha_state").as_deref() == Some("master")
        });
        assert!(
            first.elapsed() >= settle,
            "acted on before the settle delay: {:?}",
            first.elapsed()
        );
        let log = ops(&w);
        assert!(
            log.iter()
                .any(|l| l.starts_with("start") && l.contains("haproxy")),
            "the master's metadata proxy was not started: {log:#?}"
        );
        assert!(
            !log.iter().any(|l| l.contains(B)),
            "B was touched: {log:#?}"
        );
        // One reconcile for the burst, timed as an event's; nothing counted as drift.
        std::thread::sleep(settle * 2);
        assert_eq!(d.sample(reconciles), Some(2.0));
        assert_eq!(d.status()["drift_repairs"], 0);
        assert_eq!(d.sample("l3agent_ha_routers{state=\"master\"}"), Some(1.0));
        assert_eq!(d.sample("l3agent_ha_routers{state=\"backup\"}"), Some(0.0));
        assert_eq!(
            d.sample("l3agent_ha_transitions_total{to=\"master\"}"),
            Some(1.0)
        );
        assert_eq!(
            d.sample("l3agent_ha_transitions_total{to=\"backup\"}"),
            Some(0.0)
        );

        // Removed from the config: no longer watched, nor counted.
        s.write_ha_routers(&[router(B)]);
        wait("A's monitor dropped", || !monitors.is_open(&ns_a));
        wait("A gone", || d.state_of(A).is_none());
        assert_eq!(d.sample("l3agent_ha_routers{state=\"master\"}"), Some(0.0));
        d.stop().unwrap();
    }

    fn result(status: RouterStatus, ha_state: Option<HaState>) -> host::RouterResult {
        host::RouterResult {
            id: A.into(),
            status,
            changes: Vec::new(),
            error: None,
            ha_state,
            daemons: Vec::new(),
        }
    }

    #[test]
    fn a_view_keeps_the_last_ha_state_read_and_tells_transitions_apart_from_first_readings() {
        use HaState::{Backup, Master};
        let mut v = View::pending();
        let read = |v: &mut View, r: host::RouterResult| ha_reading(&r).and_then(|h| v.read_ha(h));
        // The first reading is no transition.
        assert_eq!(
            read(&mut v, result(RouterStatus::Unchanged, Some(Backup))),
            None
        );
        assert_eq!(v.ha_state, Some(Backup));
        assert_eq!(
            read(&mut v, result(RouterStatus::Converged, Some(Backup))),
            None
        );
        assert_eq!(
            read(&mut v, result(RouterStatus::Converged, Some(Master))),
            Some(Backup)
        );
        assert_eq!(v.ha_state, Some(Master));
        // A failure before the state was read says nothing: the last reading stays.
        assert_eq!(read(&mut v, result(RouterStatus::Failed, None)), None);
        assert_eq!(read(&mut v, result(RouterStatus::Skipped, None)), None);
        assert_eq!(v.ha_state, Some(Master));
        // A failure after reading it counts.
        assert_eq!(
            read(&mut v, result(RouterStatus::Failed, Some(Backup))),
            Some(Master)
        );
        // No longer HA: no state, and no transition when it is HA again.
        assert_eq!(read(&mut v, result(RouterStatus::Converged, None)), None);
        assert_eq!(v.ha_state, None);
        assert_eq!(
            read(&mut v, result(RouterStatus::Converged, Some(Master))),
            None
        );
    }

    #[test]
    fn the_status_shows_ha_state_for_ha_routers_only() {
        let mut v = View::pending();
        let plain = v.json(A);
        assert!(plain.get("ha_state").is_none(), "{plain}");
        assert_eq!(plain["state"], "pending");
        v.ha_state = Some(HaState::Master);
        assert_eq!(v.json(A)["ha_state"], "master");
        v.ha_state = Some(HaState::Backup);
        assert_eq!(v.json(A)["ha_state"], "backup");
        assert!(v.json(A).get("daemons").is_none());
        v.daemons = vec![Service::Haproxy, Service::Keepalived];
        assert_eq!(v.json(A)["daemons"], json!(["haproxy", "keepalived"]));
    }
}
