//! Compile (pure): router dicts + allocations + host facts → [`crate::spec::HostSpec`].
//! No kernel, no process, no file: everything the result depends on is an argument, so the
//! same inputs always give the same spec (golden tests in `tests/compile_golden.rs`).
//!
//! What each namespace holds, per agent mode (NEUTRON.md D-01):
//! - every admin-up non-distributed router: a legacy `qrouter-` (D-03, D-10, D-21, D-22,
//!   D-24, D-36..D-38, D-41..D-43);
//! - every admin-up distributed router on a `dvr`/`dvr_snat` agent: a DVR `qrouter-` (D-10..D-12,
//!   D-15, D-16, D-23, D-28, D-29, D-33..D-35, D-41..D-43, NEUTRON-OPS §8), its part of the
//!   shared `fip-<external network>` (D-04, D-13..D-16, D-30, D-40), and on the `dvr_snat` host
//!   that is its `gw_port_host`, a `snat-` (D-05, D-19, D-21, D-37, D-38);
//! - admin-down routers: nothing (so they are removed).
//!
//! Where Neutron is nondeterministic, compile is not:
//! - extra routes with one destination are one ECMP route with its next hops sorted
//!   (NEUTRON-OPS §7);
//! - of several gateways of one family, the default route goes via the last one in the port's
//!   `subnets` order, which is the one that survives Neutron's `replace` of each in turn;
//! - address-scope marks are derived from the sorted scope ids ([`ScopeMarks`], B-27);
//! - the `rfp-`/`fpr-` MACs are derived from the router id ([`link_macs`]), so the permanent
//!   neighbours between them and the IPv6 default route via `fpr-`'s link-local address are
//!   known without asking the kernel (NEUTRON-OPS §8.2).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use l3agent_iptables::{
    Family, Hints, IptablesModel, KernelState, ModelOptions, RuleSpec, Table, WrapName,
};
use l3agent_rtnl::route::{NextHop, Protocol, Route};
use l3agent_rtnl::rule::Rule;
use l3agent_rtnl::sysctl::{Scope, Sysctl};
use l3agent_supervise::{Key, Service, Supervisor};
use l3agent_types::{IfName, MacAddr, NetnsName, NetworkId, PortId, RouterId};

use crate::alloc::LinkLocalPool;
use crate::config::{AgentMode, Fip, HaRouter, HostConfig, InterfaceDriver, Port, Router};
use crate::spec::{names, Device, DeviceKind, HostSpec, NsKind, NsSpec, Role};

/// Neutron's L3 agent wrap name: our iptables chains are `neutron-l3-agent-*`.
pub const WRAP: &str = "neutron-l3-agent";

/// Neutron's FIP_RT_TBL: the qrouter table that leads to the FIP namespace (D-28).
pub const FIP_TABLE: u32 = 16;

/// Neutron's FAST_PATH_EXIT_PR: the priority of the address-scope fast path rules (D-23).
pub const FAST_PATH_PRIORITY: u32 = 80_000;

/// Neutron's external-ingress mark (`external_ingress_mark` 0x2 / ROUTER_MARK_MASK, D-37).
const EXT_MARK: &str = "0x2/0xffff";

/// The address-scope part of the packet mark (ADDRESS_SCOPE_MARK_MASK).
const SCOPE_MASK: &str = "0xffff0000";

/// The `floating_ip` tag of Neutron's FIP rules.
const FIP_TAG: &str = "floating_ip";

/// The wrapped filter chain of the floating IPs' accounting rules
/// (`agent.traffic_accounting`): `neutron-l3-agent-fip-acct` in `qrouter-`.
pub const FIP_ACCT_CHAIN: &str = "fip-acct";

/// An iptables model with l3agent's wrap name and no rules.
pub fn empty_model() -> IptablesModel {
    // Neutron's default chains and rules are the same for every namespace: parsed once per
    // process, then copied (parsing them was a third of a one-router compile).
    static EMPTY: std::sync::OnceLock<IptablesModel> = std::sync::OnceLock::new();
    EMPTY
        .get_or_init(|| {
            IptablesModel::new(
                WrapName::new(WRAP).expect("a valid literal wrap name"),
                ModelOptions::default(),
            )
        })
        .clone()
}

/// The `iptables-restore` input that makes an empty namespace hold `model`'s rules of `family`
/// (empty: the model has none).
pub fn restore_text(model: &IptablesModel, family: Family) -> String {
    let plan = l3agent_iptables::plan_family(&KernelState::default(), model, family, None);
    if plan.is_empty() {
        return String::new();
    }
    plan.render().0
}

/// Host facts compile needs as inputs (never probed here).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostFacts {
    /// SNAT rules get `--random-fully` (iptables >= 1.6.0, Neutron's I-34): probed once by the
    /// caller, an input here so that a plan made elsewhere gives the same rules.
    pub random_fully: bool,
}

/// What the host's persisted allocators gave ([`crate::alloc`] pools; absolute values, not
/// indices, except `link_local`). Allocations are persisted (D-46..D-49, B-21, B-22) so that
/// the link addresses, rule priorities and tables of a router never change under it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocations {
    /// Index into the [`LinkLocalPool`] ([`LinkLocalPool::pair`] gives the rfp/fpr
    /// addresses), per DVR router with a link to its FIP namespace (D-15).
    pub link_local: BTreeMap<RouterId, u32>,
    /// Floating IP → priority of its `from FIXED lookup 16` rule (32768..72768, D-16).
    pub fip_priorities: BTreeMap<Ipv4Addr, u32>,
    /// Internal port → its SNAT-redirect table, which is also the priority of its rules
    /// (100000.., explicit instead of Neutron's IP-derived index: B-22, D-12, D-29).
    pub snat_tables: BTreeMap<(RouterId, PortId), u32>,
}

/// Which allocations [`compile`] will need for a config: the host allocates exactly these
/// before compiling, and garbage-collects the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    /// DVR routers with an `rfp-`/`fpr-` link: a gateway, and an agent gateway port (`fg-`)
    /// of its external network for this host.
    pub link_local: BTreeSet<RouterId>,
    /// Floating IPs of those routers served by this host ([`Fip::is_local`]).
    pub fip_priorities: BTreeSet<Ipv4Addr>,
    /// Internal ports of DVR routers redirected to their SNAT port (D-12).
    pub snat_tables: BTreeSet<(RouterId, PortId)>,
}

/// The allocations compile will need for `cfg` (see [`Needs`]).
pub fn needs(cfg: &HostConfig) -> Needs {
    let mut n = Needs::default();
    for r in dvr_routers(cfg) {
        if has_fip_link(r) {
            n.link_local.insert(r.id.clone());
            n.fip_priorities
                .extend(local_fips(r, &cfg.agent.host).map(|f| f.floating));
        }
        for p in &r.interfaces {
            if snat_port_for(r, p).is_some() {
                n.snat_tables.insert((r.id.clone(), p.id.clone()));
            }
        }
    }
    n
}

/// One end of the qrouter ↔ fip link (D-15): a veth end with its /31 address, whose other
/// end is `peer` in `peer_ns`; the `creator` side makes the pair.
fn link_end(
    (peer, peer_ns): (&IfName, &NetnsName),
    creator: bool,
    role: Role,
    mtu: u32,
    mac: MacAddr,
    ip: Ipv4Addr,
) -> Device {
    Device {
        kind: DeviceKind::Link {
            peer: peer.clone(),
            peer_ns: peer_ns.clone(),
            creator,
        },
        role,
        mtu: Some(mtu),
        mac: Some(mac),
        addresses: [IpNet::V4(Ipv4Net::new(ip, 31).expect("31 is a prefix"))].into(),
        floating: BTreeSet::new(),
        vips: false,
    }
}

/// The desired state of the whole host for `cfg`, given the allocations the host made for
/// [`needs`]`(cfg)` and its facts. A DVR router whose allocation is missing is not compiled:
/// it is listed in [`HostSpec::failed`] with the reason (never a panic).
pub fn compile(cfg: &HostConfig, alloc: &Allocations, facts: &HostFacts) -> HostSpec {
    compile_hinted(cfg, alloc, facts, &|_| None)
}

/// Where [`compile_hinted`] finds the rules a namespace's last model resolved (the agent's
/// long-lived iptables managers hold them).
pub type HintSource<'a> = dyn Fn(&NetnsName) -> Option<Arc<Hints>> + 'a;

/// [`compile`], resolving each namespace's rules that `hints` holds for it as they were
/// resolved before (see [`Hints`]): the same spec, with less reading of rule text.
pub fn compile_hinted(
    cfg: &HostConfig,
    alloc: &Allocations,
    facts: &HostFacts,
    hints: &HintSource<'_>,
) -> HostSpec {
    let mut spec = compile_with(cfg, alloc, facts, hints);
    for ns in spec.namespaces.values_mut() {
        ns.iptables.drop_hints();
    }
    spec
}

fn compile_with(
    cfg: &HostConfig,
    alloc: &Allocations,
    facts: &HostFacts,
    hints: &HintSource<'_>,
) -> HostSpec {
    let mut spec = HostSpec {
        ovs: cfg.agent.ovs.clone(),
        ..HostSpec::default()
    };
    let mut routers: Vec<&Router> = cfg.routers.iter().filter(|r| r.admin_state_up).collect();
    routers.sort_by(|a, b| a.id.cmp(&b.id));
    let cx = Cx {
        cfg,
        alloc,
        facts,
        hints,
    };
    // The fip- namespaces, by external network, each made from the first router (in id
    // order) that carries the agent gateway port (validation made them all carry the same
    // port). A namespace is there as long as one admin-up DVR router uses it, even one that
    // failed: its owners are all of them, its per-router parts only those compiled.
    let mut fips: BTreeMap<NetworkId, NsSpec> = BTreeMap::new();
    for r in routers {
        let result: Result<Vec<(NetnsName, NsSpec)>, String> =
            if r.distributed && cfg.agent.is_dvr() {
                if let Some(fg) = has_fip_link(r).then(|| r.agent_gateway()).flatten() {
                    let ns = fips
                        .entry(fg.network_id.clone())
                        .or_insert_with(|| fip_namespace(fg));
                    ns.owners.insert(r.id.clone());
                }
                cx.dvr(r).map(|parts| {
                    if let Some((net, part)) = parts.fip {
                        if let Some(ns) = fips.get_mut(&net) {
                            part.merge_into(ns);
                        }
                    }
                    let mut out = vec![(names::router_ns(&r.id), parts.qrouter)];
                    out.extend(parts.snat.map(|ns| (names::snat_ns(&r.id), ns)));
                    out
                })
            } else if r.distributed {
                // Validation refuses this; never compiled as a legacy router by accident.
                Err("a distributed router needs a dvr or dvr_snat agent".to_owned())
            } else {
                cx.legacy(r)
                    .and_then(|ns| match &r.ha {
                        Some(ha) => cx.ha(r, ha, ns),
                        None => Ok(ns),
                    })
                    .map(|ns| vec![(names::router_ns(&r.id), ns)])
            };
        match result {
            Ok(list) => spec.namespaces.extend(list),
            Err(why) => {
                spec.failed.insert(r.id.clone(), why);
            }
        }
    }
    for (net, ns) in fips {
        spec.namespaces.insert(names::fip_ns(&net), ns);
    }
    spec.daemons_dir = daemons_dir(&cfg.agent.state_path);
    spec
}

/// The supervisor's directory: `<state_path>/daemons`.
pub fn daemons_dir(state_path: &std::path::Path) -> std::path::PathBuf {
    state_path.join("daemons")
}

/// The metadata proxy's port mark (Neutron's `metadata_access_mark` / ROUTER_MARK_MASK).
const METADATA_MARK: &str = "0x1/0xffff";

