//! Per-router and per-floating-IP traffic counters for `/metrics`
//! (`l3agent_router_traffic_*`, `l3agent_floatingip_traffic_*`): what Neutron's metering
//! agent reads with `get_traffic_counters`, read from the kernel in-process.
//!
//! - **A router**: the link statistics (`ip -s link show dev …`, one `RTM_GETLINK` per
//!   device) of its external devices on this host, summed: `qg-` in `qrouter-` (legacy
//!   and HA routers; on an HA backup it is down and counts next to nothing), `rfp-` in
//!   `qrouter-` (a DVR router's floating IP traffic, to and from the `fip-` namespace) and
//!   `qg-` in `snat-` (a DVR router's SNAT traffic, on the `dvr_snat` host). These are
//!   disjoint paths, so the sum counts each packet once. `ingress` is what the devices
//!   received (from the external network), `egress` what they sent. The shared `fip-`
//!   namespace's `fg-` device is not a router's and is not counted.
//! - **A floating IP**, by default: the counters of its NAT rules in `qrouter-` (the rules
//!   compile writes for every router type): `ingress` is `-d FIP/32 [-i rfp-…] -j DNAT` in
//!   `neutron-l3-agent-PREROUTING`, `egress` is `-s FIXED/32 -j SNAT --to-source FIP` in
//!   `neutron-l3-agent-float-snat`, read with [`rule_counters`] (an nf_tables rule dump
//!   over netlink, or legacy's `IPT_SO_GET_ENTRIES`). NAT rules see the first packet of
//!   each connection only (conntrack applies the mapping to the rest), so these count
//!   connections opened to and from the address, with their first packets' bytes.
//! - **A floating IP, with `agent.traffic_accounting`**: compile writes accounting rules in
//!   the `qrouter-` filter table, `neutron-l3-agent-fip-acct` (jumped to first from
//!   `neutron-l3-agent-FORWARD`), and those are read instead of the NAT rules: `ingress` is
//!   `-d FIXED/32 -i EXT`, `egress` is `-s FIXED/32 -o EXT` (`EXT` the `qg-`, or a DVR
//!   router's `rfp-`), rules without a target that count every forwarded packet. `FORWARD`
//!   sees destinations after DNAT and sources before SNAT, so the rules match the fixed
//!   address, and a rule is mapped back to its floating IP by that address and by which
//!   side of the rule holds it ([`interpret`]). This is all the floating IP's traffic
//!   through the router, what Neutron's metering agent counts; what the router itself sends
//!   to or receives from the fixed address is not forwarded and not counted.
//!
//! **When.** Nothing is read until `/metrics` is scraped; a scrape reads every configured
//! router if the last reading is older than [`TrafficMeter`]'s `max_age` (5 s by default), so
//! scrapers that come often or together (two Prometheus servers) cost one reading. One
//! reading is, per router, one short-lived thread inside `qrouter-` (and `snat-` for DVR)
//! that asks the kernel for its external devices by name (`RTM_GETLINK`, as compile names
//! them) and, if it has floating IPs, dumps the two NAT chains, or with accounting the
//! `fip-acct` chain (or reads the legacy table once): no process, nothing written. An idle
//! agent that nobody scrapes reads nothing.
//!
//! A router whose namespace does not exist (not created yet, removed) has no series; one
//! that fails to read keeps its previous reading (logged at debug) so that a transient error
//! does not make its counters disappear; a router no longer configured is dropped.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use l3agent_iptables_exec::rule_counters::{self, RuleCounter};
use l3agent_iptables_exec::Backend;
use l3agent_router::compile::{FIP_ACCT_CHAIN, WRAP};
use l3agent_router::config::HostConfig;
use l3agent_router::spec::names;
use l3agent_rtnl::link_stats::LinkCounters;
use l3agent_rtnl::{Netns, Rtnl};
use l3agent_types::{IfName, NetnsName, RouterId};
use tracing::debug;

use crate::metrics::{Direction, Metrics, TrafficReading};
use crate::AgentError;

/// The device prefixes of a router's external devices (see the module docs).
pub const EXTERNAL_DEVICE_PREFIXES: [&str; 2] = ["qg-", "rfp-"];

