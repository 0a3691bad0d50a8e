//! nf_tables' ruleset generation id of a network namespace: `NFT_MSG_GETGEN` over netlink, the
//! question `nft` itself asks before every command (a few microseconds, no process).
//!
//! The kernel keeps one generation counter per network namespace for the whole nf_tables rule
//! set (every family and table: what `iptables-nft`, `ip6tables-nft`, `ebtables-nft` and `nft`
//! write). Every committed transaction that changes anything bumps it, whoever sends it; reads
//! (`iptables-nft-save`, `nft list`) and packet counters do not. So two equal generation ids
//! read at two moments prove that nobody changed the nf_tables rule set in between, without
//! reading it: what lets `l3agent iptables apply` skip `iptables-save` when nothing changed
//! since its last apply (see [`crate::applied`]). The legacy backend (x_tables) has no such
//! counter.
//!
//! The request and its reply are encoded and decoded here without I/O ([`encode_request`],
//! [`decode_reply`], tested with bytes captured from `nft list tables` under strace); the socket
//! is opened inside the namespace by a thread that entered it ([`l3agent_netns::in_netns`]) and
//! stays bound to that namespace wherever it is used from.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::error::ExecError;
use crate::netns::Netns;

/// `NFNL_SUBSYS_NFTABLES`.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// `NFT_MSG_NEWGEN`: the reply.
const NFT_MSG_NEWGEN: u16 = 15;
/// `NFT_MSG_GETGEN`: the request.
const NFT_MSG_GETGEN: u16 = 16;
/// `NFTA_GEN_ID`: the generation, a big-endian u32.
const NFTA_GEN_ID: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;

/// The `NFT_MSG_GETGEN` request with sequence number `seq`: a netlink header and an
/// `nfgenmsg` for `AF_UNSPEC`, no attributes. (What `nft` sends: see the test.)
pub fn encode_request(seq: u32) -> [u8; NLMSG_HDRLEN + NFGENMSG_LEN] {
    let mut m = [0u8; NLMSG_HDRLEN + NFGENMSG_LEN];
    let len = (NLMSG_HDRLEN + NFGENMSG_LEN) as u32;
    m[0..4].copy_from_slice(&len.to_ne_bytes());
    m[4..6].copy_from_slice(&(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETGEN).to_ne_bytes());
    m[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    // pid 0 (the kernel), nfgenmsg {family AF_UNSPEC, version NFNETLINK_V0, res_id 0}.
    m
}

/// The generation id in a reply to [`encode_request`] with sequence number `seq`; an error for
/// a netlink error message, another message, or a malformed one.
pub fn decode_reply(bytes: &[u8], seq: u32) -> Result<u32, String> {
    let u16_at = |b: &[u8], i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
    let u32_at = |b: &[u8], i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    if bytes.len() < NLMSG_HDRLEN {
        return Err(format!("short reply ({} bytes)", bytes.len()));
    }
    let len = u32_at(bytes, 0) as usize;
    if len < NLMSG_HDRLEN || len > bytes.len() {
        return Err(format!(
            "bad message length {len} in a reply of {} bytes",
            bytes.len()
        ));
    }
    let msg = &bytes[..len];
    let kind = u16_at(msg, 4);
    if u32_at(msg, 8) != seq {
        return Err(format!(
            "reply to sequence {} instead of {seq}",
            u32_at(msg, 8)
        ));
    }
    if kind == NLMSG_ERROR {
        if msg.len() < NLMSG_HDRLEN + 4 {
            return Err("truncated netlink error".into());
        }
        let code = i32::from_ne_bytes(msg[16..20].try_into().expect("4 bytes"));
        return Err(format!(
            "the kernel refused NFT_MSG_GETGEN: {}",
            std::io::Error::from_raw_os_error(-code)
        ));
    }
    if kind != (NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWGEN) {
        return Err(format!("unexpected message type {kind:#06x}"));
    }
    let mut at = NLMSG_HDRLEN + NFGENMSG_LEN;
    while at + 4 <= msg.len() {
        let alen = u16_at(msg, at) as usize;
        let atype = u16_at(msg, at + 2) & 0x3fff; // without NLA_F_NESTED / NLA_F_NET_BYTEORDER
        if alen < 4 || at + alen > msg.len() {
            return Err(format!("bad attribute length {alen}"));
        }
        if atype == NFTA_GEN_ID && alen == 8 {
            return Ok(u32::from_be_bytes(
                msg[at + 4..at + 8].try_into().expect("4 bytes"),
            ));
        }
        at += (alen + 3) & !3;
    }
    Err("reply without NFTA_GEN_ID".into())
}

fn gen_err(what: &str) -> impl FnOnce(std::io::Error) -> ExecError + '_ {
    move |source| ExecError::Io {
        what: format!("nf_tables generation: {what}"),
        source,
    }
}

/// A netfilter netlink socket bound to one namespace, to ask its generation id again and again
/// (what a long-lived caller keeps; [`ruleset_generation`] opens one per question).
#[derive(Debug)]
pub struct GenerationSocket {
    fd: OwnedFd,
    seq: std::sync::atomic::AtomicU32,
}

