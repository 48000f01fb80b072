//! Hostile-guest modes: malformed queues and register accesses against virtio-blk.
//! After each, the guest checks that the device still serves a good request, directly
//! or after a device reset, and prints what happened.

use crate::blk::{Blk, S_OK, TIMEOUT, T_IN};
use crate::io::{rd, wr};
use crate::report::Report;
use crate::virtio::{self, Mmio, Queue, D_INDIRECT, D_NEXT, D_WRITE};

/// An address far outside any guest RAM.
const OUTSIDE: u64 = 0x0000_7fff_0000_0000;
/// How long a bad request may take before the guest gives up on it (ms).
const BAD_MS: u64 = 1000;
/// Device status bit DEVICE_NEEDS_RESET.
const NEEDS_RESET: u32 = 0x40;
/// Notifies sent while the available index is bogus.
const IDX_NOTIFIES: u32 = 5_000;

/// Publishes a three-descriptor read whose descriptors the caller already corrupted.
fn bad_read(b: &mut Blk, desc: &[(u64, u32, u16, u16)]) -> (bool, u8) {
    b.header(T_IN, 0);
    for (i, &(addr, len, flags, next)) in desc.iter().enumerate() {
        b.q.set_desc(i as u16, addr, len, flags, next);
    }
    b.q.push_avail(0);
    b.q.notify();
    let done = b.q.wait_used(BAD_MS).is_some();
    (done, if done { b.status() } else { TIMEOUT })
}

/// A good read directly, else after a reset and re-initialisation.
fn recover(b: &mut Blk) -> (&'static str, u32) {
    let dev_status = b.mmio.status();
    // A device that flagged DEVICE_NEEDS_RESET (or is not running) gets reset first.
    let running = dev_status & (NEEDS_RESET | virtio::S_DRIVER_OK) == virtio::S_DRIVER_OK;
    if running && b.good_read() {
        return ("direct", dev_status);
    }
    match Blk::init(b.mmio) {
        Ok(mut fresh) => {
            let ok = fresh.good_read();
            *b = fresh;
            (if ok { "after_reset" } else { "no" }, dev_status)
        }
        Err(_) => ("no", dev_status),
    }
}

fn report(r: &mut Report, name: &str, done: bool, st: u8, b: &mut Blk) {
    let (how, dev_status) = recover(b);
    r.check(
        name,
        how != "no",
        format_args!(
            "bad_completed={} bad_status={st} device_status={dev_status:#x} recovered={how}",
            done as u8
        ),
    );
}

