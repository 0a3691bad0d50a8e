//! Packet and byte counters of links: what `ip -s link show` prints, read from the kernel's
//! 64-bit link statistics (`IFLA_STATS64`) with one `RTM_GETLINK` (of one link by name, or a
//! dump of the namespace). The agent reads a router's gateway traffic this way: one netlink
//! round trip per device, no process, nothing changed in the kernel.
//!
//! The counters are the device's own (`rx` = received by this end of the link, `tx` = sent
//! by it), monotonic for the device's life; a device deleted and created again starts at 0.

use l3agent_types::IfName;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;

use crate::error::Error;
use crate::socket::Rtnl;

/// One link's counters, as `ip -s link show` prints them (`RX: bytes packets`, `TX: bytes
/// packets`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounters {
    /// Bytes received by the device.
    pub rx_bytes: u64,
    /// Packets received by the device.
    pub rx_packets: u64,
    /// Bytes sent by the device.
    pub tx_bytes: u64,
    /// Packets sent by the device.
    pub tx_packets: u64,
}

impl LinkCounters {
    /// The sum of two devices' counters (a router with several external devices).
    pub fn saturating_add(self, other: LinkCounters) -> LinkCounters {
        LinkCounters {
            rx_bytes: self.rx_bytes.saturating_add(other.rx_bytes),
            rx_packets: self.rx_packets.saturating_add(other.rx_packets),
            tx_bytes: self.tx_bytes.saturating_add(other.tx_bytes),
            tx_packets: self.tx_packets.saturating_add(other.tx_packets),
        }
    }
}

/// The name and counters of a link message; `None` for a message without a name or without
/// 64-bit statistics (a kernel that sends only the 32-bit `IFLA_STATS` is older than any this
/// crate supports).
pub fn counters_of(m: &LinkMessage) -> Option<(String, LinkCounters)> {
    let mut name = None;
    let mut counters = None;
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Stats64(s) => {
                counters = Some(LinkCounters {
                    rx_bytes: s.rx_bytes,
                    rx_packets: s.rx_packets,
                    tx_bytes: s.tx_bytes,
                    tx_packets: s.tx_packets,
                })
            }
            _ => {}
        }
    }
    Some((name?, counters?))
}

impl Rtnl {
    /// The counters of the link named `name` (`ip -s link show dev NAME`): one `RTM_GETLINK`
    /// for that link only; `None` if there is no such link. Cheaper than a dump when the
    /// devices are known: the kernel fills every attribute of every link it sends (IPv6
    /// configuration included).
    pub fn link_counters_of(&mut self, name: &IfName) -> Result<Option<LinkCounters>, Error> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.get(
            &format!("get link counters of {name}"),
            RouteNetlinkMessage::GetLink(msg),
        ) {
            Ok(msgs) => Ok(msgs.iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => counters_of(l).map(|(_, c)| c),
                _ => None,
            })),
            Err(e) if e.errno() == Some(nix::errno::Errno::ENODEV as i32) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every link's counters (`ip -s link show`): one `RTM_GETLINK` dump.
    pub fn link_counters(&mut self) -> Result<Vec<(String, LinkCounters)>, Error> {
        let msgs = self.dump(
            "list link counters",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
        )?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => counters_of(l),
                _ => None,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{NetlinkMessage, NetlinkPayload};

    use l3agent_testkit::hex_capture as hex;

    /// Every link message of a dump answer.
    fn links(bytes: &[u8]) -> Vec<LinkMessage> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let m: NetlinkMessage<RouteNetlinkMessage> =
                NetlinkMessage::deserialize(&bytes[at..]).unwrap();
            let len = m.header.length as usize;
            if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) = m.payload {
                out.push(l);
            }
            assert!(len > 0);
            at += len;
        }
        out
    }

    #[test]
    fn a_captured_dump_gives_what_ip_s_link_show_printed() {
        let dump = hex(include_str!("../tests/data/link-dump.hex"));
        let read: Vec<(String, LinkCounters)> =
            links(&dump).iter().filter_map(counters_of).collect();
        let names: Vec<&str> = read.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["lo", "eth0"]);
        assert_eq!(
            read[1].1,
            LinkCounters {
                rx_bytes: 1460,
                rx_packets: 16,
                tx_bytes: 1034,
                tx_packets: 13,
            }
        );
    }

    #[test]
    fn a_message_without_a_name_or_statistics_gives_nothing() {
        let mut m = LinkMessage::default();
        assert_eq!(counters_of(&m), None);
        m.attributes.push(LinkAttribute::IfName("qg-1".into()));
        assert_eq!(counters_of(&m), None);
        let mut s = netlink_packet_route::link::Stats64::default();
        s.rx_bytes = 7;
        s.tx_packets = 2;
        m.attributes.push(LinkAttribute::Stats64(s));
        assert_eq!(
            counters_of(&m),
            Some((
                "qg-1".into(),
                LinkCounters {
                    rx_bytes: 7,
                    tx_packets: 2,
                    ..LinkCounters::default()
                }
            ))
        );
    }

    #[test]
    fn sums_saturate_instead_of_wrapping() {
        let a = LinkCounters {
            rx_bytes: u64::MAX - 1,
            rx_packets: 1,
            tx_bytes: 2,
            tx_packets: 3,
        };
        let s = a.saturating_add(a);
        assert_eq!(s.rx_bytes, u64::MAX);
        assert_eq!((s.rx_packets, s.tx_bytes, s.tx_packets), (2, 4, 6));
    }
}
