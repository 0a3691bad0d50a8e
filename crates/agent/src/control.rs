//! The control socket: how `l3agent status` asks the running agent what it knows (the last
//! applied state, failures, queue) without touching the kernel or the state directory.
//!
//! # Protocol
//!
//! A Unix stream socket; each request is one line of JSON ([`Request`], e.g.
//! `{"cmd":"status"}`), each reply one line of JSON: `{"ok": <value>}` with the handler's
//! answer, or `{"error": "<message>"}`. A connection may carry several requests in turn.
//! A request longer than [`ControlConfig::max_request_bytes`] is answered with an error and
//! the connection closed; so is a connection idle past [`ControlConfig::read_timeout`].
//!
//! # Who may connect
//!
//! The socket is private to the agent's user, three times over:
//! - its directory must be a real directory (not a symbolic link) owned by the agent's
//!   effective uid with no group or other permissions (systemd's `RuntimeDirectory=l3agent`
//!   with `RuntimeDirectoryMode=0700` gives `/run/l3agent` exactly that);
//! - the socket file is 0600: it is bound under a temporary name, restricted, then renamed
//!   into place, so it is never reachable with a wider mode (no process-wide umask change,
//!   which would race other threads creating files);
//! - every peer's `SO_PEERCRED` uid is checked against [`ControlConfig::allowed_uid`] (root in
//!   production; tests pass their own uid) and refused otherwise.
//!
//! # An existing file at the path
//!
//! A socket left by an agent that died is replaced. One that still answers belongs to a
//! running agent: [`AgentError::ControlInUse`]. Anything else (a symbolic link, a regular
//! file, a directory) is refused, never followed or removed: it was not made by us.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{debug, warn};

use crate::wake::{self, Background, Ready, Slot, Waker};
use crate::AgentError;

/// Where the agent listens unless configured otherwise (in systemd's `RuntimeDirectory`).
pub const DEFAULT_SOCKET: &str = "/run/l3agent/control.sock";

/// A request to the agent, one JSON object per line, tagged by `cmd`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// `{"cmd":"status"}` or `{"cmd":"status","router":"<id>"}`: the agent's view of every
    /// router, or of one.
    Status {
        /// Only this router.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        router: Option<String>,
    },
}

/// The handler the daemon passes in: answers a request from the agent's in-memory state.
pub type Handler = dyn Fn(&Request) -> Value + Send + Sync;

/// Where and for whom the control socket listens, and its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlConfig {
    /// The socket path; its directory must exist (see the module docs).
    pub path: PathBuf,
    /// The only uid allowed to connect (0 in production).
    pub allowed_uid: u32,
    /// A request line may be at most this long.
    pub max_request_bytes: usize,
    /// A connection idle this long is closed; also bounds writing a reply.
    pub read_timeout: Duration,
    /// Connections served at once; more are refused with an error reply.
    pub max_connections: usize,
}

impl ControlConfig {
    /// Defaults for `path`: root only, 64 KiB requests, 5 s, 8 connections.
    pub fn new(path: impl Into<PathBuf>) -> ControlConfig {
        ControlConfig {
            path: path.into(),
            allowed_uid: 0,
            max_request_bytes: 64 * 1024,
            read_timeout: Duration::from_secs(5),
            max_connections: 8,
        }
    }
}

/// The listening control socket and its accept thread. Dropping or [`stop`]ping it closes
/// the listener, closes idle connections, waits for replies being written, and removes the
/// socket file if it is still the one we bound.
///
/// [`stop`]: ControlServer::stop
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    /// (device, inode) of the socket we bound, to remove only our own file.
    identity: (u64, u64),
    active: Arc<AtomicUsize>,
    thread: Background,
}

