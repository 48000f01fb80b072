//! `vmctl` library: the parts of the CLI other crates (the e2e tests) call directly.
//!
//! - [`image`]: builds and caches the VM assets (kernel, root image) under
//!   `~/.cache/vmctl`, keyed by a hash of their inputs.
//! - [`instance`], [`config`]: named instances, their directories and `config.toml`.
//! - [`supervisor`]: the per-instance process that owns the VM, its device backends, the
//!   forwarded Docker socket, port forwards and the control API.
//! - [`logview`]: logs capped and rotated while running, followed, shown terminal-safe.
//! - [`agent`]: the host side of the guest agent's control protocol.
//! - [`vsock`]: the hybrid-vsock `CONNECT` handshake into the guest, blocking and async.
//! - `fuse_mount` (Linux): the host side of `vmctl mount`, a FUSE mount served over a stream.
//! - `host_tools`: which tools are on `$PATH`, the user's name.
//! - `progress`: what long operations print while they run (one updating line on a terminal).

#[cfg(unix)]
pub mod agent;
pub mod config;
#[cfg(target_os = "linux")]
pub mod fuse_mount;
#[cfg(unix)]
pub mod host_tools;
#[cfg(unix)]
pub mod image;
#[cfg(unix)]
pub mod instance;
#[cfg(unix)]
pub mod logview;
#[cfg(unix)]
pub mod progress;
#[cfg(unix)]
pub mod supervisor;
#[cfg(unix)]
pub mod terminal;
#[cfg(unix)]
pub mod vsock;
