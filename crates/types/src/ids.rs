//! Neutron object ids. Neutron's ids are UUIDs, and ours end up in device names (`qr-` +
//! `id[:11]`), namespace names (`qrouter-<id>`), state file paths and log lines, so an id is
//! held to the strictest rule any of those need: 1..=36 ASCII characters of `[0-9A-Za-z-]`,
//! starting with a letter or digit (never a leading `-` that a tool could read as an option).
//! Every UUID passes; no whitespace, separator, control, format or non-ASCII character does.

use std::fmt;
use std::str::FromStr;

use crate::{charset, invalid, InvalidName};

/// The longest id: a UUID in its hyphenated form.
const MAX_LEN: usize = 36;

/// The shared rule behind every id type's `new`.
fn check_id(field: &str, value: &str) -> Result<(), InvalidName> {
    if value.is_empty() {
        return Err(invalid(
            field,
            value,
            format!("must be 1 to {MAX_LEN} characters"),
        ));
    }
    // The character check runs before the length check so that a non-ASCII value is reported
    // for the character it carries, and so that after it bytes and characters are the same.
    charset(field, value, &['-'])?;
    if value.len() > MAX_LEN {
        return Err(invalid(
            field,
            value,
            format!("must be 1 to {MAX_LEN} characters"),
        ));
    }
    if !value.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(invalid(field, value, "must start with a letter or digit"));
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[doc = $doc:literal])* $name:ident) => {
        $(#[doc = $doc])*
        ///
        /// 1..=36 ASCII characters of `[0-9A-Za-z-]`, starting with a letter or digit; see the
        /// module documentation for why.
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Validates an id; `field` names where it came from (a config path) in the error.
            pub fn new(field: &str, value: &str) -> Result<Self, InvalidName> {
                check_id(field, value)?;
                Ok(Self(value.to_owned()))
            }

            /// The id.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The first `n` characters, or the whole id if it is shorter: device names take a
            /// prefix plus `id[:11]`, the `rfp-`/`fpr-` pair takes `id[:10]`.
            pub fn prefix(&self, n: usize) -> &str {
                // ASCII only, so any byte index is a character boundary.
                &self.0[..n.min(self.0.len())]
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = InvalidName;

            /// Parses with field name `id`.
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new("id", s)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(
                    deserializer,
                )?;
                Self::new("id", &s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type! {
    /// A Neutron router's id: names the `qrouter-`/`snat-` namespaces and the `rfp-`/`fpr-`
    /// veth pair.
    RouterId
}

id_type! {
    /// A Neutron port's id: names the port's device (`qr-`, `qg-`, `sg-`, `fg-` + `id[:11]`).
    PortId
}

id_type! {
    /// A Neutron network's id: names the `fip-` namespace of an external network.
    NetworkId
}

id_type! {
    /// A Neutron subnet's id.
    SubnetId
}

id_type! {
    /// A Neutron floating IP's id.
    FloatingIpId
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "87c7c2ae-d0ba-4691-820c-8053abf50b8d";

    #[test]
    fn accepts_uuids_and_short_ids() {
        for ok in [
            UUID,
            "87C7C2AE-D0BA-4691-820C-8053ABF50B8D",
            "r1",
            "1",
            "a-",
            "0123456789abcdef0123456789abcdef",
        ] {
            let id = RouterId::new("routers[0].id", ok).unwrap();
            assert_eq!(id.as_str(), ok);
            assert_eq!(id.to_string(), ok);
            assert_eq!(ok.parse::<PortId>().unwrap().as_str(), ok);
        }
        assert!(NetworkId::new("n", UUID).is_ok());
        assert!(SubnetId::new("s", UUID).is_ok());
        assert!(FloatingIpId::new("f", UUID).is_ok());
    }

    #[test]
    fn rejects_with_a_reason() {
        let long = "a".repeat(37);
        for (bad, reason) in [
            ("", "must be 1 to 36 characters"),
            ("-rf", "must start with a letter or digit"),
            ("-", "must start with a letter or digit"),
            (long.as_str(), "must be 1 to 36 characters"),
            ("a b", "character ' ' is not allowed"),
            ("a/b", "character '/' is not allowed"),
            ("a.b", "character '.' is not allowed"),
            ("a_b", "character '_' is not allowed"),
            ("a\n", "character '\\n' is not allowed"),
            ("a\u{202e}b", "character '\\u{202e}' is not allowed"),
            ("a\u{200b}b", "character '\\u{200b}' is not allowed"),
            ("é", "character 'é' is not allowed"),
            ("\0", "character '\\0' is not allowed"),
        ] {
            let e = RouterId::new("routers[0].id", bad).unwrap_err();
            assert_eq!(e.field, "routers[0].id", "{bad:?}");
            assert_eq!(e.value, bad, "{bad:?}");
            assert_eq!(e.reason, reason, "{bad:?}");
            let text = e.to_string();
            assert!(!text.contains('\n'), "{text}");
            assert!(!text.contains('\u{202e}'), "{text}");
            assert!(!text.contains('\u{200b}'), "{text}");
        }
    }

    #[test]
    fn error_text_names_field_and_escaped_value() {
        let e = PortId::new("routers[2].ports[1].id", "a\nb")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "routers[2].ports[1].id: invalid value \"a\\nb\": character '\\n' is not allowed"
        );
        let e = "x\u{202e}".parse::<RouterId>().unwrap_err().to_string();
        assert_eq!(
            e,
            "id: invalid value \"x\\u{202e}\": character '\\u{202e}' is not allowed"
        );
    }

    #[test]
    fn prefix() {
        let id = RouterId::new("id", UUID).unwrap();
        assert_eq!(id.prefix(11), "87c7c2ae-d0");
        assert_eq!(id.prefix(10), "87c7c2ae-d");
        assert_eq!(id.prefix(0), "");
        assert_eq!(id.prefix(36), UUID);
        assert_eq!(id.prefix(100), UUID);
        assert_eq!(RouterId::new("id", "r1").unwrap().prefix(11), "r1");
    }

    #[test]
    fn serde_roundtrip() {
        let id = RouterId::new("id", UUID).unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{UUID}\""));
        assert_eq!(serde_json::from_str::<RouterId>(&json).unwrap(), id);
        // An escaped string in the input (owned, not borrowed) goes through `new` too.
        assert_eq!(
            serde_json::from_str::<RouterId>("\"r\\u0031\"")
                .unwrap()
                .as_str(),
            "r1"
        );
        let ids: Vec<PortId> = serde_json::from_str("[\"p1\", \"p2\"]").unwrap();
        assert_eq!(ids[1].as_str(), "p2");
    }

    #[test]
    fn serde_error_is_the_invalid_name_text() {
        let e = serde_json::from_str::<RouterId>("\"-rf\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("id: invalid value \"-rf\": must start with a letter or digit"),
            "{e}"
        );
        let e = serde_json::from_str::<SubnetId>("\"a\\u202eb\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "id: invalid value \"a\\u{202e}b\": character '\\u{202e}' is not allowed"
            ),
            "{e}"
        );
        assert!(!e.contains('\u{202e}'), "{e}");
        assert!(serde_json::from_str::<RouterId>("42").is_err());
    }
}
