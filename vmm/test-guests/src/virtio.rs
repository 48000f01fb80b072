//! virtio-mmio (version 2) transport and a split virtqueue driver.

use crate::io::{deadline, expired, rd, wr};
use crate::mem::alloc_pages;
use core::sync::atomic::{compiler_fence, Ordering};

pub const MAGIC: u32 = 0x7472_6976; // "virt"
pub const R_MAGIC: u64 = 0x000;
pub const R_VERSION: u64 = 0x004;
pub const R_DEVICE_ID: u64 = 0x008;
pub const R_VENDOR_ID: u64 = 0x00c;
pub const R_DEV_FEATURES: u64 = 0x010;
pub const R_DEV_FEATURES_SEL: u64 = 0x014;
pub const R_DRV_FEATURES: u64 = 0x020;
pub const R_DRV_FEATURES_SEL: u64 = 0x024;
pub const R_QUEUE_SEL: u64 = 0x030;
pub const R_QUEUE_NUM_MAX: u64 = 0x034;
pub const R_QUEUE_NUM: u64 = 0x038;
pub const R_QUEUE_READY: u64 = 0x044;
pub const R_QUEUE_NOTIFY: u64 = 0x050;
pub const R_INT_STATUS: u64 = 0x060;
pub const R_INT_ACK: u64 = 0x064;
pub const R_STATUS: u64 = 0x070;
pub const R_QUEUE_DESC: u64 = 0x080;
pub const R_QUEUE_DRIVER: u64 = 0x090;
pub const R_QUEUE_DEVICE: u64 = 0x0a0;

pub const S_ACK: u32 = 1;
pub const S_DRIVER: u32 = 2;
pub const S_DRIVER_OK: u32 = 4;
pub const S_FEATURES_OK: u32 = 8;
pub const S_FAILED: u32 = 0x80;

pub const F_VERSION_1: u64 = 1 << 32;

pub const D_NEXT: u16 = 1;
pub const D_WRITE: u16 = 2;
pub const D_INDIRECT: u16 = 4;

/// Queue size the driver asks for (capped by QueueNumMax).
const QSIZE: u16 = 16;

/// One virtio-mmio device window.
#[derive(Clone, Copy)]
pub struct Mmio {
    pub base: u64,
}

impl Mmio {
    pub fn r32(&self, off: u64) -> u32 {
        rd::<u32>(self.base + off)
    }
    pub fn w32(&self, off: u64, v: u32) {
        wr::<u32>(self.base + off, v)
    }
    pub fn status(&self) -> u32 {
        self.r32(R_STATUS)
    }
    fn set_status(&self, bits: u32) {
        self.w32(R_STATUS, self.status() | bits)
    }
    fn w64(&self, off: u64, v: u64) {
        self.w32(off, v as u32);
        self.w32(off + 4, (v >> 32) as u32);
    }
    pub fn device_features(&self) -> u64 {
        self.w32(R_DEV_FEATURES_SEL, 0);
        let lo = self.r32(R_DEV_FEATURES);
        self.w32(R_DEV_FEATURES_SEL, 1);
        let hi = self.r32(R_DEV_FEATURES);
        (u64::from(hi) << 32) | u64::from(lo)
    }

