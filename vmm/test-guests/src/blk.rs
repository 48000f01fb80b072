//! virtio-blk driver and the `blk` test.

use crate::io::{bytes, fill, fnv1a, rd, wr, Hex};
use crate::mem::alloc_pages;
use crate::report::Report;
use crate::virtio::{Mmio, Queue, D_NEXT, D_WRITE, F_VERSION_1};

pub const F_SIZE_MAX: u64 = 1 << 1;
pub const F_SEG_MAX: u64 = 1 << 2;
pub const F_RO: u64 = 1 << 5;
pub const F_BLK_SIZE: u64 = 1 << 6;
pub const F_FLUSH: u64 = 1 << 9;
pub const F_DISCARD: u64 = 1 << 13;
pub const F_WRITE_ZEROES: u64 = 1 << 14;

pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const T_DISCARD: u32 = 11;
pub const T_WRITE_ZEROES: u32 = 13;

pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;

/// Status byte value meaning "the device never completed the request".
pub const TIMEOUT: u8 = 0xee;

const WANTED: u64 =
    F_SIZE_MAX | F_SEG_MAX | F_RO | F_BLK_SIZE | F_FLUSH | F_DISCARD | F_WRITE_ZEROES;

/// Request timeout in milliseconds.
pub const REQ_MS: u64 = 3000;

pub struct Blk {
    pub mmio: Mmio,
    pub q: Queue,
    pub offered: u64,
    pub features: u64,
    pub capacity: u64,
    /// Header at +0, status at +0x10, discard segment at +0x20, id at +0x100.
    pub meta: u64,
    /// 4 KiB data buffer.
    pub data: u64,
}

impl Blk {
    pub fn init(mmio: Mmio) -> Result<Blk, &'static str> {
        Blk::init_with(mmio, 0)
    }

    /// `init`, also accepting the `extra` feature bits when offered.
    pub fn init_with(mmio: Mmio, extra: u64) -> Result<Blk, &'static str> {
        let (offered, features) = mmio.negotiate(WANTED | F_VERSION_1 | extra)?;
        let q = mmio.setup_queue(0)?;
        mmio.driver_ok();
        let capacity = u64::from(mmio.r32(0x100)) | (u64::from(mmio.r32(0x104)) << 32);
        let meta = alloc_pages(1).ok_or("out of memory")?;
        let data = alloc_pages(1).ok_or("out of memory")?;
        Ok(Blk {
            mmio,
            q,
            offered,
            features,
            capacity,
            meta,
            data,
        })
    }

    pub fn has(&self, f: u64) -> bool {
        self.features & f != 0
    }

    /// Writes the request header and a poisoned status byte.
    pub fn header(&self, ty: u32, sector: u64) {
        wr::<u32>(self.meta, ty);
        wr::<u32>(self.meta + 4, 0);
        wr::<u64>(self.meta + 8, sector);
        wr::<u8>(self.meta + 0x10, 0xff);
    }

    pub fn status(&self) -> u8 {
        rd::<u8>(self.meta + 0x10)
    }

    /// One request: header, optional data buffer, status. Returns the status byte or
    /// TIMEOUT.
    pub fn request(&mut self, ty: u32, sector: u64, data: Option<(u64, u32, bool)>) -> u8 {
        self.header(ty, sector);
        let hdr = (self.meta, 16, false);
        let st = (self.meta + 0x10, 1, true);
        let done = match data {
            Some(d) => self.q.transfer(&[hdr, d, st], REQ_MS),
            None => self.q.transfer(&[hdr, st], REQ_MS),
        };
        if done.is_some() {
            self.status()
        } else {
            TIMEOUT
        }
    }

    pub fn read(&mut self, sector: u64, len: u32) -> u8 {
        self.request(T_IN, sector, Some((self.data, len, true)))
    }

    pub fn write(&mut self, sector: u64, len: u32) -> u8 {
        self.request(T_OUT, sector, Some((self.data, len, false)))
    }

    /// Discard or write-zeroes of `n` sectors at `sector`.
    pub fn range_op(&mut self, ty: u32, sector: u64, n: u32) -> u8 {
        let seg = self.meta + 0x20;
        wr::<u64>(seg, sector);
        wr::<u32>(seg + 8, n);
        wr::<u32>(seg + 12, 0);
        self.request(ty, 0, Some((seg, 16, false)))
    }

    /// A plain read of sector 0 that must succeed (used after hostile requests).
    pub fn good_read(&mut self) -> bool {
        self.read(0, 512) == S_OK
    }
}

