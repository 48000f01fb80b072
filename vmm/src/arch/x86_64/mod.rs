//! x86_64: memory layout, Linux direct boot (ELF vmlinux or bzImage), long-mode entry
//! state and MP tables.

#[cfg(all(unix, target_arch = "x86_64"))]
pub mod boot;
pub mod layout;
pub mod mptable;
pub mod regs;
