//! The router-level benchmark (issues 5 and 9): a cold apply of `count` legacy routers with
//! `fips` floating IPs each on one host, adding one floating IP (with and without the kernel
//! check of the other routers), a no-op apply with the complete drift check, and `destroy
//! --all`, driven as a library user would (`l3agent_router::host`) from inside a throwaway
//! host namespace.
//!
//! The no-op apply is set against its floor, measured in the same run: a minimal program
//! ([`floor`]) doing the same reads with the same number of worker threads, each entering one
//! namespace after the other — the host ends of the namespace's ports by name, one rtnetlink
//! socket in the namespace and its dumps (links, addresses, routes and rules of both families,
//! neighbours), its sysctls, and `iptables-save` plus, where the spec has IPv6 rules,
//! `ip6tables-save` — and nothing else: no decoding, no parsing of the saves, no diff, no state
//! directory, no compile.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use l3agent_iptables::Family;
use l3agent_router::config::{ConfigDoc, HostConfig};
use l3agent_router::host::{self, ApplyOptions, RouterStatus, Unchanged};
use l3agent_router::spec::{DeviceKind, HostSpec};
use l3agent_rtnl::prelude::*;
use l3agent_rtnl::Rtnl;
use l3agent_testkit::TestNs;
use l3agent_types::IfName;
use serde_json::{json, Value};

/// Arguments of `l3agent-bench routers`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Routers.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Floating IPs per router.
    #[arg(long, default_value_t = 10)]
    fips: usize,
    /// Worker threads of the applies, and of the floor.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// No-op applies and floor runs, alternating (the run of median time of each is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Gratuitous ARP / unsolicited NA rounds per new address (Neutron's 3; 0: none, to see
    /// what they cost).
    #[arg(long, default_value_t = 3)]
    garp_rounds: u32,
}

/// Routers per bridge (a Linux bridge takes at most 1024 ports).
pub(crate) const PER_BRIDGE: usize = 500;

/// The external network: every router's gateway and floating IPs are distinct addresses of
/// one /10 (a host refuses a floating IP held by two routers).
const EXT_BASE: u32 = u32::from_be_bytes([100, 64, 0, 0]);

pub(crate) fn ext_ip(n: u32) -> String {
    std::net::Ipv4Addr::from(EXT_BASE + n).to_string()
}

/// Floating IP `f` of router `i`.
pub(crate) fn fip(i: usize, f: usize, fips: usize) -> String {
    ext_ip(0x10000 + u32::try_from(i * fips + f).expect("a few million at most"))
}

pub(crate) fn router(i: usize, fips: usize) -> Value {
    let k = i / PER_BRIDGE;
    let port = |kind: u32, net: String, ip: &str, len: u8, cidr: &str, gw: &str| {
        json!({
            "id": format!("{kind}{i:07x}-0000-4000-8000-000000000000"),
            "network_id": net,
            "mac_address": format!("fa:16:3e:{:02x}:{:02x}:{:02x}", kind, (i >> 8) & 0xff, i & 0xff),
            "mtu": 1500,
            "fixed_ips": [{"ip_address": ip, "prefixlen": len, "subnet_id": format!("s{kind}")}],
            "subnets": [{"id": format!("s{kind}"), "cidr": cidr, "gateway_ip": gw}],
        })
    };
    let floatingips: Vec<Value> = (0..fips)
        .map(|f| json!({"id": format!("f{i}-{f}"), "floating_ip_address": fip(i, f, fips), "fixed_ip_address": format!("192.0.2.{}", 10 + f)}))
        .collect();
    let gw = ext_ip(2 + u32::try_from(i).expect("a few thousand routers"));
    json!({
        "id": format!("{i:08x}-bbbb-4000-8000-000000000000"),
        "gw_port": port(2, format!("ext-{k}"), &gw, 10, "100.64.0.0/10", "100.64.0.1"),
        "_interfaces": [port(1, format!("int-{i}"), "192.0.2.1", 24, "192.0.2.0/24", "192.0.2.1")],
        "_floatingips": floatingips,
    })
}

/// `CLOCK_MONOTONIC` in seconds, to find a step in a profile (`perf record -k mono`).
fn mono() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// CPU seconds used so far by this process and its waited-for children (user + system).
fn cpu() -> f64 {
    let get = |who| {
        // SAFETY: getrusage fills one rusage through a valid pointer.
        let mut r: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(who, &mut r) };
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(r.ru_utime) + tv(r.ru_stime)
    };
    get(libc::RUSAGE_SELF) + get(libc::RUSAGE_CHILDREN)
}

