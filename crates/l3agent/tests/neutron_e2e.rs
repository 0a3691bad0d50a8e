//! `l3agent agent --config-file neutron.conf --config-file l3_agent.ini` against the real
//! thing: RabbitMQ, MariaDB and neutron-server 29.0.0 (`scripts/testbed/`) and Open vSwitch
//! (`ovs.sh`, userspace datapath, `br-int` in standalone NORMAL mode) in one throwaway "host"
//! namespace, the agent started there with Neutron-style INI files. Everything is driven
//! through Neutron's REST API only, and checked in the kernel, in the OVSDB and in the API:
//!
//! 1. the agent appears alive as an "L3 agent";
//! 2. a router with a gateway and an interface is scheduled to it: its `qrouter-` namespace
//!    holds exactly the addresses Neutron allocated, on OVS internal ports whose
//!    `iface-id`/`attached-mac` are the Neutron ports'; a VM namespace (the VM port's MAC and
//!    IP on br-int) reaches an external namespace through SNAT;
//! 3. a floating IP associated to the VM port gets its DNAT/SNAT rules (time measured from
//!    the REST call) and becomes ACTIVE in the API; traffic both ways through it; the state
//!    reports count the router, its gateway, its interface and its floating IP;
//! 4. restarting the agent leaves the router untouched (same devices, same rules, no OVSDB
//!    write) and traffic flowing;
//! 5. RabbitMQ stopped, the floating IP disassociated meanwhile, RabbitMQ started again: the
//!    router was never torn down, the agent is alive again and the change converges (the
//!    DNAT goes);
//! 6. removing the interface removes the `qr-` port (kernel and OVSDB); deleting the router
//!    removes the namespace and the `qg-` port.
//!
//! The test plays the L2 agent: it moves the router's ports out of the dead VLAN into their
//! network's VLAN. Every wait is bounded; each phase prints its duration. Needs root, the
//! testbed's packages and the venv (built first, outside the namespace, by `venv.sh`).
#![allow(clippy::disallowed_methods)] // the test runs the binary under test and fixtures

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use l3agent_testkit::neutron_api::{id, NeutronApi, PortSpec};
use l3agent_testkit::service::{testbed_dir, Service};
use l3agent_testkit::{ok, sh, tcp_probe, unique, TestNs};
use serde_json::Value;

const API_PORT: u16 = 9696;
/// VLAN tags the "L2 agent" gives the two networks on br-int.
const TENANT_TAG: &str = "11";
const EXTERNAL_TAG: &str = "12";
const VM_IP: &str = "192.0.2.10";
const EXT_IP: &str = "203.0.113.1";

fn phase<T>(name: &str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let v = f();
    eprintln!("phase {name}: {:.1} s", t.elapsed().as_secs_f64());
    v
}

/// The test's directory under /tmp (short: it holds unix sockets); kept when the test fails
/// or `L3AGENT_TEST_KEEP` is set.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("L3AGENT_TEST_KEEP").is_some() {
            eprintln!("logs kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Router namespaces the agent made: deleted on drop if the test ends before the agent
/// removed them.
#[derive(Default)]
struct RouterNamespaces(Mutex<Vec<String>>);

impl Drop for RouterNamespaces {
    fn drop(&mut self) {
        for n in self.0.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            if Path::new("/run/netns").join(n).exists() {
                let _ = Command::new("ip").args(["netns", "delete", n]).output();
            }
        }
    }
}

/// The running agent; killed (by pid) if the test ends while it runs.
struct Agent {
    child: Option<Child>,
    log: PathBuf,
}

impl Agent {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// SIGTERM, then waits (bounded) for the exit status.
    fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(st) = child.try_wait().unwrap() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the agent ignored SIGTERM for 20 s\n{}", self.tail());
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- agent log (tail)\n{}", self.tail());
        }
    }
}

/// Everything the test stands up. Fields drop in order: the agent, leftover router
/// namespaces, the servers (Neutron before its database and broker), OVS, the namespaces,
/// then the directory.
struct Bed {
    agent: Agent,
    routers: RouterNamespaces,
    neutron: Service,
    mariadb: Service,
    rabbitmq: Option<Service>,
    ovs: Service,
    host: TestNs,
    ext: TestNs,
    vm: TestNs,
    dir: Scratch,
    agent_host: String,
}

impl Bed {
    fn sock(&self) -> PathBuf {
        self.dir.0.join("ovs").join("db.sock")
    }

