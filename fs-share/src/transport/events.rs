//! Streams host file events (`crate::events`) to every client of a unix socket — the guest
//! agent, bridged over vsock by the supervisor.

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;

use crate::sys::linux::watch::Watcher;

/// Most directories watched (each costs one inotify watch of the host user's budget).
pub const MAX_WATCHES: usize = 65_536;

/// Binds `socket` (owner-only, see `hostsock`) and starts the watcher and accept threads;
/// they run for the process' lifetime. Clients of another uid (not root) are closed at once.
pub fn spawn(root: &Path, socket: &Path) -> io::Result<()> {
    let listener = sandbox::hostsock::bind_owner_only(socket).map_err(|e| e.into_io())?;
    let clients: Arc<Mutex<Vec<UnixStream>>> = Arc::new(Mutex::new(Vec::new()));
    {
        let clients = clients.clone();
        thread::Builder::new()
            .name("events-accept".into())
            .spawn(move || {
                for s in listener.incoming().flatten() {
                    if !sandbox::hostsock::peer_allowed(std::os::fd::AsFd::as_fd(&s)) {
                        tracing::warn!("events socket: refused a client of another user");
                        continue;
                    }
                    // A client that stops reading must not stall the watcher for the others.
                    let _ = s.set_write_timeout(Some(std::time::Duration::from_secs(2)));
                    clients.lock().unwrap_or_else(|e| e.into_inner()).push(s);
                }
            })?;
    }
    // The first walk of a large tree (a home folder) takes a while: it runs in the watcher's
    // thread, so the share is served at once and events start when the walk is done.
    let root = root.to_path_buf();
    thread::Builder::new()
        .name("events-watch".into())
        .spawn(move || {
            let mut watcher = match Watcher::new(&root, MAX_WATCHES) {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!("inotify: {e}");
                    return;
                }
            };
            loop {
                let events = match watcher.next_events() {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::warn!("inotify: {e}");
                        return;
                    }
                };
                let text: String = events.iter().map(|e| e.to_line()).collect();
                let mut cs = clients.lock().unwrap_or_else(|e| e.into_inner());
                cs.retain_mut(|c| c.write_all(text.as_bytes()).is_ok());
            }
        })?;
    Ok(())
}

/// `fs-share watch`: prints the event lines for `root` on stdout until killed.
pub fn print_events(root: PathBuf) -> io::Result<()> {
    let mut watcher = Watcher::new(&root, MAX_WATCHES)?;
    let stdout = io::stdout();
    loop {
        let events = watcher.next_events()?;
        let mut out = stdout.lock();
        for e in events {
            out.write_all(e.to_line().as_bytes())?;
        }
        out.flush()?;
    }
}
