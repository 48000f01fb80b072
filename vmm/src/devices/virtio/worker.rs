//! A device worker thread: waits on queue eventfds (and a stop eventfd) with epoll and hands
//! each notification to the device's handler. Idle devices cost no CPU.

use std::os::fd::AsRawFd;
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Queue processing of one device, run on its worker thread.
pub trait QueueHandler: Send + 'static {
    /// Handles a notification of queue `index`.
    fn process_queue(&mut self, index: usize);
    /// Extra file descriptors to wait on (e.g. a host input); keyed from 0.
    fn extra_fds(&self) -> Vec<std::os::fd::RawFd> {
        Vec::new()
    }
    /// Handles readiness of `extra_fds()[index]`.
    fn process_extra(&mut self, _index: usize) {}
}

const STOP_KEY: u64 = u64::MAX;
const EXTRA_BASE: u64 = 1 << 32;

/// A running worker; stopped and joined on drop.
pub struct Worker {
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
}

impl Worker {
    pub fn spawn<H: QueueHandler>(
        name: &str,
        mut handler: H,
        queue_evts: Vec<EventFd>,
    ) -> std::io::Result<Self> {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        let add = |fd, key| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, key),
            )
        };
        add(stop.as_raw_fd(), STOP_KEY)?;
        for (i, evt) in queue_evts.iter().enumerate() {
            add(evt.as_raw_fd(), i as u64)?;
        }
        for (i, fd) in handler.extra_fds().into_iter().enumerate() {
            add(fd, EXTRA_BASE + i as u64)?;
        }
        let name = name.to_string();
        let thread_name = name.clone();
        let handle = std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                let run = std::panic::AssertUnwindSafe(|| {
                    let mut events = vec![EpollEvent::default(); 16];
                    loop {
                        let n = match epoll.wait(-1, &mut events) {
                            Ok(n) => n,
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                            Err(e) => {
                                log::error!("{name}: epoll failed, device stopped: {e}");
                                return;
                            }
                        };
                        for ev in &events[..n] {
                            match ev.data() {
                                STOP_KEY => return,
                                k if k >= EXTRA_BASE => {
                                    handler.process_extra((k - EXTRA_BASE) as usize)
                                }
                                k => {
                                    if let Some(evt) = queue_evts.get(k as usize) {
                                        // Reading resets the counter; several notifications
                                        // coalesce into one pass over the queue.
                                        let _ = evt.read();
                                    }
                                    handler.process_queue(k as usize);
                                }
                            }
                        }
                    }
                });
                if std::panic::catch_unwind(run).is_err() {
                    log::error!(
                        "{name}: device worker panicked; the device is stopped, the VM goes on"
                    );
                }
            })?;
        Ok(Worker {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
