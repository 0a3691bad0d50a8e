//! Diff (pure): what must change in one namespace so that what was observed
//! ([`crate::observe::ObservedNs`]) becomes what the spec says ([`crate::spec::NsSpec`]), as
//! typed [`Change`]s in execution order. Side effects are decided here from the typed changes
//! and the spec, never from strings: new addresses on announcing devices are announced, and
//! connections of addresses removed from a gateway (or of a floating IP whose route left a
//! `fip-` namespace) are flushed from conntrack.
//!
//! A device that is deleted takes its addresses, routes and neighbours with it: those are not
//! listed separately. A namespace that does not exist is diffed as empty, and one created by
//! this run as having unknown sysctls, so that `plan` (which creates nothing) lists exactly what
//! `apply` then does.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use l3agent_ovsdb::PortRecord;
use l3agent_rtnl::port::VethPort;
use l3agent_rtnl::route::Route;
use l3agent_supervise::{ConfigDigest, Service, SyncRole};
use l3agent_types::{IfName, MacAddr, NetnsName};

use crate::change::Change;
use crate::observe::ObservedNs;
use crate::spec::{names, Device, DeviceKind, HaState, HostSpec, NsKind, NsSpec, Role};

/// The role of a device l3agent finds but does not want, from its name.
fn role_of(name: &str) -> Option<Role> {
    [
        ("qr-", Role::Internal),
        ("qg-", Role::Gateway),
        ("sg-", Role::Snat),
        ("fg-", Role::FipGateway),
        ("rfp-", Role::RouterLink),
        ("fpr-", Role::FipLink),
        ("ha-", Role::Ha),
    ]
    .into_iter()
    .find(|(p, _)| name.starts_with(p))
    .map(|(_, r)| r)
}

/// Whether an observed route does what the spec's route asks (the kernel fills in the device
/// of a route given only a next hop).
fn satisfies(want: &Route, have: &Route) -> bool {
    want.gateway == have.gateway
        && want.scope_link == have.scope_link
        && (want.dev.is_none() || want.dev == have.dev)
        && want.multipath.len() == have.multipath.len()
        && want.multipath.iter().zip(&have.multipath).all(|(w, h)| {
            w.gateway == h.gateway && (w.dev.is_none() || w.dev == h.dev) && w.weight == h.weight
        })
}

type RouteKey = (u32, IpNet, Option<u32>);

fn key(r: &Route) -> RouteKey {
    (r.table, r.dst, r.metric)
}

/// The changes that make namespace `name` match `host`'s spec for it (`None` in `host`: the
/// namespace is not wanted and is deleted if it exists).
pub fn diff(host: &HostSpec, name: &NetnsName, observed: &ObservedNs) -> Vec<Change> {
    let Some(spec) = host.namespaces.get(name) else {
        return if observed.exists {
            vec![Change::DeleteNamespace { ns: name.clone() }]
        } else {
            Vec::new()
        };
    };
    let ns = name.clone();
    let mut out = Vec::new();
    if !observed.exists {
        out.push(Change::CreateNamespace { ns: ns.clone() });
    }
    let ovs_bridge = host.ovs.as_ref().map(|o| &o.bridge);
    let deleted = devices(spec, &ns, observed, ovs_bridge, &mut out);
    let unknown = !observed.exists || observed.fresh;
    let state = ha_state(spec, observed);
    let by_state = spec.ha.as_ref().map(|h| match state {
        Some(HaState::Master) => &h.master_sysctls,
        _ => &h.backup_sysctls,
    });
    for (key, value) in spec.sysctls.iter().chain(by_state.into_iter().flatten()) {
        let have = if unknown {
            None
        } else {
            observed.sysctls.get(key).copied().flatten()
        };
        if !sysctl_holds(key, *value, have) {
            out.push(Change::SetSysctl {
                ns: ns.clone(),
                key: key.clone(),
                value: *value,
            });
        }
    }
    routes(spec, &ns, observed, &deleted, &mut out);
    let have_rules: BTreeSet<_> = observed.rules.iter().cloned().collect();
    for r in spec.rules.difference(&have_rules) {
        out.push(Change::AddRule {
            ns: ns.clone(),
            rule: r.clone(),
        });
    }
    for r in have_rules.difference(&spec.rules) {
        out.push(Change::DeleteRule {
            ns: ns.clone(),
            rule: r.clone(),
        });
    }
    for ((dev, ip), mac) in &spec.neighbours {
        if observed.neighbours.get(&(dev.to_string(), *ip)) != Some(mac) {
            out.push(Change::SetNeighbour {
                ns: ns.clone(),
                dev: dev.clone(),
                ip: *ip,
                mac: *mac,
            });
        }
    }
    for (dev, ip) in observed.neighbours.keys() {
        let wanted = spec
            .neighbours
            .keys()
            .any(|(d, i)| d.as_str() == dev && i == ip);
        if !wanted && !deleted.contains(dev) {
            if let Ok(d) = IfName::new("device", dev) {
                out.push(Change::DeleteNeighbour {
                    ns: ns.clone(),
                    dev: d,
                    ip: *ip,
                });
            }
        }
    }
    for (family, lines) in &observed.iptables {
        out.push(Change::Iptables {
            ns: ns.clone(),
            family: *family,
            lines: lines.clone(),
        });
    }
    daemons(spec, &ns, observed, state, &mut out);
    side_effects(host, spec, &ns, observed, &mut out);
    out.sort_by_key(Change::rank);
    out
}

