//! `vmctl` end to end under the qemu engine: a fresh instance; `vmctl start`; through the
//! instance's Docker context, a container that reads a bind-mounted host folder (virtio-fs)
//! and fetches from a host HTTP server through `host.docker.internal` (usernet); a published
//! port on host 127.0.0.1 (port forwarding); `vmctl exec`; `vmctl stop` and a second start
//! that still has the image and a named volume; the supervisor killed with SIGKILL and the
//! next start recovering with the data disk intact; `vmctl delete` leaving no trace.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use vmctl_tests::cli_env::{
    busybox_tar, free_port, host_http_server, http_get_localhost, Env, STEP,
};
use vmctl_tests::proc::wait_with_timeout;
use vmctl_tests::{assets_or_skip, have, skip};

/// Starts container `name` running the static inotify watcher on `path` (the share is at
/// /data) and waits until it watches.
fn start_watcher(env: &Env, name: &str, path: &str) {
    env.docker_ok(&[
        "run",
        "-d",
        "--name",
        name,
        "-v",
        "/mnt/share:/data",
        "e2e-busybox",
        "/data/inotify-watch",
        path,
    ]);
    let logs = || env.docker(&["logs", name], STEP).stdout;
    let t = Instant::now();
    while !logs().contains("WATCHING") {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{name} did not start: {}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn test_vmctl_start_docker_run_stop_restart_recover_delete() {
    if !vmctl_tests::is_root() {
        skip("needs root (this scenario is written for root; tests/tests/user_start.rs runs the main job as an ordinary user)");
        return;
    }
    if !have("docker") {
        skip("the docker CLI is not installed");
        return;
    }
    let Some(_assets) = assets_or_skip() else {
        return;
    };
    let env = Env::new("e2e");
    let share = env.home.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    std::fs::write(share.join("hello.txt"), "file from the host").unwrap();
    let mount = format!("{}:/mnt/share", share.display());

    // Isolated from the machine's $HOME: share only the test folder.
    env.vmctl_ok(&["config", "set", "share_home", "false"], STEP);
    let took = env.start(&[
        "--cpus",
        "2",
        "--memory",
        "2GiB",
        "--disk-size",
        "4GiB",
        "--mount",
        &mount,
    ]);
    eprintln!("cold vmctl start: {:.1} s", took.as_secs_f64());

    let sock = env.instance_dir().join("docker.sock");
    let mode = std::fs::metadata(&sock)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777);
    assert_eq!(mode.ok(), Some(0o600), "docker.sock must be owner-only");

    // vmctl runs as root here: the processes that face the guest gave up root. QEMU, usernet
    // and the vsock backend run as `nobody`; fs-share stays uid 0 for root's files but holds
    // only file capabilities (no CAP_SYS_ADMIN, bit 21; no CAP_NET_RAW, bit 13), bounding
    // set included.
    let inst = env.instance_dir().display().to_string();
    let procs = vmctl_tests::proc::processes_mentioning(&inst);
    for want in ["usernet", "vmm-vsock-backend", "fs-share"] {
        assert!(
            procs.iter().any(|p| p.program == want),
            "no {want} process for {inst}: {procs:?}"
        );
    }
    assert!(
        procs.iter().any(|p| p.program.starts_with("qemu")),
        "{procs:?}"
    );
    for p in &procs {
        match p.program.as_str() {
            "usernet" | "vmm-vsock-backend" => {
                assert_eq!(p.ids("Uid:"), [65534; 4], "{} still root", p.program);
            }
            "fs-share" => {
                let (eff, bnd) = (p.caps("CapEff"), p.caps("CapBnd"));
                assert_eq!(eff & (1 << 21 | 1 << 13), 0, "fs-share CapEff {eff:x}");
                assert_eq!(bnd & (1 << 21 | 1 << 13), 0, "fs-share CapBnd {bnd:x}");
            }
            q if q.starts_with("qemu") => {
                assert_eq!(p.ids("Uid:"), [65534; 4], "QEMU still root");
            }
            _ => {}
        }
    }

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

    // Host file events: a container watching a file of the bind mount with inotify sees the
    // host's write (fs-share's inotify on the host, replayed in the guest by the agent).
    std::fs::write(share.join("watched.txt"), "v1").unwrap();
    vmctl_tests::build_static_program("inotify_watch", &share).unwrap();
    start_watcher(&env, "watcher", "/data/watched.txt");
    let logs = || env.docker(&["logs", "watcher"], STEP).stdout;
    assert!(
        !logs().contains("EVENT"),
        "an event before the write: {}",
        logs()
    );
    std::fs::write(share.join("watched.txt"), "v2 from the host").unwrap();
    let t = Instant::now();
    loop {
        let out = logs();
        if out.contains("EVENT") {
            eprintln!(
                "host write seen by inotify in a container within {:.2} s (docker logs polled): {}",
                t.elapsed().as_secs_f64(),
                out.trim()
            );
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no inotify event in the container for a host write\n{}",
            env.log_tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Bounded: a burst of 10k new host files (a `git checkout`) stalls nothing: `vmctl
    // exec` answers during the replay, and a later write still reaches the watcher.
    let burst = share.join("burst");
    std::fs::create_dir(&burst).unwrap();
    let t = Instant::now();
    for i in 0..10_000 {
        std::fs::write(burst.join(format!("f{i}")), "x").unwrap();
    }
    let wrote = t.elapsed();
    let t = Instant::now();
    env.vmctl_ok(&["exec", "--", "true"], STEP);
    let exec_took = t.elapsed();
    let before = logs().matches("EVENT").count();
    std::fs::write(share.join("watched.txt"), "v3 after the burst").unwrap();
    let t = Instant::now();
    while logs().matches("EVENT").count() <= before {
        assert!(
            t.elapsed() < Duration::from_secs(180),
            "no event for a write after a 10k-file burst\n{}",
            env.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "10k-file host burst written in {:.1} s; vmctl exec during the replay {:.2} s; \
         a later write reached the container's watcher after {:.1} s",
        wrote.as_secs_f64(),
        exec_took.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
    // A host delete cannot raise IN_DELETE in the guest; the directory's watchers get its
    // IN_ATTRIB instead, so a directory watcher rescans and sees the file gone.
    start_watcher(&env, "dirwatcher", "/data/burst");
    let dir_logs = || env.docker(&["logs", "dirwatcher"], STEP).stdout;
    std::fs::remove_file(burst.join("f0")).unwrap();
    let t = Instant::now();
    while !dir_logs().contains("EVENT") {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no event on the directory for a host delete\n{}",
            env.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "host delete seen by a directory watcher in a container within {:.2} s",
        t.elapsed().as_secs_f64()
    );
    env.docker_ok(&["rm", "-f", "watcher", "dirwatcher"]);

    // usernet: host.docker.internal reaches the host's loopback.
    let port = host_http_server("hello from the host");
    let url = format!("http://host.docker.internal:{port}/");
    let fetched = env.docker_ok(&["run", "--rm", "e2e-busybox", "wget", "-qO-", &url]);
    assert_eq!(fetched.trim(), "hello from the host");

    // A published port appears on host 127.0.0.1.
    let host_port = free_port();
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

    // The guest clock follows the host's: knocked 10 years back in the guest (as a wrong
    // clock after a host suspend would be), it is back on the host's within the push period,
    // then within 100 ms plus one `vmctl exec` round trip of it.
    env.vmctl_ok(&["exec", "--", "date", "-s", "@1500000000"], STEP);
    let host_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    };
    let t = Instant::now();
    let (off, window) = loop {
        let before = host_now();
        let out = env.vmctl_ok(&["exec", "--", "date", "+%s.%N"], STEP);
        let after = host_now();
        let guest: f64 = out.trim().parse().unwrap_or(0.0);
        if guest > before - 1.0 {
            break (
                if guest < before {
                    before - guest
                } else {
                    (guest - after).max(0.0)
                },
                after - before,
            );
        }
        assert!(
            t.elapsed() < vmctl::supervisor::clock::PERIOD + Duration::from_secs(10),
            "the guest clock was not set back to the host's: guest {guest}, host {before}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!(
        "guest clock back on the host's after {:.1} s; off by {:.3} s outside a {:.3} s exec window",
        t.elapsed().as_secs_f64(),
        off,
        window
    );
    assert!(off < 0.1, "guest clock off by {off:.3} s after the push");

    // `vmctl shell` from a terminal (script(1) provides one): a pseudo-terminal in the guest,
    // what is typed runs there, and the shell's exit code comes back.
    if have("script") {
        let line = format!(
            "{} --name {} shell",
            env.bin.join("vmctl").display(),
            env.name
        );
        let mut child = std::process::Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .env("VMCTL_HOME", env.home.path().join("instances"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_secs(2));
        std::io::Write::write_all(
            child.stdin.as_mut().unwrap(),
            b"tty; echo sum-$((2+3)); exit 4\r",
        )
        .unwrap();
        let (code, out, _) = wait_with_timeout(child, STEP);
        assert!(out.contains("/dev/pts/"), "guest terminal: {out:?}");
        assert!(out.contains("sum-5"), "{out:?}");
        assert_eq!(code, Some(4), "{out:?}");
    } else {
        skip("script(1) is not installed: vmctl shell on a terminal not tested");
    }

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

    let took = env.start(&[]);
    eprintln!("warm vmctl start: {:.1} s", took.as_secs_f64());
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
    env.start(&[]);
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
