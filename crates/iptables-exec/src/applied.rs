//! The one-shot apply of a fresh process (`l3agent iptables apply --rules FILE`), and the
//! record that lets the next process prove that nothing changed since, without reading the
//! kernel.
//!
//! A long-lived [`Manager`] keeps the committed state in memory; a fresh process has none, and
//! reading it back (`iptables-save` of 50,000 rules) costs more than everything else it does.
//! nf_tables keeps a ruleset generation id per network namespace, bumped by every committed
//! change of any program and by nothing else ([`crate::generation`]). So after an apply that
//! was the only writer, this module records, per namespace and wrap name, in
//! `/run/l3agent/iptables/<dev>-<ino>.<wrap>.applied` ([`STATE_DIR`], `0700`, files `0600`,
//! written atomically):
//!
//! - the stamp: boot id, the namespace's cookie (`SO_NETNS_COOKIE`: never reused within a
//!   boot, unlike the inode in the file name) and the generation after the apply;
//! - the backend (always nf_tables: legacy has no generation), the wrap name, the namespace's
//!   name;
//! - the digest of the input that was applied ([`input_digest`]: the rules file and the
//!   options) and of the model it made ([`IptablesModel::digest`]);
//! - the rule set of each family as the kernel held it then (the manager's committed state,
//!   in `iptables-save` form, each with its SHA-256).
//!
//! The next process reads the generation first. If the stamp still matches, the kernel holds
//! exactly the recorded rule set: an input with the recorded digest needs nothing at all (no
//! model, no save, no restore); any other input is planned against the recorded rule set
//! instead of an `iptables-save`. If anything else wrote in between (another program,
//! another wrap name, a flush), the generation differs and the apply reads the kernel as
//! before, repairing any drift. A record is written only when the generation after the apply
//! is exactly the generation before the read plus the table blocks this apply committed:
//! proof that no other writer slipped in between. Every doubt (missing, unreadable, corrupt,
//! other boot, other namespace, other backend, legacy tables in the namespace) means a full
//! read: the record is a cache, never needed for correctness.
//!
//! The namespace lock ([`crate::lock`]) is held from before the generation is read until the
//! record is written, so l3agent processes never interleave here.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use l3agent_iptables::kernel::KernelState;
use l3agent_iptables::{created_chains, Family, IptablesModel, Op, Table};
use sha2::{Digest, Sha256};
use tracing::{debug, info};

use crate::backend::{Backend, BackendChoice};
use crate::error::{ApplyError, ExecError};
use crate::generation::GenerationSocket;
use crate::lock::NamespaceLock;
use crate::manager::{ApplyReport, Manager};
use crate::netns::{Netns, NetnsTarget, NsId};
use crate::runner::{ExecOptions, ProcessRunner};
use crate::stream::Streamed;

/// Where the records live.
pub const STATE_DIR: &str = "/run/l3agent/iptables";

const MAGIC: &str = "l3agent-iptables-applied 1";
const SUFFIX: &str = ".applied";

/// What identifies one state of one namespace's nf_tables rule set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelStamp {
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id: String,
    /// The namespace's cookie (`SO_NETNS_COOKIE`): unique among all namespaces of a boot.
    pub netns_cookie: u64,
    /// The nf_tables ruleset generation id.
    pub generation: u32,
}

/// Reads the stamp of the namespace `sock` was opened in.
pub fn stamp(sock: &GenerationSocket) -> Result<KernelStamp, ExecError> {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map_err(|source| ExecError::Io {
            what: "reading /proc/sys/kernel/random/boot_id".into(),
            source,
        })?
        .trim()
        .to_owned();
    Ok(KernelStamp {
        boot_id,
        netns_cookie: sock.netns_cookie()?,
        generation: sock.query()?,
    })
}

