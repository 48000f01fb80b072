//! Entry points for fuzzing what the guest controls. Each takes arbitrary bytes, lays them out
//! as guest memory + virtqueue state, and runs the real device code on them. Used by the
//! cargo-fuzz targets in `vmm/fuzz/` and by the fuzz-smoke tests below (which run in the
//! ordinary test suite, since nightly Rust is not available everywhere).

use std::fs::File;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::devices::virtio::balloon;
use crate::devices::virtio::block::RequestProcessor;
use crate::devices::virtio::fs::{queue_v017, FsServer};
use crate::devices::virtio::net::{self, StreamDecoder};
use crate::devices::virtio::vsock::queues as vsock_queues;
use crate::devices::virtio::vsock::Muxer;

const MEM_SIZE: usize = 1 << 20;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const DATA: u64 = 0x4000;
const QUEUE_SIZE: u16 = 16;
const MAX_CHAINS: usize = 64;
/// The vsock harness's rx queue (well-formed; the guest's tx side is what is fuzzed).
const VSOCK_RX_DESC: u64 = 0x8_0000;
const VSOCK_RX_AVAIL: u64 = 0x8_1000;
const VSOCK_RX_USED: u64 = 0x8_2000;
const VSOCK_RX_BUF: u64 = 0x9_0000;
const VSOCK_RX_BUFS: u16 = 8;

/// Fuzzes the virtio-blk request path: descriptor table, available ring and buffers all come
/// from `data`; requests run against `disk` (a small scratch file).
pub fn fuzz_blk_request(data: &[u8], disk: &Arc<File>) {
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]) else {
        return;
    };
    // Descriptor table (16 × 16 bytes), then the available ring, then buffer bytes.
    let (desc, rest) = data.split_at(data.len().min(16 * QUEUE_SIZE as usize));
    let (avail, rest) = rest.split_at(rest.len().min(4 + 2 * QUEUE_SIZE as usize));
    let _ = mem.write_slice(desc, GuestAddress(DESC));
    let _ = mem.write_slice(avail, GuestAddress(AVAIL));
    let buf = &rest[..rest.len().min(MEM_SIZE - DATA as usize)];
    let _ = mem.write_slice(buf, GuestAddress(DATA));

    let Ok(mut q) = Queue::new(QUEUE_SIZE) else {
        return;
    };
    q.set_size(QUEUE_SIZE);
    q.set_desc_table_address(Some(DESC as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    q.set_used_ring_address(Some(USED as u32), Some(0));
    q.set_ready(true);

    let capacity_sectors = disk.metadata().map(|m| m.len() / 512).unwrap_or(0);
    let mut req = RequestProcessor {
        disk: disk.clone(),
        capacity_sectors,
        read_only: data.first().is_some_and(|b| b & 1 == 1),
        id: *b"fuzz-disk\0\0\0\0\0\0\0\0\0\0\0",
        buf: vec![0; 4096],
    };
    for _ in 0..MAX_CHAINS {
        let Some(chain) = q.pop_descriptor_chain(&mem) else {
            break;
        };
        let head = chain.head_index();
        let len = req.process(&mem, chain);
        let _ = q.add_used(&mem, head, len);
    }
}

/// Fuzzes the virtio-vsock tx path: the tx queue's descriptor table, available ring and packet
/// bytes come from `data`; every packet goes through `muxer` (connection table, credit, host
/// sockets), then a well-formed rx queue takes whatever the muxer answers. The muxer is reset
/// at the end, so each input starts from an empty table.
pub fn fuzz_vsock_packet(data: &[u8], muxer: &mut Muxer) {
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]) else {
        return;
    };
    let (desc, rest) = data.split_at(data.len().min(16 * QUEUE_SIZE as usize));
    let (avail, rest) = rest.split_at(rest.len().min(4 + 2 * QUEUE_SIZE as usize));
    let _ = mem.write_slice(desc, GuestAddress(DESC));
    let _ = mem.write_slice(avail, GuestAddress(AVAIL));
    let buf = &rest[..rest.len().min(VSOCK_RX_DESC as usize - DATA as usize)];
    let _ = mem.write_slice(buf, GuestAddress(DATA));
    let Some(mut tx) = fuzz_queue(DESC, AVAIL, USED) else {
        return;
    };
    // rx: 8 writable buffers of 4 KiB + header, as a Linux driver posts them.
    for i in 0..VSOCK_RX_BUFS {
        let mut d = (VSOCK_RX_BUF + u64::from(i) * 0x2000)
            .to_le_bytes()
            .to_vec();
        d.extend_from_slice(&(4096u32 + 44).to_le_bytes());
        d.extend_from_slice(&2u16.to_le_bytes()); // WRITE
        d.extend_from_slice(&0u16.to_le_bytes());
        let _ = mem.write_slice(&d, GuestAddress(VSOCK_RX_DESC + 16 * u64::from(i)));
        let _ = mem.write_obj(i, GuestAddress(VSOCK_RX_AVAIL + 4 + 2 * u64::from(i)));
    }
    let _ = mem.write_obj(VSOCK_RX_BUFS, GuestAddress(VSOCK_RX_AVAIL + 2));
    let Some(mut rx) = fuzz_queue(VSOCK_RX_DESC, VSOCK_RX_AVAIL, VSOCK_RX_USED) else {
        return;
    };
    let mut pkt = vsock_queues::packet_buffer();
    vsock_queues::drain_tx(muxer, &mut tx, &mem, &mut pkt);
    muxer.process_host_events();
    vsock_queues::fill_rx(muxer, &mut rx, &mem, &mut pkt);
    muxer.reset();
}