/// The metadata rules of a router (NEUTRON-OPS §3.1): requests to 169.254.169.254:80 (IPv6:
/// fe80::a9fe:a9fe) entering a `qr-` device are marked; a marked request that is forwarded
/// rather than redirected is dropped (Neutron installs that DROP in `scope` and loses it at
/// the first `process()`, §3.5: here it stays); with the proxy, the marked request is
/// redirected to its port, accepted on INPUT, and the proxy port is closed to everything else.
fn metadata_rules(m: &mut IptablesModel, proxy: Option<&crate::config::MetadataProxy>) -> Ipt {
    for (family, dst) in [
        (Family::V4, "169.254.169.254/32"),
        (Family::V6, "fe80::a9fe:a9fe/128"),
    ] {
        let matched = format!("-d {dst} -i qr-+ -p tcp -m tcp --dport 80");
        add(
            m,
            family,
            Table::Mangle,
            "PREROUTING",
            &format!("{matched} -j MARK --set-xmark {METADATA_MARK}"),
        )?;
        add(
            m,
            family,
            Table::Filter,
            "scope",
            &format!("-m mark --mark {METADATA_MARK} -j DROP"),
        )?;
        let Some(proxy) = proxy else { continue };
        let port = proxy.port;
        add(
            m,
            family,
            Table::Filter,
            "INPUT",
            &format!("-m mark --mark {METADATA_MARK} -j ACCEPT"),
        )?;
        add(
            m,
            family,
            Table::Filter,
            "INPUT",
            &format!("-p tcp -m tcp --dport {port} -j DROP"),
        )?;
        add(
            m,
            family,
            Table::Nat,
            "PREROUTING",
            &format!("{matched} -j REDIRECT --to-ports {port}"),
        )?;
    }
    Ok(())
}

/// The daemons of a router's `qrouter-` namespace with their config files: radvd when an
/// internal port has an IPv6 subnet (NEUTRON-OPS §2.1; admin-down ports, which Neutron
/// lists, are not ports here), haproxy when the metadata proxy is on (§3.2).
fn router_daemons(
    agent: &crate::config::Agent,
    r: &Router,
) -> Result<BTreeMap<Service, Vec<u8>>, String> {
    use l3agent_daemons::{haproxy, radvd};
    let dir = daemons_dir(&agent.state_path);
    let mut out = BTreeMap::new();
    if let Some(ra) = agent.ra {
        let interfaces: Vec<radvd::RaInterface> = sorted_ports(&r.interfaces)
            .into_iter()
            .filter_map(|p| {
                let subnets: Vec<radvd::RaSubnet> = p
                    .subnets
                    .iter()
                    .filter_map(|s| match s.cidr {
                        IpNet::V6(cidr) => Some(radvd::RaSubnet {
                            cidr,
                            ra_mode: s.ra_mode,
                            dns_nameservers: s
                                .dns_nameservers
                                .iter()
                                .filter_map(|d| match d {
                                    IpAddr::V6(a) => Some(*a),
                                    IpAddr::V4(_) => None,
                                })
                                .collect(),
                        }),
                        IpNet::V4(_) => None,
                    })
                    .collect();
                (!subnets.is_empty()).then(|| radvd::RaInterface {
                    dev: p.dev.clone(),
                    mtu: p.mtu,
                    subnets,
                })
            })
            .collect();
        if !interfaces.is_empty() {
            let conf = radvd::RadvdConf {
                min_interval: ra.min,
                max_interval: ra.max,
                interfaces,
            };
            out.insert(Service::Radvd, radvd::render(&conf).into_bytes());
        }
    }
    if let Some(md) = &agent.metadata {
        let key = Key {
            router: r.id.clone(),
            service: Service::Haproxy,
        };
        let conf = haproxy::HaproxyConf {
            router_id: r.id.clone(),
            user: md.user.clone(),
            group: md.group.clone(),
            pidfile: Supervisor::paths(&dir, &key).pid,
            socket: md.socket.clone(),
            bind_v6: true,
            debug: false,
            port: md.port,
            timeouts: haproxy::Timeouts::default(),
            rate_limit: None,
        };
        let text = haproxy::render(&conf).map_err(|e| format!("metadata proxy: {e}"))?;
        out.insert(Service::Haproxy, text.into_bytes());
    }
    Ok(out)
}

/// conntrackd.conf of an HA router (`agent.ha.conntrackd_enabled`, NEUTRON-OPS §1.9):
/// Neutron's, with the HA port's first IPv4 address, the VRID and the `ha-` device, and the
/// lock file and control socket where the supervisor keeps them
/// (`<state_path>/daemons/<router id>.conntrackd.{lock,ctl}`, not Neutron's
/// `$ha_confs/<rid>/conntrackd.{lock,ctl}`). A control socket path longer than a unix socket
/// path may be fails the router with the reason (config validation refuses such a
/// `state_path` first).
fn conntrackd_conf(
    state_path: &std::path::Path,
    r: &Router,
    ha: &HaRouter,
    options: l3agent_daemons::conntrackd::ConntrackdOptions,
) -> Result<String, String> {
    use l3agent_daemons::conntrackd as c;
    use l3agent_daemons::ConfPath;
    let paths = Supervisor::paths(
        &daemons_dir(state_path),
        &Key::new(r.id.clone(), Service::Conntrackd),
    );
    let path = |p: Option<std::path::PathBuf>| {
        ConfPath::new("agent.state_path", p.unwrap_or_default())
            .map_err(|e| format!("HA: conntrackd: {e}"))
    };
    let conf = c::ConntrackdConf {
        files: c::ConntrackdFiles {
            lockfile: path(paths.lock)?,
            ctl: path(paths.socket)?,
        },
        options,
        ha_ip: ha.address.addr(),
        vrid: ha.vr_id,
        ha_dev: ha.port.dev.clone(),
    };
    conf.validate()
        .map_err(|e| format!("HA: conntrackd: {e}"))?;
    Ok(c::render(&conf))
}

/// The MACs of a DVR router's `rfp-` and `fpr-` ends, derived from the router id: locally
/// administered (0x02 set), unicast (0x01 clear), distinct for the two ends. Compile gives
/// them so that the permanent neighbours between the two ends (D-15) and the IPv6 default
/// route via `fpr-`'s EUI-64 link-local address (NEUTRON-OPS §8.2) are known without asking
/// the kernel; they are the same on every host and across restarts. The derivation (FNV-1a of
/// `rfp`/`fpr`, a zero byte and the id, then the SplitMix64 finaliser; the first six bytes)
/// must never change: it would change every router's link.
pub fn link_macs(id: &RouterId) -> (MacAddr, MacAddr) {
    let rfp = derived_mac("rfp", id);
    let mut fpr = derived_mac("fpr", id);
    if fpr == rfp {
        let mut o = fpr.octets();
        o[5] ^= 1;
        fpr = MacAddr::new(o);
    }
    (rfp, fpr)
}

fn derived_mac(salt: &str, id: &RouterId) -> MacAddr {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in salt.bytes().chain([0]).chain(id.as_str().bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    let b = h.to_be_bytes();
    MacAddr::new([(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]])
}

/// The address-scope marks of one router (NEUTRON-OPS §4, D-41..D-43): "no scope" is mark id
/// 1024, then the router's scope ids (of its ports and of its floating IPs' fixed addresses)
/// in sorted order take 1025, 1026, ...; the mark is `hex(id << 16)/0xffff0000`.
///
/// Neutron hands the ids out in memory in order of first use (B-27), so a restart can give a
/// scope another mark while conntrack keeps the old one in its CONNMARKs. Here the mark of a
/// scope depends only on the router's set of scope ids: stable across restarts and processing
/// order as long as that set does not change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeMarks {
    ids: BTreeMap<String, u32>,
}

impl ScopeMarks {
    /// Neutron's first id, taken by "no scope" (ADDRESS_SCOPE_MARK_ID_MIN).
    pub const NOSCOPE_ID: u32 = 1024;
    /// One past Neutron's last id (ADDRESS_SCOPE_MARK_ID_MAX).
    pub const END_ID: u32 = 2048;

    /// The marks of `r`'s scopes; an error when it has more than the 1023 ids left.
    pub fn of(r: &Router) -> Result<ScopeMarks, String> {
        let ports = r
            .interfaces
            .iter()
            .chain(&r.gw_port)
            .chain(&r.snat_interfaces);
        let scopes: BTreeSet<&str> = ports
            .flat_map(|p| p.address_scopes.values().flatten())
            .map(String::as_str)
            .chain(
                r.fips
                    .iter()
                    .filter_map(|f| f.fixed_ip_address_scope.as_deref()),
            )
            .collect();
        let room = (Self::END_ID - Self::NOSCOPE_ID - 1) as usize;
        if scopes.len() > room {
            return Err(format!(
                "{} address scopes, more than the {room} marks a router has",
                scopes.len()
            ));
        }
        Ok(ScopeMarks {
            ids: scopes
                .into_iter()
                .zip(Self::NOSCOPE_ID + 1..)
                .map(|(s, id)| (s.to_owned(), id))
                .collect(),
        })
    }

    /// The mark id of a scope (`None`: no scope).
    pub fn id(&self, scope: Option<&str>) -> u32 {
        scope
            .and_then(|s| self.ids.get(s).copied())
            .unwrap_or(Self::NOSCOPE_ID)
    }

    /// The mark as Neutron writes it, e.g. `0x4000000/0xffff0000` for "no scope".
    pub fn mark(&self, scope: Option<&str>) -> String {
        format!("{:#x}/{SCOPE_MASK}", self.id(scope) << 16)
    }
}

/// The sysctls every namespace gets (D-03).
pub fn namespace_sysctls() -> [(Sysctl, u32); 6] {
    [
        (Sysctl::PromoteSecondaries(Scope::All), 1),
        (Sysctl::ConntrackTcpBeLiberal, 1),
        (Sysctl::IpForward, 1),
        (Sysctl::ArpIgnore(Scope::All), 1),
        (Sysctl::ArpAnnounce(Scope::All), 2),
        (Sysctl::Ipv6Forwarding(Scope::All), 1),
    ]
}

/// The admin-up distributed routers of a DVR agent.
fn dvr_routers(cfg: &HostConfig) -> impl Iterator<Item = &Router> {
    cfg.routers
        .iter()
        .filter(move |r| r.admin_state_up && r.distributed && cfg.agent.is_dvr())
}

/// Whether a DVR router has its link to the FIP namespace here: a gateway, and this host's
/// agent gateway port on its external network (`connect_rtr_2_fip`).
fn has_fip_link(r: &Router) -> bool {
    r.gw_port.is_some() && r.agent_gateway().is_some()
}

/// The floating IPs a DVR host serves for `r`, by floating address.
fn local_fips<'a>(r: &'a Router, host: &'a str) -> impl Iterator<Item = &'a Fip> + 'a {
    r.fips.iter().filter(move |f| f.is_local(host))
}

/// Neutron's `_check_if_address_scopes_match`: an IPv4-only internal port whose IPv4 scope
/// is one of the gateway's scopes is routed straight to the FIP namespace (the fast path,
/// D-23) instead of through the SNAT node.
fn scopes_match(p: &Port, gw: &Port) -> bool {
    if p.subnets.iter().any(|s| s.cidr.addr().is_ipv6()) {
        return false;
    }
    let Some(scope) = p.scope(4) else {
        return false;
    };
    gw.address_scopes
        .values()
        .any(|s| s.as_deref() == Some(scope))
}

/// The SNAT port (`sg-`) an internal port of a DVR router is redirected to (D-12): the first
/// one with an address in one of the port's subnets (Neutron's
/// `get_snat_port_for_internal_port`), when the router has a gateway and the port is not on the
/// address-scope fast path.
fn snat_port_for<'a>(r: &'a Router, p: &Port) -> Option<&'a Port> {
    let gw = r.gw_port.as_ref()?;
    if scopes_match(p, gw) {
        return None;
    }
    r.snat_interfaces.iter().find(|s| {
        s.ips
            .iter()
            .any(|ip| p.ips.iter().any(|own| own.trunc().contains(&ip.addr())))
    })
}

fn v4_host(a: Ipv4Addr) -> IpNet {
    IpNet::V4(Ipv4Net::from(a))
}

fn any_route(ipv6: bool) -> IpNet {
    if ipv6 {
        IpNet::V6(Ipv6Net::default())
    } else {
        IpNet::V4(Ipv4Net::default())
    }
}

/// A new namespace of `kind` with the D-03 sysctls and `lo`.
fn base_ns(kind: NsKind, owner: Option<RouterId>) -> NsSpec {
    let mut ns = NsSpec::new(kind, owner);
    ns.sysctls.extend(namespace_sysctls());
    ns.devices.insert(
        IfName::new("lo", "lo").expect("a valid literal name"),
        Device {
            kind: DeviceKind::Loopback,
            role: Role::Loopback,
            mtu: None,
            mac: None,
            addresses: BTreeSet::new(),
            floating: BTreeSet::new(),
            vips: false,
        },
    );
    ns
}

