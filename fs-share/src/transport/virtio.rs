//! Transport-neutral virtio-fs request handling: one descriptor chain in, bytes written out.
//! Used by the vhost-user backend and usable in-process by the builtin VMM's own virtio-fs
//! device (same server, same filesystem).

use std::ops::Deref;
use std::sync::Arc;

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use virtio_queue::DescriptorChain;
use vm_memory::GuestMemory;

use crate::sys::PassthroughFs;

pub struct VirtioFsHandler {
    server: Server<Arc<PassthroughFs>>,
}

impl VirtioFsHandler {
    pub fn new(fs: Arc<PassthroughFs>) -> Self {
        VirtioFsHandler {
            server: Server::new(fs),
        }
    }

    /// Processes one request chain; returns the number of bytes written into it (the used
    /// length). A malformed chain or request gets 0 and is otherwise ignored: the guest is
    /// untrusted and the device keeps running.
    pub fn handle<M>(&self, mem: &M::Target, chain: DescriptorChain<M>) -> u32
    where
        M: Deref + Clone,
        M::Target: GuestMemory + Sized,
    {
        let reader = Reader::from_descriptor_chain(mem, chain.clone());
        let writer = VirtioFsWriter::new(mem, chain);
        let n = match (reader, writer) {
            (Ok(r), Ok(w)) => match self.server.handle_message(r, w.into(), None, None) {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!("virtio-fs request failed: {e}");
                    0
                }
            },
            _ => {
                tracing::debug!("malformed virtio-fs descriptor chain");
                0
            }
        };
        u32::try_from(n).unwrap_or(0)
    }
}
