//! The kernel-plumbing benchmark (issue 4): create `count` namespaces, each with a veth pair
//! into a shared host namespace, two addresses, three routes, two policy rules, one permanent
//! neighbour and five sysctls; then delete them all. Done three ways in the same run:
//! l3agent in-process (rtnetlink, one socket per namespace), one `ip`/`sysctl` process per
//! operation (what Neutron's ip_lib does), and `ip -batch` (one process per namespace plus one
//! `sysctl` process per namespace, which batches cannot do).

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use ipnet::IpNet;
use l3agent_rtnl::prelude::*;
use l3agent_rtnl::route::Route;
use l3agent_rtnl::rule::Rule;
use l3agent_rtnl::sysctl::{self, Scope, Sysctl};
use l3agent_rtnl::{netns, Netns, Rtnl};
use l3agent_testkit::TestNs;
use l3agent_types::{IfName, NetnsName};
use serde_json::json;

/// Arguments of `l3agent-bench plumbing`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Namespaces per run.
    #[arg(long, default_value_t = 100)]
    count: usize,
    /// Runs (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Where to write plumbing.json.
    #[arg(long, default_value = "target/bench")]
    out_dir: std::path::PathBuf,
}

fn ns_name(tag: &str, i: usize) -> String {
    format!("l3b-{}-{tag}-{i}", std::process::id())
}

fn if_name(s: &str) -> Result<IfName> {
    Ok(IfName::new("bench", s)?)
}

fn net(s: &str) -> IpNet {
    s.parse().expect("literal network")
}

/// The per-namespace work, in `ip` syntax (used by both process contenders).
fn ip_lines(i: usize) -> Vec<String> {
    let dev = format!("qr-b{i}");
    vec![
        format!("link set {dev} up"),
        format!("addr add 192.0.2.1/24 dev {dev}"),
        format!("addr add 2001:db8:{i:x}::1/64 dev {dev}"),
        format!("route add default via 192.0.2.254 dev {dev}"),
        format!("route add 198.51.100.0/24 dev {dev} scope link"),
        format!("route add default via 192.0.2.254 dev {dev} table 16"),
        "rule add from 192.0.2.10/32 lookup 16 priority 32768".to_string(),
        "rule add to 203.0.113.0/24 lookup 16 priority 32769".to_string(),
        format!("neigh add 192.0.2.20 lladdr fa:16:3e:00:00:01 dev {dev} nud permanent"),
    ]
}

fn sysctl_args(i: usize) -> Vec<String> {
    vec![
        "net.ipv4.ip_forward=1".into(),
        "net.ipv6.conf.all.forwarding=1".into(),
        format!("net.ipv4.conf.qr-b{i}.proxy_arp=1"),
        "net.ipv4.conf.all.arp_ignore=1".into(),
        "net.ipv4.conf.all.send_redirects=0".into(),
    ]
}

