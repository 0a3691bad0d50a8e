//! Every state-recovery case of the router layer, on the real kernel and through the CLI (the
//! binary runs in a throwaway "host" namespace entered with `nsenter --net`):
//!
//! 1. an apply SIGKILLed at random points is finished by the next apply, kernel AND records
//!    (`status` is ok, `plan` is empty), and `destroy --all` leaves only the lock file;
//! 2. a corrupt or missing `records.json` or `applied/` record never makes `status` or `plan`
//!    fail, and the next apply rewrites it;
//! 3. a state write that fails (full or read-only file system) is reported naming the state
//!    directory and the cause, and nothing is created for routers not yet recorded;
//! 4. temporary files never leak and planted symbolic links are never followed;
//! 5. SIGTERM is honoured while waiting for the lock, and routers it skips are "skipped";
//! 6. namespaces named in a crafted `records.json` are deleted only if they are l3agent's by
//!    exact rule;
//! 7. a leftover non-namespace file in `/run/netns` is replaced or removed.
//!
//! Addresses are documentation prefixes only; every namespace, router id and state directory
//! is unique to the test, and a guard removes them also when an assertion fails.
#![allow(clippy::disallowed_methods)] // the test runs the binary under test and fixture tools

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use l3agent_testkit::{ok, sh, unique, TestNs};
use serde_json::{json, Value};

const NET_T1: &str = "90e4912c-0eb8-4be4-a793-e6a3bba6ae8b";
const NET_T2: &str = "c6910e18-fb1f-4988-9af4-211a8c2e2926";
const NET_EX: &str = "65566f91-133a-44ff-87f5-ecffc1193d3d";

/// Longest any single l3agent invocation may take here before the test calls it hung.
const CLI_TIMEOUT: Duration = Duration::from_secs(90);

/// Router `i` of test `case`: unique to this process (pid) and test (case), so that parallel
/// tests and other test binaries never share a namespace.
fn router_id(case: u32, i: u32) -> String {
    format!(
        "{:08x}-5a{case:02x}-4{i:03x}-8000-000000000000",
        std::process::id()
    )
}