/// What to read for one router, from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The router.
    pub router: RouterId,
    /// Its `qrouter-` namespace: the floating IPs' NAT rules are there.
    pub router_ns: NetnsName,
    /// Its external devices, by namespace, as compile names them: the gateway port's `qg-`
    /// in `qrouter-`; for a distributed router `rfp-<id>` in `qrouter-` and the gateway
    /// port's `qg-` in `snat-`. A device (or `snat-` namespace) that is not there on this
    /// host is simply not counted.
    pub devices: Vec<(NetnsName, IfName)>,
    /// Its floating IPs: (floating, fixed).
    pub fips: Vec<(Ipv4Addr, Ipv4Addr)>,
    /// Whether the floating IPs are read from their accounting rules (the config's
    /// `agent.traffic_accounting`) instead of their NAT rules.
    pub accounting: bool,
}

/// The routers of `cfg` to read, in config order.
pub fn targets(cfg: &HostConfig) -> Vec<Target> {
    cfg.routers
        .iter()
        .map(|r| {
            let router_ns = names::router_ns(&r.id);
            let mut devices = Vec::new();
            if r.distributed {
                devices.push((router_ns.clone(), names::device("rfp-", r.id.as_str())));
            }
            if let Some(gw) = &r.gw_port {
                let ns = if r.distributed {
                    names::snat_ns(&r.id)
                } else {
                    router_ns.clone()
                };
                devices.push((ns, gw.dev.clone()));
            }
            Target {
                router: r.id.clone(),
                router_ns,
                devices,
                fips: r.fips.iter().map(|f| (f.floating, f.fixed)).collect(),
                accounting: cfg.agent.traffic_accounting,
            }
        })
        .collect()
}

/// What one router's namespaces hold, as read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The counters of its external devices that exist.
    pub links: Vec<(String, LinkCounters)>,
    /// The rules of the floating IPs' chains in `qrouter-` (the NAT chains, or with
    /// accounting the filter table's accounting chain).
    pub rules: Vec<RuleCounter>,
}

/// Reads a router's counters from the kernel (or a test's fake).
pub trait TrafficSource: Send + Sync {
    /// The counters of `target`'s devices and rules; `None` if its `qrouter-` namespace
    /// does not exist (a missing `snat-` namespace or device only has nothing to add).
    fn read(&self, target: &Target) -> Result<Option<Observed>, AgentError>;
}

/// The chain of the floating IPs' DNAT rules.
pub fn dnat_chain() -> String {
    format!("{WRAP}-PREROUTING")
}

/// The chain of the floating IPs' SNAT rules.
pub fn snat_chain() -> String {
    format!("{WRAP}-float-snat")
}

/// The filter chain of the floating IPs' accounting rules (`agent.traffic_accounting`).
pub fn acct_chain() -> String {
    format!("{WRAP}-{FIP_ACCT_CHAIN}")
}

/// The kernel: link dumps and rule counters, on a thread inside each namespace.
#[derive(Debug, Clone, Copy)]
pub struct KernelTraffic {
    backend: Backend,
}

impl KernelTraffic {
    /// Reads rule counters with `backend`'s interface (the one the agent writes with: asking
    /// the other one would make the kernel create an empty legacy table).
    pub fn new(backend: Backend) -> KernelTraffic {
        KernelTraffic { backend }
    }
}

/// Opens `ns`; `None` if it does not exist.
fn open(ns: &NetnsName) -> Result<Option<Netns>, AgentError> {
    match Netns::open(ns) {
        Ok(n) => Ok(Some(n)),
        Err(l3agent_rtnl::netns::NetnsError::NoNamespace(_)) => Ok(None),
        Err(e) => Err(AgentError::LinkCounters {
            netns: ns.to_string(),
            source: e.into(),
        }),
    }
}

fn links_err(ns: &NetnsName) -> impl FnOnce(l3agent_rtnl::Error) -> AgentError + '_ {
    move |source| AgentError::LinkCounters {
        netns: ns.to_string(),
        source,
    }
}