/// The byte the guest writes at offset `i` of sector 1 (the host test recomputes it).
pub fn pattern(i: usize) -> u8 {
    (i as u8).wrapping_mul(7).wrapping_add(0x31)
}

/// `blk`: the full request set against device `n` (a virtio-blk window).
pub fn test_blk(n: usize, mmio: Mmio, r: &mut Report) {
    let mut b = match Blk::init(mmio) {
        Ok(b) => b,
        Err(e) => return r.fail("blk.init", format_args!("dev={n} {e}")),
    };
    let ro = b.has(F_RO);
    r.ok(
        "blk.init",
        format_args!(
            "dev={n} offered={:#x} negotiated={:#x} capacity={} ro={} qsize={}",
            b.offered, b.features, b.capacity, ro as u8, b.q.size
        ),
    );
    let st = b.read(0, 512);
    let s0 = bytes(b.data, 512);
    r.check(
        "blk.read",
        st == S_OK,
        format_args!(
            "dev={n} status={st} sector0={} fnv1a64={:016x}",
            Hex(&s0[..32]),
            fnv1a(s0)
        ),
    );
    let st = b.read(b.capacity, 512);
    r.check(
        "blk.read_oob",
        st == S_IOERR,
        format_args!("dev={n} sector={} status={st}", b.capacity),
    );

    for i in 0..512 {
        wr::<u8>(b.data + i as u64, pattern(i));
    }
    let st = b.write(1, 512);
    if ro {
        r.check(
            "blk.write_ro",
            st == S_IOERR,
            format_args!("dev={n} status={st} (expect IOERR=1)"),
        );
    } else {
        r.check(
            "blk.write",
            st == S_OK,
            format_args!("dev={n} sector=1 status={st}"),
        );
    }
    if b.has(F_FLUSH) {
        let st = b.request(T_FLUSH, 0, None);
        r.check("blk.flush", st == S_OK, format_args!("dev={n} status={st}"));
    } else {
        r.skip(
            "blk.flush",
            format_args!("dev={n} VIRTIO_BLK_F_FLUSH not offered"),
        );
    }
    if !ro {
        fill(b.data, 0, 512);
        let st = b.read(1, 512);
        let same = (0..512).all(|i| rd::<u8>(b.data + i as u64) == pattern(i));
        r.check(
            "blk.readback",
            st == S_OK && same,
            format_args!("dev={n} status={st} match={}", same as u8),
        );
    }

    if !ro {
        let (wst, rst, same) = batch(&mut b);
        r.check(
            "blk.batch",
            wst && rst && same,
            format_args!(
                "dev={n} chains={BATCH} sectors=8..13 writes_ok={} reads_ok={} match={}",
                wst as u8, rst as u8, same as u8
            ),
        );
    }

    if !ro {
        sg_checks(n, &mut b, r);
    }

    let id = b.meta + 0x100;
    fill(id, 0, 20);
    let st = b.request(T_GET_ID, 0, Some((id, 20, true)));
    let raw = bytes(id, 20);
    let len = raw.iter().position(|&c| c == 0).unwrap_or(20);
    let text = core::str::from_utf8(&raw[..len]).unwrap_or("<non-utf8>");
    r.check(
        "blk.getid",
        st == S_OK,
        format_args!("dev={n} status={st} id={text}"),
    );

    if ro {
        return;
    }
    if b.has(F_DISCARD) {
        let st = b.range_op(T_DISCARD, 2, 2);
        r.check(
            "blk.discard",
            st == S_OK,
            format_args!("dev={n} sector=2 count=2 status={st}"),
        );
    } else {
        r.skip(
            "blk.discard",
            format_args!("dev={n} VIRTIO_BLK_F_DISCARD not offered"),
        );
    }
    if b.has(F_WRITE_ZEROES) {
        let st = b.range_op(T_WRITE_ZEROES, 4, 2);
        fill(b.data, 0xaa, 1024);
        let st2 = b.read(4, 1024);
        let zero = bytes(b.data, 1024).iter().all(|&c| c == 0);
        r.check(
            "blk.write_zeroes",
            st == S_OK && st2 == S_OK && zero,
            format_args!(
                "dev={n} sector=4 count=2 status={st} read_status={st2} zero={}",
                zero as u8
            ),
        );
    } else {
        r.skip(
            "blk.write_zeroes",
            format_args!("dev={n} VIRTIO_BLK_F_WRITE_ZEROES not offered"),
        );
    }
}

/// Requests published together before one notify.
pub const BATCH: u64 = 5;

