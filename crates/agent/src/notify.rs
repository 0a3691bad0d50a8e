//! The sd_notify protocol without libsystemd: telling systemd (`Type=notify`) that the agent
//! is ready, reloading or stopping, what it is doing (`systemctl status` shows `STATUS=`),
//! and that it is alive (`WatchdogSec=`).
//!
//! The protocol is one datagram per message to the `AF_UNIX` socket named in `NOTIFY_SOCKET`
//! (a path, or `@name` for an abstract socket), holding newline-separated `KEY=value`
//! assignments. Outside systemd `NOTIFY_SOCKET` is unset and every call is a no-op, so the
//! agent runs the same in a terminal. systemd accepts messages only from the main process
//! (`NotifyAccess=main`, the default, set explicitly in the unit), so daemons the agent starts
//! cannot speak for it even though they inherit the variable.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use crate::AgentError;

/// A connection (in the datagram sense) to the service manager, or nothing.
#[derive(Debug)]
pub struct Notifier {
    target: Option<Target>,
}

#[derive(Debug)]
struct Target {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// `NOTIFY_SOCKET` as given, for error messages.
    name: String,
}

impl Notifier {
    /// The notifier `NOTIFY_SOCKET` asks for; disabled if it is unset or empty.
    pub fn from_env() -> Result<Notifier, AgentError> {
        match std::env::var_os("NOTIFY_SOCKET") {
            None => Ok(Notifier::disabled()),
            Some(v) => Notifier::with_socket(&v.to_string_lossy()),
        }
    }

    /// A notifier that sends to `socket` (`/absolute/path` or `@abstract`); disabled if it is
    /// empty. Tests pass their own socket here rather than changing the environment.
    pub fn with_socket(socket: &str) -> Result<Notifier, AgentError> {
        if socket.is_empty() {
            return Ok(Notifier::disabled());
        }
        let bad = || AgentError::NotifyAddress(socket.to_owned());
        let addr = if let Some(name) = socket.strip_prefix('@') {
            SocketAddr::from_abstract_name(name.as_bytes()).map_err(|_| bad())?
        } else if socket.starts_with('/') {
            SocketAddr::from_pathname(socket).map_err(|_| bad())?
        } else {
            return Err(bad());
        };
        let io_err = |source| AgentError::Notify {
            socket: socket.to_owned(),
            message: String::new(),
            source,
        };
        let sock = UnixDatagram::unbound().map_err(io_err)?;
        // The manager reads promptly; a full queue should not stall a worker for long.
        sock.set_write_timeout(Some(Duration::from_secs(1)))
            .map_err(io_err)?;
        Ok(Notifier {
            target: Some(Target {
                socket: sock,
                addr,
                name: socket.to_owned(),
            }),
        })
    }

    /// A notifier that sends nothing (not started by systemd).
    pub fn disabled() -> Notifier {
        Notifier { target: None }
    }

    /// Whether messages go anywhere.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends raw `KEY=value` lines; the specific calls below are preferred.
    pub fn send(&self, message: &str) -> Result<(), AgentError> {
        let Some(t) = &self.target else {
            return Ok(());
        };
        t.socket
            .send_to_addr(message.as_bytes(), &t.addr)
            .map(drop)
            .map_err(|source| AgentError::Notify {
                socket: t.name.clone(),
                message: message.lines().next().unwrap_or("").to_owned(),
                source,
            })
    }

    /// `READY=1`: start-up is complete (`systemctl start` returns, `After=` units start).
    /// Also sent after a reload finishes.
    pub fn ready(&self) -> Result<(), AgentError> {
        self.send("READY=1")
    }

    /// `RELOADING=1` with the monotonic time: a reload (SIGHUP) began; [`ready`](Self::ready)
    /// ends it. The timestamp is what `Type=notify-reload` (systemd 253+) requires.
    pub fn reloading(&self) -> Result<(), AgentError> {
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()))
    }

    /// `STOPPING=1`: shutdown began (routers stay up; only the agent stops).
    pub fn stopping(&self) -> Result<(), AgentError> {
        self.send("STOPPING=1")
    }

    /// `WATCHDOG=1`: the agent is alive. Send it from the loop whose progress it vouches
    /// for, at half of [`watchdog_interval`].
    pub fn watchdog(&self) -> Result<(), AgentError> {
        self.send("WATCHDOG=1")
    }

    /// `STATUS=text`, one line shown by `systemctl status` (line breaks become spaces, so the
    /// text cannot smuggle in other assignments such as `READY=1`).
    pub fn status(&self, text: &str) -> Result<(), AgentError> {
        let line: String = text
            .chars()
            .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
            .collect();
        self.send(&format!("STATUS={line}"))
    }

    /// `EXTEND_TIMEOUT_USEC`: start-up (or stopping) needs `by` more, counted from now; sent
    /// while a large host's first reconcile runs so `TimeoutStartSec=` need not cover the
    /// largest host.
    pub fn extend_timeout(&self, by: Duration) -> Result<(), AgentError> {
        self.send(&format!("EXTEND_TIMEOUT_USEC={}", by.as_micros()))
    }
}

