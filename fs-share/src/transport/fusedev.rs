//! Host mount through `/dev/fuse` (`fs-share mount`): the same server and filesystem code the
//! virtio-fs transport uses, for tests and for exposing a VM's files on the host.

use std::path::Path;
use std::sync::Arc;
use std::thread;

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::FuseSession;

use crate::sys::PassthroughFs;

#[derive(Debug, thiserror::Error)]
pub enum FuseDevError {
    #[error("Failed to mount FUSE at {0}")]
    Mount(
        std::path::PathBuf,
        #[source] fuse_backend_rs::transport::Error,
    ),
    #[error("Failed to create a FUSE channel")]
    Channel(#[source] fuse_backend_rs::transport::Error),
    #[error("Failed to start a FUSE worker thread")]
    Thread(#[source] std::io::Error),
}

/// Mounts `fs` at `mountpoint` and serves it with `threads` workers until it is unmounted
/// (`umount`/`fusermount3 -u`), then returns.
pub fn mount_and_serve(
    fs: Arc<PassthroughFs>,
    mountpoint: &Path,
    threads: usize,
) -> Result<(), FuseDevError> {
    let readonly = fs.config().readonly;
    let mut session = FuseSession::new(mountpoint, "fs-share", "", readonly)
        .map_err(|e| FuseDevError::Mount(mountpoint.to_path_buf(), e))?;
    // Other users (e.g. pjdfstest switching uids) must reach the mount; permissions are then
    // checked by the kernel (`default_permissions`, always set by FuseSession). Unprivileged
    // mounts go through fusermount3, where allow_other needs user_allow_other in fuse.conf.
    session.set_allow_other(fs.privileged());
    session
        .mount()
        .map_err(|e| FuseDevError::Mount(mountpoint.to_path_buf(), e))?;
    tracing::info!(mountpoint = %mountpoint.display(), "mounted");
    let server = Arc::new(Server::new(fs));
    let mut workers = Vec::new();
    for i in 0..threads.max(1) {
        let mut channel = session.new_channel().map_err(FuseDevError::Channel)?;
        let server = server.clone();
        let h = thread::Builder::new()
            .name(format!("fuse-{i}"))
            .spawn(move || loop {
                match channel.get_request() {
                    Ok(Some((reader, writer))) => {
                        if let Err(e) = server.handle_message(reader, writer.into(), None, None) {
                            tracing::debug!("fuse request failed: {e}");
                        }
                    }
                    Ok(None) => break,
                    // The normal end: the kernel closes the channel on unmount.
                    Err(e) => {
                        tracing::debug!("fuse channel closed: {e}");
                        break;
                    }
                }
            })
            .map_err(FuseDevError::Thread)?;
        workers.push(h);
    }
    for w in workers {
        let _ = w.join();
    }
    // Wake any worker still polling and drop the mount if it is still there.
    let _ = session.wake();
    let _ = session.umount();
    tracing::info!("unmounted");
    Ok(())
}