/// A router port, with the port's MTU, MAC and fixed IPs (D-07, D-08): a veth whose host end
/// is on its network's bridge (`linuxbridge`), or an OVS internal port on the integration
/// bridge (`openvswitch`).
fn port_device(p: &Port, role: Role) -> Device {
    Device {
        kind: match p.driver {
            InterfaceDriver::Linuxbridge => DeviceKind::Port {
                host_end: p.host_dev.clone(),
                bridge: p.bridge.clone(),
            },
            InterfaceDriver::Openvswitch => DeviceKind::OvsPort {
                bridge: p.bridge.clone(),
                port_id: p.id.clone(),
            },
        },
        role,
        mtu: Some(p.mtu),
        mac: Some(p.mac),
        addresses: p.ips.iter().copied().collect(),
        floating: BTreeSet::new(),
        vips: false,
    }
}

/// The default gateway per family (`false`: IPv4, `true`: IPv6): the last subnet of the port
/// with a gateway of that family. Neutron replaces the default route once per gateway in the
/// port's `subnets` order (`_external_gateway_added`), so the last one is what stays.
fn default_gateways(p: &Port) -> BTreeMap<bool, IpAddr> {
    p.subnets
        .iter()
        .filter_map(|s| s.gateway)
        .map(|g| (g.is_ipv6(), g))
        .collect()
}

/// The routes of an external gateway port in the main table (D-08, D-14, D-21): on-link routes for
/// its extra subnets (IPv4 only when `onlink_v4_only`, as for `fg-`), `<gw> scope link` for a
/// gateway outside its subnet, and, with `defaults`, one default route per family.
fn gateway_routes(p: &Port, onlink_v4_only: bool, defaults: bool) -> Vec<Route> {
    let dev = Some(p.dev.clone());
    let mut out = Vec::new();
    for net in &p.extra_subnets {
        if onlink_v4_only && net.addr().is_ipv6() {
            continue;
        }
        out.push(Route {
            dev: dev.clone(),
            scope_link: true,
            ..Route::to(*net)
        });
    }
    for s in &p.subnets {
        if let Some(g) = s.gateway.filter(|g| !s.cidr.contains(g)) {
            out.push(Route {
                dev: dev.clone(),
                scope_link: true,
                ..Route::to(IpNet::from(g))
            });
        }
    }
    if defaults {
        for (ipv6, g) in default_gateways(p) {
            out.push(Route {
                gateway: Some(g),
                dev: dev.clone(),
                ..Route::to(any_route(ipv6))
            });
        }
    }
    out
}

/// IPv6 on an external gateway device (D-21, NEUTRON-OPS §2.3): forwarding on, and router
/// advertisements accepted while forwarding (`accept_ra=2`) when the port has no IPv6 gateway,
/// else ignored (`0`). Set on every gateway, as Neutron does with IPv6 enabled, whether or not
/// the port has IPv6 addresses.
fn gateway_ipv6_sysctls(gw: &Port) -> [(Sysctl, u32); 2] {
    let has_v6_gateway = default_gateways(gw).contains_key(&true);
    [
        (Sysctl::Ipv6Forwarding(Scope::Dev(gw.dev.clone())), 1),
        (
            Sysctl::AcceptRa(Scope::Dev(gw.dev.clone())),
            if has_v6_gateway { 0 } else { 2 },
        ),
    ]
}

/// A route to `dst` over `hops` (next hop, device): one next hop is `via`, several are one
/// ECMP route with the next hops sorted (NEUTRON-OPS §7; Neutron's order is arbitrary).
fn hop_route(
    dst: IpNet,
    mut hops: Vec<(IpAddr, Option<IfName>)>,
    table: u32,
    proto: Protocol,
) -> Route {
    hops.sort();
    hops.dedup();
    if let [(gateway, dev)] = hops.as_slice() {
        return Route {
            gateway: Some(*gateway),
            dev: dev.clone(),
            table,
            protocol: proto,
            ..Route::to(dst)
        };
    }
    Route {
        table,
        protocol: proto,
        multipath: hops
            .into_iter()
            .map(|(gateway, dev)| NextHop {
                gateway,
                dev,
                weight: 0,
            })
            .collect(),
        ..Route::to(dst)
    }
}

/// Extra routes (D-24) over the devices of `ports`: per destination one route, ECMP when it
/// has several next hops. A next hop's device is the port whose subnet holds it (what the
/// kernel resolves and reads back). Next hops no port reaches are dropped when `reachable_only`
/// (a DVR qrouter, whose external next hops belong to the FIP namespace), else kept without a
/// device (the kernel then says what is wrong).
fn extra_routes(
    routes: &[(IpNet, IpAddr)],
    ports: &[&Port],
    reachable_only: bool,
    table: u32,
    proto: Protocol,
) -> Vec<Route> {
    let mut by_dst: BTreeMap<IpNet, Vec<(IpAddr, Option<IfName>)>> = BTreeMap::new();
    for (dst, hop) in routes {
        let dev = ports.iter().find(|p| p.reaches(hop)).map(|p| p.dev.clone());
        if dev.is_none() && reachable_only {
            continue;
        }
        by_dst.entry(*dst).or_default().push((*hop, dev));
    }
    by_dst
        .into_iter()
        .map(|(dst, hops)| hop_route(dst, hops, table, proto))
        .collect()
}

type Ipt = Result<(), l3agent_iptables::Error>;

fn add(m: &mut IptablesModel, family: Family, table: Table, chain: &str, rule: &str) -> Ipt {
    m.add_rule(family, table, RuleSpec::new(chain, rule))
}

fn add_tagged(m: &mut IptablesModel, table: Table, chain: &str, rule: &str) -> Ipt {
    m.add_rule(
        Family::V4,
        table,
        RuleSpec {
            tag: Some(FIP_TAG),
            ..RuleSpec::new(chain, rule)
        },
    )
}

/// The address-scope chains and rules every router manager gets at construction (D-41,
/// Neutron's `_initialize_address_scope_iptables`).
fn scope_init(m: &mut IptablesModel) -> Ipt {
    use Family::{V4, V6};
    for f in [V4, V6] {
        m.add_chain(f, Table::Mangle, "scope", true)?;
        m.add_chain(f, Table::Filter, "scope", true)?;
    }
    m.add_chain(V4, Table::Mangle, "floatingip", true)?;
    m.add_chain(V4, Table::Mangle, "float-snat", true)?;
    for f in [V4, V6] {
        add(m, f, Table::Filter, "FORWARD", "-j $scope")?;
    }
    let restore = format!(
        "-m connmark ! --mark 0x0/{SCOPE_MASK} -j CONNMARK --restore-mark --nfmask {SCOPE_MASK} \
         --ctmask {SCOPE_MASK}"
    );
    add(m, V4, Table::Mangle, "PREROUTING", "-j $scope")?;
    add(m, V4, Table::Mangle, "PREROUTING", &restore)?;
    add(m, V4, Table::Mangle, "PREROUTING", "-j $floatingip")?;
    let save = format!(
        "-m connmark --mark 0x0/{SCOPE_MASK} -j CONNMARK --save-mark --nfmask {SCOPE_MASK} \
         --ctmask {SCOPE_MASK}"
    );
    add(m, V4, Table::Mangle, "float-snat", &save)?;
    add(m, V6, Table::Mangle, "PREROUTING", "-j $scope")?;
    add(m, V6, Table::Mangle, "PREROUTING", &restore)
}

/// The gateway's SNAT, mark and address-scope routing rules (D-37..D-39, NEUTRON-OPS §4
/// "Gateway"), for a legacy qrouter or a snat- namespace: `_add_snat_rules` after the `snat`
/// chain got its `-j $float-snat` (the model's default rule).
fn gateway_rules(
    m: &mut IptablesModel,
    r: &Router,
    gw: &Port,
    marks: &ScopeMarks,
    random_fully: bool,
) -> Ipt {
    let q = &gw.dev;
    let rf = if random_fully { " --random-fully" } else { "" };
    if r.enable_snat {
        let save = format!(
            "-o {q} -m connmark --mark 0x0/{SCOPE_MASK} -j CONNMARK --save-mark --nfmask \
             {SCOPE_MASK} --ctmask {SCOPE_MASK}"
        );
        add(m, Family::V4, Table::Mangle, "POSTROUTING", &save)?;
        if let Some(scope) = gw.scope(4) {
            let accept = format!(
                "-o {q} -m connmark --mark {} -j ACCEPT",
                marks.mark(Some(scope))
            );
            add(m, Family::V4, Table::Nat, "snat", &accept)?;
        }
    }
    let Some(gip) = r.gateway_ipv4() else {
        return Ok(());
    };
    if r.enable_snat {
        let snat = format!("-o {q} -j SNAT --to-source {gip}{rf}");
        add(m, Family::V4, Table::Nat, "snat", &snat)?;
    }
    let postrouting = format!("! -o {q} -m conntrack ! --ctstate DNAT -j ACCEPT");
    add(m, Family::V4, Table::Nat, "POSTROUTING", &postrouting)?;
    let dnat_snat = format!(
        "-m mark ! --mark {EXT_MARK} -m conntrack --ctstate DNAT -j SNAT --to-source {gip}{rf}"
    );
    add(m, Family::V4, Table::Nat, "snat", &dnat_snat)?;
    let mark = format!("-i {q} -j MARK --set-xmark {EXT_MARK}");
    add(m, Family::V4, Table::Mangle, "mark", &mark)
}

/// A device and the scope marks of the families it has addresses in (Neutron's
/// `_get_port_devicename_scopemark`).
struct ScopedDevice<'a> {
    dev: &'a IfName,
    /// Per family (`false`: IPv4), the mark.
    marks: BTreeMap<bool, String>,
}

fn scoped<'a>(dev: &'a IfName, p: &Port, marks: &ScopeMarks) -> ScopedDevice<'a> {
    ScopedDevice {
        dev,
        marks: p
            .ips
            .iter()
            .map(|ip| {
                let ipv6 = ip.addr().is_ipv6();
                (ipv6, marks.mark(p.scope(if ipv6 { 6 } else { 4 })))
            })
            .collect(),
    }
}

/// The per-device address-scope rules (D-42, `_add_address_scope_mark`): mark what enters a
/// device with its scope, drop what leaves it with another scope; the drop is skipped for the
/// external device `qg` in IPv4 when SNAT is on.
fn scope_rules(
    m: &mut IptablesModel,
    devices: &[ScopedDevice<'_>],
    snat_skips: Option<&IfName>,
) -> Ipt {
    for (ipv6, family) in [(false, Family::V4), (true, Family::V6)] {
        for d in devices {
            let Some(mark) = d.marks.get(&ipv6) else {
                continue;
            };
            let dev = d.dev;
            add(
                m,
                family,
                Table::Mangle,
                "scope",
                &format!("-i {dev} -j MARK --set-xmark {mark}"),
            )?;
            if !ipv6 && snat_skips == Some(dev) {
                continue;
            }
            add(
                m,
                family,
                Table::Filter,
                "scope",
                &format!("-o {dev} -m mark ! --mark {mark} -j DROP"),
            )?;
        }
    }
    Ok(())
}

/// The floating IPs' address-scope rules (D-43, `process_floating_ip_address_scope_rules`):
/// for each floating IP whose fixed address is in another scope than the gateway, mark what
/// goes to it with the fixed address' scope and send what comes from it through `float-snat`,
/// where the devices in the external scope re-mark it. `rfp`: a DVR qrouter's `-i rfp-`.
fn fip_scope_rules(
    m: &mut IptablesModel,
    fips: &[&Fip],
    ext_scope: Option<&str>,
    devices: &[ScopedDevice<'_>],
    marks: &ScopeMarks,
    rfp: Option<&IfName>,
) -> Ipt {
    let crossing: Vec<&&Fip> = fips
        .iter()
        .filter(|f| f.fixed_ip_address_scope.as_deref() != ext_scope)
        .collect();
    if crossing.is_empty() {
        return Ok(());
    }
    let ext_mark = marks.mark(ext_scope);
    for d in devices {
        if d.marks.get(&false) == Some(&ext_mark) {
            let rule = format!("-o {} -j MARK --set-xmark {ext_mark}", d.dev);
            add_tagged(m, Table::Mangle, "float-snat", &rule)?;
        }
    }
    for f in crossing {
        let mark = marks.mark(f.fixed_ip_address_scope.as_deref());
        let iif = rfp.map(|d| format!(" -i {d}")).unwrap_or_default();
        let to = format!("-d {}/32{iif} -j MARK --set-xmark {mark}", f.floating);
        add_tagged(m, Table::Mangle, "floatingip", &to)?;
        let from = format!("-s {}/32 -j $float-snat", f.fixed);
        add_tagged(m, Table::Mangle, "FORWARD", &from)?;
    }
    Ok(())
}

/// The floating IPs' accounting rules (`agent.traffic_accounting`): a `fip-acct` chain,
/// jumped to first from the wrapped `FORWARD` (so it counts before any DROP or ACCEPT), with
/// per floating IP `-d FIXED/32 -i EXT` (ingress) and `-s FIXED/32 -o EXT` (egress) and no
/// target: they count and fall through. `FORWARD` sees destinations after DNAT and sources
/// before SNAT, hence the fixed address; `ext` is the router's external device here (`qg-`,
/// or a DVR qrouter's `rfp-`). Nothing without floating IPs.
fn fip_accounting_rules(m: &mut IptablesModel, fips: &[&Fip], ext: &IfName) -> Ipt {
    if fips.is_empty() {
        return Ok(());
    }
    m.add_chain(Family::V4, Table::Filter, FIP_ACCT_CHAIN, true)?;
    let jump = format!("-j ${FIP_ACCT_CHAIN}");
    m.add_rule(
        Family::V4,
        Table::Filter,
        RuleSpec {
            top: true,
            ..RuleSpec::new("FORWARD", &jump)
        },
    )?;
    for f in fips {
        let ingress = format!("-d {}/32 -i {ext}", f.fixed);
        add_tagged(m, Table::Filter, FIP_ACCT_CHAIN, &ingress)?;
        let egress = format!("-s {}/32 -o {ext}", f.fixed);
        add_tagged(m, Table::Filter, FIP_ACCT_CHAIN, &egress)?;
    }
    Ok(())
}

/// Floating IPs in a stable order (by floating address), so that the dict's order never
/// reorders rules.
fn sorted_fips<'a>(fips: impl Iterator<Item = &'a Fip>) -> Vec<&'a Fip> {
    let mut v: Vec<&Fip> = fips.collect();
    v.sort_by_key(|f| f.floating);
    v
}

