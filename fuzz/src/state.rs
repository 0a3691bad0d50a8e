//! The `state_files` target: a record of the state directory, read back by exactly the
//! functions l3agent reads it with (`State::records`, `State::last_applied`,
//! `records::allocate`), through a real state directory so that `StateDir`'s reading and
//! `Records`' sanitizing run too.
//!
//! The first byte of the input picks the file ([`KINDS`], by its distance from ASCII `0`
//! modulo their number, so the seeds' digits name the kind), the rest is its content. The
//! last kind is not in the state directory: it is the record `iptables apply` keeps in
//! `/run/l3agent/iptables`, read by `AppliedRecord::parse`. The other records hold a valid baseline
//! (a `dvr_snat` agent, a legacy router, `random_fully: false`), so that a fuzzed router or
//! agent record meets a valid counterpart. `applied/facts.json` is not fuzzed: its type is
//! private, and `last_applied` runs `iptables -V` when it is corrupt.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use l3agent_router::alloc::{LinkLocalPool, RangePool};
use l3agent_router::compile::Needs;
use l3agent_router::records::{self, State};
use l3agent_router::spec::names;
use l3agent_types::{PortId, RouterId};

/// What the first byte selects: the record's name in the state directory.
pub const KINDS: [&str; 7] = [
    "records.json",
    "applied/agent.json",
    ROUTER_RECORD,
    "fip-linklocal-networks",
    "fip-priorities",
    "snat-tables",
    IPTABLES_APPLIED,
];

/// The kind read by [`l3agent_iptables_exec::applied::AppliedRecord::parse`].
const IPTABLES_APPLIED: &str = "iptables/<dev>-<ino>.<wrap>.applied";

const ROUTER_ID: &str = "87c7c2ae-d0ba-4691-820c-8053abf50b8d";
const ROUTER_RECORD: &str = "applied/router-87c7c2ae-d0ba-4691-820c-8053abf50b8d.json";
const PORT_ID: &str = "081ed401-2ab1-4bd0-968b-e05235398bb2";

const AGENT: &str = r#"{"mode":"dvr_snat","host":"host-a","state_path":"/var/lib/l3agent","bridges":{"90e4912c-0eb8-4be4-a793-e6a3bba6ae8b":"br-t1","c6910e18-fb1f-4988-9af4-211a8c2e2926":"br-t2","65566f91-133a-44ff-87f5-ecffc1193d3d":"br-ex","740cd353-7ee8-49e2-96f6-17ed0dc7b3da":"br-d1","d8282fc8-37e4-43a7-801d-8d2c91dbbb98":"br-d2","11272de9-8a18-4392-8618-d07b6ab565e3":"br-dex"}}"#;
/// The seed `2-router-legacy.json` is the baseline router record (after its selector byte).
const ROUTER_SEED: &str = include_str!("../corpus/state_files/2-router-legacy.json");

fn router() -> &'static [u8] {
    &ROUTER_SEED.as_bytes()[1..]
}
const FACTS: &str = r#"{"random_fully":false}"#;

/// The state directory of this process, removed at exit.
fn dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("l3agent-fuzz-state-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir.join("applied"))
            .expect("creating the fuzz state directory");
        extern "C" fn cleanup() {
            if let Some(d) = DIR.get() {
                let _ = fs::remove_dir_all(d);
            }
        }
        // SAFETY: registers a plain function; libFuzzer leaves through exit().
        unsafe { libc::atexit(cleanup) };
        write(&dir, "applied/agent.json", AGENT.as_bytes());
        write(&dir, "applied/facts.json", FACTS.as_bytes());
        write(&dir, ROUTER_RECORD, router());
        State::inspect(&dir).unwrap_or_else(|e| {
            panic!(
                "{} is not a safe state directory ({e}): set TMPDIR",
                dir.display()
            )
        });
        dir
    })
}

fn write(dir: &Path, rel: &str, bytes: &[u8]) {
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dir.join(rel))
        .and_then(|mut f| f.write_all(bytes))
        .expect("writing a fuzz state record");
}

/// One record, then every read of the state directory that may touch it.
pub fn state_files(data: &[u8]) {
    let Some((&selector, content)) = data.split_first() else {
        return;
    };
    let rel = KINDS[usize::from(selector.wrapping_sub(b'0')) % KINDS.len()];
    if rel == IPTABLES_APPLIED {
        iptables_applied(content);
        return;
    }
    let dir = dir();
    write(dir, rel, content);
    let state = State::inspect(dir).expect("the fuzz state directory stays safe");

    // Missing or corrupt records are rebuilt, never an error; what survives is l3agent's.
    let r = state.records().expect("records() never fails on content");
    for n in &r.namespaces {
        assert!(
            names::parse_ns(n.as_str()).is_some(),
            "kept foreign namespace {n}"
        );
    }
    for id in r.routers.keys() {
        assert!(
            RouterId::new("id", id).is_ok(),
            "kept invalid router id {id:?}"
        );
    }
    // A corrupt applied record makes status show nothing, never an error.
    state
        .last_applied()
        .expect("last_applied() never fails on content");

    // The allocators are read by allocate (plan: nothing persisted); a corrupt one is an
    // error, a valid one gives values inside its pool.
    let rid = RouterId::new("id", ROUTER_ID).expect("valid id");
    let needs = Needs {
        link_local: [rid.clone()].into(),
        fip_priorities: ["203.0.113.2".parse().expect("address")].into(),
        snat_tables: [(rid, PortId::new("id", PORT_ID).expect("valid id"))].into(),
    };
    if let Ok(a) = records::allocate(&state, &needs, false) {
        assert!(a.link_local.values().all(|v| *v < 8192));
        let p = RangePool::FIP_PRIORITIES;
        assert!(a
            .fip_priorities
            .values()
            .all(|v| (p.start..p.end).contains(v)));
        let t = RangePool::SNAT_TABLES;
        assert!(a.snat_tables.values().all(|v| (t.start..t.end).contains(v)));
    }
    match rel {
        "fip-linklocal-networks" => crate::allocator_round_trip(content, LinkLocalPool),
        "fip-priorities" => crate::allocator_round_trip(content, RangePool::FIP_PRIORITIES),
        "snat-tables" => crate::allocator_round_trip(content, RangePool::SNAT_TABLES),
        _ => {}
    }

    // Back to the baseline.
    match rel {
        "applied/agent.json" => write(dir, rel, AGENT.as_bytes()),
        ROUTER_RECORD => write(dir, rel, router()),
        _ => fs::remove_file(dir.join(rel)).expect("removing a fuzz state record"),
    }
}

/// An iptables applied record: refused with a reason or read; what is read renders to a
/// record that reads back the same (the next apply trusts it to skip reading the kernel).
fn iptables_applied(content: &[u8]) {
    use l3agent_iptables_exec::applied::AppliedRecord;
    if let Ok(record) = AppliedRecord::parse(content) {
        assert_eq!(
            AppliedRecord::parse(&record.render()).as_ref(),
            Ok(&record),
            "an applied record does not survive render and parse"
        );
    }
}
