//! Routes (`ip route replace/del/show/flush`): main and numbered tables, gateways, `scope
//! link` routes, IPv4 and IPv6.

use std::net::IpAddr;

use ipnet::IpNet;
use l3agent_types::IfName;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::error::Error;
use crate::prelude::*;
use crate::socket::Rtnl;

/// The main routing table.
pub const MAIN_TABLE: u32 = 254;

/// A route: what `ip route` takes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    /// Destination (`0.0.0.0/0` / `::/0` for a default route).
    pub dst: IpNet,
    /// Next hop.
    pub gateway: Option<IpAddr>,
    /// Output device.
    pub dev: Option<IfName>,
    /// Table (254 = main).
    pub table: u32,
    /// `scope link` (a directly connected destination, e.g. a gateway outside the subnet).
    pub scope_link: bool,
    /// Metric.
    pub metric: Option<u32>,
}

impl Route {
    /// A route to `dst` in the main table.
    pub fn to(dst: IpNet) -> Route {
        Route {
            dst,
            gateway: None,
            dev: None,
            table: MAIN_TABLE,
            scope_link: false,
            metric: None,
        }
    }
}

fn family_of(net: &IpNet) -> AddressFamily {
    match net {
        IpNet::V4(_) => AddressFamily::Inet,
        IpNet::V6(_) => AddressFamily::Inet6,
    }
}

/// Routes (`ip route`). Implemented by [`Rtnl`] over rtnetlink; tests pass fakes to code
/// generic over it to inject faults.
pub trait Routes {
    /// `ip route replace ...`: adds the route or replaces the one with the same destination,
    /// table and metric. Idempotent.
    fn replace_route(&mut self, r: &Route) -> Result<(), Error>;

    /// `ip route del ...`. Returns whether it existed.
    fn delete_route(&mut self, r: &Route) -> Result<bool, Error>;

    /// Routes of one family in one table (`ip [-6] route show table T`), unicast only.
    fn routes(&mut self, ipv6: bool, table: u32) -> Result<Vec<Route>, Error>;

    /// `ip [-6] route flush table T`: deletes every route of the table. Returns how many.
    fn flush_table(&mut self, ipv6: bool, table: u32) -> Result<usize, Error>;
}

impl Rtnl {
    fn route_message(&mut self, what: &str, r: &Route) -> Result<RouteMessage, Error> {
        if let Some(gw) = r.gateway {
            if gw.is_ipv4() != r.dst.addr().is_ipv4() {
                return Err(Error::Value(format!(
                    "{what}: gateway {gw} is not of the destination's family"
                )));
            }
        }
        let mut msg = RouteMessage::default();
        msg.header = RouteHeader {
            address_family: family_of(&r.dst),
            destination_prefix_length: r.dst.prefix_len(),
            table: if r.table < 256 {
                r.table as u8
            } else {
                RouteHeader::RT_TABLE_UNSPEC
            },
            protocol: RouteProtocol::Static,
            scope: if r.scope_link {
                RouteScope::Link
            } else {
                RouteScope::Universe
            },
            kind: RouteType::Unicast,
            ..RouteHeader::default()
        };
        if r.dst.prefix_len() > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(
                    r.dst.network(),
                )));
        }
        if let Some(gw) = r.gateway {
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        if let Some(dev) = &r.dev {
            let index = self.index(what, dev)?;
            msg.attributes.push(RouteAttribute::Oif(index));
        }
        msg.attributes.push(RouteAttribute::Table(r.table));
        if let Some(m) = r.metric {
            msg.attributes.push(RouteAttribute::Priority(m));
        }
        Ok(msg)
    }
}

impl Routes for Rtnl {
    fn replace_route(&mut self, r: &Route) -> Result<(), Error> {
        let what = format!("replace route {} table {}", r.dst, r.table);
        let msg = self.route_message(&what, r)?;
        self.request(
            &what,
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    fn delete_route(&mut self, r: &Route) -> Result<bool, Error> {
        let what = format!("delete route {} table {}", r.dst, r.table);
        let msg = self.route_message(&what, r)?;
        match self.request(&what, RouteNetlinkMessage::DelRoute(msg), 0) {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == Some(nix::errno::Errno::ESRCH as i32) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn routes(&mut self, ipv6: bool, table: u32) -> Result<Vec<Route>, Error> {
        let mut req = RouteMessage::default();
        req.header.address_family = if ipv6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let msgs = self.dump("list routes", RouteNetlinkMessage::GetRoute(req))?;
        let links = self.links()?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewRoute(r) = m else {
                continue;
            };
            if r.header.kind != RouteType::Unicast {
                continue;
            }
            let mut t = u32::from(r.header.table);
            let mut dst = None;
            let mut gateway = None;
            let mut dev = None;
            let mut metric = None;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Table(v) => t = *v,
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => {
                        dst = Some(IpAddr::V4(*ip))
                    }
                    RouteAttribute::Destination(RouteAddress::Inet6(ip)) => {
                        dst = Some(IpAddr::V6(*ip))
                    }
                    RouteAttribute::Gateway(RouteAddress::Inet(ip)) => {
                        gateway = Some(IpAddr::V4(*ip))
                    }
                    RouteAttribute::Gateway(RouteAddress::Inet6(ip)) => {
                        gateway = Some(IpAddr::V6(*ip))
                    }
                    RouteAttribute::Oif(i) => {
                        dev = links
                            .iter()
                            .find(|l| l.index == *i)
                            .and_then(|l| IfName::new("dev", &l.name).ok())
                    }
                    RouteAttribute::Priority(p) => metric = Some(*p),
                    _ => {}
                }
            }
            if t != table {
                continue;
            }
            let any = if ipv6 {
                IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
            };
            let Ok(dst) = IpNet::new(dst.unwrap_or(any), r.header.destination_prefix_length) else {
                continue;
            };
            out.push(Route {
                dst,
                gateway,
                dev,
                table: t,
                scope_link: r.header.scope == RouteScope::Link,
                metric,
            });
        }
        Ok(out)
    }

    fn flush_table(&mut self, ipv6: bool, table: u32) -> Result<usize, Error> {
        let routes = self.routes(ipv6, table)?;
        for r in &routes {
            self.delete_route(r)?;
        }
        Ok(routes.len())
    }
}
