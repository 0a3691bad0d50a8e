//! The configuration files of the daemons l3agent runs per router, rendered byte for byte as
//! Neutron 29.0.0 renders them:
//!
//! | module | daemon | Neutron |
//! |---|---|---|
//! | [`radvd`] | radvd (IPv6 router advertisements) | `agent/linux/ra.py: DaemonMonitor._generate_radvd_conf` |
//! | [`haproxy`] | haproxy (metadata proxy) | `agent/metadata/driver_base.py: HaproxyConfiguratorBase._create_config` |
//! | [`keepalived`] | keepalived (VRRP for HA routers) and its health-check script | `agent/linux/keepalived.py: KeepalivedConf.get_config_str`, `KeepalivedTrackScript` |
//! | [`conntrackd`] | conntrackd (HA connection-tracking sync) | `agent/linux/conntrackd.py: ConntrackdManager.build_config` |
//!
//! The crate is pure: no I/O, no processes, no files. Writing a file (its mode, atomically or
//! not), resolving a uid to a user name, asking `keepalived --version` whether `no_track` is
//! supported, and starting or signalling the daemon are the supervisor's job; this crate only
//! turns typed values into text.
//!
//! Nothing that reaches a file can carry a directive of its own: interface names are
//! [`IfName`](l3agent_types::IfName)s, addresses are typed, and the few free strings are
//! [`ConfPath`], [`UnixName`] and [`keepalived::VrrpPassword`], whose constructors reject
//! whitespace, control characters, quotes and comment characters. Ranges (intervals, VRIDs)
//! are checked by each configuration's `validate()`, which names the Neutron option at fault.
//!
//! `tests/neutron_diff.rs` runs Neutron's own code (the venv of `scripts/testbed/venv.sh`) on
//! the same inputs and asserts that every rendering here is byte-identical to Neutron's.

use std::fmt;
use std::path::Path;

use l3agent_types::Echo;

pub mod conntrackd;
pub mod haproxy;
pub mod keepalived;
pub mod radvd;

/// A value that would reach a configuration file was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A value failed validation; `field` names the Neutron option or the struct field.
    #[error("{field}: invalid value {}: {reason}", Echo(value))]
    Invalid {
        /// Where the value came from.
        field: String,
        /// The value (never a secret).
        value: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A secret (the VRRP password) failed validation. Its value is not kept.
    #[error("{field}: invalid value (not shown: it is a secret): {reason}")]
    InvalidSecret {
        /// Where the value came from.
        field: String,
        /// Why it was rejected.
        reason: String,
    },
    /// `KeepalivedInstance.get_primary_vip` found no free `/24` in `169.254.0.0/16` outside
    /// `169.254.169.254/32`, `169.254.64.0/18` and the HA subnet (Neutron raises `ValueError`).
    #[error(
        "l3_ha_net_cidr: invalid value \"{ha_cidr}\": it leaves no free /24 in 169.254.0.0/16 \
         (outside 169.254.169.254/32 and 169.254.64.0/18) for the keepalived primary VIP"
    )]
    NoPrimaryVipRange {
        /// The HA network's subnet.
        ha_cidr: ipnet::Ipv4Net,
    },
}

