//! Allocators whose state survives a restart (Neutron's `fip-linklocal-networks` and
//! `fip-priorities`, D-46..D-49), without Neutron's weaknesses (B-21, B-22):
//! - the file is written atomically (temp file, fsync, rename, fsync of the directory), so a
//!   crash leaves the old or the new state, never a torn one;
//! - it is validated on load: every value inside the pool, no value or key twice, keys free of
//!   separators; a bad file is an error naming the file and line, never silently rewritten;
//! - allocation is deterministic: an existing key keeps its value, a new key gets the lowest
//!   free value; nothing owned by a live key is ever recycled.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// Errors of the allocators.
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    /// Reading or writing the state file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The state file is invalid.
    #[error("{path}, line {line}: {reason}")]
    Corrupt {
        /// The file.
        path: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// No free value is left.
    #[error("{path}: all {size} values of the pool are allocated")]
    Exhausted {
        /// The file.
        path: String,
        /// Pool size.
        size: u32,
    },
    /// A key cannot be stored.
    #[error("allocator key {0:?} is invalid (letters, digits, '.', ':', '_' and '-' only)")]
    BadKey(String),
}

/// A pool of values, numbered `0..size`.
pub trait Pool {
    /// How many values.
    fn size(&self) -> u32;
    /// The value's text in the state file.
    fn format(&self, index: u32) -> String;
    /// The index of a value's text, if it is in the pool.
    fn parse(&self, text: &str) -> Option<u32>;
}

/// The /31 pairs of 169.254.64.0/18 (DVR_FIP_LL_CIDR): 8192 of them. The even address is for
/// `rfp-` (router side), the odd one for `fpr-` (FIP namespace side).
#[derive(Debug, Clone, Copy, Default)]
pub struct LinkLocalPool;

impl LinkLocalPool {
    const BASE: u32 = u32::from_be_bytes([169, 254, 64, 0]);

    /// The (rfp, fpr) addresses of a pair.
    pub fn pair(index: u32) -> (Ipv4Addr, Ipv4Addr) {
        let a = Self::BASE + 2 * index;
        (Ipv4Addr::from(a), Ipv4Addr::from(a + 1))
    }
}

impl Pool for LinkLocalPool {
    fn size(&self) -> u32 {
        8192
    }
    fn format(&self, index: u32) -> String {
        format!("{}/31", Self::pair(index).0)
    }
    fn parse(&self, text: &str) -> Option<u32> {
        let ip: Ipv4Addr = text.strip_suffix("/31")?.parse().ok()?;
        let off = u32::from(ip).checked_sub(Self::BASE)?;
        (off % 2 == 0 && off / 2 < self.size()).then_some(off / 2)
    }
}

/// A range of integers `start..end` (rule priorities 32768..72768, table ids).
#[derive(Debug, Clone, Copy)]
pub struct RangePool {
    /// First value.
    pub start: u32,
    /// One past the last value.
    pub end: u32,
}

impl RangePool {
    /// Neutron's FIP rule priorities (FIP_PR_START..FIP_PR_END).
    pub const FIP_PRIORITIES: RangePool = RangePool {
        start: 32768,
        end: 72768,
    };
    /// SNAT-redirect tables (each doubling as its rule's priority): above every FIP priority
    /// and Neutron's 80000 fast path, below the link-local-derived FIP namespace tables.
    pub const SNAT_TABLES: RangePool = RangePool {
        start: 100_000,
        end: 1_100_000,
    };
}

impl Pool for RangePool {
    fn size(&self) -> u32 {
        self.end - self.start
    }
    fn format(&self, index: u32) -> String {
        (self.start + index).to_string()
    }
    fn parse(&self, text: &str) -> Option<u32> {
        let v: u32 = text
            .parse()
            .ok()
            .filter(|_| text.bytes().all(|b| b.is_ascii_digit()))?;
        (self.start..self.end).contains(&v).then(|| v - self.start)
    }
}

/// A persisted allocator.
#[derive(Debug)]
pub struct Allocator<P: Pool> {
    path: PathBuf,
    pool: P,
    by_key: BTreeMap<String, u32>,
    used: std::collections::BTreeSet<u32>,
    dirty: bool,
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 128
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '_' | '-'))
}

impl<P: Pool> Allocator<P> {
    /// Loads (or starts empty when the file does not exist).
    pub fn load(path: &Path, pool: P) -> Result<Self, AllocError> {
        let show = path.display().to_string();
        let mut a = Allocator {
            path: path.to_owned(),
            pool,
            by_key: BTreeMap::new(),
            used: Default::default(),
            dirty: false,
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(a),
            Err(source) => return Err(AllocError::Io { path: show, source }),
        };
        for (n, line) in text.lines().enumerate() {
            let corrupt = |reason: String| AllocError::Corrupt {
                path: show.clone(),
                line: n + 1,
                reason,
            };
            if line.is_empty() {
                continue;
            }
            let (key, value) = line
                .split_once(',')
                .ok_or_else(|| corrupt(format!("{line:?} is not key,value")))?;
            if !valid_key(key) {
                return Err(corrupt(format!("invalid key {key:?}")));
            }
            let index = a
                .pool
                .parse(value)
                .ok_or_else(|| corrupt(format!("value {value:?} is outside the pool")))?;
            if a.by_key.insert(key.to_owned(), index).is_some() {
                return Err(corrupt(format!("key {key:?} appears twice")));
            }
            if !a.used.insert(index) {
                return Err(corrupt(format!("value {value} is allocated twice")));
            }
        }
        Ok(a)
    }

    /// The value index of `key`, if allocated.
    pub fn get(&self, key: &str) -> Option<u32> {
        self.by_key.get(key).copied()
    }