impl GenerationSocket {
    /// Opens the socket in `netns` (`None`: the calling thread's namespace). Needs no
    /// privilege beyond what reading the rule set needs (`CAP_NET_ADMIN` in the namespace).
    pub fn open(netns: Option<&Netns>) -> Result<GenerationSocket, ExecError> {
        let open = || -> std::io::Result<OwnedFd> {
            // SAFETY: plain socket(2); the descriptor is owned at once.
            let fd = unsafe {
                libc::socket(
                    libc::AF_NETLINK,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    libc::NETLINK_NETFILTER,
                )
            };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: fd is a fresh descriptor nobody else owns.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        };
        let fd = match netns {
            None => open(),
            Some(ns) => ns.run::<_, ExecError>(open)?,
        }
        .map_err(gen_err("opening a netfilter netlink socket"))?;
        bound_recv(fd.as_raw_fd()).map_err(gen_err("setting a receive timeout"))?;
        Ok(GenerationSocket {
            fd,
            seq: std::sync::atomic::AtomicU32::new(1),
        })
    }

    /// The cookie of the socket's namespace (`SO_NETNS_COOKIE`, Linux 5.14): a number the
    /// kernel gives each namespace once per boot and never reuses, unlike its inode.
    pub fn netns_cookie(&self) -> Result<u64, ExecError> {
        const SO_NETNS_COOKIE: libc::c_int = 71;
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        // SAFETY: getsockopt into a u64 we own, with its size.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_NETNS_COOKIE,
                (&mut cookie as *mut u64).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(gen_err("reading the namespace cookie")(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(cookie)
    }

    /// The namespace's nf_tables generation id now.
    pub fn query(&self) -> Result<u32, ExecError> {
        crate::stats::record(|s| &s.generation_queries, 1);
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let req = encode_request(seq);
        let fd = self.fd.as_raw_fd();
        send_to_kernel(fd, &req).map_err(gen_err("sending NFT_MSG_GETGEN"))?;
        let mut buf = [0u8; 512];
        loop {
            // SAFETY: receiving into a buffer we own, of its length.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(gen_err("receiving the reply")(e));
            }
            let n = usize::try_from(n).unwrap_or(0);
            // A reply to an earlier, abandoned question (a previous call that failed
            // half-way) is skipped; anything else is an answer.
            if n >= 12 && u32::from_ne_bytes(buf[8..12].try_into().expect("4 bytes")) < seq {
                continue;
            }
            return decode_reply(&buf[..n], seq).map_err(ExecError::Generation);
        }
    }
}

/// The nf_tables ruleset generation id of `netns` (`None`: the caller's namespace): one
/// `NFT_MSG_GETGEN`, as `nft` asks it. Unchanged by reads; bumped by every committed change
/// of any program (any family, any table) in that namespace; namespaces have their own.
pub fn ruleset_generation(netns: Option<&Netns>) -> Result<u32, ExecError> {
    GenerationSocket::open(netns)?.query()
}

/// A 5 s bound on every receive on `fd`: the kernel answers at once; the bound keeps a caller
/// from hanging anyway.
pub(crate) fn bound_recv(fd: std::os::fd::RawFd) -> std::io::Result<()> {
    let timeout = libc::timeval {
        tv_sec: 5,
        tv_usec: 0,
    };
    // SAFETY: setsockopt on the caller's socket with a timeval we own, of its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Sends one netlink request on `fd` to the kernel (port id 0).
pub(crate) fn send_to_kernel(fd: std::os::fd::RawFd, req: &[u8]) -> std::io::Result<()> {
    // SAFETY: `fd` is a socket the caller owns; the buffer and its length are `req`'s; the
    // address is a zeroed sockaddr_nl of the netlink family (the kernel, pid 0).
    let sent = unsafe {
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        libc::sendto(
            fd,
            req.as_ptr().cast(),
            req.len(),
            0,
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured with `ip netns exec t strace -xx -e trace=sendto,recvmsg nft list tables`
    /// (nftables 1.0.9, kernel 6.18): the request nft sends, and the kernel's reply (generation
    /// 8, asked by pid 21007 named "nft").
    const REQUEST: [u8; 20] = [
        0x14, 0, 0, 0, 0x10, 0x0a, 0x01, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    const REPLY: [u8; 44] = [
        0x2c, 0, 0, 0, 0x0f, 0x0a, 0, 0, 0, 0, 0, 0, 0x0f, 0x52, 0, 0, // nlmsghdr
        0, 0, 0x00, 0x08, // nfgenmsg: AF_UNSPEC, V0, res_id htons(8)
        8, 0, 1, 0, 0, 0, 0, 8, // NFTA_GEN_ID 8
        8, 0, 2, 0, 0, 0, 0x52, 0x0f, // NFTA_GEN_PROC_PID 21007
        8, 0, 3, 0, b'n', b'f', b't', 0, // NFTA_GEN_PROC_NAME "nft"
    ];

    #[test]
    fn the_request_is_what_nft_sends() {
        assert_eq!(encode_request(0), REQUEST);
        assert_eq!(&encode_request(7)[8..12], &7u32.to_ne_bytes());
    }

    #[test]
    fn the_reply_gives_the_generation() {
        assert_eq!(decode_reply(&REPLY, 0), Ok(8));
        assert!(decode_reply(&REPLY, 1).unwrap_err().contains("sequence"));
        assert!(decode_reply(&REPLY[..10], 0).is_err());
        // Without the generation attribute.
        let mut short = REPLY[..28].to_vec();
        short[0] = 28;
        short[20..28].copy_from_slice(&[8, 0, 2, 0, 0, 0, 0x52, 0x0f]);
        assert!(decode_reply(&short, 0).unwrap_err().contains("NFTA_GEN_ID"));
        // A netlink error (EPERM).
        let mut err = vec![36, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        err.extend_from_slice(&(-1i32).to_ne_bytes());
        err.extend_from_slice(&REQUEST[..16]);
        assert!(decode_reply(&err, 0).unwrap_err().contains("refused"));
    }
}
