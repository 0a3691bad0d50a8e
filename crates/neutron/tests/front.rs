//! The front end ([`l3agent_neutron::front`]) against a fake neutron-server through a real
//! RabbitMQ: the first full sync asks in chunks that halve when the server is too slow, a
//! refused router dict is left out (its floating IP reported ERROR) without holding the
//! others back, floating IP statuses are sent once per change, and while the server fails
//! the state in force stays until a later full sync brings the server's new state. Every
//! wait is bounded.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::Broker;
use l3agent_agent::daemon::{FeedEvent, RouterOutcome};
use l3agent_neutron::front::{Front, FrontOptions};
use l3agent_neutron::ini::{self, IniSet};
use l3agent_neutron::l3::{L3_PLUGIN_TOPIC, REPORTS_TOPIC};
use l3agent_neutron::wire::RemoteFailure;
use l3agent_neutron::{Handler, NeutronAgentConfig, Request};
use l3agent_types::RouterId;
use serde_json::{json, Value};

const ROUTERS: usize = 81;
/// The router whose dict is refused (a bad MAC).
const INVALID: usize = 80;
/// Chunks larger than this take longer than the calls' timeout.
const SLOW_ABOVE: usize = 40;

fn router_id(i: usize) -> String {
    format!("{:08x}-0000-4000-8000-000000000001", 0x1000 + i)
}

fn fip_id(i: usize) -> String {
    format!("{:08x}-0000-4000-8000-00000000000f", 0x3000 + i)
}

/// The dict a real neutron-server sent, made router `i` (own ports, MACs and gateway
/// address); routers 0 and INVALID keep a floating IP.
fn dict(i: usize) -> Value {
    let mut d: Value = serde_json::from_str(include_str!(
        "../../router/tests/data/neutron-server-router.json"
    ))
    .unwrap();
    d["id"] = json!(router_id(i));
    d["gw_port"]["id"] = json!(format!("{:08x}-0000-4000-8000-00000000000a", 0x4000 + i));
    d["gw_port"]["mac_address"] = json!(format!("fa:16:3e:48:{:02x}:{:02x}", i / 256, i % 256));
    d["gw_port"]["fixed_ips"][0]["ip_address"] = json!(format!("203.0.113.{}", 10 + i));
    d["_interfaces"][0]["id"] = json!(format!("{:08x}-0000-4000-8000-00000000000b", 0x5000 + i));
    d["_interfaces"][0]["mac_address"] =
        json!(format!("fa:16:3e:01:{:02x}:{:02x}", i / 256, i % 256));
    if i == 0 || i == INVALID {
        d["_floatingips"][0]["id"] = json!(fip_id(i));
        d["_floatingips"][0]["router_id"] = json!(router_id(i));
        d["_floatingips"][0]["status"] = json!("DOWN");
        d["_floatingips"][0]["floating_ip_address"] = json!(format!("203.0.113.{}", 200 + i % 50));
    } else {
        d["_floatingips"] = json!([]);
    }
    if i == INVALID {
        d["gw_port"]["mac_address"] = json!("not-a-mac");
    }
    d
}

/// A fake L3 plugin and state report endpoint.
struct Server {
    routers: Mutex<BTreeSet<usize>>,
    /// Chunks larger than this are answered too late.
    slow_above: usize,
    /// Routers without gateway (and floating IPs): any number of them fits the addresses.
    internal_only: bool,
    failing: AtomicBool,
    chunks: Mutex<Vec<usize>>,
    statuses: Mutex<mpsc::Sender<Value>>,
    reports: AtomicUsize,
    last_counts: Mutex<Value>,
}

impl Handler for Server {
    fn version(&self) -> &str {
        "1.13"
    }

