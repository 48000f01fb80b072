//! virtio-rng (entropy device): fills guest buffers from the host's random number generator
//! (`sys::random`: getrandom, getentropy or BCryptGenRandom).

use std::io::Write;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::worker::{QueueHandler, Worker};
use super::{
    queue_usable, ActivateContext, ActivateError, VirtioDevice, VirtioInterrupt, TYPE_RNG,
};
use crate::sys::random;
use crate::warn_ratelimited;

const QUEUE_SIZE: u16 = 64;
/// Most bytes served per request, whatever the guest asks for.
const MAX_REQUEST: usize = 64 * 1024;

/// A virtio-rng device.
#[derive(Default)]
pub struct Rng {
    worker: Option<Worker>,
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }
    fn device_features(&self) -> u64 {
        0
    }
    fn set_acked_features(&mut self, _features: u64) {}
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn activate(&mut self, mut ctx: ActivateContext) -> Result<(), ActivateError> {
        if ctx.queues.len() != 1 {
            return Err(ActivateError::QueueCount {
                got: ctx.queues.len(),
                want: 1,
            });
        }
        let handler = RngHandler {
            queue: ctx.queues.remove(0),
            mem: ctx.mem,
            interrupt: ctx.interrupt,
            buf: vec![0; MAX_REQUEST],
        };
        self.worker = Some(
            Worker::spawn("virtio-rng", handler, ctx.queue_evts).map_err(ActivateError::Worker)?,
        );
        Ok(())
    }
    fn reset(&mut self) {
        self.worker = None;
    }
}

struct RngHandler {
    queue: Queue,
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    buf: Vec<u8>,
}

impl QueueHandler for RngHandler {
    fn process_queue(&mut self, _index: usize) {
        let mem = &self.mem;
        let mut used = false;
        if !queue_usable("virtio-rng", &self.queue, mem, &self.interrupt) {
            return;
        }
        while let Some(chain) = self.queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let len = match chain.writer(mem) {
                Ok(mut w) => {
                    let n = w.available_bytes().min(self.buf.len());
                    match random::fill(&mut self.buf[..n]) {
                        Ok(()) => w.write_all(&self.buf[..n]).map(|_| n as u32).unwrap_or(0),
                        Err(e) => {
                            warn_ratelimited!("virtio-rng: host RNG failed: {e}");
                            0
                        }
                    }
                }
                Err(e) => {
                    warn_ratelimited!("virtio-rng: bad request chain: {e:?}");
                    0
                }
            };
            if let Err(e) = self.queue.add_used(mem, head, len) {
                warn_ratelimited!("virtio-rng: cannot return descriptor {head}: {e:?}");
            }
            used = true;
        }
        if used {
            self.interrupt.signal_used_queue();
        }
    }
}
