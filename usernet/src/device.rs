//! The smoltcp [`Device`] of the stack: two bounded frame queues. Frames from the guest
//! are queued by [`crate::UserNet::receive_frame`]; frames smoltcp (or the NAT tables)
//! produce wait in `tx` until the transport takes them.

use std::collections::VecDeque;

use smoltcp::phy::{Checksum, ChecksumCapabilities, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Bounded frame queues with a small buffer pool (frames are reused, not reallocated).
#[derive(Debug)]
pub struct FrameQueue {
    pub rx: VecDeque<Vec<u8>>,
    pub tx: VecDeque<Vec<u8>>,
    pool: Vec<Vec<u8>>,
    max_rx: usize,
    max_tx: usize,
    /// Ethernet MTU (IP MTU + 14).
    frame_mtu: usize,
    verify_checksums: bool,
    tx_checksum_offload: bool,
}

const POOL_MAX: usize = 64;

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
            tx: VecDeque::new(),
            pool: Vec::new(),
            max_rx,
            max_tx,
            frame_mtu: ip_mtu + 14,
            verify_checksums,
            tx_checksum_offload,
        }
    }

    /// A buffer holding a copy of `data`.
    pub fn buffer_from(&mut self, data: &[u8]) -> Vec<u8> {
        let mut b = self.pool.pop().unwrap_or_default();
        b.clear();
        b.extend_from_slice(data);
        b
    }

    /// Returns a buffer to the pool.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        if self.pool.len() < POOL_MAX && buf.capacity() <= self.frame_mtu {
            self.pool.push(buf);
        }
    }

    /// Queues a guest frame for smoltcp; false (frame dropped) when the queue is full.
    pub fn push_rx(&mut self, frame: &[u8]) -> bool {
        if self.rx.len() >= self.max_rx {
            return false;
        }
        let b = self.buffer_from(frame);
        self.rx.push_back(b);
        true
    }

    /// Queues a frame for the guest; false (frame dropped) when the queue is full.
    pub fn push_tx(&mut self, frame: Vec<u8>) -> bool {
        if self.tx.len() >= self.max_tx {
            return false;
        }
        self.tx.push_back(frame);
        true
    }

    pub fn tx_full(&self) -> bool {
        self.tx.len() >= self.max_tx
    }
}

pub struct RxTok(Vec<u8>);

pub struct TxTok<'a> {
    queue: &'a mut FrameQueue,
}

impl smoltcp::phy::RxToken for RxTok {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(&self.0)
    }
}

impl smoltcp::phy::TxToken for TxTok<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut b = self.queue.pool.pop().unwrap_or_default();
        b.clear();
        b.resize(len, 0);
        let r = f(&mut b);
        // Replies generated while receiving (ACKs, RSTs, ARP) are dropped once the queue
        // is full, like a NIC ring; TCP retransmits what matters.
        if self.queue.tx.len() < self.queue.max_tx {
            self.queue.tx.push_back(b);
        } else {
            self.queue.recycle(b);
        }
        r
    }
}

impl Device for FrameQueue {
    type RxToken<'a> = RxTok;
    type TxToken<'a> = TxTok<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(RxTok, TxTok<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((RxTok(frame), TxTok { queue: self }))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<TxTok<'_>> {
        if self.tx.len() >= self.max_tx {
            return None;
        }
        Some(TxTok { queue: self })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.frame_mtu;
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
