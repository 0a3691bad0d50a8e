//! Kernel plumbing for the L3 dataplane, in-process: what Neutron's `ip_lib` does with one
//! `ip`/`sysctl` process per operation, done over rtnetlink with one socket per namespace.
//!
//! - [`netns`]: the workspace's namespace handle (`l3agent-netns`, re-exported): named
//!   namespaces compatible with iproute2 (`/run/netns`), created without a fork;
//!   [`netns::Netns::run`] does work inside a namespace on a dedicated thread.
//! - [`socket::Rtnl`]: an rtnetlink socket opened inside a namespace and reused, with
//!   [`link`], [`addr`], [`route`], [`rule`] and [`neigh`] operations on it.
//! - [`link_stats`]: the packet and byte counters of links (`ip -s link show`).
//! - [`sysctl`]: typed keys written from inside the namespace.
//! - [`garp`]: gratuitous ARP from a packet socket inside the namespace; [`conntrack`]:
//!   deleting an address's connection-tracking entries.
//!
//! Every error names the object and the namespace ("add veth qr-1a2b3c4d (peer …) in
//! qrouter-…: File exists").

pub mod addr;
pub mod announce;
pub mod conntrack;
pub mod error;
pub mod garp;
pub mod link;
pub mod link_stats;
pub mod monitor;
pub mod neigh;
pub mod netns;
pub mod port;
pub mod route;
pub mod rule;
pub mod socket;
pub mod sysctl;

pub use error::{Error, ErrorList};

/// The operation traits, to call them on an [`Rtnl`] (or a fake).
pub mod prelude {
    pub use crate::addr::Addresses;
    pub use crate::link::Links;
    pub use crate::neigh::Neighbours;
    pub use crate::route::Routes;
    pub use crate::rule::Rules;
    pub use crate::sysctl::Sysctls;
}
pub use netns::Netns;
pub use socket::Rtnl;
