//! The agent's Prometheus metrics: one [`Metrics`] value, shared (`Arc`) by the workers that
//! record into it and the HTTP server that encodes it ([`Metrics::encode`]).
//!
//! Names carry the `l3agent_` prefix and follow Prometheus conventions: base units
//! (`_seconds`, `_bytes`), counters end in `_total`, and states are labels of one gauge
//! family rather than one metric per state. Every metric is listed in [`METRICS_DOC`], which
//! the README includes; a test fails when a registered metric is missing from it or the
//! table names one that is not registered.
//!
//! Traffic counters are not incremented by us: the kernel counts (link statistics of the
//! routers' external devices, the counters of the floating IPs' NAT rules or, with
//! `agent.traffic_accounting`, of their accounting rules), and the agent
//! copies its readings in ([`Metrics::replace_traffic`], from [`crate::traffic`], which reads
//! them when a scrape finds the last reading older than a few seconds: [`Metrics::on_scrape`]).
//! They are exposed through a collector that emits each reading as a counter at scrape time,
//! which is what prometheus-client offers for values owned elsewhere. A reading that goes
//! down (the device or rule was recreated) is a counter reset, which Prometheus's `rate()`
//! handles.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use l3agent_iptables_exec::StatsSnapshot;
use l3agent_router::spec::HaState;
use l3agent_supervise::Service;

use crate::AgentError;

/// Every metric the agent exports, as a markdown table for the README (included from here
/// so the two cannot drift apart; a test checks it against the registry).
pub const METRICS_DOC: &str = "\
| Metric | Type | Labels | Meaning |
| --- | --- | --- | --- |
| `l3agent_reconcile_duration_seconds` | histogram | | Time from a router being marked dirty to its reconcile finishing (the kernel holding the change, or the attempt failing). |
| `l3agent_queue_depth` | gauge | | Routers waiting to be reconciled, ready or backing off after a failure (not those in progress). |
| `l3agent_iptables_save_total` | counter | | `iptables-save` runs (start-up, verification, drift checks, fallbacks after a failed restore). |
| `l3agent_iptables_restore_total` | counter | | `iptables-restore --noflush` runs, successful or not. |
| `l3agent_iptables_restore_errors_total` | counter | | `iptables-restore` runs that failed (the table was left as it was). |
| `l3agent_iptables_restore_lines_total` | counter | | Lines of restore input written to `iptables-restore`: the size of the changes applied. |
| `l3agent_iptables_rules` | gauge | | Rules in the chains l3agent owns, over all namespaces and families, as last committed (counted when scraped). |
| `l3agent_iptables_chains` | gauge | | Chains l3agent owns, over all namespaces and families, as last committed (counted when scraped). |
| `l3agent_routers` | gauge | `state`: `converged`, `pending`, `failed`, `removing` | Routers in each state: converged (the kernel matches), pending (queued or in progress), failed (last reconcile failed; retried with backoff), removing (being torn down). |
| `l3agent_floating_ips` | gauge | `state`: `active`, `down`, `error` | Floating IPs in each Neutron status: active (configured), down (router or port not up), error (configuring it failed). |
| `l3agent_drift_repairs_total` | counter | `kind`: what drifted (`iptables`, `address`, `route`, `rule`, `link`, `namespace`, `sysctl`, `neighbour`, ...) | Differences between the kernel and the last applied state that a drift check found and repaired. |
| `l3agent_config_loads_total` | counter | `result`: `ok`, `invalid` | Config reads after start-up (file changes, SIGHUP): an invalid one changes nothing and is counted here. |
| `l3agent_process_spawns_total` | counter | | Processes started (iptables-save/-restore, supervised daemons): a no-op reconcile starts none. |
| `l3agent_router_traffic_bytes_total` | counter | `router`: router id; `direction`: `ingress`, `egress` | Bytes received (`ingress`) and sent (`egress`) by a router's external devices on this host, from their link statistics: `qg-` in `qrouter-` (legacy, HA), `rfp-` in `qrouter-` (DVR floating IPs), `qg-` in `snat-` (DVR SNAT). Read when scraped, at most every 5 s. |
| `l3agent_router_traffic_packets_total` | counter | `router`, `direction` | Packets through the same devices. |
| `l3agent_floatingip_traffic_bytes_total` | counter | `floating_ip`: the address; `direction`: `ingress`, `egress` | Bytes to (`ingress`) and from (`egress`) a floating IP, from rule counters in `qrouter-`. By default its DNAT and SNAT rules, which see the first packet of each connection only: the bytes of connections' first packets, not the whole traffic. With `agent.traffic_accounting`, its accounting rules in the filter table (`neutron-l3-agent-fip-acct`): every packet forwarded to or from its fixed address through the external device, the whole traffic. Read when scraped, at most every 5 s. |
| `l3agent_floatingip_traffic_packets_total` | counter | `floating_ip`, `direction` | Packets counted by the same rules: by default connections opened to (`ingress`) and from (`egress`) the floating IP; with `agent.traffic_accounting` all its packets. |
| `l3agent_ha_routers` | gauge | `state`: `master`, `backup` | HA routers in each VRRP state on this host, as last read from the kernel (master: keepalived's primary VIP is on the router's `ha-` device). |
| `l3agent_ha_transitions_total` | counter | `to`: `master`, `backup` | Changes of an HA router's VRRP state between two reads by the agent (failovers seen here; the first read of a router after start is not one, and a flap shorter than the settle delay may be missed). |
| `l3agent_daemons` | gauge | `service`: `radvd`, `haproxy`, `keepalived`, `conntrackd` | Routers running each supervised daemon, as of their last apply (a daemon found dead is started again and counted in `l3agent_drift_repairs_total` with `kind` `daemon`). |
";

