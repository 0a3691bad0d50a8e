//! What l3agent's log lines look like to a person reading a file or a journal: the binary
//! is run with stderr piped (not a terminal) on a failing `iptables apply` in a throwaway
//! namespace, with `-v` so info lines are on.
//! - no ANSI colour codes (stderr is not a terminal);
//! - no Rust debug formatting (`Some(41)`, `After(2s)`);
//! - no rule payloads in info/warn log lines (the final error, written for the person who
//!   ran the command, names the failing rule on purpose).
#![allow(clippy::disallowed_methods)] // the test runs the binary under test

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use l3agent_testkit::{TempDir, TestNs, BACKENDS};

/// Text of the rules below that must not appear in a log line.
const PAYLOADS: [&str; 3] = ["192.0.2.77", "no-such-chain", "-j ACCEPT"];

const RULES: &str = "ipv4:
  filter:
    chains: [fw]
    rules:
      - {chain: fw, rule: \"-s 192.0.2.77 -j ACCEPT\"}
  nat:
    rules:
      - {chain: PREROUTING, rule: \"-j no-such-chain\", wrap: false}
";

#[test]
fn failing_apply_logs_plain_text_without_payloads() {
    for be in BACKENDS {
        let ns = TestNs::new("logs");
        let dir = TempDir::new("logs");
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
        let rules = dir.path().join("rules.yaml");
        std::fs::write(&rules, RULES).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_l3agent"))
            .args(["-v", "iptables", "apply", "--rules"])
            .arg(&rules)
            .args(["--netns", &ns.name, "--backend", be, "--state-dir"])
            .arg(&state)
            .env_remove("L3AGENT_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .expect("run l3agent");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{be}: {stderr}");
        // The run really logged at info and warn level, so the checks below see something.
        assert!(stderr.contains(" INFO "), "{be}: no info line: {stderr}");
        assert!(
            stderr.contains("iptables-restore failed") && stderr.contains(" WARN "),
            "{be}: no warning for the failure: {stderr}"
        );
        assert!(!stderr.contains("\x1b["), "{be}: ANSI escape: {stderr:?}");
        assert!(
            !stderr.contains("Some("),
            "{be}: debug formatting: {stderr}"
        );
        assert!(!stderr.contains("None"), "{be}: debug formatting: {stderr}");
        for line in stderr
            .lines()
            .filter(|l| l.contains(" INFO ") || l.contains(" WARN "))
        {
            assert!(
                line.contains("line=") || !line.contains("iptables-restore failed"),
                "{be}: the failing line number is not logged: {line}"
            );
            for p in PAYLOADS {
                assert!(!line.contains(p), "{be}: rule text {p:?} logged: {line}");
            }
        }
    }
}
