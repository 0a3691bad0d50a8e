//! iptables backends (nf_tables and legacy), their programs, and auto-detection in the way
//! kubernetes-sigs/iptables-wrappers does it: look at what each backend holds in the target
//! namespace. A namespace where both hold rules is refused: mixed rule sets both apply to
//! packets and have black-holed traffic in every project that allowed them.

use std::fmt;

use l3agent_iptables::Family;

use crate::error::ExecError;

/// The iptables backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// `iptables-nft`: rules in nf_tables.
    Nft,
    /// `iptables-legacy`: x_tables.
    Legacy,
}

/// The backend to use: detected, or forced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// Whatever the namespace already uses; if nothing, the system default (`iptables -V`).
    #[default]
    Auto,
    /// Always this one (still refused if the other holds rules).
    Fixed(Backend),
}

impl Backend {
    fn tag(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        }
    }

    /// The other backend.
    pub fn other(self) -> Backend {
        match self {
            Backend::Nft => Backend::Legacy,
            Backend::Legacy => Backend::Nft,
        }
    }

    /// Program name for `tool` (`save`, `restore` or the plain command ``).
    pub fn program(self, family: Family, tool: &str) -> String {
        let base = if family == Family::V4 {
            "iptables"
        } else {
            "ip6tables"
        };
        if tool.is_empty() {
            format!("{base}-{}", self.tag())
        } else {
            format!("{base}-{}-{tool}", self.tag())
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.tag())
    }
}

impl std::str::FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "nft" => Ok(BackendChoice::Fixed(Backend::Nft)),
            "legacy" => Ok(BackendChoice::Fixed(Backend::Legacy)),
            other => Err(format!(
                "backend must be auto, nft or legacy, not {other:?}"
            )),
        }
    }
}

/// Whether an `iptables-save` output holds anything: a rule, a user chain or a non-ACCEPT
/// policy.
pub fn holds_rules(save: &str) -> bool {
    save.lines().any(|l| {
        l.starts_with("-A ")
            || (l.starts_with(':') && {
                let mut parts = l[1..].split(' ');
                let _name = parts.next();
                !matches!(parts.next(), Some("ACCEPT"))
            })
    })
}

/// Decides the backend from what each holds (`holds[backend]` over both families) and the
/// system default.
pub fn decide(
    choice: BackendChoice,
    nft_holds: bool,
    legacy_holds: bool,
    system: Backend,
    label: &str,
) -> Result<Backend, ExecError> {
    if nft_holds && legacy_holds {
        return Err(ExecError::Backend(format!(
            "network namespace {label} holds rules of both iptables backends (nft and legacy); refusing to add to the mix: remove one set first"
        )));
    }
    let holding = if nft_holds {
        Some(Backend::Nft)
    } else if legacy_holds {
        Some(Backend::Legacy)
    } else {
        None
    };
    match (choice, holding) {
        (BackendChoice::Auto, Some(b)) => Ok(b),
        (BackendChoice::Auto, None) => Ok(system),
        (BackendChoice::Fixed(b), Some(h)) if h != b => Err(ExecError::Backend(format!(
            "network namespace {label} holds {h} rules; refusing to add {b} rules beside them (use --backend {h} or auto)"
        ))),
        (BackendChoice::Fixed(b), _) => Ok(b),
    }
}

/// Parses `iptables v1.8.9 (nf_tables)` into the version and backend.
pub fn parse_version(text: &str) -> Option<((u32, u32, u32), Backend)> {
    let v = text.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
    let mut nums = v.split('.').map(|n| n.parse::<u32>().ok());
    let version = (
        nums.next()??,
        nums.next()??,
        nums.next().flatten().unwrap_or(0),
    );
    let backend = if text.contains("nf_tables") {
        Backend::Nft
    } else {
        Backend::Legacy
    };
    Some((version, backend))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_rules() {
        assert!(!holds_rules("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n"));
        assert!(holds_rules("*filter\n:INPUT DROP [0:0]\nCOMMIT\n"));
        assert!(holds_rules("*filter\n:x - [0:0]\nCOMMIT\n"));
        assert!(holds_rules("*nat\n-A PREROUTING -j ACCEPT\nCOMMIT\n"));
        assert_eq!(
            decide(BackendChoice::Auto, false, false, Backend::Nft, "x").unwrap(),
            Backend::Nft
        );
        assert_eq!(
            decide(BackendChoice::Auto, false, true, Backend::Nft, "x").unwrap(),
            Backend::Legacy
        );
        assert!(decide(BackendChoice::Auto, true, true, Backend::Nft, "x").is_err());
        assert!(decide(
            BackendChoice::Fixed(Backend::Nft),
            false,
            true,
            Backend::Nft,
            "x"
        )
        .is_err());
        assert_eq!(
            decide(
                BackendChoice::Fixed(Backend::Legacy),
                false,
                false,
                Backend::Nft,
                "x"
            )
            .unwrap(),
            Backend::Legacy
        );
    }

    #[test]
    fn versions() {
        assert_eq!(
            parse_version("iptables v1.8.9 (nf_tables)"),
            Some(((1, 8, 9), Backend::Nft))
        );
        assert_eq!(
            parse_version("iptables v1.6.0 (legacy)\n"),
            Some(((1, 6, 0), Backend::Legacy))
        );
        assert_eq!(parse_version("garbage"), None);
        assert_eq!(
            Backend::Legacy.program(Family::V6, "restore"),
            "ip6tables-legacy-restore"
        );
    }
}
