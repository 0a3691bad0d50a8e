//! Announcing addresses after they are configured: gratuitous ARP for IPv4 (what Neutron's
//! `send_ip_addr_adv_notif` does with `arping -U` then `arping -A`, three rounds two seconds
//! apart) and unsolicited neighbour advertisements for IPv6 (which Neutron never sends,
//! #1357068), from **one** scheduler thread for the whole process instead of one thread per
//! address.
//!
//! [`Announcer::announce`] only records the work and returns; the scheduler thread sends the
//! rounds. Before every round it checks, with one address dump of the device in its namespace,
//! that the address is still there: an address, device or namespace that is gone stops silently
//! (Neutron #1696893) and is counted in [`AnnounceStats::stopped_gone`]. Announcing a (namespace,
//! device, address) that is still pending restarts its rounds: there is never more than one
//! schedule per address.
//!
//! Packets leave from an `AF_PACKET` socket opened inside the namespace (on a short-lived thread,
//! [`Netns::run`]); the scheduler thread itself never changes namespace. Per namespace it keeps
//! one rtnetlink socket and one packet socket while something there is pending.
//!
//! The thread ends as soon as the last [`Announcer`] handle is dropped: rounds still pending then
//! are abandoned (a process that wants them sent calls [`Announcer::drain`] first).

use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use l3agent_types::{IfName, NetnsName};

use crate::error::Error;
use crate::garp;
use crate::netns::{self, Netns, NsId};
use crate::prelude::*;
use crate::socket::Rtnl;

/// The longest the scheduler sleeps without looking at its state again (it is woken earlier by
/// new work and by the last handle going away).
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// How many rounds to send per address and how far apart: Neutron's `count=3` and
/// `ARPING_SLEEP` (2 s) by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnnounceOptions {
    /// Rounds per address (0 disables announcing: nothing is scheduled).
    pub rounds: u32,
    /// Time between two rounds of one address (from the end of one round's batch to the start
    /// of the next, so never less).
    pub interval: Duration,
}

impl Default for AnnounceOptions {
    fn default() -> Self {
        AnnounceOptions {
            rounds: 3,
            interval: Duration::from_secs(2),
        }
    }
}

/// What the announcer has done since it started, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AnnounceStats {
    /// Rounds sent, counted per address (an IPv4 round is two packets, an IPv6 round one).
    pub rounds_sent: u64,
    /// Packets handed to the kernel.
    pub packets_sent: u64,
    /// Rounds that failed (the address check or a send failed; logged at warn). A failed round
    /// still counts against the address's rounds. Also counts, per address, announcements that
    /// could not be scheduled at all (the caller's namespace could not be opened, the thread is
    /// not running) and those abandoned because the thread died.
    pub failures: u64,
    /// Addresses stopped early because the address, its device or its namespace was gone.
    pub stopped_gone: u64,
}

/// How a namespace is told apart: by name, or for the caller's namespace by its identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum SpaceKey {
    Named(NetnsName),
    Inode(NsId),
}

/// Where an address is announced: a device in a namespace. Two targets are equal when they
/// name the same namespace and device.
#[derive(Clone)]
pub struct Target {
    id: SpaceKey,
    netns: Option<NetnsName>,
    caller: Option<Arc<Netns>>,
    dev: IfName,
}

impl Target {
    fn named(netns: NetnsName, dev: IfName) -> Target {
        Target {
            id: SpaceKey::Named(netns.clone()),
            netns: Some(netns),
            caller: None,
            dev,
        }
    }

    /// The calling thread's namespace, held open so that it stays the same namespace.
    fn caller(dev: IfName) -> Result<Target, Error> {
        let ns = Netns::current()?;
        Ok(Target {
            id: SpaceKey::Inode(ns.id()),
            netns: None,
            caller: Some(Arc::new(ns)),
            dev,
        })
    }

    /// The namespace's name; `None` for the namespace the caller of
    /// [`Announcer::announce`] was in.
    pub fn netns(&self) -> Option<&NetnsName> {
        self.netns.as_ref()
    }

    /// The caller's namespace when [`Target::netns`] is `None` (held open).
    pub fn caller_netns(&self) -> Option<&Netns> {
        self.caller.as_deref()
    }

    /// The device.
    pub fn dev(&self) -> &IfName {
        &self.dev
    }
}

impl PartialEq for Target {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && self.dev == other.dev
    }
}

impl Eq for Target {}

