//! One lock per network namespace serialises every l3agent process that applies rules there.
//! It is an `flock(2)` on a file in `/run/l3agent/lock`, keyed by the namespace's identity
//! ([`NsId`], not its name), so it cannot be bypassed by naming the namespace differently, and
//! the kernel drops it when the holder dies, however it dies.
//!
//! A lock file exists only while its lock is held: the holder removes it before releasing, so
//! the directory never keeps one file per namespace ever used (namespaces come and go with
//! routers). Leftovers of a holder that died holding (the kernel released the lock, nobody
//! removed the file) are removed by the next [`NamespaceLock::acquire`], whatever its
//! namespace. Removing a lock file is safe because every taker follows one protocol:
//!
//! - only a holder of a file's lock removes that file (the releasing holder, or a sweeper that
//!   took a leftover's lock without waiting), and only while the path still names that file;
//! - a taker that got the lock checks that the path still names the file it locked (same
//!   device and inode). If not, the file was removed while it waited: it lets go and starts
//!   again with whatever file the path names now.
//!
//! So the path names one file at a time, only that file's holder can change that, and at most
//! one process holds the lock of the file the path names: mutual exclusion holds although files
//! come and go.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use l3agent_netns::NsId;
use nix::fcntl::{Flock, FlockArg};

use crate::error::ExecError;

/// Where the lock files live.
pub const LOCK_DIR: &str = "/run/l3agent/lock";

const PREFIX: &str = "iptables-netns-";
const SUFFIX: &str = ".lock";

/// The lock file of namespace `id` in `dir`.
pub fn lock_path(dir: &Path, id: NsId) -> PathBuf {
    dir.join(format!("{PREFIX}{id}{SUFFIX}"))
}

/// A held lock; released on drop, after its file is removed.
#[derive(Debug)]
pub struct NamespaceLock {
    lock: Flock<File>,
    path: PathBuf,
}

