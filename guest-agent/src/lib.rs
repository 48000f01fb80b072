//! `guest-agent` library: the host ↔ guest contract, and nothing else: the versioned wire
//! protocol ([`protocol`]) and the agent's kernel command line ([`cmdline`]).
//!
//! The host side (`vmm`, `cli`) depends on this crate for those only; the PID-1
//! code lives in the `guest-agent` binary (src/main.rs, src/agent/) and is never linked
//! into the host.

pub mod cmdline;
// Fuzz entry point: for this crate's tests (fuzz smoke) and `fuzz/` (cargo-fuzz builds with
// `--cfg fuzzing`); not part of the API otherwise.
#[cfg(any(test, fuzzing))]
pub mod fuzz;
pub mod protocol;
