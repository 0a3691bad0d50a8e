//! `l3agent iptables apply` as a fresh process each time (issue 14): on nf_tables, an apply
//! after an unchanged generation reads nothing, and a change made by another program between
//! two applies is still seen and repaired. On legacy every apply reads the kernel.
#![allow(clippy::disallowed_methods)] // the test runs the binary under test

use std::path::{Path, PathBuf};
use std::process::Command;

use l3agent_testkit::{TestNs, BACKENDS};

fn example() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/rules.yaml"
    ))
    .unwrap()
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "l3agent-gen-{}-{tag}-{}",
        std::process::id(),
        l3agent_testkit::unique()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `iptables apply --json` in a fresh process; the JSON report.
fn apply(rules: &Path, ns: &TestNs, be: &str, state: &Path) -> serde_json::Value {
    let o = Command::new(env!("CARGO_BIN_EXE_l3agent"))
        .args(["iptables", "apply", "--json", "--rules"])
        .arg(rules)
        .args(["--netns", &ns.name, "--backend", be, "--state-dir"])
        .arg(state)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{be}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

const UNCHANGED: &str = "none: unchanged since the last apply";
const RECORDED: &str = "none: planned against the record of the last apply";
const SAVED: &str = "iptables-save";

#[test]
fn a_change_by_another_program_between_two_cli_applies_is_seen_and_repaired() {
    for be in BACKENDS {
        let ns = TestNs::new("gen");
        let dir = scratch(be);
        let rules = dir.join("rules.yaml");
        std::fs::write(&rules, example()).unwrap();
        let state = dir.join("state");

        let first = apply(&rules, &ns, be, &state);
        assert_eq!(first["changed"], true, "{be}: {first}");
        assert_eq!(first["kernel_read"], SAVED, "{be}");
        let good = (ns.save(be, false), ns.save(be, true));

        // Nothing changed: on nft provably so, without reading the kernel.
        let second = apply(&rules, &ns, be, &state);
        assert_eq!(second["changed"], false, "{be}: {second}");
        let expect = if be == "nft" { UNCHANGED } else { SAVED };
        assert_eq!(second["kernel_read"], expect, "{be}");

        // Another program flushes our chain and deletes our jump in a builtin chain, in both
        // families' way: the next apply must see it and put back exactly what was there.
        let tool = format!("iptables-{be}");
        ns.ok(&[&tool, "-t", "filter", "-F", "l3agent-fw"]);
        ns.ok(&[&tool, "-t", "nat", "-F", "l3agent-float-snat"]);
        assert_ne!(ns.save(be, false), good.0);
        let third = apply(&rules, &ns, be, &state);
        assert_eq!(third["changed"], true, "{be}: drift not repaired: {third}");
        assert_eq!(third["kernel_read"], SAVED, "{be}");
        assert_eq!((ns.save(be, false), ns.save(be, true)), good, "{be}");

        // Repaired and recorded: unchanged again; then one more rule, planned from the record
        // on nft (no save), and the kernel holds it.
        let fourth = apply(&rules, &ns, be, &state);
        assert_eq!(fourth["kernel_read"], expect, "{be}");
        let more = example().replace(
            "      - {chain: fw, rule: \"-m conntrack",
            "      - {chain: fw, rule: \"-s 203.0.113.9/32 -j DROP\"}\n      - {chain: fw, rule: \"-m conntrack",
        );
        std::fs::write(&rules, more).unwrap();
        let fifth = apply(&rules, &ns, be, &state);
        assert_eq!(fifth["changed"], true, "{be}: {fifth}");
        let expect = if be == "nft" { RECORDED } else { SAVED };
        assert_eq!(fifth["kernel_read"], expect, "{be}");
        assert_eq!(
            fifth["families"]["ipv4"]["input"],
            "*filter\n-I l3agent-fw 2 -s 203.0.113.9/32 -j DROP\nCOMMIT\n",
            "{be}"
        );
        assert!(ns
            .save(be, false)
            .contains("-A l3agent-fw -s 203.0.113.9/32 -j DROP\n"));

        // Another program writing anywhere in the namespace (here: nft, another table) is
        // a change too: read again, nothing to repair.
        if be == "nft" {
            ns.ok(&["nft", "add", "table", "inet", "somebody-else"]);
            let sixth = apply(&rules, &ns, be, &state);
            assert_eq!(sixth["kernel_read"], SAVED);
            assert_eq!(sixth["changed"], false, "{sixth}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
