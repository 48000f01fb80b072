//! Moving packets between virtqueues and the [`Muxer`], shared by the in-process device and
//! the vhost-user backend (both hand over a `Queue` and the guest memory).
//!
//! Every descriptor chain is guest-controlled: a chain too short for a header, a payload length
//! beyond what the chain holds or beyond the largest packet, all end in a dropped packet or an
//! RST, never a stalled queue.

use std::io::{Read, Write};

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::conn::MAX_PKT_PAYLOAD;
use super::muxer::Muxer;
use super::packet::{Header, HDR_LEN};
use crate::warn_ratelimited;

/// Queue indexes.
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const EVENT_QUEUE: usize = 2;
pub const NUM_QUEUES: usize = 3;
/// Queue size offered.
pub const QUEUE_SIZE: u16 = 256;

/// A staging buffer big enough for one packet either way.
pub fn packet_buffer() -> Vec<u8> {
    vec![0u8; HDR_LEN + MAX_PKT_PAYLOAD]
}

/// Runs every packet the guest put on the tx queue through the muxer. Returns whether any
/// descriptor was used (the caller then signals the queue).
pub fn drain_tx(
    muxer: &mut Muxer,
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    buf: &mut [u8],
) -> bool {
    let mut used = false;
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        match chain.reader(mem) {
            Ok(mut r) => {
                let mut hb = [0u8; HDR_LEN];
                if r.read_exact(&mut hb).is_err() {
                    warn_ratelimited!("vsock: tx chain shorter than a header; dropped");
                } else {
                    let h = Header::decode(&hb);
                    let len = h.len as usize;
                    let avail = r.available_bytes();
                    if len > MAX_PKT_PAYLOAD || len > avail || len > buf.len() {
                        warn_ratelimited!(
                            "vsock: tx packet claims {len} payload bytes, chain holds {avail}"
                        );
                        // A length mismatch: the muxer resets the connection.
                        muxer.send_from_guest(&h, &[]);
                    } else if r.read_exact(&mut buf[..len]).is_ok() {
                        muxer.send_from_guest(&h, &buf[..len]);
                    } else {
                        warn_ratelimited!("vsock: unreadable tx payload; dropped");
                    }
                }
            }
            Err(e) => warn_ratelimited!("vsock: bad tx chain: {e:?}"),
        }
        if let Err(e) = queue.add_used(mem, head, 0) {
            warn_ratelimited!("vsock: cannot return tx descriptor {head}: {e:?}");
        }
        used = true;
    }
    used
}

/// Fills the guest's rx buffers with what the muxer has for it. Returns whether any
/// descriptor was used. Stops when the muxer has nothing or the guest has no buffers (it
/// notifies the rx queue when it adds some, and we are called again).
pub fn fill_rx(
    muxer: &mut Muxer,
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    buf: &mut [u8],
) -> bool {
    let mut used = false;
    while muxer.has_rx() {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            break;
        };
        let head = chain.head_index();
        let len = match chain.writer(mem) {
            Ok(mut w) => {
                let cap = w.available_bytes().min(buf.len());
                if cap < HDR_LEN {
                    warn_ratelimited!("vsock: rx buffer of {cap} bytes cannot hold a header");
                    0
                } else {
                    match muxer.next_rx(&mut buf[..cap]) {
                        Some(n) => match w.write_all(&buf[..n]) {
                            Ok(()) => n as u32,
                            Err(e) => {
                                warn_ratelimited!("vsock: cannot write an rx packet: {e}");
                                0
                            }
                        },
                        None => {
                            // Nothing after all (a connection had only EAGAIN): give the
                            // buffer back to the ring.
                            queue.go_to_previous_position();
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                warn_ratelimited!("vsock: bad rx chain: {e:?}");
                0
            }
        };
        if let Err(e) = queue.add_used(mem, head, len) {
            warn_ratelimited!("vsock: cannot return rx descriptor {head}: {e:?}");
        }
        used = true;
    }
    used
}
