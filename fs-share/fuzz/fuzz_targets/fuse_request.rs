//! cargo fuzz run fuse_request — raw FUSE requests (guest-controlled bytes) through the real
//! decoder and the confined passthrough over a scratch share.
#![no_main]

use std::sync::OnceLock;

use fs_share::fuzz::FuzzTarget;
use libfuzzer_sys::fuzz_target;

fn target() -> &'static FuzzTarget {
    static T: OnceLock<FuzzTarget> = OnceLock::new();
    T.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("fs-share-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch share");
        FuzzTarget::new(&dir).expect("fuzz target")
    })
}

fuzz_target!(|data: &[u8]| {
    target().run(data);
});
