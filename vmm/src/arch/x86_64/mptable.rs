//! Intel MultiProcessor Specification 1.4 tables, so the guest finds every vCPU, the IOAPIC and
//! how ISA interrupts are routed. Written by hand: no maintained crate builds them (Firecracker
//! and Cloud Hypervisor keep their own copies too) and the format is a few fixed-size records.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{EBDA_START, IOAPIC_ADDR, IOAPIC_PINS, LAPIC_ADDR};

/// The most vCPUs whose entries fit between the EBDA start and 0xa0000.
pub const MAX_CPUS: u8 = 32;

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;

/// Errors building MP tables.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("{0} vCPUs requested; the MP table supports 1 to {MAX_CPUS}")]
    CpuCount(u8),
    #[error("Cannot write the MP table to guest memory: {0}")]
    Write(#[source] vm_memory::GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Builds the floating pointer + configuration table as bytes, to be placed at `base`.
pub fn build(base: u64, num_cpus: u8) -> Result<Vec<u8>, MptableError> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(MptableError::CpuCount(num_cpus));
    }
    let ioapic_id = num_cpus;
    let config_addr = base + 16;

    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..num_cpus {
        entries.extend_from_slice(&[0, cpu, APIC_VERSION, 1 | if cpu == 0 { 2 } else { 0 }]);
        entries.extend_from_slice(&0x600u32.to_le_bytes()); // family 6 signature
        entries.extend_from_slice(&0x201u32.to_le_bytes()); // FPU + APIC present
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[1, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 1;
    // Every ISA IRQ, 0 included, is an ordinary interrupt (mp_INT) on the IOAPIC pin of the
    // same number: KVM's default GSI routing sends the in-kernel PIT to GSI 0 = pin 0. The
    // 8259 reaches the CPUs through LINT0 (ExtINT, below), not through an IOAPIC pin. Marking
    // IRQ 0 ExtINT instead left Linux without a timer pin: its check_timer() dereferenced
    // IRQ 0's missing IOAPIC data (oops in setup_IO_APIC, CR2 0x4, seen booting our kernel).
    for irq in 0..IOAPIC_PINS as u8 {
        entries.extend_from_slice(&[3, 0, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    entries.extend_from_slice(&[4, 3, 0, 0, 0, 0, 0xff, 0]); // ExtINT → LINT0 of all
    entries.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0xff, 1]); // NMI → LINT1 of all
    count += 2;

    let table_len = 44 + entries.len();
    let mut table = Vec::with_capacity(table_len);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&(table_len as u16).to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"VMCTL   ");
    table.extend_from_slice(b"000000000000");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    table.extend_from_slice(&0u16.to_le_bytes()); // extended table
    table.extend_from_slice(&[0, 0]);
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(16);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&(config_addr as u32).to_le_bytes());
    fp.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]);
    fp[10] = checksum(&fp);

    fp.extend_from_slice(&table);
    Ok(fp)
}

/// Writes the MP tables for `num_cpus` into the EBDA.
pub fn setup(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<(), MptableError> {
    let bytes = build(EBDA_START, num_cpus)?;
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_mptable_checksums_and_counts_valid() {
        for cpus in [1u8, 2, 8, MAX_CPUS] {
            let t = build(EBDA_START, cpus).unwrap();
            assert!(EBDA_START + t.len() as u64 <= 0xa0000, "fits below 640 KiB");
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(t[..16].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
            let cfg = &t[16..];
            assert_eq!(&cfg[0..4], b"PCMP");
            let len = u16::from_le_bytes([cfg[4], cfg[5]]) as usize;
            assert_eq!(len, cfg.len());
            assert_eq!(cfg.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
            let mut off = 44;
            let mut cpu_entries = 0;
            while off < len {
                let size = if cfg[off] == 0 { 20 } else { 8 };
                if cfg[off] == 0 {
                    cpu_entries += 1;
                }
                off += size;
            }
            assert_eq!(off, len);
            assert_eq!(cpu_entries, cpus);
        }
    }

    #[test]
    fn test_mptable_isa_irq0_is_an_ioapic_interrupt_not_extint() {
        let t = build(EBDA_START, 2).unwrap();
        let cfg = &t[16..];
        let mut off = 44;
        let mut irq0 = None;
        while off < cfg.len() {
            if cfg[off] == 3 && cfg[off + 5] == 0 {
                irq0 = Some((cfg[off + 1], cfg[off + 7]));
            }
            off += if cfg[off] == 0 { 20 } else { 8 };
        }
        // (interrupt type mp_INT = 0, IOAPIC pin 0): Linux's check_timer needs this entry.
        assert_eq!(irq0, Some((0, 0)));
    }

    #[test]
    fn test_mptable_cpu_count_out_of_range_rejected() {
        assert!(build(EBDA_START, 0).is_err());
        assert!(build(EBDA_START, MAX_CPUS + 1).is_err());
    }
}
