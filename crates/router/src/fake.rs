//! A recording fake of the kernel and of iptables (like youki's `syscall/test.rs`): an
//! in-memory world of namespaces, links, addresses, routes, rules, neighbours, sysctls and
//! rule sets that [`FakeKernel`] and [`FakeFirewall`] act on, recording every operation as a
//! line and failing the first operation whose line contains [`World::fail_on`]. Passed to the
//! reconciler through the same constructor parameter as the real implementations, so every
//! change kind and failure path is tested without root.
//!
//! Open vSwitch (`openvswitch` driver) is [`l3agent_ovsdb::fake::FakeOvs`] inside the world,
//! with ovs-vswitchd's part played here: plugging a port makes its device (a `tun` link) in
//! the host namespace, unplugging removes the device wherever it is, and a device that dies
//! with its namespace leaves the port behind, as on a real host.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::os::fd::BorrowedFd;
use std::sync::{Arc, Mutex, MutexGuard};

use ipnet::IpNet;
use l3agent_iptables::{Family, Hints, IptablesModel};
use l3agent_iptables_exec::ApplyError;
use l3agent_ovsdb::fake::FakeOvs;
use l3agent_ovsdb::{Applied, ChangeSet, OvsPorts, OvsdbError, PortChange, PortRecord};
use l3agent_rtnl::addr::Address;
use l3agent_rtnl::link::Link;
use l3agent_rtnl::neigh::Neighbour;
use l3agent_rtnl::port::VethPort;
use l3agent_rtnl::prelude::*;
use l3agent_rtnl::route::Route;
use l3agent_rtnl::rule::Rule;
use l3agent_rtnl::sysctl::Sysctl;
use l3agent_rtnl::Error;
use l3agent_supervise::{
    ConfigDigest, Error as SuperviseError, Key, Service, Supervisor, SyncFailure, SyncRole,
};
use l3agent_types::{IfName, NetnsName, RouterId};
use std::path::Path;

use crate::host::Sides;
use crate::kernel::{DaemonState, Firewall, Kernel, LinkPair, Netlink, OvsDevice};

/// One fake link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeLink {
    /// Index (unique in the world).
    pub index: u32,
    /// `veth`, `bridge` or `None` (lo).
    pub kind: Option<String>,
    /// MTU.
    pub mtu: u32,
    /// MAC.
    pub mac: Option<[u8; 6]>,
    /// Up.
    pub up: bool,
    /// Index of its bridge.
    pub master: Option<u32>,
    /// Its veth peer: (namespace, name); `None` namespace = host.
    pub peer: Option<(Option<NetnsName>, String)>,
}

/// One fake namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeNs {
    /// Links by name.
    pub links: BTreeMap<String, FakeLink>,
    /// (device, address).
    pub addresses: BTreeSet<(String, IpNet)>,
    /// Routes (at most one per table, destination and metric).
    pub routes: Vec<Route>,
    /// Rules.
    pub rules: BTreeSet<Rule>,
    /// Permanent neighbours: (device, ip) → MAC.
    pub neighbours: BTreeMap<(String, IpAddr), [u8; 6]>,
    /// Sysctls by path.
    pub sysctls: BTreeMap<String, u32>,
    /// Restore text last applied per family.
    pub iptables: BTreeMap<Family, String>,
}

/// The whole fake host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct World {
    /// The host namespace (bridges, host ends of ports).
    pub host: FakeNs,
    /// Named namespaces.
    pub namespaces: BTreeMap<NetnsName, FakeNs>,
    /// Every operation, in order.
    pub log: Vec<String>,
    /// Fail the first operation whose log line contains this.
    pub fail_on: Option<String>,
    /// This "process" runs in a private mount namespace (as under `ip netns exec`).
    pub private_mounts: bool,
    /// Open vSwitch's database: bridges and their ports.
    pub ovs: FakeOvs,
    /// ovsdb-server does not answer: every OVSDB call fails to connect.
    pub ovsdb_down: bool,
    /// How many times a bridge's ports were read ([`Kernel::ovs_ports`]).
    pub ovs_reads: usize,
    /// The supervisor's daemons, by (router, service). A deleted namespace does not stop
    /// them (as on a real host, where a daemon keeps its namespace alive).
    pub daemons: BTreeMap<(RouterId, Service), FakeDaemon>,
    /// The namespaces whose rules' hints a compile asked for ([`Firewall::hints`]), in order.
    pub hints_asked: Vec<NetnsName>,
    next_index: u32,
}

