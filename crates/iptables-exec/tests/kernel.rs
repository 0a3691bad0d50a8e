//! The iptables engine against the real kernel, in throwaway namespaces, for both backends and
//! both IP families.

use std::time::Duration;

use l3agent_iptables::{Family, IptablesModel, ModelOptions, NetnsName, RuleSpec, Table, WrapName};
use l3agent_iptables_exec::lock::lock_path;
use l3agent_iptables_exec::netns::NsId;
use l3agent_iptables_exec::{
    ApplyError, Backend, BackendChoice, ExecOptions, Manager, NetnsTarget, ProcessRunner, Rollback,
};
use l3agent_testkit::{foreign_lines, TestNs, BACKENDS};

fn backend(b: &str) -> Backend {
    if b == "nft" {
        Backend::Nft
    } else {
        Backend::Legacy
    }
}

fn manager(ns: &TestNs, be: &str, wrap: &str) -> Manager<ProcessRunner> {
    let opts = ExecOptions {
        lock_wait: Duration::from_secs(30),
        ..ExecOptions::default()
    };
    manager_with(ns, be, wrap, opts)
}

fn manager_with(ns: &TestNs, be: &str, wrap: &str, opts: ExecOptions) -> Manager<ProcessRunner> {
    let model = IptablesModel::new(WrapName::new(wrap).unwrap(), ModelOptions::default());
    let target = NetnsTarget::Named(NetnsName::new("netns", &ns.name).unwrap());
    Manager::open(&target, BackendChoice::Fixed(backend(be)), model, opts).unwrap()
}

fn add(m: &mut Manager<ProcessRunner>, family: Family, table: Table, chain: &str, rule: &str) {
    m.model_mut()
        .add_rule(family, table, RuleSpec::new(chain, rule))
        .unwrap();
}

