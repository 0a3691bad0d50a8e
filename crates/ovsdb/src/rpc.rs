//! One JSON-RPC 1.0 connection to ovsdb-server over a unix socket (RFC 7047 §4), blocking and
//! bounded: every call has a deadline; connecting, writing and reading all stop at it.
//!
//! - Requests carry increasing integer ids; an answer whose id is not the one awaited (the late
//!   answer to a call that timed out) is dropped, so a timeout leaves the connection usable.
//! - The server's `echo` requests (its inactivity probe) are answered while waiting.
//! - A closed socket, a write error or a malformed message marks the connection broken: every
//!   later call fails at once with [`OvsdbError::Broken`] instead of reading garbage.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};
use serde_json::{json, Value};
use tracing::debug;

use crate::framing::Framer;
use crate::op::Op;
use crate::OvsdbError;

/// The longest a server message's `error`/`details` is echoed in an error.
const SERVER_TEXT_MAX: usize = 500;

/// A connection to ovsdb-server.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    path: PathBuf,
    timeout: Duration,
    next_id: u64,
    framer: Framer,
    broken: Option<String>,
}

fn server_text(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    l3agent_types::clean_message(&s, SERVER_TEXT_MAX)
}

/// `(error, details)` of an RFC 7047 error object (or a bare error string).
fn error_parts(v: &Value) -> (String, Option<String>) {
    match v {
        Value::Object(o) => (
            o.get("error")
                .map(server_text)
                .unwrap_or_else(|| server_text(v)),
            o.get("details").filter(|d| !d.is_null()).map(server_text),
        ),
        other => (server_text(other), None),
    }
}

/// Connects without ever blocking past `deadline`: a non-blocking `connect(2)` on a unix
/// socket fails with `EAGAIN` while the server's listen backlog is full (a stopped server),
/// so it is retried until the deadline.
fn connect_bounded(path: &Path, timeout: Duration) -> Result<UnixStream, OvsdbError> {
    let deadline = Instant::now() + timeout;
    let err = |source: std::io::Error| OvsdbError::Connect {
        path: path.to_path_buf(),
        source,
    };
    let addr = UnixAddr::new(path).map_err(|e| err(e.into()))?;
    let mut pause = Duration::from_millis(1);
    loop {
        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| err(e.into()))?;
        match socket::connect(fd.as_raw_fd(), &addr) {
            Ok(()) => {
                let stream = UnixStream::from(fd);
                stream.set_nonblocking(false).map_err(err)?;
                return Ok(stream);
            }
            Err(Errno::EAGAIN | Errno::EINTR) => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(OvsdbError::Timeout {
                        path: path.to_path_buf(),
                        what: "connect".into(),
                        after: timeout,
                    });
                }
                std::thread::sleep(pause.min(deadline - now));
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(e) => return Err(err(e.into())),
        }
    }
}

