//! `l3agent-bench neutron` (issue 12): `l3agent agent --config-file ...` as the drop-in for
//! neutron-l3-agent, against the real control plane of `scripts/testbed/` (RabbitMQ, MariaDB,
//! neutron-server 29.0.0 from PyPI, Open vSwitch with the userspace datapath), everything in
//! one throwaway network namespace on its loopback, driven through Neutron's REST API, every
//! address in a documentation prefix, every wait bounded, every service stopped by pid.
//!
//! Two measures, each beside a floor or Neutron's own agent measured in the same run:
//!
//! - **Floating IP association to DNAT**: from the start of the REST call that associates a
//!   floating IP with a VM port to the DNAT rule in the router's namespace (polled every
//!   millisecond over netlink: the floating IP's address on the gateway device and the
//!   namespace's nf_tables ruleset generation; the rule then read back with `iptables-save`),
//!   `fip_events` times, p50 and p99. The **floor** is what any agent must wait for, measured
//!   in the same run on a router of the same shape on the same external network, its events
//!   interleaved with l3agent's (the load of the shared machine meets both alike): a *null L3
//!   agent* (this process: oslo.messaging's protocol through `l3agent_neutron`, no reconciler)
//!   that takes the `routers_updated` notification, calls `sync_routers` for that router, and
//!   once the reply carries the floating IP writes its three rules with one `iptables-restore
//!   --noflush` and adds its address over rtnetlink in a namespace of its own. That is the
//!   server's part (REST call, notification, the router dict) plus the least kernel work; the
//!   REST call's own latency is shown too.
//! - **Full sync**: from the agent's process start on an empty host (no namespace, no OVS
//!   port, no state) to every router converged in the kernel: its namespace, the gateway and
//!   interface devices with the addresses Neutron allocated, the gateway's SNAT rule
//!   (checked by a watcher process, `neutron-watch`, that runs in the agent's mount namespace).
//!   `side_routers` routers with l3agent and then with Neutron's own `neutron-l3-agent` (from
//!   the testbed's venv; root helper: a `sudo` that runs the command as is, as both run as
//!   root), then `routers` routers with l3agent alone. Both agents start with their host's
//!   agent record dead (the server answers `revived`) and the routers already scheduled to
//!   that host and their ports bound, as after a reboot of a network node.
//!
//! Stand-ins for what the testbed runs no process for:
//! - a **null L2 agent**: state reports of an "Open vSwitch agent" on each host used (bridge
//!   mappings for the external networks, VXLAN), so that ML2 binds router ports as it does on
//!   a real network node. Without it every port fails to bind and every `sync_routers` binds
//!   every port of every router again (`_ensure_host_set_on_port`), which would make the
//!   server, not the agent, the subject of the measure;
//! - the null L3 agent above also **schedules** each set of routers (created while no L3 agent
//!   is alive, then `get_router_ids` from that host) and binds their ports once
//!   (`sync_routers`) before the measured agents start.
//!
//! Neutron's own agent deletes every `qrouter-` namespace it does not host: it runs in a mount
//! namespace of its own with a private `/run/netns`, so it sees (and can delete) only its own.
//! Its namespaces die with that mount namespace; its processes are stopped by pid (the agent,
//! then whatever is left in its mount namespace: privsep daemons).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args as ClapArgs;
use l3agent_neutron::l3::{REPORTS_TOPIC, REPORT_STATE_VERSION};
use l3agent_neutron::{
    AgentRpcServer, AgentState, Notification, PluginApi, RouterCounts, Transport, TransportOptions,
    TransportUrl,
};
use l3agent_rtnl::prelude::*;
use l3agent_rtnl::{Netns, Rtnl};
use l3agent_testkit::neutron_api::{id, NeutronApi, PortSpec};
use l3agent_testkit::service::{neutron_venv, require_ovs, testbed_dir, Service};
use l3agent_testkit::TestNs;
use l3agent_types::{IfName, NetnsName};
use serde_json::{json, Map, Value};

/// Arguments of `l3agent-bench neutron`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Floating IP associations timed, with l3agent and with the floor each.
    #[arg(long, default_value_t = 30)]
    fip_events: usize,
    /// Routers of the full sync l3agent does alone (each with a gateway and an interface).
    #[arg(long, default_value_t = 1000)]
    routers: usize,
    /// Routers of the full sync both agents do, side by side (0: none).
    #[arg(long, default_value_t = 50)]
    side_routers: usize,
    /// Leave Neutron's own agent out (its full sync takes seconds per router).
    #[arg(long)]
    skip_neutron_agent: bool,
    /// REST clients creating routers at the same time.
    #[arg(long, default_value_t = 4)]
    create_threads: usize,
    /// Neutron API server processes (the testbed starts one; each more is another process
    /// serving the same database, so routers are created faster).
    #[arg(long, default_value_t = 2)]
    api_servers: usize,
    /// l3agent's `--workers`.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Seconds per router a full sync may take before the benchmark gives up.
    #[arg(long, default_value_t = 15)]
    secs_per_router: u64,
    /// The l3agent binary (default: `l3agent` beside this one).
    #[arg(long)]
    l3agent: Option<PathBuf>,
    /// Keep the work directory (configs, every agent's and server's log) and print where.
    #[arg(long)]
    keep: bool,
}

/// Arguments of the hidden `neutron-watch`: polls routers until each is converged, printing
/// `done N` as the count grows, then `all`; `timeout N` (N still pending) when time is up.
#[derive(Debug, ClapArgs)]
pub struct WatchArgs {
    /// JSON: `[{"ns": "qrouter-...", "addrs": [["qg-...", "203.0.113.5/24"], ...],
    /// "snat": "-o qg-... -j SNAT --to-source 203.0.113.5"}, ...]`.
    #[arg(long)]
    targets: PathBuf,
    /// Seconds before giving up.
    #[arg(long)]
    timeout: u64,
}

const API_PORT: u16 = 9696;
const RABBIT_URL: &str = "rabbit://guest:guest@127.0.0.1:5672/";
const FIP_HOST: &str = "nb-fip";
const FLOOR_HOST: &str = "nb-floor";
const SIDE_HOST: &str = "nb-side";
const SYNC_HOST: &str = "nb-sync";
const VM_IP: &str = "192.0.2.10";
/// Routers per external network: two /24 subnets (203.0.113.0/24, 192.0.2.0/24) give 506
/// gateway addresses. External networks may overlap: routers on different ones never meet.
const PER_EXT_NET: usize = 500;
/// Routers per tenant network (198.51.100.0/24, one interface port each).
const PER_TENANT_NET: usize = 250;
/// Physical networks the null L2 agent maps (one flat external network each).
const PHYSNETS: usize = 64;
/// The testbed's agents report every 5 s (`agent_down_time` is 20 s).
const REPORT_EVERY: Duration = Duration::from_secs(5);

fn physnet(i: usize) -> String {
    format!("physnet{i}")
}

/// The `q`-quantile of `v` (sorted in place), nearest rank.
fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn step(what: &str, t: Instant) {
    eprintln!("neutron bench: {what}: {:.1} s", t.elapsed().as_secs_f64());
}

fn netns_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("{e}")
}

use crate::floor::{inside, FloorNs};

// ---------------------------------------------------------------------------------------
// Fixtures: the work directory, the namespace the bench runs in, extra API servers.
// ---------------------------------------------------------------------------------------