/// Internal ports in a stable order (by device name) for the per-device iptables rules.
fn sorted_ports(ports: &[Port]) -> Vec<&Port> {
    let mut v: Vec<&Port> = ports.iter().collect();
    v.sort_by(|a, b| a.dev.cmp(&b.dev));
    v
}

/// One DVR router's part of its FIP namespace (D-15, D-16, D-23, D-24, D-30).
struct FipPart {
    devices: BTreeMap<IfName, Device>,
    routes: BTreeSet<Route>,
    rules: BTreeSet<Rule>,
    neighbours: BTreeMap<(IfName, IpAddr), MacAddr>,
}

impl FipPart {
    fn merge_into(self, ns: &mut NsSpec) {
        ns.devices.extend(self.devices);
        ns.routes.extend(self.routes);
        ns.rules.extend(self.rules);
        ns.neighbours.extend(self.neighbours);
    }
}

/// What one DVR router compiles to.
struct DvrParts {
    qrouter: NsSpec,
    snat: Option<NsSpec>,
    fip: Option<(NetworkId, FipPart)>,
}

/// The shared `fip-<external network>` namespace without any router's part (D-04, D-13,
/// D-14, D-40): the agent gateway port `fg-` with proxy ARP, its on-link routes (IPv4, as
/// Neutron's `set_onlink_routes(is_ipv6=False)`) and `<gw> scope link` routes (default routes
/// live only in the per-router tables), non-local bind, and no connection tracking.
fn fip_namespace(fg: &Port) -> NsSpec {
    let mut ns = base_ns(NsKind::Fip, None);
    ns.sysctls.extend([
        (Sysctl::IpNonlocalBind, 1),
        (Sysctl::ProxyArp(Scope::Dev(fg.dev.clone())), 1),
        (Sysctl::ProxyDelay(fg.dev.clone()), 1),
    ]);
    ns.devices
        .insert(fg.dev.clone(), port_device(fg, Role::FipGateway));
    ns.routes.extend(gateway_routes(fg, true, false));
    ns.iptables
        .add_rule(
            Family::V4,
            Table::Raw,
            RuleSpec::new("PREROUTING", "-j CT --notrack"),
        )
        .expect("a valid literal rule");
    ns
}

struct Cx<'a> {
    cfg: &'a HostConfig,
    alloc: &'a Allocations,
    facts: &'a HostFacts,
    hints: &'a HintSource<'a>,
}

