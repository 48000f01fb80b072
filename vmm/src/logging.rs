//! The host binaries' logging: `tracing` with a `RUST_LOG`-style filter, written to stderr
//! (stdout may carry the guest's serial console). `log` records of the rust-vmm crates
//! (virtio-queue, vhost-user-backend) reach the same subscriber.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the subscriber: `RUST_LOG` when set, else `default_filter` (e.g. `"warn"`).
/// Colours only on a terminal. A second call does nothing.
pub fn init(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
