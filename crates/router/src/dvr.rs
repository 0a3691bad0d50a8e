//! Distributed routers (Neutron's DvrLocalRouter and DvrEdgeRouter, D-10..D-19, D-28..D-35,
//! D-40), without Neutron's DVR weaknesses:
//! - `fip-<external network>`: the `fg-` port with proxy ARP, `raw -j CT --notrack`, and per
//!   router an `fpr-` end, a rule `iif fpr-… lookup T` and table T with the default route;
//! - `qrouter-<id>`: `qr-` ports, the `rfp-` end with a link-local /31 from the persisted
//!   allocator, table 16 with the default route to the FIP namespace, a rule per floating IP at
//!   a persisted priority (stale ones removed: B-17/B-18), DNAT/SNAT of floating IPs, and the
//!   SNAT redirect to the `sg-` ports through tables and priorities allocated explicitly and
//!   persisted (B-22);
//! - `snat-<id>` on the `dvr_snat` host that is the router's `gw_port_host`: `sg-` ports, the
//!   `qg-` gateway and the SNAT rules.
//!
//! Every error fails the router (B-23); nothing is written outside the router's namespaces
//! (B-24); namespaces are found by exact names (B-25); a failed FIP gateway update never deletes
//! the shared `fip-` namespace (B-28).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use l3agent_iptables::{Family, IptablesModel, ModelOptions, RuleSpec, Table, WrapName};
use l3agent_iptables_exec::{Backend, ExecOptions, Manager, NetnsTarget, ProcessRunner};
use l3agent_rtnl::prelude::*;
use l3agent_rtnl::route::{Route, MAIN_TABLE};
use l3agent_rtnl::rule::Rule;
use l3agent_rtnl::sysctl::{Scope, Sysctl};
use l3agent_rtnl::{conntrack, garp, Netns, Rtnl};
use l3agent_types::{IfName, NetnsName};

use crate::alloc::LinkLocalPool;
use crate::config::{device_name, Port, Router};
use crate::error::RouterError;
use crate::legacy::{
    ensure_gateway_routes, ensure_namespace, ensure_port, gateway_nat_rules, WRAP,
};

/// Neutron's FIP_RT_TBL: the qrouter table that leads to the FIP namespace.
pub const FIP_TABLE: u32 = 16;
/// Per-FIP rule priorities (FIP_PR_START..FIP_PR_END).
pub const FIP_PRIORITIES: std::ops::Range<u32> = 32768..72768;
/// SNAT-redirect tables and priorities: allocated from here, above every FIP priority and
/// Neutron's 80000 fast path, below the link-local-derived FIP namespace tables.
pub const SNAT_TABLES: std::ops::Range<u32> = 100_000..1_100_000;

/// `fip-<external network id>`.
pub fn fip_namespace(network_id: &str) -> Option<NetnsName> {
    NetnsName::new("network_id", &format!("fip-{network_id}")).ok()
}

/// `snat-<router id>`.
pub fn snat_namespace(router_id: &str) -> Option<NetnsName> {
    NetnsName::new("id", &format!("snat-{router_id}")).ok()
}

/// `rfp-` and `fpr-` + the router id (`[:14]`, Neutron's names).
pub fn link_names(router_id: &str) -> (IfName, IfName) {
    let n = |p: &str| IfName::new("id", &device_name(p, router_id)).expect("validated id");
    (n("rfp-"), n("fpr-"))
}

/// What the host allocated for one router before converging it.
#[derive(Debug, Clone, Default)]
pub struct DvrAllocation {
    /// Index of the router's /31 in the link-local pool.
    pub link_local: Option<u32>,
    /// Floating IP → rule priority.
    pub fip_priorities: BTreeMap<Ipv4Addr, u32>,
    /// Internal port id → SNAT-redirect table (= priority).
    pub snat_tables: BTreeMap<String, u32>,
}

/// The FIP namespace of an external network on this host, as converged by
/// [`ensure_fip_namespace`].
#[derive(Debug, Clone)]
pub struct FipGateway {
    /// The namespace.
    pub namespace: NetnsName,
    /// The agent gateway port (`fg-`).
    pub port: Port,
}

