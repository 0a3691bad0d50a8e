//! A deliberately small HTTP/1.1 server for the three endpoints a scraper and a supervisor
//! need; enough HTTP to be read by Prometheus, `curl` and Kubernetes-style probes, and no
//! more (no keep-alive, no bodies, no TLS: bind it to loopback or a management network).
//!
//! | Path | Answer |
//! | --- | --- |
//! | `GET /metrics` | 200, the metrics in OpenMetrics text if the `Accept` header asks for it, else the Prometheus text format 0.0.4 |
//! | `GET /healthz` | 200 while the process runs (the server thread answering is the check) |
//! | `GET /readyz` | 200 once the ready flag is set (initial reconcile done), 503 before |
//! | other paths | 404 |
//! | other methods | 405 (`HEAD` is answered like `GET`, without the body) |
//!
//! Bounded: the request head is capped ([`HttpConfig::max_head_bytes`], else 431), the whole
//! head must arrive within [`HttpConfig::io_timeout`] (a slow client cannot hold a
//! connection open by trickling bytes), writes time out too, and at most
//! [`HttpConfig::max_connections`] connections are served at once (others get 503).
//! [`HttpServer::stop`] stops accepting and waits for the connections being served.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::metrics::{Format, Metrics};

use crate::wake::{self, Background, Ready, Slot, Waker};
use crate::AgentError;

/// Where the agent serves metrics unless configured otherwise: loopback only, on a port
/// from the unassigned range next to the Prometheus exporters' (9100-9999).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9710";

/// Limits of the HTTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpConfig {
    /// Connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// The request line and headers may be at most this long.
    pub max_head_bytes: usize,
    /// The request head must arrive within this time, and each write must progress within it.
    pub io_timeout: Duration,
}

impl Default for HttpConfig {
    /// 16 connections, 8 KiB heads, 5 s.
    fn default() -> HttpConfig {
        HttpConfig {
            max_connections: 16,
            max_head_bytes: 8 * 1024,
            io_timeout: Duration::from_secs(5),
        }
    }
}

/// What the endpoints read: the metrics to encode and the readiness flag the daemon sets.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// Encoded for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// `/readyz` answers 200 once this is true.
    pub ready: Arc<AtomicBool>,
}

/// The running server: an accept thread plus one thread per connection being served.
#[derive(Debug)]
pub struct HttpServer {
    addr: SocketAddr,
    active: Arc<AtomicUsize>,
    thread: Background,
}

impl HttpServer {
    /// Binds `addr` (port 0 picks a free port; see [`local_addr`](Self::local_addr)) and
    /// starts serving.
    pub fn start(
        addr: SocketAddr,
        config: HttpConfig,
        state: HttpState,
    ) -> Result<HttpServer, AgentError> {
        let bind_err = |source| AgentError::HttpBind { addr, source };
        let listener = TcpListener::bind(addr).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let local = listener.local_addr().map_err(bind_err)?;
        let active = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&active);
        let thread = Background::spawn("HTTP server", "http", move |waker| {
            accept_loop(&listener, &waker, config, &state, &counter)
        })?;
        Ok(HttpServer {
            addr: local,
            active,
            thread,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections being served now.
    pub fn active_connections(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Stops accepting, waits for the connections being served (each bounded by the I/O
    /// timeout), and returns.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.thread.halt();
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.halt();
    }
}

fn accept_loop(
    listener: &TcpListener,
    waker: &Waker,
    config: HttpConfig,
    state: &HttpState,
    active: &Arc<AtomicUsize>,
) {
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
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
        // Accept everything pending (the listener is non-blocking).
        loop {
            let stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: back off briefly rather than spin.
                    warn!(error = %e, "accepting an HTTP connection failed");
                    std::thread::sleep(Duration::from_millis(50));
                    break;
                }
            };
            workers.retain(|w| !w.is_finished());
            if active.load(Ordering::SeqCst) >= config.max_connections {
                busy(stream);
                continue;
            }
            active.fetch_add(1, Ordering::SeqCst);
            let slot = Slot(Arc::clone(active));
            let state = state.clone();
            let spawned = std::thread::Builder::new()
                .name("http-conn".into())
                .spawn(move || {
                    let _slot = slot;
                    serve(stream, config, &state);
                });
            match spawned {
                Ok(w) => workers.push(w),
                // The closure (and its slot) was dropped: the count is already restored.
                Err(e) => warn!(error = %e, "starting an HTTP connection thread failed"),
            }
        }
    }
    for w in workers {
        let _ = w.join();
    }
}

