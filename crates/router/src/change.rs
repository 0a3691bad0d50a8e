//! [`Change`]: one typed step that brings the kernel closer to a [`crate::spec::HostSpec`].
//! `plan` prints them, `apply` executes exactly them ([`crate::exec`]), `status` lists the
//! ones that repair drift. `Display` reads like the `ip`/`sysctl`/`iptables` command it is
//! equivalent to; `Serialize` gives the same with typed fields for `--json`.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use l3agent_rtnl::route::{Protocol, Route, MAIN_TABLE};
use l3agent_rtnl::rule::Rule;
use l3agent_rtnl::sysctl::Sysctl;
use l3agent_supervise::{Service, SyncRole};
use l3agent_types::{IfName, MacAddr, NetnsName, PortId, RouterId};
use serde::{Serialize, Serializer};

use crate::spec::Role;

fn display<T: fmt::Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn route_text<S: Serializer>(r: &Route, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&RouteText(r))
}

fn rule_text<S: Serializer>(r: &Rule, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(r)
}

fn sysctl_name<S: Serializer>(k: &Sysctl, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&k.name())
}

/// One step. Every variant names its namespace (`None` only for the host end of a port).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// `ip netns add NS`.
    CreateNamespace {
        /// Namespace.
        ns: NetnsName,
    },
    /// `ip netns del NS` (its devices, and the host ends of its veths, go with it).
    DeleteNamespace {
        /// Namespace.
        ns: NetnsName,
    },
    /// `sysctl -w KEY=VALUE` inside the namespace.
    SetSysctl {
        /// Namespace.
        ns: NetnsName,
        /// Key.
        #[serde(serialize_with = "sysctl_name")]
        key: Sysctl,
        /// Value.
        value: u32,
    },
    /// A router port: `ip link add HOST_END type veth peer name DEV netns NS`, MTU, MAC,
    /// addresses, up, and the host end on its bridge; undone as a whole if a step fails.
    CreatePort {
        /// Namespace of the router end.
        ns: NetnsName,
        /// Router end.
        dev: IfName,
        /// Host end.
        host_end: IfName,
        /// Bridge of the host end.
        bridge: IfName,
        /// MTU of both ends.
        mtu: u32,
        /// MAC of the router end.
        mac: Option<MacAddr>,
        /// Addresses of the router end.
        addresses: Vec<IpNet>,
        /// What the port does.
        role: Role,
    },
    /// The OVS internal port of a router port, as Neutron's `OVSInterfaceDriver` plugs it:
    /// `ovs-vsctl --may-exist add-port BRIDGE PORT -- set Interface PORT type=internal
    /// external_ids:iface-id=ID external_ids:iface-status=active external_ids:attached-mac=MAC`.
    /// Created in the dead VLAN (the L2 agent wires it), or repaired in place (its device, its
    /// ofport and its VLAN tag stay). Consecutive OVS port changes are applied in ONE OVSDB
    /// transaction.
    PlugOvsPort {
        /// The integration bridge.
        bridge: IfName,
        /// The port (and device) name.
        port: IfName,
        /// The Neutron port (`iface-id`).
        port_id: PortId,
        /// The port's MAC (`attached-mac`).
        mac: MacAddr,
    },
    /// `ovs-vsctl --if-exists del-port BRIDGE PORT`: its device goes with it, in whatever
    /// namespace it is.
    UnplugOvsPort {
        /// The integration bridge.
        bridge: IfName,
        /// The port.
        port: IfName,
    },
    /// The device of a plugged OVS internal port, moved from the host namespace into the
    /// router's and configured there: `ip link set DEV netns NS`, then inside `ip link set DEV
    /// address MAC mtu M up` and the addresses (the MTU is set with rtnetlink: OVS's
    /// `mtu_request` does not reach a device in another namespace on every datapath).
    AttachOvsDevice {
        /// Namespace.
        ns: NetnsName,
        /// Device.
        dev: IfName,
        /// MTU.
        mtu: u32,
        /// MAC.
        mac: Option<MacAddr>,
        /// Addresses.
        addresses: Vec<IpNet>,
        /// What the port does.
        role: Role,
    },
    /// A veth between two of l3agent's namespaces (`rfp-` ↔ `fpr-`), both ends up.
    CreateLink {
        /// Namespace of `dev`.
        ns: NetnsName,
        /// This end.
        dev: IfName,
        /// The other end.
        peer: IfName,
        /// The other end's namespace.
        peer_ns: NetnsName,
        /// MTU of both ends.
        mtu: Option<u32>,
    },
    /// `ip link del DEV` (a veth takes its peer with it).
    DeleteDevice {
        /// Namespace.
        ns: NetnsName,
        /// Device.
        dev: IfName,
        /// What it was, when known (a gateway's addresses get their conntrack flushed).
        role: Option<Role>,
    },
    /// `ip link del HOST_END` in the host namespace: a port's host end left behind without its
    /// router end (its namespace was deleted while something still held it), which would
    /// stop the port from being created again.
    DeleteHostEnd {
        /// Host end.
        dev: IfName,
    },
    /// `ip link set DEV [mtu M] [address MAC] up` for a device that exists.
    SetDevice {
        /// Namespace.
        ns: NetnsName,
        /// Device.
        dev: IfName,
        /// New MTU.
        mtu: Option<u32>,
        /// New MAC.
        mac: Option<MacAddr>,
        /// Bring it up.
        up: bool,
    },
    /// The host end of a port: `ip link set HOST_END [master BRIDGE] [mtu M] up`.
    SetHostEnd {
        /// Host end.
        dev: IfName,
        /// Attach to this bridge.
        bridge: Option<IfName>,
        /// New MTU.
        mtu: Option<u32>,
        /// Bring it up.
        up: bool,
    },
    /// `ip addr add NET dev DEV`.
    AddAddress {
        /// Namespace.
        ns: NetnsName,
        /// Device.
        dev: IfName,
        /// Address with prefix.
        net: IpNet,
        /// What the device does.
        role: Role,
        /// A floating IP (added after the NAT rules exist).
        floating: bool,
    },
    /// `ip addr del NET dev DEV`.
    DeleteAddress {
        /// Namespace.
        ns: NetnsName,
        /// Device.
        dev: IfName,
        /// Address with prefix.
        net: IpNet,
        /// What the device does (`None`: a device l3agent does not know).
        role: Option<Role>,
    },
    /// `ip route replace ...`.
    ReplaceRoute {
        /// Namespace.
        ns: NetnsName,
        /// The route.
        #[serde(serialize_with = "route_text")]
        route: Route,
    },
    /// `ip route del ...`.
    DeleteRoute {
        /// Namespace.
        ns: NetnsName,
        /// The route, as observed.
        #[serde(serialize_with = "route_text")]
        route: Route,
    },
    /// `ip rule add ...`.
    AddRule {
        /// Namespace.
        ns: NetnsName,
        /// The rule.
        #[serde(serialize_with = "rule_text")]
        rule: Rule,
    },
    /// `ip rule del ...`.
    DeleteRule {
        /// Namespace.
        ns: NetnsName,
        /// The rule, as observed.
        #[serde(serialize_with = "rule_text")]
        rule: Rule,
    },
    /// `ip neigh replace IP lladdr MAC nud permanent dev DEV`.
    SetNeighbour {
        /// Namespace.
        ns: NetnsName,
        /// Device.
        dev: IfName,
        /// Address.
        ip: IpAddr,
        /// MAC.
        mac: MacAddr,
    },
    /// `ip neigh del IP dev DEV`.
    DeleteNeighbour {
        /// Namespace.
        ns: NetnsName,
        /// Device.
        dev: IfName,
        /// Address.
        ip: IpAddr,
    },
    /// One `iptables-restore --noflush` of a family, with exactly these lines.
    Iptables {
        /// Namespace.
        ns: NetnsName,
        /// `ipv4` or `ipv6`.
        #[serde(serialize_with = "display")]
        family: l3agent_iptables::Family,
        /// The restore input.
        lines: Vec<String>,
    },
    /// `conntrack -D -d IP` and `conntrack -D -q IP` (in-process).
    FlushConntrack {
        /// Namespace.
        ns: NetnsName,
        /// Address.
        ip: IpAddr,
    },
    /// Starts a daemon of the router in its namespace (also when one died: the supervisor's
    /// respawn): its config written atomically under the state directory, then its argv.
    StartDaemon {
        /// Namespace.
        ns: NetnsName,
        /// The router it serves.
        router: RouterId,
        /// Which daemon.
        #[serde(serialize_with = "display")]
        service: Service,
        /// Its config file (never printed: keepalived's holds the VRRP password).
        #[serde(skip)]
        config: Vec<u8>,
    },
    /// A running daemon's config changed: rewritten atomically, then the daemon reloads it
    /// (SIGHUP, or a restart for those that cannot reload).
    ReloadDaemon {
        /// Namespace.
        ns: NetnsName,
        /// The router it serves.
        router: RouterId,
        /// Which daemon.
        #[serde(serialize_with = "display")]
        service: Service,
        /// Its new config file (never printed).
        #[serde(skip)]
        config: Vec<u8>,
    },
    /// Stops a daemon (SIGTERM, then SIGKILL after a grace period) and removes its files.
    StopDaemon {
        /// Namespace it ran in.
        ns: NetnsName,
        /// The router it served.
        router: RouterId,
        /// Which daemon.
        #[serde(serialize_with = "display")]
        service: Service,
    },
    /// An HA router's conntrackd is told of the VRRP role this host took, once per observed
    /// transition (and once for a conntrackd just started): in the namespace,
    /// `conntrackd -C <conf> -c`, `-f`, `-R`, `-B` as primary, `-t`, `-n` as backup (Neutron's
    /// state-change script); a command that fails is logged and ignored, as there.
    SyncConntrackd {
        /// Namespace.
        ns: NetnsName,
        /// The router.
        router: RouterId,
        /// The role taken.
        role: SyncRole,
    },
    /// Gratuitous ARP / unsolicited neighbour advertisements, 3 rounds 2 s apart, sent in the
    /// background.
    Announce {
        /// Namespace.
        ns: NetnsName,
        /// Device.
        dev: IfName,
        /// Addresses.
        addresses: Vec<IpAddr>,
    },
}

