//! The connection-tracking table of a namespace over ctnetlink (`NETLINK_NETFILTER`),
//! in-process: what Neutron does with `conntrack -L` and, when a floating IP goes away, with
//! `conntrack -D -d IP` and `conntrack -D -q IP` (OSSN-0020), without running the `conntrack`
//! program.
//!
//! The socket is created inside the namespace, on a thread that entered it (see
//! [`Netns::run`]), and stays bound to that namespace. Messages are built and parsed with
//! `netlink-packet-netfilter`. The bytes sent are exactly these (integers in the netlink
//! header and attribute headers are host order, payload integers network order):
//!
//! ```text
//! dump (conntrack -L -f ipv4|ipv6), 20 bytes:
//!   nlmsghdr  len=20  type=0x0101 (NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET)
//!             flags=0x0301 (NLM_F_REQUEST | NLM_F_DUMP)  seq=N  pid=0
//!   nfgenmsg  family=2 (AF_INET) or 10 (AF_INET6), version=0 (NFNETLINK_V0), res_id=0
//!   no attribute: every entry of that family.
//! The kernel answers with one message of type 0x0100 (IPCTNL_MSG_CT_NEW) per entry, then
//! NLMSG_DONE.
//!
//! delete one entry, by the attributes the kernel looks it up with (conntrack-tools 1.4.7's
//! `conntrack -D` sends the same CTA_TUPLE_ORIG and CTA_ZONE, plus the reply tuple, status,
//! timeout and mark, which a deletion ignores when CTA_TUPLE_ORIG is present):
//!   nlmsghdr  type=0x0102 (IPCTNL_MSG_CT_DELETE)  flags=0x0005 (NLM_F_REQUEST | NLM_F_ACK)
//!   nfgenmsg  family as above, version=0, res_id=0
//!   CTA_TUPLE_ORIG (1 | NLA_F_NESTED)         the original tuple, as the dump returned it:
//!     CTA_TUPLE_IP (1 | NLA_F_NESTED)
//!       CTA_IP_V4_SRC (1), CTA_IP_V4_DST (2)  4 bytes each, or
//!       CTA_IP_V6_SRC (3), CTA_IP_V6_DST (4)  16 bytes each
//!     CTA_TUPLE_PROTO (2 | NLA_F_NESTED)
//!       CTA_PROTO_NUM (1)                     u8 (+ 3 bytes of padding)
//!       CTA_PROTO_SRC_PORT (2), CTA_PROTO_DST_PORT (3)           be16 (+ 2 of padding), or
//!       CTA_PROTO_ICMP_ID/TYPE/CODE (4, 5, 6), ICMPV6 (7, 8, 9)   echoed byte for byte
//!     CTA_TUPLE_ZONE (3)                      be16, only if the dump had it
//!   CTA_ZONE (18)                             be16, only if the dump had it (zone != 0)
//! The kernel answers NLMSG_ERROR 0 (deleted) or -ENOENT (already gone: not counted, not an
//! error).
//! ```
//!
//! The unit tests below pin these bytes; `tests/conntrack.rs` checks them against the kernel
//! and against the `conntrack` program.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, Nla, NLA_TYPE_MASK, NLM_F_ACK, NLM_F_DUMP,
    NLM_F_REQUEST,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Tuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use crate::error::Error;
use crate::netns::Netns;

/// `CTA_ZONE` (include/uapi/linux/netfilter/nfnetlink_conntrack.h), which the crate leaves
/// as a raw attribute.
const CTA_ZONE: u16 = 18;
/// How long one `recv` may block before the request is given up.
const RECV_TIMEOUT_SECS: libc::time_t = 5;
/// How long a whole dump may take (generous: the old `conntrack` process had 60 s too).
const DUMP_LIMIT: Duration = Duration::from_secs(60);
/// How long the acknowledgement of one deletion may take.
const ACK_LIMIT: Duration = Duration::from_secs(10);

