//! Entry points for fuzzing what the guest controls. Each takes arbitrary bytes, lays them out
//! as guest memory + virtqueue state, and runs the real device code on them. Used by the
//! cargo-fuzz targets in `vmm/fuzz/` and by the fuzz-smoke tests below (which run in the
//! ordinary test suite, since nightly Rust is not available everywhere).

use std::fs::File;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::devices::virtio::block::RequestProcessor;

const MEM_SIZE: usize = 1 << 20;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const DATA: u64 = 0x4000;
const QUEUE_SIZE: u16 = 16;
const MAX_CHAINS: usize = 64;

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

    let Ok(mut q) = Queue::new(QUEUE_SIZE) else { return };
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
        let Some(chain) = q.pop_descriptor_chain(&mem) else { break };
        let head = chain.head_index();
        let len = req.process(&mem, chain);
        let _ = q.add_used(&mem, head, len);
    }
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
        let file = std::fs::OpenOptions::new().read(true).write(true).open(f.path()).unwrap();
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
        let seed = valid_write(1);
        for i in 0..3000 {
            let mut input = if i % 2 == 0 {
                seed.clone()
            } else {
                let n = (rng.next() % 2048) as usize;
                (0..n).map(|_| rng.next() as u8).collect()
            };
            for _ in 0..(rng.next() % 16) {
                if input.is_empty() {
                    break;
                }
                let at = (rng.next() as usize) % input.len();
                input[at] = rng.next() as u8;
            }
            fuzz_blk_request(&input, &disk);
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
}