/// The byte the guest writes in batch sector `8 + k`.
pub fn batch_byte(k: u64) -> u8 {
    0xa0 + k as u8
}

/// BATCH requests of type `ty` (sectors 8..8+BATCH, data page slices) behind one notify.
fn batch_io(b: &mut Blk, ty: u32) -> bool {
    for k in 0..BATCH {
        let hdr = b.meta + 0x200 + 32 * k;
        wr::<u32>(hdr, ty);
        wr::<u32>(hdr + 4, 0);
        wr::<u64>(hdr + 8, 8 + k);
        wr::<u8>(b.meta + 0x300 + k, 0xff);
        let d = 3 * k as u16;
        let flags = if ty == T_IN { D_WRITE } else { 0 };
        b.q.set_desc(d, hdr, 16, D_NEXT, d + 1);
        b.q.set_desc(d + 1, b.data + 512 * k, 512, flags | D_NEXT, d + 2);
        b.q.set_desc(d + 2, b.meta + 0x300 + k, 1, D_WRITE, 0);
        b.q.push_avail(d);
    }
    b.q.notify();
    let mut done = 0;
    while done < BATCH {
        if b.q.wait_used(REQ_MS).is_none() {
            return false;
        }
        done += 1;
    }
    (0..BATCH).all(|k| rd::<u8>(b.meta + 0x300 + k) == S_OK)
}

fn batch(b: &mut Blk) -> (bool, bool, bool) {
    for k in 0..BATCH {
        fill(b.data + 512 * k, batch_byte(k), 512);
    }
    let w = batch_io(b, T_OUT);
    fill(b.data, 0, 4096);
    let r = batch_io(b, T_IN);
    let same = (0..BATCH).all(|k| {
        bytes(b.data + 512 * k, 512)
            .iter()
            .all(|&c| c == batch_byte(k))
    });
    (w, r, same)
}

/// virtio-blk config space: seg_max, blk_size, discard and write-zeroes limits.
fn config_line(n: usize, b: &Blk, r: &mut Report) {
    let c = |off: u64| b.mmio.r32(0x100 + off);
    r.ok(
        "blk.config",
        format_args!(
            "dev={n} size_max={} seg_max={} blk_size={} max_discard_sectors={} max_discard_seg={} max_write_zeroes_sectors={} max_write_zeroes_seg={}",
            c(8), c(12), c(20), c(36), c(40), c(48), c(52)
        ),
    );
}

/// Scatter-gather read: 4 scattered 512-byte buffers, in reverse page order.
fn sg_checks(n: usize, b: &mut Blk, r: &mut Report) {
    config_line(n, b, r);
    let Some(pages) = alloc_pages(4) else {
        return r.fail("blk.sg", format_args!("out of memory"));
    };
    b.header(T_IN, 8);
    let mut descs = [(0u64, 0u32, false); 6];
    descs[0] = (b.meta, 16, false);
    for k in 0..4u64 {
        let buf = pages + 4096 * (3 - k) + 8 * k;
        fill(buf, 0, 512);
        descs[1 + k as usize] = (buf, 512, true);
    }
    descs[5] = (b.meta + 0x10, 1, true);
    let done = b.q.transfer(&descs, REQ_MS).is_some();
    let st = if done { b.status() } else { TIMEOUT };
    let same = (0..4u64).all(|k| {
        bytes(pages + 4096 * (3 - k) + 8 * k, 512)
            .iter()
            .all(|&c| c == batch_byte(k))
    });
    r.check(
        "blk.sg",
        st == S_OK && same,
        format_args!("dev={n} segments=4 status={st} match={}", same as u8),
    );
}

/// `blk_strict`: malformed requests a device must refuse: a read whose length is not a
/// sector multiple, and a write whose only data buffer is device-writable (nothing to
/// write: reporting OK would be silent data loss).
pub fn test_blk_strict(n: usize, mmio: Mmio, r: &mut Report) {
    let mut b = match Blk::init(mmio) {
        Ok(b) => b,
        Err(e) => return r.fail("blk.strict", format_args!("dev={n} {e}")),
    };
    let st = b.request(T_IN, 0, Some((b.data, 100, true)));
    r.check(
        "blk.partial_sector",
        st != S_OK,
        format_args!("dev={n} len=100 status={st} (expect an error)"),
    );
    fill(b.data, 0x77, 512);
    let st = b.request(T_OUT, 20, Some((b.data, 512, true)));
    r.check(
        "blk.wrong_direction",
        st != S_OK,
        format_args!("dev={n} sector=20 status={st} (expect an error)"),
    );
}