fn io_err(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> AgentError {
    let path = path.to_path_buf();
    move |source| AgentError::Control { path, what, source }
}

/// Checks that `dir` is a real directory owned by `owner` and closed to group and others.
fn check_dir(dir: &Path, owner: u32) -> Result<(), AgentError> {
    let bad = |reason: String| AgentError::ControlDir {
        path: dir.to_path_buf(),
        reason,
    };
    let meta = fs::symlink_metadata(dir).map_err(|e| bad(e.to_string()))?;
    if meta.file_type().is_symlink() {
        return Err(bad("is a symbolic link".into()));
    }
    if !meta.is_dir() {
        return Err(bad("is not a directory".into()));
    }
    if meta.uid() != owner {
        return Err(bad(format!("is owned by uid {}, not {owner}", meta.uid())));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(bad(format!(
            "has mode {mode:04o}; it must be 0700 so only its owner reaches the socket"
        )));
    }
    Ok(())
}

/// Makes sure nothing but a dead agent's socket is at `path`.
fn clear_path(path: &Path) -> Result<(), AgentError> {
    let refuse = |reason: &str| AgentError::ControlPath {
        path: path.to_path_buf(),
        reason: reason.to_owned(),
    };
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(path, "inspecting the path")(e)),
    };
    let ft = meta.file_type();
    if ft.is_symlink() {
        return Err(refuse("is a symbolic link"));
    }
    if !ft.is_socket() {
        return Err(refuse(if ft.is_dir() {
            "is a directory"
        } else if ft.is_file() {
            "is a regular file"
        } else {
            "is not a socket"
        }));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(AgentError::ControlInUse(path.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            debug!(path = %path.display(), "replacing a stale control socket");
            Ok(())
        }
        Err(e) => Err(io_err(path, "probing the existing socket")(e)),
    }
}

impl ControlServer {
    /// Binds the socket (see the module docs for the checks) and starts answering requests
    /// with `handler`.
    pub fn start(
        config: ControlConfig,
        handler: Arc<Handler>,
    ) -> Result<ControlServer, AgentError> {
        let path = config.path.clone();
        let name = path
            .file_name()
            .ok_or_else(|| AgentError::ControlPath {
                path: path.clone(),
                reason: "has no file name".into(),
            })?
            .to_string_lossy()
            .into_owned();
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        check_dir(&dir, nix::unistd::geteuid().as_raw())?;
        clear_path(&path)?;

        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        match fs::symlink_metadata(&tmp) {
            Ok(m) if m.file_type().is_socket() => {
                fs::remove_file(&tmp).map_err(io_err(&tmp, "removing a leftover socket"))?;
            }
            Ok(_) => {
                return Err(AgentError::ControlPath {
                    path: tmp,
                    reason: "is in the way and not a socket".into(),
                })
            }
            Err(_) => {}
        }
        let listener = UnixListener::bind(&tmp).map_err(io_err(&tmp, "binding"))?;
        let placed = fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))
            .map_err(io_err(&tmp, "restricting to 0600"))
            .and_then(|()| fs::rename(&tmp, &path).map_err(io_err(&path, "moving into place")))
            .and_then(|()| fs::symlink_metadata(&path).map_err(io_err(&path, "inspecting")));
        let meta = match placed {
            Ok(m) => m,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        listener
            .set_nonblocking(true)
            .map_err(io_err(&path, "configuring"))?;

        let active = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&active);
        let thread = Background::spawn("control socket", "control", move |waker| {
            accept_loop(&listener, &waker, &config, &handler, &counter)
        })?;
        Ok(ControlServer {
            path,
            identity: (meta.dev(), meta.ino()),
            active,
            thread,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Connections being served now.
    pub fn active_connections(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Stops listening, ends idle connections, waits for replies being written, removes the
    /// socket file.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        if !self.thread.halt() {
            return;
        }
        if let Ok(m) = fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.identity {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.halt();
    }
}

fn accept_loop(
    listener: &UnixListener,
    waker: &Waker,
    config: &ControlConfig,
    handler: &Arc<Handler>,
    active: &Arc<AtomicUsize>,
) {
    // Each connection's thread, and a handle to its socket to end an idle wait on stop.
    let mut workers: Vec<(JoinHandle<()>, Option<UnixStream>)> = Vec::new();
    loop {
        match wake::wait(listener.as_fd(), waker, None) {
            Ready::Woken => break,
            Ready::Timeout => continue,
            Ready::Error => {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            Ready::Fd => {}
        }
        loop {
            let mut stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!(error = %e, "accepting a control connection failed");
                    std::thread::sleep(Duration::from_millis(50));
                    break;
                }
            };
            workers.retain(|(w, _)| !w.is_finished());
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
            match nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
            {
                Ok(cred) if cred.uid() == config.allowed_uid => {}
                Ok(cred) => {
                    warn!(
                        uid = cred.uid(),
                        pid = cred.pid(),
                        "control connection refused: uid not allowed"
                    );
                    let _ = reply(&mut stream, Err("permission denied"));
                    refuse_politely(&stream, config.max_request_bytes);
                    continue;
                }
                Err(e) => {
                    warn!(error = %e, "control connection refused: no peer credentials");
                    continue;
                }
            }
            if active.load(Ordering::SeqCst) >= config.max_connections {
                let _ = reply(&mut stream, Err("too many connections; try again"));
                continue;
            }
            active.fetch_add(1, Ordering::SeqCst);
            let slot = Slot(Arc::clone(active));
            let handler = Arc::clone(handler);
            let (max, timeout) = (config.max_request_bytes, config.read_timeout);
            let handle = stream.try_clone().ok();
            let spawned = std::thread::Builder::new()
                .name("control-conn".into())
                .spawn(move || {
                    let _slot = slot;
                    serve(stream, max, timeout, &*handler);
                });
            match spawned {
                Ok(w) => workers.push((w, handle)),
                Err(e) => warn!(error = %e, "starting a control connection thread failed"),
            }
        }
    }
    // Stopping: connections waiting for their next request see the end of input and close;
    // a request being answered still gets its reply (only reading is shut down).
    for (w, handle) in workers {
        if let Some(h) = handle {
            let _ = h.shutdown(std::net::Shutdown::Read);
        }
        let _ = w.join();
    }
}

