//! Fuzzes virtio-net: the transmit path (guest-controlled descriptors, rings and frames,
//! each accepted frame round-tripped through the backend framing) and the receive path
//! (a hostile backend byte stream into guest-posted receive chains).
//! Run: `cargo +nightly fuzz run virtio_net_tx` from `vmm/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vmm::fuzzing::fuzz_net_tx(data);
    vmm::fuzzing::fuzz_net_rx(data);
});
