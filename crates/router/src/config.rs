//! The host config: `agent` (strict: unknown keys are errors) and `routers` in the exact shape
//! neutron-server sends to an L3 agent (fields l3agent does not use are accepted and ignored).
//! Everything is validated before anything touches the kernel, and every problem is reported
//! with its path in the file (`routers[0]._interfaces[1].fixed_ips[0].ip_address: ...`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use ipnet::IpNet;
use l3agent_types::{IfName, NetnsName};
use serde::{Deserialize, Serialize};

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

/// `agent:` as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentDoc {
    /// Agent mode.
    pub mode: AgentMode,
    /// This host's name (matched against `gw_port_host` and FIP `host`).
    pub host: String,
    /// Where allocator and state files live.
    pub state_path: PathBuf,
    /// Network id → Linux bridge in l3agent's own namespace.
    #[serde(default)]
    pub bridges: BTreeMap<String, String>,
}

/// The whole file as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigDoc {
    /// The agent.
    pub agent: AgentDoc,
    /// Neutron router dicts.
    #[serde(default)]
    pub routers: Vec<RouterDoc>,
}

fn yes() -> bool {
    true
}

/// A router dict (Neutron's shape; unknown fields ignored).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RouterDoc {
    /// Router id.
    pub id: String,
    /// Admin state.
    #[serde(default = "yes")]
    pub admin_state_up: bool,
    /// DVR router.
    #[serde(default)]
    pub distributed: bool,
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
    #[serde(default, rename = "_interfaces")]
    pub interfaces: Vec<PortDoc>,
    /// SNAT ports (DVR).
    #[serde(default, rename = "_snat_router_interfaces")]
    pub snat_interfaces: Vec<PortDoc>,
    /// FIP agent gateway ports (DVR).
    #[serde(default, rename = "_floatingip_agent_interfaces")]
    pub fip_agent_interfaces: Vec<PortDoc>,
    /// Floating IPs.
    #[serde(default, rename = "_floatingips")]
    pub floatingips: Vec<FipDoc>,
    /// Extra routes.
    #[serde(default)]
    pub routes: Vec<RouteDoc>,
}

/// `external_gateway_info`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct GatewayInfoDoc {
    /// SNAT.
    #[serde(default)]
    pub enable_snat: Option<bool>,
}

/// A port dict.
#[derive(Debug, Clone, Deserialize, Serialize)]
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
    #[serde(default)]
    pub fixed_ips: Vec<FixedIpDoc>,
    /// Subnets of the port.
    #[serde(default)]
    pub subnets: Vec<SubnetDoc>,
    /// Extra subnets (on-link routes).
    #[serde(default)]
    pub extra_subnets: Vec<ExtraSubnetDoc>,
}

/// A fixed IP.
#[derive(Debug, Clone, Deserialize, Serialize)]
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
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct SubnetDoc {
    /// Subnet id.
    pub id: String,
    /// CIDR.
    pub cidr: String,
    /// Gateway.
    #[serde(default)]
    pub gateway_ip: Option<String>,
}

/// An extra subnet.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ExtraSubnetDoc {
    /// CIDR.
    pub cidr: String,
}

/// A floating IP.
#[derive(Debug, Clone, Deserialize, Serialize)]
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
}

/// An extra route.
#[derive(Debug, Clone, Deserialize, Serialize)]
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
    pub id: String,
    /// CIDR.
    pub cidr: IpNet,
    /// Gateway.
    pub gateway: Option<IpAddr>,
}

/// A port, validated, with its device names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Port {
    /// Id.
    pub id: String,
    /// Network id.
    pub network_id: String,
    /// MAC.
    pub mac: [u8; 6],
    /// MTU.
    pub mtu: u32,
    /// Addresses with prefix length.
    pub ips: Vec<IpNet>,
    /// Subnets.
    pub subnets: Vec<Subnet>,
    /// Extra subnets.
    pub extra_subnets: Vec<IpNet>,
    /// Device in the router-side namespace (`qr-`, `qg-`, `sg-`, `fg-` + id, 14 chars).
    pub dev: IfName,
    /// Host end of the veth (`tap` + id, 14 chars), on `bridge`.
    pub host_dev: IfName,
    /// The bridge of its network.
    pub bridge: IfName,
}

