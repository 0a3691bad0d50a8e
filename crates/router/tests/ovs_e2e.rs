//! The `openvswitch` interface driver against the real thing: each test starts its own OVS
//! (`scripts/testbed/ovs.sh`: ovsdb-server and ovs-vswitchd, userspace datapath, `br-int` in
//! standalone mode with the NORMAL action) inside a throwaway "host" namespace, and runs
//! `l3agent_router::host::apply` in process on a thread inside that namespace, as the binary
//! would run there. The test plays the L2 agent (neutron-openvswitch-agent): it plugs the VM
//! and external namespaces into br-int as internal ports, and moves every port, the router's
//! included, from the dead VLAN (4095) into its network's VLAN. Needs root: fails (never
//! skips) without it.
//!
//! Fixtures run `ovs-vsctl` and `ip` to set the scene and look at it; the code under test
//! talks to the OVSDB socket and rtnetlink only.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use l3agent_iptables_exec::runner::{random_fully_supported, system_backend};
use l3agent_iptables_exec::Backend;
use l3agent_router::change::Change;
use l3agent_router::compile::HostFacts;
use l3agent_router::config::{ConfigDoc, HostConfig};
use l3agent_router::host::{self, ApplyOptions, Health, HostReport, RouterStatus};
use l3agent_rtnl::announce::{AnnounceOptions, Announcer};
use l3agent_testkit::service::{require_ovs, Service};
use l3agent_testkit::{ok, sh, tcp_probe, TempDir, TestNs};
use l3agent_types::NetnsName;
use serde_json::{json, Value};

/// VLAN tags the "L2 agent" gives the two networks on br-int.
const TENANT_TAG: &str = "11";
const EXTERNAL_TAG: &str = "12";

const NET_T: &str = "0e5a7e11-0000-4000-8000-000000000011";
const NET_EX: &str = "0e5a7e12-0000-4000-8000-000000000012";
const SUB_T: &str = "0e5a5b11-0000-4000-8000-000000000011";
const SUB_EX: &str = "0e5a5b12-0000-4000-8000-000000000012";

/// The router namespaces a test's applies make: deleted on drop if the test failed before
/// removing them.
struct RouterNamespaces(Vec<String>);

impl Drop for RouterNamespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            if let Ok(n) = NetnsName::new("ns", n) {
                let _ = l3agent_rtnl::netns::delete(&n);
            }
        }
    }
}

/// OVS in a host namespace, and the namespaces plugged into it. Fields drop in order: the
/// router namespaces, the daemons, the host namespace (and every tap device still in it),
/// the VMs, then the directory.
struct Bed {
    routers: RouterNamespaces,
    svc: Service,
    host: TestNs,
    ext: TestNs,
    vm1: TestNs,
    vm2: TestNs,
    dir: TempDir,
    state: PathBuf,
}

impl Bed {
    /// OVS with br-int in a new host namespace; an external namespace (203.0.113.1, the
    /// external subnet's gateway) and two VMs (192.0.2.10 and .11, via the router at
    /// 192.0.2.1) plugged into br-int as internal ports in their networks' VLANs.
    fn new(tag: &str, router_ids: &[&str]) -> Bed {
        let host = TestNs::new(&format!("{tag}-h"));
        require_ovs();
        let dir = TempDir::new(tag);
        let svc = Service::start(&host, "ovs", &dir.0, &[("OVS_BRIDGES", "br-int")]);
        let state = dir.0.join("state");
        let bed = Bed {
            routers: RouterNamespaces(
                router_ids
                    .iter()
                    .map(|id| format!("qrouter-{id}"))
                    .collect(),
            ),
            svc,
            ext: TestNs::new(&format!("{tag}-x")),
            vm1: TestNs::new(&format!("{tag}-1")),
            vm2: TestNs::new(&format!("{tag}-2")),
            host,
            dir,
            state,
        };
        bed.plug(
            &bed.ext,
            "p-ext",
            EXTERNAL_TAG,
            "fa:16:3e:5a:ee:01",
            "203.0.113.1/24",
            None,
        );
        bed.plug(
            &bed.vm1,
            "p-vm1",
            TENANT_TAG,
            "fa:16:3e:5a:ee:11",
            "192.0.2.10/24",
            Some("192.0.2.1"),
        );
        bed.plug(
            &bed.vm2,
            "p-vm2",
            TENANT_TAG,
            "fa:16:3e:5a:ee:12",
            "192.0.2.11/24",
            Some("192.0.2.1"),
        );
        bed
    }