/// Lays out a queue's descriptor table and available ring from the front of `data` and the
/// buffer bytes after them at DATA; returns the memory and the queue.
fn fuzzed_queue(data: &[u8]) -> Option<(GuestMemoryMmap, Queue)> {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).ok()?;
    let q = fuzzed_queue_in(&mem, data)?;
    Some((mem, q))
}

/// [`fuzzed_queue`] in memory the caller built.
fn fuzzed_queue_in(mem: &GuestMemoryMmap, data: &[u8]) -> Option<Queue> {
    let (desc, rest) = data.split_at(data.len().min(16 * QUEUE_SIZE as usize));
    let (avail, rest) = rest.split_at(rest.len().min(4 + 2 * QUEUE_SIZE as usize));
    let _ = mem.write_slice(desc, GuestAddress(DESC));
    let _ = mem.write_slice(avail, GuestAddress(AVAIL));
    let buf = &rest[..rest.len().min(MEM_SIZE - DATA as usize)];
    let _ = mem.write_slice(buf, GuestAddress(DATA));
    fuzz_queue(DESC, AVAIL, USED)
}

/// Fuzzes the virtio-balloon queues: the first byte picks inflateq (even) or reporting_vq
/// (odd), then come the queue and its buffers as for the other targets. Guest RAM is two
/// adjacent 1 MiB regions mapped separately, so ranges across them are exercised too. Every
/// accepted range really is released (madvise) from that memory. Returns the bytes released.
pub fn fuzz_balloon_queue(data: &[u8]) -> u64 {
    let Some((&kind, data)) = data.split_first() else {
        return 0;
    };
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), MEM_SIZE),
        (GuestAddress(MEM_SIZE as u64), MEM_SIZE),
    ]) else {
        return 0;
    };
    let Some(mut q) = fuzzed_queue_in(&mem, data) else {
        return 0;
    };
    let mut released = 0;
    for _ in 0..MAX_CHAINS {
        let Some(chain) = q.pop_descriptor_chain(&mem) else {
            break;
        };
        let head = chain.head_index();
        let n = if kind & 1 == 0 {
            balloon::process_inflate(&mem, chain)
        } else {
            let n = balloon::process_report(&mem, chain);
            // At most one region per descriptor, at most a queue's worth of descriptors.
            assert!(n <= u64::from(QUEUE_SIZE) * MEM_SIZE as u64);
            n
        };
        released += n;
        let _ = q.add_used(&mem, head, 0);
    }
    released
}

/// Fuzzes the virtio-net transmit path: the tx queue comes from `data`; every chain goes
/// through the device's checks, and each accepted frame is framed for the backend and decoded
/// again, which must give the same frame. Returns how many frames were accepted.
pub fn fuzz_net_tx(data: &[u8]) -> usize {
    let Some((mem, mut q)) = fuzzed_queue(data) else {
        return 0;
    };
    let mut accepted = 0;
    for _ in 0..MAX_CHAINS {
        let Some(chain) = q.pop_descriptor_chain(&mem) else {
            break;
        };
        let head = chain.head_index();
        if let Ok(frame) = net::read_tx_chain(&mem, chain) {
            assert!(
                (net::MIN_TX_FRAME..=net::MAX_TX_CHAIN - net::NET_HDR_LEN).contains(&frame.len())
            );
            let mut dec = StreamDecoder::default();
            dec.push(&(frame.len() as u32).to_be_bytes());
            dec.push(&frame);
            assert_eq!(dec.next_frame().ok().flatten().as_deref(), Some(&frame[..]));
            accepted += 1;
        }
        let _ = q.add_used(&mem, head, 0);
    }
    accepted
}

