//! The host config: `agent` (strict: unknown keys are errors) and `routers` in the exact shape
//! neutron-server sends to an L3 agent (fields l3agent does not use are accepted and ignored).
//! Everything is validated before anything touches the kernel, and every problem is reported
//! with its path in the file (`routers[0]._interfaces[1].fixed_ips[0].ip_address: ...`).
//!
//! The `*Doc` structs are the file as written (strings, so that a bad id or MAC is reported by
//! path instead of failing to parse); the validated types carry the typed ids and MAC of
//! `l3agent_types`. Besides each value, validation checks what would otherwise fail later or
//! silently: device names that collide after truncation (D-06, B-10: `qr-`/`sg-`/`fg-` in one
//! router, `tap` host ends on the host, `rfp-`/`fpr-` between DVR routers), one FIP agent
//! gateway port per external network, a floating IP in one router only, an extra route listed
//! twice, and a distributed router on a `legacy` agent (D-01).
//!
//! The interface driver (`agent.interface_driver`): `linuxbridge` (default) needs a bridge per
//! network in `agent.bridges`; `openvswitch` puts every port on `agent.integration_bridge`
//! (default `br-int`) through the OVSDB at `agent.ovsdb` (`unix:PATH`, default
//! `unix:/run/openvswitch/db.sock`). The settings of the driver not chosen are refused.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, BuildHasherDefault};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;

use ipnet::IpNet;
use l3agent_types::{
    Echo, FloatingIpId, IfName, InvalidName, MacAddr, NetnsName, NetworkId, PortId, RouterId,
    SubnetId,
};
use serde::{Deserialize, Serialize};

pub use l3agent_daemons::radvd::RaMode;

/// `$outer(Arc<$inner>)`: reads as `$inner`, copies on write, debug-prints as `$inner`.
/// `@read` makes the reading half alone, for a `$outer` that keeps more than its `$inner`
/// (a [`Router`] and its claim hashes) and writes its own `DerefMut` and `From`.
macro_rules! shared {
    ($outer:ident, $inner:ident) => {
        shared!(@read $outer, $inner);

        impl std::ops::DerefMut for $outer {
            fn deref_mut(&mut self) -> &mut $inner {
                Arc::make_mut(&mut self.0)
            }
        }

        impl From<$inner> for $outer {
            fn from(fields: $inner) -> $outer {
                $outer(Arc::new(fields))
            }
        }
    };
    (@read $outer:ident, $inner:ident) => {
        impl std::ops::Deref for $outer {
            type Target = $inner;
            fn deref(&self) -> &$inner {
                &self.0
            }
        }

        impl std::fmt::Debug for $outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }

        impl $outer {
            /// Whether `self` and `other` are one shared value (not only equal ones).
            pub fn same(&self, other: &$outer) -> bool {
                Arc::ptr_eq(&self.0, &other.0)
            }
        }
    };
}

use crate::spec::names;

/// One problem in the config, with its path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    /// Where (e.g. `routers[0].gw_port.mac_address`).
    pub path: String,
    /// What is wrong, with the value.
    pub message: String,
}

/// The L3 agent mode (D-01; `dvr_no_external` is not supported yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentMode {
    /// Legacy (centralised) routers.
    Legacy,
    /// DVR compute node.
    Dvr,
    /// DVR network node (hosts the snat- namespaces).
    DvrSnat,
}

/// How router ports are plugged (Neutron's `interface_driver`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InterfaceDriver {
    /// A veth whose host end is enslaved to the Linux bridge of the port's network
    /// (`agent.bridges`): for standalone use.
    #[default]
    Linuxbridge,
    /// Neutron's `OVSInterfaceDriver`: an OVS internal port on the integration bridge, with
    /// the `external_ids` neutron-openvswitch-agent wires it by, moved into the router's
    /// namespace.
    Openvswitch,
}

/// `agent.integration_bridge` when none is given (Neutron's `[OVS] integration_bridge`).
pub const DEFAULT_INTEGRATION_BRIDGE: &str = "br-int";

/// `agent.ovsdb` when none is given: ovsdb-server's socket where Open vSwitch packages put it.
pub const DEFAULT_OVSDB: &str = "unix:/run/openvswitch/db.sock";

/// The longest unix socket path (`sun_path` holds 108 bytes with the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// `agent:` as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentDoc {
    /// Agent mode.
    pub mode: AgentMode,
    /// This host's name (matched against `gw_port_host` and FIP `host`).
    pub host: String,
    /// Where allocator and state files live.
    pub state_path: PathBuf,
    /// Network id → Linux bridge in l3agent's own namespace (`linuxbridge` driver only).
    /// Shared: a host of 1,000 networks has 1,000 of them, which a config rebuilt around one
    /// changed router dict keeps without copying.
    #[serde(default)]
    pub bridges: Arc<BTreeMap<String, String>>,
    /// `linuxbridge` (absent) or `openvswitch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_driver: Option<InterfaceDriver>,
    /// The OVS bridge every port goes on (`openvswitch` only; default `br-int`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integration_bridge: Option<String>,
    /// ovsdb-server's socket as `unix:PATH` (`openvswitch` only; default
    /// `unix:/run/openvswitch/db.sock`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ovsdb: Option<String>,
    /// The metadata proxy: an haproxy per router forwarding 169.254.169.254:80 to the
    /// metadata agent's unix socket (NEUTRON-OPS §3). Absent: no proxy and no metadata rules
    /// beyond the DROP of marked requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_proxy: Option<MetadataProxyDoc>,
    /// Router advertisements: a radvd per router with IPv6 internal subnets (NEUTRON-OPS §2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_advertisements: Option<RouterAdvertisementsDoc>,
    /// VRRP settings of HA routers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha: Option<HaDoc>,
    /// Exact per-floating-IP traffic counters (default false): each router with floating IPs
    /// served here gets a `neutron-l3-agent-fip-acct` chain in its `qrouter-` filter table,
    /// jumped to first from `neutron-l3-agent-FORWARD`, with two counting rules per floating
    /// IP (`-d FIXED/32 -i EXT`, `-s FIXED/32 -o EXT`; `EXT` is `qg-`, or `rfp-` for DVR),
    /// and the floating IPs' traffic metrics count all their packets instead of their
    /// connections (the first packets their NAT rules see). What Neutron's metering agent
    /// gives; Neutron's L3 agent has no such option.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_accounting: Option<bool>,
}

/// `agent.ha`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HaDoc {
    /// `ha_vrrp_auth_type`: `PASS` (default) or `AH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vrrp_auth_type: Option<String>,
    /// `ha_vrrp_auth_password` (absent: no authentication). Never logged; keepalived's
    /// config holding it is 0600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vrrp_auth_password: Option<String>,
    /// `ha_vrrp_advert_int` (default 2 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vrrp_advert_int: Option<u32>,
    /// `ha_vrrp_health_check_interval` (default 0: off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vrrp_health_check_interval: Option<u32>,
    /// `ha_conntrackd_enabled` (default false): a conntrackd per HA router syncing its
    /// connection tracking table with the other nodes, so that NAT'd connections survive a
    /// failover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conntrackd_enabled: Option<bool>,
    /// `ha_conntrackd_hashsize` (default 32768).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conntrackd_hashsize: Option<u32>,
    /// `ha_conntrackd_hashlimit` (default 131072).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conntrackd_hashlimit: Option<u32>,
    /// `ha_conntrackd_unix_backlog` (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conntrackd_unix_backlog: Option<u32>,
    /// `ha_conntrackd_socketbuffersize` (default 262142).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conntrackd_socketbuffersize: Option<u32>,
    /// `ha_conntrackd_socketbuffersize_max_grown` (default 655355).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conntrackd_socketbuffersize_max_grown: Option<u32>,
    /// `ha_conntrackd_ipv4_mcast_addr` (default 225.0.0.50): an IPv4 multicast address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conntrackd_ipv4_mcast_addr: Option<String>,
    /// `ha_conntrackd_group` (default 3780): the base UDP port, plus the router's VRID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conntrackd_group: Option<u32>,
    /// `ha_conntrackd_sndsocketbuffer` (default 24985600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conntrackd_sndsocketbuffer: Option<u32>,
    /// `ha_conntrackd_rcvsocketbuffer` (default 24985600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conntrackd_rcvsocketbuffer: Option<u32>,
}

impl std::fmt::Debug for HaDoc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HaDoc")
            .field("vrrp_auth_type", &self.vrrp_auth_type)
            .field(
                "vrrp_auth_password",
                &self.vrrp_auth_password.as_ref().map(|_| "<redacted>"),
            )
            .field("vrrp_advert_int", &self.vrrp_advert_int)
            .field(
                "vrrp_health_check_interval",
                &self.vrrp_health_check_interval,
            )
            .field("conntrackd_enabled", &self.conntrackd_enabled)
            .field("conntrackd_hashsize", &self.conntrackd_hashsize)
            .field("conntrackd_hashlimit", &self.conntrackd_hashlimit)
            .field("conntrackd_unix_backlog", &self.conntrackd_unix_backlog)
            .field(
                "conntrackd_socketbuffersize",
                &self.conntrackd_socketbuffersize,
            )
            .field(
                "conntrackd_socketbuffersize_max_grown",
                &self.conntrackd_socketbuffersize_max_grown,
            )
            .field(
                "conntrackd_ipv4_mcast_addr",
                &self.conntrackd_ipv4_mcast_addr,
            )
            .field("conntrackd_group", &self.conntrackd_group)
            .field(
                "conntrackd_sndsocketbuffer",
                &self.conntrackd_sndsocketbuffer,
            )
            .field(
                "conntrackd_rcvsocketbuffer",
                &self.conntrackd_rcvsocketbuffer,
            )
            .finish()
    }
}

/// `agent.metadata_proxy`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataProxyDoc {
    /// The metadata agent's unix socket (Neutron's `metadata_proxy_socket`, default
    /// `$state_path/metadata_proxy` of neutron's state path).
    pub socket: PathBuf,
    /// The user haproxy drops to (`metadata_proxy_user`; default `root`: it must be able to
    /// connect to the socket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The group haproxy drops to (`metadata_proxy_group`; default `root`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The port haproxy listens on in the router namespace (`metadata_port`, default 9697).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// `agent.router_advertisements`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouterAdvertisementsDoc {
    /// Send router advertisements at all (default true, as Neutron always does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// `min_rtr_adv_interval` (seconds, default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_interval: Option<u32>,
    /// `max_rtr_adv_interval` (seconds, default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_interval: Option<u32>,
}

/// The whole file as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigDoc {
    /// The agent.
    pub agent: AgentDoc,
    /// Neutron router dicts. Required: a host without routers says `routers: []`.
    #[serde(deserialize_with = "l3agent_doc::explicit_list")]
    pub routers: Vec<RouterDoc>,
}

fn yes() -> bool {
    true
}

/// A router dict (Neutron's shape; unknown fields ignored), shared like [`Router`]: a config
/// rebuilt around one changed dict keeps the others without copying them.
#[derive(Clone, PartialEq, Eq)]
pub struct RouterDoc(Arc<RouterDocFields>);

shared!(RouterDoc, RouterDocFields);

impl<'de> Deserialize<'de> for RouterDoc {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RouterDoc, D::Error> {
        RouterDocFields::deserialize(d).map(RouterDoc::from)
    }
}

impl Serialize for RouterDoc {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// The fields of a [`RouterDoc`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct RouterDocFields {
    /// Router id.
    pub id: String,
    /// Admin state.
    #[serde(default = "yes")]
    pub admin_state_up: bool,
    /// DVR router.
    #[serde(default)]
    pub distributed: bool,
    /// HA router (keepalived/VRRP across network nodes, NEUTRON-OPS §1).
    #[serde(default)]
    pub ha: bool,
    /// The VRRP router id of an HA router (1..254, unique on its HA network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha_vr_id: Option<u32>,
    /// This host's port on the HA network (`ha-` device).
    #[serde(
        default,
        rename = "_ha_interface",
        skip_serializing_if = "Option::is_none"
    )]
    pub ha_interface: Option<PortDoc>,
    /// SNAT (top-level form).
    #[serde(default)]
    pub enable_snat: Option<bool>,
    /// `external_gateway_info` (may carry `enable_snat`).
    #[serde(default)]
    pub external_gateway_info: Option<GatewayInfoDoc>,
    /// External gateway port.
    #[serde(default)]
    pub gw_port: Option<PortDoc>,
    /// Host of the centralised SNAT (DVR).
    #[serde(default)]
    pub gw_port_host: Option<String>,
    /// Internal ports.
    #[serde(
        default,
        deserialize_with = "l3agent_doc::explicit_list",
        rename = "_interfaces"
    )]
    pub interfaces: Vec<PortDoc>,
    /// SNAT ports (DVR).
    #[serde(
        default,
        deserialize_with = "l3agent_doc::explicit_list",
        rename = "_snat_router_interfaces"
    )]
    pub snat_interfaces: Vec<PortDoc>,
    /// FIP agent gateway ports (DVR).
    #[serde(
        default,
        deserialize_with = "l3agent_doc::explicit_list",
        rename = "_floatingip_agent_interfaces"
    )]
    pub fip_agent_interfaces: Vec<PortDoc>,
    /// Floating IPs.
    #[serde(
        default,
        deserialize_with = "l3agent_doc::explicit_list",
        rename = "_floatingips"
    )]
    pub floatingips: Vec<FipDoc>,
    /// Extra routes.
    #[serde(default, deserialize_with = "l3agent_doc::explicit_list")]
    pub routes: Vec<RouteDoc>,
    /// DVR: the tenant ports' addresses on the router's subnets, as permanent neighbours on
    /// their `qr-` device (NEUTRON-OPS §8.1). Not a field of Neutron's router dict: the
    /// Neutron front end fills it from `get_ports_by_subnet` and `add_arp_entry` /
    /// `del_arp_entry`; a hand-written config may list them too.
    #[serde(
        default,
        deserialize_with = "l3agent_doc::explicit_list",
        rename = "_arp_table",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub arp_table: Vec<ArpEntryDoc>,
}

/// One DVR ARP entry (`add_arp_entry`'s `arp_table`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ArpEntryDoc {
    /// The tenant port's address.
    pub ip_address: String,
    /// Its MAC (or the allowed address pair's).
    pub mac_address: String,
    /// The subnet it is in.
    pub subnet_id: String,
}

/// `external_gateway_info`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct GatewayInfoDoc {
    /// SNAT.
    #[serde(default)]
    pub enable_snat: Option<bool>,
}

/// A port dict.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct PortDoc {
    /// Port id.
    pub id: String,
    /// Network id.
    pub network_id: String,
    /// MAC.
    pub mac_address: String,
    /// MTU.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Admin state.
    #[serde(default = "yes")]
    pub admin_state_up: bool,
    /// Fixed IPs.
    #[serde(default, deserialize_with = "l3agent_doc::explicit_list")]
    pub fixed_ips: Vec<FixedIpDoc>,
    /// Subnets of the port.
    #[serde(default, deserialize_with = "l3agent_doc::explicit_list")]
    pub subnets: Vec<SubnetDoc>,
    /// Extra subnets (on-link routes).
    #[serde(default, deserialize_with = "l3agent_doc::explicit_list")]
    pub extra_subnets: Vec<ExtraSubnetDoc>,
    /// Address scope per IP version, `{"4": <scope id>|null, "6": ...}` (NEUTRON-OPS §4).
    #[serde(default)]
    pub address_scopes: BTreeMap<String, Option<String>>,
}

/// A fixed IP.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct FixedIpDoc {
    /// Address.
    pub ip_address: String,
    /// Prefix length (else the subnet's).
    #[serde(default)]
    pub prefixlen: Option<u8>,
    /// Subnet id.
    pub subnet_id: String,
}

/// A subnet.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct SubnetDoc {
    /// Subnet id.
    pub id: String,
    /// CIDR.
    pub cidr: String,
    /// Gateway.
    #[serde(default)]
    pub gateway_ip: Option<String>,
    /// IPv6 router advertisement mode: `slaac`, `dhcpv6-stateful`, `dhcpv6-stateless`, or
    /// absent/null (the router still advertises itself, as Neutron's radvd does).
    #[serde(default)]
    pub ipv6_ra_mode: Option<String>,
    /// IPv6 address mode (the DHCP agent's concern; validated, not used here).
    #[serde(default)]
    pub ipv6_address_mode: Option<String>,
    /// DNS servers (sent as RDNSS on `slaac` subnets).
    #[serde(default)]
    pub dns_nameservers: Vec<String>,
}

/// An extra subnet.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ExtraSubnetDoc {
    /// CIDR.
    pub cidr: String,
}

/// A floating IP.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct FipDoc {
    /// Id.
    pub id: String,
    /// The floating address.
    pub floating_ip_address: String,
    /// The fixed address it maps to (absent: not associated).
    #[serde(default)]
    pub fixed_ip_address: Option<String>,
    /// The port.
    #[serde(default)]
    pub port_id: Option<String>,
    /// DVR: the host of the port.
    #[serde(default)]
    pub host: Option<String>,
    /// The address scope of the fixed IP (NEUTRON-OPS §4).
    #[serde(default)]
    pub fixed_ip_address_scope: Option<String>,
}

/// An extra route.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct RouteDoc {
    /// Destination CIDR.
    pub destination: String,
    /// Next hop.
    pub nexthop: String,
}

/// A subnet, validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Subnet {
    /// Id.
    pub id: SubnetId,
    /// CIDR.
    pub cidr: IpNet,
    /// Gateway.
    pub gateway: Option<IpAddr>,
    /// IPv6 router advertisement mode (`None`: not given; IPv4 subnets never have one).
    pub ra_mode: Option<RaMode>,
    /// DNS servers.
    pub dns_nameservers: Vec<IpAddr>,
}

