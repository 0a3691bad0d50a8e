//! `ApplyOptions::progress` over the recording fake (no root): told once per router as it
//! finishes, with a count that goes up by one each time, whatever the router's fate and
//! however many workers run.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

mod common;

use common::{config, legacy_router, state_dir, world};
use l3agent_router::compile::HostFacts;
use l3agent_router::fake;
use l3agent_router::host::{self, ApplyOptions, Progress, RouterStatus, Unchanged};
use l3agent_types::RouterId;
use serde_json::{json, Value};

/// The example router as router number `n` (its own id and port ids, no floating IP).
fn router(n: usize) -> Value {
    let mut r = legacy_router();
    r["id"] = json!(format!("5d2ab1e0-0000-4000-8000-{n:012}"));
    for (i, p) in r["_interfaces"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .enumerate()
    {
        p["id"] = json!(format!("7a{n:03}{i}00-0000-4000-8000-000000000000"));
    }
    r["gw_port"]["id"] = json!(format!("7b{n:03}000-0000-4000-8000-000000000000"));
    r["_floatingips"] = json!([]);
    common::renumber(&mut r, 10 + u8::try_from(n).unwrap());
    r
}

/// The `(done, total)` calls of a progress callback, in order.
type Calls = Arc<Mutex<Vec<(usize, usize)>>>;

/// Options with `workers` threads and a progress callback recording its calls.
fn opts(workers: usize) -> (ApplyOptions, Calls) {
    let calls: Calls = Arc::default();
    let c = Arc::clone(&calls);
    let mut o = ApplyOptions::new(
        HostFacts { random_fully: true },
        Arc::new(AtomicBool::new(false)),
    );
    o.workers = workers;
    o.progress = Some(Progress::new(move |done, total| {
        // A slow display must not reorder the counts of parallel workers.
        std::thread::sleep(std::time::Duration::from_millis(1));
        c.lock().unwrap().push((done, total));
    }));
    (o, calls)
}

fn counted(n: usize) -> Vec<(usize, usize)> {
    (1..=n).map(|d| (d, n)).collect()
}

#[test]
fn progress_is_told_once_per_router_with_a_count_that_goes_up_by_one() {
    let w = world();
    let state = state_dir();
    let routers: Vec<Value> = (0..9).map(router).collect();
    let cfg = config(&state, &routers);

    // A cold apply of 9 routers on 4 workers.
    let (o, calls) = opts(4);
    let r = host::apply(&cfg, &o, &fake::sides(&w)).unwrap();
    assert!(!r.failed(), "{r:#?}");
    assert_eq!(*calls.lock().unwrap(), counted(9));

    // Unchanged routers count as well (diffed, nothing to do) ...
    let (o, calls) = opts(4);
    let r = host::apply(&cfg, &o, &fake::sides(&w)).unwrap();
    assert!(r
        .routers
        .iter()
        .all(|x| x.status == RouterStatus::Unchanged));
    assert_eq!(*calls.lock().unwrap(), counted(9));
    // ... and so do those left alone by --changed-only.
    let (mut o, calls) = opts(2);
    o.unchanged = Unchanged::Trust;
    host::apply(&cfg, &o, &fake::sides(&w)).unwrap();
    assert_eq!(*calls.lock().unwrap(), counted(9));

    // `only` one router (a legacy host compiles just that one): one call.
    let (mut o, calls) = opts(4);
    o.only = Some(BTreeSet::from([RouterId::new(
        "id",
        "5d2ab1e0-0000-4000-8000-000000000003",
    )
    .unwrap()]));
    host::apply(&cfg, &o, &fake::sides(&w)).unwrap();
    assert_eq!(*calls.lock().unwrap(), counted(1));
}

#[test]
fn a_failing_router_is_counted_like_the_others() {
    let w = world();
    let state = state_dir();
    let cfg = config(&state, &[router(1), router(2), router(3)]);
    w.lock().unwrap().fail_on = Some("add port qr-7a0020".into());
    let (o, calls) = opts(1);
    let r = host::apply(&cfg, &o, &fake::sides(&w)).unwrap();
    assert!(r.failed(), "{r:#?}");
    assert_eq!(*calls.lock().unwrap(), counted(3));
}

#[test]
fn without_a_callback_nothing_is_told_and_the_report_is_the_same() {
    let state = state_dir();
    let cfg = config(&state, &[router(1), router(2)]);
    let (o, calls) = opts(2);
    let with = host::apply(&cfg, &o, &fake::sides(&world())).unwrap();
    let plain = ApplyOptions {
        progress: None,
        ..o
    };
    let state2 = state_dir();
    let cfg2 = config(&state2, &[router(1), router(2)]);
    let without = host::apply(&cfg2, &plain, &fake::sides(&world())).unwrap();
    assert_eq!(calls.lock().unwrap().len(), 2);
    let text =
        |r: &host::HostReport| -> Vec<String> { r.changes().map(ToString::to_string).collect() };
    assert_eq!(text(&with), text(&without));
}
