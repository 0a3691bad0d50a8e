//! `cargo fuzz run router_config_yaml`: a host config in YAML, read by `l3agent_doc::parse`,
//! validated, compiled (see `l3agent_fuzz::router_config` for what is checked).
#![no_main]

use l3agent_doc::Format;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| l3agent_fuzz::router_config(data, Format::Yaml));
