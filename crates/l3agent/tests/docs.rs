//! What an operator installs beside the binary: `--version` with the git revision, the man
//! pages and the shell completions, generated from the same command definitions (so they
//! cannot drift from the code).
#![allow(clippy::disallowed_methods)] // the test runs the binary under test

use std::process::Command;

fn l3agent(args: &[&str]) -> (Option<i32>, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_l3agent"))
        .args(args)
        .output()
        .expect("run l3agent");
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

#[test]
fn version_names_the_git_revision() {
    let (code, out, err) = l3agent(&["--version"]);
    assert_eq!(code, Some(0), "{err}");
    let expected = format!("l3agent {} (git ", env!("CARGO_PKG_VERSION"));
    assert!(out.starts_with(&expected), "{out}");
    assert!(!out.contains("(git )"), "{out}");
}

#[test]
fn completions_cover_every_subcommand_in_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, err) = l3agent(&["completions", shell]);
        assert_eq!(code, Some(0), "{shell}: {err}");
        for sub in [
            "apply", "plan", "status", "destroy", "validate", "iptables", "agent",
        ] {
            assert!(out.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    let (code, _, err) = l3agent(&["completions", "tcsh"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("tcsh"), "{err}");
}

#[test]
fn man_pages_render_for_every_command() {
    let (code, out, err) = l3agent(&["man"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(".TH l3agent 1"), "{out}");
    assert!(out.contains("git "), "the page names the revision: {out}");
    let dir = std::env::temp_dir().join(format!("l3agent-man-{}", std::process::id()));
    let (code, _, err) = l3agent(&["man", "--out-dir", dir.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    let mut pages: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    for page in [
        "l3agent.1",
        "l3agent-agent.1",
        "l3agent-iptables-apply.1",
        "l3agent-apply.1",
    ] {
        assert!(pages.iter().any(|p| p == page), "{page} not in {pages:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