/// The router's daemons: a wanted one that does not run is started (the respawn of one that
/// died), one whose config file differs is reloaded, and one not wanted, running or only
/// leaving files, is stopped and its files removed. conntrackd starts before keepalived
/// (Neutron: "conntrackd first when enabled", so that it hears of the first transition) and
/// stops after it. An HA router's conntrackd is synced ([`Change::SyncConntrackd`]) when the
/// VRRP state observed now is not the one the running conntrackd was last synced for: once
/// per transition, and once after each start of conntrackd (its caches are empty). The
/// role is recorded with conntrackd's pid, so a restart of l3agent syncs nothing again (no
/// commit or flush on a running master).
fn daemons(
    spec: &NsSpec,
    ns: &NetnsName,
    observed: &ObservedNs,
    state: Option<HaState>,
    out: &mut Vec<Change>,
) {
    let Some(router) = spec.owners.first().filter(|_| spec.kind == NsKind::Router) else {
        return;
    };
    let wanted: BTreeMap<_, _> = spec
        .daemons
        .iter()
        .filter(|(s, _)| wanted_daemon(spec, state, **s))
        .collect();
    let mut starting: Vec<_> = wanted.iter().map(|(s, c)| (**s, *c)).collect();
    starting.sort_by_key(|(s, _)| start_order(*s));
    let before = out.len();
    for (service, config) in starting {
        let (router, ns, config) = (router.clone(), ns.clone(), config.clone());
        out.push(match observed.daemons.get(&service) {
            Some(d) if d.running && d.config == Some(ConfigDigest::of(&config)) => continue,
            Some(d) if d.running => Change::ReloadDaemon {
                ns,
                router,
                service,
                config,
            },
            _ => Change::StartDaemon {
                ns,
                router,
                service,
                config,
            },
        });
    }
    let mut stopping: Vec<Service> = observed
        .daemons
        .keys()
        .filter(|s| !wanted.contains_key(s))
        .copied()
        .collect();
    stopping.sort_by_key(|s| std::cmp::Reverse(start_order(*s)));
    for service in stopping {
        out.push(Change::StopDaemon {
            ns: ns.clone(),
            router: router.clone(),
            service,
        });
    }
    // (Re)started conntrackd has empty caches and no record of a sync; a running one is
    // synced only when the state moved since its last sync.
    let role = match state {
        Some(HaState::Master) => SyncRole::Primary,
        Some(HaState::Backup) => SyncRole::Backup,
        None => return,
    };
    let conntrackd_starts = out[before..].iter().any(|c| {
        matches!(
            c,
            Change::StartDaemon {
                service: Service::Conntrackd,
                ..
            } | Change::ReloadDaemon {
                service: Service::Conntrackd,
                ..
            }
        )
    });
    let synced = observed
        .daemons
        .get(&Service::Conntrackd)
        .and_then(|d| d.synced);
    if wanted.contains_key(&Service::Conntrackd) && (conntrackd_starts || synced != Some(role)) {
        out.push(Change::SyncConntrackd {
            ns: ns.clone(),
            router: router.clone(),
            role,
        });
    }
}

