//! Thin, safe wrappers over the Linux system calls the passthrough needs.
//!
//! Every call here takes a directory fd plus a single, already validated path component (or
//! operates on an fd directly), so no call ever walks a multi-component path supplied by the
//! guest. The one path we build ourselves is `/proc/self/fd/N` (reached through a cached O_PATH
//! fd of `/proc/self/fd`), used to reopen or operate on our own O_PATH fds.

use std::ffi::{CStr, CString};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// `struct open_how` of openat2(2); written by hand because the `libc` crate does not export
/// it on every target we build for.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

const RESOLVE_NO_XDEV: u64 = 0x01;
const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_NO_SYMLINKS: u64 = 0x04;
const RESOLVE_BENEATH: u64 = 0x08;
const _: u64 = RESOLVE_NO_XDEV;

fn cvt(res: libc::c_int) -> io::Result<libc::c_int> {
    if res < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(res)
    }
}

fn cvt_long(res: libc::c_long) -> io::Result<libc::c_long> {
    if res < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(res)
    }
}

fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    let fd = cvt(fd)?;
    // SAFETY: `fd` was just returned by a successful syscall that creates a new descriptor,
    // so nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens `name` (one path component) beneath `dir` with `openat2(RESOLVE_BENEATH |
/// RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS)`: no `..` escape, no magic link and no symlink
/// is ever followed, whatever races the host or guest run against us. Falls back to
/// `openat(O_NOFOLLOW)` on kernels without openat2 (< 5.6), which is equivalent for a single
/// component that is not itself a magic link.
pub fn open_beneath(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: libc::c_int,
    mode: u32,
) -> io::Result<OwnedFd> {
    let flags = flags | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    let how = OpenHow {
        flags: flags as u64,
        mode: if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
            u64::from(mode)
        } else {
            0
        },
        resolve: RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS,
    };
    // SAFETY: `how` is a valid, fully initialised open_how that outlives the call, `name` is
    // NUL-terminated, and the returned fd is checked and owned by the caller.
    let res = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            name.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if res >= 0 {
        return owned(res as libc::c_int);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::ENOSYS) {
        return Err(err);
    }
    // SAFETY: plain openat on a NUL-terminated single component; result checked by `owned`.
    owned(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, mode as libc::c_uint) })
}

/// Opens a directory by absolute host path (only used for the share root, given by the host).
pub fn open_root(path: &std::path::Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is NUL-terminated; the result is checked by `owned`.
    owned(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })
}

/// The O_PATH fd of `/proc/self/fd`, through which our own fds are reopened.
pub fn open_proc_self_fd() -> io::Result<OwnedFd> {
    // SAFETY: constant NUL-terminated path; result checked by `owned`.
    owned(unsafe {
        libc::open(
            c"/proc/self/fd".as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })
}

fn fd_name(fd: RawFd) -> CString {
    // A decimal number never contains NUL.
    CString::new(fd.to_string()).unwrap_or_default()
}

/// Reopens one of our own O_PATH fds with real open flags through `/proc/self/fd/N`.
/// Callers make sure the fd is a regular file or directory (never a symlink or device).
pub fn reopen(
    proc_fd: BorrowedFd<'_>,
    fd: BorrowedFd<'_>,
    flags: libc::c_int,
) -> io::Result<OwnedFd> {
    let name = fd_name(fd.as_raw_fd());
    let flags = (flags | libc::O_CLOEXEC) & !(libc::O_NOFOLLOW | libc::O_CREAT | libc::O_EXCL);
    // SAFETY: `name` is NUL-terminated; the result is checked by `owned`.
    owned(unsafe { libc::openat(proc_fd.as_raw_fd(), name.as_ptr(), flags) })
}

/// The path `/proc/self/fd/N` for calls that only take paths (xattrs, chmod, truncate).
pub fn proc_path(fd: BorrowedFd<'_>) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

pub type Stat = libc::stat64;

pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    let mut st = MaybeUninit::<Stat>::zeroed();
    // SAFETY: the kernel writes at most one stat64 into `st`; the empty path with
    // AT_EMPTY_PATH refers to `fd` itself.
    cvt(unsafe {
        libc::fstatat64(
            fd.as_raw_fd(),
            c"".as_ptr(),
            st.as_mut_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat64 succeeded, so `st` is initialised.
    Ok(unsafe { st.assume_init() })
}

pub fn fstatvfs(fd: BorrowedFd<'_>) -> io::Result<libc::statvfs64> {
    let mut st = MaybeUninit::<libc::statvfs64>::zeroed();
    // SAFETY: the kernel writes one statvfs64 into `st`; works on O_PATH fds.
    cvt(unsafe { libc::fstatvfs64(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstatvfs64 succeeded, so `st` is initialised.
    Ok(unsafe { st.assume_init() })
}

/// A kernel file handle (`struct file_handle` payload) and the mount it belongs to.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct FileHandle {
    pub handle_type: i32,
    pub bytes: Vec<u8>,
    pub mount_id: i32,
}

const MAX_HANDLE_SZ: usize = 128;

#[repr(C)]
struct RawFileHandle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; MAX_HANDLE_SZ],
}

/// `name_to_handle_at(fd, "", AT_EMPTY_PATH)`: a handle that reopens this inode later without
/// keeping an fd open. Fails with EOPNOTSUPP on filesystems that cannot export handles.
pub fn name_to_handle(fd: BorrowedFd<'_>) -> io::Result<FileHandle> {
    let mut raw = RawFileHandle {
        handle_bytes: MAX_HANDLE_SZ as u32,
        handle_type: 0,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `raw` has room for MAX_HANDLE_SZ bytes as announced in handle_bytes; `mount_id`
    // is a valid out pointer.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            fd.as_raw_fd(),
            c"".as_ptr(),
            &mut raw as *mut RawFileHandle,
            &mut mount_id as *mut libc::c_int,
            libc::AT_EMPTY_PATH,
        ) as libc::c_int
    })?;
    let len = (raw.handle_bytes as usize).min(MAX_HANDLE_SZ);
    Ok(FileHandle {
        handle_type: raw.handle_type,
        bytes: raw.f_handle[..len].to_vec(),
        mount_id,
    })
}

/// `open_by_handle_at(mount_fd, handle, flags)`; needs CAP_DAC_READ_SEARCH.
pub fn open_by_handle(
    mount_fd: BorrowedFd<'_>,
    h: &FileHandle,
    flags: libc::c_int,
) -> io::Result<OwnedFd> {
    let mut raw = RawFileHandle {
        handle_bytes: h.bytes.len().min(MAX_HANDLE_SZ) as u32,
        handle_type: h.handle_type,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    let n = raw.handle_bytes as usize;
    raw.f_handle[..n].copy_from_slice(&h.bytes[..n]);
    // SAFETY: `raw` is a valid file_handle with handle_bytes <= its buffer; result checked.
    let res = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_fd.as_raw_fd(),
            &mut raw as *mut RawFileHandle,
            flags | libc::O_CLOEXEC,
        )
    };
    owned(cvt_long(res)? as libc::c_int)
}

pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: NUL-terminated single component; return value checked.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
}

