//! HA routers end to end: two network nodes on one machine, each its own `l3agent agent`
//! with its own state directory and its own `/run/netns` (a private mount namespace per
//! node, so that both can have `qrouter-<id>`, as two machines would), joined by an HA
//! bridge, an external and a tenant bridge in a "switch" namespace. keepalived elects a
//! master; a flow from the outside to a VM through the router's floating IP keeps working
//! when the master node dies (its l3agent and keepalived killed, its links cut); the
//! failover time is measured and printed; restarting the backup's or the master's agent does
//! not disturb the master.
#![allow(clippy::disallowed_methods)] // the test runs the binary under test, ping and nsenter

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{example, kill_daemons, NET_EX, NET_T1, NET_T2};
use l3agent_testkit::TestNs;
use serde_json::json;

const HA_NET: &str = "5b0c2e4a-8d1f-4e3b-9a6c-7d2e1f0a3b4c";
const ROUTER_NS: &str = "qrouter-87c7c2ae-d0ba-4691-820c-8053abf50b8d";
const HA_VIP: &str = "169.254.0.7/24";

/// One network node: its namespace (bridges, uplinks to the switch), state directory, and
/// its agent, started in a mount namespace of its own with a private `/run/netns`.
struct Node {
    name: &'static str,
    ns: TestNs,
    state: PathBuf,
    agent: Option<Child>,
    log: PathBuf,
    /// Holds the node's mount namespace (its own `/run/netns`) across agent restarts, as a
    /// machine's `/run/netns` outlives its agent.
    mounts: Child,
}

