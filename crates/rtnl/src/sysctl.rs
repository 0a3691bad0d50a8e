//! Sysctls of a network namespace, by typed key, written from a thread inside that namespace
//! (`/proc/sys/net` resolves against the writer's namespace), so nothing is ever written to
//! another namespace, and a failed write is an error, never a warning (Neutron B-23, B-24).

use std::io::Write;

use l3agent_types::IfName;

use crate::error::Error;
use crate::netns::Netns;

/// `all`, `default` or one device, for per-interface keys.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// `conf/all`
    All,
    /// `conf/default`
    Default,
    /// `conf/<device>`
    Dev(IfName),
}

impl Scope {
    fn part(&self) -> &str {
        match self {
            Scope::All => "all",
            Scope::Default => "default",
            Scope::Dev(d) => d.as_str(),
        }
    }
}

/// The sysctls the L3 dataplane sets.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Sysctl {
    /// `net.ipv4.ip_forward`
    IpForward,
    /// `net.ipv6.conf.<scope>.forwarding`
    Ipv6Forwarding(Scope),
    /// `net.ipv4.conf.<scope>.proxy_arp`
    ProxyArp(Scope),
    /// `net.ipv4.neigh.<dev>.proxy_delay`
    ProxyDelay(IfName),
    /// `net.ipv4.ip_nonlocal_bind`
    IpNonlocalBind,
    /// `net.ipv4.conf.<scope>.send_redirects`
    SendRedirects(Scope),
    /// `net.ipv6.conf.<scope>.accept_ra`
    AcceptRa(Scope),
    /// `net.ipv4.conf.<scope>.promote_secondaries`
    PromoteSecondaries(Scope),
    /// `net.ipv4.conf.<scope>.arp_ignore`
    ArpIgnore(Scope),
    /// `net.ipv4.conf.<scope>.arp_announce`
    ArpAnnounce(Scope),
    /// `net.ipv4.conf.<scope>.arp_accept` (learn from gratuitous ARP)
    ArpAccept(Scope),
    /// `net.ipv6.conf.<scope>.addr_gen_mode` (1: no link-local address from the kernel)
    AddrGenMode(Scope),
    /// `net.netfilter.nf_conntrack_tcp_be_liberal`
    ConntrackTcpBeLiberal,
    /// `net.netfilter.nf_conntrack_tcp_loose`
    ConntrackTcpLoose,
}

impl Sysctl {
    /// The path under `/proc/sys`.
    pub fn path(&self) -> String {
        match self {
            Sysctl::IpForward => "net/ipv4/ip_forward".into(),
            Sysctl::Ipv6Forwarding(s) => format!("net/ipv6/conf/{}/forwarding", s.part()),
            Sysctl::ProxyArp(s) => format!("net/ipv4/conf/{}/proxy_arp", s.part()),
            Sysctl::ProxyDelay(d) => format!("net/ipv4/neigh/{d}/proxy_delay"),
            Sysctl::IpNonlocalBind => "net/ipv4/ip_nonlocal_bind".into(),
            Sysctl::SendRedirects(s) => format!("net/ipv4/conf/{}/send_redirects", s.part()),
            Sysctl::AcceptRa(s) => format!("net/ipv6/conf/{}/accept_ra", s.part()),
            Sysctl::PromoteSecondaries(s) => {
                format!("net/ipv4/conf/{}/promote_secondaries", s.part())
            }
            Sysctl::ArpIgnore(s) => format!("net/ipv4/conf/{}/arp_ignore", s.part()),
            Sysctl::ArpAnnounce(s) => format!("net/ipv4/conf/{}/arp_announce", s.part()),
            Sysctl::ArpAccept(s) => format!("net/ipv4/conf/{}/arp_accept", s.part()),
            Sysctl::AddrGenMode(s) => format!("net/ipv6/conf/{}/addr_gen_mode", s.part()),
            Sysctl::ConntrackTcpBeLiberal => "net/netfilter/nf_conntrack_tcp_be_liberal".into(),
            Sysctl::ConntrackTcpLoose => "net/netfilter/nf_conntrack_tcp_loose".into(),
        }
    }

    /// The device a per-interface key is about (`None`: namespace-wide or `all`/`default`).
    pub fn device(&self) -> Option<&IfName> {
        match self {
            Sysctl::ProxyDelay(d) => Some(d),
            Sysctl::Ipv6Forwarding(s)
            | Sysctl::ProxyArp(s)
            | Sysctl::SendRedirects(s)
            | Sysctl::AcceptRa(s)
            | Sysctl::PromoteSecondaries(s)
            | Sysctl::ArpIgnore(s)
            | Sysctl::ArpAnnounce(s)
            | Sysctl::ArpAccept(s)
            | Sysctl::AddrGenMode(s) => match s {
                Scope::Dev(d) => Some(d),
                Scope::All | Scope::Default => None,
            },
            Sysctl::IpForward
            | Sysctl::IpNonlocalBind
            | Sysctl::ConntrackTcpBeLiberal
            | Sysctl::ConntrackTcpLoose => None,
        }
    }

    /// The dotted name, as `sysctl` prints it.
    pub fn name(&self) -> String {
        self.path().replace('/', ".")
    }
}

fn full(key: &Sysctl) -> String {
    format!("/proc/sys/{}", key.path())
}

/// Writes sysctls inside `netns` (one thread for the batch). The first failure stops the
/// batch and is returned with the key, value and namespace.
pub fn write(netns: &Netns, values: &[(Sysctl, u32)]) -> Result<(), Error> {
    let label = netns.label().to_owned();
    netns.run::<_, Error>(|| {
        for (key, value) in values {
            let what = format!("sysctl {}={value} in {label}", key.name());
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(full(key))
                .map_err(|source| Error::Io {
                    what: what.clone(),
                    source,
                })?;
            f.write_all(format!("{value}\n").as_bytes())
                .map_err(|source| Error::Io { what, source })?;
        }
        Ok(())
    })?
}

/// Reads one sysctl inside `netns`.
pub fn read(netns: &Netns, key: &Sysctl) -> Result<String, Error> {
    let label = netns.label().to_owned();
    netns.run::<_, Error>(|| {
        std::fs::read_to_string(full(key))
            .map(|s| s.trim().to_owned())
            .map_err(|source| Error::Io {
                what: format!("reading sysctl {} in {label}", key.name()),
                source,
            })
    })?
}

/// Sysctl writes as a side-effect family: implemented by [`Netns`] (from inside the
/// namespace); code generic over it takes a fake in tests.
pub trait Sysctls {
    /// See [`write`].
    fn write_sysctls(&self, values: &[(Sysctl, u32)]) -> Result<(), Error>;
    /// See [`read`].
    fn read_sysctl(&self, key: &Sysctl) -> Result<String, Error>;
}

impl Sysctls for Netns {
    fn write_sysctls(&self, values: &[(Sysctl, u32)]) -> Result<(), Error> {
        write(self, values)
    }

    fn read_sysctl(&self, key: &Sysctl) -> Result<String, Error> {
        read(self, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let dev = IfName::new("d", "fg-1a2b3c4d-5e").unwrap();
        assert_eq!(
            Sysctl::ProxyArp(Scope::Dev(dev.clone())).name(),
            "net.ipv4.conf.fg-1a2b3c4d-5e.proxy_arp"
        );
        assert_eq!(
            Sysctl::ProxyDelay(dev).path(),
            "net/ipv4/neigh/fg-1a2b3c4d-5e/proxy_delay"
        );
        assert_eq!(
            Sysctl::Ipv6Forwarding(Scope::All).name(),
            "net.ipv6.conf.all.forwarding"
        );
    }
}
