//! The main job as an ordinary user, as the README runs it: `vmctl start` builds the root
//! image itself (mmdebstrap in a user namespace, no root), boots the VM, and the `docker`
//! CLI runs a container through it; every process of the instance belongs to the user.
//!
//! Run as a user, the test is that user. Run as root (CI), it runs the scenario as the user
//! named by `VMCTL_TEST_USER` (`.ci/run` creates `vmctl-ci`) with `runuser`, from copies of
//! the programs and the kernel that user can read; that user's own cache gets the image.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use vmctl_tests::cli_env::build_programs;
use vmctl_tests::proc::{self, Out};
use vmctl_tests::{build_agent, have, is_root, kernel_or_skip, skip};

const STEP: Duration = Duration::from_secs(600);

/// Runs commands as the user (directly, or through `runuser` from root) in a clean
/// environment: the user's own home, cache and runtime directories.
struct AsUser {
    name: String,
    uid: u32,
    home: PathBuf,
    bin: PathBuf,
    kernel: PathBuf,
}

impl AsUser {
    fn cmd(&self, program: &Path, args: &[&str]) -> Command {
        let mut c = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", &self.name, "--"]);
            c
        } else {
            Command::new("env")
        };
        c.args(["env", "-i"])
            .arg(format!("HOME={}", self.home.display()))
            .arg(format!("USER={}", self.name))
            .arg(format!(
                "PATH={}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
                self.bin.display()
            ))
            .arg(format!("VMCTL_KERNEL={}", self.kernel.display()))
            .arg(program)
            .args(args);
        c
    }

    fn vmctl(&self, args: &[&str]) -> Out {
        proc::run(
            &mut self.cmd(
                &self.bin.join("vmctl"),
                &[&["--name", "user-e2e"], args].concat(),
            ),
            STEP,
        )
    }

    fn vmctl_ok(&self, args: &[&str]) -> String {
        let out = self.vmctl(args);
        assert!(out.ok(), "vmctl {args:?} as {}: {out:?}", self.name);
        out.stdout
    }
}

impl Drop for AsUser {
    fn drop(&mut self) {
        let _ = self.vmctl(&["stop", "--force"]);
        let _ = self.vmctl(&["delete"]);
    }
}

fn passwd_entry(name: &str) -> Option<(u32, PathBuf)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() > 5 && f[0] == name {
            Some((f[2].parse().ok()?, PathBuf::from(f[5])))
        } else {
            None
        }
    })
}

/// A directory every user can read and enter, holding copies of `files`.
fn readable_copies(dir: &Path, files: &[&Path]) -> Vec<PathBuf> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    files
        .iter()
        .map(|f| {
            let to = dir.join(f.file_name().unwrap());
            std::fs::copy(f, &to).unwrap();
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
            to
        })
        .collect()
}

