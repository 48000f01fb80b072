//! The full guest under the qemu engine, driven by the host's real `docker` CLI:
//! `docker version`, `docker import` + `run`, a published busybox httpd, `docker build`
//! of a FROM scratch image, the control protocol (health, exec, shutdown), and Docker's
//! data surviving a guest power-off and a second boot on the same data disk.
//! One boot serves all checks of the first part to keep the suite fast under TCG.

use std::path::Path;

use std::time::{Duration, Instant};

use guest_agent::protocol::{Request, Response};
use vmctl_tests::guest::Guest;
use vmctl_tests::{assets_or_skip, have, skip};

const MARKER: &str = "hello from a vmctl container";

/// A busybox root tarball from Debian's busybox-static, with an httpd document root.
fn busybox_tarball(dir: &Path) -> std::path::PathBuf {
    vmctl_tests::busybox_rootfs_tar(
        dir,
        &["sh", "echo", "cat", "httpd", "ls", "sleep", "uname"],
        &["www", "tmp", "data"],
        &[("www/index.html", MARKER)],
    )
}

#[test]
fn test_qemu_guest_docker_cli_scenarios_and_data_survive_reboot() {
    let Some(assets) = assets_or_skip() else {
        return;
    };
    if !have("docker") {
        skip("the docker CLI is not installed on the host");
        return;
    }
    if !Path::new("/bin/busybox").exists() {
        skip("/bin/busybox missing (Debian package busybox-static)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("data.img");
    vmm::engine::qemu::ensure_data_disk(&disk, 8 << 30).expect("data disk");
    let tar = busybox_tarball(dir.path());
    let long = Duration::from_secs(120);

    // Boot 1: fresh data disk, formatted by the agent.
    let t0 = Instant::now();
    let mut g = Guest::boot(&assets, &disk, dir.path(), "vmctl-boot1");
    let ready = g.wait_docker_ready(Duration::from_secs(240));
    eprintln!(
        "boot 1: dockerd ready {:.1}s after QEMU start",
        ready.as_secs_f64()
    );
    assert!(
        g.vm.console().contains("formatting data disk"),
        "first boot must format the data disk"
    );

    let v = g.docker_ok(
        &["version", "--format", "{{.Server.Version}} {{.Server.Os}}"],
        long,
    );
    assert!(
        v.trim().ends_with("linux") && v.starts_with("20.10"),
        "server version: {v}"
    );

    g.docker_ok(
        &["import", &tar.display().to_string(), "vmctl-busybox"],
        long,
    );
    let hi = g.docker_ok(&["run", "--rm", "vmctl-busybox", "echo", "hi"], long);
    assert_eq!(hi.trim(), "hi");

    // Watch the guest's listening ports while publishing one (for the host's forwarder).
    let mut watch = g.control();
    watch.send(&Request::WatchPorts);
    let id = g.docker_ok(
        &[
            "run",
            "-d",
            "-p",
            "8080:80",
            "vmctl-busybox",
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/www",
        ],
        long,
    );
    assert!(!id.trim().is_empty());
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        match g.http_get("/index.html") {
            Ok(b) => break b,
            Err(e) if Instant::now() > deadline => panic!("fetch from the published httpd: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    };
    assert_eq!(body, MARKER);
    loop {
        match watch.recv() {
            Response::Port(ev) if ev.port == 8080 && ev.listening => break,
            Response::Port(_) => {}
            other => panic!("port watch: {other:?}"),
        }
    }
    drop(watch);
    g.docker_ok(&["rm", "-f", id.trim()], long);

    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).expect("mkdir ctx");
    std::fs::copy("/bin/busybox", ctx.join("busybox")).expect("copy busybox");
    std::fs::write(ctx.join("msg.txt"), "built from scratch\n").expect("write");
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /busybox\nCOPY msg.txt /msg.txt\nCMD [\"/busybox\", \"cat\", \"/msg.txt\"]\n",
    )
    .expect("write Dockerfile");
    g.docker_ok(
        &["build", "-t", "vmctl-scratch", &ctx.display().to_string()],
        long,
    );
    let built = g.docker_ok(&["run", "--rm", "vmctl-scratch"], long);
    assert_eq!(built.trim(), "built from scratch");

    g.docker_ok(
        &[
            "run",
            "--rm",
            "-v",
            "vmctl-vol:/data",
            "vmctl-busybox",
            "sh",
            "-c",
            "echo persisted > /data/f",
        ],
        long,
    );

    // The control protocol, in the real guest.
    let mut c = g.control();
    assert!(c.agent.starts_with("vmctl-guest-agent"), "{}", c.agent);
    match c.call(&Request::Health) {
        Response::Health(h) => {
            assert!(h.docker_ready);
            let names: Vec<&str> = h.phases.iter().map(|p| p.name.as_str()).collect();
            assert_eq!(names, ["kernel", "agent", "containerd", "dockerd"]);
            let mut prev = 0;
            for p in &h.phases {
                eprintln!(
                    "phase {:<10} done at {:>6} ms (+{} ms)",
                    p.name,
                    p.at_ms,
                    p.at_ms - prev
                );
                prev = p.at_ms;
            }
        }
        other => panic!("health: {other:?}"),
    }
    // Each exec session owns its connection (the agent closes it after `exited`).
    let (out, _, code) = g.control().exec(&["uname", "-r"], b"");
    assert_eq!(code, Some(0));
    assert!(out.contains("vmctl"), "guest kernel release: {out}");
    let (out, _, code) = g
        .control()
        .exec(&["sh", "-c", "cat; exit 7"], b"stdin reaches the guest");
    assert_eq!((out.as_str(), code), ("stdin reaches the guest", Some(7)));
    let (mounts, _, _) = g.control().exec(&["cat", "/proc/mounts"], b"");
    let docker_fs = mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&"/var/lib/docker"))
            .then(|| f.get(2).copied().unwrap_or_default().to_string())
    });
    assert_eq!(
        docker_fs.as_deref(),
        Some("ext4"),
        "Docker's state must live on the data disk:\n{mounts}"
    );

    // Clock sync: set the guest clock an hour ahead, read it back, set it right again.
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    let ahead = (now() + 3600) * 1_000_000_000;
    assert_eq!(
        g.control().call(&Request::SetClock { unix_nanos: ahead }),
        Response::Ok
    );
    let (out, _, _) = g.control().exec(&["date", "+%s"], b"");
    let guest: u64 = out.trim().parse().expect("date +%s");
    assert!(
        guest.abs_diff(now() + 3600) < 30,
        "guest clock {guest}, host {}",
        now()
    );
    let right = now() * 1_000_000_000;
    assert_eq!(
        g.control().call(&Request::SetClock { unix_nanos: right }),
        Response::Ok
    );

    // Orderly power-off: QEMU exits by itself.
    let mut c = g.control();
    assert_eq!(c.call(&Request::Shutdown { reboot: false }), Response::Ok);
    let st = g.vm.wait_exit(Duration::from_secs(90));
    assert!(st.is_some(), "guest did not power off\n{}", g.vm.console());
    assert!(
        g.vm.console().contains("bye"),
        "agent did not finish its shutdown"
    );
    drop(g);

    // Boot 2: same data disk; images, volumes and files are still there.
    let mut g = Guest::boot(&assets, &disk, dir.path(), "vmctl-boot2");
    let ready = g.wait_docker_ready(Duration::from_secs(240));
    eprintln!(
        "boot 2: dockerd ready {:.1}s after QEMU start",
        ready.as_secs_f64()
    );
    assert!(
        !g.vm.console().contains("formatting data disk"),
        "second boot must reuse the data disk"
    );
    let images = g.docker_ok(&["images", "--format", "{{.Repository}}"], long);
    assert!(
        images.contains("vmctl-busybox") && images.contains("vmctl-scratch"),
        "{images}"
    );
    let f = g.docker_ok(
        &[
            "run",
            "--rm",
            "-v",
            "vmctl-vol:/data",
            "vmctl-busybox",
            "cat",
            "/data/f",
        ],
        long,
    );
    assert_eq!(f.trim(), "persisted");
    eprintln!("whole scenario: {:.1}s", t0.elapsed().as_secs_f64());
}
