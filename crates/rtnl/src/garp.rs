//! Gratuitous ARP for an address on a device: what Neutron does with `arping -U` and
//! `arping -A` after configuring a gateway or floating IP, sent in-process from a packet socket
//! opened inside the namespace.
//!
//! The frame builders and the packet-socket helpers here are shared with
//! [`crate::announce`], which also sends IPv6 unsolicited neighbour advertisements (like
//! `ndsend` from ndisc6; Neutron sends none, #1357068).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use l3agent_types::IfName;

use crate::error::Error;
use crate::netns::Netns;
use crate::prelude::*;
use crate::socket::Rtnl;

/// EtherType of ARP.
pub(crate) const ETH_P_ARP: u16 = 0x0806;
/// EtherType of IPv6.
pub(crate) const ETH_P_IPV6: u16 = 0x86dd;
/// The Ethernet broadcast address (where gratuitous ARP goes).
pub(crate) const BROADCAST_MAC: [u8; 6] = [0xff; 6];
/// The Ethernet multicast address of ff02::1, all nodes (RFC 2464 §7: 33:33 + low 32 bits).
pub(crate) const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];
/// ff02::1, all nodes on the link: where unsolicited neighbour advertisements go.
pub(crate) const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// Length of an unsolicited neighbour advertisement with a target link-layer address option:
/// IPv6 header (40) + ICMPv6 header and flags (8) + target (16) + option (8).
pub(crate) const NA_LEN: usize = 72;

/// An ARP packet (no Ethernet header): `op` 1 is a request (`arping -U`), 2 a reply
/// (`arping -A`); sender and target IP are both `ip`, as gratuitous ARP has them.
pub(crate) fn arp(op: u16, mac: [u8; 6], ip: Ipv4Addr) -> [u8; 28] {
    let mut p = [0u8; 28];
    p[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    p[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    p[4] = 6;
    p[5] = 4;
    p[6..8].copy_from_slice(&op.to_be_bytes());
    p[8..14].copy_from_slice(&mac);
    p[14..18].copy_from_slice(&ip.octets());
    if op == 2 {
        p[18..24].copy_from_slice(&mac);
    }
    p[24..28].copy_from_slice(&ip.octets());
    p
}

/// The Internet checksum (RFC 1071) of ICMPv6 `msg` with its IPv6 pseudo-header (RFC 8200
/// §8.1): source, destination, upper-layer length, next header 58.
pub(crate) fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            let lo = pair.get(1).map_or(0, |&b| u32::from(b));
            sum += hi | lo;
        }
    };
    add(&src.octets());
    add(&dst.octets());
    // Upper-layer length as 32 bits, then three zero bytes and next header 58.
    let len = u32::try_from(msg.len()).unwrap_or(u32::MAX);
    add(&len.to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(msg);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // `sum` fits in 16 bits after folding.
    !(sum as u16)
}

/// An unsolicited neighbour advertisement for `ip` (RFC 4861 §4.4, §7.2.6) as a whole IPv6
/// packet: from `ip` itself to ff02::1, hop limit 255, flags Router (a router announces its own
/// address) and Override, not Solicited, with a target link-layer address option carrying
/// `mac` (like `ndsend IP DEV` from ndisc6, plus the Router flag). A peer that has an entry
/// for `ip` updates it; one without creates a STALE entry only with `accept_untracked_na` and
/// forwarding on (RFC 9131).
pub(crate) fn neighbour_advertisement(mac: [u8; 6], ip: Ipv6Addr) -> [u8; NA_LEN] {
    let mut p = [0u8; NA_LEN];
    // IPv6 header: version 6, traffic class 0, flow label 0.
    p[0] = 0x60;
    p[4..6].copy_from_slice(&32u16.to_be_bytes()); // payload length
    p[6] = 58; // next header: ICMPv6
    p[7] = 255; // hop limit: receivers drop ND packets with any other value
    p[8..24].copy_from_slice(&ip.octets());
    p[24..40].copy_from_slice(&ALL_NODES.octets());
    // ICMPv6 neighbour advertisement.
    let m = &mut p[40..];
    m[0] = 136; // type
    m[1] = 0; // code
    m[4] = 0x80 | 0x20; // R=1, S=0, O=1
    m[8..24].copy_from_slice(&ip.octets());
    m[24] = 2; // option: target link-layer address
    m[25] = 1; // length in units of 8 bytes
    m[26..32].copy_from_slice(&mac);
    let sum = icmpv6_checksum(ip, ALL_NODES, m);
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    p
}

