//! The work queue between the front ends and the router reconciler.
//!
//! Front ends mark routers dirty by key ([`WorkQueue::mark_dirty`]); workers take keys with
//! [`WorkQueue::next`] and report with [`WorkQueue::done`]. The queue guarantees:
//!
//! - **Coalescing.** A key is queued at most once: marking a queued key again is a no-op
//!   ([`Marked::Coalesced`]). A key being worked on is re-queued once after its worker
//!   finishes, however many times it was marked meanwhile ([`Marked::AfterCurrentRun`]): the
//!   worker read the desired state before the new event, so one more run is needed, not more.
//! - **One worker per key.** A key is never handed out while it is in flight.
//! - **Bounded parallelism.** At most [`QueueConfig::workers`] keys are in flight at once.
//! - **Backoff per key.** A failed key is retried after a delay drawn uniformly from
//!   `[0, min(cap, base * 2^(failures-1))]` ("full jitter": routers failing together, e.g.
//!   after an iptables lock stall, do not retry in lock step). Success resets its count. A key
//!   waiting out its backoff holds no worker, so one failing router never blocks the others.
//!   A new event for a key in backoff runs it promptly (the new desired state may be the fix);
//!   its failure count is kept, so if it fails again it waits longer than before. Its retry
//!   rate is thus bounded by the backoff or by its own event rate, whichever is faster.
//! - **Shutdown** ([`WorkQueue::shutdown`]) drops queued work (the next start reconciles
//!   every router anyway; on stop, routers stay as they are), lets in-flight work finish, and
//!   then [`WorkQueue::next`] returns [`Next::Shutdown`] to every worker.
//!
//! Time and randomness come from a [`Clock`] and a [`Jitter`] passed in by constructor, so
//! backoff is tested to the nanosecond without sleeping.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Where the queue reads the time: [`SystemClock`] in the agent, a manual clock in tests.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now.
    fn now(&self) -> Instant;
}

/// The monotonic clock of the machine.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// Picks a backoff delay: where the queue's randomness comes from, so tests can pin it.
pub trait Jitter: Send + std::fmt::Debug {
    /// A delay drawn uniformly from `[0, max]`.
    fn pick(&mut self, max: Duration) -> Duration;
}

/// A xorshift64* generator: plenty for spreading retries, no dependency, seedable.
#[derive(Debug, Clone)]
pub struct XorShiftJitter(u64);

impl XorShiftJitter {
    /// A generator from `seed` (0 is replaced: xorshift never leaves the all-zero state).
    pub fn new(seed: u64) -> XorShiftJitter {
        XorShiftJitter(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// A generator seeded from the time and the process id, so agents on many hosts that
    /// restart together still spread their retries.
    pub fn from_entropy() -> XorShiftJitter {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let seed = (t as u64) ^ (u64::from(std::process::id()) << 32) ^ ((t >> 64) as u64);
        XorShiftJitter::new(seed)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

impl Jitter for XorShiftJitter {
    fn pick(&mut self, max: Duration) -> Duration {
        let max_ns = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        if max_ns == 0 {
            return Duration::ZERO;
        }
        // The modulo bias is at most max/2^64: irrelevant for delays.
        Duration::from_nanos(self.next_u64() % max_ns.saturating_add(1))
    }
}

/// How many keys run at once and how failed keys back off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    /// At most this many keys are in flight (at least 1).
    pub workers: usize,
    /// The backoff ceiling after the first failure.
    pub backoff_base: Duration,
    /// The backoff ceiling never exceeds this.
    pub backoff_cap: Duration,
}

impl Default for QueueConfig {
    /// 4 workers (reconciling is mostly waiting on netlink and iptables-restore), backoff
    /// from 1 s up to 5 min.
    fn default() -> QueueConfig {
        QueueConfig {
            workers: 4,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(300),
        }
    }
}

/// What [`WorkQueue::mark_dirty`] did with the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marked {
    /// The key was idle (or waiting out a backoff) and is now queued to run.
    Queued,
    /// The key was already queued: the pending run will see this change too.
    Coalesced,
    /// The key is being worked on: it runs once more after the current run.
    AfterCurrentRun,
    /// The queue is shutting down: the event is dropped.
    ShuttingDown,
}

/// What [`WorkQueue::next`] hands a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next<K> {
    /// Work on this key, then call [`WorkQueue::done`] with it.
    Work(K),
    /// Nothing to do before the deadline; call again (after any periodic duties).
    Idle,
    /// The queue was shut down and no work is in flight any more: the worker exits.
    Shutdown,
}

/// When a key that was reported [`done`](WorkQueue::done) runs next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextRun {
    /// Not until it is marked dirty again.
    WhenMarked,
    /// It was marked while in flight, so it is queued again now.
    Now,
    /// It failed and is retried after this backoff (unless marked dirty sooner).
    After(Duration),
}

