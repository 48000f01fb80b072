//! Page allocation (a bump allocator after the image) and MMIO mappings above 1 GiB.

use crate::io::{fill, rd, wr};
use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

extern "C" {
    static __image_end: u8;
}

static NEXT: AtomicU64 = AtomicU64::new(0);
static LIMIT: AtomicU64 = AtomicU64::new(0);

/// Starts allocating after the image, below `ram_top` (from e820) and 1 GiB (identity map).
pub fn init(ram_top: u64) {
    let end = core::ptr::addr_of!(__image_end) as u64;
    NEXT.store((end + 0xfff) & !0xfff, Ordering::SeqCst);
    LIMIT.store(ram_top.min(1 << 30), Ordering::SeqCst);
}

/// Allocates `n` zeroed 4 KiB pages; None when RAM runs out.
pub fn alloc_pages(n: u64) -> Option<u64> {
    let size = n * 4096;
    let at = NEXT.fetch_add(size, Ordering::SeqCst);
    if at + size > LIMIT.load(Ordering::SeqCst) {
        return None;
    }
    fill(at, 0, size as usize);
    Some(at)
}

/// Reserves `n` 4 KiB pages without touching them (a test that measures the host's memory
/// decides itself when they are dirtied); None when RAM runs out.
pub fn reserve_pages(n: u64) -> Option<u64> {
    let size = n.checked_mul(4096)?;
    let at = NEXT.fetch_add(size, Ordering::SeqCst);
    if at.checked_add(size)? > LIMIT.load(Ordering::SeqCst) {
        return None;
    }
    Some(at)
}

fn cr3() -> u64 {
    let v: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack)) }
    v
}

/// The current page-table root (for the AP trampoline).
pub fn root() -> u64 {
    cr3() & !0xfff
}

/// Maps the 2 MiB page holding `addr` uncached, identity, if it is above the VMM's
/// 1 GiB identity map (LAPIC, IOAPIC, virtio windows). Returns false when out of pages.
pub fn map_mmio(addr: u64) -> bool {
    map_2m(addr, 0x9b)
}

/// Identity-maps RAM `[addr, addr + len)` (write-back) beyond the VMM's first 1 GiB.
pub fn map_ram(addr: u64, len: u64) -> bool {
    let mut a = addr & !0x1f_ffff;
    while a < addr.saturating_add(len) {
        if !map_2m(a, 0x83) {
            return false;
        }
        a += 0x20_0000;
    }
    true
}

/// Maps the 2 MiB page holding `addr` with PD entry flags `flags` (always with PS).
fn map_2m(addr: u64, flags: u64) -> bool {
    if addr < (1 << 30) {
        return true;
    }
    if addr >= 1 << 47 {
        return false;
    }
    let pml4 = root();
    let l4 = pml4 + 8 * ((addr >> 39) & 511);
    if rd::<u64>(l4) & 1 == 0 {
        let Some(p) = alloc_pages(1) else {
            return false;
        };
        wr(l4, p | 3);
    }
    let pdpt = rd::<u64>(l4) & 0x000f_ffff_ffff_f000;
    let l3 = pdpt + 8 * ((addr >> 30) & 511);
    if rd::<u64>(l3) & 1 == 0 {
        let Some(p) = alloc_pages(1) else {
            return false;
        };
        wr(l3, p | 3);
    }
    let pd = rd::<u64>(l3) & 0x000f_ffff_ffff_f000;
    let l2 = pd + 8 * ((addr >> 21) & 511);
    // 0x9b: present | rw | pwt | pcd | 2 MiB page; 0x83: present | rw | 2 MiB page
    wr(l2, (addr & !0x1f_ffff) | flags);
    // SAFETY: reloading CR3 flushes the TLB; the tables stay valid.
    unsafe { asm!("mov cr3, {}", in(reg) cr3(), options(nostack)) }
    true
}
