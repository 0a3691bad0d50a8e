//! `l3agent agent` on the real kernel, in the throwaway topology of the router tests: one
//! daemon's life, step by step, each step checked in the kernel (`ip`, `iptables-save` in the
//! router namespace) and through the control socket:
//! 1. start-up converges the router; `status` through the control socket shows it;
//! 2. a config edit (an atomic rename that adds a floating IP) reaches the kernel;
//! 3. an invalid edit is refused: the router stays as it is and the agent keeps running;
//! 4. SIGHUP reloads a change the file watch cannot see;
//! 5. drift (an address deleted by hand) is repaired within a refresh, and counted;
//! 6. `/metrics` and `/readyz` answer inside the host namespace;
//! 7. SIGTERM: exit 0 within 10 s, the router namespace still there.
//!
//! The config path is a symbolic link in a watched directory: replacing the link is a file
//! event, editing its target in the other directory is not (only SIGHUP sees that).
#![allow(clippy::disallowed_methods)] // the test runs the binary under test

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use l3agent_agent::control::client;
use l3agent_agent::Request;
use l3agent_testkit::ok;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

/// This test's own router id (other test files use the example's id at the same time).
const ID: &str = "a9e7c0de-5e1f-4a6e-9d3c-00000000a9e7";
const QG: &str = "qg-184a6791-c4";

fn router_ns() -> String {
    format!("qrouter-{ID}")
}

/// The router of the restart test.
const RESTART_ID: &str = "a9e7c0de-5e1f-4a6e-9d3c-00000000b001";

