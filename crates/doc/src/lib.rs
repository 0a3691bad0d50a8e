//! Reading the documents l3agent is given — host configs, rules files — so that a hostile or
//! mistaken file can neither exhaust the process nor be misread:
//!
//! - the size is capped before parsing ([`Limits::max_bytes`]), reading at most one byte past
//!   the cap;
//! - YAML flow nesting is bounded by a linear pre-scan ([`Limits::max_depth`]): libyaml's cost
//!   grows with the square of the nesting (100 KB of `{a: ` took 1.5 s here), and the
//!   deserializer's recursion limit only applies after libyaml has read everything; alias
//!   expansion is bounded by the YAML deserializer (a "billion laughs" document is refused);
//! - an empty document, a comment-only YAML file or `null` is an error ([`DocError::Empty`]),
//!   never read as "the desired state is empty";
//! - every error names the field by its path in the document (`routers[3].admin_state_up`),
//!   for JSON as for YAML, with the value echoed escaped and cut.

pub mod splice;

use std::io::Read;
use std::path::Path;

use l3agent_types::clean_message;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// The two formats l3agent reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON (a `.json` file).
    Json,
    /// YAML (anything else; JSON is also valid YAML).
    Yaml,
}

impl Format {
    /// The format of a file by its extension: `.json` is JSON, anything else YAML.
    pub fn of(path: &Path) -> Format {
        if path.extension().is_some_and(|e| e == "json") {
            Format::Json
        } else {
            Format::Yaml
        }
    }
}

/// Bounds on a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest document accepted, in bytes.
    pub max_bytes: u64,
    /// Deepest nesting of YAML flow collections (`[`, `{`) accepted.
    pub max_depth: usize,
}

impl Limits {
    /// The default size cap: 64 MiB, about six times a 1,000-router host config with ten
    /// floating IPs per router, pretty-printed.
    pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_bytes: Limits::DEFAULT_MAX_BYTES,
            max_depth: 32,
        }
    }
}

/// Why a document was refused.
#[derive(Debug, thiserror::Error)]
pub enum DocError {
    /// The file could not be read.
    #[error("cannot read it: {0}")]
    Read(#[source] std::io::Error),
    /// Over [`Limits::max_bytes`].
    #[error("larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// Not UTF-8.
    #[error("not UTF-8 text (byte {offset})")]
    NotUtf8 {
        /// Where the first bad byte is.
        offset: usize,
    },
    /// Empty, comment-only or `null`.
    #[error(
        "the document is empty; an empty desired state must be written out explicitly ({explicit})"
    )]
    Empty {
        /// What the caller's explicit form looks like (e.g. `routers: []`).
        explicit: &'static str,
    },
    /// Nested deeper than [`Limits::max_depth`].
    #[error("line {line}: nested deeper than {limit} levels")]
    TooDeep {
        /// Line of the first bracket past the limit.
        line: usize,
        /// The limit.
        limit: usize,
    },
    /// A syntax or type error, by path (`.` is the document itself).
    #[error("{path}: {message}")]
    Invalid {
        /// Field path.
        path: String,
        /// What is wrong (cleaned and cut).
        message: String,
    },
}

/// Longest parser message echoed (parsers embed the offending value).
const MAX_MESSAGE: usize = 300;

/// Reads a file, refusing it past `limits.max_bytes` without reading it whole.
pub fn read(path: &Path, limits: &Limits) -> Result<Vec<u8>, DocError> {
    read_into(path, limits, Vec::new())
}