/// The agent gateway port of `router`'s external network for this host, if the router dict
/// carries one.
pub fn agent_gateway(r: &Router) -> Option<&Port> {
    let net = &r.gw_port.as_ref()?.network_id;
    r.fip_agent_interfaces.iter().find(|p| &p.network_id == net)
}

fn fip_sysctls(fg: &IfName) -> Vec<(Sysctl, u32)> {
    vec![
        (Sysctl::IpForward, 1),
        (Sysctl::IpNonlocalBind, 1),
        (Sysctl::ProxyArp(Scope::Dev(fg.clone())), 1),
        (Sysctl::ProxyDelay(fg.clone()), 1),
    ]
}

/// Creates or updates the FIP namespace of one external network (D-13, D-14, D-40): the `fg-`
/// port with its addresses, proxy ARP, on-link routes, and `raw PREROUTING -j CT --notrack`.
pub fn ensure_fip_namespace(
    host: &mut Rtnl,
    gw: &FipGateway,
    backend: Backend,
    changes: &mut Vec<String>,
) -> Result<(), RouterError> {
    let label = gw.namespace.to_string();
    let ctx = |source| RouterError::Plumbing {
        router: label.clone(),
        source,
    };
    let (ns, mut fr) = ensure_namespace(&gw.namespace, changes).map_err(ctx)?;
    ensure_port(host, &mut fr, &ns, &gw.port, &gw.port.ips, changes).map_err(ctx)?;
    ns.write_sysctls(&fip_sysctls(&gw.port.dev)).map_err(ctx)?;
    let mut onlink = gw.port.clone();
    // Default routes live in the per-router tables; main keeps only the on-link ones.
    for s in &mut onlink.subnets {
        s.gateway = None;
    }
    ensure_gateway_routes(&mut fr, &onlink, changes).map_err(ctx)?;
    let mut m = IptablesModel::new(
        WrapName::new(WRAP).map_err(|e| RouterError::Rules {
            router: label.clone(),
            source: e,
        })?,
        ModelOptions::default(),
    );
    m.add_rule(
        Family::V4,
        Table::Raw,
        RuleSpec::new("PREROUTING", "-j CT --notrack"),
    )
    .map_err(|e| RouterError::Rules {
        router: label.clone(),
        source: e,
    })?;
    apply_iptables(&label, &gw.namespace, m, backend, changes)
}

fn apply_iptables(
    owner: &str,
    ns: &NetnsName,
    model: IptablesModel,
    backend: Backend,
    changes: &mut Vec<String>,
) -> Result<(), RouterError> {
    let target = NetnsTarget::Named(ns.clone());
    let runner = ProcessRunner::open_assuming(&target, backend, ExecOptions::default()).map_err(
        |source| RouterError::Iptables {
            router: owner.to_owned(),
            source: source.into(),
        },
    )?;
    let report = Manager::with_runner(model, runner)
        .apply()
        .map_err(|source| RouterError::Iptables {
            router: owner.to_owned(),
            source,
        })?;
    if !report.is_noop() {
        changes.push(format!(
            "iptables in {ns}: {} restore line(s)",
            report.lines()
        ));
    }
    Ok(())
}

/// The qrouter rules of a distributed router on this host (D-33..D-35).
fn qrouter_rules(
    r: &Router,
    fips: &[(Ipv4Addr, Ipv4Addr)],
    rfp: &IfName,
    random_fully: bool,
) -> Result<IptablesModel, l3agent_iptables::Error> {
    let mut m = IptablesModel::new(WrapName::new(WRAP)?, ModelOptions::default());
    let rf = if random_fully { " --random-fully" } else { "" };
    let _ = r;
    for (floating, fixed) in fips {
        let dnat = format!("-d {floating}/32 -i {rfp} -j DNAT --to-destination {fixed}");
        m.add_rule(
            Family::V4,
            Table::Nat,
            RuleSpec {
                tag: Some("floating_ip"),
                ..RuleSpec::new("PREROUTING", &dnat)
            },
        )?;
        let snat = format!("-s {fixed}/32 -j SNAT --to-source {floating}{rf}");
        m.add_rule(
            Family::V4,
            Table::Nat,
            RuleSpec {
                tag: Some("floating_ip"),
                ..RuleSpec::new("float-snat", &snat)
            },
        )?;
    }
    if !fips.is_empty() {
        m.add_rule(
            Family::V4,
            Table::Nat,
            RuleSpec::new(
                "POSTROUTING",
                &format!("! -o {rfp} -m conntrack ! --ctstate DNAT -j ACCEPT"),
            ),
        )?;
    }
    Ok(m)
}