/// Over the connection limit: a short 503 on the accept thread, which waits at most
/// 100 ms for the request (read only so that closing does not reset the connection).
fn busy(mut stream: TcpStream) {
    let short = Some(Duration::from_millis(100));
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(short);
    let _ = stream.set_read_timeout(short);
    let _ = stream.read(&mut [0u8; 1024]);
    let _ = respond(
        &mut stream,
        503,
        "text/plain; charset=utf-8",
        b"too many connections\n",
        &[("Retry-After", "1")],
        false,
    );
    let _ = stream.set_nonblocking(true);
    finish(&mut stream);
}

/// Ends the response: signals the end with FIN, then reads and discards what the client
/// sent that was not read (a body, the rest of an oversize head) for a short while.
/// Closing a socket with unread input makes the kernel send a reset, which can destroy the
/// response before the client reads it.
fn finish(stream: &mut TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// A parsed request head: only what routing needs.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    method: String,
    path: String,
    accept: Option<String>,
}

/// Why a head could not be read.
#[derive(Debug, PartialEq, Eq)]
enum HeadError {
    TooLarge,
    Malformed,
    /// Timed out or the peer went away: nothing useful to answer.
    Gone,
}

fn read_head(stream: &mut TcpStream, config: HttpConfig) -> Result<Head, HeadError> {
    let deadline = Instant::now() + config.io_timeout;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = head_end(&buf) {
            buf.truncate(end);
            return parse_head(&buf);
        }
        if buf.len() > config.max_head_bytes {
            return Err(HeadError::TooLarge);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HeadError::Gone);
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|_| HeadError::Gone)?;
        let room = (config.max_head_bytes + 1 - buf.len()).min(chunk.len());
        match stream.read(&mut chunk[..room]) {
            Ok(0) => return Err(HeadError::Gone),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Err(HeadError::Gone),
        }
    }
}

/// The length of the head including its blank line, if complete (bare `\n` line ends are
/// accepted, as RFC 9112 allows).
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn parse_head(buf: &[u8]) -> Result<Head, HeadError> {
    let text = std::str::from_utf8(buf).map_err(|_| HeadError::Malformed)?;
    let mut lines = text.lines();
    let request = lines.next().ok_or(HeadError::Malformed)?;
    let mut parts = request.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed);
    };
    if method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !target.starts_with('/')
        || !version.starts_with("HTTP/1.")
    {
        return Err(HeadError::Malformed);
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    let mut accept = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            if line.trim().is_empty() {
                continue;
            }
            return Err(HeadError::Malformed);
        };
        if name.eq_ignore_ascii_case("accept") {
            accept = Some(value.trim().to_owned());
        }
    }
    Ok(Head {
        method: method.to_owned(),
        path: path.to_owned(),
        accept,
    })
}