    fn vsctl(&self, args: &[&str]) -> String {
        let db = format!("--db=unix:{}", self.sock().display());
        let mut argv = vec!["ovs-vsctl", &db, "--timeout=10"];
        argv.extend_from_slice(args);
        ok(&argv)
    }

    /// `Open_vSwitch.next_cfg`: every write transaction bumps it.
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

    /// `external_ids` of an Interface as a map.
    fn external_ids(&self, iface: &str) -> serde_json::Map<String, Value> {
        let out = self.vsctl(&[
            "--format=json",
            "--data=json",
            "--columns=external_ids",
            "list",
            "Interface",
            iface,
        ]);
        let v: Value = serde_json::from_str(&out).unwrap();
        v["data"][0][0][1]
            .as_array()
            .unwrap()
            .iter()
            .map(|kv| (kv[0].as_str().unwrap().to_owned(), kv[1].clone()))
            .collect()
    }

    /// A namespace's port on br-int, as os-vif would plug it and the L2 agent wire it.
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

    /// Starts `l3agent -v agent --config-file ...` in the host namespace.
    fn start_agent(&mut self, files: &[PathBuf]) {
        let n = unique();
        let log = self.dir.0.join(format!("agent-{n}.log"));
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.host.name))
            .arg(env!("CARGO_BIN_EXE_l3agent"))
            .args(["-v", "agent"]);
        for f in files {
            cmd.arg("--config-file").arg(f);
        }
        let child = cmd
            .args(["--resync-interval", "10", "--metrics-listen", "none"])
            .arg("--control-socket")
            .arg(self.dir.0.join("run").join("control.sock"))
            .env(
                "L3AGENT_LOG",
                std::env::var("L3AGENT_TEST_LOG").unwrap_or_else(|_| "info,lapin=warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        self.agent = Agent {
            child: Some(child),
            log,
        };
    }

    /// Polls `check` every 100 ms until it holds or `within` passes (then panics with
    /// `what`; the agent's log tail is printed on the way out).
    fn wait_for(
        &mut self,
        what: &str,
        within: Duration,
        mut check: impl FnMut(&Bed) -> bool,
    ) -> Duration {
        let t = Instant::now();
        loop {
            if check(self) {
                return t.elapsed();
            }
            assert!(
                self.agent.alive(),
                "the agent exited while waiting for {what}"
            );
            assert!(t.elapsed() < within, "{what}: not within {within:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// This agent as Neutron lists it.
    fn l3_agent(&self, api: &NeutronApi) -> Option<Value> {
        api.list_agents()
            .ok()?
            .into_iter()
            .find(|a| a["agent_type"] == "L3 agent" && a["host"] == self.agent_host.as_str())
    }
}

/// `ip -n NS -j addr show dev DEV`: the global IPv4 addresses (`a.b.c.d/len`), sorted.
fn v4_addresses(ns: &str, dev: &str) -> Option<Vec<String>> {
    let r = sh(&["ip", "-n", ns, "-j", "addr", "show", "dev", dev]);
    if r.code != Some(0) {
        return None;
    }
    let v: Value = serde_json::from_str(&r.stdout).ok()?;
    let mut out: Vec<String> = v[0]["addr_info"]
        .as_array()?
        .iter()
        .filter(|a| a["family"] == "inet")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or(""), a["prefixlen"]))
        .collect();
    out.sort();
    Some(out)
}

fn ifindex(ns: &str, dev: &str) -> Option<i64> {
    let r = sh(&["ip", "-n", ns, "-j", "link", "show", "dev", dev]);
    let v: Value = serde_json::from_str(&r.stdout).ok()?;
    v[0]["ifindex"].as_i64()
}

fn ns_exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

/// The nat table of the router, without counters and comments.
fn nat(ns: &str) -> String {
    let r = sh(&["ip", "netns", "exec", ns, "iptables-save", "-t", "nat"]);
    r.stdout
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with(':'))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Neutron's device name for a port: `<prefix><first 11 characters of its id>`.
fn dev(prefix: &str, port: &Value) -> String {
    format!("{prefix}{}", &id(port)[..11])
}

/// The global IPv4 addresses a Neutron port was given, with the subnet's prefix length.
fn allocated(port: &Value, prefix: u8) -> Vec<String> {
    let mut out: Vec<String> = port["fixed_ips"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|ip| ip["ip_address"].as_str())
        .filter(|a| !a.contains(':'))
        .map(|a| format!("{a}/{prefix}"))
        .collect();
    out.sort();
    out
}

