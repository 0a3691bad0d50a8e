//! `l3agent agent`: the long-running daemon. Thin: it reads the flags and the config, wires
//! the real side effects, and hands over to [`l3agent_agent::daemon::run`]. With
//! `--config-file` (Neutron's INI files) the desired state comes from neutron-server over
//! RabbitMQ instead ([`l3agent_neutron::front`], [`l3agent_agent::daemon::run_fed`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use l3agent_neutron::front::{self, Front, FrontError, FrontOptions};
use l3agent_neutron::{NeutronAgentConfig, Transport, TransportOptions};

use clap::Args;
use l3agent_agent::daemon::{self, DaemonOptions, Loader, SidesFactory};
use l3agent_agent::Notifier;
use l3agent_router::config::HostConfig;
use l3agent_router::kernel::{Managers, Opened};

use super::{sides, Failure, Reloader, Sides};

/// Arguments of `agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Host config (YAML, or JSON if it ends in .json), as for apply. Watched: a saved or
    /// replaced file is reloaded (SIGHUP too); an invalid one is logged and ignored.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "config_file",
        conflicts_with = "config_file"
    )]
    config: Option<PathBuf>,
    /// Neutron's config files instead (repeatable, later ones override earlier ones, as
    /// neutron-l3-agent reads them: `--config-file /etc/neutron/neutron.conf --config-file
    /// /etc/neutron/l3_agent.ini`): the agent registers with neutron-server over RabbitMQ
    /// and takes its routers from there.
    #[arg(long = "config-file", value_name = "FILE")]
    config_file: Vec<PathBuf>,
    /// Seconds between full drift checks (every router diffed against the kernel, drift
    /// repaired and counted).
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    resync_interval: u64,
    /// Where to serve /metrics, /healthz and /readyz (ADDR:PORT; port 0 picks one), or
    /// `none`.
    #[arg(long, value_name = "ADDR|none", default_value = l3agent_agent::http::DEFAULT_LISTEN)]
    metrics_listen: String,
    /// The control socket `l3agent status` asks, or `none`. Its directory is created 0700
    /// if missing; an existing one must be the agent user's own and 0700.
    #[arg(long, value_name = "PATH|none", default_value = l3agent_agent::control::DEFAULT_SOCKET)]
    control_socket: String,
    /// Routers converged in parallel within one apply.
    #[arg(long, value_name = "N", default_value_t = 4)]
    workers: usize,
}

fn metrics_listen(v: &str) -> Result<Option<SocketAddr>, Failure> {
    if v == "none" {
        return Ok(None);
    }
    v.parse().map(Some).map_err(|e| {
        Failure::invalid(format!(
            "--metrics-listen {v:?}: {e} (expected ADDR:PORT or none)"
        ))
    })
}

/// Raises the soft limit of open files to the hard one (as the Go runtime does for every
/// program): the agent keeps a few descriptors per namespace (its handle, a netlink socket,
/// `/proc/sys` directories, the iptables manager's), thousands at 1,000 routers, where a
/// shell's soft limit is often 1,024 (the systemd unit sets `LimitNOFILE=65536`).
fn raise_open_files() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised the open files limit"),
            Err(e) => {
                tracing::warn!(soft, hard, error = %e, "could not raise the open files limit")
            }
        },
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not read the open files limit"),
    }
}

/// One set of iptables managers for the agent's life (an event sends only what changed),
/// forgotten before each full drift check, and of what is open in each namespace (an event
/// starts no thread to enter one; namespaces gone are let go at each full drift check); traffic counters read from the kernel when
/// `/metrics` is scraped.
fn sides_factory(
    backend: l3agent_iptables_exec::Backend,
    announcer: l3agent_rtnl::announce::Announcer,
) -> SidesFactory {
    raise_open_files();
    let managers = Managers::new(backend);
    let opened = Opened::new();
    let pruned = opened.clone();
    let forget = managers.clone();
    let owned = managers.clone();
    let (prestart, release) = (managers.clone(), managers.clone());
    // The error type is the router crate's (`host::Factory`'s), not ours to shrink.
    #[allow(clippy::result_large_err)]
    let make = SidesFactory::new(move || {
        l3agent_router::host::real_sides_with(&managers, &opened, &announcer)()
    })
    .forgetting(move || {
        let forgot = forget.refresh_changed();
        let pruned = pruned.prune();
        tracing::debug!(
            forgot,
            pruned,
            "iptables managers that read the kernel at this refresh; namespaces gone"
        );
    })
    .owning(move || owned.owned())
    // An event's router gets its namespace's IPv4 restore started while the agent reads and
    // compiles the change (a floating IP is IPv4 rules).
    .prestarting(
        {
            // Started from a thread of its own: the start of a process blocks its caller
            // until the program runs, and the worker that asks for it goes on meanwhile.
            let (tx, rx) = std::sync::mpsc::channel::<l3agent_types::NetnsName>();
            let _ = std::thread::Builder::new()
                .name("prestart".into())
                .spawn(move || {
                    for ns in rx {
                        if prestart.prestart(&ns, l3agent_iptables::Family::V4) {
                            tracing::debug!(%ns, "restore started ahead");
                        }
                    }
                });
            let tx = std::sync::Mutex::new(tx);
            move |id| {
                let ns = l3agent_router::spec::names::router_ns(id);
                let _ = tx.lock().unwrap_or_else(|e| e.into_inner()).send(ns);
            }
        },
        move |ended| {
            let unused = release.release_prestarted(ended);
            if unused > 0 {
                tracing::debug!(unused, "restores started ahead and not used, ended");
            }
        },
    )
    // Traffic counters read in-process with the backend the routers are written with.
    .traffic(l3agent_agent::traffic::KernelTraffic::new(backend));
    make
}

