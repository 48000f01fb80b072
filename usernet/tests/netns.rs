//! End-to-end tests: a network namespace whose TAP is served by `usernet tap`; the guest is
//! the namespace's real Linux TCP/IP stack (curl, dig, ping, and Rust sockets on a thread
//! that entered the namespace). Host-side servers listen on 127.0.0.1 ephemeral ports.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::{skip_unless_root, Netns, Prng, Usernet};
use sha2::{Digest, Sha256};

const T: Duration = Duration::from_secs(30);

fn gw(port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 2, 2], port))
}

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(T))?;
    s.set_write_timeout(Some(T))?;
    Ok(s)
}

/// A host HTTP server answering every request with `body`, on 127.0.0.1.
fn http_server(body: &'static str) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut req = Vec::new();
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    port
}

#[test]
fn test_tap_http_via_gateway_reaches_host_loopback() {
    if skip_unless_root(&["ip", "curl"]) {
        return;
    }
    let ns = Netns::new("http");
    let _net = Usernet::tap(&ns, &[]);
    let port = http_server("hello from the host");
    let url = format!("http://10.0.2.2:{port}/");
    let out = ns.exec(&["curl", "-sS", "-m", "10", &url], T);
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from the host");
    // The namespace got the slirp layout.
    let out = ns.exec(&["ip", "-4", "addr", "show", "tap0"], T);
    assert!(String::from_utf8_lossy(&out.stdout).contains("10.0.2.15/24"));
    let out = ns.exec(&["ip", "route"], T);
    assert!(String::from_utf8_lossy(&out.stdout).contains("default via 10.0.2.2"));
    let resolv = std::fs::read_to_string(format!("/etc/netns/{}/resolv.conf", ns.name))
        .expect("resolver written");
    assert_eq!(resolv.trim(), "nameserver 10.0.2.3");
}

