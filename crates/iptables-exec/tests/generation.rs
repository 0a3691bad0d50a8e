//! nf_tables' ruleset generation id (`NFT_MSG_GETGEN`) against the real kernel, in throwaway
//! namespaces: what the one-shot apply relies on to skip reading the kernel.

use l3agent_iptables_exec::{ruleset_generation, GenerationSocket};
use l3agent_testkit::TestNs;

#[test]
fn the_generation_is_unchanged_by_reads_and_bumped_by_every_write_in_its_namespace_only() {
    l3agent_testkit::require_kernel();
    let a = TestNs::new("gen-a");
    let b = TestNs::new("gen-b");
    let (na, nb) = (a.open(), b.open());
    let gen = |ns| ruleset_generation(Some(ns)).unwrap();
    let b0 = gen(&nb);

    // Writes of iptables-nft-restore, one table.
    let g0 = gen(&na);
    a.restore(
        "nft",
        false,
        "*filter\n:x - [0:0]\n-A x -s 192.0.2.1/32 -j ACCEPT\nCOMMIT\n",
    );
    let g1 = gen(&na);
    assert!(g1 > g0, "a restore must bump the generation ({g0} -> {g1})");

    // Reads change nothing: iptables-nft-save, ip6tables-nft-save, nft list, iptables -L.
    a.save("nft", false);
    a.save("nft", true);
    a.ok(&["nft", "list", "ruleset"]);
    a.ok(&["iptables-nft", "-t", "filter", "-L", "x", "-n", "-v", "-x"]);
    assert_eq!(gen(&na), g1, "reads must not bump the generation");

    // Another program's write (nft itself, another family and table) bumps it too.
    a.ok(&["nft", "add", "table", "inet", "other"]);
    let g2 = gen(&na);
    assert!(g2 > g1, "nft add must bump the generation ({g1} -> {g2})");

    // A socket kept open answers again and again, and sees later writes.
    let sock = GenerationSocket::open(Some(&na)).unwrap();
    assert_eq!(sock.query().unwrap(), g2);
    a.restore("nft", true, "*filter\n:y - [0:0]\nCOMMIT\n");
    let g3 = sock.query().unwrap();
    assert!(g3 > g2);
    assert_eq!(sock.query().unwrap(), g3);

    // The other namespace saw none of it.
    assert_eq!(gen(&nb), b0, "generations are per namespace");
    b.ok(&["nft", "add", "table", "ip", "t"]);
    assert!(gen(&nb) > b0);
    assert_eq!(gen(&na), g3);
}

/// How many generations one `iptables-nft-restore` commits: one per table block (what the
/// one-shot apply expects after its own restore).
#[test]
fn one_restore_commits_one_generation_per_table() {
    l3agent_testkit::require_kernel();
    let a = TestNs::new("gen-t");
    let na = a.open();
    let g0 = ruleset_generation(Some(&na)).unwrap();
    a.restore(
        "nft",
        false,
        "*filter\n:x - [0:0]\n-A x -j ACCEPT\nCOMMIT\n*nat\n:y - [0:0]\n-A y -j ACCEPT\nCOMMIT\n",
    );
    let g1 = ruleset_generation(Some(&na)).unwrap();
    a.restore("nft", false, "*filter\n-A x -j DROP\nCOMMIT\n");
    let g2 = ruleset_generation(Some(&na)).unwrap();
    eprintln!("two tables: +{}, one table: +{}", g1 - g0, g2 - g1);
    assert_eq!(g2 - g1, 1, "one table, one commit");
    assert_eq!(g1 - g0, 2, "two tables, two commits");
}

/// The runner's counters ([`l3agent_iptables_exec::stats`]) count what it ran: the first apply
/// reads both families and restores, a no-op runs nothing, a refused restore counts as a
/// failure (plus the read and revert that follow it), and the process-wide view saw it all.
#[test]
fn the_counters_count_saves_restores_lines_failures_and_processes() {
    use l3agent_iptables::{Family, IptablesModel, ModelOptions, NetnsName, RuleSpec, Table};
    use l3agent_iptables_exec::{stats, Backend, BackendChoice, ExecOptions, Manager, NetnsTarget};
    l3agent_testkit::require_kernel();
    let ns = TestNs::new("stats");
    let global = stats::global();
    let target = NetnsTarget::Named(NetnsName::new("netns", &ns.name).unwrap());
    let mut m = Manager::open(
        &target,
        BackendChoice::Fixed(Backend::Nft),
        IptablesModel::new(
            l3agent_iptables::WrapName::new("w").unwrap(),
            ModelOptions::default(),
        ),
        ExecOptions::default(),
    )
    .unwrap();
    let opened = m.stats();
    assert_eq!(
        opened.saves, 4,
        "backend detection: two backends, two families"
    );
    assert_eq!(opened.processes, 4);
    let r = m.apply().unwrap();
    let first = m.stats().since(&opened);
    assert_eq!((first.saves, first.restores), (2, 2), "{first:?}");
    assert_eq!(first.restore_lines, r.lines() as u64);
    assert_eq!(first.processes, 4);
    assert!(m.apply().unwrap().is_noop());
    assert_eq!(m.stats().since(&opened), first, "a no-op runs nothing");
    m.model_mut()
        .add_rule(
            Family::V4,
            Table::Nat,
            RuleSpec {
                wrap: false,
                ..RuleSpec::new("PREROUTING", "-d 203.0.113.9 -j no-such-chain")
            },
        )
        .unwrap();
    assert!(m.apply().is_err());
    let failed = m.stats().since(&opened);
    assert_eq!(failed.restore_failures, 1, "{failed:?}");
    assert!(failed.restores > first.restores);
    let seen = stats::global().since(&global);
    assert!(
        seen.saves >= failed.saves + opened.saves && seen.processes >= failed.processes,
        "{seen:?}"
    );
}