impl Hash for Target {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id.hash(state);
        self.dev.hash(state);
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.netns {
            Some(n) => write!(f, "{} in {n}", self.dev),
            None => write!(f, "{} in the caller's namespace", self.dev),
        }
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("netns", &self.netns)
            .field("dev", &self.dev)
            .finish()
    }
}

/// What the scheduler does to the outside world, so that it can be driven without root in
/// tests. [`Announcer::start`] uses the kernel: rtnetlink and a packet socket per namespace.
///
/// All calls come from the one scheduler thread, in this order per round and target:
/// [`Sender::present`] once, then [`Sender::send`] for each address still present.
pub trait Sender: Send + 'static {
    /// Which of `addrs` are still configured on the target's device (`ip addr show dev DEV`,
    /// one dump). [`Error::NoDevice`], [`Error::NoNamespace`] or `ENODEV` mean the device or
    /// namespace is gone: the addresses stop silently. Any other error fails the round.
    fn present(&mut self, target: &Target, addrs: &[IpAddr]) -> Result<Vec<IpAddr>, Error>;

    /// Sends one round for `addr` on the target's device and returns how many packets went
    /// out. An error of "gone" kind (as for [`Sender::present`], or `ENXIO`) stops the address
    /// silently; any other fails the round.
    fn send(&mut self, target: &Target, addr: IpAddr) -> Result<u64, Error>;

    /// Nothing is pending on `target` any more: release what is cached for it.
    fn release(&mut self, _target: &Target) {}
}

/// Whether an error means the address's device or namespace no longer exists.
fn is_gone(e: &Error) -> bool {
    matches!(e, Error::NoDevice { .. } | Error::NoNamespace(_))
        || e.errno() == Some(libc::ENODEV)
        || e.errno() == Some(libc::ENXIO)
}

/// Whether an address is worth announcing: unicast, and for IPv6 not link-local.
fn announceable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            !(a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback())
        }
        IpAddr::V6(a) => {
            !(a.is_unspecified()
                || a.is_multicast()
                || a.is_loopback()
                || a.segments()[0] & 0xffc0 == 0xfe80)
        }
    }
}

/// One address's schedule.
#[derive(Debug)]
struct Entry {
    remaining: u32,
    due: Instant,
    /// Changes on every (re-)announce, so a round in flight does not overwrite a restart.
    generation: u64,
}

#[derive(Debug)]
struct State {
    entries: HashMap<(Target, IpAddr), Entry>,
    next_generation: u64,
    stats: AnnounceStats,
    /// The last handle is gone: the scheduler must end.
    closed: bool,
    /// The scheduler thread is alive.
    running: bool,
}

#[derive(Debug)]
struct Shared {
    opts: AnnounceOptions,
    state: Mutex<State>,
    /// Wakes the scheduler: new work, or closed.
    work: Condvar,
    /// Wakes [`Announcer::drain`]: nothing pending any more.
    idle: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Owned by the handles (through an `Arc`); dropping the last one stops the scheduler.
#[derive(Debug)]
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.closed = true;
        st.entries.clear();
        drop(st);
        self.shared.work.notify_all();
        self.shared.idle.notify_all();
    }
}

/// The process's address announcer: a cheap, cloneable handle to one scheduler thread that
/// sends gratuitous ARP and unsolicited neighbour advertisements (see the module docs).
#[derive(Debug, Clone)]
pub struct Announcer {
    handle: Arc<Handle>,
}

impl Announcer {
    /// Starts the scheduler thread, sending through the kernel (packet sockets inside each
    /// namespace, rtnetlink for the address checks).
    pub fn start(opts: AnnounceOptions) -> Announcer {
        Announcer::with_sender(opts, Kernel::default())
    }

