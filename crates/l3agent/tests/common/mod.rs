//! What the end-to-end router tests share: a topology made only of throwaway namespaces (a
//! "host" namespace where l3agent runs, entered with `nsenter --net`, holding the bridges; an
//! "external" namespace on the external bridge with the gateway address; VM namespaces on the
//! tenant bridges), the configs of Neutron's example routers, and running `l3agent --json`.
#![allow(clippy::disallowed_methods)] // the tests run the binary under test
#![allow(dead_code)] // each test binary uses its own subset

use std::path::PathBuf;
use std::process::Command;

use l3agent_testkit::{ok, TestNs};
use serde_json::{json, Value};

pub const NET_T1: &str = "90e4912c-0eb8-4be4-a793-e6a3bba6ae8b";
pub const NET_T2: &str = "c6910e18-fb1f-4988-9af4-211a8c2e2926";
pub const NET_EX: &str = "65566f91-133a-44ff-87f5-ecffc1193d3d";
/// The id of the legacy example router.
pub const LEGACY_ID: &str = "87c7c2ae-d0ba-4691-820c-8053abf50b8d";
pub const ROUTER_NS: &str = "qrouter-87c7c2ae-d0ba-4691-820c-8053abf50b8d";

pub const DVR_T1: &str = "740cd353-7ee8-49e2-96f6-17ed0dc7b3da";
pub const DVR_T2: &str = "d8282fc8-37e4-43a7-801d-8d2c91dbbb98";
pub const DVR_EX: &str = "11272de9-8a18-4392-8618-d07b6ab565e3";
pub const DVR_ID: &str = "fb221852-b23c-407e-ba26-a68b25803e49";

/// Neutron's legacy example router, with its extra route through the real gateway.
pub fn example() -> Value {
    let text = include_str!("../../../router/tests/data/neutron-router-legacy.json");
    let mut r: Value = serde_json::from_str(text).unwrap();
    // The example's extra route points at the router's own address; use the real gateway.
    r["routes"] = json!([{"destination": "100.64.8.0/24", "nexthop": "203.0.113.1"}]);
    r
}

/// Neutron's distributed example router.
pub fn dvr_example() -> Value {
    serde_json::from_str(include_str!(
        "../../../router/tests/data/neutron-router-dvr.json"
    ))
    .unwrap()
}

pub struct Topology {
    pub host: TestNs,
    pub ext: TestNs,
    pub vm1: TestNs,
    pub vm2: TestNs,
    pub state: PathBuf,
    /// Router namespaces this test's l3agent makes: removed on drop if the test fails.
    pub routers: Vec<String>,
    /// Set by [`Topology::force_iptables_backend`]: a copy of `/etc/alternatives` whose
    /// `iptables*` links point at one backend, mounted over the real one for l3agent only.
    pub alternatives: Option<(PathBuf, &'static str)>,
}

/// Kills (SIGKILL) the daemons l3agent left under `state/daemons` (a test that failed before
/// removing its routers): every pid file there whose process names the state directory in
/// its command line or lives in one of `namespaces`.
pub fn kill_daemons(state: &std::path::Path) {
    let Ok(dir) = std::fs::read_dir(state.join("daemons")) else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.contains("pid") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let Ok(pid) = text.trim().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if pid > 1 && String::from_utf8_lossy(&cmdline).contains(&*state.to_string_lossy()) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).output();
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        kill_daemons(&self.state);
        for ns in &self.routers {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = std::fs::remove_dir_all(&self.state);
        if let Some((dir, _)) = &self.alternatives {
            let _ = std::fs::remove_dir_all(dir);
        }
        // What tests put beside the state directory: configs (`<state>.<n>.json`), the
        // metadata proxy's socket directory (`<state>.md`).
        let (Some(dir), Some(name)) = (
            self.state.parent(),
            self.state.file_name().and_then(|n| n.to_str()),
        ) else {
            return;
        };
        let prefix = format!("{name}.");
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_name()
                .to_str()
                .is_some_and(|f| f.starts_with(&prefix))
            {
                let _ = match e.file_type() {
                    Ok(t) if t.is_dir() => std::fs::remove_dir_all(e.path()),
                    _ => std::fs::remove_file(e.path()),
                };
            }
        }
    }
}

pub fn attach(host: &TestNs, vm: &TestNs, port: &str, bridge: &str, addr: &str, gw: Option<&str>) {
    host.ok(&[
        "ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", &vm.name,
    ]);
    host.ok(&["ip", "link", "set", port, "master", bridge, "up"]);
    vm.ok(&["ip", "addr", "add", addr, "dev", "eth0"]);
    vm.ok(&["ip", "link", "set", "eth0", "up"]);
    if let Some(gw) = gw {
        vm.ok(&["ip", "route", "add", "default", "via", gw]);
    }
}

pub fn topology(routers: Vec<String>) -> Topology {
    let t = Topology {
        routers,
        host: TestNs::new("host"),
        ext: TestNs::new("ext"),
        vm1: TestNs::new("vm1"),
        vm2: TestNs::new("vm2"),
        state: std::env::temp_dir().join(format!(
            "l3agent-e2e-{}-{}",
            std::process::id(),
            l3agent_testkit::unique()
        )),
        alternatives: None,
    };
    for br in ["br-ex", "br-t1", "br-t2"] {
        t.host.ok(&["ip", "link", "add", br, "type", "bridge"]);
        t.host.ok(&["ip", "link", "set", br, "up"]);
    }
    attach(&t.host, &t.ext, "p-ext", "br-ex", "203.0.113.1/24", None);
    attach(
        &t.host,
        &t.vm1,
        "p-vm1",
        "br-t1",
        "192.0.2.10/24",
        Some("192.0.2.4"),
    );
    attach(
        &t.host,
        &t.vm2,
        "p-vm2",
        "br-t2",
        "198.51.100.10/24",
        Some("198.51.100.4"),
    );
    t
}

