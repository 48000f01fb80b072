//! Device backends as child processes of the supervisor: usernet (`-netdev stream`),
//! fs-share (vhost-user-fs, one per share) and the vhost-user-vsock backend. Separate
//! processes keep a crash in one backend from taking the supervisor (and the Docker socket)
//! down; each dies with the supervisor (PR_SET_PDEATHSIG) and is killed on drop.

#[cfg(target_os = "linux")]
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Errors starting a backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("Cannot find the {0} program next to vmctl or on PATH; build the workspace (cargo build --release)")]
    NotFound(String),
    #[error("Cannot start {name}: {source}")]
    Spawn {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{name} did not create its socket {socket} within {secs} s; see {log}")]
    NoSocket {
        name: String,
        socket: String,
        secs: u64,
        log: String,
    },
}

/// A program shipped with vmctl: next to the running executable, else on PATH.
pub fn sibling_program(name: &str) -> Result<PathBuf, BackendError> {
    if let Ok(exe) = std::env::current_exe() {
        // Tests run from target/<profile>/deps/; binaries are in target/<profile>/.
        for dir in exe.ancestors().skip(1).take(2) {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| BackendError::NotFound(name.to_string()))
}

/// A running backend process.
pub struct Backend {
    pub name: String,
    pub log: PathBuf,
    child: Child,
}

/// How a backend ended, for the instance status: a seccomp kill (SIGSYS) is named as such.
pub fn describe_exit(status: std::process::ExitStatus, log: &Path) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status.signal() {
        Some(libc::SIGSYS) => format!(
            "was killed by its seccomp sandbox (SIGSYS): it made a system call it is not \
             allowed (a bug, or a process taken over through the guest); see {}",
            log.display()
        ),
        Some(sig) => format!("was killed by signal {sig}; see {}", log.display()),
        None => format!("exited ({status}); see {}", log.display()),
    }
}

impl Backend {
    /// Starts `program args…` with output appended to `log`, and waits for `socket` to appear.
    pub fn start(
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
        socket: &Path,
    ) -> Result<Self, BackendError> {
        let _ = std::fs::remove_file(socket);
        let spawn_err = |source| BackendError::Spawn {
            name: name.to_string(),
            source,
        };
        let out = crate::instance::open_log(log).map_err(spawn_err)?;
        let err = out.try_clone().map_err(spawn_err)?;
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        // Backends die with the supervisor. Linux only: elsewhere `vmctl start` kills
        // leftovers of a crashed supervisor instead (instance::kill_leftovers).
        #[cfg(target_os = "linux")]
        // SAFETY: pre_exec runs in the forked child before exec; prctl is async-signal-safe
        // and touches no memory shared with the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(spawn_err)?;
        let mut b = Backend {
            name: name.to_string(),
            log: log.to_path_buf(),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if Instant::now() > deadline || b.exited() {
                return Err(BackendError::NoSocket {
                    name: name.to_string(),
                    socket: socket.display().to_string(),
                    secs: 10,
                    log: log.display().to_string(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(b)
    }

    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// The exit status once the process has ended.
    pub fn try_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Kills the process and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
