//! `l3agent iptables counters`

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use super::{load_rules, open, print_json, Failure, Target};

/// Arguments of `iptables counters`.
#[derive(Debug, Args)]
pub struct CountersArgs {
    /// Rules file that declares the chain.
    #[arg(long, value_name = "FILE")]
    rules: PathBuf,
    /// Chain, as written in the rules file (wrapped unless --unwrapped).
    #[arg(long)]
    chain: String,
    /// The chain is an unwrapped (shared or builtin) chain.
    #[arg(long)]
    unwrapped: bool,
    /// Reset the counters as they are read.
    #[arg(long)]
    zero: bool,
    #[command(flatten)]
    pub target: Target,
}

/// Runs `iptables counters`.
pub fn run(a: CountersArgs) -> Result<(), Failure> {
    let model = load_rules(&a.rules)?;
    let manager = open(&a.target, model)?;
    let Some(c) = manager.traffic_counters(&a.chain, !a.unwrapped, a.zero)? else {
        return Err(Failure::invalid(format!(
            "--chain: no table of {} has chain {:?}",
            a.rules.display(),
            a.chain
        )));
    };
    if a.target.json {
        print_json(
            &json!({"chain": a.chain, "packets": c.packets, "bytes": c.bytes, "zeroed": a.zero}),
        );
    } else {
        println!(
            "{}: {} packets, {} bytes{}",
            a.chain,
            c.packets,
            c.bytes,
            if a.zero { " (now zeroed)" } else { "" }
        );
    }
    Ok(())
}
