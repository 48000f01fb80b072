//! `vmctl mount` against a real guest under the qemu engine: the guest's files appear on the
//! host through FUSE (served by the guest agent over vsock), both directions of a write are
//! seen by the other side, SIGTERM unmounts and leaves the VM running, a read-only mount
//! refuses writes with EROFS, and stopping the VM ends a mount with an error line and no
//! mount left behind. The cheaper test of the same code without a VM is
//! `cli/src/fuse_mount/tests.rs` (a real FUSE mount over a socket pair).

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vmctl_tests::cli_env::{Env, STEP};
use vmctl_tests::{assets_or_skip, skip};

/// A running `vmctl mount`, killed (and its mount point lazily unmounted) on drop.
struct MountChild {
    child: Option<Child>,
    mp: PathBuf,
}

impl MountChild {
    fn spawn(env: &Env, mp: &Path, extra: &[&str]) -> MountChild {
        let child = Command::new(env.bin.join("vmctl"))
            .args(["--name", &env.name, "mount"])
            .arg(mp)
            .args(extra)
            .env("VMCTL_HOME", env.home.path().join("instances"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        MountChild {
            child: Some(child),
            mp: mp.to_path_buf(),
        }
    }

    /// Waits until the mount point is mounted; panics with the command's stderr otherwise.
    fn wait_mounted(&mut self, deadline: Duration) {
        let t0 = Instant::now();
        while !is_mounted(&self.mp) {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("vmctl mount exited {st:?}: {}", self.stderr());
            }
            assert!(
                t0.elapsed() < deadline,
                "{} not mounted after {deadline:?}",
                self.mp.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("mounted after {:.2} s", t0.elapsed().as_secs_f64());
    }

    fn signal(&self, sig: i32) {
        let pid = self.child.as_ref().unwrap().id() as i32;
        // SAFETY: kill has no memory preconditions; `pid` is our own child.
        unsafe { libc::kill(pid, sig) };
    }

    /// Waits for the command to exit; returns its exit code and stderr.
    fn wait_exit(&mut self, deadline: Duration) -> (Option<i32>, String) {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return (st.code(), self.stderr());
            }
            assert!(t0.elapsed() < deadline, "vmctl mount still runs");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stderr(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut e) = self.child.as_mut().and_then(|c| c.stderr.take()) {
            let _ = e.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for MountChild {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if is_mounted(&self.mp) {
            let c = std::ffi::CString::new(self.mp.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: `c` is a valid NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

fn is_mounted(mp: &Path) -> bool {
    let target = mp.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(target.as_str()))
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect()
}

#[test]
fn test_vmctl_mount_guest_files_both_ways_sigterm_read_only_vm_stop() {
    if !vmctl_tests::is_root() {
        skip("needs root (this scenario is written for root; tests/tests/user_start.rs runs the main job as an ordinary user)");
        return;
    }
    if !Path::new("/dev/fuse").exists() {
        skip("/dev/fuse is missing");
        return;
    }
    let Some(_assets) = assets_or_skip() else {
        return;
    };
    let env = Env::new("mount");
    let mp = env.home.path().join("guest");
    std::fs::create_dir(&mp).unwrap();
    let mp = mp.canonicalize().unwrap();
    let mps = mp.display().to_string();

    // Not running yet: one clear line, nothing mounted.
    let out = env.vmctl(&["mount", &mps], STEP);
    assert!(!out.ok() && out.stderr.contains("not running"), "{out:?}");
    assert!(!is_mounted(&mp));

    env.vmctl_ok(&["config", "set", "share_home", "false"], STEP);
    let took = env.start(&["--cpus", "2", "--memory", "1GiB", "--disk-size", "2GiB"]);
    eprintln!("cold vmctl start: {:.1} s", took.as_secs_f64());

    // Guest /tmp is a tmpfs (the root image is a read-only squashfs).
    env.vmctl_ok(
        &[
            "exec",
            "--",
            "sh",
            "-c",
            "echo from-guest > /tmp/vmctl-mount-test",
        ],
        STEP,
    );

    // Bad requests fail with one line and mount nothing.
    let missing = env.home.path().join("missing").display().to_string();
    let out = env.vmctl(&["mount", &missing], STEP);
    assert!(
        !out.ok() && out.stderr.contains("does not exist"),
        "{out:?}"
    );
    let out = env.vmctl(&["mount", &mps, "--guest-path", "/no/such/dir"], STEP);
    assert!(!out.ok() && out.stderr.contains("/no/such/dir"), "{out:?}");
    assert!(!is_mounted(&mp));

    // Read-write mount of the guest's root.
    let mut m = MountChild::spawn(&env, &mp, &[]);
    m.wait_mounted(STEP);
    let t = Instant::now();
    assert_eq!(
        std::fs::read_to_string(mp.join("tmp/vmctl-mount-test")).unwrap(),
        "from-guest\n"
    );
    eprintln!("first read through the mount: {:?}", t.elapsed());
    assert!(mp.join("usr/bin").is_dir() && mp.join("etc").is_dir());

    std::fs::write(mp.join("tmp/from-host"), "from-host").unwrap();
    let back = env.vmctl_ok(&["exec", "--", "cat", "/tmp/from-host"], STEP);
    assert_eq!(back, "from-host");

    // 4 MiB each way, compared whole (the guest's copy checked by its size and a re-read).
    let data = pattern(4 << 20);
    let t = Instant::now();
    std::fs::write(mp.join("tmp/big"), &data).unwrap();
    let wrote = t.elapsed();
    let size = env.vmctl_ok(&["exec", "--", "wc", "-c", "/tmp/big"], STEP);
    assert_eq!(size.split_whitespace().next(), Some("4194304"), "{size}");
    env.vmctl_ok(&["exec", "--", "cp", "/tmp/big", "/tmp/big2"], STEP);
    let t = Instant::now();
    let read = std::fs::read(mp.join("tmp/big2")).unwrap();
    let readt = t.elapsed();
    assert!(read == data, "4 MiB file differs after a guest-side copy");
    eprintln!(
        "4 MiB through the mount under this engine: write {:.1} MiB/s, read {:.1} MiB/s",
        4.0 / wrote.as_secs_f64(),
        4.0 / readt.as_secs_f64()
    );

    // SIGTERM: unmounted, exit 0, the VM keeps running.
    m.signal(libc::SIGTERM);
    let (code, stderr) = m.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!is_mounted(&mp), "SIGTERM must unmount");
    let status = env.vmctl_ok(&["status", "--json"], STEP);
    assert!(status.contains("\"running\": true"), "{status}");
    // The server's umask 0 stayed on its own thread: commands still get the agent's umask.
    let umask = env.vmctl_ok(&["exec", "--", "sh", "-c", "umask"], STEP);
    assert_eq!(umask.trim(), "0022");

    // Read-only mount of one guest directory, then the VM stops under it.
    let mut m = MountChild::spawn(&env, &mp, &["--guest-path", "/tmp", "--read-only"]);
    m.wait_mounted(STEP);
    assert_eq!(
        std::fs::read_to_string(mp.join("vmctl-mount-test")).unwrap(),
        "from-guest\n"
    );
    let err = std::fs::write(mp.join("nope"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    env.vmctl_ok(&["stop"], Duration::from_secs(180));
    let (code, stderr) = m.wait_exit(Duration::from_secs(60));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("went away"), "{stderr}");
    assert!(!is_mounted(&mp), "a mount whose VM stopped must be gone");
}
