//! The node's WebSocket reader on arbitrary client bytes: no panic, the same result
//! however the input is split, bounded buffering (see
//! `pushcenter_websocket::fuzz_reader`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pushcenter_websocket::fuzz_reader(data));
