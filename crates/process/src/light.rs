//! Spawning without copying the caller's descriptor table.
//!
//! `fork`, `vfork` and `posix_spawn` give the child a copy of the parent's descriptor table,
//! and `execve` then closes every close-on-exec descriptor of that copy: at 1,000 routers the
//! agent holds ~6,000 (each namespace's handle, netlink sockets, `/proc/sys` directories), and
//! copying and closing them cost more than the `iptables-restore` it started (measured:
//! 2.3 ms → 7.3 ms p50 for one restore on a loaded 2-core VM). Here the child shares the
//! parent's table for its first instructions (`clone(CLONE_VM | CLONE_VFORK | CLONE_FILES)`,
//! as glibc's `posix_spawn` without the copy), then takes a table of its own holding only
//! descriptors 0–2 (`close_range(3, ~0, CLOSE_RANGE_UNSHARE)` copies only those), opens its
//! pipes again through `/proc/<parent>/fd/<n>` and execs. The parent thread is suspended
//! until the exec (`CLONE_VFORK`), so the pipes it holds are open when the child opens them.
//!
//! The child runs on a stack of its own in the parent's memory: it only makes system calls
//! (no allocation, no lock), with every signal blocked until just before the exec and the
//! parent's handlers reset to the default first (a handler must not run in the child), as
//! glibc's `posix_spawn` does. Where the kernel refuses the set-up (no `close_range`
//! unsharing before 5.9, `/proc` not readable), the spawn falls back to std's for the rest of
//! the process's life; a program that cannot be executed is an error like std's, and so is a
//! network namespace the child cannot enter (`setns`, made by the child before `close_range`).

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};

/// A child started by this crate: its id, its pipes, reaped by [`Proc::wait`] /
/// [`Proc::try_wait`] (never by anything else).
#[derive(Debug)]
pub(crate) struct Proc {
    pid: libc::pid_t,
    /// Its standard input (write end), output and error (read ends).
    pub stdin: Option<File>,
    pub stdout: Option<File>,
    pub stderr: Option<File>,
    reaped: Option<ExitStatus>,
}

impl Proc {
    /// From a child std spawned (std's `Child` neither kills nor reaps when dropped).
    pub(crate) fn from_std(mut child: std::process::Child) -> Proc {
        Proc {
            pid: libc::pid_t::try_from(child.id()).expect("a child's pid fits a pid_t"),
            stdin: child.stdin.take().map(|p| File::from(OwnedFd::from(p))),
            stdout: child.stdout.take().map(|p| File::from(OwnedFd::from(p))),
            stderr: child.stderr.take().map(|p| File::from(OwnedFd::from(p))),
            reaped: None,
        }
    }

    /// Its process id.
    pub(crate) fn id(&self) -> u32 {
        u32::try_from(self.pid).unwrap_or(0)
    }