/// The running daemon; killed (SIGKILL, by pid) if the test ends while it runs.
struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.as_ref().expect("running").id()).unwrap())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).unwrap();
    }

    /// Still running?
    fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Waits (bounded) for the exit; its status code.
    fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(st) = self.child.as_mut()?.try_wait().unwrap() {
                self.child = None;
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the agent did not exit within {within:?}\n{}", self.log());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `l3agent -v agent` in the topology's host namespace, refreshing every 2 s, its log in `log`.
fn start_agent(t: &Topology, config: &Path, socket: &Path, log: &Path) -> Daemon {
    let child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", t.host.name))
        .arg(env!("CARGO_BIN_EXE_l3agent"))
        .args(["-v", "agent", "--config"])
        .arg(config)
        .args(["--resync-interval", "2", "--metrics-listen", "127.0.0.1:0"])
        .arg("--control-socket")
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    Daemon {
        child: Some(child),
        log: log.to_path_buf(),
    }
}

/// Polls `check` every 200 ms until it holds or `within` passes (then panics with `what`
/// and the daemon's log).
fn wait_for(d: &mut Daemon, what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return;
        }
        assert!(
            d.alive(),
            "the agent exited while waiting for {what}\n{}",
            d.log()
        );
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
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

fn router_view(v: &Value, id: &str) -> Option<Value> {
    v["routers"]
        .as_array()?
        .iter()
        .find(|r| r["id"] == id)
        .cloned()
}

fn router_state(v: &Value) -> Option<String> {
    router_view(v, ID).and_then(|r| r["state"].as_str().map(str::to_owned))
}

fn qg_addresses() -> String {
    in_ns(&router_ns(), &["ip", "-4", "addr", "show", "dev", QG])
}

/// The nat table, without iptables-save's timestamp comments.
fn nat_rules() -> String {
    in_ns(&router_ns(), &["iptables-save", "-t", "nat"])
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn routes() -> String {
    in_ns(&router_ns(), &["ip", "-4", "route", "show", "table", "all"])
}

/// Writes `text` to `target` and points the link `link` at it with an atomic rename.
fn replace_link(link: &Path, target: &Path, text: &str) {
    std::fs::write(target, text).unwrap();
    let tmp = link.with_extension("tmp-link");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
}

fn host_config(t: &Topology, router: &Value) -> String {
    json!({
        "agent": {"mode": "legacy", "host": "host-a", "state_path": t.state,
                  "bridges": {NET_T1: "br-t1", NET_T2: "br-t2", NET_EX: "br-ex"}},
        "routers": [router],
    })
    .to_string()
}

#[test]
fn the_agent_converges_follows_edits_and_sighup_refuses_bad_configs_repairs_drift_and_stops_cleanly(
) {
    let t = topology(vec![router_ns()]);
    let dir = t.state.with_extension("agent");
    let _ = std::fs::remove_dir_all(&dir);
    let (watched, targets) = (dir.join("etc"), dir.join("targets"));
    std::fs::create_dir_all(&watched).unwrap();
    std::fs::create_dir_all(&targets).unwrap();
    // Not created: the agent makes it, 0700.
    let socket = dir.join("run").join("control.sock");
    let config = watched.join("host.json");

    let mut r = example();
    r["id"] = json!(ID);
    replace_link(&config, &targets.join("v1.json"), &host_config(&t, &r));

    let mut d = start_agent(&t, &config, &socket, &dir.join("agent.log"));

    // 1. Start-up converges; the control socket shows the router.
    wait_for(
        &mut d,
        "initial convergence",
        Duration::from_secs(90),
        || {
            status(&socket).is_some_and(|v| {
                v["ready"] == true && router_state(&v).as_deref() == Some("converged")
            })
        },
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(socket.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "control socket directory mode");
    assert!(
        qg_addresses().contains("203.0.113.4/24"),
        "{}",
        qg_addresses()
    );
    assert!(
        qg_addresses().contains("203.0.113.2/32"),
        "{}",
        qg_addresses()
    );
    let v = status(&socket).unwrap();
    assert_eq!(v["pid"], json!(d.pid().as_raw()), "{v:#}");
    assert_eq!(v["config"]["ok"], true, "{v:#}");

    // `l3agent status` asks the agent.
    let out = Command::new(env!("CARGO_BIN_EXE_l3agent"))
        .args(["status", "--json", "--control-socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(router_state(&cli).as_deref(), Some("converged"), "{cli:#}");

    // 2. An atomic rename of a config with one more floating IP reaches the kernel.
    r["_floatingips"].as_array_mut().unwrap().push(json!({
        "id": "3f0c1a52-0000-4000-8000-0000000000f2",
        "floating_ip_address": "203.0.113.9",
        "fixed_ip_address": "192.0.2.11",
        "port_id": "3f0c1a52-0000-4000-8000-0000000000f3",
        "status": "DOWN"
    }));
    replace_link(&config, &targets.join("v2.json"), &host_config(&t, &r));
    wait_for(
        &mut d,
        "the new floating IP",
        Duration::from_secs(30),
        || qg_addresses().contains("203.0.113.9/32") && nat_rules().contains("203.0.113.9"),
    );
    assert!(
        nat_rules().lines().any(|l| l.contains("-d 203.0.113.9/32")
            && l.contains("DNAT")
            && l.contains("192.0.2.11")),
        "{}",
        nat_rules()
    );

    // 3. An invalid edit: logged and counted, nothing changes, the agent runs on.
    let before = (qg_addresses(), nat_rules());
    let bad = targets.join("v3.json");
    replace_link(
        &config,
        &bad,
        &host_config(&t, &json!({"id": "not a router id!"})),
    );
    wait_for(
        &mut d,
        "the invalid config noticed",
        Duration::from_secs(30),
        || status(&socket).is_some_and(|v| v["config"]["ok"] == false),
    );
    let v = status(&socket).unwrap();
    assert_eq!(v["config"]["invalid_loads"], 1, "{v:#}");
    assert!(
        v["config"]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("routers"),
        "the problem is named by path: {v:#}"
    );
    assert_eq!(v["config"]["routers"], 1, "{v:#}");
    // Two refreshes later the router is still exactly as it was.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(before, (qg_addresses(), nat_rules()));
    assert!(d.alive(), "{}", d.log());
    // The refreshes of a converged router found nothing to repair.
    assert_eq!(status(&socket).unwrap()["drift_repairs"], 0, "{}", d.log());
    assert_eq!(
        router_state(&status(&socket).unwrap()).as_deref(),
        Some("converged")
    );

    // 4. SIGHUP: the link's target is fixed in place (in a directory nobody watches), with
    //    an extra route; a refresh does not re-read the file, SIGHUP does.
    r["routes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "100.64.9.0/24", "nexthop": "203.0.113.1"}));
    std::fs::write(&bad, host_config(&t, &r)).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(!routes().contains("100.64.9.0/24"), "{}", routes());
    d.signal(Signal::SIGHUP);
    wait_for(
        &mut d,
        "the route after SIGHUP",
        Duration::from_secs(30),
        || routes().contains("100.64.9.0/24"),
    );
    wait_for(
        &mut d,
        "the config load ok again",
        Duration::from_secs(10),
        || status(&socket).is_some_and(|v| v["config"]["ok"] == true),
    );

    // 5. Drift: a floating IP address deleted by hand comes back within a refresh.
    ok(&[
        "ip",
        "netns",
        "exec",
        &router_ns(),
        "ip",
        "addr",
        "del",
        "203.0.113.9/32",
        "dev",
        QG,
    ]);
    wait_for(
        &mut d,
        "the drift repaired",
        Duration::from_secs(30),
        || qg_addresses().contains("203.0.113.9/32"),
    );
    wait_for(
        &mut d,
        "the repair counted",
        Duration::from_secs(10),
        || status(&socket).is_some_and(|v| v["drift_repairs"].as_u64() >= Some(1)),
    );

    let ns_name = router_ns();
    // 5b. iptables drift: a floating IP's DNAT rule deleted by another program is seen
    //     (the namespace's nf_tables generation moved) and restored within a refresh.
    let dnat =
        "-A neutron-l3-agent-PREROUTING -d 203.0.113.9/32 -j DNAT --to-destination 192.0.2.11";
    assert!(nat_rules().contains(dnat), "{}", nat_rules());
    let mut delete = vec![
        "ip", "netns", "exec", &ns_name, "iptables", "-t", "nat", "-D",
    ];
    delete.extend(dnat.split(' ').skip(1));
    ok(&delete);
    assert!(!nat_rules().contains(dnat));
    wait_for(
        &mut d,
        "the deleted rule restored",
        Duration::from_secs(30),
        || nat_rules().contains(dnat),
    );

    // 6. Metrics and readiness, inside the host namespace.
    let addr = status(&socket).unwrap()["metrics_listen"]
        .as_str()
        .expect("metrics address")
        .to_owned();
    let ready = http_get(&t, &addr, "/readyz");
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    let metrics = http_get(&t, &addr, "/metrics");
    for line in [
        "l3agent_drift_repairs_total{kind=\"address\"}",
        "l3agent_drift_repairs_total{kind=\"iptables\"}",
        "l3agent_config_loads_total{result=\"invalid\"} 1",
        "l3agent_routers{state=\"converged\"} 1",
        "l3agent_floating_ips{state=\"active\"} 2",
        "l3agent_queue_depth ",
        "l3agent_reconcile_duration_seconds_count ",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }

    let value = |metrics: &str, name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
    };
    for name in [
        "l3agent_iptables_restore_total",
        "l3agent_iptables_restore_lines_total",
        "l3agent_iptables_save_total",
        "l3agent_iptables_rules",
        "l3agent_iptables_chains",
        "l3agent_process_spawns_total",
    ] {
        assert!(value(&metrics, name) > 0, "{name} is 0:\n{metrics}");
    }
    // Refreshes of converged routers start no process: on nf_tables the generation id
    // proves the rules unchanged (this host's iptables is the nft one).
    let spawned = value(&metrics, "l3agent_process_spawns_total");
    std::thread::sleep(Duration::from_secs(5));
    let later = http_get(&t, &addr, "/metrics");
    assert_eq!(
        value(&later, "l3agent_process_spawns_total"),
        spawned,
        "processes started by refreshes with nothing to repair\n{}",
        d.log()
    );

    // 7. SIGTERM: exit 0 within 10 s; the router stays.
    d.signal(Signal::SIGTERM);
    let code = d.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{}", d.log());
    assert!(
        Path::new("/run/netns").join(router_ns()).exists(),
        "the router namespace went with the agent"
    );
    assert!(qg_addresses().contains("203.0.113.9/32"));
    assert!(!socket.exists(), "the control socket was left behind");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_invalid_config_at_start_exits_2_and_touches_nothing() {
    let dir = std::env::temp_dir().join(format!(
        "l3agent-agent-bad-{}-{}",
        std::process::id(),
        l3agent_testkit::unique()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("host.json");
    std::fs::write(&config, r#"{"routers": [{"id": "x y"}]}"#).unwrap();
    let out = Command::new("timeout")
        .args(["--kill-after=5", "30"])
        .arg(env!("CARGO_BIN_EXE_l3agent"))
        .args([
            "agent",
            "--metrics-listen",
            "none",
            "--control-socket",
            "none",
            "--config",
        ])
        .arg(&config)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("host.json"),
        "{out:?}"
    );
}

/// Start-up adopts what is there: the router a stopped agent left is not disturbed by the
/// next one. A ping through the router's floating IP NAT runs across SIGTERM and restart
/// without losing a packet; the gateway device keeps its ifindex, the floating IP's SNAT
/// rule its packet counter (nothing was deleted and re-created), and the new agent reports
/// the router converged with no change made.
#[test]
fn a_restarted_agent_adopts_its_router_without_interrupting_traffic() {
    let ns = format!("qrouter-{RESTART_ID}");
    let t = topology(vec![ns.clone()]);
    let dir = t.state.with_extension("agent");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("run").join("control.sock");
    let config = dir.join("host.json");
    let mut r = example();
    r["id"] = json!(RESTART_ID);
    std::fs::write(&config, host_config(&t, &r)).unwrap();
    let converged = |v: &Value| {
        v["ready"] == true && router_view(v, RESTART_ID).is_some_and(|r| r["state"] == "converged")
    };

    let mut d = start_agent(&t, &config, &socket, &dir.join("agent-1.log"));
    wait_for(
        &mut d,
        "initial convergence",
        Duration::from_secs(90),
        || status(&socket).is_some_and(|v| converged(&v)),
    );
    let ifindex = || -> Value {
        let links: Value =
            serde_json::from_str(&in_ns(&ns, &["ip", "-j", "link", "show", "dev", QG])).unwrap();
        links[0]["ifindex"].clone()
    };
    // [packets:bytes] of the SNAT rule of the floating IP of 192.0.2.10.
    let snat_packets = || -> u64 {
        let save = in_ns(&ns, &["iptables-save", "-c", "-t", "nat"]);
        let line = save
            .lines()
            .find(|l| l.contains("-s 192.0.2.10/32") && l.contains("SNAT"))
            .unwrap_or_else(|| panic!("no floating IP SNAT rule in\n{save}"))
            .to_owned();
        let counters = line.trim_start_matches('[').split(']').next().unwrap();
        counters.split(':').next().unwrap().parse().unwrap()
    };
    let index_before = ifindex();

    // 75 pings, 200 ms apart (15 s), from the VM to the outside through its floating IP.
    let ping = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", t.vm1.name))
        .args(["ping", "-n", "-i", "0.2", "-c", "75", "-W", "1", "-w", "40"])
        .arg("203.0.113.1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let counted = snat_packets();
    assert!(counted >= 1, "the ping went through the SNAT rule");

    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(0), "{}", d.log());
    let mut d = start_agent(&t, &config, &socket, &dir.join("agent-2.log"));
    wait_for(
        &mut d,
        "adoption after restart",
        Duration::from_secs(60),
        || status(&socket).is_some_and(|v| converged(&v)),
    );
    let view = router_view(&status(&socket).unwrap(), RESTART_ID).unwrap();
    assert_eq!(
        view["last_change"],
        Value::Null,
        "the restart changed the router: {view:#}\n{}",
        d.log()
    );

    let out = ping.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("75 packets transmitted, 75 received"),
        "packets lost across the restart:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ifindex(), index_before, "the gateway device was re-created");
    assert!(
        snat_packets() >= counted,
        "the SNAT rule was re-created (its counter went back to zero)"
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(0), "{}", d.log());
    let _ = std::fs::remove_dir_all(&dir);
}