/// One fake supervised daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeDaemon {
    /// The namespace it was started in.
    pub ns: NetnsName,
    /// Its config file.
    pub config: Vec<u8>,
    /// It runs (false: it died, its files are left).
    pub running: bool,
    /// conntrackd: the role it was last synced for (cleared by a start).
    pub synced: Option<SyncRole>,
}

impl World {
    /// A host with these bridges.
    pub fn with_bridges(bridges: &[&str]) -> World {
        let mut w = World::default();
        for b in bridges {
            let index = w.index();
            w.host.links.insert(
                (*b).to_owned(),
                FakeLink {
                    index,
                    kind: Some("bridge".into()),
                    mtu: 1500,
                    mac: None,
                    up: true,
                    master: None,
                    peer: None,
                },
            );
        }
        w
    }

    /// A host with these OVS bridges (and no Linux bridge).
    pub fn with_ovs(bridges: &[&str]) -> World {
        World {
            ovs: FakeOvs::with_bridges(bridges),
            ..World::default()
        }
    }

    /// Where a device of this name is: the host (`Some(None)`) or a namespace.
    fn find_link(&self, name: &str) -> Option<Option<NetnsName>> {
        if self.host.links.contains_key(name) {
            return Some(None);
        }
        self.namespaces
            .iter()
            .find(|(_, n)| n.links.contains_key(name))
            .map(|(ns, _)| Some(ns.clone()))
    }

    fn index(&mut self) -> u32 {
        self.next_index += 1;
        self.next_index + 100
    }

    /// Records an operation; fails it if asked to.
    fn op(&mut self, line: String) -> Result<(), Error> {
        let fail = self
            .fail_on
            .as_ref()
            .is_some_and(|f| line.contains(f.as_str()));
        self.log.push(line.clone());
        if fail {
            self.fail_on = None;
            return Err(Error::Value(format!("injected failure: {line}")));
        }
        Ok(())
    }

    fn ns(&mut self, ns: Option<&NetnsName>) -> Result<&mut FakeNs, Error> {
        match ns {
            None => Ok(&mut self.host),
            Some(n) => self
                .namespaces
                .get_mut(n)
                .ok_or_else(|| Error::NoNamespace(n.to_string())),
        }
    }

    /// The world as it would look to a later observer: the log and failure plan cleared.
    pub fn state(&self) -> World {
        World {
            log: Vec::new(),
            fail_on: None,
            ..self.clone()
        }
    }

    fn delete_link(&mut self, ns: Option<&NetnsName>, name: &str) -> Result<bool, Error> {
        let n = self.ns(ns)?;
        let Some(l) = n.links.remove(name) else {
            return Ok(false);
        };
        n.addresses.retain(|(d, _)| d != name);
        n.routes
            .retain(|r| r.dev.as_ref().is_none_or(|d| d.as_str() != name));
        n.neighbours.retain(|(d, _), _| d != name);
        if let Some((pns, pname)) = l.peer {
            if let Ok(p) = self.ns(pns.as_ref()) {
                p.links.remove(&pname);
                p.addresses.retain(|(d, _)| *d != pname);
                p.routes
                    .retain(|r| r.dev.as_ref().is_none_or(|d| d.as_str() != pname));
                p.neighbours.retain(|(d, _), _| *d != pname);
            }
        }
        Ok(true)
    }
}

/// A shared fake world.
pub type SharedWorld = Arc<Mutex<World>>;

fn lock(w: &SharedWorld) -> MutexGuard<'_, World> {
    w.lock().unwrap_or_else(|e| e.into_inner())
}

/// Netlink in one fake namespace.
#[derive(Debug)]
pub struct FakeNetlink {
    world: SharedWorld,
    ns: Option<NetnsName>,
}

impl FakeNetlink {
    fn label(&self) -> String {
        self.ns
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_else(|| "host".into())
    }

    fn with<T>(
        &self,
        op: Option<String>,
        f: impl FnOnce(&mut World, Option<&NetnsName>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut w = lock(&self.world);
        if let Some(op) = op {
            w.op(format!("{}: {op}", self.label()))?;
        }
        f(&mut w, self.ns.as_ref())
    }
}

fn no_device(name: &IfName, ns: &str) -> Error {
    Error::NoDevice {
        what: "fake".into(),
        netns: ns.to_owned(),
        device: name.to_string(),
    }
}

impl Links for FakeNetlink {
    fn links(&mut self) -> Result<Vec<Link>, Error> {
        self.with(None, |w, ns| {
            Ok(w.ns(ns)?
                .links
                .iter()
                .map(|(name, l)| Link {
                    index: l.index,
                    name: name.clone(),
                    kind: l.kind.clone(),
                    master: l.master,
                    mtu: l.mtu,
                    mac: l.mac,
                    up: l.up,
                })
                .collect())
        })
    }

