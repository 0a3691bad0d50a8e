//! Times building a model from a rules file (JSON): `cargo run --release -p l3agent-iptables
//! --example build_model -- FILE [RUNS]`. For profiling the read path (issue 14).

use std::time::Instant;

use l3agent_iptables::spec::RulesFile;

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: build_model FILE [RUNS]");
    let runs: usize = args.next().map_or(5, |r| r.parse().expect("RUNS"));
    let bytes = std::fs::read(&path).expect("read");
    for _ in 0..runs {
        let t = Instant::now();
        let file: RulesFile = serde_json::from_slice(&bytes).expect("json");
        let parsed = t.elapsed();
        let model = file.into_model().expect("valid");
        let built = t.elapsed();
        println!(
            "parse {:.1} ms, model {:.1} ms, total {:.1} ms",
            parsed.as_secs_f64() * 1e3,
            (built - parsed).as_secs_f64() * 1e3,
            built.as_secs_f64() * 1e3
        );
        drop(model);
    }
}
