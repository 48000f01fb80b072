//! Orderly shutdown: stop dockerd, then containerd, then everything else; unmount the
//! data disk, sync, and power off (or reboot).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{mounts, services, sys};
use tracing::info;

fn alive(pid: i32) -> bool {
    pid > 0 && sys::kill(pid, 0).is_ok()
}

fn stop(name: &str, pid: i32, grace: Duration) {
    if !alive(pid) {
        return;
    }
    info!("stopping {name} (pid {pid})");
    let _ = sys::kill(pid, libc::SIGTERM);
    let start = Instant::now();
    // The reaper (main thread) collects the zombie; kill(pid, 0) fails once reaped.
    while alive(pid) && start.elapsed() < grace {
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive(pid) {
        info!("{name} did not stop in {grace:?}; killing it");
        let _ = sys::kill(pid, libc::SIGKILL);
    }
}

/// Shut the guest down. Never returns when running as PID 1.
pub fn run(reboot: bool) {
    info!(
        "shutdown requested ({})",
        if reboot { "reboot" } else { "power off" }
    );
    stop(
        "dockerd",
        services::DOCKERD_PID.load(Ordering::SeqCst),
        Duration::from_secs(15),
    );
    stop(
        "containerd",
        services::CONTAINERD_PID.load(Ordering::SeqCst),
        Duration::from_secs(5),
    );
    let _ = sys::kill(-1, libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    let _ = sys::kill(-1, libc::SIGKILL);
    mounts::unmount_all();
    info!("bye");
    // Without ACPI (the builtin engine) a power-off would halt the vCPUs where the VMM cannot
    // see it; the engine asked for this stop and takes the reset as the power-off.
    let by_reset = std::fs::read_to_string("/proc/cmdline")
        .map(|c| guest_agent::cmdline::Config::parse(&c).poweroff_by_reset)
        .unwrap_or(false);
    let e = sys::reboot(reboot || by_reset);
    info!("reboot(2) failed: {e}");
}