    fn link(&mut self, name: &IfName) -> Result<Option<Link>, Error> {
        Ok(self.links()?.into_iter().find(|l| l.name == name.as_str()))
    }

    fn add_veth(
        &mut self,
        name: &IfName,
        _peer: &IfName,
        _peer_netns: Option<BorrowedFd<'_>>,
        _mtu: Option<u32>,
    ) -> Result<(), Error> {
        Err(Error::Value(format!(
            "the fake makes veths through Kernel::create_port/create_link, not add_veth ({name})"
        )))
    }

    fn add_bridge(&mut self, name: &IfName) -> Result<(), Error> {
        let n = name.to_string();
        self.with(Some(format!("ip link add {n} type bridge")), |w, ns| {
            let index = w.index();
            w.ns(ns)?.links.insert(
                n,
                FakeLink {
                    index,
                    kind: Some("bridge".into()),
                    mtu: 1500,
                    mac: None,
                    up: false,
                    master: None,
                    peer: None,
                },
            );
            Ok(())
        })
    }

    fn set_up(&mut self, name: &IfName, up: bool) -> Result<(), Error> {
        let label = self.label();
        self.with(Some(format!("ip link set {name} up={up}")), |w, ns| {
            let l = w
                .ns(ns)?
                .links
                .get_mut(name.as_str())
                .ok_or_else(|| no_device(name, &label))?;
            l.up = up;
            Ok(())
        })
    }

    fn set_mtu(&mut self, name: &IfName, mtu: u32) -> Result<(), Error> {
        let label = self.label();
        self.with(Some(format!("ip link set {name} mtu {mtu}")), |w, ns| {
            let n = w.ns(ns)?;
            let l = n
                .links
                .get_mut(name.as_str())
                .ok_or_else(|| no_device(name, &label))?;
            l.mtu = mtu;
            Ok(())
        })
    }

    fn set_mac(&mut self, name: &IfName, mac: [u8; 6]) -> Result<(), Error> {
        let label = self.label();
        self.with(Some(format!("ip link set {name} address")), |w, ns| {
            let l = w
                .ns(ns)?
                .links
                .get_mut(name.as_str())
                .ok_or_else(|| no_device(name, &label))?;
            l.mac = Some(mac);
            Ok(())
        })
    }

    fn set_master(&mut self, name: &IfName, bridge: &IfName) -> Result<(), Error> {
        let label = self.label();
        self.with(
            Some(format!("ip link set {name} master {bridge}")),
            |w, ns| {
                let n = w.ns(ns)?;
                let b = n
                    .links
                    .get(bridge.as_str())
                    .filter(|b| b.kind.as_deref() == Some("bridge"))
                    .map(|b| b.index)
                    .ok_or_else(|| no_device(bridge, &label))?;
                let l = n
                    .links
                    .get_mut(name.as_str())
                    .ok_or_else(|| no_device(name, &label))?;
                l.master = Some(b);
                Ok(())
            },
        )
    }

    fn move_to(&mut self, name: &IfName, _: BorrowedFd<'_>, label: &str) -> Result<(), Error> {
        Err(Error::Value(format!(
            "the fake does not move {name} to {label}"
        )))
    }

    fn delete_link(&mut self, name: &IfName) -> Result<bool, Error> {
        self.with(Some(format!("ip link del {name}")), |w, ns| {
            w.delete_link(ns, name.as_str())
        })
    }
}

impl Addresses for FakeNetlink {
    fn addresses(&mut self, dev: Option<&IfName>) -> Result<Vec<Address>, Error> {
        self.with(None, |w, ns| {
            let n = w.ns(ns)?;
            Ok(n.addresses
                .iter()
                .filter(|(d, _)| dev.is_none_or(|x| x.as_str() == d))
                .filter_map(|(d, net)| {
                    n.links.get(d).map(|l| Address {
                        index: l.index,
                        net: *net,
                    })
                })
                .collect())
        })
    }