impl NamespaceLock {
    /// Takes the lock for namespace `id` in `dir`, waiting at most `wait`.
    pub fn acquire(dir: &Path, id: NsId, wait: Duration) -> Result<NamespaceLock, ExecError> {
        crate::error::private_dir(dir)?;
        let path = lock_path(dir, id);
        sweep(dir, &path);
        let start = Instant::now();
        loop {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(|source| ExecError::Io {
                    what: format!("opening {}", path.display()),
                    source,
                })?;
            if let Some(lock) = lock_named(file, &path, start, wait)? {
                return Ok(NamespaceLock { lock, path });
            }
            // The file was removed while we waited for it: take the one the path names now.
            if start.elapsed() >= wait {
                return Err(timeout(&path, wait));
            }
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for NamespaceLock {
    /// Removes the file while the lock is still held; the lock itself is released right after,
    /// when the descriptor closes. A taker that was waiting on this file sees it gone.
    fn drop(&mut self) {
        if names(&self.path, &self.lock) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn timeout(path: &Path, wait: Duration) -> ExecError {
    ExecError::LockTimeout {
        path: path.display().to_string(),
        secs: wait.as_secs(),
    }
}

/// Locks `file`, waiting until `start + wait`. `None`: locked, but `path` no longer names the
/// file (it was removed while we waited), so the lock was let go again.
fn lock_named(
    mut file: File,
    path: &Path,
    start: Instant,
    wait: Duration,
) -> Result<Option<Flock<File>>, ExecError> {
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(names(path, &lock).then_some(lock)),
            Err((f, nix::errno::Errno::EWOULDBLOCK)) => {
                if start.elapsed() >= wait {
                    return Err(timeout(path, wait));
                }
                file = f;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((_, errno)) => {
                return Err(ExecError::Io {
                    what: format!("locking {}", path.display()),
                    source: errno.into(),
                })
            }
        }
    }
}

/// Whether `path` names the open `file` (same device and inode).
fn names(path: &Path, file: &File) -> bool {
    match (std::fs::symlink_metadata(path), file.metadata()) {
        (Ok(p), Ok(f)) => p.dev() == f.dev() && p.ino() == f.ino(),
        _ => false,
    }
}

/// Removes the lock files in `dir` that nobody holds (left by processes that died holding
/// them), but `own`: each under its lock, taken without waiting, and only if the path still
/// names the file locked.
fn sweep(dir: &Path, own: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let ours = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(SUFFIX));
        if !ours || path == own {
            continue;
        }
        let Ok(file) = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        else {
            continue;
        };
        if let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            if names(&path, &lock) {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn dir(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("l3agent-lock-test-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn id(ino: u64) -> NsId {
        NsId { dev: 4, ino }
    }

    fn files(dir: &Path) -> usize {
        std::fs::read_dir(dir).map_or(0, |e| e.count())
    }

    #[test]
    fn second_holder_waits_then_times_out() {
        let dir = dir("wait");
        let a = NamespaceLock::acquire(&dir, id(2), Duration::from_secs(1)).unwrap();
        let e = NamespaceLock::acquire(&dir, id(2), Duration::from_millis(50)).unwrap_err();
        assert!(matches!(e, ExecError::LockTimeout { .. }), "{e}");
        drop(a);
        NamespaceLock::acquire(&dir, id(2), Duration::from_millis(50)).unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_file_exists_only_while_held() {
        let dir = dir("bounded");
        for i in 0..100 {
            let l = NamespaceLock::acquire(&dir, id(i), Duration::from_secs(1)).unwrap();
            assert!(l.path().exists());
            assert_eq!(files(&dir), 1);
        }
        assert_eq!(
            files(&dir),
            0,
            "one file per namespace ever locked was kept"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn leftovers_of_dead_holders_are_swept_but_held_files_are_not() {
        let dir = dir("sweep");
        let held = NamespaceLock::acquire(&dir, id(1), Duration::from_secs(1)).unwrap();
        // What a holder killed while holding leaves: the file, unlocked.
        for i in 10..20 {
            std::fs::write(lock_path(&dir, id(i)), "").unwrap();
        }
        std::fs::write(dir.join("unrelated"), "").unwrap();
        assert_eq!(files(&dir), 12);
        let other = NamespaceLock::acquire(&dir, id(2), Duration::from_secs(1)).unwrap();
        // The held lock keeps its file (and stays exclusive); the leftovers are gone.
        assert!(held.path().exists() && other.path().exists());
        assert!(dir.join("unrelated").exists());
        assert_eq!(files(&dir), 3);
        let e = NamespaceLock::acquire(&dir, id(1), Duration::from_millis(30)).unwrap_err();
        assert!(matches!(e, ExecError::LockTimeout { .. }), "{e}");
        drop((held, other));
        assert_eq!(files(&dir), 1);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Threads hammer one namespace's lock while others sweep (by locking other namespaces):
    /// files are removed and recreated all the time, and never two hold the lock at once.
    #[test]
    fn exclusive_while_files_come_and_go() {
        let dir = dir("churn");
        let inside = AtomicUsize::new(0);
        let entered = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for t in 0..8u64 {
                let (dir, inside, entered) = (&dir, &inside, &entered);
                s.spawn(move || {
                    for i in 0..150 {
                        if t % 4 == 3 {
                            // A sweeper, on namespaces of its own.
                            let _l = NamespaceLock::acquire(dir, id(100 + t * 1000 + i), {
                                Duration::from_secs(30)
                            })
                            .unwrap();
                            continue;
                        }
                        let _l =
                            NamespaceLock::acquire(dir, id(1), Duration::from_secs(30)).unwrap();
                        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders");
                        entered.fetch_add(1, Ordering::SeqCst);
                        std::thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                });
            }
        });
        assert_eq!(entered.load(Ordering::SeqCst), 6 * 150);
        assert_eq!(files(&dir), 0);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A lock directory others can write to is refused (they could plant the lock file);
    /// the message names the directory and its mode.
    #[test]
    fn a_group_writable_lock_directory_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = dir("gw");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o775)).unwrap();
        let e = NamespaceLock::acquire(&dir, id(3), Duration::from_millis(50)).unwrap_err();
        assert!(matches!(e, ExecError::UnsafeDir { .. }), "{e}");
        assert!(e.to_string().contains("0775"), "{e}");
        assert_eq!(files(&dir), 0);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A link planted at the lock file's name is not followed (O_NOFOLLOW).
    #[test]
    fn a_link_planted_at_the_lock_name_is_not_followed() {
        let dir = dir("link");
        crate::error::private_dir(&dir).unwrap();
        let victim = dir.join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, lock_path(&dir, id(4))).unwrap();
        assert!(NamespaceLock::acquire(&dir, id(4), Duration::from_millis(50)).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        let _ = std::fs::remove_dir_all(dir);
    }
}
