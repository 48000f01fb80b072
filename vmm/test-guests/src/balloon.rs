//! virtio-balloon from the guest: free page reporting and inflate/deflate (`balloon`), hostile
//! report and inflate chains (`balloon_hostile`), and one large report the host measures the
//! VMM's RSS around (`balloon_rss`).

use crate::boot::BootInfo;
use crate::io::{deadline, expired, inb, rd, wr};
use crate::mem::{alloc_pages, reserve_pages};
use crate::report::Report;
use crate::virtio::{self, Mmio, Queue, D_NEXT, D_WRITE, R_QUEUE_NUM_MAX, R_QUEUE_SEL};

pub const ID_BALLOON: u32 = 5;
const F_STATS_VQ: u64 = 1 << 1;
const F_DEFLATE_ON_OOM: u64 = 1 << 2;
const F_REPORTING: u64 = 1 << 5;
const PAGE: u64 = 4096;
/// Config space: le32 num_pages, le32 actual.
const CFG_NUM_PAGES: u64 = 0x100;
const CFG_ACTUAL: u64 = 0x104;
const NEEDS_RESET: u32 = 0x40;
/// An address far outside any guest RAM.
const OUTSIDE: u64 = 0x0000_7fff_0000_0000;
/// How long a bad chain may take before the guest gives up on it (ms).
const BAD_MS: u64 = 1000;
const MS: u64 = 3000;

struct Balloon {
    mmio: Mmio,
    inflate: Queue,
    deflate: Queue,
    report: Queue,
    offered: u64,
}

impl Balloon {
    /// Negotiates F_REPORTING (and DEFLATE_ON_OOM); queues 0, 1 and 2 (reporting_vq is 2:
    /// no statsq or free_page_vq before it).
    fn init(mmio: Mmio) -> Result<Balloon, &'static str> {
        let (offered, neg) = mmio.negotiate(F_REPORTING | F_DEFLATE_ON_OOM)?;
        if neg & F_REPORTING == 0 {
            return Err("VIRTIO_BALLOON_F_REPORTING not offered");
        }
        let inflate = mmio.setup_queue(0)?;
        let deflate = mmio.setup_queue(1)?;
        let report = mmio.setup_queue(2)?;
        mmio.driver_ok();
        Ok(Balloon {
            mmio,
            inflate,
            deflate,
            report,
            offered,
        })
    }
}

fn fill_pages(addr: u64, pages: u64, byte: u8) {
    crate::io::fill(addr, byte, (pages * PAGE) as usize);
}

/// Whether every 8-byte word of the pages at `addr` holds `byte` repeated.
fn pages_hold(addr: u64, pages: u64, byte: u8) -> bool {
    let want = u64::from_ne_bytes([byte; 8]);
    (0..pages * PAGE / 8).all(|i| rd::<u64>(addr + 8 * i) == want)
}

/// `balloon`: features, queue count, config space, a report of two ranges, inflate, deflate.
pub fn test_balloon(mmio: Mmio, r: &mut Report) {
    let mut b = match Balloon::init(mmio) {
        Ok(b) => b,
        Err(e) => return r.fail("balloon.init", format_args!("{e}")),
    };
    mmio.w32(R_QUEUE_SEL, 3);
    let q3 = mmio.r32(R_QUEUE_NUM_MAX);
    r.check(
        "balloon.init",
        b.offered & F_DEFLATE_ON_OOM != 0 && b.offered & F_STATS_VQ == 0 && q3 == 0,
        format_args!("offered={:#x} queue3_max={q3}", b.offered),
    );

    let num_pages = mmio.r32(CFG_NUM_PAGES);
    mmio.w32(CFG_ACTUAL, 3);
    let actual = mmio.r32(CFG_ACTUAL);
    mmio.w32(CFG_NUM_PAGES, 77);
    let num_after = mmio.r32(CFG_NUM_PAGES);
    r.check(
        "balloon.config",
        actual == 3 && num_after == num_pages,
        format_args!(
            "num_pages={num_pages} actual={actual} num_pages_after_driver_write={num_after}"
        ),
    );

    // Report pages 0..8 and 16..24 of 24 dirtied ones; 8..16 must keep their data.
    let Some(buf) = alloc_pages(24) else {
        return r.fail("balloon.report", format_args!("out of memory"));
    };
    fill_pages(buf, 24, 0xa5);
    let used = b.report.transfer(
        &[
            (buf, (8 * PAGE) as u32, true),
            (buf + 16 * PAGE, (8 * PAGE) as u32, true),
        ],
        MS,
    );
    let (zero_a, kept, zero_b) = (
        pages_hold(buf, 8, 0),
        pages_hold(buf + 8 * PAGE, 8, 0xa5),
        pages_hold(buf + 16 * PAGE, 8, 0),
    );
    r.check(
        "balloon.report",
        used == Some(0) && zero_a && kept && zero_b,
        format_args!(
            "used_len={} reported_zeroed={} neighbours_kept={}",
            used.map_or(-1, i64::from),
            (zero_a && zero_b) as u8,
            kept as u8
        ),
    );

    // Inflate one dirtied page by PFN, then deflate it and use it again.
    let (Some(page), Some(pfns)) = (alloc_pages(1), alloc_pages(1)) else {
        return r.fail("balloon.inflate", format_args!("out of memory"));
    };
    fill_pages(page, 1, 0x3c);
    wr::<u32>(pfns, (page / PAGE) as u32);
    let inflated = b.inflate.transfer(&[(pfns, 4, false)], MS);
    let released = pages_hold(page, 1, 0);
    mmio.w32(CFG_ACTUAL, 1);
    let deflated = b.deflate.transfer(&[(pfns, 4, false)], MS);
    fill_pages(page, 1, 0x3c);
    r.check(
        "balloon.inflate",
        inflated == Some(0) && released && deflated == Some(0) && pages_hold(page, 1, 0x3c),
        format_args!(
            "inflate_used={} released={} deflate_used={}",
            inflated.is_some() as u8,
            released as u8,
            deflated.is_some() as u8
        ),
    );
}

