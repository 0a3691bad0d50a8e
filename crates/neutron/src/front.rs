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
//!   `add_arp_entry` / `del_arp_entry` change the ARP table of that DVR router (see below).
//!   `fipnamespace_delete_on_ext_net` forgets the agent gateway port of that network and
//!   fetches the DVR routers with a gateway on it again (on a legacy agent: a reconcile);
//!   the `fip-` namespace goes when its last router's gateway goes (the reconciler's rule).
//! - **DVR routers** (on `dvr` and `dvr_snat` agents; NEUTRON-OPS §8.1) get two things the
//!   server's dict does not carry, added by [`augment`]:
//!   - `_arp_table`: the tenant ports' addresses on the subnets of its `qr-` ports, which the
//!     reconciler makes permanent neighbours (and removes the permanent neighbours not
//!     listed, so the table is always complete). Each subnet is read with
//!     `get_ports_by_subnet` when a router first has it and again at every full sync (one
//!     call per subnet per sync, shared by the routers on it): a lost `del_arp_entry` is
//!     repaired at the next full sync. `add_arp_entry` / `del_arp_entry` change it in
//!     between ([`ArpBook`]).
//!   - the agent gateway port (`fg-`) of its external network, when it has floating IPs
//!     here and its dict lacks one: `get_agent_gateway_port`, once per network (cached until
//!     the next full sync or `fipnamespace_delete_on_ext_net`).
//!
//!   A failed call leaves the router as it was (it keeps working without the missing
//!   part); the routers concerned are fetched again after a backoff.
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
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use l3agent_agent::daemon::{Feed, FeedEvent, RouterOutcome};
use l3agent_router::config::{
    AgentDoc, AgentMode as RouterAgentMode, ArpEntryDoc, ConfigDoc, ConfigError, HaDoc, HostConfig,
    InterfaceDriver, MetadataProxyDoc, PortDoc, RouterAdvertisementsDoc, RouterDoc,
};
use l3agent_router::spec::HaState;
use l3agent_types::{Echo, FloatingIpId, MacAddr, NetworkId, RouterId, SubnetId};
use serde_json::Value;
use tracing::{debug, error, info, warn};

use crate::amqp::{backoff, Transport};
use crate::config::{AgentMode, NeutronAgentConfig, VrrpAuthType};
use crate::error::NeutronError;
use crate::l3::RouterCounts;
use crate::l3::{
    AgentRpcServer, AgentState, AgentStatus, ArpEntry, FipStatus, Notification, PluginApi,
};

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
        bridges: Default::default(),
        interface_driver: Some(InterfaceDriver::Openvswitch),
        integration_bridge: Some(cfg.integration_bridge.to_string()),
        ovsdb: Some(cfg.ovsdb_connection.clone()),
        metadata_proxy: cfg.enable_metadata_proxy.then(|| MetadataProxyDoc {
            socket: cfg.metadata_proxy_socket.clone(),
            user: cfg.metadata_proxy_user.clone(),
            group: cfg.metadata_proxy_group.clone(),
            port: Some(cfg.metadata_port),
        }),
        router_advertisements: Some(RouterAdvertisementsDoc {
            enabled: Some(true),
            min_interval: Some(cfg.rtr_adv_intervals.0),
            max_interval: Some(cfg.rtr_adv_intervals.1),
        }),
        ha: Some(HaDoc {
            vrrp_auth_type: Some(
                match cfg.ha.vrrp_auth_type {
                    VrrpAuthType::Pass => "PASS",
                    VrrpAuthType::Ah => "AH",
                }
                .to_owned(),
            ),
            vrrp_auth_password: cfg
                .ha
                .vrrp_auth_password
                .as_ref()
                .map(|s| s.expose().to_owned()),
            vrrp_advert_int: Some(cfg.ha.vrrp_advert_int),
            vrrp_health_check_interval: Some(cfg.ha.vrrp_health_check_interval),
            conntrackd_enabled: Some(cfg.ha.conntrackd_enabled),
            conntrackd_hashsize: cfg.ha.conntrackd.hashsize,
            conntrackd_hashlimit: cfg.ha.conntrackd.hashlimit,
            conntrackd_unix_backlog: cfg.ha.conntrackd.unix_backlog,
            conntrackd_socketbuffersize: cfg.ha.conntrackd.socketbuffersize,
            conntrackd_socketbuffersize_max_grown: cfg.ha.conntrackd.socketbuffersize_max_grown,
            conntrackd_ipv4_mcast_addr: cfg.ha.conntrackd.ipv4_mcast_addr.clone(),
            conntrackd_group: cfg.ha.conntrackd.group,
            conntrackd_sndsocketbuffer: cfg.ha.conntrackd.sndsocketbuffer,
            conntrackd_rcvsocketbuffer: cfg.ha.conntrackd.rcvsocketbuffer,
        }),
        traffic_accounting: None,
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

/// The indexes `routers[N]` named in `text` (a cross-router problem names the other
/// router in its message).
fn routers_named(text: &str) -> impl Iterator<Item = usize> + '_ {
    text.match_indices("routers[")
        .filter_map(|(at, _)| router_index(&text[at..]).map(|(n, _)| n))
}

/// A problem found at router `id`'s path, for another router it names: `router <id>
/// <field>: <message>`.
fn seen_at(e: &ConfigError, id: &RouterId) -> String {
    let field = router_index(&e.path).map_or("", |(_, rest)| rest);
    format!("router {id} {field}: {}", e.message)
}

/// A router document in force, with its JSON form (to see whether a new dict changes it).
#[derive(Debug, Clone)]
pub struct Kept {
    /// The document.
    pub doc: RouterDoc,
    value: Value,
    /// The server's dict, when the front end completed it into `doc` (a DVR router).
    base: Option<Box<RouterDoc>>,
}

impl Kept {
    /// Keeps `doc`.
    pub fn new(doc: RouterDoc) -> Kept {
        let value = serde_json::to_value(&doc).unwrap_or(Value::Null);
        Kept {
            doc,
            value,
            base: None,
        }
    }

    /// Keeps `doc`, the front end's completion of the server's `base` ([`augment`]).
    pub fn augmented(base: RouterDoc, doc: RouterDoc) -> Kept {
        Kept {
            base: Some(Box::new(base)),
            ..Kept::new(doc)
        }
    }

