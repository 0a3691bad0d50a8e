//! `l3agent apply`'s progress bar on the real kernel: shown on a terminal (a pseudo-terminal
//! made by `script`) for a cold apply of 9 routers, never with `--json`, and never when stderr
//! is not a terminal — there the output is exactly what it was without the bar.
#![allow(clippy::disallowed_methods)] // the test runs the binary under test

mod common;

use std::process::Command;

use common::*;
use serde_json::{json, Value};

const ROUTERS: usize = 9;

/// Router `i`: its own id and ports (the host ends of its ports must differ), a gateway on
/// the external bridge, one port on the first tenant bridge, no floating IP.
fn router(i: usize) -> Value {
    let port = |kind: usize, net: &str, ip: String, cidr: &str, gw: &str| {
        json!({
            "id": format!("{kind}a77e{i:03x}-0000-4000-8000-000000000000"),
            "network_id": net,
            "mac_address": format!("fa:16:3e:a7:{kind:02x}:{i:02x}"),
            "mtu": 1500,
            "fixed_ips": [{"ip_address": ip, "prefixlen": 24, "subnet_id": format!("s{kind}")}],
            "subnets": [{"id": format!("s{kind}"), "cidr": cidr, "gateway_ip": gw}],
        })
    };
    json!({
        "id": format!("a77e{i:04x}-0000-4000-8000-000000000000"),
        "gw_port": port(2, NET_EX, format!("203.0.113.{}", 20 + i), "203.0.113.0/24", "203.0.113.1"),
        // An address of its own on the shared tenant network (an address is one port's).
        "_interfaces": [port(1, NET_T1, format!("192.0.2.{}", 10 + i), "192.0.2.0/24", "192.0.2.1")],
        "_floatingips": [],
    })
}

/// `l3agent ARGS` in the host namespace with stdout and stderr on a pseudo-terminal (`script`
/// runs it there and copies what it writes): (exit code, what the terminal showed).
fn on_a_terminal(t: &Topology, args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = format!(
        "nsenter --net=/run/netns/{} {}",
        t.host.name,
        env!("CARGO_BIN_EXE_l3agent")
    );
    for a in args {
        cmd.push(' ');
        cmd.push_str(a);
    }
    let o = Command::new("timeout")
        .args([
            "--kill-after=5",
            "120",
            "script",
            "-qefc",
            &cmd,
            "/dev/null",
        ])
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).replace('\r', ""),
    )
}

#[test]
fn a_long_apply_shows_a_progress_bar_on_a_terminal_only_and_never_in_json_or_pipes() {
    let ids: Vec<String> = (0..ROUTERS)
        .map(|i| format!("qrouter-a77e{i:04x}-0000-4000-8000-000000000000"))
        .collect();
    let t = topology(ids.clone());
    let routers: Vec<Value> = (0..ROUTERS).map(router).collect();
    let cfg = t.state.with_extension("progress.json");
    std::fs::write(
        &cfg,
        json!({
            "agent": {"mode": "legacy", "host": "host-a", "state_path": t.state,
                      "bridges": {NET_T1: "br-t1", NET_T2: "br-t2", NET_EX: "br-ex"}},
            "routers": routers,
        })
        .to_string(),
    )
    .unwrap();
    let cfg_s = cfg.to_str().unwrap();

    // A cold apply on a terminal: the bar counts the routers, then the report follows.
    let (code, screen) = on_a_terminal(&t, &["apply", cfg_s]);
    assert_eq!(code, Some(0), "{screen}");
    assert!(
        screen.contains("applying ["),
        "no progress bar in:\n{screen}"
    );
    assert!(screen.contains(&format!("/{ROUTERS} routers")), "{screen}");
    for id in &ids {
        let id = id.trim_start_matches("qrouter-");
        assert!(
            screen.contains(&format!("router {id}: converged")),
            "{id} in:\n{screen}"
        );
    }

    // --json on a terminal: one JSON document, no bar.
    let (code, screen) = on_a_terminal(&t, &["apply", cfg_s, "--json"]);
    assert_eq!(code, Some(0), "{screen}");
    assert!(!screen.contains("applying"), "{screen}");
    let report: Value = serde_json::from_str(&screen).unwrap_or_else(|e| panic!("{e}: {screen}"));
    assert_eq!(report["routers"].as_array().map(Vec::len), Some(ROUTERS));

    // Not a terminal: stdout as always, nothing on stderr.
    let o = t
        .host_command(&[env!("CARGO_BIN_EXE_l3agent"), "apply", cfg_s])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "nothing to do: every router is as configured\n"
    );
    assert_eq!(String::from_utf8_lossy(&o.stderr), "");

    let (code, _, err) = l3agent(&t, &["destroy", cfg_s]);
    assert_eq!(code, Some(0), "{err}");
}
