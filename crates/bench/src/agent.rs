//! `l3agent-bench agent` (issue 11): the long-running agent (`l3agent agent`, the release
//! binary, a process of its own) holding `count` legacy routers with `fips` floating IPs each,
//! from inside a throwaway host namespace:
//!
//! - **cold start to ready**: from the process start on an empty host to `ready` on the
//!   control socket (every router converged);
//! - **event to kernel**: `events` times, one floating IP added to one router by an atomic
//!   rename of the config file (written and flushed to disk first, as configuration tools do);
//!   the time from the start of the rename until both the address and a rule change are in
//!   the kernel (heard from the router namespace's address and nf_tables
//!   notifications, each confirmed by a query), the DNAT rule then checked with
//!   `iptables-save -t nat`; p50 and p99;
//! - its **floor**, measured once after each event (each event and each floor after a 100 ms
//!   pause): one `iptables-restore --noflush` of
//!   the same three rules (DNAT in PREROUTING and OUTPUT, SNAT in float-snat) into the same
//!   chains plus one address add over rtnetlink, in a namespace of its own: what any agent
//!   must at least do;
//! - **idle**: CPU and resident memory of the agent process over `idle_secs` with nothing
//!   changing (the refresh interval is longer than the window), and the processes it started
//!   meanwhile (`l3agent_process_spawns_total` on its `/metrics`);
//! - **restart**: SIGTERM, then a new process on the converged host: time to `ready`, and the
//!   routers it changed (none expected).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use l3agent_rtnl::prelude::*;
use l3agent_rtnl::{Netns, Rtnl};
use l3agent_testkit::TestNs;
use l3agent_types::NetnsName;
use serde_json::{json, Value};

use crate::floor::{inside, FloorNs};

/// The quiet time before each event and each floor.
const PAUSE: Duration = Duration::from_millis(100);
use crate::routers::{fip, host_with_bridges, router};

/// Arguments of `l3agent-bench agent`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Routers.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Floating IPs per router.
    #[arg(long, default_value_t = 10)]
    fips: usize,
    /// Floating IP additions timed, one router each.
    #[arg(long, default_value_t = 50)]
    events: usize,
    /// Seconds of the idle window.
    #[arg(long, default_value_t = 30)]
    idle_secs: u64,
    /// The l3agent binary (default: `l3agent` beside this one).
    #[arg(long)]
    l3agent: Option<PathBuf>,
    /// Keep the work directory (the agents' logs; run with L3AGENT_LOG=debug to see each
    /// step of an event) and print where it is.
    #[arg(long)]
    keep: bool,
}

/// The agent process; killed if the benchmark fails while it runs.
struct Agent {
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
}

