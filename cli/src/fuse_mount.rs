//! The host side of `vmctl mount`: a kernel FUSE mount whose requests are carried, byte for
//! byte, to a FUSE server at the other end of a stream (the guest agent's `ServeFs`, see
//! `guest_agent::protocol::Request::ServeFs`), and whose replies come back the same way.
//!
//! The mount itself is fuse-backend-rs' `FuseSession` (as `fs-share mount` does): as root it
//! mounts directly, otherwise through `fusermount3`. Two threads then shovel bytes:
//!
//! - requests: one `read` of `/dev/fuse` is one whole request (the buffer holds the largest
//!   one, `max_read`/`max_write` + headers); it is written to the stream whole;
//! - replies: read from the stream by their header length, bounded by
//!   `fs_share::transport::stream::read_message` (the guest is untrusted: a garbage length ends
//!   the session), each written to `/dev/fuse` in one `write`.
//!
//! The session ends when the mount goes away (`/dev/fuse` reports ENODEV: `fusermount3 -u`,
//! `umount`), when the stream closes (the VM stopped), or on [`Stopper::stop`] (the command's
//! SIGINT/SIGTERM); the mount is then removed (lazily, so a busy mount point does not keep the
//! command alive) and the `/dev/fuse` descriptors closed, which aborts anything still waiting
//! on the mount with ENOTCONN.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;

use fs_share::transport::stream::{self, StreamError, OUT_HEADER_LEN};
use fuse_backend_rs::transport::FuseSession;

/// How often the request thread looks at the stop flag while `/dev/fuse` is idle.
const POLL_MS: i32 = 200;

