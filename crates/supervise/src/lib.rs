//! One supervisor for the daemons l3agent runs per router inside the router's network
//! namespace (`qrouter-<id>`): radvd, haproxy (the metadata proxy), keepalived and conntrackd.
//!
//! It is the "do" for supervised processes: the router reconciler [`observe`]s what runs and
//! calls [`start`], [`reload`] or [`stop`] as its diff decides. There is no background thread:
//! respawn is the reconciler calling `observe` then `start` at every drift check (Neutron's
//! `ProcessMonitor` does the same every 60 s). Calls for one [`Key`] must not overlap (the
//! reconciler runs one worker per router); different keys are independent.
//!
//! [`observe`]: Supervisor::observe
//! [`start`]: Supervisor::start
//! [`reload`]: Supervisor::reload
//! [`stop`]: Supervisor::stop
//!
//! # Files
//!
//! Everything lives in one directory, `<state_path>/daemons`, created 0700 (it holds VRRP
//! passwords; an existing one must be a real directory of ours without group or other
//! access). Names come from typed ids only ([`RouterId`] is validated: no `/`, no `.`), so the
//! key of every file can be read back from its name ([`Supervisor::list`]):
//!
//! | file | what |
//! |---|---|
//! | `<router>.<service>.conf` | the config, written by us: 0600, temporary + fsync + rename |
//! | `<router>.<service>.pid` | the daemon's pid (written by the daemon; by us for conntrackd) |
//! | `<router>.<service>.log` | stdout and stderr of the last start (radvd's config errors) |
//! | `<router>.<service>.applied` | digest of the config the daemon was last given |
//! | `<router>.keepalived.vrrp.pid` | keepalived's VRRP child |
//! | `<router>.conntrackd.lock`, `<router>.conntrackd.ctl` | conntrackd's `LockFile` and `UNIX Path` |
//! | `<router>.conntrackd.synced` | the VRRP role conntrackd was last synced for, and its pid ([`Supervisor::conntrackd_sync`]) |
//! | `.<router>.<service>.*.tmp-*` | a temporary being written (removed by `stop`) |
//!
//! [`Supervisor::paths`] is a pure function of the directory and the key, so the router
//! compiler can render configs that name these files (haproxy's `pidfile`, conntrackd's
//! `LockFile` and `UNIX { Path }`). Every file is opened with `O_NOFOLLOW` (and `O_NONBLOCK`
//! where a FIFO could make us wait); a link, FIFO or directory planted at one of our names is
//! refused ([`Error::Unsafe`]) by `observe`, `start` and `reload`, and removed (never followed)
//! by `stop`.
//!
//! # Which process is ours
//!
//! A pid is only ever signalled when `/proc/<pid>/cmdline` is the daemon's (its `argv[0]` is the
//! service's program, and one argument is exactly this key's config path), checked through a
//! pidfd, so that a pid recycled between the check and the signal is not hit. A pid file
//! holding garbage, a negative number, 0, 1, or the pid of anything else reads as "not
//! running" and is never signalled. [`Observed::running`] also needs the process to be in the
//! router's namespace (`/proc/<pid>/ns/net` has the nsfs dev and inode of
//! `/run/netns/<name>`). Neutron only looks for the router id in the cmdline, so a recycled
//! pid, or a daemon left in a deleted namespace, counts as running there.
//!
//! # Per service
//!
//! | service | argv (absolute program path) | reload | stop |
//! |---|---|---|---|
//! | radvd | `radvd -C <conf> -p <pid> -m syslog` | SIGHUP | SIGTERM |
//! | haproxy | `haproxy -f <conf>` | stop + start | SIGTERM |
//! | keepalived | `keepalived -P -B -f <conf> -p <pid> -r <vrrp pid>` | SIGHUP | SIGTERM |
//! | conntrackd | `conntrackd -d -C <conf>` | stop + start | SIGTERM |
//!
//! - **radvd** detaches by itself and writes its pid file; it runs as root without `-u`
//!   (Neutron's `radvd_user = root`). Config syntax errors go to stderr whatever `-m` says, and
//!   radvd exits 1 before detaching: they come back in the start error. On SIGTERM radvd sends
//!   a final advertisement with router lifetime 0, so hosts drop it as their default router at
//!   once. Neutron stops radvd with SIGKILL, which leaves every host with a dead default
//!   router until the advertised lifetime (default 3 x MaxRtrAdvInterval = 300 s) runs out.
//! - **haproxy** detaches when the config says `daemon` and writes the pid file its config
//!   names in `pidfile` (which must be [`Paths::pid`]); it leaves the pid file behind when it
//!   exits. Without the master-worker mode it has no reload signal (SIGHUP only dumps server
//!   states, `man haproxy`), so reload checks the new config (`haproxy -c`) and then stops
//!   and starts it: no listener for the time of a start, and no request answered by a stale
//!   config.
//! - **keepalived** gets `-B` (no BFD) besides Neutron's arguments: 2.2.7 run with `-P` alone
//!   still reads `/run/bfd.pid`, and when that names a live process (any other keepalived on
//!   the host with BFD, or a recycled pid) it silently exits 0 without starting. With `-P -B`
//!   and its own `-p`/`-r` the only files it writes are its two pid files (checked with
//!   `strace`; on SIGHUP it only re-reads the config). Its VRRP child dies with the parent,
//!   even on SIGKILL (2.2.7 then removes the child's pid file itself); an orphan left by
//!   anything else is found by argv and killed before a fresh start (Neutron bug #1511311). Reload writes the new config **first** and then sends SIGHUP
//!   (Neutron sends SIGHUP before rewriting the file, so keepalived may re-read the old one);
//!   the new config is checked with `keepalived -t` first, so a broken one never replaces a
//!   working one. SIGTERM makes it remove its VIPs and exit with its child. Throttling repeated
//!   SIGHUPs (#1647432) is the caller's; an unchanged config sends no signal at all.
//! - **conntrackd** detaches with `-d` and writes no pid file: after the start we find the
//!   process whose argv is exactly ours in the router's namespace and write the pid file
//!   ourselves (Neutron runs `pgrep -f`, which also matches in any namespace). A stale
//!   `LockFile` (left by a SIGKILL) makes conntrackd refuse to start, and its errors go to its
//!   log, not stderr: the lock and the control socket are removed before every start, once no
//!   conntrackd of this key runs. SIGTERM removes both (Neutron's `conntrackd -k` does the
//!   same through the control socket). Its man page documents no config reload (Neutron never
//!   reloads it either): reload restarts it.
//!   [`Supervisor::conntrackd_sync`] runs the commands Neutron's state-change script runs on
//!   a VRRP transition (`conntrackd -C <conf> -c`, `-f`, `-R`, `-B` on the primary; `-t`,
//!   `-n` on a backup), each in the router's namespace, and records the role with the
//!   daemon's pid in `<router>.conntrackd.synced`: [`Observed::synced`] reports it while that
//!   very process runs, so a restart of l3agent does not sync again, and a conntrackd started
//!   again (empty caches) is synced again.
//!
//! # Bounded
//!
//! Every wait has a deadline: [`Supervisor::with_start_timeout`] (10 s) for the foreground
//! process to exit and the pid file to name a live process of ours in the namespace, the
//! caller's grace (at most [`MAX_GRACE`]) between SIGTERM and SIGKILL, 2 s after SIGKILL.
//! Waiting for an exit is `poll(2)` on pidfds, not a sleep loop.