fn write_configs(dir: &Path, agent_host: &str, ovsdb: &Path) -> Vec<PathBuf> {
    let neutron_conf = dir.join("neutron.conf");
    let l3_ini = dir.join("l3_agent.ini");
    // What an operator's neutron.conf holds, options for other agents and services included
    // (ignored), plus the short timers of the testbed (agent_down_time 20 s there).
    std::fs::write(
        &neutron_conf,
        format!(
            "[DEFAULT]\n\
             host = {agent_host}\n\
             transport_url = rabbit://guest:guest@127.0.0.1:5672/\n\
             state_path = {state}\n\
             core_plugin = ml2\n\
             service_plugins = router\n\
             auth_strategy = noauth\n\
             rpc_response_timeout = 10\n\
             periodic_interval = 5\n\
             [agent]\n\
             report_interval = 3\n\
             [database]\n\
             connection = mysql+pymysql://root@/neutron\n\
             [oslo_messaging_rabbit]\n\
             rabbit_retry_interval = 1\n\
             rabbit_interval_max = 2\n",
            state = dir.join("neutron-state").display(),
        ),
    )
    .unwrap();
    std::fs::write(
        &l3_ini,
        format!(
            "[DEFAULT]\n\
             interface_driver = openvswitch\n\
             agent_mode = legacy\n\
             enable_metadata_proxy = false\n\
             [OVS]\n\
             integration_bridge = br-int\n\
             ovsdb_connection = unix:{}\n",
            ovsdb.display()
        ),
    )
    .unwrap();
    vec![neutron_conf, l3_ini]
}

fn agent_log_figure(log: &str, message: &str) -> Option<u64> {
    log.lines()
        .rfind(|l| l.contains(message))
        .and_then(|l| l.split("took_ms=").nth(1))
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
}

