//! virtio-net (virtio 1.2 §5.1) with a QEMU `-netdev stream` backend: a unix stream socket on
//! which each Ethernet frame travels as a 4-byte big-endian length and the frame, which is
//! what `usernet stream --socket PATH` serves.
//!
//! Features: MAC (config space), STATUS (link up until the backend breaks), MTU (1500). No
//! offloads and no MRG_RXBUF, so every receive chain must hold the 12-byte
//! `virtio_net_hdr_v1` and a 1514-byte frame.
//!
//! Threads: a reader thread decodes frames from the socket into a bounded queue (at most
//! [`RX_PENDING_MAX`] frames; more are dropped and counted, like a full NIC ring) and wakes
//! the device's worker, which moves them into posted receive buffers and writes the guest's
//! transmitted frames to the socket. Guest input is untrusted: a malformed transmit chain is
//! dropped (and logged, rate-limited); a malformed stream frame from the backend closes the
//! connection and reports the link down; neither stops the device.
//!
//! Written by hand rather than with a crate: the framing is 4 bytes of length, and the
//! rust-vmm virtio-net pieces (vhost-net, Firecracker's tap device) are TAP-bound.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::worker::{QueueHandler, Worker};
use super::{
    queue_usable, read_config_bytes, ActivateContext, ActivateError, VirtioDevice, VirtioInterrupt,
    TYPE_NET,
};
use crate::sys::event::EventNotifier;
use crate::warn_ratelimited;

pub const VIRTIO_NET_F_MTU: u64 = 1 << 3;
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// `struct virtio_net_hdr_v1` (with `num_buffers`, always present in virtio 1.x).
pub const NET_HDR_LEN: usize = 12;
pub const MTU: u16 = 1500;
/// Largest frame the guest may receive: MTU + Ethernet header.
pub const MAX_RX_FRAME: usize = MTU as usize + 14;
/// Smallest receive chain accepted: header + a full frame.
pub const MIN_RX_CHAIN: usize = NET_HDR_LEN + MAX_RX_FRAME;
/// Largest transmit chain accepted (header + 64 KiB frame), as Linux bounds its own.
pub const MAX_TX_CHAIN: usize = NET_HDR_LEN + 65538;
/// Smallest frame sent on: an Ethernet header.
pub const MIN_TX_FRAME: usize = 14;
/// Largest frame length accepted from the backend.
pub const MAX_STREAM_FRAME: usize = 65535;
/// Frames from the backend held while the guest has no receive buffer posted.
pub const RX_PENDING_MAX: usize = 256;

const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
/// A backend that accepts no data for this long is treated as broken.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors creating the device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("Cannot connect to the network backend socket {path}: {source}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot start the network backend reader: {0}")]
    Thread(#[source] std::io::Error),
    #[error("Cannot create the network wake-up notifier: {0}")]
    Notifier(#[source] std::io::Error),
}

/// Why a transmit chain was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    #[error("Bad descriptor chain: {0}")]
    Chain(String),
    #[error("Chain has device-writable buffers")]
    Writable,
    #[error("Chain of {0} bytes is shorter than the header and an Ethernet header")]
    Short(usize),
    #[error("Chain of {0} bytes is longer than {MAX_TX_CHAIN}")]
    Long(usize),
}

/// A frame length the stream decoder refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Backend frame length {0} is out of range 1..={MAX_STREAM_FRAME}")]
pub struct BadFrameLength(pub usize);

/// Counters, readable while the device runs.
#[derive(Debug, Default)]
pub struct NetStats {
    pub tx_frames: AtomicU64,
    pub tx_dropped: AtomicU64,
    pub rx_frames: AtomicU64,
    /// Frames from the backend dropped because RX_PENDING_MAX were already waiting.
    pub rx_dropped_full: AtomicU64,
    /// Frames dropped because the guest's receive chain was too short or broken.
    pub rx_dropped_chain: AtomicU64,
}

/// Decodes length-prefixed frames from the backend's byte stream.
#[derive(Default)]
pub struct StreamDecoder {
    buf: Vec<u8>,
}

