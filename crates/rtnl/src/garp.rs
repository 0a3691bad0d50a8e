//! Gratuitous ARP for an address on a device: what Neutron does with `arping -U` and
//! `arping -A` after configuring a gateway or floating IP, sent in-process from a packet socket
//! opened inside the namespace.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use l3agent_types::IfName;

use crate::error::Error;
use crate::netns::Netns;
use crate::prelude::*;
use crate::socket::Rtnl;

const ETH_P_ARP: u16 = 0x0806;

fn arp(op: u16, mac: [u8; 6], ip: Ipv4Addr) -> [u8; 28] {
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
    netns.run(move || -> Result<(), Error> {
        let io = |source| Error::Kernel {
            what: what.clone(),
            netns: label.clone(),
            source,
        };
        // Protocol 0: a send-only socket. Binding a receive protocol would register a packet
        // hook whose removal on close waits for an RCU grace period (~10 ms per socket).
        // SAFETY: plain socket(2); the result is checked and owned right away.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io(std::io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain old data; zeroed is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_ARP.to_be();
        addr.sll_ifindex = index;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        for _ in 0..rounds.max(1) {
            for (&ip, op) in ips.iter().flat_map(|ip| [(ip, 1u16), (ip, 2)]) {
                let pkt = arp(op, mac, ip);
                // SAFETY: the buffer and address outlive the call; lengths are theirs.
                let n = unsafe {
                    libc::sendto(
                        sock.as_raw_fd(),
                        pkt.as_ptr().cast(),
                        pkt.len(),
                        0,
                        std::ptr::addr_of!(addr).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as u32,
                    )
                };
                if n < 0 {
                    return Err(io(std::io::Error::last_os_error()));
                }
            }
        }
        Ok(())
    })?
}

#[cfg(test)]
mod tests {
    #[test]
    fn packet_layout() {
        let p = super::arp(1, [2, 0, 0, 0, 0, 1], "203.0.113.5".parse().unwrap());
        assert_eq!(&p[..8], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&p[14..18], &[203, 0, 113, 5]);
        assert_eq!(&p[18..24], &[0; 6]);
        assert_eq!(&p[24..28], &[203, 0, 113, 5]);
        let r = super::arp(2, [2, 0, 0, 0, 0, 1], "203.0.113.5".parse().unwrap());
        assert_eq!(&r[18..24], &[2, 0, 0, 0, 0, 1]);
    }
}
