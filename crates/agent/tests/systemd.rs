//! The systemd unit in `dist/`: systemd accepts it, it keeps the hardening we chose, and it
//! never gains a setting that would hide the agent's network namespaces from the host.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

const UNIT_NAME: &str = "l3agent-agent.service";
const SYSTEMD_ANALYZE: &str = "/usr/bin/systemd-analyze";

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../dist")
        .join(UNIT_NAME)
}

fn unit_text() -> String {
    std::fs::read_to_string(unit_path()).expect("dist/l3agent-agent.service is readable")
}

/// `Key=Value` settings of `[section]` (comments and blank lines skipped; a key given twice
/// keeps its values in order).
fn settings(text: &str, section: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = s.to_owned();
            continue;
        }
        if current == section {
            let (k, v) = line.split_once('=').expect("a Key=Value line");
            out.entry(k.trim().to_owned())
                .or_default()
                .push(v.trim().to_owned());
        }
    }
    out
}

fn one<'a>(s: &'a BTreeMap<String, Vec<String>>, key: &str) -> &'a str {
    match s.get(key).map(Vec::as_slice) {
        Some([v]) => v,
        other => panic!("{key}= should be set exactly once, found {other:?}"),
    }
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("l3agent-unit-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `systemd-analyze verify FILE` (bounded to 60 s) and returns (success, stdout+stderr).
// Process spawning is confined to crates/process in the product code; this test runs a
// systemd tool on a unit file and nothing else, so it opts out here and only here.
#[allow(clippy::disallowed_methods)]
fn verify(file: &Path) -> (bool, String) {
    assert!(
        Path::new(SYSTEMD_ANALYZE).exists(),
        "{SYSTEMD_ANALYZE} is missing: install systemd (apt-get install systemd); this test \
         must not pass without checking the unit"
    );
    let mut child = std::process::Command::new(SYSTEMD_ANALYZE)
        .arg("verify")
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("systemd-analyze starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for systemd-analyze") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("systemd-analyze verify did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    (status.success(), out)
}

/// The unit with `ExecStart=` pointed at a binary that exists here (this test), so that
/// verify checks everything else instead of stopping at the missing `/usr/local/bin/l3agent`.
fn runnable_copy(dir: &Scratch, text: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let text = text.replace("/usr/local/bin/l3agent", exe.to_str().unwrap());
    assert!(
        text.contains(exe.to_str().unwrap()),
        "ExecStart was not rewritten"
    );
    let path = dir.0.join(UNIT_NAME);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn systemd_analyze_verify_accepts_the_unit_without_a_single_complaint() {
    let dir = Scratch::new("verify");
    let copy = runnable_copy(&dir, &unit_text());
    let (ok, out) = verify(&copy);
    assert!(ok, "systemd-analyze verify failed:\n{out}");
    let ours: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("l3agent-agent"))
        .collect();
    assert!(
        ours.is_empty(),
        "systemd-analyze verify complained:\n{}",
        ours.join("\n")
    );
}

#[test]
fn systemd_analyze_verify_does_report_a_broken_setting_so_the_check_above_means_something() {
    let dir = Scratch::new("broken");
    let broken = unit_text().replace("Restart=on-failure", "Restart=sometimes");
    let copy = runnable_copy(&dir, &broken);
    let (_, out) = verify(&copy);
    assert!(out.contains("sometimes"), "verify did not notice:\n{out}");
}

#[test]
fn the_unit_runs_the_agent_as_a_notify_service_with_a_watchdog_and_reload() {
    let text = unit_text();
    let s = settings(&text, "Service");
    assert_eq!(one(&s, "Type"), "notify");
    assert_eq!(one(&s, "NotifyAccess"), "main");
    assert_eq!(
        one(&s, "ExecStart"),
        "/usr/local/bin/l3agent agent --config /etc/l3agent/host.yaml"
    );
    assert_eq!(one(&s, "ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(one(&s, "Restart"), "on-failure");
    assert_eq!(one(&s, "WatchdogSec"), "30");
    for key in ["RestartSec", "TimeoutStartSec", "TimeoutStopSec"] {
        assert!(!one(&s, key).is_empty(), "{key}");
    }
    assert_eq!(one(&s, "RuntimeDirectory"), "l3agent");
    assert_eq!(one(&s, "RuntimeDirectoryMode"), "0700");
    assert_eq!(one(&s, "StateDirectory"), "l3agent");
    assert_eq!(one(&s, "StateDirectoryMode"), "0700");
    assert_eq!(
        one(&settings(&text, "Install"), "WantedBy"),
        "multi-user.target"
    );
}

#[test]
fn stopping_the_agent_leaves_supervised_daemons_running() {
    let s = settings(&unit_text(), "Service");
    // control-group and mixed would SIGKILL keepalived/radvd/haproxy on every restart.
    assert_eq!(one(&s, "KillMode"), "process");
}

#[test]
fn the_unit_keeps_its_hardening() {
    let s = settings(&unit_text(), "Service");
    assert_eq!(one(&s, "NoNewPrivileges"), "yes");
    let caps: Vec<&str> = one(&s, "CapabilityBoundingSet")
        .split_whitespace()
        .collect();
    for cap in ["CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_NET_RAW"] {
        assert!(caps.contains(&cap), "{cap} missing from {caps:?}");
    }
    for cap in [
        "CAP_DAC_OVERRIDE",
        "CAP_SYS_MODULE",
        "CAP_SYS_PTRACE",
        "CAP_SYS_RAWIO",
    ] {
        assert!(!caps.contains(&cap), "{cap} should not be granted");
    }
    let ambient: Vec<&str> = one(&s, "AmbientCapabilities").split_whitespace().collect();
    assert_eq!(ambient, caps, "ambient and bounding sets differ");
    let families: Vec<&str> = one(&s, "RestrictAddressFamilies")
        .split_whitespace()
        .collect();
    for f in ["AF_UNIX", "AF_NETLINK", "AF_INET", "AF_INET6", "AF_PACKET"] {
        assert!(families.contains(&f), "{f} missing from {families:?}");
    }
    assert_eq!(one(&s, "RestrictNamespaces"), "net");
    for (key, value) in [
        ("LockPersonality", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("SystemCallArchitectures", "native"),
        ("UMask", "0077"),
    ] {
        assert_eq!(one(&s, key), value, "{key}");
    }
    assert!(one(&s, "SystemCallFilter").starts_with('~'));
}

#[test]
fn the_unit_never_gets_a_private_mount_namespace_that_would_hide_router_namespaces() {
    // Each of these makes systemd run the service in a mount namespace whose mounts are
    // slaves of the host's: `ip netns add`-style bind mounts under /run/netns would then
    // stay invisible to the host and die with the agent (systemd.exec(5), PrivateMounts=).
    let s = settings(&unit_text(), "Service");
    for key in [
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "PrivateMounts",
        "ReadWritePaths",
        "ReadOnlyPaths",
        "InaccessiblePaths",
        "TemporaryFileSystem",
        "BindPaths",
        "BindReadOnlyPaths",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "ProtectProc",
        "ProcSubset",
        "ProtectHostname",
        "RootDirectory",
        "MountFlags",
        "DynamicUser",
    ] {
        if let Some(v) = s.get(key) {
            assert!(
                v.iter().all(|v| v == "no" || v == "false" || v.is_empty()),
                "{key}={v:?} would put the agent in a private mount namespace"
            );
        }
    }
}
