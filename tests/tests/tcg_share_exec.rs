//! Programs on a shared folder run correctly in a TCG guest on a newer QEMU.
//!
//! QEMU 8 and later key TCG's translated code by guest-physical page and drop it only when
//! the guest CPU or QEMU writes the page. fs-share fills the guest's page cache from another
//! process (vhost-user), unseen by QEMU, so a reused page could run the code it held before:
//! with Debian 13's QEMU 10.0, a program on a share crashed (SIGSEGV, SIGABRT, clap's debug
//! asserts on garbage) on 5 of 6 runs after the guest dropped its caches. The qemu engine
//! now boots TCG guests with `init_on_alloc=1` (a CPU write to every page it reuses).
//!
//! Runs with the second QEMU that `scripts/fetch-test-qemu.sh` unpacks (test-all.sh sets
//! `$VMCTL_TEST_QEMU_NEW`); this machine's own QEMU 7.2 does not show the fault.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use vmctl_tests::cli_env::{Env, STEP};
use vmctl_tests::{assets_or_skip, skip};

/// Rounds of "run the program, drop the guest's caches": without the fix, 1 of 6 passed.
const ROUNDS: usize = 8;

#[test]
fn test_program_on_a_share_runs_after_page_reuse_on_newer_qemu() {
    let Some(qemu) = std::env::var_os("VMCTL_TEST_QEMU_NEW")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
    else {
        skip("no newer QEMU: $VMCTL_TEST_QEMU_NEW unset (scripts/fetch-test-qemu.sh fetches Debian 13's on Debian 12)");
        return;
    };
    if !vmctl_tests::is_root() {
        skip("needs root (this scenario is written for root; tests/tests/user_start.rs runs the main job as an ordinary user)");
        return;
    }
    if assets_or_skip().is_none() {
        return;
    }
    let mut env = Env::new("tcg-share-exec");
    env.qemu = Some(qemu.clone());
    // A large dynamically linked program of ours (many pages to page in), alone on a share.
    let share = env.home.path().join("bin-share");
    std::fs::create_dir_all(&share).unwrap();
    std::fs::copy(env.bin.join("vmm"), share.join("prog")).unwrap();
    env.vmctl_ok(&["config", "set", "share_home", "false"], STEP);
    let mount = format!("{}:/opt/prog:ro", share.display());
    let took = env.start(&["--cpus", "2", "--memory", "2GiB", "--mount", &mount]);
    let status = env.vmctl_ok(&["status"], STEP);
    eprintln!(
        "vmctl start on {}: {:.1} s",
        qemu.display(),
        took.as_secs_f64()
    );
    assert!(status.contains("TCG"), "this test is about TCG: {status}");

    let script = format!(
        "for i in $(seq {ROUNDS}); do /opt/prog/prog --help >/dev/null 2>/tmp/err; \
         rc=$?; echo \"round $i rc=$rc $(head -c 200 /tmp/err | tr '\\n' ' ')\"; \
         sync; echo 3 > /proc/sys/vm/drop_caches; done"
    );
    let out = env.vmctl(&["exec", "--", "sh", "-c", &script], STEP);
    assert!(out.ok(), "vmctl exec: {out:?}");
    let bad: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("round") && !l.contains("rc=0 "))
        .collect();
    assert_eq!(
        out.stdout
            .lines()
            .filter(|l| l.starts_with("round"))
            .count(),
        ROUNDS,
        "{}",
        out.stdout
    );
    assert!(
        bad.is_empty(),
        "a program on the share ran stale translated code after its pages were reused:\n{}",
        out.stdout
    );
    env.vmctl_ok(&["stop"], Duration::from_secs(120));
}
