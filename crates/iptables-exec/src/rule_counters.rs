//! Packet and byte counters of individual IPv4 iptables rules, read in-process from the
//! kernel of the calling thread's network namespace: what `iptables-save -c -t TABLE` prints
//! in front of each rule, without starting `iptables-save`. The agent reads its floating IPs'
//! rules this way at every metrics refresh (see `l3agent_agent::traffic`): their NAT rules,
//! or with `agent.traffic_accounting` the filter table's `fip-acct` chain, so reading the
//! counters of 1,000 routers starts no process.
//!
//! Both backends hold a counter per rule, and both can be read without a process:
//!
//! - **nf_tables** (`iptables-nft`): one `NFT_MSG_GETRULE` dump per chain over a
//!   `NETLINK_NETFILTER` socket, filtered by the kernel to the table and chain asked for
//!   (the request `nft list chain ip nat CHAIN` sends). iptables-nft gives every rule a
//!   `counter` expression; addresses are `payload` loads of the IPv4 header compared by `cmp`
//!   expressions (a `/32` has no `bitwise` mask); `-j DNAT`/`SNAT` are compat `target`
//!   expressions. Each rule is decoded into the [`RuleCounter`] fields below.
//! - **legacy** (x_tables): the `IPT_SO_GET_INFO` and `IPT_SO_GET_ENTRIES` socket options on
//!   a raw IPv4 socket, which return the whole table as the kernel holds it (what
//!   `iptables-legacy-save` reads through libiptc): `struct ipt_entry` records with their
//!   `xt_counters`. The layout is the one of 64-bit Linux (`u64` counters aligned to 8).
//!   Asking for a table that is not loaded in the namespace makes the kernel instantiate it
//!   (empty): only ask a namespace whose rules are on the legacy backend.
//!
//! Encoding and decoding are pure ([`nft_dump_request`], [`decode_nft_dump`],
//! [`decode_legacy_table`]) and tested with bytes captured from the kernel; [`read`] does the
//! I/O and must run on a thread inside the namespace (`Netns::run`).
//!
//! A note on what NAT rule counters count: the `nat` table is consulted for the first packet
//! of a connection only (conntrack remembers the mapping for the rest), so a DNAT or SNAT
//! rule's counters are the packets and bytes that opened connections, not all the traffic of
//! those connections.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::backend::Backend;
use crate::error::ExecError;

/// One rule and its counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleCounter {
    /// The chain it is in.
    pub chain: String,
    /// `-s ADDR/32` (an exact, not inverted source match), if the rule has one.
    pub source: Option<Ipv4Addr>,
    /// `-d ADDR/32` (an exact, not inverted destination match), if the rule has one.
    pub destination: Option<Ipv4Addr>,
    /// The target: an extension's name (`DNAT`, `SNAT`, `MARK`, ...), a verdict (`ACCEPT`,
    /// `DROP`, `RETURN`) or the chain jumped to; `None` for a rule without one.
    pub target: Option<String>,
    /// Packets that matched the rule.
    pub packets: u64,
    /// Bytes of those packets (the IP packet, from its header on).
    pub bytes: u64,
}

impl RuleCounter {
    fn new(chain: &str) -> RuleCounter {
        RuleCounter {
            chain: chain.to_owned(),
            source: None,
            destination: None,
            target: None,
            packets: 0,
            bytes: 0,
        }
    }
}

/// The counters of every IPv4 rule in `chains` of `table`, in chain order, read from the
/// namespace of the calling thread with `backend`'s interface. A table or chain that does not
/// exist has no rules (not an error). Run it inside the namespace (`Netns::run`): the
/// sockets it opens belong to the namespace of the thread that opens them.
pub fn read(backend: Backend, table: &str, chains: &[&str]) -> Result<Vec<RuleCounter>, ExecError> {
    match backend {
        // One dump per chain, filtered by the kernel (measured: as cheap as one dump of the
        // whole table, and it sends only what is asked for).
        Backend::Nft => {
            let socket = NftSocket::open()?;
            let mut out = Vec::new();
            for (seq, chain) in (1u32..).zip(chains) {
                out.extend(socket.dump(seq, table, Some(chain))?);
            }
            Ok(out)
        }
        Backend::Legacy => {
            let Some((info, entries)) = legacy_table(table)? else {
                return Ok(Vec::new());
            };
            let all = decode_legacy_table(&info, &entries).map_err(invalid("legacy table"))?;
            Ok(all
                .into_iter()
                .filter(|r| chains.contains(&r.chain.as_str()))
                .collect())
        }
    }
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> ExecError {
    move |source| ExecError::Io {
        what: format!("reading rule counters: {what}"),
        source,
    }
}

fn invalid(what: &'static str) -> impl FnOnce(String) -> ExecError {
    move |why| ExecError::Io {
        what: format!("reading rule counters: decoding the {what}"),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, why),
    }
}

