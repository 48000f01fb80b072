//! containerd and dockerd: started in order, logs kept on the data disk, readiness
//! checked through their sockets, pids kept for signal forwarding and shutdown.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

use super::bridge::DOCKER_SOCK;
use super::log::{self, info};
use super::reaper;

const CONTAINERD_SOCK: &str = "/run/containerd/containerd.sock";
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub static CONTAINERD_PID: AtomicI32 = AtomicI32::new(0);
pub static DOCKERD_PID: AtomicI32 = AtomicI32::new(0);
static DOCKER_READY: AtomicBool = AtomicBool::new(false);

/// Whether dockerd has answered `/_ping`.
pub fn docker_ready() -> bool {
    DOCKER_READY.load(Ordering::SeqCst)
}

/// `GET /_ping` on a Docker API socket; true on `200 OK`.
pub fn ping(sock: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(sock) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = Vec::new();
    let _ = s.take(4096).read_to_end(&mut buf);
    buf.starts_with(b"HTTP/1.0 200") || buf.starts_with(b"HTTP/1.1 200")
}

fn spawn_logged(name: &str, argv: &[&str]) -> std::io::Result<i32> {
    let log_path = format!("/var/log/{name}.log");
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .env("PATH", PATH)
        .env("HOME", "/root")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let (child, pid) = reaper::spawn(&mut cmd)?;
    info!("started {name} (pid {pid}), log {log_path}");
    // Reaped through the reaper's table; supervise in the background to log exits.
    let name = name.to_string();
    std::thread::spawn(move || {
        let mut child = child;
        if let Some(st) = reaper::wait(&mut child, pid, None) {
            info!(
                "{name} (pid {pid}) exited: {:?}",
                super::sys::decode_status(st)
            );
        }
    });
    Ok(pid)
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    info!("timed out after {timeout:?} waiting for {what}");
    false
}

/// Start containerd, then dockerd, recording the `containerd` and `dockerd` phases.
pub fn start() {
    match spawn_logged("containerd", &["/usr/bin/containerd"]) {
        Ok(pid) => CONTAINERD_PID.store(pid, Ordering::SeqCst),
        Err(e) => info!("cannot start containerd: {e}"),
    }
    if wait_for("containerd socket", Duration::from_secs(60), || {
        Path::new(CONTAINERD_SOCK).exists()
    }) {
        log::phase("containerd");
    }
    let argv = [
        "/usr/sbin/dockerd",
        "--host=unix:///var/run/docker.sock",
        "--containerd=/run/containerd/containerd.sock",
        "--storage-driver=overlay2",
    ];
    match spawn_logged("dockerd", &argv) {
        Ok(pid) => DOCKERD_PID.store(pid, Ordering::SeqCst),
        Err(e) => {
            info!("cannot start dockerd: {e}");
            return;
        }
    }
    if wait_for("dockerd /_ping", Duration::from_secs(120), || {
        ping(Path::new(DOCKER_SOCK))
    }) {
        DOCKER_READY.store(true, Ordering::SeqCst);
        log::phase("dockerd");
        info!("docker ready");
    }
}