/// A good one-page report on the device: returned with used length 0, the page zeroed.
fn good_report(b: &mut Balloon, page: u64) -> bool {
    fill_pages(page, 1, 0x11);
    b.report.transfer(&[(page, PAGE as u32, true)], MS) == Some(0) && pages_hold(page, 1, 0)
}

/// The device serves a good report directly, else after a reset and re-initialisation.
fn recover(b: &mut Balloon, page: u64) -> (&'static str, u32) {
    let st = b.mmio.status();
    let running = st & (NEEDS_RESET | virtio::S_DRIVER_OK) == virtio::S_DRIVER_OK;
    if running && good_report(b, page) {
        return ("direct", st);
    }
    match Balloon::init(b.mmio) {
        Ok(fresh) => {
            *b = fresh;
            (
                if good_report(b, page) {
                    "after_reset"
                } else {
                    "no"
                },
                st,
            )
        }
        Err(_) => ("no", st),
    }
}

/// Publishes descriptors `(addr, len, flags, next)` from index 0 on `q` and waits.
fn raw_chain(q: &mut Queue, desc: &[(u64, u32, u16, u16)]) -> Option<u32> {
    for (i, &(addr, len, flags, next)) in desc.iter().enumerate() {
        q.set_desc(i as u16, addr, len, flags, next);
    }
    q.push_avail(0);
    q.notify();
    q.wait_used(BAD_MS).map(|(_, len)| len)
}

/// `balloon_hostile`: chains a driver must never send. Each must leave the VMM up, release
/// nothing it should not (a marked page keeps its data), and the device must still serve a
/// good report, directly or after DEVICE_NEEDS_RESET and a reset.
pub fn test_balloon_hostile(info: &BootInfo, mmio: Mmio, r: &mut Report) {
    let mut b = match Balloon::init(mmio) {
        Ok(b) => b,
        Err(e) => return r.fail("balloon.hostile", format_args!("init: {e}")),
    };
    let (Some(scratch), Some(marked), Some(pfns)) =
        (alloc_pages(1), alloc_pages(1), alloc_pages(1))
    else {
        return r.fail("balloon.hostile", format_args!("out of memory"));
    };
    // The last page of RAM (inside the VMM's 1 GiB identity map for these guests).
    let top = info.ram_top.min(1 << 30) - PAGE;
    const CASES: [&str; 10] = [
        "oob",
        "ram_end",
        "overflow",
        "unaligned",
        "readonly",
        "chain_4g",
        "loop",
        "inflate_writable",
        "inflate_oob",
        "idx",
    ];
    for case in CASES {
        fill_pages(marked, 1, 0x5e);
        fill_pages(top, 1, 0x5e);
        let w = D_WRITE;
        let done = match case {
            "oob" => raw_chain(&mut b.report, &[(OUTSIDE, 0x20_0000, w, 0)]),
            // Starts on RAM's last page, runs one page past it.
            "ram_end" => raw_chain(&mut b.report, &[(top, 2 * PAGE as u32, w, 0)]),
            // addr + len wraps around 2^64.
            "overflow" => raw_chain(&mut b.report, &[(u64::MAX - 0xfff, 0x10000, w, 0)]),
            "unaligned" => raw_chain(&mut b.report, &[(marked + 1, PAGE as u32, w, 0)]),
            // A device-readable report: the driver did not hand the page over.
            "readonly" => raw_chain(&mut b.report, &[(marked, PAGE as u32, 0, 0)]),
            // Two descriptors of ~4 GiB each: more than a chain may carry, and beyond RAM.
            "chain_4g" => raw_chain(
                &mut b.report,
                &[
                    (marked, 0xffff_f000, w | D_NEXT, 1),
                    (marked, 0xffff_f000, w, 0),
                ],
            ),
            // A descriptor that chains to itself (releasing `scratch` again and again is
            // allowed; the walk must end).
            "loop" => raw_chain(&mut b.report, &[(scratch, PAGE as u32, w | D_NEXT, 0)]),
            // An inflate PFN list in a device-writable buffer is not a request.
            "inflate_writable" => {
                wr::<u32>(pfns, (marked / PAGE) as u32);
                raw_chain(&mut b.inflate, &[(pfns, 4, w, 0)])
            }
            // PFNs beyond RAM and past 2^44 bytes.
            "inflate_oob" => {
                wr::<u32>(pfns, u32::MAX);
                wr::<u32>(pfns + 4, (info.ram_top / PAGE) as u32);
                raw_chain(&mut b.inflate, &[(pfns, 8, 0, 0)])
            }
            // The available index runs 1000 entries ahead of the ring.
            _ => {
                b.report.set_desc(0, scratch, PAGE as u32, w, 0);
                let bogus = b.report.next_avail.wrapping_add(1000);
                wr::<u16>(b.report.avail + 2, bogus);
                b.report.notify();
                let done = b.report.wait_used(BAD_MS).map(|(_, l)| l);
                wr::<u16>(b.report.avail + 2, b.report.next_avail);
                b.report.last_used = rd::<u16>(b.report.used + 2);
                done
            }
        };
        let kept = pages_hold(marked, 1, 0x5e) && pages_hold(top, 1, 0x5e);
        let (how, st) = recover(&mut b, scratch);
        let mut name = [0u8; 40];
        let name = join(&mut name, "balloon.hostile.", case);
        r.check(
            name,
            how != "no" && kept,
            format_args!(
                "completed={} used_len={} marked_kept={} device_status={st:#x} needs_reset={} recovered={how}",
                done.is_some() as u8,
                done.map_or(-1, i64::from),
                kept as u8,
                (st & NEEDS_RESET != 0) as u8
            ),
        );
    }
}

