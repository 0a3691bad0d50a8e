//! The one module that owns l3agent's state directory (`agent.state_path`): where it is
//! created, who may have written it, who holds it, and how a record is replaced. It knows
//! nothing of what the records mean; the crates that keep records document their own files.
//!
//! l3agent runs as root, so the directory is treated as input that could have been planted:
//! the rules below are what make a record read back from it as trustworthy as the config.
//!
//! # Layout
//!
//! ```text
//! <state_path>/           0700, owned by the user l3agent runs as
//!   lock                  the lock file (flock), holds the holder's pid; never a record
//!   <name>                a record, 0600
//!   <dir>/<name>          a record in a subdirectory (one level only), directories 0700
//!   .tmp-<name>-<pid>-<n> a record being written; removed by the next `open` if left behind
//!                         (in a subdirectory: by a process's first open, then at most once
//!                         a minute: the agent opens the directory for every event)
//! ```
//!
//! - **Names** ([`MAX_NAME_LEN`]): each component of a record name is 1 to 128 characters of
//!   `A-Z a-z 0-9 . _ -`, does not start with `.` and holds no `..`; a name has at most one
//!   `/`; `lock` is reserved. Anything else is [`StateError::BadName`] before any file is
//!   touched, so a record name built from a router id can never leave the directory, hide as
//!   a dot file, or collide with a temporary file or the lock.
//! - **One level of subdirectories** keeps [`StateDir::list`] and [`StateDir::clear`] simple
//!   and bounded: a directory deeper than that was not made by l3agent, and `clear` refuses
//!   to empty a directory holding one (the state path may point somewhere it should not).
//! - **The path** may be relative (to the current directory); it is used absolute, and a
//!   `..` component is refused so that the checks below check the directories really used.
//!
//! # Safety checks (like sshd's `StrictModes`)
//!
//! [`StateDir::open`] and [`StateDir::inspect`] refuse ([`StateError::Unsafe`]) a state
//! directory that someone other than root or l3agent's user could have changed:
//!
//! - every parent, from `/` down, is a real directory owned by root or by the effective uid
//!   and not writable by group or others, except a root-owned directory with the sticky bit
//!   (like `/tmp`: others may create entries there but not replace ours);
//! - a parent may be a symbolic link only if root owns it (`/var/run -> /run`); then every
//!   directory of the path it resolves to is checked by the rule above;
//! - the state directory itself is a real directory (never a symbolic link), owned by the
//!   effective uid, without group or other write permission. A wrong mode is reported with
//!   the mode, never silently fixed: someone made it so, and its contents are suspect.
//!
//! Because no directory on the way can be changed by anyone but root and l3agent's user, the
//! checks can work on paths (`lstat`) without racing an attacker. Within the directory, every
//! file is still opened with `O_NOFOLLOW`, records must be regular files owned by l3agent's
//! user (or root) and at most [`MAX_RECORD_BYTES`] long, and subdirectories must be real
//! directories: a planted link or FIFO is refused, not followed. Missing directories are
//! created 0700 by `open` (whatever the umask), files 0600.
//!
//! # The lock
//!
//! [`StateDir::open`] takes `flock(LOCK_EX)` on `<state_path>/lock` (opened `O_NOFOLLOW`,
//! 0600), polling every 20 ms for at most [`OpenOptions::wait`] and giving up promptly with
//! [`StateError::Interrupted`] when [`OpenOptions::stop`] is set (SIGTERM while waiting). The
//! holder writes its pid into the file so that a waiter that gives up can name it
//! ([`StateError::Busy`]). A flock belongs to the open file, so it dies with its holder, even
//! after SIGKILL: there is no stale lock to break. It is released when the [`StateDir`] is
//! dropped. Every change ([`StateDir::write`], [`StateDir::remove`], [`StateDir::clear`])
//! needs it; [`StateDir::inspect`] gives a read-only view without it for `status` and `plan`.
//!
//! # Atomic writes
//!
//! [`StateDir::write`] writes a temporary file in the record's directory (created with
//! `O_CREAT | O_EXCL | O_NOFOLLOW`, so a planted name is never followed or reused), fsyncs it,
//! renames it over the record and fsyncs the directory. A reader (even through `inspect`,
//! without the lock) sees the old record or the new one, never a mix; after a crash at any
//! point the record is whole, and the temporary left behind is removed by the next `open`
//! (only the lock holder writes, so every temporary it finds is a dead writer's). A failed
//! write removes its temporary and reports [`StateError::Io`] naming the record, with the
//! errno intact: [`StateError::storage_problem`] says whether the file system is full or
//! read-only.
//!
//! # Recovery is the caller's
//!
//! A record that cannot be parsed is [`StateError::Corrupt`]; a record that is missing is
//! `None`. Callers rebuild both from the config and the kernel instead of failing forever.

