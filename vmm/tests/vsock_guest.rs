//! The in-process virtio-vsock device on the real /dev/kvm, driven by the test guest's
//! `vsock` mode: a host-initiated connection through the hybrid socket (`CONNECT`/`OK`), a
//! refused one, a guest-initiated connection to `<socket>_P`, and RST when nothing listens.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::vm::run_command;
use common::{guest_elf, require_kvm, run_seed, VmSpec};

const HOST_PORT: u32 = 5000;
const GUEST_LISTEN: u32 = 6000;
const GUEST_CLOSED: u32 = 6001;

/// Connects to the hybrid socket (it appears once the VMM has started) and sends CONNECT.
fn hybrid_connect(uds: &Path, port: u32, deadline: Instant) -> UnixStream {
    loop {
        match UnixStream::connect(uds) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(60)))
                    .expect("read timeout");
                s.write_all(format!("CONNECT {port}\n").as_bytes())
                    .expect("write CONNECT");
                return s;
            }
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "no vsock socket at {}: {e}",
                    uds.display()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Reads one `\n`-terminated line byte by byte (nothing after it is consumed).
fn read_line(s: &mut UnixStream) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        if s.read(&mut b)? == 0 {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        if b[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        line.push(b[0]);
    }
}

#[test]
fn test_vsock_guest_streams_both_ways_and_rst_when_nothing_listens() {
    if !require_kvm() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let uds = dir.path().join("vsock.sock");
    let token = format!("t{:x}", run_seed());

    // The host service the guest connects to: echo everything, report what came.
    let listener =
        UnixListener::bind(dir.path().join(format!("vsock.sock_{HOST_PORT}"))).expect("bind");
    let echo = std::thread::spawn(move || -> Vec<u8> {
        let (mut s, _) = listener.accept().expect("accept the guest's connection");
        s.set_read_timeout(Some(Duration::from_secs(90))).ok();
        let mut all = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return all,
                Ok(n) => {
                    all.extend_from_slice(&buf[..n]);
                    if s.write_all(&buf[..n]).is_err() {
                        return all;
                    }
                }
            }
        }
    });

    let mut spec = VmSpec::guest(
        &guest_elf(),
        &format!("vsock vsock_port={HOST_PORT} vsock_listen={GUEST_LISTEN} vsock_token={token}"),
    );
    spec.timeout = Duration::from_secs(120);
    let mut args = spec.args();
    args.extend(["--vsock".into(), format!("3,{}", uds.display())]);
    let timeout = spec.timeout;
    let vm = std::thread::spawn(move || {
        run_command(Command::new(common::vmm_bin()).args(args), timeout)
    });

    let deadline = Instant::now() + Duration::from_secs(60);
    // A port the guest does not listen on: the guest answers RST, the client is closed
    // without an OK line.
    let mut refused = hybrid_connect(&uds, GUEST_CLOSED, deadline);
    let line = read_line(&mut refused);
    assert!(
        matches!(&line, Ok(l) if l.is_empty()) || line.is_err(),
        "refused connection got {line:?}"
    );
    // The guest's listening port: OK <host port>, then an echo.
    let mut client = hybrid_connect(&uds, GUEST_LISTEN, deadline);
    let ok = read_line(&mut client).expect("read OK line");
    let local: u32 = ok
        .strip_prefix("OK ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("expected `OK <port>`, got {ok:?}"));
    assert!(local >= 1 << 30, "host-side port {local}");
    // The VMM serving this connection, started by root (as CI does), kept no capability:
    // it has no virtio-fs share, so not even the file ones (bounding set included).
    let status = peer_status(&client).expect("the vmm's /proc/PID/status");
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        for key in ["CapEff:", "CapPrm:", "CapBnd:"] {
            let v = status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(str::trim);
            assert_eq!(v, Some("0000000000000000"), "vmm {key} {status}");
        }
    }
    let msg = format!("host-hello {token}");
    client.write_all(msg.as_bytes()).expect("send to the guest");
    let mut echo_back = vec![0u8; msg.len()];
    client
        .read_exact(&mut echo_back)
        .expect("read the guest's echo");
    assert_eq!(String::from_utf8_lossy(&echo_back), msg);
    drop(client);

    let run = vm.join().expect("vm thread");
    let from_guest = echo.join().expect("echo thread");
    run.assert_guest_passed();
    assert_eq!(run.ok("vsock.init").get("cid"), "3");
    let acc = run.ok("vsock.accept");
    assert_eq!(acc.get("echoed"), msg.len().to_string(), "{}", run.dump());
    assert_eq!(acc.get("refused"), "1", "{}", run.dump());
    run.ok("vsock.connect");
    assert_eq!(
        run.ok("vsock.refused").get("port"),
        (HOST_PORT + 1).to_string()
    );
    assert_eq!(
        String::from_utf8_lossy(&from_guest),
        format!("guest-hello {token}"),
        "{}",
        run.dump()
    );
}

/// `/proc/PID/status` of the process at the other end of a unix socket (SO_PEERCRED).
fn peer_status(s: &std::os::unix::net::UnixStream) -> Option<String> {
    use std::os::fd::AsFd;
    let cred = vmm::hostsock::peer_cred(s.as_fd()).ok()?;
    if cred.pid <= 0 {
        return None;
    }
    std::fs::read_to_string(format!("/proc/{}/status", cred.pid)).ok()
}