/// A dnsmasq on 127.x.y.z:53 answering `name` with `addr`.
fn dnsmasq(listen: &str, name: &str, addr: &str) -> common::Guard {
    let child = std::process::Command::new(common::which("dnsmasq").expect("dnsmasq"))
        .args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--conf-file=/dev/null",
            "--bind-interfaces",
            "--user=root",
            "--pid-file=",
            "--port=53",
            &format!("--listen-address={listen}"),
            &format!("--address=/{name}/{addr}"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn dnsmasq");
    common::Guard(child)
}

fn dig(ns: &Netns, name: &str) -> (String, Duration) {
    let t0 = Instant::now();
    let out = ns.exec(
        &[
            "dig",
            "+short",
            "+time=2",
            "+tries=2",
            "@10.0.2.3",
            name,
            "A",
        ],
        T,
    );
    (
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        t0.elapsed(),
    )
}

#[test]
fn test_dns_forwarder_follows_resolv_conf_changes() {
    if skip_unless_root(&["ip", "dig", "dnsmasq"]) {
        return;
    }
    // Two upstream resolvers on distinct loopback addresses (unique per test process).
    let b = (std::process::id() % 200) as u8 + 20;
    let (a1, a2) = (format!("127.53.{b}.1"), format!("127.53.{b}.2"));
    let _d1 = dnsmasq(&a1, "svc.vmctl.test", "192.0.2.11");
    let _d2 = dnsmasq(&a2, "svc.vmctl.test", "192.0.2.22");
    let dir = tempfile::tempdir().expect("tempdir");
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, format!("nameserver {a1}\n")).expect("write");
    let ns = Netns::new("dns");
    let _net = Usernet::tap(&ns, &["--resolv-conf", resolv.to_str().expect("utf8")]);
    // dnsmasq needs a moment to start: retry the first query for a while.
    let mut ans = String::new();
    for _ in 0..20 {
        ans = dig(&ns, "svc.vmctl.test").0;
        if ans == "192.0.2.11" {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(ans, "192.0.2.11");
    // DNS over TCP to the forwarder address reaches the same upstream.
    let out = ns.exec(
        &[
            "dig",
            "+tcp",
            "+short",
            "+time=2",
            "@10.0.2.3",
            "svc.vmctl.test",
        ],
        T,
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "192.0.2.11");
    // The host's resolver changes (VPN up): new queries follow it.
    std::fs::write(&resolv, format!("nameserver {a2}\n")).expect("rewrite");
    std::thread::sleep(Duration::from_millis(700));
    let (ans, _) = dig(&ns, "svc.vmctl.test");
    assert_eq!(ans, "192.0.2.22");
    // Through the system resolver of the namespace too (/etc/netns/NAME/resolv.conf).
    let out = ns.exec(&["getent", "ahostsv4", "svc.vmctl.test"], T);
    assert!(String::from_utf8_lossy(&out.stdout).contains("192.0.2.22"));
    // No nameserver at all: the guest gets SERVFAIL at once instead of a timeout.
    std::fs::write(&resolv, "# offline\n").expect("rewrite");
    std::thread::sleep(Duration::from_millis(700));
    let t0 = Instant::now();
    let out = ns.exec(
        &["dig", "+time=5", "+tries=1", "@10.0.2.3", "svc.vmctl.test"],
        T,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SERVFAIL"), "{text}");
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t0.elapsed()
    );
}

const BIG: usize = 100 << 20;

#[test]
fn test_transfer_100mb_both_directions_hash_matches() {
    if skip_unless_root(&["ip"]) {
        return;
    }
    let ns = Netns::new("bulk");
    let _net = Usernet::tap(&ns, &[]);
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    // Host: first connection uploads to us (we hash), second downloads from us.
    let server = std::thread::spawn(move || {
        let (mut up, _) = l.accept().expect("accept up");
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0;
        loop {
            let n = up.read(&mut buf).expect("read up");
            if n == 0 {
                break;
            }
            total += n;
            h.update(&buf[..n]);
        }
        up.write_all(&h.finalize()).expect("send hash");
        drop(up);
        let (mut down, _) = l.accept().expect("accept down");
        let mut p = Prng(0xfeed);
        let mut h = Sha256::new();
        let mut left = BIG;
        while left > 0 {
            let n = left.min(buf.len());
            p.fill(&mut buf[..n]);
            h.update(&buf[..n]);
            down.write_all(&buf[..n]).expect("write down");
            left -= n;
        }
        (total, h.finalize().to_vec())
    });
    let (up_hash, sent_hash, down_hash) = ns.run(move || {
        let mut s = connect(gw(port)).expect("connect up");
        let mut p = Prng(0xbeef);
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut left = BIG;
        while left > 0 {
            let n = left.min(buf.len());
            p.fill(&mut buf[..n]);
            h.update(&buf[..n]);
            s.write_all(&buf[..n]).expect("write up");
            left -= n;
        }
        s.shutdown(Shutdown::Write).expect("half-close");
        let mut theirs = Vec::new();
        s.read_to_end(&mut theirs).expect("read hash");
        let mut d = connect(gw(port)).expect("connect down");
        let mut hd = Sha256::new();
        let mut got = 0;
        loop {
            let n = d.read(&mut buf).expect("read down");
            if n == 0 {
                break;
            }
            got += n;
            hd.update(&buf[..n]);
        }
        assert_eq!(got, BIG);
        (theirs, h.finalize().to_vec(), hd.finalize().to_vec())
    });
    let (total, host_sent_hash) = server.join().expect("server");
    assert_eq!(total, BIG);
    assert_eq!(up_hash, sent_hash, "guest->host data corrupted");
    assert_eq!(down_hash, host_sent_hash, "host->guest data corrupted");
}

/// A host echo server: one thread per connection.
fn echo_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    port
}

#[test]
fn test_500_concurrent_connections_all_echo() {
    if skip_unless_root(&["ip"]) {
        return;
    }
    let ns = Netns::new("many");
    let net = Usernet::tap(&ns, &[]);
    let port = echo_server();
    ns.run(move || {
        let mut conns = Vec::new();
        for i in 0..500 {
            let s = connect(gw(port)).unwrap_or_else(|e| panic!("connection {i}: {e}"));
            conns.push(s);
        }
        // All 500 are open at once; each carries its own message.
        for (i, s) in conns.iter_mut().enumerate() {
            s.write_all(format!("conn-{i:04}").as_bytes())
                .expect("write");
        }
        for (i, s) in conns.iter_mut().enumerate() {
            let mut buf = [0u8; 9];
            s.read_exact(&mut buf).expect("read echo");
            assert_eq!(&buf, format!("conn-{i:04}").as_bytes());
        }
    });
    drop(net);
}

#[test]
fn test_half_close_both_directions() {
    if skip_unless_root(&["ip"]) {
        return;
    }
    let ns = Netns::new("half");
    let _net = Usernet::tap(&ns, &[]);
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let server = std::thread::spawn(move || {
        // 1: guest half-closes first; host reads EOF, then answers and closes.
        let (mut s, _) = l.accept().expect("accept");
        let mut req = String::new();
        s.read_to_string(&mut req).expect("read to EOF");
        s.write_all(format!("got {req}").as_bytes())
            .expect("reply after EOF");
        drop(s);
        // 2: host half-closes first; guest keeps sending afterwards.
        let (mut s, _) = l.accept().expect("accept 2");
        s.write_all(b"banner").expect("banner");
        s.shutdown(Shutdown::Write).expect("host half-close");
        let mut rest = String::new();
        s.read_to_string(&mut rest).expect("read after half-close");
        rest
    });
    ns.run(move || {
        let mut s = connect(gw(port)).expect("connect");
        s.write_all(b"question").expect("write");
        s.shutdown(Shutdown::Write).expect("guest half-close");
        let mut ans = String::new();
        s.read_to_string(&mut ans).expect("read answer");
        assert_eq!(ans, "got question");
        let mut s = connect(gw(port)).expect("connect 2");
        let mut banner = String::new();
        s.read_to_string(&mut banner).expect("read banner to EOF");
        assert_eq!(banner, "banner");
        std::thread::sleep(Duration::from_millis(100));
        s.write_all(b"still talking").expect("write after peer FIN");
        s.shutdown(Shutdown::Write).expect("close");
        std::thread::sleep(Duration::from_millis(100));
    });
    assert_eq!(server.join().expect("server"), "still talking");
}

#[test]
fn test_refused_connection_and_resets_propagate() {
    if skip_unless_root(&["ip"]) {
        return;
    }
    let ns = Netns::new("rst");
    let _net = Usernet::tap(&ns, &[]);
    // A port nobody listens on: the guest sees "connection refused" at once.
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed_port = closed.local_addr().expect("addr").port();
    drop(closed);
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let server = std::thread::spawn(move || {
        // Host resets the first connection once the guest has spoken (so the reset comes
        // on an established connection, not during the handshake).
        let (mut s, _) = l.accept().expect("accept");
        let mut one = [0u8; 1];
        s.read_exact(&mut one).expect("read first byte");
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .expect("linger");
        drop(s);
        // The guest resets the second; the host must see ECONNRESET.
        let (mut s, _) = l.accept().expect("accept 2");
        s.set_read_timeout(Some(T)).expect("timeout");
        let mut buf = [0u8; 16];
        match s.read(&mut buf) {
            Err(e) => e.kind(),
            Ok(n) => panic!("host read {n} bytes instead of a reset"),
        }
    });
    ns.run(move || {
        let t0 = Instant::now();
        let e = connect(gw(closed_port)).expect_err("must be refused");
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused);
        assert!(t0.elapsed() < Duration::from_secs(1));
        let mut s = connect(gw(port)).expect("connect");
        s.write_all(b"x").expect("write");
        let mut buf = [0u8; 16];
        let r = s.read(&mut buf);
        assert!(
            matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionReset),
            "guest read after host RST: {r:?}"
        );
        let s = connect(gw(port)).expect("connect 2");
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .expect("linger");
        drop(s);
    });
    assert_eq!(server.join().expect("server"), ErrorKind::ConnectionReset);
}

