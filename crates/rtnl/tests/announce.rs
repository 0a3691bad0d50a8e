//! The address announcer against the real kernel: two throwaway namespaces joined by a veth,
//! the peer set to learn from unsolicited ARP and neighbour advertisements, and its neighbour
//! table read back. Needs root; fails (never skips) without it.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use l3agent_rtnl::announce::{AnnounceOptions, Announcer};
use l3agent_rtnl::netns::NetnsError;
use l3agent_rtnl::prelude::*;
use l3agent_rtnl::sysctl::{self, Scope, Sysctl};
use l3agent_rtnl::{Netns, Rtnl};
use l3agent_testkit::TestNs;
use l3agent_types::{IfName, NetnsName};

fn name(s: &str) -> IfName {
    IfName::new("test", s).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn nsname(ns: &TestNs) -> NetnsName {
    NetnsName::new("ns", &ns.name).unwrap()
}

fn opts(ms: u64) -> AnnounceOptions {
    AnnounceOptions {
        rounds: 3,
        interval: Duration::from_millis(ms),
    }
}

/// A router namespace with `qg` holding `addrs`, joined by a veth to a peer namespace whose
/// `ext` end learns from gratuitous ARP and unsolicited NA.
struct Pair {
    a: TestNs,
    b: TestNs,
    na: Netns,
    ra: Rtnl,
    rb: Rtnl,
    qg: IfName,
    ext: IfName,
    mac: [u8; 6],
}

fn pair(tag: &str, addrs: &[&str]) -> Pair {
    let a = TestNs::new(&format!("{tag}-a"));
    let b = TestNs::new(&format!("{tag}-b"));
    let na = Netns::open(&nsname(&a)).unwrap();
    let nb = Netns::open(&nsname(&b)).unwrap();
    let mut ra = Rtnl::open(&na).unwrap();
    let mut rb = Rtnl::open(&nb).unwrap();
    let (qg, ext) = (name("qg-ann"), name("ext-ann"));
    ra.add_veth(&qg, &ext, Some(nb.fd()), None).unwrap();
    // The peer learns: ARP from gratuitous ARP; IPv6 entries from untracked NA, which the
    // kernel only creates on a forwarding interface (RFC 9131).
    sysctl::write(
        &nb,
        &[
            (Sysctl::ArpAccept(Scope::Dev(ext.clone())), 1),
            (Sysctl::Ipv6Forwarding(Scope::Dev(ext.clone())), 1),
        ],
    )
    .unwrap();
    let key = format!("/proc/sys/net/ipv6/conf/{ext}/accept_untracked_na");
    nb.run::<_, NetnsError>(|| std::fs::write(&key, "1\n"))
        .unwrap()
        .unwrap_or_else(|e| panic!("writing {key} in {}: {e}", b.name));
    ra.set_up(&qg, true).unwrap();
    rb.set_up(&ext, true).unwrap();
    for a in addrs {
        ra.add_address(&qg, net(a), true).unwrap();
    }
    rb.add_address(&ext, net("192.0.2.1/24"), true).unwrap();
    rb.add_address(&ext, net("2001:db8::1/64"), false).unwrap();
    let mac = ra.link(&qg).unwrap().unwrap().mac.unwrap();
    // Under load the kernel's link watcher can take a while to carry a new veth to operstate
    // UP (until then its queue discards what is sent), and the peer's IPv6 address stays
    // tentative until DAD ends: announcing before both is announcing into the void.
    wait_ready(&a, qg.as_str(), false);
    wait_ready(&b, ext.as_str(), true);
    Pair {
        a,
        b,
        na,
        ra,
        rb,
        qg,
        ext,
        mac,
    }
}

/// Waits (at most 10 s) until `dev` in `ns` is operationally up and, with `settled`, has no
/// tentative IPv6 address left.
fn wait_ready(ns: &TestNs, dev: &str, settled: bool) {
    let start = Instant::now();
    loop {
        let up = ns
            .ok(&["ip", "-o", "link", "show", "dev", dev])
            .contains("state UP");
        let tentative = settled
            && !ns
                .ok(&["ip", "-6", "-o", "addr", "show", "dev", dev, "tentative"])
                .trim()
                .is_empty();
        if up && !tentative {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{dev} in {} not ready after 10 s (up: {up}, tentative addresses: {tentative})",
            ns.name
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Pair {
    /// The MAC the peer has for `addr`, if any.
    fn learned(&mut self, addr: IpAddr) -> Option<[u8; 6]> {
        self.rb
            .neighbours(&self.ext)
            .unwrap()
            .into_iter()
            .find(|n| n.ip == addr)
            .and_then(|n| n.mac)
    }

    /// Waits (at most 2 s) until the peer has `addr` with the router's MAC.
    fn wait_learned(&mut self, addr: IpAddr) {
        let start = Instant::now();
        loop {
            let got = self.learned(addr);
            if got == Some(self.mac) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "{} did not learn {addr} -> {:02x?} (has {got:02x?})",
                self.b.name,
                self.mac
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[test]
fn announces_ipv4_and_ipv6_to_the_peer() {
    let mut p = pair("ann", &["192.0.2.10/24", "2001:db8::10/64"]);
    let (v4, v6) = (ip("192.0.2.10"), ip("2001:db8::10"));
    assert_eq!(p.learned(v4), None, "nothing announced yet");
    assert_eq!(p.learned(v6), None, "nothing announced yet");
    let ann = Announcer::start(opts(100));
    let start = Instant::now();
    ann.announce(Some(nsname(&p.a)), p.qg.clone(), vec![v4, v6]);
    let took = start.elapsed();
    assert!(
        took < Duration::from_millis(50),
        "announce blocked: {took:?}"
    );
    assert_eq!(ann.pending(), 2);
    assert!(ann.drain(Duration::from_secs(10)), "{:?}", ann.stats());
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "rounds 100 ms apart"
    );
    let s = ann.stats();
    assert_eq!(
        (s.rounds_sent, s.packets_sent, s.failures, s.stopped_gone),
        (6, 3 * 2 + 3, 0, 0),
        "{s:?}"
    );
    p.wait_learned(v4);
    p.wait_learned(v6);
}

#[test]
fn an_address_removed_before_its_second_round_stops() {
    let mut p = pair("gone", &["198.51.100.10/24", "2001:db8::20/64"]);
    // The peer needs a route to the announced IPv4 address to treat it as unicast.
    p.rb.add_address(&p.ext, net("198.51.100.1/24"), true)
        .unwrap();
    let (removed, stays) = (ip("198.51.100.10"), ip("2001:db8::20"));
    let ann = Announcer::start(opts(500));
    ann.announce(Some(nsname(&p.a)), p.qg.clone(), vec![removed, stays]);
    let start = Instant::now();
    while ann.stats().rounds_sent < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "first round not sent: {:?}",
            ann.stats()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "the first round took too long for this test to be meaningful"
    );
    p.ra.delete_address(&p.qg, net("198.51.100.10/24")).unwrap();
    assert!(ann.drain(Duration::from_secs(10)), "{:?}", ann.stats());
    let s = ann.stats();
    assert_eq!(s.stopped_gone, 1, "{s:?}");
    assert_eq!(s.failures, 0, "{s:?}");
    assert_eq!(s.rounds_sent, 1 + 3, "{s:?}");
    assert_eq!(s.packets_sent, 2 + 3, "{s:?}");
    // The first round did reach the peer.
    p.wait_learned(removed);
    p.wait_learned(stays);
}

#[test]
fn a_missing_device_or_namespace_stops_silently() {
    let p = pair("miss", &["203.0.113.10/24"]);
    let ann = Announcer::start(opts(50));
    ann.announce(
        Some(nsname(&p.a)),
        name("qg-nope"),
        vec![ip("203.0.113.10")],
    );
    let missing = NetnsName::new("ns", &format!("{}-never-made", p.a.name)).unwrap();
    ann.announce(Some(missing), p.qg.clone(), vec![ip("203.0.113.10")]);
    assert!(ann.drain(Duration::from_secs(10)));
    let s = ann.stats();
    assert_eq!(
        (s.stopped_gone, s.failures, s.rounds_sent),
        (2, 0, 0),
        "{s:?}"
    );
}

#[test]
fn none_means_the_callers_namespace() {
    let mut p = pair("cur", &["192.0.2.30/24"]);
    let ann = Announcer::start(opts(50));
    let addr = ip("192.0.2.30");
    // Announce from a thread inside the router namespace, naming no namespace.
    let qg = p.qg.clone();
    let theirs = ann.clone();
    p.na.run::<_, NetnsError>(move || theirs.announce(None, qg, vec![addr]))
        .unwrap();
    assert!(ann.drain(Duration::from_secs(10)), "{:?}", ann.stats());
    let s = ann.stats();
    assert_eq!(
        (s.rounds_sent, s.failures, s.stopped_gone),
        (3, 0, 0),
        "{s:?}"
    );
    p.wait_learned(addr);
}

/// A raw packet socket for IPv6 frames on `dev`, opened inside the namespace, reading with a
/// 200 ms timeout.
fn capture_ipv6(ns: &Netns, dev: &IfName) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    ns.run::<_, NetnsError>(move || {
        let cname = std::ffi::CString::new(dev.as_str()).unwrap();
        // SAFETY: a valid NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        assert!(index > 0, "no {dev} here");
        let proto = 0x86ddu16.to_be();
        // SAFETY: plain socket(2), checked and owned right away.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        // SAFETY: fd is fresh and ours.
        let sock = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain old data.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = index as i32;
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        // SAFETY: pointers and lengths are those of live locals.
        unsafe {
            let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
            assert_eq!(
                libc::bind(
                    fd,
                    std::ptr::addr_of!(addr).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32
                ),
                0
            );
            assert_eq!(
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    std::ptr::addr_of!(tv).cast(),
                    std::mem::size_of::<libc::timeval>() as u32
                ),
                0
            );
        }
        sock
    })
    .unwrap()
}

/// One's-complement sum of big-endian 16-bit words, folded.
fn ones_sum(bytes: &[u8]) -> u16 {
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
fn the_neighbour_advertisement_on_the_wire() {
    // veth marks locally sent packets checksum-verified, so the peer's kernel would accept a
    // bad ICMPv6 checksum: check the frame as it arrives, byte by byte.
    let p = pair("wire", &["2001:db8::40/64"]);
    let nb = Netns::open(&nsname(&p.b)).unwrap();
    let sock = capture_ipv6(&nb, &p.ext);
    let target = ip("2001:db8::40");
    let ann = Announcer::start(AnnounceOptions {
        rounds: 1,
        interval: Duration::from_millis(10),
    });
    ann.announce(Some(nsname(&p.a)), p.qg.clone(), vec![target]);
    assert!(ann.drain(Duration::from_secs(10)));
    let IpAddr::V6(t6) = target else { panic!() };
    let start = Instant::now();
    let frame = loop {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "no neighbour advertisement for {target} arrived"
        );
        let mut buf = [0u8; 2048];
        // SAFETY: the buffer outlives the call; the length is its own.
        let n = unsafe {
            libc::recv(
                std::os::fd::AsRawFd::as_raw_fd(&sock),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
            )
        };
        if n < 0 {
            continue; // timeout: look at the deadline again
        }
        let f = buf[..n as usize].to_vec();
        if f.len() >= 14 + 40 + 24 && f[14 + 6] == 58 && f[14 + 40] == 136 {
            break f;
        }
    };
    assert_eq!(
        &frame[0..6],
        &[0x33, 0x33, 0, 0, 0, 1],
        "Ethernet destination"
    );
    assert_eq!(&frame[6..12], &p.mac, "Ethernet source");
    assert_eq!(&frame[12..14], &[0x86, 0xdd]);
    let v6 = &frame[14..];
    assert_eq!(v6.len(), 72);
    assert_eq!((v6[0] >> 4, v6[7]), (6, 255), "version, hop limit");
    assert_eq!(&v6[8..24], &t6.octets(), "source is the address");
    assert_eq!(
        &v6[24..40],
        &"ff02::1".parse::<std::net::Ipv6Addr>().unwrap().octets()
    );
    let icmp = &v6[40..];
    assert_eq!(
        (icmp[0], icmp[1], icmp[4]),
        (136, 0, 0xa0),
        "NA, R=1 S=0 O=1"
    );
    assert_eq!(&icmp[8..24], &t6.octets(), "target");
    assert_eq!(&icmp[24..26], &[2, 1]);
    assert_eq!(&icmp[26..32], &p.mac, "target link-layer address");
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&v6[8..40]);
    pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    pseudo.extend_from_slice(icmp);
    assert_eq!(ones_sum(&pseudo), 0xffff, "ICMPv6 checksum");
}
