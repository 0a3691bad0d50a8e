//! The legacy (centralised) router, Neutron's `LegacyRouter`: a `qrouter-<id>` namespace with
//! `qr-` ports on tenant bridges and a `qg-` port on the external bridge, gateway and on-link
//! routes, extra routes, SNAT, floating IPs (DNAT/SNAT with the address on `qg-`),
//! gratuitous ARP, and conntrack cleanup for floating IPs that went away.
//!
//! Every step is idempotent: converging an unchanged router changes nothing (and sends no
//! iptables input). Every error fails the router visibly.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;

use ipnet::{IpNet, Ipv4Net};
use l3agent_iptables::{Family, IptablesModel, ModelOptions, RuleSpec, Table, WrapName};
use l3agent_iptables_exec::{Backend, ExecOptions, Manager, NetnsTarget, ProcessRunner};
use l3agent_rtnl::port::{create_veth_port, VethPort};
use l3agent_rtnl::prelude::*;
use l3agent_rtnl::route::{Route, MAIN_TABLE};
use l3agent_rtnl::sysctl::{Scope, Sysctl};
use l3agent_rtnl::{conntrack, garp, netns, Netns, Rtnl};
use l3agent_types::IfName;

use crate::config::{Port, Router};
use crate::error::RouterError;

/// Neutron's L3 agent wrap name: our iptables chains are `neutron-l3-agent-*`.
pub const WRAP: &str = "neutron-l3-agent";

/// Neutron's external-ingress mark (`0x2/0xffff`).
const EXT_MARK: &str = "0x2/0xffff";

fn random_fully() -> bool {
    static CACHE: OnceLock<bool> = OnceLock::new();
    *CACHE.get_or_init(l3agent_iptables_exec::runner::random_fully_supported)
}

/// The sysctls every router namespace gets (D-03), in one batch.
pub fn namespace_sysctls() -> Vec<(Sysctl, u32)> {
    vec![
        (Sysctl::PromoteSecondaries(Scope::All), 1),
        (Sysctl::ConntrackTcpBeLiberal, 1),
        (Sysctl::IpForward, 1),
        (Sysctl::ArpIgnore(Scope::All), 1),
        (Sysctl::ArpAnnounce(Scope::All), 2),
        (Sysctl::Ipv6Forwarding(Scope::All), 1),
    ]
}

/// Creates the namespace if needed, brings `lo` up and sets the sysctls; returns it open with a
/// socket inside.
pub fn ensure_namespace(
    name: &l3agent_types::NetnsName,
    changes: &mut Vec<String>,
) -> Result<(Netns, Rtnl), l3agent_rtnl::Error> {
    if netns::create(name)? {
        changes.push(format!("created namespace {name}"));
    }
    let ns = Netns::open(name)?;
    let mut rtnl = Rtnl::open(&ns)?;
    rtnl.set_up(&IfName::new("lo", "lo").expect("valid"), true)?;
    ns.write_sysctls(&namespace_sysctls())?;
    Ok((ns, rtnl))
}

