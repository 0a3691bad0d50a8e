//! The front end ([`l3agent_neutron::front`]) against a fake neutron-server through a real
//! RabbitMQ: the first full sync asks in chunks that halve when the server is too slow, a
//! refused router dict is left out (its floating IP reported ERROR) without holding the
//! others back, floating IP statuses are sent once per change, and while the server fails
//! the state in force stays until a later full sync brings the server's new state. A DVR
//! router's dict is completed with its ARP entries and agent gateway port, and follows
//! `add_arp_entry` / `del_arp_entry`. Every wait is bounded.

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
use l3agent_router::spec::HaState;
use l3agent_types::RouterId;
use serde_json::{json, Value};

const ROUTERS: usize = 81;
/// The router whose dict is refused (a bad MAC).
const INVALID: usize = 80;
/// Chunks larger than this take longer than the calls' timeout.
const SLOW_ABOVE: usize = 40;
/// The calls' timeout in the chunk test. A slow chunk is answered 0.3 s after it, so the
/// next chunk (queued behind it at the fake server) has the rest of its own timeout to be
/// answered in: generous, for the other tests of this binary share the machine's cores.
const RPC_TIMEOUT: Duration = Duration::from_secs(3);

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
    // Each router's tenant network is its own: the copies keep the dict's interface address,
    // which is one port's on a network.
    d["_interfaces"][0]["network_id"] =
        json!(format!("{:08x}-0000-4000-8000-00000000000c", 0x6000 + i));
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
                    std::thread::sleep(RPC_TIMEOUT + Duration::from_millis(300));
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
            "update_floatingip_statuses" | "update_ha_routers_states" => {
                let mut args = req.args.clone();
                args.insert("method".into(), json!(req.method));
                let _ = self.statuses.lock().unwrap().send(Value::Object(args));
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
        rpc_timeout: RPC_TIMEOUT,
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
        ha_state: None,
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
            ha_state: None,
        },
    );
    let s = next_status(&status_rx, Duration::from_secs(5)).expect("ERROR");
    assert_eq!(s["fip_statuses"], json!({ fip_id(0): "ERROR" }));
    // HA routers: the VRRP state goes to the server when it changes, once.
    let ha = |state| RouterOutcome {
        ok: true,
        error: None,
        ha_state: Some(state),
    };
    (started.feed.on_result)(&r0, &ha(HaState::Master));
    let mut seen = Vec::new();
    while let Some(s) = next_status(&status_rx, Duration::from_secs(3)) {
        seen.push(s);
    }
    let ha_reports: Vec<&Value> = seen
        .iter()
        .filter(|s| s["method"] == "update_ha_routers_states")
        .collect();
    assert_eq!(ha_reports.len(), 1, "{seen:?}");
    assert_eq!(ha_reports[0]["states"], json!({ router_id(0): "active" }));
    assert_eq!(ha_reports[0]["host"], json!("node1"));
    (started.feed.on_result)(&r0, &ha(HaState::Master));
    (started.feed.on_result)(&r0, &ha(HaState::Backup));
    let s = next_status(&status_rx, Duration::from_secs(5)).expect("standby");
    assert_eq!(s["method"], "update_ha_routers_states", "{s}");
    assert_eq!(s["states"], json!({ router_id(0): "standby" }));

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

// ---------------------------------------------------------------------------------------
// DVR: ARP entries and the agent gateway port.
// ---------------------------------------------------------------------------------------

const DVR_ROUTER: &str = "fb221852-b23c-407e-ba26-a68b25803e49";
/// The DVR dict's qr- subnets: 192.0.2.0/24 and 198.51.100.0/24.
const S1: &str = "136c9285-df72-4ae3-8ff3-48dca5e9570e";
const S2: &str = "37f5d50d-5cfb-4bb4-9838-29dffa5e073c";
const EXT_NET: &str = "11272de9-8a18-4392-8618-d07b6ab565e3";

/// Neutron's DVR router dict (host `host-a`), without its agent gateway port.
fn dvr_dict() -> Value {
    let mut d: Value = serde_json::from_str(include_str!(
        "../../router/tests/data/neutron-router-dvr.json"
    ))
    .unwrap();
    d["_floatingip_agent_interfaces"] = json!([]);
    d
}

fn fg_port() -> Value {
    let d: Value = serde_json::from_str(include_str!(
        "../../router/tests/data/neutron-router-dvr.json"
    ))
    .unwrap();
    d["_floatingip_agent_interfaces"][0].clone()
}

