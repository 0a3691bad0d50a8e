//! The iptables benchmark: see the crate doc.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use l3agent_iptables::kernel::KernelState;
use l3agent_iptables::plan::plan_family;
use l3agent_iptables::{Family, IptablesModel, ModelOptions, NetnsName, RuleSpec, Table, WrapName};
use l3agent_iptables_exec::{process, Backend, BackendChoice, ExecOptions, Manager, NetnsTarget};
use l3agent_testkit::TestNs;
use serde_json::{json, Value};

const SCENARIOS: [&str; 5] = ["cold", "add1", "remove1", "noop", "change10"];
const WRAP: &str = "l3agent";

/// Arguments of `l3agent-bench iptables`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Rule counts N.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,50000")]
    sizes: Vec<usize>,
    /// Backends.
    #[arg(long, value_delimiter = ',', default_value = "nft,legacy")]
    backends: Vec<String>,
    /// Runs per cell (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Skip Neutron (no virtualenv needed).
    #[arg(long)]
    skip_neutron: bool,
    /// Python interpreter of a virtualenv with `neutron` installed (bench/run.sh makes one).
    #[arg(long, default_value = "target/neutron-venv/bin/python")]
    python: PathBuf,
    /// Where to write iptables.json.
    #[arg(long, default_value = "target/bench")]
    out_dir: PathBuf,
    /// Markdown file to write the results table to.
    #[arg(long, default_value = "BENCHMARKS.md")]
    markdown: PathBuf,
    /// Contenders to run: l3agent (one long-lived manager), raw, neutron, cli (a fresh
    /// `l3agent iptables apply` process per step).
    #[arg(long, value_delimiter = ',', default_value = "l3agent,raw,neutron,cli")]
    contenders: Vec<String>,
    /// The l3agent binary of the cli contender (default: `l3agent` beside this binary).
    #[arg(long)]
    l3agent: Option<PathBuf>,
}

/// Arguments of the hidden worker of the cli contender.
#[derive(Debug, ClapArgs)]
pub struct CliWorkerArgs {
    #[arg(long)]
    netns: String,
    #[arg(long)]
    backend: String,
    #[arg(long)]
    l3agent: PathBuf,
    /// Rules file of the workload.
    #[arg(long)]
    base: PathBuf,
    /// The same with one more rule.
    #[arg(long)]
    add1: PathBuf,
    /// State directory of the one-shot applies (fresh: the first apply is cold).
    #[arg(long)]
    state: PathBuf,
}

/// Arguments of the hidden worker.
#[derive(Debug, ClapArgs)]
pub struct WorkerArgs {
    #[arg(long)]
    netns: String,
    #[arg(long)]
    backend: String,
    #[arg(long)]
    n: usize,
}

const SOURCES_PER_PREFIX: usize = 256;

/// Rule `i` of the workload, in canonical form: a distinct (source /32, TCP port) pair, sources
/// from the documentation prefixes only. Keep in sync with bench/neutron_driver.py.
pub fn workload_rule(i: usize, port_shift: usize) -> String {
    let prefixes = ["192.0.2", "198.51.100", "203.0.113"];
    let k = i % (3 * SOURCES_PER_PREFIX);
    let src = format!(
        "{}.{}",
        prefixes[k / SOURCES_PER_PREFIX],
        k % SOURCES_PER_PREFIX
    );
    let port = 1024 + i / (3 * SOURCES_PER_PREFIX) + port_shift;
    format!("-s {src}/32 -p tcp -m tcp --dport {port} -j ACCEPT")
}

const EXTRA: &str = "-s 203.0.113.254/32 -p tcp -m tcp --dport 9 -j DROP";

fn options() -> ModelOptions {
    ModelOptions {
        ipv6: false,
        ..ModelOptions::default()
    }
}

