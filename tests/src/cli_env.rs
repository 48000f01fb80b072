//! Driving the real `vmctl` binary for end-to-end tests: builds the programs the supervisor
//! runs, isolates the instance directory and the Docker CLI configuration in a temp dir, and
//! stops the VM whatever happens.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{proc, workspace_root};

pub const STEP: Duration = Duration::from_secs(120);

/// Builds the programs the supervisor runs (vmctl, usernet, fs-share, vmm-vsock-backend) and returns the
/// directory they are in.
pub fn build_programs() -> PathBuf {
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

pub struct Env {
    pub bin: PathBuf,
    pub home: tempfile::TempDir,
    pub docker_config: PathBuf,
    pub agent: PathBuf,
    pub name: String,
    /// `VMCTL_QEMU` for every vmctl command (and so the supervisor): a QEMU other than
    /// the one on `PATH`.
    pub qemu: Option<PathBuf>,
}

impl Env {
    pub fn vmctl(&self, args: &[&str], timeout: Duration) -> proc::Out {
        let mut cmd = Command::new(self.bin.join("vmctl"));
        if let Some(q) = &self.qemu {
            cmd.env("VMCTL_QEMU", q);
        }
        proc::run(
            cmd.args(["--name", &self.name])
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

    pub fn vmctl_ok(&self, args: &[&str], timeout: Duration) -> String {
        let out = self.vmctl(args, timeout);
        assert!(
            out.ok(),
            "vmctl {args:?} failed: {out:?}\nsupervisor log:\n{}",
            self.log_tail()
        );
        out.stdout
    }

    pub fn log_tail(&self) -> String {
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

    pub fn instance_dir(&self) -> PathBuf {
        self.home.path().join("instances").join(&self.name)
    }

    pub fn docker(&self, args: &[&str], timeout: Duration) -> proc::Out {
        proc::run(
            Command::new("docker")
                .args(["--context", &format!("vmctl-{}", self.name)])
                .args(args)
                .env("DOCKER_BUILDKIT", "0")
                .env("DOCKER_CONFIG", &self.docker_config),
            timeout,
        )
    }

    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args, STEP);
        assert!(
            out.ok(),
            "docker {args:?} failed: {out:?}\nsupervisor log:\n{}",
            self.log_tail()
        );
        out.stdout
    }

    pub fn supervisor_pid(&self) -> Option<u32> {
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

pub fn busybox_tar(dir: &Path) -> PathBuf {
    crate::busybox_rootfs_tar(
        dir,
        &[
            "sh", "cat", "wget", "httpd", "uname", "echo", "sleep", "seq",
        ],
        &["www"],
        &[("www/index.html", "published port works")],
    )
}

/// A one-response-per-connection HTTP server on host 127.0.0.1.
pub fn host_http_server(body: &'static str) -> u16 {
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

pub fn http_get_localhost(port: u16, deadline: Duration) -> Result<String, String> {
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

impl Env {
    /// A fresh, isolated environment for instance `name` (programs built, agent built).
    pub fn new(name: &str) -> Env {
        let agent = crate::build_agent().expect("build guest agent");
        let bin = build_programs();
        let home = tempfile::tempdir().unwrap();
        let docker_config = home.path().join("docker-config");
        std::fs::create_dir_all(&docker_config).unwrap();
        Env {
            bin,
            home,
            docker_config,
            agent,
            name: name.to_string(),
            qemu: None,
        }
    }

    /// `vmctl start` with the test's agent, isolated from $HOME; returns how long it took.
    pub fn start(&self, extra: &[&str]) -> Duration {
        let agent = self.agent.display().to_string();
        let mut args = vec!["start", "--engine", "qemu", "--agent", &agent];
        args.extend_from_slice(extra);
        let t0 = Instant::now();
        self.vmctl_ok(&args, Duration::from_secs(600));
        t0.elapsed()
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Env {
    /// The instance's forwarded Docker socket.
    pub fn docker_sock(&self) -> PathBuf {
        self.instance_dir().join("docker.sock")
    }

    /// A `docker` command for this instance, for callers that need their own stdio.
    pub fn docker_cmd(&self) -> Command {
        let mut c = Command::new("docker");
        c.args(["--context", &format!("vmctl-{}", self.name)])
            .env("DOCKER_BUILDKIT", "0")
            .env("DOCKER_CONFIG", &self.docker_config);
        c
    }
}

/// One HTTP/1.0 request over a unix socket; returns the whole response.
pub fn unix_http_get(sock: &Path, path: &str) -> std::io::Result<String> {
    let mut s = std::os::unix::net::UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n")?;
    let mut r = String::new();
    s.read_to_string(&mut r)?;
    Ok(r)
}
