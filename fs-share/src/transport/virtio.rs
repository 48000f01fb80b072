//! Transport-neutral virtio-fs request handling: one descriptor chain in, bytes written out.
//! Used by the vhost-user backend and in-process by the builtin VMM's own virtio-fs device
//! (same server, same filesystem).
//!
//! The chain is read and written in place through fuse-backend-rs' descriptor-chain `Reader`
//! and `VirtioFsWriter` (file data goes straight between the host file and guest memory). Both
//! are built on the `vm-memory` and `virtio-queue` versions fuse-backend-rs pins, which are
//! re-exported here so that a caller on other versions (the VMM) names exactly these.

use std::ops::Deref;
use std::sync::Arc;

use fuse_backend_rs::abi::fuse_abi::InHeader;
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use virtio_queue::DescriptorChain;
use vm_memory::GuestMemory;

use crate::sys::PassthroughFs;

/// The `virtio-queue` fuse-backend-rs is built on (0.17).
pub use virtio_queue;
/// The `vm-memory` fuse-backend-rs is built on (=0.17.1).
pub use vm_memory;

pub struct VirtioFsHandler {
    server: Server<Arc<PassthroughFs>>,
}

/// Why a chain was refused before reaching the FUSE server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BadChain {
    /// A device-readable descriptor after a device-writable one (virtio 1.2 §2.7.4.2).
    Order,
    /// Descriptors outside guest memory, or otherwise unusable.
    Buffers,
    /// Shorter than a `fuse_in_header`.
    Short,
    /// `fuse_in_header.len` is not the number of readable bytes in the chain.
    Length { header: u32, chain: usize },
}

impl VirtioFsHandler {
    pub fn new(fs: Arc<PassthroughFs>) -> Self {
        VirtioFsHandler {
            server: Server::new(fs),
        }
    }

    /// Processes one request chain; returns the number of bytes written into it (the used
    /// length). A malformed chain or request gets 0 and is otherwise ignored: the guest is
    /// untrusted and the device keeps running. Refused before decoding: readable descriptors
    /// after writable ones, descriptors outside guest memory, a request shorter than its
    /// header, and a header whose `len` disagrees with the readable bytes of the chain.
    pub fn handle<M>(&self, mem: &M::Target, chain: DescriptorChain<M>) -> u32
    where
        M: Deref + Clone,
        M::Target: GuestMemory + Sized,
    {
        match self.try_handle(mem, chain) {
            Ok(n) => u32::try_from(n).unwrap_or(0),
            Err(e) => {
                tracing::debug!("malformed virtio-fs descriptor chain: {e:?}");
                0
            }
        }
    }

    fn try_handle<M>(&self, mem: &M::Target, chain: DescriptorChain<M>) -> Result<usize, BadChain>
    where
        M: Deref + Clone,
        M::Target: GuestMemory + Sized,
    {
        // The iterator stops after `queue size` descriptors, so a loop ends here too.
        let mut seen_writable = false;
        for d in chain.clone() {
            if d.is_write_only() {
                seen_writable = true;
            } else if seen_writable {
                return Err(BadChain::Order);
            }
        }
        let reader =
            Reader::from_descriptor_chain(mem, chain.clone()).map_err(|_| BadChain::Buffers)?;
        let writer = VirtioFsWriter::new(mem, chain).map_err(|_| BadChain::Buffers)?;
        let header: InHeader = reader.clone().read_obj().map_err(|_| BadChain::Short)?;
        if usize::try_from(header.len).ok() != Some(reader.available_bytes()) {
            return Err(BadChain::Length {
                header: header.len,
                chain: reader.available_bytes(),
            });
        }
        match self
            .server
            .handle_message(reader, writer.into(), None, None)
        {
            Ok(n) => Ok(n),
            Err(e) => {
                // The server has replied with an error where it could; 0 otherwise.
                tracing::debug!("virtio-fs request failed: {e}");
                Ok(0)
            }
        }
    }
}
