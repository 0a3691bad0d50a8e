//! Named network namespaces, exactly as `ip netns add` makes them (a bind mount of the
//! namespace on `/run/netns/<name>`, with `/run/netns` a shared mount), created in-process: a
//! short-lived thread unshares its network namespace and bind-mounts it. Nothing forks, no
//! `ip` process runs, and no thread ever returns to another namespace: a thread that entered
//! one ends there.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use l3agent_types::NetnsName;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use crate::error::Error;

/// Where iproute2 keeps named namespaces.
pub const NETNS_DIR: &str = "/run/netns";
const NSFS_MAGIC: i64 = 0x6e73_6673;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

fn errno(what: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> Error {
    let what = what.into();
    move |e| Error::Io {
        what,
        source: e.into(),
    }
}

/// An open network namespace: a descriptor that keeps it alive while held.
#[derive(Debug)]
pub struct Netns {
    file: File,
    label: String,
}

impl Netns {
    /// Opens `/run/netns/<name>`.
    pub fn open(name: &NetnsName) -> Result<Netns, Error> {
        let path = path_of(name);
        let file = File::open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NoNamespace(name.to_string()),
            _ => Error::Io {
                what: format!("opening {}", path.display()),
                source: e,
            },
        })?;
        Ok(Netns {
            file,
            label: name.to_string(),
        })
    }

    /// The namespace of the calling thread.
    pub fn current() -> Result<Netns, Error> {
        let file = File::open("/proc/thread-self/ns/net")
            .map_err(io("opening /proc/thread-self/ns/net"))?;
        Ok(Netns {
            file,
            label: "current".into(),
        })
    }

    /// The descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// The name (or "current"), for messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Runs `f` on a dedicated thread inside this namespace and returns its result. The thread
    /// ends with `f`: the caller's thread never changes namespace, whatever `f` does (a panic in
    /// `f` is returned as an error).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, Error> {
        in_netns(self.fd(), f)
    }
}

/// Runs `f` on a dedicated thread that entered the namespace `fd` (see [`Netns::run`]).
pub fn in_netns<T: Send>(fd: BorrowedFd<'_>, f: impl FnOnce() -> T + Send) -> Result<T, Error> {
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(fd, CloneFlags::CLONE_NEWNET).map_err(errno("entering a network namespace"))?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| {
            Err(Error::Value(
                "a thread working inside a network namespace panicked".into(),
            ))
        })
    })
}

fn path_of(name: &NetnsName) -> PathBuf {
    Path::new(NETNS_DIR).join(name.as_str())
}

/// Whether `/run/netns/<name>` is a namespace (an nsfs mount, not a leftover file).
pub fn exists(name: &NetnsName) -> bool {
    nix::sys::statfs::statfs(&path_of(name)).is_ok_and(|s| s.filesystem_type().0 == NSFS_MAGIC)
}

/// The names in `/run/netns` that are namespaces, sorted (what `ip netns list` shows).
pub fn list() -> Result<Vec<NetnsName>, Error> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(Error::Io {
                what: format!("listing {NETNS_DIR}"),
                source: e,
            })
        }
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
fn prepare_dir() -> Result<(), Error> {
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

/// `ip netns add NAME`, idempotent: returns whether it was created (false: it existed).
pub fn create(name: &NetnsName) -> Result<bool, Error> {
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
        s.spawn(|| -> Result<(), Error> {
            unshare(CloneFlags::CLONE_NEWNET)
                .map_err(errno(format!("creating network namespace {name}")))?;
            mount(
                Some("/proc/thread-self/ns/net"),
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
        .unwrap_or_else(|_| Err(Error::Value("namespace creation thread panicked".into())))
    });
    if let Err(e) = made {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(true)
}

/// `ip netns delete NAME`: detaches the mount and removes the file. Returns whether it
/// existed. The namespace itself goes away when its last user (process, descriptor) does.
pub fn delete(name: &NetnsName) -> Result<bool, Error> {
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