fn monotonic_usec() -> u128 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| Duration::from(t).as_micros())
        .unwrap_or(0)
}

/// The watchdog interval systemd expects pings within (`WatchdogSec=`), if the watchdog is
/// enabled for this process; ping at half of it. Like `sd_watchdog_enabled`.
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    parse_watchdog(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// [`watchdog_interval`] on given values: `WATCHDOG_USEC` must be a positive integer, and
/// `WATCHDOG_PID`, if set, must be `our_pid` (else the variables were inherited from a
/// parent and are not ours to honour).
pub fn parse_watchdog(usec: Option<&str>, pid: Option<&str>, our_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != our_pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A datagram socket standing in for systemd, in a scratch directory.
    struct Manager {
        dir: PathBuf,
        sock: UnixDatagram,
    }

    impl Manager {
        fn new() -> Manager {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "l3agent-notify-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let sock = UnixDatagram::bind(dir.join("notify")).unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            Manager { dir, sock }
        }

        fn path(&self) -> String {
            self.dir.join("notify").to_str().unwrap().to_owned()
        }

        fn recv(&self) -> String {
            let mut buf = [0u8; 4096];
            let n = self.sock.recv(&mut buf).unwrap();
            String::from_utf8(buf[..n].to_vec()).unwrap()
        }
    }

    impl Drop for Manager {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn each_call_sends_its_assignment_to_a_path_socket() {
        let m = Manager::new();
        let n = Notifier::with_socket(&m.path()).unwrap();
        assert!(n.is_enabled());
        n.ready().unwrap();
        assert_eq!(m.recv(), "READY=1");
        n.stopping().unwrap();
        assert_eq!(m.recv(), "STOPPING=1");
        n.watchdog().unwrap();
        assert_eq!(m.recv(), "WATCHDOG=1");
        n.status("12 routers converged").unwrap();
        assert_eq!(m.recv(), "STATUS=12 routers converged");
        n.extend_timeout(Duration::from_secs(90)).unwrap();
        assert_eq!(m.recv(), "EXTEND_TIMEOUT_USEC=90000000");
        n.reloading().unwrap();
        let msg = m.recv();
        let mut lines = msg.lines();
        assert_eq!(lines.next(), Some("RELOADING=1"));
        let usec: u64 = lines
            .next()
            .unwrap()
            .strip_prefix("MONOTONIC_USEC=")
            .unwrap()
            .parse()
            .unwrap();
        assert!(usec > 0);
    }

    #[test]
    fn a_status_cannot_smuggle_in_another_assignment() {
        let m = Manager::new();
        let n = Notifier::with_socket(&m.path()).unwrap();
        n.status("failed\nREADY=1").unwrap();
        assert_eq!(m.recv(), "STATUS=failed READY=1");
    }

    #[test]
    fn an_abstract_socket_is_reached_through_an_at_sign() {
        let name = format!("l3agent-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = Notifier::with_socket(&format!("@{name}")).unwrap();
        n.ready().unwrap();
        let mut buf = [0u8; 64];
        let len = sock.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
    }

    #[test]
    fn without_a_socket_every_call_is_a_no_op() {
        for n in [Notifier::disabled(), Notifier::with_socket("").unwrap()] {
            assert!(!n.is_enabled());
            n.ready().unwrap();
            n.status("x").unwrap();
            n.watchdog().unwrap();
        }
    }

    #[test]
    fn a_relative_socket_name_is_refused() {
        assert!(matches!(
            Notifier::with_socket("run/notify"),
            Err(AgentError::NotifyAddress(_))
        ));
    }

    #[test]
    fn a_vanished_manager_is_an_error_naming_the_socket() {
        let m = Manager::new();
        let path = m.path();
        let n = Notifier::with_socket(&path).unwrap();
        drop(m);
        let err = n.ready().unwrap_err().to_string();
        assert!(err.contains(&path) && err.contains("READY=1"), "{err}");
    }

    #[test]
    fn the_watchdog_interval_is_honoured_only_for_this_process() {
        assert_eq!(
            parse_watchdog(Some("30000000"), None, 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_watchdog(Some("30000000"), Some("7"), 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_watchdog(Some("30000000"), Some("8"), 7), None);
        assert_eq!(parse_watchdog(Some("30000000"), Some("x"), 7), None);
        assert_eq!(parse_watchdog(Some("0"), None, 7), None);
        assert_eq!(parse_watchdog(Some("-5"), None, 7), None);
        assert_eq!(parse_watchdog(None, Some("7"), 7), None);
    }
}
