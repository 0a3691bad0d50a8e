//! Ownership markers: the comment l3agent puts on every rule it places in a chain it does not
//! own (builtin and shared chains), and on rules it cannot canonicalise.
//!
//! The marker is `l3agent:<wrap>:<16 hex digits>`: the wrap name says exactly which manager owns
//! the rule (never a substring test, Neutron B-02), and the hash (SHA-256 of the table, chain,
//! rule text, comment and placement) identifies the rule whatever form `iptables-save` prints
//! it in (Neutron B-07). Two identical foreign rules carry no marker and are never touched.

use sha2::{Digest, Sha256};

use crate::names::Table;

/// The start of every marker comment; no user comment or tag may start with it.
pub(crate) const PREFIX: &str = "l3agent:";

/// A parsed marker: the owning wrap name and the rule hash.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Marker {
    /// Wrap name of the owner.
    pub wrap: String,
    /// Hash of the rule.
    pub hash: u64,
}

/// The marker comment text for `wrap` and `hash`.
pub fn marker_text(wrap: &str, hash: u64) -> String {
    format!("{PREFIX}{wrap}:{hash:016x}")
}

/// Parses a comment value; `None` unless it is exactly a marker.
pub fn parse_marker(comment: &str) -> Option<Marker> {
    let rest = comment.strip_prefix(PREFIX)?;
    let (wrap, hex) = rest.rsplit_once(':')?;
    if hex.len() != 16 || wrap.is_empty() {
        return None;
    }
    let hash = u64::from_str_radix(hex, 16).ok()?;
    Some(Marker {
        wrap: wrap.to_owned(),
        hash,
    })
}

/// The identity hash of a rule.
pub fn rule_hash(
    table: Table,
    chain: &str,
    identity: &str,
    comment: Option<&str>,
    top: bool,
) -> u64 {
    let mut h = Sha256::new();
    for part in [
        table.as_str(),
        chain,
        identity,
        comment.unwrap_or(""),
        if top { "top" } else { "" },
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("sha256 has 32 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let h = rule_hash(Table::Nat, "POSTROUTING", "-j x", None, false);
        let m = marker_text("neutron-l3-agent", h);
        assert_eq!(
            parse_marker(&m),
            Some(Marker {
                wrap: "neutron-l3-agent".into(),
                hash: h
            })
        );
        assert_eq!(parse_marker("l3agent:w:123"), None);
        assert_eq!(parse_marker("managed by l3agent:w"), None);
        assert_ne!(h, rule_hash(Table::Nat, "POSTROUTING", "-j x", None, true));
    }
}
