//! PID 1: bring the guest up, then reap children and handle signals forever.

use std::sync::atomic::Ordering;

use guest_agent::protocol::DOCKER_PORT;

use tracing::info;

use super::log;
use super::{bridge, mounts, net, reaper, server, services, shutdown, sys};
use guest_agent::cmdline::Config;

/// Boot the guest. Never returns.
pub fn run() -> ! {
    // The kernel starts init without PATH; every tool the agent runs is found through it.
    // Set before any thread exists.
    std::env::set_var("PATH", super::services::PATH);
    // Signals are taken synchronously by this thread's sigwaitinfo loop below; every
    // thread spawned from here on inherits the blocked mask.
    if let Err(e) = sys::block_all_signals() {
        info!("cannot block signals: {e}");
    }
    reaper::enable();
    mounts::early();
    log::phase("kernel");
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let cfg = Config::parse(&cmdline);
    if !cfg.unknown.is_empty() {
        info!(
            "ignored kernel command line settings: {}",
            cfg.unknown.join(" ")
        );
    }
    if let Some(t) = cfg.time {
        if let Ok(t) = u64::try_from(t) {
            if let Err(e) = sys::set_clock(t.saturating_mul(1_000_000_000)) {
                info!("set clock: {e}");
            }
        }
    }
    mounts::writable_overlay("/etc");
    mounts::writable_overlay("/root");
    mounts::data_disk(&cfg.data_serial);
    net::setup(&cfg.hostname);
    for (tag, path) in &cfg.shares {
        match mounts::share(tag, path) {
            Ok(()) => info!("mounted virtio-fs {tag} on {path}"),
            Err(e) => info!("virtio-fs {tag} on {path}: {e}"),
        }
    }
    log::phase("agent");

    let debug = cfg.debug;
    std::thread::spawn(move || {
        if let Err(e) = server::serve_vsock(debug) {
            info!("control server not available (no vsock device?): {e}");
        }
    });
    std::thread::spawn(|| {
        if let Err(e) = bridge::serve_vsock(DOCKER_PORT) {
            info!("docker vsock bridge not available: {e}");
        }
    });
    if let Some(port) = cfg.docker_tcp {
        std::thread::spawn(move || {
            if let Err(e) = bridge::serve_tcp(port) {
                info!("docker tcp bridge on {port}: {e}");
            }
        });
    }
    if let Some(port) = cfg.control_tcp {
        std::thread::spawn(move || {
            if let Err(e) = server::serve_tcp(port) {
                info!("control server on tcp {port}: {e}");
            }
        });
    }
    std::thread::spawn(services::start);

    loop {
        match sys::wait_signal() {
            Ok(libc::SIGCHLD) => reaper::reap_all(),
            Ok(libc::SIGTERM | libc::SIGINT | libc::SIGPWR | libc::SIGUSR2) => {
                std::thread::spawn(|| shutdown::run(false));
            }
            Ok(libc::SIGUSR1) => {
                std::thread::spawn(|| shutdown::run(true));
            }
            Ok(sig @ libc::SIGHUP) => {
                let pid = services::DOCKERD_PID.load(Ordering::SeqCst);
                if pid > 0 {
                    let _ = sys::kill(pid, sig);
                }
            }
            Ok(_) => {}
            Err(e) => {
                info!("sigwaitinfo: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}
