//! Guest-side stand-ins for the host-events test (tests/guest_qemu.rs):
//!
//! - `guest_events replay MOUNT TTY`: the guest agent's replay, by reference — reads event
//!   lines (`fs_share::events`) from TTY and, for each changed file, calls
//!   `utimensat(MOUNT/path, {mtime, mtime})` so the guest kernel refreshes the FUSE attributes
//!   and raises IN_ATTRIB for the guest's inotify watchers.
//! - `guest_events watch FILE TTY`: a "container" watching FILE with inotify; prints
//!   `GUEST-INOTIFY` and writes `ACK <name>` to TTY for each event.

#[cfg(target_os = "linux")]
fn main() -> std::io::Result<()> {
    imp::main()
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("guest_events runs inside a Linux guest");
}

#[cfg(target_os = "linux")]
mod imp {
    use std::fs::OpenOptions;
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;

    use fs_share::events::{EventKind, HostEvent};

    fn replay(mount: &Path, tty: &Path) -> std::io::Result<()> {
        let input = BufReader::new(OpenOptions::new().read(true).open(tty)?);
        for line in input.lines() {
            let line = line?;
            let Some(start) = line.find('{') else {
                continue;
            };
            let Ok(ev) = HostEvent::parse_line(&line[start..]) else {
                continue;
            };
            if matches!(ev.kind, EventKind::Delete) {
                continue;
            }
            let p = mount.join(&ev.path);
            let Ok(md) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let t = libc::timespec {
                tv_sec: md.mtime(),
                tv_nsec: md.mtime_nsec(),
            };
            let times = [t, t];
            let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
                continue;
            };
            // SAFETY: NUL-terminated path and two valid timespecs; the result is only logged.
            let rc = unsafe {
                libc::utimensat(
                    libc::AT_FDCWD,
                    c.as_ptr(),
                    times.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            };
            println!("GUEST-REPLAY {} rc={rc}", ev.path);
        }
        Ok(())
    }

    fn watch(file: &Path, tty: &Path) -> std::io::Result<()> {
        let mut ino = inotify::Inotify::init()?;
        ino.watches().add(
            file,
            inotify::WatchMask::ATTRIB
                | inotify::WatchMask::MODIFY
                | inotify::WatchMask::CLOSE_WRITE,
        )?;
        let mut out = OpenOptions::new().write(true).open(tty)?;
        println!("GUEST-WATCHING {}", file.display());
        let mut buf = [0u8; 4096];
        loop {
            for e in ino.read_events_blocking(&mut buf)? {
                println!("GUEST-INOTIFY {} {:?}", file.display(), e.mask);
                out.write_all(format!("ACK {}\n", file.display()).as_bytes())?;
                out.flush()?;
            }
        }
    }

    pub fn main() -> std::io::Result<()> {
        let a: Vec<String> = std::env::args().collect();
        match (a.get(1).map(String::as_str), a.get(2), a.get(3)) {
            (Some("replay"), Some(m), Some(t)) => replay(Path::new(m), Path::new(t)),
            (Some("watch"), Some(f), Some(t)) => watch(Path::new(f), Path::new(t)),
            _ => {
                eprintln!("usage: guest_events replay MOUNT TTY | guest_events watch FILE TTY");
                std::process::exit(2)
            }
        }
    }
}
