//! COM1 plumbing and device-set options of the vmm CLI, seen from the test guest:
//! host stdin → guest, `--serial FILE|none`, `--no-rng`.

mod common;

use common::{guest_elf, require_kvm, run_seed, Serial, VmSpec};

#[test]
fn test_serial_stdin_line_reaches_guest_com1() {
    if !require_kvm() {
        return;
    }
    let word = format!("vmctl-rx-{:x}", run_seed());
    let mut spec = VmSpec::guest(&guest_elf(), "serial_rx");
    // Written at once and then closed: the VMM must buffer what the 8250 cannot take yet
    // and keep the VM running after stdin's EOF.
    spec.stdin = Some(format!("{word}\n").into_bytes());
    let run = spec.run();
    run.assert_guest_passed();
    assert_eq!(run.ok("serial.rx").get("got"), word, "{}", run.dump());
}

#[test]
fn test_serial_file_receives_guest_output() {
    if !require_kvm() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("com1.log");
    let mut spec = VmSpec::guest(&guest_elf(), "boot");
    spec.serial = Serial::File(out.clone());
    let run = spec.run();
    run.assert_no_crash();
    assert_eq!(run.status.and_then(|s| s.code()), Some(0), "{}", run.dump());
    assert!(
        run.serial.is_empty(),
        "COM1 leaked to stdout\n{}",
        run.dump()
    );
    let text = std::fs::read_to_string(&out).expect("serial file");
    assert!(
        text.starts_with("BOOT vmctl-test-guest"),
        "serial file: {text:?}"
    );
    assert!(
        text.contains("TEST boot.params ok"),
        "serial file: {text:?}"
    );
    assert!(text.contains("DONE pass="), "serial file: {text:?}");
}

#[test]
fn test_serial_none_discards_output_guest_still_runs() {
    if !require_kvm() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let console = dir.path().join("console.out");
    let mut spec = VmSpec::guest(&guest_elf(), "console");
    spec.serial = Serial::None;
    spec.console = Some(console.clone());
    let run = spec.run();
    run.assert_no_crash();
    assert_eq!(run.status.and_then(|s| s.code()), Some(0), "{}", run.dump());
    assert!(run.serial.is_empty(), "{}", run.dump());
    // The guest ran to its console write although COM1 went nowhere.
    let text = std::fs::read_to_string(&console).expect("console file");
    assert!(text.contains("virtio-console hello"), "console: {text:?}");
}

#[test]
fn test_no_rng_flag_leaves_only_disks() {
    if !require_kvm() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("d.img");
    std::fs::write(&disk, vec![0u8; 64 << 10]).expect("disk");
    let mut spec = VmSpec::guest(&guest_elf(), "virtio");
    spec.disks = vec![disk.display().to_string()];
    spec.extra = vec!["--no-rng".into()];
    let run = spec.run();
    run.assert_guest_passed();
    let ids: Vec<String> = run
        .named("virtio.dev")
        .iter()
        .map(|l| l.get("id").to_string())
        .collect();
    assert_eq!(ids, ["2"], "{}", run.dump());
}

#[test]
fn test_serial_interrupts_thr_empty_and_rx_reach_irq4() {
    if !require_kvm() {
        return;
    }
    let word = format!("vmctl-irq-{:x}", run_seed());
    let mut spec = VmSpec::guest(&guest_elf(), "serial_irq");
    spec.stdin = Some(format!("{word}\n").into_bytes());
    // Sent once the guest listens: a 16550 raises no interrupt for data that was
    // already waiting when the guest enabled data-ready interrupts in vm-superio.
    spec.stdin_after = Some("SERIAL irq armed".into());
    let run = spec.run();
    run.assert_guest_passed();
    // Linux's 8250 driver depends on both: THR-empty (IIR 0x2) for output, data-ready
    // (IIR 0x4) for input, delivered on IRQ 4 through the IOAPIC.
    let l = run.ok("serial.irq");
    assert_eq!(l.get("got"), word, "{}", run.dump());
    let seen = u32::from_str_radix(l.get("iir_seen").trim_start_matches("0x"), 16).expect("iir");
    assert_eq!(
        seen & 0x14,
        0x14,
        "IIR causes seen {seen:#x}\n{}",
        run.dump()
    );
}
