//! The one-shot apply of a fresh process ([`OneShot`]) against the real kernel, in throwaway
//! namespaces: what it may skip when nf_tables proves nothing changed, and that any other
//! writer in between is still seen and repaired.

use std::path::{Path, PathBuf};
use std::time::Duration;

use l3agent_iptables::{Family, IptablesModel, ModelOptions, NetnsName, RuleSpec, Table, WrapName};
use l3agent_iptables_exec::applied::{input_digest, record_path, Basis, OneShot, OneShotReport};
use l3agent_iptables_exec::{Backend, BackendChoice, ExecOptions, NetnsTarget};
use l3agent_testkit::{foreign_lines, TestNs, BACKENDS};

fn choice(be: &str) -> BackendChoice {
    BackendChoice::Fixed(if be == "nft" {
        Backend::Nft
    } else {
        Backend::Legacy
    })
}

fn state_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "l3agent-oneshot-{}-{tag}-{}",
        std::process::id(),
        l3agent_testkit::unique()
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// The model of a rules file with `extra` rules in chain `fw` (plus one in a builtin chain,
/// which carries our marker).
fn model(wrap: &str, extra: &[&str]) -> IptablesModel {
    let mut m = IptablesModel::new(
        WrapName::new(wrap).unwrap(),
        ModelOptions {
            ipv6: false,
            ..ModelOptions::default()
        },
    );
    m.add_chain(Family::V4, Table::Filter, "fw", true).unwrap();
    for r in ["-j $fw", "-p tcp --dport 22 -j ACCEPT"] {
        m.add_rule(Family::V4, Table::Filter, RuleSpec::new("INPUT", r))
            .unwrap();
    }
    m.add_rule(
        Family::V4,
        Table::Filter,
        RuleSpec {
            wrap: false,
            ..RuleSpec::new("INPUT", "-s 192.0.2.99/32 -j DROP")
        },
    )
    .unwrap();
    for r in extra {
        m.add_rule(Family::V4, Table::Filter, RuleSpec::new("fw", r))
            .unwrap();
    }
    m
}

/// One fresh-process apply: begin, the no-op proof, read, apply; then a convergence check with
/// the same manager (a second pass would send nothing), which releases the namespace lock.
/// `None`: proven unchanged by the input digest alone.
fn apply_once(
    ns: &TestNs,
    be: &str,
    dir: &Path,
    model: IptablesModel,
    input: &str,
) -> Option<OneShotReport> {
    let target = NetnsTarget::Named(NetnsName::new("netns", &ns.name).unwrap());
    let opts = ExecOptions {
        lock_wait: Duration::from_secs(30),
        ..ExecOptions::default()
    };
    let digest = input_digest(be, input.as_bytes());
    let mut shot = OneShot::begin(&target, choice(be), opts, dir).unwrap();
    if shot.unchanged(&digest) {
        return None;
    }
    shot.read().unwrap();
    let mut report = shot.apply(model, Some(&digest)).unwrap();
    if let Some(mut m) = report.manager.take() {
        assert_eq!(m.check_convergence().unwrap(), Vec::<String>::new());
    }
    Some(report)
}

