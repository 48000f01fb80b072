//! Thin safe wrappers over the Linux system calls PID 1 needs (the FFI lives here only).
//! Hand-written over `libc` because each is one call; `nix` would add a dependency for
//! the same few lines.

use std::ffi::CString;
use std::io;

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in string"))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// mount(2).
pub fn mount(
    src: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let (src, target, fstype, data) = (cstr(src)?, cstr(target)?, cstr(fstype)?, cstr(data)?);
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
    check(unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    })
}

/// umount2(2).
pub fn umount(target: &str, flags: libc::c_int) -> io::Result<()> {
    let target = cstr(target)?;
    // SAFETY: `target` is a valid NUL-terminated string.
    check(unsafe { libc::umount2(target.as_ptr(), flags) })
}

/// sethostname(2).
pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })
}

/// Set CLOCK_REALTIME.
pub fn set_clock(unix_nanos: u64) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: (unix_nanos / 1_000_000_000) as _,
        tv_nsec: (unix_nanos % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: `ts` is a valid timespec.
    check(unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) })
}

/// sync(2).
pub fn sync() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() }
}

/// reboot(2) with RB_POWER_OFF or RB_AUTOBOOT; returns only on failure.
pub fn reboot(restart: bool) -> io::Error {
    let cmd = if restart {
        libc::RB_AUTOBOOT
    } else {
        libc::RB_POWER_OFF
    };
    // SAFETY: reboot with a valid command; on success it does not return.
    unsafe { libc::reboot(cmd) };
    io::Error::last_os_error()
}

/// kill(2).
pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: kill has no memory-safety preconditions.
    check(unsafe { libc::kill(pid, sig) })
}

/// Bring a network interface up (SIOCSIFFLAGS |= IFF_UP).
pub fn link_up(name: &str) -> io::Result<()> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor we own; OwnedFd closes it.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    use std::os::fd::AsRawFd;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: `ifr` is a valid ifreq and the ioctl reads/writes only it.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut ifr) })?;
    // SAFETY: after SIOCGIFFLAGS the union holds the flags member.
    unsafe { ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFFLAGS as _, &ifr) })
}

/// Block every signal in the calling thread (threads spawned later inherit the mask;
/// `std::process::Command` resets it in children).
pub fn block_all_signals() -> io::Result<()> {
    // SAFETY: sigset_t is plain data, initialised by sigfillset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is valid; pthread_sigmask only reads it.
    check(unsafe { libc::sigfillset(&mut set) })?;
    // SAFETY: as above.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Wait for any signal (all are blocked); returns its number.
pub fn wait_signal() -> io::Result<i32> {
    // SAFETY: sigset_t is plain data, initialised by sigfillset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is valid and writable.
    check(unsafe { libc::sigfillset(&mut set) })?;
    // SAFETY: `set` is valid; a null siginfo pointer is allowed.
    let sig = unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) };
    if sig < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(sig)
    }
}

/// waitpid(-1, WNOHANG): `Some((pid, raw status))` for one reaped child.
pub fn reap_one() -> Option<(i32, i32)> {
    let mut status = 0;
    // SAFETY: `status` is a valid out-pointer.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    if pid > 0 {
        Some((pid, status))
    } else {
        None
    }
}

/// Split a raw wait status into (exit code, terminating signal).
pub fn decode_status(status: i32) -> (Option<i32>, Option<i32>) {
    if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None)
    } else if libc::WIFSIGNALED(status) {
        (None, Some(libc::WTERMSIG(status)))
    } else {
        (None, None)
    }
}
