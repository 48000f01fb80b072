//! Rate-limited logging for messages a guest can trigger, so a hostile guest cannot flood the
//! host's logs or spend the VMM's CPU on formatting.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Allows `burst` messages per second per call site and counts the rest.
pub struct RateLimit {
    window: AtomicU64,
    count: AtomicU64,
    suppressed: AtomicU64,
    burst: u64,
}

impl RateLimit {
    pub const fn new(burst: u64) -> Self {
        RateLimit {
            window: AtomicU64::new(0),
            count: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            burst,
        }
    }

    /// Whether to log now; `Some(n)` carries how many messages were dropped before this one.
    pub fn check(&self) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if self.window.swap(now, Ordering::Relaxed) != now {
            self.count.store(0, Ordering::Relaxed);
        }
        if self.count.fetch_add(1, Ordering::Relaxed) < self.burst {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// `warn!` limited to 10 messages per second at this call site.
#[macro_export]
macro_rules! warn_ratelimited {
    ($($arg:tt)*) => {{
        static LIMIT: $crate::ratelimit::RateLimit = $crate::ratelimit::RateLimit::new(10);
        if let Some(dropped) = LIMIT.check() {
            if dropped > 0 {
                tracing::warn!("({} similar messages suppressed)", dropped);
            }
            tracing::warn!($($arg)*);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_ratelimit_burst_exceeded_suppresses() {
        let l = RateLimit::new(3);
        let allowed = (0..1000).filter(|_| l.check().is_some()).count();
        // At most two windows can be crossed in the loop: 3 per window.
        assert!((3..=6).contains(&allowed), "{allowed}");
    }
}