/// [`read`] into `buf` (emptied first; its memory is reused): for a caller that reads the
/// same large file again and again (an agent's config), a buffer whose pages are already
/// there instead of a fresh one per read.
pub fn read_into(path: &Path, limits: &Limits, mut buf: Vec<u8>) -> Result<Vec<u8>, DocError> {
    let file = std::fs::File::open(path).map_err(DocError::Read)?;
    // Sized from the file's length (one allocation instead of a dozen doublings and their
    // copies for a multi-megabyte file), never beyond the cap: the length is only a hint.
    let hint = file
        .metadata()
        .map_or(0, |m| m.len().min(limits.max_bytes.saturating_add(1)));
    buf.clear();
    buf.reserve(usize::try_from(hint).unwrap_or(0).saturating_add(1));
    file.take(limits.max_bytes.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(DocError::Read)?;
    if buf.len() as u64 > limits.max_bytes {
        return Err(DocError::TooLarge {
            limit: limits.max_bytes,
        });
    }
    Ok(buf)
}

/// Parses a document into `T`. `explicit` is what an intentionally empty document of this
/// kind looks like, for the [`DocError::Empty`] message.
pub fn parse<T: DeserializeOwned>(
    bytes: &[u8],
    format: Format,
    limits: &Limits,
    explicit: &'static str,
) -> Result<T, DocError> {
    if bytes.len() as u64 > limits.max_bytes {
        return Err(DocError::TooLarge {
            limit: limits.max_bytes,
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| DocError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    if is_empty(text, format) {
        return Err(DocError::Empty { explicit });
    }
    if format == Format::Yaml {
        flow_depth(text, limits.max_depth)?;
    }
    // A document that reads cleanly is read once, without tracking field paths (tracking
    // costs a quarter to a half of the parse of a large file); the path-tracking reader runs
    // only to say where the problem is, and reports exactly what it always reported.
    if let Some(value) = parse_untracked(text, format) {
        return Ok(value);
    }
    let result: Result<T, (String, String)> = match format {
        Format::Json => {
            let mut de = serde_json::Deserializer::from_str(text);
            serde_path_to_error::deserialize(&mut de)
                .map(|Root(v)| v)
                .map_err(|e| (e.path().to_string(), e.into_inner().to_string()))
                .and_then(|v| {
                    de.end()
                        .map(|()| v)
                        .map_err(|e| (".".to_owned(), e.to_string()))
                })
        }
        Format::Yaml => {
            serde_path_to_error::deserialize(serde_norway::Deserializer::from_str(text))
                .map(|Root(v)| v)
                .map_err(|e| {
                    let path = e.path().to_string();
                    let message = e.into_inner().to_string();
                    // serde_norway puts the path in its message already: the field's, or
                    // (for an error raised on a null value, like `rules:` with no value) its
                    // enclosing mapping's, which is a prefix of the field's path.
                    let message = match message.split_once(": ") {
                        Some((p, rest))
                            if path == p
                                || path
                                    .strip_prefix(p)
                                    .is_some_and(|r| r.starts_with(['.', '['])) =>
                        {
                            rest.to_owned()
                        }
                        _ => message,
                    };
                    (path, message)
                })
        }
    };
    result.map_err(|(path, message)| {
        let message = clean_message(&message, MAX_MESSAGE);
        let message = if path == "." && message.contains("invalid type") {
            format!("the document must be a mapping: {message}")
        } else {
            message
        };
        DocError::Invalid { path, message }
    })
}

/// `text` read as a `T` by the same readers as [`parse`] but without field paths: `None` on any
/// problem (the caller then reads it again with paths, for the message). Path tracking only
/// observes the deserializer, so whatever reads cleanly here reads to the same value there.
fn parse_untracked<T: DeserializeOwned>(text: &str, format: Format) -> Option<T> {
    match format {
        Format::Json => {
            let mut de = serde_json::Deserializer::from_str(text);
            let Root(value) = Root::<T>::deserialize(&mut de).ok()?;
            de.end().ok()?;
            Some(value)
        }
        Format::Yaml => Root::<T>::deserialize(serde_norway::Deserializer::from_str(text))
            .ok()
            .map(|Root(value)| value),
    }
}

/// The document root: a mapping and nothing else (serde would otherwise build a struct from
/// a sequence of its fields' values).
struct Root<T>(T);

impl<'de, T: DeserializeOwned> Deserialize<'de> for Root<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MapOnly<T>(PhantomData<T>);
        impl<'de, T: DeserializeOwned> Visitor<'de> for MapOnly<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(MapOnly(PhantomData)).map(Root)
    }
}

/// `#[serde(deserialize_with = "l3agent_doc::explicit_list")]`: a list whose key is present
/// must hold a list. YAML reads `key:` with no value as null, and serde's YAML reader would
/// turn that into an empty list — "remove every router", from a stray edit.
pub fn explicit_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    match Option::<Vec<T>>::deserialize(d)? {
        Some(list) => Ok(list),
        None => Err(serde::de::Error::custom(
            "no value: write [] for an empty list",
        )),
    }
}

/// `#[serde(default, deserialize_with = "l3agent_doc::explicit_value")]`: a mapping whose key
/// is present must hold a mapping. `ipv4:` with no value is null, and taking it as "no tables"
/// would be a stray edit removing every rule of a family; `ipv4: {}` says so on purpose.
pub fn explicit_value<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    match Option::<T>::deserialize(d)? {
        Some(value) => Ok(value),
        None => Err(serde::de::Error::custom(
            "no value: write {} for an empty mapping",
        )),
    }
}

