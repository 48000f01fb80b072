//! The builtin engine with real Linux, in the nested-KVM test bed.
//!
//! This machine's `/dev/kvm` is PVM, which cannot boot an unmodified Linux kernel. So each test
//! starts an outer vmctl VM on the qemu engine with `--nested`: under TCG QEMU emulates AMD-V
//! with nested paging, and the guest kernel (ours, KVM built in) has a real KVM. The
//! checkout's programs, the guest kernel and the root image are shared into it read-only, and
//! inside it, through `vmctl exec`:
//! 1. `vmm` boots the project's kernel with a busybox initramfs to `/init` and exits on the
//!    guest's reboot (the Linux boot path of the builtin VMM) — runs in CI;
//! 2. `vmctl start --engine builtin` runs the full Docker VM (same kernel, root image and
//!    agent as the qemu engine); the guest's `docker` CLI drives it through the forwarded
//!    socket: `docker run` with a bind mount over virtio-fs, a published port reached from the
//!    outer machine, `vmctl exec`, stop, start again with the image and a named volume intact.
//!
//! Everything inside runs at TCG speed twice over; the tests print how long each step took.
//! Both are opt-in (`VMCTL_NESTED_BED=1`): QEMU's AMD-V emulation (7.2 and Debian 13's 10.0
//! alike) stalls inner guests. Booting the outer guest with `init_on_alloc=1` (the qemu engine
//! does under TCG) made 60-s inner runs with 256 MiB complete 6 of 6 in an outer VM that had
//! settled, but with 1.5 GiB or 2 vCPUs, or right after the outer VM's boot, they still stall.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmctl_tests::cli_env::{Env, STEP};
use vmctl_tests::{assets_or_skip, have, skip};

/// Where the outer VM sees what the test shares into it.
const BIN: &str = "/opt/vmctl/bin";
const KERNEL_DIR: &str = "/opt/vmctl/kernel";
const ROOTFS_DIR: &str = "/opt/vmctl/rootfs";
const SCRATCH: &str = "/mnt/scratch";
/// The inner instance lives on the outer VM's data disk (ext4), not on a share.
const INNER_HOME: &str = "/var/lib/docker/vmctl-inner";

/// Runs a shell command in the outer VM; returns (exit code, stdout+stderr).
fn outer_sh(env: &Env, script: &str, timeout: Duration) -> (Option<i32>, String) {
    let out = env.vmctl(&["exec", "--", "sh", "-c", script], timeout);
    (out.code, format!("{}{}", out.stdout, out.stderr))
}

/// Like [`outer_sh`], failing the test with the output (and the inner logs) on an error.
fn outer_ok(env: &Env, what: &str, script: &str, timeout: Duration) -> String {
    let t = Instant::now();
    let (code, out) = outer_sh(env, script, timeout);
    if code != Some(0) {
        let (_, logs) = outer_sh(
            env,
            &format!(
                "for f in {INNER_HOME}/default/logs/*.log; do echo \"== $f\"; tail -n 40 \"$f\"; done"
            ),
            STEP,
        );
        panic!("{what} failed ({code:?}):\n{out}\n--- inner logs ---\n{logs}");
    }
    eprintln!("{what}: {:.1} s", t.elapsed().as_secs_f64());
    out
}