fn vm_port(mac: &str, subnet: &str, ip: &str) -> Value {
    json!({"id": format!("00000000-0000-4000-8000-{}", mac.replace(':', "")),
        "device_owner": "compute:nova", "mac_address": mac,
        "fixed_ips": [{"subnet_id": subnet, "ip_address": ip}],
        "allowed_address_pairs": []})
}

/// A fake neutron-server for one DVR router: its subnets' ports, and the agent gateway port.
struct DvrServer {
    ports: Mutex<std::collections::BTreeMap<String, Vec<Value>>>,
    /// The subnets asked with get_ports_by_subnet, in order.
    port_calls: Mutex<Vec<String>>,
    gateway_calls: AtomicUsize,
    /// Calls that fail once: `get_agent_gateway_port`, `get_ports_by_subnet:<subnet>`.
    fail_once: Mutex<BTreeSet<String>>,
}

impl DvrServer {
    fn fails(&self, what: &str) -> bool {
        self.fail_once.lock().unwrap().remove(what)
    }
}

fn db_failure() -> Box<RemoteFailure> {
    RemoteFailure::new(
        "oslo_db.exception",
        "DBConnectionError",
        "the database is away",
    )
    .into()
}

impl Handler for DvrServer {
    fn version(&self) -> &str {
        "1.13"
    }

    fn handle(&self, req: &Request) -> Result<Value, Box<RemoteFailure>> {
        match req.method.as_str() {
            "get_router_ids" => Ok(json!([DVR_ROUTER])),
            "sync_routers" => Ok(json!([dvr_dict()])),
            "get_ports_by_subnet" => {
                assert_eq!(req.version, "1.2");
                assert_eq!(req.args["host"], "host-a");
                let subnet = req.args["subnet_id"].as_str().unwrap().to_owned();
                self.port_calls.lock().unwrap().push(subnet.clone());
                if self.fails(&format!("get_ports_by_subnet:{subnet}")) {
                    return Err(db_failure());
                }
                let ports = self.ports.lock().unwrap().get(&subnet).cloned();
                Ok(json!(ports.unwrap_or_default()))
            }
            "get_agent_gateway_port" => {
                assert_eq!(req.version, "1.2");
                assert_eq!(req.args["host"], "host-a");
                assert_eq!(req.args["network_id"], EXT_NET);
                self.gateway_calls.fetch_add(1, Ordering::SeqCst);
                if self.fails("get_agent_gateway_port") {
                    return Err(db_failure());
                }
                Ok(fg_port())
            }
            "update_floatingip_statuses" => Ok(Value::Null),
            other => Err(RemoteFailure::no_such_method(other).into()),
        }
    }
}

/// The ARP entries of the DVR router in the next state the agent gets that satisfies `want`.
fn next_arp(
    events: &mpsc::Receiver<FeedEvent>,
    within: Duration,
    want: impl Fn(&BTreeSet<(String, String, String)>) -> bool,
) -> BTreeSet<(String, String, String)> {
    let deadline = Instant::now() + within;
    let mut last = None;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if let Ok(FeedEvent::Config(c)) = events.recv_timeout(left) {
            let t = arp_of(&c);
            if want(&t) {
                return t;
            }
            last = Some(t);
        }
    }
    panic!("no state with the ARP entries wanted within {within:?}; last: {last:?}");
}

/// (subnet, address, MAC) of the DVR router's `_arp_table`, as the reconciler read it.
fn arp_of(c: &l3agent_router::config::HostConfig) -> BTreeSet<(String, String, String)> {
    let r = c
        .routers
        .iter()
        .find(|r| r.id.as_str() == DVR_ROUTER)
        .expect("the DVR router is in force");
    r.arp_table
        .iter()
        .map(|((s, ip), mac)| (s.to_string(), ip.to_string(), mac.to_string()))
        .collect()
}

fn arp(subnet: &str, ip: &str, mac: &str) -> (String, String, String) {
    (subnet.to_owned(), ip.to_owned(), mac.to_owned())
}

fn arp_payload(router: &str, ip: &str, mac: &str, subnet: &str) -> serde_json::Map<String, Value> {
    json!({"payload": {"router_id": router,
        "arp_table": {"ip_address": ip, "mac_address": mac, "subnet_id": subnet}}})
    .as_object()
    .unwrap()
    .clone()
}

