//! What a long operation prints while it runs (building the kernel and the root image,
//! booting): on a terminal, the chatter of a step (compile counts, package lines) rewrites
//! one line in place while milestones stay; piped, every line as it comes; `--quiet`, the
//! milestones only; `--json`, one JSON object per line on stdout for scripts
//! (`{"event":"step"|"progress"|"ready", ...}`).

use std::cell::Cell;
use std::io::Write;

pub struct Progress {
    tty: bool,
    quiet: bool,
    json: bool,
    /// A chatter line is on screen without its newline.
    open: Cell<bool>,
}

/// The lines of a running step, as opposed to its milestones: the kernel's object counts
/// and the build tools' own output (indented under `[rootfs]`).
fn is_chatter(msg: &str) -> bool {
    let m = msg.trim_start();
    m.starts_with("[kernel] ")
        || m.starts_with("[rootfs]   ")
        || m.starts_with("kernel config check")
}

/// `msg` cut to `width` characters (a rewritten line must not wrap).
fn fit(msg: &str, width: usize) -> &str {
    match msg.char_indices().nth(width) {
        Some((i, _)) => &msg[..i],
        None => msg,
    }
}

impl Progress {
    pub fn new(quiet: bool, json: bool) -> Self {
        let dumb = std::env::var("TERM").is_ok_and(|t| t == "dumb");
        Progress {
            tty: crate::terminal::is_tty(2) && !dumb,
            quiet,
            json,
            open: Cell::new(false),
        }
    }

    /// Whether lines go out as JSON on stdout.
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// One JSON line on stdout: `{"event": event, ...fields}`.
    pub fn event(&self, event: &str, fields: serde_json::Value) {
        let mut obj = serde_json::Map::new();
        obj.insert("event".into(), event.into());
        if let serde_json::Value::Object(m) = fields {
            obj.extend(m);
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", serde_json::Value::Object(obj));
        let _ = out.flush();
    }

    /// One line from a step: chatter or milestone, see the module comment.
    pub fn line(&self, msg: &str) {
        if is_chatter(msg) {
            self.chatter(msg);
        } else {
            self.milestone(msg);
        }
    }

    /// A line that stays.
    pub fn milestone(&self, msg: &str) {
        if self.json {
            self.event("step", serde_json::json!({ "message": msg.trim() }));
            return;
        }
        self.close();
        if !self.quiet {
            eprintln!("{msg}");
        }
    }

    fn chatter(&self, msg: &str) {
        if self.json {
            self.event("progress", serde_json::json!({ "message": msg.trim() }));
            return;
        }
        if self.quiet {
            return;
        }
        if !self.tty {
            eprintln!("{msg}");
            return;
        }
        let width = crate::terminal::size(2).map_or(80, |s| usize::from(s.cols));
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[K{}", fit(msg, width.saturating_sub(1)));
        let _ = err.flush();
        self.open.set(true);
    }

    /// Ends a rewritten line, so what follows starts on a fresh one.
    fn close(&self) {
        if self.open.replace(false) {
            eprint!("\r\x1b[K");
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_chatter_is_the_steps_own_output_and_lines_fit() {
        assert!(is_chatter(
            "      [kernel] 100/~2400 objects (4%), 53s, about 1219s left"
        ));
        assert!(is_chatter("[rootfs]   I: running --customize-hook"));
        assert!(!is_chatter(
            "[kernel 03:19:44] hashing /usr/src/linux-source-6.1.tar.xz"
        ));
        assert!(!is_chatter("[rootfs] 1/2 mmdebstrap (unshare mode)"));
        assert!(!is_chatter("[2/4] root image"));
        assert_eq!(fit("abcdef", 3), "abc");
        assert_eq!(fit("ab", 3), "ab");
        assert_eq!(fit("éèêë", 2), "éè");
    }
}