/// One record (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedRecord {
    /// The kernel's stamp right after the apply.
    pub stamp: KernelStamp,
    /// The backend the rules were written with.
    pub backend: Backend,
    /// The wrap name.
    pub wrap: String,
    /// The namespace's name (`None`: the caller's own).
    pub netns_name: Option<String>,
    /// [`input_digest`] of what was applied, if the caller had one.
    pub input_digest: Option<String>,
    /// [`IptablesModel::digest`] of the model applied, in hex.
    pub model_digest: String,
    /// The rule set of each family the model manages, as the kernel held it.
    pub families: Vec<(Family, String)>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The digest of an input to a one-shot apply: the bytes of the rules file and anything else
/// that decides the model (`context`: the backend choice, ...), and this build of l3agent.
pub fn input_digest(context: &str, bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    for part in [
        concat!("l3agent-iptables-input ", env!("CARGO_PKG_VERSION")).as_bytes(),
        context.as_bytes(),
        bytes,
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    hex(&h.finalize())
}

impl AppliedRecord {
    /// The file's bytes.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out)
            .expect("writing to memory does not fail");
        out
    }

    /// Writes the file's bytes to `w` ([`AppliedRecord::render`] without a copy of the rule
    /// sets in between).
    pub fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        let s = &self.stamp;
        write!(
            w,
            "{MAGIC}\nboot {}\ncookie {}\ngeneration {}\nbackend {}\nwrap {}\nnetns {}\ninput {}\nmodel {}\n",
            s.boot_id,
            s.netns_cookie,
            s.generation,
            self.backend,
            self.wrap,
            self.netns_name.as_deref().unwrap_or("-"),
            self.input_digest.as_deref().unwrap_or("-"),
            self.model_digest
        )?;
        for (family, text) in &self.families {
            writeln!(
                w,
                "family {family} {} {}",
                text.len(),
                sha256_hex(text.as_bytes())
            )?;
            w.write_all(text.as_bytes())?;
        }
        Ok(())
    }

    /// Parses a record; `Err` says what is wrong (the caller then reads the kernel). The rule
    /// sets are checked against their digests.
    pub fn parse(bytes: &[u8]) -> Result<AppliedRecord, String> {
        Self::parse_if(bytes, |_| true).map(|r| r.expect("a record the filter keeps"))
    }

    /// [`AppliedRecord::parse`] of the records whose stamp `keep` accepts (`Ok(None)` for the
    /// others, without reading their rule sets).
    pub fn parse_if(
        bytes: &[u8],
        keep: impl Fn(&KernelStamp) -> bool,
    ) -> Result<Option<AppliedRecord>, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_owned())?;
        let mut rest = text;
        let mut line = || -> Result<&str, String> {
            let (l, r) = rest.split_once('\n').ok_or("truncated header")?;
            rest = r;
            Ok(l)
        };
        if line()? != MAGIC {
            return Err("not a record of this version".into());
        }
        let mut field = |name: &str| -> Result<String, String> {
            let l = line()?;
            l.strip_prefix(name)
                .and_then(|v| v.strip_prefix(' '))
                .map(str::to_owned)
                .ok_or_else(|| format!("expected {name}, found {l:?}"))
        };
        let boot_id = field("boot")?;
        let netns_cookie = field("cookie")?.parse().map_err(|_| "bad cookie")?;
        let generation = field("generation")?.parse().map_err(|_| "bad generation")?;
        let backend = match field("backend")?.as_str() {
            "nft" => Backend::Nft,
            "legacy" => Backend::Legacy,
            other => return Err(format!("bad backend {other:?}")),
        };
        let stamp = KernelStamp {
            boot_id,
            netns_cookie,
            generation,
        };
        if !keep(&stamp) {
            return Ok(None);
        }
        let wrap = field("wrap")?;
        let opt = |v: String| (v != "-").then_some(v);
        let netns_name = opt(field("netns")?);
        let input_digest = opt(field("input")?);
        let model_digest = field("model")?;
        let mut families = Vec::new();
        while !rest.is_empty() {
            let (head, body) = rest.split_once('\n').ok_or("truncated family header")?;
            let mut parts = head.split(' ');
            let (Some("family"), Some(f), Some(len), Some(digest), None) = (
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
            ) else {
                return Err(format!("bad family header {head:?}"));
            };
            let family = Family::ALL
                .into_iter()
                .find(|x| x.as_str() == f)
                .ok_or_else(|| format!("bad family {f:?}"))?;
            let len: usize = len.parse().map_err(|_| "bad length")?;
            if body.len() < len || !body.is_char_boundary(len) {
                return Err("truncated rule set".into());
            }
            let (save, after) = body.split_at(len);
            if sha256_hex(save.as_bytes()) != digest {
                return Err(format!("the {family} rule set does not match its digest"));
            }
            families.push((family, save.to_owned()));
            rest = after;
        }
        Ok(Some(AppliedRecord {
            stamp,
            backend,
            wrap,
            netns_name,
            input_digest,
            model_digest,
            families,
        }))
    }
}

