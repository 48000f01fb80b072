//! Linux host support: syscall wrappers and the confined passthrough filesystem.

mod fs_impl;
pub mod ops;
pub mod passthrough;
pub mod watch;
