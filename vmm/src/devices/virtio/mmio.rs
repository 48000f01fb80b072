//! The virtio-mmio transport (virtio 1.x, register layout version 2).
//!
//! Guest accesses arrive from vCPU threads through the MMIO bus. Queue notifications normally
//! never get here on KVM: they are registered as ioeventfds and wake the device worker
//! directly; a write that does arrive (no fast path: Hypervisor.framework, WHP) signals the
//! same notifier.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{
    ActivateContext, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
use crate::devices::bus::BusDevice;
use crate::hv::IrqLine;
use crate::sys::event::EventNotifier;
use crate::warn_ratelimited;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4c54_4d56; // "VMTL"

pub const REG_QUEUE_NOTIFY: u64 = 0x50;

const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_NEEDS_RESET: u32 = 0x40;
const STATUS_FAILED: u32 = 0x80;

#[derive(Default, Clone, Copy)]
struct QueueConfig {
    size: u16,
    ready: bool,
    desc: u64,
    avail: u64,
    used: u64,
}

/// A virtio device behind an MMIO window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    queue_evts: Vec<EventNotifier>,
    queues: Vec<QueueConfig>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u32,
    config_generation: u32,
    active: bool,
    name: String,
}

/// Errors building a transport.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    #[error("Cannot create queue notifier: {0}")]
    Notifier(#[source] std::io::Error),
}

impl MmioTransport {
    pub fn new(
        name: String,
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        irq: Arc<dyn IrqLine>,
    ) -> Result<Self, MmioError> {
        let n = device.queue_max_sizes().len();
        let queue_evts = (0..n)
            .map(|_| EventNotifier::new())
            .collect::<Result<Vec<_>, _>>()
            .map_err(MmioError::Notifier)?;
        Ok(MmioTransport {
            device,
            mem,
            interrupt: Arc::new(VirtioInterrupt::new(irq)),
            queue_evts,
            queues: vec![QueueConfig::default(); n],
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
            config_generation: 0,
            active: false,
            name,
        })
    }

    /// The notifier of each queue, to register as notification fast paths.
    pub fn queue_evts(&self) -> &[EventNotifier] {
        &self.queue_evts
    }

    fn device_features(&self) -> u64 {
        self.device.device_features() | VIRTIO_F_VERSION_1
    }

    fn selected_queue(&mut self) -> Option<&mut QueueConfig> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn reset(&mut self) {
        if self.active {
            self.device.reset();
            self.active = false;
        }
        self.queues
            .iter_mut()
            .for_each(|q| *q = QueueConfig::default());
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.status = 0;
        self.interrupt.reset();
    }

    fn build_queues(&self) -> Result<Vec<Queue>, String> {
        let event_idx = self.driver_features & VIRTIO_RING_F_EVENT_IDX != 0;
        let mut out = Vec::new();
        for (i, (cfg, max)) in self
            .queues
            .iter()
            .zip(self.device.queue_max_sizes())
            .enumerate()
        {
            let mut q = Queue::new(*max).map_err(|e| format!("queue {i}: {e:?}"))?;
            if cfg.ready {
                q.try_set_size(cfg.size)
                    .map_err(|e| format!("queue {i} size: {e:?}"))?;
                q.try_set_desc_table_address(vm_memory::GuestAddress(cfg.desc))
                    .map_err(|e| format!("queue {i} descriptor table: {e:?}"))?;
                q.try_set_avail_ring_address(vm_memory::GuestAddress(cfg.avail))
                    .map_err(|e| format!("queue {i} available ring: {e:?}"))?;
                q.try_set_used_ring_address(vm_memory::GuestAddress(cfg.used))
                    .map_err(|e| format!("queue {i} used ring: {e:?}"))?;
                q.set_event_idx(event_idx);
                q.set_ready(true);
                if !q.is_valid(&self.mem) {
                    return Err(format!("queue {i} rings lie outside guest memory"));
                }
            }
            out.push(q);
        }
        Ok(out)
    }

