//! `fuzz`: a guest-driven fuzz smoke of the VMM's virtio-mmio transport and virtio-blk
//! request path through real KVM exits. A xorshift PRNG (seed from `fuzz_seed=`) writes
//! random descriptor tables, available rings, register values and access widths. Every
//! address the device could DMA to is confined to scratch pages, so the guest cannot
//! corrupt itself; at the end a fresh device must still serve a good read.

use crate::blk::Blk;
use crate::io::{rd, wr};
use crate::mem::alloc_pages;
use crate::report::Report;
use crate::virtio::{self, Mmio};

/// Scratch the device may DMA into: random buffer addresses fall in the first 160 KiB
/// and lengths stay below 64 KiB, so 256 KiB holds every access.
const DMA_PAGES: u64 = 64;
/// Pages random ring addresses (QueueDesc/Driver/Device) point into.
const RING_PAGES: u64 = 8;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// A value below `n` (< 2^32) by multiply-shift: no `div`, which is slow to emulate.
    fn below(&mut self, n: u64) -> u64 {
        ((self.next() >> 32) * n.min(u64::from(u32::MAX))) >> 32
    }
}

/// Random descriptors and available entries on the live queue, then a notify.
fn random_chains(b: &mut Blk, rng: &mut Rng, dma: u64) {
    let size = u64::from(b.q.size);
    for i in 0..size {
        let addr = match rng.below(16) {
            0 => 0x0000_7fff_0000_0000 + rng.below(1 << 20),
            1 => u64::MAX - rng.below(4096),
            _ => dma + rng.below(160 << 10),
        };
        let len = match rng.below(16) {
            0 => u32::MAX,
            1 => 0,
            _ => rng.below(64 << 10) as u32,
        };
        let flags = rng.below(8) as u16;
        let next = rng.below(size + 4) as u16;
        b.q.set_desc(i as u16, addr, len, flags, next);
    }
    // Request headers with random types and sectors in some buffers.
    for k in 0..4u64 {
        let h = dma + 4096 * k;
        wr::<u32>(h, rng.below(16) as u32);
        wr::<u64>(h + 8, rng.below(4096));
    }
    // Publish at most what keeps the ring within its size (a bigger jump is the
    // separate hostile_idx case).
    let used = rd::<u16>(b.q.used + 2);
    let pending = b.q.next_avail.wrapping_sub(used) as u64;
    let n = rng.below(4).min(size.saturating_sub(pending));
    for _ in 0..n {
        let head = rng.below(size + 2) as u16;
        b.q.push_avail(head);
    }
    b.q.notify();
}

/// One random register access of a random width.
fn random_register(m: Mmio, rng: &mut Rng, rings: u64) {
    const REGS: [u64; 20] = [
        0x000, 0x004, 0x008, 0x00c, 0x010, 0x014, 0x020, 0x024, 0x030, 0x034, 0x038, 0x044, 0x050,
        0x060, 0x064, 0x070, 0x0fc, 0x100, 0x104, 0x120,
    ];
    let ring_regs = [0x080u64, 0x084, 0x090, 0x094, 0x0a0, 0x0a4];
    let write = rng.below(2) == 0;
    let (off, val) = if rng.below(4) == 0 {
        // Ring address registers: low halves inside the ring scratch, high halves 0.
        let reg = ring_regs[rng.below(6) as usize];
        let v = if reg & 4 == 0 {
            (rings + rng.below(RING_PAGES * 4096)) & !0xf
        } else {
            0
        };
        (reg, v)
    } else if rng.below(8) == 0 {
        (rng.below(0x1000) & !3, rng.next())
    } else {
        (
            REGS[rng.below(REGS.len() as u64) as usize],
            rng.next() & 0xffff,
        )
    };
    let a = m.base + off;
    match (write, rng.below(8)) {
        (true, 0) => wr::<u8>(a, val as u8),
        (true, 1) => wr::<u16>(a & !1, val as u16),
        (true, _) => wr::<u32>(a, val as u32),
        (false, 0) => drop(rd::<u8>(a)),
        (false, 1) => drop(rd::<u64>(a & !7)),
        (false, _) => drop(rd::<u32>(a)),
    }
}

/// Runs `iters` random steps against the blk device at `mmio`.
pub fn test_fuzz(mmio: Mmio, seed: u64, iters: u32, r: &mut Report) {
    let (Some(dma), Some(rings)) = (alloc_pages(DMA_PAGES), alloc_pages(RING_PAGES)) else {
        return r.fail("fuzz", format_args!("out of memory"));
    };
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut b = match Blk::init(mmio) {
        Ok(b) => b,
        Err(e) => return r.fail("fuzz", format_args!("blk init: {e}")),
    };
    let (mut chains, mut regs, mut resets) = (0u32, 0u32, 0u32);
    let mut init_cycles = 0u64;
    let (mut chain_cycles, mut reg_cycles) = (0u64, 0u64);
    let mut reinit = |b: &mut Blk| {
        let t = crate::io::rdtsc();
        if let Ok(fresh) = Blk::init(mmio) {
            *b = fresh;
        }
        init_cycles += crate::io::rdtsc().wrapping_sub(t);
    };
    for _ in 0..iters {
        match rng.below(16) {
            0..=7 => {
                let t = crate::io::rdtsc();
                random_chains(&mut b, &mut rng, dma);
                chain_cycles += crate::io::rdtsc().wrapping_sub(t);
                chains += 1;
            }
            8..=14 => {
                let t = crate::io::rdtsc();
                random_register(mmio, &mut rng, rings);
                reg_cycles += crate::io::rdtsc().wrapping_sub(t);
                regs += 1;
            }
            _ => {
                reinit(&mut b);
                resets += 1;
            }
        }
        if mmio.status() & 0x40 != 0 && rng.below(2) == 0 {
            // NEEDS_RESET: usually recover, sometimes keep poking the broken device.
            reinit(&mut b);
            resets += 1;
        }
    }
    let _ = mmio.reset();
    let good = Blk::init(mmio).map(|mut f| f.good_read()).unwrap_or(false);
    let magic = mmio.r32(virtio::R_MAGIC);
    r.check(
        "fuzz",
        good && magic == virtio::MAGIC,
        format_args!(
            "seed={seed} iters={iters} chains={chains} registers={regs} resets={resets} reset_mcycles={} chain_mcycles={} register_mcycles={} good_read={}",
            init_cycles / 1_000_000,
            chain_cycles / 1_000_000,
            reg_cycles / 1_000_000,
            good as u8
        ),
    );
}