/// Runs hostile mode `mode` on the blk device at `mmio`.
pub fn run(mode: &str, mmio: Mmio, r: &mut Report) {
    let name = match mode {
        "hostile_oob" => "hostile.oob",
        "hostile_loop" => "hostile.loop",
        "hostile_len" => "hostile.len",
        "hostile_idx" => "hostile.idx",
        "hostile_ring" => "hostile.ring",
        "hostile_mmio" => "hostile.mmio",
        "hostile_flood" => "hostile.flood",
        "hostile_indirect" => "hostile.indirect",
        "hostile_pio" => "hostile.pio",
        "hostile_unmapped" => "hostile.unmapped",
        "hostile_setup" => "hostile.setup",
        _ => return r.fail("hostile", format_args!("unknown mode {mode}")),
    };
    let mut b = match Blk::init(mmio) {
        Ok(b) => b,
        Err(e) => return r.fail(name, format_args!("blk init: {e}")),
    };
    let (hdr, st, data) = (b.meta, b.meta + 0x10, b.data);
    match mode {
        "hostile_oob" => {
            // Data buffer outside guest memory.
            let (done, s) = bad_read(
                &mut b,
                &[
                    (hdr, 16, D_NEXT, 1),
                    (OUTSIDE, 512, D_WRITE | D_NEXT, 2),
                    (st, 1, D_WRITE, 0),
                ],
            );
            report(r, name, done, s, &mut b);
        }
        "hostile_loop" => {
            // The header descriptor chains to itself.
            let (done, s) = bad_read(&mut b, &[(hdr, 16, D_NEXT, 0)]);
            report(r, name, done, s, &mut b);
        }
        "hostile_len" => {
            // A 4 GiB - 1 data buffer.
            let (done, s) = bad_read(
                &mut b,
                &[
                    (hdr, 16, D_NEXT, 1),
                    (data, 0xffff_ffff, D_WRITE | D_NEXT, 2),
                    (st, 1, D_WRITE, 0),
                ],
            );
            report(r, name, done, s, &mut b);
        }
        "hostile_idx" => {
            // The available index jumps 1000 entries ahead of the ring.
            b.header(T_IN, 0);
            b.q.set_desc(0, hdr, 16, D_NEXT, 1);
            b.q.set_desc(1, b.data, 512, D_WRITE | D_NEXT, 2);
            b.q.set_desc(2, st, 1, D_WRITE, 0);
            let bogus = b.q.next_avail.wrapping_add(1000);
            wr::<u16>(b.q.avail + 2, bogus);
            // Many notifies: a device must neither spin nor log once per notify.
            for _ in 0..IDX_NOTIFIES {
                b.q.notify();
            }
            let done = b.q.wait_used(BAD_MS).is_some();
            // Put the index back so a direct retry is well-formed again.
            wr::<u16>(b.q.avail + 2, b.q.next_avail);
            b.q.last_used = rd::<u16>(b.q.used + 2);
            report(
                r,
                name,
                done,
                if done { b.status() } else { TIMEOUT },
                &mut b,
            );
        }
        "hostile_indirect" => {
            // VIRTIO_F_INDIRECT_DESC was not negotiated; the table is garbage anyway.
            let (done, s) = bad_read(
                &mut b,
                &[
                    (hdr, 16, D_NEXT, 1),
                    (data, 0xfff0, D_INDIRECT | D_NEXT, 2),
                    (st, 1, D_WRITE, 0),
                ],
            );
            report(r, name, done, s, &mut b);
        }
        "hostile_pio" => {
            pio_abuse();
            crate::println!("hostile.pio: COM1 still prints");
            report(r, name, false, 0, &mut b);
        }
        "hostile_unmapped" => {
            let sum = unmapped_abuse();
            crate::println!("hostile.unmapped: reads summed to {sum:#x}");
            report(r, name, false, 0, &mut b);
        }
        "hostile_setup" => {
            let accepted = setup_abuse(mmio);
            // `b`'s queue is not the device's any more: recover through a reset.
            let _ = mmio.reset();
            crate::println!(
                "hostile.setup: unoffered features accepted={}",
                accepted as u8
            );
            report(r, name, false, 0, &mut b);
            r.check(
                "hostile.features",
                !accepted,
                format_args!("unoffered_features_accepted={} (must be 0)", accepted as u8),
            );
        }
        "hostile_ring" => {
            // Rings outside guest memory, then DRIVER_OK and a notify.
            let outcome = (|| -> Result<(), &'static str> {
                mmio.negotiate(0)?;
                mmio.w32(virtio::R_QUEUE_SEL, 0);
                mmio.w32(virtio::R_QUEUE_NUM, 16);
                for reg in [
                    virtio::R_QUEUE_DESC,
                    virtio::R_QUEUE_DRIVER,
                    virtio::R_QUEUE_DEVICE,
                ] {
                    mmio.w32(reg, 0);
                    mmio.w32(reg + 4, (OUTSIDE >> 32) as u32);
                }
                mmio.w32(virtio::R_QUEUE_READY, 1);
                mmio.driver_ok();
                mmio.w32(virtio::R_QUEUE_NOTIFY, 0);
                Ok(())
            })();
            if let Err(e) = outcome {
                return r.fail(name, format_args!("setup: {e}"));
            }
            report(r, name, false, TIMEOUT, &mut b);
        }
        "hostile_mmio" => {
            mmio_abuse(mmio);
            let magic = mmio.r32(virtio::R_MAGIC);
            if magic != virtio::MAGIC {
                return r.fail(name, format_args!("magic reads {magic:#x} after the abuse"));
            }
            report(r, name, false, 0, &mut b);
        }
        "hostile_flood" => {
            let base = mmio.base;
            for i in 0..100_000u32 {
                let q = match i % 4 {
                    0 | 1 => 0,
                    2 => 7,
                    _ => 0xffff,
                };
                wr::<u32>(base + virtio::R_QUEUE_NOTIFY, q);
            }
            let ok = b.read(0, 512);
            r.check(
                name,
                ok == S_OK,
                format_args!("notifies=100000 then read status={ok}"),
            );
        }
        _ => {}
    }
}

