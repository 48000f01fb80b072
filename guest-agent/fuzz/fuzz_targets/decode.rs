#![no_main]
//! Fuzz the control protocol decoder in both directions (host and guest input).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    guest_agent::fuzz::decode(data);
});