/// Makes one port exist as specified: created (with undo on failure) when missing, else its
/// MTU, MAC, state, bridge and addresses converged. Returns the addresses it removed.
pub fn ensure_port(
    host: &mut Rtnl,
    router: &mut Rtnl,
    ns: &Netns,
    port: &Port,
    addresses: &[IpNet],
    changes: &mut Vec<String>,
) -> Result<Vec<IpNet>, l3agent_rtnl::Error> {
    let existing = router.link(&port.dev)?;
    let host_end = host.link(&port.host_dev)?;
    if existing.is_some() && host_end.is_none() {
        // Half a pair cannot exist for veth; a same-named device of another kind is replaced.
        router.delete_link(&port.dev)?;
    }
    let Some(link) = existing.filter(|_| host_end.is_some()) else {
        let spec = VethPort {
            name: port.dev.clone(),
            peer: port.host_dev.clone(),
            mtu: port.mtu,
            mac: Some(port.mac),
            addresses: addresses.to_vec(),
            bridge: Some(port.bridge.clone()),
        };
        create_veth_port(host, router, ns, &spec)?;
        changes.push(format!(
            "created port {} ({} on {})",
            port.dev, port.host_dev, port.bridge
        ));
        return Ok(Vec::new());
    };
    if link.mtu != port.mtu {
        router.set_mtu(&port.dev, port.mtu)?;
        host.set_mtu(&port.host_dev, port.mtu)?;
        changes.push(format!("{}: mtu {}", port.dev, port.mtu));
    }
    if link.mac != Some(port.mac) {
        router.set_mac(&port.dev, port.mac)?;
        changes.push(format!("{}: mac", port.dev));
    }
    if !link.up {
        router.set_up(&port.dev, true)?;
    }
    let bridge = host.link(&port.bridge)?.map(|b| b.index);
    if host_end.as_ref().and_then(|h| h.master) != bridge {
        host.set_master(&port.host_dev, &port.bridge)?;
        changes.push(format!("{}: on bridge {}", port.host_dev, port.bridge));
    }
    if !host_end.is_some_and(|h| h.up) {
        host.set_up(&port.host_dev, true)?;
    }
    let c = router.converge_addresses(&port.dev, addresses, &[])?;
    for a in &c.added {
        changes.push(format!("{}: added {a}", port.dev));
    }
    for a in &c.removed {
        changes.push(format!("{}: removed {a}", port.dev));
    }
    Ok(c.removed)
}

/// Deletes devices of the given prefixes in the router namespace that are not wanted.
pub(crate) fn remove_stale_devices(
    router: &mut Rtnl,
    prefixes: &[&str],
    wanted: &[&IfName],
    changes: &mut Vec<String>,
) -> Result<(), l3agent_rtnl::Error> {
    for l in router.links()? {
        if prefixes.iter().any(|p| l.name.starts_with(p))
            && !wanted.iter().any(|w| w.as_str() == l.name)
        {
            let name = IfName::new("device", &l.name)?;
            router.delete_link(&name)?;
            changes.push(format!("removed stale device {name}"));
        }
    }
    Ok(())
}

/// The gateway's NAT and mark rules (D-37, D-38), shared by legacy routers and `snat-`
/// namespaces, in Neutron's exact text.
pub fn gateway_nat_rules(
    m: &mut IptablesModel,
    qg: &IfName,
    gip: Ipv4Addr,
    enable_snat: bool,
    random_fully: bool,
) -> Result<(), l3agent_iptables::Error> {
    let rf = if random_fully { " --random-fully" } else { "" };
    let v4 = Family::V4;
    if enable_snat {
        m.add_rule(
            v4,
            Table::Nat,
            RuleSpec::new("snat", &format!("-o {qg} -j SNAT --to-source {gip}{rf}")),
        )?;
    }
    m.add_rule(v4, Table::Nat, RuleSpec::new("snat", &format!("-m mark ! --mark {EXT_MARK} -m conntrack --ctstate DNAT -j SNAT --to-source {gip}{rf}")))?;
    m.add_rule(
        v4,
        Table::Nat,
        RuleSpec::new(
            "POSTROUTING",
            &format!("! -o {qg} -m conntrack ! --ctstate DNAT -j ACCEPT"),
        ),
    )?;
    m.add_rule(
        v4,
        Table::Mangle,
        RuleSpec::new("mark", &format!("-i {qg} -j MARK --set-xmark {EXT_MARK}")),
    )?;
    Ok(())
}

/// Whether SNAT rules get `--random-fully` (iptables >= 1.6.0, Neutron's I-34), asked once.
pub fn random_fully_enabled() -> bool {
    random_fully()
}

