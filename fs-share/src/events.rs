//! Host file events for the guest (issue item 4).
//!
//! Choice: **agent-side replay** (as Lima does), not FUSE notify. Linux guests cannot receive
//! FUSE notifications over virtio-fs (the notification virtqueue was never merged upstream), so
//! `fs-share serve --events-socket PATH` watches the share with inotify on the host and streams
//! one JSON line per change; the guest agent (reached over vsock by the supervisor) replays each
//! one on the guest path with `utimensat(path, {mtime, mtime})`, which makes the guest kernel
//! refresh the FUSE attributes and raise IN_ATTRIB for every inotify watcher in the guest
//! (libuv/Node, chokidar, watchdog, inotifywait -e attrib all react). IN_ATTRIB on the host is
//! not forwarded, so a replay never echoes back.
//!
//! Wire format (one per line): `{"kind":"modify","path":"src/main.rs"}` — `path` is relative to
//! the share root, '/'-separated, never `..`.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Create,
    Modify,
    Delete,
    Move,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostEvent {
    pub kind: EventKind,
    pub path: String,
}

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("Malformed event line")]
    Parse(#[source] serde_json::Error),
    #[error("Event path escapes the share: {0:?}")]
    BadPath(String),
}

impl HostEvent {
    pub fn to_line(&self) -> String {
        // Serialising a plain struct of strings cannot fail.
        let mut s = serde_json::to_string(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Parses one line from the host; the guest side must use this (it validates the path).
    pub fn parse_line(line: &str) -> Result<HostEvent, EventError> {
        let ev: HostEvent = serde_json::from_str(line.trim_end()).map_err(EventError::Parse)?;
        ev.check_path()?;
        Ok(ev)
    }

    /// The path rule every guest-side consumer applies: relative, no `.`/`..`, no NUL.
    pub fn check_path(&self) -> Result<(), EventError> {
        if self.path.starts_with('/')
            || self.path.split('/').any(|c| c == ".." || c == ".")
            || self.path.contains('\0')
        {
            return Err(EventError::BadPath(self.path.clone()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_event_line_roundtrip_and_path_checks() {
        let ev = HostEvent {
            kind: EventKind::Modify,
            path: "src/main.rs".into(),
        };
        assert_eq!(HostEvent::parse_line(&ev.to_line()).expect("parse"), ev);
        for bad in [
            r#"{"kind":"modify","path":"../x"}"#,
            r#"{"kind":"modify","path":"/etc"}"#,
            "garbage",
        ] {
            assert!(HostEvent::parse_line(bad).is_err(), "{bad}");
        }
    }
}