// ---------------------------------------------------------------------------------------
// nf_tables

/// `NFNL_SUBSYS_NFTABLES`.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// `NFT_MSG_NEWRULE`: a rule of the dump.
const NFT_MSG_NEWRULE: u16 = 6;
/// `NFT_MSG_GETRULE`: the request.
const NFT_MSG_GETRULE: u16 = 7;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
/// `NFPROTO_IPV4`: `ip` tables (iptables), as opposed to `ip6`/`inet`.
const NFPROTO_IPV4: u8 = 2;

// Attributes (include/uapi/linux/netfilter/nf_tables.h).
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFT_CMP_EQ: u32 = 0;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFT_REG_VERDICT: u32 = 0;
const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;
const NFTA_TARGET_NAME: u16 = 1;
const NFTA_NAT_TYPE: u16 = 1;
const NFT_NAT_SNAT: u32 = 0;
const NFT_NAT_DNAT: u32 = 1;

/// Appends a netlink attribute (padded to 4 bytes).
fn put_attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = u16::try_from(4 + value.len()).expect("attribute fits");
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// The `NFT_MSG_GETRULE` dump request for the rules of `chain` (`None`: of every chain) in
/// the IPv4 table `table`, with sequence number `seq`: what `nft list chain ip TABLE CHAIN`
/// sends (see the test); the kernel filters by both.
pub fn nft_dump_request(seq: u32, table: &str, chain: Option<&str>) -> Vec<u8> {
    let mut m = vec![0u8; NLMSG_HDRLEN];
    m.extend_from_slice(&[NFPROTO_IPV4, 0, 0, 0]); // nfgenmsg: family, NFNETLINK_V0, res_id 0
    let cstr = |s: &str| [s.as_bytes(), &[0]].concat();
    put_attr(&mut m, NFTA_RULE_TABLE, &cstr(table));
    if let Some(chain) = chain {
        put_attr(&mut m, NFTA_RULE_CHAIN, &cstr(chain));
    }
    let len = u32::try_from(m.len()).expect("request fits");
    m[0..4].copy_from_slice(&len.to_ne_bytes());
    m[4..6].copy_from_slice(&(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETRULE).to_ne_bytes());
    m[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    m
}

/// The attributes of a netlink attribute stream: (type without the flag bits, value).
fn attrs(mut b: &[u8]) -> Result<Vec<(u16, &[u8])>, String> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        let kind = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            return Err(format!("attribute of length {len} in {} bytes", b.len()));
        }
        out.push((kind, &b[4..len]));
        b = &b[len.next_multiple_of(4).min(b.len())..];
    }
    Ok(out)
}

fn be32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}

fn be64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?))
}

fn cstr(v: &[u8]) -> String {
    let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

fn find<'a>(list: &[(u16, &'a [u8])], kind: u16) -> Option<&'a [u8]> {
    list.iter().find(|(k, _)| *k == kind).map(|(_, v)| *v)
}

/// What a register holds while a rule's expressions are read in order.
#[derive(Debug, Clone, Copy)]
enum Reg {
    Source,
    Destination,
}

/// A verdict's name (`NF_DROP` 0, `NF_ACCEPT` 1, `NFT_RETURN` -5), or the chain of a jump.
fn verdict(data: &[u8]) -> Result<Option<String>, String> {
    let v = attrs(data)?;
    let Some(inner) = find(&v, NFTA_DATA_VERDICT) else {
        return Ok(None);
    };
    let inner = attrs(inner)?;
    if let Some(chain) = find(&inner, NFTA_VERDICT_CHAIN) {
        return Ok(Some(cstr(chain)));
    }
    Ok(match find(&inner, NFTA_VERDICT_CODE).and_then(be32) {
        Some(0) => Some("DROP".into()),
        Some(1) => Some("ACCEPT".into()),
        Some(c) if c == (-5i32) as u32 => Some("RETURN".into()),
        _ => None,
    })
}