/// The iptables rules of a legacy router (D-36..D-38), in Neutron's exact text.
pub fn legacy_rules(r: &Router) -> Result<IptablesModel, l3agent_iptables::Error> {
    let mut m = IptablesModel::new(WrapName::new(WRAP)?, ModelOptions::default());
    let rf = if random_fully() {
        " --random-fully"
    } else {
        ""
    };
    let (Some(gw), Some(gip)) = (&r.gw_port, r.gateway_ipv4()) else {
        return Ok(m);
    };
    gateway_nat_rules(&mut m, &gw.dev, gip, r.enable_snat, random_fully())?;
    let v4 = Family::V4;
    for f in &r.fips {
        for chain in ["PREROUTING", "OUTPUT"] {
            let rule = format!("-d {}/32 -j DNAT --to-destination {}", f.floating, f.fixed);
            m.add_rule(
                v4,
                Table::Nat,
                RuleSpec {
                    tag: Some("floating_ip"),
                    ..RuleSpec::new(chain, &rule)
                },
            )?;
        }
        let rule = format!("-s {}/32 -j SNAT --to-source {}{rf}", f.fixed, f.floating);
        m.add_rule(
            v4,
            Table::Nat,
            RuleSpec {
                tag: Some("floating_ip"),
                ..RuleSpec::new("float-snat", &rule)
            },
        )?;
    }
    Ok(m)
}

/// Converges one legacy router, its iptables on `backend`. Returns what changed (empty:
/// nothing did).
pub fn ensure_legacy(
    host: &mut Rtnl,
    r: &Router,
    backend: Backend,
) -> Result<Vec<String>, RouterError> {
    let ctx = |source| RouterError::Plumbing {
        router: r.id.clone(),
        source,
    };
    let mut changes = Vec::new();
    let name = r.namespace();
    let (ns, mut rr) = ensure_namespace(&name, &mut changes).map_err(ctx)?;
    for p in &r.interfaces {
        ensure_port(host, &mut rr, &ns, p, &p.ips, &mut changes).map_err(ctx)?;
    }
    let wanted: Vec<&IfName> = r
        .interfaces
        .iter()
        .chain(&r.gw_port)
        .map(|p| &p.dev)
        .collect();
    remove_stale_devices(&mut rr, &["qr-", "qg-"], &wanted, &mut changes).map_err(ctx)?;
    let fip_nets: Vec<IpNet> = r
        .fips
        .iter()
        .map(|f| IpNet::V4(Ipv4Net::from(f.floating)))
        .collect();
    let mut removed_fips = Vec::new();
    if let Some(gw) = &r.gw_port {
        // Floating IPs already configured stay while the NAT rules are updated (D-22 order).
        let current: Vec<IpNet> = rr
            .addresses(Some(&gw.dev))
            .unwrap_or_default()
            .into_iter()
            .map(|a| a.net)
            .collect();
        let mut keep = gw.ips.clone();
        keep.extend(current.iter().filter(|n| fip_nets.contains(n)));
        removed_fips = ensure_port(host, &mut rr, &ns, gw, &keep, &mut changes).map_err(ctx)?;
        ensure_gateway_routes(&mut rr, gw, &mut changes).map_err(ctx)?;
        ns.write_sysctls(&gateway_ipv6_sysctls(gw)).map_err(ctx)?;
    }
    ensure_extra_routes(&mut rr, r, &mut changes).map_err(ctx)?;
    // NAT before addresses: a floating IP never answers before its DNAT exists.
    let model = legacy_rules(r).map_err(|source| RouterError::Rules {
        router: r.id.clone(),
        source,
    })?;
    let target = NetnsTarget::Named(name.clone());
    let runner = ProcessRunner::open_assuming(&target, backend, ExecOptions::default()).map_err(
        |source| RouterError::Iptables {
            router: r.id.clone(),
            source: source.into(),
        },
    )?;
    let mut ipt = Manager::with_runner(model, runner);
    let report = ipt.apply().map_err(|source| RouterError::Iptables {
        router: r.id.clone(),
        source,
    })?;
    if !report.is_noop() {
        changes.push(format!("iptables: {} restore line(s)", report.lines()));
    }
    if let Some(gw) = &r.gw_port {
        let mut addrs = gw.ips.clone();
        addrs.extend(fip_nets.iter().copied());
        removed_fips
            .extend(ensure_port(host, &mut rr, &ns, gw, &addrs, &mut changes).map_err(ctx)?);
        for net in removed_fips {
            if let IpNet::V4(v4) = net {
                if v4.prefix_len() == 32 {
                    let n = conntrack::delete_entries(&ns, IpAddr::V4(v4.addr())).map_err(ctx)?;
                    changes.push(format!(
                        "floating IP {} removed, {n} conntrack entries deleted",
                        v4.addr()
                    ));
                }
            }
        }
        let announce: Vec<Ipv4Addr> = addrs
            .iter()
            .filter_map(|n| match n.addr() {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            })
            .collect();
        if changes
            .iter()
            .any(|c| c.contains(gw.dev.as_str()) || c.starts_with("created"))
        {
            garp::send(&ns, &mut rr, &gw.dev, &announce, 1).map_err(ctx)?;
        }
    }
    Ok(changes)
}