fn serve(mut stream: TcpStream, config: HttpConfig, state: &HttpState) {
    // Accepted sockets do not inherit O_NONBLOCK on Linux, but be explicit.
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(config.io_timeout));
    let head = match read_head(&mut stream, config) {
        Ok(h) => h,
        Err(HeadError::TooLarge) => {
            let _ = respond(
                &mut stream,
                431,
                "text/plain; charset=utf-8",
                b"request head too large\n",
                &[],
                false,
            );
            return;
        }
        Err(HeadError::Malformed) => {
            let _ = respond(
                &mut stream,
                400,
                "text/plain; charset=utf-8",
                b"bad request\n",
                &[],
                false,
            );
            return;
        }
        Err(HeadError::Gone) => return,
    };
    let head_only = head.method == "HEAD";
    if head.method != "GET" && !head_only {
        let _ = respond(
            &mut stream,
            405,
            "text/plain; charset=utf-8",
            b"method not allowed\n",
            &[("Allow", "GET, HEAD")],
            false,
        );
        return;
    }
    let text = "text/plain; charset=utf-8";
    let result = match head.path.as_str() {
        "/metrics" => {
            let format = Format::negotiate(head.accept.as_deref());
            match state.metrics.encode(format) {
                Ok(body) => respond(
                    &mut stream,
                    200,
                    format.content_type(),
                    body.as_bytes(),
                    &[],
                    head_only,
                ),
                Err(e) => {
                    warn!(error = %e, "encoding metrics failed");
                    respond(
                        &mut stream,
                        500,
                        text,
                        b"encoding metrics failed\n",
                        &[],
                        head_only,
                    )
                }
            }
        }
        "/healthz" => respond(&mut stream, 200, text, b"ok\n", &[], head_only),
        "/readyz" => {
            if state.ready.load(Ordering::SeqCst) {
                respond(&mut stream, 200, text, b"ready\n", &[], head_only)
            } else {
                respond(&mut stream, 503, text, b"not ready\n", &[], head_only)
            }
        }
        _ => respond(&mut stream, 404, text, b"not found\n", &[], head_only),
    };
    if let Err(e) = result {
        debug!(error = %e, "writing an HTTP response failed");
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

fn respond(
    stream: &mut TcpStream,
    code: u16,
    content_type: &str,
    body: &[u8],
    extra: &[(&str, &str)],
    head_only: bool,
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        reason(code),
        body.len()
    );
    for (name, value) in extra {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if !head_only {
        stream.write_all(body)?;
    }
    stream.flush()?;
    finish(stream);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Shutdown;

    fn server(config: HttpConfig) -> (HttpServer, Arc<AtomicBool>) {
        let ready = Arc::new(AtomicBool::new(false));
        let state = HttpState {
            metrics: Arc::new(Metrics::new()),
            ready: Arc::clone(&ready),
        };
        let s = HttpServer::start("127.0.0.1:0".parse().unwrap(), config, state).unwrap();
        (s, ready)
    }

    fn connect(s: &HttpServer) -> TcpStream {
        let c = TcpStream::connect_timeout(&s.local_addr(), Duration::from_secs(5)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        c
    }

    /// Sends `request` and reads the whole response (the server closes after one).
    fn exchange(s: &HttpServer, request: &str) -> String {
        let mut c = connect(s);
        c.write_all(request.as_bytes()).unwrap();
        let mut out = Vec::new();
        c.take(4 << 20).read_to_end(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn get(s: &HttpServer, path: &str) -> String {
        exchange(s, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"))
    }

    fn status(response: &str) -> &str {
        response.lines().next().unwrap_or("")
    }

    #[test]
    fn healthz_answers_200_while_the_process_runs() {
        let (s, _) = server(HttpConfig::default());
        let r = get(&s, "/healthz");
        assert_eq!(status(&r), "HTTP/1.1 200 OK");
        assert!(r.ends_with("\r\n\r\nok\n"), "{r}");
        s.stop();
    }

    #[test]
    fn readyz_answers_503_until_the_ready_flag_is_set() {
        let (s, ready) = server(HttpConfig::default());
        assert_eq!(
            status(&get(&s, "/readyz")),
            "HTTP/1.1 503 Service Unavailable"
        );
        ready.store(true, Ordering::SeqCst);
        assert_eq!(status(&get(&s, "/readyz?verbose=1")), "HTTP/1.1 200 OK");
        s.stop();
    }

    #[test]
    fn metrics_are_served_in_the_format_the_scraper_accepts() {
        let (s, _) = server(HttpConfig::default());
        let r = get(&s, "/metrics");
        assert_eq!(status(&r), "HTTP/1.1 200 OK");
        assert!(r.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        assert!(r.contains("\nl3agent_queue_depth 0\n"), "{r}");
        let body_len = r.split_once("\r\n\r\n").unwrap().1.len();
        assert!(r.contains(&format!("\r\nContent-Length: {body_len}\r\n")));

        let r = exchange(
            &s,
            "GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n",
        );
        assert!(r.contains(
            "\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\n"
        ));
        assert!(r.ends_with("# EOF\n"));
        s.stop();
    }

    #[test]
    fn head_is_answered_without_a_body() {
        let (s, _) = server(HttpConfig::default());
        let r = exchange(&s, "HEAD /healthz HTTP/1.1\r\n\r\n");
        assert_eq!(status(&r), "HTTP/1.1 200 OK");
        assert!(r.ends_with("\r\n\r\n"), "{r}");
        s.stop();
    }

    #[test]
    fn unknown_paths_are_404_and_other_methods_405() {
        let (s, _) = server(HttpConfig::default());
        assert_eq!(status(&get(&s, "/nope")), "HTTP/1.1 404 Not Found");
        let r = exchange(&s, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(status(&r), "HTTP/1.1 405 Method Not Allowed");
        assert!(r.contains("\r\nAllow: GET, HEAD\r\n"));
        s.stop();
    }

    #[test]
    fn malformed_requests_are_400() {
        let (s, _) = server(HttpConfig::default());
        for req in [
            "GARBAGE\r\n\r\n",
            "GET metrics HTTP/1.1\r\n\r\n",
            "GET / SPDY/3\r\n\r\n",
        ] {
            assert_eq!(
                status(&exchange(&s, req)),
                "HTTP/1.1 400 Bad Request",
                "{req:?}"
            );
        }
        s.stop();
    }

    #[test]
    fn an_oversize_request_head_is_refused_with_431() {
        let (s, _) = server(HttpConfig::default());
        let big = format!(
            "GET /metrics HTTP/1.1\r\nX-Fill: {}\r\n\r\n",
            "a".repeat(9000)
        );
        let mut c = connect(&s);
        // The server may answer and close before reading it all: a failed write is fine.
        let _ = c.write_all(big.as_bytes());
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        assert_eq!(status(&out), "HTTP/1.1 431 Request Header Fields Too Large");
        s.stop();
    }

    #[test]
    fn a_client_that_sends_nothing_is_dropped_after_the_timeout() {
        let config = HttpConfig {
            io_timeout: Duration::from_millis(300),
            ..HttpConfig::default()
        };
        let (s, _) = server(config);
        let mut c = connect(&s);
        let start = Instant::now();
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
        assert!(out.is_empty());
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(5),
            "{took:?}"
        );
        s.stop();
    }

    #[test]
    fn connections_over_the_limit_get_503() {
        let config = HttpConfig {
            max_connections: 2,
            io_timeout: Duration::from_secs(3),
            ..HttpConfig::default()
        };
        let (s, _) = server(config);
        let idle: Vec<TcpStream> = (0..2).map(|_| connect(&s)).collect();
        let deadline = Instant::now() + Duration::from_secs(5);
        while s.active_connections() < 2 {
            assert!(
                Instant::now() < deadline,
                "the idle connections were not accepted"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let r = get(&s, "/healthz");
        assert_eq!(status(&r), "HTTP/1.1 503 Service Unavailable");
        for c in &idle {
            c.shutdown(Shutdown::Both).unwrap();
        }
        drop(idle);
        let deadline = Instant::now() + Duration::from_secs(5);
        while s.active_connections() > 0 {
            assert!(
                Instant::now() < deadline,
                "closed connections still counted"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(status(&get(&s, "/healthz")), "HTTP/1.1 200 OK");
        s.stop();
    }

    #[test]
    fn stop_waits_for_a_connection_in_progress_and_then_refuses_new_ones() {
        let config = HttpConfig {
            io_timeout: Duration::from_secs(2),
            ..HttpConfig::default()
        };
        let (s, _) = server(config);
        let addr = s.local_addr();
        let mut c = connect(&s);
        c.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while s.active_connections() < 1 {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(5));
        }
        let stopper = std::thread::spawn(move || {
            let start = Instant::now();
            s.stop();
            start.elapsed()
        });
        std::thread::sleep(Duration::from_millis(100));
        // The request in progress is still answered.
        c.write_all(b"\r\n").unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        assert_eq!(status(&out), "HTTP/1.1 200 OK");
        let took = stopper.join().unwrap();
        assert!(took < Duration::from_secs(5), "{took:?}");
        assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err());
    }

    #[test]
    fn heads_are_parsed_leniently_but_not_loosely() {
        let h = parse_head(b"GET /metrics?x=1 HTTP/1.0\nAccept: text/plain\n\n").unwrap();
        assert_eq!(h.path, "/metrics");
        assert_eq!(h.accept.as_deref(), Some("text/plain"));
        assert_eq!(
            parse_head(b"get / HTTP/1.1\r\n\r\n"),
            Err(HeadError::Malformed)
        );
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nno colon here\r\n\r\n"),
            Err(HeadError::Malformed)
        );
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }
}
