//! Seeing keepalived's VRRP transitions of HA routers as they happen: the agent's
//! counterpart of Neutron's `neutron-keepalived-state-change` (an `ip -o monitor address` per
//! router, NEUTRON-OPS.md §1.6) and of the agent's `enqueue_state_change` (§1.7).
//!
//! ```text
//!  daemon, after each batch ──► HaRouters {router id → qrouter-<id>} (the routers whose
//!                                │          apply read an HA state)
//!                                ▼ re-read every round (≤ POLL_INTERVAL)
//!  HaWatch thread: one AddressMonitor per namespace, all polled at once
//!                                │ any address event of a namespace (coalesced per round)
//!                                ▼
//!  on_event(router id, HaEvent) ──► Settle (daemon): one reconcile per burst, after a delay
//! ```
//!
//! - **No parsing of events**: any address event of a router's namespace makes the router be
//!   reconciled, and the reconciler reads the state from the kernel (the primary VIP on the
//!   `ha-` device). A lost, reordered or coalesced message can never leave a wrong state
//!   behind, and there is no per-router process, fifo or Unix-socket server.
//! - **The gap before a subscription** (the apply read the state, then the monitor opened)
//!   is closed by reporting [`HaEvent::Watching`] when a monitor opens: the router is looked
//!   at once more, so a transition in between is not missed until the next full resync. The
//!   same happens when a monitor is opened again (its namespace was replaced, its socket
//!   failed).
//! - **A namespace that is not there yet** (the router's first apply failed before making it)
//!   is tried again every round, logged at debug once.
//! - **Removed routers**: their monitor is dropped at the next round, so their namespace is
//!   not kept alive by our socket longer than that.
//!
//! [`Watched`] is the bookkeeping (which monitors are held, opening, dropping, polling) over
//! the [`Monitors`] trait, tested with a fake; [`KernelMonitors`] is the kernel's;
//! [`HaWatch`] runs it on a thread.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use l3agent_rtnl::monitor::AddressMonitor;
use l3agent_rtnl::{Error as RtnlError, Netns};
use l3agent_types::{NetnsName, RouterId};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tracing::{debug, info, warn};

use crate::wake::{WakeHandle, Waker};
use crate::AgentError;

/// The longest a round waits for events: how soon a router added to (or removed from)
/// [`HaRouters`] is watched (or no longer).
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// How often held monitors are checked for a namespace that was deleted or replaced under
/// the same name (one `stat` each).
pub const STALE_CHECK: Duration = Duration::from_secs(1);

/// The routers to watch, with the namespace keepalived runs in: written by the daemon after
/// each batch, read by the watch every round.
pub type HaRouters = Arc<Mutex<BTreeMap<RouterId, NetnsName>>>;

/// Why a router is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum HaEvent {
    /// Its namespace is watched from now on (a monitor was opened, for the first time or
    /// again): a change before this moment was not seen.
    Watching,
    /// An address of its namespace changed (keepalived added or removed its VIPs, or
    /// anything else did).
    Changed,
}

/// One namespace's address events, as the watch polls them: readable when events wait.
pub trait Monitor: AsFd + Send + std::fmt::Debug {
    /// Reads every waiting event without blocking: how many there were.
    fn drain(&mut self) -> Result<usize, RtnlError>;

    /// Whether the namespace was deleted, or its name given to another one, since the
    /// monitor was opened (it then sees nothing of the namespace now so named).
    fn stale(&self) -> bool {
        false
    }
}

/// Opens [`Monitor`]s: the kernel's ([`KernelMonitors`]), or a test's.
pub trait Monitors: Send + Sync {
    /// Subscribes to `netns`'s address events. A missing namespace is
    /// [`RtnlError::NoNamespace`].
    fn open(&self, netns: &NetnsName) -> Result<Box<dyn Monitor>, RtnlError>;
}

