//! Host stdin as guest console input, with the terminal in raw mode while the VM runs so
//! keystrokes (Ctrl-C included) go to the guest. Restored on drop.

use std::os::fd::RawFd;

pub struct Input {
    saved: Option<libc::termios>,
}

impl Input {
    pub fn new() -> Option<Self> {
        let mut saved = None;
        // SAFETY: isatty only inspects fd 0.
        if unsafe { libc::isatty(0) } == 1 {
            // SAFETY: termios is plain data; tcgetattr fills it for fd 0 or fails.
            let mut t: libc::termios = unsafe { std::mem::zeroed() };
            // SAFETY: valid pointer to a termios for the duration of the call.
            if unsafe { libc::tcgetattr(0, &mut t) } == 0 {
                saved = Some(t);
                let mut raw = t;
                // SAFETY: cfmakeraw edits the struct we pass; tcsetattr reads it.
                unsafe {
                    libc::cfmakeraw(&mut raw);
                    libc::tcsetattr(0, libc::TCSANOW, &raw);
                }
            }
        }
        Some(Input { saved })
    }

    pub fn fd(&self) -> RawFd {
        0
    }

    /// Reads what is available (empty at EOF).
    pub fn read(&mut self) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; 256];
        // SAFETY: reads into our buffer of the given length.
        let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        buf.truncate(n as usize);
        Ok(buf)
    }
}

impl Drop for Input {
    fn drop(&mut self) {
        if let Some(t) = self.saved {
            // SAFETY: restores the attributes saved from fd 0.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        }
    }
}
