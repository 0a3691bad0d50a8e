//! Names shared by l3agent's crates. Each constructor rejects what could escape its place: a
//! namespace name can never leave `/run/netns`, an interface name always fits the kernel's 15
//! bytes and carries no separator the kernel or a tool would split on, a Neutron id is safe in a
//! device name, a path and a log line, a MAC address is six octets and nothing else.

use std::fmt;

mod echo;
mod ids;
mod mac;

pub use echo::{clean_message, is_hidden, Echo};

pub use ids::{FloatingIpId, NetworkId, PortId, RouterId, SubnetId};
pub use mac::MacAddr;

/// A name that failed validation: which field, what value, why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: invalid value {}: {reason}", Echo(value))]
pub struct InvalidName {
    /// Where the value came from.
    pub field: String,
    /// The value.
    pub value: String,
    /// Why it was rejected.
    pub reason: String,
}

fn invalid(field: &str, value: &str, reason: impl Into<String>) -> InvalidName {
    InvalidName {
        field: field.to_owned(),
        value: value.to_owned(),
        reason: reason.into(),
    }
}

fn charset(field: &str, value: &str, extra: &[char]) -> Result<(), InvalidName> {
    match value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || extra.contains(c)))
    {
        Some(c) => Err(invalid(
            field,
            value,
            format!("character {c:?} is not allowed"),
        )),
        None => Ok(()),
    }
}

/// The name of a network namespace in `/run/netns`, as `ip netns add` takes it: 1..=64
/// characters of `[A-Za-z0-9_.-]`, not `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NetnsName(String);

impl NetnsName {
    /// Validates a namespace name; `field` names it in the error.
    pub fn new(field: &str, value: &str) -> Result<Self, InvalidName> {
        if value.is_empty() || value.len() > 64 {
            return Err(invalid(field, value, "must be 1 to 64 characters"));
        }
        charset(field, value, &['_', '-', '.'])?;
        if value == "." || value == ".." {
            return Err(invalid(field, value, "is not a namespace name"));
        }
        Ok(NetnsName(value.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Read back through the constructor: a recorded name is validated like input.
impl<'de> serde::Deserialize<'de> for NetnsName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        NetnsName::new("namespace", &s).map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for NetnsName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl fmt::Display for NetnsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A network interface name: 1..=15 bytes (`IFNAMSIZ` - 1) of `[A-Za-z0-9_.-]`, not `.`/`..`,
/// so it is also safe as a `/proc/sys/net/.../conf/<name>` path component.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IfName(String);

impl IfName {
    /// The kernel's limit.
    pub const MAX_LEN: usize = 15;

    /// Validates an interface name; `field` names it in the error.
    pub fn new(field: &str, value: &str) -> Result<Self, InvalidName> {
        if value.is_empty() || value.len() > Self::MAX_LEN {
            return Err(invalid(
                field,
                value,
                format!("must be 1 to {} characters", Self::MAX_LEN),
            ));
        }
        charset(field, value, &['_', '-', '.'])?;
        if value == "." || value == ".." {
            return Err(invalid(field, value, "is not an interface name"));
        }
        Ok(IfName(value.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Read back through the constructor: a recorded name is validated like input.
impl<'de> serde::Deserialize<'de> for IfName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        IfName::new("device", &s).map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for IfName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(NetnsName::new("n", "qrouter-1a2b").is_ok());
        for bad in ["", "..", ".", "a/b", "a b", "a\nb"] {
            assert!(NetnsName::new("n", bad).is_err(), "{bad}");
        }
        assert!(IfName::new("i", "qr-1a2b3c4d-5e").is_ok());
        let e = IfName::new("ports[0].name", "qr-1a2b3c4d-5e6f")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("ports[0].name: invalid value \"qr-1a2b3c4d-5e6f\""),
            "{e}"
        );
        for bad in ["", "a/b", "a b", "..", "a:b"] {
            assert!(IfName::new("i", bad).is_err(), "{bad}");
        }
    }
}
