//! Running the real `vmm` binary with a timeout, and reading the guest's report.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Default wall-clock limit for one VM run (guest kernel code is emulated on PVM).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Where COM1 goes (`--serial`).
#[derive(Clone, Debug)]
pub enum Serial {
    Stdio,
    File(PathBuf),
    None,
}

/// A `vmm` invocation.
#[derive(Clone, Debug)]
pub struct VmSpec {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    /// `PATH` or `PATH,ro`.
    pub disks: Vec<String>,
    pub mem_mib: u32,
    pub cpus: u32,
    pub console: Option<PathBuf>,
    pub serial: Serial,
    /// Bytes written to the VMM's stdin (then closed); None: stdin is /dev/null.
    pub stdin: Option<Vec<u8>>,
    /// Hold `stdin` back until the guest's COM1 output contains this text.
    pub stdin_after: Option<String>,
    /// More arguments, verbatim.
    pub extra: Vec<String>,
    pub timeout: Duration,
}

impl VmSpec {
    /// The guest ELF with `tests=<tests>`, 128 MiB, one vCPU.
    pub fn guest(kernel: &Path, tests: &str) -> VmSpec {
        VmSpec {
            kernel: kernel.to_path_buf(),
            initrd: None,
            cmdline: format!("tests={tests}"),
            disks: Vec::new(),
            mem_mib: 128,
            cpus: 1,
            console: None,
            serial: Serial::Stdio,
            stdin: None,
            stdin_after: None,
            extra: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    pub fn args(&self) -> Vec<String> {
        let mut a = vec!["--kernel".to_string(), self.kernel.display().to_string()];
        if let Some(i) = &self.initrd {
            a.extend(["--initrd".into(), i.display().to_string()]);
        }
        a.extend(["--cmdline".into(), self.cmdline.clone()]);
        for d in &self.disks {
            a.extend(["--disk".into(), d.clone()]);
        }
        a.extend(["--mem".into(), self.mem_mib.to_string()]);
        a.extend(["--cpus".into(), self.cpus.to_string()]);
        let serial = match &self.serial {
            Serial::Stdio => "stdio".to_string(),
            Serial::File(p) => p.display().to_string(),
            Serial::None => "none".to_string(),
        };
        a.extend(["--serial".into(), serial]);
        if let Some(c) = &self.console {
            a.extend(["--console".into(), c.display().to_string()]);
        }
        a.extend(self.extra.iter().cloned());
        a
    }

    /// Runs the VMM to completion or until the timeout (then it is killed).
    pub fn run(&self) -> VmRun {
        run_command_with_stdin(
            Command::new(super::vmm_bin()).args(self.args()),
            self.stdin.clone(),
            self.stdin_after.clone(),
            self.timeout,
        )
    }
}

/// Kills and reaps the child when dropped (test failure, panic or timeout).
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What one run produced.
#[derive(Debug)]
pub struct VmRun {
    pub status: Option<ExitStatus>,
    pub timed_out: bool,
    pub serial: String,
    pub stderr: String,
    pub elapsed: Duration,
    pub args: Vec<String>,
}

fn drain<R: Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    drain_then_feed(r, None)
}

/// Reads `r` to its end; once the output holds `feed`'s marker, writes its bytes to its
/// pipe and closes it.
fn drain_then_feed<R: Read + Send + 'static>(
    r: Option<R>,
    mut feed: Option<(String, Vec<u8>, std::process::ChildStdin)>,
) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let Some(mut r) = r else { return buf };
        let mut chunk = [0u8; 4096];
        loop {
            match r.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            let seen = feed
                .as_ref()
                .is_some_and(|(m, _, _)| buf.windows(m.len()).any(|w| w == m.as_bytes()));
            if seen {
                if let Some((_, data, mut pipe)) = feed.take() {
                    use std::io::Write;
                    let _ = pipe.write_all(&data);
                }
            }
        }
        buf
    })
}

/// Runs `cmd` with stdout/stderr captured (stdin /dev/null), killing it after `timeout`.
pub fn run_command(cmd: &mut Command, timeout: Duration) -> VmRun {
    run_command_with_stdin(cmd, None, None, timeout)
}