/// A `dvr_snat` agent and one DVR router: its ARP table from `get_ports_by_subnet` (one call
/// per subnet), its `fg-` port from `get_agent_gateway_port`; both survive a failed call
/// (tried again after a backoff); `add_arp_entry` / `del_arp_entry` fanned out over AMQP
/// change the dict the agent gets; `routers_updated` asks nothing again; a full sync reads
/// every subnet again and repairs a lost `del_arp_entry`; `fipnamespace_delete_on_ext_net`
/// forgets the `fg-` port.
#[test]
fn dvr_arp_entries_follow_the_server_and_add_del_arp_entry_over_amqp() {
    let broker = Broker::start("nfrontdvr");
    let server_side = broker.connected();
    let server = Arc::new(DvrServer {
        ports: Mutex::new(
            [
                (
                    S1.to_owned(),
                    vec![
                        vm_port("fa:16:3e:00:00:10", S1, "192.0.2.10"),
                        // The router's own port: no entry.
                        json!({"device_owner": "network:router_interface_distributed",
                            "mac_address": "ca:fe:de:ad:be:ef",
                            "fixed_ips": [{"subnet_id": S1, "ip_address": "192.0.2.4"}]}),
                    ],
                ),
                (
                    S2.to_owned(),
                    vec![json!({"device_owner": "compute:nova",
                        "mac_address": "fa:16:3e:00:00:20",
                        "fixed_ips": [{"subnet_id": S2, "ip_address": "198.51.100.20"}],
                        "allowed_address_pairs": [{"ip_address": "198.51.100.99/32",
                            "mac_address": "fa:16:3e:00:00:99"}]})],
                ),
            ]
            .into_iter()
            .collect(),
        ),
        port_calls: Mutex::new(Vec::new()),
        gateway_calls: AtomicUsize::new(0),
        fail_once: Mutex::new(BTreeSet::from([
            "get_agent_gateway_port".to_owned(),
            format!("get_ports_by_subnet:{S2}"),
        ])),
    });
    let l3 = server_side
        .serve(L3_PLUGIN_TOPIC, "server1", server.clone())
        .unwrap();
    assert!(l3.wait_consuming(Duration::from_secs(10)));

    let set = IniSet {
        files: vec![ini::parse(
            Path::new("l3_agent.ini"),
            "[DEFAULT]\nhost = host-a\ninterface_driver = openvswitch\nagent_mode = dvr_snat\n",
        )
        .unwrap()],
    };
    let cfg = NeutronAgentConfig::from_ini(&set, "host-a").unwrap();
    let transport = broker.transport(Broker::options());
    let mut opts = FrontOptions::from_config(&cfg);
    opts.report_interval = None;
    opts.rpc_timeout = Duration::from_secs(5);
    opts.retry_base = Duration::from_millis(200);
    let stop = AtomicBool::new(false);
    let started = Front::start(&cfg, &transport, opts, &stop).unwrap();

    // The first state: S2's ports and the fg- port could not be got (the server failed):
    // the router is in force without them.
    let r = &started.initial.routers[0];
    assert_eq!(r.id.as_str(), DVR_ROUTER);
    assert!(r.agent_gateway().is_none());
    assert_eq!(
        arp_of(&started.initial),
        BTreeSet::from([arp(S1, "192.0.2.10", "fa:16:3e:00:00:10")])
    );
    // Tried again after a backoff: the router gets them.
    let events = &started.feed.events;
    let t = Instant::now();
    let done = loop {
        assert!(t.elapsed() < Duration::from_secs(10), "no retry");
        if let Ok(FeedEvent::Config(c)) = events.recv_timeout(Duration::from_millis(200)) {
            break c;
        }
    };
    eprintln!("completed after the failures: {:?}", t.elapsed());
    assert_eq!(
        done.routers[0].agent_gateway().map(|p| p.dev.as_str()),
        Some("fg-68db4b10-1b")
    );
    assert_eq!(
        arp_of(&done),
        BTreeSet::from([
            arp(S1, "192.0.2.10", "fa:16:3e:00:00:10"),
            arp(S2, "198.51.100.20", "fa:16:3e:00:00:20"),
            arp(S2, "198.51.100.99", "fa:16:3e:00:00:99"),
        ])
    );
    // One call per subnet per sync (S1 was not asked again), one per network.
    assert_eq!(*server.port_calls.lock().unwrap(), [S1, S2, S2]);
    assert_eq!(server.gateway_calls.load(Ordering::SeqCst), 2);

    let fanout = |method: &str, args: serde_json::Map<String, Value>| {
        server_side
            .fanout_cast("l3_agent", method, args, "1.2")
            .unwrap();
    };
    // add_arp_entry (fanout, as the server sends it): a new VM on S1.
    server
        .ports
        .lock()
        .unwrap()
        .get_mut(S1)
        .unwrap()
        .push(vm_port("fa:16:3e:00:00:11", S1, "192.0.2.11"));
    let t = Instant::now();
    fanout(
        "add_arp_entry",
        arp_payload(DVR_ROUTER, "192.0.2.11", "fa:16:3e:00:00:11", S1),
    );
    let got = next_arp(events, Duration::from_secs(10), |t| {
        t.contains(&arp(S1, "192.0.2.11", "fa:16:3e:00:00:11"))
    });
    eprintln!("add_arp_entry to the new state: {:?}", t.elapsed());
    assert_eq!(got.len(), 4, "{got:?}");

    // For a router not hosted here: ignored. del_arp_entry: the first VM is gone.
    server.ports.lock().unwrap().get_mut(S1).unwrap().remove(0);
    fanout(
        "add_arp_entry",
        arp_payload(
            "00000000-0000-4000-8000-0000000000ee",
            "192.0.2.12",
            "fa:16:3e:00:00:12",
            S1,
        ),
    );
    fanout(
        "del_arp_entry",
        arp_payload(DVR_ROUTER, "192.0.2.10", "fa:16:3e:00:00:10", S1),
    );
    let got = next_arp(events, Duration::from_secs(10), |t| {
        !t.contains(&arp(S1, "192.0.2.10", "fa:16:3e:00:00:10"))
    });
    assert_eq!(
        got,
        BTreeSet::from([
            arp(S1, "192.0.2.11", "fa:16:3e:00:00:11"),
            arp(S2, "198.51.100.20", "fa:16:3e:00:00:20"),
            arp(S2, "198.51.100.99", "fa:16:3e:00:00:99"),
        ])
    );

    // routers_updated: the dict again, its subnets are not asked again.
    server_side
        .cast(
            "l3_agent",
            Some("host-a"),
            "routers_updated",
            json!({"routers": [DVR_ROUTER]})
                .as_object()
                .unwrap()
                .clone(),
            "1.1",
        )
        .unwrap();
    let t = Instant::now();
    loop {
        assert!(t.elapsed() < Duration::from_secs(10), "no reconcile");
        match events.recv_timeout(Duration::from_millis(200)) {
            Ok(FeedEvent::Routers(ids)) if ids.iter().any(|i| i.as_str() == DVR_ROUTER) => break,
            Ok(FeedEvent::Config(c)) => panic!("the dict changed: {:?}", arp_of(&c)),
            _ => {}
        }
    }
    assert_eq!(server.port_calls.lock().unwrap().len(), 3);
    assert_eq!(server.gateway_calls.load(Ordering::SeqCst), 2);

    // A port goes without del_arp_entry (lost): the next full sync (agent_updated) reads
    // every subnet again and the stale entry goes.
    server.ports.lock().unwrap().get_mut(S2).unwrap().clear();
    server_side
        .cast(
            "l3_agent",
            Some("host-a"),
            "agent_updated",
            json!({"payload": {"admin_state_up": true}})
                .as_object()
                .unwrap()
                .clone(),
            "1.0",
        )
        .unwrap();
    let got = next_arp(events, Duration::from_secs(10), |t| {
        !t.iter().any(|(s, _, _)| s == S2)
    });
    assert_eq!(
        got,
        BTreeSet::from([arp(S1, "192.0.2.11", "fa:16:3e:00:00:11")])
    );
    assert_eq!(*server.port_calls.lock().unwrap(), [S1, S2, S2, S1, S2]);
    assert_eq!(
        server.gateway_calls.load(Ordering::SeqCst),
        3,
        "the agent gateway port is asked again at a full sync"
    );

    // fipnamespace_delete_on_ext_net: the port is forgotten and asked for again.
    fanout(
        "fipnamespace_delete_on_ext_net",
        json!({"ext_net_id": EXT_NET}).as_object().unwrap().clone(),
    );
    assert!(
        common::eventually(Duration::from_secs(10), || (server
            .gateway_calls
            .load(Ordering::SeqCst)
            == 4)
            .then_some(()))
        .is_some(),
        "get_agent_gateway_port after fipnamespace_delete_on_ext_net"
    );
    assert_eq!(server.port_calls.lock().unwrap().len(), 5);

    started.front.stop();
    transport.close(Duration::from_secs(5));
}
