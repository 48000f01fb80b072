//! arm64: guest memory layout, `Image` kernel loading and placement, and the flattened device
//! tree that describes the machine to Linux (there is no ACPI and no firmware). Everything here
//! is a pure computation over guest memory, so it builds and is unit-tested on every host; the
//! Hypervisor.framework backend (`hv::hvf`) is what runs it.

pub mod boot;
pub mod fdt;
pub mod image;
pub mod layout;

#[cfg(test)]
mod qemu_tests;
