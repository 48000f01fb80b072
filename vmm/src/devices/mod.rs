//! The device model: buses, legacy PC devices and virtio.

pub mod bus;
pub mod legacy;
#[cfg(target_os = "linux")]
pub mod virtio;
