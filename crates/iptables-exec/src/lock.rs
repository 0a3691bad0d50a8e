//! One lock per network namespace serialises every l3agent process that applies rules there.
//! It is an `flock(2)` on a file in `/run/l3agent/lock`, keyed by the namespace's identity (not
//! its name), so it cannot be bypassed by naming the namespace differently, and the kernel drops
//! it when the holder dies, however it dies.

use std::fs::{DirBuilder, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use crate::error::ExecError;

/// Where the lock files live.
pub const LOCK_DIR: &str = "/run/l3agent/lock";

/// A held lock; released on drop.
#[derive(Debug)]
pub struct NamespaceLock {
    _lock: Flock<File>,
}

impl NamespaceLock {
    /// Takes the lock for namespace `id` in `dir`, waiting at most `wait`.
    pub fn acquire(dir: &Path, id: &str, wait: Duration) -> Result<NamespaceLock, ExecError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| ExecError::Io {
                what: format!("creating {}", dir.display()),
                source,
            })?;
        let path: PathBuf = dir.join(format!("iptables-netns-{id}.lock"));
        let start = Instant::now();
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| ExecError::Io {
                what: format!("opening {}", path.display()),
                source,
            })?;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(NamespaceLock { _lock: lock }),
                Err((f, nix::errno::Errno::EWOULDBLOCK)) => {
                    if start.elapsed() >= wait {
                        return Err(ExecError::LockTimeout {
                            path: path.display().to_string(),
                            secs: wait.as_secs(),
                        });
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_waits_then_times_out() {
        let dir = std::env::temp_dir().join(format!("l3agent-lock-test-{}", std::process::id()));
        let a = NamespaceLock::acquire(&dir, "1-2", Duration::from_secs(1)).unwrap();
        let e = NamespaceLock::acquire(&dir, "1-2", Duration::from_millis(50)).unwrap_err();
        assert!(matches!(e, ExecError::LockTimeout { .. }), "{e}");
        drop(a);
        NamespaceLock::acquire(&dir, "1-2", Duration::from_millis(50)).unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }
}