    /// Every allocation.
    pub fn entries(&self) -> impl Iterator<Item = (&str, u32)> {
        self.by_key.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// The value index of `key`: its existing one, or the lowest free one (in memory: call
    /// [`Allocator::save`] once after a batch).
    pub fn allocate(&mut self, key: &str) -> Result<u32, AllocError> {
        if !valid_key(key) {
            return Err(AllocError::BadKey(key.to_owned()));
        }
        if let Some(v) = self.get(key) {
            return Ok(v);
        }
        let free = (0..self.pool.size())
            .find(|i| !self.used.contains(i))
            .ok_or_else(|| AllocError::Exhausted {
                path: self.path.display().to_string(),
                size: self.pool.size(),
            })?;
        self.by_key.insert(key.to_owned(), free);
        self.used.insert(free);
        self.dirty = true;
        Ok(free)
    }

    /// Frees `key`'s value (persisted). Returns whether it had one.
    pub fn release(&mut self, key: &str) -> Result<bool, AllocError> {
        let Some(v) = self.by_key.remove(key) else {
            return Ok(false);
        };
        self.used.remove(&v);
        self.dirty = true;
        self.save()?;
        Ok(true)
    }

    /// Frees every value whose key is not in `live` (garbage collection after a full apply).
    pub fn retain(&mut self, live: &dyn Fn(&str) -> bool) -> Result<Vec<String>, AllocError> {
        let dead: Vec<String> = self.by_key.keys().filter(|k| !live(k)).cloned().collect();
        for k in &dead {
            if let Some(v) = self.by_key.remove(k) {
                self.used.remove(&v);
            }
        }
        if !dead.is_empty() {
            self.dirty = true;
            self.save()?;
        }
        Ok(dead)
    }

    /// Persists the allocations if anything changed since the last save or load.
    pub fn save(&mut self) -> Result<(), AllocError> {
        if !self.dirty {
            return Ok(());
        }
        self.dirty = false;
        let text: String = self
            .by_key
            .iter()
            .map(|(k, v)| format!("{k},{}\n", self.pool.format(*v)))
            .collect();
        write_atomic(&self.path, text.as_bytes())
    }
}

/// Writes `data` to `path` atomically: a temp file in the same directory, fsync, rename over
/// the target, fsync of the directory.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), AllocError> {
    let io = |source| AllocError::Io {
        path: path.display().to_string(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".tmp-{name}-{}", std::process::id()));
    // A leftover of a crashed writer with our pid is ours to remove; a planted symlink is
    // never followed (O_EXCL | O_NOFOLLOW).
    let _ = std::fs::remove_file(&tmp);
    let mut f = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(io)?
    };
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("l3agent-alloc-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d.join("state")
    }

    #[test]
    fn deterministic_and_persistent() {
        let p = tmp("det");
        let mut a = Allocator::load(&p, LinkLocalPool).unwrap();
        assert_eq!(a.allocate("r1").unwrap(), 0);
        assert_eq!(a.allocate("r2").unwrap(), 1);
        assert_eq!(a.allocate("r1").unwrap(), 0);
        assert!(a.release("r1").unwrap());
        assert_eq!(a.allocate("r3").unwrap(), 0, "lowest free first");
        a.save().unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "r2,169.254.64.2/31\nr3,169.254.64.0/31\n"
        );
        let b = Allocator::load(&p, LinkLocalPool).unwrap();
        assert_eq!((b.get("r2"), b.get("r3")), (Some(1), Some(0)));
        assert_eq!(
            LinkLocalPool::pair(1),
            (
                "169.254.64.2".parse().unwrap(),
                "169.254.64.3".parse().unwrap()
            )
        );
        let dead = Allocator::load(&p, LinkLocalPool)
            .unwrap()
            .retain(&|k| k == "r2")
            .unwrap();
        assert_eq!(dead, ["r3"]);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "r2,169.254.64.2/31\n");
    }

    #[test]
    fn validated_on_load() {
        let p = tmp("bad");
        for (text, expect) in [
            ("r1,169.254.64.1/31\n", "outside the pool"),
            ("r1,169.254.128.0/31\n", "outside the pool"),
            (
                "r1,169.254.64.0/31\nr2,169.254.64.0/31\n",
                "allocated twice",
            ),
            ("r1,169.254.64.0/31\nr1,169.254.64.2/31\n", "appears twice"),
            ("garbage\n", "not key,value"),
            ("a b,169.254.64.0/31\n", "invalid key"),
        ] {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, text).unwrap();
            let e = Allocator::load(&p, LinkLocalPool).unwrap_err().to_string();
            assert!(e.contains(expect) && e.contains("line"), "{text:?}: {e}");
        }
        std::fs::write(&p, "1.2.3.4,32768\n").unwrap();
        assert!(Allocator::load(&p, RangePool::FIP_PRIORITIES).is_ok());
        std::fs::write(&p, "1.2.3.4,72768\n").unwrap();
        assert!(Allocator::load(&p, RangePool::FIP_PRIORITIES).is_err());
    }

    #[test]
    fn exhaustion_and_bad_keys() {
        let p = tmp("exh");
        let mut a = Allocator::load(&p, RangePool { start: 10, end: 12 }).unwrap();
        a.allocate("a").unwrap();
        a.allocate("b").unwrap();
        assert!(matches!(a.allocate("c"), Err(AllocError::Exhausted { .. })));
        assert!(matches!(a.allocate("x,y"), Err(AllocError::BadKey(_))));
        assert!(matches!(a.allocate("x\ny"), Err(AllocError::BadKey(_))));
    }
}
