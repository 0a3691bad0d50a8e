//! The Neutron front end of the agent (`l3agent agent --config-file ...`): it turns what
//! neutron-server says over RPC into the desired state of [`l3agent_agent::daemon`], and the
//! agent's results into floating IP statuses. Threads and channels; it never touches the
//! kernel.
//!
//! ```text
//!  AgentRpcServer ──► notify thread ─┐
//!  report thread (report_state) ─────┤ Msg (revived)
//!                                    ▼
//!            sync thread: Syncer ── get_router_ids / sync_routers (chunks) ──► neutron-server
//!              │ desired routers (RouterDoc by id, last valid version kept)
//!              ▼ FeedEvent::Config (whole validated state) / Routers (reconcile these)
//!           daemon::run_fed (work queue, reconciler, kernel)
//!              │ on_result(router, outcome)  (never blocks: a channel send)
//!              ▼
//!            status thread ── update_floatingip_statuses (only what changed) ──► neutron-server
//! ```
//!
//! - **Start** ([`Front::start`]): the RPC server consumes first, state reports start, then a
//!   full sync runs until it succeeds (or the agent is stopped). Its result is the daemon's
//!   initial state: the daemon's first full apply adopts what is in the kernel and changes
//!   only what differs, so a restart leaves routers untouched. Nothing is ever applied from
//!   an empty state that stands for "the server could not be asked".
//! - **Full sync** (at start, when `report_state` answers `revived`, on `agent_updated` with
//!   `admin_state_up`, after any RPC failure, and after the broker connection came back):
//!   `get_router_ids`, then `sync_routers` in chunks of 256 that halve (down to 32) when a
//!   chunk times out. The routers not returned are removed.
//! - **Notifications**: `routers_updated` and `router_added_to_agent` fetch the named routers
//!   (`sync_routers`); a router not returned is removed (deleted, unscheduled or admin down,
//!   as in Neutron). `router_deleted` and `router_removed_from_agent` drop it at once.
//!   `network_update` fetches the routers with a port on that network (MTU).
//!   `fipnamespace_delete_on_ext_net`, `add_arp_entry` and `del_arp_entry` mark the affected
//!   routers for a reconcile only: DVR ARP entries for tenant ports are not programmed yet,
//!   and the `fip-` namespace goes when its last router's gateway goes (the reconciler's
//!   own rule).
//! - **Router dicts** are read as [`RouterDoc`] and validated alone, then together. A dict
//!   that does not parse or validate (or an HA router: not supported yet) is left out with
//!   its problems logged and its floating IPs reported `ERROR`; it never holds the others
//!   back. A router in force whose new dict is refused keeps its last valid version.
//! - **Floating IP statuses** after each router's outcome: `ACTIVE` when it converged,
//!   `ERROR` when it failed, `DOWN` for a router that is admin down and for floating IPs that
//!   left a router; sent only when they differ from what the server has (the dict's
//!   `status`, then what this agent last reported). A failed report is tried again.
//! - **Broker or server unreachable**: calls fail, the state in force stays (never an empty
//!   state), a full sync is tried again with backoff up to `periodic_interval`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use l3agent_agent::daemon::{Feed, FeedEvent, RouterOutcome};
use l3agent_router::config::{
    AgentDoc, AgentMode as RouterAgentMode, ConfigDoc, ConfigError, HostConfig, InterfaceDriver,
    RouterDoc,
};
use l3agent_types::{Echo, FloatingIpId, NetworkId, RouterId};
use serde_json::Value;
use tracing::{debug, error, info, warn};

use crate::amqp::{backoff, Transport};
use crate::config::{AgentMode, NeutronAgentConfig};
use crate::error::NeutronError;
use crate::l3::RouterCounts;
use crate::l3::{AgentRpcServer, AgentState, AgentStatus, FipStatus, Notification, PluginApi};

/// Neutron's largest `sync_routers` chunk (`SYNC_ROUTERS_MAX_CHUNK_SIZE`).
pub const SYNC_CHUNK_MAX: usize = 256;
/// Neutron's smallest `sync_routers` chunk (`SYNC_ROUTERS_MIN_CHUNK_SIZE`).
pub const SYNC_CHUNK_MIN: usize = 32;
/// The subdirectory of Neutron's `state_path` that holds l3agent's records.
pub const STATE_SUBDIR: &str = "l3agent";

/// How the front end runs.
#[derive(Debug, Clone)]
pub struct FrontOptions {
    /// `[AGENT] report_interval` (`None`: no state reports).
    pub report_interval: Option<Duration>,
    /// Each call's timeout (`rpc_response_timeout`).
    pub rpc_timeout: Duration,
    /// The longest wait before a failed sync is tried again (`periodic_interval`).
    pub periodic_interval: Duration,
    /// The first wait before a failed sync is tried again (doubling up to
    /// `periodic_interval`, with jitter).
    pub retry_base: Duration,
    /// Largest `sync_routers` chunk.
    pub chunk_max: usize,
    /// Smallest `sync_routers` chunk.
    pub chunk_min: usize,
    /// `handle_internal_only_routers`: routers without a gateway are hosted.
    pub handle_internal_only_routers: bool,
}

impl FrontOptions {
    /// The options of an agent config.
    pub fn from_config(cfg: &NeutronAgentConfig) -> FrontOptions {
        FrontOptions {
            report_interval: cfg.report_interval,
            rpc_timeout: cfg.rpc_response_timeout,
            periodic_interval: cfg.periodic_interval,
            retry_base: Duration::from_secs(1),
            chunk_max: SYNC_CHUNK_MAX,
            chunk_min: SYNC_CHUNK_MIN,
            handle_internal_only_routers: cfg.handle_internal_only_routers,
        }
    }
}