impl Node {
    fn new(name: &'static str, sw: &TestNs) -> Node {
        let ns = TestNs::new(name);
        for br in ["br-ex", "br-t1", "br-ha"] {
            ns.ok(&["ip", "link", "add", br, "type", "bridge"]);
            ns.ok(&["ip", "link", "set", br, "up"]);
            // The uplink: a veth from this node's bridge to the switch's.
            let up = format!("{name}-{}", &br[3..]);
            sw.ok(&[
                "ip", "link", "add", &up, "type", "veth", "peer", "name", "uplink", "netns",
                &ns.name,
            ]);
            sw.ok(&["ip", "link", "set", &up, "master", br, "up"]);
            ns.ok(&[
                "ip",
                "link",
                "set",
                "uplink",
                "name",
                &format!("up-{}", &br[3..]),
            ]);
            ns.ok(&[
                "ip",
                "link",
                "set",
                &format!("up-{}", &br[3..]),
                "master",
                br,
                "up",
            ]);
        }
        let state = std::env::temp_dir().join(format!(
            "l3agent-ha-{}-{}-{name}",
            std::process::id(),
            l3agent_testkit::unique()
        ));
        let log = state.with_extension("log");
        let script = r#"mount -t tmpfs -o mode=0755 l3agent-test /run/netns
mount --make-shared /run/netns
exec sleep 3600"#;
        let mounts = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-ec", script])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let info = format!("/proc/{}/mountinfo", mounts.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&info)
            .unwrap_or_default()
            .contains(" /run/netns ")
        {
            assert!(
                Instant::now() < deadline,
                "{name}'s /run/netns was not mounted"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Node {
            name,
            ns,
            state,
            agent: None,
            log,
            mounts,
        }
    }

    /// This node's config: the router with this node's HA port.
    fn config(&self, index: u8) -> PathBuf {
        let mut r = example();
        r["ha"] = json!(true);
        r["ha_vr_id"] = json!(7);
        r["_ha_interface"] = json!({
            "id": format!("{index}111aaaa-bbbb-4ccc-8ddd-eeeeffff0000"), "network_id": HA_NET,
            "mac_address": format!("fa:16:3e:00:00:0{index}"),
            "fixed_ips": [{"ip_address": format!("169.254.192.{index}"), "prefixlen": 18,
                           "subnet_id": "2222aaaa-bbbb-4ccc-8ddd-eeeeffff0000"}],
            "subnets": [{"id": "2222aaaa-bbbb-4ccc-8ddd-eeeeffff0000",
                         "cidr": "169.254.192.0/18", "gateway_ip": null}]});
        let cfg = json!({
            "agent": {"mode": "legacy", "host": self.name, "state_path": self.state,
                      "bridges": {NET_T1: "br-t1", NET_T2: "br-t1", NET_EX: "br-ex",
                                  HA_NET: "br-ha"},
                      "ha": {"vrrp_advert_int": 1, "vrrp_auth_password": "t3st"}},
            "routers": [r],
        });
        let path = self.state.with_extension("json");
        std::fs::write(&path, cfg.to_string()).unwrap();
        path
    }

    /// Starts `l3agent agent` in this node's network namespace and its mount namespace,
    /// whose `/run/netns` is the node's own (shared) tmpfs: its router namespaces are its own.
    /// (nsenter opens both namespace paths before entering either.)
    fn start(&mut self, config: &Path) {
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns.name))
            .arg(format!("--mount=/proc/{}/ns/mnt", self.mounts.id()))
            .arg(env!("CARGO_BIN_EXE_l3agent"))
            .args(["-v", "agent", "--config"])
            .arg(config)
            .args(["--resync-interval", "30", "--metrics-listen", "none"])
            .args(["--control-socket", "none"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.log)
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        self.agent = Some(child);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `argv` in this node's router namespace (through its agent's mount namespace).
    fn in_router(&self, argv: &[&str]) -> Option<String> {
        let pid = self.mounts.id();
        // The mount namespace first: the router namespace's name exists only there.
        let o = Command::new("nsenter")
            .arg(format!("--mount=/proc/{pid}/ns/mnt"))
            .arg("nsenter")
            .arg(format!("--net=/run/netns/{ROUTER_NS}"))
            .args(argv)
            .output()
            .ok()?;
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// keepalived made this node the master: the primary VIP is on its `ha-` device.
    fn is_master(&self) -> bool {
        self.in_router(&["ip", "-4", "-o", "addr", "show"])
            .is_some_and(|a| a.contains(HA_VIP))
    }

    /// The node dies: its agent and its daemons are killed (no goodbye), its links cut.
    fn die(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        kill_daemons(&self.state);
        for up in ["up-ex", "up-t1", "up-ha"] {
            self.ns.ok(&["ip", "link", "set", up, "down"]);
        }
    }

    /// SIGTERM, then waits (bounded) for the agent to exit.
    fn stop_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .output();
            let deadline = Instant::now() + Duration::from_secs(20);
            while c.try_wait().unwrap().is_none() {
                assert!(Instant::now() < deadline, "{} did not stop", self.name);
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        kill_daemons(&self.state);
        let _ = self.mounts.kill();
        let _ = self.mounts.wait();
        let _ = std::fs::remove_dir_all(&self.state);
        let _ = std::fs::remove_file(self.state.with_extension("json"));
        // A failure shows the log in its message (`wait_for`).
        let _ = std::fs::remove_file(&self.log);
    }
}

fn wait_for(secs: u64, what: &str, nodes: &[&Node], mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {secs} s\n{}",
            nodes
                .iter()
                .map(|n| format!("--- {} ---\n{}", n.name, n.log()))
                .collect::<String>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `ping` from `from` to `dst` every 0.1 s for at most `secs` s, in the background.
fn pinger(from: &TestNs, dst: &str, secs: u64) -> Child {
    Command::new("ip")
        .args([
            "netns", "exec", &from.name, "ping", "-n", "-i", "0.1", "-W", "1",
        ])
        .args(["-w", &secs.to_string(), dst])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The sequence numbers `ping` got replies for.
fn replies(out: &str) -> Vec<u64> {
    out.lines()
        .filter_map(|l| {
            l.split("icmp_seq=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[test]
fn an_ha_router_fails_over_to_the_backup_node_and_agent_restarts_do_not_disturb_the_master() {
    let sw = TestNs::new("sw");
    for br in ["br-ex", "br-t1", "br-ha"] {
        sw.ok(&["ip", "link", "add", br, "type", "bridge"]);
        sw.ok(&["ip", "link", "set", br, "up"]);
    }
    let ext = TestNs::new("ext");
    let vm = TestNs::new("vm");
    common::attach(&sw, &ext, "p-ext", "br-ex", "203.0.113.1/24", None);
    common::attach(
        &sw,
        &vm,
        "p-vm",
        "br-t1",
        "192.0.2.10/24",
        Some("192.0.2.4"),
    );
    let mut n1 = Node::new("node1", &sw);
    let mut n2 = Node::new("node2", &sw);
    let c1 = n1.config(1);
    let c2 = n2.config(2);

    // node1 first: alone, it becomes the master; node2 joins as the backup.
    n1.start(&c1);
    wait_for(60, "node1 becomes the master", &[&n1], || n1.is_master());
    n2.start(&c2);
    wait_for(30, "node2 builds its router", &[&n2], || {
        n2.in_router(&["ip", "-o", "link"])
            .is_some_and(|l| l.contains("ha-2111aaaa-bb"))
    });
    std::thread::sleep(Duration::from_secs(4));
    assert!(n1.is_master() && !n2.is_master(), "one master, node1");
    // The backup holds none of the router's addresses and runs no master-only daemon.
    let b = n2.in_router(&["ip", "-4", "-o", "addr", "show"]).unwrap();
    assert!(
        !b.contains("203.0.113.4") && !b.contains("192.0.2.4"),
        "{b}"
    );

    // Traffic from the outside to the VM through the floating IP.
    let warm = pinger(&ext, "203.0.113.2", 3).wait_with_output().unwrap();
    let got = replies(&String::from_utf8_lossy(&warm.stdout));
    assert!(
        !got.is_empty(),
        "no traffic through the master\n{}",
        n1.log()
    );

    // Restarting the backup's agent does not flap the master (no dual master either).
    let ping = pinger(&ext, "203.0.113.2", 8);
    n2.stop_agent();
    n2.start(&c2);
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        n1.is_master(),
        "the master changed when the backup's agent restarted"
    );
    assert!(
        !n2.is_master(),
        "dual master after the backup's agent restarted"
    );
    let out = ping.wait_with_output().unwrap();
    let got = replies(&String::from_utf8_lossy(&out.stdout));
    assert!(
        got.len() >= 70,
        "traffic lost during the backup restart: {} of ~80",
        got.len()
    );

    // Restarting the master's agent: keepalived and the router are adopted as they are
    // (no restart of keepalived, no flap, no traffic lost).
    let keepalived_pid = |n: &Node| {
        std::fs::read_to_string(
            n.state
                .join("daemons")
                .join(format!("{}.keepalived.pid", common::LEGACY_ID)),
        )
        .unwrap_or_default()
    };
    let before = keepalived_pid(&n1);
    let ping = pinger(&ext, "203.0.113.2", 8);
    n1.stop_agent();
    n1.start(&c1);
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        n1.is_master() && !n2.is_master(),
        "the master's agent restart flapped"
    );
    assert_eq!(keepalived_pid(&n1), before, "keepalived was restarted");
    let out = ping.wait_with_output().unwrap();
    let got = replies(&String::from_utf8_lossy(&out.stdout));
    assert!(
        got.len() >= 70,
        "traffic lost during the master's agent restart: {}",
        got.len()
    );

    // The master node dies: node2 takes over and the flow goes on.
    let ping = pinger(&ext, "203.0.113.2", 25);
    std::thread::sleep(Duration::from_secs(2));
    let killed = Instant::now();
    n1.die();
    wait_for(30, "node2 becomes the master", &[&n2], || n2.is_master());
    let took = killed.elapsed();
    let out = ping.wait_with_output().unwrap();
    let got = replies(&String::from_utf8_lossy(&out.stdout));
    let gap = got.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    let last = got.last().copied().unwrap_or(0);
    println!(
        "HA failover: VRRP master on node2 {:.1} s after node1 died; longest traffic gap {:.1} s \
         ({} of ~250 replies)",
        took.as_secs_f64(),
        gap as f64 / 10.0,
        got.len()
    );
    assert!(
        last >= 200,
        "the flow did not resume after the failover: {got:?}"
    );
    // Now node2 holds the router: its addresses and the FIP.
    let a = n2.in_router(&["ip", "-4", "-o", "addr", "show"]).unwrap();
    assert!(
        a.contains("203.0.113.2/32") && a.contains("192.0.2.4/24"),
        "{a}"
    );
}