impl StreamDecoder {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole frame, `Ok(None)` when more bytes are needed, or the bad length (after
    /// which the stream cannot be resynchronised).
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, BadFrameLength> {
        let Some(prefix) = self.buf.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        if len == 0 || len > MAX_STREAM_FRAME {
            return Err(BadFrameLength(len));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let frame = self.buf[4..4 + len].to_vec();
        self.buf.drain(..4 + len);
        Ok(Some(frame))
    }
}

/// Reads a guest transmit chain: checks it and returns the Ethernet frame (header stripped).
pub fn read_tx_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> Result<Vec<u8>, TxError> {
    let writer = chain
        .clone()
        .writer(mem)
        .map_err(|e| TxError::Chain(format!("{e:?}")))?;
    if writer.available_bytes() != 0 {
        return Err(TxError::Writable);
    }
    let mut reader = chain
        .reader(mem)
        .map_err(|e| TxError::Chain(format!("{e:?}")))?;
    let total = reader.available_bytes();
    if total > MAX_TX_CHAIN {
        return Err(TxError::Long(total));
    }
    if total < NET_HDR_LEN + MIN_TX_FRAME {
        return Err(TxError::Short(total));
    }
    let mut all = vec![0u8; total];
    reader
        .read_exact(&mut all)
        .map_err(|e| TxError::Chain(e.to_string()))?;
    all.drain(..NET_HDR_LEN);
    Ok(all)
}

/// Writes `frame` with a zero `virtio_net_hdr_v1` (num_buffers 1) into a receive chain;
/// returns the used length, or None when the chain is broken or too short.
pub fn write_rx_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    frame: &[u8],
) -> Option<u32> {
    let mut w = chain.writer(mem).ok()?;
    if w.available_bytes() < MIN_RX_CHAIN || w.available_bytes() < NET_HDR_LEN + frame.len() {
        return None;
    }
    let mut hdr = [0u8; NET_HDR_LEN];
    hdr[10..12].copy_from_slice(&1u16.to_le_bytes());
    w.write_all(&hdr).ok()?;
    w.write_all(frame).ok()?;
    u32::try_from(NET_HDR_LEN + frame.len()).ok()
}

/// State shared by the device, its worker and the backend reader.
struct Shared {
    pending: Mutex<VecDeque<Vec<u8>>>,
    link_up: AtomicBool,
    /// Set when the device itself closes the connection (nothing to warn about).
    closing: AtomicBool,
    stats: NetStats,
    /// Signalled by the reader when frames arrive or the link goes down.
    wake: EventNotifier,
}

impl Shared {
    /// Whether the end of the connection is news: not caused by the device itself (closing,
    /// or already down after a write error or a bad frame).
    fn should_report(&self) -> bool {
        !self.closing.load(Ordering::SeqCst) && self.link_up.load(Ordering::SeqCst)
    }

    fn link_down(&self, stream: &UnixStream) {
        self.link_up.store(false, Ordering::SeqCst);
        let _ = stream.shutdown(Shutdown::Both);
        let _ = self.wake.notify();
    }
}

/// A virtio-net device on a stream-socket backend.
pub struct Net {
    mac: [u8; 6],
    stream: UnixStream,
    shared: Arc<Shared>,
    reader: Option<JoinHandle<()>>,
    worker: Option<Worker>,
}

impl Net {
    /// Connects to the backend at `path` and starts reading frames from it.
    pub fn connect(path: &Path, mac: [u8; 6]) -> Result<Self, NetError> {
        let stream = UnixStream::connect(path).map_err(|source| NetError::Connect {
            path: path.display().to_string(),
            source,
        })?;
        Self::with_stream(stream, mac)
    }

    /// Uses an already connected backend socket.
    pub fn with_stream(stream: UnixStream, mac: [u8; 6]) -> Result<Self, NetError> {
        let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
        let shared = Arc::new(Shared {
            pending: Mutex::new(VecDeque::new()),
            link_up: AtomicBool::new(true),
            closing: AtomicBool::new(false),
            stats: NetStats::default(),
            wake: EventNotifier::new().map_err(NetError::Notifier)?,
        });
        let read_half = stream.try_clone().map_err(NetError::Thread)?;
        let sh = shared.clone();
        let reader = std::thread::Builder::new()
            .name("virtio-net-rx".into())
            .spawn(move || backend_reader(read_half, &sh))
            .map_err(NetError::Thread)?;
        Ok(Net {
            mac,
            stream,
            shared,
            reader: Some(reader),
            worker: None,
        })
    }

    pub fn stats(&self) -> &NetStats {
        &self.shared.stats
    }

    pub fn link_up(&self) -> bool {
        self.shared.link_up.load(Ordering::SeqCst)
    }