    fn sock(&self) -> PathBuf {
        self.dir.0.join("db.sock")
    }

    fn vsctl(&self, args: &[&str]) -> String {
        let db = format!("--db=unix:{}", self.sock().display());
        let mut argv = vec!["ovs-vsctl", &db, "--timeout=10"];
        argv.extend_from_slice(args);
        ok(&argv)
    }

    /// A VM's (or the external network's) port, as os-vif would plug it, wired by the L2
    /// agent into `tag`.
    fn plug(&self, ns: &TestNs, port: &str, tag: &str, mac: &str, addr: &str, gw: Option<&str>) {
        self.vsctl(&[
            "add-port",
            "br-int",
            port,
            &format!("tag={tag}"),
            "--",
            "set",
            "Interface",
            port,
            "type=internal",
        ]);
        self.host
            .ok(&["ip", "link", "set", port, "netns", &ns.name]);
        ns.ok(&["ip", "link", "set", port, "address", mac]);
        ns.ok(&["ip", "addr", "add", addr, "dev", port]);
        ns.ok(&["ip", "link", "set", port, "up"]);
        if let Some(gw) = gw {
            ns.ok(&["ip", "route", "add", "default", "via", gw]);
        }
    }

    /// The L2 agent's part for a router port: out of the dead VLAN into its network's.
    fn wire(&self, port: &str, tag: &str) {
        self.vsctl(&["set", "Port", port, &format!("tag={tag}")]);
    }

    /// `Open_vSwitch.next_cfg`: every write transaction of l3agent-ovsdb bumps it by one.
    fn next_cfg(&self) -> i64 {
        self.vsctl(&["get", "Open_vSwitch", ".", "next_cfg"])
            .trim()
            .parse()
            .unwrap()
    }

