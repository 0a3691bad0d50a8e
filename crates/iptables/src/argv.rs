//! iptables' own reading of a rule's words, so that l3agent decides on the option iptables will
//! act on, whatever its spelling.
//!
//! `iptables-restore` splits each line into words and runs iptables' `do_parse` (xshared.c,
//! iptables 1.8) on them: `getopt_long` over iptables' option table plus the long options of
//! every match and target loaded so far (the newest first). So, as iptables reads them:
//! - a long option may be cut to any unambiguous prefix (`--modp` is `--modprobe`, `--set-c` is
//!   `--set-counters`, `--to-d` is `--to-destination` once `-j DNAT` is loaded) and take its
//!   value as `--opt=value`;
//! - short options may be bundled and glued to their value (`-vM/bin/sh`, `-sA,B`, `-ptcp`);
//! - quotes are gone before `getopt` runs: `"-M"` is `-M`;
//! - an option no loaded module knows makes iptables load the protocol's match (`-p tcp` then
//!   `--dport`) and read the word again.
//!
//! l3agent replays exactly that on every rule ([`crate::rule::ParsedRule::parse`]) and
//! decides on the options it finds:
//! - **refused**, in any spelling: `-M`/`--modprobe` (a program iptables runs as root),
//!   `-c`/`--set-counters`, and every command or global option (`-A`, `-I`, `-D`, `-R`, `-C`,
//!   `-F`, `-X`, `-N`, `-P`, `-Z`, `-L`, `-S`, `-E`, `-t`, `-w`, `-W`, `-n`, `-v`, `-x`,
//!   `--line-numbers`, `-4`, `-6`, `-h`, `-V`); an ambiguous abbreviation, an unknown option, a
//!   stray word, `--`, a misplaced or doubled `!`, an option value that starts with `-`
//!   (except free text: comments, log prefixes) or is `!`;
//! - **refused** unless on the allowlist: matches `tcp udp sctp icmp icmp6 multiport comment
//!   conntrack state mark connmark mac physdev set limit hashlimit addrtype iprange owner
//!   rpfilter policy pkttype length dscp connlimit` (`icmp` only in IPv4, `icmp6`/`icmpv6` only
//!   in IPv6) and targets `ACCEPT DROP RETURN REJECT SNAT DNAT MASQUERADE REDIRECT MARK CONNMARK
//!   CT NOTRACK LOG NFLOG CHECKSUM TCPMSS`, each with its own option table; `-j`/`-g` may also
//!   name a user chain, which must have a lower-case letter or `-` (iptables tries an extension
//!   library of the name first, and extension targets are upper case). Refused on purpose:
//!   modules that name a file, a path or a program, or hand packets elsewhere (`bpf`, `cgroup`,
//!   `recent`, `LED`, `IDLETIMER`, `NFQUEUE`, `QUEUE`, `TEE`, `SECMARK`, `AUDIT`, `SET`, ...) and
//!   everything else l3agent has not vetted;
//! - **refused** unless literal, for values iptables would resolve through DNS, NSS or a file:
//!   addresses (`-s`, `-d`, `--ctorigsrc` and the other conntrack addresses, `--tunnel-src`,
//!   `--tunnel-dst`) must be one IP or CIDR literal of the rule's family (no host names, no
//!   comma lists); `--src-range`/`--dst-range` `IP-IP`; `--to-source`/`--to-destination`
//!   `IP[-IP][:port[-port]]` (IPv6: `[IP]:port`); `--uid-owner`/`--gid-owner` numeric;
//!   protocols a number (no leading zero) or one of iptables' built-in names (plus `gre`);
//!   interface names (`-i`, `-o`, `--physdev-in`, `--physdev-out`) valid Linux device names,
//!   optionally with a trailing `+` wildcard; names of kernel objects (`--hashlimit-name`,
//!   `--helper`, `--timeout`) plain `[A-Za-z0-9_-]`; comments neither invisible format
//!   characters nor l3agent's marker prefix;
//! - **normalised** when unambiguous and otherwise safe: an abbreviation is written as the
//!   full long option (`--dp` → `--dport`, `--proto` → `--protocol`), `--opt=value` and glued
//!   or bundled short options become separate words (`-ptcp` → `-p tcp`, `-fjACCEPT` → `-f -j
//!   ACCEPT`), and the ip6tables aliases `icmpv6`/`ipv6-icmp` of `-m icmp6` become `icmp6`. The
//!   normalised words are what l3agent writes, so `iptables-restore` only ever sees full option
//!   names, each followed by exactly the values l3agent checked. Canonical spellings (`-p`,
//!   `--dport`, `--src`, ...) are kept as written, so rules already in a kernel keep their
//!   identity hash.

use std::net::IpAddr;

use crate::error::{quoted, Error};
use crate::names::{check_comment, is_jump_chain, Family};
use crate::rule::{parse_addr, Token};
use l3agent_types::IfName;

/// Whether an option takes a value (`getopt`'s `has_arg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arg {
    /// No value.
    No,
    /// A value: the next word, the rest of a short-option word, or `=value`.
    Required,
    /// A value only when glued (`-w5`, `--wait=5`).
    Optional,
}

/// iptables' own long options (`original_opts` in iptables.c/xtables.c, 1.8) and the short
/// option each stands for.
const CORE_LONG: &[(&str, Arg, char)] = &[
    ("append", Arg::Required, 'A'),
    ("delete", Arg::Required, 'D'),
    ("check", Arg::Required, 'C'),
    ("insert", Arg::Required, 'I'),
    ("replace", Arg::Required, 'R'),
    ("list", Arg::Optional, 'L'),
    ("list-rules", Arg::Optional, 'S'),
    ("flush", Arg::Optional, 'F'),
    ("zero", Arg::Optional, 'Z'),
    ("new-chain", Arg::Required, 'N'),
    ("delete-chain", Arg::Optional, 'X'),
    ("rename-chain", Arg::Required, 'E'),
    ("policy", Arg::Required, 'P'),
    ("source", Arg::Required, 's'),
    ("destination", Arg::Required, 'd'),
    ("src", Arg::Required, 's'),
    ("dst", Arg::Required, 'd'),
    ("protocol", Arg::Required, 'p'),
    ("in-interface", Arg::Required, 'i'),
    ("jump", Arg::Required, 'j'),
    ("table", Arg::Required, 't'),
    ("match", Arg::Required, 'm'),
    ("numeric", Arg::No, 'n'),
    ("out-interface", Arg::Required, 'o'),
    ("verbose", Arg::No, 'v'),
    ("wait", Arg::Optional, 'w'),
    ("wait-interval", Arg::Optional, 'W'),
    ("exact", Arg::No, 'x'),
    ("fragments", Arg::No, 'f'),
    ("version", Arg::No, 'V'),
    ("help", Arg::Optional, 'h'),
    ("line-numbers", Arg::No, '0'),
    ("modprobe", Arg::Required, 'M'),
    ("set-counters", Arg::Required, 'c'),
    ("goto", Arg::Required, 'g'),
    ("ipv4", Arg::No, '4'),
    ("ipv6", Arg::No, '6'),
];

