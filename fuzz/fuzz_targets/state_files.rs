//! `cargo fuzz run state_files`: one state directory record (the first byte picks which, see
//! `l3agent_fuzz::state::KINDS`) read back by `State::records`, `State::last_applied` and
//! `records::allocate`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| l3agent_fuzz::state::state_files(data));