    /// The dict as the server sent it.
    pub fn base(&self) -> &RouterDoc {
        self.base.as_deref().unwrap_or(&self.doc)
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
/// colliding device names, an address or a MAC twice on a network) is blamed on the
/// routers it names (by its path, which is the later router's, and in its message, which
/// names the other) that changed since `previous` (else on all of them): each goes back to
/// its version in `previous`, or out, and is added to `invalid`. A router in force is thus
/// never dropped for a newcomer that collides with it, whichever sorts first. Bounded: a
/// few rounds, then `Err` (nothing in force changes).
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
            let Some(id) = router_index(&e.path).and_then(|(i, _)| ids.get(i)) else {
                return Err(last);
            };
            blamed.entry(id.clone()).or_default().push(relative(e));
            for other in routers_named(&e.message).filter_map(|i| ids.get(i)) {
                if other != id {
                    blamed
                        .entry(other.clone())
                        .or_default()
                        .push(seen_at(e, id));
                }
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

// ---------------------------------------------------------------------------------------
// DVR: the tenant ports' ARP entries (NEUTRON-OPS §8.1) and the agent gateway port.
// ---------------------------------------------------------------------------------------

/// The device owners whose ports get no ARP entry: the routers' own interfaces
/// (`ROUTER_INTERFACE_OWNERS`; `get_dvr_allowed_address_pair_device_owners()` is empty in
/// Neutron 29.0.0).
pub const ARP_SKIPPED_OWNERS: [&str; 3] = [
    "network:router_interface",
    "network:ha_router_replicated_interface",
    "network:router_interface_distributed",
];

/// The most `add_arp_entry` entries kept for subnets a router has no port on yet (Neutron's
/// `_pending_arp_set`, which has no bound: B-19). They wait for the router's next dict.
pub const PENDING_ARP_MAX: usize = 1024;

/// A DVR router's ARP entries: by subnet and address, the MAC.
pub type ArpTable = BTreeMap<(SubnetId, IpAddr), MacAddr>;

/// A subnet's CIDR, for what the ARP entries need of it: which addresses are in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    /// `192.0.2.0/24`, `2001:db8::/64`; `None` for anything else.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, l) = s.split_once('/')?;
        let addr: IpAddr = a.parse().ok()?;
        let len: u8 = l.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (len <= max).then_some(Cidr { addr, len })
    }

    /// Whether `ip` is in it (of its family, same first `len` bits).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// An address a neighbour entry can hold (what the reconciler accepts in `_arp_table`).
fn is_unicast(ip: IpAddr) -> bool {
    !(ip.is_unspecified() || ip.is_loopback() || ip.is_multicast())
        && ip != IpAddr::V4(Ipv4Addr::BROADCAST)
}

/// An allowed address pair's `ip_address` when it names one host: `10.0.0.5`, `10.0.0.5/32`,
/// `2001:db8::5/128` (Neutron's `'/' not in ip or is_cidr_host(ip)`, then `cidr_to_ip`).
fn host_address(s: &str) -> Option<IpAddr> {
    match s.split_once('/') {
        None => s.parse().ok(),
        Some((a, len)) => {
            let ip: IpAddr = a.parse().ok()?;
            let host = if ip.is_ipv4() { "32" } else { "128" };
            (len == host).then_some(ip)
        }
    }
}

/// The subnets of a router's `qr-` ports (those admin up: the reconciler plugs no other), by
/// id. Subnets whose id or CIDR does not parse are left out (the dict does not validate then
/// anyway).
pub fn router_subnets(doc: &RouterDoc) -> BTreeMap<SubnetId, Cidr> {
    doc.interfaces
        .iter()
        .filter(|p| p.admin_state_up)
        .flat_map(|p| &p.subnets)
        .filter_map(|s| Some((SubnetId::new("id", &s.id).ok()?, Cidr::parse(&s.cidr)?)))
        .collect()
}

/// The ARP entries of `subnet` from `get_ports_by_subnet`'s port dicts, as Neutron's
/// `_set_subnet_arp_info` makes them: ports of [`ARP_SKIPPED_OWNERS`] are skipped; each fixed
/// IP in the subnet maps to the port's MAC; each allowed address pair that names one host of
/// the subnet maps to the pair's MAC (the port's when the pair has none). Where two ports
/// claim one address, a fixed IP wins over an allowed address pair, then the last one listed
/// (Neutron's last `neigh replace`). Stricter than Neutron: an address outside the subnet's
/// CIDR, or a MAC or address that cannot be a neighbour's, is left out (the reconciler would
/// not program it).
pub fn subnet_arp_entries(
    subnet: &SubnetId,
    cidr: Cidr,
    ports: &[Value],
) -> BTreeMap<IpAddr, MacAddr> {
    let mut fixed = BTreeMap::new();
    let mut pairs = BTreeMap::new();
    let mut skipped = 0usize;
    let mac_of = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .and_then(|m| MacAddr::parse_unicast("mac_address", m).ok())
    };
    let usable = |ip: IpAddr| cidr.contains(ip) && is_unicast(ip);
    for p in ports {
        let owner = p.get("device_owner").and_then(Value::as_str).unwrap_or("");
        if ARP_SKIPPED_OWNERS.contains(&owner) {
            continue;
        }
        let port_mac = mac_of(p.get("mac_address"));
        for f in p
            .get("fixed_ips")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if f.get("subnet_id").and_then(Value::as_str) != Some(subnet.as_str()) {
                continue;
            }
            let ip = f
                .get("ip_address")
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<IpAddr>().ok());
            match (ip, port_mac) {
                (Some(ip), Some(mac)) if usable(ip) => {
                    fixed.insert(ip, mac);
                }
                _ => skipped += 1,
            }
        }
        for a in p
            .get("allowed_address_pairs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(ip) = a
                .get("ip_address")
                .and_then(Value::as_str)
                .and_then(host_address)
            else {
                continue;
            };
            if ip.is_ipv4() != cidr.addr.is_ipv4() {
                continue;
            }
            let mac = match a.get("mac_address") {
                None | Some(Value::Null) => port_mac,
                m => mac_of(m),
            };
            match mac {
                Some(mac) if usable(ip) => {
                    pairs.insert(ip, mac);
                }
                _ => skipped += 1,
            }
        }
    }
    if skipped > 0 {
        debug!(%subnet, skipped, "addresses outside the subnet or unusable MACs: no ARP entry");
    }
    pairs.extend(fixed);
    pairs
}

/// The ARP tables of the DVR routers hosted here, and what is known of each router's
/// subnets. Entries of a subnet a router has no `qr-` port on (an `add_arp_entry` that came
/// before the dict with the port: Neutron's pending cache) are kept until the router's next
/// dict: they go into force if it has the subnet, and go away if not (bounded, unlike
/// Neutron's, B-19). A router removed takes its table with it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ArpBook {
    routers: BTreeMap<RouterId, RouterArp>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct RouterArp {
    /// The subnets of its `qr-` ports, as of its last dict.
    subnets: BTreeSet<SubnetId>,
    /// Those read with `get_ports_by_subnet` since it has them (or since the last full sync).
    fetched: BTreeSet<SubnetId>,
    /// The entries, pending ones included.
    entries: ArpTable,
}

