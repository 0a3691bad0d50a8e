//! The command line: one file per subcommand.

mod iptables_apply;
mod iptables_counters;
mod iptables_show;
mod router_apply;
mod router_destroy;
mod router_plan;

use std::path::Path;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use l3agent_iptables::spec::RulesFile;
use l3agent_iptables::{IptablesModel, NetnsName};
use l3agent_iptables_exec::{
    BackendChoice, ExecError, ExecOptions, Manager, NetnsTarget, ProcessRunner,
};

/// l3agent: the dataplane of Neutron's L3 agent (iptables manager, router namespaces), in Rust.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    /// More logging on stderr (-v: info, -vv: debug; debug shows restore input). L3AGENT_LOG
    /// overrides, e.g. L3AGENT_LOG=l3agent_iptables_exec=debug.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Converge this host to a config (routers in Neutron's router-dict shape): create, update
    /// and delete routers, ports, floating IPs and routes. Exit status: 0 all routers converged,
    /// 1 a router failed (named, the others still converged), 2 invalid config (nothing touched).
    Apply(router_apply::ApplyArgs),
    /// Print what apply would change, router by router (create, update, repair, remove);
    /// touch nothing.
    Plan(router_plan::PlanArgs),
    /// The routers of the last apply, their namespaces and floating IPs, and any drift between
    /// the kernel and that state. Exit status 1 if anything drifted.
    Status(router_plan::StatusArgs),
    /// Remove everything l3agent created on this host: the routers of CONFIG, or with --all
    /// every router in its state. Found by exact names, never by suffix.
    Destroy(router_destroy::DestroyArgs),
    /// Declarative iptables rules per network namespace (Neutron's IptablesManager).
    #[command(subcommand)]
    Iptables(IptablesCommand),
}

#[derive(Debug, Subcommand)]
enum IptablesCommand {
    /// Make the namespace's rules of one wrap name exactly those of a rules file.
    ///
    /// Rules of the file's wrap name that are not in the file are removed (also when an earlier
    /// process applied them), including ours in builtin and shared chains; nothing else is
    /// touched. Exit status: 0 applied or nothing to do, 1 the apply failed (the failing rule
    /// is named, with context; nothing stays half-applied), 2 invalid input (nothing applied).
    Apply(iptables_apply::ApplyArgs),
    /// Show our chains and rules as the kernel has them; with --rules, the drift from a file.
    Show(iptables_show::ShowArgs),
    /// Packets and bytes of a chain (Neutron's get_traffic_counters), optionally zeroing them.
    Counters(iptables_counters::CountersArgs),
}

/// Options every iptables subcommand takes.
#[derive(Debug, Args)]
struct Target {
    /// Network namespace (a name in /run/netns, as `ip netns list` shows). Default: the current
    /// namespace.
    #[arg(long, value_name = "NAME")]
    netns: Option<String>,
    /// iptables backend: auto (what the namespace already uses, else the system default), nft
    /// or legacy. A namespace holding rules of both is refused.
    #[arg(long, default_value = "auto", value_name = "auto|nft|legacy")]
    backend: BackendChoice,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// A failure with its exit status.
pub struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn invalid(message: impl Into<String>) -> Failure {
        Failure {
            code: 2,
            message: message.into(),
        }
    }
    fn failed(message: impl Into<String>) -> Failure {
        Failure {
            code: 1,
            message: message.into(),
        }
    }
}

impl From<ExecError> for Failure {
    fn from(e: ExecError) -> Failure {
        Failure::failed(e.to_string())
    }
}