impl Cx<'_> {
    /// [`base_ns`] for the namespace `name`, its model resolving rules with its hints.
    fn base_ns(&self, kind: NsKind, owner: Option<RouterId>, name: &NetnsName) -> NsSpec {
        let mut ns = base_ns(kind, owner);
        if let Some(h) = (self.hints)(name) {
            ns.iptables.use_hints(h);
        }
        ns
    }

    fn host(&self) -> &str {
        &self.cfg.agent.host
    }

    /// A legacy router (Neutron's `LegacyRouter`, D-10, D-21, D-22, D-24, D-36..D-38, D-41..D-43).
    fn legacy(&self, r: &Router) -> Result<NsSpec, String> {
        let marks = ScopeMarks::of(r)?;
        let mut ns = self.base_ns(NsKind::Router, Some(r.id.clone()), &names::router_ns(&r.id));
        for p in &r.interfaces {
            ns.devices
                .insert(p.dev.clone(), port_device(p, Role::Internal));
        }
        let fips = sorted_fips(r.fips.iter());
        let m = &mut ns.iptables;
        scope_init(m).map_err(rule_error)?;
        metadata_rules(m, self.cfg.agent.metadata.as_ref()).map_err(rule_error)?;
        let mut scoped_devs: Vec<ScopedDevice<'_>> = sorted_ports(&r.interfaces)
            .into_iter()
            .map(|p| scoped(&p.dev, p, &marks))
            .collect();
        if let Some(gw) = &r.gw_port {
            let mut qg = port_device(gw, Role::Gateway);
            for f in &fips {
                qg.addresses.insert(v4_host(f.floating));
                qg.floating.insert(v4_host(f.floating));
            }
            ns.devices.insert(gw.dev.clone(), qg);
            ns.routes.extend(gateway_routes(gw, false, true));
            ns.sysctls.extend(gateway_ipv6_sysctls(gw));
            gateway_rules(m, r, gw, &marks, self.facts.random_fully).map_err(rule_error)?;
            let rf = if self.facts.random_fully {
                " --random-fully"
            } else {
                ""
            };
            for f in &fips {
                let dnat = format!("-d {}/32 -j DNAT --to-destination {}", f.floating, f.fixed);
                add_tagged(m, Table::Nat, "PREROUTING", &dnat).map_err(rule_error)?;
                add_tagged(m, Table::Nat, "OUTPUT", &dnat).map_err(rule_error)?;
                let snat = format!("-s {}/32 -j SNAT --to-source {}{rf}", f.fixed, f.floating);
                add_tagged(m, Table::Nat, "float-snat", &snat).map_err(rule_error)?;
            }
            if self.cfg.agent.traffic_accounting {
                fip_accounting_rules(m, &fips, &gw.dev).map_err(rule_error)?;
            }
            scoped_devs.push(scoped(&gw.dev, gw, &marks));
        }
        let snat_skips = r.gw_port.as_ref().filter(|_| r.enable_snat).map(|g| &g.dev);
        scope_rules(m, &scoped_devs, snat_skips).map_err(rule_error)?;
        let ext_scope = r.gw_port.as_ref().and_then(|g| g.scope(4));
        fip_scope_rules(m, &fips, ext_scope, &scoped_devs, &marks, None).map_err(rule_error)?;
        let ports: Vec<&Port> = r.interfaces.iter().chain(&r.gw_port).collect();
        ns.routes.extend(extra_routes(
            &r.routes,
            &ports,
            false,
            l3agent_rtnl::route::MAIN_TABLE,
            Protocol::Static,
        ));
        ns.daemons = router_daemons(&self.cfg.agent, r)?;
        Ok(ns)
    }

    /// An HA router (Neutron's `HaRouter`, NEUTRON-OPS §1): the legacy router's namespace
    /// where keepalived holds the ports' addresses (qr-/qg- fixed IPs, floating IPs and the
    /// ports' EUI-64 link-local addresses as excluded VIPs) and the main table's routes
    /// (virtual routes) on the master; the `ha-` port with its own address; IPv6 forwarding,
    /// the gateway's IPv6 sysctls, radvd and the metadata proxy on the master only.
    fn ha(&self, r: &Router, ha: &HaRouter, mut ns: NsSpec) -> Result<NsSpec, String> {
        use l3agent_daemons::keepalived as k;
        let settings = &self.cfg.agent.ha;
        let ha_dev = ha.port.dev.clone();
        // §1.2: no IPv6 forwarding (MLD) from backups, addresses that are not (yet) here
        // can be bound, and no kernel link-local addresses (keepalived's VIPs instead).
        ns.sysctls.remove(&Sysctl::Ipv6Forwarding(Scope::All));
        ns.sysctls.insert(Sysctl::IpNonlocalBind, 1);
        ns.sysctls.insert(Sysctl::AddrGenMode(Scope::All), 1);
        let mut master_sysctls = BTreeMap::from([(Sysctl::Ipv6Forwarding(Scope::All), 1)]);
        let mut backup_sysctls = BTreeMap::from([(Sysctl::Ipv6Forwarding(Scope::All), 0)]);
        if let Some(gw) = &r.gw_port {
            for (key, value) in gateway_ipv6_sysctls(gw) {
                ns.sysctls.remove(&key);
                master_sysctls.insert(key.clone(), value);
                backup_sysctls.insert(key, 0);
            }
        }
        let mut excluded = Vec::new();
        for (name, d) in ns.devices.iter_mut() {
            if !matches!(d.role, Role::Internal | Role::Gateway) {
                continue;
            }
            for a in &d.addresses {
                excluded.push(k::ExcludedVip {
                    cidr: *a,
                    dev: name.clone(),
                    scope_link: false,
                });
            }
            if let Some(mac) = d.mac {
                excluded.push(k::ExcludedVip {
                    cidr: IpNet::V6(Ipv6Net::new(mac.ipv6_link_local(), 64).expect("64")),
                    dev: name.clone(),
                    scope_link: true,
                });
            }
            d.addresses.clear();
            d.floating.clear();
            d.vips = true;
        }
        ns.devices
            .insert(ha_dev.clone(), port_device(&ha.port, Role::Ha));
        // The main table's routes become keepalived's virtual routes, in Neutron's kinds.
        ns.routes
            .retain(|rt| rt.table != l3agent_rtnl::route::MAIN_TABLE);
        let mut routes = Vec::new();
        if let Some(gw) = &r.gw_port {
            for sub in &gw.subnets {
                if let Some(g) = sub.gateway.filter(|g| !sub.cidr.contains(g)) {
                    routes.push(k::VirtualRoute::OnLinkGateway {
                        gateway: g,
                        dev: gw.dev.clone(),
                    });
                }
            }
            for g in default_gateways(gw).into_values() {
                routes.push(k::VirtualRoute::Default {
                    gateway: g,
                    dev: gw.dev.clone(),
                });
            }
            for cidr in &gw.extra_subnets {
                routes.push(k::VirtualRoute::ExtraSubnet {
                    cidr: *cidr,
                    dev: gw.dev.clone(),
                });
            }
        }
        // keepalived has no multipath route: of several next hops of one destination, the
        // lowest is used (Neutron writes one line per next hop, which keepalived does not
        // define either; NEUTRON-OPS §1.11).
        let mut extra: BTreeMap<IpNet, IpAddr> = BTreeMap::new();
        for (dst, hop) in &r.routes {
            let e = extra.entry(*dst).or_insert(*hop);
            *e = (*e).min(*hop);
        }
        for (destination, nexthop) in extra {
            routes.push(k::VirtualRoute::Extra {
                destination,
                nexthop,
            });
        }
        let conf = k::KeepalivedConf {
            vrid: ha.vr_id,
            interface: ha_dev.clone(),
            priority: k::HA_DEFAULT_PRIORITY,
            advert_int: settings.advert_int,
            auth: settings.auth.clone(),
            primary_vip: k::primary_vip(ha.vr_id, ha.address.trunc())
                .map_err(|e| format!("HA: {e}"))?,
            excluded_vips: excluded,
            routes,
            // keepalived >= 2.0.3 (install-deps.sh installs 2.2).
            no_track: true,
            health_check: None,
        };
        conf.validate().map_err(|e| format!("HA: {e}"))?;
        let vip = IpNet::V4(conf.primary_vip);
        ns.daemons
            .insert(Service::Keepalived, k::render(&conf).into_bytes());
        if let Some(options) = settings.conntrackd {
            ns.daemons.insert(
                Service::Conntrackd,
                conntrackd_conf(&self.cfg.agent.state_path, r, ha, options)?.into_bytes(),
            );
        }
        ns.ha = Some(crate::spec::HaSpec {
            dev: ha_dev,
            vip,
            master_sysctls,
            backup_sysctls,
            master_only: [Service::Radvd, Service::Haproxy].into(),
        });
        Ok(ns)
    }

    /// A distributed router on this DVR host (Neutron's `DvrLocalRouter`/`DvrEdgeRouter`).
    fn dvr(&self, r: &Router) -> Result<DvrParts, String> {
        let marks = ScopeMarks::of(r)?;
        let qrouter_name = names::router_ns(&r.id);
        let mut ns = self.base_ns(NsKind::Router, Some(r.id.clone()), &qrouter_name);
        // `external_gateway_added` sets it with a gateway; l3agent always does (no redirects
        // from a router whose neighbours are on the same bridge either way).
        ns.sysctls.insert(Sysctl::SendRedirects(Scope::All), 0);
        for p in &r.interfaces {
            ns.devices
                .insert(p.dev.clone(), port_device(p, Role::Internal));
            // The tenant ports' addresses in the port's subnets (D-11, NEUTRON-OPS §8.1:
            // `get_ports_by_subnet`, `add_arp_entry`), then the SNAT ports' (`_set_subnet_arp_info`
            // / `external_gateway_added`), as permanent neighbours.
            for ((subnet, ip), mac) in &r.arp_table {
                if p.subnets
                    .iter()
                    .any(|s| &s.id == subnet && s.cidr.contains(ip))
                {
                    ns.neighbours.insert((p.dev.clone(), *ip), *mac);
                }
            }
            for s in &r.snat_interfaces {
                for ip in &s.ips {
                    if p.subnets.iter().any(|sub| sub.cidr.contains(&ip.addr())) {
                        ns.neighbours.insert((p.dev.clone(), ip.addr()), s.mac);
                    }
                }
            }
        }
        let m = &mut ns.iptables;
        scope_init(m).map_err(rule_error)?;
        metadata_rules(m, self.cfg.agent.metadata.as_ref()).map_err(rule_error)?;
        // `_handle_router_snat_rules` empties `snat` and only puts `-j $float-snat` back with
        // a link and floating IPs.
        m.empty_chain(Family::V4, Table::Nat, "snat", true)
            .map_err(rule_error)?;
        let mut scoped_devs: Vec<ScopedDevice<'_>> = sorted_ports(&r.interfaces)
            .into_iter()
            .map(|p| scoped(&p.dev, p, &marks))
            .collect();
        let fips = sorted_fips(local_fips(r, self.host()));
        let mut fip_part = None;
        let rfp = names::device("rfp-", r.id.as_str());
        let fpr = names::device("fpr-", r.id.as_str());
        if let (Some(gw), Some(fg), true) = (&r.gw_port, r.agent_gateway(), has_fip_link(r)) {
            let Some(&ll) = self.alloc.link_local.get(&r.id) else {
                return Err(format!(
                    "no link-local /31 is allocated for its {rfp} <-> {fpr} link"
                ));
            };
            let fip_name = names::fip_ns(&fg.network_id);
            let (rfp_ip, fpr_ip) = LinkLocalPool::pair(ll);
            let (rfp_mac, fpr_mac) = link_macs(&r.id);
            // qrouter side of the rtr <-> fip link (D-15): the rfp- end, its neighbour, table
            // 16 and the IPv6 default route via fpr-'s link-local address (NEUTRON-OPS §8.2).
            ns.devices.insert(
                rfp.clone(),
                link_end(
                    (&fpr, &fip_name),
                    false,
                    Role::RouterLink,
                    gw.mtu,
                    rfp_mac,
                    rfp_ip,
                ),
            );
            ns.neighbours
                .insert((rfp.clone(), IpAddr::V4(fpr_ip)), fpr_mac);
            ns.routes.insert(Route {
                gateway: Some(IpAddr::V4(fpr_ip)),
                dev: Some(rfp.clone()),
                table: FIP_TABLE,
                ..Route::to(any_route(false))
            });
            ns.routes.insert(Route {
                gateway: Some(IpAddr::V6(fpr_mac.ipv6_link_local())),
                dev: Some(rfp.clone()),
                ..Route::to(any_route(true))
            });
            // Per floating IP served here: its rule at its persisted priority (D-16).
            for f in &fips {
                let Some(&prio) = self.alloc.fip_priorities.get(&f.floating) else {
                    return Err(format!(
                        "no rule priority is allocated for floating IP {}",
                        f.floating
                    ));
                };
                ns.rules.insert(Rule {
                    ipv6: false,
                    from: Some(v4_host(f.fixed)),
                    to: None,
                    iif: None,
                    table: FIP_TABLE,
                    priority: prio,
                });
            }
            // NAT of the floating IPs (D-33..D-35).
            let rf = if self.facts.random_fully {
                " --random-fully"
            } else {
                ""
            };
            if !fips.is_empty() {
                add(m, Family::V4, Table::Nat, "snat", "-j $float-snat").map_err(rule_error)?;
                let accept = format!("! -o {rfp} -m conntrack ! --ctstate DNAT -j ACCEPT");
                add(m, Family::V4, Table::Nat, "POSTROUTING", &accept).map_err(rule_error)?;
            }
            for f in &fips {
                let dnat = format!(
                    "-d {}/32 -i {rfp} -j DNAT --to-destination {}",
                    f.floating, f.fixed
                );
                add_tagged(m, Table::Nat, "PREROUTING", &dnat).map_err(rule_error)?;
                let snat = format!("-s {}/32 -j SNAT --to-source {}{rf}", f.fixed, f.floating);
                add_tagged(m, Table::Nat, "float-snat", &snat).map_err(rule_error)?;
            }
            if self.cfg.agent.traffic_accounting {
                fip_accounting_rules(m, &fips, &rfp).map_err(rule_error)?;
            }
            // The fip- side: the fpr- end (the fip namespace makes the pair), its neighbour,
            // `iif fpr- lookup T priority T` with T the fpr address as an integer and table T's
            // default route via the external gateway (D-15, D-30), the floating IPs' /32
            // routes (D-16), the fast path routes (D-23) and the extra routes whose next hop is
            // on the external network, in table T with `proto boot` (D-24).
            let t = u32::from(fpr_ip);
            let mut part = FipPart {
                devices: BTreeMap::new(),
                routes: BTreeSet::new(),
                rules: BTreeSet::new(),
                neighbours: BTreeMap::new(),
            };
            part.devices.insert(
                fpr.clone(),
                link_end(
                    (&rfp, &qrouter_name),
                    true,
                    Role::FipLink,
                    gw.mtu,
                    fpr_mac,
                    fpr_ip,
                ),
            );
            part.neighbours
                .insert((fpr.clone(), IpAddr::V4(rfp_ip)), rfp_mac);
            part.rules.insert(Rule {
                ipv6: false,
                from: None,
                to: None,
                iif: Some(fpr.clone()),
                table: t,
                priority: t,
            });
            for (ipv6, g) in default_gateways(fg) {
                part.routes.insert(Route {
                    gateway: Some(g),
                    dev: Some(fg.dev.clone()),
                    table: t,
                    ..Route::to(any_route(ipv6))
                });
            }
            for f in &fips {
                part.routes.insert(Route {
                    gateway: Some(IpAddr::V4(rfp_ip)),
                    dev: Some(fpr.clone()),
                    ..Route::to(v4_host(f.floating))
                });
            }
            for p in r.interfaces.iter().filter(|p| scopes_match(p, gw)) {
                for s in &p.subnets {
                    part.routes.insert(Route {
                        gateway: Some(IpAddr::V4(rfp_ip)),
                        dev: Some(fpr.clone()),
                        ..Route::to(s.cidr)
                    });
                }
            }
            let external: Vec<(IpNet, IpAddr)> = r
                .routes
                .iter()
                .filter(|(_, hop)| fg.subnets.iter().any(|s| s.cidr.contains(hop)))
                .copied()
                .collect();
            part.routes
                .extend(extra_routes(&external, &[fg], true, t, Protocol::Boot));
            fip_part = Some((fg.network_id.clone(), part));
            // The external device of a DVR qrouter is rfp-, with the gateway port's scopes.
            scoped_devs.push(scoped(&rfp, gw, &marks));
        }
        if let Some(gw) = &r.gw_port {
            // The address-scope fast path (D-23): the port's subnets go straight to table 16.
            for p in r.interfaces.iter().filter(|p| scopes_match(p, gw)) {
                for s in &p.subnets {
                    ns.rules.insert(Rule {
                        ipv6: false,
                        from: Some(s.cidr),
                        to: None,
                        iif: None,
                        table: FIP_TABLE,
                        priority: FAST_PATH_PRIORITY,
                    });
                }
            }
        }
        // SNAT redirect (D-12, D-29): per internal port with a SNAT port, table T (allocated,
        // also the rules' priority) with the default route via the SNAT port's address of each
        // family, and a rule from each of the port's subnets.
        for p in &r.interfaces {
            let Some(sg) = snat_port_for(r, p) else {
                continue;
            };
            let Some(&t) = self.alloc.snat_tables.get(&(r.id.clone(), p.id.clone())) else {
                return Err(format!(
                    "no SNAT redirect table is allocated for port {}",
                    p.id
                ));
            };
            let mut redirected = false;
            for ipv6 in [false, true] {
                let own: Vec<&IpNet> = p
                    .ips
                    .iter()
                    .filter(|n| n.addr().is_ipv6() == ipv6)
                    .collect();
                let family_ips = sg.ips.iter().filter(|n| n.addr().is_ipv6() == ipv6);
                // The SNAT port's address in one of the port's subnets, else its first of the
                // family (Neutron pairs them by version only).
                let via = family_ips
                    .clone()
                    .find(|s| own.iter().any(|o| o.trunc().contains(&s.addr())))
                    .or_else(|| family_ips.clone().next());
                let (Some(via), false) = (via, own.is_empty()) else {
                    continue;
                };
                ns.routes.insert(Route {
                    gateway: Some(via.addr()),
                    dev: Some(p.dev.clone()),
                    table: t,
                    ..Route::to(any_route(ipv6))
                });
                for o in own {
                    ns.rules.insert(Rule {
                        ipv6,
                        from: Some(o.trunc()),
                        to: None,
                        iif: None,
                        table: t,
                        priority: t,
                    });
                }
                redirected = true;
            }
            if redirected {
                ns.sysctls
                    .insert(Sysctl::SendRedirects(Scope::Dev(p.dev.clone())), 0);
            }
        }
        let m = &mut ns.iptables;
        let rfp_present = fip_part.is_some();
        // In a DVR qrouter the external device Neutron compares with is qg-, which is not
        // there: the IPv4 drop rule of rfp- is never skipped.
        scope_rules(m, &scoped_devs, None).map_err(rule_error)?;
        if rfp_present {
            let ext_scope = r.gw_port.as_ref().and_then(|g| g.scope(4));
            fip_scope_rules(m, &fips, ext_scope, &scoped_devs, &marks, Some(&rfp))
                .map_err(rule_error)?;
        }
        let internal: Vec<&Port> = r.interfaces.iter().collect();
        ns.routes.extend(extra_routes(
            &r.routes,
            &internal,
            true,
            l3agent_rtnl::route::MAIN_TABLE,
            Protocol::Static,
        ));
        let snat = self.snat_namespace(r, &marks)?;
        ns.daemons = router_daemons(&self.cfg.agent, r)?;
        Ok(DvrParts {
            qrouter: ns,
            snat,
            fip: fip_part,
        })
    }

    /// The `snat-` namespace (D-05, D-19, `DvrEdgeRouter`), only on the `dvr_snat` host that
    /// is the router's `gw_port_host` and only with a gateway: the `sg-` ports, the `qg-`
    /// gateway with its routes and IPv6 sysctls, the extra routes, and the SNAT and
    /// address-scope rules.
    fn snat_namespace(&self, r: &Router, marks: &ScopeMarks) -> Result<Option<NsSpec>, String> {
        let here = self.cfg.agent.mode == AgentMode::DvrSnat
            && r.gw_port_host.as_deref() == Some(self.host());
        let (Some(gw), true) = (&r.gw_port, here) else {
            return Ok(None);
        };
        let mut ns = self.base_ns(NsKind::Snat, Some(r.id.clone()), &names::snat_ns(&r.id));
        ns.sysctls
            .extend([(Sysctl::IpNonlocalBind, 1), (Sysctl::ConntrackTcpLoose, 0)]);
        for p in &r.snat_interfaces {
            ns.devices.insert(p.dev.clone(), port_device(p, Role::Snat));
        }
        ns.devices
            .insert(gw.dev.clone(), port_device(gw, Role::Gateway));
        ns.routes.extend(gateway_routes(gw, false, true));
        ns.sysctls.extend(gateway_ipv6_sysctls(gw));
        let m = &mut ns.iptables;
        scope_init(m).map_err(rule_error)?;
        gateway_rules(m, r, gw, marks, self.facts.random_fully).map_err(rule_error)?;
        let mut scoped_devs: Vec<ScopedDevice<'_>> = sorted_ports(&r.snat_interfaces)
            .into_iter()
            .map(|p| scoped(&p.dev, p, marks))
            .collect();
        scoped_devs.push(scoped(&gw.dev, gw, marks));
        let snat_skips = Some(&gw.dev).filter(|_| r.enable_snat);
        scope_rules(m, &scoped_devs, snat_skips).map_err(rule_error)?;
        let ports: Vec<&Port> = r.snat_interfaces.iter().chain([gw]).collect();
        ns.routes.extend(extra_routes(
            &r.routes,
            &ports,
            false,
            l3agent_rtnl::route::MAIN_TABLE,
            Protocol::Static,
        ));
        Ok(Some(ns))
    }
}