impl ArpBook {
    /// A dict of DVR router `id` went into force with these `qr-` subnets: entries of other
    /// subnets go, and the subnets to read with `get_ports_by_subnet` are returned (those not
    /// read yet; all of them with `refetch`, at a full sync).
    pub fn router_dict(
        &mut self,
        id: &RouterId,
        subnets: BTreeSet<SubnetId>,
        refetch: bool,
    ) -> BTreeSet<SubnetId> {
        let r = self.routers.entry(id.clone()).or_default();
        let before = r.entries.len();
        r.entries.retain(|(s, _), _| subnets.contains(s));
        if r.entries.len() != before {
            debug!(router = %id, dropped = before - r.entries.len(), "ARP entries of subnets the router has no port on dropped");
        }
        if refetch {
            r.fetched.clear();
        } else {
            r.fetched.retain(|s| subnets.contains(s));
        }
        r.subnets = subnets;
        r.subnets.difference(&r.fetched).cloned().collect()
    }

    /// `get_ports_by_subnet` answered for `subnet`: every router with a port on it gets these
    /// entries for it (replacing what it had: the server's word is the newest). The routers
    /// whose table changed.
    pub fn subnet_fetched(
        &mut self,
        subnet: &SubnetId,
        entries: &BTreeMap<IpAddr, MacAddr>,
    ) -> BTreeSet<RouterId> {
        let mut changed = BTreeSet::new();
        for (id, r) in &mut self.routers {
            if !r.subnets.contains(subnet) {
                continue;
            }
            r.fetched.insert(subnet.clone());
            let old: BTreeMap<IpAddr, MacAddr> = r
                .entries
                .iter()
                .filter(|((s, _), _)| s == subnet)
                .map(|((_, ip), mac)| (*ip, *mac))
                .collect();
            if &old == entries {
                continue;
            }
            r.entries.retain(|(s, _), _| s != subnet);
            r.entries.extend(
                entries
                    .iter()
                    .map(|(ip, mac)| ((subnet.clone(), *ip), *mac)),
            );
            changed.insert(id.clone());
        }
        changed
    }

    /// `add_arp_entry`: `None` when the router is not a DVR router here (ignored, as Neutron
    /// does), else whether its table changed. An entry for the same address replaces the old
    /// one (`ip neigh replace`).
    pub fn add(&mut self, e: &ArpEntry) -> Option<bool> {
        let r = self.routers.get_mut(&e.router_id)?;
        let key = (e.subnet_id.clone(), e.ip_address);
        if r.entries.get(&key) == Some(&e.mac_address) {
            return Some(false);
        }
        if !r.subnets.contains(&e.subnet_id) && !r.entries.contains_key(&key) {
            let pending = r
                .entries
                .keys()
                .filter(|(s, _)| !r.subnets.contains(s))
                .count();
            if pending >= PENDING_ARP_MAX {
                warn!(router = %e.router_id, subnet = %e.subnet_id, ip = %e.ip_address, "add_arp_entry for a subnet the router has no port on: too many pending already, dropped");
                return Some(false);
            }
        }
        r.entries.insert(key, e.mac_address);
        Some(true)
    }

    /// `del_arp_entry`: `None` when the router is not a DVR router here, else whether its
    /// table changed. Only an entry with that MAC goes: a deletion for a port that no longer
    /// holds the address (two ports sharing an allowed address pair, one deleted) leaves the
    /// other's entry. A deletion of an entry that is not there changes nothing.
    pub fn del(&mut self, e: &ArpEntry) -> Option<bool> {
        let r = self.routers.get_mut(&e.router_id)?;
        let key = (e.subnet_id.clone(), e.ip_address);
        if r.entries.get(&key) != Some(&e.mac_address) {
            return Some(false);
        }
        r.entries.remove(&key);
        Some(true)
    }

    /// Whether `id` is a DVR router here.
    pub fn contains(&self, id: &RouterId) -> bool {
        self.routers.contains_key(id)
    }

    /// Router `id` is no longer here: its table goes.
    pub fn forget(&mut self, id: &RouterId) {
        self.routers.remove(id);
    }

    /// Keeps only the routers `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(&RouterId) -> bool) {
        self.routers.retain(|id, _| keep(id));
    }

    /// Router `id`'s entries, pending ones included.
    pub fn table(&self, id: &RouterId) -> ArpTable {
        self.routers
            .get(id)
            .map(|r| r.entries.clone())
            .unwrap_or_default()
    }
}

/// The external network whose agent gateway port (`fg-`) a DVR router needs and its dict
/// lacks: it has a gateway and floating IPs served on `host`, and no
/// `_floatingip_agent_interfaces` port on its gateway's network.
pub fn missing_agent_gateway(doc: &RouterDoc, host: &str) -> Option<NetworkId> {
    if !doc.distributed {
        return None;
    }
    let gw = doc.gw_port.as_ref()?;
    let local = doc
        .floatingips
        .iter()
        .any(|f| f.fixed_ip_address.is_some() && f.host.as_deref().is_none_or(|h| h == host));
    if !local
        || doc
            .fip_agent_interfaces
            .iter()
            .any(|p| p.network_id == gw.network_id)
    {
        return None;
    }
    NetworkId::new("gw_port.network_id", &gw.network_id).ok()
}

/// A DVR router's dict as the agent gets it: the server's `base` with `_arp_table` set to the
/// entries of `table` in the subnets of its `qr-` ports, less the addresses of its own `sg-`
/// ports (the reconciler adds those from `_snat_router_interfaces`), and `fg` (the agent
/// gateway port of its external network) added to `_floatingip_agent_interfaces`.
pub fn augment(base: &RouterDoc, table: &ArpTable, fg: Option<&PortDoc>) -> RouterDoc {
    let subnets = router_subnets(base);
    let own: BTreeSet<(&str, IpAddr)> = base
        .snat_interfaces
        .iter()
        .flat_map(|p| &p.fixed_ips)
        .filter_map(|f| Some((f.subnet_id.as_str(), f.ip_address.parse().ok()?)))
        .collect();
    let mut doc = base.clone();
    doc.arp_table = table
        .iter()
        .filter(|((s, ip), _)| {
            subnets.get(s).is_some_and(|c| c.contains(*ip)) && !own.contains(&(s.as_str(), *ip))
        })
        .map(|((s, ip), mac)| ArpEntryDoc {
            ip_address: ip.to_string(),
            mac_address: mac.to_string(),
            subnet_id: s.to_string(),
        })
        .collect();
    if let Some(fg) = fg {
        doc.fip_agent_interfaces.push(fg.clone());
    }
    doc
}