impl Change {
    /// The namespace it acts in (`None`: the host namespace).
    pub fn namespace(&self) -> Option<&NetnsName> {
        match self {
            Change::SetHostEnd { .. }
            | Change::DeleteHostEnd { .. }
            | Change::PlugOvsPort { .. }
            | Change::UnplugOvsPort { .. } => None,
            Change::AttachOvsDevice { ns, .. }
            | Change::CreateNamespace { ns }
            | Change::DeleteNamespace { ns }
            | Change::SetSysctl { ns, .. }
            | Change::CreatePort { ns, .. }
            | Change::CreateLink { ns, .. }
            | Change::DeleteDevice { ns, .. }
            | Change::SetDevice { ns, .. }
            | Change::AddAddress { ns, .. }
            | Change::DeleteAddress { ns, .. }
            | Change::ReplaceRoute { ns, .. }
            | Change::DeleteRoute { ns, .. }
            | Change::AddRule { ns, .. }
            | Change::DeleteRule { ns, .. }
            | Change::SetNeighbour { ns, .. }
            | Change::DeleteNeighbour { ns, .. }
            | Change::Iptables { ns, .. }
            | Change::FlushConntrack { ns, .. }
            | Change::StartDaemon { ns, .. }
            | Change::ReloadDaemon { ns, .. }
            | Change::StopDaemon { ns, .. }
            | Change::SyncConntrackd { ns, .. }
            | Change::Announce { ns, .. } => Some(ns),
        }
    }