/// A router's reconcile state, the `state` label of `l3agent_routers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouterState {
    /// The kernel matches the router's desired state.
    Converged,
    /// Queued or being reconciled.
    Pending,
    /// The last reconcile failed; it is retried with backoff.
    Failed,
    /// Being torn down.
    Removing,
}

impl RouterState {
    /// Every state, so each has a series (0 included) from the start.
    pub const ALL: [RouterState; 4] = [
        RouterState::Converged,
        RouterState::Pending,
        RouterState::Failed,
        RouterState::Removing,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RouterState::Converged => "converged",
            RouterState::Pending => "pending",
            RouterState::Failed => "failed",
            RouterState::Removing => "removing",
        }
    }
}

/// A floating IP's Neutron status, the `state` label of `l3agent_floating_ips`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FloatingIpState {
    /// Configured in the kernel (Neutron `ACTIVE`).
    Active,
    /// Not configured because its router or port is not up (Neutron `DOWN`).
    Down,
    /// Configuring it failed (Neutron `ERROR`).
    Error,
}

impl FloatingIpState {
    /// Every state, so each has a series (0 included) from the start.
    pub const ALL: [FloatingIpState; 3] = [
        FloatingIpState::Active,
        FloatingIpState::Down,
        FloatingIpState::Error,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FloatingIpState::Active => "active",
            FloatingIpState::Down => "down",
            FloatingIpState::Error => "error",
        }
    }
}

/// Every HA state, so each has a series (0 included) from the start.
const HA_STATES: [HaState; 2] = [HaState::Master, HaState::Backup];

/// An HA state's label value (also its name in the control socket's `status`): `master`,
/// `backup`, as keepalived says it.
pub fn ha_state_label(state: HaState) -> &'static str {
    match state {
        HaState::Master => "master",
        HaState::Backup => "backup",
    }
}

/// Which way traffic went, the `direction` label of the traffic counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// From the external network towards the router / floating IP.
    Ingress,
    /// From the router / floating IP towards the external network.
    Egress,
}

impl Direction {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

macro_rules! label_value {
    ($t:ty) => {
        impl EncodeLabelValue for $t {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                encoder.write_str(self.as_str())
            }
        }
    };
}
label_value!(RouterState);
label_value!(FloatingIpState);
label_value!(Direction);

