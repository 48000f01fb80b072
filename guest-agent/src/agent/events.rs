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

use std::collections::HashSet;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::{Condvar, Mutex};

use fs_share::events::{EventKind, HostEvent};
use fs_share::sys::linux::ops::{open_beneath, open_root};
use guest_agent::protocol::{write_frame, FrameReader, ProtocolError, Response};

use super::bridge::Duplex;
use tracing::info;

/// Files waiting beyond this many are replayed as their directories instead: a burst (a
/// `git checkout`, an unpacked tarball) costs one touch per directory, not one FUSE round
/// trip per file, so a later change is not stuck behind thousands. Watchers see IN_ATTRIB on
/// the directory — the same "rescan here" hint inotify gives on its own overflow.
const COLLAPSE_AT: usize = 256;
/// Directories waiting beyond this many collapse to the share's root.
const MAX_DIRS: usize = 4096;

/// What is waiting to be replayed: deduplicated, and bounded whatever the host sends.
#[derive(Default, Debug)]
struct Backlog {
    files: Vec<String>,
    dirs: Vec<String>,
    queued: HashSet<String>,
    /// Touch the share's root directory.
    root_dir: bool,
    /// Too much waited: the root's touch stands for everything below it.
    overflow: bool,
    collapsed: u64,
}

impl Backlog {
    fn push(&mut self, path: String) {
        if self.overflow || self.queued.contains(&path) {
            return;
        }
        self.queued.insert(path.clone());
        self.files.push(path);
        if self.files.len() > COLLAPSE_AT {
            self.collapse_files();
        }
    }

    /// Replaces the directories with the most waiting files by the directories themselves,
    /// until at most half the threshold of files waits: a burst in one folder collapses while
    /// a lone file changed elsewhere keeps its own event.
    fn collapse_files(&mut self) {
        let parent = |f: &str| f.rsplit_once('/').map(|(d, _)| d.to_string());
        let mut per_dir: std::collections::HashMap<Option<String>, usize> = Default::default();
        for f in &self.files {
            *per_dir.entry(parent(f)).or_default() += 1;
        }
        let mut groups: Vec<(Option<String>, usize)> = per_dir.into_iter().collect();
        groups.sort_by_key(|g| std::cmp::Reverse(g.1));
        let mut left = self.files.len();
        let mut collapse: HashSet<Option<String>> = HashSet::new();
        for (dir, n) in groups {
            if left <= COLLAPSE_AT / 2 {
                break;
            }
            left -= n;
            collapse.insert(dir);
        }
        let files = std::mem::take(&mut self.files);
        for file in files {
            let dir = parent(&file);
            if !collapse.contains(&dir) {
                self.files.push(file);
                continue;
            }
            self.queued.remove(&file);
            self.collapsed += 1;
            match dir {
                Some(dir) => {
                    if self.queued.insert(dir.clone()) {
                        self.dirs.push(dir);
                    }
                }
                None => self.root_dir = true,
            }
        }
        if self.dirs.len() > MAX_DIRS {
            self.overflow();
        }
    }

    fn overflow(&mut self) {
        self.overflow = true;
        self.root_dir = true;
        self.dirs.clear();
        self.files.clear();
        self.queued.clear();
    }