impl Connection {
    /// Connects to the unix socket at `path` (`/run/openvswitch/db.sock`); `timeout` bounds
    /// the connect and, later, every call.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Connection, OvsdbError> {
        if timeout.is_zero() {
            return Err(OvsdbError::Invalid(l3agent_types::InvalidName {
                field: "timeout".into(),
                value: "0".into(),
                reason: "must be more than zero".into(),
            }));
        }
        let stream = connect_bounded(path, timeout)?;
        Ok(Connection::from_stream(stream, path, timeout))
    }

    /// Wraps a connected stream (a test's socket pair).
    pub fn from_stream(stream: UnixStream, path: &Path, timeout: Duration) -> Connection {
        Connection {
            stream,
            path: path.to_path_buf(),
            timeout,
            next_id: 0,
            framer: Framer::default(),
            broken: None,
        }
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The bound on every call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether an earlier error made the connection unusable.
    pub fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    fn fail(&mut self, e: OvsdbError) -> OvsdbError {
        if self.broken.is_none() {
            self.broken = Some(e.to_string());
        }
        e
    }

    fn write_all(&mut self, bytes: &[u8], what: &str, deadline: Instant) -> Result<(), OvsdbError> {
        let mut sent = 0;
        while sent < bytes.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // A partial request on the wire: nothing sane can follow it.
                let e = self.timeout_error(what);
                return Err(self.fail(e));
            }
            if let Err(e) = self.stream.set_write_timeout(Some(left)) {
                let e = self.io_error(what, e);
                return Err(self.fail(e));
            }
            match self.stream.write(&bytes[sent..]) {
                Ok(0) => {
                    let e = self.closed(what);
                    return Err(self.fail(e));
                }
                Ok(n) => sent += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::BrokenPipe => {
                    let e = self.closed(what);
                    return Err(self.fail(e));
                }
                Err(e) => {
                    let e = self.io_error(what, e);
                    return Err(self.fail(e));
                }
            }
        }
        Ok(())
    }

    fn timeout_error(&self, what: &str) -> OvsdbError {
        OvsdbError::Timeout {
            path: self.path.clone(),
            what: what.to_owned(),
            after: self.timeout,
        }
    }

    fn closed(&self, what: &str) -> OvsdbError {
        OvsdbError::Closed {
            path: self.path.clone(),
            what: what.to_owned(),
        }
    }

    fn io_error(&self, what: &str, source: std::io::Error) -> OvsdbError {
        OvsdbError::Io {
            path: self.path.clone(),
            what: what.to_owned(),
            source,
        }
    }

    /// Reads until one complete message is framed, or the deadline.
    fn read_message(&mut self, what: &str, deadline: Instant) -> Result<Value, OvsdbError> {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match self.framer.next_message() {
                Ok(Some(bytes)) => {
                    return serde_json::from_slice(&bytes).map_err(|e| {
                        let e = OvsdbError::Protocol(format!("invalid JSON: {e}"));
                        self.fail(e)
                    })
                }
                Ok(None) => {}
                Err(e) => {
                    let e = OvsdbError::Protocol(e.0);
                    return Err(self.fail(e));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.timeout_error(what));
            }
            if let Err(e) = self.stream.set_read_timeout(Some(left)) {
                let e = self.io_error(what, e);
                return Err(self.fail(e));
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    let e = self.closed(what);
                    return Err(self.fail(e));
                }
                Ok(n) => self.framer.push(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // Loop: the deadline check above turns this into a timeout.
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                    let e = self.closed(what);
                    return Err(self.fail(e));
                }
                Err(e) => {
                    let e = self.io_error(what, e);
                    return Err(self.fail(e));
                }
            }
        }
    }

    /// Sends a request and returns its `result`, answering the server's requests meanwhile.
    /// A non-null `error` is [`OvsdbError::Rpc`].
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, OvsdbError> {
        if let Some(reason) = &self.broken {
            return Err(OvsdbError::Broken {
                path: self.path.clone(),
                reason: reason.clone(),
            });
        }
        let deadline = Instant::now() + self.timeout;
        let id = self.next_id;
        self.next_id += 1;
        let request = json!({"method": method, "params": params, "id": id});
        let bytes = serde_json::to_vec(&request)
            .map_err(|e| OvsdbError::Protocol(format!("encoding {method}: {e}")))?;
        self.write_all(&bytes, method, deadline)?;
        loop {
            let msg = self.read_message(method, deadline)?;
            if let Some(m) = msg.get("method") {
                self.answer_request(m, &msg, method, deadline)?;
                continue;
            }
            let Some(got) = msg.get("id") else {
                let e = OvsdbError::Protocol(format!(
                    "a message that is neither a request nor a response: {}",
                    server_text(&msg)
                ));
                return Err(self.fail(e));
            };
            if got.as_u64() != Some(id) {
                // The late answer to a call that timed out.
                debug!(id = %got, "dropping an answer nobody waits for");
                continue;
            }
            match msg.get("error") {
                None | Some(Value::Null) => {}
                Some(err) => {
                    let (error, details) = error_parts(err);
                    return Err(OvsdbError::Rpc {
                        method: method.to_owned(),
                        error,
                        details,
                    });
                }
            }
            return msg.get("result").cloned().ok_or_else(|| {
                OvsdbError::Protocol(format!("a response to {method} without a result"))
            });
        }
    }

    /// Answers a request from the server: `echo` with its own params (RFC 7047 §4.1.11),
    /// anything else with an error; notifications (null id) need no answer.
    fn answer_request(
        &mut self,
        method: &Value,
        msg: &Value,
        what: &str,
        deadline: Instant,
    ) -> Result<(), OvsdbError> {
        let id = msg.get("id").cloned().unwrap_or(Value::Null);
        if id.is_null() {
            debug!(method = %method, "ignoring a notification");
            return Ok(());
        }
        let answer = if method == "echo" {
            json!({"id": id, "result": msg.get("params").cloned().unwrap_or(json!([])), "error": null})
        } else {
            json!({"id": id, "result": null, "error": "unknown method"})
        };
        let bytes = serde_json::to_vec(&answer)
            .map_err(|e| OvsdbError::Protocol(format!("encoding an echo reply: {e}")))?;
        self.write_all(&bytes, what, deadline)
    }

    /// `echo`: a round trip that proves the server is alive.
    pub fn echo(&mut self) -> Result<(), OvsdbError> {
        let r = self.call("echo", json!(["l3agent"]))?;
        if r == json!(["l3agent"]) {
            Ok(())
        } else {
            Err(OvsdbError::Protocol(format!(
                "echo answered {}",
                server_text(&r)
            )))
        }
    }

    /// `list_dbs`.
    pub fn list_dbs(&mut self) -> Result<Vec<String>, OvsdbError> {
        let r = self.call("list_dbs", json!([]))?;
        serde_json::from_value(r).map_err(|e| OvsdbError::Protocol(format!("list_dbs result: {e}")))
    }

    /// `transact` on `db` (`Open_vSwitch`): the operations commit together or not at all.
    /// Returns one result per operation; the first refused operation (or the commit) is an
    /// [`OvsdbError::Operation`] naming it with the server's `error` and `details`.
    pub fn transact(&mut self, db: &str, ops: &[Op]) -> Result<Vec<Value>, OvsdbError> {
        let mut params = vec![json!(db)];
        params.extend(ops.iter().map(Op::to_json));
        let result = self.call("transact", Value::Array(params))?;
        check_results(ops, result)
    }
}

