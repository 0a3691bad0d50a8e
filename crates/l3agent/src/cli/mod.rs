//! The command line: one file per subcommand.

mod agent;
mod iptables_apply;
mod iptables_counters;
mod iptables_show;
mod reload;
mod router_apply;
mod router_destroy;
mod router_plan;
mod validate;

use std::path::Path;

use clap::{Args, Parser, Subcommand};
use l3agent_doc::Limits;
use l3agent_iptables::spec::RulesFile;
use l3agent_iptables::{IptablesModel, NetnsName};
use l3agent_iptables_exec::{
    BackendChoice, ExecError, ExecOptions, Manager, NetnsTarget, ProcessRunner,
};
use l3agent_router::config::{ConfigDoc, HostConfig};
use reload::Reloader;

/// The dataplane of Neutron's L3 agent (routers, iptables manager, the agent), in Rust.
#[derive(Debug, Parser)]
#[command(version = VERSION, long_about = None)]
pub struct Cli {
    /// More logging on stderr (-v: info, -vv: debug; debug shows restore input). L3AGENT_LOG
    /// overrides, e.g. L3AGENT_LOG=l3agent_iptables_exec=debug.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Largest config or rules file read, in bytes (larger ones are refused, exit 2).
    #[arg(long, global = true, value_name = "BYTES", default_value_t = Limits::DEFAULT_MAX_BYTES)]
    pub max_input_bytes: u64,
    /// Log lines on stderr as JSON objects (one per line), for log collectors.
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Converge this host to a config (routers in Neutron's router-dict shape): create, update
    /// and delete routers, ports, floating IPs and routes. Exit status: 0 all routers converged,
    /// 1 a router failed (named, the others still converged), 2 invalid config (nothing touched).
    /// On a terminal, more than 8 routers show a progress bar on stderr (never with --json).
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
    /// Check a host config offline: the same checks and exit status as apply (0 valid, 2
    /// invalid, every problem by path), without root and without touching the kernel.
    Validate(validate::ConfigArgs),
    /// Declarative iptables rules per network namespace (Neutron's IptablesManager).
    #[command(subcommand)]
    Iptables(IptablesCommand),
    /// Run as the long-lived agent: converge once, then keep the host converged as CONFIG
    /// changes (file watch, SIGHUP) and repair drift periodically; metrics over HTTP, status
    /// over a control socket, sd_notify for systemd. SIGTERM stops it (routers stay up).
    /// Exit status: 0 stopped, 1 failed to start or run, 2 invalid config at start.
    Agent(agent::AgentArgs),
    /// Print a shell completion script (bash, zsh or fish) on stdout, e.g.
    /// `l3agent completions bash > /etc/bash_completion.d/l3agent`.
    Completions(CompletionsArgs),
    /// Print the man page (roff) on stdout, e.g. `l3agent man | man -l -`; with --out-dir,
    /// write a page per command.
    Man(ManArgs),
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
    /// Check a rules file offline: the same checks and exit status as apply (0 valid, 2
    /// invalid), without root and without touching the kernel.
    Validate(validate::RulesArgs),
}

/// `l3agent --version`: the package version and the git revision it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("L3AGENT_GIT_REVISION"),
    ")"
);

/// Shells `l3agent completions` writes a script for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Args)]
struct CompletionsArgs {
    /// The shell to complete in.
    #[arg(value_enum)]
    shell: Shell,
}

#[derive(Debug, Args)]
struct ManArgs {
    /// Write one page per command (l3agent.1, l3agent-apply.1, ...) into this directory
    /// instead of printing l3agent.1 on stdout.
    #[arg(long, value_name = "DIR")]
    out_dir: Option<std::path::PathBuf>,
}

/// Prints the completion script for `shell` on stdout.
fn completions(a: CompletionsArgs) -> Result<(), Failure> {
    use clap::CommandFactory;
    let shell = match a.shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(
        shell,
        &mut Cli::command(),
        "l3agent",
        &mut std::io::stdout(),
    );
    Ok(())
}

