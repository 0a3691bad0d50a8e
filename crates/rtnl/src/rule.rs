//! Policy routing rules (`ip rule add/del/show`): from, to, iif, table, priority; IPv4 and
//! IPv6; matched exactly, so a repeated add never makes a duplicate (Neutron D-31, B-17, B-18).

use ipnet::IpNet;
use l3agent_types::IfName;
use netlink_packet_core::NLM_F_CREATE;
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::error::Error;
use crate::socket::Rtnl;

/// A policy rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rule {
    /// IPv6 rule.
    pub ipv6: bool,
    /// `from` selector.
    pub from: Option<IpNet>,
    /// `to` selector.
    pub to: Option<IpNet>,
    /// `iif` selector.
    pub iif: Option<IfName>,
    /// `lookup` table.
    pub table: u32,
    /// `priority`.
    pub priority: u32,
}

/// As `ip rule` shows it: `priority P [from NET] [to NET] [iif DEV] lookup T`, `(v6) ` first
/// for IPv6.
impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.ipv6 {
            f.write_str("(v6) ")?;
        }
        write!(f, "priority {}", self.priority)?;
        if let Some(n) = self.from {
            write!(f, " from {n}")?;
        }
        if let Some(n) = self.to {
            write!(f, " to {n}")?;
        }
        if let Some(i) = &self.iif {
            write!(f, " iif {i}")?;
        }
        write!(f, " lookup {}", self.table)
    }
}

impl Rule {
    fn message(&self) -> Result<RuleMessage, Error> {
        for net in [self.from, self.to].into_iter().flatten() {
            if net.addr().is_ipv6() != self.ipv6 {
                return Err(Error::Value(format!(
                    "rule {self}: selector {net} is not of the rule's family"
                )));
            }
        }
        let mut m = RuleMessage::default();
        m.header.family = if self.ipv6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        m.header.action = RuleAction::ToTable;
        m.header.table = if self.table < 256 {
            self.table as u8
        } else {
            0
        };
        if let Some(f) = self.from {
            m.header.src_len = f.prefix_len();
            m.attributes.push(RuleAttribute::Source(f.network()));
        }
        if let Some(t) = self.to {
            m.header.dst_len = t.prefix_len();
            m.attributes.push(RuleAttribute::Destination(t.network()));
        }
        if let Some(i) = &self.iif {
            m.attributes.push(RuleAttribute::Iifname(i.to_string()));
        }
        m.attributes.push(RuleAttribute::Table(self.table));
        m.attributes.push(RuleAttribute::Priority(self.priority));
        Ok(m)
    }
}

/// Policy rules (`ip rule`). Implemented by [`Rtnl`] over rtnetlink; tests pass fakes to code
/// generic over it to inject faults.
pub trait Rules {
    /// The rules of one family (`ip [-6] rule show`).
    fn rules(&mut self, ipv6: bool) -> Result<Vec<Rule>, Error>;

    /// `ip rule add ...` unless an identical rule exists. Returns whether it was added.
    fn add_rule(&mut self, rule: &Rule) -> Result<bool, Error>;

    /// `ip rule del ...` of exactly this rule. Returns whether it existed.
    fn delete_rule(&mut self, rule: &Rule) -> Result<bool, Error>;
}

impl Rules for Rtnl {
    fn rules(&mut self, ipv6: bool) -> Result<Vec<Rule>, Error> {
        let mut req = RuleMessage::default();
        req.header.family = if ipv6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let msgs = self.dump("list rules", RouteNetlinkMessage::GetRule(req))?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewRule(r) = m else {
                continue;
            };
            let mut rule = Rule {
                ipv6,
                from: None,
                to: None,
                iif: None,
                table: u32::from(r.header.table),
                priority: 0,
            };
            for a in &r.attributes {
                match a {
                    RuleAttribute::Source(ip) => rule.from = IpNet::new(*ip, r.header.src_len).ok(),
                    RuleAttribute::Destination(ip) => {
                        rule.to = IpNet::new(*ip, r.header.dst_len).ok()
                    }
                    RuleAttribute::Iifname(n) => rule.iif = IfName::new("iif", n).ok(),
                    RuleAttribute::Table(t) => rule.table = *t,
                    RuleAttribute::Priority(p) => rule.priority = *p,
                    _ => {}
                }
            }
            out.push(rule);
        }
        Ok(out)
    }

    fn add_rule(&mut self, rule: &Rule) -> Result<bool, Error> {
        let msg = rule.message()?;
        if self.rules(rule.ipv6)?.contains(rule) {
            return Ok(false);
        }
        self.request(
            &format!("ip rule add {rule}"),
            RouteNetlinkMessage::NewRule(msg),
            NLM_F_CREATE,
        )?;
        Ok(true)
    }

    fn delete_rule(&mut self, rule: &Rule) -> Result<bool, Error> {
        let msg = rule.message()?;
        if !self.rules(rule.ipv6)?.contains(rule) {
            return Ok(false);
        }
        self.request(
            &format!("ip rule del {rule}"),
            RouteNetlinkMessage::DelRule(msg),
            0,
        )?;
        Ok(true)
    }
}