fn v4(net: &IpNet) -> Option<Ipv4Net> {
    match net {
        IpNet::V4(n) => Some(*n),
        IpNet::V6(_) => None,
    }
}

/// Converges one distributed router on this host. `fip` is the FIP namespace of its external
/// network (already converged by the caller), `snat_here` whether this host holds its SNAT.
#[allow(clippy::too_many_arguments)]
pub fn ensure_dvr(
    host: &mut Rtnl,
    r: &Router,
    this_host: &str,
    fip: Option<&FipGateway>,
    snat_here: bool,
    alloc: &DvrAllocation,
    backend: Backend,
    random_fully: bool,
) -> Result<Vec<String>, RouterError> {
    let ctx = |source| RouterError::Plumbing {
        router: r.id.clone(),
        source,
    };
    let rules_err = |source| RouterError::Rules {
        router: r.id.clone(),
        source,
    };
    let mut changes = Vec::new();
    let name = r.namespace();
    let (ns, mut rr) = ensure_namespace(&name, &mut changes).map_err(ctx)?;
    ns.write_sysctls(&[(Sysctl::SendRedirects(Scope::All), 0)])
        .map_err(ctx)?;
    for p in &r.interfaces {
        ensure_port(host, &mut rr, &ns, p, &p.ips, &mut changes).map_err(ctx)?;
    }
    let (rfp, fpr) = link_names(&r.id);
    let mut wanted: Vec<&IfName> = r.interfaces.iter().map(|p| &p.dev).collect();
    let local_fips: Vec<(Ipv4Addr, Ipv4Addr)> = r
        .fips
        .iter()
        .filter(|f| f.host.as_deref().is_none_or(|h| h == this_host))
        .map(|f| (f.floating, f.fixed))
        .collect();
    let mut removed_fips: Vec<Ipv4Addr> = Vec::new();
    let fip_ctx = match (fip, alloc.link_local, &r.gw_port) {
        (Some(f), Some(ll), Some(gw)) => Some((f, ll, gw)),
        _ => None,
    };
    if fip_ctx.is_some() {
        wanted.push(&rfp);
    }
    crate::legacy::remove_stale_devices(&mut rr, &["qr-", "rfp-", "qg-"], &wanted, &mut changes)
        .map_err(ctx)?;
    if let Some((fip, ll, gw)) = fip_ctx {
        let fip_ns = Netns::open(&fip.namespace).map_err(ctx)?;
        let mut fr = Rtnl::open(&fip_ns).map_err(ctx)?;
        let (rfp_ip, fpr_ip) = LinkLocalPool::pair(ll);
        // rtr <-> fip link (D-15).
        if rr.link(&rfp).map_err(ctx)?.is_none() || fr.link(&fpr).map_err(ctx)?.is_none() {
            let _ = rr.delete_link(&rfp);
            let _ = fr.delete_link(&fpr);
            rr.add_veth(&rfp, &fpr, Some(fip_ns.fd()), Some(gw.mtu))
                .map_err(ctx)?;
            changes.push(format!("created {rfp} <-> {fpr} ({rfp_ip}/31)"));
        }
        rr.set_up(&rfp, true).map_err(ctx)?;
        fr.set_up(&fpr, true).map_err(ctx)?;
        rr.converge_addresses(
            &rfp,
            &[IpNet::V4(Ipv4Net::new(rfp_ip, 31).expect("31"))],
            &[],
        )
        .map_err(ctx)?;
        fr.converge_addresses(
            &fpr,
            &[IpNet::V4(Ipv4Net::new(fpr_ip, 31).expect("31"))],
            &[],
        )
        .map_err(ctx)?;
        let rfp_mac = rr.link(&rfp).map_err(ctx)?.and_then(|l| l.mac);
        let fpr_mac = fr.link(&fpr).map_err(ctx)?.and_then(|l| l.mac);
        if let (Some(rm), Some(fm)) = (rfp_mac, fpr_mac) {
            rr.replace_neighbour(&rfp, IpAddr::V4(fpr_ip), fm)
                .map_err(ctx)?;
            fr.replace_neighbour(&fpr, IpAddr::V4(rfp_ip), rm)
                .map_err(ctx)?;
        }
        let table16 = Route {
            gateway: Some(IpAddr::V4(fpr_ip)),
            dev: Some(rfp.clone()),
            table: FIP_TABLE,
            ..Route::to("0.0.0.0/0".parse().expect("literal"))
        };
        if !rr.routes(false, FIP_TABLE).map_err(ctx)?.contains(&table16) {
            rr.replace_route(&table16).map_err(ctx)?;
            changes.push(format!("table {FIP_TABLE}: default via {fpr_ip} dev {rfp}"));
        }
        // FIP namespace side: iif rule and table T = the fpr address as an integer (D-30).
        let t = u32::from(fpr_ip);
        let iif_rule = Rule {
            ipv6: false,
            from: None,
            to: None,
            iif: Some(fpr.clone()),
            table: t,
            priority: t,
        };
        if fr.add_rule(&iif_rule).map_err(ctx)? {
            changes.push(format!("{}: rule iif {fpr} lookup {t}", fip.namespace));
        }
        for s in &gw.subnets {
            if let Some(IpAddr::V4(g)) = s.gateway {
                let d = Route {
                    gateway: Some(IpAddr::V4(g)),
                    dev: Some(fip.port.dev.clone()),
                    table: t,
                    ..Route::to("0.0.0.0/0".parse().expect("literal"))
                };
                if !fr.routes(false, t).map_err(ctx)?.contains(&d) {
                    fr.replace_route(&d).map_err(ctx)?;
                    changes.push(format!("{}: table {t} default via {g}", fip.namespace));
                }
            }
        }
        // Per floating IP: a rule at its persisted priority, and the /32 route in the FIP
        // namespace (D-16). Stale ones of both go (B-17, B-18).
        let have_rules = rr.rules(false).map_err(ctx)?;
        for (floating, fixed) in &local_fips {
            let Some(&prio) = alloc.fip_priorities.get(floating) else {
                continue;
            };
            let rule = Rule {
                ipv6: false,
                from: Some(IpNet::V4(Ipv4Net::from(*fixed))),
                to: None,
                iif: None,
                table: FIP_TABLE,
                priority: prio,
            };
            if !have_rules.contains(&rule) {
                rr.add_rule(&rule).map_err(ctx)?;
                changes.push(format!(
                    "rule from {fixed} lookup {FIP_TABLE} priority {prio}"
                ));
            }
        }
        for old in have_rules
            .iter()
            .filter(|x| x.table == FIP_TABLE && FIP_PRIORITIES.contains(&x.priority))
        {
            let live = local_fips.iter().any(|(fl, fx)| {
                alloc.fip_priorities.get(fl) == Some(&old.priority)
                    && old.from == Some(IpNet::V4(Ipv4Net::from(*fx)))
            });
            if !live {
                rr.delete_rule(old).map_err(ctx)?;
                changes.push(format!(
                    "removed rule {:?} priority {}",
                    old.from, old.priority
                ));
            }
        }
        let fip_routes = fr.routes(false, MAIN_TABLE).map_err(ctx)?;
        for (floating, _) in &local_fips {
            let route = Route {
                gateway: Some(IpAddr::V4(rfp_ip)),
                dev: Some(fpr.clone()),
                ..Route::to(IpNet::V4(Ipv4Net::from(*floating)))
            };
            if !fip_routes.contains(&route) {
                fr.replace_route(&route).map_err(ctx)?;
                changes.push(format!(
                    "{}: route {floating}/32 via {rfp_ip}",
                    fip.namespace
                ));
            }
        }
        for old in fip_routes.iter().filter(|x| {
            x.dev.as_ref() == Some(&fpr)
                && x.gateway == Some(IpAddr::V4(rfp_ip))
                && x.dst.prefix_len() == 32
        }) {
            if let IpAddr::V4(a) = old.dst.addr() {
                if !local_fips.iter().any(|(f, _)| *f == a) {
                    fr.delete_route(old).map_err(ctx)?;
                    removed_fips.push(a);
                    changes.push(format!("{}: removed route {a}/32", fip.namespace));
                }
            }
        }
        // NAT rules, then the announcement: a FIP answers only once its DNAT exists.
        let model = qrouter_rules(r, &local_fips, &rfp, random_fully).map_err(rules_err)?;
        apply_iptables(&r.id, &name, model, backend, &mut changes)?;
        let announce: Vec<Ipv4Addr> = local_fips.iter().map(|(f, _)| *f).collect();
        if changes
            .iter()
            .any(|c| c.contains("route") && c.contains("/32"))
        {
            garp::send(&fip_ns, &mut fr, &fip.port.dev, &announce, 1).map_err(ctx)?;
        }
        for ip in &removed_fips {
            conntrack::delete_entries(&ns, IpAddr::V4(*ip)).map_err(ctx)?;
            conntrack::delete_entries(&fip_ns, IpAddr::V4(*ip)).map_err(ctx)?;
        }
    } else {
        let model = qrouter_rules(r, &[], &rfp, random_fully).map_err(rules_err)?;
        apply_iptables(&r.id, &name, model, backend, &mut changes)?;
    }
    ensure_snat_redirect(&mut rr, &ns, r, alloc, &mut changes).map_err(ctx)?;
    let snat_ns = snat_namespace(&r.id).expect("validated id");
    if snat_here && r.gw_port.is_some() {
        ensure_snat_namespace(host, r, &snat_ns, backend, random_fully, &mut changes)?;
    } else if l3agent_rtnl::netns::exists(&snat_ns) {
        crate::legacy::destroy(&snat_ns).map_err(|e| RouterError::Teardown {
            router: r.id.clone(),
            errors: e,
        })?;
        changes.push(format!("removed {snat_ns}: SNAT is not on this host"));
    }
    Ok(changes)
}