fn join<'a>(buf: &'a mut [u8; 40], a: &str, b: &str) -> &'a str {
    let n = (a.len() + b.len()).min(buf.len());
    let split = a.len().min(n);
    buf[..split].copy_from_slice(&a.as_bytes()[..split]);
    buf[split..n].copy_from_slice(&b.as_bytes()[..n - split]);
    core::str::from_utf8(&buf[..n]).unwrap_or("balloon.hostile")
}

/// Waits (up to 60 s) for a line from the host on COM1: the host's go-ahead after sampling.
fn wait_host() -> bool {
    let d = deadline(60_000);
    while !expired(d) {
        if inb(0x3f8 + 5) & 1 != 0 && inb(0x3f8) == b'\n' {
            return true;
        }
        core::hint::spin_loop();
    }
    false
}

/// `balloon_rss` (`balloon_mib=N`, default 64): dirties N MiB, reports it in 2 MiB ranges (16
/// per chain, like Linux's page reporting), with a handshake on COM1 around each step so the
/// host can read the VMM's RSS: `BALLOON start`, `BALLOON dirtied`, `BALLOON reported`, each
/// answered by a newline on the VMM's stdin.
pub fn test_balloon_rss(info: &BootInfo, mmio: Mmio, r: &mut Report) {
    const CHUNK: u64 = 0x20_0000;
    let mib = info
        .arg("balloon_mib")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(64)
        .clamp(2, 512);
    let mut b = match Balloon::init(mmio) {
        Ok(b) => b,
        Err(e) => return r.fail("balloon.rss", format_args!("init: {e}")),
    };
    // Not zeroed by the allocator: the guest's own writes below are what dirties the pages.
    let Some(raw) = reserve_pages(mib * 256 + CHUNK / PAGE) else {
        return r.fail("balloon.rss", format_args!("cannot reserve {mib} MiB"));
    };
    let base = (raw + CHUNK - 1) & !(CHUNK - 1);
    crate::println!("BALLOON start mib={mib}");
    if !wait_host() {
        return r.fail(
            "balloon.rss",
            format_args!("no go-ahead from the host (start)"),
        );
    }
    let pages = mib * 256;
    for i in 0..pages {
        wr::<u64>(base + i * PAGE, i | 1);
    }
    crate::println!("BALLOON dirtied mib={mib} base={base:#x}");
    if !wait_host() {
        return r.fail(
            "balloon.rss",
            format_args!("no go-ahead from the host (dirtied)"),
        );
    }
    let chunks = mib * 0x10_0000 / CHUNK;
    let mut chains = 0;
    let mut bad = 0;
    let mut c = 0;
    while c < chunks {
        let n = (chunks - c).min(16);
        let mut bufs = [(0u64, 0u32, true); 16];
        for (k, slot) in bufs.iter_mut().enumerate().take(n as usize) {
            *slot = (base + (c + k as u64) * CHUNK, CHUNK as u32, true);
        }
        if b.report.transfer(&bufs[..n as usize], 10_000) != Some(0) {
            bad += 1;
        }
        chains += 1;
        c += n;
    }
    crate::println!("BALLOON reported chains={chains}");
    let went_on = wait_host();
    // Touching pages after the host's last sample is fine: they read back as zeroes.
    let zeroed = rd::<u64>(base) == 0 && rd::<u64>(base + (pages - 1) * PAGE) == 0;
    r.check(
        "balloon.rss",
        bad == 0 && went_on && zeroed,
        format_args!(
            "mib={mib} chains={chains} bad_chains={bad} zeroed={}",
            zeroed as u8
        ),
    );
}
