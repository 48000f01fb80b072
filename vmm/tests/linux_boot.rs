//! Boots a real Linux kernel with a busybox initramfs that prints a marker and reboots.
//!
//! Needs hardware-backed KVM: on this project's PVM machines an unmodified kernel cannot
//! boot (its kernel-mode code is emulated and hits unsupported instructions), so the test
//! guests cover the same boot path there.

mod common;

use common::initramfs::{newc, Entry};
use common::{is_pvm, kvm_unavailable, skip, VmSpec};
use std::path::PathBuf;
use std::time::Duration;

const MARKER: &str = "VMCTL_LINUX_BOOT_OK";

/// VMCTL_TEST_KERNEL, else the project's cached kernel build.
fn find_kernel() -> Option<PathBuf> {
    if let Some(k) = std::env::var_os("VMCTL_TEST_KERNEL") {
        return Some(PathBuf::from(k));
    }
    let home = std::env::var_os("HOME")?;
    let cache = PathBuf::from(home).join(".cache/vmctl/kernel");
    let mut found: Vec<PathBuf> = std::fs::read_dir(cache)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bzImage")))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop()
}

#[test]
fn test_linux_kernel_boots_initramfs_and_reboots() {
    if let Some(reason) = kvm_unavailable() {
        return skip(&reason);
    }
    if is_pvm() {
        return skip("/dev/kvm is PVM (kvm_pvm): an unmodified Linux kernel cannot boot on it");
    }
    let Some(kernel) = find_kernel() else {
        return skip(
            "no Linux kernel: set VMCTL_TEST_KERNEL or build one with kernel-config/build-kernel.sh \
             (~/.cache/vmctl/kernel/*/bzImage)",
        );
    };
    let busybox = match std::fs::read("/bin/busybox") {
        Ok(b) => b,
        Err(e) => {
            return skip(&format!(
                "no /bin/busybox (apt package busybox-static): {e}"
            ))
        }
    };
    let init = format!("#!/bin/busybox sh\n/bin/busybox echo {MARKER}\n/bin/busybox reboot -f\n");
    let cpio = newc(&[
        Entry::Dir("bin"),
        Entry::Dir("dev"),
        Entry::CharDev("dev/console", 5, 1),
        Entry::File("bin/busybox", 0o755, &busybox),
        Entry::File("init", 0o755, init.as_bytes()),
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    let initrd = dir.path().join("initramfs.cpio");
    std::fs::write(&initrd, cpio).expect("write initramfs");
    let mut spec = VmSpec::guest(&kernel, "");
    spec.cmdline = "console=ttyS0 reboot=k panic=-1 rdinit=/init".into();
    spec.initrd = Some(initrd);
    spec.mem_mib = 256;
    spec.timeout = Duration::from_secs(120);
    let run = spec.run();
    run.assert_no_crash();
    assert!(
        run.serial.contains(MARKER),
        "marker not printed\n{}",
        run.dump()
    );
    assert_eq!(run.status.and_then(|s| s.code()), Some(0), "{}", run.dump());
}