/// iptables' short options (`IPT_OPTSTRING`, xshared.h, 1.8; `b` from older releases): a
/// letter, `:` if it takes a value, `::` if the value is optional.
const OPTSTRING: &str = "A:C:D:E:F::I:L::M:N:P:R:S::VX::Z::c:d:i:j:o:p:s:t:vW::46bfg:h::m:nw::x";

fn short_arg(c: char) -> Option<Arg> {
    let b = OPTSTRING.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let letter = b[i] as char;
        let mut arg = Arg::No;
        i += 1;
        if b.get(i) == Some(&b':') {
            arg = Arg::Required;
            i += 1;
            if b.get(i) == Some(&b':') {
                arg = Arg::Optional;
                i += 1;
            }
        }
        if letter == c {
            return Some(arg);
        }
    }
    None
}

/// The long name of a short option, for messages.
fn long_of(c: char) -> Option<&'static str> {
    CORE_LONG.iter().find(|o| o.2 == c).map(|o| o.0)
}

/// Why a core option that is not part of a rule specification is refused.
fn forbidden(c: char) -> Option<&'static str> {
    Some(match c {
        's' | 'd' | 'p' | 'i' | 'o' | 'f' | 'm' | 'j' | 'g' => return None,
        'M' => "iptables would run the program it names, as root, to load kernel modules",
        'c' => "it sets packet counters, which are not part of a rule",
        't' => "the table is chosen by the rules file (ipv4.<table>), not by the rule",
        'A' | 'C' | 'D' | 'E' | 'F' | 'I' | 'L' | 'N' | 'P' | 'R' | 'S' | 'X' | 'Z' => {
            "it is a command; l3agent writes the command (-A <chain>) itself"
        }
        _ => "it is an option of the iptables program, not part of a rule",
    })
}

/// How the value of an extension option is checked (beyond the checks every value gets: not
/// `!`, and not starting with `-` unless it is free text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// One word of printable ASCII without quotes or backslashes (ports, states, marks, ...),
    /// for options that never look a name up.
    Word,
    /// A `-m comment` text (see `check_comment`).
    Comment,
    /// Free text of at most this many bytes (log prefixes).
    Text(usize),
    /// An IP or CIDR literal of the rule's family.
    Addr,
    /// `IP-IP`, literals of the rule's family.
    AddrRange,
    /// A NAT range: IPv4 `IP[-IP][:port[-port]]`; IPv6 `IP[-IP]` or `[IP][-[IP]][:port[-port]]`.
    NatRange,
    /// `port[-port]`.
    PortRange,
    /// An interface name, optionally with a trailing `+`.
    Iface,
    /// A protocol (see `check_proto`).
    Proto,
    /// A numeric id or id range (`1000`, `1000-1999`): names would be looked up through NSS.
    Id,
    /// An ipset name.
    SetName,
    /// ipset direction flags: `src`/`dst`, comma-separated, at most 6.
    SetFlags,
    /// A kernel object name: `[A-Za-z0-9_-]`, at most this long.
    Name(usize),
    /// A MAC address.
    Mac,
}

/// One long option of a match or target.
#[derive(Debug, Clone, Copy)]
struct OptDef {
    name: &'static str,
    /// Options with the same id are synonyms (`--sport`, `--source-port`), as in `getopt`.
    id: u8,
    arg: Arg,
    check: Check,
    /// A second value the extension takes from the next word itself (`--tcp-flags MASK COMP`,
    /// `--match-set NAME FLAGS`).
    extra: Option<Check>,
}

const fn val(name: &'static str, id: u8, check: Check) -> OptDef {
    OptDef {
        name,
        id,
        arg: Arg::Required,
        check,
        extra: None,
    }
}

const fn two(name: &'static str, id: u8, check: Check, extra: Check) -> OptDef {
    OptDef {
        name,
        id,
        arg: Arg::Required,
        check,
        extra: Some(extra),
    }
}

const fn flag(name: &'static str, id: u8) -> OptDef {
    OptDef {
        name,
        id,
        arg: Arg::No,
        check: Check::Word,
        extra: None,
    }
}

/// A match or target l3agent allows, with its long options (from its `libxt_*.c`).
#[derive(Debug)]
pub(crate) struct Module {
    /// `-m`/`-j` name.
    pub name: &'static str,
    /// Only for this family (`icmp`, `icmp6`).
    family: Option<Family>,
    opts: &'static [OptDef],
}

const fn module(name: &'static str, opts: &'static [OptDef]) -> Module {
    Module {
        name,
        family: None,
        opts,
    }
}

use Check::{Addr, AddrRange, Iface, NatRange, PortRange, Word};

const PORTS: [OptDef; 4] = [
    val("source-port", 0, Word),
    val("sport", 0, Word),
    val("destination-port", 1, Word),
    val("dport", 1, Word),
];

