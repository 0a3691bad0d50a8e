//! The pure crate's one error type.

/// Everything that can be wrong with a desired state before it reaches the kernel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A value failed validation. `field` is the path of the value (as the caller wrote it, e.g.
    /// `ipv4.filter.rules[3].rule`), `value` the offending text, cut to [`MAX_SHOWN`]
    /// characters (see [`shown`]) and escaped for display (`{:?}`, so a control or invisible
    /// character is printed as `\u{..}`, never sent to the terminal).
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

/// The most characters of an offending value an error repeats.
pub const MAX_SHOWN: usize = 80;

/// `value` cut to at most [`MAX_SHOWN`] characters, the last one `…` when it was cut: an error
/// names the value without repeating a whole file's worth of it.
pub fn shown(value: &str) -> String {
    if value.chars().count() <= MAX_SHOWN {
        return value.to_owned();
    }
    let mut out: String = value.chars().take(MAX_SHOWN - 1).collect();
    out.push('…');
    out
}

/// `value` as an error message quotes it: cut by [`shown`], then quoted and escaped by `{:?}`.
pub(crate) fn quoted(value: &str) -> String {
    format!("{:?}", shown(value))
}

impl Error {
    /// Shorthand for [`Error::Invalid`]; the value is cut by [`shown`].
    pub fn invalid(field: &str, value: &str, reason: impl Into<String>) -> Error {
        Error::Invalid {
            field: field.to_owned(),
            value: shown(value),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_value_is_cut_to_80_characters_with_an_ellipsis() {
        let long = "é".repeat(200);
        let Error::Invalid { value, .. } = Error::invalid("f", &long, "r") else {
            unreachable!()
        };
        assert_eq!(value.chars().count(), MAX_SHOWN);
        assert!(value.ends_with('…'));
        assert_eq!(shown("short"), "short");
        assert_eq!(shown(&"x".repeat(80)), "x".repeat(80));
    }

    #[test]
    fn control_and_invisible_characters_are_escaped_in_the_message() {
        let e = Error::invalid("rules[0].comment", "a\u{1b}[2Jb\u{202e}c", "bad").to_string();
        assert!(e.contains(r"\u{1b}") && e.contains(r"\u{202e}"), "{e}");
        assert!(!e.contains('\u{1b}') && !e.contains('\u{202e}'), "{e}");
    }
}
