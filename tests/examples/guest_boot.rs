//! Boot-time benchmark of the vmctl guest under the qemu engine: boots the guest on a
//! fresh data disk, then again on the same disk, and prints the agent's phases (kernel,
//! agent, containerd, dockerd; ms since the guest kernel started) side by side, plus
//! the host-side time from QEMU start to the first `docker version` answer.
//! `VMCTL_BENCH_OTHER_KERNEL=PATH` boots a second kernel (e.g. an older build) in the same
//! run, interleaved round by round with the current one; `VMCTL_BENCH_ROUNDS` (default 3)
//! sets the rounds; every cell is the median of its rounds.
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

fn median(mut v: Vec<u128>) -> u128 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn main() {
    let Some(assets) = assets_or_skip() else {
        return;
    };
    if !have("docker") {
        eprintln!("skipped: the docker CLI is not installed");
        return;
    }
    let rounds: usize = std::env::var("VMCTL_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(3);
    let mut kernels = vec![("current", assets.clone())];
    if let Ok(other) = std::env::var("VMCTL_BENCH_OTHER_KERNEL") {
        let mut a = assets.clone();
        a.kernel = other.into();
        kernels.push(("other", a));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // (kernel, run label) -> every round's Run
    let mut all: Vec<(String, Vec<Run>)> = Vec::new();
    for round in 0..rounds {
        for (name, a) in &kernels {
            eprintln!(
                "round {}/{rounds}: {name} kernel {}",
                round + 1,
                a.kernel.display()
            );
            let disk = dir.path().join("data.img");
            let _ = std::fs::remove_file(&disk);
            vmm::engine::qemu::ensure_data_disk(&disk, 8 << 30).expect("disk");
            for run in [
                boot(a, &disk, dir.path(), "first-boot"),
                boot(a, &disk, dir.path(), "second-boot"),
            ] {
                let key = format!("{name} {}", run.label);
                match all.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, v)) => v.push(run),
                    None => all.push((key, vec![run])),
                }
            }
        }
    }
    let accel = vmm::engine::qemu::accel::choose();
    println!(
        "vmctl guest boot under the qemu engine ({}; {}); median of {rounds} round(s)",
        accel.accel.as_str(),
        accel.reason
    );
    for (name, a) in &kernels {
        let size = std::fs::metadata(&a.kernel).map(|m| m.len()).unwrap_or(0);
        println!("{name} kernel: {} ({size} bytes)", a.kernel.display());
    }
    print!("{:<34}", "phase (ms since kernel start)");
    for (k, _) in &all {
        print!("{:>22}", k);
    }
    println!();
    let names: Vec<String> = all[0].1[0].phases.iter().map(|p| p.0.clone()).collect();
    for name in &names {
        print!("{:<34}", format!("{name} done"));
        for (_, runs) in &all {
            let at: Vec<u128> = runs
                .iter()
                .filter_map(|r| {
                    r.phases
                        .iter()
                        .find(|p| &p.0 == name)
                        .map(|p| u128::from(p.1))
                })
                .collect();
            let cell = if at.is_empty() {
                "-".to_string()
            } else {
                median(at).to_string()
            };
            print!("{cell:>22}");
        }
        println!();
    }
    print!("{:<34}", "host: QEMU start → dockerd ready");
    for (_, runs) in &all {
        print!(
            "{:>22}",
            median(runs.iter().map(|r| r.ready_host_ms).collect())
        );
    }
    println!();
    print!("{:<34}", "host: QEMU start → docker version");
    for (_, runs) in &all {
        print!(
            "{:>22}",
            median(runs.iter().map(|r| r.version_host_ms).collect())
        );
    }
    println!();
}
