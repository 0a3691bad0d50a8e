//! Links: veth pairs (peer created directly in another namespace), Linux bridges and their
//! ports, up/down, MTU, MAC, delete, list. The `ip link` equivalents, over rtnetlink.

use std::os::fd::{AsRawFd, BorrowedFd};

use l3agent_types::IfName;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::RouteNetlinkMessage;

use crate::error::Error;
use crate::socket::Rtnl;

/// A link as the kernel reports it (`ip -j link show`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// `veth`, `bridge`, ... (`None` for physical and loopback devices).
    pub kind: Option<String>,
    /// Index of the bridge it is enslaved to.
    pub master: Option<u32>,
    /// MTU.
    pub mtu: u32,
    /// MAC address.
    pub mac: Option<[u8; 6]>,
    /// Administratively up.
    pub up: bool,
}

fn parse_link(m: &LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        name: String::new(),
        kind: None,
        master: None,
        mtu: 0,
        mac: None,
        up: m.header.flags.contains(LinkFlags::Up),
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Mtu(v) => l.mtu = *v,
            LinkAttribute::Controller(v) => l.master = Some(*v),
            LinkAttribute::Address(mac) if mac.len() == 6 => l.mac = mac.as_slice().try_into().ok(),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        l.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    l
}

/// Formats a MAC address as `ip` does.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Links: veth pairs, bridges, up/down, MTU, MAC, master, namespace, delete, list (`ip link`). Implemented by [`Rtnl`] over rtnetlink; tests pass fakes to code
/// generic over it to inject faults.
pub trait Links {
    /// Every link (`ip link show`).
    fn links(&mut self) -> Result<Vec<Link>, Error>;

    /// The link named `name`, if it exists.
    fn link(&mut self, name: &IfName) -> Result<Option<Link>, Error>;

    /// `ip link add NAME type veth peer name PEER [netns NS]`: the peer end is created directly
    /// in `peer_netns` (never in this namespace first).
    fn add_veth(
        &mut self,
        name: &IfName,
        peer: &IfName,
        peer_netns: Option<BorrowedFd<'_>>,
        mtu: Option<u32>,
    ) -> Result<(), Error>;

    /// `ip link add NAME type bridge`.
    fn add_bridge(&mut self, name: &IfName) -> Result<(), Error>;

    /// `ip link set NAME up|down`.
    fn set_up(&mut self, name: &IfName, up: bool) -> Result<(), Error>;

    /// `ip link set NAME mtu MTU`. The kernel checks the range (68..=65535 for veth).
    fn set_mtu(&mut self, name: &IfName, mtu: u32) -> Result<(), Error>;

    /// `ip link set NAME address MAC`.
    fn set_mac(&mut self, name: &IfName, mac: [u8; 6]) -> Result<(), Error>;

    /// `ip link set NAME master BRIDGE`.
    fn set_master(&mut self, name: &IfName, bridge: &IfName) -> Result<(), Error>;

    /// `ip link set NAME netns NS`.
    fn move_to(&mut self, name: &IfName, netns: BorrowedFd<'_>, label: &str) -> Result<(), Error>;

    /// `ip link del NAME`. Returns whether it existed.
    fn delete_link(&mut self, name: &IfName) -> Result<bool, Error>;
}

impl Rtnl {
    /// The index of `name`, or [`Error::NoDevice`].
    pub fn index(&mut self, what: &str, name: &IfName) -> Result<u32, Error> {
        self.link(name)?
            .map(|l| l.index)
            .ok_or_else(|| Error::NoDevice {
                what: what.to_owned(),
                netns: self.netns().to_owned(),
                device: name.to_string(),
            })
    }

    fn set(
        &mut self,
        what: String,
        name: &IfName,
        edit: impl FnOnce(&mut LinkMessage),
    ) -> Result<(), Error> {
        let index = self.index(&what, name)?;
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        edit(&mut msg);
        self.request(&what, RouteNetlinkMessage::SetLink(msg), 0)
    }
}

impl Links for Rtnl {
    fn links(&mut self) -> Result<Vec<Link>, Error> {
        let msgs = self.dump(
            "list links",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
        )?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(parse_link(l)),
                _ => None,
            })
            .collect())
    }

    fn link(&mut self, name: &IfName) -> Result<Option<Link>, Error> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.get(
            &format!("get link {name}"),
            RouteNetlinkMessage::GetLink(msg),
        ) {
            Ok(msgs) => Ok(msgs.iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(parse_link(l)),
                _ => None,
            })),
            Err(e) if e.errno() == Some(nix::errno::Errno::ENODEV as i32) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn add_veth(
        &mut self,
        name: &IfName,
        peer: &IfName,
        peer_netns: Option<BorrowedFd<'_>>,
        mtu: Option<u32>,
    ) -> Result<(), Error> {
        let mut peer_msg = LinkMessage::default();
        peer_msg
            .attributes
            .push(LinkAttribute::IfName(peer.to_string()));
        if let Some(fd) = peer_netns {
            peer_msg
                .attributes
                .push(LinkAttribute::NetNsFd(fd.as_raw_fd()));
        }
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        if let Some(mtu) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
            peer_msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        ]));
        self.request(
            &format!("add veth {name} (peer {peer})"),
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    fn add_bridge(&mut self, name: &IfName) -> Result<(), Error> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        self.request(
            &format!("add bridge {name}"),
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    fn set_up(&mut self, name: &IfName, up: bool) -> Result<(), Error> {
        let what = format!("set {name} {}", if up { "up" } else { "down" });
        self.set(what, name, |m| {
            m.header.change_mask = LinkFlags::Up;
            if up {
                m.header.flags = LinkFlags::Up;
            }
        })
    }

    fn set_mtu(&mut self, name: &IfName, mtu: u32) -> Result<(), Error> {
        self.set(format!("set {name} mtu {mtu}"), name, |m| {
            m.attributes.push(LinkAttribute::Mtu(mtu))
        })
    }

    fn set_mac(&mut self, name: &IfName, mac: [u8; 6]) -> Result<(), Error> {
        self.set(
            format!("set {name} address {}", format_mac(&mac)),
            name,
            |m| m.attributes.push(LinkAttribute::Address(mac.to_vec())),
        )
    }

    fn set_master(&mut self, name: &IfName, bridge: &IfName) -> Result<(), Error> {
        let what = format!("set {name} master {bridge}");
        let master = self.index(&what, bridge)?;
        self.set(what, name, |m| {
            m.attributes.push(LinkAttribute::Controller(master))
        })
    }

    fn move_to(&mut self, name: &IfName, netns: BorrowedFd<'_>, label: &str) -> Result<(), Error> {
        self.set(format!("move {name} to {label}"), name, |m| {
            m.attributes.push(LinkAttribute::NetNsFd(netns.as_raw_fd()))
        })
    }

    fn delete_link(&mut self, name: &IfName) -> Result<bool, Error> {
        let Some(link) = self.link(name)? else {
            return Ok(false);
        };
        let mut msg = LinkMessage::default();
        msg.header.index = link.index;
        self.request(
            &format!("delete link {name}"),
            RouteNetlinkMessage::DelLink(msg),
            0,
        )?;
        Ok(true)
    }
}
