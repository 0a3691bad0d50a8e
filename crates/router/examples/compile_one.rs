//! Times `compile::compile` of one router of a host config (what the agent compiles for an
//! event), without and with the hints of its last compile (what the agent's managers give):
//! `cargo run --release -p l3agent-router --example compile_one -- FILE.json`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use l3agent_router::compile::{compile, compile_hinted, Allocations, HostFacts};
use l3agent_router::config::{ConfigDoc, HostConfig};

fn main() {
    let path = std::env::args().nth(1).expect("a host config file (JSON)");
    let rounds: usize = std::env::args()
        .nth(2)
        .map_or(200, |n| n.parse().expect("a number of rounds"));
    let text = std::fs::read_to_string(&path).expect("readable");
    let doc: ConfigDoc = serde_json::from_str(&text).expect("a host config");
    let cfg = doc.into_validated().expect("valid");
    let facts = HostFacts { random_fully: true };
    let alloc = Allocations::default();
    let mut samples = Vec::with_capacity(rounds);
    let mut hinted = Vec::with_capacity(rounds);
    let mut hinting = Vec::with_capacity(rounds);
    for k in 0..rounds {
        let one = HostConfig {
            agent: cfg.agent.clone(),
            routers: vec![cfg.routers[k % cfg.routers.len()].clone()],
            doc: ConfigDoc {
                agent: cfg.doc.agent.clone(),
                routers: Vec::new(),
            },
        };
        let t = Instant::now();
        let spec = compile(&one, &alloc, &facts);
        samples.push(t.elapsed().as_secs_f64() * 1e3);
        assert!(spec.failed.is_empty(), "{:?}", spec.failed);
        let t = Instant::now();
        let hints: BTreeMap<_, _> = spec
            .namespaces
            .iter()
            .map(|(n, s)| (n.clone(), Arc::new(s.iptables.hints())))
            .collect();
        hinting.push(t.elapsed().as_secs_f64() * 1e3);
        drop(spec);
        let t = Instant::now();
        let spec = compile_hinted(&one, &alloc, &facts, &|n| hints.get(n).cloned());
        hinted.push(t.elapsed().as_secs_f64() * 1e3);
        drop(spec);
    }
    for (what, mut samples) in [
        ("compile of one router", samples),
        ("its hints from its spec", hinting),
        ("compile of one router with its hints", hinted),
    ] {
        samples.sort_by(f64::total_cmp);
        println!(
            "{what}: min {:.3} ms, median {:.3} ms, max {:.3} ms",
            samples[0],
            samples[samples.len() / 2],
            samples[samples.len() - 1]
        );
    }
}
