//! Routers from a declarative host config: Neutron's router dicts in, validated typed routers
//! out, compiled into one typed desired state ([`spec::HostSpec`]) that `plan`, `status` and
//! `apply` all diff against the kernel.

pub mod alloc;
pub mod change;
pub mod compile;
pub mod config;
pub mod diff;
pub mod error;
pub mod exec;
pub mod fake;
pub mod host;
pub mod kernel;
pub mod observe;
pub mod records;
pub mod spec;
