//! How long one short process run takes through [`l3agent_process::run`] (input written,
//! output read, reaped, bounded in time) against std's `Command::output`-like spawn and
//! `wait_with_output` of the same program in the same process, alternately, 300 times each,
//! with the process holding no other descriptor, then 6,000 netlink sockets (the agent's
//! count at 1,000 routers, which std's spawn copies into each child and its exec closes); run
//! as root, also into a network namespace (the child enters it itself; std's is spawned from a
//! thread that entered it): `cargo run --release -p l3agent-process --example spawn_time`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn quantiles(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[v.len() * 9 / 10])
}

fn main() {
    let mut held = Vec::new();
    for extra in [0, 6000] {
        while held.len() < extra {
            held.push(
                nix::sys::socket::socket(
                    nix::sys::socket::AddressFamily::Netlink,
                    nix::sys::socket::SockType::Raw,
                    nix::sys::socket::SockFlag::SOCK_CLOEXEC,
                    nix::sys::socket::SockProtocol::NetlinkRoute,
                )
                .expect("a netlink socket (raise the open-files limit: ulimit -n 8192)"),
            );
        }
        compare(extra, None);
    }
    if nix::unistd::geteuid().is_root() {
        let name =
            l3agent_netns::NetnsName::new("ns", &format!("l3p-spawn-{}", std::process::id()))
                .expect("a valid name");
        l3agent_netns::create(&name).expect("a namespace");
        let ns = l3agent_netns::Netns::open(&name).expect("open");
        compare(held.len(), Some(&ns));
        drop(ns);
        let _ = l3agent_netns::delete(&name);
    }
}

fn compare(extra: usize, netns: Option<&l3agent_netns::Netns>) {
    let program = l3agent_process::find_program("true").expect("true");
    let (mut ours, mut floor) = (Vec::new(), Vec::new());
    for _ in 0..300 {
        let t = Instant::now();
        l3agent_process::run(
            &program,
            &[],
            Some(b"x\n"),
            netns.map(l3agent_netns::Netns::fd),
            Duration::from_secs(5),
        )
        .expect("run");
        ours.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        #[allow(clippy::disallowed_methods)] // the floor: std alone, nothing of ours
        let spawn = || {
            Command::new(&program)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
        };
        match netns {
            None => spawn(),
            Some(ns) => l3agent_netns::in_netns(ns.fd(), spawn).expect("entered"),
        }
        .and_then(|c| c.wait_with_output())
        .expect("spawn");
        floor.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let ((o50, o90), (f50, f90)) = (quantiles(ours), quantiles(floor));
    let place = if netns.is_some() {
        ", into a network namespace"
    } else {
        ""
    };
    println!(
        "{extra} other descriptors{place}: l3agent_process::run: p50 {o50:.3} ms, p90 {o90:.3} ms; std spawn + wait_with_output: \
         p50 {f50:.3} ms, p90 {f90:.3} ms; ratio p50 {:.2}x",
        o50 / f50
    );
}
