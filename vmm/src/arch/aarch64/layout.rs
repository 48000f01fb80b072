//! Guest physical memory layout of an arm64 VM (close to QEMU's `virt` machine, so guest
//! kernels and tools see familiar addresses).
//!
//! ```text
//! 0x0800_0000  GICv3 distributor (64 KiB)
//! 0x080a_0000  GICv3 redistributors, 128 KiB per vCPU (up to MAX_CPUS)
//! 0x0900_0000  16550 UART (ttyS0), SPI 1
//! 0x0a00_0000  virtio-mmio windows, 4 KiB each, SPIs from VIRTIO_SPI_BASE
//! 0x4000_0000  RAM: kernel at RAM_START + text_offset ... initrd, device tree at the top
//! ```

use vm_memory::GuestAddress;

pub const GICD_BASE: u64 = 0x0800_0000;
pub const GICD_SIZE: u64 = 0x1_0000;
pub const GICR_BASE: u64 = 0x080a_0000;
/// One redistributor frame pair (RD + SGI) per vCPU.
pub const GICR_STRIDE: u64 = 0x2_0000;
/// Space reserved for redistributors, up to the UART.
pub const GICR_REGION_END: u64 = 0x0900_0000;
pub const UART_BASE: u64 = 0x0900_0000;
pub const UART_SIZE: u64 = 0x1000;
/// SPI number (the device tree's, INTID - 32) of the UART.
pub const UART_SPI: u32 = 1;
pub const VIRTIO_MMIO_START: u64 = 0x0a00_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// First SPI number of virtio-mmio devices.
pub const VIRTIO_SPI_BASE: u32 = 16;
/// SPIs the layout hands out (the GIC's own range is checked against this by the backend).
pub const SPI_COUNT: u32 = 64;
/// Most virtio-mmio devices: SPIs from VIRTIO_SPI_BASE up to SPI_COUNT.
pub const MAX_VIRTIO_DEVICES: u32 = SPI_COUNT - VIRTIO_SPI_BASE;
pub const RAM_START: u64 = 0x4000_0000;
/// Interrupt ID of SPI 0.
pub const SPI_INTID_BASE: u32 = 32;
/// vCPUs addressed by MPIDR Aff0 alone (one cluster, GICv3 SGI target lists of 16).
pub const MAX_CPUS: u8 = 16;
/// Architected PPIs of the generic timer (INTIDs 29, 30, 27, 26 minus 16).
pub const TIMER_PPI_SECURE_PHYS: u32 = 13;
pub const TIMER_PPI_PHYS: u32 = 14;
pub const TIMER_PPI_VIRT: u32 = 11;
pub const TIMER_PPI_HYP: u32 = 10;

// The fixed windows must not overlap; checked when the crate builds.
const _: () = {
    assert!(GICD_BASE + GICD_SIZE <= GICR_BASE);
    assert!(GICR_REGION_END <= UART_BASE);
    assert!(UART_BASE + UART_SIZE <= VIRTIO_MMIO_START);
    assert!(UART_SPI < VIRTIO_SPI_BASE);
    assert!(
        RAM_START % (2 << 20) == 0,
        "the arm64 boot protocol needs 2 MiB alignment"
    );
};

/// Errors laying out an arm64 VM.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("{0} vCPUs requested; arm64 VMs support 1 to {MAX_CPUS}")]
    CpuCount(u8),
    #[error("{mib} MiB of RAM at {RAM_START:#x} does not fit the host's {ipa_bits}-bit guest physical address space")]
    MemoryTooBig { mib: u64, ipa_bits: u32 },
    #[error("Memory size must be a non-zero multiple of 2 MiB, not {0} bytes")]
    MemorySize(u64),
    #[error("{0} virtio devices requested; at most {MAX_VIRTIO_DEVICES} fit the interrupt layout")]
    TooManyDevices(usize),
}

/// The single RAM range of a VM with `mem_size` bytes, checked against the IPA size.
pub fn ram_range(mem_size: u64, ipa_bits: u32) -> Result<(GuestAddress, usize), LayoutError> {
    if mem_size == 0 || mem_size % (2 << 20) != 0 {
        return Err(LayoutError::MemorySize(mem_size));
    }
    let too_big = LayoutError::MemoryTooBig {
        mib: mem_size >> 20,
        ipa_bits,
    };
    let end = RAM_START.checked_add(mem_size).ok_or(too_big.clone())?;
    if ipa_bits < 64 && end > 1u64 << ipa_bits {
        return Err(too_big);
    }
    let len = usize::try_from(mem_size).map_err(|_| too_big)?;
    Ok((GuestAddress(RAM_START), len))
}

