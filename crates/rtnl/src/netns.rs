//! Network namespaces: the workspace's one abstraction, [`l3agent_netns`], re-exported here
//! for rtnl's callers. [`create`], [`delete`] and [`list`] are the same functions with rtnl's
//! [`Error`]; every other item is [`l3agent_netns`]'s own.

use l3agent_types::NetnsName;

pub use l3agent_netns::{
    check_host_visible, exists, in_netns, path_of, Netns, NetnsError, NetnsTarget, NsId, NETNS_DIR,
};

use crate::error::Error;

impl From<NetnsError> for Error {
    fn from(e: NetnsError) -> Error {
        match e {
            NetnsError::NoNamespace(n) => Error::NoNamespace(n),
            NetnsError::Io { what, source } => Error::Io { what, source },
            e @ (NetnsError::Panicked(_) | NetnsError::PrivateMounts) => {
                Error::Value(e.to_string())
            }
        }
    }
}

/// `ip netns add NAME`, idempotent: returns whether it was created (see
/// [`l3agent_netns::create`]).
pub fn create(name: &NetnsName) -> Result<bool, Error> {
    Ok(l3agent_netns::create(name)?)
}

/// `ip netns delete NAME`: returns whether it existed (see [`l3agent_netns::delete`]).
pub fn delete(name: &NetnsName) -> Result<bool, Error> {
    Ok(l3agent_netns::delete(name)?)
}

/// The names in `/run/netns` that are namespaces, sorted (see [`l3agent_netns::list`]).
pub fn list() -> Result<Vec<NetnsName>, Error> {
    Ok(l3agent_netns::list()?)
}