/// Prints the man page (roff) on stdout, or writes every command's page into a directory.
fn manpage(a: ManArgs) -> Result<(), Failure> {
    use clap::CommandFactory;
    let cmd = Cli::command().version(VERSION);
    let written = match &a.out_dir {
        Some(dir) => std::fs::create_dir_all(dir).and_then(|()| clap_mangen::generate_to(cmd, dir)),
        None => clap_mangen::Man::new(cmd).render(&mut std::io::stdout()),
    };
    written.map_err(|e| Failure::failed(format!("writing the man page: {e}")))
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
    pub json: bool,
}

/// A failure with its exit status: 1 failed, 2 invalid input (nothing touched).
#[derive(Debug)]
pub struct Failure {
    code: u8,
    message: String,
    /// Invalid input: each problem by field path (for `--json`).
    problems: Vec<(String, String)>,
    /// The command printed its report (JSON included) before failing: `--json` prints no
    /// error object after it, stdout stays one JSON document.
    reported: bool,
}

impl Failure {
    fn invalid(message: impl Into<String>) -> Failure {
        Failure {
            code: 2,
            message: message.into(),
            problems: Vec::new(),
            reported: false,
        }
    }
    fn failed(message: impl Into<String>) -> Failure {
        Failure {
            code: 1,
            message: message.into(),
            problems: Vec::new(),
            reported: false,
        }
    }
    /// A failure (exit 1) whose report is already printed.
    fn reported(message: impl Into<String>) -> Failure {
        Failure {
            reported: true,
            ..Failure::failed(message)
        }
    }
    fn with_problems(mut self, problems: Vec<(String, String)>) -> Failure {
        self.problems = problems;
        self
    }

