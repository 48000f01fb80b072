//! Fuzz entry points for the frame input path (used by `fuzz/` and the fuzz smoke test).

use std::sync::Mutex;

use crate::{Config, UserNet};

/// Feeds `data` as one guest frame to a fresh stack and processes it. Never panics.
pub fn fuzz_frame(data: &[u8]) {
    if let Ok(mut net) = UserNet::new(fuzz_config()) {
        net.receive_frame(data);
        net.process();
        let mut buf = vec![0u8; 65536];
        while net.next_frame(&mut buf).is_some() {}
    }
}

/// Feeds every `data` chunk (split after each 0xfe byte) as frames to one shared stack, so
/// state built by earlier frames (connections, flows) meets later ones.
pub fn fuzz_frames(data: &[u8]) {
    static NET: Mutex<Option<UserNet>> = Mutex::new(None);
    let Ok(mut guard) = NET.lock() else {
        return;
    };
    if guard.is_none() {
        *guard = UserNet::new(fuzz_config()).ok();
    }
    let Some(net) = guard.as_mut() else {
        return;
    };
    for frame in data
        .split(|_| false)
        .flat_map(|d| d.split_inclusive(|b| *b == 0xfe))
    {
        net.receive_frame(frame);
    }
    net.process();
    let mut buf = vec![0u8; 65536];
    while net.next_frame(&mut buf).is_some() {}
}

fn fuzz_config() -> Config {
    Config {
        // Only the gateway (host loopback) is reachable, and DNS has no upstream: fuzzing
        // never sends traffic off this machine.
        outbound: false,
        resolv_conf: "/nonexistent/resolv.conf".into(),
        ..Config::default()
    }
}