    fn ports(&self) -> Vec<String> {
        self.vsctl(&["list-ports", "br-int"])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// One column of a row, as `ovs-vsctl --data=json` shows it.
    fn column(&self, table: &str, row: &str, column: &str) -> Value {
        let out = self.vsctl(&[
            "--format=json",
            "--data=json",
            &format!("--columns={column}"),
            "list",
            table,
            row,
        ]);
        let v: Value = serde_json::from_str(&out).unwrap();
        v["data"][0][0].clone()
    }

    /// Configuration columns of a Port and its Interface (what must be identical between a
    /// port l3agent plugged and one Neutron's driver plugged).
    fn config_of(&self, port: &str) -> Value {
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
        json!({
            "port": list("Port", "tag,trunks,vlan_mode,external_ids,other_config,bond_mode,fake_bridge"),
            "interface": list("Interface", "type,external_ids,options,mtu_request,ofport_request,other_config,error"),
            "interfaces": self.vsctl(&["get", "Port", port, "interfaces"]).trim().split(',').count(),
        })
    }

    fn config(&self, routers: &[Value]) -> HostConfig {
        self.config_on("br-int", routers)
    }

    fn config_on(&self, bridge: &str, routers: &[Value]) -> HostConfig {
        let doc = json!({
            "agent": {"mode": "legacy", "host": "host-a", "state_path": self.state,
                      "interface_driver": "openvswitch", "integration_bridge": bridge,
                      "ovsdb": format!("unix:{}", self.sock().display())},
            "routers": routers,
        });
        let doc: ConfigDoc = serde_json::from_value(doc).unwrap();
        doc.validate().unwrap()
    }

    /// `l3agent apply`, in process, from the host namespace.
    fn apply(&self, cfg: &HostConfig) -> HostReport {
        let r = self
            .host
            .inside(|| {
                let announcer = Announcer::start(AnnounceOptions {
                    rounds: 1,
                    ..AnnounceOptions::default()
                });
                let opts = ApplyOptions::new(facts(), Arc::new(AtomicBool::new(false)));
                let make = host::real_sides(backend(), &announcer);
                host::apply(cfg, &opts, &make)
            })
            .unwrap_or_else(|e| panic!("apply: {e}"));
        assert!(!r.failed(), "{r:#?}");
        r
    }

    fn plan(&self, cfg: &HostConfig) -> HostReport {
        self.host
            .inside(|| {
                let announcer = Announcer::start(AnnounceOptions::default());
                let make = host::real_sides(backend(), &announcer);
                host::plan(cfg, &facts(), &make)
            })
            .unwrap_or_else(|e| panic!("plan: {e}"))
    }

    fn status(&self) -> Vec<host::RouterHealth> {
        self.host
            .inside(|| {
                let announcer = Announcer::start(AnnounceOptions::default());
                let make = host::real_sides(backend(), &announcer);
                host::status(&self.state, &make)
            })
            .unwrap_or_else(|e| panic!("status: {e}"))
    }

    /// `ip -n NS -j -d link show DEV` (`None`: no such device).
    fn link(&self, ns: &str, dev: &str) -> Option<Value> {
        let r = sh(&["ip", "-n", ns, "-d", "-j", "link", "show", dev]);
        if r.code != Some(0) {
            return None;
        }
        let v: Value = serde_json::from_str(&r.stdout).unwrap();
        v.get(0).cloned()
    }

    fn host_has(&self, dev: &str) -> bool {
        self.host.run(&["ip", "link", "show", dev]).code == Some(0)
    }
}

fn facts() -> HostFacts {
    HostFacts {
        random_fully: random_fully_supported(),
    }
}

fn backend() -> Backend {
    system_backend().unwrap_or(Backend::Nft)
}

/// A legacy router with a gateway on 203.0.113.0/24 (203.0.113.4), one interface on
/// 192.0.2.0/24 (192.0.2.1, MTU 1450) and the floating IP 203.0.113.2 of VM 192.0.2.10.
/// Ports: qr-<n>1…, qg-<n>9… where `n` is the router's tag (4 hex digits).
fn router(id: &str, n: &str) -> Value {
    json!({
        "id": id,
        "admin_state_up": true,
        "enable_snat": true,
        "gw_port": {
            "id": format!("{n}9000-0000-4000-8000-000000000009"),
            "network_id": NET_EX,
            "mac_address": "fa:16:3e:5a:00:09",
            "mtu": 1500,
            "fixed_ips": [{"ip_address": "203.0.113.4", "prefixlen": 24, "subnet_id": SUB_EX}],
            "subnets": [{"id": SUB_EX, "cidr": "203.0.113.0/24", "gateway_ip": "203.0.113.1"}],
        },
        "_interfaces": [{
            "id": format!("{n}1000-0000-4000-8000-000000000001"),
            "network_id": NET_T,
            "mac_address": "fa:16:3e:5a:00:01",
            "mtu": 1450,
            "fixed_ips": [{"ip_address": "192.0.2.1", "prefixlen": 24, "subnet_id": SUB_T}],
            "subnets": [{"id": SUB_T, "cidr": "192.0.2.0/24", "gateway_ip": "192.0.2.1"}],
        }],
        "_floatingips": [{
            "id": format!("{n}f000-0000-4000-8000-00000000000f"),
            "floating_ip_address": "203.0.113.2",
            "fixed_ip_address": "192.0.2.10",
            "port_id": format!("{n}e000-0000-4000-8000-00000000000e"),
        }],
    })
}

fn kinds(r: &HostReport) -> Vec<&'static str> {
    r.changes().map(Change::kind).collect()
}

