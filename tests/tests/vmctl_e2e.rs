//! `vmctl` end to end under the qemu engine: a fresh instance; `vmctl start`; through the
//! instance's Docker context, a container that reads a bind-mounted host folder (virtio-fs)
//! and fetches from a host HTTP server through `host.docker.internal` (usernet); a published
//! port on host 127.0.0.1 (port forwarding); `vmctl exec`; `vmctl stop` and a second start
//! that still has the image and a named volume; the supervisor killed with SIGKILL and the
//! next start recovering with the data disk intact; `vmctl delete` leaving no trace.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vmctl_tests::{assets_or_skip, build_agent, have, proc, skip, workspace_root};

const STEP: Duration = Duration::from_secs(120);

/// Builds the programs the supervisor runs (vmctl, usernet, fs-share, vmm-vsock-backend) and returns the
/// directory they are in.
fn build_programs() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let out = proc::run(
        Command::new(cargo)
            .args([
                "build", "--bins", "-p", "vmctl", "-p", "usernet", "-p", "fs-share", "-p", "vmm",
            ])
            .current_dir(workspace_root())
            .env("CARGO_TARGET_DIR", &target),
        Duration::from_secs(1200),
    );
    assert!(out.ok(), "build programs: {out:?}");
    target.join("debug")
}

struct Env {
    bin: PathBuf,
    home: tempfile::TempDir,
    docker_config: PathBuf,
    agent: PathBuf,
}

impl Env {
    fn vmctl(&self, args: &[&str], timeout: Duration) -> proc::Out {
        proc::run(
            Command::new(self.bin.join("vmctl"))
                .args(["--name", "e2e"])
                .args(args)
                .env("VMCTL_HOME", self.home.path().join("instances"))
                .env("DOCKER_CONFIG", &self.docker_config)
                .env(
                    "PATH",
                    format!(
                        "{}:{}",
                        self.bin.display(),
                        std::env::var("PATH").unwrap_or_default()
                    ),
                ),
            timeout,
        )
    }

    fn vmctl_ok(&self, args: &[&str], timeout: Duration) -> String {
        let out = self.vmctl(args, timeout);
        assert!(
            out.ok(),
            "vmctl {args:?} failed: {out:?}\nsupervisor log:\n{}",
            self.log_tail()
        );
        out.stdout
    }

    fn log_tail(&self) -> String {
        let p = self.instance_dir().join("logs/supervisor.log");
        let t = std::fs::read_to_string(p).unwrap_or_default();
        let c = std::fs::read_to_string(self.instance_dir().join("logs/console.log"))
            .unwrap_or_default();
        let tail = |s: &str| {
            s.lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        };
        format!("{}\n--- console ---\n{}", tail(&t), tail(&c))
    }

    fn instance_dir(&self) -> PathBuf {
        self.home.path().join("instances/e2e")
    }

    fn docker(&self, args: &[&str], timeout: Duration) -> proc::Out {
        proc::run(
            Command::new("docker")
                .args(["--context", "vmctl-e2e"])
                .args(args)
                .env("DOCKER_CONFIG", &self.docker_config),
            timeout,
        )
    }

    fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args, STEP);
        assert!(
            out.ok(),
            "docker {args:?} failed: {out:?}\nsupervisor log:\n{}",
            self.log_tail()
        );
        out.stdout
    }

    fn supervisor_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.instance_dir().join("supervisor.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Whatever happened, leave no VM behind.
        let _ = self.vmctl(&["stop", "--force"], Duration::from_secs(30));
    }
}

