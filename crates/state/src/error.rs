//! The one error type of the crate, and the classification of storage failures.

use std::path::PathBuf;

/// A state-directory operation failed. Every variant names the path (or, for [`BadName`],
/// the name) and the operation, so the message alone tells an operator where to look.
///
/// [`BadName`]: StateError::BadName
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A system call on the state directory failed. The `source` keeps its errno:
    /// [`StateError::storage_problem`] tells a full or read-only file system from the rest.
    #[error("{what} {}: {source}{}", path.display(), hint(source))]
    Io {
        /// The operation, as a verb ("writing", "locking", "creating directory").
        what: &'static str,
        /// The file or directory it was done on (for a failed write: the record, not the
        /// temporary file).
        path: PathBuf,
        /// The error from the system call.
        source: std::io::Error,
    },
    /// The directory, one of its parents, the lock file or a record is not safe to trust:
    /// a symbolic link, owned by someone else, or writable by group or others.
    #[error("refusing state directory: {} {reason}", path.display())]
    Unsafe {
        /// The offending path.
        path: PathBuf,
        /// What is wrong with it (names the mode or the owner).
        reason: String,
    },
    /// Another process held the lock for the whole wait.
    #[error(
        "state directory {} is in use by another l3agent{}: gave up waiting for its lock",
        path.display(),
        holder_pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Busy {
        /// The state directory.
        path: PathBuf,
        /// The holder's pid as it wrote it into the lock file, if readable.
        holder_pid: Option<u32>,
    },
    /// The stop flag was set while waiting for the lock (SIGTERM during the wait).
    #[error("stopped while waiting for the lock of state directory {}", path.display())]
    Interrupted {
        /// The state directory.
        path: PathBuf,
    },
    /// A record exists but cannot be used: not valid JSON of the expected shape, or larger
    /// than [`MAX_RECORD_BYTES`](crate::MAX_RECORD_BYTES). Callers rebuild the record from
    /// the config and the kernel.
    #[error("state record {}: {reason}", path.display())]
    Corrupt {
        /// The record.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// A record name outside the naming rules (see the crate docs); nothing was touched.
    #[error("{} is not a state record name (1 to {} characters of A-Z a-z 0-9 . _ -, not starting with '.', no '..', at most one '/', not \"lock\")", shown(name), crate::MAX_NAME_LEN)]
    BadName {
        /// The name as the caller gave it.
        name: String,
    },
    /// A change was asked of a directory opened with [`StateDir::inspect`](crate::StateDir::inspect),
    /// which does not hold the lock.
    #[error("{what} {} needs the state directory lock (opened read-only with inspect)", path.display())]
    NotLocked {
        /// The operation ("writing", "removing", "clearing").
        what: &'static str,
        /// The record or directory.
        path: PathBuf,
    },
    /// [`StateDir::clear`](crate::StateDir::clear) found entries that are not records (a
    /// nested directory, a name outside the naming rules); it removed nothing, in case the
    /// state path points at a directory that is not l3agent's.
    #[error(
        "{} is not a state record{}: nothing was cleared (remove it by hand if it is not needed)",
        path.display(),
        if *more > 0 { format!(" (nor are {more} more entries)") } else { String::new() }
    )]
    Foreign {
        /// The first such entry.
        path: PathBuf,
        /// How many more there are.
        more: usize,
    },
    /// A value could not be encoded as JSON (a bug in the caller's type, not a storage
    /// problem): nothing was written.
    #[error("encoding {} as JSON: {reason}", path.display())]
    Encode {
        /// The record that was to be written.
        path: PathBuf,
        /// serde_json's message.
        reason: String,
    },
}

impl StateError {
    /// For an [`Io`](StateError::Io) error caused by the storage rather than by l3agent,
    /// which problem it is; `None` otherwise.
    pub fn storage_problem(&self) -> Option<StorageProblem> {
        match self {
            StateError::Io { source, .. } => StorageProblem::of(source),
            _ => None,
        }
    }

    /// True if the error is the directory (or a parent) not existing: [`StateDir::inspect`]
    /// callers treat that as "nothing recorded yet".
    ///
    /// [`StateDir::inspect`]: crate::StateDir::inspect
    pub fn is_not_found(&self) -> bool {
        matches!(self, StateError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// Failures of the storage under the state directory that an operator fixes outside l3agent.
/// Derived from the errno alone ([`StorageProblem::of`] is a pure function), so it is tested
/// without filling or remounting a file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageProblem {
    /// `ENOSPC` or `EDQUOT`: the file system (or the quota) is full.
    Full,
    /// `EROFS`: the file system is mounted read-only.
    ReadOnly,
    /// `EACCES` or `EPERM`: the directory's permissions deny the write.
    PermissionDenied,
}

impl StorageProblem {
    /// Classifies an I/O error by its errno.
    pub fn of(err: &std::io::Error) -> Option<StorageProblem> {
        match err.raw_os_error()? {
            libc::ENOSPC | libc::EDQUOT => Some(StorageProblem::Full),
            libc::EROFS => Some(StorageProblem::ReadOnly),
            libc::EACCES | libc::EPERM => Some(StorageProblem::PermissionDenied),
            _ => None,
        }
    }

    /// What to tell the operator.
    pub fn advice(self) -> &'static str {
        match self {
            StorageProblem::Full => "the state directory's file system is full",
            StorageProblem::ReadOnly => "the state directory's file system is read-only",
            StorageProblem::PermissionDenied => {
                "the state directory's permissions deny it (is l3agent running as root?)"
            }
        }
    }
}

fn hint(source: &std::io::Error) -> String {
    StorageProblem::of(source)
        .map(|p| format!(" ({})", p.advice()))
        .unwrap_or_default()
}

/// A bad name echoed escaped and truncated (it may be huge or hold control characters).
fn shown(name: &str) -> String {
    const MAX: usize = 64;
    match name.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{:?}… ({} bytes)", &name[..cut], name.len()),
        None => format!("{name:?}"),
    }
}