/// Every form of V4_CAPTURES (and a few non-canonical ones) reaches a fixed point: a second
/// apply by a new manager (a restart) finds nothing to do.
#[test]
fn any_accepted_spelling_converges() {
    for be in BACKENDS {
        let ns = TestNs::new("conv");
        let mut m = manager(&ns, be, "l3agent");
        m.model_mut()
            .add_chain(Family::V4, Table::Filter, "fw", true)
            .unwrap();
        m.model_mut()
            .add_chain(Family::V6, Table::Filter, "fw", true)
            .unwrap();
        for r in [
            "-p tcp --dport 22 -j ACCEPT",
            "-p tcp -m comment --comment x --dport 22 -j ACCEPT",
            "-i eth0 -d 192.0.2.1 -s 192.0.2.5/24 -j DROP",
            "-p TCP --sport 1:100 --dport 22: --syn -j ACCEPT",
            "-p 17 --dport 53 -j ACCEPT",
            "-p icmp --icmp-type echo-request -j ACCEPT",
            "-m conntrack --ctstate ESTABLISHED,RELATED,DNAT -j ACCEPT",
            "-m state --state ESTABLISHED,RELATED -j ACCEPT",
            "-m mark --mark 1 -j ACCEPT",
            "-m mac --mac-source AA:BB:CC:DD:EE:0F -j ACCEPT",
            "! -s 192.0.2.0/24 ! -i eth1 -p tcp ! --dport 80 -j ACCEPT",
            "-j REJECT",
            "-m comment --comment \"a \\\"q\\\" b\" -j ACCEPT",
            "-j LOG --log-prefix \"x: \"",
            "-m multiport -p tcp --dports 80,443 -j ACCEPT",
            "-p all -f -j DROP",
            "-g l3agent-local",
            // Not canonicalised by l3agent: identified by marker instead.
            "-m limit --limit 5/min -j ACCEPT",
            "-p tcp --dport ssh -j ACCEPT",
            "-m connmark ! --mark 0x0/0xffff0000 -j ACCEPT",
        ] {
            add(&mut m, Family::V4, Table::Filter, "fw", r);
        }
        m.model_mut()
            .add_rule(
                Family::V4,
                Table::Filter,
                RuleSpec {
                    comment: Some("one-word"),
                    ..RuleSpec::new("INPUT", "-s 198.51.100.1 -j ACCEPT")
                },
            )
            .unwrap();
        m.model_mut()
            .add_rule(
                Family::V4,
                Table::Filter,
                RuleSpec {
                    comment: Some("two words"),
                    ..RuleSpec::new("INPUT", "-s 198.51.100.2 -j ACCEPT")
                },
            )
            .unwrap();
        add(
            &mut m,
            Family::V4,
            Table::Nat,
            "PREROUTING",
            "-d 203.0.113.5 -j DNAT --to-destination 192.0.2.10",
        );
        add(
            &mut m,
            Family::V4,
            Table::Nat,
            "float-snat",
            "-s 192.0.2.10 -j SNAT --to-source 203.0.113.5 --random-fully",
        );
        add(
            &mut m,
            Family::V4,
            Table::Mangle,
            "PREROUTING",
            "-j MARK --set-mark 0x2/0xffff",
        );
        add(
            &mut m,
            Family::V4,
            Table::Raw,
            "PREROUTING",
            "-j CT --notrack",
        );
        for r in [
            "-s 2001:DB8::1 -p tcp --dport 22 -j ACCEPT",
            "-p icmpv6 -j ACCEPT",
            "-j REJECT",
            "-p ipv6-icmp --icmpv6-type 128 -j ACCEPT",
        ] {
            add(&mut m, Family::V6, Table::Filter, "fw", r);
        }
        let report = m.apply().unwrap();
        assert!(!report.is_noop());
        assert_eq!(m.check_convergence().unwrap(), Vec::<String>::new(), "{be}");
        // In memory: nothing to do, no process.
        assert!(m.apply().unwrap().is_noop());
        // A new process with the same desired state: reads the kernel, finds nothing to do.
        let mut again = manager(&ns, be, "l3agent");
        again.set_model(m.model().clone());
        let r = again.apply().unwrap();
        assert!(
            r.read_kernel && r.is_noop(),
            "{be}: second apply sent {:?}",
            r.sent
        );
    }
}

const FOREIGN_V4: &str = "*filter
:DOCKER - [0:0]
:x-l3agent-y - [0:0]
:l3agent-b-INPUT - [0:0]
-A INPUT -s 198.51.100.9/32 -j DROP
-A INPUT -s 198.51.100.9/32 -j DROP
-A INPUT -m comment --comment \"not l3agent managed\" -j ACCEPT
-A INPUT -j l3agent-b-INPUT
-A FORWARD -j DOCKER
-A DOCKER -d 192.0.2.77/32 -p tcp -m tcp --dport 80 -j ACCEPT
-A x-l3agent-y -j RETURN
-A l3agent-b-INPUT -m comment --comment \"l3agent:l3agent-b:00000000000000aa\" -j ACCEPT
COMMIT
*nat
-A POSTROUTING -s 192.0.2.0/24 -j MASQUERADE
COMMIT
";

