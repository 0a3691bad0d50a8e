//! `l3agent apply`

use std::path::PathBuf;

use clap::Args;

use super::{finish, load_host_config, Failure};

/// Arguments of `apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Host config (YAML, or JSON if it ends in .json): `agent` and `routers`. See
    /// examples/host-legacy.yaml.
    config: PathBuf,
    /// Converge every router completely (iptables included), not only the changed ones.
    /// Unchanged routers are otherwise only checked against the kernel (namespace, devices,
    /// addresses) and converged if that check fails.
    #[arg(long, conflicts_with = "changed_only")]
    full: bool,
    /// Touch only routers whose dict changed since their last successful convergence, without
    /// checking the others against the kernel (for event-driven updates; a plain apply checks).
    #[arg(long)]
    changed_only: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs `apply`.
pub fn run(a: ApplyArgs) -> Result<(), Failure> {
    let cfg = load_host_config(&a.config)?;
    l3agent_router::host::install_sigterm_handler();
    use l3agent_router::host::Unchanged;
    let unchanged = if a.full {
        Unchanged::Converge
    } else if a.changed_only {
        Unchanged::Trust
    } else {
        Unchanged::Verify
    };
    let report =
        l3agent_router::host::apply(&cfg, unchanged).map_err(|e| Failure::failed(e.to_string()))?;
    if report.interrupted {
        let done = report
            .routers
            .iter()
            .filter(|r| r.status != "skipped")
            .count();
        finish(&report, a.json)?;
        return Err(Failure::failed(format!(
            "interrupted by a signal after {done} router(s); the next apply continues"
        )));
    }
    finish(&report, a.json)
}
