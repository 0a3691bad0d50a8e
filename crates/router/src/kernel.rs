//! The side effects of the router reconciler, behind two traits passed in by constructor:
//! [`Kernel`] (namespaces, rtnetlink, sysctls, conntrack, announcements, and for the
//! `openvswitch` interface driver the OVSDB of the integration bridge) and [`Firewall`]
//! (iptables per namespace). [`RealKernel`] and [`Managers`] do it for real; the tests use the
//! recording fakes of [`crate::fake`].

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ipnet::IpNet;

use l3agent_iptables::{Family, Hints, IptablesModel};
use l3agent_iptables_exec::{
    ApplyError, Backend, ExecOptions, GenerationSocket, Manager, NetnsTarget, ProcessRunner,
};
use l3agent_ovsdb::{Applied, ChangeSet, Ovsdb, OvsdbError, PortRecord};
use l3agent_rtnl::announce::Announcer;
use l3agent_rtnl::port::{create_veth_port, VethPort};
use l3agent_rtnl::prelude::*;
use l3agent_rtnl::sysctl::Sysctl;
use l3agent_rtnl::{conntrack, netns, Error, Netns, Rtnl};
use l3agent_supervise::{
    ConfigDigest, Error as SuperviseError, Key, Service, Supervisor, SyncFailure, SyncRole,
};
use l3agent_types::{IfName, MacAddr, NetnsName, RouterId};
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::Mode;

/// The rtnetlink operation families of one namespace, as one object.
pub trait Netlink: Links + Addresses + Routes + Rules + Neighbours {}
impl<T: Links + Addresses + Routes + Rules + Neighbours> Netlink for T {}

/// A veth between two of l3agent's namespaces (`rfp-` ↔ `fpr-`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkPair {
    /// Namespace of `dev`.
    pub ns: NetnsName,
    /// This end.
    pub dev: IfName,
    /// MAC of this end.
    pub mac: Option<MacAddr>,
    /// Namespace of the other end.
    pub peer_ns: NetnsName,
    /// The other end.
    pub peer: IfName,
    /// MAC of the other end.
    pub peer_mac: Option<MacAddr>,
    /// MTU of both ends.
    pub mtu: Option<u32>,
}

/// The device of a plugged OVS internal port, as it is configured in a router namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvsDevice {
    /// Its name (the OVS port's).
    pub name: IfName,
    /// MTU, set inside the namespace.
    pub mtu: u32,
    /// MAC (Neutron's port MAC).
    pub mac: Option<MacAddr>,
    /// Addresses.
    pub addresses: Vec<IpNet>,
}