/// Daemons start in this order (and stop in the reverse): conntrackd before keepalived, both
/// before the rest.
fn start_order(service: Service) -> u8 {
    match service {
        Service::Conntrackd => 0,
        Service::Keepalived => 1,
        Service::Radvd | Service::Haproxy => 2,
    }
}

/// Whether `service` of the spec runs in this state. On an HA router's backup the
/// master-only daemons do not (radvd would advertise a router that does not forward; the
/// metadata proxy has no address to serve).
fn wanted_daemon(spec: &NsSpec, state: Option<HaState>, service: Service) -> bool {
    spec.daemons.contains_key(&service)
        && (state != Some(HaState::Backup)
            || spec
                .ha
                .as_ref()
                .is_none_or(|h| !h.master_only.contains(&service)))
}

/// The daemons the namespace runs once converged, given what was observed (its VRRP state).
pub fn wanted_daemons(spec: &NsSpec, observed: &ObservedNs) -> Vec<Service> {
    let state = ha_state(spec, observed);
    spec.daemons
        .keys()
        .copied()
        .filter(|s| wanted_daemon(spec, state, *s))
        .collect()
}

/// The VRRP state of an HA router's namespace as observed: master when keepalived's primary
/// VIP is on the `ha-` device (`None`: not an HA router).
pub fn ha_state(spec: &NsSpec, observed: &ObservedNs) -> Option<HaState> {
    let ha = spec.ha.as_ref()?;
    let master = observed
        .devices
        .get(ha.dev.as_str())
        .is_some_and(|d| d.addresses.contains(&ha.vip));
    Some(if master {
        HaState::Master
    } else {
        HaState::Backup
    })
}

/// Whether a sysctl read back as `have` holds `want`. `proxy_delay` is written in 1/100 s
/// and read back in the kernel's rounding of it: `1` reads back as `0` here.
fn sysctl_holds(key: &l3agent_rtnl::sysctl::Sysctl, want: u32, have: Option<u32>) -> bool {
    match (key, have) {
        (l3agent_rtnl::sysctl::Sysctl::ProxyDelay(_), Some(h)) => {
            h == want || (want == 1 && h == 0)
        }
        (_, h) => h == Some(want),
    }
}

