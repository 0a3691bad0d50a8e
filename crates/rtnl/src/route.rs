//! Routes (`ip route replace/del/show/flush`): main and numbered tables, gateways, `scope
//! link` routes, ECMP (`nexthop via A nexthop via B`), the protocol that installed a route
//! (`proto`), IPv4 and IPv6.
//!
//! Reading is done for a reconciler that diffs a wanted state against the kernel:
//! - dumps are filtered by the kernel (strict checking, see [`crate::socket`]): by table and
//!   by type (unicast) in the request, with the same filter applied again here;
//! - device names are resolved from interface indexes with at most one link dump per read,
//!   none when no route names a device;
//! - ECMP routes come back as ONE [`Route`] whose [`Route::multipath`] is sorted by
//!   `(gateway, dev)`. IPv4 and IPv6 alike: kernel 6.x reports an IPv6 ECMP route (the
//!   siblings of one `fib6_info`) as a single `RTM_NEWROUTE` carrying `RTA_MULTIPATH`, as it
//!   does for IPv4 (checked by the kernel tests in `tests/routes.rs`). Should several IPv6
//!   messages for the same destination arrive anyway (older kernels answered one per
//!   sibling), the gateway routes with the same table, destination and metric are merged into
//!   one multipath route, as the kernel itself groups siblings; routes learned from router
//!   advertisements (`proto ra`) or with an expiry are never ECMP siblings and stay apart.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use l3agent_types::IfName;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteNextHop, RouteProtocol,
    RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::error::Error;
use crate::prelude::*;
use crate::socket::Rtnl;

/// The main routing table (`ip route show table main`).
pub const MAIN_TABLE: u32 = 254;

/// The local table (`ip route show table local`): the kernel's routes for local and broadcast
/// addresses, which [`Routes::all_routes`] leaves out.
pub const LOCAL_TABLE: u32 = 255;

/// Who installed a route (`ip route ... proto P`, the `proto` column of `ip route show`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// `proto kernel`: made by the kernel (the connected route of an address).
    Kernel,
    /// `proto boot`: `ip route`'s default when no `proto` is given.
    Boot,
    /// `proto static`: an administrator's route (what Neutron and l3agent write).
    Static,
    /// `proto ra`: learned from an IPv6 router advertisement.
    Ra,
    /// `proto redirect`: learned from an ICMP redirect.
    Redirect,
    /// Any other number (`proto 42`; `/etc/iproute2/rt_protos` names some).
    Other(u8),
}

impl From<u8> for Protocol {
    fn from(v: u8) -> Protocol {
        match v {
            1 => Protocol::Redirect,
            2 => Protocol::Kernel,
            3 => Protocol::Boot,
            4 => Protocol::Static,
            9 => Protocol::Ra,
            v => Protocol::Other(v),
        }
    }
}

impl From<Protocol> for u8 {
    fn from(p: Protocol) -> u8 {
        match p {
            Protocol::Redirect => 1,
            Protocol::Kernel => 2,
            Protocol::Boot => 3,
            Protocol::Static => 4,
            Protocol::Ra => 9,
            Protocol::Other(v) => v,
        }
    }
}

/// One next hop of an ECMP route (`nexthop via A [dev D] [weight W]`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NextHop {
    /// `via A`, of the route's family. The unspecified address (`0.0.0.0`, `::`) stands for
    /// none: a next hop that is only a device (`nexthop dev D`, IPv4).
    pub gateway: IpAddr,
    /// `dev D`. Read back, it is always the device the kernel resolved, so write it to get an
    /// equal route back.
    pub dev: Option<IfName>,
    /// `weight` - 1, as the kernel stores it (`rtnh_hops`): 0 is `weight 1`, the default.
    pub weight: u8,
}

