//! Allocators whose state survives a restart (Neutron's `fip-linklocal-networks` and
//! `fip-priorities`, D-46..D-49), without Neutron's weaknesses (B-21, B-22):
//! - the file is a record of the state directory ([`crate::records`] reads and writes it
//!   through [`l3agent_state::StateDir`]: atomic replacement, no symbolic link followed, no
//!   temporary file left behind), so a crash leaves the old or the new state, never a torn one;
//! - it is validated on parse: every value inside the pool, no value or key twice, keys free
//!   of separators; a bad file is an error naming the file and line, never silently rewritten;
//! - allocation is deterministic: an existing key keeps its value, a new key gets the lowest
//!   free value; nothing owned by a live key is ever recycled.
//!
//! This module is pure: it turns the file's text into allocations and back.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// Errors of the allocators.
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
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

/// An allocator: the allocations of one pool, read from and rendered to its file's text.
#[derive(Debug)]
pub struct Allocator<P: Pool> {
    /// The file, for messages.
    path: String,
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
    /// No allocation yet; `path` names the file in messages.
    pub fn empty(path: &str, pool: P) -> Self {
        Allocator {
            path: path.to_owned(),
            pool,
            by_key: BTreeMap::new(),
            used: Default::default(),
            dirty: false,
        }
    }

    /// Parses the file's content (`key,value` lines), validating every line.
    pub fn parse(path: &str, bytes: &[u8], pool: P) -> Result<Self, AllocError> {
        let mut a = Allocator::empty(path, pool);
        let text = std::str::from_utf8(bytes).map_err(|e| AllocError::Corrupt {
            path: path.to_owned(),
            line: 1 + bytes[..e.valid_up_to()]
                .iter()
                .filter(|b| **b == b'\n')
                .count(),
            reason: "not UTF-8 text".into(),
        })?;
        for (n, line) in text.lines().enumerate() {
            // Values are echoed only when they are short and printable: the file may not be
            // what it claims to be.
            let corrupt = |reason: String| AllocError::Corrupt {
                path: path.to_owned(),
                line: n + 1,
                reason,
            };
            if line.is_empty() {
                continue;
            }
            let (key, value) = line
                .split_once(',')
                .ok_or_else(|| corrupt(format!("{} is not key,value", shown(line))))?;
            if !valid_key(key) {
                return Err(corrupt(format!("invalid key {}", shown(key))));
            }
            let index = a
                .pool
                .parse(value)
                .ok_or_else(|| corrupt(format!("value {} is outside the pool", shown(value))))?;
            if a.by_key.insert(key.to_owned(), index).is_some() {
                return Err(corrupt(format!("key {key:?} appears twice")));
            }
            if !a.used.insert(index) {
                return Err(corrupt(format!("value {value} is allocated twice")));
            }
        }
        Ok(a)
    }

    /// The file's content: one `key,value` line per allocation, sorted by key.
    pub fn render(&self) -> String {
        self.by_key
            .iter()
            .map(|(k, v)| format!("{k},{}\n", self.pool.format(*v)))
            .collect()
    }

    /// Whether anything changed since it was parsed (or [`Allocator::mark_saved`] was called).
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// The caller saved [`Allocator::render`].
    pub fn mark_saved(&mut self) {
        self.dirty = false;
    }

    /// The value index of `key`, if allocated.
    pub fn get(&self, key: &str) -> Option<u32> {
        self.by_key.get(key).copied()
    }

    /// Every allocation.
    pub fn entries(&self) -> impl Iterator<Item = (&str, u32)> {
        self.by_key.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// The value index of `key`: its existing one, or the lowest free one.
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
                path: self.path.clone(),
                size: self.pool.size(),
            })?;
        self.by_key.insert(key.to_owned(), free);
        self.used.insert(free);
        self.dirty = true;
        Ok(free)
    }

    /// Frees `key`'s value. Returns whether it had one.
    pub fn release(&mut self, key: &str) -> bool {
        let Some(v) = self.by_key.remove(key) else {
            return false;
        };
        self.used.remove(&v);
        self.dirty = true;
        true
    }

    /// Frees every value whose key is not in `live` (garbage collection after a full apply);
    /// returns the keys freed.
    pub fn retain(&mut self, live: &dyn Fn(&str) -> bool) -> Vec<String> {
        let dead: Vec<String> = self.by_key.keys().filter(|k| !live(k)).cloned().collect();
        for k in &dead {
            self.release(k);
        }
        dead
    }
}

/// A value from the file for a message: escaped, and cut when long.
fn shown(text: &str) -> String {
    const MAX: usize = 40;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{:?}… ({} bytes)", &text[..cut], text.len()),
        None => format!("{text:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_rendered_back() {
        let mut a = Allocator::empty("f", LinkLocalPool);
        assert_eq!(a.allocate("r1").unwrap(), 0);
        assert_eq!(a.allocate("r2").unwrap(), 1);
        assert_eq!(a.allocate("r1").unwrap(), 0);
        assert!(a.release("r1"));
        assert!(!a.release("r1"));
        assert_eq!(a.allocate("r3").unwrap(), 0, "lowest free first");
        assert!(a.is_dirty());
        let text = a.render();
        assert_eq!(text, "r2,169.254.64.2/31\nr3,169.254.64.0/31\n");
        let mut b = Allocator::parse("f", text.as_bytes(), LinkLocalPool).unwrap();
        assert!(!b.is_dirty());
        assert_eq!((b.get("r2"), b.get("r3")), (Some(1), Some(0)));
        assert_eq!(
            LinkLocalPool::pair(1),
            (
                "169.254.64.2".parse().unwrap(),
                "169.254.64.3".parse().unwrap()
            )
        );
        assert_eq!(b.retain(&|k| k == "r2"), ["r3"]);
        assert!(b.is_dirty());
        assert_eq!(b.render(), "r2,169.254.64.2/31\n");
        b.mark_saved();
        assert!(b.retain(&|_| true).is_empty());
        assert!(!b.is_dirty());
    }

    #[test]
    fn validated_on_parse() {
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
            let e = Allocator::parse("f", text.as_bytes(), LinkLocalPool)
                .unwrap_err()
                .to_string();
            assert!(e.contains(expect) && e.contains("line"), "{text:?}: {e}");
        }
        let e = Allocator::parse("f", b"r1,1\n\xff\xfe", LinkLocalPool)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("UTF-8"), "{e}");
        // A long line is not echoed whole.
        let long = "x".repeat(10_000);
        let e = Allocator::parse("f", long.as_bytes(), LinkLocalPool)
            .unwrap_err()
            .to_string();
        assert!(e.len() < 200, "{e}");
        assert!(Allocator::parse("f", b"1.2.3.4,32768\n", RangePool::FIP_PRIORITIES).is_ok());
        assert!(Allocator::parse("f", b"1.2.3.4,72768\n", RangePool::FIP_PRIORITIES).is_err());
    }

    #[test]
    fn exhaustion_and_bad_keys() {
        let mut a = Allocator::empty("f", RangePool { start: 10, end: 12 });
        a.allocate("a").unwrap();
        a.allocate("b").unwrap();
        assert!(matches!(a.allocate("c"), Err(AllocError::Exhausted { .. })));
        assert!(matches!(a.allocate("x,y"), Err(AllocError::BadKey(_))));
        assert!(matches!(a.allocate("x\ny"), Err(AllocError::BadKey(_))));
    }
}
