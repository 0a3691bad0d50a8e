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

/// `iptables apply [extra...] --rules RULES` in a fresh process, logging at `log`.
fn run_apply(
    rules: &Path,
    ns: &TestNs,
    be: &str,
    state: &Path,
    extra: &[&str],
    log: &str,
) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_l3agent"))
        .args(["iptables", "apply"])
        .args(extra)
        .arg("--rules")
        .arg(rules)
        .args(["--netns", &ns.name, "--backend", be, "--state-dir"])
        .arg(state)
        .env("L3AGENT_LOG", log)
        .output()
        .unwrap()
}

/// `iptables apply --json` in a fresh process; the JSON report.
fn apply(rules: &Path, ns: &TestNs, be: &str, state: &Path) -> serde_json::Value {
    let o = run_apply(rules, ns, be, state, &["--json"], "warn");
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

/// A JSON rules file of `chains` x 100 rules in the filter table (and a few others: a rule at
/// the top of one chain, a rule in a builtin chain, a nat rule), `extra` appended last.
fn large(chains: usize, extra: Option<&str>) -> String {
    let mut rules = Vec::new();
    for c in 0..chains {
        rules.push(serde_json::json!({"chain": "FORWARD", "rule": format!("-j $c{c}")}));
        for r in 0..100 {
            let i = c * 100 + r;
            rules.push(serde_json::json!({
                "chain": format!("c{c}"),
                "rule": format!("-s 198.51.100.{}/32 -p tcp -m tcp --dport {} -j ACCEPT", i % 256, 1024 + i / 256),
            }));
        }
    }
    rules.push(serde_json::json!({"chain": "c3", "rule": "-s 192.0.2.1/32 -j DROP", "top": true}));
    rules.push(
        serde_json::json!({"chain": "INPUT", "rule": "-s 192.0.2.2/32 -j DROP", "wrap": false}),
    );
    if let Some(rule) = extra {
        rules.push(serde_json::json!({"chain": "c0", "rule": rule}));
    }
    let chains: Vec<String> = (0..chains).map(|c| format!("c{c}")).collect();
    serde_json::json!({
        "wrap_name": "l3agent",
        "options": {"ipv6": false},
        "ipv4": {
            "filter": {"chains": chains, "rules": rules},
            "nat": {"chains": ["dnat"], "rules": [
                {"chain": "PREROUTING", "rule": "-j $dnat"},
                {"chain": "dnat", "rule": "-d 203.0.113.5/32 -j DNAT --to-destination 192.0.2.5"},
            ]},
        },
    })
    .to_string()
}

/// A cold apply of a large table streams it into iptables-restore while the file is still being
/// read (issue 14). The result is exactly the file's (a second pass finds nothing to change),
/// and a file that turns out invalid at its very last rule leaves the namespace as it was: the
/// streamed restore is killed before `COMMIT`.
#[test]
fn a_large_cold_apply_is_streamed_and_a_file_invalid_at_its_end_applies_nothing() {
    for be in BACKENDS {
        let ns = TestNs::new("stream");
        let dir = scratch(&format!("stream-{be}"));
        let state = dir.join("state");
        // iptables-legacy-restore creates a table as it starts reading it: on legacy a table
        // is streamed only once it exists (here: made by another program's rule), on nft
        // always (nothing is created before the commit).
        if be == "legacy" {
            ns.ok(&[
                "iptables-legacy",
                "-A",
                "OUTPUT",
                "-d",
                "192.0.2.9/32",
                "-j",
                "ACCEPT",
            ]);
        }
        let before = (ns.save(be, false), ns.save(be, true));

        let bad = dir.join("bad.json");
        std::fs::write(&bad, large(40, Some("-s 198.51.100.300/32 -j ACCEPT"))).unwrap();
        let o = run_apply(&bad, &ns, be, &state, &[], "l3agent_iptables_exec=debug");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{be}: {stderr}");
        assert!(stderr.contains("198.51.100.300"), "{be}: {stderr}");
        assert!(
            stderr.contains("one-shot apply: streaming"),
            "{be}: the bad file was not streamed, so this test proves nothing: {stderr}"
        );
        assert_eq!(
            (ns.save(be, false), ns.save(be, true)),
            before,
            "{be}: an invalid file changed the namespace"
        );

        let good = dir.join("good.json");
        std::fs::write(&good, large(40, None)).unwrap();
        let first = run_apply(&good, &ns, be, &state, &["--json", "--check"], "warn");
        assert_eq!(
            first.status.code(),
            Some(0),
            "{be}: {}",
            String::from_utf8_lossy(&first.stderr)
        );
        let first: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
        assert_eq!(first["streamed"], true, "{be}: {first}");
        assert_eq!(first["converged"], true, "{be}: {first}");
        let saved = ns.save(be, false);
        for line in [
            "-A l3agent-c3 -s 192.0.2.1/32 -j DROP\n-A l3agent-c3 -s 198.51.100.44/32",
            "-A l3agent-c39 -s 198.51.100.159/32 -p tcp -m tcp --dport 1039 -j ACCEPT\n",
            "-A l3agent-FORWARD -j l3agent-c39\n",
            "-j DNAT --to-destination 192.0.2.5\n",
        ] {
            assert!(saved.contains(line), "{be}: {line:?} not in\n{saved}");
        }
        assert_eq!(saved.matches("-A l3agent-c").count(), 4001, "{be}");
        // A fresh process reading the kernel finds nothing to do.
        let second = apply(&good, &ns, be, &dir.join("other-state"));
        assert_eq!(second["changed"], false, "{be}: {second}");
        assert_eq!(second["streamed"], false, "{be}: {second}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// On legacy a restore holds the xtables lock from its start: a streamed IPv6 table's restore
/// is finished before IPv4's restore starts, which would otherwise wait for the lock until it
/// gave up.
#[test]
fn a_streamed_ipv6_table_does_not_hold_up_ipv4_on_legacy() {
    let ns = TestNs::new("stream6");
    let dir = scratch("stream6");
    // The IPv6 filter table exists (legacy streams only into an existing table).
    ns.ok(&[
        "ip6tables-legacy",
        "-A",
        "OUTPUT",
        "-d",
        "2001:db8::9/128",
        "-j",
        "ACCEPT",
    ]);
    let mut rules = Vec::new();
    for c in 0..25 {
        rules.push(serde_json::json!({"chain": "FORWARD", "rule": format!("-j $c{c}")}));
        for r in 0..100 {
            let i = c * 100 + r;
            rules.push(serde_json::json!({
                "chain": format!("c{c}"),
                "rule": format!("-s 2001:db8::{:x}/128 -p tcp -m tcp --dport {} -j ACCEPT", i, 1024 + i / 256),
            }));
        }
    }
    let chains: Vec<String> = (0..25).map(|c| format!("c{c}")).collect();
    let file = dir.join("rules.json");
    std::fs::write(
        &file,
        serde_json::json!({
            "wrap_name": "l3agent",
            "ipv4": {"filter": {"chains": ["v4"], "rules": [{"chain": "v4", "rule": "-s 192.0.2.1/32 -j DROP"}]}},
            "ipv6": {"filter": {"chains": chains, "rules": rules}},
        })
        .to_string(),
    )
    .unwrap();
    let report = apply(&file, &ns, "legacy", &dir.join("state"));
    assert_eq!(report["streamed"], true, "{report}");
    assert!(ns
        .save("legacy", false)
        .contains("-A l3agent-v4 -s 192.0.2.1/32 -j DROP\n"));
    let v6 = ns.save("legacy", true);
    assert_eq!(v6.matches("-A l3agent-c").count(), 2500, "{v6}");
    let _ = std::fs::remove_dir_all(&dir);
}