/// A port, validated, with its device names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Port {
    /// Id.
    pub id: PortId,
    /// Network id.
    pub network_id: NetworkId,
    /// MAC (unicast, non-zero).
    pub mac: MacAddr,
    /// MTU (1500 when the dict has none).
    pub mtu: u32,
    /// Addresses with prefix length.
    pub ips: Vec<IpNet>,
    /// Subnets.
    pub subnets: Vec<Subnet>,
    /// Extra subnets.
    pub extra_subnets: Vec<IpNet>,
    /// Address scope per IP version (keys 4 and 6, always both; `None`: no scope), from the
    /// dict's `address_scopes` (absent: both `None`). Drives the address-scope marks
    /// (NEUTRON-OPS §4, D-42) and the DVR fast path (D-23).
    pub address_scopes: BTreeMap<u8, Option<String>>,
    /// Device in the router-side namespace (`qr-`, `qg-`, `sg-`, `fg-` + id, 14 chars); with
    /// the `openvswitch` driver also the name of its OVS port.
    pub dev: IfName,
    /// Host end of the veth (`tap` + id, 14 chars), on `bridge` (`linuxbridge` driver).
    pub host_dev: IfName,
    /// The bridge of its network (`linuxbridge`), or the integration bridge (`openvswitch`).
    pub bridge: IfName,
    /// How it is plugged.
    pub driver: InterfaceDriver,
}

impl Port {
    /// The address scope of one IP version (4 or 6).
    pub fn scope(&self, version: u8) -> Option<&str> {
        self.address_scopes.get(&version)?.as_deref()
    }

    /// Whether one of the port's subnets (or extra subnets) contains `ip`: the port's device
    /// is the one the kernel resolves a next hop `ip` to.
    pub fn reaches(&self, ip: &IpAddr) -> bool {
        self.subnets.iter().any(|s| s.cidr.contains(ip))
            || self.extra_subnets.iter().any(|n| n.contains(ip))
    }
}

/// A floating IP, validated (IPv4, associated).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fip {
    /// Id.
    pub id: FloatingIpId,
    /// Floating address.
    pub floating: Ipv4Addr,
    /// Fixed address.
    pub fixed: Ipv4Addr,
    /// DVR host.
    pub host: Option<String>,
    /// The address scope of the fixed IP (`None`: no scope), NEUTRON-OPS §4.
    pub fixed_ip_address_scope: Option<String>,
}

impl Fip {
    /// Whether a DVR host serves this floating IP: its `host` is this host, or it has none
    /// (a hand-written config; Neutron always names the host of a bound port).
    pub fn is_local(&self, host: &str) -> bool {
        self.host.as_deref().is_none_or(|h| h == host)
    }
}

/// A router, validated: shared, so that a new config keeps the routers that did not change
/// without copying them (a clone is a reference count, an unchanged router compares equal by
/// address, and a write through `DerefMut` copies first). Hashes as its fields.
///
/// It also keeps the hashes of its claims (`claim_hashes`), made when it is validated
/// and shared by its clones: a reload for one router's edit finds the unchanged routers that
/// share a claim with it by these, without making every router's claims again (half of such a
/// reload's validation at 1,000 routers: 1.2 ms to 0.65 ms). They are no part of its value
/// (equality, hash and debug print are its fields'), and a write through `DerefMut` drops them
/// (made again when needed).
#[derive(Clone)]
pub struct Router(Arc<RouterFields>, Option<Arc<[u64]>>);

shared!(@read Router, RouterFields);

impl std::ops::DerefMut for Router {
    fn deref_mut(&mut self) -> &mut RouterFields {
        self.1 = None;
        Arc::make_mut(&mut self.0)
    }
}

impl From<RouterFields> for Router {
    fn from(fields: RouterFields) -> Router {
        Router(Arc::new(fields), None)
    }
}

impl PartialEq for Router {
    fn eq(&self, other: &Router) -> bool {
        self.0 == other.0
    }
}

impl Eq for Router {}

impl std::hash::Hash for Router {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

/// The fields of a [`Router`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouterFields {
    /// Id.
    pub id: RouterId,
    /// Admin state.
    pub admin_state_up: bool,
    /// DVR.
    pub distributed: bool,
    /// SNAT for ports without floating IP.
    pub enable_snat: bool,
    /// External gateway.
    pub gw_port: Option<Port>,
    /// DVR SNAT host.
    pub gw_port_host: Option<String>,
    /// Internal ports (admin up).
    pub interfaces: Vec<Port>,
    /// DVR SNAT ports.
    pub snat_interfaces: Vec<Port>,
    /// DVR FIP agent gateway ports.
    pub fip_agent_interfaces: Vec<Port>,
    /// Associated floating IPs.
    pub fips: Vec<Fip>,
    /// Extra routes (destination, next hop), in the dict's order. Several next hops for one
    /// destination are kept: they become one ECMP route (NEUTRON-OPS §7).
    pub routes: Vec<(IpNet, IpAddr)>,
    /// DVR ARP entries: (subnet, address) → MAC.
    pub arp_table: BTreeMap<(SubnetId, IpAddr), MacAddr>,
    /// HA (`ha: true`): the VRRP router id and this host's port on the HA network.
    pub ha: Option<HaRouter>,
}

/// The HA part of a router, validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HaRouter {
    /// `ha_vr_id`.
    pub vr_id: u8,
    /// `_ha_interface` (device `ha-` + id), with one IPv4 address on the HA network.
    pub port: Port,
    /// Its IPv4 address and the HA network.
    pub address: ipnet::Ipv4Net,
}

impl Router {
    /// `qrouter-<id>`.
    pub fn namespace(&self) -> NetnsName {
        names::router_ns(&self.id)
    }

    /// The first IPv4 address of the gateway port (Neutron SNATs to it).
    pub fn gateway_ipv4(&self) -> Option<Ipv4Addr> {
        self.gw_port
            .as_ref()?
            .ips
            .iter()
            .find_map(|n| match n.addr() {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            })
    }

    /// The FIP agent gateway port (`fg-`) of the router's external network on this host, if
    /// the dict carries one (Neutron's `get_floating_agent_gw_interface`).
    pub fn agent_gateway(&self) -> Option<&Port> {
        let net = &self.gw_port.as_ref()?.network_id;
        self.fip_agent_interfaces
            .iter()
            .find(|p| &p.network_id == net)
    }
}

/// The agent, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    /// Mode.
    pub mode: AgentMode,
    /// Host name.
    pub host: String,
    /// State directory.
    pub state_path: PathBuf,
    /// Network id → bridge (`linuxbridge` driver; empty with `openvswitch`).
    pub bridges: Arc<BTreeMap<NetworkId, IfName>>,
    /// How router ports are plugged.
    pub interface_driver: InterfaceDriver,
    /// The integration bridge and its database (`Some` exactly with `openvswitch`).
    pub ovs: Option<IntegrationBridge>,
    /// The metadata proxy (`None`: none).
    pub metadata: Option<MetadataProxy>,
    /// Router advertisements (`None`: disabled).
    pub ra: Option<RaIntervals>,
    /// VRRP settings of HA routers.
    pub ha: HaSettings,
    /// Per-floating-IP accounting rules in the filter table (`agent.traffic_accounting`).
    pub traffic_accounting: bool,
}

/// The VRRP settings of HA routers (Neutron's `ha_vrrp_*`), validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaSettings {
    /// `PASS` or `AH`, with the password (`None`: no authentication).
    pub auth: Option<(
        l3agent_daemons::keepalived::AuthType,
        l3agent_daemons::keepalived::VrrpPassword,
    )>,
    /// `ha_vrrp_advert_int` (seconds, default 2).
    pub advert_int: u32,
    /// `ha_vrrp_health_check_interval` (seconds, 0: none).
    pub health_check_interval: u32,
    /// `ha_conntrackd_enabled` with the `ha_conntrackd_*` options (`None`: no conntrackd).
    pub conntrackd: Option<l3agent_daemons::conntrackd::ConntrackdOptions>,
}

impl Default for HaSettings {
    fn default() -> HaSettings {
        HaSettings {
            auth: None,
            advert_int: 2,
            health_check_interval: 0,
            conntrackd: None,
        }
    }
}

/// The longest `agent.state_path` with which conntrackd's control socket,
/// `<state_path>/daemons/<router id>.conntrackd.ctl`, fits the 107 characters of a unix
/// socket path for every router id (36 characters at most).
pub const CONNTRACKD_MAX_STATE_PATH: usize =
    l3agent_daemons::conntrackd::UNIX_PATH_MAX - "/daemons/".len() - 36 - ".conntrackd.ctl".len();

/// The metadata proxy, validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MetadataProxy {
    /// The metadata agent's socket.
    pub socket: PathBuf,
    /// User haproxy runs as.
    pub user: String,
    /// Group haproxy runs as.
    pub group: String,
    /// The port it listens on.
    pub port: u16,
}

/// radvd's advertisement intervals (seconds), validated as radvd requires them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RaIntervals {
    /// `MinRtrAdvInterval`.
    pub min: u32,
    /// `MaxRtrAdvInterval`.
    pub max: u32,
}

/// Where `openvswitch` plugs router ports: an OVS bridge and the ovsdb-server that holds it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IntegrationBridge {
    /// The bridge (`br-int`).
    pub bridge: IfName,
    /// ovsdb-server's unix socket (`/run/openvswitch/db.sock`).
    pub db: PathBuf,
}

impl Agent {
    /// Whether distributed routers are DVR routers here (`dvr` or `dvr_snat`, D-01).
    pub fn is_dvr(&self) -> bool {
        matches!(self.mode, AgentMode::Dvr | AgentMode::DvrSnat)
    }
}

/// The validated host config.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// The agent.
    pub agent: Agent,
    /// Routers (admin up or down).
    pub routers: Vec<Router>,
    /// The document it came from (kept as the "last applied" state).
    pub doc: ConfigDoc,
}

/// Collects problems with their paths.
#[derive(Default)]
struct Problems(Vec<ConfigError>);

impl Problems {
    fn add(&mut self, path: &str, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.to_owned(),
            message: message.into(),
        });
    }

    /// A rejected name or id: `<field>: invalid value "<value>": <reason>`.
    fn invalid(&mut self, e: InvalidName) {
        self.0.push(ConfigError {
            path: e.field,
            message: format!("invalid value {}: {}", Echo(&e.value), e.reason),
        });
    }

    /// Validates with `check`, recording its error.
    fn check<T>(&mut self, r: Result<T, InvalidName>) -> Option<T> {
        r.map_err(|e| self.invalid(e)).ok()
    }
}

/// An address scope id: held to the same rule as Neutron's other ids ([`RouterId::new`]).
fn scope_id(field: &str, value: &str) -> Result<String, InvalidName> {
    RouterId::new(field, value).map(|_| value.to_owned())
}

fn address_scopes(
    doc: &BTreeMap<String, Option<String>>,
    path: &str,
    p: &mut Problems,
) -> BTreeMap<u8, Option<String>> {
    let mut out = BTreeMap::from([(4, None), (6, None)]);
    for (k, v) in doc {
        let version = match k.as_str() {
            "4" => 4,
            "6" => 6,
            _ => {
                p.add(
                    &format!("{path}.address_scopes"),
                    format!("key {} is not an IP version (\"4\" or \"6\")", Echo(k)),
                );
                continue;
            }
        };
        if let Some(v) = v {
            let field = format!("{path}.address_scopes.{k}");
            out.insert(version, p.check(scope_id(&field, v)));
        }
    }
    out
}

/// Whether `ip` can be a host's address in `net`, as neutron-server would allow it: inside
/// it, unicast, and (IPv4 up to /30) neither its network nor its broadcast address; for
/// IPv6, not the subnet-router anycast address (the network address).
fn host_address(net: &IpNet, ip: IpAddr) -> Result<(), String> {
    if !net.contains(&ip) {
        return Err(format!("{ip} is outside its subnet {net}"));
    }
    if !is_unicast(ip) {
        return Err(format!("{ip} is not a unicast address"));
    }
    match net {
        IpNet::V4(n) if n.prefix_len() <= 30 => {
            if ip == IpAddr::V4(n.network()) {
                return Err(format!("{ip} is the network address of {net}"));
            }
            if ip == IpAddr::V4(n.broadcast()) {
                return Err(format!("{ip} is the broadcast address of {net}"));
            }
        }
        IpNet::V6(n) if n.prefix_len() < 127 && ip == IpAddr::V6(n.network()) => {
            return Err(format!(
                "{ip} is the subnet-router anycast address of {net}"
            ));
        }
        _ => {}
    }
    Ok(())
}

/// Unicast: not unspecified, loopback, multicast or (IPv4) limited broadcast.
fn is_unicast(ip: IpAddr) -> bool {
    !(ip.is_unspecified() || ip.is_loopback() || ip.is_multicast())
        && ip != IpAddr::V4(Ipv4Addr::BROADCAST)
}

/// A host name as Neutron's `host` fields carry it (a hostname or FQDN): 1..=255 characters
/// of `[A-Za-z0-9._-]`, starting with a letter or digit, so that it is safe in a log line and
/// can never read as an option.
fn host_name(value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > 255 {
        return Err(format!("{} must be 1 to 255 characters", Echo(value)));
    }
    if !value.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!(
            "{} must start with a letter or a digit",
            Echo(value)
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!(
            "{}: character {} is not allowed in a host name",
            Echo(value),
            c.escape_default()
        ));
    }
    Ok(())
}

/// `agent.state_path`: absolute and normalised (no `.` or `..` component, no empty component),
/// without control or format characters: the path l3agent writes as root must be exactly the
/// one the operator reads.
fn state_path(path: &std::path::Path) -> Result<(), String> {
    let Some(text) = path.to_str() else {
        return Err("is not UTF-8".to_owned());
    };
    if !path.is_absolute() {
        return Err(format!("{} must be an absolute path", Echo(text)));
    }
    if text.chars().any(l3agent_types::is_hidden) {
        return Err(format!(
            "{} holds a control or format character",
            Echo(text)
        ));
    }
    let normal: PathBuf = path.components().collect();
    let trimmed = if text.len() > 1 {
        text.trim_end_matches('/')
    } else {
        text
    };
    if text.split('/').skip(1).any(|c| c == "..") {
        return Err(format!(
            "{} must not contain `..` (name the directory itself)",
            Echo(text)
        ));
    }
    if text.split('/').skip(1).any(|c| c == ".") || normal.as_os_str() != trimmed {
        return Err(format!(
            "{} is not normalised (write {})",
            Echo(text),
            normal.display()
        ));
    }
    Ok(())
}

/// `ipv6_ra_mode` / `ipv6_address_mode`: one of Neutron's three values, on an IPv6 subnet only.
fn ipv6_mode(
    value: Option<&str>,
    cidr: Option<IpNet>,
    field: &str,
    p: &mut Problems,
) -> Option<RaMode> {
    let value = value?;
    let mode = match RaMode::parse(field, value) {
        Ok(m) => m,
        Err(e) => {
            p.add(field, e.to_string());
            return None;
        }
    };
    if cidr.is_some_and(|c| c.addr().is_ipv4()) {
        p.add(field, "is only allowed on an IPv6 subnet");
        return None;
    }
    Some(mode)
}

/// `agent.metadata_proxy`, validated: an absolute normalised socket path short enough for a
/// unix socket; user and group names as `useradd` allows them (they reach haproxy's config).
fn metadata_proxy(doc: &MetadataProxyDoc, p: &mut Problems) -> Option<MetadataProxy> {
    let before = p.0.len();
    if let Err(why) = state_path(&doc.socket) {
        p.add("agent.metadata_proxy.socket", why);
    } else if doc.socket.as_os_str().len() > MAX_SOCKET_PATH {
        p.add(
            "agent.metadata_proxy.socket",
            format!(
                "{} is longer than a unix socket path can be ({MAX_SOCKET_PATH} bytes)",
                Echo(&doc.socket.display().to_string())
            ),
        );
    }
    let mut name = |field: &str, value: Option<&String>| -> String {
        let value = value.map_or("root", String::as_str);
        let ok = !value.is_empty()
            && value.len() <= 32
            && value.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && value
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'));
        if !ok {
            p.add(
                &format!("agent.metadata_proxy.{field}"),
                format!(
                    "{} is not a user or group name ([a-z_][a-z0-9_-]*, at most 32)",
                    Echo(value)
                ),
            );
        }
        value.to_owned()
    };
    let user = name("user", doc.user.as_ref());
    let group = name("group", doc.group.as_ref());
    let port = doc.port.unwrap_or(9697);
    if port == 0 {
        p.add("agent.metadata_proxy.port", "0 is not a port to listen on");
    }
    (p.0.len() == before).then(|| MetadataProxy {
        socket: doc.socket.clone(),
        user,
        group,
        port,
    })
}

/// `agent.ha`, validated (the password is checked without ever being echoed).
fn ha_settings(doc: Option<&HaDoc>, state_path: &std::path::Path, p: &mut Problems) -> HaSettings {
    use l3agent_daemons::keepalived::{AuthType, VrrpPassword};
    let mut out = HaSettings::default();
    let Some(doc) = doc else {
        return out;
    };
    let kind = match doc.vrrp_auth_type.as_deref() {
        None => Some(AuthType::Pass),
        Some(t) => match AuthType::parse("agent.ha.vrrp_auth_type", t) {
            Ok(k) => Some(k),
            Err(e) => {
                p.add("agent.ha.vrrp_auth_type", e.to_string());
                None
            }
        },
    };
    if let Some(pw) = &doc.vrrp_auth_password {
        match VrrpPassword::new(pw) {
            Ok(pw) => out.auth = kind.map(|k| (k, pw)),
            Err(e) => p.add("agent.ha.vrrp_auth_password", e.to_string()),
        }
    }
    out.advert_int = doc.vrrp_advert_int.unwrap_or(2);
    if !(1..=255).contains(&out.advert_int) {
        p.add(
            "agent.ha.vrrp_advert_int",
            format!("{} is outside 1..255 seconds", out.advert_int),
        );
    }
    out.health_check_interval = doc.vrrp_health_check_interval.unwrap_or(0);
    if out.health_check_interval > 0 {
        p.add(
            "agent.ha.vrrp_health_check_interval",
            "the VRRP health check is not supported yet (0 turns it off)",
        );
    }
    out.conntrackd = conntrackd_options(doc, state_path, p);
    out
}

