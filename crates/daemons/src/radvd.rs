//! radvd.conf, as `neutron/agent/linux/ra.py: DaemonMonitor._generate_radvd_conf` renders
//! it through its Jinja `CONFIG_TEMPLATE` (NEUTRON-OPS.md §2.1).
//!
//! The text is Neutron's, including its accidents: the `interface` blocks are concatenated
//! with no newline between them (`};interface …`), there is no trailing newline, and the
//! "blank" lines the template's whitespace control leaves are three spaces, except the empty
//! line before `route`. radvd accepts all of it.
//!
//! Where we deliberately differ: nothing in the text. [`RadvdConf::validate`] also checks
//! radvd's own interval rules, which Neutron leaves to radvd (radvd refuses to start). The
//! file's path (`<ra_confs>/<rid>.radvd.conf`) and mode (0444) are the supervisor's.

use std::fmt::Write as _;
use std::net::Ipv6Addr;

use ipnet::Ipv6Net;
use l3agent_types::IfName;

use crate::{invalid, Error};

/// `ra.py: MAX_RDNSS_ENTRIES`: radvd's RDNSS option takes at most three servers.
pub const MAX_RDNSS_ENTRIES: usize = 3;

/// `neutron_lib.constants.IPV6_MIN_MTU`: `AdvLinkMTU` is advertised only from this MTU up.
pub const IPV6_MIN_MTU: u32 = 1280;

/// The whole radvd.conf of one router: `[DEFAULT] min_rtr_adv_interval` /
/// `max_rtr_adv_interval` and one entry per router port (`_interfaces`, admin-down ports
/// included, in the router dict's order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RadvdConf {
    /// `min_rtr_adv_interval` (Neutron's default 30).
    pub min_interval: u32,
    /// `max_rtr_adv_interval` (Neutron's default 100).
    pub max_interval: u32,
    /// The router's internal ports.
    pub interfaces: Vec<RaInterface>,
}

/// One router port: its `qr-` device, the port's `mtu`, and its IPv6 subnets (the caller
/// drops the IPv4 ones, as `_generate_radvd_conf` does). A port with no IPv6 subnet renders
/// nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaInterface {
    /// The port's device (`qr-<port id[:11]>`).
    pub dev: IfName,
    /// The port's `mtu` (0 when the dict has none, as `p.get('mtu', 0)`).
    pub mtu: u32,
    /// The port's IPv6 subnets, in the port dict's order.
    pub subnets: Vec<RaSubnet>,
}

/// One IPv6 subnet of a port: `cidr`, `ipv6_ra_mode` and `dns_nameservers` of the subnet dict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaSubnet {
    /// The subnet's `cidr`, advertised as a prefix.
    pub cidr: Ipv6Net,
    /// `ipv6_ra_mode`; `None` (JSON null) when the router is not the RA source.
    pub ra_mode: Option<RaMode>,
    /// `dns_nameservers`; advertised (RDNSS) for `slaac` subnets only.
    pub dns_nameservers: Vec<Ipv6Addr>,
}

/// A subnet's `ipv6_ra_mode` (`neutron_lib.constants.IPV6_SLAAC`, `DHCPV6_STATEFUL`,
/// `DHCPV6_STATELESS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RaMode {
    /// `slaac`: autonomous prefix, RDNSS.
    Slaac,
    /// `dhcpv6-stateful`: `AdvManagedFlag on`, non-autonomous prefix.
    Dhcpv6Stateful,
    /// `dhcpv6-stateless`: `AdvOtherConfigFlag on`, autonomous prefix.
    Dhcpv6Stateless,
}

impl RaMode {
    /// Parses Neutron's string (`slaac`, `dhcpv6-stateful`, `dhcpv6-stateless`); `field` names
    /// it in the error. (JSON null is `None`, the caller's.)
    pub fn parse(field: &str, value: &str) -> Result<RaMode, Error> {
        match value {
            "slaac" => Ok(RaMode::Slaac),
            "dhcpv6-stateful" => Ok(RaMode::Dhcpv6Stateful),
            "dhcpv6-stateless" => Ok(RaMode::Dhcpv6Stateless),
            _ => Err(invalid(
                field,
                value,
                "must be slaac, dhcpv6-stateful or dhcpv6-stateless",
            )),
        }
    }

    /// Neutron's string for the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            RaMode::Slaac => "slaac",
            RaMode::Dhcpv6Stateful => "dhcpv6-stateful",
            RaMode::Dhcpv6Stateless => "dhcpv6-stateless",
        }
    }
}

