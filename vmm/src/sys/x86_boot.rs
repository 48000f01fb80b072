//! x86_64 Linux direct boot without `linux-loader`: ELF vmlinux and bzImage loading, the
//! initrd, the command line and the zero page (`boot_params`), for hosts where linux-loader
//! does not build (Windows: it enables vm-memory's unix-only `rawfd` feature).
//!
//! It mirrors `arch::x86_64::boot` function for function, so the builtin engine picks one or
//! the other with a single `use`, and it reuses the same layout (`arch::x86_64::layout`), long
//! mode setup (`regs`) and MP tables. It builds on every host, and on Linux its results are
//! compared byte for byte with linux-loader's (tests below), so both paths stay identical.
//!
//! Written by hand because no maintained crate loads a Linux kernel without `rawfd`: the work
//! is reading one ELF header table or one setup header and copying bytes.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::layout::*;

/// Zero page layout (Linux arch/x86/include/uapi/asm/bootparam.h).
pub const BOOT_PARAMS_SIZE: usize = 4096;
const E820_ENTRIES_OFF: usize = 0x1e8;
/// The setup header: from 0x1f1 up to (not including) 0x26c.
pub const SETUP_HEADER_OFF: usize = 0x1f1;
pub const SETUP_HEADER_LEN: usize = 0x26c - 0x1f1;
const E820_TABLE_OFF: usize = 0x2d0;
const E820_MAX_ENTRIES: usize = 128;
/// Offsets of setup header fields, absolute in the zero page (and in a bzImage file).
const HDR_SETUP_SECTS: usize = 0x1f1;
const HDR_BOOT_FLAG: usize = 0x1fe;
const HDR_HEADER: usize = 0x202;
const HDR_VERSION: usize = 0x206;
const HDR_TYPE_OF_LOADER: usize = 0x210;
const HDR_LOADFLAGS: usize = 0x211;
const HDR_CODE32_START: usize = 0x214;
const HDR_RAMDISK_IMAGE: usize = 0x218;
const HDR_RAMDISK_SIZE: usize = 0x21c;
const HDR_CMD_LINE_PTR: usize = 0x228;
const HDR_INITRD_ADDR_MAX: usize = 0x22c;
const HDR_KERNEL_ALIGNMENT: usize = 0x230;
const HDR_CMDLINE_SIZE: usize = 0x238;

const ELF_HEADER_LEN: usize = 64;
const ELF_PHDR_LEN: usize = 56;
const PT_LOAD: u32 = 1;