/// `vmctl` of the checkout as run inside the outer VM, on the inner instance.
fn inner_vmctl(kernel: &Path, rootfs: &Path, args: &str) -> String {
    format!(
        "VMCTL_HOME={INNER_HOME} VMCTL_KERNEL={KERNEL_DIR}/{} VMCTL_ROOTFS={ROOTFS_DIR}/{} {BIN}/vmctl {args}",
        file_name(kernel),
        file_name(rootfs)
    )
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

fn parent(p: &Path) -> PathBuf {
    p.parent().unwrap().to_path_buf()
}

/// The outer VM of the bed and what the tests need of it.
struct Bed {
    env: Env,
    scratch: PathBuf,
    assets: vmctl_tests::Assets,
}

/// Starts the outer VM (qemu engine, `--nested`), or says why it cannot run here.
fn outer_bed(name: &str) -> Option<Bed> {
    if !vmctl_tests::is_root() {
        skip("needs root (this scenario is written for root; tests/tests/user_start.rs runs the main job as an ordinary user)");
        return None;
    }
    let assets = assets_or_skip()?;
    let env = Env::new(name);
    let scratch = env.home.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    // The outer VM: qemu engine, a KVM of its own, room for the inner VM.
    env.vmctl_ok(&["config", "set", "share_home", "false"], STEP);
    let mounts = [
        format!("{}:{BIN}:ro", env.bin.display()),
        format!("{}:{KERNEL_DIR}:ro", parent(&assets.kernel).display()),
        format!("{}:{ROOTFS_DIR}:ro", parent(&assets.rootfs).display()),
        format!("{}:{SCRATCH}", scratch.display()),
    ];
    let mut args = vec![
        "--nested",
        "--cpus",
        "2",
        "--memory",
        "5GiB",
        "--disk-size",
        "16GiB",
    ];
    for m in &mounts {
        args.extend(["--mount", m]);
    }
    let took = env.start(&args);
    eprintln!(
        "outer vmctl start (qemu, TCG, --nested): {:.1} s",
        took.as_secs_f64()
    );
    // The outer guest has a real KVM.
    let kvm = outer_ok(
        &env,
        "outer /dev/kvm",
        "test -c /dev/kvm && grep -cw svm /proc/cpuinfo && dmesg | grep -i 'nested' || true",
        STEP,
    );
    assert!(
        !kvm.trim().starts_with('0'),
        "the outer guest has no SVM: {kvm}"
    );
    Some(Bed {
        env,
        scratch,
        assets,
    })
}

/// The builtin VMM boots the project's kernel (real Linux, real KVM) to a busybox `/init`
/// and ends with the exit the guest asked for (reset on `reboot -f`).
#[test]
fn test_builtin_vmm_boots_linux_in_the_nested_bed() {
    if std::env::var_os("VMCTL_NESTED_BED").is_none() {
        // 16 of 16 boots by hand completed in 20-27 s, but in a full test run all three
        // attempts stalled at the same point (after "Serial: 8250/16550 driver"): the
        // emulator stall is not rare enough to gate CI on.
        skip("the nested-KVM bed is opt-in until QEMU's AMD-V emulation carries it: set VMCTL_NESTED_BED=1");
        return;
    }
    let Some(bed) = outer_bed("nested-boot") else {
        return;
    };
    let env = &bed.env;
    let initramfs = vmctl_tests::busybox_initramfs(
        &bed.scratch,
        "echo NESTED-LINUX-BOOTED $(uname -r); reboot -f",
    );
    // QEMU 7.2's emulation of AMD-V now and then leaves an inner vCPU spinning at one
    // instruction with no interrupt delivered (seen in kvm_exit traces of the outer guest;
    // the longer the inner guest runs, the likelier). A boot that makes no progress in
    // 150 s is such a stall, not a VMM result: it is retried, and each stall is printed.
    // Any other outcome (wrong output, another exit) fails at once.
    let mut stalls = 0;
    let boot = loop {
        let t = Instant::now();
        let (code, out) = outer_sh(
            env,
            &format!(
                "rm -f {SCRATCH}/boot.log {SCRATCH}/boot-exit.json; \
                 timeout 150 {BIN}/vmm --kernel {KERNEL_DIR}/{} --initrd {SCRATCH}/{} --mem 256 \
                 --serial {SCRATCH}/boot.log --cmdline 'console=ttyS0 reboot=k panic=-1 pci=off \
                 i8042.noaux i8042.nomux i8042.dumbkbd no_timer_check rdinit=/init' \
                 --exit-report {SCRATCH}/boot-exit.json </dev/null; rc=$?; \
                 cat {SCRATCH}/boot.log {SCRATCH}/boot-exit.json; exit $rc",
                file_name(&bed.assets.kernel),
                file_name(&initramfs),
            ),
            Duration::from_secs(200),
        );
        if code == Some(124) && stalls < 2 {
            stalls += 1;
            let tail: Vec<&str> = out.lines().rev().take(3).collect();
            eprintln!("inner boot stalled (emulator), retrying; last lines: {tail:?}");
            continue;
        }
        assert_eq!(code, Some(0), "vmm failed:\n{out}");
        eprintln!(
            "vmm boots Linux in the nested bed: {:.1} s ({stalls} stalled attempts before)",
            t.elapsed().as_secs_f64()
        );
        break out;
    };
    assert!(boot.contains("NESTED-LINUX-BOOTED"), "{boot}");
    assert!(boot.contains(r#""how":"reset""#), "{boot}");
    env.vmctl_ok(&["stop"], Duration::from_secs(120));
}

/// `vmctl start --engine builtin` runs the full Docker VM inside the bed.
#[test]
fn test_builtin_engine_runs_the_docker_vm_in_the_nested_bed() {
    if std::env::var_os("VMCTL_NESTED_BED").is_none() {
        // The inner Docker VM runs for minutes, and under QEMU 7.2's AMD-V emulation an
        // inner guest that runs that long stalls or faults more often than not (see
        // TESTING.md, "The nested bed"): opt-in until the emulation carries it.
        skip("the full Docker VM in the nested-KVM bed is opt-in: set VMCTL_NESTED_BED=1");
        return;
    }
    if !have("docker") {
        skip("the docker CLI is not installed");
        return;
    }
    let Some(bed) = outer_bed("nested-docker") else {
        return;
    };
    let (env, scratch, assets) = (&bed.env, &bed.scratch, &bed.assets);

    // The Docker VM on the builtin engine, driven from the outer machine with the real
    // `docker` CLI through the inner instance's forwarded socket.
    let tar = vmctl_tests::cli_env::busybox_tar(scratch);
    let docker = format!("docker -H unix://{INNER_HOME}/default/docker.sock");
    let inner_share = "/var/lib/docker/vmctl-share";
    outer_ok(
        env,
        "inner config",
        &format!(
            "mkdir -p {inner_share} && echo from-the-outer-side > {inner_share}/in.txt && {}",
            inner_vmctl(
                &assets.kernel,
                &assets.rootfs,
                "config set share_home false"
            )
        ),
        STEP,
    );
    let start = inner_vmctl(
        &assets.kernel,
        &assets.rootfs,
        &format!(
            "start --engine builtin --cpus 2 --memory 1536MiB --disk-size 4GiB \
             --mount {inner_share}:/mnt/share"
        ),
    );
    outer_ok(
        env,
        "inner vmctl start --engine builtin",
        &start,
        Duration::from_secs(900),
    );
    let status = outer_ok(
        env,
        "inner status",
        &inner_vmctl(&assets.kernel, &assets.rootfs, "status"),
        STEP,
    );
    assert!(status.contains("builtin"), "{status}");
    outer_ok(
        env,
        "docker import",
        &format!("{docker} import {SCRATCH}/{} bb", file_name(&tar)),
        Duration::from_secs(300),
    );
    // A bind mount over virtio-fs (served in the VMM's process): read a file the outer side
    // wrote, write one it then reads.
    let out = outer_ok(
        env,
        "docker run with a bind mount",
        &format!(
            "{docker} run --rm -v /mnt/share:/data bb sh -c 'cat /data/in.txt; echo from-the-container > /data/out.txt' \
             && cat {inner_share}/out.txt"
        ),
        Duration::from_secs(300),
    );
    assert!(out.contains("from-the-outer-side"), "{out}");
    assert!(out.contains("from-the-container"), "{out}");
    // A published port reaches the outer machine's 127.0.0.1.
    let out = outer_ok(
        env,
        "published port",
        &format!(
            "{docker} run -d --name web -p 18080:80 bb httpd -f -p 80 -h /www >/dev/null && \
             for i in $(seq 1 60); do bash -c 'exec 3<>/dev/tcp/127.0.0.1/18080 && printf \"GET / HTTP/1.0\\r\\n\\r\\n\" >&3 && cat <&3' 2>/dev/null | grep -q 'published port works' && echo published port works && exit 0; sleep 2; done; exit 1"
        ),
        Duration::from_secs(300),
    );
    assert!(out.contains("published port works"), "{out}");
    // vmctl exec runs in the inner guest.
    let out = outer_ok(
        env,
        "inner vmctl exec",
        &inner_vmctl(&assets.kernel, &assets.rootfs, "exec -- cat /proc/cmdline"),
        STEP,
    );
    assert!(out.contains("vmctl."), "{out}");
    // A named volume and the image survive stop and start.
    outer_ok(
        env,
        "named volume",
        &format!("{docker} run --rm -v keep:/v bb sh -c 'echo kept > /v/k'"),
        Duration::from_secs(300),
    );
    outer_ok(
        env,
        "inner stop",
        &inner_vmctl(&assets.kernel, &assets.rootfs, "stop"),
        Duration::from_secs(300),
    );
    outer_ok(env, "inner start again", &start, Duration::from_secs(900));
    let out = outer_ok(
        env,
        "volume and image after restart",
        &format!("{docker} run --rm -v keep:/v bb cat /v/k"),
        Duration::from_secs(300),
    );
    assert!(out.contains("kept"), "{out}");
    outer_ok(
        env,
        "inner stop",
        &inner_vmctl(&assets.kernel, &assets.rootfs, "stop"),
        Duration::from_secs(300),
    );
    env.vmctl_ok(&["stop"], Duration::from_secs(120));
}