/// Foreign rules (duplicates, look-alike names, another wrap name that extends ours) survive
/// every apply byte for byte and in order; ours are added, changed and removed around them.
#[test]
fn foreign_rules_are_never_touched() {
    for be in BACKENDS {
        let ns = TestNs::new("foreign");
        ns.restore(be, false, FOREIGN_V4);
        ns.restore(be, true, "*filter\n-A INPUT -s 2001:db8::9/128 -j DROP\n-A INPUT -s 2001:db8::9/128 -j DROP\nCOMMIT\n");
        let before = (
            foreign_lines(&ns.save(be, false), &["l3agent", "l3agent-c"]),
            foreign_lines(&ns.save(be, true), &["l3agent", "l3agent-c"]),
        );
        assert!(before.0.contains(&"filter -A l3agent-b-INPUT -m comment --comment \"l3agent:l3agent-b:00000000000000aa\" -j ACCEPT".to_owned()), "{before:?}");
        let mut m = manager(&ns, be, "l3agent");
        m.model_mut()
            .add_chain(Family::V4, Table::Filter, "fw", true)
            .unwrap();
        add(&mut m, Family::V4, Table::Filter, "FORWARD", "-j $fw");
        add(
            &mut m,
            Family::V4,
            Table::Filter,
            "fw",
            "-s 198.51.100.9 -j DROP",
        );
        m.model_mut()
            .add_rule(
                Family::V4,
                Table::Filter,
                RuleSpec {
                    wrap: false,
                    ..RuleSpec::new("INPUT", "-s 198.51.100.9/32 -j DROP")
                },
            )
            .unwrap();
        add(
            &mut m,
            Family::V6,
            Table::Filter,
            "INPUT",
            "-s 2001:db8::9 -j DROP",
        );
        m.apply().unwrap();
        let check = |when: &str| {
            let after = (
                foreign_lines(&ns.save(be, false), &["l3agent", "l3agent-c"]),
                foreign_lines(&ns.save(be, true), &["l3agent", "l3agent-c"]),
            );
            assert_eq!(before, after, "{be}: foreign rules changed {when}");
        };
        check("by the first apply");
        // Our unwrapped copy of a foreign rule is ours alone: removing it leaves both foreign ones.
        m.model_mut()
            .remove_rule(
                Family::V4,
                Table::Filter,
                RuleSpec {
                    wrap: false,
                    ..RuleSpec::new("INPUT", "-s 198.51.100.9/32 -j DROP")
                },
            )
            .unwrap();
        m.model_mut()
            .remove_chain(Family::V4, Table::Filter, "fw", true)
            .unwrap();
        m.apply().unwrap();
        check("by removals");
        assert!(
            !ns.save(be, false).contains(":l3agent-fw "),
            "{be}: removed chain still there"
        );
        // A restart with an empty desired state of another wrap name changes nothing of ours.
        let mut other = manager(&ns, be, "l3agent-c");
        other.apply().unwrap();
        let mut mine = manager(&ns, be, "l3agent");
        mine.set_model(m.model().clone());
        assert!(
            mine.apply().unwrap().is_noop(),
            "{be}: wrap l3agent-c disturbed l3agent"
        );
        check("by a second wrap name");
        assert!(
            ns.save(be, false).contains(":l3agent-b-INPUT - [0:0]"),
            "{be}: chain of wrap l3agent-b touched"
        );
    }
}

/// Drift (a flushed chain, a deleted jump, an edited rule) is found on the next read of the
/// kernel and repaired.
#[test]
fn drift_is_repaired() {
    for be in BACKENDS {
        let ns = TestNs::new("drift");
        let mut m = manager(&ns, be, "l3agent");
        m.model_mut()
            .add_chain(Family::V4, Table::Filter, "fw", true)
            .unwrap();
        add(&mut m, Family::V4, Table::Filter, "FORWARD", "-j $fw");
        for i in 1..=5 {
            add(
                &mut m,
                Family::V4,
                Table::Filter,
                "fw",
                &format!("-s 192.0.2.{i} -j ACCEPT"),
            );
        }
        m.apply().unwrap();
        let good = ns.save(be, false);
        let ipt = format!("iptables-{be}");
        ns.ok(&[&ipt, "-F", "l3agent-fw"]);
        ns.ok(&[&ipt, "-D", "FORWARD", "1"]);
        ns.ok(&[&ipt, "-R", "l3agent-FORWARD", "1", "-j", "ACCEPT"]);
        assert!(!m.check_convergence().unwrap().is_empty());
        m.refresh();
        let r = m.apply().unwrap();
        assert!(r.read_kernel && !r.is_noop());
        assert_eq!(ns.save(be, false), good, "{be}: not repaired");
        assert!(m.check_convergence().unwrap().is_empty());
    }
}

