//! One guest frame into a fresh stack: `cargo +nightly fuzz run frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    usernet::fuzz::fuzz_frame(data);
});
