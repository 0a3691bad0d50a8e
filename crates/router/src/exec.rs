//! Execute: runs [`Change`]s, in the order given, over the [`Kernel`] and [`Firewall`] traits.
//! The first failure stops the namespace's changes (the next apply diffs again and goes on
//! from what is there); announcements never fail a router. Consecutive OVS port changes of
//! one kind and bridge (all the plugs of a namespace, all its unplugs) are applied as one
//! OVSDB change set, in one transaction.

use l3agent_ovsdb::{ChangeSet, InternalPort, OvsdbError};
use l3agent_supervise::{Key, Service};
use l3agent_types::{IfName, NetnsName, RouterId};
use tracing::{debug, warn};

use crate::change::Change;
use crate::diff::veth_port;
use crate::error::RouterError;
use crate::kernel::{Firewall, Kernel, LinkPair, OvsDevice};
use crate::spec::HostSpec;

/// Runs `changes` (made by [`crate::diff::diff`] for `host`). Returns how many ran; on error,
/// the error of the change that failed (for an OVS transaction, of its changes).
pub fn execute(
    kernel: &mut dyn Kernel,
    firewall: &mut dyn Firewall,
    host: &HostSpec,
    changes: &[Change],
) -> Result<usize, RouterError> {
    let mut i = 0;
    while i < changes.len() {
        let c = &changes[i];
        if ovs_port_change(c).is_some() {
            let batch = ovs_batch(&changes[i..]);
            debug!(changes = batch.len(), "executing one OVSDB transaction");
            apply_ovs(kernel, host, batch).map_err(|e| RouterError::Change {
                change: batch
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
                source: Box::new(e),
            })?;
            i += batch.len();
            continue;
        }
        debug!(change = %c, "executing");
        run(kernel, firewall, host, c).map_err(|e| RouterError::Change {
            change: c.to_string(),
            source: Box::new(e),
        })?;
        i += 1;
    }
    Ok(changes.len())
}

/// For an OVS port change: whether it plugs, and its bridge and port.
fn ovs_port_change(c: &Change) -> Option<(bool, &IfName, &IfName)> {
    match c {
        Change::PlugOvsPort { bridge, port, .. } => Some((true, bridge, port)),
        Change::UnplugOvsPort { bridge, port } => Some((false, bridge, port)),
        _ => None,
    }
}

/// The longest run at the start of `changes` of OVS port changes that go in one change set:
/// the same kind, the same bridge, each name once.
fn ovs_batch(changes: &[Change]) -> &[Change] {
    let Some((plug, bridge, _)) = changes.first().and_then(ovs_port_change) else {
        return &changes[..0];
    };
    let mut names = std::collections::BTreeSet::new();
    let n = changes
        .iter()
        .take_while(|c| {
            ovs_port_change(c)
                .is_some_and(|(p, b, port)| p == plug && b == bridge && names.insert(port.clone()))
        })
        .count();
    &changes[..n]
}

/// One OVSDB transaction for `batch` (see [`ovs_batch`]). A port found on another bridge is
/// moved, as Neutron's `replace_port` (which deletes the name wherever it is) would.
fn apply_ovs(
    kernel: &mut dyn Kernel,
    host: &HostSpec,
    batch: &[Change],
) -> Result<(), RouterError> {
    let ovs_error = |source| RouterError::Ovs {
        router: "host".into(),
        source,
    };
    let Some(ovs) = &host.ovs else {
        return Err(ovs_error(OvsdbError::Protocol(
            "an OVS port change, but the interface driver is not openvswitch".into(),
        )));
    };
    let Some((_, bridge, _)) = batch.first().and_then(ovs_port_change) else {
        return Ok(());
    };
    let mut set = ChangeSet::new(bridge.clone());
    set.move_from_other_bridges(true);
    for c in batch {
        match c {
            Change::PlugOvsPort {
                port, port_id, mac, ..
            } => set.plug(InternalPort::neutron(port.clone(), port_id, *mac)),
            Change::UnplugOvsPort { port, .. } => set.unplug(port.clone()),
            _ => continue,
        }
        .map_err(ovs_error)?;
    }
    let applied = kernel.ovs_apply(&ovs.db, &set).map_err(ovs_error)?;
    debug!(bridge = %bridge, changed = applied.changes.len(), attempts = applied.attempts, "OVSDB transaction done");
    Ok(())
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
    let daemon = |router: &RouterId, source| RouterError::Daemon {
        router: router.to_string(),
        source,
    };
    let dir = host.daemons_dir.as_path();
    match c {
        Change::CreateNamespace { ns } => {
            kernel.create_namespace(ns).map_err(plumbing)?;
        }
        Change::StartDaemon {
            ns,
            router,
            service,
            config,
        }
        | Change::ReloadDaemon {
            ns,
            router,
            service,
            config,
        } => {
            let key = Key::new(router.clone(), *service);
            let done = if matches!(c, Change::StartDaemon { .. }) {
                kernel.start_daemon(dir, &key, ns, config)
            } else {
                kernel.reload_daemon(dir, &key, ns, config)
            };
            done.map_err(|e| daemon(router, e))?;
        }
        Change::StopDaemon {
            router, service, ..
        } => {
            let key = Key::new(router.clone(), *service);
            kernel
                .stop_daemon(dir, &key)
                .map_err(|e| daemon(router, e))?;
        }
        Change::SyncConntrackd { ns, router, role } => {
            let key = Key::new(router.clone(), Service::Conntrackd);
            let failed = kernel
                .sync_conntrackd(dir, &key, ns, *role)
                .map_err(|e| daemon(router, e))?;
            for f in failed {
                warn!(%router, %role, command = %f.command, error = %f.error, "conntrackd sync command failed (ignored, as Neutron does)");
            }
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
        Change::PlugOvsPort { .. } | Change::UnplugOvsPort { .. } => {
            apply_ovs(kernel, host, std::slice::from_ref(c))?;
        }
        Change::AttachOvsDevice {
            ns,
            dev,
            mtu,
            mac,
            addresses,
            ..
        } => {
            kernel
                .attach_ovs_device(
                    ns,
                    &OvsDevice {
                        name: dev.clone(),
                        mtu: *mtu,
                        mac: *mac,
                        addresses: addresses.clone(),
                    },
                )
                .map_err(plumbing)?;
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