/// A rule that fails at commit time in the nat table: the error names the rule the caller
/// wrote, with context, and the filter table (committed first by iptables-restore) is reverted.
#[test]
fn failing_line_is_mapped_and_nothing_stays_applied() {
    for be in BACKENDS {
        let ns = TestNs::new("fail");
        let mut m = manager(&ns, be, "l3agent");
        m.apply().unwrap();
        let before = (ns.save(be, false), ns.save(be, true));
        m.model_mut()
            .add_chain(Family::V4, Table::Filter, "fw", true)
            .unwrap();
        add(
            &mut m,
            Family::V4,
            Table::Filter,
            "fw",
            "-s 192.0.2.1 -j ACCEPT",
        );
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
        let err = m.apply().unwrap_err();
        let ApplyError::Restore(e) = &err else {
            panic!("{be}: {err}")
        };
        assert_eq!(
            e.origin.as_ref().map(|o| o.rule.as_str()),
            Some("-d 203.0.113.9 -j no-such-chain"),
            "{be}: {err}"
        );
        assert!(e.line.is_some() && !e.context.is_empty(), "{be}: {err}");
        assert_eq!(e.rollback, Rollback::Reverted, "{be}: {err}");
        let text = err.to_string();
        assert!(
            text.contains("no-such-chain")
                && text.contains("tables committed before the failure were reverted"),
            "{text}"
        );
        assert_eq!(
            (ns.save(be, false), ns.save(be, true)),
            before,
            "{be}: partial apply left behind"
        );
        // The pending change is kept: fixing the rule and applying again works.
        m.model_mut()
            .remove_rule(
                Family::V4,
                Table::Nat,
                RuleSpec {
                    wrap: false,
                    ..RuleSpec::new("PREROUTING", "-d 203.0.113.9 -j no-such-chain")
                },
            )
            .unwrap();
        m.apply().unwrap();
        assert!(ns
            .save(be, false)
            .contains("-A l3agent-fw -s 192.0.2.1/32 -j ACCEPT"));
    }
}

/// A namespace deleted under a live manager: the next apply is a reported no-op.
#[test]
fn vanished_namespace_is_a_reported_noop() {
    for be in BACKENDS {
        let ns = TestNs::new("gone");
        let mut m = manager(&ns, be, "l3agent");
        m.apply().unwrap();
        add(&mut m, Family::V4, Table::Filter, "INPUT", "-j ACCEPT");
        l3agent_testkit::ok(&["ip", "netns", "del", &ns.name]);
        let r = m.apply().unwrap();
        assert!(r.namespace_gone && r.is_noop(), "{be}: {r:?}");
    }
}

/// Traffic counters of a wrapped chain, summed over the tables that have it, and zeroing.
#[test]
fn traffic_counters() {
    for be in BACKENDS {
        let ns = TestNs::new("count");
        let mut m = manager(&ns, be, "l3agent");
        m.model_mut()
            .add_chain(Family::V4, Table::Filter, "acct", true)
            .unwrap();
        add(&mut m, Family::V4, Table::Filter, "OUTPUT", "-j $acct");
        add(
            &mut m,
            Family::V4,
            Table::Filter,
            "acct",
            "-p icmp -j RETURN",
        );
        m.apply().unwrap();
        ns.ok(&["ping", "-c", "2", "-W", "2", "127.0.0.1"]);
        let c = m.traffic_counters("acct", true, true).unwrap().unwrap();
        assert_eq!(
            c.packets, 4,
            "{be}: two echo requests and two replies leave through OUTPUT"
        );
        assert!(c.bytes >= 4 * 84, "{be}: {c:?}");
        assert_eq!(
            m.traffic_counters("acct", true, false)
                .unwrap()
                .unwrap()
                .packets,
            0,
            "{be}: not zeroed"
        );
        assert!(m.traffic_counters("nope", true, false).unwrap().is_none());
    }
}

