//! The side effects of an iptables manager, behind one trait: read the rules, write a restore
//! input, list a chain's counters, take the namespace lock. [`ProcessRunner`] runs the host's
//! iptables programs in the target namespace; tests pass their own implementation to
//! [`crate::Manager::with_runner`] to inject faults.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use l3agent_iptables::{Family, Table};

use crate::backend::{decide, holds_rules, parse_version, Backend, BackendChoice};
use crate::error::{sanitize, ExecError};
use crate::lock::{NamespaceLock, LOCK_DIR};
use crate::netns::{Netns, NetnsTarget};
use crate::stats::{record, record_in, Stats, StatsSnapshot};
use l3agent_process::{find_program, run, Fed, Output};

/// A failed restore: exit code and message.
#[derive(Debug, Clone)]
pub struct RestoreFailure {
    /// Exit code.
    pub code: Option<i32>,
    /// Sanitised error output.
    pub stderr: String,
}

/// The side effects an iptables manager needs.
pub trait Runner {
    /// `iptables-save` (all tables) of one family.
    fn save(&self, family: Family) -> Result<String, ExecError>;
    /// `iptables-save` of several families; the real runner runs them concurrently.
    fn save_families(&self, families: &[Family]) -> Vec<Result<String, ExecError>> {
        families.iter().map(|f| self.save(*f)).collect()
    }
    /// `iptables-restore --noflush` of one family. `Err(Ok(..))` is iptables refusing the input,
    /// `Err(Err(..))` a failure to run at all.
    fn restore(&self, family: Family, input: &str)
        -> Result<(), Result<RestoreFailure, ExecError>>;
    /// [`Runner::restore`] of `input`, whose first `sent` bytes `fed` (a restore started by
    /// [`ProcessRunner::start_restore`]) already has: it gets the rest. A runner that starts
    /// no processes drops `fed` and restores `input` whole.
    fn restore_rest(
        &self,
        family: Family,
        fed: Fed,
        input: &str,
        _sent: usize,
    ) -> Result<(), Result<RestoreFailure, ExecError>> {
        fed.abort();
        self.restore(family, input)
    }
    /// `iptables -t table -L chain -n -v -x [-Z]`.
    fn list(
        &self,
        family: Family,
        table: Table,
        chain: &str,
        zero: bool,
    ) -> Result<String, ExecError>;
    /// Serialises appliers of the namespace; held until the guard drops.
    fn lock(&self) -> Result<Box<dyn std::any::Any>, ExecError>;
    /// Whether the namespace is still there (for "vanished mid-apply").
    fn namespace_alive(&self) -> bool;
    /// For messages.
    fn label(&self) -> String;
    /// What the runner made the system do (see [`crate::stats`]); a fake may count nothing.
    fn stats(&self) -> StatsSnapshot {
        StatsSnapshot::default()
    }
}

/// Settings of [`ProcessRunner`].
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// Seconds `-w` lets iptables wait for the xtables lock (legacy backend).
    pub xtables_wait: u32,
    /// How long to wait for another l3agent holding the namespace lock.
    pub lock_wait: Duration,
    /// Where the namespace lock files are.
    pub lock_dir: PathBuf,
    /// Time limit of one iptables process.
    pub timeout: Duration,
}

impl Default for ExecOptions {
    fn default() -> Self {
        ExecOptions {
            xtables_wait: 10,
            lock_wait: Duration::from_secs(60),
            lock_dir: PathBuf::from(LOCK_DIR),
            timeout: Duration::from_secs(300),
        }
    }
}

/// Runs the host's iptables programs inside the target namespace.
#[derive(Debug)]
pub struct ProcessRunner {
    netns: Netns,
    backend: Backend,
    options: ExecOptions,
    stats: Stats,
    /// What the backend detection's saves of the chosen backend printed, per family: the
    /// first [`Runner::save`] of a family returns it instead of running the program again.
    /// Kept only by [`ProcessRunner::open_locked`], whose lock was held since.
    detected: Mutex<[Option<String>; 2]>,
    /// The namespace lock, held for the runner's life (see [`ProcessRunner::open_locked`]).
    held: Option<Arc<NamespaceLock>>,
    /// Restores started ahead of their input, per family (see [`ProcessRunner::prestart`]).
    prestarted: Mutex<[Option<Fed>; 2]>,
}

fn check(out: Output, program: &str) -> Result<String, ExecError> {
    if out.success() {
        Ok(out.stdout)
    } else {
        Err(ExecError::Failed {
            program: program.to_owned(),
            code: out.code,
            stderr: sanitize(&out.stderr),
        })
    }
}

