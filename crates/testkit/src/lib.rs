//! Fixtures for tests against the real kernel. Every namespace a test makes is unique to the
//! test process and removed when its guard drops, also on panic. Namespaces are the
//! workspace's own ([`l3agent_netns`]: iproute2-compatible, so `ip -n NAME` sees them).
//! Fixtures may run `ip` and `iptables` as processes: they set the scene and look at it; the
//! code under test never does.
#![allow(clippy::disallowed_methods)] // fixtures spawn `ip`/`iptables` to set up and inspect

pub mod neutron_api;
pub mod service;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use l3agent_netns::{Netns, NetnsError};
use l3agent_types::NetnsName;

/// Both iptables backends: every kernel test runs for each.
pub const BACKENDS: [&str; 2] = ["nft", "legacy"];

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A number unique within this test process (for file and namespace names).
pub fn unique() -> usize {
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

/// Fails (never skips) when the kernel tests cannot run here, saying why.
pub fn require_kernel() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "kernel tests need root: they create network namespaces and run iptables in them. Run the suite as root (./test.sh does everything)."
    );
    for p in ["iptables-nft-restore", "iptables-legacy-restore", "ip"] {
        assert!(
            ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].iter().any(|d| std::path::Path::new(d).join(p).exists()),
            "{p} is not installed: run ./test.sh, which installs iptables, nftables and iproute2 with apt-get"
        );
    }
}

/// The result of a fixture command.
#[derive(Debug)]
pub struct Run {
    /// Exit code.
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// A router dict's port addresses (`_interfaces`, `_snat_router_interfaces`, `gw_port`)
/// with their last byte (IPv4) or group (IPv6) set to `host` (SNAT ports: `host + 100`, as
/// they sit on the interfaces' subnets), and their MACs made `xx:xx:xx:ee:<host>:xx`: a
/// copy of an example router on the same networks with addresses and MACs of its own (each
/// is one port's on a network).
pub fn renumber_router(v: &mut serde_json::Value, host: u8) {
    for (field, host) in [
        ("_interfaces", host),
        ("_snat_router_interfaces", host.wrapping_add(100)),
        ("gw_port", host),
    ] {
        match v.get_mut(field) {
            Some(serde_json::Value::Array(ports)) => {
                ports.iter_mut().for_each(|p| renumber_port(p, host));
            }
            Some(port @ serde_json::Value::Object(_)) => renumber_port(port, host),
            _ => {}
        }
    }
}

fn renumber_port(port: &mut serde_json::Value, host: u8) {
    if let Some(mac) = port["mac_address"].as_str() {
        let mut bytes: Vec<String> = mac.split(':').map(str::to_owned).collect();
        if bytes.len() == 6 {
            bytes[3] = "ee".into();
            bytes[4] = format!("{host:02x}");
            port["mac_address"] = serde_json::Value::from(bytes.join(":"));
        }
    }
    for ip in port["fixed_ips"].as_array_mut().into_iter().flatten() {
        let addr = ip["ip_address"].as_str().expect("an address").to_owned();
        let cut = addr.rfind(['.', ':']).expect("an IP address");
        let sep = &addr[cut..=cut];
        let last = if sep == "." {
            host.to_string()
        } else {
            format!("{host:x}")
        };
        ip["ip_address"] = serde_json::Value::from(format!("{}{sep}{last}", &addr[..cut]));
    }
}

/// The bytes of a hex capture file (tests' captured kernel answers): lines starting with `#`
/// describe it, whitespace is ignored, the rest is hex digit pairs.
pub fn hex_capture(text: &str) -> Vec<u8> {
    let digits: String = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .flat_map(|l| l.chars().filter(|c| !c.is_whitespace()))
        .collect();
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).expect("hex digits"))
        .collect()
}

