//! The crate's one error type. Values from outside (config values, ids, broker text) are echoed
//! through [`Echo`]; a password never is (config errors about `transport_url` carry the
//! redacted URL).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use l3agent_types::{clean_message, Echo};

use crate::wire::RemoteFailure;

/// Where a config value came from: a file and line, or nowhere (a default, or a key that is
/// missing from every file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `file:line`.
    File {
        /// The config file.
        path: PathBuf,
        /// 1-based line of the key.
        line: usize,
    },
    /// The query string of `transport_url` (oslo.messaging lets it override
    /// `[oslo_messaging_rabbit]` options).
    TransportUrlQuery,
    /// Not set in any of the files.
    Unset,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line } => write!(f, "{}:{line}", path.display()),
            Origin::TransportUrlQuery => f.write_str("transport_url query"),
            Origin::Unset => f.write_str("(not set)"),
        }
    }
}

/// A config option with a value this agent cannot use: where, which, what, why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: [{section}] {key} = {}: {reason}", Echo(value))]
pub struct OptionError {
    /// Where it was set.
    pub origin: Origin,
    /// Its section (`DEFAULT`, `AGENT`, `oslo_messaging_rabbit`, ...).
    pub section: String,
    /// Its key.
    pub key: String,
    /// The value as written (redacted for secrets).
    pub value: String,
    /// Why it is refused.
    pub reason: String,
}

/// What went wrong, by operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NeutronError {
    /// A config file could not be read.
    #[error("reading config file {}: {source}", path.display())]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A config file is not valid oslo.config INI (what oslo's iniparser rejects).
    #[error("{}:{line}: {message}: {}", path.display(), Echo(text))]
    ParseConfig {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
        /// The line as written.
        text: String,
    },
    /// A config option has a value this agent cannot use.
    #[error("{0}")]
    InvalidOption(Box<OptionError>),
    /// No connection to the broker within the time the operation had.
    #[error("not connected to the message broker after {waited:?} ({state})")]
    NotConnected {
        /// How long the operation waited.
        waited: Duration,
        /// The transport's state, for the log.
        state: String,
    },
    /// The broker did not take a message (no confirm, a channel error, or an unroutable
    /// mandatory message).
    #[error(
        "publishing to exchange {} with routing key {}: {}",
        Echo(exchange),
        Echo(routing_key),
        clean_message(reason, 400)
    )]
    Publish {
        /// The exchange (`""`: the default exchange).
        exchange: String,
        /// The routing key.
        routing_key: String,
        /// What happened.
        reason: String,
    },
    /// A call got no reply in time (oslo's `MessagingTimeout`).
    #[error(
        "no reply to {method} on topic {} within {timeout:?} (msg_id {msg_id})",
        Echo(topic)
    )]
    Timeout {
        /// The topic called.
        topic: String,
        /// The method called.
        method: String,
        /// The call's `_msg_id`.
        msg_id: String,
        /// How long it waited.
        timeout: Duration,
    },
    /// The server answered a call with a failure (oslo's `RemoteError`).
    #[error("{method} on topic {}: the server failed: {failure}", Echo(topic))]
    Remote {
        /// The topic called.
        topic: String,
        /// The method called.
        method: String,
        /// The failure as the server serialised it.
        failure: Box<RemoteFailure>,
    },
    /// A message or a result could not be decoded.
    #[error("decoding {what}: {}", clean_message(reason, 400))]
    Decode {
        /// What was being decoded.
        what: String,
        /// Why it failed.
        reason: String,
    },
    /// The transport was shut down.
    #[error("the AMQP transport is shut down")]
    Closed,
}

impl NeutronError {
    /// An [`NeutronError::InvalidOption`].
    pub(crate) fn option(
        origin: Origin,
        section: &str,
        key: &str,
        value: &str,
        reason: impl Into<String>,
    ) -> NeutronError {
        NeutronError::InvalidOption(Box::new(OptionError {
            origin,
            section: section.to_owned(),
            key: key.to_owned(),
            value: value.to_owned(),
            reason: reason.into(),
        }))
    }

    /// An [`NeutronError::Decode`].
    pub(crate) fn decode(what: impl Into<String>, reason: impl fmt::Display) -> NeutronError {
        NeutronError::Decode {
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    /// True for errors a later retry may not see (no broker, no reply in time, a publish
    /// that failed): the agent retries these; config and decode errors it does not.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            NeutronError::NotConnected { .. }
                | NeutronError::Publish { .. }
                | NeutronError::Timeout { .. }
        )
    }
}
