//! The long-mode entry state of the boot CPU: GDT, identity page tables, registers.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::*;
use crate::hv::{SegmentDesc, X86BootRegs};

/// Errors writing the boot structures.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("Cannot write {what} to guest memory: {source}")]
    Write {
        what: &'static str,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// A GDT entry from flags, base and limit.
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// Decodes a GDT entry into the segment register KVM wants.
fn segment(entry: u64, table_index: u16) -> SegmentDesc {
    SegmentDesc {
        selector: table_index * 8,
        base: ((entry >> 16) & 0x00ff_ffff) | (((entry >> 56) & 0xff) << 24),
        limit: {
            let raw = ((entry & 0xffff) | (((entry >> 48) & 0xf) << 16)) as u32;
            if (entry >> 55) & 1 == 1 {
                (raw << 12) | 0xfff
            } else {
                raw
            }
        },
        type_: ((entry >> 40) & 0xf) as u8,
        s: (entry >> 44) & 1 == 1,
        dpl: ((entry >> 45) & 3) as u8,
        present: (entry >> 47) & 1 == 1,
        long: (entry >> 53) & 1 == 1,
        db: (entry >> 54) & 1 == 1,
        granularity: (entry >> 55) & 1 == 1,
    }
}

/// The GDT: null, 64-bit code (selector 0x08), data (0x10), TSS (0x18).
pub const GDT: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

/// Writes GDT, IDT and identity page tables (first 1 GiB) and returns the boot registers.
pub fn setup_long_mode(
    mem: &GuestMemoryMmap,
    entry: u64,
    zero_page: u64,
) -> Result<X86BootRegs, RegsError> {
    let w = |what, r: Result<(), vm_memory::GuestMemoryError>| {
        r.map_err(|source| RegsError::Write { what, source })
    };
    for (i, e) in GDT.iter().enumerate() {
        w(
            "GDT",
            mem.write_obj(*e, GuestAddress(GDT_START + i as u64 * 8)),
        )?;
    }
    w("IDT", mem.write_obj(0u64, GuestAddress(IDT_START)))?;
    // PML4[0] -> PDPT, PDPT[0] -> PD, PD maps 512 × 2 MiB.
    w(
        "PML4",
        mem.write_obj(PDPTE_START | 0x03, GuestAddress(PML4_START)),
    )?;
    w(
        "PDPT",
        mem.write_obj(PDE_START | 0x03, GuestAddress(PDPTE_START)),
    )?;
    for i in 0..512u64 {
        w(
            "PD",
            mem.write_obj((i << 21) | 0x83, GuestAddress(PDE_START + i * 8)),
        )?;
    }
    Ok(X86BootRegs {
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rsi: zero_page,
        cr3: PML4_START,
        gdt_base: GDT_START,
        gdt_limit: (std::mem::size_of_val(&GDT) - 1) as u16,
        idt_base: IDT_START,
        idt_limit: 7,
        code_segment: segment(GDT[1], 1),
        data_segment: segment(GDT[2], 2),
        tss_segment: segment(GDT[3], 3),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn test_gdt_segments_decode_to_long_mode_flat() {
        let cs = segment(GDT[1], 1);
        assert_eq!((cs.selector, cs.base, cs.limit), (0x08, 0, 0xffff_ffff));
        assert!(cs.long && cs.present && cs.s && cs.granularity && !cs.db);
        assert_eq!(cs.type_, 0xb);
        let ds = segment(GDT[2], 2);
        assert_eq!((ds.selector, ds.type_), (0x10, 0x3));
        assert!(ds.db && !ds.long);
        let tss = segment(GDT[3], 3);
        assert_eq!((tss.selector, tss.type_, tss.s), (0x18, 0xb, false));
    }

    #[test]
    fn test_page_tables_identity_map_first_gib() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let regs = setup_long_mode(&mem, 0x100000, ZERO_PAGE_START).unwrap();
        assert_eq!(regs.cr3, PML4_START);
        let pde: u64 = mem.read_obj(GuestAddress(PDE_START + 511 * 8)).unwrap();
        assert_eq!(pde, (511 << 21) | 0x83);
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4 & !0xfff, PDPTE_START);
    }
}
