//! `l3agent plan` and `l3agent status`

use std::path::PathBuf;

use clap::Args;
use l3agent_router::host::{Health, RouterHealth};

use super::{host_failure, load_host_config, print_json, sides, Failure, Sides};

/// Arguments of `plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Host config.
    config: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The state directory (the config's agent.state_path).
    #[arg(long, default_value = "/var/lib/l3agent")]
    state_path: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `plan`: exactly the changes apply would make now, router by router; touches nothing.
pub fn plan(a: PlanArgs) -> Result<(), Failure> {
    let cfg = load_host_config(&a.config)?;
    let Sides {
        facts,
        backend,
        announcer,
        ..
    } = sides()?;
    let make = l3agent_router::host::real_sides(backend, &announcer);
    let report = l3agent_router::host::plan(&cfg, &facts, &make).map_err(host_failure)?;
    if a.json {
        print_json(&serde_json::to_value(&report).unwrap_or_default());
        return Ok(());
    }
    if !report.changed() {
        println!("nothing to do: every router is as configured");
    }
    for r in report.routers.iter().filter(|r| !r.changes.is_empty()) {
        println!("router {}:", r.id);
        for c in &r.changes {
            println!("    {c}");
        }
    }
    Ok(())
}

fn print(views: &[RouterHealth]) {
    if views.is_empty() {
        println!("no routers");
    }
    for v in views {
        let health = serde_json::to_value(v.health).unwrap_or_default();
        println!("{:<8} {}", health.as_str().unwrap_or_default(), v.id);
        for c in &v.drift {
            println!("         repair: {c}");
        }
    }
}

/// Runs `status`: the last applied routers and any drift. Exit status 1 if any drifted,
/// went missing or failed.
pub fn status(a: StatusArgs) -> Result<(), Failure> {
    let Sides {
        backend, announcer, ..
    } = sides()?;
    let make = l3agent_router::host::real_sides(backend, &announcer);
    let views = l3agent_router::host::status(&a.state_path, &make).map_err(host_failure)?;
    if a.json {
        print_json(&serde_json::to_value(&views).unwrap_or_default());
    } else {
        print(&views);
    }
    let bad: Vec<&str> = views
        .iter()
        .filter(|v| v.health != Health::Ok)
        .map(|v| v.id.as_str())
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(Failure::reported(format!(
            "not as applied: {}",
            bad.join(", ")
        )))
    }
}