    /// Execution order within one namespace's changes: namespace, namespace-wide sysctls,
    /// OVS ports out (before their devices: a port whose device is gone could no longer be
    /// found), stale devices out, OVS ports in (all in one transaction), devices in and fixed,
    /// device sysctls, addresses, routes, rules, neighbours, then the NAT rules, and only then
    /// floating IP addresses (a floating IP never answers before its DNAT exists), removals,
    /// conntrack cleanup, daemons (once their devices, addresses and rules exist; stopped
    /// first of all, so that radvd still has its device to send its last advertisement),
    /// the conntrackd sync (once conntrackd runs), announcements.
    pub fn rank(&self) -> u8 {
        match self {
            Change::CreateNamespace { .. } => 0,
            Change::SetSysctl { key, .. } if key.device().is_none() => 1,
            Change::StopDaemon { .. } => 2,
            Change::UnplugOvsPort { .. } => 3,
            Change::DeleteDevice { .. } | Change::DeleteHostEnd { .. } => 4,
            Change::PlugOvsPort { .. } => 5,
            Change::CreatePort { .. }
            | Change::CreateLink { .. }
            | Change::AttachOvsDevice { .. } => 6,
            Change::SetDevice { .. } | Change::SetHostEnd { .. } => 7,
            Change::SetSysctl { .. } => 8,
            Change::AddAddress {
                floating: false, ..
            } => 9,
            Change::ReplaceRoute { .. } => 10,
            Change::AddRule { .. } => 11,
            Change::SetNeighbour { .. } => 12,
            Change::Iptables { .. } => 13,
            Change::AddAddress { floating: true, .. } => 14,
            Change::DeleteAddress { .. } => 15,
            Change::DeleteRoute { .. } => 16,
            Change::DeleteRule { .. } => 17,
            Change::DeleteNeighbour { .. } => 18,
            Change::FlushConntrack { .. } => 19,
            Change::StartDaemon { .. } | Change::ReloadDaemon { .. } => 20,
            Change::SyncConntrackd { .. } => 21,
            Change::DeleteNamespace { .. } => 22,
            Change::Announce { .. } => 23,
        }
    }