/// One `NFT_MSG_NEWRULE` message's attributes (after the `nfgenmsg`) as a [`RuleCounter`].
fn decode_nft_rule(body: &[u8]) -> Result<RuleCounter, String> {
    let top = attrs(body)?;
    let chain = find(&top, NFTA_RULE_CHAIN).map(cstr).unwrap_or_default();
    let mut rule = RuleCounter::new(&chain);
    let Some(exprs) = find(&top, NFTA_RULE_EXPRESSIONS) else {
        return Ok(rule);
    };
    // Registers are numbered by the kernel; a handful are in use in one rule.
    let mut regs: Vec<(u32, Reg)> = Vec::new();
    for (kind, elem) in attrs(exprs)? {
        if kind != NFTA_LIST_ELEM {
            continue;
        }
        let e = attrs(elem)?;
        let name = find(&e, NFTA_EXPR_NAME).map(cstr).unwrap_or_default();
        let data = attrs(find(&e, NFTA_EXPR_DATA).unwrap_or_default())?;
        let u32_of = |k| find(&data, k).and_then(be32);
        match name.as_str() {
            "payload" => {
                let Some(dreg) = u32_of(NFTA_PAYLOAD_DREG) else {
                    continue;
                };
                regs.retain(|(r, _)| *r != dreg);
                let what = match (
                    u32_of(NFTA_PAYLOAD_BASE),
                    u32_of(NFTA_PAYLOAD_OFFSET),
                    u32_of(NFTA_PAYLOAD_LEN),
                ) {
                    (Some(NFT_PAYLOAD_NETWORK_HEADER), Some(12), Some(4)) => Some(Reg::Source),
                    (Some(NFT_PAYLOAD_NETWORK_HEADER), Some(16), Some(4)) => Some(Reg::Destination),
                    _ => None,
                };
                if let Some(w) = what {
                    regs.push((dreg, w));
                }
            }
            // A mask (`-s 10.0.0.0/8`): what the register holds is no longer one address.
            "bitwise" => {
                if let Some(dreg) = u32_of(NFTA_BITWISE_DREG) {
                    regs.retain(|(r, _)| *r != dreg);
                }
            }
            "cmp" => {
                let (Some(sreg), Some(NFT_CMP_EQ)) = (u32_of(NFTA_CMP_SREG), u32_of(NFTA_CMP_OP))
                else {
                    continue;
                };
                let Some(value) = find(&data, NFTA_CMP_DATA)
                    .map(attrs)
                    .transpose()?
                    .and_then(|d| find(&d, NFTA_DATA_VALUE))
                else {
                    continue;
                };
                let Ok(addr) = <[u8; 4]>::try_from(value) else {
                    continue;
                };
                match regs.iter().find(|(r, _)| *r == sreg).map(|(_, w)| *w) {
                    Some(Reg::Source) => rule.source = Some(Ipv4Addr::from(addr)),
                    Some(Reg::Destination) => rule.destination = Some(Ipv4Addr::from(addr)),
                    None => {}
                }
            }
            "counter" => {
                rule.bytes = find(&data, NFTA_COUNTER_BYTES).and_then(be64).unwrap_or(0);
                rule.packets = find(&data, NFTA_COUNTER_PACKETS)
                    .and_then(be64)
                    .unwrap_or(0);
            }
            "target" => rule.target = find(&data, NFTA_TARGET_NAME).map(cstr),
            "nat" => {
                rule.target = match u32_of(NFTA_NAT_TYPE) {
                    Some(NFT_NAT_SNAT) => Some("SNAT".into()),
                    Some(NFT_NAT_DNAT) => Some("DNAT".into()),
                    _ => rule.target.take(),
                }
            }
            "immediate" if u32_of(NFTA_IMMEDIATE_DREG) == Some(NFT_REG_VERDICT) => {
                if let Some(d) = find(&data, NFTA_IMMEDIATE_DATA) {
                    rule.target = verdict(d)?.or(rule.target.take());
                }
            }
            _ => {}
        }
    }
    Ok(rule)
}

/// What one buffer of a dump answer held.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NftDumpPart {
    /// The rules, in order.
    pub rules: Vec<RuleCounter>,
    /// The dump ended in this buffer (`NLMSG_DONE`, or an error).
    pub done: bool,
}

