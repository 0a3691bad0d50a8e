//! Times `ConfigDoc::validate_since` for an edit of one router of a host config (the agent's
//! reload): `cargo run --release -p l3agent-router --example validate_since -- FILE.json`.

use std::time::Instant;

use l3agent_router::config::ConfigDoc;

fn main() {
    let path = std::env::args().nth(1).expect("a host config file (JSON)");
    let text = std::fs::read_to_string(&path).expect("readable");
    let doc: ConfigDoc = serde_json::from_str(&text).expect("a host config");
    let t = Instant::now();
    let in_force = doc.clone().into_validated().expect("valid");
    println!("full validation: {:.2} ms", t.elapsed().as_secs_f64() * 1e3);
    let mut samples = Vec::new();
    for k in 0..std::env::args()
        .nth(2)
        .map_or(20, |n| n.parse().expect("rounds"))
    {
        let mut next = in_force.doc.clone();
        let i = (k * 37) % next.routers.len();
        next.routers[i].admin_state_up = k % 2 == 0;
        let t = Instant::now();
        let cfg = next.validate_since(&in_force).expect("valid");
        samples.push(t.elapsed().as_secs_f64() * 1e3);
        drop(cfg);
    }
    samples.sort_by(f64::total_cmp);
    println!(
        "validate_since, one router edited: min {:.2} ms, median {:.2} ms, max {:.2} ms",
        samples[0],
        samples[samples.len() / 2],
        samples[samples.len() - 1]
    );
}
