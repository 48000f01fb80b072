//! The device model: buses, legacy PC devices and virtio.

pub mod bus;
pub mod cmos;
pub mod legacy;
// virtio-queue does not build on Windows (it enables vm-memory's unix-only `rawfd` feature).
#[cfg(unix)]
pub mod virtio;