mod check;
mod error;

use std::collections::HashMap;
use std::fs::{self, File, Permissions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use check::Missing;
pub use error::{StateError, StorageProblem};

/// Longest component of a record name, in characters.
pub const MAX_NAME_LEN: usize = 128;

/// Largest record [`StateDir::read`] accepts; anything bigger is [`StateError::Corrupt`]
/// rather than an unbounded allocation.
pub const MAX_RECORD_BYTES: u64 = 256 << 20;

/// The lock file's name, reserved in the top directory.
pub const LOCK_FILE: &str = "lock";

/// Prefix of the temporary files of [`StateDir::write`].
const TMP_PREFIX: &str = ".tmp-";

/// How often a waiter retries the lock and looks at the stop flag.
const POLL: Duration = Duration::from_millis(20);

/// Temporary names tried before a write gives up (a name is only taken if planted).
const TEMP_ATTEMPTS: u32 = 8;

/// How [`StateDir::open`] waits for the lock.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// How long to wait for another holder before [`StateError::Busy`] (default 120 s: a
    /// full apply of a large host holds the lock that long).
    pub wait: Duration,
    /// Set by a signal handler to give up waiting with [`StateError::Interrupted`].
    pub stop: Option<Arc<AtomicBool>>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            wait: Duration::from_secs(120),
            stop: None,
        }
    }
}

/// A checked state directory: locked and writable (from [`StateDir::open`]) or a read-only
/// view (from [`StateDir::inspect`]). See the crate docs for the rules it enforces.
#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
    euid: u32,
    /// The held lock; `None` for an `inspect` view. Dropping it releases the lock.
    lock: Option<Flock<File>>,
    /// Numbers this writer's temporary files.
    counter: AtomicU64,
}

/// Checks a private directory of root's outside the state directory (`/run/l3agent/iptables`,
/// `/run/l3agent/lock`) by the rules [`StateDir::open`] applies to the state directory: every
/// parent owned by root (or us) and not writable by group or others unless root's and sticky,
/// the directory itself real (not a link), ours, not writable by group or others; missing
/// ones are created 0700. Returns the path normalized. Takes no lock.
pub fn check_private_dir(path: &Path) -> Result<PathBuf, StateError> {
    let path = check::normalize(path)?;
    check::check_tree(&path, Missing::Create, nix::unistd::geteuid().as_raw())?;
    Ok(path)
}

impl StateDir {
    /// Creates the directory (0700, parents 0700 where it creates them) if missing, checks it
    /// is safe, takes the exclusive lock, removes leftover temporary files.
    pub fn open(path: &Path, opts: &OpenOptions) -> Result<StateDir, StateError> {
        let path = check::normalize(path)?;
        let euid = nix::unistd::geteuid().as_raw();
        check::check_tree(&path, Missing::Create, euid)?;
        let lock = take_lock(&path, euid, opts)?;
        let dir = StateDir {
            path,
            euid,
            lock: Some(lock),
            counter: AtomicU64::new(0),
        };
        dir.remove_temporaries()?;
        Ok(dir)
    }

    /// Read-only view without the lock (for `status` and `plan`): fails with an
    /// [`StateError::Io`] of kind NotFound if the directory is missing (callers treat that as
    /// empty; see [`StateError::is_not_found`]), checks safety like `open`, and leaves
    /// temporary files alone (their writer may be alive).
    pub fn inspect(path: &Path) -> Result<StateDir, StateError> {
        let path = check::normalize(path)?;
        let euid = nix::unistd::geteuid().as_raw();
        check::check_tree(&path, Missing::Fail, euid)?;
        Ok(StateDir {
            path,
            euid,
            lock: None,
            counter: AtomicU64::new(0),
        })
    }