/// Runs a fixture command (argv, no shell).
pub fn sh(argv: &[&str]) -> Run {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs a fixture command that must succeed; returns its stdout.
pub fn ok(argv: &[&str]) -> String {
    let r = sh(argv);
    assert_eq!(r.code, Some(0), "{argv:?} failed: {}", r.stderr);
    r.stdout
}

/// A directory under /tmp, unique to the test process, removed on drop. Its path is short
/// (unix socket paths hold 107 bytes): `/tmp/l3t-<tag>-<pid>-<n>`.
#[derive(Debug)]
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// Makes it (empty).
    pub fn new(tag: &str) -> TempDir {
        let p = std::path::PathBuf::from(format!(
            "/tmp/l3t-{tag}-{}-{}",
            std::process::id(),
            unique()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        TempDir(p)
    }

    /// Its path.
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A throwaway named network namespace, deleted on drop.
#[derive(Debug)]
pub struct TestNs {
    /// Its name in /run/netns.
    pub name: String,
    netns: NetnsName,
}

impl TestNs {
    /// Creates `l3t-<pid>-<n>-<tag>` with `lo` up.
    pub fn new(tag: &str) -> TestNs {
        require_kernel();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("l3t-{}-{n}-{tag}", std::process::id());
        let netns = NetnsName::new("test namespace", &name).unwrap_or_else(|e| panic!("{e}"));
        l3agent_netns::create(&netns).unwrap_or_else(|e| panic!("creating {name}: {e}"));
        let ns = TestNs { name, netns };
        ns.ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Its name, typed.
    pub fn netns_name(&self) -> &NetnsName {
        &self.netns
    }

    /// Opens it.
    pub fn open(&self) -> Netns {
        Netns::open(&self.netns).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs `f` on a thread inside (see [`Netns::run`]); panics if it cannot get there.
    pub fn inside<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.open()
            .run::<_, NetnsError>(f)
            .unwrap_or_else(|e| panic!("in {}: {e}", self.name))
    }

    /// Runs a command inside (network namespace only: started by a thread that entered it,
    /// as l3agent starts its daemons).
    pub fn run(&self, argv: &[&str]) -> Run {
        let out = self
            .inside(|| Command::new(argv[0]).args(&argv[1..]).output())
            .unwrap_or_else(|e| panic!("{argv:?} in {}: {e}", self.name));
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs a command inside that must succeed; returns its stdout.
    pub fn ok(&self, argv: &[&str]) -> String {
        let r = self.run(argv);
        assert_eq!(
            r.code,
            Some(0),
            "{argv:?} in {} failed: {}",
            self.name,
            r.stderr
        );
        r.stdout
    }

    /// `iptables-<backend>-save` (or ip6tables) without the timestamp comments.
    pub fn save(&self, backend: &str, v6: bool) -> String {
        let prog = format!(
            "{}-{backend}-save",
            if v6 { "ip6tables" } else { "iptables" }
        );
        self.ok(&[&prog])
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    /// Feeds a restore input with `iptables-<backend>-restore --noflush`.
    pub fn restore(&self, backend: &str, v6: bool, input: &str) {
        let prog = format!(
            "{}-{backend}-restore",
            if v6 { "ip6tables" } else { "iptables" }
        );
        let mut child = self
            .inside(|| {
                Command::new(&prog)
                    .arg("--noflush")
                    .stdin(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
            })
            .expect("spawn restore");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write restore input");
        let out = child.wait_with_output().expect("wait restore");
        assert!(
            out.status.success(),
            "{prog} failed: {}\ninput:\n{input}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = l3agent_netns::delete(&self.netns);
    }
}

/// The lines of a save output that belong to none of `wraps`, with their table, in save order:
/// what must survive every apply byte for byte. A chain belongs to the longest wrap name (among
/// `wraps` and those seen in markers) it is prefixed with, so `l3agent` does not claim
/// `l3agent-b-INPUT` when wrap `l3agent-b` exists. Builtin chain declarations (which appear with
/// a table) and the declarations of Neutron's shared chains (which l3agent creates) are left out.
pub fn foreign_lines(save: &str, wraps: &[&str]) -> Vec<String> {
    let mut known: Vec<String> = wraps.iter().map(|w| (*w).to_owned()).collect();
    for part in save.split("l3agent:").skip(1) {
        if let Some((w, _)) = part.split_once(':') {
            known.push(w.to_owned());
        }
    }
    let owner = |chain: &str| -> Option<String> {
        known
            .iter()
            .filter(|w| {
                chain
                    .strip_prefix(w.as_str())
                    .is_some_and(|r| r.starts_with('-'))
            })
            .max_by_key(|w| w.len())
            .cloned()
    };
    let mut table = String::new();
    let mut out = Vec::new();
    for l in save.lines() {
        if let Some(t) = l.strip_prefix('*') {
            table = t.to_owned();
            continue;
        }
        let chain = l
            .strip_prefix("-A ")
            .or_else(|| l.strip_prefix(':'))
            .and_then(|r| r.split(' ').next())
            .unwrap_or("");
        let ours = owner(chain).is_some_and(|o| wraps.contains(&o.as_str()));
        let marked = wraps.iter().any(|w| l.contains(&format!("l3agent:{w}:")));
        let builtin_decl = l.starts_with(':') && !l.contains(" - [");
        let shared_decl =
            l.starts_with(":neutron-filter-top ") || l.starts_with(":neutron-postrouting-bottom ");
        if l == "COMMIT" || ours || marked || builtin_decl || shared_decl {
            continue;
        }
        out.push(format!("{table} {l}"));
    }
    out
}

/// What a save output holds, without table and builtin-chain boilerplate: user chain
/// declarations and rules, each with its table. Two outputs with the same content compare equal
/// even when one backend has created an empty table in between.
pub fn content(save: &str) -> Vec<String> {
    let mut table = String::new();
    let mut out = Vec::new();
    for l in save.lines() {
        if let Some(t) = l.strip_prefix('*') {
            table = t.to_owned();
        } else if l.starts_with("-A ")
            || (l.starts_with(':') && (l.contains(" - [") || !l.contains(" ACCEPT ")))
        {
            out.push(format!("{table} {l}"));
        }
    }
    out
}

/// One TCP connection from `client` to `dst:port`, where a one-shot server in `server` prints
/// the peer address it saw: proves NAT (what the server sees), not just reachability. Bounded:
/// the server gives up after 8 s, the client tries 6 times (about 4 s).
pub fn tcp_probe(server: &TestNs, client: &TestNs, dst: &str, port: u16) -> Result<String, String> {
    let code = format!(
        "import socket\ns=socket.socket(socket.AF_INET6 if ':' in '{dst}' else socket.AF_INET)\n\
         s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('',{port}))\ns.listen(1)\ns.settimeout(8)\n\
         c,a=s.accept()\nprint(a[0],flush=True)\nc.close()\n"
    );
    let srv = server
        .inside(|| {
            Command::new("python3")
                .args(["-c", &code])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
        })
        .map_err(|e| e.to_string())?;
    let connect =
        format!("import socket\nsocket.create_connection(('{dst}',{port}),timeout=0.5).close()\n");
    let mut connected = false;
    for _ in 0..6 {
        if client.run(&["python3", "-c", &connect]).code == Some(0) {
            connected = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    if !connected {
        // Unblock the server so it exits now rather than after its timeout.
        let _ = server.run(&[
            "python3",
            "-c",
            &format!(
                "import socket\nsocket.create_connection(('127.0.0.1',{port}),timeout=1).close()"
            ),
        ]);
    }
    let out = srv.wait_with_output().map_err(|e| e.to_string())?;
    if !connected {
        return Err(format!("{} could not connect to {dst}:{port}", client.name));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
