//! The router-level benchmark (issue 5): a cold apply of `count` legacy routers with `fips`
//! floating IPs each on one host, then adding one floating IP, then a no-op apply, driven as a
//! library user would (`l3agent_router::host::apply`) from inside a throwaway host namespace.

use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args as ClapArgs;
use l3agent_router::config::ConfigDoc;
use l3agent_router::host::{self, ApplyOptions, RouterStatus, Unchanged};
use l3agent_testkit::TestNs;
use serde_json::{json, Value};

/// Arguments of `l3agent-bench routers`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Routers.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Floating IPs per router.
    #[arg(long, default_value_t = 10)]
    fips: usize,
}

/// Routers per bridge (a Linux bridge takes at most 1024 ports).
const PER_BRIDGE: usize = 500;

/// The external network: every router's gateway and floating IPs are distinct addresses of
/// one /10 (a host refuses a floating IP held by two routers).
const EXT_BASE: u32 = u32::from_be_bytes([100, 64, 0, 0]);

fn ext_ip(n: u32) -> String {
    std::net::Ipv4Addr::from(EXT_BASE + n).to_string()
}

/// Floating IP `f` of router `i`.
fn fip(i: usize, f: usize, fips: usize) -> String {
    ext_ip(0x10000 + (i * fips + f) as u32)
}

fn router(i: usize, fips: usize) -> Value {
    let k = i / PER_BRIDGE;
    let port = |kind: u32, net: String, ip: &str, len: u8, cidr: &str, gw: &str| {
        json!({
            "id": format!("{kind}{i:07x}-0000-4000-8000-000000000000"),
            "network_id": net,
            "mac_address": format!("fa:16:3e:{:02x}:{:02x}:{:02x}", kind, (i >> 8) & 0xff, i & 0xff),
            "mtu": 1500,
            "fixed_ips": [{"ip_address": ip, "prefixlen": len, "subnet_id": format!("s{kind}")}],
            "subnets": [{"id": format!("s{kind}"), "cidr": cidr, "gateway_ip": gw}],
        })
    };
    let floatingips: Vec<Value> = (0..fips)
        .map(|f| json!({"id": format!("f{i}-{f}"), "floating_ip_address": fip(i, f, fips), "fixed_ip_address": format!("192.0.2.{}", 10 + f)}))
        .collect();
    json!({
        "id": format!("{i:08x}-bbbb-4000-8000-000000000000"),
        "gw_port": port(2, format!("ext-{k}"), &ext_ip(2 + i as u32), 10, "100.64.0.0/10", "100.64.0.1"),
        "_interfaces": [port(1, format!("int-{k}"), "192.0.2.1", 24, "192.0.2.0/24", "192.0.2.1")],
        "_floatingips": floatingips,
    })
}

fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let t = Instant::now();
    let v = f()?;
    Ok((v, t.elapsed().as_secs_f64()))
}