fn busybox_tar(dir: &Path) -> PathBuf {
    let root = dir.join("bbroot");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("www")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for a in ["sh", "cat", "wget", "httpd", "uname", "echo"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    std::fs::write(root.join("www/index.html"), "published port works").unwrap();
    let tar = dir.join("bb.tar");
    let out = proc::run(
        Command::new("tar")
            .arg("-C")
            .arg(&root)
            .args(["--owner=0", "--group=0", "-cf"])
            .arg(&tar)
            .arg("."),
        Duration::from_secs(30),
    );
    assert!(out.ok(), "{out:?}");
    tar
}

/// A one-response-per-connection HTTP server on host 127.0.0.1.
fn host_http_server(body: &'static str) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

fn http_get_localhost(port: u16, deadline: Duration) -> Result<String, String> {
    let t0 = Instant::now();
    loop {
        let attempt = (|| -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut r = String::new();
            s.read_to_string(&mut r)?;
            Ok(r)
        })();
        match attempt {
            Ok(r) if r.contains("200") => return Ok(r),
            other if t0.elapsed() > deadline => return Err(format!("{other:?}")),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[test]
fn test_vmctl_start_docker_run_stop_restart_recover_delete() {
    if !vmctl_tests::is_root() {
        skip("needs root (builds the root image with debootstrap)");
        return;
    }
    if !have("docker") {
        skip("the docker CLI is not installed");
        return;
    }
    let Some(_assets) = assets_or_skip() else {
        return;
    };
    let agent = build_agent().expect("build guest agent");
    let bin = build_programs();
    let home = tempfile::tempdir().unwrap();
    let docker_config = home.path().join("docker-config");
    std::fs::create_dir_all(&docker_config).unwrap();
    let env = Env {
        bin,
        home,
        docker_config,
        agent,
    };
    let share = env.home.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    std::fs::write(share.join("hello.txt"), "file from the host").unwrap();
    let mount = format!("{}:/mnt/share", share.display());
    let agent_arg = env.agent.display().to_string();

    // Isolated from the machine's $HOME: share only the test folder.
    env.vmctl_ok(&["config", "set", "share_home", "false"], STEP);
    let t0 = Instant::now();
    env.vmctl_ok(
        &[
            "start",
            "--engine",
            "qemu",
            "--cpus",
            "2",
            "--memory",
            "2GiB",
            "--disk-size",
            "4GiB",
            "--mount",
            &mount,
            "--agent",
            &agent_arg,
        ],
        Duration::from_secs(600),
    );
    eprintln!("cold vmctl start: {:.1} s", t0.elapsed().as_secs_f64());

    let sock = env.instance_dir().join("docker.sock");
    let mode = std::fs::metadata(&sock)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777);
    assert_eq!(mode.ok(), Some(0o600), "docker.sock must be owner-only");

    let dir = tempfile::tempdir().unwrap();
    let tar = busybox_tar(dir.path());
    env.docker_ok(&["import", &tar.display().to_string(), "e2e-busybox"]);

    // virtio-fs: the container reads the host file through the shared folder.
    let read = env.docker_ok(&[
        "run",
        "--rm",
        "-v",
        "/mnt/share:/data",
        "e2e-busybox",
        "cat",
        "/data/hello.txt",
    ]);
    assert_eq!(read.trim(), "file from the host");

    // usernet: host.docker.internal reaches the host's loopback.
    let port = host_http_server("hello from the host");
    let url = format!("http://host.docker.internal:{port}/");
    let fetched = env.docker_ok(&["run", "--rm", "e2e-busybox", "wget", "-qO-", &url]);
    assert_eq!(fetched.trim(), "hello from the host");

    // A published port appears on host 127.0.0.1.
    let host_port = vmm_free_port();
    let publish = format!("{host_port}:80");
    env.docker_ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        &publish,
        "e2e-busybox",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    let t = Instant::now();
    let page = http_get_localhost(host_port, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("published port: {e}\n{}", env.log_tail()));
    assert!(page.contains("published port works"), "{page}");
    eprintln!(
        "published port answered {:.2} s after docker run returned",
        t.elapsed().as_secs_f64()
    );
    let status = env.vmctl_ok(&["status", "--json"], STEP);
    assert!(
        status.contains(&format!("\"port\": {host_port}")),
        "{status}"
    );

    let uname = env.vmctl_ok(&["exec", "--", "uname", "-a"], STEP);
    assert!(uname.starts_with("Linux "), "{uname}");

    env.docker_ok(&["volume", "create", "e2e-vol"]);
    env.docker_ok(&[
        "run",
        "--rm",
        "-v",
        "e2e-vol:/v",
        "e2e-busybox",
        "sh",
        "-c",
        "echo persisted > /v/f",
    ]);

    let t = Instant::now();
    env.vmctl_ok(&["stop"], STEP);
    eprintln!("vmctl stop: {:.1} s", t.elapsed().as_secs_f64());
    assert!(!sock.exists(), "docker.sock removed after stop");

    let t = Instant::now();
    env.vmctl_ok(&["start", "--agent", &agent_arg], Duration::from_secs(600));
    eprintln!("warm vmctl start: {:.1} s", t.elapsed().as_secs_f64());
    env.docker_ok(&["image", "inspect", "e2e-busybox"]);
    let v = env.docker_ok(&[
        "run",
        "--rm",
        "-v",
        "e2e-vol:/v",
        "e2e-busybox",
        "cat",
        "/v/f",
    ]);
    assert_eq!(v.trim(), "persisted");

    // A supervisor killed outright: the next start cleans up and the data disk is intact.
    let pid = env.supervisor_pid().expect("supervisor pid");
    // SAFETY: kill(2) on the supervisor's pid from its own pid file.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(500));
    env.vmctl_ok(&["start", "--agent", &agent_arg], Duration::from_secs(600));
    let v = env.docker_ok(&[
        "run",
        "--rm",
        "-v",
        "e2e-vol:/v",
        "e2e-busybox",
        "cat",
        "/v/f",
    ]);
    assert_eq!(v.trim(), "persisted");

    env.vmctl_ok(&["delete"], STEP);
    assert!(!env.instance_dir().exists(), "instance directory removed");
    let ctx = env.docker(&["context", "inspect", "vmctl-e2e"], STEP);
    assert!(!ctx.ok(), "docker context removed");
}

fn vmm_free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