/// The record file of namespace `id` and wrap name `wrap` in `dir`.
pub fn record_path(dir: &Path, id: NsId, wrap: &str) -> PathBuf {
    dir.join(format!("{id}.{wrap}{SUFFIX}"))
}

/// Every record of namespace `id` in `dir` (one per wrap name applied there), readable and
/// well-formed; anything else is skipped.
pub fn records_of(dir: &Path, id: NsId) -> Vec<AppliedRecord> {
    records_where(dir, id, |_| true)
}

/// [`records_of`] with a stamp `keep` accepts (the others are not read past their header).
pub fn records_where(
    dir: &Path,
    id: NsId,
    keep: impl Fn(&KernelStamp) -> bool,
) -> Vec<AppliedRecord> {
    let prefix = format!("{id}.");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(SUFFIX))
        })
        .filter_map(|e| {
            let bytes = std::fs::read(e.path()).ok()?;
            match AppliedRecord::parse_if(&bytes, &keep) {
                Ok(r) => r,
                Err(why) => {
                    debug!(path = %e.path().display(), %why, "ignoring an applied-state record");
                    None
                }
            }
        })
        .collect()
}

/// Writes the record of namespace `id` atomically (a temporary file renamed over it).
pub fn store(dir: &Path, id: NsId, record: &AppliedRecord) -> Result<(), ExecError> {
    let io = |what: String| move |source| ExecError::Io { what, source };
    crate::error::private_dir(dir)?;
    let path = record_path(dir, id, &record.wrap);
    let tmp = dir.join(format!(".{id}.{}.{}.tmp", record.wrap, std::process::id()));
    // O_EXCL|O_NOFOLLOW: never write through a link or into a file planted at the name. A
    // leftover (ours, from a process with the same pid that died; or planted) is unlinked,
    // which removes the link itself, never its target, and the name is created afresh.
    let create = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
    };
    let mut f = match create() {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(&tmp).map_err(io(format!("removing {}", tmp.display())))?;
            create()
        }
        other => other,
    }
    .map_err(io(format!("creating {}", tmp.display())))?;
    // The small parts through a buffer, each rule set straight from its string.
    let mut w = std::io::BufWriter::with_capacity(64 * 1024, &mut f);
    record
        .write_to(&mut w)
        .and_then(|()| w.flush())
        .map_err(io(format!("writing {}", tmp.display())))?;
    drop(w);
    drop(f);
    std::fs::rename(&tmp, &path).map_err(io(format!("renaming to {}", path.display())))
}

/// Removes the record of namespace `id` and `wrap` (missing is fine).
pub fn forget(dir: &Path, id: NsId, wrap: &str) {
    let _ = std::fs::remove_file(record_path(dir, id, wrap));
}