/// Devices and their addresses; returns the names of devices deleted (whose addresses, routes
/// and neighbours go with them).
fn devices(
    spec: &NsSpec,
    ns: &NetnsName,
    observed: &ObservedNs,
    ovs_bridge: Option<&IfName>,
    out: &mut Vec<Change>,
) -> BTreeSet<String> {
    let mut deleted = BTreeSet::new();
    for (name, _) in observed.devices.iter().filter(|(n, _)| {
        names::owned_device(n) && !spec.devices.keys().any(|k| k.as_str() == n.as_str())
    }) {
        if let Ok(dev) = IfName::new("device", name) {
            // An OVS port goes first (its device with it): were the device deleted first and
            // the port's removal then failed, nothing would name the port any more.
            if let (Some(bridge), Some(Some(_))) = (ovs_bridge, observed.ovs_ports.get(name)) {
                out.push(Change::UnplugOvsPort {
                    bridge: bridge.clone(),
                    port: dev.clone(),
                });
            }
            out.push(Change::DeleteDevice {
                ns: ns.clone(),
                dev,
                role: role_of(name),
            });
            deleted.insert(name.clone());
        }
    }
    for (name, want) in &spec.devices {
        let have = observed.devices.get(name.as_str());
        let mut created = false;
        match &want.kind {
            DeviceKind::Loopback => {
                if !have.is_some_and(|h| h.up) {
                    out.push(Change::SetDevice {
                        ns: ns.clone(),
                        dev: name.clone(),
                        mtu: None,
                        mac: None,
                        up: true,
                    });
                }
                continue;
            }
            DeviceKind::Port { host_end, bridge } => {
                let end = observed.host_ends.get(host_end).cloned().flatten();
                let whole = have.is_some_and(|h| h.kind.as_deref() == Some("veth"));
                if !whole || end.is_none() {
                    if !whole && end.is_some() {
                        out.push(Change::DeleteHostEnd {
                            dev: host_end.clone(),
                        });
                    }
                    if have.is_some() {
                        out.push(Change::DeleteDevice {
                            ns: ns.clone(),
                            dev: name.clone(),
                            role: Some(want.role),
                        });
                        deleted.insert(name.to_string());
                    }
                    out.push(Change::CreatePort {
                        ns: ns.clone(),
                        dev: name.clone(),
                        host_end: host_end.clone(),
                        bridge: bridge.clone(),
                        mtu: want.mtu.unwrap_or(1500),
                        mac: want.mac,
                        addresses: fixed_addresses(want),
                        role: want.role,
                    });
                    created = true;
                } else if let Some(end) = end {
                    let bridge_wrong = end.master.as_deref() != Some(bridge.as_str());
                    let mtu_wrong = want.mtu.is_some_and(|m| m != end.mtu);
                    if bridge_wrong || mtu_wrong || !end.up {
                        out.push(Change::SetHostEnd {
                            dev: host_end.clone(),
                            bridge: bridge_wrong.then(|| bridge.clone()),
                            mtu: if mtu_wrong { want.mtu } else { None },
                            up: !end.up,
                        });
                    }
                }
            }
            DeviceKind::OvsPort { bridge, port_id } => {
                created = ovs_port(ns, name, want, (bridge, port_id), observed, out);
                if created && have.is_some() {
                    deleted.insert(name.to_string());
                }
            }
            DeviceKind::Link {
                peer,
                peer_ns,
                creator,
            } => {
                if have.is_none() {
                    if *creator {
                        // The MACs of both ends are part of the link's creation (the executor
                        // takes them from the spec).
                        out.push(Change::CreateLink {
                            ns: ns.clone(),
                            dev: name.clone(),
                            peer: peer.clone(),
                            peer_ns: peer_ns.clone(),
                            mtu: want.mtu,
                        });
                        created = true;
                    } else {
                        // Made by the peer's namespace: only its addresses are ours to add.
                        for net in &want.addresses {
                            out.push(add_address(ns, name, want, *net));
                        }
                        continue;
                    }
                }
            }
        }
        if created {
            for net in want.floating.iter() {
                out.push(add_address(ns, name, want, *net));
            }
            if let DeviceKind::Link { .. } = want.kind {
                for net in &want.addresses {
                    if !want.floating.contains(net) {
                        out.push(add_address(ns, name, want, *net));
                    }
                }
            }
            continue;
        }
        let Some(have) = have else { continue };
        let mtu = want.mtu.filter(|m| *m != have.mtu);
        let mac = want.mac.filter(|m| Some(*m) != have.mac);
        if mtu.is_some() || mac.is_some() || !have.up {
            out.push(Change::SetDevice {
                ns: ns.clone(),
                dev: name.clone(),
                mtu,
                mac,
                up: !have.up,
            });
        }
        for net in want.addresses.difference(&have.addresses) {
            out.push(add_address(ns, name, want, *net));
        }
        // keepalived's addresses: the router's on a `vips` device, the primary VIP on `ha-`.
        let keepalived = |net: &IpNet| {
            want.vips
                || spec
                    .ha
                    .as_ref()
                    .is_some_and(|h| &h.dev == name && &h.vip == net)
        };
        for net in have
            .addresses
            .difference(&want.addresses)
            .filter(|n| !keepalived(n))
        {
            out.push(Change::DeleteAddress {
                ns: ns.clone(),
                dev: name.clone(),
                net: *net,
                role: Some(want.role),
            });
        }
    }
    deleted
}

