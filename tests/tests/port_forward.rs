//! Port forwarding against real components: the real guest agent (`--serve-unix`) runs in a
//! network namespace of its own that stands in for the guest's (its /proc/net is the
//! namespace's), a hybrid-vsock front (`CONNECT 1024` → the agent's socket) stands in for
//! the VMM's vsock socket, and the supervisor's real forwarder (`ports::run`) opens host
//! ports for the namespace's listeners. Covers: a listener on 127.0.0.1 (`docker run -p
//! 127.0.0.1:8080:80`), on a guest-only address (forwarded from host 127.0.0.1), on an
//! address the host has too (forwarded from that address), UDP, a privileged port refused
//! with a status line, and a listener flood held to the cap with the forwarder still
//! serving.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmctl::instance::State;
use vmctl::supervisor::ports::{self, Policy, MAX_PORTS};
use vmctl_tests::cli_env::free_port;
use vmctl_tests::{build_agent, have, is_root, skip};

/// A network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Self {
        let name = format!("vmctl-pf-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Netns(name)
    }

    /// Runs `f` on a thread inside the namespace; sockets it creates stay in the namespace.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on this thread only, with an fd we own for the call.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().unwrap();
    assert!(st.success(), "ip {args:?}");
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The hybrid-vsock front: each `CONNECT 1024` is answered `OK 1024` and spliced to the
/// agent's unix socket (what the VMM's vsock device does for the guest's port 1024).
fn hybrid_vsock(front: &Path, agent: PathBuf) {
    let l = UnixListener::bind(front).unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let agent = agent.clone();
            std::thread::spawn(move || {
                let mut s = s;
                let mut line = Vec::new();
                let mut b = [0u8; 1];
                while s.read_exact(&mut b).is_ok() && b[0] != b'\n' && line.len() < 64 {
                    line.push(b[0]);
                }
                if line != b"CONNECT 1024" {
                    return;
                }
                let Ok(a) = UnixStream::connect(&agent) else {
                    return;
                };
                if s.write_all(b"OK 1024\n").is_err() {
                    return;
                }
                let (mut s2, mut a2) = (s.try_clone().unwrap(), a.try_clone().unwrap());
                let up = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s2, &mut a2);
                    let _ = a2.shutdown(std::net::Shutdown::Write);
                });
                let (mut a, mut s) = (a, s);
                let _ = std::io::copy(&mut a, &mut s);
                let _ = s.shutdown(std::net::Shutdown::Write);
                let _ = up.join();
            });
        }
    });
}

/// Serves `reply` to every TCP client of `l` (in whatever namespace `l` lives).
fn serve(l: TcpListener, reply: &'static [u8]) {
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let _ = c.write_all(reply);
        }
    });
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            eprintln!("{what}: {:.2} s", start.elapsed().as_secs_f64());
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn fetch(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    (!out.is_empty()).then_some(out)
}

/// The host's first global IPv4 address, if any.
fn host_global_v4() -> Option<IpAddr> {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show", "scope", "global"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let word = text
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)?;
    word.split('/').next()?.parse().ok()
}