/// Like [`explicit_value`] for an optional field: absent is `None` (with `#[serde(default)]`),
/// present must hold a value, never null.
pub fn explicit_some<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    explicit_value(d).map(Some)
}

/// Reads and parses a file ([`read`] then [`parse`], the format by extension).
pub fn load<T: DeserializeOwned>(
    path: &Path,
    limits: &Limits,
    explicit: &'static str,
) -> Result<T, DocError> {
    let bytes = read(path, limits)?;
    parse(&bytes, Format::of(path), limits, explicit)
}

/// True when the document holds no value: only whitespace, comments, document markers, or an
/// explicit null.
fn is_empty(text: &str, format: Format) -> bool {
    // The longest empty form is four characters: past that, the document has a value (this
    // stops at the first line of a real document instead of copying all of it).
    const LONGEST: usize = 4;
    let mut rest = String::new();
    for line in text.lines() {
        let line = match format {
            Format::Yaml if line.trim_start().starts_with('#') => "",
            _ => line,
        };
        let line = line.trim();
        if format == Format::Yaml && (line == "---" || line == "...") {
            continue;
        }
        let line = match format {
            Format::Yaml => line.strip_prefix("--- ").unwrap_or(line).trim(),
            Format::Json => line,
        };
        if rest.len() + line.len() > LONGEST {
            return false;
        }
        rest.push_str(line);
    }
    matches!(rest.as_str(), "" | "null" | "~" | "Null" | "NULL")
}

