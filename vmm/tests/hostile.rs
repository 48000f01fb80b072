//! Hostile guests: malformed virtqueues and register abuse. The VMM must not panic, must
//! keep serving good requests (or stop the VM with a one-line cause), and must not let
//! the guest flood its logs.

mod common;

use common::{guest_elf, require_kvm, VmRun, VmSpec};

/// Guest-triggerable log lines must be rate-limited: a bound far above a normal run.
const MAX_STDERR_LINES: usize = 200;

fn hostile(mode: &str) -> Option<VmRun> {
    hostile_on(mode, "blk")
}

/// Runs hostile `mode` against device `dev` (blk, rng or console) and checks the VMM.
fn hostile_on(mode: &str, dev: &str) -> Option<VmRun> {
    if !require_kvm() {
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("hostile.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).expect("disk");
    let mut spec = VmSpec::guest(&guest_elf(), mode);
    spec.cmdline = format!("{} hostile_dev={dev}", spec.cmdline);
    spec.disks = vec![disk.display().to_string()];
    spec.console = Some(dir.path().join("console.out"));
    if dev == "vsock" {
        let uds = dir.path().join("v.sock");
        spec.extra = vec!["--vsock".into(), format!("3,{}", uds.display())];
    }
    let run = spec.run();
    run.assert_no_crash();
    let code = run.status.and_then(|s| s.code());
    if code == Some(0) {
        // The VMM survived: the guest's good request after the attack must have worked.
        run.assert_guest_passed();
    } else {
        // The VMM stopped the VM: cleanly, with a cause on stderr.
        let last = run.stderr.lines().last().unwrap_or("");
        assert!(
            !last.trim().is_empty(),
            "non-zero exit without a cause\n{}",
            run.dump()
        );
    }
    let lines = run.stderr.lines().count();
    assert!(
        lines <= MAX_STDERR_LINES,
        "{lines} stderr lines: guest-triggered logging is not rate-limited\n{}",
        &run.stderr[..run.stderr.len().min(2000)]
    );
    Some(run)
}

#[test]
fn test_hostile_descriptor_outside_memory_vmm_survives() {
    hostile("hostile_oob");
}

#[test]
fn test_hostile_descriptor_loop_vmm_survives() {
    hostile("hostile_loop");
}

#[test]
fn test_hostile_huge_descriptor_length_vmm_survives() {
    hostile("hostile_len");
}

#[test]
fn test_hostile_avail_index_jump_vmm_survives() {
    hostile("hostile_idx");
}

#[test]
fn test_hostile_rings_outside_memory_vmm_survives() {
    hostile("hostile_ring");
}

#[test]
fn test_hostile_mmio_odd_offsets_and_widths_vmm_survives() {
    if let Some(run) = hostile("hostile_mmio") {
        // After the abuse the window still identifies itself and serves requests.
        if run.status.and_then(|s| s.code()) == Some(0) {
            run.ok("hostile.mmio");
        }
    }
}

#[test]
fn test_hostile_notify_flood_vmm_survives() {
    if let Some(run) = hostile("hostile_flood") {
        if run.status.and_then(|s| s.code()) == Some(0) {
            run.ok("hostile.flood");
        }
    }
}

#[test]
fn test_hostile_indirect_without_feature_vmm_survives() {
    hostile("hostile_indirect");
}

#[test]
fn test_hostile_unowned_io_ports_vmm_survives() {
    if let Some(run) = hostile("hostile_pio") {
        if run.status.and_then(|s| s.code()) == Some(0) {
            run.ok("hostile.pio");
            assert!(
                run.serial.contains("hostile.pio: COM1 still prints"),
                "{}",
                run.dump()
            );
        }
    }
}

#[test]
fn test_hostile_unmapped_guest_physical_vmm_survives() {
    if let Some(run) = hostile("hostile_unmapped") {
        if run.status.and_then(|s| s.code()) == Some(0) {
            run.ok("hostile.unmapped");
        }
    }
}

#[test]
fn test_hostile_rng_bad_chains_vmm_survives() {
    for mode in ["hostile_oob", "hostile_loop", "hostile_len"] {
        hostile_on(mode, "rng");
    }
}

#[test]
fn test_hostile_console_bad_chains_vmm_survives() {
    for mode in ["hostile_oob", "hostile_loop", "hostile_len"] {
        hostile_on(mode, "console");
    }
}

#[test]
fn test_hostile_rng_avail_index_jump_vmm_survives() {
    hostile_on("hostile_idx", "rng");
}

#[test]
fn test_hostile_console_avail_index_jump_vmm_survives() {
    hostile_on("hostile_idx", "console");
}

#[test]
fn test_hostile_out_of_order_setup_vmm_survives() {
    if let Some(run) = hostile("hostile_setup") {
        if run.status.and_then(|s| s.code()) == Some(0) {
            run.ok("hostile.setup");
            // FEATURES_OK for bits the device never offered must not stick (virtio 1.2
            // §2.2.1: otherwise the device MUST fail to set FEATURES_OK).
            run.ok("hostile.features");
        }
    }
}

#[test]
fn test_fuzz_random_chains_and_registers_vmm_survives() {
    // Guest-driven fuzz smoke: random descriptor tables, available rings and register
    // accesses (DMA confined to guest scratch pages), seeded per run; the seed is in the
    // guest's report line for reproduction (`tests=fuzz fuzz_seed=S fuzz_iters=N`).
    if !require_kvm() {
        return;
    }
    let seed = common::run_seed() % 1_000_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("fuzz.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).expect("disk");
    let mut spec = VmSpec::guest(&guest_elf(), "fuzz");
    spec.cmdline = format!("{} fuzz_seed={seed} fuzz_iters=1200", spec.cmdline);
    spec.disks = vec![disk.display().to_string()];
    spec.timeout = std::time::Duration::from_secs(120);
    let run = spec.run();
    run.assert_guest_passed();
    assert_eq!(
        run.ok("fuzz").get("good_read"),
        "1",
        "seed {seed}\n{}",
        run.dump()
    );
    // Guest-triggered log lines stay bounded (rate-limited per call site and second).
    let lines = run.stderr.lines().count();
    assert!(lines < 5000, "seed {seed}: {lines} stderr lines");
}

#[test]
fn test_hostile_vsock_bad_tx_chains_vmm_survives() {
    for mode in ["hostile_oob", "hostile_loop", "hostile_len", "hostile_idx"] {
        hostile_on(mode, "vsock");
    }
}
