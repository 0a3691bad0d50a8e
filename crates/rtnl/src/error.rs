//! The crate's error: every variant names the object and the namespace it was about.

use std::io;

/// What went wrong, and with which object.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel refused an operation ("veth qr-1a2b3c4d in qrouter-…: File exists").
    #[error("{what} in {netns}: {source}")]
    Kernel {
        /// The object and operation, e.g. `add veth qr-1a2b3c4d`.
        what: String,
        /// The namespace.
        netns: String,
        /// The kernel's answer.
        source: io::Error,
    },
    /// A device that an operation needs does not exist.
    #[error("{what} in {netns}: no device {device}")]
    NoDevice {
        /// The operation.
        what: String,
        /// The namespace.
        netns: String,
        /// The missing device.
        device: String,
    },
    /// A namespace that an operation needs does not exist.
    #[error("network namespace {0} does not exist")]
    NoNamespace(String),
    /// A file system or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: io::Error,
    },
    /// An input failed validation.
    #[error(transparent)]
    Invalid(#[from] l3agent_types::InvalidName),
    /// A value is out of range or inconsistent (e.g. an IPv6 gateway for an IPv4 route).
    #[error("{0}")]
    Value(String),
    /// The kernel's answer could not be decoded.
    #[error("decoding the kernel's answer to {what}: {reason}")]
    Decode {
        /// The request.
        what: String,
        /// Why.
        reason: String,
    },
}

impl Error {
    /// The errno the kernel answered, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Kernel { source, .. } | Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// Whether the kernel said "exists".
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc_eexist())
    }
}

fn libc_eexist() -> i32 {
    nix::errno::Errno::EEXIST as i32
}

/// Errors gathered by an operation that keeps going (teardown), netavark's error-list pattern.
#[derive(Debug, Default, thiserror::Error)]
#[error("{} error(s): {}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct ErrorList(pub Vec<Error>);