fn build_model(n: usize) -> Result<IptablesModel> {
    let mut m = IptablesModel::new(WrapName::new(WRAP)?, options());
    for c in 0..n / 100 {
        let chain = format!("c{c}");
        m.add_chain(Family::V4, Table::Filter, &chain, true)?;
        m.add_rule(
            Family::V4,
            Table::Filter,
            RuleSpec::new("FORWARD", &format!("-j ${chain}")),
        )?;
        for r in 0..100 {
            m.add_rule(
                Family::V4,
                Table::Filter,
                RuleSpec::new(&chain, &workload_rule(c * 100 + r, 0)),
            )?;
        }
    }
    Ok(m)
}

fn backend_of(name: &str) -> Result<Backend> {
    match name {
        "nft" => Ok(Backend::Nft),
        "legacy" => Ok(Backend::Legacy),
        other => bail!("--backends: unknown backend {other:?} (nft or legacy)"),
    }
}

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

/// One l3agent sequence in an existing namespace, as a library user would drive it.
pub fn worker(a: WorkerArgs) -> Result<()> {
    let target = NetnsTarget::Named(NetnsName::new("--netns", &a.netns)?);
    let mut out = BTreeMap::new();
    let mut manager = Manager::open(
        &target,
        BackendChoice::Fixed(backend_of(&a.backend)?),
        IptablesModel::new(WrapName::new(WRAP)?, options()),
        ExecOptions::default(),
    )?;
    let t = Instant::now();
    let model = build_model(a.n)?;
    out.insert("build", secs(t));
    manager.set_model(model);
    let t = Instant::now();
    manager.apply()?;
    out.insert("cold", secs(t));

    let t = Instant::now();
    manager
        .model_mut()
        .add_rule(Family::V4, Table::Filter, RuleSpec::new("c7", EXTRA))?;
    let r = manager.apply()?;
    out.insert("add1", secs(t));
    assert_eq!(r.lines(), 3, "add1 sent {:?}", r.sent);

    let t = Instant::now();
    manager
        .model_mut()
        .remove_rule(Family::V4, Table::Filter, RuleSpec::new("c7", EXTRA))?;
    manager.apply()?;
    out.insert("remove1", secs(t));

    // The no-op is too short for one sample: average a thousand.
    let t = Instant::now();
    for _ in 0..1000 {
        assert!(manager.apply()?.is_noop());
    }
    out.insert("noop", secs(t) / 1000.0);

    let t = Instant::now();
    for c in 0..a.n / 1000 {
        let chain = format!("c{c}");
        manager
            .model_mut()
            .empty_chain(Family::V4, Table::Filter, &chain, true)?;
        for r in 0..100 {
            manager.model_mut().add_rule(
                Family::V4,
                Table::Filter,
                RuleSpec::new(&chain, &workload_rule(c * 100 + r, 30000)),
            )?;
        }
    }
    out.insert("change10_build", secs(t));
    let t = Instant::now();
    manager.apply()?;
    out.insert("change10", secs(t));
    if !manager.check_convergence()?.is_empty() {
        bail!("l3agent did not converge");
    }
    let mut v = serde_json::to_value(out)?;
    v["maxrss_kib"] = json!(maxrss_kib());
    println!("{v}");
    Ok(())
}

/// The workload as a rules file (JSON), `extra`: with [`EXTRA`] at the end of chain c7.
fn rules_file(n: usize, extra: bool) -> Value {
    let chains: Vec<String> = (0..n / 100).map(|c| format!("c{c}")).collect();
    let mut rules = Vec::with_capacity(n + n / 100 + 1);
    for c in 0..n / 100 {
        rules.push(json!({"chain": "FORWARD", "rule": format!("-j $c{c}")}));
        for r in 0..100 {
            rules.push(json!({"chain": format!("c{c}"), "rule": workload_rule(c * 100 + r, 0)}));
        }
        if extra && c == 7 {
            rules.push(json!({"chain": "c7", "rule": EXTRA}));
        }
    }
    json!({
        "wrap_name": WRAP,
        "options": {"ipv6": false},
        "ipv4": {"filter": {"chains": chains, "rules": rules}},
    })
}