/// One connection-tracking entry: a line of `conntrack -L` (for `tcp 6 117 TIME_WAIT
/// src=192.0.2.1 dst=192.0.2.2 sport=40000 dport=80 src=192.0.2.2 dst=192.0.2.1 sport=80
/// dport=40000`: `protocol` 6, the first `src`/`dst`/`sport`/`dport` are the original
/// direction, the second the reply direction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The layer-4 protocol number (`conntrack -p`): 6 tcp, 17 udp, 1 icmp, 58 ipv6-icmp.
    pub protocol: u8,
    /// Source of the original direction (`conntrack -s`).
    pub orig_src: IpAddr,
    /// Destination of the original direction (`conntrack -d`).
    pub orig_dst: IpAddr,
    /// Source port of the original direction (`--sport`); `None` for protocols without ports
    /// (icmp).
    pub orig_sport: Option<u16>,
    /// Destination port of the original direction (`--dport`); `None` without ports.
    pub orig_dport: Option<u16>,
    /// Source of the reply direction (`conntrack -r`): the original destination after DNAT.
    pub reply_src: IpAddr,
    /// Destination of the reply direction (`conntrack -q`): the original source after SNAT.
    pub reply_dst: IpAddr,
    /// Source port of the reply direction (`--reply-port-src`); `None` without ports.
    pub reply_sport: Option<u16>,
    /// Destination port of the reply direction (`--reply-port-dst`); `None` without ports.
    pub reply_dport: Option<u16>,
    /// The conntrack zone (`conntrack -w`); 0 is the default zone.
    pub zone: u16,
}

impl fmt::Display for Entry {
    /// The way `conntrack -L` prints it, without state and timeout.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.protocol {
            1 => "icmp",
            6 => "tcp",
            17 => "udp",
            58 => "icmpv6",
            132 => "sctp",
            _ => "unknown",
        };
        write!(f, "{name} {}", self.protocol)?;
        let ports = |f: &mut fmt::Formatter<'_>, s: Option<u16>, d: Option<u16>| match (s, d) {
            (Some(s), Some(d)) => write!(f, " sport={s} dport={d}"),
            _ => Ok(()),
        };
        write!(f, " src={} dst={}", self.orig_src, self.orig_dst)?;
        ports(f, self.orig_sport, self.orig_dport)?;
        write!(f, " src={} dst={}", self.reply_src, self.reply_dst)?;
        ports(f, self.reply_sport, self.reply_dport)?;
        if self.zone != 0 {
            write!(f, " zone={}", self.zone)?;
        }
        Ok(())
    }
}

/// `conntrack -L -f ipv4` (or `-f ipv6` when `family_v6`) inside `netns`: every entry of the
/// family, in the kernel's order.
pub fn entries(netns: &Netns, family_v6: bool) -> Result<Vec<Entry>, Error> {
    let what = format!(
        "list conntrack entries (conntrack -L -f {})",
        family_name(family_v6)
    );
    let mut ct = Ctnetlink::open(netns, &what)?;
    Ok(ct
        .dump(&what, family_v6)?
        .into_iter()
        .map(|d| d.entry)
        .collect())
}

/// `conntrack -D -d IP` followed by `conntrack -D -q IP` inside `netns` (what Neutron runs when
/// a floating IP goes away): deletes every entry of the address's family whose original
/// destination or reply destination is `ip`, and returns how many it deleted. No entry is
/// `Ok(0)`; an entry that disappears between the dump and its deletion is not counted.
///
/// The entries are selected from one dump of the table and deleted one by one by their
/// original tuple. A deletion the kernel refuses (e.g. EBUSY for an offloaded flow) does not
/// stop the others, and the first refusal is returned once all have been tried; a socket
/// failure (no answer within the time limit, an undecodable answer) stops at once.
pub fn delete_entries(netns: &Netns, ip: IpAddr) -> Result<u64, Error> {
    let v6 = ip.is_ipv6();
    let what =
        format!("delete conntrack entries of {ip} (conntrack -D -d {ip}; conntrack -D -q {ip})");
    let mut ct = Ctnetlink::open(netns, &what)?;
    let mut deleted = 0;
    let mut failed = None;
    for d in ct
        .dump(&what, v6)?
        .iter()
        .filter(|d| d.entry.orig_dst == ip || d.entry.reply_dst == ip)
    {
        match ct.delete(&format!("{what}: delete {}", d.entry), v6, d) {
            Ok(true) => deleted += 1,
            Ok(false) => {}
            Err(e) if e.errno().is_some() => {
                failed.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(deleted),
    }
}

fn family_name(v6: bool) -> &'static str {
    if v6 {
        "ipv6"
    } else {
        "ipv4"
    }
}

fn family(v6: bool) -> NetfilterProtoFamily {
    if v6 {
        NetfilterProtoFamily::IPv6
    } else {
        NetfilterProtoFamily::IPv4
    }
}

/// An entry with what its deletion needs: the original tuple exactly as the kernel sent it
/// (with the ICMP id, type and code, and a directional zone) and the `CTA_ZONE` attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Dumped {
    entry: Entry,
    orig: Vec<Tuple>,
    zone: Option<ConntrackAttribute>,
}

