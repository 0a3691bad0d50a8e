//! Observe: what one of l3agent's namespaces holds now, in the shape of
//! [`crate::spec::NsSpec`]: netlink dumps (links, addresses, routes of every table, rules,
//! permanent neighbours), the sysctls the spec names, the host ends of its ports, and the
//! iptables input a [`Firewall`] would send, and with the `openvswitch` interface driver the
//! integration bridge's records of its ports (from [`BridgePorts`], read once per apply, not
//! per namespace). Only what l3agent owns is kept: routes the kernel
//! installed itself (`proto kernel`, `ra`, `redirect`), the three default policy rules and IPv6
//! link-local addresses are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use l3agent_iptables::Family;
use l3agent_ovsdb::PortRecord;
use l3agent_rtnl::route::{Protocol, Route};
use l3agent_rtnl::rule::Rule;
use l3agent_rtnl::sysctl::Sysctl;
use l3agent_supervise::Service;
use l3agent_types::{IfName, MacAddr, NetnsName};

use crate::error::RouterError;
use crate::kernel::{DaemonState, Firewall, Kernel};
use crate::spec::{DeviceKind, NsKind, NsSpec};

/// One link as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedDevice {
    /// `veth`, `bridge`, … (`None` for `lo`).
    pub kind: Option<String>,
    /// MTU.
    pub mtu: u32,
    /// MAC.
    pub mac: Option<MacAddr>,
    /// Administratively up.
    pub up: bool,
    /// Addresses, IPv6 link-local ones left out.
    pub addresses: BTreeSet<IpNet>,
}

/// The host end of a port as observed in the host namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedHostEnd {
    /// Name of its bridge (`None`: not on a bridge).
    pub master: Option<String>,
    /// MTU.
    pub mtu: u32,
    /// Up.
    pub up: bool,
}

/// The integration bridge's ports by name, as read once at the start of a `plan`, `apply` or
/// `status` (`ovs-vsctl list-ports BRIDGE` with their Interface rows). Each router's ports
/// are its own (names derive from port ids), so one picture taken before anything changes is
/// right for every router the run converges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BridgePorts {
    /// Port name → record.
    pub ports: BTreeMap<String, PortRecord>,
}

impl BridgePorts {
    /// From [`l3agent_ovsdb::OvsPorts::ports`].
    pub fn new(records: Vec<PortRecord>) -> BridgePorts {
        BridgePorts {
            ports: records.into_iter().map(|r| (r.name.clone(), r)).collect(),
        }
    }
}

/// Whether a link is the device of an OVS internal port: a tap device on the userspace
/// datapath (`tun`), an `openvswitch` internal device on the kernel's.
pub fn ovs_device_kind(kind: Option<&str>) -> bool {
    matches!(kind, Some("tun" | "openvswitch"))
}

/// What a namespace holds.
#[derive(Debug, Clone, Default)]
pub struct ObservedNs {
    /// It exists.
    pub exists: bool,
    /// Created by this run: its sysctls are taken as unknown (a new namespace inherits some
    /// IPv4 values from the host's), so all of the spec's are written; its rule sets are taken
    /// as empty, as they are in a new namespace (not read).
    pub fresh: bool,
    /// Links by name.
    pub devices: BTreeMap<String, ObservedDevice>,
    /// Routes of every table but `local`, without the kernel's own.
    pub routes: Vec<Route>,
    /// Policy rules without the defaults.
    pub rules: Vec<Rule>,
    /// Permanent neighbours on the devices the spec names: (device, address) → MAC.
    pub neighbours: BTreeMap<(String, IpAddr), MacAddr>,
    /// Values of the spec's sysctls (`None`: unreadable, e.g. the device is missing).
    pub sysctls: BTreeMap<Sysctl, Option<u32>>,
    /// Host ends of the spec's ports (`None`: missing).
    pub host_ends: BTreeMap<IfName, Option<ObservedHostEnd>>,
    /// The `iptables-restore` input, per family, that would make the rules right.
    pub iptables: Vec<(Family, Vec<String>)>,
    /// With `openvswitch`: the integration bridge's record of each OVS port this namespace
    /// should have (the spec's), and of each device l3agent owns here that is a port on the
    /// bridge; `None`: not on the bridge.
    pub ovs_ports: BTreeMap<String, Option<PortRecord>>,
    /// The spec's OVS port devices found in the host namespace (plugged, not moved in yet).
    pub ovs_in_host: BTreeSet<String>,
    /// The daemons of its router that have files (a router's own `qrouter-` only).
    pub daemons: BTreeMap<Service, DaemonState>,
}

