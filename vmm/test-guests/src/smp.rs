//! `mptable` (Intel MP spec 1.4 tables) and `smp` (INIT-SIPI-SIPI AP start-up).

use crate::apic::{lapic_enable, lapic_id, send_ipi};
use crate::io::{bytes, deadline, delay_ms, expired, rd, wr};
use crate::mem::{alloc_pages, root};
use crate::report::Report;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

extern "C" {
    static TRAMP_START: u8;
    static TRAMP_END: u8;
    static TRAMP_CR3: u8;
    static TRAMP_STACKS: u8;
    static TRAMP_ENTRY: u8;
    static TRAMP_COUNTER: u8;
}

const TRAMP_BASE: u64 = 0x10000;
const MAX_CPUS: usize = 32;

static AP_STARTED: AtomicU32 = AtomicU32::new(0);
/// `smp_blk`: the virtio-blk window AP `i` drives (0: none).
static AP_BLK: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// `smp_blk`: verified write+read rounds per AP, and how many APs finished.
static AP_BLK_GOOD: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];
static AP_BLK_DONE: AtomicU32 = AtomicU32::new(0);
/// `smp_spin`: APs busy-loop forever instead of halting.
pub static AP_SPIN: AtomicU32 = AtomicU32::new(0);
/// Write+read rounds each AP runs on its own disk.
pub const AP_BLK_ROUNDS: u32 = 16;
static AP_IDS: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(u32::MAX) }; MAX_CPUS];

fn checksum_ok(addr: u64, len: usize) -> bool {
    bytes(addr, len).iter().fold(0u8, |a, &b| a.wrapping_add(b)) == 0
}

fn find_mp() -> Option<u64> {
    for (start, end) in [(0x9fc00u64, 0xa0000u64), (0xf0000, 0x100000)] {
        let mut a = start;
        while a + 16 <= end {
            if rd::<u32>(a) == 0x5f50_4d5f && checksum_ok(a, 16) {
                return Some(a);
            }
            a += 16;
        }
    }
    None
}

/// What the MP table says.
#[derive(Default)]
pub struct MpInfo {
    pub cpus: u32,
    pub bsp_id: u32,
    pub bsp_count: u32,
    pub ioapic_id: u32,
    pub ioapic_addr: u32,
    pub buses: u32,
    pub ints: u32,
    pub lapic_addr: u32,
    pub ids_in_order: bool,
}

fn parse_mp() -> Result<(u64, MpInfo), &'static str> {
    let fp = find_mp().ok_or("no _MP_ floating pointer in 0x9fc00.. or 0xf0000..")?;
    let cfg = u64::from(rd::<u32>(fp + 4));
    if cfg == 0 || cfg >= 0x10_0000 {
        return Err("MP config table pointer missing or above 1 MiB");
    }
    if rd::<u32>(cfg) != 0x504d_4350 {
        return Err("config table signature is not PCMP");
    }
    let len = usize::from(rd::<u16>(cfg + 4));
    if len < 44 || !checksum_ok(cfg, len) {
        return Err("bad PCMP length or checksum");
    }
    let count = rd::<u16>(cfg + 0x22);
    let mut info = MpInfo {
        lapic_addr: rd::<u32>(cfg + 0x24),
        ids_in_order: true,
        ..Default::default()
    };
    let mut e = cfg + 0x2c;
    let end = cfg + len as u64;
    for _ in 0..count {
        if e >= end {
            return Err("entries run past the table length");
        }
        match rd::<u8>(e) {
            0 => {
                let (id, flags) = (u32::from(rd::<u8>(e + 1)), rd::<u8>(e + 3));
                if flags & 1 != 0 {
                    if id != info.cpus {
                        info.ids_in_order = false;
                    }
                    info.cpus += 1;
                }
                if flags & 2 != 0 {
                    info.bsp_id = id;
                    info.bsp_count += 1;
                }
                e += 20;
            }
            1 => {
                info.buses += 1;
                e += 8;
            }
            2 => {
                info.ioapic_id = u32::from(rd::<u8>(e + 1));
                info.ioapic_addr = rd::<u32>(e + 4);
                e += 8;
            }
            3 => {
                info.ints += 1;
                e += 8;
            }
            4 => e += 8,
            _ => return Err("unknown MP entry type"),
        }
    }
    Ok((fp, info))
}