/// The matches l3agent allows: those Neutron's agents and `iptables_manager` use, and others
/// that only compare packet fields. Refused (not listed) on purpose, among others: `bpf`
/// (`--object-pinned` opens a file), `cgroup` (`--path`), `recent` (creates a /proc file per
/// name), `u32`, `string`, `time`, `socket`, `statistic`, `ipvs` (not needed; add them here with
/// their option table when they are).
pub(crate) const MATCHES: &[Module] = &[
    module(
        "tcp",
        &[
            PORTS[0],
            PORTS[1],
            PORTS[2],
            PORTS[3],
            flag("syn", 2),
            two("tcp-flags", 3, Word, Word),
            val("tcp-option", 4, Word),
        ],
    ),
    module("udp", &PORTS),
    module(
        "sctp",
        &[
            PORTS[0],
            PORTS[1],
            PORTS[2],
            PORTS[3],
            two("chunk-types", 2, Word, Word),
        ],
    ),
    Module {
        name: "icmp",
        family: Some(Family::V4),
        opts: &[val("icmp-type", 0, Word)],
    },
    Module {
        name: "icmp6",
        family: Some(Family::V6),
        opts: &[val("icmpv6-type", 0, Word)],
    },
    module(
        "multiport",
        &[
            val("source-ports", 0, Word),
            val("sports", 0, Word),
            val("destination-ports", 1, Word),
            val("dports", 1, Word),
            val("ports", 2, Word),
        ],
    ),
    module("comment", &[val("comment", 0, Check::Comment)]),
    module(
        "conntrack",
        &[
            val("ctstate", 0, Word),
            val("ctproto", 1, Check::Proto),
            val("ctorigsrc", 2, Addr),
            val("ctorigdst", 3, Addr),
            val("ctreplsrc", 4, Addr),
            val("ctrepldst", 5, Addr),
            val("ctorigsrcport", 6, Word),
            val("ctorigdstport", 7, Word),
            val("ctreplsrcport", 8, Word),
            val("ctrepldstport", 9, Word),
            val("ctstatus", 10, Word),
            val("ctexpire", 11, Word),
            val("ctdir", 12, Word),
        ],
    ),
    module("state", &[val("state", 0, Word)]),
    module("mark", &[val("mark", 0, Word)]),
    module("connmark", &[val("mark", 0, Word)]),
    module("mac", &[val("mac-source", 0, Check::Mac)]),
    module(
        "physdev",
        &[
            val("physdev-in", 0, Iface),
            val("physdev-out", 1, Iface),
            flag("physdev-is-in", 2),
            flag("physdev-is-out", 3),
            flag("physdev-is-bridged", 4),
        ],
    ),
    module(
        "set",
        &[
            two("match-set", 0, Check::SetName, Check::SetFlags),
            two("set", 1, Check::SetName, Check::SetFlags),
            flag("return-nomatch", 2),
            flag("update-counters", 3),
            val("packets-eq", 4, Word),
            val("packets-lt", 5, Word),
            val("packets-gt", 6, Word),
            val("bytes-eq", 7, Word),
            val("bytes-lt", 8, Word),
            val("bytes-gt", 9, Word),
            flag("update-subcounters", 10),
        ],
    ),
    module(
        "limit",
        &[val("limit", 0, Word), val("limit-burst", 1, Word)],
    ),
    module(
        "hashlimit",
        &[
            val("hashlimit-upto", 0, Word),
            val("hashlimit-above", 1, Word),
            val("hashlimit-burst", 2, Word),
            val("hashlimit-mode", 3, Word),
            val("hashlimit-srcmask", 4, Word),
            val("hashlimit-dstmask", 5, Word),
            val("hashlimit-htable-size", 6, Word),
            val("hashlimit-htable-max", 7, Word),
            val("hashlimit-htable-gcinterval", 8, Word),
            val("hashlimit-htable-expire", 9, Word),
            // The name of the table's /proc/net/ipt_hashlimit entry: a plain name, never a path.
            val("hashlimit-name", 10, Check::Name(15)),
            flag("hashlimit-rate-match", 11),
            val("hashlimit-rate-interval", 12, Word),
        ],
    ),
    module(
        "addrtype",
        &[
            val("src-type", 0, Word),
            val("dst-type", 1, Word),
            flag("limit-iface-in", 2),
            flag("limit-iface-out", 3),
        ],
    ),
    module(
        "iprange",
        &[
            val("src-range", 0, AddrRange),
            val("dst-range", 1, AddrRange),
        ],
    ),
    module(
        "owner",
        &[
            val("uid-owner", 0, Check::Id),
            val("gid-owner", 1, Check::Id),
            flag("socket-exists", 2),
            flag("suppl-groups", 3),
        ],
    ),
    module(
        "rpfilter",
        &[
            flag("loose", 0),
            flag("validmark", 1),
            flag("accept-local", 2),
            flag("invert", 3),
        ],
    ),
    module(
        "policy",
        &[
            val("dir", 0, Word),
            val("pol", 1, Word),
            flag("strict", 2),
            val("reqid", 3, Word),
            val("spi", 4, Word),
            val("proto", 5, Check::Proto),
            val("mode", 6, Word),
            val("tunnel-src", 7, Addr),
            val("tunnel-dst", 8, Addr),
            flag("next", 9),
        ],
    ),
    module("pkttype", &[val("pkt-type", 0, Word)]),
    module("length", &[val("length", 0, Word)]),
    module("dscp", &[val("dscp", 0, Word), val("dscp-class", 1, Word)]),
    module(
        "connlimit",
        &[
            val("connlimit-upto", 0, Word),
            val("connlimit-above", 1, Word),
            val("connlimit-mask", 2, Word),
            flag("connlimit-saddr", 3),
            flag("connlimit-daddr", 4),
        ],
    ),
];

/// The targets l3agent allows (besides jumps to user chains). Refused on purpose, among
/// others: `LED` (creates a sysfs trigger), `IDLETIMER` (creates a sysfs file), `NFQUEUE`/`QUEUE`
/// (hand packets to a program), `TEE` (copies traffic elsewhere), `SECMARK`/`CONNSECMARK`,
/// `AUDIT`, `SET`, `TPROXY`, `SYNPROXY`.
pub(crate) const TARGETS: &[Module] = &[
    module("ACCEPT", &[]),
    module("DROP", &[]),
    module("RETURN", &[]),
    module("REJECT", &[val("reject-with", 0, Word)]),
    module(
        "SNAT",
        &[
            val("to-source", 0, NatRange),
            flag("random", 1),
            flag("random-fully", 2),
            flag("persistent", 3),
        ],
    ),
    module(
        "DNAT",
        &[
            val("to-destination", 0, NatRange),
            flag("random", 1),
            flag("persistent", 2),
        ],
    ),
    module(
        "MASQUERADE",
        &[
            val("to-ports", 0, PortRange),
            flag("random", 1),
            flag("random-fully", 2),
        ],
    ),
    module(
        "REDIRECT",
        &[val("to-ports", 0, PortRange), flag("random", 1)],
    ),
    module(
        "MARK",
        &[
            val("set-mark", 0, Word),
            val("set-xmark", 1, Word),
            val("and-mark", 2, Word),
            val("or-mark", 3, Word),
            val("xor-mark", 4, Word),
        ],
    ),
    module(
        "CONNMARK",
        &[
            val("set-mark", 0, Word),
            val("set-xmark", 1, Word),
            flag("save-mark", 2),
            flag("restore-mark", 3),
            val("and-mark", 4, Word),
            val("or-mark", 5, Word),
            val("xor-mark", 6, Word),
            val("mask", 7, Word),
            val("nfmask", 8, Word),
            val("ctmask", 9, Word),
        ],
    ),
    module(
        "CT",
        &[
            flag("notrack", 0),
            val("helper", 1, Check::Name(15)),
            val("ctevents", 2, Word),
            val("expevents", 3, Word),
            val("zone", 4, Word),
            val("zone-orig", 5, Word),
            val("zone-reply", 6, Word),
            val("timeout", 7, Check::Name(31)),
        ],
    ),
    module("NOTRACK", &[]),
    module(
        "LOG",
        &[
            val("log-level", 0, Word),
            val("log-prefix", 1, Check::Text(29)),
            flag("log-tcp-sequence", 2),
            flag("log-tcp-options", 3),
            flag("log-ip-options", 4),
            flag("log-uid", 5),
            flag("log-macdecode", 6),
        ],
    ),
    module(
        "NFLOG",
        &[
            val("nflog-group", 0, Word),
            val("nflog-prefix", 1, Check::Text(63)),
            val("nflog-range", 2, Word),
            val("nflog-size", 3, Word),
            val("nflog-threshold", 4, Word),
        ],
    ),
    module("CHECKSUM", &[flag("checksum-fill", 0)]),
    module(
        "TCPMSS",
        &[val("set-mss", 0, Word), flag("clamp-mss-to-pmtu", 1)],
    ),
];

