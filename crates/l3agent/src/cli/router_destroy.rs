//! `l3agent destroy`

use std::path::PathBuf;

use clap::Args;

use super::{finish, host_failure, load_host_config, sides, Failure, Sides};

/// Arguments of `destroy`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["config", "all"]))]
pub struct DestroyArgs {
    /// Host config whose routers to remove.
    config: Option<PathBuf>,
    /// Remove every router in l3agent's state (needs --state-path); the state directory is
    /// left empty.
    #[arg(long, requires = "state_path")]
    all: bool,
    /// The state directory (with --all; otherwise the config's agent.state_path).
    #[arg(long)]
    state_path: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `destroy`.
pub fn run(a: DestroyArgs) -> Result<(), Failure> {
    let cfg = match &a.config {
        Some(p) => Some(load_host_config(p)?),
        None => None,
    };
    let state_path = match (&cfg, &a.state_path) {
        (Some(c), _) => c.agent.state_path.clone(),
        (None, Some(p)) => p.clone(),
        (None, None) => return Err(Failure::invalid("--all needs --state-path")),
    };
    let Sides {
        stop,
        backend,
        announcer,
        ..
    } = sides()?;
    let make = l3agent_router::host::real_sides(backend, &announcer);
    let report = l3agent_router::host::destroy(&state_path, cfg.as_ref(), &stop, &make)
        .map_err(host_failure)?;
    finish(&report, a.json)
}
