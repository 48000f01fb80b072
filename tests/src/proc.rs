//! Running host commands with a timeout (the child is killed when it runs over).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Output of a finished command.
#[derive(Debug)]
pub struct Out {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl Out {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

/// Run `cmd` with piped output; kill it after `timeout`.
pub fn run(cmd: &mut Command, timeout: Duration) -> Out {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut so = child.stdout.take();
    let mut se = child.stderr.take();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = so.as_mut() {
            let _ = o.read_to_string(&mut s);
        }
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = se.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let code = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break st.code();
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Out {
        code,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
        took: start.elapsed(),
    }
}

/// Waits for a spawned child (with piped stdout/stderr) for at most `timeout`, kills it if it
/// is still running, and returns its exit code and output. For children a test feeds through
/// their stdin while they run (a pseudo-terminal session under script(1), for example).
pub fn wait_with_timeout(
    mut child: std::process::Child,
    timeout: Duration,
) -> (Option<i32>, String, String) {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child
        .wait_with_output()
        .expect("collect the output of a child");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running process: its program's file name and its `/proc/PID/status` text.
#[derive(Debug, Clone)]
pub struct ProcInfo {
    pub pid: u32,
    pub program: String,
    pub status: String,
}

impl ProcInfo {
    /// The four ids of a `Uid:` or `Gid:` line (real, effective, saved, filesystem).
    pub fn ids(&self, key: &str) -> Vec<u32> {
        self.status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|rest| {
                rest.split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A capability set (`CapEff`, `CapBnd` …) as a bit mask.
    pub fn caps(&self, key: &str) -> u64 {
        self.status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| u64::from_str_radix(v.trim_start_matches(':').trim(), 16).ok())
            .unwrap_or(u64::MAX)
    }
}

/// Processes whose command line mentions `needle` (e.g. an instance directory).
pub fn processes_mentioning(needle: &str) -> Vec<ProcInfo> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !args.iter().any(|a| a.contains(needle)) {
            continue;
        }
        let program = args
            .first()
            .and_then(|a| a.rsplit('/').next())
            .unwrap_or_default()
            .to_string();
        let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        out.push(ProcInfo {
            pid,
            program,
            status,
        });
    }
    out
}