    fn activate(&mut self) {
        let queues = match self.build_queues() {
            Ok(q) => q,
            Err(e) => {
                warn_ratelimited!(
                    "{}: driver set up a bad queue ({e}); device needs reset",
                    self.name
                );
                self.status |= STATUS_NEEDS_RESET;
                return;
            }
        };
        let evts = match self.queue_evts.iter().map(|e| e.try_clone()).collect() {
            Ok(e) => e,
            Err(e) => {
                tracing::error!("{}: cannot clone queue notifiers: {e}", self.name);
                self.status |= STATUS_NEEDS_RESET;
                return;
            }
        };
        self.device.set_acked_features(self.driver_features);
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            queues,
            queue_evts: evts,
            interrupt: self.interrupt.clone(),
        };
        match self.device.activate(ctx) {
            Ok(()) => self.active = true,
            Err(e) => {
                tracing::error!("{}: activation failed: {e}", self.name);
                self.status |= STATUS_NEEDS_RESET;
            }
        }
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        let added = v & !self.status;
        if v & self.status != self.status {
            warn_ratelimited!(
                "{}: driver cleared status bits {:#x} without reset",
                self.name,
                self.status & !v
            );
            return;
        }
        if added & STATUS_FEATURES_OK != 0 {
            let ok = self.driver_features & !self.device_features() == 0
                && self.driver_features & VIRTIO_F_VERSION_1 != 0;
            if !ok {
                // Leaving FEATURES_OK clear tells the driver we refused its features.
                self.status = v & !STATUS_FEATURES_OK;
                return;
            }
        }
        self.status = v;
        if added & STATUS_DRIVER_OK != 0 && v & STATUS_FEATURES_OK != 0 && !self.active {
            self.activate();
        }
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        let features = self.device_features();
        match offset {
            0x00 => MAGIC,
            0x04 => VERSION,
            0x08 => self.device.device_type(),
            0x0c => VENDOR_ID,
            0x10 => match self.device_features_sel {
                0 => features as u32,
                1 => (features >> 32) as u32,
                _ => 0,
            },
            0x34 => {
                let i = self.queue_sel as usize;
                self.device
                    .queue_max_sizes()
                    .get(i)
                    .copied()
                    .map_or(0, u32::from)
            }
            0x44 => self.selected_queue().map_or(0, |q| u32::from(q.ready)),
            0x60 => self.interrupt.status(),
            0x70 if self.interrupt.needs_reset() => self.status | STATUS_NEEDS_RESET,
            0x70 => self.status,
            // Shared memory regions: none (length -1).
            0xb0 | 0xb4 => u32::MAX,
            0xfc => self.config_generation,
            _ => {
                warn_ratelimited!("{}: read of unknown register {offset:#x}", self.name);
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        let queue_setup = matches!(offset, 0x38 | 0x44 | 0x80..=0xa4);
        if queue_setup && (self.active || self.status & STATUS_DRIVER_OK != 0) {
            warn_ratelimited!(
                "{}: queue setup write {offset:#x} after DRIVER_OK ignored",
                self.name
            );
            return;
        }
        let set_lo = |a: &mut u64, v: u32| *a = (*a & !0xffff_ffff) | u64::from(v);
        let set_hi = |a: &mut u64, v: u32| *a = (*a & 0xffff_ffff) | (u64::from(v) << 32);
        match offset {
            0x14 => self.device_features_sel = v,
            0x20 => match self.driver_features_sel {
                0 => set_lo(&mut self.driver_features, v),
                1 => set_hi(&mut self.driver_features, v),
                _ => {}
            },
            0x24 => self.driver_features_sel = v,
            0x30 => self.queue_sel = v,
            0x38 => {
                if let Some(q) = self.selected_queue() {
                    q.size = v.min(u32::from(u16::MAX)) as u16;
                }
            }
            0x44 => {
                if let Some(q) = self.selected_queue() {
                    q.ready = v == 1;
                }
            }
            REG_QUEUE_NOTIFY => match self.queue_evts.get(v as usize) {
                Some(evt) => {
                    let _ = evt.notify();
                }
                None => warn_ratelimited!("{}: notify of missing queue {v}", self.name),
            },
            0x64 => self.interrupt.ack(v),
            0x70 => self.set_status(v),
            0x80 => self
                .selected_queue()
                .into_iter()
                .for_each(|q| set_lo(&mut q.desc, v)),
            0x84 => self
                .selected_queue()
                .into_iter()
                .for_each(|q| set_hi(&mut q.desc, v)),
            0x90 => self
                .selected_queue()
                .into_iter()
                .for_each(|q| set_lo(&mut q.avail, v)),
            0x94 => self
                .selected_queue()
                .into_iter()
                .for_each(|q| set_hi(&mut q.avail, v)),
            0xa0 => self
                .selected_queue()
                .into_iter()
                .for_each(|q| set_lo(&mut q.used, v)),
            0xa4 => self
                .selected_queue()
                .into_iter()
                .for_each(|q| set_hi(&mut q.used, v)),
            0xac => {} // SHMSel: we have no shared memory regions
            _ => warn_ratelimited!("{}: write of unknown register {offset:#x}", self.name),
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= 0x100 {
            self.device.read_config(offset - 0x100, data);
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            warn_ratelimited!(
                "{}: {}-byte read at {offset:#x} (registers are 32-bit)",
                self.name,
                data.len()
            );
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= 0x100 {
            if self.status & STATUS_DRIVER != 0 {
                self.device.write_config(offset - 0x100, data);
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            warn_ratelimited!(
                "{}: {}-byte write at {offset:#x} ignored",
                self.name,
                data.len()
            );
            return;
        };
        if offset % 4 != 0 {
            warn_ratelimited!("{}: unaligned write at {offset:#x} ignored", self.name);
            return;
        }
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}

// Keep status constants referenced for readers of the state machine above.
const _: u32 = STATUS_ACKNOWLEDGE | STATUS_FAILED;