/// An OVS port device: its port on the bridge (created, repaired in place, or replaced when
/// its device is gone), then its device (moved in from the host namespace and configured).
/// Returns whether the device is (re)made, i.e. attached by these changes.
fn ovs_port(
    ns: &NetnsName,
    name: &IfName,
    want: &Device,
    (bridge, port_id): (&IfName, &l3agent_types::PortId),
    observed: &ObservedNs,
    out: &mut Vec<Change>,
) -> bool {
    let have = observed.devices.get(name.as_str());
    let whole = have.is_some_and(|h| crate::observe::ovs_device_kind(h.kind.as_deref()));
    let record = observed.ovs_ports.get(name.as_str()).cloned().flatten();
    let in_host = observed.ovs_in_host.contains(name.as_str());
    // (Compile always gives a port's device the port's MAC: `attached-mac`.)
    let plug = || Change::PlugOvsPort {
        bridge: bridge.clone(),
        port: name.clone(),
        port_id: port_id.clone(),
        mac: want.mac.unwrap_or(MacAddr::new([0; 6])),
    };
    let drifted = |r: &PortRecord| {
        want.mac.is_none_or(|mac| {
            !l3agent_ovsdb::InternalPort::neutron(name.clone(), port_id, mac)
                .drift(r)
                .is_empty()
        })
    };
    match (&record, whole) {
        // In place: the port is on the bridge and its device is here.
        (Some(r), true) => {
            if drifted(r) {
                out.push(plug());
            }
            return false;
        }
        // A device of the name that is not the port's (another kind, or the port was
        // removed from the bridge and the device survived): replaced.
        (_, _) if have.is_some() => {
            out.push(Change::DeleteDevice {
                ns: ns.clone(),
                dev: name.clone(),
                role: Some(want.role),
            });
        }
        _ => {}
    }
    match record {
        // Plugged, its device waiting in the host namespace (an attach cut short).
        Some(r) if in_host => {
            if drifted(&r) {
                out.push(plug());
            }
        }
        // On the bridge, but its device is gone (it died with a deleted namespace): the port
        // is made anew, as Neutron's `replace_port` does, so that OVS makes a new device.
        Some(_) => {
            out.push(Change::UnplugOvsPort {
                bridge: bridge.clone(),
                port: name.clone(),
            });
            out.push(plug());
        }
        None => out.push(plug()),
    }
    out.push(Change::AttachOvsDevice {
        ns: ns.clone(),
        dev: name.clone(),
        mtu: want.mtu.unwrap_or(1500),
        mac: want.mac,
        addresses: fixed_addresses(want),
        role: want.role,
    });
    true
}

fn fixed_addresses(d: &Device) -> Vec<IpNet> {
    d.addresses.difference(&d.floating).copied().collect()
}

fn add_address(ns: &NetnsName, dev: &IfName, d: &Device, net: IpNet) -> Change {
    Change::AddAddress {
        ns: ns.clone(),
        dev: dev.clone(),
        net,
        role: d.role,
        floating: d.floating.contains(&net),
    }
}

fn routes(
    spec: &NsSpec,
    ns: &NetnsName,
    observed: &ObservedNs,
    deleted: &BTreeSet<String>,
    out: &mut Vec<Change>,
) {
    let mut have: BTreeMap<RouteKey, Vec<&Route>> = BTreeMap::new();
    for r in &observed.routes {
        // Routes through a device being deleted go with it.
        if r.dev.as_ref().is_some_and(|d| deleted.contains(d.as_str())) {
            continue;
        }
        have.entry(key(r)).or_default().push(r);
    }
    let want: BTreeMap<RouteKey, &Route> = spec.routes.iter().map(|r| (key(r), r)).collect();
    for (k, w) in &want {
        let found = have.get(k).map(Vec::as_slice).unwrap_or_default();
        if !found.iter().any(|h| satisfies(w, h)) {
            out.push(Change::ReplaceRoute {
                ns: ns.clone(),
                route: (*w).clone(),
            });
        }
        // Duplicates beyond the one kept (e.g. appended by hand).
        let keep = found.iter().position(|h| satisfies(w, h)).unwrap_or(0);
        for (i, extra) in found.iter().enumerate() {
            if i != keep {
                out.push(Change::DeleteRoute {
                    ns: ns.clone(),
                    route: (*extra).clone(),
                });
            }
        }
    }
    for (k, list) in &have {
        // An HA router's main table is keepalived's (its virtual routes).
        let keepalived = spec.ha.is_some() && k.0 == l3agent_rtnl::route::MAIN_TABLE;
        if !want.contains_key(k) && !keepalived {
            for r in list {
                out.push(Change::DeleteRoute {
                    ns: ns.clone(),
                    route: (*r).clone(),
                });
            }
        }
    }
}

