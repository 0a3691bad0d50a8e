//! The namespace handle against the real kernel. Needs root; fails (never skips) without it.

use l3agent_netns::{
    create, delete, exists, in_netns, list, path_of, Netns, NetnsError, NetnsTarget,
};
use l3agent_types::NetnsName;

fn name(tag: &str) -> NetnsName {
    assert!(
        nix::unistd::geteuid().is_root(),
        "namespace tests need root: run the suite as root (./test.sh does everything)"
    );
    NetnsName::new("ns", &format!("l3n-{}-{tag}", std::process::id())).unwrap()
}

/// Deletes the namespace, also on panic.
struct Guard(NetnsName);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = delete(&self.0);
    }
}

#[test]
fn identity_names_and_work_inside() {
    let n = name("ident");
    let _g = Guard(n.clone());
    assert!(!exists(&n));
    let e = Netns::open(&n).unwrap_err();
    assert!(
        matches!(e, NetnsError::NoNamespace(_)) && e.to_string().contains(n.as_str()),
        "{e}"
    );

    assert!(create(&n).unwrap());
    assert!(!create(&n).unwrap(), "a second create is a no-op");
    assert!(exists(&n) && list().unwrap().contains(&n));

    let a = Netns::open(&n).unwrap();
    let b = Netns::open_target(&NetnsTarget::Named(n.clone())).unwrap();
    assert_eq!(a.id(), b.id(), "two opens of one namespace");
    assert_eq!((a.name(), a.label()), (Some(&n), n.as_str()));
    assert!(a.still_named());

    let cur = Netns::current().unwrap();
    assert_eq!(
        cur.id(),
        Netns::open_target(&NetnsTarget::Current).unwrap().id()
    );
    assert_ne!(cur.id(), a.id());
    assert_eq!((cur.name(), cur.label()), (None, "current"));
    assert!(cur.still_named());
    assert_eq!(
        std::fs::read_link("/proc/thread-self/ns/net").unwrap(),
        std::path::PathBuf::from(format!("net:[{}]", cur.id().ino))
    );

    // Work inside runs in the namespace; the caller's thread stays where it was.
    let inside = a
        .run::<_, NetnsError>(|| Netns::current().unwrap().id())
        .unwrap();
    assert_eq!(inside, a.id());
    assert_eq!(Netns::current().unwrap().id(), cur.id());

    // Deleted: the name is gone, the handle still works (it keeps the namespace alive).
    assert!(delete(&n).unwrap());
    assert!(!delete(&n).unwrap());
    assert!(!exists(&n) && !a.still_named());
    assert_eq!(
        in_netns(a.fd(), || Netns::current().unwrap().id()).unwrap(),
        a.id()
    );

    // The name given to another namespace: the handle is no longer named by it.
    assert!(create(&n).unwrap());
    assert!(!a.still_named());
    assert_ne!(Netns::open(&n).unwrap().id(), a.id());
}

#[test]
fn a_leftover_file_is_not_a_namespace() {
    let n = name("plain");
    let _g = Guard(n.clone());
    std::fs::create_dir_all(l3agent_netns::NETNS_DIR).unwrap();
    std::fs::write(path_of(&n), "").unwrap();
    assert!(!exists(&n));
    assert!(!list().unwrap().contains(&n));
    // `create` over it makes a namespace; `delete` removes both.
    assert!(create(&n).unwrap());
    assert!(exists(&n));
    assert!(delete(&n).unwrap());
    assert!(!path_of(&n).exists());
}

#[test]
fn failures_inside_are_errors() {
    let cur = Netns::current().unwrap();
    let e = cur
        .run::<(), NetnsError>(|| panic!("deliberate panic inside a namespace"))
        .unwrap_err();
    assert!(matches!(e, NetnsError::Panicked(_)), "{e}");
    // Not a namespace: entering fails, with what was being done.
    let f = std::fs::File::open("/proc/self/status").unwrap();
    let e = in_netns(std::os::fd::AsFd::as_fd(&f), || ()).unwrap_err();
    assert!(
        matches!(e, NetnsError::Io { .. }) && e.to_string().contains("entering"),
        "{e}"
    );
}