/// For log lines: `when marked`, `now`, `in 2.5s` (never Rust debug syntax).
impl std::fmt::Display for NextRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NextRun::WhenMarked => f.write_str("when marked"),
            NextRun::Now => f.write_str("now"),
            NextRun::After(d) => write!(f, "in {:.1}s", d.as_secs_f64()),
        }
    }
}

/// The outcome of [`WorkQueue::done`], for the worker's log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// Consecutive failures of this key, 0 after a success.
    pub failures: u32,
    /// When it runs next.
    pub next_run: NextRun,
}

#[derive(Debug)]
struct Inner<K> {
    /// Keys ready to run, in the order they became ready (fairness among routers).
    ready: VecDeque<K>,
    /// The keys in `ready`.
    queued: BTreeSet<K>,
    /// Keys waiting out a backoff, with the time they become ready.
    delayed: BTreeMap<K, Instant>,
    /// Keys being worked on, with whether they were marked dirty meanwhile.
    in_flight: BTreeMap<K, bool>,
    /// Consecutive failures of keys whose last run failed.
    failures: BTreeMap<K, u32>,
    jitter: Box<dyn Jitter>,
    shutdown: bool,
}

impl<K: Ord + Clone> Inner<K> {
    fn enqueue(&mut self, key: K) {
        if self.queued.insert(key.clone()) {
            self.ready.push_back(key);
        }
    }

    /// Moves keys whose backoff ended at `now` to the ready queue, earliest first.
    fn promote_due(&mut self, now: Instant) {
        let mut due: Vec<(Instant, K)> = self
            .delayed
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(k, at)| (*at, k.clone()))
            .collect();
        due.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        for (_, k) in due {
            self.delayed.remove(&k);
            self.enqueue(k);
        }
    }
}

/// Routers (or anything with an ordered key) waiting to be reconciled; see the module docs
/// for the guarantees. Shared between front ends and workers by reference (`Arc`).
#[derive(Debug)]
pub struct WorkQueue<K> {
    inner: Mutex<Inner<K>>,
    cond: Condvar,
    clock: Box<dyn Clock>,
    config: QueueConfig,
}

impl<K: Ord + Clone> WorkQueue<K> {
    /// A queue on the system clock with entropy-seeded jitter: the agent's.
    pub fn new(config: QueueConfig) -> WorkQueue<K> {
        WorkQueue::with_clock(
            config,
            Box::new(SystemClock),
            Box::new(XorShiftJitter::from_entropy()),
        )
    }

