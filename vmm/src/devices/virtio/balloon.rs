//! virtio-balloon (virtio 1.x §5.5, device type 5) with free page reporting: memory the guest
//! gives up goes back to the host, so the VMM's RSS falls after a container that used 1 GiB
//! exits.
//!
//! - inflateq: le32 page frame numbers (4 KiB units) the driver gives up; their backing is
//!   discarded ([`crate::sys::mem::discard`]). deflateq: pages the driver takes back; nothing to
//!   do, since a discarded page faults in again (zeroed) on the guest's next touch and
//!   VIRTIO_BALLOON_F_MUST_TELL_HOST is not offered.
//! - reporting_vq (VIRTIO_BALLOON_F_REPORTING): every device-writable buffer is a free range of
//!   guest RAM; it is discarded and the chain returned with used length 0 (§5.5.6.7). Linux
//!   reports free blocks of 2 MiB and more a few seconds after they are freed.
//! - config: `num_pages`, the host's target (set through [`BalloonControl`]), and `actual`,
//!   written by the driver.
//!
//! Every address and length comes from the guest: a range is released only when it is 4 KiB
//! aligned and lies wholly inside one RAM region; anything else is skipped with a rate-limited
//! warning and its chain still returned, so a hostile driver can neither reach host memory
//! outside its RAM nor stop the device.

use std::io::Read;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{
    Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress,
};

use super::worker::{QueueHandler, Worker};
use super::{
    queue_usable, read_config_bytes, ActivateContext, ActivateError, VirtioDevice, VirtioInterrupt,
    TYPE_BALLOON,
};
use crate::sys::mem;
use crate::warn_ratelimited;

/// Feature bits (§5.5.3).
pub const F_MUST_TELL_HOST: u32 = 0;
pub const F_STATS_VQ: u32 = 1;
pub const F_DEFLATE_ON_OOM: u32 = 2;
pub const F_FREE_PAGE_HINT: u32 = 3;
pub const F_PAGE_POISON: u32 = 4;
pub const F_REPORTING: u32 = 5;

/// What the device offers: no statistics or hinting queues, so the reporting queue is always
/// queue 2 (see [`queue_layout`]). Linux's virtio-mmio transport numbers queues the same way
/// (`vm_find_vqs` gives the next index only to queues the driver creates).
const OFFERED: u64 = 1 << F_DEFLATE_ON_OOM | 1 << F_REPORTING;
/// The balloon's unit: inflate PFNs and reported ranges are in 4 KiB pages whatever the host's
/// or the guest's page size (VIRTIO_BALLOON_PFN_SHIFT).
pub const PAGE_SIZE: u64 = 4096;
const PFN_SHIFT: u32 = 12;
const QUEUE_SIZE: u16 = 128;
/// inflateq, deflateq, reporting_vq: every queue the offered features can give.
const QUEUE_SIZES: [u16; 3] = [QUEUE_SIZE; 3];
/// struct virtio_balloon_config up to `actual` (the hint and poison fields need features we
/// do not offer).
const CONFIG_LEN: usize = 8;

/// Why a guest-given range was not released.
#[derive(Debug, thiserror::Error)]
pub enum BalloonError {
    #[error("Empty range at {addr:#x}")]
    Empty { addr: u64 },
    #[error("Range {addr:#x}+{len:#x} is not 4 KiB aligned")]
    Unaligned { addr: u64, len: u64 },
    #[error("Range {addr:#x}+{len:#x} wraps around the address space")]
    Overflow { addr: u64, len: u64 },
    #[error("Range {addr:#x}+{len:#x} does not start in guest RAM")]
    OutsideRam { addr: u64, len: u64 },
    #[error("Range {addr:#x}+{len:#x} runs past the end of its RAM region")]
    CrossesRegion { addr: u64, len: u64 },
    #[error("Range {addr:#x}+{len:#x} is huge-page memory, which is not released in 4 KiB pages")]
    HugePages { addr: u64, len: u64 },
    #[error("Cannot release {addr:#x}+{len:#x}: {source}")]
    Release {
        addr: u64,
        len: u64,
        #[source]
        source: std::io::Error,
    },
}

