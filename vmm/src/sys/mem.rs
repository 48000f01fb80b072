//! Giving guest RAM back to the host: the host page size, and discarding the backing of a
//! range of a mapping (virtio-balloon inflate and free page reporting).
//!
//! - Linux: `madvise(MADV_DONTNEED)` on a private mapping (the builtin engine's anonymous
//!   guest RAM): the pages are freed at once and read as zeroes afterwards. A shared mapping
//!   (memfd, shmem or a file, as vhost-user would need) keeps its pages in the shared object
//!   under `MADV_DONTNEED`, so it gets `madvise(MADV_REMOVE)`, which punches the hole in the
//!   backing object itself.
//! - macOS: `madvise(MADV_FREE_REUSABLE)` on a private mapping: the pages stop counting
//!   against the process at once and are reclaimed by the kernel (what the system's own
//!   allocators do). Shared mappings are not supported there.

use std::io;

/// The host's base page size (4 KiB on x86_64 Linux, 16 KiB on Apple silicon).
pub fn page_size() -> u64 {
    // SAFETY: sysconf reads a constant of the running system and touches no memory of ours.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

/// Discards `len` bytes at `addr`, which must be host-page aligned and lie inside one live
/// mapping of this process that nothing else relies on the contents of; `shared` says whether
/// that mapping is `MAP_SHARED`.
///
/// # Safety
///
/// `addr..addr + len` must be part of a mapping owned by the caller whose contents may be
/// lost (afterwards they read as zeroes, or as undefined data on macOS), and no Rust reference
/// may point into it.
pub unsafe fn discard(addr: *mut u8, len: usize, shared: bool) -> io::Result<()> {
    let advice = advice(shared)?;
    // SAFETY: the caller guarantees the range lies inside one of its mappings whose contents
    // may be dropped; madvise checks alignment itself and fails on a bad range.
    let r = unsafe { libc::madvise(addr.cast(), len, advice) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(target_os = "linux")]
fn advice(shared: bool) -> io::Result<libc::c_int> {
    Ok(if shared {
        libc::MADV_REMOVE
    } else {
        libc::MADV_DONTNEED
    })
}

#[cfg(target_os = "macos")]
fn advice(shared: bool) -> io::Result<libc::c_int> {
    if shared {
        return Err(io::Error::from(io::ErrorKind::Unsupported));
    }
    Ok(libc::MADV_FREE_REUSABLE)
}
