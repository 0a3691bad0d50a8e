//! Unit tests; they run unprivileged or as root, in directories under `std::env::temp_dir()`.
//! Tests that need another uid run only as root; tests that need permissions to bite run only
//! when not root (root ignores them). ENOSPC/EROFS are covered through the pure
//! [`StorageProblem::of`] classification rather than by filling or remounting a file system.

use super::*;
use std::os::unix::fs::{symlink, DirBuilderExt};
use std::sync::atomic::AtomicUsize;

/// A scratch directory (0700) removed on drop; `state()` is the state directory inside it.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!(
            "l3agent-state-test-{}-{n}-{name}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&p);
        fs::DirBuilder::new().mode(0o700).create(&p).unwrap();
        fs::set_permissions(&p, Permissions::from_mode(0o700)).unwrap();
        Scratch(p)
    }
    fn state(&self) -> PathBuf {
        self.0.join("state")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn quick() -> OpenOptions {
    OpenOptions {
        wait: Duration::from_millis(100),
        stop: None,
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn names_in(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn a_record_written_is_read_back_and_files_are_private() {
    let s = Scratch::new("roundtrip");
    let nested = s.0.join("a/b/state");
    let d = StateDir::open(&nested, &OpenOptions::default()).unwrap();
    assert_eq!(d.path(), nested);
    d.write("routers.json", b"hello").unwrap();
    d.write("applied/r1.json", b"r1").unwrap();
    assert_eq!(d.read("routers.json").unwrap().unwrap(), b"hello");
    assert_eq!(d.read("applied/r1.json").unwrap().unwrap(), b"r1");
    assert_eq!(d.read("missing").unwrap(), None);
    assert_eq!(d.read("nosub/missing").unwrap(), None);
    // Directories we created are 0700, files 0600.
    for p in [
        s.0.join("a"),
        s.0.join("a/b"),
        nested.clone(),
        nested.join("applied"),
    ] {
        assert_eq!(mode(&p), 0o700, "{}", p.display());
    }
    for p in [
        nested.join("lock"),
        nested.join("routers.json"),
        nested.join("applied/r1.json"),
    ] {
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }
    assert!(d.remove("routers.json").unwrap());
    assert!(!d.remove("routers.json").unwrap());
    assert!(!d.remove("nosub/x").unwrap());
    assert_eq!(d.read("routers.json").unwrap(), None);
}

#[test]
fn json_records_round_trip() {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Rec {
        id: String,
        n: u32,
    }
    let s = Scratch::new("json");
    let d = StateDir::open(&s.state(), &quick()).unwrap();
    let r = Rec {
        id: "r1".into(),
        n: 7,
    };
    d.write_json("sub/rec.json", &r).unwrap();
    assert_eq!(d.read_json::<Rec>("sub/rec.json").unwrap(), Some(r));
    assert_eq!(d.read_json::<Rec>("sub/none.json").unwrap(), None);
}

#[test]
fn invalid_json_is_corrupt_and_names_the_record() {
    let s = Scratch::new("corrupt");
    let d = StateDir::open(&s.state(), &quick()).unwrap();
    d.write("x.json", b"{not json").unwrap();
    match d.read_json::<serde_json::Value>("x.json") {
        Err(StateError::Corrupt { path, reason }) => {
            assert_eq!(path, s.state().join("x.json"));
            assert!(reason.contains("JSON"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_overwrite_is_atomic_for_a_concurrent_reader_and_leaves_no_temporary() {
    let s = Scratch::new("atomic");
    let d = StateDir::open(&s.state(), &quick()).unwrap();
    let small = b"small".to_vec();
    let big = vec![b'x'; 256 * 1024];
    d.write("rec", &small).unwrap();
    let view = StateDir::inspect(&s.state()).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let done = done.clone();
        let (small, big) = (small.clone(), big.clone());
        std::thread::spawn(move || {
            let mut reads = 0;
            while !done.load(Ordering::SeqCst) {
                let got = view.read("rec").unwrap().unwrap();
                assert!(
                    got == small || got == big,
                    "a partial record of {} bytes",
                    got.len()
                );
                reads += 1;
            }
            reads
        })
    };
    for i in 0..100 {
        d.write("rec", if i % 2 == 0 { &big } else { &small })
            .unwrap();
    }
    done.store(true, Ordering::SeqCst);
    assert!(reader.join().unwrap() > 0);
    assert_eq!(d.read("rec").unwrap().unwrap(), small);
    assert_eq!(names_in(&s.state()), ["lock", "rec"]);
}

#[test]
fn a_failed_write_leaves_no_temporary_and_names_the_record() {
    let s = Scratch::new("failed-write");
    let d = StateDir::open(&s.state(), &quick()).unwrap();
    // A non-empty directory where the record should go: the rename fails.
    fs::create_dir_all(s.state().join("rec/inner")).unwrap();
    match d.write("rec", b"data") {
        Err(StateError::Io { what, path, .. }) => {
            assert_eq!(what, "writing");
            assert_eq!(path, s.state().join("rec"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(names_in(&s.state()), ["lock", "rec"]);
}

#[test]
fn a_symlink_planted_at_the_next_temporary_name_is_not_followed() {
    let s = Scratch::new("tmp-symlink");
    let victim = s.0.join("victim");
    fs::write(&victim, b"keep").unwrap();
    let d = StateDir::open(&s.state(), &quick()).unwrap();
    // This StateDir's first temporary for "rec" is `.tmp-rec-<pid>-0`.
    let planted = s.state().join(format!(".tmp-rec-{}-0", std::process::id()));
    symlink(&victim, &planted).unwrap();
    d.write("rec", b"new").unwrap();
    assert_eq!(fs::read(&victim).unwrap(), b"keep");
    assert!(fs::symlink_metadata(&planted)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(d.read("rec").unwrap().unwrap(), b"new");
    drop(d);
    // The next open removes the planted name like any leftover temporary.
    let _d = StateDir::open(&s.state(), &quick()).unwrap();
    assert!(fs::symlink_metadata(&planted).is_err());
    assert_eq!(fs::read(&victim).unwrap(), b"keep");
}

#[test]
fn a_symlink_planted_at_the_lock_path_is_not_followed() {
    let s = Scratch::new("lock-symlink");
    let victim = s.0.join("victim");
    fs::write(&victim, b"keep").unwrap();
    fs::DirBuilder::new().mode(0o700).create(s.state()).unwrap();
    symlink(&victim, s.state().join("lock")).unwrap();
    match StateDir::open(&s.state(), &quick()) {
        Err(StateError::Unsafe { path, reason }) => {
            assert_eq!(path, s.state().join("lock"));
            assert!(reason.contains("symbolic link"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fs::read(&victim).unwrap(), b"keep");
    assert_eq!(mode(&victim) & 0o7000, 0);
}

#[test]
fn a_symlinked_record_is_refused_when_read() {
    let s = Scratch::new("record-symlink");
    let victim = s.0.join("victim");
    fs::write(&victim, b"secret").unwrap();
    let d = StateDir::open(&s.state(), &quick()).unwrap();
    symlink(&victim, s.state().join("rec")).unwrap();
    assert!(matches!(d.read("rec"), Err(StateError::Unsafe { .. })));
    symlink(s.0.clone(), s.state().join("sub")).unwrap();
    assert!(matches!(
        d.read("sub/victim"),
        Err(StateError::Unsafe { .. })
    ));
    assert!(matches!(
        d.write("sub/x", b"x"),
        Err(StateError::Unsafe { .. })
    ));
    assert!(fs::symlink_metadata(s.0.join("x")).is_err());
}

#[test]
fn leftover_temporaries_are_removed_by_open_but_not_by_inspect() {
    let s = Scratch::new("leftovers");
    let d = StateDir::open(&s.state(), &quick()).unwrap();
    d.write("keep", b"1").unwrap();
    d.write("sub/keep", b"2").unwrap();
    drop(d);
    let planted = [
        s.state().join(".tmp-keep-999999-3"),
        s.state().join("sub/.tmp-keep-1-0"),
        // The writer l3agent had before this crate.
        s.state().join(".routers.json.tmp.4242"),
    ];
    for p in &planted {
        fs::write(p, b"partial").unwrap();
    }
    let v = StateDir::inspect(&s.state()).unwrap();
    assert!(planted.iter().all(|p| p.exists()));
    assert_eq!(v.list("").unwrap(), ["keep"]);
    assert_eq!(v.list("sub").unwrap(), ["keep"]);
    drop(v);
    // Opened again within a minute by the same process: the directory itself is cleaned,
    // its subdirectories are left for later.
    let d = StateDir::open(&s.state(), &quick()).unwrap();
    assert!(!planted[0].exists() && !planted[2].exists());
    assert!(planted[1].exists());
    drop(d);
    crate::clean_subdirectories_next_time(&s.state());
    let d = StateDir::open(&s.state(), &quick()).unwrap();
    assert!(planted.iter().all(|p| !p.exists()));
    assert_eq!(names_in(&s.state()), ["keep", "lock", "sub"]);
    assert_eq!(names_in(&s.state().join("sub")), ["keep"]);
    assert_eq!(d.read("sub/keep").unwrap().unwrap(), b"2");
}

#[test]
fn a_group_or_world_writable_state_directory_is_refused_and_left_as_is() {
    for m in [0o777, 0o720, 0o702] {
        let s = Scratch::new("mode");
        fs::DirBuilder::new().mode(0o700).create(s.state()).unwrap();
        fs::set_permissions(s.state(), Permissions::from_mode(m)).unwrap();
        let err = StateDir::open(&s.state(), &quick()).unwrap_err();
        assert!(matches!(err, StateError::Unsafe { .. }), "{err:?}");
        assert!(err.to_string().contains(&format!("{m:04o}")), "{err}");
        assert!(matches!(
            StateDir::inspect(&s.state()),
            Err(StateError::Unsafe { .. })
        ));
        assert_eq!(mode(&s.state()), m, "not silently chmodded");
        assert!(!s.state().join("lock").exists());
    }
}

#[test]
fn a_group_writable_parent_is_refused_unless_root_owned_and_sticky() {
    let s = Scratch::new("parent-mode");
    let parent = s.0.join("p");
    fs::DirBuilder::new().mode(0o700).create(&parent).unwrap();
    fs::set_permissions(&parent, Permissions::from_mode(0o777)).unwrap();
    let err = StateDir::open(&parent.join("state"), &quick()).unwrap_err();
    match &err {
        StateError::Unsafe { path, reason } => {
            assert_eq!(path, &parent);
            assert!(reason.contains("0777"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!parent.join("state").exists(), "nothing created under it");
    // Sticky: fine if root owns it (like /tmp), refused otherwise.
    fs::set_permissions(&parent, Permissions::from_mode(0o1777)).unwrap();
    let r = StateDir::open(&parent.join("state"), &quick());
    if is_root() {
        r.unwrap();
    } else {
        assert!(matches!(r, Err(StateError::Unsafe { .. })), "{r:?}");
    }
}

#[test]
fn a_parent_owned_by_another_user_is_refused() {
    if !is_root() {
        eprintln!("skipped: needs root to give a directory away");
        return;
    }
    let s = Scratch::new("parent-owner");
    let parent = s.0.join("p");
    fs::DirBuilder::new().mode(0o755).create(&parent).unwrap();
    std::os::unix::fs::chown(&parent, Some(4242), None).unwrap();
    match StateDir::open(&parent.join("state"), &quick()) {
        Err(StateError::Unsafe { path, reason }) => {
            assert_eq!(path, parent);
            assert!(reason.contains("4242"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_symlinked_state_directory_is_refused() {
    let s = Scratch::new("dir-symlink");
    let real = s.0.join("real");
    fs::DirBuilder::new().mode(0o700).create(&real).unwrap();
    symlink(&real, s.state()).unwrap();
    for r in [
        StateDir::open(&s.state(), &quick()),
        StateDir::inspect(&s.state()),
    ] {
        match r {
            Err(StateError::Unsafe { path, reason }) => {
                assert_eq!(path, s.state());
                assert!(reason.contains("symbolic link"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(names_in(&real), Vec::<String>::new());
}

#[test]
fn a_parent_symlink_is_followed_only_when_root_owns_it() {
    let s = Scratch::new("parent-symlink");
    let real = s.0.join("real");
    fs::DirBuilder::new().mode(0o700).create(&real).unwrap();
    let link = s.0.join("link");
    symlink(&real, &link).unwrap();
    let r = StateDir::open(&link.join("state"), &quick());
    if is_root() {
        // A root-owned link: followed, and the directories it leads to are checked.
        let d = r.unwrap();
        d.write("rec", b"x").unwrap();
        assert!(real.join("state/rec").exists());
        drop(d);
        std::os::unix::fs::lchown(&link, Some(4242), None).unwrap();
        match StateDir::open(&link.join("state"), &quick()) {
            Err(StateError::Unsafe { path, reason }) => {
                assert_eq!(path, link);
                assert!(reason.contains("4242"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // A root-owned link into a group-writable directory: the target is checked.
        std::os::unix::fs::lchown(&link, Some(0), None).unwrap();
        fs::set_permissions(&real, Permissions::from_mode(0o770)).unwrap();
        match StateDir::open(&link.join("state"), &quick()) {
            Err(StateError::Unsafe { path, .. }) => assert_eq!(path, real),
            other => panic!("{other:?}"),
        }
    } else {
        assert!(matches!(r, Err(StateError::Unsafe { .. })), "{r:?}");
    }
}

#[test]
fn names_that_could_escape_or_hide_are_bad_names() {
    let s = Scratch::new("names");
    let d = StateDir::open(&s.state(), &quick()).unwrap();
    let long = "a".repeat(MAX_NAME_LEN + 1);
    for bad in [
        "../x",
        "/abs",
        "a/b/c",
        ".hidden",
        "x\n",
        "",
        "a/",
        "/",
        "..",
        "a/..",
        "sub/.tmp-x",
        "a b",
        "é",
        "lock",
        "lock/x",
        "a..b",
        &long,
    ] {
        for r in [
            d.read(bad).map(|_| ()),
            d.write(bad, b"x"),
            d.remove(bad).map(|_| ()),
            d.read_json::<u8>(bad).map(|_| ()),
        ] {
            assert!(
                matches!(&r, Err(StateError::BadName { name }) if name == bad),
                "{bad:?}: {r:?}"
            );
        }
    }
    for bad in ["a/b", "..", ".x", "lock"] {
        assert!(
            matches!(d.list(bad), Err(StateError::BadName { .. })),
            "{bad:?}"
        );
    }
    let ok = "a".repeat(MAX_NAME_LEN);
    for good in ["routers.json", "applied/r1.json", "a-b_c.D9", &ok] {
        d.write(good, b"ok").unwrap();
    }
    assert_eq!(names_in(&s.0), ["state"], "nothing outside the directory");
    // The message escapes control characters and truncates huge names.
    let msg = d.read("x\n").unwrap_err().to_string();
    assert!(msg.contains(r#""x\n""#), "{msg}");
    let huge = "b".repeat(100_000);
    assert!(d.read(&huge).unwrap_err().to_string().len() < 400);
}

#[test]
fn list_returns_sorted_records_without_temporaries_the_lock_or_directories() {
    let s = Scratch::new("list");
    let d = StateDir::open(&s.state(), &quick()).unwrap();
    for r in ["b", "a", "c.json", "sub/z", "sub/y"] {
        d.write(r, b"x").unwrap();
    }
    fs::write(s.state().join(".tmp-a-1-1"), b"x").unwrap();
    fs::write(s.state().join("bad name"), b"x").unwrap();
    assert_eq!(d.list("").unwrap(), ["a", "b", "c.json"]);
    assert_eq!(d.list("sub").unwrap(), ["y", "z"]);
    assert_eq!(d.list("missing").unwrap(), Vec::<String>::new());
}

#[test]
fn a_second_open_is_busy_and_names_the_holder() {
    let s = Scratch::new("busy");
    let _first = StateDir::open(&s.state(), &quick()).unwrap();
    let start = Instant::now();
    match StateDir::open(&s.state(), &quick()) {
        Err(e @ StateError::Busy { .. }) => {
            let StateError::Busy { path, holder_pid } = &e else {
                unreachable!()
            };
            assert_eq!(path, &s.state());
            assert_eq!(*holder_pid, Some(std::process::id()));
            assert!(e
                .to_string()
                .contains(&format!("pid {}", std::process::id())));
        }
        other => panic!("{other:?}"),
    }
    assert!(start.elapsed() >= Duration::from_millis(100));
    // inspect does not need the lock, and cannot change anything.
    let v = StateDir::inspect(&s.state()).unwrap();
    assert!(matches!(
        v.write("x", b"x"),
        Err(StateError::NotLocked { .. })
    ));
    assert!(matches!(v.remove("x"), Err(StateError::NotLocked { .. })));
    assert!(matches!(v.clear(), Err(StateError::NotLocked { .. })));
}

#[test]
fn the_lock_is_released_when_the_state_dir_drops() {
    let s = Scratch::new("release");
    drop(StateDir::open(&s.state(), &quick()).unwrap());
    StateDir::open(&s.state(), &quick()).unwrap();
}

#[test]
fn setting_stop_while_waiting_interrupts_promptly() {
    let s = Scratch::new("stop");
    let _first = StateDir::open(&s.state(), &quick()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let setter = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            stop.store(true, Ordering::SeqCst);
            Instant::now()
        })
    };
    let opts = OpenOptions {
        wait: Duration::from_secs(30),
        stop: Some(stop),
    };
    let r = StateDir::open(&s.state(), &opts);
    let returned = Instant::now();
    let set_at = setter.join().unwrap();
    match r {
        Err(StateError::Interrupted { path }) => assert_eq!(path, s.state()),
        other => panic!("{other:?}"),
    }
    // One 20 ms poll plus scheduling noise on a loaded test machine.
    let lag = returned.saturating_duration_since(set_at);
    assert!(lag < Duration::from_millis(150), "took {lag:?}");
}

#[test]
fn inspect_of_a_missing_directory_is_not_found_and_creates_nothing() {
    let s = Scratch::new("inspect-missing");
    for p in [s.state(), s.0.join("no/such/state")] {
        let e = StateDir::inspect(&p).unwrap_err();
        assert!(e.is_not_found(), "{e:?}");
        assert!(
            matches!(&e, StateError::Io { source, .. } if source.kind() == ErrorKind::NotFound)
        );
    }
    assert_eq!(names_in(&s.0), Vec::<String>::new());
}

#[test]
fn a_relative_path_is_made_absolute_and_dot_dot_is_refused() {
    let s = Scratch::new("paths");
    assert!(matches!(
        StateDir::open(&s.0.join("a/../state"), &quick()),
        Err(StateError::Unsafe { .. })
    ));
    let d = StateDir::open(&s.0.join("./x/./state"), &quick()).unwrap();
    assert_eq!(d.path(), s.0.join("x/state"));
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(
        check::normalize(Path::new("rel/./state")).unwrap(),
        cwd.join("rel/state")
    );
}

#[test]
fn storage_errors_are_classified_by_errno() {
    let e = |n| std::io::Error::from_raw_os_error(n);
    assert_eq!(
        StorageProblem::of(&e(libc::ENOSPC)),
        Some(StorageProblem::Full)
    );
    assert_eq!(
        StorageProblem::of(&e(libc::EDQUOT)),
        Some(StorageProblem::Full)
    );
    assert_eq!(
        StorageProblem::of(&e(libc::EROFS)),
        Some(StorageProblem::ReadOnly)
    );
    assert_eq!(
        StorageProblem::of(&e(libc::EACCES)),
        Some(StorageProblem::PermissionDenied)
    );
    assert_eq!(StorageProblem::of(&e(libc::ENOENT)), None);
    assert_eq!(StorageProblem::of(&std::io::Error::other("no errno")), None);
    // An Io error keeps its errno and says what it means.
    let err = StateError::Io {
        what: "writing",
        path: "/var/lib/l3agent/routers.json".into(),
        source: e(libc::ENOSPC),
    };
    assert_eq!(err.storage_problem(), Some(StorageProblem::Full));
    let StateError::Io { source, .. } = &err else {
        unreachable!()
    };
    assert_eq!(source.raw_os_error(), Some(libc::ENOSPC));
    let msg = err.to_string();
    assert!(
        msg.starts_with("writing /var/lib/l3agent/routers.json: ") && msg.contains("is full"),
        "{msg}"
    );
    let ro = StateError::Io {
        what: "writing",
        path: "/x".into(),
        source: e(libc::EROFS),
    };
    assert!(ro.to_string().contains("read-only"), "{ro}");
}

#[test]
fn a_read_only_state_directory_fails_writes_with_the_errno_intact() {
    if is_root() {
        eprintln!("skipped: root ignores directory permissions (see storage_errors_are_classified_by_errno)");
        return;
    }
    let s = Scratch::new("read-only");
    let d = StateDir::open(&s.state(), &quick()).unwrap();
    d.write("rec", b"old").unwrap();
    drop(d);
    fs::set_permissions(s.state(), Permissions::from_mode(0o500)).unwrap();
    let d = StateDir::open(&s.state(), &quick()).unwrap();
    let err = d.write("rec", b"new").unwrap_err();
    assert_eq!(
        err.storage_problem(),
        Some(StorageProblem::PermissionDenied),
        "{err}"
    );
    assert!(matches!(&err, StateError::Io { path, .. } if path == &s.state().join("rec")));
    assert_eq!(d.read("rec").unwrap().unwrap(), b"old");
    fs::set_permissions(s.state(), Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn clear_leaves_only_the_lock() {
    let s = Scratch::new("clear");
    let d = StateDir::open(&s.state(), &quick()).unwrap();
    for r in [
        "routers.json",
        "applied/r1.json",
        "applied/r2.json",
        "alloc/x",
    ] {
        d.write(r, b"x").unwrap();
    }
    fs::write(s.state().join(".routers.json.tmp.77"), b"x").unwrap();
    d.clear().unwrap();
    assert_eq!(names_in(&s.state()), ["lock"]);
    // Still locked and usable.
    d.write("again", b"y").unwrap();
    assert_eq!(d.read("again").unwrap().unwrap(), b"y");
}

#[test]
fn clear_removes_nothing_when_the_directory_holds_what_is_not_a_record() {
    let s = Scratch::new("clear-foreign");
    let d = StateDir::open(&s.state(), &quick()).unwrap();
    d.write("routers.json", b"x").unwrap();
    d.write("applied/r1.json", b"x").unwrap();
    fs::create_dir_all(s.state().join("applied/deeper")).unwrap();
    fs::write(s.state().join("not a record"), b"x").unwrap();
    let err = d.clear().unwrap_err();
    match &err {
        StateError::Foreign { path, more } => {
            assert!(path.starts_with(s.state()), "{}", path.display());
            assert_eq!(*more, 1);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        names_in(&s.state()),
        ["applied", "lock", "not a record", "routers.json"]
    );
    assert_eq!(names_in(&s.state().join("applied")), ["deeper", "r1.json"]);
}

/// Set in the child process of `the_lock_dies_with_a_killed_holder`.
const HOLD_ENV: &str = "L3AGENT_STATE_TEST_HOLD_LOCK";
const HELD: &str = "l3agent-state-test: lock held";

/// Not a test of its own: in the child process started by
/// `the_lock_dies_with_a_killed_holder` it takes the lock and sleeps until killed.
#[test]
fn lock_holder_child_process() {
    let Some(dir) = std::env::var_os(HOLD_ENV) else {
        return;
    };
    let _d = StateDir::open(Path::new(&dir), &quick()).unwrap();
    println!("{HELD}");
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
#[allow(clippy::disallowed_methods)] // re-runs this test binary as the lock holder
fn the_lock_dies_with_a_killed_holder() {
    use std::io::BufRead;
    let s = Scratch::new("killed-holder");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "tests::lock_holder_child_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HOLD_ENV, s.state())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines();
    let held = lines.any(|l| l.is_ok_and(|l| l.contains(HELD)));
    assert!(held, "the child did not take the lock");
    match StateDir::open(&s.state(), &quick()) {
        Err(StateError::Busy { holder_pid, .. }) => assert_eq!(holder_pid, Some(child.id())),
        other => panic!("{other:?}"),
    }
    child.kill().unwrap(); // SIGKILL: no destructor runs in the child
    child.wait().unwrap();
    let start = Instant::now();
    let opts = OpenOptions {
        wait: Duration::from_secs(5),
        stop: None,
    };
    StateDir::open(&s.state(), &opts).unwrap();
    assert!(start.elapsed() < Duration::from_secs(1));
    assert_eq!(
        fs::read_to_string(s.state().join("lock")).unwrap().trim(),
        std::process::id().to_string()
    );
}
