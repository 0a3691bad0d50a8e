//! Pure tests: layout, names, pid parsing, argv. The daemons themselves are tested against
//! the real kernel in `tests/daemons.rs`.

use super::*;

fn key(router: &str, service: Service) -> Key {
    Key::new(RouterId::new("r", router).unwrap(), service)
}

#[test]
fn paths_are_a_pure_function_of_dir_and_key() {
    let dir = Path::new("/var/lib/l3agent/daemons");
    let k = key("87c7c2ae-d0ba-4691-820c-8053abf50b8d", Service::Keepalived);
    let p = Supervisor::paths(dir, &k);
    assert_eq!(
        p.conf,
        dir.join("87c7c2ae-d0ba-4691-820c-8053abf50b8d.keepalived.conf")
    );
    assert_eq!(
        p.pid,
        dir.join("87c7c2ae-d0ba-4691-820c-8053abf50b8d.keepalived.pid")
    );
    assert_eq!(
        p.vrrp_pid,
        Some(dir.join("87c7c2ae-d0ba-4691-820c-8053abf50b8d.keepalived.vrrp.pid"))
    );
    assert_eq!(p.lock, None);
    assert_eq!(Supervisor::paths(dir, &k), p);
    let c = Supervisor::paths(dir, &key("r1", Service::Conntrackd));
    assert_eq!(c.lock, Some(dir.join("r1.conntrackd.lock")));
    assert_eq!(c.socket, Some(dir.join("r1.conntrackd.ctl")));
    assert_eq!(c.vrrp_pid, None);
}

#[test]
fn every_file_name_reads_back_as_its_key() {
    let dir = Path::new("/d");
    for service in Service::ALL {
        let k = key("87c7c2ae-d0ba-4691-820c-8053abf50b8d", service);
        let p = Supervisor::paths(dir, &k);
        for f in p.all() {
            let name = f.file_name().unwrap().to_str().unwrap();
            assert_eq!(Key::from_file_name(name), Some(k.clone()), "{name}");
            // A temporary being written belongs to the key too.
            assert_eq!(
                Key::from_file_name(&format!(".{name}.tmp-1-2")),
                Some(k.clone())
            );
        }
    }
    for junk in [
        "",
        ".",
        "x",
        "r1",
        "r1.",
        "r1.nginx.conf",
        "-r.radvd.pid",
        "r 1.radvd",
    ] {
        assert_eq!(Key::from_file_name(junk), None, "{junk}");
    }
    // A router whose id extends another's is a different key.
    assert_eq!(
        Key::from_file_name("r1-x.radvd.conf"),
        Some(key("r1-x", Service::Radvd))
    );
}

#[test]
fn keys_and_services_display_and_parse() {
    let k = key("r1", Service::Haproxy);
    assert_eq!(k.to_string(), "r1.haproxy");
    assert_eq!("r1.haproxy".parse::<Key>().unwrap(), k);
    for bad in [
        "r1",
        "r1.",
        ".haproxy",
        "r1.haproxy.conf",
        "r/1.haproxy",
        "r1.sshd",
    ] {
        assert!(bad.parse::<Key>().is_err(), "{bad}");
    }
    for s in Service::ALL {
        assert_eq!(s.name().parse::<Service>().unwrap(), s);
        assert_eq!(s.to_string(), s.name());
    }
    assert!("Radvd".parse::<Service>().is_err());
}

#[test]
fn pid_files_that_do_not_hold_a_usable_pid_read_as_none() {
    assert_eq!(parse_pid(b"1234\n"), Some(1234));
    assert_eq!(parse_pid(b" 42 "), Some(42));
    assert_eq!(parse_pid(b"2147483647"), Some(2_147_483_647));
    for bad in [
        &b""[..],
        b"\n",
        b"0",
        b"1",
        b"-1",
        b"-1234",
        b"+5",
        b"12 34",
        b"0x10",
        b"1234abc",
        b"2147483648",
        b"99999999999",
        b"\xff\xfe",
        b"12\x0034",
    ] {
        assert_eq!(parse_pid(bad), None, "{:?}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn argv_per_service() {
    let dir = Path::new("/s/daemons");
    let args = |s| Service::args(s, &Supervisor::paths(dir, &key("r1", s))).join(" ");
    assert_eq!(
        args(Service::Radvd),
        "-C /s/daemons/r1.radvd.conf -p /s/daemons/r1.radvd.pid -m syslog"
    );
    assert_eq!(args(Service::Haproxy), "-f /s/daemons/r1.haproxy.conf");
    assert_eq!(
        args(Service::Keepalived),
        "-P -B -f /s/daemons/r1.keepalived.conf -p /s/daemons/r1.keepalived.pid -r /s/daemons/r1.keepalived.vrrp.pid"
    );
    assert_eq!(
        args(Service::Conntrackd),
        "-d -C /s/daemons/r1.conntrackd.conf"
    );
}

#[test]
fn a_process_is_ours_only_with_our_program_and_our_config_path() {
    let conf = Path::new("/d/r1.radvd.conf");
    let argv = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert!(is_ours(
        Service::Radvd,
        conf,
        &argv(&["/usr/sbin/radvd", "-C", "/d/r1.radvd.conf", "-p", "x"])
    ));
    assert!(!is_ours(
        Service::Keepalived,
        conf,
        &argv(&["/usr/sbin/radvd", "-C", "/d/r1.radvd.conf"])
    ));
    assert!(!is_ours(
        Service::Radvd,
        conf,
        &argv(&["/usr/bin/vi", "/d/r1.radvd.conf"])
    ));
    // The config of another router whose path starts with ours.
    assert!(!is_ours(
        Service::Radvd,
        conf,
        &argv(&["/usr/sbin/radvd", "-C", "/d/r1.radvd.conf.new"])
    ));
    assert!(!is_ours(Service::Radvd, conf, &[]));
}

#[test]
fn a_config_digest_is_hex_and_never_shows_the_config() {
    let d = ConfigDigest::of(b"auth_pass secret");
    assert_eq!(d.to_string().len(), 64);
    assert_eq!(d, ConfigDigest::of(b"auth_pass secret"));
    assert_ne!(d, ConfigDigest::of(b"auth_pass other"));
    assert!(!format!("{d:?}").contains("secret"));
    assert_eq!(ConfigDigest::parse(format!("{d}\n").as_bytes()), Some(d));
    for bad in [
        &b""[..],
        b"zz",
        &[b'0'; 63],
        &[b'g'; 64],
        "é".repeat(32).as_bytes(),
    ] {
        assert_eq!(ConfigDigest::parse(bad), None);
    }
    assert_eq!(
        ConfigDigest::of(b"").to_string(),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}