/// Where each queue after deflateq sits for the negotiated features (§5.5.2): a queue whose
/// feature is absent takes no index, so the later ones move down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLayout {
    pub stats: Option<usize>,
    pub free_page: Option<usize>,
    pub reporting: Option<usize>,
    /// Number of queues.
    pub count: usize,
}

/// The queue indices the spec gives for the features in `acked`.
pub fn queue_layout(acked: u64) -> QueueLayout {
    let mut next = 2;
    let mut take = |bit: u32| {
        (acked & (1 << bit) != 0).then(|| {
            next += 1;
            next - 1
        })
    };
    let stats = take(F_STATS_VQ);
    let free_page = take(F_FREE_PAGE_HINT);
    let reporting = take(F_REPORTING);
    QueueLayout {
        stats,
        free_page,
        reporting,
        count: next,
    }
}

/// State shared by the device, its worker and the host's [`BalloonControl`].
#[derive(Default)]
struct State {
    num_pages: AtomicU32,
    actual: AtomicU32,
    released: AtomicU64,
    /// The running device's interrupt, for config-change notifications.
    interrupt: Mutex<Option<Arc<VirtioInterrupt>>>,
}

/// The host's handle on a balloon: the target and what the guest did.
#[derive(Clone)]
pub struct BalloonControl {
    state: Arc<State>,
}

impl BalloonControl {
    /// Asks the guest to hold `pages` 4 KiB pages in the balloon (`num_pages`) and, when the
    /// device runs, tells it with a config-change interrupt.
    pub fn set_target_pages(&self, pages: u32) {
        self.state.num_pages.store(pages, Ordering::SeqCst);
        let irq = self
            .state
            .interrupt
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(i) = irq.as_ref() {
            i.signal_config_change();
        }
    }

    /// Pages the driver says it holds (`actual`).
    pub fn actual_pages(&self) -> u32 {
        self.state.actual.load(Ordering::SeqCst)
    }

    /// Bytes of guest RAM given back to the host so far (inflated and reported).
    pub fn released_bytes(&self) -> u64 {
        self.state.released.load(Ordering::Relaxed)
    }
}

/// A virtio-balloon device.
#[derive(Default)]
pub struct Balloon {
    state: Arc<State>,
    acked: u64,
    worker: Option<Worker>,
}

impl Balloon {
    pub fn control(&self) -> BalloonControl {
        BalloonControl {
            state: self.state.clone(),
        }
    }

    fn config(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[0..4].copy_from_slice(&self.state.num_pages.load(Ordering::SeqCst).to_le_bytes());
        c[4..8].copy_from_slice(&self.state.actual.load(Ordering::SeqCst).to_le_bytes());
        c
    }
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        TYPE_BALLOON
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn device_features(&self) -> u64 {
        OFFERED
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data);
    }

    /// Only `actual` (bytes 4..8) is the driver's to write; `num_pages` is the host's.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let mut c = self.config();
        let mut touched_actual = false;
        for (i, &b) in data.iter().enumerate() {
            match offset.checked_add(i as u64) {
                Some(at @ 4..=7) => {
                    c[at as usize] = b;
                    touched_actual = true;
                }
                _ => {
                    warn_ratelimited!("virtio-balloon: driver write outside `actual` ignored");
                    break;
                }
            }
        }
        if touched_actual {
            let actual = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
            self.state.actual.store(actual, Ordering::SeqCst);
        }
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if ctx.queues.len() != QUEUE_SIZES.len() {
            return Err(ActivateError::QueueCount {
                got: ctx.queues.len(),
                want: QUEUE_SIZES.len(),
            });
        }
        *self
            .state
            .interrupt
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(ctx.interrupt.clone());
        let handler = BalloonHandler {
            queues: ctx.queues,
            reporting: queue_layout(self.acked).reporting,
            mem: ctx.mem,
            interrupt: ctx.interrupt,
            state: self.state.clone(),
        };
        self.worker = Some(
            Worker::spawn("virtio-balloon", handler, ctx.queue_evts)
                .map_err(ActivateError::Worker)?,
        );
        Ok(())
    }

    fn reset(&mut self) {
        self.worker = None;
        *self
            .state
            .interrupt
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        // The pages the old driver held are its own again after a reset.
        self.state.actual.store(0, Ordering::SeqCst);
    }
}

