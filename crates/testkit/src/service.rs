//! Services a test needs (ovsdb-server and ovs-vswitchd, RabbitMQ, MariaDB, neutron-server),
//! started by the scripts in `scripts/testbed/` inside a test's own network namespace, with
//! their data under a private directory, and stopped by pid when the fixture is dropped.
//!
//! The scripts' contract (each `scripts/testbed/<name>.sh`):
//! - `start DIR`: starts the service in the caller's network namespace, its data, logs,
//!   sockets and pid files under `DIR` (created if missing), listening on loopback or unix
//!   sockets only; waits (bounded) until it serves; exit 0, or non-zero with the tail of its
//!   log on stderr (and nothing left running).
//! - `stop DIR`: stops what `start DIR` started, by the pids in `DIR` (TERM, a bounded wait,
//!   then KILL); exit 0 also when nothing runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::TestNs;

/// `scripts/testbed/` of this checkout.
pub fn testbed_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/testbed")
}

/// The venv with Neutron 29.0.0's Python stack: `scripts/testbed/venv.sh` builds it the
/// first time (a few minutes, needs PyPI; several tests racing share one build) and prints
/// its path as its last line. Fails (never skips) when it cannot.
pub fn neutron_venv() -> PathBuf {
    let script = testbed_dir().join("venv.sh");
    assert!(script.exists(), "{} is missing", script.display());
    let (tx, rx) = std::sync::mpsc::channel();
    let s = script.clone();
    std::thread::spawn(move || {
        #[allow(clippy::disallowed_methods)] // the testbed's own script
        let out = Command::new(&s)
            .stderr(std::process::Stdio::inherit())
            .output();
        let _ = tx.send(out);
    });
    let out = rx
        .recv_timeout(std::time::Duration::from_secs(1200))
        .unwrap_or_else(|_| panic!("{} did not finish within 20 min", script.display()))
        .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = PathBuf::from(stdout.lines().last().unwrap_or("").trim());
    assert!(
        dir.join("bin/python").exists(),
        "venv.sh printed {}, which has no bin/python",
        dir.display()
    );
    dir
}

/// Fails (never skips) unless Open vSwitch's programs are installed, naming the package.
pub fn require_ovs() {
    for p in ["ovsdb-server", "ovs-vswitchd", "ovsdb-tool", "ovs-vsctl"] {
        assert!(
            ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
                .iter()
                .any(|d| Path::new(d).join(p).exists()),
            "{p} is not installed: apt-get install openvswitch-switch (scripts/install-deps.sh)"
        );
    }
}

/// A started service; stopped on drop.
#[derive(Debug)]
pub struct Service {
    script: PathBuf,
    dir: PathBuf,
}

impl Service {
    /// Runs `scripts/testbed/<name>.sh start DIR` inside `ns` with `env` added; panics with
    /// the script's output if it fails.
    pub fn start(ns: &TestNs, name: &str, dir: &Path, env: &[(&str, &str)]) -> Service {
        let script = testbed_dir().join(format!("{name}.sh"));
        let service = Service {
            script: script.clone(),
            dir: dir.to_path_buf(),
        };
        let out = ns
            .inside(|| {
                Command::new(&script)
                    .arg("start")
                    .arg(dir)
                    .envs(env.iter().copied())
                    .output()
            })
            .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} start {} in {}: {}\n{}\n{}",
            script.display(),
            dir.display(),
            ns.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        service
    }

    /// Its data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let stopped = Command::new(&self.script)
            .arg("stop")
            .arg(&self.dir)
            .status();
        if !matches!(stopped, Ok(s) if s.success()) {
            eprintln!(
                "{} stop {}: {stopped:?}",
                self.script.display(),
                self.dir.display()
            );
        }
    }
}