fn run(argv: &[&str], stdin: Option<&str>) -> Result<()> {
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{argv:?}"))?;
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{argv:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn l3agent(host: &TestNs, count: usize) -> Result<(f64, f64)> {
    let host_ns = Netns::open(&NetnsName::new("host", &host.name)?)?;
    let t = Instant::now();
    let mut host_rtnl = Rtnl::open(&host_ns)?;
    let mut names = Vec::new();
    for i in 0..count {
        let name = NetnsName::new("ns", &ns_name("l3a", i))?;
        netns::create(&name)?;
        let ns = Netns::open(&name)?;
        let dev = if_name(&format!("qr-b{i}"))?;
        host_rtnl.add_veth(&if_name(&format!("tap-b{i}"))?, &dev, Some(ns.fd()), None)?;
        let mut r = Rtnl::open(&ns)?;
        r.set_up(&dev, true)?;
        r.add_address(&dev, net("192.0.2.1/24"), true)?;
        r.add_address(&dev, format!("2001:db8:{i:x}::1/64").parse()?, false)?;
        r.replace_route(&Route {
            gateway: Some("192.0.2.254".parse()?),
            dev: Some(dev.clone()),
            ..Route::to(net("0.0.0.0/0"))
        })?;
        r.replace_route(&Route {
            dev: Some(dev.clone()),
            scope_link: true,
            ..Route::to(net("198.51.100.0/24"))
        })?;
        r.replace_route(&Route {
            gateway: Some("192.0.2.254".parse()?),
            dev: Some(dev.clone()),
            table: 16,
            ..Route::to(net("0.0.0.0/0"))
        })?;
        r.add_rule(&Rule {
            ipv6: false,
            from: Some(net("192.0.2.10/32")),
            to: None,
            iif: None,
            table: 16,
            priority: 32768,
        })?;
        r.add_rule(&Rule {
            ipv6: false,
            from: None,
            to: Some(net("203.0.113.0/24")),
            iif: None,
            table: 16,
            priority: 32769,
        })?;
        r.replace_neighbour(&dev, "192.0.2.20".parse()?, [0xfa, 0x16, 0x3e, 0, 0, 1])?;
        sysctl::write(
            &ns,
            &[
                (Sysctl::IpForward, 1),
                (Sysctl::Ipv6Forwarding(Scope::All), 1),
                (Sysctl::ProxyArp(Scope::Dev(dev.clone())), 1),
                (Sysctl::ArpIgnore(Scope::All), 1),
                (Sysctl::SendRedirects(Scope::All), 0),
            ],
        )?;
        names.push(name);
    }
    let create = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for n in &names {
        netns::delete(n)?;
    }
    Ok((create, t.elapsed().as_secs_f64()))
}

fn per_process(host: &TestNs, count: usize) -> Result<(f64, f64)> {
    let t = Instant::now();
    let mut names = Vec::new();
    for i in 0..count {
        let name = ns_name("proc", i);
        run(&["ip", "netns", "add", &name], None)?;
        run(
            &[
                "ip",
                "-n",
                &host.name,
                "link",
                "add",
                &format!("tap-b{i}"),
                "type",
                "veth",
                "peer",
                "name",
                &format!("qr-b{i}"),
                "netns",
                &name,
            ],
            None,
        )?;
        for line in ip_lines(i) {
            let mut argv = vec!["ip", "-n", &name];
            argv.extend(line.split(' '));
            run(&argv, None)?;
        }
        for s in sysctl_args(i) {
            run(
                &["ip", "netns", "exec", &name, "sysctl", "-q", "-w", &s],
                None,
            )?;
        }
        names.push(name);
    }
    let create = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for n in &names {
        run(&["ip", "netns", "del", n], None)?;
    }
    Ok((create, t.elapsed().as_secs_f64()))
}

fn batched(host: &TestNs, count: usize) -> Result<(f64, f64)> {
    let t = Instant::now();
    let names: Vec<String> = (0..count).map(|i| ns_name("batch", i)).collect();
    let adds: String = names.iter().map(|n| format!("netns add {n}\n")).collect();
    run(&["ip", "-batch", "-"], Some(&adds))?;
    let links: String = names
        .iter()
        .enumerate()
        .map(|(i, n)| format!("link add tap-b{i} type veth peer name qr-b{i} netns {n}\n"))
        .collect();
    run(&["ip", "-n", &host.name, "-batch", "-"], Some(&links))?;
    for (i, n) in names.iter().enumerate() {
        let text: String = ip_lines(i).into_iter().map(|l| l + "\n").collect();
        run(&["ip", "-n", n, "-batch", "-"], Some(&text))?;
        let sysctls = sysctl_args(i);
        let mut argv = vec!["ip", "netns", "exec", n, "sysctl", "-q", "-w"];
        argv.extend(sysctls.iter().map(String::as_str));
        run(&argv, None)?;
    }
    let create = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let dels: String = names.iter().map(|n| format!("netns del {n}\n")).collect();
    run(&["ip", "-batch", "-"], Some(&dels))?;
    Ok((create, t.elapsed().as_secs_f64()))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs the comparison; prints a Markdown table and writes plumbing.json. Returns the table.
pub fn run_bench(a: &Args) -> Result<String> {
    l3agent_testkit::require_kernel();
    let mut samples: BTreeMap<(&str, &str), Vec<f64>> = BTreeMap::new();
    type Contender = fn(&TestNs, usize) -> Result<(f64, f64)>;
    let contenders: [(&str, Contender); 3] = [
        ("l3agent", l3agent),
        ("ip per operation", per_process),
        ("ip -batch", batched),
    ];
    for run in 0..a.runs {
        for (name, f) in contenders {
            eprintln!("[plumbing] run {}/{} {name}", run + 1, a.runs);
            let host = TestNs::new("bhost");
            let (c, d) = f(&host, a.count)?;
            samples.entry((name, "create")).or_default().push(c);
            samples.entry((name, "delete")).or_default().push(d);
        }
    }
    let med: BTreeMap<String, f64> = samples
        .into_iter()
        .map(|((c, p), v)| (format!("{c}.{p}"), median(v)))
        .collect();
    std::fs::create_dir_all(&a.out_dir)?;
    std::fs::write(
        a.out_dir.join("plumbing.json"),
        serde_json::to_string_pretty(&json!({"count": a.count, "runs": a.runs, "median_s": med}))?,
    )?;
    let g = |k: &str| med.get(k).copied().unwrap_or(f64::NAN);
    let mut s = format!(
        "## Kernel plumbing: l3agent in-process vs `ip` per operation vs `ip -batch`\n\n\
         {} namespaces, each with a veth pair into a shared host namespace (link up), two addresses, three routes (one in table 16), two policy rules, one permanent neighbour and five sysctls; then all deleted. \
         Median of {} runs, seconds. `ip -batch` needs one `ip` process per namespace (its lines cannot change namespace) and one `sysctl` process per namespace.\n\n\
         | contender | create | delete | total | total / l3agent |\n|---|---:|---:|---:|---:|\n",
        a.count, a.runs
    );
    let base = g("l3agent.create") + g("l3agent.delete");
    for (name, _) in contenders {
        let (c, d) = (g(&format!("{name}.create")), g(&format!("{name}.delete")));
        s.push_str(&format!(
            "| {name} | {c:.3} | {d:.3} | {:.3} | {:.2}x |\n",
            c + d,
            (c + d) / base
        ));
    }
    Ok(s)
}
