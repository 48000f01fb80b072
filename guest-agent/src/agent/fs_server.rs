//! `Request::ServeFs`: serve a guest directory to the host's `vmctl mount` as raw FUSE
//! messages over the control connection.
//!
//! The FUSE server and the confined passthrough are fs-share's (the same code that serves
//! host folders to the guest over virtio-fs), used through its byte-stream transport
//! `fs_share::transport::stream`, which bounds every message the host sends. The share root is
//! the requested directory: nothing outside it is reachable (openat2 `RESOLVE_BENEATH`, no
//! symlink is ever followed). The agent runs as root, so the host sees guest ownership; what
//! the host creates belongs to the owner of the shared directory (fs-share's `share-owner`
//! mapping: host uids mean nothing in the guest) and host `chown`s are ignored.

use std::sync::Arc;

use fs_share::transport::stream;
use fs_share::{PassthroughFs, ShareConfig};
use guest_agent::protocol::{write_frame, FrameReader, ProtocolError, Response};

use super::bridge::Duplex;
use tracing::info;

/// Answers `ServeFs { path, read_only }` on `conn` and then serves FUSE on it until the host
/// closes it (unmount) or sends something that is not a FUSE request.
pub fn serve<S: Duplex>(
    reader: FrameReader<S>,
    mut conn: S,
    path: &str,
    read_only: bool,
) -> Result<(), ProtocolError> {
    let fs = match open_share(path, read_only) {
        Ok(fs) => fs,
        Err(message) => {
            write_frame(&mut conn, &Response::Error { message })?;
            return Ok(());
        }
    };
    write_frame(&mut conn, &Response::Ok)?;
    // The host sends no FUSE request before it has read `Ok`, so the frame reader holds no
    // buffered bytes of the stream (as in `server::forward`).
    drop(reader);
    let input = conn.split()?;
    info!("mount: serving {path} to the host (read-only: {read_only})");
    match stream::serve(fs, input, conn, stream::WORKERS) {
        Ok(()) => info!("mount: {path}: the host unmounted"),
        Err(e) => info!("mount: {path}: session ended: {}", error_chain(&e)),
    }
    Ok(())
}

/// Opens the share, or says why not in one line for the host.
fn open_share(path: &str, read_only: bool) -> Result<Arc<PassthroughFs>, String> {
    if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
        return Err(format!(
            "mount: {path:?} must be an absolute guest path without '..'"
        ));
    }
    // The passthrough sets umask 0 (modes come from the host kernel, already masked) and
    // umask is per process: give this connection's thread its own umask/cwd/root first, so
    // `vmctl exec` children keep the agent's umask. This thread serves only this connection.
    // SAFETY: unshare(CLONE_FS) only changes this thread's fs attributes; no memory involved.
    if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
        return Err(format!(
            "mount: cannot give the server its own umask: {}",
            std::io::Error::last_os_error()
        ));
    }
    let mut cfg = ShareConfig::new(path);
    cfg.readonly = read_only;
    PassthroughFs::new(cfg)
        .map(Arc::new)
        .map_err(|e| format!("mount: {}", error_chain(&e)))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