/// Maps a `transact` result array to per-operation results or the first error.
pub(crate) fn check_results(ops: &[Op], result: Value) -> Result<Vec<Value>, OvsdbError> {
    let Value::Array(results) = result else {
        return Err(OvsdbError::Protocol(format!(
            "transact result is not an array: {}",
            server_text(&result)
        )));
    };
    for (index, r) in results.iter().enumerate() {
        if let Some(err) = r.get("error").filter(|e| !e.is_null()) {
            let (error, _) = error_parts(err);
            let details = r.get("details").filter(|d| !d.is_null()).map(server_text);
            let op = ops
                .get(index)
                .map(Op::describe)
                .unwrap_or_else(|| "commit".to_owned());
            return Err(OvsdbError::Operation {
                index,
                op,
                error,
                details,
            });
        }
    }
    if results.len() < ops.len() {
        return Err(OvsdbError::Protocol(format!(
            "transact answered {} results for {} operations and no error",
            results.len(),
            ops.len()
        )));
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    /// A scripted server on the other end of a socket pair: reads requests, and for each
    /// answers with what `respond` returns (raw bytes, possibly several messages).
    fn fake_server(
        respond: impl Fn(Value) -> Option<Vec<u8>> + Send + 'static,
    ) -> (Connection, thread::JoinHandle<Vec<Value>>) {
        let (client, server) = UnixStream::pair().unwrap();
        let handle = thread::spawn(move || {
            let mut server = server;
            let mut framer = Framer::default();
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            server
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            loop {
                while let Some(m) = framer.next_message().unwrap() {
                    let v: Value = serde_json::from_slice(&m).unwrap();
                    seen.push(v.clone());
                    if let Some(out) = respond(v) {
                        if server.write_all(&out).is_err() {
                            return seen;
                        }
                    }
                }
                match server.read(&mut buf) {
                    Ok(0) | Err(_) => return seen,
                    Ok(n) => framer.push(&buf[..n]),
                }
            }
        });
        let conn = Connection::from_stream(
            client,
            Path::new("/fake/db.sock"),
            Duration::from_millis(500),
        );
        (conn, handle)
    }

    #[test]
    fn requests_carry_increasing_ids_and_answers_are_matched_by_id() {
        let (mut c, h) = fake_server(|req| {
            let id = req["id"].clone();
            Some(
                serde_json::to_vec(&json!({"id": id, "result": ["Open_vSwitch"], "error": null}))
                    .unwrap(),
            )
        });
        assert_eq!(c.list_dbs().unwrap(), vec!["Open_vSwitch"]);
        assert_eq!(c.list_dbs().unwrap(), vec!["Open_vSwitch"]);
        drop(c);
        let seen = h.join().unwrap();
        assert_eq!(
            seen[0],
            json!({"method": "list_dbs", "params": [], "id": 0})
        );
        assert_eq!(seen[1]["id"], json!(1));
    }

    #[test]
    fn the_servers_echo_is_answered_while_waiting_and_stale_answers_are_dropped() {
        let (mut c, h) = fake_server(|req| {
            if req.get("method") == Some(&json!("echo")) && req["id"] == json!("probe") {
                return None; // our answer to its probe: nothing more to say
            }
            if req.get("result").is_some() {
                return None;
            }
            let id = req["id"].clone();
            // A probe, a stale answer for someone else, then ours; all in one write.
            let mut out =
                serde_json::to_vec(&json!({"method": "echo", "params": ["p"], "id": "probe"}))
                    .unwrap();
            out.extend(
                serde_json::to_vec(&json!({"id": 999, "result": [], "error": null})).unwrap(),
            );
            out.extend(
                serde_json::to_vec(&json!({"id": id, "result": ["l3agent"], "error": null}))
                    .unwrap(),
            );
            Some(out)
        });
        c.echo().unwrap();
        drop(c);
        let seen = h.join().unwrap();
        assert_eq!(
            seen[1],
            json!({"id": "probe", "result": ["p"], "error": null}),
            "{seen:?}"
        );
    }

    #[test]
    fn a_silent_server_is_a_timeout_within_the_bound_and_the_connection_stays_usable() {
        let (mut c, h) = fake_server(|req| {
            if req["params"] == json!(["slow"]) {
                return None;
            }
            let id = req["id"].clone();
            Some(
                serde_json::to_vec(&json!({"id": id, "result": req["params"], "error": null}))
                    .unwrap(),
            )
        });
        let t = Instant::now();
        let e = c.call("echo", json!(["slow"])).unwrap_err();
        let took = t.elapsed();
        assert!(matches!(e, OvsdbError::Timeout { .. }), "{e}");
        assert!(
            took >= Duration::from_millis(500) && took < Duration::from_secs(2),
            "{took:?}"
        );
        assert!(
            e.to_string().contains("did not answer echo within 500 ms"),
            "{e}"
        );
        assert!(!c.is_broken());
        c.echo().unwrap();
        drop(c);
        h.join().unwrap();
    }

    #[test]
    fn a_closed_socket_is_an_error_and_breaks_the_connection() {
        let (client, server) = UnixStream::pair().unwrap();
        drop(server);
        let mut c =
            Connection::from_stream(client, Path::new("/fake/db.sock"), Duration::from_secs(5));
        let t = Instant::now();
        let e = c.echo().unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(1));
        assert!(matches!(e, OvsdbError::Closed { .. }), "{e}");
        assert!(e.to_string().contains("/fake/db.sock"), "{e}");
        let e = c.echo().unwrap_err();
        assert!(matches!(e, OvsdbError::Broken { .. }), "{e}");
        assert!(e.to_string().contains("reconnect"), "{e}");
    }

    #[test]
    fn garbage_from_the_server_is_a_protocol_error() {
        let (mut c, h) = fake_server(|_| Some(b"HTTP/1.0 400 Bad Request\r\n\r\n".to_vec()));
        let e = c.echo().unwrap_err();
        assert!(matches!(e, OvsdbError::Protocol(_)), "{e}");
        assert!(c.is_broken());
        drop(c);
        h.join().unwrap();
    }

    #[test]
    fn a_whole_request_error_names_the_method_and_the_servers_words() {
        // ovsdb-server 3.1 answers a transact on an unknown database with this error (captured
        // with `ovsdb-client transact`), here with an escape sequence smuggled into details.
        let (mut c, h) = fake_server(|req| {
            Some(
                serde_json::to_vec(&json!({"id": req["id"], "result": null,
                "error": {"details": "transact request specifies unknown database No_Such\u{1b}[31m",
                          "error": "unknown database", "syntax": "[\"No_Such\"]"}}))
                .unwrap(),
            )
        });
        let e = c.transact("No_Such", &[]).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, OvsdbError::Rpc { .. }), "{e}");
        assert!(
            text.starts_with("ovsdb-server refused transact: unknown database"),
            "{text}"
        );
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(
            text.contains("specifies unknown database No_Such"),
            "{text}"
        );
        drop(c);
        h.join().unwrap();
    }

    #[test]
    fn a_refused_operation_is_named_with_the_servers_error_and_details() {
        use crate::op::{row, Condition, Mutation, Op};
        let ops = vec![
            Op::Comment("x".into()),
            Op::Update {
                table: "Port",
                conditions: vec![Condition::eq("name", json!("qr-1"))],
                row: row([("tag", json!(5000))]),
                what: "qr-1".into(),
            },
        ];
        // Captured from ovsdb-server 3.1 (`ovsdb-client transact` of these operations).
        let result = json!([{}, {"details": "5000 is not in the valid range 0 to 4095 (inclusive)",
                                 "error": "constraint violation"}]);
        let e = check_results(&ops, result).unwrap_err();
        match &e {
            OvsdbError::Operation {
                index,
                op,
                error,
                details,
            } => {
                assert_eq!(*index, 1);
                assert_eq!(op, "update Port qr-1");
                assert_eq!(error, "constraint violation");
                assert_eq!(
                    details.as_deref(),
                    Some("5000 is not in the valid range 0 to 4095 (inclusive)")
                );
            }
            other => panic!("{other}"),
        }
        assert_eq!(
            e.to_string(),
            "ovsdb-server refused operation 1 (update Port qr-1): constraint violation \
             (5000 is not in the valid range 0 to 4095 (inclusive))"
        );

        // Index checks run at commit: one result more than operations. Captured from
        // ovsdb-server 3.1 inserting a second Interface named qr-1 (and a Port on a bridge).
        let ops = vec![
            Op::Insert {
                table: "Interface",
                row: row([("name", json!("qr-1"))]),
                uuid_name: Some("i".into()),
                what: "qr-1".into(),
            },
            Op::Insert {
                table: "Port",
                row: row([
                    ("name", json!("qr-x")),
                    ("interfaces", json!(["named-uuid", "i"])),
                ]),
                uuid_name: Some("p".into()),
                what: "qr-x".into(),
            },
            Op::Mutate {
                table: "Bridge",
                conditions: vec![],
                mutations: vec![Mutation::insert("ports", json!(["named-uuid", "p"]))],
                what: "every bridge".into(),
            },
        ];
        let captured = r#"[{"uuid":["uuid","98c9958a-a6ba-493d-8690-bb51647f93e7"]},{"uuid":["uuid","bb78555b-126a-4077-945a-9f50b337cc78"]},{"count":1},{"details":"Transaction causes multiple rows in \"Interface\" table to have identical values (qr-1) for index on column \"name\".  First row, with UUID 955e3372-36ad-4e86-a49a-b7e081cc3899, existed in the database before this transaction and was not modified by the transaction.  Second row, with UUID 98c9958a-a6ba-493d-8690-bb51647f93e7, was inserted by this transaction.","error":"constraint violation"}]"#;
        let e = check_results(&ops, serde_json::from_str(captured).unwrap()).unwrap_err();
        assert!(
            e.to_string().starts_with(
                "ovsdb-server refused operation 3 (commit): constraint violation (Transaction causes multiple rows in \"Interface\""
            ),
            "{e}"
        );
        // A failed guard (captured: a `wait` for no Port qr-1 while there is one).
        let wait = [Op::Wait {
            table: "Port",
            conditions: vec![Condition::eq("name", json!("qr-1"))],
            columns: vec!["_uuid"],
            rows: vec![],
            what: "qr-1 unchanged".into(),
        }];
        let e = check_results(
            &wait,
            json!([{"details": "\"where\" clause test failed", "error": "timed out"}]),
        )
        .unwrap_err();
        assert!(
            matches!(&e, OvsdbError::Operation { index: 0, error, .. } if error == "timed out"),
            "{e}"
        );
        // Fewer results than operations and no error: malformed.
        assert!(matches!(
            check_results(&ops, json!([{}, {}])),
            Err(OvsdbError::Protocol(_))
        ));
        assert!(matches!(
            check_results(&ops, json!({})),
            Err(OvsdbError::Protocol(_))
        ));
    }

    #[test]
    fn connecting_to_nothing_fails_at_once_with_the_path() {
        let t = Instant::now();
        let e = Connection::connect(
            Path::new("/nonexistent/l3agent-ovsdb.sock"),
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(1));
        assert!(
            e.to_string().contains("/nonexistent/l3agent-ovsdb.sock"),
            "{e}"
        );
        let e = Connection::connect(Path::new("/tmp/x"), Duration::ZERO).unwrap_err();
        assert!(e.to_string().contains("timeout"), "{e}");
    }

    #[test]
    fn a_listener_that_never_accepts_still_connects_and_then_times_out() {
        use std::os::unix::net::UnixListener;
        let dir = std::env::temp_dir().join(format!("l3agent-ovsdb-unit-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("never.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let mut c = Connection::connect(&path, Duration::from_millis(300)).unwrap();
        let t = Instant::now();
        let e = c.echo().unwrap_err();
        assert!(matches!(e, OvsdbError::Timeout { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(2));
        drop(listener);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
