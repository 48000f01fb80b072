//! Shared helpers for the vmm integration tests: build the freestanding test guest,
//! wrap it as a bzImage, run the real `vmm` binary on /dev/kvm with a timeout, and
//! parse the guest's COM1 line protocol (`TEST <name> ok|FAIL|skip <detail>`, `DONE`).
#![allow(dead_code)] // each test file uses a different subset

pub mod image;
pub mod initramfs;
pub mod vm;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

#[allow(unused_imports)]
pub use image::{bzimage_from_elf, flat_image};
#[allow(unused_imports)]
pub use vm::{Serial, VmRun, VmSpec};

/// The workspace root (the vmm crate's parent).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// The `vmm` binary under test.
pub fn vmm_bin() -> &'static str {
    env!("CARGO_BIN_EXE_vmm")
}

/// Prints the contract's skip line.
pub fn skip(reason: &str) {
    eprintln!("skipped: {reason}");
}

/// Why the VMM cannot be run here, if it cannot: /dev/kvm missing or not openable.
pub fn kvm_unavailable() -> Option<String> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => None,
        Err(e) => Some(format!(
            "/dev/kvm is not usable: open(/dev/kvm, O_RDWR) failed: {e}"
        )),
    }
}

/// True on a PVM host (kvm_pvm): guest kernel-mode code is emulated there.
pub fn is_pvm() -> bool {
    vmm::hv::probe::probe() == vmm::hv::probe::HostHypervisor::Pvm
}

/// Returns false (after printing the skip line) when the VMM cannot run guests here.
pub fn require_kvm() -> bool {
    if let Some(reason) = kvm_unavailable() {
        skip(&reason);
        return false;
    }
    true
}

static GUEST: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// Builds the test guest (once per process; cargo's lock serialises other processes)
/// and returns the ELF's path.
pub fn guest_elf() -> PathBuf {
    let built = GUEST.get_or_init(|| {
        let root = workspace_root();
        let target_dir = root.join("target/test-guests");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .current_dir(&root)
            .args([
                "build",
                "--release",
                "--manifest-path",
                "vmm/test-guests/Cargo.toml",
            ])
            .args(["--target", "x86_64-unknown-none", "--target-dir"])
            .arg(&target_dir)
            // Flags meant for the host build (coverage, sanitizers) break a no_std guest.
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_RUSTFLAGS")
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_BUILD_TARGET")
            .output()
            .map_err(|e| format!("cannot run cargo to build the test guest: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "building the test guest failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(target_dir.join("x86_64-unknown-none/release/testguest"))
    });
    match built {
        Ok(p) => p.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// Writes the guest as a bzImage into `dir` and returns its path.
pub fn guest_bzimage(dir: &Path) -> PathBuf {
    let elf = std::fs::read(guest_elf()).expect("read the test guest ELF");
    let bz = bzimage_from_elf(&elf).expect("wrap the test guest as a bzImage");
    let path = dir.join("testguest.bzImage");
    std::fs::write(&path, bz).expect("write the bzImage");
    path
}

/// FNV-1a 64, as the guest computes it.
pub fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Deterministic pseudo-random bytes (xorshift64*), seeded per test.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// Lowercase hex.
pub fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

/// The byte the guest writes at offset `i` of sector 1 (mirrors the guest's `pattern`).
pub fn guest_pattern(i: usize) -> u8 {
    (i as u8).wrapping_mul(7).wrapping_add(0x31)
}

/// A seed that differs per test run (so a stale output file cannot pass a test).
pub fn run_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ u64::from(std::process::id()).rotate_left(32)
}
