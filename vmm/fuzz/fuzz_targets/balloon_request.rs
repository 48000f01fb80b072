//! Fuzzes the virtio-balloon inflate and free-page-reporting paths with guest-controlled
//! descriptors, rings and PFN lists; accepted ranges are really released from the fuzz RAM.
//! Run: `cargo +nightly fuzz run balloon_request` from `vmm/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vmm::fuzzing::fuzz_balloon_queue(data);
});
