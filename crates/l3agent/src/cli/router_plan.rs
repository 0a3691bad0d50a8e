//! `l3agent plan` and `l3agent status`

use std::path::PathBuf;

use clap::Args;

use super::{load_host_config, print_json, Failure};

/// Arguments of `plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Host config.
    config: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Arguments of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The state directory (the config's agent.state_path).
    #[arg(long, default_value = "/var/lib/l3agent")]
    state_path: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn print(views: &[l3agent_router::host::RouterView], json: bool) {
    if json {
        print_json(&serde_json::to_value(views).unwrap_or_default());
        return;
    }
    if views.is_empty() {
        println!("no routers");
    }
    for v in views {
        println!("{:<9} router {} ({})", v.state, v.id, v.namespace);
        for f in &v.floating_ips {
            println!("          floating IP {f}");
        }
        for c in &v.changes {
            println!("          will {c}");
        }
    }
}

/// Runs `plan`: what apply would do, router by router; touches nothing.
pub fn plan(a: PlanArgs) -> Result<(), Failure> {
    let cfg = load_host_config(&a.config)?;
    let views = l3agent_router::host::plan(&cfg).map_err(|e| Failure::failed(e.to_string()))?;
    print(&views, a.json);
    Ok(())
}

/// Runs `status`: the last applied routers and any drift. Exit status 1 if any drifted,
/// went missing or failed.
pub fn status(a: StatusArgs) -> Result<(), Failure> {
    let views =
        l3agent_router::host::status(&a.state_path).map_err(|e| Failure::failed(e.to_string()))?;
    print(&views, a.json);
    let bad: Vec<&str> = views
        .iter()
        .filter(|v| v.state != "ok")
        .map(|v| v.id.as_str())
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(Failure::failed(format!(
            "not as applied: {}",
            bad.join(", ")
        )))
    }
}
