//! Transports that carry FUSE requests to the same `Server<PassthroughFs>`.
//!
//! `fusedev` (a host `/dev/fuse` mount) and `stream` (raw FUSE messages over a byte stream:
//! the guest side of `vmctl mount`) need only the FUSE server; `virtio` (descriptor chains, the
//! `virtio` feature: the builtin VMM's in-process device) and `vhost_user` (the default
//! `vhost-user` feature, which includes `virtio`) need the virtio stack.

#[cfg(target_os = "linux")]
pub mod events;
#[cfg(target_os = "linux")]
pub mod fusedev;
#[cfg(target_os = "linux")]
pub mod stream;
#[cfg(all(target_os = "linux", feature = "vhost-user"))]
pub mod vhost_user;
#[cfg(all(target_os = "linux", feature = "virtio"))]
pub mod virtio;