/// How long one OVSDB request may take, and how long an apply waits for ovs-vswitchd to
/// make the devices it plugged.
pub const OVSDB_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the reconciler does to the kernel besides iptables.
pub trait Kernel {
    /// `ip netns list` contains `ns`.
    fn namespace_exists(&mut self, ns: &NetnsName) -> bool;
    /// `ip netns add`; false: it existed.
    fn create_namespace(&mut self, ns: &NetnsName) -> Result<bool, Error>;
    /// `ip netns del`; false: it did not exist.
    fn delete_namespace(&mut self, ns: &NetnsName) -> Result<bool, Error>;
    /// Netlink in `ns` (`None`: the host namespace, where the bridges are).
    fn netlink(&mut self, ns: Option<&NetnsName>) -> Result<&mut dyn Netlink, Error>;
    /// Reads sysctls inside `ns`; `None` for a key that does not exist (its device is missing).
    fn read_sysctls(&mut self, ns: &NetnsName, keys: &[Sysctl]) -> Result<Vec<Option<u32>>, Error>;
    /// Writes sysctls inside `ns`.
    fn write_sysctls(&mut self, ns: &NetnsName, values: &[(Sysctl, u32)]) -> Result<(), Error>;
    /// Creates a router port (veth, router end in `ns`, host end on a bridge), undone on failure.
    fn create_port(&mut self, ns: &NetnsName, port: &VethPort) -> Result<(), Error>;
    /// Creates a veth between two namespaces, both ends up; undone on failure.
    fn create_link(&mut self, link: &LinkPair) -> Result<(), Error>;
    /// Deletes conntrack entries to or from `ip` inside `ns`.
    fn flush_conntrack(&mut self, ns: &NetnsName, ip: IpAddr) -> Result<u64, Error>;
    /// Announces `addrs` on `dev` in the background.
    fn announce(&mut self, ns: &NetnsName, dev: &IfName, addrs: &[IpAddr]);
    /// Waits (at most `timeout`) until the kernel has finished tearing down the namespaces
    /// deleted so far: their devices and the host ends of their veths are gone (the kernel
    /// destroys a deleted namespace's devices asynchronously).
    fn settle(&mut self, timeout: std::time::Duration);
    /// Whether namespaces created by this process outlive it (not under `ip netns exec`):
    /// `Err` with the reason and what to do instead.
    fn namespaces_outlive_us(&mut self) -> Result<(), String>;
    /// `ovs-vsctl --db=unix:DB br-exists BRIDGE` (`openvswitch` driver).
    fn ovs_bridge_exists(&mut self, db: &Path, bridge: &IfName) -> Result<bool, OvsdbError>;
    /// `ovs-vsctl --db=unix:DB list-ports BRIDGE`, with each port's Interface row.
    fn ovs_ports(&mut self, db: &Path, bridge: &IfName) -> Result<Vec<PortRecord>, OvsdbError>;
    /// Plugs and unplugs OVS internal ports in ONE transaction, and waits until ovs-vswitchd
    /// has applied it (the devices of plugged ports exist in the host namespace, those of
    /// unplugged ones are gone, wherever they were).
    fn ovs_apply(&mut self, db: &Path, changes: &ChangeSet) -> Result<Applied, OvsdbError>;
    /// Moves the device of a plugged OVS port from the host namespace into `ns` (unless it is
    /// there already) and configures it there: MAC, MTU, up, addresses.
    fn attach_ovs_device(&mut self, ns: &NetnsName, dev: &OvsDevice) -> Result<(), Error>;
    /// The daemons of `router` that have files in the supervisor's directory `dir`, with
    /// whether each runs (in `ns`) and its config file.
    fn daemons(
        &mut self,
        dir: &Path,
        router: &RouterId,
        ns: &NetnsName,
    ) -> Result<BTreeMap<Service, DaemonState>, SuperviseError>;
    /// Every (router, daemon) with files in `dir`: the daemons of routers that are gone.
    fn daemon_keys(&mut self, dir: &Path) -> Result<Vec<Key>, SuperviseError>;
    /// Writes the config and starts the daemon in `ns`.
    fn start_daemon(
        &mut self,
        dir: &Path,
        key: &Key,
        ns: &NetnsName,
        config: &[u8],
    ) -> Result<(), SuperviseError>;
    /// Rewrites the config of a running daemon and has it reload.
    fn reload_daemon(
        &mut self,
        dir: &Path,
        key: &Key,
        ns: &NetnsName,
        config: &[u8],
    ) -> Result<(), SuperviseError>;
    /// Stops the daemon and removes its files.
    fn stop_daemon(&mut self, dir: &Path, key: &Key) -> Result<(), SuperviseError>;
    /// Tells the running conntrackd of `key` in `ns` that its router took `role`
    /// ([`Supervisor::conntrackd_sync`]): the commands that failed are returned (and
    /// ignored), an error means nothing ran or the role could not be recorded.
    fn sync_conntrackd(
        &mut self,
        dir: &Path,
        key: &Key,
        ns: &NetnsName,
        role: SyncRole,
    ) -> Result<Vec<SyncFailure>, SuperviseError>;
}

/// A daemon as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonState {
    /// It runs, in the router's namespace.
    pub running: bool,
    /// The digest of the config it was started or reloaded with (`None`: none).
    pub config: Option<ConfigDigest>,
    /// conntrackd: the VRRP role the running process was last synced for.
    pub synced: Option<SyncRole>,
}

/// How long a daemon has between SIGTERM and SIGKILL (radvd sends its final advertisements,
/// keepalived gives up its addresses in that time).
pub const DAEMON_GRACE: Duration = Duration::from_secs(5);

/// The kernel, for real: one netlink socket per namespace, opened on first use and kept.
///
/// Sysctls are read and written through directories of `/proc/sys` (`net/ipv4`, `net/ipv6`,
/// `net/netfilter`, …) opened once from inside each namespace and kept: a path below such a
/// directory resolves in that namespace from any thread, so no thread enters the namespace
/// per read or write. It is also much cheaper to resolve: `/proc/sys/net/ipv4` and its siblings
/// exist once per namespace under the same parent, so every lookup of a full path scans the
/// entries of all namespaces on the host (thousands of them on a busy host).
#[derive(Debug)]
pub struct RealKernel {
    host: HostRtnl,
    open: HashMap<NetnsName, (Netns, Rtnl)>,
    /// Per namespace, its `/proc/sys` directories opened so far, by path (`net/ipv4`).
    sysctl_dirs: HashMap<NetnsName, HashMap<String, OwnedFd>>,
    announcer: Announcer,
    /// Host ends of the ports of namespaces deleted, until they are seen gone.
    dying: Vec<IfName>,
    /// The OVSDB client (`openvswitch` driver), for the socket it was made for; connected on
    /// first use.
    ovsdb: Option<(PathBuf, Ovsdb)>,
    /// Where what is open per namespace comes from and goes back to (see [`Opened`]).
    kept: Option<Opened>,
}

/// The host's netlink socket, there from [`RealKernel`]'s making until its drop hands it back
/// to what [`Opened`] keeps.
#[derive(Debug)]
struct HostRtnl(Option<Rtnl>);