/// A route: what `ip route` takes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    /// Destination (`0.0.0.0/0` / `::/0` for a default route).
    pub dst: IpNet,
    /// Next hop (`via A`); `None` for an ECMP route.
    pub gateway: Option<IpAddr>,
    /// Output device (`dev D`); `None` for an ECMP route.
    pub dev: Option<IfName>,
    /// Table (254 = main).
    pub table: u32,
    /// `scope link` (a directly connected destination, e.g. a gateway outside the subnet).
    pub scope_link: bool,
    /// Metric. IPv6 routes always have one when read back (1024 for a route written without).
    pub metric: Option<u32>,
    /// ECMP next hops (`ip route replace DST nexthop via A nexthop via B`); when non-empty,
    /// `gateway` and `dev` are None. Read back sorted by `(gateway, dev)`: write them sorted
    /// too (they are written in the order given) so that what is read equals what was written.
    pub multipath: Vec<NextHop>,
    /// Who installed it (`proto`): written as given, read back from the kernel.
    pub protocol: Protocol,
}

impl Route {
    /// A route to `dst` in the main table, `proto static`, no next hop yet
    /// (`ip route replace DST proto static`).
    pub fn to(dst: IpNet) -> Route {
        Route {
            dst,
            gateway: None,
            dev: None,
            table: MAIN_TABLE,
            scope_link: false,
            metric: None,
            multipath: vec![],
            protocol: Protocol::Static,
        }
    }
}

fn family_of(net: &IpNet) -> AddressFamily {
    match net {
        IpNet::V4(_) => AddressFamily::Inet,
        IpNet::V6(_) => AddressFamily::Inet6,
    }
}

fn family(ipv6: bool) -> AddressFamily {
    if ipv6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    }
}

/// Routes (`ip route`). Implemented by [`Rtnl`] over rtnetlink; tests pass fakes to code
/// generic over it to inject faults.
pub trait Routes {
    /// `ip route replace DST [via A] [dev D] [nexthop via A ...] proto P table T [metric M]`:
    /// adds the route or replaces the one with the same destination, table and metric (a
    /// single route replaces an ECMP route and the other way round). Idempotent.
    fn replace_route(&mut self, r: &Route) -> Result<(), Error>;

    /// `ip route del DST [via A] [dev D] [nexthop via A ...] proto P table T [metric M]`:
    /// deletes exactly this route (single or ECMP). Returns whether it existed.
    fn delete_route(&mut self, r: &Route) -> Result<bool, Error>;

    /// Unicast routes of one family in one table (`ip [-6] route show table T`), filtered by
    /// the kernel; ECMP routes as one [`Route`] each.
    fn routes(&mut self, ipv6: bool, table: u32) -> Result<Vec<Route>, Error>;

    /// Every unicast route of one family in every table except the local table, with table
    /// and protocol (`ip [-6] route show table all`, without `table local`), in one dump.
    fn all_routes(&mut self, ipv6: bool) -> Result<Vec<Route>, Error>;

    /// `ip [-6] route flush table T`: deletes every route of the table. Returns how many.
    fn flush_table(&mut self, ipv6: bool, table: u32) -> Result<usize, Error>;
}

/// Builds the `RTM_NEWROUTE`/`RTM_DELROUTE` message for `r`; `index` resolves device names.
fn encode(
    what: &str,
    r: &Route,
    mut index: impl FnMut(&IfName) -> Result<u32, Error>,
) -> Result<RouteMessage, Error> {
    let v4 = r.dst.addr().is_ipv4();
    if let Some(gw) = r.gateway {
        if gw.is_ipv4() != v4 {
            return Err(Error::Value(format!(
                "{what}: gateway {gw} is not of the destination's family"
            )));
        }
    }
    if !r.multipath.is_empty() && (r.gateway.is_some() || r.dev.is_some()) {
        return Err(Error::Value(format!(
            "{what}: an ECMP route has its gateways and devices in its next hops only"
        )));
    }
    for nh in &r.multipath {
        if nh.gateway.is_ipv4() != v4 {
            return Err(Error::Value(format!(
                "{what}: next hop {} is not of the destination's family",
                nh.gateway
            )));
        }
    }
    let mut msg = RouteMessage::default();
    msg.header = RouteHeader {
        address_family: family_of(&r.dst),
        destination_prefix_length: r.dst.prefix_len(),
        table: u8::try_from(r.table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC),
        protocol: RouteProtocol::from(u8::from(r.protocol)),
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
        msg.attributes.push(RouteAttribute::Oif(index(dev)?));
    }
    if !r.multipath.is_empty() {
        let mut hops = Vec::with_capacity(r.multipath.len());
        for nh in &r.multipath {
            let mut hop = RouteNextHop::default();
            hop.hops = nh.weight;
            hop.interface_index = match &nh.dev {
                Some(dev) => index(dev)?,
                None => 0,
            };
            if !nh.gateway.is_unspecified() {
                hop.attributes
                    .push(RouteAttribute::Gateway(RouteAddress::from(nh.gateway)));
            }
            hops.push(hop);
        }
        msg.attributes.push(RouteAttribute::MultiPath(hops));
    }
    msg.attributes.push(RouteAttribute::Table(r.table));
    if let Some(m) = r.metric {
        msg.attributes.push(RouteAttribute::Priority(m));
    }
    Ok(msg)
}

