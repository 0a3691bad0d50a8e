//! The side effects of an iptables manager, behind one trait: read the rules, write a restore
//! input, list a chain's counters, take the namespace lock. [`ProcessRunner`] runs the host's
//! iptables programs in the target namespace; tests pass their own implementation to
//! [`crate::Manager::with_runner`] to inject faults.

use std::path::PathBuf;
use std::time::Duration;

use l3agent_iptables::{Family, Table};

use crate::backend::{decide, holds_rules, parse_version, Backend, BackendChoice};
use crate::error::{sanitize, ExecError};
use crate::lock::{NamespaceLock, LOCK_DIR};
use crate::netns::{Netns, NetnsTarget};
use l3agent_process::{find_program, run, Output};

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
        let mut holds = [false, false];
        for (i, backend) in [Backend::Nft, Backend::Legacy].into_iter().enumerate() {
            for family in Family::ALL {
                let program = backend.program(family, "save");
                let Ok(path) = find_program(&program) else {
                    continue;
                };
                let out = run(&path, &[], None, Some(netns.fd()), options.timeout)?;
                holds[i] |= out.success() && holds_rules(&out.stdout);
            }
        }
        let system = system_backend().unwrap_or(Backend::Nft);
        let backend = decide(choice, holds[0], holds[1], system, netns.label())?;
        find_program(&backend.program(Family::V4, "restore"))?;
        Ok(ProcessRunner {
            netns,
            backend,
            options,
        })
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
        Ok(ProcessRunner {
            netns,
            backend,
            options,
        })
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
        let out = run(
            &path,
            args,
            stdin,
            Some(self.netns.fd()),
            self.options.timeout,
        )?;
        Ok((program, out))
    }
}

/// The backend `iptables` points to on this host, from `iptables -V`.
pub fn system_backend() -> Option<Backend> {
    let path = find_program("iptables").ok()?;
    let out = run(&path, &["-V"], None, None, Duration::from_secs(30)).ok()?;
    parse_version(&out.stdout).map(|(_, b)| b)
}

/// Whether `--random-fully` can be used (iptables >= 1.6.0, Neutron's I-34): asks
/// `iptables -V` once per call, in the caller's namespace (the binary is the same everywhere).
pub fn random_fully_supported() -> bool {
    find_program("iptables")
        .ok()
        .and_then(|p| run(&p, &["-V"], None, None, Duration::from_secs(30)).ok())
        .and_then(|o| parse_version(&o.stdout))
        .is_some_and(|(v, _)| v >= (1, 6, 0))
}

impl Runner for ProcessRunner {
    fn save(&self, family: Family) -> Result<String, ExecError> {
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
        let wait = self.options.xtables_wait.to_string();
        let (_, out) = self
            .run_tool(
                family,
                "restore",
                &["--noflush", "-w", &wait],
                Some(input.as_bytes()),
            )
            .map_err(Err)?;
        if out.success() {
            Ok(())
        } else {
            Err(Ok(RestoreFailure {
                code: out.code,
                stderr: sanitize(&out.stderr),
            }))
        }
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
}