    /// Starts the scheduler thread with another [`Sender`] (a recording fake in tests). The
    /// thread ends when the last handle is dropped, abandoning pending rounds.
    pub fn with_sender(opts: AnnounceOptions, sender: impl Sender) -> Announcer {
        let shared = Arc::new(Shared {
            opts,
            state: Mutex::new(State {
                entries: HashMap::new(),
                next_generation: 0,
                stats: AnnounceStats::default(),
                closed: false,
                running: true,
            }),
            work: Condvar::new(),
            idle: Condvar::new(),
        });
        let theirs = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("l3agent-announce".into())
            .spawn(move || scheduler(theirs, sender));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the address announcer thread; addresses will not be announced");
            shared.lock().running = false;
        }
        Announcer {
            handle: Arc::new(Handle { shared }),
        }
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    /// Schedules `rounds` announcements of each of `addrs` on `dev` in `netns` (`None`: the
    /// calling thread's namespace) and returns at once. The first round goes out as soon as the
    /// scheduler gets to it. An address already pending on the same device and namespace
    /// restarts its rounds. IPv6 link-local, multicast, loopback and unspecified addresses (and
    /// their IPv4 equivalents) are ignored. With `None` this opens the calling thread's
    /// namespace (`/proc/thread-self/ns/net`) and holds it until the rounds are done; nothing
    /// else touches the kernel here.
    pub fn announce(&self, netns: Option<NetnsName>, dev: IfName, addrs: Vec<IpAddr>) {
        let shared = self.shared();
        if shared.opts.rounds == 0 {
            return;
        }
        let mut ips: Vec<IpAddr> = Vec::with_capacity(addrs.len());
        for ip in addrs {
            if !announceable(&ip) {
                tracing::debug!(%ip, %dev, "not announcing a link-local or non-unicast address");
            } else if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
        if ips.is_empty() {
            return;
        }
        let target = match netns {
            Some(n) => Target::named(n, dev),
            None => match Target::caller(dev) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot announce addresses in the caller's namespace");
                    shared.lock().stats.failures += ips.len() as u64;
                    return;
                }
            },
        };
        let mut st = shared.lock();
        if !st.running || st.closed {
            tracing::warn!(%target, "the address announcer is not running; addresses not announced");
            st.stats.failures += ips.len() as u64;
            return;
        }
        let now = Instant::now();
        for ip in ips {
            let generation = st.next_generation;
            st.next_generation = st.next_generation.wrapping_add(1);
            st.entries.insert(
                (target.clone(), ip),
                Entry {
                    remaining: shared.opts.rounds,
                    due: now,
                    generation,
                },
            );
        }
        drop(st);
        shared.work.notify_all();
    }

    /// Addresses with rounds still to send (including a round being sent right now).
    pub fn pending(&self) -> usize {
        self.shared().lock().entries.len()
    }

    /// Waits until nothing is pending (`true`) or `timeout` has passed (`false`; also at once
    /// when the scheduler thread is not running).
    pub fn drain(&self, timeout: Duration) -> bool {
        let shared = self.shared();
        let start = Instant::now();
        let mut st = shared.lock();
        loop {
            if st.entries.is_empty() {
                return true;
            }
            if !st.running {
                return false;
            }
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return false;
            }
            st = shared
                .idle
                .wait_timeout(st, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Counters since start.
    pub fn stats(&self) -> AnnounceStats {
        self.shared().lock().stats
    }
}

/// What happened to one address in one round.
#[derive(Debug)]
enum Outcome {
    Sent(u64),
    Failed,
    Gone,
}

type Batch = Vec<(Target, Vec<(IpAddr, u64)>)>;

/// Marks the scheduler dead however it ends (also on a panic in a [`Sender`]).
struct Exit(Arc<Shared>);

impl Drop for Exit {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.running = false;
        if !st.closed && !st.entries.is_empty() {
            tracing::warn!(
                pending = st.entries.len(),
                "the address announcer thread ended with addresses pending"
            );
            st.stats.failures += st.entries.len() as u64;
            st.entries.clear();
        }
        drop(st);
        self.0.idle.notify_all();
    }
}

/// The scheduler thread's nice value: the lowest priority. An announcement is a broadcast, and
/// on a network node every router's gateway port is on the one external bridge: each packet
/// is flooded to all of them, milliseconds of the kernel's receive work per packet at 1,000
/// routers, done on the sending thread. At the lowest priority that work yields the CPU at
/// once to the agent's changes (an event's kernel writes wait for no announcement round),
/// and still gets its share of a busy host: it is never starved, only later.
pub const SCHEDULER_NICE: i32 = 19;

/// Lowers the calling thread's priority to [`SCHEDULER_NICE`] (Linux: a thread's nice value
/// is its own). A failure is logged: announcing at the normal priority still works.
fn lower_priority() {
    let tid = nix::unistd::gettid().as_raw();
    // SAFETY: setpriority reads its three integer arguments only.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, SCHEDULER_NICE) };
    if rc != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot lower the announcer thread's priority");
    }
}

fn scheduler(shared: Arc<Shared>, mut sender: impl Sender) {
    let _exit = Exit(Arc::clone(&shared));
    lower_priority();
    while let Some(batch) = next_batch(&shared) {
        let outcomes = run_batch(&mut sender, &batch);
        for target in apply(&shared, &batch, outcomes) {
            sender.release(&target);
        }
    }
}

