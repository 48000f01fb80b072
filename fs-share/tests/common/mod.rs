//! Shared helpers for fs-share's integration tests: child processes killed on drop, a
//! `fs-share mount` guard, pjdfstest runner, skips with reasons.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod wire;
// Not every test binary uses both.
#[allow(unused_imports)]
pub use wire::{fuse_request, Rng};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fs-share"))
}

pub fn skip(reason: &str) {
    eprintln!("skipped: {reason}");
}

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub fn cache_dir() -> PathBuf {
    std::env::var_os("VMCTL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/vmctl")
        })
}

/// A child process killed (and reaped) on drop.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn is_mounted(mountpoint: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let mp = mountpoint.to_string_lossy();
    info.lines().any(|l| l.split(' ').nth(4) == Some(&*mp))
}

/// `fs-share mount` of `share` at `mountpoint`; unmounted (lazily) and killed on drop.
pub struct FuseMount {
    pub mountpoint: PathBuf,
    child: Option<ChildGuard>,
}

impl FuseMount {
    pub fn start(share: &Path, mountpoint: &Path, extra: &[&str]) -> FuseMount {
        std::fs::create_dir_all(mountpoint).expect("mkdir mountpoint");
        let child = Command::new(bin())
            .arg("mount")
            .arg("--shared-dir")
            .arg(share)
            .args(extra)
            .arg(mountpoint)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn fs-share mount");
        let mut m = FuseMount {
            mountpoint: mountpoint.to_path_buf(),
            child: Some(ChildGuard(child)),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while !is_mounted(mountpoint) {
            if let Some(Ok(Some(st))) = m.child.as_mut().map(|c| c.0.try_wait()) {
                panic!("fs-share mount exited early: {st}");
            }
            assert!(
                Instant::now() < deadline,
                "mount did not appear within 15 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    /// Unmounts and waits for the server to exit by itself (it must, on unmount).
    pub fn unmount_and_wait(mut self) -> std::process::ExitStatus {
        umount(&self.mountpoint);
        let mut child = self.child.take().expect("child");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = child.0.try_wait() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "fs-share did not exit after unmount"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn umount(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: NUL-terminated path; failure (not mounted) is fine.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        umount(&self.mountpoint);
    }
}

/// Returns the pjdfstest binary, building it into the cache on first use.
pub fn pjdfstest() -> Result<PathBuf, String> {
    let root = cache_dir().join("tools");
    let bin = root.join("bin/pjdfstest");
    if bin.exists() {
        return Ok(bin);
    }
    // Tests run in parallel processes: one builds, the others wait on the lock.
    std::fs::create_dir_all(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    let lock = std::fs::File::create(root.join(".pjdfstest.lock"))
        .map_err(|e| format!("lock file: {e}"))?;
    // SAFETY: flock on an fd we own; released when `lock` is dropped at return.
    unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
    if bin.exists() {
        return Ok(bin);
    }
    let st = Command::new("cargo")
        .args([
            "install",
            "pjdfstest",
            "--version",
            "0.2.2",
            "--locked",
            "--root",
        ])
        .arg(&root)
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .map_err(|e| format!("cannot run cargo install pjdfstest: {e}"))?;
    if !st.success() || !bin.exists() {
        return Err(format!(
            "cargo install pjdfstest failed: {st} (needs libacl1-dev)"
        ));
    }
    Ok(bin)
}

pub const PJDFSTEST_CONFIG: &str = r#"
[features]
posix_fallocate = {}
utime_now = {}
utimensat = {}

[settings]
naptime = 0.01

[dummy_auth]
entries = [
  ["nobody", "nogroup"],
  ["daemon", "daemon"],
]
"#;

/// Parses pjdfstest output into test name → "ok" | "skipped" | "FAILED".
pub fn parse_pjdfstest(out: &str) -> BTreeMap<String, String> {
    let out = strip_ansi(out);
    let mut m = BTreeMap::new();
    for line in out.lines() {
        let mut it = line.split_whitespace();
        let (Some(name), Some(res), None) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        if name.contains("::") && matches!(res, "ok" | "skipped" | "FAILED") {
            m.insert(name.to_string(), res.to_string());
        }
    }
    m
}

/// Removes ANSI colour sequences (ESC '[' … letter) that pjdfstest prints on a terminal.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else if c != '\r' {
            out.push(c);
        }
    }
    out
}

/// Runs pjdfstest in `dir` (its cwd too) with a 5-minute limit.
pub fn run_pjdfstest(bin: &Path, cfg: &Path, dir: &Path) -> BTreeMap<String, String> {
    let child = Command::new(bin)
        .arg("-c")
        .arg(cfg)
        .arg("-p")
        .arg(dir)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn pjdfstest");
    let guard = ChildGuard(child);
    let out = wait_output(guard, Duration::from_secs(300));
    parse_pjdfstest(&out)
}

/// Collects stdout of a guarded child, killing it after `limit`.
pub fn wait_output(mut guard: ChildGuard, limit: Duration) -> String {
    use std::io::Read;
    let mut stdout = guard.0.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(_)) = guard.0.try_wait() {
            break;
        }
        if Instant::now() > deadline {
            let _ = guard.0.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    reader.join().unwrap_or_default()
}

/// Builds (or finds in the cache) the virtio-fs test guest; `extra` binaries are copied in.
pub fn guest_assets(extra: &[&Path]) -> Result<PathBuf, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest/build-guest.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args(extra)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run build-guest.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!("build-guest.sh failed: {}", out.status));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Serves `share` with `fs-share serve` and boots the test guest under QEMU (TCG) with it;
/// returns the guest's serial console output (the guest runs `share/.guest-run`).
pub fn run_guest(
    assets: &Path,
    work: &Path,
    share: &Path,
    serve_args: &[&str],
    limit: Duration,
) -> String {
    run_guest_with(assets, work, share, serve_args, limit, &[])
}

/// `run_guest` with extra QEMU arguments (e.g. a second serial port).
pub fn run_guest_with(
    assets: &Path,
    work: &Path,
    share: &Path,
    serve_args: &[&str],
    limit: Duration,
    qemu_extra: &[String],
) -> String {
    let sock = work.join("fs.sock");
    let serve = Command::new(bin())
        .arg("serve")
        .arg("--socket")
        .arg(&sock)
        .arg("--shared-dir")
        .arg(share)
        .args(serve_args)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn fs-share serve");
    let _serve = ChildGuard(serve);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "vhost-user socket did not appear"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let qemu = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-m", "512", "-smp", "1"])
        .args([
            "-object",
            "memory-backend-memfd,id=mem,size=512M,share=on",
            "-numa",
            "node,memdev=mem",
        ])
        .arg("-chardev")
        .arg(format!("socket,id=fs,path={}", sock.display()))
        .args(["-device", "vhost-user-fs-pci,chardev=fs,tag=share"])
        .arg("-kernel")
        .arg(assets.join("vmlinuz"))
        .arg("-initrd")
        .arg(assets.join("initramfs.cpio.gz"))
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .args([
            "-nographic",
            "-no-reboot",
            "-nodefaults",
            "-serial",
            "stdio",
        ])
        .args(qemu_extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn qemu");
    wait_output(ChildGuard(qemu), limit)
}

/// An example binary built by `cargo test` next to the test executables.
pub fn example(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.parent()?.join("examples").join(name);
    p.exists().then_some(p)
}

/// A raw FUSE session over `transport::stream` on a socket pair: the test is the client (a
/// hostile guest kernel) and sends any bytes it likes; the server runs `workers` workers in a
/// thread. Replies are read with a 20 s timeout, so a server that hangs fails the test.
pub struct StreamSession {
    /// The temp folder holding the share, removed when the session is dropped.
    pub dir: Option<tempfile::TempDir>,
    pub share: std::path::PathBuf,
    pub host: std::os::unix::net::UnixStream,
    server: Option<std::thread::JoinHandle<Result<(), fs_share::transport::stream::StreamError>>>,
    unique: u64,
}

pub const FUSE_INIT: u32 = 26;

/// FUSE_INIT for protocol 7.31 with a 128 KiB readahead and no flags.
pub fn fuse_init_request() -> Vec<u8> {
    let body: Vec<u8> = [7u32, 31, 1 << 17, 0]
        .iter()
        .flat_map(|x| x.to_ne_bytes())
        .collect();
    fuse_request(FUSE_INIT, 1, 0, &body)
}

/// A NUL-terminated name, as FUSE requests carry them.
pub fn fuse_name(n: &str) -> Vec<u8> {
    let mut v = n.as_bytes().to_vec();
    v.push(0);
    v
}

impl StreamSession {
    /// Serves `share` (a folder the caller owns) with `cfg` and completes INIT.
    pub fn start(cfg: fs_share::ShareConfig, workers: usize) -> StreamSession {
        use std::os::unix::net::UnixStream;
        let share = cfg.shared_dir.clone();
        let fs = std::sync::Arc::new(fs_share::PassthroughFs::new(cfg).expect("open share"));
        let (host, guest) = UnixStream::pair().expect("socketpair");
        host.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let input = guest.try_clone().expect("clone");
        let server = std::thread::spawn(move || {
            fs_share::transport::stream::serve(fs, input, guest, workers)
        });
        let mut s = StreamSession {
            dir: None,
            share,
            host,
            server: Some(server),
            unique: 1,
        };
        let (err, _) = s.send(&fuse_init_request());
        assert_eq!(err, 0, "INIT");
        s
    }

    /// Sends one request and reads its whole reply: (error, body). Panics when no reply
    /// comes within 20 s (a server worker blocked for good).
    pub fn send(&mut self, req: &[u8]) -> (i32, Vec<u8>) {
        use std::io::{Read, Write};
        self.host.write_all(req).expect("send request");
        let mut hdr = [0u8; 16];
        self.host
            .read_exact(&mut hdr)
            .expect("no reply from the server (hung?)");
        let word = |r: std::ops::Range<usize>| -> [u8; 4] {
            let mut b = [0u8; 4];
            b.copy_from_slice(&hdr[r]);
            b
        };
        let len = u32::from_ne_bytes(word(0..4)) as usize;
        let err = i32::from_ne_bytes(word(4..8));
        let mut u = [0u8; 8];
        u.copy_from_slice(&hdr[8..16]);
        let mut sent = [0u8; 8];
        sent.copy_from_slice(&req[8..16]);
        assert_eq!(u, sent, "reply to another request");
        assert!(len >= 16, "reply length {len}");
        let mut body = vec![0u8; len - 16];
        self.host.read_exact(&mut body).expect("reply body");
        (err, body)
    }

    pub fn call(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> (i32, Vec<u8>) {
        self.unique += 1;
        let req = fuse_request(opcode, self.unique, nodeid, body);
        self.send(&req)
    }

    /// Closes the host side; returns how the server ended.
    pub fn finish(mut self) -> Result<(), fs_share::transport::stream::StreamError> {
        let _ = self.host.shutdown(std::net::Shutdown::Both);
        self.server
            .take()
            .expect("server thread")
            .join()
            .expect("server thread panicked")
    }
}

/// (nodeid, mode) of a `fuse_entry_out` reply body: nodeid, generation, entry_valid,
/// attr_valid, two nsec u32s (40 bytes), then `fuse_attr` whose mode is at offset 60.
pub fn entry_nodeid_and_mode(body: &[u8]) -> (u64, u32) {
    let mut n = [0u8; 8];
    n.copy_from_slice(&body[0..8]);
    let mut m = [0u8; 4];
    m.copy_from_slice(&body[100..104]);
    (u64::from_ne_bytes(n), u32::from_ne_bytes(m))
}