/// Traffic both ways: a VM without a floating IP reaches the external network through SNAT
/// to the gateway address, one with a floating IP through it, and the external network
/// reaches that VM through its floating IP.
fn traffic(bed: &Bed, port: u16) {
    assert_eq!(
        tcp_probe(&bed.ext, &bed.vm2, "203.0.113.1", port).unwrap(),
        "203.0.113.4",
        "VM -> external through SNAT"
    );
    assert_eq!(
        tcp_probe(&bed.ext, &bed.vm1, "203.0.113.1", port + 1).unwrap(),
        "203.0.113.2",
        "VM with a floating IP -> external"
    );
    assert_eq!(
        tcp_probe(&bed.vm1, &bed.ext, "203.0.113.2", port + 2).unwrap(),
        "203.0.113.1",
        "external -> VM through its floating IP"
    );
}

#[test]
fn a_legacy_router_on_open_vswitch_plugs_carries_traffic_repairs_drift_and_goes_away() {
    const ID: &str = "0e5a0e2e-0001-4000-8000-000000000001";
    let ns = format!("qrouter-{ID}");
    let (qr, qg) = ("qr-0e5a1000-00", "qg-0e5a9000-00");
    let bed = Bed::new("ovse2e", &[ID]);
    let cfg = bed.config(&[router(ID, "0e5a")]);

    // An integration bridge OVS does not have is refused before anything changes.
    let e = bed
        .host
        .inside(|| {
            let announcer = Announcer::start(AnnounceOptions::default());
            let make = host::real_sides(backend(), &announcer);
            let opts = ApplyOptions::new(facts(), Arc::new(AtomicBool::new(false)));
            host::apply(
                &bed.config_on("br-nope", &[router(ID, "0e5a")]),
                &opts,
                &make,
            )
        })
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!(
            "agent.integration_bridge: bridge br-nope does not exist in the OVSDB at {}",
            bed.sock().display()
        )),
        "{e}"
    );
    assert!(!Path::new(&format!("/run/netns/{ns}")).exists());
    assert!(!bed.state.exists());

    // plan == apply, one OVSDB transaction for both ports.
    let planned: Vec<String> = bed.plan(&cfg).changes().map(ToString::to_string).collect();
    let cfg0 = bed.next_cfg();
    let t = Instant::now();
    let r = bed.apply(&cfg);
    println!("first apply: {:?}", t.elapsed());
    let applied: Vec<String> = r.changes().map(ToString::to_string).collect();
    assert_eq!(planned, applied);
    assert_eq!(bed.next_cfg() - cfg0, 1, "one transaction: {applied:#?}");
    assert!(kinds(&r).contains(&"ovs-port"));

    // OVSDB: what Neutron's OVSInterfaceDriver writes, compared with a port plugged with
    // its own command (ovs_lib.replace_port), then removed again.
    let ids = |port: &str| bed.column("Interface", port, "external_ids");
    assert_eq!(
        ids(qr),
        json!([
            "map",
            [
                ["attached-mac", "fa:16:3e:5a:00:01"],
                ["iface-id", "0e5a1000-0000-4000-8000-000000000001"],
                ["iface-status", "active"]
            ]
        ])
    );
    assert_eq!(
        ids(qg),
        json!([
            "map",
            [
                ["attached-mac", "fa:16:3e:5a:00:09"],
                ["iface-id", "0e5a9000-0000-4000-8000-000000000009"],
                ["iface-status", "active"]
            ]
        ])
    );
    bed.vsctl(&[
        "--",
        "add-port",
        "br-int",
        "qr-neutron",
        "--",
        "set",
        "Port",
        "qr-neutron",
        "tag=4095",
        "--",
        "set",
        "Interface",
        "qr-neutron",
        "type=internal",
        "external_ids:iface-id=0e5a1000-0000-4000-8000-000000000001",
        "external_ids:iface-status=active",
        "external_ids:attached-mac=fa:16:3e:5a:00:01",
    ]);
    let (ours, neutrons) = (bed.config_of(qr), bed.config_of("qr-neutron"));
    println!("ours:      {ours}\nneutron's: {neutrons}");
    assert_eq!(ours, neutrons);
    assert_eq!(ours["port"]["tag"], json!(4095));
    bed.vsctl(&["del-port", "br-int", "qr-neutron"]);

    // The devices: in the router namespace (not the host's), with MAC, MTU, addresses, up.
    for (dev, mac, mtu, addrs) in [
        (qr, "fa:16:3e:5a:00:01", 1450, vec!["192.0.2.1/24"]),
        (
            qg,
            "fa:16:3e:5a:00:09",
            1500,
            vec!["203.0.113.4/24", "203.0.113.2/32"],
        ),
    ] {
        let l = bed
            .link(&ns, dev)
            .unwrap_or_else(|| panic!("no {dev} in {ns}"));
        assert_eq!(l["linkinfo"]["info_kind"], "tun", "{l}");
        assert_eq!(l["address"], mac, "{l}");
        assert_eq!(l["mtu"], mtu, "{l}");
        assert!(l["flags"].as_array().unwrap().contains(&json!("UP")), "{l}");
        let a = ok(&["ip", "-n", &ns, "-br", "addr", "show", "dev", dev]);
        for addr in addrs {
            assert!(a.contains(addr), "{dev}: {a}");
        }
        assert!(!bed.host_has(dev), "{dev} is still in the host namespace");
    }
    let routes = ok(&["ip", "-n", &ns, "route"]);
    assert!(
        routes.contains(&format!("default via 203.0.113.1 dev {qg}")),
        "{routes}"
    );

    // The L2 agent wires the router's ports; traffic flows.
    bed.wire(qr, TENANT_TAG);
    bed.wire(qg, EXTERNAL_TAG);
    traffic(&bed, 6101);

    // A second apply changes nothing and writes nothing.
    let cfg1 = bed.next_cfg();
    let r = bed.apply(&cfg);
    assert!(!r.changed(), "{r:#?}");
    assert_eq!(bed.next_cfg(), cfg1);
    assert!(bed.status().iter().all(|h| h.health == Health::Ok));

    // Drift: the qr- port deleted from the bridge (its device goes with it). Status sees
    // it; apply plugs it again (one transaction) and re-attaches the device.
    bed.vsctl(&["del-port", "br-int", qr]);
    assert!(bed.link(&ns, qr).is_none(), "the device survived its port");
    let st = bed.status();
    assert!(
        st.iter().any(|h| h.health == Health::Drift
            && h.drift
                .iter()
                .any(|c| matches!(c, Change::PlugOvsPort { port, .. } if port.as_str() == qr))),
        "{st:#?}"
    );
    let cfg1 = bed.next_cfg();
    let r = bed.apply(&cfg);
    assert_eq!(bed.next_cfg() - cfg1, 1);
    assert!(
        r.changes()
            .any(|c| matches!(c, Change::AttachOvsDevice { dev, .. } if dev.as_str() == qr)),
        "{r:#?}"
    );
    assert!(bed.link(&ns, qr).is_some());
    assert_eq!(ids(qr)[1][1][1], "0e5a1000-0000-4000-8000-000000000001");
    bed.wire(qr, TENANT_TAG);
    traffic(&bed, 6111);

    // Drift: a wrong iface-id. Repaired in place: one change, the device and the VLAN tag
    // the L2 agent set stay, traffic never needs re-wiring.
    let ifindex = bed.link(&ns, qg).unwrap()["ifindex"].clone();
    bed.vsctl(&[
        "set",
        "Interface",
        qg,
        "external_ids:iface-id=somebody-else",
    ]);
    let r = bed.apply(&cfg);
    assert_eq!(kinds(&r), ["ovs-port"], "{r:#?}");
    assert_eq!(ids(qg)[1][1][1], "0e5a9000-0000-4000-8000-000000000009");
    assert_eq!(bed.link(&ns, qg).unwrap()["ifindex"], ifindex);
    assert_eq!(bed.vsctl(&["get", "Port", qg, "tag"]).trim(), EXTERNAL_TAG);
    traffic(&bed, 6121);

    // Drift: the router namespace deleted by hand. Its devices die with it, the ports stay
    // on the bridge without them: they are unplugged and plugged again (two transactions),
    // so that OVS makes new devices, which are attached to the new namespace.
    ok(&["ip", "netns", "delete", &ns]);
    let cfg1 = bed.next_cfg();
    let r = bed.apply(&cfg);
    assert_eq!(bed.next_cfg() - cfg1, 2, "{r:#?}");
    for dev in [qr, qg] {
        assert!(bed.link(&ns, dev).is_some(), "{dev}");
    }
    bed.wire(qr, TENANT_TAG);
    bed.wire(qg, EXTERNAL_TAG);
    traffic(&bed, 6131);
    assert!(!bed.apply(&cfg).changed());

    // Removal: the ports go (one transaction) with the namespace; nobody else's port is
    // touched.
    let cfg1 = bed.next_cfg();
    let r = bed.apply(&bed.config(&[]));
    assert_eq!(r.routers[0].status, RouterStatus::Removed, "{r:#?}");
    assert_eq!(kinds(&r), ["ovs-port", "ovs-port", "namespace"], "{r:#?}");
    assert_eq!(bed.next_cfg() - cfg1, 1);
    assert_eq!(bed.ports(), ["p-ext", "p-vm1", "p-vm2"]);
    assert!(!Path::new(&format!("/run/netns/{ns}")).exists());
    assert!(!bed.host_has(qr) && !bed.host_has(qg));
    assert!(!bed.apply(&bed.config(&[])).changed());
    let _ = (&bed.svc, &bed.routers);
}

