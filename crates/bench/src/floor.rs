//! The floors' kernel side: a namespace of their own with a gateway-like device and the three
//! nat chains a floating IP's rules go in (or every rule of a router's namespace), where one
//! `iptables-restore --noflush` and one address change over rtnetlink are the least any agent
//! must do for a floating IP.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use l3agent_netns::NetnsError;
use l3agent_rtnl::prelude::*;
use l3agent_rtnl::{Netns, Rtnl};
use l3agent_testkit::TestNs;
use l3agent_types::IfName;

/// The empty chains of a floor namespace.
const CHAINS: &str =
    "*nat\n:neutron-l3-agent-PREROUTING - [0:0]\n:neutron-l3-agent-OUTPUT - [0:0]\n\
                      :neutron-l3-agent-float-snat - [0:0]\nCOMMIT\n";

/// Runs `f` on a thread inside `ns`.
pub(crate) fn inside<T: Send>(ns: &Netns, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    ns.run::<_, NetnsError>(f)
        .map_err(|e| anyhow::anyhow!("{e}"))?
}

/// A floor's namespace (deleted when dropped), its device `qg-floor` (up, a veth) and an
/// rtnetlink socket inside it.
pub(crate) struct FloorNs {
    _ns: TestNs,
    netns: Netns,
    rtnl: Rtnl,
    dev: IfName,
}

impl FloorNs {
    /// A namespace named after `prefix` holding the three empty chains, or the rules `like`
    /// (an `iptables-save` of a router's namespace).
    pub(crate) fn new(prefix: &str, like: Option<&str>) -> Result<FloorNs> {
        let ns = TestNs::new(prefix);
        ns.ok(&[
            "ip", "link", "add", "qg-floor", "type", "veth", "peer", "name", "qg-peer",
        ]);
        ns.ok(&["ip", "link", "set", "qg-floor", "up"]);
        ns.restore("nft", false, like.unwrap_or(CHAINS));
        let netns = ns.open();
        let rtnl = Rtnl::open(&netns).map_err(|e| anyhow::anyhow!("{e}"))?;
        let dev = IfName::new("dev", "qg-floor").map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(FloorNs {
            _ns: ns,
            netns,
            rtnl,
            dev,
        })
    }

    /// `iptables-nft-restore --noflush` of `input` inside the namespace (the floors' kernel
    /// write).
    pub(crate) fn restore(&self, input: &str) -> Result<()> {
        let ok = inside(&self.netns, || {
            let mut child = Command::new("iptables-nft-restore")
                .arg("--noflush")
                .stdin(Stdio::piped())
                .spawn()?;
            child
                .stdin
                .take()
                .context("piped")?
                .write_all(input.as_bytes())?;
            Ok(child.wait()?.success())
        })?;
        if !ok {
            bail!("the floor's iptables-restore failed");
        }
        Ok(())
    }

    /// Adds (or deletes) `addr`/32 on the device.
    pub(crate) fn address(&mut self, addr: &str, add: bool) -> Result<()> {
        let net = format!("{addr}/32").parse()?;
        if add {
            self.rtnl.add_address(&self.dev, net, false)
        } else {
            self.rtnl.delete_address(&self.dev, net)
        }
        .map_err(|e| anyhow::anyhow!("{e}"))
    }
}