impl Topology {
    /// The l3agent routers' iptables backend is the host's (`iptables -V`); there is no option to
    /// choose it. To run a router test with a given backend, l3agent is started in a mount
    /// namespace of its own where a copy of `/etc/alternatives` with `iptables`, `iptables-save`,
    /// `iptables-restore` (and the ip6tables ones) pointing at `backend` is mounted over the real
    /// directory. The mount containing `/etc/alternatives` is made private in that mount namespace
    /// first, so the override never reaches the machine; `/run/netns` keeps its shared propagation,
    /// so the namespaces l3agent creates or deletes are seen outside as usual.
    pub fn force_iptables_backend(&mut self, backend: &'static str) {
        let dir = self.state.with_extension("alternatives");
        std::fs::create_dir_all(&dir).unwrap();
        for e in std::fs::read_dir("/etc/alternatives").unwrap() {
            let e = e.unwrap();
            if let Ok(target) = std::fs::read_link(e.path()) {
                std::os::unix::fs::symlink(target, dir.join(e.file_name())).unwrap();
            }
        }
        for prog in ["iptables", "ip6tables"] {
            for tool in ["", "-save", "-restore"] {
                let link = dir.join(format!("{prog}{tool}"));
                let _ = std::fs::remove_file(&link);
                std::os::unix::fs::symlink(format!("/usr/sbin/{prog}-{backend}{tool}"), link)
                    .unwrap();
            }
        }
        self.alternatives = Some((dir, backend));
        // What l3agent will see: `iptables -V` of the program it finds first.
        let (code, out) = self.in_host_raw(&["/usr/sbin/iptables", "-V"]);
        let seen = if out.contains("nf_tables") {
            "nft"
        } else {
            "legacy"
        };
        assert!(
            code == Some(0) && seen == backend,
            "could not make iptables -V report the {backend} backend for l3agent (got {out:?}); \
             /usr/sbin/iptables must be a link through /etc/alternatives"
        );
    }

    /// Runs `argv` in the host namespace, under the forced backend if any: (exit code, stdout).
    fn in_host_raw(&self, argv: &[&str]) -> (Option<i32>, String) {
        let o = self.host_command(argv).output().unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    }

    /// `argv` in the host namespace (under the forced backend, if any), killed after 120 s.
    pub fn host_command(&self, argv: &[&str]) -> Command {
        let netns = format!("--net=/run/netns/{}", self.host.name);
        let mut c = Command::new("timeout");
        c.args(["--kill-after=5", "120"]);
        match &self.alternatives {
            None => {
                c.arg("nsenter").arg(netns).args(argv);
            }
            Some((dir, _)) => {
                let script = r#"alt=$1; net=$2; shift 2
mount --make-private "$(stat -c %m /etc/alternatives)"
mount --bind "$alt" /etc/alternatives
exec nsenter "$net" "$@""#;
                c.args(["unshare", "--mount", "--propagation", "unchanged"])
                    .args(["sh", "-ec", script, "l3agent-backend"])
                    .arg(dir)
                    .arg(netns)
                    .args(argv);
            }
        }
        c
    }
}

/// Writes a host config with one router next to the topology's state directory.
fn write_config(t: &Topology, mode: &str, bridges: Value, router: &Value) -> PathBuf {
    let cfg = json!({
        "agent": {"mode": mode, "host": "host-a", "state_path": t.state, "bridges": bridges},
        "routers": [router],
    });
    let path = t
        .state
        .with_extension(format!("{}.json", l3agent_testkit::unique()));
    std::fs::write(&path, cfg.to_string()).unwrap();
    path
}

pub fn config(t: &Topology, router: &Value) -> PathBuf {
    let bridges = json!({NET_T1: "br-t1", NET_T2: "br-t2", NET_EX: "br-ex"});
    write_config(t, "legacy", bridges, router)
}

pub fn dvr_config(t: &Topology, router: &Value, mode: &str) -> PathBuf {
    let bridges = json!({DVR_T1: "br-t1", DVR_T2: "br-t2", DVR_EX: "br-ex"});
    write_config(t, mode, bridges, router)
}

/// Runs `l3agent ARGS --json` inside the topology's host namespace: (exit code, stdout as
/// JSON or `Null`, stderr).
pub fn l3agent(t: &Topology, args: &[&str]) -> (Option<i32>, Value, String) {
    let mut argv = vec![env!("CARGO_BIN_EXE_l3agent")];
    argv.extend_from_slice(args);
    argv.push("--json");
    let o = t.host_command(&argv).output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    let v = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (
        o.status.code(),
        v,
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

/// Reads something inside a namespace (`ip netns exec`: for looking only — a namespace created
/// under it would be invisible outside).
pub fn in_ns(ns: &str, args: &[&str]) -> String {
    let mut argv = vec!["ip", "netns", "exec", ns];
    argv.extend_from_slice(args);
    ok(&argv)
}

/// Whether a plan (`--json`) lists a change of `kind` whose fields mention `what`.
pub fn has_change(plan: &Value, kind: &str, what: &str) -> bool {
    plan["routers"].as_array().is_some_and(|rs| {
        rs.iter().any(|r| {
            r["changes"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["change"] == kind && c.to_string().contains(what))
            })
        })
    })
}

/// One HTTP GET inside the host namespace (where the agent's loopback listener is), read to
/// the end (bounded: 10 s per read).
pub fn http_get(t: &Topology, addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let (addr, path) = (addr.to_owned(), path.to_owned());
    t.host.inside(move || {
        let mut s = std::net::TcpStream::connect(&addr).expect("connect to the metrics listener");
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
}