fn names(list: &[Module], family: Family) -> String {
    list.iter()
        .filter(|m| m.family.is_none_or(|f| f == family))
        .map(|m| m.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The match `-m name` loads for `family` (ip6tables also takes `icmpv6` and `ipv6-icmp` for
/// `icmp6`, as libxtables does).
fn find_match(family: Family, name: &str) -> Option<&'static Module> {
    let name = match (family, name) {
        (Family::V6, "icmpv6" | "ipv6-icmp") => "icmp6",
        _ => name,
    };
    MATCHES
        .iter()
        .find(|m| m.name == name && m.family.is_none_or(|f| f == family))
}

fn find_target(name: &str) -> Option<&'static Module> {
    TARGETS.iter().find(|m| m.name == name)
}

/// The match iptables loads by itself for `-p <proto>` when it meets an option it does not
/// know yet (`-p tcp --dport 22`), if l3agent allows it.
fn proto_match(family: Family, proto: &str) -> Option<&'static Module> {
    let name = match (proto, family) {
        ("tcp" | "6", _) => "tcp",
        ("udp" | "17", _) => "udp",
        ("sctp" | "132", _) => "sctp",
        ("icmp" | "1", Family::V4) => "icmp",
        ("icmpv6" | "ipv6-icmp" | "58", Family::V6) => "icmp6",
        _ => return None,
    };
    find_match(family, name)
}

/// The protocols iptables knows without asking NSS (`xtables_chain_protos`), plus `gre`.
const PROTOCOLS: &[&str] = &[
    "all",
    "tcp",
    "udp",
    "udplite",
    "icmp",
    "icmpv6",
    "ipv6-icmp",
    "esp",
    "ah",
    "sctp",
    "mh",
    "ipv6-mh",
    "gre",
];

/// A protocol as `-p` takes it: a decimal number 0..=255 (no leading zero: iptables would read
/// `010` as octal) or one of [`PROTOCOLS`], any case.
fn check_proto(v: &str) -> Result<(), String> {
    let lower = v.to_ascii_lowercase();
    let numeric = !v.is_empty()
        && v.bytes().all(|b| b.is_ascii_digit())
        && (v == "0" || !v.starts_with('0'))
        && v.parse::<u8>().is_ok();
    if numeric || PROTOCOLS.contains(&lower.as_str()) {
        Ok(())
    } else {
        Err(format!(
            "protocol {} is not a number 0-255 or one of {}",
            quoted(v),
            PROTOCOLS.join(", ")
        ))
    }
}

fn is_word(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\'' | b'\\'))
}

fn port(v: &str) -> Option<u16> {
    (!v.is_empty() && v.len() <= 5 && v.bytes().all(|b| b.is_ascii_digit()))
        .then(|| v.parse().ok())
        .flatten()
}

fn port_range(v: &str) -> bool {
    match v.split_once('-') {
        None => port(v).is_some(),
        Some((a, b)) => matches!((port(a), port(b)), (Some(a), Some(b)) if a <= b),
    }
}

fn ip_of(family: Family, v: &str) -> bool {
    matches!(
        (family, v.parse::<IpAddr>()),
        (Family::V4, Ok(IpAddr::V4(_))) | (Family::V6, Ok(IpAddr::V6(_)))
    )
}

fn nat_range(family: Family, v: &str) -> bool {
    let ip_range = |s: &str, bracketed: bool| -> bool {
        let one = |s: &str| match (
            bracketed,
            s.strip_prefix('[').and_then(|s| s.strip_suffix(']')),
        ) {
            (true, Some(inner)) => ip_of(family, inner),
            (true, None) => false,
            (false, _) => ip_of(family, s),
        };
        match s.split_once('-') {
            None => one(s),
            Some((a, b)) => one(a) && one(b),
        }
    };
    match family {
        Family::V4 => match v.split_once(':') {
            None => ip_range(v, false),
            Some((ips, ports)) => ip_range(ips, false) && port_range(ports),
        },
        Family::V6 => {
            if !v.starts_with('[') {
                return ip_range(v, false);
            }
            match v.rsplit_once("]:") {
                Some((ips, ports)) => ip_range(&format!("{ips}]"), true) && port_range(ports),
                None => ip_range(v, true),
            }
        }
    }
}

/// An interface name as iptables takes it: a Linux device name (see [`IfName`]), optionally
/// followed by the `+` wildcard, at most 15 characters in all.
pub(crate) fn check_iface(v: &str) -> Result<(), String> {
    let base = v.strip_suffix('+').unwrap_or(v);
    if v.len() <= IfName::MAX_LEN && IfName::new("interface", base).is_ok() {
        Ok(())
    } else {
        Err(format!(
            "interface {} is not a valid device name (1-15 characters of letters, digits, '_', \
             '-' and '.', optionally ending with the wildcard '+')",
            quoted(v)
        ))
    }
}

fn check_value(family: Family, check: Check, v: &str) -> Result<(), String> {
    let need = |ok: bool, what: &str| {
        if ok {
            Ok(())
        } else {
            Err(format!("{} is not {what}", quoted(v)))
        }
    };
    match check {
        Check::Word => need(
            is_word(v),
            "a single word of printable ASCII characters without quotes",
        ),
        Check::Comment => check_comment(v).map_err(|r| format!("comment {r}")),
        Check::Text(max) => need(v.len() <= max, &format!("text of at most {max} bytes")),
        Check::Addr => parse_addr(family, v).map(|_| ()),
        Check::AddrRange => need(
            v.split_once('-')
                .is_some_and(|(a, b)| ip_of(family, a) && ip_of(family, b)),
            &format!("an {family} address range IP-IP of literals (no host names)"),
        ),
        Check::NatRange => need(
            nat_range(family, v),
            match family {
                Family::V4 => "IP[-IP][:port[-port]] with IP address literals (no host names)",
                Family::V6 => {
                    "IP[-IP] or [IP][-[IP]][:port[-port]] with IP address literals (no host \
                     names)"
                }
            },
        ),
        Check::PortRange => need(port_range(v), "a port or port range port-port"),
        Check::Iface => check_iface(v),
        Check::Proto => check_proto(v),
        Check::Id => {
            let num =
                |s: &str| !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit());
            let ok = match v.split_once('-') {
                None => num(v),
                Some((a, b)) => num(a) && num(b),
            };
            need(
                ok,
                "a numeric id or id range (names would be looked up through NSS)",
            )
        }
        Check::SetName => need(
            is_word(v) && v.len() <= 31,
            "an ipset name (at most 31 printable ASCII characters)",
        ),
        Check::SetFlags => {
            let parts: Vec<&str> = v.split(',').collect();
            need(
                parts.len() <= 6 && parts.iter().all(|p| matches!(*p, "src" | "dst")),
                "src/dst flags, comma-separated (at most 6)",
            )
        }
        Check::Name(max) => need(
            !v.is_empty()
                && v.len() <= max
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            &format!("a name of at most {max} letters, digits, '_' or '-'"),
        ),
        Check::Mac => {
            let parts: Vec<&str> = v.split(':').collect();
            need(
                parts.len() == 6
                    && parts
                        .iter()
                        .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit())),
                "a MAC address XX:XX:XX:XX:XX:XX",
            )
        }
    }
}

