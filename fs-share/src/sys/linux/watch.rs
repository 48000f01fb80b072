//! Recursive inotify watcher over the share (host side of `crate::events`).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};

use crate::events::{EventKind, HostEvent};

/// Watches every directory under the root (symlinks are not followed), up to `max_watches`.
pub struct Watcher {
    inotify: Inotify,
    root: PathBuf,
    dirs: HashMap<WatchDescriptor, PathBuf>,
    max_watches: usize,
    buf: Vec<u8>,
}

fn mask() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::MODIFY
        | WatchMask::CLOSE_WRITE
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::DONT_FOLLOW
        | WatchMask::ONLYDIR
}

impl Watcher {
    pub fn new(root: &Path, max_watches: usize) -> io::Result<Watcher> {
        let mut w = Watcher {
            inotify: Inotify::init()?,
            root: root.to_path_buf(),
            dirs: HashMap::new(),
            max_watches,
            buf: vec![0u8; 64 * 1024],
        };
        w.add_tree(PathBuf::new());
        Ok(w)
    }

    /// Adds watches for `rel` and every directory below it (best effort: unreadable
    /// directories and the watch limit just stop the descent).
    fn add_tree(&mut self, rel: PathBuf) {
        let mut stack = vec![rel];
        while let Some(rel) = stack.pop() {
            if self.dirs.len() >= self.max_watches {
                tracing::warn!(
                    max = self.max_watches,
                    "inotify watch limit reached; deeper changes are not reported"
                );
                return;
            }
            let abs = self.root.join(&rel);
            match self.inotify.watches().add(&abs, mask()) {
                Ok(wd) => {
                    self.dirs.insert(wd, rel.clone());
                }
                Err(_) => continue,
            }
            let Ok(rd) = std::fs::read_dir(&abs) else {
                continue;
            };
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push(rel.join(e.file_name()));
                }
            }
        }
    }

    /// Blocks until at least one event, then returns the batch (coalesced per path).
    pub fn next_events(&mut self) -> io::Result<Vec<HostEvent>> {
        let mut raw: Vec<(WatchDescriptor, EventMask, Option<std::ffi::OsString>)> = Vec::new();
        {
            let events = self.inotify.read_events_blocking(&mut self.buf)?;
            for e in events {
                raw.push((e.wd.clone(), e.mask, e.name.map(OsStr::to_os_string)));
            }
        }
        let mut out: Vec<HostEvent> = Vec::new();
        let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
        for (wd, m, name) in raw {
            if m.contains(EventMask::IGNORED) {
                self.dirs.remove(&wd);
                continue;
            }
            let (Some(dir), Some(name)) = (self.dirs.get(&wd).cloned(), name) else {
                continue;
            };
            let rel = dir.join(&name);
            let kind = if m.contains(EventMask::CREATE) {
                if m.contains(EventMask::ISDIR) {
                    self.add_tree(rel.clone());
                }
                EventKind::Create
            } else if m.intersects(EventMask::MODIFY | EventMask::CLOSE_WRITE) {
                EventKind::Modify
            } else if m.contains(EventMask::DELETE) {
                EventKind::Delete
            } else if m.contains(EventMask::MOVED_TO) {
                if m.contains(EventMask::ISDIR) {
                    self.add_tree(rel.clone());
                }
                EventKind::Move
            } else if m.contains(EventMask::MOVED_FROM) {
                EventKind::Move
            } else {
                continue;
            };
            let Some(path) = rel.to_str().map(str::to_owned) else {
                continue;
            };
            // A write raises CREATE, MODIFY and CLOSE_WRITE for one path: the guest needs one
            // event per path and batch. Deletes and moves always go out (the guest touches
            // the directory for them) and make the next event for the path news again.
            if matches!(kind, EventKind::Delete | EventKind::Move) {
                seen.remove(&path);
            } else if !seen.insert(path.clone()) {
                continue;
            }
            out.push(HostEvent { kind, path });
        }
        Ok(out)
    }
}
