//! Fuzzes the virtio-blk request path with guest-controlled descriptors, rings and buffers.
//! Run: `cargo +nightly fuzz run virtio_blk_request` from `vmm/`.
#![no_main]

use std::fs::File;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;

fn disk() -> &'static Arc<File> {
    static DISK: OnceLock<(tempfile::NamedTempFile, Arc<File>)> = OnceLock::new();
    &DISK
        .get_or_init(|| {
            let f = tempfile::NamedTempFile::new().expect("temp disk");
            f.as_file().set_len(64 * 1024).expect("size temp disk");
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(f.path())
                .expect("open temp disk");
            (f, Arc::new(file))
        })
        .1
}

fuzz_target!(|data: &[u8]| {
    vmm::fuzzing::fuzz_blk_request(data, disk());
});
