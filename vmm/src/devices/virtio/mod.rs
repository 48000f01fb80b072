//! virtio 1.x devices and the virtio-mmio transport.
//!
//! A device implements [`VirtioDevice`] and knows nothing of the transport: it gets its queues,
//! guest memory and a [`VirtioInterrupt`] at activation, so a PCI transport can come later
//! without touching devices. Each active device processes its queues on its own worker
//! thread ([`worker`]), woken by notifiers (`sys::event`: eventfds on Linux, which KVM signals
//! directly on a queue notification; portable notifiers elsewhere, signalled from the MMIO exit).
//!
//! Everything here builds on every host except `vsock`, whose connection muxer polls host unix
//! sockets with epoll (Linux only); `fs`, whose FUSE server and passthrough (fs-share) are
//! Linux-only; and `balloon`, which gives guest RAM back with madvise (Linux and macOS).

// Releasing guest RAM needs sys::mem (madvise): Linux and macOS.
#[cfg(any(target_os = "linux", target_os = "macos"))]
pub mod balloon;
pub mod block;
pub mod console;
// fs-share's FUSE server and passthrough are Linux-only.
#[cfg(target_os = "linux")]
pub mod fs;
pub mod mmio;
pub mod net;
pub mod rng;
#[cfg(target_os = "linux")]
pub mod vsock;
pub mod worker;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use crate::hv::IrqLine;
use crate::sys::event::EventNotifier;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

/// Feature bits common to all devices.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// Device types (virtio spec 5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_CONSOLE: u32 = 3;
pub const TYPE_RNG: u32 = 4;
pub const TYPE_BALLOON: u32 = 5;
pub const TYPE_VSOCK: u32 = 19;
pub const TYPE_FS: u32 = 26;

/// Interrupt status bits.
const INT_USED_RING: u32 = 1;
const INT_CONFIG: u32 = 2;

/// Errors activating a device.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("Device was given {got} queues, needs {want}")]
    QueueCount { got: usize, want: usize },
    #[error("Cannot start the device worker: {0}")]
    Worker(#[source] std::io::Error),
}

/// The device's interrupt: the InterruptStatus register the transport exposes, and the line.
pub struct VirtioInterrupt {
    status: AtomicU32,
    needs_reset: AtomicBool,
    line: Arc<dyn IrqLine>,
}

impl VirtioInterrupt {
    pub fn new(line: Arc<dyn IrqLine>) -> Self {
        VirtioInterrupt {
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            line,
        }
    }

    /// Marks the device DEVICE_NEEDS_RESET and tells the driver (a config change interrupt,
    /// as the spec asks). Set by a worker when the driver broke a queue; the transport
    /// reports it in its status register.
    pub fn signal_needs_reset(&self) {
        if !self.needs_reset.swap(true, Ordering::SeqCst) {
            self.signal(INT_CONFIG);
        }
    }

    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// Clears all state on a driver reset.
    pub fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }

    /// Tells the driver that used buffers are available.
    pub fn signal_used_queue(&self) {
        self.signal(INT_USED_RING);
    }

    /// Tells the driver that the configuration space changed.
    pub fn signal_config_change(&self) {
        self.signal(INT_CONFIG);
    }

    fn signal(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.line.trigger() {
            crate::warn_ratelimited!("virtio: cannot raise interrupt: {e}");
        }
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }
}

/// What a device gets when the driver sets DRIVER_OK.
pub struct ActivateContext {
    pub mem: GuestMemoryMmap,
    pub queues: Vec<Queue>,
    /// One per queue, signalled on a notification.
    pub queue_evts: Vec<EventNotifier>,
    pub interrupt: Arc<VirtioInterrupt>,
}

/// A virtio device, independent of the transport.
pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers.
    fn device_features(&self) -> u64;
    /// The features the driver accepted (a subset of `device_features`).
    fn set_acked_features(&mut self, features: u64);
    /// Reads the device-specific configuration space; out-of-range bytes read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the configuration space (most devices ignore it).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts processing queues.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// Stops processing (driver reset); the device may be activated again.
    fn reset(&mut self);
}

/// Whether the driver has published more available entries than the queue holds, which no
/// correct driver does. Processing such a ring would spin on the same error forever, so
/// workers stop using the queue and ask for a reset instead.
pub fn avail_ring_broken(queue: &virtio_queue::Queue, mem: &GuestMemoryMmap) -> bool {
    use virtio_queue::QueueT;
    match queue.avail_idx(mem, Ordering::Acquire) {
        Ok(idx) => (idx - std::num::Wrapping(queue.next_avail())).0 > queue.size(),
        Err(_) => true,
    }
}

/// Whether a worker may process `queue` now: false once the device needs a reset, and
/// false (after asking for the reset) when the driver broke the available ring.
pub fn queue_usable(
    name: &str,
    queue: &virtio_queue::Queue,
    mem: &GuestMemoryMmap,
    interrupt: &VirtioInterrupt,
) -> bool {
    if interrupt.needs_reset() {
        return false;
    }
    if avail_ring_broken(queue, mem) {
        crate::warn_ratelimited!(
            "{name}: driver published an impossible available index; device needs reset"
        );
        interrupt.signal_needs_reset();
        return false;
    }
    true
}

/// Copies the `offset..` part of `config` into `data`, zero-filling what lies beyond it.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= config.len() {
        return;
    }
    let n = data.len().min(config.len() - start);
    data[..n].copy_from_slice(&config[start..start + n]);
}
