//! The crate's one error type.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use l3agent_types::{Echo, InvalidName};

/// Everything that can go wrong talking to ovsdb-server.
#[derive(Debug, thiserror::Error)]
pub enum OvsdbError {
    /// An input failed validation; nothing was sent.
    #[error(transparent)]
    Invalid(#[from] InvalidName),
    /// A change set names the same port twice.
    #[error("port {port} appears twice in one change set")]
    DuplicatePort {
        /// The port.
        port: String,
    },
    /// The socket could not be connected (no server, no permission, too long a path).
    #[error("connecting to ovsdb-server at {}: {source}", path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// No complete answer arrived within the timeout (a stuck or overloaded server).
    #[error("ovsdb-server at {} did not answer {what} within {} ms", path.display(), after.as_millis())]
    Timeout {
        /// The socket.
        path: PathBuf,
        /// The request (`transact`, `echo`, `connect`, ...).
        what: String,
        /// The timeout.
        after: Duration,
    },
    /// The server closed the connection (it exited or was killed).
    #[error("ovsdb-server at {} closed the connection during {what}", path.display())]
    Closed {
        /// The socket.
        path: PathBuf,
        /// The request.
        what: String,
    },
    /// Reading or writing the socket failed.
    #[error("{what} on ovsdb-server at {}: {source}", path.display())]
    Io {
        /// The socket.
        path: PathBuf,
        /// The request.
        what: String,
        /// Why.
        source: io::Error,
    },
    /// An earlier failure left this connection unusable; reconnect.
    #[error("the connection to ovsdb-server at {} is unusable after an earlier error ({reason}); reconnect", path.display())]
    Broken {
        /// The socket.
        path: PathBuf,
        /// The earlier error.
        reason: String,
    },
    /// The server sent something that is not RFC 7047 (or not what this schema promises).
    #[error("unexpected answer from ovsdb-server: {0}")]
    Protocol(String),
    /// A JSON-RPC request failed as a whole (`error` of the response).
    #[error("ovsdb-server refused {method}: {error}{}", details_text(details))]
    Rpc {
        /// The method.
        method: String,
        /// The server's `error`.
        error: String,
        /// The server's `details`, if any.
        details: Option<String>,
    },
    /// One operation of a transaction failed; the transaction was not committed.
    #[error(
        "ovsdb-server refused operation {index} ({op}): {error}{}",
        details_text(details)
    )]
    Operation {
        /// Its index in the transaction (`ops.len()` for a failure at commit).
        index: usize,
        /// What the operation was (`insert Interface qr-1a2b3c4d-5e`, or `commit`).
        op: String,
        /// The server's `error` ("constraint violation", "referential integrity violation",
        /// "timed out", ...).
        error: String,
        /// The server's `details`, if any.
        details: Option<String>,
    },
    /// The bridge does not exist.
    #[error("bridge {} does not exist", Echo(bridge))]
    NoBridge {
        /// The bridge.
        bridge: String,
    },
    /// A port to plug is already on another bridge, and the change set does not allow moving.
    #[error("port {port} is on bridge {other}, not on {bridge} (allow moving, or unplug it there first)")]
    PortOnOtherBridge {
        /// The port.
        port: String,
        /// The bridge the change set is for.
        bridge: String,
        /// The bridge it is on.
        other: String,
    },
    /// An Interface row of that name belongs to another port (a bond member, say): plugging
    /// an internal port of that name would take it away.
    #[error("interface {port} already belongs to another port")]
    InterfaceInUse {
        /// The name.
        port: String,
    },
    /// Other writers kept changing the rows a change set depends on.
    #[error(
        "the ports changed under us {attempts} times in a row (concurrent writers); giving up"
    )]
    Conflict {
        /// How many times the change set was read, planned and refused.
        attempts: u32,
    },
    /// The change committed, but ovs-vswitchd did not apply it in time.
    #[error("the transaction committed, but ovs-vswitchd had not applied it after {} ms (cur_cfg {cur_cfg} < next_cfg {next_cfg}): is ovs-vswitchd running?", after.as_millis())]
    Vswitchd {
        /// The configuration number the change set produced.
        next_cfg: i64,
        /// The last one ovs-vswitchd reported as applied.
        cur_cfg: i64,
        /// How long we waited.
        after: Duration,
    },
}

fn details_text(details: &Option<String>) -> String {
    match details {
        Some(d) => format!(" ({d})"),
        None => String::new(),
    }
}
