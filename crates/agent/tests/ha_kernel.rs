//! The HA watch over the real kernel (root; fails, never skips, without it): an address
//! added to or removed from a watched namespace (what keepalived does on a VRRP transition)
//! reports its router within 2 s; a quiet namespace reports nothing; a namespace that
//! appears, or is replaced, later is watched once it is there.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use l3agent_agent::ha::{HaEvent, HaRouters, HaWatch, KernelMonitors, POLL_INTERVAL};
use l3agent_testkit::{require_kernel, sh, unique, TestNs};
use l3agent_types::{NetnsName, RouterId};

const A: &str = "0a0a0a0a-0000-4000-8000-000000000001";
const B: &str = "0b0b0b0b-0000-4000-8000-000000000002";
/// The bound the watch promises for an event to be reported.
const REPORTED: Duration = Duration::from_secs(2);
/// How long the absence of a report is watched for: several rounds.
const QUIET: Duration = Duration::from_millis(800);

fn id(s: &str) -> RouterId {
    RouterId::new("id", s).unwrap()
}

type Heard = Receiver<(RouterId, HaEvent)>;

fn watch(routers: &HaRouters) -> (HaWatch, Heard) {
    let (tx, rx) = mpsc::channel();
    let w = HaWatch::start(
        Arc::clone(routers),
        Arc::new(KernelMonitors),
        move |id, ev| {
            let _ = tx.send((id.clone(), ev));
        },
    )
    .unwrap();
    (w, rx)
}

fn quiet(rx: &Heard) {
    assert_eq!(rx.recv_timeout(QUIET), Err(RecvTimeoutError::Timeout));
}

#[test]
fn an_address_added_or_removed_in_a_watched_namespace_reports_its_router_within_two_seconds() {
    let a = TestNs::new("ha-a");
    let b = TestNs::new("ha-b");
    let routers: HaRouters = Arc::new(Mutex::new(BTreeMap::from([
        (id(A), a.netns_name().clone()),
        (id(B), b.netns_name().clone()),
    ])));
    let (w, rx) = watch(&routers);
    // Both subscribed, then nothing: no event, no report.
    let subscribed: BTreeSet<_> = (0..2).map(|_| rx.recv_timeout(REPORTED).unwrap()).collect();
    assert_eq!(
        subscribed,
        BTreeSet::from([(id(A), HaEvent::Watching), (id(B), HaEvent::Watching)])
    );
    quiet(&rx);

    // keepalived becoming master adds its VIP: A is reported, B is not.
    a.ok(&["ip", "addr", "add", "169.254.0.7/24", "dev", "lo"]);
    assert_eq!(rx.recv_timeout(REPORTED), Ok((id(A), HaEvent::Changed)));
    quiet(&rx);
    // Going backup removes it; IPv6 addresses count too.
    a.ok(&["ip", "addr", "del", "169.254.0.7/24", "dev", "lo"]);
    assert_eq!(rx.recv_timeout(REPORTED), Ok((id(A), HaEvent::Changed)));
    b.ok(&[
        "ip",
        "-6",
        "addr",
        "add",
        "2001:db8::7/64",
        "dev",
        "lo",
        "nodad",
    ]);
    assert_eq!(rx.recv_timeout(REPORTED), Ok((id(B), HaEvent::Changed)));
    quiet(&rx);

    // A router no longer listed is no longer watched.
    routers.lock().unwrap().remove(&id(A));
    std::thread::sleep(POLL_INTERVAL * 3);
    a.ok(&["ip", "addr", "add", "169.254.0.7/24", "dev", "lo"]);
    quiet(&rx);
    assert!(w.stop(Duration::from_secs(2)), "the watch did not stop");
}

/// Deletes the namespace on drop.
struct Made(NetnsName);

impl Drop for Made {
    fn drop(&mut self) {
        let _ = l3agent_rtnl::netns::delete(&self.0);
    }
}

#[test]
fn a_namespace_that_appears_or_is_replaced_later_is_watched_once_it_is_there() {
    require_kernel();
    let name = NetnsName::new(
        "ns",
        &format!("l3t-{}-{}-ha-late", std::process::id(), unique()),
    )
    .unwrap();
    let _guard = Made(name.clone());
    let routers: HaRouters = Arc::new(Mutex::new(BTreeMap::from([(id(A), name.clone())])));
    let (w, rx) = watch(&routers);
    // Not there yet: nothing to report, and the watch keeps trying.
    quiet(&rx);
    l3agent_rtnl::netns::create(&name).unwrap();
    assert_eq!(rx.recv_timeout(REPORTED), Ok((id(A), HaEvent::Watching)));
    let ip = |args: &[&str]| {
        let mut argv = vec!["ip", "-n", name.as_str()];
        argv.extend_from_slice(args);
        let r = sh(&argv);
        assert_eq!(r.code, Some(0), "{argv:?}: {}", r.stderr);
    };
    ip(&["addr", "add", "169.254.0.7/24", "dev", "lo"]);
    assert_eq!(rx.recv_timeout(REPORTED), Ok((id(A), HaEvent::Changed)));
    quiet(&rx);

    // Deleted and made again under the same name (a router rebuilt): the watch follows the
    // new namespace, not the old one its socket kept alive.
    l3agent_rtnl::netns::delete(&name).unwrap();
    l3agent_rtnl::netns::create(&name).unwrap();
    assert_eq!(
        rx.recv_timeout(REPORTED + Duration::from_secs(1)),
        Ok((id(A), HaEvent::Watching))
    );
    ip(&["addr", "add", "169.254.0.7/24", "dev", "lo"]);
    assert_eq!(rx.recv_timeout(REPORTED), Ok((id(A), HaEvent::Changed)));
    assert!(w.stop(Duration::from_secs(2)), "the watch did not stop");
}