fn reply(stream: &mut UnixStream, answer: Result<Value, &str>) -> std::io::Result<()> {
    let v = match answer {
        Ok(v) => serde_json::json!({ "ok": v }),
        Err(e) => serde_json::json!({ "error": e }),
    };
    let mut line = v.to_string();
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    stream.flush()
}

/// Reads one line of at most `max` bytes (the newline excluded). `Ok(None)` at a clean end
/// of input; `Err(true)` if the line is too long, `Err(false)` on a timeout or error.
fn read_line(reader: &mut BufReader<UnixStream>, max: usize) -> Result<Option<Vec<u8>>, bool> {
    let mut line = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    match reader.by_ref().take(limit).read_until(b'\n', &mut line) {
        Ok(0) => Ok(None),
        Ok(_) => {
            if line.last() == Some(&b'\n') {
                line.pop();
                Ok(Some(line))
            } else if line.len() > max {
                Err(true)
            } else {
                // End of input without a newline: take what came as the last request.
                Ok(Some(line))
            }
        }
        Err(_) => Err(false),
    }
}

/// Answers requests on one connection, then closes it (for every holder of the socket,
/// including the accept loop's handle).
fn serve(stream: UnixStream, max: usize, timeout: Duration, handler: &Handler) {
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    answer_requests(BufReader::new(stream), &mut writer, max, handler);
    let _ = writer.shutdown(std::net::Shutdown::Both);
}