/// Why the front end could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrontError {
    /// The config asks for something the reconciler cannot do.
    #[error("{0}")]
    Config(String),
    /// The RPC server could not be registered.
    #[error("{0}")]
    Rpc(#[from] NeutronError),
    /// A thread could not be started.
    #[error("starting the {what} thread: {source}")]
    Thread {
        /// Which.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The stop flag was set before the first full sync succeeded.
    #[error("stopped before the first full sync")]
    Stopped,
}

/// The reconciler's `agent` section for a Neutron config: `openvswitch` ports on the
/// integration bridge through `[OVS] ovsdb_connection`, records under
/// `<state_path>/l3agent`. Checked (a config the reconciler refuses is an error).
pub fn agent_doc(cfg: &NeutronAgentConfig) -> Result<AgentDoc, FrontError> {
    let mode = match cfg.agent_mode {
        AgentMode::Legacy => RouterAgentMode::Legacy,
        AgentMode::Dvr => RouterAgentMode::Dvr,
        AgentMode::DvrSnat => RouterAgentMode::DvrSnat,
        AgentMode::DvrNoExternal => {
            return Err(FrontError::Config(
                "[DEFAULT] agent_mode = dvr_no_external is not supported yet (legacy, dvr, dvr_snat are)"
                    .into(),
            ))
        }
    };
    let doc = AgentDoc {
        mode,
        host: cfg.host.clone(),
        state_path: cfg.state_path.join(STATE_SUBDIR),
        bridges: BTreeMap::new(),
        interface_driver: Some(InterfaceDriver::Openvswitch),
        integration_bridge: Some(cfg.integration_bridge.to_string()),
        ovsdb: Some(cfg.ovsdb_connection.clone()),
    };
    ConfigDoc {
        agent: doc.clone(),
        routers: Vec::new(),
    }
    .validate()
    .map_err(|errors| {
        FrontError::Config(
            errors
                .iter()
                .map(|e| format!("{} (from the Neutron config): {}", e.path, e.message))
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    Ok(doc)
}

// ---------------------------------------------------------------------------------------
// Pure parts: chunk sizes, router dicts, the desired state, floating IP statuses.
// ---------------------------------------------------------------------------------------

/// The `sync_routers` chunk size: halves on a timeout down to the minimum, grows back by
/// the minimum after each full sync that succeeded (Neutron's LP#1516260 behaviour).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSize {
    size: usize,
    min: usize,
    max: usize,
}

impl ChunkSize {
    /// Starts at `max`.
    pub fn new(min: usize, max: usize) -> ChunkSize {
        let min = min.max(1);
        let max = max.max(min);
        ChunkSize {
            size: max,
            min,
            max,
        }
    }

    /// The size now.
    pub fn get(&self) -> usize {
        self.size
    }

    /// A chunk timed out: halve. `false` when already at the minimum (give up this sync).
    pub fn timed_out(&mut self) -> bool {
        if self.size <= self.min {
            return false;
        }
        self.size = (self.size / 2).max(self.min);
        true
    }

    /// A full sync succeeded: grow back by the minimum.
    pub fn succeeded(&mut self) {
        self.size = (self.size + self.min).min(self.max);
    }
}

/// Why a router dict is not put in force as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// Not for this agent (no gateway while `handle_internal_only_routers` is false):
    /// handled like a router the server did not return.
    NotHandled,
    /// Unusable: the problems. Its floating IPs are reported `ERROR`; a version in force
    /// stays.
    Invalid(Vec<String>),
}

/// One router dict, read.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// Its id.
    pub id: RouterId,
    /// The document, or why not.
    pub doc: Result<RouterDoc, Rejection>,
    /// Its floating IPs with the status the server has for each (if it said).
    pub fips: BTreeMap<FloatingIpId, Option<FipStatus>>,
}

fn fip_status(s: &str) -> Option<FipStatus> {
    match s {
        "ACTIVE" => Some(FipStatus::Active),
        "DOWN" => Some(FipStatus::Down),
        "ERROR" => Some(FipStatus::Error),
        _ => None,
    }
}

/// Reads one dict of `sync_routers`: `Err` (why) when it has no usable id.
pub fn parse_router(
    dict: &Value,
    agent: &AgentDoc,
    handle_internal_only_routers: bool,
) -> Result<Parsed, String> {
    let raw_id = dict.get("id").and_then(Value::as_str).ok_or_else(|| {
        format!(
            "a router dict without an id: {}",
            Echo(&dict.to_string().chars().take(200).collect::<String>())
        )
    })?;
    let id = RouterId::new("id", raw_id).map_err(|e| e.to_string())?;
    let mut fips = BTreeMap::new();
    if let Some(list) = dict.get("_floatingips").and_then(Value::as_array) {
        for f in list {
            let Some(fid) = f
                .get("id")
                .and_then(Value::as_str)
                .and_then(|s| FloatingIpId::new("id", s).ok())
            else {
                continue;
            };
            let status = f.get("status").and_then(Value::as_str).and_then(fip_status);
            fips.insert(fid, status);
        }
    }
    let doc = check_router(dict, agent, handle_internal_only_routers);
    Ok(Parsed { id, doc, fips })
}

fn check_router(
    dict: &Value,
    agent: &AgentDoc,
    handle_internal_only_routers: bool,
) -> Result<RouterDoc, Rejection> {
    if dict.get("ha").and_then(Value::as_bool) == Some(true) {
        return Err(Rejection::Invalid(vec![
            "ha: HA routers are not supported yet".into(),
        ]));
    }
    let doc: RouterDoc = serde_json::from_value(dict.clone())
        .map_err(|e| Rejection::Invalid(vec![format!("not a router dict: {e}")]))?;
    if !handle_internal_only_routers && doc.gw_port.is_none() {
        return Err(Rejection::NotHandled);
    }
    ConfigDoc {
        agent: agent.clone(),
        routers: vec![doc.clone()],
    }
    .validate()
    .map_err(|errors| Rejection::Invalid(errors.iter().map(relative).collect()))?;
    Ok(doc)
}

/// A problem with the `routers[i].` prefix taken off its path.
fn relative(e: &ConfigError) -> String {
    match router_index(&e.path) {
        Some((_, "")) => e.message.clone(),
        Some((_, rest)) => format!("{rest}: {}", e.message),
        None => e.to_string(),
    }
}

/// `routers[3]._interfaces[0].mtu` → (3, `_interfaces[0].mtu`).
fn router_index(path: &str) -> Option<(usize, &str)> {
    let rest = path.strip_prefix("routers[")?;
    let (n, rest) = rest.split_once(']')?;
    let n = n.parse().ok()?;
    Some((n, rest.strip_prefix('.').unwrap_or(rest)))
}

/// A router document in force, with its JSON form (to see whether a new dict changes it).
#[derive(Debug, Clone)]
pub struct Kept {
    /// The document.
    pub doc: RouterDoc,
    value: Value,
}

impl Kept {
    /// Keeps `doc`.
    pub fn new(doc: RouterDoc) -> Kept {
        let value = serde_json::to_value(&doc).unwrap_or(Value::Null);
        Kept { doc, value }
    }
}

/// Which routers a fetch answers for: those of the host (a full sync) or the ones asked.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// Every router of this host: routers not returned are removed.
    All,
    /// These routers: those of them not returned are removed.
    Only(&'a BTreeSet<RouterId>),
}

/// What a merge did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Merged {
    /// Routers whose (valid) dict was returned: reconciled even when unchanged.
    pub returned: BTreeSet<RouterId>,
    /// Routers whose dict was refused, with the problems and their floating IPs.
    pub invalid: BTreeMap<RouterId, Vec<String>>,
    /// The floating IPs of refused dicts.
    pub invalid_fips: BTreeMap<RouterId, BTreeSet<FloatingIpId>>,
    /// It answered for every router of the host (a full sync).
    pub full: bool,
    /// Routers removed.
    pub removed: BTreeSet<RouterId>,
    /// What the server says of each floating IP returned.
    pub server: BTreeMap<FloatingIpId, FipStatus>,
}

/// The desired routers, by id.
pub type Desired = BTreeMap<RouterId, Kept>;

