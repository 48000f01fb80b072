//! The guest agent's control server, run on the host in `--serve-unix` mode (no PID-1
//! duties): handshake, version refusal, health, exec with stdin/stdout/stderr and exit
//! codes, signals, malformed frames, and shutdown. The same server code answers over
//! vsock/TCP in the guest (covered by the qemu test).

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use guest_agent::protocol::{self, Bytes, ExecRequest, FrameReader, Request, Response};
use vmctl_tests::{build_agent, skip};

struct Agent {
    child: Child,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(sock: &Path) -> Option<Agent> {
    if !Path::new("/usr/lib/x86_64-linux-musl").exists() && cfg!(not(target_arch = "x86_64")) {
        skip("the musl agent runs only on x86_64 hosts");
        return None;
    }
    let bin = build_agent().expect("build agent");
    let child = Command::new(bin)
        .arg("--serve-unix")
        .arg(sock)
        .spawn()
        .expect("spawn agent");
    let agent = Agent { child };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "agent did not create {}",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(agent)
}

fn connect(sock: &Path) -> (FrameReader<UnixStream>, UnixStream) {
    let s = UnixStream::connect(sock).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let w = s.try_clone().expect("clone");
    (FrameReader::new(s), w)
}

fn session(sock: &Path) -> (FrameReader<UnixStream>, UnixStream) {
    let (mut r, mut w) = connect(sock);
    let agent = protocol::handshake(&mut r, &mut w).expect("handshake");
    assert!(agent.starts_with("vmctl-guest-agent "), "{agent}");
    (r, w)
}

fn exec(sock: &Path, argv: &[&str], stdin: Option<&[u8]>) -> (Vec<u8>, Vec<u8>, Response) {
    let (mut r, mut w) = session(sock);
    let req = ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec![("V".into(), "x".into())],
        cwd: Some("/".into()),
        tty: None,
    };
    protocol::write_frame(&mut w, &Request::Exec(req)).expect("send");
    match r.expect::<Response>().expect("started") {
        Response::Started { pid } => assert!(pid > 1),
        other => return (vec![], vec![], other),
    }
    if let Some(data) = stdin {
        protocol::write_frame(
            &mut w,
            &Request::Stdin {
                data: Bytes(data.to_vec()),
            },
        )
        .expect("stdin");
        protocol::write_frame(&mut w, &Request::CloseStdin).expect("close");
    }
    let (mut out, mut err) = (Vec::new(), Vec::new());
    loop {
        match r.expect::<Response>().expect("frame") {
            Response::Stdout { data } => out.extend(data.0),
            Response::Stderr { data } => err.extend(data.0),
            done @ Response::Exited { .. } => return (out, err, done),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn test_agent_control_protocol_over_unix_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("agent.sock");
    let Some(mut agent) = start(&sock) else {
        return;
    };

    // Health outside a VM: dockerd not ready, no boot phases.
    let (mut r, mut w) = session(&sock);
    protocol::write_frame(&mut w, &Request::Health).expect("send");
    match r.expect::<Response>().expect("health") {
        Response::Health(h) => assert!(!h.docker_ready && h.phases.is_empty()),
        other => panic!("{other:?}"),
    }
    // A malformed frame is answered with an error and the connection stays usable.
    std::io::Write::write_all(&mut w, b"{\"type\":\"launch_missiles\"}\n").expect("send");
    assert!(matches!(
        r.expect::<Response>().expect("error"),
        Response::Error { .. }
    ));
    // Host-only requests are refused outside PID 1.
    protocol::write_frame(&mut w, &Request::SetClock { unix_nanos: 0 }).expect("send");
    match r.expect::<Response>().expect("refusal") {
        Response::Error { message } => assert!(message.contains("not PID 1"), "{message}"),
        other => panic!("{other:?}"),
    }
    drop((r, w));

    // Exec: stdin to stdout, stderr, env, exit code.
    let (out, err, done) = exec(
        &sock,
        &["sh", "-c", "cat; echo \"$V\" >&2; exit 3"],
        Some(b"piped\0bytes"),
    );
    assert_eq!(out, b"piped\0bytes");
    assert_eq!(err, b"x\n");
    assert_eq!(
        done,
        Response::Exited {
            code: Some(3),
            signal: None
        }
    );
    // Large output is chunked and arrives whole.
    let (out, _, done) = exec(&sock, &["head", "-c", "300000", "/dev/zero"], None);
    assert_eq!(out.len(), 300_000);
    assert_eq!(
        done,
        Response::Exited {
            code: Some(0),
            signal: None
        }
    );
    // A command that does not exist is an error, not a hang.
    let (_, _, done) = exec(&sock, &["/nonexistent/cmd"], None);
    assert!(
        matches!(done, Response::Error { ref message } if message.contains("cannot start")),
        "{done:?}"
    );

    // Signals reach the child.
    let (mut r, mut w) = session(&sock);
    let req = ExecRequest {
        argv: vec!["sleep".into(), "30".into()],
        env: vec![],
        cwd: None,
        tty: None,
    };
    protocol::write_frame(&mut w, &Request::Exec(req)).expect("send");
    assert!(matches!(
        r.expect::<Response>().expect("started"),
        Response::Started { .. }
    ));
    protocol::write_frame(&mut w, &Request::Signal { signal: 15 }).expect("signal");
    assert_eq!(
        r.expect::<Response>().expect("exit"),
        Response::Exited {
            code: None,
            signal: Some(15)
        }
    );

    // Port events: a socket that starts listening on the (host's) network stack is
    // reported, and reported again when it closes.
    let (mut r, mut w) = session(&sock);
    protocol::write_frame(&mut w, &Request::WatchPorts).expect("send");
    std::thread::sleep(Duration::from_millis(300));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let wait_event = |r: &mut FrameReader<UnixStream>, listening: bool| loop {
        match r.expect::<Response>().expect("port event") {
            Response::Port(ev) if ev.port == port && ev.listening == listening => {
                assert_eq!(ev.addr, "127.0.0.1");
                return;
            }
            Response::Port(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    wait_event(&mut r, true);
    drop(listener);
    wait_event(&mut r, false);
    drop((r, w));

    // Another protocol version is refused.
    let (mut r, mut w) = connect(&sock);
    protocol::write_frame(&mut w, &Request::Hello { version: 99 }).expect("send");
    assert!(matches!(
        r.expect::<Response>().expect("refusal"),
        Response::Error { .. }
    ));

    // Shutdown ends the agent.
    let (mut r, mut w) = session(&sock);
    protocol::write_frame(&mut w, &Request::Shutdown { reboot: false }).expect("send");
    assert_eq!(r.expect::<Response>().expect("ok"), Response::Ok);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(st)) = agent.child.try_wait() {
            assert!(st.success());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "agent did not exit after shutdown"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
