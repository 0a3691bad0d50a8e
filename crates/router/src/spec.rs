//! The one model of "what the kernel should hold": a [`HostSpec`] compiled (purely, see
//! [`crate::compile`]) from router dicts, allocations and host facts. `plan`, `status` and
//! `apply` all diff this same value against what is observed in the kernel
//! ([`crate::observe`], [`crate::diff`]).
//!
//! Everything here is plain data: ordered maps and sets, so that two specs compare equal
//! exactly when they describe the same kernel state, and the text rendering
//! ([`NsSpec::render`]) is stable enough for golden tests.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use l3agent_iptables::{Family, IptablesModel};
use l3agent_rtnl::route::Route;
use l3agent_rtnl::rule::Rule;
use l3agent_rtnl::sysctl::Sysctl;
use l3agent_supervise::Service;
use l3agent_types::{IfName, MacAddr, NetnsName, NetworkId, PortId, RouterId};
use serde::Serialize;

use crate::config::IntegrationBridge;

/// What a namespace is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NsKind {
    /// `qrouter-<router id>`.
    Router,
    /// `snat-<router id>` (DVR, on the host that holds the router's SNAT).
    Snat,
    /// `fip-<external network id>` (DVR, shared by the routers of one external network).
    Fip,
}

/// What a device does in a router (decides gratuitous ARP and conntrack cleanup).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// `lo`.
    Loopback,
    /// `qr-`: a tenant subnet's gateway.
    Internal,
    /// `qg-`: the external gateway (legacy qrouter, or DVR snat-).
    Gateway,
    /// `sg-`: a DVR SNAT port.
    Snat,
    /// `fg-`: the FIP namespace's agent gateway port.
    FipGateway,
    /// `rfp-`: the qrouter end of the qrouter ↔ fip link.
    RouterLink,
    /// `fpr-`: the fip end of that link.
    FipLink,
    /// `ha-`: an HA router's port on the HA network (VRRP).
    Ha,
}

impl Role {
    /// New addresses on such a device are announced (gratuitous ARP / unsolicited NA), as
    /// Neutron does for qr-, qg-, sg- and fg- (NEUTRON-OPS §5).
    pub fn announces(self) -> bool {
        matches!(
            self,
            Role::Internal | Role::Gateway | Role::Snat | Role::FipGateway
        )
    }

    /// Connections of an address removed from such a device are flushed from conntrack
    /// (gateway IP changed or removed, floating IP removed: NEUTRON-OPS §6).
    pub fn flushes_conntrack(self) -> bool {
        matches!(self, Role::Gateway | Role::FipGateway)
    }
}

/// How a device is made.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DeviceKind {
    /// The namespace's loopback: only brought up.
    Loopback,
    /// A router port: a veth whose other end `host_end` is in the host namespace, on `bridge`.
    Port {
        /// The host end (`tap…`).
        host_end: IfName,
        /// The bridge of its network, in the host namespace.
        bridge: IfName,
    },
    /// A router port on Open vSwitch (Neutron's `OVSInterfaceDriver`): an internal port of the
    /// device's name on the integration bridge `bridge`, whose Interface carries
    /// `external_ids` `iface-id=<port_id>`, `iface-status=active`, `attached-mac=<mac>`; its
    /// device appears in the host namespace and is moved into the router's.
    OvsPort {
        /// The integration bridge.
        bridge: IfName,
        /// The Neutron port (`iface-id`).
        port_id: PortId,
    },
    /// A veth between two of l3agent's namespaces (rfp- ↔ fpr-). The side with `creator`
    /// makes the pair; the other side only converges its own end's addresses.
    Link {
        /// The other end's name.
        peer: IfName,
        /// The other end's namespace.
        peer_ns: NetnsName,
        /// Whether this end's namespace creates the pair.
        creator: bool,
    },
}

/// One device in a namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Device {
    /// How it is made.
    pub kind: DeviceKind,
    /// What it does.
    pub role: Role,
    /// MTU (`None`: the kernel's, e.g. `lo`).
    pub mtu: Option<u32>,
    /// MAC (`None`: the kernel's choice).
    pub mac: Option<MacAddr>,
    /// Its addresses (IPv6 link-local addresses are the kernel's and never listed).
    pub addresses: BTreeSet<IpNet>,
    /// Addresses among `addresses` that are floating IPs: added after the NAT rules exist.
    pub floating: BTreeSet<IpNet>,
    /// Its addresses are keepalived's (an HA router's `qr-`/`qg-`: virtual addresses on the
    /// master only): `addresses` is empty and none found there is removed.
    pub vips: bool,
}

