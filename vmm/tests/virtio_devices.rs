//! virtio-mmio devices seen from the test guest: discovery, blk, rng, console.

mod common;

use common::{fnv1a, guest_elf, guest_pattern, hex, pseudo_random, require_kvm, run_seed, VmSpec};
use std::path::Path;

const SECTOR: usize = 512;

/// A 2 MiB disk: sector 0 random, sectors 1..8 filled with 0xff.
fn make_disk(path: &Path, seed: u64) -> Vec<u8> {
    let mut img = vec![0u8; 2 << 20];
    img[..SECTOR].copy_from_slice(&pseudo_random(seed, SECTOR));
    img[SECTOR..8 * SECTOR].fill(0xff);
    std::fs::write(path, &img).expect("write disk image");
    img
}

#[test]
fn test_virtio_discovery_ids_follow_cmdline_order() {
    if !require_kvm() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    make_disk(&a, 1);
    make_disk(&b, 2);
    let mut spec = VmSpec::guest(&guest_elf(), "boot,virtio");
    spec.disks = vec![a.display().to_string(), format!("{},ro", b.display())];
    spec.console = Some(dir.path().join("console.txt"));
    let run = spec.run();
    run.assert_guest_passed();
    let devs = run.named("virtio.dev");
    let ids: Vec<&str> = devs.iter().map(|l| l.get("id")).collect();
    // Each --disk (blk, 2), then rng (4), then console (3).
    assert_eq!(ids, ["2", "2", "4", "3"], "{}", run.dump());
    let cmdline = run.ok("boot.cmdline");
    let entries = cmdline.detail.matches("virtio_mmio.device=").count();
    assert_eq!(entries, 4, "{}", run.dump());
    let mut addrs: Vec<&str> = devs.iter().map(|l| l.get("addr")).collect();
    let mut irqs: Vec<&str> = devs.iter().map(|l| l.get("irq")).collect();
    addrs.sort_unstable();
    addrs.dedup();
    irqs.sort_unstable();
    irqs.dedup();
    assert_eq!(
        (addrs.len(), irqs.len()),
        (4, 4),
        "windows/IRQs not distinct\n{}",
        run.dump()
    );
    for d in &devs {
        assert_eq!(d.get("version"), "2", "{}", run.dump());
        assert_eq!(d.get("magic"), "0x74726976", "{}", run.dump());
    }
}

#[test]
fn test_blk_rw_disk_requests_reach_image() {
    if !require_kvm() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("rw-disk.img");
    let before = make_disk(&disk, run_seed());
    let mut spec = VmSpec::guest(&guest_elf(), "blk");
    spec.disks = vec![disk.display().to_string()];
    let run = spec.run();
    run.assert_guest_passed();

    let init = run.ok("blk.init");
    assert_eq!(
        init.get("capacity"),
        (before.len() / SECTOR).to_string(),
        "{}",
        run.dump()
    );
    assert_eq!(init.get("ro"), "0");
    let features = u64::from_str_radix(init.get("negotiated").trim_start_matches("0x"), 16)
        .expect("negotiated features");
    assert_ne!(features & (1 << 32), 0, "VIRTIO_F_VERSION_1 not negotiated");
    assert_ne!(features & (1 << 9), 0, "VIRTIO_BLK_F_FLUSH not negotiated");

    let read = run.ok("blk.read");
    assert_eq!(read.get("sector0"), hex(&before[..32]), "{}", run.dump());
    assert_eq!(
        read.get("fnv1a64"),
        format!("{:016x}", fnv1a(&before[..SECTOR]))
    );
    run.ok("blk.read_oob");
    run.ok("blk.write");
    run.ok("blk.flush");
    run.ok("blk.readback");
    assert_eq!(
        run.ok("blk.getid").get("id"),
        "rw-disk.img",
        "{}",
        run.dump()
    );

    let after = std::fs::read(&disk).expect("read disk image");
    assert_eq!(after.len(), before.len(), "image size changed");
    let want: Vec<u8> = (0..SECTOR).map(guest_pattern).collect();
    assert!(
        after[SECTOR..2 * SECTOR] == want[..],
        "sector 1 does not hold the guest's write"
    );
    assert!(after[..SECTOR] == before[..SECTOR], "sector 0 changed");
    if run.named("blk.write_zeroes").iter().any(|l| l.is_ok()) {
        assert!(
            after[4 * SECTOR..6 * SECTOR].iter().all(|&b| b == 0),
            "write-zeroes left data"
        );
    }
    run.ok("blk.batch");
    run.ok("blk.sg");
    let cfg = run.ok("blk.config");
    assert_eq!(cfg.get("blk_size"), "512", "{}", run.dump());
    let seg_max: u32 = cfg.get("seg_max").parse().expect("seg_max");
    // The guest just used 4 data segments (6 descriptors) in one request.
    assert!(
        seg_max >= 4,
        "seg_max {seg_max} below what the guest used\n{}",
        run.dump()
    );
    for k in 0..5usize {
        let s = &after[(8 + k) * SECTOR..(9 + k) * SECTOR];
        assert!(
            s.iter().all(|&b| b == 0xa0 + k as u8),
            "batched write to sector {} missing",
            8 + k
        );
    }
    // Outside the ranges the guest touched, nothing changed.
    assert!(
        after[6 * SECTOR..8 * SECTOR] == before[6 * SECTOR..8 * SECTOR],
        "sectors 6-7 changed"
    );
    assert!(
        after[13 * SECTOR..] == before[13 * SECTOR..],
        "bytes beyond sector 13 changed"
    );
}

