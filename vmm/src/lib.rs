//! `vmm`: vmctl's virtual machine monitor.
//!
//! Owns the hypervisor abstraction (`Hypervisor` → `Vm` → `Vcpu`, with a KVM backend on
//! Linux), guest memory, x86_64 Linux direct boot, the device model (PIO/MMIO bus, 8250
//! serial, i8042, virtio-mmio with in-process virtio devices) and the *engines* that run a
//! VM: `builtin` (this VMM) and `qemu`.

pub mod arch;
#[cfg(target_os = "linux")]
pub mod builtin;
pub mod devices;
pub mod engine;
#[cfg(target_os = "linux")]
pub mod fuzzing;
pub mod hv;
pub mod ratelimit;
pub mod sys;
#[cfg(target_os = "linux")]
pub mod vhost_user;