/// The kernel's monitors: an [`AddressMonitor`] (`ip monitor address` as a netlink socket)
/// made inside the namespace, with the namespace's handle to see it replaced.
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelMonitors;

#[derive(Debug)]
struct KernelMonitor {
    netns: Netns,
    monitor: AddressMonitor,
}

impl AsFd for KernelMonitor {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.monitor.as_fd()
    }
}

impl Monitor for KernelMonitor {
    fn drain(&mut self) -> Result<usize, RtnlError> {
        self.monitor.drain()
    }

    fn stale(&self) -> bool {
        !self.netns.still_named()
    }
}

impl Monitors for KernelMonitors {
    fn open(&self, netns: &NetnsName) -> Result<Box<dyn Monitor>, RtnlError> {
        let ns = Netns::open(netns)?;
        let monitor = AddressMonitor::open(&ns)?;
        Ok(Box::new(KernelMonitor { netns: ns, monitor }))
    }
}

/// One wanted router.
#[derive(Debug)]
struct Slot {
    netns: NetnsName,
    /// `None`: not open (yet, or again).
    monitor: Option<Box<dyn Monitor>>,
    /// A failure to open it was logged (once per run of failures).
    complained: bool,
}

/// The monitors held, following the wanted set: the watch thread's state without the
/// thread (no root, no kernel needed to test it).
#[derive(Debug, Default)]
pub struct Watched {
    slots: BTreeMap<RouterId, Slot>,
}

/// What one [`Watched::poll`] saw.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Polled {
    /// The extra descriptor (the stop waker) was readable.
    pub woken: bool,
    /// Routers whose namespace had address events, each once.
    pub changed: Vec<RouterId>,
}

impl Watched {
    /// Nothing watched.
    pub fn new() -> Watched {
        Watched::default()
    }

    /// Follows `wanted`: drops the monitors of routers no longer in it (or whose namespace
    /// name changed) and makes room for new ones, which [`Watched::open_missing`] opens.
    /// Cheap (no system call but closing sockets), so it runs under the set's lock.
    pub fn follow(&mut self, wanted: &BTreeMap<RouterId, NetnsName>) {
        self.slots.retain(|id, slot| {
            let keep = wanted.get(id) == Some(&slot.netns);
            if !keep && slot.monitor.is_some() {
                debug!(router = %id, netns = %slot.netns, "HA: no longer watched");
            }
            keep
        });
        for (id, netns) in wanted {
            self.slots.entry(id.clone()).or_insert_with(|| Slot {
                netns: netns.clone(),
                monitor: None,
                complained: false,
            });
        }
    }

    /// Opens the monitors not open (after dropping the stale ones when `check_stale`):
    /// the routers whose monitor opened, to report as [`HaEvent::Watching`]. A failure is
    /// retried at the next call, logged once (at debug if the namespace is missing). Ends
    /// early when `stop` is set.
    pub fn open_missing(
        &mut self,
        monitors: &dyn Monitors,
        check_stale: bool,
        stop: &AtomicBool,
    ) -> Vec<RouterId> {
        let mut opened = Vec::new();
        for (id, slot) in &mut self.slots {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            if check_stale && slot.monitor.as_ref().is_some_and(|m| m.stale()) {
                info!(router = %id, netns = %slot.netns, "HA: the namespace was replaced; watching the new one");
                slot.monitor = None;
            }
            if slot.monitor.is_some() {
                continue;
            }
            match monitors.open(&slot.netns) {
                Ok(m) => {
                    debug!(router = %id, netns = %slot.netns, "HA: watching address events");
                    slot.monitor = Some(m);
                    slot.complained = false;
                    opened.push(id.clone());
                }
                Err(e) if !slot.complained => {
                    slot.complained = true;
                    if matches!(e, RtnlError::NoNamespace(_)) {
                        debug!(router = %id, netns = %slot.netns, "HA: no namespace yet; retried every round");
                    } else {
                        warn!(router = %id, netns = %slot.netns, error = %e, "HA: cannot watch address events; retried every round");
                    }
                }
                Err(_) => {}
            }
        }
        opened
    }

