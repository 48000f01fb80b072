//! The reboot-loop limit: a guest that resets over and over (a broken init, a hostile guest
//! burning host CPU on boots) is stopped with a clear status instead of restarted forever.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// More than this many guest resets within [`WINDOW`] is a reboot loop.
pub const MAX_RESETS: usize = 5;
/// The window [`MAX_RESETS`] is counted over.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Recent guest resets.
#[derive(Debug)]
pub struct RebootLimit {
    max: usize,
    window: Duration,
    resets: VecDeque<Instant>,
}

impl Default for RebootLimit {
    fn default() -> Self {
        Self::new(MAX_RESETS, WINDOW)
    }
}

impl RebootLimit {
    pub fn new(max: usize, window: Duration) -> Self {
        Self {
            max,
            window,
            resets: VecDeque::new(),
        }
    }

    /// Records a reset at `now`; `Err(message)` when it makes a reboot loop.
    pub fn record(&mut self, now: Instant) -> Result<(), String> {
        while self
            .resets
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > self.window)
        {
            self.resets.pop_front();
        }
        self.resets.push_back(now);
        if self.resets.len() > self.max {
            return Err(format!(
                "reboot loop: the guest reset {} times within {} s; stopped instead of \
                 restarting it again (see `vmctl logs --kernel`, then `vmctl start`)",
                self.resets.len(),
                self.window.as_secs()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_reboot_limit_sixth_reset_within_window_is_a_loop() {
        let mut l = RebootLimit::default();
        let t0 = Instant::now();
        for i in 0..5 {
            assert!(l.record(t0 + Duration::from_secs(i)).is_ok(), "reset {i}");
        }
        let e = l.record(t0 + Duration::from_secs(10)).unwrap_err();
        assert!(e.contains("6 times within 60 s"), "{e}");
    }

    #[test]
    fn test_reboot_limit_spread_out_resets_are_fine() {
        let mut l = RebootLimit::default();
        let t0 = Instant::now();
        // One reset every 15 s for an hour: never more than 5 in a minute.
        for i in 0..240 {
            assert!(
                l.record(t0 + Duration::from_secs(15 * i)).is_ok(),
                "reset {i}"
            );
        }
    }
}
