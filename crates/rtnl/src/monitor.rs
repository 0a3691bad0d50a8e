//! Address events of one namespace (`ip monitor address`): a netlink socket opened inside
//! the namespace and subscribed to the IPv4 and IPv6 address groups. keepalived's VRRP
//! transitions show up here as its primary VIP appearing on (master) or vanishing from
//! (backup) an HA router's `ha-` device; the agent reconciles the router on any event rather
//! than parsing them (the reconciler reads the state itself), so a lost or coalesced message
//! can never leave a wrong state behind: an overrun (`ENOBUFS`) counts as an event too.

use std::os::fd::{AsFd, BorrowedFd};

use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::error::Error;
use crate::netns::Netns;

/// `RTMGRP_IPV4_IFADDR`.
const IPV4_IFADDR: u32 = 0x10;
/// `RTMGRP_IPV6_IFADDR`.
const IPV6_IFADDR: u32 = 0x100;

/// A subscription to one namespace's address events.
#[derive(Debug)]
pub struct AddressMonitor {
    socket: Socket,
    label: String,
}

impl AddressMonitor {
    /// Subscribes inside `netns` (the socket is made by a thread that entered it, and keeps
    /// the namespace alive while it is open).
    pub fn open(netns: &Netns) -> Result<AddressMonitor, Error> {
        let label = netns.label().to_owned();
        let socket = netns.run::<_, Error>(|| {
            let io = |what: &str| {
                let what = what.to_owned();
                move |source| Error::Io { what, source }
            };
            let mut s = Socket::new(NETLINK_ROUTE).map_err(io("opening an rtnetlink socket"))?;
            s.bind(&SocketAddr::new(0, IPV4_IFADDR | IPV6_IFADDR))
                .map_err(io("subscribing to address events"))?;
            s.set_non_blocking(true)
                .map_err(io("making the address monitor non-blocking"))?;
            Ok::<Socket, Error>(s)
        })??;
        Ok(AddressMonitor { socket, label })
    }

    /// The namespace's name, for messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Reads every message waiting, without blocking: how many there were (an overrun counts
    /// as one: events were lost, so something happened).
    pub fn drain(&mut self) -> Result<usize, Error> {
        let mut buf = vec![0u8; 16 * 1024];
        let mut n = 0;
        // Bounded: a namespace that keeps changing addresses cannot hold the caller here.
        for _ in 0..1024 {
            match self.socket.recv(&mut &mut buf[..], 0) {
                Ok(0) => break,
                Ok(_) => n += 1,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => n += 1,
                Err(source) => {
                    return Err(Error::Io {
                        what: format!("reading address events of {}", self.label),
                        source,
                    })
                }
            }
        }
        Ok(n)
    }
}

impl AsFd for AddressMonitor {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}
