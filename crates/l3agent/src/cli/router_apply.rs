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
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs `apply`.
pub fn run(a: ApplyArgs) -> Result<(), Failure> {
    let cfg = load_host_config(&a.config)?;
    let report = l3agent_router::host::apply(&cfg).map_err(|e| Failure::failed(e.to_string()))?;
    finish(&report, a.json)
}