/// Merges fetched dicts into `desired` (see the module docs).
pub fn merge(desired: &mut Desired, scope: Scope<'_>, fetched: Vec<Parsed>) -> Merged {
    let mut m = Merged {
        full: matches!(scope, Scope::All),
        ..Merged::default()
    };
    let mut seen = BTreeSet::new();
    for p in fetched {
        if let Scope::Only(ids) = scope {
            if !ids.contains(&p.id) {
                // The server answered for a router not asked about: take it anyway (it is
                // this host's), but it does not stand for the others.
                debug!(router = %p.id, "sync_routers returned a router not asked for");
            }
        }
        seen.insert(p.id.clone());
        for (f, s) in &p.fips {
            if let Some(s) = s {
                m.server.insert(f.clone(), *s);
            }
        }
        match p.doc {
            Ok(doc) => {
                desired.insert(p.id.clone(), Kept::new(doc));
                m.returned.insert(p.id);
            }
            Err(Rejection::NotHandled) => {
                if desired.remove(&p.id).is_some() {
                    m.removed.insert(p.id);
                }
            }
            Err(Rejection::Invalid(problems)) => {
                m.invalid_fips
                    .insert(p.id.clone(), p.fips.keys().cloned().collect());
                m.invalid.insert(p.id, problems);
            }
        }
    }
    let gone: Vec<RouterId> = match scope {
        Scope::All => desired
            .keys()
            .filter(|id| !seen.contains(*id))
            .cloned()
            .collect(),
        Scope::Only(ids) => ids
            .iter()
            .filter(|id| !seen.contains(*id) && desired.contains_key(*id))
            .cloned()
            .collect(),
    };
    for id in gone {
        desired.remove(&id);
        m.removed.insert(id);
    }
    m
}

/// Validates `desired` as a whole. A problem across routers (a floating IP in two routers,
/// colliding device names) is blamed on the routers of its paths that changed since
/// `previous` (else on all of them): each goes back to its version in `previous`, or out,
/// and is added to `invalid`. Bounded: a few rounds, then `Err` (nothing in force changes).
pub fn assemble(
    agent: &AgentDoc,
    desired: &mut Desired,
    previous: &Desired,
    invalid: &mut BTreeMap<RouterId, Vec<String>>,
) -> Result<HostConfig, Vec<String>> {
    let mut last = Vec::new();
    for _ in 0..4 {
        let ids: Vec<RouterId> = desired.keys().cloned().collect();
        let doc = ConfigDoc {
            agent: agent.clone(),
            routers: desired.values().map(|k| k.doc.clone()).collect(),
        };
        let errors = match doc.validate() {
            Ok(cfg) => return Ok(cfg),
            Err(errors) => errors,
        };
        last = errors.iter().map(ToString::to_string).collect();
        let mut blamed: BTreeMap<RouterId, Vec<String>> = BTreeMap::new();
        for e in &errors {
            match router_index(&e.path).and_then(|(i, _)| ids.get(i)) {
                Some(id) => blamed.entry(id.clone()).or_default().push(relative(e)),
                None => return Err(last),
            }
        }
        let changed: BTreeSet<RouterId> = blamed
            .keys()
            .filter(|id| previous.get(*id).map(|k| &k.value) != desired.get(*id).map(|k| &k.value))
            .cloned()
            .collect();
        let culprits: Vec<(RouterId, Vec<String>)> = blamed
            .into_iter()
            .filter(|(id, _)| changed.is_empty() || changed.contains(id))
            .collect();
        for (id, problems) in culprits {
            match previous.get(&id) {
                Some(k) if changed.contains(&id) => {
                    desired.insert(id.clone(), k.clone());
                }
                _ => {
                    desired.remove(&id);
                }
            }
            invalid.entry(id).or_default().extend(problems);
        }
    }
    Err(last)
}

/// The counts `report_state` carries.
pub fn counts(cfg: &HostConfig) -> RouterCounts {
    let host = &cfg.agent.host;
    RouterCounts {
        routers: cfg.routers.len() as u64,
        ex_gw_ports: cfg.routers.iter().filter(|r| r.gw_port.is_some()).count() as u64,
        interfaces: cfg.routers.iter().map(|r| r.interfaces.len() as u64).sum(),
        floating_ips: cfg
            .routers
            .iter()
            .map(|r| r.fips.iter().filter(|f| f.is_local(host)).count() as u64)
            .sum(),
    }
}

/// One router's floating IPs as the status worker sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterFips {
    /// The router is admin up.
    pub admin_state_up: bool,
    /// Its floating IPs served by this host.
    pub fips: BTreeSet<FloatingIpId>,
}

/// The statuses a router's floating IPs should have: `ok` is the router's last outcome
/// (`None`: none yet), `invalid` its floating IPs of a refused dict (`ERROR`), `gone` the
/// ones that left it (`DOWN`).
pub fn wanted_statuses(
    router: Option<&RouterFips>,
    ok: Option<bool>,
    invalid: Option<&BTreeSet<FloatingIpId>>,
    gone: Option<&BTreeSet<FloatingIpId>>,
) -> BTreeMap<FloatingIpId, FipStatus> {
    let mut out = BTreeMap::new();
    for f in gone.into_iter().flatten() {
        out.insert(f.clone(), FipStatus::Down);
    }
    if let Some(r) = router {
        let status = if !r.admin_state_up {
            Some(FipStatus::Down)
        } else {
            ok.map(|ok| {
                if ok {
                    FipStatus::Active
                } else {
                    FipStatus::Error
                }
            })
        };
        if let Some(s) = status {
            for f in &r.fips {
                out.insert(f.clone(), s);
            }
        }
    }
    for f in invalid.into_iter().flatten() {
        out.insert(f.clone(), FipStatus::Error);
    }
    out
}

/// The statuses of `wanted` the server does not have yet.
pub fn changed_statuses(
    wanted: &BTreeMap<FloatingIpId, FipStatus>,
    server: &BTreeMap<FloatingIpId, FipStatus>,
) -> BTreeMap<FloatingIpId, FipStatus> {
    wanted
        .iter()
        .filter(|(f, s)| server.get(*f) != Some(*s))
        .map(|(f, s)| (f.clone(), *s))
        .collect()
}

/// What the status worker and the state reports read, kept by the sync thread.
#[derive(Debug, Default)]
struct Book {
    /// The routers in force.
    routers: BTreeMap<RouterId, RouterFips>,
    /// The counts of the state in force.
    counts: RouterCounts,
    /// What the server has for each floating IP, as far as this agent knows.
    server: BTreeMap<FloatingIpId, FipStatus>,
    /// Floating IPs of refused dicts, by router.
    invalid: BTreeMap<RouterId, BTreeSet<FloatingIpId>>,
    /// Floating IPs that left a router in force (reported DOWN once).
    gone: BTreeMap<RouterId, BTreeSet<FloatingIpId>>,
    /// Each router's last outcome.
    outcome: BTreeMap<RouterId, bool>,
    /// The first state report was tried (answered or failed).
    reported: bool,
}

impl Book {
    /// Puts a new state in force.
    fn install(&mut self, cfg: &HostConfig, merged: &Merged) {
        let host = &cfg.agent.host;
        let routers: BTreeMap<RouterId, RouterFips> = cfg
            .routers
            .iter()
            .map(|r| {
                (
                    r.id.clone(),
                    RouterFips {
                        admin_state_up: r.admin_state_up,
                        fips: r
                            .fips
                            .iter()
                            .filter(|f| !r.distributed || f.is_local(host))
                            .map(|f| f.id.clone())
                            .collect(),
                    },
                )
            })
            .collect();
        for (id, new) in &routers {
            let gone = self.gone.entry(id.clone()).or_default();
            if let Some(old) = self.routers.get(id) {
                gone.extend(old.fips.difference(&new.fips).cloned());
            }
            gone.retain(|f| !new.fips.contains(f));
        }
        self.gone
            .retain(|id, g| routers.contains_key(id) && !g.is_empty());
        self.outcome.retain(|id, _| routers.contains_key(id));
        self.routers = routers;
        self.counts = counts(cfg);
        self.server.extend(merged.server.clone());
        for id in &merged.returned {
            self.invalid.remove(id);
        }
        for id in &merged.removed {
            self.invalid.remove(id);
        }
        if merged.full {
            // Refused routers the server no longer returns are forgotten.
            self.invalid
                .retain(|id, _| merged.invalid_fips.contains_key(id));
        }
        for (id, fips) in &merged.invalid_fips {
            self.invalid.insert(id.clone(), fips.clone());
        }
    }