    fn handle(&self, req: &Request) -> Result<Value, Box<RemoteFailure>> {
        let fail = || {
            Err(RemoteFailure::new(
                "oslo_db.exception",
                "DBConnectionError",
                "the database is away",
            )
            .into())
        };
        match req.method.as_str() {
            "get_router_ids" => {
                if self.failing.load(Ordering::SeqCst) {
                    return fail();
                }
                let ids: Vec<String> = self
                    .routers
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|i| router_id(*i))
                    .collect();
                Ok(json!(ids))
            }
            "sync_routers" => {
                if self.failing.load(Ordering::SeqCst) {
                    return fail();
                }
                let asked: Vec<String> = req.args["router_ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_owned())
                    .collect();
                self.chunks.lock().unwrap().push(asked.len());
                if asked.len() > self.slow_above {
                    std::thread::sleep(Duration::from_millis(1300));
                }
                let have = self.routers.lock().unwrap().clone();
                Ok(json!(have
                    .iter()
                    .filter(|i| asked.contains(&router_id(**i)))
                    .map(|i| {
                        let mut d = dict(*i);
                        if self.internal_only {
                            d["gw_port"] = Value::Null;
                            d["external_gateway_info"] = Value::Null;
                            d["_floatingips"] = json!([]);
                        }
                        d
                    })
                    .collect::<Vec<_>>()))
            }
            "update_floatingip_statuses" => {
                let _ = self
                    .statuses
                    .lock()
                    .unwrap()
                    .send(Value::Object(req.args.clone()));
                Ok(Value::Null)
            }
            "report_state" => {
                *self.last_counts.lock().unwrap() =
                    req.args["agent_state"]["agent_state"]["configurations"].clone();
                let n = self.reports.fetch_add(1, Ordering::SeqCst);
                Ok(json!(if n == 0 { "new" } else { "alive" }))
            }
            other => Err(RemoteFailure::no_such_method(other).into()),
        }
    }
}

fn config() -> NeutronAgentConfig {
    let set = IniSet {
        files: vec![ini::parse(
            Path::new("l3_agent.ini"),
            "[DEFAULT]\nhost = node1\ninterface_driver = openvswitch\n",
        )
        .unwrap()],
    };
    NeutronAgentConfig::from_ini(&set, "node1").unwrap()
}

fn next_status(rx: &mpsc::Receiver<Value>, within: Duration) -> Option<Value> {
    rx.recv_timeout(within).ok()
}

#[test]
fn chunks_shrink_refused_dicts_stay_out_statuses_once_and_state_survives_server_failures() {
    let broker = Broker::start("nfront");
    let server_side = broker.connected();
    let (status_tx, status_rx) = mpsc::channel();
    let server = Arc::new(Server {
        routers: Mutex::new((0..ROUTERS).collect()),
        slow_above: SLOW_ABOVE,
        internal_only: false,
        failing: AtomicBool::new(false),
        chunks: Mutex::new(Vec::new()),
        statuses: Mutex::new(status_tx),
        reports: AtomicUsize::new(0),
        last_counts: Mutex::new(Value::Null),
    });
    let l3 = server_side
        .serve(L3_PLUGIN_TOPIC, "server1", server.clone())
        .unwrap();
    let reports = server_side
        .serve(REPORTS_TOPIC, "server1", server.clone())
        .unwrap();
    assert!(
        l3.wait_consuming(Duration::from_secs(10))
            && reports.wait_consuming(Duration::from_secs(10))
    );

    let cfg = config();
    let transport = broker.transport(Broker::options());
    let opts = FrontOptions {
        report_interval: Some(Duration::from_millis(500)),
        rpc_timeout: Duration::from_secs(1),
        periodic_interval: Duration::from_secs(2),
        retry_base: Duration::from_millis(200),
        chunk_max: 160,
        chunk_min: 20,
        handle_internal_only_routers: true,
    };
    let stop = AtomicBool::new(false);
    let t = Instant::now();
    let started = Front::start(&cfg, &transport, opts, &stop).unwrap();
    eprintln!(
        "first full sync of {ROUTERS} routers (two chunks timing out): {:?}",
        t.elapsed()
    );

    // Chunks: 160 and 80 time out, then 40 at a time.
    let chunks = server.chunks.lock().unwrap().clone();
    assert_eq!(&chunks[..2], &[ROUTERS, 80], "{chunks:?}");
    assert!(chunks[2..].iter().all(|n| *n <= SLOW_ABOVE), "{chunks:?}");
    assert_eq!(chunks[2..].iter().sum::<usize>(), ROUTERS, "{chunks:?}");

    // The refused dict is out, every other router is in.
    let ids: BTreeSet<String> = started
        .initial
        .routers
        .iter()
        .map(|r| r.id.to_string())
        .collect();
    assert_eq!(ids.len(), ROUTERS - 1);
    assert!(!ids.contains(&router_id(INVALID)));

    // The refused router's floating IP: ERROR, without any outcome.
    let s = next_status(&status_rx, Duration::from_secs(5)).expect("ERROR for the refused dict");
    assert_eq!(s["router_id"], router_id(INVALID));
    assert_eq!(s["fip_statuses"], json!({ fip_id(INVALID): "ERROR" }));

    // Outcomes: ACTIVE once, ERROR when it fails.
    let r0 = RouterId::new("t", &router_id(0)).unwrap();
    let ok = RouterOutcome {
        ok: true,
        error: None,
    };
    (started.feed.on_result)(&r0, &ok);
    let s = next_status(&status_rx, Duration::from_secs(5)).expect("ACTIVE");
    assert_eq!(s["fip_statuses"], json!({ fip_id(0): "ACTIVE" }));
    (started.feed.on_result)(&r0, &ok);
    assert!(
        next_status(&status_rx, Duration::from_millis(800)).is_none(),
        "sent once"
    );
    (started.feed.on_result)(
        &r0,
        &RouterOutcome {
            ok: false,
            error: Some("x".into()),
        },
    );
    let s = next_status(&status_rx, Duration::from_secs(5)).expect("ERROR");
    assert_eq!(s["fip_statuses"], json!({ fip_id(0): "ERROR" }));

    // State reports carry the counts.
    let counted = common::eventually(Duration::from_secs(5), || {
        let c = server.last_counts.lock().unwrap().clone();
        (c["routers"] == json!(ROUTERS - 1)).then_some(c)
    })
    .expect("counts in the state reports");
    assert_eq!(counted["floating_ips"], 1, "{counted}");
    assert_eq!(counted["interfaces"], json!(ROUTERS - 1), "{counted}");

    // The server fails: a notification cannot be served; the state in force stays.
    server.failing.store(true, Ordering::SeqCst);
    server.routers.lock().unwrap().remove(&5);
    server_side
        .cast(
            "l3_agent",
            Some("node1"),
            "routers_updated",
            json!({"routers": [router_id(5)]})
                .as_object()
                .unwrap()
                .clone(),
            "1.1",
        )
        .unwrap();
    let events = &started.feed.events;
    let quiet_until = Instant::now() + Duration::from_secs(3);
    while let Some(left) = quiet_until.checked_duration_since(Instant::now()) {
        if let Ok(FeedEvent::Config(c)) = events.recv_timeout(left) {
            panic!(
                "a state was sent while the server fails: {} routers",
                c.routers.len()
            );
        }
    }
    // The server is back: a retried full sync brings its state (router 5 gone).
    server.failing.store(false, Ordering::SeqCst);
    let t = Instant::now();
    let new = loop {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "no new state after the server came back"
        );
        if let Ok(FeedEvent::Config(c)) = events.recv_timeout(Duration::from_millis(200)) {
            break c;
        }
    };
    eprintln!("state after the server came back: {:?}", t.elapsed());
    assert_eq!(new.routers.len(), ROUTERS - 2);
    assert!(!new.routers.iter().any(|r| r.id.as_str() == router_id(5)));

    started.front.stop();
    transport.close(Duration::from_secs(5));
}