/// The identity of a long option for ambiguity, as `getopt` compares `(has_arg, flag, val)`:
/// a core option by its short letter, an extension option by module and id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Core(char),
    Ext(&'static str, u8),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    name: &'static str,
    arg: Arg,
    key: Key,
    ext: Option<(&'static Module, &'static OptDef, bool)>, // (module, option, is target)
}

/// The rule's words as iptables reads them, normalised (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Parsed {
    /// The normalised words.
    pub tokens: Vec<Token>,
    /// Index in `tokens` of the `-j`/`-g` word.
    pub target_at: Option<usize>,
    /// The `-j`/`-g` target.
    pub target: Option<String>,
}

struct Parser<'a> {
    field: &'a str,
    family: Family,
    /// The words as given, for error messages (rendered only when one is needed).
    input: &'a [Token],
    /// Loaded matches and target, oldest first (`getopt` sees the newest options first).
    loaded: Vec<(&'static Module, bool)>,
    proto: Option<String>,
    proto_used: bool,
    seen: Vec<char>,
    out: Vec<Token>,
    target_at: Option<usize>,
    target: Option<String>,
}

enum Lookup {
    Found(Entry),
    Ambiguous(Vec<&'static str>),
    Unknown,
}

fn bare(value: impl Into<String>) -> Token {
    Token {
        value: value.into(),
        quoted: false,
    }
}

impl Parser<'_> {
    fn err(&self, reason: impl Into<String>) -> Error {
        let text = self
            .input
            .iter()
            .map(Token::render)
            .collect::<Vec<_>>()
            .join(" ");
        Error::invalid(self.field, &text, reason)
    }