struct BalloonHandler {
    queues: Vec<Queue>,
    /// reporting_vq's index, if the driver accepted VIRTIO_BALLOON_F_REPORTING.
    reporting: Option<usize>,
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    state: Arc<State>,
}

#[derive(Clone, Copy)]
enum QueueKind {
    Inflate,
    Deflate,
    Report,
}

impl QueueHandler for BalloonHandler {
    fn process_queue(&mut self, index: usize) {
        let kind = match index {
            0 => QueueKind::Inflate,
            1 => QueueKind::Deflate,
            i if Some(i) == self.reporting => QueueKind::Report,
            _ => {
                warn_ratelimited!("virtio-balloon: notify of unused queue {index}");
                return;
            }
        };
        let mem = &self.mem;
        let Some(queue) = self.queues.get_mut(index) else {
            return;
        };
        if !queue_usable("virtio-balloon", queue, mem, &self.interrupt) {
            return;
        }
        let mut used_any = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let released = match kind {
                QueueKind::Inflate => process_inflate(mem, chain),
                QueueKind::Deflate => 0,
                QueueKind::Report => process_report(mem, chain),
            };
            self.state.released.fetch_add(released, Ordering::Relaxed);
            // Nothing is written into any balloon buffer: used length 0 (§5.5.6.7 for reports).
            if let Err(e) = queue.add_used(mem, head, 0) {
                warn_ratelimited!("virtio-balloon: cannot return descriptor {head}: {e:?}");
            }
            used_any = true;
        }
        if used_any {
            self.interrupt.signal_used_queue();
        }
    }
}

