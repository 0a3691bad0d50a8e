//! The one place l3agent starts processes: argv only (never a shell), the child starts in the
//! target network namespace (a child whose output is captured enters it with `setns` before
//! it execs; daemons, and every child where the light spawn is refused, are spawned from a
//! thread that entered it; no `ip netns exec`), every run is bounded in time, and stdout/stderr are captured ([`run`]) or written to
//! a file ([`run_daemon`], for programs that daemonise).

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

mod light;
use light::Proc;

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
    let mut fed = start(program, args, netns, timeout)?;
    if stdin.is_none() {
        // Nothing to read: its input ends at once.
        drop(fed.stdin.take());
    }
    fed.finish(stdin.unwrap_or_default())
}

/// Reads `child`'s standard output and error to their end and reaps it, in the calling
/// thread (one `poll(2)` over both pipes: no thread per process, which in a process as large
/// as the agent cost a good part of an event), for at most `timeout`: past it the child is
/// killed (SIGKILL), reaped, and the answer is [`ProcessError::Timeout`].
fn collect(mut child: Proc, name: &str, timeout: Duration) -> Result<Output, ProcessError> {
    let deadline = Instant::now() + timeout;
    let spawn_err = |source: std::io::Error| ProcessError::Spawn {
        program: name.to_owned(),
        source,
    };
    let mut pipes: [Pipe; 2] = [
        (
            child.stdout.take().map(|p| Box::new(p) as Box<dyn ReadFd>),
            Vec::new(),
        ),
        (
            child.stderr.take().map(|p| Box::new(p) as Box<dyn ReadFd>),
            Vec::new(),
        ),
    ];
    for (p, _) in &pipes {
        if let Some(p) = p {
            set_nonblocking(p.as_fd(), true).map_err(spawn_err)?;
        }
    }
    let timed_out = |mut child: Proc| {
        child.kill();
        let _ = child.wait();
        Err(ProcessError::Timeout {
            program: name.to_owned(),
            secs: timeout.as_secs(),
        })
    };
    let mut buf = [0u8; 16 * 1024];
    while pipes.iter().any(|(p, _)| p.is_some()) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return timed_out(child);
        }
        let ready = {
            let mut fds: Vec<PollFd<'_>> = pipes
                .iter()
                .filter_map(|(p, _)| p.as_ref())
                .map(|p| PollFd::new(p.as_fd(), PollFlags::POLLIN))
                .collect();
            match poll(&mut fds, poll_timeout(left)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(spawn_err(e.into())),
            }
            fds.iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect::<Vec<bool>>()
        };
        let open = pipes.iter_mut().filter(|(p, _)| p.is_some());
        for ((pipe, out), ready) in open.zip(ready) {
            if !ready {
                continue;
            }
            // Drained to EAGAIN or to its end (the child closed it: it exited, as a rule).
            while let Some(p) = pipe.as_mut() {
                match p.read(&mut buf) {
                    Ok(0) => *pipe = None,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(spawn_err(e)),
                }
            }
        }
    }
    // Both pipes closed: the child is exiting, or closed them and goes on; either way it is
    // waited for no longer than the deadline (woken by its pidfd when it exits).
    let exited = pidfd(child.id());
    let mut pause = Duration::from_micros(50);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => return timed_out(child),
            Ok(None) => match &exited {
                Some(fd) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
                    match poll(&mut fds, poll_timeout(left)) {
                        Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                        Err(e) => return Err(spawn_err(e.into())),
                    }
                }
                // No pidfd (a kernel before 5.3): looked at again shortly.
                None => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(5));
                }
            },
            Err(e) => return Err(spawn_err(e)),
        }
    };
    let [(_, stdout), (_, stderr)] = pipes;
    Ok(Output {
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    })
}

/// A descriptor that becomes readable when the process `pid` (a child not yet reaped, so
/// that the id cannot be another's) exits; `None` where the kernel has no `pidfd_open(2)`.
fn pidfd(pid: u32) -> Option<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; the
    // descriptor is owned by nothing else.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = std::os::fd::RawFd::try_from(fd)
        .ok()
        .filter(|fd| *fd >= 0)?;
    // SAFETY: `fd` was just returned by the kernel, open, and owned by no one else.
    Some(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// A child's output pipe (`None` once at its end) and what was read from it.
type Pipe = (Option<Box<dyn ReadFd>>, Vec<u8>);

/// A child's output pipe.
trait ReadFd: Read + AsFd {}
impl<T: Read + AsFd> ReadFd for T {}

/// `O_NONBLOCK` on or off for the file description of `fd`.
fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    let flags = if on {
        flags | OFlag::O_NONBLOCK
    } else {
        flags - OFlag::O_NONBLOCK
    };
    fcntl(fd, FcntlArg::F_SETFL(flags))?;
    Ok(())
}

