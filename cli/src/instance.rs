//! An instance: a named VM and its directory, `$XDG_DATA_HOME/vmctl/<name>/` (default
//! `~/.local/share/vmctl/<name>/`), holding its disks, logs, sockets, pid and state.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors about instances.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("Instance name {0:?} is invalid: use letters, digits, '-' and '_' (at most 32)")]
    BadName(String),
    #[error("Cannot use instance directory {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "Not enough disk space: {free_mib} MiB free on the filesystem of {path}, the VM needs at least {need_mib} MiB to run; free some space (old builds in ~/.cache/vmctl can go, unused instances with `vmctl delete`)"
    )]
    DiskFull {
        path: String,
        free_mib: u64,
        need_mib: u64,
    },
    #[error("State file {path} is corrupt: {source}; run `vmctl delete` to start over")]
    State {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> InstanceError + '_ {
    move |source| InstanceError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Where all instances live.
pub fn data_root() -> PathBuf {
    if let Some(d) = std::env::var_os("VMCTL_HOME") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".local/share")
        });
    base.join("vmctl")
}

pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Where an instance is in its life: what the supervisor records in `state.json` (`phase`)
/// and `vmctl status` shows. Stored as the strings of [`Phase::as_str`], so state files
/// written before this type existed still read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "&'static str")]
pub enum Phase {
    /// Nothing recorded (an empty phase, or one this build does not know).
    #[default]
    Unknown,
    Starting,
    Running,
    Stopping,
    Stopped,
    Failed,
    /// `vmctl status` only: the state file says otherwise, but no supervisor runs.
    SupervisorGone,
    /// `vmctl status` only: there is no instance directory.
    NotCreated,
}

impl Phase {
    const ALL: [Phase; 8] = [
        Phase::Unknown,
        Phase::Starting,
        Phase::Running,
        Phase::Stopping,
        Phase::Stopped,
        Phase::Failed,
        Phase::SupervisorGone,
        Phase::NotCreated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Unknown => "",
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
            Phase::Failed => "failed",
            Phase::SupervisorGone => "stopped (supervisor not running)",
            Phase::NotCreated => "not created",
        }
    }
}

impl From<String> for Phase {
    fn from(s: String) -> Self {
        Phase::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .unwrap_or(Phase::Unknown)
    }
}

impl From<Phase> for &'static str {
    fn from(p: Phase) -> Self {
        p.as_str()
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// What the supervisor records about a running instance.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct State {
    pub supervisor_pid: u32,
    pub engine: String,
    pub engine_reason: String,
    pub phase: Phase,
    pub message: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub ports: Vec<PortState>,
    /// Why some guest ports are not listed in `ports` (the forwarding limit); empty if none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ports_note: String,
    pub started_at_unix: u64,
}

/// A forwarded port as seen by `vmctl status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PortState {
    pub proto: String,
    pub port: u16,
    /// The host address it is forwarded from (`127.0.0.1` unless the guest listens on one
    /// of the host's own addresses).
    #[serde(default)]
    pub address: String,
    /// `forwarded` or the reason it is not (e.g. "host port in use").
    pub status: String,
}

/// Free space `vmctl start` wants on the instance's filesystem.
pub const MIN_FREE_MIB: u64 = 1024;

/// Bytes available to unprivileged users on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs is plain data that the call overwrites.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a pointer to a live statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// A named instance's directory layout.
#[derive(Debug, Clone)]
pub struct Instance {
    pub name: String,
    pub dir: PathBuf,
}

impl Instance {
    pub fn new(name: &str) -> Result<Self, InstanceError> {
        if !valid_name(name) {
            return Err(InstanceError::BadName(name.to_string()));
        }
        Ok(Instance {
            name: name.to_string(),
            dir: data_root().join(name),
        })
    }

    /// Creates the instance directory 0700 (its sockets are the VM's root shell, Docker and
    /// network; an existing directory is narrowed too) and its logs directory.
    pub fn create_dirs(&self) -> Result<(), InstanceError> {
        vmm::hostsock::private_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let logs = self.logs_dir();
        std::fs::create_dir_all(&logs).map_err(io_err(&logs))?;
        Ok(())
    }

