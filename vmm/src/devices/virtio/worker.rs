//! A device worker thread: waits on queue notifiers (and a stop notifier) with a `Poller`
//! (`sys::event`: epoll on Linux, portable elsewhere) and hands each notification to the
//! device's handler. Idle devices cost no CPU.

use std::thread::JoinHandle;

use crate::sys::event::{EventNotifier, Poller};

/// Queue processing of one device, run on its worker thread.
pub trait QueueHandler: Send + 'static {
    /// Handles a notification of queue `index`.
    fn process_queue(&mut self, index: usize);
    /// Extra file descriptors to wait on (e.g. a host input); keyed from 0. Linux only: epoll
    /// watches them directly. A handler that must run elsewhere uses `extra_notifiers`.
    #[cfg(target_os = "linux")]
    fn extra_fds(&self) -> Vec<std::os::fd::RawFd> {
        Vec::new()
    }
    /// Extra notifiers to wait on, on every host: a host-side source (e.g. a reader thread)
    /// signals one when it has work. Keyed after `extra_fds`; drained before
    /// `process_extra` is called.
    fn extra_notifiers(&self) -> Vec<EventNotifier> {
        Vec::new()
    }
    /// Handles readiness of extra source `index`: `extra_fds()[index]`, or
    /// `extra_notifiers()[index - extra_fds().len()]`.
    fn process_extra(&mut self, _index: usize) {}
}

/// What a poller key stands for. `key` and `from_key` are the only place the numbering
/// lives: queues from 0, extra sources (fds, then notifiers) from 2^32, stop last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Stop,
    Queue(usize),
    Extra(usize),
}

impl Source {
    const EXTRA_BASE: u64 = 1 << 32;

    fn key(self) -> u64 {
        match self {
            Source::Stop => u64::MAX,
            Source::Queue(i) => i as u64,
            Source::Extra(i) => Self::EXTRA_BASE + i as u64,
        }
    }

    fn from_key(key: u64) -> Source {
        match key {
            u64::MAX => Source::Stop,
            k if k >= Self::EXTRA_BASE => Source::Extra((k - Self::EXTRA_BASE) as usize),
            k => Source::Queue(k as usize),
        }
    }
}

/// A running worker; stopped and joined on drop.
pub struct Worker {
    stop: EventNotifier,
    handle: Option<JoinHandle<()>>,
}

/// Registers the handler's file descriptors; returns how many there are.
#[cfg(target_os = "linux")]
fn add_extra_fds<H: QueueHandler>(poller: &Poller, handler: &H) -> std::io::Result<usize> {
    let fds = handler.extra_fds();
    for (i, fd) in fds.iter().enumerate() {
        poller.add_fd(*fd, Source::Extra(i).key())?;
    }
    Ok(fds.len())
}

#[cfg(not(target_os = "linux"))]
fn add_extra_fds<H: QueueHandler>(_poller: &Poller, _handler: &H) -> std::io::Result<usize> {
    Ok(0)
}