    fn add_address(&mut self, dev: &IfName, net: IpNet, _: bool) -> Result<(), Error> {
        let label = self.label();
        self.with(Some(format!("ip addr add {net} dev {dev}")), |w, ns| {
            let n = w.ns(ns)?;
            if !n.links.contains_key(dev.as_str()) {
                return Err(no_device(dev, &label));
            }
            if !n.addresses.insert((dev.to_string(), net)) {
                return Err(Error::Value(format!("{net} exists on {dev}")));
            }
            Ok(())
        })
    }

    fn delete_address(&mut self, dev: &IfName, net: IpNet) -> Result<(), Error> {
        self.with(Some(format!("ip addr del {net} dev {dev}")), |w, ns| {
            w.ns(ns)?.addresses.remove(&(dev.to_string(), net));
            Ok(())
        })
    }
}

fn same_key(a: &Route, b: &Route) -> bool {
    a.table == b.table && a.dst == b.dst && a.metric == b.metric
}

impl Routes for FakeNetlink {
    fn replace_route(&mut self, r: &Route) -> Result<(), Error> {
        let op = format!("ip route replace {}", crate::change::RouteText(r));
        self.with(Some(op), |w, ns| {
            let n = w.ns(ns)?;
            n.routes.retain(|x| !same_key(x, r));
            n.routes.push(r.clone());
            n.routes.sort();
            Ok(())
        })
    }

    fn delete_route(&mut self, r: &Route) -> Result<bool, Error> {
        let op = format!("ip route del {}", crate::change::RouteText(r));
        self.with(Some(op), |w, ns| {
            let n = w.ns(ns)?;
            let before = n.routes.len();
            n.routes.retain(|x| x != r);
            Ok(n.routes.len() != before)
        })
    }

    fn routes(&mut self, ipv6: bool, table: u32) -> Result<Vec<Route>, Error> {
        Ok(self
            .all_routes(ipv6)?
            .into_iter()
            .filter(|r| r.table == table)
            .collect())
    }

    fn all_routes(&mut self, ipv6: bool) -> Result<Vec<Route>, Error> {
        self.with(None, |w, ns| {
            Ok(w.ns(ns)?
                .routes
                .iter()
                .filter(|r| r.dst.addr().is_ipv6() == ipv6)
                .cloned()
                .collect())
        })
    }

    fn flush_table(&mut self, ipv6: bool, table: u32) -> Result<usize, Error> {
        let routes = self.routes(ipv6, table)?;
        for r in &routes {
            self.delete_route(r)?;
        }
        Ok(routes.len())
    }
}

impl Rules for FakeNetlink {
    fn rules(&mut self, ipv6: bool) -> Result<Vec<Rule>, Error> {
        self.with(None, |w, ns| {
            Ok(w.ns(ns)?
                .rules
                .iter()
                .filter(|r| r.ipv6 == ipv6)
                .cloned()
                .collect())
        })
    }

    fn add_rule(&mut self, rule: &Rule) -> Result<bool, Error> {
        let op = format!("ip rule add {}", rule);
        self.with(Some(op), |w, ns| Ok(w.ns(ns)?.rules.insert(rule.clone())))
    }

    fn delete_rule(&mut self, rule: &Rule) -> Result<bool, Error> {
        let op = format!("ip rule del {}", rule);
        self.with(Some(op), |w, ns| Ok(w.ns(ns)?.rules.remove(rule)))
    }
}

impl Neighbours for FakeNetlink {
    fn replace_neighbour(&mut self, dev: &IfName, ip: IpAddr, mac: [u8; 6]) -> Result<(), Error> {
        let label = self.label();
        self.with(Some(format!("ip neigh replace {ip} dev {dev}")), |w, ns| {
            let n = w.ns(ns)?;
            if !n.links.contains_key(dev.as_str()) {
                return Err(no_device(dev, &label));
            }
            n.neighbours.insert((dev.to_string(), ip), mac);
            Ok(())
        })
    }

    fn delete_neighbour(&mut self, dev: &IfName, ip: IpAddr) -> Result<bool, Error> {
        self.with(Some(format!("ip neigh del {ip} dev {dev}")), |w, ns| {
            Ok(w.ns(ns)?
                .neighbours
                .remove(&(dev.to_string(), ip))
                .is_some())
        })
    }

