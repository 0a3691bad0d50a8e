//! The part of l3agent's iptables manager that touches the system, and the long-lived
//! [`Manager`] built on it.
//!
//! - [`process`] (the `l3agent-process` crate) is the only code that starts processes: argv
//!   only, started inside the target namespace (the child enters it before it execs), bounded
//!   in time.
//! - [`runner`] drives `iptables-save`/`iptables-restore --noflush -w` of the detected backend.
//! - [`netns`] (the `l3agent-netns` crate) is the namespace handle: opened once, so the
//!   namespace cannot be swapped under us between save and restore, with its identity for the
//!   lock and for noticing a namespace that vanished mid-apply.
//! - [`lock`] serialises l3agent processes per namespace with `flock`.
//! - [`manager`] keeps the committed state, plans incrementally and maps failures back to the
//!   caller's rules.
//! - [`generation`] asks nf_tables for its ruleset generation id over netlink (no process):
//!   equal ids prove that nobody changed the rule set in between.
//! - [`applied`] is the one-shot apply of a fresh process (`l3agent iptables apply`): a record
//!   per namespace and wrap name of what was applied, at which generation, so that the next
//!   process can skip reading the kernel when nothing changed since.
//! - [`rule_counters`] reads the packet and byte counters of individual rules in-process
//!   (an nf_tables rule dump over netlink, or legacy's `IPT_SO_GET_ENTRIES`): no process.
//! - [`stats`] counts what this crate made the system do (saves, restores, lines, failures,
//!   processes), per runner and per process, for metrics and tests.

pub mod applied;
pub mod backend;
pub mod error;
pub mod generation;
pub mod lock;
pub mod manager;
pub mod rule_counters;
pub mod runner;
pub mod stats;
pub mod stream;

pub use l3agent_netns as netns;
pub use l3agent_process as process;

pub use backend::{Backend, BackendChoice};
pub use error::{ApplyError, ExecError, RestoreError, Rollback};
pub use generation::{ruleset_generation, GenerationSocket};
pub use manager::{ApplyReport, Counters, Manager};
pub use netns::NetnsTarget;
pub use runner::{ExecOptions, ProcessRunner, Runner};
pub use stats::{Stats, StatsSnapshot};

impl Manager<ProcessRunner> {
    /// A manager for `target`, with the backend settled (see [`backend`]).
    pub fn open(
        target: &NetnsTarget,
        choice: BackendChoice,
        model: l3agent_iptables::IptablesModel,
        options: ExecOptions,
    ) -> Result<Self, ExecError> {
        Ok(Manager::with_runner(
            model,
            ProcessRunner::open(target, choice, options)?,
        ))
    }
}