/// A legacy router (Neutron's dict) with ids and addresses of its own. Host ends of ports
/// (`tap` + the port id's first 11 characters) are unique per router and test.
fn router(case: u32, i: u32) -> Value {
    let text = include_str!("../../router/tests/data/neutron-router-legacy.json");
    let mut r: Value = serde_json::from_str(text).unwrap();
    r["id"] = json!(router_id(case, i));
    for (k, port) in r["_interfaces"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .enumerate()
    {
        port["id"] = json!(format!(
            "{k:x}{i:03x}{case:04x}-0000-4000-8000-000000000000"
        ));
    }
    r["gw_port"]["id"] = json!(format!("f{i:03x}{case:04x}-0000-4000-8000-000000000000"));
    // Addresses of its own on the example's networks (an address is one port's).
    l3agent_testkit::renumber_router(&mut r, u8::try_from(10 + i).unwrap());
    // The example's extra subnet and route are not documentation prefixes.
    r["gw_port"]["extra_subnets"] = json!([]);
    r["routes"] = json!([]);
    r["_floatingips"][0]["id"] = json!(format!("e{i:03x}{case:04x}-0000-4000-8000-000000000000"));
    r["_floatingips"][0]["floating_ip_address"] = json!(format!("203.0.113.{}", 100 + i));
    r
}

fn qrouter(id: &str) -> String {
    format!("qrouter-{id}")
}

/// Waits at most `limit` for `child`; kills it and fails the test if it is still running.
fn wait_bounded(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What one l3agent invocation did.
#[derive(Debug)]
struct Out {
    code: Option<i32>,
    json: Value,
    stdout: String,
    stderr: String,
}

/// A throwaway host: a namespace with the bridges, a private directory for the state and the
/// configs, and the routers the test may create (removed on drop, with their `/run/netns`
/// entries, whatever they are).
struct Host {
    ns: TestNs,
    case: u32,
    /// `/tmp/l3agent-state-<pid>-<n>`: configs and outputs; `state` is below it.
    dir: PathBuf,
    state: PathBuf,
    routers: Vec<Value>,
    /// Mounts under `dir`, unmounted on drop (before `dir` is removed).
    mounts: Vec<PathBuf>,
}

impl Drop for Host {
    fn drop(&mut self) {
        for r in &self.routers {
            let name = qrouter(r["id"].as_str().unwrap_or_default());
            let _ = sh(&["ip", "netns", "del", &name]);
            let path = Path::new("/run/netns").join(&name);
            let _ = sh(&["umount", "-l", path.to_str().unwrap_or_default()]);
            let _ = std::fs::remove_file(&path);
        }
        for m in self.mounts.iter().rev() {
            let _ = sh(&["umount", "-l", m.to_str().unwrap_or_default()]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Host {
    /// A host for test `case` with `n` routers available (none applied yet).
    fn new(case: u32, n: u32) -> Host {
        let ns = TestNs::new(&format!("state{case}"));
        let dir =
            std::env::temp_dir().join(format!("l3agent-state-{}-{}", std::process::id(), unique()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let h = Host {
            state: dir.join("state"),
            dir,
            case,
            routers: (0..n).map(|i| router(case, i)).collect(),
            mounts: Vec::new(),
            ns,
        };
        for br in ["br-ex", "br-t1", "br-t2"] {
            h.ns.ok(&["ip", "link", "add", br, "type", "bridge"]);
            h.ns.ok(&["ip", "link", "set", br, "up"]);
        }
        h
    }

    fn id(&self, i: usize) -> String {
        self.routers[i]["id"].as_str().unwrap().to_owned()
    }

    fn ns_of(&self, i: usize) -> String {
        qrouter(&self.id(i))
    }

    fn state_s(&self) -> &str {
        self.state.to_str().unwrap()
    }

    /// A config with routers `which`, written to a new file.
    fn config(&self, which: std::ops::Range<usize>) -> PathBuf {
        let cfg = json!({
            "agent": {"mode": "legacy", "host": "host-a", "state_path": self.state,
                      "bridges": {NET_T1: "br-t1", NET_T2: "br-t2", NET_EX: "br-ex"}},
            "routers": self.routers[which].to_vec(),
        });
        let path = self.dir.join(format!("config-{}.json", unique()));
        std::fs::write(&path, cfg.to_string()).unwrap();
        path
    }

    /// Starts `l3agent ARGS --json` in the host namespace, output into files of `dir`
    /// (returned with the child). nsenter execs l3agent: the child's pid is l3agent's.
    fn spawn(&self, args: &[&str]) -> (Child, PathBuf, PathBuf) {
        self.spawn_with_stdin(args, Stdio::null())
    }

    fn spawn_with_stdin(&self, args: &[&str], stdin: Stdio) -> (Child, PathBuf, PathBuf) {
        let n = unique();
        let (out, err) = (
            self.dir.join(format!("out-{n}")),
            self.dir.join(format!("err-{n}")),
        );
        let netns = format!("--net=/run/netns/{}", self.ns.name);
        let child = Command::new("nsenter")
            .arg(&netns)
            .arg(env!("CARGO_BIN_EXE_l3agent"))
            .args(args)
            .arg("--json")
            .stdin(stdin)
            .stdout(File::create(&out).unwrap())
            .stderr(File::create(&err).unwrap())
            .spawn()
            .unwrap();
        (child, out, err)
    }

    fn collect(status: ExitStatus, out: &Path, err: &Path) -> Out {
        let stdout = std::fs::read_to_string(out).unwrap_or_default();
        let stderr = std::fs::read_to_string(err).unwrap_or_default();
        let _ = std::fs::remove_file(out);
        let _ = std::fs::remove_file(err);
        Out {
            code: status.code(),
            json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
            stdout,
            stderr,
        }
    }

    /// Runs `l3agent ARGS --json` to the end (bounded).
    fn l3agent(&self, args: &[&str]) -> Out {
        let (mut child, out, err) = self.spawn(args);
        let status = wait_bounded(&mut child, CLI_TIMEOUT, &format!("l3agent {args:?}"));
        Host::collect(status, &out, &err)
    }

    fn apply(&self, cfg: &Path) -> Out {
        self.l3agent(&["apply", cfg.to_str().unwrap()])
    }

    /// `apply` that must exit 0.
    fn apply_ok(&self, cfg: &Path, why: &str) -> Value {
        let o = self.apply(cfg);
        assert_eq!(o.code, Some(0), "{why}: apply failed: {o:?}");
        o.json
    }

    /// `status` must exit 0 with exactly `ids`, all ok.
    fn status_ok(&self, ids: &[String], why: &str) {
        let o = self.l3agent(&["status", "--state-path", self.state_s()]);
        assert_eq!(o.code, Some(0), "{why}: status not ok: {o:?}");
        let seen: BTreeSet<String> = o
            .json
            .as_array()
            .unwrap_or_else(|| panic!("{why}: status printed no list: {o:?}"))
            .iter()
            .map(|r| {
                assert_eq!(r["health"], "ok", "{why}: {r}");
                r["id"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(
            seen,
            ids.iter().cloned().collect::<BTreeSet<_>>(),
            "{why}: status lists other routers: {o:?}"
        );
    }

    /// `plan` must exit 0 and list no change.
    fn plan_empty(&self, cfg: &Path, why: &str) {
        let o = self.l3agent(&["plan", cfg.to_str().unwrap()]);
        assert_eq!(o.code, Some(0), "{why}: plan failed: {o:?}");
        let changes: Vec<&Value> = o.json["routers"]
            .as_array()
            .unwrap_or_else(|| panic!("{why}: plan printed no report: {o:?}"))
            .iter()
            .flat_map(|r| r["changes"].as_array().into_iter().flatten())
            .collect();
        assert!(changes.is_empty(), "{why}: plan is not empty: {changes:?}");
    }

    fn destroy_all(&self) -> Out {
        self.l3agent(&["destroy", "--all", "--state-path", self.state_s()])
    }

    /// `destroy --all` must exit 0 and leave no namespace of ours, no host end, and a state
    /// directory holding only the lock file (what `StateDir::clear` keeps).
    fn destroy_all_clean(&self, why: &str) {
        let o = self.destroy_all();
        assert_eq!(o.code, Some(0), "{why}: destroy --all failed: {o:?}");
        assert_eq!(self.ours_in_run_netns(), Vec::<String>::new(), "{why}");
        assert_eq!(
            tree(&self.state),
            vec!["lock".to_owned()],
            "{why}: destroy --all left state behind"
        );
        assert_eq!(
            self.host_links(),
            ["br-ex", "br-t1", "br-t2", "lo"],
            "{why}: host ends left behind"
        );
    }

    /// Entries of `/run/netns` (namespaces or not) that belong to this host's routers.
    fn ours_in_run_netns(&self) -> Vec<String> {
        let ids: Vec<String> = (0..self.routers.len()).map(|i| self.id(i)).collect();
        let mut v: Vec<String> = std::fs::read_dir("/run/netns")
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| ids.iter().any(|id| n.contains(id.as_str())))
            .collect();
        v.sort();
        v
    }

    /// Whether router `i`'s namespace is a real namespace (an nsfs mount).
    fn is_namespace(&self, i: usize) -> bool {
        is_nsfs(&Path::new("/run/netns").join(self.ns_of(i)))
    }

    /// Device names in the host namespace, sorted.
    fn host_links(&self) -> Vec<String> {
        let links: Value =
            serde_json::from_str(&self.ns.ok(&["ip", "-j", "link", "show"])).unwrap();
        let mut v: Vec<String> = links
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v
    }

    /// The host ends (`tap…`) of router `i`'s ports present in the host namespace.
    fn host_ends_of(&self, i: usize) -> Vec<String> {
        let tag = format!("{i:03x}{:04x}", self.case);
        self.host_links()
            .into_iter()
            .filter(|l| l.starts_with("tap") && l.get(4..11) == Some(tag.as_str()))
            .collect()
    }

    /// `records.json` must name exactly routers `which` and their namespaces, each with the
    /// fingerprint of a successful apply.
    fn records_converged(&self, which: std::ops::Range<usize>, why: &str) {
        let text = std::fs::read_to_string(self.state.join("records.json"))
            .unwrap_or_else(|e| panic!("{why}: records.json: {e}"));
        let r: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{why}: records.json is not JSON ({e}): {text}"));
        let namespaces: BTreeSet<String> = r["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_owned())
            .collect();
        let want: BTreeSet<String> = which.clone().map(|i| self.ns_of(i)).collect();
        assert_eq!(namespaces, want, "{why}: recorded namespaces: {text}");
        let routers = r["routers"].as_object().unwrap();
        let ids: BTreeSet<String> = routers.keys().cloned().collect();
        let want: BTreeSet<String> = which.map(|i| self.id(i)).collect();
        assert_eq!(ids, want, "{why}: recorded routers: {text}");
        assert!(
            routers
                .values()
                .all(|f| f.as_str().is_some_and(|f| !f.is_empty())),
            "{why}: a router is recorded as failed: {text}"
        );
    }

    fn ids(&self, which: std::ops::Range<usize>) -> Vec<String> {
        which.map(|i| self.id(i)).collect()
    }

    /// Mounts a tmpfs (`opts` added to `mode=0700`) on a new directory under `dir`.
    fn mount_tmpfs(&mut self, name: &str, opts: &str) -> PathBuf {
        let m = self.dir.join(name);
        std::fs::create_dir(&m).unwrap();
        ok(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &format!("mode=0700,{opts}"),
            "l3agent-test",
            m.to_str().unwrap(),
        ]);
        self.mounts.push(m.clone());
        m
    }
}

fn is_nsfs(p: &Path) -> bool {
    let r = sh(&["stat", "-f", "-c", "%T", p.to_str().unwrap()]);
    r.code == Some(0) && r.stdout.trim() == "nsfs"
}

/// Every entry under `dir`, relative, sorted (`applied/x.json` for files in subdirectories).
fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let rel = e
                .path()
                .strip_prefix(base)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if e.file_type().unwrap().is_dir() {
                walk(base, &e.path(), out);
            }
            out.push(rel);
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn temporaries(dir: &Path) -> Vec<String> {
    tree(dir)
        .into_iter()
        .filter(|p| p.rsplit('/').next().is_some_and(|f| f.starts_with('.')))
        .collect()
}

/// Replaces a file's content in place (keeping its owner and mode).
fn overwrite(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.write_all(bytes).unwrap();
}

/// A cheap pseudo-random sequence (xorshift), seeded from the clock; the seed is printed in
/// failures so that a run can be repeated.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        Rng(seed)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Holds the state directory's lock from outside l3agent (a python3 `flock`) until dropped.
struct LockHolder {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl LockHolder {
    fn hold(state: &Path) -> LockHolder {
        let code = "import fcntl,sys\nf=open(sys.argv[1],'r')\nfcntl.flock(f,fcntl.LOCK_EX)\n\
                    print('locked',flush=True)\nsys.stdin.read()\n";
        let mut child = Command::new("python3")
            .args(["-c", code, state.join("lock").to_str().unwrap()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked", "the lock holder did not start");
        LockHolder { child, stdin }
    }

    /// Releases the lock (the holder exits when its stdin closes).
    fn release(mut self) {
        drop(self.stdin.take());
        wait_bounded(&mut self.child, Duration::from_secs(10), "the lock holder");
    }
}

impl Drop for LockHolder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (bounded) until process `pid` has `path` open: for l3agent and its lock file, that
/// means its signal handlers are installed and it is waiting for (or holds) the lock.
fn wait_until_open(pid: u32, path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l == path))
            })
            .unwrap_or(false);
        if open {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "process {pid} never opened {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = sh(&["kill", sig, &pid.to_string()]);
}

/// Case 1: an apply of four routers SIGKILLed after random delays (from before l3agent even
/// starts to the end of a cold apply); each time a plain apply finishes the job, the records
/// converge with the kernel (status ok, plan empty, every router recorded as applied), and
/// destroy --all leaves no namespace, no host end and only the lock file.
#[test]
fn an_apply_killed_at_random_points_is_finished_by_the_next() {
    let h = Host::new(1, 4);
    let cfg = h.config(0..4);
    let ids = h.ids(0..4);
    // How long the work of a cold apply takes here (until its last record is written; the
    // process then only waits for its gratuitous ARP rounds), to spread the kills over it.
    let start = Instant::now();
    let (mut child, out, err) = h.spawn(&["apply", cfg.to_str().unwrap()]);
    let last_record = h.state.join("applied/facts.json");
    let mut work = None;
    while child.try_wait().unwrap().is_none() {
        if work.is_none() && last_record.exists() {
            work = Some(start.elapsed());
        }
        assert!(start.elapsed() < CLI_TIMEOUT, "the cold apply hangs");
        std::thread::sleep(Duration::from_millis(1));
    }
    let o = Host::collect(child.wait().unwrap(), &out, &err);
    assert_eq!(o.code, Some(0), "cold apply: {o:?}");
    let work_ms = work.unwrap_or_else(|| start.elapsed()).as_millis() as u64;
    h.destroy_all_clean("after the cold apply");

    let mut rng = Rng::new();
    let seed = rng.0;
    // Before l3agent runs, while it starts, then spread over the work, and a few at random.
    let mut delays: Vec<u64> = vec![0, 2, 10];
    delays.extend([10, 25, 40, 55, 70, 85, 100].map(|pct| work_ms * pct / 100));
    delays.extend((0..4).map(|_| rng.below(work_ms + 1)));
    for delay in delays {
        let why = format!("SIGKILL after {delay} ms (cold apply work {work_ms} ms, seed {seed})");
        let (mut child, out, err) = h.spawn(&["apply", cfg.to_str().unwrap()]);
        std::thread::sleep(Duration::from_millis(delay));
        child.kill().unwrap(); // SIGKILL
        let status = wait_bounded(&mut child, CLI_TIMEOUT, &why);
        let killed = Host::collect(status, &out, &err);
        // Where the kill landed (shown with --nocapture).
        eprintln!(
            "{why}: {} ({} of 4 namespaces, records.json {})",
            if killed.code.is_some() {
                "had finished"
            } else {
                "killed"
            },
            h.ours_in_run_netns().len(),
            if h.state.join("records.json").exists() {
                "present"
            } else {
                "absent"
            },
        );

        h.apply_ok(&cfg, &why);
        assert_eq!(temporaries(&h.state), Vec::<String>::new(), "{why}");
        h.records_converged(0..4, &why);
        h.status_ok(&ids, &why);
        h.plan_empty(&cfg, &why);
        for i in 0..4 {
            assert!(h.is_namespace(i), "{why}: {} missing", h.ns_of(i));
        }
        let again = h.apply_ok(&cfg, &why);
        assert!(
            again["routers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["status"] == "unchanged"),
            "{why}: a third apply changed things: {again} (killed run: {killed:?})"
        );
        h.destroy_all_clean(&why);
    }
}

/// Case 1, with `--changed-only` (which trusts routers whose dict did not change since their
/// last successful apply): an apply that changes the routers is SIGKILLed at points spread
/// over its work, then an apply of the old dicts with `--changed-only` must still finish the
/// job, because a router whose change was cut short is not recorded as applied.
#[test]
fn a_killed_change_is_finished_even_by_a_changed_only_apply() {
    let h = Host::new(9, 4);
    let ids = h.ids(0..4);
    // Old: no floating IPs (nothing to announce, so each apply ends with its work). New: a
    // floating IP per router.
    let old = {
        let mut routers = h.routers.clone();
        for r in &mut routers {
            r["_floatingips"] = json!([]);
        }
        let cfg = json!({
            "agent": {"mode": "legacy", "host": "host-a", "state_path": h.state,
                      "bridges": {NET_T1: "br-t1", NET_T2: "br-t2", NET_EX: "br-ex"}},
            "routers": routers,
        });
        let path = h.dir.join("old.json");
        std::fs::write(&path, cfg.to_string()).unwrap();
        path
    };
    let new = h.config(0..4);
    h.apply_ok(&old, "old");
    // How long the new apply's work takes (until it writes its last record).
    let facts = h.state.join("applied/facts.json");
    let mtime = || std::fs::metadata(&facts).and_then(|m| m.modified()).ok();
    let before = mtime();
    let start = Instant::now();
    let (mut child, out, err) = h.spawn(&["apply", new.to_str().unwrap()]);
    let mut work = None;
    while child.try_wait().unwrap().is_none() {
        if work.is_none() && mtime() != before {
            work = Some(start.elapsed());
        }
        assert!(start.elapsed() < CLI_TIMEOUT, "the new apply hangs");
        std::thread::sleep(Duration::from_millis(1));
    }
    let o = Host::collect(child.wait().unwrap(), &out, &err);
    assert_eq!(o.code, Some(0), "new: {o:?}");
    let work_ms = work.unwrap_or_else(|| start.elapsed()).as_millis() as u64;
    h.apply_ok(&old, "back to old");

    let mut rng = Rng::new();
    let seed = rng.0;
    let mut delays: Vec<u64> = [20, 35, 50, 65, 80, 95]
        .map(|pct| work_ms * pct / 100)
        .into();
    delays.extend((0..4).map(|_| rng.below(work_ms + 1)));
    for delay in delays {
        let why = format!("SIGKILL after {delay} ms (work {work_ms} ms, seed {seed})");
        let (mut child, out, err) = h.spawn(&["apply", new.to_str().unwrap()]);
        std::thread::sleep(Duration::from_millis(delay));
        child.kill().unwrap();
        let status = wait_bounded(&mut child, CLI_TIMEOUT, &why);
        let killed = Host::collect(status, &out, &err);
        eprintln!(
            "{why}: {}",
            if killed.code.is_some() {
                "had finished"
            } else {
                "killed"
            }
        );
        let o = h.l3agent(&["apply", old.to_str().unwrap(), "--changed-only"]);
        assert_eq!(o.code, Some(0), "{why}: {o:?}");
        h.status_ok(&ids, &why);
        h.plan_empty(&old, &why);
    }
    h.destroy_all_clean("the end");
}

/// Case 2: a corrupt `records.json`, a corrupt `applied/router-<id>.json`, a corrupt
/// `applied/agent.json`, a `records.json` of the wrong shape and a missing `records.json`:
/// status and plan still work (nothing drifted, so both exit 0), and the next apply rewrites
/// the records, after which status is ok again.
#[test]
fn corrupt_or_missing_records_are_rebuilt() {
    let h = Host::new(2, 2);
    let cfg = h.config(0..2);
    let ids = h.ids(0..2);
    h.apply_ok(&cfg, "first apply");
    h.status_ok(&ids, "first apply");
    let records = h.state.join("records.json");
    let applied0 = h.state.join(format!("applied/router-{}.json", h.id(0)));
    let agent = h.state.join("applied/agent.json");
    let garbage: &[u8] = b"\x00\xff\xfe{\"namespaces\": [garbage\n\x1b[31m";

    type Damage<'a> = (&'a str, Box<dyn Fn() + 'a>, Vec<String>);
    let cases: Vec<Damage> = vec![
        (
            "garbage records.json",
            Box::new(|| overwrite(&records, garbage)),
            ids.clone(),
        ),
        (
            "records.json of the wrong shape",
            Box::new(|| overwrite(&records, br#"{"namespaces": 5, "routers": []}"#)),
            ids.clone(),
        ),
        (
            "missing records.json",
            Box::new(|| std::fs::remove_file(&records).unwrap()),
            ids.clone(),
        ),
        (
            "garbage applied router record",
            Box::new(|| overwrite(&applied0, garbage)),
            // status knows nothing of that router until the next apply rewrites it.
            vec![h.id(1)],
        ),
        (
            "garbage applied agent record",
            Box::new(|| overwrite(&agent, garbage)),
            // nothing to compare with: status is empty until the next apply.
            vec![],
        ),
        (
            "garbage everywhere",
            Box::new(|| {
                overwrite(&records, garbage);
                overwrite(&applied0, garbage);
                overwrite(&agent, garbage);
            }),
            vec![],
        ),
    ];
    for (what, damage, status_ids) in cases {
        damage();
        // A warning about the damage is fine; an error (the CLI's last word) is not.
        let o = h.l3agent(&["status", "--state-path", h.state_s()]);
        assert!(
            !o.stderr.contains("l3agent: "),
            "{what}: status failed: {o:?}"
        );
        h.status_ok(&status_ids, what);
        h.plan_empty(&cfg, what);
        let report = h.apply_ok(&cfg, what);
        assert!(
            report["routers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["status"] == "unchanged"),
            "{what}: the kernel was fine, apply changed it: {report}"
        );
        h.records_converged(0..2, what);
        for p in [&applied0, &agent] {
            let text = std::fs::read_to_string(p).unwrap();
            assert!(
                serde_json::from_str::<Value>(&text).is_ok(),
                "{what}: {} not rewritten: {text:?}",
                p.display()
            );
        }
        h.status_ok(&ids, what);
    }
    h.destroy_all_clean("the end");
}

/// Case 3: a state directory on a full file system, and on a read-only one. Apply fails with
/// exit 1 and a message naming the state directory and the cause; routers not yet recorded get
/// nothing in the kernel (their namespaces are recorded before they are created); those
/// recorded before are untouched. Once the file system is usable again, apply converges and
/// status is ok.
#[test]
fn a_failed_state_write_creates_nothing_and_is_recovered_from() {
    let mut h = Host::new(3, 6);
    let mnt = h.mount_tmpfs("mnt", "size=256k");
    h.state = mnt.join("state");
    let state = h.state_s().to_owned();
    h.apply_ok(&h.config(0..2), "first apply");

    // Full: a filler file takes every free block.
    let filler = mnt.join("filler");
    {
        use std::io::Write;
        let mut f = File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        let mut full = false;
        for _ in 0..1024 {
            if f.write_all(&block).and_then(|()| f.sync_all()).is_err() {
                full = true;
                break;
            }
        }
        assert!(full, "the 256k tmpfs never filled up");
    }
    let four = h.config(0..4);
    let o = h.apply(&four);
    assert_eq!(o.code, Some(1), "apply on a full state directory: {o:?}");
    eprintln!("full state directory: {}", o.stderr.trim());
    assert!(
        o.stderr.contains(&state) && o.stderr.contains("No space left on device"),
        "the error must name the state directory and the cause: {o:?}"
    );
    assert!(o.stderr.contains("full"), "{o:?}");
    for i in 2..4 {
        assert!(
            !Path::new("/run/netns").join(h.ns_of(i)).exists(),
            "full: a namespace was created for unrecorded router {i}: {o:?}"
        );
        assert_eq!(h.host_ends_of(i), Vec::<String>::new(), "full: router {i}");
    }
    assert!(h.is_namespace(0) && h.is_namespace(1));
    assert_eq!(temporaries(&h.state), Vec::<String>::new(), "full");
    h.status_ok(&h.ids(0..2), "full: the records of the first apply stand");

    std::fs::remove_file(&filler).unwrap();
    h.apply_ok(&four, "after freeing space");
    h.records_converged(0..4, "after freeing space");
    h.status_ok(&h.ids(0..4), "after freeing space");

    // Read-only.
    ok(&["mount", "-o", "remount,ro", mnt.to_str().unwrap()]);
    let six = h.config(0..6);
    let o = h.apply(&six);
    assert_eq!(
        o.code,
        Some(1),
        "apply on a read-only state directory: {o:?}"
    );
    eprintln!("read-only state directory: {}", o.stderr.trim());
    assert!(
        o.stderr.contains(&state) && o.stderr.contains("Read-only file system"),
        "the error must name the state directory and the cause: {o:?}"
    );
    assert!(o.stderr.contains("read-only"), "{o:?}");
    for i in 4..6 {
        assert!(
            !Path::new("/run/netns").join(h.ns_of(i)).exists(),
            "read-only: a namespace was created for unrecorded router {i}: {o:?}"
        );
        assert_eq!(
            h.host_ends_of(i),
            Vec::<String>::new(),
            "read-only: router {i}"
        );
    }
    h.status_ok(&h.ids(0..4), "read-only: status still reads");
    h.plan_empty(&four, "read-only: plan still reads");
    ok(&["mount", "-o", "remount,rw", mnt.to_str().unwrap()]);
    h.apply_ok(&six, "after remounting read-write");
    h.records_converged(0..6, "after remounting read-write");
    h.status_ok(&h.ids(0..6), "after remounting read-write");
    h.destroy_all_clean("read-only, the end");

    // A state directory that cannot even be created (a read-only file system, never written).
    let ro = h.mount_tmpfs("ro", "ro,size=64k");
    h.state = ro.join("state");
    let o = h.apply(&h.config(0..2));
    assert_eq!(o.code, Some(1), "{o:?}");
    assert!(
        o.stderr.contains(h.state_s()) && o.stderr.contains("read-only"),
        "{o:?}"
    );
    assert_eq!(h.ours_in_run_netns(), Vec::<String>::new(), "{o:?}");
}

/// Case 4: leftover temporary files (ours, and the old writer's) are removed by the next
/// apply; symbolic links planted at the exact temporary names the next apply will use, or at
/// an allocator's file, are never followed: their target is unchanged.
#[test]
fn temporary_files_never_leak_and_planted_links_are_not_followed() {
    let h = Host::new(4, 1);
    let cfg = h.config(0..1);
    h.apply_ok(&cfg, "first apply");
    let planted = [
        ".tmp-records.json-4242-0",
        ".tmp-fip-priorities-4242",
        ".records.json.tmp.4242",
        "applied/.tmp-agent.json-4242-3",
    ];
    for p in planted {
        std::fs::write(h.state.join(p), b"half-written").unwrap();
    }
    h.apply_ok(&cfg, "leftover temporaries");
    assert_eq!(temporaries(&h.state), Vec::<String>::new());
    h.status_ok(&h.ids(0..1), "leftover temporaries");

    // Links at the names the next apply's writes will take (its pid is known once it waits
    // for the lock we hold).
    let victim = h.dir.join("victim");
    std::fs::write(&victim, b"precious\n").unwrap();
    let holder = LockHolder::hold(&h.state);
    let (mut child, out, err) = h.spawn(&["apply", cfg.to_str().unwrap()]);
    let pid = child.id();
    wait_until_open(pid, &h.state.join("lock"));
    let mut links = Vec::new();
    for n in 0..8 {
        links.push(format!(".tmp-records.json-{pid}-{n}"));
        links.push(format!("applied/.tmp-agent.json-{pid}-{n}"));
        links.push(format!("applied/.tmp-facts.json-{pid}-{n}"));
    }
    for f in ["fip-linklocal-networks", "fip-priorities", "snat-tables"] {
        links.push(format!(".tmp-{f}-{pid}"));
    }
    for l in &links {
        std::os::unix::fs::symlink(&victim, h.state.join(l)).unwrap();
    }
    holder.release();
    let status = wait_bounded(&mut child, CLI_TIMEOUT, "apply after planted links");
    let o = Host::collect(status, &out, &err);
    assert_eq!(o.code, Some(0), "{o:?}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious\n");
    assert!(std::fs::symlink_metadata(&victim).unwrap().is_file());
    assert_eq!(temporaries(&h.state), Vec::<String>::new());
    h.status_ok(&h.ids(0..1), "planted links");

    // A link planted at an allocator's file is refused, neither followed nor echoed.
    let alloc = h.state.join("fip-priorities");
    let _ = std::fs::remove_file(&alloc);
    std::os::unix::fs::symlink(&victim, &alloc).unwrap();
    let o = h.apply(&cfg);
    assert!(!o.stderr.contains("precious"), "{o:?}");
    assert!(!o.stdout.contains("precious"), "{o:?}");
    assert_eq!(o.code, Some(1), "{o:?}");
    assert!(
        o.stderr.contains("fip-priorities") && o.stderr.contains("symbolic link"),
        "{o:?}"
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious\n");
    assert!(std::fs::symlink_metadata(&victim).unwrap().is_file());
    std::fs::remove_file(&alloc).unwrap();
    h.apply_ok(&cfg, "after removing the planted allocator link");
    h.status_ok(&h.ids(0..1), "after removing the planted allocator link");
    h.destroy_all_clean("the end");
}

/// Case 5a: SIGTERM while waiting for the state directory's lock ends `apply` (and `destroy`)
/// within 2 s with a message saying so, instead of waiting up to 120 s.
#[test]
fn sigterm_while_waiting_for_the_lock_stops_promptly() {
    let h = Host::new(5, 1);
    let cfg = h.config(0..1);
    h.apply_ok(&cfg, "first apply");
    let holder = LockHolder::hold(&h.state);
    let cfg_s = cfg.to_str().unwrap().to_owned();
    let state = h.state_s().to_owned();
    for args in [
        vec!["apply", cfg_s.as_str()],
        vec!["destroy", "--all", "--state-path", state.as_str()],
    ] {
        let (mut child, out, err) = h.spawn(&args);
        wait_until_open(child.id(), &h.state.join("lock"));
        // Give it a moment in the wait loop, so that the signal really lands while it waits.
        std::thread::sleep(Duration::from_millis(100));
        assert!(child.try_wait().unwrap().is_none(), "{args:?} did not wait");
        let t0 = Instant::now();
        signal(child.id(), "-TERM");
        let status = wait_bounded(&mut child, Duration::from_secs(10), "l3agent after SIGTERM");
        let took = t0.elapsed();
        let o = Host::collect(status, &out, &err);
        assert!(
            took < Duration::from_secs(2),
            "{args:?}: took {took:?}: {o:?}"
        );
        assert_eq!(o.code, Some(1), "{args:?}: {o:?}");
        assert!(
            o.stderr.contains("stopped while waiting for the lock") && o.stderr.contains(&state),
            "{args:?}: {o:?}"
        );
    }
    holder.release();
    // Nothing was touched while it waited.
    h.status_ok(&h.ids(0..1), "after the interrupted waits");
    h.destroy_all_clean("the end");
}

/// Case 5b: SIGTERM in the middle of an apply stops it between routers: the routers not
/// processed are reported "skipped" (never "failed"), exit 1 says it was interrupted, and the
/// next apply converges everything.
#[test]
fn sigterm_mid_apply_reports_skipped_routers_and_the_next_apply_converges() {
    let h = Host::new(6, 12);
    let cfg = h.config(0..12);
    let ids = h.ids(0..12);
    let mut skipped_seen = false;
    for attempt in 0..6 {
        let why = format!("attempt {attempt}");
        let (mut child, out, err) = h.spawn(&["apply", cfg.to_str().unwrap()]);
        // Every namespace is made before the first router is converged: that is mid-apply.
        let deadline = Instant::now() + CLI_TIMEOUT;
        while child.try_wait().unwrap().is_none()
            && (0..12).any(|i| !Path::new("/run/netns").join(h.ns_of(i)).exists())
        {
            assert!(
                Instant::now() < deadline,
                "{why}: namespaces never appeared"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        signal(child.id(), "-TERM");
        let status = wait_bounded(&mut child, CLI_TIMEOUT, &why);
        let o = Host::collect(status, &out, &err);
        let routers = o.json["routers"]
            .as_array()
            .unwrap_or_else(|| panic!("{why}: no report: {o:?}"))
            .clone();
        assert!(
            routers.iter().all(|r| r["status"] != "failed"),
            "{why}: a router interrupted by SIGTERM is reported failed: {o:?}"
        );
        let skipped = routers.iter().filter(|r| r["status"] == "skipped").count();
        eprintln!(
            "{why}: {skipped} of 12 routers skipped: {}",
            o.stderr.trim()
        );
        if skipped > 0 {
            skipped_seen = true;
            assert_eq!(o.code, Some(1), "{why}: {o:?}");
            assert!(o.stderr.contains("interrupted by a signal"), "{why}: {o:?}");
            assert_eq!(o.json["interrupted"], true, "{why}: {o:?}");
        }
        h.apply_ok(&cfg, &why);
        h.records_converged(0..12, &why);
        h.status_ok(&ids, &why);
        h.destroy_all_clean(&why);
        if skipped_seen {
            break;
        }
    }
    assert!(skipped_seen, "SIGTERM never landed mid-apply");
}

/// Case 6: a crafted `records.json` naming namespaces that are not l3agent's (a test
/// namespace, a `qrouter-` name that is not followed by a valid id, a path) makes neither
/// `apply` nor `destroy --all` delete them.
#[test]
fn a_crafted_records_file_cannot_delete_foreign_namespaces() {
    let h = Host::new(7, 1);
    let cfg = h.config(0..1);
    let victim = TestNs::new("victim");
    // Looks like ours by prefix, but "l3t_…" is not a router id (no '_' in ids).
    let lookalike = format!("qrouter-l3t_{}_{}", std::process::id(), unique());
    ok(&["ip", "netns", "add", &lookalike]);
    struct Del(String);
    impl Drop for Del {
        fn drop(&mut self) {
            let _ = sh(&["ip", "netns", "del", &self.0]);
        }
    }
    let _lookalike_guard = Del(lookalike.clone());
    let ours = h.ns_of(0);
    let survivors = || {
        for n in [&victim.name, &lookalike] {
            assert!(is_nsfs(&Path::new("/run/netns").join(n)), "{n} was deleted");
        }
    };
    let crafted = [
        json!({"namespaces": [victim.name, lookalike, ours], "routers": {}}),
        json!({"namespaces": ["../x", victim.name, lookalike], "routers": {}}),
        json!({"namespaces": [format!("/run/netns/{}", victim.name)], "routers": {}}),
    ];
    for records in &crafted {
        h.apply_ok(&cfg, "setup");
        let path = h.state.join("records.json");
        overwrite(&path, records.to_string().as_bytes());
        // An apply that wants none of them must not remove them as "no longer wanted".
        h.apply_ok(&cfg, &format!("apply with {records}"));
        survivors();
        overwrite(&path, records.to_string().as_bytes());
        let o = h.destroy_all();
        assert_eq!(o.code, Some(0), "{records}: {o:?}");
        survivors();
        assert!(
            !Path::new("/run/netns").join(&ours).exists(),
            "{records}: our own namespace was not destroyed: {o:?}"
        );
        assert_eq!(tree(&h.state), ["lock"], "{records}");
    }
}

/// Case 7: a plain file in `/run/netns` named like one of our namespaces (left by a crash
/// between creating the file and mounting the namespace on it, or between unmounting and
/// removing it) is replaced by the namespace when it is wanted, and removed when it is not.
#[test]
fn a_leftover_file_in_run_netns_is_replaced_or_removed() {
    let h = Host::new(8, 2);
    let path = |i: usize| Path::new("/run/netns").join(h.ns_of(i));
    std::fs::create_dir_all("/run/netns").unwrap();
    // Wanted: the apply makes the namespace there.
    File::create(path(0)).unwrap();
    let both = h.config(0..2);
    let one = h.config(0..1);
    h.apply_ok(&both, "a plain file where a wanted namespace goes");
    assert!(h.is_namespace(0) && h.is_namespace(1));
    h.records_converged(0..2, "a plain file where a wanted namespace goes");
    h.status_ok(&h.ids(0..2), "a plain file where a wanted namespace goes");
    h.plan_empty(&both, "a plain file where a wanted namespace goes");

    // Unwanted: a namespace unmounted but not removed (router 1 goes away).
    ok(&["umount", path(1).to_str().unwrap()]);
    assert!(path(1).exists() && !h.is_namespace(1));
    h.apply_ok(&one, "a plain file where an unwanted namespace was");
    assert!(!path(1).exists(), "the leftover file of router 1 stayed");
    h.records_converged(0..1, "a plain file where an unwanted namespace was");
    h.status_ok(&h.ids(0..1), "a plain file where an unwanted namespace was");

    // A wanted namespace unmounted: status sees it missing, apply makes it again.
    ok(&["umount", path(0).to_str().unwrap()]);
    let o = h.l3agent(&["status", "--state-path", h.state_s()]);
    assert_eq!(o.code, Some(1), "{o:?}");
    assert_eq!(o.json[0]["health"], "missing", "{o:?}");
    h.apply_ok(&one, "a wanted namespace unmounted");
    assert!(h.is_namespace(0));
    h.status_ok(&h.ids(0..1), "a wanted namespace unmounted");

    // destroy --all removes a leftover file too. (Unmounting the namespace destroys it: the
    // kernel removes its ports' host ends asynchronously, not l3agent; wait for that.)
    ok(&["umount", path(0).to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !h.host_ends_of(0).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the kernel kept {:?}",
            h.host_ends_of(0)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    h.destroy_all_clean("destroy with a leftover file");
    assert!(!path(0).exists());
}
