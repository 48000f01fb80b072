//! `vmm`: vmctl's virtual machine monitor.
//!
//! Owns the hypervisor abstraction (`Hypervisor` → `Vm` → `Vcpu`, with KVM, Hypervisor.framework
//! and WHP backends), guest memory, x86_64 and arm64 Linux direct boot, the device model
//! (PIO/MMIO bus, 8250 serial, i8042, virtio-mmio with in-process virtio devices) and the
//! *engines* that run a VM: `builtin` (this VMM) and `qemu`.

pub mod arch;
// Where a hypervisor backend and the virtio device model both build: Linux (KVM) and arm64
// macOS (Hypervisor.framework). Windows lacks virtio-queue (see Cargo.toml).
#[cfg(any(target_os = "linux", all(target_os = "macos", target_arch = "aarch64")))]
pub mod builtin;
pub mod devices;
pub mod engine;
pub mod logging;
// Fuzz entry points: for this crate's tests (fuzz smoke) and for `vmm/fuzz` (cargo-fuzz
// builds with `--cfg fuzzing`); not part of the API otherwise.
#[cfg(all(target_os = "linux", any(test, fuzzing)))]
pub mod fuzzing;
#[cfg(unix)]
/// Owner-only host sockets and the peer check.
pub use sandbox::hostsock;
pub mod hv;
pub mod ratelimit;
#[cfg(target_os = "linux")]
/// seccomp and dropping root for the processes that handle guest data.
pub use sandbox::{privileges, seccomp};
pub mod sys;
#[cfg(target_os = "linux")]
pub mod vhost_user;
