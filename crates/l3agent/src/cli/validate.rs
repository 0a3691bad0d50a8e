//! `l3agent validate` and `l3agent iptables validate`: the checks of apply, offline.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use super::{load_host_config, load_rules, print_json, Failure};

/// Arguments of `validate`.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Host config (YAML, or JSON if it ends in .json).
    config: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `iptables validate`.
#[derive(Debug, Args)]
pub struct RulesArgs {
    /// Rules file (YAML, or JSON if it ends in .json).
    #[arg(long, value_name = "FILE")]
    rules: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `validate`.
pub fn config(a: ConfigArgs) -> Result<(), Failure> {
    let cfg = load_host_config(&a.config)?;
    let fips: usize = cfg.routers.iter().map(|r| r.fips.len()).sum();
    if a.json {
        print_json(&json!({"valid": true, "routers": cfg.routers.len(), "floating_ips": fips}));
    } else {
        println!(
            "valid: {} router(s), {fips} floating IP(s)",
            cfg.routers.len()
        );
    }
    Ok(())
}

/// Runs `iptables validate`.
pub fn rules(a: RulesArgs) -> Result<(), Failure> {
    // Not freed: the process ends right after (with `_exit`, see main), and freeing a model
    // of 50,000 rules piece by piece costs ~5 ms for nothing.
    std::mem::forget(load_rules(&a.rules)?);
    if a.json {
        print_json(&json!({"valid": true}));
    } else {
        println!("valid");
    }
    Ok(())
}