    /// Fails with [`InstanceError::DiskFull`] when the instance's filesystem has less than
    /// [`MIN_FREE_MIB`] free: the data disk is sparse and grows as the guest writes, and a VM
    /// that hits a full host disk stops (QEMU pauses it on ENOSPC), so say so before starting.
    pub fn check_free_space(&self) -> Result<(), InstanceError> {
        let free = free_bytes(&self.dir).map_err(io_err(&self.dir))?;
        if free < MIN_FREE_MIB << 20 {
            return Err(InstanceError::DiskFull {
                path: self.dir.display().to_string(),
                free_mib: free >> 20,
                need_mib: MIN_FREE_MIB,
            });
        }
        Ok(())
    }

    pub fn exists(&self) -> bool {
        self.dir.is_dir()
    }

    pub fn docker_sock(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }
    pub fn control_sock(&self) -> PathBuf {
        self.dir.join("control.sock")
    }
    pub fn vsock_sock(&self) -> PathBuf {
        self.dir.join("vsock.sock")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("supervisor.pid")
    }
    pub fn state_file(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    pub fn data_disk(&self) -> PathBuf {
        self.dir.join("data.img")
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }
    pub fn log(&self, which: &str) -> PathBuf {
        self.logs_dir().join(format!("{which}.log"))
    }

    pub fn read_state(&self) -> Result<Option<State>, InstanceError> {
        let p = self.state_file();
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|source| InstanceError::State {
                    path: p.display().to_string(),
                    source,
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&p)(e)),
        }
    }

    /// Writes the state atomically (write + rename), so readers never see half a file.
    pub fn write_state(&self, s: &State) -> Result<(), InstanceError> {
        let p = self.state_file();
        let tmp = self.dir.join(".state.json.tmp");
        let bytes = serde_json::to_vec_pretty(s).unwrap_or_default();
        std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &p).map_err(io_err(&p))
    }

    /// The live supervisor's pid, if its pid file names a running process of ours.
    pub fn running_supervisor(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        process_alive(pid).then_some(pid)
    }

    /// Removes what a stopped or crashed supervisor left behind (its pid file and every
    /// socket: docker, control, vsock and its per-port listeners, backends'); disks stay.
    pub fn clean_stale(&self) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        let pid = self.pid_file();
        if pid.exists() && std::fs::remove_file(&pid).is_ok() {
            removed.push(pid);
        }
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                let is_socket = n.ends_with(".sock") || n.contains(".sock_");
                if is_socket && std::fs::remove_file(e.path()).is_ok() {
                    removed.push(e.path());
                }
            }
        }
        removed
    }
}

/// Processes other than us whose command line names a file in the instance directory: the
/// VM's engine and device backends (QEMU, usernet, fs-share, the builtin VMM).
pub fn processes_of(inst: &Instance) -> Vec<u32> {
    let me = std::process::id();
    let needle = format!("{}/", inst.dir.display());
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmd| {
                cmd.split(|b| *b == 0)
                    .any(|arg| String::from_utf8_lossy(arg).contains(&needle))
            })
        })
        .collect()
}

/// Kills processes a crashed supervisor left behind (QEMU, device backends): see
/// [`processes_of`]. Returns their pids. Without this a second VM could open the same data
/// disk.
pub fn kill_leftovers(inst: &Instance) -> Vec<u32> {
    let mut killed = Vec::new();
    for pid in processes_of(inst) {
        if process_alive(pid) {
            // SAFETY: kill(2) on a pid we just read from /proc; at worst it is gone already.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            killed.push(pid);
        }
    }
    killed
}

/// Resident memory of a process in MiB (`VmRSS`), if it can be read.
pub fn rss_mib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024)
}

/// The last `max` bytes of a file (empty if it cannot be read), without reading the rest.
pub fn read_tail(path: &Path, max: u64) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(len.saturating_sub(max))).is_ok() {
        let _ = f.take(max).read_to_end(&mut buf);
    }
    buf
}

/// Log files are rotated when a run starts: past this size `NAME.log` becomes `NAME.log.1`
/// (replacing the previous one), so logs never grow without bound across restarts.
pub const LOG_ROTATE_BYTES: u64 = 8 << 20;