#[test]
fn nothing_is_read_when_nf_tables_proves_nothing_changed() {
    let ns = TestNs::new("one");
    let dir = state_dir("same");
    // Foreign rules around ours survive everything below.
    ns.restore(
        "nft",
        false,
        "*filter\n:foreign - [0:0]\n-A INPUT -s 198.51.100.1/32 -j ACCEPT\n-A foreign -j RETURN\nCOMMIT\n",
    );
    let foreign = foreign_lines(&ns.save("nft", false), &["l3agent"]);

    let first = apply_once(&ns, "nft", &dir, model("l3agent", &["-j ACCEPT"]), "v1").unwrap();
    assert_eq!(first.basis, Basis::Read);
    assert!(first.recorded, "the first apply must leave a record");
    assert!(!first.apply.is_noop());

    // The same input again: proven unchanged from the digest alone (nothing built or read).
    assert!(apply_once(&ns, "nft", &dir, model("l3agent", &["-j ACCEPT"]), "v1").is_none());

    // The same model from another input: nothing planned, nothing run.
    let same = apply_once(
        &ns,
        "nft",
        &dir,
        model("l3agent", &["-j ACCEPT"]),
        "v1 reformatted",
    )
    .unwrap();
    assert_eq!(same.basis, Basis::Unchanged);
    assert_eq!(same.stats.processes, 0);
    assert!(apply_once(
        &ns,
        "nft",
        &dir,
        model("l3agent", &["-j ACCEPT"]),
        "v1 reformatted"
    )
    .is_none());

    // A changed model: planned against the record, no save, only the delta restored.
    let added = apply_once(
        &ns,
        "nft",
        &dir,
        model("l3agent", &["-j ACCEPT", "-s 203.0.113.7/32 -j DROP"]),
        "v2",
    )
    .unwrap();
    assert_eq!(added.basis, Basis::Recorded);
    assert_eq!(added.stats.saves, 0, "{:?}", added.stats);
    assert_eq!((added.stats.restores, added.stats.processes), (1, 1));
    assert_eq!(
        added.apply.sent,
        vec![(
            Family::V4,
            "*filter\n-A l3agent-fw -s 203.0.113.7/32 -j DROP\nCOMMIT\n".to_owned()
        )]
    );
    assert!(added.recorded);
    // And back, also from the record.
    let removed = apply_once(&ns, "nft", &dir, model("l3agent", &["-j ACCEPT"]), "v1").unwrap();
    assert_eq!(removed.basis, Basis::Recorded);
    assert_eq!(removed.stats.saves, 0);
    assert_eq!(foreign_lines(&ns.save("nft", false), &["l3agent"]), foreign);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Any writer between two applies bumps the generation: the next apply reads the kernel and
/// repairs what was changed, on nft; legacy has no generation and always reads.
#[test]
fn a_change_by_another_program_between_two_applies_is_seen_and_repaired() {
    for be in BACKENDS {
        let ns = TestNs::new("drift");
        let dir = state_dir(be);
        let want = || model("l3agent", &["-j ACCEPT", "-p udp --dport 53 -j ACCEPT"]);
        let first = apply_once(&ns, be, &dir, want(), "v1").unwrap();
        assert_eq!(first.recorded, be == "nft", "{be}");
        let good = ns.save(be, false);

        // Another program deletes one of our rules and flushes our chain.
        let tool = format!("iptables-{be}");
        ns.ok(&[
            &tool,
            "-t",
            "filter",
            "-D",
            "l3agent-INPUT",
            "-p",
            "tcp",
            "-m",
            "tcp",
            "--dport",
            "22",
            "-j",
            "ACCEPT",
        ]);
        ns.ok(&[&tool, "-t", "filter", "-F", "l3agent-fw"]);
        assert_ne!(ns.save(be, false), good);

        let again = apply_once(&ns, be, &dir, want(), "v1")
            .unwrap_or_else(|| panic!("{be}: a changed kernel was taken for unchanged"));
        assert_eq!(again.basis, Basis::Read, "{be}");
        assert!(again.stats.saves >= 1, "{be}: {:?}", again.stats);
        assert!(!again.apply.is_noop(), "{be}: the drift was not repaired");
        assert_eq!(ns.save(be, false), good, "{be}: not repaired exactly");
        assert_eq!(again.recorded, be == "nft", "{be}");

        // Another wrap name's apply is another writer too, but a known one: its record holds
        // the whole namespace's rule set, and serves the next apply of either wrap name.
        let recorded = if be == "nft" {
            Basis::Recorded
        } else {
            Basis::Read
        };
        let other = apply_once(&ns, be, &dir, model("other", &[]), "other").unwrap();
        assert_eq!(other.basis, recorded, "{be}");
        let back = apply_once(&ns, be, &dir, want(), "v1").unwrap();
        assert_eq!(back.basis, recorded, "{be}");
        assert!(back.apply.is_noop(), "{be}: {:?}", back.apply.sent);
        assert!(ns.save(be, false).contains(":other-INPUT"), "{be}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The record is a cache: damaged, or of another namespace incarnation, it is not trusted.
#[test]
fn a_damaged_or_foreign_record_means_a_full_read() {
    let ns = TestNs::new("rec");
    let dir = state_dir("damaged");
    apply_once(&ns, "nft", &dir, model("l3agent", &[]), "v1").unwrap();
    let path = record_path(&dir, ns.open().id(), "l3agent");
    let text = std::fs::read_to_string(&path).unwrap();

    // Another namespace cookie (the inode of a deleted namespace reused by a new one).
    let cookie = text.lines().find(|l| l.starts_with("cookie ")).unwrap();
    std::fs::write(&path, text.replace(cookie, "cookie 1")).unwrap();
    let r = apply_once(&ns, "nft", &dir, model("l3agent", &[]), "v1").unwrap();
    assert_eq!(r.basis, Basis::Read);
    assert!(r.recorded, "a full read writes a good record again");

    // A damaged rule set in the record.
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("-A l3agent-INPUT", "-A l3agent-INPUX")).unwrap();
    let r = apply_once(&ns, "nft", &dir, model("l3agent", &["-j DROP"]), "v2").unwrap();
    assert_eq!(r.basis, Basis::Read);
    let _ = std::fs::remove_dir_all(&dir);
}
