//! Log files while the VM runs: capped and rotated in place, followed across rotations, and
//! shown safely on a terminal.
//!
//! Every log writer (QEMU's console chardev with `append=on`, the builtin VMM's serial file,
//! the supervisor and the device backends through `instance::open_log`) writes with
//! `O_APPEND`, so a log can be rotated under it by copying it to `NAME.log.1` and truncating
//! it: the writer's next line lands at the start of the emptied file (lines written between
//! the copy and the truncation are lost; at most one poll's worth).
//!
//! What the guest writes reaches the user's terminal through `vmctl logs`, so escape
//! sequences and other control characters are shown as `\x1b`-style text, and invalid UTF-8
//! as U+FFFD, never passed through raw.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// A log larger than this is rotated while running (and at the start of a run).
pub const MAX_LOG_BYTES: u64 = crate::instance::LOG_ROTATE_BYTES;
/// Largest chunk read from a log at once (memory stays bounded whatever the file size).
const CHUNK: usize = 64 * 1024;
/// Longest line kept whole; longer ones are cut into pieces of this size.
const MAX_LINE: usize = 16 * 1024;

/// The rotated copy of `path` (`NAME.log.1`).
pub fn rotated(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

/// If `path` is larger than `max`, copies it to `NAME.log.1` (replacing the older copy) and
/// truncates it. Returns whether it rotated.
pub fn rotate_in_place(path: &Path, max: u64) -> std::io::Result<bool> {
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= max {
        return Ok(false);
    }
    let tmp = rotated(path).with_extension("1.tmp");
    std::fs::copy(path, &tmp)?;
    std::fs::rename(&tmp, rotated(path))?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .set_len(0)?;
    Ok(true)
}

/// Rotates every `*.log` in `dir` that has grown past `max`.
pub fn rotate_dir(dir: &Path, max: u64) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "log") {
            match rotate_in_place(&p, max) {
                Ok(true) => tracing::info!("rotated {} (over {max} bytes)", p.display()),
                Ok(false) => {}
                Err(e) => tracing::warn!("cannot rotate {}: {e}", p.display()),
            }
        }
    }
}

/// One line (with or without its `\n`) made safe for a terminal: invalid UTF-8 becomes
/// U+FFFD, a `\r` before the `\n` is dropped, other control characters (ESC, `\r`, C1, DEL)
/// are written as `\xNN` / `\u{NN}` text; tabs stay.
pub fn sanitize_line(line: &[u8]) -> String {
    let (body, nl) = match line.strip_suffix(b"\n") {
        Some(b) => (b.strip_suffix(b"\r").unwrap_or(b), true),
        None => (line, false),
    };
    let text = String::from_utf8_lossy(body);
    let mut out = String::with_capacity(text.len() + 1);
    for c in text.chars() {
        match c {
            '\t' => out.push(c),
            c if c.is_control() => {
                let n = u32::from(c);
                if n < 0x80 {
                    out.push_str(&format!("\\x{n:02x}"));
                } else {
                    out.push_str(&format!("\\u{{{n:x}}}"));
                }
            }
            c => out.push(c),
        }
    }
    if nl {
        out.push('\n');
    }
    out
}

/// Reads a log from the start and then as it grows, across rotations (the file shrinking
/// means it was truncated: read it again from the start), one complete line at a time.
pub struct Follower {
    path: PathBuf,
    pos: u64,
    partial: Vec<u8>,
}

impl Follower {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            pos: 0,
            partial: Vec::new(),
        }
    }

    /// Complete lines written since the last call (at most about [`CHUNK`] bytes of them);
    /// empty when there is nothing new. `flush` also returns a last line without `\n`.
    pub fn poll(&mut self, flush: bool) -> std::io::Result<Vec<Vec<u8>>> {
        let mut f = std::fs::File::open(&self.path)?;
        let len = f.metadata()?.len();
        if len < self.pos {
            // Rotated (truncated) under us.
            self.pos = 0;
        }
        f.seek(SeekFrom::Start(self.pos))?;
        let mut buf = Vec::with_capacity(CHUNK);
        let n = f.take(CHUNK as u64).read_to_end(&mut buf)?;
        self.pos += n as u64;
        let mut lines = Vec::new();
        for b in buf {
            self.partial.push(b);
            if b == b'\n' || self.partial.len() >= MAX_LINE {
                lines.push(std::mem::take(&mut self.partial));
            }
        }
        if flush && !self.partial.is_empty() {
            lines.push(std::mem::take(&mut self.partial));
        }
        Ok(lines)
    }

    /// Whether the last poll left unread bytes in the file.
    pub fn behind(&self) -> bool {
        std::fs::metadata(&self.path).is_ok_and(|m| m.len() > self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn test_sanitize_escapes_controls_and_tolerates_bad_utf8() {
        assert_eq!(sanitize_line(b"plain text\n"), "plain text\n");
        assert_eq!(sanitize_line(b"crlf\r\n"), "crlf\n");
        assert_eq!(
            sanitize_line(b"\x1b[2J\x1b]0;title\x07red\n"),
            "\\x1b[2J\\x1b]0;title\\x07red\n"
        );
        assert_eq!(sanitize_line(b"a\rb\tc"), "a\\x0db\tc");
        assert_eq!(
            sanitize_line(b"bad \xff\xfe utf8\n"),
            "bad \u{fffd}\u{fffd} utf8\n"
        );
        // A C1 control (CSI as one code point) and DEL.
        assert_eq!(
            sanitize_line("x\u{9b}31my\x7f".as_bytes()),
            "x\\u{9b}31my\\x7f"
        );
    }

    #[test]
    fn test_rotate_in_place_keeps_one_copy_and_appends_continue_at_start() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("console.log");
        let mut w = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .unwrap();
        w.write_all(&vec![b'a'; 2000]).unwrap();
        assert!(!rotate_in_place(&p, 4096).unwrap());
        w.write_all(&vec![b'b'; 3000]).unwrap();
        assert!(rotate_in_place(&p, 4096).unwrap());
        assert_eq!(std::fs::metadata(rotated(&p)).unwrap().len(), 5000);
        // The writer keeps its fd; with O_APPEND its next line starts the emptied file.
        w.write_all(b"after\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"after\n");
        w.write_all(&vec![b'c'; 5000]).unwrap();
        assert!(rotate_in_place(&p, 4096).unwrap());
        let old = std::fs::read(rotated(&p)).unwrap();
        assert!(old.starts_with(b"after\n"), "the older copy is replaced");
        assert!(!d.path().join("console.log.1.tmp").exists());
    }

    #[test]
    fn test_follower_reads_lines_across_a_rotation() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.log");
        let mut w = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .unwrap();
        let mut f = Follower::new(&p);
        w.write_all(b"one\ntw").unwrap();
        assert_eq!(f.poll(false).unwrap(), vec![b"one\n".to_vec()]);
        w.write_all(b"o\n").unwrap();
        assert_eq!(f.poll(false).unwrap(), vec![b"two\n".to_vec()]);
        w.write_all(&[b'z'; 100]).unwrap();
        w.write_all(b"\n").unwrap();
        assert!(rotate_in_place(&p, 10).unwrap());
        w.write_all(b"three\n").unwrap();
        // What was not read yet when the log rotated stays in x.log.1; reading resumes at
        // the start of the truncated file.
        assert_eq!(f.poll(false).unwrap(), vec![b"three\n".to_vec()]);
        w.write_all(b"no newline").unwrap();
        assert!(f.poll(false).unwrap().is_empty());
        assert_eq!(f.poll(true).unwrap(), vec![b"no newline".to_vec()]);
    }
}
