//! Counters of what this crate made the system do, for metrics and for tests that must prove
//! what did *not* happen (a no-op that spawned nothing, an apply that did not read the kernel).
//!
//! Two views of the same events:
//! - [`global`]: everything this process did through this crate, from any thread and any
//!   runner (what a metrics endpoint exports, as monotonic counters);
//! - [`crate::ProcessRunner::stats`] (and [`crate::Manager::stats`] over it): what one runner
//!   did, so that a test can count its own manager's processes while other tests run in the
//!   same process.
//!
//! Counted: every `iptables-save` (one per family and call), every `iptables-restore`, the
//! lines of restore input sent, the restores iptables refused or that could not run, every
//! process started (saves, restores, listings, version probes), and every nf_tables generation
//! query ([`crate::generation`]). Counting is a relaxed atomic add: free next to a process.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters (atomic; shared by reference). Read them with [`Stats::snapshot`].
#[derive(Debug, Default)]
pub struct Stats {
    /// `iptables-save` runs (one per family).
    pub saves: AtomicU64,
    /// `iptables-restore` runs.
    pub restores: AtomicU64,
    /// Lines of restore input sent.
    pub restore_lines: AtomicU64,
    /// Restores that failed (refused by iptables, or could not run).
    pub restore_failures: AtomicU64,
    /// Processes started (every iptables program, whatever for).
    pub processes: AtomicU64,
    /// nf_tables generation queries (`NFT_MSG_GETGEN`, no process).
    pub generation_queries: AtomicU64,
}

/// The counters at one moment (plain numbers: compare, subtract, serialise).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// See [`Stats::saves`].
    pub saves: u64,
    /// See [`Stats::restores`].
    pub restores: u64,
    /// See [`Stats::restore_lines`].
    pub restore_lines: u64,
    /// See [`Stats::restore_failures`].
    pub restore_failures: u64,
    /// See [`Stats::processes`].
    pub processes: u64,
    /// See [`Stats::generation_queries`].
    pub generation_queries: u64,
}

impl Stats {
    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            saves: r(&self.saves),
            restores: r(&self.restores),
            restore_lines: r(&self.restore_lines),
            restore_failures: r(&self.restore_failures),
            processes: r(&self.processes),
            generation_queries: r(&self.generation_queries),
        }
    }
}

impl StatsSnapshot {
    /// What happened between `earlier` and `self` (field by field, saturating).
    pub fn since(&self, earlier: &StatsSnapshot) -> StatsSnapshot {
        StatsSnapshot {
            saves: self.saves.saturating_sub(earlier.saves),
            restores: self.restores.saturating_sub(earlier.restores),
            restore_lines: self.restore_lines.saturating_sub(earlier.restore_lines),
            restore_failures: self
                .restore_failures
                .saturating_sub(earlier.restore_failures),
            processes: self.processes.saturating_sub(earlier.processes),
            generation_queries: self
                .generation_queries
                .saturating_sub(earlier.generation_queries),
        }
    }
}

static GLOBAL: Stats = Stats {
    saves: AtomicU64::new(0),
    restores: AtomicU64::new(0),
    restore_lines: AtomicU64::new(0),
    restore_failures: AtomicU64::new(0),
    processes: AtomicU64::new(0),
    generation_queries: AtomicU64::new(0),
};

/// The counters of this whole process.
pub fn global() -> StatsSnapshot {
    GLOBAL.snapshot()
}

/// Adds `n` to one counter of the process-wide [`Stats`].
pub(crate) fn record(counter: impl Fn(&Stats) -> &AtomicU64, n: u64) {
    counter(&GLOBAL).fetch_add(n, Ordering::Relaxed);
}

/// Adds `n` to one counter of `local` and of the process-wide [`Stats`].
pub(crate) fn record_in(local: &Stats, counter: impl Fn(&Stats) -> &AtomicU64, n: u64) {
    counter(local).fetch_add(n, Ordering::Relaxed);
    counter(&GLOBAL).fetch_add(n, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_counts_reach_the_global_view_too() {
        let local = Stats::default();
        let before = global();
        record_in(&local, |s| &s.saves, 2);
        record_in(&local, |s| &s.restore_lines, 7);
        assert_eq!(
            local.snapshot(),
            StatsSnapshot {
                saves: 2,
                restore_lines: 7,
                ..StatsSnapshot::default()
            }
        );
        let d = global().since(&before);
        assert!(d.saves >= 2 && d.restore_lines >= 7, "{d:?}");
    }
}
