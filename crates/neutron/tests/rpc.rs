//! Two instances of this crate talking through a real RabbitMQ: one plays neutron-server
//! (serves `q-l3-plugin` and `q-reports-plugin`, sends notifications), the other the agent.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::{eventually, Broker};
use l3agent_neutron::l3::{
    AgentRpcServer, AgentStatus, FipStatus, HaState, Notification, PluginApi, L3_AGENT_TOPIC,
    L3_PLUGIN_TOPIC, NETWORK_UPDATE_TOPIC, REPORTS_TOPIC,
};
use l3agent_neutron::wire::{RemoteFailure, DISPATCHER_MODULE};
use l3agent_neutron::{AgentState, Handler, NeutronError, Request};
use l3agent_types::{FloatingIpId, NetworkId, RouterId};
use serde_json::{json, Map, Value};

const R1: &str = "87c7c2ae-d0ba-4691-820c-8053abf50b8d";
const R2: &str = "11111111-2222-4333-8444-555555555555";
const NET: &str = "22222222-3333-4444-8555-666666666666";

fn args(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

fn rid(s: &str) -> RouterId {
    RouterId::new("test", s).unwrap()
}

/// A fake L3 plugin: answers what the agent asks, records what it is told.
struct FakePlugin {
    seen: Mutex<mpsc::Sender<Request>>,
    reports: AtomicUsize,
}

impl Handler for FakePlugin {
    fn version(&self) -> &str {
        "1.13"
    }

    fn handle(&self, req: &Request) -> Result<Value, Box<RemoteFailure>> {
        let _ = self.seen.lock().unwrap().send(req.clone());
        match req.method.as_str() {
            "get_router_ids" => Ok(json!([R1, R2])),
            "sync_routers" => Ok(json!([{"id": R1, "name": "r1", "host": req.args["host"]}])),
            "update_floatingip_statuses" => Ok(Value::Null),
            "get_agent_gateway_port" => {
                Ok(json!({"id": "p1", "network_id": req.args["network_id"]}))
            }
            "update_ha_routers_states" => Ok(Value::Null),
            "report_state" => {
                let n = self.reports.fetch_add(1, Ordering::SeqCst);
                Ok(json!(["new", "alive", "revived"][n.min(2)]))
            }
            "echo" => Ok(json!({"args": req.args, "context": req.context})),
            "slow" => {
                std::thread::sleep(Duration::from_millis(1500));
                Ok(json!("late"))
            }
            "fail" => Err(RemoteFailure::new(
                "neutron_lib.exceptions",
                "RouterNotFound",
                "Router x could not be found",
            )
            .into()),
            other => Err(RemoteFailure::no_such_method(other).into()),
        }
    }
}

#[test]
fn calls_casts_replies_failures_and_timeouts_between_two_transports() {
    let broker = Broker::start("nrpc");
    let server_side = broker.connected();
    let agent_side = broker.connected();
    assert_ne!(server_side.reply_queue(), agent_side.reply_queue());
    assert!(agent_side.reply_queue().starts_with("reply_"));
    assert_eq!(agent_side.reply_queue().len(), "reply_".len() + 32);

    let (seen_tx, seen_rx) = mpsc::channel();
    let plugin = Arc::new(FakePlugin {
        seen: Mutex::new(seen_tx),
        reports: AtomicUsize::new(0),
    });
    let l3 = server_side
        .serve(L3_PLUGIN_TOPIC, "server1", plugin.clone())
        .unwrap();
    let reports = server_side.serve(REPORTS_TOPIC, "server1", plugin).unwrap();
    assert!(l3.wait_consuming(Duration::from_secs(10)));
    assert!(reports.wait_consuming(Duration::from_secs(10)));

    let api = PluginApi::new(agent_side.clone(), "node1", Duration::from_secs(10));

    // Typed calls, with the versions and arguments of NEUTRON-RPC.md.
    assert_eq!(api.get_router_ids().unwrap(), vec![rid(R1), rid(R2)]);
    let r = seen_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(
        (r.method.as_str(), r.version.as_str()),
        ("get_router_ids", "1.9")
    );
    assert_eq!(r.args, args(json!({"host": "node1"})));
    assert_eq!(
        r.context["is_admin"], true,
        "admin context: {:?}",
        r.context
    );
    assert!(r.context["request_id"]
        .as_str()
        .unwrap()
        .starts_with("req-"));
    assert!(r.call.is_some());

    let routers = api.sync_routers(Some(&[rid(R1)])).unwrap();
    assert_eq!(
        routers,
        vec![json!({"id": R1, "name": "r1", "host": "node1"})]
    );
    let r = seen_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(r.args, args(json!({"host": "node1", "router_ids": [R1]})));
    assert_eq!(r.version, "1.0");

    let mut fips = BTreeMap::new();
    fips.insert(FloatingIpId::new("t", R2).unwrap(), FipStatus::Active);
    api.update_floatingip_statuses(&rid(R1), &fips).unwrap();
    let r = seen_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(r.version, "1.1");
    assert_eq!(
        r.args,
        args(json!({"router_id": R1, "fip_statuses": {R2: "ACTIVE"}}))
    );

    let port = api
        .get_agent_gateway_port(&NetworkId::new("t", NET).unwrap())
        .unwrap();
    assert_eq!(port, Some(json!({"id": "p1", "network_id": NET})));
    assert_eq!(
        seen_rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap()
            .version,
        "1.2"
    );

    // A cast: no reply, but the server gets it.
    let mut states = BTreeMap::new();
    states.insert(rid(R1), HaState::Standby);
    api.update_ha_routers_states(&states).unwrap();
    let r = seen_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(
        (r.method.as_str(), r.version.as_str()),
        ("update_ha_routers_states", "1.5")
    );
    assert!(r.call.is_none(), "a cast carries no _msg_id");
    assert_eq!(
        r.args,
        args(json!({"host": "node1", "states": {R1: "standby"}}))
    );

    // report_state on q-reports-plugin 1.4: new, alive, revived.
    let mut state = AgentState {
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
    let r = seen_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(
        (r.method.as_str(), r.version.as_str()),
        ("report_state", "1.4")
    );
    let body = &r.args["agent_state"]["agent_state"];
    assert_eq!(body["binary"], "neutron-l3-agent");
    assert_eq!(body["start_flag"], true);
    assert_eq!(body["uuid"].as_str().unwrap().len(), 36);
    let time = r.args["time"].as_str().unwrap();
    assert_eq!(time.len(), "2026-01-01T00:00:00.000000".len(), "{time}");
    state.start_flag = false;
    assert_eq!(api.report_state(&state).unwrap(), AgentStatus::Alive);
    assert_eq!(api.report_state(&state).unwrap(), AgentStatus::Revived);
    while seen_rx.try_recv().is_ok() {}

    // A server-side failure comes back typed.
    let e = agent_side
        .call(
            L3_PLUGIN_TOPIC,
            None,
            "fail",
            Map::new(),
            "1.0",
            Duration::from_secs(5),
        )
        .unwrap_err();
    match &e {
        NeutronError::Remote { failure, .. } => {
            assert!(
                failure.is("neutron_lib.exceptions", "RouterNotFound"),
                "{failure:?}"
            );
            assert_eq!(failure.message, "Router x could not be found");
        }
        other => panic!("{other:?}"),
    }
    // Unknown method: NoSuchMethod, as oslo's dispatcher answers.
    let e = agent_side
        .call(
            L3_PLUGIN_TOPIC,
            None,
            "nope",
            Map::new(),
            "1.0",
            Duration::from_secs(5),
        )
        .unwrap_err();
    assert!(
        matches!(&e, NeutronError::Remote { failure, .. } if failure.is(DISPATCHER_MODULE, "NoSuchMethod")),
        "{e}"
    );
    // A version the endpoint does not implement: UnsupportedVersion.
    let e = agent_side
        .call(
            L3_PLUGIN_TOPIC,
            None,
            "echo",
            Map::new(),
            "2.0",
            Duration::from_secs(5),
        )
        .unwrap_err();
    assert!(
        matches!(&e, NeutronError::Remote { failure, .. } if failure.is(DISPATCHER_MODULE, "UnsupportedVersion")),
        "{e}"
    );

    // Directed to one server: topic.server.
    let v = agent_side
        .call(
            L3_PLUGIN_TOPIC,
            Some("server1"),
            "echo",
            args(json!({"x": 1})),
            "1.13",
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(v["args"], json!({"x": 1}));

    // Timeouts are bounded; the late reply is dropped and the next call is not confused.
    let started = Instant::now();
    let e = agent_side
        .call(
            L3_PLUGIN_TOPIC,
            None,
            "slow",
            Map::new(),
            "1.0",
            Duration::from_millis(400),
        )
        .unwrap_err();
    let waited = started.elapsed();
    assert!(matches!(e, NeutronError::Timeout { .. }), "{e}");
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_millis(1000),
        "{waited:?}"
    );
    let v = agent_side
        .call(
            L3_PLUGIN_TOPIC,
            None,
            "echo",
            args(json!({"n": 2})),
            "1.0",
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(
        v["args"],
        json!({"n": 2}),
        "the late reply of `slow` is not taken for this one"
    );
    // Nobody consumes the topic: a timeout, not a hang.
    let started = Instant::now();
    let e = agent_side
        .call(
            "no-such-topic",
            None,
            "x",
            Map::new(),
            "1.0",
            Duration::from_millis(300),
        )
        .unwrap_err();
    assert!(matches!(e, NeutronError::Timeout { .. }), "{e}");
    assert!(started.elapsed() < Duration::from_secs(2));

    // A call to a topic whose server is not there yet is answered once it is (the request
    // comes back unroutable and is sent again within the timeout).
    let early = {
        let c = agent_side.clone();
        std::thread::spawn(move || {
            c.call(
                "late-topic",
                None,
                "echo",
                args(json!({"early": 1})),
                "1.0",
                Duration::from_secs(10),
            )
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    let (late_tx, _late_rx) = mpsc::channel();
    let late = server_side
        .serve(
            "late-topic",
            "server1",
            Arc::new(FakePlugin {
                seen: Mutex::new(late_tx),
                reports: AtomicUsize::new(0),
            }),
        )
        .unwrap();
    assert_eq!(early.join().unwrap().unwrap()["args"], json!({"early": 1}));
    late.stop();

    // Round-trip latency over the real broker.
    let mut samples = Vec::new();
    for i in 0..200 {
        let t = Instant::now();
        let v = agent_side
            .call(
                L3_PLUGIN_TOPIC,
                None,
                "echo",
                args(json!({"i": i})),
                "1.0",
                Duration::from_secs(5),
            )
            .unwrap();
        samples.push(t.elapsed());
        assert_eq!(v["args"]["i"], i);
    }
    samples.sort();
    eprintln!(
        "call round trip over RabbitMQ (200 calls): median {:?}, p90 {:?}, p99 {:?}, max {:?}",
        samples[100], samples[180], samples[198], samples[199]
    );
    // Concurrent callers on one transport each get their own reply.
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let c = agent_side.clone();
            std::thread::spawn(move || {
                for i in 0..20 {
                    let v = c
                        .call(
                            L3_PLUGIN_TOPIC,
                            None,
                            "echo",
                            args(json!({"t": t, "i": i})),
                            "1.0",
                            Duration::from_secs(10),
                        )
                        .unwrap();
                    assert_eq!(v["args"], json!({"t": t, "i": i}));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    l3.stop();
    reports.stop();
    agent_side.close(Duration::from_secs(5));
    server_side.close(Duration::from_secs(5));
}

#[test]
fn notifications_reach_the_agent_typed_including_fanout_to_every_agent() {
    let broker = Broker::start("nnot");
    let server = broker.connected();
    let a1 = broker.connected();
    let a2 = broker.connected();
    let (srv1, rx1) = AgentRpcServer::start(&a1, "node1").unwrap();
    let (srv2, rx2) = AgentRpcServer::start(&a2, "node2").unwrap();
    assert!(srv1.wait_consuming(Duration::from_secs(10)));
    assert!(srv2.wait_consuming(Duration::from_secs(10)));
    let next = |rx: &mpsc::Receiver<Notification>| rx.recv_timeout(Duration::from_secs(5)).unwrap();

    // routers_updated: a cast to l3_agent.<host>, only that agent.
    server
        .cast(
            L3_AGENT_TOPIC,
            Some("node1"),
            "routers_updated",
            args(json!({"routers": [R1, R2]})),
            "1.1",
        )
        .unwrap();
    assert_eq!(
        next(&rx1),
        Notification::RoutersUpdated {
            routers: vec![rid(R1), rid(R2)]
        }
    );

    // router_added_to_agent: a call; the reply is null, after the notification is handed on.
    let v = server
        .call(
            L3_AGENT_TOPIC,
            Some("node2"),
            "router_added_to_agent",
            args(json!({"payload": [R1]})),
            "1.0",
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(v, Value::Null);
    assert_eq!(
        rx2.try_recv().unwrap(),
        Notification::RouterAddedToAgent {
            routers: vec![rid(R1)]
        },
        "handed on before the reply"
    );

    // Fanouts reach both agents.
    server
        .fanout_cast(
            L3_AGENT_TOPIC,
            "router_deleted",
            args(json!({"router_id": R2})),
            "1.0",
        )
        .unwrap();
    for rx in [&rx1, &rx2] {
        assert_eq!(next(rx), Notification::RouterDeleted { router_id: rid(R2) });
    }
    server
        .fanout_cast(
            NETWORK_UPDATE_TOPIC,
            "network_update",
            args(json!({"network": {"id": NET, "mtu": 1400}})),
            "1.0",
        )
        .unwrap();
    for rx in [&rx1, &rx2] {
        assert_eq!(
            next(rx),
            Notification::NetworkUpdate {
                network_id: NetworkId::new("t", NET).unwrap(),
                mtu: Some(1400)
            }
        );
    }
    server
        .fanout_cast(
            L3_AGENT_TOPIC,
            "add_arp_entry",
            args(json!({"payload": {"router_id": R1, "arp_table": {
                "ip_address": "10.0.0.7", "mac_address": "fa:16:3e:aa:bb:cc", "subnet_id": R2}}})),
            "1.2",
        )
        .unwrap();
    for rx in [&rx1, &rx2] {
        assert!(matches!(next(rx), Notification::AddArpEntry(e) if e.router_id == rid(R1)));
    }
    for (method, a, want) in [
        (
            "router_removed_from_agent",
            json!({"payload": {"router_id": R1}}),
            Notification::RouterRemovedFromAgent { router_id: rid(R1) },
        ),
        (
            "agent_updated",
            json!({"payload": {"admin_state_up": true}}),
            Notification::AgentUpdated {
                admin_state_up: true,
            },
        ),
        (
            "fipnamespace_delete_on_ext_net",
            json!({"ext_net_id": NET}),
            Notification::FipNamespaceDeleteOnExtNet {
                ext_net_id: NetworkId::new("t", NET).unwrap(),
            },
        ),
    ] {
        server
            .cast(L3_AGENT_TOPIC, Some("node1"), method, args(a), "1.0")
            .unwrap();
        assert_eq!(next(&rx1), want, "{method}");
    }

    // A malformed id: dropped (nothing handed on); as a call, a failure comes back.
    server
        .cast(
            L3_AGENT_TOPIC,
            Some("node1"),
            "router_deleted",
            args(json!({"router_id": "../x"})),
            "1.0",
        )
        .unwrap();
    let e = server
        .call(
            L3_AGENT_TOPIC,
            Some("node1"),
            "router_added_to_agent",
            args(json!({"payload": ["bad id"]})),
            "1.0",
            Duration::from_secs(5),
        )
        .unwrap_err();
    assert!(
        matches!(&e, NeutronError::Remote { failure, .. } if failure.class == "ValueError"),
        "{e}"
    );
    // Unknown method and unsupported version, as a call: oslo's dispatcher failures.
    let e = server
        .call(
            L3_AGENT_TOPIC,
            Some("node1"),
            "frobnicate",
            Map::new(),
            "1.0",
            Duration::from_secs(5),
        )
        .unwrap_err();
    assert!(
        matches!(&e, NeutronError::Remote { failure, .. } if failure.is(DISPATCHER_MODULE, "NoSuchMethod")),
        "{e}"
    );
    let e = server
        .call(
            L3_AGENT_TOPIC,
            Some("node1"),
            "routers_updated",
            args(json!({"routers": [R1]})),
            "1.5",
            Duration::from_secs(5),
        )
        .unwrap_err();
    assert!(
        matches!(&e, NeutronError::Remote { failure, .. } if failure.is(DISPATCHER_MODULE, "UnsupportedVersion")),
        "{e}"
    );
    // Nothing of the bad messages was handed on; a good one still is.
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
        next(&rx1),
        Notification::RouterDeleted { router_id: rid(R1) }
    );
    assert!(rx1.try_recv().is_err());
    // The shared topic queue `l3_agent` delivers each message to one agent only.
    server
        .cast(
            L3_AGENT_TOPIC,
            None,
            "routers_updated",
            args(json!({"routers": [R2]})),
            "1.1",
        )
        .unwrap();
    let got = eventually(Duration::from_secs(5), || {
        rx1.try_recv().ok().or_else(|| rx2.try_recv().ok())
    });
    assert_eq!(
        got,
        Some(Notification::RoutersUpdated {
            routers: vec![rid(R2)]
        })
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(rx1.try_recv().is_err() && rx2.try_recv().is_err());

    srv1.stop();
    srv2.stop();
}

/// kolla-ansible's queue options (quorum, transient quorum, stream fanout, queue manager
/// names), from a config file with the options in the transport URL's query: RabbitMQ
/// accepts the declarations and calls, casts and fanouts flow.
#[test]
fn quorum_queues_stream_fanout_and_queue_manager_names_work_on_a_real_broker() {
    use l3agent_neutron::ini;
    use l3agent_neutron::{NeutronAgentConfig, TransportOptions};

    let broker = Broker::start("nquo");
    let text = "[DEFAULT]\ninterface_driver = openvswitch\n\
                transport_url = rabbit://guest:guest@127.0.0.1:5672/?rabbit_quorum_queue=true\
                &rabbit_transient_quorum_queue=true&rabbit_stream_fanout=true\
                &rabbit_qos_prefetch_count=10\n\
                [oslo_messaging_rabbit]\nuse_queue_manager = true\nprocessname = l3test\n";
    let set = ini::IniSet {
        files: vec![ini::parse(std::path::Path::new("neutron.conf"), text).unwrap()],
    };
    let cfg = NeutronAgentConfig::from_ini(&set, "node9").unwrap();
    assert!(cfg.rabbit.rabbit_stream_fanout && cfg.rabbit.rabbit_quorum_queue);
    let opts = |c: &NeutronAgentConfig| {
        let mut o = TransportOptions::from_config(c);
        o.rabbit.retry_interval = Duration::from_millis(200);
        o
    };
    let server = broker.transport(opts(&cfg));
    let agent = broker.transport(opts(&cfg));
    assert!(
        server.wait_connected(Duration::from_secs(20)),
        "{}",
        server.state()
    );
    assert!(
        agent.wait_connected(Duration::from_secs(20)),
        "{}",
        agent.state()
    );
    assert!(
        agent.reply_queue().starts_with("reply_node9:l3test:"),
        "{}",
        agent.reply_queue()
    );
    assert_ne!(agent.reply_queue(), server.reply_queue());

    let (seen_tx, _seen_rx) = mpsc::channel();
    let plugin = Arc::new(FakePlugin {
        seen: Mutex::new(seen_tx),
        reports: AtomicUsize::new(0),
    });
    let l3 = server.serve(L3_PLUGIN_TOPIC, "server1", plugin).unwrap();
    assert!(
        l3.wait_consuming(Duration::from_secs(10)),
        "{}",
        server.state()
    );
    assert_eq!(
        l3.fanout_queue(),
        "q-l3-plugin_fanout",
        "one stream per topic"
    );
    let (agent_rpc, notes) = AgentRpcServer::start(&agent, "node9").unwrap();
    assert!(
        agent_rpc.wait_consuming(Duration::from_secs(10)),
        "{}",
        agent.state()
    );

    let api = PluginApi::new(agent.clone(), "node9", Duration::from_secs(10));
    assert_eq!(api.get_router_ids().unwrap(), vec![rid(R1), rid(R2)]);
    server
        .cast(
            L3_AGENT_TOPIC,
            Some("node9"),
            "routers_updated",
            args(json!({"routers": [R1]})),
            "1.1",
        )
        .unwrap();
    assert_eq!(
        notes.recv_timeout(Duration::from_secs(5)).unwrap(),
        Notification::RoutersUpdated {
            routers: vec![rid(R1)]
        }
    );
    // Through the stream: starts at the end, then follows.
    for i in 0..3 {
        server
            .fanout_cast(
                L3_AGENT_TOPIC,
                "router_deleted",
                args(json!({"router_id": R2})),
                "1.0",
            )
            .unwrap();
        assert_eq!(
            notes.recv_timeout(Duration::from_secs(5)).unwrap(),
            Notification::RouterDeleted { router_id: rid(R2) },
            "fanout {i}"
        );
    }
    agent_rpc.stop();
    l3.stop();
}