/// The `RTM_GETROUTE` dump request: the kernel keeps unicast routes only, of `table` if given
/// (`rtm_table` and `RTA_TABLE`, as `ip route show table T` asks).
fn dump_request(ipv6: bool, table: Option<u32>) -> RouteMessage {
    let mut req = RouteMessage::default();
    req.header.address_family = family(ipv6);
    req.header.kind = RouteType::Unicast;
    if let Some(t) = table {
        req.header.table = u8::try_from(t).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
        req.attributes.push(RouteAttribute::Table(t));
    }
    req
}

/// A route as one `RTM_NEWROUTE` carries it, devices still as interface indexes (0 = none).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Parsed {
    dst: IpNet,
    gateway: Option<IpAddr>,
    oif: u32,
    table: u32,
    scope_link: bool,
    metric: Option<u32>,
    protocol: Protocol,
    /// `(gateway or unspecified, ifindex, rtnh_hops)`, in the kernel's order.
    hops: Vec<(IpAddr, u32, u8)>,
    /// The route expires (`RTA_CACHEINFO`), so it is no ECMP sibling.
    expires: bool,
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

/// Parses a unicast route of the family `ipv6`; `None` for anything else.
fn parse(r: &RouteMessage, ipv6: bool) -> Option<Parsed> {
    if r.header.kind != RouteType::Unicast || r.header.address_family != family(ipv6) {
        return None;
    }
    let any = if ipv6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    };
    let mut p = Parsed {
        dst: IpNet::new(any, 0).ok()?,
        gateway: None,
        oif: 0,
        table: u32::from(r.header.table),
        scope_link: r.header.scope == RouteScope::Link,
        metric: None,
        protocol: Protocol::from(u8::from(r.header.protocol)),
        hops: vec![],
        expires: false,
    };
    let mut dst = any;
    for a in &r.attributes {
        match a {
            RouteAttribute::Table(v) => p.table = *v,
            RouteAttribute::Destination(d) => dst = ip_of(d)?,
            RouteAttribute::Gateway(g) => p.gateway = ip_of(g),
            RouteAttribute::Oif(i) => p.oif = *i,
            RouteAttribute::Priority(m) => p.metric = Some(*m),
            RouteAttribute::CacheInfo(c) => p.expires = c.expires != 0,
            RouteAttribute::MultiPath(hops) => {
                for h in hops {
                    let gw = h.attributes.iter().find_map(|x| match x {
                        RouteAttribute::Gateway(g) => ip_of(g),
                        _ => None,
                    });
                    p.hops.push((gw.unwrap_or(any), h.interface_index, h.hops));
                }
            }
            _ => {}
        }
    }
    p.dst = IpNet::new(dst, r.header.destination_prefix_length).ok()?;
    Some(p)
}

