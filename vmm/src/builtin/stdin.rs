//! Host stdin as guest console input, with the terminal in raw mode while the VM runs so
//! keystrokes (Ctrl-C included) go to the guest. Restored on drop.
//!
//! On Linux the host loop's epoll watches fd 0 directly. Elsewhere the portable poller cannot
//! watch file descriptors, so a reader thread reads stdin and signals a notifier; a one-chunk
//! channel keeps it from reading ahead of the guest.

use std::io;

use crate::sys::event::Poller;

pub struct Input {
    saved: Option<libc::termios>,
    source: imp::Source,
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
        Some(Input {
            saved,
            source: imp::Source::new(),
        })
    }

    /// Reports stdin readiness to `poller` as `key`; false when stdin cannot be watched (a
    /// regular file or /dev/null, which epoll refuses): then there is no input.
    pub fn watch(&mut self, poller: &Poller, key: u64) -> bool {
        self.source.watch(poller, key)
    }

    /// Stops reporting to `poller` (at EOF).
    pub fn unwatch(&mut self, poller: &Poller) {
        self.source.unwatch(poller)
    }

    /// Reads what is available: empty at EOF, `WouldBlock` when nothing is ready yet.
    pub fn read(&mut self) -> io::Result<Vec<u8>> {
        self.source.read()
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

#[cfg(target_os = "linux")]
mod imp {
    use std::io;

    use crate::sys::event::Poller;

    /// fd 0, watched by epoll.
    pub struct Source;

    impl Source {
        pub fn new() -> Self {
            Source
        }

        pub fn watch(&mut self, poller: &Poller, key: u64) -> bool {
            poller.add_fd(0, key).is_ok()
        }

        pub fn unwatch(&mut self, poller: &Poller) {
            let _ = poller.remove_fd(0);
        }

        pub fn read(&mut self) -> io::Result<Vec<u8>> {
            let mut buf = vec![0u8; 256];
            // SAFETY: reads into our buffer of the given length.
            let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            buf.truncate(n as usize);
            Ok(buf)
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::io::{self, Read};
    use std::sync::mpsc::{self, Receiver, TryRecvError};

    use crate::sys::event::{EventNotifier, Poller};

    /// A reader thread's chunks (an empty one at EOF) and the notifier it signals.
    pub struct Source {
        watched: Option<(EventNotifier, Receiver<Vec<u8>>)>,
    }

    impl Source {
        pub fn new() -> Self {
            Source { watched: None }
        }

        pub fn watch(&mut self, poller: &Poller, key: u64) -> bool {
            let Ok(notifier) = EventNotifier::new() else {
                return false;
            };
            let Ok(signal) = notifier.try_clone() else {
                return false;
            };
            if poller.add(&notifier, key).is_err() {
                return false;
            }
            let (tx, rx) = mpsc::sync_channel(1);
            // The thread ends at EOF, on a read error, or once the VM is gone (the send
            // fails); a read already blocked on a terminal ends with the next keystroke.
            let spawned = std::thread::Builder::new()
                .name("stdin".into())
                .spawn(move || loop {
                    let mut buf = vec![0u8; 256];
                    let n = io::stdin().lock().read(&mut buf).unwrap_or(0);
                    buf.truncate(n);
                    if tx.send(buf).is_err() || signal.notify().is_err() || n == 0 {
                        return;
                    }
                });
            if spawned.is_err() {
                let _ = poller.remove(&notifier);
                return false;
            }
            self.watched = Some((notifier, rx));
            true
        }

        pub fn unwatch(&mut self, poller: &Poller) {
            if let Some((notifier, _)) = self.watched.take() {
                let _ = poller.remove(&notifier);
            }
        }

        pub fn read(&mut self) -> io::Result<Vec<u8>> {
            let Some((notifier, rx)) = &self.watched else {
                return Ok(Vec::new());
            };
            notifier.drain()?;
            match rx.try_recv() {
                Ok(bytes) => Ok(bytes),
                Err(TryRecvError::Empty) => Err(io::Error::from(io::ErrorKind::WouldBlock)),
                Err(TryRecvError::Disconnected) => Ok(Vec::new()),
            }
        }
    }
}