/// Observations kept from one apply to the next (the agent's, as Calico Felix keeps its
/// dataplane cache): a namespace whose last apply found nothing to change but its rules is
/// kept as it was read, and an apply that trusts them ([`crate::host::ApplyOptions::trust_kept`],
/// the agent's event applies) takes that picture instead of reading its links, addresses,
/// routes, policy rules, neighbours, sysctls, host ends and bridge ports again; the daemons
/// and the rules (by their generation) are read every time. Every apply of a namespace takes
/// its picture out, trusted or not, and puts one back only when it found nothing else to
/// change: a change, a failure or a namespace created anew leaves none. Drift another program
/// makes meanwhile is found by the applies that do not trust them (the re-checks after each
/// write and the periodic refresh). HA routers are never kept (keepalived moves addresses).
#[derive(Debug, Default)]
pub struct Kept(std::sync::Mutex<std::collections::HashMap<NetnsName, ObservedNs>>);

impl Kept {
    /// An empty store.
    pub fn new() -> Kept {
        Kept::default()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<NetnsName, ObservedNs>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes the picture of `ns` out, if one is kept.
    pub fn take(&self, ns: &NetnsName) -> Option<ObservedNs> {
        self.map().remove(ns)
    }

    /// Keeps the picture of `ns`.
    pub fn keep(&self, ns: NetnsName, observed: ObservedNs) {
        self.map().insert(ns, observed);
    }

    /// The namespaces kept.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether a namespace's picture may be kept after an apply that found `changes`: it existed
/// before the apply (not created by it), is not an HA router's, and nothing but its rules
/// (read again each time) or side effects (announcements, conntrack) was to change.
pub fn keepable(observed: &ObservedNs, spec: &NsSpec, changes: &[crate::change::Change]) -> bool {
    observed.exists
        && !observed.fresh
        && spec.ha.is_none()
        && changes
            .iter()
            .all(|c| c.is_side_effect() || matches!(c, crate::change::Change::Iptables { .. }))
}

/// `kept`, the picture of `ns` an earlier apply took, made current where it is read every
/// time: the daemons of its router, and the rules `firewall` would change for `spec`.
pub fn observe_again(
    kernel: &mut dyn Kernel,
    firewall: &mut dyn Firewall,
    ns: &NetnsName,
    spec: &NsSpec,
    mut kept: ObservedNs,
    daemons_dir: &std::path::Path,
) -> Result<ObservedNs, RouterError> {
    kept.daemons = daemons(kernel, ns, spec, daemons_dir)?;
    kept.iptables = rules(firewall, ns, spec, true)?;
    tracing::debug!(%ns, "observation kept from the last apply");
    Ok(kept)
}

/// Whether a route was installed by the kernel itself (connected, RA, redirect).
fn kernel_route(r: &Route) -> bool {
    matches!(
        r.protocol,
        Protocol::Kernel | Protocol::Ra | Protocol::Redirect
    )
}

/// The kernel's default rules (`0: lookup local`, `32766: lookup main`, `32767: lookup
/// default`).
pub fn default_rule(r: &Rule) -> bool {
    r.from.is_none()
        && r.to.is_none()
        && r.iif.is_none()
        && matches!(
            (r.priority, r.table),
            (0, 255) | (32766, 254) | (32767, 253)
        )
}

/// IPv6 routes carry metric 1024 when none was given: read back as none, so that a route
/// written without a metric compares equal.
fn normalise(mut r: Route) -> Route {
    if r.dst.addr().is_ipv6() && r.metric == Some(1024) {
        r.metric = None;
    }
    r
}

fn link_local(n: &IpNet) -> bool {
    matches!(n, IpNet::V6(v) if v.addr().segments()[0] & 0xffc0 == 0xfe80)
}

/// Reads namespace `ns` for `spec` (`None`: the namespace is not wanted; only its existence
/// matters). `fresh`: this run created it. `bridge`: the integration bridge's ports, read
/// once by the caller (`openvswitch` driver). `daemons_dir`: the supervisor's directory.
pub fn observe(
    kernel: &mut dyn Kernel,
    firewall: &mut dyn Firewall,
    ns: &NetnsName,
    spec: Option<&NsSpec>,
    fresh: bool,
    bridge: Option<&BridgePorts>,
    daemons_dir: &std::path::Path,
) -> Result<ObservedNs, RouterError> {
    let plumbing = |source| RouterError::Plumbing {
        router: ns.to_string(),
        source,
    };
    let mut out = ObservedNs {
        exists: kernel.namespace_exists(ns),
        fresh,
        ..ObservedNs::default()
    };
    let Some(spec) = spec else {
        return Ok(out);
    };
    let mut laps = crate::laps::Laps::start();
    // Host ends of ports: in the host namespace, which always exists. Each end and its
    // wanted bridge are fetched by name (the host may hold thousands of links: no dump);
    // only a master that is not the wanted bridge is looked up in a dump, by index.
    let host_ends: Vec<(&IfName, &IfName)> = spec
        .devices
        .values()
        .filter_map(|d| match &d.kind {
            DeviceKind::Port { host_end, bridge } => Some((host_end, bridge)),
            _ => None,
        })
        .collect();
    if !host_ends.is_empty() {
        let host = kernel.netlink(None).map_err(plumbing)?;
        let mut bridge_index: BTreeMap<&IfName, Option<u32>> = BTreeMap::new();
        for (h, bridge) in host_ends {
            let end = match host.link(h).map_err(plumbing)? {
                None => None,
                Some(l) => {
                    let master = match l.master {
                        None => None,
                        Some(i) => {
                            let wanted = match bridge_index.get(bridge) {
                                Some(x) => *x,
                                None => {
                                    let x = host.link(bridge).map_err(plumbing)?.map(|b| b.index);
                                    bridge_index.insert(bridge, x);
                                    x
                                }
                            };
                            if wanted == Some(i) {
                                Some(bridge.to_string())
                            } else {
                                host.links()
                                    .map_err(plumbing)?
                                    .into_iter()
                                    .find(|b| b.index == i)
                                    .map(|b| b.name)
                            }
                        }
                    };
                    Some(ObservedHostEnd {
                        master,
                        mtu: l.mtu,
                        up: l.up,
                    })
                }
            };
            out.host_ends.insert(h.clone(), end);
        }
    }
    let ovs_devices: Vec<&IfName> = spec
        .devices
        .iter()
        .filter(|(_, d)| matches!(d.kind, DeviceKind::OvsPort { .. }))
        .map(|(n, _)| n)
        .collect();
    if !out.exists {
        observe_ovs(kernel, &mut out, &ovs_devices, bridge, ns)?;
        out.iptables = rules(firewall, ns, spec, false)?;
        return Ok(out);
    }
    laps.lap("host_ends");
    let nl = kernel.netlink(Some(ns)).map_err(plumbing)?;
    let links = nl.links().map_err(plumbing)?;
    let addrs = nl.addresses(None).map_err(plumbing)?;
    for l in &links {
        let addresses = addrs
            .iter()
            .filter(|a| a.index == l.index && !link_local(&a.net))
            .map(|a| a.net)
            .collect();
        out.devices.insert(
            l.name.clone(),
            ObservedDevice {
                kind: l.kind.clone(),
                mtu: l.mtu,
                mac: l.mac.map(MacAddr::from),
                up: l.up,
                addresses,
            },
        );
    }
    laps.lap("links");
    observe_ovs(kernel, &mut out, &ovs_devices, bridge, ns)?;
    laps.lap("ovs");
    let nl = kernel.netlink(Some(ns)).map_err(plumbing)?;
    for ipv6 in [false, true] {
        out.routes.extend(
            nl.all_routes(ipv6)
                .map_err(plumbing)?
                .into_iter()
                .filter(|r| !kernel_route(r))
                .map(normalise),
        );
        out.rules.extend(
            nl.rules(ipv6)
                .map_err(plumbing)?
                .into_iter()
                .filter(|r| !default_rule(r)),
        );
    }
    laps.lap("routes");
    for name in spec.devices.keys() {
        if name.as_str() == "lo" || !out.devices.contains_key(name.as_str()) {
            continue;
        }
        for n in nl.neighbours(name).map_err(plumbing)? {
            if let (true, Some(mac)) = (n.permanent, n.mac) {
                out.neighbours
                    .insert((name.to_string(), n.ip), MacAddr::from(mac));
            }
        }
    }
    laps.lap("neighbours");
    if !fresh && !spec.sysctls.is_empty() {
        let mut keys: Vec<Sysctl> = spec.sysctls.keys().cloned().collect();
        if let Some(ha) = &spec.ha {
            keys.extend(ha.master_sysctls.keys().cloned());
        }
        let values = kernel.read_sysctls(ns, &keys).map_err(plumbing)?;
        out.sysctls = keys.into_iter().zip(values).collect();
    }
    laps.lap("sysctls");
    out.daemons = daemons(kernel, ns, spec, daemons_dir)?;
    laps.lap("daemons");
    // A namespace this run created holds no rules yet: planned against an empty rule set
    // (as in a plan, where it does not exist), without reading it.
    out.iptables = rules(firewall, ns, spec, !fresh)?;
    laps.lap("iptables");
    tracing::debug!(%ns, %laps, "observe steps");
    Ok(out)
}

/// The daemons of `spec`'s router that have files (a router's own `qrouter-` only).
fn daemons(
    kernel: &mut dyn Kernel,
    ns: &NetnsName,
    spec: &NsSpec,
    daemons_dir: &std::path::Path,
) -> Result<BTreeMap<Service, DaemonState>, RouterError> {
    match spec.owners.first() {
        Some(router) if spec.kind == NsKind::Router => kernel
            .daemons(daemons_dir, router, ns)
            .map_err(|source| RouterError::Daemon {
                router: router.to_string(),
                source,
            }),
        _ => Ok(BTreeMap::new()),
    }
}

/// The `iptables-restore` input `firewall` would send for `spec` (`read`: the kernel's rules
/// are read where the firewall does not know them; otherwise taken as empty).
fn rules(
    firewall: &mut dyn Firewall,
    ns: &NetnsName,
    spec: &NsSpec,
    read: bool,
) -> Result<Vec<(Family, Vec<String>)>, RouterError> {
    firewall
        .plan(ns, &spec.iptables, read)
        .map_err(|source| RouterError::Iptables {
            router: ns.to_string(),
            source,
        })
}

/// The OVS side of a namespace: the bridge's records of the spec's OVS port devices and of
/// the owned devices found there, and which of the spec's devices wait in the host namespace
/// (looked up by name, and only for a device missing from `ns`: nothing is read in the steady
/// state).
fn observe_ovs(
    kernel: &mut dyn Kernel,
    out: &mut ObservedNs,
    wanted: &[&IfName],
    bridge: Option<&BridgePorts>,
    ns: &NetnsName,
) -> Result<(), RouterError> {
    let Some(bridge) = bridge else {
        return Ok(());
    };
    for (name, d) in &out.devices {
        if crate::spec::names::owned_device(name) && ovs_device_kind(d.kind.as_deref()) {
            if let Some(r) = bridge.ports.get(name) {
                out.ovs_ports.insert(name.clone(), Some(r.clone()));
            }
        }
    }
    let missing: Vec<&IfName> = wanted
        .iter()
        .copied()
        .filter(|n| !out.devices.contains_key(n.as_str()))
        .collect();
    for name in wanted {
        out.ovs_ports
            .insert(name.to_string(), bridge.ports.get(name.as_str()).cloned());
    }
    if !missing.is_empty() {
        let host = kernel
            .netlink(None)
            .map_err(|source| RouterError::Plumbing {
                router: ns.to_string(),
                source,
            })?;
        for name in missing {
            let found = host.link(name).map_err(|source| RouterError::Plumbing {
                router: ns.to_string(),
                source,
            })?;
            if found.is_some() {
                out.ovs_in_host.insert(name.to_string());
            }
        }
    }
    Ok(())
}
