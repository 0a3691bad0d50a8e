//! Errors of the exec crate: one enum for running things, one for applying.

use std::fmt;

use l3agent_iptables::model::Origin;
use l3agent_iptables::Family;

/// Running a process, opening a namespace, taking a lock.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// A process could not be started or ran too long.
    #[error(transparent)]
    Process(#[from] l3agent_process::ProcessError),
    /// The process failed.
    #[error("{program} failed ({}): {stderr}", exit_text(*code))]
    Failed {
        /// The program.
        program: String,
        /// Exit code.
        code: Option<i32>,
        /// Its error output (control characters removed, bounded).
        stderr: String,
    },
    /// The named namespace does not exist.
    #[error("network namespace {0} does not exist")]
    NoNamespace(String),
    /// Opening the namespace or lock file failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// Another l3agent process held the namespace lock for too long.
    #[error("timed out after {secs} s waiting for {path} (another l3agent process is applying rules to this namespace)")]
    LockTimeout {
        /// Lock file.
        path: String,
        /// How long we waited.
        secs: u64,
    },
    /// A directory of records or locks is not root's private directory (a parent or itself
    /// writable by group or others, owned by someone else, or a link): using it would let
    /// another user plant files root then writes or trusts.
    #[error("refusing {path}: it {reason}")]
    UnsafeDir {
        /// The offending directory (the directory used or one of its parents).
        path: String,
        /// What is wrong (names the mode or the owner).
        reason: String,
    },
    /// Backend detection refused the namespace.
    #[error("{0}")]
    Backend(String),
    /// The kernel's answer to an nf_tables generation query made no sense (see
    /// [`crate::generation`]).
    #[error("nf_tables generation: {0}")]
    Generation(String),
}

impl From<l3agent_netns::NetnsError> for ExecError {
    fn from(e: l3agent_netns::NetnsError) -> ExecError {
        use l3agent_netns::NetnsError;
        match e {
            NetnsError::NoNamespace(n) => ExecError::NoNamespace(n),
            NetnsError::Io { what, source } => ExecError::Io { what, source },
            e @ NetnsError::Panicked(_) => ExecError::Io {
                what: e.to_string(),
                source: std::io::Error::other("panicked"),
            },
            e @ NetnsError::PrivateMounts => ExecError::Backend(e.to_string()),
        }
    }
}

/// Checks `dir` (and its parents) like the state directory, creating it 0700 if missing; see
/// [`l3agent_state::check_private_dir`].
pub(crate) fn private_dir(dir: &std::path::Path) -> Result<(), ExecError> {
    use l3agent_state::StateError;
    match l3agent_state::check_private_dir(dir) {
        Ok(_) => Ok(()),
        Err(StateError::Unsafe { path, reason }) => Err(ExecError::UnsafeDir {
            path: path.display().to_string(),
            reason,
        }),
        Err(StateError::Io { what, path, source }) => Err(ExecError::Io {
            what: format!("{what} {}", path.display()),
            source,
        }),
        Err(other) => Err(ExecError::UnsafeDir {
            path: dir.display().to_string(),
            reason: other.to_string(),
        }),
    }
}

/// `exit 4`, or `killed by a signal` when there is no exit code.
pub fn exit_text(code: Option<i32>) -> String {
    match code {
        Some(c) => format!("exit {c}"),
        None => "killed by a signal".to_owned(),
    }
}

/// Removes control characters (but newlines) and bounds the length of text from a process.
pub fn sanitize(text: &str) -> String {
    const MAX: usize = 4096;
    let mut out: String = text
        .chars()
        .filter(|c| *c == '\n' || !c.is_control())
        .collect();
    if out.len() > MAX {
        let mut cut = MAX;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str(" [...]");
    }
    out.trim_end().to_owned()
}

/// A failed `iptables-restore`, mapped back to what the caller wrote.
#[derive(Debug)]
pub struct RestoreError {
    /// IPv4 or IPv6.
    pub family: Family,
    /// 1-based failing line of the restore input, if the message named one.
    pub line: Option<usize>,
    /// That line.
    pub line_text: Option<String>,
    /// The caller's rule behind it.
    pub origin: Option<Origin>,
    /// Up to five lines either side, numbered.
    pub context: Vec<(usize, String)>,
    /// Exit code.
    pub code: Option<i32>,
    /// iptables-restore's message (sanitised).
    pub stderr: String,
    /// What happened to tables that had already been committed.
    pub rollback: Rollback,
}

/// The state a failed apply left.
#[derive(Debug, PartialEq, Eq)]
pub enum Rollback {
    /// No table had been committed: nothing to undo.
    NothingCommitted,
    /// Committed tables were put back as they were.
    Reverted,
    /// Putting them back failed: the next apply resyncs from the kernel.
    Failed(String),
}

impl fmt::Display for RestoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tool = if self.family == Family::V4 {
            "iptables-restore"
        } else {
            "ip6tables-restore"
        };
        write!(f, "{tool} failed")?;
        if let Some(n) = self.line {
            write!(f, " at line {n}")?;
        }
        if let Some(o) = &self.origin {
            write!(f, ", rule \"{}\" in chain \"{}\"", o.rule, o.chain)?;
        }
        let first = self
            .stderr
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        write!(f, ": {first} ({})", exit_text(self.code))?;
        match &self.rollback {
            Rollback::NothingCommitted => write!(f, "; nothing was changed")?,
            Rollback::Reverted => write!(f, "; tables committed before the failure were reverted")?,
            Rollback::Failed(why) => write!(
                f,
                "; reverting committed tables failed ({why}), the next apply resyncs"
            )?,
        }
        if !self.context.is_empty() {
            write!(f, "\nrestore input around the failing line:")?;
            for (n, text) in &self.context {
                let mark = if Some(*n) == self.line { ">" } else { " " };
                write!(f, "\n{mark}{n:>6}. {text}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for RestoreError {}

/// Why an apply did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The desired state is invalid (nothing was applied).
    #[error(transparent)]
    Invalid(#[from] l3agent_iptables::Error),
    /// A process, namespace or lock problem.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// iptables-restore refused the input.
    #[error(transparent)]
    Restore(Box<RestoreError>),
    /// A convergence check found differences (Neutron's `debug_iptables_rules`).
    #[error("rules did not converge: a second pass would still change {} line(s):\n{}", .0.len(), .0.join("\n"))]
    NotConverged(Vec<String>),
}