/// What one namespace should hold. Ownership: in l3agent's namespaces, every device whose
/// name has one of l3agent's prefixes, every route not installed by the kernel itself, every
/// policy rule other than the three defaults, every permanent neighbour on its devices and the
/// iptables chains of its wrap name are l3agent's: what is not listed here is removed.
#[derive(Debug, Clone)]
pub struct NsSpec {
    /// What it is for.
    pub kind: NsKind,
    /// The routers it serves (one, or for `fip-`, every DVR router of that network).
    pub owners: BTreeSet<RouterId>,
    /// Sysctls, set from inside the namespace.
    pub sysctls: BTreeMap<Sysctl, u32>,
    /// Devices by name.
    pub devices: BTreeMap<IfName, Device>,
    /// Routes of every table (main, 16, SNAT-redirect tables, FIP tables).
    pub routes: BTreeSet<Route>,
    /// Policy rules.
    pub rules: BTreeSet<Rule>,
    /// Permanent neighbours: (device, address) → MAC.
    pub neighbours: BTreeMap<(IfName, IpAddr), MacAddr>,
    /// The iptables rules l3agent owns there.
    pub iptables: IptablesModel,
    /// The daemons that run there for its router (a router's own namespace only), each with
    /// its config file's content.
    pub daemons: BTreeMap<Service, Vec<u8>>,
    /// An HA router's namespace: what depends on its VRRP state.
    pub ha: Option<HaSpec>,
}

/// What an HA router's namespace holds depending on whether keepalived made this host the
/// master: the state is read from the kernel (the primary VIP on the `ha-` device, as
/// Neutron's state monitor reads it), so every diff acts on the state of that moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaSpec {
    /// The `ha-` device.
    pub dev: IfName,
    /// keepalived's primary VIP (`169.254.0.<vrid>/24`): present only on the master.
    pub vip: IpNet,
    /// Sysctls of the master (IPv6 forwarding, the gateway's `accept_ra`).
    pub master_sysctls: BTreeMap<Sysctl, u32>,
    /// The same sysctls on a backup.
    pub backup_sysctls: BTreeMap<Sysctl, u32>,
    /// Daemons that run on the master only (radvd, the metadata proxy).
    pub master_only: BTreeSet<Service>,
}

/// The VRRP state of an HA router on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HaState {
    /// keepalived holds the addresses here.
    Master,
    /// Another node does (or keepalived has not decided yet).
    Backup,
}

impl HaState {
    /// Neutron's name for it in `update_ha_routers_states` (`active` / `standby`).
    pub fn neutron(self) -> &'static str {
        match self {
            HaState::Master => "active",
            HaState::Backup => "standby",
        }
    }
}

impl NsSpec {
    /// An empty namespace of `kind` serving `owner`, with l3agent's iptables wrap name.
    pub fn new(kind: NsKind, owner: Option<RouterId>) -> NsSpec {
        NsSpec {
            kind,
            owners: owner.into_iter().collect(),
            sysctls: BTreeMap::new(),
            devices: BTreeMap::new(),
            routes: BTreeSet::new(),
            rules: BTreeSet::new(),
            neighbours: BTreeMap::new(),
            iptables: crate::compile::empty_model(),
            daemons: BTreeMap::new(),
            ha: None,
        }
    }

    /// The spec as text, one item per line, for golden tests and `--show-spec`: sysctls,
    /// devices with addresses, routes, rules, neighbours, then the iptables rules as
    /// `iptables-restore` input.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "kind {:?}", self.kind);
        for o in &self.owners {
            let _ = writeln!(out, "owner {o}");
        }
        for (k, v) in &self.sysctls {
            let _ = writeln!(out, "sysctl {}={v}", k.name());
        }
        for (name, d) in &self.devices {
            let _ = write!(out, "device {name} {:?}", d.role);
            match &d.kind {
                DeviceKind::Loopback => {}
                DeviceKind::Port { host_end, bridge } => {
                    let _ = write!(out, " port host_end={host_end} bridge={bridge}");
                }
                DeviceKind::OvsPort { bridge, port_id } => {
                    let _ = write!(out, " ovs_port bridge={bridge} iface-id={port_id}");
                }
                DeviceKind::Link {
                    peer,
                    peer_ns,
                    creator,
                } => {
                    let _ = write!(out, " link peer={peer}@{peer_ns} creator={creator}");
                }
            }
            if let Some(m) = d.mtu {
                let _ = write!(out, " mtu={m}");
            }
            if let Some(m) = d.mac {
                let _ = write!(out, " mac={m}");
            }
            if d.vips {
                out.push_str(" vips=keepalived");
            }
            out.push('\n');
            for a in &d.addresses {
                let fip = if d.floating.contains(a) {
                    " floating"
                } else {
                    ""
                };
                let _ = writeln!(out, "  address {a}{fip}");
            }
        }
        for r in &self.routes {
            let _ = writeln!(out, "route {}", crate::change::RouteText(r));
        }
        for r in &self.rules {
            let _ = writeln!(out, "rule {}", r);
        }
        for ((dev, ip), mac) in &self.neighbours {
            let _ = writeln!(out, "neighbour {ip} lladdr {mac} dev {dev} permanent");
        }
        if let Some(ha) = &self.ha {
            let _ = writeln!(out, "ha dev={} vip={}", ha.dev, ha.vip);
            for (k, v) in &ha.master_sysctls {
                let _ = writeln!(out, "ha master sysctl {}={v}", k.name());
            }
            for (k, v) in &ha.backup_sysctls {
                let _ = writeln!(out, "ha backup sysctl {}={v}", k.name());
            }
        }
        for (service, config) in &self.daemons {
            let only = self
                .ha
                .as_ref()
                .filter(|h| h.master_only.contains(service))
                .map_or("", |_| " (master only)");
            let _ = writeln!(out, "daemon {service}{only}");
            for line in String::from_utf8_lossy(config).split('\n') {
                let _ = writeln!(out, "  | {line}");
            }
        }
        for family in [Family::V4, Family::V6] {
            let text = crate::compile::restore_text(&self.iptables, family);
            if !text.is_empty() {
                let _ = writeln!(out, "iptables {family}");
                out.push_str(&text);
            }
        }
        out
    }
}