/// Refuses YAML whose flow collections nest deeper than `max`, in one linear pass that skips
/// quoted scalars and comments (a bracket inside a plain scalar may be counted: values
/// l3agent reads never hold unbalanced brackets, and erring on the side of refusing is safe).
fn flow_depth(text: &str, max: usize) -> Result<(), DocError> {
    let mut depth = 0usize;
    let mut line = 1usize;
    let mut chars = text.chars().peekable();
    let mut prev = '\n';
    while let Some(c) = chars.next() {
        match c {
            '\n' => line += 1,
            '#' if prev.is_whitespace() => {
                for n in chars.by_ref() {
                    if n == '\n' {
                        line += 1;
                        break;
                    }
                }
                prev = '\n';
                continue;
            }
            '"' | '\'' if !prev.is_alphanumeric() => {
                let quote = c;
                while let Some(n) = chars.next() {
                    match n {
                        '\n' => line += 1,
                        '\\' if quote == '"' && chars.next() == Some('\n') => line += 1,
                        n if n == quote => {
                            if quote == '\'' && chars.peek() == Some(&'\'') {
                                chars.next();
                            } else {
                                break;
                            }
                        }
                        _ => {}
                    }
                }
            }
            '[' | '{' => {
                depth += 1;
                if depth > max {
                    return Err(DocError::TooDeep { line, limit: max });
                }
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        prev = c;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        #[allow(dead_code)]
        #[serde(deserialize_with = "explicit_list")]
        routers: Vec<Router>,
    }

    #[derive(Debug, Deserialize)]
    struct Router {
        #[allow(dead_code)]
        id: String,
        #[allow(dead_code)]
        #[serde(default)]
        admin_state_up: bool,
    }

    fn yaml(text: &str) -> Result<Doc, DocError> {
        parse(
            text.as_bytes(),
            Format::Yaml,
            &Limits::default(),
            "routers: []",
        )
    }

    fn json(text: &str) -> Result<Doc, DocError> {
        parse(
            text.as_bytes(),
            Format::Json,
            &Limits::default(),
            "routers: []",
        )
    }

    #[test]
    fn empty_comment_only_and_null_documents_are_errors_not_empty_states() {
        for text in [
            "",
            "\n\n",
            "# nothing\n  # here\n",
            "---\n",
            "null",
            "~",
            "--- ~\n",
        ] {
            let e = yaml(text).unwrap_err();
            assert!(matches!(e, DocError::Empty { .. }), "{text:?}: {e}");
            assert!(e.to_string().contains("routers: []"), "{e}");
        }
        for text in ["", " \n", "null"] {
            assert!(matches!(json(text).unwrap_err(), DocError::Empty { .. }));
        }
    }

    #[test]
    fn a_clean_document_reads_to_what_the_path_tracking_reader_reads() {
        let json_text = r#"{"routers": [{"id": "a"}, {"id": "b", "admin_state_up": true}],
            "x": [1, 2.5, "three", null, {"y": [[]]}]}"#;
        let yaml_text = "routers:\n- id: a\n- {id: b, admin_state_up: true}\nx: [1, 2.5, three, ~, {y: [[]]}]\n";
        for (text, format) in [(json_text, Format::Json), (yaml_text, Format::Yaml)] {
            let fast: serde_json::Value =
                parse(text.as_bytes(), format, &Limits::default(), "").unwrap();
            let tracked: serde_json::Value = match format {
                Format::Json => {
                    serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(text))
                        .unwrap()
                }
                Format::Yaml => {
                    serde_path_to_error::deserialize(serde_norway::Deserializer::from_str(text))
                        .unwrap()
                }
            };
            assert_eq!(fast, tracked, "{format:?}");
            assert!(parse::<Doc>(text.as_bytes(), format, &Limits::default(), "").is_err());
        }
        assert!(json(r#"{"routers": [{"id": "a"}]}"#).is_ok());
    }

    #[test]
    fn a_sequence_is_not_read_as_a_struct_of_its_values() {
        // serde would build `Doc` from `[[...]]` (a struct from the sequence of its fields).
        let e = json(r#"[[{"id": "a"}]]"#).unwrap_err().to_string();
        assert!(e.starts_with(".: the document must be a mapping"), "{e}");
        let e = yaml("- - id: a\n").unwrap_err().to_string();
        assert!(e.starts_with(".: the document must be a mapping"), "{e}");
    }

    #[test]
    fn only_a_short_document_can_be_empty() {
        assert!(is_empty("  null  \n\n", Format::Json));
        assert!(is_empty("# a\n--- ~\n...\n", Format::Yaml));
        assert!(!is_empty("nulll", Format::Json));
        assert!(!is_empty(
            &format!("{{\"a\": \"{}\"}}", "b".repeat(1 << 20)),
            Format::Json
        ));
        assert!(!is_empty("# a\nrouters: []\n", Format::Yaml));
    }

    #[test]
    fn an_array_document_is_refused_as_not_a_mapping() {
        let e = json("[]").unwrap_err().to_string();
        assert!(e.starts_with(".: the document must be a mapping"), "{e}");
        let e = yaml("- a\n").unwrap_err().to_string();
        assert!(e.starts_with(".: the document must be a mapping"), "{e}");
    }

    #[test]
    fn a_key_without_a_value_is_a_type_error_by_path() {
        let e = yaml("routers:\n").unwrap_err().to_string();
        assert!(
            e.starts_with("routers: no value: write [] for an empty list"),
            "{e}"
        );
        let e = json(r#"{"routers": null}"#).unwrap_err().to_string();
        assert!(e.starts_with("routers: no value"), "{e}");
        assert!(yaml("routers: []\n").is_ok());
    }

    #[test]
    fn json_type_errors_name_the_field_path() {
        let e = json(r#"{"routers": [{"id": "a"}, {"id": "b", "admin_state_up": "yes"}]}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("routers[1].admin_state_up: invalid type: string \"yes\""),
            "{e}"
        );
    }

    #[test]
    fn yaml_type_errors_name_the_field_path() {
        let e = yaml("routers:\n- id: a\n- id: b\n  admin_state_up: [1]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("routers[1].admin_state_up: invalid type"),
            "{e}"
        );
    }

    #[test]
    fn trailing_json_after_the_document_is_refused() {
        assert!(json(r#"{"routers": []} {"routers": []}"#).is_err());
    }

    #[test]
    fn a_huge_value_is_echoed_cut() {
        let text = format!(
            r#"{{"routers": [{{"id": "a", "admin_state_up": "{}"}}]}}"#,
            "y".repeat(1 << 20)
        );
        let e = json(&text).unwrap_err().to_string();
        assert!(e.len() < 400, "{} bytes", e.len());
        assert!(e.contains("… (cut)"));
    }

    #[test]
    fn a_document_over_the_size_cap_is_refused_before_parsing() {
        let limits = Limits {
            max_bytes: 10,
            ..Limits::default()
        };
        let e = parse::<Doc>(b"routers: []   ", Format::Yaml, &limits, "").unwrap_err();
        assert!(matches!(e, DocError::TooLarge { limit: 10 }));
        let dir = std::env::temp_dir().join(format!("l3agent-doc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("big.yaml");
        std::fs::write(&file, vec![b' '; 4096]).unwrap();
        assert!(matches!(
            read(&file, &limits).unwrap_err(),
            DocError::TooLarge { .. }
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn deep_flow_nesting_is_refused_by_the_linear_prescan() {
        for text in ["[".repeat(200_000), "{a: ".repeat(50_000)] {
            let e = yaml(&text).unwrap_err();
            assert!(matches!(e, DocError::TooDeep { line: 1, limit: 32 }), "{e}");
        }
        // Brackets in quoted scalars and comments do not count.
        let text = format!(
            "routers: [{{id: '{0}', admin_state_up: true}}] # {0}\n",
            "[[[[".repeat(20)
        );
        assert!(yaml(&text).is_ok());
    }

    #[test]
    fn alias_expansion_is_bounded() {
        let mut text = String::from("a: &a [x,x,x,x,x,x,x,x,x,x]\n");
        for i in 0..20 {
            let p = if i == 0 {
                "a".to_owned()
            } else {
                format!("b{}", i - 1)
            };
            text.push_str(&format!(
                "b{i}: &b{i} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n"
            ));
        }
        let e = parse::<serde_json::Value>(text.as_bytes(), Format::Yaml, &Limits::default(), "")
            .unwrap_err()
            .to_string();
        assert!(e.contains("repetition limit exceeded"), "{e}");
    }

    #[test]
    fn invalid_utf8_is_refused_with_its_offset() {
        let e = parse::<Doc>(b"routers: [\xff]", Format::Yaml, &Limits::default(), "");
        assert!(matches!(e.unwrap_err(), DocError::NotUtf8 { offset: 10 }));
    }
}