/// The counters of `devices` (those that exist), from a thread inside `ns`, and the rules
/// of `chains` of `table` there if any are asked for.
fn read_ns(
    ns: &Netns,
    label: &NetnsName,
    devices: &[&IfName],
    backend: Backend,
    (table, chains): (&str, &[&str]),
) -> Result<Observed, AgentError> {
    let (links, rules) = ns
        .run::<_, l3agent_rtnl::Error>(|| {
            let links = Rtnl::current().and_then(|mut r| {
                let mut out = Vec::with_capacity(devices.len());
                for d in devices {
                    if let Some(c) = r.link_counters_of(d)? {
                        out.push((d.to_string(), c));
                    }
                }
                Ok(out)
            });
            let rules = match chains {
                [] => Ok(Vec::new()),
                _ => rule_counters::read(backend, table, chains),
            };
            (links, rules)
        })
        .map_err(links_err(label))?;
    Ok(Observed {
        links: links.map_err(links_err(label))?,
        rules: rules.map_err(|source| AgentError::RuleCounters {
            netns: label.to_string(),
            source,
        })?,
    })
}

impl TrafficSource for KernelTraffic {
    fn read(&self, target: &Target) -> Result<Option<Observed>, AgentError> {
        let Some(qrouter) = open(&target.router_ns)? else {
            return Ok(None);
        };
        let (dnat, snat, acct) = (dnat_chain(), snat_chain(), acct_chain());
        let chains: (&str, &[&str]) = match (target.fips.is_empty(), target.accounting) {
            (true, _) => ("nat", &[]),
            (false, false) => ("nat", &[&dnat, &snat]),
            (false, true) => ("filter", &[&acct]),
        };
        let here = |ns: &NetnsName| -> Vec<&IfName> {
            target
                .devices
                .iter()
                .filter(|(n, _)| n == ns)
                .map(|(_, d)| d)
                .collect()
        };
        let mut seen = read_ns(
            &qrouter,
            &target.router_ns,
            &here(&target.router_ns),
            self.backend,
            chains,
        )?;
        // The other namespaces with devices (a distributed router's `snat-`).
        let mut others: Vec<&NetnsName> = target
            .devices
            .iter()
            .map(|(n, _)| n)
            .filter(|n| **n != target.router_ns)
            .collect();
        others.dedup();
        for name in others {
            if let Some(ns) = open(name)? {
                let more = read_ns(&ns, name, &here(name), self.backend, ("nat", &[]))?;
                seen.links.extend(more.links);
            }
        }
        Ok(Some(seen))
    }
}

/// One reading of every router: the series of the traffic families.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Readings {
    /// Per router id and direction.
    pub routers: BTreeMap<(String, Direction), TrafficReading>,
    /// Per floating IP and direction.
    pub floating_ips: BTreeMap<(IpAddr, Direction), TrafficReading>,
}

fn add(a: TrafficReading, bytes: u64, packets: u64) -> TrafficReading {
    TrafficReading {
        bytes: a.bytes.saturating_add(bytes),
        packets: a.packets.saturating_add(packets),
    }
}

/// What `seen` says of `target`'s traffic: its external devices' counters summed (no
/// series if it has none), and each floating IP's rule counters (no series for a rule that
/// is not there, e.g. a DVR floating IP bound on another host): its DNAT and SNAT rules, or
/// with accounting its two rules of the accounting chain, told apart by where the fixed
/// address is — `-d FIXED/32` (and no source) is `ingress`, `-s FIXED/32` (and no
/// destination) is `egress`, both without a target.
pub fn interpret(target: &Target, seen: &Observed, out: &mut Readings) {
    let external: Vec<&LinkCounters> = seen
        .links
        .iter()
        .filter(|(name, _)| EXTERNAL_DEVICE_PREFIXES.iter().any(|p| name.starts_with(p)))
        .map(|(_, c)| c)
        .collect();
    if !external.is_empty() {
        let sum = external
            .into_iter()
            .fold(LinkCounters::default(), |a, c| a.saturating_add(*c));
        let id = target.router.to_string();
        out.routers.insert(
            (id.clone(), Direction::Ingress),
            TrafficReading {
                bytes: sum.rx_bytes,
                packets: sum.rx_packets,
            },
        );
        out.routers.insert(
            (id, Direction::Egress),
            TrafficReading {
                bytes: sum.tx_bytes,
                packets: sum.tx_packets,
            },
        );
    }
    let (dnat, snat, acct) = (dnat_chain(), snat_chain(), acct_chain());
    for (floating, fixed) in &target.fips {
        let accounting = |r: &RuleCounter, source, destination| {
            r.chain == acct
                && r.source == source
                && r.destination == destination
                && r.target.is_none()
        };
        let ingress = |r: &&RuleCounter| {
            if target.accounting {
                accounting(r, None, Some(*fixed))
            } else {
                r.chain == dnat
                    && r.destination == Some(*floating)
                    && r.target.as_deref() == Some("DNAT")
            }
        };
        let egress = |r: &&RuleCounter| {
            if target.accounting {
                accounting(r, Some(*fixed), None)
            } else {
                r.chain == snat && r.source == Some(*fixed) && r.target.as_deref() == Some("SNAT")
            }
        };
        for (dir, matches) in [
            (
                Direction::Ingress,
                seen.rules.iter().filter(ingress).collect::<Vec<_>>(),
            ),
            (
                Direction::Egress,
                seen.rules.iter().filter(egress).collect(),
            ),
        ] {
            if matches.is_empty() {
                continue;
            }
            let reading = matches
                .iter()
                .fold(TrafficReading::default(), |a, r| add(a, r.bytes, r.packets));
            out.floating_ips
                .insert((IpAddr::V4(*floating), dir), reading);
        }
    }
}

