//! RFC 7047 §5.1 values in JSON: atoms (strings, integers, reals, booleans, `["uuid", U]`,
//! `["named-uuid", N]`), sets (`["set", [atoms]]`, or one atom alone) and maps
//! (`["map", [[key, value], ...]]`). Encoding for what we send, strict decoding for what the
//! server sends back: a value of the wrong shape is a [`OvsdbError::Protocol`] naming the column.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{json, Value};

use crate::OvsdbError;

/// A row's UUID as ovsdb-server writes it (`xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, lowercase).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Uuid(String);

impl Uuid {
    /// Checks the 8-4-4-4-12 hex shape.
    pub fn parse(s: &str) -> Option<Uuid> {
        let b = s.as_bytes();
        let shape_ok = b.len() == 36
            && b.iter().enumerate().all(|(i, c)| match i {
                8 | 13 | 18 | 23 => *c == b'-',
                _ => c.is_ascii_hexdigit(),
            });
        shape_ok.then(|| Uuid(s.to_ascii_lowercase()))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `["uuid", "..."]`.
    pub fn to_json(&self) -> Value {
        json!(["uuid", self.0])
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `["named-uuid", name]`: a row inserted earlier in the same transaction.
pub fn named_uuid(name: &str) -> Value {
    json!(["named-uuid", name])
}

/// `["set", [...]]`.
pub fn set(atoms: impl IntoIterator<Item = Value>) -> Value {
    json!(["set", atoms.into_iter().collect::<Vec<_>>()])
}

/// The empty set: how an optional column (`min: 0, max: 1`) is cleared.
pub fn empty() -> Value {
    set([])
}

/// `["map", [[k, v], ...]]` of strings.
pub fn string_map<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Value {
    json!([
        "map",
        pairs
            .into_iter()
            .map(|(k, v)| json!([k, v]))
            .collect::<Vec<_>>()
    ])
}

/// An optional integer column: the integer, or the empty set.
pub fn optional_integer(v: Option<i64>) -> Value {
    match v {
        Some(i) => json!(i),
        None => empty(),
    }
}

fn bad(column: &str, v: &Value, want: &str) -> OvsdbError {
    let mut text = v.to_string();
    if text.len() > 120 {
        let mut cut = 120;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    OvsdbError::Protocol(format!(
        "column {column}: expected {want}, got {}",
        l3agent_types::clean_message(&text, 160)
    ))
}

/// The members of a set column (a lone atom is a set of one).
pub fn decode_set<'v>(column: &str, v: &'v Value) -> Result<Vec<&'v Value>, OvsdbError> {
    match v {
        Value::Array(a) if a.first().and_then(Value::as_str) == Some("set") => match a.get(1) {
            Some(Value::Array(members)) if a.len() == 2 => Ok(members.iter().collect()),
            _ => Err(bad(column, v, "[\"set\", [...]]")),
        },
        other => Ok(vec![other]),
    }
}

/// A `["uuid", U]` atom.
pub fn decode_uuid(column: &str, v: &Value) -> Result<Uuid, OvsdbError> {
    match v.as_array().map(Vec::as_slice) {
        Some([Value::String(tag), Value::String(u)]) if tag == "uuid" => {
            Uuid::parse(u).ok_or_else(|| bad(column, v, "a UUID"))
        }
        _ => Err(bad(column, v, "[\"uuid\", ...]")),
    }
}

/// A set of UUIDs (a reference column such as `Bridge.ports`).
pub fn decode_uuid_set(column: &str, v: &Value) -> Result<Vec<Uuid>, OvsdbError> {
    decode_set(column, v)?
        .into_iter()
        .map(|a| decode_uuid(column, a))
        .collect()
}

/// A string atom.
pub fn decode_string(column: &str, v: &Value) -> Result<String, OvsdbError> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| bad(column, v, "a string"))
}

/// An optional integer (`min: 0, max: 1`): the integer or the empty set.
pub fn decode_optional_integer(column: &str, v: &Value) -> Result<Option<i64>, OvsdbError> {
    match decode_set(column, v)?.as_slice() {
        [] => Ok(None),
        [one] => one
            .as_i64()
            .map(Some)
            .ok_or_else(|| bad(column, v, "an integer")),
        _ => Err(bad(column, v, "at most one integer")),
    }
}

/// An optional string (`min: 0, max: 1`).
pub fn decode_optional_string(column: &str, v: &Value) -> Result<Option<String>, OvsdbError> {
    match decode_set(column, v)?.as_slice() {
        [] => Ok(None),
        [one] => decode_string(column, one).map(Some),
        _ => Err(bad(column, v, "at most one string")),
    }
}

