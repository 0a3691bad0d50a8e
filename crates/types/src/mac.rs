//! An Ethernet MAC address, parsed only from the `aa:bb:cc:dd:ee:ff` form Neutron writes (as
//! `ip link set dev <dev> address <mac>` takes it), like Firecracker's `MacAddr`.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use crate::{invalid, InvalidName};

/// A 48-bit MAC address. Displays (and debug-prints) as lowercase `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr([u8; 6]);

/// The textual length of `aa:bb:cc:dd:ee:ff`.
const TEXT_LEN: usize = 17;

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

impl MacAddr {
    /// The address with these octets, most significant first.
    pub const fn new(octets: [u8; 6]) -> Self {
        MacAddr(octets)
    }

    /// Parses `aa:bb:cc:dd:ee:ff`: exactly six colon-separated pairs of hex digits, either case.
    /// Nothing else (no `-` separators, no single digits, no whitespace); `field` names where it
    /// came from in the error.
    pub fn parse(field: &str, value: &str) -> Result<Self, InvalidName> {
        let shape = || {
            invalid(
                field,
                value,
                "must be six colon-separated pairs of hex digits, like aa:bb:cc:dd:ee:ff",
            )
        };
        let bytes = value.as_bytes();
        if bytes.len() != TEXT_LEN {
            return Err(shape());
        }
        let mut octets = [0u8; 6];
        for (i, octet) in octets.iter_mut().enumerate() {
            let at = i * 3;
            if i > 0 && bytes[at - 1] != b':' {
                return Err(shape());
            }
            let hi = hex_digit(bytes[at]).ok_or_else(shape)?;
            let lo = hex_digit(bytes[at + 1]).ok_or_else(shape)?;
            *octet = hi << 4 | lo;
        }
        Ok(MacAddr(octets))
    }

    /// Like [`MacAddr::parse`], and also refuses what a router port cannot own: a multicast or
    /// broadcast address, and the all-zero address.
    pub fn parse_unicast(field: &str, value: &str) -> Result<Self, InvalidName> {
        let mac = Self::parse(field, value)?;
        if mac.0 == [0xff; 6] {
            return Err(invalid(
                field,
                value,
                "is the broadcast address; a port needs a unicast address",
            ));
        }
        if !mac.is_unicast() {
            return Err(invalid(
                field,
                value,
                "is a multicast address (the low bit of the first octet is set); a port needs a unicast address",
            ));
        }
        if mac.is_zero() {
            return Err(invalid(
                field,
                value,
                "is the all-zero address; a port needs a non-zero address",
            ));
        }
        Ok(mac)
    }

    /// The six octets, most significant first.
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// Whether the I/G bit (the low bit of the first octet) is clear, i.e. the address names one
    /// interface rather than a multicast group or the broadcast address.
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 0x01 == 0
    }

    /// Whether this is `00:00:00:00:00:00`.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }

    /// The IPv6 link-local address made from this MAC by modified EUI-64 (RFC 4291 appendix A):
    /// `fe80::` + the MAC with `ff:fe` inserted in the middle and the U/L bit flipped, as the
    /// kernel derives it for an Ethernet device (`addr_gen_mode eui64`). Neutron's router
    /// advertisements and IPv6 gateways rely on this address.
    pub fn ipv6_link_local(&self) -> Ipv6Addr {
        let m = self.0;
        Ipv6Addr::from([
            0xfe,
            0x80,
            0,
            0,
            0,
            0,
            0,
            0,
            m[0] ^ 0x02,
            m[1],
            m[2],
            0xff,
            0xfe,
            m[3],
            m[4],
            m[5],
        ])
    }
}

impl From<[u8; 6]> for MacAddr {
    fn from(octets: [u8; 6]) -> Self {
        MacAddr(octets)
    }
}

impl From<MacAddr> for [u8; 6] {
    fn from(mac: MacAddr) -> Self {
        mac.0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = InvalidName;

    /// Parses with field name `mac_address`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse("mac_address", s)
    }
}

impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(deserializer)?;
        Self::parse("mac_address", &s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_display_roundtrip() {
        for text in [
            "fa:16:3e:00:00:01",
            "00:00:00:00:00:00",
            "ff:ff:ff:ff:ff:ff",
            "01:23:45:67:89:ab",
        ] {
            let mac = MacAddr::parse("ports[0].mac_address", text).unwrap();
            assert_eq!(mac.to_string(), text);
            assert_eq!(format!("{mac:?}"), text);
            assert_eq!(text.parse::<MacAddr>().unwrap(), mac);
        }
        let mac = MacAddr::parse("m", "01:23:45:67:89:ab").unwrap();
        assert_eq!(mac.octets(), [0x01, 0x23, 0x45, 0x67, 0x89, 0xab]);
        assert_eq!(MacAddr::from(mac.octets()), mac);
        assert_eq!(<[u8; 6]>::from(mac), mac.octets());
        assert_eq!(MacAddr::new(mac.octets()), mac);
    }

    #[test]
    fn upper_case_input_displays_lower() {
        let mac = MacAddr::parse("m", "FA:16:3E:AB:cD:Ef").unwrap();
        assert_eq!(mac.octets(), [0xfa, 0x16, 0x3e, 0xab, 0xcd, 0xef]);
        assert_eq!(mac.to_string(), "fa:16:3e:ab:cd:ef");
    }

    #[test]
    fn rejects_other_shapes() {
        for bad in [
            "",
            "aa:bb",
            "aa-bb-cc-dd-ee-ff",
            "aa:bb:cc:dd:ee:fg",
            "aaa:bb:cc:dd:ee:f",
            "aa:bb:cc:dd:ee:ff:",
            "aa:bb:cc:dd:ee:ff:00",
            " aa:bb:cc:dd:ee:f",
            "aa:bb:cc:dd:ee:f ",
            "+a:bb:cc:dd:ee:ff",
            "aabb.ccdd.eeff",
            "aabbccddeeff",
            "aa:bb:cc:dd:ee:f\n",
            "aa:bb:cc:dd:e\u{e9}f",
        ] {
            let e = MacAddr::parse("ports[0].mac_address", bad).unwrap_err();
            assert_eq!(e.field, "ports[0].mac_address");
            assert_eq!(e.value, bad);
            assert_eq!(
                e.reason, "must be six colon-separated pairs of hex digits, like aa:bb:cc:dd:ee:ff",
                "{bad:?}"
            );
            assert!(!e.to_string().contains('\n'), "{e}");
        }
    }

    #[test]
    fn unicast_and_zero() {
        let port = MacAddr::new([0xfa, 0x16, 0x3e, 0, 0, 1]);
        assert!(port.is_unicast());
        assert!(!port.is_zero());
        let zero = MacAddr::new([0; 6]);
        assert!(zero.is_unicast());
        assert!(zero.is_zero());
        assert!(!MacAddr::new([0xff; 6]).is_unicast());
        assert!(!MacAddr::new([0x01, 0x00, 0x5e, 0, 0, 1]).is_unicast());
        assert!(!MacAddr::new([0x33, 0x33, 0, 0, 0, 1]).is_unicast());
        // The U/L bit is not the I/G bit.
        assert!(MacAddr::new([0x02, 0, 0, 0, 0, 1]).is_unicast());
    }

    #[test]
    fn parse_unicast() {
        assert_eq!(
            MacAddr::parse_unicast("m", "fa:16:3e:00:00:01").unwrap(),
            MacAddr::new([0xfa, 0x16, 0x3e, 0, 0, 1])
        );
        for (bad, reason) in [
            ("ff:ff:ff:ff:ff:ff", "is the broadcast address"),
            ("01:00:5e:00:00:01", "is a multicast address"),
            ("33:33:00:00:00:01", "is a multicast address"),
            ("00:00:00:00:00:00", "is the all-zero address"),
            ("aa-bb-cc-dd-ee-ff", "must be six colon-separated"),
        ] {
            let e = MacAddr::parse_unicast("routers[0].gw_port.mac_address", bad).unwrap_err();
            assert!(e.reason.starts_with(reason), "{bad}: {}", e.reason);
            assert!(
                e.to_string().starts_with(&format!(
                    "routers[0].gw_port.mac_address: invalid value \"{bad}\": "
                )),
                "{e}"
            );
        }
    }

    #[test]
    fn eui64_link_local() {
        let mac = MacAddr::parse("m", "fa:16:3e:00:00:01").unwrap();
        assert_eq!(
            mac.ipv6_link_local(),
            "fe80::f816:3eff:fe00:1".parse::<Ipv6Addr>().unwrap()
        );
        // The U/L bit is flipped, not cleared: a locally administered bit that is clear becomes set.
        let mac = MacAddr::parse("m", "00:11:22:33:44:55").unwrap();
        assert_eq!(
            mac.ipv6_link_local(),
            "fe80::211:22ff:fe33:4455".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn serde() {
        let mac = MacAddr::new([0xfa, 0x16, 0x3e, 0xab, 0xcd, 0xef]);
        let json = serde_json::to_string(&mac).unwrap();
        assert_eq!(json, "\"fa:16:3e:ab:cd:ef\"");
        assert_eq!(serde_json::from_str::<MacAddr>(&json).unwrap(), mac);
        assert_eq!(
            serde_json::from_str::<MacAddr>("\"FA:16:3E:AB:CD:EF\"").unwrap(),
            mac
        );
        let e = serde_json::from_str::<MacAddr>("\"aa-bb-cc-dd-ee-ff\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "mac_address: invalid value \"aa-bb-cc-dd-ee-ff\": must be six colon-separated"
            ),
            "{e}"
        );
        assert!(serde_json::from_str::<MacAddr>("[250, 22, 62, 0, 0, 1]").is_err());
    }
}