/// The work directory (short: it holds unix sockets), removed on drop unless kept.
struct Scratch {
    path: PathBuf,
    keep: bool,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.keep || std::thread::panicking() {
            eprintln!(
                "neutron bench: work directory kept: {}",
                self.path.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The main thread inside the test namespace until dropped (then back where it was): every
/// thread and process started meanwhile is in there, on its loopback.
struct Entered {
    back: Netns,
}

impl Entered {
    fn enter(ns: &TestNs) -> Result<Entered> {
        let back = Netns::current().map_err(netns_err)?;
        nix::sched::setns(ns.open().fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering {}", ns.name))?;
        Ok(Entered { back })
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        if let Err(e) = nix::sched::setns(self.back.fd(), nix::sched::CloneFlags::CLONE_NEWNET) {
            eprintln!("neutron bench: leaving the test namespace: {e}");
        }
    }
}

/// Sends `sig` to the process group `pgid` (a group this bench made: its leader is our child).
fn signal_group(pgid: u32, sig: nix::sys::signal::Signal) {
    if let Ok(p) = i32::try_from(pgid) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(p), sig);
    }
}

/// More Neutron API servers on 127.0.0.1:9697.. (the testbed's `neutron_api.py serve`, the
/// same config and database), each leading its own process group; stopped on drop.
struct ApiServers {
    children: Vec<Child>,
}

impl ApiServers {
    fn start(venv: &Path, neutron_dir: &Path, dir: &Path, count: usize) -> Result<ApiServers> {
        let mut servers = ApiServers {
            children: Vec::new(),
        };
        for k in 0..count {
            let port = API_PORT + 1 + u16::try_from(k)?;
            let d = dir.join(format!("api-{port}"));
            std::fs::create_dir_all(&d)?;
            let child = Command::new(venv.join("bin/python"))
                .arg(testbed_dir().join("neutron_api.py"))
                .args(["serve", "127.0.0.1", &port.to_string()])
                .arg(d.join("api.log"))
                .arg(neutron_dir.join("neutron.conf"))
                .arg(neutron_dir.join("ml2_conf.ini"))
                .current_dir(&d)
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(d.join("api.out"))?)
                .spawn()
                .context("starting another Neutron API server")?;
            servers.children.push(child);
            let api = NeutronApi::in_netns(None, port).with_timeout(Duration::from_secs(3));
            let t = Instant::now();
            loop {
                // A policy check too (the first one loads the policies).
                if api.get("/networks?limit=1").is_ok() && api.get("/routers?limit=1").is_ok() {
                    break;
                }
                if let Some(Ok(Some(st))) = servers.children.last_mut().map(Child::try_wait) {
                    bail!(
                        "the API server on port {port} exited ({st}): see {}",
                        d.display()
                    );
                }
                if t.elapsed() > Duration::from_secs(180) {
                    bail!("the API server on port {port} did not answer within 180 s");
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        }
        Ok(servers)
    }
}

impl Drop for ApiServers {
    fn drop(&mut self) {
        use nix::sys::signal::Signal;
        for c in &mut self.children {
            signal_group(c.id(), Signal::SIGTERM);
        }
        let t = Instant::now();
        for c in &mut self.children {
            while t.elapsed() < Duration::from_secs(10) {
                if !matches!(c.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            signal_group(c.id(), Signal::SIGKILL);
            let _ = c.wait();
        }
    }
}

/// Namespaces l3agent made (in /run/netns): deleted on drop.
#[derive(Default)]
struct RouterNamespaces(Vec<String>);

impl RouterNamespaces {
    fn delete_all(&mut self) {
        for n in self.0.drain(..) {
            if let Ok(name) = NetnsName::new("router namespace", &n) {
                let _ = l3agent_netns::delete(&name);
            }
        }
    }
}

impl Drop for RouterNamespaces {
    fn drop(&mut self) {
        self.delete_all();
    }
}

// ---------------------------------------------------------------------------------------
// The null agents.
// ---------------------------------------------------------------------------------------

/// A transport to the testbed's broker, connected.
fn transport() -> Result<Transport> {
    let url = TransportUrl::parse(RABBIT_URL).map_err(|e| anyhow!("transport_url: {e}"))?;
    let t = Transport::start(TransportOptions::new(url));
    if !t.wait_connected(Duration::from_secs(30)) {
        bail!("no connection to RabbitMQ within 30 s: {}", t.state());
    }
    Ok(t)
}

/// Sleeps `d` in short steps; false if `stop` was set meanwhile.
fn nap(d: Duration, stop: &AtomicBool) -> bool {
    let t = Instant::now();
    while t.elapsed() < d {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    !stop.load(Ordering::SeqCst)
}

/// State reports of an "Open vSwitch agent" on each host, every 5 s, until dropped.
struct NullL2 {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    transport: Transport,
}

impl NullL2 {
    fn start(hosts: &[&str]) -> Result<NullL2> {
        let transport = transport()?;
        let mappings: Map<String, Value> = (0..PHYSNETS)
            .map(|i| (physnet(i), Value::String("br-ex".into())))
            .collect();
        let report = {
            let transport = transport.clone();
            let hosts: Vec<String> = hosts.iter().map(|h| (*h).to_owned()).collect();
            move |first: bool| -> Result<()> {
                for host in &hosts {
                    let mut state = json!({
                        "binary": "neutron-openvswitch-agent",
                        "host": host,
                        "topic": "N/A",
                        "agent_type": "Open vSwitch agent",
                        "configurations": {
                            "bridge_mappings": mappings,
                            "tunnel_types": ["vxlan"],
                            "tunneling_ip": "127.0.0.1",
                            "integration_bridge": "br-int",
                            "datapath_type": "system",
                            "ovs_hybrid_plug": false,
                            "l2_population": false,
                            "arp_responder_enabled": false,
                            "enable_distributed_routing": false,
                            "devices": 0,
                            "extensions": [],
                        },
                        "uuid": l3agent_neutron::wire::uuid4(),
                    });
                    if first {
                        state["start_flag"] = Value::Bool(true);
                    }
                    let mut args = Map::new();
                    args.insert("agent_state".into(), json!({ "agent_state": state }));
                    args.insert(
                        "time".into(),
                        Value::String(l3agent_neutron::wire::utc_timestamp(SystemTime::now(), 'T')),
                    );
                    transport
                        .call(
                            REPORTS_TOPIC,
                            None,
                            "report_state",
                            args,
                            REPORT_STATE_VERSION,
                            Duration::from_secs(30),
                        )
                        .map_err(|e| anyhow!("null L2 agent report for {host}: {e}"))?;
                }
                Ok(())
            }
        };
        report(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("null-l2".into())
            .spawn(move || {
                while nap(REPORT_EVERY, &s) {
                    if let Err(e) = report(false) {
                        eprintln!("neutron bench: {e}");
                    }
                }
            })?;
        Ok(NullL2 {
            stop,
            thread: Some(thread),
            transport,
        })
    }
}

impl Drop for NullL2 {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.transport.close(Duration::from_secs(5));
    }
}

/// An L3 agent without a reconciler: reports its state, answers the server, and fetches the
/// routers each notification names with `sync_routers`, handing the dicts on.
struct NullL3 {
    api: PluginApi,
    server: Option<AgentRpcServer>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    dicts: Receiver<Vec<Value>>,
}

impl NullL3 {
    fn start(host: &str) -> Result<NullL3> {
        let transport = transport()?;
        let api = PluginApi::new(transport.clone(), host, Duration::from_secs(900));
        let (server, notifications) =
            AgentRpcServer::start(&transport, host).map_err(|e| anyhow!("{e}"))?;
        if !server.wait_consuming(Duration::from_secs(30)) {
            bail!("the null L3 agent for {host} does not consume after 30 s");
        }
        let mut state = AgentState {
            host: host.to_owned(),
            availability_zone: "nova".into(),
            agent_mode: "legacy".into(),
            handle_internal_only_routers: true,
            interface_driver: "openvswitch".into(),
            log_agent_heartbeats: false,
            extensions: Vec::new(),
            start_flag: true,
            counts: RouterCounts::default(),
        };
        api.report_state(&state)
            .map_err(|e| anyhow!("null L3 agent {host}: report_state: {e}"))?;
        state.start_flag = false;
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        {
            let (api, stop) = (api.clone(), Arc::clone(&stop));
            threads.push(
                std::thread::Builder::new()
                    .name("null-l3-report".into())
                    .spawn(move || {
                        while nap(REPORT_EVERY, &stop) {
                            let _ = api.report_state(&state);
                        }
                    })?,
            );
        }
        let (tx, dicts) = mpsc::channel();
        {
            let (api, stop) = (api.clone(), Arc::clone(&stop));
            threads.push(
                std::thread::Builder::new()
                    .name("null-l3-sync".into())
                    .spawn(move || {
                        while !stop.load(Ordering::SeqCst) {
                            let routers =
                                match notifications.recv_timeout(Duration::from_millis(100)) {
                                    Ok(
                                        Notification::RoutersUpdated { routers }
                                        | Notification::RouterAddedToAgent { routers },
                                    ) => routers,
                                    Ok(_) | Err(RecvTimeoutError::Timeout) => continue,
                                    Err(RecvTimeoutError::Disconnected) => break,
                                };
                            match api.sync_routers(Some(&routers)) {
                                Ok(d) => {
                                    let _ = tx.send(d);
                                }
                                Err(e) => eprintln!("neutron bench: null L3 agent: {e}"),
                            }
                        }
                    })?,
            );
        }
        Ok(NullL3 {
            api,
            server: Some(server),
            stop,
            threads,
            dicts,
        })
    }

    /// `get_router_ids` (the server schedules the unhosted routers to this host on the way),
    /// then `sync_routers` of them all in chunks (the server binds their ports to this host);
    /// the ids.
    fn schedule_and_bind(&self) -> Result<Vec<String>> {
        let ids = self
            .api
            .get_router_ids()
            .map_err(|e| anyhow!("get_router_ids: {e}"))?;
        for chunk in ids.chunks(64) {
            self.api
                .sync_routers(Some(chunk))
                .map_err(|e| anyhow!("sync_routers: {e}"))?;
        }
        Ok(ids.iter().map(|i| i.as_str().to_owned()).collect())
    }

    fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(s) = self.server.take() {
            s.stop();
        }
        self.api.transport().close(Duration::from_secs(5));
    }
}

impl Drop for NullL3 {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Waits (at most 60 s) until the server lists no L3 agent alive: routers created then stay
/// unscheduled until a host asks for them.
fn wait_no_l3_agent_alive(api: &NeutronApi) -> Result<()> {
    let t = Instant::now();
    loop {
        let agents = api.list_agents().map_err(|e| anyhow!("{e}"))?;
        if !agents
            .iter()
            .any(|a| a["agent_type"] == "L3 agent" && a["alive"] == true)
        {
            return Ok(());
        }
        if t.elapsed() > Duration::from_secs(60) {
            bail!("an L3 agent is still alive 60 s after the last one stopped");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

// ---------------------------------------------------------------------------------------
// Routers through the REST API.
// ---------------------------------------------------------------------------------------

/// What a converged router holds, as the watcher checks it.
#[derive(Debug, Clone)]
struct Target {
    router: String,
    /// `(device, address/len)`.
    addrs: Vec<(String, String)>,
    /// The gateway's SNAT rule, as `iptables-save` prints it (a prefix of it).
    snat: String,
}

impl Target {
    fn ns(&self) -> String {
        format!("qrouter-{}", self.router)
    }

    fn devices(&self) -> impl Iterator<Item = &str> {
        self.addrs.iter().map(|(d, _)| d.as_str())
    }

    fn to_json(&self) -> Value {
        json!({"ns": self.ns(), "addrs": self.addrs, "snat": self.snat})
    }
}

/// Neutron's device name for a port: `<prefix><first 11 characters of its id>`.
fn dev(prefix: &str, port_id: &str) -> String {
    format!("{prefix}{}", &port_id[..11.min(port_id.len())])
}

fn api_err(e: l3agent_testkit::neutron_api::ApiError) -> anyhow::Error {
    anyhow!("{e}")
}

/// Raises the project's quotas (Neutron's default allows 10 routers and 50 floating IPs).
fn unlimited_quotas(api: &NeutronApi) -> Result<()> {
    api.request(
        "PUT",
        &format!("/quotas/{}", api.project()),
        Some(&json!({"quota": {"router": -1, "port": -1, "network": -1, "subnet": -1, "floatingip": -1}})),
    )
    .map_err(api_err)?;
    Ok(())
}

/// Hands out physical network names, one per flat external network.
struct Physnets(usize);

impl Physnets {
    fn next(&mut self) -> Result<String> {
        if self.0 >= PHYSNETS {
            bail!("more than {PHYSNETS} external networks");
        }
        self.0 += 1;
        Ok(physnet(self.0 - 1))
    }
}

/// `count` routers, each with a gateway (on external networks of 500 routers each) and one
/// interface (a port on tenant networks of 250 routers each, bound to `host`), created with
/// `threads` REST clients spread over `apis`. Nothing is scheduled: no L3 agent may be alive.
fn create_routers(
    apis: &[NeutronApi],
    tag: &str,
    host: &str,
    count: usize,
    threads: usize,
    physnets: &mut Physnets,
) -> Result<Vec<Target>> {
    let api = &apis[0];
    let mut ext = Vec::new();
    for k in 0..count.div_ceil(PER_EXT_NET) {
        let net = api
            .create_external_network(&format!("{tag}-ext{k}"), &physnets.next()?)
            .map_err(api_err)?;
        for cidr in ["203.0.113.0/24", "192.0.2.0/24"] {
            api.create_subnet(id(&net), &format!("{tag}-ext{k}-{cidr}"), cidr)
                .map_err(api_err)?;
        }
        ext.push(id(&net).to_owned());
    }
    // Interface ports: (id, address), bound to the host at creation (its null L2 agent is
    // alive), in bulk.
    let mut ports: Vec<(String, String)> = Vec::with_capacity(count);
    for k in 0..count.div_ceil(PER_TENANT_NET) {
        let net = api
            .create_tenant_network(&format!("{tag}-net{k}"))
            .map_err(api_err)?;
        api.create_subnet(id(&net), &format!("{tag}-net{k}-v4"), "198.51.100.0/24")
            .map_err(api_err)?;
        let n = PER_TENANT_NET.min(count - k * PER_TENANT_NET);
        let bodies: Vec<Value> = (0..n)
            .map(|i| {
                json!({"network_id": id(&net), "project_id": api.project(),
                       "name": format!("{tag}-if{}", k * PER_TENANT_NET + i),
                       "binding:host_id": host})
            })
            .collect();
        let made = api
            .request("POST", "/ports", Some(&json!({ "ports": bodies })))
            .map_err(api_err)?;
        for p in made["ports"].as_array().context("bulk ports: no list")? {
            let ip = p["fixed_ips"][0]["ip_address"]
                .as_str()
                .context("port without address")?;
            ports.push((id(p).to_owned(), ip.to_owned()));
        }
    }
    let threads = threads.clamp(1, 64);
    // Each client takes the next router to make (the API processes are not equally fast).
    let next = std::sync::atomic::AtomicUsize::new(0);
    let made: Vec<Result<Vec<(usize, String, String)>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|k| {
                let api = &apis[k % apis.len()];
                let (ext, ports, next) = (&ext, &ports, &next);
                s.spawn(move || -> Result<Vec<(usize, String, String)>> {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= count {
                            break;
                        }
                        let r = create_router(api, &format!("{tag}-r{i}"), &ext[i / PER_EXT_NET])?;
                        let gw = r["external_gateway_info"]["external_fixed_ips"][0]["ip_address"]
                            .as_str()
                            .context("router without gateway address")?
                            .to_owned();
                        api.request(
                            "PUT",
                            &format!("/routers/{}/add_router_interface", id(&r)),
                            Some(&json!({ "port_id": ports[i].0 })),
                        )
                        .map_err(api_err)?;
                        out.push((i, id(&r).to_owned(), gw));
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("a creating thread panicked")))
            })
            .collect()
    });
    let mut routers: Vec<Option<(String, String)>> = vec![None; count];
    for part in made {
        for (i, rid, gw) in part? {
            routers[i] = Some((rid, gw));
        }
    }
    // The gateway ports' ids name the qg- devices.
    let gw_ports = api
        .get("/ports?device_owner=network:router_gateway&fields=id&fields=device_id")
        .map_err(api_err)?;
    let by_router: BTreeMap<&str, &str> = gw_ports["ports"]
        .as_array()
        .context("ports: no list")?
        .iter()
        .filter_map(|p| Some((p["device_id"].as_str()?, p["id"].as_str()?)))
        .collect();
    routers
        .into_iter()
        .zip(&ports)
        .map(|(r, (port, ip))| {
            let (rid, gw) = r.context("a router was not created")?;
            let gw_port = by_router
                .get(rid.as_str())
                .with_context(|| format!("router {rid} has no gateway port"))?;
            let qg = dev("qg-", gw_port);
            Ok(Target {
                snat: format!("-o {qg} -j SNAT --to-source {gw}"),
                addrs: vec![
                    (qg, format!("{gw}/24")),
                    (dev("qr-", port), format!("{ip}/24")),
                ],
                router: rid,
            })
        })
        .collect()
}

/// A router with a gateway; a 403 (nothing created) is tried again, twice at most: the first
/// router on a new external network, sent to an API process other than the one that created
/// the network, was refused by the policy check that reads the network once per run here.
fn create_router(api: &NeutronApi, name: &str, ext: &str) -> Result<Value> {
    let mut tries = 0;
    loop {
        match api.create_router(name, Some(ext)) {
            Err(e) if e.status() == Some(403) && tries < 2 => {
                eprintln!("neutron bench: {e}: trying again");
                tries += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
            r => return r.map_err(api_err),
        }
    }
}

/// Schedules the unhosted routers to `host` and binds their ports, with a null L3 agent that
/// stops afterwards; checks that it got exactly `want`.
fn schedule(host: &str, want: &[Target]) -> Result<()> {
    let null = NullL3::start(host)?;
    let mut ids = null.schedule_and_bind()?;
    null.stop();
    let mut wanted: Vec<&str> = want.iter().map(|t| t.router.as_str()).collect();
    ids.sort();
    wanted.sort_unstable();
    if ids != wanted {
        bail!(
            "{host} was given {} routers, not the {} created for it",
            ids.len(),
            wanted.len()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The agents.
// ---------------------------------------------------------------------------------------

/// User + system CPU seconds of `pid` and of its children it waited for.
fn cpu_with_children(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split(' ').collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // utime, stime, cutime, cstime: fields 14-17 of stat, 12-15 after the name.
    (11..15)
        .filter_map(|i| f.get(i)?.parse::<f64>().ok())
        .sum::<f64>()
        / hz
}

/// The mount namespace of `pid` (`mnt:[inode]`).
fn mount_ns(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()
}

/// The processes in mount namespace `mnt`.
fn in_mount_ns(mnt: &Path) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| mount_ns(*p).as_deref() == Some(mnt))
        .collect()
}

/// One measured agent process: l3agent, or neutron-l3-agent in a mount namespace of its own.
struct AgentProc {
    child: Option<Child>,
    log: PathBuf,
    /// Neutron's: its private mount namespace (whatever is left there is ours to stop).
    mnt: Option<PathBuf>,
}

impl AgentProc {
    fn l3agent(bin: &Path, files: &[PathBuf], dir: &Path, workers: usize) -> Result<AgentProc> {
        let log = dir.join("l3agent.log");
        let mut cmd = Command::new(bin);
        cmd.arg("agent");
        for f in files {
            cmd.arg("--config-file").arg(f);
        }
        let child = cmd
            .args(["--resync-interval", "3600", "--metrics-listen", "none"])
            .arg("--workers")
            .arg(workers.to_string())
            .arg("--control-socket")
            .arg(dir.join("run").join("control.sock"))
            .env("L3AGENT_LOG", "info,lapin=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting l3agent agent")?;
        Ok(AgentProc {
            child: Some(child),
            log,
            mnt: None,
        })
    }

    /// `neutron-l3-agent`, with `/run/netns` a private tmpfs in a mount namespace of its own
    /// (`unshare --mount`), its root helper a `sudo` in `bin` that runs the command as is.
    fn neutron(venv: &Path, files: &[PathBuf], dir: &Path, bin: &Path) -> Result<AgentProc> {
        let log = dir.join("neutron-l3-agent.log");
        let ours = mount_ns(std::process::id()).context("our mount namespace")?;
        let path = format!(
            "{}:{}:{}",
            bin.display(),
            venv.join("bin").display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        );
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg("mount -t tmpfs -o mode=0755 l3agent-bench /run/netns && exec \"$0\" \"$@\"")
            .arg(venv.join("bin/neutron-l3-agent"));
        for f in files {
            cmd.arg("--config-file").arg(f);
        }
        let child = cmd
            .arg("--log-file")
            .arg(&log)
            .env("PATH", path)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("neutron-l3-agent.out"))?)
            .spawn()
            .context("starting neutron-l3-agent")?;
        let mut p = AgentProc {
            child: Some(child),
            log,
            mnt: None,
        };
        let pid = p.pid();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            match mount_ns(pid) {
                Some(m) if m != ours => {
                    p.mnt = Some(m);
                    return Ok(p);
                }
                _ => {}
            }
            if let Some(Ok(Some(st))) = p.child.as_mut().map(Child::try_wait) {
                bail!("neutron-l3-agent exited at once ({st}): {}", dir.display());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!("neutron-l3-agent did not get its mount namespace within 10 s")
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn check_alive(&mut self) -> Result<()> {
        if let Some(Ok(Some(st))) = self.child.as_mut().map(Child::try_wait) {
            bail!("the agent exited ({st}):\n{}", self.log_tail());
        }
        Ok(())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// CPU seconds so far: the agent and its reaped children; for Neutron's, every process
    /// of its mount namespace (privsep daemons included).
    fn cpu(&self) -> f64 {
        match &self.mnt {
            Some(m) => in_mount_ns(m).into_iter().map(cpu_with_children).sum(),
            None => cpu_with_children(self.pid()),
        }
    }

    /// SIGTERM, a bounded wait, KILL; then the rest of its mount namespace, by pid.
    fn stop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        if let Some(mut child) = self.child.take() {
            if let Ok(p) = i32::try_from(child.id()) {
                let _ = kill(nix::unistd::Pid::from_raw(p), Signal::SIGTERM);
            }
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(60) {
                if !matches!(child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(m) = self.mnt.take() {
            for sig in [Signal::SIGTERM, Signal::SIGKILL] {
                let t = Instant::now();
                loop {
                    let left = in_mount_ns(&m);
                    if left.is_empty() || t.elapsed() > Duration::from_secs(10) {
                        break;
                    }
                    for p in left {
                        if let Ok(p) = i32::try_from(p) {
                            let _ = kill(nix::unistd::Pid::from_raw(p), sig);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The agent's config: what both read from `neutron.conf` + `l3_agent.ini` (one file here).
fn agent_config(dir: &Path, host: &str, ovsdb: &Path, neutron: bool) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir.join("state"))?;
    std::fs::create_dir_all(dir.join("lock"))?;
    let file = dir.join("agent.ini");
    let mut text = format!(
        "[DEFAULT]\n\
         host = {host}\n\
         transport_url = {RABBIT_URL}\n\
         state_path = {state}\n\
         interface_driver = openvswitch\n\
         agent_mode = legacy\n\
         enable_metadata_proxy = false\n\
         debug = false\n\
         [agent]\n\
         report_interval = 5\n\
         [OVS]\n\
         integration_bridge = br-int\n\
         ovsdb_connection = unix:{ovsdb}\n",
        state = dir.join("state").display(),
        ovsdb = ovsdb.display(),
    );
    if neutron {
        text.push_str(&format!(
            "[oslo_concurrency]\nlock_path = {}\n",
            dir.join("lock").display()
        ));
    }
    std::fs::write(&file, text)?;
    Ok(vec![file])
}

/// The watcher process and the times its lines arrived.
struct Watcher {
    child: Child,
    lines: Receiver<(Instant, String)>,
}

impl Watcher {
    /// `neutron-watch` on `targets`, in mount namespace `mnt` if given (through `nsenter`).
    fn start(
        bench: &Path,
        dir: &Path,
        targets: &[Target],
        mnt_of: Option<u32>,
        timeout: u64,
    ) -> Result<Watcher> {
        let file = dir.join("targets.json");
        std::fs::write(
            &file,
            Value::Array(targets.iter().map(Target::to_json).collect()).to_string(),
        )?;
        let me = bench;
        let mut cmd = match mnt_of {
            Some(pid) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--mount=/proc/{pid}/ns/mnt"))
                    .arg("--")
                    .arg(me);
                c
            }
            None => Command::new(me),
        };
        let mut child = cmd
            .arg("neutron-watch")
            .arg("--targets")
            .arg(&file)
            .arg("--timeout")
            .arg(timeout.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("watch.err"))?)
            .spawn()
            .context("starting the watcher")?;
        let out = child.stdout.take().context("watcher stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Ok(Watcher { child, lines })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A full sync, measured.
#[derive(Debug, Clone)]
struct SyncRun {
    agent: &'static str,
    routers: usize,
    /// Process start to the first router converged, and to all.
    first: f64,
    all: f64,
    /// l3agent: its `ready`; Neutron: the mean of its "Finished a router update" times.
    own: Option<f64>,
    /// l3agent: its first full sync (RPC) as it logs it.
    rpc: Option<f64>,
    cpu: f64,
    /// CPU seconds ovs-vswitchd spent meanwhile.
    ovs_cpu: f64,
}

/// CPU seconds ovs-vswitchd (of `ovs.sh`'s DIR) has used so far.
fn vswitchd_cpu(ovs_dir: &Path) -> f64 {
    std::fs::read_to_string(ovs_dir.join("ovs-vswitchd.pid"))
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .map_or(0.0, cpu_with_children)
}

/// Starts an agent on an empty host and waits until every target converged.
fn full_sync(
    agent: &'static str,
    start: impl FnOnce() -> Result<AgentProc>,
    bench: &Path,
    dir: &Path,
    ovs_dir: &Path,
    targets: &[Target],
    secs_per_router: u64,
) -> Result<(SyncRun, AgentProc)> {
    let timeout = 120 + secs_per_router * targets.len() as u64;
    let ovs0 = vswitchd_cpu(ovs_dir);
    let t0 = Instant::now();
    let mut proc = start()?;
    let watcher = Watcher::start(
        bench,
        dir,
        targets,
        proc.mnt.as_ref().map(|_| proc.pid()),
        timeout,
    )?;
    let (mut first, mut ready) = (None, None);
    let all = loop {
        match watcher.lines.recv_timeout(Duration::from_millis(100)) {
            Ok((at, line)) => {
                if line == "all" {
                    break at.duration_since(t0);
                }
                if first.is_none() && line.starts_with("done ") {
                    first = Some(at.duration_since(t0));
                }
                if let Some(n) = line.strip_prefix("done ") {
                    eprintln!(
                        "neutron bench: {agent}: {n} of {} routers converged after {:.1} s",
                        targets.len(),
                        t0.elapsed().as_secs_f64()
                    );
                }
                if line.starts_with("timeout") {
                    bail!(
                        "{agent}: {line} (of {}) after {timeout} s:\n{}",
                        targets.len(),
                        proc.log_tail()
                    );
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => bail!(
                "{agent}: the watcher ended ({}):\n{}",
                dir.join("watch.err").display(),
                proc.log_tail()
            ),
        }
        proc.check_alive()?;
        if ready.is_none()
            && proc.mnt.is_none()
            && proc.log_text().contains("initial convergence done")
        {
            ready = Some(t0.elapsed());
        }
    };
    let cpu = proc.cpu();
    let ovs_cpu = vswitchd_cpu(ovs_dir) - ovs0;
    if proc.mnt.is_none() {
        // The kernel may show every router before the agent logs `ready` (after its batch).
        let t = Instant::now();
        while ready.is_none() && t.elapsed() < Duration::from_secs(60) {
            if proc.log_text().contains("initial convergence done") {
                ready = Some(t0.elapsed());
            }
            proc.check_alive()?;
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let log = proc.log_text();
    // Neutron's figure is read once it stopped (`SyncRun::neutron_log`).
    let (own, rpc) = if proc.mnt.is_none() {
        (
            ready.map(|d| d.as_secs_f64()),
            took_ms(&log, "first full sync done").map(|ms| ms / 1000.0),
        )
    } else {
        (None, None)
    };
    Ok((
        SyncRun {
            agent,
            routers: targets.len(),
            first: first.unwrap_or(all).as_secs_f64(),
            all: all.as_secs_f64(),
            own,
            rpc,
            cpu,
            ovs_cpu,
        },
        proc,
    ))
}

impl SyncRun {
    /// Neutron's agent: the mean of its "Finished a router update ... Time elapsed: S" lines
    /// (its routers are processed concurrently, so each spans the others' work too).
    fn neutron_log(&mut self, proc: &AgentProc) {
        let times: Vec<f64> = proc
            .log_text()
            .lines()
            .filter(|l| l.contains("Finished a router update"))
            .filter_map(|l| l.rsplit("Time elapsed: ").next()?.trim().parse().ok())
            .collect();
        if !times.is_empty() {
            self.own = Some(times.iter().sum::<f64>() / times.len() as f64);
        }
    }
}

fn took_ms(log: &str, message: &str) -> Option<f64> {
    log.lines()
        .find(|l| l.contains(message))
        .and_then(|l| l.split("took_ms=").nth(1))
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
}

/// Removes what an agent left on the host: l3agent's router namespaces (Neutron's went with
/// its mount namespace) and every router port on br-int.
fn clean_host(ovsdb: &Path, targets: &[Target], namespaces: &mut RouterNamespaces) -> Result<()> {
    namespaces.delete_all();
    for t in targets {
        if let Ok(name) = NetnsName::new("router namespace", &t.ns()) {
            let _ = l3agent_netns::delete(&name);
        }
    }
    let devs: Vec<&str> = targets.iter().flat_map(Target::devices).collect();
    let db = format!("--db=unix:{}", ovsdb.display());
    for chunk in devs.chunks(100) {
        let mut cmd = Command::new("ovs-vsctl");
        cmd.args([db.as_str(), "--timeout=120"]);
        for d in chunk {
            cmd.args(["--", "--if-exists", "del-port", "br-int", d]);
        }
        let out = cmd.output()?;
        if !out.status.success() {
            bail!(
                "ovs-vsctl del-port: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(())
}

/// The plugging part alone, on a bridge of its own (`br-floor`, userspace datapath like
/// br-int) of the same ovs-vswitchd: `2 routers` internal ports added by `ovs-vsctl`, which
/// waits for ovs-vswitchd after each transaction as the agents do; first one transaction per
/// router (two ports, as both agents commit them), then all in one transaction. The devices
/// stay where ovs-vswitchd makes them (the agents move theirs into router namespaces).
/// Seconds each.
fn ovs_floor(ovsdb: &Path, routers: usize) -> Result<(f64, f64)> {
    let db = format!("--db=unix:{}", ovsdb.display());
    let vsctl = |args: &[String]| -> Result<()> {
        let out = Command::new("ovs-vsctl")
            .args([db.as_str(), "--timeout=600"])
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!("ovs-vsctl: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    let words = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
    let bridge =
        words("-- --may-exist add-br br-floor -- set Bridge br-floor datapath_type=netdev");
    let ports = |range: std::ops::Range<usize>| -> Vec<String> {
        range
            .flat_map(|i| {
                words(&format!(
                    "-- add-port br-floor fqa{i} -- set Interface fqa{i} type=internal \
                     -- add-port br-floor fqb{i} -- set Interface fqb{i} type=internal"
                ))
            })
            .collect()
    };
    vsctl(&bridge)?;
    let t = Instant::now();
    for i in 0..routers {
        vsctl(&ports(i..i + 1))?;
    }
    let per_router = t.elapsed().as_secs_f64();
    vsctl(&words("-- del-br br-floor"))?;
    vsctl(&bridge)?;
    let t = Instant::now();
    vsctl(&ports(0..routers))?;
    let one = t.elapsed().as_secs_f64();
    vsctl(&words("-- del-br br-floor"))?;
    Ok((per_router, one))
}

// ---------------------------------------------------------------------------------------
// The floating IP measure.
// ---------------------------------------------------------------------------------------

/// The least kernel work of one floating IP: its three rules (one `iptables-restore
/// --noflush`) and its address (rtnetlink), in a namespace of its own.
struct KernelFloor {
    ns: FloorNs,
}

impl KernelFloor {
    fn new() -> Result<KernelFloor> {
        Ok(KernelFloor {
            ns: FloorNs::new("nbfloor", None)?,
        })
    }

    fn rules(op: &str, fip: &str) -> String {
        format!(
            "*nat\n\
             {op} neutron-l3-agent-PREROUTING -d {fip}/32 -j DNAT --to-destination {VM_IP}\n\
             {op} neutron-l3-agent-OUTPUT -d {fip}/32 -j DNAT --to-destination {VM_IP}\n\
             {op} neutron-l3-agent-float-snat -s {VM_IP}/32 -j SNAT --to-source {fip}\n\
             COMMIT\n"
        )
    }

    fn apply(&mut self, fip: &str) -> Result<()> {
        self.ns.restore(&Self::rules("-A", fip))?;
        self.ns.address(fip, true)
    }

    fn undo(&mut self, fip: &str) -> Result<()> {
        self.ns.restore(&Self::rules("-D", fip))?;
        self.ns.address(fip, false)
    }
}

/// Runs the REST call on a thread of its own (the measure must not wait for its answer: the
/// rule may be in the kernel first); returns its latency when joined.
fn rest_aside(
    api: &NeutronApi,
    fip_id: &str,
    port: Option<&str>,
) -> std::thread::JoinHandle<Result<f64>> {
    let (api, fip_id, port) = (api.clone(), fip_id.to_owned(), port.map(str::to_owned));
    std::thread::spawn(move || {
        let t = Instant::now();
        match &port {
            Some(p) => api.associate_floating_ip(&fip_id, p),
            None => api.disassociate_floating_ip(&fip_id),
        }
        .map_err(api_err)?;
        Ok(t.elapsed().as_secs_f64())
    })
}

fn join_rest(h: std::thread::JoinHandle<Result<f64>>) -> Result<f64> {
    h.join().map_err(|_| anyhow!("the REST thread panicked"))?
}

/// Whether the dicts hold router `rid` with floating IP `fip_id` on the VM's address.
fn dict_has_fip(dicts: &[Value], rid: &str, fip_id: &str) -> bool {
    dicts.iter().filter(|r| r["id"] == rid).any(|r| {
        r["_floatingips"].as_array().is_some_and(|fs| {
            fs.iter()
                .any(|f| f["id"] == fip_id && f["fixed_ip_address"] == VM_IP)
        })
    })
}

/// The null agent's dicts until one says whether `rid` has the floating IP as `want`.
fn wait_dict(null: &NullL3, rid: &str, fip_id: &str, want: bool) -> Result<()> {
    let t = Instant::now();
    loop {
        let left = Duration::from_secs(120).saturating_sub(t.elapsed());
        if left.is_zero() {
            bail!("the null agent got no dict of router {rid} with the change within 120 s");
        }
        if let Ok(d) = null.dicts.recv_timeout(left) {
            if d.iter().any(|r| r["id"] == rid) && dict_has_fip(&d, rid, fip_id) == want {
                return Ok(());
            }
        }
    }
}

/// Floating IP figures: to the kernel (or, for the floor, to the dict + the kernel floor), and
/// the REST call's own latency; seconds.
#[derive(Debug, Default)]
struct FipRuns {
    to_kernel: Vec<f64>,
    rest: Vec<f64>,
}

/// One router with a gateway, an interface, a VM port and a floating IP (not associated).
struct FipRouter {
    router: String,
    fip_id: String,
    fip_ip: String,
    vm_port: String,
}

/// Makes a [`FipRouter`] on external network `ext` (its own tenant network, 192.0.2.0/24, the
/// VM at `VM_IP`, its port bound to `host`).
fn fip_router(api: &NeutronApi, ext: &str, name: &str, host: &str) -> Result<FipRouter> {
    let net = api.create_tenant_network(name).map_err(api_err)?;
    let subnet = api
        .create_subnet(id(&net), &format!("{name}-v4"), "192.0.2.0/24")
        .map_err(api_err)?;
    let router = api.create_router(name, Some(ext)).map_err(api_err)?;
    api.add_router_interface(id(&router), id(&subnet))
        .map_err(api_err)?;
    let vm_port = api
        .create_port(&PortSpec {
            network_id: id(&net),
            subnet_id: Some(id(&subnet)),
            ip_address: Some(VM_IP),
            host: Some(host),
            name: Some(&format!("{name}-vm")),
            ..PortSpec::default()
        })
        .map_err(api_err)?;
    let fip = api.create_floating_ip(ext, None).map_err(api_err)?;
    Ok(FipRouter {
        router: id(&router).to_owned(),
        fip_id: id(&fip).to_owned(),
        fip_ip: fip["floating_ip_address"]
            .as_str()
            .context("floating IP address")?
            .to_owned(),
        vm_port: id(&vm_port).to_owned(),
    })
}

/// Fails unless `router` is hosted by the L3 agent of `host` (and only by it).
fn hosted_by(api: &NeutronApi, router: &str, host: &str) -> Result<()> {
    let agents = api.l3_agents_hosting_router(router).map_err(api_err)?;
    let hosts: Vec<&str> = agents.iter().filter_map(|a| a["host"].as_str()).collect();
    if hosts != [host] {
        bail!("router {router} is hosted by {hosts:?}, not by {host}");
    }
    Ok(())
}

/// Waits (at most 60 s) until the L3 agent of `host` is alive in the API.
fn wait_alive(api: &NeutronApi, host: &str, agent: &mut AgentProc) -> Result<()> {
    let t = Instant::now();
    loop {
        let agents = api.list_agents().map_err(api_err)?;
        if agents
            .iter()
            .any(|a| a["agent_type"] == "L3 agent" && a["host"] == host && a["alive"] == true)
        {
            return Ok(());
        }
        agent.check_alive()?;
        if t.elapsed() > Duration::from_secs(60) {
            bail!("the L3 agent of {host} is not alive in the API after 60 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One floor event: associate (REST, aside), the null agent's dict with the floating IP, the
/// kernel floor's write; then back (untimed). (to the kernel, REST call) in seconds.
fn floor_event(
    api: &NeutronApi,
    null: &NullL3,
    kernel: &mut KernelFloor,
    r: &FipRouter,
) -> Result<(f64, f64)> {
    while null.dicts.try_recv().is_ok() {}
    let t0 = Instant::now();
    let rest = rest_aside(api, &r.fip_id, Some(&r.vm_port));
    wait_dict(null, &r.router, &r.fip_id, true)?;
    kernel.apply(&r.fip_ip)?;
    let took = t0.elapsed().as_secs_f64();
    let rest = join_rest(rest)?;
    join_rest(rest_aside(api, &r.fip_id, None))?;
    wait_dict(null, &r.router, &r.fip_id, false)?;
    kernel.undo(&r.fip_ip)?;
    Ok((took, rest))
}

/// What l3agent's router is watched with: its namespace, a netlink socket there, and its
/// nf_tables generation.
struct RouterWatch {
    ns: Netns,
    rtnl: Rtnl,
    gen: l3agent_iptables_exec::GenerationSocket,
}

impl RouterWatch {
    fn open(router: &str) -> Result<RouterWatch> {
        let ns =
            Netns::open(&NetnsName::new("ns", &format!("qrouter-{router}")).map_err(netns_err)?)
                .map_err(netns_err)?;
        let rtnl = Rtnl::open(&ns).map_err(netns_err)?;
        let gen = l3agent_iptables_exec::GenerationSocket::open(Some(&ns)).map_err(netns_err)?;
        Ok(RouterWatch { ns, rtnl, gen })
    }
}

/// One l3agent event: associate (REST, aside) until the floating IP's address and DNAT rule
/// are in the router's namespace; then back (untimed). (to the kernel, REST call) in seconds.
fn l3agent_event(
    api: &NeutronApi,
    agent: &mut AgentProc,
    w: &mut RouterWatch,
    r: &FipRouter,
) -> Result<(f64, f64)> {
    let want: std::net::IpAddr = r.fip_ip.parse()?;
    let dnat = format!("-d {}/32 -j DNAT --to-destination {VM_IP}", r.fip_ip);
    let mut gen0 = w.gen.query().map_err(netns_err)?;
    let t0 = Instant::now();
    let rest = rest_aside(api, &r.fip_id, Some(&r.vm_port));
    let (mut addr_at, mut rule_at) = (None, None);
    while addr_at.is_none() || rule_at.is_none() {
        if addr_at.is_none()
            && w.rtnl
                .addresses(None)
                .map_err(netns_err)?
                .iter()
                .any(|a| a.net.addr() == want)
        {
            addr_at = Some(t0.elapsed());
        }
        if rule_at.is_none() {
            let g = w.gen.query().map_err(netns_err)?;
            if g != gen0 {
                let seen = t0.elapsed();
                if nat_rules(&w.ns)?.contains(&dnat) {
                    rule_at = Some(seen);
                }
                gen0 = g;
            }
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!(
                "no DNAT for {} in the kernel 60 s after the association:\n{}",
                r.fip_ip,
                agent.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let took = addr_at.max(rule_at).unwrap_or_default().as_secs_f64();
    let rest = join_rest(rest)?;
    agent.check_alive()?;
    join_rest(rest_aside(api, &r.fip_id, None))?;
    let t = Instant::now();
    while nat_rules(&w.ns)?.contains(&dnat) {
        if t.elapsed() > Duration::from_secs(60) {
            bail!("the DNAT stayed 60 s after the disassociation");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((took, rest))
}

/// `iptables-save -t nat` in `ns`.
fn nat_rules(ns: &Netns) -> Result<String> {
    let out = inside(ns, || {
        Ok(Command::new("iptables-save").args(["-t", "nat"]).output()?)
    })?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits (at most 120 s) until l3agent built `router`: its namespace with the gateway's SNAT.
fn wait_built(agent: &mut AgentProc, router: &str) -> Result<()> {
    let name = NetnsName::new("ns", &format!("qrouter-{router}")).map_err(netns_err)?;
    let t = Instant::now();
    while !(l3agent_netns::exists(&name)
        && nat_rules(&Netns::open(&name).map_err(netns_err)?)?.contains("-j SNAT"))
    {
        agent.check_alive()?;
        if t.elapsed() > Duration::from_secs(120) {
            bail!(
                "router {router} was not built within 120 s:\n{}",
                agent.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The watcher (a process of its own, in the agent's mount namespace).
// ---------------------------------------------------------------------------------------

struct WatchTarget {
    ns: NetnsName,
    addrs: Vec<(IfName, ipnet::IpNet)>,
    snat: String,
}

fn converged(t: &WatchTarget) -> bool {
    let Ok(ns) = Netns::open(&t.ns) else {
        return false;
    };
    let Ok(mut rtnl) = Rtnl::open(&ns) else {
        return false;
    };
    for (dev, net) in &t.addrs {
        match rtnl.addresses(Some(dev)) {
            Ok(a) if a.iter().any(|x| x.net == *net) => {}
            _ => return false,
        }
    }
    nat_rules(&ns).is_ok_and(|r| r.contains(&t.snat))
}

/// `l3agent-bench neutron-watch`.
pub fn watch(a: WatchArgs) -> Result<()> {
    let v: Value = serde_json::from_slice(&std::fs::read(&a.targets)?)?;
    let mut pending = Vec::new();
    for t in v.as_array().context("targets: not a list")? {
        let ns = NetnsName::new("ns", t["ns"].as_str().context("ns")?).map_err(netns_err)?;
        let mut addrs = Vec::new();
        for pair in t["addrs"].as_array().context("addrs")? {
            let d = IfName::new("dev", pair[0].as_str().context("dev")?).map_err(netns_err)?;
            let net: ipnet::IpNet = pair[1].as_str().context("addr")?.parse()?;
            addrs.push((d, net));
        }
        let snat = t["snat"].as_str().context("snat")?.to_owned();
        pending.push(WatchTarget { ns, addrs, snat });
    }
    let total = pending.len();
    let t = Instant::now();
    let mut out = std::io::stdout().lock();
    while !pending.is_empty() {
        if t.elapsed() > Duration::from_secs(a.timeout) {
            writeln!(out, "timeout {}", pending.len())?;
            out.flush()?;
            return Ok(());
        }
        let before = pending.len();
        let sweep = Instant::now();
        pending.retain(|w| !converged(w));
        if pending.len() != before {
            writeln!(out, "done {}", total - pending.len())?;
            out.flush()?;
        }
        if !pending.is_empty() {
            // At most a third of a core for the watcher: its sweeps of many routers compete
            // with the agent it watches.
            std::thread::sleep(Duration::from_millis(100).max(sweep.elapsed() * 2));
        }
    }
    writeln!(out, "all")?;
    out.flush()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The benchmark.
// ---------------------------------------------------------------------------------------

/// Runs the benchmark and returns its Markdown section.
pub fn run_bench(a: &Args) -> Result<String> {
    l3agent_testkit::require_kernel();
    require_ovs();
    let bin = match &a.l3agent {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("l3agent"),
    };
    if !bin.exists() {
        bail!(
            "{}: no such binary (build it: cargo build --release -p l3agent)",
            bin.display()
        );
    }
    let total = Instant::now();
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into());
    // Built (once per machine) outside the test namespace: that one cannot reach PyPI.
    let venv = neutron_venv();
    let scratch = Scratch {
        path: PathBuf::from(format!("/tmp/l3b-nb-{}", std::process::id())),
        keep: a.keep,
    };
    let dir = scratch.path.clone();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("bin"))?;
    // neutron-l3-agent's root helper: root already, run the command as is.
    let sudo = dir.join("bin").join("sudo");
    std::fs::write(
        &sudo,
        "#!/bin/sh\n# l3agent-bench: the agent runs as root; run the command as is.\n\
         while [ $# -gt 0 ]; do case $1 in -*) shift ;; *) break ;; esac; done\nexec \"$@\"\n",
    )?;
    std::fs::set_permissions(&sudo, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    // The binaries this run uses, copied: a build meanwhile (2 cores shared with other
    // work) must not swap them under the benchmark.
    let bench_bin = dir.join("bin").join("l3agent-bench");
    std::fs::copy("/proc/self/exe", &bench_bin).context("copying this binary")?;
    let bin = {
        let copy = dir.join("bin").join("l3agent");
        std::fs::copy(&bin, &copy).with_context(|| format!("copying {}", bin.display()))?;
        copy
    };
    let host = TestNs::new("nbench");
    let _entered = Entered::enter(&host)?;

    let t = Instant::now();
    let _rabbitmq = Service::start(&host, "rabbitmq", &dir.join("rabbitmq"), &[]);
    let _mariadb = Service::start(&host, "mariadb", &dir.join("mariadb"), &[]);
    let db_url = format!(
        "mysql+pymysql://root@/neutron?unix_socket={}",
        dir.join("mariadb").join("mysqld.sock").display()
    );
    let neutron = Service::start(
        &host,
        "neutron",
        &dir.join("neutron"),
        &[("DB_URL", &db_url)],
    );
    let ovs = Service::start(&host, "ovs", &dir.join("ovs"), &[("OVS_BRIDGES", "br-int")]);
    let ovsdb = ovs.dir().join("db.sock");
    let _apis = ApiServers::start(&venv, neutron.dir(), &dir, a.api_servers.max(1) - 1)?;
    let apis: Vec<NeutronApi> = (0..a.api_servers.max(1))
        .map(|k| {
            NeutronApi::in_netns(None, API_PORT + k as u16).with_timeout(Duration::from_secs(600))
        })
        .collect();
    let api = apis[0].clone();
    unlimited_quotas(&api)?;
    let _l2 = NullL2::start(&[FIP_HOST, FLOOR_HOST, SIDE_HOST, SYNC_HOST])?;
    let testbed = t.elapsed().as_secs_f64();
    step("testbed up", t);
    let mut namespaces = RouterNamespaces::default();
    let mut physnets = Physnets(0);

    // (a) Floating IP association to DNAT: l3agent (FIP_HOST) and the floor (a null L3 agent,
    // FLOOR_HOST), each with a router of its own on the same external network, their events
    // interleaved so that both meet the same load of the (shared) machine.
    let t = Instant::now();
    let ext = api
        .create_external_network("fip-public", &physnets.next()?)
        .map_err(api_err)?;
    api.create_subnet(id(&ext), "fip-public-v4", "203.0.113.0/24")
        .map_err(api_err)?;
    let adir = dir.join("l3agent-fip");
    let files = agent_config(&adir, FIP_HOST, &ovsdb, false)?;
    let mut agent = AgentProc::l3agent(&bin, &files, &adir, a.workers)?;
    wait_alive(&api, FIP_HOST, &mut agent)?;
    // Created while l3agent is the only L3 agent alive: scheduled to it.
    let mine = fip_router(&api, id(&ext), "fip-l3agent", FIP_HOST)?;
    namespaces.0.push(format!("qrouter-{}", mine.router));
    hosted_by(&api, &mine.router, FIP_HOST)?;
    wait_built(&mut agent, &mine.router)?;
    // Created while l3agent hosts one router and the null agent none: scheduled to the latter
    // (Neutron's least-routers scheduler).
    let null = NullL3::start(FLOOR_HOST)?;
    let theirs = fip_router(&api, id(&ext), "fip-floor", FLOOR_HOST)?;
    hosted_by(&api, &theirs.router, FLOOR_HOST)?;
    step("floating IP: topology", t);
    let t = Instant::now();
    let mut kernel = KernelFloor::new()?;
    let mut watch = RouterWatch::open(&mine.router)?;
    let (mut floor, mut fips) = (FipRuns::default(), FipRuns::default());
    for e in 0..a.fip_events {
        // Alternate which goes first.
        for floor_turn in [e % 2 == 0, e % 2 == 1] {
            let (runs, (took, rest)) = if floor_turn {
                (&mut floor, floor_event(&api, &null, &mut kernel, &theirs)?)
            } else {
                (
                    &mut fips,
                    l3agent_event(&api, &mut agent, &mut watch, &mine)?,
                )
            };
            runs.to_kernel.push(took);
            runs.rest.push(rest);
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    drop(watch);
    null.stop();
    agent.stop();
    step(
        &format!(
            "floating IP: {} associations each, p50 l3agent {:.0} ms, floor {:.0} ms",
            a.fip_events,
            quantile(&mut fips.to_kernel.clone(), 0.5) * 1e3,
            quantile(&mut floor.to_kernel.clone(), 0.5) * 1e3
        ),
        t,
    );
    wait_no_l3_agent_alive(&api)?;

    // (b) Full sync.
    let mut syncs: Vec<SyncRun> = Vec::new();
    let mut ovs_plug = None;
    let mut creation: Vec<(usize, f64)> = Vec::new();
    // `count` routers named `tag`, created, scheduled to `host` and bound (none for 0).
    let mut routers_for = |tag: &str, host: &str, count: usize| -> Result<Vec<Target>> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let t = Instant::now();
        let s = create_routers(&apis, tag, host, count, a.create_threads, &mut physnets)?;
        creation.push((s.len(), t.elapsed().as_secs_f64()));
        step(&format!("{} routers created", s.len()), t);
        let t = Instant::now();
        schedule(host, &s)?;
        step(&format!("{} routers scheduled and bound", s.len()), t);
        wait_no_l3_agent_alive(&api)?;
        Ok(s)
    };
    let side = routers_for("side", SIDE_HOST, a.side_routers)?;
    let big = routers_for("sync", SYNC_HOST, a.routers)?;
    if !side.is_empty() {
        let d = dir.join("l3agent-side");
        let files = agent_config(&d, SIDE_HOST, &ovsdb, false)?;
        namespaces.0.extend(side.iter().map(Target::ns));
        let (s, mut p) = full_sync(
            "l3agent",
            || AgentProc::l3agent(&bin, &files, &d, a.workers),
            &bench_bin,
            &d,
            ovs.dir(),
            &side,
            a.secs_per_router,
        )?;
        p.stop();
        eprintln!("neutron bench: {s:?}");
        syncs.push(s);
        clean_host(&ovsdb, &side, &mut namespaces)?;
        wait_no_l3_agent_alive(&api)?;
        if !a.skip_neutron_agent {
            let d = dir.join("neutron-side");
            let files = agent_config(&d, SIDE_HOST, &ovsdb, true)?;
            let (mut s, mut p) = full_sync(
                "neutron-l3-agent",
                || AgentProc::neutron(&venv, &files, &d, &dir.join("bin")),
                &bench_bin,
                &d,
                ovs.dir(),
                &side,
                a.secs_per_router,
            )?;
            p.stop();
            s.neutron_log(&p);
            eprintln!("neutron bench: {s:?}");
            syncs.push(s);
            clean_host(&ovsdb, &side, &mut namespaces)?;
            wait_no_l3_agent_alive(&api)?;
        }
    }
    if !big.is_empty() {
        let d = dir.join("l3agent-sync");
        let files = agent_config(&d, SYNC_HOST, &ovsdb, false)?;
        namespaces.0.extend(big.iter().map(Target::ns));
        let (s, mut p) = full_sync(
            "l3agent",
            || AgentProc::l3agent(&bin, &files, &d, a.workers),
            &bench_bin,
            &d,
            ovs.dir(),
            &big,
            a.secs_per_router,
        )?;
        p.stop();
        eprintln!("neutron bench: {s:?}");
        syncs.push(s);
        clean_host(&ovsdb, &big, &mut namespaces)?;
        let t = Instant::now();
        ovs_plug = Some(ovs_floor(&ovsdb, big.len())?);
        step("OVS floor", t);
    }
    let context = format!(
        "Testbed up in {testbed:.0} s; the whole run took {:.0} s; {} CPUs, load average {load} \
         at the start (a machine shared with other work).",
        total.elapsed().as_secs_f64(),
        std::thread::available_parallelism().map_or(0, usize::from),
    );
    let md = report(a, &context, &floor, &fips, &creation, &syncs, ovs_plug);
    Ok(md)
}

fn report(
    a: &Args,
    context: &str,
    floor: &FipRuns,
    fips: &FipRuns,
    creation: &[(usize, f64)],
    syncs: &[SyncRun],
    ovs_plug: Option<(f64, f64)>,
) -> String {
    let ms = |s: f64| s * 1000.0;
    let q = |v: &[f64], p: f64| quantile(&mut v.to_vec(), p);
    let (k50, k99) = (q(&fips.to_kernel, 0.5), q(&fips.to_kernel, 0.99));
    let (f50, f99) = (q(&floor.to_kernel, 0.5), q(&floor.to_kernel, 0.99));
    let mut md = format!(
        "## Neutron: l3agent against a real neutron-server 29.0.0 (issue 12)\n\n\
         `l3agent-bench neutron`: RabbitMQ, MariaDB, neutron-server 29.0.0 (the testbed of \
         `scripts/testbed/`, {apis} API server process(es)) and Open vSwitch (userspace datapath) in one \
         throwaway network namespace, driven through the REST API; `l3agent agent --config-file` \
         (release build) with Neutron-style INI files, ports on br-int. A null L2 agent (state reports of an \
         \"Open vSwitch agent\" on each host) lets ML2 bind the router ports as on a real network node. \
         {context}\n\n\
         ### Floating IP association to DNAT ({n} associations)\n\n\
         From the start of `PUT /v2.0/floatingips/ID` (port_id) to the DNAT rule and the address in the \
         router's namespace (polled every millisecond over netlink, the rule read back with `iptables-save`). \
         Floor, in the same run, on a router of the same shape on the same external network, its \
         associations interleaved with l3agent's: a null L3 agent (oslo.messaging through \
         `l3agent_neutron`, no reconciler) takes the `routers_updated` notification, calls \
         `sync_routers`, and once the dict carries the floating IP writes its three rules with one \
         `iptables-restore --noflush` and its address over rtnetlink in a namespace of its own: the \
         server's part (REST call, notification, router dict) plus the least kernel work any agent \
         must do. The REST call's own latency (its answer) is shown beside it.\n\n\
         | measure | p50 | p99 |\n|---|---:|---:|\n\
         | l3agent: REST call start to DNAT in the kernel | {k50:.0} ms | {k99:.0} ms |\n\
         | floor: REST call start to the dict at a null agent + the kernel write | {f50:.0} ms | {f99:.0} ms |\n\
         | **ratio l3agent / floor** | **{r50:.2}x** | **{r99:.2}x** |\n\
         | REST call's own latency (with l3agent / with the null agent) | {ra50:.0} / {rf50:.0} ms | {ra99:.0} / {rf99:.0} ms |\n\n",
        apis = a.api_servers.max(1),
        n = fips.to_kernel.len(),
        k50 = ms(k50),
        k99 = ms(k99),
        f50 = ms(f50),
        f99 = ms(f99),
        r50 = k50 / f50,
        r99 = k99 / f99,
        ra50 = ms(q(&fips.rest, 0.5)),
        rf50 = ms(q(&floor.rest, 0.5)),
        ra99 = ms(q(&fips.rest, 0.99)),
        rf99 = ms(q(&floor.rest, 0.99)),
    );
    if !syncs.is_empty() {
        md.push_str(
            "### Full sync at agent start\n\n\
             From the agent's process start on an empty host (no namespace, no OVS port, no state) to every \
             router converged in the kernel: its namespace, the gateway and interface devices with Neutron's \
             addresses, the gateway's SNAT rule (a watcher process polls them all in the agent's mount \
             namespace). Each router has a gateway and one interface; they are scheduled to the host and \
             their ports bound beforehand, and the host's agent record is dead (the server answers \
             `revived`), as after a reboot of a network node. Neutron's own `neutron-l3-agent` (29.0.0, \
             the same venv) runs with the same config keys, as root (its root helper runs commands as is), \
             in a mount namespace of its own.\n\n\
             | agent | routers | first router | all routers | per router | CPU (agent + children) | ovs-vswitchd CPU | agent's own figures |\n\
             |---|---:|---:|---:|---:|---:|---:|---|\n",
        );
        for s in syncs {
            let own = match (s.agent, s.own, s.rpc) {
                ("l3agent", Some(ready), Some(rpc)) => {
                    format!("ready at {ready:.1} s; first full sync (RPC) {rpc:.1} s")
                }
                ("l3agent", Some(ready), None) => format!("ready at {ready:.1} s"),
                (_, Some(mean), _) if s.agent != "l3agent" => {
                    format!("its log: each router update took {mean:.1} s on average (processed concurrently)")
                }
                _ => String::new(),
            };
            md.push_str(&format!(
                "| {} | {} | {:.1} s | {:.1} s | {:.3} s | {:.1} s | {:.1} s | {own} |\n",
                s.agent,
                s.routers,
                s.first,
                s.all,
                s.all / s.routers as f64,
                s.cpu,
                s.ovs_cpu,
            ));
        }
        let l3 = syncs
            .iter()
            .find(|s| s.agent == "l3agent" && s.routers == a.side_routers);
        let nt = syncs.iter().find(|s| s.agent == "neutron-l3-agent");
        if let (Some(l3), Some(nt)) = (l3, nt) {
            md.push_str(&format!(
                "\nSide by side on the same {} routers: neutron-l3-agent / l3agent = **{:.1}x** \
                 (all converged), {:.1}x CPU.\n",
                l3.routers,
                nt.all / l3.all,
                nt.cpu / l3.cpu.max(1e-3)
            ));
        }
        if let (Some((per_router, one)), Some(big)) =
            (ovs_plug, syncs.iter().rfind(|s| s.agent == "l3agent"))
        {
            md.push_str(&format!(
                "\nThe plugging part alone (floor of the OVS work, same ovs-vswitchd, a bridge of its own, the \
                 devices left where ovs-vswitchd makes them): {ports} internal ports added with `ovs-vsctl` \
                 (which waits for ovs-vswitchd, as the agents do), one transaction per router as both agents \
                 commit them: **{per_router:.1} s** (l3agent's full sync of {n} routers, {all:.1} s, is \
                 **{r:.2}x** that); all in one transaction: {one:.1} s.\n",
                ports = 2 * big.routers,
                r = big.all / per_router,
                all = big.all,
                n = big.routers,
            ));
        }
        if !creation.is_empty() {
            let c: Vec<String> = creation
                .iter()
                .map(|(n, s)| format!("{n} in {s:.0} s ({:.2} s each)", s / *n as f64))
                .collect();
            md.push_str(&format!(
                "\nRouters created through the REST API ({} clients): {}.\n",
                a.create_threads,
                c.join(", ")
            ));
        }
    }
    md
}