/// Reads and writes of every width on ports nobody (or a legacy device) owns. COM1's
/// control registers are left alone so the report still gets out.
fn pio_abuse() {
    use core::arch::asm;
    let ports: [u16; 16] = [
        0x80, 0xcf8, 0xcfc, 0x3f9, 0x3fa, 0x3fe, 0x60, 0x64, 0x70, 0x71, 0x40, 0x43, 0x61, 0x510,
        0x1234, 0xfffc,
    ];
    let mut sink = 0u32;
    for &p in &ports {
        sink = sink.wrapping_add(u32::from(crate::io::inb(p)));
        let (w, d): (u16, u32);
        // SAFETY: port I/O only; the VMM decides what each port does.
        unsafe {
            asm!("in ax, dx", in("dx") p, out("ax") w, options(nostack));
            asm!("in eax, dx", in("dx") p, out("eax") d, options(nostack));
        }
        sink = sink.wrapping_add(u32::from(w)).wrapping_add(d);
    }
    // PCI config-space probing as Linux does it, then junk writes to unowned ports.
    for &p in &[0xcf8u16, 0x80, 0x1234, 0xfffc, 0x510, 0x43] {
        // SAFETY: port I/O only.
        unsafe {
            asm!("out dx, eax", in("dx") p, in("eax") 0x8000_0000u32, options(nostack));
            asm!("out dx, ax", in("dx") p, in("ax") 0xbeefu16, options(nostack));
        }
        crate::io::outb(p, 0x5a);
    }
    core::hint::black_box(sink);
}

/// Reads and writes of guest-physical addresses with no RAM or device behind them.
fn unmapped_abuse() -> u64 {
    let mut sum = 0u64;
    for addr in [
        0x0c00_0000u64,
        0x1000_0000,
        0x3fff_f000,
        0xd010_0000,
        0xe000_0000,
        0xfed0_0000,
    ] {
        if !crate::mem::map_mmio(addr) {
            continue;
        }
        sum = sum.wrapping_add(u64::from(rd::<u32>(addr)));
        sum = sum.wrapping_add(u64::from(rd::<u8>(addr + 3)));
        sum = sum.wrapping_add(rd::<u64>(addr + 8));
        wr::<u32>(addr, 0xdead_beef);
        wr::<u64>(addr + 16, u64::MAX);
    }
    sum
}

