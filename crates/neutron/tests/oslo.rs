//! Wire compatibility with the real oslo.messaging, in both directions: this crate calls a
//! Python oslo.messaging RPC server (Neutron's own stack: the venv of
//! scripts/testbed/venv.sh, neutron 29.0.0), and a Python oslo.messaging client calls and
//! casts to this crate's agent server, through the same RabbitMQ.
#![allow(clippy::disallowed_methods)] // the test runs the Python peer and venv.sh

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::Broker;
use l3agent_neutron::l3::{
    AgentRpcServer, AgentStatus, FipStatus, HaState, Notification, PluginApi, L3_PLUGIN_TOPIC,
};
use l3agent_neutron::wire::DISPATCHER_MODULE;
use l3agent_neutron::{AgentState, NeutronError};
use l3agent_types::{FloatingIpId, NetworkId, RouterId};
use serde_json::{json, Map, Value};

const R1: &str = "87c7c2ae-d0ba-4691-820c-8053abf50b8d";
const R2: &str = "11111111-2222-4333-8444-555555555555";
const NET: &str = "22222222-3333-4444-8555-666666666666";
const URL: &str = "rabbit://guest:guest@127.0.0.1:5672/";

/// The venv with Neutron's Python stack (built the first time).
fn venv() -> PathBuf {
    l3agent_testkit::service::neutron_venv()
}

/// The Python peer, running in the broker's namespace; killed on drop.
struct Peer {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Peer {
    fn start(broker: &Broker, venv: &Path, mode: &str) -> Peer {
        Self::start_with(broker, venv, mode, URL)
    }

    fn start_with(broker: &Broker, venv: &Path, mode: &str, url: &str) -> Peer {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oslo_peer.py");
        let python = venv.join("bin/python");
        let log = broker.dir.join(format!("oslo-peer-{mode}.log"));
        let stderr = std::fs::File::create(&log).unwrap();
        let mode = mode.to_owned();
        let url = url.to_owned();
        let mut child = broker.ns.inside(move || {
            Command::new(&python)
                .arg("-W")
                .arg("ignore")
                .arg(&script)
                .arg(&mode)
                .arg(&url)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(stderr)
                .spawn()
                .unwrap_or_else(|e| panic!("{}: {e}", python.display()))
        });
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Peer { child, lines }
    }

