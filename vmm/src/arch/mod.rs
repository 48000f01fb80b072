//! Architecture-specific guest setup. The layout and boot structures are pure computations
//! over guest memory, so they are unit-tested on any host.

pub mod aarch64;
pub mod x86_64;