    fn neighbours(&mut self, dev: &IfName) -> Result<Vec<Neighbour>, Error> {
        self.with(None, |w, ns| {
            let n = w.ns(ns)?;
            let index = n.links.get(dev.as_str()).map(|l| l.index).unwrap_or(0);
            Ok(n.neighbours
                .iter()
                .filter(|((d, _), _)| d == dev.as_str())
                .map(|((_, ip), mac)| Neighbour {
                    index,
                    ip: *ip,
                    mac: Some(*mac),
                    permanent: true,
                })
                .collect())
        })
    }
}

/// One announcement made: (namespace, device, addresses).
pub type Announced = (NetnsName, IfName, Vec<IpAddr>);

/// [`Kernel`] over a [`World`].
#[derive(Debug)]
pub struct FakeKernel {
    nl: FakeNetlink,
    /// Announcements made: (namespace, device, addresses).
    pub announced: Arc<Mutex<Vec<Announced>>>,
}

impl FakeKernel {
    /// A kernel acting on `world`.
    pub fn new(world: SharedWorld) -> FakeKernel {
        FakeKernel {
            nl: FakeNetlink { world, ns: None },
            announced: Arc::default(),
        }
    }

    fn world(&self) -> MutexGuard<'_, World> {
        lock(&self.nl.world)
    }
}

fn veth_end(
    mtu: u32,
    mac: Option<[u8; 6]>,
    up: bool,
    index: u32,
    peer: (Option<NetnsName>, String),
) -> FakeLink {
    FakeLink {
        index,
        kind: Some("veth".into()),
        mtu,
        mac,
        up,
        master: None,
        peer: Some(peer),
    }
}

impl Kernel for FakeKernel {
    fn namespace_exists(&mut self, ns: &NetnsName) -> bool {
        self.world().namespaces.contains_key(ns)
    }

    fn namespaces_outlive_us(&mut self) -> Result<(), String> {
        if self.world().private_mounts {
            Err("this process runs in a private mount namespace".to_owned())
        } else {
            Ok(())
        }
    }

    fn create_namespace(&mut self, ns: &NetnsName) -> Result<bool, Error> {
        let mut w = self.world();
        w.op(format!("ip netns add {ns}"))?;
        if w.namespaces.contains_key(ns) {
            return Ok(false);
        }
        let index = w.index();
        let mut n = FakeNs::default();
        n.links.insert(
            "lo".into(),
            FakeLink {
                index,
                kind: None,
                mtu: 65536,
                mac: None,
                up: false,
                master: None,
                peer: None,
            },
        );
        w.namespaces.insert(ns.clone(), n);
        Ok(true)
    }

    fn delete_namespace(&mut self, ns: &NetnsName) -> Result<bool, Error> {
        let mut w = self.world();
        w.op(format!("ip netns del {ns}"))?;
        let Some(n) = w.namespaces.get(ns).cloned() else {
            return Ok(false);
        };
        for name in n.links.keys() {
            let _ = w.delete_link(Some(ns), name);
        }
        w.namespaces.remove(ns);
        Ok(true)
    }

    fn netlink(&mut self, ns: Option<&NetnsName>) -> Result<&mut dyn Netlink, Error> {
        if let Some(n) = ns {
            if !self.namespace_exists(n) {
                return Err(Error::NoNamespace(n.to_string()));
            }
        }
        self.nl.ns = ns.cloned();
        Ok(&mut self.nl)
    }

    fn read_sysctls(&mut self, ns: &NetnsName, keys: &[Sysctl]) -> Result<Vec<Option<u32>>, Error> {
        let mut w = self.world();
        let n = w.ns(Some(ns))?;
        Ok(keys
            .iter()
            .map(|k| match k.device() {
                Some(d) if !n.links.contains_key(d.as_str()) => None,
                _ => Some(n.sysctls.get(&k.path()).copied().unwrap_or(0)),
            })
            .collect())
    }

    fn write_sysctls(&mut self, ns: &NetnsName, values: &[(Sysctl, u32)]) -> Result<(), Error> {
        let mut w = self.world();
        for (k, v) in values {
            w.op(format!("{ns}: sysctl {}={v}", k.name()))?;
            let n = w.ns(Some(ns))?;
            if let Some(d) = k.device() {
                if !n.links.contains_key(d.as_str()) {
                    return Err(no_device(d, ns.as_str()));
                }
            }
            n.sysctls.insert(k.path(), *v);
        }
        Ok(())
    }