/// Sleeps until some addresses are due and returns them grouped by target; `None` once closed.
fn next_batch(shared: &Shared) -> Option<Batch> {
    let mut st = shared.lock();
    loop {
        if st.closed {
            return None;
        }
        let now = Instant::now();
        let mut due: HashMap<Target, Vec<(IpAddr, u64)>> = HashMap::new();
        let mut earliest: Option<Instant> = None;
        for ((target, ip), e) in &st.entries {
            if e.due <= now {
                due.entry(target.clone())
                    .or_default()
                    .push((*ip, e.generation));
            } else {
                earliest = Some(earliest.map_or(e.due, |t| t.min(e.due)));
            }
        }
        if !due.is_empty() {
            return Some(due.into_iter().collect());
        }
        let sleep = earliest.map_or(MAX_SLEEP, |t| (t - now).min(MAX_SLEEP));
        st = shared
            .work
            .wait_timeout(st, sleep)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}

/// One round for every due address: one check per target, then the packets. No lock held.
fn run_batch(sender: &mut impl Sender, batch: &Batch) -> Vec<Vec<Outcome>> {
    let mut out = Vec::with_capacity(batch.len());
    for (target, addrs) in batch {
        let ips: Vec<IpAddr> = addrs.iter().map(|(ip, _)| *ip).collect();
        let outcomes = match sender.present(target, &ips) {
            Err(e) if is_gone(&e) => {
                tracing::debug!(%target, error = %e, "device or namespace gone; not announcing");
                ips.iter().map(|_| Outcome::Gone).collect()
            }
            Err(e) => {
                tracing::warn!(%target, error = %e, "cannot check addresses before announcing them; round skipped");
                ips.iter().map(|_| Outcome::Failed).collect()
            }
            Ok(present) => ips
                .iter()
                .map(|&ip| {
                    if !present.contains(&ip) {
                        tracing::debug!(%target, %ip, "address gone; not announcing it any more");
                        return Outcome::Gone;
                    }
                    match sender.send(target, ip) {
                        Ok(n) => Outcome::Sent(n),
                        Err(e) if is_gone(&e) => Outcome::Gone,
                        Err(e) => {
                            tracing::warn!(%target, %ip, error = %e, "announcing an address failed");
                            Outcome::Failed
                        }
                    }
                })
                .collect(),
        };
        out.push(outcomes);
    }
    out
}

/// Books a batch's outcomes; returns the targets with nothing pending any more.
fn apply(shared: &Shared, batch: &Batch, outcomes: Vec<Vec<Outcome>>) -> Vec<Target> {
    let mut st = shared.lock();
    // The next round is `interval` after this one ended, so that rounds of one address are
    // never closer than `interval`, and addresses announced together stay in one batch.
    let now = Instant::now();
    let next = now
        .checked_add(shared.opts.interval)
        .unwrap_or_else(|| now + MAX_SLEEP);
    let mut finished = Vec::new();
    for ((target, addrs), outcomes) in batch.iter().zip(outcomes) {
        for (&(ip, generation), outcome) in addrs.iter().zip(outcomes) {
            let key = (target.clone(), ip);
            // A re-announce while this round was in flight restarted the address: its new
            // schedule stands (the packets sent still count).
            let current = st
                .entries
                .get(&key)
                .is_some_and(|e| e.generation == generation);
            let keep = match outcome {
                Outcome::Sent(n) => {
                    st.stats.rounds_sent += 1;
                    st.stats.packets_sent += n;
                    true
                }
                Outcome::Failed => {
                    st.stats.failures += 1;
                    true
                }
                Outcome::Gone => {
                    if current {
                        st.stats.stopped_gone += 1;
                    }
                    false
                }
            };
            if !current {
                continue;
            }
            let done = match st.entries.get_mut(&key) {
                Some(e) if keep => {
                    e.remaining = e.remaining.saturating_sub(1);
                    e.due = next;
                    e.remaining == 0
                }
                _ => true,
            };
            if done {
                st.entries.remove(&key);
            }
        }
    }
    // Targets with nothing pending any more: one pass over the entries for the batch (a
    // pass per target made a cold start of 1,000 routers cost a core for minutes).
    let pending: std::collections::HashSet<&Target> = st.entries.keys().map(|(t, _)| t).collect();
    for (target, _) in batch {
        if !pending.contains(target) {
            finished.push(target.clone());
        }
    }
    let idle = st.entries.is_empty();
    drop(st);
    if idle {
        shared.idle.notify_all();
    }
    finished
}

/// A device's index and MAC, read at the last check.
#[derive(Debug, Clone, Copy)]
struct Device {
    index: i32,
    mac: [u8; 6],
}

/// The sockets kept for one namespace while something there is pending.
#[derive(Debug)]
struct Space {
    inode: NsId,
    label: String,
    rtnl: Rtnl,
    packet: OwnedFd,
    devs: HashMap<IfName, Device>,
}

impl Space {
    fn open(ns: &Netns, label: String) -> Result<Space, Error> {
        let inode = ns.id();
        let rtnl = Rtnl::open(ns)?;
        let packet = ns
            .run::<_, Error>(garp::packet_socket)?
            .map_err(|source| Error::Kernel {
                what: "open a packet socket for address announcements".into(),
                netns: label.clone(),
                source,
            })?;
        Ok(Space {
            inode,
            label,
            rtnl,
            packet,
            devs: HashMap::new(),
        })
    }
}

/// The kernel [`Sender`]: rtnetlink for the checks, a packet socket for the packets, both
/// opened inside the namespace and kept while it has pending addresses.
#[derive(Debug, Default)]
struct Kernel {
    spaces: HashMap<SpaceKey, Space>,
}

impl Kernel {
    /// The namespace's sockets, opened (or reopened, when the name now denotes another
    /// namespace) as needed.
    fn space(&mut self, target: &Target) -> Result<&mut Space, Error> {
        let fresh = match (&target.id, &target.caller) {
            (SpaceKey::Named(name), _) => {
                if !netns::exists(name) {
                    self.spaces.remove(&target.id);
                    return Err(Error::NoNamespace(name.to_string()));
                }
                let ns = Netns::open(name)?;
                let inode = ns.id();
                match self.spaces.get(&target.id) {
                    Some(s) if s.inode == inode => None,
                    _ => Some(Space::open(&ns, name.to_string())?),
                }
            }
            (SpaceKey::Inode(..), Some(ns)) => match self.spaces.get(&target.id) {
                Some(_) => None,
                None => Some(Space::open(ns, "the caller's namespace".into())?),
            },
            (SpaceKey::Inode(..), None) => {
                return Err(Error::Value(format!(
                    "announcing on {target}: no namespace descriptor"
                )))
            }
        };
        if let Some(s) = fresh {
            self.spaces.insert(target.id.clone(), s);
        }
        self.spaces
            .get_mut(&target.id)
            .ok_or_else(|| Error::Value(format!("announcing on {target}: no sockets")))
    }
}

fn check(space: &mut Space, target: &Target, addrs: &[IpAddr]) -> Result<Vec<IpAddr>, Error> {
    let dev = target.dev();
    let what = format!("announce addresses on {dev}");
    let link = space.rtnl.link(dev)?.ok_or_else(|| Error::NoDevice {
        what: what.clone(),
        netns: space.label.clone(),
        device: dev.to_string(),
    })?;
    let mac = link
        .mac
        .ok_or_else(|| Error::Value(format!("{what}: {dev} has no MAC address")))?;
    let index =
        i32::try_from(link.index).map_err(|_| Error::Value(format!("{what}: bad ifindex")))?;
    space.devs.insert(dev.clone(), Device { index, mac });
    let have = space.rtnl.addresses(None)?;
    Ok(addrs
        .iter()
        .copied()
        .filter(|ip| {
            have.iter()
                .any(|a| a.index == link.index && a.net.addr() == *ip)
        })
        .collect())
}

impl Sender for Kernel {
    fn present(&mut self, target: &Target, addrs: &[IpAddr]) -> Result<Vec<IpAddr>, Error> {
        let space = self.space(target)?;
        let result = check(space, target, addrs);
        match &result {
            Ok(_) => {}
            Err(e) if is_gone(e) => {
                space.devs.remove(target.dev());
            }
            // The socket may hold a half-read answer: start afresh next round.
            Err(_) => {
                self.spaces.remove(&target.id);
            }
        }
        result
    }

    fn send(&mut self, target: &Target, addr: IpAddr) -> Result<u64, Error> {
        let space = self
            .spaces
            .get(&target.id)
            .ok_or_else(|| Error::Value(format!("announcing on {target}: not checked")))?;
        let dev =
            space.devs.get(target.dev()).copied().ok_or_else(|| {
                Error::Value(format!("announcing on {target}: device not checked"))
            })?;
        let kernel = |what: String| {
            let netns = space.label.clone();
            move |source| Error::Kernel {
                what,
                netns,
                source,
            }
        };
        let sock = space.packet.as_fd();
        match addr {
            IpAddr::V4(ip) => {
                for op in [1, 2] {
                    let pkt = garp::arp(op, dev.mac, ip);
                    garp::send_frame(sock, dev.index, garp::ETH_P_ARP, garp::BROADCAST_MAC, &pkt)
                        .map_err(kernel(format!(
                        "gratuitous ARP for {ip} on {}",
                        target.dev()
                    )))?;
                }
                Ok(2)
            }
            IpAddr::V6(ip) => {
                let pkt = garp::neighbour_advertisement(dev.mac, ip);
                garp::send_frame(sock, dev.index, garp::ETH_P_IPV6, garp::ALL_NODES_MAC, &pkt)
                    .map_err(kernel(format!(
                        "unsolicited neighbour advertisement for {ip} on {}",
                        target.dev()
                    )))?;
                Ok(1)
            }
        }
    }

    fn release(&mut self, target: &Target) {
        if let Some(space) = self.spaces.get_mut(&target.id) {
            space.devs.remove(target.dev());
            if space.devs.is_empty() {
                self.spaces.remove(&target.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn dev(s: &str) -> IfName {
        IfName::new("test", s).unwrap()
    }

    fn ns(s: &str) -> Option<NetnsName> {
        Some(NetnsName::new("test", s).unwrap())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// What the fake sender saw and how it behaves.
    #[derive(Debug, Default)]
    struct Log {
        sends: Vec<(Instant, Option<NetnsName>, IfName, IpAddr)>,
        /// The sending thread's nice value at each send.
        nice: Vec<i32>,
        checks: usize,
        /// Addresses the check no longer finds.
        gone: HashSet<IpAddr>,
        /// Devices whose check says "no device".
        dev_gone: HashSet<IfName>,
        /// Devices whose check fails with another error.
        check_fails: HashSet<IfName>,
        /// Addresses whose send fails.
        send_fails: HashSet<IpAddr>,
        /// How long each check takes.
        slow: Duration,
        released: Vec<IfName>,
    }

    #[derive(Debug, Clone, Default)]
    struct Fake {
        log: Arc<Mutex<Log>>,
        /// Alive while the scheduler holds its copy.
        token: Arc<()>,
    }

    impl Fake {
        fn log(&self) -> MutexGuard<'_, Log> {
            self.log.lock().unwrap()
        }

        fn sends_of(&self, a: IpAddr) -> Vec<Instant> {
            self.log()
                .sends
                .iter()
                .filter(|s| s.3 == a)
                .map(|s| s.0)
                .collect()
        }
    }

    impl Sender for Fake {
        fn present(&mut self, target: &Target, addrs: &[IpAddr]) -> Result<Vec<IpAddr>, Error> {
            let slow = {
                let mut l = self.log();
                l.checks += 1;
                l.slow
            };
            std::thread::sleep(slow);
            let l = self.log();
            if l.dev_gone.contains(target.dev()) {
                return Err(Error::NoDevice {
                    what: "check".into(),
                    netns: "fake".into(),
                    device: target.dev().to_string(),
                });
            }
            if l.check_fails.contains(target.dev()) {
                return Err(Error::Value("fake check failure".into()));
            }
            Ok(addrs
                .iter()
                .copied()
                .filter(|a| !l.gone.contains(a))
                .collect())
        }

        fn send(&mut self, target: &Target, addr: IpAddr) -> Result<u64, Error> {
            let mut l = self.log();
            if l.send_fails.contains(&addr) {
                return Err(Error::Value("fake send failure".into()));
            }
            l.sends.push((
                Instant::now(),
                target.netns().cloned(),
                target.dev().clone(),
                addr,
            ));
            let tid = nix::unistd::gettid().as_raw();
            // SAFETY: getpriority reads its two integer arguments only.
            l.nice
                .push(unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) });
            Ok(if addr.is_ipv4() { 2 } else { 1 })
        }

        fn release(&mut self, target: &Target) {
            self.log().released.push(target.dev().clone());
        }
    }

    fn opts(rounds: u32, ms: u64) -> AnnounceOptions {
        AnnounceOptions {
            rounds,
            interval: Duration::from_millis(ms),
        }
    }

    /// Polls `cond` every millisecond for at most 5 s.
    fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "timed out: {what}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn assert_spaced(times: &[Instant], interval: Duration) {
        for w in times.windows(2) {
            assert!(
                w[1] - w[0] >= interval,
                "rounds {:?} apart, interval {interval:?}",
                w[1] - w[0]
            );
        }
    }

    #[test]
    fn defaults_are_neutrons() {
        assert_eq!(AnnounceOptions::default(), opts(3, 2000));
    }

    #[test]
    fn three_rounds_interval_apart() {
        let fake = Fake::default();
        let a = Announcer::with_sender(opts(3, 40), fake.clone());
        let (v4, v6) = (ip("192.0.2.10"), ip("2001:db8::10"));
        let start = Instant::now();
        a.announce(
            ns("qrouter-x"),
            dev("qg-1"),
            vec![v4, v6, ip("fe80::1"), v4, ip("ff02::1")],
        );
        assert_eq!(
            a.pending(),
            2,
            "link-local, multicast and duplicates ignored"
        );
        assert!(a.drain(Duration::from_secs(5)));
        assert!(start.elapsed() >= Duration::from_millis(80));
        assert_eq!(a.pending(), 0);
        for addr in [v4, v6] {
            let times = fake.sends_of(addr);
            assert_eq!(times.len(), 3, "{addr}");
            assert_spaced(&times, Duration::from_millis(40));
        }
        wait_for("the target released", || !fake.log().released.is_empty());
        let l = fake.log();
        assert_eq!(
            l.checks, 3,
            "one check per round for the device, not per address"
        );
        assert!(l
            .sends
            .iter()
            .all(|s| s.1 == ns("qrouter-x") && s.2 == dev("qg-1")));
        assert_eq!(l.released, vec![dev("qg-1")]);
        drop(l);
        assert_eq!(
            a.stats(),
            AnnounceStats {
                rounds_sent: 6,
                packets_sent: 9,
                failures: 0,
                stopped_gone: 0
            }
        );
    }

    #[test]
    fn announce_returns_while_the_scheduler_is_busy() {
        let fake = Fake::default();
        fake.log().slow = Duration::from_millis(300);
        let a = Announcer::with_sender(opts(1, 10), fake.clone());
        a.announce(ns("n"), dev("qg-1"), vec![ip("192.0.2.1")]);
        wait_for("the scheduler to start a check", || fake.log().checks >= 1);
        let t = Instant::now();
        a.announce(ns("n"), dev("qg-2"), vec![ip("192.0.2.2")]);
        let _ = a.pending();
        let _ = a.stats();
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "announce waited for the scheduler: {:?}",
            t.elapsed()
        );
        assert!(a.pending() >= 1);
        assert!(a.drain(Duration::from_secs(5)));
        assert_eq!(a.stats().rounds_sent, 2);
    }

    #[test]
    fn re_announce_restarts_instead_of_doubling() {
        let fake = Fake::default();
        let a = Announcer::with_sender(opts(3, 100), fake.clone());
        let v4 = ip("198.51.100.7");
        a.announce(ns("n"), dev("qg-1"), vec![v4]);
        wait_for("two rounds", || fake.sends_of(v4).len() >= 2);
        a.announce(ns("n"), dev("qg-1"), vec![v4]);
        assert_eq!(a.pending(), 1, "one schedule per address");
        assert!(a.drain(Duration::from_secs(5)));
        let times = fake.sends_of(v4);
        assert_eq!(
            times.len(),
            5,
            "two rounds, then three again after the restart"
        );
        assert_spaced(&times[..2], Duration::from_millis(100));
        assert_spaced(&times[2..], Duration::from_millis(100));
        assert_eq!(a.stats().rounds_sent, 5);
        // Another namespace or device is another schedule.
        a.announce(ns("n"), dev("qg-1"), vec![v4]);
        a.announce(ns("m"), dev("qg-1"), vec![v4]);
        a.announce(ns("n"), dev("qg-2"), vec![v4]);
        assert_eq!(a.pending(), 3);
    }

    #[test]
    fn the_callers_namespace_is_one_target() {
        let fake = Fake::default();
        let a = Announcer::with_sender(opts(1, 10), fake.clone());
        a.announce(None, dev("qg-1"), vec![ip("203.0.113.1")]);
        a.announce(None, dev("qg-1"), vec![ip("203.0.113.1")]);
        assert!(a.pending() <= 1);
        assert!(a.drain(Duration::from_secs(5)));
        let l = fake.log();
        assert!(!l.sends.is_empty() && l.sends.iter().all(|s| s.1.is_none()));
    }

    #[test]
    fn a_gone_address_stops_silently() {
        let fake = Fake::default();
        let a = Announcer::with_sender(opts(3, 100), fake.clone());
        let (gone, stays) = (ip("203.0.113.5"), ip("2001:db8::5"));
        a.announce(ns("n"), dev("qg-1"), vec![gone, stays]);
        wait_for("the first round", || fake.sends_of(gone).len() == 1);
        fake.log().gone.insert(gone);
        assert!(a.drain(Duration::from_secs(5)));
        assert_eq!(fake.sends_of(gone).len(), 1);
        assert_eq!(fake.sends_of(stays).len(), 3);
        let s = a.stats();
        assert_eq!((s.stopped_gone, s.failures, s.rounds_sent), (1, 0, 4));
    }

    #[test]
    fn gone_devices_stop_and_failures_are_counted() {
        let fake = Fake::default();
        {
            let mut l = fake.log();
            l.dev_gone.insert(dev("gone0"));
            l.check_fails.insert(dev("flaky0"));
            l.send_fails.insert(ip("192.0.2.99"));
        }
        let a = Announcer::with_sender(opts(3, 5), fake.clone());
        a.announce(
            ns("n"),
            dev("gone0"),
            vec![ip("192.0.2.1"), ip("2001:db8::1")],
        );
        a.announce(ns("n"), dev("flaky0"), vec![ip("192.0.2.2")]);
        a.announce(ns("n"), dev("ok0"), vec![ip("192.0.2.99"), ip("192.0.2.3")]);
        assert!(a.drain(Duration::from_secs(5)));
        let s = a.stats();
        assert_eq!(s.stopped_gone, 2, "both addresses of the gone device");
        assert_eq!(s.failures, 3 + 3, "three failed checks, three failed sends");
        assert_eq!((s.rounds_sent, s.packets_sent), (3, 6));
        // Targets are released by the scheduler right after their last round is booked,
        // which is when drain may already have returned.
        wait_for("three targets released", || fake.log().released.len() == 3);
        let mut released = fake.log().released.clone();
        released.sort();
        assert_eq!(released, vec![dev("flaky0"), dev("gone0"), dev("ok0")]);
    }

    #[test]
    fn zero_rounds_schedule_nothing() {
        let fake = Fake::default();
        let a = Announcer::with_sender(opts(0, 5), fake.clone());
        a.announce(ns("n"), dev("qg-1"), vec![ip("192.0.2.1")]);
        assert_eq!(a.pending(), 0);
        assert!(a.drain(Duration::ZERO));
        assert_eq!(fake.log().checks, 0);
    }

    #[test]
    fn the_thread_ends_with_the_last_handle() {
        let fake = Fake::default();
        let a = Announcer::with_sender(opts(3, 3_600_000), fake.clone());
        a.announce(ns("n"), dev("qg-1"), vec![ip("192.0.2.1")]);
        wait_for("the first round", || fake.log().sends.len() == 1);
        let b = a.clone();
        drop(a);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(Arc::strong_count(&fake.token), 2, "a handle is left");
        assert_eq!(b.pending(), 1);
        assert!(!b.drain(Duration::from_millis(10)));
        drop(b);
        // The scheduler drops its sender (and the token) when it ends.
        wait_for("the scheduler to end", || {
            Arc::strong_count(&fake.token) == 1
        });
        assert_eq!(fake.log().sends.len(), 1, "pending rounds are abandoned");
    }

    #[test]
    fn rounds_are_sent_at_the_lowest_priority_and_the_caller_keeps_its_own() {
        let tid = nix::unistd::gettid().as_raw();
        // SAFETY: getpriority reads its two integer arguments only.
        let mine = || unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) };
        let before = mine();
        let fake = Fake::default();
        let a = Announcer::with_sender(opts(2, 1), fake.clone());
        a.announce(ns("n"), dev("qg-1"), vec![ip("192.0.2.1")]);
        assert!(a.drain(Duration::from_secs(5)));
        assert_eq!(fake.log().nice, [SCHEDULER_NICE, SCHEDULER_NICE]);
        assert_eq!(mine(), before, "the caller's thread keeps its priority");
    }

    #[test]
    fn handles_are_send_sync_clone_debug() {
        fn check<T: Send + Sync + Clone + fmt::Debug>() {}
        check::<Announcer>();
        let a = Announcer::with_sender(opts(1, 1), Fake::default());
        assert!(format!("{a:?}").contains("Announcer"));
    }

    #[test]
    fn only_unicast_non_link_local_is_announced() {
        for (s, want) in [
            ("192.0.2.1", true),
            ("2001:db8::1", true),
            ("fe80::1", false),
            ("febf::1", false),
            ("fec0::1", true),
            ("ff02::1", false),
            ("::", false),
            ("0.0.0.0", false),
            ("255.255.255.255", false),
            ("224.0.0.1", false),
        ] {
            assert_eq!(announceable(&ip(s)), want, "{s}");
        }
    }
}