pub(crate) fn invalid(field: &str, value: impl fmt::Display, reason: impl Into<String>) -> Error {
    Error::Invalid {
        field: field.to_owned(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// The characters a [`ConfPath`] component or a [`UnixName`] may hold: the POSIX portable
/// filename character set (`[A-Za-z0-9._-]`). None of them is whitespace, a quote, an escape,
/// a comment or variable sigil, or a brace in any of the four daemons' configuration syntax.
fn portable(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn first_bad(value: &str, allowed: impl Fn(char) -> bool) -> Option<char> {
    value.chars().find(|&c| !allowed(c))
}

/// An absolute path that is safe in any of the four configuration files (the haproxy pid
/// file and socket, the keepalived health-check script, the conntrackd lock and control
/// socket): `/`-separated components of the POSIX portable filename characters
/// (`[A-Za-z0-9._-]`), no empty, `.` or `..` component, no trailing `/`, at most
/// [`ConfPath::MAX_LEN`] bytes (a path this crate derives from one, such as
/// `<conf_dir>/conntrackd.ctl`, adds a constant file name to it).
///
/// Being normalised already, it equals Neutron's `os.path.abspath(os.path.normpath(p))`, so
/// paths derived from it (`<ha_confs>/<rid>/conntrackd.ctl`) match Neutron's.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConfPath(String);

impl ConfPath {
    /// `PATH_MAX` - 1.
    pub const MAX_LEN: usize = 4095;

    /// Validates a path; `field` names it in the error.
    pub fn new(field: &str, path: impl AsRef<Path>) -> Result<ConfPath, Error> {
        let path = path.as_ref();
        let Some(s) = path.to_str() else {
            return Err(invalid(field, path.to_string_lossy(), "is not valid UTF-8"));
        };
        if !s.starts_with('/') {
            return Err(invalid(field, s, "must be an absolute path"));
        }
        if s.len() > Self::MAX_LEN {
            return Err(invalid(
                field,
                s,
                format!("must be at most {} bytes", Self::MAX_LEN),
            ));
        }
        if let Some(c) = first_bad(s, |c| c == '/' || portable(c)) {
            return Err(invalid(
                field,
                s,
                format!(
                    "character {c:?} is not allowed (only A-Z a-z 0-9 . _ - and / can reach \
                     a daemon's configuration file)"
                ),
            ));
        }
        if s != "/" {
            for component in s[1..].split('/') {
                if matches!(component, "" | "." | "..") {
                    return Err(invalid(
                        field,
                        s,
                        "must be normalised (no empty, \".\" or \"..\" component, no trailing /)",
                    ));
                }
            }
        }
        Ok(ConfPath(s.to_owned()))
    }

    /// `self/name`, validated like [`ConfPath::new`]; `field` names it in the error.
    pub fn join(&self, field: &str, name: &str) -> Result<ConfPath, Error> {
        ConfPath::new(field, self.joined(name))
    }

    /// `self/name` as text, for names that are constants of this crate.
    pub(crate) fn joined(&self, name: &str) -> String {
        if self.0 == "/" {
            format!("/{name}")
        } else {
            format!("{}/{name}", self.0)
        }
    }

    /// The path.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path.
    pub fn as_path(&self) -> &Path {
        Path::new(&self.0)
    }
}

impl fmt::Display for ConfPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A user or group name as haproxy's `user`/`group` take it: 1..=32 POSIX portable filename
/// characters (`[A-Za-z0-9._-]`), not starting with `-`. Neutron resolves
/// `metadata_proxy_user`/`metadata_proxy_group` (a name or a numeric id; empty = the agent's
/// effective uid/gid) to a name with `pwd`/`grp` before rendering; that lookup is the caller's.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixName(String);

impl UnixName {
    /// The longest name accepted (the usual `LOGIN_NAME_MAX` of useradd).
    pub const MAX_LEN: usize = 32;

    /// Validates a user or group name; `field` names it in the error.
    pub fn new(field: &str, value: &str) -> Result<UnixName, Error> {
        if value.is_empty() || value.len() > Self::MAX_LEN {
            return Err(invalid(
                field,
                value,
                format!("must be 1 to {} characters", Self::MAX_LEN),
            ));
        }
        if let Some(c) = first_bad(value, portable) {
            return Err(invalid(
                field,
                value,
                format!("character {c:?} is not allowed (only A-Z a-z 0-9 . _ -)"),
            ));
        }
        if value.starts_with('-') {
            return Err(invalid(field, value, "must not start with '-'"));
        }
        Ok(UnixName(value.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UnixName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conf_path_is_absolute_normalised_and_portable() {
        for ok in [
            "/",
            "/var/lib/neutron/ha_confs",
            "/a/b.c/d_e-f",
            "/x/.hidden",
        ] {
            assert_eq!(ConfPath::new("p", ok).unwrap().as_str(), ok);
        }
        for (bad, reason) in [
            ("", "must be an absolute path"),
            ("var/lib", "must be an absolute path"),
            ("/a b", "character ' ' is not allowed"),
            ("/a\nglobal", "character '\\n' is not allowed"),
            ("/a\"b", "character '\"' is not allowed"),
            ("/a#b", "character '#' is not allowed"),
            ("/a/é", "character 'é' is not allowed"),
            ("/a//b", "must be normalised"),
            ("/a/../b", "must be normalised"),
            ("/a/./b", "must be normalised"),
            ("/a/", "must be normalised"),
        ] {
            let Err(Error::Invalid {
                field,
                value,
                reason: why,
            }) = ConfPath::new("pidfile", bad)
            else {
                panic!("{bad:?} was accepted");
            };
            assert_eq!(field, "pidfile");
            assert_eq!(value, bad);
            assert!(why.starts_with(reason), "{bad:?}: {why}");
        }
        let long = format!("/{}", "a".repeat(ConfPath::MAX_LEN));
        assert!(ConfPath::new("p", long).is_err());
    }

    #[test]
    fn a_conf_path_error_echoes_the_value_escaped() {
        let e = ConfPath::new("socket", "/a\nb").unwrap_err().to_string();
        assert!(e.starts_with("socket: invalid value \"/a\\nb\": "), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn joining_keeps_the_rules() {
        let dir = ConfPath::new("d", "/var/lib/neutron").unwrap();
        assert_eq!(
            dir.join("f", "ha_confs").unwrap().as_str(),
            "/var/lib/neutron/ha_confs"
        );
        assert!(dir.join("f", "..").is_err());
        assert!(dir.join("f", "a b").is_err());
        assert_eq!(
            ConfPath::new("d", "/")
                .unwrap()
                .join("f", "x")
                .unwrap()
                .as_str(),
            "/x"
        );
    }

    #[test]
    fn a_unix_name_is_a_portable_word() {
        for ok in ["neutron", "nobody", "_apt", "nogroup", "a.b-c", "1000"] {
            assert_eq!(UnixName::new("user", ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "-x",
            "a b",
            "a\nmaxconn 1",
            "a#",
            "a\"",
            "é",
            &"a".repeat(33),
        ] {
            let e = UnixName::new("metadata_proxy_user", bad).unwrap_err();
            assert!(
                e.to_string()
                    .starts_with("metadata_proxy_user: invalid value"),
                "{e}"
            );
        }
    }
}