/// Removes the records of named namespaces that are gone (their name no longer denotes the
/// namespace of the file name), but `keep`: records are replaced per namespace, so without
/// this a host that creates and deletes namespaces would keep one per namespace ever applied.
fn sweep(dir: &Path, keep: NsId) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str().filter(|n| n.ends_with(SUFFIX)) else {
            continue;
        };
        let Some(id) = name.split('.').next() else {
            continue;
        };
        if id == keep.to_string() {
            continue;
        }
        // The header names the namespace; read only the start of the file.
        let Ok(mut f) = std::fs::File::open(e.path()) else {
            continue;
        };
        let mut head = vec![0u8; 4096];
        let n = std::io::Read::read(&mut f, &mut head).unwrap_or(0);
        let head = String::from_utf8_lossy(&head[..n]);
        let Some(ns) = head
            .lines()
            .find_map(|l| l.strip_prefix("netns "))
            .filter(|n| *n != "-")
        else {
            continue;
        };
        let alive = std::fs::metadata(Path::new(crate::netns::NETNS_DIR).join(ns)).is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            format!("{}-{}", m.dev(), m.ino()) == id
        });
        if !alive {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Whether the namespace has no legacy (x_tables) table at all: `/proc/net/ip_tables_names`
/// and `ip6_tables_names` read from inside it are empty (tables are instantiated in a namespace
/// on first use). Then legacy holds no rule there, and backend detection has nothing to find
/// beyond nf_tables.
fn legacy_unused(netns: &Netns) -> bool {
    netns
        .run::<_, ExecError>(|| {
            ["ip_tables_names", "ip6_tables_names"].iter().all(|f| {
                std::fs::read_to_string(format!("/proc/thread-self/net/{f}"))
                    .is_ok_and(|t| t.trim().is_empty())
            })
        })
        .unwrap_or(false)
}

/// How a one-shot apply knew the kernel's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// The input (or the model it made) was the recorded one and the generation unchanged:
    /// nothing was read, planned or run.
    Unchanged,
    /// The generation was unchanged: planned against the recorded rule set, no save.
    Recorded,
    /// Read from the kernel (`iptables-save`).
    Read,
}

/// What a one-shot apply did.
#[derive(Debug)]
pub struct OneShotReport {
    /// The manager's report (empty for [`Basis::Unchanged`]).
    pub apply: ApplyReport,
    /// The backend.
    pub backend: Backend,
    /// How the kernel's state was known.
    pub basis: Basis,
    /// Whether a record is in place for the next process.
    pub recorded: bool,
    /// Processes, saves and restores of this apply (see [`crate::stats`]).
    pub stats: crate::stats::StatsSnapshot,
    /// The manager, for more work under the same lock (e.g. a convergence check); `None` for
    /// [`Basis::Unchanged`].
    pub manager: Option<Manager<ProcessRunner>>,
}

/// A one-shot apply in progress: the namespace open and locked, its generation read, the
/// records of the namespace that are still current. Steps: [`OneShot::begin`], then
/// [`OneShot::unchanged`] (the no-op proof: no model needed), then [`OneShot::read`]
/// (while the caller builds its model on another thread), then [`OneShot::apply`] or
/// [`OneShot::plan`].
#[derive(Debug)]
pub struct OneShot {
    netns: Netns,
    lock: Arc<NamespaceLock>,
    choice: BackendChoice,
    options: ExecOptions,
    dir: PathBuf,
    socket: Option<GenerationSocket>,
    before: Option<KernelStamp>,
    /// Records whose stamp is the kernel's now (the namespace's nf_tables rule set is exactly
    /// theirs).
    current: Vec<AppliedRecord>,
    /// Filled by [`OneShot::read`].
    read: Option<Read>,
    /// The detection's saves parsed for [`OneShot::stream_start`], per family: the manager
    /// takes them as known instead of parsing them again.
    parsed: [Option<KernelState>; 2],
}

#[derive(Debug)]
enum Read {
    /// A current record's rule sets (the whole namespace's, whichever wrap name wrote it).
    Recorded(Vec<(Family, KernelState)>),
    /// A runner whose backend-detection saves are the read.
    Saved(Box<ProcessRunner>),
}