/// Decodes one buffer of the answer to [`nft_dump_request`] with sequence number `seq`
/// (messages of other sequence numbers are skipped). A table or chain that does not exist
/// ends the dump with no rules; any other error the kernel answers is an error.
pub fn decode_nft_dump(bytes: &[u8], seq: u32) -> Result<NftDumpPart, String> {
    let mut part = NftDumpPart::default();
    let mut at = 0;
    while at + NLMSG_HDRLEN <= bytes.len() {
        let h = &bytes[at..];
        let len = u32::from_ne_bytes(h[0..4].try_into().expect("4 bytes")) as usize;
        if len < NLMSG_HDRLEN || len > h.len() {
            return Err(format!("message of length {len} in {} bytes", h.len()));
        }
        let kind = u16::from_ne_bytes([h[4], h[5]]);
        let this = u32::from_ne_bytes(h[8..12].try_into().expect("4 bytes"));
        let msg = &h[..len];
        at += len.next_multiple_of(4);
        if this != seq {
            continue;
        }
        match kind {
            NLMSG_DONE | NLMSG_ERROR => {
                let code = msg
                    .get(NLMSG_HDRLEN..NLMSG_HDRLEN + 4)
                    .map_or(0, |c| i32::from_ne_bytes(c.try_into().expect("4 bytes")));
                part.done = true;
                if code != 0 && code != -libc::ENOENT {
                    return Err(format!(
                        "the kernel refused the rule dump: {}",
                        std::io::Error::from_raw_os_error(code.saturating_neg())
                    ));
                }
                return Ok(part);
            }
            k if k == (NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWRULE) => {
                let body = msg
                    .get(NLMSG_HDRLEN + NFGENMSG_LEN..)
                    .ok_or("a rule message without its nfgenmsg")?;
                part.rules.push(decode_nft_rule(body)?);
            }
            _ => {}
        }
    }
    Ok(part)
}

/// A netfilter netlink socket in the calling thread's namespace, closed on drop.
#[derive(Debug)]
struct NftSocket {
    fd: OwnedFd,
    /// The receive buffer, reused by every dump. Its size is also what the kernel sizes its
    /// dump buffers by (up to 32 KiB): 16 KiB holds dozens of rules, and any one rule.
    buf: std::cell::RefCell<Vec<u8>>,
}

/// See [`NftSocket::buf`].
const RECV_BUFFER: usize = 16 * 1024;

/// The most buffers one chain's dump may take: far above any real chain (the kernel packs
/// dozens of rules into each), a bound against a kernel that never says done.
const MAX_DUMP_BUFFERS: usize = 1 << 16;

impl NftSocket {
    fn open() -> Result<NftSocket, ExecError> {
        // SAFETY: plain socket(2); the descriptor is owned at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(io_err("opening a netfilter netlink socket".into())(
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        set_timeout(&fd)?;
        Ok(NftSocket {
            fd,
            buf: std::cell::RefCell::new(vec![0u8; RECV_BUFFER]),
        })
    }

    fn dump(
        &self,
        seq: u32,
        table: &str,
        chain: Option<&str>,
    ) -> Result<Vec<RuleCounter>, ExecError> {
        let what = || match chain {
            Some(c) => format!("dumping chain {c} of table ip {table}"),
            None => format!("dumping table ip {table}"),
        };
        let req = nft_dump_request(seq, table, chain);
        let fd = self.fd.as_raw_fd();
        crate::generation::send_to_kernel(fd, &req).map_err(io_err(what()))?;
        let mut buf = self.buf.borrow_mut();
        let mut rules = Vec::new();
        for _ in 0..MAX_DUMP_BUFFERS {
            // SAFETY: receiving into a buffer we own, of its length. MSG_TRUNC: the length
            // returned is the message's, even if it did not fit.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_TRUNC) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(io_err(what())(e));
            }
            let n = usize::try_from(n).unwrap_or(0);
            if n > buf.len() {
                return Err(invalid("rule dump")(format!(
                    "a buffer of {n} bytes did not fit in {}",
                    buf.len()
                )));
            }
            let part = decode_nft_dump(&buf[..n], seq).map_err(invalid("rule dump"))?;
            rules.extend(part.rules);
            if part.done {
                return Ok(rules);
            }
        }
        Err(invalid("rule dump")(format!(
            "no end after {MAX_DUMP_BUFFERS} buffers"
        )))
    }
}