    /// The directory, absolute and without `.` components.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads a record; `None` if it (or its subdirectory) does not exist.
    pub fn read(&self, rel: &str) -> Result<Option<Vec<u8>>, StateError> {
        let name = Rel::parse(rel)?;
        let Some(dir) = self.existing_dir(name.sub)? else {
            return Ok(None);
        };
        let path = dir.join(name.file);
        let opened = fs::OpenOptions::new()
            .read(true)
            // O_NONBLOCK: a planted FIFO must not hang the open; it is refused below.
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path);
        let file = match opened {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(open_error("reading", &path, e)),
        };
        let io = |source| StateError::Io {
            what: "reading",
            path: path.clone(),
            source,
        };
        let meta = file.metadata().map_err(io)?;
        self.check_record(&path, &meta)?;
        let too_big = || StateError::Corrupt {
            path: path.clone(),
            reason: format!("is larger than the limit of {MAX_RECORD_BYTES} bytes"),
        };
        if meta.len() > MAX_RECORD_BYTES {
            return Err(too_big());
        }
        let mut buf = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        file.take(MAX_RECORD_BYTES + 1)
            .read_to_end(&mut buf)
            .map_err(io)?;
        if buf.len() as u64 > MAX_RECORD_BYTES {
            return Err(too_big());
        }
        tracing::debug!(path = %path.display(), bytes = buf.len(), "read state record");
        Ok(Some(buf))
    }

    /// Reads a JSON record; a record that does not parse as `T` is [`StateError::Corrupt`].
    pub fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        rel: &str,
    ) -> Result<Option<T>, StateError> {
        let Some(bytes) = self.read(rel)? else {
            return Ok(None);
        };
        self.parse_json(rel, &bytes).map(Some)
    }

    /// Parses `bytes`, read from the record `rel`, as [`StateDir::read_json`] does.
    pub fn parse_json<T: serde::de::DeserializeOwned>(
        &self,
        rel: &str,
        bytes: &[u8],
    ) -> Result<T, StateError> {
        serde_json::from_slice(bytes).map_err(|e| StateError::Corrupt {
            path: self.path.join(rel),
            reason: format!("not valid JSON of the expected shape: {e}"),
        })
    }

    /// Replaces (or creates) a record atomically: temporary file, fsync, rename, fsync of the
    /// directory. Needs the lock. On failure the old record is untouched and no temporary
    /// remains.
    pub fn write(&self, rel: &str, bytes: &[u8]) -> Result<(), StateError> {
        self.replace(rel, bytes, true)
    }

    /// [`StateDir::write`] without the fsyncs: atomic against a crash of the process (the
    /// rename), not against a power loss, after which the record may be old, empty or
    /// garbled. For records whose loss the caller recovers from (by rebuilding them) and that
    /// describe what a reboot erases anyway (namespaces, links): an fsync costs milliseconds
    /// on every change, which the agent pays between an event and the kernel.
    pub fn write_volatile(&self, rel: &str, bytes: &[u8]) -> Result<(), StateError> {
        self.replace(rel, bytes, false)
    }

    fn replace(&self, rel: &str, bytes: &[u8], durable: bool) -> Result<(), StateError> {
        let name = Rel::parse(rel)?;
        self.require_lock("writing", rel)?;
        let dir = self.ensure_dir(name.sub, rel)?;
        let target = dir.join(name.file);
        let io = |source| StateError::Io {
            what: "writing",
            path: target.clone(),
            source,
        };
        let (tmp, file) = self.create_temp(&dir, name.file).map_err(io)?;
        if let Err(e) = fill_and_rename(file, bytes, &tmp, &target, durable) {
            if let Err(re) = fs::remove_file(&tmp) {
                tracing::debug!(path = %tmp.display(), error = %re, "removing temporary file");
            }
            return Err(io(e));
        }
        if durable {
            sync_dir(&dir).map_err(io)?;
        }
        tracing::debug!(path = %target.display(), bytes = bytes.len(), durable, "wrote state record");
        Ok(())
    }

    /// Writes `value` as a JSON record (compact, one line) with [`StateDir::write`].
    pub fn write_json<T: serde::Serialize>(&self, rel: &str, value: &T) -> Result<(), StateError> {
        self.write(rel, &self.encode(rel, value)?)
    }

    /// Writes `value` as a JSON record with [`StateDir::write_volatile`].
    pub fn write_json_volatile<T: serde::Serialize>(
        &self,
        rel: &str,
        value: &T,
    ) -> Result<(), StateError> {
        self.write_volatile(rel, &self.encode(rel, value)?)
    }

    /// The bytes [`StateDir::write_json`] writes for `value` as the record `rel`.
    pub fn encode<T: serde::Serialize>(&self, rel: &str, value: &T) -> Result<Vec<u8>, StateError> {
        let mut bytes = serde_json::to_vec(value).map_err(|e| StateError::Encode {
            path: self.path.join(rel),
            reason: e.to_string(),
        })?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// Removes a record; `false` if it did not exist. Needs the lock.
    pub fn remove(&self, rel: &str) -> Result<bool, StateError> {
        let name = Rel::parse(rel)?;
        self.require_lock("removing", rel)?;
        let Some(dir) = self.existing_dir(name.sub)? else {
            return Ok(false);
        };
        let path = dir.join(name.file);
        let io = |source| StateError::Io {
            what: "removing",
            path: path.clone(),
            source,
        };
        match fs::remove_file(&path) {
            Ok(()) => {
                sync_dir(&dir).map_err(io)?;
                tracing::debug!(path = %path.display(), "removed state record");
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io(e)),
        }
    }

    /// The record names in a subdirectory (`""` for the top directory), sorted: regular files
    /// with valid names only (no temporaries, no lock, no subdirectories). A missing
    /// subdirectory lists as empty.
    pub fn list(&self, subdir: &str) -> Result<Vec<String>, StateError> {
        let dir = if subdir.is_empty() {
            self.path.clone()
        } else {
            if !valid_component(subdir) || subdir == LOCK_FILE {
                return Err(StateError::BadName {
                    name: subdir.to_owned(),
                });
            }
            match self.existing_dir(Some(subdir))? {
                Some(d) => d,
                None => return Ok(Vec::new()),
            }
        };
        let mut names: Vec<String> = entries(&dir, "listing")?
            .into_iter()
            .filter(|(name, kind)| {
                let record = *kind == Kind::File
                    && valid_component(name)
                    && !(subdir.is_empty() && name == LOCK_FILE);
                if !record && *kind != Kind::Dir && !is_temporary(name) && name != LOCK_FILE {
                    tracing::debug!(dir = %dir.display(), name = %name.escape_debug(), "not a record, not listed");
                }
                record
            })
            .map(|(name, _)| name)
            .collect();
        names.sort();
        Ok(names)
    }

    /// Removes every record, subdirectory and temporary file, leaving only the lock (for
    /// `destroy --all`). Needs the lock. If the directory holds anything that is not a record
    /// (a deeper directory, a name outside the rules) it removes nothing and says so with
    /// [`StateError::Foreign`]: a state path pointed at a directory that is not l3agent's
    /// must not be emptied.
    pub fn clear(&self) -> Result<(), StateError> {
        self.require_lock("clearing", "")?;
        let mut files = Vec::new();
        let mut dirs = Vec::new();
        let mut foreign = Vec::new();
        for (name, kind) in entries(&self.path, "clearing")? {
            let path = self.path.join(&name);
            match kind {
                _ if name == LOCK_FILE => {}
                Kind::Dir if valid_component(&name) => {
                    for (inner, kind) in entries(&path, "clearing")? {
                        let p = path.join(&inner);
                        if kind != Kind::Dir && (valid_component(&inner) || is_temporary(&inner)) {
                            files.push(p);
                        } else {
                            foreign.push(p);
                        }
                    }
                    dirs.push(path);
                }
                Kind::File | Kind::Other if valid_component(&name) || is_temporary(&name) => {
                    files.push(path)
                }
                _ => foreign.push(path),
            }
        }
        if let Some(first) = foreign.first() {
            return Err(StateError::Foreign {
                path: first.clone(),
                more: foreign.len() - 1,
            });
        }
        for f in &files {
            fs::remove_file(f).map_err(|source| StateError::Io {
                what: "clearing",
                path: f.clone(),
                source,
            })?;
        }
        for d in &dirs {
            fs::remove_dir(d).map_err(|source| StateError::Io {
                what: "clearing",
                path: d.clone(),
                source,
            })?;
        }
        sync_dir(&self.path).map_err(|source| StateError::Io {
            what: "clearing",
            path: self.path.clone(),
            source,
        })?;
        tracing::debug!(path = %self.path.display(), files = files.len(), dirs = dirs.len(), "cleared state directory");
        Ok(())
    }

    fn require_lock(&self, what: &'static str, rel: &str) -> Result<(), StateError> {
        match self.lock {
            Some(_) => Ok(()),
            None => Err(StateError::NotLocked {
                what,
                path: self.path.join(rel),
            }),
        }
    }

    /// The directory of a record if it exists (checked when it is a subdirectory).
    fn existing_dir(&self, sub: Option<&str>) -> Result<Option<PathBuf>, StateError> {
        match sub {
            None => Ok(Some(self.path.clone())),
            Some(s) => {
                let p = self.path.join(s);
                Ok(check::check_subdir(&p, self.euid)?.map(|()| p))
            }
        }
    }

    /// The directory of a record, created 0700 (and made durable) if missing.
    fn ensure_dir(&self, sub: Option<&str>, rel: &str) -> Result<PathBuf, StateError> {
        if let Some(dir) = self.existing_dir(sub)? {
            return Ok(dir);
        }
        let p = self.path.join(sub.unwrap_or_default());
        check::create_dir_0700(&p)?;
        sync_dir(&self.path).map_err(|source| StateError::Io {
            what: "writing",
            path: self.path.join(rel),
            source,
        })?;
        check::check_subdir(&p, self.euid)?;
        Ok(p)
    }

    /// A new temporary file next to the record, never following or reusing a planted name.
    fn create_temp(&self, dir: &Path, file: &str) -> std::io::Result<(PathBuf, File)> {
        let pid = std::process::id();
        for _ in 0..TEMP_ATTEMPTS {
            let n = self.counter.fetch_add(1, Ordering::Relaxed);
            let tmp = dir.join(format!("{TMP_PREFIX}{file}-{pid}-{n}"));
            let created = fs::OpenOptions::new()
                .write(true)
                .create_new(true) // O_CREAT | O_EXCL
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp);
            match created {
                Ok(f) => {
                    // Exactly 0600 whatever the umask.
                    if let Err(e) = f.set_permissions(Permissions::from_mode(0o600)) {
                        let _ = fs::remove_file(&tmp);
                        return Err(e);
                    }
                    return Ok((tmp, f));
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    tracing::debug!(path = %tmp.display(), "temporary name already taken, trying the next");
                }
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::new(
            ErrorKind::AlreadyExists,
            format!("{TEMP_ATTEMPTS} temporary file names in a row already existed"),
        ))
    }

    /// Removes the temporaries of dead writers (we hold the lock: no writer is alive).
    fn remove_temporaries(&self) -> Result<(), StateError> {
        let mut dirs = vec![self.path.clone()];
        let top = entries(&self.path, "cleaning")?;
        if subdirectories_due(&self.path) {
            for (name, kind) in top {
                if kind == Kind::Dir && valid_component(&name) {
                    dirs.push(self.path.join(name));
                }
            }
        }
        for dir in dirs {
            for (name, kind) in entries(&dir, "cleaning")? {
                if kind == Kind::Dir || !is_temporary(&name) {
                    continue;
                }
                let p = dir.join(&name);
                fs::remove_file(&p).map_err(|source| StateError::Io {
                    what: "removing leftover temporary file",
                    path: p.clone(),
                    source,
                })?;
                tracing::debug!(path = %p.display(), "removed leftover temporary file");
            }
        }
        Ok(())
    }

    /// A record must be a regular file owned by us or root.
    fn check_record(&self, path: &Path, meta: &fs::Metadata) -> Result<(), StateError> {
        if !meta.is_file() {
            return Err(StateError::Unsafe {
                path: path.to_path_buf(),
                reason: "is not a regular file".into(),
            });
        }
        if meta.uid() != self.euid && meta.uid() != 0 {
            return Err(StateError::Unsafe {
                path: path.to_path_buf(),
                reason: format!("is owned by uid {}, not by uid {}", meta.uid(), self.euid),
            });
        }
        Ok(())
    }
}

