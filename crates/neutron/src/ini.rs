//! oslo.config's INI dialect, read the way `oslo_config/iniparser.py` and `cfg.ConfigParser`
//! read it (pure: text in, entries out):
//!
//! - Trailing whitespace is stripped from every line; a blank line ends a multi-line value.
//! - A line starting with a space or a tab continues the previous value (its leading
//!   whitespace stripped, joined with `\n`); with no value open it is an error.
//! - `[section]`: section names are case-insensitive (lowercased) except `DEFAULT`.
//! - `#` and `;` start a comment only in column 0 (`key = a # b` keeps `a # b`).
//! - `key = value` or `key: value` (whichever separator comes first); key and value are
//!   stripped, and a value wrapped in matching `"` or `'` loses them. Keys stay case-sensitive.
//! - An assignment before any section header is an error.
//!
//! Lookups follow `cfg.ConfigOpts`: the last file given wins, and within a file the last
//! assignment wins.

use std::path::{Path, PathBuf};

use crate::error::NeutronError;

/// One `key = value` assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Normalised section name (`DEFAULT`, or lowercase).
    pub section: String,
    /// The key as written.
    pub key: String,
    /// The value: stripped, quotes removed, continuation lines joined with `\n`.
    pub value: String,
    /// 1-based line of the key.
    pub line: usize,
}

/// One parsed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IniFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// Its assignments in file order.
    pub entries: Vec<Entry>,
}

/// oslo's `_normalize_group_name`.
pub fn normalize_section(name: &str) -> String {
    if name == "DEFAULT" {
        name.to_owned()
    } else {
        name.to_lowercase()
    }
}

/// Parses the text of one file (`path` names it in errors).
pub fn parse(path: &Path, text: &str) -> Result<IniFile, NeutronError> {
    let err = |line: usize, message: &str, text: &str| NeutronError::ParseConfig {
        path: path.to_path_buf(),
        line,
        message: message.to_owned(),
        text: text.to_owned(),
    };
    let mut entries = Vec::new();
    let mut section: Option<String> = None;
    // The assignment being read: key, its line, value lines.
    let mut open: Option<(String, usize, Vec<String>)> = None;

    let flush = |open: &mut Option<(String, usize, Vec<String>)>,
                 section: &Option<String>,
                 entries: &mut Vec<Entry>|
     -> Result<(), NeutronError> {
        if let Some((key, line, values)) = open.take() {
            let Some(section) = section else {
                return Err(err(line, "Section must be started before assignment", &key));
            };
            entries.push(Entry {
                section: section.clone(),
                key,
                value: values.join("\n"),
                line,
            });
        }
        Ok(())
    };

    for (i, raw) in text.lines().enumerate() {
        let lineno = i + 1;
        let line = raw.trim_end();
        if line.is_empty() {
            flush(&mut open, &section, &mut entries)?;
            continue;
        }
        if line.starts_with([' ', '\t']) {
            match open.as_mut() {
                Some((_, _, values)) => values.push(line.trim_start().to_owned()),
                None => return Err(err(lineno, "Unexpected continuation line", line)),
            }
            continue;
        }
        flush(&mut open, &section, &mut entries)?;
        if line.starts_with('[') {
            if !line.ends_with(']') {
                return Err(err(lineno, "Invalid section (must end with ])", line));
            }
            if line.len() <= 2 {
                return Err(err(lineno, "Empty section name", line));
            }
            section = Some(normalize_section(&line[1..line.len() - 1]));
        } else if line.starts_with(['#', ';']) {
            // A comment.
        } else {
            let (key, value) = split_key_value(line)
                .ok_or_else(|| err(lineno, "No ':' or '=' found in assignment", line))?;
            if key.is_empty() {
                return Err(err(lineno, "Key cannot be empty", line));
            }
            open = Some((key, lineno, vec![value]));
        }
    }
    flush(&mut open, &section, &mut entries)?;
    Ok(IniFile {
        path: path.to_path_buf(),
        entries,
    })
}

/// iniparser's `_split_key_value`.
fn split_key_value(line: &str) -> Option<(String, String)> {
    let colon = line.find(':');
    let equal = line.find('=');
    let at = match (colon, equal) {
        (None, None) => return None,
        (None, Some(e)) => e,
        (Some(c), None) => c,
        (Some(c), Some(e)) => c.min(e),
    };
    let key = line[..at].trim();
    let mut value = line[at + 1..].trim();
    let b = value.as_bytes();
    if !value.is_empty() && (b[0] == b'"' || b[0] == b'\'') && b[0] == b[b.len() - 1] {
        value = if value.len() >= 2 {
            &value[1..value.len() - 1]
        } else {
            ""
        };
    }
    Some((key.to_owned(), value.to_owned()))
}

/// Files in the order given on the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IniSet {
    /// The files, first given first.
    pub files: Vec<IniFile>,
}

impl IniSet {
    /// The value in force for `key` in `section` (normalised here), with the file it came
    /// from: the last file wins, and the last assignment within it.
    pub fn get(&self, section: &str, key: &str) -> Option<(&Path, &Entry)> {
        let section = normalize_section(section);
        self.files.iter().rev().find_map(|f| {
            f.entries
                .iter()
                .rev()
                .find(|e| e.section == section && e.key == key)
                .map(|e| (f.path.as_path(), e))
        })
    }