/// Announcements and conntrack cleanup, from the changes already listed.
fn side_effects(
    host: &HostSpec,
    spec: &NsSpec,
    ns: &NetnsName,
    observed: &ObservedNs,
    out: &mut Vec<Change>,
) {
    let mut announce: BTreeMap<IfName, BTreeSet<IpAddr>> = BTreeMap::new();
    let mut flush: BTreeSet<(NetnsName, IpAddr)> = BTreeSet::new();
    let fip_gateway = spec
        .devices
        .iter()
        .find(|(_, d)| d.role == Role::FipGateway)
        .map(|(n, _)| n.clone());
    for c in out.iter() {
        match c {
            Change::CreatePort {
                dev,
                addresses,
                role,
                ..
            }
            | Change::AttachOvsDevice {
                dev,
                addresses,
                role,
                ..
            } if role.announces() => {
                announce
                    .entry(dev.clone())
                    .or_default()
                    .extend(addresses.iter().map(IpNet::addr));
            }
            Change::AddAddress { dev, net, role, .. } if role.announces() => {
                announce.entry(dev.clone()).or_default().insert(net.addr());
            }
            Change::DeleteAddress {
                net,
                role: Some(role),
                ..
            } if role.flushes_conntrack() => {
                flush.insert((ns.clone(), net.addr()));
            }
            Change::DeleteDevice {
                dev,
                role: Some(role),
                ..
            } if role.flushes_conntrack() => {
                if let Some(d) = observed.devices.get(dev.as_str()) {
                    flush.extend(d.addresses.iter().map(|n| (ns.clone(), n.addr())));
                }
            }
            // DVR: a floating IP arrives in or leaves the fip- namespace as a host route
            // through an fpr- link.
            Change::ReplaceRoute { route, .. } if spec.kind == NsKind::Fip => {
                if let (true, Some(dev), Some(fg)) =
                    (host_route(route), route.dev.as_ref(), fip_gateway.as_ref())
                {
                    if spec
                        .devices
                        .get(dev)
                        .is_some_and(|d| d.role == Role::FipLink)
                    {
                        announce
                            .entry(fg.clone())
                            .or_default()
                            .insert(route.dst.addr());
                    }
                }
            }
            Change::DeleteRoute { route, .. } if spec.kind == NsKind::Fip && host_route(route) => {
                let peer = route
                    .dev
                    .as_ref()
                    .and_then(|d| spec.devices.get(d))
                    .and_then(|d| match &d.kind {
                        DeviceKind::Link { peer_ns, .. } => Some(peer_ns.clone()),
                        _ => None,
                    });
                // The DNAT entries live in the qrouter namespace (DNAT -i rfp-); fip- is
                // NOTRACK. Flushed only while that router stays (else its namespace goes).
                if let Some(p) = peer.filter(|p| host.namespaces.contains_key(p)) {
                    flush.insert((p, route.dst.addr()));
                }
            }
            _ => {}
        }
    }
    for (dev, addrs) in announce {
        if addrs.is_empty() {
            continue;
        }
        out.push(Change::Announce {
            ns: ns.clone(),
            dev,
            addresses: addrs.into_iter().collect(),
        });
    }
    for (fns, ip) in flush {
        out.push(Change::FlushConntrack { ns: fns, ip });
    }
}

fn host_route(r: &Route) -> bool {
    r.dst.prefix_len() == if r.dst.addr().is_ipv4() { 32 } else { 128 }
}

/// The port a [`Change::CreatePort`] describes, for the executor.
pub fn veth_port(c: &Change) -> Option<VethPort> {
    match c {
        Change::CreatePort {
            dev,
            host_end,
            bridge,
            mtu,
            mac,
            addresses,
            ..
        } => Some(VethPort {
            name: dev.clone(),
            peer: host_end.clone(),
            mtu: *mtu,
            mac: mac.map(|m| m.octets()),
            addresses: addresses.clone(),
            bridge: Some(bridge.clone()),
        }),
        _ => None,
    }
}