/// Runs `cmd` with stdout/stderr captured and `stdin` fed (then closed) at once, or
/// once stdout shows `stdin_after`; kills it after `timeout`.
pub fn run_command_with_stdin(
    cmd: &mut Command,
    stdin: Option<Vec<u8>>,
    stdin_after: Option<String>,
    timeout: Duration,
) -> VmRun {
    let args = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    let start = Instant::now();
    let child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {args:?}: {e}"));
    let mut guard = ChildGuard(child);
    let pipe = guard.0.stdin.take();
    let (now, later) = match (stdin, pipe, stdin_after) {
        (Some(data), Some(pipe), Some(marker)) => (None, Some((marker, data, pipe))),
        (Some(data), Some(pipe), None) => (Some((data, pipe)), None),
        _ => (None, None),
    };
    let out = drain_then_feed(guard.0.stdout.take(), later);
    let err = drain(guard.0.stderr.take());
    if let Some((data, mut pipe)) = now {
        std::thread::spawn(move || {
            use std::io::Write;
            let _ = pipe.write_all(&data);
        });
    }
    let mut timed_out = false;
    let status = loop {
        match guard.0.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if start.elapsed() >= timeout => {
                timed_out = true;
                let _ = guard.0.kill();
                break guard.0.wait().ok();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("waiting for the vmm: {e}"),
        }
    };
    let elapsed = start.elapsed();
    drop(guard);
    let serial = String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
    VmRun {
        status,
        timed_out,
        serial,
        stderr,
        elapsed,
        args,
    }
}

/// One `TEST <name> <status> <detail>` line.
#[derive(Clone, Debug)]
pub struct GuestLine {
    pub name: String,
    pub status: String,
    pub detail: String,
}

impl GuestLine {
    /// The value of `key=value` in the detail.
    pub fn kv(&self, key: &str) -> Option<&str> {
        self.detail
            .split_ascii_whitespace()
            .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
    }

    /// `kv` that must be present.
    pub fn get(&self, key: &str) -> &str {
        self.kv(key)
            .unwrap_or_else(|| panic!("guest line {self:?} has no {key}="))
    }

    pub fn is_ok(&self) -> bool {
        self.status == "ok"
    }
}

impl VmRun {
    /// Every `TEST` line the guest printed.
    pub fn lines(&self) -> Vec<GuestLine> {
        self.serial
            .lines()
            .filter_map(|l| l.trim_end_matches('\r').strip_prefix("TEST "))
            .map(|rest| {
                let mut it = rest.splitn(3, ' ');
                GuestLine {
                    name: it.next().unwrap_or("").to_string(),
                    status: it.next().unwrap_or("").to_string(),
                    detail: it.next().unwrap_or("").to_string(),
                }
            })
            .collect()
    }

    /// Lines named `name`.
    pub fn named(&self, name: &str) -> Vec<GuestLine> {
        self.lines()
            .into_iter()
            .filter(|l| l.name == name)
            .collect()
    }

    /// The one line named `name`, which must be `ok`.
    pub fn ok(&self, name: &str) -> GuestLine {
        let lines = self.named(name);
        match lines.as_slice() {
            [l] if l.is_ok() => l.clone(),
            _ => panic!(
                "expected one ok line `{name}`, got {lines:?}\n{}",
                self.dump()
            ),
        }
    }

    /// Everything about the run, for assertion messages.
    pub fn dump(&self) -> String {
        format!(
            "--- vmm {:?}\n--- status {:?} timed_out={} elapsed={:?}\n--- serial:\n{}\n--- stderr:\n{}",
            self.args, self.status, self.timed_out, self.elapsed, self.serial, self.stderr
        )
    }

    /// The process ended on its own, without a Rust panic or a signal.
    pub fn assert_no_crash(&self) {
        assert!(!self.timed_out, "vmm timed out\n{}", self.dump());
        let st = self
            .status
            .unwrap_or_else(|| panic!("no exit status\n{}", self.dump()));
        assert!(
            st.code().is_some(),
            "vmm was killed by a signal\n{}",
            self.dump()
        );
        assert_ne!(st.code(), Some(101), "vmm panicked\n{}", self.dump());
        assert!(
            !self.stderr.contains("panicked"),
            "vmm panicked\n{}",
            self.dump()
        );
    }

    /// Exit 0, `DONE pass=N fail=0`, no `FAIL` line, no guest fault.
    pub fn assert_guest_passed(&self) {
        self.assert_no_crash();
        assert_eq!(
            self.status.and_then(|s| s.code()),
            Some(0),
            "vmm exit\n{}",
            self.dump()
        );
        assert!(
            !self.serial.contains("FATAL"),
            "guest fault\n{}",
            self.dump()
        );
        let failed: Vec<_> = self
            .lines()
            .into_iter()
            .filter(|l| l.status == "FAIL")
            .collect();
        assert!(
            failed.is_empty(),
            "guest checks failed: {failed:?}\n{}",
            self.dump()
        );
        let done = self.serial.lines().find(|l| l.starts_with("DONE "));
        assert!(
            done.is_some_and(|d| d.trim_end().ends_with(" fail=0")),
            "no clean DONE line\n{}",
            self.dump()
        );
    }
}