impl From<l3agent_iptables_exec::ApplyError> for Failure {
    fn from(e: l3agent_iptables_exec::ApplyError) -> Failure {
        match e {
            l3agent_iptables_exec::ApplyError::Invalid(e) => Failure::invalid(e.to_string()),
            other => Failure::failed(other.to_string()),
        }
    }
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Apply(a) => router_apply::run(a),
        Command::Destroy(a) => router_destroy::run(a),
        Command::Plan(a) => router_plan::plan(a),
        Command::Status(a) => router_plan::status(a),
        Command::Iptables(IptablesCommand::Apply(a)) => iptables_apply::run(a),
        Command::Iptables(IptablesCommand::Show(a)) => iptables_show::run(a),
        Command::Iptables(IptablesCommand::Counters(a)) => iptables_counters::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("l3agent: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// Reads a rules file (YAML, or JSON for `.json`) into a model; every problem is listed.
fn load_rules(path: &Path) -> Result<IptablesModel, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::invalid(format!("{}: {e}", path.display())))?;
    let is_json = path.extension().is_some_and(|e| e == "json");
    let file: RulesFile = if is_json {
        serde_json::from_str(&text)
            .map_err(|e| Failure::invalid(format!("{}: {e}", path.display())))?
    } else {
        serde_norway::from_str(&text)
            .map_err(|e| Failure::invalid(format!("{}: {e}", path.display())))?
    };
    file.into_model().map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
        Failure::invalid(format!(
            "{}: {} problem(s), nothing applied:\n{}",
            path.display(),
            errors.len(),
            lines.join("\n")
        ))
    })
}

/// Reads a host config (YAML, or JSON for `.json`); every problem is listed with its path.
fn load_host_config(path: &Path) -> Result<l3agent_router::config::HostConfig, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::invalid(format!("{}: {e}", path.display())))?;
    let doc: l3agent_router::config::ConfigDoc = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text)
            .map_err(|e| Failure::invalid(format!("{}: {e}", path.display())))?
    } else {
        serde_norway::from_str(&text)
            .map_err(|e| Failure::invalid(format!("{}: {e}", path.display())))?
    };
    doc.validate().map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
        Failure::invalid(format!(
            "{}: {} problem(s), nothing touched:\n{}",
            path.display(),
            errors.len(),
            lines.join("\n")
        ))
    })
}

/// What the router subcommands share: the stop flag SIGTERM/SIGINT set (through
/// signal-hook), the host facts, the iptables backend, and the announcer.
struct Sides {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    facts: l3agent_router::compile::HostFacts,
    backend: l3agent_iptables_exec::Backend,
    announcer: l3agent_rtnl::announce::Announcer,
}

fn sides() -> Result<Sides, Failure> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| Failure::failed(format!("installing the signal handler: {e}")))?;
    }
    Ok(Sides {
        stop,
        facts: l3agent_router::compile::HostFacts {
            random_fully: l3agent_iptables_exec::runner::random_fully_supported(),
        },
        backend: l3agent_iptables_exec::runner::system_backend()
            .unwrap_or(l3agent_iptables_exec::Backend::Nft),
        announcer: l3agent_rtnl::announce::Announcer::start(Default::default()),
    })
}

/// Prints a host report and turns a failed router into exit status 1.
fn finish(report: &l3agent_router::host::HostReport, json: bool) -> Result<(), Failure> {
    if json {
        print_json(&serde_json::to_value(report).unwrap_or_default());
    } else if !report.changed() {
        println!("nothing to do: every router is as configured");
    } else {
        for r in &report.routers {
            let status = serde_json::to_value(r.status).unwrap_or_default();
            println!("router {}: {}", r.id, status.as_str().unwrap_or_default());
            for c in &r.changes {
                println!("    {c}");
            }
            if let Some(e) = &r.error {
                println!("    error: {e}");
            }
        }
    }
    if report.failed() {
        let failed: Vec<&str> = report
            .routers
            .iter()
            .filter(|r| r.status == l3agent_router::host::RouterStatus::Failed)
            .map(|r| r.id.as_str())
            .collect();
        return Err(Failure::failed(format!(
            "router(s) failed: {}",
            failed.join(", ")
        )));
    }
    Ok(())
}

fn target(netns: &Option<String>) -> Result<NetnsTarget, Failure> {
    match netns {
        None => Ok(NetnsTarget::Current),
        Some(n) => Ok(NetnsTarget::Named(
            NetnsName::new("--netns", n).map_err(|e| Failure::invalid(e.to_string()))?,
        )),
    }
}

fn open(t: &Target, model: IptablesModel) -> Result<Manager<ProcessRunner>, Failure> {
    Ok(Manager::open(
        &target(&t.netns)?,
        t.backend,
        model,
        ExecOptions::default(),
    )?)
}

fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}
