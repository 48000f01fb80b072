//! The Hypervisor.framework backend (arm64 macOS).
//!
//! `esr` and `psci` decode what a trapped arm64 guest asks for; they are pure and unit-tested
//! on every host. `ffi` binds the framework (every call's SAFETY documented there) and
//! `backend` implements the `Hypervisor`/`Vm`/`Vcpu` traits over it; both build only for
//! `aarch64-apple-darwin`.

pub mod esr;
pub mod psci;

#[cfg(all(target_os = "macos", target_arch = "aarch64"))]
mod backend;
#[cfg(all(target_os = "macos", target_arch = "aarch64"))]
mod ffi;
#[cfg(all(target_os = "macos", target_arch = "aarch64"))]
pub use backend::Hvf;