/// Reads the traffic counters when they are asked for, at most once per `max_age`, and
/// puts them into the metrics (see the module docs).
pub struct TrafficMeter {
    source: Arc<dyn TrafficSource>,
    max_age: Duration,
    /// When the last reading was taken, and what it gave (kept for routers that fail to
    /// read next time). Held during a reading: concurrent scrapes wait for it.
    last: Mutex<Option<(Instant, Readings)>>,
}

impl std::fmt::Debug for TrafficMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrafficMeter")
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

/// How stale a reading may be before a scrape takes a new one.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(5);

impl TrafficMeter {
    /// A meter reading with `source`, at most once per `max_age`.
    pub fn new(source: Arc<dyn TrafficSource>, max_age: Duration) -> TrafficMeter {
        TrafficMeter {
            source,
            max_age,
            last: Mutex::new(None),
        }
    }

    /// If the last reading is older than `max_age` (or there is none), reads every router
    /// of `cfg` and replaces the traffic series of `metrics` with what was read. Returns
    /// whether it read.
    pub fn refresh(&self, cfg: &HostConfig, metrics: &Metrics) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < self.max_age)
        {
            return false;
        }
        let previous = last.take().map(|(_, r)| r).unwrap_or_default();
        let started = Instant::now();
        let mut now = Readings::default();
        let mut failed = 0usize;
        for t in targets(cfg) {
            match self.source.read(&t) {
                Ok(Some(seen)) => interpret(&t, &seen, &mut now),
                Ok(None) => {}
                Err(e) => {
                    failed += 1;
                    debug!(router = %t.router, error = %e, "traffic counters not read; the last reading stays");
                    keep_previous(&t, &previous, &mut now);
                }
            }
        }
        debug!(
            routers = cfg.routers.len(),
            failed,
            took_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            "traffic counters read"
        );
        metrics.replace_traffic(now.routers.clone(), now.floating_ips.clone());
        *last = Some((Instant::now(), now));
        true
    }
}

