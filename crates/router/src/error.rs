//! Errors of the router layer: each names the router.

/// A router could not be converged.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// Namespaces, links, addresses, routes, sysctls.
    #[error("router {router}: {source}")]
    Plumbing {
        /// Router id.
        router: String,
        /// Cause.
        source: l3agent_rtnl::Error,
    },
    /// The iptables rules could not be built.
    #[error("router {router}: iptables rules: {source}")]
    Rules {
        /// Router id.
        router: String,
        /// Cause.
        source: l3agent_iptables::Error,
    },
    /// The iptables apply failed.
    #[error("router {router}: iptables: {source}")]
    Iptables {
        /// Router id.
        router: String,
        /// Cause.
        source: l3agent_iptables_exec::ApplyError,
    },
    /// Removing parts of a router failed (every error listed).
    #[error("router {router}: teardown: {errors}")]
    Teardown {
        /// Router id.
        router: String,
        /// All errors.
        errors: l3agent_rtnl::ErrorList,
    },
    /// Open vSwitch's database refused or could not be reached (`openvswitch` driver).
    #[error("router {router}: OVSDB: {source}")]
    Ovs {
        /// Router id (or `host`).
        router: String,
        /// Cause.
        source: l3agent_ovsdb::OvsdbError,
    },
    /// A daemon of the router (radvd, haproxy, keepalived) could not be observed, started,
    /// reloaded or stopped.
    #[error("router {router}: {source}")]
    Daemon {
        /// Router id.
        router: String,
        /// Cause.
        source: l3agent_supervise::Error,
    },
    /// An allocator failed.
    #[error("router {router}: {source}")]
    Alloc {
        /// Router id.
        router: String,
        /// Cause.
        source: crate::alloc::AllocError,
    },
    /// One change failed (the change as text, then why).
    #[error("{change}: {source}")]
    Change {
        /// The change, as `Display` prints it.
        change: String,
        /// Why it failed.
        source: Box<RouterError>,
    },
    /// A mode or feature l3agent does not do yet.
    #[error("router {router}: {what} is not supported yet")]
    Unsupported {
        /// Router id.
        router: String,
        /// What.
        what: String,
    },
}