/// Opens `path` for appending, rotating it first when it has grown past [`LOG_ROTATE_BYTES`].
pub fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    if std::fs::metadata(path).is_ok_and(|m| m.len() > LOG_ROTATE_BYTES) {
        let mut old = path.as_os_str().to_owned();
        old.push(".1");
        std::fs::rename(path, old)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// Whether `pid` is a live process (zombies count as dead).
pub fn process_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state letter follows the parenthesised command name.
    match stat.rsplit_once(") ") {
        Some((_, rest)) => !rest.starts_with('Z') && !rest.starts_with('X'),
        None => false,
    }
}

/// All instances that have a directory.
pub fn list() -> Vec<Instance> {
    let mut out: Vec<Instance> = std::fs::read_dir(data_root())
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().is_dir())
                .filter_map(|e| Instance::new(&e.file_name().to_string_lossy()).ok())
                .collect()
        })
        .unwrap_or_default();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn test_create_dirs_makes_the_instance_dir_0700() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let d = tempfile::tempdir().expect("tempdir");
        let inst = Instance {
            name: "t".into(),
            dir: d.path().join("vmctl/t"),
        };
        inst.create_dirs().expect("create");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").mode() & 0o777;
        assert_eq!(mode(&inst.dir), 0o700);
        // An instance created by an older vmctl (0755) is narrowed on the next start.
        std::fs::set_permissions(&inst.dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        inst.create_dirs().expect("again");
        assert_eq!(mode(&inst.dir), 0o700);
        assert!(inst.logs_dir().is_dir());
    }

    use super::*;

    #[test]
    fn test_instance_name_validation_rejects_paths() {
        assert!(Instance::new("default").is_ok());
        assert!(Instance::new("dev-1_x").is_ok());
        for bad in ["", "../x", "a/b", ".", "x y", &"a".repeat(33)] {
            assert!(Instance::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn test_open_log_rotates_past_limit() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.log");
        std::fs::write(&p, vec![b'a'; LOG_ROTATE_BYTES as usize + 1]).unwrap();
        drop(open_log(&p).unwrap());
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
        assert_eq!(
            std::fs::metadata(dir.path().join("x.log.1")).unwrap().len(),
            LOG_ROTATE_BYTES + 1
        );
        std::fs::write(&p, b"small").unwrap();
        drop(open_log(&p).unwrap());
        assert_eq!(std::fs::read(&p).unwrap(), b"small");
    }

    #[test]
    fn test_process_alive_self_and_dead() {
        assert!(process_alive(std::process::id()));
        assert!(!process_alive(u32::MAX - 1));
    }

    #[test]
    fn test_phase_reads_and_writes_the_state_file_strings() {
        for p in Phase::ALL {
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("{:?}", p.as_str()));
            assert_eq!(serde_json::from_str::<Phase>(&json).unwrap(), p);
        }
        let old: State = serde_json::from_str(
            r#"{"supervisor_pid":7,"engine":"qemu","engine_reason":"","phase":"running","message":"","cpus":1,"memory_mib":512,"ports":[],"started_at_unix":0}"#,
        )
        .unwrap();
        assert_eq!(old.phase, Phase::Running);
        assert_eq!(
            serde_json::from_str::<Phase>(r#""hibernating""#).unwrap(),
            Phase::Unknown
        );
    }

    #[test]
    fn test_state_roundtrip_and_stale_cleanup() {
        let dir = tempfile::tempdir().unwrap();
        let inst = Instance {
            name: "t".into(),
            dir: dir.path().join("t"),
        };
        inst.create_dirs().unwrap();
        assert_eq!(inst.read_state().unwrap(), None);
        let s = State {
            phase: Phase::Running,
            cpus: 2,
            ..Default::default()
        };
        inst.write_state(&s).unwrap();
        assert_eq!(inst.read_state().unwrap(), Some(s));
        std::fs::write(inst.pid_file(), "4294967294").unwrap();
        std::fs::write(inst.docker_sock(), "").unwrap();
        std::fs::write(inst.dir.join("vsock.sock_2375"), "").unwrap();
        assert_eq!(inst.running_supervisor(), None);
        assert_eq!(inst.clean_stale().len(), 3);
        assert!(inst.data_disk().parent().unwrap().exists());
    }
}