    /// Every long option known now: iptables' own, then the loaded modules', newest first.
    fn entries(&self) -> impl Iterator<Item = Entry> + '_ {
        let core = CORE_LONG.iter().map(|&(name, arg, c)| Entry {
            name,
            arg,
            key: Key::Core(c),
            ext: None,
        });
        let ext = self.loaded.iter().rev().flat_map(|&(m, is_target)| {
            m.opts.iter().map(move |o| Entry {
                name: o.name,
                arg: o.arg,
                key: Key::Ext(m.name, o.id),
                ext: Some((m, o, is_target)),
            })
        });
        core.chain(ext)
    }

    /// `getopt_long`'s lookup: an exact name wins (the first in table order), else a prefix
    /// shared only by options with the same identity.
    fn lookup(&self, name: &str) -> Lookup {
        if let Some(e) = self.entries().find(|e| e.name == name) {
            return Lookup::Found(e);
        }
        let hits: Vec<Entry> = self
            .entries()
            .filter(|e| e.name.starts_with(name))
            .collect();
        match hits.first() {
            None => Lookup::Unknown,
            Some(first)
                if hits
                    .iter()
                    .all(|e| e.key == first.key && e.arg == first.arg) =>
            {
                Lookup::Found(*first)
            }
            Some(_) => {
                let mut names: Vec<&str> = Vec::new();
                for e in &hits {
                    if !names.contains(&e.name) {
                        names.push(e.name);
                    }
                }
                Lookup::Ambiguous(names)
            }
        }
    }

    /// iptables' reaction to an option no loaded module knows: load the protocol's match once
    /// and read the word again.
    fn load_proto(&mut self) -> bool {
        if self.proto_used {
            return false;
        }
        self.proto_used = true;
        let Some(m) = self
            .proto
            .as_deref()
            .and_then(|p| proto_match(self.family, p))
        else {
            return false;
        };
        if self.loaded.iter().any(|(l, t)| !t && l.name == m.name) {
            return false;
        }
        self.loaded.push((m, false));
        true
    }

    fn loaded_names(&self) -> String {
        if self.loaded.is_empty() {
            return "no match or target is loaded".to_owned();
        }
        let names: Vec<String> = self
            .loaded
            .iter()
            .map(|(m, t)| format!("{} {}", if *t { "-j" } else { "-m" }, m.name))
            .collect();
        format!("loaded: {}", names.join(", "))
    }

    fn run(&mut self, input: &[Token]) -> Result<(), Error> {
        let mut neg = false;
        let mut i = 0;
        while i < input.len() {
            let tok = &input[i];
            let word = tok.value.as_str();
            i += 1;
            if word == "!" {
                if neg {
                    return Err(self.err("two '!' in a row"));
                }
                neg = true;
                continue;
            }
            if word == "--" {
                return Err(self.err("\"--\" ends iptables' options; it has no place in a rule"));
            }
            if let Some(body) = word.strip_prefix("--") {
                let (name, inline) = match body.split_once('=') {
                    Some((n, v)) => (n, Some(v)),
                    None => (body, None),
                };
                if name.is_empty() {
                    return Err(self.err(format!("{} names no option", quoted(word))));
                }
                let entry = loop {
                    match self.lookup(name) {
                        Lookup::Found(e) => break e,
                        Lookup::Ambiguous(all) => {
                            return Err(self.err(format!(
                                "option {} is an ambiguous abbreviation (of --{})",
                                quoted(&format!("--{name}")),
                                all.join(", --")
                            )))
                        }
                        Lookup::Unknown if self.load_proto() => continue,
                        Lookup::Unknown => {
                            return Err(self.err(format!(
                                "unknown option {} (not an option of iptables or of a match or \
                                 target l3agent allows; {})",
                                quoted(&format!("--{name}")),
                                self.loaded_names()
                            )))
                        }
                    }
                };
                let spelled = concat("--", name);
                let value = match (entry.arg, inline) {
                    (Arg::No, Some(_)) => {
                        return Err(self.err(format!("option --{} takes no value", entry.name)))
                    }
                    (Arg::No, None) | (Arg::Optional, None) => None,
                    (_, Some(v)) => Some(Token {
                        value: v.to_owned(),
                        quoted: tok.quoted,
                    }),
                    (Arg::Required, None) => match input.get(i) {
                        Some(t) => {
                            i += 1;
                            Some(t.clone())
                        }
                        None => {
                            return Err(self.err(format!("option --{} needs a value", entry.name)))
                        }
                    },
                };
                let opt = concat("--", entry.name);
                i = self.dispatch(&spelled, &opt, entry, value, neg, input, i)?;
                neg = false;
                continue;
            }
            let Some(cluster) = word.strip_prefix('-').filter(|c| !c.is_empty()) else {
                return Err(self.err(format!(
                    "unexpected word {}: iptables would stop with \"Bad argument\" (quote a value \
                     that contains spaces, and give it to the option that takes it)",
                    quoted(word)
                )));
            };
            for (at, c) in cluster.char_indices() {
                let rest = &cluster[at + c.len_utf8()..];
                let Some(arg) = short_arg(c) else {
                    return Err(self.err(format!("unknown option {}", quoted(&format!("-{c}")))));
                };
                let (value, done) = match arg {
                    Arg::No => (None, false),
                    Arg::Optional => (
                        (!rest.is_empty()).then(|| Token {
                            value: rest.to_owned(),
                            quoted: tok.quoted,
                        }),
                        true,
                    ),
                    Arg::Required if !rest.is_empty() => (
                        Some(Token {
                            value: rest.to_owned(),
                            quoted: tok.quoted,
                        }),
                        true,
                    ),
                    Arg::Required => match input.get(i) {
                        Some(t) => {
                            i += 1;
                            (Some(t.clone()), true)
                        }
                        None => {
                            return Err(self.err(format!("option -{c} needs a value")));
                        }
                    },
                };
                let entry = Entry {
                    name: long_of(c).unwrap_or(""),
                    arg,
                    key: Key::Core(c),
                    ext: None,
                };
                let mut spelled = String::with_capacity(2);
                spelled.push('-');
                spelled.push(c);
                i = self.dispatch(&spelled, &spelled, entry, value, neg, input, i)?;
                neg = false;
                if done {
                    break;
                }
            }
        }
        if neg {
            return Err(self.err("'!' at the end of the rule negates nothing"));
        }
        Ok(())
    }

    /// Checks one option and appends its normalised words; returns the index of the next word
    /// (after any extra value the option takes by itself).
    #[allow(clippy::too_many_arguments)]
    fn dispatch(
        &mut self,
        spelled: &str,
        opt: &str,
        entry: Entry,
        value: Option<Token>,
        neg: bool,
        input: &[Token],
        mut i: usize,
    ) -> Result<usize, Error> {
        if let Some(v) = &value {
            if v.value == "!" {
                return Err(self.err(format!(
                    "'!' goes before the option: write \"! {opt} <value>\""
                )));
            }
        }
        let value_str: Option<&str> = value.as_ref().map(|t| t.value.as_str());
        // Words go straight to the output: an error discards the whole rule.
        if neg {
            self.out.push(bare("!"));
        }
        match entry.key {
            Key::Core(c) => {
                if let Some(why) = forbidden(c) {
                    let also = long_of(c)
                        .map(|l| format!("--{l}"))
                        .filter(|full| full != spelled)
                        .map(|full| format!(" ({full})"))
                        .unwrap_or_default();
                    return Err(
                        self.err(format!("{spelled:?} is not allowed in a rule{also}: {why}"))
                    );
                }
                if matches!(c, 'j' | 'g') && self.target.is_some() {
                    return Err(self.err("more than one target (-j/-g)"));
                }
                if "sdpiof".contains(c) {
                    if self.seen.contains(&c) {
                        return Err(self.err(format!("option -{c} is given twice")));
                    }
                    self.seen.push(c);
                }
                let v = value_str.unwrap_or_default();
                if value.is_some() && v.starts_with('-') {
                    return Err(self.err(format!("value {} of {opt} starts with '-'", quoted(v))));
                }
                match c {
                    's' | 'd' => {
                        parse_addr(self.family, v).map_err(|r| self.err(r))?;
                    }
                    'i' | 'o' => check_iface(v).map_err(|r| self.err(r))?,
                    'p' => {
                        check_proto(v).map_err(|r| self.err(r))?;
                        self.proto = Some(v.to_ascii_lowercase());
                    }
                    'f' if self.family == Family::V6 => {
                        return Err(self.err("ip6tables has no -f (use -m frag)"));
                    }
                    'f' => {}
                    'm' => {
                        if neg {
                            return Err(self.err("'!' cannot negate -m (negate its options)"));
                        }
                        let Some(m) = find_match(self.family, v) else {
                            return Err(self.err(format!(
                                "match {} is not supported by l3agent (supported for {}: {})",
                                quoted(&format!("-m {v}")),
                                self.family,
                                names(MATCHES, self.family)
                            )));
                        };
                        if !self.loaded.iter().any(|(l, t)| !t && l.name == m.name) {
                            self.loaded.push((m, false));
                        }
                        self.out.push(bare(opt));
                        self.out.push(bare(m.name));
                        return Ok(i);
                    }
                    'j' | 'g' => {
                        if neg {
                            return Err(self.err(format!("'!' cannot negate {opt}")));
                        }
                        let module = (c == 'j').then(|| find_target(v)).flatten();
                        if let Some(m) = module {
                            self.loaded.push((m, true));
                        } else if !is_jump_chain(v) {
                            return Err(self.err(format!(
                                "{opt} {}: not a target l3agent supports ({}) nor a user chain \
                                 (a chain name of letters, digits, '_', '-' and '.' with a \
                                 lower-case letter or '-': iptables takes an upper-case name for \
                                 a target extension first)",
                                quoted(v),
                                names(TARGETS, self.family)
                            )));
                        }
                        self.target_at = Some(self.out.len());
                        self.target = Some(v.to_owned());
                    }
                    _ => {}
                }
            }
            Key::Ext(..) => {
                let (module, def, is_target) = entry.ext.expect("extension entries carry it");
                if neg && is_target {
                    return Err(self.err(format!("'!' cannot negate the target option {opt}")));
                }
                if let Some(v) = &value_str {
                    let free_text = matches!(def.check, Check::Comment | Check::Text(_));
                    if v.starts_with('-') && !free_text {
                        return Err(
                            self.err(format!("value {} of {opt} starts with '-'", quoted(v)))
                        );
                    }
                    check_value(self.family, def.check, v).map_err(|r| {
                        self.err(format!("{opt} ({} {}): {r}", kind(is_target), module.name))
                    })?;
                }
                self.out.push(bare(opt));
                self.out.extend(value);
                if let Some(extra) = def.extra {
                    let next = input.get(i).map(|t| t.value.as_str());
                    match next {
                        Some(v) if !v.starts_with('-') && !v.starts_with('!') => {
                            check_value(self.family, extra, v).map_err(|r| {
                                self.err(format!(
                                    "{opt} ({} {}): {r}",
                                    kind(is_target),
                                    module.name
                                ))
                            })?;
                            self.out.push(input[i].clone());
                            i += 1;
                        }
                        _ => return Err(self.err(format!("option {opt} needs two values"))),
                    }
                }
                return Ok(i);
            }
        }
        self.out.push(bare(opt));
        self.out.extend(value);
        Ok(i)
    }
}