/// Carries `t`'s series over from the previous reading.
fn keep_previous(t: &Target, previous: &Readings, now: &mut Readings) {
    let id = t.router.to_string();
    for (k, v) in previous.routers.range((id.clone(), Direction::Ingress)..) {
        if k.0 != id {
            break;
        }
        now.routers.insert(k.clone(), *v);
    }
    for (floating, _) in &t.fips {
        for dir in [Direction::Ingress, Direction::Egress] {
            let k = (IpAddr::V4(*floating), dir);
            if let Some(v) = previous.floating_ips.get(&k) {
                now.floating_ips.insert(k, *v);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A traffic source over fixed readings, counting its reads.
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Per router namespace: what a read returns (`Err`: a failure).
    #[derive(Debug, Default)]
    pub struct FakeTraffic {
        pub seen: Mutex<BTreeMap<String, Result<Observed, String>>>,
        pub reads: AtomicUsize,
    }

    impl FakeTraffic {
        pub fn set(&self, ns: &str, seen: Result<Observed, String>) {
            self.seen.lock().unwrap().insert(ns.to_owned(), seen);
        }
        pub fn reads(&self) -> usize {
            self.reads.load(Ordering::SeqCst)
        }
    }

    impl TrafficSource for FakeTraffic {
        fn read(&self, target: &Target) -> Result<Option<Observed>, AgentError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            match self.seen.lock().unwrap().get(target.router_ns.as_str()) {
                None => Ok(None),
                Some(Ok(o)) => Ok(Some(o.clone())),
                Some(Err(e)) => Err(AgentError::LinkCounters {
                    netns: target.router_ns.to_string(),
                    source: l3agent_rtnl::Error::Value(e.clone()),
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeTraffic;
    use super::*;
    use crate::metrics::Format;
    use l3agent_router::config::ConfigDoc;
    use serde_json::json;

    const A: &str = "87c7c2ae-d0ba-4691-820c-8053abf50b8d";

    fn config(distributed: bool) -> HostConfig {
        config_with(distributed, false)
    }

    /// [`config`] with `agent.traffic_accounting` set to `accounting`.
    fn config_with(distributed: bool, accounting: bool) -> HostConfig {
        let mut r: serde_json::Value = serde_json::from_str(include_str!(
            "../../router/tests/data/neutron-router-legacy.json"
        ))
        .unwrap();
        let mode = if distributed {
            r = serde_json::from_str(include_str!(
                "../../router/tests/data/neutron-router-dvr.json"
            ))
            .unwrap();
            "dvr_snat"
        } else {
            "legacy"
        };
        let doc: ConfigDoc = serde_json::from_value(json!({
            "agent": {"mode": mode, "host": "host-a", "state_path": "/nonexistent",
                "bridges": {
                    "90e4912c-0eb8-4be4-a793-e6a3bba6ae8b": "br-t1",
                    "c6910e18-fb1f-4988-9af4-211a8c2e2926": "br-t2",
                    "65566f91-133a-44ff-87f5-ecffc1193d3d": "br-ex",
                    "740cd353-7ee8-49e2-96f6-17ed0dc7b3da": "br-t1",
                    "d8282fc8-37e4-43a7-801d-8d2c91dbbb98": "br-t2",
                    "11272de9-8a18-4392-8618-d07b6ab565e3": "br-ex"},
                "traffic_accounting": accounting},
            "routers": [r],
        }))
        .unwrap();
        doc.validate().map_err(|e| format!("{e:?}")).unwrap()
    }

    fn link(name: &str, rx: u64, tx: u64) -> (String, LinkCounters) {
        (
            name.to_owned(),
            LinkCounters {
                rx_bytes: rx,
                rx_packets: rx / 100,
                tx_bytes: tx,
                tx_packets: tx / 100,
            },
        )
    }

    fn rule(
        chain: &str,
        src: Option<&str>,
        dst: Option<&str>,
        target: &str,
        p: u64,
    ) -> RuleCounter {
        RuleCounter {
            chain: chain.to_owned(),
            source: src.map(|s| s.parse().unwrap()),
            destination: dst.map(|s| s.parse().unwrap()),
            target: Some(target.to_owned()),
            packets: p,
            bytes: p * 84,
        }
    }

    /// An accounting rule (no target) with its addresses.
    fn acct(chain: &str, src: Option<&str>, dst: Option<&str>, p: u64) -> RuleCounter {
        RuleCounter {
            target: None,
            ..rule(chain, src, dst, "", p)
        }
    }

    #[test]
    fn targets_name_each_routers_namespaces_and_floating_ips() {
        let t = targets(&config(false));
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].router.as_str(), A);
        let qrouter = format!("qrouter-{A}");
        assert_eq!(t[0].router_ns.as_str(), qrouter);
        let devices: Vec<(String, String)> = t[0]
            .devices
            .iter()
            .map(|(n, d)| (n.to_string(), d.to_string()))
            .collect();
        assert_eq!(devices, [(qrouter, "qg-184a6791-c4".to_owned())]);
        assert_eq!(
            t[0].fips,
            vec![(
                "203.0.113.2".parse().unwrap(),
                "192.0.2.10".parse().unwrap()
            )]
        );
        // Distributed: the rfp- end in qrouter-, the gateway in snat-.
        let d = targets(&config(true));
        let id = d[0].router.to_string();
        let devices: Vec<(String, String)> = d[0]
            .devices
            .iter()
            .map(|(n, d)| (n.to_string(), d.to_string()))
            .collect();
        assert_eq!(
            devices,
            [
                (format!("qrouter-{id}"), format!("rfp-{}", &id[..10])),
                (format!("snat-{id}"), "qg-16663def-59".to_owned()),
            ]
        );
        // The config's accounting mode goes with every target.
        assert!(!t[0].accounting && !d[0].accounting);
        assert!(targets(&config_with(false, true))[0].accounting);
        assert!(targets(&config_with(true, true))[0].accounting);
    }

    #[test]
    fn with_accounting_a_floating_ip_counts_its_accounting_rules_by_fixed_address_and_side() {
        let t = &targets(&config_with(false, true))[0];
        let seen = Observed {
            links: Vec::new(),
            rules: vec![
                // The two rules compile writes for 203.0.113.2 -> 192.0.2.10.
                acct(&acct_chain(), None, Some("192.0.2.10"), 20),
                acct(&acct_chain(), Some("192.0.2.10"), None, 30),
                // Another fixed address, both addresses, a target, another chain: not its.
                acct(&acct_chain(), None, Some("192.0.2.11"), 40),
                acct(&acct_chain(), Some("192.0.2.10"), Some("192.0.2.10"), 50),
                rule(&acct_chain(), None, Some("192.0.2.10"), "DROP", 60),
                acct(&format!("{WRAP}-FORWARD"), Some("192.0.2.10"), None, 70),
                // The NAT rules are not read with accounting.
                rule(&dnat_chain(), None, Some("203.0.113.2"), "DNAT", 3),
                rule(&snat_chain(), Some("192.0.2.10"), None, "SNAT", 2),
            ],
        };
        let mut out = Readings::default();
        interpret(t, &seen, &mut out);
        let fip: IpAddr = "203.0.113.2".parse().unwrap();
        let r = |bytes, packets| TrafficReading { bytes, packets };
        assert_eq!(
            out.floating_ips,
            BTreeMap::from([
                ((fip, Direction::Ingress), r(20 * 84, 20)),
                ((fip, Direction::Egress), r(30 * 84, 30)),
            ])
        );
        // Without accounting the same rules give the NAT counters.
        let t = &targets(&config_with(false, false))[0];
        let mut out = Readings::default();
        interpret(t, &seen, &mut out);
        assert_eq!(
            out.floating_ips,
            BTreeMap::from([
                ((fip, Direction::Ingress), r(3 * 84, 3)),
                ((fip, Direction::Egress), r(2 * 84, 2)),
            ])
        );
        // A rule missing (the chain not written yet): no series for its direction.
        let t = &targets(&config_with(false, true))[0];
        let mut out = Readings::default();
        interpret(
            t,
            &Observed {
                links: Vec::new(),
                rules: vec![acct(&acct_chain(), Some("192.0.2.10"), None, 30)],
            },
            &mut out,
        );
        assert_eq!(
            out.floating_ips,
            BTreeMap::from([((fip, Direction::Egress), r(30 * 84, 30))])
        );
    }

    #[test]
    fn a_router_counts_its_external_devices_and_a_floating_ip_its_own_nat_rules() {
        let t = &targets(&config(false))[0];
        let seen = Observed {
            links: vec![
                link("lo", 5_000, 5_000),
                link("qr-081ed401-2a", 9_000, 9_000),
                link("qg-184a6791-c4", 1_000, 300),
                // Another external device of the same router (DVR: rfp- and snat's qg-).
                link("rfp-87c7c2ae-d", 200, 100),
            ],
            rules: vec![
                rule(&dnat_chain(), None, Some("203.0.113.2"), "DNAT", 3),
                // Not this floating IP's, or not its NAT.
                rule(&dnat_chain(), None, Some("203.0.113.9"), "DNAT", 50),
                rule(&dnat_chain(), None, Some("203.0.113.2"), "MARK", 70),
                rule("PREROUTING", None, Some("203.0.113.2"), "DNAT", 80),
                rule(&snat_chain(), Some("192.0.2.10"), None, "SNAT", 2),
                rule(&snat_chain(), Some("192.0.2.11"), None, "SNAT", 90),
            ],
        };
        let mut out = Readings::default();
        interpret(t, &seen, &mut out);
        let r = |bytes, packets| TrafficReading { bytes, packets };
        assert_eq!(
            out.routers,
            BTreeMap::from([
                ((A.to_owned(), Direction::Ingress), r(1_200, 12)),
                ((A.to_owned(), Direction::Egress), r(400, 4)),
            ])
        );
        let fip: IpAddr = "203.0.113.2".parse().unwrap();
        assert_eq!(
            out.floating_ips,
            BTreeMap::from([
                ((fip, Direction::Ingress), r(3 * 84, 3)),
                ((fip, Direction::Egress), r(2 * 84, 2)),
            ])
        );
    }

    #[test]
    fn nothing_external_and_no_rules_give_no_series() {
        let t = &targets(&config(false))[0];
        let seen = Observed {
            links: vec![link("lo", 1, 1), link("qr-081ed401-2a", 1, 1)],
            rules: Vec::new(),
        };
        let mut out = Readings::default();
        interpret(t, &seen, &mut out);
        assert_eq!(out, Readings::default());
    }

    fn scrape(m: &Metrics) -> String {
        m.encode(Format::Prometheus).unwrap()
    }

    #[test]
    fn the_meter_reads_at_most_once_per_max_age_and_keeps_a_failed_routers_last_reading() {
        let cfg = config(false);
        let ns = format!("qrouter-{A}");
        let fake = Arc::new(FakeTraffic::default());
        let meter = TrafficMeter::new(fake.clone(), Duration::from_millis(300));
        let m = Metrics::new();
        // No namespace yet: read, nothing exported.
        assert!(meter.refresh(&cfg, &m));
        assert_eq!(fake.reads(), 1);
        assert!(!scrape(&m).contains("l3agent_router_traffic_bytes_total{"));

        fake.set(
            &ns,
            Ok(Observed {
                links: vec![link("qg-184a6791-c4", 1_000, 300)],
                rules: vec![rule(&dnat_chain(), None, Some("203.0.113.2"), "DNAT", 3)],
            }),
        );
        // Within max_age: not read again.
        assert!(!meter.refresh(&cfg, &m));
        assert_eq!(fake.reads(), 1);
        std::thread::sleep(Duration::from_millis(350));
        assert!(meter.refresh(&cfg, &m));
        let text = scrape(&m);
        for line in [
            format!("l3agent_router_traffic_bytes_total{{router=\"{A}\",direction=\"ingress\"}} 1000"),
            format!("l3agent_router_traffic_packets_total{{router=\"{A}\",direction=\"egress\"}} 3"),
            "l3agent_floatingip_traffic_packets_total{floating_ip=\"203.0.113.2\",direction=\"ingress\"} 3".to_owned(),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("floating_ip=\"203.0.113.2\",direction=\"egress\""));

        // A failure keeps the last reading.
        fake.set(&ns, Err("boom".into()));
        std::thread::sleep(Duration::from_millis(350));
        assert!(meter.refresh(&cfg, &m));
        assert_eq!(scrape(&m), text);

        // The namespace gone: the series go.
        fake.seen.lock().unwrap().clear();
        std::thread::sleep(Duration::from_millis(350));
        assert!(meter.refresh(&cfg, &m));
        let text = scrape(&m);
        assert!(!text.contains(A), "{text}");
        assert!(!text.contains("203.0.113.2"), "{text}");
    }

    #[test]
    fn concurrent_scrapes_share_one_reading() {
        let cfg = Arc::new(config(false));
        let fake = Arc::new(FakeTraffic::default());
        let meter = Arc::new(TrafficMeter::new(fake.clone(), Duration::from_secs(60)));
        let m = Arc::new(Metrics::new());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (cfg, meter, m) = (Arc::clone(&cfg), Arc::clone(&meter), Arc::clone(&m));
                std::thread::spawn(move || meter.refresh(&cfg, &m))
            })
            .collect();
        let read: usize = threads
            .into_iter()
            .map(|t| usize::from(t.join().unwrap()))
            .sum();
        assert_eq!((read, fake.reads()), (1, 1));
    }
}
