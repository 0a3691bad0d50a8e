//! Pure model of l3agent's iptables manager: typed names and rules, the `iptables-save`
//! parser, the desired-state model (Neutron's `IptablesManager` API), the planner and the
//! restore renderer. No processes, no files, no clocks: everything here is tested with text.
//!
//! The crate that runs `iptables-save`/`iptables-restore` is `l3agent-iptables-exec`.

pub mod argv;
pub mod error;
pub mod kernel;
pub mod marker;
pub mod model;
pub mod names;
pub mod plan;
pub mod restore_error;
pub mod rule;
pub mod spec;

pub use error::Error;
pub use kernel::{KernelState, KernelTable, Op};
pub use l3agent_types::NetnsName;
pub use model::{Feed, Help, Hints, IptablesModel, ModelOptions, RuleSpec};
pub use names::{ChainName, Comment, Family, Table, WrapName};
pub use plan::{created_chains, plan_family, Plan};