fn rule_error(e: l3agent_iptables::Error) -> String {
    format!("an iptables rule was refused: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigDoc;
    use serde_json::{json, Value};

    const LEGACY_ID: &str = "87c7c2ae-d0ba-4691-820c-8053abf50b8d";
    const DVR_ID: &str = "fb221852-b23c-407e-ba26-a68b25803e49";
    const EXT_NET: &str = "11272de9-8a18-4392-8618-d07b6ab565e3";

    fn legacy_dict() -> Value {
        serde_json::from_str(include_str!("../tests/data/neutron-router-legacy.json")).unwrap()
    }

    fn dvr_dict() -> Value {
        serde_json::from_str(include_str!("../tests/data/neutron-router-dvr.json")).unwrap()
    }

    fn config(mode: &str, routers: Vec<Value>) -> HostConfig {
        let doc = json!({
            "agent": {
                "mode": mode, "host": "host-a", "state_path": "/var/lib/l3agent",
                "bridges": {
                    "90e4912c-0eb8-4be4-a793-e6a3bba6ae8b": "br-t1",
                    "c6910e18-fb1f-4988-9af4-211a8c2e2926": "br-t2",
                    "65566f91-133a-44ff-87f5-ecffc1193d3d": "br-ex",
                    "740cd353-7ee8-49e2-96f6-17ed0dc7b3da": "br-d1",
                    "d8282fc8-37e4-43a7-801d-8d2c91dbbb98": "br-d2",
                    EXT_NET: "br-dex"
                }
            },
            "routers": routers,
        });
        serde_json::from_value::<ConfigDoc>(doc)
            .unwrap()
            .validate()
            .unwrap_or_else(|e| panic!("{e:#?}"))
    }

    /// The lowest free values for what `cfg` needs.
    fn alloc_for(cfg: &HostConfig) -> Allocations {
        let n = needs(cfg);
        Allocations {
            link_local: n.link_local.into_iter().zip(0..).collect(),
            fip_priorities: n.fip_priorities.into_iter().zip(32768..).collect(),
            snat_tables: n.snat_tables.into_iter().zip(100_000..).collect(),
        }
    }

    fn build(cfg: &HostConfig) -> HostSpec {
        compile(cfg, &alloc_for(cfg), &HostFacts::default())
    }

    fn rid(s: &str) -> RouterId {
        RouterId::new("id", s).unwrap()
    }

    fn ns<'a>(spec: &'a HostSpec, name: &str) -> &'a NsSpec {
        let n = NetnsName::new("ns", name).unwrap();
        spec.namespaces
            .get(&n)
            .unwrap_or_else(|| panic!("no {name} in {:?}", spec.namespaces.keys()))
    }

    fn qrouter<'a>(spec: &'a HostSpec, id: &str) -> &'a NsSpec {
        ns(spec, &format!("qrouter-{id}"))
    }

    fn dev(s: &str) -> IfName {
        IfName::new("dev", s).unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn rules(ns: &NsSpec, family: Family, table: Table, chain: &str) -> Vec<String> {
        ns.iptables
            .rules(family, table, chain, true)
            .unwrap_or_default()
    }

    fn defaults(ns: &NsSpec, ipv6: bool) -> Vec<&Route> {
        ns.routes
            .iter()
            .filter(|r| r.dst == any_route(ipv6) && r.table == l3agent_rtnl::route::MAIN_TABLE)
            .collect()
    }

    #[test]
    fn same_destination_extra_routes_are_one_ecmp_route_with_sorted_next_hops() {
        let mut d = legacy_dict();
        d["routes"] = json!([
            {"destination": "100.64.8.0/24", "nexthop": "203.0.113.7"},
            {"destination": "100.64.9.0/24", "nexthop": "192.0.2.20"},
            {"destination": "100.64.8.0/24", "nexthop": "198.51.100.5"},
            {"destination": "100.64.8.0/24", "nexthop": "203.0.113.5"},
        ]);
        let spec = build(&config("legacy", vec![d.clone()]));
        let q = qrouter(&spec, LEGACY_ID);
        let to =
            |dst: &str| -> Vec<&Route> { q.routes.iter().filter(|r| r.dst == net(dst)).collect() };
        let ecmp = to("100.64.8.0/24");
        assert_eq!(ecmp.len(), 1, "{ecmp:?}");
        assert_eq!(ecmp[0].gateway, None);
        assert_eq!(ecmp[0].dev, None);
        assert_eq!(ecmp[0].protocol, Protocol::Static);
        let hops: Vec<(IpAddr, Option<IfName>)> = ecmp[0]
            .multipath
            .iter()
            .map(|h| (h.gateway, h.dev.clone()))
            .collect();
        assert_eq!(
            hops,
            vec![
                (ip("198.51.100.5"), Some(dev("qr-fa4bdea8-84"))),
                (ip("203.0.113.5"), Some(dev("qg-184a6791-c4"))),
                (ip("203.0.113.7"), Some(dev("qg-184a6791-c4"))),
            ]
        );
        let single = to("100.64.9.0/24");
        assert_eq!(single.len(), 1);
        assert_eq!(single[0].gateway, Some(ip("192.0.2.20")));
        assert_eq!(single[0].dev, Some(dev("qr-081ed401-2a")));
        assert!(single[0].multipath.is_empty());
        // The dict's order does not matter.
        let mut reversed = d;
        let list = reversed["routes"].as_array().unwrap().clone();
        reversed["routes"] = Value::Array(list.into_iter().rev().collect());
        let again = build(&config("legacy", vec![reversed]));
        assert_eq!(qrouter(&again, LEGACY_ID).routes, q.routes);
    }

    #[test]
    fn two_ipv4_gateway_subnets_give_one_default_route_via_the_last() {
        let mut d = legacy_dict();
        d["gw_port"]["subnets"] = json!([
            {"id": "e77d4b33-0d8a-4da1-97dd-e957d6627bf2", "cidr": "203.0.113.0/24", "gateway_ip": "203.0.113.1"},
            {"id": "a0000000-0000-0000-0000-000000000001", "cidr": "100.64.0.0/24", "gateway_ip": "100.64.0.1"},
        ]);
        d["gw_port"]["fixed_ips"] = json!([
            {"ip_address": "203.0.113.4", "prefixlen": 24, "subnet_id": "e77d4b33-0d8a-4da1-97dd-e957d6627bf2"},
            {"ip_address": "100.64.0.4", "prefixlen": 24, "subnet_id": "a0000000-0000-0000-0000-000000000001"},
        ]);
        let cfg = config("legacy", vec![d.clone()]);
        let spec = build(&cfg);
        let q = qrouter(&spec, LEGACY_ID);
        let v4 = defaults(q, false);
        assert_eq!(v4.len(), 1, "{v4:?}");
        assert_eq!(v4[0].gateway, Some(ip("100.64.0.1")));
        assert_eq!(v4[0].dev, Some(dev("qg-184a6791-c4")));
        // Stable: the same on every compile; SNAT still to the first IPv4 address (D-37).
        assert_eq!(build(&cfg).namespaces[&q_name()].routes, q.routes);
        assert!(rules(q, Family::V4, Table::Nat, "snat")
            .contains(&"-o qg-184a6791-c4 -j SNAT --to-source 203.0.113.4".to_owned()));
        // The other order of the subnets picks the other gateway, as Neutron's replaces do.
        let list = d["gw_port"]["subnets"].as_array().unwrap().clone();
        d["gw_port"]["subnets"] = Value::Array(list.into_iter().rev().collect());
        let spec = build(&config("legacy", vec![d]));
        let v4 = defaults(qrouter(&spec, LEGACY_ID), false);
        assert_eq!(v4.len(), 1);
        assert_eq!(v4[0].gateway, Some(ip("203.0.113.1")));
    }

    fn q_name() -> NetnsName {
        names::router_ns(&rid(LEGACY_ID))
    }

    #[test]
    fn accept_ra_is_2_without_an_ipv6_gateway_and_0_with_one() {
        let qg = dev("qg-184a6791-c4");
        let accept_ra = |spec: &HostSpec| {
            qrouter(spec, LEGACY_ID).sysctls[&Sysctl::AcceptRa(Scope::Dev(qg.clone()))]
        };
        let spec = build(&config("legacy", vec![legacy_dict()]));
        assert_eq!(accept_ra(&spec), 2);
        let q = qrouter(&spec, LEGACY_ID);
        assert_eq!(
            q.sysctls[&Sysctl::Ipv6Forwarding(Scope::Dev(qg.clone()))],
            1
        );
        assert!(defaults(q, true).is_empty());

        let mut d = legacy_dict();
        d["gw_port"]["subnets"]
            .as_array_mut()
            .unwrap()
            .push(json!({"id": "b0000000-0000-0000-0000-000000000006", "cidr": "2001:db8::/64", "gateway_ip": "2001:db8::1"}));
        d["gw_port"]["fixed_ips"]
            .as_array_mut()
            .unwrap()
            .push(json!({"ip_address": "2001:db8::4", "prefixlen": 64, "subnet_id": "b0000000-0000-0000-0000-000000000006"}));
        let spec = build(&config("legacy", vec![d.clone()]));
        assert_eq!(accept_ra(&spec), 0);
        let v6 = defaults(qrouter(&spec, LEGACY_ID), true);
        assert_eq!(v6.len(), 1);
        assert_eq!(v6[0].gateway, Some(ip("2001:db8::1")));

        // An IPv6 subnet without a gateway: router advertisements give the default route.
        d["gw_port"]["subnets"][1]["gateway_ip"] = Value::Null;
        let spec = build(&config("legacy", vec![d]));
        assert_eq!(accept_ra(&spec), 2);
        assert!(defaults(qrouter(&spec, LEGACY_ID), true).is_empty());
    }

    #[test]
    fn without_address_scopes_every_device_has_the_noscope_mark() {
        let cfg = config("legacy", vec![legacy_dict()]);
        let marks = ScopeMarks::of(&cfg.routers[0]).unwrap();
        assert_eq!(marks.mark(None), "0x4000000/0xffff0000");
        let spec = build(&cfg);
        let q = qrouter(&spec, LEGACY_ID);
        assert_eq!(
            rules(q, Family::V4, Table::Mangle, "scope"),
            vec![
                "-i qr-081ed401-2a -j MARK --set-xmark 0x4000000/0xffff0000",
                "-i qr-fa4bdea8-84 -j MARK --set-xmark 0x4000000/0xffff0000",
                "-i qg-184a6791-c4 -j MARK --set-xmark 0x4000000/0xffff0000",
            ]
        );
        // SNAT is on: no drop on the gateway in IPv4. The metadata DROP stays first (Neutron
        // loses it at the first `process()`, NEUTRON-OPS §3.5).
        assert_eq!(
            rules(q, Family::V4, Table::Filter, "scope"),
            vec![
                "-m mark --mark 0x1/0xffff -j DROP",
                "-o qr-081ed401-2a -m mark ! --mark 0x4000000/0xffff0000 -j DROP",
                "-o qr-fa4bdea8-84 -m mark ! --mark 0x4000000/0xffff0000 -j DROP",
            ]
        );
        assert!(rules(q, Family::V4, Table::Mangle, "floatingip").is_empty());
        assert!(rules(q, Family::V4, Table::Mangle, "FORWARD").is_empty());
        assert!(!rules(q, Family::V4, Table::Nat, "snat")
            .iter()
            .any(|r| r.contains("connmark")));
        // No IPv6 address, no IPv6 scope rules.
        assert!(rules(q, Family::V6, Table::Mangle, "scope").is_empty());
    }

    #[test]
    fn two_scopes_get_sorted_marks_and_the_floating_ip_mark_rules() {
        let mut d = legacy_dict();
        d["_interfaces"][0]["address_scopes"] = json!({"4": "scope-b", "6": null});
        d["_interfaces"][1]["address_scopes"] = json!({"4": "scope-a", "6": null});
        d["gw_port"]["address_scopes"] = json!({"4": "scope-a", "6": null});
        d["_floatingips"][0]["fixed_ip_address_scope"] = "scope-b".into();
        let cfg = config("legacy", vec![d.clone()]);
        let marks = ScopeMarks::of(&cfg.routers[0]).unwrap();
        assert_eq!(marks.id(None), 1024);
        assert_eq!(marks.id(Some("scope-a")), 1025);
        assert_eq!(marks.id(Some("scope-b")), 1026);
        assert_eq!(marks.mark(Some("scope-a")), "0x4010000/0xffff0000");
        assert_eq!(marks.mark(Some("scope-b")), "0x4020000/0xffff0000");
        let spec = build(&cfg);
        let q = qrouter(&spec, LEGACY_ID);
        assert_eq!(
            rules(q, Family::V4, Table::Mangle, "scope"),
            vec![
                "-i qr-081ed401-2a -j MARK --set-xmark 0x4020000/0xffff0000",
                "-i qr-fa4bdea8-84 -j MARK --set-xmark 0x4010000/0xffff0000",
                "-i qg-184a6791-c4 -j MARK --set-xmark 0x4010000/0xffff0000",
            ]
        );
        // Same scope as the gateway: routed without SNAT (D-37).
        assert!(rules(q, Family::V4, Table::Nat, "snat").contains(
            &"-o qg-184a6791-c4 -m connmark --mark 0x4010000/0xffff0000 -j ACCEPT".to_owned()
        ));
        // The floating IP's fixed address is in scope-b, the gateway in scope-a (D-43).
        assert_eq!(
            rules(q, Family::V4, Table::Mangle, "floatingip"),
            vec!["-d 203.0.113.2/32 -j MARK --set-xmark 0x4020000/0xffff0000"]
        );
        assert_eq!(
            rules(q, Family::V4, Table::Mangle, "FORWARD"),
            vec!["-s 192.0.2.10/32 -j neutron-l3-agent-float-snat"]
        );
        let float_snat = rules(q, Family::V4, Table::Mangle, "float-snat");
        assert_eq!(float_snat.len(), 3, "{float_snat:#?}");
        assert!(float_snat[0].contains("--save-mark"));
        assert_eq!(
            float_snat[1..],
            [
                "-o qr-fa4bdea8-84 -j MARK --set-xmark 0x4010000/0xffff0000",
                "-o qg-184a6791-c4 -j MARK --set-xmark 0x4010000/0xffff0000",
            ]
        );
        // Marks depend on the set of scopes only, not on which port comes first (B-27).
        let mut swapped = d;
        let ports = swapped["_interfaces"].as_array().unwrap().clone();
        swapped["_interfaces"] = Value::Array(ports.into_iter().rev().collect());
        let cfg2 = config("legacy", vec![swapped]);
        assert_eq!(ScopeMarks::of(&cfg2.routers[0]).unwrap(), marks);
        let q2 = build(&cfg2);
        assert_eq!(
            qrouter(&q2, LEGACY_ID)
                .iptables
                .rules(Family::V4, Table::Mangle, "scope", true),
            q.iptables.rules(Family::V4, Table::Mangle, "scope", true)
        );
    }

    #[test]
    fn dvr_snat_ports_are_permanent_neighbours_on_qr_ports() {
        for mode in ["dvr", "dvr_snat"] {
            let spec = build(&config(mode, vec![dvr_dict()]));
            let q = qrouter(&spec, DVR_ID);
            let sg_mac = MacAddr::new([0xfa, 0x16, 0x3e, 0x80, 0x8d, 0x89]);
            assert_eq!(
                q.neighbours.get(&(dev("qr-55989303-d9"), ip("192.0.2.9"))),
                Some(&sg_mac)
            );
            assert_eq!(
                q.neighbours
                    .get(&(dev("qr-2839d271-d4"), ip("198.51.100.9"))),
                Some(&sg_mac)
            );
            // Only in the port's own subnet.
            assert!(!q
                .neighbours
                .contains_key(&(dev("qr-55989303-d9"), ip("198.51.100.9"))));
        }
    }

    #[test]
    fn dvr_link_has_derived_macs_neighbours_and_an_ipv6_default_via_fpr() {
        let id = rid(DVR_ID);
        let (rfp_mac, fpr_mac) = link_macs(&id);
        for mac in [rfp_mac, fpr_mac] {
            assert!(mac.is_unicast());
            assert_eq!(mac.octets()[0] & 0x02, 0x02, "locally administered");
        }
        assert_ne!(rfp_mac, fpr_mac);
        assert_eq!(link_macs(&id), (rfp_mac, fpr_mac), "deterministic");
        assert_ne!(link_macs(&rid(LEGACY_ID)).0, rfp_mac);

        let spec = build(&config("dvr", vec![dvr_dict()]));
        let q = qrouter(&spec, DVR_ID);
        let rfp = dev("rfp-fb221852-b");
        let fpr = dev("fpr-fb221852-b");
        assert_eq!(q.devices[&rfp].mac, Some(rfp_mac));
        assert_eq!(
            q.neighbours[&(rfp.clone(), ip("169.254.64.1"))],
            fpr_mac,
            "rfp- knows fpr-"
        );
        let v6 = defaults(q, true);
        assert_eq!(v6.len(), 1);
        assert_eq!(v6[0].gateway, Some(IpAddr::V6(fpr_mac.ipv6_link_local())));
        assert_eq!(v6[0].dev, Some(rfp.clone()));
        let f = ns(&spec, &format!("fip-{EXT_NET}"));
        assert_eq!(f.devices[&fpr].mac, Some(fpr_mac));
        assert_eq!(f.neighbours[&(fpr, ip("169.254.64.0"))], rfp_mac);
    }

    /// Compiled with the rules each namespace's last model resolved (the agent's managers'):
    /// the same spec as without, and the rules the routers kept were taken, not read again.
    #[test]
    fn a_hinted_compile_is_the_compile_and_takes_what_the_last_models_resolved() {
        let cfg = config("dvr_snat", vec![dvr_dict(), legacy_dict_as_other()]);
        let alloc = alloc_for(&cfg);
        let facts = HostFacts::default();
        let before = compile(&cfg, &alloc, &facts);
        let hints: BTreeMap<NetnsName, Arc<Hints>> = before
            .namespaces
            .iter()
            .map(|(n, s)| (n.clone(), Arc::new(s.iptables.hints())))
            .collect();
        let plain = compile(&cfg, &alloc, &facts);
        let hinted = compile_hinted(&cfg, &alloc, &facts, &|n| hints.get(n).cloned());
        assert_eq!(
            hinted.namespaces.keys().collect::<Vec<_>>(),
            plain.namespaces.keys().collect::<Vec<_>>()
        );
        let origins = |m: &IptablesModel| -> Vec<Arc<l3agent_iptables::model::Origin>> {
            Family::ALL
                .into_iter()
                .flat_map(|f| m.tables_of(f).into_iter().map(move |t| (f, t)))
                .filter_map(|(f, t)| m.table(f, t))
                .flat_map(|t| t.chains.values())
                .flat_map(|c| c.rules())
                .map(|r| Arc::clone(&r.origin))
                .collect()
        };
        // Neutron's default rules are shared by every model (copied from one): not counted.
        let defaults = origins(&empty_model());
        let mut taken = Vec::new();
        for (name, ns) in &hinted.namespaces {
            let want = &plain.namespaces[name].iptables;
            assert!(ns.iptables.same_rules(want), "{name}");
            assert_eq!(ns.iptables.digest(), want.digest(), "{name}");
            let old: Vec<_> = origins(&before.namespaces[name].iptables)
                .into_iter()
                .filter(|o| !defaults.iter().any(|d| Arc::ptr_eq(d, o)))
                .collect();
            let shared = origins(&ns.iptables)
                .iter()
                .filter(|o| old.iter().any(|x| Arc::ptr_eq(x, o)))
                .count();
            taken.push((
                name.as_str().split('-').next().unwrap_or("").to_owned(),
                shared > 0,
            ));
        }
        taken.sort();
        // A router's own namespaces take hints; the fip- namespace, shared by routers, is
        // compiled from its parts as before.
        assert_eq!(
            taken,
            [
                ("fip".to_owned(), false),
                ("qrouter".to_owned(), true),
                ("qrouter".to_owned(), true),
                ("snat".to_owned(), true),
            ]
        );
    }

    #[test]
    fn a_missing_allocation_fails_the_router_instead_of_panicking() {
        let cfg = config("dvr_snat", vec![dvr_dict(), legacy_dict_as_other()]);
        let full = alloc_for(&cfg);
        for (what, alloc) in [
            (
                "link-local",
                Allocations {
                    link_local: BTreeMap::new(),
                    ..full.clone()
                },
            ),
            (
                "floating IP 203.0.113.2",
                Allocations {
                    fip_priorities: BTreeMap::new(),
                    ..full.clone()
                },
            ),
            (
                "SNAT redirect table",
                Allocations {
                    snat_tables: BTreeMap::new(),
                    ..full.clone()
                },
            ),
        ] {
            let spec = compile(&cfg, &alloc, &HostFacts::default());
            let why = &spec.failed[&rid(DVR_ID)];
            assert!(why.contains(what), "{what}: {why}");
            assert_eq!(spec.failed.len(), 1);
            assert_eq!(spec.router_namespaces(&rid(DVR_ID)).count(), 0);
            // The shared fip- namespace stays, without the failed router's part.
            let f = ns(&spec, &format!("fip-{EXT_NET}"));
            assert!(f.devices.contains_key(&dev("fg-68db4b10-1b")));
            assert!(!f.devices.contains_key(&dev("fpr-fb221852-b")));
            assert!(f.rules.is_empty());
            // Other routers are compiled.
            assert!(spec.namespaces.contains_key(&names::router_ns(&rid(
                "a7c7c2ae-d0ba-4691-820c-8053abf50b8d"
            ))));
        }
        assert!(compile(&cfg, &full, &HostFacts::default())
            .failed
            .is_empty());
    }

    /// The legacy dict as another router with other ports (no collisions with the DVR one).
    fn legacy_dict_as_other() -> Value {
        let mut d = legacy_dict();
        d["id"] = "a7c7c2ae-d0ba-4691-820c-8053abf50b8d".into();
        d["_floatingips"] = json!([]);
        d
    }

    #[test]
    fn a_dvr_snat_agent_that_is_not_the_gateway_host_has_no_snat_namespace() {
        let spec = build(&config("dvr_snat", vec![dvr_dict()]));
        assert!(spec.namespaces.contains_key(&names::snat_ns(&rid(DVR_ID))));
        let mut d = dvr_dict();
        d["gw_port_host"] = "host-b".into();
        let spec = build(&config("dvr_snat", vec![d]));
        let id = rid(DVR_ID);
        let mine: Vec<&NetnsName> = spec.router_namespaces(&id).collect();
        assert_eq!(mine, vec![&names::router_ns(&rid(DVR_ID))]);
        // A dvr agent never has one.
        let spec = build(&config("dvr", vec![dvr_dict()]));
        assert_eq!(spec.router_namespaces(&rid(DVR_ID)).count(), 1);
    }

    #[test]
    fn two_dvr_routers_of_one_external_network_share_one_fip_namespace() {
        let a = dvr_dict();
        let mut b = dvr_dict();
        let b_id = "0b221852-b000-4000-8000-000000000000";
        b["id"] = b_id.into();
        b["_interfaces"] = json!([]);
        b["_snat_router_interfaces"] = json!([]);
        b["_floatingips"] = json!([]);
        b["gw_port"]["id"] = "90000000-0000-0000-0000-000000000000".into();
        b["gw_port"]["fixed_ips"][0]["ip_address"] = "203.0.113.5".into();
        b["gw_port"]["mac_address"] = "fa:16:3e:00:00:05".into();
        let cfg = config("dvr", vec![a, b]);
        let spec = build(&cfg);
        assert_eq!(spec.fip_namespaces().count(), 1);
        let f = ns(&spec, &format!("fip-{EXT_NET}"));
        assert_eq!(
            f.owners,
            [rid(b_id), rid(DVR_ID)]
                .into_iter()
                .collect::<BTreeSet<_>>()
        );
        let fprs: Vec<&IfName> = f
            .devices
            .iter()
            .filter(|(_, d)| d.role == Role::FipLink)
            .map(|(n, _)| n)
            .collect();
        assert_eq!(fprs, vec![&dev("fpr-0b221852-b"), &dev("fpr-fb221852-b")]);
        // Router ids in order get the link-local pairs 0 and 1: 169.254.64.0/31, .2/31.
        let iif: Vec<(Option<IfName>, u32)> =
            f.rules.iter().map(|r| (r.iif.clone(), r.table)).collect();
        assert_eq!(
            iif,
            vec![
                (
                    Some(dev("fpr-0b221852-b")),
                    u32::from(Ipv4Addr::new(169, 254, 64, 1))
                ),
                (
                    Some(dev("fpr-fb221852-b")),
                    u32::from(Ipv4Addr::new(169, 254, 64, 3))
                ),
            ]
        );
        assert_eq!(
            f.devices
                .values()
                .filter(|d| d.role == Role::FipGateway)
                .count(),
            1
        );
        for (id, rfp) in [(b_id, "rfp-0b221852-b"), (DVR_ID, "rfp-fb221852-b")] {
            match &qrouter(&spec, id).devices[&dev(rfp)].kind {
                DeviceKind::Link {
                    peer,
                    peer_ns,
                    creator,
                } => {
                    assert_eq!(peer.as_str(), rfp.replace("rfp-", "fpr-"));
                    assert_eq!(peer_ns.as_str(), format!("fip-{EXT_NET}"));
                    assert!(!creator, "the fip side makes the pair");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn admin_down_routers_are_absent() {
        let mut d = legacy_dict();
        d["admin_state_up"] = false.into();
        let cfg = config("legacy", vec![d]);
        let spec = build(&cfg);
        assert!(spec.namespaces.is_empty() && spec.failed.is_empty());
        let mut d = dvr_dict();
        d["admin_state_up"] = false.into();
        let cfg = config("dvr_snat", vec![d]);
        assert_eq!(needs(&cfg), Needs::default());
        assert!(build(&cfg).namespaces.is_empty());
    }

    #[test]
    fn needs_lists_exactly_what_compile_uses() {
        assert_eq!(
            needs(&config("legacy", vec![legacy_dict()])),
            Needs::default()
        );
        let cfg = config("dvr", vec![dvr_dict()]);
        let n = needs(&cfg);
        assert_eq!(n.link_local, [rid(DVR_ID)].into());
        assert_eq!(n.fip_priorities, [Ipv4Addr::new(203, 0, 113, 2)].into());
        let port = |p: &str| (rid(DVR_ID), PortId::new("id", p).unwrap());
        assert_eq!(
            n.snat_tables,
            [
                port("2839d271-d477-4c75-8d7e-ffa57e87501a"),
                port("55989303-d925-4ed5-a6f9-8f6b8391222f"),
            ]
            .into()
        );
        // A floating IP of another host needs no priority; without the agent gateway port
        // there is no link, hence no link-local pair and no FIP priority.
        let mut d = dvr_dict();
        d["_floatingips"][0]["host"] = "host-b".into();
        let n = needs(&config("dvr", vec![d]));
        assert!(n.fip_priorities.is_empty());
        assert_eq!(n.link_local.len(), 1);
        let mut d = dvr_dict();
        d["_floatingip_agent_interfaces"] = json!([]);
        let n = needs(&config("dvr", vec![d.clone()]));
        assert!(n.link_local.is_empty() && n.fip_priorities.is_empty());
        assert_eq!(n.snat_tables.len(), 2);
        // Without a gateway there is no SNAT redirect either (nor floating IPs: they need
        // one).
        d["gw_port"] = Value::Null;
        d["_floatingips"] = json!([]);
        assert_eq!(needs(&config("dvr", vec![d])), Needs::default());
        // A port whose scope matches the gateway's takes the fast path (D-23), not the SNAT
        // node: no table for it, a rule at 80000 into table 16 and a route in fip-.
        let mut d = dvr_dict();
        d["_interfaces"][0]["address_scopes"] = json!({"4": "scope-a", "6": null});
        d["gw_port"]["address_scopes"] = json!({"4": "scope-a", "6": null});
        let cfg = config("dvr", vec![d]);
        let n = needs(&cfg);
        assert_eq!(
            n.snat_tables,
            [port("2839d271-d477-4c75-8d7e-ffa57e87501a")].into()
        );
        let spec = build(&cfg);
        assert!(qrouter(&spec, DVR_ID).rules.contains(&Rule {
            ipv6: false,
            from: Some(net("192.0.2.0/24")),
            to: None,
            iif: None,
            table: FIP_TABLE,
            priority: FAST_PATH_PRIORITY,
        }));
        assert!(ns(&spec, &format!("fip-{EXT_NET}"))
            .routes
            .contains(&Route {
                gateway: Some(ip("169.254.64.0")),
                dev: Some(dev("fpr-fb221852-b")),
                ..Route::to(net("192.0.2.0/24"))
            }));
    }

    #[test]
    fn dvr_extra_routes_go_where_their_next_hop_is() {
        let mut d = dvr_dict();
        d["routes"] = json!([
            {"destination": "100.64.8.0/24", "nexthop": "192.0.2.20"},
            {"destination": "100.64.9.0/24", "nexthop": "203.0.113.7"},
        ]);
        let spec = build(&config("dvr_snat", vec![d]));
        let q = qrouter(&spec, DVR_ID);
        assert!(q.routes.contains(&Route {
            gateway: Some(ip("192.0.2.20")),
            dev: Some(dev("qr-55989303-d9")),
            ..Route::to(net("100.64.8.0/24"))
        }));
        assert!(!q.routes.iter().any(|r| r.dst == net("100.64.9.0/24")));
        let f = ns(&spec, &format!("fip-{EXT_NET}"));
        assert!(f.routes.contains(&Route {
            gateway: Some(ip("203.0.113.7")),
            dev: Some(dev("fg-68db4b10-1b")),
            table: u32::from(Ipv4Addr::new(169, 254, 64, 1)),
            protocol: Protocol::Boot,
            ..Route::to(net("100.64.9.0/24"))
        }));
        // snat- has both.
        let s = ns(&spec, &format!("snat-{DVR_ID}"));
        let dsts: Vec<IpNet> = s
            .routes
            .iter()
            .filter(|r| r.gateway.is_some() && r.dst.prefix_len() != 0)
            .map(|r| r.dst)
            .collect();
        assert_eq!(dsts, vec![net("100.64.8.0/24"), net("100.64.9.0/24")]);
    }

    #[test]
    fn random_fully_is_an_input() {
        let cfg = config("legacy", vec![legacy_dict()]);
        let alloc = alloc_for(&cfg);
        let on = compile(&cfg, &alloc, &HostFacts { random_fully: true });
        let off = compile(
            &cfg,
            &alloc,
            &HostFacts {
                random_fully: false,
            },
        );
        let snat = |s: &HostSpec| {
            rules(
                &s.namespaces[&q_name()],
                Family::V4,
                Table::Nat,
                "float-snat",
            )
        };
        assert_eq!(
            snat(&on),
            vec!["-s 192.0.2.10/32 -j SNAT --to-source 203.0.113.2 --random-fully"]
        );
        assert_eq!(
            snat(&off),
            vec!["-s 192.0.2.10/32 -j SNAT --to-source 203.0.113.2"]
        );
    }

    /// `agent.traffic_accounting`: the accounting chain, jumped to first from `FORWARD`, with
    /// the fixed address of each floating IP served here against the external device
    /// (`qg-` for a legacy router, `rfp-` for a DVR one); off, none of it.
    #[test]
    fn traffic_accounting_counts_each_local_floating_ips_fixed_address_on_the_external_device() {
        let accounting = |mut cfg: HostConfig| {
            cfg.agent.traffic_accounting = true;
            cfg
        };
        let acct = |q: &NsSpec| rules(q, Family::V4, Table::Filter, FIP_ACCT_CHAIN);
        let forward = |q: &NsSpec| rules(q, Family::V4, Table::Filter, "FORWARD");

        let spec = build(&accounting(config("legacy", vec![legacy_dict()])));
        let q = qrouter(&spec, LEGACY_ID);
        assert_eq!(
            forward(q),
            vec!["-j neutron-l3-agent-fip-acct", "-j neutron-l3-agent-scope"]
        );
        assert_eq!(
            acct(q),
            vec![
                "-d 192.0.2.10/32 -i qg-184a6791-c4",
                "-s 192.0.2.10/32 -o qg-184a6791-c4"
            ]
        );
        assert!(!q
            .iptables
            .has_chain(Family::V6, Table::Filter, FIP_ACCT_CHAIN, true));
        let off = build(&config("legacy", vec![legacy_dict()]));
        let q = qrouter(&off, LEGACY_ID);
        assert!(!q
            .iptables
            .has_chain(Family::V4, Table::Filter, FIP_ACCT_CHAIN, true));
        assert_eq!(forward(q), vec!["-j neutron-l3-agent-scope"]);

        // No floating IP: no chain.
        let mut bare = legacy_dict();
        bare["_floatingips"] = json!([]);
        let spec = build(&accounting(config("legacy", vec![bare])));
        assert!(!qrouter(&spec, LEGACY_ID).iptables.has_chain(
            Family::V4,
            Table::Filter,
            FIP_ACCT_CHAIN,
            true
        ));

        // DVR: the rfp- end; a floating IP bound on another host is not served here.
        let mut d = dvr_dict();
        let mut elsewhere = d["_floatingips"][0].clone();
        elsewhere["id"] = "cae657c6-ca5f-4061-85f5-baa25ccc6404".into();
        elsewhere["fixed_ip_address"] = "192.0.2.11".into();
        elsewhere["floating_ip_address"] = "203.0.113.3".into();
        elsewhere["host"] = "host-b".into();
        d["_floatingips"].as_array_mut().unwrap().push(elsewhere);
        let spec = build(&accounting(config("dvr", vec![d])));
        let q = qrouter(&spec, DVR_ID);
        assert_eq!(forward(q)[0], "-j neutron-l3-agent-fip-acct");
        assert_eq!(
            acct(q),
            vec![
                "-d 192.0.2.10/32 -i rfp-fb221852-b",
                "-s 192.0.2.10/32 -o rfp-fb221852-b"
            ]
        );
    }

    /// Switching `agent.traffic_accounting` on a namespace that holds the other mode's
    /// rules: the plan puts the jump first in `FORWARD` and adds the chain (or removes both),
    /// ends where a fresh namespace would be, and then has nothing left to do.
    #[test]
    fn switching_traffic_accounting_plans_to_what_a_fresh_namespace_gets() {
        let model = |accounting: bool| {
            let mut cfg = config("legacy", vec![legacy_dict()]);
            cfg.agent.traffic_accounting = accounting;
            build(&cfg).namespaces[&q_name()].iptables.clone()
        };
        let fresh = |m: &IptablesModel| {
            let mut state = KernelState::default();
            l3agent_iptables::plan_family(&state, m, Family::V4, None)
                .apply_to(&mut state)
                .unwrap();
            state
        };
        // Each table's chains (in any order) with their rules (in order).
        type Chains = BTreeMap<(Table, String), Vec<l3agent_iptables::kernel::KernelRule>>;
        let chains = |s: &KernelState| -> Chains {
            s.tables
                .iter()
                .flat_map(|(t, table)| {
                    table
                        .chains()
                        .iter()
                        .map(|c| ((*t, c.name.clone()), c.rules.clone()))
                })
                .collect()
        };
        for (from, to) in [(false, true), (true, false)] {
            let (from, to) = (model(from), model(to));
            let mut state = fresh(&from);
            let plan = l3agent_iptables::plan_family(&state, &to, Family::V4, None);
            assert!(!plan.is_empty());
            plan.apply_to(&mut state).unwrap();
            assert_eq!(chains(&state), chains(&fresh(&to)));
            assert!(l3agent_iptables::plan_family(&state, &to, Family::V4, None).is_empty());
        }
    }
}
