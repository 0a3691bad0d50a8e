//! `cargo fuzz run rules_file_json`: an iptables rules file in JSON, read by `l3agent_doc::parse`,
//! then `RulesFile::into_model`.
#![no_main]

use l3agent_doc::Format;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| l3agent_fuzz::rules_file(data, Format::Json));
