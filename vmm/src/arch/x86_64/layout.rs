//! Guest physical memory layout (the same as Firecracker's where it matters to Linux).
//!
//! ```text
//! 0x0000_0500  GDT                 0x0000_7000  boot_params ("zero page")
//! 0x0000_0520  IDT (empty)         0x0000_8ff0  boot stack top
//! 0x0000_9000  PML4, 0xa000 PDPT, 0xb000 PD (first 1 GiB, 2 MiB pages)
//! 0x0002_0000  kernel command line 0x0009_fc00  EBDA: MP tables
//! 0x0010_0000  kernel              ...          initrd at the top of low RAM
//! 0xc000_0000  MMIO gap (1 GiB): virtio-mmio devices at 0xd000_0000, IOAPIC, LAPIC
//! 0x1_0000_0000 RAM above 3 GiB continues here
//! ```

use vm_memory::GuestAddress;

pub const GDT_START: u64 = 0x500;
pub const IDT_START: u64 = 0x520;
pub const ZERO_PAGE_START: u64 = 0x7000;
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
pub const CMDLINE_START: u64 = 0x20000;
/// Linux x86_64 COMMAND_LINE_SIZE.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the Extended BIOS Data Area, where the MP tables go.
pub const EBDA_START: u64 = 0x9fc00;
/// Where the kernel is loaded and high memory starts.
pub const HIMEM_START: u64 = 0x10_0000;
/// The 32-bit MMIO hole below 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// virtio-mmio device windows, one 4 KiB page each.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// First IOAPIC pin used for virtio-mmio devices (0-4 are the PIT, keyboard, cascade, COM2/4
/// and COM1 legacy lines).
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Legacy lines.
pub const COM1_IRQ: u32 = 4;
/// The CMOS RTC's line: Linux's rtc_cmos claims it, so virtio devices skip it.
pub const RTC_IRQ: u32 = 8;
/// How many virtio-mmio devices have an IOAPIC pin.
pub const MAX_VIRTIO_IRQS: u32 = IOAPIC_PINS - VIRTIO_IRQ_BASE - 1;

/// The IOAPIC pin of virtio device `i` (< [`MAX_VIRTIO_IRQS`]): from [`VIRTIO_IRQ_BASE`] up,
/// skipping [`RTC_IRQ`]. Sharing it with the RTC made the device's probe fail
/// ("genirq: Flags mismatch irq 8", seen for virtio-vsock in a Linux guest).
pub fn virtio_irq(i: u32) -> u32 {
    let irq = VIRTIO_IRQ_BASE + i;
    if irq >= RTC_IRQ {
        irq + 1
    } else {
        irq
    }
}
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// IRQ pins of KVM's in-kernel IOAPIC.
pub const IOAPIC_PINS: u32 = 24;

/// Guest RAM ranges for `mem_size` bytes of memory, skipping the MMIO gap.
pub fn ram_ranges(mem_size: u64) -> Vec<(GuestAddress, usize)> {
    if mem_size <= MMIO_GAP_START {
        vec![(GuestAddress(0), mem_size as usize)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START as usize),
            (
                GuestAddress(MMIO_GAP_END),
                (mem_size - MMIO_GAP_START) as usize,
            ),
        ]
    }
}

/// End (exclusive) of RAM below the MMIO gap.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

/// Linux x86 boot protocol values every loader writes or checks.
pub const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
pub const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
pub const KERNEL_LOADER_OTHER: u8 = 0xff;
pub const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x100_0000;
pub const E820_RAM: u32 = 1;
/// 64-bit bzImages are entered this far past their load address (`startup_64`).
pub const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// Default `initrd_addr_max` when the kernel does not say (Linux boot protocol).
pub const DEFAULT_INITRD_ADDR_MAX: u64 = 0x7fff_ffff;
const PAGE_SIZE: u64 = 4096;

/// The e820 map for `mem_size` bytes of RAM: low RAM below the EBDA, RAM from 1 MiB up to the
/// MMIO gap, and the rest above 4 GiB. Shared by every x86_64 loader.
pub fn e820_map(mem_size: u64) -> Vec<(u64, u64)> {
    let mut map = vec![(0, EBDA_START)];
    let low_end = low_ram_end(mem_size);
    if low_end > HIMEM_START {
        map.push((HIMEM_START, low_end - HIMEM_START));
    }
    if mem_size > MMIO_GAP_START {
        map.push((MMIO_GAP_END, mem_size - MMIO_GAP_START));
    }
    map
}

/// Where an initrd of `size` bytes goes: page-aligned, as high as possible in low RAM below
/// the kernel's `initrd_addr_max` (0: the protocol default), and above the kernel's end.
/// `Err(limit)` when it does not fit, with the highest usable address.
pub fn initrd_address(
    mem_size: u64,
    kernel_end: u64,
    initrd_addr_max: u64,
    size: u64,
) -> Result<u64, u64> {
    let max_addr = if initrd_addr_max == 0 {
        DEFAULT_INITRD_ADDR_MAX
    } else {
        initrd_addr_max
    };
    let limit = low_ram_end(mem_size).min(max_addr + 1);
    match limit.checked_sub(size) {
        Some(top) if top & !(PAGE_SIZE - 1) >= kernel_end => Ok(top & !(PAGE_SIZE - 1)),
        _ => Err(limit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_e820_small_memory_two_ram_ranges() {
        assert_eq!(
            e820_map(64 << 20),
            vec![(0, EBDA_START), (HIMEM_START, (64 << 20) - HIMEM_START)]
        );
    }

    #[test]
    fn test_e820_large_memory_skips_mmio_gap() {
        let m = e820_map(5 << 30);
        assert_eq!(m[1], (HIMEM_START, MMIO_GAP_START - HIMEM_START));
        assert_eq!(m[2], (MMIO_GAP_END, (5 << 30) - MMIO_GAP_START));
    }

    #[test]
    fn test_initrd_address_top_of_low_ram_or_refused() {
        assert_eq!(
            initrd_address(64 << 20, 0x20_0000, 0, 0x1800),
            Ok((64 << 20) - 0x2000)
        );
        assert_eq!(
            initrd_address(8 << 30, 0x20_0000, 0x3fff_ffff, 4096),
            Ok(0x3fff_f000)
        );
        assert_eq!(
            initrd_address(64 << 20, 0x3f0_0001, 0, 1 << 20),
            Err(64 << 20)
        );
        assert_eq!(initrd_address(64 << 20, 0, 0, u64::MAX), Err(64 << 20));
    }

    #[test]
    fn test_ram_ranges_small_memory_one_range() {
        assert_eq!(ram_ranges(256 << 20), vec![(GuestAddress(0), 256 << 20)]);
    }

    #[test]
    fn test_ram_ranges_large_memory_skips_gap() {
        let r = ram_ranges(4 << 30);
        assert_eq!(r[0], (GuestAddress(0), MMIO_GAP_START as usize));
        assert_eq!(r[1], (GuestAddress(MMIO_GAP_END), (1 << 30) as usize));
        assert_eq!(low_ram_end(4 << 30), MMIO_GAP_START);
    }
}
