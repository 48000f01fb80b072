//! The `qemu` engine: runs `qemu-system-x86_64` with the vmctl kernel, root image and data
//! disk, on KVM when KVM can run the guest and TCG otherwise.

pub mod accel;
pub mod args;

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use accel::{Accel, AccelChoice};
pub use args::{HostFwd, Machine, Net, QemuConfig, DATA_DISK_SERIAL};

/// Errors of the qemu engine.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("cannot start {qemu}")]
    Spawn {
        qemu: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU exited ({status}); its log {log} ends with:\n{tail}")]
    Exited {
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("timed out after {0:?} waiting for {1:?} on the console")]
    Timeout(Duration, String),
}

/// Create a sparse data disk of `size_bytes` if `path` does not exist yet, or grow an
/// existing one that is smaller (never shrink it).
pub fn ensure_data_disk(path: &Path, size_bytes: u64) -> Result<(), QemuError> {
    let io = |source| QemuError::Io {
        what: "create data disk",
        path: path.to_path_buf(),
        source,
    };
    if let Ok(meta) = std::fs::metadata(path) {
        // An existing disk grows to a larger `disk_size` (sparse: no space is taken; the
        // guest agent grows the filesystem when it mounts it) and never shrinks, which
        // would cut off data.
        if meta.is_file() && meta.len() < size_bytes {
            let grow = |source| QemuError::Io {
                what: "grow data disk",
                path: path.to_path_buf(),
                source,
            };
            OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| f.set_len(size_bytes))
                .map_err(grow)?;
        }
        return Ok(());
    }
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io)?;
    f.set_len(size_bytes).map_err(io)
}

/// A running QEMU; killed (and waited for) on drop.
pub struct QemuVm {
    child: Child,
    console_log: PathBuf,
    qemu_log: PathBuf,
    accel: AccelChoice,
    started: Instant,
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

impl QemuVm {
    /// Start QEMU. `accel` overrides the automatic choice ([`accel::choose`]).
    /// QEMU's own stderr goes to `<console_log>.qemu`.
    pub fn start(cfg: &QemuConfig, accel: Option<AccelChoice>) -> Result<QemuVm, QemuError> {
        let accel = accel.unwrap_or_else(accel::choose);
        let qemu_log = cfg.console_log.with_extension("qemu.log");
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| QemuError::Io {
                what: "create log",
                path,
                source,
            }
        };
        File::create(&cfg.console_log).map_err(io(&cfg.console_log))?;
        File::create(&qemu_log).map_err(io(&qemu_log))?;
        // Appending, so the log can be rotated in place while QEMU runs.
        let err = std::fs::OpenOptions::new()
            .append(true)
            .open(&qemu_log)
            .map_err(io(&qemu_log))?;
        let out = err.try_clone().map_err(io(&qemu_log))?;
        let child = Command::new(&cfg.qemu)
            .args(args::build(cfg, accel.accel))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| QemuError::Spawn {
                qemu: cfg.qemu.display().to_string(),
                source,
            })?;
        Ok(QemuVm {
            child,
            console_log: cfg.console_log.clone(),
            qemu_log,
            accel,
            started: Instant::now(),
        })
    }

    /// KVM or TCG, and why.
    pub fn accel(&self) -> &AccelChoice {
        &self.accel
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn console_log(&self) -> &Path {
        &self.console_log
    }

    /// The console output so far.
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console_log).unwrap_or_default()).into_owned()
    }

    /// Whether QEMU has exited; `Some(status)` once it has.
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn exited_error(&self, status: std::process::ExitStatus) -> QemuError {
        QemuError::Exited {
            status: status.to_string(),
            log: self.qemu_log.clone(),
            tail: format!(
                "{}\n--- console ---\n{}",
                tail(&self.qemu_log, 10),
                tail(&self.console_log, 20)
            ),
        }
    }

    /// Wait until the console shows `needle`; returns the time since start.
    pub fn wait_console(&mut self, needle: &str, timeout: Duration) -> Result<Duration, QemuError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.console().contains(needle) {
                return Ok(self.started.elapsed());
            }
            if let Some(st) = self.try_exit() {
                return Err(self.exited_error(st));
            }
            if Instant::now() >= deadline {
                return Err(QemuError::Timeout(timeout, needle.to_string()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait for QEMU to exit by itself (guest power-off), up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(st) = self.try_exit() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Kill QEMU now.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for QemuVm {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            self.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_data_disk_created_sparse_grown_never_shrunk() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("data.img");
        ensure_data_disk(&p, 1 << 30).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 1 << 30);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .and_then(|f| std::os::unix::fs::FileExt::write_at(&f, b"data", 4096))
            .unwrap();
        ensure_data_disk(&p, 2 << 30).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 2 << 30, "grown");
        ensure_data_disk(&p, 1 << 30).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().len(),
            2 << 30,
            "never shrunk"
        );
        let mut b = [0u8; 4];
        let f = std::fs::File::open(&p).unwrap();
        std::os::unix::fs::FileExt::read_at(&f, &mut b, 4096).unwrap();
        assert_eq!(&b, b"data", "contents kept");
        // Still sparse: growing took no space.
        let blocks = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&p).unwrap());
        assert!(blocks * 512 < 1 << 20, "{blocks} blocks");
    }
}
