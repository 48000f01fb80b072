//! VM assets: the guest kernel ([`kernel`]) and the read-only root image ([`rootfs`]),
//! both built from Debian packages and cached under `~/.cache/vmctl/<kind>/<hash>/`.

pub mod kernel;
pub mod mirror;
pub mod prune;
pub mod rootfs;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Progress sink: one human-readable line per call.
pub type Progress<'a> = &'a dyn Fn(&str);

/// Errors building assets.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot run {cmd}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{cmd} failed ({status}); last output:\n{tail}")]
    Failed {
        cmd: String,
        status: String,
        tail: String,
    },
    #[error("{0}")]
    Io(String, #[source] std::io::Error),
    #[error(
        "building the root image as {user} needs subordinate uids and gids for mmdebstrap's \
         user namespace (and newuidmap): run `sudo usermod --add-subuids 100000-165535 \
         --add-subgids 100000-165535 {user}` and `sudo apt-get install uidmap` \
         (scripts/install-deps.sh does both)"
    )]
    NoSubordinateIds { user: String },
    #[error("{0}")]
    Invalid(String),
}

/// `$VMCTL_CACHE`, else `$XDG_CACHE_HOME/vmctl`, else `~/.cache/vmctl`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("VMCTL_CACHE") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache")
        });
    base.join("vmctl")
}

/// Hex SHA-256 of some bytes.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The musl guest agent in the cargo target directory this executable was built in.
pub fn default_agent_path() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    // <target>/<profile>/vmctl or <target>/<profile>/deps/test-binary
    for dir in exe.ancestors().skip(1).take(3) {
        for profile in ["release", "debug"] {
            let p = dir
                .join("x86_64-unknown-linux-musl")
                .join(profile)
                .join("guest-agent");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// Run a command, forwarding each output line (stdout and stderr, as they come: debootstrap,
/// mmdebstrap and make report progress on stderr) to `progress` with `prefix`; the last 30
/// lines are kept for the error when it fails. Returns its stdout lines.
pub fn run_logged(
    cmd: &mut Command,
    prefix: &str,
    progress: Progress<'_>,
) -> Result<Vec<String>, ImageError> {
    run_logged_with_stdin(cmd, Stdio::null(), prefix, progress)
}

/// `run_logged` with `stdin` as the command's input.
pub fn run_logged_with_stdin(
    cmd: &mut Command,
    stdin: Stdio,
    prefix: &str,
    progress: Progress<'_>,
) -> Result<Vec<String>, ImageError> {
    let name = format!("{:?}", cmd.get_program());
    let mut child = cmd
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ImageError::Spawn {
            cmd: name.clone(),
            source,
        })?;
    // Each stream is read on its own thread; the lines meet here, in the caller's thread,
    // because `progress` need not be Send.
    let (tx, rx) = std::sync::mpsc::channel::<(bool, String)>();
    let mut readers = Vec::new();
    if let Some(e) = child.stderr.take() {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            for l in BufReader::new(e).lines().map_while(Result::ok) {
                let _ = tx.send((false, l));
            }
        }));
    }
    if let Some(o) = child.stdout.take() {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            for l in BufReader::new(o).lines().map_while(Result::ok) {
                let _ = tx.send((true, l));
            }
        }));
    }
    drop(tx);
    let mut out = Vec::new();
    let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    for (is_stdout, l) in rx {
        progress(&format!("{prefix}{l}"));
        if tail.len() == 30 {
            tail.pop_front();
        }
        tail.push_back(l.clone());
        if is_stdout {
            out.push(l);
        }
    }
    for r in readers {
        let _ = r.join();
    }
    let status = child
        .wait()
        .map_err(|e| ImageError::Io(format!("wait for {name}"), e))?;
    if !status.success() {
        return Err(ImageError::Failed {
            cmd: name,
            status: status.to_string(),
            tail: Vec::from(tail).join("\n"),
        });
    }
    Ok(out)
}

/// An exclusive lock on `<cache>/<kind>.lock`, held until dropped, so that concurrent
/// builds (parallel test processes) do not race on one cache entry.
pub struct CacheLock {
    _file: std::fs::File,
}

impl CacheLock {
    pub fn acquire(kind: &str) -> Result<CacheLock, ImageError> {
        use std::os::fd::AsRawFd;
        let dir = cache_dir();
        std::fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        let path = dir.join(format!("{kind}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(format!("open {}", path.display())))?;
        // SAFETY: flock on a descriptor owned by `file`, which outlives the lock.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(ImageError::Io(
                format!("lock {}", path.display()),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(CacheLock { _file: file })
    }
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
    let what = what.into();
    move |e| ImageError::Io(what, e)
}

pub(crate) fn write_file(path: &Path, data: &[u8]) -> Result<(), ImageError> {
    std::fs::write(path, data).map_err(io_err(format!("write {}", path.display())))
}