/// A record name split into its optional subdirectory and its file name.
struct Rel<'a> {
    sub: Option<&'a str>,
    file: &'a str,
}

impl<'a> Rel<'a> {
    fn parse(rel: &'a str) -> Result<Rel<'a>, StateError> {
        let bad = || StateError::BadName {
            name: rel.to_owned(),
        };
        let (sub, file) = match rel.split_once('/') {
            None => (None, rel),
            Some((s, f)) => (Some(s), f),
        };
        let top = sub.unwrap_or(file);
        if top == LOCK_FILE || !valid_component(file) || sub.is_some_and(|s| !valid_component(s)) {
            return Err(bad());
        }
        Ok(Rel { sub, file })
    }
}

/// One component of a record name (see the crate docs).
fn valid_component(s: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&s.len())
        && !s.starts_with('.')
        && !s.contains("..")
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A temporary file of [`StateDir::write`], or of the writer l3agent had before this crate
/// (`.<name>.tmp.<pid>`), so that upgrading also cleans those.
fn is_temporary(name: &str) -> bool {
    if name.starts_with(TMP_PREFIX) {
        return true;
    }
    match name.strip_prefix('.').and_then(|n| n.rsplit_once(".tmp.")) {
        Some((_, pid)) => !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()),
        None => false,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    /// Symbolic links, FIFOs, sockets, devices.
    Other,
}

/// The UTF-8-named entries of a directory with their types (not following links); other
/// names cannot be records and are skipped.
fn entries(dir: &Path, what: &'static str) -> Result<Vec<(String, Kind)>, StateError> {
    let io = |source| StateError::Io {
        what,
        path: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let ft = entry.file_type().map_err(io)?;
        let kind = if ft.is_file() {
            Kind::File
        } else if ft.is_dir() {
            Kind::Dir
        } else {
            Kind::Other
        };
        match entry.file_name().into_string() {
            Ok(name) => out.push((name, kind)),
            Err(name) => {
                tracing::debug!(dir = %dir.display(), name = ?name, "skipping a non-UTF-8 name");
            }
        }
    }
    Ok(out)
}

/// How often one process looks for leftover temporaries in the subdirectories of a state
/// directory it opens again and again (the agent opens it for every event, and a subdirectory
/// holds a record per router): a leftover there is litter from a writer that died, harmless
/// until removed.
const SUBDIRECTORY_CLEANING: Duration = Duration::from_secs(60);

/// Whether this open of `path` also cleans its subdirectories: the first in this process,
/// then at most every [`SUBDIRECTORY_CLEANING`].
fn subdirectories_due(path: &Path) -> bool {
    let mut last = lock_cleaned();
    let last = last.get_or_insert_with(HashMap::new);
    let now = Instant::now();
    match last.get(path) {
        Some(t) if now.duration_since(*t) < SUBDIRECTORY_CLEANING => false,
        _ => {
            last.insert(path.to_owned(), now);
            true
        }
    }
}

/// When this process last cleaned each state directory's subdirectories.
fn lock_cleaned() -> std::sync::MutexGuard<'static, Option<HashMap<PathBuf, Instant>>> {
    static LAST: std::sync::Mutex<Option<HashMap<PathBuf, Instant>>> = std::sync::Mutex::new(None);
    LAST.lock().unwrap_or_else(|e| e.into_inner())
}