/// The cheap check of an unchanged router against the kernel (no process): its namespace
/// exists and every port is there, up, with exactly its addresses (plus FIPs on the gateway).
pub fn looks_converged(r: &Router) -> bool {
    let check = || -> Result<bool, l3agent_rtnl::Error> {
        let name = r.namespace();
        if !netns::exists(&name) {
            return Ok(false);
        }
        let mut rr = Rtnl::open(&Netns::open(&name)?)?;
        let links = rr.links()?;
        let addrs = rr.addresses(None)?;
        let fips: Vec<IpNet> = r
            .fips
            .iter()
            .map(|f| IpNet::V4(Ipv4Net::from(f.floating)))
            .collect();
        // A distributed router's gateway lives in snat-, its FIPs in fip-: check qr- only.
        let gw = r.gw_port.iter().filter(|_| !r.distributed);
        for (p, extra) in r
            .interfaces
            .iter()
            .map(|p| (p, &[][..]))
            .chain(gw.map(|p| (p, &fips[..])))
        {
            let Some(l) = links.iter().find(|l| l.name == p.dev.as_str()) else {
                return Ok(false);
            };
            if !l.up || l.mtu != p.mtu || l.mac != Some(p.mac) {
                return Ok(false);
            }
            let mut have: Vec<IpNet> = addrs
                .iter()
                .filter(|a| a.index == l.index)
                .map(|a| a.net)
                .filter(|n| !matches!(n, IpNet::V6(v) if v.addr().segments()[0] & 0xffc0 == 0xfe80))
                .collect();
            let mut want: Vec<IpNet> = p.ips.iter().chain(extra).copied().collect();
            have.sort();
            want.sort();
            if have != want {
                return Ok(false);
            }
        }
        Ok(true)
    };
    check().unwrap_or(false)
}

/// IPv6 on an external gateway (D-21): forwarding on the device, and router advertisements
/// accepted (`accept_ra=2`) only when no IPv6 gateway is configured.
pub fn gateway_ipv6_sysctls(gw: &Port) -> Vec<(Sysctl, u32)> {
    if !gw.subnets.iter().any(|s| s.cidr.addr().is_ipv6()) {
        return Vec::new();
    }
    let has_gateway = gw
        .subnets
        .iter()
        .any(|s| s.gateway.is_some_and(|g| g.is_ipv6()));
    vec![
        (Sysctl::Ipv6Forwarding(Scope::Dev(gw.dev.clone())), 1),
        (
            Sysctl::AcceptRa(Scope::Dev(gw.dev.clone())),
            if has_gateway { 0 } else { 2 },
        ),
    ]
}