impl std::ops::Deref for HostRtnl {
    type Target = Rtnl;
    fn deref(&self) -> &Rtnl {
        self.0
            .as_ref()
            .expect("the host socket is there until drop")
    }
}

impl std::ops::DerefMut for HostRtnl {
    fn deref_mut(&mut self) -> &mut Rtnl {
        self.0
            .as_mut()
            .expect("the host socket is there until drop")
    }
}

/// What one namespace's handle, netlink socket and `/proc/sys` directories are, once open.
type NsOpen = ((Netns, Rtnl), HashMap<String, OwnedFd>);

/// What [`RealKernel`]s opened per namespace, handed from one to the next by a caller that
/// applies again and again (the agent): an event's apply then starts no thread to enter the
/// namespace (opening its netlink socket and its `/proc/sys` directories does; on a busy host
/// that was a millisecond or more of each event). One set per namespace is kept; a namespace
/// l3agent deletes or creates is forgotten, and one whose name now denotes another namespace
/// (deleted and made anew by someone else) is opened again. The host's netlink socket is
/// kept too (a socket less to open and bind per apply).
#[derive(Debug, Clone, Default)]
pub struct Opened(Arc<Mutex<KeptOpen>>);

#[derive(Debug, Default)]
struct KeptOpen {
    namespaces: HashMap<NetnsName, NsOpen>,
    host: Option<Rtnl>,
}

impl Opened {
    /// Nothing open yet.
    pub fn new() -> Opened {
        Opened::default()
    }

    /// The namespaces with something kept.
    pub fn len(&self) -> usize {
        locked(&self.0).namespaces.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops what is kept of namespaces whose names are gone or denote another namespace
    /// now (deleted by someone else): a kept handle would keep such a namespace, and its
    /// devices, alive. Returns how many.
    pub fn prune(&self) -> usize {
        let kept = &mut locked(&self.0).namespaces;
        let before = kept.len();
        kept.retain(|_, ((n, _), _)| n.still_named());
        before - kept.len()
    }

    fn take(&self, ns: &NetnsName) -> Option<NsOpen> {
        let taken = locked(&self.0).namespaces.remove(ns)?;
        taken.0 .0.still_named().then_some(taken)
    }

    fn forget(&self, ns: &NetnsName) {
        locked(&self.0).namespaces.remove(ns);
    }

    fn put(&self, ns: NetnsName, open: NsOpen) {
        locked(&self.0).namespaces.entry(ns).or_insert(open);
    }

    fn take_host(&self) -> Option<Rtnl> {
        locked(&self.0).host.take()
    }

    fn put_host(&self, host: Rtnl) {
        locked(&self.0).host.get_or_insert(host);
    }
}

/// A sysctl's path split into the directory opened inside the namespace (its first two
/// components, `net/ipv4`) and the rest (`conf/all/forwarding`).
fn split_sysctl(key: &Sysctl) -> (String, String) {
    let path = key.path();
    let mut parts = path.splitn(3, '/');
    let (a, b, rest) = (parts.next(), parts.next(), parts.next());
    match (a, b, rest) {
        (Some(a), Some(b), Some(rest)) => (format!("{a}/{b}"), rest.to_owned()),
        _ => (String::new(), path),
    }
}

impl RealKernel {
    /// Works from the caller's namespace as the host; announcements go through `announcer`.
    pub fn new(announcer: Announcer) -> Result<RealKernel, Error> {
        Ok(RealKernel::with_host(announcer, Rtnl::current()?, None))
    }

    /// Like [`RealKernel::new`], taking what is open per namespace from `kept`, and giving
    /// it back when dropped.
    pub fn keeping(announcer: Announcer, kept: Opened) -> Result<RealKernel, Error> {
        let host = match kept.take_host() {
            Some(host) => host,
            None => Rtnl::current()?,
        };
        Ok(RealKernel::with_host(announcer, host, Some(kept)))
    }

    fn with_host(announcer: Announcer, host: Rtnl, kept: Option<Opened>) -> RealKernel {
        RealKernel {
            host: HostRtnl(Some(host)),
            open: HashMap::new(),
            sysctl_dirs: HashMap::new(),
            announcer,
            dying: Vec::new(),
            ovsdb: None,
            kept,
        }
    }

    /// The OVSDB client for `db` (made on first use, or anew for another socket).
    fn ovsdb(&mut self, db: &Path) -> &mut Ovsdb {
        if self.ovsdb.as_ref().is_none_or(|(p, _)| p != db) {
            self.ovsdb = Some((db.to_path_buf(), Ovsdb::new(db, OVSDB_TIMEOUT)));
        }
        &mut self.ovsdb.as_mut().expect("set above").1
    }