    fn create_port(&mut self, ns: &NetnsName, port: &VethPort) -> Result<(), Error> {
        let mut w = self.world();
        w.op(format!(
            "{ns}: add port {} host end {}",
            port.name, port.peer
        ))?;
        let bridge = port
            .bridge
            .as_ref()
            .and_then(|b| w.host.links.get(b.as_str()))
            .filter(|b| b.kind.as_deref() == Some("bridge"))
            .map(|b| b.index);
        if port.bridge.is_some() && bridge.is_none() {
            return Err(Error::Value(format!(
                "no bridge {:?} on the host",
                port.bridge
            )));
        }
        if w.host.links.contains_key(port.peer.as_str()) {
            return Err(Error::Value(format!("{} exists", port.peer)));
        }
        let (i1, i2) = (w.index(), w.index());
        let n = w.ns(Some(ns))?;
        if n.links.contains_key(port.name.as_str()) {
            return Err(Error::Value(format!("{} exists", port.name)));
        }
        n.links.insert(
            port.name.to_string(),
            veth_end(port.mtu, port.mac, true, i1, (None, port.peer.to_string())),
        );
        for a in &port.addresses {
            n.addresses.insert((port.name.to_string(), *a));
        }
        let mut host_end = veth_end(
            port.mtu,
            Some([2, 0, 0, 0, 0, 1]),
            true,
            i2,
            (Some(ns.clone()), port.name.to_string()),
        );
        host_end.master = bridge;
        w.host.links.insert(port.peer.to_string(), host_end);
        Ok(())
    }

    fn create_link(&mut self, link: &LinkPair) -> Result<(), Error> {
        let mut w = self.world();
        w.op(format!(
            "{}: ip link add {} peer {} netns {}",
            link.ns, link.dev, link.peer, link.peer_ns
        ))?;
        let (i1, i2) = (w.index(), w.index());
        let mtu = link.mtu.unwrap_or(1500);
        if !w.namespaces.contains_key(&link.peer_ns) {
            return Err(Error::NoNamespace(link.peer_ns.to_string()));
        }
        w.ns(Some(&link.ns))?.links.insert(
            link.dev.to_string(),
            veth_end(
                mtu,
                link.mac.map(|m| m.octets()),
                true,
                i1,
                (Some(link.peer_ns.clone()), link.peer.to_string()),
            ),
        );
        w.ns(Some(&link.peer_ns))?.links.insert(
            link.peer.to_string(),
            veth_end(
                mtu,
                link.peer_mac.map(|m| m.octets()),
                true,
                i2,
                (Some(link.ns.clone()), link.dev.to_string()),
            ),
        );
        Ok(())
    }

    fn flush_conntrack(&mut self, ns: &NetnsName, ip: IpAddr) -> Result<u64, Error> {
        self.world().op(format!("{ns}: conntrack -D {ip}"))?;
        Ok(0)
    }

    fn announce(&mut self, ns: &NetnsName, dev: &IfName, addrs: &[IpAddr]) {
        self.announced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((ns.clone(), dev.clone(), addrs.to_vec()));
    }

    fn settle(&mut self, _: std::time::Duration) {}

    fn ovs_bridge_exists(&mut self, db: &Path, bridge: &IfName) -> Result<bool, OvsdbError> {
        let mut w = self.world();
        ovsdb_up(&w, db)?;
        w.ovs.bridge_exists(bridge)
    }

    fn ovs_ports(&mut self, db: &Path, bridge: &IfName) -> Result<Vec<PortRecord>, OvsdbError> {
        let mut w = self.world();
        ovsdb_up(&w, db)?;
        w.ovs_reads += 1;
        w.ovs.ports(bridge)
    }

    fn ovs_apply(&mut self, db: &Path, changes: &ChangeSet) -> Result<Applied, OvsdbError> {
        let mut w = self.world();
        ovsdb_up(&w, db)?;
        let what: Vec<String> = changes
            .changes()
            .map(|c| match c {
                l3agent_ovsdb::PortChangeRequest::Plug(p) => format!("plug {}", p.name),
                l3agent_ovsdb::PortChangeRequest::Unplug(n) => format!("unplug {n}"),
            })
            .collect();
        w.op(format!(
            "ovsdb {}: transact {}",
            changes.bridge(),
            what.join(", ")
        ))
        .map_err(|e| OvsdbError::Protocol(e.to_string()))?;
        let applied = w.ovs.apply(changes)?;
        // ovs-vswitchd's part.
        for c in &applied.changes {
            match c {
                PortChange::Created { port } | PortChange::Moved { port, .. } => {
                    if w.find_link(port.as_str()).is_none() {
                        let index = w.index();
                        w.host.links.insert(
                            port.to_string(),
                            FakeLink {
                                index,
                                kind: Some("tun".into()),
                                mtu: 1500,
                                mac: Some([0x02, 0, 0, 0, 0xff, 0xfe]),
                                up: false,
                                master: None,
                                peer: None,
                            },
                        );
                    }
                }
                PortChange::Deleted { port } => {
                    let mut found = Vec::new();
                    if w.host.links.contains_key(port.as_str()) {
                        found.push(None);
                    }
                    for (ns, n) in &w.namespaces {
                        if n.links
                            .get(port.as_str())
                            .is_some_and(|l| l.kind.as_deref() == Some("tun"))
                        {
                            found.push(Some(ns.clone()));
                        }
                    }
                    for ns in found {
                        let _ = w.delete_link(ns.as_ref(), port.as_str());
                    }
                }
                PortChange::Updated { .. } => {}
            }
        }
        Ok(applied)
    }