    /// The kind as a short word (metrics, drift classes).
    pub fn kind(&self) -> &'static str {
        match self {
            Change::CreateNamespace { .. } | Change::DeleteNamespace { .. } => "namespace",
            Change::SetSysctl { .. } => "sysctl",
            Change::PlugOvsPort { .. } | Change::UnplugOvsPort { .. } => "ovs-port",
            Change::CreatePort { .. }
            | Change::AttachOvsDevice { .. }
            | Change::CreateLink { .. }
            | Change::DeleteDevice { .. }
            | Change::DeleteHostEnd { .. }
            | Change::SetDevice { .. }
            | Change::SetHostEnd { .. } => "device",
            Change::AddAddress { .. } | Change::DeleteAddress { .. } => "address",
            Change::ReplaceRoute { .. } | Change::DeleteRoute { .. } => "route",
            Change::AddRule { .. } | Change::DeleteRule { .. } => "rule",
            Change::SetNeighbour { .. } | Change::DeleteNeighbour { .. } => "neighbour",
            Change::Iptables { .. } => "iptables",
            Change::FlushConntrack { .. } => "conntrack",
            Change::StartDaemon { .. }
            | Change::ReloadDaemon { .. }
            | Change::StopDaemon { .. } => "daemon",
            Change::SyncConntrackd { .. } => "conntrackd-sync",
            Change::Announce { .. } => "announce",
        }
    }

    /// Side effects only (conntrack cleanup, announcements, the conntrackd sync that follows
    /// a VRRP transition): they repair nothing another program undid, so they do not count
    /// as drift.
    pub fn is_side_effect(&self) -> bool {
        matches!(
            self,
            Change::FlushConntrack { .. } | Change::Announce { .. } | Change::SyncConntrackd { .. }
        )
    }
}