/// Runs `program args` to completion, its stdout discarded; wall time and the child's peak RSS
/// (`ru_maxrss` from `wait4`: the worker that spawns it is small, so the peak is the child's).
fn timed(program: &Path, args: &[&str]) -> Result<(f64, i64)> {
    use std::io::Read;
    let t = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let pid = i32::try_from(child.id())?;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 reaps our own child (Child is not waited again).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let elapsed = secs(t);
    if rc != pid || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{} {args:?} failed: {stderr}", program.display());
    }
    Ok((elapsed, usage.ru_maxrss))
}

/// A write by another program: a rule in the raw table, added or deleted.
fn foreign_write(netns: &std::fs::File, backend: &str, add: bool) -> Result<()> {
    let prog = PathBuf::from(format!("/usr/sbin/iptables-{backend}"));
    let op = if add { "-A" } else { "-D" };
    let out = process::run(
        &prog,
        &[
            "-w",
            "-t",
            "raw",
            op,
            "PREROUTING",
            "-s",
            "198.51.100.200/32",
            "-j",
            "ACCEPT",
        ],
        None,
        Some(netns.as_fd()),
        Duration::from_secs(60),
    )?;
    if !out.success() {
        bail!("foreign write failed: {}", out.stderr);
    }
    Ok(())
}

/// The cli contender in one namespace: each step a fresh `l3agent iptables apply` process
/// (`build` is `l3agent iptables validate`: reading the file into a model), plus the floor of
/// reading the kernel (`save`: one `iptables-save`). Prints JSON: seconds per scenario and
/// `<scenario>_rss_kib`.
pub fn cli_worker(a: CliWorkerArgs) -> Result<()> {
    let mut out = serde_json::Map::new();
    let mut step = |name: &str, args: &[&str]| -> Result<()> {
        let (t, rss) = timed(&a.l3agent, args)?;
        out.insert(name.to_owned(), json!(t));
        out.insert(format!("{name}_rss_kib"), json!(rss));
        Ok(())
    };
    let base = a.base.to_str().context("path")?;
    let add1 = a.add1.to_str().context("path")?;
    let state = a.state.to_str().context("path")?;
    let apply = |rules: &'static str| -> Vec<&str> {
        let file = if rules == "base" { base } else { add1 };
        vec![
            "iptables",
            "apply",
            "--rules",
            file,
            "--netns",
            &a.netns,
            "--backend",
            &a.backend,
            "--state-dir",
            state,
        ]
    };
    step("build", &["iptables", "validate", "--rules", base])?;
    step("cold", &apply("base"))?;
    step("noop", &apply("base"))?;
    step("add1", &apply("add1"))?;
    step("remove1", &apply("base"))?;
    let netns = std::fs::File::open(format!("/run/netns/{}", a.netns))?;
    foreign_write(&netns, &a.backend, true)?;
    step("noop_read", &apply("base"))?;
    foreign_write(&netns, &a.backend, false)?;
    step("add1_read", &apply("add1"))?;
    // The floor of a read: one iptables-save, started the way l3agent starts it.
    let prog = PathBuf::from(format!("/usr/sbin/iptables-{}-save", a.backend));
    let t = Instant::now();
    let saved = process::run(
        &prog,
        &[],
        None,
        Some(netns.as_fd()),
        Duration::from_secs(600),
    )?;
    out.insert("save".into(), json!(secs(t)));
    if !saved.success() {
        bail!("save failed: {}", saved.stderr);
    }
    println!("{}", Value::Object(out));
    Ok(())
}