/// Wall-clock and CPU time of a step.
#[derive(Debug, Clone, Copy)]
struct Took {
    wall: f64,
    cpu: f64,
}

/// Times step `name`; with `L3AGENT_BENCH_MARKS` set, prints `begin NAME` before it and
/// `end NAME START END` (monotonic seconds) after it on stderr, to profile one step (e.g. with
/// `perf record -k mono --control`, enabled and disabled on these lines).
fn timed<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<(T, Took)> {
    let marks = std::env::var_os("L3AGENT_BENCH_MARKS").is_some();
    if marks {
        eprintln!("begin {name}");
    }
    let start = mono();
    let c = cpu();
    let t = Instant::now();
    let v = f()?;
    let took = Took {
        wall: t.elapsed().as_secs_f64(),
        cpu: cpu() - c,
    };
    if marks {
        eprintln!("end {name} {start:.3} {:.3}", mono());
    }
    Ok((v, took))
}

/// What the floor reads in one namespace.
struct NsReads {
    name: String,
    /// Sysctl paths split after `net/<x>`: (`net/ipv4`, `conf/all/forwarding`).
    sysctls: Vec<(String, String)>,
    /// Host ends and their bridges.
    host_ends: Vec<(IfName, IfName)>,
    families: Vec<Family>,
}

fn reads(spec: &HostSpec) -> Vec<NsReads> {
    spec.namespaces
        .iter()
        .map(|(name, ns)| NsReads {
            name: name.to_string(),
            sysctls: ns
                .sysctls
                .keys()
                .map(|k| {
                    let p = k.path();
                    let mut parts = p.splitn(3, '/');
                    let (a, b, rest) = (parts.next(), parts.next(), parts.next());
                    (
                        format!("{}/{}", a.unwrap_or(""), b.unwrap_or("")),
                        rest.unwrap_or("").to_owned(),
                    )
                })
                .collect(),
            host_ends: ns
                .devices
                .values()
                .filter_map(|d| match &d.kind {
                    DeviceKind::Port { host_end, bridge } => {
                        Some((host_end.clone(), bridge.clone()))
                    }
                    _ => None,
                })
                .collect(),
            families: Family::ALL
                .into_iter()
                .filter(|f| !l3agent_router::compile::restore_text(&ns.iptables, *f).is_empty())
                .collect(),
        })
        .collect()
}

/// What the floor read, to check it read everything (and so that nothing is optimised out).
#[derive(Debug, Default)]
struct FloorCount {
    objects: usize,
    sysctls: usize,
    save_bytes: usize,
}

/// Raw rtnetlink for the floor: requests sent and answers read, the messages counted but not
/// decoded (observe decodes them; the floor only reads).
mod raw {
    use anyhow::{bail, Result};
    use netlink_packet_core::{
        NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
    };
    use netlink_packet_route::address::AddressMessage;
    use netlink_packet_route::link::{LinkAttribute, LinkMessage};
    use netlink_packet_route::neighbour::NeighbourMessage;
    use netlink_packet_route::route::RouteMessage;
    use netlink_packet_route::rule::RuleMessage;
    use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
    use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;

    /// An rtnetlink socket in the caller's network namespace.
    pub struct Nl {
        socket: Socket,
        seq: u32,
        buf: Vec<u8>,
    }

    impl Nl {
        pub fn open() -> Result<Nl> {
            let mut socket = Socket::new(NETLINK_ROUTE)?;
            socket.bind_auto()?;
            socket.connect(&SocketAddr::new(0, 0))?;
            Ok(Nl {
                socket,
                seq: 0,
                buf: vec![0; 256 * 1024],
            })
        }

        fn send(&mut self, payload: RouteNetlinkMessage, flags: u16) -> Result<u32> {
            self.seq += 1;
            let mut header = NetlinkHeader::default();
            header.flags = flags;
            header.sequence_number = self.seq;
            let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(payload));
            msg.finalize();
            let mut out = vec![0; msg.buffer_len()];
            msg.serialize(&mut out);
            self.socket.send(&out, 0)?;
            Ok(self.seq)
        }