/// Figures: a full sync of 1,000 routers (4 chunks of 256, every dict read and validated,
/// then validated together) through the real broker, the fake server answering at once.
#[test]
fn a_full_sync_of_a_thousand_routers() {
    const N: usize = 1000;
    let broker = Broker::start("nfront1k");
    let server_side = broker.connected();
    let (status_tx, _status_rx) = mpsc::channel();
    let server = Arc::new(Server {
        routers: Mutex::new((0..N).filter(|i| *i != INVALID).collect()),
        slow_above: usize::MAX,
        internal_only: true,
        failing: AtomicBool::new(false),
        chunks: Mutex::new(Vec::new()),
        statuses: Mutex::new(status_tx),
        reports: AtomicUsize::new(0),
        last_counts: Mutex::new(Value::Null),
    });
    let l3 = server_side
        .serve(L3_PLUGIN_TOPIC, "server1", server.clone())
        .unwrap();
    assert!(l3.wait_consuming(Duration::from_secs(10)));
    let transport = broker.transport(Broker::options());
    let mut opts = FrontOptions::from_config(&config());
    opts.report_interval = None;
    opts.rpc_timeout = Duration::from_secs(30);
    let stop = AtomicBool::new(false);
    let t = Instant::now();
    let started = Front::start(&config(), &transport, opts, &stop).unwrap();
    let took = t.elapsed();
    assert_eq!(started.initial.routers.len(), N - 1);
    assert_eq!(*server.chunks.lock().unwrap(), [256, 256, 256, 231]);
    eprintln!(
        "full sync of {} routers: {took:?} (first full sync as measured by the front end: {:?})",
        N - 1,
        started.first_sync
    );
    assert!(took < Duration::from_secs(60), "{took:?}");
    started.front.stop();
    transport.close(Duration::from_secs(5));
}
