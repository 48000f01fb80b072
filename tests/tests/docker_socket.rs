//! The forwarded Docker socket (`<instance>/docker.sock` → vsock 2375 → dockerd) under the
//! qemu engine, driven by the real `docker` CLI: version, run, an interactive `run -it`
//! through a pseudo-terminal, exec, `logs -f` while the container writes, a build with a
//! 10 MB context, a published port answering on 127.0.0.1 within 1 s, 200 concurrent API
//! calls, a client killed mid-stream, and a guest reboot that drops and restores the socket
//! while the supervisor stays up.
// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use vmctl_tests::cli_env::{busybox_tar, free_port, http_get_localhost, unix_http_get, Env, STEP};
use vmctl_tests::proc::wait_with_timeout;
use vmctl_tests::{assets_or_skip, have, skip};

#[test]
fn test_docker_socket_cli_scenarios_through_vsock() {
    if !vmctl_tests::is_root() {
        skip("needs root (this scenario is written for root; tests/tests/user_start.rs runs the main job as an ordinary user)");
        return;
    }
    for tool in ["docker", "script"] {
        if !have(tool) {
            skip(&format!("{tool} is not installed"));
            return;
        }
    }
    let Some(_assets) = assets_or_skip() else {
        return;
    };
    let env = Env::new("sock");
    env.vmctl_ok(&["config", "set", "share_home", "false"], STEP);
    env.start(&["--cpus", "2", "--memory", "2GiB", "--disk-size", "4GiB"]);
    let sock = env.docker_sock();

    let v = env.docker_ok(&["version", "--format", "{{.Server.Version}}"]);
    assert!(!v.trim().is_empty(), "server version: {v:?}");
    let dir = tempfile::tempdir().unwrap();
    env.docker_ok(&[
        "import",
        &busybox_tar(dir.path()).display().to_string(),
        "sock-bb",
    ]);
    assert_eq!(
        env.docker_ok(&["run", "--rm", "sock-bb", "echo", "hi"])
            .trim(),
        "hi"
    );

    // Interactive: a pseudo-terminal (script(1)) around `docker run -it`; what we type is
    // echoed back and the shell's exit code comes back through the hijacked connection.
    let cmd =
        "docker --context vmctl-sock run -it --rm sock-bb sh -c 'read x; echo got:$x; exit 7'";
    let mut child = std::process::Command::new("script")
        .args(["-qec", cmd, "/dev/null"])
        .env("DOCKER_CONFIG", &env.docker_config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"typed-text\r")
        .unwrap();
    let out = wait_with_timeout(child, STEP);
    assert_eq!(
        out.0,
        Some(7),
        "exit code of the interactive container: {out:?}"
    );
    assert!(out.1.contains("got:typed-text"), "{out:?}");

    // exec into a running container.
    env.docker_ok(&["run", "-d", "--name", "sleeper", "sock-bb", "sleep", "600"]);
    assert_eq!(
        env.docker_ok(&["exec", "sleeper", "echo", "inside"]).trim(),
        "inside"
    );

    // logs -f streams while the container writes.
    let id = env.docker_ok(&[
        "run",
        "-d",
        "sock-bb",
        "sh",
        "-c",
        "for i in 1 2 3 4 5 6; do echo line$i; sleep 1; done",
    ]);
    let mut follow = env
        .docker_cmd()
        .args(["logs", "-f", id.trim()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert_eq!(first, "line1");
    let running = env.docker_ok(&["inspect", "-f", "{{.State.Running}}", id.trim()]);
    assert_eq!(
        running.trim(),
        "true",
        "the first line arrived while the container still ran"
    );
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert_eq!(rest.last().map(String::as_str), Some("line6"), "{rest:?}");
    let _ = follow.wait();

    // build with a 10 MB context.
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let big: Vec<u8> = (0..10u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(ctx.join("big.bin"), &big).unwrap();
    std::fs::copy("/bin/busybox", ctx.join("busybox")).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /busybox\nCOPY big.bin /big.bin\n",
    )
    .unwrap();
    env.docker_ok(&["build", "-t", "sock-ctx", &ctx.display().to_string()]);
    let size = env.docker_ok(&[
        "run",
        "--rm",
        "--entrypoint",
        "/busybox",
        "sock-ctx",
        "wc",
        "-c",
        "/big.bin",
    ]);
    assert!(
        size.trim().starts_with(&(10u32 << 20).to_string()),
        "{size}"
    );

    // A published port answers on host 127.0.0.1 within 1 s of `docker run` returning.
    let port = free_port();
    env.docker_ok(&[
        "run",
        "-d",
        "-p",
        &format!("{port}:80"),
        "sock-bb",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    let t = Instant::now();
    http_get_localhost(port, Duration::from_secs(1)).unwrap_or_else(|e| {
        panic!(
            "port {port} not forwarded within 1 s: {e}\n{}",
            env.log_tail()
        )
    });
    eprintln!(
        "published port forwarded after {:.0} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );

    // A published UDP port: a static echo server in a container, two host clients that each
    // get their own answers, and the host socket gone once the container is.
    let udp_dir = dir.path().join("udp");
    std::fs::create_dir_all(&udp_dir).unwrap();
    vmctl_tests::build_static_program("udp_echo", &udp_dir).unwrap();
    std::fs::write(
        udp_dir.join("Dockerfile"),
        "FROM sock-bb\nCOPY udp-echo /udp-echo\n",
    )
    .unwrap();
    env.docker_ok(&["build", "-t", "sock-udp", &udp_dir.display().to_string()]);
    let uport = free_port();
    let udp_id = env.docker_ok(&[
        "run",
        "-d",
        "-p",
        &format!("{uport}:7/udp"),
        "sock-udp",
        "/udp-echo",
        "7",
    ]);
    let t = Instant::now();
    let a = udp_ask(uport, b"from-a", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("udp port {uport}: {e}\n{}", env.log_tail()));
    assert_eq!(a, b"echo:from-a");
    eprintln!(
        "published udp port answered after {:.0} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    let b = udp_ask(uport, b"from-b", Duration::from_secs(2)).unwrap();
    assert_eq!(b, b"echo:from-b");
    let status = env.vmctl_ok(&["status", "--json"], STEP);
    assert!(status.contains("\"udp\""), "{status}");
    env.docker_ok(&["rm", "-f", udp_id.trim()]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::UdpSocket::bind(("127.0.0.1", uport)).is_err() {
        assert!(
            Instant::now() < deadline,
            "host udp port {uport} still held 5 s after the container went"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // 200 concurrent API calls through the socket, and a few real CLI calls beside them.
    let handles: Vec<_> = (0..200)
        .map(|_| {
            let sock = sock.clone();
            std::thread::spawn(move || unix_http_get(&sock, "/version"))
        })
        .collect();
    let cli: Vec<_> = (0..10)
        .map(|_| {
            env.docker_cmd()
                .args(["version", "--format", "{{.Server.Version}}"])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for h in handles {
        let r = h.join().unwrap().unwrap();
        assert!(
            r.starts_with("HTTP/1.0 200") || r.starts_with("HTTP/1.1 200"),
            "{r}"
        );
        assert!(r.contains("ApiVersion"), "{r}");
    }
    for c in cli {
        assert!(c.wait_with_output().unwrap().status.success());
    }

    // A client killed mid-stream leaves the bridge healthy.
    let mut events = env
        .docker_cmd()
        .args(["events"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    events.kill().unwrap();
    let _ = events.wait();
    let mut logs = env
        .docker_cmd()
        .args(["logs", "-f", "sleeper"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    logs.kill().unwrap();
    let _ = logs.wait();
    assert_eq!(
        env.docker_ok(&["run", "--rm", "sock-bb", "echo", "still"])
            .trim(),
        "still"
    );

    // The guest reboots: the socket stops answering, then answers again; the supervisor lives.
    let supervisor = env.supervisor_pid().expect("supervisor pid");
    let vsock = env.instance_dir().join("vsock.sock");
    let mut agent = vmctl::agent::Agent::connect(&vsock, Duration::from_secs(5)).unwrap();
    agent.shutdown(true).unwrap();
    let t = Instant::now();
    let mut saw_down = false;
    loop {
        let up = unix_http_get(&sock, "/_ping")
            .map(|r| r.ends_with("OK"))
            .unwrap_or(false);
        saw_down |= !up;
        if saw_down && up {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "Docker did not come back after the guest rebooted\n{}",
            env.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        vmctl::instance::process_alive(supervisor),
        "the supervisor survived the guest reboot"
    );
    assert_eq!(env.supervisor_pid(), Some(supervisor));
    assert_eq!(
        env.docker_ok(&["run", "--rm", "sock-bb", "echo", "back"])
            .trim(),
        "back"
    );
    env.vmctl_ok(&["stop"], STEP);
}

/// Waits for a child, killing it after `timeout`; returns (exit code, stdout, stderr).
/// Sends `msg` from a fresh client socket to host 127.0.0.1:`port` every 200 ms until a
/// datagram comes back or `within` passes.
fn udp_ask(port: u16, msg: &[u8], within: Duration) -> Result<Vec<u8>, String> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        // Refused sends (the host port is not open yet) are retried like lost datagrams.
        let _ = sock.send_to(msg, ("127.0.0.1", port));
        if let Ok(n) = sock.recv(&mut buf) {
            return Ok(buf[..n].to_vec());
        }
    }
    Err(format!("no answer within {within:?}"))
}
