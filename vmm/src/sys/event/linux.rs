//! `EventNotifier` and `Poller` as eventfd and epoll (vmm-sys-util), so KVM's ioeventfd and
//! irqfd can use the notifiers directly.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// A non-blocking eventfd.
pub struct EventNotifier(EventFd);

impl EventNotifier {
    pub fn new() -> io::Result<Self> {
        Ok(EventNotifier(EventFd::new(EFD_NONBLOCK)?))
    }

    pub fn notify(&self) -> io::Result<()> {
        self.0.write(1)
    }

    /// Returns the counter and resets it; 0 when nothing was notified (never blocks).
    pub fn drain(&self) -> io::Result<u64> {
        match self.0.read() {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        }
    }

    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(EventNotifier(self.0.try_clone()?))
    }

    /// The eventfd, for KVM_IOEVENTFD / KVM_IRQFD.
    pub fn eventfd(&self) -> &EventFd {
        &self.0
    }
}

/// An epoll instance watching notifiers (and, on Linux, any file descriptor).
pub struct Poller(Epoll);

impl Poller {
    pub fn new() -> io::Result<Self> {
        Ok(Poller(Epoll::new()?))
    }

    pub fn add(&self, notifier: &EventNotifier, key: u64) -> io::Result<()> {
        self.add_fd(notifier.0.as_raw_fd(), key)
    }

    pub fn remove(&self, notifier: &EventNotifier) -> io::Result<()> {
        self.0.ctl(
            ControlOperation::Delete,
            notifier.0.as_raw_fd(),
            EpollEvent::default(),
        )
    }

    /// Watches any readable file descriptor (e.g. host stdin for a console).
    pub fn add_fd(&self, fd: std::os::fd::RawFd, key: u64) -> io::Result<()> {
        self.0.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, key),
        )
    }

    /// Stops watching a file descriptor added with `add_fd`.
    pub fn remove_fd(&self, fd: std::os::fd::RawFd) -> io::Result<()> {
        self.0
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }

    /// Fills `ready` with the keys of readable entries, waiting up to `timeout` (forever when
    /// None); returns with `ready` empty on timeout.
    pub fn wait(&self, timeout: Option<Duration>, ready: &mut Vec<u64>) -> io::Result<()> {
        ready.clear();
        let ms = timeout.map_or(-1, |t| i32::try_from(t.as_millis()).unwrap_or(i32::MAX));
        let mut events = [EpollEvent::default(); 32];
        let n = loop {
            match self.0.wait(ms, &mut events) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        ready.extend(events[..n].iter().map(|e| e.data()));
        Ok(())
    }
}