/// Fuzzes the virtio-net receive path: the first byte picks how the backend's byte stream
/// is split into reads, then comes the rx queue (as the guest posted it), then the stream
/// after the first 4 KiB of buffer space. Decoded frames go into the guest's receive chains.
/// Returns how many frames were delivered.
pub fn fuzz_net_rx(data: &[u8]) -> usize {
    let Some((&split, data)) = data.split_first() else {
        return 0;
    };
    let queue_part = 16 * QUEUE_SIZE as usize + 4 + 2 * QUEUE_SIZE as usize + 0x1000;
    let (ring, stream) = data.split_at(data.len().min(queue_part));
    let Some((mem, mut q)) = fuzzed_queue(ring) else {
        return 0;
    };
    let mut dec = StreamDecoder::default();
    let step = usize::from(split).max(1);
    let mut delivered = 0;
    for piece in stream.chunks(step) {
        dec.push(piece);
        loop {
            match dec.next_frame() {
                Ok(Some(frame)) => {
                    assert!((1..=net::MAX_STREAM_FRAME).contains(&frame.len()));
                    let Some(chain) = q.pop_descriptor_chain(&mem) else {
                        return delivered;
                    };
                    let head = chain.head_index();
                    let len = net::write_rx_chain(&mem, chain, &frame).unwrap_or(0);
                    if len > 0 {
                        assert_eq!(len as usize, net::NET_HDR_LEN + frame.len());
                        delivered += 1;
                    }
                    let _ = q.add_used(&mem, head, len);
                }
                Ok(None) => break,
                Err(_) => return delivered,
            }
        }
    }
    delivered
}

/// Fuzzes the virtio-fs request path: the request queue's descriptor table, available ring
/// and buffers come from `data` (as for blk); every chain goes through the device's own
/// `FsServer` (the vm-memory 0.17 view, fs-share's chain checks, the FUSE server) onto `fs`, a
/// confined scratch share the fuzzer may modify freely. Returns the used lengths, in order.
pub fn fuzz_fs_request(data: &[u8], fs: &Arc<fs_share::PassthroughFs>) -> Vec<u32> {
    fs_queue_run(data, fs)
        .map(|(_, used)| used)
        .unwrap_or_default()
}

/// The share the virtio-fs fuzz target serves: `dir`, with small inode and open-file bounds.
pub fn fuzz_fs_share(dir: &std::path::Path) -> Option<Arc<fs_share::PassthroughFs>> {
    let mut cfg = fs_share::ShareConfig::new(dir);
    cfg.max_inodes = 4096;
    cfg.max_open_files = 256;
    fs_share::PassthroughFs::new(cfg).ok().map(Arc::new)
}

/// `fuzz_fs_request`, also returning the guest memory (harness tests read the replies).
fn fs_queue_run(
    data: &[u8],
    fs: &Arc<fs_share::PassthroughFs>,
) -> Option<(GuestMemoryMmap, Vec<u32>)> {
    let (mem, q) = fuzzed_queue(data)?;
    let server = FsServer::new(fs.clone(), &mem).ok()?;
    let mut q = queue_v017(&q).ok()?;
    if server.avail_ring_broken(&q) {
        return Some((mem, Vec::new()));
    }
    let n = server.serve(&mut q) as u64;
    let mut used = Vec::new();
    for i in 0..n {
        used.push(mem.read_obj::<u32>(GuestAddress(USED + 8 + 8 * i)).ok()?);
    }
    Some((mem, used))
}