/// The SNAT redirect (D-12, D-29): for each internal port whose subnet has an SNAT port, a table
/// with the default route via the SNAT port, and a rule from the port's subnet into it; the
/// table doubles as the rule priority, allocated and persisted (never derived from the IP).
fn ensure_snat_redirect(
    rr: &mut Rtnl,
    ns: &Netns,
    r: &Router,
    alloc: &DvrAllocation,
    changes: &mut Vec<String>,
) -> Result<(), l3agent_rtnl::Error> {
    let mut wanted_rules = Vec::new();
    for p in &r.interfaces {
        let Some(&t) = alloc.snat_tables.get(&p.id) else {
            continue;
        };
        for net in p.ips.iter().filter_map(v4) {
            let sg_ip = r
                .snat_interfaces
                .iter()
                .flat_map(|s| s.ips.iter().filter_map(v4))
                .find(|s| s.trunc() == net.trunc());
            let Some(sg) = sg_ip else { continue };
            let route = Route {
                gateway: Some(IpAddr::V4(sg.addr())),
                dev: Some(p.dev.clone()),
                table: t,
                ..Route::to("0.0.0.0/0".parse().expect("literal"))
            };
            if !rr.routes(false, t)?.contains(&route) {
                rr.replace_route(&route)?;
                changes.push(format!(
                    "table {t}: default via {} dev {}",
                    sg.addr(),
                    p.dev
                ));
            }
            let rule = Rule {
                ipv6: false,
                from: Some(IpNet::V4(net.trunc())),
                to: None,
                iif: None,
                table: t,
                priority: t,
            };
            if rr.add_rule(&rule)? {
                changes.push(format!("rule from {} lookup {t}", net.trunc()));
            }
            ns.write_sysctls(&[(Sysctl::SendRedirects(Scope::Dev(p.dev.clone())), 0)])?;
            wanted_rules.push(rule);
        }
    }
    for old in rr
        .rules(false)?
        .into_iter()
        .filter(|x| SNAT_TABLES.contains(&x.table))
    {
        if !wanted_rules.contains(&old) {
            rr.delete_rule(&old)?;
            rr.flush_table(false, old.table)?;
            changes.push(format!("removed SNAT redirect table {}", old.table));
        }
    }
    Ok(())
}

