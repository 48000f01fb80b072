//! cargo fuzz run fuse_stream — a whole host→guest byte stream of `vmctl mount` (raw FUSE
//! requests framed by their own length fields) through the bounded stream reader, the real
//! decoder and the confined passthrough over a scratch share.
#![no_main]

use std::sync::{Arc, OnceLock};

use fs_share::transport::stream;
use fs_share::{PassthroughFs, ShareConfig};
use libfuzzer_sys::fuzz_target;

fn fs() -> &'static Arc<PassthroughFs> {
    static FS: OnceLock<Arc<PassthroughFs>> = OnceLock::new();
    FS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("fs-share-fuzz-stream-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch share");
        Arc::new(PassthroughFs::new(ShareConfig::new(&dir)).expect("share"))
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = stream::fuzz_session(fs(), data);
});
