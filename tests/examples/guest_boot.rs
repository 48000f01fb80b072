//! Boot-time benchmark of the vmctl guest under the qemu engine: boots the guest on a
//! fresh data disk, then again on the same disk, and prints the agent's phases (kernel,
//! agent, containerd, dockerd; ms since the guest kernel started) side by side, plus
//! the host-side time from QEMU start to the first `docker version` answer.
//! Run through bench/guest-boot.sh.

use std::time::{Duration, Instant};

use guest_agent::protocol::{Request, Response};
use vmctl_tests::guest::Guest;
use vmctl_tests::{assets_or_skip, have};

struct Run {
    label: &'static str,
    phases: Vec<(String, u64)>,
    ready_host_ms: u128,
    version_host_ms: u128,
}

fn boot(
    assets: &vmctl_tests::Assets,
    disk: &std::path::Path,
    dir: &std::path::Path,
    label: &'static str,
) -> Run {
    let t0 = Instant::now();
    let mut g = Guest::boot(assets, disk, dir, label);
    g.wait_docker_ready(Duration::from_secs(300));
    let ready_host_ms = t0.elapsed().as_millis();
    let v = g.docker(
        &["version", "--format", "{{.Server.Version}}"],
        Duration::from_secs(60),
    );
    assert!(v.ok(), "docker version: {v:?}");
    let version_host_ms = t0.elapsed().as_millis();
    let phases = match g.control().call(&Request::Health) {
        Response::Health(h) => h.phases.into_iter().map(|p| (p.name, p.at_ms)).collect(),
        other => panic!("health: {other:?}"),
    };
    let mut c = g.control();
    let _ = c.call(&Request::Shutdown { reboot: false });
    let _ = g.vm.wait_exit(Duration::from_secs(60));
    Run {
        label,
        phases,
        ready_host_ms,
        version_host_ms,
    }
}

fn main() {
    let Some(assets) = assets_or_skip() else {
        return;
    };
    if !have("docker") {
        eprintln!("skipped: the docker CLI is not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("data.img");
    vmm::engine::qemu::ensure_data_disk(&disk, 8 << 30).expect("disk");
    let runs = [
        boot(&assets, &disk, dir.path(), "first-boot"),
        boot(&assets, &disk, dir.path(), "second-boot"),
    ];
    let accel = vmm::engine::qemu::accel::choose();
    println!(
        "vmctl guest boot under the qemu engine ({}; {})",
        accel.accel.as_str(),
        accel.reason
    );
    print!("{:<34}", "phase (ms since kernel start)");
    for r in &runs {
        print!("{:>14}", r.label);
    }
    println!();
    let names: Vec<String> = runs[0].phases.iter().map(|p| p.0.clone()).collect();
    for name in &names {
        print!("{:<34}", format!("{name} done"));
        for r in &runs {
            let at = r.phases.iter().find(|p| &p.0 == name).map(|p| p.1);
            print!(
                "{:>14}",
                at.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
            );
        }
        println!();
    }
    print!("{:<34}", "host: QEMU start → dockerd ready");
    for r in &runs {
        print!("{:>14}", r.ready_host_ms);
    }
    println!();
    print!("{:<34}", "host: QEMU start → docker version");
    for r in &runs {
        print!("{:>14}", r.version_host_ms);
    }
    println!();
}