/// A bound on every wait for the kernel.
fn set_timeout(fd: &OwnedFd) -> Result<(), ExecError> {
    crate::generation::bound_recv(fd.as_raw_fd())
        .map_err(io_err("setting a receive timeout".into()))
}

// ---------------------------------------------------------------------------------------
// legacy (x_tables)

/// `IPT_SO_GET_INFO` (`IPT_BASE_CTL` 64): the table's size and hook entry points.
const IPT_SO_GET_INFO: libc::c_int = 64;
/// `IPT_SO_GET_ENTRIES`: the table's entries with their counters.
const IPT_SO_GET_ENTRIES: libc::c_int = 65;
const XT_TABLE_MAXNAMELEN: usize = 32;
/// `sizeof(struct ipt_getinfo)`: name, valid_hooks, hook_entry[5], underflow[5],
/// num_entries, size.
pub const IPT_GETINFO_LEN: usize = 84;
/// `sizeof(struct ipt_get_entries)`: name, size, and the entries aligned to 8.
const IPT_GET_ENTRIES_LEN: usize = 40;
/// `sizeof(struct ipt_entry)` on 64-bit Linux.
const IPT_ENTRY_LEN: usize = 112;
/// `sizeof(struct xt_entry_target)`: size, name[29], revision.
const XT_TARGET_LEN: usize = 32;
/// `IPT_INV_SRCIP`, `IPT_INV_DSTIP` of `ipt_ip.invflags`.
const IPT_INV_SRCIP: u8 = 0x08;
const IPT_INV_DSTIP: u8 = 0x10;
/// The builtin chains in hook order (`NF_INET_PRE_ROUTING` .. `NF_INET_POST_ROUTING`).
const HOOKS: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

/// A legacy table as the kernel answered: the `ipt_getinfo`, and the `ipt_get_entries`.
type LegacyTable = (Vec<u8>, Vec<u8>);