mod files;
mod pidfd;

use std::collections::BTreeSet;
use std::fmt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use l3agent_netns::{Netns, NetnsError, NsId};
use l3agent_process::ProcessError;
use l3agent_types::{NetnsName, RouterId};
use nix::sys::signal::Signal;
use sha2::{Digest, Sha256};

use crate::pidfd::{Proc, Seen};

/// The longest grace between SIGTERM and SIGKILL that [`Supervisor::stop`] honours.
pub const MAX_GRACE: Duration = Duration::from_secs(300);
/// How long processes that got SIGKILL may take to disappear.
const KILL_WAIT: Duration = Duration::from_secs(2);
/// How long a config check (`radvd -c`, `keepalived -t`, `haproxy -c`) may run.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the pid file is looked at while a daemon starts.
const POLL: Duration = Duration::from_millis(20);
/// The largest pid file we read.
const MAX_PID_FILE: u64 = 64;
/// The largest `.applied` file we read (a digest in hex and a newline).
const MAX_MARK: u64 = 128;
/// The largest config we read back (for its digest).
const MAX_CONF: u64 = 16 << 20;
/// How much of the start output an error carries.
const TAIL: u64 = 4096;
/// `sizeof(sockaddr_un.sun_path) - 1`: conntrackd's control socket path must fit.
const MAX_SOCKET_PATH: usize = 107;

/// A daemon l3agent runs per router.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    /// IPv6 router advertisements.
    Radvd,
    /// The metadata proxy.
    Haproxy,
    /// VRRP for HA routers.
    Keepalived,
    /// Connection tracking sync between HA routers.
    Conntrackd,
}

/// How a service takes a new config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadBy {
    /// SIGHUP: the same process re-reads its config.
    Sighup,
    /// Stop and start: the daemon has no reload.
    Restart,
}

impl Service {
    /// All of them.
    pub const ALL: [Service; 4] = [
        Service::Radvd,
        Service::Haproxy,
        Service::Keepalived,
        Service::Conntrackd,
    ];

    /// Its name, which is also its program's name and the middle of its file names.
    pub fn name(self) -> &'static str {
        match self {
            Service::Radvd => "radvd",
            Service::Haproxy => "haproxy",
            Service::Keepalived => "keepalived",
            Service::Conntrackd => "conntrackd",
        }
    }

    /// How it takes a new config (see the module documentation).
    pub fn reload_by(self) -> ReloadBy {
        match self {
            Service::Radvd | Service::Keepalived => ReloadBy::Sighup,
            Service::Haproxy | Service::Conntrackd => ReloadBy::Restart,
        }
    }

    /// The arguments it is started with (after the program).
    pub fn args(self, paths: &Paths) -> Vec<String> {
        let s = |p: &Path| p.display().to_string();
        let (conf, pid) = (s(&paths.conf), s(&paths.pid));
        match self {
            Service::Radvd => vec![
                "-C".into(),
                conf,
                "-p".into(),
                pid,
                "-m".into(),
                "syslog".into(),
            ],
            Service::Haproxy => vec!["-f".into(), conf],
            Service::Keepalived => {
                let vrrp = paths.vrrp_pid.as_deref().map(s).unwrap_or_default();
                vec![
                    "-P".into(),
                    "-B".into(),
                    "-f".into(),
                    conf,
                    "-p".into(),
                    pid,
                    "-r".into(),
                    vrrp,
                ]
            }
            Service::Conntrackd => vec!["-d".into(), "-C".into(), conf],
        }
    }

    /// The arguments of its config check on `conf`, if it has one.
    fn check_args(self, conf: &str) -> Option<Vec<String>> {
        let v = |a: &[&str]| Some(a.iter().map(|s| (*s).to_owned()).collect());
        match self {
            Service::Radvd => v(&["-c", "-C", conf]),
            Service::Haproxy => v(&["-c", "-f", conf]),
            Service::Keepalived => v(&["-P", "-B", "-t", "-f", conf]),
            Service::Conntrackd => None,
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A service name that is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown service {0:?} (radvd, haproxy, keepalived, conntrackd)")]
pub struct UnknownService(pub String);

impl FromStr for Service {
    type Err = UnknownService;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Service::ALL
            .into_iter()
            .find(|v| v.name() == s)
            .ok_or_else(|| UnknownService(s.to_owned()))
    }
}

/// One supervised daemon: a router's service. Displayed `<router>.<service>`, the stem of its
/// file names.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Key {
    /// The router.
    pub router: RouterId,
    /// The daemon.
    pub service: Service,
}