        /// Reads the answers to `seq` until `NLMSG_DONE` or `NLMSG_ERROR` (an ack); returns
        /// how many objects came, and the first one's bytes (for a `get`).
        fn answers(&mut self, seq: u32, keep_first: bool) -> Result<(usize, Vec<u8>)> {
            let (mut n, mut first) = (0, Vec::new());
            loop {
                let len = self.socket.recv(&mut &mut self.buf[..], 0)?;
                let mut off = 0;
                while off + 16 <= len {
                    let b = &self.buf[off..len];
                    let mlen = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
                    let kind = u16::from_ne_bytes([b[4], b[5]]);
                    let mseq = u32::from_ne_bytes([b[8], b[9], b[10], b[11]]);
                    if mlen < 16 || mlen > b.len() {
                        bail!("bad netlink message length {mlen}");
                    }
                    if mseq == seq {
                        match kind {
                            NLMSG_DONE => return Ok((n, first)),
                            NLMSG_ERROR => {
                                let code = i32::from_ne_bytes([b[16], b[17], b[18], b[19]]);
                                if code != 0 {
                                    bail!("netlink error {code}");
                                }
                                return Ok((n, first));
                            }
                            _ => {
                                if keep_first && n == 0 {
                                    first = b[..mlen].to_vec();
                                }
                                n += 1;
                            }
                        }
                    }
                    off += (mlen + 3) & !3;
                }
            }
        }

        /// One dump; the number of objects.
        pub fn dump(&mut self, payload: RouteNetlinkMessage) -> Result<usize> {
            let seq = self.send(payload, NLM_F_REQUEST | NLM_F_DUMP)?;
            Ok(self.answers(seq, false)?.0)
        }

        /// The dumps observe does in a router namespace: links, addresses, routes and rules of
        /// both families, neighbours.
        pub fn observe_dumps(&mut self) -> Result<usize> {
            let mut n = self.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?;
            n += self.dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))?;
            for family in [AddressFamily::Inet, AddressFamily::Inet6] {
                let mut r = RouteMessage::default();
                r.header.address_family = family;
                n += self.dump(RouteNetlinkMessage::GetRoute(r))?;
                let mut r = RuleMessage::default();
                r.header.family = family;
                n += self.dump(RouteNetlinkMessage::GetRule(r))?;
            }
            n += self.dump(RouteNetlinkMessage::GetNeighbour(
                NeighbourMessage::default(),
            ))?;
            Ok(n)
        }

        /// `ip link show NAME`: its master's index, if it exists.
        pub fn master(&mut self, name: &str) -> Result<Option<Option<u32>>> {
            let mut m = LinkMessage::default();
            m.attributes.push(LinkAttribute::IfName(name.to_owned()));
            let seq = self.send(RouteNetlinkMessage::GetLink(m), NLM_F_REQUEST | NLM_F_ACK)?;
            let (n, first) = match self.answers(seq, true) {
                Ok(x) => x,
                Err(_) => return Ok(None),
            };
            if n == 0 {
                return Ok(None);
            }
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&first)?;
            let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) = msg.payload else {
                bail!("unexpected answer to a link get");
            };
            Ok(Some(l.attributes.iter().find_map(|a| match a {
                LinkAttribute::Controller(i) => Some(*i),
                _ => None,
            })))
        }

        /// The index of link `name`.
        pub fn index(&mut self, name: &str) -> Result<Option<u32>> {
            let mut m = LinkMessage::default();
            m.attributes.push(LinkAttribute::IfName(name.to_owned()));
            let seq = self.send(RouteNetlinkMessage::GetLink(m), NLM_F_REQUEST | NLM_F_ACK)?;
            let (n, first) = self.answers(seq, true)?;
            if n == 0 {
                return Ok(None);
            }
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&first)?;
            let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) = msg.payload else {
                bail!("unexpected answer to a link get");
            };
            Ok(Some(l.header.index))
        }
    }
}