impl Worker {
    pub fn spawn<H: QueueHandler>(
        name: &str,
        mut handler: H,
        queue_evts: Vec<EventNotifier>,
    ) -> std::io::Result<Self> {
        let stop = EventNotifier::new()?;
        let poller = Poller::new()?;
        poller.add(&stop, Source::Stop.key())?;
        for (i, evt) in queue_evts.iter().enumerate() {
            poller.add(evt, Source::Queue(i).key())?;
        }
        let fd_count = add_extra_fds(&poller, &handler)?;
        let extra = handler.extra_notifiers();
        for (i, n) in extra.iter().enumerate() {
            poller.add(n, Source::Extra(fd_count + i).key())?;
        }
        let name = name.to_string();
        let thread_name = name.clone();
        let handle = std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                let run = std::panic::AssertUnwindSafe(|| {
                    let mut ready = Vec::with_capacity(16);
                    loop {
                        if let Err(e) = poller.wait(None, &mut ready) {
                            tracing::error!("{name}: poll failed, device stopped: {e}");
                            return;
                        }
                        for &key in &ready {
                            match Source::from_key(key) {
                                Source::Stop => return,
                                Source::Extra(index) => {
                                    if let Some(n) =
                                        index.checked_sub(fd_count).and_then(|i| extra.get(i))
                                    {
                                        let _ = n.drain();
                                    }
                                    handler.process_extra(index)
                                }
                                Source::Queue(index) => {
                                    if let Some(evt) = queue_evts.get(index) {
                                        // Draining resets the counter; several notifications
                                        // coalesce into one pass over the queue.
                                        let _ = evt.drain();
                                    }
                                    handler.process_queue(index);
                                }
                            }
                        }
                    }
                });
                if std::panic::catch_unwind(run).is_err() {
                    tracing::error!(
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
        let _ = self.stop.notify();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn test_source_keys_round_trip_and_do_not_overlap() {
        for src in [
            Source::Stop,
            Source::Queue(0),
            Source::Queue(7),
            Source::Extra(0),
            Source::Extra(3),
        ] {
            assert_eq!(Source::from_key(src.key()), src);
        }
        assert_ne!(Source::Queue(0).key(), Source::Extra(0).key());
    }

    /// Reports what the worker calls, in order.
    struct Recorder {
        tx: mpsc::Sender<(&'static str, usize)>,
        extra: Vec<EventNotifier>,
    }

    impl QueueHandler for Recorder {
        fn process_queue(&mut self, index: usize) {
            let _ = self.tx.send(("queue", index));
        }
        fn extra_notifiers(&self) -> Vec<EventNotifier> {
            self.extra.iter().map(|n| n.try_clone().unwrap()).collect()
        }
        fn process_extra(&mut self, index: usize) {
            let _ = self.tx.send(("extra", index));
        }
    }

    const WAIT: Duration = Duration::from_secs(5);

    #[test]
    fn test_worker_notifications_reach_handler_once_each_and_stop_on_drop() {
        let (tx, rx) = mpsc::channel();
        let queues: Vec<_> = (0..2).map(|_| EventNotifier::new().unwrap()).collect();
        let handles: Vec<_> = queues.iter().map(|q| q.try_clone().unwrap()).collect();
        let host = EventNotifier::new().unwrap();
        let handler = Recorder {
            tx,
            extra: vec![host.try_clone().unwrap()],
        };
        let worker = Worker::spawn("test-worker", handler, queues).unwrap();

        handles[1].notify().unwrap();
        assert_eq!(rx.recv_timeout(WAIT).unwrap(), ("queue", 1));
        // Each notification is drained when handled, so no stream of wake-ups follows.
        handles[0].notify().unwrap();
        assert_eq!(rx.recv_timeout(WAIT).unwrap(), ("queue", 0));
        host.notify().unwrap();
        assert_eq!(rx.recv_timeout(WAIT).unwrap(), ("extra", 0));
        assert_eq!(
            host.drain().unwrap(),
            0,
            "the worker drained the extra notifier"
        );
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());

        drop(worker);
        handles[0].notify().unwrap();
        assert!(
            rx.recv_timeout(Duration::from_millis(50)).is_err(),
            "a stopped worker handled a notification"
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn test_worker_extra_fd_keys_come_before_notifiers() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        use std::os::unix::net::UnixStream;

        struct FdAndNotifier {
            tx: mpsc::Sender<usize>,
            sock: UnixStream,
            extra: EventNotifier,
        }
        impl QueueHandler for FdAndNotifier {
            fn process_queue(&mut self, _index: usize) {}
            fn extra_fds(&self) -> Vec<std::os::fd::RawFd> {
                vec![self.sock.as_raw_fd()]
            }
            fn extra_notifiers(&self) -> Vec<EventNotifier> {
                vec![self.extra.try_clone().unwrap()]
            }
            fn process_extra(&mut self, index: usize) {
                if index == 0 {
                    let mut buf = [0u8; 16];
                    let _ = std::io::Read::read(&mut self.sock, &mut buf);
                }
                let _ = self.tx.send(index);
            }
        }

        let (tx, rx) = mpsc::channel();
        let (sock, mut peer) = UnixStream::pair().unwrap();
        let extra = EventNotifier::new().unwrap();
        let handler = FdAndNotifier {
            tx,
            sock,
            extra: extra.try_clone().unwrap(),
        };
        let _worker = Worker::spawn("test-worker-fd", handler, Vec::new()).unwrap();
        peer.write_all(b"x").unwrap();
        assert_eq!(rx.recv_timeout(WAIT).unwrap(), 0);
        extra.notify().unwrap();
        assert_eq!(rx.recv_timeout(WAIT).unwrap(), 1);
    }
}
