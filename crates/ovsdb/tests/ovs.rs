//! l3agent-ovsdb against a real ovsdb-server and ovs-vswitchd (userspace datapath), each test
//! with its own OVS started by `scripts/testbed/ovs.sh` inside its own network namespace, its
//! own directory under /tmp. Needs root: fails (never skips) without it.
//!
//! Fixtures run `ovs-vsctl`, `ip` and `kill` to set the scene and look at it; the library under
//! test only talks to the socket.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use l3agent_ovsdb::op::{row, Condition, Mutation, Op};
use l3agent_ovsdb::{
    ChangeSet, ExternalIds, InternalPort, MtuRequest, Ovsdb, OvsdbError, PortChange, PortRecord,
};
use l3agent_testkit::service::{require_ovs, Service};
use l3agent_testkit::{ok, sh, TempDir, TestNs};
use l3agent_types::{IfName, MacAddr, PortId};
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(10);

/// OVS running in a test namespace. Fields drop in order: the daemons stop, then the namespace
/// (and every tap device still in it) goes, then the directory.
struct Ovs {
    svc: Service,
    ns: TestNs,
    dir: TempDir,
}

impl Ovs {
    fn start(tag: &str, bridges: &str) -> Ovs {
        let ns = TestNs::new(tag);
        require_ovs();
        let dir = TempDir::new(tag);
        let svc = Service::start(&ns, "ovs", &dir.0, &[("OVS_BRIDGES", bridges)]);
        Ovs { svc, ns, dir }
    }

    fn sock(&self) -> PathBuf {
        self.dir.0.join("db.sock")
    }

    fn client(&self, timeout: Duration) -> Ovsdb {
        Ovsdb::connect(&self.sock(), timeout).unwrap()
    }

    fn vsctl(&self, args: &[&str]) -> String {
        let db = format!("--db=unix:{}", self.sock().display());
        let mut argv = vec!["ovs-vsctl", &db, "--timeout=10"];
        argv.extend_from_slice(args);
        ok(&argv)
    }

