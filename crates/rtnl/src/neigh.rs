//! Permanent neighbour entries (`ip neigh replace IP lladdr MAC dev DEV nud permanent`, `ip
//! neigh del`), as DVR uses them for its ARP table and the rfp/fpr link.

use std::net::IpAddr;

use l3agent_types::IfName;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::RouteType;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::error::Error;
use crate::socket::Rtnl;

/// A neighbour entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    /// Interface index.
    pub index: u32,
    /// IP address.
    pub ip: IpAddr,
    /// MAC address.
    pub mac: Option<[u8; 6]>,
    /// Permanent entry.
    pub permanent: bool,
}

fn message(index: u32, ip: IpAddr) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    m.header.ifindex = index;
    m.header.state = NeighbourState::Permanent;
    m.header.kind = RouteType::Unicast;
    m.attributes.push(NeighbourAttribute::Destination(match ip {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    }));
    m
}

/// Neighbour entries (`ip neigh`). Implemented by [`Rtnl`] over rtnetlink; tests pass fakes to code
/// generic over it to inject faults.
pub trait Neighbours {
    /// `ip neigh replace IP lladdr MAC dev DEV nud permanent`. Idempotent.
    fn replace_neighbour(&mut self, dev: &IfName, ip: IpAddr, mac: [u8; 6]) -> Result<(), Error>;

    /// `ip neigh del IP dev DEV`. Returns whether it existed.
    fn delete_neighbour(&mut self, dev: &IfName, ip: IpAddr) -> Result<bool, Error>;

    /// The entries of one device (`ip neigh show dev DEV`, filtered by the kernel).
    fn neighbours(&mut self, dev: &IfName) -> Result<Vec<Neighbour>, Error>;
}

impl Neighbours for Rtnl {
    fn replace_neighbour(&mut self, dev: &IfName, ip: IpAddr, mac: [u8; 6]) -> Result<(), Error> {
        let what = format!("replace neighbour {ip} on {dev}");
        let index = self.index(&what, dev)?;
        let mut m = message(index, ip);
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        self.request(
            &what,
            RouteNetlinkMessage::NewNeighbour(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    fn delete_neighbour(&mut self, dev: &IfName, ip: IpAddr) -> Result<bool, Error> {
        let what = format!("delete neighbour {ip} on {dev}");
        let index = self.index(&what, dev)?;
        match self.request(
            &what,
            RouteNetlinkMessage::DelNeighbour(message(index, ip)),
            0,
        ) {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == Some(nix::errno::Errno::ENOENT as i32) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn neighbours(&mut self, dev: &IfName) -> Result<Vec<Neighbour>, Error> {
        let index = self.index("list neighbours", dev)?;
        // With strict checking the kernel dumps only the device's entries (`NDA_IFINDEX`).
        let mut req = NeighbourMessage::default();
        req.attributes.push(NeighbourAttribute::IfIndex(index));
        let msgs = self.dump("list neighbours", RouteNetlinkMessage::GetNeighbour(req))?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewNeighbour(n) = m else {
                continue;
            };
            // Belt and braces: the kernel filtered already.
            if n.header.ifindex != index {
                continue;
            }
            let mut ip = None;
            let mut mac = None;
            for a in &n.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                        ip = Some(IpAddr::V4(*a))
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                        ip = Some(IpAddr::V6(*a))
                    }
                    NeighbourAttribute::LinkLayerAddress(m) if m.len() == 6 => {
                        mac = m.as_slice().try_into().ok()
                    }
                    _ => {}
                }
            }
            if let Some(ip) = ip {
                out.push(Neighbour {
                    index,
                    ip,
                    mac,
                    permanent: n.header.state == NeighbourState::Permanent,
                });
            }
        }
        Ok(out)
    }
}
