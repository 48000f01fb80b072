//! Platform code. Everything that calls Linux-only APIs lives in `sys/linux`; a macOS
//! passthrough would be `sys/macos` implementing the same `FileSystem` trait over the same
//! platform-neutral tables (`inode_table`, `handle_table`, `name`).

#[cfg(target_os = "linux")]
pub mod linux;
#[cfg(target_os = "linux")]
pub use linux::passthrough::PassthroughFs;
