//! The crate's one error type.

use std::path::PathBuf;

/// Something the agent's supervision and observability surfaces could not do. Each variant
/// names the operation that failed and carries its cause, so the daemon can log it with
/// `anyhow` context and the status command can print it as is.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Watching the config file's directory with inotify failed.
    #[error("watching {path} for changes: {source}")]
    Watch {
        /// The directory that was to be watched.
        path: PathBuf,
        /// Why.
        source: nix::Error,
    },
    /// The config path has no file name to watch for (`/`, `..`, empty).
    #[error("{0}: not a file path that can be watched")]
    WatchPath(PathBuf),
    /// Registering the SIGHUP handler failed.
    #[error("installing the SIGHUP handler: {0}")]
    Signal(std::io::Error),
    /// Starting a helper thread failed (out of threads or memory).
    #[error("starting the {what} thread: {source}")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// Binding the HTTP (metrics, health) listener failed.
    #[error("listening on {addr}: {source}")]
    HttpBind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Encoding the metrics registry to text failed (a collector reported an error).
    #[error("encoding metrics: {0}")]
    EncodeMetrics(std::fmt::Error),
    /// `NOTIFY_SOCKET` holds something that is neither an absolute path nor `@abstract`.
    #[error("NOTIFY_SOCKET={0:?}: neither an absolute path nor an abstract socket name (@name)")]
    NotifyAddress(String),
    /// Sending a message to the service manager failed.
    #[error("sending {message:?} to the service manager at {socket}: {source}")]
    Notify {
        /// The notification socket.
        socket: String,
        /// The first line of the message.
        message: String,
        /// Why.
        source: std::io::Error,
    },
    /// The control socket's directory is missing, not a directory, a symbolic link, not ours
    /// or open to others: the socket would not be private there.
    #[error("control socket directory {path}: {reason}")]
    ControlDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Something that is not a socket (a symbolic link, a regular file, ...) is at the
    /// control socket path; it is refused rather than followed or removed.
    #[error("control socket path {path}: {reason}; refusing to replace it")]
    ControlPath {
        /// The path.
        path: PathBuf,
        /// What is there.
        reason: String,
    },
    /// Another agent answers on the control socket.
    #[error("control socket {0}: another l3agent agent is already listening there")]
    ControlInUse(PathBuf),
    /// An I/O operation on the control socket failed.
    #[error("control socket {path}: {what}: {source}")]
    Control {
        /// The socket path.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The agent answered the control request with an error.
    #[error("the agent refused the request: {0}")]
    ControlRefused(String),
    /// The agent's reply was not a well-formed control reply.
    #[error("control socket {path}: malformed reply: {reason}")]
    ControlReply {
        /// The socket path.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// Reading the link counters of a router namespace's external devices failed.
    #[error("reading the link counters in {netns}: {source}")]
    LinkCounters {
        /// The namespace.
        netns: String,
        /// Why.
        source: l3agent_rtnl::Error,
    },
    /// Reading the counters of a router namespace's floating IP NAT rules failed.
    #[error("reading the NAT rule counters in {netns}: {source}")]
    RuleCounters {
        /// The namespace.
        netns: String,
        /// Why.
        source: l3agent_iptables_exec::ExecError,
    },
}