#[test]
fn test_blk_readonly_disk_write_ioerr_image_unchanged() {
    if !require_kvm() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("ro.img");
    let before = make_disk(&disk, run_seed());
    let mut spec = VmSpec::guest(&guest_elf(), "blk");
    spec.disks = vec![format!("{},ro", disk.display())];
    let run = spec.run();
    run.assert_guest_passed();
    let init = run.ok("blk.init");
    assert_eq!(
        init.get("ro"),
        "1",
        "VIRTIO_BLK_F_RO not offered\n{}",
        run.dump()
    );
    assert_eq!(run.ok("blk.write_ro").get("status"), "1", "{}", run.dump());
    run.ok("blk.read");
    assert!(
        std::fs::read(&disk).expect("read disk") == before,
        "read-only image was modified"
    );
}

#[test]
fn test_rng_returns_varied_bytes() {
    if !require_kvm() {
        return;
    }
    let spec = VmSpec::guest(&guest_elf(), "rng");
    let (a, b) = (spec.run(), spec.run());
    a.assert_guest_passed();
    b.assert_guest_passed();
    let (da, db) = (
        a.ok("rng").get("data").to_string(),
        b.ok("rng").get("data").to_string(),
    );
    assert_eq!(da.len(), 128, "{}", a.dump());
    assert_ne!(da, db, "two boots got the same 64 random bytes");
}

#[test]
fn test_console_line_reaches_console_file() {
    if !require_kvm() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("console.out");
    let mut spec = VmSpec::guest(&guest_elf(), "console");
    spec.console = Some(out.clone());
    let run = spec.run();
    run.assert_guest_passed();
    run.ok("console");
    let text = std::fs::read_to_string(&out).expect("console file");
    assert!(
        text.contains("vmctl-test-guest virtio-console hello\n"),
        "console file holds {text:?}\n{}",
        run.dump()
    );
    assert!(
        !run.serial.contains("virtio-console hello"),
        "console output leaked to COM1"
    );
}

#[test]
fn test_console_absent_without_flag() {
    if !require_kvm() {
        return;
    }
    let run = VmSpec::guest(&guest_elf(), "virtio").run();
    run.assert_guest_passed();
    let ids: Vec<String> = run
        .named("virtio.dev")
        .iter()
        .map(|l| l.get("id").to_string())
        .collect();
    assert_eq!(
        ids,
        ["4"],
        "only rng without --disk/--console\n{}",
        run.dump()
    );
}

#[test]
fn test_blk_malformed_requests_rejected() {
    if !require_kvm() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("strict.img");
    let before = make_disk(&disk, run_seed());
    let mut spec = VmSpec::guest(&guest_elf(), "blk_strict");
    spec.disks = vec![disk.display().to_string()];
    let run = spec.run();
    run.assert_guest_passed();
    run.ok("blk.partial_sector");
    run.ok("blk.wrong_direction");
    assert!(
        std::fs::read(&disk).expect("read disk") == before,
        "a rejected write changed the image"
    );
}
