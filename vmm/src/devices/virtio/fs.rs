//! virtio-fs (virtio 1.2 §5.11) served in-process: fs-share's FUSE server and confined
//! passthrough run on the device's worker thread, with no vhost-user hop and no extra process.
//!
//! Config space: `tag[36]` (NUL padded) and `num_request_queues` (le32, 1). Queues: hiprio
//! (0: FORGET, INTERRUPT) and one request queue (1); both are served alike by one worker.
//! One request queue because the passthrough's ops are short and a second worker would cost
//! a cross-thread wakeup per request; re-measure on real KVM with a Linux guest.
//!
//! # Two versions of the rust-vmm crates
//!
//! fs-share's server is fuse-backend-rs 0.14, which reads requests from and writes replies to
//! a *vm-memory 0.17.1 / virtio-queue 0.17* descriptor chain; this VMM is on 0.18 (as are
//! vhost and vhost-user-backend for the vsock backend). fuse-backend-rs pins `vm-memory
//! =0.17.1` unconditionally, so fs-share cannot move to 0.18, and copying each request into a
//! byte buffer and the reply back out (the `/dev/fuse` writer path) would add a copy each
//! way. Instead the device builds a **0.17 view of the same host mappings** ([`MemView`]:
//! `MmapRegion::build_raw` over each 0.18 region, which it keeps alive) and drives the
//! queues with **virtio-queue 0.17**, set up from the ring addresses and indices of the 0.18
//! `Queue`s the transport hands over at activation. The device is the only user of its
//! queues while active, so nothing has to be kept in sync; file data moves once, between the
//! host file and guest memory. The 0.17 crates are the ones fs-share re-exports, so they
//! cannot drift from what its server expects.
//!
//! Guest chains are untrusted: fs-share's handler refuses (used length 0) chains whose
//! readable descriptors follow writable ones, that lie outside guest memory, that are shorter
//! than a FUSE header or whose header length disagrees with the chain; loops end at the queue
//! size; a broken available ring sets DEVICE_NEEDS_RESET, as for the other devices.

use std::num::Wrapping;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use fs_share::transport::virtio::virtio_queue as vq17;
use fs_share::transport::virtio::vm_memory as vm17;
use fs_share::transport::virtio::VirtioFsHandler;
use fs_share::{PassthroughError, PassthroughFs, ShareConfig};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vq17::QueueT as _;

use super::worker::{QueueHandler, Worker};
use super::{
    read_config_bytes, ActivateContext, ActivateError, VirtioDevice, VirtioInterrupt, TYPE_FS,
    VIRTIO_RING_F_EVENT_IDX,
};
use crate::warn_ratelimited;

/// Length of the config-space tag (the guest's `mount -t virtiofs TAG`).
pub const TAG_LEN: usize = 36;
const HIPRIO_QUEUE_SIZE: u16 = 128;
const REQUEST_QUEUE_SIZE: u16 = 1024;
const NUM_REQUEST_QUEUES: u32 = 1;

/// Errors creating the device.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("The virtio-fs tag must be 1 to {TAG_LEN} bytes, got {0}")]
    Tag(usize),
    // The source names the folder.
    #[error("Cannot set up the virtio-fs share")]
    Share(#[source] PassthroughError),
    #[error("Cannot map guest memory for the FUSE server: {0}")]
    Memory(String),
}

/// A virtio-fs device serving one host folder.
pub struct Fs {
    tag: [u8; TAG_LEN],
    fs: Arc<PassthroughFs>,
    worker: Option<Worker>,
}

impl Fs {
    /// Shares `shared_dir` (confined to it; read-only with `read_only`) under `tag`.
    pub fn new(tag: &str, shared_dir: &Path, read_only: bool) -> Result<Self, FsError> {
        if tag.is_empty() || tag.len() > TAG_LEN {
            return Err(FsError::Tag(tag.len()));
        }
        let mut cfg = ShareConfig::new(shared_dir);
        cfg.readonly = read_only;
        let fs = PassthroughFs::new(cfg).map_err(FsError::Share)?;
        let mut t = [0u8; TAG_LEN];
        t[..tag.len()].copy_from_slice(tag.as_bytes());
        Ok(Fs {
            tag: t,
            fs: Arc::new(fs),
            worker: None,
        })
    }

    fn config(&self) -> [u8; TAG_LEN + 4] {
        let mut c = [0u8; TAG_LEN + 4];
        c[..TAG_LEN].copy_from_slice(&self.tag);
        c[TAG_LEN..].copy_from_slice(&NUM_REQUEST_QUEUES.to_le_bytes());
        c
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[HIPRIO_QUEUE_SIZE, REQUEST_QUEUE_SIZE]
    }