/// The dump request (see the module documentation for its bytes).
fn dump_request(v6: bool, seq: u32) -> Vec<u8> {
    let msg = NetfilterMessage::new(
        NetfilterHeader::new(family(v6), 0, 0),
        ConntrackMessage::Get(Vec::new()),
    );
    serialize(msg, NLM_F_REQUEST | NLM_F_DUMP, seq)
}

/// The request that deletes `d` (see the module documentation for its bytes).
fn delete_request(v6: bool, d: &Dumped, seq: u32) -> Vec<u8> {
    let mut attributes = vec![ConntrackAttribute::CtaTupleOrig(d.orig.clone())];
    attributes.extend(d.zone.clone());
    let msg = NetfilterMessage::new(
        NetfilterHeader::new(family(v6), 0, 0),
        ConntrackMessage::Delete(attributes),
    );
    serialize(msg, NLM_F_REQUEST | NLM_F_ACK, seq)
}

fn serialize(msg: NetfilterMessage, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(msg));
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

/// One direction of a tuple.
#[derive(Default)]
struct Half {
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    protocol: Option<u8>,
    sport: Option<u16>,
    dport: Option<u16>,
}

fn half(tuples: &[Tuple]) -> Half {
    let mut h = Half::default();
    for t in tuples {
        match t {
            Tuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => h.src = Some(*a),
                        IPTuple::DestinationAddress(a) => h.dst = Some(*a),
                        _ => {}
                    }
                }
            }
            Tuple::Proto(protos) => {
                for p in protos {
                    match p {
                        ProtoTuple::Protocol(n) => h.protocol = Some(u8::from(*n)),
                        ProtoTuple::SourcePort(n) => h.sport = Some(*n),
                        ProtoTuple::DestinationPort(n) => h.dport = Some(*n),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    h
}

/// An entry from the attributes of one IPCTNL_MSG_CT_NEW message of a dump.
fn decode(attributes: Vec<ConntrackAttribute>) -> Result<Dumped, String> {
    let (mut orig, mut reply, mut zone) = (None, None, None);
    for a in attributes {
        match a {
            ConntrackAttribute::CtaTupleOrig(t) => orig = Some(t),
            ConntrackAttribute::CtaTupleReply(t) => reply = Some(t),
            other if other.kind() & NLA_TYPE_MASK == CTA_ZONE => zone = Some(other),
            _ => {}
        }
    }
    let orig = orig.ok_or("an entry without CTA_TUPLE_ORIG")?;
    let reply = reply.ok_or("an entry without CTA_TUPLE_REPLY")?;
    let zone_id = match &zone {
        Some(z) if z.value_len() == 2 => {
            let mut v = [0u8; 2];
            z.emit_value(&mut v);
            u16::from_be_bytes(v)
        }
        Some(z) => return Err(format!("CTA_ZONE of {} bytes, expected 2", z.value_len())),
        None => 0,
    };
    let (o, r) = (half(&orig), half(&reply));
    let missing = |what: &str| format!("an entry without {what}");
    let entry = Entry {
        protocol: o.protocol.ok_or_else(|| missing("CTA_PROTO_NUM"))?,
        orig_src: o.src.ok_or_else(|| missing("an original source"))?,
        orig_dst: o.dst.ok_or_else(|| missing("an original destination"))?,
        orig_sport: o.sport,
        orig_dport: o.dport,
        reply_src: r.src.ok_or_else(|| missing("a reply source"))?,
        reply_dst: r.dst.ok_or_else(|| missing("a reply destination"))?,
        reply_sport: r.sport,
        reply_dport: r.dport,
        zone: zone_id,
    };
    Ok(Dumped { entry, orig, zone })
}

/// Where an answer stands after one datagram.
#[derive(Debug)]
enum Answer {
    /// More datagrams follow (a dump in progress, or messages of another request).
    More,
    /// NLMSG_DONE, or an acknowledgement without error.
    Done,
    /// The kernel's error for the request.
    Failed(io::Error),
}

/// Reads the messages of one datagram that answer `seq`, giving every entry to `on_entry`;
/// messages of other sequence numbers (a late answer to an earlier request) are skipped.
fn read_datagram(
    buf: &[u8],
    seq: u32,
    on_entry: &mut impl FnMut(Vec<ConntrackAttribute>) -> Result<(), String>,
) -> Result<Answer, String> {
    let mut offset = 0;
    while offset < buf.len() {
        let msg: NetlinkMessage<NetfilterMessage> =
            NetlinkMessage::deserialize(&buf[offset..]).map_err(|e| e.to_string())?;
        let len = msg.header.length as usize;
        if msg.header.sequence_number == seq {
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(Answer::Done),
                NetlinkPayload::Error(e) => {
                    return Ok(match e.code {
                        None => Answer::Done,
                        Some(_) => Answer::Failed(e.to_io()),
                    })
                }
                NetlinkPayload::InnerMessage(NetfilterMessage {
                    inner: NetfilterMessageInner::Conntrack(ConntrackMessage::New(a)),
                    ..
                }) => on_entry(a)?,
                _ => {}
            }
        }
        if len == 0 {
            break;
        }
        // Messages in one datagram start on 4-byte boundaries (NLMSG_ALIGN).
        offset += len.div_ceil(4) * 4;
    }
    Ok(Answer::More)
}

/// A ctnetlink socket bound to one namespace.
struct Ctnetlink {
    socket: Socket,
    seq: u32,
    netns: String,
}

impl Ctnetlink {
    /// Opens the socket on a thread inside `netns`.
    fn open(netns: &Netns, what: &str) -> Result<Ctnetlink, Error> {
        let label = netns.label();
        let context = |e: Error| match e {
            Error::Io { what: step, source } => Error::Kernel {
                what: format!("{what}: {step}"),
                netns: label.to_owned(),
                source,
            },
            e => e,
        };
        let socket = netns.run(new_socket).map_err(context)?.map_err(context)?;
        Ok(Ctnetlink {
            socket,
            seq: 0,
            netns: label.to_owned(),
        })
    }

    fn kernel(&self, what: &str, source: io::Error) -> Error {
        Error::Kernel {
            what: what.to_owned(),
            netns: self.netns.clone(),
            source,
        }
    }

    fn send(&mut self, what: &str, request: impl FnOnce(u32) -> Vec<u8>) -> Result<u32, Error> {
        self.seq = self.seq.wrapping_add(1);
        let buf = request(self.seq);
        self.socket
            .send(&buf, 0)
            .map_err(|e| self.kernel(what, e))?;
        Ok(self.seq)
    }

    /// Reads the answers to `seq` until NLMSG_DONE or an acknowledgement, giving every entry
    /// to `on_entry`. Bounded: each read waits at most [`RECV_TIMEOUT_SECS`], the whole answer
    /// at most `limit`.
    fn receive(
        &mut self,
        what: &str,
        seq: u32,
        limit: Duration,
        mut on_entry: impl FnMut(Vec<ConntrackAttribute>) -> Result<(), String>,
    ) -> Result<(), Error> {
        let deadline = Instant::now() + limit;
        loop {
            if Instant::now() >= deadline {
                return Err(self.kernel(
                    what,
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no complete answer within {} s", limit.as_secs()),
                    ),
                ));
            }
            let (buf, _) = self.socket.recv_from_full().map_err(|e| {
                let e = if e.kind() == io::ErrorKind::WouldBlock {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer from the kernel within {RECV_TIMEOUT_SECS} s"),
                    )
                } else {
                    e
                };
                self.kernel(what, e)
            })?;
            match read_datagram(&buf, seq, &mut on_entry).map_err(|reason| Error::Decode {
                what: format!("{what} in {}", self.netns),
                reason,
            })? {
                Answer::More => {}
                Answer::Done => return Ok(()),
                Answer::Failed(e) => return Err(self.kernel(what, e)),
            }
        }
    }

    /// The table of one family (IPCTNL_MSG_CT_GET with NLM_F_DUMP). The kernel filters by the
    /// family of the request; entries of the other family are dropped here too, in case it
    /// does not.
    fn dump(&mut self, what: &str, v6: bool) -> Result<Vec<Dumped>, Error> {
        let what = format!("{what}: dumping the {} table", family_name(v6));
        let seq = self.send(&what, |seq| dump_request(v6, seq))?;
        let mut out = Vec::new();
        self.receive(&what, seq, DUMP_LIMIT, |a| {
            let d = decode(a)?;
            if d.entry.orig_src.is_ipv6() == v6 {
                out.push(d);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Deletes one entry by its original tuple (IPCTNL_MSG_CT_DELETE); `false` when the
    /// kernel no longer has it (ENOENT).
    fn delete(&mut self, what: &str, v6: bool, d: &Dumped) -> Result<bool, Error> {
        let seq = self.send(what, |seq| delete_request(v6, d, seq))?;
        match self.receive(what, seq, ACK_LIMIT, |_| Ok(())) {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// A ctnetlink socket in the calling thread's namespace, with a receive timeout.
fn new_socket() -> Result<Socket, Error> {
    let io = |what: &'static str| {
        move |source| Error::Io {
            what: what.to_owned(),
            source,
        }
    };
    let mut socket = Socket::new(NETLINK_NETFILTER).map_err(io("opening a ctnetlink socket"))?;
    socket
        .bind_auto()
        .map_err(io("binding a ctnetlink socket"))?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(io("connecting a ctnetlink socket"))?;
    let _ = socket.set_ext_ack(true);
    let timeout = libc::timeval {
        tv_sec: RECV_TIMEOUT_SECS,
        tv_usec: 0,
    };
    // SAFETY: setsockopt reads size_of::<timeval>() bytes from `timeout`, which outlives the
    // call; the descriptor is the socket's own and open.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::from_ref(&timeout).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io("setting the receive timeout of a ctnetlink socket")(
            io::Error::last_os_error(),
        ));
    }
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    /// The sequence number of the captured dump (0x6b0f4338).
    const SEQ: u32 = 1_796_162_360;

    /// One datagram of a real dump (kernel 6.18, `strace -e read=3 conntrack -L`): a TCP/IPv4
    /// entry in TIME_WAIT (192.0.2.1:40000 -> 192.0.2.2:8080) at offset 0, then an ICMPv6
    /// echo entry (2001:db8::1 -> 2001:db8::2, id 11653) at offset 0xd4.
    const DUMP: &str = "
        d4 00 00 00 00 01 02 00 38 43 0f 6b df 2d 00 00
        02 00 00 00 34 00 01 80 14 00 01 80 08 00 01 00
        c0 00 02 01 08 00 02 00 c0 00 02 02 1c 00 02 80
        05 00 01 00 06 00 00 00 06 00 02 00 9c 40 00 00
        06 00 03 00 1f 90 00 00 34 00 02 80 14 00 01 80
        08 00 01 00 c0 00 02 02 08 00 02 00 c0 00 02 01
        1c 00 02 80 05 00 01 00 06 00 00 00 06 00 02 00
        1f 90 00 00 06 00 03 00 9c 40 00 00 08 00 03 00
        00 00 00 0e 08 00 08 00 00 00 00 00 08 00 0c 00
        f0 63 bf a8 08 00 0b 00 00 00 00 01 08 00 07 00
        00 00 00 77 30 00 04 80 2c 00 01 80 05 00 01 00
        07 00 00 00 05 00 02 00 0a 00 00 00 05 00 03 00
        0a 00 00 00 06 00 04 00 27 00 00 00 06 00 05 00
        23 00 00 00 e4 00 00 00 00 01 02 00 38 43 0f 6b
        df 2d 00 00 0a 00 00 00 54 00 01 80 2c 00 01 80
        14 00 03 00 20 01 0d b8 00 00 00 00 00 00 00 00
        00 00 00 01 14 00 04 00 20 01 0d b8 00 00 00 00
        00 00 00 00 00 00 00 02 24 00 02 80 05 00 01 00
        3a 00 00 00 06 00 07 00 2d 85 00 00 05 00 08 00
        80 00 00 00 05 00 09 00 00 00 00 00 54 00 02 80
        2c 00 01 80 14 00 03 00 20 01 0d b8 00 00 00 00
        00 00 00 00 00 00 00 02 14 00 04 00 20 01 0d b8
        00 00 00 00 00 00 00 00 00 00 00 01 24 00 02 80
        05 00 01 00 3a 00 00 00 06 00 07 00 2d 85 00 00
        05 00 08 00 81 00 00 00 05 00 09 00 00 00 00 00
        08 00 03 00 00 00 00 0a 08 00 08 00 00 00 00 00
        08 00 0c 00 ba 2e 03 69 08 00 0b 00 00 00 00 01
        08 00 07 00 00 00 00 1d";

    /// The NLMSG_DONE that ended that dump.
    const DONE: &str = "14 00 00 00 03 00 02 00 38 43 0f 6b df 2d 00 00 00 00 00 00";

    /// A real ICMP entry in conntrack zone 5 (`-j CT --zone 5`): 192.0.2.1 -> 192.0.2.4, id
    /// 13612, unreplied; seq 0x6b0f4354.
    const ZONED: &str = "
        bc 00 00 00 00 01 22 00 54 43 0f 6b 31 35 00 00
        02 00 00 00 3c 00 01 80 14 00 01 80 08 00 01 00
        c0 00 02 01 08 00 02 00 c0 00 02 04 24 00 02 80
        05 00 01 00 01 00 00 00 06 00 04 00 35 2c 00 00
        05 00 05 00 08 00 00 00 05 00 06 00 00 00 00 00
        3c 00 02 80 14 00 01 80 08 00 01 00 c0 00 02 04
        08 00 02 00 c0 00 02 01 24 00 02 80 05 00 01 00
        01 00 00 00 06 00 04 00 35 2c 00 00 05 00 05 00
        00 00 00 00 05 00 06 00 00 00 00 00 06 00 12 00
        00 05 00 00 08 00 03 00 00 00 00 08 08 00 08 00
        00 00 00 00 08 00 0c 00 51 b5 3f 54 08 00 0b 00
        00 00 00 01 08 00 07 00 00 00 00 1d";

    fn read_all(buf: &[u8], seq: u32) -> (Answer, Vec<Dumped>) {
        let mut out = Vec::new();
        let answer = read_datagram(buf, seq, &mut |a| {
            out.push(decode(a)?);
            Ok(())
        })
        .unwrap();
        (answer, out)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn dump_request_bytes() {
        // nlmsghdr (len 20, type 0x0101, flags 0x0301, seq, pid 0) + nfgenmsg (family, v0, 0):
        // the request conntrack -L sends (strace of conntrack v1.4.7).
        assert_eq!(
            dump_request(false, SEQ),
            hex("14 00 00 00 01 01 01 03 38 43 0f 6b 00 00 00 00 02 00 00 00")
        );
        assert_eq!(
            dump_request(true, 7),
            hex("14 00 00 00 01 01 01 03 07 00 00 00 00 00 00 00 0a 00 00 00")
        );
    }

    #[test]
    fn kernel_dump_decodes_to_entries() {
        let (answer, got) = read_all(&hex(DUMP), SEQ);
        assert!(matches!(answer, Answer::More), "{answer:?}");
        let got: Vec<Entry> = got.into_iter().map(|d| d.entry).collect();
        assert_eq!(
            got,
            vec![
                Entry {
                    protocol: 6,
                    orig_src: ip("192.0.2.1"),
                    orig_dst: ip("192.0.2.2"),
                    orig_sport: Some(40000),
                    orig_dport: Some(8080),
                    reply_src: ip("192.0.2.2"),
                    reply_dst: ip("192.0.2.1"),
                    reply_sport: Some(8080),
                    reply_dport: Some(40000),
                    zone: 0,
                },
                Entry {
                    protocol: 58,
                    orig_src: ip("2001:db8::1"),
                    orig_dst: ip("2001:db8::2"),
                    orig_sport: None,
                    orig_dport: None,
                    reply_src: ip("2001:db8::2"),
                    reply_dst: ip("2001:db8::1"),
                    reply_sport: None,
                    reply_dport: None,
                    zone: 0,
                },
            ]
        );
        assert_eq!(
            got[0].to_string(),
            "tcp 6 src=192.0.2.1 dst=192.0.2.2 sport=40000 dport=8080 \
             src=192.0.2.2 dst=192.0.2.1 sport=8080 dport=40000"
        );
        assert_eq!(
            got[1].to_string(),
            "icmpv6 58 src=2001:db8::1 dst=2001:db8::2 src=2001:db8::2 dst=2001:db8::1"
        );
        // The end of the dump; answers to another request are skipped.
        assert!(matches!(read_all(&hex(DONE), SEQ).0, Answer::Done));
        let (answer, other) = read_all(&hex(DUMP), SEQ + 1);
        assert!(matches!(answer, Answer::More) && other.is_empty());
        assert!(matches!(read_all(&hex(DONE), SEQ + 1).0, Answer::More));
    }

    #[test]
    fn delete_request_echoes_the_original_tuple() {
        let dump = hex(DUMP);
        let (_, got) = read_all(&dump, SEQ);
        // TCP/IPv4: nlmsghdr (len 72, type 0x0102, flags 0x0005 REQUEST|ACK, seq 9, pid 0),
        // nfgenmsg AF_INET, then CTA_TUPLE_ORIG exactly as the kernel sent it.
        let tcp = delete_request(false, &got[0], 9);
        assert_eq!(
            tcp,
            hex("48 00 00 00 02 01 05 00 09 00 00 00 00 00 00 00
                 02 00 00 00
                 34 00 01 80
                   14 00 01 80
                     08 00 01 00 c0 00 02 01
                     08 00 02 00 c0 00 02 02
                   1c 00 02 80
                     05 00 01 00 06 00 00 00
                     06 00 02 00 9c 40 00 00
                     06 00 03 00 1f 90 00 00")
        );
        assert_eq!(tcp[20..], dump[0x14..0x48]);
        // ICMPv6: the id, type and code attributes (7, 8, 9) go back byte for byte.
        let icmp6 = delete_request(true, &got[1], 10);
        assert_eq!(
            icmp6[..20],
            hex("68 00 00 00 02 01 05 00 0a 00 00 00 00 00 00 00 0a 00 00 00")
        );
        assert_eq!(icmp6[20..], dump[0xe8..0x13c]);
    }

    #[test]
    fn zoned_entry_is_deleted_in_its_zone() {
        let zoned = hex(ZONED);
        let (_, got) = read_all(&zoned, 0x6b0f_4354);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].entry.zone, 5);
        assert_eq!(got[0].entry.protocol, 1);
        assert!(got[0].entry.to_string().ends_with(" zone=5"));
        let del = delete_request(false, &got[0], 1);
        assert_eq!(
            del[..20],
            hex("58 00 00 00 02 01 05 00 01 00 00 00 00 00 00 00 02 00 00 00")
        );
        assert_eq!(del[20..80], zoned[20..80], "CTA_TUPLE_ORIG");
        // CTA_ZONE, be16 5: the attribute conntrack -D sends for this entry.
        assert_eq!(del[80..], hex("06 00 12 00 00 05 00 00"));
    }

    #[test]
    fn acknowledgements_and_errors() {
        // The real acknowledgement of a deletion (NLM_F_CAPPED, error 0) and the same with
        // -ENOENT.
        let ack = "24 00 00 00 02 00 00 01 2e 3a 0f 6b 02 9e 84 be
                   00 00 00 00 a4 00 00 00 02 01 05 00 2e 3a 0f 6b 00 00 00 00";
        assert!(matches!(read_all(&hex(ack), 0x6b0f_3a2e).0, Answer::Done));
        let enoent = ack.replacen("00 00 00 00 a4", "fe ff ff ff a4", 1);
        match read_all(&hex(&enoent), 0x6b0f_3a2e).0 {
            Answer::Failed(e) => assert_eq!(e.raw_os_error(), Some(libc::ENOENT)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_answers_are_decode_errors() {
        assert!(decode(Vec::new()).unwrap_err().contains("CTA_TUPLE_ORIG"));
        // A truncated message.
        let dump = hex(DUMP);
        assert!(read_datagram(&dump[..40], SEQ, &mut |_| Ok(())).is_err());
    }
}
