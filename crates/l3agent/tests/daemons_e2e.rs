//! The daemons l3agent runs per router, end to end with the real programs, in throwaway
//! namespaces: radvd (a VM on a SLAAC subnet autoconfigures an address and a default route
//! through the router and reaches the outside over IPv6; a killed radvd is started again;
//! removing the router sends its last, zero-lifetime advertisement) and the metadata proxy
//! (a VM's request to 169.254.169.254 reaches a metadata agent on a unix socket with the
//! router id and the VM's address; nothing else reaches the proxy's port).
#![allow(clippy::disallowed_methods)] // the tests run the binary under test and `ip`

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// The example router with an IPv6 SLAAC subnet on its first interface (router address
/// 2001:db8:1::1) and an IPv6 external subnet (router 2001:db8:ff::4, gateway 2001:db8:ff::1).
fn v6_router() -> Value {
    let mut r = example();
    let qr = &mut r["_interfaces"][0];
    qr["subnets"].as_array_mut().unwrap().push(json!({
        "id": "5d4c4b2e-1f7a-4c59-9a3e-2b1c0d9e8f71",
        "cidr": "2001:db8:1::/64",
        "gateway_ip": "2001:db8:1::1",
        "ipv6_ra_mode": "slaac",
        "ipv6_address_mode": "slaac",
        "dns_nameservers": ["2001:db8:1::53"]
    }));
    qr["fixed_ips"].as_array_mut().unwrap().push(json!({
        "ip_address": "2001:db8:1::1",
        "prefixlen": 64,
        "subnet_id": "5d4c4b2e-1f7a-4c59-9a3e-2b1c0d9e8f71"
    }));
    let gw = &mut r["gw_port"];
    gw["subnets"].as_array_mut().unwrap().push(json!({
        "id": "6e5d5c3f-2a8b-4d6a-8b4f-3c2d1e0f9a82",
        "cidr": "2001:db8:ff::/64",
        "gateway_ip": "2001:db8:ff::1"
    }));
    gw["fixed_ips"].as_array_mut().unwrap().push(json!({
        "ip_address": "2001:db8:ff::4",
        "prefixlen": 64,
        "subnet_id": "6e5d5c3f-2a8b-4d6a-8b4f-3c2d1e0f9a82"
    }));
    r
}

/// A legacy host config for the topology, with extra `agent` keys.
fn write(t: &Topology, extra: Value, routers: Vec<Value>) -> PathBuf {
    let mut agent = json!({
        "mode": "legacy", "host": "host-a", "state_path": t.state,
        "bridges": {NET_T1: "br-t1", NET_T2: "br-t2", NET_EX: "br-ex"},
    });
    for (k, v) in extra.as_object().unwrap() {
        agent[k] = v.clone();
    }
    let path = t
        .state
        .with_extension(format!("{}.json", l3agent_testkit::unique()));
    std::fs::write(
        &path,
        json!({"agent": agent, "routers": routers}).to_string(),
    )
    .unwrap();
    path
}

fn apply(t: &Topology, cfg: &Path) -> Value {
    let (code, report, err) = l3agent(t, &["apply", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(0), "apply failed: {err} {report}");
    report
}

/// Waits (at most `secs`) for `check` to hold; false if it never did.
fn wait_for(secs: u64, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    check()
}

/// The pid radvd or haproxy of `router` wrote, from the supervisor's directory.
fn daemon_pid(t: &Topology, router: &str, service: &str) -> Option<i32> {
    let dir = std::fs::read_dir(t.state.join("daemons")).ok()?;
    dir.flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(router) && n.contains(service) && n.ends_with("pid")
        })
        .find_map(|e| std::fs::read_to_string(e.path()).ok()?.trim().parse().ok())
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