/// `get_agent_gateway_port`'s answer for `net`, read as a port with its subnets (as
/// Neutron's `create_or_update_gateway_port` needs them); `Err`: why it is unusable.
pub fn agent_gateway_port(net: &NetworkId, answer: Option<Value>) -> Result<PortDoc, String> {
    let v = answer.ok_or("the server has none for this host (is the agent registered?)")?;
    if v.get("subnets").and_then(Value::as_array).is_none() {
        return Err("the port has no subnets".into());
    }
    let port: PortDoc = serde_json::from_value(v).map_err(|e| format!("not a port dict: {e}"))?;
    if port.network_id != net.as_str() {
        return Err(format!("the port is on network {}", Echo(&port.network_id)));
    }
    Ok(port)
}

/// Whether a failed call was answered by the server (a remote failure, an answer that does
/// not read), rather than not answered at all (a timeout, no connection).
fn is_answer(e: &NeutronError) -> bool {
    matches!(e, NeutronError::Remote { .. } | NeutronError::Decode { .. })
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
    /// HA routers: the VRRP state read last, and the one the server has from us.
    ha: BTreeMap<RouterId, (HaState, Option<HaState>)>,
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
    /// A router's outcome after a batch, with its VRRP state if it is an HA router.
    Outcome(RouterId, bool, Option<HaState>),
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
    /// `add_arp_entry` (true) and `del_arp_entry` (false), in the order they came.
    arp: Vec<(bool, ArpEntry)>,
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
            Notification::AddArpEntry(e) => self.arp.push((true, e)),
            Notification::DelArpEntry(e) => self.arp.push((false, e)),
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
            && self.arp.is_empty()
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
    dvr: DvrState,
}

/// DVR routers whose completion failed, fetched again at `at`.
#[derive(Debug, Default)]
struct DvrRetry {
    at: Option<Instant>,
    /// Failed rounds in a row (the backoff).
    round: u32,
    routers: BTreeSet<RouterId>,
}