    /// What to send for `id` now.
    fn to_send(&self, id: &RouterId) -> BTreeMap<FloatingIpId, FipStatus> {
        let wanted = wanted_statuses(
            self.routers.get(id),
            self.outcome.get(id).copied(),
            self.invalid.get(id),
            self.gone.get(id),
        );
        changed_statuses(&wanted, &self.server)
    }

    /// The server took `sent` for `id`.
    fn reported(&mut self, id: &RouterId, sent: &BTreeMap<FloatingIpId, FipStatus>) {
        self.server
            .extend(sent.iter().map(|(f, s)| (f.clone(), *s)));
        if let Some(g) = self.gone.get_mut(id) {
            g.retain(|f| !sent.contains_key(f));
            if g.is_empty() {
                self.gone.remove(id);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------
// Threads.
// ---------------------------------------------------------------------------------------

/// What the sync thread hears.
#[derive(Debug)]
enum Msg {
    Notify(Notification),
    /// `report_state` answered `revived`.
    Revived,
}

/// What the status thread hears.
#[derive(Debug)]
enum StatusMsg {
    /// A router's outcome after a batch.
    Outcome(RouterId, bool),
    /// Look at a router again (its dict was refused).
    Check(RouterId),
}

/// What the sync thread has to do.
#[derive(Debug, Default)]
struct Pending {
    full: bool,
    fetch: BTreeSet<RouterId>,
    delete: BTreeSet<RouterId>,
    reconcile: BTreeSet<RouterId>,
    fetch_networks: BTreeSet<NetworkId>,
    reconcile_networks: BTreeSet<NetworkId>,
}

impl Pending {
    fn add(&mut self, n: Notification) {
        match n {
            Notification::RoutersUpdated { routers }
            | Notification::RouterAddedToAgent { routers } => {
                for id in routers {
                    self.delete.remove(&id);
                    self.fetch.insert(id);
                }
            }
            Notification::RouterDeleted { router_id }
            | Notification::RouterRemovedFromAgent { router_id } => {
                self.fetch.remove(&router_id);
                self.delete.insert(router_id);
            }
            Notification::AgentUpdated { admin_state_up } => {
                if admin_state_up {
                    info!("agent_updated: admin state up, full sync");
                    self.full = true;
                } else {
                    info!("agent_updated: admin state down; routers stay as they are");
                }
            }
            Notification::FipNamespaceDeleteOnExtNet { ext_net_id } => {
                self.reconcile_networks.insert(ext_net_id);
            }
            Notification::AddArpEntry(e) | Notification::DelArpEntry(e) => {
                debug!(router = %e.router_id, ip = %e.ip_address, "DVR ARP entry: not programmed yet; the router is reconciled");
                self.reconcile.insert(e.router_id);
            }
            Notification::NetworkUpdate { network_id, .. } => {
                self.fetch_networks.insert(network_id);
            }
        }
    }

    fn is_empty(&self) -> bool {
        !self.full
            && self.fetch.is_empty()
            && self.delete.is_empty()
            && self.reconcile.is_empty()
            && self.fetch_networks.is_empty()
            && self.reconcile_networks.is_empty()
    }
}

/// The routers of `desired` with a port (gateway or interface) on `net`.
fn routers_on(desired: &Desired, net: &NetworkId, gateway_only: bool) -> BTreeSet<RouterId> {
    desired
        .iter()
        .filter(|(_, k)| {
            let d = &k.doc;
            d.gw_port
                .iter()
                .chain(if gateway_only {
                    [].iter()
                } else {
                    d.interfaces.iter()
                })
                .any(|p| p.network_id == net.as_str())
        })
        .map(|(id, _)| id.clone())
        .collect()
}

/// The sync thread's state.
struct Syncer {
    api: PluginApi,
    agent: AgentDoc,
    opts: FrontOptions,
    desired: Desired,
    /// The routers of the last state sent (their JSON forms), to send only changes.
    sent: BTreeMap<RouterId, Value>,
    chunk: ChunkSize,
    book: Arc<Mutex<Book>>,
    status_tx: Sender<StatusMsg>,
}

impl Syncer {
    /// `sync_routers` for `ids`, in chunks.
    fn fetch_dicts(&mut self, ids: &[RouterId]) -> Result<Vec<Value>, NeutronError> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < ids.len() {
            let n = self.chunk.get();
            let chunk = &ids[i..(i + n).min(ids.len())];
            match self.api.sync_routers(Some(chunk)) {
                Ok(dicts) => {
                    out.extend(dicts);
                    i += chunk.len();
                }
                Err(e @ NeutronError::Timeout { .. }) => {
                    if self.chunk.timed_out() {
                        warn!(error = %e, chunk = self.chunk.get(), "sync_routers timed out: smaller chunks");
                    } else {
                        error!(error = %e, chunk = n, "sync_routers timed out even with the smallest chunk: the server may be overloaded");
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    fn parse(&self, dicts: &[Value]) -> Vec<Parsed> {
        dicts
            .iter()
            .filter_map(|d| {
                match parse_router(d, &self.agent, self.opts.handle_internal_only_routers) {
                    Ok(p) => Some(p),
                    Err(why) => {
                        error!(%why, "router dict ignored");
                        None
                    }
                }
            })
            .collect()
    }

    /// A full sync: the new state (`None`: it does not validate, nothing changes), not
    /// sent yet.
    fn full_sync(&mut self) -> Result<(Option<HostConfig>, Merged), NeutronError> {
        let t = Instant::now();
        let ids = self.api.get_router_ids()?;
        let dicts = self.fetch_dicts(&ids)?;
        self.chunk.succeeded();
        let fetched = self.parse(&dicts);
        let previous = self.desired.clone();
        let mut merged = merge(&mut self.desired, Scope::All, fetched);
        let cfg = self.assemble(&previous, &mut merged);
        info!(
            scheduled = ids.len(),
            routers = self.desired.len(),
            refused = merged.invalid.len(),
            took_ms = t.elapsed().as_millis() as u64,
            "full sync"
        );
        Ok((cfg, merged))
    }

    /// Validates the state; `None` (and the state in force restored) when it does not.
    fn assemble(&mut self, previous: &Desired, merged: &mut Merged) -> Option<HostConfig> {
        match assemble(
            &self.agent,
            &mut self.desired,
            previous,
            &mut merged.invalid,
        ) {
            Ok(cfg) => Some(cfg),
            Err(problems) => {
                error!(problems = %problems.join("; "), "the routers do not validate together: the state in force stays");
                self.desired = previous.clone();
                None
            }
        }
    }

    /// Logs refused dicts, installs the state in the book and tells the status thread.
    fn record(&mut self, cfg: &HostConfig, merged: &Merged) {
        for (id, problems) in &merged.invalid {
            let kept = self.desired.contains_key(id);
            error!(
                router = %id,
                problems = %problems.join("; "),
                kept_version_in_force = kept,
                "router dict refused; its floating IPs are reported ERROR"
            );
        }
        lock(&self.book).install(cfg, merged);
        for id in merged.invalid.keys() {
            let _ = self.status_tx.send(StatusMsg::Check(id.clone()));
        }
    }

    /// Sends the state if it changed, and asks for a reconcile of `returned` routers whose
    /// dicts did not change. False when the daemon is gone.
    fn publish(
        &mut self,
        cfg: Option<HostConfig>,
        merged: &Merged,
        feed: &Sender<FeedEvent>,
    ) -> bool {
        let Some(cfg) = cfg else {
            return true;
        };
        self.record(&cfg, merged);
        let now: BTreeMap<RouterId, Value> = self
            .desired
            .iter()
            .map(|(id, k)| (id.clone(), k.value.clone()))
            .collect();
        let unchanged: Vec<RouterId> = merged
            .returned
            .iter()
            .filter(|id| now.contains_key(*id) && now.get(*id) == self.sent.get(*id))
            .cloned()
            .collect();
        let mut alive = true;
        if now != self.sent {
            info!(
                routers = cfg.routers.len(),
                removed = merged.removed.len(),
                "desired state changed"
            );
            alive &= feed.send(FeedEvent::Config(Box::new(cfg))).is_ok();
            self.sent = now;
        }
        if !unchanged.is_empty() {
            alive &= feed.send(FeedEvent::Routers(unchanged)).is_ok();
        }
        alive
    }

    /// Fetches `ids` and merges them.
    fn fetch(
        &mut self,
        ids: &BTreeSet<RouterId>,
    ) -> Result<(Option<HostConfig>, Merged), NeutronError> {
        let list: Vec<RouterId> = ids.iter().cloned().collect();
        let dicts = self.fetch_dicts(&list)?;
        let fetched = self.parse(&dicts);
        let previous = self.desired.clone();
        let mut merged = merge(&mut self.desired, Scope::Only(ids), fetched);
        let cfg = self.assemble(&previous, &mut merged);
        Ok((cfg, merged))
    }

    fn delete(&mut self, ids: &BTreeSet<RouterId>) -> (Option<HostConfig>, Merged) {
        let previous = self.desired.clone();
        let mut merged = Merged::default();
        for id in ids {
            if self.desired.remove(id).is_some() {
                info!(router = %id, "router deleted or unscheduled: removed");
            }
            // Also forgets a refused dict of it.
            merged.removed.insert(id.clone());
        }
        let cfg = self.assemble(&previous, &mut merged);
        (cfg, merged)
    }

    /// The first full sync, tried until it succeeds (`None`: halted first). It waits (a
    /// few seconds at most) for the first state report, so that the server knows the agent
    /// when it is asked for its routers.
    fn first_sync(
        &mut self,
        halt: &AtomicBool,
        wait_report: bool,
    ) -> Option<(HostConfig, Duration)> {
        let t = Instant::now();
        let deadline = t + Duration::from_secs(10);
        while wait_report
            && !lock(&self.book).reported
            && Instant::now() < deadline
            && !halt.load(Ordering::SeqCst)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut failures = 0u32;
        let (initial, merged) = loop {
            if halt.load(Ordering::SeqCst) {
                return None;
            }
            let why = match self.full_sync() {
                Ok((Some(cfg), merged)) => break (cfg, merged),
                Ok((None, _)) => "the routers do not validate together".to_owned(),
                Err(e) => e.to_string(),
            };
            let wait = backoff(failures, self.opts.retry_base, self.opts.periodic_interval);
            failures = failures.saturating_add(1);
            warn!(error = %why, retry_in_ms = wait.as_millis() as u64, "first full sync failed: nothing is changed until one succeeds");
            let until = Instant::now() + wait;
            while Instant::now() < until && !halt.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
            }
        };
        let took = t.elapsed();
        self.record(&initial, &merged);
        self.sent = self
            .desired
            .iter()
            .map(|(id, k)| (id.clone(), k.value.clone()))
            .collect();
        info!(
            routers = initial.routers.len(),
            took_ms = took.as_millis() as u64,
            "first full sync done: the agent converges these routers"
        );
        Some((initial, took))
    }

    /// The sync thread: until `halt`, or the feed is gone.
    fn run(mut self, rx: &Receiver<Msg>, feed: &Sender<FeedEvent>, halt: &AtomicBool) {
        let transport: Transport = self.api.transport().clone();
        let mut generation = transport.generation();
        let mut pending = Pending::default();
        let mut failures = 0u32;
        let mut retry_at: Option<Instant> = None;
        while !halt.load(Ordering::SeqCst) {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(m) => self.take(m, &mut pending),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    // The RPC server is gone (shutting down): keep timers going until halted.
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            while let Ok(m) = rx.try_recv() {
                self.take(m, &mut pending);
            }
            let g = transport.generation();
            if g != generation {
                if generation > 0 {
                    info!(
                        connection = g,
                        "reconnected to the broker: full sync (notifications may have been lost)"
                    );
                    pending.full = true;
                }
                generation = g;
            }
            if pending.is_empty() {
                continue;
            }
            // Deletions need no call: at once.
            if !pending.delete.is_empty() {
                let ids = std::mem::take(&mut pending.delete);
                let (cfg, merged) = self.delete(&ids);
                if !self.publish(cfg, &merged, feed) {
                    return;
                }
            }
            if !pending.reconcile_networks.is_empty() {
                let nets = std::mem::take(&mut pending.reconcile_networks);
                for net in nets {
                    pending
                        .reconcile
                        .extend(routers_on(&self.desired, &net, true));
                }
            }
            if !pending.fetch_networks.is_empty() {
                let nets = std::mem::take(&mut pending.fetch_networks);
                for net in nets {
                    pending.fetch.extend(routers_on(&self.desired, &net, false));
                }
            }
            if !pending.reconcile.is_empty() {
                let ids: Vec<RouterId> = std::mem::take(&mut pending.reconcile)
                    .into_iter()
                    .filter(|id| self.desired.contains_key(id))
                    .collect();
                if !ids.is_empty() && feed.send(FeedEvent::Routers(ids)).is_err() {
                    return;
                }
            }
            if retry_at.is_some_and(|t| Instant::now() < t) {
                continue;
            }
            let result = if pending.full {
                self.full_sync().map(|r| (r, true))
            } else if !pending.fetch.is_empty() {
                let ids = pending.fetch.clone();
                self.fetch(&ids).map(|r| (r, false))
            } else {
                continue;
            };
            match result {
                Ok(((cfg, merged), full)) => {
                    // Nothing was taken from the channel during the calls: all done.
                    if full {
                        pending.full = false;
                    }
                    pending.fetch.clear();
                    failures = 0;
                    retry_at = None;
                    if !self.publish(cfg, &merged, feed) {
                        return;
                    }
                }
                Err(e) => {
                    let wait = backoff(failures, self.opts.retry_base, self.opts.periodic_interval);
                    failures = failures.saturating_add(1);
                    warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "syncing routers failed: the state in force stays; a full sync is tried again");
                    pending.full = true;
                    retry_at = Some(Instant::now() + wait);
                }
            }
        }
    }

    fn take(&mut self, m: Msg, pending: &mut Pending) {
        match m {
            Msg::Notify(n) => {
                debug!(notification = ?n, "notification");
                pending.add(n);
            }
            Msg::Revived => {
                info!("the server had marked this agent dead (revived): full sync");
                pending.full = true;
            }
        }
    }
}

/// The state report thread.
fn report_loop(
    api: &PluginApi,
    mut state: AgentState,
    interval: Duration,
    book: &Mutex<Book>,
    tx: &Sender<Msg>,
    halt: &AtomicBool,
) {
    let mut failing = false;
    while !halt.load(Ordering::SeqCst) {
        let started = Instant::now();
        state.counts = lock(book).counts;
        let result = api.report_state(&state);
        lock(book).reported = true;
        match result {
            Ok(status) => {
                if failing {
                    info!(?status, "state reports get through again");
                    failing = false;
                }
                debug!(?status, counts = ?state.counts, "state reported");
                state.start_flag = false;
                if status == AgentStatus::Revived && tx.send(Msg::Revived).is_err() {
                    return;
                }
            }
            Err(e) => {
                if !failing {
                    warn!(error = %e, "report_state failed (the server may mark this agent dead; routers stay)");
                }
                failing = true;
            }
        }
        let next = started + interval;
        while Instant::now() < next && !halt.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100).min(next - Instant::now()));
        }
    }
}

/// The floating IP status thread.
fn status_loop(
    api: &PluginApi,
    book: &Mutex<Book>,
    rx: &Receiver<StatusMsg>,
    retry_base: Duration,
    retry_cap: Duration,
    halt: &AtomicBool,
) {
    let mut dirty: BTreeSet<RouterId> = BTreeSet::new();
    let mut retry: BTreeMap<RouterId, (Instant, u32)> = BTreeMap::new();
    let take = |m: StatusMsg, dirty: &mut BTreeSet<RouterId>| match m {
        StatusMsg::Outcome(id, ok) => {
            lock(book).outcome.insert(id.clone(), ok);
            dirty.insert(id);
        }
        StatusMsg::Check(id) => {
            dirty.insert(id);
        }
    };
    while !halt.load(Ordering::SeqCst) {
        match rx.recv_timeout(Duration::from_millis(250)) {
            Ok(m) => take(m, &mut dirty),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        while let Ok(m) = rx.try_recv() {
            take(m, &mut dirty);
        }
        let now = Instant::now();
        for (id, (at, _)) in &retry {
            if *at <= now {
                dirty.insert(id.clone());
            }
        }
        for id in std::mem::take(&mut dirty) {
            if halt.load(Ordering::SeqCst) {
                return;
            }
            let send = lock(book).to_send(&id);
            if send.is_empty() {
                retry.remove(&id);
                continue;
            }
            match api.update_floatingip_statuses(&id, &send) {
                Ok(()) => {
                    info!(router = %id, statuses = ?send.iter().map(|(f, s)| (f.as_str(), s.as_str())).collect::<Vec<_>>(), "floating IP statuses reported");
                    lock(book).reported(&id, &send);
                    retry.remove(&id);
                }
                Err(e) => {
                    let round = retry.get(&id).map_or(0, |(_, r)| *r);
                    let wait = backoff(round, retry_base, retry_cap);
                    warn!(router = %id, error = %e, retry_in_ms = wait.as_millis() as u64, "update_floatingip_statuses failed");
                    retry.insert(id, (Instant::now() + wait, round.saturating_add(1)));
                }
            }
        }
    }
}

/// The running front end: its threads and RPC server. [`Front::stop`] ends them.
#[derive(Debug)]
pub struct Front {
    halt: Arc<AtomicBool>,
    server: Option<AgentRpcServer>,
    threads: Vec<JoinHandle<()>>,
}

/// What [`Front::start`] hands the daemon.
#[derive(Debug)]
pub struct Started {
    /// The front end, to stop after the daemon returns.
    pub front: Front,
    /// The state of the first full sync: the daemon's initial state.
    pub initial: HostConfig,
    /// The feed for [`l3agent_agent::daemon::run_fed`].
    pub feed: Feed,
    /// How long the first full sync took (first try to success).
    pub first_sync: Duration,
}

fn spawn(
    what: &'static str,
    f: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, FrontError> {
    std::thread::Builder::new()
        .name(format!("neutron-{what}").chars().take(15).collect())
        .spawn(f)
        .map_err(|source| FrontError::Thread { what, source })
}

impl Front {
    /// Registers the agent's RPC server on `transport`, starts state reports and runs the
    /// first full sync until it succeeds (retrying with backoff) or `stop` is set.
    pub fn start(
        cfg: &NeutronAgentConfig,
        transport: &Transport,
        opts: FrontOptions,
        stop: &AtomicBool,
    ) -> Result<Started, FrontError> {
        let agent = agent_doc(cfg)?;
        let halt = Arc::new(AtomicBool::new(false));
        let mut front = Front {
            halt: Arc::clone(&halt),
            server: None,
            threads: Vec::new(),
        };
        let (server, notes) = AgentRpcServer::start(transport, &cfg.host)?;
        front.server = Some(server);
        let api = PluginApi::new(transport.clone(), &cfg.host, opts.rpc_timeout);
        let book = Arc::new(Mutex::new(Book::default()));
        let (msg_tx, msg_rx) = mpsc::channel::<Msg>();
        let (status_tx, status_rx) = mpsc::channel::<StatusMsg>();

        {
            let tx = msg_tx.clone();
            front.threads.push(spawn("notify", move || {
                for n in notes {
                    if tx.send(Msg::Notify(n)).is_err() {
                        return;
                    }
                }
            })?);
        }
        if let Some(interval) = opts.report_interval {
            let report_api = PluginApi::new(
                transport.clone(),
                &cfg.host,
                interval.clamp(
                    Duration::from_secs(5),
                    opts.rpc_timeout.max(Duration::from_secs(5)),
                ),
            );
            let state = AgentState::from_config(cfg);
            let (book, tx, halt) = (Arc::clone(&book), msg_tx.clone(), Arc::clone(&halt));
            front.threads.push(spawn("report", move || {
                report_loop(&report_api, state, interval, &book, &tx, &halt);
            })?);
        } else {
            info!("[AGENT] report_interval = 0: no state reports (the server will see this agent dead)");
        }
        drop(msg_tx);
        {
            let (api, book, halt) = (api.clone(), Arc::clone(&book), Arc::clone(&halt));
            let (base, cap) = (opts.retry_base, opts.periodic_interval);
            front.threads.push(spawn("status", move || {
                status_loop(&api, &book, &status_rx, base, cap, &halt);
            })?);
        }

        let mut syncer = Syncer {
            api,
            agent,
            chunk: ChunkSize::new(opts.chunk_min, opts.chunk_max),
            opts: opts.clone(),
            desired: Desired::new(),
            sent: BTreeMap::new(),
            book,
            status_tx: status_tx.clone(),
        };
        // The sync thread runs the first full sync, hands its state over, then follows
        // the server; this thread waits for the hand-over and for the stop flag.
        let (init_tx, init_rx) = mpsc::channel::<(HostConfig, Duration)>();
        let (feed_tx, feed_rx) = mpsc::channel::<FeedEvent>();
        {
            let halt = Arc::clone(&halt);
            let wait_report = opts.report_interval.is_some();
            front.threads.push(spawn("sync", move || {
                let Some(first) = syncer.first_sync(&halt, wait_report) else {
                    return;
                };
                if init_tx.send(first).is_err() {
                    return;
                }
                syncer.run(&msg_rx, &feed_tx, &halt);
            })?);
        }
        let (initial, first_sync) = loop {
            if stop.load(Ordering::SeqCst) {
                front.stop();
                return Err(FrontError::Stopped);
            }
            match init_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(first) => break first,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    front.stop();
                    return Err(FrontError::Thread {
                        what: "sync",
                        source: std::io::Error::other("it ended before the first full sync"),
                    });
                }
            }
        };
        let on_result = Arc::new(move |id: &RouterId, outcome: &RouterOutcome| {
            let _ = status_tx.send(StatusMsg::Outcome(id.clone(), outcome.ok));
        });
        Ok(Started {
            front,
            initial,
            feed: Feed {
                events: feed_rx,
                on_result,
            },
            first_sync,
        })
    }

    /// Stops the threads and the RPC server; a thread still in a call after `within` is
    /// left behind (it ends with the process).
    pub fn stop_within(mut self, within: Duration) {
        self.halt.store(true, Ordering::SeqCst);
        if let Some(s) = self.server.take() {
            s.stop();
        }
        let deadline = Instant::now() + within;
        for t in std::mem::take(&mut self.threads) {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                debug!(thread = ?t.thread().name(), "front end thread still in a call: left behind");
            }
        }
    }

    /// [`Front::stop_within`] 5 s.
    pub fn stop(self) {
        self.stop_within(Duration::from_secs(5));
    }
}

/// The state directory l3agent uses under a Neutron `state_path`.
pub fn state_dir(cfg: &NeutronAgentConfig) -> PathBuf {
    cfg.state_path.join(STATE_SUBDIR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const R1: &str = "2e1bd2e5-640a-424f-a965-331fae02c144";
    const R2: &str = "3e1bd2e5-640a-424f-a965-331fae02c144";
    const F1: &str = "6072c620-60ab-476d-8502-37bdf1b206d4";

    fn agent() -> AgentDoc {
        AgentDoc {
            mode: RouterAgentMode::Legacy,
            host: "net1".into(),
            state_path: "/var/lib/neutron/l3agent".into(),
            bridges: BTreeMap::new(),
            interface_driver: Some(InterfaceDriver::Openvswitch),
            integration_bridge: Some("br-int".into()),
            ovsdb: Some("unix:/run/openvswitch/db.sock".into()),
        }
    }

    /// The dict a real neutron-server 29.0.0 sent (crates/router/tests/data).
    fn server_dict() -> Value {
        serde_json::from_str(include_str!(
            "../../router/tests/data/neutron-server-router.json"
        ))
        .unwrap()
    }

    fn rid(s: &str) -> RouterId {
        RouterId::new("t", s).unwrap()
    }

    fn fid(s: &str) -> FloatingIpId {
        FloatingIpId::new("t", s).unwrap()
    }

    fn parse(d: &Value) -> Parsed {
        parse_router(d, &agent(), true).unwrap()
    }

    /// The server's dict with another id and no floating IPs (two routers that do not
    /// collide).
    fn other(id: &str, mac_last: u8) -> Value {
        let mut d = server_dict();
        d["id"] = json!(id);
        d["_floatingips"] = json!([]);
        d["_interfaces"][0]["id"] =
            json!(format!("e8efedd5-941e-4dbf-8a63-3401d63cd4{mac_last:02x}"));
        d["_interfaces"][0]["mac_address"] = json!(format!("fa:16:3e:01:a6:{mac_last:02x}"));
        d["gw_port"]["id"] = json!("29b73ab3-9d12-4c7a-bdda-5133f49b8000");
        d["gw_port"]["mac_address"] = json!(format!("fa:16:3e:48:90:{mac_last:02x}"));
        d["gw_port"]["fixed_ips"][0]["ip_address"] = json!("203.0.113.99");
        d
    }

    #[test]
    fn chunks_halve_on_timeouts_down_to_the_minimum_and_grow_back() {
        let mut c = ChunkSize::new(32, 256);
        assert_eq!(c.get(), 256);
        assert!(c.timed_out());
        assert_eq!(c.get(), 128);
        assert!(c.timed_out() && c.timed_out());
        assert_eq!(c.get(), 32);
        assert!(!c.timed_out(), "at the minimum: give up");
        c.succeeded();
        assert_eq!(c.get(), 64);
        for _ in 0..10 {
            c.succeeded();
        }
        assert_eq!(c.get(), 256);
        let mut odd = ChunkSize::new(32, 100);
        assert!(odd.timed_out());
        assert_eq!(odd.get(), 50);
        assert!(odd.timed_out());
        assert_eq!(odd.get(), 32);
    }

    #[test]
    fn a_real_server_dict_is_read_with_its_floating_ip_statuses() {
        let p = parse(&server_dict());
        assert_eq!(p.id, rid(R1));
        let doc = p.doc.unwrap();
        assert_eq!(doc.floatingips.len(), 1);
        assert_eq!(p.fips.len(), 1);
        assert!(p.fips.contains_key(&fid(F1)));
    }

    #[test]
    fn refused_dicts_say_why_by_path_and_ha_routers_are_refused() {
        let mut d = server_dict();
        d["gw_port"]["mac_address"] = json!("nope");
        let Err(Rejection::Invalid(problems)) = parse(&d).doc else {
            panic!("accepted")
        };
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("gw_port.mac_address: ")),
            "{problems:?}"
        );
        let mut d = server_dict();
        d["ha"] = json!(true);
        assert!(matches!(parse(&d).doc, Err(Rejection::Invalid(p)) if p[0].contains("HA routers")));
        let mut d = server_dict();
        d["_interfaces"] = json!("x");
        assert!(
            matches!(parse(&d).doc, Err(Rejection::Invalid(p)) if p[0].starts_with("not a router dict"))
        );
        assert!(parse_router(&json!({"name": "x"}), &agent(), true).is_err());
        // handle_internal_only_routers = false: a router without gateway is not ours.
        let mut d = server_dict();
        d["gw_port"] = Value::Null;
        d["_floatingips"] = json!([]);
        assert!(parse_router(&d, &agent(), true).unwrap().doc.is_ok());
        assert_eq!(
            parse_router(&d, &agent(), false).unwrap().doc.unwrap_err(),
            Rejection::NotHandled
        );
    }

    #[test]
    fn merge_replaces_removes_and_keeps_the_last_valid_version() {
        let mut desired = Desired::new();
        let m = merge(
            &mut desired,
            Scope::All,
            vec![parse(&server_dict()), parse(&other(R2, 1))],
        );
        assert_eq!(m.returned.len(), 2);
        assert_eq!(desired.len(), 2);
        assert!(m.removed.is_empty() && m.invalid.is_empty());

        // R1 turns invalid: its version in force stays; its FIPs are listed.
        let mut bad = server_dict();
        bad["gw_port"]["mac_address"] = json!("nope");
        let before = desired[&rid(R1)].value.clone();
        let asked = BTreeSet::from([rid(R1)]);
        let m = merge(&mut desired, Scope::Only(&asked), vec![parse(&bad)]);
        assert!(m.invalid.contains_key(&rid(R1)));
        assert_eq!(m.invalid_fips[&rid(R1)], BTreeSet::from([fid(F1)]));
        assert_eq!(desired[&rid(R1)].value, before);
        assert!(m.removed.is_empty());

        // A targeted fetch that does not return R2: R2 goes, R1 is not touched.
        let asked = BTreeSet::from([rid(R2)]);
        let m = merge(&mut desired, Scope::Only(&asked), vec![]);
        assert_eq!(m.removed, BTreeSet::from([rid(R2)]));
        assert_eq!(desired.keys().collect::<Vec<_>>(), [&rid(R1)]);

        // A full sync that returns nothing removes everything (the server said so).
        let m = merge(&mut desired, Scope::All, vec![]);
        assert_eq!(m.removed, BTreeSet::from([rid(R1)]));
        assert!(desired.is_empty());
    }

    #[test]
    fn a_conflict_between_routers_is_blamed_on_the_one_that_changed() {
        let mut previous = Desired::new();
        merge(&mut previous, Scope::All, vec![parse(&server_dict())]);
        // R2 claims R1's floating IP.
        let mut d2 = other(R2, 2);
        d2["_floatingips"] = server_dict()["_floatingips"].clone();
        d2["_floatingips"][0]["router_id"] = json!(R2);
        let mut desired = previous.clone();
        let mut m = merge(
            &mut desired,
            Scope::All,
            vec![parse(&server_dict()), parse(&d2)],
        );
        let r2_alone = &m.returned;
        assert!(r2_alone.contains(&rid(R2)), "valid alone: {:?}", m.invalid);
        let cfg = assemble(&agent(), &mut desired, &previous, &mut m.invalid);
        let cfg = match cfg {
            Ok(c) => c,
            Err(e) => panic!("{e:?}"),
        };
        // The router in force stays; the newcomer is refused with the problem.
        assert!(m.invalid.contains_key(&rid(R2)), "{:?}", m.invalid);
        assert_eq!(cfg.routers.len(), 1);
        assert_eq!(cfg.routers[0].id, rid(R1));
        assert!(!desired.contains_key(&rid(R2)));
        assert!(!m.invalid.contains_key(&rid(R1)));
    }

    #[test]
    fn statuses_follow_outcomes_admin_state_refusals_and_departures() {
        let (a, b, c) = (
            fid("00000000-0000-4000-8000-00000000000a"),
            fid("00000000-0000-4000-8000-00000000000b"),
            fid("00000000-0000-4000-8000-00000000000c"),
        );
        let r = RouterFips {
            admin_state_up: true,
            fips: BTreeSet::from([a.clone(), b.clone()]),
        };
        let ok = wanted_statuses(Some(&r), Some(true), None, None);
        assert_eq!(ok[&a], FipStatus::Active);
        let failed = wanted_statuses(Some(&r), Some(false), None, None);
        assert_eq!(failed[&b], FipStatus::Error);
        assert!(
            wanted_statuses(Some(&r), None, None, None).is_empty(),
            "no outcome yet"
        );
        let down = RouterFips {
            admin_state_up: false,
            ..r.clone()
        };
        assert_eq!(
            wanted_statuses(Some(&down), Some(true), None, None)[&a],
            FipStatus::Down
        );
        let gone = BTreeSet::from([c.clone()]);
        let invalid = BTreeSet::from([b.clone()]);
        let w = wanted_statuses(Some(&r), Some(true), Some(&invalid), Some(&gone));
        assert_eq!(
            w,
            BTreeMap::from([
                (a.clone(), FipStatus::Active),
                (b.clone(), FipStatus::Error),
                (c.clone(), FipStatus::Down)
            ])
        );
        // Only what the server does not have yet.
        let server = BTreeMap::from([(a.clone(), FipStatus::Active), (b.clone(), FipStatus::Down)]);
        assert_eq!(
            changed_statuses(&w, &server),
            BTreeMap::from([(b, FipStatus::Error), (c, FipStatus::Down)])
        );
    }

    #[test]
    fn the_book_reports_each_change_once_and_floating_ips_that_left_as_down() {
        let mut desired = Desired::new();
        let m = merge(&mut desired, Scope::All, vec![parse(&server_dict())]);
        let prev = Desired::new();
        let mut inv = BTreeMap::new();
        let cfg = assemble(&agent(), &mut desired, &prev, &mut inv).unwrap();
        let mut book = Book::default();
        book.install(&cfg, &m);
        assert_eq!(book.counts.routers, 1);
        assert_eq!(book.counts.ex_gw_ports, 1);
        assert_eq!(book.counts.floating_ips, 1);
        let r1 = rid(R1);
        assert!(book.to_send(&r1).is_empty(), "no outcome yet");
        book.outcome.insert(r1.clone(), true);
        // The dict said ACTIVE already? Then nothing; else ACTIVE.
        let first = book.to_send(&r1);
        if m.server.get(&fid(F1)) == Some(&FipStatus::Active) {
            assert!(first.is_empty());
        } else {
            assert_eq!(first, BTreeMap::from([(fid(F1), FipStatus::Active)]));
            book.reported(&r1, &first);
        }
        assert!(book.to_send(&r1).is_empty(), "reported once");
        book.outcome.insert(r1.clone(), false);
        assert_eq!(
            book.to_send(&r1),
            BTreeMap::from([(fid(F1), FipStatus::Error)])
        );
        book.reported(&r1, &BTreeMap::from([(fid(F1), FipStatus::Error)]));
        book.outcome.insert(r1.clone(), true);

        // The floating IP is disassociated: the new dict has none; DOWN once.
        let mut d = server_dict();
        d["_floatingips"] = json!([]);
        let prev = desired.clone();
        let m = merge(&mut desired, Scope::All, vec![parse(&d)]);
        let cfg = assemble(&agent(), &mut desired, &prev, &mut inv).unwrap();
        book.install(&cfg, &m);
        assert_eq!(book.counts.floating_ips, 0);
        let down = book.to_send(&r1);
        assert_eq!(down, BTreeMap::from([(fid(F1), FipStatus::Down)]));
        book.reported(&r1, &down);
        assert!(book.to_send(&r1).is_empty());
        assert!(book.gone.is_empty());
    }

    #[test]
    fn pending_work_coalesces_in_order() {
        let mut p = Pending::default();
        p.add(Notification::RoutersUpdated {
            routers: vec![rid(R1), rid(R2)],
        });
        p.add(Notification::RouterDeleted { router_id: rid(R1) });
        assert_eq!(p.fetch, BTreeSet::from([rid(R2)]));
        assert_eq!(p.delete, BTreeSet::from([rid(R1)]));
        p.add(Notification::RouterAddedToAgent {
            routers: vec![rid(R1)],
        });
        assert!(p.delete.is_empty());
        assert_eq!(p.fetch.len(), 2);
        p.add(Notification::AgentUpdated {
            admin_state_up: false,
        });
        assert!(!p.full);
        p.add(Notification::AgentUpdated {
            admin_state_up: true,
        });
        assert!(p.full);
    }

    #[test]
    fn network_updates_reach_the_routers_with_a_port_on_the_network() {
        let mut desired = Desired::new();
        merge(&mut desired, Scope::All, vec![parse(&server_dict())]);
        let ext = NetworkId::new("t", "7cbe46e1-f619-4b33-a669-734078a25172").unwrap();
        assert_eq!(routers_on(&desired, &ext, true), BTreeSet::from([rid(R1)]));
        let other = NetworkId::new("t", "00000000-f619-4b33-a669-734078a25172").unwrap();
        assert!(routers_on(&desired, &other, false).is_empty());
    }
}