/// Makes the next open of `path` clean its subdirectories (tests).
#[cfg(test)]
pub(crate) fn clean_subdirectories_next_time(path: &Path) {
    if let Some(last) = lock_cleaned().as_mut() {
        last.remove(path);
    }
}

/// Writes, fsyncs (if `durable`) and renames a temporary file over its target.
fn fill_and_rename(
    mut file: File,
    bytes: &[u8],
    tmp: &Path,
    target: &Path,
    durable: bool,
) -> std::io::Result<()> {
    file.write_all(bytes)?;
    if durable {
        file.sync_all()?;
    }
    drop(file);
    fs::rename(tmp, target)
}

/// fsync of a directory, so that a rename or unlink in it survives a crash.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// An open error, with a symbolic link (`ELOOP` under `O_NOFOLLOW`) reported as unsafe.
fn open_error(what: &'static str, path: &Path, e: std::io::Error) -> StateError {
    if e.raw_os_error() == Some(libc::ELOOP) {
        StateError::Unsafe {
            path: path.to_path_buf(),
            reason: "is a symbolic link (not followed)".into(),
        }
    } else {
        StateError::Io {
            what,
            path: path.to_path_buf(),
            source: e,
        }
    }
}

/// Opens `<dir>/lock` and polls for the exclusive flock (see the crate docs).
fn take_lock(dir: &Path, euid: u32, opts: &OpenOptions) -> Result<Flock<File>, StateError> {
    let path = dir.join(LOCK_FILE);
    let mut file = open_lock_file(&path, euid)?;
    let start = Instant::now();
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                write_pid(&lock, &path);
                tracing::debug!(path = %path.display(), waited_ms = start.elapsed().as_millis(), "took state directory lock");
                return Ok(lock);
            }
            Err((f, Errno::EWOULDBLOCK | Errno::EINTR)) => file = f,
            Err((_, e)) => {
                return Err(StateError::Io {
                    what: "locking",
                    path,
                    source: e.into(),
                })
            }
        }
        if opts.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst)) {
            return Err(StateError::Interrupted {
                path: dir.to_path_buf(),
            });
        }
        let elapsed = start.elapsed();
        if elapsed >= opts.wait {
            return Err(StateError::Busy {
                path: dir.to_path_buf(),
                holder_pid: read_pid(&file),
            });
        }
        std::thread::sleep(POLL.min(opts.wait - elapsed));
    }
}

