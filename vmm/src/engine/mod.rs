//! Engines that run a VM: `builtin` (this VMM) and `qemu` (a fallback through QEMU).
//!
//! The `qemu` engine lives in [`qemu`] and is self-contained: it builds a QEMU command
//! line from a [`qemu::QemuConfig`], picks KVM or TCG ([`qemu::accel`]) and owns the QEMU
//! process ([`qemu::QemuVm`], killed on drop).

pub mod qemu;