/// A floating IP, validated (IPv4, associated).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fip {
    /// Id.
    pub id: String,
    /// Floating address.
    pub floating: Ipv4Addr,
    /// Fixed address.
    pub fixed: Ipv4Addr,
    /// DVR host.
    pub host: Option<String>,
}

/// A router, validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Router {
    /// Id.
    pub id: String,
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
    /// Extra routes (destination, next hop).
    pub routes: Vec<(IpNet, IpAddr)>,
}

impl Router {
    /// `qrouter-<id>`.
    pub fn namespace(&self) -> NetnsName {
        NetnsName::new("id", &format!("qrouter-{}", self.id)).expect("validated")
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
    /// Network id → bridge.
    pub bridges: BTreeMap<String, IfName>,
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
}

fn id_ok(id: &str) -> bool {
    !id.is_empty() && id.len() <= 48 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// `(prefix + id)[:14]`, Neutron's LINUX_DEV_LEN.
pub fn device_name(prefix: &str, id: &str) -> String {
    format!("{prefix}{id}").chars().take(14).collect()
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return None;
        }
        mac[i] = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

fn port(doc: &PortDoc, path: &str, prefix: &str, agent: &Agent, p: &mut Problems) -> Option<Port> {
    let before = p.0.len();
    if !id_ok(&doc.id) {
        p.add(
            &format!("{path}.id"),
            format!("invalid port id {:?}", doc.id),
        );
    }
    let mac = parse_mac(&doc.mac_address);
    if mac.is_none() {
        p.add(
            &format!("{path}.mac_address"),
            format!("{:?} is not a MAC address", doc.mac_address),
        );
    }
    let mtu = doc.mtu.unwrap_or(1500);
    if !(68..=65535).contains(&mtu) {
        p.add(
            &format!("{path}.mtu"),
            format!("{mtu} is outside 68..65535"),
        );
    }
    let bridge = agent.bridges.get(&doc.network_id).cloned();
    if bridge.is_none() {
        p.add(
            &format!("{path}.network_id"),
            format!(
                "network {:?} has no bridge in agent.bridges",
                doc.network_id
            ),
        );
    }
    let mut subnets = Vec::new();
    for (i, s) in doc.subnets.iter().enumerate() {
        let sp = format!("{path}.subnets[{i}]");
        let cidr = match s.cidr.parse::<IpNet>() {
            Ok(c) if c == c.trunc() => Some(c),
            Ok(_) => {
                p.add(
                    &format!("{sp}.cidr"),
                    format!("{:?} has host bits set", s.cidr),
                );
                None
            }
            Err(_) => {
                p.add(&format!("{sp}.cidr"), format!("{:?} is not a CIDR", s.cidr));
                None
            }
        };
        let gateway = match &s.gateway_ip {
            None => None,
            Some(g) => match g.parse::<IpAddr>() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    p.add(
                        &format!("{sp}.gateway_ip"),
                        format!("{g:?} is not an IP address"),
                    );
                    None
                }
            },
        };
        if let Some(cidr) = cidr {
            subnets.push(Subnet {
                id: s.id.clone(),
                cidr,
                gateway,
            });
        }
    }
    let mut ips = Vec::new();
    for (i, f) in doc.fixed_ips.iter().enumerate() {
        let fp = format!("{path}.fixed_ips[{i}]");
        let Ok(ip) = f.ip_address.parse::<IpAddr>() else {
            p.add(
                &format!("{fp}.ip_address"),
                format!("{:?} is not an IP address", f.ip_address),
            );
            continue;
        };
        let Some(subnet) = subnets.iter().find(|s| s.id == f.subnet_id) else {
            p.add(
                &format!("{fp}.subnet_id"),
                format!("subnet {:?} is not among the port's subnets", f.subnet_id),
            );
            continue;
        };
        if !subnet.cidr.contains(&ip) {
            p.add(
                &format!("{fp}.ip_address"),
                format!("{ip} is outside its subnet {}", subnet.cidr),
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
                format!("{:?} is not a CIDR", e.cidr),
            ),
        }
    }
    let dev = IfName::new(&format!("{path}.id"), &device_name(prefix, &doc.id));
    let host_dev = IfName::new(&format!("{path}.id"), &device_name("tap", &doc.id));
    if p.0.len() != before {
        return None;
    }
    Some(Port {
        id: doc.id.clone(),
        network_id: doc.network_id.clone(),
        mac: mac?,
        mtu,
        ips,
        subnets,
        extra_subnets,
        dev: dev.ok()?,
        host_dev: host_dev.ok()?,
        bridge: bridge?,
    })
}