/// Runs the benchmark and returns its Markdown section.
pub fn run_bench(a: &Args) -> Result<String> {
    l3agent_testkit::require_kernel();
    let host_ns = TestNs::new("rhost");
    let bridges = a.count.div_ceil(PER_BRIDGE);
    let mut nets = serde_json::Map::new();
    for k in 0..bridges {
        for (kind, net) in [("bi", format!("int-{k}")), ("be", format!("ext-{k}"))] {
            let br = format!("{kind}{k}");
            host_ns.ok(&["ip", "link", "add", &br, "type", "bridge"]);
            host_ns.ok(&["ip", "link", "set", &br, "up"]);
            nets.insert(net, json!(br));
        }
    }
    let state = std::env::temp_dir().join(format!("l3agent-bench-routers-{}", std::process::id()));
    let mut routers: Vec<Value> = (0..a.count).map(|i| router(i, a.fips)).collect();
    let doc = |routers: &[Value]| -> Result<l3agent_router::config::HostConfig> {
        let v = json!({"agent": {"mode": "legacy", "host": "bench", "state_path": state, "bridges": nets}, "routers": routers});
        let doc: ConfigDoc = serde_json::from_value(v)?;
        doc.validate().map_err(|e| anyhow::anyhow!("{e:?}"))
    };
    let host_path = format!("/run/netns/{}", host_ns.name);
    // Everything runs on a thread inside the host namespace; the workers it spawns inherit it.
    let result = std::thread::scope(|s| {
        s.spawn(|| -> Result<String> {
            let f = std::fs::File::open(&host_path)?;
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)?;
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let facts = l3agent_router::compile::HostFacts {
                random_fully: l3agent_iptables_exec::runner::random_fully_supported(),
            };
            let backend = l3agent_iptables_exec::runner::system_backend()
                .unwrap_or(l3agent_iptables_exec::Backend::Nft);
            let announcer = l3agent_rtnl::announce::Announcer::start(Default::default());
            let make = host::real_sides(backend, &announcer);
            let verify = ApplyOptions::new(facts.clone(), stop.clone());
            let trust = ApplyOptions {
                unchanged: Unchanged::Trust,
                ..verify.clone()
            };
            let cold_cfg = doc(&routers)?;
            let (r, cold) = timed(|| Ok(host::apply(&cold_cfg, &verify, &make)?))?;
            if r.failed() {
                bail!("cold apply failed: {:?}", r.routers.iter().find(|x| x.error.is_some()));
            }
            let t = Instant::now();
            routers[a.count / 2]["_floatingips"].as_array_mut().expect("list").push(json!({"id": "new", "floating_ip_address": fip(a.count, 0, a.fips), "fixed_ip_address": "192.0.2.99"}));
            let add_cfg = doc(&routers)?;
            let read = t.elapsed().as_secs_f64();
            let (r, add) = timed(|| Ok(host::apply(&add_cfg, &verify, &make)?))?;
            let converged: Vec<&str> = r.routers.iter().filter(|x| x.status != RouterStatus::Unchanged).map(|x| x.id.as_str()).collect();
            if converged.len() != 1 {
                bail!("adding one floating IP touched {} routers", converged.len());
            }
            routers[a.count / 2]["_floatingips"].as_array_mut().expect("list").push(json!({"id": "new2", "floating_ip_address": fip(a.count, 1, a.fips), "fixed_ip_address": "192.0.2.98"}));
            let add2_cfg = doc(&routers)?;
            let (r, add_trusted) = timed(|| Ok(host::apply(&add2_cfg, &trust, &make)?))?;
            if r.routers.iter().filter(|x| x.status != RouterStatus::Unchanged).count() != 1 {
                bail!("--changed-only touched more than one router");
            }
            let (r, noop) = timed(|| Ok(host::apply(&add2_cfg, &verify, &make)?))?;
            if r.changed() {
                bail!("no-op apply changed something");
            }
            let (_, destroy) = timed(|| Ok(host::destroy(&state, None, &stop, &make)?))?;
            let n = a.count;
            Ok(format!(
                "## Routers: {n} legacy routers with {f} floating IPs each, on one host\n\n\
                 In-process `host::apply` (library use) from inside a throwaway host namespace, {bridges} bridges per side; one run. \
                 Each router: namespace, sysctls, two veth ports on bridges, addresses, gateway and on-link routes, iptables (SNAT, {f} DNAT/SNAT pairs) on the host's default backend.\n\n\
                 | step | time | per router |\n|---|---:|---:|\n\
                 | cold apply | {cold:.2} s | {:.1} ms |\n\
                 | validate the config with one more floating IP | {:.1} ms | |\n\
                 | add one floating IP (apply, the other routers checked against the kernel) | {:.1} ms | |\n\
                 | add one floating IP (apply --changed-only) | {:.1} ms | |\n\
                 | no-op apply (every router diffed against the kernel: netlink dumps, sysctls, iptables-save) | {:.2} s | {:.2} ms |\n\
                 | destroy all | {destroy:.2} s | {:.1} ms |\n",
                cold * 1000.0 / n as f64,
                read * 1000.0,
                add * 1000.0,
                add_trusted * 1000.0,
                noop,
                noop * 1000.0 / n as f64,
                destroy * 1000.0 / n as f64,
                f = a.fips,
            ))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("benchmark thread panicked"))?
    });
    let _ = std::fs::remove_dir_all(&state);
    result
}
