//! Finding the one element a new version of a JSON document changed, without parsing the
//! rest: the agent's config file holds a thousand router dicts, an event edits one, and
//! parsing 1.4 MB to learn that costs more than converging the router.
//!
//! An [`ArrayIndex`] is a document's bytes with the byte ranges of the elements of one of
//! its top-level arrays (`routers`), found by `serde_json`'s own parser. A new version that
//! is byte for byte the old one outside one element's range is the old document with that
//! element replaced — provided the new text there is exactly one complete JSON value, which
//! the caller checks by parsing it alone (as the element's type: trailing characters are an
//! error there). Anything else (the agent section edited, an element added, removed or
//! moved, two elements changed) is [`Splice::Other`]: parse the whole document.

use std::collections::BTreeMap;
use std::ops::Range;

use serde_json::value::RawValue;

/// A JSON document and where the elements of one top-level array lie in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArrayIndex {
    bytes: Vec<u8>,
    spans: Vec<Range<usize>>,
}

/// How a new version of an indexed document differs from it.
#[derive(Debug, PartialEq, Eq)]
pub enum Splice {
    /// Byte for byte the same.
    Same,
    /// Only the text of element `index` differs: it is `text` in the new version (to be
    /// parsed alone), and `next` indexes the new version.
    One {
        /// The element.
        index: usize,
        /// Its byte range in the new version.
        text: Range<usize>,
        /// The new version, indexed (valid once `text` parsed as one value).
        next: ArrayIndex,
    },
    /// Anything else: the new version, to be parsed whole.
    Other(Vec<u8>),
}

impl ArrayIndex {
    /// Indexes `bytes`, a JSON object with the array `field`; `None` if it is not one (or a
    /// key has escapes: such a document is always parsed whole).
    pub fn new(bytes: Vec<u8>, field: &str) -> Option<ArrayIndex> {
        let spans = {
            let text = std::str::from_utf8(&bytes).ok()?;
            let top: BTreeMap<&str, &RawValue> = serde_json::from_str(text).ok()?;
            let list: Vec<&RawValue> = serde_json::from_str(top.get(field)?.get()).ok()?;
            let base = text.as_ptr() as usize;
            list.iter()
                .map(|raw| {
                    let start = raw.get().as_ptr() as usize - base;
                    start..start + raw.get().len()
                })
                .collect()
        };
        Some(ArrayIndex { bytes, spans })
    }

    /// The document.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The document, given back.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// The elements' byte ranges, in order.
    pub fn spans(&self) -> &[Range<usize>] {
        &self.spans
    }

    /// How `new` differs from this document: see [`Splice`].
    pub fn splice(&self, new: Vec<u8>) -> Splice {
        let old = &self.bytes;
        let prefix = common_prefix(old, &new);
        if prefix == old.len() && prefix == new.len() {
            return Splice::Same;
        }
        // The common suffix, not overlapping the prefix in either version.
        let room = old.len().min(new.len()) - prefix;
        let suffix = common_suffix(&old[old.len() - room..], &new[new.len() - room..]);
        let changed = prefix..old.len() - suffix;
        // The element whose first and last bytes are outside the changed bytes, which lie
        // strictly within it (an insertion next to an element may be a new element).
        let Some(index) = self
            .spans
            .iter()
            .position(|s| s.start < changed.start && changed.end < s.end)
        else {
            return Splice::Other(new);
        };
        let span = &self.spans[index];
        let grown = new.len().wrapping_sub(old.len());
        let shift = |at: usize| at.wrapping_add(grown);
        let text = span.start..shift(span.end);
        let spans = self
            .spans
            .iter()
            .enumerate()
            .map(|(i, s)| match i.cmp(&index) {
                std::cmp::Ordering::Less => s.clone(),
                std::cmp::Ordering::Equal => text.clone(),
                std::cmp::Ordering::Greater => shift(s.start)..shift(s.end),
            })
            .collect();
        Splice::One {
            index,
            text,
            next: ArrayIndex { bytes: new, spans },
        }
    }
}

/// Bytes compared at once: slices compare with `memcmp` (vectorised), a byte loop does not,
/// and a megabyte document is compared on every event.
const BLOCK: usize = 4096;