fn changes(report: &Value) -> Vec<String> {
    report["routers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["changes"].as_array().cloned().unwrap_or_default())
        .map(|c| c["change"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn a_vm_on_a_slaac_subnet_autoconfigures_through_radvd_and_reaches_the_outside() {
    let t = topology(vec![ROUTER_NS.to_owned()]);
    t.ext.ok(&[
        "ip",
        "addr",
        "add",
        "2001:db8:ff::1/64",
        "dev",
        "eth0",
        "nodad",
    ]);
    t.ext.ok(&[
        "ip",
        "-6",
        "route",
        "add",
        "2001:db8:1::/64",
        "via",
        "2001:db8:ff::4",
    ]);
    // Quick advertisements keep the test short; the defaults are Neutron's (30 s / 100 s).
    let ra = json!({"router_advertisements": {"min_interval": 3, "max_interval": 4}});
    let cfg = write(&t, ra.clone(), vec![v6_router()]);
    let report = apply(&t, &cfg);
    assert!(
        changes(&report).contains(&"start_daemon".to_owned()),
        "{report}"
    );
    let pid = daemon_pid(&t, LEGACY_ID, "radvd").expect("radvd's pid file");
    assert!(alive(pid), "radvd {pid} is not running");

    // The VM: an address in the prefix (EUI-64 of its MAC) and a default route via the
    // router's link-local address.
    // (Usable: past duplicate address detection, so that it is the source address chosen.)
    let vm_addr = || {
        t.vm1
            .ok(&[
                "ip",
                "-6",
                "-o",
                "addr",
                "show",
                "dev",
                "eth0",
                "scope",
                "global",
                "-tentative",
            ])
            .split_whitespace()
            .find(|w| w.starts_with("2001:db8:1:"))
            .map(str::to_owned)
    };
    let default_via = || t.vm1.ok(&["ip", "-6", "route", "show", "default"]);
    // A guest that came up before radvd solicits again when its link comes up: after 10 s
    // without an address, the VM's link is cycled (a boot, in effect).
    let mut got = wait_for(10, || vm_addr().is_some());
    if !got {
        t.vm1.ok(&["ip", "link", "set", "eth0", "down"]);
        t.vm1.ok(&["ip", "link", "set", "eth0", "up"]);
        got = wait_for(50, || vm_addr().is_some());
    }
    let radvd_log = std::fs::read_to_string(
        t.state
            .join("daemons")
            .join(format!("{LEGACY_ID}.radvd.log")),
    )
    .unwrap_or_default();
    assert!(
        got,
        "no SLAAC address on the VM: {}\nrouter: {}\nradvd: {radvd_log}",
        t.vm1.ok(&["ip", "-6", "addr"]),
        in_ns(ROUTER_NS, &["ip", "-6", "addr"])
    );
    assert!(
        wait_for(10, || default_via()
            .contains("via fe80::c8fe:deff:fead:beef")),
        "no default route via the router's link-local address: {}",
        default_via()
    );
    let ping = t
        .vm1
        .run(&["ping", "-6", "-c", "2", "-W", "2", "2001:db8:ff::1"]);
    assert_eq!(ping.code, Some(0), "{} {}", ping.stdout, ping.stderr);

    // Converged: nothing to do. A killed radvd is drift that the next apply repairs.
    let report = apply(&t, &cfg);
    assert!(changes(&report).is_empty(), "{report}");
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .output()
        .unwrap();
    assert!(wait_for(5, || !alive(pid)));
    let state = t.state.to_str().unwrap().to_owned();
    let (code, status, _) = l3agent(&t, &["status", "--state-path", &state]);
    assert_eq!(code, Some(1), "a dead radvd is drift: {status}");
    assert!(status.to_string().contains("start_daemon"), "{status}");
    let report = apply(&t, &cfg);
    assert_eq!(changes(&report), vec!["start_daemon"], "{report}");
    let pid = daemon_pid(&t, LEGACY_ID, "radvd").expect("radvd's pid file");
    assert!(alive(pid));

    // The router goes: radvd is stopped with SIGTERM and its final advertisement (router
    // lifetime 0) removes the VM's default route at once (Neutron's SIGKILL leaves it for
    // the router lifetime).
    let empty = write(&t, ra, vec![]);
    apply(&t, &empty);
    assert!(wait_for(5, || !alive(pid)), "radvd {pid} still runs");
    assert!(
        wait_for(5, || !default_via().contains("fe80::c8fe:deff:fead:beef")),
        "the VM still routes through the removed router: {}",
        default_via()
    );
    let left: Vec<_> = std::fs::read_dir(t.state.join("daemons"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "files left behind: {left:?}");
}

/// A fake metadata agent: answers one request on `socket`, returning what it received.
fn metadata_agent(socket: &Path) -> std::thread::JoinHandle<String> {
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket).unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut conn = loop {
            match listener.accept() {
                Ok((c, _)) => break c,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => return format!("no request within 60 s: {e}"),
            }
        };
        conn.set_nonblocking(false).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") && got.len() < 65536 {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let body = "ami-id\ninstance-id\n";
        let _ = write!(
            conn,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        String::from_utf8_lossy(&got).into_owned()
    })
}

/// `GET` from inside `vm` to `addr` (bounded): the response, or why it failed.
fn http_get(vm: &l3agent_testkit::TestNs, addr: &str, extra: &str) -> Result<String, String> {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let extra = extra.to_owned();
    vm.inside(move || {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\n{extra}Connection: close\r\n\r\n"
        )
        .map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    })
}

/// The metadata test's router: the example under another id (tests run in parallel).
const MD_ID: &str = "97c7c2ae-d0ba-4691-820c-8053abf50b8d";

#[test]
fn a_vm_reaches_the_metadata_agent_through_the_routers_proxy() {
    let t = topology(vec![format!("qrouter-{MD_ID}")]);
    let mut router = example();
    router["id"] = json!(MD_ID);
    std::fs::create_dir_all(t.state.with_extension("md")).unwrap();
    let socket = t.state.with_extension("md").join("metadata_proxy");
    let md = json!({"metadata_proxy": {"socket": socket}});
    let cfg = write(&t, md.clone(), vec![router]);
    apply(&t, &cfg);
    let pid = daemon_pid(&t, MD_ID, "haproxy").expect("haproxy's pid file");
    assert!(alive(pid));
    let agent = metadata_agent(&socket);
    // A guest trying to pass itself off as another router or network.
    let spoof = "X-Neutron-Router-ID: 00000000-0000-0000-0000-000000000000\r\n\
                 X-Neutron-Network-ID: 11111111-1111-1111-1111-111111111111\r\n";
    let response = http_get(&t.vm1, "169.254.169.254:80", spoof).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("ami-id\ninstance-id\n"), "{response}");
    let request = agent.join().unwrap();
    let headers: Vec<(String, String)> = request
        .split("\r\n")
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect();
    let values = |name: &str| -> Vec<&str> {
        headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(values("x-neutron-router-id"), vec![MD_ID], "{request}");
    assert!(values("x-neutron-network-id").is_empty(), "{request}");
    let xff = values("x-forwarded-for");
    assert!(
        xff == ["192.0.2.10"] || xff == ["::ffff:192.0.2.10"],
        "{request}"
    );
    assert!(
        request.starts_with("GET /latest/meta-data/ HTTP/1.1"),
        "{request}"
    );

    // The proxy's port is reachable only through the redirect.
    let direct = http_get(&t.vm1, "192.0.2.4:9697", "");
    assert!(direct.is_err(), "the proxy answered directly: {direct:?}");

    // The router goes, and its proxy with it.
    let empty = write(&t, md, vec![]);
    apply(&t, &empty);
    assert!(wait_for(10, || !alive(pid)), "haproxy {pid} still runs");
}
