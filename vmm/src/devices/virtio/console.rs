//! virtio-console, a single port without multiport: the guest's transmit queue goes to a host
//! writer (a file or stdout); host input is not wired yet (COM1 carries interactive input).

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::worker::{QueueHandler, Worker};
use super::{
    queue_usable, read_config_bytes, ActivateContext, ActivateError, VirtioDevice, VirtioInterrupt,
    TYPE_CONSOLE,
};
use crate::warn_ratelimited;

const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;

pub type ConsoleOut = Arc<Mutex<dyn Write + Send>>;

/// A virtio-console device.
pub struct Console {
    out: ConsoleOut,
    worker: Option<Worker>,
}

impl Console {
    pub fn new(out: ConsoleOut) -> Self {
        Console { out, worker: None }
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        TYPE_CONSOLE
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }
    fn device_features(&self) -> u64 {
        0
    }
    fn set_acked_features(&mut self, _features: u64) {}
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // cols, rows (u16 each), max_nr_ports (u32), emerg_wr (u32): 80x25, one port.
        let mut c = [0u8; 12];
        c[0..2].copy_from_slice(&80u16.to_le_bytes());
        c[2..4].copy_from_slice(&25u16.to_le_bytes());
        c[4..8].copy_from_slice(&1u32.to_le_bytes());
        read_config_bytes(&c, offset, data);
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if ctx.queues.len() != 2 {
            return Err(ActivateError::QueueCount {
                got: ctx.queues.len(),
                want: 2,
            });
        }
        let handler = ConsoleHandler {
            queues: ctx.queues,
            mem: ctx.mem,
            interrupt: ctx.interrupt,
            out: self.out.clone(),
            buf: vec![0; 4096],
        };
        self.worker = Some(
            Worker::spawn("virtio-console", handler, ctx.queue_evts)
                .map_err(ActivateError::Worker)?,
        );
        Ok(())
    }
    fn reset(&mut self) {
        self.worker = None;
    }
}

struct ConsoleHandler {
    queues: Vec<Queue>,
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    out: ConsoleOut,
    buf: Vec<u8>,
}

impl QueueHandler for ConsoleHandler {
    fn process_queue(&mut self, index: usize) {
        if index != TX {
            // Receive buffers wait until there is host input; nothing to do now.
            let _ = RX;
            return;
        }
        let mem = &self.mem;
        let mut used = false;
        let queue = &mut self.queues[TX];
        if !queue_usable("virtio-console", queue, mem, &self.interrupt) {
            return;
        }
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            match chain.reader(mem) {
                Ok(mut r) => {
                    let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
                    loop {
                        match r.read(&mut self.buf) {
                            Ok(0) => break,
                            Ok(n) => {
                                if let Err(e) = out.write_all(&self.buf[..n]) {
                                    warn_ratelimited!("virtio-console: output failed: {e}");
                                    break;
                                }
                            }
                            Err(_) => break,
                        }
                    }
                    let _ = out.flush();
                }
                Err(e) => warn_ratelimited!("virtio-console: bad transmit chain: {e:?}"),
            }
            if let Err(e) = queue.add_used(mem, head, 0) {
                warn_ratelimited!("virtio-console: cannot return descriptor {head}: {e:?}");
            }
            used = true;
        }
        if used {
            self.interrupt.signal_used_queue();
        }
    }
}
