//! One call that prepares an arm64 direct boot in guest memory: load the `Image` and initrd
//! where `image::plan` says, build and write the device tree, and return the boot vCPU's
//! registers. The engine then creates vCPUs, sets these on vCPU 0 and runs; secondary vCPUs
//! start through PSCI CPU_ON.

use std::path::Path;

use vm_memory::GuestMemoryMmap;

use super::fdt::{self, FdtConfig, FdtError, VirtioMmioNode};
use super::image::{self, ImageError};
use super::layout::{self, LayoutError};
use crate::hv::Aarch64BootRegs;

/// Errors preparing an arm64 boot.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Fdt(#[from] FdtError),
}

/// What to boot and which devices the guest should find.
#[derive(Debug, Clone)]
pub struct BootConfig<'a> {
    pub kernel: &'a Path,
    pub initrd: Option<&'a Path>,
    pub cmdline: &'a str,
    pub cpus: u8,
    pub mem_size: u64,
    /// The 16550 UART at `layout::UART_BASE` is on the MMIO bus.
    pub uart: bool,
    /// How many virtio-mmio devices sit at `layout::virtio_slot(0..n)`.
    pub virtio_devices: usize,
}

/// Loads kernel and initrd, writes the device tree and returns the boot registers.
pub fn prepare(mem: &GuestMemoryMmap, cfg: &BootConfig<'_>) -> Result<Aarch64BootRegs, BootError> {
    layout::check_cpus(cfg.cpus)?;
    let virtio = (0..cfg.virtio_devices)
        .map(|i| {
            layout::virtio_slot(i).map(|(base, spi)| VirtioMmioNode {
                base,
                size: layout::VIRTIO_MMIO_SIZE,
                spi,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let header = image::read_header(cfg.kernel)?;
    let initrd_size = cfg.initrd.map(image::initrd_size).transpose()?;
    let plan = image::plan(cfg.mem_size, &header, initrd_size)?;
    image::load(mem, &plan, cfg.kernel, cfg.initrd)?;
    let blob = fdt::build(&FdtConfig {
        cpus: cfg.cpus,
        mem_size: cfg.mem_size,
        cmdline: cfg.cmdline.to_string(),
        initrd: plan.initrd,
        uart: cfg.uart,
        virtio,
    })?;
    fdt::write(mem, plan.fdt, &blob)?;
    Ok(Aarch64BootRegs {
        pc: plan.kernel_load,
        fdt: plan.fdt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::aarch64::image::tests::fake_image;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn test_prepare_places_everything_and_points_x0_at_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("Image");
        std::fs::write(&kernel, fake_image(0, 3 << 20, &[0xaa; 4096])).unwrap();
        let initrd = dir.path().join("initrd");
        std::fs::write(&initrd, vec![0x17; 10_000]).unwrap();
        let mem_size = 128u64 << 20;
        let (start, len) = layout::ram_range(mem_size, 36).unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(start, len)]).unwrap();
        let regs = prepare(
            &mem,
            &BootConfig {
                kernel: &kernel,
                initrd: Some(&initrd),
                cmdline: "console=ttyS0",
                cpus: 2,
                mem_size,
                uart: true,
                virtio_devices: 3,
            },
        )
        .unwrap();
        assert_eq!(regs.pc, layout::RAM_START);
        assert_eq!(
            regs.fdt % 8,
            0,
            "the boot protocol wants an 8-byte aligned tree"
        );
        let magic: u32 = mem.read_obj(GuestAddress(regs.fdt)).unwrap();
        assert_eq!(u32::from_be(magic), 0xd00d_feed);
        let b: u8 = mem.read_obj(GuestAddress(regs.pc + 64)).unwrap();
        assert_eq!(b, 0xaa);
    }

    #[test]
    fn test_prepare_rejects_bad_counts_before_loading() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(layout::RAM_START), 4 << 20)])
            .unwrap();
        let cfg = BootConfig {
            kernel: Path::new("/nonexistent"),
            initrd: None,
            cmdline: "",
            cpus: 0,
            mem_size: 4 << 20,
            uart: false,
            virtio_devices: 0,
        };
        assert!(matches!(
            prepare(&mem, &cfg),
            Err(BootError::Layout(LayoutError::CpuCount(0)))
        ));
        let cfg = BootConfig {
            cpus: 1,
            virtio_devices: 1000,
            ..cfg
        };
        assert!(matches!(
            prepare(&mem, &cfg),
            Err(BootError::Layout(LayoutError::TooManyDevices(_)))
        ));
    }
}