fn cli(backend: &str, n: usize, bin: &Path) -> Result<Value> {
    let ns = TestNs::new("cli");
    let dir = std::env::temp_dir().join(format!(
        "l3agent-bench-cli-{}-{}",
        std::process::id(),
        l3agent_testkit::unique()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let base = dir.join("rules.json");
    let add1 = dir.join("rules-add1.json");
    std::fs::write(&base, serde_json::to_vec(&rules_file(n, false))?)?;
    std::fs::write(&add1, serde_json::to_vec(&rules_file(n, true))?)?;
    let exe = std::env::current_exe()?;
    let v = run_json(
        Command::new(exe)
            .args(["cli-worker", "--netns", &ns.name, "--backend", backend])
            .arg("--l3agent")
            .arg(bin)
            .arg("--base")
            .arg(&base)
            .arg("--add1")
            .arg(&add1)
            .arg("--state")
            .arg(dir.join("state")),
    );
    let _ = std::fs::remove_dir_all(&dir);
    v
}

/// Peak RSS of this process image: `VmHWM` (getrusage's ru_maxrss would also count the
/// harness that exec'd us, as Linux carries it across execve).
fn maxrss_kib() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmHWM:")
                    .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0))
            })
        })
        .unwrap_or(0)
}

/// One `iptables-restore --noflush` started in the namespace the way l3agent starts it
/// (as l3agent does; `ip netns exec` would add about 2 ms of its own).
fn restore(ns: &TestNs, backend: &str, input: &str) -> Result<f64> {
    let prog = PathBuf::from(format!("/usr/sbin/iptables-{backend}-restore"));
    let netns = std::fs::File::open(format!("/run/netns/{}", ns.name))?;
    let t = Instant::now();
    let out = process::run(
        &prog,
        &["--noflush", "-w", "10"],
        Some(input.as_bytes()),
        Some(netns.as_fd()),
        Duration::from_secs(600),
    )?;
    let elapsed = secs(t);
    if !out.success() {
        bail!("raw restore failed: {}", out.stderr);
    }
    Ok(elapsed)
}

/// The floor: exactly the restore input needed, nothing else (no save, no diff).
fn raw(backend: &str, n: usize) -> Result<BTreeMap<&'static str, f64>> {
    let ns = TestNs::new("raw");
    let model = build_model(n)?;
    let cold_input = plan_family(&KernelState::default(), &model, Family::V4, None)
        .render()
        .0;
    let mut out = BTreeMap::new();
    out.insert("cold", restore(&ns, backend, &cold_input)?);
    out.insert(
        "add1",
        restore(
            &ns,
            backend,
            &format!("*filter\n-A {WRAP}-c7 {EXTRA}\nCOMMIT\n"),
        )?,
    );
    out.insert(
        "remove1",
        restore(
            &ns,
            backend,
            &format!("*filter\n-D {WRAP}-c7 101\nCOMMIT\n"),
        )?,
    );
    out.insert("noop", 0.0);
    let mut change = String::from("*filter\n");
    for c in 0..n / 1000 {
        change.push_str(&format!("-F {WRAP}-c{c}\n"));
        for r in 0..100 {
            change.push_str(&format!(
                "-A {WRAP}-c{c} {}\n",
                workload_rule(c * 100 + r, 30000)
            ));
        }
    }
    change.push_str("COMMIT\n");
    out.insert("change10", restore(&ns, backend, &change)?);
    Ok(out)
}

