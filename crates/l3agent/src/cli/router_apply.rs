//! `l3agent apply`
//!
//! On a terminal, a long apply shows its progress on stderr (an `indicatif` bar: routers
//! done out of all, elapsed time, estimate), fed by the reconciler's progress callback; the
//! bar is cleared before the report is printed. It is never shown with `--json`, when stderr
//! is not a terminal (scripts, logs, systemd), with `-v` (the log lines are the progress),
//! or for a handful of routers: stdout is the same either way.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use l3agent_router::host::{ApplyOptions, Progress, RouterStatus, Unchanged};

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
    let bar = wants_bar(
        a.json,
        cfg.routers.len(),
        std::io::stderr().is_terminal(),
        tracing::enabled!(tracing::Level::INFO),
    )
    .then(|| progress_bar(cfg.routers.len()));
    opts.progress = bar.as_ref().map(bar_progress);
    let make = l3agent_router::host::real_sides(backend, &announcer);
    let applied = l3agent_router::host::apply(&cfg, &opts, &make);
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let report = applied.map_err(host_failure)?;
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

/// Fewer routers than this apply too fast to need a progress bar.
const BAR_MIN_ROUTERS: usize = 8;

/// Whether to show a progress bar: only for a person watching a terminal (stderr is one, no
/// `--json`, no info logging on stderr), and only for more than a handful of routers.
fn wants_bar(json: bool, routers: usize, stderr_is_terminal: bool, logging_info: bool) -> bool {
    !json && stderr_is_terminal && !logging_info && routers > BAR_MIN_ROUTERS
}

/// The reconciler's progress callback moving `bar`.
fn bar_progress(bar: &ProgressBar) -> Progress {
    let bar = bar.clone();
    Progress::new(move |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })
}

/// A bar on stderr for `routers` routers (redrawn at most 10 times a second).
fn progress_bar(routers: usize) -> ProgressBar {
    let bar =
        ProgressBar::with_draw_target(Some(routers as u64), ProgressDrawTarget::stderr_with_hz(10));
    if let Ok(style) = ProgressStyle::with_template(
        "applying [{bar:40}] {pos}/{len} routers ({elapsed}, about {eta} left)",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_is_only_for_a_person_at_a_terminal_applying_more_than_a_few_routers() {
        assert!(wants_bar(false, 9, true, false));
        assert!(wants_bar(false, 1000, true, false));
        // A few routers: done before a bar would help.
        assert!(!wants_bar(false, BAR_MIN_ROUTERS, true, false));
        // JSON, not a terminal, or log lines on stderr: never.
        assert!(!wants_bar(true, 1000, true, false));
        assert!(!wants_bar(false, 1000, false, false));
        assert!(!wants_bar(false, 1000, true, true));
    }

    #[test]
    fn the_bar_follows_the_progress_callback() {
        let bar = progress_bar(10);
        let p = bar_progress(&bar);
        // The reconciler may find fewer routers to count than the config has.
        for done in 1..=7 {
            p.call(done, 7);
            assert_eq!((bar.position(), bar.length()), (done as u64, Some(7)));
        }
        bar.finish_and_clear();
        assert!(bar.is_finished());
    }
}