    /// Every assignment, file by file.
    pub fn entries(&self) -> impl Iterator<Item = (&Path, &Entry)> {
        self.files
            .iter()
            .flat_map(|f| f.entries.iter().map(move |e| (f.path.as_path(), e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<IniFile, NeutronError> {
        parse(Path::new("t.conf"), text)
    }

    fn kv(f: &IniFile) -> Vec<(String, String, String, usize)> {
        f.entries
            .iter()
            .map(|e| (e.section.clone(), e.key.clone(), e.value.clone(), e.line))
            .collect()
    }

    #[test]
    fn reads_sections_comments_separators_and_quotes_like_oslo() {
        let f = p(
            "# top comment\n[DEFAULT]\nhost = node1  \n; other comment\n\
                   [Agent]\nreport_interval: 10\nx = \"quoted\"\ny='a'\nz = a # not a comment\n\
                   url = rabbit://u:p@h:5672/\n  \nempty =\n",
        )
        .unwrap();
        assert_eq!(
            kv(&f),
            vec![
                ("DEFAULT".into(), "host".into(), "node1".into(), 3),
                ("agent".into(), "report_interval".into(), "10".into(), 6),
                ("agent".into(), "x".into(), "quoted".into(), 7),
                ("agent".into(), "y".into(), "a".into(), 8),
                ("agent".into(), "z".into(), "a # not a comment".into(), 9),
                (
                    "agent".into(),
                    "url".into(),
                    "rabbit://u:p@h:5672/".into(),
                    10
                ),
                ("agent".into(), "empty".into(), "".into(), 12),
            ]
        );
    }

    #[test]
    fn joins_indented_continuation_lines_until_a_blank_line() {
        let f = p("[DEFAULT]\nkey = first\n  second\n\tthird  \n\nother = 1\n").unwrap();
        assert_eq!(
            kv(&f),
            vec![
                (
                    "DEFAULT".into(),
                    "key".into(),
                    "first\nsecond\nthird".into(),
                    2
                ),
                ("DEFAULT".into(), "other".into(), "1".into(), 6),
            ]
        );
        // An indented comment-looking line is a continuation, as in oslo.
        let f = p("[DEFAULT]\nkey =\n  # x\n").unwrap();
        assert_eq!(f.entries[0].value, "\n# x");
    }

    #[test]
    fn picks_the_first_separator() {
        let f = p("[DEFAULT]\na = b:c\nd: e=f\n").unwrap();
        assert_eq!(f.entries[0].value, "b:c");
        assert_eq!(f.entries[1].key, "d");
        assert_eq!(f.entries[1].value, "e=f");
    }

    #[test]
    fn rejects_what_oslo_rejects_naming_file_and_line() {
        for (text, line, msg) in [
            ("key = 1\n", 1, "Section must be started before assignment"),
            ("[DEFAULT]\n  cont\n", 2, "Unexpected continuation line"),
            ("[DEFAULT\n", 1, "Invalid section (must end with ])"),
            ("[]\n", 1, "Empty section name"),
            ("[DEFAULT]\njunk\n", 2, "No ':' or '=' found in assignment"),
            ("[DEFAULT]\n= 1\n", 2, "Key cannot be empty"),
            ("[DEFAULT]\n = 1\n", 2, "Unexpected continuation line"),
        ] {
            let e = p(text).unwrap_err();
            match &e {
                NeutronError::ParseConfig {
                    line: l, message, ..
                } => {
                    assert_eq!((*l, message.as_str()), (line, msg), "{text:?}");
                }
                other => panic!("{other:?}"),
            }
            assert!(
                e.to_string().starts_with(&format!("t.conf:{line}: ")),
                "{e}"
            );
        }
    }

    #[test]
    fn the_last_file_and_the_last_assignment_win() {
        let a = parse(
            Path::new("a.conf"),
            "[DEFAULT]\nhost = a1\nhost = a2\nstate_path = /a\n",
        )
        .unwrap();
        let b = parse(
            Path::new("b.ini"),
            "[default]\nhost = lower\n[DEFAULT]\nhost = b\n",
        )
        .unwrap();
        let set = IniSet { files: vec![a, b] };
        let (path, e) = set.get("DEFAULT", "host").unwrap();
        assert_eq!(
            (path, e.value.as_str(), e.line),
            (Path::new("b.ini"), "b", 4)
        );
        let (path, e) = set.get("DEFAULT", "state_path").unwrap();
        assert_eq!((path, e.value.as_str()), (Path::new("a.conf"), "/a"));
        // Sections other than DEFAULT are case-insensitive.
        assert_eq!(set.get("default", "host").unwrap().1.value, "lower");
        assert!(set.get("DEFAULT", "nope").is_none());
    }

    #[test]
    fn crlf_files_read_like_lf_files() {
        let f = p("[DEFAULT]\r\nhost = x\r\n").unwrap();
        assert_eq!(f.entries[0].value, "x");
    }
}