/// `mptable`: the MP tables are present, checksummed and consistent.
pub fn test_mptable(r: &mut Report) -> u32 {
    match parse_mp() {
        Ok((fp, m)) => {
            let good = m.cpus >= 1
                && m.bsp_count == 1
                && m.bsp_id == 0
                && m.ids_in_order
                && m.ioapic_addr == 0xfec0_0000
                && m.ioapic_id == m.cpus
                && m.buses >= 1;
            r.check(
                "smp.mptable",
                good,
                format_args!(
                    "fp={fp:#x} cpus={} bsp={} bsps={} ids_in_order={} ioapic_id={} ioapic={:#x} buses={} ints={} lapic={:#x}",
                    m.cpus, m.bsp_id, m.bsp_count, m.ids_in_order as u8, m.ioapic_id, m.ioapic_addr, m.buses, m.ints, m.lapic_addr
                ),
            );
            m.cpus
        }
        Err(e) => {
            r.fail("smp.mptable", format_args!("{e}"));
            0
        }
    }
}

#[no_mangle]
extern "C" fn ap_entry(index: u32) -> ! {
    let id = lapic_id();
    if let Some(slot) = AP_IDS.get(index as usize) {
        slot.store(id, Ordering::SeqCst);
    }
    AP_STARTED.fetch_add(1, Ordering::SeqCst);
    if AP_SPIN.load(Ordering::SeqCst) != 0 {
        // `smp_spin`: never halt; the VMM has to kick this vCPU out of KVM_RUN at reset.
        let mut n = 0u64;
        loop {
            n = core::hint::black_box(n.wrapping_add(1));
            core::hint::spin_loop();
        }
    }
    if let Some(base) = AP_BLK.get(index as usize).map(|b| b.load(Ordering::SeqCst)) {
        if base != 0 {
            let good = ap_blk_job(index, base);
            AP_BLK_GOOD[index as usize].store(good, Ordering::SeqCst);
            AP_BLK_DONE.fetch_add(1, Ordering::SeqCst);
        }
    }
    loop {
        // SAFETY: parking this AP with interrupts off.
        unsafe { core::arch::asm!("cli; hlt", options(nomem, nostack)) }
    }
}

fn sym(s: &u8) -> u64 {
    s as *const u8 as u64
}