    /// `{"error": {...}}`, what `--json` prints on failure.
    fn to_json(&self) -> serde_json::Value {
        let problems: Vec<serde_json::Value> = self
            .problems
            .iter()
            .map(|(path, message)| serde_json::json!({"path": path, "message": message}))
            .collect();
        serde_json::json!({"error": {
            "exit_code": self.code,
            "kind": if self.code == 2 { "invalid" } else { "failed" },
            "message": self.message,
            "problems": problems,
        }})
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

impl Command {
    /// Whether the subcommand was asked for JSON (then failures are JSON too).
    fn json(&self) -> bool {
        match self {
            Command::Apply(a) => a.json,
            Command::Plan(a) => a.json,
            Command::Status(a) => a.json,
            Command::Destroy(a) => a.json,
            Command::Validate(a) => a.json,
            Command::Iptables(IptablesCommand::Apply(a)) => a.target.json,
            Command::Iptables(IptablesCommand::Show(a)) => a.target.json,
            Command::Iptables(IptablesCommand::Counters(a)) => a.target.json,
            Command::Iptables(IptablesCommand::Validate(a)) => a.json,
            Command::Agent(_) | Command::Completions(_) | Command::Man(_) => false,
        }
    }
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> u8 {
    let _ = LIMITS.set(Limits {
        max_bytes: cli.max_input_bytes,
        ..Limits::default()
    });
    let json = cli.command.json();
    let result = match cli.command {
        Command::Validate(a) => validate::config(a),
        Command::Iptables(IptablesCommand::Validate(a)) => validate::rules(a),
        Command::Apply(a) => router_apply::run(a),
        Command::Destroy(a) => router_destroy::run(a),
        Command::Plan(a) => router_plan::plan(a),
        Command::Status(a) => router_plan::status(a),
        Command::Iptables(IptablesCommand::Apply(a)) => iptables_apply::run(a),
        Command::Iptables(IptablesCommand::Show(a)) => iptables_show::run(a),
        Command::Iptables(IptablesCommand::Counters(a)) => iptables_counters::run(a),
        Command::Agent(a) => agent::run(a),
        Command::Completions(a) => completions(a),
        Command::Man(a) => manpage(a),
    };
    match result {
        Ok(()) => 0,
        Err(f) => {
            if json && !f.reported {
                print_json(&f.to_json());
            }
            eprintln!("l3agent: {}", f.message);
            f.code
        }
    }
}

/// The document limits of this process (`--max-input-bytes`), set once in [`run`].
static LIMITS: std::sync::OnceLock<Limits> = std::sync::OnceLock::new();

fn limits() -> Limits {
    LIMITS.get().copied().unwrap_or_default()
}

/// Reads a document through [`l3agent_doc`] (size cap, bounded nesting, errors by path).
fn load_doc<T: serde::de::DeserializeOwned>(
    path: &Path,
    explicit: &'static str,
) -> Result<T, Failure> {
    l3agent_doc::load(path, &limits(), explicit).map_err(|e| doc_failure(path, &e))
}

/// Parses `bytes`, the document `path` read, like [`load_doc`].
fn parse_doc<T: serde::de::DeserializeOwned>(
    path: &Path,
    bytes: &[u8],
    explicit: &'static str,
) -> Result<T, Failure> {
    l3agent_doc::parse(bytes, l3agent_doc::Format::of(path), &limits(), explicit)
        .map_err(|e| doc_failure(path, &e))
}

fn doc_failure(path: &Path, e: &l3agent_doc::DocError) -> Failure {
    let problem = match e {
        l3agent_doc::DocError::Invalid { path, message } => (path.clone(), message.clone()),
        other => (".".to_owned(), other.to_string()),
    };
    Failure::invalid(format!("{}: {e}", path.display())).with_problems(vec![problem])
}

/// A list of problems as one failure: `<file>: N problem(s), <what>:` and one line each.
fn problems(path: &Path, what: &str, list: Vec<(String, String)>) -> Failure {
    let lines: Vec<String> = list.iter().map(|(p, m)| format!("  {p}: {m}")).collect();
    Failure::invalid(format!(
        "{}: {} problem(s), {what}:\n{}",
        path.display(),
        list.len(),
        lines.join("\n")
    ))
    .with_problems(list)
}

/// Reads a rules file (YAML, or JSON for `.json`) into a model; every problem is listed.
fn load_rules(path: &Path) -> Result<IptablesModel, Failure> {
    let file: RulesFile = load_doc(path, "wrap_name: <name> with no rules")?;
    file.into_model().map_err(|errors| {
        let list = errors
            .iter()
            .map(|e| match e.to_string().split_once(": ") {
                Some((p, m)) => (p.to_owned(), m.to_owned()),
                None => (".".to_owned(), e.to_string()),
            })
            .collect();
        problems(path, "nothing applied", list)
    })
}

/// Reads a host config (YAML, or JSON for `.json`); every problem is listed with its path.
fn load_host_config(path: &Path) -> Result<HostConfig, Failure> {
    let doc: ConfigDoc = load_doc(path, EXPLICIT_HOST)?;
    validated(path, doc, None)
}

/// What an intentionally empty host config looks like.
const EXPLICIT_HOST: &str = "routers: []";

/// `doc` (read from `path`) validated, as a new version of `in_force` if given (the routers
/// whose dicts did not change are not validated again; the result and the problems are the
/// same).
fn validated(
    path: &Path,
    doc: ConfigDoc,
    in_force: Option<&HostConfig>,
) -> Result<HostConfig, Failure> {
    match in_force {
        Some(cfg) => doc.validate_since(cfg),
        None => doc.into_validated(),
    }
    .map_err(|errors| {
        let list = errors.into_iter().map(|e| (e.path, e.message)).collect();
        problems(path, "nothing touched", list)
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

/// A host-level error: a host that does not fit the config is invalid input (exit 2,
/// nothing changed), anything else a failure.
fn host_failure(e: l3agent_router::host::HostError) -> Failure {
    match e {
        l3agent_router::host::HostError::Host(list) => {
            let problems = list
                .iter()
                .map(|p| match p.split_once(": ") {
                    Some((path, m)) if path.starts_with("agent.") => {
                        (path.to_owned(), m.to_owned())
                    }
                    _ => (".".to_owned(), p.clone()),
                })
                .collect();
            Failure::invalid(l3agent_router::host::HostError::Host(list).to_string())
                .with_problems(problems)
        }
        other => Failure::failed(other.to_string()),
    }
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
        return Err(Failure::reported(format!(
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
