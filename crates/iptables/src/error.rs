//! The pure crate's one error type.

/// Everything that can be wrong with a desired state before it reaches the kernel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A value failed validation. `field` is the path of the value (as the caller wrote it, e.g.
    /// `ipv4.filter.rules[3].rule`), `value` the offending text (escaped for display).
    #[error("{field}: invalid value {value:?}: {reason}")]
    Invalid {
        /// Where the value came from.
        field: String,
        /// The value.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A wrapped chain that this manager does not have was named (Neutron's LookupError).
    #[error("{field}: unknown chain {chain:?} in {family} table {table}")]
    UnknownChain {
        /// Where the name came from.
        field: String,
        /// The chain as written.
        chain: String,
        /// `ipv4` or `ipv6`.
        family: String,
        /// The table.
        table: String,
    },
    /// The iptables-save text could not be parsed.
    #[error("iptables-save output, line {line}: {reason}")]
    Save {
        /// 1-based line number in the save output.
        line: usize,
        /// What was wrong.
        reason: String,
    },
}

impl Error {
    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(field: &str, value: &str, reason: impl Into<String>) -> Error {
        Error::Invalid {
            field: field.to_owned(),
            value: value.to_owned(),
            reason: reason.into(),
        }
    }

    /// The same error with `prefix.` put before its field path.
    pub fn within(self, prefix: &str) -> Error {
        let join = |f: String| {
            if f.is_empty() {
                prefix.to_owned()
            } else {
                format!("{prefix}.{f}")
            }
        };
        match self {
            Error::Invalid {
                field,
                value,
                reason,
            } => Error::Invalid {
                field: join(field),
                value,
                reason,
            },
            Error::UnknownChain {
                field,
                chain,
                family,
                table,
            } => Error::UnknownChain {
                field: join(field),
                chain,
                family,
                table,
            },
            e @ Error::Save { .. } => e,
        }
    }
}