/// Turns parsed routes into [`Route`]s: names devices with `name_of`, merges IPv6 ECMP routes
/// reported one sibling per message, and sorts every multipath by `(gateway, dev)` when `sort`.
fn assemble(
    parsed: Vec<Parsed>,
    name_of: impl Fn(u32) -> Option<IfName>,
    sort: bool,
) -> Vec<Route> {
    let mut out: Vec<Route> = Vec::with_capacity(parsed.len());
    // IPv6 ECMP candidates by (table, dst, metric): index into `out`.
    let mut siblings: HashMap<(u32, IpNet, Option<u32>), usize> = HashMap::new();
    for p in parsed {
        let mut route = Route {
            dst: p.dst,
            gateway: p.gateway,
            dev: name_of(p.oif),
            table: p.table,
            scope_link: p.scope_link,
            metric: p.metric,
            multipath: p
                .hops
                .iter()
                .map(|&(gateway, index, weight)| NextHop {
                    gateway,
                    dev: name_of(index),
                    weight,
                })
                .collect(),
            protocol: p.protocol,
        };
        if !route.multipath.is_empty() {
            route.gateway = None;
            route.dev = None;
        }
        let candidate = p.dst.addr().is_ipv6()
            && !p.expires
            && p.protocol != Protocol::Ra
            && (route.gateway.is_some() || !route.multipath.is_empty());
        if candidate {
            let key = (p.table, p.dst, p.metric);
            if let Some(&at) = siblings.get(&key) {
                make_multipath(&mut route);
                let first = &mut out[at];
                make_multipath(first);
                first.multipath.append(&mut route.multipath);
                continue;
            }
            siblings.insert(key, out.len());
        }
        out.push(route);
    }
    if sort {
        for r in &mut out {
            r.multipath.sort();
        }
    }
    out
}

/// Makes a single route with a gateway a multipath route of that one next hop.
fn make_multipath(r: &mut Route) {
    if r.multipath.is_empty() {
        if let Some(gateway) = r.gateway.take() {
            r.multipath.push(NextHop {
                gateway,
                dev: r.dev.take(),
                weight: 0,
            });
        }
    }
}

