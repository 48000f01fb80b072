//! Platform shims: what the rest of the VMM needs from the host OS, in one place per concern,
//! so shared code carries no scattered `cfg`s.
//!
//! - `x86_boot`: x86_64 Linux loading without linux-loader (which does not build on Windows).

pub mod x86_boot;