/// The `snat-` namespace of a router whose SNAT is on this host (D-19): `sg-` ports, the `qg-`
/// gateway with its routes, and the SNAT rules.
fn ensure_snat_namespace(
    host: &mut Rtnl,
    r: &Router,
    name: &NetnsName,
    backend: Backend,
    random_fully: bool,
    changes: &mut Vec<String>,
) -> Result<(), RouterError> {
    let ctx = |source| RouterError::Plumbing {
        router: r.id.clone(),
        source,
    };
    let (ns, mut sr) = ensure_namespace(name, changes).map_err(ctx)?;
    ns.write_sysctls(&[(Sysctl::IpNonlocalBind, 1), (Sysctl::ConntrackTcpLoose, 0)])
        .map_err(ctx)?;
    for p in &r.snat_interfaces {
        ensure_port(host, &mut sr, &ns, p, &p.ips, changes).map_err(ctx)?;
    }
    let gw = r.gw_port.as_ref().expect("checked by the caller");
    ensure_port(host, &mut sr, &ns, gw, &gw.ips, changes).map_err(ctx)?;
    ensure_gateway_routes(&mut sr, gw, changes).map_err(ctx)?;
    ns.write_sysctls(&crate::legacy::gateway_ipv6_sysctls(gw))
        .map_err(ctx)?;
    let mut wanted: Vec<&IfName> = r.snat_interfaces.iter().map(|p| &p.dev).collect();
    wanted.push(&gw.dev);
    crate::legacy::remove_stale_devices(&mut sr, &["sg-", "qg-"], &wanted, changes).map_err(ctx)?;
    let mut m = IptablesModel::new(
        WrapName::new(WRAP).map_err(|e| RouterError::Rules {
            router: r.id.clone(),
            source: e,
        })?,
        ModelOptions::default(),
    );
    if let Some(gip) = r.gateway_ipv4() {
        gateway_nat_rules(&mut m, &gw.dev, gip, r.enable_snat, random_fully).map_err(|e| {
            RouterError::Rules {
                router: r.id.clone(),
                source: e,
            }
        })?;
    }
    apply_iptables(&r.id, name, m, backend, changes)?;
    let announce: Vec<Ipv4Addr> = gw.ips.iter().filter_map(v4).map(|n| n.addr()).collect();
    if changes.iter().any(|c| c.contains(gw.dev.as_str())) {
        garp::send(&ns, &mut sr, &gw.dev, &announce, 1).map_err(ctx)?;
    }
    Ok(())
}

/// Removes what a distributed router had in a FIP namespace: its `fpr-` end, its iif rule and
/// its table (D-55). Keeps going on errors.
pub fn remove_from_fip_namespace(
    fip_ns: &NetnsName,
    router_id: &str,
    link_local: Option<u32>,
) -> Vec<l3agent_rtnl::Error> {
    let mut errors = Vec::new();
    if !l3agent_rtnl::netns::exists(fip_ns) {
        return errors;
    }
    let (_, fpr) = link_names(router_id);
    let result = (|| -> Result<(), l3agent_rtnl::Error> {
        let mut fr = Rtnl::open(&Netns::open(fip_ns)?)?;
        fr.delete_link(&fpr)?;
        for rule in fr
            .rules(false)?
            .into_iter()
            .filter(|x| x.iif.as_ref() == Some(&fpr))
        {
            fr.delete_rule(&rule)?;
            fr.flush_table(false, rule.table)?;
        }
        if let Some(ll) = link_local {
            let t = u32::from(LinkLocalPool::pair(ll).1);
            fr.flush_table(false, t)?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        errors.push(e);
    }
    errors
}
