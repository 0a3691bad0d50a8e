//! `cargo fuzz run restore_error`: iptables-restore's error output (first line: how many lines
//! its input had) through `restore_error::failing_line`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| l3agent_fuzz::restore_error(data));