/// The MPIDR_EL1 value of vCPU `index`: Aff0 = index, RES1 bit 31.
pub fn mpidr(index: u8) -> u64 {
    (1 << 31) | u64::from(index)
}

/// The device tree `reg` of vCPU `index` (MPIDR affinity bits only).
pub fn cpu_reg(index: u8) -> u32 {
    u32::from(index)
}

/// Checks the vCPU count against the redistributor space.
pub fn check_cpus(count: u8) -> Result<(), LayoutError> {
    let fits = u64::from(count) * GICR_STRIDE <= GICR_REGION_END - GICR_BASE;
    if count == 0 || count > MAX_CPUS || !fits {
        return Err(LayoutError::CpuCount(count));
    }
    Ok(())
}

/// Size of the redistributor region for `count` vCPUs.
pub fn gicr_size(count: u8) -> u64 {
    u64::from(count) * GICR_STRIDE
}

/// MMIO window and SPI number of virtio-mmio device `index`.
pub fn virtio_slot(index: usize) -> Result<(u64, u32), LayoutError> {
    let i = u32::try_from(index)
        .ok()
        .filter(|i| *i < MAX_VIRTIO_DEVICES)
        .ok_or(LayoutError::TooManyDevices(index + 1))?;
    Ok((
        VIRTIO_MMIO_START + u64::from(i) * VIRTIO_MMIO_SIZE,
        VIRTIO_SPI_BASE + i,
    ))
}

/// The GIC interrupt ID of SPI `spi`.
pub fn spi_intid(spi: u32) -> u32 {
    SPI_INTID_BASE + spi
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_ram_range_fits_ipa_space() {
        assert_eq!(
            ram_range(256 << 20, 36),
            Ok((GuestAddress(RAM_START), 256 << 20))
        );
        // 36 bits = 64 GiB of IPA space, RAM starts at 1 GiB: 63 GiB fit, 64 do not.
        assert!(ram_range(63 << 30, 36).is_ok());
        assert_eq!(
            ram_range(64 << 30, 36),
            Err(LayoutError::MemoryTooBig {
                mib: 64 << 10,
                ipa_bits: 36
            })
        );
    }

    #[test]
    fn test_ram_range_odd_size_rejected() {
        assert_eq!(ram_range(0, 40), Err(LayoutError::MemorySize(0)));
        assert_eq!(
            ram_range((1 << 20) + 4096, 40),
            Err(LayoutError::MemorySize((1 << 20) + 4096))
        );
    }

    #[test]
    fn test_device_windows_do_not_overlap() {
        assert!(GICR_BASE + gicr_size(MAX_CPUS) <= GICR_REGION_END);
        let (last, _) = virtio_slot(MAX_VIRTIO_DEVICES as usize - 1).unwrap();
        assert!(last + VIRTIO_MMIO_SIZE <= RAM_START);
    }

    #[test]
    fn test_virtio_slots_and_spis() {
        assert_eq!(virtio_slot(0), Ok((VIRTIO_MMIO_START, VIRTIO_SPI_BASE)));
        assert_eq!(
            virtio_slot(2),
            Ok((VIRTIO_MMIO_START + 0x2000, VIRTIO_SPI_BASE + 2))
        );
        assert_eq!(
            virtio_slot(MAX_VIRTIO_DEVICES as usize),
            Err(LayoutError::TooManyDevices(MAX_VIRTIO_DEVICES as usize + 1))
        );
        assert_eq!(spi_intid(UART_SPI), 33);
    }

    #[test]
    fn test_cpu_count_limits() {
        assert!(check_cpus(1).is_ok());
        assert!(check_cpus(MAX_CPUS).is_ok());
        assert_eq!(check_cpus(0), Err(LayoutError::CpuCount(0)));
        assert_eq!(
            check_cpus(MAX_CPUS + 1),
            Err(LayoutError::CpuCount(MAX_CPUS + 1))
        );
        assert_eq!(mpidr(3), 0x8000_0003);
    }
}