fn join<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::CreateNamespace { ns } => write!(f, "ip netns add {ns}"),
            Change::DeleteNamespace { ns } => write!(f, "ip netns del {ns}"),
            Change::StartDaemon {
                ns,
                router,
                service,
                ..
            } => write!(f, "{ns}: start {service} of router {router}"),
            Change::ReloadDaemon {
                ns,
                router,
                service,
                ..
            } => write!(
                f,
                "{ns}: reload {service} of router {router} (config changed)"
            ),
            Change::StopDaemon {
                ns,
                router,
                service,
            } => write!(f, "{ns}: stop {service} of router {router}"),
            Change::SyncConntrackd { ns, router, role } => {
                write!(f, "{ns}: conntrackd sync of router {router} as {role}:")?;
                for o in role.options() {
                    write!(f, " conntrackd -C <conf> {o};")?;
                }
                Ok(())
            }
            Change::SetSysctl { ns, key, value } => {
                write!(f, "{ns}: sysctl -w {}={value}", key.name())
            }
            Change::CreatePort {
                ns,
                dev,
                host_end,
                bridge,
                mtu,
                mac,
                addresses,
                ..
            } => {
                write!(
                    f,
                    "{ns}: add port {dev} (host end {host_end} on {bridge}) mtu {mtu}"
                )?;
                if let Some(m) = mac {
                    write!(f, " address {m}")?;
                }
                if !addresses.is_empty() {
                    write!(f, " with {}", join(addresses))?;
                }
                Ok(())
            }
            Change::PlugOvsPort {
                bridge,
                port,
                port_id,
                mac,
            } => write!(
                f,
                "host: ovs-vsctl --may-exist add-port {bridge} {port} -- set Interface {port} \
                 type=internal external_ids:iface-id={port_id} external_ids:iface-status=active \
                 external_ids:attached-mac={mac}"
            ),
            Change::UnplugOvsPort { bridge, port } => {
                write!(f, "host: ovs-vsctl --if-exists del-port {bridge} {port}")
            }
            Change::AttachOvsDevice {
                ns,
                dev,
                mtu,
                mac,
                addresses,
                ..
            } => {
                write!(
                    f,
                    "{ns}: ip link set {dev} netns {ns} (from the host); ip link set {dev}"
                )?;
                if let Some(m) = mac {
                    write!(f, " address {m}")?;
                }
                write!(f, " mtu {mtu} up")?;
                if !addresses.is_empty() {
                    write!(f, " with {}", join(addresses))?;
                }
                Ok(())
            }
            Change::CreateLink {
                ns,
                dev,
                peer,
                peer_ns,
                mtu,
            } => {
                write!(
                    f,
                    "{ns}: ip link add {dev} type veth peer name {peer} netns {peer_ns}"
                )?;
                if let Some(m) = mtu {
                    write!(f, " mtu {m}")?;
                }
                Ok(())
            }
            Change::DeleteDevice { ns, dev, .. } => write!(f, "{ns}: ip link del {dev}"),
            Change::DeleteHostEnd { dev } => write!(f, "host: ip link del {dev}"),
            Change::SetDevice {
                ns,
                dev,
                mtu,
                mac,
                up,
            } => {
                write!(f, "{ns}: ip link set {dev}")?;
                if let Some(m) = mtu {
                    write!(f, " mtu {m}")?;
                }
                if let Some(m) = mac {
                    write!(f, " address {m}")?;
                }
                if *up {
                    write!(f, " up")?;
                }
                Ok(())
            }
            Change::SetHostEnd {
                dev,
                bridge,
                mtu,
                up,
            } => {
                write!(f, "host: ip link set {dev}")?;
                if let Some(b) = bridge {
                    write!(f, " master {b}")?;
                }
                if let Some(m) = mtu {
                    write!(f, " mtu {m}")?;
                }
                if *up {
                    write!(f, " up")?;
                }
                Ok(())
            }
            Change::AddAddress { ns, dev, net, .. } => {
                write!(f, "{ns}: ip addr add {net} dev {dev}")
            }
            Change::DeleteAddress { ns, dev, net, .. } => {
                write!(f, "{ns}: ip addr del {net} dev {dev}")
            }
            Change::ReplaceRoute { ns, route } => {
                write!(f, "{ns}: ip route replace {}", RouteText(route))
            }
            Change::DeleteRoute { ns, route } => {
                write!(f, "{ns}: ip route del {}", RouteText(route))
            }
            Change::AddRule { ns, rule } => write!(f, "{ns}: ip rule add {}", rule),
            Change::DeleteRule { ns, rule } => write!(f, "{ns}: ip rule del {}", rule),
            Change::SetNeighbour { ns, dev, ip, mac } => write!(
                f,
                "{ns}: ip neigh replace {ip} lladdr {mac} nud permanent dev {dev}"
            ),
            Change::DeleteNeighbour { ns, dev, ip } => {
                write!(f, "{ns}: ip neigh del {ip} dev {dev}")
            }
            Change::Iptables { ns, family, lines } => {
                write!(f, "{ns}: {family} iptables-restore --noflush <<")?;
                for l in lines {
                    write!(f, "\n    {l}")?;
                }
                Ok(())
            }
            Change::FlushConntrack { ns, ip } => {
                write!(f, "{ns}: conntrack -D -d {ip}; conntrack -D -q {ip}")
            }
            Change::Announce { ns, dev, addresses } => {
                write!(f, "{ns}: announce {} on {dev}", join(addresses))
            }
        }
    }
}

/// A route as `ip route` prints it (without the command).
#[derive(Debug)]
pub struct RouteText<'a>(pub &'a Route);

impl fmt::Display for RouteText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.0;
        if r.dst.prefix_len() == 0 {
            f.write_str("default")?;
            if r.dst.addr().is_ipv6() {
                f.write_str(" (v6)")?;
            }
        } else {
            write!(f, "{}", r.dst)?;
        }
        if let Some(g) = r.gateway {
            write!(f, " via {g}")?;
        }
        if let Some(d) = &r.dev {
            write!(f, " dev {d}")?;
        }
        for h in &r.multipath {
            write!(f, " nexthop via {}", h.gateway)?;
            if let Some(d) = &h.dev {
                write!(f, " dev {d}")?;
            }
        }
        if r.scope_link {
            f.write_str(" scope link")?;
        }
        if r.table != MAIN_TABLE {
            write!(f, " table {}", r.table)?;
        }
        if let Some(m) = r.metric {
            write!(f, " metric {m}")?;
        }
        match r.protocol {
            Protocol::Static => {}
            Protocol::Kernel => f.write_str(" proto kernel")?,
            Protocol::Boot => f.write_str(" proto boot")?,
            Protocol::Ra => f.write_str(" proto ra")?,
            Protocol::Redirect => f.write_str(" proto redirect")?,
            Protocol::Other(n) => write!(f, " proto {n}")?,
        }
        Ok(())
    }
}