impl Key {
    /// The key of `router`'s `service`.
    pub fn new(router: RouterId, service: Service) -> Key {
        Key { router, service }
    }

    /// Reads a key back from a file name of the daemons directory: `<router>.<service>` or
    /// `<router>.<service>.<anything>`, with an optional leading `.` (a temporary).
    fn from_file_name(name: &str) -> Option<Key> {
        let name = name.strip_prefix('.').unwrap_or(name);
        let (router, rest) = name.split_once('.')?;
        let service = rest.split_once('.').map_or(rest, |(s, _)| s);
        Some(Key {
            router: RouterId::new("file name", router).ok()?,
            service: service.parse().ok()?,
        })
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.router, self.service)
    }
}

/// A key that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid daemon key {0:?}: expected <router id>.<service>")]
pub struct InvalidKey(pub String);

impl FromStr for Key {
    type Err = InvalidKey;

    /// Parses `<router>.<service>`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidKey(s.to_owned());
        let (router, service) = s.split_once('.').ok_or_else(bad)?;
        Ok(Key {
            router: RouterId::new("router", router).map_err(|_| bad())?,
            service: service.parse().map_err(|_| bad())?,
        })
    }
}

/// The files of one key (see the module documentation for the layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// The config.
    pub conf: PathBuf,
    /// The daemon's pid file.
    pub pid: PathBuf,
    /// Output of the last start.
    pub log: PathBuf,
    /// The digest of the config the daemon was last given (written after a start or a
    /// SIGHUP succeeded), so that a crash between writing a config and signalling the daemon
    /// is seen as a config still to apply.
    pub applied: PathBuf,
    /// keepalived: the VRRP child's pid file (`-r`).
    pub vrrp_pid: Option<PathBuf>,
    /// conntrackd: its `LockFile`.
    pub lock: Option<PathBuf>,
    /// conntrackd: its control socket (`UNIX { Path }`), at most 107 bytes long.
    pub socket: Option<PathBuf>,
    /// conntrackd: the role it was last synced for, and its pid.
    pub synced: Option<PathBuf>,
}

impl Paths {
    /// Every file of the key, the config first.
    fn all(&self) -> impl Iterator<Item = &Path> {
        [&self.conf, &self.pid, &self.log, &self.applied]
            .into_iter()
            .map(PathBuf::as_path)
            .chain(self.vrrp_pid.as_deref())
            .chain(self.lock.as_deref())
            .chain(self.socket.as_deref())
            .chain(self.synced.as_deref())
    }
}

/// The SHA-256 of a config: what [`Observed::config`] reports, so that the reconciler can
/// compare the file with the config it wants without the contents (which may hold a VRRP
/// password) appearing in a `Debug` dump or a log line.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConfigDigest([u8; 32]);

impl ConfigDigest {
    /// The digest of `config`.
    pub fn of(config: &[u8]) -> ConfigDigest {
        ConfigDigest(Sha256::digest(config).into())
    }

    /// Reads back the hex form (the `.applied` file).
    fn parse(raw: &[u8]) -> Option<ConfigDigest> {
        let hex = std::str::from_utf8(raw).ok()?.trim();
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(ConfigDigest(out))
    }
}

/// Lowercase hex.
impl fmt::Display for ConfigDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for ConfigDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConfigDigest({self})")
    }
}

impl serde::Serialize for ConfigDigest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What runs for a key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Observed {
    /// The pid in the pid file, when that process is alive and is this key's daemon (its
    /// argv), wherever it runs.
    pub pid: Option<u32>,
    /// `pid` is set and the process is in the router's namespace.
    pub running: bool,
    /// The digest of the config the daemon was last given: the config file's, when a start
    /// or a SIGHUP with that file succeeded. `None` when there is no config file, or it
    /// changed since (l3agent stopped between writing it and signalling the daemon): a reload
    /// is due.
    pub config: Option<ConfigDigest>,
    /// conntrackd: the role [`Supervisor::conntrackd_sync`] last synced the running process
    /// for (`None`: never, or a process that is not running any more).
    pub synced: Option<SyncRole>,
}

/// The VRRP role an HA router took on this host, as conntrackd is told of it (Neutron's
/// `neutron-keepalived-state-change` runs these on each transition, NEUTRON-OPS §1.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncRole {
    /// keepalived holds the router's addresses here.
    Primary,
    /// Another node does.
    Backup,
}

