//! Resource limits of the supervisor: its file-descriptor limit, and the back-off every
//! accept loop uses when accepting fails (EMFILE/ENFILE when the guest opened many forwarded
//! connections), so a full fd table slows accepting down instead of spinning a core and
//! flooding the log.

use std::time::{Duration, Instant};

/// First pause after a failed accept; doubled on each further failure up to [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_millis(10);
/// Longest pause between accept attempts while they keep failing.
pub const MAX_DELAY: Duration = Duration::from_secs(1);
/// At most one log line per this interval while accepts keep failing.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the new `(soft, hard)`.
/// The supervisor holds one fd per forwarded port, two per forwarded connection and one
/// per Docker API client: the default soft limit of 1024 is reached by ordinary use.
pub fn raise_nofile() -> std::io::Result<(libc::rlim_t, libc::rlim_t)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the rlimit we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the rlimit we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        lim = want;
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// The pause-and-log policy of one accept loop.
#[derive(Debug)]
pub struct AcceptBackoff {
    what: &'static str,
    delay: Duration,
    failures: u64,
    last_log: Option<Instant>,
}

impl AcceptBackoff {
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            delay: FIRST_DELAY,
            failures: 0,
            last_log: None,
        }
    }

    /// An accept succeeded: the next failure starts from the shortest pause again.
    pub fn succeeded(&mut self) {
        self.delay = FIRST_DELAY;
    }

    /// An accept failed: logs (rate-limited) and sleeps, longer each time in a row.
    pub async fn failed(&mut self, e: &std::io::Error) {
        self.failures += 1;
        if self.last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            let hint = match e.raw_os_error() {
                Some(libc::EMFILE) | Some(libc::ENFILE) => {
                    " (out of file descriptors: too many forwarded connections or ports)"
                }
                _ => "",
            };
            tracing::warn!(
                "{}: accept failed: {e}{hint}; {} failures so far, retrying in {} ms",
                self.what,
                self.failures,
                self.delay.as_millis()
            );
            self.last_log = Some(Instant::now());
        }
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(MAX_DELAY);
    }

    /// Failed accepts since this loop started.
    pub fn failures(&self) -> u64 {
        self.failures
    }
}

/// Whether the supervisor runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The lowest port an unprivileged process may bind here
/// (`net.ipv4.ip_unprivileged_port_start`, 1024 where unknown).
pub fn unprivileged_port_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024)
}
