//! Platform shims: what the rest of the VMM needs from the host OS, in one place per concern,
//! so shared code carries no scattered `cfg`s.
//!
//! - `event`: eventfd/epoll where they exist, a portable notifier/poller elsewhere.
//! - `file`: positional disk I/O and hole punching (fallocate, F_PUNCHHOLE, FSCTL_SET_ZERO_DATA).
//! - `mem`: the host page size and discarding guest RAM (madvise), for virtio-balloon (Linux, macOS).
//! - `random`: the host's cryptographic RNG.

pub mod event;
pub mod file;
#[cfg(any(target_os = "linux", target_os = "macos"))]
pub mod mem;
pub mod random;
