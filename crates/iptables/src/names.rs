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
        check_comment(value).map_err(|reason| Error::invalid(field, value, reason))?;
        Ok(Comment(value.to_owned()))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why `value` cannot be a `-m comment` text, if it cannot: too long, empty, a control or
/// invisible format character, or l3agent's reserved marker prefix (a comment that looked like
/// `l3agent:<wrap>:<hash>` would make another manager's apply take the rule for its own).
pub(crate) fn check_comment(value: &str) -> Result<(), String> {
    if value.len() > MAX_COMMENT_LEN {
        return Err(format!(
            "is {} bytes, at most {MAX_COMMENT_LEN} are allowed",
            value.len()
        ));
    }
    unprintable(value)?;
    if value.is_empty() {
        return Err("must not be empty".to_owned());
    }
    reserved(value)
}

/// Refuses text that starts like an ownership marker (see [`crate::marker`]).
fn reserved(value: &str) -> Result<(), String> {
    if value.starts_with(crate::marker::PREFIX) {
        return Err(format!(
            "starts with {:?}, which is reserved for l3agent's ownership markers",
            crate::marker::PREFIX
        ));
    }
    Ok(())
}

/// Whether `c` is invisible in a terminal or a log yet changes how text reads: Unicode's
/// format characters (category Cf: soft hyphen, bidi embeddings, overrides and isolates,
/// zero-width spaces and joiners, word joiner, BOM, tag characters, ...) and the line and
/// paragraph separators. The table is Unicode 15.1's Cf list.
pub(crate) fn is_invisible_format(c: char) -> bool {
    const RANGES: &[(u32, u32)] = &[
        (0x00AD, 0x00AD),
        (0x0600, 0x0605),
        (0x061C, 0x061C),
        (0x06DD, 0x06DD),
        (0x070F, 0x070F),
        (0x0890, 0x0891),
        (0x08E2, 0x08E2),
        (0x180E, 0x180E),
        (0x200B, 0x200F),
        (0x2028, 0x202E),
        (0x2060, 0x2064),
        (0x2066, 0x206F),
        (0xFEFF, 0xFEFF),
        (0xFFF9, 0xFFFB),
        (0x110BD, 0x110BD),
        (0x110CD, 0x110CD),
        (0x13430, 0x1343F),
        (0x1BCA0, 0x1BCA3),
        (0x1D173, 0x1D17A),
        (0xE0001, 0xE0001),
        (0xE0020, 0xE007F),
    ];
    let c = c as u32;
    RANGES.iter().any(|&(lo, hi)| (lo..=hi).contains(&c))
}

fn unprintable(value: &str) -> Result<(), String> {
    // Printable ASCII (the common case) has neither.
    if value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Ok(());
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(format!("contains the control character U+{:04X}", c as u32));
    }
    if let Some(c) = value.chars().find(|c| is_invisible_format(*c)) {
        return Err(format!(
            "contains the invisible format character U+{:04X}",
            c as u32
        ));
    }
    Ok(())
}

/// Rejects NUL, line breaks and every other control character, and the invisible format
/// characters of [`is_invisible_format`] (bidi overrides, zero-width characters, ...).
pub(crate) fn reject_control(field: &str, value: &str) -> Result<(), Error> {
    unprintable(value).map_err(|reason| Error::invalid(field, value, reason))
}

/// Whether `name` can follow `-j`/`-g` as a jump to a user chain: a valid [`ChainName`] with a
/// lower-case letter or a `-`. iptables first looks for a target extension of that name
/// (`libxt_<NAME>.so`, upper case by convention) and only then for a chain, so an all-upper-case
/// name would load an extension l3agent has not vetted.
pub fn is_jump_chain(name: &str) -> bool {
    ChainName::new("", name).is_ok() && name.chars().any(|c| c.is_ascii_lowercase() || c == '-')
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
    /// Validates a tag: 1..=64 printable characters, not starting like an ownership marker.
    pub fn new(field: &str, value: &str) -> Result<Self, Error> {
        if value.is_empty() || value.len() > 64 {
            return Err(Error::invalid(field, value, "must be 1 to 64 characters"));
        }
        reject_control(field, value)?;
        reserved(value).map_err(|reason| Error::invalid(field, value, reason))?;
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

    #[test]
    fn comments_and_tags_refuse_invisible_format_characters() {
        for c in [
            '\u{202A}',
            '\u{202E}',
            '\u{2066}',
            '\u{2069}',
            '\u{200B}',
            '\u{200F}',
            '\u{FEFF}',
            '\u{2060}',
            '\u{2064}',
            '\u{00AD}',
            '\u{2028}',
            '\u{E0041}',
            '\u{061C}',
        ] {
            let text = format!("ssh{c}ok");
            let e = Comment::new("rules[0].comment", &text)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("invisible format character")
                    && e.contains(&format!("U+{:04X}", c as u32)),
                "{e}"
            );
            assert!(
                !e.contains(c),
                "the message must not carry the character itself: {e}"
            );
            assert!(Tag::new("rules[0].tag", &text).is_err(), "{c:?}");
        }
        assert!(Tag::new("t", "a\u{1b}[31m").is_err());
        assert!(Comment::new("c", "café, naïve, 日本").is_ok());
    }

    #[test]
    fn comments_and_tags_cannot_impersonate_an_ownership_marker() {
        for text in [
            "l3agent:w:0123456789abcdef",
            "l3agent:neutron-l3-agent:00000000000000ff",
            "l3agent:",
        ] {
            let e = Comment::new("rules[0].comment", text)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("reserved for l3agent's ownership markers"),
                "{e}"
            );
            assert!(Tag::new("rules[0].tag", text).is_err(), "{text}");
        }
        // Mentioning l3agent is fine; only the marker's own prefix is reserved.
        assert!(Comment::new("c", "managed by l3agent: ssh").is_ok());
        assert!(Comment::new("c", "x l3agent:w:0123456789abcdef").is_ok());
    }

    #[test]
    fn a_jump_target_is_a_chain_only_with_a_lower_case_letter_or_dash() {
        for chain in ["neutron-filter-top", "w-INPUT", "fw", "a.b"] {
            assert!(is_jump_chain(chain), "{chain}");
        }
        for name in ["ACCEPT", "LED", "MY_CHAIN", "A1", "", "-x", "a b", "a/b"] {
            assert!(!is_jump_chain(name), "{name}");
        }
    }
}