/// Unknown offsets, read-only registers written, and 1/2/8-byte accesses.
fn mmio_abuse(m: Mmio) {
    let base = m.base;
    let mut sink = 0u64;
    for off in [0x000u64, 0x001, 0x003, 0x070, 0x0fc, 0x100, 0xfff] {
        sink = sink.wrapping_add(u64::from(rd::<u8>(base + off)));
    }
    for off in [0x000u64, 0x002, 0x030, 0x0fe, 0x100, 0xffe] {
        sink = sink.wrapping_add(u64::from(rd::<u16>(base + off)));
    }
    for off in [0x000u64, 0x010, 0x080, 0x100, 0xff8] {
        sink = sink.wrapping_add(rd::<u64>(base + off));
    }
    for off in [
        0x018u64, 0x028, 0x03c, 0x0c0, 0x0f0, 0x0f8, 0x200, 0x800, 0xffc,
    ] {
        sink = sink.wrapping_add(u64::from(rd::<u32>(base + off)));
    }
    m.w32(virtio::R_DEV_FEATURES_SEL, 0xffff_ffff);
    sink = sink.wrapping_add(u64::from(m.r32(virtio::R_DEV_FEATURES)));
    // Writes to read-only and unknown registers, odd widths, out-of-range selectors.
    for off in [
        0x000u64, 0x004, 0x008, 0x00c, 0x010, 0x034, 0x060, 0x0f0, 0x0fc, 0x100, 0x400, 0xffc,
    ] {
        m.w32(off, 0xdead_beef);
    }
    wr::<u8>(base + 0x070, 0x01);
    wr::<u16>(base + 0x030, 0x0001);
    wr::<u64>(base + 0x080, 0xffff_ffff_ffff_ffff);
    wr::<u8>(base + 0x101, 0x55);
    m.w32(virtio::R_QUEUE_SEL, 0xffff);
    m.w32(virtio::R_QUEUE_NUM, 0xffff_ffff);
    m.w32(virtio::R_QUEUE_READY, 1);
    m.w32(virtio::R_QUEUE_NOTIFY, 0xffff);
    m.w32(virtio::R_DRV_FEATURES_SEL, 0x7fff_ffff);
    m.w32(virtio::R_DRV_FEATURES, 0xffff_ffff);
    m.w32(virtio::R_INT_ACK, 0xffff_ffff);
    core::hint::black_box(sink);
}

/// The hostile modes against virtio-rng (`id` 4) or virtio-console (`id` 3): queue 0 of
/// rng or transmitq (1) of console gets the bad chain; then a good request must work,
/// directly or after a device reset.
pub fn run_other(mode: &str, id: u32, mmio: Mmio, r: &mut Report) {
    let dev = match id {
        crate::devices::ID_RNG => "rng",
        crate::devices::ID_VSOCK => "vsock",
        _ => "console",
    };
    let setup = || -> Result<(Queue, u64), &'static str> {
        mmio.negotiate(0)?;
        let first = mmio.setup_queue(0)?;
        let q = match dev {
            "rng" => first,
            _ => mmio.setup_queue(1)?,
        };
        if dev == "vsock" {
            mmio.setup_queue(2)?;
        }
        mmio.driver_ok();
        Ok((q, crate::mem::alloc_pages(1).ok_or("out of memory")?))
    };
    let (mut q, buf) = match setup() {
        Ok(x) => x,
        Err(e) => return r.fail(mode, format_args!("{dev} init: {e}")),
    };
    let flags = if dev == "rng" { D_WRITE } else { 0 };
    match mode {
        "hostile_oob" => q.set_desc(0, OUTSIDE, 64, flags, 0),
        "hostile_loop" => q.set_desc(0, buf, 64, flags | D_NEXT, 0),
        "hostile_len" => q.set_desc(0, buf, 0xffff_ffff, flags, 0),
        "hostile_idx" => q.set_desc(0, buf, 64, flags, 0),
        _ => return r.fail(mode, format_args!("mode not supported on {dev}")),
    }
    if mode == "hostile_idx" {
        wr::<u16>(q.avail + 2, q.next_avail.wrapping_add(1000));
        for _ in 0..IDX_NOTIFIES {
            q.notify();
        }
    } else {
        q.push_avail(0);
        q.notify();
    }
    let done = q.wait_used(BAD_MS).is_some();
    if mode == "hostile_idx" {
        wr::<u16>(q.avail + 2, q.next_avail);
    }
    q.last_used = rd::<u16>(q.used + 2);
    let dev_status = mmio.status();
    crate::io::fill(buf, b'.', 1);
    // A good request: 16 random bytes, one console byte, or a vsock RST header (to a
    // connection that does not exist; the device consumes it).
    let mut len = 16;
    if dev == "vsock" {
        crate::io::fill(buf, 0, 44);
        wr::<u64>(buf, u64::from(mmio.r32(0x100)));
        wr::<u64>(buf + 8, 2);
        wr::<u16>(buf + 28, 1);
        wr::<u16>(buf + 30, 3);
        len = 44;
    }
    let good = |q: &mut Queue| q.transfer(&[(buf, len, dev == "rng")], 3000).is_some();
    let how = if good(&mut q) {
        "direct"
    } else {
        match setup() {
            Ok((mut fresh, _)) => {
                if good(&mut fresh) {
                    "after_reset"
                } else {
                    "no"
                }
            }
            Err(_) => "no",
        }
    };
    let name = match mode {
        "hostile_oob" => "hostile.oob",
        "hostile_loop" => "hostile.loop",
        "hostile_len" => "hostile.len",
        _ => "hostile.idx",
    };
    r.check(
        name,
        how != "no",
        format_args!(
            "dev={dev} bad_completed={} device_status={dev_status:#x} recovered={how}",
            done as u8
        ),
    );
}