    /// Waits up to `timeout` for events on every open monitor and on `extra` (the stop
    /// waker), then drains the monitors that have some. A monitor that fails to read, or
    /// was ready with nothing to read, is dropped (opened again next round, so reported as
    /// [`HaEvent::Watching`] then).
    pub fn poll(&mut self, extra: BorrowedFd<'_>, timeout: Duration) -> Polled {
        let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
        let (woken, ready): (bool, Vec<RouterId>) = {
            let open: Vec<(&RouterId, &dyn Monitor)> = self
                .slots
                .iter()
                .filter_map(|(id, s)| s.monitor.as_deref().map(|m| (id, m)))
                .collect();
            let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(open.len() + 1);
            fds.push(PollFd::new(extra, PollFlags::POLLIN));
            fds.extend(
                open.iter()
                    .map(|(_, m)| PollFd::new(m.as_fd(), PollFlags::POLLIN)),
            );
            match poll(&mut fds, timeout) {
                Ok(n) if n > 0 => {}
                Ok(_) | Err(nix::errno::Errno::EINTR) => return Polled::default(),
                Err(e) => {
                    // Out of memory: pause so that the caller's next round is not a spin.
                    warn!(error = %e, "HA: poll failed");
                    std::thread::sleep(Duration::from_millis(50));
                    return Polled::default();
                }
            }
            let readable = |f: &PollFd<'_>| f.any().unwrap_or(false);
            let woken = readable(&fds[0]);
            let ready = open
                .iter()
                .zip(&fds[1..])
                .filter(|(_, f)| readable(f))
                .map(|((id, _), _)| (*id).clone())
                .collect();
            (woken, ready)
        };
        let mut changed = Vec::new();
        for id in ready {
            let Some(slot) = self.slots.get_mut(&id) else {
                continue;
            };
            let Some(monitor) = slot.monitor.as_mut() else {
                continue;
            };
            match monitor.drain() {
                Ok(n) if n > 0 => changed.push(id),
                Ok(_) => {
                    warn!(router = %id, netns = %slot.netns, "HA: the address monitor was ready with nothing to read; opening it again");
                    slot.monitor = None;
                }
                Err(e) => {
                    warn!(router = %id, netns = %slot.netns, error = %e, "HA: reading address events failed; opening the monitor again");
                    slot.monitor = None;
                }
            }
        }
        Polled { woken, changed }
    }

    /// The routers whose monitor is open.
    pub fn watching(&self) -> impl Iterator<Item = &RouterId> {
        self.slots
            .iter()
            .filter(|(_, s)| s.monitor.is_some())
            .map(|(id, _)| id)
    }

    /// One round of the watch: follow `wanted`, open what is missing, wait for events up to
    /// `timeout`. Returns the routers to report, each once (a router both opened and changed
    /// is [`HaEvent::Changed`]), and whether `extra` was readable.
    pub fn round(
        &mut self,
        wanted: &Mutex<BTreeMap<RouterId, NetnsName>>,
        monitors: &dyn Monitors,
        check_stale: bool,
        extra: BorrowedFd<'_>,
        timeout: Duration,
        stop: &AtomicBool,
    ) -> (BTreeMap<RouterId, HaEvent>, bool) {
        self.follow(&wanted.lock().unwrap_or_else(|e| e.into_inner()));
        let mut report: BTreeMap<RouterId, HaEvent> = self
            .open_missing(monitors, check_stale, stop)
            .into_iter()
            .map(|id| (id, HaEvent::Watching))
            .collect();
        if stop.load(Ordering::SeqCst) {
            return (report, true);
        }
        let polled = self.poll(extra, timeout);
        for id in polled.changed {
            report.insert(id, HaEvent::Changed);
        }
        (report, polled.woken)
    }
}