/// The `agent.ha.conntrackd_*` options when `conntrackd_enabled` (Neutron's
/// `ha_conntrackd_*`, `conf/agent/l3/ha.py`): the counts at least 1 (`min=1`), the multicast
/// address an IPv4 multicast address (Neutron takes any IPv4 address, which conntrackd then
/// fails to join), the group port plus any VRID (up to 254) a UDP port, and the state path
/// short enough for conntrackd's control socket.
fn conntrackd_options(
    doc: &HaDoc,
    state_path: &std::path::Path,
    p: &mut Problems,
) -> Option<l3agent_daemons::conntrackd::ConntrackdOptions> {
    if !doc.conntrackd_enabled.unwrap_or(false) {
        return None;
    }
    let mut o = l3agent_daemons::conntrackd::ConntrackdOptions::default();
    for (field, value, slot) in [
        ("hashsize", doc.conntrackd_hashsize, &mut o.hashsize),
        ("hashlimit", doc.conntrackd_hashlimit, &mut o.hashlimit),
        (
            "unix_backlog",
            doc.conntrackd_unix_backlog,
            &mut o.unix_backlog,
        ),
        (
            "socketbuffersize",
            doc.conntrackd_socketbuffersize,
            &mut o.socketbuffersize,
        ),
        (
            "socketbuffersize_max_grown",
            doc.conntrackd_socketbuffersize_max_grown,
            &mut o.socketbuffersize_max_grown,
        ),
        (
            "sndsocketbuffer",
            doc.conntrackd_sndsocketbuffer,
            &mut o.sndsocketbuffer,
        ),
        (
            "rcvsocketbuffer",
            doc.conntrackd_rcvsocketbuffer,
            &mut o.rcvsocketbuffer,
        ),
    ] {
        match value {
            Some(0) => p.add(
                &format!("agent.ha.conntrackd_{field}"),
                "must be at least 1",
            ),
            Some(v) => *slot = v,
            None => {}
        }
    }
    if let Some(raw) = &doc.conntrackd_ipv4_mcast_addr {
        match raw.parse::<Ipv4Addr>() {
            Ok(a) if a.is_multicast() => o.ipv4_mcast_addr = a,
            Ok(_) => p.add(
                "agent.ha.conntrackd_ipv4_mcast_addr",
                format!(
                    "{} is not an IPv4 multicast address (224.0.0.0/4)",
                    Echo(raw)
                ),
            ),
            Err(_) => p.add(
                "agent.ha.conntrackd_ipv4_mcast_addr",
                format!("{} is not an IPv4 address", Echo(raw)),
            ),
        }
    }
    if let Some(g) = doc.conntrackd_group {
        match u16::try_from(g) {
            Ok(port) if u32::from(port) + 254 <= u32::from(u16::MAX) => o.group = port,
            _ => p.add(
                "agent.ha.conntrackd_group",
                format!(
                    "{g}: the group port plus a router's VRID (up to 254) must be a UDP port, \
                     so at most {}",
                    u16::MAX - 254
                ),
            ),
        }
    }
    let len = state_path.as_os_str().len();
    if len > CONNTRACKD_MAX_STATE_PATH {
        p.add(
            "agent.ha.conntrackd_enabled",
            format!(
                "conntrackd's control socket <state_path>/daemons/<router id>.conntrackd.ctl \
                 must fit the {} characters of a unix socket path: agent.state_path is {len} \
                 characters, at most {CONNTRACKD_MAX_STATE_PATH} fit",
                l3agent_daemons::conntrackd::UNIX_PATH_MAX
            ),
        );
    } else if let Err(e) = l3agent_daemons::ConfPath::new("agent.state_path", state_path) {
        p.add(
            "agent.ha.conntrackd_enabled",
            format!("conntrackd's config names files under agent.state_path: {e}"),
        );
    }
    Some(o)
}

/// `agent.router_advertisements`, validated as radvd checks its intervals: min >= 3,
/// max >= 4 and at most 1800, min <= 0.75 * max.
fn router_advertisements(
    doc: Option<&RouterAdvertisementsDoc>,
    p: &mut Problems,
) -> Option<RaIntervals> {
    let default = RouterAdvertisementsDoc::default();
    let doc = doc.unwrap_or(&default);
    if doc.enabled == Some(false) {
        return None;
    }
    let min = doc.min_interval.unwrap_or(30);
    let max = doc.max_interval.unwrap_or(100);
    let before = p.0.len();
    if min < 3 {
        p.add(
            "agent.router_advertisements.min_interval",
            format!("{min} is below 3 (radvd's minimum)"),
        );
    }
    if !(4..=1800).contains(&max) {
        p.add(
            "agent.router_advertisements.max_interval",
            format!("{max} is outside 4..1800 (radvd's limits)"),
        );
    }
    if u64::from(min) * 4 > u64::from(max) * 3 {
        p.add(
            "agent.router_advertisements.min_interval",
            format!("{min} is above 0.75 x max_interval ({max}), which radvd refuses"),
        );
    }
    (p.0.len() == before).then_some(RaIntervals { min, max })
}

fn port(doc: &PortDoc, path: &str, prefix: &str, agent: &Agent, p: &mut Problems) -> Option<Port> {
    let before = p.0.len();
    let id = p.check(PortId::new(&format!("{path}.id"), &doc.id));
    let network_id = p.check(NetworkId::new(
        &format!("{path}.network_id"),
        &doc.network_id,
    ));
    let mac = p.check(MacAddr::parse_unicast(
        &format!("{path}.mac_address"),
        &doc.mac_address,
    ));
    let mtu = doc.mtu.unwrap_or(1500);
    if !(68..=65535).contains(&mtu) {
        p.add(
            &format!("{path}.mtu"),
            format!("{mtu} is outside 68..65535"),
        );
    }
    if mtu < 1280 && doc.subnets.iter().any(|s| s.cidr.contains(':')) {
        p.add(
            &format!("{path}.mtu"),
            format!("{mtu} is below 1280, the IPv6 minimum, on a port with an IPv6 subnet"),
        );
    }
    let bridge = match &agent.ovs {
        Some(ovs) => Some(ovs.bridge.clone()),
        None => network_id
            .as_ref()
            .and_then(|n| agent.bridges.get(n).cloned()),
    };
    if network_id.is_some()
        && bridge.is_none()
        && agent.interface_driver == InterfaceDriver::Linuxbridge
    {
        p.add(
            &format!("{path}.network_id"),
            format!(
                "network {} has no bridge in agent.bridges",
                Echo(&doc.network_id)
            ),
        );
    }
    let mut subnets = Vec::new();
    for (i, s) in doc.subnets.iter().enumerate() {
        let sp = format!("{path}.subnets[{i}]");
        let id = p.check(SubnetId::new(&format!("{sp}.id"), &s.id));
        let cidr = match s.cidr.parse::<IpNet>() {
            Ok(c) if c == c.trunc() => Some(c),
            Ok(_) => {
                p.add(
                    &format!("{sp}.cidr"),
                    format!("{} has host bits set", Echo(&s.cidr)),
                );
                None
            }
            Err(_) => {
                p.add(
                    &format!("{sp}.cidr"),
                    format!("{} is not a CIDR", Echo(&s.cidr)),
                );
                None
            }
        };
        let gateway = match &s.gateway_ip {
            None => None,
            Some(g) => match g.parse::<IpAddr>() {
                Ok(ip) if cidr.is_none_or(|c| c.addr().is_ipv4() == ip.is_ipv4()) => {
                    if let Some(c) = cidr {
                        if let Err(why) = host_address(&c, ip) {
                            p.add(&format!("{sp}.gateway_ip"), why);
                        }
                    }
                    Some(ip)
                }
                Ok(_) => {
                    p.add(
                        &format!("{sp}.gateway_ip"),
                        format!("{} is not of the subnet's IP version", Echo(g)),
                    );
                    None
                }
                Err(_) => {
                    p.add(
                        &format!("{sp}.gateway_ip"),
                        format!("{} is not an IP address", Echo(g)),
                    );
                    None
                }
            },
        };
        let ra_mode = ipv6_mode(
            s.ipv6_ra_mode.as_deref(),
            cidr,
            &format!("{sp}.ipv6_ra_mode"),
            p,
        );
        ipv6_mode(
            s.ipv6_address_mode.as_deref(),
            cidr,
            &format!("{sp}.ipv6_address_mode"),
            p,
        );
        let mut dns_nameservers = Vec::new();
        for (j, d) in s.dns_nameservers.iter().enumerate() {
            match d.parse::<IpAddr>() {
                Ok(ip) if is_unicast(ip) => dns_nameservers.push(ip),
                _ => p.add(
                    &format!("{sp}.dns_nameservers[{j}]"),
                    format!("{} is not a unicast IP address", Echo(d)),
                ),
            }
        }
        if let (Some(id), Some(cidr)) = (id, cidr) {
            subnets.push(Subnet {
                id,
                cidr,
                gateway,
                ra_mode,
                dns_nameservers,
            });
        }
    }
    let mut ips = Vec::new();
    for (i, f) in doc.fixed_ips.iter().enumerate() {
        let fp = format!("{path}.fixed_ips[{i}]");
        let Ok(ip) = f.ip_address.parse::<IpAddr>() else {
            p.add(
                &format!("{fp}.ip_address"),
                format!("{} is not an IP address", Echo(&f.ip_address)),
            );
            continue;
        };
        let Some(subnet) = subnets.iter().find(|s| s.id.as_str() == f.subnet_id) else {
            p.add(
                &format!("{fp}.subnet_id"),
                format!(
                    "subnet {} is not among the port's subnets",
                    Echo(&f.subnet_id)
                ),
            );
            continue;
        };
        if let Err(why) = host_address(&subnet.cidr, ip) {
            p.add(&format!("{fp}.ip_address"), why);
            continue;
        }
        if let Some(first) = ips.iter().position(|n: &IpNet| n.addr() == ip) {
            p.add(
                &format!("{fp}.ip_address"),
                format!("{ip} is also fixed_ips[{first}]"),
            );
            continue;
        }
        let len = f.prefixlen.unwrap_or(subnet.cidr.prefix_len());
        match IpNet::new(ip, len) {
            Ok(n) if len == subnet.cidr.prefix_len() => ips.push(n),
            _ => p.add(
                &format!("{fp}.prefixlen"),
                format!("{len} does not match subnet {}", subnet.cidr),
            ),
        }
    }
    let mut extra_subnets = Vec::new();
    for (i, e) in doc.extra_subnets.iter().enumerate() {
        match e.cidr.parse::<IpNet>() {
            Ok(c) => extra_subnets.push(c.trunc()),
            Err(_) => p.add(
                &format!("{path}.extra_subnets[{i}].cidr"),
                format!("{} is not a CIDR", Echo(&e.cidr)),
            ),
        }
    }
    let address_scopes = address_scopes(&doc.address_scopes, path, p);
    if p.0.len() != before {
        return None;
    }
    let id = id?;
    Some(Port {
        dev: names::device(prefix, id.as_str()),
        host_dev: names::device("tap", id.as_str()),
        id,
        network_id: network_id?,
        mac: mac?,
        mtu,
        ips,
        subnets,
        extra_subnets,
        address_scopes,
        bridge: bridge?,
        driver: agent.interface_driver,
    })
}

/// Checks between the ports of one router, as neutron-server refuses them: a port id used
/// twice, an address used twice, subnets that overlap (interfaces and gateway; DVR `sg-`
/// ports sit on the interfaces' subnets by design and are checked for addresses only), and a
/// gateway subnet whose `gateway_ip` is the router's own address.
fn ports_of_one_router(ports: &[(String, Port)], gw: Option<&Port>, path: &str, p: &mut Problems) {
    let mut ids: BTreeMap<&PortId, &str> = BTreeMap::new();
    let mut addrs: BTreeMap<IpAddr, &str> = BTreeMap::new();
    for (at, port) in ports {
        if let Some(first) = ids.insert(&port.id, at) {
            p.add(
                &format!("{at}.id"),
                format!("port {} is also {first}", port.id),
            );
        }
        for ip in &port.ips {
            if let Some(first) = addrs.insert(ip.addr(), at) {
                p.add(
                    &format!("{at}.fixed_ips"),
                    format!("{} is also an address of {first}", ip.addr()),
                );
            }
        }
    }
    let mut nets: Vec<(&str, &Subnet)> = Vec::new();
    for (at, port) in ports {
        let routed = port.dev.as_str().starts_with("qr-") || port.dev.as_str().starts_with("qg-");
        if !routed {
            continue;
        }
        for s in &port.subnets {
            if let Some((other, o)) = nets.iter().find(|(_, o)| {
                o.id != s.id && (o.cidr.contains(&s.cidr) || s.cidr.contains(&o.cidr))
            }) {
                p.add(
                    &format!("{at}.subnets"),
                    format!(
                        "subnet {} ({}) overlaps subnet {} ({}) of {other}",
                        s.id, s.cidr, o.id, o.cidr
                    ),
                );
            }
            nets.push((at, s));
        }
    }
    if let Some(g) = gw {
        for s in &g.subnets {
            if let Some(gip) = s.gateway {
                if g.ips.iter().any(|n| n.addr() == gip) {
                    p.add(
                        &format!("{path}.gw_port.subnets"),
                        format!(
                            "the gateway_ip {gip} of subnet {} is the router's own address",
                            s.id
                        ),
                    );
                }
            }
        }
    }
}

/// A floating IP as neutron-server allocates it: on the gateway's network, inside one of the
/// gateway's subnets, a host address of it, and neither the router's gateway address nor the
/// subnet's gateway.
fn floating_ip(gw: Option<&Port>, ip: Ipv4Addr) -> Result<(), String> {
    let Some(gw) = gw else {
        return Err(format!(
            "{ip}: a floating IP needs a router with a gateway (gw_port)"
        ));
    };
    let ip = IpAddr::V4(ip);
    let Some(subnet) = gw.subnets.iter().find(|s| s.cidr.contains(&ip)) else {
        return Err(format!("{ip} is in no subnet of the gateway port"));
    };
    host_address(&subnet.cidr, ip)?;
    if gw.ips.iter().any(|n| n.addr() == ip) {
        return Err(format!("{ip} is the router's gateway address"));
    }
    if subnet.gateway == Some(ip) {
        return Err(format!("{ip} is the gateway_ip of subnet {}", subnet.id));
    }
    Ok(())
}

/// An extra route as neutron-server accepts it: the next hop on-link in one of the router's
/// subnets and not one of its own addresses; the destination not one of its connected subnets
/// (the route would replace the connected route: going back would then fail with "Network is
/// unreachable") and not the default route of a gateway that has one. Returns the field
/// (suffix of the route's path) and why.
fn extra_route(
    ports: &[(String, Port)],
    (dst, nexthop): (IpNet, IpAddr),
) -> Result<(), (&'static str, String)> {
    let routed = || {
        ports
            .iter()
            .filter(|(_, p)| p.dev.as_str().starts_with("qr-") || p.dev.as_str().starts_with("qg-"))
    };
    if routed().any(|(_, p)| p.ips.iter().any(|n| n.addr() == nexthop)) {
        return Err((
            ".nexthop",
            format!("{nexthop} is one of the router's own addresses"),
        ));
    }
    if !routed().any(|(_, p)| p.subnets.iter().any(|s| s.cidr.contains(&nexthop))) {
        return Err((
            ".nexthop",
            format!("{nexthop} is not on-link: it is in none of the router's subnets"),
        ));
    }
    // A next hop is a host of the subnet it is in: not its network or broadcast address.
    if let Some(why) = routed()
        .flat_map(|(_, p)| &p.subnets)
        .filter(|s| s.cidr.contains(&nexthop))
        .find_map(|s| host_address(&s.cidr, nexthop).err())
    {
        return Err((".nexthop", why));
    }
    // The gateway's extra subnets are routes compile writes on qg-: a route to the same
    // destination would replace one (the kernel keeps one route per destination).
    for (at, p) in routed().filter(|(_, p)| p.dev.as_str().starts_with("qg-")) {
        if let Some(e) = p.extra_subnets.iter().find(|e| **e == dst) {
            return Err((
                ".destination",
                format!("{dst} is the extra subnet {e} of {at}: the route would replace it"),
            ));
        }
    }
    if let Some((at, s)) =
        routed().find_map(|(at, p)| p.subnets.iter().find(|s| s.cidr == dst).map(|s| (at, s)))
    {
        return Err((
            ".destination",
            format!(
                "{dst} is the connected subnet {} of {at}: the route would replace it",
                s.id
            ),
        ));
    }
    if dst.prefix_len() == 0 {
        if let Some((at, _)) = routed().find(|(_, p)| {
            p.dev.as_str().starts_with("qg-")
                && p.subnets.iter().any(|s| {
                    s.gateway
                        .is_some_and(|g| g.is_ipv4() == dst.addr().is_ipv4())
                })
        }) {
            return Err((
                ".destination",
                format!("{dst} would replace the default route of {at}"),
            ));
        }
    }
    Ok(())
}

