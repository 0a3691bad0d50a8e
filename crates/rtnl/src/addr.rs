//! Addresses (`ip addr add/del/show`), IPv4 and IPv6, and converging a device to a wanted set
//! while preserving some (Neutron's `init_l3` with `preserve_ips`).

use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use l3agent_types::IfName;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::error::Error;
use crate::socket::Rtnl;

/// An address on a device.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Address {
    /// Interface index.
    pub index: u32,
    /// Address with prefix length.
    pub net: IpNet,
}

/// What [`Rtnl::converge_addresses`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressChanges {
    /// Added.
    pub added: Vec<IpNet>,
    /// Removed.
    pub removed: Vec<IpNet>,
}

fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn message(index: u32, net: IpNet, broadcast: bool) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = family(net.addr());
    msg.header.prefix_len = net.prefix_len();
    msg.header.index = index;
    msg.header.scope = match net.addr() {
        IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80 => AddressScope::Link,
        _ => AddressScope::Universe,
    };
    msg.attributes.push(AddressAttribute::Address(net.addr()));
    if let IpNet::V4(v4) = net {
        msg.attributes.push(AddressAttribute::Local(net.addr()));
        if broadcast && v4.prefix_len() < 31 {
            msg.attributes
                .push(AddressAttribute::Broadcast(broadcast_of(v4)));
        }
    }
    msg
}

fn broadcast_of(net: Ipv4Net) -> Ipv4Addr {
    net.broadcast()
}

/// Addresses (`ip addr`). Implemented by [`Rtnl`] over rtnetlink; tests pass fakes to code
/// generic over it to inject faults.
pub trait Addresses {
    /// Every address, or those of one device (`ip addr show [dev NAME]`, filtered by the
    /// kernel).
    fn addresses(&mut self, dev: Option<&IfName>) -> Result<Vec<Address>, Error>;

    /// `ip addr add NET [broadcast +] dev DEV`.
    fn add_address(&mut self, dev: &IfName, net: IpNet, broadcast: bool) -> Result<(), Error>;

    /// `ip addr del NET dev DEV`.
    fn delete_address(&mut self, dev: &IfName, net: IpNet) -> Result<(), Error>;

    /// Makes the addresses of `dev` exactly `wanted`, plus those in `preserve` that are
    /// already there, plus the kernel's IPv6 link-local address. Idempotent.
    fn converge_addresses(
        &mut self,
        dev: &IfName,
        wanted: &[IpNet],
        preserve: &[IpNet],
    ) -> Result<AddressChanges, Error> {
        let current = self.addresses(Some(dev))?;
        let mut changes = AddressChanges::default();
        for a in &current {
            let link_local =
                matches!(a.net, IpNet::V6(n) if n.addr().segments()[0] & 0xffc0 == 0xfe80);
            if !link_local && !wanted.contains(&a.net) && !preserve.contains(&a.net) {
                self.delete_address(dev, a.net)?;
                changes.removed.push(a.net);
            }
        }
        for w in wanted {
            if !current.iter().any(|a| a.net == *w) {
                self.add_address(dev, *w, true)?;
                changes.added.push(*w);
            }
        }
        Ok(changes)
    }
}

impl Addresses for Rtnl {
    fn addresses(&mut self, dev: Option<&IfName>) -> Result<Vec<Address>, Error> {
        let index = match dev {
            Some(d) => Some(self.index("list addresses", d)?),
            None => None,
        };
        // With strict checking the kernel dumps only the device's addresses (`ifa_index`).
        let mut req = AddressMessage::default();
        req.header.index = index.unwrap_or(0);
        let msgs = self.dump("list addresses", RouteNetlinkMessage::GetAddress(req))?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            // Belt and braces: the kernel filtered already.
            if index.is_some_and(|i| i != a.header.index) {
                continue;
            }
            // IPv4 reports the configured address as Local (Address is the peer on p2p links).
            let local = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let addr = local.or_else(|| {
                a.attributes.iter().find_map(|x| match x {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(ip) = addr {
                if let Ok(net) = IpNet::new(ip, a.header.prefix_len) {
                    out.push(Address {
                        index: a.header.index,
                        net,
                    });
                }
            }
        }
        Ok(out)
    }

    fn add_address(&mut self, dev: &IfName, net: IpNet, broadcast: bool) -> Result<(), Error> {
        let what = format!("add address {net} to {dev}");
        let index = self.index(&what, dev)?;
        self.request(
            &what,
            RouteNetlinkMessage::NewAddress(message(index, net, broadcast)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    fn delete_address(&mut self, dev: &IfName, net: IpNet) -> Result<(), Error> {
        let what = format!("delete address {net} from {dev}");
        let index = self.index(&what, dev)?;
        self.request(
            &what,
            RouteNetlinkMessage::DelAddress(message(index, net, false)),
            0,
        )
    }
}