pub fn mknodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32, rdev: u64) -> io::Result<()> {
    // SAFETY: NUL-terminated single component; return value checked.
    cvt(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, rdev) }).map(drop)
}

pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated; the target is stored, never followed by us.
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: NUL-terminated single component; return value checked.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

pub fn renameat2(
    olddir: BorrowedFd<'_>,
    oldname: &CStr,
    newdir: BorrowedFd<'_>,
    newname: &CStr,
    flags: u32,
) -> io::Result<()> {
    // SAFETY: NUL-terminated single components; return value checked.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            olddir.as_raw_fd(),
            oldname.as_ptr(),
            newdir.as_raw_fd(),
            newname.as_ptr(),
            flags,
        ) as libc::c_int
    })
    .map(drop)
}

/// Hard-links the inode behind `fd` (an O_PATH fd) as `newdir/newname`.
pub fn link_fd(
    proc_fd: BorrowedFd<'_>,
    fd: BorrowedFd<'_>,
    is_link: bool,
    newdir: BorrowedFd<'_>,
    newname: &CStr,
) -> io::Result<()> {
    // SAFETY: AT_EMPTY_PATH links `fd` itself; strings NUL-terminated; result checked.
    let res = unsafe {
        libc::linkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            newdir.as_raw_fd(),
            newname.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    if res == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if is_link
        || (err.raw_os_error() != Some(libc::ENOENT) && err.raw_os_error() != Some(libc::EPERM))
    {
        return Err(err);
    }
    // Without CAP_DAC_READ_SEARCH, AT_EMPTY_PATH fails: link through our /proc/self/fd entry.
    // Never for symlinks: AT_SYMLINK_FOLLOW must not get a chance to resolve their target.
    let name = fd_name(fd.as_raw_fd());
    // SAFETY: as above; the magic link is our own fd.
    cvt(unsafe {
        libc::linkat(
            proc_fd.as_raw_fd(),
            name.as_ptr(),
            newdir.as_raw_fd(),
            newname.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    })
    .map(drop)
}

pub fn readlink(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: the kernel writes at most buf.len() bytes; an empty path reads `fd` itself.
    let n = unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

pub fn fchown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: AT_EMPTY_PATH targets `fd` itself without following symlinks; result checked.
    cvt(unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            uid,
            gid,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

pub fn chmod_fd(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    let p = proc_path(fd);
    // SAFETY: NUL-terminated path to our own fd; result checked.
    cvt(unsafe { libc::chmod(p.as_ptr(), mode) }).map(drop)
}

pub fn truncate_fd(fd: BorrowedFd<'_>, size: i64) -> io::Result<()> {
    let p = proc_path(fd);
    // SAFETY: NUL-terminated path to our own fd; result checked.
    cvt(unsafe { libc::truncate64(p.as_ptr(), size) }).map(drop)
}

pub fn ftruncate(fd: BorrowedFd<'_>, size: i64) -> io::Result<()> {
    // SAFETY: plain syscall on an fd we own; result checked.
    cvt(unsafe { libc::ftruncate64(fd.as_raw_fd(), size) }).map(drop)
}

/// Sets atime/mtime of the inode behind the O_PATH `fd` (symlinks included, never followed).
pub fn utimens(
    proc_fd: &OwnedFd,
    fd: BorrowedFd<'_>,
    is_link: bool,
    times: &[libc::timespec; 2],
) -> io::Result<()> {
    // SAFETY: `times` points to two timespecs; AT_EMPTY_PATH targets `fd` itself.
    let res = unsafe {
        libc::utimensat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            times.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    if res == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if is_link
        || !matches!(
            e.raw_os_error(),
            Some(libc::EINVAL) | Some(libc::EBADF) | Some(libc::ENOENT)
        )
    {
        return Err(e);
    }
    // Older kernels: go through our /proc/self/fd entry (follows to the file itself).
    let name = fd_name(fd.as_raw_fd());
    // SAFETY: as above, with a NUL-terminated name relative to /proc/self/fd.
    cvt(unsafe { libc::utimensat(proc_fd.as_raw_fd(), name.as_ptr(), times.as_ptr(), 0) }).map(drop)
}

pub fn fsync(fd: BorrowedFd<'_>, datasync: bool) -> io::Result<()> {
    // SAFETY: plain syscall on an fd we own; result checked.
    cvt(unsafe {
        if datasync {
            libc::fdatasync(fd.as_raw_fd())
        } else {
            libc::fsync(fd.as_raw_fd())
        }
    })
    .map(drop)
}

pub fn fallocate(fd: BorrowedFd<'_>, mode: u32, offset: u64, len: u64) -> io::Result<()> {
    let off = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let len = i64::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: plain syscall on an fd we own; result checked.
    cvt(unsafe { libc::fallocate64(fd.as_raw_fd(), mode as libc::c_int, off, len) }).map(drop)
}

pub fn lseek(fd: BorrowedFd<'_>, offset: u64, whence: u32) -> io::Result<u64> {
    let off = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: plain syscall on an fd we own; result checked.
    let res = unsafe { libc::lseek64(fd.as_raw_fd(), off, whence as libc::c_int) };
    if res < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(res as u64)
    }
}

/// Fills `buf` with raw `linux_dirent64` records read from `dir` starting at `offset`.
pub fn getdents(
    dir: BorrowedFd<'_>,
    offset: u64,
    buf: &mut Vec<u8>,
    size: usize,
) -> io::Result<()> {
    lseek(dir, offset, libc::SEEK_SET as u32)?;
    buf.clear();
    buf.resize(size, 0);
    // SAFETY: the kernel writes at most `size` bytes into `buf`; result checked.
    let res = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            dir.as_raw_fd(),
            buf.as_mut_ptr(),
            size,
        )
    };
    let n = cvt_long(res)?;
    buf.truncate(n as usize);
    Ok(())
}

fn xattr_len(res: isize) -> io::Result<usize> {
    if res < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(res as usize)
    }
}

pub fn getxattr(fd: BorrowedFd<'_>, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    let p = proc_path(fd);
    // SAFETY: `buf` is valid for buf.len() bytes (0 queries the size); strings NUL-terminated.
    xattr_len(unsafe {
        libc::getxattr(
            p.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })
}

pub fn listxattr(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    let p = proc_path(fd);
    // SAFETY: as for getxattr.
    xattr_len(unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })
}

pub fn setxattr(fd: BorrowedFd<'_>, name: &CStr, value: &[u8], flags: u32) -> io::Result<()> {
    let p = proc_path(fd);
    // SAFETY: `value` is valid for its length; strings NUL-terminated; result checked.
    cvt(unsafe {
        libc::setxattr(
            p.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags as libc::c_int,
        )
    })
    .map(drop)
}

pub fn removexattr(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let p = proc_path(fd);
    // SAFETY: NUL-terminated strings; result checked.
    cvt(unsafe { libc::removexattr(p.as_ptr(), name.as_ptr()) }).map(drop)
}

/// Sets the process umask (0 at start so guest-supplied modes are applied exactly).
pub fn set_umask(mask: u32) {
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(mask) };
}

pub fn geteuid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// Raises RLIMIT_NOFILE's soft limit to its hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid out pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: `lim` is a valid in pointer.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    lim.rlim_cur
}

/// Number of fds this process has open (counts /proc/self/fd entries), for tests and metrics.
pub fn open_fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}
