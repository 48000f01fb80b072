//! Fuzzes the in-process virtio-fs request path: guest-controlled descriptors, rings and FUSE
//! requests through the device's vm-memory 0.17 view, fs-share's chain checks, the FUSE server
//! and the confined passthrough over a scratch share (which the fuzzer may modify freely).
//! Run: `cargo +nightly fuzz run virtio_fs_request` from `vmm/`.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;

fn share() -> &'static Arc<fs_share::PassthroughFs> {
    static SHARE: OnceLock<(tempfile::TempDir, Arc<fs_share::PassthroughFs>)> = OnceLock::new();
    &SHARE
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("temp share");
            std::fs::write(dir.path().join("hello.txt"), b"hello").expect("seed file");
            let fs = vmm::fuzzing::fuzz_fs_share(dir.path()).expect("open the share");
            (dir, fs)
        })
        .1
}

fuzz_target!(|data: &[u8]| {
    vmm::fuzzing::fuzz_fs_request(data, share());
});