/// `a` followed by `b`, without the formatting machinery (this is on every option's path).
fn concat(a: &str, b: &str) -> String {
    let mut s = String::with_capacity(a.len() + b.len());
    s.push_str(a);
    s.push_str(b);
    s
}

fn kind(is_target: bool) -> &'static str {
    if is_target {
        "target"
    } else {
        "match"
    }
}

/// Reads `input` (the tokens of one rule, after `$chain` expansion) the way iptables 1.8
/// does, refuses what is not a safe rule specification, and returns the normalised words (see
/// the module doc). `field` names the rule in errors.
pub(crate) fn parse(field: &str, family: Family, input: &[Token]) -> Result<Parsed, Error> {
    let mut p = Parser {
        field,
        family,
        input,
        loaded: Vec::new(),
        proto: None,
        proto_used: false,
        seen: Vec::new(),
        out: Vec::with_capacity(input.len() + 2),
        target_at: None,
        target: None,
    };
    p.run(input)?;
    Ok(Parsed {
        tokens: p.out,
        target_at: p.target_at,
        target: p.target,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rule::tokenize;

    fn words(family: Family, text: &str) -> Result<String, String> {
        let tokens = tokenize("rule", text).map_err(|e| e.to_string())?;
        parse("rule", family, &tokens)
            .map(|p| {
                p.tokens
                    .iter()
                    .map(Token::render)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .map_err(|e| e.to_string())
    }

    fn v4(text: &str) -> Result<String, String> {
        words(Family::V4, text)
    }

    #[test]
    fn the_option_tables_match_iptables() {
        assert_eq!(short_arg('s'), Some(Arg::Required));
        assert_eq!(short_arg('f'), Some(Arg::No));
        assert_eq!(short_arg('w'), Some(Arg::Optional));
        assert_eq!(short_arg('M'), Some(Arg::Required));
        assert_eq!(short_arg('y'), None);
        assert_eq!(short_arg(':'), None);
        // Every long option stands for a short one with the same argument rule.
        for (name, arg, c) in CORE_LONG {
            if *c != '0' {
                assert_eq!(short_arg(*c), Some(*arg), "--{name}");
            }
        }
        // No module lists an option twice, and synonyms agree on their argument.
        for m in MATCHES.iter().chain(TARGETS) {
            for (i, a) in m.opts.iter().enumerate() {
                for b in &m.opts[i + 1..] {
                    assert_ne!(a.name, b.name, "{}", m.name);
                    if a.id == b.id {
                        assert_eq!(a.arg, b.arg, "{} --{}", m.name, a.name);
                    }
                }
            }
        }
    }

    #[test]
    fn long_options_are_found_by_any_unambiguous_prefix_and_written_in_full() {
        assert_eq!(v4("--sou 192.0.2.1").unwrap(), "--source 192.0.2.1");
        assert_eq!(v4("--src 192.0.2.1").unwrap(), "--src 192.0.2.1");
        assert_eq!(
            v4("--prot tcp --dp 22").unwrap(),
            "--protocol tcp --dport 22"
        );
        assert_eq!(
            v4("--ma comment --comm x").unwrap(),
            "--match comment --comment x"
        );
        assert_eq!(v4("--fr").unwrap(), "--fragments");
        assert_eq!(
            v4("-j DNAT --to-d 192.0.2.1").unwrap(),
            "-j DNAT --to-destination 192.0.2.1"
        );
        // An exact name wins over longer ones it prefixes: `--set` of `-m set`.
        assert_eq!(v4("-m set --set s src").unwrap(), "-m set --set s src");
    }

    #[test]
    fn an_ambiguous_abbreviation_is_an_error() {
        for (text, names) in [
            ("--m tcp", "--match, --modprobe"),
            (
                "--d 192.0.2.1",
                "--delete, --delete-chain, --destination, --dst",
            ),
            ("--in eth0", "--insert, --in-interface"),
            ("-p tcp -m tcp --sou 22", "--source, --source-port"),
            ("-j MARK --set 1", "--set-counters, --set-mark, --set-xmark"),
        ] {
            let e = v4(text).unwrap_err();
            assert!(
                e.contains("ambiguous abbreviation") && e.contains(names),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn equals_forms_and_glued_short_options_become_two_words() {
        assert_eq!(
            v4("--protocol=tcp --dport=22").unwrap(),
            "--protocol tcp --dport 22"
        );
        assert_eq!(
            v4("-ptcp -s192.0.2.1 -jACCEPT").unwrap(),
            "-p tcp -s 192.0.2.1 -j ACCEPT"
        );
        assert_eq!(v4("-fjACCEPT").unwrap(), "-f -j ACCEPT");
        assert_eq!(v4("-fj ACCEPT").unwrap(), "-f -j ACCEPT");
        assert_eq!(
            v4("\"--comment=a b\"").unwrap_err(),
            "rule: invalid value \"\\\"--comment=a b\\\"\": unknown option \"--comment\" (not an option of iptables or of a match or target l3agent allows; no match or target is loaded)"
        );
        assert_eq!(
            v4("-m comment \"--comment=a b\"").unwrap(),
            "-m comment --comment \"a b\""
        );
        assert!(v4("--fragments=1").unwrap_err().contains("takes no value"));
        assert!(v4("--=x").unwrap_err().contains("names no option"));
    }

    #[test]
    fn quotes_do_not_hide_an_option_from_getopt() {
        for text in ["\"-M\" /bin/sh", "\"--modprobe\" /bin/sh", "\"-vM/bin/sh\""] {
            assert!(v4(text).unwrap_err().contains("is not allowed"), "{text}");
        }
        // A quoted value stays a value.
        assert_eq!(
            v4("-m comment --comment \"-M /bin/sh\"").unwrap(),
            "-m comment --comment \"-M /bin/sh\""
        );
    }

    #[test]
    fn the_protocol_match_is_loaded_when_iptables_would_load_it() {
        assert_eq!(v4("-p tcp --dport 22").unwrap(), "-p tcp --dport 22");
        assert_eq!(v4("-p 17 --sport 53").unwrap(), "-p 17 --sport 53");
        // Unknown before -p, or to a protocol without a match.
        assert!(v4("--dport 22 -p tcp")
            .unwrap_err()
            .contains("unknown option \"--dport\""));
        assert!(v4("-p gre --dport 22")
            .unwrap_err()
            .contains("unknown option"));
        assert!(v4("-p tcp --foo 1").unwrap_err().contains("loaded: -m tcp"));
        assert_eq!(
            words(Family::V6, "-p icmpv6 --icmpv6-type 128").unwrap(),
            "-p icmpv6 --icmpv6-type 128"
        );
        assert!(words(Family::V6, "-p icmp --icmp-type 8").is_err());
    }

    #[test]
    fn values_cannot_be_options_or_a_misplaced_negation() {
        for text in [
            "-s -j",
            "-m conntrack --ctstate -M",
            "-p tcp --tcp-flags SYN -M",
            "-m set --match-set s -c",
            "-m mark --mark !",
            "-p tcp --dport ! 22",
            "! ! -s 192.0.2.1",
            "-s 192.0.2.1 !",
            "! -m tcp",
            "! -j ACCEPT",
            "-j REJECT ! --reject-with tcp-reset",
        ] {
            assert!(v4(text).is_err(), "{text}");
        }
        assert_eq!(
            v4("! -s 192.0.2.1 -p tcp ! --syn").unwrap(),
            "! -s 192.0.2.1 -p tcp ! --syn"
        );
    }

    #[test]
    fn stray_words_and_repeated_options_are_errors() {
        for text in [
            "-j ACCEPT COMMIT",
            "*filter",
            ":INPUT ACCEPT",
            "-",
            "-- -s 192.0.2.1",
            "-s 192.0.2.1 -s 192.0.2.2",
            "--src 192.0.2.1 -s 192.0.2.2",
            "-j ACCEPT -j DROP",
            "-j ACCEPT -g x-y",
            "-y",
        ] {
            assert!(v4(text).is_err(), "{text}");
        }
    }

    #[test]
    fn only_allowlisted_matches_and_targets_load() {
        for m in MATCHES.iter().filter(|m| m.family != Some(Family::V6)) {
            assert!(v4(&format!("-m {}", m.name)).is_ok(), "-m {}", m.name);
        }
        for t in TARGETS {
            assert!(v4(&format!("-j {}", t.name)).is_ok(), "-j {}", t.name);
        }
        for refused in [
            "bpf", "recent", "u32", "string", "cgroup", "time", "socket", "TCP", "\"\"",
        ] {
            let e = v4(&format!("-m {refused}")).unwrap_err();
            assert!(e.contains("is not supported by l3agent"), "{e}");
        }
        for refused in [
            "LED",
            "NFQUEUE",
            "QUEUE",
            "TEE",
            "IDLETIMER",
            "SECMARK",
            "AUDIT",
            "SET",
            "FOO_1",
        ] {
            let e = v4(&format!("-j {refused}")).unwrap_err();
            assert!(e.contains("not a target l3agent supports"), "{e}");
        }
        // Jumps to user chains.
        for chain in ["neutron-filter-top", "w-fw", "mychain", "a.b-C"] {
            assert!(v4(&format!("-j {chain}")).is_ok(), "{chain}");
            assert!(v4(&format!("-g {chain}")).is_ok(), "{chain}");
        }
        for bad in [
            "-g ACCEPT",
            "-j a/b",
            "-j \"a b\"",
            "-j x-chain-name-longer-than-28-chars",
        ] {
            assert!(v4(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn values_iptables_would_look_up_must_be_literals() {
        for (good, bad) in [
            ("-s 192.0.2.0/24", "-s localhost"),
            ("-d 192.0.2.1", "-d 192.0.2.1,192.0.2.2"),
            (
                "-m conntrack --ctorigdst 192.0.2.0/24",
                "-m conntrack --ctorigdst gw",
            ),
            (
                "-m policy --dir in --pol ipsec --tunnel-dst 192.0.2.1",
                "-m policy --dir in --pol ipsec --tunnel-dst a.example",
            ),
            (
                "-m iprange --dst-range 192.0.2.1-192.0.2.9",
                "-m iprange --dst-range 192.0.2.1",
            ),
            ("-m owner --gid-owner 100", "-m owner --gid-owner wheel"),
            ("-p udplite", "-p ipencap"),
            ("-p 0", "-p 06"),
            ("-m conntrack --ctproto 6", "-m conntrack --ctproto ggp"),
            (
                "-j SNAT --to-source 192.0.2.1:1000-2000",
                "-j SNAT --to-source 192.0.2.1:http",
            ),
            (
                "-j DNAT --to-destination 192.0.2.1-192.0.2.5",
                "-j DNAT --to-destination 192.0.2.1-gw",
            ),
            (
                "-j MASQUERADE --to-ports 1000-2000",
                "-j MASQUERADE --to-ports http",
            ),
            (
                "-m hashlimit --hashlimit-upto 5/s --hashlimit-name fip-1",
                "-m hashlimit --hashlimit-upto 5/s --hashlimit-name ../x",
            ),
            ("-j CT --helper ftp", "-j CT --helper ../../x"),
            (
                "-m mac --mac-source 00:11:22:33:44:55",
                "-m mac --mac-source 00:11:22:33:44",
            ),
            (
                "-m set --match-set my.set src,dst",
                "-m set --match-set my.set src,via",
            ),
        ] {
            assert!(v4(good).is_ok(), "{good}: {:?}", v4(good));
            assert!(v4(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn interface_names_must_be_linux_device_names() {
        for good in [
            "eth0",
            "eth+",
            "qg-184a6791-c4",
            "tap1234567890ab",
            "br.100",
            "a_b",
        ] {
            assert!(v4(&format!("-i {good}")).is_ok(), "{good}");
            assert!(
                v4(&format!("-m physdev --physdev-out {good}")).is_ok(),
                "{good}"
            );
        }
        for bad in [
            "",
            "a/b",
            "a:b",
            ".",
            "..",
            "eth 0",
            "tap1234567890abc",
            "e\u{e9}th",
            "eth++",
            "+",
        ] {
            assert!(v4(&format!("-o \"{bad}\"")).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn log_prefixes_and_comments_are_free_text_within_their_limits() {
        assert_eq!(
            v4("-j LOG --log-prefix \"-- drop: \"").unwrap(),
            "-j LOG --log-prefix \"-- drop: \""
        );
        assert!(v4(&format!("-j LOG --log-prefix \"{}\"", "x".repeat(30))).is_err());
        assert!(v4(&format!("-m comment --comment \"{}\"", "x".repeat(256))).is_err());
        assert!(v4("-m comment --comment \"\"").is_err());
        assert!(v4("-m comment --comment \"l3agent:w:00000000000000ff\"")
            .unwrap_err()
            .contains("reserved"));
    }

    #[test]
    fn the_allowlist_in_the_module_doc_is_the_allowlist() {
        let doc: String = include_str!("argv.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("//!"))
            .collect::<Vec<_>>()
            .join(" ");
        let doc = doc.split_whitespace().collect::<Vec<_>>().join(" ");
        let list = |l: &[Module]| l.iter().map(|m| m.name).collect::<Vec<_>>().join(" ");
        assert!(
            doc.contains(&format!("matches `{}`", list(MATCHES))),
            "{doc}"
        );
        assert!(
            doc.contains(&format!("targets `{}`", list(TARGETS))),
            "{doc}"
        );
    }
}
