//! keepalived.conf of an HA router and its health-check script, as
//! `agent/linux/keepalived.py` renders them (`KeepalivedConf.get_config_str`,
//! `KeepalivedInstance.build_config`, `KeepalivedTrackScript`), with the instance
//! `ha_router.py: HaRouter._init_keepalived_manager` builds: `state BACKUP`, `nopreempt`,
//! `garp_master_delay 60`, the ha- device as the only tracked interface (NEUTRON-OPS.md §1.4).
//!
//! The text is Neutron's: lines joined with `\n`, no trailing newline, and, when the health
//! check is on, an empty line before and after the `vrrp_script` block (its preamble starts
//! and ends with `''`; NEUTRON-OPS.md's sample drops these two lines).
//!
//! Where we deliberately differ: nothing in the text. Neutron decides `no_track` by running
//! `keepalived --version` (>= 2.0.3); here it is [`KeepalivedConf::no_track`], found out by the
//! caller. Neutron builds the routes from three lists (`gateway_routes`, `extra_routes`,
//! `extra_subnets`); here they are one list of [`VirtualRoute`]s, rendered in Neutron's order
//! (stable by kind). The files' paths and modes (0644 for the configuration, 0520 for the
//! script) are the supervisor's.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use l3agent_types::IfName;

use crate::{invalid, ConfPath, Error};

/// `keepalived.py: HA_DEFAULT_PRIORITY`: the server never sends a priority, so every node
/// uses 50 and VRRP breaks the tie by the highest ha- address.
pub const HA_DEFAULT_PRIORITY: u8 = 50;

/// `keepalived.py: GARP_PRIMARY_DELAY` (`garp_master_delay`), a constant, not an option.
pub const GARP_PRIMARY_DELAY: u32 = 60;

/// `keepalived.py: PRIMARY_VIP_RANGE_SIZE`.
pub const PRIMARY_VIP_RANGE_SIZE: u8 = 24;

/// `keepalived.py: HEALTH_CHECK_NAME`, the `vrrp_script` name prefix.
pub const HEALTH_CHECK_NAME: &str = "ha_health_check";

/// The one VRRP instance of a router's keepalived.conf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeepalivedConf {
    /// `ha_vr_id` (1..=254): `vrrp_instance VR_<vrid>`, `virtual_router_id`.
    pub vrid: u8,
    /// The ha- device: `interface`, the only `track_interface`, the primary VIP's device.
    pub interface: IfName,
    /// `priority` ([`HA_DEFAULT_PRIORITY`]).
    pub priority: u8,
    /// `ha_vrrp_advert_int`, seconds (Neutron omits the line for 0; its option has `min=1`).
    pub advert_int: u32,
    /// `ha_vrrp_auth_type` and `ha_vrrp_auth_password`, when a password is set.
    pub auth: Option<(AuthType, VrrpPassword)>,
    /// The only `virtual_ipaddress`: [`primary_vip`] of the VRID and the HA subnet.
    pub primary_vip: Ipv4Net,
    /// `virtual_ipaddress_excluded`, in insertion order (qr- and qg- fixed IPs, floating
    /// IPs as /32, the link-local addresses). Rendered sorted by the address text and without
    /// repeats, as `KeepalivedInstance.add_vip` and `_build_vips_config` do.
    pub excluded_vips: Vec<ExcludedVip>,
    /// `virtual_routes`.
    pub routes: Vec<VirtualRoute>,
    /// keepalived >= 2.0.3 (`no_track` on excluded VIPs of untracked devices and on every
    /// route; #1874211, #1896506).
    pub no_track: bool,
    /// `ha_vrrp_health_check_interval` > 0.
    pub health_check: Option<HealthCheck>,
}

/// `ha_vrrp_auth_type` (`keepalived.py: VALID_AUTH_TYPES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthType {
    /// `PASS` (Neutron's default): the password in clear in every advertisement.
    Pass,
    /// `AH`: IPsec AH.
    Ah,
}

impl AuthType {
    /// Parses Neutron's `PASS` / `AH`; `field` names it in the error.
    pub fn parse(field: &str, value: &str) -> Result<AuthType, Error> {
        match value {
            "PASS" => Ok(AuthType::Pass),
            "AH" => Ok(AuthType::Ah),
            _ => Err(invalid(field, value, "must be PASS or AH")),
        }
    }

