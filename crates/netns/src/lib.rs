//! The one network namespace abstraction of l3agent, used by every crate that touches a
//! namespace (`l3agent-rtnl`, `l3agent-iptables-exec`, `l3agent-process`, the test fixtures):
//!
//! - [`Netns`]: an open namespace (a descriptor that keeps it alive while held), by name
//!   ([`Netns::open`]) or the caller's own ([`Netns::current`]), with its identity [`NsId`]
//!   (the nsfs `dev`/`ino`, the same for every path to the same namespace: what locks are
//!   keyed by) and [`Netns::still_named`] to notice a name that no longer denotes it.
//! - [`Netns::run`] / [`in_netns`]: work on a dedicated thread that entered the namespace. The
//!   thread ends with the work: no thread ever returns to another namespace, and the caller's
//!   thread never changes namespace.
//! - [`create`], [`delete`], [`list`], [`exists`]: named namespaces exactly as `ip netns`
//!   makes them (a bind mount of the namespace on `/run/netns/<name>`, with `/run/netns` a
//!   shared mount), created in-process by a short-lived thread that unshares its network
//!   namespace: nothing forks, no `ip` process runs.
//!
//! It depends on nothing of l3agent but `l3agent-types` (for [`NetnsName`]), so that crates
//! which do not speak netlink (the iptables runner, the process spawner) can use it.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub use l3agent_types::NetnsName;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

/// Where iproute2 keeps named namespaces.
pub const NETNS_DIR: &str = "/run/netns";
const NSFS_MAGIC: i64 = 0x6e73_6673;
const CURRENT: &str = "/proc/thread-self/ns/net";

/// Opening, entering, creating or deleting a namespace failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// A named namespace does not exist.
    #[error("network namespace {0} does not exist")]
    NoNamespace(String),
    /// A file system or namespace operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A thread working inside a namespace panicked.
    #[error("{0} panicked")]
    Panicked(String),
    /// This process cannot create namespaces that outlive it (see [`check_host_visible`]).
    #[error(
        "this process runs in a private mount namespace (as under `ip netns exec`): network \
         namespaces it creates in {NETNS_DIR} would vanish when it exits. Run l3agent in the \
         host's mount namespace: from the root network namespace, or with `nsenter \
         --net=/run/netns/NAME l3agent ...`, which changes the network namespace only"
    )]
    PrivateMounts,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetnsError {
    let what = what.into();
    move |source| NetnsError::Io { what, source }
}

fn errno(what: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> NetnsError {
    let what = what.into();
    move |e| NetnsError::Io {
        what,
        source: e.into(),
    }
}

/// Which namespace: the caller's own, or one of `/run/netns`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetnsTarget {
    /// The namespace of the thread that opens it.
    Current,
    /// A named namespace, as `ip netns add` makes them.
    Named(NetnsName),
}

/// The identity of a namespace: its nsfs device and inode. Two handles with the same identity
/// are the same namespace, however they were opened. An identity is unique among live
/// namespaces; the kernel may reuse it once a namespace is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NsId {
    /// Device of the nsfs inode.
    pub dev: u64,
    /// The nsfs inode.
    pub ino: u64,
}

impl NsId {
    fn of(meta: &std::fs::Metadata) -> NsId {
        NsId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// `dev-ino`, e.g. for a lock file name.
impl std::fmt::Display for NsId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.dev, self.ino)
    }
}

/// An open network namespace: a descriptor that keeps it alive while held.
#[derive(Debug)]
pub struct Netns {
    file: File,
    name: Option<NetnsName>,
    id: NsId,
}