impl ProcessRunner {
    /// Opens the namespace and settles the backend (see [`crate::backend`]).
    pub fn open(
        target: &NetnsTarget,
        choice: BackendChoice,
        options: ExecOptions,
    ) -> Result<ProcessRunner, ExecError> {
        let netns = Netns::open_target(target)?;
        let stats = Stats::default();
        let (backend, _) = detect(&netns, choice, &options, &stats)?;
        Ok(ProcessRunner::assemble(netns, backend, options, stats))
    }

    /// [`ProcessRunner::open`] for a one-shot apply: takes the namespace lock first and holds
    /// it for the runner's life ([`Runner::lock`] then only returns a token), so the saves
    /// that detected the backend are as good as saves under the lock: the first
    /// [`Runner::save`] of each family returns what the detection read instead of reading
    /// again. (A long-lived manager must not use this: it would keep the lock.)
    pub fn open_locked(
        netns: Netns,
        lock: Arc<NamespaceLock>,
        choice: BackendChoice,
        options: ExecOptions,
    ) -> Result<ProcessRunner, ExecError> {
        let stats = Stats::default();
        let (backend, saves) = detect(&netns, choice, &options, &stats)?;
        let mut r = ProcessRunner::assemble(netns, backend, options, stats);
        r.detected = Mutex::new(saves);
        r.held = Some(lock);
        Ok(r)
    }

    /// A runner over a namespace already open, whose lock the caller holds (kept for the
    /// runner's life), with the backend known by other means (an applied-state record proving
    /// nothing changed, see [`crate::applied`]): no detection saves.
    pub fn with_lock_held(
        netns: Netns,
        lock: Arc<NamespaceLock>,
        backend: Backend,
        options: ExecOptions,
    ) -> Result<ProcessRunner, ExecError> {
        find_program(&backend.program(Family::V4, "restore"))?;
        let mut r = ProcessRunner::assemble(netns, backend, options, Stats::default());
        r.held = Some(lock);
        Ok(r)
    }

    fn assemble(
        netns: Netns,
        backend: Backend,
        options: ExecOptions,
        stats: Stats,
    ) -> ProcessRunner {
        ProcessRunner {
            netns,
            backend,
            options,
            stats,
            detected: Mutex::new([None, None]),
            held: None,
            prestarted: Mutex::new([None, None]),
        }
    }

    /// Opens the namespace with a backend already settled, without the detection saves: for
    /// namespaces that only one l3agent process writes (its own router namespaces), where the
    /// host-wide choice is known. Use [`ProcessRunner::open`] anywhere else.
    pub fn open_assuming(
        target: &NetnsTarget,
        backend: Backend,
        options: ExecOptions,
    ) -> Result<ProcessRunner, ExecError> {
        let netns = Netns::open_target(target)?;
        find_program(&backend.program(Family::V4, "restore"))?;
        Ok(ProcessRunner::assemble(
            netns,
            backend,
            options,
            Stats::default(),
        ))
    }

    /// The namespace.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// Starts the `iptables-restore --noflush` of `family` with its input still to come (see
    /// [`crate::stream`]); [`Runner::restore_rest`] ends it.
    pub fn start_restore(&self, family: Family) -> Result<Fed, ExecError> {
        let path = find_program(&self.backend.program(family, "restore"))?;
        record_in(&self.stats, |s| &s.processes, 1);
        let wait = self.options.xtables_wait.to_string();
        Ok(l3agent_process::start(
            &path,
            &["--noflush", "-w", &wait],
            Some(self.netns.fd()),
            self.options.timeout,
        )?)
    }

    /// Starts the `iptables-restore --noflush` of `family` ahead of its input, for an apply
    /// about to come (an agent's event, while it reads and compiles its config): the next
    /// [`Runner::restore`] of `family` gives it its input instead of starting one, and so
    /// does not wait for the program's start (about half of a small restore's time).
    /// [`ProcessRunner::release_prestarted`] ends one left unused; it exits having done
    /// nothing: `iptables-nft-restore` reads the kernel and commits only once given its
    /// input. On the nf_tables backend only (`Ok(false)` on the legacy one, whose restore
    /// may hold the host's xtables lock while it waits), and at most one per family
    /// (`Ok(false)` when one is already waiting).
    pub fn prestart(&self, family: Family) -> Result<bool, ExecError> {
        if self.backend != Backend::Nft {
            return Ok(false);
        }
        let mut slots = self.prestarted.lock().unwrap_or_else(|e| e.into_inner());
        let slot = &mut slots[family.index()];
        if slot.as_mut().is_some_and(Fed::running) {
            return Ok(false);
        }
        *slot = Some(self.start_restore(family)?);
        Ok(true)
    }

