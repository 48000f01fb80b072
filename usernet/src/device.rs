//! The smoltcp [`Device`] of the stack: two bounded frame queues. Frames from the guest
//! are queued by [`crate::UserNet::receive_frame`]; frames smoltcp (or the NAT tables)
//! produce wait in `tx` until the transport takes them.

use std::collections::VecDeque;

use smoltcp::phy::{Checksum, ChecksumCapabilities, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Bounded frame queues with buffer pools (frames are reused, not reallocated: freeing
/// and allocating 64 KiB per frame costs page faults).
#[derive(Debug)]
pub struct FrameQueue {
    /// Guest frames for smoltcp: (buffer, frame length); buffers keep their full size so
    /// they can be read into again without zeroing.
    pub rx: VecDeque<(Vec<u8>, usize)>,
    rx_pool: Vec<Vec<u8>>,
    pub tx: TxQueue,
    max_rx: usize,
    verify_checksums: bool,
    tx_checksum_offload: bool,
}

/// Frames towards the guest and their buffer pool.
#[derive(Debug)]
pub struct TxQueue {
    pub frames: VecDeque<Vec<u8>>,
    pool: Vec<Vec<u8>>,
    max: usize,
    /// Ethernet MTU (IP MTU + 14).
    frame_mtu: usize,
}

const POOL_MAX: usize = 64;

/// Buffers larger than this are freed rather than pooled.
const POOL_BUF_MAX: usize = 256 * 1024;

fn recycle_into(pool: &mut Vec<Vec<u8>>, buf: Vec<u8>, _frame_mtu: usize) {
    if pool.len() < POOL_MAX && buf.capacity() <= POOL_BUF_MAX {
        pool.push(buf);
    }
}

impl TxQueue {
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn pop_front(&mut self) -> Option<Vec<u8>> {
        self.frames.pop_front()
    }

    pub fn push_front(&mut self, frame: Vec<u8>) {
        self.frames.push_front(frame);
    }
}

impl FrameQueue {
    pub fn new(
        ip_mtu: usize,
        max_rx: usize,
        max_tx: usize,
        verify_checksums: bool,
        tx_checksum_offload: bool,
    ) -> Self {
        Self {
            rx: VecDeque::new(),
            rx_pool: Vec::new(),
            tx: TxQueue {
                frames: VecDeque::new(),
                pool: Vec::new(),
                max: max_tx,
                frame_mtu: ip_mtu + 14,
            },
            max_rx,
            verify_checksums,
            tx_checksum_offload,
        }
    }

    /// Returns a frame buffer (taken from the tx queue) to the pool.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        recycle_into(&mut self.tx.pool, buf, self.tx.frame_mtu);
    }

    /// Queues a guest frame for smoltcp; false (frame dropped) when the queue is full.
    pub fn push_rx(&mut self, frame: &[u8]) -> bool {
        if self.rx.len() >= self.max_rx {
            return false;
        }
        let mut b = self.rx_pool.pop().unwrap_or_default();
        if b.len() < frame.len() {
            b.resize(frame.len(), 0);
        }
        b[..frame.len()].copy_from_slice(frame);
        self.rx.push_back((b, frame.len()));
        true
    }

    /// Queues a guest frame that is already in a pool buffer (`buf[..len]`), without
    /// copying; false (buffer recycled) when the queue is full.
    pub fn push_rx_owned(&mut self, buf: Vec<u8>, len: usize) -> bool {
        if self.rx.len() >= self.max_rx || len > buf.len() {
            recycle_into(&mut self.rx_pool, buf, self.tx.frame_mtu);
            return false;
        }
        self.rx.push_back((buf, len));
        true
    }

    /// A receive buffer at least `size` bytes long (contents unspecified).
    pub fn rx_buffer(&mut self, size: usize) -> Vec<u8> {
        let mut b = self.rx_pool.pop().unwrap_or_default();
        if b.len() < size {
            b.resize(size, 0);
        }
        b
    }

    /// Returns a receive buffer to the pool.
    pub fn recycle_rx(&mut self, buf: Vec<u8>) {
        recycle_into(&mut self.rx_pool, buf, self.tx.frame_mtu);
    }

    /// Queues a frame for the guest; false (frame dropped) when the queue is full.
    pub fn push_tx(&mut self, frame: Vec<u8>) -> bool {
        if self.tx.frames.len() >= self.tx.max {
            return false;
        }
        self.tx.frames.push_back(frame);
        true
    }

    pub fn tx_full(&self) -> bool {
        self.tx.frames.len() >= self.tx.max
    }
}

pub struct RxTok<'a> {
    frame: Vec<u8>,
    len: usize,
    pool: &'a mut Vec<Vec<u8>>,
    frame_mtu: usize,
}

pub struct TxTok<'a> {
    queue: &'a mut TxQueue,
}

impl smoltcp::phy::RxToken for RxTok<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        let r = f(self.frame.get(..self.len).unwrap_or_default());
        recycle_into(self.pool, self.frame, self.frame_mtu);
        r
    }
}

impl smoltcp::phy::TxToken for TxTok<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let q = self.queue;
        let mut b = q.pool.pop().unwrap_or_default();
        // smoltcp writes every byte of the frame: reuse old contents instead of zeroing
        // 64 KiB per frame.
        if b.len() < len {
            b.resize(len, 0);
        } else {
            b.truncate(len);
        }
        let r = f(&mut b);
        // Replies generated while receiving (ACKs, RSTs, ARP) are dropped once the queue
        // is full, like a NIC ring; TCP retransmits what matters.
        if q.frames.len() < q.max {
            q.frames.push_back(b);
        } else {
            recycle_into(&mut q.pool, b, q.frame_mtu);
        }
        r
    }
}

impl Device for FrameQueue {
    type RxToken<'a> = RxTok<'a>;
    type TxToken<'a> = TxTok<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(RxTok<'_>, TxTok<'_>)> {
        let (frame, len) = self.rx.pop_front()?;
        let rx = RxTok {
            frame,
            len,
            pool: &mut self.rx_pool,
            frame_mtu: self.tx.frame_mtu,
        };
        Some((
            rx,
            TxTok {
                queue: &mut self.tx,
            },
        ))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<TxTok<'_>> {
        if self.tx.frames.len() >= self.tx.max {
            return None;
        }
        Some(TxTok {
            queue: &mut self.tx,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.tx.frame_mtu;
        caps.max_burst_size = None;
        let mut sums = ChecksumCapabilities::default();
        if !self.verify_checksums {
            sums.ipv4 = Checksum::Tx;
            sums.tcp = Checksum::Tx;
            sums.udp = Checksum::Tx;
            sums.icmpv4 = Checksum::Tx;
        }
        if self.tx_checksum_offload {
            sums.tcp = if self.verify_checksums {
                Checksum::Rx
            } else {
                Checksum::None
            };
        }
        caps.checksum = sums;
        caps
    }
}
