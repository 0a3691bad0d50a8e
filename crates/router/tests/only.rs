//! `ApplyOptions::only` over the recording fake (no root): the agent's per-batch apply. The
//! routers outside `only` are left exactly as they are (drift and all), are not in the
//! report, keep their records, and a removed router goes only on its own turn.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

mod common;

use common::{config, legacy_router, renumber, state_dir, world};
use l3agent_router::compile::HostFacts;
use l3agent_router::config::HostConfig;
use l3agent_router::fake::{self, SharedWorld};
use l3agent_router::host::{self, ApplyOptions, HostReport, RouterStatus, Unchanged};
use l3agent_router::observe::Kept;
use l3agent_types::RouterId;
use serde_json::{json, Value};

const A: &str = "87c7c2ae-d0ba-4691-820c-8053abf50b8d";
const B: &str = "5d2ab1e0-0000-4000-8000-00000000000b";
const C: &str = "5d2ab1e0-0000-4000-8000-00000000000c";

/// The legacy example router, or a copy of it under `id` (own port ids, no floating IPs).
fn router(id: &str) -> Value {
    let mut r = legacy_router();
    if id != A {
        let tag = &id[id.len() - 1..];
        r["id"] = json!(id);
        for (i, p) in r["_interfaces"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .enumerate()
        {
            p["id"] = json!(format!("7a7a7a{tag}{i}-0000-4000-8000-000000000000"));
        }
        r["gw_port"]["id"] = json!(format!("7b7b7b{tag}0-0000-4000-8000-000000000000"));
        r["_floatingips"] = json!([]);
        renumber(&mut r, host(id));
    }
    r
}

/// The host number of router `id`'s addresses (the example's, 4, for A).
fn host(id: &str) -> u8 {
    if id == A {
        4
    } else {
        10 + u8::from_str_radix(&id[id.len() - 1..], 16).unwrap()
    }
}

/// Router `id`'s address on the first interface's subnet.
fn qr_address(id: &str) -> String {
    format!("192.0.2.{}/24", host(id))
}

fn opts(only: Option<&[&str]>, unchanged: Unchanged) -> ApplyOptions {
    let mut o = ApplyOptions::new(
        HostFacts { random_fully: true },
        Arc::new(AtomicBool::new(false)),
    );
    o.unchanged = unchanged;
    o.only = only.map(|ids| {
        ids.iter()
            .map(|id| RouterId::new("id", id).expect("id"))
            .collect::<BTreeSet<_>>()
    });
    o
}

fn apply(w: &SharedWorld, cfg: &HostConfig, only: Option<&[&str]>) -> HostReport {
    let r = host::apply(cfg, &opts(only, Unchanged::Verify), &fake::sides(w)).expect("apply");
    assert!(!r.failed(), "{r:#?}");
    r
}

fn ids(r: &HostReport) -> Vec<&str> {
    r.routers.iter().map(|x| x.id.as_str()).collect()
}

fn status(r: &HostReport, id: &str) -> Option<RouterStatus> {
    r.routers.iter().find(|x| x.id == id).map(|x| x.status)
}

fn qrouter_ns(id: &str) -> String {
    format!("qrouter-{id}")
}

/// Whether `id`'s router namespace holds the address `net` on any device.
fn has_address(w: &SharedWorld, id: &str, net: &str) -> bool {
    let w = w.lock().unwrap();
    w.namespaces
        .iter()
        .find(|(n, _)| n.as_str() == qrouter_ns(id))
        .is_some_and(|(_, ns)| ns.addresses.iter().any(|(_, a)| a.to_string() == net))
}

fn drop_address(w: &SharedWorld, id: &str, net: &str) {
    let mut w = w.lock().unwrap();
    let ns = w
        .namespaces
        .iter_mut()
        .find(|(n, _)| n.as_str() == qrouter_ns(id))
        .map(|(_, ns)| ns)
        .expect("router namespace");
    ns.addresses.retain(|(_, a)| a.to_string() != net);
}

fn namespace_exists(w: &SharedWorld, id: &str) -> bool {
    w.lock()
        .unwrap()
        .namespaces
        .keys()
        .any(|n| n.as_str() == qrouter_ns(id))
}

#[test]
fn only_repairs_the_routers_named_and_leaves_the_others_drift_and_report_alone() {
    let w = world();
    let state = state_dir();
    let cfg = config(&state, &[router(A), router(B)]);
    apply(&w, &cfg, None);
    drop_address(&w, A, &qr_address(A));
    drop_address(&w, B, &qr_address(B));

    let r = apply(&w, &cfg, Some(&[A]));
    assert_eq!(ids(&r), [A], "{r:#?}");
    assert_eq!(status(&r, A), Some(RouterStatus::Converged));
    assert!(has_address(&w, A, &qr_address(A)), "A was not repaired");
    assert!(!has_address(&w, B, &qr_address(B)), "B was touched");

    // B's turn repairs it.
    let r = apply(&w, &cfg, Some(&[B]));
    assert_eq!(ids(&r), [B], "{r:#?}");
    assert!(has_address(&w, B, &qr_address(B)));
}

#[test]
fn a_router_outside_only_keeps_its_record_so_a_trusting_apply_still_runs_its_new_dict() {
    let w = world();
    let state = state_dir();
    apply(&w, &config(&state, &[router(A), router(B)]), None);
    let mut b = router(B);
    b["routes"] = json!([{"destination": "100.64.77.0/24", "nexthop": "192.0.2.50"}]);
    let cfg = config(&state, &[router(A), b]);
    let r = apply(&w, &cfg, Some(&[A]));
    assert_eq!(ids(&r), [A]);
    // B's dict changed and B was not applied: `--changed-only` must not trust it.
    let trust = host::apply(&cfg, &opts(None, Unchanged::Trust), &fake::sides(&w)).unwrap();
    assert_eq!(
        status(&trust, B),
        Some(RouterStatus::Converged),
        "{trust:#?}"
    );
    assert_eq!(status(&trust, A), Some(RouterStatus::Unchanged));
    assert!(trust
        .changes()
        .any(|c| c.to_string().contains("100.64.77.0/24")));
}

#[test]
fn a_removed_router_is_deleted_only_when_only_names_it() {
    let w = world();
    let state = state_dir();
    apply(&w, &config(&state, &[router(A), router(C)]), None);
    assert!(namespace_exists(&w, C));
    let cfg = config(&state, &[router(A)]);

    let r = apply(&w, &cfg, Some(&[A]));
    assert_eq!(ids(&r), [A], "{r:#?}");
    assert!(namespace_exists(&w, C), "C was deleted outside its turn");

    let r = apply(&w, &cfg, Some(&[C]));
    assert_eq!(ids(&r), [C], "{r:#?}");
    assert_eq!(status(&r, C), Some(RouterStatus::Removed));
    assert!(!namespace_exists(&w, C), "C was not deleted on its turn");
    assert!(namespace_exists(&w, A));

    // Nothing left for a full apply.
    let r = apply(&w, &cfg, None);
    assert!(!r.changed(), "{r:#?}");
}

#[test]
fn a_missing_bridge_fails_the_applies_of_its_router_only() {
    let w = world();
    let state = state_dir();
    let net = "3d3d3d3d-0000-4000-8000-000000000000";
    let mut b = router(B);
    b["_interfaces"][1]["network_id"] = json!(net);
    let v = json!({
        "agent": {"mode": "legacy", "host": "host-a", "state_path": state, "bridges": {
            "90e4912c-0eb8-4be4-a793-e6a3bba6ae8b": "br-t1",
            "c6910e18-fb1f-4988-9af4-211a8c2e2926": "br-t2",
            "65566f91-133a-44ff-87f5-ecffc1193d3d": "br-ex",
            net: "br-gone"}},
        "routers": [router(A), b],
    });
    let cfg = serde_json::from_value::<l3agent_router::config::ConfigDoc>(v)
        .unwrap()
        .validate()
        .unwrap();
    // A's turn: B's bridge is none of its business.
    let r = apply(&w, &cfg, Some(&[A]));
    assert_eq!(status(&r, A), Some(RouterStatus::Converged));
    // B's turn, or everyone's: refused before anything is touched.
    for only in [Some(&[B][..]), None] {
        let e = host::apply(&cfg, &opts(only, Unchanged::Verify), &fake::sides(&w)).unwrap_err();
        assert!(e.to_string().contains("br-gone"), "{e}");
    }
    assert!(!namespace_exists(&w, B));
}

// ---------------------------------------------------------------------------------------
// Kept pictures (the agent's event applies): taken instead of reading, never after a change
// or a failure, and never by an apply that looks for drift.
// ---------------------------------------------------------------------------------------

/// The example floating IP's address, on A's `qg-` device once applied.
const FIP: &str = "203.0.113.2/32";

fn kept_opts(only: Option<&[&str]>, kept: &Arc<Kept>, trust: bool) -> ApplyOptions {
    let mut o = opts(only, Unchanged::Verify);
    o.kept = Some(Arc::clone(kept));
    o.trust_kept = trust;
    o
}

fn apply_kept(
    w: &SharedWorld,
    cfg: &HostConfig,
    only: Option<&[&str]>,
    kept: &Arc<Kept>,
    trust: bool,
) -> HostReport {
    host::apply(cfg, &kept_opts(only, kept, trust), &fake::sides(w)).expect("apply")
}

/// A without its floating IP.
fn a_without_fip() -> Value {
    let mut a = router(A);
    a["_floatingips"] = json!([]);
    a
}

#[test]
fn an_event_takes_the_kept_picture_and_an_apply_looking_for_drift_reads_again() {
    let w = world();
    let state = state_dir();
    let kept = Arc::new(Kept::new());
    let before = config(&state, &[a_without_fip(), router(B)]);
    let after = config(&state, &[router(A), router(B)]);
    // Namespaces made by an apply are not kept; found converged, they are.
    apply_kept(&w, &before, None, &kept, false);
    assert!(kept.is_empty());
    let r = apply_kept(&w, &before, None, &kept, false);
    assert!(!r.failed(), "{r:#?}");
    assert_eq!(kept.len(), 2);

    // Another program removes an address; then the floating IP comes (an event).
    drop_address(&w, A, &qr_address(A));
    let r = apply_kept(&w, &after, Some(&[A]), &kept, true);
    assert_eq!(status(&r, A), Some(RouterStatus::Converged), "{r:#?}");
    assert!(has_address(&w, A, FIP));
    assert!(
        !has_address(&w, A, &qr_address(A)),
        "the event read the namespace instead of taking its picture"
    );
    // A changed: its picture is gone, B's stays.
    assert_eq!(kept.len(), 1);

    // A re-check (not trusting) reads A and repairs the drift; found converged, A is kept.
    apply_kept(&w, &after, Some(&[A]), &kept, false);
    assert!(has_address(&w, A, &qr_address(A)));
    assert_eq!(kept.len(), 1);
    let r = apply_kept(&w, &after, Some(&[A]), &kept, false);
    assert_eq!(status(&r, A), Some(RouterStatus::Unchanged), "{r:#?}");
    assert_eq!(kept.len(), 2);

    // A router no longer configured goes, and its picture with it.
    let without_b = config(&state, &[router(A)]);
    apply_kept(&w, &without_b, Some(&[B]), &kept, true);
    assert!(!namespace_exists(&w, B));
    assert_eq!(kept.len(), 1);
}

#[test]
fn a_failed_event_keeps_no_picture_so_the_next_one_reads_the_namespace() {
    let w = world();
    let state = state_dir();
    let kept = Arc::new(Kept::new());
    let before = config(&state, &[a_without_fip()]);
    let after = config(&state, &[router(A)]);
    apply_kept(&w, &before, None, &kept, false);
    apply_kept(&w, &before, None, &kept, false);
    assert_eq!(kept.len(), 1);

    drop_address(&w, A, &qr_address(A));
    w.lock().unwrap().fail_on = Some(format!("ip addr add {FIP}"));
    let r = apply_kept(&w, &after, Some(&[A]), &kept, true);
    assert_eq!(status(&r, A), Some(RouterStatus::Failed), "{r:#?}");
    assert!(kept.is_empty());

    // Retried (still an event apply): nothing kept, so it reads A and repairs all of it.
    let r = apply_kept(&w, &after, Some(&[A]), &kept, true);
    assert_eq!(status(&r, A), Some(RouterStatus::Converged), "{r:#?}");
    assert!(has_address(&w, A, FIP));
    assert!(has_address(&w, A, &qr_address(A)));
}

/// An apply compiles each router's namespace with the rules its iptables manager last resolved
/// (the firewall's hints): an apply of some routers asks for theirs only.
#[test]
fn an_apply_compiles_with_the_hints_of_the_namespaces_it_compiles() {
    let w = world();
    let state = state_dir();
    let cfg = config(&state, &[router(A), router(B)]);
    apply(&w, &cfg, None);
    let asked = |w: &SharedWorld| -> Vec<String> {
        let mut w = w.lock().unwrap();
        std::mem::take(&mut w.hints_asked)
            .iter()
            .map(|n| n.to_string())
            .collect()
    };
    assert_eq!(asked(&w), [qrouter_ns(B), qrouter_ns(A)]);
    apply(&w, &cfg, Some(&[A]));
    assert_eq!(asked(&w), [qrouter_ns(A)]);
}
