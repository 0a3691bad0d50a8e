//! `l3agent iptables ...` end to end: the binary against the real kernel in throwaway
//! namespaces, for both backends. Checks exit statuses (0 applied / 1 failed / 2 invalid),
//! messages that name the field, and that bad input leaves nothing behind.
#![allow(clippy::disallowed_methods)] // the test runs the binary under test

use std::path::{Path, PathBuf};
use std::process::Command;

use l3agent_testkit::{content, foreign_lines, TestNs, BACKENDS};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_l3agent")
}

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn l3agent(args: &[&str]) -> Out {
    let o = Command::new(bin())
        .args(args)
        .output()
        .expect("run l3agent");
    Out {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into(),
        stderr: String::from_utf8_lossy(&o.stderr).into(),
    }
}

/// `iptables apply --rules FILE --netns NS` plus `extra`.
fn apply_args<'a>(rules: &'a Path, netns: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "iptables",
        "apply",
        "--rules",
        rules.to_str().unwrap(),
        "--netns",
        netns,
    ];
    v.extend_from_slice(extra);
    v
}

fn file(name: &str, text: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("l3agent-cli-{}-{name}", std::process::id()));
    std::fs::write(&p, text).unwrap();
    p
}

fn example() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/rules.yaml"
    ))
    .unwrap()
}