    fn config(&self) -> [u8; 12] {
        // mac[6], le16 status, le16 max_virtqueue_pairs, le16 mtu.
        let mut c = [0u8; 12];
        c[..6].copy_from_slice(&self.mac);
        let status = if self.link_up() {
            VIRTIO_NET_S_LINK_UP
        } else {
            0
        };
        c[6..8].copy_from_slice(&status.to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c[10..12].copy_from_slice(&MTU.to_le_bytes());
        c
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.worker = None;
        self.shared.closing.store(true, Ordering::SeqCst);
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let s = &self.shared.stats;
        tracing::info!(
            "virtio-net: tx {} (dropped {}), rx {} (dropped {} queue full, {} bad chain)",
            s.tx_frames.load(Ordering::Relaxed),
            s.tx_dropped.load(Ordering::Relaxed),
            s.rx_frames.load(Ordering::Relaxed),
            s.rx_dropped_full.load(Ordering::Relaxed),
            s.rx_dropped_chain.load(Ordering::Relaxed),
        );
    }
}

/// The reader thread: decodes frames until EOF, an error or a bad length.
fn backend_reader(mut stream: UnixStream, shared: &Shared) {
    let mut dec = StreamDecoder::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => {
                if shared.should_report() {
                    tracing::warn!(
                        "virtio-net: the network backend closed the connection; link down"
                    );
                }
                break;
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if shared.should_report() {
                    tracing::warn!(
                        "virtio-net: reading the network backend failed: {e}; link down"
                    );
                }
                break;
            }
        };
        dec.push(&buf[..n]);
        let mut got = false;
        loop {
            match dec.next_frame() {
                Ok(Some(frame)) => {
                    let mut q = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
                    if q.len() >= RX_PENDING_MAX {
                        shared.stats.rx_dropped_full.fetch_add(1, Ordering::Relaxed);
                    } else {
                        q.push_back(frame);
                        got = true;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::error!("virtio-net: {e}; closing the backend connection, link down");
                    shared.link_down(&stream);
                    return;
                }
            }
        }
        if got {
            let _ = shared.wake.notify();
        }
    }
    shared.link_down(&stream);
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn device_features(&self) -> u64 {
        VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS | VIRTIO_NET_F_MTU
    }

    fn set_acked_features(&mut self, _features: u64) {}

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if ctx.queues.len() != 2 {
            return Err(ActivateError::QueueCount {
                got: ctx.queues.len(),
                want: 2,
            });
        }
        let mut queues = ctx.queues.into_iter();
        let (Some(rx), Some(tx)) = (queues.next(), queues.next()) else {
            return Err(ActivateError::QueueCount { got: 0, want: 2 });
        };
        let handler = NetHandler {
            rx,
            tx,
            mem: ctx.mem,
            interrupt: ctx.interrupt,
            shared: self.shared.clone(),
            stream: self.stream.try_clone().map_err(ActivateError::Worker)?,
            link_reported: self.link_up(),
            out: Vec::with_capacity(4 + MAX_TX_CHAIN),
        };
        self.worker = Some(
            Worker::spawn("virtio-net", handler, ctx.queue_evts).map_err(ActivateError::Worker)?,
        );
        Ok(())
    }

    fn reset(&mut self) {
        self.worker = None;
    }
}

struct NetHandler {
    rx: Queue,
    tx: Queue,
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    shared: Arc<Shared>,
    stream: UnixStream,
    /// The link state the driver was last told about.
    link_reported: bool,
    out: Vec<u8>,
}

