//! Event notifiers and a poller on the standard library alone (no file descriptors), with the
//! semantics of a non-blocking eventfd in a level-triggered epoll: a notifier stays ready until
//! drained, one notifier may be in several pollers, and waits have an optional timeout.
//!
//! Written by hand: crates that poll (mio, polling) wrap OS handles, and what the device model
//! needs here is only "wake this worker when one of these counters is non-zero".

use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data are plain counters and lists, consistent at every unlock.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Counter {
    count: Mutex<u64>,
    pollers: Mutex<Vec<Weak<Waker>>>,
}

/// Wakes a poller: a generation number and a condition variable.
struct Waker {
    generation: Mutex<u64>,
    cond: Condvar,
}

impl Waker {
    fn bump(&self) {
        let mut g = lock(&self.generation);
        *g = g.wrapping_add(1);
        self.cond.notify_all();
    }
}

/// A counter that wakes the pollers it is registered with (like an eventfd).
pub struct EventNotifier(Arc<Counter>);

impl EventNotifier {
    pub fn new() -> io::Result<Self> {
        Ok(EventNotifier(Arc::new(Counter {
            count: Mutex::new(0),
            pollers: Mutex::new(Vec::new()),
        })))
    }

    /// Adds one to the counter and wakes every poller watching it.
    pub fn notify(&self) -> io::Result<()> {
        {
            let mut c = lock(&self.0.count);
            *c = c.saturating_add(1);
        }
        let pollers: Vec<Arc<Waker>> = {
            let mut list = lock(&self.0.pollers);
            list.retain(|w| w.strong_count() > 0);
            list.iter().filter_map(Weak::upgrade).collect()
        };
        for p in pollers {
            p.bump();
        }
        Ok(())
    }

    /// Returns the counter and resets it; 0 when nothing was notified (never blocks).
    pub fn drain(&self) -> io::Result<u64> {
        Ok(std::mem::take(&mut *lock(&self.0.count)))
    }

    /// Another handle to the same counter.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(EventNotifier(self.0.clone()))
    }
}

/// Waits until one of its notifiers is non-zero.
pub struct Poller {
    waker: Arc<Waker>,
    entries: Mutex<Vec<(u64, Arc<Counter>)>>,
}

impl Poller {
    pub fn new() -> io::Result<Self> {
        Ok(Poller {
            waker: Arc::new(Waker {
                generation: Mutex::new(0),
                cond: Condvar::new(),
            }),
            entries: Mutex::new(Vec::new()),
        })
    }

    /// Watches `notifier`; `wait` reports it as `key` while its counter is non-zero.
    pub fn add(&self, notifier: &EventNotifier, key: u64) -> io::Result<()> {
        let mut entries = lock(&self.entries);
        if entries.iter().any(|(_, c)| Arc::ptr_eq(c, &notifier.0)) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        entries.push((key, notifier.0.clone()));
        lock(&notifier.0.pollers).push(Arc::downgrade(&self.waker));
        drop(entries);
        self.waker.bump();
        Ok(())
    }

    /// Stops watching `notifier`.
    pub fn remove(&self, notifier: &EventNotifier) -> io::Result<()> {
        let mut entries = lock(&self.entries);
        let before = entries.len();
        entries.retain(|(_, c)| !Arc::ptr_eq(c, &notifier.0));
        if entries.len() == before {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        lock(&notifier.0.pollers).retain(|w| !std::ptr::eq(w.as_ptr(), Arc::as_ptr(&self.waker)));
        Ok(())
    }

    fn ready_keys(&self, ready: &mut Vec<u64>) {
        for (key, counter) in lock(&self.entries).iter() {
            if *lock(&counter.count) > 0 {
                ready.push(*key);
            }
        }
    }

    /// Fills `ready` with the keys of non-zero notifiers, waiting up to `timeout` (forever when
    /// None) for one; returns with `ready` empty on timeout.
    pub fn wait(&self, timeout: Option<Duration>, ready: &mut Vec<u64>) -> io::Result<()> {
        ready.clear();
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let seen = *lock(&self.waker.generation);
            self.ready_keys(ready);
            if !ready.is_empty() {
                return Ok(());
            }
            let g = lock(&self.waker.generation);
            if *g != seen {
                continue;
            }
            match deadline {
                None => drop(self.waker.cond.wait(g).unwrap_or_else(|p| p.into_inner())),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(());
                    }
                    drop(
                        self.waker
                            .cond
                            .wait_timeout(g, left)
                            .unwrap_or_else(|p| p.into_inner()),
                    );
                }
            }
        }
    }
}