impl OneShot {
    /// Opens and locks the namespace, reads its generation and finds its current records in
    /// `dir` ([`STATE_DIR`] in production).
    pub fn begin(
        target: &NetnsTarget,
        choice: BackendChoice,
        options: ExecOptions,
        dir: &Path,
    ) -> Result<OneShot, ExecError> {
        let netns = Netns::open_target(target)?;
        crate::error::private_dir(dir)?;
        let lock = Arc::new(NamespaceLock::acquire(
            &options.lock_dir,
            netns.id(),
            options.lock_wait,
        )?);
        let nft_ok = choice != BackendChoice::Fixed(Backend::Legacy)
            && l3agent_process::find_program(&Backend::Nft.program(Family::V4, "restore")).is_ok();
        let socket = if nft_ok {
            GenerationSocket::open(Some(&netns)).ok()
        } else {
            None
        };
        let before = socket.as_ref().and_then(|s| stamp(s).ok());
        let mut current: Vec<AppliedRecord> = match &before {
            Some(now) => records_where(dir, netns.id(), |s| s == now)
                .into_iter()
                .filter(|r| r.backend == Backend::Nft)
                .collect(),
            None => Vec::new(),
        };
        if !current.is_empty() && !legacy_unused(&netns) {
            // Legacy tables exist: let the detection look at them (mixed backends are refused).
            current.clear();
        }
        debug!(netns = %netns.label(), generation = ?before.as_ref().map(|s| s.generation), current = current.len(), "one-shot apply");
        Ok(OneShot {
            netns,
            lock,
            choice,
            options,
            dir: dir.to_owned(),
            socket,
            before,
            current,
            read: None,
            parsed: [None, None],
        })
    }

    /// The namespace.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// The nf_tables generation when the apply began (`None`: no nf_tables here).
    pub fn generation(&self) -> Option<u32> {
        self.before.as_ref().map(|s| s.generation)
    }

    /// Whether [`OneShot::read`] will run `iptables-save` (no current record): a process on
    /// the caller's cores until it is done.
    pub fn will_save(&self) -> bool {
        self.current.is_empty()
    }

    /// Whether the kernel provably holds what `input_digest` (see [`input_digest`]) made the
    /// last time: then there is nothing to do, and nothing needs building or reading.
    pub fn unchanged(&self, input_digest: &str) -> bool {
        self.current
            .iter()
            .any(|r| r.input_digest.as_deref() == Some(input_digest))
    }

    /// Reads the kernel's state for the model about to be applied: a current record's rule
    /// sets if there is one, else the backend detection's saves (kept for the apply). Meant
    /// to run while the caller builds the model.
    pub fn read(&mut self) -> Result<(), ExecError> {
        self.read = Some(self.do_read()?);
        debug!("one-shot apply: kernel state known");
        Ok(())
    }

    fn do_read(&self) -> Result<Read, ExecError> {
        for r in &self.current {
            let states: Result<Vec<(Family, KernelState)>, String> = r
                .families
                .iter()
                .map(|(f, text)| {
                    KernelState::parse_save(text)
                        .map(|s| (*f, s))
                        .map_err(|e| e.to_string())
                })
                .collect();
            match states {
                Ok(states) => return Ok(Read::Recorded(states)),
                Err(why) => {
                    debug!(%why, "a recorded rule set does not parse; reading the kernel")
                }
            }
        }
        Ok(Read::Saved(Box::new(ProcessRunner::open_locked(
            self.reopen()?,
            self.lock.clone(),
            self.choice,
            self.options.clone(),
        )?)))
    }

    fn reopen(&self) -> Result<Netns, ExecError> {
        let netns = Netns::open_target(&match self.netns.name() {
            Some(n) => NetnsTarget::Named(n.clone()),
            None => NetnsTarget::Current,
        })?;
        if netns.id() != self.netns.id() {
            return Err(ExecError::NoNamespace(self.netns.label().to_owned()));
        }
        Ok(netns)
    }

    /// The manager over what was read (reading now if [`OneShot::read`] was not called).
    fn manager(
        &mut self,
        model: IptablesModel,
    ) -> Result<(Manager<ProcessRunner>, Basis), ExecError> {
        let read = match self.read.take() {
            Some(r) => r,
            None => self.do_read()?,
        };
        Ok(match read {
            Read::Recorded(states) => {
                let runner = ProcessRunner::with_lock_held(
                    self.reopen()?,
                    self.lock.clone(),
                    Backend::Nft,
                    self.options.clone(),
                )?;
                // A family the record does not cover (the last model had IPv6 off) is read.
                let mut m = Manager::with_runner(model, runner);
                for (f, s) in states {
                    m.assume_state(f, s);
                }
                (m, Basis::Recorded)
            }
            Read::Saved(runner) => {
                let mut m = Manager::with_runner(model, *runner);
                for f in Family::ALL {
                    if let Some(s) = self.parsed[f.index()].take() {
                        m.assume_state(f, s);
                    }
                }
                (m, Basis::Read)
            }
        })
    }

