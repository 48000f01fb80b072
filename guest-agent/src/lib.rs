//! `guest-agent` library: the host ↔ guest contract, and nothing else: the versioned wire
//! protocol ([`protocol`]) and the agent's kernel command line ([`cmdline`]).
//!
//! The host side (`vmm`, `cli`) depends on this crate for those only; the PID-1
//! code lives in the `guest-agent` binary (src/main.rs, src/agent/) and is never linked
//! into the host.

pub mod cmdline;
pub mod protocol;

/// Fuzz entry point (used by `fuzz/` and by the fuzz smoke test): decode arbitrary bytes
/// as a stream of frames in both directions; must never panic.
pub fn fuzz_decode(data: &[u8]) {
    let mut reader = protocol::FrameReader::new(data);
    for _ in 0..64 {
        match reader.read::<protocol::Request>() {
            Ok(Some(req)) => {
                let _ = protocol::encode(&req);
            }
            Ok(None) => break,
            Err(e) => {
                let _ = e.to_string();
                if !e.is_recoverable() {
                    break;
                }
            }
        }
    }
    let mut reader = protocol::FrameReader::new(data);
    while let Ok(Some(ev)) = reader.read::<protocol::Response>() {
        let _ = protocol::encode(&ev);
    }
}