impl Netns {
    /// Opens `/run/netns/<name>`. A missing name is [`NetnsError::NoNamespace`].
    pub fn open(name: &NetnsName) -> Result<Netns, NetnsError> {
        let path = path_of(name);
        let file = File::open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => NetnsError::NoNamespace(name.to_string()),
            _ => io(format!("opening {}", path.display()))(e),
        })?;
        Netns::with(file, Some(name.clone()), &path)
    }

    /// The namespace of the calling thread.
    pub fn current() -> Result<Netns, NetnsError> {
        let file = File::open(CURRENT).map_err(io(format!("opening {CURRENT}")))?;
        Netns::with(file, None, Path::new(CURRENT))
    }

    /// Opens `target`: [`Netns::current`] or [`Netns::open`].
    pub fn open_target(target: &NetnsTarget) -> Result<Netns, NetnsError> {
        match target {
            NetnsTarget::Current => Netns::current(),
            NetnsTarget::Named(n) => Netns::open(n),
        }
    }

    fn with(file: File, name: Option<NetnsName>, path: &Path) -> Result<Netns, NetnsError> {
        let meta = file.metadata().map_err(io(format!(
            "identifying network namespace {}",
            path.display()
        )))?;
        Ok(Netns {
            id: NsId::of(&meta),
            file,
            name,
        })
    }

    /// The descriptor (for `setns`, or to move a device into the namespace).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// The name it was opened by; `None` for [`Netns::current`].
    pub fn name(&self) -> Option<&NetnsName> {
        self.name.as_ref()
    }

    /// The name, or "current", for messages.
    pub fn label(&self) -> &str {
        self.name.as_ref().map_or("current", NetnsName::as_str)
    }

    /// Its identity, taken when it was opened.
    pub fn id(&self) -> NsId {
        self.id
    }

    /// Whether its name still denotes this namespace (always true for [`Netns::current`]):
    /// false once the name was deleted, or given to another namespace.
    pub fn still_named(&self) -> bool {
        let Some(n) = &self.name else { return true };
        std::fs::metadata(path_of(n)).is_ok_and(|m| NsId::of(&m) == self.id)
    }

    /// Runs `f` on a dedicated thread inside this namespace and returns its result (see
    /// [`in_netns`]). A failure to get there comes back as the caller's error type `E`, so that
    /// `f` and the entering share one (`ns.run(|| -> Result<_, E> { .. })??`).
    pub fn run<T: Send, E: From<NetnsError>>(&self, f: impl FnOnce() -> T + Send) -> Result<T, E> {
        in_netns(self.fd(), f).map_err(E::from)
    }
}

/// Runs `f` on a dedicated thread that entered the namespace `fd`, and returns its result. The
/// thread ends with `f`: the caller's thread never changes namespace, whatever `f` does, and
/// no thread returns from the namespace. A panic in `f` is [`NetnsError::Panicked`].
pub fn in_netns<T: Send>(
    fd: BorrowedFd<'_>,
    f: impl FnOnce() -> T + Send,
) -> Result<T, NetnsError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(fd, CloneFlags::CLONE_NEWNET).map_err(errno("entering a network namespace"))?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| {
            Err(NetnsError::Panicked(
                "a thread working inside a network namespace".into(),
            ))
        })
    })
}

/// `/run/netns/<name>`.
pub fn path_of(name: &NetnsName) -> PathBuf {
    Path::new(NETNS_DIR).join(name.as_str())
}

/// Whether `/run/netns/<name>` is a namespace (an nsfs mount, not a leftover file).
pub fn exists(name: &NetnsName) -> bool {
    nix::sys::statfs::statfs(&path_of(name)).is_ok_and(|s| s.filesystem_type().0 == NSFS_MAGIC)
}

/// The names in `/run/netns` that are namespaces, sorted (what `ip netns list` shows).
pub fn list() -> Result<Vec<NetnsName>, NetnsError> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(format!("listing {NETNS_DIR}"))(e)),
    };
    let mut out: Vec<NetnsName> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| NetnsName::new("netns", n).ok())
        })
        .filter(exists)
        .collect();
    out.sort();
    Ok(out)
}

