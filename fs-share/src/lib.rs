//! `fs-share`: the virtio-fs server.
//!
//! A FUSE server and a passthrough filesystem confined to one shared host folder, served as
//! a vhost-user-fs backend (`fs-share serve`, for QEMU's `vhost-user-fs-pci` and the builtin
//! VMM) and mountable on the host through `/dev/fuse` (`fs-share mount`, for tests and for
//! exposing a VM's files on the host). Both transports drive the same `Server` and the same
//! filesystem, and so does `transport::stream` (raw FUSE messages over a byte stream), which
//! the guest agent uses to serve guest folders to `vmctl mount`.
//!
//! Cargo features: `vhost-user` (default: the vhost-user-fs backend and its virtio stack),
//! `virtio` (included in `vhost-user`: descriptor-chain request handling only, what the builtin
//! VMM's in-process virtio-fs device links) and `cli` (default: the `fs-share` binary's clap
//! front end). Without them the library is the
//! passthrough, the FUSE server and the `/dev/fuse` and stream transports: what the static
//! guest agent links.
//!
//! # What is reused and what is written here (and why)
//!
//! - **FUSE decoding, the `FileSystem` trait and both transports' plumbing come from
//!   `fuse-backend-rs`** (rust-vmm/cloud-hypervisor, also used by Nydus/Kata): its
//!   `api::server::Server` decodes every FUSE opcode from a `/dev/fuse` buffer or a virtio
//!   descriptor chain into calls on `api::filesystem::FileSystem` (one method per op, default
//!   ENOSYS) — exactly the virtiofsd split. The alternatives were weighed: `fuser` only speaks
//!   `/dev/fuse` (no descriptor-chain reader/writer, so virtio-fs would need a second decoder);
//!   the `virtiofsd` crate is a binary whose library surface is not a stable API; writing the
//!   decoder by hand would duplicate ~3k lines of ABI structs with no gain. The `FileSystem`
//!   trait is the project's boundary: everything below it is ours.
//! - **Written here:** the passthrough (`sys::linux`) and its confinement (openat2
//!   `RESOLVE_BENEATH|RESOLVE_NO_MAGICLINKS|RESOLVE_NO_SYMLINKS`, single-component names only,
//!   O_PATH inode fds, refusal of devices/setuid/privileged xattrs), the bounded inode and
//!   open-file tables (`inode_table`, `handle_table`) with an fd LRU backed by kernel file
//!   handles, ownership mapping (`config::OwnerMap`), cache modes (`config::CachePolicy`), the
//!   vhost-user-fs backend glue over `vhost-user-backend` (`transport::vhost_user`) and the
//!   `/dev/fuse` worker loop (`transport::fusedev`). fuse-backend-rs also ships a passthrough,
//!   but it does not use openat2, keeps one fd per inode unless told otherwise, and the
//!   confinement is the part this project must own and be able to explain.
//!
//! # Ops
//!
//! lookup, forget, getattr/setattr, readlink/symlink, mknod/mkdir, unlink/rmdir, rename with
//! `RENAME_NOREPLACE|EXCHANGE|WHITEOUT`, link, open/create/read/write/flush/fsync/release,
//! opendir/readdir/readdirplus/fsyncdir/releasedir, statfs, xattrs, fallocate, lseek
//! (SEEK_DATA/SEEK_HOLE). Not implemented server-side (the client kernel falls back by
//! itself, so they still work in the guest): POSIX/flock locks (local to the guest kernel
//! because `POSIX_LOCKS`/`FLOCK_LOCKS` are not negotiated — correct for one VM per share),
//! `copy_file_range` (fuse-backend-rs' trait has no such op; the kernel falls back to
//! read/write), `access` (the client always mounts with `default_permissions`).
//!
//! # Host file events
//!
//! See `events`: host inotify → JSON lines on `serve --events-socket` → replayed by the guest
//! agent with `utimensat`, so guest inotify watchers see host edits.
//!
//! # Platforms
//!
//! Linux-only calls live in `sys::linux`; the rest (`config`, `inode_table`, `handle_table`,
//! `name`) is platform-neutral so a macOS passthrough can be added as `sys::macos`.

// `tests/common/wire.rs` names the crate `fs_share`; the fuzz smoke test includes it.
#[cfg(test)]
extern crate self as fs_share;

pub mod config;
pub mod events;
// Fuzz entry point: for this crate's tests and `fuzz/` (cargo-fuzz builds with `--cfg
// fuzzing`); not part of the API otherwise.
#[cfg(any(test, fuzzing))]
pub mod fuzz;
pub mod handle_table;
pub mod inode_table;
pub mod name;
pub mod sys;
pub mod transport;

pub use config::{CachePolicy, OwnerMap, ShareConfig};
#[cfg(target_os = "linux")]
pub use fuse_backend_rs::abi::fuse_abi;
/// The FUSE-decode ↔ filesystem boundary (`FileSystem`, `Context`, `Entry`, …): a new
/// platform passthrough implements this trait.
#[cfg(target_os = "linux")]
pub use fuse_backend_rs::api::filesystem;
#[cfg(target_os = "linux")]
pub use sys::PassthroughFs;

/// Errors opening a share.
#[derive(Debug, thiserror::Error)]
pub enum PassthroughError {
    #[error("Cannot open shared folder {0}")]
    OpenShare(std::path::PathBuf, #[source] std::io::Error),
    #[error("Shared folder {0} is not a directory")]
    NotADirectory(std::path::PathBuf),
    #[error("Cannot open /proc/self/fd")]
    Proc(#[source] std::io::Error),
}
