//! `l3agent apply`

use std::path::PathBuf;

use clap::Args;
use l3agent_router::host::{ApplyOptions, RouterStatus, Unchanged};

use super::{finish, host_failure, load_host_config, sides, Failure, Sides};

/// Arguments of `apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Host config (YAML, or JSON if it ends in .json): `agent` and `routers`. See
    /// examples/host-legacy.json.
    config: PathBuf,
    /// Diff every router against the kernel, whatever its dict. This is what a plain apply
    /// does too (devices, addresses, routes, rules, neighbours, sysctls, iptables; every
    /// difference repaired); kept for scripts. An unchanged host stays a no-op.
    #[arg(long, conflicts_with = "changed_only")]
    full: bool,
    /// Touch only routers whose dict changed since their last successful convergence, without
    /// diffing the others against the kernel (for event-driven updates; a plain apply checks).
    #[arg(long)]
    changed_only: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `apply`.
pub fn run(a: ApplyArgs) -> Result<(), Failure> {
    let cfg = load_host_config(&a.config)?;
    let Sides {
        stop,
        facts,
        backend,
        announcer,
    } = sides()?;
    let mut opts = ApplyOptions::new(facts, stop.clone());
    opts.unchanged = if a.full {
        Unchanged::Converge
    } else if a.changed_only {
        Unchanged::Trust
    } else {
        Unchanged::Verify
    };
    let make = l3agent_router::host::real_sides(backend, &announcer);
    let report = l3agent_router::host::apply(&cfg, &opts, &make).map_err(host_failure)?;
    let outcome = if report.interrupted {
        let done = report
            .routers
            .iter()
            .filter(|r| r.status != RouterStatus::Skipped)
            .count();
        finish(&report, a.json).and(Err(Failure::reported(format!(
            "interrupted by a signal after {done} router(s); the next apply continues"
        ))))
    } else {
        finish(&report, a.json)
    };
    // Announcements go on in the background (3 rounds, 2 s apart); the report is out, and a
    // one-shot process waits for the remaining rounds (bounded) so that they are not lost at
    // exit. A signal cuts the wait short.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline
        && !stop.load(std::sync::atomic::Ordering::SeqCst)
        && !announcer.drain(std::time::Duration::from_millis(100))
    {}
    outcome
}
