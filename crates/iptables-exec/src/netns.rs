//! The namespace an iptables manager works on: an open descriptor (so the namespace cannot be
//! swapped under us between save and restore), with its identity for locks and for noticing a
//! namespace that vanished mid-apply.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use l3agent_iptables::NetnsName;

use crate::error::ExecError;

/// Which namespace: the caller's own, or one of `/run/netns`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetnsTarget {
    /// The namespace of the thread that opens the manager.
    Current,
    /// A named namespace, as `ip netns add` makes them.
    Named(NetnsName),
}

/// An open network namespace.
#[derive(Debug)]
pub struct Netns {
    file: File,
    name: Option<NetnsName>,
    dev: u64,
    ino: u64,
}

const NETNS_DIR: &str = "/run/netns";

impl Netns {
    /// Opens the namespace. A named namespace that does not exist is [`ExecError::NoNamespace`].
    pub fn open(target: &NetnsTarget) -> Result<Netns, ExecError> {
        let (path, name) = match target {
            NetnsTarget::Current => (PathBuf::from("/proc/thread-self/ns/net"), None),
            NetnsTarget::Named(n) => (PathBuf::from(NETNS_DIR).join(n.as_str()), Some(n.clone())),
        };
        let file = File::open(&path).map_err(|source| match (&name, source.kind()) {
            (Some(n), std::io::ErrorKind::NotFound) => ExecError::NoNamespace(n.to_string()),
            _ => ExecError::Io {
                what: format!("opening {}", path.display()),
                source,
            },
        })?;
        let meta = file.metadata().map_err(|source| ExecError::Io {
            what: format!("stat {}", path.display()),
            source,
        })?;
        Ok(Netns {
            file,
            name,
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// The descriptor, for `setns`.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// `dev-ino`: the same for every path to the same namespace.
    pub fn id(&self) -> String {
        format!("{}-{}", self.dev, self.ino)
    }

    /// For messages: the name, or "current".
    pub fn label(&self) -> String {
        self.name
            .as_ref()
            .map_or_else(|| "current".to_owned(), ToString::to_string)
    }

    /// Whether the name still refers to this namespace (always true for the current one).
    pub fn still_named(&self) -> bool {
        let Some(n) = &self.name else { return true };
        std::fs::metadata(PathBuf::from(NETNS_DIR).join(n.as_str()))
            .is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino)
    }
}