#[test]
fn apply_converges_and_removes_what_left_the_file() {
    for be in BACKENDS {
        let ns = TestNs::new("cli");
        let rules = file(&format!("ex-{be}.yaml"), &example());
        let base = apply_args(&rules, &ns.name, &["--backend", be]);
        let first = l3agent(&[&base[..], &["--check"]].concat());
        assert_eq!(first.code, Some(0), "{be}: {}", first.stderr);
        assert!(first.stdout.contains("applied"), "{}", first.stdout);
        let second = l3agent(&[&base[..], &["--json"]].concat());
        assert_eq!(second.code, Some(0), "{be}: {}", second.stderr);
        let v: serde_json::Value = serde_json::from_str(&second.stdout).unwrap();
        assert_eq!(
            v["changed"], false,
            "{be}: second apply changed things: {}",
            second.stdout
        );
        let saved = ns.save(be, false);
        assert!(
            saved.contains("-A l3agent-fw -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
            "{saved}"
        );
        assert!(
            saved.contains("-j ACCEPT\n-A neutron-filter-top")
                || saved.contains("-m comment --comment \"l3agent:l3agent:"),
            "{saved}"
        );
        let top_rules_before = saved.matches("-A neutron-filter-top").count();
        // Rules that left the file are removed, also in shared chains, by a new process.
        let smaller: String = example()
            .lines()
            .filter(|l| !l.contains("ctstate") && !l.contains("wrap: false"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&rules, smaller).unwrap();
        let third = l3agent(&base);
        assert_eq!(third.code, Some(0), "{be}: {}", third.stderr);
        let saved = ns.save(be, false);
        assert!(!saved.contains("ctstate"), "{be}: {saved}");
        assert_eq!(
            saved.matches("-A neutron-filter-top").count(),
            top_rules_before - 1,
            "{be}: {saved}"
        );
        let show = l3agent(&[
            "iptables",
            "show",
            "--netns",
            &ns.name,
            "--rules",
            rules.to_str().unwrap(),
            "--json",
        ]);
        assert_eq!(show.code, Some(0), "{}", show.stderr);
        let v: serde_json::Value = serde_json::from_str(&show.stdout).unwrap();
        assert_eq!(
            v["families"]["ipv4"]["drift"],
            serde_json::json!([]),
            "{be}: {}",
            show.stdout
        );
        let _ = std::fs::remove_file(rules);
    }
}

#[test]
fn invalid_input_exits_2_names_the_field_and_applies_nothing() {
    for be in BACKENDS {
        let ns = TestNs::new("bad");
        let before = (ns.save(be, false), ns.save(be, true));
        let cases = [
            (
                "newline",
                "ipv4:\n  filter:\n    rules:\n      - {chain: INPUT, rule: \"-j ACCEPT\\nCOMMIT\\n*filter\\n-P INPUT DROP\"}\n",
                "ipv4.filter.rules[0].rule",
            ),
            (
                "nul",
                "ipv4:\n  filter:\n    rules:\n      - {chain: INPUT, rule: \"-j ACCEPT\", comment: \"x\\0y\"}\n",
                "ipv4.filter.rules[0].comment",
            ),
            (
                "unbalanced",
                "ipv4:\n  filter:\n    rules:\n      - {chain: INPUT, rule: \"-m comment --comment \\\"oops -j ACCEPT\"}\n",
                "unbalanced",
            ),
            ("unknown-field", "ipv4:\n  filter:\n    rulez: []\n", "rulez"),
            ("long-chain", "ipv4:\n  filter:\n    chains: [a-chain-name-that-is-far-too-long]\n", "ipv4.filter.chains[0]"),
            (
                "bad-addr",
                "ipv4:\n  nat:\n    rules:\n      - {chain: PREROUTING, rule: \"-d example.com -j ACCEPT\"}\n",
                "ipv4.nat.rules[0].rule",
            ),
            (
                "table-cmd",
                "ipv4:\n  filter:\n    rules:\n      - {chain: INPUT, rule: \"-t nat -j ACCEPT\"}\n",
                "\"-t\" is not allowed",
            ),
        ];
        for (name, text, expect) in cases {
            let f = file(&format!("{name}-{be}.yaml"), text);
            let o = l3agent(&apply_args(&f, &ns.name, &["--backend", be]));
            assert_eq!(o.code, Some(2), "{name}: {}{}", o.stdout, o.stderr);
            assert!(o.stderr.contains(expect), "{name}: {}", o.stderr);
            let _ = std::fs::remove_file(f);
        }
        let f = file(&format!("ok-{be}.yaml"), &example());
        let bad_ns = l3agent(&apply_args(&f, "../etc", &[]));
        assert_eq!(bad_ns.code, Some(2), "{}", bad_ns.stderr);
        assert!(bad_ns.stderr.contains("--netns"), "{}", bad_ns.stderr);
        let missing = l3agent(&apply_args(&f, "l3t-no-such-namespace", &[]));
        assert_eq!(missing.code, Some(1), "{}", missing.stderr);
        assert!(
            missing
                .stderr
                .contains("l3t-no-such-namespace does not exist"),
            "{}",
            missing.stderr
        );
        assert_eq!(
            (ns.save(be, false), ns.save(be, true)),
            before,
            "{be}: something was applied"
        );
        assert!(content(&before.0).is_empty());
        let _ = std::fs::remove_file(f);
    }
}

#[test]
fn failing_apply_exits_1_with_the_rule_and_context() {
    for be in BACKENDS {
        let ns = TestNs::new("fail1");
        let before = ns.save(be, false);
        let f = file(
            &format!("fail-{be}.yaml"),
            "ipv4:\n  filter:\n    chains: [fw]\n    rules:\n      - {chain: fw, rule: \"-s 192.0.2.1 -j ACCEPT\"}\n  nat:\n    rules:\n      - {chain: PREROUTING, rule: \"-j no-such-chain\", wrap: false}\n",
        );
        let o = l3agent(&apply_args(&f, &ns.name, &["--backend", be]));
        assert_eq!(o.code, Some(1), "{}{}", o.stdout, o.stderr);
        assert!(
            o.stderr
                .contains("rule \"-j no-such-chain\" in chain \"PREROUTING\""),
            "{be}: {}",
            o.stderr
        );
        assert!(
            o.stderr.contains("restore input around the failing line"),
            "{be}: {}",
            o.stderr
        );
        assert_eq!(
            content(&ns.save(be, false)),
            content(&before),
            "{be}: a failed apply left rules behind"
        );
        let _ = std::fs::remove_file(f);
    }
}

/// Processes applying different wrap names to one namespace at the same time: the namespace
/// lock serialises them and all end up applied, none disturbing the others.
#[test]
fn concurrent_processes_are_serialised() {
    for be in BACKENDS {
        let ns = TestNs::new("race");
        let mut children = Vec::new();
        let mut files = Vec::new();
        for w in ["alpha", "beta", "gamma"] {
            let text = format!(
                "wrap_name: {w}\nipv4:\n  filter:\n    chains: [fw]\n    rules:\n      - {{chain: FORWARD, rule: \"-j $fw\"}}\n      - {{chain: fw, rule: \"-s 192.0.2.1 -j ACCEPT\"}}\n"
            );
            let f = file(&format!("{w}-{be}.yaml"), &text);
            children.push(
                Command::new(bin())
                    .args(apply_args(&f, &ns.name, &["--backend", be]))
                    .spawn()
                    .unwrap(),
            );
            files.push((w, f));
        }
        for mut c in children {
            assert!(
                c.wait().unwrap().success(),
                "{be}: a concurrent apply failed"
            );
        }
        let saved = ns.save(be, false);
        for (w, f) in &files {
            assert!(
                saved.contains(&format!("-A {w}-fw -s 192.0.2.1/32 -j ACCEPT")),
                "{be}: {w} missing:\n{saved}"
            );
            let again = l3agent(&apply_args(f, &ns.name, &["--json"]));
            let v: serde_json::Value = serde_json::from_str(&again.stdout).unwrap();
            assert_eq!(
                v["changed"], false,
                "{be}: {w} not converged after the race"
            );
        }
        assert!(
            foreign_lines(&saved, &["alpha", "beta", "gamma"])
                .iter()
                .all(|l| !l.contains("-A ")),
            "{saved}"
        );
        for (_, f) in files {
            let _ = std::fs::remove_file(f);
        }
    }
}

#[test]
fn counters_command() {
    let ns = TestNs::new("cnt");
    let f = file(
        "cnt.yaml",
        "ipv4:\n  filter:\n    chains: [acct]\n    rules:\n      - {chain: OUTPUT, rule: \"-j $acct\"}\n      - {chain: acct, rule: \"-p icmp -j RETURN\"}\n",
    );
    let o = l3agent(&apply_args(&f, &ns.name, &[]));
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    ns.ok(&["ping", "-c", "1", "-W", "2", "127.0.0.1"]);
    let o = l3agent(&[
        "iptables",
        "counters",
        "--rules",
        f.to_str().unwrap(),
        "--chain",
        "acct",
        "--netns",
        &ns.name,
        "--zero",
        "--json",
    ]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["packets"], 2, "{}", o.stdout);
    let o = l3agent(&[
        "iptables",
        "counters",
        "--rules",
        f.to_str().unwrap(),
        "--chain",
        "nope",
        "--netns",
        &ns.name,
    ]);
    assert_eq!(o.code, Some(2), "{}", o.stderr);
    let _ = std::fs::remove_file(f);
}