fn fuzz_queue(desc: u64, avail: u64, used: u64) -> Option<Queue> {
    let mut q = Queue::new(QUEUE_SIZE).ok()?;
    q.set_size(QUEUE_SIZE);
    q.set_desc_table_address(Some(desc as u32), Some(0));
    q.set_avail_ring_address(Some(avail as u32), Some(0));
    q.set_used_ring_address(Some(used as u32), Some(0));
    q.set_ready(true);
    Some(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny xorshift generator: deterministic, no extra dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        /// The `i`-th smoke-test input: every other one a valid seed (taken in turn), the rest
        /// random bytes shorter than `max_len`; then up to 15 random bytes overwritten.
        fn smoke_input(&mut self, i: usize, seeds: &[Vec<u8>], max_len: u64) -> Vec<u8> {
            let mut input = if i % 2 == 0 {
                seeds[(i / 2) % seeds.len()].clone()
            } else {
                let n = (self.next() % max_len) as usize;
                (0..n).map(|_| self.next() as u8).collect()
            };
            for _ in 0..(self.next() % 16) {
                if input.is_empty() {
                    break;
                }
                let at = (self.next() as usize) % input.len();
                input[at] = self.next() as u8;
            }
            input
        }
    }

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> Vec<u8> {
        let mut d = addr.to_le_bytes().to_vec();
        d.extend_from_slice(&len.to_le_bytes());
        d.extend_from_slice(&flags.to_le_bytes());
        d.extend_from_slice(&next.to_le_bytes());
        d
    }

    /// A well-formed write request: header, 512 bytes of data, status.
    fn valid_write(sector: u64) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend(desc(DATA, 16, 1, 1)); // NEXT
        v.extend(desc(DATA + 0x100, 512, 1, 2));
        v.extend(desc(DATA + 0x400, 1, 2, 0)); // WRITE
        v.resize(16 * QUEUE_SIZE as usize, 0);
        let mut avail = vec![0u8, 0, 1, 0, 0, 0];
        avail.resize(4 + 2 * QUEUE_SIZE as usize, 0);
        v.extend(avail);
        let mut hdr = 1u32.to_le_bytes().to_vec(); // VIRTIO_BLK_T_OUT
        hdr.extend_from_slice(&0u32.to_le_bytes());
        hdr.extend_from_slice(&sector.to_le_bytes());
        hdr.resize(0x100, 0);
        v.extend(hdr);
        v.extend(std::iter::repeat_n(0xabu8, 512));
        v
    }

    fn scratch_disk() -> (tempfile::NamedTempFile, Arc<File>) {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(64 * 1024).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(f.path())
            .unwrap();
        (f, Arc::new(file))
    }

    #[test]
    fn test_fuzz_blk_valid_write_lands_on_disk() {
        // Guards the harness itself: if the layout were wrong, the smoke test below would only
        // ever exercise the rejection paths.
        let (f, disk) = scratch_disk();
        let mut input = valid_write(3);
        input[0] &= !1; // first byte even: read-write disk
        fuzz_blk_request(&input, &disk);
        let bytes = std::fs::read(f.path()).unwrap();
        assert!(bytes[3 * 512..4 * 512].iter().all(|b| *b == 0xab));
    }

    #[test]
    fn test_fuzz_blk_smoke_random_and_mutated_inputs_contained() {
        let (_f, disk) = scratch_disk();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let seeds = [valid_write(1)];
        for i in 0..3000 {
            let input = rng.smoke_input(i, &seeds, 2048);
            fuzz_blk_request(&input, &disk);
        }
    }

    /// Two tx chains: an ARP-sized frame in one descriptor, and the same split over two.
    fn net_valid_tx() -> Vec<u8> {
        let mut v = Vec::new();
        v.extend(desc(DATA, 12 + 42, 0, 0));
        v.extend(desc(DATA + 0x100, 12, 1, 2)); // NEXT
        v.extend(desc(DATA + 0x200, 42, 0, 0));
        v.resize(16 * QUEUE_SIZE as usize, 0);
        let mut avail = vec![0u8, 0, 2, 0, 0, 0, 1, 0];
        avail.resize(4 + 2 * QUEUE_SIZE as usize, 0);
        v.extend(avail);
        v.extend(std::iter::repeat_n(0x11u8, 0x300));
        v
    }

    /// Two rx buffers of 2 KiB, then a stream of two frames.
    fn net_valid_rx() -> Vec<u8> {
        net_rx_with_first_buffer(2048)
    }

    fn net_rx_with_first_buffer(len: u32) -> Vec<u8> {
        let mut v = vec![7u8]; // reads of 7 bytes
        v.extend(desc(DATA, len, 2, 0));
        v.extend(desc(DATA + 0x1000, 2048, 2, 0));
        v.resize(1 + 16 * QUEUE_SIZE as usize, 0);
        let mut avail = vec![0u8, 0, 2, 0, 0, 0, 1, 0];
        avail.resize(4 + 2 * QUEUE_SIZE as usize, 0);
        v.extend(avail);
        v.resize(v.len() + 0x1000, 0);
        for len in [60u32, 1514] {
            v.extend(len.to_be_bytes());
            v.extend(std::iter::repeat_n(0x22u8, len as usize));
        }
        v
    }

    #[test]
    fn test_fuzz_net_valid_inputs_pass_the_harness() {
        // Guards the harnesses: well-formed inputs must be accepted, or the smoke test would
        // only exercise the rejection paths.
        assert_eq!(fuzz_net_tx(&net_valid_tx()), 2);
        assert_eq!(fuzz_net_rx(&net_valid_rx()), 2);
        // A receive chain one byte short of header + 1514 drops the frame it was given.
        assert_eq!(fuzz_net_rx(&net_rx_with_first_buffer(12 + 1513)), 1);
        assert_eq!(fuzz_net_rx(&net_rx_with_first_buffer(12 + 1514)), 2);
    }

    #[test]
    fn test_fuzz_net_smoke_random_and_mutated_inputs_contained() {
        let mut rng = Rng(0x51_7cc1_b727_220a);
        let seeds = [net_valid_tx(), net_valid_rx()];
        for i in 0..4000 {
            let input = rng.smoke_input(i, &seeds, 8192);
            fuzz_net_tx(&input);
            fuzz_net_rx(&input);
        }
    }

    #[test]
    fn test_fuzz_blk_hostile_chains_contained() {
        let (_f, disk) = scratch_disk();
        let mut avail = vec![0u8, 0, 1, 0, 0, 0];
        avail.resize(4 + 2 * QUEUE_SIZE as usize, 0);
        let cases: Vec<Vec<u8>> = vec![
            desc(0xffff_ffff_ffff_0000, 16, 1, 1), // outside guest memory
            desc(DATA, 16, 1, 0),                  // loop: next points to itself
            desc(DATA, u32::MAX, 0, 0),            // absurd length
            desc(MEM_SIZE as u64 - 8, 16, 2, 0),   // crosses the end of memory
        ];
        for d in cases {
            let mut input = d;
            input.resize(16 * QUEUE_SIZE as usize, 0);
            input.extend(&avail);
            fuzz_blk_request(&input, &disk);
        }
    }

    /// A reporting_vq input (kind byte 1): one chain of `ranges` (writable unless noted).
    fn balloon_report(ranges: &[(u64, u32, u16)]) -> Vec<u8> {
        let mut v = vec![1u8];
        for (i, &(addr, len, flags)) in ranges.iter().enumerate() {
            let next = if i + 1 < ranges.len() { 1 } else { 0 };
            v.extend(desc(addr, len, flags | next, i as u16 + 1));
        }
        v.resize(1 + 16 * QUEUE_SIZE as usize, 0);
        let mut avail = vec![0u8, 0, 1, 0, 0, 0];
        avail.resize(4 + 2 * QUEUE_SIZE as usize, 0);
        v.extend(avail);
        v
    }

    /// An inflateq input (kind byte 0): one readable buffer at DATA with `pfns`.
    fn balloon_inflate(pfns: &[u32]) -> Vec<u8> {
        let mut v = vec![0u8];
        v.extend(desc(DATA, 4 * pfns.len() as u32, 0, 0));
        v.resize(1 + 16 * QUEUE_SIZE as usize, 0);
        let mut avail = vec![0u8, 0, 1, 0, 0, 0];
        avail.resize(4 + 2 * QUEUE_SIZE as usize, 0);
        v.extend(avail);
        for p in pfns {
            v.extend(p.to_le_bytes());
        }
        v
    }

    #[test]
    fn test_fuzz_balloon_valid_inputs_release_pages() {
        // Guards the harness: well-formed chains must release what they name, or the smoke test
        // would only exercise the rejection paths.
        let m = MEM_SIZE as u64;
        assert_eq!(
            fuzz_balloon_queue(&balloon_report(&[(0x8_0000, 0x2000, 2), (m, 0x1_0000, 2)])),
            0x1_2000
        );
        assert_eq!(
            fuzz_balloon_queue(&balloon_inflate(&[0x80, 0x81, 0x100])),
            0x3000
        );
        // Across the two regions, device-readable, past the end of RAM: nothing.
        assert_eq!(
            fuzz_balloon_queue(&balloon_report(&[
                (m - 0x1000, 0x2000, 2),
                (0x8_0000, 0x1000, 0),
                (2 * m - 0x1000, 0x2000, 2),
                (!0xfff, 0x1000, 2),
            ])),
            0
        );
    }

    #[test]
    fn test_fuzz_balloon_smoke_random_and_mutated_inputs_contained() {
        let mut rng = Rng(0x6a09_e667_f3bc_c908);
        let m = MEM_SIZE as u64;
        let seeds = [
            balloon_report(&[(0x8_0000, 0x2000, 2), (m, 0x1_0000, 2)]),
            balloon_inflate(&[0x80, 0x81, 0x100, 0x1ff]),
        ];
        for i in 0..3000 {
            let input = rng.smoke_input(i, &seeds, 2048);
            fuzz_balloon_queue(&input);
        }
    }

    /// A guest's packet header (44 bytes) + payload, from cid 3 to the host.
    fn vsock_pkt(op: u16, src: u32, dst: u32, flags: u32, payload: &[u8]) -> Vec<u8> {
        let mut h = Vec::with_capacity(44 + payload.len());
        h.extend_from_slice(&3u64.to_le_bytes());
        h.extend_from_slice(&2u64.to_le_bytes());
        h.extend_from_slice(&src.to_le_bytes());
        h.extend_from_slice(&dst.to_le_bytes());
        h.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        h.extend_from_slice(&1u16.to_le_bytes());
        h.extend_from_slice(&op.to_le_bytes());
        h.extend_from_slice(&flags.to_le_bytes());
        h.extend_from_slice(&65536u32.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(payload);
        h
    }

    /// REQUEST to host port 1024, RW "fuzz-payload", SHUTDOWN: one chain each.
    fn vsock_valid_session() -> Vec<u8> {
        let pkts = [
            vsock_pkt(1, 7000, 1024, 0, &[]),
            vsock_pkt(5, 7000, 1024, 0, b"fuzz-payload"),
            vsock_pkt(7, 7000, 1024, 0, &[]),
            vsock_pkt(4, 7000, 1024, 3, &[]),
        ];
        let mut descs = Vec::new();
        let mut bufs = Vec::new();
        for (i, p) in pkts.iter().enumerate() {
            descs.extend(desc(DATA + 0x100 * i as u64, p.len() as u32, 0, 0));
            let mut b = p.clone();
            b.resize(0x100, 0);
            bufs.extend(b);
        }
        descs.resize(16 * QUEUE_SIZE as usize, 0);
        let mut avail = vec![0u8, 0, pkts.len() as u8, 0];
        for i in 0..pkts.len() as u16 {
            avail.extend_from_slice(&i.to_le_bytes());
        }
        avail.resize(4 + 2 * QUEUE_SIZE as usize, 0);
        let mut v = descs;
        v.extend(avail);
        v.extend(bufs);
        v
    }

    fn vsock_muxer(dir: &std::path::Path) -> (Muxer, std::os::unix::net::UnixListener) {
        let m = Muxer::new(3, &dir.join("v.sock")).unwrap();
        let l = std::os::unix::net::UnixListener::bind(dir.join("v.sock_1024")).unwrap();
        (m, l)
    }

    #[test]
    fn test_fuzz_vsock_valid_session_reaches_host_socket() {
        // Guards the harness: a well-formed session must deliver its payload, or the smoke
        // test below would only exercise the rejection paths.
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let (mut m, l) = vsock_muxer(dir.path());
        fuzz_vsock_packet(&vsock_valid_session(), &mut m);
        let (mut s, _) = l.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"fuzz-payload");
    }

    #[test]
    fn test_fuzz_vsock_smoke_random_and_mutated_inputs_contained() {
        let dir = tempfile::tempdir().unwrap();
        let (mut m, l) = vsock_muxer(dir.path());
        l.set_nonblocking(true).unwrap();
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let seeds = [vsock_valid_session()];
        for i in 0..3000 {
            let input = rng.smoke_input(i, &seeds, 4096);
            fuzz_vsock_packet(&input, &mut m);
            // Keep the host listener's backlog drained.
            while l.accept().is_ok() {}
        }
        assert_eq!(m.conn_count(), 0);
    }

    /// FUSE opcodes the harness tests use.
    const FUSE_LOOKUP: u32 = 1;
    const FUSE_OPEN: u32 = 14;
    const FUSE_READ: u32 = 15;
    const FUSE_WRITE: u32 = 16;
    const FUSE_INIT: u32 = 26;
    const FUSE_CREATE: u32 = 35;
    const FS_REQ: u64 = DATA;
    const FS_REPLY: u64 = DATA + 0x8000;
    const FS_SLOT: u64 = 0x400;

    /// `fuse_in_header` (40 bytes, `len` = the whole request) + `body`.
    fn fuse_req(opcode: u32, nodeid: u64, body: &[u8]) -> Vec<u8> {
        let mut r = ((40 + body.len()) as u32).to_le_bytes().to_vec();
        r.extend_from_slice(&opcode.to_le_bytes());
        r.extend_from_slice(&7u64.to_le_bytes()); // unique
        r.extend_from_slice(&nodeid.to_le_bytes());
        r.extend_from_slice(&[0u8; 16]); // uid, gid, pid, padding
        r.extend_from_slice(body);
        r
    }

    fn fuse_init() -> Vec<u8> {
        let mut b = 7u32.to_le_bytes().to_vec();
        b.extend_from_slice(&31u32.to_le_bytes());
        b.extend_from_slice(&[0u8; 8]); // max_readahead, flags
        fuse_req(FUSE_INIT, 0, &b)
    }

    fn cstr(name: &str) -> Vec<u8> {
        let mut v = name.as_bytes().to_vec();
        v.push(0);
        v
    }

    /// `fuse_read_in` / `fuse_write_in`: fh, offset, size, then zeros.
    fn io_in(fh: u64, size: u32) -> Vec<u8> {
        let mut b = fh.to_le_bytes().to_vec();
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&size.to_le_bytes());
        b.extend_from_slice(&[0u8; 20]);
        b
    }

    /// Chain k starts at descriptor 2k: the request at FS_REQ + k·FS_SLOT (readable), then a
    /// FS_SLOT reply buffer (writable); `custom` then overwrites descriptors from index i on.
    fn fs_input(reqs: &[Vec<u8>], custom: &[(usize, Vec<u8>)]) -> Vec<u8> {
        let mut v = Vec::new();
        for (k, r) in reqs.iter().enumerate() {
            let k16 = 2 * k as u16;
            let slot = FS_SLOT * k as u64;
            v.extend(desc(FS_REQ + slot, r.len() as u32, 1, k16 + 1));
            v.extend(desc(FS_REPLY + slot, FS_SLOT as u32, 2, 0));
        }
        v.resize(16 * QUEUE_SIZE as usize, 0);
        for (i, d) in custom {
            v[16 * i..16 * i + d.len()].copy_from_slice(d);
        }
        let mut avail = vec![0u8, 0, reqs.len() as u8, 0];
        for k in 0..reqs.len() as u16 {
            avail.extend_from_slice(&(2 * k).to_le_bytes());
        }
        avail.resize(4 + 2 * QUEUE_SIZE as usize, 0);
        v.extend(avail);
        for r in reqs {
            let mut b = r.clone();
            b.resize(FS_SLOT as usize, 0);
            v.extend(b);
        }
        v
    }

    /// Reply k's `fuse_out_header` error and the `u64` at byte `at` of the reply.
    fn fs_reply(mem: &GuestMemoryMmap, k: u64, at: u64) -> (i32, u64) {
        let base = FS_REPLY + FS_SLOT * k;
        (
            mem.read_obj(GuestAddress(base + 4)).unwrap(),
            mem.read_obj(GuestAddress(base + at)).unwrap(),
        )
    }

    fn scratch_share() -> (tempfile::TempDir, Arc<fs_share::PassthroughFs>) {
        let dir = tempfile::tempdir().unwrap();
        let share = dir.path().join("share");
        std::fs::create_dir(&share).unwrap();
        std::fs::write(share.join("hello.txt"), b"hello through virtio-fs").unwrap();
        std::fs::write(dir.path().join("secret.txt"), b"outside the share").unwrap();
        let fs = fuzz_fs_share(&share).unwrap();
        (dir, fs)
    }

    #[test]
    fn test_fuzz_fs_valid_session_reads_and_writes_share() {
        // Guards the harness and the device path: a well-formed session must work end to end.
        let (dir, fs) = scratch_share();
        let reqs = [fuse_init(), fuse_req(FUSE_LOOKUP, 1, &cstr("hello.txt"))];
        let (mem, used) = fs_queue_run(&fs_input(&reqs, &[]), &fs).unwrap();
        assert_eq!(used, [16 + 64, 16 + 128]);
        let (err, nodeid) = fs_reply(&mem, 1, 16);
        assert_eq!(err, 0);
        assert_eq!(fs_reply(&mem, 1, 64).1, 23, "attr.size");

        let open = fuse_req(FUSE_OPEN, nodeid, &[0u8; 8]); // O_RDONLY
        let (mem, used) = fs_queue_run(&fs_input(&[open], &[]), &fs).unwrap();
        assert_eq!((used[0], fs_reply(&mem, 0, 4).0), (32, 0));
        let fh = fs_reply(&mem, 0, 16).1;
        let read = fuse_req(FUSE_READ, nodeid, &io_in(fh, 100));
        let (mem, used) = fs_queue_run(&fs_input(&[read], &[]), &fs).unwrap();
        assert_eq!(used, [16 + 23]);
        let mut got = [0u8; 23];
        mem.read_slice(&mut got, GuestAddress(FS_REPLY + 16))
            .unwrap();
        assert_eq!(&got, b"hello through virtio-fs");

        let mut create = 0o102u32.to_le_bytes().to_vec(); // O_RDWR | O_CREAT
        create.extend_from_slice(&0o100644u32.to_le_bytes());
        create.extend_from_slice(&[0u8; 8]);
        create.extend(cstr("new.txt"));
        let (mem, used) =
            fs_queue_run(&fs_input(&[fuse_req(FUSE_CREATE, 1, &create)], &[]), &fs).unwrap();
        assert_eq!((used[0], fs_reply(&mem, 0, 4).0), (16 + 128 + 16, 0));
        let (new_node, new_fh) = (fs_reply(&mem, 0, 16).1, fs_reply(&mem, 0, 16 + 128).1);
        let mut write = io_in(new_fh, 9);
        write.extend_from_slice(b"from vmm!");
        let (mem, used) = fs_queue_run(
            &fs_input(&[fuse_req(FUSE_WRITE, new_node, &write)], &[]),
            &fs,
        )
        .unwrap();
        assert_eq!((used[0], fs_reply(&mem, 0, 4).0), (24, 0));
        let on_disk = std::fs::read(dir.path().join("share/new.txt")).unwrap();
        assert_eq!(on_disk, b"from vmm!");
    }

    #[test]
    fn test_fuzz_fs_hostile_chains_get_zero_or_errors_and_stay_confined() {
        let (dir, fs) = scratch_share();
        let lookup = fuse_req(FUSE_LOOKUP, 1, &cstr("hello.txt"));
        // The chain holds 4 bytes more than the header's `len` says.
        let mut lying = lookup.clone();
        lying.extend_from_slice(&[0; 4]);
        let reqs = [
            fuse_init(),
            lookup[..20].to_vec(),                 // 1: shorter than the header
            lying,                                 // 2: header len lies
            lookup.clone(),                        // 3: readable after writable
            lookup.clone(),                        // 4: request outside memory
            lookup.clone(),                        // 5: descriptor loop
            fuse_req(FUSE_LOOKUP, 1, &cstr("..")), // 6: escape the share
        ];
        let custom = vec![
            // The request split around its reply buffer: lengths agree, order does not.
            (6, desc(FS_REQ + 3 * FS_SLOT, 45, 1, 7)),
            (7, desc(FS_REPLY + 3 * FS_SLOT, 0x400, 3, 15)),
            (15, desc(FS_REQ + 3 * FS_SLOT + 45, 5, 0, 0)),
            (8, desc(MEM_SIZE as u64 + 0x1000, 50, 1, 9)),
            (10, desc(FS_REQ + 5 * FS_SLOT, 50, 1, 10)),
        ];
        let (mem, used) = fs_queue_run(&fs_input(&reqs, &custom), &fs).unwrap();
        assert_eq!(used.len(), reqs.len());
        assert_eq!(&used[1..6], &[0, 0, 0, 0, 0], "malformed chains: {used:?}");
        assert_eq!(used[6], 16, "escape got a reply of {} bytes", used[6]);
        assert!(fs_reply(&mem, 6, 4).0 < 0, "LOOKUP .. succeeded");
        // A path escape and a garbage opcode get errors; the device still serves a good
        // request afterwards.
        let reqs = [
            fuse_req(FUSE_LOOKUP, 1, &cstr("../secret.txt")),
            fuse_req(0xdead, 1, &[1, 2, 3]),
            lookup,
        ];
        let (mem, used) = fs_queue_run(&fs_input(&reqs, &[]), &fs).unwrap();
        assert_eq!(used, [16, 16, 144]);
        assert!(fs_reply(&mem, 0, 4).0 < 0, "LOOKUP ../secret.txt succeeded");
        assert_eq!(fs_reply(&mem, 1, 4).0, -libc::ENOSYS);
        assert_eq!(fs_reply(&mem, 2, 4).0, 0);
        assert_eq!(
            std::fs::read(dir.path().join("secret.txt")).unwrap(),
            b"outside the share"
        );
    }

    #[test]
    fn test_fuzz_fs_smoke_random_and_mutated_inputs_contained() {
        let (dir, fs) = scratch_share();
        let mut rng = Rng(0x6a09_e667_f3bc_c908);
        let seeds = [
            fs_input(
                &[fuse_init(), fuse_req(FUSE_LOOKUP, 1, &cstr("hello.txt"))],
                &[],
            ),
            fs_input(&[fuse_req(FUSE_READ, 2, &io_in(0, 64))], &[]),
        ];
        for i in 0..3000 {
            let input = rng.smoke_input(i, &seeds, 4096);
            fuzz_fs_request(&input, &fs);
        }
        // Nothing outside the share appeared or changed.
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["secret.txt", "share"]);
    }

    /// Measures a 1 MiB READ through the device path (vm-memory 0.17 view, FUSE server,
    /// preadv straight into guest memory) against a plain pread of 1 MiB, and a pread plus
    /// one 1 MiB memcpy (what a bounce-buffer design would cost at best).
    #[test]
    #[ignore = "measurement: cargo test --release -p vmm --lib -- --ignored --nocapture bench_fs"]
    fn bench_fs_read_1mib_device_path_vs_pread() {
        use std::os::unix::fs::FileExt;
        use std::time::Instant;
        const MIB: usize = 1 << 20;
        const ITERS: u32 = 500;
        let (dir, fs) = scratch_share();
        let path = dir.path().join("share/big");
        std::fs::write(&path, vec![0x5au8; MIB]).unwrap();
        let reqs = [fuse_init(), fuse_req(FUSE_LOOKUP, 1, &cstr("big"))];
        let (mem, _) = fs_queue_run(&fs_input(&reqs, &[]), &fs).unwrap();
        let node = fs_reply(&mem, 1, 16).1;
        let open = fuse_req(FUSE_OPEN, node, &[0u8; 8]);
        let (mem, _) = fs_queue_run(&fs_input(&[open], &[]), &fs).unwrap();
        let fh = fs_reply(&mem, 0, 16).1;

        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 * MIB)]).unwrap();
        let read = fuse_req(FUSE_READ, node, &io_in(fh, MIB as u32));
        mem.write_slice(&read, GuestAddress(DATA)).unwrap();
        let mut d = desc(DATA, read.len() as u32, 1, 1);
        d.extend(desc(DATA + 0x1000, 16, 3, 2));
        d.extend(desc(2 * MIB as u64, MIB as u32, 2, 0));
        mem.write_slice(&d, GuestAddress(DESC)).unwrap();
        let server = FsServer::new(fs.clone(), &mem).unwrap();
        let mut q = queue_v017(&fuzz_queue(DESC, AVAIL, USED).unwrap()).unwrap();
        let t = Instant::now();
        for i in 1..=ITERS {
            mem.write_obj(i as u16, GuestAddress(AVAIL + 2)).unwrap();
            assert_eq!(server.serve(&mut q), 1);
            let used: u32 = mem
                .read_obj(GuestAddress(USED + 8 + 8 * u64::from((i - 1) % 16)))
                .unwrap();
            assert_eq!(used as usize, 16 + MIB);
        }
        let device = t.elapsed() / ITERS;
        let mut got = vec![0u8; 16];
        mem.read_slice(&mut got, GuestAddress(2 * MIB as u64 + MIB as u64 - 16))
            .unwrap();
        assert!(got.iter().all(|&b| b == 0x5a));

        let file = std::fs::File::open(&path).unwrap();
        let (mut buf, mut copy) = (vec![0u8; MIB], vec![0u8; MIB]);
        let t = Instant::now();
        for _ in 0..ITERS {
            file.read_exact_at(&mut buf, 0).unwrap();
        }
        let pread = t.elapsed() / ITERS;
        let t = Instant::now();
        for _ in 0..ITERS {
            file.read_exact_at(&mut buf, 0).unwrap();
            copy.copy_from_slice(std::hint::black_box(&buf));
        }
        let bounce = t.elapsed() / ITERS;
        println!("1 MiB READ: device path {device:?}, pread {pread:?}, pread + memcpy {bounce:?}");
    }
}
