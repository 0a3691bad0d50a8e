//! Routers from a declarative host config: Neutron's router dicts in, validated typed routers
//! out, compiled into one typed desired state ([`spec::HostSpec`]) that `plan`, `status` and
//! `apply` all diff against the kernel.
//!
//! Router ports are plugged by one of two interface drivers (`agent.interface_driver`):
//! `linuxbridge` (a veth whose host end is on the Linux bridge of the port's network,
//! `agent.bridges`) or `openvswitch` (Neutron's `OVSInterfaceDriver`: an OVS internal port on
//! `agent.integration_bridge` with the `external_ids` the L2 agent wires it by, written over
//! OVSDB in one transaction per router, its device moved into the router's namespace). The
//! links between l3agent's own namespaces (DVR's `rfp-`/`fpr-`) are veths either way.

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
pub mod laps;
pub mod observe;
pub mod records;
pub mod spec;