    /// A queue with the time and randomness given: tests pin both.
    pub fn with_clock(
        config: QueueConfig,
        clock: Box<dyn Clock>,
        jitter: Box<dyn Jitter>,
    ) -> WorkQueue<K> {
        WorkQueue {
            inner: Mutex::new(Inner {
                ready: VecDeque::new(),
                queued: BTreeSet::new(),
                delayed: BTreeMap::new(),
                in_flight: BTreeMap::new(),
                failures: BTreeMap::new(),
                jitter,
                shutdown: false,
            }),
            cond: Condvar::new(),
            clock,
            config: QueueConfig {
                workers: config.workers.max(1),
                ..config
            },
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<K>> {
        // A worker that panicked while holding the lock left consistent state behind (every
        // mutation is a few infallible collection operations), so carry on.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A front end saw a change for `key`: make sure it is reconciled (once) after now.
    pub fn mark_dirty(&self, key: K) -> Marked {
        let mut s = self.lock();
        if s.shutdown {
            return Marked::ShuttingDown;
        }
        let marked = if let Some(rerun) = s.in_flight.get_mut(&key) {
            *rerun = true;
            Marked::AfterCurrentRun
        } else if s.queued.contains(&key) {
            Marked::Coalesced
        } else {
            s.delayed.remove(&key);
            s.enqueue(key);
            Marked::Queued
        };
        drop(s);
        if marked == Marked::Queued {
            self.cond.notify_all();
        }
        marked
    }

    /// Waits until a key can be worked on (returned as in flight), `deadline` passes
    /// ([`Next::Idle`]), or the queue is shut down and drained ([`Next::Shutdown`]). A
    /// deadline in the past never blocks.
    pub fn next(&self, deadline: Instant) -> Next<K> {
        let mut s = self.lock();
        loop {
            let now = self.clock.now();
            if s.shutdown {
                if s.in_flight.is_empty() {
                    return Next::Shutdown;
                }
            } else {
                s.promote_due(now);
                if s.in_flight.len() < self.config.workers {
                    if let Some(key) = s.ready.pop_front() {
                        s.queued.remove(&key);
                        s.in_flight.insert(key.clone(), false);
                        return Next::Work(key);
                    }
                }
            }
            if now >= deadline {
                return Next::Idle;
            }
            let mut wake = deadline;
            if !s.shutdown {
                if let Some(at) = s.delayed.values().min() {
                    wake = wake.min(*at);
                }
            }
            let wait = wake
                .saturating_duration_since(now)
                .max(Duration::from_millis(1));
            s = self
                .cond
                .wait_timeout(s, wait)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// A worker finished `key` (taken from [`next`](Self::next)); `result` says whether the
    /// kernel now matches the desired state. Returns `None` if `key` was not in flight (a
    /// bug in the caller; nothing is changed).
    pub fn done<T, E>(&self, key: &K, result: &Result<T, E>) -> Option<Completion> {
        let now = self.clock.now();
        let mut s = self.lock();
        let rerun = s.in_flight.remove(key)?;
        let completion = match result {
            Ok(_) => {
                s.failures.remove(key);
                Completion {
                    failures: 0,
                    next_run: if rerun && !s.shutdown {
                        s.enqueue(key.clone());
                        NextRun::Now
                    } else {
                        NextRun::WhenMarked
                    },
                }
            }
            Err(_) => {
                let failures = s.failures.get(key).copied().unwrap_or(0).saturating_add(1);
                s.failures.insert(key.clone(), failures);
                let next_run = if s.shutdown {
                    NextRun::WhenMarked
                } else if rerun {
                    s.enqueue(key.clone());
                    NextRun::Now
                } else {
                    let ceiling = backoff_ceiling(&self.config, failures);
                    let delay = s.jitter.pick(ceiling).min(ceiling);
                    s.delayed.insert(key.clone(), now + delay);
                    NextRun::After(delay)
                };
                Completion { failures, next_run }
            }
        };
        drop(s);
        self.cond.notify_all();
        Some(completion)
    }

    /// Stops handing out work: queued and backing-off keys are dropped, in-flight keys
    /// finish, then every [`next`](Self::next) returns [`Next::Shutdown`]. Returns how many
    /// keys were dropped.
    pub fn shutdown(&self) -> usize {
        let mut s = self.lock();
        s.shutdown = true;
        let dropped = s.ready.len() + s.delayed.len();
        s.ready.clear();
        s.queued.clear();
        s.delayed.clear();
        drop(s);
        self.cond.notify_all();
        dropped
    }

    /// Keys waiting to run, ready or backing off (not those in flight): the queue depth
    /// gauge.
    pub fn depth(&self) -> usize {
        let s = self.lock();
        s.ready.len() + s.delayed.len()
    }

    /// Keys waiting out a backoff after a failure.
    pub fn backing_off(&self) -> usize {
        self.lock().delayed.len()
    }

    /// Keys being worked on.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight.len()
    }

    /// Consecutive failures of `key` (0: its last run succeeded or it never ran).
    pub fn failures(&self, key: &K) -> u32 {
        self.lock().failures.get(key).copied().unwrap_or(0)
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    pub fn is_shut_down(&self) -> bool {
        self.lock().shutdown
    }
}

/// `min(cap, base * 2^(failures-1))`: the upper end of the jittered delay after the
/// `failures`-th consecutive failure.
pub fn backoff_ceiling(config: &QueueConfig, failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(62);
    let factor = 1u64 << exp;
    let base_ns = config.backoff_base.as_nanos();
    let ns = base_ns.saturating_mul(u128::from(factor));
    let capped = ns.min(config.backoff_cap.as_nanos());
    Duration::from_nanos(u64::try_from(capped).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    use std::sync::{mpsc, Arc};

    /// A clock that moves only when told.
    #[derive(Debug, Clone)]
    struct ManualClock(Arc<Mutex<Instant>>);

    impl ManualClock {
        fn new() -> ManualClock {
            ManualClock(Arc::new(Mutex::new(Instant::now())))
        }
        fn advance(&self, d: Duration) {
            *self.0.lock().unwrap() += d;
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> Instant {
            *self.0.lock().unwrap()
        }
    }

    /// Always picks the ceiling, so backoff delays are exact.
    #[derive(Debug)]
    struct MaxJitter;

    impl Jitter for MaxJitter {
        fn pick(&mut self, max: Duration) -> Duration {
            max
        }
    }

    fn cfg(workers: usize) -> QueueConfig {
        QueueConfig {
            workers,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(300),
        }
    }

    fn queue(workers: usize) -> (WorkQueue<&'static str>, ManualClock) {
        let clock = ManualClock::new();
        let q = WorkQueue::with_clock(cfg(workers), Box::new(clock.clone()), Box::new(MaxJitter));
        (q, clock)
    }

    /// `next` with a deadline of now: never blocks.
    fn take(q: &WorkQueue<&'static str>, c: &ManualClock) -> Next<&'static str> {
        q.next(c.now())
    }

    const OK: Result<(), ()> = Ok(());
    const FAIL: Result<(), ()> = Err(());

    #[test]
    fn events_for_a_queued_key_coalesce_into_one_run() {
        let (q, c) = queue(4);
        assert_eq!(q.mark_dirty("r1"), Marked::Queued);
        assert_eq!(q.mark_dirty("r1"), Marked::Coalesced);
        assert_eq!(q.mark_dirty("r1"), Marked::Coalesced);
        assert_eq!(q.depth(), 1);
        assert_eq!(take(&q, &c), Next::Work("r1"));
        assert_eq!(take(&q, &c), Next::Idle);
    }

    #[test]
    fn a_key_marked_while_in_flight_runs_once_more_after_it_finishes_and_never_concurrently() {
        let (q, c) = queue(4);
        q.mark_dirty("r1");
        assert_eq!(take(&q, &c), Next::Work("r1"));
        assert_eq!(q.mark_dirty("r1"), Marked::AfterCurrentRun);
        assert_eq!(q.mark_dirty("r1"), Marked::AfterCurrentRun);
        // Not handed out again while in flight.
        assert_eq!(take(&q, &c), Next::Idle);
        assert_eq!(q.depth(), 0);
        let done = q.done(&"r1", &OK).unwrap();
        assert_eq!(done.next_run, NextRun::Now);
        assert_eq!(take(&q, &c), Next::Work("r1"));
        assert_eq!(q.done(&"r1", &OK).unwrap().next_run, NextRun::WhenMarked);
        assert_eq!(take(&q, &c), Next::Idle);
    }

    #[test]
    fn no_more_keys_are_in_flight_than_there_are_workers() {
        let (q, c) = queue(2);
        for k in ["a", "b", "c"] {
            q.mark_dirty(k);
        }
        assert_eq!(take(&q, &c), Next::Work("a"));
        assert_eq!(take(&q, &c), Next::Work("b"));
        assert_eq!(take(&q, &c), Next::Idle);
        assert_eq!(q.in_flight(), 2);
        q.done(&"a", &OK);
        assert_eq!(take(&q, &c), Next::Work("c"));
    }

    #[test]
    fn keys_run_in_the_order_they_became_dirty() {
        let (q, c) = queue(8);
        for k in ["c", "a", "b"] {
            q.mark_dirty(k);
        }
        let order: Vec<_> = (0..3).map(|_| take(&q, &c)).collect();
        assert_eq!(order, [Next::Work("c"), Next::Work("a"), Next::Work("b")]);
    }

    #[test]
    fn a_failed_key_backs_off_exponentially_up_to_the_cap_and_success_resets_it() {
        let (q, c) = queue(1);
        q.mark_dirty("r1");
        let mut delays = Vec::new();
        for _ in 0..11 {
            // Not ready a nanosecond before its backoff ends.
            if let Some(d) = delays.last() {
                c.advance(*d - Duration::from_nanos(1));
                assert_eq!(take(&q, &c), Next::Idle);
                c.advance(Duration::from_nanos(1));
            }
            assert_eq!(take(&q, &c), Next::Work("r1"));
            match q.done(&"r1", &FAIL).unwrap().next_run {
                NextRun::After(d) => delays.push(d),
                other => panic!("expected a backoff, got {other:?}"),
            }
        }
        let secs: Vec<u64> = delays.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(q.failures(&"r1"), 11);
        assert_eq!(q.backing_off(), 1);
        assert_eq!(q.depth(), 1);

        c.advance(Duration::from_secs(300));
        assert_eq!(take(&q, &c), Next::Work("r1"));
        let done = q.done(&"r1", &OK).unwrap();
        assert_eq!(done.failures, 0);
        assert_eq!(q.failures(&"r1"), 0);
        // The next failure starts from the base again.
        q.mark_dirty("r1");
        assert_eq!(take(&q, &c), Next::Work("r1"));
        assert_eq!(
            q.done(&"r1", &FAIL).unwrap().next_run,
            NextRun::After(Duration::from_secs(1))
        );
    }

    #[test]
    fn full_jitter_draws_delays_between_zero_and_the_ceiling() {
        let config = cfg(1);
        let mut j = XorShiftJitter::new(42);
        for failures in [1, 3, 9, 40] {
            let ceiling = backoff_ceiling(&config, failures);
            let picks: Vec<Duration> = (0..200).map(|_| j.pick(ceiling)).collect();
            assert!(picks.iter().all(|d| *d <= ceiling));
            // Spread over the range, not stuck at one end.
            assert!(picks.iter().any(|d| *d < ceiling / 4));
            assert!(picks.iter().any(|d| *d > ceiling * 3 / 4));
        }
        assert_eq!(j.pick(Duration::ZERO), Duration::ZERO);
        assert_eq!(backoff_ceiling(&config, u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn a_failing_key_does_not_hold_a_worker_or_block_the_others() {
        let (q, c) = queue(1);
        q.mark_dirty("bad");
        assert_eq!(take(&q, &c), Next::Work("bad"));
        q.done(&"bad", &FAIL);
        q.mark_dirty("good");
        assert_eq!(take(&q, &c), Next::Work("good"));
        q.done(&"good", &OK);
        assert_eq!(q.in_flight(), 0);
        assert_eq!(q.failures(&"bad"), 1);
        assert_eq!(q.failures(&"good"), 0);
    }

    #[test]
    fn an_event_for_a_key_in_backoff_runs_it_now_but_keeps_its_failure_count() {
        let (q, c) = queue(1);
        q.mark_dirty("r1");
        take(&q, &c);
        q.done(&"r1", &FAIL);
        take(&q, &c); // Idle: backing off.
        assert_eq!(q.mark_dirty("r1"), Marked::Queued);
        assert_eq!(q.backing_off(), 0);
        assert_eq!(take(&q, &c), Next::Work("r1"));
        let done = q.done(&"r1", &FAIL).unwrap();
        assert_eq!(done.failures, 2);
        assert_eq!(done.next_run, NextRun::After(Duration::from_secs(2)));
    }

    #[test]
    fn a_failed_key_marked_during_its_run_is_retried_at_once() {
        let (q, c) = queue(1);
        q.mark_dirty("r1");
        take(&q, &c);
        q.mark_dirty("r1");
        let done = q.done(&"r1", &FAIL).unwrap();
        assert_eq!(done.next_run, NextRun::Now);
        assert_eq!(done.failures, 1);
        assert_eq!(take(&q, &c), Next::Work("r1"));
    }

    #[test]
    fn done_for_a_key_not_in_flight_changes_nothing() {
        let (q, c) = queue(1);
        assert_eq!(q.done(&"r1", &OK), None);
        q.mark_dirty("r1");
        assert_eq!(q.done(&"r1", &FAIL), None);
        assert_eq!(q.failures(&"r1"), 0);
        assert_eq!(take(&q, &c), Next::Work("r1"));
    }

    #[test]
    fn shutdown_drops_queued_work_and_waits_for_in_flight_work() {
        let (q, c) = queue(2);
        for k in ["a", "b", "c"] {
            q.mark_dirty(k);
        }
        assert_eq!(take(&q, &c), Next::Work("a"));
        assert_eq!(q.shutdown(), 2);
        assert!(q.is_shut_down());
        assert_eq!(q.depth(), 0);
        assert_eq!(q.mark_dirty("d"), Marked::ShuttingDown);
        // "a" is still in flight: workers are not told to exit yet.
        assert_eq!(take(&q, &c), Next::Idle);
        q.mark_dirty("a");
        let done = q.done(&"a", &FAIL).unwrap();
        assert_eq!(done.next_run, NextRun::WhenMarked);
        assert_eq!(take(&q, &c), Next::Shutdown);
        assert_eq!(take(&q, &c), Next::Shutdown);
    }

    #[test]
    fn next_returns_idle_at_its_deadline_on_the_real_clock() {
        let q: WorkQueue<u32> = WorkQueue::new(cfg(1));
        let start = Instant::now();
        assert_eq!(q.next(start + Duration::from_millis(20)), Next::Idle);
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(20), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    #[test]
    fn a_blocked_worker_wakes_when_a_key_is_marked_and_when_shut_down() {
        let q: Arc<WorkQueue<u32>> = Arc::new(WorkQueue::new(cfg(1)));
        let (tx, rx) = mpsc::channel();
        let worker = {
            let q = Arc::clone(&q);
            std::thread::spawn(move || {
                for _ in 0..2 {
                    let got = q.next(Instant::now() + Duration::from_secs(10));
                    if let Next::Work(k) = &got {
                        q.done(k, &OK);
                    }
                    tx.send(got).unwrap();
                }
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        q.mark_dirty(7);
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(Next::Work(7)));
        q.shutdown();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(Next::Shutdown));
        worker.join().unwrap();
    }

    /// Workers on real threads while a producer marks keys dirty at random: no key is ever
    /// worked on by two workers at once, never more than `workers` keys run together, and
    /// every key's last run started after its last event (no event is lost to coalescing).
    #[test]
    fn concurrent_workers_never_process_one_key_twice_at_once_and_lose_no_event() {
        const KEYS: usize = 6;
        const WORKERS: usize = 3;
        const EVENTS: usize = 400;
        let q: Arc<WorkQueue<usize>> = Arc::new(WorkQueue::new(QueueConfig {
            workers: WORKERS,
            backoff_base: Duration::from_millis(1),
            backoff_cap: Duration::from_millis(4),
        }));
        let seq = Arc::new(AtomicU64::new(1));
        let busy: Arc<Vec<AtomicBool>> =
            Arc::new((0..KEYS).map(|_| AtomicBool::new(false)).collect());
        let last_mark: Arc<Vec<AtomicU64>> =
            Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
        let last_start: Arc<Vec<AtomicU64>> =
            Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
        let runs: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
        let overlaps = Arc::new(AtomicUsize::new(0));
        let running = Arc::new(AtomicUsize::new(0));
        let max_running = Arc::new(AtomicUsize::new(0));
        let (exit_tx, exit_rx) = mpsc::channel();

        for _ in 0..WORKERS {
            let (q, seq, busy, last_start, runs) = (
                Arc::clone(&q),
                Arc::clone(&seq),
                Arc::clone(&busy),
                Arc::clone(&last_start),
                Arc::clone(&runs),
            );
            let (overlaps, running, max_running, exit_tx) = (
                Arc::clone(&overlaps),
                Arc::clone(&running),
                Arc::clone(&max_running),
                exit_tx.clone(),
            );
            std::thread::spawn(move || {
                // Bounded: the test shuts the queue down; this cap only stops a runaway.
                for _ in 0..100_000 {
                    match q.next(Instant::now() + Duration::from_millis(50)) {
                        Next::Work(k) => {
                            if busy[k].swap(true, Ordering::SeqCst) {
                                overlaps.fetch_add(1, Ordering::SeqCst);
                            }
                            let n = running.fetch_add(1, Ordering::SeqCst) + 1;
                            max_running.fetch_max(n, Ordering::SeqCst);
                            last_start[k]
                                .store(seq.fetch_add(1, Ordering::SeqCst), Ordering::SeqCst);
                            let run = runs[k].fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_micros(200));
                            running.fetch_sub(1, Ordering::SeqCst);
                            busy[k].store(false, Ordering::SeqCst);
                            // Every third run fails, to exercise backoff alongside events.
                            let result: Result<(), ()> =
                                if run % 3 == 2 { Err(()) } else { Ok(()) };
                            q.done(&k, &result);
                        }
                        Next::Idle => {}
                        Next::Shutdown => break,
                    }
                }
                exit_tx.send(()).unwrap();
            });
        }

        let mut rng = XorShiftJitter::new(7);
        for i in 0..EVENTS {
            let k = usize::try_from(rng.next_u64() % KEYS as u64).unwrap();
            last_mark[k].store(seq.fetch_add(1, Ordering::SeqCst), Ordering::SeqCst);
            q.mark_dirty(k);
            if i % 8 == 0 {
                std::thread::sleep(Duration::from_micros(300));
            }
        }

        // Quiescent: nothing queued, backing off or running (bounded wait).
        let deadline = Instant::now() + Duration::from_secs(20);
        while q.depth() + q.in_flight() > 0 {
            assert!(Instant::now() < deadline, "queue did not drain");
            std::thread::sleep(Duration::from_millis(5));
        }
        q.shutdown();
        for _ in 0..WORKERS {
            exit_rx
                .recv_timeout(Duration::from_secs(10))
                .expect("a worker did not exit after shutdown");
        }

        assert_eq!(overlaps.load(Ordering::SeqCst), 0, "a key ran concurrently");
        assert!(max_running.load(Ordering::SeqCst) <= WORKERS);
        for k in 0..KEYS {
            let (m, s) = (
                last_mark[k].load(Ordering::SeqCst),
                last_start[k].load(Ordering::SeqCst),
            );
            assert!(s > m, "key {k}: last event {m} after last run start {s}");
            assert_eq!(q.failures(&k), 0, "key {k} ended failed");
        }
        let total: u64 = runs.iter().map(|r| r.load(Ordering::SeqCst)).sum();
        assert!(
            total < EVENTS as u64 * 2,
            "coalescing should bound runs: {total}"
        );
    }

    #[test]
    fn next_run_displays_for_people() {
        assert_eq!(NextRun::WhenMarked.to_string(), "when marked");
        assert_eq!(NextRun::Now.to_string(), "now");
        assert_eq!(
            NextRun::After(Duration::from_millis(2500)).to_string(),
            "in 2.5s"
        );
    }
}
