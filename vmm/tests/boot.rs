//! Boot protocol: ELF and bzImage entry, zero page, command line, e820, initrd; the
//! bzImage wrapper itself (checked with linux-loader); guest-visible faults.

mod common;

use common::image::hdr;
use common::{
    bzimage_from_elf, flat_image, fnv1a, guest_elf, pseudo_random, require_kvm, VmRun, VmSpec,
};
use linux_loader::loader::{BzImage, KernelLoader};
use std::path::Path;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

#[test]
fn test_bzimage_wrapper_header_loads_with_linux_loader() {
    let elf = std::fs::read(guest_elf()).expect("read guest ELF");
    let flat = flat_image(&elf).expect("flatten");
    assert_eq!(flat.load, 0x10_0000);
    assert_eq!(flat.entry, 0x10_0200);
    // The entry is a jmp (rel8 or rel32) to the real start.
    assert!(
        matches!(flat.bytes[0x200], 0xeb | 0xe9),
        "no jmp at load + 0x200"
    );
    let bz = bzimage_from_elf(&elf).expect("wrap");
    assert_eq!(&bz[hdr::BOOT_FLAG..hdr::BOOT_FLAG + 2], &[0x55, 0xaa]);
    assert_eq!(&bz[hdr::HEADER..hdr::HEADER + 4], b"HdrS");
    assert!(u16::from_le_bytes([bz[hdr::VERSION], bz[hdr::VERSION + 1]]) >= 0x020c);
    assert_eq!(bz[hdr::LOADFLAGS] & 1, 1);
    assert_eq!(bz[hdr::XLOADFLAGS] & 1, 1);
    assert_eq!(u32_at(&bz, hdr::CODE32_START), 0x10_0000);
    assert!(u32_at(&bz, hdr::INIT_SIZE) as usize >= flat.bytes.len());
    assert_eq!(bz.len(), 1024 + flat.bytes.len());

    // linux-loader (what the VMM uses) accepts and places it byte for byte.
    let mem: GuestMemoryMmap =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).expect("guest memory");
    let mut file = std::io::Cursor::new(bz.clone());
    let res = BzImage::load(&mem, None, &mut file, Some(GuestAddress(0x10_0000)))
        .expect("linux-loader rejects the bzImage");
    assert_eq!(res.kernel_load, GuestAddress(0x10_0000));
    let setup = res.setup_header.expect("setup header");
    let (boot_flag, header) = (setup.boot_flag, setup.header);
    assert_eq!((boot_flag, header), (0xaa55, 0x5372_6448));
    let mut loaded = vec![0u8; flat.bytes.len()];
    mem.read_slice(&mut loaded, GuestAddress(0x10_0000))
        .expect("read back");
    assert!(
        loaded == flat.bytes,
        "loaded image differs from the flat image"
    );
}