    /// Configuration columns of a Port and its Interface as `ovs-vsctl --format=json` shows
    /// them: what must be identical between our port and one Neutron's driver made.
    fn config_of(&self, port: &str) -> Value {
        const PORT: &str = "tag,trunks,vlan_mode,external_ids,other_config,bond_mode,lacp,qos,fake_bridge,protected,cvlans,mac";
        const IFACE: &str = "type,external_ids,options,mtu_request,ofport_request,other_config,ingress_policing_rate,ingress_policing_burst,mac,bfd,lldp,error";
        let list = |table: &str, cols: &str| -> Value {
            let out = self.vsctl(&[
                "--format=json",
                "--data=json",
                &format!("--columns={cols}"),
                "list",
                table,
                port,
            ]);
            let v: Value = serde_json::from_str(&out).unwrap();
            let heads: Vec<String> = serde_json::from_value(v["headings"].clone()).unwrap();
            let data = v["data"][0].as_array().unwrap().clone();
            heads
                .into_iter()
                .zip(data)
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        let interfaces = self.vsctl(&["get", "Port", port, "interfaces"]);
        json!({
            "port": list("Port", PORT),
            "interface": list("Interface", IFACE),
            "interfaces": interfaces.trim().split(',').count(),
        })
    }

    fn pid(&self, daemon: &str) -> String {
        std::fs::read_to_string(self.dir.0.join(format!("{daemon}.pid")))
            .unwrap()
            .trim()
            .to_owned()
    }

    fn list_ports(&self, bridge: &str) -> Vec<String> {
        self.vsctl(&["list-ports", bridge])
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

fn name(s: &str) -> IfName {
    IfName::new("name", s).unwrap()
}

fn mac(i: u16) -> MacAddr {
    let [a, b] = i.to_be_bytes();
    MacAddr::new([0xfa, 0x16, 0x3e, 0x00, a, b])
}

fn port_id(i: u16) -> PortId {
    PortId::new("id", &format!("87c7c2ae-d0ba-4691-820c-8053abf5{i:04x}")).unwrap()
}

fn neutron_port(n: &str, i: u16) -> InternalPort {
    InternalPort::neutron(name(n), &port_id(i), mac(i))
}

fn plug(bridge: &str, ports: impl IntoIterator<Item = InternalPort>) -> ChangeSet {
    let mut cs = ChangeSet::new(name(bridge));
    for p in ports {
        cs.plug(p).unwrap();
    }
    cs
}

fn unplug(bridge: &str, names: &[&str]) -> ChangeSet {
    let mut cs = ChangeSet::new(name(bridge));
    for n in names {
        cs.unplug(name(n)).unwrap();
    }
    cs
}

/// `ip -d -j link show DEV` in `ns`: the device, or None.
fn link(ns: &TestNs, dev: &str) -> Option<Value> {
    let r = ns.run(&["ip", "-d", "-j", "link", "show", dev]);
    if r.code != Some(0) {
        return None;
    }
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    v.get(0).cloned()
}

fn record<'a>(ports: &'a [PortRecord], n: &str) -> &'a PortRecord {
    ports
        .iter()
        .find(|p| p.name == n)
        .unwrap_or_else(|| panic!("no port {n} in {ports:?}"))
}

#[test]
fn an_internal_port_appears_as_a_tap_device_exactly_as_neutrons_driver_makes_it() {
    let ovs = Ovs::start("ovs-plug", "br-int");
    let mut db = ovs.client(TIMEOUT);
    assert!(db.bridge_exists(&name("br-int")).unwrap());
    assert!(!db.bridge_exists(&name("br-nope")).unwrap());

    let a = db
        .apply(&plug("br-int", [neutron_port("qr-a", 1)]))
        .unwrap();
    assert_eq!(a.changes, vec![PortChange::Created { port: name("qr-a") }]);
    assert!(a.next_cfg.is_some());

    // The tap device exists when apply returns (it waited for ovs-vswitchd).
    let dev = link(&ovs.ns, "qr-a").expect("qr-a exists in the namespace");
    assert_eq!(dev["linkinfo"]["info_kind"], "tun", "{dev}");
    assert_eq!(dev["linkinfo"]["info_data"]["type"], "tap", "{dev}");
    assert!(ovs
        .ns
        .ok(&["ip", "-j", "link", "show", "qr-a"])
        .contains("\"ifname\":\"qr-a\""));

    // What OVSInterfaceDriver.plug_new -> ovs_lib.replace_port writes, done with ovs-vsctl
    // (its del_port is a separate transaction; the outcome is the same).
    let id = port_id(1);
    let m = mac(1).to_string();
    ovs.vsctl(&["--", "--if-exists", "del-port", "qr-n"]);
    ovs.vsctl(&[
        "--",
        "add-port",
        "br-int",
        "qr-n",
        "--",
        "set",
        "Port",
        "qr-n",
        "tag=4095",
        "--",
        "set",
        "Interface",
        "qr-n",
        "type=internal",
        &format!("external_ids:iface-id={id}"),
        "external_ids:iface-status=active",
        &format!("external_ids:attached-mac={m}"),
    ]);
    let ours = ovs.config_of("qr-a");
    let neutrons = ovs.config_of("qr-n");
    println!("ours:     {ours}\nneutron's: {neutrons}");
    assert_eq!(ours, neutrons);
    assert_eq!(ours["port"]["tag"], json!(4095));
    assert_eq!(
        ours["interface"]["external_ids"],
        json!([
            "map",
            [
                ["attached-mac", m],
                ["iface-id", id.as_str()],
                ["iface-status", "active"]
            ]
        ])
    );

    // And read back through the library, both look the same.
    let ports = db.ports(&name("br-int")).unwrap();
    assert_eq!(
        ports.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        vec!["br-int", "qr-a", "qr-n"]
    );
    let (a, n) = (record(&ports, "qr-a"), record(&ports, "qr-n"));
    assert_eq!(a.interface_type, "internal");
    assert_eq!(a.tag, Some(4095));
    assert_eq!(a.interfaces, 1);
    assert!(a.ofport.is_some_and(|o| o > 0), "{a:?}");
    assert_eq!(a.error, None);
    assert_eq!(
        (&a.interface_type, &a.external_ids, a.mtu_request, a.tag),
        (&n.interface_type, &n.external_ids, n.mtu_request, n.tag)
    );
    assert!(neutron_port("qr-a", 1).drift(a).is_empty());
}

#[test]
fn re_adding_is_idempotent_and_writes_nothing() {
    let ovs = Ovs::start("ovs-idem", "br-int");
    let mut db = ovs.client(TIMEOUT);
    let cs = plug("br-int", [neutron_port("qr-a", 1), neutron_port("qr-b", 2)]);
    assert_eq!(db.apply(&cs).unwrap().changes.len(), 2);
    let before = db.ports(&name("br-int")).unwrap();
    let cfg = ovs.vsctl(&["get", "Open_vSwitch", ".", "next_cfg"]);
    for _ in 0..3 {
        let again = db.apply(&cs).unwrap();
        assert_eq!(again.changes, vec![]);
        assert_eq!(again.next_cfg, None);
        assert_eq!(again.attempts, 1);
    }
    // Nothing was written: next_cfg did not move, no port was duplicated or recreated.
    assert_eq!(ovs.vsctl(&["get", "Open_vSwitch", ".", "next_cfg"]), cfg);
    assert_eq!(db.ports(&name("br-int")).unwrap(), before);
    assert_eq!(ovs.list_ports("br-int"), vec!["qr-a", "qr-b"]);
}

#[test]
fn a_device_moved_into_a_router_namespace_keeps_working_and_drift_is_repaired_around_it() {
    let ovs = Ovs::start("ovs-move", "br-int");
    let ra = TestNs::new("ovs-ra");
    let rb = TestNs::new("ovs-rb");
    let mut db = ovs.client(TIMEOUT);
    let cs = plug("br-int", [neutron_port("qr-a", 1), neutron_port("qr-b", 2)]);
    db.apply(&cs).unwrap();

    // The agent's part: move each device into its router namespace and configure it.
    for (dev, ns, i, addr) in [
        ("qr-a", &ra, 1, "192.0.2.1/24"),
        ("qr-b", &rb, 2, "192.0.2.2/24"),
    ] {
        ovs.ns.ok(&["ip", "link", "set", dev, "netns", &ns.name]);
        ns.ok(&["ip", "link", "set", dev, "address", &mac(i).to_string()]);
        ns.ok(&["ip", "addr", "add", addr, "dev", dev]);
        ns.ok(&["ip", "link", "set", dev, "up"]);
    }
    assert!(link(&ovs.ns, "qr-a").is_none());
    // The L2 agent's part: take both out of the dead VLAN into one network's VLAN.
    ovs.vsctl(&[
        "set", "Port", "qr-a", "tag=1", "--", "set", "Port", "qr-b", "tag=1",
    ]);
    let seen = l3agent_testkit::tcp_probe(&rb, &ra, "192.0.2.2", 5001).unwrap();
    assert_eq!(seen, "192.0.2.1");
    let ifindex = link(&ra, "qr-a").unwrap()["ifindex"].clone();
    let ofport = record(&db.ports(&name("br-int")).unwrap(), "qr-a").ofport;

    // Someone edits our keys and MTU request and adds a key of their own.
    ovs.vsctl(&[
        "set",
        "Interface",
        "qr-a",
        "external_ids:iface-id=somebody-else",
        "external_ids:foreign=kept",
        "mtu_request=1400",
        "--",
        "remove",
        "Interface",
        "qr-a",
        "external_ids",
        "iface-status",
    ]);
    let drifted = record(&db.ports(&name("br-int")).unwrap(), "qr-a").clone();
    assert_eq!(
        neutron_port("qr-a", 1).drift(&drifted),
        vec![
            "mtu_request",
            "external_ids:iface-id",
            "external_ids:iface-status"
        ]
    );

    let fixed = db.apply(&cs).unwrap();
    assert_eq!(
        fixed.changes,
        vec![PortChange::Updated {
            port: name("qr-a"),
            what: vec![
                "mtu_request".into(),
                "external_ids:iface-id".into(),
                "external_ids:iface-status".into()
            ]
        }]
    );
    let ports = db.ports(&name("br-int")).unwrap();
    let a = record(&ports, "qr-a");
    assert!(neutron_port("qr-a", 1).drift(a).is_empty(), "{a:?}");
    assert_eq!(
        a.external_ids.get("foreign").map(String::as_str),
        Some("kept")
    );
    assert_eq!(a.tag, Some(1), "the L2 agent's tag stays");
    assert_eq!(
        a.ofport, ofport,
        "the port was updated in place, not recreated"
    );
    assert_eq!(link(&ra, "qr-a").unwrap()["ifindex"], ifindex);
    assert_eq!(
        l3agent_testkit::tcp_probe(&rb, &ra, "192.0.2.2", 5002).unwrap(),
        "192.0.2.1"
    );
    assert_eq!(db.apply(&cs).unwrap().changes, vec![]);
}

#[test]
fn unplugging_removes_the_port_and_its_device_even_from_another_namespace() {
    let ovs = Ovs::start("ovs-del", "br-int");
    let router = TestNs::new("ovs-router");
    let mut db = ovs.client(TIMEOUT);
    db.apply(&plug(
        "br-int",
        [neutron_port("qr-a", 1), neutron_port("qr-b", 2)],
    ))
    .unwrap();
    ovs.ns
        .ok(&["ip", "link", "set", "qr-a", "netns", &router.name]);
    assert!(link(&router, "qr-a").is_some());

    let gone = db
        .apply(&unplug("br-int", &["qr-a", "qr-b", "qr-never"]))
        .unwrap();
    assert_eq!(
        gone.changes,
        vec![
            PortChange::Deleted { port: name("qr-a") },
            PortChange::Deleted { port: name("qr-b") }
        ]
    );
    assert!(ovs.list_ports("br-int").is_empty());
    assert_eq!(
        ovs.vsctl(&["--columns=name", "list", "Interface"])
            .lines()
            .filter(|l| !l.is_empty())
            .count(),
        1,
        "only br-int's own interface is left"
    );
    assert!(
        link(&router, "qr-a").is_none(),
        "the tap in the router namespace is gone"
    );
    assert!(link(&ovs.ns, "qr-b").is_none());
    // Absent is a no-op.
    let again = db.apply(&unplug("br-int", &["qr-a"])).unwrap();
    assert_eq!((again.changes, again.next_cfg), (vec![], None));
}

#[test]
fn a_port_on_another_bridge_is_refused_unless_moving_is_allowed() {
    let ovs = Ovs::start("ovs-2br", "br-int br-ex");
    let mut db = ovs.client(TIMEOUT);
    db.apply(&plug("br-ex", [neutron_port("qg-a", 1)])).unwrap();
    ovs.vsctl(&["set", "Port", "qg-a", "tag=7"]);

    let mut cs = plug("br-int", [neutron_port("qr-b", 2), neutron_port("qg-a", 1)]);
    let e = db.apply(&cs).unwrap_err();
    assert!(matches!(e, OvsdbError::PortOnOtherBridge { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "port qg-a is on bridge br-ex, not on br-int (allow moving, or unplug it there first)"
    );
    // Nothing of the change set happened (qr-b neither).
    assert!(ovs.list_ports("br-int").is_empty());
    assert_eq!(ovs.list_ports("br-ex"), vec!["qg-a"]);
    // Unplugging it from br-int is a no-op: it is not there.
    assert_eq!(
        db.apply(&unplug("br-int", &["qg-a"])).unwrap().changes,
        vec![]
    );
    assert_eq!(ovs.list_ports("br-ex"), vec!["qg-a"]);

    cs.move_from_other_bridges(true);
    let moved = db.apply(&cs).unwrap();
    assert_eq!(
        moved.changes,
        vec![
            PortChange::Moved {
                port: name("qg-a"),
                from: "br-ex".into()
            },
            PortChange::Created { port: name("qr-b") },
        ]
    );
    assert_eq!(ovs.list_ports("br-int"), vec!["qg-a", "qr-b"]);
    assert!(ovs.list_ports("br-ex").is_empty());
    let qg = record(&db.ports(&name("br-int")).unwrap(), "qg-a").clone();
    assert_eq!(qg.tag, Some(4095), "parked in the dead VLAN again");
    assert_eq!(qg.error, None);
    assert!(qg.ofport.is_some_and(|o| o > 0), "{qg:?}");
    assert!(link(&ovs.ns, "qg-a").is_some());
    assert_eq!(db.apply(&cs).unwrap().changes, vec![]);
}

#[test]
fn bad_names_and_ids_are_refused_before_anything_is_sent() {
    let ovs = Ovs::start("ovs-bad", "br-int");
    let dump = || {
        ovs.vsctl(&[
            "--columns=_uuid,name,external_ids,mtu_request",
            "list",
            "Interface",
        ])
    };
    let before = dump();

    let e = IfName::new("ports[0].name", "qr-1a2b3c4d-5e6f").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("ports[0].name: invalid value \"qr-1a2b3c4d-5e6f\""),
        "{e}"
    );
    assert!(IfName::new("ports[0].name", "qr-a\nb").is_err());
    assert!(PortId::new("ports[0].id", "--help").is_err());
    assert!(MacAddr::parse_unicast("ports[0].mac", "ff:ff:ff:ff:ff:ff").is_err());
    let mut ids = ExternalIds::new();
    let e = ids
        .insert("ports[0].external_ids", "iface-id", "x\u{202e}y")
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "ports[0].external_ids[iface-id]: invalid value \"x\\u{202e}y\": control or format character '\\u{202e}' is not allowed"
    );
    assert!(ids.insert("ports[0].external_ids", "a=b", "v").is_err());
    assert!(MtuRequest::new("ports[0].mtu", 70_000).is_err());
    let mut cs = plug("br-int", [neutron_port("qr-a", 1)]);
    assert!(matches!(
        cs.unplug(name("qr-a")),
        Err(OvsdbError::DuplicatePort { .. })
    ));
    // The one valid change set is for a bridge that does not exist: refused, nothing written.
    let mut db = ovs.client(TIMEOUT);
    let e = db
        .apply(&plug("br-nope", [neutron_port("qr-a", 1)]))
        .unwrap_err();
    assert_eq!(e.to_string(), "bridge \"br-nope\" does not exist");
    assert!(matches!(
        db.ports(&name("br-nope")),
        Err(OvsdbError::NoBridge { .. })
    ));
    assert_eq!(dump(), before);
}

#[test]
fn a_refused_operation_names_itself_and_carries_the_servers_error_and_details() {
    let ovs = Ovs::start("ovs-refuse", "br-int");
    let mut db = ovs.client(TIMEOUT);
    db.apply(&plug("br-int", [neutron_port("qr-a", 1)]))
        .unwrap();
    // A second Interface row named qr-a breaks the table's name index.
    let ops = [
        Op::Comment("test".into()),
        Op::Insert {
            table: "Interface",
            row: row([("name", json!("qr-a"))]),
            uuid_name: Some("dup".into()),
            what: "qr-a (again)".into(),
        },
        Op::Insert {
            table: "Port",
            row: row([
                ("name", json!("qr-dup")),
                ("interfaces", json!(["named-uuid", "dup"])),
            ]),
            uuid_name: Some("dupport".into()),
            what: "qr-dup".into(),
        },
        // Referenced from the bridge, or both rows would be garbage-collected before the
        // index is checked.
        Op::Mutate {
            table: "Bridge",
            conditions: vec![Condition::eq("name", json!("br-int"))],
            mutations: vec![Mutation::insert("ports", json!(["named-uuid", "dupport"]))],
            what: "br-int".into(),
        },
    ];
    let e = db.transact(&ops).unwrap_err();
    println!("{e}");
    match &e {
        OvsdbError::Operation {
            index,
            op,
            error,
            details,
        } => {
            assert_eq!(error, "constraint violation");
            assert!(details.as_deref().unwrap_or("").contains("\"name\""), "{e}");
            // A commit-time check: reported after the last operation.
            assert_eq!((*index, op.as_str()), (ops.len(), "commit"), "{e}");
        }
        other => panic!("{other}"),
    }
    // Operations the server refuses by themselves: named by index and what they were.
    let e = db
        .transact(&[
            Op::Comment("ok".into()),
            Op::Update {
                table: "Interface",
                conditions: vec![],
                row: row([("no_such_column", json!(1))]),
                what: "every row".into(),
            },
        ])
        .unwrap_err();
    println!("{e}");
    assert!(
        e.to_string()
            .starts_with("ovsdb-server refused operation 1 (update Interface every row): "),
        "{e}"
    );
    let e = db
        .transact(&[Op::Update {
            table: "Port",
            conditions: vec![Condition::eq("name", json!("qr-a"))],
            row: row([("tag", json!(5000))]),
            what: "qr-a".into(),
        }])
        .unwrap_err();
    println!("{e}");
    match &e {
        OvsdbError::Operation {
            index,
            op,
            error,
            details,
        } => {
            assert_eq!(
                (*index, op.as_str(), error.as_str()),
                (0, "update Port qr-a", "constraint violation")
            );
            assert!(details.as_deref().unwrap_or("").contains("4095"), "{e}");
        }
        other => panic!("{other}"),
    }
    // A guard planned from rows that changed since: the server refuses it as "timed out".
    let e = db
        .transact(&[Op::Wait {
            table: "Port",
            conditions: vec![Condition::eq("name", json!("qr-a"))],
            columns: vec!["_uuid"],
            rows: vec![],
            what: "qr-a absent".into(),
        }])
        .unwrap_err();
    assert!(
        matches!(&e, OvsdbError::Operation { index: 0, error, .. } if error == "timed out"),
        "{e}"
    );
    // The connection is fine afterwards.
    assert!(db.bridge_exists(&name("br-int")).unwrap());
}

#[test]
fn a_stopped_server_times_out_and_a_killed_one_fails_fast_never_hanging() {
    let ovs = Ovs::start("ovs-kill", "br-int");
    let pid = ovs.pid("ovsdb-server");
    let short = Duration::from_millis(1500);
    let mut db = ovs.client(short);
    db.apply(&plug("br-int", [neutron_port("qr-a", 1)]))
        .unwrap();

    // Stopped: a timeout, within the bound.
    ok(&["kill", "-STOP", &pid]);
    let t = Instant::now();
    let e = db.ports(&name("br-int")).unwrap_err();
    let took = t.elapsed();
    ok(&["kill", "-CONT", &pid]);
    println!("stopped server: {e} after {took:?}");
    assert!(matches!(e, OvsdbError::Timeout { .. }), "{e}");
    assert!(
        took >= short && took < short + Duration::from_secs(1),
        "{took:?}"
    );
    // The late answer is dropped; the connection still works.
    assert_eq!(db.ports(&name("br-int")).unwrap().len(), 2);

    // Killed while a change set waits for its answer: an error at once, not at the timeout.
    let mut db = ovs.client(Duration::from_secs(8));
    ok(&["kill", "-STOP", &pid]);
    let waiter = std::thread::spawn(move || {
        let t = Instant::now();
        let r = db.apply(&plug("br-int", [neutron_port("qr-b", 2)]));
        (r, t.elapsed(), db)
    });
    std::thread::sleep(Duration::from_millis(300));
    ok(&["kill", "-KILL", &pid]);
    let (r, took, mut db) = waiter.join().unwrap();
    let e = r.unwrap_err();
    println!("killed server: {e} after {took:?}");
    assert!(
        matches!(e, OvsdbError::Closed { .. } | OvsdbError::Io { .. }),
        "{e}"
    );
    assert!(took < Duration::from_secs(3), "{took:?}");
    // The kernel closes a killed process's descriptors one by one: the listening socket may
    // outlive the connection briefly. Wait (bounded) until the process is gone.
    let gone = Instant::now();
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            gone.elapsed() < Duration::from_secs(5),
            "ovsdb-server {pid} still there"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Nobody listens any more: the reconnect fails at once, naming the socket.
    let t = Instant::now();
    let e = db.bridge_exists(&name("br-int")).unwrap_err();
    println!("after the kill: {e}");
    assert!(matches!(e, OvsdbError::Connect { .. }), "{e}");
    assert!(e.to_string().contains("db.sock"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(1));

    // A new ovsdb-server on the same database and socket: the same client reconnects on its
    // next call, and the change that was in flight when the old one died never committed.
    let dir = ovs.dir.0.display().to_string();
    ovs.ns.ok(&[
        "ovsdb-server",
        &format!("{dir}/conf.db"),
        &format!("--remote=punix:{dir}/db.sock"),
        &format!("--pidfile={dir}/ovsdb-server.pid"),
        &format!("--unixctl={dir}/ovsdb-server.ctl"),
        &format!("--log-file={dir}/ovsdb-server.log"),
        "-vconsole:off",
        "-vsyslog:off",
        "--detach",
        "--no-chdir",
    ]);
    assert!(db.bridge_exists(&name("br-int")).unwrap());
    assert_eq!(ovs.list_ports("br-int"), vec!["qr-a"]);
    let _ = &ovs.svc;
}

#[test]
fn two_hundred_ports_in_one_transaction_against_two_hundred_ovs_vsctl_processes() {
    const N: u16 = 200;
    let ovs = Ovs::start("ovs-200", "br-int");
    let mut db = ovs.client(Duration::from_secs(60));
    let names: Vec<String> = (0..N).map(|i| format!("qr-a{i:03}")).collect();
    let cs = plug(
        "br-int",
        names
            .iter()
            .enumerate()
            .map(|(i, n)| neutron_port(n, i as u16)),
    );

    let mut no_wait = cs.clone();
    no_wait.wait_for_vswitchd(false);
    let t = Instant::now();
    let a = db.apply(&no_wait).unwrap();
    let ours_add_commit = t.elapsed();
    db.wait_for_vswitchd(a.next_cfg.unwrap()).unwrap();
    let ours_add = t.elapsed();
    assert_eq!(a.changes.len(), usize::from(N));
    let links: Value = serde_json::from_str(&ovs.ns.ok(&["ip", "-j", "link", "show"])).unwrap();
    let taps = links
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["ifname"].as_str().is_some_and(|n| n.starts_with("qr-a")))
        .count();
    assert_eq!(taps, usize::from(N));
    let t = Instant::now();
    assert_eq!(db.apply(&cs).unwrap().changes, vec![]);
    let ours_noop = t.elapsed();
    let names_ref: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut del = unplug("br-int", &names_ref);
    del.wait_for_vswitchd(false);
    let t = Instant::now();
    let d = db.apply(&del).unwrap();
    let ours_del_commit = t.elapsed();
    assert_eq!(d.changes.len(), usize::from(N));
    db.wait_for_vswitchd(d.next_cfg.unwrap()).unwrap();
    let ours_del = t.elapsed();

    // The same ports the way a shell script (or an older agent) would: one ovs-vsctl each,
    // each waiting for ovs-vswitchd like ours does.
    let db_arg = format!("--db=unix:{}", ovs.sock().display());
    let t = Instant::now();
    for i in 0..N {
        let n = format!("qr-v{i:03}");
        let r = sh(&[
            "ovs-vsctl",
            &db_arg,
            "--timeout=10",
            "--",
            "add-port",
            "br-int",
            &n,
            "--",
            "set",
            "Port",
            &n,
            "tag=4095",
            "--",
            "set",
            "Interface",
            &n,
            "type=internal",
            &format!("external_ids:iface-id={}", port_id(i)),
            "external_ids:iface-status=active",
            &format!("external_ids:attached-mac={}", mac(i)),
        ]);
        assert_eq!(r.code, Some(0), "{}", r.stderr);
    }
    let vsctl_add = t.elapsed();
    let t = Instant::now();
    for i in 0..N {
        let n = format!("qr-v{i:03}");
        let r = sh(&[
            "ovs-vsctl",
            &db_arg,
            "--timeout=10",
            "del-port",
            "br-int",
            &n,
        ]);
        assert_eq!(r.code, Some(0), "{}", r.stderr);
    }
    let vsctl_del = t.elapsed();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{N} internal ports on br-int (userspace datapath; done = ovs-vswitchd has applied it):\n\
         \x20 plug:   one transaction: committed {:>7.1} ms, done {:>7.1} ms | {N} ovs-vsctl: {:>7.1} ms ({:.1}x)\n\
         \x20 unplug: one transaction: committed {:>7.1} ms, done {:>7.1} ms | {N} ovs-vsctl: {:>7.1} ms ({:.1}x)\n\
         \x20 re-apply with nothing to do: {:.1} ms (one read, no write)",
        ms(ours_add_commit),
        ms(ours_add),
        ms(vsctl_add),
        ms(vsctl_add) / ms(ours_add),
        ms(ours_del_commit),
        ms(ours_del),
        ms(vsctl_del),
        ms(vsctl_del) / ms(ours_del),
        ms(ours_noop),
    );
}