/// The watch thread: see the module docs. Stops when [`HaWatch::stop`]ped or dropped.
#[derive(Debug)]
pub struct HaWatch {
    stop: Arc<AtomicBool>,
    wake: WakeHandle,
    thread: Option<JoinHandle<()>>,
}

impl HaWatch {
    /// Starts watching the routers of `routers` (re-read every round) with `monitors`;
    /// `on_event` is called from the watch thread, once per router per round at most.
    pub fn start(
        routers: HaRouters,
        monitors: Arc<dyn Monitors>,
        on_event: impl Fn(&RouterId, HaEvent) + Send + 'static,
    ) -> Result<HaWatch, AgentError> {
        let thread_err = |source| AgentError::Thread {
            what: "HA watch",
            source,
        };
        let waker = Waker::new().map_err(thread_err)?;
        let wake = waker.handle().map_err(thread_err)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("ha-watch".into())
            .spawn(move || {
                let mut watched = Watched::new();
                let mut last_stale_check = Instant::now();
                while !stopping.load(Ordering::SeqCst) {
                    let check_stale = last_stale_check.elapsed() >= STALE_CHECK;
                    if check_stale {
                        last_stale_check = Instant::now();
                    }
                    let (report, woken) = watched.round(
                        &routers,
                        &*monitors,
                        check_stale,
                        waker.fd(),
                        POLL_INTERVAL,
                        &stopping,
                    );
                    if woken {
                        let _ = waker.woken();
                    }
                    for (id, ev) in report {
                        on_event(&id, ev);
                    }
                }
            })
            .map_err(thread_err)?;
        Ok(HaWatch {
            stop,
            wake,
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it up to `within` (it ends at its next check of the
    /// stop flag: at once if it waits for events, after the monitor being opened otherwise).
    /// False if it had not ended by then (it is left to end on its own).
    pub fn stop(mut self, within: Duration) -> bool {
        self.halt(within)
    }

    fn halt(&mut self, within: Duration) -> bool {
        self.stop.store(true, Ordering::SeqCst);
        self.wake.wake();
        let Some(t) = self.thread.take() else {
            return true;
        };
        let deadline = Instant::now() + within;
        while !t.is_finished() {
            if Instant::now() >= deadline {
                warn!(
                    within_ms = u64::try_from(within.as_millis()).unwrap_or(u64::MAX),
                    "the HA watch did not stop in time; left to end on its own"
                );
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = t.join();
        true
    }
}

impl Drop for HaWatch {
    fn drop(&mut self) {
        self.halt(Duration::from_secs(2));
    }
}

/// Holds a router's HA events back for a delay after the first of a burst, so that several
/// events make one reconcile, which reads the state of its own moment. In spirit, Neutron's
/// flap suppression (`enqueue_state_change`: wait `ha_vrrp_advert_int`, then act on the
/// last state only); simpler: the window is fixed from the first event (a router that keeps
/// flapping is reconciled once per delay, never starved), and it applies to both directions
/// (a new backup keeps radvd and the metadata proxy that long, with no addresses to serve).
/// Pure: the time is passed in.
#[derive(Debug, Clone)]
pub struct Settle {
    delay: Duration,
    /// Router → its first event not yet acted on.
    pending: BTreeMap<RouterId, Instant>,
}

impl Settle {
    /// Nothing pending; events are held back `delay`.
    pub fn new(delay: Duration) -> Settle {
        Settle {
            delay,
            pending: BTreeMap::new(),
        }
    }

    /// An event for `id` at `now`: true if it starts a burst (false: one is pending).
    pub fn note(&mut self, id: &RouterId, now: Instant) -> bool {
        if self.pending.contains_key(id) {
            return false;
        }
        self.pending.insert(id.clone(), now);
        true
    }

    /// The routers whose burst is over at `now`, with the time of its first event; they are
    /// no longer pending.
    pub fn due(&mut self, now: Instant) -> Vec<(RouterId, Instant)> {
        let delay = self.delay;
        let due: Vec<(RouterId, Instant)> = self
            .pending
            .iter()
            .filter(|(_, first)| **first + delay <= now)
            .map(|(id, first)| (id.clone(), *first))
            .collect();
        for (id, _) in &due {
            self.pending.remove(id);
        }
        due
    }

    /// When the next burst is over, if one is pending.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending.values().min().map(|first| *first + self.delay)
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! Monitors backed by socket pairs: a test "adds an address" by poking the namespace.

    use super::*;
    use std::collections::BTreeSet;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    #[derive(Debug, Default)]
    struct Inner {
        /// Namespaces that exist.
        exist: BTreeSet<NetnsName>,
        /// The writing ends of the open monitors, with the number of the open.
        open: BTreeMap<NetnsName, (usize, UnixStream)>,
        /// Namespaces replaced since their monitor opened.
        replaced: BTreeSet<NetnsName>,
        /// Fail the next drain of this namespace's monitor.
        fail_drain: BTreeSet<NetnsName>,
        opens: usize,
    }

    /// A fake kernel of namespaces with address events.
    #[derive(Debug, Clone, Default)]
    pub(crate) struct FakeMonitors(Arc<Mutex<Inner>>);

    fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    impl FakeMonitors {
        /// `ns` exists (opening its monitor works).
        pub(crate) fn create(&self, ns: &NetnsName) {
            lock(&self.0).exist.insert(ns.clone());
        }
        /// `ns` is deleted and made again: its monitor goes stale.
        pub(crate) fn replace(&self, ns: &NetnsName) {
            lock(&self.0).replaced.insert(ns.clone());
        }
        /// An address event in `ns`; false if no monitor of it is open.
        pub(crate) fn poke(&self, ns: &NetnsName) -> bool {
            lock(&self.0)
                .open
                .get(ns)
                .is_some_and(|(_, w)| (&*w).write_all(&[1]).is_ok())
        }
        /// The next drain of `ns`'s monitor fails.
        pub(crate) fn fail_next_drain(&self, ns: &NetnsName) {
            lock(&self.0).fail_drain.insert(ns.clone());
        }
        /// Whether a monitor of `ns` is open (not dropped).
        pub(crate) fn is_open(&self, ns: &NetnsName) -> bool {
            lock(&self.0).open.contains_key(ns)
        }
        /// Monitors opened so far.
        pub(crate) fn opens(&self) -> usize {
            lock(&self.0).opens
        }
    }

    #[derive(Debug)]
    struct FakeMonitor {
        ns: NetnsName,
        number: usize,
        rx: UnixStream,
        inner: Arc<Mutex<Inner>>,
    }

    impl Drop for FakeMonitor {
        fn drop(&mut self) {
            let mut inner = lock(&self.inner);
            if inner
                .open
                .get(&self.ns)
                .is_some_and(|(n, _)| *n == self.number)
            {
                inner.open.remove(&self.ns);
            }
        }
    }

    impl AsFd for FakeMonitor {
        fn as_fd(&self) -> BorrowedFd<'_> {
            self.rx.as_fd()
        }
    }

    impl Monitor for FakeMonitor {
        fn drain(&mut self) -> Result<usize, RtnlError> {
            if lock(&self.inner).fail_drain.remove(&self.ns) {
                return Err(RtnlError::Io {
                    what: "reading address events".into(),
                    source: std::io::Error::other("injected"),
                });
            }
            let mut buf = [0u8; 64];
            let mut n = 0;
            while let Ok(k) = (&self.rx).read(&mut buf) {
                if k == 0 {
                    break;
                }
                n += k;
            }
            Ok(n)
        }

        fn stale(&self) -> bool {
            lock(&self.inner).replaced.contains(&self.ns)
        }
    }

    impl Monitors for FakeMonitors {
        fn open(&self, netns: &NetnsName) -> Result<Box<dyn Monitor>, RtnlError> {
            let mut inner = lock(&self.0);
            if !inner.exist.contains(netns) {
                return Err(RtnlError::NoNamespace(netns.to_string()));
            }
            let (tx, rx) = UnixStream::pair().map_err(|source| RtnlError::Io {
                what: "socketpair".into(),
                source,
            })?;
            rx.set_nonblocking(true).map_err(|source| RtnlError::Io {
                what: "nonblocking".into(),
                source,
            })?;
            inner.replaced.remove(netns);
            inner.opens += 1;
            let number = inner.opens;
            inner.open.insert(netns.clone(), (number, tx));
            Ok(Box::new(FakeMonitor {
                ns: netns.clone(),
                number,
                rx,
                inner: Arc::clone(&self.0),
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeMonitors;
    use super::*;
    use std::sync::mpsc;

    fn id(n: u8) -> RouterId {
        RouterId::new("id", &format!("{n:08x}-0000-4000-8000-000000000000")).unwrap()
    }

    fn ns(n: u8) -> NetnsName {
        NetnsName::new(
            "ns",
            &format!("qrouter-{n:08x}-0000-4000-8000-000000000000"),
        )
        .unwrap()
    }

    fn wanted(ns_of: &[u8]) -> Mutex<BTreeMap<RouterId, NetnsName>> {
        Mutex::new(ns_of.iter().map(|n| (id(*n), ns(*n))).collect())
    }

    /// A round with nothing to wake it (short timeout).
    fn round(
        w: &mut Watched,
        want: &Mutex<BTreeMap<RouterId, NetnsName>>,
        m: &FakeMonitors,
    ) -> BTreeMap<RouterId, HaEvent> {
        let waker = Waker::new().unwrap();
        let stop = AtomicBool::new(false);
        w.round(want, m, true, waker.fd(), Duration::from_millis(20), &stop)
            .0
    }

    #[test]
    fn a_router_is_watched_while_wanted_and_its_monitor_dropped_once_it_is_not() {
        let m = FakeMonitors::default();
        m.create(&ns(1));
        m.create(&ns(2));
        let want = wanted(&[1, 2]);
        let mut w = Watched::new();
        let r = round(&mut w, &want, &m);
        assert_eq!(
            r,
            [(id(1), HaEvent::Watching), (id(2), HaEvent::Watching)].into()
        );
        // Nothing happened: nothing is reported.
        assert!(round(&mut w, &want, &m).is_empty());
        want.lock().unwrap().remove(&id(1));
        assert!(round(&mut w, &want, &m).is_empty());
        assert!(!m.is_open(&ns(1)), "the removed router's monitor is held");
        assert!(m.is_open(&ns(2)));
        assert_eq!(w.watching().collect::<Vec<_>>(), [&id(2)]);
        assert!(!m.poke(&ns(1)));
    }

    #[test]
    fn events_of_one_round_are_reported_once_per_router() {
        let m = FakeMonitors::default();
        for n in [1, 2, 3] {
            m.create(&ns(n));
        }
        let want = wanted(&[1, 2, 3]);
        let mut w = Watched::new();
        round(&mut w, &want, &m);
        for _ in 0..5 {
            assert!(m.poke(&ns(1)));
        }
        assert!(m.poke(&ns(3)));
        let r = round(&mut w, &want, &m);
        assert_eq!(
            r,
            [(id(1), HaEvent::Changed), (id(3), HaEvent::Changed)].into()
        );
        // Drained: the next round is quiet.
        assert!(round(&mut w, &want, &m).is_empty());
    }

    #[test]
    fn a_missing_namespace_is_tried_every_round_and_watched_once_it_exists() {
        let m = FakeMonitors::default();
        let want = wanted(&[1]);
        let mut w = Watched::new();
        for _ in 0..3 {
            assert!(round(&mut w, &want, &m).is_empty());
        }
        assert_eq!(w.watching().count(), 0);
        m.create(&ns(1));
        assert_eq!(
            round(&mut w, &want, &m),
            [(id(1), HaEvent::Watching)].into()
        );
        assert!(m.poke(&ns(1)));
        assert_eq!(round(&mut w, &want, &m), [(id(1), HaEvent::Changed)].into());
    }

    #[test]
    fn a_replaced_namespace_or_a_failing_monitor_is_opened_again_and_reported() {
        let m = FakeMonitors::default();
        m.create(&ns(1));
        let want = wanted(&[1]);
        let mut w = Watched::new();
        round(&mut w, &want, &m);
        assert_eq!(m.opens(), 1);
        m.replace(&ns(1));
        assert_eq!(
            round(&mut w, &want, &m),
            [(id(1), HaEvent::Watching)].into()
        );
        assert_eq!(m.opens(), 2);
        // A read error drops the monitor; the next round opens it again.
        m.fail_next_drain(&ns(1));
        assert!(m.poke(&ns(1)));
        assert!(round(&mut w, &want, &m).is_empty());
        assert_eq!(w.watching().count(), 0);
        assert_eq!(
            round(&mut w, &want, &m),
            [(id(1), HaEvent::Watching)].into()
        );
        assert_eq!(m.opens(), 3);
    }

    #[test]
    fn a_router_moved_to_another_namespace_is_watched_there() {
        let m = FakeMonitors::default();
        m.create(&ns(1));
        m.create(&ns(9));
        let want = wanted(&[1]);
        let mut w = Watched::new();
        round(&mut w, &want, &m);
        want.lock().unwrap().insert(id(1), ns(9));
        assert_eq!(
            round(&mut w, &want, &m),
            [(id(1), HaEvent::Watching)].into()
        );
        assert!(!m.is_open(&ns(1)));
        assert!(m.is_open(&ns(9)));
    }

    #[test]
    fn the_thread_reports_events_and_stops_promptly() {
        let m = FakeMonitors::default();
        m.create(&ns(1));
        let routers: HaRouters = Arc::new(wanted(&[1]));
        let (tx, rx) = mpsc::channel();
        let watch = HaWatch::start(Arc::clone(&routers), Arc::new(m.clone()), move |id, ev| {
            let _ = tx.send((id.clone(), ev));
        })
        .unwrap();
        let within = Duration::from_secs(5);
        assert_eq!(rx.recv_timeout(within), Ok((id(1), HaEvent::Watching)));
        assert!(m.poke(&ns(1)));
        assert_eq!(rx.recv_timeout(within), Ok((id(1), HaEvent::Changed)));
        // A router added later is picked up within a round.
        m.create(&ns(2));
        routers.lock().unwrap().insert(id(2), ns(2));
        assert_eq!(rx.recv_timeout(within), Ok((id(2), HaEvent::Watching)));
        let start = Instant::now();
        assert!(watch.stop(Duration::from_secs(2)));
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
        assert!(!m.is_open(&ns(1)), "the monitors outlived the watch");
    }

    #[test]
    fn settle_makes_one_reconcile_of_a_burst_and_never_starves_a_flapping_router() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut s = Settle::new(ms(1000));
        assert_eq!(s.next_due(), None);
        assert!(s.note(&id(1), t0));
        assert!(!s.note(&id(1), t0 + ms(300)));
        assert!(!s.note(&id(1), t0 + ms(900)));
        assert!(s.note(&id(2), t0 + ms(500)));
        assert_eq!(s.next_due(), Some(t0 + ms(1000)));
        assert!(s.due(t0 + ms(999)).is_empty());
        assert_eq!(s.due(t0 + ms(1000)), [(id(1), t0)]);
        assert!(s.due(t0 + ms(1000)).is_empty(), "once per burst");
        assert_eq!(s.due(t0 + ms(1500)), [(id(2), t0 + ms(500))]);
        // An event after the burst was acted on starts a new one.
        assert!(s.note(&id(1), t0 + ms(1001)));
        assert_eq!(s.next_due(), Some(t0 + ms(2001)));
    }
}
