//! Echoing a value from outside into an error message or a log line: quoted, control and
//! Unicode format characters escaped, and cut at [`Echo::MAX_CHARS`] characters, so a 200 MB
//! value or a bidi override never reaches a terminal or a log as is.

use std::fmt;

/// A value shown as `"text"`, escaped and truncated (`"abc…" (1200 characters)`).
#[derive(Debug, Clone, Copy)]
pub struct Echo<'a>(pub &'a str);

impl Echo<'_> {
    /// Characters shown before the value is cut.
    pub const MAX_CHARS: usize = 80;
}

/// True for characters a terminal or a reader does not show as themselves: controls, and
/// Unicode format characters (bidi overrides and isolates, zero-width characters, BOM, soft
/// hyphen).
pub fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}'
            | '\u{E0000}'..='\u{E007F}')
}

impl fmt::Display for Echo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for (count, c) in self.0.chars().enumerate() {
            if count == Self::MAX_CHARS {
                let total = self.0.chars().count();
                return write!(f, "…\" ({total} characters)");
            }
            if is_hidden(c) || c == '"' || c == '\\' {
                write!(f, "{}", c.escape_default())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        f.write_str("\"")
    }
}

/// Cleans a message built by someone else (a parser's error that embeds the input): hidden
/// characters escaped, cut at `max` characters.
pub fn clean_message(message: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in message.chars().enumerate() {
        if i == max {
            out.push_str("… (cut)");
            break;
        }
        if is_hidden(c) && c != '\n' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_value_is_quoted_as_is() {
        assert_eq!(Echo("qr-1").to_string(), "\"qr-1\"");
    }

    #[test]
    fn control_and_format_characters_are_escaped() {
        assert_eq!(
            Echo("a\nb\u{202E}c\"").to_string(),
            "\"a\\nb\\u{202e}c\\\"\""
        );
    }

    #[test]
    fn a_long_value_is_cut_and_its_length_given() {
        let long = "x".repeat(10_000);
        let e = Echo(&long).to_string();
        assert!(e.len() < 120, "{e}");
        assert!(e.ends_with("…\" (10000 characters)"), "{e}");
    }

    #[test]
    fn a_foreign_message_is_cleaned_and_cut() {
        let m = format!("invalid value: string \"{}\u{200B}\"", "y".repeat(500));
        let c = clean_message(&m, 100);
        assert!(c.ends_with("… (cut)"));
        assert!(!c.contains('\u{200B}'));
        assert_eq!(clean_message("a\u{200B}", 100), "a\\u{200b}");
    }
}