/// What the whole host should hold for l3agent's routers.
#[derive(Debug, Clone, Default)]
pub struct HostSpec {
    /// Every namespace l3agent wants, by name.
    pub namespaces: BTreeMap<NetnsName, NsSpec>,
    /// Routers that could not be compiled (e.g. a DVR router without an allocation), with why:
    /// they are reported as failed and left as they are.
    pub failed: BTreeMap<RouterId, String>,
    /// With the `openvswitch` interface driver: the integration bridge and its OVSDB, where
    /// the [`DeviceKind::OvsPort`] devices are plugged (and the ports of removed routers
    /// unplugged).
    pub ovs: Option<IntegrationBridge>,
    /// Where the daemons' files live (`<state_path>/daemons`, the supervisor's directory).
    pub daemons_dir: PathBuf,
}

impl HostSpec {
    /// The namespaces of one router: its own (`qrouter-`, `snat-`), not the shared `fip-`.
    pub fn router_namespaces<'a>(
        &'a self,
        id: &'a RouterId,
    ) -> impl Iterator<Item = &'a NetnsName> + 'a {
        self.namespaces
            .iter()
            .filter(move |(_, s)| s.kind != NsKind::Fip && s.owners.contains(id))
            .map(|(n, _)| n)
    }

    /// The FIP namespaces.
    pub fn fip_namespaces(&self) -> impl Iterator<Item = &NetnsName> {
        self.namespaces
            .iter()
            .filter(|(_, s)| s.kind == NsKind::Fip)
            .map(|(n, _)| n)
    }
}

/// Namespace names from ids: the one place they are derived.
pub mod names {
    use super::*;

    /// `qrouter-<router id>`.
    pub fn router_ns(id: &RouterId) -> NetnsName {
        NetnsName::new("id", &format!("qrouter-{id}")).expect("a valid router id is a name")
    }

    /// `snat-<router id>`.
    pub fn snat_ns(id: &RouterId) -> NetnsName {
        NetnsName::new("id", &format!("snat-{id}")).expect("a valid router id is a name")
    }

    /// `fip-<external network id>`.
    pub fn fip_ns(net: &NetworkId) -> NetnsName {
        NetnsName::new("network_id", &format!("fip-{net}")).expect("a valid id is a name")
    }

    /// Neutron's device name: `(prefix + id)[:14]` (LINUX_DEV_LEN).
    pub fn device(prefix: &str, id: &str) -> IfName {
        let name: String = format!("{prefix}{id}").chars().take(14).collect();
        IfName::new("id", &name).expect("a valid id makes a device name")
    }

    /// Whether `name` is one of l3agent's namespaces, by exact rule (never by suffix): the
    /// prefix and then a valid id.
    pub fn parse_ns(name: &str) -> Option<(NsKind, String)> {
        for (prefix, kind) in [
            ("qrouter-", NsKind::Router),
            ("snat-", NsKind::Snat),
            ("fip-", NsKind::Fip),
        ] {
            if let Some(id) = name.strip_prefix(prefix) {
                if RouterId::new("id", id).is_ok() {
                    return Some((kind, id.to_owned()));
                }
            }
        }
        None
    }

    /// Device prefixes l3agent owns inside its namespaces.
    pub const OWNED_DEVICE_PREFIXES: [&str; 7] =
        ["qr-", "qg-", "sg-", "fg-", "rfp-", "fpr-", "ha-"];

    /// Whether a device in one of l3agent's namespaces is l3agent's.
    pub fn owned_device(name: &str) -> bool {
        OWNED_DEVICE_PREFIXES.iter().any(|p| name.starts_with(p))
    }
}

#[cfg(test)]
mod tests {
    use super::names::*;
    use super::*;

    #[test]
    fn namespace_names_parse_by_exact_rule() {
        assert_eq!(
            parse_ns("qrouter-87c7c2ae-d0ba-4691-820c-8053abf50b8d"),
            Some((
                NsKind::Router,
                "87c7c2ae-d0ba-4691-820c-8053abf50b8d".into()
            ))
        );
        assert_eq!(parse_ns("snat-r1"), Some((NsKind::Snat, "r1".into())));
        for bad in [
            "qrouter-",
            "qrouter--x",
            "xqrouter-a",
            "fip-a/b",
            "other",
            "qrouter-a.b",
        ] {
            assert_eq!(parse_ns(bad), None, "{bad}");
        }
        assert_eq!(
            device("qr-", "081ed401-2abX-0000").as_str(),
            "qr-081ed401-2a"
        );
    }
}