fn router(doc: &RouterDoc, path: &str, agent: &Agent, p: &mut Problems) -> Option<Router> {
    let before = p.0.len();
    let id = p.check(RouterId::new(&format!("{path}.id"), &doc.id));
    if let Some(h) = &doc.gw_port_host {
        if let Err(why) = host_name(h) {
            p.add(&format!("{path}.gw_port_host"), why);
        }
    }
    if doc.distributed && !agent.is_dvr() {
        p.add(
            &format!("{path}.distributed"),
            "a distributed router needs a dvr or dvr_snat agent, and agent.mode is legacy",
        );
    }
    // Ports with their paths (admin-down ports are skipped: Neutron does not plug them).
    let mut located: Vec<(String, Port)> = Vec::new();
    let mut ports = |list: &[PortDoc], field: &str, prefix: &str, p: &mut Problems| -> Vec<Port> {
        let out: Vec<(String, Port)> = list
            .iter()
            .enumerate()
            .filter(|(_, d)| d.admin_state_up)
            .filter_map(|(i, d)| {
                let at = format!("{path}.{field}[{i}]");
                port(d, &at, prefix, agent, p).map(|port| (at, port))
            })
            .collect();
        located.extend(out.iter().cloned());
        out.into_iter().map(|(_, port)| port).collect()
    };
    let interfaces = ports(&doc.interfaces, "_interfaces", "qr-", p);
    let snat_interfaces = ports(&doc.snat_interfaces, "_snat_router_interfaces", "sg-", p);
    let fip_agent_interfaces = ports(
        &doc.fip_agent_interfaces,
        "_floatingip_agent_interfaces",
        "fg-",
        p,
    );
    let ha = ha_router(doc, path, agent, p);
    if let Some(h) = &ha {
        located.push((format!("{path}._ha_interface"), h.port.clone()));
    }
    let gw_port = doc
        .gw_port
        .as_ref()
        .and_then(|g| port(g, &format!("{path}.gw_port"), "qg-", agent, p));
    if let Some(g) = &gw_port {
        located.push((format!("{path}.gw_port"), g.clone()));
    }
    ports_of_one_router(&located, gw_port.as_ref(), path, p);
    // Device names are truncated ids (Neutron D-06, B-10): two ports sharing 11 id characters
    // would collide in one namespace. Refused, never silently merged.
    for (field, list) in [
        ("_interfaces", &interfaces),
        ("_snat_router_interfaces", &snat_interfaces),
        ("_floatingip_agent_interfaces", &fip_agent_interfaces),
    ] {
        let mut seen: BTreeMap<&IfName, &PortId> = BTreeMap::new();
        for port in list.iter() {
            if let Some(other) = seen.insert(&port.dev, &port.id) {
                p.add(
                    &format!("{path}.{field}"),
                    format!(
                        "ports {other} and {} both map to device {}",
                        port.id, port.dev
                    ),
                );
            }
        }
    }
    let mut fips = Vec::new();
    for (i, f) in doc.floatingips.iter().enumerate() {
        let fp = format!("{path}._floatingips[{i}]");
        let fid = p.check(FloatingIpId::new(&format!("{fp}.id"), &f.id));
        if let Some(h) = &f.host {
            if let Err(why) = host_name(h) {
                p.add(&format!("{fp}.host"), why);
            }
        }
        if let Some(port) = &f.port_id {
            p.check(PortId::new(&format!("{fp}.port_id"), port));
        }
        let Some(fixed) = &f.fixed_ip_address else {
            continue;
        };
        let scope = f
            .fixed_ip_address_scope
            .as_deref()
            .and_then(|s| p.check(scope_id(&format!("{fp}.fixed_ip_address_scope"), s)));
        let floating = f.floating_ip_address.parse::<Ipv4Addr>();
        let fixed_ip = fixed.parse::<Ipv4Addr>();
        match (floating, fixed_ip) {
            (Ok(floating), Ok(fixed)) => {
                if let Err(why) = floating_ip(gw_port.as_ref(), floating) {
                    p.add(&format!("{fp}.floating_ip_address"), why);
                }
                if !interfaces.iter().any(|port| {
                    port.subnets
                        .iter()
                        .any(|s| s.cidr.contains(&IpAddr::V4(fixed)))
                }) {
                    p.add(
                        &format!("{fp}.fixed_ip_address"),
                        format!("{fixed} is in no subnet of the router's interfaces"),
                    );
                }
                if let Some(id) = fid {
                    fips.push((
                        i,
                        Fip {
                            id,
                            floating,
                            fixed,
                            host: f.host.clone(),
                            fixed_ip_address_scope: scope,
                        },
                    ));
                }
            }
            (Err(_), _) => p.add(
                &format!("{fp}.floating_ip_address"),
                format!("{} is not an IPv4 address", Echo(&f.floating_ip_address)),
            ),
            (_, Err(_)) => p.add(
                &format!("{fp}.fixed_ip_address"),
                format!("{} is not an IPv4 address", Echo(fixed)),
            ),
        }
    }
    let mut seen_fips = BTreeMap::new();
    for (i, f) in &fips {
        if let Some(first) = seen_fips.insert(f.floating, *i) {
            p.add(
                &format!("{path}._floatingips[{i}].floating_ip_address"),
                format!("floating IP {} is also _floatingips[{first}]", f.floating),
            );
        }
    }
    let mut routes = Vec::new();
    let mut seen_routes = BTreeMap::new();
    for (i, r) in doc.routes.iter().enumerate() {
        let rp = format!("{path}.routes[{i}]");
        match (r.destination.parse::<IpNet>(), r.nexthop.parse::<IpAddr>()) {
            (Ok(d), Ok(n)) if d.addr().is_ipv4() == n.is_ipv4() => {
                let route = (d.trunc(), n);
                if let Err((field, why)) = extra_route(&located, route) {
                    p.add(&format!("{rp}{field}"), why);
                    continue;
                }
                // Same destination, other next hop: kept (one ECMP route). The same pair
                // twice is a mistake in the dict, named with both indices.
                if let Some(first) = seen_routes.insert(route, i) {
                    p.add(
                        &rp,
                        format!("destination {} via {n} is also routes[{first}]", route.0),
                    );
                } else {
                    routes.push(route);
                }
            }
            (Ok(_), Ok(_)) => p.add(&rp, "destination and nexthop are of different families"),
            (Err(_), _) => p.add(
                &format!("{rp}.destination"),
                format!("{} is not a CIDR", Echo(&r.destination)),
            ),
            (_, Err(_)) => p.add(
                &format!("{rp}.nexthop"),
                format!("{} is not an IP address", Echo(&r.nexthop)),
            ),
        }
    }
    let mut arp_table = BTreeMap::new();
    for (i, e) in doc.arp_table.iter().enumerate() {
        let ep = format!("{path}._arp_table[{i}]");
        let subnet = p.check(SubnetId::new(&format!("{ep}.subnet_id"), &e.subnet_id));
        let mac = p.check(MacAddr::parse_unicast(
            &format!("{ep}.mac_address"),
            &e.mac_address,
        ));
        let ip = match e.ip_address.parse::<IpAddr>() {
            Ok(ip) if is_unicast(ip) => Some(ip),
            _ => {
                p.add(
                    &format!("{ep}.ip_address"),
                    format!("{} is not a unicast IP address", Echo(&e.ip_address)),
                );
                None
            }
        };
        if let (Some(subnet), Some(ip), Some(mac)) = (subnet, ip, mac) {
            if arp_table.insert((subnet, ip), mac).is_some() {
                p.add(&ep, format!("{ip} is listed twice for its subnet"));
            }
        }
    }
    if p.0.len() != before {
        return None;
    }
    let enable_snat = doc
        .external_gateway_info
        .as_ref()
        .and_then(|g| g.enable_snat)
        .or(doc.enable_snat)
        .unwrap_or(true);
    Some(Router::from(RouterFields {
        id: id?,
        admin_state_up: doc.admin_state_up,
        distributed: doc.distributed,
        enable_snat,
        gw_port,
        gw_port_host: doc.gw_port_host.clone(),
        interfaces,
        snat_interfaces,
        fip_agent_interfaces,
        fips: fips.into_iter().map(|(_, f)| f).collect(),
        routes,
        arp_table,
        ha,
    }))
}

/// The HA part of a router dict: `ha_vr_id` in 1..254 and `_ha_interface` with an IPv4
/// address, on a non-distributed router of a `legacy` or `dvr_snat` agent (DVR+HA is not
/// supported yet: refused, never built as something else).
fn ha_router(doc: &RouterDoc, path: &str, agent: &Agent, p: &mut Problems) -> Option<HaRouter> {
    if !doc.ha {
        return None;
    }
    if doc.distributed {
        p.add(
            &format!("{path}.ha"),
            "distributed HA routers (DVR+HA) are not supported yet",
        );
        return None;
    }
    if agent.mode == AgentMode::Dvr {
        p.add(
            &format!("{path}.ha"),
            "an HA router needs a legacy or dvr_snat agent, and agent.mode is dvr",
        );
        return None;
    }
    let vr_id = match doc.ha_vr_id {
        Some(v @ 1..=254) => v as u8,
        Some(v) => {
            p.add(
                &format!("{path}.ha_vr_id"),
                format!("{v} is outside 1..254"),
            );
            return None;
        }
        None => {
            p.add(
                &format!("{path}.ha_vr_id"),
                "an HA router needs its VRRP router id",
            );
            return None;
        }
    };
    let Some(doc_port) = &doc.ha_interface else {
        p.add(
            &format!("{path}._ha_interface"),
            "an HA router needs this host's port on the HA network",
        );
        return None;
    };
    let at = format!("{path}._ha_interface");
    let port = port(doc_port, &at, "ha-", agent, p)?;
    let address = port.ips.iter().find_map(|n| match n {
        IpNet::V4(v) => Some(*v),
        IpNet::V6(_) => None,
    });
    let Some(address) = address else {
        p.add(
            &format!("{at}.fixed_ips"),
            "the HA port needs an IPv4 address (169.254.192.0/18 by default)",
        );
        return None;
    };
    Some(HaRouter {
        vr_id,
        port,
        address,
    })
}