#[test]
fn l3agent_replaces_neutron_l3_agent_against_a_real_neutron_server() {
    let total = Instant::now();
    phase("venv (built once per machine)", || {
        let script = testbed_dir().join("venv.sh");
        let out = Command::new(&script).output().expect("venv.sh");
        assert!(
            out.status.success(),
            "{}: {}\n{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    });
    for p in [
        "ovsdb-server",
        "ovs-vswitchd",
        "ovs-vsctl",
        "nsenter",
        "python3",
    ] {
        assert!(
            ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
                .iter()
                .any(|d| Path::new(d).join(p).exists()),
            "{p} is not installed (scripts/install-deps.sh)"
        );
    }
    let dir = Scratch(PathBuf::from(format!(
        "/tmp/l3t-ne2e-{}-{}",
        std::process::id(),
        unique()
    )));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();
    let host = TestNs::new("ne2e-h");
    let d = dir.0.clone();
    let rabbitmq = phase("rabbitmq start", || {
        Service::start(&host, "rabbitmq", &d.join("rabbitmq"), &[])
    });
    let mariadb = phase("mariadb start", || {
        Service::start(&host, "mariadb", &d.join("mariadb"), &[])
    });
    let db_url = format!(
        "mysql+pymysql://root@/neutron?unix_socket={}",
        d.join("mariadb").join("mysqld.sock").display()
    );
    let port = API_PORT.to_string();
    let neutron = phase("neutron start", || {
        Service::start(
            &host,
            "neutron",
            &d.join("neutron"),
            &[("DB_URL", &db_url), ("NEUTRON_API_PORT", &port)],
        )
    });
    let ovs = phase("ovs start", || {
        Service::start(&host, "ovs", &d.join("ovs"), &[("OVS_BRIDGES", "br-int")])
    });
    let agent_host = format!("l3t-ne2e-{}", std::process::id());
    let mut bed = Bed {
        agent: Agent {
            child: None,
            log: d.join("none.log"),
        },
        routers: RouterNamespaces::default(),
        neutron,
        mariadb,
        rabbitmq: Some(rabbitmq),
        ovs,
        ext: TestNs::new("ne2e-x"),
        vm: TestNs::new("ne2e-v"),
        host,
        dir,
        agent_host,
    };
    let files = write_configs(&bed.dir.0, &bed.agent_host, &bed.sock());
    let api = NeutronApi::new(&bed.host, API_PORT);

    // 1. The agent registers.
    bed.start_agent(&files);
    let alive = bed.wait_for(
        "the agent alive in GET /v2.0/agents",
        Duration::from_secs(60),
        |b| b.l3_agent(&api).is_some_and(|a| a["alive"] == true),
    );
    eprintln!(
        "agent alive in the API {:.1} s after start",
        alive.as_secs_f64()
    );
    let a = bed.l3_agent(&api).unwrap();
    assert_eq!(a["binary"], "neutron-l3-agent", "{a}");
    assert_eq!(a["configurations"]["agent_mode"], "legacy", "{a}");
    assert_eq!(
        a["configurations"]["interface_driver"], "openvswitch",
        "{a}"
    );

    // 2. A router with a gateway and an interface.
    let (ext, ext_subnet, net, subnet) = phase("networks", || {
        let ext = api.create_external_network("public", "physnet1").unwrap();
        let ext_subnet = api
            .create_subnet(id(&ext), "public-v4", "203.0.113.0/24")
            .unwrap();
        let net = api.create_tenant_network("private").unwrap();
        let subnet = api
            .create_subnet(id(&net), "private-v4", "192.0.2.0/24")
            .unwrap();
        (ext, ext_subnet, net, subnet)
    });
    assert_eq!(ext_subnet["gateway_ip"], EXT_IP, "{ext_subnet}");
    let router = phase("router with gateway + interface (REST)", || {
        let r = api
            .create_router(&format!("r-{}", bed.agent_host), Some(id(&ext)))
            .unwrap();
        api.add_router_interface(id(&r), id(&subnet)).unwrap();
        r
    });
    let rid = id(&router).to_owned();
    let rns = format!("qrouter-{rid}");
    bed.routers.0.lock().unwrap().push(rns.clone());
    let router_ports = |api: &NeutronApi| -> (Value, Value) {
        let ports = api.get(&format!("/ports?device_id={rid}")).unwrap()["ports"]
            .as_array()
            .unwrap()
            .clone();
        let find = |owner: &str| {
            ports
                .iter()
                .find(|p| p["device_owner"] == owner)
                .cloned()
                .unwrap_or_else(|| panic!("no {owner} port: {ports:?}"))
        };
        (
            find("network:router_gateway"),
            find("network:router_interface"),
        )
    };
    let (gw, itf) = router_ports(&api);
    let (qg, qr) = (dev("qg-", &gw), dev("qr-", &itf));
    let (gw_want, qr_want) = (allocated(&gw, 24), allocated(&itf, 24));
    assert_eq!(qr_want, ["192.0.2.1/24"]);
    let took = bed.wait_for(
        "the router namespace with Neutron's addresses",
        Duration::from_secs(60),
        |_| {
            v4_addresses(&rns, &qg).as_ref() == Some(&gw_want)
                && v4_addresses(&rns, &qr).as_ref() == Some(&qr_want)
        },
    );
    eprintln!(
        "router built {:.1} s after the REST calls",
        took.as_secs_f64()
    );
    let hosting = api.l3_agents_hosting_router(&rid).unwrap();
    assert_eq!(hosting.len(), 1, "{hosting:?}");
    assert_eq!(hosting[0]["host"], bed.agent_host.as_str());
    for (dev, port) in [(&qg, &gw), (&qr, &itf)] {
        let ids = bed.external_ids(dev);
        assert_eq!(ids["iface-id"], port["id"], "{dev}: {ids:?}");
        assert_eq!(ids["attached-mac"], port["mac_address"], "{dev}: {ids:?}");
        assert_eq!(ids["iface-status"], "active", "{dev}: {ids:?}");
        let l = ok(&["ip", "-n", &rns, "-j", "link", "show", "dev", dev]);
        let l: Value = serde_json::from_str(&l).unwrap();
        assert_eq!(l[0]["address"], port["mac_address"], "{dev}: {l}");
    }

    // The VM and the external network, plugged into br-int; the router's ports wired.
    let vm_port = api
        .create_port(&PortSpec {
            network_id: id(&net),
            subnet_id: Some(id(&subnet)),
            ip_address: Some(VM_IP),
            host: Some(&bed.agent_host),
            name: Some("vm1"),
            ..PortSpec::default()
        })
        .unwrap();
    let vm_mac = vm_port["mac_address"].as_str().unwrap().to_owned();
    phase(
        "plug the VM and the external namespace, wire the router",
        || {
            bed.plug(
                &bed.ext,
                "p-ext",
                EXTERNAL_TAG,
                "fa:16:3e:5e:e2:01",
                "203.0.113.1/24",
                None,
            );
            bed.plug(
                &bed.vm,
                "p-vm",
                TENANT_TAG,
                &vm_mac,
                "192.0.2.10/24",
                Some("192.0.2.1"),
            );
            bed.wire(&qr, TENANT_TAG);
            bed.wire(&qg, EXTERNAL_TAG);
        },
    );
    let gw_ip = gw_want[0].split('/').next().unwrap().to_owned();
    phase("traffic: VM -> external through SNAT", || {
        assert_eq!(
            tcp_probe(&bed.ext, &bed.vm, EXT_IP, 6201).unwrap(),
            gw_ip,
            "VM -> external through SNAT"
        );
    });

    // 3. A floating IP: DNAT in the kernel, ACTIVE in the API, traffic.
    let fip = api.create_floating_ip(id(&ext), None).unwrap();
    let fip_id = id(&fip).to_owned();
    let fip_ip = fip["floating_ip_address"].as_str().unwrap().to_owned();
    let dnat = format!("-d {fip_ip}/32 -j DNAT --to-destination {VM_IP}");
    let snat = format!("-s {VM_IP}/32 -j SNAT --to-source {fip_ip}");
    let t = Instant::now();
    api.associate_floating_ip(&fip_id, id(&vm_port)).unwrap();
    let rest = t.elapsed();
    bed.wait_for(
        "the floating IP's DNAT rule",
        Duration::from_secs(30),
        |_| nat(&rns).contains(&dnat),
    );
    let to_kernel = t.elapsed();
    bed.wait_for(
        "the floating IP ACTIVE in the API",
        Duration::from_secs(30),
        |_| {
            api.show_floating_ip(&fip_id)
                .is_ok_and(|f| f["status"] == "ACTIVE")
        },
    );
    let to_active = t.elapsed();
    eprintln!(
        "floating IP: REST call {:.0} ms; DNAT in the kernel {:.0} ms, ACTIVE in the API {:.0} ms after the call started",
        rest.as_secs_f64() * 1e3,
        to_kernel.as_secs_f64() * 1e3,
        to_active.as_secs_f64() * 1e3
    );
    let rules = nat(&rns);
    assert!(rules.contains(&snat), "{rules}");
    assert_eq!(
        v4_addresses(&rns, &qg).unwrap(),
        {
            let mut v = gw_want.clone();
            v.push(format!("{fip_ip}/32"));
            v.sort();
            v
        },
        "the gateway port holds the floating IP"
    );
    phase("traffic through the floating IP", || {
        assert_eq!(
            tcp_probe(&bed.ext, &bed.vm, EXT_IP, 6211).unwrap(),
            fip_ip,
            "VM with a floating IP -> external"
        );
        assert_eq!(
            tcp_probe(&bed.vm, &bed.ext, &fip_ip, 6212).unwrap(),
            EXT_IP,
            "external -> VM through its floating IP"
        );
    });
    bed.wait_for("the state report's counts", Duration::from_secs(20), |b| {
        b.l3_agent(&api).is_some_and(|a| {
            let c = &a["configurations"];
            c["routers"] == 1
                && c["ex_gw_ports"] == 1
                && c["interfaces"] == 1
                && c["floating_ips"] == 1
        })
    });

    // Disassociating removes the rules; associating again brings them back.
    let t = Instant::now();
    api.disassociate_floating_ip(&fip_id).unwrap();
    bed.wait_for("the DNAT rule removed", Duration::from_secs(30), |_| {
        !nat(&rns).contains(&dnat)
    });
    eprintln!(
        "floating IP disassociated: DNAT gone {:.0} ms after the call started",
        t.elapsed().as_secs_f64() * 1e3
    );
    assert!(!nat(&rns).contains(&snat));
    assert_eq!(v4_addresses(&rns, &qg).unwrap(), gw_want);
    bed.wait_for(
        "the floating IP DOWN in the API",
        Duration::from_secs(30),
        |_| {
            api.show_floating_ip(&fip_id)
                .is_ok_and(|f| f["status"] == "DOWN")
        },
    );
    let t = Instant::now();
    api.associate_floating_ip(&fip_id, id(&vm_port)).unwrap();
    bed.wait_for("the DNAT rule back", Duration::from_secs(30), |_| {
        nat(&rns).contains(&dnat)
    });
    eprintln!(
        "floating IP associated again: DNAT {:.0} ms after the call started",
        t.elapsed().as_secs_f64() * 1e3
    );
    bed.wait_for(
        "the floating IP ACTIVE again",
        Duration::from_secs(30),
        |_| {
            api.show_floating_ip(&fip_id)
                .is_ok_and(|f| f["status"] == "ACTIVE")
        },
    );

    // 4. A restart leaves the router untouched.
    let before = (
        ifindex(&rns, &qg),
        ifindex(&rns, &qr),
        nat(&rns),
        bed.next_cfg(),
    );
    let code = phase("agent stop (SIGTERM)", || bed.agent.stop());
    assert_eq!(code, Some(0), "{}", bed.agent.tail());
    assert!(ns_exists(&rns), "the router outlives the agent");
    let t = Instant::now();
    bed.start_agent(&files);
    bed.wait_for(
        "the restarted agent's first full sync",
        Duration::from_secs(60),
        |b| b.agent.log().contains("initial convergence done"),
    );
    eprintln!(
        "restart: converged {:.1} s after start",
        t.elapsed().as_secs_f64()
    );
    if let Some(ms) = agent_log_figure(&bed.agent.log(), "first full sync done") {
        eprintln!("restart: first full sync (1 router) took {ms} ms");
    }
    let after = (
        ifindex(&rns, &qg),
        ifindex(&rns, &qr),
        nat(&rns),
        bed.next_cfg(),
    );
    assert_eq!(before, after, "the restart changed the router");
    phase("traffic after the restart", || {
        assert_eq!(tcp_probe(&bed.vm, &bed.ext, &fip_ip, 6221).unwrap(), EXT_IP);
    });

    // 5. The broker goes away; a change is made meanwhile; the broker comes back.
    let before = (ifindex(&rns, &qg), ifindex(&rns, &qr), nat(&rns));
    phase("rabbitmq stop", || bed.rabbitmq = None);
    std::thread::sleep(Duration::from_secs(5));
    // Neutron's API blocks on its notification while the broker is down: call it aside.
    let api2 = api.clone().with_timeout(Duration::from_secs(120));
    let fid2 = fip_id.clone();
    let change = std::thread::spawn(move || api2.disassociate_floating_ip(&fid2));
    std::thread::sleep(Duration::from_secs(3));
    assert!(bed.agent.alive(), "{}", bed.agent.tail());
    assert_eq!(
        before,
        (ifindex(&rns, &qg), ifindex(&rns, &qr), nat(&rns)),
        "the router changed while the broker was away"
    );
    let d = bed.dir.0.clone();
    let t = Instant::now();
    bed.rabbitmq = Some(phase("rabbitmq start again", || {
        Service::start(&bed.host, "rabbitmq", &d.join("rabbitmq"), &[])
    }));
    bed.wait_for(
        "the change made meanwhile converged",
        Duration::from_secs(90),
        |_| !nat(&rns).contains(&dnat),
    );
    eprintln!(
        "broker back: the change converged {:.1} s after the restart began",
        t.elapsed().as_secs_f64()
    );
    change.join().unwrap().unwrap();
    bed.wait_for("the agent alive again", Duration::from_secs(60), |b| {
        b.l3_agent(&api).is_some_and(|a| a["alive"] == true)
    });
    assert_eq!(
        ifindex(&rns, &qg),
        before.0,
        "the gateway port was re-plugged"
    );
    assert_eq!(ifindex(&rns, &qr), before.1, "the interface was re-plugged");
    phase("traffic after the broker restart (SNAT)", || {
        assert_eq!(tcp_probe(&bed.ext, &bed.vm, EXT_IP, 6231).unwrap(), gw_ip);
    });

    // 6. Removing the interface removes the qr- port; deleting the router the namespace.
    api.delete_floating_ip(&fip_id).unwrap();
    api.remove_router_interface(&rid, id(&subnet)).unwrap();
    bed.wait_for("the qr- port removed", Duration::from_secs(30), |b| {
        v4_addresses(&rns, &qr).is_none() && !b.ports().contains(&qr)
    });
    assert!(bed.ports().contains(&qg));
    api.delete_router(&rid).unwrap();
    bed.wait_for(
        "the router namespace removed",
        Duration::from_secs(30),
        |b| !ns_exists(&rns) && !b.ports().contains(&qg),
    );
    assert_eq!(bed.ports(), ["p-ext", "p-vm"]);
    let code = phase("agent stop", || bed.agent.stop());
    assert_eq!(code, Some(0));
    eprintln!(
        "total (before teardown): {:.1} s",
        total.elapsed().as_secs_f64()
    );
    let _ = (&bed.neutron, &bed.mariadb, &bed.ovs);
}