impl SyncRole {
    /// `primary` or `backup`.
    pub fn name(self) -> &'static str {
        match self {
            SyncRole::Primary => "primary",
            SyncRole::Backup => "backup",
        }
    }

    /// The `conntrackd -C <conf> <option>` commands, in order. Primary: commit the external
    /// cache (the other node's connections) into the kernel (`-c`), flush both caches
    /// (`-f`), resync the internal cache with the kernel (`-R`), send a bulk update to the
    /// other node (`-B`). Backup: shorten the kernel entries' timers so that connections now
    /// handled elsewhere expire (`-t`), ask the primary for a resync (`-n`).
    pub fn options(self) -> &'static [&'static str] {
        match self {
            SyncRole::Primary => &["-c", "-f", "-R", "-B"],
            SyncRole::Backup => &["-t", "-n"],
        }
    }

    fn parse(s: &str) -> Option<SyncRole> {
        match s {
            "primary" => Some(SyncRole::Primary),
            "backup" => Some(SyncRole::Backup),
            _ => None,
        }
    }
}

impl fmt::Display for SyncRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One command of a [`Supervisor::conntrackd_sync`] that failed (Neutron ignores them too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncFailure {
    /// The command, `conntrackd -C <conf> <option>`.
    pub command: String,
    /// What went wrong: its exit and output, or why it could not run.
    pub error: String,
}

/// A supervisor operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Something that is not ours sits at one of our paths (a link, FIFO, directory, a file
    /// with the wrong owner or mode).
    #[error("{}: {why}; refusing to use it", path.display())]
    Unsafe {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The router's namespace could not be opened.
    #[error("{key}: network namespace: {source}")]
    Namespace {
        /// The daemon.
        key: Key,
        /// Why.
        source: NetnsError,
    },
    /// The program is missing or could not be run.
    #[error("{key}: {source}")]
    Spawn {
        /// The daemon.
        key: Key,
        /// Why.
        source: ProcessError,
    },
    /// The program exited with an error before detaching.
    #[error("{key}: {program} exited with {} while starting: {output}", code.map_or("a signal".to_owned(), |c| format!("code {c}")))]
    StartFailed {
        /// The daemon.
        key: Key,
        /// The program.
        program: String,
        /// Its exit code (`None`: a signal).
        code: Option<i32>,
        /// The end of what it printed.
        output: String,
    },
    /// The program did not detach, or no live process of ours in the namespace showed up in
    /// the pid file, in time. Whatever it started has been killed.
    #[error("{key}: {why} within {secs} s (it has been killed); output: {output}")]
    NotStarted {
        /// The daemon.
        key: Key,
        /// What did not happen.
        why: &'static str,
        /// The time limit.
        secs: u64,
        /// The end of what it printed.
        output: String,
    },
    /// `start` found the daemon already running in its namespace.
    #[error("{key} is already running (pid {pid}): reload or stop it")]
    AlreadyRunning {
        /// The daemon.
        key: Key,
        /// Its pid.
        pid: u32,
    },
    /// `reload` found nothing running in the namespace.
    #[error("{key} is not running: start it")]
    NotRunning {
        /// The daemon.
        key: Key,
    },
    /// The daemon's own config check refused the new config; the running daemon keeps its
    /// old config.
    #[error(
        "{key}: `{check}` refused the new config (the running daemon keeps the old one): {output}"
    )]
    ConfigRejected {
        /// The daemon.
        key: Key,
        /// The check that ran.
        check: String,
        /// What it said.
        output: String,
    },
    /// Sending a signal failed (not because the process was gone).
    #[error("{key}: sending {signal} to pid {pid}: {source}")]
    Signal {
        /// The daemon.
        key: Key,
        /// The process.
        pid: u32,
        /// The signal.
        signal: Signal,
        /// Why.
        source: std::io::Error,
    },
    /// Processes of the key were still there after SIGKILL (stuck in the kernel).
    #[error("{key}: processes {pids:?} are still alive {}s after SIGKILL", KILL_WAIT.as_secs())]
    StillRunning {
        /// The daemon.
        key: Key,
        /// Their pids.
        pids: Vec<u32>,
    },
    /// A path is too long for what it is used for (a unix socket path).
    #[error("{}: {len} bytes, longer than the {max} a unix socket path may have (use a shorter state_path)", path.display())]
    PathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// The supervisor of every per-router daemon on this host (see the module documentation).
#[derive(Debug, Clone)]
pub struct Supervisor {
    dir: PathBuf,
    start_timeout: Duration,
    cleanup_grace: Duration,
}