/// The lock file: `O_NOFOLLOW`, 0600, a regular file of ours. On a read-only file system an
/// existing lock file is opened read-only (flock works on it; only the pid is not written),
/// so that a read-only state directory still serialises its users.
fn open_lock_file(path: &Path, euid: u32) -> Result<File, StateError> {
    let flags = libc::O_NOFOLLOW | libc::O_NONBLOCK;
    let opened = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(flags)
        .open(path);
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::EROFS) => fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags)
            .open(path)
            .map_err(|_| open_error("opening lock file", path, e))?,
        Err(e) => return Err(open_error("opening lock file", path, e)),
    };
    let meta = file.metadata().map_err(|source| StateError::Io {
        what: "opening lock file",
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(StateError::Unsafe {
            path: path.to_path_buf(),
            reason: "is not a regular file".into(),
        });
    }
    if meta.uid() != euid {
        return Err(StateError::Unsafe {
            path: path.to_path_buf(),
            reason: format!("is owned by uid {}, not by uid {euid}", meta.uid()),
        });
    }
    Ok(file)
}

/// Records our pid in the lock file for a waiter's message; best effort (a full or
/// read-only file system must not stop the lock from working).
fn write_pid(file: &File, path: &Path) {
    let text = format!("{}\n", std::process::id());
    let written = file
        .write_all_at(text.as_bytes(), 0)
        .and_then(|()| file.set_len(text.len() as u64));
    if let Err(e) = written {
        tracing::debug!(path = %path.display(), error = %e, "could not record our pid in the lock file");
    }
}

/// The holder's pid from the lock file, if it wrote one.
fn read_pid(file: &File) -> Option<u32> {
    let mut buf = [0u8; 32];
    let n = file.read_at(&mut buf, 0).ok()?;
    let text = std::str::from_utf8(buf.get(..n)?).ok()?;
    text.lines().next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests;