    fn device_features(&self) -> u64 {
        VIRTIO_RING_F_EVENT_IDX
    }

    fn set_acked_features(&mut self, _features: u64) {}

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let want = self.queue_max_sizes().len();
        if ctx.queues.len() != want {
            return Err(ActivateError::QueueCount {
                got: ctx.queues.len(),
                want,
            });
        }
        let server = match FsServer::new(self.fs.clone(), &ctx.mem) {
            Ok(s) => s,
            Err(e) => {
                // The VM's own memory cannot be viewed: not the guest's fault, but the
                // device cannot work; the driver sees DEVICE_NEEDS_RESET.
                tracing::error!("virtio-fs: {e}");
                ctx.interrupt.signal_needs_reset();
                return Ok(());
            }
        };
        let queues = match ctx.queues.iter().map(queue_v017).collect() {
            Ok(q) => q,
            Err(e) => {
                warn_ratelimited!("virtio-fs: driver set up a bad queue ({e:?}); needs reset");
                ctx.interrupt.signal_needs_reset();
                return Ok(());
            }
        };
        let handler = FsHandler {
            queues,
            server,
            interrupt: ctx.interrupt,
        };
        self.worker = Some(
            Worker::spawn("virtio-fs", handler, ctx.queue_evts).map_err(ActivateError::Worker)?,
        );
        Ok(())
    }

    fn reset(&mut self) {
        // Joins the worker first: no request runs while the tables are cleared. The driver
        // starts over with FUSE_INIT; every inode and open file it held is forgotten.
        self.worker = None;
        self.fs.reset();
    }
}

/// A virtio-queue 0.17 queue over the same rings, at the same position, as `q`.
pub fn queue_v017(q: &virtio_queue::Queue) -> Result<vq17::Queue, vq17::Error> {
    use virtio_queue::QueueT;
    let mut n = vq17::Queue::new(q.max_size())?;
    if q.ready() {
        n.try_set_size(q.size())?;
        n.try_set_desc_table_address(vm17::GuestAddress(q.desc_table()))?;
        n.try_set_avail_ring_address(vm17::GuestAddress(q.avail_ring()))?;
        n.try_set_used_ring_address(vm17::GuestAddress(q.used_ring()))?;
        n.set_event_idx(q.event_idx_enabled());
        n.set_next_avail(q.next_avail());
        n.set_next_used(q.next_used());
        n.set_ready(true);
    }
    Ok(n)
}

/// Guest memory as vm-memory 0.17 sees it: the same host mappings as a 0.18
/// `GuestMemoryMmap`, which it holds so that they outlive the view.
pub struct MemView {
    // Declared first: dropped before the mappings it points into.
    view: vm17::GuestMemoryMmap,
    _mem: GuestMemoryMmap,
}

impl MemView {
    pub fn new(mem: &GuestMemoryMmap) -> Result<Self, FsError> {
        let mut regions = Vec::new();
        for r in mem.iter() {
            let len = usize::try_from(r.len()).map_err(|e| FsError::Memory(e.to_string()))?;
            // SAFETY: `r.as_ptr()..+len` is a live mapping owned by `r`'s region, which the
            // `GuestMemoryMmap` clone in `_mem` keeps mapped for as long as this view exists
            // (the view is dropped first). `build_raw` does not take ownership: the view never
            // unmaps it. `prot`/`flags` are the mapping's own. Both views access guest memory
            // only through raw pointers and volatile copies, as two clones of one
            // `GuestMemoryMmap` on two threads would.
            let raw = unsafe { vm17::MmapRegion::build_raw(r.as_ptr(), len, r.prot(), r.flags()) }
                .map_err(|e| FsError::Memory(e.to_string()))?;
            let region = vm17::GuestRegionMmap::new(raw, vm17::GuestAddress(r.start_addr().0))
                .ok_or_else(|| FsError::Memory("region overflows the address space".into()))?;
            regions.push(region);
        }
        let view = vm17::GuestMemoryMmap::from_regions(regions)
            .map_err(|e| FsError::Memory(e.to_string()))?;
        Ok(MemView {
            view,
            _mem: mem.clone(),
        })
    }

    pub fn memory(&self) -> &vm17::GuestMemoryMmap {
        &self.view
    }
}

/// The FUSE server over one VM's memory: serves the chains of a queue. Public for the fuzz
/// target, which drives it exactly as the worker does.
pub struct FsServer {
    handler: VirtioFsHandler,
    mem: MemView,
}