/// 50,000 rules in one namespace: cold apply, one-rule change without reading the kernel, and
/// a restart that finds nothing to do.
#[test]
fn fifty_thousand_rules() {
    for be in BACKENDS {
        let ns = TestNs::new("big");
        let mut m = manager(&ns, be, "l3agent");
        for c in 0..500 {
            let chain = format!("c{c}");
            m.model_mut()
                .add_chain(Family::V4, Table::Filter, &chain, true)
                .unwrap();
            add(
                &mut m,
                Family::V4,
                Table::Filter,
                "FORWARD",
                &format!("-j ${chain}"),
            );
            for r in 0..100 {
                let i = c * 100 + r;
                add(
                    &mut m,
                    Family::V4,
                    Table::Filter,
                    &chain,
                    &format!(
                        "-s 198.51.{}.{}/32 -p tcp --dport {} -j ACCEPT",
                        i / 256,
                        i % 256,
                        1000 + r
                    ),
                );
            }
        }
        m.apply().unwrap();
        add(
            &mut m,
            Family::V4,
            Table::Filter,
            "c7",
            "-s 203.0.113.1 -j DROP",
        );
        let r = m.apply().unwrap();
        assert!(!r.read_kernel, "{be}: incremental apply read the kernel");
        assert_eq!(
            r.sent[0].1, "*filter\n-A l3agent-c7 -s 203.0.113.1/32 -j DROP\nCOMMIT\n",
            "{be}"
        );
        let mut again = manager(&ns, be, "l3agent");
        again.set_model(m.model().clone());
        assert!(
            again.apply().unwrap().is_noop(),
            "{be}: restart found differences at 50k rules"
        );
        assert_eq!(ns.save(be, false).matches("\n-A l3agent-c").count(), 50_001);
    }
}

/// A removed unwrapped (shared) chain is really deleted once nothing else uses it, and kept
/// (with a note) while a foreign rule still lives in it.
#[test]
fn removed_shared_chains_are_deleted_when_unused() {
    for be in BACKENDS {
        let ns = TestNs::new("shared");
        let mut m = manager(&ns, be, "l3agent");
        for chain in ["shared-x", "shared-y"] {
            m.model_mut()
                .add_chain(Family::V4, Table::Filter, chain, false)
                .unwrap();
            let jump = format!("-j {chain}");
            m.model_mut()
                .add_rule(
                    Family::V4,
                    Table::Filter,
                    RuleSpec {
                        wrap: false,
                        ..RuleSpec::new("INPUT", &jump)
                    },
                )
                .unwrap();
            m.model_mut()
                .add_rule(
                    Family::V4,
                    Table::Filter,
                    RuleSpec {
                        wrap: false,
                        ..RuleSpec::new(chain, "-s 192.0.2.1 -j DROP")
                    },
                )
                .unwrap();
        }
        m.apply().unwrap();
        ns.ok(&[&format!("iptables-{be}"), "-A", "shared-y", "-j", "RETURN"]);
        m.refresh();
        for chain in ["shared-x", "shared-y"] {
            assert!(m
                .model_mut()
                .remove_chain(Family::V4, Table::Filter, chain, false)
                .unwrap());
        }
        let r = m.apply().unwrap();
        let saved = ns.save(be, false);
        assert!(
            !saved.contains("shared-x"),
            "{be}: released chain not deleted:\n{saved}"
        );
        assert!(
            saved.contains(":shared-y - [0:0]\n") && saved.contains("-A shared-y -j RETURN"),
            "{be}: {saved}"
        );
        assert!(
            !saved.contains("-A shared-y -s 192.0.2.1/32"),
            "{be}: our rule left in shared-y"
        );
        assert!(
            r.notes.iter().any(|n| n.contains("shared-y")),
            "{be}: {:?}",
            r.notes
        );
        assert!(m.check_convergence().unwrap().is_empty());
    }
}