#[test]
fn test_bzimage_wrapper_garbage_input_is_rejected() {
    assert!(bzimage_from_elf(b"").is_err());
    assert!(bzimage_from_elf(b"\x7fELF\x02\x01\x01").is_err());
    let mut elf = std::fs::read(guest_elf()).expect("read guest ELF");
    // Program header table pointing past the end of the file.
    elf[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(bzimage_from_elf(&elf).is_err());
    for seed in 0..2000u64 {
        let junk = pseudo_random(seed, (seed % 300) as usize);
        let _ = bzimage_from_elf(&junk);
    }
}

fn hex_u64(s: &str) -> u64 {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

/// The e820 map the guest printed: RAM entries sum to the reported total, do not overlap
/// each other or any device window (virtio, IOAPIC, LAPIC), and hold the image and initrd.
fn check_layout(run: &VmRun) {
    let map: Vec<(u64, u64, u32)> = run
        .ok("boot.e820map")
        .get("map")
        .split(',')
        .map(|e| {
            let (range, ty) = e.split_once(':').expect("start-end:type");
            let (a, b) = range.split_once('-').expect("start-end");
            (hex_u64(a), hex_u64(b), ty.parse().expect("type"))
        })
        .collect();
    let mut ram: Vec<(u64, u64)> = map
        .iter()
        .filter(|e| e.2 == 1)
        .map(|e| (e.0, e.1))
        .collect();
    ram.sort_unstable();
    let total: u64 = ram.iter().map(|(a, b)| b - a).sum();
    assert_eq!(
        total.to_string(),
        run.ok("boot.e820").get("ram_total"),
        "{}",
        run.dump()
    );
    for w in ram.windows(2) {
        assert!(
            w[0].1 <= w[1].0,
            "overlapping RAM entries {w:?}\n{}",
            run.dump()
        );
    }
    let mut windows: Vec<(u64, u64)> = vec![(0xfec0_0000, 0xfec0_1000), (0xfee0_0000, 0xfee0_1000)];
    for d in run.named("virtio.dev") {
        let a = hex_u64(d.get("addr"));
        windows.push((a, a + hex_u64(d.get("size"))));
    }
    for (wa, wb) in &windows {
        for (ra, rb) in &ram {
            assert!(
                wb <= ra || rb <= wa,
                "device window {wa:#x}-{wb:#x} overlaps RAM {ra:#x}-{rb:#x}\n{}",
                run.dump()
            );
        }
    }
    let inside = |a: u64, b: u64| ram.iter().any(|(ra, rb)| *ra <= a && b <= *rb);
    assert!(
        inside(0x10_0000, 0x10_1000),
        "kernel image not in RAM\n{}",
        run.dump()
    );
    let rd = run.ok("boot.initrd");
    let start = hex_u64(rd.get("addr"));
    let size: u64 = rd.get("size").parse().expect("size");
    assert!(
        inside(start, start + size),
        "initrd not inside one RAM entry\n{}",
        run.dump()
    );
}

fn boot_and_check(kernel: &Path, dir: &Path, mem_mib: u32) -> VmRun {
    let initrd = pseudo_random(common::run_seed(), 48 * 1024 + 123);
    let initrd_path = dir.join("initrd.bin");
    std::fs::write(&initrd_path, &initrd).expect("write initrd");
    let marker = format!("marker={:x}", common::run_seed());
    let mut spec = VmSpec::guest(kernel, "boot,virtio");
    spec.cmdline = format!("{} {marker} quiet", spec.cmdline);
    spec.initrd = Some(initrd_path);
    spec.mem_mib = mem_mib;
    let run = spec.run();
    run.assert_guest_passed();
    assert!(
        run.serial.starts_with("BOOT vmctl-test-guest"),
        "{}",
        run.dump()
    );
    run.ok("boot.params");
    let cmd = run.ok("boot.cmdline");
    assert!(
        cmd.detail.contains(&marker),
        "cmdline not read back\n{}",
        run.dump()
    );
    assert!(cmd.detail.contains("tests=boot"), "{}", run.dump());
    let e820 = run.ok("boot.e820");
    let mem = u64::from(mem_mib) << 20;
    let total: u64 = e820.get("ram_total").parse().expect("ram_total");
    let top =
        u64::from_str_radix(e820.get("ram_top").trim_start_matches("0x"), 16).expect("ram_top");
    if mem < 3 << 30 {
        assert_eq!(top, mem, "e820 RAM top != --mem\n{}", run.dump());
    }
    check_layout(&run);
    // Every RAM entry's first and last bytes are real memory (probed by the guest).
    let probes: u32 = run.ok("boot.ram").get("probes").parse().expect("probes");
    let ram_entries = run.ok("boot.e820map").get("map").matches(":1").count() as u32;
    assert!(probes >= 2 * (ram_entries - 1), "{}", run.dump());
    assert!(
        total <= mem && total >= mem - (1 << 20),
        "e820 RAM total {total} vs --mem {mem}\n{}",
        run.dump()
    );
    let rd = run.ok("boot.initrd");
    assert_eq!(rd.get("size"), initrd.len().to_string(), "{}", run.dump());
    assert_eq!(
        rd.get("fnv1a64"),
        format!("{:016x}", fnv1a(&initrd)),
        "{}",
        run.dump()
    );
    run
}

#[test]
fn test_guest_elf_boot_params_match_host() {
    if !require_kvm() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    boot_and_check(&guest_elf(), dir.path(), 128);
}

#[test]
fn test_guest_bzimage_boot_params_match_host() {
    if !require_kvm() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let bz = common::guest_bzimage(dir.path());
    boot_and_check(&bz, dir.path(), 96);
}

#[test]
fn test_guest_odd_mem_size_e820_matches() {
    if !require_kvm() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    boot_and_check(&guest_elf(), dir.path(), 37);
}

#[test]
fn test_guest_mem_above_3g_e820_leaves_mmio_hole() {
    if !require_kvm() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // 3.5 GiB: RAM must split around the 32-bit MMIO hole (guest memory is mapped lazily).
    boot_and_check(&guest_elf(), dir.path(), 3584);
}

#[test]
fn test_guest_exception_reported_and_reset_clean() {
    if !require_kvm() {
        return;
    }
    let run = VmSpec::guest(&guest_elf(), "fault").run();
    run.assert_no_crash();
    // #UD (vector 6) is delivered through the guest's IDT, which reports and resets.
    assert!(
        run.serial.contains("FATAL exception vector=6 "),
        "guest #UD not delivered to its IDT\n{}",
        run.dump()
    );
    assert_eq!(run.status.and_then(|s| s.code()), Some(0), "{}", run.dump());
}

#[test]
fn test_guest_breakpoint_reported_at_its_rip() {
    if !require_kvm() {
        return;
    }
    let run = VmSpec::guest(&guest_elf(), "int3").run();
    run.assert_no_crash();
    let site = run
        .serial
        .lines()
        .find_map(|l| l.strip_prefix("INT3 at "))
        .unwrap_or_else(|| panic!("guest did not reach int3\n{}", run.dump()))
        .trim()
        .to_string();
    if common::is_pvm() {
        // PVM cannot emulate int3 in guest kernel mode: the VMM must stop with one line
        // naming the faulting RIP (not hang, not panic, not exit 0).
        let code = run.status.and_then(|s| s.code());
        assert!(
            code.is_some_and(|c| c != 0),
            "exit {code:?}\n{}",
            run.dump()
        );
        let cause = run
            .stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        assert!(
            cause.contains(&format!("RIP {site}")),
            "last stderr line does not name RIP {site}\n{}",
            run.dump()
        );
    } else {
        assert!(
            run.serial.contains("FATAL exception vector=3 "),
            "{}",
            run.dump()
        );
        assert_eq!(run.status.and_then(|s| s.code()), Some(0), "{}", run.dump());
    }
}

#[test]
fn test_guest_triple_fault_ends_vm_without_hang() {
    if !require_kvm() {
        return;
    }
    let mut spec = VmSpec::guest(&guest_elf(), "triplefault");
    spec.timeout = std::time::Duration::from_secs(30);
    let run = spec.run();
    // A triple fault is a CPU shutdown: the VMM ends the VM (as a reset, exit 0, like
    // Firecracker, or as a failure with a cause), and never runs the guest on.
    run.assert_no_crash();
    assert!(run.serial.contains("TRIPLEFAULT now"), "{}", run.dump());
    assert!(
        !run.serial.contains("DONE"),
        "guest ran past its triple fault\n{}",
        run.dump()
    );
    if run.status.and_then(|s| s.code()) != Some(0) {
        assert!(
            !run.stderr.trim().is_empty(),
            "failure without a cause\n{}",
            run.dump()
        );
    }
}

#[test]
fn test_vmm_missing_kernel_fails_with_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = VmSpec::guest(&dir.path().join("no-such-kernel"), "boot");
    spec.timeout = std::time::Duration::from_secs(20);
    let run = spec.run();
    run.assert_no_crash();
    assert_ne!(run.status.and_then(|s| s.code()), Some(0), "{}", run.dump());
    assert!(
        !run.stderr.trim().is_empty(),
        "no cause on stderr\n{}",
        run.dump()
    );
    assert!(run.serial.is_empty(), "{}", run.dump());
}

#[test]
fn test_vmm_bad_arguments_fail_with_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing");
    let bad_dir = missing.join("x");
    let cases: Vec<Vec<String>> = vec![
        vec!["--cpus".into(), "0".into()],
        vec!["--cpus".into(), "255".into()],
        vec!["--mem".into(), "0".into()],
        vec!["--mem".into(), "99999999".into()],
        vec!["--disk".into(), missing.display().to_string()],
        vec!["--initrd".into(), missing.display().to_string()],
        vec!["--console".into(), bad_dir.display().to_string()],
        vec!["--serial".into(), bad_dir.display().to_string()],
    ];
    let kernel = guest_elf();
    for extra in cases {
        let mut cmd = std::process::Command::new(common::vmm_bin());
        cmd.arg("--kernel")
            .arg(&kernel)
            .args(["--cmdline", "tests=boot"])
            .args(&extra);
        let run = common::vm::run_command(&mut cmd, std::time::Duration::from_secs(20));
        run.assert_no_crash();
        assert_ne!(
            run.status.and_then(|s| s.code()),
            Some(0),
            "{extra:?}\n{}",
            run.dump()
        );
        assert!(
            run.serial.is_empty(),
            "guest ran with {extra:?}\n{}",
            run.dump()
        );
        let lines: Vec<&str> = run
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "{extra:?}: want one stderr line\n{}",
            run.dump()
        );
    }
}
