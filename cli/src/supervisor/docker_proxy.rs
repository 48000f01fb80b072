//! The forwarded Docker socket: `<instance>/docker.sock` on the host, each connection bridged
//! byte for byte to guest vsock port 2375 (the agent splices it to `/var/run/docker.sock`).
//! Upgrades/hijacks (`docker run -it`, `exec`, `attach`), streams and half-close pass through
//! untouched because nothing here parses HTTP.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::{UnixListener, UnixStream};

use super::vsock;

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

/// Binds the socket (owner-only) and returns the listener.
pub fn bind(path: &Path) -> Result<UnixListener, ProxyError> {
    let err = |source| ProxyError::Listen {
        path: path.display().to_string(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let l = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(l)
}

/// Serves connections until the task is dropped.
pub async fn serve(listener: UnixListener, vsock_uds: PathBuf, guest_port: u32) {
    let vsock_uds = Arc::new(vsock_uds);
    loop {
        let client = match listener.accept().await {
            Ok((c, _)) => c,
            Err(e) => {
                log::warn!("docker.sock: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let uds = vsock_uds.clone();
        tokio::spawn(async move {
            if let Err(e) = bridge(client, &uds, guest_port).await {
                log::info!("docker.sock: {e}");
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