/// One kernel reading of a traffic counter pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TrafficReading {
    /// Bytes counted.
    pub bytes: u64,
    /// Packets counted.
    pub packets: u64,
}

/// The text format to encode to, chosen from the scraper's `Accept` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text (what Prometheus asks for first).
    OpenMetrics,
    /// The Prometheus text format 0.0.4 (what `curl` and older scrapers get).
    Prometheus,
}

impl Format {
    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }

    /// OpenMetrics if the `Accept` header asks for it, else the Prometheus text format.
    pub fn negotiate(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }
}

type StateLabels<S> = [(&'static str, S); 1];
type KindLabels = [(&'static str, String); 1];
type Labels = [(&'static str, &'static str); 1];
type TrafficMap<K> = RwLock<BTreeMap<(K, Direction), TrafficReading>>;
/// What [`Metrics::on_scrape`] installs.
type ScrapeHook = Arc<dyn Fn(&Metrics) + Send + Sync>;

/// The slot of the scrape hook (a closure has no `Debug`).
#[derive(Default)]
struct HookSlot(RwLock<Option<ScrapeHook>>);

impl std::fmt::Debug for HookSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = read(&self.0).is_some();
        f.debug_struct("HookSlot").field("set", &set).finish()
    }
}

/// The traffic readings, emitted as counters on each scrape.
#[derive(Debug, Default)]
struct Traffic {
    routers: TrafficMap<String>,
    floating_ips: TrafficMap<IpAddr>,
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

impl Traffic {
    /// Emits `l3agent_<base>_bytes_total` and `l3agent_<base>_packets_total` with one
    /// series per (`label`, direction) reading.
    fn encode_map<K: ToString>(
        encoder: &mut DescriptorEncoder,
        map: &TrafficMap<K>,
        base: &str,
        label: &'static str,
        what: &str,
    ) -> Result<(), std::fmt::Error> {
        let map = read(map);
        let bytes_help = format!("Bytes through {what}, as counted by the kernel");
        let packets_help = format!("Packets through {what}, as counted by the kernel");
        let packets_name = format!("{base}_packets");
        type Pick = fn(&TrafficReading) -> u64;
        let kinds: [(&str, &str, Option<Unit>, Pick); 2] = [
            (base, &bytes_help, Some(Unit::Bytes), |r| r.bytes),
            (&packets_name, &packets_help, None, |r| r.packets),
        ];
        for (name, help, unit, value) in kinds {
            let mut family =
                encoder.encode_descriptor(name, help, unit.as_ref(), MetricType::Counter)?;
            for ((key, dir), reading) in map.iter() {
                let labels = [
                    (label, key.to_string()),
                    ("direction", dir.as_str().to_owned()),
                ];
                ConstCounter::new(value(reading)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

impl Collector for Traffic {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        Traffic::encode_map(
            &mut encoder,
            &self.routers,
            "router_traffic",
            "router",
            "a router's external gateway",
        )?;
        Traffic::encode_map(
            &mut encoder,
            &self.floating_ips,
            "floatingip_traffic",
            "floating_ip",
            "a floating IP",
        )
    }
}

/// The agent's metrics registry and handles to each metric; see the module docs and
/// [`METRICS_DOC`]. Recording is lock-free (atomics) except for label families and traffic
/// readings.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconcile_duration: Histogram,
    queue_depth: Gauge,
    iptables_save: Counter,
    iptables_restore: Counter,
    iptables_restore_errors: Counter,
    iptables_restore_lines: Counter,
    iptables_rules: Gauge,
    iptables_chains: Gauge,
    routers: Family<StateLabels<RouterState>, Gauge>,
    floating_ips: Family<StateLabels<FloatingIpState>, Gauge>,
    drift_repairs: Family<KindLabels, Counter>,
    config_loads: Family<StateLabels<&'static str>, Counter>,
    process_spawns: Counter,
    ha_routers: Family<Labels, Gauge>,
    daemons: Family<Labels, Gauge>,
    ha_transitions: Family<Labels, Counter>,
    traffic: Arc<Traffic>,
    /// Called at the start of every [`Metrics::encode`] (see [`Metrics::on_scrape`]).
    on_scrape: HookSlot,
    /// The process-wide iptables counters as last copied in ([`Metrics::sync_iptables`]).
    iptables_seen: std::sync::Mutex<StatsSnapshot>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every metric registered and at zero (each state of the state gauges
    /// included, so dashboards see 0 rather than no data).
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("l3agent");
        // 5 ms .. 164 s: from a no-op reconcile to a cold start of a large router.
        let reconcile_duration = Histogram::new(exponential_buckets(0.005, 2.0, 16));
        registry.register_with_unit(
            "reconcile_duration",
            "Time from a router being marked dirty to its reconcile finishing",
            Unit::Seconds,
            reconcile_duration.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Routers waiting to be reconciled (ready or backing off)",
            queue_depth.clone(),
        );
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let iptables_save = counter(&mut registry, "iptables_save", "iptables-save runs");
        let iptables_restore = counter(
            &mut registry,
            "iptables_restore",
            "iptables-restore runs, successful or not",
        );
        let iptables_restore_errors = counter(
            &mut registry,
            "iptables_restore_errors",
            "iptables-restore runs that failed",
        );
        let iptables_restore_lines = counter(
            &mut registry,
            "iptables_restore_lines",
            "Lines of input written to iptables-restore",
        );
        let iptables_rules = Gauge::default();
        registry.register(
            "iptables_rules",
            "Rules in the chains l3agent owns, over all namespaces",
            iptables_rules.clone(),
        );
        let iptables_chains = Gauge::default();
        registry.register(
            "iptables_chains",
            "Chains l3agent owns, over all namespaces",
            iptables_chains.clone(),
        );
        let routers = Family::<StateLabels<RouterState>, Gauge>::default();
        registry.register("routers", "Routers in each state", routers.clone());
        for s in RouterState::ALL {
            routers.get_or_create(&[("state", s)]).set(0);
        }
        let floating_ips = Family::<StateLabels<FloatingIpState>, Gauge>::default();
        registry.register(
            "floating_ips",
            "Floating IPs in each Neutron status",
            floating_ips.clone(),
        );
        for s in FloatingIpState::ALL {
            floating_ips.get_or_create(&[("state", s)]).set(0);
        }
        let drift_repairs = Family::<KindLabels, Counter>::default();
        registry.register(
            "drift_repairs",
            "Kernel drift found and repaired, by kind",
            drift_repairs.clone(),
        );
        let config_loads = Family::<StateLabels<&'static str>, Counter>::default();
        registry.register(
            "config_loads",
            "Config reads after start-up, by result",
            config_loads.clone(),
        );
        for r in ["ok", "invalid"] {
            let _ = config_loads.get_or_create(&[("result", r)]);
        }
        let process_spawns = counter(&mut registry, "process_spawns", "Processes started");
        let ha_routers = Family::<Labels, Gauge>::default();
        registry.register(
            "ha_routers",
            "HA routers in each VRRP state on this host",
            ha_routers.clone(),
        );
        let ha_transitions = Family::<Labels, Counter>::default();
        registry.register(
            "ha_transitions",
            "Changes of an HA router's VRRP state, by the state changed to",
            ha_transitions.clone(),
        );
        for s in HA_STATES {
            ha_routers
                .get_or_create(&[("state", ha_state_label(s))])
                .set(0);
            let _ = ha_transitions.get_or_create(&[("to", ha_state_label(s))]);
        }
        let daemons = Family::<Labels, Gauge>::default();
        registry.register(
            "daemons",
            "Routers running each supervised daemon",
            daemons.clone(),
        );
        for s in Service::ALL {
            daemons.get_or_create(&[("service", s.name())]).set(0);
        }
        let traffic = Arc::new(Traffic::default());
        registry.register_collector(Box::new(Arc::clone(&traffic)));
        Metrics {
            registry,
            reconcile_duration,
            queue_depth,
            iptables_save,
            iptables_restore,
            iptables_restore_errors,
            iptables_restore_lines,
            iptables_rules,
            iptables_chains,
            routers,
            floating_ips,
            drift_repairs,
            config_loads,
            process_spawns,
            ha_routers,
            ha_transitions,
            daemons,
            traffic,
            on_scrape: HookSlot::default(),
            iptables_seen: std::sync::Mutex::new(StatsSnapshot::default()),
        }
    }

    /// Copies in what the iptables engine counted since the last call (`now`: the
    /// process-wide counters of `l3agent_iptables_exec::stats::global()`, which every
    /// manager and runner of this process adds to): saves, restores, restore lines and
    /// failures, processes started. [`Metrics::encode`] calls it, so a scrape is current.
    pub fn sync_iptables(&self, now: StatsSnapshot) {
        let mut seen = self.iptables_seen.lock().unwrap_or_else(|e| e.into_inner());
        let d = now.since(&seen);
        self.iptables_save.inc_by(d.saves);
        self.iptables_restore.inc_by(d.restores);
        self.iptables_restore_lines.inc_by(d.restore_lines);
        self.iptables_restore_errors.inc_by(d.restore_failures);
        self.process_spawns.inc_by(d.processes);
        *seen = now;
    }

    /// A router's reconcile finished `elapsed` after it was marked dirty.
    pub fn observe_reconcile(&self, elapsed: Duration) {
        self.reconcile_duration.observe(elapsed.as_secs_f64());
    }

    /// The queue holds `depth` routers (from [`WorkQueue::depth`](crate::WorkQueue::depth)).
    pub fn set_queue_depth(&self, depth: usize) {
        self.queue_depth
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// An `iptables-save` ran.
    pub fn iptables_saved(&self) {
        self.iptables_save.inc();
    }

    /// An `iptables-restore` ran with `lines` lines of input; `ok` is whether it succeeded.
    pub fn iptables_restored(&self, lines: u64, ok: bool) {
        self.iptables_restore.inc();
        self.iptables_restore_lines.inc_by(lines);
        if !ok {
            self.iptables_restore_errors.inc();
        }
    }

    /// The chains and rules l3agent owns now, over all namespaces.
    pub fn set_iptables_owned(&self, chains: u64, rules: u64) {
        self.iptables_chains
            .set(i64::try_from(chains).unwrap_or(i64::MAX));
        self.iptables_rules
            .set(i64::try_from(rules).unwrap_or(i64::MAX));
    }

    /// The number of routers per state; states not given are set to 0.
    pub fn set_routers(&self, counts: impl IntoIterator<Item = (RouterState, u64)>) {
        let counts: BTreeMap<_, _> = counts.into_iter().collect();
        for s in RouterState::ALL {
            let n = counts.get(&s).copied().unwrap_or(0);
            self.routers
                .get_or_create(&[("state", s)])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// The number of floating IPs per status; statuses not given are set to 0.
    pub fn set_floating_ips(&self, counts: impl IntoIterator<Item = (FloatingIpState, u64)>) {
        let counts: BTreeMap<_, _> = counts.into_iter().collect();
        for s in FloatingIpState::ALL {
            let n = counts.get(&s).copied().unwrap_or(0);
            self.floating_ips
                .get_or_create(&[("state", s)])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// A drift check found and repaired a difference of `kind` (the kind of the change that
    /// repaired it, e.g. `route`).
    pub fn drift_repaired(&self, kind: &str) {
        self.drift_repairs
            .get_or_create(&[("kind", kind.to_owned())])
            .inc();
    }

    /// The config was read again; `ok` is whether it was valid.
    pub fn config_loaded(&self, ok: bool) {
        let result = if ok { "ok" } else { "invalid" };
        self.config_loads.get_or_create(&[("result", result)]).inc();
    }

    /// The number of HA routers per VRRP state; states not given are set to 0.
    pub fn set_ha_routers(&self, counts: impl IntoIterator<Item = (HaState, u64)>) {
        let counts: BTreeMap<_, _> = counts.into_iter().collect();
        for s in HA_STATES {
            let n = counts.get(&s).copied().unwrap_or(0);
            self.ha_routers
                .get_or_create(&[("state", ha_state_label(s))])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// The number of routers running each daemon; services not given are set to 0.
    pub fn set_daemons(&self, counts: impl IntoIterator<Item = (Service, u64)>) {
        let counts: BTreeMap<_, _> = counts.into_iter().collect();
        for s in Service::ALL {
            let n = counts.get(&s).copied().unwrap_or(0);
            self.daemons
                .get_or_create(&[("service", s.name())])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// An HA router's VRRP state was read as `to`, having been read as the other one before.
    pub fn ha_transition(&self, to: HaState) {
        self.ha_transitions
            .get_or_create(&[("to", ha_state_label(to))])
            .inc();
    }

    /// A process was started.
    pub fn process_spawned(&self) {
        self.process_spawns.inc();
    }

    /// The kernel's latest counters for traffic through `router`'s gateway.
    pub fn set_router_traffic(&self, router: &str, direction: Direction, reading: TrafficReading) {
        write(&self.traffic.routers).insert((router.to_owned(), direction), reading);
    }

    /// `router` is gone: stop exporting its traffic.
    pub fn forget_router_traffic(&self, router: &str) {
        write(&self.traffic.routers).retain(|(r, _), _| r != router);
    }

    /// The kernel's latest counters for traffic to or from floating IP `ip`.
    pub fn set_floating_ip_traffic(
        &self,
        ip: IpAddr,
        direction: Direction,
        reading: TrafficReading,
    ) {
        write(&self.traffic.floating_ips).insert((ip, direction), reading);
    }

    /// Floating IP `ip` is gone: stop exporting its traffic.
    pub fn forget_floating_ip_traffic(&self, ip: IpAddr) {
        write(&self.traffic.floating_ips).retain(|(i, _), _| *i != ip);
    }

    /// Every traffic series at once, from one reading of the kernel: routers and floating
    /// IPs not in it are no longer exported.
    pub fn replace_traffic(
        &self,
        routers: BTreeMap<(String, Direction), TrafficReading>,
        floating_ips: BTreeMap<(IpAddr, Direction), TrafficReading>,
    ) {
        *write(&self.traffic.routers) = routers;
        *write(&self.traffic.floating_ips) = floating_ips;
    }

    /// Runs `hook` at the start of every [`Metrics::encode`], before anything is encoded:
    /// for values read only when asked for (the traffic counters, [`crate::traffic`]). The
    /// hook holds no lock of these metrics while it runs; it replaces any earlier one. It
    /// should not own what owns these metrics (hold a `Weak`), or neither is ever freed.
    pub fn on_scrape(&self, hook: impl Fn(&Metrics) + Send + Sync + 'static) {
        *write(&self.on_scrape.0) = Some(Arc::new(hook));
    }

    /// The registry in `format`, for the `/metrics` endpoint.
    pub fn encode(&self, format: Format) -> Result<String, AgentError> {
        let hook = read(&self.on_scrape.0).clone();
        if let Some(hook) = hook {
            hook(self);
        }
        self.sync_iptables(l3agent_iptables_exec::stats::global());
        let mut out = String::with_capacity(4096);
        match format {
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut out, &self.registry)
            }
            Format::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            }
        }
        .map_err(AgentError::EncodeMetrics)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Every metric with at least one sample, so every family is in the output.
    fn populated() -> Metrics {
        let m = Metrics::new();
        m.observe_reconcile(Duration::from_millis(30));
        m.set_queue_depth(3);
        m.iptables_saved();
        m.iptables_restored(12, true);
        m.iptables_restored(5, false);
        m.set_iptables_owned(4, 40);
        m.set_routers([(RouterState::Converged, 9), (RouterState::Failed, 1)]);
        m.set_floating_ips([(FloatingIpState::Active, 20)]);
        m.drift_repaired("route");
        m.process_spawned();
        m.set_ha_routers([(HaState::Master, 2), (HaState::Backup, 3)]);
        m.ha_transition(HaState::Master);
        let r = TrafficReading {
            bytes: 1500,
            packets: 1,
        };
        m.set_router_traffic("8f1c", Direction::Ingress, r);
        m.set_floating_ip_traffic("203.0.113.7".parse().unwrap(), Direction::Egress, r);
        m
    }

    /// The metric names declared by `# TYPE` lines (in the Prometheus format these are the
    /// sample names, `_total` included).
    fn declared(text: &str) -> BTreeSet<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .map(str::to_owned)
            .collect()
    }

    fn documented() -> BTreeSet<String> {
        METRICS_DOC
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn the_operator_docs_hold_the_metric_table() {
        let docs = include_str!("../../../docs/agent.md");
        assert!(
            docs.contains(METRICS_DOC.trim_end()),
            "docs/agent.md's metric table differs from METRICS_DOC"
        );
    }

    #[test]
    fn every_registered_metric_is_documented_and_every_documented_metric_is_registered() {
        let text = populated().encode(Format::Prometheus).unwrap();
        let declared = declared(&text);
        let documented = documented();
        assert_eq!(declared.len(), 20, "{declared:?}");
        assert_eq!(declared, documented);
        assert!(declared.iter().all(|n| n.starts_with("l3agent_")));
    }

    #[test]
    fn the_prometheus_format_holds_the_recorded_values() {
        let text = populated().encode(Format::Prometheus).unwrap();
        for line in [
            "l3agent_queue_depth 3",
            "l3agent_iptables_save_total 1",
            "l3agent_iptables_restore_total 2",
            "l3agent_iptables_restore_errors_total 1",
            "l3agent_iptables_restore_lines_total 17",
            "l3agent_iptables_rules 40",
            "l3agent_iptables_chains 4",
            "l3agent_routers{state=\"converged\"} 9",
            "l3agent_routers{state=\"failed\"} 1",
            "l3agent_routers{state=\"pending\"} 0",
            "l3agent_floating_ips{state=\"active\"} 20",
            "l3agent_floating_ips{state=\"error\"} 0",
            "l3agent_drift_repairs_total{kind=\"route\"} 1",
            "l3agent_process_spawns_total 1",
            "l3agent_ha_routers{state=\"master\"} 2",
            "l3agent_ha_routers{state=\"backup\"} 3",
            "l3agent_ha_transitions_total{to=\"master\"} 1",
            "l3agent_ha_transitions_total{to=\"backup\"} 0",
            "l3agent_reconcile_duration_seconds_count 1",
            "l3agent_router_traffic_bytes_total{router=\"8f1c\",direction=\"ingress\"} 1500",
            "l3agent_router_traffic_packets_total{router=\"8f1c\",direction=\"ingress\"} 1",
            "l3agent_floatingip_traffic_bytes_total{floating_ip=\"203.0.113.7\",direction=\"egress\"} 1500",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn the_openmetrics_format_ends_with_eof_and_declares_units() {
        let text = populated().encode(Format::OpenMetrics).unwrap();
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("# UNIT l3agent_reconcile_duration_seconds seconds"));
        assert!(text.contains("# TYPE l3agent_iptables_save counter"));
        assert!(text.contains("\nl3agent_iptables_save_total 1\n"));
        assert!(text.contains("# TYPE l3agent_router_traffic_bytes counter"));
    }

    #[test]
    fn traffic_readings_are_set_not_added_and_forgotten_with_their_router() {
        let m = Metrics::new();
        let ip: IpAddr = "2001:db8::7".parse().unwrap();
        let reading = |bytes| TrafficReading { bytes, packets: 1 };
        m.set_router_traffic("r1", Direction::Egress, reading(100));
        m.set_router_traffic("r1", Direction::Egress, reading(250));
        m.set_floating_ip_traffic(ip, Direction::Ingress, reading(7));
        let text = m.encode(Format::Prometheus).unwrap();
        assert!(text.contains(
            "l3agent_router_traffic_bytes_total{router=\"r1\",direction=\"egress\"} 250\n"
        ));
        m.forget_router_traffic("r1");
        m.forget_floating_ip_traffic(ip);
        let text = m.encode(Format::Prometheus).unwrap();
        assert!(!text.contains("router=\"r1\""), "{text}");
        assert!(!text.contains("2001:db8::7"), "{text}");
    }

    #[test]
    fn a_scrape_runs_the_hook_first_and_a_replacement_drops_the_series_it_lacks() {
        let m = Metrics::new();
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        m.set_router_traffic("old", Direction::Ingress, TrafficReading::default());
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        m.on_scrape(move |m| {
            let n = c.fetch_add(1, std::sync::atomic::Ordering::SeqCst) as u64 + 1;
            let r = TrafficReading {
                bytes: 100 * n,
                packets: n,
            };
            m.replace_traffic(
                BTreeMap::from([(("r1".to_owned(), Direction::Egress), r)]),
                BTreeMap::from([((ip, Direction::Ingress), r)]),
            );
        });
        let text = m.encode(Format::Prometheus).unwrap();
        assert!(text.contains(
            "l3agent_router_traffic_bytes_total{router=\"r1\",direction=\"egress\"} 100\n"
        ));
        assert!(text.contains(
            "l3agent_floatingip_traffic_packets_total{floating_ip=\"203.0.113.7\",direction=\"ingress\"} 1\n"
        ));
        assert!(!text.contains("router=\"old\""), "{text}");
        let text = m.encode(Format::OpenMetrics).unwrap();
        assert!(
            text.contains("router=\"r1\",direction=\"egress\"} 200\n"),
            "{text}"
        );
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn label_values_from_outside_are_escaped() {
        let m = Metrics::new();
        m.drift_repaired("a\"b\nc");
        let text = m.encode(Format::Prometheus).unwrap();
        assert!(text.contains(r#"kind="a\"b\nc""#), "{text}");
    }

    #[test]
    fn a_fresh_registry_has_every_state_at_zero() {
        let text = Metrics::new().encode(Format::Prometheus).unwrap();
        for s in RouterState::ALL {
            assert!(text.contains(&format!("l3agent_routers{{state=\"{}\"}} 0\n", s.as_str())));
        }
        for s in FloatingIpState::ALL {
            assert!(text.contains(&format!(
                "l3agent_floating_ips{{state=\"{}\"}} 0\n",
                s.as_str()
            )));
        }
        for s in ["master", "backup"] {
            assert!(text.contains(&format!("l3agent_ha_routers{{state=\"{s}\"}} 0\n")));
            assert!(text.contains(&format!("l3agent_ha_transitions_total{{to=\"{s}\"}} 0\n")));
        }
    }

    #[test]
    fn ha_router_counts_are_set_not_added_and_transitions_counted_by_target_state() {
        let m = Metrics::new();
        m.set_ha_routers([(HaState::Master, 4), (HaState::Backup, 1)]);
        m.set_ha_routers([(HaState::Backup, 5)]);
        m.ha_transition(HaState::Backup);
        m.ha_transition(HaState::Backup);
        let text = m.encode(Format::Prometheus).unwrap();
        for line in [
            "l3agent_ha_routers{state=\"master\"} 0",
            "l3agent_ha_routers{state=\"backup\"} 5",
            "l3agent_ha_transitions_total{to=\"backup\"} 2",
            "l3agent_ha_transitions_total{to=\"master\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert_eq!(ha_state_label(HaState::Master), "master");
        assert_eq!(ha_state_label(HaState::Backup), "backup");
    }

    #[test]
    fn the_format_follows_the_accept_header() {
        assert_eq!(Format::negotiate(None), Format::Prometheus);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Prometheus);
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
            )),
            Format::OpenMetrics
        );
        assert!(Format::OpenMetrics
            .content_type()
            .starts_with("application/openmetrics-text"));
        assert!(Format::Prometheus
            .content_type()
            .starts_with("text/plain; version=0.0.4"));
    }
}