/// `smp`: start every AP with INIT-SIPI-SIPI and have each report its APIC id.
pub fn test_smp(cpus: u32, r: &mut Report) {
    if cpus <= 1 {
        return r.skip(
            "smp.ap",
            format_args!("MP table lists {cpus} CPU(s): no AP to start"),
        );
    }
    let n_aps = (cpus - 1).min(MAX_CPUS as u32 - 1);
    let Some(bsp) = lapic_enable() else {
        return r.fail("smp.ap", format_args!("cannot map the local APIC"));
    };
    let Some(stacks) = alloc_pages(u64::from(n_aps)) else {
        return r.fail("smp.ap", format_args!("out of memory for AP stacks"));
    };
    // SAFETY: the trampoline symbols are labels in this image's text.
    let (start, end, cr3, stk, entry, counter) = unsafe {
        (
            sym(&TRAMP_START),
            sym(&TRAMP_END),
            sym(&TRAMP_CR3),
            sym(&TRAMP_STACKS),
            sym(&TRAMP_ENTRY),
            sym(&TRAMP_COUNTER),
        )
    };
    let at = |s: u64| TRAMP_BASE + (s - start);
    // SAFETY: 0x10000.. is guest RAM the boot contract leaves free; the source is
    // this image's trampoline, which does not overlap it.
    unsafe {
        core::ptr::copy_nonoverlapping(
            start as *const u8,
            TRAMP_BASE as *mut u8,
            (end - start) as usize,
        )
    }
    wr::<u64>(at(cr3), root());
    wr::<u64>(at(stk), stacks);
    wr::<u64>(at(entry), ap_entry as *const () as u64);
    wr::<u32>(at(counter), 0);
    let t0 = crate::io::rdtsc();
    // INIT, then two STARTUPs with vector 0x10, to all excluding self.
    send_ipi(0, 0x000c_4500);
    delay_ms(10);
    for _ in 0..2 {
        send_ipi(0, 0x000c_4600 | (TRAMP_BASE >> 12) as u32);
        delay_ms(1);
    }
    // Generous: 31 emulated APs may share 2 busy host cores.
    let d = deadline(10_000);
    while AP_STARTED.load(Ordering::SeqCst) < n_aps && !expired(d) {
        core::hint::spin_loop();
    }
    let cycles = crate::io::rdtsc().wrapping_sub(t0);
    let started = AP_STARTED.load(Ordering::SeqCst);
    let mut seen = [false; MAX_CPUS];
    let mut distinct = true;
    for slot in AP_IDS.iter().take(n_aps as usize) {
        let id = slot.load(Ordering::SeqCst) as usize;
        match seen.get_mut(id) {
            Some(s) if !*s && id != bsp as usize => *s = true,
            _ => distinct = false,
        }
    }
    crate::print!("TEST smp.ap {} bsp={bsp} cpus={cpus} started={started} distinct={} tsc_cycles={cycles} ap_ids=",
        if started == n_aps && distinct { "ok" } else { "FAIL" }, distinct as u8);
    for (i, slot) in AP_IDS.iter().take(n_aps as usize).enumerate() {
        let sep = if i == 0 { "" } else { "," };
        crate::print!("{sep}{}", slot.load(Ordering::SeqCst) as i32);
    }
    crate::io::Serial::byte(b'\n');
    if started == n_aps && distinct {
        r.pass += 1;
    } else {
        r.fail += 1;
    }
}

/// The byte AP `index` writes in round `round` (sector `round` of its disk).
pub fn ap_byte(index: u32, round: u32) -> u8 {
    (0x10 * (index + 1) + round) as u8
}

/// One AP's job: AP_BLK_ROUNDS writes of sector `round` on its own disk, each read back.
fn ap_blk_job(index: u32, base: u64) -> u32 {
    let Ok(mut b) = crate::blk::Blk::init(crate::virtio::Mmio { base }) else {
        return 0;
    };
    let mut good = 0;
    for round in 0..AP_BLK_ROUNDS {
        let byte = ap_byte(index, round);
        crate::io::fill(b.data, byte, 512);
        if b.write(u64::from(round), 512) != crate::blk::S_OK {
            continue;
        }
        crate::io::fill(b.data, 0, 512);
        if b.read(u64::from(round), 512) == crate::blk::S_OK
            && bytes(b.data, 512).iter().all(|&c| c == byte)
        {
            good += 1;
        }
    }
    good
}

/// `smp_blk`: every AP drives its own virtio-blk disk at the same time (AP i uses the
/// i-th disk), so MMIO exits and device workers run concurrently.
pub fn test_smp_blk(cpus: u32, disks: &[u64], r: &mut Report) {
    let n_aps = (cpus.saturating_sub(1) as usize)
        .min(disks.len())
        .min(MAX_CPUS - 1);
    if n_aps == 0 {
        return r.fail("smp.blk", format_args!("needs 2+ CPUs and 1+ disks"));
    }
    for (slot, &base) in AP_BLK.iter().zip(disks.iter()).take(n_aps) {
        slot.store(base, Ordering::SeqCst);
    }
    test_smp(cpus, r);
    let d = deadline(20_000);
    while AP_BLK_DONE.load(Ordering::SeqCst) < n_aps as u32 && !expired(d) {
        core::hint::spin_loop();
    }
    let done = AP_BLK_DONE.load(Ordering::SeqCst);
    let good: u32 = AP_BLK_GOOD
        .iter()
        .take(n_aps)
        .map(|g| g.load(Ordering::SeqCst))
        .sum();
    r.check(
        "smp.blk",
        done == n_aps as u32 && good == n_aps as u32 * AP_BLK_ROUNDS,
        format_args!("aps={n_aps} done={done} good_rounds={good} rounds_per_ap={AP_BLK_ROUNDS}"),
    );
}
