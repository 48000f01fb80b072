//! Transports that carry FUSE requests to the same `Server<PassthroughFs>`.

#[cfg(target_os = "linux")]
pub mod events;
#[cfg(target_os = "linux")]
pub mod fusedev;
#[cfg(target_os = "linux")]
pub mod vhost_user;
#[cfg(target_os = "linux")]
pub mod virtio;
