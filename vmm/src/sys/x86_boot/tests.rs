//! Tests of the linux-loader-free x86_64 loader. Where linux-loader builds (unix), the same
//! kernels go through `arch::x86_64::boot` too and guest memory and zero pages must match byte
//! for byte.

use super::*;

fn mem(size: usize) -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size)]).unwrap()
}

/// Deterministic filler bytes.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// An ELF64 vmlinux with two PT_LOAD segments (the second with bss) and one non-load header.
fn fake_elf() -> Vec<u8> {
    let segs: [(u64, u64, usize, u64); 2] = [
        // (paddr, offset, filesz, memsz)
        (0x100_0000, 0x1000, 0x3000, 0x3000),
        (0x100_4000, 0x4000, 0x1800, 0x8000),
    ];
    let mut f = vec![0u8; 0x6000];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = 2; // 64-bit
    f[5] = 1; // little-endian
    f[6] = 1;
    f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86_64
    f[24..32].copy_from_slice(&0x100_0000u64.to_le_bytes()); // entry
    f[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
    f[52..54].copy_from_slice(&64u16.to_le_bytes());
    f[54..56].copy_from_slice(&56u16.to_le_bytes());
    f[56..58].copy_from_slice(&3u16.to_le_bytes());
    for (i, (paddr, off, filesz, memsz)) in segs.iter().enumerate() {
        let ph = 64 + i * 56;
        f[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
        f[ph + 8..ph + 16].copy_from_slice(&off.to_le_bytes());
        f[ph + 16..ph + 24].copy_from_slice(&(paddr | 0xffff_ffff_8000_0000).to_le_bytes());
        f[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
        f[ph + 32..ph + 40].copy_from_slice(&(*filesz as u64).to_le_bytes());
        f[ph + 40..ph + 48].copy_from_slice(&memsz.to_le_bytes());
        let body = pattern(*filesz, i as u32 + 7);
        f[*off as usize..*off as usize + filesz].copy_from_slice(&body);
    }
    // A third header of type PT_GNU_STACK, which loaders skip.
    let ph = 64 + 2 * 56;
    f[ph..ph + 4].copy_from_slice(&0x6474_e551u32.to_le_bytes());
    f
}

/// A bzImage: 4 setup sectors with a 2.15 setup header, then the "compressed kernel".
fn fake_bzimage(payload: usize) -> Vec<u8> {
    let mut f = pattern(5 * 512, 3);
    f[HDR_SETUP_SECTS] = 4;
    f[HDR_BOOT_FLAG..HDR_BOOT_FLAG + 2].copy_from_slice(&KERNEL_BOOT_FLAG_MAGIC.to_le_bytes());
    f[HDR_HEADER..HDR_HEADER + 4].copy_from_slice(&KERNEL_HDR_MAGIC.to_le_bytes());
    f[HDR_VERSION..HDR_VERSION + 2].copy_from_slice(&0x020fu16.to_le_bytes());
    f[HDR_LOADFLAGS] = 1;
    f[HDR_CODE32_START..HDR_CODE32_START + 4].copy_from_slice(&0x10_0000u32.to_le_bytes());
    f[HDR_INITRD_ADDR_MAX..HDR_INITRD_ADDR_MAX + 4].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
    f.extend_from_slice(&pattern(payload, 11));
    f
}

fn write_file(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn test_elf_segments_loaded_at_paddr() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_file(&dir, "vmlinux", &fake_elf());
    let m = mem(32 << 20);
    let k = load_kernel(&m, &p).unwrap();
    assert_eq!(k.entry, 0x100_0000);
    assert_eq!(k.kernel_end, 0x100_4000 + 0x8000);
    assert!(k.setup_header.is_none());
    let mut got = vec![0u8; 0x1800];
    m.read_slice(&mut got, GuestAddress(0x100_4000)).unwrap();
    assert_eq!(got, pattern(0x1800, 8));
}

#[test]
fn test_bzimage_loaded_at_code32_start() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_file(&dir, "bzImage", &fake_bzimage(100_000));
    let m = mem(32 << 20);
    let k = load_kernel(&m, &p).unwrap();
    assert_eq!(k.entry, 0x10_0200);
    assert_eq!(k.kernel_end, 0x10_0000 + 100_000);
    let mut got = vec![0u8; 100_000];
    m.read_slice(&mut got, GuestAddress(0x10_0000)).unwrap();
    assert_eq!(got, pattern(100_000, 11));
}

#[test]
fn test_bad_kernels_rejected_with_reason() {
    let dir = tempfile::tempdir().unwrap();
    let m = mem(16 << 20);
    let junk = write_file(&dir, "junk", &[0x5a; 8192]);
    let e = load_kernel(&m, &junk).unwrap_err().to_string();
    assert!(
        e.contains("neither an x86_64 ELF vmlinux nor a bzImage"),
        "{e}"
    );
    let mut old = fake_bzimage(10);
    old[HDR_LOADFLAGS] = 0;
    let e = load_kernel(&m, &write_file(&dir, "old", &old))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not loaded high"), "{e}");
    let e = load_kernel(&m, &write_file(&dir, "short", b"\x7fELF\x02\x01")).unwrap_err();
    assert!(e.to_string().contains("shorter than an ELF header"), "{e}");
    let mut low = fake_elf();
    low[24..32].copy_from_slice(&0x1000u64.to_le_bytes());
    let e = load_kernel(&m, &write_file(&dir, "low", &low)).unwrap_err();
    assert!(e.to_string().contains("below 1 MiB"), "{e}");
    let e = load_kernel(&m, Path::new("/nonexistent/vmlinux")).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/vmlinux"), "{e}");
    // A segment beyond guest memory is an error, not a panic.
    let e = load_kernel(&mem(8 << 20), &write_file(&dir, "big", &fake_elf())).unwrap_err();
    assert!(matches!(e, BootError::Write { .. }), "{e}");
}

#[test]
fn test_cmdline_rules() {
    assert_eq!(
        cmdline("  console=ttyS0 ").unwrap(),
        Cmdline("console=ttyS0".into())
    );
    assert!(cmdline("a\u{e9}").is_err());
    assert!(cmdline("a\nb").is_err());
    assert!(cmdline(&"x".repeat(CMDLINE_MAX_SIZE - 1)).is_ok());
    assert!(cmdline(&"x".repeat(CMDLINE_MAX_SIZE)).is_err());
}

#[test]
fn test_initrd_too_big_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let m = mem(16 << 20);
    let k = load_kernel(&m, &write_file(&dir, "bz", &fake_bzimage(4 << 20))).unwrap();
    let big = write_file(&dir, "initrd", &vec![1u8; 12 << 20]);
    assert!(matches!(
        load_initrd(&m, 16 << 20, &k, &big),
        Err(BootError::InitrdTooBig { .. })
    ));
}

#[test]
fn test_zero_page_e820_and_header_fields() {
    let k = LoadedKernel {
        entry: 0x100_0000,
        kernel_end: 0x200_0000,
        setup_header: None,
    };
    let p = boot_params(
        5 << 30,
        &k,
        &cmdline("quiet").unwrap(),
        Some((0x800_0000, 0x1234)),
    );
    assert_eq!(le16(&p[HDR_BOOT_FLAG..]), KERNEL_BOOT_FLAG_MAGIC);
    assert_eq!(le32(&p[HDR_HEADER..]), KERNEL_HDR_MAGIC);
    assert_eq!(p[HDR_TYPE_OF_LOADER], 0xff);
    assert_eq!(le32(&p[HDR_CMDLINE_SIZE..]), 5);
    assert_eq!(le32(&p[HDR_RAMDISK_IMAGE..]), 0x800_0000);
    assert_eq!(p[E820_ENTRIES_OFF], 3);
    let third = E820_TABLE_OFF + 40;
    assert_eq!(le64(&p[third..]), MMIO_GAP_END);
    assert_eq!(le64(&p[third + 8..]), (5 << 30) - MMIO_GAP_START);
}

/// linux-loader's result for the same input must be identical.
#[cfg(all(unix, target_arch = "x86_64"))]
mod against_linux_loader {
    use super::*;
    use crate::arch::x86_64::boot as reference;

    fn both(kernel: &[u8], initrd: Option<&[u8]>, mem_size: usize, line: &str) {
        let dir = tempfile::tempdir().unwrap();
        let kp = write_file(&dir, "kernel", kernel);
        let ip = initrd.map(|b| write_file(&dir, "initrd", b));
        let (ours_mem, ref_mem) = (mem(mem_size), mem(mem_size));

        let ours = load_kernel(&ours_mem, &kp).unwrap();
        let theirs = reference::load_kernel(&ref_mem, &kp).unwrap();
        assert_eq!(ours.entry, theirs.entry);
        assert_eq!(ours.kernel_end, theirs.kernel_end);
        assert_eq!(ours.setup_header.is_some(), theirs.setup_header.is_some());

        let ours_initrd = ip
            .as_ref()
            .map(|p| load_initrd(&ours_mem, mem_size as u64, &ours, p).unwrap());
        let ref_initrd = ip
            .as_ref()
            .map(|p| reference::load_initrd(&ref_mem, mem_size as u64, &theirs, p).unwrap());
        assert_eq!(ours_initrd, ref_initrd);

        let a = write_boot_params(
            &ours_mem,
            mem_size as u64,
            &ours,
            &cmdline(line).unwrap(),
            ours_initrd,
        )
        .unwrap();
        let b = reference::write_boot_params(
            &ref_mem,
            mem_size as u64,
            &theirs,
            &reference::cmdline(line).unwrap(),
            ref_initrd,
        )
        .unwrap();
        assert_eq!(a, b);
        // Whole guest memory, compared in 1 MiB pieces to name where it differs.
        let mut x = vec![0u8; 1 << 20];
        let mut y = vec![0u8; 1 << 20];
        for mib in 0..(mem_size >> 20) {
            let at = GuestAddress((mib as u64) << 20);
            ours_mem.read_slice(&mut x, at).unwrap();
            ref_mem.read_slice(&mut y, at).unwrap();
            if x != y {
                let i = x.iter().zip(&y).position(|(p, q)| p != q).unwrap_or(0);
                panic!("guest memory differs at {:#x}", (mib << 20) + i);
            }
        }
    }

    #[test]
    fn test_elf_matches_linux_loader() {
        both(
            &fake_elf(),
            None,
            32 << 20,
            "console=ttyS0 reboot=k panic=1",
        );
    }

    #[test]
    fn test_bzimage_with_initrd_matches_linux_loader() {
        both(
            &fake_bzimage(300_000),
            Some(&pattern(70_001, 5)),
            64 << 20,
            "  console=ttyS0 root=/dev/vda ro  ",
        );
    }

    #[test]
    fn test_host_kernel_matches_linux_loader() {
        // A distribution kernel: the host's, or the Debian one other tests cache.
        let mut dirs = vec![std::path::PathBuf::from("/boot")];
        if let Some(home) = std::env::var_os("HOME") {
            let cache = std::path::PathBuf::from(home).join(".cache/vmctl");
            for sub in std::fs::read_dir(cache).into_iter().flatten().flatten() {
                dirs.extend(
                    std::fs::read_dir(sub.path())
                        .into_iter()
                        .flatten()
                        .flatten()
                        .map(|e| e.path()),
                );
            }
        }
        let kernel = dirs.iter().find_map(|d| {
            std::fs::read_dir(d)
                .ok()?
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz"))
                })
        });
        let Some(path) = kernel else {
            eprintln!("skipped: no vmlinuz in /boot or ~/.cache/vmctl (the synthetic bzImage test covers the same code)");
            return;
        };
        eprintln!("comparing with linux-loader on {}", path.display());
        let bytes = std::fs::read(&path).unwrap();
        both(&bytes, Some(b"initrd"), 256 << 20, "console=ttyS0");
    }
}