/// Errors loading the kernel, initrd and boot parameters.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("Cannot open kernel {path}: {source}")]
    OpenKernel {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is neither an x86_64 ELF vmlinux nor a bzImage: {why}")]
    KernelFormat { path: String, why: &'static str },
    #[error("Cannot read initrd {path}: {source}")]
    Initrd {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Initrd of {size} bytes does not fit in guest RAM between the kernel end ({kernel_end:#x}) and {limit:#x}; give the VM more memory")]
    InitrdTooBig {
        size: u64,
        kernel_end: u64,
        limit: u64,
    },
    #[error("Kernel command line is invalid: {0}")]
    Cmdline(&'static str),
    #[error("Cannot write {what} to guest memory: {source}")]
    Write {
        what: &'static str,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    #[error("Cannot read {what} from the kernel file: {source}")]
    Read {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Where the kernel landed and how to enter it.
#[derive(Debug, Clone)]
pub struct LoadedKernel {
    pub entry: u64,
    pub kernel_end: u64,
    /// The bzImage's setup header bytes (zero page offsets 0x1f1..0x26c), None for ELF.
    pub setup_header: Option<Vec<u8>>,
}

impl LoadedKernel {
    fn initrd_addr_max(&self) -> Option<u64> {
        let h = self.setup_header.as_ref()?;
        let off = HDR_INITRD_ADDR_MAX - SETUP_HEADER_OFF;
        Some(u64::from(le32(h.get(off..off + 4)?)))
    }
}

fn le16(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Copies `len` bytes from `file` at its current position to guest memory at `addr`.
fn copy_to_guest(
    mem: &GuestMemoryMmap,
    addr: u64,
    file: &mut impl Read,
    len: u64,
    what: &'static str,
) -> Result<(), BootError> {
    const CHUNK: usize = 1 << 20;
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    while done < len {
        let n = usize::try_from(len - done).map_or(CHUNK, |left| left.min(CHUNK));
        file.read_exact(&mut buf[..n])
            .map_err(|source| BootError::Read { what, source })?;
        let at = addr.checked_add(done).ok_or(BootError::Write {
            what,
            source: vm_memory::GuestMemoryError::InvalidGuestAddress(GuestAddress(addr)),
        })?;
        mem.write_slice(&buf[..n], GuestAddress(at))
            .map_err(|source| BootError::Write { what, source })?;
        done += n as u64;
    }
    Ok(())
}

fn load_elf(
    mem: &GuestMemoryMmap,
    file: &mut File,
    path: &Path,
) -> Result<LoadedKernel, BootError> {
    let bad = |why| BootError::KernelFormat {
        path: path.display().to_string(),
        why,
    };
    let mut h = [0u8; ELF_HEADER_LEN];
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_exact(&mut h))
        .map_err(|_| bad("shorter than an ELF header"))?;
    if &h[..4] != b"\x7fELF" {
        return Err(bad("no ELF magic"));
    }
    if h[5] != 1 {
        return Err(bad("big-endian ELF"));
    }
    let entry = le64(&h[24..]);
    let phoff = le64(&h[32..]);
    let phentsize = usize::from(le16(&h[54..]));
    let phnum = usize::from(le16(&h[56..]));
    if phentsize != ELF_PHDR_LEN {
        return Err(bad("ELF program header size is not 56"));
    }
    if phoff < ELF_HEADER_LEN as u64 {
        return Err(bad("ELF program headers overlap the ELF header"));
    }
    if entry < HIMEM_START {
        return Err(bad("ELF entry point below 1 MiB"));
    }
    let mut table = vec![0u8; phnum * ELF_PHDR_LEN];
    file.seek(SeekFrom::Start(phoff))
        .and_then(|_| file.read_exact(&mut table))
        .map_err(|_| bad("ELF program headers cut short"))?;
    let mut kernel_end = 0u64;
    for ph in table.chunks_exact(ELF_PHDR_LEN) {
        let (p_type, offset, paddr) = (le32(ph), le64(&ph[8..]), le64(&ph[24..]));
        let (filesz, memsz) = (le64(&ph[32..]), le64(&ph[40..]));
        if p_type != PT_LOAD || filesz == 0 {
            continue;
        }
        file.seek(SeekFrom::Start(offset))
            .map_err(|source| BootError::Read {
                what: "an ELF segment",
                source,
            })?;
        copy_to_guest(mem, paddr, file, filesz, "kernel segment")?;
        let end = paddr
            .checked_add(memsz)
            .ok_or(bad("ELF segment wraps around"))?;
        kernel_end = kernel_end.max(end);
    }
    Ok(LoadedKernel {
        entry,
        kernel_end,
        setup_header: None,
    })
}

fn load_bzimage(
    mem: &GuestMemoryMmap,
    file: &mut File,
    path: &Path,
) -> Result<LoadedKernel, BootError> {
    let bad = |why| BootError::KernelFormat {
        path: path.display().to_string(),
        why,
    };
    let size = file
        .metadata()
        .map_err(|source| BootError::Read {
            what: "the kernel size",
            source,
        })?
        .len();
    let mut hdr = vec![0u8; SETUP_HEADER_LEN];
    file.seek(SeekFrom::Start(SETUP_HEADER_OFF as u64))
        .and_then(|_| file.read_exact(&mut hdr))
        .map_err(|_| bad("shorter than a bzImage setup header"))?;
    let at = |off: usize| off - SETUP_HEADER_OFF;
    if le32(&hdr[at(HDR_HEADER)..]) != KERNEL_HDR_MAGIC {
        return Err(bad("no HdrS magic"));
    }
    if le16(&hdr[at(HDR_VERSION)..]) < 0x200 || hdr[at(HDR_LOADFLAGS)] & 1 == 0 {
        return Err(bad("boot protocol older than 2.00 or not loaded high"));
    }
    let sects = match hdr[at(HDR_SETUP_SECTS)] {
        0 => 4,
        n => u64::from(n),
    };
    let setup_size = (sects + 1) * 512;
    let kernel_size = size
        .checked_sub(setup_size)
        .ok_or(bad("bzImage shorter than its setup sectors"))?;
    let load = u64::from(le32(&hdr[at(HDR_CODE32_START)..]));
    if load < HIMEM_START {
        return Err(bad("bzImage code32_start below 1 MiB"));
    }
    file.seek(SeekFrom::Start(setup_size))
        .map_err(|source| BootError::Read {
            what: "the protected-mode kernel",
            source,
        })?;
    copy_to_guest(mem, load, file, kernel_size, "kernel")?;
    Ok(LoadedKernel {
        entry: load + BZIMAGE_64BIT_ENTRY_OFFSET,
        kernel_end: load + kernel_size,
        setup_header: Some(hdr),
    })
}

/// Loads an ELF vmlinux or a bzImage from `path` into guest memory.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, BootError> {
    let mut file = File::open(path).map_err(|source| BootError::OpenKernel {
        path: path.display().to_string(),
        source,
    })?;
    let mut magic = [0u8; 4];
    let is_elf = file.read_exact(&mut magic).is_ok() && magic == *b"\x7fELF";
    if is_elf {
        load_elf(mem, &mut file, path)
    } else {
        load_bzimage(mem, &mut file, path)
    }
}

/// Loads the initrd as high as possible in low RAM; returns (address, size).
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    kernel: &LoadedKernel,
    path: &Path,
) -> Result<(u64, u64), BootError> {
    let err = |source| BootError::Initrd {
        path: path.display().to_string(),
        source,
    };
    let mut file = File::open(path).map_err(err)?;
    let size = file.metadata().map_err(err)?.len();
    let initrd_addr_max = kernel.initrd_addr_max().unwrap_or(0);
    let addr =
        initrd_address(mem_size, kernel.kernel_end, initrd_addr_max, size).map_err(|limit| {
            BootError::InitrdTooBig {
                size,
                kernel_end: kernel.kernel_end,
                limit,
            }
        })?;
    copy_to_guest(mem, addr, &mut file, size, "initrd")?;
    Ok((addr, size))
}

/// A validated kernel command line (printable ASCII, fits COMMAND_LINE_SIZE with its NUL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmdline(String);

/// Builds a kernel command line from a string, with linux-loader's rules.
pub fn cmdline(s: &str) -> Result<Cmdline, BootError> {
    let s = s.trim();
    if !s.chars().all(|c| matches!(c, ' '..='~')) {
        return Err(BootError::Cmdline(
            "it has characters other than printable ASCII",
        ));
    }
    if s.len() + 1 > CMDLINE_MAX_SIZE {
        return Err(BootError::Cmdline("it is longer than 2047 bytes"));
    }
    Ok(Cmdline(s.to_string()))
}

fn put(page: &mut [u8], off: usize, bytes: &[u8]) {
    page[off..off + bytes.len()].copy_from_slice(bytes);
}

/// The zero page for the given kernel, command line and initrd.
pub fn boot_params(
    mem_size: u64,
    kernel: &LoadedKernel,
    cmdline: &Cmdline,
    initrd: Option<(u64, u64)>,
) -> Vec<u8> {
    let mut p = vec![0u8; BOOT_PARAMS_SIZE];
    match &kernel.setup_header {
        Some(h) => put(&mut p, SETUP_HEADER_OFF, h),
        None => {
            put(&mut p, HDR_BOOT_FLAG, &KERNEL_BOOT_FLAG_MAGIC.to_le_bytes());
            put(&mut p, HDR_HEADER, &KERNEL_HDR_MAGIC.to_le_bytes());
            put(
                &mut p,
                HDR_KERNEL_ALIGNMENT,
                &KERNEL_MIN_ALIGNMENT_BYTES.to_le_bytes(),
            );
        }
    }
    p[HDR_TYPE_OF_LOADER] = KERNEL_LOADER_OTHER;
    put(
        &mut p,
        HDR_CMD_LINE_PTR,
        &(CMDLINE_START as u32).to_le_bytes(),
    );
    put(
        &mut p,
        HDR_CMDLINE_SIZE,
        &(cmdline.0.len() as u32).to_le_bytes(),
    );
    if let Some((addr, size)) = initrd {
        put(&mut p, HDR_RAMDISK_IMAGE, &(addr as u32).to_le_bytes());
        put(&mut p, HDR_RAMDISK_SIZE, &(size as u32).to_le_bytes());
    }
    let map = e820_map(mem_size);
    for (i, (addr, size)) in map.iter().take(E820_MAX_ENTRIES).enumerate() {
        let off = E820_TABLE_OFF + i * 20;
        put(&mut p, off, &addr.to_le_bytes());
        put(&mut p, off + 8, &size.to_le_bytes());
        put(&mut p, off + 16, &E820_RAM.to_le_bytes());
        p[E820_ENTRIES_OFF] = (i + 1) as u8;
    }
    p
}

/// Writes the command line and the zero page; returns the zero page's address.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    kernel: &LoadedKernel,
    cmdline: &Cmdline,
    initrd: Option<(u64, u64)>,
) -> Result<u64, BootError> {
    let mut line = cmdline.0.clone().into_bytes();
    line.push(0);
    mem.write_slice(&line, GuestAddress(CMDLINE_START))
        .map_err(|source| BootError::Write {
            what: "the command line",
            source,
        })?;
    let page = boot_params(mem_size, kernel, cmdline, initrd);
    mem.write_slice(&page, GuestAddress(ZERO_PAGE_START))
        .map_err(|source| BootError::Write {
            what: "boot_params",
            source,
        })?;
    Ok(ZERO_PAGE_START)
}

#[cfg(test)]
mod tests;
