//! virtio-vsock (virtio 1.2 §5.10): stream sockets between the guest and host unix sockets,
//! with the hybrid-vsock host convention of Firecracker and Cloud Hypervisor.
//!
//! - [`packet`]: the 44-byte header codec;
//! - [`conn`]: one connection's state machine and credit accounting;
//! - [`muxer`]: the connection table and the host sockets (transport-neutral);
//! - [`queues`]: virtqueues ⇄ muxer, shared with the vhost-user backend;
//! - this module: the in-process device for the builtin engine.
//!
//! Threads: the device's worker waits on the three queue eventfds and on the muxer's epoll fd
//! (which covers the listening socket and every connection), so an idle device costs no CPU.

pub mod conn;
pub mod muxer;
pub mod packet;
pub mod queues;

use std::path::Path;
use std::sync::{Arc, Mutex};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use super::worker::{QueueHandler, Worker};
use super::{
    queue_usable, read_config_bytes, ActivateContext, ActivateError, VirtioDevice, VirtioInterrupt,
    TYPE_VSOCK,
};
pub use muxer::{Muxer, MuxerError};
use queues::{drain_tx, fill_rx, packet_buffer, NUM_QUEUES, QUEUE_SIZE, RX_QUEUE, TX_QUEUE};

/// The config space: `le64 guest_cid`.
pub fn config_bytes(guest_cid: u64) -> [u8; 8] {
    guest_cid.to_le_bytes()
}

/// The in-process virtio-vsock device.
pub struct Vsock {
    muxer: Arc<Mutex<Muxer>>,
    guest_cid: u64,
    worker: Option<Worker>,
}

impl Vsock {
    /// Listens on `uds_path` for host clients of a guest with `guest_cid`.
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Self, MuxerError> {
        Ok(Vsock {
            muxer: Arc::new(Mutex::new(Muxer::new(guest_cid, uds_path)?)),
            guest_cid,
            worker: None,
        })
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }

    fn device_features(&self) -> u64 {
        // Stream sockets only; VERSION_1 is added by the transport.
        0
    }

    fn set_acked_features(&mut self, _features: u64) {}

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&config_bytes(self.guest_cid), offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if ctx.queues.len() != NUM_QUEUES {
            return Err(ActivateError::QueueCount {
                got: ctx.queues.len(),
                want: NUM_QUEUES,
            });
        }
        let mut queues = ctx.queues.into_iter();
        let (Some(rx), Some(tx)) = (queues.next(), queues.next()) else {
            return Err(ActivateError::QueueCount {
                got: 0,
                want: NUM_QUEUES,
            });
        };
        let epoll_fd = self
            .muxer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .epoll_fd();
        let handler = VsockHandler {
            muxer: self.muxer.clone(),
            rx,
            tx,
            mem: ctx.mem,
            interrupt: ctx.interrupt,
            buf: packet_buffer(),
            epoll_fd,
        };
        self.worker = Some(
            Worker::spawn("virtio-vsock", handler, ctx.queue_evts)
                .map_err(ActivateError::Worker)?,
        );
        Ok(())
    }

    fn reset(&mut self) {
        self.worker = None;
        self.muxer.lock().unwrap_or_else(|p| p.into_inner()).reset();
    }
}

struct VsockHandler {
    muxer: Arc<Mutex<Muxer>>,
    rx: Queue,
    tx: Queue,
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    buf: Vec<u8>,
    epoll_fd: std::os::fd::RawFd,
}

impl VsockHandler {
    fn run(&mut self, tx: bool, host: bool) {
        let mut m = self.muxer.lock().unwrap_or_else(|p| p.into_inner());
        let mut used = false;
        if host {
            m.process_host_events();
        }
        // A driver that broke a ring gets DEVICE_NEEDS_RESET and no more service on it.
        if tx && queue_usable("virtio-vsock tx", &self.tx, &self.mem, &self.interrupt) {
            used |= drain_tx(&mut m, &mut self.tx, &self.mem, &mut self.buf);
        }
        if queue_usable("virtio-vsock rx", &self.rx, &self.mem, &self.interrupt) {
            used |= fill_rx(&mut m, &mut self.rx, &self.mem, &mut self.buf);
        }
        drop(m);
        if used {
            self.interrupt.signal_used_queue();
        }
    }
}

impl QueueHandler for VsockHandler {
    fn process_queue(&mut self, index: usize) {
        match index {
            RX_QUEUE => self.run(false, false),
            TX_QUEUE => self.run(true, false),
            // The event queue carries only TRANSPORT_RESET after migration: never used.
            _ => {}
        }
    }

    fn extra_fds(&self) -> Vec<std::os::fd::RawFd> {
        vec![self.epoll_fd]
    }

    fn process_extra(&mut self, _index: usize) {
        self.run(false, true);
    }
}
