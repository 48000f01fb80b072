//! A host disk without room: `vmctl start` refuses up front with what to do, and any write
//! that hits ENOSPC ends with the disk-full hint. Real filesystems: a small tmpfs in a
//! private mount namespace (`unshare -m`, so nothing outlives the test), the real binary.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root (mounts a small tmpfs in a private mount namespace)");
        return false;
    }
    if Command::new("unshare").arg("--help").output().is_err() {
        eprintln!("skipped: unshare(1) is not installed");
        return false;
    }
    true
}

/// Runs `script` in a private mount namespace with a 16 MiB tmpfs at $T and `vmctl` as $V.
fn in_small_tmpfs(script: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let full = format!(
        "set -e; mount -t tmpfs -o size=16m tmpfs \"$T\"; export VMCTL_HOME=\"$T/instances\"; {script}"
    );
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &full])
        .env("T", dir.path())
        .env("V", env!("CARGO_BIN_EXE_vmctl"))
        .env("HOME", dir.path())
        .output()
        .unwrap()
}

#[test]
fn test_start_refuses_without_free_space_and_says_what_to_do() {
    if !can_run() {
        return;
    }
    let out = in_small_tmpfs("\"$V\" --name tiny start --engine qemu");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("Not enough disk space"), "{err}");
    assert!(err.contains("vmctl delete"), "{err}");
    // Refused before anything was started or built.
    assert!(!err.contains("guest kernel"), "{err}");
}

#[test]
fn test_enospc_on_any_write_gets_the_disk_full_hint() {
    if !can_run() {
        return;
    }
    // Fill the tmpfs, then ask vmctl to write its config there.
    let out = in_small_tmpfs(
        "mkdir -p \"$VMCTL_HOME/full\"; \
         dd if=/dev/zero of=\"$T/fill\" bs=1M count=64 2>/dev/null || true; \
         \"$V\" --name full config set cpus 2",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("the disk is full"), "{err}");
}
