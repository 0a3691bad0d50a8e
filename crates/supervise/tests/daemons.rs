//! The supervisor against real daemons (radvd 2.19, haproxy 2.6, keepalived 2.2.7,
//! conntrackd 1.4.7) in throwaway namespaces. Needs root: these tests fail, never skip,
//! without it. Only documentation prefixes are used (2001:db8::/32, 192.0.2.0/24) plus the
//! link-local VIP 169.254.0.7. Every process a test starts is stopped by the fixture's drop,
//! also when the test fails, and every wait is bounded.
#![allow(clippy::disallowed_methods)] // tests spawn `sleep`/`python3` as bystanders

use std::cell::RefCell;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use l3agent_supervise::{ConfigDigest, Error, Key, Service, Supervisor};
use l3agent_testkit::{require_kernel, unique, TempDir, TestNs};
use l3agent_types::RouterId;

/// A daemons directory in a temporary directory, and the keys started in it: every one is
/// stopped on drop (before the directory goes).
struct Fixture {
    sup: Supervisor,
    keys: RefCell<Vec<Key>>,
    tmp: TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        require_kernel();
        let tmp = TempDir::new("sup");
        let sup = Supervisor::new(&tmp.path().join("daemons")).unwrap();
        Fixture {
            sup,
            keys: RefCell::new(Vec::new()),
            tmp,
        }
    }

    /// A key for a new router id unique to this test process.
    fn key(&self, service: Service) -> Key {
        let router = RouterId::new("r", &format!("r{}-{}", std::process::id(), unique())).unwrap();
        let key = Key::new(router, service);
        self.keys.borrow_mut().push(key.clone());
        key
    }

    fn paths(&self, key: &Key) -> l3agent_supervise::Paths {
        Supervisor::paths(self.sup.dir(), key)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for k in self.keys.borrow().iter() {
            if let Err(e) = self.sup.stop(k, Duration::from_secs(1)) {
                eprintln!("cleanup of {k}: {e}");
            }
        }
    }
}

/// Kills a bystander process on drop.
struct Bystander(Child);

