//! The agent's traffic counters on the real kernel, for both iptables backends: `l3agent
//! agent` runs the legacy example router in the throwaway topology of the router tests, known
//! traffic goes through the router's gateway and its floating IP, and `/metrics` (scraped
//! inside the host namespace) must move by at least that traffic — exactly, for the floating
//! IP's NAT rules, which count one packet per new connection. Scrapes start no process.
#![allow(clippy::disallowed_methods)] // the test runs the binary under test and ping

mod common;

use std::net::{Ipv4Addr, UdpSocket};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use l3agent_agent::control::client;
use l3agent_agent::Request;
use l3agent_testkit::BACKENDS;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

/// UDP payload of the test datagrams: 20 + 8 + 100 = 128 bytes of IP packet each.
const PAYLOAD: usize = 100;
const DATAGRAM: f64 = 128.0;
/// ICMP payload of the pings: 20 + 8 + 200 = 228 bytes of IP packet each way.
const PING_SIZE: &str = "200";
const PING: f64 = 228.0;
const FIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);

/// The agent, SIGKILLed (through `timeout`, by pid) if the test ends while it runs.
struct Agent {
    child: Option<Child>,
    log: std::path::PathBuf,
}

impl Agent {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        kill(
            Pid::from_raw(i32::try_from(c.id()).unwrap()),
            Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(st) = c.try_wait().unwrap() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        panic!("the agent did not stop\n{}", self.log());
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn status(socket: &Path) -> Option<Value> {
    client::query(
        socket,
        &Request::Status { router: None },
        Duration::from_secs(5),
    )
    .ok()
}

/// The value of series `series` (`name{labels}`), if exported.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The traffic series of router `id` and the floating IP.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Seen {
    router_in: (f64, f64),
    router_out: (f64, f64),
    fip_in: (f64, f64),
    fip_out: (f64, f64),
    spawns: f64,
}

fn seen(metrics: &str, id: &str) -> Option<Seen> {
    let pair = |family: &str, label: &str, dir: &str| -> Option<(f64, f64)> {
        let b = sample(
            metrics,
            &format!("l3agent_{family}_traffic_bytes_total{{{label},direction=\"{dir}\"}}"),
        )?;
        let p = sample(
            metrics,
            &format!("l3agent_{family}_traffic_packets_total{{{label},direction=\"{dir}\"}}"),
        )?;
        Some((b, p))
    };
    let router = format!("router=\"{id}\"");
    let fip = format!("floating_ip=\"{FIP}\"");
    Some(Seen {
        router_in: pair("router", &router, "ingress")?,
        router_out: pair("router", &router, "egress")?,
        fip_in: pair("floatingip", &fip, "ingress")?,
        fip_out: pair("floatingip", &fip, "egress")?,
        spawns: sample(metrics, "l3agent_process_spawns_total")?,
    })
}

/// `n` datagrams from `from` to `to`, each from a socket of its own (a new connection).
fn connections(ns: &l3agent_testkit::TestNs, from: &str, to: (Ipv4Addr, u16), n: usize) {
    let from = from.to_owned();
    ns.inside(move || {
        for _ in 0..n {
            let s = UdpSocket::bind((from.as_str(), 0)).unwrap();
            s.send_to(&[0x5a; PAYLOAD], to).unwrap();
        }
    });
}

fn one_backend(backend: &'static str, id: &str) {
    let ns = format!("qrouter-{id}");
    let mut t = topology(vec![ns.clone()]);
    t.force_iptables_backend(backend);
    let dir = t.state.with_extension("traffic");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // Not created: the agent makes it 0700.
    let socket = dir.join("run").join("control.sock");
    let mut r = example();
    r["id"] = json!(id);
    let cfg = config(&t, &r);
    let log = dir.join("agent.log");
    let bin = env!("CARGO_BIN_EXE_l3agent");
    let (cfg_s, socket_s) = (cfg.to_string_lossy(), socket.to_string_lossy());
    let child = t
        .host_command(&[
            bin,
            "-v",
            "agent",
            "--config",
            &cfg_s,
            "--resync-interval",
            "3600",
            "--metrics-listen",
            "127.0.0.1:0",
            "--control-socket",
            &socket_s,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut agent = Agent {
        child: Some(child),
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let addr = loop {
        let st = status(&socket);
        if let Some(st) = st.filter(|v| v["ready"] == true) {
            break st["metrics_listen"].as_str().unwrap().to_owned();
        }
        let exited = agent.child.as_mut().and_then(|c| c.try_wait().unwrap());
        assert!(
            exited.is_none() && Instant::now() < deadline,
            "{backend}: not ready ({exited:?})\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let metrics = http_get(&t, &addr, "/metrics");
    let before = seen(&metrics, id).unwrap_or_else(|| {
        panic!(
            "{backend}: no traffic series in\n{metrics}\n{}",
            agent.log()
        )
    });

    // Through the gateway: 20 pings of the router's own gateway address from outside, and
    // 7 new connections each way through the floating IP (from outside to it, from the VM
    // behind it out).
    let out = t.ext.run(&[
        "ping",
        "-n",
        "-q",
        "-c",
        "20",
        "-i",
        "0.05",
        "-s",
        PING_SIZE,
        "-W",
        "2",
        "203.0.113.4",
    ]);
    assert!(
        out.stdout.contains("20 received"),
        "{backend}: {}{}",
        out.stdout,
        out.stderr
    );
    connections(&t.ext, "203.0.113.1", (FIP, 9), 7);
    connections(&t.vm1, "192.0.2.10", (Ipv4Addr::new(203, 0, 113, 1), 9), 7);

    // A reading is at most 5 s old: scrape until the floating IP's counters moved.
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        let m = http_get(&t, &addr, "/metrics");
        let now = seen(&m, id).unwrap_or_else(|| panic!("{backend}: series gone in\n{m}"));
        if now.fip_in.1 >= before.fip_in.1 + 7.0 && now.fip_out.1 >= before.fip_out.1 + 7.0 {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "{backend}: the counters did not move: {before:?} -> {now:?}\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let d = |a: (f64, f64), b: (f64, f64)| (a.0 - b.0, a.1 - b.1);
    // The gateway device saw at least the pings and the datagrams in, the replies and the
    // SNATed datagrams out (ARP and ICMP errors come on top).
    let (bytes, packets) = d(after.router_in, before.router_in);
    assert!(
        bytes >= 20.0 * PING + 7.0 * DATAGRAM && packets >= 27.0,
        "{backend}: router ingress moved by {bytes} bytes, {packets} packets"
    );
    let (bytes, packets) = d(after.router_out, before.router_out);
    assert!(
        bytes >= 20.0 * PING + 7.0 * DATAGRAM && packets >= 27.0,
        "{backend}: router egress moved by {bytes} bytes, {packets} packets"
    );
    // The floating IP's NAT rules: one packet per connection, exactly.
    assert_eq!(
        d(after.fip_in, before.fip_in),
        (7.0 * DATAGRAM, 7.0),
        "{backend}"
    );
    assert_eq!(
        d(after.fip_out, before.fip_out),
        (7.0 * DATAGRAM, 7.0),
        "{backend}"
    );
    // Reading the counters started no process.
    assert_eq!(after.spawns, before.spawns, "{backend}\n{}", agent.log());

    assert_eq!(agent.stop(), Some(0), "{backend}\n{}", agent.log());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_agent_exports_gateway_and_floating_ip_traffic_that_follows_real_packets_on_both_backends() {
    l3agent_testkit::require_kernel();
    for (backend, id) in BACKENDS.into_iter().zip([
        "a9e7c0de-5e1f-4a6e-9d3c-0000000071f0",
        "a9e7c0de-5e1f-4a6e-9d3c-0000000071f1",
    ]) {
        one_backend(backend, id);
    }
}