/// Out-of-order and out-of-range set-up: unoffered feature bits, DRIVER_OK without
/// FEATURES_OK, bad queue sizes, ring addresses changed while the queue runs. Returns
/// whether the device accepted FEATURES_OK for a feature set it never offered.
fn setup_abuse(m: Mmio) -> bool {
    use crate::virtio::{S_ACK, S_DRIVER, S_DRIVER_OK, S_FEATURES_OK};
    // Every feature bit, then FEATURES_OK: the device must refuse it.
    let _ = m.reset();
    m.w32(virtio::R_STATUS, S_ACK | S_DRIVER);
    for sel in 0..2 {
        m.w32(virtio::R_DRV_FEATURES_SEL, sel);
        m.w32(virtio::R_DRV_FEATURES, 0xffff_ffff);
    }
    m.w32(virtio::R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
    let accepted = m.status() & S_FEATURES_OK != 0;
    // DRIVER_OK without FEATURES_OK and without queues.
    let _ = m.reset();
    m.w32(virtio::R_STATUS, S_ACK | S_DRIVER | S_DRIVER_OK);
    m.w32(virtio::R_QUEUE_NOTIFY, 0);
    // Queue sizes 0, 15 (not a power of two) and 1024 (above the maximum), made ready.
    let page = crate::mem::alloc_pages(1).unwrap_or(0x2_0000);
    let rings = [
        (virtio::R_QUEUE_DESC, 0u64),
        (virtio::R_QUEUE_DRIVER, 0x400),
        (virtio::R_QUEUE_DEVICE, 0x800),
    ];
    for num in [0u32, 15, 1024] {
        let _ = m.reset();
        if m.negotiate(0).is_err() {
            continue;
        }
        m.w32(virtio::R_QUEUE_SEL, 0);
        m.w32(virtio::R_QUEUE_NUM, num);
        for (reg, off) in rings {
            m.w32(reg, (page + off) as u32);
            m.w32(reg + 4, 0);
        }
        m.w32(virtio::R_QUEUE_READY, 1);
        m.driver_ok();
        m.w32(virtio::R_QUEUE_NOTIFY, 0);
    }
    // A running queue whose rings move (to outside memory) and shrink under the device.
    let _ = m.reset();
    if m.negotiate(0).and_then(|_| m.setup_queue(0)).is_ok() {
        m.driver_ok();
        m.w32(virtio::R_QUEUE_NUM, 2);
        m.w32(virtio::R_QUEUE_DESC + 4, 0x7fff);
        m.w32(virtio::R_QUEUE_READY, 0);
        m.w32(virtio::R_QUEUE_READY, 1);
        m.w32(virtio::R_QUEUE_NOTIFY, 0);
    }
    accepted
}