#[test]
fn test_udp_echo_via_gateway() {
    if skip_unless_root(&["ip"]) {
        return;
    }
    let ns = Netns::new("udp");
    let _net = Usernet::tap(&ns, &[]);
    let host = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let port = host.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok((n, from)) = host.recv_from(&mut buf) {
            let _ = host.send_to(&buf[..n], from);
        }
    });
    ns.run(move || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind guest");
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        s.connect(gw(port)).expect("connect");
        for size in [1usize, 512, 1400, 9000, 60000] {
            let msg: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let mut ok = false;
            for _ in 0..3 {
                s.send(&msg).expect("send");
                let mut buf = vec![0u8; 65536];
                if let Ok(n) = s.recv(&mut buf) {
                    assert_eq!(&buf[..n], &msg[..], "size {size}");
                    ok = true;
                    break;
                }
            }
            assert!(ok, "no UDP echo for size {size}");
        }
        // A closed host port: the guest gets ICMP port unreachable (ECONNREFUSED).
        let closed = {
            let c = UdpSocket::bind("127.0.0.1:0").expect("bind");
            c.local_addr().expect("addr").port()
        };
        s.connect(gw(closed)).expect("connect closed");
        let _ = s.send(b"anyone?");
        let mut buf = [0u8; 16];
        let r = s.recv(&mut buf);
        assert!(
            matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionRefused),
            "closed UDP port: {r:?}"
        );
    });
}