impl Rtnl {
    /// One route dump (`ip [-6] route show table T|all`), unicast only, then at most one link
    /// dump to name the devices. Multipath next hops stay in the kernel's order unless `sort`.
    fn read_routes(
        &mut self,
        what: &str,
        ipv6: bool,
        table: Option<u32>,
        sort: bool,
    ) -> Result<Vec<Route>, Error> {
        let msgs = match self.dump(
            what,
            RouteNetlinkMessage::GetRoute(dump_request(ipv6, table)),
        ) {
            Ok(m) => m,
            // The kernel refuses to dump a table that does not exist (yet): it has no routes.
            Err(e) if table.is_some() && e.errno() == Some(nix::errno::Errno::ENOENT as i32) => {
                return Ok(vec![])
            }
            Err(e) => return Err(e),
        };
        let parsed: Vec<Parsed> = msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => parse(r, ipv6),
                _ => None,
            })
            // Belt and braces: the kernel filtered already.
            .filter(|p| match table {
                Some(t) => p.table == t,
                None => p.table != LOCAL_TABLE,
            })
            .collect();
        let needs_names = parsed
            .iter()
            .any(|p| p.oif != 0 || p.hops.iter().any(|h| h.1 != 0));
        let names: HashMap<u32, IfName> = if needs_names {
            self.links()?
                .into_iter()
                .filter_map(|l| Some((l.index, IfName::new("dev", &l.name).ok()?)))
                .collect()
        } else {
            HashMap::new()
        };
        Ok(assemble(parsed, |i| names.get(&i).cloned(), sort))
    }

    fn send_delete(&mut self, what: &str, r: &Route) -> Result<bool, Error> {
        let msg = encode(what, r, |d| self.index(what, d))?;
        match self.request(what, RouteNetlinkMessage::DelRoute(msg), 0) {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == Some(nix::errno::Errno::ESRCH as i32) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl Routes for Rtnl {
    fn replace_route(&mut self, r: &Route) -> Result<(), Error> {
        let what = format!("replace route {} table {}", r.dst, r.table);
        let msg = encode(&what, r, |d| self.index(&what, d))?;
        self.request(
            &what,
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    fn delete_route(&mut self, r: &Route) -> Result<bool, Error> {
        let what = format!("delete route {} table {}", r.dst, r.table);
        if self.send_delete(&what, r)? {
            return Ok(true);
        }
        if r.multipath.is_empty() || r.dst.addr().is_ipv6() {
            return Ok(false);
        }
        // IPv4 matches next hops in the order they were written, which may not be ours (a
        // route written unsorted, or by someone else): delete it in the kernel's order.
        let mut wanted = r.multipath.clone();
        wanted.sort();
        let kernel = self
            .read_routes(&what, false, Some(r.table), false)?
            .into_iter()
            .find(|k| {
                let mut hops = k.multipath.clone();
                hops.sort();
                hops == wanted
                    && Route {
                        multipath: vec![],
                        ..k.clone()
                    } == Route {
                        multipath: vec![],
                        ..r.clone()
                    }
            });
        match kernel {
            Some(k) if k.multipath != r.multipath => self.send_delete(&what, &k),
            _ => Ok(false),
        }
    }

    fn routes(&mut self, ipv6: bool, table: u32) -> Result<Vec<Route>, Error> {
        self.read_routes(
            &format!("list routes table {table}"),
            ipv6,
            Some(table),
            true,
        )
    }

    fn all_routes(&mut self, ipv6: bool) -> Result<Vec<Route>, Error> {
        self.read_routes("list routes of all tables", ipv6, None, true)
    }

    fn flush_table(&mut self, ipv6: bool, table: u32) -> Result<usize, Error> {
        let routes = self.routes(ipv6, table)?;
        for r in &routes {
            self.delete_route(r)?;
        }
        Ok(routes.len())
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{Emitable, NetlinkMessage, NetlinkPayload, Parseable};

    use super::*;

    fn dev(s: &str) -> IfName {
        IfName::new("test", s).unwrap()
    }

    fn hop(gw: &str, weight: u8) -> NextHop {
        NextHop {
            gateway: gw.parse().unwrap(),
            dev: Some(dev("va")),
            weight,
        }
    }

    /// `va` is interface 3 in the namespace the bytes below were captured in.
    fn index(d: &IfName) -> Result<u32, Error> {
        assert_eq!(d.as_str(), "va");
        Ok(3)
    }

    fn name_of(i: u32) -> Option<IfName> {
        (i == 3).then(|| dev("va"))
    }

    fn body(msg: &RouteMessage) -> Vec<u8> {
        let mut buf = vec![0; msg.buffer_len()];
        msg.emit(&mut buf);
        buf
    }

    /// Parses a whole netlink message as `ip` sent it.
    fn from_wire(bytes: &[u8], ipv6: bool) -> Vec<Route> {
        let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes).unwrap();
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r)) = msg.payload else {
            panic!("not a route: {msg:?}");
        };
        assemble(parse(&r, ipv6).into_iter().collect(), name_of, true)
    }

    /// Parses a message body as we emit it.
    fn from_body(bytes: &[u8], ipv6: bool) -> Vec<Route> {
        let r = RouteMessage::parse(bytes).unwrap();
        assemble(parse(&r, ipv6).into_iter().collect(), name_of, true)
    }

    const RTA_TABLE_MAIN: [u8; 8] = [0x08, 0x00, 0x0f, 0x00, 0xfe, 0x00, 0x00, 0x00];

    // strace -e trace=sendmsg -e write=3 ip route replace 192.0.2.0/24 proto static \
    //     nexthop via 198.51.100.3 dev va nexthop via 198.51.100.2 dev va weight 2
    // (iproute2 6.1, kernel 6.18, va = ifindex 3)
    const IP_V4_ECMP: [u8; 72] = [
        0x48, 0x00, 0x00, 0x00, 0x18, 0x00, 0x05, 0x05, 0x09, 0x43, 0x0f, 0x6b, 0x00, 0x00, 0x00,
        0x00, // nlmsghdr
        0x02, 0x18, 0x00, 0x00, 0xfe, 0x04, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, // rtmsg
        0x08, 0x00, 0x01, 0x00, 0xc0, 0x00, 0x02, 0x00, // RTA_DST
        0x24, 0x00, 0x09, 0x00, // RTA_MULTIPATH
        0x10, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, // rtnexthop, weight 1, ifindex 3
        0x08, 0x00, 0x05, 0x00, 0xc6, 0x33, 0x64, 0x03, // RTA_GATEWAY
        0x10, 0x00, 0x00, 0x01, 0x03, 0x00, 0x00, 0x00, // rtnexthop, weight 2, ifindex 3
        0x08, 0x00, 0x05, 0x00, 0xc6, 0x33, 0x64, 0x02, // RTA_GATEWAY
    ];

    // strace -e trace=sendmsg -e write=3 ip -6 route replace 2001:db8:2::/64 proto static \
    //     nexthop via 2001:db8:1::3 dev va nexthop via 2001:db8:1::2 dev va weight 3
    const IP_V6_ECMP: [u8; 108] = [
        0x6c, 0x00, 0x00, 0x00, 0x18, 0x00, 0x05, 0x05, 0x0b, 0x43, 0x0f, 0x6b, 0x00, 0x00, 0x00,
        0x00, // nlmsghdr
        0x0a, 0x40, 0x00, 0x00, 0xfe, 0x04, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, // rtmsg
        0x14, 0x00, 0x01, 0x00, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, // RTA_DST
        0x3c, 0x00, 0x09, 0x00, // RTA_MULTIPATH
        0x1c, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, // rtnexthop, weight 1, ifindex 3
        0x14, 0x00, 0x05, 0x00, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x03, // RTA_GATEWAY
        0x1c, 0x00, 0x00, 0x02, 0x03, 0x00, 0x00, 0x00, // rtnexthop, weight 3, ifindex 3
        0x14, 0x00, 0x05, 0x00, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x02, // RTA_GATEWAY
    ];

    fn check_against_iproute2(wire: &[u8], dst: &str, a: &str, b: &str, weight_b: u8) {
        let ipv6 = dst.contains(':');
        // In iproute2's order (A first), as the command above wrote it.
        let ours = Route {
            multipath: vec![hop(a, 0), hop(b, weight_b)],
            ..Route::to(dst.parse().unwrap())
        };
        let msg = encode("test", &ours, index).unwrap();
        // Byte for byte what `ip` sent, plus the RTA_TABLE we always add.
        let mut expected = wire[16..].to_vec();
        expected.extend_from_slice(&RTA_TABLE_MAIN);
        assert_eq!(body(&msg), expected);
        // Read back (from ip's bytes and from ours): one route, next hops sorted.
        let sorted = Route {
            multipath: vec![hop(b, weight_b), hop(a, 0)],
            ..ours.clone()
        };
        assert_eq!(from_wire(wire, ipv6), vec![sorted.clone()]);
        assert_eq!(from_body(&body(&msg), ipv6), vec![sorted.clone()]);
        // Written sorted, read back equal.
        let msg = encode("test", &sorted, index).unwrap();
        assert_eq!(from_body(&body(&msg), ipv6), vec![sorted]);
    }

    #[test]
    fn ipv4_multipath_encoding_matches_iproute2() {
        check_against_iproute2(
            &IP_V4_ECMP,
            "192.0.2.0/24",
            "198.51.100.3",
            "198.51.100.2",
            1,
        );
    }

    #[test]
    fn ipv6_multipath_encoding_matches_iproute2() {
        check_against_iproute2(
            &IP_V6_ECMP,
            "2001:db8:2::/64",
            "2001:db8:1::3",
            "2001:db8:1::2",
            2,
        );
    }

    #[test]
    fn next_hop_without_gateway_or_device() {
        let r = Route {
            table: 100_000,
            protocol: Protocol::Boot,
            metric: Some(7),
            multipath: vec![
                NextHop {
                    gateway: "0.0.0.0".parse().unwrap(),
                    dev: Some(dev("va")),
                    weight: 4,
                },
                NextHop {
                    gateway: "198.51.100.9".parse().unwrap(),
                    dev: None,
                    weight: 0,
                },
            ],
            ..Route::to("0.0.0.0/0".parse().unwrap())
        };
        let msg = encode("test", &r, index).unwrap();
        assert_eq!(msg.header.table, 0, "tables >= 256 go in RTA_TABLE only");
        let RouteAttribute::MultiPath(hops) = &msg.attributes[0] else {
            panic!("{msg:?}");
        };
        assert_eq!(
            (
                hops[0].interface_index,
                hops[0].hops,
                hops[0].attributes.len()
            ),
            (3, 4, 0)
        );
        assert_eq!((hops[1].interface_index, hops[1].hops), (0, 0));
        assert_eq!(from_body(&body(&msg), false), vec![r]);
    }

    #[test]
    fn invalid_routes_are_refused_before_the_kernel() {
        let dst: IpNet = "192.0.2.0/24".parse().unwrap();
        let both = Route {
            gateway: Some("198.51.100.1".parse().unwrap()),
            multipath: vec![hop("198.51.100.2", 0)],
            ..Route::to(dst)
        };
        let family = Route {
            multipath: vec![hop("2001:db8::1", 0)],
            ..Route::to(dst)
        };
        for r in [both, family] {
            assert!(
                matches!(encode("t", &r, index), Err(Error::Value(_))),
                "{r:?}"
            );
        }
    }

    #[test]
    fn protocols_round_trip() {
        for v in 0..=255u8 {
            assert_eq!(u8::from(Protocol::from(v)), v);
        }
        assert_eq!(Protocol::from(2), Protocol::Kernel);
        assert_eq!(Protocol::from(4), Protocol::Static);
        assert_eq!(u8::from(Protocol::Ra), 9);
        assert_eq!(u8::from(Protocol::Boot), 3);
        assert_eq!(u8::from(Protocol::Redirect), 1);
        assert_eq!(Protocol::from(186), Protocol::Other(186));
    }

    #[test]
    fn dump_requests_carry_the_filter() {
        let all = dump_request(true, None);
        assert_eq!(
            (all.header.kind, all.header.table, all.attributes.len()),
            (RouteType::Unicast, 0, 0)
        );
        let t = dump_request(false, Some(100_000));
        assert_eq!(t.header.table, 0);
        assert_eq!(t.attributes, vec![RouteAttribute::Table(100_000)]);
        let t = dump_request(false, Some(16));
        assert_eq!(t.header.table, 16);
        // What strict checking refuses in a dump request stays zero.
        let h = &t.header;
        assert_eq!(
            (h.destination_prefix_length, h.source_prefix_length, h.tos),
            (0, 0, 0)
        );
        assert_eq!(h.scope, RouteScope::Universe);
    }

    fn single(dst: &str, gw: &str, protocol: Protocol) -> Parsed {
        let ipv6 = dst.contains(':');
        Parsed {
            dst: dst.parse().unwrap(),
            gateway: Some(gw.parse().unwrap()),
            oif: 3,
            table: MAIN_TABLE,
            scope_link: false,
            metric: ipv6.then_some(1024),
            protocol,
            hops: vec![],
            expires: false,
        }
    }

    #[test]
    fn ipv6_siblings_in_separate_messages_become_one_route() {
        let msgs = vec![
            single("2001:db8:2::/64", "2001:db8:1::3", Protocol::Static),
            single("2001:db8:3::/64", "2001:db8:1::3", Protocol::Static),
            single("2001:db8:2::/64", "2001:db8:1::2", Protocol::Static),
        ];
        let routes = assemble(msgs, name_of, true);
        assert_eq!(
            routes,
            vec![
                Route {
                    metric: Some(1024),
                    multipath: vec![hop("2001:db8:1::2", 0), hop("2001:db8:1::3", 0)],
                    ..Route::to("2001:db8:2::/64".parse().unwrap())
                },
                Route {
                    gateway: Some("2001:db8:1::3".parse().unwrap()),
                    dev: Some(dev("va")),
                    metric: Some(1024),
                    ..Route::to("2001:db8:3::/64".parse().unwrap())
                },
            ]
        );
    }

    #[test]
    fn only_true_ipv6_siblings_are_merged() {
        // Router advertisements: two default routers are no ECMP route.
        let ra = vec![
            single("::/0", "fe80::1", Protocol::Ra),
            single("::/0", "fe80::2", Protocol::Ra),
        ];
        assert_eq!(assemble(ra, name_of, true).len(), 2);
        // Different metric or table: different routes.
        let mut other = single("2001:db8:2::/64", "2001:db8:1::2", Protocol::Static);
        other.metric = Some(1);
        let mut table = single("2001:db8:2::/64", "2001:db8:1::2", Protocol::Static);
        table.table = 16;
        let msgs = vec![
            single("2001:db8:2::/64", "2001:db8:1::3", Protocol::Static),
            other,
            table,
        ];
        assert_eq!(assemble(msgs, name_of, true).len(), 3);
        // IPv4 routes with the same destination (`ip route append`) are never merged.
        let v4 = vec![
            single("192.0.2.0/24", "198.51.100.2", Protocol::Static),
            single("192.0.2.0/24", "198.51.100.3", Protocol::Static),
        ];
        assert_eq!(assemble(v4, name_of, true).len(), 2);
    }
}