/// `left`, rounded up to whole milliseconds for `poll(2)` (a deadline a few microseconds
/// away is not a busy loop).
fn poll_timeout(left: Duration) -> PollTimeout {
    let ms = u64::try_from(left.as_micros().div_ceil(1000)).unwrap_or(u64::MAX);
    PollTimeout::try_from(Duration::from_millis(ms)).unwrap_or(PollTimeout::MAX)
}

/// A process started by [`start`], its standard input written piece by piece while the caller
/// still works out the rest (a restore whose input is still being built). Its output is read
/// at [`Fed::finish`]: meant for programs that say little until their input ends, as
/// `iptables-restore` does (an error ends it, and the next write fails).
#[derive(Debug)]
pub struct Fed {
    child: Proc,
    stdin: Option<std::fs::File>,
    name: String,
    timeout: Duration,
}

/// Kills one started process by its id: valid until the process is reaped, which for a [`Fed`]
/// is at [`Fed::finish`] or [`Fed::abort`] (and for [`run`] after its kill).
#[derive(Debug, Clone, Copy)]
pub struct Killer(u32);

impl Killer {
    /// SIGKILL.
    pub fn kill(self) {
        if let Ok(pid) = i32::try_from(self.0) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Starts `program args...` like [`run`] (argv only, inside `netns`), its standard input a pipe
/// the caller writes with [`Fed::write`] and closes with [`Fed::finish`] (or drops with
/// [`Fed::abort`]).
pub fn start(
    program: &Path,
    args: &[&str],
    netns: Option<BorrowedFd<'_>>,
    timeout: Duration,
) -> Result<Fed, ProcessError> {
    let mut child = spawn_piped(program, args, netns)?;
    Ok(Fed {
        stdin: child.stdin.take(),
        child,
        name: program.display().to_string(),
        timeout,
    })
}

impl Fed {
    /// Writes `data` to the process's input. An error means it no longer reads (it exited:
    /// [`Fed::finish`] says how).
    pub fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match &mut self.stdin {
            Some(pipe) => pipe.write_all(data),
            None => Err(std::io::ErrorKind::BrokenPipe.into()),
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running (one that exited is reaped here; its output is
    /// still read at [`Fed::finish`]).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// What kills the process from another thread (while a write to it may be blocked).
    pub fn killer(&self) -> Killer {
        Killer(self.child.id())
    }

    /// Writes `rest`, closes the input and waits for the process to exit (killed past the
    /// time limit, counted from now), with its output.
    ///
    /// What fits in the pipe (64 KiB, as a rule: a restore of one event's changes) is written
    /// from this thread without blocking; only a remainder gets a thread of its own, which
    /// writes while this one reads the output (a child that writes while it reads could
    /// otherwise block both).
    pub fn finish(mut self, rest: &[u8]) -> Result<Output, ProcessError> {
        let mut pipe = self.stdin.take();
        let mut left = rest;
        if let Some(p) = &mut pipe {
            if set_nonblocking(p.as_fd(), true).is_ok() {
                while !left.is_empty() {
                    match p.write(left) {
                        Ok(n) => left = &left[n..],
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        // The child closed its input (it exited): its exit status says why.
                        Err(_) => left = &[],
                    }
                }
            }
        }
        let (child, name, timeout) = (self.child, self.name, self.timeout);
        match pipe {
            Some(mut pipe) if !left.is_empty() => std::thread::scope(|s| {
                s.spawn(move || {
                    if set_nonblocking(pipe.as_fd(), false).is_ok() {
                        let _ = pipe.write_all(left);
                    }
                });
                collect(child, &name, timeout)
            }),
            _ => {
                drop(pipe);
                collect(child, &name, timeout)
            }
        }
    }

    /// Kills the process and reaps it: whatever it was given is dropped unapplied (a restore
    /// commits only when its input says so).
    pub fn abort(mut self) {
        drop(self.stdin.take());
        self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a daemon: runs `program args...` like [`run`] (argv only, inside `netns`, empty
/// environment but `PATH` and `LC_ALL`), with stdin on `/dev/null` and stdout and stderr on the
/// file `output`, and waits at most `timeout` for the foreground process to exit (a daemon's
/// parent exits once the daemon has forked); returns its exit code (`None`: killed by a
/// signal). On timeout the foreground process is killed; what it forked is the caller's to
/// find.
///
/// Why not [`run`]: a daemon keeps the stdout and stderr it inherited open (or hands them to
/// its children), so reading pipes to their end would wait for the daemon to exit. A file has
/// no end to wait for, and keeps what the daemon said before it detached (a config error).
/// `output` is opened `O_NOFOLLOW | O_NONBLOCK`, created 0600 or truncated, and must be a
/// regular file: a planted symbolic link or FIFO is refused, never followed or blocked on.
pub fn run_daemon(
    program: &Path,
    args: &[&str],
    netns: Option<BorrowedFd<'_>>,
    output: &Path,
    timeout: Duration,
) -> Result<Option<i32>, ProcessError> {
    let name = program.display().to_string();
    let file_err = |source: std::io::Error| ProcessError::Spawn {
        program: name.clone(),
        source: std::io::Error::new(
            source.kind(),
            format!("output file {}: {source}", output.display()),
        ),
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags((nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK).bits())
        .open(output)
        .map_err(file_err)?;
    if !file.metadata().map_err(file_err)?.is_file() {
        return Err(file_err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    // O_NONBLOCK was only there to never block opening a FIFO; the daemon gets plain flags.
    nix::fcntl::fcntl(
        &file,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
    )
    .map_err(|e| file_err(e.into()))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(file_err)?;
    let stderr = file.try_clone().map_err(file_err)?;
    let child = spawn(
        program,
        args,
        netns,
        Stdio::null(),
        Stdio::from(file),
        Stdio::from(stderr),
    )?;
    let status = wait_bounded(child, &name, timeout, |mut c| c.wait())?;
    status
        .map(|s| s.code())
        .map_err(|source| ProcessError::Spawn {
            program: name,
            source,
        })
}

/// The whole environment of a child.
const ENV: [(&str, &str); 2] = [("PATH", "/usr/sbin:/sbin:/usr/bin:/bin"), ("LC_ALL", "C")];

/// Spawns `program args...` with its standard input, output and error piped, a clean
/// environment, in the namespace `netns` if given: without copying this process's
/// descriptor table where the kernel allows it (see [`light`]), else as [`spawn`] does.
fn spawn_piped(
    program: &Path,
    args: &[&str],
    netns: Option<BorrowedFd<'_>>,
) -> Result<Proc, ProcessError> {
    let env: Vec<String> = ENV.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let env: Vec<&str> = env.iter().map(String::as_str).collect();
    match light::spawn_piped(program, args, &env, netns) {
        Ok(Some(proc)) => Ok(proc),
        Ok(None) => spawn(
            program,
            args,
            netns,
            Stdio::piped(),
            Stdio::piped(),
            Stdio::piped(),
        )
        .map(Proc::from_std),
        Err(source) => Err(ProcessError::Spawn {
            program: program.display().to_string(),
            source,
        }),
    }
}

/// Spawns `program args...` with a clean environment, in the namespace `netns` if given.
fn spawn(
    program: &Path,
    args: &[&str],
    netns: Option<BorrowedFd<'_>>,
    stdin: Stdio,
    stdout: Stdio,
    stderr: Stdio,
) -> Result<Child, ProcessError> {
    #[allow(clippy::disallowed_methods)] // this module is the one place that spawns
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(ENV)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(stderr);
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
    spawned.map_err(|source| ProcessError::Spawn {
        program: program.display().to_string(),
        source,
    })
}

/// Runs `wait` (which reaps `child`) on a thread, for at most `timeout`; past it the child is
/// killed (SIGKILL), reaped, and the answer is [`ProcessError::Timeout`].
fn wait_bounded<T: Send + 'static>(
    child: Child,
    name: &str,
    timeout: Duration,
    wait: impl FnOnce(Child) -> T + Send + 'static,
) -> Result<T, ProcessError> {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(wait(child));
    });
    match rx.recv_timeout(timeout) {
        Ok(r) => {
            let _ = waiter.join();
            Ok(r)
        }
        Err(_) => {
            Killer(pid).kill();
            let _ = waiter.join();
            Err(ProcessError::Timeout {
                program: name.to_owned(),
                secs: timeout.as_secs(),
            })
        }
    }
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
    fn a_fed_process_gets_its_pieces_in_order_and_an_aborted_one_is_gone() {
        let wc = find_program("wc").unwrap();
        let mut fed = start(&wc, &["-l"], None, Duration::from_secs(10)).unwrap();
        fed.write(b"a\n").unwrap();
        fed.write(b"b\nc").unwrap();
        let out = fed.finish(b"\nd\n").unwrap();
        assert!(out.success());
        assert_eq!(out.stdout.trim(), "4");
        let cat = find_program("cat").unwrap();
        let mut fed = start(&cat, &[], None, Duration::from_secs(10)).unwrap();
        fed.write(b"never finished").unwrap();
        let pid = nix::unistd::Pid::from_raw(i32::try_from(fed.id()).unwrap());
        fed.abort();
        // Reaped: the pid names no process of ours any more.
        assert!(nix::sys::signal::kill(pid, None).is_err());
        // A process that stops reading: the finish's time limit still holds.
        let sleep = find_program("sleep").unwrap();
        let fed = start(&sleep, &["5"], None, Duration::from_millis(100)).unwrap();
        let e = fed.finish(&vec![b'x'; 1 << 20]).unwrap_err();
        assert!(matches!(e, ProcessError::Timeout { .. }), "{e}");
    }

    #[test]
    fn input_larger_than_a_pipe_is_written_while_the_output_is_read() {
        // `cat` writes back while it reads: 4 MiB both ways, far more than two pipes hold.
        let cat = find_program("cat").unwrap();
        let input: Vec<u8> = (0..4 << 20).map(|i: u32| b'a' + (i % 23) as u8).collect();
        let out = run(&cat, &[], Some(&input), None, Duration::from_secs(60)).unwrap();
        assert!(out.success());
        assert_eq!(out.stdout.as_bytes(), &input[..]);
        // Output on both pipes, and a small input written without a thread.
        let sh = find_program("sh").unwrap();
        let script =
            "head -c 300000 /dev/zero | tr '\\0' x; head -c 200000 /dev/zero | tr '\\0' y >&2; cat";
        let out = run(
            &sh,
            &["-c", script],
            Some(b"tail"),
            None,
            Duration::from_secs(60),
        )
        .unwrap();
        assert!(out.success());
        assert_eq!(out.stdout.len(), 300_004);
        assert!(out.stdout.ends_with("xtail"));
        assert_eq!(out.stderr.len(), 200_000);
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

    /// A daemon that keeps stdout open (here a backgrounded `sleep`) does not hold up the
    /// start; what the foreground said is in the file; a planted link or FIFO is refused.
    #[test]
    fn run_daemon_returns_when_the_foreground_exits() {
        let dir = std::env::temp_dir().join(format!("l3p-daemon-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let out = dir.join("out");
        let sh = find_program("sh").unwrap();
        let script = "sleep 30 & echo $!; echo oops >&2; exit 3";
        let t = std::time::Instant::now();
        let code = run_daemon(&sh, &["-c", script], None, &out, Duration::from_secs(10)).unwrap();
        assert!(t.elapsed() < Duration::from_secs(10));
        assert_eq!(code, Some(3));
        let text = std::fs::read_to_string(&out).unwrap();
        let pid: i32 = text.lines().next().unwrap().parse().unwrap();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        assert!(text.contains("oops"), "{text}");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&out).unwrap().mode() & 0o777, 0o600);
        let link = dir.join("link");
        std::os::unix::fs::symlink(&out, &link).unwrap();
        assert!(run_daemon(&sh, &["-c", "true"], None, &link, Duration::from_secs(5)).is_err());
        let fifo = dir.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(run_daemon(&sh, &["-c", "true"], None, &fifo, Duration::from_secs(5)).is_err());
        let e = run_daemon(
            &sh,
            &["-c", "sleep 5"],
            None,
            &out,
            Duration::from_millis(200),
        );
        assert!(matches!(e, Err(ProcessError::Timeout { .. })), "{e:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn missing_program() {
        assert!(matches!(
            find_program("no-such-program-l3agent"),
            Err(ProcessError::NotInstalled(_))
        ));
    }
}
