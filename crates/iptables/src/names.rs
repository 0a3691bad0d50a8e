//! Typed names: every string that reaches an `iptables-restore` line is one of these, and each
//! constructor rejects what could end a line, open a quote or collide with another owner.

use std::fmt;

use crate::error::Error;

/// The longest chain name the kernel accepts (`XT_EXTENSION_MAXNAMELEN` - 1).
pub const MAX_CHAIN_LEN: usize = 28;
/// The longest wrap name (Neutron's binary-name limit, I-01).
pub const MAX_WRAP_LEN: usize = 16;
/// The longest comment `-m comment` accepts.
pub const MAX_COMMENT_LEN: usize = 255;

/// IP family: which of `iptables`/`ip6tables` a table belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// `iptables`
    V4,
    /// `ip6tables`
    V6,
}

impl Family {
    /// Both families, IPv4 first (the order applies run in).
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// Index into per-family arrays.
    pub fn index(self) -> usize {
        match self {
            Family::V4 => 0,
            Family::V6 => 1,
        }
    }

    /// The name used in messages and in the rules file (`ipv4`, `ipv6`).
    pub fn as_str(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The netfilter tables l3agent manages (the `security` table is left alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    /// `*filter`
    Filter,
    /// `*mangle`
    Mangle,
    /// `*nat`
    Nat,
    /// `*raw`
    Raw,
}

impl Table {
    /// All tables, in the order Neutron applies them (sorted by name).
    pub const ALL: [Table; 4] = [Table::Filter, Table::Mangle, Table::Nat, Table::Raw];

    /// The name as `iptables -t` and `*table` spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Mangle => "mangle",
            Table::Nat => "nat",
            Table::Raw => "raw",
        }
    }

    /// Parses `filter`, `mangle`, `nat` or `raw`.
    pub fn parse(s: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The kernel's builtin chains of this table.
    pub fn builtin_chains(self) -> &'static [&'static str] {
        match self {
            Table::Filter => &["INPUT", "FORWARD", "OUTPUT"],
            Table::Nat => &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
            Table::Mangle => &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"],
            Table::Raw => &["PREROUTING", "OUTPUT"],
        }
    }

