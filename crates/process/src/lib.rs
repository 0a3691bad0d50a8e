//! The one place l3agent starts processes: argv only (never a shell), the child starts in the
//! target network namespace (spawned from a thread that entered it with `setns`; no `ip netns
//! exec`), every run is bounded in time, and stdout/stderr are captured.

use std::io::Write;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Starting or running a process failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// A program l3agent needs is missing.
    #[error("{0} is not installed (./demo.sh and ./test.sh install the packages l3agent needs)")]
    NotInstalled(String),
    /// The process could not be started.
    #[error("{program}: could not run: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// The process ran past its time limit and was killed.
    #[error("{program}: killed after {secs} s without finishing")]
    Timeout {
        /// The program.
        program: String,
        /// The limit.
        secs: u64,
    },
}

/// What a finished process left.
#[derive(Debug)]
pub struct Output {
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Output {
    /// Exit code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Finds a program in the system directories (not `$PATH`: l3agent runs as root).
pub fn find_program(name: &str) -> Result<PathBuf, ProcessError> {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| ProcessError::NotInstalled(name.to_owned()))
}

/// Runs `program args...`, optionally inside the network namespace `netns`, feeding `stdin`,
/// killing it after `timeout`.
pub fn run(
    program: &Path,
    args: &[&str],
    stdin: Option<&[u8]>,
    netns: Option<BorrowedFd<'_>>,
    timeout: Duration,
) -> Result<Output, ProcessError> {
    let name = program.display().to_string();
    #[allow(clippy::disallowed_methods)] // this module is the one place that spawns
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin")
        .env("LC_ALL", "C")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // The child must start in the target namespace. setns(2) only changes the calling thread,
    // so a short-lived thread enters the namespace and spawns there (l3agent_netns::in_netns):
    // the child inherits it, and no other thread ever leaves its namespace. (This also lets
    // std use posix_spawn/vfork instead of fork, which would copy the page tables of a large
    // process.)
    let spawned = match netns {
        None => cmd.spawn(),
        Some(fd) => l3agent_netns::in_netns(fd, || cmd.spawn())
            .unwrap_or_else(|e| Err(std::io::Error::other(e))),
    };
    let mut child = spawned.map_err(|source| ProcessError::Spawn {
        program: name.clone(),
        source,
    })?;
    let writer = match (stdin, child.stdin.take()) {
        (Some(data), Some(mut pipe)) => {
            let data = data.to_vec();
            Some(std::thread::spawn(move || {
                // A child that exits early closes the pipe: its exit status says why.
                let _ = pipe.write_all(&data);
            }))
        }
        _ => None,
    };
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let result = match rx.recv_timeout(timeout) {
        Ok(r) => r,
        Err(_) => {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = waiter.join();
            if let Some(w) = writer {
                let _ = w.join();
            }
            return Err(ProcessError::Timeout {
                program: name,
                secs: timeout.as_secs(),
            });
        }
    };
    let _ = waiter.join();
    if let Some(w) = writer {
        let _ = w.join();
    }
    let out = result.map_err(|source| ProcessError::Spawn {
        program: name,
        source,
    })?;
    Ok(Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_argv_without_a_shell() {
        let sh = find_program("echo").unwrap();
        let out = run(&sh, &["a;", "$(id)"], None, None, Duration::from_secs(10)).unwrap();
        assert!(out.success());
        assert_eq!(out.stdout, "a; $(id)\n");
    }

    #[test]
    fn feeds_stdin_and_times_out() {
        let cat = find_program("cat").unwrap();
        let out = run(&cat, &[], Some(b"x\ny\n"), None, Duration::from_secs(10)).unwrap();
        assert_eq!(out.stdout, "x\ny\n");
        let sleep = find_program("sleep").unwrap();
        let e = run(&sleep, &["5"], None, None, Duration::from_millis(100)).unwrap_err();
        assert!(matches!(e, ProcessError::Timeout { .. }), "{e}");
    }

    /// The child starts in the namespace (and the caller's thread stays where it was). Needs
    /// root.
    #[test]
    fn starts_inside_the_namespace() {
        struct Guard(l3agent_netns::NetnsName);
        impl Drop for Guard {
            fn drop(&mut self) {
                let _ = l3agent_netns::delete(&self.0);
            }
        }
        assert!(nix::unistd::geteuid().is_root(), "this test needs root");
        let name = format!("l3p-{}", std::process::id());
        let ns = Guard(l3agent_netns::NetnsName::new("ns", &name).unwrap());
        l3agent_netns::create(&ns.0).unwrap();
        let netns = l3agent_netns::Netns::open(&ns.0).unwrap();
        let readlink = find_program("readlink").unwrap();
        let args = ["/proc/self/ns/net"];
        let out = run(
            &readlink,
            &args,
            None,
            Some(netns.fd()),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(out.stdout.trim(), format!("net:[{}]", netns.id().ino));
        let here = run(&readlink, &args, None, None, Duration::from_secs(10)).unwrap();
        assert_ne!(here.stdout, out.stdout);
    }

    #[test]
    fn missing_program() {
        assert!(matches!(
            find_program("no-such-program-l3agent"),
            Err(ProcessError::NotInstalled(_))
        ));
    }
}