/// The floor of a no-op apply: the same reads as observe, with `workers` threads, each
/// entering one namespace after another (no thread per read): the host ends and their bridges
/// by name, then in the namespace one rtnetlink socket and its dumps (links, addresses, routes
/// and rules of both families, neighbours; counted, not decoded), the sysctls (through their
/// `/proc/sys/net/<x>` directories, opened once per namespace), and the saves. Must run on a
/// thread in the host namespace (the workers inherit it).
fn floor(namespaces: &[NsReads], workers: usize, saves: &[(Family, String)]) -> Result<FloorCount> {
    use std::io::Read;
    let queue = Mutex::new(namespaces.iter().collect::<Vec<_>>());
    let total = Mutex::new(FloorCount::default());
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..workers.max(1))
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    let mut host = raw::Nl::open()?;
                    let mut bridges: BTreeMap<IfName, Option<u32>> = BTreeMap::new();
                    let mut count = FloorCount::default();
                    loop {
                        let next = queue.lock().expect("lock").pop();
                        let Some(ns) = next else { break };
                        for (end, bridge) in &ns.host_ends {
                            let master = host.master(end.as_str())?.context("host end missing")?;
                            if !bridges.contains_key(bridge) {
                                let b = host.index(bridge.as_str())?;
                                bridges.insert(bridge.clone(), b);
                            }
                            if master != bridges[bridge] {
                                bail!("{end} is not on {bridge}");
                            }
                        }
                        let f = std::fs::File::open(format!("/run/netns/{}", ns.name))?;
                        nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
                        count.objects += raw::Nl::open()?.observe_dumps()?;
                        let mut dirs: BTreeMap<&str, std::fs::File> = BTreeMap::new();
                        let mut text = String::new();
                        for (dir, rest) in &ns.sysctls {
                            if !dirs.contains_key(dir.as_str()) {
                                dirs.insert(dir, std::fs::File::open(format!("/proc/sys/{dir}"))?);
                            }
                            let fd = nix::fcntl::openat(
                                &dirs[dir.as_str()],
                                rest.as_str(),
                                nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
                                nix::sys::stat::Mode::empty(),
                            );
                            if let Ok(fd) = fd {
                                text.clear();
                                std::fs::File::from(fd).read_to_string(&mut text)?;
                                count.sysctls += 1;
                            }
                        }
                        for family in &ns.families {
                            let program = &saves.iter().find(|(f, _)| f == family).expect("both").1;
                            let out = Command::new(program)
                                .stdin(Stdio::null())
                                .stderr(Stdio::null())
                                .output()?;
                            if !out.status.success() {
                                bail!("{program} failed in {}", ns.name);
                            }
                            count.save_bytes += out.stdout.len();
                        }
                    }
                    let mut t = total.lock().expect("lock");
                    t.objects += count.objects;
                    t.sysctls += count.sysctls;
                    t.save_bytes += count.save_bytes;
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("floor worker panicked"))??;
        }
        Ok(())
    })?;
    Ok(total.into_inner().expect("lock"))
}

/// Host ends (`tap…`) present in the caller's namespace.
fn host_ends_left() -> Result<usize> {
    Ok(Rtnl::current()?
        .links()?
        .iter()
        .filter(|l| l.name.starts_with("tap"))
        .count())
}

/// A throwaway host namespace with the internal and external bridges of `count` routers
/// ([`router`]), and the `agent.bridges` map naming them.
pub(crate) fn host_with_bridges(
    tag: &str,
    count: usize,
) -> (TestNs, serde_json::Map<String, Value>) {
    let host_ns = TestNs::new(tag);
    let mut nets = serde_json::Map::new();
    for k in 0..count.div_ceil(PER_BRIDGE) {
        for kind in ["bi", "be"] {
            let br = format!("{kind}{k}");
            host_ns.ok(&["ip", "link", "add", &br, "type", "bridge"]);
            host_ns.ok(&["ip", "link", "set", &br, "up"]);
        }
        // One external network per bridge (the gateways have addresses of their own on it);
        // each router's tenant network is its own (they all use 192.0.2.0/24), all of a
        // bridge's routers' tenant networks on its tenant bridge.
        nets.insert(format!("ext-{k}"), json!(format!("be{k}")));
        for i in k * PER_BRIDGE..count.min((k + 1) * PER_BRIDGE) {
            nets.insert(format!("int-{i}"), json!(format!("bi{k}")));
        }
    }
    (host_ns, nets)
}