fn run_json(cmd: &mut Command) -> Result<Value> {
    let out = cmd.stderr(Stdio::piped()).output()?;
    if !out.status.success() {
        bail!("{:?} failed: {}", cmd, String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().context("no output")?;
    Ok(serde_json::from_str(last)?)
}

fn l3agent(backend: &str, n: usize) -> Result<Value> {
    let ns = TestNs::new("l3a");
    let exe = std::env::current_exe()?;
    run_json(Command::new(exe).args([
        "worker",
        "--netns",
        &ns.name,
        "--backend",
        backend,
        "--n",
        &n.to_string(),
    ]))
}

fn neutron(python: &Path, backend: &str, n: usize) -> Result<Value> {
    let ns = TestNs::new("neu");
    // Neutron runs `iptables-save`/`iptables-restore` by name: point them at the backend.
    let bin = std::env::temp_dir().join(format!("l3agent-bench-{backend}-{}", std::process::id()));
    std::fs::create_dir_all(&bin)?;
    for (link, target) in [("iptables-save", "save"), ("iptables-restore", "restore")] {
        let path = bin.join(link);
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink(format!("/usr/sbin/iptables-{backend}-{target}"), &path)?;
    }
    let path = bin.join("iptables");
    let _ = std::fs::remove_file(&path);
    std::os::unix::fs::symlink(format!("/usr/sbin/iptables-{backend}"), &path)?;
    let driver = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/neutron_driver.py");
    let env_path = format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin.display());
    run_json(
        Command::new(python)
            .arg(driver)
            .args(["--netns", &ns.name, "--n", &n.to_string()])
            .env("PATH", env_path),
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn fmt_time(s: f64) -> String {
    if s == 0.0 {
        "0".to_owned()
    } else if s < 1e-6 {
        format!("{:.0} ns", s * 1e9)
    } else if s < 0.001 {
        format!("{:.1} µs", s * 1e6)
    } else {
        format!("{:.1} ms", s * 1e3)
    }
}

fn ratio(a: f64, b: f64) -> String {
    if b == 0.0 {
        "–".to_owned()
    } else {
        format!("{:.2}x", a / b)
    }
}

/// Runs the whole comparison and writes the JSON and Markdown reports.
pub fn run(a: Args) -> Result<()> {
    l3agent_testkit::require_kernel();
    let on = |c: &str| a.contenders.iter().any(|x| x == c);
    let skip_neutron = a.skip_neutron || !on("neutron");
    let cli_bin = match &a.l3agent {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the harness has no directory")?
            .join("l3agent"),
    };
    if on("cli") && !cli_bin.exists() {
        bail!(
            "{} not found: build it (cargo build --release -p l3agent) or pass --l3agent",
            cli_bin.display()
        );
    }
    if !skip_neutron && !a.python.exists() {
        bail!(
            "{} not found: run bench/run.sh (it makes the virtualenv), or pass --skip-neutron",
            a.python.display()
        );
    }
    let mut results: Vec<Value> = Vec::new();
    let mut rss = BTreeMap::new();
    for backend in &a.backends {
        backend_of(backend)?;
        for &n in &a.sizes {
            let mut samples: BTreeMap<(&str, String), Vec<f64>> = BTreeMap::new();
            for run in 0..a.runs {
                eprintln!("[{backend} N={n}] run {}/{}", run + 1, a.runs);
                if on("l3agent") {
                    let l = l3agent(backend, n)?;
                    rss.insert((backend.clone(), n), l["maxrss_kib"].as_i64().unwrap_or(0));
                    for s in SCENARIOS.iter().chain(["build", "change10_build"].iter()) {
                        samples
                            .entry(("l3agent", (*s).to_owned()))
                            .or_default()
                            .push(l[*s].as_f64().unwrap_or(f64::NAN));
                    }
                }
                if on("raw") {
                    for (s, v) in raw(backend, n)? {
                        samples.entry(("raw", s.to_owned())).or_default().push(v);
                    }
                }
                if on("cli") {
                    let c = cli(backend, n, &cli_bin)?;
                    for (k, v) in c.as_object().into_iter().flatten() {
                        samples
                            .entry(("cli", k.clone()))
                            .or_default()
                            .push(v.as_f64().unwrap_or(f64::NAN));
                    }
                }
                if !skip_neutron {
                    let nv = neutron(&a.python, backend, n)?;
                    for s in SCENARIOS.iter().chain(["build", "change10_build"].iter()) {
                        samples
                            .entry(("neutron", (*s).to_owned()))
                            .or_default()
                            .push(nv[*s].as_f64().unwrap_or(f64::NAN));
                    }
                }
            }
            let med: BTreeMap<String, f64> = samples
                .into_iter()
                .map(|((c, s), v)| (format!("{c}.{s}"), median(v)))
                .collect();
            results.push(json!({"backend": backend, "n": n, "median_s": med}));
        }
    }
    let report = json!({
        "runs": a.runs,
        "machine": machine(),
        "results": results,
        "l3agent_peak_rss_kib": rss.iter().map(|((b, n), k)| json!({"backend": b, "n": n, "kib": k})).collect::<Vec<_>>(),
    });
    std::fs::create_dir_all(&a.out_dir)?;
    std::fs::write(
        a.out_dir.join("iptables.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let mut md = markdown(&report, skip_neutron);
    if on("cli") {
        md.push_str(&cli_markdown(&report));
    }
    println!("{md}");
    std::fs::write(&a.markdown, md)?;
    eprintln!(
        "wrote {} and {}",
        a.out_dir.join("iptables.json").display(),
        a.markdown.display()
    );
    Ok(())
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} CPUs, kernel {}", kernel.trim())
}

/// The section of the cli contender (issue 14).
pub fn cli_markdown(report: &Value) -> String {
    let mut s = String::new();
    s.push_str("\n## `l3agent iptables apply` from a fresh process (issue 14)\n\n");
    s.push_str("Same workload; each step a new `l3agent iptables apply --rules FILE` process (JSON rules file), in order: cold apply, no-op, add one rule, remove it, then a write by another program (a rule in the raw table) followed by a no-op (*noop after a foreign write*), and another followed by adding the rule (*add1 after a foreign write*). *build* is `l3agent iptables validate` of the file (reading it into the model, in a fresh process). Floors: the raw restore of the same input (cold), a one-line restore (add/remove one), one `iptables-save` (reading the kernel), measured in the same run. *neutron* is the long-lived IptablesManager of the table above (a fresh Neutron process would add its start-up and the first full read).\n\n");
    s.push_str("| backend | N | scenario | floor | l3agent CLI | CLI / floor | neutron | neutron / CLI | CLI peak RSS |\n|---|---:|---|---:|---:|---:|---:|---:|---:|\n");
    for r in report["results"].as_array().into_iter().flatten() {
        let m = &r["median_s"];
        let g = |k: &str| m[k].as_f64();
        let rows: [(&str, &str, Option<f64>, Option<&str>); 8] = [
            ("build", "file to model", None, Some("build")),
            ("cold", "cold", g("raw.cold"), Some("cold")),
            ("noop", "no-op", g("cli.save"), Some("noop")),
            ("add1", "add one rule", g("raw.add1"), Some("add1")),
            ("remove1", "remove it", g("raw.remove1"), Some("remove1")),
            (
                "noop_read",
                "noop after a foreign write",
                g("cli.save"),
                Some("noop"),
            ),
            (
                "add1_read",
                "add1 after a foreign write",
                g("cli.save").zip(g("raw.add1")).map(|(a, b)| a + b),
                Some("add1"),
            ),
            ("save", "one iptables-save (floor)", None, None),
        ];
        for (key, label, floor, neutron_key) in rows {
            let Some(cli) = g(&format!("cli.{key}")) else {
                continue;
            };
            let ne = neutron_key.and_then(|k| g(&format!("neutron.{k}")));
            let rss = m[format!("cli.{key}_rss_kib")].as_f64();
            s.push_str(&format!(
                "| {} | {} | {label} | {} | {} | {} | {} | {} | {} |\n",
                r["backend"].as_str().unwrap_or(""),
                r["n"],
                floor.map(fmt_time).unwrap_or_else(|| "–".into()),
                fmt_time(cli),
                floor.map(|f| ratio(cli, f)).unwrap_or_else(|| "–".into()),
                ne.map(fmt_time).unwrap_or_else(|| "–".into()),
                ne.map(|ne| ratio(ne, cli)).unwrap_or_else(|| "–".into()),
                rss.map(|k| format!("{:.1} MiB", k / 1024.0))
                    .unwrap_or_else(|| "–".into()),
            ));
        }
    }
    s
}

fn markdown(report: &Value, skip_neutron: bool) -> String {
    let mut s = String::new();
    s.push_str("# Benchmarks\n\n");
    s.push_str("Produced by `bench/run.sh` (`cargo run --release -p l3agent-bench -- iptables`); every figure is the median of ");
    s.push_str(&format!(
        "{} runs, each in a fresh throwaway network namespace, on {}.\n\n",
        report["runs"],
        report["machine"].as_str().unwrap_or("")
    ));
    s.push_str("## iptables engine: l3agent vs Neutron's IptablesManager vs raw iptables\n\n");
    s.push_str("Workload: N ACCEPT rules (distinct source /32 and TCP port) in N/100 wrapped chains of the filter table, each jumped to from the wrapped FORWARD chain; IPv4. ");
    s.push_str("*raw* is `iptables-restore --noflush` of exactly the needed lines (cold: the same restore input l3agent sends; add/remove: a one-line delta; change 10%: flush and refill of the changed chains) with no save and no diff: the floor. ");
    s.push_str("*l3agent* is one long-lived `Manager` (library use): times are its `apply()`, with the model already updated (building the model is shown separately). ");
    s.push_str("*neutron* is Neutron 29.0.0's `IptablesManager` from PyPI, driven the same way (bench/neutron_driver.py; privilege escalation bypassed, nothing else).\n\n");
    s.push_str("| backend | N | scenario | raw | l3agent | neutron | l3agent/raw | neutron/l3agent |\n|---|---:|---|---:|---:|---:|---:|---:|\n");
    for r in report["results"].as_array().into_iter().flatten() {
        let m = &r["median_s"];
        for sc in SCENARIOS {
            let raw = m[format!("raw.{sc}")].as_f64().unwrap_or(f64::NAN);
            let l3 = m[format!("l3agent.{sc}")].as_f64().unwrap_or(f64::NAN);
            let ne = m[format!("neutron.{sc}")].as_f64();
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
                r["backend"].as_str().unwrap_or(""),
                r["n"],
                sc,
                fmt_time(raw),
                fmt_time(l3),
                ne.map(fmt_time).unwrap_or_else(|| "–".into()),
                ratio(l3, raw),
                ne.map(|ne| ratio(ne, l3)).unwrap_or_else(|| "–".into()),
            ));
        }
    }
    s.push_str("\nModel building (in-memory `add_rule` calls, before `apply()`):\n\n| backend | N | l3agent build | neutron build | l3agent change-10% build |\n|---|---:|---:|---:|---:|\n");
    for r in report["results"].as_array().into_iter().flatten() {
        let m = &r["median_s"];
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r["backend"].as_str().unwrap_or(""),
            r["n"],
            fmt_time(m["l3agent.build"].as_f64().unwrap_or(f64::NAN)),
            if skip_neutron {
                "–".into()
            } else {
                fmt_time(m["neutron.build"].as_f64().unwrap_or(f64::NAN))
            },
            fmt_time(m["l3agent.change10_build"].as_f64().unwrap_or(f64::NAN)),
        ));
    }
    s.push_str("\nPeak RSS of the l3agent worker process (whole sequence):\n\n| backend | N | peak RSS |\n|---|---:|---:|\n");
    for r in report["l3agent_peak_rss_kib"]
        .as_array()
        .into_iter()
        .flatten()
    {
        s.push_str(&format!(
            "| {} | {} | {:.1} MiB |\n",
            r["backend"].as_str().unwrap_or(""),
            r["n"],
            r["kib"].as_f64().unwrap_or(0.0) / 1024.0
        ));
    }
    s
}