/// Errors setting up or running a mount.
#[derive(Debug, thiserror::Error)]
pub enum FuseMountError {
    #[error("Mount point {0} does not exist: create it first (`mkdir -p`)")]
    NoMountPoint(PathBuf),
    #[error("Mount point {0} is not a directory: give an (empty) directory")]
    NotADirectory(PathBuf),
    #[error("/dev/fuse is missing: load the fuse module (`modprobe fuse`), or give the container the device (`--device /dev/fuse`)")]
    NoFuseDevice,
    #[error("fusermount3 is needed to mount without root: install the fuse3 package")]
    NoFusermount,
    #[error("/dev/fuse is not readable and writable by this user: run as root, or make it mode 0666 as most distributions do (`chmod 0666 /dev/fuse`)")]
    FuseDeviceDenied,
    #[error("Cannot mount FUSE at {0}: {1}")]
    Mount(PathBuf, String),
    #[error("Cannot start a mount thread")]
    Thread(#[source] io::Error),
    #[error("Reading /dev/fuse failed")]
    FuseRead(#[source] io::Error),
    #[error("The kernel refused a reply from the guest")]
    FuseWrite(#[source] io::Error),
    #[error("The guest sent a malformed reply")]
    BadReply(#[source] StreamError),
}

/// How a session ended (when it did not fail).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The mount was removed (`fusermount3 -u`, `umount`).
    Unmounted,
    /// [`Stopper::stop`] was called.
    Stopped,
    /// The other end closed the stream (the VM stopped, or its server ended).
    PeerClosed,
}

type Outcome = Result<Ended, FuseMountError>;

/// Ends a running [`FuseMount::serve`] from another thread (a signal handler thread).
#[derive(Clone)]
pub struct Stopper(mpsc::Sender<Outcome>);

impl Stopper {
    pub fn stop(&self) {
        let _ = self.0.send(Ok(Ended::Stopped));
    }
}

/// A mounted FUSE file system waiting for its server.
pub struct FuseMount {
    session: FuseSession,
    fuse: File,
    tx: mpsc::Sender<Outcome>,
    rx: mpsc::Receiver<Outcome>,
}

/// Checks what a mount needs before anything is set up, with errors that say what to do.
pub fn check_prerequisites(mountpoint: &Path) -> Result<(), FuseMountError> {
    match std::fs::metadata(mountpoint) {
        Err(_) => return Err(FuseMountError::NoMountPoint(mountpoint.to_path_buf())),
        Ok(m) if !m.is_dir() => {
            return Err(FuseMountError::NotADirectory(mountpoint.to_path_buf()))
        }
        Ok(_) => {}
    }
    if !Path::new("/dev/fuse").exists() {
        return Err(FuseMountError::NoFuseDevice);
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        // fuse-backend-rs opens /dev/fuse itself and only lets fusermount3 do the mount.
        // SAFETY: the path is a valid NUL-terminated string; access only reads it.
        if unsafe { libc::access(c"/dev/fuse".as_ptr(), libc::R_OK | libc::W_OK) } != 0 {
            return Err(FuseMountError::FuseDeviceDenied);
        }
        if !crate::host_tools::on_path("fusermount3") {
            return Err(FuseMountError::NoFusermount);
        }
    }
    Ok(())
}

impl FuseMount {
    /// Mounts an (unserved) FUSE file system at `mountpoint`; `fsname` shows in `mount`.
    pub fn mount(
        mountpoint: &Path,
        fsname: &str,
        read_only: bool,
    ) -> Result<FuseMount, FuseMountError> {
        check_prerequisites(mountpoint)?;
        let mount_err = |e: fuse_backend_rs::transport::Error| {
            FuseMountError::Mount(mountpoint.to_path_buf(), e.to_string())
        };
        let mut session =
            FuseSession::new(mountpoint, fsname, "vmctl", read_only).map_err(mount_err)?;
        // The guest's files keep the guest's owners and modes; the kernel checks permissions
        // (`default_permissions`). Only the user who mounted may enter, as with sshfs:
        // allow_other needs root or user_allow_other in /etc/fuse.conf.
        session.set_allow_other(false);
        session.mount().map_err(mount_err)?;
        let fuse = session
            .get_fuse_file()
            .ok_or_else(|| {
                FuseMountError::Mount(mountpoint.to_path_buf(), "no /dev/fuse file".into())
            })?
            .try_clone()
            .map_err(|e| FuseMountError::Mount(mountpoint.to_path_buf(), e.to_string()))?;
        let (tx, rx) = mpsc::channel();
        Ok(FuseMount {
            session,
            fuse,
            tx,
            rx,
        })
    }

    pub fn mountpoint(&self) -> &Path {
        self.session.mountpoint()
    }

    /// A handle that ends [`serve`](Self::serve) from another thread.
    pub fn stopper(&self) -> Stopper {
        Stopper(self.tx.clone())
    }

    /// Carries requests to `stream` and replies back until the session ends (see the module
    /// docs), then unmounts. `Ok` tells how it ended; an error is a failure of either side.
    pub fn serve(mut self, stream: UnixStream) -> Outcome {
        let done = Arc::new(AtomicBool::new(false));
        let spawn = |name: &str, f: Box<dyn FnOnce() -> Outcome + Send>| {
            let tx = self.tx.clone();
            thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    let _ = tx.send(f());
                })
                .map_err(FuseMountError::Thread)
        };
        let requests = {
            let (fuse, to_guest, done) = (self.fuse.try_clone(), stream.try_clone(), done.clone());
            let (fuse, to_guest) = (
                fuse.map_err(FuseMountError::Thread)?,
                to_guest.map_err(FuseMountError::Thread)?,
            );
            spawn(
                "fuse-requests",
                Box::new(move || requests(&fuse, to_guest, &done)),
            )?
        };
        let replies = {
            let (fuse, from_guest, done) =
                (self.fuse.try_clone(), stream.try_clone(), done.clone());
            let (fuse, from_guest) = (
                fuse.map_err(FuseMountError::Thread)?,
                from_guest.map_err(FuseMountError::Thread)?,
            );
            spawn(
                "fuse-replies",
                Box::new(move || replies(&fuse, from_guest, &done)),
            )?
        };
        // Every sender lives in a thread or a Stopper, and each thread sends once before it
        // ends, so this cannot wait forever once both threads are gone.
        let first = self.rx.recv().unwrap_or(Ok(Ended::PeerClosed));
        // Unmount while the threads still serve, so nothing the unmount asks waits forever.
        if let Err(e) = self.session.umount() {
            tracing::warn!("unmounting {}: {e}", self.session.mountpoint().display());
        }
        done.store(true, Ordering::SeqCst);
        let _ = stream.shutdown(Shutdown::Both);
        let _ = requests.join();
        let _ = replies.join();
        first
    }
}

/// `/dev/fuse` → stream, one whole request per read.
fn requests(fuse: &File, mut to_guest: UnixStream, done: &AtomicBool) -> Outcome {
    let mut buf = vec![0u8; stream::max_message()];
    let mut reader = fuse;
    loop {
        if done.load(Ordering::SeqCst) {
            return Ok(Ended::Stopped);
        }
        if !readable(fuse)? {
            continue;
        }
        let n = match reader.read(&mut buf) {
            Ok(n) => n,
            Err(e) => match e.raw_os_error() {
                Some(libc::ENODEV) => return Ok(Ended::Unmounted),
                // Interrupted before we read it, nothing there yet, or a signal.
                Some(libc::ENOENT | libc::EAGAIN | libc::EINTR) => continue,
                _ => return Err(FuseMountError::FuseRead(e)),
            },
        };
        let Some(req) = buf.get(..n) else { continue };
        if to_guest.write_all(req).is_err() {
            return Ok(Ended::PeerClosed);
        }
    }
}

/// Waits up to [`POLL_MS`] for `/dev/fuse` to have a request (or report an error, which the
/// following read returns).
fn readable(fuse: &File) -> Result<bool, FuseMountError> {
    let mut pfd = libc::pollfd {
        fd: fuse.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid pollfd that outlives the call.
    let r = unsafe { libc::poll(&mut pfd, 1, POLL_MS) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(FuseMountError::FuseRead(e))
        };
    }
    Ok(r > 0)
}

/// Stream → `/dev/fuse`, one bounded reply at a time.
fn replies(fuse: &File, mut from_guest: UnixStream, done: &AtomicBool) -> Outcome {
    let max = stream::max_message();
    let mut buf = Vec::with_capacity(max);
    let mut writer = fuse;
    loop {
        let n = match stream::read_message(&mut from_guest, &mut buf, OUT_HEADER_LEN, max) {
            Ok(Some(n)) => n,
            Ok(None) => return Ok(Ended::PeerClosed),
            // Our own shutdown of the stream at the end of the session.
            Err(_) if done.load(Ordering::SeqCst) => return Ok(Ended::Stopped),
            // The VM went away, possibly in the middle of a reply.
            Err(StreamError::Read(_) | StreamError::Truncated) => return Ok(Ended::PeerClosed),
            Err(e) => return Err(FuseMountError::BadReply(e)),
        };
        let Some(reply) = buf.get(..n) else { continue };
        // One write is one reply: /dev/fuse takes it whole or refuses it.
        match writer.write(reply) {
            Ok(w) if w == n => {}
            Ok(w) => {
                return Err(FuseMountError::FuseWrite(io::Error::other(format!(
                    "/dev/fuse took {w} of {n} bytes"
                ))))
            }
            Err(e) => match e.raw_os_error() {
                // The request was interrupted meanwhile: the kernel no longer waits for it.
                Some(libc::ENOENT) => {}
                Some(libc::ENODEV) => return Ok(Ended::Unmounted),
                _ => return Err(FuseMountError::FuseWrite(e)),
            },
        }
    }
}

#[cfg(test)]
mod tests;