/// A string-to-string map.
pub fn decode_string_map(column: &str, v: &Value) -> Result<BTreeMap<String, String>, OvsdbError> {
    let pairs = match v.as_array().map(Vec::as_slice) {
        Some([Value::String(tag), Value::Array(pairs)]) if tag == "map" => pairs,
        _ => return Err(bad(column, v, "[\"map\", [...]]")),
    };
    let mut out = BTreeMap::new();
    for p in pairs {
        match p.as_array().map(Vec::as_slice) {
            Some([Value::String(k), Value::String(val)]) => {
                out.insert(k.clone(), val.clone());
            }
            _ => return Err(bad(column, p, "a [key, value] pair of strings")),
        }
    }
    Ok(out)
}

/// A column of a row from a `select`; missing is a protocol error naming it.
pub fn column<'r>(row: &'r Value, name: &str) -> Result<&'r Value, OvsdbError> {
    row.get(name)
        .ok_or_else(|| OvsdbError::Protocol(format!("row without column {name}: {row}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: &str = "36f3b4b4-5c5e-4b0e-9d4c-2f8b1c7e9a01";

    #[test]
    fn atoms_sets_and_maps_encode_as_rfc_7047_says() {
        let u = Uuid::parse(U).unwrap();
        assert_eq!(u.to_json(), json!(["uuid", U]));
        assert_eq!(named_uuid("port0"), json!(["named-uuid", "port0"]));
        assert_eq!(set([u.to_json()]), json!(["set", [["uuid", U]]]));
        assert_eq!(empty(), json!(["set", []]));
        assert_eq!(
            string_map([("iface-id", "p1"), ("iface-status", "active")]),
            json!(["map", [["iface-id", "p1"], ["iface-status", "active"]]])
        );
        assert_eq!(optional_integer(Some(1450)), json!(1450));
        assert_eq!(optional_integer(None), json!(["set", []]));
    }

    #[test]
    fn a_lone_atom_is_a_set_of_one_and_the_empty_set_is_none() {
        // `ovsdb-client transact` answers: "tag": 4095 or "tag": ["set", []].
        assert_eq!(
            decode_optional_integer("tag", &json!(4095)).unwrap(),
            Some(4095)
        );
        assert_eq!(
            decode_optional_integer("tag", &json!(["set", []])).unwrap(),
            None
        );
        assert_eq!(
            decode_uuid_set("ports", &json!(["uuid", U])).unwrap(),
            vec![Uuid::parse(U).unwrap()]
        );
        assert_eq!(
            decode_uuid_set("ports", &json!(["set", [["uuid", U], ["uuid", U]]]))
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            decode_optional_string("error", &json!("could not open network device"))
                .unwrap()
                .as_deref(),
            Some("could not open network device")
        );
    }

    #[test]
    fn maps_decode_into_sorted_pairs() {
        let m = decode_string_map(
            "external_ids",
            &json!([
                "map",
                [
                    ["iface-status", "active"],
                    ["attached-mac", "fa:16:3e:00:00:01"]
                ]
            ]),
        )
        .unwrap();
        assert_eq!(
            m.into_iter().collect::<Vec<_>>(),
            vec![
                ("attached-mac".into(), "fa:16:3e:00:00:01".into()),
                ("iface-status".into(), "active".into())
            ]
        );
        assert!(decode_string_map("external_ids", &json!(["map", []]))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_value_of_the_wrong_shape_is_an_error_naming_the_column() {
        for (col, v) in [
            ("ports", json!(["set", "x"])),
            ("ports", json!(["uuid", "not-a-uuid"])),
            ("ports", json!("a string")),
        ] {
            let e = decode_uuid_set(col, &v).unwrap_err().to_string();
            assert!(e.contains("column ports"), "{e}");
        }
        let e = decode_string_map("external_ids", &json!(["map", [["k", 1]]]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("external_ids") && e.contains("pair of strings"),
            "{e}"
        );
        let e = decode_optional_integer("mtu_request", &json!(["set", [1, 2]]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("mtu_request"), "{e}");
        let e = column(&json!({"name": "x"}), "ports")
            .unwrap_err()
            .to_string();
        assert!(e.contains("without column ports"), "{e}");
    }

    #[test]
    fn a_huge_or_hostile_value_is_cut_and_cleaned_in_the_error() {
        let v = json!(format!("{}\u{202e}", "x".repeat(10_000)));
        let e = decode_uuid("ports", &v).unwrap_err().to_string();
        assert!(e.len() < 400, "{}", e.len());
        let v = json!("a\u{202e}b");
        let e = decode_uuid("ports", &v).unwrap_err().to_string();
        assert!(!e.contains('\u{202e}'), "{e}");
    }

    #[test]
    fn uuids_are_checked_and_lowercased() {
        assert_eq!(Uuid::parse(&U.to_uppercase()).unwrap().as_str(), U);
        for bad in ["", "x", &U[1..], &format!("{U}0"), &U.replace('-', "_")] {
            assert!(Uuid::parse(bad).is_none(), "{bad}");
        }
    }
}