impl NetHandler {
    fn process_tx(&mut self) {
        let mem = &self.mem;
        if !queue_usable("virtio-net", &self.tx, mem, &self.interrupt) {
            return;
        }
        let stats = &self.shared.stats;
        let mut used = false;
        while let Some(chain) = self.tx.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            match read_tx_chain(mem, chain) {
                Ok(frame) if self.shared.link_up.load(Ordering::SeqCst) => {
                    self.out.clear();
                    self.out
                        .extend_from_slice(&(frame.len() as u32).to_be_bytes());
                    self.out.extend_from_slice(&frame);
                    if let Err(e) = self.stream.write_all(&self.out) {
                        tracing::error!(
                            "virtio-net: writing to the network backend failed: {e}; link down"
                        );
                        self.shared.link_down(&self.stream);
                        stats.tx_dropped.fetch_add(1, Ordering::Relaxed);
                    } else {
                        stats.tx_frames.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(_) => {
                    stats.tx_dropped.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    warn_ratelimited!("virtio-net: transmit chain dropped: {e}");
                    stats.tx_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            if let Err(e) = self.tx.add_used(mem, head, 0) {
                warn_ratelimited!("virtio-net: cannot return descriptor {head}: {e:?}");
            }
            used = true;
        }
        if used {
            self.interrupt.signal_used_queue();
        }
    }

    /// Moves pending backend frames into posted receive buffers.
    fn process_rx(&mut self) {
        let mem = &self.mem;
        if !queue_usable("virtio-net", &self.rx, mem, &self.interrupt) {
            return;
        }
        let stats = &self.shared.stats;
        let mut used = false;
        loop {
            let Some(frame) = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front()
            else {
                break;
            };
            let Some(chain) = self.rx.pop_descriptor_chain(mem) else {
                // No buffer: the frame waits for the next notification of the rx queue.
                self.shared
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_front(frame);
                break;
            };
            let head = chain.head_index();
            let len = match write_rx_chain(mem, chain, &frame) {
                Some(len) => {
                    stats.rx_frames.fetch_add(1, Ordering::Relaxed);
                    len
                }
                None => {
                    warn_ratelimited!(
                        "virtio-net: receive chain broken or shorter than {MIN_RX_CHAIN} bytes; frame dropped"
                    );
                    stats.rx_dropped_chain.fetch_add(1, Ordering::Relaxed);
                    0
                }
            };
            if let Err(e) = self.rx.add_used(mem, head, len) {
                warn_ratelimited!("virtio-net: cannot return descriptor {head}: {e:?}");
            }
            used = true;
        }
        if used {
            self.interrupt.signal_used_queue();
        }
    }

    fn report_link(&mut self) {
        let up = self.shared.link_up.load(Ordering::SeqCst);
        if up != self.link_reported {
            self.link_reported = up;
            self.interrupt.signal_config_change();
        }
    }
}

impl QueueHandler for NetHandler {
    fn process_queue(&mut self, index: usize) {
        match index {
            RX => self.process_rx(),
            TX => {
                self.process_tx();
                self.report_link();
            }
            _ => {}
        }
    }

    fn extra_notifiers(&self) -> Vec<EventNotifier> {
        match self.shared.wake.try_clone() {
            Ok(n) => vec![n],
            Err(e) => {
                tracing::error!("virtio-net: cannot watch the backend: {e}");
                Vec::new()
            }
        }
    }

    fn process_extra(&mut self, _index: usize) {
        self.process_rx();
        self.report_link();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(len: u32, body: &[u8]) -> Vec<u8> {
        let mut v = len.to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn test_stream_decoder_splits_frames_across_pushes() {
        let mut d = StreamDecoder::default();
        let mut bytes = framed(3, b"abc");
        bytes.extend(framed(2, b"de"));
        d.push(&bytes[..5]);
        assert_eq!(d.next_frame(), Ok(None));
        d.push(&bytes[5..]);
        assert_eq!(d.next_frame(), Ok(Some(b"abc".to_vec())));
        assert_eq!(d.next_frame(), Ok(Some(b"de".to_vec())));
        assert_eq!(d.next_frame(), Ok(None));
    }

    #[test]
    fn test_stream_decoder_bad_lengths_are_errors() {
        for len in [0u32, 65536, u32::MAX] {
            let mut d = StreamDecoder::default();
            d.push(&framed(len, b"xx"));
            assert_eq!(d.next_frame(), Err(BadFrameLength(len as usize)));
        }
        let mut d = StreamDecoder::default();
        d.push(&framed(65535, &[0; 65535]));
        assert_eq!(d.next_frame().map(|f| f.map(|f| f.len())), Ok(Some(65535)));
    }

    #[test]
    fn test_net_backend_frames_beyond_the_pending_bound_are_dropped_and_counted() {
        let (dev_side, mut backend) = UnixStream::pair().unwrap();
        let net = Net::with_stream(dev_side, [2, 0, 0, 0, 0, 1]).unwrap();
        let extra = 44;
        let mut all = Vec::new();
        for i in 0..RX_PENDING_MAX + extra {
            all.extend(framed(60, &[i as u8; 60]));
        }
        backend.write_all(&all).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let dropped = net.stats().rx_dropped_full.load(Ordering::Relaxed);
            if dropped == extra as u64 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "dropped {dropped}, want {extra}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let q = net.shared.pending.lock().unwrap();
        assert_eq!(q.len(), RX_PENDING_MAX);
        // The oldest frames are kept, in order.
        assert_eq!(q.front().map(|f| f[0]), Some(0));
        assert_eq!(q.back().map(|f| f[0]), Some((RX_PENDING_MAX - 1) as u8));
        drop(q);
        assert!(net.link_up());
    }

    #[test]
    fn test_net_bad_backend_length_reports_link_down() {
        let (dev_side, mut backend) = UnixStream::pair().unwrap();
        let net = Net::with_stream(dev_side, [0x52, 0x54, 0, 0x12, 0x34, 0x56]).unwrap();
        let mut cfg = [0u8; 12];
        net.read_config(0, &mut cfg);
        assert_eq!(&cfg[..6], &[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert_eq!(u16::from_le_bytes([cfg[6], cfg[7]]), VIRTIO_NET_S_LINK_UP);
        assert_eq!(u16::from_le_bytes([cfg[10], cfg[11]]), MTU);
        backend.write_all(&framed(20, &[1; 20])).unwrap();
        backend.write_all(&0u32.to_be_bytes()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while net.link_up() {
            assert!(std::time::Instant::now() < deadline, "link stayed up");
            std::thread::sleep(Duration::from_millis(5));
        }
        net.read_config(6, &mut cfg[..2]);
        assert_eq!(&cfg[..2], &[0, 0]);
        // The device closed its end: the backend sees EOF.
        backend
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut b = [0u8; 1];
        assert_eq!(backend.read(&mut b).unwrap(), 0);
        assert_eq!(net.shared.pending.lock().unwrap().len(), 1);
    }
}