#[test]
fn test_ping_gateway_answers() {
    if skip_unless_root(&["ip", "ping"]) {
        return;
    }
    let ns = Netns::new("ping");
    let _net = Usernet::tap(&ns, &[]);
    let out = ns.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.0.2.2"], T);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("3 received"), "{text}");
}

#[test]
fn test_inbound_port_forward_reaches_guest_listener() {
    if skip_unless_root(&["ip"]) {
        return;
    }
    let ns = Netns::new("fwd");
    // Pick a free host port (bind 0, release) and one with no guest listener behind it.
    let free = || {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let (hp, hp_dead) = (free(), free());
    let _net = Usernet::tap(
        &ns,
        &[
            "--forward",
            &format!("tcp:{hp}:8080"),
            "--forward",
            &format!("tcp:127.0.0.1:{hp_dead}:8081"),
        ],
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let guest = ns.spawn(move || {
        let l = TcpListener::bind("0.0.0.0:8080").expect("guest bind");
        tx.send(()).expect("ready");
        let (mut s, peer) = l.accept().expect("guest accept");
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).expect("read");
        s.write_all(&buf.map(|b| b.to_ascii_uppercase()))
            .expect("write");
        peer
    });
    rx.recv_timeout(T).expect("guest listening");
    let mut s = connect(SocketAddr::from(([127, 0, 0, 1], hp))).expect("host connect");
    s.write_all(b"hello").expect("write");
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).expect("read");
    assert_eq!(&buf, b"HELLO");
    let peer = guest.join().expect("guest");
    assert_eq!(
        peer.ip().to_string(),
        "10.0.2.2",
        "guest sees the gateway as peer"
    );
    // Nothing listens on the guest side: the host connection is reset/closed, not hung.
    let r = connect(SocketAddr::from(([127, 0, 0, 1], hp_dead))).and_then(|mut s| {
        let mut buf = [0u8; 1];
        s.read(&mut buf)
    });
    match r {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("expected EOF/reset, got {other:?}"),
    }
}

/// A "host" namespace with only `lo` up (no network at all).
fn offline_host() -> Netns {
    let host = Netns::new("host");
    let out = host.exec(&["ip", "link", "set", "lo", "up"], T);
    assert!(out.status.success());
    host
}

