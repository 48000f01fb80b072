//! Giving up root. vmctl runs as the user; started as root anyway (sudo, CI, a root
//! shell), its backends would otherwise face the guest as root, and one device bug would
//! hand the guest the host. So a backend opens what it needs (sockets, disks, `/dev/kvm`)
//! and then:
//!
//! - [`drop_root`]: becomes an unprivileged user (`nobody`, or the user named by
//!   `VMCTL_BACKEND_USER`) with no supplementary groups and no capabilities — `usernet`,
//!   `vmm-vsock-backend`, the builtin `vmm` (QEMU does the same with `-run-with user=`);
//! - [`keep_file_capabilities`]: `fs-share` serves root's files as root (ownership of what
//!   the guest creates, files only root may read), so it stays uid 0 but keeps only the
//!   file capabilities that needs and drops the rest (admin, network, ptrace, modules,
//!   raw I/O …) from every set, the bounding set included, as virtiofsd does.
//!
//! Sockets keep accepting their owner (root's supervisor) afterwards: [`drop_root`]
//! records the owner first ([`crate::hostsock::owner_uid`]).

use std::ffi::CString;

use caps::{CapSet, Capability, CapsHashSet};

/// Errors giving up privileges.
#[derive(Debug, thiserror::Error)]
pub enum PrivError {
    #[error("No user {0:?} to run the backends as (set VMCTL_BACKEND_USER to an existing unprivileged user)")]
    NoUser(String),
    #[error("Cannot become user {user} (uid {uid}, gid {gid})")]
    Switch {
        user: String,
        uid: u32,
        gid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("Still able to regain root after switching to {0}")]
    Regained(String),
    #[error("Cannot drop capabilities")]
    Caps(#[source] caps::errors::CapsError),
}

/// The user backends run as once they give up root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// `VMCTL_BACKEND_USER` or `nobody`, looked up in the user database.
pub fn backend_user() -> Result<BackendUser, PrivError> {
    let name = std::env::var("VMCTL_BACKEND_USER").unwrap_or_else(|_| "nobody".to_string());
    let cname = CString::new(name.clone()).map_err(|_| PrivError::NoUser(name.clone()))?;
    let mut pw = std::mem::MaybeUninit::<libc::passwd>::uninit();
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwnam_r with a NUL-terminated name, a passwd out struct, a buffer of the
    // stated length and an out pointer, all live for the call; the result is read only when
    // `out` is non-null (then `pw` is initialised).
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            pw.as_mut_ptr(),
            buf.as_mut_ptr(),
            buf.len(),
            &mut out,
        )
    };
    if rc != 0 || out.is_null() {
        return Err(PrivError::NoUser(name));
    }
    // SAFETY: getpwnam_r succeeded and set `out`, so `pw` is initialised.
    let pw = unsafe { pw.assume_init() };
    if pw.pw_uid == 0 {
        return Err(PrivError::NoUser(name));
    }
    Ok(BackendUser {
        name,
        uid: pw.pw_uid,
        gid: pw.pw_gid,
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn check(rc: libc::c_int, user: &BackendUser) -> Result<(), PrivError> {
    if rc == 0 {
        return Ok(());
    }
    Err(PrivError::Switch {
        user: user.name.clone(),
        uid: user.uid,
        gid: user.gid,
        source: std::io::Error::last_os_error(),
    })
}

/// When running as root, becomes [`backend_user`] for good (real, effective and saved
/// ids; no supplementary groups; no capabilities left). Returns who it became, or `None`
/// when not root (nothing to give up). glibc applies the id changes to every thread.
pub fn drop_root() -> Result<Option<BackendUser>, PrivError> {
    if !is_root() {
        return Ok(None);
    }
    let user = backend_user()?;
    // Sockets bound so far belong to root's instance: keep accepting root after the switch.
    let _ = crate::hostsock::owner_uid();
    let groups = [user.gid];
    // SAFETY: setgroups with a one-element array that lives for the call.
    check(unsafe { libc::setgroups(1, groups.as_ptr()) }, &user)?;
    // SAFETY: a plain id-setting call; its result is checked.
    let rc = unsafe { libc::setresgid(user.gid, user.gid, user.gid) };
    check(rc, &user)?;
    // SAFETY: as above.
    let rc = unsafe { libc::setresuid(user.uid, user.uid, user.uid) };
    check(rc, &user)?;
    // With all three uids non-zero the kernel cleared every capability; make sure.
    // SAFETY: as above; expected to fail.
    if unsafe { libc::setresuid(0, 0, 0) } == 0 || is_root() {
        return Err(PrivError::Regained(user.name));
    }
    tracing::info!(user = %user.name, uid = user.uid, "gave up root");
    Ok(Some(user))
}

/// The capabilities a root file server needs: set owners, pass permission checks on the
/// files it serves, reopen by handle, keep or set setuid bits and file capabilities when
/// the share allows them, create device nodes when the share allows them.
pub fn file_server_capabilities(allow_setuid: bool, allow_devices: bool) -> CapsHashSet {
    let mut set: CapsHashSet = [
        Capability::CAP_CHOWN,
        Capability::CAP_DAC_OVERRIDE,
        Capability::CAP_DAC_READ_SEARCH,
        Capability::CAP_FOWNER,
        Capability::CAP_FSETID,
    ]
    .into_iter()
    .collect();
    if allow_setuid {
        set.insert(Capability::CAP_SETFCAP);
    }
    if allow_devices {
        set.insert(Capability::CAP_MKNOD);
    }
    set
}

/// When running as root, keeps only `keep` in the effective, permitted and inheritable
/// sets, clears the ambient set and removes everything else from the bounding set, for
/// every thread started afterwards too (capabilities are per thread: call this before
/// starting threads). Returns whether it changed anything.
pub fn keep_file_capabilities(keep: &CapsHashSet) -> Result<bool, PrivError> {
    if !is_root() {
        return Ok(false);
    }
    for cap in caps::all() {
        if !keep.contains(&cap) {
            // Dropping from the bounding set needs CAP_SETPCAP, still held here.
            caps::drop(None, CapSet::Bounding, cap).map_err(PrivError::Caps)?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(PrivError::Caps)?;
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new()).map_err(PrivError::Caps)?;
    caps::set(None, CapSet::Effective, keep).map_err(PrivError::Caps)?;
    caps::set(None, CapSet::Permitted, keep).map_err(PrivError::Caps)?;
    tracing::info!(kept = ?keep, "dropped every other capability");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` in a forked child and returns its exit code (or 100 + signal).
    fn in_child(f: impl FnOnce() -> i32) -> i32 {
        // SAFETY: fork in a test; the child only runs `f` and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let code = f();
            // SAFETY: _exit in the forked child.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waitpid on our own child, writing into a local.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            100 + libc::WTERMSIG(status)
        }
    }

    #[test]
    fn test_drop_root_becomes_nobody_for_good_and_keeps_owner() {
        if !is_root() {
            eprintln!("skipped: dropping root needs root (the non-root path is a no-op)");
            assert!(drop_root().unwrap().is_none());
            return;
        }
        let code = in_child(|| {
            let Ok(Some(u)) = drop_root() else { return 1 };
            // SAFETY: getters cannot fail.
            let (uid, euid, gid) = unsafe { (libc::getuid(), libc::geteuid(), libc::getgid()) };
            if uid != u.uid || euid != u.uid || gid != u.gid || uid == 0 {
                return 2;
            }
            // Root's files are out of reach now (the instance directory is root's 0700).
            if std::fs::read("/proc/1/environ").is_ok() {
                return 3;
            }
            // No capability left.
            if caps::read(None, CapSet::Effective).map_or(true, |c| !c.is_empty()) {
                return 4;
            }
            // The supervisor (root) is still accepted; the backend user itself is not.
            if !crate::hostsock::uid_allowed(0) || crate::hostsock::uid_allowed(u.uid) {
                return 5;
            }
            0
        });
        assert_eq!(code, 0);
    }

    #[test]
    fn test_file_server_keeps_file_caps_only() {
        if !is_root() {
            eprintln!("skipped: dropping capabilities needs root");
            return;
        }
        let code = in_child(|| {
            let keep = file_server_capabilities(false, false);
            if !matches!(keep_file_capabilities(&keep), Ok(true)) {
                return 1;
            }
            let eff = caps::read(None, CapSet::Effective).unwrap_or_default();
            let bnd = caps::read(None, CapSet::Bounding).unwrap_or_default();
            if eff != keep || bnd != keep {
                return 2;
            }
            // Still root for files: chown works on a file root made ...
            let dir = match tempfile::tempdir() {
                Ok(d) => d,
                Err(_) => return 3,
            };
            let f = dir.path().join("f");
            if std::fs::write(&f, b"x").is_err()
                || std::os::unix::fs::chown(&f, Some(1234), None).is_err()
            {
                return 4;
            }
            // ... but the other capabilities are gone: a port below 1024 needs
            // CAP_NET_BIND_SERVICE (harmless to try, unlike the admin calls).
            let start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .unwrap_or(1024);
            if start > 1 && std::net::TcpListener::bind("127.0.0.1:1").is_ok() {
                return 5;
            }
            0
        });
        assert_eq!(code, 0);
    }
}