impl RadvdConf {
    /// radvd's rules for the intervals (radvd.conf(5)), which Neutron's option bounds
    /// (`min=3`, `min=4`) only partly enforce: `MinRtrAdvInterval` >= 3,
    /// `MaxRtrAdvInterval` 4..=1800, and `MinRtrAdvInterval` <= 0.75 × `MaxRtrAdvInterval`.
    /// The error names the Neutron option.
    pub fn validate(&self) -> Result<(), Error> {
        if self.min_interval < 3 {
            return Err(invalid(
                "min_rtr_adv_interval",
                self.min_interval,
                "must be at least 3 (radvd's MinRtrAdvInterval)",
            ));
        }
        if !(4..=1800).contains(&self.max_interval) {
            return Err(invalid(
                "max_rtr_adv_interval",
                self.max_interval,
                "must be 4 to 1800 (radvd's MaxRtrAdvInterval)",
            ));
        }
        if u64::from(self.min_interval) * 4 > u64::from(self.max_interval) * 3 {
            return Err(invalid(
                "min_rtr_adv_interval",
                self.min_interval,
                format!(
                    "must be at most 0.75 × max_rtr_adv_interval ({}), as radvd requires",
                    self.max_interval
                ),
            ));
        }
        Ok(())
    }
}

/// Renders radvd.conf as `DaemonMonitor._generate_radvd_conf` does: one `CONFIG_TEMPLATE`
/// block per interface that has a subnet, concatenated with nothing in between.
///
/// Per block: the flags come from the set of the subnets' modes; the autonomous prefixes
/// (`slaac`, `dhcpv6-stateless`) come first, then the non-autonomous ones
/// (`dhcpv6-stateful`), each group in the given order, and `None`-mode subnets get no prefix;
/// RDNSS lists the first [`MAX_RDNSS_ENTRIES`] servers of the `slaac` subnets; `AdvLinkMTU`
/// only when `mtu` >= [`IPV6_MIN_MTU`]; every block ends with the metadata route option
/// `route fe80::a9fe:a9fe/128`.
pub fn render(conf: &RadvdConf) -> String {
    let mut out = String::new();
    for iface in conf.interfaces.iter().filter(|i| !i.subnets.is_empty()) {
        render_interface(&mut out, conf, iface);
    }
    out
}