fn daemon_options(a: &AgentArgs, path: &Path) -> Result<DaemonOptions, Failure> {
    let mut opts = DaemonOptions::new(path, Default::default());
    opts.metrics_listen = metrics_listen(&a.metrics_listen)?;
    opts.control_socket = (a.control_socket != "none").then(|| PathBuf::from(&a.control_socket));
    opts.resync_interval = Duration::from_secs(a.resync_interval);
    opts.apply_workers = a.workers.clamp(1, 16);
    Ok(opts)
}

/// Runs the agent until SIGTERM/SIGINT. Exit status: 0 stopped cleanly, 1 could not start
/// (a socket, the watch) or failed while running, 2 invalid config at start.
pub fn run(a: AgentArgs) -> Result<(), Failure> {
    let Some(config) = a.config.clone() else {
        return run_neutron(a);
    };
    let reloader = Arc::new(Reloader::default());
    let initial = reloader.load(&config, None)?;
    let mut opts = daemon_options(&a, &config)?;
    let Sides {
        stop,
        facts,
        backend,
        announcer,
    } = sides()?;
    opts.facts = facts;
    let load: Arc<Loader> = Arc::new(move |p: &Path, in_force: &HostConfig| {
        reloader
            .load(p, Some(in_force))
            .map_err(|f| f.message.clone())
    });
    let make = sides_factory(backend, announcer);
    let notifier = Notifier::from_env().map_err(|e| Failure::failed(format!("sd_notify: {e}")))?;
    daemon::run(opts, initial, load, make, notifier, stop)
        .map_err(|e| Failure::failed(format!("agent: {e}")))
}

/// The drop-in for neutron-l3-agent: Neutron's INI files, the RPC front end, the daemon.
fn run_neutron(a: AgentArgs) -> Result<(), Failure> {
    let cfg =
        NeutronAgentConfig::load(&a.config_file).map_err(|e| Failure::invalid(e.to_string()))?;
    // Refused here (exit 2) rather than after connecting.
    front::agent_doc(&cfg).map_err(|e| Failure::invalid(e.to_string()))?;
    let first = a.config_file[0].clone();
    let mut opts = daemon_options(&a, &first)?;
    let Sides {
        stop,
        facts,
        backend,
        announcer,
    } = sides()?;
    opts.facts = facts;
    tracing::info!(
        host = %cfg.host,
        broker = %cfg.transport_url,
        state_path = %front::state_dir(&cfg).display(),
        "starting as neutron-l3-agent"
    );
    let transport = Transport::start(TransportOptions::from_config(&cfg));
    let started = match Front::start(&cfg, &transport, FrontOptions::from_config(&cfg), &stop) {
        Ok(s) => s,
        Err(FrontError::Stopped) => {
            transport.close(Duration::from_secs(5));
            return Ok(());
        }
        Err(e @ FrontError::Config(_)) => return Err(Failure::invalid(e.to_string())),
        Err(e) => return Err(Failure::failed(format!("neutron front end: {e}"))),
    };
    let make = sides_factory(backend, announcer);
    let notifier = Notifier::from_env().map_err(|e| Failure::failed(format!("sd_notify: {e}")))?;
    let load: Arc<Loader> = Arc::new(|_: &Path, _: &HostConfig| {
        Err("the state comes from neutron-server, not a file".to_owned())
    });
    let result = daemon::run_fed(
        opts,
        started.initial,
        load,
        make,
        notifier,
        stop,
        Some(started.feed),
    );
    started.front.stop();
    transport.close(Duration::from_secs(5));
    result.map_err(|e| Failure::failed(format!("agent: {e}")))
}
