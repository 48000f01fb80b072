//! The vhost-user-vsock backend (`vmm-vsock-backend`) under QEMU with real Linux guests:
//! - Debian's cloud kernel + a busybox initramfs with `vsock-util` (built by
//!   `vsock_qemu/build-guest.sh`): streams both ways, credit flow with bulk data, half-close,
//!   RST both ways, concurrent connections, a client killed mid-stream;
//! - the project's kernel + root image (guest agent, dockerd) when they are in the cache:
//!   the agent's control port and `docker version` through `CONNECT 2375`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::vm::ChildGuard;
use common::{pseudo_random, run_seed, skip};

const GUEST_CID: u32 = 3;

fn backend_bin() -> &'static str {
    env!("CARGO_BIN_EXE_vmm-vsock-backend")
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Builds (or finds in the cache) the busybox + vsock-util guest.
fn vsock_guest_assets() -> Result<PathBuf, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vsock_qemu/build-guest.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run build-guest.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "build-guest.sh failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// The backend and QEMU for one test, killed on drop.
struct Vm {
    qemu: std::sync::Mutex<ChildGuard>,
    backend: ChildGuard,
    serial: PathBuf,
    uds: PathBuf,
}

impl Vm {
    /// Starts the backend on `dir/vhost.sock` (hybrid socket `dir/v.sock`) and QEMU with
    /// `qemu_args` plus shared memory and the vsock device (`device` names its model). A guest
    /// reboot restarts the guest when `reboot`, else QEMU exits.
    fn start(dir: &Path, mem_mib: u32, device: &str, qemu_args: &[String], reboot: bool) -> Vm {
        let vhost = dir.join("vhost.sock");
        let uds = dir.join("v.sock");
        let backend = Command::new(backend_bin())
            .arg("--socket")
            .arg(&vhost)
            .arg("--uds-path")
            .arg(&uds)
            .args(["--guest-cid", &GUEST_CID.to_string(), "--once"])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn vmm-vsock-backend");
        let backend = ChildGuard(backend);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !vhost.exists() {
            assert!(
                Instant::now() < deadline,
                "vhost-user socket did not appear"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let serial = dir.join("serial.log");
        let qemu = Command::new("qemu-system-x86_64")
            .args(qemu_args)
            .args(["-m", &format!("{mem_mib}M")])
            .arg("-object")
            .arg(format!(
                "memory-backend-memfd,id=mem,size={mem_mib}M,share=on"
            ))
            .arg("-chardev")
            .arg(format!("socket,id=vsock,path={}", vhost.display()))
            .arg("-device")
            // No guest-cid property: QEMU reads the CID from the backend's config space.
            .arg(format!("{device},chardev=vsock"))
            .args(if reboot { &[][..] } else { &["-no-reboot"][..] })
            .args(["-nographic", "-nodefaults", "-serial"])
            .arg(format!("file:{}", serial.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn qemu");
        Vm {
            qemu: std::sync::Mutex::new(ChildGuard(qemu)),
            backend,
            serial,
            uds,
        }
    }

    /// Panics when QEMU has exited (so a failed start does not wait for a timeout).
    fn assert_running(&self) {
        let mut q = self.qemu.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(Some(st)) = q.0.try_wait() {
            panic!("qemu exited ({st}):\n{}", self.console());
        }
    }

    fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial).unwrap_or_default()).into_owned()
    }

    /// Waits until the console shows `needle`; panics with the console after `limit`.
    fn wait_console(&self, needle: &str, limit: Duration) {
        let end = Instant::now() + limit;
        while !self.console().contains(needle) {
            self.assert_running();
            assert!(
                Instant::now() < end,
                "no {needle:?} on the console within {limit:?}:\n{}",
                self.console()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The rest of the console line after `prefix`.
    fn console_value(&self, prefix: &str) -> String {
        let c = self.console();
        c.lines()
            // The firmware's escape sequences may precede the first line.
            .find_map(|l| {
                l.trim_end_matches('\r')
                    .split_once(prefix)
                    .map(|(_, v)| v.to_string())
            })
            .unwrap_or_else(|| panic!("no {prefix:?} line:\n{c}"))
    }

    /// `CONNECT port` on the hybrid socket; Ok(stream) after `OK`, Err(what came) otherwise.
    fn connect(&self, port: u32) -> Result<UnixStream, String> {
        hybrid_connect(&self.uds, port)
    }
}

/// `CONNECT port` on `uds`; Ok(stream) once `OK <n>` came back.
fn hybrid_connect(uds: &Path, port: u32) -> Result<UnixStream, String> {
    let mut s = UnixStream::connect(uds).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(0) => return Err(format!("closed after {:?}", String::from_utf8_lossy(&line))),
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => line.push(b[0]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&line).into_owned();
    match line.strip_prefix("OK ").and_then(|p| p.parse::<u32>().ok()) {
        Some(_) => Ok(s),
        None => Err(format!("bad answer {line:?}")),
    }
}

/// Sends `data` on one thread and reads as many bytes back on this one.
fn echo_roundtrip(s: UnixStream, data: Vec<u8>) -> Vec<u8> {
    let mut w = s.try_clone().expect("clone stream");
    let len = data.len();
    let writer = std::thread::spawn(move || {
        w.write_all(&data).expect("send to the guest");
        data
    });
    let mut back = vec![0u8; len];
    let mut r = s;
    r.read_exact(&mut back).expect("read the echo");
    let sent = writer.join().expect("writer thread");
    assert_eq!(sent.len(), back.len());
    back
}

/// CPU time (user + system) a process has used so far, from /proc/PID/stat.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis((f.iter().sum::<u64>()) * 1000 / hz)
}

/// Asserts that `pid` uses (almost) no CPU over `window`.
fn assert_idle(pid: u32, window: Duration, what: &str) {
    let before = cpu_time(pid);
    std::thread::sleep(window);
    let used = cpu_time(pid) - before;
    assert!(
        used <= window / 10,
        "{what} used {used:?} of CPU in {window:?} while idle"
    );
}

/// Whether QEMU and the backend can run; prints the skip line when not.
fn qemu_ready() -> bool {
    if !have("qemu-system-x86_64") {
        skip("qemu-system-x86_64 is not installed (Debian package qemu-system-x86)");
        return false;
    }
    true
}

#[test]
fn test_vsock_vhost_user_linux_guest_streams_credit_halfclose_and_rst() {
    if !qemu_ready() {
        return;
    }
    let assets = match vsock_guest_assets() {
        Ok(a) => a,
        Err(e) => return skip(&format!("cannot build the vsock test guest: {e}")),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let token = format!("t{:x}", run_seed());
    // The host service the guest connects to (once per boot): read to EOF, answer
    // "echo:<data>", close. The first message is reported.
    let listener = UnixListener::bind(dir.path().join("v.sock_5000")).expect("bind");
    // Started as root (CI), the backend runs as `nobody` once set up (sandbox::privileges),
    // so a host service for guest connections must be reachable by that user: the folder
    // searchable, the socket connectable. (vmctl's own instance folder is 0700 and has no
    // such service.)
    {
        use std::os::unix::fs::PermissionsExt;
        let set = |p: &Path, m| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
        set(dir.path(), 0o711).expect("chmod dir");
        set(&dir.path().join("v.sock_5000"), 0o666).expect("chmod socket");
    }
    let (first_tx, first_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            s.set_read_timeout(Some(Duration::from_secs(120))).ok();
            let mut got = Vec::new();
            if s.read_to_end(&mut got).is_ok() {
                s.write_all(b"echo:").and_then(|()| s.write_all(&got)).ok();
                let _ = first_tx.send(String::from_utf8_lossy(&got).into_owned());
            }
        }
    });
    let args: Vec<String> = [
        "-accel",
        "tcg",
        "-smp",
        "1",
        "-numa",
        "node,memdev=mem",
        "-kernel",
        &assets.join("vmlinuz").display().to_string(),
        "-initrd",
        &assets.join("initramfs.cpio.gz").display().to_string(),
        "-append",
        &format!("console=ttyS0 quiet panic=-1 vsock_token={token}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let vm = Vm::start(dir.path(), 256, "vhost-user-vsock-pci", &args, true);
    vm.wait_console("GUEST-READY", Duration::from_secs(120));

    // Guest → host: the message reached <socket>_5000 and the answer came back.
    let first = first_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the guest's message");
    assert_eq!(first, format!("guest-hello {token}"));
    assert_eq!(
        vm.console_value("GUEST-CONNECT "),
        format!("echo:guest-hello {token}")
    );
    // Guest → host port without a listener: the guest's connect is reset.
    assert_eq!(vm.console_value("GUEST-REFUSED "), "ERR ECONNRESET");

    // An idle device costs no CPU (the backend sleeps in epoll).
    assert_idle(
        vm.backend.0.id(),
        Duration::from_secs(2),
        "vmm-vsock-backend",
    );

    // Host → guest port nobody listens on: closed without OK.
    let refused = vm.connect(4444);
    assert!(refused.is_err(), "CONNECT 4444 was accepted");

    // 1 MiB echo: four times the credit either side advertises, so credit updates must flow.
    let data = pseudo_random(run_seed(), 1 << 20);
    let s = vm.connect(1234).expect("CONNECT 1234 (echo)");
    let back = echo_roundtrip(s, data.clone());
    assert!(back == data, "echo differs");

    // Half-close host → guest: the sink sees EOF and can still answer.
    let mut s = vm.connect(1235).expect("CONNECT 1235 (sink)");
    let bulk = vec![0x5au8; 3 << 20];
    s.write_all(&bulk).expect("send bulk");
    s.shutdown(Shutdown::Write).expect("shutdown write");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("sink's count");
    assert_eq!(answer.trim(), (3u32 << 20).to_string());

    // Guest → host bulk, then the guest closes: every byte arrives before EOF.
    let mut s = vm.connect(1236).expect("CONNECT 1236 (source)");
    s.write_all(b"2000000\n").expect("ask for bytes");
    let mut got = Vec::new();
    s.read_to_end(&mut got).expect("read the source");
    assert_eq!(got.len(), 2_000_000);
    assert!(got.iter().all(|&b| b == b'x'));

    // A client killed mid-stream leaves the device healthy.
    let mut s = vm.connect(1234).expect("CONNECT 1234");
    s.write_all(&[1u8; 200_000]).expect("partial send");
    drop(s);

    // 32 concurrent connections, each its own echo.
    let uds = vm.uds.clone();
    let workers: Vec<_> = (0..32u64)
        .map(|i| {
            let uds = uds.clone();
            std::thread::spawn(move || {
                let s = hybrid_connect(&uds, 1234).expect("concurrent CONNECT");
                let data = pseudo_random(i + 1, 20_000);
                assert!(echo_roundtrip(s, data.clone()) == data, "echo {i} differs");
            })
        })
        .collect();
    for w in workers {
        w.join().expect("concurrent echo");
    }

    // Guest reboot: a connection held across it is dropped, and the same hybrid socket serves
    // the new boot (the driver re-initialises the device; the backend stays up).
    let mut held = vm.connect(1234).expect("CONNECT 1234 before the reboot");
    held.write_all(b"ping").expect("send before the reboot");
    let mut four = [0u8; 4];
    held.read_exact(&mut four).expect("echo before the reboot");
    let _ = vm.connect(1299); // the guest reboots on this connection
    let mut rest = Vec::new();
    let dropped = held.read_to_end(&mut rest);
    assert!(
        matches!(dropped, Ok(0)) || dropped.is_err(),
        "held connection not dropped: {dropped:?} {rest:?}"
    );
    let end = Instant::now() + Duration::from_secs(120);
    while vm.console().matches("GUEST-READY").count() < 2 {
        assert!(Instant::now() < end, "no second boot:\n{}", vm.console());
        std::thread::sleep(Duration::from_millis(100));
    }
    let s = vm.connect(1234).expect("CONNECT 1234 after the reboot");
    assert_eq!(echo_roundtrip(s, b"after-reboot".to_vec()), b"after-reboot");
}

#[test]
fn test_vsock_backend_waiting_for_frontend_idles_with_host_clients() {
    // No QEMU needed: a host client arrives before any vhost-user frontend; the backend must
    // neither spin nor drop it.
    let dir = tempfile::tempdir().expect("tempdir");
    let vhost = dir.path().join("vhost.sock");
    let uds = dir.path().join("v.sock");
    let backend = Command::new(backend_bin())
        .arg("--socket")
        .arg(&vhost)
        .arg("--uds-path")
        .arg(&uds)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn vmm-vsock-backend");
    let backend = ChildGuard(backend);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !uds.exists() {
        assert!(Instant::now() < deadline, "hybrid socket did not appear");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut early = UnixStream::connect(&uds).expect("connect early");
    early.write_all(b"CONNECT 2375\n").expect("CONNECT");
    let _half = UnixStream::connect(&uds).expect("a client that sends nothing");
    std::thread::sleep(Duration::from_millis(300));
    assert_idle(backend.0.id(), Duration::from_secs(2), "vmm-vsock-backend");
    // Still open: it waits for the guest rather than being refused.
    early
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut b = [0u8; 1];
    let r = early.read(&mut b);
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "early client: {r:?}"
    );
}

/// The newest file named `name` under `~/.cache/vmctl/<kind>/*/`.
fn cached_asset(kind: &str, name: &str) -> Option<PathBuf> {
    let base = std::env::var_os("VMCTL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/vmctl")
        });
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(base.join(kind))
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        // Only finished entries: builders write `<hash>.tmp/` or `staging-*/` and rename.
        .filter(|d| {
            let n = d
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            !n.ends_with(".tmp") && !n.starts_with("staging-") && !n.starts_with("build-")
        })
        .filter(|d| kind != "rootfs" || d.join("manifest.txt").is_file())
        .map(|d| d.join(name))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

/// Relays each connection on `listen` to guest port `port` through the hybrid socket, as the
/// supervisor's Docker socket does (the test's own small copy of it).
fn spawn_relay(listen: UnixListener, uds: PathBuf, port: u32) {
    std::thread::spawn(move || {
        for client in listen.incoming() {
            let Ok(client) = client else { return };
            let uds = uds.clone();
            std::thread::spawn(move || {
                let Ok(guest) = hybrid_connect(&uds, port) else {
                    return;
                };
                let _ = guest.set_read_timeout(None);
                let (mut c2, mut g2) = match (client.try_clone(), guest.try_clone()) {
                    (Ok(c), Ok(g)) => (c, g),
                    _ => return,
                };
                let up = std::thread::spawn(move || {
                    let mut c = client;
                    let mut g = guest;
                    let _ = std::io::copy(&mut c, &mut g);
                    let _ = g.shutdown(Shutdown::Write);
                });
                let _ = std::io::copy(&mut g2, &mut c2);
                let _ = c2.shutdown(Shutdown::Write);
                let _ = up.join();
            });
        }
    });
}

#[test]
fn test_vsock_vhost_user_agent_control_and_docker_version() {
    if !qemu_ready() {
        return;
    }
    let Some(kernel) = cached_asset("kernel", "bzImage") else {
        return skip("no project kernel in ~/.cache/vmctl/kernel/*/bzImage (build it with `vmctl image build`)");
    };
    let Some(rootfs) = cached_asset("rootfs", "rootfs.squashfs") else {
        return skip("no root image in ~/.cache/vmctl/rootfs/*/rootfs.squashfs (build it with `vmctl image build`)");
    };
    if !have("docker") {
        return skip("the docker CLI is not installed");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // The PC machine: under TCG, the project kernel stalls in TSC calibration on `-M microvm`
    // (no PIT/HPET reference), so this test uses virtio-pci devices.
    let args: Vec<String> = [
        "-M",
        "pc",
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-smp",
        "2",
        "-numa",
        "node,memdev=mem",
        "-kernel",
        &kernel.display().to_string(),
        "-append",
        "console=ttyS0 root=/dev/vda rootfstype=squashfs ro init=/sbin/init panic=-1 loglevel=4",
        "-drive",
        &format!(
            "id=root,file={},format=raw,if=none,readonly=on",
            rootfs.display()
        ),
        "-device",
        "virtio-blk-pci,drive=root",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let vm = Vm::start(dir.path(), 1024, "vhost-user-vsock-pci", &args, false);

    // The agent's control port answers Hello through the backend (retry while it boots).
    let end = Instant::now() + Duration::from_secs(120);
    let hello = loop {
        if let Ok(s) = vm.connect(1024) {
            let mut w = s.try_clone().expect("clone");
            if w.write_all(b"{\"type\":\"hello\",\"version\":1}\n").is_ok() {
                let mut line = String::new();
                if BufReader::new(s).read_line(&mut line).is_ok() && !line.is_empty() {
                    break line;
                }
            }
        }
        vm.assert_running();
        assert!(
            Instant::now() < end,
            "the agent's control port did not answer:\n{}",
            vm.console()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(hello.contains("\"hello\""), "control answer {hello:?}");

    // `docker version` through CONNECT 2375, relayed by a unix socket like the supervisor's.
    let docker_sock = dir.path().join("docker.sock");
    spawn_relay(
        UnixListener::bind(&docker_sock).expect("bind docker.sock"),
        vm.uds.clone(),
        2375,
    );
    let docker = |args: &[&str]| {
        Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", docker_sock.display()))
            .args(args)
            .output()
            .expect("run docker")
    };
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        let out = docker(&["version", "--format", "{{.Server.Version}}"]);
        let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && !version.is_empty() {
            break;
        }
        assert!(
            Instant::now() < end,
            "docker version did not answer: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            vm.console()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    // Concurrent clients, each its own vsock connection through the relay.
    let outs: Vec<_> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..20)
            .map(|_| sc.spawn(|| docker(&["version", "--format", "{{.Server.Version}}"])))
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("docker thread"))
            .collect()
    });
    for o in &outs {
        assert!(
            o.status.success() && !o.stdout.is_empty(),
            "concurrent docker version failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}