/// Figures: the time to plug a router with many ports, and proof that it is one OVSDB
/// transaction whatever the number of ports (no process per port, ever).
#[test]
fn a_router_with_thirty_ports_is_plugged_in_one_transaction() {
    const ID: &str = "0e5a0e2e-0002-4000-8000-000000000002";
    const N: usize = 30;
    let ns = format!("qrouter-{ID}");
    let bed = Bed::new("ovse2e30", &[ID]);
    let mut r = router(ID, "0e5b");
    r["_floatingips"] = json!([]);
    // 198.51.100.0/24 cut into /29s, one per interface.
    let ports: Vec<Value> = (0..N)
        .map(|i| {
            let base = i * 8;
            let sub = format!("0e5b5b{i:02}-0000-4000-8000-0000000000{i:02}");
            json!({
                "id": format!("0e5c{i:04}-0000-4000-8000-0000000000{i:02}"),
                "network_id": NET_T,
                "mac_address": format!("fa:16:3e:5b:01:{i:02x}"),
                "mtu": 1450,
                "fixed_ips": [{"ip_address": format!("198.51.100.{}", base + 1), "prefixlen": 29, "subnet_id": sub}],
                "subnets": [{"id": sub, "cidr": format!("198.51.100.{base}/29"), "gateway_ip": format!("198.51.100.{}", base + 1)}],
            })
        })
        .collect();
    r["_interfaces"] = json!(ports);
    let cfg = bed.config(&[r]);
    let cfg0 = bed.next_cfg();
    let t = Instant::now();
    bed.apply(&cfg);
    let plug = t.elapsed();
    assert_eq!(
        bed.next_cfg() - cfg0,
        1,
        "one transaction for {} ports",
        N + 1
    );
    let in_ns = ok(&["ip", "-n", &ns, "-br", "link"]);
    assert_eq!(
        in_ns.lines().filter(|l| l.starts_with("qr-0e5c")).count(),
        N,
        "{in_ns}"
    );
    let t = Instant::now();
    let again = bed.apply(&cfg);
    let noop = t.elapsed();
    assert!(!again.changed());
    let cfg1 = bed.next_cfg();
    let t = Instant::now();
    bed.apply(&bed.config(&[]));
    let remove = t.elapsed();
    assert_eq!(bed.next_cfg() - cfg1, 1);
    assert_eq!(bed.ports(), ["p-ext", "p-vm1", "p-vm2"]);
    println!(
        "{} OVS ports: plugged and attached in {plug:?} (one OVSDB transaction), \
         verified unchanged in {noop:?}, removed in {remove:?} (one transaction)",
        N + 1
    );
    assert!(plug < Duration::from_secs(60));
}
