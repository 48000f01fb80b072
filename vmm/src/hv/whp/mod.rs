//! The Windows Hypervisor Platform backend (x86_64 Windows).
//!
//! `exits` decodes WHP's exit records and encodes registers, `ioapic` is the userspace IOAPIC
//! that WHP lacks; both are pure and unit-tested on every host. `ffi` wraps the `windows`
//! crate's WinHvPlatform and WinHvEmulation calls (every call's SAFETY documented there) and
//! `backend` implements the `Hypervisor`/`Vm`/`Vcpu` traits; both build only for Windows.

pub mod exits;
pub mod ioapic;

#[cfg(all(windows, target_arch = "x86_64"))]
mod backend;
#[cfg(all(windows, target_arch = "x86_64"))]
mod ffi;
#[cfg(all(windows, target_arch = "x86_64"))]
pub use backend::Whp;