    /// Ends the restores started ahead and not used (killed before any input: nothing they
    /// could apply); how many there were.
    pub fn release_prestarted(&self) -> usize {
        let mut slots = self.prestarted.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .iter_mut()
            .filter_map(Option::take)
            .map(Fed::abort)
            .count()
    }

    /// The restore of `family` started ahead, if one is still waiting for its input.
    fn take_prestarted(&self, family: Family) -> Option<Fed> {
        let mut fed =
            self.prestarted.lock().unwrap_or_else(|e| e.into_inner())[family.index()].take()?;
        if fed.running() {
            Some(fed)
        } else {
            // Gone before its input (killed from outside): a fresh one is started instead.
            fed.abort();
            None
        }
    }

    /// What the backend detection's save of `family` printed, if still kept (taken: the next
    /// [`Runner::save`] runs the program).
    pub fn take_detected(&self, family: Family) -> Option<String> {
        self.detected.lock().unwrap_or_else(|e| e.into_inner())[family.index()].take()
    }

    /// Counts a finished restore of `input` and reads its outcome.
    fn restored(
        &self,
        input: &str,
        ran: Result<Output, ExecError>,
    ) -> Result<(), Result<RestoreFailure, ExecError>> {
        record_in(&self.stats, |s| &s.restores, 1);
        record_in(
            &self.stats,
            |s| &s.restore_lines,
            input.lines().count() as u64,
        );
        let out = match ran {
            Ok(out) => out,
            Err(e) => {
                record_in(&self.stats, |s| &s.restore_failures, 1);
                return Err(Err(e));
            }
        };
        if out.success() {
            Ok(())
        } else {
            record_in(&self.stats, |s| &s.restore_failures, 1);
            Err(Ok(RestoreFailure {
                code: out.code,
                stderr: sanitize(&out.stderr),
            }))
        }
    }

    /// What this runner made the system do (see [`crate::stats`]).
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    fn run_tool(
        &self,
        family: Family,
        tool: &str,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<(String, Output), ExecError> {
        let program = self.backend.program(family, tool);
        let path = find_program(&program)?;
        record_in(&self.stats, |s| &s.processes, 1);
        let t = std::time::Instant::now();
        let out = match stdin {
            // Timed in two steps at debug level: the start, and the rest (the tool's work).
            Some(data) => {
                let fed = l3agent_process::start(
                    &path,
                    args,
                    Some(self.netns.fd()),
                    self.options.timeout,
                )?;
                let started = t.elapsed();
                let out = fed.finish(data)?;
                tracing::debug!(
                    %program,
                    start_us = started.as_micros(),
                    total_us = t.elapsed().as_micros(),
                    "ran"
                );
                out
            }
            None => run(
                &path,
                args,
                None,
                Some(self.netns.fd()),
                self.options.timeout,
            )?,
        };
        Ok((program, out))
    }
}

/// Settles the backend of `netns` (see [`crate::backend`]): runs both backends' saves of both
/// families at once and decides from what they hold. Returns the backend and what its saves
/// printed, per family.
fn detect(
    netns: &Netns,
    choice: BackendChoice,
    options: &ExecOptions,
    stats: &Stats,
) -> Result<(Backend, [Option<String>; 2]), ExecError> {
    let jobs: Vec<(Backend, Family)> = [Backend::Nft, Backend::Legacy]
        .into_iter()
        .flat_map(|b| Family::ALL.into_iter().map(move |f| (b, f)))
        .collect();
    let outputs: Vec<Option<Output>> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|&(backend, family)| {
                s.spawn(move || -> Result<Option<Output>, ExecError> {
                    let Ok(path) = find_program(&backend.program(family, "save")) else {
                        return Ok(None);
                    };
                    record_in(stats, |s| &s.saves, 1);
                    record_in(stats, |s| &s.processes, 1);
                    Ok(Some(run(
                        &path,
                        &[],
                        None,
                        Some(netns.fd()),
                        options.timeout,
                    )?))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(ExecError::Backend("iptables-save thread panicked".into()))
                })
            })
            .collect::<Result<Vec<_>, ExecError>>()
    })?;
    let mut holds = [false, false];
    for ((backend, _), out) in jobs.iter().zip(&outputs) {
        let i = usize::from(*backend == Backend::Legacy);
        holds[i] |= out
            .as_ref()
            .is_some_and(|o| o.success() && holds_rules(&o.stdout));
    }
    // `iptables -V` (one more process) only when nothing else decides.
    let system = if choice == BackendChoice::Auto && !holds[0] && !holds[1] {
        system_backend().unwrap_or(Backend::Nft)
    } else {
        Backend::Nft
    };
    let backend = decide(choice, holds[0], holds[1], system, netns.label())?;
    find_program(&backend.program(Family::V4, "restore"))?;
    let mut saves = [None, None];
    for ((b, family), out) in jobs.into_iter().zip(outputs) {
        if b == backend {
            saves[family.index()] = out.filter(Output::success).map(|o| o.stdout);
        }
    }
    Ok((backend, saves))
}

