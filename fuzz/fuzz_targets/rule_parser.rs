//! `cargo fuzz run rule_parser`: rule text never panics the tokenizer/canonicalizer, and an
//! accepted rule never renders a line break or NUL into the restore input.
#![no_main]

use l3agent_iptables::rule::ParsedRule;
use l3agent_iptables::Family;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        for family in [Family::V4, Family::V6] {
            if let Ok(rule) = ParsedRule::parse("rule", family, text, &|n| Ok(format!("w-{n}"))) {
                let line = rule.render(&["c"]);
                assert!(!line.contains(['\n', '\r', '\0']), "{line:?}");
            }
        }
    }
});
