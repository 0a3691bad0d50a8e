//! Kernel test (root): what [`RealKernel`]s open per namespace, kept across applies by
//! [`Opened`] (the agent's), is handed from one kernel to the next, let go when l3agent
//! deletes the namespace, and never used for a namespace whose name now denotes another one
//! (deleted and made anew by someone else), nor kept for one that is gone.

use l3agent_router::kernel::{Kernel, Opened, RealKernel};
use l3agent_rtnl::announce::Announcer;
use l3agent_rtnl::sysctl::Sysctl;
use l3agent_testkit::TestNs;

fn link_names(k: &mut RealKernel, ns: &TestNs) -> Vec<String> {
    let mut names: Vec<String> = k
        .netlink(Some(ns.netns_name()))
        .unwrap()
        .links()
        .unwrap()
        .into_iter()
        .map(|l| l.name)
        .collect();
    names.sort();
    names
}

#[test]
fn what_is_open_per_namespace_is_kept_across_kernels_and_let_go_when_the_namespace_is_not_that_one()
{
    let announcer = Announcer::start(Default::default());
    let ns = TestNs::new("opened");
    ns.ok(&[
        "ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1",
    ]);
    let opened = Opened::new();
    let forwarding = Sysctl::IpForward;

    // A kernel opens the namespace (netlink and a /proc/sys directory) and gives it back.
    let mut k = RealKernel::keeping(announcer.clone(), opened.clone()).unwrap();
    assert_eq!(link_names(&mut k, &ns), ["d0", "d1", "lo"]);
    assert_eq!(
        k.read_sysctls(ns.netns_name(), std::slice::from_ref(&forwarding))
            .unwrap(),
        [Some(0)]
    );
    assert!(opened.is_empty(), "held by the kernel using it");
    drop(k);
    assert_eq!(opened.len(), 1);

    // The next kernel takes it (and sees the same namespace).
    let mut k = RealKernel::keeping(announcer.clone(), opened.clone()).unwrap();
    assert_eq!(link_names(&mut k, &ns), ["d0", "d1", "lo"]);
    assert!(opened.is_empty());
    drop(k);
    assert_eq!(opened.len(), 1);

    // Someone else deletes the namespace and makes a new one of the same name: what was kept
    // is of the old one, and is not used.
    l3agent_netns::delete(ns.netns_name()).unwrap();
    l3agent_netns::create(ns.netns_name()).unwrap();
    ns.ok(&["ip", "link", "set", "lo", "up"]);
    let mut k = RealKernel::keeping(announcer.clone(), opened.clone()).unwrap();
    assert_eq!(link_names(&mut k, &ns), ["lo"], "the new namespace's links");
    drop(k);
    assert_eq!(opened.len(), 1);

    // Deleted and not made again: a prune lets it go (a kept handle would keep the namespace
    // and its devices alive).
    l3agent_netns::delete(ns.netns_name()).unwrap();
    assert_eq!(opened.prune(), 1);
    assert!(opened.is_empty());

    // l3agent deleting a namespace forgets what was kept of it.
    l3agent_netns::create(ns.netns_name()).unwrap();
    let mut k = RealKernel::keeping(announcer.clone(), opened.clone()).unwrap();
    assert_eq!(link_names(&mut k, &ns), ["lo"]);
    drop(k);
    assert_eq!(opened.len(), 1);
    let mut k = RealKernel::keeping(announcer, opened.clone()).unwrap();
    assert!(k.delete_namespace(ns.netns_name()).unwrap());
    drop(k);
    assert!(opened.is_empty());
}
