//! Fuzzes the virtio-vsock tx path (guest-controlled descriptors, rings and packets) through
//! the real connection table, with a host listener on port 1024 so REQUESTs can connect.
//! Run: `cargo +nightly fuzz run vsock_packet` from `vmm/`.
#![no_main]

use std::os::unix::net::UnixListener;
use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use vmm::devices::virtio::vsock::Muxer;

struct Harness {
    _dir: tempfile::TempDir,
    muxer: Muxer,
    listener: UnixListener,
}

fn harness() -> &'static Mutex<Harness> {
    static H: OnceLock<Mutex<Harness>> = OnceLock::new();
    H.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let muxer = Muxer::new(3, &dir.path().join("v.sock")).expect("vsock muxer");
        let listener = UnixListener::bind(dir.path().join("v.sock_1024")).expect("listener");
        listener.set_nonblocking(true).expect("non-blocking listener");
        Mutex::new(Harness {
            _dir: dir,
            muxer,
            listener,
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let mut h = harness().lock().unwrap_or_else(|p| p.into_inner());
    vmm::fuzzing::fuzz_vsock_packet(data, &mut h.muxer);
    while h.listener.accept().is_ok() {}
});
