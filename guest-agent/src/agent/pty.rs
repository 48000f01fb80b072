//! Pseudo-terminals for `tty` exec sessions (`vmctl shell`, `vmctl exec -t`).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use guest_agent::protocol::TtySize;

/// The controlling side of a pseudo-terminal.
pub struct Pty {
    pub master: File,
    slave: OwnedFd,
}

fn winsize(size: TtySize) -> libc::winsize {
    libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

impl Pty {
    /// Opens a new pseudo-terminal of `size`.
    pub fn open(size: TtySize) -> io::Result<Pty> {
        let (mut master, mut slave) = (-1, -1);
        let ws = winsize(size);
        // SAFETY: openpty writes two fds into the provided ints; the name and termios
        // pointers may be null, the winsize pointer points at a live value.
        let r = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &ws,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both fds were just returned by openpty and are owned by nobody else.
        let (master, slave) = unsafe { (File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        for fd in [master.as_raw_fd(), slave.as_raw_fd()] {
            // SAFETY: F_SETFD on an fd we own; close-on-exec keeps it out of other children.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
        Ok(Pty { master, slave })
    }

    /// Makes `cmd` run as a session leader with this terminal as its controlling terminal
    /// and as its stdin, stdout and stderr.
    pub fn attach(&self, cmd: &mut Command) -> io::Result<()> {
        cmd.stdin(Stdio::from(self.slave.try_clone()?))
            .stdout(Stdio::from(self.slave.try_clone()?))
            .stderr(Stdio::from(self.slave.try_clone()?));
        // SAFETY: the closure only makes async-signal-safe calls (setsid, ioctl) between
        // fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                // fd 0 is the terminal's slave side by now.
                if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(())
    }

    /// Drops the agent's copy of the slave side, so reading the master ends (EIO) once the
    /// command and its children have closed the terminal.
    pub fn close_slave(self) -> File {
        self.master
    }
}

/// Sets the size of the terminal whose master side is `master` (the foreground process
/// group gets SIGWINCH from the kernel).
pub fn resize(master: &File, size: TtySize) -> io::Result<()> {
    let ws = winsize(size);
    // SAFETY: TIOCSWINSZ reads a winsize from a pointer to a live value.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn test_command_sees_a_terminal_of_the_requested_size() {
        let pty = Pty::open(TtySize {
            rows: 33,
            cols: 101,
        })
        .unwrap();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "test -t 0 && test -t 1 && stty size"]);
        pty.attach(&mut cmd).unwrap();
        let mut child = cmd.spawn().unwrap();
        // The command keeps copies of the slave fd until it is dropped.
        drop(cmd);
        let mut master = pty.close_slave();
        let mut out = Vec::new();
        // EIO once the child closed the terminal: the end of its output.
        let _ = master.read_to_end(&mut out);
        assert!(child.wait().unwrap().success());
        assert_eq!(String::from_utf8_lossy(&out).trim(), "33 101");
    }

    #[test]
    fn test_resize_is_seen_by_the_terminal() {
        let pty = Pty::open(TtySize { rows: 10, cols: 10 }).unwrap();
        resize(
            &pty.master,
            TtySize {
                rows: 48,
                cols: 160,
            },
        )
        .unwrap();
        let mut cmd = Command::new("stty");
        cmd.arg("size");
        pty.attach(&mut cmd).unwrap();
        let mut child = cmd.spawn().unwrap();
        // The command keeps copies of the slave fd until it is dropped.
        drop(cmd);
        let mut master = pty.close_slave();
        let mut out = Vec::new();
        let _ = master.read_to_end(&mut out);
        child.wait().unwrap();
        assert_eq!(String::from_utf8_lossy(&out).trim(), "48 160");
    }
}