/// Releases the pages an inflateq chain names (le32 PFNs in its device-readable buffers;
/// device-writable ones are ignored). Returns the bytes released. Public for the fuzz target.
pub fn process_inflate(mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> u64 {
    let mut reader = match chain.reader(mem) {
        Ok(r) => r,
        Err(e) => {
            warn_ratelimited!("virtio-balloon: bad inflate chain: {e:?}");
            return 0;
        }
    };
    let mut released = 0;
    // Consecutive PFNs in one region are released with one call.
    let mut run: Option<(u64, u64)> = None;
    let mut pfn = [0u8; 4];
    while reader.available_bytes() >= pfn.len() {
        if reader.read_exact(&mut pfn).is_err() {
            break;
        }
        let addr = u64::from(u32::from_le_bytes(pfn)) << PFN_SHIFT;
        run = match run {
            Some((start, len)) if start + len == addr && same_region(mem, start, addr) => {
                Some((start, len + PAGE_SIZE))
            }
            other => {
                if let Some((start, len)) = other {
                    released += release_logged(mem, start, len);
                }
                Some((addr, PAGE_SIZE))
            }
        };
    }
    if let Some((start, len)) = run {
        released += release_logged(mem, start, len);
    }
    if reader.available_bytes() != 0 {
        warn_ratelimited!("virtio-balloon: inflate buffer is not a whole number of PFNs");
    }
    released
}

/// Releases every range a reporting_vq chain names. Returns the bytes released. Public for
/// the fuzz target.
pub fn process_report(mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> u64 {
    let mut released = 0;
    // The iterator ends a looping chain after queue-size descriptors and caps it at 4 GiB.
    for desc in chain {
        let (addr, len) = (desc.addr().raw_value(), u64::from(desc.len()));
        // Reported pages are device-writable buffers (the device may discard their contents);
        // a device-readable one is the driver's mistake and is left alone, as QEMU does.
        if !desc.is_write_only() {
            warn_ratelimited!(
                "virtio-balloon: device-readable report {addr:#x}+{len:#x} left alone"
            );
            continue;
        }
        released += release_logged(mem, addr, len);
    }
    released
}

fn same_region(mem: &GuestMemoryMmap, a: u64, b: u64) -> bool {
    match (
        mem.find_region(GuestAddress(a)),
        mem.find_region(GuestAddress(b)),
    ) {
        (Some(x), Some(y)) => x.start_addr() == y.start_addr(),
        _ => false,
    }
}

fn release_logged(mem: &GuestMemoryMmap, addr: u64, len: u64) -> u64 {
    release_range(mem, addr, len).unwrap_or_else(|e| {
        warn_ratelimited!("virtio-balloon: {e}; skipped");
        0
    })
}

/// Gives the backing of guest RAM `addr..addr + len` back to the host, after checking the
/// range: 4 KiB aligned, non-empty, wholly inside one RAM region. Where host pages are larger
/// than 4 KiB only the host pages wholly inside the range are released, never a neighbour's.
/// Returns the bytes released.
pub fn release_range(mem: &GuestMemoryMmap, addr: u64, len: u64) -> Result<u64, BalloonError> {
    if len == 0 {
        return Err(BalloonError::Empty { addr });
    }
    if addr % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 {
        return Err(BalloonError::Unaligned { addr, len });
    }
    let last = addr
        .checked_add(len - 1)
        .ok_or(BalloonError::Overflow { addr, len })?;
    let region = mem
        .find_region(GuestAddress(addr))
        .ok_or(BalloonError::OutsideRam { addr, len })?;
    if last > region.last_addr().raw_value() {
        return Err(BalloonError::CrossesRegion { addr, len });
    }
    if region.is_hugetlbfs() == Some(true) {
        return Err(BalloonError::HugePages { addr, len });
    }
    // Offsets in the region; its mapping starts host-page aligned, so aligning the offsets
    // aligns the host addresses.
    let offset = addr - region.start_addr().raw_value();
    let host_page = mem::page_size();
    let start = offset
        .checked_next_multiple_of(host_page)
        .ok_or(BalloonError::Overflow { addr, len })?;
    // `offset + len - 1` is at most the region's last offset, so this cannot overflow.
    let end = (offset + len) / host_page * host_page;
    if end <= start {
        return Ok(0);
    }
    let host = region
        .get_host_address(MemoryRegionAddress(start))
        .map_err(|_| BalloonError::OutsideRam { addr, len })?;
    let n = usize::try_from(end - start).map_err(|_| BalloonError::Overflow { addr, len })?;
    let shared = region.flags() & libc::MAP_SHARED != 0;
    // SAFETY: `host..host + n` lies inside this region's mapping (start < end <= region
    // length, checked above), which stays mapped while `mem` holds it. The guest gave these
    // pages up, so losing their contents is what it asked for; the VMM keeps no Rust
    // references into guest RAM (all accesses are volatile, through vm-memory), and a device
    // that still touches such a page reads zeroes or writes into a fresh page: memory-safe.
    unsafe { mem::discard(host, n, shared) }.map_err(|source| BalloonError::Release {
        addr,
        len,
        source,
    })?;
    Ok(end - start)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::{Duration, Instant};

    use vm_memory::Bytes;

    use super::*;
    use crate::hv::IrqLine;
    use crate::sys::event::EventNotifier;

    const KIB: u64 = 1024;
    /// Two adjacent regions, mapped separately (as RAM below and above a hole would be).
    const A_SIZE: u64 = 256 * KIB;
    const B_SIZE: u64 = 256 * KIB;

    fn two_regions() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), A_SIZE as usize),
            (GuestAddress(A_SIZE), B_SIZE as usize),
        ])
        .unwrap()
    }

    fn touch(mem: &GuestMemoryMmap, addr: u64, len: u64, byte: u8) {
        mem.write_slice(&vec![byte; len as usize], GuestAddress(addr))
            .unwrap();
    }

    /// Whether each 4 KiB page of `addr..addr + pages * 4 KiB` is resident, per mincore(2).
    #[cfg(target_os = "linux")]
    fn resident(mem: &GuestMemoryMmap, addr: u64, pages: usize) -> Vec<bool> {
        assert_eq!(
            mem::page_size(),
            PAGE_SIZE,
            "these tests assume 4 KiB host pages"
        );
        let host = mem.get_host_address(GuestAddress(addr)).unwrap();
        let mut vec = vec![0u8; pages];
        // SAFETY: `host` starts a page of a live mapping of `mem` that spans the whole range
        // (callers stay inside one region); mincore writes one byte per page into `vec`, which
        // has room for exactly that many.
        let r = unsafe { libc::mincore(host.cast(), pages * PAGE_SIZE as usize, vec.as_mut_ptr()) };
        assert_eq!(r, 0, "mincore: {}", std::io::Error::last_os_error());
        vec.iter().map(|b| b & 1 == 1).collect()
    }

    fn read_byte(mem: &GuestMemoryMmap, addr: u64) -> u8 {
        mem.read_obj::<u8>(GuestAddress(addr)).unwrap()
    }

    #[test]
    fn test_balloon_features_offer_reporting_and_deflate_on_oom_only() {
        let b = Balloon::default();
        assert_eq!(b.device_type(), 5);
        let f = b.device_features();
        assert_eq!(f, 1 << 5 | 1 << 2);
        assert_eq!(f & (1 << F_STATS_VQ | 1 << F_FREE_PAGE_HINT), 0);
        // inflateq, deflateq and reporting_vq: the most the offered features can give.
        assert_eq!(b.queue_max_sizes().len(), queue_layout(f).count);
    }

    #[test]
    fn test_balloon_queue_layout_skips_absent_queues_per_spec() {
        let l = |bits: &[u32]| queue_layout(bits.iter().fold(0, |a, b| a | 1 << b));
        let none = l(&[]);
        assert_eq!(
            (none.stats, none.free_page, none.reporting),
            (None, None, None)
        );
        assert_eq!(none.count, 2);
        assert_eq!(l(&[F_REPORTING]).reporting, Some(2));
        assert_eq!(l(&[F_REPORTING, F_DEFLATE_ON_OOM]).count, 3);
        let s = l(&[F_STATS_VQ, F_REPORTING]);
        assert_eq!((s.stats, s.reporting, s.count), (Some(2), Some(3), 4));
        let h = l(&[F_FREE_PAGE_HINT, F_REPORTING]);
        assert_eq!((h.free_page, h.reporting), (Some(2), Some(3)));
        let all = l(&[F_STATS_VQ, F_FREE_PAGE_HINT, F_REPORTING]);
        assert_eq!(
            (all.stats, all.free_page, all.reporting, all.count),
            (Some(2), Some(3), Some(4), 5)
        );
    }

    #[test]
    fn test_balloon_config_actual_driver_writable_num_pages_host_only() {
        let mut b = Balloon::default();
        let ctl = b.control();
        ctl.set_target_pages(0x1234_5678);
        b.write_config(4, &7u32.to_le_bytes());
        // A driver write to num_pages is ignored, as is the part of a write that runs past
        // `actual`.
        b.write_config(0, &9u32.to_le_bytes());
        b.write_config(6, &[0xaa, 0xbb, 0xcc]);
        let mut c = [0u8; 8];
        b.read_config(0, &mut c);
        assert_eq!(u32::from_le_bytes([c[0], c[1], c[2], c[3]]), 0x1234_5678);
        assert_eq!(u32::from_le_bytes([c[4], c[5], c[6], c[7]]), 0xbbaa_0007);
        assert_eq!(ctl.actual_pages(), 0xbbaa_0007);
        let mut tail = [0xffu8; 4];
        b.read_config(8, &mut tail);
        assert_eq!(tail, [0; 4], "bytes past the config read as zero");
        b.write_config(u64::MAX, &[1, 2]);
        assert_eq!(ctl.actual_pages(), 0xbbaa_0007);
    }

    struct CountIrq(AtomicUsize);
    impl IrqLine for CountIrq {
        fn trigger(&self) -> std::io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    /// A ready split queue of 16 entries with its rings at `base` (descriptors), +0x100
    /// (available) and +0x200 (used).
    fn ready_queue(mem: &GuestMemoryMmap, base: u64) -> Queue {
        let mut q = Queue::new(16).unwrap();
        q.set_size(16);
        q.set_desc_table_address(Some(base as u32), Some(0));
        q.set_avail_ring_address(Some((base + 0x100) as u32), Some(0));
        q.set_used_ring_address(Some((base + 0x200) as u32), Some(0));
        q.set_ready(true);
        assert!(q.is_valid(mem));
        q
    }

    /// Writes descriptors `(addr, len, flags)` chained from index 0 and publishes head 0.
    fn publish(mem: &GuestMemoryMmap, base: u64, descs: &[(u64, u32, u16)], avail_idx: u16) {
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let d = base + 16 * i as u64;
            let next = if i + 1 < descs.len() {
                flags | 1
            } else {
                flags
            };
            mem.write_obj(addr, GuestAddress(d)).unwrap();
            mem.write_obj(len, GuestAddress(d + 8)).unwrap();
            mem.write_obj(next, GuestAddress(d + 12)).unwrap();
            mem.write_obj(i as u16 + 1, GuestAddress(d + 14)).unwrap();
        }
        mem.write_obj(
            0u16,
            GuestAddress(base + 0x100 + 4 + 2 * u64::from(avail_idx - 1)),
        )
        .unwrap();
        mem.write_obj(avail_idx, GuestAddress(base + 0x100 + 2))
            .unwrap();
    }

    fn used_idx(mem: &GuestMemoryMmap, base: u64) -> u16 {
        mem.read_obj(GuestAddress(base + 0x200 + 2)).unwrap()
    }

    fn wait_used(mem: &GuestMemoryMmap, base: u64, want: u16) -> bool {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if used_idx(mem, base) == want {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn test_balloon_reporting_queue_releases_ranges_and_returns_chain_with_len_0() {
        const RINGS: u64 = 0x1000;
        const DATA: u64 = 0x10000;
        let mem = two_regions();
        touch(&mem, DATA, 32 * PAGE_SIZE, 0xaa);
        let irq = Arc::new(CountIrq(AtomicUsize::new(0)));
        let interrupt = Arc::new(VirtioInterrupt::new(irq.clone()));
        let mut b = Balloon::default();
        let ctl = b.control();
        b.set_acked_features(1 << F_REPORTING | crate::devices::virtio::VIRTIO_F_VERSION_1);
        let queues = vec![
            Queue::new(16).unwrap(),
            Queue::new(16).unwrap(),
            ready_queue(&mem, RINGS),
        ];
        let evts: Vec<_> = (0..3).map(|_| EventNotifier::new().unwrap()).collect();
        let kick = evts[2].try_clone().unwrap();
        b.activate(ActivateContext {
            mem: mem.clone(),
            queues,
            queue_evts: evts,
            interrupt: interrupt.clone(),
        })
        .unwrap();
        // Two writable ranges (pages 0..8 and 16..24), one device-readable (24..32): left alone.
        publish(
            &mem,
            RINGS,
            &[
                (DATA, 8 * PAGE_SIZE as u32, 2),
                (DATA + 16 * PAGE_SIZE, 8 * PAGE_SIZE as u32, 2),
                (DATA + 24 * PAGE_SIZE, 8 * PAGE_SIZE as u32, 0),
            ],
            1,
        );
        kick.notify().unwrap();
        assert!(wait_used(&mem, RINGS, 1), "reported chain not returned");
        let id: u32 = mem.read_obj(GuestAddress(RINGS + 0x204)).unwrap();
        let len: u32 = mem.read_obj(GuestAddress(RINGS + 0x208)).unwrap();
        assert_eq!((id, len), (0, 0), "used element (id, len)");
        assert_ne!(irq.0.load(Ordering::SeqCst), 0, "no used-buffer interrupt");
        let r = resident(&mem, DATA, 32);
        assert!(
            r[0..8].iter().all(|&x| !x),
            "reported pages 0..8 still resident"
        );
        assert!(
            r[8..16].iter().all(|&x| x),
            "unreported pages 8..16 released"
        );
        assert!(
            r[16..24].iter().all(|&x| !x),
            "reported pages 16..24 still resident"
        );
        assert!(
            r[24..32].iter().all(|&x| x),
            "device-readable report was released"
        );
        assert_eq!(ctl.released_bytes(), 16 * PAGE_SIZE);
        assert_eq!(read_byte(&mem, DATA), 0);
        assert_eq!(read_byte(&mem, DATA + 8 * PAGE_SIZE), 0xaa);

        // The host's target reaches the driver with a config-change interrupt.
        let before = irq.0.load(Ordering::SeqCst);
        ctl.set_target_pages(100);
        assert_eq!(irq.0.load(Ordering::SeqCst), before + 1);
        assert_ne!(interrupt.status() & 2, 0, "config-change bit not set");
        b.reset();
        ctl.set_target_pages(200);
        assert_eq!(irq.0.load(Ordering::SeqCst), before + 1, "irq after reset");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn test_balloon_reporting_queue_unused_when_feature_not_acked() {
        const RINGS: u64 = 0x1000;
        let mem = two_regions();
        touch(&mem, 0x10000, PAGE_SIZE, 0xaa);
        let mut b = Balloon::default();
        b.set_acked_features(crate::devices::virtio::VIRTIO_F_VERSION_1);
        let queues = vec![
            Queue::new(16).unwrap(),
            Queue::new(16).unwrap(),
            ready_queue(&mem, RINGS),
        ];
        let evts: Vec<_> = (0..3).map(|_| EventNotifier::new().unwrap()).collect();
        let kick = evts[2].try_clone().unwrap();
        let irq = Arc::new(CountIrq(AtomicUsize::new(0)));
        b.activate(ActivateContext {
            mem: mem.clone(),
            queues,
            queue_evts: evts,
            interrupt: Arc::new(VirtioInterrupt::new(irq)),
        })
        .unwrap();
        publish(&mem, RINGS, &[(0x10000, PAGE_SIZE as u32, 2)], 1);
        kick.notify().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            used_idx(&mem, RINGS),
            0,
            "queue 2 served without F_REPORTING"
        );
        assert!(resident(&mem, 0x10000, 1)[0]);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn test_balloon_inflate_releases_named_pfns_only() {
        const RINGS: u64 = 0x1000;
        const PFNS: u64 = 0x3000;
        const DATA: u64 = 0x10000;
        let mem = two_regions();
        touch(&mem, DATA, 16 * PAGE_SIZE, 0xaa);
        // Last page of region A and first of B: consecutive PFNs in two mappings.
        touch(&mem, A_SIZE - PAGE_SIZE, 2 * PAGE_SIZE, 0xaa);
        let base = DATA >> PFN_SHIFT;
        let edge = (A_SIZE >> PFN_SHIFT) - 1;
        let list: Vec<u32> = [
            base,
            base + 1,
            base + 2,
            base + 5,
            edge,
            edge + 1,
            0xffff_ffff,
        ]
        .iter()
        .map(|&p| p as u32)
        .collect();
        for (i, p) in list.iter().enumerate() {
            mem.write_obj(*p, GuestAddress(PFNS + 4 * i as u64))
                .unwrap();
        }
        // A device-writable buffer naming page base+8: not an inflate request.
        mem.write_obj((base + 8) as u32, GuestAddress(PFNS + 0x100))
            .unwrap();
        let mut q = ready_queue(&mem, RINGS);
        publish(
            &mem,
            RINGS,
            &[(PFNS, 4 * list.len() as u32, 0), (PFNS + 0x100, 4, 2)],
            1,
        );
        let chain = q.pop_descriptor_chain(&mem).unwrap();
        assert_eq!(process_inflate(&mem, chain), 6 * PAGE_SIZE);
        let r = resident(&mem, DATA, 16);
        let released: Vec<usize> = (0..16).filter(|&i| !r[i]).collect();
        assert_eq!(released, [0, 1, 2, 5]);
        assert_eq!(resident(&mem, A_SIZE - PAGE_SIZE, 1), [false]);
        assert_eq!(resident(&mem, A_SIZE, 1), [false]);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn test_release_range_drops_rss_of_range_and_keeps_neighbours() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        touch(&mem, 0, 1 << 20, 0x5a);
        assert!(resident(&mem, 0, 256).iter().all(|&x| x));
        assert_eq!(release_range(&mem, 64 * KIB, 128 * KIB).unwrap(), 128 * KIB);
        let r = resident(&mem, 0, 256);
        for (i, &res) in r.iter().enumerate() {
            let inside = (16..48).contains(&i);
            assert_eq!(res, !inside, "page {i} resident={res}");
        }
        // Released pages read as zeroes (private anonymous memory); neighbours keep theirs.
        assert_eq!(read_byte(&mem, 64 * KIB), 0);
        assert_eq!(read_byte(&mem, 192 * KIB - 1), 0);
        assert_eq!(read_byte(&mem, 64 * KIB - 1), 0x5a);
        assert_eq!(read_byte(&mem, 192 * KIB), 0x5a);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn test_release_range_hostile_ranges_rejected_memory_untouched() {
        let mem = two_regions();
        touch(&mem, 0, A_SIZE, 0xaa);
        touch(&mem, A_SIZE, B_SIZE, 0xbb);
        let end = A_SIZE + B_SIZE;
        let cases: [(u64, u64, &str); 9] = [
            (PAGE_SIZE + 1, PAGE_SIZE, "Unaligned"),
            (PAGE_SIZE, 100, "Unaligned"),
            (PAGE_SIZE, 0, "Empty"),
            (!0xfff, 2 * PAGE_SIZE, "Overflow"),
            (
                0xffff_ffff_ffff_f000,
                u64::from(u32::MAX) & !0xfff,
                "Overflow",
            ),
            (1 << 30, PAGE_SIZE, "OutsideRam"),
            (end, PAGE_SIZE, "OutsideRam"),
            (end - PAGE_SIZE, 2 * PAGE_SIZE, "CrossesRegion"),
            (A_SIZE - PAGE_SIZE, 2 * PAGE_SIZE, "CrossesRegion"),
        ];
        for (addr, len, want) in cases {
            let e = release_range(&mem, addr, len).unwrap_err();
            assert!(
                format!("{e:?}").starts_with(want),
                "{addr:#x}+{len:#x}: got {e:?}, want {want}"
            );
        }
        assert!(resident(&mem, 0, (A_SIZE / PAGE_SIZE) as usize)
            .iter()
            .all(|&x| x));
        assert!(resident(&mem, A_SIZE, (B_SIZE / PAGE_SIZE) as usize)
            .iter()
            .all(|&x| x));
        let mut buf = vec![0u8; end as usize];
        mem.read_slice(&mut buf, GuestAddress(0)).unwrap();
        assert!(buf[..A_SIZE as usize].iter().all(|&b| b == 0xaa));
        assert!(buf[A_SIZE as usize..].iter().all(|&b| b == 0xbb));
        // The whole of one region is fine.
        assert_eq!(release_range(&mem, A_SIZE, B_SIZE).unwrap(), B_SIZE);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn test_release_range_shared_memfd_memory_frees_its_backing() {
        use std::os::fd::FromRawFd;
        use vm_memory::FileOffset;

        // SAFETY: memfd_create takes a NUL-terminated name and returns a new descriptor (or -1),
        // which the File below owns alone.
        let fd = unsafe { libc::memfd_create(c"balloon-test".as_ptr(), 0) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let file = unsafe { std::fs::File::from_raw_fd(fd) };
        file.set_len(256 * KIB).unwrap();
        let blocks = |f: &std::fs::File| {
            use std::os::unix::fs::MetadataExt;
            f.metadata().unwrap().blocks()
        };
        let mem = GuestMemoryMmap::<()>::from_ranges_with_files([(
            GuestAddress(0),
            256 * KIB as usize,
            Some(FileOffset::new(file.try_clone().unwrap(), 0)),
        )])
        .unwrap();
        touch(&mem, 0, 256 * KIB, 0x77);
        let before = blocks(&file);
        assert!(before >= 256 * KIB / 512, "memfd holds {before} blocks");
        assert_eq!(release_range(&mem, 0, 128 * KIB).unwrap(), 128 * KIB);
        let after = blocks(&file);
        // MADV_DONTNEED would have left the shmem pages in place; MADV_REMOVE frees them.
        assert!(
            before - after >= 128 * KIB / 512,
            "memfd blocks {before} -> {after}"
        );
        let r = resident(&mem, 0, 64);
        assert!(r[..32].iter().all(|&x| !x) && r[32..].iter().all(|&x| x));
        assert_eq!(read_byte(&mem, 0), 0);
        assert_eq!(read_byte(&mem, 128 * KIB), 0x77);
    }
}
