//! `cargo fuzz run save_parser`: the iptables-save parser never panics, and what it parses
//! renders back to text that parses to the same state.
#![no_main]

use l3agent_iptables::kernel::KernelState;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(state) = KernelState::parse_save(text) {
            let rendered = state.to_save();
            let again = KernelState::parse_save(&rendered).expect("rendered save parses");
            assert_eq!(again.to_save(), rendered);
        }
    }
});
