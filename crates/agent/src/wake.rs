//! Waking a thread blocked in `poll(2)`: the servers and the watcher wait on their own file
//! descriptor and on a [`Waker`], so that stopping them is an event, not a polling interval.

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// One end is written (through [`WakeHandle`]s) to wake the thread polling the other.
#[derive(Debug)]
pub(crate) struct Waker {
    tx: UnixStream,
    rx: UnixStream,
}

impl Waker {
    pub(crate) fn new() -> std::io::Result<Waker> {
        let (tx, rx) = UnixStream::pair()?;
        tx.set_nonblocking(true)?;
        rx.set_nonblocking(true)?;
        Ok(Waker { tx, rx })
    }

    /// A handle that can wake the poller from another thread.
    pub(crate) fn handle(&self) -> std::io::Result<WakeHandle> {
        Ok(WakeHandle(self.tx.try_clone()?))
    }

    /// The end to poll (readable once a wake-up was sent), for pollers of several
    /// descriptors.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.rx.as_fd()
    }

    /// Whether a wake-up was sent (and consumes it).
    pub(crate) fn woken(&self) -> bool {
        let mut buf = [0u8; 16];
        matches!((&self.rx).read(&mut buf), Ok(n) if n > 0)
    }
}

/// Sends the wake-up; the byte stays until read, so a wake-up sent before the poller waits is
/// not lost.
#[derive(Debug)]
pub(crate) struct WakeHandle(UnixStream);

impl WakeHandle {
    pub(crate) fn wake(&self) {
        // A full buffer means a wake-up is already pending: nothing more to do.
        let _ = (&self.0).write(&[1]);
    }
}

/// What [`wait`] saw.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ready {
    /// The watched descriptor is readable (or has an error/hang-up to report on read).
    Fd,
    /// The waker was written.
    Woken,
    /// The time ran out.
    Timeout,
    /// `poll` itself failed (out of memory); the caller pauses before trying again.
    Error,
}

/// Waits until `fd` is readable, the waker is woken, or `deadline` passes (`None`: no limit).
/// A wake-up takes precedence over a readable descriptor. `EINTR` is retried.
pub(crate) fn wait(fd: BorrowedFd<'_>, waker: &Waker, deadline: Option<Instant>) -> Ready {
    loop {
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                // Round up so a deadline a few microseconds away is not a busy loop.
                let ms = left.as_micros().div_ceil(1000);
                PollTimeout::try_from(Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX)))
                    .unwrap_or(PollTimeout::MAX)
            }
        };
        let mut fds = [
            PollFd::new(waker.rx.as_fd(), PollFlags::POLLIN),
            PollFd::new(fd, PollFlags::POLLIN),
        ];
        match poll(&mut fds, timeout) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return Ready::Error,
            Ok(0) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ready::Timeout;
                }
            }
            Ok(_) => {
                if fds[0].any().unwrap_or(false) && waker.woken() {
                    return Ready::Woken;
                }
                if fds[1].any().unwrap_or(false) {
                    return Ready::Fd;
                }
            }
        }
    }
}

/// A thread that polls with a [`Waker`] (the servers' accept loops, the config watcher):
/// started with its name, stopped by waking it and joining it — once, whoever asks first
/// (`stop`, or `Drop`).
#[derive(Debug)]
pub(crate) struct Background {
    wake: WakeHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Background {
    /// Spawns `body` with the waker that stops it; `what` names it in errors.
    pub(crate) fn spawn(
        what: &'static str,
        name: &str,
        body: impl FnOnce(Waker) + Send + 'static,
    ) -> Result<Background, crate::AgentError> {
        let thread_err = |source| crate::AgentError::Thread { what, source };
        let waker = Waker::new().map_err(thread_err)?;
        let wake = waker.handle().map_err(thread_err)?;
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || body(waker))
            .map_err(thread_err)?;
        Ok(Background {
            wake,
            thread: Some(thread),
        })
    }

    /// Wakes the thread and waits for it; true if it was still running (the first call).
    pub(crate) fn halt(&mut self) -> bool {
        self.wake.wake();
        match self.thread.take() {
            Some(t) => {
                let _ = t.join();
                true
            }
            None => false,
        }
    }
}

/// One connection being served: counted while its thread lives, uncounted when the thread
/// ends, however it ends (the HTTP and control servers bound their connections with it).
pub(crate) struct Slot(pub(crate) std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_wake_up_sent_before_waiting_is_not_lost() {
        let waker = Waker::new().unwrap();
        let (a, _b) = UnixStream::pair().unwrap();
        waker.handle().unwrap().wake();
        let r = wait(
            a.as_fd(),
            &waker,
            Some(Instant::now() + Duration::from_secs(5)),
        );
        assert_eq!(r, Ready::Woken);
    }

    #[test]
    fn a_readable_descriptor_and_a_timeout_are_told_apart() {
        let waker = Waker::new().unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        let start = Instant::now();
        let r = wait(
            a.as_fd(),
            &waker,
            Some(Instant::now() + Duration::from_millis(30)),
        );
        assert_eq!(r, Ready::Timeout);
        assert!(start.elapsed() >= Duration::from_millis(30));
        (&b).write_all(b"x").unwrap();
        let r = wait(
            a.as_fd(),
            &waker,
            Some(Instant::now() + Duration::from_secs(5)),
        );
        assert_eq!(r, Ready::Fd);
    }
}
