//! The console log (`tracing`, with boot-relative time stamps) and the record of boot
//! phases.

use std::sync::Mutex;

use guest_agent::protocol::Phase;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

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

/// The console log's time stamp: `[vmctl-agent SSSSS.mmm]`, seconds since boot.
struct BootTime;

impl FormatTime for BootTime {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        let ms = uptime_ms();
        write!(w, "[vmctl-agent {:>5}.{:03}]", ms / 1000, ms % 1000)
    }
}

/// Sends `tracing` events to stderr (the console for PID 1) as
/// `[vmctl-agent     1.234] message`, no level or target: the console is read by people
/// and by the e2e tests' boot-phase checks.
pub fn init() {
    let _ = tracing::subscriber::set_global_default(console(std::io::stderr));
}

fn console<W>(writer: W) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_timer(BootTime)
        .with_level(false)
        .with_target(false)
        .with_ansi(false)
        .with_writer(writer)
        .finish()
}

/// Record that a boot phase ended now, and log it.
pub fn phase(name: &str) {
    let at_ms = uptime_ms();
    tracing::info!("phase {name} done at {at_ms} ms");
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The console keeps the agent's line format: boot time, then the message alone.
    #[test]
    fn test_console_line_is_boot_time_and_message() {
        let out = Capture::default();
        let sink = out.clone();
        tracing::subscriber::with_default(console(move || sink.clone()), || {
            tracing::info!("phase dockerd done at {} ms", 1234);
        });
        let text = String::from_utf8(out.0.lock().expect("lock").clone()).expect("utf-8");
        let rest = text.strip_prefix("[vmctl-agent ").expect(&text);
        let (time, msg) = rest.split_once("] ").expect(&text);
        let (secs, ms) = time.trim_start().split_once('.').expect(&text);
        assert!(secs.parse::<u64>().is_ok() && ms.len() == 3, "{text:?}");
        assert_eq!(msg, "phase dockerd done at 1234 ms\n");
    }
}