/// What the front end adds to DVR routers' dicts (see the module docs).
#[derive(Debug, Default)]
struct DvrState {
    /// `dvr` or `dvr_snat`: DVR routers are completed.
    enabled: bool,
    /// The ARP tables.
    arp: ArpBook,
    /// Agent gateway ports by external network: from `get_agent_gateway_port` or a dict
    /// that carried one. Emptied at each full sync, and for a network on
    /// `fipnamespace_delete_on_ext_net`.
    gateways: BTreeMap<NetworkId, PortDoc>,
    /// Routers whose subnets' ports or agent gateway port could not be fetched.
    retry: BTreeSet<RouterId>,
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
        self.complete(&merged.returned, true);
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
        self.complete(&merged.returned, false);
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
            self.dvr.arp.forget(id);
            // Also forgets a refused dict of it.
            merged.removed.insert(id.clone());
        }
        let cfg = self.assemble(&previous, &mut merged);
        (cfg, merged)
    }

    /// Whether router `id` is a DVR router this agent completes.
    fn is_dvr(&self, id: &RouterId) -> bool {
        self.dvr.enabled && self.desired.get(id).is_some_and(|k| k.base().distributed)
    }

    /// Completes the DVR routers of `returned` (their dicts just merged) and the routers
    /// sharing a subnet read again: `get_ports_by_subnet` for their subnets not read yet (all
    /// of them at a full sync), one call per subnet; `get_agent_gateway_port` for an external
    /// network whose port they lack, one call per network. A failed call is logged and the
    /// router keeps what it had; it goes into `dvr.retry`.
    fn complete(&mut self, returned: &BTreeSet<RouterId>, full: bool) {
        if !self.dvr.enabled {
            return;
        }
        if full {
            self.dvr.gateways.clear();
        }
        let desired = &self.desired;
        self.dvr
            .arp
            .retain(|id| desired.get(id).is_some_and(|k| k.base().distributed));
        let ids: Vec<RouterId> = returned
            .iter()
            .filter(|id| self.is_dvr(id))
            .cloned()
            .collect();
        let mut wanted: BTreeMap<SubnetId, (Cidr, Vec<RouterId>)> = BTreeMap::new();
        for id in &ids {
            let base = self.desired[id].base();
            // The server's own word on agent gateway ports refreshes the cache.
            for p in base
                .fip_agent_interfaces
                .iter()
                .filter(|p| p.admin_state_up)
            {
                if let Ok(net) = NetworkId::new("network_id", &p.network_id) {
                    self.dvr.gateways.insert(net, p.clone());
                }
            }
            let subnets = router_subnets(base);
            for s in self
                .dvr
                .arp
                .router_dict(id, subnets.keys().cloned().collect(), full)
            {
                let cidr = subnets[&s];
                wanted
                    .entry(s)
                    .or_insert_with(|| (cidr, Vec::new()))
                    .1
                    .push(id.clone());
            }
        }
        let mut touched: BTreeSet<RouterId> = ids.iter().cloned().collect();
        // After a timeout (or a lost connection) no more calls in this pass: they would each
        // wait as long.
        let mut unreachable = false;
        for (subnet, (cidr, routers)) in wanted {
            if unreachable {
                self.dvr.retry.extend(routers);
                continue;
            }
            match self.api.get_ports_by_subnet(&subnet) {
                Ok(ports) => {
                    let entries = subnet_arp_entries(&subnet, cidr, &ports);
                    debug!(%subnet, ports = ports.len(), entries = entries.len(), "get_ports_by_subnet");
                    touched.extend(self.dvr.arp.subnet_fetched(&subnet, &entries));
                }
                Err(e) => {
                    warn!(%subnet, error = %e, routers = routers.len(), "get_ports_by_subnet failed: the routers on it keep the ARP entries they had; tried again later");
                    unreachable = !is_answer(&e);
                    self.dvr.retry.extend(routers);
                }
            }
        }
        let mut failed: BTreeSet<NetworkId> = BTreeSet::new();
        for id in &ids {
            let Some(net) = missing_agent_gateway(self.desired[id].base(), &self.agent.host) else {
                continue;
            };
            if self.dvr.gateways.contains_key(&net) {
                continue;
            }
            if !failed.contains(&net) && !unreachable {
                let why = match self.api.get_agent_gateway_port(&net) {
                    Ok(answer) => match agent_gateway_port(&net, answer) {
                        Ok(port) => {
                            info!(network = %net, port = %port.id, "agent gateway port from get_agent_gateway_port");
                            self.dvr.gateways.insert(net, port);
                            continue;
                        }
                        Err(why) => why,
                    },
                    Err(e) => {
                        unreachable = !is_answer(&e);
                        e.to_string()
                    }
                };
                warn!(network = %net, router = %id, error = %why, "get_agent_gateway_port failed: the router works without its fg- port (no floating IPs here) until it is tried again");
                failed.insert(net);
            }
            self.dvr.retry.insert(id.clone());
        }
        for id in touched {
            self.inject(&id);
        }
    }

    /// Puts router `id`'s completed dict in `desired` (from the server's dict it has): its
    /// ARP table, and the agent gateway port it lacks when one is known. An agent gateway port
    /// that does not validate with the router is left out (and forgotten).
    fn inject(&mut self, id: &RouterId) {
        let Some(k) = self.desired.get(id) else {
            return;
        };
        let base = k.base().clone();
        let table = self.dvr.arp.table(id);
        let net = missing_agent_gateway(&base, &self.agent.host);
        let fg = net.as_ref().and_then(|n| self.dvr.gateways.get(n)).cloned();
        let mut doc = augment(&base, &table, fg.as_ref());
        if let (Some(net), true) = (&net, fg.is_some()) {
            let alone = ConfigDoc {
                agent: self.agent.clone(),
                routers: vec![doc.clone()],
            };
            if let Err(errors) = alone.validate() {
                let problems: Vec<String> = errors.iter().map(relative).collect();
                warn!(router = %id, network = %net, problems = %problems.join("; "), "the agent gateway port does not fit the router: left out");
                self.dvr.gateways.remove(net);
                doc = augment(&base, &table, None);
            }
        }
        self.desired.insert(id.clone(), Kept::augmented(base, doc));
    }

    /// Applies `add_arp_entry` (true) / `del_arp_entry` (false) in order. The new state when a
    /// router's dict changed (`None` inside: it does not validate).
    fn arp_notifications(
        &mut self,
        ops: Vec<(bool, ArpEntry)>,
    ) -> Option<(Option<HostConfig>, Merged)> {
        let mut changed = BTreeSet::new();
        for (add, e) in ops {
            let what = if add {
                "add_arp_entry"
            } else {
                "del_arp_entry"
            };
            let outcome = if self.is_dvr(&e.router_id) {
                if add {
                    self.dvr.arp.add(&e)
                } else {
                    self.dvr.arp.del(&e)
                }
            } else {
                None
            };
            match outcome {
                None => {
                    debug!(router = %e.router_id, what, "not a DVR router of this agent: ignored");
                }
                Some(c) => {
                    debug!(router = %e.router_id, what, ip = %e.ip_address, mac = %e.mac_address, subnet = %e.subnet_id, changed = c, "ARP entry");
                    if c {
                        changed.insert(e.router_id);
                    }
                }
            }
        }
        if changed.is_empty() {
            return None;
        }
        let previous = self.desired.clone();
        for id in &changed {
            self.inject(id);
        }
        if changed
            .iter()
            .all(|id| previous.get(id).map(|k| &k.value) == self.desired.get(id).map(|k| &k.value))
        {
            // Pending entries only: no dict changed.
            return None;
        }
        let mut merged = Merged::default();
        let cfg = self.assemble(&previous, &mut merged);
        Some((cfg, merged))
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
        let mut dvr_retry = DvrRetry::default();
        self.schedule_dvr_retry(&mut dvr_retry);
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
            if dvr_retry.at.is_some_and(|t| Instant::now() >= t) {
                dvr_retry.at = None;
                let ids = std::mem::take(&mut dvr_retry.routers);
                pending
                    .fetch
                    .extend(ids.into_iter().filter(|id| self.desired.contains_key(id)));
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
            if !pending.arp.is_empty() {
                let ops = std::mem::take(&mut pending.arp);
                if let Some((cfg, merged)) = self.arp_notifications(ops) {
                    if !self.publish(cfg, &merged, feed) {
                        return;
                    }
                }
            }
            if !pending.reconcile_networks.is_empty() {
                let nets = std::mem::take(&mut pending.reconcile_networks);
                for net in nets {
                    let routers = routers_on(&self.desired, &net, true);
                    if !self.dvr.enabled {
                        pending.reconcile.extend(routers);
                        continue;
                    }
                    // The server deleted this host's agent gateway port on it: the DVR
                    // routers on it are fetched again (and get a new one if they still
                    // have floating IPs here).
                    self.dvr.gateways.remove(&net);
                    info!(network = %net, "fipnamespace_delete_on_ext_net: its agent gateway port is forgotten");
                    for id in routers {
                        if self.is_dvr(&id) {
                            pending.fetch.insert(id);
                        } else {
                            pending.reconcile.insert(id);
                        }
                    }
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
                    self.schedule_dvr_retry(&mut dvr_retry);
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

    /// Routers whose DVR completion failed are fetched again after a backoff (doubling from
    /// `retry_base` up to `periodic_interval` while failures go on).
    fn schedule_dvr_retry(&mut self, retry: &mut DvrRetry) {
        let failed = std::mem::take(&mut self.dvr.retry);
        if failed.is_empty() {
            if retry.routers.is_empty() {
                retry.round = 0;
            }
            return;
        }
        let wait = backoff(
            retry.round,
            self.opts.retry_base,
            self.opts.periodic_interval,
        );
        retry.round = retry.round.saturating_add(1);
        info!(
            routers = failed.len(),
            retry_in_ms = wait.as_millis() as u64,
            "DVR routers fetched again later (a call to complete them failed)"
        );
        retry.routers.extend(failed);
        if retry.at.is_none() {
            retry.at = Some(Instant::now() + wait);
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
                    info!(status = status.as_str(), "state reports get through again");
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
    let mut ha_retry: Option<(Instant, u32)> = None;
    let take = |m: StatusMsg, dirty: &mut BTreeSet<RouterId>| match m {
        StatusMsg::Outcome(id, ok, ha) => {
            let mut b = lock(book);
            b.outcome.insert(id.clone(), ok);
            match ha {
                Some(state) => {
                    let e = b.ha.entry(id.clone()).or_insert((state, None));
                    e.0 = state;
                }
                None if ok => {
                    b.ha.remove(&id);
                }
                None => {}
            }
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
        // HA states that changed since the server last heard: one call for all of them.
        if ha_retry.is_none_or(|(at, _)| at <= now) {
            let changed: BTreeMap<RouterId, HaState> = lock(book)
                .ha
                .iter()
                .filter(|(_, (now, sent))| Some(*now) != *sent)
                .map(|(id, (now, _))| (id.clone(), *now))
                .collect();
            if !changed.is_empty() {
                let states: BTreeMap<RouterId, crate::l3::HaState> = changed
                    .iter()
                    .map(|(id, s)| {
                        let wire = match s {
                            HaState::Master => crate::l3::HaState::Active,
                            HaState::Backup => crate::l3::HaState::Standby,
                        };
                        (id.clone(), wire)
                    })
                    .collect();
                match api.update_ha_routers_states(&states) {
                    Ok(()) => {
                        info!(states = %states.iter().map(|(i, s)| format!("{}={}", i.as_str(), s.as_str())).collect::<Vec<_>>().join(", "), "HA router states reported");
                        let mut b = lock(book);
                        for (id, state) in changed {
                            if let Some(e) = b.ha.get_mut(&id) {
                                e.1 = Some(state);
                            }
                        }
                        ha_retry = None;
                    }
                    Err(e) => {
                        let round = ha_retry.map_or(0, |(_, r)| r);
                        let wait = backoff(round, retry_base, retry_cap);
                        warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "update_ha_routers_states failed");
                        ha_retry = Some((Instant::now() + wait, round.saturating_add(1)));
                    }
                }
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
                    info!(router = %id, statuses = %send.iter().map(|(f, s)| format!("{}={}", f.as_str(), s.as_str())).collect::<Vec<_>>().join(", "), "floating IP statuses reported");
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

        let dvr = DvrState {
            enabled: matches!(agent.mode, RouterAgentMode::Dvr | RouterAgentMode::DvrSnat),
            ..DvrState::default()
        };
        let mut syncer = Syncer {
            api,
            agent,
            dvr,
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
            let _ = status_tx.send(StatusMsg::Outcome(id.clone(), outcome.ok, outcome.ha_state));
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
            bridges: Default::default(),
            interface_driver: Some(InterfaceDriver::Openvswitch),
            integration_bridge: Some("br-int".into()),
            ovsdb: Some("unix:/run/openvswitch/db.sock".into()),
            metadata_proxy: None,
            router_advertisements: None,
            ha: None,
            traffic_accounting: None,
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
    fn refused_dicts_say_why_by_path() {
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
        // An HA router needs its VRRP id and this host's HA port (the server sends both).
        let mut d = server_dict();
        d["ha"] = json!(true);
        assert!(
            matches!(parse(&d).doc, Err(Rejection::Invalid(p)) if p[0].contains("ha_vr_id")),
            "{:?}",
            parse(&d).doc
        );
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

    /// The same when the newcomer sorts first: the problem's path is then the router in
    /// force's (the later one), and its message names the newcomer, which is refused.
    #[test]
    fn a_newcomer_sorting_first_is_refused_not_the_router_in_force() {
        let mut previous = Desired::new();
        merge(&mut previous, Scope::All, vec![parse(&server_dict())]);
        let first = "0e1bd2e5-640a-424f-a965-331fae02c144";
        assert!(first < R1);
        let mut d0 = other(first, 3);
        d0["_floatingips"] = server_dict()["_floatingips"].clone();
        d0["_floatingips"][0]["router_id"] = json!(first);
        let mut desired = previous.clone();
        let mut m = merge(
            &mut desired,
            Scope::All,
            vec![parse(&server_dict()), parse(&d0)],
        );
        let cfg = match assemble(&agent(), &mut desired, &previous, &mut m.invalid) {
            Ok(c) => c,
            Err(e) => panic!("{e:?}"),
        };
        assert_eq!(cfg.routers.len(), 1);
        assert_eq!(cfg.routers[0].id, rid(R1));
        assert!(!desired.contains_key(&rid(first)));
        let why = m.invalid.get(&rid(first)).expect("the newcomer refused");
        assert!(
            why.iter()
                .any(|w| w.contains("floating IP") && w.contains(&format!("router {R1} "))),
            "{why:?}"
        );
        assert!(!m.invalid.contains_key(&rid(R1)), "{:?}", m.invalid);
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
        // ARP entries keep their order (an add then a del is not a del then an add).
        let e = |ip: &str| ArpEntry {
            router_id: rid(R1),
            ip_address: ip.parse().unwrap(),
            mac_address: "fa:16:3e:00:00:01".parse().unwrap(),
            subnet_id: SubnetId::new("t", R2).unwrap(),
        };
        p.add(Notification::AddArpEntry(e("10.0.0.5")));
        p.add(Notification::DelArpEntry(e("10.0.0.5")));
        p.add(Notification::AddArpEntry(e("10.0.0.6")));
        assert_eq!(
            p.arp,
            vec![
                (true, e("10.0.0.5")),
                (false, e("10.0.0.5")),
                (true, e("10.0.0.6"))
            ]
        );
        assert!(p.reconcile.is_empty());
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

    // DVR: ARP entries and the agent gateway port.

    const DVR_R: &str = "fb221852-b23c-407e-ba26-a68b25803e49";
    /// The DVR dict's two qr- subnets: 192.0.2.0/24 and 198.51.100.0/24.
    const S1: &str = "136c9285-df72-4ae3-8ff3-48dca5e9570e";
    const S2: &str = "37f5d50d-5cfb-4bb4-9838-29dffa5e073c";
    const S3: &str = "00000000-0000-4000-8000-0000000000f3";
    const EXT_NET: &str = "11272de9-8a18-4392-8618-d07b6ab565e3";

    fn sid(s: &str) -> SubnetId {
        SubnetId::new("t", s).unwrap()
    }

    fn mac(s: &str) -> MacAddr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Neutron's DVR router dict (crates/router/tests/data), on host `host-a`.
    fn dvr_dict() -> Value {
        serde_json::from_str(include_str!(
            "../../router/tests/data/neutron-router-dvr.json"
        ))
        .unwrap()
    }

    fn dvr_agent() -> AgentDoc {
        AgentDoc {
            mode: RouterAgentMode::DvrSnat,
            host: "host-a".into(),
            ..agent()
        }
    }

    fn entry(router: &str, ip_: &str, mac_: &str, subnet: &str) -> ArpEntry {
        ArpEntry {
            router_id: rid(router),
            ip_address: ip(ip_),
            mac_address: mac(mac_),
            subnet_id: sid(subnet),
        }
    }

    #[test]
    fn arp_entries_are_built_from_the_ports_as_neutron_builds_them() {
        let cidr = Cidr::parse("192.0.2.0/24").unwrap();
        let ports = vec![
            // A VM: its fixed IP in the subnet, not the one elsewhere; its host pairs.
            json!({"device_owner": "compute:nova", "mac_address": "fa:16:3e:00:00:01",
                "fixed_ips": [{"subnet_id": S1, "ip_address": "192.0.2.10"},
                              {"subnet_id": S2, "ip_address": "198.51.100.10"}],
                "allowed_address_pairs": [
                    {"ip_address": "192.0.2.100", "mac_address": "fa:16:3e:00:00:aa"},
                    {"ip_address": "192.0.2.101/32"},
                    {"ip_address": "192.0.2.0/24", "mac_address": "fa:16:3e:00:00:ab"},
                    {"ip_address": "2001:db8::5", "mac_address": "fa:16:3e:00:00:ac"},
                    {"ip_address": "203.0.113.7", "mac_address": "fa:16:3e:00:00:ad"},
                    {"ip_address": "192.0.2.50", "mac_address": "fa:16:3e:00:00:50"}]}),
            // The routers' own ports: skipped.
            json!({"device_owner": "network:router_interface_distributed",
                "mac_address": "fa:16:3e:00:00:02",
                "fixed_ips": [{"subnet_id": S1, "ip_address": "192.0.2.1"}]}),
            json!({"device_owner": "network:router_interface",
                "mac_address": "fa:16:3e:00:00:03",
                "fixed_ips": [{"subnet_id": S1, "ip_address": "192.0.2.3"}]}),
            json!({"device_owner": "network:ha_router_replicated_interface",
                "mac_address": "fa:16:3e:00:00:04",
                "fixed_ips": [{"subnet_id": S1, "ip_address": "192.0.2.4"}]}),
            // DHCP: kept.
            json!({"device_owner": "network:dhcp", "mac_address": "fa:16:3e:00:00:05",
                "fixed_ips": [{"subnet_id": S1, "ip_address": "192.0.2.2"}],
                "allowed_address_pairs": []}),
            // A pair claiming the DHCP port's fixed IP loses; the later pair on .50 wins.
            json!({"device_owner": "compute:nova", "mac_address": "fa:16:3e:00:00:06",
                "fixed_ips": [],
                "allowed_address_pairs": [
                    {"ip_address": "192.0.2.2", "mac_address": "fa:16:3e:00:00:66"},
                    {"ip_address": "192.0.2.50", "mac_address": "fa:16:3e:00:00:51"}]}),
            // Unusable: a bad MAC, a multicast MAC, a broadcast address.
            json!({"device_owner": "compute:nova", "mac_address": "nope",
                "fixed_ips": [{"subnet_id": S1, "ip_address": "192.0.2.20"}]}),
            json!({"device_owner": "compute:nova", "mac_address": "01:00:5e:00:00:01",
                "fixed_ips": [{"subnet_id": S1, "ip_address": "192.0.2.21"}]}),
            json!({"device_owner": "compute:nova", "mac_address": "fa:16:3e:00:00:07",
                "fixed_ips": [{"subnet_id": S1, "ip_address": "192.0.2.255"}],
                "allowed_address_pairs": [{"ip_address": "255.255.255.255/32"}]}),
        ];
        let got = subnet_arp_entries(&sid(S1), cidr, &ports);
        assert_eq!(
            got,
            BTreeMap::from([
                (ip("192.0.2.2"), mac("fa:16:3e:00:00:05")),
                (ip("192.0.2.10"), mac("fa:16:3e:00:00:01")),
                (ip("192.0.2.50"), mac("fa:16:3e:00:00:51")),
                (ip("192.0.2.100"), mac("fa:16:3e:00:00:aa")),
                (ip("192.0.2.101"), mac("fa:16:3e:00:00:01")),
                // The subnet's broadcast address is a host address of a /24 to Neutron and
                // to the kernel: kept.
                (ip("192.0.2.255"), mac("fa:16:3e:00:00:07")),
            ])
        );
        // IPv6: /128 pairs of the subnet's version.
        let v6 = Cidr::parse("2001:db8::/64").unwrap();
        let ports = vec![json!({"device_owner": "compute:nova",
            "mac_address": "fa:16:3e:00:00:08",
            "fixed_ips": [{"subnet_id": S3, "ip_address": "2001:db8::8"}],
            "allowed_address_pairs": [{"ip_address": "2001:db8::9/128"},
                                      {"ip_address": "2001:db8::/64"},
                                      {"ip_address": "192.0.2.9"}]})];
        assert_eq!(
            subnet_arp_entries(&sid(S3), v6, &ports),
            BTreeMap::from([
                (ip("2001:db8::8"), mac("fa:16:3e:00:00:08")),
                (ip("2001:db8::9"), mac("fa:16:3e:00:00:08")),
            ])
        );
        assert!(subnet_arp_entries(&sid(S1), cidr, &[]).is_empty());
        assert!(Cidr::parse("10.0.0.0/33").is_none() && Cidr::parse("10.0.0.0").is_none());
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains(ip("203.0.113.1")));
        assert!(!Cidr::parse("10.0.0.0/8")
            .unwrap()
            .contains(ip("2001:db8::1")));
    }

    #[test]
    fn the_arp_book_follows_adds_deletes_fetches_and_drops_what_is_gone() {
        let mut book = ArpBook::default();
        let r = rid(DVR_R);
        let both = BTreeSet::from([sid(S1), sid(S2)]);
        assert_eq!(book.router_dict(&r, both.clone(), false), both);
        let fetched = BTreeMap::from([(ip("192.0.2.10"), mac("fa:16:3e:00:00:01"))]);
        assert_eq!(
            book.subnet_fetched(&sid(S1), &fetched),
            BTreeSet::from([r.clone()])
        );
        assert!(
            book.subnet_fetched(&sid(S1), &fetched).is_empty(),
            "no change"
        );
        // S1 is read; S2 is still to be read; a full sync reads both again.
        assert_eq!(
            book.router_dict(&r, both.clone(), false),
            BTreeSet::from([sid(S2)])
        );
        assert_eq!(book.router_dict(&r, both.clone(), true), both);
        book.subnet_fetched(&sid(S1), &fetched);
        book.subnet_fetched(&sid(S2), &BTreeMap::new());

        // add / del.
        let e11 = entry(DVR_R, "192.0.2.11", "fa:16:3e:00:00:11", S1);
        assert_eq!(book.add(&e11), Some(true));
        assert_eq!(book.add(&e11), Some(false), "already there");
        assert_eq!(
            book.add(&entry(R1, "192.0.2.11", "fa:16:3e:00:00:11", S1)),
            None
        );
        let other_mac = entry(DVR_R, "192.0.2.11", "fa:16:3e:00:00:99", S1);
        assert_eq!(book.del(&other_mac), Some(false), "another port's deletion");
        assert_eq!(book.table(&r).len(), 2);
        assert_eq!(book.del(&e11), Some(true));
        assert_eq!(book.del(&e11), Some(false), "not there: a no-op");
        // A new MAC for an address replaces the old one.
        let moved = entry(DVR_R, "192.0.2.10", "fa:16:3e:00:00:02", S1);
        assert_eq!(book.add(&moved), Some(true));
        assert_eq!(
            book.table(&r),
            ArpTable::from([((sid(S1), ip("192.0.2.10")), mac("fa:16:3e:00:00:02"))])
        );

        // Pending: an add for a subnet the router has no port on yet is kept...
        let e3 = entry(DVR_R, "10.3.0.5", "fa:16:3e:00:00:35", S3);
        assert_eq!(book.add(&e3), Some(true));
        assert!(book.table(&r).contains_key(&(sid(S3), ip("10.3.0.5"))));
        // ... into force with the dict that has the subnet (which is read too) ...
        let three = BTreeSet::from([sid(S1), sid(S2), sid(S3)]);
        assert_eq!(
            book.router_dict(&r, three, false),
            BTreeSet::from([sid(S3)])
        );
        assert!(book.table(&r).contains_key(&(sid(S3), ip("10.3.0.5"))));
        // ... and the entries of subnets the router no longer has go.
        assert!(book
            .router_dict(&r, BTreeSet::from([sid(S1)]), false)
            .is_empty());
        assert_eq!(book.table(&r).len(), 1);
        // A pending entry the next dict does not confirm goes too.
        assert_eq!(book.add(&e3), Some(true));
        book.router_dict(&r, BTreeSet::from([sid(S1)]), false);
        assert!(!book.table(&r).contains_key(&(sid(S3), ip("10.3.0.5"))));
        // Pending entries are bounded.
        for i in 0..PENDING_ARP_MAX {
            let a = format!("10.3.{}.{}", i / 200, 1 + i % 200);
            assert_eq!(
                book.add(&entry(DVR_R, &a, "fa:16:3e:00:00:35", S3)),
                Some(true)
            );
        }
        let over = entry(DVR_R, "10.3.99.1", "fa:16:3e:00:00:35", S3);
        assert_eq!(book.add(&over), Some(false), "over the bound");
        assert_eq!(book.table(&r).len(), 1 + PENDING_ARP_MAX);

        // A router removed takes its table with it.
        book.forget(&r);
        assert!(!book.contains(&r));
        assert_eq!(book.add(&e11), None);
        assert!(book.table(&r).is_empty());
    }

    #[test]
    fn a_dvr_dict_gets_its_arp_table_and_the_agent_gateway_port_it_lacks() {
        let mut d = dvr_dict();
        let raw_fg = d["_floatingip_agent_interfaces"][0].clone();
        d["_floatingip_agent_interfaces"] = json!([]);
        let base: RouterDoc = serde_json::from_value(d.clone()).unwrap();
        let net = NetworkId::new("t", EXT_NET).unwrap();
        // get_agent_gateway_port's answer: a port of that network, with its subnets.
        let fg = agent_gateway_port(&net, Some(raw_fg.clone())).unwrap();
        assert!(agent_gateway_port(&net, None)
            .unwrap_err()
            .contains("the server has none"));
        let mut no_subnets = raw_fg.clone();
        no_subnets.as_object_mut().unwrap().remove("subnets");
        assert_eq!(
            agent_gateway_port(&net, Some(no_subnets)).unwrap_err(),
            "the port has no subnets"
        );
        let elsewhere = NetworkId::new("t", R2).unwrap();
        assert!(agent_gateway_port(&elsewhere, Some(raw_fg))
            .unwrap_err()
            .starts_with("the port is on network"));
        assert_eq!(missing_agent_gateway(&base, "host-a"), Some(net.clone()));
        // Not for another host's floating IPs, nor with the port there, nor without a
        // gateway, floating IPs, or DVR.
        assert_eq!(missing_agent_gateway(&base, "host-b"), None);
        let with_fg = augment(&base, &ArpTable::new(), Some(&fg));
        assert_eq!(missing_agent_gateway(&with_fg, "host-a"), None);
        for change in ["gw_port", "_floatingips", "distributed"] {
            let mut d = d.clone();
            d[change] = if change == "distributed" {
                json!(false)
            } else if change == "gw_port" {
                Value::Null
            } else {
                json!([])
            };
            let doc: RouterDoc = serde_json::from_value(d).unwrap();
            assert_eq!(missing_agent_gateway(&doc, "host-a"), None, "{change}");
        }

        let subnets = router_subnets(&base);
        assert_eq!(
            subnets.keys().cloned().collect::<Vec<_>>(),
            [sid(S1), sid(S2)]
        );
        let table = ArpTable::from([
            ((sid(S1), ip("192.0.2.10")), mac("fa:16:3e:00:00:10")),
            // The router's own sg- port: the reconciler has it from _snat_router_interfaces.
            ((sid(S1), ip("192.0.2.9")), mac("fa:16:3e:80:8d:89")),
            ((sid(S2), ip("198.51.100.20")), mac("fa:16:3e:00:00:20")),
            // Pending (no port on S3), and an address outside S1: not in the dict.
            ((sid(S3), ip("10.3.0.5")), mac("fa:16:3e:00:00:35")),
            ((sid(S1), ip("10.9.9.9")), mac("fa:16:3e:00:00:36")),
        ]);
        let doc = augment(&base, &table, Some(&fg));
        assert_eq!(
            doc.arp_table,
            vec![
                ArpEntryDoc {
                    ip_address: "192.0.2.10".into(),
                    mac_address: "fa:16:3e:00:00:10".into(),
                    subnet_id: S1.into()
                },
                ArpEntryDoc {
                    ip_address: "198.51.100.20".into(),
                    mac_address: "fa:16:3e:00:00:20".into(),
                    subnet_id: S2.into()
                },
            ]
        );
        assert_eq!(doc.fip_agent_interfaces.len(), 1);
        assert_eq!(doc.fip_agent_interfaces[0].id, fg.id);
        // The reconciler takes it: the entries, the fg- port.
        let cfg = ConfigDoc {
            agent: dvr_agent(),
            routers: vec![doc.clone()],
        }
        .validate()
        .unwrap();
        let r = &cfg.routers[0];
        assert_eq!(r.arp_table.len(), 2);
        assert_eq!(
            r.arp_table[&(sid(S2), ip("198.51.100.20"))],
            mac("fa:16:3e:00:00:20")
        );
        assert_eq!(r.agent_gateway().unwrap().dev.as_str(), "fg-68db4b10-1b");
        // In the dict's JSON form (what the front end compares), under `_arp_table`.
        let kept = Kept::augmented(base.clone(), doc);
        assert_eq!(kept.value["_arp_table"][0]["ip_address"], "192.0.2.10");
        assert!(kept.base().arp_table.is_empty());
        assert!(kept.base().fip_agent_interfaces.is_empty());
        // Without entries, the field is absent: a legacy dict's JSON does not change.
        let plain = augment(&base, &ArpTable::new(), None);
        assert!(serde_json::to_value(&plain)
            .unwrap()
            .get("_arp_table")
            .is_none());
    }
}
