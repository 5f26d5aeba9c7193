//! Fuzz the HTTP API's request bodies: the first byte picks the method, the rest is the
//! body, handled as `POST /api/<method>` handles it before it reaches the hub. Checks: no
//! panic, whatever the JSON (deep nesting, huge numbers, odd escapes, invalid UTF-8).
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_server::api::{check_request, METHODS};

fuzz_target!(|data: &[u8]| {
    let Some((pick, body)) = data.split_first() else {
        return;
    };
    let method = METHODS[*pick as usize % METHODS.len()];
    let _ = check_request(method, body);
});