fn answer_requests(
    mut reader: BufReader<UnixStream>,
    writer: &mut UnixStream,
    max: usize,
    handler: &Handler,
) {
    // Bounded: a connection is closed after this many requests; the CLI sends one.
    for _ in 0..1000 {
        let line = match read_line(&mut reader, max) {
            Ok(Some(l)) => l,
            Ok(None) | Err(false) => return,
            Err(true) => {
                let _ = reply(writer, Err(&format!("request larger than {max} bytes")));
                return;
            }
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let answer = match serde_json::from_slice::<Request>(&line) {
            Ok(req) => Ok(handler(&req)),
            Err(e) => Err(format!("bad request: {e}")),
        };
        let sent = match answer {
            Ok(v) => reply(writer, Ok(v)),
            Err(e) => reply(writer, Err(&e)),
        };
        if sent.is_err() {
            return;
        }
    }
}

/// After a refusal: no more writing, and what the peer sent is read (bounded in bytes and
/// time) before the socket closes, so that closing with unread data does not reset the
/// connection under the peer before it reads the refusal.
fn refuse_politely(stream: &UnixStream, max: usize) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = [0u8; 1024];
    let mut seen = 0;
    while seen < max {
        match (&*stream).read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen += n,
        }
    }
}

/// The client side, used by `l3agent status`.
pub mod client {
    use super::*;

    /// The largest reply accepted (a status of thousands of routers fits many times over).
    pub const MAX_REPLY_BYTES: usize = 64 * 1024 * 1024;

