//! The QEMU `-netdev stream` transport through the real `usernet stream` binary: the
//! 4-byte big-endian length framing, a DHCP exchange over it, and recovery from a peer
//! that sends garbage.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::frames::{dhcp, parse_dhcp, GUEST, GW};
use common::Guard;
use smoltcp::wire::DhcpMessageType;

fn start(sock: &Path) -> Guard {
    let child = Command::new(env!("CARGO_BIN_EXE_usernet"))
        .args(["stream", "--socket"])
        .arg(sock)
        .args(["--resolv-conf", "/nonexistent/resolv.conf"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn usernet stream");
    let g = Guard(child);
    let end = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < end, "socket never appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    g
}

fn send(s: &mut UnixStream, frame: &[u8]) {
    s.write_all(&(frame.len() as u32).to_be_bytes())
        .expect("len");
    s.write_all(frame).expect("frame");
}

fn recv(s: &mut UnixStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let mut f = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut f)?;
    Ok(f)
}

/// Connects as the peer. The socket file appears at bind(), a moment before listen(): a
/// refused connection in that window is retried, as QEMU's reconnect would.
fn connect(sock: &Path) -> UnixStream {
    let end = Instant::now() + Duration::from_secs(10);
    let s = loop {
        match UnixStream::connect(sock) {
            Ok(s) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("connect: {e:?}"),
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s
}

#[test]
fn test_stream_dhcp_over_length_prefixed_frames() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("net.sock");
    let _usernet = start(&sock);
    let mut s = connect(&sock);
    // Split the frame across two writes: the decoder must reassemble it.
    let discover = dhcp(DhcpMessageType::Discover, None);
    s.write_all(&(discover.len() as u32).to_be_bytes())
        .expect("len");
    s.write_all(&discover[..10]).expect("part 1");
    std::thread::sleep(Duration::from_millis(50));
    s.write_all(&discover[10..]).expect("part 2");
    let offer = parse_dhcp(&recv(&mut s).expect("offer frame")).expect("DHCP offer");
    assert_eq!(offer.0, DhcpMessageType::Offer);
    assert_eq!(offer.1, GUEST);
    assert_eq!(offer.2, Some(GW));
    send(&mut s, &dhcp(DhcpMessageType::Request, Some(GUEST)));
    let ack = parse_dhcp(&recv(&mut s).expect("ack frame")).expect("DHCP ack");
    assert_eq!(ack.0, DhcpMessageType::Ack);
}

#[test]
fn test_stream_garbage_peer_is_dropped_and_next_peer_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("net.sock");
    let mut usernet = start(&sock);
    let mut bad = connect(&sock);
    bad.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3])
        .expect("garbage");
    let mut buf = [0u8; 1];
    let r = bad.read(&mut buf);
    assert!(
        matches!(r, Ok(0) | Err(_)),
        "bad peer not disconnected: {r:?}"
    );
    let mut good = connect(&sock);
    send(&mut good, &dhcp(DhcpMessageType::Discover, None));
    let offer = parse_dhcp(&recv(&mut good).expect("offer")).expect("DHCP offer");
    assert_eq!(offer.0, DhcpMessageType::Offer);
    assert!(matches!(usernet.0.try_wait(), Ok(None)), "usernet exited");
}

/// `net.sock` is 0600, and a connection from another uid (where the mode was widened by
/// hand) is closed at once instead of replacing QEMU as the network peer.
#[test]
fn test_stream_peer_of_another_user_is_refused_and_does_not_replace_the_peer() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let sock = dir.path().join("net.sock");
    let mut usernet = start(&sock);
    assert_eq!(
        std::fs::metadata(&sock).expect("stat").mode() & 0o777,
        0o600
    );
    let mut good = connect(&sock);
    send(&mut good, &dhcp(DhcpMessageType::Discover, None));
    let offer = parse_dhcp(&recv(&mut good).expect("offer")).expect("DHCP offer");
    assert_eq!(offer.0, DhcpMessageType::Offer);
    let Some(r) = sandbox::hostsock::connect_as_nobody(&sock, "x") else {
        return;
    };
    assert!(r.starts_with("connect-error: Permission denied"), "{r}");
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let r = sandbox::hostsock::connect_as_nobody(&sock, "x").expect("ran before");
    assert!(r == "eof" || r.starts_with("read-error"), "{r}");
    // The owner's peer is still the one served.
    send(&mut good, &dhcp(DhcpMessageType::Request, Some(GUEST)));
    let ack = parse_dhcp(&recv(&mut good).expect("ack after the refused peer")).expect("DHCP ack");
    assert_eq!(ack.0, DhcpMessageType::Ack);
    assert!(matches!(usernet.0.try_wait(), Ok(None)), "usernet exited");
}
