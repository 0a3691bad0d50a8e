//! Property tests of the planner: for random kernel states (with foreign rules, stale chains and
//! rules of ours) and random desired states,
//! - applying the plan to the current state succeeds and yields the desired state,
//! - foreign rules are untouched, in content and order,
//! - planning again finds nothing to do,
//! - render-then-parse of a save is the identity,
//! - the revert plan puts the state back.

use std::collections::BTreeSet;

use l3agent_iptables::kernel::KernelState;
use l3agent_iptables::kernel::Op;
use l3agent_iptables::plan::{created_chains, owns_chain, plan_family, revert_table};
use l3agent_iptables::{Family, IptablesModel, ModelOptions, RuleSpec, Table, WrapName};
use proptest::prelude::*;

const WRAP: &str = "w";

fn rule_text(k: u8) -> String {
    match k % 4 {
        0 => format!("-s 192.0.2.{k}/32 -j ACCEPT"),
        1 => format!("-p tcp --dport {} -j DROP", 1000 + u16::from(k)),
        2 => format!("-m limit --limit {}/min -j ACCEPT", u16::from(k) + 1),
        _ => format!("-d 198.51.100.{k} -j RETURN"),
    }
}

#[derive(Debug, Clone)]
struct Desired {
    chains: Vec<Vec<u8>>,
    jumps: Vec<(bool, u8)>,
    shared: Vec<(bool, bool, u8)>, // (chain FORWARD?, top?, rule)
}

fn desired() -> impl Strategy<Value = Desired> {
    (
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..6), 0..4),
        prop::collection::vec((any::<bool>(), any::<u8>()), 0..3),
        prop::collection::vec((any::<bool>(), any::<bool>(), any::<u8>()), 0..5),
    )
        .prop_map(|(chains, jumps, shared)| Desired {
            chains,
            jumps,
            shared,
        })
}

fn build(d: &Desired) -> IptablesModel {
    let mut m = IptablesModel::new(
        WrapName::new(WRAP).unwrap(),
        ModelOptions {
            ipv6: false,
            ..ModelOptions::default()
        },
    );
    for (i, rules) in d.chains.iter().enumerate() {
        let name = format!("c{i}");
        m.add_chain(Family::V4, Table::Filter, &name, true).unwrap();
        for r in rules {
            m.add_rule(
                Family::V4,
                Table::Filter,
                RuleSpec::new(&name, &rule_text(*r)),
            )
            .unwrap();
        }
    }
    for (top, c) in &d.jumps {
        if !d.chains.is_empty() {
            let target = format!("-j $c{}", usize::from(*c) % d.chains.len());
            m.add_rule(
                Family::V4,
                Table::Filter,
                RuleSpec {
                    top: *top,
                    ..RuleSpec::new("FORWARD", &target)
                },
            )
            .unwrap();
        }
    }
    for (fwd, top, r) in &d.shared {
        let chain = if *fwd { "FORWARD" } else { "INPUT" };
        m.add_rule(
            Family::V4,
            Table::Filter,
            RuleSpec {
                wrap: false,
                top: *top,
                ..RuleSpec::new(chain, &rule_text(*r))
            },
        )
        .unwrap();
    }
    m
}

/// A kernel state: foreign rules, plus what an earlier desired state `d` left (applied).
fn kernel(foreign: &[(bool, u8)], earlier: Option<&Desired>) -> KernelState {
    let mut save = String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:DOCKER - [0:0]\n");
    for (fwd, k) in foreign {
        let chain = if *fwd { "FORWARD" } else { "INPUT" };
        save.push_str(&format!("-A {chain} -s 203.0.113.{k}/32 -j DROP\n"));
    }
    save.push_str("-A DOCKER -j RETURN\nCOMMIT\n");
    let mut state = KernelState::parse_save(&save).unwrap();
    if let Some(d) = earlier {
        let m = build(d);
        let plan = plan_family(&state, &m, Family::V4, None);
        plan.apply_to(&mut state).unwrap();
    }
    state
}