    fn entry(&mut self, ns: &NetnsName) -> Result<&mut (Netns, Rtnl), Error> {
        if !self.open.contains_key(ns) {
            let (open, dirs) = match self.kept.as_ref().and_then(|k| k.take(ns)) {
                Some(kept) => kept,
                None => {
                    let n = Netns::open(ns)?;
                    let r = Rtnl::open(&n)?;
                    ((n, r), HashMap::new())
                }
            };
            self.open.insert(ns.clone(), open);
            if !dirs.is_empty() {
                self.sysctl_dirs.insert(ns.clone(), dirs);
            }
        }
        Ok(self.open.get_mut(ns).expect("inserted above"))
    }

    /// Opens (from inside `ns`, one thread for all) those of `dirs` not open yet; a directory
    /// that does not exist is left out (and tried again next time).
    fn open_sysctl_dirs(&mut self, ns: &NetnsName, dirs: &[&str]) -> Result<(), Error> {
        let known = self.sysctl_dirs.get(ns);
        let missing: Vec<String> = dirs
            .iter()
            .filter(|d| !d.is_empty() && !known.is_some_and(|k| k.contains_key(**d)))
            .map(|d| (*d).to_owned())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let (n, _) = self.entry(ns)?;
        let opened: Vec<(String, OwnedFd)> = n.run::<_, Error>(move || {
            missing
                .into_iter()
                .filter_map(|d| {
                    std::fs::File::open(format!("/proc/sys/{d}"))
                        .ok()
                        .map(|f| (d, OwnedFd::from(f)))
                })
                .collect()
        })?;
        self.sysctl_dirs
            .entry(ns.clone())
            .or_default()
            .extend(opened);
        Ok(())
    }

    /// Opens `/proc/sys/<key>` of `ns` for reading or writing, through its directory.
    fn open_sysctl(
        &mut self,
        ns: &NetnsName,
        key: &Sysctl,
        write: bool,
    ) -> Result<std::fs::File, std::io::Error> {
        let (dir, rest) = split_sysctl(key);
        let Some(fd) = self.sysctl_dirs.get(ns).and_then(|d| d.get(&dir)) else {
            return Err(std::io::Error::from(nix::errno::Errno::ENOENT));
        };
        let flags = if write {
            OFlag::O_WRONLY | OFlag::O_CLOEXEC
        } else {
            OFlag::O_RDONLY | OFlag::O_CLOEXEC
        };
        openat(fd, rest.as_str(), flags, Mode::empty())
            .map(std::fs::File::from)
            .map_err(std::io::Error::from)
    }

    /// Forgets what is open in `ns` (it is deleted or made anew).
    fn close(&mut self, ns: &NetnsName) {
        self.open.remove(ns);
        self.sysctl_dirs.remove(ns);
        if let Some(k) = &self.kept {
            k.forget(ns);
        }
    }
}

impl Drop for RealKernel {
    fn drop(&mut self) {
        if let Some(kept) = &self.kept {
            for (ns, open) in self.open.drain() {
                let dirs = self.sysctl_dirs.remove(&ns).unwrap_or_default();
                kept.put(ns, (open, dirs));
            }
            if let Some(host) = self.host.0.take() {
                kept.put_host(host);
            }
        }
    }
}

impl Kernel for RealKernel {
    fn namespace_exists(&mut self, ns: &NetnsName) -> bool {
        netns::exists(ns)
    }