impl FsServer {
    pub fn new(fs: Arc<PassthroughFs>, mem: &GuestMemoryMmap) -> Result<Self, FsError> {
        Ok(FsServer {
            handler: VirtioFsHandler::new(fs),
            mem: MemView::new(mem)?,
        })
    }

    /// Whether the driver published more available entries than the queue holds (no correct
    /// driver does; processing would spin on the same error).
    pub fn avail_ring_broken(&self, q: &vq17::Queue) -> bool {
        match q.avail_idx(self.mem.memory(), Ordering::Acquire) {
            Ok(idx) => (idx - Wrapping(q.next_avail())).0 > q.size(),
            Err(_) => true,
        }
    }

    /// Serves every chain available in `q` (at most one queue's worth, so a driver that keeps
    /// publishing cannot hold the worker); returns how many were used.
    pub fn serve(&self, q: &mut vq17::Queue) -> usize {
        let mem = self.mem.memory();
        let mut used = 0;
        while used < usize::from(q.size()) {
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let len = self.handler.handle(mem, chain);
            if let Err(e) = q.add_used(mem, head, len) {
                warn_ratelimited!("virtio-fs: cannot return descriptor {head}: {e:?}");
            }
            used += 1;
        }
        used
    }
}

struct FsHandler {
    queues: Vec<vq17::Queue>,
    server: FsServer,
    interrupt: Arc<VirtioInterrupt>,
}

impl QueueHandler for FsHandler {
    fn process_queue(&mut self, index: usize) {
        let Some(q) = self.queues.get_mut(index) else {
            return;
        };
        if !q.ready() || self.interrupt.needs_reset() {
            return;
        }
        let mem = self.server.mem.memory();
        let mut used_any = false;
        loop {
            if self.server.avail_ring_broken(q) {
                warn_ratelimited!(
                    "virtio-fs: driver published an impossible available index; device needs reset"
                );
                self.interrupt.signal_needs_reset();
                return;
            }
            if let Err(e) = q.disable_notification(mem) {
                warn_ratelimited!("virtio-fs: bad available ring: {e:?}");
                break;
            }
            used_any |= self.server.serve(q) > 0;
            match q.enable_notification(mem) {
                Ok(true) => continue, // more arrived meanwhile
                Ok(false) => break,
                Err(e) => {
                    warn_ratelimited!("virtio-fs: bad available ring: {e:?}");
                    break;
                }
            }
        }
        if used_any && q.needs_notification(mem).unwrap_or(true) {
            self.interrupt.signal_used_queue();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn test_fs_config_space_holds_tag_and_queue_count() {
        let dir = tempfile::tempdir().unwrap();
        let fs = Fs::new("hostshare", dir.path(), false).unwrap();
        let mut cfg = [0xffu8; TAG_LEN + 4];
        fs.read_config(0, &mut cfg);
        assert_eq!(&cfg[..9], b"hostshare");
        assert!(cfg[9..TAG_LEN].iter().all(|&b| b == 0));
        assert_eq!(&cfg[TAG_LEN..], &1u32.to_le_bytes());
        let mut past = [0xffu8; 8];
        fs.read_config(TAG_LEN as u64 + 4, &mut past);
        assert_eq!(past, [0; 8]);
        assert_eq!(fs.device_type(), 26);
        assert_eq!(fs.queue_max_sizes().len(), 2);
    }

    #[test]
    fn test_fs_new_bad_tag_or_missing_dir_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Fs::new("", dir.path(), false),
            Err(FsError::Tag(0))
        ));
        assert!(matches!(
            Fs::new(&"t".repeat(37), dir.path(), false),
            Err(FsError::Tag(37))
        ));
        assert!(matches!(
            Fs::new("t", &dir.path().join("missing"), false),
            Err(FsError::Share(_))
        ));
    }

    #[test]
    fn test_fs_mem_view_sees_the_same_bytes_both_ways() {
        use vm17::Bytes as _;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x10000),
            (GuestAddress(0x100000), 0x10000),
        ])
        .unwrap();
        let view = MemView::new(&mem).unwrap();
        mem.write_obj(0x1234_5678u32, GuestAddress(0x100040))
            .unwrap();
        let got: u32 = view
            .memory()
            .read_obj(vm17::GuestAddress(0x100040))
            .unwrap();
        assert_eq!(got, 0x1234_5678);
        view.memory()
            .write_obj(0xabcdu16, vm17::GuestAddress(0xfffe))
            .unwrap();
        assert_eq!(mem.read_obj::<u16>(GuestAddress(0xfffe)).unwrap(), 0xabcd);
        // The hole between the regions is a hole in the view too.
        assert!(view
            .memory()
            .read_obj::<u8>(vm17::GuestAddress(0x20000))
            .is_err());
    }
}