fn foreign_of(state: &KernelState) -> Vec<(String, Vec<String>)> {
    let wrap = WrapName::new(WRAP).unwrap();
    let t = state.table(Table::Filter);
    t.chains()
        .iter()
        .filter(|c| !owns_chain(&wrap, &state.wraps, &c.name))
        .map(|c| {
            (
                c.name.clone(),
                c.rules
                    .iter()
                    .filter(|r| !r.is_marked_by(WRAP))
                    .map(|r| r.spec.clone())
                    .collect(),
            )
        })
        .filter(|(_, r): &(String, Vec<String>)| !r.is_empty())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn plan_reaches_desired_and_keeps_foreign(
        foreign in prop::collection::vec((any::<bool>(), any::<u8>()), 0..6),
        earlier in prop::option::of(desired()),
        want in desired(),
    ) {
        let mut state = kernel(&foreign, earlier.as_ref());
        let before = state.clone();
        let model = build(&want);
        let plan = plan_family(&state, &model, Family::V4, None);
        plan.apply_to(&mut state).map_err(|e| TestCaseError::fail(format!("plan does not apply: {e}\n{}", plan.render().0)))?;
        // Desired own chains are exactly the model's.
        for table in model.tables_of(Family::V4) {
            let d = model.table(Family::V4, table).unwrap();
            for (name, chain) in &d.chains {
                if chain.kind == l3agent_iptables::model::ChainKind::Own {
                    let got: Vec<&str> = state.table(table).chain(name).map(|c| c.rules.iter().map(|r| r.spec.as_str()).collect()).unwrap_or_default();
                    let want_specs: Vec<&str> = chain.rules().map(|r| r.spec.as_str()).collect();
                    prop_assert_eq!(got, want_specs, "{} {}", table, name);
                } else {
                    // Our marked rules in shared chains: exactly the desired ones, in order.
                    let got: Vec<u64> = state.table(table).chain(name).map(|c| c.rules.iter().filter_map(|r| r.marker.as_ref().filter(|m| m.wrap == WRAP).map(|m| m.hash)).collect()).unwrap_or_default();
                    let want_hashes: Vec<u64> = chain.rules().map(|r| r.hash).collect();
                    prop_assert_eq!(got, want_hashes, "{} {}", table, name);
                }
            }
        }
        // No stale chain of ours remains.
        let wrap = WrapName::new(WRAP).unwrap();
        for c in state.table(Table::Filter).chains() {
            if owns_chain(&wrap, &state.wraps, &c.name) {
                prop_assert!(model.table(Family::V4, Table::Filter).unwrap().chains.contains_key(&c.name), "stale {}", c.name);
            }
        }
        prop_assert_eq!(foreign_of(&before), foreign_of(&state));
        // Fixed point.
        let again = plan_family(&state, &model, Family::V4, None);
        prop_assert!(again.is_empty(), "second plan not empty:\n{}", again.render().0);
        // render . parse = id
        let reparsed = KernelState::parse_save(&state.to_save()).unwrap();
        prop_assert_eq!(&reparsed.to_save(), &state.to_save());
        // Revert puts every table back.
        let wraps: BTreeSet<String> = before.wraps.union(&state.wraps).cloned().collect();
        let ops = revert_table(Table::Filter, state.table(Table::Filter), before.table(Table::Filter), &wrap, &wraps)
            .map_err(TestCaseError::fail)?;
        let mut reverted = state.clone();
        reverted.apply(Table::Filter, &ops).map_err(|e| TestCaseError::fail(format!("revert does not apply: {e}")))?;
        let rules = |s: &KernelState| -> Vec<(String, Vec<String>)> {
            s.table(Table::Filter).chains().iter().map(|c| (c.name.clone(), c.rules.iter().map(|r| r.spec.clone()).collect())).collect::<Vec<_>>()
        };
        let mut a = rules(&reverted);
        let mut b = rules(&before);
        a.sort();
        b.sort();
        prop_assert_eq!(a, b);
    }

    #[test]
    fn a_plan_led_by_what_was_streamed_does_the_same(
        foreign in prop::collection::vec((any::<bool>(), any::<u8>()), 0..6),
        earlier in prop::option::of(desired()),
        want in desired(),
        cut in any::<prop::sample::Index>(),
    ) {
        // What a one-shot apply streams before its plan exists: the declarations of the chains
        // the plan will create, then the appended rules of those without top rules, chains
        // interleaved in another order than the plan's (each in its own order), any prefix.
        let state = kernel(&foreign, earlier.as_ref());
        let model = build(&want);
        let mut plan = plan_family(&state, &model, Family::V4, None);
        let created = created_chains(&state, &model, Family::V4, Table::Filter);
        let mut prefix = String::from("*filter\n");
        for c in &created {
            prefix.push_str(&Op::Declare(c.clone()).render());
            prefix.push('\n');
        }
        let table = model.table(Family::V4, Table::Filter).unwrap();
        let mut queues: Vec<Vec<&str>> = created
            .iter()
            .rev()
            .filter_map(|c| table.chains.get(c))
            .filter(|c| c.top.is_empty())
            .map(|c| c.bottom.iter().map(|r| r.spec.as_str()).collect())
            .collect();
        let names: Vec<&String> = created.iter().rev().filter(|c| table.chains.get(*c).is_some_and(|d| d.top.is_empty())).collect();
        let mut appends = Vec::new();
        while queues.iter().any(|q| !q.is_empty()) {
            for (q, name) in queues.iter_mut().zip(&names) {
                if !q.is_empty() {
                    appends.push(Op::Append((*name).clone(), q.remove(0).to_owned()).render());
                }
            }
        }
        for a in &appends[..cut.index(appends.len() + 1)] {
            prefix.push_str(a);
            prefix.push('\n');
        }
        let original = plan.clone();
        if plan.lead_with(&prefix) {
            prop_assert!(plan.render().0.starts_with(&prefix), "{}\n---\n{}", prefix, plan.render().0);
            let (mut a, mut b) = (state.clone(), state.clone());
            original.apply_to(&mut a).map_err(TestCaseError::fail)?;
            plan.apply_to(&mut b).map_err(TestCaseError::fail)?;
            prop_assert_eq!(a.to_save(), b.to_save());
        } else {
            prop_assert_eq!(&plan, &original);
            // Refused only where the plan does more to a created chain than declare and append.
            let touched = original.tables.iter().flat_map(|t| &t.ops).any(|o| matches!(&o.op,
                Op::Insert(c, ..) | Op::DeleteAt(c, _) | Op::DeleteSpec(c, _) | Op::Flush(c) | Op::DeleteChain(c)
                    if created.contains(c)));
            prop_assert!(created.is_empty() || touched, "refused:\n{}\n---\n{}", prefix, original.render().0);
        }
        // A prefix that swaps two appends of one chain, or leaves out a declaration, is refused.
        if let Some(i) = (1..appends.len()).find(|&i| appends[i].split(' ').nth(1) == appends[i - 1].split(' ').nth(1) && appends[i] != appends[i - 1]) {
            let mut bad = String::from("*filter\n");
            for c in &created {
                bad.push_str(&Op::Declare(c.clone()).render());
                bad.push('\n');
            }
            for (j, a) in appends.iter().enumerate().take(i + 1) {
                bad.push_str(if j == i - 1 { &appends[i] } else if j == i { &appends[i - 1] } else { a });
                bad.push('\n');
            }
            let mut p = original.clone();
            prop_assert!(!p.lead_with(&bad), "swapped:\n{}", bad);
            prop_assert_eq!(&p, &original);
        }
        if created.len() > 1 {
            let mut p = original.clone();
            let short: String = prefix.lines().enumerate().filter(|(n, _)| *n != 1).map(|(_, l)| format!("{l}\n")).collect();
            prop_assert!(!p.lead_with(&short));
            prop_assert_eq!(&p, &original);
        }
    }

    #[test]
    fn incremental_plan_equals_full_plan_effect(base in desired(), change in desired()) {
        // An apply that only looks at dirty chains reaches the same state as a full one.
        let mut state = kernel(&[(true, 1), (false, 2)], Some(&base));
        let mut model = build(&base);
        model.take_dirty(Family::V4);
        let target = build(&change);
        // Move `model` to `target` through the API: remove what is gone, add what is new.
        for table in [Table::Filter] {
            let names: Vec<String> = model.table(Family::V4, table).unwrap().chains.keys().cloned().collect();
            for n in names {
                if let Some(short) = n.strip_prefix("w-") {
                    if short.starts_with('c') && !target.table(Family::V4, table).unwrap().chains.contains_key(&n) {
                        model.remove_chain(Family::V4, table, short, true).unwrap();
                    }
                }
            }
        }
        for (i, rules) in change.chains.iter().enumerate() {
            let name = format!("c{i}");
            model.add_chain(Family::V4, Table::Filter, &name, true).unwrap();
            model.empty_chain(Family::V4, Table::Filter, &name, true).unwrap();
            for r in rules {
                model.add_rule(Family::V4, Table::Filter, RuleSpec::new(&name, &rule_text(*r))).unwrap();
            }
        }
        for chain in ["FORWARD", "INPUT"] {
            model.empty_chain(Family::V4, Table::Filter, chain, false).unwrap();
            model.empty_chain(Family::V4, Table::Filter, chain, true).unwrap();
        }
        // Defaults removed by empty_chain come back.
        model.add_rule(Family::V4, Table::Filter, RuleSpec { wrap: false, top: true, ..RuleSpec::new("FORWARD", "-j neutron-filter-top") }).unwrap();
        model.add_rule(Family::V4, Table::Filter, RuleSpec { wrap: false, top: true, ..RuleSpec::new("FORWARD", "-j $FORWARD") }).unwrap();
        model.add_rule(Family::V4, Table::Filter, RuleSpec { wrap: false, top: true, ..RuleSpec::new("INPUT", "-j $INPUT") }).unwrap();
        for (top, c) in &change.jumps {
            if !change.chains.is_empty() {
                let t = format!("-j $c{}", usize::from(*c) % change.chains.len());
                model.add_rule(Family::V4, Table::Filter, RuleSpec { top: *top, ..RuleSpec::new("FORWARD", &t) }).unwrap();
            }
        }
        for (fwd, top, r) in &change.shared {
            let chain = if *fwd { "FORWARD" } else { "INPUT" };
            model.add_rule(Family::V4, Table::Filter, RuleSpec { wrap: false, top: *top, ..RuleSpec::new(chain, &rule_text(*r)) }).unwrap();
        }
        let scope = model.take_dirty(Family::V4);
        let plan = plan_family(&state, &model, Family::V4, Some(&scope));
        plan.apply_to(&mut state).map_err(|e| TestCaseError::fail(format!("{e}\n{}", plan.render().0)))?;
        let full = plan_family(&state, &model, Family::V4, None);
        prop_assert!(full.is_empty(), "incremental left differences:\n{}", full.render().0);
    }
}