    /// keepalived's keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthType::Pass => "PASS",
            AuthType::Ah => "AH",
        }
    }
}

/// `ha_vrrp_auth_password`: 1..=8 printable ASCII characters (keepalived keeps 8 and drops the
/// rest), none of them a quote, `\`, or a character keepalived's parser treats specially
/// (`#`, `!` comments, `$` definitions, `{`, `}` blocks). It is a secret: `Debug` shows
/// `VrrpPassword(<redacted>)`, there is no `Display`, and errors never repeat it.
#[derive(Clone, PartialEq, Eq)]
pub struct VrrpPassword(String);

impl VrrpPassword {
    /// The field errors name.
    pub const FIELD: &'static str = "ha_vrrp_auth_password";
    /// keepalived's `auth_pass` length.
    pub const MAX_LEN: usize = 8;

    /// Validates the password. The error names [`VrrpPassword::FIELD`] and never the value.
    pub fn new(value: &str) -> Result<VrrpPassword, Error> {
        let reject = |reason: String| Error::InvalidSecret {
            field: Self::FIELD.to_owned(),
            reason,
        };
        if value.is_empty() || value.chars().count() > Self::MAX_LEN {
            return Err(reject(format!(
                "must be 1 to {} characters (keepalived's auth_pass)",
                Self::MAX_LEN
            )));
        }
        if let Some(position) = value.chars().position(|c| {
            !c.is_ascii_graphic() || matches!(c, '"' | '\'' | '\\' | '#' | '!' | '$' | '{' | '}')
        }) {
            return Err(reject(format!(
                "character {} is not allowed (printable ASCII only, no quote, \\ # ! $ {{ }})",
                position + 1
            )));
        }
        Ok(VrrpPassword(value.to_owned()))
    }

    /// The password, for the one place that writes it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for VrrpPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VrrpPassword(<redacted>)")
    }
}

/// One `virtual_ipaddress_excluded` entry (`KeepalivedVipAddress`):
/// `<cidr> dev <dev>[ scope link][ no_track]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExcludedVip {
    /// The address with its prefix length, as on the device.
    pub cidr: IpNet,
    /// The device keepalived puts it on.
    pub dev: IfName,
    /// `scope link` (the EUI-64 link-local addresses).
    pub scope_link: bool,
}

/// One `virtual_routes` entry (`KeepalivedVirtualRoute`), by the kind of route
/// `ha_router.py` adds. Each line ends `[ no_track] protocol static` (#1956846).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VirtualRoute {
    /// `<gw> dev <qg> scope link`: an external subnet's gateway outside its CIDR (#1861674;
    /// `_add_default_gw_virtual_route`).
    OnLinkGateway {
        /// The gateway (rendered without a prefix length).
        gateway: IpAddr,
        /// The qg- device.
        dev: IfName,
    },
    /// `0.0.0.0/0 via <gw> dev <qg>` or `::/0 via <gw> dev <qg>`, per gateway IP, including
    /// the `ipv6_gateway` fallback (`_add_default_gw_virtual_route`).
    Default {
        /// The gateway; its family picks the destination.
        gateway: IpAddr,
        /// The qg- device.
        dev: IfName,
    },
    /// `<destination> via <nexthop>`, one per entry of the router's `routes`
    /// (`routes_updated`).
    Extra {
        /// The route's `destination`.
        destination: IpNet,
        /// The route's `nexthop`.
        nexthop: IpAddr,
    },
    /// `<cidr> dev <qg> scope link`, one per `extra_subnets` entry of the gateway port
    /// (`_add_extra_subnet_onlink_routes`).
    ExtraSubnet {
        /// The subnet.
        cidr: IpNet,
        /// The qg- device.
        dev: IfName,
    },
}

impl VirtualRoute {
    /// Neutron's list: `gateway_routes` (on-link gateways, then defaults), `extra_routes`,
    /// `extra_subnets`.
    fn rank(&self) -> u8 {
        match self {
            VirtualRoute::OnLinkGateway { .. } => 0,
            VirtualRoute::Default { .. } => 1,
            VirtualRoute::Extra { .. } => 2,
            VirtualRoute::ExtraSubnet { .. } => 3,
        }
    }

    /// One of `gateway_routes`, which decide whether the health check is tracked.
    fn is_gateway_route(&self) -> bool {
        self.rank() <= 1
    }