/// The backend `iptables` points to on this host, from `iptables -V`.
pub fn system_backend() -> Option<Backend> {
    let path = find_program("iptables").ok()?;
    record(|s| &s.processes, 1);
    let out = run(&path, &["-V"], None, None, Duration::from_secs(30)).ok()?;
    parse_version(&out.stdout).map(|(_, b)| b)
}

/// Whether `--random-fully` can be used (iptables >= 1.6.0, Neutron's I-34): asks
/// `iptables -V` once per call, in the caller's namespace (the binary is the same everywhere).
pub fn random_fully_supported() -> bool {
    find_program("iptables")
        .ok()
        .and_then(|p| {
            record(|s| &s.processes, 1);
            run(&p, &["-V"], None, None, Duration::from_secs(30)).ok()
        })
        .and_then(|o| parse_version(&o.stdout))
        .is_some_and(|(v, _)| v >= (1, 6, 0))
}

impl Runner for ProcessRunner {
    fn save(&self, family: Family) -> Result<String, ExecError> {
        let kept = self.detected.lock().unwrap_or_else(|e| e.into_inner())[family.index()].take();
        if let Some(text) = kept {
            return Ok(text);
        }
        record_in(&self.stats, |s| &s.saves, 1);
        let (program, out) = self.run_tool(family, "save", &[], None)?;
        check(out, &program)
    }

    fn save_families(&self, families: &[Family]) -> Vec<Result<String, ExecError>> {
        std::thread::scope(|s| {
            let handles: Vec<_> = families
                .iter()
                .map(|f| s.spawn(move || self.save(*f)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(ExecError::Backend("iptables-save thread panicked".into()))
                    })
                })
                .collect()
        })
    }

    fn restore(
        &self,
        family: Family,
        input: &str,
    ) -> Result<(), Result<RestoreFailure, ExecError>> {
        if let Some(fed) = self.take_prestarted(family) {
            let t = std::time::Instant::now();
            let ran = fed.finish(input.as_bytes()).map_err(ExecError::from);
            tracing::debug!(
                total_us = t.elapsed().as_micros(),
                "ran a restore started ahead"
            );
            return self.restored(input, ran);
        }
        let wait = self.options.xtables_wait.to_string();
        let ran = self.run_tool(
            family,
            "restore",
            &["--noflush", "-w", &wait],
            Some(input.as_bytes()),
        );
        self.restored(input, ran.map(|(_, out)| out))
    }

    fn restore_rest(
        &self,
        _family: Family,
        fed: Fed,
        input: &str,
        sent: usize,
    ) -> Result<(), Result<RestoreFailure, ExecError>> {
        let rest = input.as_bytes().get(sent..).unwrap_or_default();
        tracing::debug!(sent, rest = rest.len(), "streamed restore: the rest");
        self.restored(input, fed.finish(rest).map_err(ExecError::from))
    }

    fn list(
        &self,
        family: Family,
        table: Table,
        chain: &str,
        zero: bool,
    ) -> Result<String, ExecError> {
        let wait = self.options.xtables_wait.to_string();
        let mut args = vec![
            "-t",
            table.as_str(),
            "-L",
            chain,
            "-n",
            "-v",
            "-x",
            "-w",
            &wait,
        ];
        if zero {
            args.push("-Z");
        }
        let (program, out) = self.run_tool(family, "", &args, None)?;
        check(out, &program)
    }

    fn lock(&self) -> Result<Box<dyn std::any::Any>, ExecError> {
        if self.held.is_some() {
            return Ok(Box::new(()));
        }
        Ok(Box::new(NamespaceLock::acquire(
            &self.options.lock_dir,
            self.netns.id(),
            self.options.lock_wait,
        )?))
    }

    fn namespace_alive(&self) -> bool {
        self.netns.still_named()
    }

    fn label(&self) -> String {
        self.netns.label().to_owned()
    }

    fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }
}
