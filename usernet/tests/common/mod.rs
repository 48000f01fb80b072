//! Namespace harness for the end-to-end tests: unique network namespaces deleted on drop,
//! a `usernet tap` child killed on drop, code run inside a namespace on its own thread
//! (the "guest" is the real Linux TCP/IP stack of that namespace), commands with timeouts.
#![allow(dead_code)]

pub mod frames;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Prints the skip reason and returns true when the test cannot run here.
pub fn skip_unless_root(tools: &[&str]) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root (network namespaces, TAP devices, setns)");
        return true;
    }
    for t in tools {
        if which(t).is_none() {
            eprintln!("skipped: `{t}` is not installed (scripts/apt-packages/usernet.txt)");
            return true;
        }
    }
    if !Path::new("/dev/net/tun").exists() {
        eprintln!("skipped: /dev/net/tun is missing");
        return true;
    }
    false
}

pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = format!(
            "un-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("run ip netns add");
        assert!(st.success(), "ip netns add {name} failed");
        Self { name }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs a command inside the namespace with a timeout; returns its output.
    pub fn exec(&self, args: &[&str], timeout: Duration) -> Output {
        let mut full = vec!["netns", "exec", self.name.as_str()];
        full.extend_from_slice(args);
        run_timeout(Command::new("ip").args(&full), timeout)
    }

    /// Runs `f` on a thread that has entered this namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
        .join()
        .expect("namespace thread panicked")
    }

    /// Like [`Netns::run`] but does not wait.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = self.path();
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
    }
}

/// Moves the calling thread into the namespace at `path`.
pub fn enter(path: &Path) {
    let f = std::fs::File::open(path).expect("open netns");
    // SAFETY: setns only reads the fd; it stays open for the call.
    let r = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&self.name));
    }
}

/// Runs a command, killing it after `timeout`.
pub fn run_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn command");
    let id = child.id();
    let done = Arc::new(Mutex::new(false));
    let d2 = done.clone();
    let killer = std::thread::spawn(move || {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if *d2.lock().expect("lock") {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: kill with a pid we spawned; at worst it is already reaped (ESRCH).
        unsafe { libc::kill(id as libc::pid_t, libc::SIGKILL) };
    });
    let out = child.wait_with_output().expect("wait command");
    *done.lock().expect("lock") = true;
    let _ = killer.join();
    out
}

/// A child process killed (and reaped) on drop.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `usernet tap` serving a namespace.
pub struct Usernet {
    pub child: Guard,
    pub log: Arc<Mutex<String>>,
}

impl Usernet {
    /// Starts `usernet tap --netns ns` with extra arguments; waits until it is ready.
    pub fn tap(ns: &Netns, extra: &[&str]) -> Self {
        Self::tap_via(None, ns, extra)
    }

    /// Same, but runs usernet itself inside `host_ns` (a host without network).
    pub fn tap_via(host_ns: Option<&Netns>, ns: &Netns, extra: &[&str]) -> Self {
        let bin = env!("CARGO_BIN_EXE_usernet");
        let netns = ns.path();
        let mut cmd = match host_ns {
            Some(h) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &h.name, bin]);
                c
            }
            None => Command::new(bin),
        };
        cmd.arg("tap")
            .arg("--netns")
            .arg(&netns)
            .args(extra)
            .env("USERNET_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn usernet");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let l2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("ready") {
                    let _ = tx.send(());
                }
                let mut l = l2.lock().expect("lock");
                l.push_str(&line);
                l.push('\n');
            }
        });
        let child = Guard(child);
        if rx.recv_timeout(Duration::from_secs(10)).is_err() {
            panic!(
                "usernet did not become ready; log:\n{}",
                log.lock().expect("lock")
            );
        }
        Self { child, log }
    }

    pub fn log(&self) -> String {
        self.log.lock().expect("lock").clone()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.0.try_wait(), Ok(None))
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), for transfers checked by hash.
pub struct Prng(pub u64);

impl Prng {
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}