#[test]
fn test_host_without_network_degrades_cleanly() {
    if skip_unless_root(&["ip", "dig", "ping"]) {
        return;
    }
    let host = offline_host();
    let guest = Netns::new("guest");
    let dir = tempfile::tempdir().expect("tempdir");
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 192.0.2.53\n").expect("write");
    let mut net = Usernet::tap_via(
        Some(&host),
        &guest,
        &["--resolv-conf", resolv.to_str().expect("utf8")],
    );
    // A server on the offline host's loopback is still reachable through the gateway.
    let (tx, rx) = std::sync::mpsc::channel();
    host.spawn(move || {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        tx.send(l.local_addr().expect("addr").port()).expect("send");
        let (mut s, _) = l.accept().expect("accept");
        s.write_all(b"offline but alive").expect("write");
    });
    let port = rx.recv_timeout(T).expect("port");
    let (tcp_err, tcp_time, hello) = guest.run(move || {
        let t0 = Instant::now();
        let e = connect(SocketAddr::from(([198, 51, 100, 7], 80))).expect_err("no route");
        let took = t0.elapsed();
        let mut s = connect(gw(port)).expect("gateway");
        let mut hello = String::new();
        s.read_to_string(&mut hello).expect("read");
        // UDP to the internet: dropped, nothing breaks.
        let u = UdpSocket::bind("0.0.0.0:0").expect("udp");
        let _ = u.send_to(b"x", "198.51.100.7:9");
        (e.kind(), took, hello)
    });
    assert_eq!(tcp_err, ErrorKind::ConnectionRefused);
    assert!(tcp_time < Duration::from_secs(2), "took {tcp_time:?}");
    assert_eq!(hello, "offline but alive");
    // DNS: SERVFAIL at once (the upstream is unreachable), not a 5 s timeout.
    let t0 = Instant::now();
    let out = guest.exec(
        &["dig", "+time=5", "+tries=1", "@10.0.2.3", "example.com"],
        T,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SERVFAIL"), "{text}");
    assert!(t0.elapsed() < Duration::from_secs(3));
    // Ping: the gateway answers; a remote host simply does not.
    let out = guest.exec(&["ping", "-c", "1", "-W", "2", "10.0.2.2"], T);
    assert!(out.status.success());
    let out = guest.exec(&["ping", "-c", "1", "-W", "1", "198.51.100.7"], T);
    assert!(!out.status.success());
    assert!(net.alive(), "usernet died; log:\n{}", net.log());
}

#[test]
fn test_ping_remote_through_ping_socket() {
    if skip_unless_root(&["ip", "ping", "sysctl"]) {
        return;
    }
    let host = offline_host();
    for cmd in [
        &["ip", "addr", "add", "192.0.2.1/32", "dev", "lo"][..],
        &["sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647"],
    ] {
        let out = host.exec(cmd, T);
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let guest = Netns::new("guest");
    let _net = Usernet::tap_via(Some(&host), &guest, &[]);
    // 192.0.2.1 exists only on the host side: only NAT through a ping socket answers it.
    let out = guest.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", "192.0.2.1"], T);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("3 received"), "{text}");
    let out = guest.exec(&["ping", "-c", "1", "-W", "1", "192.0.2.99"], T);
    assert!(!out.status.success(), "a missing host must not answer");
    // Ping sockets forbidden: remote pings go unanswered, the gateway still answers.
    let out = host.exec(&["sysctl", "-qw", "net.ipv4.ping_group_range=1 0"], T);
    assert!(out.status.success());
    let guest2 = Netns::new("guest");
    let net2 = Usernet::tap_via(Some(&host), &guest2, &[]);
    let out = guest2.exec(&["ping", "-c", "1", "-W", "1", "192.0.2.1"], T);
    assert!(!out.status.success());
    let out = guest2.exec(&["ping", "-c", "1", "-W", "2", "10.0.2.2"], T);
    assert!(out.status.success());
    assert!(
        net2.log().contains("ping sockets are not allowed"),
        "{}",
        net2.log()
    );
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn test_backpressure_bounds_buffering_when_guest_stops_reading() {
    if skip_unless_root(&["ip"]) {
        return;
    }
    let ns = Netns::new("bp");
    let net = Usernet::tap(&ns, &[]);
    let pid = net.child.0.id();
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let (tx, rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accept");
        s.set_nonblocking(true).expect("nonblocking");
        // Write until the path is full: everything buffered between here and the guest
        // application (host socket, usernet, guest socket) must be bounded.
        let chunk = vec![0x42u8; 1 << 16];
        let mut sent = 0usize;
        let mut idle = Instant::now();
        while idle.elapsed() < Duration::from_millis(1500) {
            match s.write(&chunk) {
                Ok(n) => {
                    sent += n;
                    idle = Instant::now();
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("write: {e}"),
            }
            assert!(sent < 256 << 20, "256 MiB accepted while nobody reads");
        }
        tx.send(sent).expect("report");
        s.set_nonblocking(false).expect("blocking");
        s.write_all(b"END").expect("end");
        sent + 3
    });
    let guest = ns.spawn(move || {
        let mut s = connect(gw(port)).expect("connect");
        // Do not read until the host is stuck.
        std::thread::sleep(Duration::from_millis(200));
        let stuck: usize = rx.recv_timeout(T).expect("host stuck");
        let mut total = 0;
        let mut buf = vec![0u8; 1 << 16];
        let mut tail = Vec::new();
        while !tail.ends_with(b"END") {
            let n = s.read(&mut buf).expect("read");
            assert!(n > 0, "EOF before END");
            total += n;
            tail.extend_from_slice(&buf[..n]);
            if tail.len() > 8 {
                tail.drain(..tail.len() - 8);
            }
        }
        (stuck, total)
    });
    let (stuck, received) = guest.join().expect("guest");
    let sent = server.join().expect("server");
    assert_eq!(received, sent, "bytes lost or duplicated");
    assert!(
        stuck < 64 << 20,
        "{stuck} bytes buffered before backpressure"
    );
    let rss = rss_kib(pid);
    assert!(rss < 64 * 1024, "usernet RSS {rss} KiB");
}

#[test]
fn test_inbound_udp_forward_round_trip() {
    if skip_unless_root(&["ip"]) {
        return;
    }
    let ns = Netns::new("ufwd");
    let hp = {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.local_addr().expect("addr").port()
    };
    let _net = Usernet::tap(&ns, &["--forward", &format!("udp:{hp}:5353")]);
    let (tx, rx) = std::sync::mpsc::channel();
    let guest = ns.spawn(move || {
        let s = UdpSocket::bind("0.0.0.0:5353").expect("guest bind");
        tx.send(()).expect("ready");
        s.set_read_timeout(Some(T)).expect("timeout");
        let mut peers = Vec::new();
        let mut buf = [0u8; 2048];
        for _ in 0..2 {
            let (n, from) = s.recv_from(&mut buf).expect("guest recv");
            let mut reply = b"echo:".to_vec();
            reply.extend_from_slice(&buf[..n]);
            s.send_to(&reply, from).expect("guest reply");
            peers.push(from);
        }
        peers
    });
    rx.recv_timeout(T).expect("guest ready");
    // Two host peers: each gets its own answer.
    let a = UdpSocket::bind("127.0.0.1:0").expect("a");
    let b = UdpSocket::bind("127.0.0.1:0").expect("b");
    for (s, msg) in [(&a, &b"from-a"[..]), (&b, &b"from-b"[..])] {
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.send_to(msg, ("127.0.0.1", hp)).expect("send");
        let mut buf = [0u8; 64];
        let n = s.recv(&mut buf).expect("answer");
        assert_eq!(&buf[..n], [&b"echo:"[..], msg].concat().as_slice());
    }
    let peers = guest.join().expect("guest");
    assert!(peers.iter().all(|p| p.ip().to_string() == "10.0.2.2"));
    assert_ne!(
        peers[0].port(),
        peers[1].port(),
        "one gateway port per host peer"
    );
}

/// A "host" whose loopback also carries a cloud metadata address, a link-local address and
/// Alibaba's metadata address, each with a server that hands out "creds": a real guest stack
/// gets a refused connection from each by default, reaches them with the allow options, and
/// loses the gateway (host loopback) with --no-host-loopback.
#[test]
fn test_link_local_metadata_and_host_loopback_policy() {
    if skip_unless_root(&["ip"]) {
        return;
    }
    let host = offline_host();
    for addr in ["169.254.169.254/32", "169.254.7.7/32", "100.100.100.200/32"] {
        let out = host.exec(&["ip", "addr", "add", addr, "dev", "lo"], T);
        assert!(out.status.success(), "ip addr add {addr}");
    }
    let (tx, rx) = std::sync::mpsc::channel();
    host.spawn(move || {
        let l = TcpListener::bind("0.0.0.0:0").expect("bind");
        tx.send(l.local_addr().expect("addr").port()).expect("send");
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let _ = s.write_all(b"creds");
        }
    });
    let port = rx.recv_timeout(T).expect("port");
    let targets: [[u8; 4]; 4] = [
        [169, 254, 169, 254],
        [169, 254, 7, 7],
        [100, 100, 100, 200],
        [10, 0, 2, 2],
    ];
    let try_all = |extra: &[&str]| {
        let guest = Netns::new("policy");
        let mut net = Usernet::tap_via(Some(&host), &guest, extra);
        let got = guest.run(move || {
            targets.map(|ip| {
                let mut s = connect(SocketAddr::from((ip, port))).map_err(|e| e.kind())?;
                let mut body = String::new();
                s.read_to_string(&mut body).map_err(|e| e.kind())?;
                Ok::<String, ErrorKind>(body)
            })
        });
        assert!(net.alive(), "usernet died; log:\n{}", net.log());
        got
    };
    let creds = || Ok("creds".to_string());
    let refused = Err(ErrorKind::ConnectionRefused);

    let r = try_all(&[]);
    assert_eq!(r[0], refused, "metadata reachable by default");
    assert_eq!(r[1], refused, "link-local reachable by default");
    assert_eq!(r[2], refused, "Alibaba metadata reachable by default");
    assert_eq!(r[3], creds(), "host loopback through the gateway");

    let r = try_all(&["--allow-link-local"]);
    assert_eq!(r[0], refused, "metadata needs its own option");
    assert_eq!(r[1], creds());

    let r = try_all(&["--allow-metadata", "--allow-link-local"]);
    assert_eq!(r, [creds(), creds(), creds(), creds()]);

    let r = try_all(&["--no-host-loopback"]);
    assert_eq!(r[3], refused, "gateway still reaches the host loopback");
    assert_eq!(r[0], refused);
}
