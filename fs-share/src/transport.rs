//! Transports that carry FUSE requests to the same `Server<PassthroughFs>`.
//!
//! `fusedev` (a host `/dev/fuse` mount) and `stream` (raw FUSE messages over a byte stream:
//! the guest side of `vmctl mount`) need only the FUSE server; `vhost_user` and `virtio` need
//! the vhost-user/virtio stack and come with the default `vhost-user` feature.

#[cfg(target_os = "linux")]
pub mod events;
#[cfg(target_os = "linux")]
pub mod fusedev;
#[cfg(target_os = "linux")]
pub mod stream;
#[cfg(all(target_os = "linux", feature = "vhost-user"))]
pub mod vhost_user;
#[cfg(all(target_os = "linux", feature = "vhost-user"))]
pub mod virtio;
