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
    pub rx: VecDeque<Vec<u8>>,
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

fn recycle_into(pool: &mut Vec<Vec<u8>>, buf: Vec<u8>, frame_mtu: usize) {
    if pool.len() < POOL_MAX && buf.capacity() <= 2 * frame_mtu {
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
        b.clear();
        b.extend_from_slice(frame);
        self.rx.push_back(b);
        true
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
        let r = f(&self.frame);
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
        let frame = self.rx.pop_front()?;
        let rx = RxTok {
            frame,
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