/// Opens a send-only `AF_PACKET`/`SOCK_DGRAM` socket in the calling thread's namespace (call it
/// from inside [`Netns::run`]): the socket stays bound to that namespace afterwards.
pub(crate) fn packet_socket() -> std::io::Result<OwnedFd> {
    // Protocol 0: a send-only socket. Binding a receive protocol would register a packet
    // hook whose removal on close waits for an RCU grace period (~10 ms per socket).
    // SAFETY: plain socket(2); the result is checked and owned right away.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `payload` (an ARP or IPv6 packet; the kernel adds the Ethernet header with the
/// device's MAC as source) out of interface `index` to Ethernet address `dst`.
pub(crate) fn send_frame(
    sock: BorrowedFd<'_>,
    index: i32,
    proto: u16,
    dst: [u8; 6],
    payload: &[u8],
) -> std::io::Result<()> {
    // SAFETY: sockaddr_ll is plain old data; zeroed is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto.to_be();
    addr.sll_ifindex = index;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&dst);
    // SAFETY: the buffer and address outlive the call; lengths are theirs.
    let n = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            payload.as_ptr().cast(),
            payload.len(),
            0,
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Sends `rounds` pairs of gratuitous ARP (a request, like `arping -U`, and a reply, like
/// `arping -A`) for each of `ips` out of `dev`, broadcast, from one socket.
pub fn send(
    netns: &Netns,
    rtnl: &mut Rtnl,
    dev: &IfName,
    ips: &[Ipv4Addr],
    rounds: u32,
) -> Result<(), Error> {
    if ips.is_empty() {
        return Ok(());
    }
    let what = format!("gratuitous ARP for {} address(es) on {dev}", ips.len());
    let link = rtnl.link(dev)?.ok_or_else(|| Error::NoDevice {
        what: what.clone(),
        netns: netns.label().to_owned(),
        device: dev.to_string(),
    })?;
    let mac = link
        .mac
        .ok_or_else(|| Error::Value(format!("{what}: {dev} has no MAC address")))?;
    let index =
        i32::try_from(link.index).map_err(|_| Error::Value(format!("{what}: bad ifindex")))?;
    let label = netns.label().to_owned();
    netns.run::<_, Error>(move || -> Result<(), Error> {
        let io = |source| Error::Kernel {
            what: what.clone(),
            netns: label.clone(),
            source,
        };
        let sock = packet_socket().map_err(io)?;
        for _ in 0..rounds.max(1) {
            for (&ip, op) in ips.iter().flat_map(|ip| [(ip, 1u16), (ip, 2)]) {
                let pkt = arp(op, mac, ip);
                send_frame(sock.as_fd(), index, ETH_P_ARP, BROADCAST_MAC, &pkt).map_err(io)?;
            }
        }
        Ok(())
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_layout() {
        let p = arp(1, [2, 0, 0, 0, 0, 1], "203.0.113.5".parse().unwrap());
        assert_eq!(&p[..8], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&p[14..18], &[203, 0, 113, 5]);
        assert_eq!(&p[18..24], &[0; 6]);
        assert_eq!(&p[24..28], &[203, 0, 113, 5]);
        let r = arp(2, [2, 0, 0, 0, 0, 1], "203.0.113.5".parse().unwrap());
        assert_eq!(&r[18..24], &[2, 0, 0, 0, 0, 1]);
    }

    /// An independent one's-complement sum over 16-bit big-endian words.
    fn ones_sum(parts: &[&[u8]]) -> u16 {
        let bytes: Vec<u8> = parts.concat();
        let mut sum: u64 = 0;
        for w in bytes.chunks(2) {
            sum += u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    #[test]
    fn neighbour_advertisement_layout_and_checksum() {
        let mac = [0xfa, 0x16, 0x3e, 0x12, 0x34, 0x56];
        let ip: Ipv6Addr = "2001:db8::10".parse().unwrap();
        let p = neighbour_advertisement(mac, ip);
        // IPv6 header.
        assert_eq!(p[0] >> 4, 6, "version");
        assert_eq!(&p[0..4], &[0x60, 0, 0, 0], "traffic class and flow label 0");
        assert_eq!(u16::from_be_bytes([p[4], p[5]]), 32, "payload length");
        assert_eq!(p[6], 58, "next header ICMPv6");
        assert_eq!(p[7], 255, "hop limit");
        assert_eq!(&p[8..24], &ip.octets(), "source is the address itself");
        assert_eq!(
            Ipv6Addr::from(<[u8; 16]>::try_from(&p[24..40]).unwrap()),
            "ff02::1".parse::<Ipv6Addr>().unwrap()
        );
        // ICMPv6.
        let m = &p[40..];
        assert_eq!(m.len(), 32);
        assert_eq!((m[0], m[1]), (136, 0), "type NA, code 0");
        assert_eq!(m[4] & 0x80, 0x80, "Router");
        assert_eq!(m[4] & 0x40, 0, "not Solicited");
        assert_eq!(m[4] & 0x20, 0x20, "Override");
        assert_eq!(m[4] & 0x1f, 0, "reserved bits");
        assert_eq!(&m[5..8], &[0, 0, 0], "reserved");
        assert_eq!(&m[8..24], &ip.octets(), "target");
        assert_eq!(&m[24..26], &[2, 1], "TLLA option, 8 bytes");
        assert_eq!(&m[26..32], &mac);
        // Checksum: recompute with the field zeroed, independently of the builder.
        let mut zeroed = m.to_vec();
        zeroed[2] = 0;
        zeroed[3] = 0;
        let pseudo_tail = [0u8, 0, 0, 32, 0, 0, 0, 58];
        let want = !ones_sum(&[&p[8..24], &p[24..40], &pseudo_tail, &zeroed]);
        assert_eq!(u16::from_be_bytes([m[2], m[3]]), want);
        // And the receiver's check: the sum over everything, checksum included, is 0xffff.
        assert_eq!(ones_sum(&[&p[8..24], &p[24..40], &pseudo_tail, m]), 0xffff);
        assert_eq!(ALL_NODES_MAC, [0x33, 0x33, 0, 0, 0, 1]);
    }

    #[test]
    fn checksum_of_a_known_packet() {
        // RFC 1071 example words, checked against a hand-folded sum via the pseudo-header of
        // two zero addresses: the sum is length 8 + 58 + 0x0001 + 0xf203 + 0xf4f5 + 0xf6f7.
        let msg = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        let zero = Ipv6Addr::UNSPECIFIED;
        let raw: u32 = 8 + 58 + 0x0001 + 0xf203 + 0xf4f5 + 0xf6f7;
        let folded = (raw & 0xffff) + (raw >> 16);
        let folded = (folded & 0xffff) + (folded >> 16);
        assert_eq!(icmpv6_checksum(zero, zero, &msg), !(folded as u16));
    }
}
