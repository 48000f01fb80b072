//! Frames (split after each 0xfe byte) into one long-lived stack, so connections and
//! flows from earlier inputs meet later ones: `cargo +nightly fuzz run frames_stateful`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    usernet::fuzz::fuzz_frames(data);
});