#[test]
fn test_ports_forwarded_by_guest_address_capped_and_privileged_refused() {
    if !is_root() {
        skip("needs root (creates a network namespace for the stand-in guest)");
        return;
    }
    if !have("ip") {
        skip("ip(8) (iproute2) is not installed");
        return;
    }
    let ns = Netns::new();
    let dir = tempfile::tempdir().unwrap();
    let (agent_sock, front) = (dir.path().join("agent.sock"), dir.path().join("vsock.sock"));
    let agent = build_agent().expect("build the guest agent");
    let _agent = Killed(
        Command::new("ip")
            .args(["netns", "exec", &ns.0])
            .arg(&agent)
            .arg("--serve-unix")
            .arg(&agent_sock)
            .spawn()
            .unwrap(),
    );
    wait_for("agent socket", Duration::from_secs(10), || {
        agent_sock.exists().then_some(())
    });
    hybrid_vsock(&front, agent_sock.clone());

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let state = Arc::new(tokio::sync::Mutex::new(State::default()));
    rt.spawn(ports::run(front.clone(), state.clone(), Policy::default()));
    let status = |port: u16, proto: &str| {
        let s = state.blocking_lock();
        s.ports
            .iter()
            .find(|p| p.port == port && p.proto == proto)
            .map(|p| (p.address.clone(), p.status.clone()))
    };
    let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));

    // 1. `-p 127.0.0.1:P:80` in the guest: a listener on the guest's 127.0.0.1.
    let p1 = free_port();
    let l = ns.run(move || TcpListener::bind(("127.0.0.1", p1)).unwrap());
    serve(l, b"pong-loopback");
    let got = wait_for(
        "127.0.0.1 listener forwarded",
        Duration::from_secs(10),
        || fetch(loopback(p1)),
    );
    assert_eq!(got, "pong-loopback");
    assert_eq!(
        status(p1, "tcp"),
        Some(("127.0.0.1".into(), "forwarded".into()))
    );

    // 2. A listener on an address only the guest has: from host 127.0.0.1, to that address.
    ip(&["-n", &ns.0, "addr", "add", "10.99.0.1/32", "dev", "lo"]);
    let p2 = free_port();
    let l = ns.run(move || TcpListener::bind(("10.99.0.1", p2)).unwrap());
    serve(l, b"pong-guest-only");
    let got = wait_for(
        "guest-only address forwarded",
        Duration::from_secs(10),
        || fetch(loopback(p2)),
    );
    assert_eq!(got, "pong-guest-only");

    // 3. A listener on an address the host has too: forwarded from that host address only.
    match host_global_v4() {
        Some(host_ip) => {
            let p3 = free_port();
            let cidr = format!("{host_ip}/32");
            ip(&["-n", &ns.0, "addr", "add", &cidr, "dev", "lo"]);
            let l = ns.run(move || TcpListener::bind((host_ip, p3)).unwrap());
            serve(l, b"pong-host-address");
            let got = wait_for("host address forwarded", Duration::from_secs(10), || {
                fetch(SocketAddr::new(host_ip, p3))
            });
            assert_eq!(got, "pong-host-address");
            assert_eq!(
                status(p3, "tcp"),
                Some((host_ip.to_string(), "forwarded".into()))
            );
            assert!(
                TcpStream::connect(loopback(p3)).is_err(),
                "not also on 127.0.0.1"
            );
        }
        None => skip("the host has no global IPv4 address: host-address forwarding not tested"),
    }

    // 4. UDP on the guest's 127.0.0.1.
    let p4 = free_port();
    let u = ns.run(move || UdpSocket::bind(("127.0.0.1", p4)).unwrap());
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = u.recv_from(&mut buf) {
            let mut reply = b"echo:".to_vec();
            reply.extend_from_slice(&buf[..n]);
            let _ = u.send_to(&reply, from);
        }
    });
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let got = wait_for("udp forwarded", Duration::from_secs(10), || {
        client.send_to(b"ping", loopback(p4)).ok()?;
        let mut buf = [0u8; 64];
        let n = client.recv(&mut buf).ok()?;
        Some(buf[..n].to_vec())
    });
    assert_eq!(got, b"echo:ping");

    // 5. A privileged port is refused with a status line that says how to allow it.
    let l80 = ns.run(|| TcpListener::bind(("0.0.0.0", 80)).unwrap());
    let (_, why) = wait_for("port 80 status", Duration::from_secs(10), || {
        status(80, "tcp")
    });
    assert!(why.contains("privileged"), "{why}");
    assert!(why.contains("allow_privileged_ports"), "{why}");
    drop(l80);

    // 6. A listener flood (a container with --network host opening 700 ports): at most
    // MAX_PORTS host ports, a status note about the rest, and the forwarder still serving.
    let flood = ns.run(|| {
        (0..700)
            .map(|_| TcpListener::bind(("127.0.0.1", 0)).unwrap())
            .collect::<Vec<_>>()
    });
    let note = wait_for("limit note", Duration::from_secs(20), || {
        let s = state.blocking_lock();
        (!s.ports_note.is_empty()).then(|| (s.ports.len(), s.ports_note.clone()))
    });
    eprintln!("with the flood: {} ports listed; note: {}", note.0, note.1);
    assert_eq!(note.0, MAX_PORTS);
    assert!(
        note.1.contains(&format!("limit of {MAX_PORTS}")),
        "{}",
        note.1
    );
    assert_eq!(fetch(loopback(p1)).as_deref(), Some("pong-loopback"));
    drop(flood);
    let left = wait_for("flood gone", Duration::from_secs(20), || {
        let s = state.blocking_lock();
        (s.ports_note.is_empty() && s.ports.len() < 10).then(|| s.ports.len())
    });
    eprintln!("after the flood: {left} ports listed");
    assert_eq!(fetch(loopback(p2)).as_deref(), Some("pong-guest-only"));
    // The watcher's blocking read of the agent's event stream would hold a plain drop.
    rt.shutdown_timeout(Duration::from_secs(1));
}