fn router(doc: &RouterDoc, path: &str, agent: &Agent, p: &mut Problems) -> Option<Router> {
    let before = p.0.len();
    if !id_ok(&doc.id) || NetnsName::new("id", &format!("qrouter-{}", doc.id)).is_err() {
        p.add(
            &format!("{path}.id"),
            format!(
                "invalid router id {:?} (letters, digits and '-', at most 48)",
                doc.id
            ),
        );
    }
    let ports = |list: &[PortDoc], field: &str, prefix: &str, p: &mut Problems| -> Vec<Port> {
        list.iter()
            .enumerate()
            .filter(|(_, d)| d.admin_state_up)
            .filter_map(|(i, d)| port(d, &format!("{path}.{field}[{i}]"), prefix, agent, p))
            .collect()
    };
    let interfaces = ports(&doc.interfaces, "_interfaces", "qr-", p);
    let snat_interfaces = ports(&doc.snat_interfaces, "_snat_router_interfaces", "sg-", p);
    let fip_agent_interfaces = ports(
        &doc.fip_agent_interfaces,
        "_floatingip_agent_interfaces",
        "fg-",
        p,
    );
    let gw_port = doc
        .gw_port
        .as_ref()
        .and_then(|g| port(g, &format!("{path}.gw_port"), "qg-", agent, p));
    // Device names are truncated ids (Neutron D-06): two ports sharing 11 id characters would
    // collide in one namespace. Refused, never silently merged.
    let mut seen = BTreeMap::new();
    for (field, list) in [
        ("_interfaces", &interfaces),
        ("_snat_router_interfaces", &snat_interfaces),
    ] {
        for port in list.iter() {
            if let Some(other) = seen.insert(port.dev.clone(), format!("{field} port {}", port.id))
            {
                p.add(
                    &format!("{path}.{field}"),
                    format!(
                        "port {} and {other} both map to device {}",
                        port.id, port.dev
                    ),
                );
            }
        }
    }
    let mut fips = Vec::new();
    for (i, f) in doc.floatingips.iter().enumerate() {
        let fp = format!("{path}._floatingips[{i}]");
        let Some(fixed) = &f.fixed_ip_address else {
            continue;
        };
        let floating = f.floating_ip_address.parse::<Ipv4Addr>();
        let fixed_ip = fixed.parse::<Ipv4Addr>();
        match (floating, fixed_ip) {
            (Ok(floating), Ok(fixed)) => {
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
                fips.push(Fip {
                    id: f.id.clone(),
                    floating,
                    fixed,
                    host: f.host.clone(),
                });
            }
            (Err(_), _) => p.add(
                &format!("{fp}.floating_ip_address"),
                format!("{:?} is not an IPv4 address", f.floating_ip_address),
            ),
            (_, Err(_)) => p.add(
                &format!("{fp}.fixed_ip_address"),
                format!("{fixed:?} is not an IPv4 address"),
            ),
        }
    }
    let mut seen_fips = BTreeSet::new();
    for f in &fips {
        if !seen_fips.insert(f.floating) {
            p.add(
                &format!("{path}._floatingips"),
                format!("floating IP {} appears twice", f.floating),
            );
        }
    }
    let mut routes = Vec::new();
    for (i, r) in doc.routes.iter().enumerate() {
        let rp = format!("{path}.routes[{i}]");
        match (r.destination.parse::<IpNet>(), r.nexthop.parse::<IpAddr>()) {
            (Ok(d), Ok(n)) if d.addr().is_ipv4() == n.is_ipv4() => routes.push((d.trunc(), n)),
            (Ok(_), Ok(_)) => p.add(&rp, "destination and nexthop are of different families"),
            (Err(_), _) => p.add(
                &format!("{rp}.destination"),
                format!("{:?} is not a CIDR", r.destination),
            ),
            (_, Err(_)) => p.add(
                &format!("{rp}.nexthop"),
                format!("{:?} is not an IP address", r.nexthop),
            ),
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
    Some(Router {
        id: doc.id.clone(),
        admin_state_up: doc.admin_state_up,
        distributed: doc.distributed,
        enable_snat,
        gw_port,
        gw_port_host: doc.gw_port_host.clone(),
        interfaces,
        snat_interfaces,
        fip_agent_interfaces,
        fips,
        routes,
    })
}

impl ConfigDoc {
    /// Validates everything; all problems are returned, each with its path.
    pub fn validate(&self) -> Result<HostConfig, Vec<ConfigError>> {
        let mut p = Problems::default();
        if self.agent.host.is_empty() {
            p.add("agent.host", "must not be empty");
        }
        if !self.agent.state_path.is_absolute() {
            p.add(
                "agent.state_path",
                format!("{:?} must be an absolute path", self.agent.state_path),
            );
        }
        let mut bridges = BTreeMap::new();
        for (net, br) in &self.agent.bridges {
            match IfName::new(&format!("agent.bridges.{net}"), br) {
                Ok(b) => {
                    bridges.insert(net.clone(), b);
                }
                Err(e) => p.add(
                    &e.field,
                    format!("invalid bridge name {:?}: {}", e.value, e.reason),
                ),
            }
        }
        let agent = Agent {
            mode: self.agent.mode,
            host: self.agent.host.clone(),
            state_path: self.agent.state_path.clone(),
            bridges,
        };
        let mut routers = Vec::new();
        let mut ids = BTreeMap::new();
        let mut host_devs: BTreeMap<IfName, String> = BTreeMap::new();
        for (i, doc) in self.routers.iter().enumerate() {
            let path = format!("routers[{i}]");
            if let Some(first) = ids.insert(doc.id.clone(), i) {
                p.add(
                    &format!("{path}.id"),
                    format!("router {:?} is also routers[{first}]", doc.id),
                );
                continue;
            }
            if let Some(r) = router(doc, &path, &agent, &mut p) {
                for port in r
                    .interfaces
                    .iter()
                    .chain(&r.gw_port)
                    .chain(&r.snat_interfaces)
                    .chain(&r.fip_agent_interfaces)
                {
                    if let Some(other) =
                        host_devs.insert(port.host_dev.clone(), format!("{path} port {}", port.id))
                    {
                        if !other.ends_with(&port.id) {
                            p.add(
                                &path,
                                format!(
                                    "port {} and {other} both map to host device {}",
                                    port.id, port.host_dev
                                ),
                            );
                        }
                    }
                }
                routers.push(r);
            }
        }
        if p.0.is_empty() {
            Ok(HostConfig {
                agent,
                routers,
                doc: self.clone(),
            })
        } else {
            Err(p.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent_json() -> &'static str {
        r#""agent": {"mode": "legacy", "host": "host-a", "state_path": "/tmp/l3agent-test",
            "bridges": {"90e4912c-0eb8-4be4-a793-e6a3bba6ae8b": "br-t1", "c6910e18-fb1f-4988-9af4-211a8c2e2926": "br-t2",
                        "65566f91-133a-44ff-87f5-ecffc1193d3d": "br-ex"}}"#
    }

    fn load(routers: &str) -> Result<HostConfig, Vec<ConfigError>> {
        let text = format!("{{{}, \"routers\": [{routers}]}}", agent_json());
        let doc: ConfigDoc = serde_json::from_str(&text).map_err(|e| {
            vec![ConfigError {
                path: "file".into(),
                message: e.to_string(),
            }]
        })?;
        doc.validate()
    }

    /// A copy of shared/examples/neutron-router-legacy.json (Neutron's own test helpers).
    fn legacy_example() -> String {
        include_str!("../tests/data/neutron-router-legacy.json").to_owned()
    }

    #[test]
    fn neutron_example_is_accepted() {
        let cfg = load(&legacy_example()).unwrap();
        let r = &cfg.routers[0];
        assert_eq!(
            r.namespace().as_str(),
            "qrouter-87c7c2ae-d0ba-4691-820c-8053abf50b8d"
        );
        assert_eq!(r.interfaces[0].dev.as_str(), "qr-081ed401-2a");
        assert_eq!(r.interfaces[0].host_dev.as_str(), "tap081ed401-2a");
        assert_eq!(r.gw_port.as_ref().unwrap().dev.as_str(), "qg-184a6791-c4");
        assert_eq!(r.gateway_ipv4(), Some("203.0.113.4".parse().unwrap()));
        assert_eq!(
            r.fips[0].floating,
            "203.0.113.2".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(
            r.routes,
            vec![(
                "100.64.8.0/24".parse().unwrap(),
                "203.0.113.4".parse().unwrap()
            )]
        );
        assert!(r.enable_snat);
    }

    #[test]
    fn every_problem_is_listed_by_path() {
        let mut v: serde_json::Value = serde_json::from_str(&legacy_example()).unwrap();
        v["_interfaces"][0]["fixed_ips"][0]["ip_address"] = "198.51.100.77".into();
        v["_interfaces"][1]["subnets"][0]["cidr"] = "198.51.100.0/33".into();
        v["_interfaces"][1]["network_id"] = "no-such-net".into();
        v["gw_port"]["mac_address"] = "zz:zz".into();
        v["routes"][0]["nexthop"] = "nope".into();
        let dup = v.clone();
        let errs = load(&format!("{v},{dup}")).unwrap_err();
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        for expect in [
            "routers[0]._interfaces[0].fixed_ips[0].ip_address: 198.51.100.77 is outside its subnet 192.0.2.0/24",
            "routers[0]._interfaces[1].network_id: network \"no-such-net\" has no bridge",
            "routers[0]._interfaces[1].subnets[0].cidr: \"198.51.100.0/33\" is not a CIDR",
            "routers[0].gw_port.mac_address",
            "routers[0].routes[0].nexthop",
            "routers[1].id: router \"87c7c2ae-d0ba-4691-820c-8053abf50b8d\" is also routers[0]",
        ] {
            assert!(text.iter().any(|t| t.starts_with(expect)), "missing {expect:?} in {text:#?}");
        }
    }

    #[test]
    fn agent_section_is_strict() {
        let text = r#"{"agent": {"mode": "legacy", "host": "h", "state_path": "/x", "bogus": 1}}"#;
        assert!(serde_json::from_str::<ConfigDoc>(text)
            .unwrap_err()
            .to_string()
            .contains("bogus"));
        let text = r#"{"agent": {"mode": "dvr_no_external", "host": "h", "state_path": "/x"}}"#;
        assert!(serde_json::from_str::<ConfigDoc>(text).is_err());
        let doc: ConfigDoc = serde_json::from_str(r#"{"agent": {"mode": "dvr", "host": "", "state_path": "rel", "bridges": {"n": "a-bridge-name-too-long"}}}"#).unwrap();
        let errs: Vec<String> = doc
            .validate()
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(errs.len(), 3, "{errs:#?}");
        assert!(
            errs.iter()
                .any(|e| e.starts_with("agent.bridges.n: invalid bridge name")),
            "{errs:#?}"
        );
    }

    #[test]
    fn truncated_device_names_must_not_collide() {
        let mut v: serde_json::Value = serde_json::from_str(&legacy_example()).unwrap();
        v["_interfaces"][1]["id"] = "081ed401-2abX-0000-0000-000000000000".into();
        let errs = load(&v.to_string()).unwrap_err();
        assert!(
            errs.iter()
                .any(|e| e.message.contains("both map to device qr-081ed401-2a")),
            "{errs:?}"
        );
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
