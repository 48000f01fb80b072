//! MP tables and AP start-up (INIT-SIPI-SIPI, real-mode trampoline → long mode).

mod common;

use common::{guest_elf, require_kvm, VmSpec};

#[test]
fn test_mptable_lists_each_vcpu() {
    if !require_kvm() {
        return;
    }
    for cpus in [1u32, 3] {
        let mut spec = VmSpec::guest(&guest_elf(), "mptable");
        spec.cpus = cpus;
        let run = spec.run();
        run.assert_guest_passed();
        let mp = run.ok("smp.mptable");
        assert_eq!(mp.get("cpus"), cpus.to_string(), "{}", run.dump());
        assert_eq!(mp.get("bsp"), "0");
        assert_eq!(mp.get("ioapic_id"), cpus.to_string(), "IOAPIC id must be N");
        assert_eq!(mp.get("ioapic"), "0xfec00000");
        assert_eq!(mp.get("lapic"), "0xfee00000");
        let fp = u64::from_str_radix(mp.get("fp").trim_start_matches("0x"), 16).expect("fp");
        assert!(
            (0x9fc00..0xa0000).contains(&fp),
            "floating pointer not in the EBDA: {fp:#x}"
        );
        assert_eq!(fp % 16, 0);
    }
}

#[test]
fn test_smp_aps_start_and_report_distinct_ids() {
    if !require_kvm() {
        return;
    }
    let mut spec = VmSpec::guest(&guest_elf(), "smp");
    spec.cpus = 4;
    let run = spec.run();
    run.assert_guest_passed();
    let ap = run.ok("smp.ap");
    assert_eq!(ap.get("started"), "3", "{}", run.dump());
    let mut ids: Vec<&str> = ap.get("ap_ids").split(',').collect();
    ids.sort_unstable();
    assert_eq!(ids, ["1", "2", "3"], "{}", run.dump());
}

#[test]
fn test_smp_single_cpu_has_no_ap() {
    if !require_kvm() {
        return;
    }
    let run = VmSpec::guest(&guest_elf(), "smp").run();
    run.assert_guest_passed();
    let ap = run.named("smp.ap");
    assert!(ap.len() == 1 && ap[0].status == "skip", "{}", run.dump());
}

#[test]
fn test_smp_max_32_vcpus_all_start() {
    if !require_kvm() {
        return;
    }
    let mut spec = VmSpec::guest(&guest_elf(), "smp");
    spec.cpus = 32;
    spec.mem_mib = 64;
    let run = spec.run();
    run.assert_guest_passed();
    assert_eq!(run.ok("smp.mptable").get("cpus"), "32", "{}", run.dump());
    let ap = run.ok("smp.ap");
    assert_eq!(ap.get("started"), "31", "{}", run.dump());
    let mut ids: Vec<u32> = ap
        .get("ap_ids")
        .split(',')
        .map(|i| i.parse().expect("apic id"))
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..32).collect::<Vec<u32>>(), "{}", run.dump());
}

#[test]
fn test_smp_concurrent_blk_on_each_ap_reaches_each_image() {
    if !require_kvm() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let disks: Vec<_> = (0..3)
        .map(|i| dir.path().join(format!("ap{i}.img")))
        .collect();
    for d in &disks {
        std::fs::write(d, vec![0u8; 1 << 20]).expect("disk");
    }
    let mut spec = VmSpec::guest(&guest_elf(), "smp_blk");
    spec.cpus = 4;
    spec.disks = disks.iter().map(|d| d.display().to_string()).collect();
    let run = spec.run();
    run.assert_guest_passed();
    assert_eq!(run.ok("smp.blk").get("good_rounds"), "48", "{}", run.dump());
    // AP i wrote sector r of disk i with 0x10 * (i + 1) + r, concurrently with the others.
    for (i, d) in disks.iter().enumerate() {
        let img = std::fs::read(d).expect("read disk");
        for round in 0..16usize {
            let want = (0x10 * (i + 1) + round) as u8;
            let s = &img[round * 512..(round + 1) * 512];
            assert!(
                s.iter().all(|&b| b == want),
                "disk {i} sector {round} lacks {want:#x}"
            );
        }
        assert!(
            img[16 * 512..].iter().all(|&b| b == 0),
            "disk {i} written past sector 15"
        );
    }
}

#[test]
fn test_smp_reset_with_spinning_aps_exits_promptly() {
    if !require_kvm() {
        return;
    }
    let mut spec = VmSpec::guest(&guest_elf(), "smp_spin");
    spec.cpus = 4;
    spec.timeout = std::time::Duration::from_secs(30);
    let run = spec.run();
    // Three APs never halt: the VMM must pull them out of KVM_RUN when the BSP resets.
    run.assert_guest_passed();
    assert_eq!(run.ok("smp.ap").get("started"), "3", "{}", run.dump());
    assert!(
        run.elapsed < std::time::Duration::from_secs(10),
        "reset with busy APs took {:?}\n{}",
        run.elapsed,
        run.dump()
    );
}
