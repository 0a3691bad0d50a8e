//! Execute: runs [`Change`]s, in the order given, over the [`Kernel`] and [`Firewall`] traits.
//! The first failure stops the namespace's changes (the next apply diffs again and goes on
//! from what is there); announcements never fail a router.

use l3agent_types::NetnsName;
use tracing::{debug, warn};

use crate::change::Change;
use crate::diff::veth_port;
use crate::error::RouterError;
use crate::kernel::{Firewall, Kernel, LinkPair};
use crate::spec::HostSpec;

/// Runs `changes` (made by [`crate::diff::diff`] for `host`). Returns how many ran; on error,
/// the error of the change that failed.
pub fn execute(
    kernel: &mut dyn Kernel,
    firewall: &mut dyn Firewall,
    host: &HostSpec,
    changes: &[Change],
) -> Result<usize, RouterError> {
    for c in changes {
        debug!(change = %c, "executing");
        run(kernel, firewall, host, c).map_err(|e| RouterError::Change {
            change: c.to_string(),
            source: Box::new(e),
        })?;
    }
    Ok(changes.len())
}

fn label(ns: Option<&NetnsName>) -> String {
    ns.map(ToString::to_string).unwrap_or_else(|| "host".into())
}

fn run(
    kernel: &mut dyn Kernel,
    firewall: &mut dyn Firewall,
    host: &HostSpec,
    c: &Change,
) -> Result<(), RouterError> {
    let plumbing = |source| RouterError::Plumbing {
        router: label(c.namespace()),
        source,
    };
    match c {
        Change::CreateNamespace { ns } => {
            kernel.create_namespace(ns).map_err(plumbing)?;
        }
        Change::DeleteNamespace { ns } => {
            firewall.forget(ns);
            kernel.delete_namespace(ns).map_err(plumbing)?;
        }
        Change::SetSysctl { ns, key, value } => {
            kernel
                .write_sysctls(ns, &[(key.clone(), *value)])
                .map_err(plumbing)?;
        }
        Change::CreatePort { ns, .. } => {
            let port = veth_port(c).expect("a CreatePort change");
            kernel.create_port(ns, &port).map_err(plumbing)?;
        }
        Change::CreateLink {
            ns,
            dev,
            peer,
            peer_ns,
            mtu,
        } => {
            let mac_of = |n: &NetnsName, d| {
                host.namespaces
                    .get(n)
                    .and_then(|s| s.devices.get(d))
                    .and_then(|d| d.mac)
            };
            kernel
                .create_link(&LinkPair {
                    ns: ns.clone(),
                    dev: dev.clone(),
                    mac: mac_of(ns, dev),
                    peer_ns: peer_ns.clone(),
                    peer: peer.clone(),
                    peer_mac: mac_of(peer_ns, peer),
                    mtu: *mtu,
                })
                .map_err(plumbing)?;
        }
        Change::DeleteDevice { ns, dev, .. } => {
            kernel
                .netlink(Some(ns))
                .and_then(|n| n.delete_link(dev))
                .map_err(plumbing)?;
        }
        Change::DeleteHostEnd { dev } => {
            kernel
                .netlink(None)
                .and_then(|n| n.delete_link(dev))
                .map_err(plumbing)?;
        }
        Change::SetDevice {
            ns,
            dev,
            mtu,
            mac,
            up,
        } => {
            let n = kernel.netlink(Some(ns)).map_err(plumbing)?;
            if let Some(m) = mtu {
                n.set_mtu(dev, *m).map_err(plumbing)?;
            }
            if let Some(m) = mac {
                n.set_mac(dev, m.octets()).map_err(plumbing)?;
            }
            if *up {
                n.set_up(dev, true).map_err(plumbing)?;
            }
        }
        Change::SetHostEnd {
            dev,
            bridge,
            mtu,
            up,
        } => {
            let n = kernel.netlink(None).map_err(plumbing)?;
            if let Some(b) = bridge {
                n.set_master(dev, b).map_err(plumbing)?;
            }
            if let Some(m) = mtu {
                n.set_mtu(dev, *m).map_err(plumbing)?;
            }
            if *up {
                n.set_up(dev, true).map_err(plumbing)?;
            }
        }
        Change::AddAddress { ns, dev, net, .. } => {
            kernel
                .netlink(Some(ns))
                .and_then(|n| n.add_address(dev, *net, true))
                .map_err(plumbing)?;
        }
        Change::DeleteAddress { ns, dev, net, .. } => {
            kernel
                .netlink(Some(ns))
                .and_then(|n| n.delete_address(dev, *net))
                .map_err(plumbing)?;
        }
        Change::ReplaceRoute { ns, route } => {
            kernel
                .netlink(Some(ns))
                .and_then(|n| n.replace_route(route))
                .map_err(plumbing)?;
        }
        Change::DeleteRoute { ns, route } => {
            kernel
                .netlink(Some(ns))
                .and_then(|n| n.delete_route(route))
                .map_err(plumbing)?;
        }
        Change::AddRule { ns, rule } => {
            kernel
                .netlink(Some(ns))
                .and_then(|n| n.add_rule(rule))
                .map_err(plumbing)?;
        }
        Change::DeleteRule { ns, rule } => {
            kernel
                .netlink(Some(ns))
                .and_then(|n| n.delete_rule(rule))
                .map_err(plumbing)?;
        }
        Change::SetNeighbour { ns, dev, ip, mac } => {
            kernel
                .netlink(Some(ns))
                .and_then(|n| n.replace_neighbour(dev, *ip, mac.octets()))
                .map_err(plumbing)?;
        }
        Change::DeleteNeighbour { ns, dev, ip } => {
            kernel
                .netlink(Some(ns))
                .and_then(|n| n.delete_neighbour(dev, *ip))
                .map_err(plumbing)?;
        }
        Change::Iptables { ns, family, lines } => {
            // One apply per namespace sends every family; a second Iptables change of the
            // same namespace finds nothing left to send.
            let spec = host
                .namespaces
                .get(ns)
                .expect("an Iptables change is made for a namespace of the spec");
            let sent =
                firewall
                    .apply(ns, &spec.iptables)
                    .map_err(|source| RouterError::Iptables {
                        router: ns.to_string(),
                        source,
                    })?;
            if let Some((_, actual)) = sent.iter().find(|(f, _)| f == family) {
                if actual != lines {
                    warn!(%ns, %family, "iptables input differed from the plan (the kernel changed in between)");
                }
            }
        }
        Change::FlushConntrack { ns, ip } => {
            if kernel.namespace_exists(ns) {
                kernel.flush_conntrack(ns, *ip).map_err(plumbing)?;
            }
        }
        Change::Announce { ns, dev, addresses } => {
            kernel.announce(ns, dev, addresses);
        }
    }
    Ok(())
}