impl Drop for Bystander {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Bystander {
    fn alive(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    loop {
        if done() {
            return;
        }
        assert!(
            Instant::now() < end,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Live processes whose argv names `conf` (the test's own view of /proc).
fn procs_with(conf: &Path) -> Vec<u32> {
    let conf = conf.to_str().unwrap();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if raw.split(|b| *b == 0).any(|a| a == conf.as_bytes()) {
            out.push(pid);
        }
    }
    out
}

fn sigkill(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

/// Files of the daemons directory.
fn files(fx: &Fixture) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(fx.sup.dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A router namespace with `qr0` (2001:db8:1::1/64) joined by a veth to a host namespace
/// whose `p0` accepts router advertisements.
fn ra_pair() -> (TestNs, TestNs) {
    let r = TestNs::new("ra");
    let host = TestNs::new("host");
    r.ok(&[
        "ip", "link", "add", "qr0", "type", "veth", "peer", "name", "p0", "netns", &host.name,
    ]);
    host.ok(&["sysctl", "-qw", "net.ipv6.conf.p0.accept_ra=2"]);
    host.ok(&["ip", "link", "set", "p0", "up"]);
    r.ok(&[
        "ip",
        "-6",
        "addr",
        "add",
        "2001:db8:1::1/64",
        "dev",
        "qr0",
        "nodad",
    ]);
    r.ok(&["ip", "link", "set", "qr0", "up"]);
    (r, host)
}

/// radvd.conf for `qr0` advertising `prefix`, every 3-4 s, with a 600 s router lifetime: a
/// default route that disappears within the test can only have been withdrawn.
fn radvd_conf(prefix: &str) -> String {
    format!(
        "interface qr0\n{{\n   AdvSendAdvert on;\n   MinRtrAdvInterval 3;\n   MaxRtrAdvInterval 4;\n   \
         AdvDefaultLifetime 600;\n   prefix {prefix}\n   {{\n        AdvOnLink on;\n        \
         AdvAutonomous on;\n   }};\n}};\n"
    )
}

fn host_has_address_in(host: &TestNs, prefix: &str) -> bool {
    host.ok(&["ip", "-6", "addr", "show", "dev", "p0"])
        .contains(prefix)
}

fn host_default_route(host: &TestNs) -> bool {
    host.ok(&["ip", "-6", "route", "show", "default"])
        .contains("via fe80")
}

/// The fix of a Neutron weakness: radvd is stopped with SIGTERM, so its final advertisement
/// (router lifetime 0) removes the host's default route at once; Neutron's SIGKILL leaves it
/// for up to the lifetime.
#[test]
fn radvd_advertises_reloads_with_the_same_pid_and_withdraws_the_default_route_on_stop() {
    let (r, host) = ra_pair();
    let fx = Fixture::new();
    let key = fx.key(Service::Radvd);
    let ns = r.netns_name();
    let pid = fx
        .sup
        .start(&key, ns, radvd_conf("2001:db8:1::/64").as_bytes())
        .unwrap();
    let seen = fx.sup.observe(&key, ns).unwrap();
    assert!(seen.running, "{seen:?}");
    assert_eq!(seen.pid, Some(pid));
    assert_eq!(
        seen.config,
        Some(ConfigDigest::of(radvd_conf("2001:db8:1::/64").as_bytes()))
    );
    let pid_file = std::fs::read_to_string(fx.paths(&key).pid).unwrap();
    assert_eq!(pid_file.trim(), pid.to_string());
    let conf_mode = std::fs::metadata(fx.paths(&key).conf).unwrap().mode() & 0o777;
    assert_eq!(conf_mode, 0o600);
    wait_until(
        "an address from the advertised prefix",
        Duration::from_secs(30),
        || host_has_address_in(&host, "2001:db8:1:"),
    );
    wait_until(
        "the default route via the router",
        Duration::from_secs(10),
        || host_default_route(&host),
    );

    fx.sup
        .reload(&key, ns, radvd_conf("2001:db8:2::/64").as_bytes())
        .unwrap();
    let after = fx.sup.observe(&key, ns).unwrap();
    assert_eq!(after.pid, Some(pid), "SIGHUP keeps the process");
    assert!(after.running);
    wait_until(
        "an address from the new prefix",
        Duration::from_secs(30),
        || host_has_address_in(&host, "2001:db8:2:"),
    );

    fx.sup.stop(&key, Duration::from_secs(5)).unwrap();
    wait_until(
        "the host to drop the default route (final RA, lifetime 0)",
        Duration::from_secs(5),
        || !host_default_route(&host),
    );
    assert!(procs_with(&fx.paths(&key).conf).is_empty());
    assert!(files(&fx).is_empty(), "{:?}", files(&fx));
    let gone = fx.sup.observe(&key, ns).unwrap();
    assert_eq!((gone.pid, gone.running, gone.config), (None, false, None));
}

/// The respawn path: the reconciler sees the daemon gone and starts it again. It also shows
/// why SIGKILL is the wrong way to stop radvd: the host keeps its default route.
#[test]
fn radvd_killed_with_sigkill_reads_as_not_running_and_starts_again() {
    let (r, host) = ra_pair();
    let fx = Fixture::new();
    let key = fx.key(Service::Radvd);
    let ns = r.netns_name();
    let conf = radvd_conf("2001:db8:1::/64");
    let pid = fx.sup.start(&key, ns, conf.as_bytes()).unwrap();
    wait_until(
        "the default route via the router",
        Duration::from_secs(30),
        || host_default_route(&host),
    );
    sigkill(pid);
    wait_until("observe to see it gone", Duration::from_secs(5), || {
        !fx.sup.observe(&key, ns).unwrap().running
    });
    let seen = fx.sup.observe(&key, ns).unwrap();
    assert_eq!(seen.pid, None, "a dead pid is not reported");
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        host_default_route(&host),
        "SIGKILL sends no final RA: the host keeps a dead default router"
    );
    let again = fx.sup.start(&key, ns, conf.as_bytes()).unwrap();
    assert_ne!(again, pid);
    assert!(fx.sup.observe(&key, ns).unwrap().running);
    // Only the new radvd (and its privilege-separation child) names the config.
    let procs = procs_with(&fx.paths(&key).conf);
    assert!(procs.contains(&again) && procs.len() <= 2, "{procs:?}");
    fx.sup.stop(&key, Duration::from_secs(5)).unwrap();
    assert!(procs_with(&fx.paths(&key).conf).is_empty());
}

#[test]
fn start_while_running_is_refused_a_broken_reload_is_rejected_and_stop_is_idempotent() {
    let (r, _host) = ra_pair();
    let fx = Fixture::new();
    let key = fx.key(Service::Radvd);
    let ns = r.netns_name();
    let conf = radvd_conf("2001:db8:1::/64");
    let pid = fx.sup.start(&key, ns, conf.as_bytes()).unwrap();
    let e = fx.sup.start(&key, ns, conf.as_bytes()).unwrap_err();
    assert!(
        matches!(e, Error::AlreadyRunning { pid: p, .. } if p == pid),
        "{e}"
    );

    // The same config again: no signal, nothing changes.
    fx.sup.reload(&key, ns, conf.as_bytes()).unwrap();
    // A broken config never reaches the file or the daemon.
    let e = fx
        .sup
        .reload(&key, ns, b"interface qr0 {\n bogus 1;\n};\n")
        .unwrap_err();
    assert!(matches!(e, Error::ConfigRejected { .. }), "{e}");
    assert!(e.to_string().contains("syntax error"), "{e}");
    let seen = fx.sup.observe(&key, ns).unwrap();
    assert!(seen.running && seen.pid == Some(pid), "{seen:?}");
    assert_eq!(seen.config, Some(ConfigDigest::of(conf.as_bytes())));
    assert_eq!(
        files(&fx).iter().filter(|f| f.starts_with('.')).count(),
        0,
        "no temporary is left: {:?}",
        files(&fx)
    );

    // l3agent stopped after writing a new config and before the SIGHUP: the file is not what
    // radvd runs with, so the next reload of that very config must still signal.
    let conf2 = radvd_conf("2001:db8:2::/64");
    std::fs::write(fx.paths(&key).conf, &conf2).unwrap();
    assert_eq!(fx.sup.observe(&key, ns).unwrap().config, None);
    fx.sup.reload(&key, ns, conf2.as_bytes()).unwrap();
    let seen = fx.sup.observe(&key, ns).unwrap();
    assert_eq!(seen.config, Some(ConfigDigest::of(conf2.as_bytes())));
    assert_eq!(seen.pid, Some(pid));

    fx.sup.stop(&key, Duration::from_secs(5)).unwrap();
    fx.sup.stop(&key, Duration::from_secs(5)).unwrap();
    let e = fx.sup.reload(&key, ns, conf.as_bytes()).unwrap_err();
    assert!(matches!(e, Error::NotRunning { .. }), "{e}");
}

#[test]
fn a_broken_radvd_config_fails_the_start_with_radvds_message_and_leaves_nothing() {
    let (r, _host) = ra_pair();
    let fx = Fixture::new();
    let key = fx.key(Service::Radvd);
    let e = fx
        .sup
        .start(&key, r.netns_name(), b"interface qr0 {\n bogus 1;\n};\n")
        .unwrap_err();
    assert!(matches!(e, Error::StartFailed { code: Some(1), .. }), "{e}");
    assert!(e.to_string().contains("syntax error"), "{e}");
    let p = fx.paths(&key);
    assert!(procs_with(&p.conf).is_empty());
    assert!(!p.pid.exists());
    assert!(!fx.sup.observe(&key, r.netns_name()).unwrap().running);
}

fn haproxy_conf(pid_file: &Path, body: &str) -> String {
    format!(
        "global\n    daemon\n    pidfile {}\n    maxconn 64\n\ndefaults\n    mode http\n    \
         timeout connect 1s\n    timeout client 1s\n    timeout server 1s\n\nfrontend metadata\n    \
         bind 127.0.0.1:9697\n    http-request return status 200 content-type text/plain string {body}\n",
        pid_file.display()
    )
}

/// An HTTP GET of 127.0.0.1:9697 inside `ns`: the body, or None.
fn http_get(ns: &TestNs) -> Option<String> {
    let code = "import urllib.request\nprint(urllib.request.urlopen('http://127.0.0.1:9697/', timeout=2).read().decode())";
    let r = ns.run(&["python3", "-c", code]);
    (r.code == Some(0)).then(|| r.stdout.trim().to_owned())
}

#[test]
fn haproxy_serves_reloads_by_restarting_and_stops() {
    let ns = TestNs::new("hap");
    let fx = Fixture::new();
    let key = fx.key(Service::Haproxy);
    let pidf = fx.paths(&key).pid;
    let pid = fx
        .sup
        .start(&key, ns.netns_name(), haproxy_conf(&pidf, "one").as_bytes())
        .unwrap();
    let seen = fx.sup.observe(&key, ns.netns_name()).unwrap();
    assert!(seen.running && seen.pid == Some(pid), "{seen:?}");
    assert_eq!(http_get(&ns).as_deref(), Some("one"));

    // A config haproxy refuses leaves the running one alone.
    let e = fx
        .sup
        .reload(&key, ns.netns_name(), b"global\n    no-such-keyword\n")
        .unwrap_err();
    assert!(matches!(e, Error::ConfigRejected { .. }), "{e}");
    assert_eq!(http_get(&ns).as_deref(), Some("one"));

    fx.sup
        .reload(&key, ns.netns_name(), haproxy_conf(&pidf, "two").as_bytes())
        .unwrap();
    let after = fx.sup.observe(&key, ns.netns_name()).unwrap();
    assert!(after.running);
    assert_ne!(after.pid, Some(pid), "haproxy reloads by restarting");
    assert_eq!(http_get(&ns).as_deref(), Some("two"));

    fx.sup.stop(&key, Duration::from_secs(5)).unwrap();
    assert_eq!(http_get(&ns), None);
    assert!(procs_with(&fx.paths(&key).conf).is_empty());
    assert!(files(&fx).is_empty(), "{:?}", files(&fx));
}

/// A daemon that started but never wrote the pid file we wait for (here haproxy told to
/// write another one) is found by argv and namespace, and killed.
#[test]
fn a_daemon_that_never_writes_its_pid_file_is_found_and_killed() {
    let ns = TestNs::new("nopid");
    let mut fx = Fixture::new();
    fx.sup = fx.sup.clone().with_start_timeout(Duration::from_secs(2));
    let key = fx.key(Service::Haproxy);
    let elsewhere = fx.tmp.path().join("elsewhere.pid");
    let t = Instant::now();
    let e = fx
        .sup
        .start(
            &key,
            ns.netns_name(),
            haproxy_conf(&elsewhere, "x").as_bytes(),
        )
        .unwrap_err();
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "bounded: {:?}",
        t.elapsed()
    );
    assert!(matches!(e, Error::NotStarted { .. }), "{e}");
    assert!(procs_with(&fx.paths(&key).conf).is_empty());
    assert!(!fx.paths(&key).pid.exists());
    assert_eq!(http_get(&ns), None);
}

fn keepalived_conf(vips: &[&str]) -> String {
    let vips: String = vips
        .iter()
        .map(|v| format!("        {v} dev ha0\n"))
        .collect();
    format!(
        "global_defs {{\n    router_id l3t\n}}\nvrrp_instance VR_1 {{\n    state BACKUP\n    \
         interface ha0\n    virtual_router_id 1\n    priority 50\n    advert_int 1\n    nopreempt\n    \
         authentication {{\n        auth_type PASS\n        auth_pass s3cret\n    }}\n    \
         virtual_ipaddress {{\n{vips}    }}\n}}\n"
    )
}

fn has_address(ns: &TestNs, dev: &str, addr: &str) -> bool {
    ns.ok(&["ip", "-4", "addr", "show", "dev", dev])
        .contains(&format!("inet {addr}/"))
}

#[test]
fn keepalived_becomes_master_adds_its_vip_reloads_in_place_and_removes_it_on_stop() {
    let ns = TestNs::new("ka");
    ns.ok(&[
        "ip", "link", "add", "ha0", "type", "veth", "peer", "name", "ha0p",
    ]);
    ns.ok(&["ip", "link", "set", "ha0p", "up"]);
    ns.ok(&["ip", "addr", "add", "192.0.2.1/24", "dev", "ha0"]);
    ns.ok(&["ip", "link", "set", "ha0", "up"]);
    let fx = Fixture::new();
    let key = fx.key(Service::Keepalived);
    let n = ns.netns_name();
    let p = fx.paths(&key);
    let pid = fx
        .sup
        .start(&key, n, keepalived_conf(&["169.254.0.7/24"]).as_bytes())
        .unwrap();
    assert!(fx.sup.observe(&key, n).unwrap().running);
    wait_until(
        "MASTER with VIP 169.254.0.7",
        Duration::from_secs(20),
        || has_address(&ns, "ha0", "169.254.0.7"),
    );
    wait_until("the VRRP child's pid file", Duration::from_secs(5), || {
        p.vrrp_pid.as_ref().unwrap().exists()
    });
    assert_eq!(procs_with(&p.conf).len(), 2, "parent and VRRP child");

    fx.sup
        .reload(
            &key,
            n,
            keepalived_conf(&["169.254.0.7/24", "169.254.0.8/24"]).as_bytes(),
        )
        .unwrap();
    assert_eq!(fx.sup.observe(&key, n).unwrap().pid, Some(pid));
    wait_until(
        "the second VIP after SIGHUP",
        Duration::from_secs(20),
        || has_address(&ns, "ha0", "169.254.0.8"),
    );

    // A keepalived whose pid files were lost is found by argv (parent and VRRP child) and
    // replaced by a fresh start: no orphan survives (Neutron #1511311).
    std::fs::remove_file(&p.pid).unwrap();
    std::fs::remove_file(p.vrrp_pid.as_ref().unwrap()).unwrap();
    assert!(!fx.sup.observe(&key, n).unwrap().running);
    let fresh = fx
        .sup
        .start(&key, n, keepalived_conf(&["169.254.0.7/24"]).as_bytes())
        .unwrap();
    assert_ne!(fresh, pid);
    wait_until(
        "only the new parent and child",
        Duration::from_secs(5),
        || {
            let procs = procs_with(&p.conf);
            procs.len() == 2 && procs.contains(&fresh) && !procs.contains(&pid)
        },
    );

    fx.sup.stop(&key, Duration::from_secs(5)).unwrap();
    assert!(procs_with(&p.conf).is_empty());
    assert!(
        !has_address(&ns, "ha0", "169.254.0.7"),
        "SIGTERM releases the VIPs"
    );
    assert!(files(&fx).is_empty(), "{:?}", files(&fx));
}

fn conntrackd_conf(p: &l3agent_supervise::Paths) -> String {
    format!(
        "General {{\n    HashSize 8192\n    HashLimit 65535\n    Syslog off\n    LockFile {}\n    \
         UNIX {{\n        Path {}\n    }}\n    SocketBufferSize 262142\n    \
         SocketBufferSizeMaxGrown 655355\n}}\nStats {{\n    LogFile off\n}}\n",
        p.lock.as_ref().unwrap().display(),
        p.socket.as_ref().unwrap().display()
    )
}

/// conntrackd writes no pid file: we find it and write one. After a SIGKILL its stale lock
/// would block every start; the supervisor removes it.
#[test]
fn conntrackd_gets_a_pid_file_and_starts_again_past_its_stale_lock() {
    let ns = TestNs::new("ctd");
    let fx = Fixture::new();
    let key = fx.key(Service::Conntrackd);
    let n = ns.netns_name();
    let p = fx.paths(&key);
    let conf = conntrackd_conf(&p);
    let pid = fx.sup.start(&key, n, conf.as_bytes()).unwrap();
    assert_eq!(
        std::fs::read_to_string(&p.pid).unwrap().trim(),
        pid.to_string()
    );
    assert!(fx.sup.observe(&key, n).unwrap().running);
    assert!(p.lock.as_ref().unwrap().exists());

    sigkill(pid);
    wait_until("observe to see it gone", Duration::from_secs(5), || {
        !fx.sup.observe(&key, n).unwrap().running
    });
    assert!(p.lock.as_ref().unwrap().exists(), "SIGKILL leaves the lock");
    let again = fx.sup.start(&key, n, conf.as_bytes()).unwrap();
    assert_ne!(again, pid);
    assert!(fx.sup.observe(&key, n).unwrap().running);

    fx.sup.stop(&key, Duration::from_secs(5)).unwrap();
    assert!(procs_with(&p.conf).is_empty());
    assert!(files(&fx).is_empty(), "{:?}", files(&fx));
}

/// conntrackd with the config the router compiles for an HA router (Neutron's template,
/// the lock file and control socket in the daemons directory), on an `ha-` veth with the HA
/// port's address: it starts, answers `conntrackd -C <conf> -s` on its control socket, and
/// takes the sync commands of both roles; the role is recorded for the running process
/// only, and a conntrackd started again has none.
#[test]
fn conntrackd_runs_with_neutrons_config_answers_its_socket_and_records_each_sync() {
    use l3agent_daemons::conntrackd::{self, ConntrackdConf, ConntrackdFiles, ConntrackdOptions};
    use l3agent_daemons::ConfPath;
    use l3agent_supervise::SyncRole;

    let ns = TestNs::new("ctsync");
    let fx = Fixture::new();
    let key = fx.key(Service::Conntrackd);
    let n = ns.netns_name();
    let p = fx.paths(&key);
    ns.ok(&[
        "ip", "link", "add", "ha-ct0", "type", "veth", "peer", "name", "ha-ct0p",
    ]);
    ns.ok(&["ip", "link", "set", "ha-ct0", "up"]);
    ns.ok(&["ip", "link", "set", "ha-ct0p", "up"]);
    ns.ok(&["ip", "addr", "add", "169.254.192.5/18", "dev", "ha-ct0"]);
    let path = |p: &Option<PathBuf>| ConfPath::new("test", p.as_ref().unwrap()).unwrap();
    let conf = conntrackd::render(&ConntrackdConf {
        files: ConntrackdFiles {
            lockfile: path(&p.lock),
            ctl: path(&p.socket),
        },
        options: ConntrackdOptions::default(),
        ha_ip: "169.254.192.5".parse().unwrap(),
        vrid: 7,
        ha_dev: l3agent_types::IfName::new("dev", "ha-ct0").unwrap(),
    });
    let pid = fx.sup.start(&key, n, conf.as_bytes()).unwrap();
    let seen = fx.sup.observe(&key, n).unwrap();
    assert!(seen.running);
    assert_eq!(seen.synced, None, "never synced yet");
    let conf_path = p.conf.to_str().unwrap();
    let stats = ns.run(&["conntrackd", "-C", conf_path, "-s"]);
    assert_eq!(stats.code, Some(0), "{stats:?}");
    assert!(
        !stats.stdout.trim().is_empty(),
        "conntrackd -s printed nothing: {stats:?}"
    );

    let failed = fx.sup.conntrackd_sync(&key, n, SyncRole::Primary).unwrap();
    assert_eq!(failed, Vec::new(), "every primary command succeeds");
    assert_eq!(
        fx.sup.observe(&key, n).unwrap().synced,
        Some(SyncRole::Primary)
    );
    let failed = fx.sup.conntrackd_sync(&key, n, SyncRole::Backup).unwrap();
    assert_eq!(failed, Vec::new(), "every backup command succeeds");
    assert_eq!(
        fx.sup.observe(&key, n).unwrap().synced,
        Some(SyncRole::Backup)
    );
    assert_eq!(
        std::fs::read_to_string(p.synced.as_ref().unwrap()).unwrap(),
        format!("backup {pid}\n")
    );

    // Started again: its caches are empty and it has no sync on record.
    sigkill(pid);
    wait_until("observe to see it gone", Duration::from_secs(5), || {
        !fx.sup.observe(&key, n).unwrap().running
    });
    assert_eq!(fx.sup.observe(&key, n).unwrap().synced, None);
    assert!(matches!(
        fx.sup.conntrackd_sync(&key, n, SyncRole::Primary),
        Err(Error::NotRunning { .. })
    ));
    fx.sup.start(&key, n, conf.as_bytes()).unwrap();
    assert_eq!(fx.sup.observe(&key, n).unwrap().synced, None);
    assert!(!p.synced.as_ref().unwrap().exists());

    fx.sup.stop(&key, Duration::from_secs(5)).unwrap();
    assert!(procs_with(&p.conf).is_empty());
    assert!(files(&fx).is_empty(), "{:?}", files(&fx));
}

/// Pid files naming garbage, group-wide pids, init, the test itself, a process in the root
/// namespace, or a process in the router's namespace that merely names our config: none is
/// "running", none is signalled.
#[test]
fn pid_files_that_name_anything_but_our_daemon_are_never_signalled() {
    let ns = TestNs::new("abuse");
    let fx = Fixture::new();
    let key = fx.key(Service::Radvd);
    let p = fx.paths(&key);
    std::fs::write(&p.conf, radvd_conf("2001:db8:1::/64")).unwrap();
    let mut sleeper = Bystander(Command::new("sleep").arg("60").spawn().unwrap());
    let conf = p.conf.to_str().unwrap().to_owned();
    let mut lookalike = Bystander(
        ns.inside(|| {
            Command::new("python3")
                .args(["-c", "import time; time.sleep(60)", &conf])
                .spawn()
        })
        .unwrap(),
    );
    let contents = [
        "garbage".to_owned(),
        "-1".to_owned(),
        "0".to_owned(),
        "1".to_owned(),
        "\n".to_owned(),
        std::process::id().to_string(),
        sleeper.0.id().to_string(),
        lookalike.0.id().to_string(),
    ];
    for c in &contents {
        std::fs::write(&p.pid, c).unwrap();
        let seen = fx.sup.observe(&key, ns.netns_name()).unwrap();
        assert_eq!((seen.pid, seen.running), (None, false), "pid file {c:?}");
        fx.sup.stop(&key, Duration::from_secs(1)).unwrap();
        assert!(!p.pid.exists());
        assert!(sleeper.alive(), "pid file {c:?} signalled the sleeper");
        assert!(lookalike.alive(), "pid file {c:?} signalled the look-alike");
        std::fs::write(&p.conf, "x").unwrap();
    }
}

#[test]
fn planted_links_and_fifos_are_refused_and_never_followed() {
    let ns = TestNs::new("plant");
    let fx = Fixture::new();
    let n = ns.netns_name();
    let victim = fx.tmp.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    let conf = radvd_conf("2001:db8:1::/64");

    for which in ["conf", "pid", "log"] {
        let key = fx.key(Service::Radvd);
        let p = fx.paths(&key);
        let at: PathBuf = match which {
            "conf" => p.conf.clone(),
            "pid" => p.pid.clone(),
            _ => p.log.clone(),
        };
        std::os::unix::fs::symlink(&victim, &at).unwrap();
        let e = fx.sup.start(&key, n, conf.as_bytes()).unwrap_err();
        assert!(matches!(e, Error::Unsafe { .. }), "{which}: {e}");
        if which != "log" {
            let e = fx.sup.observe(&key, n).unwrap_err();
            assert!(matches!(e, Error::Unsafe { .. }), "{which}: {e}");
        }
        fx.sup.stop(&key, Duration::from_secs(1)).unwrap();
        assert!(
            std::fs::symlink_metadata(&at).is_err(),
            "stop removes the link"
        );
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    }

    // A FIFO at the pid path: refused at once, not waited on.
    let key = fx.key(Service::Radvd);
    let p = fx.paths(&key);
    nix::unistd::mkfifo(&p.pid, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let t = Instant::now();
    assert!(matches!(fx.sup.observe(&key, n), Err(Error::Unsafe { .. })));
    assert!(matches!(
        fx.sup.start(&key, n, conf.as_bytes()),
        Err(Error::Unsafe { .. })
    ));
    fx.sup.stop(&key, Duration::from_secs(1)).unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(!p.pid.exists());
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
}

#[test]
fn the_daemons_directory_is_0700_and_a_link_or_a_wide_mode_is_refused() {
    require_kernel();
    let tmp = TempDir::new("supdir");
    let dir = tmp.path().join("daemons");
    let sup = Supervisor::new(&dir).unwrap();
    assert_eq!(std::fs::metadata(sup.dir()).unwrap().mode() & 0o777, 0o700);
    assert!(
        Supervisor::new(&dir).is_ok(),
        "an existing one of ours is fine"
    );
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&dir, &link).unwrap();
    assert!(matches!(Supervisor::new(&link), Err(Error::Unsafe { .. })));
    let wide = tmp.path().join("wide");
    std::fs::create_dir(&wide).unwrap();
    std::fs::set_permissions(&wide, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    assert!(matches!(Supervisor::new(&wide), Err(Error::Unsafe { .. })));
}

/// A daemon whose namespace was deleted under it is not running (a new namespace of the
/// same name needs a new daemon), and stop, which needs no namespace, ends it.
#[test]
fn a_daemon_in_a_deleted_namespace_is_not_running_and_stop_ends_it() {
    let (r, _host) = ra_pair();
    let fx = Fixture::new();
    let key = fx.key(Service::Radvd);
    let n = r.netns_name().clone();
    let pid = fx
        .sup
        .start(&key, &n, radvd_conf("2001:db8:1::/64").as_bytes())
        .unwrap();
    l3agent_netns::delete(&n).unwrap();
    let seen = fx.sup.observe(&key, &n).unwrap();
    assert!(!seen.running);
    assert_eq!(seen.pid, Some(pid), "it is still alive somewhere");
    fx.sup.stop(&key, Duration::from_secs(5)).unwrap();
    assert!(procs_with(&fx.paths(&key).conf).is_empty());
}

/// A daemon of the key running in another namespace is not "running" in this one, and a
/// start here replaces it instead of leaving two.
#[test]
fn a_daemon_in_another_namespace_is_not_running_here_and_start_replaces_it() {
    let (a, _ha) = ra_pair();
    let (b, _hb) = ra_pair();
    let fx = Fixture::new();
    let key = fx.key(Service::Radvd);
    let conf = radvd_conf("2001:db8:1::/64");
    let old = fx.sup.start(&key, a.netns_name(), conf.as_bytes()).unwrap();
    let seen = fx.sup.observe(&key, b.netns_name()).unwrap();
    assert_eq!((seen.pid, seen.running), (Some(old), false));
    let new = fx.sup.start(&key, b.netns_name(), conf.as_bytes()).unwrap();
    assert_ne!(new, old);
    assert!(fx.sup.observe(&key, b.netns_name()).unwrap().running);
    assert!(!fx.sup.observe(&key, a.netns_name()).unwrap().running);
    assert!(!procs_with(&fx.paths(&key).conf).contains(&old));
}

/// After l3agent crashed (nothing in memory), `list` finds every daemon from its files and
/// `stop` cleans each up: the daemons of routers deleted meanwhile do not run on forever.
#[test]
fn list_after_a_crash_finds_every_daemon_and_stop_cleans_them_up() {
    let (r, _host) = ra_pair();
    let fx = Fixture::new();
    let radvd = fx.key(Service::Radvd);
    let haproxy = fx.key(Service::Haproxy);
    let n = r.netns_name();
    fx.sup
        .start(&radvd, n, radvd_conf("2001:db8:1::/64").as_bytes())
        .unwrap();
    fx.sup
        .start(
            &haproxy,
            n,
            haproxy_conf(&fx.paths(&haproxy).pid, "m").as_bytes(),
        )
        .unwrap();

    let restarted = Supervisor::new(fx.sup.dir()).unwrap();
    let mut want = vec![radvd.clone(), haproxy.clone()];
    want.sort();
    assert_eq!(restarted.list().unwrap(), want);
    for k in restarted.list().unwrap() {
        restarted.stop(&k, Duration::from_secs(5)).unwrap();
    }
    assert_eq!(restarted.list().unwrap(), Vec::<Key>::new());
    assert!(files(&fx).is_empty(), "{:?}", files(&fx));
    assert!(procs_with(&fx.paths(&radvd).conf).is_empty());
    assert!(procs_with(&fx.paths(&haproxy).conf).is_empty());
}
