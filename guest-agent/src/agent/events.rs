//! `Request::ReplayEvents`: host file events replayed in the guest, so inotify watchers in
//! containers (bind mounts of a shared folder) see changes made on the host.
//!
//! virtio-fs cannot notify a Linux guest, so fs-share watches the share on the host and the
//! supervisor streams its event lines (`fs_share::events`) here. For each created, changed or
//! moved-in file the agent sets its times to what they are (`utimensat`, mtime for both):
//! the guest kernel refreshes the FUSE attributes and raises IN_ATTRIB for every watcher,
//! which libuv/Node, chokidar, watchdog and inotifywait react to. Lima does the same.
//!
//! Paths come from the host but name entries the guest can shape (it can put symlinks in the
//! share), so each is resolved beneath the mount root with no symlink followed.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use fs_share::events::{EventKind, HostEvent};
use fs_share::sys::linux::ops::{open_beneath, open_root};
use guest_agent::protocol::{write_frame, FrameReader, ProtocolError, Response};

use super::bridge::Duplex;
use tracing::info;

/// Answers `ReplayEvents { path }` and replays event lines until the host closes.
pub fn replay<S: Duplex>(
    mut reader: FrameReader<S>,
    mut conn: S,
    path: &str,
) -> Result<(), ProtocolError> {
    let root = match open_root(Path::new(path)) {
        Ok(fd) => fd,
        Err(e) => {
            let message = format!("replay events: {path}: {e}");
            write_frame(&mut conn, &Response::Error { message })?;
            return Ok(());
        }
    };
    write_frame(&mut conn, &Response::Ok)?;
    let mut replayed = 0u64;
    loop {
        let ev = match reader.read::<HostEvent>() {
            Ok(Some(ev)) => ev,
            Ok(None) => break,
            Err(e) if e.is_recoverable() => continue,
            Err(e) => return Err(e),
        };
        if ev.check_path().is_err() || ev.kind == EventKind::Delete {
            continue;
        }
        if touch(&root, &ev.path).is_ok() {
            replayed += 1;
        }
    }
    info!("host events for {path}: {replayed} replayed");
    Ok(())
}

fn cstring(s: &str) -> std::io::Result<CString> {
    CString::new(s).map_err(|_| std::io::ErrorKind::InvalidInput.into())
}

/// Sets `rel`'s (beneath `root`) access and change times to its modification time. Each
/// directory on the way is opened with fs-share's `open_beneath` (no `..`, no symlink, no
/// magic link followed), the same confinement its passthrough applies.
fn touch(root: &OwnedFd, rel: &str) -> std::io::Result<()> {
    let (dirs, name) = rel.rsplit_once('/').unwrap_or(("", rel));
    let mut parent: Option<OwnedFd> = None;
    for comp in dirs.split('/').filter(|c| !c.is_empty()) {
        let at = parent.as_ref().unwrap_or(root).as_fd();
        let next = open_beneath(at, &cstring(comp)?, libc::O_PATH | libc::O_DIRECTORY, 0)?;
        parent = Some(next);
    }
    let dir = parent.as_ref().unwrap_or(root).as_raw_fd();
    let c = cstring(name)?;
    // SAFETY: an all-zero stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid dirfd, NUL-terminated name, writable stat.
    if unsafe { libc::fstatat(dir, c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let t = libc::timespec {
        tv_sec: st.st_mtime,
        tv_nsec: st.st_mtime_nsec,
    };
    let times = [t, t];
    // SAFETY: valid dirfd, NUL-terminated name, two valid timespecs.
    if unsafe { libc::utimensat(dir, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::symlink;
    use std::os::unix::net::UnixStream;

    /// Watched files get IN_ATTRIB from a replay; a symlink out of the root is not followed.
    #[test]
    fn test_replay_raises_attrib_and_stays_beneath_the_root() {
        let share = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(share.path().join("src")).unwrap();
        std::fs::write(share.path().join("src/a.txt"), "a").unwrap();
        std::fs::write(outside.path().join("secret"), "s").unwrap();
        symlink(outside.path(), share.path().join("out")).unwrap();

        let mut ino = inotify::Inotify::init().unwrap();
        ino.watches()
            .add(share.path().join("src/a.txt"), inotify::WatchMask::ATTRIB)
            .unwrap();
        ino.watches()
            .add(outside.path().join("secret"), inotify::WatchMask::ATTRIB)
            .unwrap();

        let (mut host, agent) = UnixStream::pair().unwrap();
        let root = share.path().to_str().unwrap().to_string();
        let t = std::thread::spawn(move || {
            let reader = FrameReader::new(agent.try_clone().unwrap());
            replay(reader, agent, &root)
        });
        let mut r = FrameReader::new(host.try_clone().unwrap());
        assert_eq!(r.expect::<Response>().unwrap(), Response::Ok);
        for line in [
            r#"{"kind":"modify","path":"out/secret"}"#,
            r#"{"kind":"modify","path":"../x"}"#,
            "garbage",
            r#"{"kind":"modify","path":"src/a.txt"}"#,
        ] {
            host.write_all(line.as_bytes()).unwrap();
            host.write_all(b"\n").unwrap();
        }
        drop(host);
        drop(r);
        t.join().unwrap().unwrap();

        let mut buf = [0u8; 4096];
        let mut seen = Vec::new();
        // Non-blocking read of what is queued: exactly the file inside the share.
        let fd = ino.as_raw_fd();
        // SAFETY: a valid inotify fd; O_NONBLOCK only changes how reads wait.
        unsafe { libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK) };
        if let Ok(events) = ino.read_events(&mut buf) {
            for e in events {
                seen.push(e.wd);
            }
        }
        assert_eq!(seen.len(), 1, "one IN_ATTRIB, for src/a.txt only");
    }
}
