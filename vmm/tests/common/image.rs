//! Flat image and bzImage wrapper built from the test guest's ELF.
//!
//! Written by hand: linux-loader only *loads* kernels into guest memory; producing a
//! bzImage needs the program-header table and a setup header, which is ~100 lines.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ImageError {
    #[error("Not a little-endian x86_64 ELF64 file")]
    NotElf,
    #[error("ELF header or program header table out of bounds")]
    Truncated,
    #[error("No PT_LOAD segment")]
    NoLoad,
    #[error("Segment at {paddr:#x} is below 1 MiB or overflows")]
    BadSegment { paddr: u64 },
    #[error("Image spans {0} bytes, more than the 64 MiB this wrapper accepts")]
    TooBig(u64),
    #[error("Entry {entry:#x} is not load address + 0x200 ({load:#x} + 0x200)")]
    BadEntry { entry: u64, load: u64 },
}

/// The memory image of the ELF's PT_LOAD segments, from the lowest p_paddr, with
/// zero-filled bss.
pub struct FlatImage {
    pub load: u64,
    pub entry: u64,
    pub bytes: Vec<u8>,
}

fn field(data: &[u8], off: usize, len: usize) -> Result<u64, ImageError> {
    let end = off.checked_add(len).ok_or(ImageError::Truncated)?;
    let b = data.get(off..end).ok_or(ImageError::Truncated)?;
    Ok(b.iter()
        .rev()
        .fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
}

struct Segment {
    offset: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

/// Flattens an x86_64 ELF into the bytes it occupies in guest memory.
pub fn flat_image(elf: &[u8]) -> Result<FlatImage, ImageError> {
    if elf.get(..4) != Some(b"\x7fELF".as_slice())
        || elf.get(4) != Some(&2)
        || elf.get(5) != Some(&1)
        || field(elf, 0x12, 2)? != 0x3e
    {
        return Err(ImageError::NotElf);
    }
    let entry = field(elf, 0x18, 8)?;
    let phoff = field(elf, 0x20, 8)? as usize;
    let phentsize = field(elf, 0x36, 2)? as usize;
    let phnum = field(elf, 0x38, 2)? as usize;
    let mut segs = Vec::new();
    for i in 0..phnum {
        let ph = i
            .checked_mul(phentsize)
            .and_then(|o| o.checked_add(phoff))
            .ok_or(ImageError::Truncated)?;
        if field(elf, ph, 4)? != 1 {
            continue;
        }
        segs.push(Segment {
            offset: field(elf, ph + 8, 8)?,
            paddr: field(elf, ph + 24, 8)?,
            filesz: field(elf, ph + 32, 8)?,
            memsz: field(elf, ph + 40, 8)?,
        });
    }
    let load = segs
        .iter()
        .map(|s| s.paddr)
        .min()
        .ok_or(ImageError::NoLoad)?;
    let mut end = load;
    for s in &segs {
        let e = s
            .paddr
            .checked_add(s.memsz.max(s.filesz))
            .ok_or(ImageError::BadSegment { paddr: s.paddr })?;
        if s.paddr < 0x10_0000 {
            return Err(ImageError::BadSegment { paddr: s.paddr });
        }
        end = end.max(e);
    }
    let span = end - load;
    if span > 64 << 20 {
        return Err(ImageError::TooBig(span));
    }
    let mut bytes = vec![0u8; span as usize];
    for s in &segs {
        let src_end = s
            .offset
            .checked_add(s.filesz)
            .ok_or(ImageError::Truncated)?;
        let src = elf
            .get(s.offset as usize..src_end as usize)
            .ok_or(ImageError::Truncated)?;
        let at = (s.paddr - load) as usize;
        bytes[at..at + src.len()].copy_from_slice(src);
    }
    Ok(FlatImage { load, entry, bytes })
}

/// Offsets in the setup header (Documentation/arch/x86/boot.rst).
pub mod hdr {
    pub const SETUP_SECTS: usize = 0x1f1;
    pub const ROOT_FLAGS: usize = 0x1f2;
    pub const SYSSIZE: usize = 0x1f4;
    pub const VID_MODE: usize = 0x1fa;
    pub const BOOT_FLAG: usize = 0x1fe;
    pub const JUMP: usize = 0x200;
    pub const HEADER: usize = 0x202;
    pub const VERSION: usize = 0x206;
    pub const LOADFLAGS: usize = 0x211;
    pub const CODE32_START: usize = 0x214;
    pub const INITRD_ADDR_MAX: usize = 0x22c;
    pub const KERNEL_ALIGNMENT: usize = 0x230;
    pub const RELOCATABLE: usize = 0x234;
    pub const MIN_ALIGNMENT: usize = 0x235;
    pub const XLOADFLAGS: usize = 0x236;
    pub const CMDLINE_SIZE: usize = 0x238;
    pub const PREF_ADDRESS: usize = 0x258;
    pub const INIT_SIZE: usize = 0x260;
}

fn put(buf: &mut [u8], off: usize, val: u64, len: usize) {
    for (i, b) in buf[off..off + len].iter_mut().enumerate() {
        *b = (val >> (8 * i)) as u8;
    }
}

/// Wraps the guest ELF as a bzImage: a 1024-byte setup area (setup_sects = 1) with a
/// boot protocol 2.15 header, then the flat protected-mode image loaded at 0x100000.
/// The VMM enters 64-bit bzImages at load + 0x200, where the guest has a `jmp`.
pub fn bzimage_from_elf(elf: &[u8]) -> Result<Vec<u8>, ImageError> {
    let flat = flat_image(elf)?;
    if flat.entry != flat.load + 0x200 {
        return Err(ImageError::BadEntry {
            entry: flat.entry,
            load: flat.load,
        });
    }
    let len = flat.bytes.len() as u64;
    let mut img = vec![0u8; 1024];
    put(&mut img, hdr::SETUP_SECTS, 1, 1);
    put(&mut img, hdr::ROOT_FLAGS, 1, 2);
    put(&mut img, hdr::SYSSIZE, len.div_ceil(16), 4);
    put(&mut img, hdr::VID_MODE, 0xffff, 2);
    put(&mut img, hdr::BOOT_FLAG, 0xaa55, 2);
    // A short jmp over the header, as real kernels have (never executed here).
    put(&mut img, hdr::JUMP, 0x66eb, 2);
    put(&mut img, hdr::HEADER, 0x5372_6448, 4); // "HdrS"
    put(&mut img, hdr::VERSION, 0x020f, 2);
    put(&mut img, hdr::LOADFLAGS, 0x01, 1); // LOADED_HIGH
    put(&mut img, hdr::CODE32_START, flat.load, 4);
    put(&mut img, hdr::INITRD_ADDR_MAX, 0x7fff_ffff, 4);
    put(&mut img, hdr::KERNEL_ALIGNMENT, 0x20_0000, 4);
    put(&mut img, hdr::RELOCATABLE, 0, 1);
    put(&mut img, hdr::MIN_ALIGNMENT, 21, 1);
    put(&mut img, hdr::XLOADFLAGS, 0x1, 2); // XLF_KERNEL_64
    put(&mut img, hdr::CMDLINE_SIZE, 4095, 4);
    put(&mut img, hdr::PREF_ADDRESS, flat.load, 8);
    put(&mut img, hdr::INIT_SIZE, len.div_ceil(4096) * 4096, 4);
    img.extend_from_slice(&flat.bytes);
    Ok(img)
}