    /// `KeepalivedVirtualRoute.build_config`.
    fn line(&self, no_track: bool) -> String {
        let mut line = match self {
            VirtualRoute::OnLinkGateway { gateway, dev } => {
                format!("{gateway} dev {dev} scope link")
            }
            VirtualRoute::Default { gateway, dev } => {
                let any = if gateway.is_ipv4() {
                    "0.0.0.0/0"
                } else {
                    "::/0"
                };
                format!("{any} via {gateway} dev {dev}")
            }
            VirtualRoute::Extra {
                destination,
                nexthop,
            } => format!("{destination} via {nexthop}"),
            VirtualRoute::ExtraSubnet { cidr, dev } => format!("{cidr} dev {dev} scope link"),
        };
        if no_track {
            line.push_str(" no_track");
        }
        line.push_str(" protocol static");
        line
    }
}

/// `ha_vrrp_health_check_interval` > 0: a `vrrp_script` that keepalived runs every `interval`
/// seconds (#1365461).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// `ha_vrrp_health_check_interval`, seconds.
    pub interval: u32,
    /// The script ([`health_check_script_path`]).
    pub script: ConfPath,
}

/// `KeepalivedTrackScript._get_script_location`: `<conf_dir>/ha_check_script_<vrid>.sh`, where
/// `conf_dir` is the router's `$ha_confs/<rid>`.
pub fn health_check_script_path(conf_dir: &ConfPath, vrid: u8) -> ConfPath {
    // "ha_check_script_<n>.sh" is a portable, non-dot name: joining keeps every rule.
    ConfPath(conf_dir.joined(&format!("ha_check_script_{vrid}.sh")))
}

impl KeepalivedConf {
    /// keepalived's and Neutron's ranges: `vrid` 1..=254 (`ha_vr_id`), `priority` 1..=254,
    /// `advert_int` >= 1 (`ha_vrrp_advert_int`, `min=1`), health-check interval >= 1. The
    /// error names the option.
    pub fn validate(&self) -> Result<(), Error> {
        if !(1..=254).contains(&self.vrid) {
            return Err(invalid("ha_vr_id", self.vrid, "must be 1 to 254"));
        }
        if !(1..=254).contains(&self.priority) {
            return Err(invalid("priority", self.priority, "must be 1 to 254"));
        }
        if self.advert_int == 0 {
            return Err(invalid(
                "ha_vrrp_advert_int",
                self.advert_int,
                "must be at least 1",
            ));
        }
        if let Some(hc) = &self.health_check {
            if hc.interval == 0 {
                return Err(invalid(
                    "ha_vrrp_health_check_interval",
                    hc.interval,
                    "must be at least 1 when the health check is on",
                ));
            }
        }
        Ok(())
    }

    /// The health-check script Neutron writes next to the configuration
    /// (`KeepalivedTrackScript.write_check_script`): `None` when the check is off or there
    /// is no gateway route (Neutron writes nothing then), else [`health_check_script`] of the
    /// first excluded VIP in insertion order and the default routes' gateways.
    pub fn health_check_script(&self) -> Option<String> {
        self.health_check.as_ref()?;
        if !self.routes.iter().any(VirtualRoute::is_gateway_route) {
            return None;
        }
        let gateways: Vec<IpAddr> = self
            .sorted_routes()
            .into_iter()
            .filter_map(|r| match r {
                VirtualRoute::Default { gateway, .. } => Some(*gateway),
                _ => None,
            })
            .collect();
        Some(health_check_script(
            self.excluded_vips.first().map(|v| v.cidr.addr()),
            &gateways,
        ))
    }

    fn sorted_routes(&self) -> Vec<&VirtualRoute> {
        let mut routes: Vec<&VirtualRoute> = self.routes.iter().collect();
        routes.sort_by_key(|r| r.rank());
        routes
    }
}