/// The length of the longest common prefix of `a` and `b`.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let mut at = 0;
    while at + BLOCK <= n && a[at..at + BLOCK] == b[at..at + BLOCK] {
        at += BLOCK;
    }
    at + a[at..n]
        .iter()
        .zip(&b[at..n])
        .take_while(|(x, y)| x == y)
        .count()
}

/// The length of the longest common suffix of `a` and `b`.
fn common_suffix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let (a, b) = (&a[a.len() - n..], &b[b.len() - n..]);
    let mut end = n;
    while end >= BLOCK && a[end - BLOCK..end] == b[end - BLOCK..end] {
        end -= BLOCK;
    }
    n - end
        + a[..end]
            .iter()
            .rev()
            .zip(b[..end].iter().rev())
            .take_while(|(x, y)| x == y)
            .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"{"agent": {"routers": [9]}, "routers": [{"id": "a", "x": [1, 2]}, {"id": "b"},
        {"id": "c", "s": "}], {"}]}"#;

    fn index() -> ArrayIndex {
        ArrayIndex::new(DOC.as_bytes().to_vec(), "routers").unwrap()
    }

    fn texts(ix: &ArrayIndex) -> Vec<&str> {
        ix.spans()
            .iter()
            .map(|s| std::str::from_utf8(&ix.bytes()[s.clone()]).unwrap())
            .collect()
    }

    fn one(new: &str) -> (usize, String, ArrayIndex) {
        match index().splice(new.as_bytes().to_vec()) {
            Splice::One { index, text, next } => (
                index,
                String::from_utf8(new.as_bytes()[text].to_vec()).unwrap(),
                next,
            ),
            other => panic!("{new}: {other:?}"),
        }
    }

    #[test]
    fn the_spans_are_the_elements_of_the_top_level_array() {
        assert_eq!(
            texts(&index()),
            [
                r#"{"id": "a", "x": [1, 2]}"#,
                r#"{"id": "b"}"#,
                r#"{"id": "c", "s": "}], {"}"#
            ]
        );
        assert!(ArrayIndex::new(b"[1]".to_vec(), "routers").is_none());
        assert!(ArrayIndex::new(b"{\"routers\": 1}".to_vec(), "routers").is_none());
        assert!(ArrayIndex::new(b"{\"routers\": [1}".to_vec(), "routers").is_none());
        assert!(ArrayIndex::new(b"{\"rout\\u0065rs\": [1]}".to_vec(), "routers").is_none());
    }

    #[test]
    fn an_edit_inside_one_element_is_that_element_and_the_others_shift() {
        let new = DOC.replace(r#"[1, 2]"#, r#"[1, 2, 3]"#);
        let (i, text, next) = one(&new);
        assert_eq!((i, text.as_str()), (0, r#"{"id": "a", "x": [1, 2, 3]}"#));
        assert_eq!(next, ArrayIndex::new(new.into_bytes(), "routers").unwrap());
        let new = DOC.replace(r#"{"id": "b"}"#, r#"{"id": "bb", "y": 1}"#);
        let (i, text, next) = one(&new);
        assert_eq!((i, text.as_str()), (1, r#"{"id": "bb", "y": 1}"#));
        assert_eq!(next, ArrayIndex::new(new.into_bytes(), "routers").unwrap());
        let new = DOC.replace(r#""s": "}], {""#, r#""s": """#);
        let (i, text, next) = one(&new);
        assert_eq!((i, text.as_str()), (2, r#"{"id": "c", "s": ""}"#));
        assert_eq!(next, ArrayIndex::new(new.into_bytes(), "routers").unwrap());
        // The new text has to parse as one value (the caller's check): here it does not.
        let new = DOC.replace(r#"{"id": "b"}"#, r#"{"id": "b" "}"#);
        let (i, text, _) = one(&new);
        assert_eq!((i, text.as_str()), (1, r#"{"id": "b" "}"#));
        assert!(serde_json::from_str::<serde_json::Value>(&text).is_err());
    }

    #[test]
    fn anything_else_is_parsed_whole_or_fails_the_callers_check() {
        assert_eq!(index().splice(DOC.as_bytes().to_vec()), Splice::Same);
        for new in [
            // the other top-level key
            DOC.replace(
                r#""agent": {"routers": [9]}"#,
                r#""agent": {"routers": [8]}"#,
            ),
            // an element added, at either end, or removed
            DOC.replace(r#""routers": [{"#, r#""routers": [{"id": "z"}, {"#),
            DOC.replace(r#""}]}"#, r#""}, {"id": "z"}]}"#),
            DOC.replace(r#"{"id": "b"},"#, ""),
            // an element inserted after another
            DOC.replace(r#"{"id": "b"}"#, r#"{"id": "b"}, {"id": "d"}"#),
            // two elements changed
            DOC.replace(r#""a""#, r#""A""#).replace(r#""c""#, r#""C""#),
            // the separators between elements
            DOC.replace(r#"{"id": "b"},"#, r#"{"id": "b"} ,"#),
            // truncated
            DOC[..DOC.len() - 3].to_owned(),
            String::new(),
        ] {
            // Other, or (an edit that starts inside an element's text) one element whose new
            // text is no single value: the caller parses it and falls back to the whole.
            match index().splice(new.clone().into_bytes()) {
                Splice::Other(b) => assert_eq!(b, new.as_bytes()),
                Splice::One { text, .. } => assert!(
                    serde_json::from_slice::<serde_json::Value>(&new.as_bytes()[text]).is_err(),
                    "{new}"
                ),
                Splice::Same => panic!("{new}"),
            }
        }
    }

    #[test]
    fn common_ends_are_found_across_blocks() {
        let a: Vec<u8> = (0..3 * BLOCK + 17).map(|i| (i % 251) as u8).collect();
        for at in [
            0,
            1,
            BLOCK - 1,
            BLOCK,
            BLOCK + 1,
            2 * BLOCK + 5,
            a.len() - 1,
        ] {
            let mut b = a.clone();
            b[at] ^= 0xff;
            assert_eq!(common_prefix(&a, &b), at);
            assert_eq!(common_suffix(&a, &b), a.len() - at - 1);
            let mut longer = a.clone();
            longer.insert(at, 7);
            let p = common_prefix(&a, &longer);
            let naive = a.iter().zip(&longer).take_while(|(x, y)| x == y).count();
            assert_eq!(p, naive);
            let naive = a
                .iter()
                .rev()
                .zip(longer.iter().rev())
                .take_while(|(x, y)| x == y)
                .count();
            assert_eq!(common_suffix(&a, &longer), naive);
        }
        assert_eq!(common_prefix(&a, &a), a.len());
        assert_eq!(common_suffix(&a, &a[5..]), a.len() - 5);
        assert_eq!(common_prefix(b"", &a), 0);
    }

    /// Every single-byte edit of the document either names an element whose new text,
    /// spliced in, rebuilds the new document, or asks for a whole parse.
    #[test]
    fn every_one_byte_edit_is_classified_soundly() {
        let ix = index();
        let bytes = DOC.as_bytes();
        let mut edits = Vec::new();
        for at in 0..=bytes.len() {
            for b in [b' ', b'x', b'"', b'}', b',', b'1'] {
                let mut v = bytes.to_vec();
                v.insert(at, b);
                edits.push(v);
                if at < bytes.len() {
                    let mut v = bytes.to_vec();
                    v[at] = b;
                    edits.push(v);
                }
            }
            if at < bytes.len() {
                let mut v = bytes.to_vec();
                v.remove(at);
                edits.push(v);
            }
        }
        for new in edits {
            match ix.splice(new.clone()) {
                Splice::Same => assert_eq!(new, bytes),
                Splice::Other(b) => assert_eq!(b, new),
                Splice::One { index, text, next } => {
                    let s = &ix.spans()[index];
                    let mut rebuilt = bytes[..s.start].to_vec();
                    rebuilt.extend_from_slice(&new[text.clone()]);
                    rebuilt.extend_from_slice(&bytes[s.end..]);
                    assert_eq!(rebuilt, new);
                    // Where the new text is one value, the whole document parses and its
                    // index is the one computed.
                    if serde_json::from_slice::<serde_json::Value>(&new[text]).is_ok() {
                        assert_eq!(Some(next), ArrayIndex::new(new, "routers"));
                    }
                }
            }
        }
    }
}
