//! `l3agent-bench iptables`: l3agent's iptables engine vs Neutron's IptablesManager vs raw
//! `iptables-restore`, on the same workload, same machine, same run.
//!
//! Workload (issue 6): N ACCEPT rules (distinct source /32 and TCP port) in N/100 wrapped
//! chains of the filter table, each jumped to from the wrapped FORWARD chain. Scenarios, each
//! sequence in a fresh throwaway namespace, median of `--runs`:
//! cold apply, add one rule, remove one rule, no-op apply, change 10% (every rule of a tenth of
//! the chains gets a new port).
//!
//! Contenders:
//! - l3agent: one long-lived `Manager` (a worker process of this binary, so its peak RSS is its
//!   own);
//! - cli: `l3agent iptables apply --rules FILE` as a fresh process per step (issue 14; a
//!   worker of this binary spawns it, so `ru_maxrss` is the CLI's own peak);
//! - raw: `iptables-restore --noflush` of exactly the needed lines, nothing else (the floor);
//! - neutron: Neutron's own IptablesManager from PyPI, driven by bench/neutron_driver.py in a
//!   virtualenv (privilege escalation bypassed, nothing else).
#![allow(clippy::disallowed_methods)] // the harness spawns its contenders

mod agent;
mod floor;
mod iptables;
mod neutron;
mod plumbing;
mod routers;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "l3agent benchmarks: figures as ratios against floors measured in the same run")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The iptables engine side by side with Neutron and raw iptables.
    Iptables(iptables::Args),
    /// Kernel plumbing: l3agent in-process vs one `ip` process per operation vs `ip -batch`.
    Plumbing(plumbing::Args),
    /// Routers: cold apply of many legacy routers, one more floating IP, a no-op apply beside
    /// its floor, destroy --all.
    Routers(routers::Args),
    /// The long-running agent on many routers: event to kernel beside its floor, idle cost,
    /// restart to ready.
    Agent(agent::Args),
    /// l3agent against a real neutron-server 29.0.0 (RabbitMQ, MariaDB, OVS): floating IP
    /// association to DNAT beside its floor, full sync of many routers beside Neutron's own
    /// agent.
    Neutron(neutron::Args),
    /// Internal: waits until routers are converged in the kernel (prints progress).
    #[command(hide = true)]
    NeutronWatch(neutron::WatchArgs),
    /// Internal: one l3agent run in a given namespace (prints JSON).
    #[command(hide = true)]
    Worker(iptables::WorkerArgs),
    /// Internal: the fresh-process `l3agent iptables apply` steps in a given namespace.
    #[command(hide = true)]
    CliWorker(iptables::CliWorkerArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Iptables(a) => iptables::run(a),
        Command::Worker(a) => iptables::worker(a),
        Command::CliWorker(a) => iptables::cli_worker(a),
        Command::Routers(a) => {
            println!("{}", routers::run_bench(&a)?);
            Ok(())
        }
        Command::Agent(a) => {
            println!("{}", agent::run_bench(&a)?);
            Ok(())
        }
        Command::Neutron(a) => {
            println!("{}", neutron::run_bench(&a)?);
            Ok(())
        }
        Command::NeutronWatch(a) => neutron::watch(a),
        Command::Plumbing(a) => {
            println!("{}", plumbing::run_bench(&a)?);
            Ok(())
        }
    }
}