#[test]
fn test_main_job_as_an_ordinary_user_builds_the_image_and_runs_docker() {
    let user = if is_root() {
        match std::env::var("VMCTL_TEST_USER") {
            Ok(u) if !u.is_empty() => u,
            _ => {
                skip("running as root and VMCTL_TEST_USER names no ordinary user to run the main job as (.ci/run creates vmctl-ci)");
                return;
            }
        }
    } else {
        vmctl::host_tools::user_name().unwrap_or_default()
    };
    let Some((uid, home)) = passwd_entry(&user) else {
        panic!("VMCTL_TEST_USER={user}: no such user in /etc/passwd");
    };
    for tool in [
        "qemu-system-x86_64",
        "mmdebstrap",
        "tar2sqfs",
        "newuidmap",
        "docker",
    ] {
        if !have(tool) {
            skip(&format!(
                "{tool} is not installed (scripts/install-deps.sh)"
            ));
            return;
        }
    }
    let Some(kernel) = kernel_or_skip() else {
        return;
    };
    let agent = build_agent().expect("build the guest agent");
    let progs = build_programs();

    // The user's programs: the workspace's, copied where the user can run them, with the
    // agent where vmctl looks for it (`<target>/x86_64-unknown-linux-musl/<profile>/`).
    let scratch = tempfile::tempdir().unwrap();
    let bin = scratch.path().join("debug");
    let musl = scratch.path().join("x86_64-unknown-linux-musl/debug");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&musl).unwrap();
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for d in [
        scratch.path().join("x86_64-unknown-linux-musl"),
        musl.clone(),
    ] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let programs: Vec<PathBuf> = ["vmctl", "usernet", "fs-share", "vmm-vsock-backend", "vmm"]
        .iter()
        .map(|p| progs.join(p))
        .collect();
    let refs: Vec<&Path> = programs.iter().map(PathBuf::as_path).collect();
    readable_copies(&bin, &refs);
    readable_copies(&musl, &[agent.as_path()]);
    let kdir = scratch.path().join("kernel");
    std::fs::create_dir(&kdir).unwrap();
    let kernel_copy = readable_copies(&kdir, &[kernel.bzimage.as_path()]).remove(0);

    let u = AsUser {
        name: user.clone(),
        uid,
        home,
        bin,
        kernel: kernel_copy,
    };
    let _ = u.vmctl(&["stop", "--force"]);
    let started = std::time::Instant::now();
    // --json: what a script gets — one event per line on stdout, `ready` last.
    let out = u.vmctl(&["start", "--cpus", "2", "--memory", "2GiB", "--json"]);
    assert!(out.ok(), "vmctl start as {user}: {out:?}");
    eprintln!(
        "vmctl start as {user} (uid {}), root image built as that user if not cached: {:.0} s",
        u.uid,
        started.elapsed().as_secs_f64()
    );
    for line in out
        .stderr
        .lines()
        .filter(|l| l.contains("[rootfs]"))
        .take(3)
    {
        eprintln!("  {line}");
    }

    let events: Vec<&str> = out.stdout.lines().collect();
    assert!(
        events.iter().any(|l| l.contains("\"event\":\"step\"")),
        "no step events on stdout: {}",
        out.stdout
    );
    let ready = events.last().copied().unwrap_or_default();
    assert!(ready.contains("\"event\":\"ready\""), "last line: {ready}");
    let sock = ready
        .split("\"docker_host\":\"unix://")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no docker_host in {ready}"))
        .to_string();

    // Every process of the instance is the user's.
    let procs = vmctl_tests::proc::processes_mentioning("user-e2e");
    assert!(!procs.is_empty(), "no process of the instance found");
    for p in &procs {
        let ids = p.ids("Uid:");
        assert!(
            !ids.is_empty() && ids.iter().all(|id| *id == u.uid),
            "{} (pid {}) runs as {ids:?}, not {user}'s uid {}",
            p.program,
            p.pid,
            u.uid
        );
    }

    // docker run through the forwarded socket, as the user.
    let rootfs = tempfile::tempdir().unwrap();
    let tar = vmctl_tests::cli_env::busybox_tar(rootfs.path());
    std::fs::set_permissions(rootfs.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&tar, std::fs::Permissions::from_mode(0o644)).unwrap();
    let host = format!("unix://{sock}");
    let docker = |args: &[&str]| {
        let out = proc::run(
            &mut u.cmd(
                Path::new("/usr/bin/env"),
                &[&["docker", "-H", &host], args].concat(),
            ),
            STEP,
        );
        assert!(out.ok(), "docker {args:?} as {user}: {out:?}");
        out.stdout
    };
    docker(&["import", &tar.display().to_string(), "user-busybox"]);
    let hello = docker(&[
        "run",
        "--rm",
        "user-busybox",
        "echo",
        "hello from the user's VM",
    ]);
    assert_eq!(hello.trim(), "hello from the user's VM");
    u.vmctl_ok(&["stop"]);
}