    /// Sends `request` to the agent at `path` and returns its answer, waiting at most
    /// `timeout` for each read and write. An `{"error": ...}` reply is
    /// [`AgentError::ControlRefused`].
    pub fn query(path: &Path, request: &Request, timeout: Duration) -> Result<Value, AgentError> {
        let stream = UnixStream::connect(path).map_err(io_err(path, "connecting"))?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(io_err(path, "configuring"))?;
        let mut line = serde_json::to_string(request).map_err(|e| AgentError::ControlReply {
            path: path.to_path_buf(),
            reason: format!("encoding the request: {e}"),
        })?;
        line.push('\n');
        // A refusal may be written before the request is read: a failed write is reported
        // only when no reply follows it.
        let sent = (&stream).write_all(line.as_bytes());
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let malformed = |reason: String| AgentError::ControlReply {
            path: path.to_path_buf(),
            reason,
        };
        let mut reader = BufReader::new(stream);
        let reply = match read_line(&mut reader, MAX_REPLY_BYTES) {
            Ok(Some(l)) => l,
            Ok(None) => {
                sent.map_err(io_err(path, "sending the request"))?;
                return Err(malformed(
                    "the agent closed the connection without a reply".into(),
                ));
            }
            Err(true) => return Err(malformed(format!("larger than {MAX_REPLY_BYTES} bytes"))),
            Err(false) => {
                return Err(io_err(path, "reading the reply")(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no complete reply in time",
                )))
            }
        };
        let v: Value =
            serde_json::from_slice(&reply).map_err(|e| malformed(format!("not JSON: {e}")))?;
        match v {
            Value::Object(mut m) if m.len() == 1 => {
                if let Some(ok) = m.remove("ok") {
                    Ok(ok)
                } else if let Some(Value::String(e)) = m.remove("error") {
                    Err(AgentError::ControlRefused(e))
                } else {
                    Err(malformed("neither \"ok\" nor \"error\"".into()))
                }
            }
            _ => Err(malformed(
                "not an object with one of \"ok\" or \"error\"".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::time::Instant;

    use crate::scratch::Scratch;

    impl Scratch {
        fn sock(&self) -> PathBuf {
            self.0.join("control.sock")
        }
    }

    fn me() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    fn config(path: PathBuf) -> ControlConfig {
        ControlConfig {
            allowed_uid: me(),
            ..ControlConfig::new(path)
        }
    }

    fn echo() -> Arc<Handler> {
        Arc::new(|req: &Request| match req {
            Request::Status { router } => serde_json::json!({ "routers": 3, "only": router }),
        })
    }

    const T: Duration = Duration::from_secs(5);

    fn status() -> Request {
        Request::Status { router: None }
    }

    #[test]
    fn a_status_query_round_trips_through_the_handler() {
        let d = Scratch::new("roundtrip");
        let s = ControlServer::start(config(d.sock()), echo()).unwrap();
        let v = client::query(&d.sock(), &status(), T).unwrap();
        assert_eq!(v, serde_json::json!({ "routers": 3, "only": null }));
        let one = Request::Status {
            router: Some("r1".into()),
        };
        let v = client::query(&d.sock(), &one, T).unwrap();
        assert_eq!(v["only"], "r1");
        s.stop();
        assert!(!d.sock().exists(), "the socket file is removed on stop");
    }

    #[test]
    fn the_socket_is_private_to_its_owner() {
        let d = Scratch::new("mode");
        let s = ControlServer::start(config(d.sock()), echo()).unwrap();
        let m = fs::symlink_metadata(d.sock()).unwrap();
        assert!(m.file_type().is_socket());
        assert_eq!(m.mode() & 0o777, 0o600);
        assert_eq!(
            fs::read_dir(&d.0).unwrap().count(),
            1,
            "no temporary left behind"
        );
        s.stop();
    }

    #[test]
    fn a_peer_with_another_uid_is_refused() {
        let d = Scratch::new("peer");
        let cfg = ControlConfig {
            allowed_uid: me().wrapping_add(1),
            ..config(d.sock())
        };
        let s = ControlServer::start(cfg, echo()).unwrap();
        match client::query(&d.sock(), &status(), T) {
            Err(AgentError::ControlRefused(m)) => assert_eq!(m, "permission denied"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        s.stop();
    }

    #[test]
    fn an_oversize_request_is_refused() {
        let d = Scratch::new("oversize");
        let cfg = ControlConfig {
            max_request_bytes: 100,
            ..config(d.sock())
        };
        let s = ControlServer::start(cfg, echo()).unwrap();
        let mut c = UnixStream::connect(d.sock()).unwrap();
        c.set_read_timeout(Some(T)).unwrap();
        let big = format!(
            "{{\"cmd\":\"status\",\"router\":\"{}\"}}\n",
            "x".repeat(200)
        );
        let _ = c.write_all(big.as_bytes());
        let mut line = String::new();
        BufReader::new(&c).read_line(&mut line).unwrap();
        assert_eq!(line, "{\"error\":\"request larger than 100 bytes\"}\n");
        s.stop();
    }

    #[test]
    fn malformed_and_unknown_requests_get_an_error_reply_and_the_connection_goes_on() {
        let d = Scratch::new("bad");
        let s = ControlServer::start(config(d.sock()), echo()).unwrap();
        let c = UnixStream::connect(d.sock()).unwrap();
        c.set_read_timeout(Some(T)).unwrap();
        (&c).write_all(b"not json\n{\"cmd\":\"reboot\"}\n{\"cmd\":\"status\"}\n")
            .unwrap();
        let mut r = BufReader::new(&c);
        let mut lines = Vec::new();
        for _ in 0..3 {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            lines.push(l);
        }
        assert!(
            lines[0].starts_with("{\"error\":\"bad request"),
            "{lines:?}"
        );
        assert!(
            lines[1].starts_with("{\"error\":\"bad request"),
            "{lines:?}"
        );
        assert!(lines[2].starts_with("{\"ok\":"), "{lines:?}");
        s.stop();
    }

    #[test]
    fn an_idle_connection_is_closed_after_the_read_timeout() {
        let d = Scratch::new("idle");
        let cfg = ControlConfig {
            read_timeout: Duration::from_millis(200),
            ..config(d.sock())
        };
        let s = ControlServer::start(cfg, echo()).unwrap();
        let mut c = UnixStream::connect(d.sock()).unwrap();
        c.set_read_timeout(Some(T)).unwrap();
        let start = Instant::now();
        let mut out = Vec::new();
        c.read_to_end(&mut out).unwrap();
        assert!(out.is_empty());
        assert!(start.elapsed() < Duration::from_secs(4));
        s.stop();
    }

    #[test]
    fn stop_ends_an_idle_connection_promptly() {
        let d = Scratch::new("stopidle");
        let s = ControlServer::start(config(d.sock()), echo()).unwrap();
        let c = UnixStream::connect(d.sock()).unwrap();
        c.set_read_timeout(Some(T)).unwrap();
        let deadline = Instant::now() + T;
        while s.active_connections() < 1 {
            assert!(Instant::now() < deadline, "the connection was not accepted");
            std::thread::sleep(Duration::from_millis(5));
        }
        let start = Instant::now();
        s.stop();
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        let mut out = Vec::new();
        (&c).read_to_end(&mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn a_stale_socket_from_a_dead_agent_is_replaced() {
        let d = Scratch::new("stale");
        // A bound socket whose listener is gone: connecting is refused, like a crashed agent's.
        drop(UnixListener::bind(d.sock()).unwrap());
        assert!(fs::symlink_metadata(d.sock())
            .unwrap()
            .file_type()
            .is_socket());
        let s = ControlServer::start(config(d.sock()), echo()).unwrap();
        assert!(client::query(&d.sock(), &status(), T).is_ok());
        s.stop();
    }

    #[test]
    fn a_live_agent_socket_is_not_taken_over() {
        let d = Scratch::new("live");
        let first = ControlServer::start(config(d.sock()), echo()).unwrap();
        assert!(matches!(
            ControlServer::start(config(d.sock()), echo()),
            Err(AgentError::ControlInUse(_))
        ));
        assert!(client::query(&d.sock(), &status(), T).is_ok());
        first.stop();
    }

    #[test]
    fn a_regular_file_or_symlink_at_the_path_is_refused_and_left_alone() {
        let d = Scratch::new("file");
        fs::write(d.sock(), "precious").unwrap();
        let err = ControlServer::start(config(d.sock()), echo()).unwrap_err();
        assert!(matches!(err, AgentError::ControlPath { .. }), "{err}");
        assert!(err.to_string().contains("regular file"), "{err}");
        assert_eq!(fs::read_to_string(d.sock()).unwrap(), "precious");

        let target = d.0.join("target");
        fs::write(&target, "t").unwrap();
        let link = d.0.join("link.sock");
        symlink(&target, &link).unwrap();
        let err = ControlServer::start(config(link.clone()), echo()).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read_to_string(&target).unwrap(), "t");
    }

    #[test]
    fn a_directory_open_to_others_or_missing_is_refused() {
        let d = Scratch::new("dirmode");
        fs::set_permissions(&d.0, fs::Permissions::from_mode(0o755)).unwrap();
        let err = ControlServer::start(config(d.sock()), echo()).unwrap_err();
        assert!(matches!(err, AgentError::ControlDir { .. }), "{err}");
        assert!(err.to_string().contains("0755"), "{err}");

        let missing = d.0.join("nope").join("control.sock");
        assert!(matches!(
            ControlServer::start(config(missing), echo()),
            Err(AgentError::ControlDir { .. })
        ));
    }

    #[test]
    fn a_query_to_no_agent_fails_promptly_naming_the_socket() {
        let d = Scratch::new("none");
        let err = client::query(&d.sock(), &status(), T)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("control.sock") && err.contains("connecting"),
            "{err}"
        );
    }

    #[test]
    fn requests_serialise_as_documented() {
        assert_eq!(
            serde_json::to_string(&status()).unwrap(),
            r#"{"cmd":"status"}"#
        );
        let r: Request = serde_json::from_str(r#"{"cmd":"status","router":"x"}"#).unwrap();
        assert_eq!(
            r,
            Request::Status {
                router: Some("x".into())
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"status","extra":1}"#).is_err());
    }
}