/// Reads `table` with the two socket options; `None` if the table does not exist.
fn legacy_table(table: &str) -> Result<Option<LegacyTable>, ExecError> {
    let what = || format!("reading the legacy {table} table");
    if table.len() >= XT_TABLE_MAXNAMELEN {
        return Err(invalid("table name")(format!("{table:?} is too long")));
    }
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    if fd < 0 {
        return Err(io_err(what())(std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let get = |opt: libc::c_int, buf: &mut Vec<u8>| -> std::io::Result<()> {
        let mut len = libc::socklen_t::try_from(buf.len()).unwrap_or(libc::socklen_t::MAX);
        // SAFETY: getsockopt into a buffer we own, with its length; the kernel reads the
        // table name (and size) we put at its start.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_IP,
                opt,
                buf.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        buf.truncate(len as usize);
        Ok(())
    };
    // The table may change between the two calls (the kernel then answers EAGAIN): a few
    // tries, each with the size just read.
    for _ in 0..5 {
        let mut info = vec![0u8; IPT_GETINFO_LEN];
        info[..table.len()].copy_from_slice(table.as_bytes());
        match get(IPT_SO_GET_INFO, &mut info) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(io_err(what())(e)),
        }
        if info.len() < IPT_GETINFO_LEN {
            return Err(invalid("legacy table info")(format!(
                "{} bytes",
                info.len()
            )));
        }
        let size = u32::from_ne_bytes(info[80..84].try_into().expect("4 bytes")) as usize;
        let mut entries = vec![0u8; IPT_GET_ENTRIES_LEN + size];
        entries[..table.len()].copy_from_slice(table.as_bytes());
        entries[32..36].copy_from_slice(&u32::try_from(size).unwrap_or(0).to_ne_bytes());
        match get(IPT_SO_GET_ENTRIES, &mut entries) {
            Ok(()) => return Ok(Some((info, entries))),
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => continue,
            Err(e) => return Err(io_err(what())(e)),
        }
    }
    Err(io_err(what())(std::io::Error::new(
        std::io::ErrorKind::WouldBlock,
        "the table kept changing while it was read",
    )))
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, String> {
    b.get(at..at + 2)
        .map(|v| u16::from_ne_bytes(v.try_into().expect("2 bytes")))
        .ok_or_else(|| format!("no u16 at {at} of {}", b.len()))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4)
        .map(|v| u32::from_ne_bytes(v.try_into().expect("4 bytes")))
        .ok_or_else(|| format!("no u32 at {at} of {}", b.len()))
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, String> {
    b.get(at..at + 8)
        .map(|v| u64::from_ne_bytes(v.try_into().expect("8 bytes")))
        .ok_or_else(|| format!("no u64 at {at} of {}", b.len()))
}

/// One `ipt_entry` as read, before chains are known.
struct Entry {
    offset: usize,
    rule: RuleCounter,
    /// An `ERROR` target: the head of a user chain (its name), or the table's end (`ERROR`).
    head: Option<String>,
    /// A standard target's jump to the entry at this offset.
    jump: Option<usize>,
}

/// Decodes a legacy table: `info` is the `IPT_SO_GET_INFO` answer (`struct ipt_getinfo`),
/// `entries` the `IPT_SO_GET_ENTRIES` one (`struct ipt_get_entries`). Every rule of every
/// chain, with its chain; the chains' own policy entries (a builtin chain's policy, a user
/// chain's final `RETURN`) are not rules and are left out, as `iptables-save` does.
pub fn decode_legacy_table(info: &[u8], entries: &[u8]) -> Result<Vec<RuleCounter>, String> {
    let valid_hooks = u32_at(info, 32)?;
    let mut hook_entry = [usize::MAX; 5];
    for (h, e) in hook_entry.iter_mut().enumerate() {
        if valid_hooks & (1 << h) != 0 {
            *e = u32_at(info, 36 + 4 * h)? as usize;
        }
    }
    let size = u32_at(entries, 32)? as usize;
    let table = entries
        .get(IPT_GET_ENTRIES_LEN..IPT_GET_ENTRIES_LEN + size)
        .ok_or_else(|| format!("{size} bytes of entries announced, {} read", entries.len()))?;
    let mut list: Vec<Entry> = Vec::new();
    let mut at = 0;
    while at < table.len() {
        let e = table
            .get(at..)
            .filter(|e| e.len() >= IPT_ENTRY_LEN)
            .ok_or_else(|| format!("a truncated entry at {at}"))?;
        let target_offset = usize::from(u16_at(e, 88)?);
        let next_offset = usize::from(u16_at(e, 90)?);
        if next_offset < IPT_ENTRY_LEN
            || next_offset > e.len()
            || target_offset < IPT_ENTRY_LEN
            || target_offset + XT_TARGET_LEN > next_offset
        {
            return Err(format!(
                "entry at {at}: target at {target_offset}, next at {next_offset}"
            ));
        }
        let mut rule = RuleCounter::new("");
        let addr = |o: usize| Ipv4Addr::new(e[o], e[o + 1], e[o + 2], e[o + 3]);
        let host = Ipv4Addr::BROADCAST;
        let inv = e[83];
        if addr(8) == host && inv & IPT_INV_SRCIP == 0 {
            rule.source = Some(addr(0));
        }
        if addr(12) == host && inv & IPT_INV_DSTIP == 0 {
            rule.destination = Some(addr(4));
        }
        rule.packets = u64_at(e, 96)?;
        rule.bytes = u64_at(e, 104)?;
        let t = &e[target_offset..next_offset];
        let name = cstr(&t[2..31]);
        let (mut head, mut jump) = (None, None);
        match name.as_str() {
            "ERROR" => head = Some(cstr(&t[XT_TARGET_LEN..])),
            // The standard target: a verdict (negative: -NF_DROP-1, -NF_ACCEPT-1, XT_RETURN)
            // or the offset of the entry jumped to.
            "" => {
                let v = u32_at(t, XT_TARGET_LEN)? as i32;
                rule.target = match v {
                    -1 => Some("DROP".into()),
                    -2 => Some("ACCEPT".into()),
                    -5 => Some("RETURN".into()),
                    v if v >= 0 => {
                        jump = Some(v as usize);
                        None
                    }
                    _ => None,
                };
            }
            other => rule.target = Some(other.to_owned()),
        }
        list.push(Entry {
            offset: at,
            rule,
            head,
            jump,
        });
        at += next_offset;
    }
    // Chains: a builtin one starts at its hook's entry, a user one after its ERROR head.
    let mut chain_at: Vec<(usize, String)> = Vec::new();
    for (h, name) in HOOKS.iter().enumerate() {
        if hook_entry[h] != usize::MAX {
            chain_at.push((hook_entry[h], (*name).to_owned()));
        }
    }
    for (i, e) in list.iter().enumerate() {
        if let (Some(name), Some(next)) = (&e.head, list.get(i + 1)) {
            chain_at.push((next.offset, name.clone()));
        }
    }
    let chain_of = |offset: usize| {
        chain_at
            .iter()
            .find(|(o, _)| *o == offset)
            .map(|(_, n)| n.clone())
    };
    let mut out: Vec<RuleCounter> = Vec::new();
    let mut current: Option<(String, Vec<RuleCounter>)> = None;
    let flush = |cur: &mut Option<(String, Vec<RuleCounter>)>, out: &mut Vec<RuleCounter>| {
        if let Some((_, mut rules)) = cur.take() {
            // The last entry of every chain is its policy (builtin) or its RETURN (user).
            rules.pop();
            out.extend(rules);
        }
    };
    for e in list {
        if let Some(name) = chain_of(e.offset) {
            flush(&mut current, &mut out);
            current = Some((name, Vec::new()));
        }
        if e.head.is_some() {
            flush(&mut current, &mut out);
            continue;
        }
        if let Some((chain, rules)) = current.as_mut() {
            let mut rule = e.rule;
            rule.chain.clone_from(chain);
            if let Some(j) = e.jump {
                rule.target = chain_of(j);
            }
            rules.push(rule);
        }
    }
    flush(&mut current, &mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    use l3agent_testkit::hex_capture as hex;

    const PREROUTING: &str = "neutron-l3-agent-PREROUTING";
    const FLOAT_SNAT: &str = "neutron-l3-agent-float-snat";

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// The request `nft list chain ip nat neutron-l3-agent-PREROUTING` sends, as strace
    /// decoded it (nftables 1.0.9): `{nlmsg_len=60, nlmsg_type=NFNL_SUBSYS_NFTABLES<<8|
    /// NFT_MSG_GETRULE, nlmsg_flags=NLM_F_REQUEST|NLM_F_DUMP, nlmsg_seq=0, nlmsg_pid=0},
    /// {nfgen_family=AF_INET, version=NFNETLINK_V0, res_id=htons(0)}, [{nla_len=8,
    /// nla_type=0x1}, "nat\0"], [{nla_len=32, nla_type=0x2}, "neutron-l3-agent-PREROUTING\0"]`.
    #[test]
    fn the_dump_request_is_what_nft_sends() {
        let mut want = Vec::new();
        want.extend_from_slice(&60u32.to_ne_bytes());
        want.extend_from_slice(&0x0a07u16.to_ne_bytes());
        want.extend_from_slice(&0x0301u16.to_ne_bytes());
        want.extend_from_slice(&[0; 8]);
        want.extend_from_slice(&[2, 0, 0, 0]);
        want.extend_from_slice(&8u16.to_ne_bytes());
        want.extend_from_slice(&1u16.to_ne_bytes());
        want.extend_from_slice(b"nat\0");
        want.extend_from_slice(&32u16.to_ne_bytes());
        want.extend_from_slice(&2u16.to_ne_bytes());
        want.extend_from_slice(b"neutron-l3-agent-PREROUTING\0");
        assert_eq!(nft_dump_request(0, "nat", Some(PREROUTING)), want);
        let with_seq = nft_dump_request(1, "nat", Some(PREROUTING));
        assert_eq!(&with_seq[8..12], &1u32.to_ne_bytes());
        // The capture's own request (sequence 1) is the same bytes.
        let captured = hex(include_str!("../tests/data/nft-dump-prerouting.hex"));
        assert_eq!(&captured[..with_seq.len()], &with_seq[..]);
    }

    #[test]
    fn a_captured_nft_dump_gives_each_rules_addresses_target_and_counters() {
        let captured = hex(include_str!("../tests/data/nft-dump-prerouting.hex"));
        let answer = &captured[60..];
        let part = decode_nft_dump(answer, 1).unwrap();
        assert!(part.done);
        assert_eq!(
            part.rules,
            vec![
                RuleCounter {
                    chain: PREROUTING.into(),
                    source: None,
                    destination: Some(ip("203.0.113.2")),
                    target: Some("DNAT".into()),
                    packets: 3,
                    bytes: 384,
                },
                RuleCounter {
                    chain: PREROUTING.into(),
                    source: None,
                    destination: Some(ip("203.0.113.3")),
                    target: Some("DNAT".into()),
                    packets: 0,
                    bytes: 0,
                },
            ]
        );
        let captured = hex(include_str!("../tests/data/nft-dump-float-snat.hex"));
        let part = decode_nft_dump(&captured[60..], 1).unwrap();
        assert!(part.done);
        assert_eq!(
            part.rules,
            vec![RuleCounter {
                chain: FLOAT_SNAT.into(),
                source: Some(ip("192.0.2.10")),
                destination: None,
                target: Some("SNAT".into()),
                packets: 1,
                bytes: 84,
            }]
        );
        // Messages of another question are not this one's.
        assert_eq!(
            decode_nft_dump(&captured[60..], 2).unwrap(),
            NftDumpPart::default()
        );
    }

    #[test]
    fn a_missing_chain_ends_the_dump_empty_and_other_errors_are_errors() {
        let done = |code: i32| {
            let mut m = Vec::new();
            m.extend_from_slice(&20u32.to_ne_bytes());
            m.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
            m.extend_from_slice(&2u16.to_ne_bytes());
            m.extend_from_slice(&7u32.to_ne_bytes());
            m.extend_from_slice(&0u32.to_ne_bytes());
            m.extend_from_slice(&code.to_ne_bytes());
            m
        };
        let p = decode_nft_dump(&done(0), 7).unwrap();
        assert!(p.done && p.rules.is_empty());
        let p = decode_nft_dump(&done(-libc::ENOENT), 7).unwrap();
        assert!(p.done && p.rules.is_empty());
        let e = decode_nft_dump(&done(-libc::EPERM), 7).unwrap_err();
        assert!(e.contains("refused"), "{e}");
    }

    /// Every prefix and every single-byte corruption of the captures decodes to a result or
    /// an error, never a panic (the decoder trusts no length).
    #[test]
    fn truncated_or_corrupted_answers_never_panic() {
        let nft = hex(include_str!("../tests/data/nft-dump-prerouting.hex"));
        let info = hex(include_str!("../tests/data/legacy-nat-info.hex"));
        let entries = hex(include_str!("../tests/data/legacy-nat-entries.hex"));
        for n in 0..nft.len() {
            let _ = decode_nft_dump(&nft[60..n.max(60)], 1);
            let mut bad = nft.clone();
            bad[n] ^= 0xff;
            let _ = decode_nft_dump(&bad[60..], 1);
        }
        for n in 0..entries.len() {
            let _ = decode_legacy_table(&info, &entries[..n]);
            let mut bad = entries.clone();
            bad[n] ^= 0xff;
            let _ = decode_legacy_table(&info, &bad);
        }
        for n in 0..info.len() {
            let _ = decode_legacy_table(&info[..n], &entries);
        }
    }

    #[test]
    fn a_captured_legacy_table_gives_each_rule_with_its_chain_and_counters() {
        let info = hex(include_str!("../tests/data/legacy-nat-info.hex"));
        let entries = hex(include_str!("../tests/data/legacy-nat-entries.hex"));
        let rules = decode_legacy_table(&info, &entries).unwrap();
        let rule = |chain: &str,
                    source: Option<&str>,
                    destination: Option<&str>,
                    target: &str,
                    packets,
                    bytes| RuleCounter {
            chain: chain.into(),
            source: source.map(ip),
            destination: destination.map(ip),
            target: Some(target.into()),
            packets,
            bytes,
        };
        // `iptables-legacy-save -c -t nat` said, right before the capture:
        // [1:128] -A PREROUTING -j neutron-l3-agent-PREROUTING
        // [1:84] -A POSTROUTING -j neutron-l3-agent-float-snat
        // [1:128] -A neutron-l3-agent-PREROUTING -d 203.0.113.2/32 -j DNAT --to-destination 192.0.2.10
        // [0:0] -A neutron-l3-agent-PREROUTING -d 203.0.113.3/32 -i rfp-1234 -j DNAT --to-destination 192.0.2.11
        // [1:84] -A neutron-l3-agent-float-snat -s 192.0.2.10/32 -j SNAT --to-source 203.0.113.2 --random-fully
        assert_eq!(
            rules,
            vec![
                rule("PREROUTING", None, None, PREROUTING, 1, 128),
                rule("POSTROUTING", None, None, FLOAT_SNAT, 1, 84),
                rule(PREROUTING, None, Some("203.0.113.2"), "DNAT", 1, 128),
                rule(PREROUTING, None, Some("203.0.113.3"), "DNAT", 0, 0),
                rule(FLOAT_SNAT, Some("192.0.2.10"), None, "SNAT", 1, 84),
            ]
        );
    }
}
