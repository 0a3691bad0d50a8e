//! `l3agent plan` and `l3agent status`

use std::path::{Path, PathBuf};
use std::time::Duration;

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
    /// The running agent's control socket: when it answers, its view is shown (routers with
    /// their state, last error and last change, the queue, the last config load); otherwise
    /// the state directory is compared with the kernel.
    #[arg(long, value_name = "PATH", default_value = l3agent_agent::control::DEFAULT_SOCKET)]
    control_socket: PathBuf,
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

/// The running agent's answer, if one answers at `socket` (a missing socket or a refused
/// connection means no agent; other errors are said on stderr before falling back).
fn agent_view(socket: &Path) -> Option<serde_json::Value> {
    let request = l3agent_agent::Request::Status { router: None };
    match l3agent_agent::control::client::query(socket, &request, Duration::from_secs(5)) {
        Ok(v) => Some(v),
        Err(l3agent_agent::AgentError::Control { source, .. })
            if matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            None
        }
        Err(e) => {
            eprintln!("l3agent: asking the agent failed ({e}); showing the state directory");
            None
        }
    }
}

/// How long ago a unix time was, for people.
fn ago(v: &serde_json::Value) -> String {
    let Some(t) = v.as_u64() else {
        return "never".into();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{}s ago", now.saturating_sub(t))
}

/// Prints the agent's view; exit status 1 if a router failed.
fn print_agent(v: &serde_json::Value, json: bool) -> Result<(), Failure> {
    let routers = v["routers"].as_array().cloned().unwrap_or_default();
    if json {
        print_json(v);
    } else {
        println!(
            "agent (pid {}): {}, queue depth {}, {} in progress, {} drift repair(s)",
            v["pid"],
            if v["ready"] == true {
                "ready"
            } else {
                "starting"
            },
            v["queue_depth"],
            v["in_flight"],
            v["drift_repairs"]
        );
        let c = &v["config"];
        if c["ok"] == true {
            println!(
                "config: loaded {} ({} routers)",
                ago(&c["loaded_at"]),
                c["routers"]
            );
        } else {
            println!(
                "config: the last load failed {} (the previous config stays in force):\n  {}",
                ago(&c["loaded_at"]),
                c["error"]
                    .as_str()
                    .unwrap_or_default()
                    .replace('\n', "\n  ")
            );
        }
        if routers.is_empty() {
            println!("no routers");
        }
        for r in &routers {
            println!(
                "{:<10} {}  last change {}",
                r["state"].as_str().unwrap_or_default(),
                r["id"].as_str().unwrap_or_default(),
                ago(&r["last_change"])
            );
            if let Some(e) = r["last_error"].as_str() {
                println!("           error ({} failure(s)): {e}", r["failures"]);
            }
        }
    }
    let failed: Vec<&str> = routers
        .iter()
        .filter(|r| r["state"] == "failed")
        .filter_map(|r| r["id"].as_str())
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::reported(format!("failed: {}", failed.join(", "))))
    }
}

/// Runs `status`: the running agent's view if it answers, else the last applied routers and
/// any drift. Exit status 1 if any failed (or, from the state directory, drifted or went
/// missing).
pub fn status(a: StatusArgs) -> Result<(), Failure> {
    if let Some(v) = agent_view(&a.control_socket) {
        return print_agent(&v, a.json);
    }
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