    fn daemons(
        &mut self,
        _: &Path,
        router: &RouterId,
        ns: &NetnsName,
    ) -> Result<BTreeMap<Service, DaemonState>, SuperviseError> {
        let w = self.world();
        Ok(w.daemons
            .iter()
            .filter(|((r, _), _)| r == router)
            .map(|((_, s), d)| {
                (
                    *s,
                    DaemonState {
                        running: d.running && &d.ns == ns && w.namespaces.contains_key(ns),
                        config: Some(ConfigDigest::of(&d.config)),
                        synced: d.synced.filter(|_| d.running),
                    },
                )
            })
            .collect())
    }

    fn daemon_keys(&mut self, _: &Path) -> Result<Vec<Key>, SuperviseError> {
        Ok(self
            .world()
            .daemons
            .keys()
            .map(|(r, s)| Key::new(r.clone(), *s))
            .collect())
    }

    fn start_daemon(
        &mut self,
        _: &Path,
        key: &Key,
        ns: &NetnsName,
        config: &[u8],
    ) -> Result<(), SuperviseError> {
        let mut w = self.daemon_op(format!("start {key} in {ns}"))?;
        if !w.namespaces.contains_key(ns) {
            return Err(daemon_error(Error::NoNamespace(ns.to_string())));
        }
        w.daemons.insert(
            (key.router.clone(), key.service),
            FakeDaemon {
                ns: ns.clone(),
                config: config.to_vec(),
                running: true,
                synced: None,
            },
        );
        Ok(())
    }

    fn reload_daemon(
        &mut self,
        _: &Path,
        key: &Key,
        ns: &NetnsName,
        config: &[u8],
    ) -> Result<(), SuperviseError> {
        let mut w = self.daemon_op(format!("reload {key} in {ns}"))?;
        match w.daemons.get_mut(&(key.router.clone(), key.service)) {
            Some(d) if d.running => {
                d.config = config.to_vec();
                Ok(())
            }
            _ => Err(daemon_error(Error::Value(format!("{key} is not running")))),
        }
    }

    fn stop_daemon(&mut self, _: &Path, key: &Key) -> Result<(), SuperviseError> {
        let mut w = self.daemon_op(format!("stop {key}"))?;
        w.daemons.remove(&(key.router.clone(), key.service));
        Ok(())
    }

    /// Logs one line per command (`NS: conntrackd -C CONF OPTION`); an injected failure of
    /// one is returned as a [`SyncFailure`] and the rest still run, as for real.
    fn sync_conntrackd(
        &mut self,
        dir: &Path,
        key: &Key,
        ns: &NetnsName,
        role: SyncRole,
    ) -> Result<Vec<SyncFailure>, SuperviseError> {
        let mut w = self.world();
        let id = (key.router.clone(), key.service);
        let running = w
            .daemons
            .get(&id)
            .is_some_and(|d| d.running && &d.ns == ns && key.service == Service::Conntrackd);
        if !running {
            return Err(SuperviseError::NotRunning { key: key.clone() });
        }
        let conf = Supervisor::paths(dir, key).conf;
        let mut failures = Vec::new();
        for o in role.options() {
            let command = format!("conntrackd -C {} {o}", conf.display());
            if let Err(e) = w.op(format!("{ns}: {command}")) {
                failures.push(SyncFailure {
                    command,
                    error: e.to_string(),
                });
            }
        }
        if let Some(d) = w.daemons.get_mut(&id) {
            d.synced = Some(role);
        }
        Ok(failures)
    }

