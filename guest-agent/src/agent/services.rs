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
use tracing::info;

use super::log;
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

/// The daemons' logs (on the data disk) are rotated past this size, one older copy kept.
pub const DAEMON_LOG_MAX: u64 = 16 << 20;
/// How often the daemons' log sizes are checked.
const ROTATE_EVERY: Duration = Duration::from_secs(30);

/// If `path` is larger than `max`, copies it to `<path>.1` (replacing the older copy) and
/// truncates it. The daemons write with O_APPEND (see `spawn_logged`), so their next line
/// lands at the start of the emptied file. Returns whether it rotated.
pub fn rotate_in_place(path: &Path, max: u64) -> std::io::Result<bool> {
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= max {
        return Ok(false);
    }
    let mut old = path.as_os_str().to_owned();
    old.push(".1");
    std::fs::copy(path, &old)?;
    OpenOptions::new().write(true).open(path)?.set_len(0)?;
    Ok(true)
}

/// Keeps containerd's and dockerd's logs bounded while the VM runs (never returns).
fn rotate_daemon_logs() {
    loop {
        std::thread::sleep(ROTATE_EVERY);
        for name in ["containerd", "dockerd"] {
            let p = format!("/var/log/{name}.log");
            match rotate_in_place(Path::new(&p), DAEMON_LOG_MAX) {
                Ok(true) => info!("rotated {p}"),
                Ok(false) => {}
                Err(e) => info!("cannot rotate {p}: {e}"),
            }
        }
    }
}

/// Start containerd, then dockerd, recording the `containerd` and `dockerd` phases.
pub fn start() {
    std::thread::spawn(rotate_daemon_logs);
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

#[cfg(test)]
mod rotate_tests {
    use super::*;

    #[test]
    fn test_daemon_log_rotated_in_place_and_appends_restart_at_zero() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("dockerd.log");
        let mut w = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .unwrap();
        w.write_all(&[b'x'; 100]).unwrap();
        assert!(!rotate_in_place(&p, 100).unwrap());
        w.write_all(b"y\n").unwrap();
        assert!(rotate_in_place(&p, 100).unwrap());
        assert_eq!(
            std::fs::metadata(d.path().join("dockerd.log.1"))
                .unwrap()
                .len(),
            102
        );
        w.write_all(b"next\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"next\n");
        assert!(!rotate_in_place(&d.path().join("missing.log"), 1).unwrap());
    }
}
