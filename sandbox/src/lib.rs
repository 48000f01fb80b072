//! What keeps a process that handles guest data (`vmm`, `vmm-vsock-backend`, `usernet`,
//! `fs-share`) from reaching further than its job, in one place for all of them (they do not
//! depend on each other):
//!
//! - [`hostsock`]: host unix sockets only their owner can reach, peers checked by uid;
//! - [`seccomp`]: the system calls such a process may no longer make once it serves a VM;
//! - [`privileges`]: giving up root when vmctl was started as root.
//!
//! See SECURITY.md at the top of the repository for the threat model.

#[cfg(unix)]
pub mod hostsock;
#[cfg(all(target_os = "linux", feature = "seccomp"))]
pub mod privileges;
#[cfg(all(target_os = "linux", feature = "seccomp"))]
pub mod seccomp;

/// Errors of [`lock_down`].
#[cfg(all(target_os = "linux", feature = "seccomp"))]
#[derive(Debug, thiserror::Error)]
pub enum LockdownError {
    #[error(transparent)]
    Privileges(#[from] privileges::PrivError),
    #[error(transparent)]
    Seccomp(#[from] seccomp::SandboxError),
}

/// The end of a backend's set-up, once its sockets, files and devices are open: give up
/// root ([`privileges::drop_root`]; a no-op for a user), then install the seccomp filter.
/// Returns the user it became, if it was root.
#[cfg(all(target_os = "linux", feature = "seccomp"))]
pub fn lock_down(
    profile: seccomp::Profile,
) -> Result<Option<privileges::BackendUser>, LockdownError> {
    let user = privileges::drop_root()?;
    seccomp::apply(profile)?;
    Ok(user)
}