    fn attach_ovs_device(&mut self, ns: &NetnsName, dev: &OvsDevice) -> Result<(), Error> {
        {
            let mut w = self.world();
            w.op(format!("{ns}: ip link set {} netns {ns}", dev.name))?;
            if !w.ns(Some(ns))?.links.contains_key(dev.name.as_str()) {
                let link = w
                    .host
                    .links
                    .remove(dev.name.as_str())
                    .ok_or_else(|| no_device(&dev.name, "host"))?;
                w.host.addresses.retain(|(d, _)| d != dev.name.as_str());
                w.ns(Some(ns))?.links.insert(dev.name.to_string(), link);
            }
        }
        let n = self.netlink(Some(ns))?;
        if let Some(m) = dev.mac {
            n.set_mac(&dev.name, m.octets())?;
        }
        n.set_mtu(&dev.name, dev.mtu)?;
        n.set_up(&dev.name, true)?;
        for a in &dev.addresses {
            n.add_address(&dev.name, *a, true)?;
        }
        Ok(())
    }
}

/// A supervisor error for an injected failure.
fn daemon_error(e: Error) -> SuperviseError {
    SuperviseError::Io {
        what: "injected failure",
        path: std::path::PathBuf::from(e.to_string()),
        source: std::io::Error::other("fake"),
    }
}

impl FakeKernel {
    fn daemon_op(&mut self, line: String) -> Result<MutexGuard<'_, World>, SuperviseError> {
        let mut w = self.world();
        w.op(line).map_err(daemon_error)?;
        Ok(w)
    }
}

/// The error of a call to an ovsdb-server that does not answer.
fn ovsdb_up(w: &World, db: &Path) -> Result<(), OvsdbError> {
    if w.ovsdb_down {
        return Err(OvsdbError::Connect {
            path: db.to_path_buf(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        });
    }
    Ok(())
}

/// [`Firewall`] over a [`World`]: a namespace's rules per family are the restore text of the
/// model last applied there.
#[derive(Debug)]
pub struct FakeFirewall {
    world: SharedWorld,
}

impl FakeFirewall {
    /// A firewall acting on `world`.
    pub fn new(world: SharedWorld) -> FakeFirewall {
        FakeFirewall { world }
    }
}

impl Firewall for FakeFirewall {
    fn plan(
        &mut self,
        ns: &NetnsName,
        model: &IptablesModel,
        exists: bool,
    ) -> Result<Vec<(Family, Vec<String>)>, ApplyError> {
        let w = lock(&self.world);
        let have = if exists { w.namespaces.get(ns) } else { None };
        Ok(Family::ALL
            .into_iter()
            .filter_map(|f| {
                let want = crate::compile::restore_text(model, f);
                let current = have
                    .and_then(|n| n.iptables.get(&f))
                    .cloned()
                    .unwrap_or_default();
                (want != current).then(|| (f, want.lines().map(str::to_owned).collect()))
            })
            .collect())
    }

    fn apply(
        &mut self,
        ns: &NetnsName,
        model: &IptablesModel,
    ) -> Result<Vec<(Family, Vec<String>)>, ApplyError> {
        let planned = self.plan(ns, model, true)?;
        let mut w = lock(&self.world);
        w.op(format!("{ns}: iptables-restore")).map_err(|e| {
            ApplyError::Exec(l3agent_iptables_exec::ExecError::Io {
                what: "iptables-restore".into(),
                source: std::io::Error::other(e.to_string()),
            })
        })?;
        let n = w.namespaces.get_mut(ns).ok_or_else(|| {
            ApplyError::Exec(l3agent_iptables_exec::ExecError::NoNamespace(
                ns.to_string(),
            ))
        })?;
        for (f, _) in &planned {
            n.iptables
                .insert(*f, crate::compile::restore_text(model, *f));
        }
        Ok(planned)
    }

    fn forget(&mut self, _: &NetnsName) {}

    fn refresh(&mut self) {}

    /// Counted; hints of Neutron's default rules only (the fake keeps restore text, not
    /// models: what a real manager's hints give is tested with the compile).
    fn hints(&self, ns: &NetnsName) -> Option<Arc<Hints>> {
        let mut w = lock(&self.world);
        w.hints_asked.push(ns.clone());
        w.namespaces
            .contains_key(ns)
            .then(|| Arc::new(crate::compile::empty_model().hints()))
    }
}

/// A [`crate::host::Factory`] body over one shared world.
pub fn sides(
    world: &SharedWorld,
) -> impl Fn() -> Result<Sides, crate::error::RouterError> + Sync + '_ {
    move || {
        Ok((
            Box::new(FakeKernel::new(world.clone())) as Box<dyn Kernel>,
            Box::new(FakeFirewall::new(world.clone())) as Box<dyn Firewall>,
        ))
    }
}
