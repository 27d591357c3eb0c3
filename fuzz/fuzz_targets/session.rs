//! STOMP frames in any order, to one session: no panic, and the session keeps its
//! promises (see `pushcenter_node::testing::fuzz_session`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pushcenter_node::testing::fuzz_session(data));