/// What one router holds that no other router of the host may hold alike: the keys
/// [`across_routers`] indexes, some coarser (a host device, `fpr-` device or FIP gateway
/// network by name alone). Two routers can only be in conflict there if they share one of
/// these (a floating IP is also an address on its gateway's network, where it must not be
/// another router's port address). Addresses are per network: tenants' routers all have
/// 10.0.0.1, each on its own network.
#[derive(Debug, PartialEq, Eq, Hash)]
enum Claim<'a> {
    Address(&'a NetworkId, IpAddr),
    Mac(&'a NetworkId, MacAddr),
    VrId(&'a NetworkId, u8),
    Floating(Ipv4Addr),
    Name(&'a str),
    Link(IfName),
}

/// Calls `f` with each of `r`'s claims (some twice: what matters is that none is missed).
/// A distributed router's `fpr-` name is one whatever the agent (the check is a DVR agent's
/// only, and a distributed router needs one), so that the claims are the router's alone and
/// can be kept with it.
fn claims<'a>(r: &'a Router, mut f: impl FnMut(Claim<'a>)) {
    let ports = r
        .interfaces
        .iter()
        .chain(&r.snat_interfaces)
        .chain(&r.fip_agent_interfaces)
        .chain(r.gw_port.iter())
        .chain(r.ha.iter().map(|h| &h.port));
    if let Some(h) = &r.ha {
        f(Claim::VrId(&h.port.network_id, h.vr_id));
    }
    for port in ports {
        for ip in &port.ips {
            f(Claim::Address(&port.network_id, ip.addr()));
        }
        f(Claim::Mac(&port.network_id, port.mac));
        f(Claim::Name(port.host_dev.as_str()));
    }
    if r.distributed {
        for port in &r.fip_agent_interfaces {
            f(Claim::Name(port.network_id.as_str()));
        }
        f(Claim::Link(names::device("fpr-", r.id.as_str())));
    }
    for fip in &r.fips {
        f(Claim::Floating(fip.floating));
        if let Some(gw) = &r.gw_port {
            f(Claim::Address(&gw.network_id, IpAddr::V4(fip.floating)));
        }
    }
}

/// The [`FxHasher`] hashes of `r`'s claims, sorted and each once: what a [`Router`] keeps.
/// Two routers that share a claim share its hash; two that share a hash only may share no
/// claim (a collision), which costs a router more in an exact check, never a problem missed.
fn claim_hashes(r: &Router) -> Arc<[u64]> {
    let hasher = BuildHasherDefault::<FxHasher>::default();
    let mut hashes = Vec::new();
    claims(r, |c| hashes.push(hasher.hash_one(c)));
    hashes.sort_unstable();
    hashes.dedup();
    hashes.into()
}

impl Router {
    /// `self` with its claim hashes made: a router just validated.
    fn with_claim_hashes(mut self) -> Router {
        self.1 = Some(claim_hashes(&self));
        self
    }

    /// Its claim hashes: the kept ones, or made now (a router written since).
    fn claim_hashes(&self) -> Arc<[u64]> {
        self.1.clone().unwrap_or_else(|| claim_hashes(self))
    }
}

/// FxHash's mixing (rustc's own hasher): fast and the same in every process and run, for the
/// claim hashes a router keeps; SipHash's resistance to chosen keys buys nothing there (a
/// collision costs time, never correctness).
#[derive(Default)]
struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }
    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }
    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// [`across_routers`] for a new version of a valid host config, where `reused[k]` says that
/// `routers[k]` is the config in force's own, unchanged: any problem between routers then
/// involves a router that changed, and another router sharing one of its [`Claim`]s. Those
/// routers alone are checked (at 1,000 routers an agent's reload for one router's edit looks
/// up every router's kept claim hashes, and indexes a handful); if they hold any problem, the
/// whole set is checked, so that every problem, its path and its order are
/// [`across_routers`]'s.
fn across_routers_since(
    routers: &[(usize, &Router)],
    reused: &[bool],
    agent: &Agent,
    p: &mut Problems,
) {
    // The changed routers' claim hashes, sorted: a handful per router.
    let mut changed: Vec<u64> = Vec::new();
    for (&(_, r), same) in routers.iter().zip(reused) {
        if !same {
            changed.extend_from_slice(&r.claim_hashes());
        }
    }
    if changed.is_empty() {
        // Routers of a valid config, fewer or the same: nothing new to be in conflict.
        return;
    }
    changed.sort_unstable();
    changed.dedup();
    // A 4,096-bit filter of the changed hashes (by their top bits, FxHash's best mixed):
    // nearly every hash of the other routers is ruled out by one bit test, before a search.
    let mut filter = [0u64; 64];
    let bit = |h: u64| ((h >> 58) as usize, 1u64 << ((h >> 52) & 63));
    for &h in &changed {
        let (word, mask) = bit(h);
        filter[word] |= mask;
    }
    let involved: Vec<(usize, &Router)> = routers
        .iter()
        .zip(reused)
        .filter(|(&(_, r), same)| {
            !**same
                || r.claim_hashes().iter().any(|&h| {
                    let (word, mask) = bit(h);
                    filter[word] & mask != 0 && changed.binary_search(&h).is_ok()
                })
        })
        .map(|(x, _)| *x)
        .collect();
    let mut found = Problems::default();
    across_routers(&involved, agent, &mut found);
    if !found.0.is_empty() {
        across_routers(routers, agent, p);
    }
}

/// Checks between the routers of one host: names that collide after truncation (host ends
/// `tap` + 11 id characters, and `rfp-`/`fpr-` + 10 router id characters, B-10), one FIP
/// gateway port per external network, an address and a MAC on a network one port's only
/// (HA ports included), a VRRP router id once per HA network, and a floating IP in one
/// router only. `routers` are
/// the validated routers with their index in the document; each check is one indexed pass
/// over the whole set, and paths are written only for a problem.
fn across_routers(routers: &[(usize, &Router)], agent: &Agent, p: &mut Problems) {
    let at = |i: usize| format!("routers[{i}]");
    // Host ends: one per port, shared only by the FIP agent gateway port (one fg- device per
    // external network, whichever router carries it).
    // Sized up front: at 1,000 routers, growing them was a good part of this check, which
    // every reload of the agent runs.
    let ports: usize = routers
        .iter()
        .map(|(_, r)| {
            r.interfaces.len()
                + r.snat_interfaces.len()
                + r.fip_agent_interfaces.len()
                + usize::from(r.gw_port.is_some())
                + usize::from(r.ha.is_some())
        })
        .sum();
    let fips: usize = routers.iter().map(|(_, r)| r.fips.len()).sum();
    let mut host_ends: HashMap<&IfName, (usize, &'static str, &PortId)> =
        HashMap::with_capacity(ports);
    let mut fg_ports: HashMap<&NetworkId, (usize, &'static str, &PortId)> = HashMap::new();
    let mut links: HashMap<IfName, (usize, &RouterId)> = HashMap::new();
    let mut floating: HashMap<Ipv4Addr, usize> = HashMap::with_capacity(fips);
    // Addresses on each network: one port's each (neutron-server's IPAM hands an address out
    // once; two routers with one address on one network would answer ARP for each other).
    let mut addresses: HashMap<(&NetworkId, IpAddr), (usize, &'static str, &PortId)> =
        HashMap::with_capacity(ports);
    // MACs on each network: one port's each (neutron-server refuses a MAC twice on a
    // network; two devices with one MAC on one bridge take each other's traffic).
    let mut macs: HashMap<(&NetworkId, MacAddr), (usize, &'static str, &PortId)> =
        HashMap::with_capacity(ports);
    let mut vr_ids: HashMap<(&NetworkId, u8), usize> = HashMap::new();
    for &(i, r) in routers {
        let lists: [(&'static str, &[Port], bool); 3] = [
            ("_interfaces", &r.interfaces, false),
            ("_snat_router_interfaces", &r.snat_interfaces, false),
            (
                "_floatingip_agent_interfaces",
                &r.fip_agent_interfaces,
                true,
            ),
        ];
        let ports = lists
            .into_iter()
            .flat_map(|(field, list, shared)| list.iter().map(move |port| (field, port, shared)))
            .chain(r.gw_port.iter().map(|g| ("gw_port", g, false)))
            .chain(r.ha.iter().map(|h| ("_ha_interface", &h.port, false)));
        if let Some(h) = &r.ha {
            // Neutron allocates a VRRP router id once per HA network: two routers with one
            // would answer for each other's virtual addresses.
            match vr_ids.get(&(&h.port.network_id, h.vr_id)) {
                Some(&j) => p.add(
                    &format!("{}.ha_vr_id", at(i)),
                    format!(
                        "VRRP router id {} is also {}'s on HA network {}",
                        h.vr_id,
                        at(j),
                        h.port.network_id
                    ),
                ),
                None => {
                    vr_ids.insert((&h.port.network_id, h.vr_id), i);
                }
            }
        }
        for (field, port, shared) in ports {
            // (A FIP agent gateway port is one per network: its own check below.)
            for ip in port.ips.iter().map(IpNet::addr).filter(|_| !shared) {
                match addresses.get(&(&port.network_id, ip)) {
                    // Another port of this router: the router's own check names that one.
                    Some(&(j, _, _)) if j == i => {}
                    Some(&(j, other, id)) => p.add(
                        &format!("{}.{field}", at(i)),
                        format!(
                            "address {ip} of port {} is also port {id}'s ({}.{other}) on network \
                             {}",
                            port.id,
                            at(j),
                            port.network_id
                        ),
                    ),
                    None => {
                        addresses.insert((&port.network_id, ip), (i, field, &port.id));
                    }
                }
            }
            match macs.get(&(&port.network_id, port.mac)) {
                // The FIP agent gateway port, carried by every distributed router.
                Some((_, _, id)) if *id == &port.id => {}
                Some(&(j, other, id)) => p.add(
                    &format!("{}.{field}", at(i)),
                    format!(
                        "MAC {} of port {} is also port {id}'s ({}.{other}) on network {}",
                        port.mac,
                        port.id,
                        at(j),
                        port.network_id
                    ),
                ),
                None => {
                    macs.insert((&port.network_id, port.mac), (i, field, &port.id));
                }
            }
            match host_ends.get(&port.host_dev) {
                Some((_, _, id)) if shared && *id == &port.id => {}
                Some(&(j, other, id)) => p.add(
                    &format!("{}.{field}", at(i)),
                    format!(
                        "port {} and port {id} of {}.{other} both map to host device {}",
                        port.id,
                        at(j),
                        port.host_dev
                    ),
                ),
                None => {
                    host_ends.insert(&port.host_dev, (i, field, &port.id));
                }
            }
            if shared && r.distributed {
                match fg_ports.get(&port.network_id) {
                    Some((_, _, id)) if *id == &port.id => {}
                    Some(&(j, other, id)) => p.add(
                        &format!("{}.{field}", at(i)),
                        format!(
                            "agent gateway port {} and port {id} of {}.{other} are both on \
                             network {}: a host has one FIP gateway per external network",
                            port.id,
                            at(j),
                            port.network_id
                        ),
                    ),
                    None => {
                        fg_ports.insert(&port.network_id, (i, field, &port.id));
                    }
                }
            }
        }
        if r.distributed && agent.is_dvr() {
            // rfp-/fpr- keep 10 id characters: two routers sharing them would share the fpr-
            // end in the fip- namespace (and the rfp- name while the pair is made).
            let fpr = names::device("fpr-", r.id.as_str());
            if let Some(&(j, id)) = links.get(&fpr) {
                p.add(
                    &format!("{}.id", at(i)),
                    format!(
                        "router {} and router {id} ({}) both map to devices {} and {}",
                        r.id,
                        at(j),
                        names::device("rfp-", r.id.as_str()),
                        fpr
                    ),
                );
            } else {
                links.insert(fpr, (i, &r.id));
            }
        }
        for (k, f) in r.fips.iter().enumerate() {
            if let Some(&j) = floating.get(&f.floating) {
                p.add(
                    &format!("{}._floatingips[{k}].floating_ip_address", at(i)),
                    format!("floating IP {} is also in {}", f.floating, at(j)),
                );
            } else {
                floating.insert(f.floating, i);
            }
        }
    }
    // A floating IP is no other router's port address on its external network (the router's
    // own gateway address is its own check's).
    for &(i, r) in routers {
        let Some(gw) = &r.gw_port else { continue };
        for (k, f) in r.fips.iter().enumerate() {
            if let Some(&(j, other, id)) = addresses
                .get(&(&gw.network_id, IpAddr::V4(f.floating)))
                .filter(|(j, _, _)| *j != i)
            {
                p.add(
                    &format!("{}._floatingips[{k}].floating_ip_address", at(i)),
                    format!(
                        "floating IP {} is the address of port {id} ({}.{other})",
                        f.floating,
                        at(j)
                    ),
                );
            }
        }
    }
}

/// `agent.ovsdb`: `unix:PATH` with PATH absolute, normalised, printable and short enough for
/// a unix socket. `tcp:` and `ssl:` remotes are refused: l3agent talks to the local
/// ovsdb-server only (as the L2 agent on the same host does).
fn ovsdb_socket(value: &str) -> Result<PathBuf, String> {
    let Some(path) = value.strip_prefix("unix:") else {
        let kind = value.split_once(':').map_or("", |(k, _)| k);
        return Err(
            if matches!(kind, "tcp" | "ssl" | "ptcp" | "pssl" | "punix") {
                format!(
                    "{}: only unix:PATH is supported (the local ovsdb-server's socket)",
                    Echo(value)
                )
            } else {
                format!("{} is not unix:PATH (e.g. {DEFAULT_OVSDB})", Echo(value))
            },
        );
    };
    let path = PathBuf::from(path);
    state_path(&path).map_err(|why| format!("socket {why}"))?;
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(format!(
            "socket path {} is {} bytes long: a unix socket path holds at most {MAX_SOCKET_PATH}",
            Echo(&path.display().to_string()),
            path.as_os_str().len()
        ));
    }
    Ok(path)
}

impl ConfigDoc {
    /// The `openvswitch` settings, validated (`None` with `linuxbridge`). An invalid field is
    /// recorded as a problem and stands in as its default, so that the routers are still
    /// checked (and not refused again for a bridge they lack). The fields of the other driver
    /// are refused rather than ignored: a config that names both says two things.
    fn integration_bridge(
        &self,
        driver: InterfaceDriver,
        p: &mut Problems,
    ) -> Option<IntegrationBridge> {
        let a = &self.agent;
        match driver {
            InterfaceDriver::Linuxbridge => {
                for (field, set) in [
                    ("integration_bridge", a.integration_bridge.is_some()),
                    ("ovsdb", a.ovsdb.is_some()),
                ] {
                    if set {
                        p.add(
                            &format!("agent.{field}"),
                            "is only used with interface_driver: openvswitch (the driver is \
                             linuxbridge)",
                        );
                    }
                }
                None
            }
            InterfaceDriver::Openvswitch => {
                if !a.bridges.is_empty() {
                    p.add(
                        "agent.bridges",
                        "is only used with interface_driver: linuxbridge (with openvswitch \
                         every port goes on agent.integration_bridge)",
                    );
                }
                let default_bridge = || {
                    IfName::new("agent.integration_bridge", DEFAULT_INTEGRATION_BRIDGE)
                        .expect("a valid literal name")
                };
                let bridge = p
                    .check(IfName::new(
                        "agent.integration_bridge",
                        a.integration_bridge
                            .as_deref()
                            .unwrap_or(DEFAULT_INTEGRATION_BRIDGE),
                    ))
                    .unwrap_or_else(default_bridge);
                let db = ovsdb_socket(a.ovsdb.as_deref().unwrap_or(DEFAULT_OVSDB)).unwrap_or_else(
                    |why| {
                        p.add("agent.ovsdb", why);
                        PathBuf::from(&DEFAULT_OVSDB["unix:".len()..])
                    },
                );
                Some(IntegrationBridge { bridge, db })
            }
        }
    }

    /// Validates everything; all problems are returned, each with its path.
    pub fn validate(&self) -> Result<HostConfig, Vec<ConfigError>> {
        let (agent, routers) = self.check(None)?;
        Ok(HostConfig {
            agent,
            routers,
            doc: self.clone(),
        })
    }

    /// [`ConfigDoc::validate`], the document becoming the config's `doc` without a copy.
    pub fn into_validated(self) -> Result<HostConfig, Vec<ConfigError>> {
        let (agent, routers) = self.check(None)?;
        Ok(HostConfig {
            agent,
            routers,
            doc: self,
        })
    }

    /// [`ConfigDoc::into_validated`] of a new version of the document of `in_force` (a config
    /// that [`ConfigDoc::validate`] made: a reload). When the agent section is the same, a
    /// router whose dict is the same as one of `in_force`'s (by id, compared whole) is not
    /// checked again: a router's own checks depend on its dict and the agent section only,
    /// so its validated form is `in_force`'s. Every other router is checked, and so are the
    /// checks between routers (ids, device names after truncation, FIP gateways, addresses and
    /// MACs on a network, VRRP router ids on an HA network, floating IPs) for the routers
    /// that share a claim with a changed one (the whole set if they find anything): the
    /// result, and every problem with its path and in its order, are exactly those of
    /// [`ConfigDoc::validate`].
    pub fn validate_since(self, in_force: &HostConfig) -> Result<HostConfig, Vec<ConfigError>> {
        let (agent, routers) = self.check(Some(in_force))?;
        Ok(HostConfig {
            agent,
            routers,
            doc: self,
        })
    }

    /// The agent section, validated.
    fn agent(&self, p: &mut Problems) -> Agent {
        if let Err(why) = host_name(&self.agent.host) {
            p.add("agent.host", why);
        }
        if let Err(why) = state_path(&self.agent.state_path) {
            p.add("agent.state_path", why);
        }
        let mut bridges = BTreeMap::new();
        for (net, br) in self.agent.bridges.iter() {
            let Some(net) = p.check(NetworkId::new("agent.bridges", net)) else {
                continue;
            };
            if let Some(br) = p.check(IfName::new(&format!("agent.bridges.{net}"), br)) {
                bridges.insert(net, br);
            }
        }
        let interface_driver = self.agent.interface_driver.unwrap_or_default();
        let ovs = self.integration_bridge(interface_driver, p);
        let metadata = self
            .agent
            .metadata_proxy
            .as_ref()
            .and_then(|m| metadata_proxy(m, p));
        let ra = router_advertisements(self.agent.router_advertisements.as_ref(), p);
        let ha = ha_settings(self.agent.ha.as_ref(), &self.agent.state_path, p);
        Agent {
            mode: self.agent.mode,
            host: self.agent.host.clone(),
            state_path: self.agent.state_path.clone(),
            bridges: Arc::new(bridges),
            interface_driver,
            ovs,
            metadata,
            ra,
            ha,
            traffic_accounting: self.agent.traffic_accounting.unwrap_or(false),
        }
    }

    /// The validated agent and routers, or every problem; the routers of `in_force` whose
    /// dicts are unchanged are taken as they are (see [`ConfigDoc::validate_since`]).
    fn check(
        &self,
        in_force: Option<&HostConfig>,
    ) -> Result<(Agent, Vec<Router>), Vec<ConfigError>> {
        let mut p = Problems::default();
        // The agent section's checks depend on it alone: the same section as the config in
        // force's is its validated form.
        let agent = match in_force {
            Some(cfg) if cfg.doc.agent == self.agent => cfg.agent.clone(),
            _ => self.agent(&mut p),
        };
        // The routers of `in_force` by id, with the dict each was validated from: only under
        // the same agent section, and only where its routers are its document's, in order
        // (what validate makes; anything else is validated in full).
        let comparable = |cfg: &HostConfig| {
            p.0.is_empty()
                && cfg.doc.agent == self.agent
                && cfg.agent == agent
                && cfg.doc.routers.len() == cfg.routers.len()
        };
        // The usual reload: the same routers in the same order (one dict edited). Each is
        // compared with its own predecessor, and ids equal to valid ones cannot repeat.
        let aligned: Option<&HostConfig> = in_force.filter(|cfg| {
            comparable(cfg)
                && cfg.doc.routers.len() == self.routers.len()
                && cfg
                    .doc
                    .routers
                    .iter()
                    .zip(&cfg.routers)
                    .zip(&self.routers)
                    .all(|((d, r), n)| d.id == r.id.as_str() && n.id == d.id)
        });
        let previous: HashMap<&str, (&RouterDoc, &Router)> = match in_force {
            Some(cfg) if aligned.is_none() && comparable(cfg) => cfg
                .doc
                .routers
                .iter()
                .zip(&cfg.routers)
                .take_while(|(d, r)| d.id == r.id.as_str())
                .map(|(d, r)| (d.id.as_str(), (d, r)))
                .collect(),
            _ => HashMap::new(),
        };
        let mut routers = Vec::with_capacity(self.routers.len());
        let mut indices = Vec::with_capacity(self.routers.len());
        // Per router kept: whether it is `in_force`'s own (its dict unchanged).
        let mut reused = Vec::with_capacity(self.routers.len());
        let mut ids: HashMap<&str, usize> = match aligned {
            Some(_) => HashMap::new(),
            None => HashMap::with_capacity(self.routers.len()),
        };
        for (i, doc) in self.routers.iter().enumerate() {
            let before = match aligned {
                Some(cfg) => Some((&cfg.doc.routers[i], &cfg.routers[i])),
                None => {
                    if let Some(first) = ids.insert(doc.id.as_str(), i) {
                        p.add(
                            &format!("routers[{i}].id"),
                            format!("router {} is also routers[{first}]", Echo(&doc.id)),
                        );
                        continue;
                    }
                    previous.get(doc.id.as_str()).copied()
                }
            };
            // A router taken as it was keeps its claim hashes; one validated makes them, for
            // this check and the next reload's.
            let checked = match before {
                Some((before, r)) if before == doc => Some((r.clone(), true)),
                _ => router(doc, &format!("routers[{i}]"), &agent, &mut p)
                    .map(|r| (r.with_claim_hashes(), false)),
            };
            if let Some((r, same)) = checked {
                routers.push(r);
                indices.push(i);
                reused.push(same);
            }
        }
        let indexed: Vec<(usize, &Router)> = indices.into_iter().zip(routers.iter()).collect();
        if previous.is_empty() && aligned.is_none() {
            across_routers(&indexed, &agent, &mut p);
        } else {
            across_routers_since(&indexed, &reused, &agent, &mut p);
        }
        if p.0.is_empty() {
            Ok((agent, routers))
        } else {
            Err(p.0)
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn agent_json(mode: &str) -> String {
        format!(
            r#""agent": {{"mode": "{mode}", "host": "host-a", "state_path": "/tmp/l3agent-test",
            "bridges": {{"90e4912c-0eb8-4be4-a793-e6a3bba6ae8b": "br-t1", "c6910e18-fb1f-4988-9af4-211a8c2e2926": "br-t2",
                        "65566f91-133a-44ff-87f5-ecffc1193d3d": "br-ex",
                        "740cd353-7ee8-49e2-96f6-17ed0dc7b3da": "br-d1", "d8282fc8-37e4-43a7-801d-8d2c91dbbb98": "br-d2",
                        "11272de9-8a18-4392-8618-d07b6ab565e3": "br-dex"}}}}"#
        )
    }

    fn load_as(mode: &str, routers: &str) -> Result<HostConfig, Vec<ConfigError>> {
        let text = format!("{{{}, \"routers\": [{routers}]}}", agent_json(mode));
        let doc: ConfigDoc = serde_json::from_str(&text).map_err(|e| {
            vec![ConfigError {
                path: "file".into(),
                message: e.to_string(),
            }]
        })?;
        doc.validate()
    }

    fn load(routers: &str) -> Result<HostConfig, Vec<ConfigError>> {
        load_as("legacy", routers)
    }

    /// `routers` validated since `in_force` (under the `mode` agent), asserted to be what a
    /// full validation gives.
    fn since_as(
        mode: &str,
        routers: &str,
        in_force: &HostConfig,
    ) -> Result<HostConfig, Vec<ConfigError>> {
        let text = format!("{{{}, \"routers\": [{routers}]}}", agent_json(mode));
        let doc: ConfigDoc = serde_json::from_str(&text).unwrap();
        let since = doc.clone().validate_since(in_force);
        match (&since, &doc.validate()) {
            (Ok(a), Ok(b)) => assert_eq!(a.routers, b.routers),
            (Err(a), Err(b)) => assert_eq!(a, b),
            (a, b) => panic!("since: {a:?}\nfull: {b:?}"),
        }
        since
    }

    fn errors(r: Result<HostConfig, Vec<ConfigError>>) -> Vec<String> {
        r.unwrap_err().iter().map(ToString::to_string).collect()
    }

    /// A copy of shared/examples/neutron-router-legacy.json (Neutron's own test helpers).
    fn legacy_example() -> serde_json::Value {
        serde_json::from_str(include_str!("../tests/data/neutron-router-legacy.json")).unwrap()
    }

    use l3agent_testkit::renumber_router as renumber;

    /// The legacy example as router `b0000000-…` on the same networks: its own port ids,
    /// floating IP (203.0.113.3) and addresses (host number `host`).
    fn second_router(host: u8) -> serde_json::Value {
        let mut b = legacy_example();
        b["id"] = "b0000000-0000-0000-0000-000000000000".into();
        for i in 0..2 {
            b["_interfaces"][i]["id"] = format!("{i}0000000-0000-0000-0000-000000000000").into();
        }
        b["gw_port"]["id"] = "90000000-0000-0000-0000-000000000000".into();
        b["_floatingips"][0]["id"] = "f0000000-0000-0000-0000-000000000000".into();
        b["_floatingips"][0]["floating_ip_address"] = "203.0.113.3".into();
        renumber(&mut b, host);
        b
    }

    /// A copy of shared/examples/neutron-router-dvr.json.
    fn dvr_example() -> serde_json::Value {
        serde_json::from_str(include_str!("../tests/data/neutron-router-dvr.json")).unwrap()
    }

    #[test]
    fn neutron_example_is_accepted() {
        let cfg = load(&legacy_example().to_string()).unwrap();
        let r = &cfg.routers[0];
        assert_eq!(r.id.as_str(), "87c7c2ae-d0ba-4691-820c-8053abf50b8d");
        assert_eq!(
            r.namespace().as_str(),
            "qrouter-87c7c2ae-d0ba-4691-820c-8053abf50b8d"
        );
        let qr = &r.interfaces[0];
        assert_eq!(qr.dev.as_str(), "qr-081ed401-2a");
        assert_eq!(qr.host_dev.as_str(), "tap081ed401-2a");
        assert_eq!(qr.mac, MacAddr::new([0xca, 0xfe, 0xde, 0xad, 0xbe, 0xef]));
        assert_eq!(
            qr.network_id.as_str(),
            "90e4912c-0eb8-4be4-a793-e6a3bba6ae8b"
        );
        assert_eq!(
            qr.subnets[0].id.as_str(),
            "2f3c8633-e9e7-453f-9956-077b92e479f5"
        );
        assert_eq!(
            qr.address_scopes,
            BTreeMap::from([(4, None), (6, None)]),
            "absent address_scopes: no scope in either family"
        );
        assert_eq!(r.gw_port.as_ref().unwrap().dev.as_str(), "qg-184a6791-c4");
        assert_eq!(r.gateway_ipv4(), Some("203.0.113.4".parse().unwrap()));
        assert_eq!(
            r.fips[0].floating,
            "203.0.113.2".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(
            r.fips[0].id.as_str(),
            "9cb45fce-65ae-470c-9d5d-09d6b2060557"
        );
        assert_eq!(r.fips[0].fixed_ip_address_scope, None);
        assert_eq!(
            r.routes,
            vec![(
                "100.64.8.0/24".parse().unwrap(),
                "203.0.113.1".parse().unwrap()
            )]
        );
        assert!(r.enable_snat);
        assert_eq!(
            cfg.agent.bridges
                [&NetworkId::new("n", "65566f91-133a-44ff-87f5-ecffc1193d3d").unwrap()]
                .as_str(),
            "br-ex"
        );
    }

    #[test]
    fn every_problem_is_listed_by_path() {
        let mut v = legacy_example();
        v["_interfaces"][0]["fixed_ips"][0]["ip_address"] = "198.51.100.77".into();
        v["_interfaces"][1]["subnets"][0]["cidr"] = "198.51.100.0/33".into();
        v["_interfaces"][1]["network_id"] = "no-such-net".into();
        v["gw_port"]["mac_address"] = "zz:zz".into();
        v["routes"][0]["nexthop"] = "nope".into();
        let dup = v.clone();
        let text = errors(load(&format!("{v},{dup}")));
        for expect in [
            "routers[0]._interfaces[0].fixed_ips[0].ip_address: 198.51.100.77 is outside its subnet 192.0.2.0/24",
            "routers[0]._interfaces[1].network_id: network \"no-such-net\" has no bridge",
            "routers[0]._interfaces[1].subnets[0].cidr: \"198.51.100.0/33\" is not a CIDR",
            "routers[0].gw_port.mac_address: invalid value \"zz:zz\": must be six colon-separated",
            "routers[0].routes[0].nexthop",
            "routers[1].id: router \"87c7c2ae-d0ba-4691-820c-8053abf50b8d\" is also routers[0]",
        ] {
            assert!(text.iter().any(|t| t.starts_with(expect)), "missing {expect:?} in {text:#?}");
        }
    }

    #[test]
    fn ids_and_macs_are_typed_and_named_by_path() {
        let mut v = legacy_example();
        v["id"] = "r 1".into();
        v["gw_port"]["id"] = "-x".into();
        v["_interfaces"][0]["network_id"] = "net/1".into();
        v["_interfaces"][0]["subnets"][0]["id"] = "".into();
        v["_interfaces"][1]["mac_address"] = "01:00:5e:00:00:01".into();
        v["_floatingips"][0]["id"] = "fip.1".into();
        let text = errors(load(&v.to_string()));
        for expect in [
            "routers[0].id: invalid value \"r 1\": character ' ' is not allowed",
            "routers[0].gw_port.id: invalid value \"-x\": must start with a letter or digit",
            "routers[0]._interfaces[0].network_id: invalid value \"net/1\": character '/' is not allowed",
            "routers[0]._interfaces[0].subnets[0].id: invalid value \"\": must be 1 to 36 characters",
            "routers[0]._interfaces[1].mac_address: invalid value \"01:00:5e:00:00:01\": is a multicast address",
            "routers[0]._floatingips[0].id: invalid value \"fip.1\": character '.' is not allowed",
        ] {
            assert!(text.iter().any(|t| t.starts_with(expect)), "missing {expect:?} in {text:#?}");
        }
    }

    #[test]
    fn agent_section_is_strict() {
        let text = r#"{"agent": {"mode": "legacy", "host": "h", "state_path": "/x", "bogus": 1}, "routers": []}"#;
        assert!(serde_json::from_str::<ConfigDoc>(text)
            .unwrap_err()
            .to_string()
            .contains("bogus"));
        let text = r#"{"agent": {"mode": "dvr_no_external", "host": "h", "state_path": "/x"}, "routers": []}"#;
        assert!(serde_json::from_str::<ConfigDoc>(text).is_err());
        let doc: ConfigDoc = serde_json::from_str(r#"{"agent": {"mode": "dvr", "host": "", "state_path": "rel", "bridges": {"n": "a-bridge-name-too-long", "-n": "br"}}, "routers": []}"#).unwrap();
        let errs: Vec<String> = doc
            .validate()
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(errs.len(), 4, "{errs:#?}");
        for expect in [
            "agent.bridges.n: invalid value \"a-bridge-name-too-long\": must be 1 to 15 characters",
            "agent.bridges: invalid value \"-n\": must start with a letter or digit",
        ] {
            assert!(
                errs.iter().any(|e| e == expect),
                "missing {expect:?} in {errs:#?}"
            );
        }
    }

    #[test]
    fn truncated_device_names_must_not_collide() {
        let mut v = legacy_example();
        v["_interfaces"][1]["id"] = "081ed401-2abX-0000-0000-000000000000".into();
        let text = errors(load(&v.to_string()));
        assert!(
            text.iter().any(|e| e
                == "routers[0]._interfaces: ports 081ed401-2ab1-4bd0-968b-e05235398bb2 and \
                    081ed401-2abX-0000-0000-000000000000 both map to device qr-081ed401-2a"),
            "{text:#?}"
        );
    }

    #[test]
    fn host_ends_must_not_collide_between_routers() {
        let a = legacy_example();
        let mut b = legacy_example();
        b["id"] = "87c7c2ae-0000-4691-820c-8053abf50b8d".into();
        b["_interfaces"] = serde_json::json!([]);
        b["_floatingips"] = serde_json::json!([]);
        b["gw_port"]["id"] = "184a6791-c4ff-0000-0000-000000000000".into();
        renumber(&mut b, 5);
        let text = errors(load(&format!("{a},{b}")));
        assert_eq!(
            text,
            vec![
                "routers[1].gw_port: port 184a6791-c4ff-0000-0000-000000000000 and port \
                 184a6791-c482-44ff-948c-90af734c72de of routers[0].gw_port both map to host \
                 device tap184a6791-c4"
            ]
        );
    }

    #[test]
    fn rfp_and_fpr_names_must_not_collide_between_dvr_routers() {
        let a = dvr_example();
        let mut b = dvr_example();
        // The same 10 first characters: rfp-fb221852-b and fpr-fb221852-b for both.
        b["id"] = "fb221852-b000-0000-0000-000000000000".into();
        for (i, port) in ["_interfaces", "_snat_router_interfaces"]
            .iter()
            .flat_map(|f| [(*f, 0), (*f, 1)])
            .enumerate()
        {
            b[port.0][port.1]["id"] = format!("{i}0000000-0000-0000-0000-000000000000").into();
        }
        b["gw_port"]["id"] = "90000000-0000-0000-0000-000000000000".into();
        renumber(&mut b, 5);
        b["_floatingips"] = serde_json::json!([]);
        let text = errors(load_as("dvr", &format!("{a},{b}")));
        assert_eq!(
            text,
            vec![
                "routers[1].id: router fb221852-b000-0000-0000-000000000000 and router \
                 fb221852-b23c-407e-ba26-a68b25803e49 (routers[0]) both map to devices \
                 rfp-fb221852-b and fpr-fb221852-b"
            ]
        );
        // The agent gateway port is shared: no host end collision for it.
        let mut fine = b.clone();
        fine["id"] = "0b221852-b000-0000-0000-000000000000".into();
        let cfg = load_as("dvr", &format!("{a},{fine}")).unwrap();
        assert_eq!(cfg.routers.len(), 2);
        assert!(cfg.agent.is_dvr());
        // The same collision made by an edit of one router of a valid config in force.
        let e = since_as("dvr", &format!("{a},{b}"), &cfg).unwrap_err();
        assert_eq!(e.len(), 1);
    }

    #[test]
    fn one_fip_gateway_per_external_network() {
        let a = dvr_example();
        let mut b = dvr_example();
        b["id"] = "0b221852-b000-0000-0000-000000000000".into();
        b["_interfaces"] = serde_json::json!([]);
        b["_snat_router_interfaces"] = serde_json::json!([]);
        b["_floatingips"] = serde_json::json!([]);
        b["gw_port"]["id"] = "90000000-0000-0000-0000-000000000000".into();
        b["_floatingip_agent_interfaces"][0]["id"] = "80000000-0000-0000-0000-000000000000".into();
        b["_floatingip_agent_interfaces"][0]["mac_address"] = "fa:16:3e:00:00:05".into();
        renumber(&mut b, 5);
        // Valid while b's agent gateway port is a's; an edit of b alone that gives it
        // another one is refused as a full validation refuses it.
        let mut shared = b.clone();
        shared["_floatingip_agent_interfaces"] = a["_floatingip_agent_interfaces"].clone();
        let in_force = load_as("dvr_snat", &format!("{a},{shared}")).unwrap();
        assert_eq!(
            since_as("dvr_snat", &format!("{a},{b}"), &in_force)
                .unwrap_err()
                .len(),
            1
        );
        let text = errors(load_as("dvr_snat", &format!("{a},{b}")));
        assert_eq!(
            text,
            vec![
                "routers[1]._floatingip_agent_interfaces: agent gateway port \
                 80000000-0000-0000-0000-000000000000 and port \
                 68db4b10-1b88-445a-bcf0-d8fa6f972978 of routers[0]._floatingip_agent_interfaces \
                 are both on network 11272de9-8a18-4392-8618-d07b6ab565e3: a host has one FIP \
                 gateway per external network"
            ]
        );
    }

    #[test]
    fn a_distributed_router_needs_a_dvr_agent() {
        let text = errors(load(&dvr_example().to_string()));
        assert_eq!(
            text,
            vec![
                "routers[0].distributed: a distributed router needs a dvr or dvr_snat agent, \
                 and agent.mode is legacy"
            ]
        );
        for mode in ["dvr", "dvr_snat"] {
            let cfg = load_as(mode, &dvr_example().to_string()).unwrap();
            let r = &cfg.routers[0];
            assert!(r.distributed);
            assert_eq!(r.agent_gateway().unwrap().dev.as_str(), "fg-68db4b10-1b");
            assert_eq!(r.snat_interfaces[1].dev.as_str(), "sg-8cd9b3fe-fb");
        }
    }

    #[test]
    fn same_destination_routes_are_kept_and_exact_duplicates_refused() {
        let mut v = legacy_example();
        v["routes"] = serde_json::json!([
            {"destination": "100.64.8.0/24", "nexthop": "203.0.113.7"},
            {"destination": "100.64.8.0/24", "nexthop": "203.0.113.5"},
            {"destination": "100.64.9.0/24", "nexthop": "192.0.2.20"},
        ]);
        let cfg = load(&v.to_string()).unwrap();
        assert_eq!(cfg.routers[0].routes.len(), 3);
        v["routes"][2] =
            serde_json::json!({"destination": "100.64.8.1/24", "nexthop": "203.0.113.7"});
        let text = errors(load(&v.to_string()));
        assert_eq!(
            text,
            vec![
                "routers[0].routes[2]: destination 100.64.8.0/24 via 203.0.113.7 is also routes[0]"
            ]
        );
    }

    #[test]
    fn address_scopes_are_read_per_port_and_per_floating_ip() {
        let mut v = legacy_example();
        v["_interfaces"][0]["address_scopes"] = serde_json::json!({"4": "scope-a", "6": null});
        v["gw_port"]["address_scopes"] = serde_json::json!({"4": "scope-b"});
        v["_floatingips"][0]["fixed_ip_address_scope"] = "scope-a".into();
        let cfg = load(&v.to_string()).unwrap();
        let r = &cfg.routers[0];
        assert_eq!(r.interfaces[0].scope(4), Some("scope-a"));
        assert_eq!(r.interfaces[0].scope(6), None);
        assert_eq!(r.interfaces[1].scope(4), None);
        assert_eq!(r.gw_port.as_ref().unwrap().scope(4), Some("scope-b"));
        assert_eq!(r.gw_port.as_ref().unwrap().scope(6), None);
        assert_eq!(r.fips[0].fixed_ip_address_scope.as_deref(), Some("scope-a"));

        v["_interfaces"][0]["address_scopes"] = serde_json::json!({"5": "scope-a", "6": "-s"});
        v["_floatingips"][0]["fixed_ip_address_scope"] = "a b".into();
        let text = errors(load(&v.to_string()));
        for expect in [
            "routers[0]._interfaces[0].address_scopes: key \"5\" is not an IP version",
            "routers[0]._interfaces[0].address_scopes.6: invalid value \"-s\": must start with a letter or digit",
            "routers[0]._floatingips[0].fixed_ip_address_scope: invalid value \"a b\"",
        ] {
            assert!(text.iter().any(|t| t.starts_with(expect)), "missing {expect:?} in {text:#?}");
        }
    }

    fn doc_of(routers: &[serde_json::Value]) -> ConfigDoc {
        let text = format!(
            "{{{}, \"routers\": {}}}",
            agent_json("legacy"),
            serde_json::Value::from(routers.to_vec())
        );
        serde_json::from_str(&text).unwrap()
    }

    /// `doc` validated in full and since `in_force`: the same config, or the same problems
    /// (paths, messages, order).
    fn both_ways(doc: ConfigDoc, in_force: &HostConfig) -> Result<HostConfig, Vec<String>> {
        let full = doc.validate();
        let since = doc.validate_since(in_force);
        match (full, since) {
            (Ok(full), Ok(since)) => {
                assert_eq!(full.agent, since.agent);
                assert_eq!(full.routers, since.routers);
                assert_eq!(full.doc, since.doc);
                Ok(since)
            }
            (Err(full), Err(since)) => {
                assert_eq!(full, since);
                Err(since.iter().map(ToString::to_string).collect())
            }
            (full, since) => panic!("full: {full:?}\nsince: {since:?}"),
        }
    }

    #[test]
    fn a_validation_since_the_config_in_force_finds_what_a_full_one_finds() {
        let a = legacy_example();
        let b = second_router(7);
        let in_force = doc_of(&[a.clone(), b.clone()]).validate().unwrap();

        // A change to b alone that conflicts with a, which did not change: a floating IP in
        // two routers, found whichever router comes first.
        let mut b2 = b.clone();
        b2["_floatingips"][0]["floating_ip_address"] = "203.0.113.2".into();
        let conflict = "routers[1]._floatingips[0].floating_ip_address: floating IP 203.0.113.2 \
                        is also in routers[0]";
        for routers in [[a.clone(), b2.clone()], [b2.clone(), a.clone()]] {
            assert_eq!(
                both_ways(doc_of(&routers), &in_force).unwrap_err(),
                vec![conflict]
            );
        }
        // Host device names that collide after truncation, between a changed and an
        // unchanged router.
        let mut b3 = b.clone();
        b3["gw_port"]["id"] = "184a6791-c4ff-0000-0000-000000000000".into();
        assert_eq!(
            both_ways(doc_of(&[a.clone(), b3]), &in_force).unwrap_err(),
            vec![
                "routers[1].gw_port: port 184a6791-c4ff-0000-0000-000000000000 and port \
                 184a6791-c482-44ff-948c-90af734c72de of routers[0].gw_port both map to host \
                 device tap184a6791-c4"
            ]
        );
        // An unchanged router listed twice.
        let e = both_ways(doc_of(&[a.clone(), b.clone(), a.clone()]), &in_force).unwrap_err();
        assert!(e[0].starts_with("routers[2].id: router"), "{e:?}");
        // A changed agent section is validated with every router again: an unchanged router
        // whose gateway network lost its bridge is refused.
        let mut doc = doc_of(&[a.clone(), b.clone()]);
        Arc::make_mut(&mut doc.agent.bridges).remove("65566f91-133a-44ff-87f5-ecffc1193d3d");
        let e = both_ways(doc, &in_force).unwrap_err();
        for r in 0..2 {
            let missing = format!(
                "routers[{r}].gw_port.network_id: network \"65566f91-133a-44ff-87f5-ecffc1193d3d\" \
                 has no bridge in agent.bridges"
            );
            assert!(e.contains(&missing), "{e:?}");
        }
        // A clean change: b gets a second floating IP; a is taken as it was.
        let mut b4 = b.clone();
        let mut fip = b["_floatingips"][0].clone();
        fip["id"] = "f1000000-0000-0000-0000-000000000000".into();
        fip["floating_ip_address"] = "203.0.113.5".into();
        b4["_floatingips"].as_array_mut().unwrap().push(fip);
        let cfg = both_ways(doc_of(&[b4, a.clone()]), &in_force).unwrap();
        assert_eq!(cfg.routers[1], in_force.routers[0]);
        assert_eq!(cfg.routers[0].fips.len(), 2);
        // Removing the conflict again is accepted, from the config in force or from a config
        // that never had the conflicting router.
        let only_a = doc_of(std::slice::from_ref(&a)).validate().unwrap();
        both_ways(doc_of(&[a.clone(), b.clone()]), &only_a).unwrap();
    }

    #[test]
    fn validating_since_any_config_in_force_is_validating_in_full() {
        // Valid and invalid router dicts, conflicting with each other in every cross-router
        // way the checks know; every list of up to three of them (repeats included, so ids
        // listed twice too) is validated in full and since every valid list, under the same
        // agent section and under one that lost a bridge.
        let a = legacy_example();
        let b = second_router(7);
        let mut same_fip = b.clone();
        same_fip["_floatingips"][0]["floating_ip_address"] = "203.0.113.2".into();
        let mut same_tap = b.clone();
        same_tap["gw_port"]["id"] = "184a6791-c4ff-0000-0000-000000000000".into();
        let mut bad_mac = b.clone();
        bad_mac["gw_port"]["mac_address"] = "01:00:00:00:00:01".into();
        let mut other_bridge = b.clone();
        other_bridge["id"] = "c0000000-0000-0000-0000-000000000000".into();
        other_bridge["_interfaces"] = serde_json::json!([]);
        other_bridge["_floatingips"] = serde_json::json!([]);
        other_bridge["routes"] = serde_json::json!([]);
        other_bridge["gw_port"]["id"] = "c1000000-0000-0000-0000-000000000000".into();
        renumber(&mut other_bridge, 8);
        // A floating IP that is the other router's gateway address, and a gateway address
        // that is the other router's.
        let mut fip_on_port = b.clone();
        fip_on_port["_floatingips"][0]["floating_ip_address"] = "203.0.113.4".into();
        let mut same_address = b.clone();
        same_address["gw_port"]["fixed_ips"][0]["ip_address"] = "203.0.113.4".into();
        let mut same_mac = b.clone();
        same_mac["gw_port"]["mac_address"] = a["gw_port"]["mac_address"].clone();
        let pool = [
            a,
            b,
            same_fip,
            same_tap,
            bad_mac,
            other_bridge,
            fip_on_port,
            same_address,
            same_mac,
        ];
        let mut lists: Vec<Vec<serde_json::Value>> = vec![Vec::new()];
        for _ in 0..3 {
            let longer: Vec<Vec<serde_json::Value>> = lists
                .iter()
                .filter(|l| l.len() == lists.last().map_or(0, Vec::len))
                .flat_map(|l| {
                    pool.iter().map(move |r| {
                        let mut l = l.clone();
                        l.push(r.clone());
                        l
                    })
                })
                .collect();
            lists.extend(longer);
        }
        let docs: Vec<ConfigDoc> = lists.iter().map(|l| doc_of(l)).collect();
        let in_force: Vec<HostConfig> = docs.iter().filter_map(|d| d.validate().ok()).collect();
        assert!(in_force.len() > 10 && in_force.len() < docs.len());
        let (mut ok, mut refused) = (0, 0);
        for doc in &docs {
            let mut narrower = doc.clone();
            Arc::make_mut(&mut narrower.agent.bridges)
                .remove("c6910e18-fb1f-4988-9af4-211a8c2e2926");
            for doc in [doc, &narrower] {
                for cfg in &in_force {
                    match both_ways(doc.clone(), cfg) {
                        Ok(_) => ok += 1,
                        Err(_) => refused += 1,
                    }
                }
            }
        }
        assert!(ok > 0 && refused > 0, "{ok} accepted, {refused} refused");
    }

    /// A one-router edit is checked against the claim hashes the unchanged routers keep from
    /// the config in force: a conflict with one of them is found as a full validation finds
    /// it, a clean edit is accepted, and those kept hashes are what is read.
    #[test]
    fn an_edit_is_checked_against_the_kept_claim_hashes() {
        let a = legacy_example();
        let b = second_router(7);
        let in_force = doc_of(&[a.clone(), b.clone()]).validate().unwrap();
        let mut same_fip = b.clone();
        same_fip["_floatingips"][0]["floating_ip_address"] = "203.0.113.2".into();
        let mut fip_on_port = b.clone();
        fip_on_port["_floatingips"][0]["floating_ip_address"] = "203.0.113.4".into();
        let mut same_address = b.clone();
        same_address["gw_port"]["fixed_ips"][0]["ip_address"] = "203.0.113.4".into();
        let mut same_tap = b.clone();
        same_tap["gw_port"]["id"] = "184a6791-c4ff-0000-0000-000000000000".into();
        let mut same_mac = b.clone();
        same_mac["_interfaces"][1]["mac_address"] = a["_interfaces"][1]["mac_address"].clone();
        for edit in [&same_fip, &fip_on_port, &same_address, &same_tap, &same_mac] {
            let e = both_ways(doc_of(&[a.clone(), edit.clone()]), &in_force).unwrap_err();
            assert_eq!(e.len(), 1, "{e:?}");
            assert!(e[0].starts_with("routers[1]."), "{e:?}");
        }
        let mut clean = b.clone();
        clean["_floatingips"][0]["floating_ip_address"] = "203.0.113.5".into();
        let cfg = both_ways(doc_of(&[a.clone(), clean]), &in_force).unwrap();
        assert!(cfg.routers[0].same(&in_force.routers[0]));
        // With a's kept hashes emptied, the edit shares none with a: a is not checked again,
        // and the conflict goes unseen (what a full validation would never miss).
        let mut blind = in_force.clone();
        blind.routers[0].1 = Some(Vec::new().into());
        doc_of(&[a.clone(), same_fip.clone()])
            .validate_since(&blind)
            .expect("a's claims are its kept hashes");
        assert!(doc_of(&[a, same_fip]).validate_since(&in_force).is_err());
    }

    /// Every validated router keeps its own claim hashes (sorted, each once): made by a full
    /// validation and for each router an edit validates, shared with the config in force for
    /// a router taken as it was, dropped by a write, and no part of its equality.
    #[test]
    fn routers_keep_their_own_claim_hashes() {
        let own = |cfg: &HostConfig| {
            for r in &cfg.routers {
                let kept = r.1.as_deref().expect("kept");
                assert_eq!(kept, &*claim_hashes(r));
                assert!(kept.windows(2).all(|w| w[0] < w[1]));
                assert!(!kept.is_empty());
            }
        };
        let a = legacy_example();
        let b = second_router(7);
        let in_force = doc_of(&[a.clone(), b.clone()]).validate().unwrap();
        own(&in_force);
        let mut b2 = b.clone();
        b2["_floatingips"][0]["floating_ip_address"] = "203.0.113.5".into();
        let since = doc_of(&[b2, a.clone()]).validate_since(&in_force).unwrap();
        own(&since);
        assert!(Arc::ptr_eq(
            since.routers[1].1.as_ref().unwrap(),
            in_force.routers[0].1.as_ref().unwrap()
        ));
        assert_ne!(since.routers[0].1, in_force.routers[1].1);
        own(&load_as("dvr", &dvr_example().to_string()).unwrap());

        let mut written = since.routers[0].clone();
        written.fips.clear();
        assert!(written.1.is_none());
        assert_eq!(written.claim_hashes(), claim_hashes(&written));
        assert_ne!(written.claim_hashes(), since.routers[0].claim_hashes());
        let mut bare = since.routers[1].clone();
        bare.1 = None;
        assert_eq!(bare, since.routers[1]);
    }

    #[test]
    fn a_floating_ip_belongs_to_one_router() {
        let a = legacy_example();
        let mut b = second_router(5);
        b["_floatingips"][0]["floating_ip_address"] = "203.0.113.2".into();
        let text = errors(load(&format!("{a},{b}")));
        assert_eq!(
            text,
            vec![
                "routers[1]._floatingips[0].floating_ip_address: floating IP 203.0.113.2 is also \
                 in routers[0]"
            ]
        );
    }

    /// Two routers of one host never share an address on a network, and a floating IP is no
    /// other router's port address (neutron-server's IPAM hands an address out once).
    #[test]
    fn an_address_on_a_network_belongs_to_one_router() {
        let a = legacy_example();
        let mut b = second_router(5);
        b["_floatingips"] = serde_json::json!([]);
        load(&format!("{a},{b}")).expect("addresses of its own");

        let mut same_qr = b.clone();
        same_qr["_interfaces"][0]["fixed_ips"][0]["ip_address"] = "192.0.2.4".into();
        assert_eq!(
            errors(load(&format!("{a},{same_qr}"))),
            vec![
                "routers[1]._interfaces: address 192.0.2.4 of port \
                 00000000-0000-0000-0000-000000000000 is also port \
                 081ed401-2ab1-4bd0-968b-e05235398bb2's (routers[0]._interfaces) on network \
                 90e4912c-0eb8-4be4-a793-e6a3bba6ae8b"
            ]
        );
        let mut same_gw = b.clone();
        same_gw["gw_port"]["fixed_ips"][0]["ip_address"] = "203.0.113.4".into();
        let e = errors(load(&format!("{a},{same_gw}")));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("routers[1].gw_port: address 203.0.113.4 of port"),
            "{e:?}"
        );
        // A floating IP on another router's gateway address, whichever comes first.
        let mut fip_on_gw = b.clone();
        fip_on_gw["_floatingips"] = serde_json::json!([{"id": "f0000000-0000-0000-0000-000000000000",
            "floating_ip_address": "203.0.113.4", "fixed_ip_address": "192.0.2.10"}]);
        for (doc, at) in [
            (format!("{a},{fip_on_gw}"), "routers[1]"),
            (format!("{fip_on_gw},{a}"), "routers[0]"),
        ] {
            let e = errors(load(&doc));
            assert!(
                e.iter().any(|t| t.starts_with(&format!(
                    "{at}._floatingips[0].floating_ip_address: floating IP 203.0.113.4 is the \
                     address of port 184a6791-c482-44ff-948c-90af734c72de"
                ))),
                "{e:?}"
            );
        }
        // The same address on different networks is fine.
        let mut other_net = same_qr.clone();
        other_net["_interfaces"][0]["network_id"] = "c6910e18-fb1f-4988-9af4-211a8c2e2926".into();
        load(&format!("{a},{other_net}")).expect("another network");
    }

    /// Two ports of a host never share a MAC on a network (neutron-server refuses it; two
    /// devices with one MAC on one bridge take each other's traffic), found the same way by
    /// a reload that validates only what changed; on different networks a MAC may repeat.
    #[test]
    fn a_mac_on_a_network_belongs_to_one_port() {
        let a = legacy_example();
        let b = second_router(5);
        let in_force = load(&format!("{a},{b}")).expect("MACs of its own");
        let mut same = b.clone();
        same["_interfaces"][0]["mac_address"] = a["_interfaces"][0]["mac_address"].clone();
        let expect = format!(
            "routers[1]._interfaces: MAC {} of port 00000000-0000-0000-0000-000000000000 is also \
             port {}'s (routers[0]._interfaces) on network {}",
            a["_interfaces"][0]["mac_address"].as_str().unwrap(),
            a["_interfaces"][0]["id"].as_str().unwrap(),
            a["_interfaces"][0]["network_id"].as_str().unwrap(),
        );
        assert_eq!(errors(load(&format!("{a},{same}"))), vec![expect.clone()]);
        assert_eq!(
            errors(since_as("legacy", &format!("{a},{same}"), &in_force)),
            vec![expect]
        );
        // Within one router too.
        let mut twice = b.clone();
        twice["_interfaces"][1]["network_id"] = twice["_interfaces"][0]["network_id"].clone();
        twice["_interfaces"][1]["mac_address"] = twice["_interfaces"][0]["mac_address"].clone();
        let e = errors(load(&twice.to_string()));
        assert!(
            e.iter()
                .any(|t| t.starts_with("routers[0]._interfaces: MAC ")),
            "{e:?}"
        );
        let mut other_net = same.clone();
        other_net["_interfaces"][0]["network_id"] = "c6910e18-fb1f-4988-9af4-211a8c2e2926".into();
        since_as("legacy", &format!("{a},{other_net}"), &in_force).expect("another network");
    }

    /// HA routers of one host on one HA network: each has its own VRRP router id, and its HA
    /// port its own address, MAC and host device (Neutron allocates each once per network),
    /// found the same way by a reload that validates only what changed; on another HA
    /// network the same VRRP router id is fine.
    #[test]
    fn ha_routers_on_one_ha_network_have_their_own_vrid_and_port() {
        const HA_NET: &str = "740cd353-7ee8-49e2-96f6-17ed0dc7b3da";
        fn ha(mut r: serde_json::Value, vr_id: u32, n: u8) -> serde_json::Value {
            r["ha"] = true.into();
            r["ha_vr_id"] = vr_id.into();
            r["_ha_interface"] = serde_json::json!({
                "id": format!("{n}111aaaa-bbbb-4ccc-8ddd-eeeeffff0000"), "network_id": HA_NET,
                "mac_address": format!("fa:16:3e:00:00:0{n}"),
                "fixed_ips": [{"ip_address": format!("169.254.192.{n}"), "prefixlen": 18,
                               "subnet_id": "2222aaaa-bbbb-4ccc-8ddd-eeeeffff0000"}],
                "subnets": [{"id": "2222aaaa-bbbb-4ccc-8ddd-eeeeffff0000",
                             "cidr": "169.254.192.0/18", "gateway_ip": null}]});
            r
        }
        let a = ha(legacy_example(), 7, 1);
        let b = ha(second_router(5), 8, 2);
        let in_force = load(&format!("{a},{b}")).expect("each its own");
        type Edit = fn(&mut serde_json::Value);
        let cases: [(&str, Edit, String); 4] = [
            (
                "VRRP router id",
                |v| v["ha_vr_id"] = 7.into(),
                format!("routers[1].ha_vr_id: VRRP router id 7 is also routers[0]'s on HA network {HA_NET}"),
            ),
            (
                "address",
                |v| v["_ha_interface"]["fixed_ips"][0]["ip_address"] = "169.254.192.1".into(),
                "routers[1]._ha_interface: address 169.254.192.1 of port".into(),
            ),
            (
                "MAC",
                |v| v["_ha_interface"]["mac_address"] = "fa:16:3e:00:00:01".into(),
                "routers[1]._ha_interface: MAC fa:16:3e:00:00:01 of port".into(),
            ),
            (
                "host device",
                |v| v["_ha_interface"]["id"] = "1111aaaa-bbbb-4ccc-8ddd-000000000000".into(),
                "routers[1]._ha_interface: port 1111aaaa-bbbb-4ccc-8ddd-000000000000 and port \
                 1111aaaa-bbbb-4ccc-8ddd-eeeeffff0000 of routers[0]._ha_interface both map to \
                 host device tap1111aaaa-bb"
                    .into(),
            ),
        ];
        for (what, edit, expect) in cases {
            let mut c = b.clone();
            edit(&mut c);
            let e = errors(since_as("legacy", &format!("{a},{c}"), &in_force));
            assert_eq!(e.len(), 1, "{what}: {e:?}");
            assert!(e[0].starts_with(&expect), "{what}: {e:?}");
        }
        let mut other_net = b.clone();
        other_net["ha_vr_id"] = 7.into();
        other_net["_ha_interface"]["network_id"] = "d8282fc8-37e4-43a7-801d-8d2c91dbbb98".into();
        since_as("legacy", &format!("{a},{other_net}"), &in_force).expect("another HA network");
    }

    /// One row per class of semantic mistake neutron-server refuses: the field path and the
    /// start of the message each must produce (and nothing is accepted).
    #[test]
    fn what_neutron_server_would_refuse_is_refused_by_path() {
        type Edit = fn(&mut serde_json::Value);
        let rows: &[(&str, Edit, &str)] = &[
            ("floating IP outside the gateway subnets",
             |v| v["_floatingips"][0]["floating_ip_address"] = "198.18.0.5".into(),
             "routers[0]._floatingips[0].floating_ip_address: 198.18.0.5 is in no subnet of the gateway port"),
            ("floating IP = network address",
             |v| v["_floatingips"][0]["floating_ip_address"] = "203.0.113.0".into(),
             "routers[0]._floatingips[0].floating_ip_address: 203.0.113.0 is the network address of 203.0.113.0/24"),
            ("floating IP = broadcast address",
             |v| v["_floatingips"][0]["floating_ip_address"] = "203.0.113.255".into(),
             "routers[0]._floatingips[0].floating_ip_address: 203.0.113.255 is the broadcast address"),
            ("floating IP = the router's gateway address",
             |v| v["_floatingips"][0]["floating_ip_address"] = "203.0.113.4".into(),
             "routers[0]._floatingips[0].floating_ip_address: 203.0.113.4 is the router's gateway address"),
            ("floating IP = the subnet's gateway",
             |v| v["_floatingips"][0]["floating_ip_address"] = "203.0.113.1".into(),
             "routers[0]._floatingips[0].floating_ip_address: 203.0.113.1 is the gateway_ip of subnet"),
            ("floating IP multicast",
             |v| v["_floatingips"][0]["floating_ip_address"] = "224.0.0.5".into(),
             "routers[0]._floatingips[0].floating_ip_address: 224.0.0.5 is in no subnet"),
            ("floating IPs without a gateway",
             |v| v["gw_port"] = serde_json::Value::Null,
             "routers[0]._floatingips[0].floating_ip_address: 203.0.113.2: a floating IP needs a router with a gateway"),
            ("fixed IP = network address",
             |v| v["_interfaces"][0]["fixed_ips"][0]["ip_address"] = "192.0.2.0".into(),
             "routers[0]._interfaces[0].fixed_ips[0].ip_address: 192.0.2.0 is the network address"),
            ("fixed IP = broadcast address",
             |v| v["_interfaces"][0]["fixed_ips"][0]["ip_address"] = "192.0.2.255".into(),
             "routers[0]._interfaces[0].fixed_ips[0].ip_address: 192.0.2.255 is the broadcast address"),
            ("fixed IP twice in one router",
             |v| {
                 v["_interfaces"][1]["subnets"] = v["_interfaces"][0]["subnets"].clone();
                 v["_interfaces"][1]["fixed_ips"] = v["_interfaces"][0]["fixed_ips"].clone();
             },
             "routers[0]._interfaces[1].fixed_ips: 192.0.2.4 is also an address of routers[0]._interfaces[0]"),
            ("MAC twice on a network",
             |v| {
                 v["_interfaces"][1]["network_id"] = v["_interfaces"][0]["network_id"].clone();
                 v["_interfaces"][1]["mac_address"] = v["_interfaces"][0]["mac_address"].clone();
             },
             "routers[0]._interfaces: MAC ca:fe:de:ad:be:ef of port "),
            ("overlapping subnets",
             |v| {
                 v["_interfaces"][1]["subnets"][0]["cidr"] = "192.0.2.128/25".into();
                 v["_interfaces"][1]["subnets"][0]["gateway_ip"] = "192.0.2.129".into();
                 v["_interfaces"][1]["fixed_ips"][0]["ip_address"] = "192.0.2.130".into();
                 v["_interfaces"][1]["fixed_ips"][0]["prefixlen"] = 25.into();
             },
             "routers[0]._interfaces[1].subnets: subnet 271d0e92-bb1f-4746-abb6-bfa2354888c1 (192.0.2.128/25) overlaps subnet"),
            ("gateway_ip outside its subnet",
             |v| v["_interfaces"][0]["subnets"][0]["gateway_ip"] = "198.51.100.1".into(),
             "routers[0]._interfaces[0].subnets[0].gateway_ip: 198.51.100.1 is outside its subnet"),
            ("gateway_ip multicast",
             |v| v["_interfaces"][0]["subnets"][0]["gateway_ip"] = "ff02::1".into(),
             "routers[0]._interfaces[0].subnets[0].gateway_ip: \"ff02::1\" is not of the subnet's IP version"),
            ("gateway_ip = the router's own gateway address",
             |v| v["gw_port"]["subnets"][0]["gateway_ip"] = "203.0.113.4".into(),
             "routers[0].gw_port.subnets: the gateway_ip 203.0.113.4 of subnet"),
            ("next hop off-link",
             |v| v["routes"][0]["nexthop"] = "198.18.0.1".into(),
             "routers[0].routes[0].nexthop: 198.18.0.1 is not on-link"),
            ("next hop = own address",
             |v| v["routes"][0]["nexthop"] = "203.0.113.4".into(),
             "routers[0].routes[0].nexthop: 203.0.113.4 is one of the router's own addresses"),
            ("next hop = a subnet's network address",
             |v| v["routes"][0]["nexthop"] = "203.0.113.0".into(),
             "routers[0].routes[0].nexthop: 203.0.113.0 is the network address of 203.0.113.0/24"),
            ("route replacing the gateway's extra subnet route",
             |v| v["routes"][0]["destination"] = "100.64.5.0/24".into(),
             "routers[0].routes[0].destination: 100.64.5.0/24 is the extra subnet 100.64.5.0/24 of routers[0].gw_port"),
            ("route replacing a connected route",
             |v| v["routes"][0]["destination"] = "203.0.113.0/24".into(),
             "routers[0].routes[0].destination: 203.0.113.0/24 is the connected subnet"),
            ("route replacing the gateway's default route",
             |v| v["routes"][0]["destination"] = "0.0.0.0/0".into(),
             "routers[0].routes[0].destination: 0.0.0.0/0 would replace the default route"),
            ("duplicate port id in one router",
             |v| v["_interfaces"][1]["id"] = v["_interfaces"][0]["id"].clone(),
             "routers[0]._interfaces[1].id: port 081ed401-2ab1-4bd0-968b-e05235398bb2 is also routers[0]._interfaces[0]"),
            ("IPv6 port with MTU below 1280",
             |v| {
                 v["_interfaces"][1]["subnets"] = serde_json::json!([{"id": "271d0e92-bb1f-4746-abb6-bfa2354888c1", "cidr": "2001:db8:1::/64", "gateway_ip": "2001:db8:1::1"}]);
                 v["_interfaces"][1]["fixed_ips"] = serde_json::json!([{"ip_address": "2001:db8:1::1", "subnet_id": "271d0e92-bb1f-4746-abb6-bfa2354888c1"}]);
                 v["_interfaces"][1]["mtu"] = 1000.into();
             },
             "routers[0]._interfaces[1].mtu: 1000 is below 1280"),
            ("MTU above the kernel's limit",
             |v| v["_interfaces"][0]["mtu"] = 70000.into(),
             "routers[0]._interfaces[0].mtu: 70000 is outside 68..65535"),
            ("all-zero MAC",
             |v| v["_interfaces"][0]["mac_address"] = "00:00:00:00:00:00".into(),
             "routers[0]._interfaces[0].mac_address: invalid value \"00:00:00:00:00:00\": is the all-zero address"),
            ("multicast MAC",
             |v| v["_interfaces"][0]["mac_address"] = "01:00:5e:00:00:01".into(),
             "routers[0]._interfaces[0].mac_address: invalid value \"01:00:5e:00:00:01\": is a multicast address"),
            ("id with a leading dash",
             |v| v["id"] = "-87c7c2ae".into(),
             "routers[0].id: invalid value \"-87c7c2ae\""),
            ("id with a bidi override",
             |v| v["_floatingips"][0]["id"] = "9cb45fce\u{202e}".into(),
             "routers[0]._floatingips[0].id: invalid value \"9cb45fce\\u{202e}\""),
            ("gw_port_host that reads as an option",
             |v| v["gw_port_host"] = "--help".into(),
             "routers[0].gw_port_host: \"--help\" must start with a letter or a digit"),
            ("FIP host with a newline",
             |v| v["_floatingips"][0]["host"] = "host-a\nforged log line".into(),
             "routers[0]._floatingips[0].host: \"host-a\\nforged log line\": character \\n is not allowed"),
        ];
        for (class, edit, expect) in rows {
            let mut v = legacy_example();
            edit(&mut v);
            let text = errors(load(&v.to_string()));
            assert!(
                text.iter().any(|t| t.starts_with(expect)),
                "{class}: missing {expect:?} in {text:#?}"
            );
        }
    }

    /// An `agent` section with the `openvswitch` driver and `extra` merged in.
    fn ovs_doc(extra: serde_json::Value) -> serde_json::Value {
        let mut agent = serde_json::json!({"mode": "legacy", "host": "host-a",
            "state_path": "/tmp/l3agent-test", "interface_driver": "openvswitch"});
        for (k, v) in extra.as_object().into_iter().flatten() {
            agent[k] = v.clone();
        }
        serde_json::json!({"agent": agent, "routers": [legacy_example()]})
    }

    fn validate_value(v: serde_json::Value) -> Result<HostConfig, Vec<ConfigError>> {
        serde_json::from_value::<ConfigDoc>(v)
            .map_err(|e| {
                vec![ConfigError {
                    path: "file".into(),
                    message: e.to_string(),
                }]
            })?
            .validate()
    }

    #[test]
    fn traffic_accounting_is_an_optional_boolean_off_by_default() {
        let cfg = validate_value(ovs_doc(serde_json::json!({}))).unwrap();
        assert!(!cfg.agent.traffic_accounting);
        // Absent, it is not written back (applied records stay as they were).
        let written = serde_json::to_value(&cfg.doc.agent).unwrap();
        assert!(written.get("traffic_accounting").is_none(), "{written}");
        let on = ovs_doc(serde_json::json!({"traffic_accounting": true}));
        let cfg = validate_value(on).unwrap();
        assert!(cfg.agent.traffic_accounting);
        let off = ovs_doc(serde_json::json!({"traffic_accounting": false}));
        assert!(!validate_value(off).unwrap().agent.traffic_accounting);

        // Not a boolean: refused with the field's path, from YAML and JSON files alike.
        let parse = |text: &str, format| {
            l3agent_doc::parse::<ConfigDoc>(
                text.as_bytes(),
                format,
                &l3agent_doc::Limits::default(),
                "",
            )
            .map(|_| ())
            .unwrap_err()
            .to_string()
        };
        let yaml = "agent:\n  mode: legacy\n  host: host-a\n  state_path: /tmp/l3agent-test\n  \
                    traffic_accounting: \"yes\"\nrouters: []\n";
        let e = parse(yaml, l3agent_doc::Format::Yaml);
        assert!(
            e.starts_with(
                "agent.traffic_accounting: invalid type: string \"yes\", expected a boolean"
            ),
            "{e}"
        );
        let mut json = ovs_doc(serde_json::json!({"traffic_accounting": "yes"}));
        json["routers"] = serde_json::json!([]);
        let e = parse(&json.to_string(), l3agent_doc::Format::Json);
        assert!(
            e.starts_with(
                "agent.traffic_accounting: invalid type: string \"yes\", expected a boolean"
            ),
            "{e}"
        );
        // A misspelt key is still an unknown field.
        let e = parse(
            &yaml.replace("traffic_accounting: \"yes\"", "traffic_acounting: true"),
            l3agent_doc::Format::Yaml,
        );
        assert!(e.contains("unknown field `traffic_acounting`"), "{e}");
    }

    #[test]
    fn the_openvswitch_driver_needs_no_bridges_and_plugs_every_port_on_the_integration_bridge() {
        let cfg = validate_value(ovs_doc(serde_json::json!({}))).unwrap();
        assert_eq!(cfg.agent.interface_driver, InterfaceDriver::Openvswitch);
        let ovs = cfg.agent.ovs.clone().unwrap();
        assert_eq!(ovs.bridge.as_str(), "br-int");
        assert_eq!(ovs.db, PathBuf::from("/run/openvswitch/db.sock"));
        let r = &cfg.routers[0];
        for p in r.interfaces.iter().chain(r.gw_port.as_ref()) {
            assert_eq!(p.bridge.as_str(), "br-int", "{}", p.dev);
            assert_eq!(p.driver, InterfaceDriver::Openvswitch);
        }
        let cfg = validate_value(ovs_doc(serde_json::json!({
            "integration_bridge": "br-int2", "ovsdb": "unix:/var/run/ovs/db.sock"})))
        .unwrap();
        let ovs = cfg.agent.ovs.unwrap();
        assert_eq!(
            (ovs.bridge.as_str(), ovs.db.to_str().unwrap()),
            ("br-int2", "/var/run/ovs/db.sock")
        );
        // The default driver is linuxbridge, and a config that does not name one is written
        // back (the "last applied" record) exactly as before.
        let cfg = load(&legacy_example().to_string()).unwrap();
        assert_eq!(cfg.agent.interface_driver, InterfaceDriver::Linuxbridge);
        assert!(cfg.agent.ovs.is_none());
        assert!(cfg.routers[0].interfaces[0].driver == InterfaceDriver::Linuxbridge);
        let written = serde_json::to_value(&cfg.doc.agent).unwrap();
        for key in ["interface_driver", "integration_bridge", "ovsdb"] {
            assert!(written.get(key).is_none(), "{key} in {written}");
        }
    }

    /// One row per mistake in the `openvswitch` settings: the path and the start of the
    /// message (and nothing is accepted).
    #[test]
    fn bad_openvswitch_settings_are_refused_by_path() {
        let long = format!("unix:/{}", "d".repeat(110));
        let bridges = serde_json::json!({"90e4912c-0eb8-4be4-a793-e6a3bba6ae8b": "br-t1",
            "c6910e18-fb1f-4988-9af4-211a8c2e2926": "br-t2", "65566f91-133a-44ff-87f5-ecffc1193d3d": "br-ex"});
        let rows: &[(&str, serde_json::Value, &str)] = &[
            ("a TCP remote", serde_json::json!({"ovsdb": "tcp:127.0.0.1:6640"}),
             "agent.ovsdb: \"tcp:127.0.0.1:6640\": only unix:PATH is supported"),
            ("an SSL remote", serde_json::json!({"ovsdb": "ssl:192.0.2.1:6640"}),
             "agent.ovsdb: \"ssl:192.0.2.1:6640\": only unix:PATH is supported"),
            ("a bare path", serde_json::json!({"ovsdb": "/run/openvswitch/db.sock"}),
             "agent.ovsdb: \"/run/openvswitch/db.sock\" is not unix:PATH"),
            ("a relative socket", serde_json::json!({"ovsdb": "unix:run/db.sock"}),
             "agent.ovsdb: socket \"run/db.sock\" must be an absolute path"),
            ("a socket path with ..", serde_json::json!({"ovsdb": "unix:/run/../db.sock"}),
             "agent.ovsdb: socket \"/run/../db.sock\" must not contain `..`"),
            ("a socket path with a control character", serde_json::json!({"ovsdb": "unix:/run/db\n.sock"}),
             "agent.ovsdb: socket \"/run/db\\n.sock\" holds a control or format character"),
            ("a socket path too long for sun_path", serde_json::json!({"ovsdb": long}),
             "agent.ovsdb: socket path \"/ddd"),
            ("an empty socket", serde_json::json!({"ovsdb": "unix:"}),
             "agent.ovsdb: socket \"\" must be an absolute path"),
            ("a bridge name with a space", serde_json::json!({"integration_bridge": "br int"}),
             "agent.integration_bridge: invalid value \"br int\""),
            ("a bridge name too long", serde_json::json!({"integration_bridge": "br-integration-1"}),
             "agent.integration_bridge: invalid value \"br-integration-1\": must be 1 to 15 characters"),
            ("Linux bridges with openvswitch", serde_json::json!({"bridges": {"65566f91-133a-44ff-87f5-ecffc1193d3d": "br-ex"}}),
             "agent.bridges: is only used with interface_driver: linuxbridge"),
            ("integration_bridge with linuxbridge", serde_json::json!({"interface_driver": "linuxbridge", "integration_bridge": "br-int", "bridges": bridges}),
             "agent.integration_bridge: is only used with interface_driver: openvswitch"),
            ("ovsdb without a driver", serde_json::json!({"interface_driver": null, "ovsdb": "unix:/run/openvswitch/db.sock", "bridges": bridges}),
             "agent.ovsdb: is only used with interface_driver: openvswitch"),
            ("an unknown driver", serde_json::json!({"interface_driver": "ovs"}),
             "unknown variant `ovs`, expected `linuxbridge` or `openvswitch`"),
        ];
        for (class, extra, expect) in rows {
            let text = errors(validate_value(ovs_doc(extra.clone())));
            assert!(
                text.iter().any(|t| t.contains(expect)),
                "{class}: missing {expect:?} in {text:#?}"
            );
            // The agent's problem only: no knock-on error about the routers' ports.
            assert!(
                !text.iter().any(|t| t.starts_with("routers[")),
                "{class}: {text:#?}"
            );
        }
    }

    #[test]
    fn agent_host_and_state_path_are_held_to_names_and_normal_paths() {
        for (host, state, expect) in [
            (
                "host a",
                "/var/lib/l3agent",
                "agent.host: \"host a\": character",
            ),
            ("-h", "/var/lib/l3agent", "agent.host: \"-h\" must start"),
            (
                "h",
                "/var/lib/../tmp/x",
                "agent.state_path: \"/var/lib/../tmp/x\" must not contain `..`",
            ),
            (
                "h",
                "/var/lib/./l3agent",
                "agent.state_path: \"/var/lib/./l3agent\" is not normalised",
            ),
            (
                "h",
                "/var//lib",
                "agent.state_path: \"/var//lib\" is not normalised",
            ),
            (
                "h",
                "/var/lib/l3\u{7}agent",
                "agent.state_path: \"/var/lib/l3\\u{7}agent\" holds a control",
            ),
            (
                "h",
                "var/lib",
                "agent.state_path: \"var/lib\" must be an absolute path",
            ),
        ] {
            let doc = serde_json::json!({"agent": {"mode": "legacy", "host": host, "state_path": state}, "routers": []});
            let doc: ConfigDoc = serde_json::from_value(doc).unwrap();
            let text: Vec<String> = doc
                .validate()
                .unwrap_err()
                .iter()
                .map(ToString::to_string)
                .collect();
            assert!(
                text.iter().any(|t| t.starts_with(expect)),
                "missing {expect:?} in {text:#?}"
            );
        }
        let doc = serde_json::json!({"agent": {"mode": "legacy", "host": "net-1.example", "state_path": "/var/lib/l3agent/"}, "routers": []});
        assert!(serde_json::from_value::<ConfigDoc>(doc)
            .unwrap()
            .validate()
            .is_ok());
    }
}

#[cfg(test)]
mod example_file {
    #[test]
    fn the_shipped_example_validates() {
        let text = include_str!("../../../examples/host-legacy.json");
        let doc: super::ConfigDoc = serde_json::from_str(text).unwrap();
        let cfg = doc.validate().unwrap();
        assert_eq!(cfg.routers.len(), 1);
    }
}
