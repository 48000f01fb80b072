//! Loading an arm64 Linux `Image` (Documentation/arch/arm64/booting.rst) and placing the
//! initrd and device tree around it. Written by hand: `linux-loader`'s PE loader needs the
//! `rawfd` vm-memory feature and is unix-only, and the format is one 64-byte header.
//!
//! Placement: the kernel at `RAM_START + text_offset` (RAM_START is 2 MiB aligned, as the
//! protocol requires), the device tree in the last 2 MiB of RAM, the initrd right below it.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::RAM_START;

/// `ARM\x64`, little-endian, at offset 56.
const IMAGE_MAGIC: u32 = 0x644d_5241;
const HEADER_LEN: usize = 64;
/// Kernels before 3.17 leave image_size zero and expect this text offset.
const LEGACY_TEXT_OFFSET: u64 = 0x8_0000;
/// The device tree may be at most 2 MiB and sits in its own 2 MiB at the top of RAM.
pub const FDT_MAX_SIZE: u64 = 2 << 20;
const PAGE_SIZE: u64 = 4096;

/// Errors loading an arm64 kernel and placing its boot data.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("Cannot read kernel {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Kernel is gzip-compressed (Image.gz); give the decompressed Image")]
    Compressed,
    #[error("Kernel is not an arm64 Image: {0}")]
    Format(&'static str),
    #[error("Kernel of {size} bytes at {load:#x} does not fit in {mem_size} bytes of RAM below the device tree")]
    KernelTooBig { size: u64, load: u64, mem_size: u64 },
    #[error("Initrd of {size} bytes does not fit between the kernel end ({kernel_end:#x}) and the device tree ({fdt:#x}); give the VM more memory")]
    InitrdTooBig {
        size: u64,
        kernel_end: u64,
        fdt: u64,
    },
    #[error("Cannot read initrd {path}: {source}")]
    Initrd {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot read the {what} file: {source}")]
    Copy {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot write {what} to guest memory: {source}")]
    Write {
        what: &'static str,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// The fields of the Image header that placement needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    pub text_offset: u64,
    /// Bytes the kernel occupies from its load address, bss included.
    pub image_size: u64,
}

fn le64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

/// Parses the 64-byte header at the start of an `Image`; `file_len` is the whole file's size.
pub fn parse_header(head: &[u8], file_len: u64) -> Result<ImageHeader, ImageError> {
    if head.len() >= 2 && head[0] == 0x1f && head[1] == 0x8b {
        return Err(ImageError::Compressed);
    }
    if head.len() < HEADER_LEN {
        return Err(ImageError::Format("shorter than the 64-byte header"));
    }
    let magic = u32::from_le_bytes([head[56], head[57], head[58], head[59]]);
    if magic != IMAGE_MAGIC {
        return Err(ImageError::Format("no ARM\\x64 magic at offset 56"));
    }
    let (text_offset, image_size, flags) = (le64(head, 8), le64(head, 16), le64(head, 24));
    if image_size == 0 {
        return Ok(ImageHeader {
            text_offset: LEGACY_TEXT_OFFSET,
            image_size: file_len,
        });
    }
    if flags & 1 != 0 {
        return Err(ImageError::Format("big-endian kernel"));
    }
    if text_offset % PAGE_SIZE != 0 || text_offset >= (2 << 20) {
        return Err(ImageError::Format(
            "text_offset is not a page multiple below 2 MiB",
        ));
    }
    Ok(ImageHeader {
        text_offset,
        image_size: image_size.max(file_len),
    })
}

/// Where everything goes in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootPlan {
    pub kernel_load: u64,
    pub kernel_end: u64,
    pub fdt: u64,
    /// (address, size)
    pub initrd: Option<(u64, u64)>,
}

/// Computes the placement of kernel, initrd and device tree in `mem_size` bytes of RAM.
pub fn plan(
    mem_size: u64,
    header: &ImageHeader,
    initrd_size: Option<u64>,
) -> Result<BootPlan, ImageError> {
    let kernel_load = RAM_START + header.text_offset;
    let ram_end = RAM_START.saturating_add(mem_size);
    let fdt = ram_end
        .checked_sub(FDT_MAX_SIZE)
        .filter(|f| *f >= RAM_START)
        .unwrap_or(RAM_START);
    let too_big = ImageError::KernelTooBig {
        size: header.image_size,
        load: kernel_load,
        mem_size,
    };
    let kernel_end = kernel_load
        .checked_add(header.image_size)
        .filter(|end| *end <= fdt)
        .ok_or(too_big)?;
    let initrd = match initrd_size {
        None => None,
        Some(size) => {
            let err = ImageError::InitrdTooBig {
                size,
                kernel_end,
                fdt,
            };
            let start = fdt
                .checked_sub(size)
                .map(|a| a & !(PAGE_SIZE - 1))
                .filter(|a| *a >= kernel_end)
                .ok_or(err)?;
            Some((start, size))
        }
    };
    Ok(BootPlan {
        kernel_load,
        kernel_end,
        fdt,
        initrd,
    })
}

fn read_err(path: &Path) -> impl Fn(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Read {
        path: path.display().to_string(),
        source,
    }
}

/// Reads the header of the kernel at `path`.
pub fn read_header(path: &Path) -> Result<ImageHeader, ImageError> {
    let mut f = File::open(path).map_err(read_err(path))?;
    let len = f.metadata().map_err(read_err(path))?.len();
    let mut head = Vec::with_capacity(HEADER_LEN);
    f.by_ref()
        .take(HEADER_LEN as u64)
        .read_to_end(&mut head)
        .map_err(read_err(path))?;
    parse_header(&head, len)
}

/// Copies `len` bytes of `file` to guest memory at `addr`, in chunks through a buffer (not
/// `read_exact_volatile_from`, whose `File` support is unix-only in vm-memory).
pub(crate) fn copy_file(
    mem: &GuestMemoryMmap,
    addr: u64,
    file: &mut File,
    len: u64,
    what: &'static str,
) -> Result<(), ImageError> {
    const CHUNK: usize = 1 << 20;
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    while done < len {
        let n = usize::try_from(len - done).map_or(CHUNK, |left| left.min(CHUNK));
        file.read_exact(&mut buf[..n])
            .map_err(|source| ImageError::Copy { what, source })?;
        mem.write_slice(&buf[..n], GuestAddress(addr + done))
            .map_err(|source| ImageError::Write { what, source })?;
        done += n as u64;
    }
    Ok(())
}

/// Loads the kernel and the initrd as `plan` says.
pub fn load(
    mem: &GuestMemoryMmap,
    plan: &BootPlan,
    kernel: &Path,
    initrd: Option<&Path>,
) -> Result<(), ImageError> {
    let mut f = File::open(kernel).map_err(read_err(kernel))?;
    let len = f.metadata().map_err(read_err(kernel))?.len();
    copy_file(mem, plan.kernel_load, &mut f, len, "kernel")?;
    if let (Some(path), Some((addr, size))) = (initrd, plan.initrd) {
        let ierr = |source| ImageError::Initrd {
            path: path.display().to_string(),
            source,
        };
        let mut f = File::open(path).map_err(ierr)?;
        copy_file(mem, addr, &mut f, size, "initrd")?;
    }
    Ok(())
}

/// Size of the initrd file at `path`.
pub fn initrd_size(path: &Path) -> Result<u64, ImageError> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|source| ImageError::Initrd {
            path: path.display().to_string(),
            source,
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    /// A minimal arm64 Image: header with the given text offset and size, then `body`.
    pub(crate) fn fake_image(text_offset: u64, image_size: u64, body: &[u8]) -> Vec<u8> {
        let mut h = vec![0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&0x1400_0010u32.to_le_bytes()); // b +64
        h[8..16].copy_from_slice(&text_offset.to_le_bytes());
        h[16..24].copy_from_slice(&image_size.to_le_bytes());
        h[24..32].copy_from_slice(&0xau64.to_le_bytes()); // LE, 4K pages, anywhere
        h[56..60].copy_from_slice(&IMAGE_MAGIC.to_le_bytes());
        h.extend_from_slice(body);
        h
    }

    #[test]
    fn test_header_modern_kernel_parsed() {
        let img = fake_image(0, 0x1_0000, &[0; 64]);
        let h = parse_header(&img, img.len() as u64).unwrap();
        assert_eq!(
            h,
            ImageHeader {
                text_offset: 0,
                image_size: 0x1_0000
            }
        );
    }

    #[test]
    fn test_header_legacy_zero_size_uses_defaults() {
        let img = fake_image(0, 0, &[0; 64]);
        let h = parse_header(&img, 12345).unwrap();
        assert_eq!(h.text_offset, LEGACY_TEXT_OFFSET);
        assert_eq!(h.image_size, 12345);
    }

    #[test]
    fn test_header_bad_inputs_rejected_with_reason() {
        let gz = [0x1f, 0x8b, 8, 0];
        assert!(matches!(parse_header(&gz, 4), Err(ImageError::Compressed)));
        assert!(parse_header(&[0; 10], 10)
            .unwrap_err()
            .to_string()
            .contains("64-byte header"));
        let mut img = fake_image(0, 4096, &[]);
        img[56] = b'X';
        assert!(parse_header(&img, 64)
            .unwrap_err()
            .to_string()
            .contains("magic"));
        let mut be = fake_image(0, 4096, &[]);
        be[24] = 1;
        assert!(parse_header(&be, 64)
            .unwrap_err()
            .to_string()
            .contains("big-endian"));
        let odd = fake_image(0x123, 4096, &[]);
        assert!(parse_header(&odd, 64).is_err());
    }

    #[test]
    fn test_plan_places_fdt_top_initrd_below() {
        let h = ImageHeader {
            text_offset: 0,
            image_size: 20 << 20,
        };
        let p = plan(256 << 20, &h, Some(5 << 20 | 123)).unwrap();
        assert_eq!(p.kernel_load, RAM_START);
        assert_eq!(p.kernel_end, RAM_START + (20 << 20));
        assert_eq!(p.fdt, RAM_START + (254 << 20));
        let (initrd, size) = p.initrd.unwrap();
        assert_eq!(size, 5 << 20 | 123);
        assert_eq!(initrd % PAGE_SIZE, 0);
        assert!(initrd + size <= p.fdt && initrd >= p.kernel_end);
        assert!(p.fdt - (initrd + size) < PAGE_SIZE);
    }

    #[test]
    fn test_plan_too_small_memory_rejected() {
        let h = ImageHeader {
            text_offset: 0x8_0000,
            image_size: 30 << 20,
        };
        assert!(matches!(
            plan(32 << 20, &h, None),
            Err(ImageError::KernelTooBig { .. })
        ));
        assert!(matches!(
            plan(64 << 20, &h, Some(40 << 20)),
            Err(ImageError::InitrdTooBig { .. })
        ));
        assert!(plan(64 << 20, &h, Some(20 << 20)).is_ok());
    }

    #[test]
    fn test_load_copies_kernel_and_initrd_to_plan() {
        let dir = tempfile::tempdir().unwrap();
        let kpath = dir.path().join("Image");
        let body: Vec<u8> = (0..8192u32).map(|i| i as u8).collect();
        std::fs::write(&kpath, fake_image(0x20_0000 - 0x1000, 0, &body)).unwrap();
        let ipath = dir.path().join("initrd");
        std::fs::write(&ipath, b"initrd-bytes").unwrap();
        let mem_size = 64 << 20;
        let mem =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(RAM_START), mem_size)]).unwrap();
        let h = read_header(&kpath).unwrap();
        assert_eq!(h.text_offset, LEGACY_TEXT_OFFSET);
        let p = plan(mem_size as u64, &h, Some(initrd_size(&ipath).unwrap())).unwrap();
        load(&mem, &p, &kpath, Some(&ipath)).unwrap();
        let mut got = [0u8; 4];
        mem.read_slice(&mut got, GuestAddress(p.kernel_load + 56))
            .unwrap();
        assert_eq!(u32::from_le_bytes(got), IMAGE_MAGIC);
        let b: u8 = mem
            .read_obj(GuestAddress(p.kernel_load + 64 + 300))
            .unwrap();
        assert_eq!(b, body[300]);
        let (ia, is) = p.initrd.unwrap();
        let mut ib = vec![0u8; is as usize];
        mem.read_slice(&mut ib, GuestAddress(ia)).unwrap();
        assert_eq!(ib, b"initrd-bytes");
    }

    #[test]
    fn test_read_header_missing_file_names_path() {
        let e = read_header(Path::new("/nonexistent/Image")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/Image"), "{e}");
    }
}