impl Agent {
    fn start(bin: &Path, host: &TestNs, config: &Path, dir: &Path, log: &str) -> Result<Agent> {
        let socket = dir.join("run").join("control.sock");
        let log = dir.join(log);
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", host.name))
            .arg(bin)
            .args(["agent", "--config"])
            .arg(config)
            // Longer than the benchmark: the idle window sees no refresh.
            .args([
                "--resync-interval",
                "3600",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .arg("--control-socket")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting l3agent agent")?;
        Ok(Agent {
            child: Some(child),
            socket,
            log,
        })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn status(&self) -> Option<Value> {
        l3agent_agent::control::client::query(
            &self.socket,
            &l3agent_agent::Request::Status { router: None },
            Duration::from_secs(10),
        )
        .ok()
    }

    /// Waits (at most `within`) until the agent is ready.
    fn ready(&mut self, within: Duration) -> Result<Value> {
        let t = Instant::now();
        while t.elapsed() < within {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(Child::try_wait) {
                bail!("the agent exited ({st}):\n{}", self.log_tail());
            }
            if let Some(v) = self.status().filter(|v| v["ready"] == true) {
                return Ok(v);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "the agent was not ready within {within:?}:\n{}",
            self.log_tail()
        )
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGTERM, and the wait for the exit (at most 60 s).
    fn stop(&mut self) -> Result<Duration> {
        let Some(mut child) = self.child.take() else {
            return Ok(Duration::ZERO);
        };
        let t = Instant::now();
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        while t.elapsed() < Duration::from_secs(60) {
            if let Some(st) = child.try_wait()? {
                if !st.success() {
                    bail!("the agent exited with {st}:\n{}", self.log_tail());
                }
                return Ok(t.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!("the agent did not stop within 60 s")
    }

    /// One GET of its metrics, inside the host namespace.
    fn metrics(&self, host: &TestNs) -> Result<String> {
        let addr = self
            .status()
            .and_then(|v| v["metrics_listen"].as_str().map(str::to_owned))
            .context("no metrics address")?;
        host.inside(move || -> Result<String> {
            let mut s = std::net::TcpStream::connect(&addr)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            write!(
                s,
                "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A counter's value in a Prometheus text exposition.
fn counter(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// User + system CPU seconds of process `pid` so far.
fn cpu_of(pid: u32) -> Result<f64> {
    cpu_of_path(&format!("/proc/{pid}/stat"))
}

/// User + system CPU seconds in a `/proc/.../stat` file.
fn cpu_of_path(path: &str) -> Result<f64> {
    let stat = std::fs::read_to_string(path)?;
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = stat.rsplit_once(") ").context("/proc/PID/stat")?.1;
    let f: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of stat: 12 and 13 after the name.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((f[11].parse::<f64>()? + f[12].parse::<f64>()?) / hz)
}

/// CPU seconds per thread name of process `pid` so far.
fn cpu_by_thread(pid: u32) -> Result<std::collections::BTreeMap<String, f64>> {
    let mut out = std::collections::BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let tid: u32 = task?.file_name().to_string_lossy().parse()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
            .unwrap_or_default()
            .trim()
            .to_owned();
        let cpu = cpu_of_path(&format!("/proc/{pid}/task/{tid}/stat")).unwrap_or(0.0);
        *out.entry(comm).or_insert(0.0) += cpu;
    }
    Ok(out)
}

/// Waits until no thread of `pid` used more than 1% of a core for two seconds in a row (at
/// most `within`); returns how long that took.
fn settled(pid: u32, within: Duration) -> Result<f64> {
    let t = Instant::now();
    let mut quiet = 0;
    let mut last = cpu_by_thread(pid)?;
    while t.elapsed() < within {
        std::thread::sleep(Duration::from_secs(1));
        let now = cpu_by_thread(pid)?;
        let busy = now
            .iter()
            .any(|(name, c)| c - last.get(name).copied().unwrap_or(0.0) > 0.01);
        last = now;
        quiet = if busy { 0 } else { quiet + 1 };
        if quiet >= 2 {
            return Ok(t.elapsed().as_secs_f64());
        }
    }
    bail!("the agent was still busy {within:?} after ready")
}

/// `VmRSS` and `VmHWM` of `pid`, in MiB.
fn rss_of(pid: u32) -> Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0)
    };
    Ok((kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0))
}

/// The `q`-quantile of `v` (sorted in place), nearest rank.
fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// Writes the config beside `path` and flushes it to disk, as configuration tools do before
/// their rename: the rename that then puts it in place (`Staged::install`) is the edit the
/// agent hears. Unflushed, ext4's replace-by-rename first starts writing the new file's data
/// back, which blocked the rename behind the disk for milliseconds (the 1.5 MB of 1,000
/// routers) while the agent, woken by the rename, was already at work: timed from the
/// rename's return, those milliseconds of the agent's were not counted.
fn stage_config(path: &Path, agent: &Value, routers: &[Value]) -> Result<Staged> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(
        json!({"agent": agent, "routers": routers})
            .to_string()
            .as_bytes(),
    )?;
    f.sync_all()?;
    Ok(Staged {
        tmp,
        path: path.to_owned(),
    })
}

/// A second link to a file, removed on drop.
struct Kept(PathBuf);

impl Kept {
    fn link(path: &Path) -> Result<Kept> {
        let kept = path.with_extension("replaced");
        let _ = std::fs::remove_file(&kept);
        std::fs::hard_link(path, &kept)?;
        Ok(Kept(kept))
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A config written and flushed beside its path, not yet in place.
struct Staged {
    tmp: PathBuf,
    path: PathBuf,
}

impl Staged {
    fn install(self) -> Result<()> {
        std::fs::rename(&self.tmp, &self.path)?;
        Ok(())
    }
}

/// The kernel's address and nf_tables notifications of one namespace (sockets opened inside
/// it, subscribed to `RTMGRP_IPV4_IFADDR` and `NFNLGRP_NFTABLES`).
struct Notifications {
    addresses: l3agent_rtnl::monitor::AddressMonitor,
    rules: netlink_sys::Socket,
}

impl Notifications {
    fn open(ns: &Netns) -> Result<Notifications> {
        /// `NFNLGRP_NFTABLES`: every committed nf_tables change, `NFT_MSG_NEWGEN` last.
        const NFNLGRP_NFTABLES: u32 = 7;
        let addresses =
            l3agent_rtnl::monitor::AddressMonitor::open(ns).map_err(|e| anyhow::anyhow!("{e}"))?;
        let rules = inside(ns, || {
            let mut s = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_NETFILTER)?;
            s.bind(&netlink_sys::SocketAddr::new(
                0,
                1 << (NFNLGRP_NFTABLES - 1),
            ))?;
            s.set_non_blocking(true)?;
            Ok(s)
        })?;
        Ok(Notifications { addresses, rules })
    }

    /// Waits until an address notification arrives, or with `rules` also an nf_tables one,
    /// at most until `deadline`: when the kernel woke this thread and which ones did, `None`
    /// past the deadline. They are left unread (see [`Notifications::drain`]): reading them
    /// can take milliseconds of its own.
    fn wait(&mut self, deadline: Instant, rules: bool) -> Result<Option<(Instant, bool, bool)>> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let timeout = PollTimeout::try_from(left.max(Duration::from_millis(1)))
                .unwrap_or(PollTimeout::MAX);
            let mut fds = [
                PollFd::new(self.addresses.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.rules.as_fd(), PollFlags::POLLIN),
            ];
            let watched = if rules { &mut fds[..] } else { &mut fds[..1] };
            match poll(watched, timeout) {
                Err(nix::errno::Errno::EINTR) | Ok(0) => continue,
                Err(e) => bail!("waiting for the kernel's notifications: {e}"),
                Ok(_) => {}
            }
            let woken = Instant::now();
            return Ok(Some((
                woken,
                fds[0].any().unwrap_or(false),
                rules && fds[1].any().unwrap_or(false),
            )));
        }
    }

    /// Reads the notifications [`Notifications::wait`] reported (address ones if
    /// `addresses`, nf_tables ones if `rules`), so that the next wait sleeps until new ones.
    fn drain(&mut self, addresses: bool, rules: bool) -> Result<()> {
        if addresses {
            self.addresses.drain().map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        if rules {
            let mut buf = vec![0u8; 64 * 1024];
            // Bounded: at most 1,024 messages (an overrun counts: something changed).
            for _ in 0..1024 {
                match self.rules.recv(&mut &mut buf[..], 0) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
                    Err(e) => bail!("reading nf_tables notifications: {e}"),
                }
            }
        }
        Ok(())
    }
}

fn nat_rules(ns: &Netns) -> Result<String> {
    save(ns, &["-t", "nat"])
}

/// Runs `iptables-save ARGS` in `ns`.
fn save(ns: &Netns, args: &[&str]) -> Result<String> {
    let out = inside(ns, || {
        Ok(Command::new("iptables-save").args(args).output()?)
    })?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One floating IP's rules as l3agent writes them for a legacy router (iptables-save form).
fn fip_rules(fip: &str, fixed: &str) -> [String; 3] {
    [
        format!("-A neutron-l3-agent-PREROUTING -d {fip}/32 -j DNAT --to-destination {fixed}"),
        format!("-A neutron-l3-agent-OUTPUT -d {fip}/32 -j DNAT --to-destination {fixed}"),
        format!("-A neutron-l3-agent-float-snat -s {fixed}/32 -j SNAT --to-source {fip}"),
    ]
}

/// The floor of one event: one `iptables-restore --noflush` of a floating IP's three rules
/// plus one address add, in a namespace of its own holding the three chains they go in,
/// empty — or, with `like`, every rule of a router's namespace (an `iptables-save` of it):
/// `iptables-nft-restore --noflush` reads the tables it writes first, so what they hold is
/// part of the cost of any write into a router. Measured once after each of the agent's
/// events ([`Floor::once`]), so that both see the machine in the same state (this VM's speed
/// moves 2–5x within minutes).
/// The thread that times events and floors runs at a real-time priority while it does
/// (`SCHED_FIFO`, reset in every thread or process it starts): on two cores, the agent's work
/// after an event (its state records, the announcements of the new address) otherwise delays
/// the observer's own wake-up on the kernel's notification, by milliseconds it would count
/// against the agent. Floors are timed by the same thread, their children at normal
/// priority, as the agent's are.
struct Observer {
    raised: std::result::Result<(), String>,
}

impl Observer {
    fn raise() -> Observer {
        let param = libc::sched_param { sched_priority: 10 };
        // SAFETY: sets this thread's own scheduling policy from a local parameter.
        let r = unsafe {
            libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &param)
        };
        Observer {
            raised: if r == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error().to_string())
            },
        }
    }

    /// What the measures were taken at, for the report.
    fn describe(&self) -> String {
        match &self.raised {
            Ok(()) => "SCHED_FIFO".into(),
            Err(e) => format!("normal priority (SCHED_FIFO refused: {e})"),
        }
    }
}

impl Drop for Observer {
    /// Back to normal priority (also on an early return).
    fn drop(&mut self) {
        if self.raised.is_ok() {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: as in `raise`.
            unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) };
        }
    }
}

struct Floor {
    ns: FloorNs,
    done: usize,
}

impl Floor {
    fn new(like: Option<&str>) -> Result<Floor> {
        Ok(Floor {
            ns: FloorNs::new("afloor", like)?,
            done: 0,
        })
    }

    /// One floor event; seconds.
    fn once(&mut self) -> Result<f64> {
        let e = self.done;
        self.done += 1;
        let addr = fip(1_000_000 + e, 0, 1);
        let input = format!(
            "*nat\n{}\nCOMMIT\n",
            fip_rules(&addr, &format!("192.0.2.{}", 100 + e % 100)).join("\n")
        );
        let t = Instant::now();
        self.ns.restore(&input)?;
        self.ns.address(&addr, true)?;
        Ok(t.elapsed().as_secs_f64())
    }
}

/// Runs the benchmark and returns its Markdown section.
pub fn run_bench(a: &Args) -> Result<String> {
    l3agent_testkit::require_kernel();
    let bin = match &a.l3agent {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("l3agent"),
    };
    if !bin.exists() {
        bail!(
            "{}: no such binary (build it: cargo build --release -p l3agent)",
            bin.display()
        );
    }
    let (host, nets) = host_with_bridges("ahost", a.count);
    let dir = std::env::temp_dir().join(format!("l3agent-bench-agent-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("etc"))?;
    let config = dir.join("etc").join("host.json");
    let agent_section = json!({"mode": "legacy", "host": "bench", "state_path": dir.join("state"), "bridges": nets});
    let mut routers: Vec<Value> = (0..a.count).map(|i| router(i, a.fips)).collect();
    stage_config(&config, &agent_section, &routers)?.install()?;
    let result = (|| -> Result<String> {
        // Cold start.
        let t = Instant::now();
        let mut agent = Agent::start(&bin, &host, &config, &dir, "agent-1.log")?;
        agent.ready(Duration::from_secs(1800))?;
        let cold = t.elapsed().as_secs_f64();
        // The cold start's announcements (3 rounds, 2 s apart, per address) go on after
        // `ready`: the events and the idle window are measured once they are done.
        let announced = settled(agent.pid(), Duration::from_secs(600))?;

        // Events, each followed by one event of each floor.
        let router_ns = Netns::open(
            &NetnsName::new(
                "ns",
                &format!("qrouter-{}", routers[0]["id"].as_str().context("id")?),
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let (mut empty_floor, mut like_floor) = (
            Floor::new(None)?,
            Floor::new(Some(&save(&router_ns, &[])?))?,
        );
        let (mut floors, mut populated) = (Vec::new(), Vec::new());
        let mut events = Vec::with_capacity(a.events);
        let observer = Observer::raise();
        for e in 0..a.events {
            let i = (e * 7919) % a.count;
            let addr = fip(a.count + e, 0, a.fips);
            let fixed = format!("192.0.2.{}", 100 + e % 100);
            routers[i]["_floatingips"]
                .as_array_mut()
                .context("list")?
                .push(json!({"id": format!("bench-{e}"), "floating_ip_address": addr, "fixed_ip_address": fixed}));
            let id = routers[i]["id"].as_str().context("id")?.to_owned();
            let ns = Netns::open(
                &NetnsName::new("ns", &format!("qrouter-{id}"))
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut rtnl = Rtnl::open(&ns).map_err(|e| anyhow::anyhow!("{e}"))?;
            let want: std::net::IpAddr = addr.parse()?;
            let dnat = fip_rules(&addr, &fixed)[0].clone();
            // The ruleset generation moves with any rule change in the namespace (the event
            // is the only writer there). Both are heard as the kernel tells them (address
            // and nf_tables notifications, subscribed to before the rename), each then
            // confirmed by a query: the waiting costs no CPU the agent could have used, and
            // the time is taken when the kernel's notification wakes this thread. The rules'
            // notifications are listened to only once the address is there (they queue
            // meanwhile): woken at the rules' commit, this thread would take a core from the
            // agent's restore and address add on two cores (at SCHED_FIFO, preempt them).
            let gen = l3agent_iptables_exec::GenerationSocket::open(Some(&ns))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let gen0 = gen.query().map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut heard = Notifications::open(&ns)?;
            let staged = stage_config(&config, &agent_section, &routers)?;
            // The file replaced is kept (a link) until the event is timed: the rename does not
            // free its 1.5 MB on this thread meanwhile.
            let kept = Kept::link(&config)?;
            std::thread::sleep(PAUSE);
            let t = Instant::now();
            staged.install()?;
            let deadline = t + Duration::from_secs(60);
            let (mut addr_at, mut rule_at) = (None, None);
            while addr_at.is_none() || rule_at.is_none() {
                let Some((woken, addresses, rules)) = heard.wait(deadline, addr_at.is_some())?
                else {
                    bail!(
                        "event {e}: {addr} not in the kernel after 60 s:\n{}",
                        agent.log_tail()
                    );
                };
                // Confirmed by queries made before the notifications are read (a read that
                // can take milliseconds): what they find was there when the kernel woke this
                // thread, or came within the query's own fraction of a millisecond.
                let at = woken.duration_since(t);
                if addresses
                    && addr_at.is_none()
                    && rtnl
                        .addresses(None)
                        .map_err(|e| anyhow::anyhow!("{e}"))?
                        .iter()
                        .any(|x| x.net.addr() == want)
                {
                    addr_at = Some(at);
                }
                if addr_at.is_some()
                    && rule_at.is_none()
                    && gen.query().map_err(|e| anyhow::anyhow!("{e}"))? != gen0
                {
                    rule_at = Some(at);
                }
                if addr_at.is_none() || rule_at.is_none() {
                    heard.drain(addresses, rules)?;
                }
            }
            drop(kept);
            if !nat_rules(&ns)?.contains(&dnat) {
                bail!("event {e}: the rules changed but hold no {dnat:?}");
            }
            events.push(addr_at.max(rule_at).unwrap_or_default().as_secs_f64());
            // Each floor, like each event, starts after a pause: the second of two floors
            // in a row would find the caches the first one warmed.
            std::thread::sleep(PAUSE);
            floors.push(empty_floor.once()?);
            std::thread::sleep(PAUSE);
            populated.push(like_floor.once()?);
        }
        // Normal priority again for the idle and restart measures.
        let observer = {
            let raised = observer;
            raised.describe()
        };
        drop((empty_floor, like_floor));

        // Idle.
        settled(agent.pid(), Duration::from_secs(120))?;
        let pid = agent.pid();
        let spawns_before = counter(&agent.metrics(&host)?, "l3agent_process_spawns_total");
        let cpu0 = cpu_of(pid)?;
        let threads0 = cpu_by_thread(pid)?;
        let t = Instant::now();
        std::thread::sleep(Duration::from_secs(a.idle_secs));
        let idle_cpu = (cpu_of(pid)? - cpu0) / t.elapsed().as_secs_f64();
        let busiest: Vec<String> = cpu_by_thread(pid)?
            .into_iter()
            .map(|(name, c)| {
                (
                    name.clone(),
                    c - threads0.get(&name).copied().unwrap_or(0.0),
                )
            })
            .filter(|(_, c)| *c > 0.0)
            .map(|(name, c)| format!("{name} {:.1}%", 100.0 * c / t.elapsed().as_secs_f64()))
            .collect();
        let spawns_after = counter(&agent.metrics(&host)?, "l3agent_process_spawns_total");
        let (rss, hwm) = rss_of(pid)?;

        // Restart.
        let stopped = agent.stop()?.as_secs_f64();
        let t = Instant::now();
        let mut agent = Agent::start(&bin, &host, &config, &dir, "agent-2.log")?;
        let v = agent.ready(Duration::from_secs(1800))?;
        let restart = t.elapsed().as_secs_f64();
        let changed = v["routers"].as_array().map_or(0, |r| {
            r.iter().filter(|r| !r["last_change"].is_null()).count()
        });
        let listed = v["routers"].as_array().map_or(0, Vec::len);
        agent.stop()?;

        let ms = |s: f64| s * 1000.0;
        let (p50, p99) = (quantile(&mut events, 0.5), quantile(&mut events, 0.99));
        let (f50, f99) = (quantile(&mut floors, 0.5), quantile(&mut floors, 0.99));
        let (g50, g99) = (
            quantile(&mut populated, 0.5),
            quantile(&mut populated, 0.99),
        );
        let spawns = match (spawns_before, spawns_after) {
            (Some(b), Some(a)) => format!("{}", a - b),
            _ => "not exported".into(),
        };
        Ok(format!(
            "## Agent: {count} legacy routers with {fips} floating IPs each\n\n\
             `l3agent agent` (release build, its own process) in a throwaway host namespace, the config a JSON file \
             replaced by atomic rename for each event (written and flushed first, as configuration tools do). \
             Event to kernel: from the start of the rename until the new floating IP's \
             address and a rule change are both in the kernel (heard from the router namespace's address and nf_tables \
             notifications, each confirmed by a query; the DNAT rule then checked with `iptables-save`); \
             {n} events, one router each. \
             Floor: one `iptables-restore --noflush` of the same three rules plus one address add over rtnetlink, \
             in a namespace of its own, once after each event (the same minutes of the run; each event and each floor after a 100 ms pause); the namespace holds the three chains they go \
             in, empty, or (*floor in a router-like namespace*) every rule of a router's namespace, restored from \
             its `iptables-save`: `iptables-nft-restore --noflush` reads the tables it writes first. \
             The thread timing both runs at {observer} (its children at normal priority), so that the agent's \
             work after an event does not delay its clock.\n\n\
             | measure | value | floor | ratio |\n|---|---:|---:|---:|\n\
             | event to kernel, p50 | {p50:.1} ms | {f50:.1} ms | {r50:.2}x |\n\
             | event to kernel, p99 | {p99:.1} ms | {f99:.1} ms | {r99:.2}x |\n\
             | event to kernel against the floor in a router-like namespace, p50 | {p50:.1} ms | {g50:.1} ms | {q50:.2}x |\n\
             | event to kernel against the floor in a router-like namespace, p99 | {p99:.1} ms | {g99:.1} ms | {q99:.2}x |\n\
             | cold start to ready (empty host) | {cold:.1} s | | |\n\
             | – its announcements (3 rounds per address) done | {announced:.1} s after ready | | |\n\
             | idle CPU over {idle} s | {cpu:.2}% of a core ({busiest}) | | |\n\
             | processes started while idle | {spawns} | | |\n\
             | resident memory (RSS / peak) | {rss:.1} / {hwm:.1} MiB | | |\n\
             | SIGTERM to exit | {stopped:.2} s | | |\n\
             | restart to ready (converged host) | {restart:.2} s | | |\n\
             | routers changed by the restart | {changed} of {listed} | | |\n",
            count = a.count,
            observer = observer,
            fips = a.fips,
            n = a.events,
            p50 = ms(p50),
            p99 = ms(p99),
            f50 = ms(f50),
            f99 = ms(f99),
            r50 = p50 / f50,
            r99 = p99 / f99,
            g50 = ms(g50),
            g99 = ms(g99),
            q50 = p50 / g50,
            q99 = p99 / g99,
            idle = a.idle_secs,
            cpu = idle_cpu * 100.0,
            busiest = if busiest.is_empty() { "no thread ran".into() } else { busiest.join(", ") },
        ))
    })();
    // The routers go, whatever happened: `l3agent destroy` of the config.
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", host.name))
        .arg(&bin)
        .arg("destroy")
        .arg(&config)
        .output();
    if !matches!(&out, Ok(o) if o.status.success()) {
        eprintln!("l3agent destroy after the benchmark: {out:?}");
    }
    if a.keep {
        eprintln!("kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}