    fn waitpid(&mut self, flags: libc::c_int) -> std::io::Result<Option<ExitStatus>> {
        if let Some(s) = self.reaped {
            return Ok(Some(s));
        }
        loop {
            let mut status: libc::c_int = 0;
            // SAFETY: waitpid on our own child, writing into a local.
            let r = unsafe { libc::waitpid(self.pid, &mut status, flags) };
            if r == self.pid {
                let s = ExitStatus::from_raw(status);
                self.reaped = Some(s);
                return Ok(Some(s));
            }
            if r == 0 {
                return Ok(None);
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Its exit status if it exited (reaping it), without blocking.
    pub(crate) fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.waitpid(libc::WNOHANG)
    }

    /// Waits for it to exit and reaps it.
    pub(crate) fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.waitpid(0)?
            .ok_or_else(|| std::io::Error::other("waitpid returned without a status"))
    }

    /// SIGKILL, unless it was reaped (its id may be another's by then).
    pub(crate) fn kill(&self) {
        if self.reaped.is_none() && self.pid > 0 {
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
    }
}

impl Drop for Proc {
    /// A child given up on (an error path, a panic) is killed and reaped, never left running
    /// or as a zombie.
    fn drop(&mut self) {
        if self.reaped.is_none() && self.pid > 0 {
            self.kill();
            let _ = self.wait();
        }
    }
}

/// Set once the kernel refused the light spawn's set-up: std's spawn from then on.
static REFUSED: AtomicBool = AtomicBool::new(false);

/// What the child reports when it cannot go on: which stage, and the errno.
const STAGE_SETUP: libc::c_int = 1;
const STAGE_EXEC: libc::c_int = 2;
const STAGE_NETNS: libc::c_int = 3;

/// Everything the child reads, prepared by the parent (the child allocates nothing).
#[repr(C)]
struct ChildArgs {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    /// The network namespace to enter (a descriptor of the shared table), or -1.
    netns: libc::c_int,
    /// `/proc/<parent>/fd/<n>` of the child's ends of its three pipes, and how to open them.
    paths: [*const libc::c_char; 3],
    modes: [libc::c_int; 3],
    /// The calling thread's signal mask, restored in it after the clone.
    mask: libc::sigset_t,
    /// Written by the child if it does not exec: stage and errno.
    stage: libc::c_int,
    errno: libc::c_int,
}

/// The child, between `clone` and `execve`: system calls only.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's ChildArgs, alive while the parent is suspended (vfork);
    // only async-signal-safe calls are made, on pointers the parent prepared.
    unsafe {
        let a = &mut *arg.cast::<ChildArgs>();
        let fail = |a: &mut ChildArgs, stage| -> ! {
            a.stage = stage;
            a.errno = *libc::__errno_location();
            libc::_exit(127)
        };
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        for sig in 1..=libc::SIGRTMAX() {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                && ((old.sa_sigaction != libc::SIG_IGN && old.sa_sigaction != libc::SIG_DFL)
                    || sig == libc::SIGPIPE)
            {
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        // setns(2) changes only the calling task: this child, not the suspended parent.
        if a.netns >= 0 && libc::setns(a.netns, libc::CLONE_NEWNET) != 0 {
            fail(a, STAGE_NETNS);
        }
        if libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_UNSHARE,
        ) != 0
        {
            fail(a, STAGE_SETUP);
        }
        for i in 0..3 {
            let fd = libc::open(a.paths[i as usize], a.modes[i as usize]);
            if fd < 0 {
                fail(a, STAGE_SETUP);
            }
            if fd != i {
                if libc::dup2(fd, i) < 0 {
                    fail(a, STAGE_SETUP);
                }
                libc::close(fd);
            }
        }
        // The program starts with no signal blocked, as std's children do.
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        libc::execve(a.program, a.argv, a.envp);
        fail(a, STAGE_EXEC)
    }
}

/// The pipe ends a child gets and the parent keeps.
struct Pipes {
    parent: [File; 3],
    child: [OwnedFd; 3],
}

fn pipes() -> std::io::Result<Pipes> {
    let cloexec = nix::fcntl::OFlag::O_CLOEXEC;
    let (in_r, in_w) = nix::unistd::pipe2(cloexec)?;
    let (out_r, out_w) = nix::unistd::pipe2(cloexec)?;
    let (err_r, err_w) = nix::unistd::pipe2(cloexec)?;
    Ok(Pipes {
        parent: [File::from(in_w), File::from(out_r), File::from(err_r)],
        child: [in_r, out_w, err_w],
    })
}

fn cstring(s: &[u8]) -> std::io::Result<CString> {
    CString::new(s).map_err(|_| std::io::Error::other("a NUL byte in an argument"))
}

/// Spawns `program args...` with its three standard descriptors piped, in the network
/// namespace `netns` (entered by the child itself before it execs: no thread of this process
/// changes namespace) or else the calling thread's, with environment `env` (`KEY=VALUE`).
/// `Ok(None)`: the set-up was refused (the caller spawns with std instead; where the kernel
/// or host does not allow it, every later call does too).
pub(crate) fn spawn_piped(
    program: &Path,
    args: &[&str],
    env: &[&str],
    netns: Option<BorrowedFd<'_>>,
) -> std::io::Result<Option<Proc>> {
    if REFUSED.load(Ordering::Relaxed) {
        return Ok(None);
    }
    // The pipes are opened again by path: `/proc` must be this process's pid namespace's
    // (in a container with another's `/proc`, `/proc/<pid>` may be another process).
    static PROC_IS_OURS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ours = *PROC_IS_OURS.get_or_init(|| {
        std::fs::read_link("/proc/self")
            .is_ok_and(|l| l.as_os_str().as_bytes() == std::process::id().to_string().as_bytes())
    });
    if !ours {
        REFUSED.store(true, Ordering::Relaxed);
        return Ok(None);
    }
    let prog = cstring(program.as_os_str().as_bytes())?;
    let argv: Vec<CString> = std::iter::once(Ok(prog.clone()))
        .chain(args.iter().map(|a| cstring(a.as_bytes())))
        .collect::<std::io::Result<_>>()?;
    let envs: Vec<CString> = env
        .iter()
        .map(|e| cstring(e.as_bytes()))
        .collect::<std::io::Result<_>>()?;
    let ptrs = |v: &[CString]| -> Vec<*const libc::c_char> {
        v.iter()
            .map(|c| c.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect()
    };
    let (argv_p, env_p) = (ptrs(&argv), ptrs(&envs));
    let p = pipes()?;
    let me = std::process::id();
    let paths: Vec<CString> = p
        .child
        .iter()
        .map(|fd| cstring(format!("/proc/{me}/fd/{}", fd.as_raw_fd()).as_bytes()))
        .collect::<std::io::Result<_>>()?;
    let mut stack = vec![0u8; 64 * 1024];
    // SAFETY: plain data; the mask is filled by pthread_sigmask below.
    let mut args_for_child = ChildArgs {
        program: prog.as_ptr(),
        argv: argv_p.as_ptr(),
        envp: env_p.as_ptr(),
        netns: netns.map_or(-1, |fd| fd.as_raw_fd()),
        paths: [paths[0].as_ptr(), paths[1].as_ptr(), paths[2].as_ptr()],
        modes: [libc::O_RDONLY, libc::O_WRONLY, libc::O_WRONLY],
        mask: unsafe { std::mem::zeroed() },
        stage: 0,
        errno: 0,
    };
    // SAFETY: every signal blocked in this thread around the clone (the child unblocks what
    // it should exec with); the child runs `child_main` on `stack`, in this memory, and this
    // thread is suspended until it execs or exits (CLONE_VFORK), so everything it reads is
    // alive and nothing else writes it.
    let pid = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut args_for_child.mask);
        let top = stack.as_mut_ptr().add(stack.len());
        let top = top.sub(top as usize % 16);
        let pid = libc::clone(
            child_main,
            top.cast(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_FILES | libc::SIGCHLD,
            std::ptr::addr_of_mut!(args_for_child).cast(),
        );
        let err = std::io::Error::last_os_error();
        libc::pthread_sigmask(
            libc::SIG_SETMASK,
            &args_for_child.mask,
            std::ptr::null_mut(),
        );
        if pid < 0 {
            // Refused (a sandbox's seccomp filter, ...): std's spawn, this time or for good.
            if matches!(
                err.raw_os_error(),
                Some(libc::EPERM | libc::ENOSYS | libc::EINVAL)
            ) {
                REFUSED.store(true, Ordering::Relaxed);
            }
            return Ok(None);
        }
        pid
    };
    let mut proc = Proc {
        pid,
        stdin: None,
        stdout: None,
        stderr: None,
        reaped: None,
    };
    drop(p.child);
    match args_for_child.stage {
        0 => {
            let [i, o, e] = p.parent;
            proc.stdin = Some(i);
            proc.stdout = Some(o);
            proc.stderr = Some(e);
            Ok(Some(proc))
        }
        stage => {
            let _ = proc.wait();
            let err = std::io::Error::from_raw_os_error(args_for_child.errno);
            if stage == STAGE_SETUP {
                // What this kernel or host does not allow turns the light spawn off for
                // good; anything else (out of memory, descriptors) only for this call.
                if matches!(
                    err.raw_os_error(),
                    Some(libc::EPERM | libc::ENOSYS | libc::EINVAL | libc::ENOENT | libc::EACCES)
                ) {
                    REFUSED.store(true, Ordering::Relaxed);
                }
                Ok(None)
            } else if stage == STAGE_NETNS {
                Err(std::io::Error::new(
                    err.kind(),
                    format!("entering the network namespace: {err}"),
                ))
            } else {
                Err(err)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn read_all(f: &mut Option<File>) -> String {
        let mut s = String::new();
        f.take().unwrap().read_to_string(&mut s).unwrap();
        s
    }

    #[test]
    fn a_child_gets_its_pipes_no_other_descriptor_its_environment_and_default_signals() {
        // A descriptor left inheritable by mistake (no close-on-exec): std's spawn would hand
        // it to the child; this one does not.
        let leaky = std::fs::File::open("/dev/null").unwrap();
        // SAFETY: dup(2) of an open descriptor; the copy is closed below.
        let stray = unsafe { libc::dup(leaky.as_raw_fd()) };
        assert!(stray > 2);
        let script = "cat; echo; ls /proc/self/fd | tr '\\n' ' '; echo; \
                      env; echo oops >&2; exit 3";
        // A signal blocked in the spawning thread is not blocked in the child.
        // SAFETY: this test thread's own mask, put back below.
        let mut usr1: libc::sigset_t = unsafe { std::mem::zeroed() };
        unsafe {
            libc::sigemptyset(&mut usr1);
            libc::sigaddset(&mut usr1, libc::SIGUSR1);
            libc::pthread_sigmask(libc::SIG_BLOCK, &usr1, std::ptr::null_mut());
        }
        let spawned = spawn_piped(
            Path::new("/bin/sh"),
            &["-c", script],
            &["PATH=/usr/bin:/bin", "LC_ALL=C"],
            None,
        );
        // Read by the child itself (a shell may change its mask at start).
        let signals = spawn_piped(
            Path::new("/bin/grep"),
            &["-E", "^(SigBlk|SigIgn)", "/proc/self/status"],
            &[],
            None,
        );
        // SAFETY: as above.
        unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &usr1, std::ptr::null_mut()) };
        let mut signals = signals.unwrap().expect("light spawn");
        let signals_out = read_all(&mut signals.stdout);
        assert!(signals.wait().unwrap().success());
        let sig: Vec<&str> = signals_out.lines().collect();
        assert_eq!(sig[0], "SigBlk:\t0000000000000000", "{signals_out}");
        let ignored = u64::from_str_radix(sig[1].trim_start_matches("SigIgn:\t"), 16).unwrap();
        assert_eq!(
            ignored & (1 << (libc::SIGPIPE - 1)),
            0,
            "SIGPIPE ignored: {signals_out}"
        );
        let mut p = spawned
            .unwrap()
            .expect("this kernel takes the light spawn (close_range unsharing, /proc)");
        p.stdin.take().unwrap().write_all(b"fed").unwrap();
        let out = read_all(&mut p.stdout);
        let err = read_all(&mut p.stderr);
        let status = p.wait().unwrap();
        // SAFETY: closes the copy made above.
        unsafe { libc::close(stray) };
        assert_eq!(status.code(), Some(3));
        assert_eq!(err, "oops\n");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "fed", "{out}");
        // 0-2, and the directory `ls` reads.
        let fds: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(fds, ["0", "1", "2", "3"], "{out}");
        let mut env: Vec<&str> = lines[2..]
            .iter()
            .copied()
            .filter(|l| !l.starts_with("PWD=") && !l.starts_with("SHLVL=") && !l.starts_with('_'))
            .collect();
        env.sort_unstable();
        assert_eq!(env, ["LC_ALL=C", "PATH=/usr/bin:/bin"], "{out}");
    }

    #[test]
    fn a_namespace_the_child_cannot_enter_is_an_error_and_the_light_spawn_stays_on() {
        let not_a_namespace = std::fs::File::open("/dev/null").unwrap();
        let e = spawn_piped(
            Path::new("/bin/true"),
            &[],
            &[],
            Some(std::os::fd::AsFd::as_fd(&not_a_namespace)),
        )
        .unwrap_err();
        assert_eq!(e.raw_os_error(), None, "{e}");
        assert!(
            e.to_string()
                .starts_with("entering the network namespace: "),
            "{e}"
        );
        assert!(!REFUSED.load(Ordering::Relaxed));
    }

    #[test]
    fn a_program_that_cannot_be_executed_is_an_error_and_the_light_spawn_stays_on() {
        let e = spawn_piped(Path::new("/nonexistent/program"), &[], &[], None).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
        assert!(!REFUSED.load(Ordering::Relaxed));
        let mut p = spawn_piped(Path::new("/bin/true"), &[], &[], None)
            .unwrap()
            .expect("light spawn");
        assert!(p.wait().unwrap().success());
    }
}