    /// Resets the device and waits for Status to read 0.
    pub fn reset(&self) -> Result<(), &'static str> {
        self.w32(R_STATUS, 0);
        let d = deadline(1000);
        while self.status() != 0 {
            if expired(d) {
                return Err("status did not read 0 after reset");
            }
        }
        Ok(())
    }

    /// Driver initialisation (virtio 1.2 §3.1.1) up to FEATURES_OK, accepting
    /// `offered & wanted | VERSION_1`. Returns (offered, negotiated).
    pub fn negotiate(&self, wanted: u64) -> Result<(u64, u64), &'static str> {
        if self.r32(R_MAGIC) != MAGIC {
            return Err("bad magic");
        }
        if self.r32(R_VERSION) != 2 {
            return Err("version is not 2");
        }
        self.reset()?;
        self.set_status(S_ACK);
        self.set_status(S_DRIVER);
        let offered = self.device_features();
        if offered & F_VERSION_1 == 0 {
            self.set_status(S_FAILED);
            return Err("VIRTIO_F_VERSION_1 not offered");
        }
        let neg = (offered & wanted) | F_VERSION_1;
        self.w32(R_DRV_FEATURES_SEL, 0);
        self.w32(R_DRV_FEATURES, neg as u32);
        self.w32(R_DRV_FEATURES_SEL, 1);
        self.w32(R_DRV_FEATURES, (neg >> 32) as u32);
        self.set_status(S_FEATURES_OK);
        if self.status() & S_FEATURES_OK == 0 {
            self.set_status(S_FAILED);
            return Err("FEATURES_OK not accepted");
        }
        Ok((offered, neg))
    }

    /// Sets up queue `idx` (allocating its rings).
    pub fn setup_queue(&self, idx: u32) -> Result<Queue, &'static str> {
        self.w32(R_QUEUE_SEL, idx);
        if self.r32(R_QUEUE_READY) != 0 {
            return Err("queue already ready");
        }
        let max = self.r32(R_QUEUE_NUM_MAX);
        if max == 0 {
            return Err("queue not available (QueueNumMax 0)");
        }
        let size = if max >= u32::from(QSIZE) {
            QSIZE
        } else {
            max as u16
        };
        let page = alloc_pages(1).ok_or("out of memory")?;
        let q = Queue {
            dev: *self,
            idx,
            size,
            desc: page,
            avail: page + 0x400,
            used: page + 0x800,
            next_avail: 0,
            last_used: 0,
        };
        self.w32(R_QUEUE_NUM, u32::from(size));
        self.w64(R_QUEUE_DESC, q.desc);
        self.w64(R_QUEUE_DRIVER, q.avail);
        self.w64(R_QUEUE_DEVICE, q.used);
        self.w32(R_QUEUE_READY, 1);
        if self.r32(R_QUEUE_READY) != 1 {
            return Err("QueueReady did not read back 1");
        }
        Ok(q)
    }

    pub fn driver_ok(&self) {
        self.set_status(S_DRIVER_OK);
    }
}

/// A split virtqueue; one request in flight at a time, descriptors from index 0.
pub struct Queue {
    pub dev: Mmio,
    pub idx: u32,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub next_avail: u16,
    pub last_used: u16,
}

/// One buffer of a request: (guest address, length, device-writable).
pub type Buf = (u64, u32, bool);

impl Queue {
    /// Writes descriptor `i` verbatim (hostile tests use this directly).
    pub fn set_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = self.desc + 16 * u64::from(i % self.size);
        wr::<u64>(d, addr);
        wr::<u32>(d + 8, len);
        wr::<u16>(d + 12, flags);
        wr::<u16>(d + 14, next);
    }

    /// Publishes `head` in the available ring (without notifying).
    pub fn push_avail(&mut self, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.next_avail % self.size);
        wr::<u16>(slot, head);
        compiler_fence(Ordering::SeqCst);
        self.next_avail = self.next_avail.wrapping_add(1);
        wr::<u16>(self.avail + 2, self.next_avail);
        compiler_fence(Ordering::SeqCst);
    }

    pub fn notify(&self) {
        self.dev.w32(R_QUEUE_NOTIFY, self.idx);
    }

    /// Chains `bufs` from descriptor 0, publishes and notifies.
    pub fn submit(&mut self, bufs: &[Buf]) {
        let n = bufs.len() as u16;
        for (i, &(addr, len, write)) in bufs.iter().enumerate() {
            let i = i as u16;
            let mut flags = if write { D_WRITE } else { 0 };
            if i + 1 < n {
                flags |= D_NEXT;
            }
            self.set_desc(i, addr, len, flags, i + 1);
        }
        self.push_avail(0);
        self.notify();
    }

    /// Whether the device has published a used entry we have not consumed.
    pub fn has_used(&self) -> bool {
        rd::<u16>(self.used + 2) != self.last_used
    }

    /// Consumes one used entry: (id, len).
    pub fn pop_used(&mut self) -> Option<(u32, u32)> {
        if !self.has_used() {
            return None;
        }
        compiler_fence(Ordering::SeqCst);
        let e = self.used + 4 + 8 * u64::from(self.last_used % self.size);
        let r = (rd::<u32>(e), rd::<u32>(e + 4));
        self.last_used = self.last_used.wrapping_add(1);
        Some(r)
    }

    /// Polls for a used entry until `ms` milliseconds pass.
    pub fn wait_used(&mut self, ms: u64) -> Option<(u32, u32)> {
        let d = deadline(ms);
        loop {
            if let Some(r) = self.pop_used() {
                return Some(r);
            }
            if expired(d) {
                return None;
            }
            core::hint::spin_loop();
        }
    }

    /// Submits and waits: Some(used len) or None on timeout.
    pub fn transfer(&mut self, bufs: &[Buf], ms: u64) -> Option<u32> {
        self.submit(bufs);
        self.wait_used(ms).map(|(_, len)| len)
    }
}