    /// The current record of `wrap` whose model digest is `model_digest`, if any.
    fn converged(&self, wrap: &str, model_digest: &str) -> Option<&AppliedRecord> {
        self.current
            .iter()
            .find(|r| r.wrap == wrap && r.model_digest == model_digest)
    }

    /// What [`OneShot::apply`] would send, per family (`dry run`), and the backend.
    pub fn plan(
        mut self,
        model: IptablesModel,
    ) -> Result<(Vec<(Family, l3agent_iptables::Plan)>, Backend), ApplyError> {
        let (mut manager, _) = self.manager(model)?;
        let plans = manager.plan()?;
        Ok((plans, manager.runner().backend()))
    }

    /// Applies `model`: plans against what [`OneShot::read`] found, runs the restore, and
    /// records the result for the next process when this apply was provably the only writer.
    /// `input_digest` (see [`input_digest`]) is recorded with it.
    pub fn apply(
        self,
        model: IptablesModel,
        input_digest: Option<&str>,
    ) -> Result<OneShotReport, ApplyError> {
        let digest = model.digest();
        self.apply_digested(model, digest, input_digest)
    }

    /// [`OneShot::apply`] with the model's [`IptablesModel::digest`] computed by the caller
    /// (e.g. on the thread that built the model, while the kernel was being read).
    pub fn apply_digested(
        self,
        model: IptablesModel,
        model_digest: [u8; 32],
        input_digest: Option<&str>,
    ) -> Result<OneShotReport, ApplyError> {
        self.apply_streamed(model, model_digest, input_digest, None)
    }

    /// Starts streaming `table` of `family` into a restore while the rest of `model` is built
    /// (see [`crate::stream`]), when the kernel was read by the backend detection and the plan
    /// will create chains in that table: the restore gets the table's header and the
    /// declarations of those chains at once. `model` holds every chain of the table. Returns
    /// the stream and the chains created (whose appended rules may follow).
    pub fn stream_start(
        &mut self,
        model: &IptablesModel,
        family: Family,
        table: Table,
    ) -> Option<(Streamed, Vec<String>)> {
        let Some(Read::Saved(runner)) = &self.read else {
            return None;
        };
        let i = family.index();
        if self.parsed[i].is_none() {
            let text = runner.take_detected(family)?;
            match KernelState::parse_save(&text) {
                Ok(s) => self.parsed[i] = Some(s),
                Err(e) => {
                    // The manager's own read reports it.
                    debug!(error = %e, "the detection's save does not parse; not streaming");
                    return None;
                }
            }
        }
        let state = self.parsed[i].as_ref()?;
        // iptables-legacy-restore instantiates a table when it reads its `*table` line, even if
        // it is killed before `COMMIT`: on legacy only a table already there is streamed
        // (nf_tables creates nothing before the commit).
        if runner.backend() == Backend::Legacy && !state.tables.contains_key(&table) {
            return None;
        }
        let created = created_chains(state, model, family, table);
        if created.is_empty() {
            return None;
        }
        let mut prefix = format!("*{table}\n");
        for c in &created {
            Op::Declare(c.clone()).render_into(&mut prefix);
            prefix.push('\n');
        }
        match runner.start_restore(family) {
            Ok(fed) => {
                debug!(%family, %table, chains = created.len(), "one-shot apply: streaming");
                Some((
                    Streamed::start(fed, family, prefix, self.options.timeout),
                    created,
                ))
            }
            Err(e) => {
                debug!(error = %e, "could not start a streamed restore");
                None
            }
        }
    }

