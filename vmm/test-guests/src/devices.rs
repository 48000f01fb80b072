//! virtio discovery, rng and console tests.

use crate::boot::BootInfo;
use crate::io::{bytes, fill, wr, Hex};
use crate::mem::{alloc_pages, map_mmio};
use crate::report::Report;
use crate::virtio::{Mmio, MAGIC, R_DEVICE_ID, R_MAGIC, R_VENDOR_ID, R_VERSION};

pub const ID_BLK: u32 = 2;
pub const ID_CONSOLE: u32 = 3;
pub const ID_RNG: u32 = 4;
/// virtio-vsock (the `vsock` test's driver lives in vsock.rs).
pub const ID_VSOCK: u32 = 19;

/// Maps every command-line window; returns the device ids read (0 where unusable).
pub fn discover(info: &BootInfo, ids: &mut [u32]) -> bool {
    for (i, d) in info.devs[..info.ndevs].iter().enumerate() {
        if !map_mmio(d.addr) {
            return false;
        }
        ids[i] = Mmio { base: d.addr }.r32(R_DEVICE_ID);
    }
    true
}

/// `virtio`: magic, version and device id of every window, in command-line order.
pub fn test_virtio(info: &BootInfo, r: &mut Report) {
    if info.ndevs == 0 {
        return r.fail(
            "virtio",
            format_args!("no virtio_mmio.device= entries on the command line"),
        );
    }
    for (i, d) in info.devs[..info.ndevs].iter().enumerate() {
        let m = Mmio { base: d.addr };
        let (magic, ver, id, vendor) = (
            m.r32(R_MAGIC),
            m.r32(R_VERSION),
            m.r32(R_DEVICE_ID),
            m.r32(R_VENDOR_ID),
        );
        r.check(
            "virtio.dev",
            magic == MAGIC && ver == 2 && id != 0,
            format_args!(
                "index={i} addr={:#x} size={:#x} irq={} magic={magic:#x} version={ver} id={id} vendor={vendor:#x}",
                d.addr, d.size, d.irq
            ),
        );
    }
}

/// `rng`: 64 bytes from virtio-rng, not all equal.
pub fn test_rng(mmio: Mmio, r: &mut Report) {
    let run = || -> Result<(u64, u32), &'static str> {
        mmio.negotiate(0)?;
        let mut q = mmio.setup_queue(0)?;
        mmio.driver_ok();
        let buf = alloc_pages(1).ok_or("out of memory")?;
        let mut got = 0u32;
        let mut requests = 0;
        while got < 64 && requests < 64 {
            requests += 1;
            let len = q
                .transfer(&[(buf + u64::from(got), 64 - got, true)], 3000)
                .ok_or("request timed out")?;
            got += len.min(64 - got);
        }
        Ok((buf, got))
    };
    match run() {
        Ok((buf, got)) => {
            let data = bytes(buf, got as usize);
            let varied = data.iter().any(|&b| b != data[0]);
            r.check(
                "rng",
                got == 64 && varied,
                format_args!("bytes={got} data={}", Hex(data)),
            );
        }
        Err(e) => r.fail("rng", format_args!("{e}")),
    }
}

/// The line written on the virtio-console transmit queue.
pub const CONSOLE_LINE: &[u8] = b"vmctl-test-guest virtio-console hello\n";

/// `console`: one line on transmitq0 (queue 1); receiveq0 is set up empty.
pub fn test_console(mmio: Mmio, r: &mut Report) {
    let run = || -> Result<u32, &'static str> {
        mmio.negotiate(0)?;
        let _rx = mmio.setup_queue(0)?;
        let mut tx = mmio.setup_queue(1)?;
        mmio.driver_ok();
        let buf = alloc_pages(1).ok_or("out of memory")?;
        fill(buf, 0, 4096);
        for (i, &b) in CONSOLE_LINE.iter().enumerate() {
            wr::<u8>(buf + i as u64, b);
        }
        tx.transfer(&[(buf, CONSOLE_LINE.len() as u32, false)], 3000)
            .ok_or("transmit not completed")
    };
    match run() {
        Ok(len) => r.ok(
            "console",
            format_args!("sent={} used_len={len}", CONSOLE_LINE.len()),
        ),
        Err(e) => r.fail("console", format_args!("{e}")),
    }
}