/// Routes of an external gateway (D-21): on-link routes for extra subnets, a `scope link`
/// route to a gateway outside its subnet, and the default route.
pub fn ensure_gateway_routes(
    rr: &mut Rtnl,
    gw: &Port,
    changes: &mut Vec<String>,
) -> Result<(), l3agent_rtnl::Error> {
    let dev = Some(gw.dev.clone());
    let mut wanted = Vec::new();
    for net in &gw.extra_subnets {
        wanted.push(Route {
            dev: dev.clone(),
            scope_link: true,
            ..Route::to(*net)
        });
    }
    for s in &gw.subnets {
        let Some(g) = s.gateway.filter(|g| g.is_ipv4() == s.cidr.addr().is_ipv4()) else {
            continue;
        };
        if !s.cidr.contains(&g) {
            wanted.push(Route {
                dev: dev.clone(),
                scope_link: true,
                ..Route::to(IpNet::from(g))
            });
        }
        let any = if g.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
        wanted.push(Route {
            gateway: Some(g),
            dev: dev.clone(),
            ..Route::to(any.parse().expect("literal"))
        });
    }
    for ipv6 in [false, true] {
        let have = rr.routes(ipv6, MAIN_TABLE)?;
        for w in wanted.iter().filter(|w| w.dst.addr().is_ipv6() == ipv6) {
            if !have.contains(w) {
                rr.replace_route(w)?;
                changes.push(describe_route(w));
            }
        }
    }
    Ok(())
}

/// A route as `ip route` would print it, for change reports.
pub fn describe_route(r: &Route) -> String {
    let mut s = format!("route {}", r.dst);
    if let Some(g) = r.gateway {
        s.push_str(&format!(" via {g}"));
    }
    if let Some(d) = &r.dev {
        s.push_str(&format!(" dev {d}"));
    }
    if r.scope_link {
        s.push_str(" scope link");
    }
    if r.table != MAIN_TABLE {
        s.push_str(&format!(" table {}", r.table));
    }
    s
}

/// Extra routes (D-24) in the main table; stale ones (routes with a next hop that are neither
/// default routes nor wanted) are removed.
pub fn ensure_extra_routes(
    rr: &mut Rtnl,
    r: &Router,
    changes: &mut Vec<String>,
) -> Result<(), l3agent_rtnl::Error> {
    for ipv6 in [false, true] {
        let have = rr.routes(ipv6, MAIN_TABLE)?;
        for (dst, hop) in r.routes.iter().filter(|(d, _)| d.addr().is_ipv6() == ipv6) {
            let route = Route {
                gateway: Some(*hop),
                ..Route::to(*dst)
            };
            if !have
                .iter()
                .any(|h| h.dst == *dst && h.gateway == Some(*hop))
            {
                rr.replace_route(&route)?;
                changes.push(format!("extra route {dst} via {hop}"));
            }
        }
        for h in have {
            let stale = h.gateway.is_some()
                && h.dst.prefix_len() != 0
                && !r
                    .routes
                    .iter()
                    .any(|(d, n)| *d == h.dst && Some(*n) == h.gateway);
            if stale {
                rr.delete_route(&h)?;
                changes.push(format!("removed {}", describe_route(&h)));
            }
        }
    }
    Ok(())
}

/// Removes a router's namespace: router-side devices first (so the host ends go at once), then
/// the namespace. Only the exact namespace `qrouter-<id>` is touched. Keeps going on errors.
pub fn destroy(id_namespace: &l3agent_types::NetnsName) -> Result<bool, l3agent_rtnl::ErrorList> {
    let mut errors = Vec::new();
    if !netns::exists(id_namespace) {
        return Ok(false);
    }
    match Netns::open(id_namespace).and_then(|ns| Rtnl::open(&ns)) {
        Ok(mut rr) => match rr.links() {
            Ok(links) => {
                for l in links.iter().filter(|l| l.kind.as_deref() == Some("veth")) {
                    if let Ok(n) = IfName::new("device", &l.name) {
                        if let Err(e) = rr.delete_link(&n) {
                            errors.push(e);
                        }
                    }
                }
            }
            Err(e) => errors.push(e),
        },
        Err(e) => errors.push(e),
    }
    if let Err(e) = netns::delete(id_namespace) {
        errors.push(e);
    }
    if errors.is_empty() {
        Ok(true)
    } else {
        Err(l3agent_rtnl::ErrorList(errors))
    }
}