    /// The next JSON line (within `timeout`), or a panic with the peer's log.
    fn next(&self, broker: &Broker, timeout: Duration) -> Value {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => {
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("peer printed {line:?}: {e}"))
            }
            Err(e) => {
                let logs: String = std::fs::read_dir(&broker.dir)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(|f| f.file_name().to_string_lossy().starts_with("oslo-peer"))
                    .map(|f| std::fs::read_to_string(f.path()).unwrap_or_default())
                    .collect();
                panic!("no line from the oslo peer ({e:?}); its stderr:\n{logs}")
            }
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.child.stdin.take() {
            let _ = stdin.write_all(b"");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rid(s: &str) -> RouterId {
    RouterId::new("t", s).unwrap()
}

#[test]
fn this_crate_and_the_real_oslo_messaging_understand_each_other_both_ways() {
    let venv = venv();
    let broker = Broker::start("noslo");
    let agent = broker.connected();
    let (agent_rpc, notes) = AgentRpcServer::start(&agent, "node1").unwrap();
    assert!(agent_rpc.wait_consuming(Duration::from_secs(10)));

    // --- this crate → oslo.messaging's RPC server (Neutron's endpoints, faked in Python).
    let server = Peer::start(&broker, &venv, "server");
    assert_eq!(
        server.next(&broker, Duration::from_secs(60))["event"],
        "READY"
    );
    let api = PluginApi::new(agent.clone(), "node1", Duration::from_secs(15));

    assert_eq!(api.get_router_ids().unwrap(), vec![rid(R1), rid(R2)]);
    assert_eq!(
        api.sync_routers(Some(&[rid(R2)])).unwrap(),
        vec![json!({"id": R2, "host": "node1", "admin_state_up": true})]
    );
    let mut fips = BTreeMap::new();
    fips.insert(FloatingIpId::new("t", R1).unwrap(), FipStatus::Down);
    api.update_floatingip_statuses(&rid(R2), &fips).unwrap();
    assert_eq!(
        server.next(&broker, Duration::from_secs(10)),
        json!({"event": "update_floatingip_statuses", "router_id": R2, "fip_statuses": {R1: "DOWN"}})
    );
    let mut states = BTreeMap::new();
    states.insert(rid(R1), HaState::Active);
    api.update_ha_routers_states(&states).unwrap();
    assert_eq!(
        server.next(&broker, Duration::from_secs(10)),
        json!({"event": "update_ha_routers_states", "host": "node1", "states": {R1: "active"}})
    );
    let state = AgentState {
        host: "node1".into(),
        availability_zone: "nova".into(),
        agent_mode: "legacy".into(),
        handle_internal_only_routers: true,
        interface_driver: "openvswitch".into(),
        log_agent_heartbeats: false,
        extensions: vec![],
        start_flag: true,
        counts: Default::default(),
    };
    assert_eq!(api.report_state(&state).unwrap(), AgentStatus::New);
    let ev = server.next(&broker, Duration::from_secs(10));
    assert_eq!(ev["binary"], "neutron-l3-agent");
    assert_eq!(ev["agent_type"], "L3 agent");
    assert_eq!(ev["start_flag"], true);

    // Our context arrives as neutron-lib's admin context.
    let mut args = Map::new();
    args.insert("x".into(), json!([1, "two"]));
    let v = agent
        .call(
            L3_PLUGIN_TOPIC,
            Some("pyserver"),
            "echo",
            args,
            "1.13",
            Duration::from_secs(10),
        )
        .unwrap();
    assert_eq!(v["args"], json!({"x": [1, "two"]}));
    assert_eq!(v["is_admin"], true);
    assert_eq!(v["request_id"], agent.options().context["request_id"]);

    // oslo's failures, decoded: an endpoint exception, NoSuchMethod, UnsupportedVersion.
    let call = |method: &str, version: &str| {
        agent
            .call(
                L3_PLUGIN_TOPIC,
                None,
                method,
                Map::new(),
                version,
                Duration::from_secs(10),
            )
            .unwrap_err()
    };
    match call("fail", "1.0") {
        NeutronError::Remote { failure, .. } => {
            assert!(failure.is("builtins", "ValueError"), "{failure:?}");
            assert_eq!(failure.message, "boom from oslo");
            assert!(!failure.tb.is_empty());
        }
        other => panic!("{other}"),
    }
    match call("frobnicate", "1.0") {
        NeutronError::Remote { failure, .. } => {
            assert!(failure.is(DISPATCHER_MODULE, "NoSuchMethod"), "{failure:?}");
            assert_eq!(
                failure.message,
                "Endpoint does not support RPC method frobnicate"
            );
        }
        other => panic!("{other}"),
    }
    match call("echo", "2.0") {
        NeutronError::Remote { failure, .. } => {
            assert!(
                failure.is(DISPATCHER_MODULE, "UnsupportedVersion"),
                "{failure:?}"
            );
            assert_eq!(
                failure.message,
                "Endpoint does not support RPC version 2.0. Attempted method: echo"
            );
        }
        other => panic!("{other}"),
    }
    drop(server);

    // --- oslo.messaging's RPC client (as neutron-server notifies) → this crate's agent.
    let client = Peer::start(&broker, &venv, "client");
    let results = client.next(&broker, Duration::from_secs(90));
    assert_eq!(results["router_added_to_agent"], Value::Null, "{results}");
    assert_eq!(
        results["no_such_method"]["exc_type"], "NoSuchMethod",
        "{results}"
    );
    assert_eq!(
        results["no_such_method"]["value"],
        "Endpoint does not support RPC method frobnicate"
    );
    assert_eq!(
        results["unsupported_version"]["exc_type"], "UnsupportedVersion",
        "{results}"
    );
    let mut got = Vec::new();
    while got.len() < 5 {
        match notes.recv_timeout(Duration::from_secs(10)) {
            Ok(n) => got.push(n),
            Err(_) => panic!("only {} notifications: {got:?}", got.len()),
        }
    }
    let want = [
        Notification::RouterAddedToAgent {
            routers: vec![rid(R1)],
        },
        Notification::RoutersUpdated {
            routers: vec![rid(R2)],
        },
        Notification::RouterDeleted { router_id: rid(R1) },
        Notification::NetworkUpdate {
            network_id: NetworkId::new("t", NET).unwrap(),
            mtu: Some(1450),
        },
    ];
    for w in &want {
        assert!(got.contains(w), "missing {w:?} in {got:?}");
    }
    assert!(
        got.iter().any(|n| matches!(n, Notification::AddArpEntry(e)
            if e.router_id == rid(R1) && e.ip_address.to_string() == "10.1.2.3"
            && e.mac_address.to_string() == "fa:16:3e:01:02:03")),
        "{got:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        notes.try_recv().is_err(),
        "nothing more: the failed calls handed nothing on"
    );
    drop(client);
    agent_rpc.stop();
    agent.close(Duration::from_secs(5));
}

/// kolla-ansible's options (quorum queues, transient quorum queues, stream fanout): oslo
/// declares the agent's queues first, this crate declares the same ones after it with
/// equal arguments (RabbitMQ refuses an unequal redeclaration with PRECONDITION_FAILED), and
/// both consume them.
#[test]
fn with_quorum_and_stream_options_oslo_and_this_crate_declare_the_same_queues() {
    use l3agent_neutron::{ini, NeutronAgentConfig, TransportOptions};

    let venv = venv();
    let broker = Broker::start("nosq");
    let query = "?rabbit_quorum_queue=true&rabbit_transient_quorum_queue=true\
                 &rabbit_stream_fanout=true&rabbit_qos_prefetch_count=10";
    let url = format!("{URL}{query}");
    let twin = Peer::start_with(&broker, &venv, "twin", &url);
    assert_eq!(
        twin.next(&broker, Duration::from_secs(60))["event"],
        "READY"
    );

    let text = format!("[DEFAULT]\ninterface_driver = openvswitch\ntransport_url = {url}\n");
    let set = ini::IniSet {
        files: vec![ini::parse(Path::new("neutron.conf"), &text).unwrap()],
    };
    let cfg = NeutronAgentConfig::from_ini(&set, "node1").unwrap();
    let agent = broker.transport(TransportOptions::from_config(&cfg));
    let server = broker.transport(TransportOptions::from_config(&cfg));
    let (agent_rpc, notes) = AgentRpcServer::start(&agent, "node1").unwrap();
    assert!(
        agent_rpc.wait_consuming(Duration::from_secs(20)),
        "declaring oslo's queues again failed: {}",
        agent.state()
    );
    assert!(server.wait_connected(Duration::from_secs(20)));
    let mut args = Map::new();
    args.insert("router_id".into(), json!(R1));
    server
        .fanout_cast("l3_agent", "router_deleted", args, "1.0")
        .unwrap();
    // Both read the stream: this crate's agent and oslo's.
    assert_eq!(
        notes.recv_timeout(Duration::from_secs(10)).unwrap(),
        Notification::RouterDeleted { router_id: rid(R1) }
    );
    assert_eq!(
        twin.next(&broker, Duration::from_secs(10)),
        json!({"event": "router_deleted", "router_id": R1})
    );
    // The generation did not move: no channel was closed by a refused declaration.
    assert_eq!(agent.generation(), 1);
    drop(twin);
    agent_rpc.stop();
}
