//! Console logging with boot-relative timestamps, and the record of boot phases.

use std::sync::Mutex;

use guest_agent::protocol::Phase;

static PHASES: Mutex<Vec<Phase>> = Mutex::new(Vec::new());

/// Milliseconds since the guest kernel started (CLOCK_BOOTTIME).
pub fn uptime_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000
}

/// Print one line to the console (stderr is /dev/console for PID 1).
pub fn line(msg: std::fmt::Arguments<'_>) {
    let ms = uptime_ms();
    eprintln!("[vmctl-agent {:>5}.{:03}] {}", ms / 1000, ms % 1000, msg);
}

/// Record that a boot phase ended now, and log it.
pub fn phase(name: &str) {
    let at_ms = uptime_ms();
    line(format_args!("phase {name} done at {at_ms} ms"));
    if let Ok(mut p) = PHASES.lock() {
        p.push(Phase {
            name: name.to_string(),
            at_ms,
        });
    }
}

/// The phases recorded so far.
pub fn phases() -> Vec<Phase> {
    PHASES.lock().map(|p| p.clone()).unwrap_or_default()
}

macro_rules! info {
    ($($arg:tt)*) => { $crate::agent::log::line(format_args!($($arg)*)) };
}
pub(crate) use info;