    /// Queues a directory's touch (`None`: the root).
    fn push_dir(&mut self, dir: Option<String>) {
        match dir {
            _ if self.overflow => {}
            None => self.root_dir = true,
            Some(d) => {
                if self.queued.insert(d.clone()) {
                    self.dirs.push(d);
                }
                if self.dirs.len() > MAX_DIRS {
                    self.overflow();
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.files.is_empty() && self.dirs.is_empty() && !self.root_dir
    }

    /// Everything waiting (directories, then files; `None` is the root), leaving it empty.
    fn take(&mut self) -> Vec<Option<String>> {
        let mut out: Vec<Option<String>> = Vec::new();
        self.overflow = false;
        if std::mem::take(&mut self.root_dir) {
            out.push(None);
        }
        out.extend(std::mem::take(&mut self.dirs).into_iter().map(Some));
        out.extend(std::mem::take(&mut self.files).into_iter().map(Some));
        self.queued.clear();
        out
    }
}

/// The reader fills it, the toucher drains it.
#[derive(Default)]
struct Shared {
    backlog: Mutex<(Backlog, bool)>,
    ready: Condvar,
}

/// Answers `ReplayEvents { path }` and replays event lines until the host closes. The
/// stream is read as fast as it comes (so the host never times the relay out) while another
/// thread touches what is waiting.
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
    let shared = Shared::default();
    let (replayed, collapsed, result) = std::thread::scope(|scope| {
        let toucher = scope.spawn(|| touch_until_closed(&shared, &root, path));
        let result = read_until_closed(&mut reader, &shared);
        shared.backlog.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        shared.ready.notify_one();
        let replayed = toucher.join().unwrap_or(0);
        let collapsed = shared
            .backlog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .collapsed;
        (replayed, collapsed, result)
    });
    info!("host events for {path}: {replayed} replayed ({collapsed} files as their directories)");
    result
}

fn read_until_closed<S: Duplex>(
    reader: &mut FrameReader<S>,
    shared: &Shared,
) -> Result<(), ProtocolError> {
    loop {
        let ev = match reader.read::<HostEvent>() {
            Ok(Some(ev)) => ev,
            Ok(None) => return Ok(()),
            Err(e) if e.is_recoverable() => continue,
            Err(e) => return Err(e),
        };
        if ev.check_path().is_err() || ev.path.is_empty() {
            continue;
        }
        {
            let mut guard = shared.backlog.lock().unwrap_or_else(|e| e.into_inner());
            let backlog = &mut guard.0;
            // A file gone from the host cannot raise IN_DELETE here; its directory's
            // IN_ATTRIB makes directory watchers (chokidar, watchdog) rescan and see it
            // gone. A move touches the directory too: the event may be its old name.
            if matches!(ev.kind, EventKind::Delete | EventKind::Move) {
                backlog.push_dir(ev.path.rsplit_once('/').map(|(d, _)| d.to_string()));
            }
            if ev.kind != EventKind::Delete {
                backlog.push(ev.path);
            }
        }
        shared.ready.notify_one();
    }
}

/// Touches what the backlog holds until the reader is done and the backlog empty; returns
/// how many touches succeeded.
fn touch_until_closed(shared: &Shared, root: &OwnedFd, root_path: &str) -> u64 {
    let mut replayed = 0u64;
    loop {
        let batch = {
            let mut guard = shared.backlog.lock().unwrap_or_else(|e| e.into_inner());
            while guard.0.is_empty() && !guard.1 {
                guard = shared.ready.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
            if guard.0.is_empty() {
                return replayed;
            }
            guard.0.take()
        };
        for entry in batch {
            let done = match &entry {
                Some(rel) => touch(root, rel),
                None => touch_path(root_path),
            };
            if done.is_ok() {
                replayed += 1;
            }
        }
    }
}

/// Sets the times of the share's root (the agent's own mount point, so a plain path).
fn touch_path(path: &str) -> std::io::Result<()> {
    let c = cstring(path)?;
    // SAFETY: an all-zero stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: NUL-terminated path, writable stat.
    if unsafe { libc::stat(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let t = libc::timespec {
        tv_sec: st.st_mtime,
        tv_nsec: st.st_mtime_nsec,
    };
    let times = [t, t];
    // SAFETY: NUL-terminated path, two valid timespecs.
    if unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
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

    /// Runs `replay` on the share `root` over a socket pair, feeds it `lines` (each ending
    /// in a newline) and waits until it has replayed them all.
    fn replay_lines(root: &Path, lines: &str) {
        let (mut host, agent) = UnixStream::pair().unwrap();
        let root = root.to_str().unwrap().to_string();
        let t = std::thread::spawn(move || {
            let reader = FrameReader::new(agent.try_clone().unwrap());
            replay(reader, agent, &root)
        });
        let mut r = FrameReader::new(host.try_clone().unwrap());
        assert_eq!(r.expect::<Response>().unwrap(), Response::Ok);
        host.write_all(lines.as_bytes()).unwrap();
        drop(host);
        drop(r);
        t.join().unwrap().unwrap();
    }

    /// The watch of every event queued on `ino`, read without waiting.
    fn queued_watches(ino: &mut inotify::Inotify) -> Vec<inotify::WatchDescriptor> {
        let fd = ino.as_raw_fd();
        // SAFETY: a valid inotify fd; O_NONBLOCK only changes how reads wait.
        unsafe { libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK) };
        let mut buf = [0u8; 65536];
        let mut seen = Vec::new();
        while let Ok(events) = ino.read_events(&mut buf) {
            let before = seen.len();
            seen.extend(events.map(|e| e.wd));
            if seen.len() == before {
                break;
            }
        }
        seen
    }

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

        let lines = [
            r#"{"kind":"modify","path":"out/secret"}"#,
            r#"{"kind":"modify","path":"../x"}"#,
            "garbage",
            r#"{"kind":"modify","path":"src/a.txt"}"#,
        ];
        replay_lines(share.path(), &(lines.join("\n") + "\n"));
        // Exactly the file inside the share.
        let seen = queued_watches(&mut ino);
        assert_eq!(seen.len(), 1, "one IN_ATTRIB, for src/a.txt only");
    }

    /// A burst is bounded: past the threshold files become their directories, and
    /// directories past theirs become the root; nothing is queued twice.
    #[test]
    fn test_backlog_collapses_bursts_to_directories_then_the_root() {
        let mut b = Backlog::default();
        for _ in 0..3 {
            b.push("src/a.js".into());
        }
        assert_eq!(b.take(), vec![Some("src/a.js".to_string())]);
        assert!(b.is_empty());

        for i in 0..10_000 {
            b.push(format!("burst/f{i}"));
        }
        b.push("src/a.js".into());
        let batch = b.take();
        assert!(batch.contains(&Some("burst".to_string())), "{batch:?}");
        assert!(batch.contains(&Some("src/a.js".to_string())));
        assert!(batch.len() < COLLAPSE_AT + 2, "{} entries", batch.len());

        for i in 0..(COLLAPSE_AT + 1) * (MAX_DIRS + 1) {
            b.push(format!("d{}/f{i}", i % (MAX_DIRS + 1)));
        }
        assert_eq!(b.take(), vec![None], "too many directories: the root");
        b.push("top.txt".into());
        assert_eq!(b.take(), vec![Some("top.txt".to_string())]);

        // A delete at the top touches the root directory and drops nothing waiting.
        b.push("later.txt".into());
        b.push_dir(None);
        assert_eq!(b.take(), vec![None, Some("later.txt".to_string())]);
    }

    /// A file deleted (or moved away) on the host: its directory gets IN_ATTRIB.
    #[test]
    fn test_replay_of_a_delete_touches_the_directory() {
        let share = tempfile::tempdir().unwrap();
        std::fs::create_dir(share.path().join("src")).unwrap();
        let mut ino = inotify::Inotify::init().unwrap();
        let dir_wd = ino
            .watches()
            .add(share.path().join("src"), inotify::WatchMask::ATTRIB)
            .unwrap();
        replay_lines(
            share.path(),
            "{\"kind\":\"delete\",\"path\":\"src/gone.js\"}\n",
        );
        let seen = queued_watches(&mut ino);
        assert!(seen.contains(&dir_wd), "no IN_ATTRIB on the directory");
    }

    /// A 10k-file burst replayed for real: the directory's watcher hears of it, and a file
    /// written after it still gets its own event.
    #[test]
    fn test_replay_of_a_burst_touches_the_directory_and_later_files() {
        let share = tempfile::tempdir().unwrap();
        std::fs::create_dir(share.path().join("burst")).unwrap();
        for i in 0..10_000 {
            std::fs::write(share.path().join(format!("burst/f{i}")), "x").unwrap();
        }
        std::fs::write(share.path().join("later.txt"), "l").unwrap();
        let mut ino = inotify::Inotify::init().unwrap();
        let dir_wd = ino
            .watches()
            .add(share.path().join("burst"), inotify::WatchMask::ATTRIB)
            .unwrap();
        let later_wd = ino
            .watches()
            .add(share.path().join("later.txt"), inotify::WatchMask::ATTRIB)
            .unwrap();

        let mut lines = String::new();
        for i in 0..10_000 {
            lines.push_str(&format!(
                "{{\"kind\":\"create\",\"path\":\"burst/f{i}\"}}\n"
            ));
        }
        lines.push_str("{\"kind\":\"modify\",\"path\":\"later.txt\"}\n");
        replay_lines(share.path(), &lines);
        let seen = queued_watches(&mut ino);
        // How many of the 10k were touched one by one depends on how far the toucher fell
        // behind here (the bound itself is the backlog test's); that the directory's watcher
        // heard of the burst and the later file got its own event does not.
        assert!(seen.contains(&dir_wd), "the burst's directory was touched");
        assert!(seen.contains(&later_wd), "the later file was touched");
    }
}
