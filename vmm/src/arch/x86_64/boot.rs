//! Linux x86_64 direct boot: loads an ELF vmlinux or a bzImage (through `linux-loader`), the
//! initrd and the command line, and fills the zero page (`boot_params`) with the e820 map.

use std::fs::File;
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{load_cmdline, BzImage, Elf, KernelLoader, KernelLoaderResult};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::*;

/// Errors loading the kernel, initrd and boot parameters.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("Cannot open kernel {path}: {source}")]
    OpenKernel {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is neither an x86_64 ELF vmlinux nor a bzImage: {source}")]
    KernelFormat {
        path: String,
        #[source]
        source: linux_loader::loader::Error,
    },
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
    Cmdline(String),
    #[error("Cannot write {what} to guest memory: {source}")]
    Write {
        what: &'static str,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// Where the kernel landed and how to enter it.
#[derive(Debug, Clone)]
pub struct LoadedKernel {
    pub entry: u64,
    pub kernel_end: u64,
    pub setup_header: Option<linux_loader::loader::bootparam::setup_header>,
}

/// Loads an ELF vmlinux or a bzImage from `path` into guest memory.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, BootError> {
    let open = || {
        File::open(path).map_err(|source| BootError::OpenKernel {
            path: path.display().to_string(),
            source,
        })
    };
    let mut file = open()?;
    let himem = Some(GuestAddress(HIMEM_START));
    let result: KernelLoaderResult = match Elf::load(mem, None, &mut file, himem) {
        Ok(r) => r,
        Err(elf_err) => {
            let mut file = open()?;
            BzImage::load(mem, None, &mut file, himem).map_err(|bz_err| {
                // Say which format it looked like: an ELF magic means the ELF error matters.
                let mut magic = [0u8; 4];
                let is_elf = std::fs::File::open(path)
                    .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
                    .is_ok()
                    && magic == *b"\x7fELF";
                BootError::KernelFormat {
                    path: path.display().to_string(),
                    source: if is_elf { elf_err } else { bz_err },
                }
            })?
        }
    };
    let entry = match result.setup_header {
        Some(_) => result.kernel_load.raw_value() + BZIMAGE_64BIT_ENTRY_OFFSET,
        None => result.kernel_load.raw_value(),
    };
    Ok(LoadedKernel {
        entry,
        kernel_end: result.kernel_end,
        setup_header: result.setup_header,
    })
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
    let initrd_addr_max = kernel
        .setup_header
        .map(|h| u64::from(h.initrd_addr_max))
        .unwrap_or(0);
    let addr =
        initrd_address(mem_size, kernel.kernel_end, initrd_addr_max, size).map_err(|limit| {
            BootError::InitrdTooBig {
                size,
                kernel_end: kernel.kernel_end,
                limit,
            }
        })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| err(std::io::Error::other(e.to_string())))?;
    Ok((addr, size))
}

/// Builds a kernel command line object from a string.
pub fn cmdline(s: &str) -> Result<Cmdline, BootError> {
    let mut c = Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| BootError::Cmdline(e.to_string()))?;
    c.insert_str(s)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    Ok(c)
}

/// Writes the command line and the zero page.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    kernel: &LoadedKernel,
    cmdline: &Cmdline,
    initrd: Option<(u64, u64)>,
) -> Result<u64, BootError> {
    load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    let cmdline_len = cmdline
        .as_cstring()
        .map_err(|e| BootError::Cmdline(e.to_string()))?
        .as_bytes()
        .len();

    let mut params = boot_params::default();
    if let Some(hdr) = kernel.setup_header {
        params.hdr = hdr;
    } else {
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    for (i, (addr, size)) in e820_map(mem_size).into_iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr,
            size,
            r#type: E820_RAM,
        };
        params.e820_entries = (i + 1) as u8;
    }
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(|source| BootError::Write {
            what: "boot_params",
            source,
        })?;
    Ok(ZERO_PAGE_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_load_kernel_garbage_file_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("junk");
        std::fs::write(&p, vec![0x5a; 8192]).unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let e = load_kernel(&mem, &p).unwrap_err();
        assert!(
            e.to_string()
                .contains("neither an x86_64 ELF vmlinux nor a bzImage"),
            "{e}"
        );
    }

    #[test]
    fn test_load_kernel_missing_file_names_path() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let e = load_kernel(&mem, Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/vmlinux"), "{e}");
    }
}
