//! vhost-user backends served by this crate's device cores, for the qemu engine.
//!
//! - [`vsock`]: vhost-user-vsock (QEMU's `vhost-user-vsock-device`/`-pci`) over the same
//!   [`crate::devices::virtio::vsock::Muxer`] as the in-process device.

pub mod vsock;
