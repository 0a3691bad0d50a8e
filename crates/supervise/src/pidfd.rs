//! Processes pinned by a pidfd (`pidfd_open(2)`, Linux 5.3): what is read about a pid in
//! `/proc` is confirmed to belong to the process the descriptor holds, and signals go through
//! the descriptor (`pidfd_send_signal(2)`), so a pid recycled in between (pid_max may be as
//! low as 32768) is never signalled. Waiting for an exit is `poll(2)` on the descriptors,
//! bounded by a deadline.

use std::io::Read;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use l3agent_netns::NsId;
use nix::libc;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;

/// The most of `/proc/<pid>/cmdline` that is read: our daemons' argv is a few hundred bytes.
const MAX_CMDLINE: u64 = 64 * 1024;

/// A process held by a pidfd.
#[derive(Debug)]
pub(crate) struct Proc {
    pid: u32,
    fd: OwnedFd,
}

/// A live process, as seen in `/proc` while pinned.
#[derive(Debug)]
pub(crate) struct Seen {
    /// The process.
    pub proc: Proc,
    /// Its argv (lossy UTF-8).
    pub argv: Vec<String>,
    /// Its network namespace (`None`: could not be read).
    pub netns: Option<NsId>,
}

impl Proc {
    /// `pidfd_open(pid, 0)`: `Ok(None)` when there is no such process (or `pid` names a
    /// thread that does not lead its group: pid files name processes).
    fn open(pid: u32) -> std::io::Result<Option<Proc>> {
        let Ok(raw) = libc::pid_t::try_from(pid) else {
            return Ok(None);
        };
        if raw < 2 {
            return Ok(None);
        }
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor (always
        // close-on-exec) or -1; no memory is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, raw, 0) };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ESRCH | libc::EINVAL) => Ok(None),
                _ => Err(e),
            };
        }
        let fd = libc::c_int::try_from(fd).map_err(std::io::Error::other)?;
        // SAFETY: fd is a fresh descriptor that nobody else owns.
        Ok(Some(Proc {
            pid,
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        }))
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether it has exited (a zombie counts as exited): the pidfd polls readable.
    pub fn exited(&self) -> bool {
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
    }

    /// Sends `sig` to this very process. `Ok(false)`: it had already exited.
    pub fn signal(&self, sig: Signal) -> std::io::Result<bool> {
        use std::os::fd::AsRawFd;
        // SAFETY: pidfd_send_signal(pidfd, sig, NULL, 0): a descriptor we own, a valid signal
        // number, no siginfo.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                sig as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ESRCH) => Ok(false),
            _ => Err(e),
        }
    }
}

/// Pins `pid` and reads its argv and namespace. `None`: no such process, it exited (or
/// became a zombie) meanwhile, or `/proc` could not be read. Because the exit check comes
/// after the reads, what was read belongs to the pinned process, not to a recycled pid.
pub(crate) fn inspect(pid: u32) -> Option<Seen> {
    let proc = Proc::open(pid).ok()??;
    let argv = cmdline(pid)?;
    let netns = std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| NsId {
            dev: m.dev(),
            ino: m.ino(),
        });
    if proc.exited() {
        return None;
    }
    Some(Seen { proc, argv, netns })
}

fn cmdline(pid: u32) -> Option<Vec<String>> {
    let mut raw = Vec::new();
    std::fs::File::open(format!("/proc/{pid}/cmdline"))
        .ok()?
        .take(MAX_CMDLINE)
        .read_to_end(&mut raw)
        .ok()?;
    let mut argv: Vec<String> = raw
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if argv.last().is_some_and(String::is_empty) {
        argv.pop();
    }
    Some(argv)
}

/// Every live process for which `keep` says yes (one pass over `/proc`; threads are not
/// listed there, only processes).
pub(crate) fn scan(keep: impl Fn(&Seen) -> bool) -> std::io::Result<Vec<Seen>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Some(seen) = inspect(pid) {
            if keep(&seen) {
                out.push(seen);
            }
        }
    }
    Ok(out)
}

/// Waits until every process in `procs` has exited or `deadline` passes; returns those still
/// alive. Bounded: each round either sees an exit or sleeps out a slice of the time left.
pub(crate) fn wait_exited<'a>(procs: &[&'a Proc], deadline: Instant) -> Vec<&'a Proc> {
    const SLICE: Duration = Duration::from_millis(500);
    let mut alive: Vec<&Proc> = procs.to_vec();
    let rounds = procs.len()
        + 2
        + (deadline
            .saturating_duration_since(Instant::now())
            .as_millis()
            / SLICE.as_millis()) as usize;
    for _ in 0..rounds {
        alive.retain(|p| !p.exited());
        let left = deadline.saturating_duration_since(Instant::now());
        if alive.is_empty() || left.is_zero() {
            break;
        }
        let mut fds: Vec<PollFd<'_>> = alive
            .iter()
            .map(|p| PollFd::new(p.fd.as_fd(), PollFlags::POLLIN))
            .collect();
        let timeout = PollTimeout::try_from(left.min(SLICE)).unwrap_or(PollTimeout::ZERO);
        // EINTR or a timeout: the next round looks again.
        let _ = poll(&mut fds, timeout);
    }
    alive.retain(|p| !p.exited());
    alive
}
