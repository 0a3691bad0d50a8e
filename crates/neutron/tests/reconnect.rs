//! The broker goes away and comes back: transports reconnect, consumers come back, calls and
//! notifications flow again; every wait on the way is bounded.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, Broker};
use l3agent_neutron::config::TransportUrl;
use l3agent_neutron::l3::{AgentRpcServer, Notification, L3_AGENT_TOPIC, L3_PLUGIN_TOPIC};
use l3agent_neutron::wire::RemoteFailure;
use l3agent_neutron::{ConnectionState, Handler, NeutronError, Request};
use l3agent_types::RouterId;
use serde_json::{json, Map, Value};

const R1: &str = "87c7c2ae-d0ba-4691-820c-8053abf50b8d";

struct Echo;

impl Handler for Echo {
    fn version(&self) -> &str {
        "1.13"
    }

    fn handle(&self, req: &Request) -> Result<Value, Box<RemoteFailure>> {
        Ok(Value::Object(req.args.clone()))
    }
}

fn args(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

#[test]
fn after_a_broker_restart_clients_reconnect_and_consumers_come_back() {
    let mut broker = Broker::start("nrst");
    let server = broker.connected();
    let agent = broker.connected();
    let plugin = server
        .serve(L3_PLUGIN_TOPIC, "server1", Arc::new(Echo))
        .unwrap();
    let (agent_rpc, notes) = AgentRpcServer::start(&agent, "node1").unwrap();
    assert!(plugin.wait_consuming(Duration::from_secs(10)));
    assert!(agent_rpc.wait_consuming(Duration::from_secs(10)));
    let call = |n: u32, timeout: Duration| {
        agent.call(
            L3_PLUGIN_TOPIC,
            None,
            "echo",
            args(json!({"n": n})),
            "1.0",
            timeout,
        )
    };
    assert_eq!(call(1, Duration::from_secs(5)).unwrap(), json!({"n": 1}));
    assert_eq!(agent.generation(), 1);

    broker.stop();
    let t = Instant::now();
    let lost = eventually(Duration::from_secs(10), || {
        matches!(agent.state(), ConnectionState::Connecting { .. }).then_some(())
    });
    assert!(lost.is_some(), "the loss is seen: {}", agent.state());
    eprintln!("broker loss noticed in {:?}", t.elapsed());
    assert!(!agent_rpc.is_consuming());

    // While the broker is down: calls and casts fail within their own timeouts.
    let t = Instant::now();
    let e = call(2, Duration::from_millis(800)).unwrap_err();
    assert!(
        matches!(
            e,
            NeutronError::NotConnected { .. } | NeutronError::Timeout { .. }
        ),
        "{e}"
    );
    assert!(e.is_transient());
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // A call made during the outage with a long timeout is sent once the broker is back.
    let patient = {
        let agent = agent.clone();
        std::thread::spawn(move || {
            agent.call(
                L3_PLUGIN_TOPIC,
                None,
                "echo",
                args(json!({"patient": true})),
                "1.0",
                Duration::from_secs(60),
            )
        })
    };

    broker.start_again();
    let t = Instant::now();
    assert!(
        agent.wait_connected(Duration::from_secs(30)),
        "{}",
        agent.state()
    );
    assert!(
        server.wait_connected(Duration::from_secs(30)),
        "{}",
        server.state()
    );
    assert!(plugin.wait_consuming(Duration::from_secs(30)));
    assert!(agent_rpc.wait_consuming(Duration::from_secs(30)));
    eprintln!(
        "reconnected and consuming again {:?} after the broker answered AMQP",
        t.elapsed()
    );
    assert!(agent.generation() >= 2);

    assert_eq!(patient.join().unwrap().unwrap(), json!({"patient": true}));
    assert_eq!(call(3, Duration::from_secs(5)).unwrap(), json!({"n": 3}));
    // Server → agent notifications flow again (queues were declared anew: a restarted
    // broker keeps no transient queue).
    server
        .cast(
            L3_AGENT_TOPIC,
            Some("node1"),
            "router_deleted",
            args(json!({"router_id": R1})),
            "1.0",
        )
        .unwrap();
    assert_eq!(
        notes.recv_timeout(Duration::from_secs(5)).unwrap(),
        Notification::RouterDeleted {
            router_id: RouterId::new("t", R1).unwrap()
        }
    );
    server
        .fanout_cast(
            L3_AGENT_TOPIC,
            "router_deleted",
            args(json!({"router_id": R1})),
            "1.0",
        )
        .unwrap();
    assert!(
        notes.recv_timeout(Duration::from_secs(5)).is_ok(),
        "fanout consumer is back"
    );

    let t = Instant::now();
    agent_rpc.stop();
    plugin.stop();
    agent.close(Duration::from_secs(5));
    server.close(Duration::from_secs(5));
    assert_eq!(agent.state(), ConnectionState::Closed);
    assert!(t.elapsed() < Duration::from_secs(12));
}

#[test]
fn several_hosts_are_tried_in_turn_and_bad_credentials_never_show_the_password() {
    let broker = Broker::start("nhst");
    // The first host refuses connections; the second is the broker.
    let mut o = Broker::options();
    o.url = TransportUrl::parse("rabbit://guest:guest@127.0.0.1:5999,guest:guest@127.0.0.1:5672/")
        .unwrap();
    let t = broker.transport(o);
    let started = Instant::now();
    assert!(t.wait_connected(Duration::from_secs(20)), "{}", t.state());
    eprintln!(
        "connected through the second host in {:?}",
        started.elapsed()
    );
    match t.state() {
        ConnectionState::Connected { host, .. } => assert_eq!(host, "127.0.0.1:5672"),
        other => panic!("{other}"),
    }
    t.close(Duration::from_secs(5));

    // Wrong password: the transport keeps trying and says why, without the password.
    // lapin's I/O threads of this process (the other test of this binary has its own two).
    let threads = || {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .filter(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.trim() == "lapin-io-loop")
            })
            .count()
    };
    let before = threads();
    let mut o = Broker::options();
    o.url = TransportUrl::parse("rabbit://guest:Sekr1tPa55@127.0.0.1:5672/").unwrap();
    o.rabbit.interval_max = Duration::from_millis(300);
    let t = broker.transport(o);
    assert!(!t.wait_connected(Duration::from_secs(2)));
    let state = eventually(Duration::from_secs(10), || match t.state() {
        s @ ConnectionState::Connecting { attempt, .. } if attempt >= 2 => Some(s),
        _ => None,
    })
    .expect("attempts are counted");
    // Failed attempts leave nothing behind: after 20 of them, no I/O thread piled up.
    let many = eventually(Duration::from_secs(20), || match t.state() {
        ConnectionState::Connecting { attempt, .. } if attempt >= 20 => Some(()),
        _ => None,
    });
    assert!(many.is_some(), "{}", t.state());
    let after = threads();
    assert!(
        after <= before + 8,
        "threads: {before} before, {after} after 20 attempts"
    );
    let shown = format!("{state} {state:?} {t:?}");
    assert!(!shown.contains("Sekr1tPa55"), "{shown}");
    assert!(shown.contains("127.0.0.1:5672"), "{shown}");
    // A call on a transport that cannot connect fails within its timeout.
    let started = Instant::now();
    let e = t
        .call(
            L3_PLUGIN_TOPIC,
            None,
            "x",
            Map::new(),
            "1.0",
            Duration::from_millis(500),
        )
        .unwrap_err();
    assert!(matches!(e, NeutronError::NotConnected { .. }), "{e}");
    assert!(!e.to_string().contains("Sekr1tPa55"));
    assert!(started.elapsed() < Duration::from_secs(2));
    let started = Instant::now();
    t.close(Duration::from_secs(5));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(t.state(), ConnectionState::Closed);
}