/// One `CONFIG_TEMPLATE` block. Each optional part is `\n   <lines>\n   `: the `{%-` of the
/// next tag eats the newline and indentation before it, not the three spaces inside the part.
fn render_interface(out: &mut String, conf: &RadvdConf, iface: &RaInterface) {
    let has_mode = |mode| iface.subnets.iter().any(|s| s.ra_mode == Some(mode));
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "interface {}\n{{\n   AdvSendAdvert on;\n   MinRtrAdvInterval {};\n   MaxRtrAdvInterval {};",
        iface.dev, conf.min_interval, conf.max_interval
    );
    if iface.mtu >= IPV6_MIN_MTU {
        let _ = write!(out, "\n   AdvLinkMTU {};\n   ", iface.mtu);
    }
    if has_mode(RaMode::Dhcpv6Stateless) {
        out.push_str("\n   AdvOtherConfigFlag on;\n   ");
    }
    if has_mode(RaMode::Dhcpv6Stateful) {
        out.push_str("\n   AdvManagedFlag on;\n   ");
    }
    let dns: Vec<&Ipv6Addr> = iface
        .subnets
        .iter()
        .filter(|s| s.ra_mode == Some(RaMode::Slaac))
        .flat_map(|s| &s.dns_nameservers)
        .take(MAX_RDNSS_ENTRIES)
        .collect();
    if !dns.is_empty() {
        out.push_str("\n   RDNSS ");
        for server in dns {
            let _ = write!(out, " {server} ");
        }
        out.push_str(" {};\n   ");
    }
    for (modes, autonomous) in [
        (&[RaMode::Slaac, RaMode::Dhcpv6Stateless][..], "on"),
        (&[RaMode::Dhcpv6Stateful][..], "off"),
    ] {
        for subnet in iface
            .subnets
            .iter()
            .filter(|s| s.ra_mode.is_some_and(|m| modes.contains(&m)))
        {
            let _ = write!(
                out,
                "\n   prefix {}\n   {{\n        AdvOnLink on;\n        AdvAutonomous {autonomous};\n   }};\n   ",
                subnet.cidr
            );
        }
    }
    out.push_str("\n\n   route fe80::a9fe:a9fe/128 {\n   };\n};");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(name: &str) -> IfName {
        IfName::new("dev", name).unwrap()
    }

    fn subnet(cidr: &str, mode: Option<RaMode>, dns: &[&str]) -> RaSubnet {
        RaSubnet {
            cidr: cidr.parse().unwrap(),
            ra_mode: mode,
            dns_nameservers: dns.iter().map(|d| d.parse().unwrap()).collect(),
        }
    }

    fn conf(interfaces: Vec<RaInterface>) -> RadvdConf {
        RadvdConf {
            min_interval: 30,
            max_interval: 100,
            interfaces,
        }
    }

    /// NEUTRON-OPS.md §2.1, rendered by Neutron's `_generate_radvd_conf` (slaac, four DNS
    /// servers of which three are advertised, mtu 1500).
    #[test]
    fn a_slaac_port_renders_as_the_neutron_sample() {
        let c = conf(vec![RaInterface {
            dev: dev("qr-aaaaaaaa-11"),
            mtu: 1500,
            subnets: vec![subnet(
                "2001:db8:1::/64",
                Some(RaMode::Slaac),
                &["2001:db8::1", "2001:db8::2", "2001:db8::3", "2001:db8::4"],
            )],
        }]);
        let expected = "interface qr-aaaaaaaa-11\n{\n   AdvSendAdvert on;\n   MinRtrAdvInterval 30;\n   MaxRtrAdvInterval 100;\n   AdvLinkMTU 1500;\n   \n   RDNSS  2001:db8::1  2001:db8::2  2001:db8::3  {};\n   \n   prefix 2001:db8:1::/64\n   {\n        AdvOnLink on;\n        AdvAutonomous on;\n   };\n   \n\n   route fe80::a9fe:a9fe/128 {\n   };\n};";
        assert_eq!(render(&c), expected);
    }

    #[test]
    fn stateful_and_stateless_set_their_flags_and_autonomy() {
        let c = conf(vec![RaInterface {
            dev: dev("qr-1"),
            mtu: 1500,
            subnets: vec![
                subnet(
                    "2001:db8:2::/64",
                    Some(RaMode::Dhcpv6Stateful),
                    &["2001:db8::9"],
                ),
                subnet(
                    "2001:db8:3::/64",
                    Some(RaMode::Dhcpv6Stateless),
                    &["2001:db8::9"],
                ),
            ],
        }]);
        let expected = "interface qr-1\n{\n   AdvSendAdvert on;\n   MinRtrAdvInterval 30;\n   MaxRtrAdvInterval 100;\n   AdvLinkMTU 1500;\n   \n   AdvOtherConfigFlag on;\n   \n   AdvManagedFlag on;\n   \n   prefix 2001:db8:3::/64\n   {\n        AdvOnLink on;\n        AdvAutonomous on;\n   };\n   \n   prefix 2001:db8:2::/64\n   {\n        AdvOnLink on;\n        AdvAutonomous off;\n   };\n   \n\n   route fe80::a9fe:a9fe/128 {\n   };\n};";
        assert_eq!(render(&c), expected);
    }

    #[test]
    fn a_none_mode_port_with_a_small_mtu_still_gets_a_block() {
        let c = conf(vec![RaInterface {
            dev: dev("qr-1"),
            mtu: 1000,
            subnets: vec![subnet("2001:db8:4::/64", None, &["2001:db8::1"])],
        }]);
        assert_eq!(
            render(&c),
            "interface qr-1\n{\n   AdvSendAdvert on;\n   MinRtrAdvInterval 30;\n   MaxRtrAdvInterval 100;\n\n   route fe80::a9fe:a9fe/128 {\n   };\n};"
        );
    }

    #[test]
    fn blocks_are_joined_with_nothing_and_empty_ports_are_skipped() {
        let port = |name: &str, subnets| RaInterface {
            dev: dev(name),
            mtu: 0,
            subnets,
        };
        let c = conf(vec![
            port("qr-1", vec![subnet("2001:db8:1::/64", None, &[])]),
            port("qr-2", vec![]),
            port("qr-3", vec![subnet("2001:db8:3::/64", None, &[])]),
        ]);
        let text = render(&c);
        assert!(text.contains("};interface qr-3\n{"), "{text}");
        assert!(!text.contains("qr-2"));
        assert!(text.ends_with("};"));
        assert_eq!(render(&conf(vec![port("qr-2", vec![])])), "");
    }

    #[test]
    fn ra_modes_parse_from_neutron_strings() {
        for mode in [
            RaMode::Slaac,
            RaMode::Dhcpv6Stateful,
            RaMode::Dhcpv6Stateless,
        ] {
            assert_eq!(RaMode::parse("m", mode.as_str()), Ok(mode));
        }
        let e = RaMode::parse("subnets[0].ipv6_ra_mode", "SLAAC").unwrap_err();
        assert_eq!(
            e.to_string(),
            "subnets[0].ipv6_ra_mode: invalid value \"SLAAC\": must be slaac, dhcpv6-stateful \
             or dhcpv6-stateless"
        );
    }

    #[test]
    fn intervals_follow_radvds_rules() {
        let with = |min, max| RadvdConf {
            min_interval: min,
            max_interval: max,
            interfaces: vec![],
        };
        assert!(with(30, 100).validate().is_ok());
        assert!(with(3, 4).validate().is_ok());
        assert!(with(1350, 1800).validate().is_ok());
        for (min, max, field) in [
            (2, 100, "min_rtr_adv_interval"),
            (3, 3, "max_rtr_adv_interval"),
            (30, 1801, "max_rtr_adv_interval"),
            (76, 100, "min_rtr_adv_interval"),
            (4, 4, "min_rtr_adv_interval"),
        ] {
            match with(min, max).validate() {
                Err(Error::Invalid { field: f, .. }) => assert_eq!(f, field, "{min} {max}"),
                other => panic!("{min} {max}: {other:?}"),
            }
        }
    }
}
