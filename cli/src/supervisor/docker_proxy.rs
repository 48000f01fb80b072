//! The forwarded Docker socket: `<instance>/docker.sock` on the host, each connection bridged
//! byte for byte to guest vsock port 2375 (the agent splices it to `/var/run/docker.sock`).
//! Upgrades/hijacks (`docker run -it`, `exec`, `attach`), streams and half-close pass through
//! untouched because nothing here parses HTTP.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::{UnixListener, UnixStream};

use crate::vsock;

/// Errors serving the socket.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("Cannot listen on {path}: {source}")]
    Listen {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Binds a host socket that is owner-only (0600) before it is reachable, replacing a stale
/// socket file; must run inside a tokio runtime. Shared with the control socket.
pub fn bind(path: &Path) -> Result<UnixListener, ProxyError> {
    let err = |source| ProxyError::Listen {
        path: path.display().to_string(),
        source,
    };
    let l = vmm::hostsock::bind_owner_only(path).map_err(|e| err(e.into_io()))?;
    l.set_nonblocking(true).map_err(err)?;
    UnixListener::from_std(l).map_err(err)
}

/// Whether an accepted client may use an instance socket: the owner or root
/// (`SO_PEERCRED`); others are logged and closed.
pub fn peer_allowed(client: &UnixStream, what: &str) -> bool {
    match client.peer_cred() {
        Ok(c) if vmm::hostsock::uid_allowed(c.uid()) => true,
        Ok(c) => {
            tracing::warn!("{what}: refused a client of uid {}", c.uid());
            false
        }
        Err(e) => {
            tracing::warn!("{what}: refused a client whose uid is unknown: {e}");
            false
        }
    }
}

/// Serves connections until the task is dropped.
pub async fn serve(listener: UnixListener, vsock_uds: PathBuf, guest_port: u32) {
    let vsock_uds = Arc::new(vsock_uds);
    let mut backoff = super::limits::AcceptBackoff::new("docker.sock");
    loop {
        let client = match listener.accept().await {
            Ok((c, _)) => {
                backoff.succeeded();
                c
            }
            Err(e) => {
                backoff.failed(&e).await;
                continue;
            }
        };
        if !peer_allowed(&client, "docker.sock") {
            continue;
        }
        let uds = vsock_uds.clone();
        tokio::spawn(async move {
            if let Err(e) = bridge(client, &uds, guest_port).await {
                tracing::info!("docker.sock: {e}");
            }
        });
    }
}

async fn bridge(mut client: UnixStream, uds: &Path, port: u32) -> Result<(), String> {
    // The guest may refuse for a moment (dockerd restarting, a full accept backlog under a
    // burst of clients): retry briefly before giving up on this client.
    let mut attempt = 0;
    let mut guest = loop {
        match vsock::connect(uds, port).await {
            Ok(s) => break s,
            Err(vsock::VsockError::Refused { .. }) if attempt < 20 => {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(25 * attempt)).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    // copy_bidirectional shuts down each write side when its source reaches EOF, so a
    // client's half-close reaches dockerd and the response still flows back.
    tokio::io::copy_bidirectional(&mut client, &mut guest)
        .await
        .map(|_| ())
        .map_err(|e| format!("connection ended: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// A stand-in for the hybrid vsock socket: answers each CONNECT with OK, then echoes.
    fn fake_vsock(path: &Path) {
        let l = std::os::unix::net::UnixListener::bind(path).expect("bind fake vsock");
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut r = BufReader::new(s.try_clone().expect("clone"));
                    let mut line = String::new();
                    if r.read_line(&mut line).is_err() {
                        return;
                    }
                    let mut w = s;
                    let _ = w.write_all(b"OK 1\n");
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = r.read(&mut buf) {
                        if n == 0 || w.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
    }

    /// docker.sock and control.sock: 0600 from the start; `nobody` cannot connect; where the
    /// mode was widened by hand, `nobody` is closed at accept while the owner is served.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn test_docker_and_control_sockets_refuse_other_users() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let vsock = d.path().join("vsock.sock");
        fake_vsock(&vsock);
        let docker = d.path().join("docker.sock");
        let control = d.path().join("control.sock");
        let l = bind(&docker).expect("bind docker.sock");
        tokio::spawn(serve(l, vsock.clone(), 2375));
        let l = bind(&control).expect("bind control.sock");
        let state = std::sync::Arc::new(tokio::sync::Mutex::new(crate::instance::State::default()));
        let (stop, _stop_rx) = tokio::sync::watch::channel(None);
        tokio::spawn(super::super::control::serve(
            l,
            state,
            std::sync::Arc::new(stop),
        ));
        for p in [&docker, &control] {
            assert_eq!(std::fs::metadata(p).expect("stat").mode() & 0o777, 0o600);
        }
        let nobody = |p: PathBuf, send: &'static str| {
            tokio::task::spawn_blocking(move || vmm::hostsock::connect_as_nobody(&p, send))
        };
        let Some(r) = nobody(docker.clone(), "ping").await.expect("join") else {
            return;
        };
        assert!(r.starts_with("connect-error: Permission denied"), "{r}");
        let get = "GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n";
        for (p, send) in [(&docker, "ping"), (&control, get)] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o666)).expect("chmod");
            let r = nobody(p.clone(), send).await.expect("join").expect("ran");
            assert!(
                r == "eof" || r.starts_with("read-error"),
                "{}: {r}",
                p.display()
            );
        }
        // The owner is served on both.
        let (docker2, control2) = (docker.clone(), control.clone());
        let (echo, status) = tokio::task::spawn_blocking(move || {
            let mut s = std::os::unix::net::UnixStream::connect(&docker2).expect("connect");
            s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .expect("timeout");
            s.write_all(b"ping").expect("write");
            let mut b = [0u8; 4];
            s.read_exact(&mut b).expect("echo");
            let mut c = std::os::unix::net::UnixStream::connect(&control2).expect("connect");
            c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .expect("timeout");
            c.write_all(get.as_bytes()).expect("write");
            let mut r = [0u8; 12];
            c.read_exact(&mut r).expect("status line");
            (b, String::from_utf8_lossy(&r).into_owned())
        })
        .await
        .expect("join");
        assert_eq!(&echo, b"ping");
        assert_eq!(status, "HTTP/1.1 200");
    }
}
