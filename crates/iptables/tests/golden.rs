//! Golden tests on real `iptables-save` captures of both backends (the commands that produced
//! them are at the top of each file in tests/golden/): the capture parses, renders back, and is
//! the fixed point of the rules file it was applied from.

use l3agent_iptables::kernel::KernelState;
use l3agent_iptables::plan::{owns_chain, plan_family};
use l3agent_iptables::spec::RulesFile;
use l3agent_iptables::{Family, IptablesModel, RuleSpec, Table};
use proptest::prelude::*;

fn golden(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/golden/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn model() -> IptablesModel {
    let f: RulesFile = serde_json::from_str(&golden("rules.json")).unwrap();
    f.into_model().unwrap()
}

const CAPTURES: [(&str, Family); 4] = [
    ("nft-v4.save", Family::V4),
    ("nft-v6.save", Family::V6),
    ("legacy-v4.save", Family::V4),
    ("legacy-v6.save", Family::V6),
];

#[test]
fn captures_are_the_fixed_point_of_their_rules_file() {
    let m = model();
    for (file, family) in CAPTURES {
        let state = KernelState::parse_save(&golden(file)).unwrap();
        let plan = plan_family(&state, &m, family, None);
        assert!(plan.is_empty(), "{file}: would send\n{}", plan.render().0);
        let again = KernelState::parse_save(&state.to_save()).unwrap();
        assert_eq!(again.to_save(), state.to_save(), "{file}");
    }
}

#[test]
fn one_change_is_one_line() {
    let mut m = model();
    m.remove_rule(
        Family::V4,
        Table::Filter,
        RuleSpec {
            comment: Some("ssh"),
            ..RuleSpec::new("INPUT", "-p tcp --dport 22 -j ACCEPT")
        },
    )
    .unwrap();
    for file in ["nft-v4.save", "legacy-v4.save"] {
        let state = KernelState::parse_save(&golden(file)).unwrap();
        let plan = plan_family(&state, &m, Family::V4, None);
        assert_eq!(
            plan.render().0,
            "*filter\n-D l3agent-INPUT 1\nCOMMIT\n",
            "{file}"
        );
    }
}

#[test]
fn foreign_lookalikes_are_not_ours() {
    let state = KernelState::parse_save(&golden("legacy-v4.save")).unwrap();
    let wrap = model().wrap().clone();
    let filter = state.table(Table::Filter);
    assert!(!owns_chain(&wrap, &state.wraps, "DOCKER"));
    let docker = filter.chain("DOCKER").unwrap();
    assert_eq!(
        docker.rules[0].spec,
        "-m comment --comment \"x l3agent y\" -j RETURN"
    );
    assert!(docker.rules[0].marker.is_none());
    let input = filter.chain("INPUT").unwrap();
    assert_eq!(
        input
            .rules
            .iter()
            .filter(|r| r.is_marked_by("l3agent"))
            .count(),
        1
    );
    assert_eq!(
        input
            .rules
            .iter()
            .filter(|r| !r.is_marked_by("l3agent"))
            .count(),
        1
    );
}

proptest! {
    /// Whatever the text, the parser returns (it is fed the output of other programs).
    #[test]
    fn save_parser_never_panics(text in "[*:\\-A-Za-z0-9 \"\\\\\n#\\[\\]]{0,400}") {
        if let Ok(state) = KernelState::parse_save(&text) {
            let again = KernelState::parse_save(&state.to_save()).unwrap();
            prop_assert_eq!(again.to_save(), state.to_save());
        }
    }

    #[test]
    fn rule_parser_never_panics(text in "\\PC{0,120}") {
        let _ = l3agent_iptables::rule::ParsedRule::parse("rule", Family::V4, &text, &|n| Ok(format!("w-{n}")));
    }
}