    /// [`OneShot::apply_digested`], the restore of `stream` (see [`OneShot::stream_start`])
    /// ended with the rest of the plan if it begins with what was streamed, killed unapplied
    /// otherwise.
    pub fn apply_streamed(
        mut self,
        model: IptablesModel,
        model_digest: [u8; 32],
        input_digest: Option<&str>,
        stream: Option<Streamed>,
    ) -> Result<OneShotReport, ApplyError> {
        let wrap = model.wrap().as_str().to_owned();
        let model_digest = hex(&model_digest);
        if let Some(r) = self.converged(&wrap, &model_digest) {
            // The same model in another form (the input changed, not what it means): nothing to
            // do; the record learns the new input.
            if let Some(digest) = input_digest {
                let mut r = r.clone();
                r.input_digest = Some(digest.to_owned());
                let _ = store(&self.dir, self.netns.id(), &r);
            }
            return Ok(OneShotReport {
                apply: ApplyReport::default(),
                backend: Backend::Nft,
                basis: Basis::Unchanged,
                recorded: true,
                stats: crate::stats::StatsSnapshot::default(),
                manager: None,
            });
        }
        let families = model.families();
        let (mut manager, basis) = self.manager(model)?;
        if let Some(stream) = stream {
            manager.attach_stream(stream);
        }
        let backend = manager.runner().backend();
        // A record may follow: its rule sets are rendered while iptables-restore runs.
        manager.prepare_committed_save(
            backend == Backend::Nft && self.socket.is_some() && self.before.is_some(),
        );
        debug!(?basis, "one-shot apply: planning");
        let result = manager.apply();
        debug!("one-shot apply: applied");
        let stats = manager.stats();
        let report = match result {
            Ok(r) => r,
            Err(e) => {
                forget(&self.dir, self.netns.id(), &wrap);
                return Err(e);
            }
        };
        let recorded = backend == Backend::Nft
            && !report.namespace_gone
            && self.record(
                &mut manager,
                &report,
                &families,
                input_digest,
                &model_digest,
            );
        if !recorded {
            forget(&self.dir, self.netns.id(), &wrap);
        }
        Ok(OneShotReport {
            apply: report,
            backend,
            basis,
            recorded,
            stats,
            manager: Some(manager),
        })
    }