#[test]
fn concurrent_writers_of_the_same_ports_all_succeed_and_converge() {
    use std::sync::{Arc, Barrier};
    let ovs = Ovs::start("ovs-race", "br-int");
    let barrier = Arc::new(Barrier::new(2));
    let sock = ovs.sock();
    // Two agents' change sets overlap on qr-r020..qr-r039.
    let workers: Vec<_> = (0..2u16)
        .map(|k| {
            let barrier = barrier.clone();
            let sock = sock.clone();
            std::thread::spawn(move || {
                let mut db = Ovsdb::connect(&sock, TIMEOUT).unwrap();
                let names: Vec<String> = (k * 20..k * 20 + 40)
                    .map(|i| format!("qr-r{i:03}"))
                    .collect();
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                let plugs = plug(
                    "br-int",
                    names
                        .iter()
                        .enumerate()
                        .map(|(j, n)| neutron_port(n, k * 20 + j as u16)),
                );
                let unplugs = unplug("br-int", &refs);
                let mut attempts = Vec::new();
                for round in 0..4 {
                    barrier.wait();
                    let a = db
                        .apply(&plugs)
                        .unwrap_or_else(|e| panic!("agent {k} plug {round}: {e}"));
                    attempts.push(a.attempts);
                    barrier.wait();
                    if round < 3 {
                        let a = db
                            .apply(&unplugs)
                            .unwrap_or_else(|e| panic!("agent {k} unplug {round}: {e}"));
                        attempts.push(a.attempts);
                    }
                }
                attempts
            })
        })
        .collect();
    let attempts: Vec<Vec<u32>> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    println!("attempts per apply (more than 1: a guard caught the other writer): {attempts:?}");
    let ports = ovs.list_ports("br-int");
    assert_eq!(ports.len(), 60, "{ports:?}");
    assert_eq!(
        ovs.vsctl(&["--columns=name", "list", "Interface"])
            .lines()
            .filter(|l| !l.is_empty())
            .count(),
        61
    );
    let mut db = ovs.client(TIMEOUT);
    let records = db.ports(&name("br-int")).unwrap();
    for i in 0..60u16 {
        let r = record(&records, &format!("qr-r{i:03}"));
        assert!(neutron_port(&r.name, i).drift(r).is_empty(), "{r:?}");
    }
}