/// The per-namespace lock files do not pile up: after N throwaway namespaces were used (one
/// of them deleted under its live manager) and deleted, the lock directory holds none of their
/// files, nor the leftover of a holder that died holding.
#[test]
fn lock_files_do_not_pile_up() {
    const N: usize = 12;
    let dir = std::env::temp_dir().join(format!("l3agent-locks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let opts = ExecOptions {
        lock_wait: Duration::from_secs(30),
        lock_dir: dir.clone(),
        ..ExecOptions::default()
    };
    for i in 0..N {
        let be = BACKENDS[i % BACKENDS.len()];
        let ns = TestNs::new("locks");
        let mut m = manager_with(&ns, be, "l3agent", opts.clone());
        add(&mut m, Family::V4, Table::Filter, "INPUT", "-j ACCEPT");
        assert!(!m.apply().unwrap().is_noop());
        if i == 0 {
            l3agent_testkit::ok(&["ip", "netns", "del", &ns.name]);
            add(&mut m, Family::V4, Table::Filter, "INPUT", "-j DROP");
            assert!(m.apply().unwrap().namespace_gone);
        }
        if i == N / 2 {
            // What a holder killed while holding leaves behind, for a namespace long gone.
            let id = NsId { dev: 0, ino: 1 };
            std::fs::write(lock_path(&dir, id), "").unwrap();
        }
    }
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        left.is_empty(),
        "{} of {N} lock files left: {left:?}",
        left.len()
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// The processes inside `ns` (their network namespace is its).
fn processes_in(ns: &TestNs) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(format!("/run/netns/{}", ns.name))
        .unwrap()
        .ino();
    let want = format!("net:[{ino}]");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| {
            std::fs::read_link(e.path().join("ns/net")).is_ok_and(|l| l.to_string_lossy() == want)
        })
        .map(|e| {
            std::fs::read_to_string(e.path().join("comm"))
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
        .collect()
}

/// A restore started ahead (nf_tables): the next apply of its family gives it its input
/// instead of starting a process, and the rule is in the kernel; one left unused is ended
/// having applied nothing, its process gone; one per family at a time. On the legacy
/// backend (whose restore may hold the host's xtables lock while waiting) none is started.
#[test]
fn a_restore_started_ahead_serves_the_next_apply_or_ends_having_done_nothing() {
    for be in BACKENDS {
        let ns = TestNs::new("ahead");
        let mut m = manager(&ns, be, "l3agent");
        m.model_mut()
            .add_chain(Family::V4, Table::Nat, "float", true)
            .unwrap();
        add(&mut m, Family::V4, Table::Nat, "PREROUTING", "-j $float");
        m.apply().unwrap();

        let started = m.runner().prestart(Family::V4).unwrap();
        assert_eq!(started, be == "nft", "{be}");
        if !started {
            assert!(processes_in(&ns).is_empty(), "{be}");
            continue;
        }
        assert_eq!(
            processes_in(&ns).len(),
            1,
            "the restore waits in the namespace"
        );
        assert!(!m.runner().prestart(Family::V4).unwrap(), "one per family");
        let before = m.stats();
        add(
            &mut m,
            Family::V4,
            Table::Nat,
            "float",
            "-d 192.0.2.10/32 -j DNAT --to-destination 198.51.100.10",
        );
        m.apply().unwrap();
        let used = m.stats().since(&before);
        assert_eq!((used.processes, used.restores), (0, 1), "{used:?}");
        let save = ns.save(be, false);
        assert!(
            save.contains(
                "-A l3agent-float -d 192.0.2.10/32 -j DNAT --to-destination 198.51.100.10"
            ),
            "{save}"
        );
        assert!(processes_in(&ns).is_empty());
        assert_eq!(m.runner().release_prestarted(), 0, "nothing left to end");

        // Unused: ended before any input, nothing applied.
        assert!(m.runner().prestart(Family::V4).unwrap());
        assert_eq!(m.runner().release_prestarted(), 1);
        assert!(processes_in(&ns).is_empty(), "{:?}", processes_in(&ns));
        assert_eq!(ns.save(be, false), save);
    }
}