/// `KeepalivedInstance.get_primary_vip`: the first `/24` of `169.254.0.0/16` free of
/// `169.254.169.254/32` (metadata), `169.254.64.0/18` (the DVR FIP link range) and the HA
/// subnet (`get_free_range`), plus `vrid`, as a `/24` (VRID 7 with the default
/// `l3_ha_net_cidr` → `169.254.0.7/24`).
pub fn primary_vip(vrid: u8, ha_cidr: Ipv4Net) -> Result<Ipv4Net, Error> {
    let ip = |a, b, c, d| u64::from(u32::from(Ipv4Addr::new(a, b, c, d)));
    // `constants.PRIVATE_CIDR_RANGE`, then `METADATA_CIDR`, `DVR_FIP_LL_CIDR` and the HA
    // subnet, as inclusive ranges.
    let (start, end) = (ip(169, 254, 0, 0), ip(169, 254, 255, 255));
    let ha = ha_cidr.trunc();
    let mut excluded = [
        (ip(169, 254, 169, 254), ip(169, 254, 169, 254)),
        (ip(169, 254, 64, 0), ip(169, 254, 127, 255)),
        (
            u64::from(u32::from(ha.network())),
            u64::from(u32::from(ha.broadcast())),
        ),
    ];
    excluded.sort_unstable();
    // The gaps the excluded ranges leave in the parent, in address order.
    let mut gaps = Vec::new();
    let mut next = start;
    for (lo, hi) in excluded {
        if lo > next {
            gaps.push((next, (lo - 1).min(end)));
        }
        next = next.max(hi + 1);
    }
    gaps.push((next, end));
    // Each gap split into its aligned CIDR blocks, in address order, is netaddr's
    // `IPSet.iter_cidrs()`; `get_free_range` takes the first block of at least a /24.
    let size = 1u64 << (32 - PRIMARY_VIP_RANGE_SIZE);
    for (mut lo, hi) in gaps {
        while lo <= hi {
            // The largest aligned block starting at `lo` that ends within the gap (`lo` is
            // never 0: it is inside 169.254.0.0/16).
            let mut block = 1u64 << lo.trailing_zeros();
            while lo + block - 1 > hi {
                block >>= 1;
            }
            if block >= size {
                let base = u32::try_from(lo).map_err(|_| Error::NoPrimaryVipRange { ha_cidr })?;
                let vip = Ipv4Addr::from(base + u32::from(vrid));
                return Ipv4Net::new(vip, PRIMARY_VIP_RANGE_SIZE)
                    .map_err(|_| Error::NoPrimaryVipRange { ha_cidr });
            }
            lo += block;
        }
    }
    Err(Error::NoPrimaryVipRange { ha_cidr })
}

/// The health-check script (`KeepalivedTrackScript._get_script_str`), a bash script keepalived
/// runs: `#!/bin/bash -eu`; `ip a | grep <first VIP> || exit 0`, so a node that does not hold
/// the addresses passes (an empty line when there is no VIP); then one
/// `ping -c 1 -w 1 <gw> 1>/dev/null || exit 1` per gateway (`ping6` for IPv6). No trailing
/// newline.
pub fn health_check_script(first_vip: Option<IpAddr>, gateways: &[IpAddr]) -> String {
    let mut lines = vec![
        "#!/bin/bash -eu".to_owned(),
        first_vip.map_or_else(String::new, |ip| format!("ip a | grep {ip} || exit 0")),
    ];
    for gw in gateways {
        let ping = if gw.is_ipv4() { "ping" } else { "ping6" };
        lines.push(format!("{ping} -c 1 -w 1 {gw} 1>/dev/null || exit 1"));
    }
    lines.join("\n")
}

