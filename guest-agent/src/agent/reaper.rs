//! Zombie reaping that does not steal exit statuses from the agent's own children.
//!
//! PID 1 must `waitpid(-1)` to reap orphans, which would also consume the status of a
//! child an exec session waits for. So children the agent cares about are spawned
//! through [`spawn`], which registers the pid under the same lock the reaper holds; the
//! reaper files their statuses and [`wait`] hands them out.

use std::collections::BTreeMap;
use std::process::{Child, Command};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::sys;

struct Table {
    /// pid → raw wait status once reaped.
    tracked: BTreeMap<i32, Option<i32>>,
}

static TABLE: Mutex<Table> = Mutex::new(Table {
    tracked: BTreeMap::new(),
});
static CHANGED: Condvar = Condvar::new();

/// When false (the `--serve-unix` test mode, not PID 1) children are waited for directly.
static PID1: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Mark this process as the reaper of all orphans (PID 1).
pub fn enable() {
    PID1.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Spawn a child whose exit status [`wait`] will return.
pub fn spawn(cmd: &mut Command) -> std::io::Result<(Child, i32)> {
    let mut t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let child = cmd.spawn()?;
    let pid = child.id() as i32;
    t.tracked.insert(pid, None);
    Ok((child, pid))
}

/// Reap every exited child (call on SIGCHLD).
pub fn reap_all() {
    let mut t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let mut any = false;
    while let Some((pid, status)) = sys::reap_one() {
        if let Some(slot) = t.tracked.get_mut(&pid) {
            *slot = Some(status);
            any = true;
        }
    }
    drop(t);
    if any {
        CHANGED.notify_all();
    }
}

/// Wait for a child spawned by [`spawn`]; `None` on timeout.
pub fn wait(child: &mut Child, pid: i32, timeout: Option<Duration>) -> Option<i32> {
    if !PID1.load(std::sync::atomic::Ordering::SeqCst) {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                use std::os::unix::process::ExitStatusExt;
                TABLE
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .tracked
                    .remove(&pid);
                return Some(status.into_raw());
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if let Some(Some(status)) = t.tracked.get(&pid).copied() {
            t.tracked.remove(&pid);
            return Some(status);
        }
        let step = match deadline {
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return None;
                }
                d - now
            }
            None => Duration::from_secs(3600),
        };
        t = CHANGED
            .wait_timeout(t, step)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}