    /// Whether `chain` is a builtin chain of this table.
    pub fn is_builtin(self, chain: &str) -> bool {
        self.builtin_chains().contains(&chain)
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn check_charset(field: &str, value: &str, extra: &[char]) -> Result<(), Error> {
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-' || extra.contains(c)))
    {
        return Err(Error::invalid(
            field,
            value,
            format!("character {c:?} is not allowed (letters, digits, '_' and '-' only)"),
        ));
    }
    Ok(())
}

/// The prefix of every chain one manager owns (`<wrap>-<chain>`), Neutron's binary name.
///
/// 1..=16 characters of `[A-Za-z0-9_-]`, not starting with `-`. Too long is an error, never a
/// silent truncation (Neutron B-10).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WrapName(String);

impl WrapName {
    /// Validates a wrap name.
    pub fn new(value: &str) -> Result<Self, Error> {
        const FIELD: &str = "wrap_name";
        if value.is_empty() {
            return Err(Error::invalid(FIELD, value, "must not be empty"));
        }
        if value.len() > MAX_WRAP_LEN {
            return Err(Error::invalid(
                FIELD,
                value,
                format!(
                    "is {} characters, at most {MAX_WRAP_LEN} are allowed",
                    value.len()
                ),
            ));
        }
        check_charset(FIELD, value, &[])?;
        if value.starts_with('-') || value.ends_with('-') {
            return Err(Error::invalid(
                FIELD,
                value,
                "must not start or end with '-'",
            ));
        }
        Ok(WrapName(value.to_owned()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `<wrap>-<name>`, the kernel name of one of our chains, checked against the 28-char limit.
    pub fn wrap_chain(&self, field: &str, name: &ChainName) -> Result<String, Error> {
        let full = format!("{}-{}", self.0, name.as_str());
        if full.len() > MAX_CHAIN_LEN {
            return Err(Error::invalid(
                field,
                name.as_str(),
                format!(
                    "wrapped chain name {full:?} is {} characters, at most {MAX_CHAIN_LEN} are allowed",
                    full.len()
                ),
            ));
        }
        Ok(full)
    }

    /// If `kernel_name` is `<wrap>-<rest>`, returns `rest`.
    pub fn strip<'a>(&self, kernel_name: &'a str) -> Option<&'a str> {
        kernel_name
            .strip_prefix(self.0.as_str())
            .and_then(|r| r.strip_prefix('-'))
            .filter(|r| !r.is_empty())
    }
}

impl fmt::Display for WrapName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Default for WrapName {
    fn default() -> Self {
        WrapName("l3agent".to_owned())
    }
}

/// A chain name as the caller writes it: `[A-Za-z0-9_.-]`, 1..=28 characters, not starting
/// with `-` or `!`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChainName(String);

impl ChainName {
    /// Validates a chain name; `field` names it in the error.
    pub fn new(field: &str, value: &str) -> Result<Self, Error> {
        if value.is_empty() {
            return Err(Error::invalid(field, value, "must not be empty"));
        }
        if value.len() > MAX_CHAIN_LEN {
            return Err(Error::invalid(
                field,
                value,
                format!(
                    "is {} characters, at most {MAX_CHAIN_LEN} are allowed",
                    value.len()
                ),
            ));
        }
        check_charset(field, value, &['.'])?;
        if value.starts_with('-') {
            return Err(Error::invalid(field, value, "must not start with '-'"));
        }
        Ok(ChainName(value.to_owned()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A `-m comment` text: printable, at most 255 bytes. Quotes and backslashes are allowed and
/// escaped the way `iptables-save` prints them (see [`quote_comment`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Comment(String);

impl Comment {
    /// Validates a comment; `field` names it in the error.
    pub fn new(field: &str, value: &str) -> Result<Self, Error> {
        if value.len() > MAX_COMMENT_LEN {
            return Err(Error::invalid(
                field,
                value,
                format!(
                    "is {} bytes, at most {MAX_COMMENT_LEN} are allowed",
                    value.len()
                ),
            ));
        }
        reject_control(field, value)?;
        if value.is_empty() {
            return Err(Error::invalid(field, value, "must not be empty"));
        }
        Ok(Comment(value.to_owned()))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Rejects NUL, line breaks and every other control character.
pub(crate) fn reject_control(field: &str, value: &str) -> Result<(), Error> {
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(Error::invalid(
            field,
            value,
            format!("contains the control character U+{:04X}", c as u32),
        ));
    }
    Ok(())
}

/// Quotes a string argument exactly as `iptables-save` does (libxtables `xtables_save_string`):
/// bare if it is non-empty and only `[A-Za-z0-9_-]`, else in double quotes with `"`, `'` and `\`
/// backslash-escaped. The input must have no control characters (see [`Comment::new`]).
pub fn quote_comment(value: &str) -> String {
    let bare = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        return value.to_owned();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if matches!(c, '"' | '\'' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// A rule tag, for [`crate::model::IptablesModel::clear_rules_by_tag`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tag(String);

impl Tag {
    /// Validates a tag: 1..=64 printable characters.
    pub fn new(field: &str, value: &str) -> Result<Self, Error> {
        if value.is_empty() || value.len() > 64 {
            return Err(Error::invalid(field, value, "must be 1 to 64 characters"));
        }
        reject_control(field, value)?;
        Ok(Tag(value.to_owned()))
    }

    /// The tag text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_name_limits() {
        assert!(WrapName::new("neutron-l3-agent").is_ok());
        assert!(WrapName::new("neutron-l3-agent1").is_err());
        assert!(WrapName::new("").is_err());
        assert!(WrapName::new("a b").is_err());
        assert!(WrapName::new("a\nb").is_err());
        assert!(WrapName::new("-a").is_err());
    }

    #[test]
    fn wrapped_chain_too_long_is_an_error_not_a_truncation() {
        let w = WrapName::new("neutron-l3-agent").unwrap();
        let short = ChainName::new("c", "float-snat").unwrap();
        assert_eq!(
            w.wrap_chain("c", &short).unwrap(),
            "neutron-l3-agent-float-snat"
        );
        let long = ChainName::new("c", "float-snat-xyz").unwrap();
        let err = w.wrap_chain("chains[0]", &long).unwrap_err().to_string();
        assert!(
            err.contains("chains[0]") && err.contains("float-snat-xyz"),
            "{err}"
        );
    }

    #[test]
    fn strip_is_exact() {
        let w = WrapName::new("l3agent").unwrap();
        assert_eq!(w.strip("l3agent-fw"), Some("fw"));
        assert_eq!(w.strip("l3agentx-fw"), None);
        assert_eq!(w.strip("x-l3agent-fw"), None);
        assert_eq!(w.strip("l3agent-"), None);
    }

    #[test]
    fn comment_quoting_matches_iptables_save() {
        // Captured: iptables-save v1.8.9 (legacy and nft) after
        // `-A t -m comment --comment "a \"q\" b"` and `--comment "a'b\\c"`.
        assert_eq!(quote_comment("ssh"), "ssh");
        assert_eq!(quote_comment("a-b_c"), "a-b_c");
        assert_eq!(quote_comment("a \"q\" b"), r#""a \"q\" b""#);
        assert_eq!(quote_comment("a'b\\c"), r#""a\'b\\c""#);
        assert_eq!(quote_comment("x: y"), r#""x: y""#);
    }

    #[test]
    fn comment_rejects_control_characters() {
        let e = Comment::new("rules[1].comment", "a\nCOMMIT")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("rules[1].comment") && e.contains("U+000A"),
            "{e}"
        );
        assert!(Comment::new("c", "a\0b").is_err());
        assert!(Comment::new("c", &"x".repeat(256)).is_err());
    }
}