/// Makes `/run/netns` a shared mount point, as iproute2 does, so that namespaces mounted
/// there are seen by every mount namespace that shares it.
fn prepare_dir() -> Result<(), NetnsError> {
    std::fs::create_dir_all(NETNS_DIR).map_err(io(format!("creating {NETNS_DIR}")))?;
    let shared = |p: &str| {
        mount(
            None::<&str>,
            p,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared(NETNS_DIR) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL) => {
            mount(
                Some(NETNS_DIR),
                NETNS_DIR,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(errno(format!("bind-mounting {NETNS_DIR}")))?;
            shared(NETNS_DIR).map_err(errno(format!("making {NETNS_DIR} shared")))
        }
        Err(e) => Err(errno(format!("making {NETNS_DIR} shared"))(e)),
    }
}

/// Refuses to go on when namespaces created here would vanish at exit: `/run/netns` is a
/// mount point here without shared propagation (`ip netns exec` makes a mount namespace whose
/// copy of the host's mounts is a slave: `master:N`), or this process is in a mount namespace
/// other than init's and `/run/netns` is not a shared mount point in it. Either way the bind
/// mounts that name the namespaces never reach the host.
pub fn check_host_visible() -> Result<(), NetnsError> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(io("reading /proc/self/mountinfo"))?;
    let ours = std::fs::read_link("/proc/self/ns/mnt");
    let init = std::fs::read_link("/proc/1/ns/mnt");
    let private_ns = matches!((ours, init), (Ok(a), Ok(b)) if a != b);
    match netns_dir_mount(&info) {
        Some(shared) if !shared => Err(NetnsError::PrivateMounts),
        None if private_ns => Err(NetnsError::PrivateMounts),
        _ => Ok(()),
    }
}

/// Whether `/run/netns` is a mount point in this mountinfo (`None`: it is not) with shared
/// propagation (`proc(5)`: optional fields between the mount options and `-`, `shared:N`).
fn netns_dir_mount(mountinfo: &str) -> Option<bool> {
    mountinfo
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some(NETNS_DIR))
        .map(|l| {
            l.split(' ')
                .skip(6)
                .take_while(|f| *f != "-")
                .any(|f| f.starts_with("shared:"))
        })
}

/// `ip netns add NAME`, idempotent: returns whether it was created (false: it existed).
pub fn create(name: &NetnsName) -> Result<bool, NetnsError> {
    if exists(name) {
        return Ok(false);
    }
    prepare_dir()?;
    let path = path_of(name);
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o444)
        .open(&path)
        .map_err(io(format!("creating {}", path.display())))?;
    let made = std::thread::scope(|s| {
        s.spawn(|| -> Result<(), NetnsError> {
            unshare(CloneFlags::CLONE_NEWNET)
                .map_err(errno(format!("creating network namespace {name}")))?;
            mount(
                Some(CURRENT),
                &path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(errno(format!(
                "mounting network namespace {name} on {}",
                path.display()
            )))
        })
        .join()
        .unwrap_or_else(|_| {
            Err(NetnsError::Panicked(format!(
                "the thread creating network namespace {name}"
            )))
        })
    });
    if let Err(e) = made {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(true)
}

/// `ip netns delete NAME`: detaches the mount and removes the file. Returns whether it
/// existed. The namespace itself goes away when its last user (process, descriptor) does.
pub fn delete(name: &NetnsName) -> Result<bool, NetnsError> {
    let path = path_of(name);
    if !path.exists() {
        return Ok(false);
    }
    match umount2(&path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
        Err(e) => return Err(errno(format!("unmounting {}", path.display()))(e)),
    }
    std::fs::remove_file(&path).map_err(io(format!("removing {}", path.display())))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_run_netns_propagates_and_a_slave_one_does_not() {
        let shared = "45 27 254:0 /run/netns /run/netns rw,relatime shared:1 - ext4 /dev/vda rw\n";
        assert_eq!(netns_dir_mount(shared), Some(true));
        // Under `ip netns exec`: the host's mounts are copied as slaves (`master:N`).
        let slave = "612 600 254:0 /run/netns /run/netns rw,relatime master:1 - ext4 /dev/vda rw\n";
        assert_eq!(netns_dir_mount(slave), Some(false));
        let absent = "600 1 254:0 / / rw,relatime master:1 - ext4 /dev/vda rw\n";
        assert_eq!(netns_dir_mount(absent), None);
        // The last mount at the path is the visible one.
        assert_eq!(netns_dir_mount(&format!("{shared}{slave}")), Some(false));
    }
}