impl Supervisor {
    /// Opens the daemons directory `dir` (`<state_path>/daemons`), creating it 0700 if missing
    /// (its parent must exist). An existing one must be a real directory owned by us with no
    /// group or other permission; a link or a wider mode is [`Error::Unsafe`], not fixed.
    pub fn new(dir: &Path) -> Result<Supervisor, Error> {
        if dir.to_str().is_none() {
            return Err(Error::Unsafe {
                path: dir.to_owned(),
                why: "is not UTF-8 (it goes into daemons' argv)".into(),
            });
        }
        let meta = match std::fs::symlink_metadata(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(dir)
                    .map_err(files::io("creating", dir))?;
                // Exactly 0700 whatever the umask.
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(files::io("setting the mode of", dir))?;
                std::fs::symlink_metadata(dir)
            }
            other => other,
        }
        .map_err(files::io("inspecting", dir))?;
        let unsafe_dir = |why: String| Error::Unsafe {
            path: dir.to_owned(),
            why,
        };
        if !meta.is_dir() {
            return Err(unsafe_dir(
                "is not a directory (or is a symbolic link)".into(),
            ));
        }
        let euid = nix::unistd::geteuid().as_raw();
        if meta.uid() != euid {
            return Err(unsafe_dir(format!(
                "is owned by uid {}, not by l3agent's uid {euid}",
                meta.uid()
            )));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(unsafe_dir(format!(
                "has mode {:o}: it holds VRRP passwords and must be 0700",
                meta.mode() & 0o7777
            )));
        }
        Ok(Supervisor {
            dir: dir.to_owned(),
            start_timeout: Duration::from_secs(10),
            cleanup_grace: Duration::from_secs(5),
        })
    }

    /// How long [`Supervisor::start`] waits for the daemon to detach and name a live process
    /// of ours in its pid file (default 10 s).
    pub fn with_start_timeout(mut self, timeout: Duration) -> Supervisor {
        self.start_timeout = timeout;
        self
    }

    /// The daemons directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The files of `key` in the daemons directory `dir`: a pure function, so configs can name
    /// them before anything runs.
    pub fn paths(dir: &Path, key: &Key) -> Paths {
        let file = |suffix: &str| dir.join(format!("{key}.{suffix}"));
        Paths {
            conf: file("conf"),
            pid: file("pid"),
            log: file("log"),
            applied: file("applied"),
            vrrp_pid: (key.service == Service::Keepalived).then(|| file("vrrp.pid")),
            lock: (key.service == Service::Conntrackd).then(|| file("lock")),
            socket: (key.service == Service::Conntrackd).then(|| file("ctl")),
            synced: (key.service == Service::Conntrackd).then(|| file("synced")),
        }
    }

    fn paths_of(&self, key: &Key) -> Paths {
        Supervisor::paths(&self.dir, key)
    }

    /// What runs for `key`, judged against the namespace `ns` (a missing namespace: not
    /// running). A planted link or FIFO at the config or pid path is [`Error::Unsafe`].
    pub fn observe(&self, key: &Key, ns: &NetnsName) -> Result<Observed, Error> {
        Ok(self.look(key, ns)?.0)
    }

    /// [`Supervisor::observe`], keeping the pinned process.
    fn look(&self, key: &Key, ns: &NetnsName) -> Result<(Observed, Option<Seen>), Error> {
        let paths = self.paths_of(key);
        let config = self.applied(&paths)?;
        let seen = self.daemon(key, &paths.pid)?;
        let running = match &seen {
            None => false,
            Some(s) => match Netns::open(ns) {
                Ok(n) => s.netns == Some(n.id()),
                Err(NetnsError::NoNamespace(_)) => false,
                Err(source) => {
                    return Err(Error::Namespace {
                        key: key.clone(),
                        source,
                    })
                }
            },
        };
        let pid = seen.as_ref().map(|s| s.proc.pid());
        let synced = match (&paths.synced, pid) {
            (Some(marker), Some(pid)) if running => self.synced(marker, pid)?,
            _ => None,
        };
        let observed = Observed {
            pid,
            running,
            config,
            synced,
        };
        Ok((observed, seen.filter(|_| running)))
    }

    /// The role in conntrackd's `.synced` marker (`<role> <pid>`) when it was written for
    /// the process `pid`.
    fn synced(&self, marker: &Path, pid: u32) -> Result<Option<SyncRole>, Error> {
        let Some(raw) = files::read_small(marker, MAX_MARK)? else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&raw);
        let mut words = text.split_whitespace();
        let role = words.next().and_then(SyncRole::parse);
        let of = words.next().and_then(|p| parse_pid(p.as_bytes()));
        Ok(role.filter(|_| of == Some(pid) && words.next().is_none()))
    }

    /// Tells the conntrackd of `key` (running in `ns`) that its router took `role`, as
    /// Neutron's state-change script does on each VRRP transition: one
    /// `conntrackd -C <conf> <option>` per [`SyncRole::options`], run in `ns` with argv only
    /// (never a shell), each bounded by 10 s. A command that fails is logged and returned,
    /// and the rest still run (Neutron ignores their errors). Then `role` is recorded for the
    /// running process ([`Observed::synced`]), so that it is not done again for the same
    /// transition. Not conntrackd, or not running in `ns`: [`Error::NotRunning`], and nothing
    /// is recorded.
    pub fn conntrackd_sync(
        &self,
        key: &Key,
        ns: &NetnsName,
        role: SyncRole,
    ) -> Result<Vec<SyncFailure>, Error> {
        let paths = self.paths_of(key);
        let (Some(marker), (_, Some(daemon))) = (&paths.synced, self.look(key, ns)?) else {
            return Err(Error::NotRunning { key: key.clone() });
        };
        let pid = daemon.proc.pid();
        drop(daemon);
        let program =
            l3agent_process::find_program(key.service.name()).map_err(|source| Error::Spawn {
                key: key.clone(),
                source,
            })?;
        let netns = Netns::open(ns).map_err(|source| Error::Namespace {
            key: key.clone(),
            source,
        })?;
        let conf = paths.conf.display().to_string();
        let mut failures = Vec::new();
        tracing::info!(router = %key.router, role = %role, pid, "conntrackd sync");
        for option in role.options() {
            let command = format!("conntrackd -C {conf} {option}");
            let error = match l3agent_process::run(
                &program,
                &["-C", &conf, option],
                None,
                Some(netns.fd()),
                CHECK_TIMEOUT,
            ) {
                Ok(out) if out.success() => continue,
                Ok(out) => format!(
                    "exited with {}: {}",
                    out.code
                        .map_or("a signal".to_owned(), |c| format!("code {c}")),
                    format!("{}{}", out.stderr, out.stdout).trim()
                ),
                Err(e) => e.to_string(),
            };
            tracing::warn!(router = %key.router, %command, %error, "conntrackd sync command failed (ignored, as Neutron does)");
            failures.push(SyncFailure { command, error });
        }
        files::write_atomic(marker, format!("{role} {pid}\n").as_bytes())?;
        Ok(failures)
    }

    /// The config file's digest if the daemon was given that file (see [`Observed::config`]).
    fn applied(&self, paths: &Paths) -> Result<Option<ConfigDigest>, Error> {
        let Some(conf) = files::read_small(&paths.conf, MAX_CONF)? else {
            return Ok(None);
        };
        let conf = ConfigDigest::of(&conf);
        let marker = files::read_small(&paths.applied, MAX_MARK)?;
        Ok(marker
            .and_then(|m| ConfigDigest::parse(&m))
            .filter(|m| *m == conf))
    }

    /// Records that the daemon was given `config`.
    fn mark_applied(&self, paths: &Paths, config: &[u8]) -> Result<(), Error> {
        let line = format!("{}\n", ConfigDigest::of(config));
        files::write_atomic(&paths.applied, line.as_bytes())
    }

    /// The live process a pid file names, if it is `key`'s daemon. Garbage reads as none.
    fn daemon(&self, key: &Key, pid_file: &Path) -> Result<Option<Seen>, Error> {
        let Some(raw) = files::read_small(pid_file, MAX_PID_FILE)? else {
            return Ok(None);
        };
        let Some(pid) = parse_pid(&raw) else {
            tracing::debug!(router = %key.router, service = %key.service, path = %pid_file.display(), "pid file does not hold a usable pid");
            return Ok(None);
        };
        let conf = self.paths_of(key).conf;
        Ok(pidfd::inspect(pid).filter(|s| is_ours(key.service, &conf, &s.argv)))
    }

    /// Every key that has a file in the directory: after a restart of l3agent, the daemons of
    /// routers deleted meanwhile are found here and stopped.
    pub fn list(&self) -> Result<Vec<Key>, Error> {
        let keys: BTreeSet<Key> = self
            .entries()?
            .iter()
            .filter_map(|n| Key::from_file_name(n))
            .collect();
        Ok(keys.into_iter().collect())
    }

    fn entries(&self) -> Result<Vec<String>, Error> {
        let rd = std::fs::read_dir(&self.dir).map_err(files::io("listing", &self.dir))?;
        Ok(rd
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .collect())
    }

    /// Writes the config and starts the daemon in `ns`; returns its pid once the pid file
    /// names a live process of ours in `ns`.
    ///
    /// Already running in `ns` is [`Error::AlreadyRunning`] (the caller wanted `reload`).
    /// Anything else of this key (a daemon in another or a deleted namespace, an orphaned
    /// keepalived VRRP child, a daemon whose pid file was lost) is stopped first, and the stale
    /// pid files, conntrackd's lock and socket are removed. On failure the error carries the
    /// end of the daemon's output, and nothing of the key is left running and no pid file
    /// remains (the config and the output stay for a look, until `stop`).
    pub fn start(&self, key: &Key, ns: &NetnsName, config: &[u8]) -> Result<u32, Error> {
        let paths = self.paths_of(key);
        for p in paths.all() {
            files::check_entry(p, Some(p) == paths.socket.as_deref())?;
        }
        if let Some(sock) = &paths.socket {
            let len = sock.as_os_str().len();
            if len > MAX_SOCKET_PATH {
                return Err(Error::PathTooLong {
                    path: sock.clone(),
                    len,
                    max: MAX_SOCKET_PATH,
                });
            }
        }
        let netns = Netns::open(ns).map_err(|source| Error::Namespace {
            key: key.clone(),
            source,
        })?;
        let program =
            l3agent_process::find_program(key.service.name()).map_err(|source| Error::Spawn {
                key: key.clone(),
                source,
            })?;
        if let Some(s) = self.daemon(key, &paths.pid)? {
            if s.netns == Some(netns.id()) {
                return Err(Error::AlreadyRunning {
                    key: key.clone(),
                    pid: s.proc.pid(),
                });
            }
        }
        self.terminate(key, &paths, self.cleanup_grace)?;
        self.remove_runtime_files(&paths)?;
        files::remove(&paths.log)?;
        files::write_atomic(&paths.conf, config)?;
        let args = key.service.args(&paths);
        tracing::info!(router = %key.router, service = %key.service, netns = %ns, "starting daemon");
        tracing::debug!(router = %key.router, service = %key.service, program = %program.display(), ?args, config = %String::from_utf8_lossy(config), "daemon argv and config");
        let deadline = Instant::now() + self.start_timeout;
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let outcome = match l3agent_process::run_daemon(
            &program,
            &argv,
            Some(netns.fd()),
            &paths.log,
            self.start_timeout,
        ) {
            Err(ProcessError::Timeout { .. }) => Err(self.not_started(
                key,
                &paths,
                "the foreground process did not exit (does the config make it detach?)",
            )),
            Err(source) => Err(Error::Spawn {
                key: key.clone(),
                source,
            }),
            Ok(Some(0)) => self.await_pid(key, &paths, &args, netns.id(), deadline),
            Ok(code) => Err(Error::StartFailed {
                key: key.clone(),
                program: program.display().to_string(),
                code,
                output: files::tail(&paths.log, TAIL),
            }),
        };
        match outcome.and_then(|pid| self.mark_applied(&paths, config).map(|()| pid)) {
            Ok(pid) => {
                tracing::info!(router = %key.router, service = %key.service, pid, "daemon started");
                Ok(pid)
            }
            Err(e) => {
                tracing::warn!(router = %key.router, service = %key.service, error = %e, "daemon did not start; cleaning up");
                // Leave nothing running and no pid file; the error is the one to report.
                if let Err(clean) = self
                    .terminate(key, &paths, self.cleanup_grace)
                    .and_then(|()| self.remove_runtime_files(&paths))
                {
                    tracing::error!(router = %key.router, service = %key.service, error = %clean, "cleaning up after a failed start");
                }
                Err(e)
            }
        }
    }

    fn not_started(&self, key: &Key, paths: &Paths, why: &'static str) -> Error {
        Error::NotStarted {
            key: key.clone(),
            why,
            secs: self.start_timeout.as_secs(),
            output: files::tail(&paths.log, TAIL),
        }
    }

    /// Waits (until `deadline`, polling every 20 ms) for the pid file to name a live process
    /// of ours in the namespace `ns`. conntrackd writes none: its process is found by its
    /// exact argv and namespace, and the pid file written for it.
    fn await_pid(
        &self,
        key: &Key,
        paths: &Paths,
        args: &[String],
        ns: NsId,
        deadline: Instant,
    ) -> Result<u32, Error> {
        let rounds = self.start_timeout.as_millis() / POLL.as_millis() + 1;
        for _ in 0..rounds {
            let found = if key.service == Service::Conntrackd {
                let exact = |s: &Seen| {
                    s.netns == Some(ns)
                        && is_ours(key.service, &paths.conf, &s.argv)
                        && s.argv.get(1..) == Some(args)
                };
                match pidfd::scan(exact) {
                    Ok(mut v) if !v.is_empty() => {
                        v.sort_by_key(|s| s.proc.pid());
                        let pid = v[0].proc.pid();
                        files::write_atomic(&paths.pid, format!("{pid}\n").as_bytes())?;
                        Some(pid)
                    }
                    _ => None,
                }
            } else {
                self.daemon(key, &paths.pid)?
                    .filter(|s| s.netns == Some(ns))
                    .map(|s| s.proc.pid())
            };
            if let Some(pid) = found {
                return Ok(pid);
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(POLL.min(deadline.saturating_duration_since(Instant::now())));
        }
        Err(self.not_started(
            key,
            paths,
            "no live process of ours in the namespace appeared in the pid file",
        ))
    }

    /// Gives a running daemon a new config: writes it atomically, then SIGHUP (radvd,
    /// keepalived) or stop + start (haproxy, conntrackd; see [`Service::reload_by`]). The
    /// daemon's own check (`radvd -c`, `keepalived -t`, `haproxy -c`, run in `ns`) must accept
    /// the new config first, so a broken config never replaces a working one
    /// ([`Error::ConfigRejected`]). The config the daemon was last given ([`Observed::config`])
    /// sends no signal (repeated SIGHUPs can make a keepalived master step down, Neutron
    /// #1647432). Nothing running in `ns` is [`Error::NotRunning`]. For haproxy and conntrackd a
    /// start that fails after the stop leaves nothing running (the error says why).
    pub fn reload(&self, key: &Key, ns: &NetnsName, config: &[u8]) -> Result<(), Error> {
        let paths = self.paths_of(key);
        let (observed, seen) = self.look(key, ns)?;
        let Some(daemon) = seen else {
            return Err(Error::NotRunning { key: key.clone() });
        };
        if observed.config == Some(ConfigDigest::of(config)) {
            tracing::debug!(router = %key.router, service = %key.service, "config unchanged; no reload");
            return Ok(());
        }
        files::check_entry(&paths.conf, false)?;
        let tmp = files::write_temp(&paths.conf, config)?;
        if let Err(e) = self.check(key, ns, &tmp) {
            let _ = files::remove(&tmp);
            return Err(e);
        }
        tracing::debug!(router = %key.router, service = %key.service, config = %String::from_utf8_lossy(config), "new config");
        match key.service.reload_by() {
            ReloadBy::Sighup => {
                // Until the signal is sent, the file is not what the daemon runs with.
                if let Err(e) = files::remove(&paths.applied) {
                    let _ = files::remove(&tmp);
                    return Err(e);
                }
                files::install(&tmp, &paths.conf)?;
                tracing::info!(router = %key.router, service = %key.service, pid = daemon.proc.pid(), "reloading daemon (SIGHUP)");
                signal(key, &daemon.proc, Signal::SIGHUP)?;
                self.mark_applied(&paths, config)
            }
            ReloadBy::Restart => {
                let _ = files::remove(&tmp);
                tracing::info!(router = %key.router, service = %key.service, pid = daemon.proc.pid(), "reloading daemon (restart)");
                drop(daemon);
                self.stop(key, self.cleanup_grace)?;
                self.start(key, ns, config).map(|_| ())
            }
        }
    }

    /// Runs the service's config check on `conf` inside `ns`.
    fn check(&self, key: &Key, ns: &NetnsName, conf: &Path) -> Result<(), Error> {
        let Some(args) = key.service.check_args(&conf.display().to_string()) else {
            return Ok(());
        };
        let spawn = |source| Error::Spawn {
            key: key.clone(),
            source,
        };
        let program = l3agent_process::find_program(key.service.name()).map_err(spawn)?;
        let netns = Netns::open(ns).map_err(|source| Error::Namespace {
            key: key.clone(),
            source,
        })?;
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = l3agent_process::run(&program, &argv, None, Some(netns.fd()), CHECK_TIMEOUT)
            .map_err(spawn)?;
        if out.success() {
            return Ok(());
        }
        Err(Error::ConfigRejected {
            key: key.clone(),
            check: format!("{} {}", key.service, args.join(" ")),
            output: format!("{}{}", out.stderr, out.stdout).trim().to_owned(),
        })
    }

    /// Stops `key`'s daemon and removes its files: SIGTERM to the process its pid file names,
    /// up to `grace` (at most [`MAX_GRACE`]) for it to exit, then SIGKILL to every process of
    /// the key that is left (an orphaned VRRP child included), wherever it runs: no namespace
    /// is needed, so a daemon whose namespace was deleted is stopped too. Nothing running is
    /// `Ok`. When a process survives SIGKILL the files are kept (so `list` still finds the key)
    /// and the answer is [`Error::StillRunning`].
    pub fn stop(&self, key: &Key, grace: Duration) -> Result<(), Error> {
        let paths = self.paths_of(key);
        self.terminate(key, &paths, grace.min(MAX_GRACE))?;
        self.remove_files(key)?;
        tracing::info!(router = %key.router, service = %key.service, "daemon stopped; its files removed");
        Ok(())
    }

    /// Ends every process of `key`: SIGTERM to the daemon (or, when its pid file names none,
    /// to every process of the key), `grace` for them to exit, SIGKILL to the rest.
    fn terminate(&self, key: &Key, paths: &Paths, grace: Duration) -> Result<(), Error> {
        let daemon = match self.daemon(key, &paths.pid) {
            Ok(d) => d,
            Err(e) => {
                // A planted or unreadable pid file does not stop the sweep by argv below.
                tracing::warn!(router = %key.router, service = %key.service, error = %e, "ignoring the pid file");
                None
            }
        };
        let ours = |s: &Seen| is_ours(key.service, &paths.conf, &s.argv);
        let first: Vec<Seen> = match daemon {
            Some(d) => vec![d],
            None => self.sweep(key, &ours)?,
        };
        if first.is_empty() {
            // No pid file names one and no process has our argv: nothing of the key runs.
            return Ok(());
        }
        let pids: Vec<u32> = first.iter().map(|s| s.proc.pid()).collect();
        tracing::info!(router = %key.router, service = %key.service, ?pids, "stopping daemon (SIGTERM)");
        for s in &first {
            signal(key, &s.proc, Signal::SIGTERM)?;
        }
        let procs: Vec<&Proc> = first.iter().map(|s| &s.proc).collect();
        pidfd::wait_exited(&procs, Instant::now() + grace);
        let rest = self.sweep(key, &ours)?;
        if rest.is_empty() {
            return Ok(());
        }
        let pids: Vec<u32> = rest.iter().map(|s| s.proc.pid()).collect();
        tracing::warn!(router = %key.router, service = %key.service, ?pids, "killing what is left (SIGKILL)");
        for s in &rest {
            signal(key, &s.proc, Signal::SIGKILL)?;
        }
        let procs: Vec<&Proc> = rest.iter().map(|s| &s.proc).collect();
        let alive = pidfd::wait_exited(&procs, Instant::now() + KILL_WAIT);
        if alive.is_empty() {
            Ok(())
        } else {
            Err(Error::StillRunning {
                key: key.clone(),
                pids: alive.iter().map(|p| p.pid()).collect(),
            })
        }
    }

    /// Every live process of the key, found by argv in `/proc`.
    fn sweep(&self, key: &Key, ours: &impl Fn(&Seen) -> bool) -> Result<Vec<Seen>, Error> {
        pidfd::scan(ours).map_err(files::io("listing processes in", Path::new("/proc")))
        .inspect(|v| {
            if !v.is_empty() {
                tracing::debug!(router = %key.router, service = %key.service, pids = ?v.iter().map(|s| s.proc.pid()).collect::<Vec<_>>(), "processes of the key");
            }
        })
    }

    /// Removes the pid files, the applied mark, conntrackd's lock and socket (nothing of the
    /// key runs).
    fn remove_runtime_files(&self, paths: &Paths) -> Result<(), Error> {
        [
            Some(&paths.pid),
            Some(&paths.applied),
            paths.vrrp_pid.as_ref(),
            paths.lock.as_ref(),
            paths.socket.as_ref(),
            paths.synced.as_ref(),
        ]
        .into_iter()
        .flatten()
        .try_for_each(|p| files::remove(p))
    }

    /// Removes every file of the key (whatever its suffix, temporaries included), never
    /// following a link; keeps going past a failure and reports the first.
    fn remove_files(&self, key: &Key) -> Result<(), Error> {
        let mut first = None;
        for name in self.entries()? {
            if Key::from_file_name(&name).as_ref() != Some(key) {
                continue;
            }
            if let Err(e) = files::remove(&self.dir.join(&name)) {
                tracing::warn!(router = %key.router, service = %key.service, error = %e, "removing a daemon file");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

fn signal(key: &Key, proc: &Proc, sig: Signal) -> Result<(), Error> {
    proc.signal(sig)
        .map(|_| ())
        .map_err(|source| Error::Signal {
            key: key.clone(),
            pid: proc.pid(),
            signal: sig,
            source,
        })
}

/// Whether `argv` is the daemon of the key whose config is `conf`: `argv[0]` is the service's
/// program (by file name) and one argument is exactly the config path. (Not the whole argv, so
/// that daemons started by an l3agent with other flags are still recognised.)
fn is_ours(service: Service, conf: &Path, argv: &[String]) -> bool {
    let Some((prog, args)) = argv.split_first() else {
        return false;
    };
    let conf = conf.to_string_lossy();
    Path::new(prog).file_name().and_then(|n| n.to_str()) == Some(service.name())
        && args.iter().any(|a| *a == conf)
}

/// A pid file's pid: decimal digits, surrounding whitespace allowed, at least 2 (0 and 1 are
/// never a daemon of ours; `kill(0)` and `kill(-1)` would signal whole groups), at most
/// `i32::MAX`. Anything else is `None`.
fn parse_pid(raw: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(raw).ok()?.trim();
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let pid: u32 = s.parse().ok()?;
    (2..=i32::MAX as u32).contains(&pid).then_some(pid)
}

#[cfg(test)]
mod tests;