    fn namespaces_outlive_us(&mut self) -> Result<(), String> {
        // Once seen right, not read again by this process: its mount namespace cannot change
        // under it, and reading /proc/self/mountinfo with a thousand namespaces mounted costs
        // milliseconds, every apply of one router. (A failure is read again each time: it
        // may be fixed.)
        static SEEN_RIGHT: std::sync::atomic::AtomicBool =
            std::sync::atomic::AtomicBool::new(false);
        if SEEN_RIGHT.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        netns::check_host_visible().map_err(|e| e.to_string())?;
        SEEN_RIGHT.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    fn create_namespace(&mut self, ns: &NetnsName) -> Result<bool, Error> {
        self.close(ns);
        netns::create(ns)
    }

    fn delete_namespace(&mut self, ns: &NetnsName) -> Result<bool, Error> {
        // The host ends of its ports (`tap` + the port id part of `qr-`/`qg-`/`sg-`/`fg-`)
        // go when the kernel destroys the namespace, asynchronously: remembered for settle().
        if let Ok((_, r)) = self.entry(ns) {
            if let Ok(links) = r.links() {
                for l in links {
                    let port = ["qr-", "qg-", "sg-", "fg-"]
                        .iter()
                        .find_map(|p| l.name.strip_prefix(p));
                    if let Some(rest) = port {
                        if let Ok(t) = IfName::new("host end", &format!("tap{rest}")) {
                            self.dying.push(t);
                        }
                    }
                }
            }
        }
        self.close(ns);
        netns::delete(ns)
    }

    fn netlink(&mut self, ns: Option<&NetnsName>) -> Result<&mut dyn Netlink, Error> {
        match ns {
            None => Ok(&mut *self.host),
            Some(ns) => Ok(&mut self.entry(ns)?.1),
        }
    }

    fn read_sysctls(&mut self, ns: &NetnsName, keys: &[Sysctl]) -> Result<Vec<Option<u32>>, Error> {
        let dirs: Vec<(String, String)> = keys.iter().map(split_sysctl).collect();
        self.open_sysctl_dirs(
            ns,
            &dirs.iter().map(|(d, _)| d.as_str()).collect::<Vec<_>>(),
        )?;
        Ok(keys
            .iter()
            .map(|k| {
                let mut text = String::new();
                self.open_sysctl(ns, k, false)
                    .and_then(|mut f| f.read_to_string(&mut text))
                    .ok()
                    .and_then(|_| text.trim().parse().ok())
            })
            .collect())
    }

    fn write_sysctls(&mut self, ns: &NetnsName, values: &[(Sysctl, u32)]) -> Result<(), Error> {
        let dirs: Vec<(String, String)> = values.iter().map(|(k, _)| split_sysctl(k)).collect();
        self.open_sysctl_dirs(
            ns,
            &dirs.iter().map(|(d, _)| d.as_str()).collect::<Vec<_>>(),
        )?;
        // The first failure stops the batch and is returned with the key, value and namespace.
        for (key, value) in values {
            let what = format!("sysctl {}={value} in {ns}", key.name());
            self.open_sysctl(ns, key, true)
                .and_then(|mut f| f.write_all(format!("{value}\n").as_bytes()))
                .map_err(|source| Error::Io { what, source })?;
        }
        Ok(())
    }

    fn create_port(&mut self, ns: &NetnsName, port: &VethPort) -> Result<(), Error> {
        self.entry(ns)?;
        let (n, r) = self.open.get_mut(ns).expect("opened above");
        create_veth_port(&mut *self.host, r, n, port)
    }

    fn create_link(&mut self, link: &LinkPair) -> Result<(), Error> {
        self.entry(&link.ns)?;
        self.entry(&link.peer_ns)?;
        let peer_fd = {
            let (pn, _) = &self.open[&link.peer_ns];
            pn.fd().try_clone_to_owned().map_err(|source| Error::Io {
                what: format!("duplicating the descriptor of {}", link.peer_ns),
                source,
            })?
        };
        // A stale peer end (its pair's namespace was deleted while something held it) would
        // make the creation fail: it is ours (an l3agent namespace, an l3agent name), remove it.
        {
            let (_, p) = self.open.get_mut(&link.peer_ns).expect("opened above");
            if p.link(&link.peer)?.is_some() {
                p.delete_link(&link.peer)?;
            }
        }
        let result = (|| {
            let (_, r) = self.open.get_mut(&link.ns).expect("opened above");
            r.add_veth(
                &link.dev,
                &link.peer,
                Some(std::os::fd::AsFd::as_fd(&peer_fd)),
                link.mtu,
            )?;
            if let Some(m) = link.mac {
                r.set_mac(&link.dev, m.octets())?;
            }
            r.set_up(&link.dev, true)?;
            let (_, p) = self.open.get_mut(&link.peer_ns).expect("opened above");
            if let Some(m) = link.peer_mac {
                p.set_mac(&link.peer, m.octets())?;
            }
            p.set_up(&link.peer, true)
        })();
        if result.is_err() {
            let (_, r) = self.open.get_mut(&link.ns).expect("opened above");
            let _ = r.delete_link(&link.dev);
        }
        result
    }

    fn flush_conntrack(&mut self, ns: &NetnsName, ip: IpAddr) -> Result<u64, Error> {
        let (n, _) = self.entry(ns)?;
        conntrack::delete_entries(n, ip)
    }

    fn announce(&mut self, ns: &NetnsName, dev: &IfName, addrs: &[IpAddr]) {
        self.announcer
            .announce(Some(ns.clone()), dev.clone(), addrs.to_vec());
    }

    fn ovs_bridge_exists(&mut self, db: &Path, bridge: &IfName) -> Result<bool, OvsdbError> {
        self.ovsdb(db).bridge_exists(bridge)
    }

    fn ovs_ports(&mut self, db: &Path, bridge: &IfName) -> Result<Vec<PortRecord>, OvsdbError> {
        self.ovsdb(db).ports(bridge)
    }

    fn ovs_apply(&mut self, db: &Path, changes: &ChangeSet) -> Result<Applied, OvsdbError> {
        self.ovsdb(db).apply(changes)
    }

    fn attach_ovs_device(&mut self, ns: &NetnsName, dev: &OvsDevice) -> Result<(), Error> {
        self.entry(ns)?;
        let (n, r) = self.open.get_mut(ns).expect("opened above");
        if r.link(&dev.name)?.is_none() {
            if self.host.link(&dev.name)?.is_none() {
                return Err(Error::NoDevice {
                    what: format!("moving the device of OVS port {} to {ns}", dev.name),
                    netns: self.host.netns().to_owned(),
                    device: dev.name.to_string(),
                });
            }
            self.host.move_to(&dev.name, n.fd(), ns.as_str())?;
        }
        if let Some(m) = dev.mac {
            r.set_mac(&dev.name, m.octets())?;
        }
        r.set_mtu(&dev.name, dev.mtu)?;
        r.set_up(&dev.name, true)?;
        for a in &dev.addresses {
            r.add_address(&dev.name, *a, true)?;
        }
        Ok(())
    }

    fn daemons(
        &mut self,
        dir: &Path,
        router: &RouterId,
        ns: &NetnsName,
    ) -> Result<BTreeMap<Service, DaemonState>, SuperviseError> {
        // Read-only (plan, status): nothing is created.
        if !dir.exists() {
            return Ok(BTreeMap::new());
        }
        let sup = Supervisor::new(dir)?;
        let mut out = BTreeMap::new();
        for service in Service::ALL {
            let key = Key {
                router: router.clone(),
                service,
            };
            let o = sup.observe(&key, ns)?;
            if o.running || o.config.is_some() || o.pid.is_some() {
                out.insert(
                    service,
                    DaemonState {
                        running: o.running,
                        config: o.config,
                        synced: o.synced,
                    },
                );
            }
        }
        Ok(out)
    }

    fn daemon_keys(&mut self, dir: &Path) -> Result<Vec<Key>, SuperviseError> {
        if !dir.exists() {
            return Ok(Vec::new());
        }
        Supervisor::new(dir)?.list()
    }

    fn start_daemon(
        &mut self,
        dir: &Path,
        key: &Key,
        ns: &NetnsName,
        config: &[u8],
    ) -> Result<(), SuperviseError> {
        Supervisor::new(dir)?.start(key, ns, config).map(|_| ())
    }

    fn reload_daemon(
        &mut self,
        dir: &Path,
        key: &Key,
        ns: &NetnsName,
        config: &[u8],
    ) -> Result<(), SuperviseError> {
        Supervisor::new(dir)?.reload(key, ns, config)
    }

    fn stop_daemon(&mut self, dir: &Path, key: &Key) -> Result<(), SuperviseError> {
        Supervisor::new(dir)?.stop(key, DAEMON_GRACE)
    }

    fn sync_conntrackd(
        &mut self,
        dir: &Path,
        key: &Key,
        ns: &NetnsName,
        role: SyncRole,
    ) -> Result<Vec<SyncFailure>, SuperviseError> {
        Supervisor::new(dir)?.conntrackd_sync(key, ns, role)
    }

    fn settle(&mut self, timeout: std::time::Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while !self.dying.is_empty() && std::time::Instant::now() < deadline {
            let Ok(links) = self.host.links() else { break };
            let present: std::collections::HashSet<String> =
                links.into_iter().map(|l| l.name).collect();
            self.dying.retain(|d| present.contains(d.as_str()));
            if !self.dying.is_empty() {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        self.dying.clear();
    }
}

/// iptables per namespace, as the reconciler needs it.
pub trait Firewall {
    /// The restore input per family that [`Firewall::apply`] would send now to make `ns` hold
    /// `model`; with `exists == false` the namespace does not exist yet or this run has just
    /// created it, and the plan is made against an empty rule set (which an apply right after
    /// then sends as planned, without reading the kernel).
    fn plan(
        &mut self,
        ns: &NetnsName,
        model: &IptablesModel,
        exists: bool,
    ) -> Result<Vec<(Family, Vec<String>)>, ApplyError>;
    /// Makes `ns` hold `model`; returns what was sent per family.
    fn apply(
        &mut self,
        ns: &NetnsName,
        model: &IptablesModel,
    ) -> Result<Vec<(Family, Vec<String>)>, ApplyError>;
    /// The namespace went away: forget what is known of it.
    fn forget(&mut self, ns: &NetnsName);
    /// Forget every committed state: the next plan reads the kernel again (drift checks).
    fn refresh(&mut self);
    /// The rules of the model `ns` was last given, as resolved (for the next compile of the
    /// namespace, see [`l3agent_iptables::Hints`]); `None` if there is none.
    fn hints(&self, _ns: &NetnsName) -> Option<Arc<Hints>> {
        None
    }
}

/// One namespace's manager, shared by the clones of [`Managers`].
type Shared = Arc<Mutex<Entry>>;

/// A manager, and what proves its knowledge of the kernel still holds.
#[derive(Debug)]
struct Entry {
    m: Manager<ProcessRunner>,
    /// nf_tables only: a socket asking the namespace's ruleset generation.
    gen: Option<GenerationSocket>,
    /// The generation at which what `m` knows was true (`None`: unknown).
    seen: Option<u32>,
}

impl Entry {
    fn generation(&self) -> Option<u32> {
        self.gen.as_ref().and_then(|g| g.query().ok())
    }

    /// After a step that started at generation `before` and made `ours` commits: what the
    /// manager knows holds at the generation now if nobody else wrote meanwhile.
    fn settle(&mut self, before: Option<u32>, ours: u32) {
        let now = self.generation();
        self.seen = match (before, now) {
            (Some(b), Some(n)) if n == b.wrapping_add(ours) => Some(n),
            _ => None,
        };
    }

    fn refresh(&mut self) {
        self.m.refresh();
        self.seen = None;
    }

    /// Before a plan or an apply: on nf_tables, a manager that cannot prove its knowledge
    /// (the generation moved since it last saw the rules: another writer; a step failed)
    /// reads the kernel again: one `NFT_MSG_GETGEN`, no process, re-checks every namespace
    /// an event touches. Returns the generation the step starts from. Without a generation
    /// (legacy), what the manager knows is trusted until the next drift check.
    fn prepare(&mut self) -> Option<u32> {
        let now = self.generation();
        if self.gen.is_some() && (self.seen.is_none() || now != self.seen) {
            self.refresh();
        }
        now
    }
}

/// Long-lived iptables [`Manager`]s, one per namespace. Clones share them: the agent gives
/// each apply worker a clone of one `Managers`, so that what a manager knows of its
/// namespace (the rules committed by the last apply) outlives the batch and an event only
/// sends what changed, without reading the kernel first. A namespace's manager is used by
/// one worker at a time (its own lock); different namespaces proceed in parallel.
#[derive(Debug, Clone)]
pub struct Managers {
    backend: Backend,
    managers: Arc<Mutex<HashMap<NetnsName, Shared>>>,
    /// The namespaces whose restore was started ahead (see [`Managers::prestart`]), and when.
    prestarted: Arc<Mutex<Vec<(NetnsName, Instant)>>>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A namespace's manager, locked. A worker that panicked mid-apply left a manager whose
/// committed state may be wrong: it reads the kernel again.
fn use_manager(m: &Shared) -> MutexGuard<'_, Entry> {
    m.lock().unwrap_or_else(|e| {
        m.clear_poison();
        let mut g = e.into_inner();
        g.refresh();
        g
    })
}

impl Managers {
    /// Managers that write with `backend`.
    pub fn new(backend: Backend) -> Managers {
        Managers {
            backend,
            managers: Arc::default(),
            prestarted: Arc::default(),
        }
    }

    /// Starts the restore of `family` in `ns` ahead of the apply about to come (see
    /// [`ProcessRunner::prestart`]), if `ns` has a manager (a namespace this process wrote
    /// before: a new one is read before anything is restored there) on the nf_tables backend.
    /// Returns whether one was started. Each one started is ended by the first
    /// [`Managers::release_prestarted`] with a later time, if its apply did not use it.
    pub fn prestart(&self, ns: &NetnsName, family: Family) -> bool {
        let Some(shared) = locked(&self.managers).get(ns).cloned() else {
            return false;
        };
        let started = use_manager(&shared).m.runner().prestart(family);
        match started {
            Ok(true) => {
                locked(&self.prestarted).push((ns.clone(), Instant::now()));
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::debug!(%ns, error = %e, "no restore started ahead; the apply starts its own");
                false
            }
        }
    }

    /// Ends the restores started ahead before `before` that their apply did not use (an
    /// event whose change held no rule of theirs); how many there were.
    pub fn release_prestarted(&self, before: Instant) -> usize {
        let due: Vec<NetnsName> = {
            let mut p = locked(&self.prestarted);
            let (due, later) = p.drain(..).partition(|(_, at)| *at < before);
            *p = later;
            due.into_iter().map(|(ns, _)| ns).collect()
        };
        due.iter()
            .filter_map(|ns| locked(&self.managers).get(ns).cloned())
            .map(|shared| {
                let unused = use_manager(&shared).m.runner().release_prestarted();
                unused
            })
            .sum()
    }

    /// The namespaces that have a manager.
    pub fn namespaces(&self) -> Vec<NetnsName> {
        locked(&self.managers).keys().cloned().collect()
    }

    /// Chains and rules of the models the managers hold, over all namespaces and families
    /// (the `l3agent_iptables_chains` and `_rules` gauges).
    pub fn owned(&self) -> (u64, u64) {
        let all: Vec<Shared> = locked(&self.managers).values().cloned().collect();
        let (mut chains, mut rules) = (0u64, 0u64);
        for m in all {
            let m = use_manager(&m);
            let model = m.m.model();
            for family in model.families() {
                for table in model.tables_of(family) {
                    for chain in model
                        .table(family, table)
                        .map(|t| t.chains.values())
                        .into_iter()
                        .flatten()
                    {
                        chains += 1;
                        rules += chain.rules().count() as u64;
                    }
                }
            }
        }
        (chains, rules)
    }

    /// The manager of `ns` (made on first use), holding `model`.
    fn manager(&self, ns: &NetnsName, model: &IptablesModel) -> Result<Shared, ApplyError> {
        let existing = locked(&self.managers).get(ns).cloned();
        let shared = match existing {
            Some(m) => m,
            None => {
                let target = NetnsTarget::Named(ns.clone());
                let runner =
                    ProcessRunner::open_assuming(&target, self.backend, ExecOptions::default())?;
                // Without a generation socket every drift check reads the kernel.
                let gen = match self.backend {
                    Backend::Nft => l3agent_rtnl::Netns::open(ns)
                        .ok()
                        .and_then(|n| GenerationSocket::open(Some(&n)).ok()),
                    Backend::Legacy => None,
                };
                let made = Arc::new(Mutex::new(Entry {
                    m: Manager::with_runner(model.clone(), runner),
                    gen,
                    seen: None,
                }));
                locked(&self.managers)
                    .entry(ns.clone())
                    .or_insert(made)
                    .clone()
            }
        };
        // Only the chains this compile changed are planned again.
        use_manager(&shared).m.update_model(model);
        Ok(shared)
    }

    /// Before a drift check: every manager whose namespace's rules may have changed since it
    /// last read or wrote them forgets what it knows (its next plan reads the kernel); on
    /// nf_tables, one whose namespace's ruleset generation is still the one it saw keeps it,
    /// and its check starts no process. Returns how many forgot.
    pub fn refresh_changed(&self) -> usize {
        let all: Vec<Shared> = locked(&self.managers).values().cloned().collect();
        let mut forgot = 0;
        for shared in all {
            let mut e = use_manager(&shared);
            if e.seen.is_none() || e.generation() != e.seen {
                e.refresh();
                forgot += 1;
            }
        }
        forgot
    }
}

fn lines(plans: Vec<(Family, l3agent_iptables::Plan)>) -> Vec<(Family, Vec<String>)> {
    plans
        .into_iter()
        .filter(|(_, p)| !p.is_empty())
        .map(|(f, p)| (f, p.render().0.lines().map(str::to_owned).collect()))
        .collect()
}

impl Firewall for Managers {
    fn hints(&self, ns: &NetnsName) -> Option<Arc<Hints>> {
        let shared = locked(&self.managers).get(ns).cloned()?;
        let hints = use_manager(&shared).m.model().hints();
        Some(Arc::new(hints))
    }

    fn plan(
        &mut self,
        ns: &NetnsName,
        model: &IptablesModel,
        exists: bool,
    ) -> Result<Vec<(Family, Vec<String>)>, ApplyError> {
        if !exists {
            // Planned against an empty rule set. A namespace that is there was made by this
            // run a moment ago: its manager takes the empty rule set as the kernel's, so that
            // the apply that follows sends exactly this plan without reading the kernel first.
            locked(&self.managers).remove(ns);
            if let Ok(m) = self.manager(ns, model) {
                let mut e = use_manager(&m);
                e.m.assume_empty();
                let before = e.generation();
                let plans = e.m.plan()?;
                e.settle(before, 0);
                return Ok(lines(plans));
            }
            return Ok(Family::ALL
                .into_iter()
                .map(|f| (f, crate::compile::restore_text(model, f)))
                .filter(|(_, t)| !t.is_empty())
                .map(|(f, t)| (f, t.lines().map(str::to_owned).collect()))
                .collect());
        }
        let m = self.manager(ns, model)?;
        let mut e = use_manager(&m);
        let before = e.prepare();
        let plans = match e.m.plan() {
            Ok(p) => p,
            Err(err) => {
                e.seen = None;
                return Err(err);
            }
        };
        e.settle(before, 0);
        Ok(lines(plans))
    }

    fn apply(
        &mut self,
        ns: &NetnsName,
        model: &IptablesModel,
    ) -> Result<Vec<(Family, Vec<String>)>, ApplyError> {
        let m = self.manager(ns, model)?;
        let mut e = use_manager(&m);
        let before = e.prepare();
        let report = match e.m.apply() {
            Ok(r) => r,
            Err(err) => {
                e.seen = None;
                return Err(err);
            }
        };
        // One commit per family restored (iptables-nft-restore commits its input as one
        // batch); any other count means another writer too, and the next check reads.
        e.settle(before, u32::try_from(report.sent.len()).unwrap_or(u32::MAX));
        Ok(report
            .sent
            .into_iter()
            .map(|(f, t)| (f, t.lines().map(str::to_owned).collect()))
            .collect())
    }

    fn forget(&mut self, ns: &NetnsName) {
        locked(&self.managers).remove(ns);
    }

    fn refresh(&mut self) {
        let all: Vec<Shared> = locked(&self.managers).values().cloned().collect();
        for m in all {
            use_manager(&m).refresh();
        }
    }
}