/// Runs the benchmark and returns its Markdown section.
pub fn run_bench(a: &Args) -> Result<String> {
    l3agent_testkit::require_kernel();
    let runs = a.runs.max(1);
    let (host_ns, nets) = host_with_bridges("rhost", a.count);
    let bridges = a.count.div_ceil(PER_BRIDGE);
    let state = std::env::temp_dir().join(format!("l3agent-bench-routers-{}", std::process::id()));
    let mut routers: Vec<Value> = (0..a.count).map(|i| router(i, a.fips)).collect();
    let doc = |routers: &[Value]| -> Result<HostConfig> {
        let v = json!({"agent": {"mode": "legacy", "host": "bench", "state_path": state, "bridges": nets}, "routers": routers});
        let doc: ConfigDoc = serde_json::from_value(v)?;
        doc.validate().map_err(|e| anyhow::anyhow!("{e:?}"))
    };
    let host_path = format!("/run/netns/{}", host_ns.name);
    // Everything runs on a thread inside the host namespace; the workers it spawns inherit it.
    let result = std::thread::scope(|s| {
        s.spawn(|| -> Result<String> {
            let f = std::fs::File::open(&host_path)?;
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)?;
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let facts = l3agent_router::compile::HostFacts {
                random_fully: l3agent_iptables_exec::runner::random_fully_supported(),
            };
            let backend = l3agent_iptables_exec::runner::system_backend()
                .unwrap_or(l3agent_iptables_exec::Backend::Nft);
            let saves: Vec<(Family, String)> = Family::ALL
                .into_iter()
                .map(|f| (f, backend.program(f, "save")))
                .collect();
            let announcer = l3agent_rtnl::announce::Announcer::start(l3agent_rtnl::announce::AnnounceOptions {
                rounds: a.garp_rounds,
                ..Default::default()
            });
            let make = host::real_sides(backend, &announcer);
            let verify = ApplyOptions {
                workers: a.workers,
                ..ApplyOptions::new(facts.clone(), stop.clone())
            };
            let trust = ApplyOptions {
                unchanged: Unchanged::Trust,
                ..verify.clone()
            };
            // The gratuitous ARP rounds of a step (3 rounds, 2 s apart) run in the background;
            // they are let finish before the next step is timed.
            let drain = || -> Result<f64> {
                let t = Instant::now();
                if !announcer.drain(Duration::from_secs(600)) {
                    bail!("announcements still pending after 600 s");
                }
                Ok(t.elapsed().as_secs_f64())
            };
            let cold_cfg = doc(&routers)?;
            let (r, cold) = timed("cold", || Ok(host::apply(&cold_cfg, &verify, &make)?))?;
            if r.failed() {
                bail!("cold apply failed: {:?}", r.routers.iter().find(|x| x.error.is_some()));
            }
            let garp = drain()?;
            let garp_packets = announcer.stats().packets_sent;
            let t = Instant::now();
            routers[a.count / 2]["_floatingips"].as_array_mut().expect("list").push(json!({"id": "new", "floating_ip_address": fip(a.count, 0, a.fips), "fixed_ip_address": "192.0.2.99"}));
            let add_cfg = doc(&routers)?;
            let read = t.elapsed().as_secs_f64();
            let (r, add) = timed("add", || Ok(host::apply(&add_cfg, &verify, &make)?))?;
            let converged: Vec<&str> = r.routers.iter().filter(|x| x.status != RouterStatus::Unchanged).map(|x| x.id.as_str()).collect();
            if converged.len() != 1 {
                bail!("adding one floating IP touched {} routers", converged.len());
            }
            drain()?;
            routers[a.count / 2]["_floatingips"].as_array_mut().expect("list").push(json!({"id": "new2", "floating_ip_address": fip(a.count, 1, a.fips), "fixed_ip_address": "192.0.2.98"}));
            let add2_cfg = doc(&routers)?;
            let (r, trusted) = timed("add-changed-only", || Ok(host::apply(&add2_cfg, &trust, &make)?))?;
            if r.routers.iter().filter(|x| x.status != RouterStatus::Unchanged).count() != 1 {
                bail!("--changed-only touched more than one router");
            }
            drain()?;
            // What every apply starts with, timed alone (legacy routers need no allocations);
            // the floor reads what this spec names.
            let (spec, compiled) = timed("compile", || {
                Ok(l3agent_router::compile::compile(&add2_cfg, &Default::default(), &facts))
            })?;
            let plan = reads(&spec);
            let (mut noops, mut floors) = (Vec::new(), Vec::new());
            let mut floor_count = FloorCount::default();
            for _ in 0..runs {
                let (r, noop) = timed("noop", || Ok(host::apply(&add2_cfg, &verify, &make)?))?;
                if r.changed() || r.failed() {
                    bail!("no-op apply changed something: {:?}", r.changes().next());
                }
                noops.push(noop);
                let (c, fl) = timed("floor", || floor(&plan, a.workers, &saves))?;
                floor_count = c;
                floors.push(fl);
            }
            let by_wall = |mut v: Vec<Took>| {
                v.sort_by(|a, b| a.wall.total_cmp(&b.wall));
                v[v.len() / 2]
            };
            let (noop, fl) = (by_wall(noops), by_wall(floors));
            let ends_before = host_ends_left()?;
            let (_, destroy) = timed("destroy", || Ok(host::destroy(&state, None, &stop, &make)?))?;
            let ends_after = host_ends_left()?;
            // Whatever the kernel had not torn down when destroy returned (destroy waits at
            // most 10 s for it).
            let t = Instant::now();
            let mut left = ends_after;
            while left > 0 && t.elapsed() < Duration::from_secs(120) {
                std::thread::sleep(Duration::from_millis(20));
                left = host_ends_left()?;
            }
            let late = match ends_after {
                0 => String::new(),
                _ => format!(", all gone {:.2} s later", t.elapsed().as_secs_f64()),
            };
            let n = a.count as f64;
            let ms = |s: f64| s * 1000.0;
            let row = |step: &str, t: Took, per_router: bool, floor: Option<Took>| {
                let per = if per_router { format!("{:.2} ms", ms(t.wall) / n) } else { String::new() };
                let (f, ratio) = match floor {
                    Some(f) => (format!("{:.2} s", f.wall), format!("{:.2}x", t.wall / f.wall)),
                    None => (String::new(), String::new()),
                };
                let time = if t.wall < 1.0 { format!("{:.1} ms", ms(t.wall)) } else { format!("{:.2} s", t.wall) };
                format!("| {step} | {time} | {:.2} s | {per} | {f} | {ratio} |\n", t.cpu)
            };
            let mut out = format!(
                "## Routers (router core): {} legacy routers with {f} floating IPs each, on one host\n\n\
                 In-process `host::apply` (library use) from inside a throwaway host namespace, {bridges} bridge(s) per side \
                 (up to {PER_BRIDGE} routers on one external and one internal bridge), {w} worker threads, iptables backend {backend:?}. \
                 Each router: namespace, 8 sysctls, two veth ports on bridges, addresses, gateway and on-link routes, \
                 iptables of both families (SNAT, {f} DNAT/SNAT pairs). \
                 *CPU* is user + system time of this process and the processes it ran (both cores: up to twice the time). \
                 No-op and floor: the run of median time out of {runs} alternating runs; the other steps: one run.\n\n\
                 The *floor* of the no-op apply is a minimal program doing the same reads with the same {w} threads, \
                 each thread entering one namespace after the other: per namespace the host ends of its ports by name in the host namespace, \
                 one rtnetlink socket in the namespace and its dumps (links, addresses, routes and rules of both families, neighbours; \
                 counted, not decoded), its sysctls (through its `/proc/sys/net/<x>` directories) and `iptables-save` and `ip6tables-save` \
                 (the spec has rules in both families: Neutron's chains and jumps); no parsing, no diff, no compile, no state directory. \
                 In all: {ns} namespaces, {obj} netlink objects, {sc} sysctls, {saves} saves ({kb} KiB).\n\n\
                 | step | time | CPU | per router | floor | ratio to floor |\n|---|---:|---:|---:|---:|---:|\n",
                a.count,
                f = a.fips,
                w = a.workers,
                ns = plan.len(),
                sc = floor_count.sysctls,
                saves = plan.iter().map(|p| p.families.len()).sum::<usize>(),
                obj = floor_count.objects,
                kb = floor_count.save_bytes / 1024,
            );
            out += &row("cold apply", cold, true, None);
            out += &format!("| validate the config with one more floating IP | {:.1} ms | | | | |\n", ms(read));
            out += &row("add one floating IP (apply: every router diffed against the kernel)", add, false, Some(fl));
            out += &row("add one floating IP (apply --changed-only)", trusted, false, None);
            out += &row("no-op apply (every router diffed against the kernel: netlink dumps, sysctls, iptables-save of both families)", noop, true, Some(fl));
            out += &row("– of which: compile the host spec (pure, in-process; every apply starts with it)", compiled, false, None);
            out += &row("floor of the no-op apply (the same reads, see above)", fl, true, None);
            out += &row(&format!("destroy --all (host ends: {ends_before} before, {ends_after} left when it returned{late})"), destroy, true, None);
            out += &format!(
                "\nThe gratuitous ARP rounds of the cold apply ({garp_packets} packets: `arping -U` and `-A` equivalents, \
                 3 rounds 2 s apart per new address, each flooded to every port of its bridge) went on in the background \
                 for {garp:.1} s after it returned; each later step starts once the previous one's rounds are done.\n"
            );
            Ok(out)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("benchmark thread panicked"))?
    });
    let _ = std::fs::remove_dir_all(&state);
    result
}
