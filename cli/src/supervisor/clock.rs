//! Keeps the guest clock on the host's while the VM runs.
//!
//! The guest has no reliable wall clock of its own after the host suspends (its TSC-based
//! clock does not see the sleep) or steps its clock (NTP, a user's `date -s`). As Lima and
//! libkrun do, the supervisor pushes the host's time through the agent: at once when the
//! host's wall clock or boot clock jumps against its monotonic clock (a step, a resume), and
//! every [`PERIOD`] anyway, which also corrects slow drift and a guest that set its own clock.

use std::path::PathBuf;
use std::time::Duration;

use crate::agent::Agent;

/// How often the clock is checked for a jump.
const TICK: Duration = Duration::from_secs(1);
/// How often the host's time is pushed when nothing jumped.
pub const PERIOD: Duration = Duration::from_secs(10);
/// A change of the wall-or-boot minus monotonic offsets larger than this is a jump.
const JUMP: Duration = Duration::from_millis(250);

/// Offsets of CLOCK_REALTIME and CLOCK_BOOTTIME from CLOCK_MONOTONIC, in nanoseconds. Both
/// stay constant while time passes normally; a clock step moves the first, a suspend the
/// second (CLOCK_MONOTONIC stops during suspend, CLOCK_BOOTTIME does not).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Offsets {
    realtime: i128,
    boottime: i128,
}

/// A clock that stops while the host sleeps, and one that does not.
#[cfg(target_os = "linux")]
const AWAKE: libc::clockid_t = libc::CLOCK_MONOTONIC;
#[cfg(target_os = "linux")]
const SINCE_BOOT: libc::clockid_t = libc::CLOCK_BOOTTIME;
#[cfg(target_os = "macos")]
const AWAKE: libc::clockid_t = libc::CLOCK_UPTIME_RAW;
#[cfg(target_os = "macos")]
const SINCE_BOOT: libc::clockid_t = libc::CLOCK_MONOTONIC;

fn clock_ns(id: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(id, &mut ts) };
    if rc != 0 {
        return 0;
    }
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl Offsets {
    fn now() -> Offsets {
        let mono = clock_ns(AWAKE);
        Offsets {
            realtime: clock_ns(libc::CLOCK_REALTIME) - mono,
            boottime: clock_ns(SINCE_BOOT) - mono,
        }
    }

    /// Whether the host's clock stepped or the host slept between `self` and `later`.
    fn jumped(&self, later: &Offsets) -> bool {
        let limit = JUMP.as_nanos() as i128;
        (later.realtime - self.realtime).abs() > limit
            || (later.boottime - self.boottime).abs() > limit
    }
}

/// Runs until aborted: pushes the host's time to the agent behind `vsock`.
pub async fn follow_host(vsock: PathBuf) {
    let mut last = Offsets::now();
    let mut since_push = Duration::ZERO;
    loop {
        tokio::time::sleep(TICK).await;
        since_push += TICK;
        let now = Offsets::now();
        let jumped = last.jumped(&now);
        last = now;
        if !jumped && since_push < PERIOD {
            continue;
        }
        if jumped {
            tracing::info!("host clock stepped or the host resumed; setting the guest clock");
        }
        let sock = vsock.clone();
        let pushed = tokio::task::spawn_blocking(move || {
            Agent::connect(&sock, Duration::from_secs(2)).and_then(|mut a| a.sync_clock())
        })
        .await;
        match pushed {
            Ok(Ok(())) => since_push = Duration::ZERO,
            // The guest may be rebooting; try again at the next tick.
            Ok(Err(e)) => tracing::debug!("clock sync: {e}"),
            Err(e) => tracing::debug!("clock sync task: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_offsets_steady_without_a_jump_and_a_step_is_one() {
        let a = Offsets::now();
        std::thread::sleep(Duration::from_millis(50));
        let b = Offsets::now();
        assert!(!a.jumped(&b), "{a:?} {b:?}");
        // A host clock stepped by 2 s, and a 3 s suspend, as the offsets would show them.
        let stepped = Offsets {
            realtime: b.realtime + 2_000_000_000,
            ..b
        };
        assert!(a.jumped(&stepped));
        let resumed = Offsets {
            boottime: b.boottime + 3_000_000_000,
            ..b
        };
        assert!(a.jumped(&resumed));
    }
}
