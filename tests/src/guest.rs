//! A vmctl guest under the qemu engine with QEMU user networking: the Docker socket
//! bridged on a host port (`vmctl.docker_tcp`), the control protocol on another
//! (`vmctl.control_tcp`), and one extra forward for a published container port.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use guest_agent::protocol::{self, FrameReader, Request, Response};
use vmm::engine::qemu::{HostFwd, Net, QemuConfig, QemuVm};

use crate::proc::{self, Out};
use crate::Assets;

/// Guest-side ports of the test bridges.
pub const GUEST_DOCKER_PORT: u16 = 2375;
pub const GUEST_CONTROL_PORT: u16 = 1024;
pub const GUEST_HTTP_PORT: u16 = 8080;

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running guest; QEMU is killed when this is dropped.
pub struct Guest {
    pub vm: QemuVm,
    pub docker_port: u16,
    pub control_port: u16,
    pub http_port: u16,
    pub console_log: PathBuf,
}

impl Guest {
    /// Boot the guest with `data_disk` as its Docker data disk; logs go to `dir`.
    pub fn boot(assets: &Assets, data_disk: &Path, dir: &Path, name: &str) -> Guest {
        let (docker_port, control_port, http_port) = (free_port(), free_port(), free_port());
        let console_log = dir.join(format!("{name}-console.log"));
        let mut cfg = QemuConfig::new(
            assets.kernel.clone(),
            assets.rootfs.clone(),
            console_log.clone(),
        );
        cfg.data_disk = Some(data_disk.to_path_buf());
        let fwd = |host_port, guest_port| HostFwd {
            host_addr: "127.0.0.1".into(),
            host_port,
            guest_port,
        };
        cfg.net = Net::User {
            hostfwd: vec![
                fwd(docker_port, GUEST_DOCKER_PORT),
                fwd(control_port, GUEST_CONTROL_PORT),
                fwd(http_port, GUEST_HTTP_PORT),
            ],
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        cfg.cmdline_extra = guest_agent::cmdline::Config {
            docker_tcp: Some(GUEST_DOCKER_PORT),
            control_tcp: Some(GUEST_CONTROL_PORT),
            time: i64::try_from(now).ok(),
            hostname: name.to_string(),
            ..Default::default()
        }
        .to_words()
        .expect("test guest settings fit the kernel command line");
        let vm = QemuVm::start(&cfg, None).expect("start qemu");
        eprintln!("[{name}] qemu pid {}: {}", vm.pid(), vm.accel().reason);
        Guest {
            vm,
            docker_port,
            control_port,
            http_port,
            console_log,
        }
    }

    /// Wait until the agent reports dockerd ready on the console; returns the host time.
    pub fn wait_docker_ready(&mut self, timeout: Duration) -> Duration {
        match self.vm.wait_console("phase dockerd done", timeout) {
            Ok(t) => t,
            Err(e) => panic!(
                "guest did not get dockerd ready: {e}\n--- console ---\n{}",
                self.vm.console()
            ),
        }
    }

    /// Run the host `docker` CLI against this guest.
    pub fn docker(&self, args: &[&str], timeout: Duration) -> Out {
        let out = proc::run(
            Command::new("docker")
                .args(args)
                .env(
                    "DOCKER_HOST",
                    format!("tcp://127.0.0.1:{}", self.docker_port),
                )
                .env("DOCKER_BUILDKIT", "0")
                .env(
                    "DOCKER_CONFIG",
                    std::env::temp_dir().join("vmctl-tests-docker-config"),
                ),
            timeout,
        );
        eprintln!(
            "$ docker {} ({:.1}s, exit {:?})",
            args.join(" "),
            out.took.as_secs_f64(),
            out.code
        );
        out
    }

    /// Like [`Guest::docker`], panicking with the output and console when it fails.
    pub fn docker_ok(&self, args: &[&str], timeout: Duration) -> String {
        let out = self.docker(args, timeout);
        assert!(
            out.ok(),
            "docker {args:?} failed: {out:?}\n--- console tail ---\n{}",
            console_tail(&self.vm.console(), 40)
        );
        out.stdout
    }

    /// Open a control-protocol connection (after the handshake).
    pub fn control(&self) -> Control {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match Control::connect(self.control_port) {
                Ok(mut c) => {
                    c.console = Some(self.console_log.clone());
                    return c;
                }
                Err(e) if Instant::now() > deadline => panic!("control connection: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// HTTP GET `path` on the forwarded container port; the body on 200.
    pub fn http_get(&self, path: &str) -> std::io::Result<String> {
        http_get(self.http_port, path)
    }
}

/// The last `n` lines of a text.
pub fn console_tail(text: &str, n: usize) -> String {
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(n)..].join("\n")
}

/// A minimal HTTP/1.0 GET against 127.0.0.1:port.
pub fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    if !buf.starts_with("HTTP/1.0 200") && !buf.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("not 200: {buf:.200}")));
    }
    Ok(buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

/// A control-protocol client over TCP.
pub struct Control {
    reader: FrameReader<TcpStream>,
    writer: TcpStream,
    pub agent: String,
    /// The guest console, shown when the connection fails.
    console: Option<PathBuf>,
}

impl Control {
    pub fn connect(port: u16) -> Result<Control, protocol::ProtocolError> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut writer = s.try_clone()?;
        let mut reader = FrameReader::new(s);
        let agent = protocol::handshake(&mut reader, &mut writer)?;
        Ok(Control {
            reader,
            writer,
            agent,
            console: None,
        })
    }

    pub fn send(&mut self, req: &Request) {
        protocol::write_frame(&mut self.writer, req).expect("send request");
    }

    pub fn recv(&mut self) -> Response {
        match self.reader.expect::<Response>() {
            Ok(r) => r,
            Err(e) => {
                let console = self
                    .console
                    .as_ref()
                    .and_then(|p| std::fs::read(p).ok())
                    .unwrap_or_default();
                panic!(
                    "control connection: {e}\n--- console tail ---\n{}",
                    console_tail(&String::from_utf8_lossy(&console), 30)
                )
            }
        }
    }

    pub fn call(&mut self, req: &Request) -> Response {
        self.send(req);
        self.recv()
    }

    /// Run a command through `Exec`; returns (stdout, stderr, exit code).
    pub fn exec(&mut self, argv: &[&str], stdin: &[u8]) -> (String, String, Option<i32>) {
        let req = protocol::ExecRequest {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![],
            cwd: None,
            tty: None,
        };
        match self.call(&Request::Exec(req)) {
            Response::Started { .. } => {}
            other => panic!("exec {argv:?}: {other:?}"),
        }
        if !stdin.is_empty() {
            self.send(&Request::Stdin {
                data: protocol::Bytes(stdin.to_vec()),
            });
        }
        self.send(&Request::CloseStdin);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        loop {
            match self.recv() {
                Response::Stdout { data } => out.extend(data.0),
                Response::Stderr { data } => err.extend(data.0),
                Response::Exited { code, .. } => {
                    return (
                        String::from_utf8_lossy(&out).into(),
                        String::from_utf8_lossy(&err).into(),
                        code,
                    )
                }
                other => panic!("exec {argv:?}: unexpected {other:?}"),
            }
        }
    }
}