    /// Writes the record if the generation moved by exactly the table blocks this apply
    /// committed since it was read at [`OneShot::begin`].
    fn record(
        &self,
        manager: &mut Manager<ProcessRunner>,
        report: &ApplyReport,
        families: &[Family],
        input_digest: Option<&str>,
        model_digest: &str,
    ) -> bool {
        let (Some(socket), Some(before)) = (&self.socket, &self.before) else {
            return false;
        };
        let Ok(after) = stamp(socket) else {
            return false;
        };
        let commits: usize = report
            .sent
            .iter()
            .map(|(_, text)| text.lines().filter(|l| l.starts_with('*')).count())
            .sum();
        let expected = before.generation.wrapping_add(commits as u32);
        if after.boot_id != before.boot_id
            || after.netns_cookie != before.netns_cookie
            || after.generation != expected
        {
            info!(netns = %self.netns.label(), before = before.generation, after = after.generation, commits, "another writer changed the rule set during the apply; the next apply reads the kernel");
            return false;
        }
        let mut saved = Vec::new();
        for f in families {
            match manager.take_committed_save(*f) {
                Some(text) => saved.push((*f, text)),
                None => return false,
            }
        }
        let record = AppliedRecord {
            stamp: after,
            backend: Backend::Nft,
            wrap: manager.model().wrap().as_str().to_owned(),
            netns_name: self.netns.name().map(|n| n.as_str().to_owned()),
            input_digest: input_digest.map(str::to_owned),
            model_digest: model_digest.to_owned(),
            families: saved,
        };
        sweep(&self.dir, self.netns.id());
        let stored = store(&self.dir, self.netns.id(), &record);
        debug!("one-shot apply: recorded");
        match stored {
            Ok(()) => true,
            Err(e) => {
                info!(error = %e, "could not write the applied-state record");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AppliedRecord {
        AppliedRecord {
            stamp: KernelStamp {
                boot_id: "3f1c-..".into(),
                netns_cookie: 4099,
                generation: 17,
            },
            backend: Backend::Nft,
            wrap: "l3agent".into(),
            netns_name: Some("qrouter-1".into()),
            input_digest: Some(input_digest("nft", b"rules")),
            model_digest: "ab".repeat(32),
            families: vec![
                (
                    Family::V4,
                    "*filter\n:INPUT ACCEPT [0:0]\n:l3agent-x - [0:0]\n-A l3agent-x -j ACCEPT\nCOMMIT\n"
                        .into(),
                ),
                (Family::V6, String::new()),
            ],
        }
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let r = record();
        assert_eq!(AppliedRecord::parse(&r.render()), Ok(r.clone()));
        let mut anon = r;
        anon.netns_name = None;
        anon.input_digest = None;
        assert_eq!(AppliedRecord::parse(&anon.render()), Ok(anon));
    }

    #[test]
    fn a_damaged_record_is_refused_never_half_read() {
        let bytes = record().render();
        // Truncated anywhere: refused.
        for cut in [0, 10, bytes.len() / 2, bytes.len() - 1] {
            assert!(AppliedRecord::parse(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        // One byte of a rule set changed: its digest no longer matches.
        let text = String::from_utf8(bytes)
            .unwrap()
            .replace("-j ACCEPT", "-j DROPIT");
        assert!(AppliedRecord::parse(text.as_bytes())
            .unwrap_err()
            .contains("digest"));
        let other = String::from_utf8(record().render())
            .unwrap()
            .replace(MAGIC, "l3agent-iptables-applied 0");
        assert!(AppliedRecord::parse(other.as_bytes()).is_err());
    }

    #[test]
    fn input_digests_cover_the_context_and_the_bytes() {
        let a = input_digest("nft", b"x");
        assert_eq!(a, input_digest("nft", b"x"));
        assert_ne!(a, input_digest("auto", b"x"));
        assert_ne!(a, input_digest("nft", b"y"));
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn records_are_found_per_namespace_and_stored_atomically() {
        let dir = std::env::temp_dir().join(format!("l3agent-applied-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let id = NsId { dev: 4, ino: 77 };
        let other = NsId { dev: 4, ino: 78 };
        let mut r = record();
        r.netns_name = None;
        store(&dir, id, &r).unwrap();
        let mut r2 = r.clone();
        r2.wrap = "second".into();
        store(&dir, id, &r2).unwrap();
        assert_eq!(records_of(&dir, id).len(), 2);
        assert!(records_of(&dir, other).is_empty());
        forget(&dir, id, "second");
        assert_eq!(records_of(&dir, id), vec![r]);
        std::fs::write(record_path(&dir, other, "x"), b"garbage").unwrap();
        assert!(records_of(&dir, other).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A link planted at the temporary name (it is predictable: namespace, wrap, pid) is
    /// neither followed nor written through: its target keeps its content, the record is
    /// stored, and the link is gone.
    #[test]
    fn a_link_planted_at_the_temporary_name_is_not_followed() {
        let dir = std::env::temp_dir().join(format!("l3agent-applied-link-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let victim = std::env::temp_dir().join(format!("l3agent-victim-{}", std::process::id()));
        std::fs::write(&victim, b"precious").unwrap();
        let id = NsId { dev: 4, ino: 79 };
        let r = record();
        crate::error::private_dir(&dir).unwrap();
        let tmp = dir.join(format!(".{id}.{}.{}.tmp", r.wrap, std::process::id()));
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        store(&dir, id, &r).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(std::fs::symlink_metadata(&tmp).is_err(), "the link is left");
        assert_eq!(records_of(&dir, id), vec![r]);
        let _ = std::fs::remove_file(&victim);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A records directory others can write to is refused before anything is read or
    /// written, with a message naming it and its mode.
    #[test]
    fn a_group_writable_records_directory_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("l3agent-applied-gw-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o770)).unwrap();
        let e = store(&dir, NsId { dev: 4, ino: 80 }, &record()).unwrap_err();
        assert!(matches!(e, ExecError::UnsafeDir { .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.contains(&dir.display().to_string()) && text.contains("0770"),
            "{text}"
        );
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "wrote anyway");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