/// Renders keepalived.conf as `KeepalivedConf.get_config_str` does for the one instance of
/// an HA router.
pub fn render(conf: &KeepalivedConf) -> String {
    let vrid = conf.vrid;
    let dev = &conf.interface;
    let mut lines: Vec<String> = [
        "global_defs {",
        "    notification_email_from neutron@openstack.local",
        "    router_id neutron",
        "}",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    if let Some(hc) = &conf.health_check {
        lines.extend([
            String::new(),
            format!("vrrp_script {HEALTH_CHECK_NAME}_{vrid} {{"),
            format!("    script \"{}\"", hc.script),
            format!("    interval {}", hc.interval),
            "    fall 2".to_owned(),
            "    rise 2".to_owned(),
            "}".to_owned(),
            String::new(),
        ]);
    }
    lines.extend([
        format!("vrrp_instance VR_{vrid} {{"),
        "    state BACKUP".to_owned(),
        format!("    interface {dev}"),
        format!("    virtual_router_id {vrid}"),
        format!("    priority {}", conf.priority),
        format!("    garp_master_delay {GARP_PRIMARY_DELAY}"),
        "    nopreempt".to_owned(),
    ]);
    if conf.advert_int != 0 {
        lines.push(format!("    advert_int {}", conf.advert_int));
    }
    if let Some((auth_type, password)) = &conf.auth {
        lines.extend([
            "    authentication {".to_owned(),
            format!("        auth_type {}", auth_type.as_str()),
            format!("        auth_pass {}", password.expose()),
            "    }".to_owned(),
        ]);
    }
    lines.extend([
        "    track_interface {".to_owned(),
        format!("        {dev}"),
        "    }".to_owned(),
        "    virtual_ipaddress {".to_owned(),
        format!("        {} dev {dev}", conf.primary_vip),
        "    }".to_owned(),
    ]);
    // add_vip keeps the first of equal `ip_address` strings (the CIDR text, so 10.0.0.1/24
    // and 10.0.0.1/32 are both kept); _build_vips_config sorts by that string.
    let mut vips: Vec<(String, &ExcludedVip)> = Vec::new();
    for vip in &conf.excluded_vips {
        let key = vip.cidr.to_string();
        if !vips.iter().any(|(k, _)| *k == key) {
            vips.push((key, vip));
        }
    }
    vips.sort_by(|a, b| a.0.cmp(&b.0));
    if !vips.is_empty() {
        lines.push("    virtual_ipaddress_excluded {".to_owned());
        for (cidr, vip) in vips {
            let mut line = format!("        {cidr} dev {}", vip.dev);
            if vip.scope_link {
                line.push_str(" scope link");
            }
            // Only the ha- device is tracked; a VIP on any other device is `no_track`.
            if conf.no_track && vip.dev != *dev {
                line.push_str(" no_track");
            }
            lines.push(line);
        }
        lines.push("    }".to_owned());
    }
    let routes = conf.sorted_routes();
    if !routes.is_empty() {
        lines.push("    virtual_routes {".to_owned());
        lines.extend(
            routes
                .iter()
                .map(|r| format!("        {}", r.line(conf.no_track))),
        );
        lines.push("    }".to_owned());
    }
    if conf.health_check.is_some() && routes.iter().any(|r| r.is_gateway_route()) {
        lines.extend([
            "    track_script {".to_owned(),
            format!("        {HEALTH_CHECK_NAME}_{vrid}"),
            "    }".to_owned(),
        ]);
    }
    lines.push("}".to_owned());
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(name: &str) -> IfName {
        IfName::new("dev", name).unwrap()
    }

    fn vip(cidr: &str, d: &str, scope_link: bool) -> ExcludedVip {
        ExcludedVip {
            cidr: cidr.parse().unwrap(),
            dev: dev(d),
            scope_link,
        }
    }

    const HA: &str = "ha-1111aaaa-bb";
    const QG: &str = "qg-2222bbbb-cc";
    const QR: &str = "qr-3333cccc-dd";

    /// NEUTRON-OPS.md §1.4: VRID 7, health check on, password set, keepalived >= 2.0.3,
    /// `$ha_confs/<rid>` = `/var/lib/neutron/ha_confs/r1`.
    fn sample() -> KeepalivedConf {
        KeepalivedConf {
            vrid: 7,
            interface: dev(HA),
            priority: HA_DEFAULT_PRIORITY,
            advert_int: 2,
            auth: Some((AuthType::Pass, VrrpPassword::new("s3cret").unwrap())),
            primary_vip: primary_vip(7, "169.254.192.0/18".parse().unwrap()).unwrap(),
            excluded_vips: vec![
                vip("203.0.113.51/24", QG, false),
                vip("fe80::f816:3eff:fe48:90e1/64", QG, true),
                vip("192.0.2.1/24", QR, false),
                vip("203.0.113.228/32", QG, false),
                vip("203.0.113.51/24", QR, false),
            ],
            routes: vec![
                VirtualRoute::Default {
                    gateway: "203.0.113.1".parse().unwrap(),
                    dev: dev(QG),
                },
                VirtualRoute::Extra {
                    destination: "10.9.0.0/16".parse().unwrap(),
                    nexthop: "192.0.2.20".parse().unwrap(),
                },
                VirtualRoute::ExtraSubnet {
                    cidr: "198.51.100.0/24".parse().unwrap(),
                    dev: dev(QG),
                },
            ],
            no_track: true,
            health_check: Some(HealthCheck {
                interval: 5,
                script: health_check_script_path(
                    &ConfPath::new("ha_confs", "/var/lib/neutron/ha_confs/r1").unwrap(),
                    7,
                ),
            }),
        }
    }

    /// The §1.4 sample, with the two empty lines around `vrrp_script` that Neutron's
    /// `build_config_preamble` emits (checked against Neutron in tests/neutron_diff.rs).
    #[test]
    fn the_neutron_sample_renders_byte_for_byte() {
        let expected = r#"global_defs {
    notification_email_from neutron@openstack.local
    router_id neutron
}

vrrp_script ha_health_check_7 {
    script "/var/lib/neutron/ha_confs/r1/ha_check_script_7.sh"
    interval 5
    fall 2
    rise 2
}

vrrp_instance VR_7 {
    state BACKUP
    interface ha-1111aaaa-bb
    virtual_router_id 7
    priority 50
    garp_master_delay 60
    nopreempt
    advert_int 2
    authentication {
        auth_type PASS
        auth_pass s3cret
    }
    track_interface {
        ha-1111aaaa-bb
    }
    virtual_ipaddress {
        169.254.0.7/24 dev ha-1111aaaa-bb
    }
    virtual_ipaddress_excluded {
        192.0.2.1/24 dev qr-3333cccc-dd no_track
        203.0.113.228/32 dev qg-2222bbbb-cc no_track
        203.0.113.51/24 dev qg-2222bbbb-cc no_track
        fe80::f816:3eff:fe48:90e1/64 dev qg-2222bbbb-cc scope link no_track
    }
    virtual_routes {
        0.0.0.0/0 via 203.0.113.1 dev qg-2222bbbb-cc no_track protocol static
        10.9.0.0/16 via 192.0.2.20 no_track protocol static
        198.51.100.0/24 dev qg-2222bbbb-cc scope link no_track protocol static
    }
    track_script {
        ha_health_check_7
    }
}"#;
        assert_eq!(render(&sample()), expected);
        assert_eq!(
            sample().health_check_script().unwrap(),
            "#!/bin/bash -eu\nip a | grep 203.0.113.51 || exit 0\nping -c 1 -w 1 203.0.113.1 1>/dev/null || exit 1"
        );
    }

    #[test]
    fn a_minimal_instance_has_no_optional_sections() {
        let c = KeepalivedConf {
            auth: None,
            excluded_vips: vec![],
            routes: vec![],
            no_track: false,
            health_check: None,
            ..sample()
        };
        assert_eq!(
            render(&c),
            "global_defs {\n    notification_email_from neutron@openstack.local\n    router_id neutron\n}\nvrrp_instance VR_7 {\n    state BACKUP\n    interface ha-1111aaaa-bb\n    virtual_router_id 7\n    priority 50\n    garp_master_delay 60\n    nopreempt\n    advert_int 2\n    track_interface {\n        ha-1111aaaa-bb\n    }\n    virtual_ipaddress {\n        169.254.0.7/24 dev ha-1111aaaa-bb\n    }\n}"
        );
        assert_eq!(c.health_check_script(), None);
    }

    #[test]
    fn routes_render_grouped_by_kind_in_neutrons_order() {
        let c = KeepalivedConf {
            routes: vec![
                VirtualRoute::ExtraSubnet {
                    cidr: "198.51.100.0/24".parse().unwrap(),
                    dev: dev(QG),
                },
                VirtualRoute::Default {
                    gateway: "2001:db8::1".parse().unwrap(),
                    dev: dev(QG),
                },
                VirtualRoute::OnLinkGateway {
                    gateway: "192.0.2.254".parse().unwrap(),
                    dev: dev(QG),
                },
            ],
            no_track: false,
            ..sample()
        };
        let text = render(&c);
        let routes = text
            .split_once("    virtual_routes {\n")
            .unwrap()
            .1
            .split_once("\n    }")
            .unwrap()
            .0;
        assert_eq!(
            routes,
            "        192.0.2.254 dev qg-2222bbbb-cc scope link protocol static\n        ::/0 via 2001:db8::1 dev qg-2222bbbb-cc protocol static\n        198.51.100.0/24 dev qg-2222bbbb-cc scope link protocol static"
        );
        assert_eq!(
            c.health_check_script().unwrap(),
            "#!/bin/bash -eu\nip a | grep 203.0.113.51 || exit 0\nping6 -c 1 -w 1 2001:db8::1 1>/dev/null || exit 1"
        );
    }

    #[test]
    fn the_health_check_is_tracked_only_with_gateway_routes() {
        let c = KeepalivedConf {
            routes: vec![VirtualRoute::Extra {
                destination: "10.9.0.0/16".parse().unwrap(),
                nexthop: "192.0.2.20".parse().unwrap(),
            }],
            ..sample()
        };
        let text = render(&c);
        assert!(text.contains("\nvrrp_script ha_health_check_7 {\n"));
        assert!(!text.contains("track_script"));
        assert_eq!(c.health_check_script(), None);
    }

    #[test]
    fn a_vip_on_the_ha_device_is_tracked() {
        let c = KeepalivedConf {
            excluded_vips: vec![vip("169.254.192.9/18", HA, false)],
            ..sample()
        };
        assert!(render(&c).contains("\n        169.254.192.9/18 dev ha-1111aaaa-bb\n"));
    }

    #[test]
    fn the_script_without_vips_has_an_empty_second_line() {
        assert_eq!(
            health_check_script(None, &["192.0.2.1".parse().unwrap()]),
            "#!/bin/bash -eu\n\nping -c 1 -w 1 192.0.2.1 1>/dev/null || exit 1"
        );
    }

    #[test]
    fn the_primary_vip_is_the_vrid_in_the_first_free_slash_24() {
        let vip = |vrid, ha: &str| primary_vip(vrid, ha.parse().unwrap()).map(|n| n.to_string());
        assert_eq!(vip(7, "169.254.192.0/18").unwrap(), "169.254.0.7/24");
        assert_eq!(vip(254, "169.254.192.0/18").unwrap(), "169.254.0.254/24");
        assert_eq!(vip(1, "169.254.0.0/24").unwrap(), "169.254.1.1/24");
        assert_eq!(vip(3, "169.254.0.0/18").unwrap(), "169.254.128.3/24");
        assert_eq!(vip(3, "169.254.0.0/17").unwrap(), "169.254.128.3/24");
        assert_eq!(vip(3, "169.254.0.128/25").unwrap(), "169.254.1.3/24");
        assert_eq!(vip(3, "10.0.0.0/8").unwrap(), "169.254.0.3/24");
        assert_eq!(vip(3, "169.254.0.5/24").unwrap(), "169.254.1.3/24");
        assert!(matches!(
            vip(3, "169.254.0.0/16"),
            Err(Error::NoPrimaryVipRange { .. })
        ));
        assert!(vip(3, "0.0.0.0/0").is_err());
    }

    #[test]
    fn the_password_is_never_shown() {
        let c = sample();
        let debug = format!("{c:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("VrrpPassword(<redacted>)"));
        for bad in ["", "123456789", "a b", "a\"b", "ab\n", "p#ss", "pa$$", "é"] {
            let e = VrrpPassword::new(bad).unwrap_err();
            let text = e.to_string();
            assert!(text.starts_with("ha_vrrp_auth_password: "), "{text}");
            if !bad.is_empty() {
                assert!(!text.contains(bad), "{text}");
            }
            assert!(!format!("{e:?}").contains(bad) || bad.is_empty());
        }
        assert_eq!(VrrpPassword::new("12345678").unwrap().expose(), "12345678");
    }

    #[test]
    fn ranges_name_the_option() {
        assert_eq!(sample().validate(), Ok(()));
        let field = |c: KeepalivedConf| match c.validate() {
            Err(Error::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            field(KeepalivedConf {
                vrid: 0,
                ..sample()
            }),
            "ha_vr_id"
        );
        assert_eq!(
            field(KeepalivedConf {
                vrid: 255,
                ..sample()
            }),
            "ha_vr_id"
        );
        assert_eq!(
            field(KeepalivedConf {
                advert_int: 0,
                ..sample()
            }),
            "ha_vrrp_advert_int"
        );
        let mut c = sample();
        c.health_check.as_mut().unwrap().interval = 0;
        assert_eq!(field(c), "ha_vrrp_health_check_interval");
        assert!(AuthType::parse("ha_vrrp_auth_type", "pass").is_err());
        assert_eq!(AuthType::parse("t", "AH"), Ok(AuthType::Ah));
    }
}
